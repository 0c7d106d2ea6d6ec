//! One object per pending login challenge,
//! `/org/fleetkey/Daemon1/approvals/<id>`, interface
//! `org.fleetkey.Daemon1.Approval` (docs/dbus.md): what a kiosk UI shows,
//! and Approve/Deny on the challenge itself. The object appears when the
//! portal's challenge arrives and goes when it is answered or expires
//! (mod.rs `follow_approvals`). Properties are read from the engine on
//! every access.

use std::sync::Arc;

use fleetkey_plugin::Pin;
use fleetkey_proto::daemon::Approval;
use fleetkey_proto::{Failure, Reason};
use zbus::Connection;
use zbus::message::Header;
use zbus::zvariant::OwnedObjectPath;

use super::device::{bounded, check_pin};
use super::error::{BusFailure, property_error};
use super::user::escaped_path;
use crate::engine::Engine;

/// The object path of a challenge (its id escaped as user names are).
pub fn approval_path(id: &str) -> OwnedObjectPath {
    escaped_path("approvals", id)
}

/// Approve for a D-Bus caller (the daemon object's and the challenge's
/// methods): the PIN bounded as over gRPC, the caller's uid for the audit
/// log. Returns the challenge's new state.
pub(super) async fn approve(
    engine: &Engine,
    bus: &Connection,
    call: &Header<'_>,
    id: &str,
    number: u32,
    pin: String,
) -> Result<String, BusFailure> {
    check_pin(&pin)?;
    let pin = Pin::new(pin);
    let who = super::polkit::requester(bus, call).await?;
    Ok(engine.approve(who, id, number, pin).await?.state)
}

/// Deny for a D-Bus caller; the new state.
pub(super) async fn deny(
    engine: &Engine,
    bus: &Connection,
    call: &Header<'_>,
    id: &str,
) -> Result<String, BusFailure> {
    let who = super::polkit::requester(bus, call).await?;
    Ok(engine.deny(who, id).await?.state)
}

pub struct ApprovalObject {
    engine: Arc<Engine>,
    id: String,
}

impl ApprovalObject {
    pub fn new(engine: Arc<Engine>, id: String) -> Self {
        Self { engine, id }
    }

    fn approval(&self) -> Result<Approval, Failure> {
        self.engine
            .approvals()?
            .into_iter()
            .find(|a| a.id == self.id)
            .ok_or_else(|| {
                Failure::new(
                    Reason::ChallengeUnknown,
                    format!("no login challenge {}", self.id),
                )
            })
    }

    fn read(&self) -> zbus::fdo::Result<Approval> {
        self.approval().map_err(property_error)
    }
}

#[zbus::interface(name = "org.fleetkey.Daemon1.Approval")]
impl ApprovalObject {
    /// Approves with the number the login screen shows and the PIN of
    /// the challenge's user; returns the new state. As the daemon
    /// object's Approve.
    async fn approve(
        &self,
        number: u32,
        pin: String,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<String, BusFailure> {
        approve(&self.engine, bus, &call, &self.id, number, pin).await
    }

    /// Denies; returns the new state. As the daemon object's Deny.
    async fn deny(
        &self,
        #[zbus(connection)] bus: &Connection,
        #[zbus(header)] call: Header<'_>,
    ) -> Result<String, BusFailure> {
        deny(&self.engine, bus, &call, &self.id).await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// The user logging in.
    #[zbus(property(emits_changed_signal = "const"))]
    fn user(&self) -> zbus::fdo::Result<String> {
        Ok(self.read()?.user)
    }

    /// The portal's text about the login (untrusted: display it escaped),
    /// at most 512 bytes.
    #[zbus(property(emits_changed_signal = "const"))]
    fn context(&self) -> zbus::fdo::Result<String> {
        Ok(bounded(&self.read()?.context))
    }

    /// The portal's name for itself (untrusted, as Context).
    #[zbus(property(emits_changed_signal = "const"))]
    fn portal_name(&self) -> zbus::fdo::Result<String> {
        Ok(bounded(&self.read()?.portal_name))
    }

    /// Unix seconds.
    #[zbus(property(emits_changed_signal = "const"))]
    fn created_at(&self) -> zbus::fdo::Result<i64> {
        Ok(self.read()?.created_at)
    }

    /// Unix seconds.
    #[zbus(property(emits_changed_signal = "const"))]
    fn expires_at(&self) -> zbus::fdo::Result<i64> {
        Ok(self.read()?.expires_at)
    }

    /// `pending`, `answering`, or how it ended (the object goes soon
    /// after; ApprovalResolved says so).
    #[zbus(property(emits_changed_signal = "false"))]
    fn state(&self) -> zbus::fdo::Result<String> {
        Ok(self.read()?.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_paths_are_valid_and_escaped() {
        assert_eq!(
            approval_path("chl-abc2").as_str(),
            "/org/fleetkey/Daemon1/approvals/chl_2dabc2"
        );
        assert_ne!(approval_path("a-b").as_str(), approval_path("a_b").as_str());
    }
}
