//! The daemon object `/org/fleetkey/Daemon1`, interface
//! `org.fleetkey.Daemon1`: the device (activation, key stores), the users,
//! enrollment from the camera or an image, and the signals. docs/dbus.md
//! documents every member.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetkey_plugin::Pin;
use fleetkey_proto::daemon::add_user_scan_request::Source;
use fleetkey_proto::daemon::scan_progress::Event;
use fleetkey_proto::{Failure, Reason};
use zbus::Connection;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::error::{BusFailure, property_error};
use super::polkit::{Action, Authorizer};
use super::user::user_path;
use crate::engine::Engine;
use crate::limits::MAX_REQUEST_BYTES;
use crate::scan;

/// The longest foreign text an EnrollStatus signal carries, in bytes.
const MAX_SIGNAL_TEXT: usize = 512;

type Dict = HashMap<String, OwnedValue>;

pub struct Device {
    engine: Arc<Engine>,
    authorizer: Authorizer,
    /// One enrollment started over D-Bus at a time (the camera is one).
    enrolling: Arc<AtomicBool>,
}

impl Device {
    pub fn new(engine: Arc<Engine>, authorizer: Authorizer) -> Self {
        Self {
            engine,
            authorizer,
            enrolling: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Checks, then scans and enrolls in the background, signalling each
    /// step with EnrollStatus.
    async fn start_enrollment(
        &self,
        bus: &Connection,
        call: &Header<'_>,
        source: Source,
        pin: String,
        backend: String,
        timeout_seconds: u32,
    ) -> Result<(), BusFailure> {
        let pin = Pin::new(pin);
        let who = self
            .authorizer
            .require(bus, call, Action::ManageUsers)
            .await?;
        self.engine.check_add_user(&pin, &backend)?;
        let open = scan::opener(Some(source))?;
        let emitter = SignalEmitter::new(bus, super::PATH)
            .map_err(|e| Failure::new(Reason::Internal, e.to_string()))?
            .into_owned();
        if self.enrolling.swap(true, Ordering::SeqCst) {
            return Err(Failure::new(
                Reason::Busy,
                "an enrollment started over D-Bus is already running",
            )
            .with_hint("Wait for its EnrollStatus signal with done = true.")
            .into());
        }
        tracing::info!(caller = ?call.sender(), "enrollment from a QR code requested over D-Bus");
        let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(scan::scan_and_enroll(
            self.engine.clone(),
            who,
            open,
            pin,
            backend,
            scan::timeout(timeout_seconds),
            sender,
        ));
        let enrolling = self.enrolling.clone();
        tokio::spawn(async move {
            while let Some(item) = receiver.recv().await {
                let (step, done, details) = step_of(item);
                if done {
                    // Free before the last signal: a client that starts the
                    // next enrollment on it must not be told BUSY.
                    enrolling.store(false, Ordering::SeqCst);
                }
                if let Err(error) = Device::enroll_status(&emitter, step, done, details).await {
                    tracing::warn!(%error, "could not send an EnrollStatus signal");
                }
                if done {
                    break;
                }
            }
            enrolling.store(false, Ordering::SeqCst);
        });
        Ok(())
    }
}

#[zbus::interface(name = "org.fleetkey.Daemon1")]
impl Device {
    /// Everything `fleetkeyctl status` shows, as a dictionary.
    async fn get_status(&self) -> Result<Dict, BusFailure> {
        let status = self.engine.status().await?;
        let mut dict = Dict::new();
        put(&mut dict, "Version", status.version);
        put(&mut dict, "Activated", status.activated);
        put(&mut dict, "DeviceId", status.device_id);
        put(&mut dict, "PortalUrl", status.portal_url);
        put(&mut dict, "ActivatedAt", status.activated_at);
        put(&mut dict, "UserCount", status.user_count);
        put(&mut dict, "DefaultBackend", status.default_backend);
        put(&mut dict, "PendingApprovals", status.pending_approvals);
        put(&mut dict, "PortalStream", status.portal_stream);
        put(&mut dict, "IntegritySummary", status.integrity_summary);
        put(&mut dict, "IntegrityLevel", status.integrity_level);
        put(
            &mut dict,
            "KeyStores",
            status
                .backends
                .iter()
                .filter(|b| b.available)
                .map(|b| b.name.clone())
                .collect::<Vec<_>>(),
        );
        Ok(dict)
    }

    /// The enrolled users: name and object path of each.
    async fn list_users(&self) -> Result<Vec<(String, OwnedObjectPath)>, BusFailure> {
        let users = self.engine.list_users().await?;
        Ok(users
            .into_iter()
            .map(|u| {
                let path = user_path(&u.name);
                (u.name, path)
            })
            .collect())
    }

    /// The object path of an enrolled user (USER_UNKNOWN otherwise).
    async fn get_user(&self, name: String) -> Result<OwnedObjectPath, BusFailure> {
        let user = self.engine.get_user(&name).await?;
        Ok(user_path(&user.name))
    }

    /// Activates the device with an activation code or QR payload.
    /// polkit action org.fleetkey.activate.
    #[zbus(out_args("device_id", "portal_url"))]
    async fn activate(
        &self,
        code: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<(String, String), BusFailure> {
        let who = self
            .authorizer
            .require(bus, &call, Action::Activate)
            .await?;
        let activated = self.engine.activate(who, &code).await?;
        Ok((activated.device_id, activated.portal_url))
    }

    /// Removes a user (revoked at the portal first, best effort).
    /// polkit action org.fleetkey.manage-users.
    async fn remove_user(
        &self,
        name: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<bool, BusFailure> {
        let who = self
            .authorizer
            .require(bus, &call, Action::ManageUsers)
            .await?;
        Ok(self.engine.remove_user(who, &name).await?.revoked_at_portal)
    }

    /// The login challenges the portal sent (docs/approvals.md), pending
    /// first: (id, user, context, portal name, created at, expires at,
    /// state), times in Unix seconds. The context and portal name are the
    /// portal's text: show it, escaped, never interpret it. Anyone.
    async fn list_approvals(&self) -> Result<Vec<ApprovalRow>, BusFailure> {
        let mut approvals = self.engine.approvals()?;
        approvals.sort_by_key(|a| (a.state != "pending", a.created_at));
        Ok(approvals.iter().map(approval_row).collect())
    }

    /// Approves a login challenge with the number the login screen shows
    /// and the PIN of the challenge's user (wrong PINs count as for a
    /// signature). Returns the challenge's new state. Anyone who knows
    /// that PIN, as over gRPC.
    async fn approve(
        &self,
        id: String,
        number: u32,
        pin: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<String, BusFailure> {
        super::approval::approve(&self.engine, bus, &call, &id, number, pin).await
    }

    /// Denies a login challenge (signed by the device key; no PIN: a
    /// denial can only stop a login). Returns the new state. Anyone.
    async fn deny(
        &self,
        id: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<String, BusFailure> {
        super::approval::deny(&self.engine, bus, &call, &id).await
    }

    /// Starts an enrollment from a camera ("" for the first usable one,
    /// else a path, index or name as `fleetkeyctl user add --camera`
    /// takes), with the new user's PIN. Returns once checked; the scan's
    /// steps follow as EnrollStatus signals. polkit action
    /// org.fleetkey.manage-users.
    async fn enroll_from_camera(
        &self,
        camera: String,
        pin: String,
        backend: String,
        timeout_seconds: u32,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<(), BusFailure> {
        self.start_enrollment(
            bus,
            &call,
            Source::Camera(camera),
            pin,
            backend,
            timeout_seconds,
        )
        .await
    }

    /// Starts an enrollment from an image of the QR code (PNG, JPEG or
    /// PGM, as `user add --qr-image`). Otherwise as EnrollFromCamera.
    async fn enroll_from_image(
        &self,
        image: Vec<u8>,
        pin: String,
        backend: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<(), BusFailure> {
        if image.len() > MAX_REQUEST_BYTES {
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!("the image is larger than {MAX_REQUEST_BYTES} bytes"),
            )
            .into());
        }
        self.start_enrollment(bus, &call, Source::Image(image), pin, backend, 0)
            .await
    }

    /// Whether the device is activated.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn activated(&self) -> zbus::fdo::Result<bool> {
        Ok(self.status().await?.activated)
    }

    /// The device's id at the portal ("" before activation).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn device_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.status().await?.device_id)
    }

    /// The portal the device is activated with (or the configured one).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn portal_url(&self) -> zbus::fdo::Result<String> {
        Ok(self.status().await?.portal_url)
    }

    /// The key stores that can be used now.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn key_stores(&self) -> zbus::fdo::Result<Vec<String>> {
        Ok(self
            .status()
            .await?
            .backends
            .into_iter()
            .filter(|b| b.available)
            .map(|b| b.name)
            .collect())
    }

    /// Enrolled users.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn user_count(&self) -> zbus::fdo::Result<u32> {
        Ok(self.status().await?.user_count)
    }

    /// Login challenges waiting for an answer.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn pending_approvals(&self) -> zbus::fdo::Result<u32> {
        Ok(self.status().await?.pending_approvals)
    }

