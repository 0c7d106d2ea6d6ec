//! Hardware events a key store notices on its own (a smartcard inserted or
//! removed), for the daemon's front ends (the D-Bus signals). A key store
//! reports with [`report`]; the daemon registers listeners with
//! [`listen`]. Listeners run on the reporting thread and must not block
//! (the daemon's only queues the event).

use std::sync::Mutex;

/// One hardware event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A card came into the named reader.
    CardInserted { reader: String },
    /// The card left the named reader.
    CardRemoved { reader: String },
}

type Listener = Box<dyn Fn(&DeviceEvent) + Send + Sync>;

/// At most this many listeners: each front end registers one, once.
const MAX_LISTENERS: usize = 8;

static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());

/// Calls `listener` with every event reported from now on. False (and
/// nothing registered) beyond MAX_LISTENERS.
pub fn listen(listener: impl Fn(&DeviceEvent) + Send + Sync + 'static) -> bool {
    let Ok(mut listeners) = LISTENERS.lock() else {
        return false;
    };
    if listeners.len() >= MAX_LISTENERS {
        return false;
    }
    listeners.push(Box::new(listener));
    true
}

/// Tells every listener.
pub fn report(event: &DeviceEvent) {
    if let Ok(listeners) = LISTENERS.lock() {
        for listener in listeners.iter() {
            listener(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn listeners_hear_reports() {
        let heard = Arc::new(AtomicUsize::new(0));
        let counter = heard.clone();
        assert!(listen(move |e| {
            if matches!(e, DeviceEvent::CardInserted { reader } if reader == "r-test") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        report(&DeviceEvent::CardInserted {
            reader: "r-test".into(),
        });
        assert_eq!(heard.load(Ordering::SeqCst), 1);
    }
}
