//! End to end: enrollment from a QR code read by the daemon (`user add
//! --qr-image`, `--camera`), `camera list` and `qr decode`, against the
//! real portal, daemon and CLI. No camera exists on the test machines:
//! `--camera` is tested up to the point where the device is missing.

use std::path::{Path, PathBuf};

use fleetkey_e2e::{Daemon, Portal, open_tempdir};
use fleetkey_proto::Reason;
use fleetkey_v4l::testset::{Expected, sample};

/// Writes a frame of the robustness set as a PNG.
fn sample_png(dir: &Path, prefix: &str) -> (PathBuf, Expected) {
    let sample = sample(prefix).expect("sample");
    let path = dir.join(format!("{prefix}.png"));
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = png::Encoder::new(
        file,
        sample.frame.width() as u32,
        sample.frame.height() as u32,
    );
    encoder.set_color(png::ColorType::Grayscale);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(sample.frame.pixels()).unwrap();
    writer.finish().unwrap();
    (path, sample.expected.clone())
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn user_add_from_the_portal_qr_png() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    let dir = open_tempdir();
    let png = dir.path().join("alice.png");
    let issued = portal.user_code_png("alice", &png);

    // qr decode reads the same URI offline.
    let decoded = daemon.ctl(&["qr", "decode", path_str(&png)]);
    decoded.assert_ok();
    assert_eq!(decoded.stdout.trim(), issued.uri);

    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&png),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    out.assert_ok();
    let user = out.json();
    assert_eq!(user["user"], "alice");
    assert_eq!(user["backend"], "soft");
    assert!(
        out.stderr.contains("Reading the image (PNG"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("QR code found"), "{}", out.stderr);
    // The URI's user hint is not shown (anyone can write it); the portal's
    // answer names the user.
    assert!(
        out.stderr
            .contains("QR code found (after 1 frame); the portal will say whom it enrolls"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Enrolling"), "{}", out.stderr);
    let registered = portal.user_show("alice").expect("alice at the portal");
    assert_eq!(registered["public_key_pem"], user["public_key_pem"]);

    // The code is single-use: the same picture again is refused by the portal.
    let again = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&png),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    assert!(again.code != 0, "{again:?}");

    // Human output says plainly what protects the key.
    let png = dir.path().join("bob.png");
    portal.user_code_png("bob", &png);
    let out = daemon.ctl_with_stdin(
        &["user", "add", "--qr-image", path_str(&png), "--pin-stdin"],
        Some("5678\n"),
    );
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "Enrolled bob with the soft key store (software key, not hardware-backed).\n"
    );
}

#[test]
fn camera_like_pictures_enroll_and_bad_ones_say_why() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    let dir = open_tempdir();

    // A code-free screen: QR_NOT_FOUND with the image hint.
    let (nothing, _) = sample_png(dir.path(), "nothing-0");
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&nothing),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    let json = out.assert_reason(Reason::QrNotFound);
    assert!(
        json["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("type the code")
    );

    // A foreign QR code: QR_NOT_ENROLLMENT, naming what it read.
    let (foreign, _) = sample_png(dir.path(), "foreign-0");
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&foreign),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    let json = out.assert_reason(Reason::QrNotEnrollment);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https://example.com")
    );

    // Not an image at all: refused locally, before the daemon is asked.
    let text = dir.path().join("code.txt");
    std::fs::write(&text, "not a picture").unwrap();
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&text),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    out.assert_reason(Reason::InvalidArgument);

    // A mirrored, dimly lit phone-camera picture of a code issued for this
    // portal would enroll; the robustness set's codes are for another portal,
    // so the daemon reads the code and refuses it for that reason.
    let (mirrored, expected) = sample_png(dir.path(), "fleetkey-mirrored-rotated");
    let decoded = daemon.ctl(&["qr", "decode", path_str(&mirrored)]);
    decoded.assert_ok();
    assert_eq!(
        Expected::Fleetkey(decoded.stdout.trim().to_string()),
        expected
    );
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            "--qr-image",
            path_str(&mirrored),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    let json = out.assert_reason(Reason::InvalidArgument);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("portal.example.com")
    );
}

