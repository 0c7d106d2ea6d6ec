//! Adding a user: the code is checked with the portal, the key made in a
//! key store, a pending row written, the key registered with the portal
//! (attestation, proof of possession, device signature), and the row made
//! active. A failure after the key exists deletes the row, then the key.

use fleetkey_plugin::{CreateOptions, Enrolled, Pin};
use fleetkey_proto::portal::{self, CodeKind};
use fleetkey_proto::{EnrollmentInput, Failure, Reason, binding, daemon, time, user_name};
use prost::Message;

use super::recovery::{Resolved, worth_retrying};
use super::{Engine, Requester, Store, user_message, wrong_kind};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;
use crate::pin_policy;
use crate::state::{DeviceRecord, UserRecord, UserState};

impl Engine {
    /// What can be checked before a code is known (device activated, key
    /// store usable, PIN policy), so that a scan does not open the camera
    /// for an enrollment bound to fail.
    pub fn check_add_user(&self, pin: &Pin, backend: &str) -> Result<(), Failure> {
        let backend_name = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
        self.require_device()?;
        let store = self.store(backend_name)?;
        pin_policy::check(
            &self.pin_policy(),
            backend_name,
            &store.info().pin_rules,
            pin,
        )
    }

    /// Enrolls the user an add-user code is bound to: key in the backend,
    /// pending record, registration with the portal, active record. Any
    /// failure undoes what was done.
    pub async fn add_user(
        &self,
        who: Requester,
        input: &str,
        pin: Pin,
        backend: &str,
        options: &CreateOptions,
        require_pin_change: bool,
    ) -> Result<daemon::User, Failure> {
        let input = EnrollmentInput::parse(input)?;
        let backend_name = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
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
            .with_hint("Ask the device's own portal for an add-user code."));
        }
        let store = self.store(backend_name)?;
        pin_policy::check(
            &self.pin_policy(),
            backend_name,
            &store.info().pin_rules,
            &pin,
        )?;

        let code = input.code().compact().to_string();
        if let Some(user) = self.finish_pending_for(&code).await? {
            return Ok(user);
        }
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let checked = portal.check_code(&code).await?;
        if checked.kind() != CodeKind::User {
            return Err(wrong_kind(
                "a device activation code",
                "add a user",
                "fleetkeyctl activate",
            ));
        }
        let name = portal_user_name(&checked.user)?;
        if self.user_record(&name)?.is_some() {
            return Err(already_enrolled(&name));
        }
        let started = std::time::Instant::now();
        let report = self.integrity_gate(who, "user add", Some(&name)).await?;
        let gate_time = started.elapsed();
        let evidence_started = std::time::Instant::now();
        let integrity_evidence = self
            .evidence_json(&report, &checked.integrity_nonce, who)
            .await?;
        tracing::info!(
            gate_ms = gate_time.as_secs_f64() * 1000.0,
            evidence_ms = evidence_started.elapsed().as_secs_f64() * 1000.0,
            "integrity work for user add"
        );

        let (enrolled, request) = self
            .enrollment_key(&device, &store, &code, &pin, options, integrity_evidence)
            .await?;
        let created = enrolled.key;
        let mut record = UserRecord {
            name: name.clone(),
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
        let attestation_format = request
            .attestation
            .as_ref()
            .map(|a| a.format.clone())
            .unwrap_or_default();
        // The pending row keeps the exact signed request: should the
        // daemon die once the portal has it, startup sends it again.
        record.enroll_request = request.encode_to_vec();
        let pending = record.clone();
        if let Err(failure) = self
            .write(move |state| state.insert_user_with(&pending, require_pin_change))
            .await
        {
            self.delete_key(&store, &created.key_ref).await;
            return Err(failure);
        }

        let sent_at = std::time::Instant::now();
        let registered = match portal.enroll_user(request.clone()).await {
            Ok(registered) => registered,
            // The answer may be lost with the portal's work done: the same
            // request is sent again, and the portal answers a repeat with
            // the same credential.
            Err(failure) if worth_retrying(failure.reason) => {
                match self.send_again(&device, &request, failure, sent_at).await {
                    Ok(registered) => registered,
                    Err(failure) if worth_retrying(failure.reason) => {
                        return Err(enroll_pending(&name, &failure));
                    }
                    Err(failure) => {
                        self.forget_user(&store, &record).await;
                        return Err(failure);
                    }
                }
            }
            Err(failure) => {
                self.forget_user(&store, &record).await;
                return Err(failure);
            }
        };
        crate::fault::crash_point("after-enroll");
        let (portal_hardware_backed, portal_detail) = (
            registered.hardware_backed,
            registered.attestation_detail.clone(),
        );
        let (user, credential, at) = (
            name.clone(),
            registered.credential_id.clone(),
            registered.enrolled_at,
        );
        // Should this fail, the portal has the key but we could not record
        // it: the pending record's request is sent again at the next start.
        self.write(move |state| state.activate_user(&user, &credential, at))
            .await?;
        tracing::info!(user = %name, backend = %store.name(), "user enrolled");
        self.events
            .send(super::EngineEvent::UserAdded { name: name.clone() });
        self.audit(
            who,
            AuditEvent::UserAdded {
                user: name.clone(),
                backend: store.name().to_string(),
                hardware_backed: portal_hardware_backed,
            },
        );
        let active = UserRecord {
            credential_id: registered.credential_id,
            enrolled_at: registered.enrolled_at,
            state: UserState::Active,
            enroll_request: Vec::new(),
            ..record
        };
        let mut message = user_message(&active, self.max_attempts_for(&active.backend))?;
        message.pin_change_required = require_pin_change;
        message.notes = enrolled.notes;
        if attestation_format == "none" && store.info().hardware_backed {
            message
                .notes
                .push("no attestation: the key store cannot prove where the key was made; the portal's policy decides".into());
        } else if attestation_format != "none" && !portal_hardware_backed {
            message.notes.push(format!(
                "the portal did not record the key as hardware-backed: {}",
                if portal_detail.is_empty() {
                    "it could not check the attestation"
                } else {
                    &portal_detail
                }
            ));
        }
        Ok(message)
    }

    /// Makes the key of an enrollment and its signed `EnrollUser` request
    /// in one key-store operation (a TPM does create, certify and the
    /// proof of possession in one session): the attestation bound to
    /// device and code, the proof of possession, the device signature.
    /// On a failure the store has deleted the key. `integrity_evidence`
    /// goes into the request as given.
    pub(super) async fn enrollment_key(
        &self,
        device: &DeviceRecord,
        store: &Store,
        code: &str,
        pin: &Pin,
        options: &CreateOptions,
        integrity_evidence: String,
    ) -> Result<(Enrolled, portal::EnrollUserRequest), Failure> {
        let name = store.name().to_string();
        let nonce = binding::key_attestation_nonce(&device.device_id, code);
        let pop_digest = {
            let (device_id, code, name) =
                (device.device_id.clone(), code.to_string(), name.clone());
            move |public_key_der: &[u8]| {
                binding::digest(&binding::enrollment_message(
                    &device_id,
                    code.as_str(),
                    public_key_der,
                    &name,
                ))
            }
        };
        let made = store
            .create_for_enrollment(
                random_id("u-")?,
                pin.clone(),
                options.clone(),
                nonce,
                pop_digest,
            )
            .await?;
        let message = binding::enrollment_message(
            &device.device_id,
            code,
            &made.enrolled.key.public_key_der,
            &name,
        );
        let device_signature = DeviceKey::from_secret(&device.key_secret)
            .and_then(|key| key.sign_digest(&binding::digest(&message)));
        let device_signature = match device_signature {
            Ok(signature) => signature,
            Err(failure) => {
                self.delete_key(store, &made.enrolled.key.key_ref).await;
                return Err(failure);
            }
        };
        let request = portal::EnrollUserRequest {
            device_id: device.device_id.clone(),
            code: code.to_string(),
            user_public_key: made.enrolled.key.public_key_der.clone(),
            backend: name,
            attestation: Some(portal::Attestation {
                format: made.attestation.format,
                data: made.attestation.data,
            }),
            user_signature: made.user_signature,
            device_signature,
            integrity_evidence,
        };
        Ok((made.enrolled, request))
    }
}

