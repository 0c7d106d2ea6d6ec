//! The D-Bus service: fleetkeyd owns `org.fleetkey.Daemon1` for kiosk UIs
//! (fprintd is the model), on the system bus, or the session bus in
//! development. It is a front end like the gRPC socket (server.rs): it
//! calls the engine and follows its events. docs/dbus.md documents the
//! interface.
//!
//! - `device`: the daemon object and its signals;
//! - `user`: one object per enrolled user;
//! - `polkit`: who may call the admin methods;
//! - `error`: failures as D-Bus errors.
//!
//! - `approval`: one object per pending login challenge.
//!
//! Login approvals are also methods and signals of the daemon object
//! (ListApprovals, Approve, Deny; ApprovalRequested, ApprovalResolved):
//! the challenges' objects come and go, and the signals are sent, from
//! the engine's approval events in [`follow_approvals`].
//!
//! Without a bus, the daemon logs why and serves gRPC only.

mod approval;
mod device;
mod error;
mod polkit;
mod user;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use zbus::Connection;
use zbus::object_server::SignalEmitter;

pub use approval::{ApprovalObject, approval_path};
pub use device::Device;
pub use error::{BusFailure, PREFIX as ERROR_PREFIX, error_name};
pub use polkit::{Action, Authorizer};
pub use user::{UserObject, user_path};

use crate::auth::AdminPolicy;
use crate::config::BusChoice;
use crate::engine::{Engine, EngineEvent, MAX_PENDING_CHALLENGES};
use fleetkey_proto::time::now_unix;

/// The well-known name the daemon owns.
pub const NAME: &str = "org.fleetkey.Daemon1";
/// The daemon object.
pub const PATH: &str = "/org/fleetkey/Daemon1";

/// The bus `auto` means for a daemon running as `uid`: the system bus for
/// root and system accounts (below 1000, as Debian allocates them), else
/// the session bus.
pub fn resolve(choice: BusChoice, uid: u32) -> BusChoice {
    match choice {
        BusChoice::Auto if uid < 1000 => BusChoice::System,
        BusChoice::Auto => BusChoice::Session,
        other => other,
    }
}

/// Connects to the chosen bus, serves the objects and owns the name.
/// None (logged) when off or when there is no usable bus: the daemon
/// runs on without it. Keep the connection for as long as the service
/// should live.
pub async fn start(
    choice: BusChoice,
    engine: Arc<Engine>,
    admins: AdminPolicy,
) -> Option<Connection> {
    let bus = resolve(choice, fleetkey_proto::paths::effective_uid());
    let builder = match bus {
        BusChoice::Off | BusChoice::Auto => {
            tracing::info!("D-Bus service off (dbus = \"off\"); serving gRPC only");
            return None;
        }
        BusChoice::System => zbus::connection::Builder::system(),
        BusChoice::Session => zbus::connection::Builder::session(),
    };
    let which = if bus == BusChoice::System {
        "system"
    } else {
        "session"
    };
    let device = Device::new(engine.clone(), Authorizer::new(admins));
    let connection = match builder.and_then(|b| b.serve_at(PATH, device)) {
        Ok(b) => b.name(NAME).map(|b| b.build()),
        Err(e) => Err(e),
    };
    let connected = match connection {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    let connection = match connected {
        Ok(connection) => connection,
        Err(error) => {
            tracing::warn!(bus = which, %error, "no D-Bus service: cannot connect to the {which} bus or own {NAME}; serving gRPC only");
            return None;
        }
    };
    // Subscribe before listing, so no user added in between is missed.
    let events = engine.subscribe();
    match engine.list_users().await {
        Ok(users) => {
            for user in users {
                add_user_object(&connection, &engine, &user.name).await;
            }
        }
        Err(failure) => {
            tracing::warn!(reason = %failure.reason, "D-Bus: cannot list the users to serve their objects")
        }
    }
    tokio::spawn(follow_approvals(
        connection.clone(),
        engine.clone(),
        engine.subscribe_approvals(),
    ));
    tokio::spawn(follow(connection.clone(), engine, events));
    follow_cards(connection.clone());
    tracing::info!(bus = which, name = NAME, "D-Bus service ready");
    Some(connection)
}

async fn add_user_object(connection: &Connection, engine: &Arc<Engine>, name: &str) {
    let path = user_path(name);
    let object = UserObject::new(engine.clone(), name.to_string());
    if let Err(error) = connection.object_server().at(&path, object).await {
        tracing::warn!(%error, user = %name, "D-Bus: cannot serve the user's object");
    }
}

/// Turns the engine's events into objects and signals, until the engine
/// goes away.
async fn follow(
    connection: Connection,
    engine: Arc<Engine>,
    mut events: tokio::sync::broadcast::Receiver<EngineEvent>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, PATH) else {
        return;
    };
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "D-Bus: fell behind the engine's events; some signals were not sent"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let sent = match &event {
            EngineEvent::UserAdded { name } => {
                add_user_object(&connection, &engine, name).await;
                Device::user_added(&emitter, name, user_path(name)).await
            }
            EngineEvent::UserRemoved { name } => {
                let path = user_path(name);
                if let Err(error) = connection
                    .object_server()
                    .remove::<UserObject, _>(&path)
                    .await
                {
                    tracing::debug!(%error, "D-Bus: no object to remove for the user");
                }
                Device::user_removed(&emitter, name, path).await
            }
            EngineEvent::PinLocked { name } => {
                Device::pin_locked(&emitter, name, user_path(name)).await
            }
        };
        if let Err(error) = sent {
            tracing::warn!(%error, ?event, "D-Bus: could not send a signal");
        }
    }
}

