//! Resetting a user (`fleetkeyctl user reset NAME --code CODE`): the user
//! is enrolled again under the same name with a new key and PIN, for a PIN
//! that is locked or forgotten. The code is a reset code (`fleetkey-portal
//! user reset-code`): an add-user code that names the credential it
//! replaces, and the portal revokes that credential in the same
//! transaction that registers the new key.
//!
//! Order, so that a crash or a refusal loses nothing:
//!
//! 1. the portal is asked about the code (`CheckCode`): it must be an
//!    add-user code for this user that replaces this user's credential
//!    (`RESET_CODE_MISMATCH` otherwise); nothing is made before;
//! 2. the new key is made and the signed `EnrollUser` request recorded
//!    beside the user's row (`user_resets`), which keeps the old key;
//! 3. the request goes to the portal; if it accepts, the user's row takes
//!    the new key and credential in one transaction, and the old key is
//!    deleted (or, after a crash, by the next start's orphan cleanup); if
//!    it refuses, the reset row and the new key go and the user is as it
//!    was; if it cannot be reached, the reset stays recorded
//!    (`RESET_PENDING`) and is sent again every minute and at start, as a
//!    pending enrollment is (`recovery.rs`): the portal answers a repeat
//!    with the same credential.
//!
//! Until the portal has answered, the user signs with the old key and PIN.

use fleetkey_plugin::{CreateOptions, Pin};
use fleetkey_proto::portal::{CodeKind, EnrollUserRequest};
use fleetkey_proto::{EnrollmentInput, Failure, Reason, daemon, time};
use prost::Message;

use super::enrollment::{portal_user_name, same_url};
use super::recovery::worth_retrying;
use super::{Engine, Requester, user_message, wrong_kind};
use crate::audit::AuditEvent;
use crate::pin_policy;
use crate::state::{ResetRecord, UserRecord, UserState};

