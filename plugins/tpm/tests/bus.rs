//! What crosses the bus: the key store talks to swtpm through a relay that
//! records every byte, and the PIN must never appear in it (parameter
//! encryption in salted HMAC sessions), while what is not secret (the new
//! key's public point) does, which shows that the recording works.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use fleetkey_e2e::Swtpm;
use fleetkey_plugin::{KeyStore, Pin};
use fleetkey_tpm::{TpmConfig, TpmKeyStore};

/// Copies bytes from `from` to `to`, appending them to `log`.
fn pump(mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Relays connections from `listener` to `target`, recording both ways.
fn relay(listener: TcpListener, target: u16, log: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let server = TcpStream::connect(("127.0.0.1", target)).unwrap();
            let (c2, s2, log2) = (
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                log.clone(),
            );
            let log1 = log.clone();
            std::thread::spawn(move || pump(client, server, log1));
            std::thread::spawn(move || pump(s2, c2, log2));
        }
    });
}

/// Two adjacent listening ports (the swtpm TCTI uses port and port + 1).
fn listener_pair() -> (TcpListener, TcpListener, u16) {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = TcpListener::bind(("127.0.0.1", port + 1)) {
            return (first, second, port);
        }
    }
    panic!("no two adjacent free ports");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_pin_never_crosses_the_bus_in_clear() {
    let tpm = Swtpm::start();
    let (commands, control, port) = listener_pair();
    let log = Arc::new(Mutex::new(Vec::new()));
    relay(commands, tpm.port, log.clone());
    relay(control, tpm.port + 1, log.clone());

    let store = TpmKeyStore::open(&TpmConfig {
        tcti: Some(format!("swtpm:host=127.0.0.1,port={port}")),
        persistent_handle: None,
        ..Default::default()
    })
    .unwrap();
    let pin = Pin::new("Qz7-PIN-x9");
    let new_pin = Pin::new("Vw4-NEW-k2");
    let key = store.create_key("u-bus", &pin).unwrap();
    let digest = [0x5a; 32];
    store.sign_digest(&key.key_ref, &pin, &digest).unwrap();
    let wrong = store.sign_digest(&key.key_ref, &Pin::new("Qz7-PIN-x8"), &digest);
    assert!(wrong.is_err());
    let new_ref = store.change_pin(&key.key_ref, &pin, &new_pin).unwrap();
    store.sign_digest(&new_ref, &new_pin, &digest).unwrap();
    drop(store);

    let recorded = log.lock().unwrap().clone();
    // The recording works: the public point travels in clear.
    // SubjectPublicKeyInfo of P-256 ends with the point: 04 || x || y.
    let der = &key.public_key_der;
    let x = &der[der.len() - 64..der.len() - 32];
    assert!(
        contains(&recorded, x),
        "the relay did not see the TPM traffic"
    );
    // The PINs do not, nor does the digest signed (it is the first
    // parameter of TPM2_Sign, encrypted too).
    for secret in [pin.as_bytes(), new_pin.as_bytes(), b"Qz7-PIN-x8".as_slice()] {
        assert!(
            !contains(&recorded, secret),
            "a PIN crossed the bus in clear"
        );
    }
    assert!(!contains(&recorded, &digest), "the digest crossed in clear");
}