#[test]
fn no_camera_on_this_machine_is_camera_not_found() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();

    // Before activation, the enrollment is refused before any camera is opened.
    let out = daemon.ctl_with_stdin(
        &["--json", "user", "add", "--camera", "--pin-stdin"],
        Some("1234\n"),
    );
    out.assert_reason(Reason::DeviceNotActivated);

    daemon.activate(&portal);
    for args in [
        vec![
            "--json",
            "user",
            "add",
            "--camera",
            "--timeout",
            "2",
            "--pin-stdin",
        ],
        vec![
            "--json",
            "user",
            "add",
            "--camera",
            "/dev/video-fleetkey-absent",
            "--pin-stdin",
        ],
    ] {
        let out = daemon.ctl_with_stdin(&args, Some("1234\n"));
        let json = out.assert_reason(Reason::CameraNotFound);
        assert!(!json["error"]["hint"].as_str().unwrap().is_empty());
    }

    let list = daemon.ctl(&["--json", "camera", "list"]);
    list.assert_ok();
    let json = list.json();
    assert!(
        json["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["path"].as_str().unwrap().starts_with("/dev/video"))
    );
    let human = daemon.ctl(&["camera", "list"]);
    human.assert_ok();
}

#[test]
fn qr_decode_exit_statuses() {
    let daemon_less = Daemon::start_default();
    let dir = open_tempdir();
    let (nothing, _) = sample_png(dir.path(), "nothing-1");
    let (foreign, _) = sample_png(dir.path(), "foreign-1");

    let out = daemon_less.ctl(&["qr", "decode", path_str(&nothing)]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, "");

    let out = daemon_less.ctl(&["qr", "decode", path_str(&nothing), path_str(&foreign)]);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "WIFI:T:WPA;S:office;P:correct horse battery staple;;\n"
    );

    let out = daemon_less.ctl(&[
        "--json",
        "qr",
        "decode",
        path_str(&foreign),
        "/nonexistent.png",
    ]);
    assert_eq!(
        out.code,
        i32::from(Reason::InvalidArgument.exit_code()),
        "{out:?}"
    );
    let json = out.json();
    assert_eq!(json["images"][0]["codes"][0]["fleetkey"], false);
    assert!(!json["images"][1]["error"].as_str().unwrap().is_empty());
}

/// `activate --qr-image` and `--camera` (issue 14): the device code read
/// from the portal's QR picture activates the device, with the same
/// progress and reasons as `user add`; a user code, a code-free picture
/// and a missing camera are refused and leave the device unactivated.
#[test]
fn activate_from_the_portal_qr_png_or_a_camera() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    let dir = open_tempdir();

    // A user's code is not a device code.
    let user_png = dir.path().join("alice.png");
    portal.user_code_png("alice", &user_png);
    daemon
        .ctl(&["--json", "activate", "--qr-image", path_str(&user_png)])
        .assert_reason(Reason::CodeWrongKind);
    // A picture without a code.
    let (nothing, _) = sample_png(dir.path(), "nothing-0");
    daemon
        .ctl(&["--json", "activate", "--qr-image", path_str(&nothing)])
        .assert_reason(Reason::QrNotFound);
    // No camera here.
    daemon
        .ctl(&[
            "--json",
            "activate",
            "--camera",
            "/dev/video-fleetkey-absent",
        ])
        .assert_reason(Reason::CameraNotFound);
    assert_eq!(daemon.ctl(&["--json", "status"]).json()["activated"], false);

    let png = dir.path().join("device.png");
    portal.device_code_png(&png);
    let out = daemon.ctl(&["--json", "activate", "--qr-image", path_str(&png)]);
    out.assert_ok();
    let device_id = out.json()["device_id"].as_str().unwrap().to_string();
    assert!(device_id.starts_with("dev-"), "{out:?}");
    for step in ["Reading the image (PNG", "QR code found", "Activating"] {
        assert!(out.stderr.contains(step), "{step}: {}", out.stderr);
    }
    assert!(
        portal
            .device_list()
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == device_id.as_str()),
        "{}",
        portal.device_list()
    );
    // Activated: users can be added, and another device picture is refused.
    daemon.add_user(&portal, "alice", "1234");
    let second = dir.path().join("device2.png");
    portal.device_code_png(&second);
    daemon
        .ctl(&["--json", "activate", "--qr-image", path_str(&second)])
        .assert_reason(Reason::AlreadyActivated);
    // A code and a picture at once is a usage error.
    let both = daemon.ctl(&[
        "activate",
        "K7QF-9XWM-2HPD-TR4Q",
        "--qr-image",
        path_str(&png),
    ]);
    assert_eq!(both.code, 2, "{both:?}");
}
