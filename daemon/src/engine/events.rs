//! What happened, for front ends that follow the daemon (the D-Bus
//! service's signals, daemon/src/dbus): users added and removed, PINs
//! locked. A tokio broadcast channel: sending never blocks the engine, and
//! a subscriber that falls behind loses the oldest events (and is told
//! how many), not the engine's memory.

use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind by before losing some.
const CAPACITY: usize = 64;

/// One thing that happened. Names only: a subscriber reads the rest from
/// the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A user's enrollment completed (the record is active).
    UserAdded { name: String },
    /// A user's record and key were removed.
    UserRemoved { name: String },
    /// A wrong PIN used up the user's last try.
    PinLocked { name: String },
}

/// The sending side, owned by the engine.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<EngineEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Tells every current subscriber; nobody listening is fine.
    pub fn send(&self, event: EngineEvent) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.sender.subscribe()
    }
}
