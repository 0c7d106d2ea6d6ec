//! One object per enrolled user, `/org/fleetkey/Daemon1/users/<name>`,
//! with interface `org.fleetkey.Daemon1.User`. Its properties are read from
//! the engine on every access, so they are never stale.

use std::sync::Arc;

use fleetkey_proto::daemon;
use zbus::zvariant::OwnedObjectPath;

use super::PATH;
use super::error::property_error;
use crate::engine::Engine;

/// The object path of a user: each byte of the name that is not an ASCII
/// letter or digit becomes `_` and two lower-case hex digits (D-Bus paths
/// allow only `[A-Za-z0-9_]`), so the path is unique to the name.
pub fn user_path(name: &str) -> OwnedObjectPath {
    escaped_path("users", name)
}

/// `PATH/<kind>/<name escaped as for user_path>`.
pub(super) fn escaped_path(kind: &str, name: &str) -> OwnedObjectPath {
    let mut element = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() {
            element.push(char::from(byte));
        } else {
            element.push_str(&format!("_{byte:02x}"));
        }
    }
    if element.is_empty() {
        element.push('_');
    }
    OwnedObjectPath::try_from(format!("{PATH}/{kind}/{element}")).unwrap_or_else(|_| {
        OwnedObjectPath::from(zbus::zvariant::ObjectPath::from_static_str_unchecked(PATH))
    })
}

pub struct UserObject {
    engine: Arc<Engine>,
    name: String,
}

impl UserObject {
    pub fn new(engine: Arc<Engine>, name: String) -> Self {
        Self { engine, name }
    }

    async fn user(&self) -> zbus::fdo::Result<daemon::User> {
        self.engine
            .get_user(&self.name)
            .await
            .map_err(property_error)
    }
}

#[zbus::interface(name = "org.fleetkey.Daemon1.User")]
impl UserObject {
    /// The user's name, as enrolled.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The portal's credential id for this user's key.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn credential_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.user().await?.credential_id)
    }

    /// The key store holding the key: soft, tpm or pcsc.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn backend(&self) -> zbus::fdo::Result<String> {
        Ok(self.user().await?.backend)
    }

    /// Whether that key store is hardware (the key cannot be copied out).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn hardware_backed(&self) -> zbus::fdo::Result<bool> {
        Ok(self.user().await?.hardware_backed)
    }

    /// Enrollment time, Unix seconds.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn enrolled_at(&self) -> zbus::fdo::Result<i64> {
        Ok(self.user().await?.enrolled_at)
    }

    /// Wrong PINs in a row.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn failed_attempts(&self) -> zbus::fdo::Result<u32> {
        Ok(self.user().await?.failed_attempts)
    }

    /// Wrong PINs left before the user is locked.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn tries_left(&self) -> zbus::fdo::Result<u32> {
        Ok(self.user().await?.tries_left)
    }

    /// Whether wrong PINs locked the user (signal PinLocked on the
    /// daemon object when it happens).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn locked(&self) -> zbus::fdo::Result<bool> {
        Ok(self.user().await?.locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths_are_valid_and_distinct() {
        assert_eq!(
            user_path("alice").as_str(),
            "/org/fleetkey/Daemon1/users/alice"
        );
        assert_eq!(
            user_path("a.b-c").as_str(),
            "/org/fleetkey/Daemon1/users/a_2eb_2dc"
        );
        assert_eq!(
            user_path("é").as_str(),
            "/org/fleetkey/Daemon1/users/_c3_a9"
        );
        assert_ne!(user_path("a_2e").as_str(), user_path("a.").as_str());
    }
}