    /// The integrity report in one line (docs/integrity.md).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn integrity_summary(&self) -> zbus::fdo::Result<String> {
        Ok(self.status().await?.integrity_summary)
    }

    /// The integrity report's HSI level, 0 to 4.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn integrity_level(&self) -> zbus::fdo::Result<u32> {
        Ok(self.status().await?.integrity_level)
    }

    /// The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// A step of an enrollment started over D-Bus; see docs/dbus.md.
    #[zbus(signal)]
    async fn enroll_status(
        emitter: &SignalEmitter<'_>,
        step: &str,
        done: bool,
        details: Dict,
    ) -> zbus::Result<()>;

    /// A user was enrolled (by any front end).
    #[zbus(signal)]
    pub async fn user_added(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;

    /// A user was removed.
    #[zbus(signal)]
    pub async fn user_removed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;

    /// A smartcard came into a reader (pcsc key store).
    #[zbus(signal)]
    pub async fn card_inserted(emitter: &SignalEmitter<'_>, reader: &str) -> zbus::Result<()>;

    /// The card left the reader.
    #[zbus(signal)]
    pub async fn card_removed(emitter: &SignalEmitter<'_>, reader: &str) -> zbus::Result<()>;

    /// The portal asked this device to approve a login (docs/approvals.md).
    #[zbus(signal)]
    pub async fn approval_requested(
        emitter: &SignalEmitter<'_>,
        id: &str,
        path: OwnedObjectPath,
        user: &str,
        context: &str,
        portal_name: &str,
        expires_at: i64,
    ) -> zbus::Result<()>;

    /// A login challenge was answered or ran out: `state` is approved,
    /// denied, number_wrong, expired or failed.
    #[zbus(signal)]
    pub async fn approval_resolved(
        emitter: &SignalEmitter<'_>,
        id: &str,
        user: &str,
        state: &str,
    ) -> zbus::Result<()>;

    /// A wrong PIN used up a user's last try.
    #[zbus(signal)]
    pub async fn pin_locked(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;
}

impl Device {
    async fn status(&self) -> zbus::fdo::Result<fleetkey_proto::daemon::Status> {
        self.engine.status().await.map_err(property_error)
    }
}

fn put<T: Into<Value<'static>>>(dict: &mut Dict, key: &str, value: T) {
    if let Ok(value) = OwnedValue::try_from(value.into()) {
        dict.insert(key.into(), value);
    }
}

/// One challenge as ListApprovals gives it.
type ApprovalRow = (String, String, String, String, i64, i64, String);

fn approval_row(a: &fleetkey_proto::daemon::Approval) -> ApprovalRow {
    (
        a.id.clone(),
        a.user.clone(),
        bounded(&a.context),
        bounded(&a.portal_name),
        a.created_at,
        a.expires_at,
        a.state.clone(),
    )
}

/// A PIN within the bound gRPC applies too.
pub(super) fn check_pin(pin: &str) -> Result<(), Failure> {
    use crate::server::MAX_PIN_BYTES;
    if pin.len() > MAX_PIN_BYTES {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!(
                "the PIN is {} bytes long; no PIN is longer than {MAX_PIN_BYTES}",
                pin.len()
            ),
        ));
    }
    Ok(())
}

