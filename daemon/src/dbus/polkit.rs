//! Who may call the admin methods of the D-Bus service. polkit decides
//! when it is on the bus: the daemon asks polkitd's
//! `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` about the
//! caller (subject `system-bus-name`, its unique name) and the method's
//! action (packaging/polkit/org.fleetkey.policy). When no polkit is on the
//! bus, the gRPC socket's rule applies (auth.rs `AdminPolicy`: root, the
//! daemon's user, the admin group), to the uid and groups the bus daemon
//! reports for the caller's connection.
//!
//! polkit present but failing is a refusal, never a fallback: only "no
//! polkit on this bus" falls back.

use std::collections::HashMap;

use fleetkey_proto::{Failure, Reason};
use zbus::Connection;
use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus::zvariant::Value;

use crate::auth::{AdminPolicy, Caller};
use crate::engine::Requester;

pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const POLKIT_INTERFACE: &str = "org.freedesktop.PolicyKit1.Authority";
/// CheckAuthorization's flag: polkit may ask the user to authenticate.
const ALLOW_USER_INTERACTION: u32 = 1;

/// An admin action, as named in the packaged polkit policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Activate the device with a portal.
    Activate,
    /// Add (enroll) or remove users.
    ManageUsers,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Action::Activate => "org.fleetkey.activate",
            Action::ManageUsers => "org.fleetkey.manage-users",
        }
    }

    /// What the caller wanted, for messages: "may not ...".
    fn verb(self) -> &'static str {
        match self {
            Action::Activate => "activate the device",
            Action::ManageUsers => "add or remove users",
        }
    }
}

/// polkit's answer: is_authorized, is_challenge, details: `(bba{ss})`.
struct AuthorizationResult {
    is_authorized: bool,
    is_challenge: bool,
}

/// Decides admin methods; see the module comment.
#[derive(Debug, Clone)]
pub struct Authorizer {
    admins: AdminPolicy,
}

impl Authorizer {
    pub fn new(admins: AdminPolicy) -> Self {
        Self { admins }
    }

    /// The caller of `call`, as the audit log names it, when it may do
    /// `action`; PERMISSION_DENIED with the reason otherwise.
    pub async fn require(
        &self,
        bus: &Connection,
        call: &Header<'_>,
        action: Action,
    ) -> Result<Requester, Failure> {
        let sender = call
            .sender()
            .ok_or_else(|| Failure::new(Reason::PermissionDenied, "the call names no sender"))?
            .to_owned();
        let interactive = call.primary().flags().contains(Flags::AllowInteractiveAuth);
        match check_authorization(bus, sender.as_str(), action, interactive).await {
            Ok(answer) if answer.is_authorized => {
                let caller = bus_caller(bus, sender.as_str()).await?;
                tracing::info!(caller = %sender, uid = caller.uid, action = action.id(), "authorized by polkit");
                Ok(Requester::Uid(caller.uid))
            }
            Ok(answer) => {
                tracing::warn!(caller = %sender, action = action.id(), challenge = answer.is_challenge, "refused by polkit");
                let mut failure = Failure::new(
                    Reason::PermissionDenied,
                    format!(
                        "polkit does not allow this caller to {} (action {})",
                        action.verb(),
                        action.id()
                    ),
                );
                if answer.is_challenge {
                    failure = failure.with_hint(
                        "polkit would allow it after authentication: call again with interactive authorization allowed, with a polkit agent running",
                    );
                }
                Err(failure)
            }
            Err(error) if polkit_absent(&error) => {
                let caller = bus_caller(bus, sender.as_str()).await?;
                tracing::debug!(caller = %sender, uid = caller.uid, "no polkit on the bus: the admin rule decides");
                self.admins
                    .require_admin(&caller, action.verb())
                    .map(|()| Requester::Uid(caller.uid))
                    .inspect_err(|_| {
                        tracing::warn!(
                            uid = caller.uid,
                            action = action.id(),
                            "refused: not an admin"
                        );
                    })
            }
            Err(error) => {
                tracing::error!(%error, action = action.id(), "polkit could not decide; refused");
                Err(Failure::new(
                    Reason::PermissionDenied,
                    format!(
                        "polkit could not decide whether this caller may {}: {error}",
                        action.verb()
                    ),
                ))
            }
        }
    }
}

async fn check_authorization(
    bus: &Connection,
    sender: &str,
    action: Action,
    interactive: bool,
) -> zbus::Result<AuthorizationResult> {
    let subject: (&str, HashMap<&str, Value<'_>>) = (
        "system-bus-name",
        HashMap::from([("name", Value::from(sender))]),
    );
    let details: HashMap<&str, &str> = HashMap::new();
    let flags = if interactive {
        ALLOW_USER_INTERACTION
    } else {
        0
    };
    let reply = bus
        .call_method(
            Some(POLKIT_NAME),
            POLKIT_PATH,
            Some(POLKIT_INTERFACE),
            "CheckAuthorization",
            &(subject, action.id(), details, flags, ""),
        )
        .await?;
    let (is_authorized, is_challenge, _details) =
        reply
            .body()
            .deserialize::<(bool, bool, HashMap<String, String>)>()?;
    Ok(AuthorizationResult {
        is_authorized,
        is_challenge,
    })
}

/// Whether an error says that nobody owns polkit's name on this bus.
fn polkit_absent(error: &zbus::Error) -> bool {
    match error {
        zbus::Error::MethodError(name, _, _) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
        ),
        zbus::Error::FDO(fdo) => matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    }
}

/// Who made `call`, for methods anyone may call (the audit log names the
/// uid): the bus daemon's record of the caller's connection.
pub async fn requester(bus: &Connection, call: &Header<'_>) -> Result<Requester, Failure> {
    let sender = call
        .sender()
        .ok_or_else(|| Failure::new(Reason::PermissionDenied, "the call names no sender"))?;
    Ok(Requester::Uid(bus_caller(bus, sender.as_str()).await?.uid))
}

/// The caller's uid and groups as the bus daemon recorded them for its
/// connection (GetConnectionCredentials; the bus read them from the
/// kernel when the caller connected).
async fn bus_caller(bus: &Connection, sender: &str) -> Result<Caller, Failure> {
    let unknown = |e: zbus::Error| {
        Failure::new(
            Reason::PermissionDenied,
            format!("the bus could not say who the caller is: {e}"),
        )
    };
    let name = BusName::try_from(sender).map_err(|e| unknown(e.into()))?;
    let dbus = zbus::fdo::DBusProxy::new(bus).await.map_err(unknown)?;
    let credentials = dbus
        .get_connection_credentials(name)
        .await
        .map_err(|e| unknown(e.into()))?;
    let uid = credentials.unix_user_id().ok_or_else(|| {
        Failure::new(
            Reason::PermissionDenied,
            "the bus does not know the caller's uid",
        )
    })?;
    let groups: Vec<u32> = credentials.unix_group_ids().cloned().unwrap_or_default();
    Ok(Caller {
        uid,
        // The bus reports the groups as one list, primary first.
        gid: groups.first().copied().unwrap_or(u32::MAX),
        groups: groups.into(),
        pid: credentials
            .process_id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
    })
}