impl Engine {
    /// Resets the enrolled user `name` with a reset code (see the module).
    #[allow(clippy::too_many_arguments)]
    pub async fn reset_user(
        &self,
        who: Requester,
        name: &str,
        input: &str,
        pin: Pin,
        backend: &str,
        options: &CreateOptions,
        require_pin_change: bool,
    ) -> Result<daemon::User, Failure> {
        let input = EnrollmentInput::parse(input)?;
        let _guard = self.enroll_lock.lock().await;
        let device = self.require_device()?;
        if let Some(url) = input.portal_url()
            && !same_url(url, &device.portal_url)
        {
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!(
                    "this code is for the portal {url}, but the device is activated with {}",
                    device.portal_url
                ),
            )
            .with_hint("Ask the device's own portal for a reset code."));
        }
        let old = self.require_user(name)?;
        if self.state.reset(&old.name)?.is_some() {
            return Err(reset_pending(
                &old.name,
                "an earlier reset still waits for the portal's answer",
            ));
        }
        let backend_name = if backend.is_empty() {
            old.backend.clone()
        } else {
            backend.to_string()
        };
        let store = self.store(&backend_name)?;
        pin_policy::check(
            &self.pin_policy(),
            &backend_name,
            &store.info().pin_rules,
            &pin,
        )?;

        let code = input.code().compact().to_string();
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let checked = portal.check_code(&code).await?;
        if checked.kind() != CodeKind::User {
            return Err(wrong_kind(
                "a device activation code",
                "reset a user",
                "fleetkeyctl activate",
            ));
        }
        let named = portal_user_name(&checked.user)?;
        if named != old.name || checked.replaces_credential_id != old.credential_id {
            return Err(mismatch(
                &old,
                &named,
                &checked.replaces_credential_id,
                &device.device_id,
            ));
        }
        let report = self
            .integrity_gate(who, "user reset", Some(&old.name))
            .await?;
        let integrity_evidence = self
            .evidence_json(&report, &checked.integrity_nonce, who)
            .await?;

        let (enrolled, request) = self
            .enrollment_key(&device, &store, &code, &pin, options, integrity_evidence)
            .await?;
        let created = enrolled.key;
        let draft = UserRecord {
            name: old.name.clone(),
            credential_id: String::new(),
            backend: store.name().to_string(),
            key_ref: created.key_ref.clone(),
            public_key_der: created.public_key_der.clone(),
            hardware_backed: store.info().hardware_backed,
            state: UserState::Pending,
            failed_attempts: 0,
            enrolled_at: time::now_unix(),
            enroll_request: Vec::new(),
        };
        let reset = ResetRecord {
            name: old.name.clone(),
            backend: draft.backend.clone(),
            key_ref: draft.key_ref.clone(),
            public_key_der: draft.public_key_der.clone(),
            hardware_backed: draft.hardware_backed,
            enroll_request: request.encode_to_vec(),
            old_credential_id: old.credential_id.clone(),
            require_pin_change,
            created_at: draft.enrolled_at,
        };
        let recorded = reset.clone();
        if let Err(failure) = self.write(move |state| state.insert_reset(&recorded)).await {
            self.delete_key(&store, &created.key_ref).await;
            return Err(failure);
        }
        match portal.enroll_user(request).await {
            Ok(registered) => {
                crate::fault::crash_point("reset-after-enroll");
                let user = self
                    .complete_reset(
                        who,
                        &reset,
                        &registered.credential_id,
                        registered.enrolled_at,
                    )
                    .await?;
                let mut message = user_message(&user, self.max_attempts_for(&user.backend))?;
                message.pin_change_required = require_pin_change;
                Ok(message)
            }
            Err(failure) if worth_retrying(failure.reason) => {
                tracing::warn!(user = %old.name, %failure, "the portal did not answer a reset; it stays pending and is sent again");
                Err(reset_pending(&old.name, &failure.message))
            }
            Err(failure) => {
                self.undo_reset(&reset).await;
                Err(failure)
            }
        }
    }

    /// The portal accepted a reset: the user's row takes the new key and
    /// credential, then the old key is deleted. Under the user's lock, so
    /// that no signature is made with the old key while it goes.
    pub(super) async fn complete_reset(
        &self,
        who: Requester,
        reset: &ResetRecord,
        credential_id: &str,
        enrolled_at: i64,
    ) -> Result<UserRecord, Failure> {
        let (_lock, old) = self.lock_user(&reset.name).await?;
        let (done, credential) = (reset.clone(), credential_id.to_string());
        self.write(move |state| state.complete_reset(&done, &credential, enrolled_at))
            .await?;
        match self.store(&old.backend) {
            Ok(store) => self.delete_key(&store, &old.key_ref).await,
            Err(e) => {
                tracing::warn!(user = %old.name, reason = %e, "key store unavailable; the old key is deleted at a later start")
            }
        }
        tracing::info!(user = %reset.name, old_credential_id = %reset.old_credential_id, %credential_id, "user reset: new key and PIN, old credential revoked by the portal");
        self.audit(
            who,
            AuditEvent::UserReset {
                user: reset.name.clone(),
                backend: reset.backend.clone(),
                hardware_backed: reset.hardware_backed,
                old_credential_id: reset.old_credential_id.clone(),
                credential_id: credential_id.to_string(),
            },
        );
        self.require_user(&reset.name)
    }

    /// The portal refused a reset: the reset row, then the new key. The
    /// user keeps the old key.
    pub(super) async fn undo_reset(&self, reset: &ResetRecord) {
        let name = reset.name.clone();
        if let Err(failure) = self.write(move |state| state.delete_reset(&name)).await {
            tracing::warn!(user = %reset.name, %failure, "could not forget a refused reset; it is tried again at the next start");
            return;
        }
        match self.store(&reset.backend) {
            Ok(store) => self.delete_key(&store, &reset.key_ref).await,
            Err(e) => {
                tracing::warn!(user = %reset.name, reason = %e, "key store unavailable; the reset's key is deleted at a later start")
            }
        }
    }

    /// Sends the recorded request of a reset a crash or an unreachable
    /// portal left behind, and completes or undoes it by the answer.
    /// Returns true when resolved (either way), false when kept.
    pub(super) async fn resolve_reset(&self, reset: &ResetRecord) -> Result<bool, Failure> {
        let request = match EnrollUserRequest::decode(reset.enroll_request.as_slice()) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(user = %reset.name, error = %e, "the recorded reset request is damaged; undoing the reset");
                self.undo_reset(reset).await;
                return Ok(true);
            }
        };
        let Some(device) = self.device()? else {
            self.undo_reset(reset).await;
            return Ok(true);
        };
        let sent = async {
            let mut portal = self.portal.connect(&device.portal_url).await?;
            portal.enroll_user(request).await
        }
        .await;
        match sent {
            Ok(registered) => {
                self.complete_reset(
                    Requester::Daemon,
                    reset,
                    &registered.credential_id,
                    registered.enrolled_at,
                )
                .await?;
                tracing::warn!(user = %reset.name, "completed a reset interrupted by a crash or an unreachable portal: the portal confirmed it");
                Ok(true)
            }
            Err(failure) if worth_retrying(failure.reason) => {
                tracing::warn!(user = %reset.name, %failure, "a reset stays pending: the portal could not confirm it now; it is tried again later");
                Ok(false)
            }
            Err(failure) => {
                tracing::warn!(user = %reset.name, %failure, "the portal refused a pending reset; undoing it (the user keeps the old key)");
                self.undo_reset(reset).await;
                Ok(true)
            }
        }
    }
}

fn reset_pending(name: &str, why: &str) -> Failure {
    Failure::new(
        Reason::ResetPending,
        format!("the reset of {name} is waiting for the portal: {why}"),
    )
    .with_meta("user", name)
}

fn mismatch(old: &UserRecord, named: &str, replaces: &str, device_id: &str) -> Failure {
    let why = if named != old.name {
        format!("it is for user {named}, not {}", old.name)
    } else if replaces.is_empty() {
        "it is an ordinary add-user code, which replaces no credential".to_string()
    } else {
        format!(
            "it replaces credential {replaces}, but {}'s credential here is {}",
            old.name, old.credential_id
        )
    };
    Failure::new(
        Reason::ResetCodeMismatch,
        format!(
            "this code cannot reset {}: {why}; nothing was changed",
            old.name
        ),
    )
    .with_hint(format!(
        "Ask the portal for a reset code for this user on this device: fleetkey-portal user reset-code {} --device {device_id}",
        old.name
    ))
}