/// Each change to a login challenge becomes ApprovalRequested (a new
/// pending one) or ApprovalResolved (answered, refused, or expired: the
/// engine sends no event when a challenge runs out, so the pending ones
/// are kept here with their expiry), until the engine goes away. The
/// intermediate `answering` state sends none.
async fn follow_approvals(
    connection: Connection,
    engine: Arc<Engine>,
    mut events: tokio::sync::broadcast::Receiver<fleetkey_proto::daemon::Approval>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, PATH) else {
        return;
    };
    // Pending challenges: id -> (user, expires_at). The engine keeps at
    // most MAX_PENDING_CHALLENGES; so does this.
    let mut pending: HashMap<String, (String, i64)> = HashMap::new();
    for approval in engine.approvals().unwrap_or_default() {
        if approval.state == "pending" {
            serve_approval(&connection, &engine, &approval.id).await;
            pending.insert(approval.id, (approval.user, approval.expires_at));
        }
    }
    loop {
        let next_expiry = pending.values().map(|(_, at)| *at).min();
        let wait = next_expiry.map_or(Duration::from_secs(3600), |at| {
            Duration::from_secs(u64::try_from(at - now_unix() + 1).unwrap_or(0))
        });
        let received = tokio::select! {
            received = events.recv() => Some(received),
            () = tokio::time::sleep(wait) => None,
        };
        let approval = match received {
            None => {
                let now = now_unix();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some((user, _)) = pending.remove(&id) {
                        unserve_approval(&connection, &id).await;
                        send(
                            Device::approval_resolved(&emitter, &id, &user, "expired").await,
                            &id,
                        );
                    }
                }
                continue;
            }
            Some(Ok(approval)) => approval,
            Some(Err(RecvError::Lagged(missed))) => {
                tracing::warn!(
                    missed,
                    "D-Bus: fell behind the approval events; some signals were not sent (ListApprovals has them all)"
                );
                continue;
            }
            Some(Err(RecvError::Closed)) => return,
        };
        let sent = match approval.state.as_str() {
            "pending" => {
                if pending.len() < MAX_PENDING_CHALLENGES as usize {
                    serve_approval(&connection, &engine, &approval.id).await;
                    pending.insert(
                        approval.id.clone(),
                        (approval.user.clone(), approval.expires_at),
                    );
                }
                Device::approval_requested(
                    &emitter,
                    &approval.id,
                    approval_path(&approval.id),
                    &approval.user,
                    &device::bounded(&approval.context),
                    &device::bounded(&approval.portal_name),
                    approval.expires_at,
                )
                .await
            }
            "answering" => Ok(()),
            state => {
                if pending.remove(&approval.id).is_some() {
                    unserve_approval(&connection, &approval.id).await;
                }
                Device::approval_resolved(&emitter, &approval.id, &approval.user, state).await
            }
        };
        send(sent, &approval.id);
    }
}

async fn serve_approval(connection: &Connection, engine: &Arc<Engine>, id: &str) {
    let object = ApprovalObject::new(engine.clone(), id.to_string());
    if let Err(error) = connection
        .object_server()
        .at(approval_path(id), object)
        .await
    {
        tracing::warn!(%error, %id, "D-Bus: cannot serve the login challenge's object");
    }
}

async fn unserve_approval(connection: &Connection, id: &str) {
    if let Err(error) = connection
        .object_server()
        .remove::<ApprovalObject, _>(approval_path(id))
        .await
    {
        tracing::debug!(%error, %id, "D-Bus: no object to remove for the login challenge");
    }
}

fn send(sent: zbus::Result<()>, id: &str) {
    if let Err(error) = sent {
        tracing::warn!(%error, %id, "D-Bus: could not send an approval signal");
    }
}

/// Card events the key stores report (fleetkey_plugin::events) become
/// CardInserted and CardRemoved signals. The key store's thread only
/// queues them; beyond 64 waiting, events are dropped (and logged).
fn follow_cards(connection: Connection) {
    use fleetkey_plugin::events::{self, DeviceEvent};
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<DeviceEvent>(64);
    let listening = events::listen(move |event| {
        if sender.try_send(event.clone()).is_err() {
            tracing::debug!("D-Bus: card events queue full; one dropped");
        }
    });
    if !listening {
        tracing::warn!("D-Bus: cannot follow card events");
        return;
    }
    tokio::spawn(async move {
        let Ok(emitter) = SignalEmitter::new(&connection, PATH) else {
            return;
        };
        while let Some(event) = receiver.recv().await {
            let sent = match &event {
                DeviceEvent::CardInserted { reader } => {
                    Device::card_inserted(&emitter, &device::bounded(reader)).await
                }
                DeviceEvent::CardRemoved { reader } => {
                    Device::card_removed(&emitter, &device::bounded(reader)).await
                }
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "D-Bus: could not send a card signal");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_the_system_bus_for_system_accounts() {
        assert_eq!(resolve(BusChoice::Auto, 0), BusChoice::System);
        assert_eq!(resolve(BusChoice::Auto, 998), BusChoice::System);
        assert_eq!(resolve(BusChoice::Auto, 1000), BusChoice::Session);
        assert_eq!(resolve(BusChoice::Off, 0), BusChoice::Off);
        assert_eq!(resolve(BusChoice::Session, 0), BusChoice::Session);
    }
}
