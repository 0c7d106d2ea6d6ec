//! Login approvals (docs/approvals.md): the portal stream that brings
//! login challenges, the pending challenges in state.db, and their answers.
//!
//! Front ends (gRPC today, D-Bus later) use [`Engine::approvals`],
//! [`Engine::subscribe_approvals`], [`Engine::approve`] and
//! [`Engine::deny`]; each change is also sent on a broadcast channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleetkey_plugin::Pin;
use fleetkey_proto::binding::{self, Decision};
use fleetkey_proto::portal::{
    AnswerChallengeRequest, LoginChallenge, OpenDeviceStreamRequest, Signer, device_event,
};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{Failure, Reason, daemon, terminal, user_name};
use tokio::sync::broadcast;

use super::{Engine, Requester};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;
use crate::state::{ChallengeRecord, DeviceRecord};

/// Pending challenges the device keeps at once; more are ignored.
pub const MAX_PENDING_CHALLENGES: u32 = 256;
/// The longest context kept, in bytes; a longer challenge is ignored.
pub const MAX_CONTEXT_BYTES: usize = 1024;
/// The longest portal name kept, in bytes.
pub const MAX_PORTAL_NAME_BYTES: usize = 256;
/// The longest challenge id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// The largest message accepted on the stream.
pub const MAX_STREAM_MESSAGE_BYTES: usize = 16 * 1024;
/// The first reconnection delay; it doubles after each failure.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// The longest reconnection delay (before jitter, which only shortens it).
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How often an inactive device looks whether it was activated.
const INACTIVE_POLL: Duration = Duration::from_secs(2);
/// Events a slow watcher may fall behind before it gets a fresh list.
const EVENT_BUFFER: usize = 256;

/// The stream's state, for `status`.
#[derive(Debug, Clone)]
struct StreamStatus {
    state: &'static str,
    since: i64,
    error: String,
    connections: u32,
}

/// The approvals part of the engine.
pub struct Approvals {
    events: broadcast::Sender<daemon::Approval>,
    stream: Mutex<StreamStatus>,
}

impl Default for Approvals {
    fn default() -> Self {
        Self {
            events: broadcast::channel(EVENT_BUFFER).0,
            stream: Mutex::new(StreamStatus {
                state: "inactive",
                since: now_unix(),
                error: String::new(),
                connections: 0,
            }),
        }
    }
}