/// Text from a QR code or a failure, made fit for a signal: no NUL
/// (D-Bus strings cannot hold one), at most MAX_SIGNAL_TEXT bytes.
pub(super) fn bounded(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| *c != '\0').collect();
    if out.len() > MAX_SIGNAL_TEXT {
        let mut end = MAX_SIGNAL_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// One progress item of the scan as (step, done, details).
fn step_of(item: scan::ProgressItem) -> (&'static str, bool, Dict) {
    let mut details = Dict::new();
    let event = match item {
        Err(status) => {
            let failure = Failure::from_status(&status);
            put(&mut details, "Reason", failure.reason.as_str());
            put(&mut details, "Message", bounded(&failure.message));
            return ("failed", true, details);
        }
        Ok(progress) => progress.event,
    };
    match event {
        Some(Event::CameraOpened(opened)) => {
            put(&mut details, "Name", bounded(&opened.name));
            put(&mut details, "Path", bounded(&opened.path));
            put(&mut details, "Format", bounded(&opened.format));
            put(&mut details, "Width", opened.width);
            put(&mut details, "Height", opened.height);
            ("camera-opened", false, details)
        }
        Some(Event::FramesScanned(frames)) => {
            put(&mut details, "Scanned", frames.scanned);
            put(&mut details, "Dropped", frames.dropped);
            ("frames-scanned", false, details)
        }
        Some(Event::ForeignCode(foreign)) => {
            put(&mut details, "Text", bounded(&foreign.text));
            ("foreign-code", false, details)
        }
        Some(Event::CodeFound(found)) => {
            put(&mut details, "UserHint", bounded(&found.user_hint));
            put(&mut details, "PortalUrl", bounded(&found.portal_url));
            put(&mut details, "FramesScanned", found.frames_scanned);
            ("code-found", false, details)
        }
        Some(Event::Enrolling(_)) => ("enrolling", false, details),
        // Activation over D-Bus is `Activate` with a code; a scan for it
        // is gRPC's ActivateScan only.
        Some(Event::Activating(_)) => ("activating", false, details),
        Some(Event::Activated(activated)) => {
            put(&mut details, "DeviceId", activated.device_id);
            ("activated", true, details)
        }
        Some(Event::Done(user)) => {
            put(
                &mut details,
                "Path",
                Value::from(user_path(&user.name).into_inner()),
            );
            put(&mut details, "User", user.name);
            ("enrolled", true, details)
        }
        None => ("unknown", false, details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_text_is_bounded_and_has_no_nul() {
        assert_eq!(bounded("a\0b"), "ab");
        let long = "é".repeat(1000);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_SIGNAL_TEXT);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_failure_ends_the_enrollment_with_its_reason() {
        let failure = Failure::new(Reason::CodeExpired, "expired");
        let (step, done, details) = step_of(Err(failure.to_status()));
        assert_eq!((step, done), ("failed", true));
        assert_eq!(
            details
                .get("Reason")
                .and_then(|v| String::try_from(v.clone()).ok()),
            Some("CODE_EXPIRED".to_string())
        );
    }
}