/// How long to wait before each new try of a registration whose answer
/// was lost.
const SEND_AGAIN_AFTER: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(1),
];
/// No new try starts this long after the first was sent (a portal that
/// lets requests time out is not waited for three times over).
const SEND_AGAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Engine {
    /// Sends a registration whose answer was lost again, on a new
    /// connection each time; the last failure if no try got an answer.
    async fn send_again(
        &self,
        device: &DeviceRecord,
        request: &portal::EnrollUserRequest,
        mut failure: Failure,
        first_sent: std::time::Instant,
    ) -> Result<portal::EnrollUserResponse, Failure> {
        for wait in SEND_AGAIN_AFTER {
            if !worth_retrying(failure.reason) || first_sent.elapsed() > SEND_AGAIN_WITHIN {
                break;
            }
            tokio::time::sleep(wait).await;
            let sent = async {
                let mut portal = self.portal.connect(&device.portal_url).await?;
                portal.enroll_user(request.clone()).await
            }
            .await;
            match sent {
                Ok(registered) => return Ok(registered),
                Err(next) => failure = next,
            }
        }
        Err(failure)
    }

    /// When a pending user (an enrollment whose answer was lost) was made
    /// with this code, sends its recorded request again now: the user if
    /// the portal confirms it, `ENROLL_PENDING` if it still cannot, and
    /// None when there is no such user or the portal refused it (the user
    /// is then rolled back and the code goes through the usual checks).
    /// The caller holds the enrollment lock.
    pub(super) async fn finish_pending_for(
        &self,
        code: &str,
    ) -> Result<Option<daemon::User>, Failure> {
        let Some(user) = self.pending_user_with_code(code)? else {
            return Ok(None);
        };
        match self.resolve_one(&user).await? {
            Resolved::Completed => {
                let record = self.user_record(&user.name)?.ok_or_else(|| {
                    Failure::new(Reason::Internal, "a completed enrollment vanished")
                })?;
                tracing::info!(user = %user.name, "a pending enrollment finished on a second try of its code");
                Ok(Some(user_message(
                    &record,
                    self.max_attempts_for(&record.backend),
                )?))
            }
            Resolved::Kept => Err(enroll_pending(
                &user.name,
                &Failure::new(
                    Reason::PortalUnreachable,
                    "the portal still gives no answer",
                ),
            )),
            Resolved::RolledBack => Ok(None),
        }
    }

    /// The pending user whose recorded request carries this code.
    pub(super) fn pending_user_with_code(&self, code: &str) -> Result<Option<UserRecord>, Failure> {
        let users = self.state.pending_users()?;
        Ok(users.into_iter().find(|user| {
            !user.enroll_request.is_empty()
                && portal::EnrollUserRequest::decode(user.enroll_request.as_slice())
                    .is_ok_and(|request| request.code == code)
        }))
    }
}