/// The reconnection delay after `failures` failures in a row: doubling
/// from [`BACKOFF_START`] up to [`BACKOFF_MAX`], then a random part of the
/// second half taken off (jitter), so devices do not reconnect in step.
pub fn backoff(failures: u32) -> Duration {
    let doubled = BACKOFF_START.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = doubled.min(BACKOFF_MAX);
    let mut random = [0u8; 2];
    let fraction = match getrandom::fill(&mut random) {
        Ok(()) => f64::from(u16::from_be_bytes(random)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    };
    ceiling.mul_f64(1.0 - fraction / 2.0)
}

fn state_of(record: &ChallengeRecord, now: i64) -> String {
    if record.state == "pending" && now >= record.expires_at {
        "expired".into()
    } else {
        record.state.clone()
    }
}

fn approval_message(record: &ChallengeRecord, now: i64) -> daemon::Approval {
    daemon::Approval {
        id: record.id.clone(),
        user: record.user.clone(),
        context: record.context.clone(),
        portal_name: record.portal_name.clone(),
        created_at: record.created_at,
        expires_at: record.expires_at,
        state: state_of(record, now),
        answered_at: record.answered_at,
    }
}

impl Engine {
    // ---- for front ends ----

    /// Every kept challenge (pending, answered, expired), oldest first.
    pub fn approvals(&self) -> Result<Vec<daemon::Approval>, Failure> {
        let now = now_unix();
        Ok(self
            .state
            .challenges()?
            .iter()
            .map(|record| approval_message(record, now))
            .collect())
    }

    /// Each change to a challenge from now on.
    pub fn subscribe_approvals(&self) -> broadcast::Receiver<daemon::Approval> {
        self.approvals.events.subscribe()
    }

    /// The stream fields of `status`.
    pub(super) fn stream_status(&self, status: &mut daemon::Status) {
        if let Ok(stream) = self.approvals.stream.lock() {
            status.portal_stream = stream.state.into();
            status.portal_stream_since = stream.since;
            status.portal_stream_error = stream.error.clone();
            status.portal_stream_connections = stream.connections;
        }
        status.pending_approvals = self
            .state
            .pending_challenge_count(now_unix())
            .unwrap_or_default();
    }

    /// Approves challenge `id` with the number shown at the login and the
    /// PIN of the challenge's user (wrong PINs counted as for `sign`).
    pub async fn approve(
        &self,
        who: Requester,
        id: &str,
        number: u32,
        pin: Pin,
    ) -> Result<daemon::Approval, Failure> {
        let record = self.pending_challenge(id)?;
        let device = self.require_device()?;
        self.require_connected()?;
        let (_guard, user) = self.lock_user(&record.user).await?;
        self.refuse_if_locked(&user)?;
        self.refuse_until_pin_changed(&user.name)?;
        let message = binding::challenge_answer_message(
            &record.id,
            &record.nonce,
            &record.context,
            number,
            Decision::Approve,
            &device.device_id,
        );
        let store = self.store(&user.backend)?.for_requester(who);
        // The PIN goes to the key store as for `sign`: through the TPM's
        // lockout budget (budget.rs).
        let _ticket = self.admit_pin_attempt(who, &user, &store).await?;
        let outcome = store
            .sign_digest(user.key_ref.clone(), pin, binding::digest(&message))
            .await?;
        if outcome.is_err() {
            self.after_pin_failure(&store).await;
        }
        let signature = self.count_pin_outcome(who, &user, outcome).await?;
        let request = AnswerChallengeRequest {
            device_id: device.device_id.clone(),
            challenge_id: record.id.clone(),
            decision: fleetkey_proto::portal::Decision::Approve as i32,
            number,
            signer: Signer::User as i32,
            signature,
        };
        self.send_answer(who, &device, &record, request, "approved")
            .await
    }

    /// Denies challenge `id`, signed by the device key (no PIN needed: a
    /// denial can only stop a login).
    pub async fn deny(&self, who: Requester, id: &str) -> Result<daemon::Approval, Failure> {
        let record = self.pending_challenge(id)?;
        let device = self.require_device()?;
        self.require_connected()?;
        let message = binding::challenge_answer_message(
            &record.id,
            &record.nonce,
            &record.context,
            0,
            Decision::Deny,
            &device.device_id,
        );
        let signature =
            DeviceKey::from_secret(&device.key_secret)?.sign_digest(&binding::digest(&message))?;
        let request = AnswerChallengeRequest {
            device_id: device.device_id.clone(),
            challenge_id: record.id.clone(),
            decision: fleetkey_proto::portal::Decision::Deny as i32,
            number: 0,
            signer: Signer::Device as i32,
            signature,
        };
        self.send_answer(who, &device, &record, request, "denied")
            .await
    }

    // ---- answering ----

    /// The pending, unexpired challenge `id`.
    fn pending_challenge(&self, id: &str) -> Result<ChallengeRecord, Failure> {
        let shown = terminal::escape(id);
        if id.len() > MAX_ID_BYTES {
            return Err(Failure::new(
                Reason::ChallengeUnknown,
                "no login challenge has so long an id",
            ));
        }
        let record = self.state.challenge(id)?.ok_or_else(|| {
            Failure::new(
                Reason::ChallengeUnknown,
                format!("no login challenge {shown} is known on this device"),
            )
            .with_hint("fleetkeyctl approvals list shows the challenges this device received.")
        })?;
        match state_of(&record, now_unix()).as_str() {
            "pending" => Ok(record),
            "expired" => Err(Failure::new(
                Reason::ChallengeExpired,
                format!(
                    "login challenge {shown} expired at {}",
                    fleetkey_proto::time::rfc3339(record.expires_at)
                ),
            )
            .with_hint("Start the login again at the portal.")),
            other => Err(Failure::new(
                Reason::ChallengeAnswered,
                format!("login challenge {shown} was already answered ({other})"),
            )),
        }
    }

    fn require_connected(&self) -> Result<(), Failure> {
        let connected = self
            .approvals
            .stream
            .lock()
            .is_ok_and(|s| s.state == "connected");
        if connected {
            Ok(())
        } else {
            Err(Failure::new(
                Reason::PortalNotConnected,
                "this device is not connected to its portal, so it cannot answer a login now",
            )
            .with_hint("fleetkeyctl status shows the portal stream and its last error; fleetkeyd reconnects by itself."))
        }
    }

    /// Marks the challenge answered (durably, before anything is sent, so
    /// it is never answered twice), sends the answer and records the
    /// portal's outcome.
    async fn send_answer(
        &self,
        who: Requester,
        device: &DeviceRecord,
        record: &ChallengeRecord,
        request: AnswerChallengeRequest,
        decided: &'static str,
    ) -> Result<daemon::Approval, Failure> {
        let id = record.id.clone();
        let claimed = self
            .write(move |state| state.move_challenge(&id, "pending", "answering", now_unix()))
            .await?;
        if !claimed {
            return Err(Failure::new(
                Reason::ChallengeAnswered,
                format!("login challenge {} was already answered", record.id),
            ));
        }
        let sent = async {
            let mut portal = self.portal.connect(&device.portal_url).await?;
            portal.answer_challenge(request).await
        }
        .await;
        let (state, result) = match sent {
            Ok(_) => (decided, Ok(())),
            Err(failure) if failure.reason == Reason::NumberWrong => ("number_wrong", Err(failure)),
            Err(failure) => ("failed", Err(failure)),
        };
        let id = record.id.clone();
        self.write(move |s| s.move_challenge(&id, "answering", state, now_unix()))
            .await?;
        let event = match state {
            "approved" => AuditEvent::Approved {
                user: record.user.clone(),
                challenge: record.id.clone(),
            },
            "number_wrong" => AuditEvent::NumberWrong {
                user: record.user.clone(),
                challenge: record.id.clone(),
            },
            _ => AuditEvent::Denied {
                user: record.user.clone(),
                challenge: record.id.clone(),
            },
        };
        if state != "failed" {
            self.audit(who, event);
        }
        tracing::info!(challenge = %record.id, user = %record.user, state, "login challenge answered");
        let approval = self.publish(&record.id);
        result?;
        approval
    }

    /// Sends the challenge's current state to watchers; returns it.
    fn publish(&self, id: &str) -> Result<daemon::Approval, Failure> {
        let record = self.state.challenge(id)?.ok_or_else(|| {
            Failure::new(Reason::Internal, "a login challenge vanished from state.db")
        })?;
        let approval = approval_message(&record, now_unix());
        // No watcher is not an error.
        let _ = self.approvals.events.send(approval.clone());
        Ok(approval)
    }

    // ---- the stream ----

    fn set_stream(&self, state: &'static str, error: Option<String>, connected: bool) {
        if let Ok(mut stream) = self.approvals.stream.lock() {
            if stream.state != state {
                stream.state = state;
                stream.since = now_unix();
            }
            if let Some(error) = error {
                stream.error = error;
            }
            if connected {
                stream.connections = stream.connections.saturating_add(1);
            }
        }
    }

    /// Keeps the portal stream open while the device is activated,
    /// reconnecting with [`backoff`]. Runs until the daemon stops.
    pub async fn run_portal_stream(&self) {
        let mut failures: u32 = 0;
        loop {
            let device = match self.device() {
                Ok(Some(device)) => device,
                Ok(None) => {
                    self.set_stream("inactive", None, false);
                    tokio::time::sleep(INACTIVE_POLL).await;
                    continue;
                }
                Err(failure) => {
                    tracing::warn!(error = %failure.message, "cannot read the device for the portal stream");
                    tokio::time::sleep(INACTIVE_POLL).await;
                    continue;
                }
            };
            self.set_stream("connecting", None, false);
            let opened = Instant::now();
            let error = match self.stream_once(&device, &mut failures).await {
                Ok(()) => "the portal ended the stream".to_string(),
                Err(failure) => failure.message,
            };
            // A stream that stayed up a while starts the backoff over.
            if opened.elapsed() > BACKOFF_MAX * 2 {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = backoff(failures);
            tracing::info!(error = %error, retry_in_ms = delay.as_millis() as u64, "portal stream down");
            self.set_stream("disconnected", Some(error), false);
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream_once(&self, device: &DeviceRecord, failures: &mut u32) -> Result<(), Failure> {
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let nonce = portal.stream_nonce(&device.device_id).await?;
        let message = binding::device_stream_message(&device.device_id, &nonce);
        let signature =
            DeviceKey::from_secret(&device.key_secret)?.sign_digest(&binding::digest(&message))?;
        let mut stream = portal
            .open_device_stream(
                OpenDeviceStreamRequest {
                    device_id: device.device_id.clone(),
                    nonce,
                    signature,
                },
                MAX_STREAM_MESSAGE_BYTES,
            )
            .await?;
        self.set_stream("connected", Some(String::new()), true);
        *failures = 0;
        tracing::info!(portal = %device.portal_url, "portal stream connected");
        loop {
            match stream.message().await {
                Ok(Some(event)) => match event.event {
                    Some(device_event::Event::LoginChallenge(challenge)) => {
                        self.receive(challenge).await;
                    }
                    Some(device_event::Event::IntegrityRequest(request)) => {
                        self.answer_integrity_request(device, &request.nonce).await;
                    }
                    // An event this fleetkeyd does not know: skipped.
                    None => tracing::debug!("unknown event on the portal stream skipped"),
                },
                Ok(None) => return Ok(()),
                Err(status) => return Err(portal.stream_failure(&status)),
            }
        }
    }

    /// Checks a challenge from the portal and keeps it.
    async fn receive(&self, challenge: LoginChallenge) {
        let id = terminal::escape(&challenge.id).into_owned();
        let refuse = |why: &str| tracing::warn!(challenge = %id, why, "login challenge ignored");
        let id_ok = !challenge.id.is_empty()
            && challenge.id.len() <= MAX_ID_BYTES
            && challenge
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return refuse("bad id");
        }
        if challenge.nonce.len() != 32 {
            return refuse("the nonce is not 32 bytes");
        }
        if challenge.context.len() > MAX_CONTEXT_BYTES {
            return refuse("the context is too long");
        }
        if challenge.portal_name.len() > MAX_PORTAL_NAME_BYTES {
            return refuse("the portal name is too long");
        }
        let user = match user_name::normalize(&challenge.user) {
            Ok(user) if self.require_user(&user).is_ok() => user,
            _ => return refuse("the user is not enrolled on this device"),
        };
        let now = now_unix();
        if challenge.expires_at <= now {
            return refuse("already expired");
        }
        let record = ChallengeRecord {
            id: challenge.id,
            user,
            nonce: challenge.nonce,
            context: challenge.context,
            portal_name: challenge.portal_name,
            created_at: challenge.created_at,
            expires_at: challenge.expires_at,
            received_at: now,
            state: "pending".into(),
            answered_at: 0,
        };
        let stored = record.clone();
        let added = self
            .write(move |state| state.insert_challenge(&stored, MAX_PENDING_CHALLENGES, now))
            .await;
        match added {
            Ok(true) => {
                tracing::info!(challenge = %record.id, user = %record.user, "login challenge received");
                let _ = self.publish(&record.id);
            }
            Ok(false) => {
                // Known already (sent again after a reconnect), or too many.
                if self.state.challenge(&record.id).ok().flatten().is_none() {
                    refuse("too many challenges are pending");
                }
            }
            Err(failure) => {
                tracing::warn!(error = %failure.message, "cannot keep a login challenge")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter() {
        for failures in 1..40 {
            let delay = backoff(failures);
            let ceiling = BACKOFF_START
                .saturating_mul(1u32 << (failures - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(delay <= ceiling, "{failures}: {delay:?} > {ceiling:?}");
            assert!(delay >= ceiling / 2, "{failures}: {delay:?} < half");
        }
        assert!(backoff(1) <= BACKOFF_START);
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }
}
