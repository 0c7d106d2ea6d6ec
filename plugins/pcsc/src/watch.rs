//! Follows readers and cards coming and going with
//! `SCardGetStatusChange`, which blocks until something changes (no busy
//! polling). When pcscd goes away (restart, crash) the watcher waits and
//! connects again; readers that vanish are dropped from the watch list.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetkey_plugin::events::DeviceEvent;

/// The watcher thread; stops when dropped (at the next event or within a
/// minute).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    context: Arc<std::sync::Mutex<Option<pcsc::Context>>>,
}

impl Watcher {
    pub fn start() -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let context = Arc::new(std::sync::Mutex::new(None));
        let (thread_stop, thread_context) = (stop.clone(), context.clone());
        let spawned = std::thread::Builder::new()
            .name("pcsc-watch".into())
            .spawn(move || run(&thread_stop, &thread_context));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the PC/SC watcher; card events are not logged");
        }
        Watcher { stop, context }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(guard) = self.context.lock()
            && let Some(context) = guard.as_ref()
        {
            let _ = context.cancel();
        }
    }
}

fn run(stop: &AtomicBool, shared: &std::sync::Mutex<Option<pcsc::Context>>) {
    let mut backoff = Duration::from_millis(250);
    let mut announced_down = false;
    while !stop.load(Ordering::SeqCst) {
        let context = match pcsc::Context::establish(pcsc::Scope::User) {
            Ok(context) => context,
            Err(e) => {
                if !announced_down {
                    tracing::warn!(error = %e, "pcscd is not reachable; waiting for it");
                    announced_down = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if announced_down {
            tracing::info!("pcscd is reachable again");
            announced_down = false;
        }
        backoff = Duration::from_millis(250);
        if let Ok(mut guard) = shared.lock() {
            *guard = Some(context.clone());
        }
        watch(&context, stop);
    }
}

/// Watches until pcscd goes away or the watcher is stopped.
fn watch(context: &pcsc::Context, stop: &AtomicBool) {
    let mut states = vec![pcsc::ReaderState::new(
        pcsc::PNP_NOTIFICATION(),
        pcsc::State::UNAWARE,
    )];
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        let readers: Vec<CString> = match context.list_readers_owned() {
            Ok(readers) => readers,
            Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "pcscd went away; watching again when it is back");
                return;
            }
        };
        // Forget readers that vanished; add new ones.
        states.retain(|state| {
            let keep = state.name() == pcsc::PNP_NOTIFICATION()
                || readers.iter().any(|r| r.as_c_str() == state.name());
            if !keep {
                tracing::info!(reader = %state.name().to_string_lossy(), "reader removed");
            }
            keep
        });
        for reader in &readers {
            if !states.iter().any(|s| s.name() == reader.as_c_str()) {
                if !first {
                    tracing::info!(reader = %reader.to_string_lossy(), "reader connected");
                }
                states.push(pcsc::ReaderState::new(reader.clone(), pcsc::State::UNAWARE));
            }
        }
        first = false;
        for state in &mut states {
            state.sync_current_state();
        }
        match context.get_status_change(Duration::from_secs(60), &mut states) {
            Ok(()) => {
                for state in &states {
                    if state.name() == pcsc::PNP_NOTIFICATION() {
                        continue;
                    }
                    let reader = state.name().to_string_lossy();
                    match transition(state.current_state(), state.event_state()) {
                        Some(Change::Inserted) => {
                            tracing::info!(%reader, "card inserted");
                            fleetkey_plugin::events::report(&DeviceEvent::CardInserted {
                                reader: reader.to_string(),
                            });
                        }
                        Some(Change::Removed) => {
                            tracing::info!(%reader, "card removed");
                            fleetkey_plugin::events::report(&DeviceEvent::CardRemoved {
                                reader: reader.to_string(),
                            });
                        }
                        None => {}
                    }
                }
            }
            Err(pcsc::Error::Timeout) => {}
            Err(pcsc::Error::Cancelled) => return,
            Err(pcsc::Error::UnknownReader) => {}
            Err(e) => {
                tracing::warn!(error = %e, "pcscd went away; watching again when it is back");
                return;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Inserted,
    Removed,
}

/// What a reader's state change from `before` (what we last knew; UNAWARE
/// at first) to `now` means. The first report of a reader is only
/// learning its state: a card already in it was not inserted now, and an
/// empty reader had no card removed.
fn transition(before: pcsc::State, now: pcsc::State) -> Option<Change> {
    if !now.contains(pcsc::State::CHANGED) {
        return None;
    }
    let was = before.contains(pcsc::State::PRESENT);
    let is = now.contains(pcsc::State::PRESENT);
    match (was, is) {
        (false, true) => Some(Change::Inserted),
        // UNAWARE is no bit (0), so compare: `contains` would always hold.
        (true, false) if before != pcsc::State::UNAWARE => Some(Change::Removed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcsc::State;

    #[test]
    fn insertions_and_removals_are_told_apart() {
        let present = State::PRESENT | State::CHANGED;
        let empty = State::EMPTY | State::CHANGED;
        assert_eq!(transition(State::EMPTY, present), Some(Change::Inserted));
        assert_eq!(transition(State::PRESENT, empty), Some(Change::Removed));
        // Unchanged: nothing.
        assert_eq!(transition(State::PRESENT, State::PRESENT), None);
        // A card found present when first looked at counts as inserted,
        // as before; an empty reader first seen is no removal.
        assert_eq!(transition(State::UNAWARE, present), Some(Change::Inserted));
        assert_eq!(transition(State::UNAWARE, empty), None);
        // What the watcher held after an insertion (PRESENT with CHANGED)
        // is not UNAWARE: the removal after it is reported (it was not).
        assert_eq!(transition(present, empty), Some(Change::Removed));
    }
}
