//! The one way the engine calls a key store: the work waits its turn in
//! the [`WorkQueue`], runs on the blocking pool (key stores talk to
//! hardware, run Argon2, fsync), and the key store's errors come back as
//! `Failure`s. Operations whose error the engine interprets itself (the
//! PIN-checked ones) return it raw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fleetkey_plugin::{
    BackendInfo, CardInfo, CreateOptions, CredentialChallenge, EnrollmentKey, HardwareIdentity,
    KeyStore, KeyStoreError, LockoutParameters, Pin, SharedLockout,
};
use fleetkey_proto::{Failure, Reason};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::failure::key_store_failure;
use crate::backends::Backend;

/// A usable key store, asynchronously, on behalf of one requester.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    queue: Arc<WorkQueue>,
    who: Requester,
}

/// What a PIN-checked operation returns: the key store's own error is
/// kept for the engine to count wrong PINs.
pub type Checked<T> = Result<T, KeyStoreError>;

impl Store {
    pub fn new(backend: Backend, queue: Arc<WorkQueue>) -> Self {
        Self {
            backend,
            queue,
            who: Requester::Daemon,
        }
    }

    /// The same store, with the work counted against `who`'s share.
    pub fn for_requester(mut self, who: Requester) -> Self {
        self.who = who;
        self
    }

    pub fn name(&self) -> &str {
        &self.backend.info.name
    }

    pub fn info(&self) -> &BackendInfo {
        &self.backend.info
    }

    /// Wrong PINs in a row after which a user of this store is locked.
    pub fn max_attempts(&self, policy_max_attempts: u32) -> u32 {
        crate::backends::max_attempts(self.backend.store.as_ref(), policy_max_attempts)
    }

    /// Runs `work` on the blocking pool, in its turn.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn KeyStore) -> Checked<T> + Send + 'static,
    ) -> Result<Checked<T>, Failure> {
        let store = self.backend.store.clone();
        self.queue.run(self.who, move || work(store.as_ref())).await
    }

    /// Runs `work` on the blocking pool; its error becomes a `Failure`.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn KeyStore) -> Checked<T> + Send + 'static,
    ) -> Result<T, Failure> {
        self.run(work)
            .await?
            .map_err(|e| key_store_failure(self.name(), e))
    }

    /// An enrollment's key work as one store operation
    /// ([`KeyStore::create_for_enrollment`]).
    pub async fn create_for_enrollment(
        &self,
        key_id: String,
        pin: Pin,
        options: CreateOptions,
        nonce: [u8; 32],
        pop_digest: impl Fn(&[u8]) -> [u8; 32] + Send + 'static,
    ) -> Result<EnrollmentKey, Failure> {
        self.call(move |s| s.create_for_enrollment(&key_id, &pin, &options, &nonce, &pop_digest))
            .await
    }

    pub async fn sign_digest(
        &self,
        key_ref: Vec<u8>,
        pin: Pin,
        digest: [u8; 32],
    ) -> Result<Checked<Vec<u8>>, Failure> {
        self.run(move |s| s.sign_digest(&key_ref, &pin, &digest))
            .await
    }

    pub async fn change_pin(
        &self,
        key_ref: Vec<u8>,
        old_pin: Pin,
        new_pin: Pin,
    ) -> Result<Checked<Vec<u8>>, Failure> {
        self.run(move |s| s.change_pin(&key_ref, &old_pin, &new_pin))
            .await
    }

    pub async fn unblock_pin(
        &self,
        key_ref: Vec<u8>,
        puk: Pin,
        new_pin: Pin,
    ) -> Result<Checked<()>, Failure> {
        self.run(move |s| s.unblock_pin(&key_ref, &puk, &new_pin))
            .await
    }

    pub async fn delete_key(&self, key_ref: Vec<u8>) -> Result<Checked<()>, Failure> {
        self.run(move |s| s.delete_key(&key_ref)).await
    }

    pub async fn resident_keys(&self) -> Result<Checked<Vec<Vec<u8>>>, Failure> {
        self.run(|s| s.resident_keys()).await
    }

    pub async fn cards(&self) -> Result<Vec<CardInfo>, Failure> {
        self.call(|s| s.cards()).await
    }

    pub async fn details(&self) -> Result<Vec<(String, String)>, Failure> {
        self.call(|s| Ok(s.details())).await
    }

    pub async fn shared_lockout(&self) -> Result<Option<SharedLockout>, Failure> {
        self.call(|s| s.shared_lockout()).await
    }

    pub async fn reset_shared_lockout(&self) -> Result<bool, Failure> {
        self.call(|s| s.reset_shared_lockout()).await
    }

    pub async fn set_lockout_parameters(
        &self,
        parameters: LockoutParameters,
        lockout_auth: Zeroizing<Vec<u8>>,
    ) -> Result<(), Failure> {
        self.call(move |s| s.set_lockout_parameters(&parameters, &lockout_auth))
            .await
    }

    pub async fn hardware_identity(&self) -> Result<Option<HardwareIdentity>, Failure> {
        self.call(|s| s.hardware_identity()).await
    }

    /// A TPM2_Quote by the attestation key, where the store has one.
    pub async fn quote(
        &self,
        qualifying_data: [u8; 32],
    ) -> Result<Option<fleetkey_plugin::PcrQuote>, Failure> {
        self.call(move |s| s.quote(&qualifying_data)).await
    }

    pub async fn activate_credential(
        &self,
        challenge: CredentialChallenge,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        self.call(move |s| s.activate_credential(&challenge)).await
    }
}

/// Who asks for key-store work, for the work queue's per-caller share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requester {
    /// A local caller, by uid (from SO_PEERCRED).
    Uid(u32),
    /// The daemon itself (startup recovery), or an admin flow that holds
    /// the enrollment lock (one at a time already).
    Daemon,
}