/// A registration whose answer was lost: the user stays pending.
fn enroll_pending(name: &str, last: &Failure) -> Failure {
    Failure::new(
        Reason::EnrollPending,
        format!(
            "user {name}: the portal's answer to the registration was lost ({}); the key and the request are kept and sent again",
            last.message
        ),
    )
    .with_meta("user", name)
}

pub(super) fn already_enrolled(name: &str) -> Failure {
    Failure::new(
        Reason::AlreadyEnrolled,
        format!("user {name} is already enrolled on this device"),
    )
    .with_hint(format!(
        "Remove the user first (fleetkeyctl user remove {name}) to enroll again."
    ))
    // `user add-batch` learns from it whose line is already done.
    .with_meta("user", name)
}

pub(super) fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The name the portal bound the code to: it must already be in the form
/// the one user-name rule gives (docs/user-names.md), since that is the
/// name the portal shows and keeps.
pub(super) fn portal_user_name(name: &str) -> Result<String, Failure> {
    match user_name::normalize(name) {
        Ok(normalized) if normalized == name => Ok(normalized),
        Ok(_) => Err(Failure::new(
            Reason::UserNameInvalid,
            "the portal bound this code to a user name that is not in normalized form (NFKC)",
        )
        .with_hint(
            "The portal must apply the user-name rule (docs/user-names.md) when it issues codes.",
        )),
        Err(e) => Err(Failure::new(
            Reason::UserNameInvalid,
            format!("the portal bound this code to an unusable user name: {e}"),
        )
        .with_hint(
            "The portal must apply the user-name rule (docs/user-names.md) when it issues codes.",
        )),
    }
}

pub(super) fn random_id(prefix: &str) -> Result<String, Failure> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::new(Reason::Internal, format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}