/// Bounds the key-store work that runs at once, and each caller's share
/// of it (docs/daemon-queue.md):
///
/// - at most `workers` operations run at once (one per CPU);
/// - a caller (uid) has at most `per_caller` operations waiting or
///   running; one more is refused at once with `BUSY`;
/// - waiting is asynchronous and first come, first served; a caller that
///   hangs up leaves the queue without its work ever running;
/// - work that has started runs to its end (a blocking thread cannot be
///   stopped) and keeps its caller's share until then;
/// - once the queue has been idle for [`TRIM_AFTER_IDLE`], the allocator
///   gives freed memory back to the system (`malloc_trim`): not after
///   every operation, where the trim would cost each request its time.
pub struct WorkQueue {
    slots: Arc<Semaphore>,
    per_caller: usize,
    shares: Mutex<HashMap<u32, usize>>,
    running: AtomicUsize,
    /// Operations finished so far (tells the trim whether work came by).
    finished: AtomicUsize,
    /// Whether a trim is waiting for the queue to stay idle.
    trim_pending: AtomicBool,
    /// Stores asked to release what they keep between operations when
    /// the queue falls idle (the soft store's Argon2 buffers).
    stores: std::sync::OnceLock<Vec<Arc<dyn KeyStore>>>,
}

/// How long the queue must stay idle before freed memory is given back.
pub const TRIM_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

impl WorkQueue {
    /// A queue with one worker per CPU the daemon may use, and a share of
    /// as many operations per caller.
    pub fn sized_to_machine() -> Arc<Self> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(workers, workers.max(2))
    }

    pub fn new(workers: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(workers.max(1))),
            per_caller: per_caller.max(1),
            shares: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            trim_pending: AtomicBool::new(false),
            stores: std::sync::OnceLock::new(),
        })
    }

    /// The stores whose kept memory an idle queue releases (set once).
    pub fn release_memory_of(&self, stores: Vec<Arc<dyn KeyStore>>) {
        let _ = self.stores.set(stores);
    }

    /// Releases what the stores keep, then gives freed memory back.
    fn release_memory(&self) {
        for store in self.stores.get().into_iter().flatten() {
            store.release_memory();
        }
        give_back_memory();
    }

    /// Takes one of the caller's shares, or refuses with `BUSY`.
    fn share(self: &Arc<Self>, who: Requester) -> Result<Share, Failure> {
        let Requester::Uid(uid) = who else {
            return Ok(Share {
                queue: None,
                uid: 0,
            });
        };
        let mut shares = self
            .shares
            .lock()
            .map_err(|_| Failure::new(Reason::Internal, "the work queue was poisoned"))?;
        let held = shares.entry(uid).or_insert(0);
        if *held >= self.per_caller {
            tracing::warn!(
                uid,
                held = *held,
                "refused key-store work: the caller's share of the queue is full"
            );
            return Err(Failure::new(
                Reason::Busy,
                format!(
                    "uid {uid} already has {held} key-store operations waiting or running, the most one caller may have",
                ),
            )
            .with_meta("limit", self.per_caller)
            .with_hint("Wait for your earlier requests to finish, then try again."));
        }
        *held += 1;
        Ok(Share {
            queue: Some(self.clone()),
            uid,
        })
    }

    /// Runs `work` on the blocking pool once a worker is free. The share
    /// is taken before waiting, the worker slot asynchronously: a caller
    /// that hangs up while waiting drops both, and its work never runs.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        who: Requester,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let share = self.share(who)?;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failure::new(Reason::Internal, "the work queue is closed"))?;
        let queue = self.clone();
        queue.running.fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            drop(share);
            queue.finished.fetch_add(1, Ordering::SeqCst);
            if queue.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                queue.trim_when_idle();
            }
            result
        })
        .await
        .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))
    }

    /// Gives freed memory back once the queue has stayed idle for
    /// [`TRIM_AFTER_IDLE`]; one waiting trim at a time. Called from a
    /// blocking-pool thread, which knows its runtime.
    fn trim_when_idle(self: &Arc<Self>) {
        if self.trim_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.trim_pending.store(false, Ordering::SeqCst);
            self.release_memory();
            return;
        };
        let queue = self.clone();
        runtime.spawn(async move {
            loop {
                let seen = queue.finished.load(Ordering::SeqCst);
                tokio::time::sleep(TRIM_AFTER_IDLE).await;
                if queue.running.load(Ordering::SeqCst) == 0
                    && queue.finished.load(Ordering::SeqCst) == seen
                {
                    break;
                }
            }
            queue.trim_pending.store(false, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || queue.release_memory()).await;
        });
    }

    /// Whether a trim is waiting for the queue to stay idle (for tests).
    pub fn trim_pending(&self) -> bool {
        self.trim_pending.load(Ordering::SeqCst)
    }

    /// Operations waiting or running for `uid` (for tests and status).
    pub fn held_by(&self, uid: u32) -> usize {
        self.shares
            .lock()
            .map(|s| s.get(&uid).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// One of a caller's shares of the queue; given back when dropped.
struct Share {
    queue: Option<Arc<WorkQueue>>,
    uid: u32,
}

impl Drop for Share {
    fn drop(&mut self) {
        let Some(queue) = &self.queue else { return };
        if let Ok(mut shares) = queue.shares.lock()
            && let Some(held) = shares.get_mut(&self.uid)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                shares.remove(&self.uid);
            }
        }
    }
}

/// Returns the memory freed by finished key-store work (Argon2 buffers in
/// particular) to the system, once the queue is idle.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_memory() {
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_memory() {}
