//! The `fleetkey.portal.v1.Portal` gRPC service.
//!
//! Every refusal is a [`Failure`] with a stable reason and a one-line
//! message naming what was wrong, carried as a google.rpc.ErrorInfo on the
//! status. Redemptions run in one `BEGIN IMMEDIATE` transaction, so a code
//! is redeemed at most once even when devices race, and are idempotent: a
//! device that retries after losing the answer gets the same result again.
//!
//! Every call first passes the rate limits ([`crate::rate_limit`]): the
//! peer's bucket for calls no registered device signed, the device's bucket
//! for `EnrollUser` and `RevokeUser` once the device signature verifies.
//!
//! Checks, in order:
//! - CheckCode: the peer's rate limit, code syntax, code known, used,
//!   expired.
//! - RegisterDevice: the peer's rate limit, code syntax, device key, device
//!   signature, device name, then in the transaction: code known, code
//!   kind, code used (unless by this very key: a retry), code expired.
//! - EnrollUser: the device's rate limit (not spent yet), code syntax, user
//!   key, backend, device known, device signature (a failure so far is
//!   charged to the peer), the device's rate limit (spent), then in the
//!   transaction: user signature (proof of possession), code known, kind,
//!   used (unless an exact retry: same device, code and user key, not
//!   revoked since, which answers the same credential again), expired, the
//!   credential a replacing code names revoked (`crate::migrate`), user
//!   not already enrolled on the device, attestation format.
//! - RevokeUser: the device's rate limit (not spent yet), device known,
//!   timestamp within 5 minutes, device signature (a failure so far is
//!   charged to the peer), the device's rate limit (spent), user name,
//!   an active credential to revoke: the one named, or with an empty
//!   `credential_id` whichever the user has on the device (a device that
//!   lost the id in a crash still knows the name).
//! - DeactivateDevice: as RevokeUser up to the device signature (over
//!   `binding::deactivation_message`), then the device's enrollments and
//!   record are removed in one transaction.
//!
//! User names come from codes, which `code issue` checked against the one
//! user-name rule (`fleetkey_proto::user_name`, docs/user-names.md); a name
//! in a request is normalized by the same rule before it is looked up.
//!
//! A device that presents a TPM identity (docs/tpm-attestation.md) is
//! registered in two steps: RegisterDevice checks the AK and EK public
//! areas (and the EK certificate with `--tpm-ek-roots`) and answers with a
//! credential challenge it keeps, without using the code;
//! CompleteTpmActivation checks the device signature and the secret, then
//! redeems the code. A wrong secret discards the challenge.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fleetkey_proto::portal::portal_server::Portal;
use fleetkey_proto::portal::{
    CheckCodeRequest, CheckCodeResponse, CompleteTpmActivationRequest, DeactivateDeviceRequest,
    DeactivateDeviceResponse, EnrollUserRequest, EnrollUserResponse, RegisterDeviceRequest,
    RegisterDeviceResponse, RevokeUserRequest, RevokeUserResponse, TpmCertification, TpmChallenge,
};
use fleetkey_proto::time::{now_unix, rfc3339};
use fleetkey_proto::{ActivationCode, Failure, Reason, binding, terminal, user_name};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::login;
use crate::rate_limit::{RateLimit, RateLimiter};
use crate::store::{
    CodeKind, CodeRecord, CodeState, Db, Device, EkCertificateStatus, Enrollment,
    PendingTpmChallenge, Store, StoreError, TpmIdentity, new_credential_id, new_device_id,
};
use crate::tpm;

pub mod integrity;
use integrity::IntegrityGate;

/// How far a revocation's timestamp may be from the portal's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// The longest device name accepted, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 256;
/// The longest key-store (backend) name accepted.
pub const MAX_BACKEND_LEN: usize = 32;
/// The attestation format of keys that come without attestation.
pub const ATTESTATION_NONE: &str = "none";
/// The attestation format of TPM keys certified by the device's AK.
pub const ATTESTATION_TPM2_CERTIFY: &str = "tpm2-certify";
/// The size of the credential secret drawn for a TPM challenge.
pub const TPM_SECRET_LEN: usize = 32;
/// `attestation_detail` of a device registered without a TPM identity.
pub const DETAIL_NO_TPM: &str = "no TPM identity";

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "portal database failure");
        Failure::new(
            Reason::Internal,
            "the portal's database failed; nothing was changed",
        )
        .with_hint("Try again later; the portal's log says what failed.")
    }
}

/// The portal service over a [`Store`].
#[derive(Debug, Clone)]
pub struct PortalService {
    store: Arc<Mutex<Store>>,
    /// Public keys of the roots PIV attestations must chain to.
    piv_attestation_roots: Arc<Vec<Vec<u8>>>,
    /// Certificates (DER) EK certificates must chain through; `None`: EK
    /// certificates are not checked.
    tpm_ek_roots: Arc<Option<Vec<Vec<u8>>>>,
    /// The per-peer and per-device rate limits.
    limiter: Arc<RateLimiter>,
    /// Nonces handed out for opening device streams (approvals).
    stream_nonces: Arc<login::NonceBook>,
    /// The newest stream of each device: an older one stops.
    streams: Arc<Mutex<std::collections::HashMap<String, u64>>>,
    /// Integrity nonces and the required level (service/integrity.rs).
    integrity: Arc<IntegrityGate>,
}

impl PortalService {
    pub fn new(store: Store) -> Self {
        Self::shared(Arc::new(Mutex::new(store)))
    }

    /// A service over a store that others (e.g. a test) also use.
    pub fn shared(store: Arc<Mutex<Store>>) -> Self {
        Self {
            store,
            piv_attestation_roots: Arc::new(Vec::new()),
            tpm_ek_roots: Arc::new(None),
            limiter: Arc::new(RateLimiter::default()),
            stream_nonces: Arc::new(login::NonceBook::default()),
            streams: Arc::new(Mutex::new(std::collections::HashMap::new())),
            integrity: Arc::new(IntegrityGate::default()),
        }
    }

    /// Requires integrity evidence quoted by a TPM at HSI `level` or
    /// above from every activation and user add (`serve
    /// --require-integrity`).
    pub fn with_required_integrity(mut self, level: Option<u8>) -> Self {
        self.integrity = Arc::new(IntegrityGate::new(level));
        self
    }

    /// Limits each peer and each device to `limit` (the default is
    /// [`RateLimit::default`]); `None` turns the limits off.
    pub fn with_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.limiter = Arc::new(RateLimiter::new(limit));
        self
    }

    /// Requires EK certificates chaining through these certificates (DER:
    /// roots and intermediates) to a self-signed one among them.
    pub fn with_tpm_ek_roots(mut self, certificates: Vec<Vec<u8>>) -> Self {
        self.tpm_ek_roots = Arc::new(Some(certificates));
        self
    }

    /// Trusts these roots (SubjectPublicKeyInfo DER) for PIV attestation.
    pub fn with_piv_attestation_roots(mut self, roots: Vec<Vec<u8>>) -> Self {
        self.piv_attestation_roots = Arc::new(roots);
        self
    }

    /// The store the service works on.
    pub fn store(&self) -> &Arc<Mutex<Store>> {
        &self.store
    }

    /// Runs blocking database work off the async executor.
    async fn with_store<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, Failure> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut guard = store
                .lock()
                .map_err(|_| internal("the portal's store lock is poisoned"))?;
            work(&mut guard)
        })
        .await
        .map_err(|error| internal(format!("a portal worker task failed: {error}")))?
    }

    /// What a code is for (a caller without an address).
    pub async fn check_code(
        &self,
        request: CheckCodeRequest,
    ) -> Result<CheckCodeResponse, Failure> {
        self.check_code_from(None, request).await
    }

    /// What a code is for, asked by `peer`.
    pub async fn check_code_from(
        &self,
        peer: Option<SocketAddr>,
        request: CheckCodeRequest,
    ) -> Result<CheckCodeResponse, Failure> {
        self.limiter.charge_peer("CheckCode", peer)?;
        let code = parse_code(&request.code)?;
        let now = now_unix();
        let looked_up = code.clone();
        let record = self
            .with_store(move |store| lookup_code(&store.db(), &looked_up))
            .await?;
        usable(&code, &record, now)?;
        let integrity_nonce = self.integrity.issue(&integrity::code_key(&code), now)?;
        Ok(CheckCodeResponse {
            integrity_nonce,
            kind: proto_kind(record.kind) as i32,
            user: match record.kind {
                CodeKind::User => record.user.unwrap_or_default(),
                CodeKind::Device => String::new(),
            },
            expires_at: record.expires_at,
            replaces_credential_id: record.replaces_credential.unwrap_or_default(),
        })
    }

    /// Redeems a device activation code; returns the answer and whether
    /// this was a retry of an earlier, successful registration. With a TPM
    /// identity the answer is a credential challenge and the code stays
    /// unused until [`Self::complete_tpm_activation`].
    pub async fn register_device(
        &self,
        request: RegisterDeviceRequest,
    ) -> Result<(RegisterDeviceResponse, bool), Failure> {
        self.register_device_from(None, request).await
    }

    /// [`Self::register_device`] for a call from `peer`.
    pub async fn register_device_from(
        &self,
        peer: Option<SocketAddr>,
        request: RegisterDeviceRequest,
    ) -> Result<(RegisterDeviceResponse, bool), Failure> {
        // Anyone can make a device key, so the key does not tell callers
        // apart: the peer pays.
        self.limiter.charge_peer("RegisterDevice", peer)?;
        let code = parse_code(&request.code)?;
        let key = parse_public_key(&request.device_public_key, "device_public_key")?;
        let message = binding::activation_message(code.compact(), &request.device_public_key);
        verify(&key, &message, &request.signature, "device signature")?;
        let name = check_device_name(&request.device_name)?;
        let now = now_unix();
        let challenge = match &request.tpm {
            Some(identity) => Some(self.tpm_challenge(identity, now)?),
            None => None,
        };
        let gate = self.gate();
        self.with_store(move |store| {
            store.immediate(|db| {
                let record = lookup_code(db, &code)?;
                if record.kind != CodeKind::Device {
                    return Err(wrong_kind(&code, &record));
                }
                if let Some(device) = retried_by(db, &record, &request.device_public_key, now)? {
                    return Ok((registered(device), true));
                }
                usable(&code, &record, now)?;
                if let Some((identity, secret, credential)) = challenge {
                    let detail = tpm_detail(&identity, false);
                    db.put_tpm_challenge(&PendingTpmChallenge {
                        code_hash: record.code_hash,
                        device_public_key: request.device_public_key,
                        device_name: name,
                        secret_sha256: Sha256::digest(secret).to_vec(),
                        identity,
                    })?;
                    return Ok((
                        RegisterDeviceResponse {
                            device_id: String::new(),
                            tpm_challenge: Some(TpmChallenge {
                                credential_blob: credential.credential_blob,
                                encrypted_secret: credential.encrypted_secret,
                            }),
                            attestation_detail: detail,
                        },
                        false,
                    ));
                }
                let verified = gate.check(
                    &integrity::code_key(&code),
                    &request.integrity_evidence,
                    None,
                    now,
                )?;
                let device = Device {
                    device_id: new_device_id()?,
                    public_key: request.device_public_key,
                    name,
                    registered_at: now,
                    tpm: None,
                    attestation_detail: DETAIL_NO_TPM.to_string(),
                };
                db.insert_device(&device)?;
                mark_used(db, &code, &record, &device.device_id, now)?;
                if let Some(verified) = &verified {
                    integrity::record(db, &device.device_id, verified, "activation")?;
                }
                Ok((registered(device), false))
            })
        })
        .await
    }

    /// Checks a TPM identity and makes its credential challenge: the
    /// identity to keep, the secret, and what to send.
    fn tpm_challenge(
        &self,
        identity: &fleetkey_proto::portal::TpmIdentity,
        now: i64,
    ) -> Result<(TpmIdentity, [u8; TPM_SECRET_LEN], tpm::Credential), Failure> {
        let refuse = |what: &str, error: tpm::TpmError| {
            Failure::new(
                Reason::InvalidArgument,
                format!("the TPM identity's {what} is not acceptable: {error}"),
            )
            .with_hint("fleetkeyd makes the AK and EK from the templates of docs/tpm-attestation.md; a different TPM stack or template is not supported.")
        };
        let ak =
            tpm::Public::parse(&identity.ak_public).map_err(|e| refuse("AK public area", e))?;
        tpm::check_ak_public(&ak).map_err(|e| refuse("AK public area", e))?;
        let ek =
            tpm::Public::parse(&identity.ek_public).map_err(|e| refuse("EK public area", e))?;
        tpm::check_ek_public(&ek).map_err(|e| refuse("EK public area", e))?;
        let (status, anchor) = match self.tpm_ek_roots.as_ref() {
            Some(bundle) => {
                let check = tpm::check_ek_certificate(&identity.ek_certificate, &ek, bundle)
                    .map_err(|error| {
                        Failure::new(
                            Reason::SignatureInvalid,
                            format!("the TPM's EK certificate does not verify: {error}"),
                        )
                        .with_hint("This portal only activates devices whose TPM's EK certificate chains to its --tpm-ek-roots; the TPM is not from a maker it trusts, or the certificate was not sent.")
                    })?;
                (EkCertificateStatus::Verified, Some(check.anchor))
            }
            None if identity.ek_certificate.is_empty() => (EkCertificateStatus::Absent, None),
            None => (EkCertificateStatus::NotChecked, None),
        };
        let ak_name = ak.name().map_err(|e| refuse("AK public area", e))?;
        let mut secret = [0u8; TPM_SECRET_LEN];
        getrandom::fill(&mut secret)
            .map_err(|e| internal(format!("the random generator failed: {e}")))?;
        let credential = tpm::make_credential(&ek, &ak_name, &secret)
            .map_err(|e| internal(format!("TPM2_MakeCredential failed: {e}")))?;
        Ok((
            TpmIdentity {
                ak_public: identity.ak_public.clone(),
                ak_name,
                ek_public: identity.ek_public.clone(),
                ek_certificate: identity.ek_certificate.clone(),
                ek_certificate_status: status,
                ek_certificate_anchor: anchor,
                verified_at: now,
            },
            secret,
            credential,
        ))
    }

    /// Finishes a TPM-attested activation: the secret proves the AK lives
    /// in the EK's TPM. Returns the answer and whether this was a retry.
    pub async fn complete_tpm_activation(
        &self,
        request: CompleteTpmActivationRequest,
    ) -> Result<(RegisterDeviceResponse, bool), Failure> {
        self.complete_tpm_activation_from(None, request).await
    }

    /// [`Self::complete_tpm_activation`] for a call from `peer`.
    pub async fn complete_tpm_activation_from(
        &self,
        peer: Option<SocketAddr>,
        request: CompleteTpmActivationRequest,
    ) -> Result<(RegisterDeviceResponse, bool), Failure> {
        self.limiter.charge_peer("CompleteTpmActivation", peer)?;
        let code = parse_code(&request.code)?;
        let key = parse_public_key(&request.device_public_key, "device_public_key")?;
        let message = binding::tpm_activation_message(
            code.compact(),
            &request.device_public_key,
            &request.secret,
        );
        verify(&key, &message, &request.signature, "device signature")?;
        let now = now_unix();
        let gate = self.gate();
        // The closure's Ok(Err(..)) is a refusal whose changes (the
        // discarded challenge) are committed.
        self.with_store(move |store| {
                store.immediate(|db| {
                    let record = lookup_code(db, &code)?;
                    if record.kind != CodeKind::Device {
                        return Err(wrong_kind(&code, &record));
                    }
                    if let Some(device) = retried_by(db, &record, &request.device_public_key, now)?
                    {
                        return Ok(Ok((registered(device), true)));
                    }
                    let Some(challenge) =
                        db.tpm_challenge(&record.code_hash, &request.device_public_key)?
                    else {
                        return Err(Failure::new(
                            Reason::DeviceNotActivated,
                            format!(
                                "no TPM challenge is pending for code {code} and this device key"
                            ),
                        )
                        .with_hint(
                            "Send RegisterDevice with the TPM identity first; a challenge answered with a wrong secret is discarded.",
                        ));
                    };
                    let presented = Sha256::digest(&request.secret);
                    if !tpm::constant_time_eq(&presented, &challenge.secret_sha256) {
                        // Committed: a wrong secret discards the challenge.
                        db.delete_tpm_challenges(&record.code_hash, Some(&request.device_public_key))?;
                        return Ok(Err(Failure::new(
                            Reason::SignatureInvalid,
                            format!(
                                "the TPM credential secret for code {code} is wrong; the challenge is discarded"
                            ),
                        )
                        .with_hint(
                            "The AK the device presented is not in the TPM of the EK it presented (or the TPM was reset); activate again with RegisterDevice.",
                        )));
                    }
                    usable(&code, &record, now)?;
                    let verified = gate.check(
                        &integrity::code_key(&code),
                        &request.integrity_evidence,
                        Some(challenge.identity.ak_public.as_slice()),
                        now,
                    )?;
                    let mut identity = challenge.identity;
                    identity.verified_at = now;
                    let detail = tpm_detail(&identity, true);
                    let device = Device {
                        device_id: new_device_id()?,
                        public_key: challenge.device_public_key,
                        name: challenge.device_name,
                        registered_at: now,
                        tpm: Some(identity),
                        attestation_detail: detail,
                    };
                    db.insert_device(&device)?;
                    mark_used(db, &code, &record, &device.device_id, now)?;
                    if let Some(verified) = &verified {
                        integrity::record(db, &device.device_id, verified, "activation")?;
                    }
                    db.delete_tpm_challenges(&record.code_hash, None)?;
                    Ok(Ok((registered(device), false)))
                })
            })
            .await?
    }

    /// Redeems an add-user code; returns the enrollment and whether this was
    /// a retry of an earlier, successful enrollment.
    pub async fn enroll_user(
        &self,
        request: EnrollUserRequest,
    ) -> Result<(Enrollment, bool), Failure> {
        self.enroll_user_from(None, request).await
    }

    /// The device a signed request comes from, once its signature
    /// verifies over the message `checks` makes (after checking the
    /// request's fields). Until then the caller is nobody in particular: a
    /// failure is charged to the peer, a success to the device.
    async fn signed_by_device<T>(
        &self,
        rpc: &'static str,
        peer: Option<SocketAddr>,
        device_id: &str,
        signature: &[u8],
        checks: impl FnOnce() -> Result<(Vec<u8>, T), Failure>,
    ) -> Result<(Device, T), Failure> {
        // A device out of tokens is refused before any work; peeking
        // spends nothing, so naming someone else's device costs them
        // nothing.
        self.limiter.device_has_room(rpc, device_id)?;
        let id = device_id.to_string();
        let verified = async {
            let (message, checked) = checks()?;
            let device = self
                .with_store(move |store| known_device(&store.db(), &id))
                .await?;
            verify(
                &registered_key(&device)?,
                &message,
                signature,
                "device signature",
            )?;
            Ok((device, checked))
        }
        .await;
        match verified {
            Ok(verified) => {
                self.limiter.charge_device(rpc, &verified.0.device_id)?;
                Ok(verified)
            }
            Err(failure) => {
                self.limiter.charge_peer(rpc, peer)?;
                Err(failure)
            }
        }
    }

    /// [`Self::enroll_user`] for a call from `peer`.
    pub async fn enroll_user_from(
        &self,
        peer: Option<SocketAddr>,
        request: EnrollUserRequest,
    ) -> Result<(Enrollment, bool), Failure> {
        let (device, (message, code, user_key, backend)) = self
            .signed_by_device(
                "EnrollUser",
                peer,
                &request.device_id,
                &request.device_signature,
                || {
                    let code = parse_code(&request.code)?;
                    let user_key = parse_public_key(&request.user_public_key, "user_public_key")?;
                    let backend = check_backend(&request.backend)?;
                    let message = binding::enrollment_message(
                        &request.device_id,
                        code.compact(),
                        &request.user_public_key,
                        &request.backend,
                    );
                    Ok((message.clone(), (message, code, user_key, backend)))
                },
            )
            .await?;
        let format = request
            .attestation
            .as_ref()
            .map(|a| a.format.clone())
            .unwrap_or_default();
        let attestation_data = request
            .attestation
            .as_ref()
            .map(|a| a.data.clone())
            .unwrap_or_default();
        let roots = self.piv_attestation_roots.clone();
        let nonce = binding::key_attestation_nonce(&request.device_id, code.compact());
        let now = now_unix();
        let gate = self.gate();
        self.with_store(move |store| {
            store.immediate(|db| {
                verify(
                    &user_key,
                    &message,
                    &request.user_signature,
                    "user signature (proof of possession of the user key)",
                )?;
                let record = lookup_code(db, &code)?;
                if record.kind != CodeKind::User {
                    return Err(wrong_kind(&code, &record));
                }
                let user = record.user.clone().ok_or_else(|| {
                    internal(format!("add-user code {code} has no user in the database"))
                })?;
                if matches!(record.state(now), CodeState::Used { .. })
                    && let Some(existing) = db.enrollment_by_code(&record.code_hash)?
                    && existing.device_id == request.device_id
                    && existing.public_key == request.user_public_key
                    && existing.revoked_at.is_none()
                {
                    return Ok((existing, true));
                }
                usable(&code, &record, now)?;
                // A replacing code (device migrate, user reset-code): the
                // old credential goes in this transaction, before the
                // one-active-per-device check, so that a reset on the
                // same device replaces the user's own credential.
                if let Some(old) = &record.replaces_credential {
                    crate::migrate::retire_replaced(db, old, now)?;
                }
                if let Some(existing) = db.active_enrollment(&device.device_id, &user)? {
                    return Err(Failure::new(
                        Reason::AlreadyEnrolled,
                        format!(
                            "user {user} is already enrolled on device {} (credential {}, since {})",
                            device.device_id,
                            existing.credential_id,
                            rfc3339(existing.enrolled_at)
                        ),
                    ));
                }
                let verified = gate.check(
                    &integrity::code_key(&code),
                    &request.integrity_evidence,
                    device.tpm.as_ref().map(|t| t.ak_public.as_slice()),
                    now,
                )?;
                if let Some(verified) = &verified {
                    integrity::record(db, &device.device_id, verified, "user add")?;
                }
                let (attestation_format, hardware_backed, attestation_detail) = match format.as_str() {
                    "" | ATTESTATION_NONE => (
                        ATTESTATION_NONE.to_string(),
                        false,
                        "no attestation: the key is not known to be hardware-backed".to_string(),
                    ),
                    crate::attestation::PIV_ATTESTATION if roots.is_empty() => {
                        // Nothing to check it against: recorded, not trusted.
                        tracing::warn!(%user, "PIV attestation received, but no roots are configured (--piv-attestation-roots); the key is recorded as not hardware-backed");
                        (
                            crate::attestation::PIV_ATTESTATION.to_string(),
                            false,
                            "PIV attestation not checked: the portal has no --piv-attestation-roots".to_string(),
                        )
                    }
                    crate::attestation::PIV_ATTESTATION => {
                        crate::attestation::verify(
                            &attestation_data,
                            &request.user_public_key,
                            &roots,
                        )
                        .map_err(|why| {
                            Failure::new(
                                Reason::SignatureInvalid,
                                format!("the PIV attestation of {user}'s key does not verify: {why}"),
                            )
                            .with_hint("The card is not one this portal trusts, or its attestation was tampered with.")
                        })?;
                        (
                            crate::attestation::PIV_ATTESTATION.to_string(),
                            true,
                            "PIV attestation: the key's certificate chains through the card's attestation key to a configured root".to_string(),
                        )
                    }
                    ATTESTATION_TPM2_CERTIFY => match &device.tpm {
                        None => {
                            tracing::warn!(%user, device_id = %device.device_id, "tpm2-certify attestation from a device without a TPM identity; the key is recorded as not hardware-backed");
                            (
                                ATTESTATION_TPM2_CERTIFY.to_string(),
                                false,
                                format!(
                                    "TPM2_Certify not checked: device {} was activated without a TPM identity, so the portal has no attestation key to check it with",
                                    device.device_id
                                ),
                            )
                        }
                        Some(identity) => {
                            verify_tpm_certification(
                                identity,
                                &attestation_data,
                                &nonce,
                                &request.user_public_key,
                            )
                            .map_err(|why| {
                                Failure::new(
                                    Reason::SignatureInvalid,
                                    format!("the TPM attestation (tpm2-certify) of {user}'s key does not verify: {why}"),
                                )
                                .with_hint("The key was not made in this device's TPM, or the attestation was made for another enrollment or tampered with.")
                            })?;
                            (
                                ATTESTATION_TPM2_CERTIFY.to_string(),
                                true,
                                format!(
                                    "TPM2_Certify by the device's AK (name {}): {}; nonce bound to this device and code",
                                    hex::encode(&identity.ak_name),
                                    tpm::CERTIFIED_PROPERTIES
                                ),
                            )
                        }
                    },
                    other => {
                        return Err(Failure::new(
                            Reason::InvalidArgument,
                            format!("attestation format {other:?} is not supported by this portal"),
                        )
                        .with_hint(
                            "This portal accepts keys without attestation (format \"none\"), PIV attestation (\"piv-attestation\") and TPM2_Certify (\"tpm2-certify\").",
                        ));
                    }
                };
                let enrollment = Enrollment {
                    device_id: device.device_id.clone(),
                    user,
                    credential_id: new_credential_id()?,
                    public_key: request.user_public_key,
                    backend,
                    attestation_format,
                    hardware_backed,
                    enrolled_at: now,
                    revoked_at: None,
                    code_hash: Some(record.code_hash),
                    attestation_detail,
                };
                db.insert_enrollment(&enrollment)?;
                mark_used(db, &code, &record, &device.device_id, now)?;
                if record.replaces_credential.is_some() {
                    crate::migrate::record_replaced(
                        db,
                        &record.code_hash,
                        &enrollment.credential_id,
                        now,
                    )?;
                }
                Ok((enrollment, false))
            })
        })
        .await
    }

    /// Revokes a user's credential on a device; returns what was revoked.
    pub async fn revoke_user(&self, request: RevokeUserRequest) -> Result<Enrollment, Failure> {
        self.revoke_user_from(None, request).await
    }

    /// [`Self::revoke_user`] for a call from `peer`.
    pub async fn revoke_user_from(
        &self,
        peer: Option<SocketAddr>,
        request: RevokeUserRequest,
    ) -> Result<Enrollment, Failure> {
        let now = now_unix();
        let (device, ()) = self
            .signed_by_device(
                "RevokeUser",
                peer,
                &request.device_id,
                &request.device_signature,
                || {
                    check_timestamp(request.timestamp, now)?;
                    let message = binding::revocation_message(
                        &request.device_id,
                        &request.user,
                        &request.credential_id,
                        request.timestamp,
                    );
                    Ok((message, ()))
                },
            )
            .await?;
        self.with_store(move |store| {
            store.immediate(|db| {
                let user = stored_user_name(db, &device.device_id, &request.user)?;
                let credential =
                    (!request.credential_id.is_empty()).then_some(request.credential_id.as_str());
                db.revoke(&device.device_id, &user, credential, now)?
                    .ok_or_else(|| {
                        Failure::new(
                            Reason::UserUnknown,
                            match credential {
                                Some(id) => format!(
                                    "user {} has no active credential {id} on device {}",
                                    terminal::escape(&user),
                                    device.device_id
                                ),
                                None => format!(
                                    "user {} has no active credential on device {}",
                                    terminal::escape(&user),
                                    device.device_id
                                ),
                            },
                        )
                    })
            })
        })
        .await
    }
}

/// A signed request's timestamp must be within [`MAX_CLOCK_SKEW_SECS`] of
/// the portal's clock.
fn check_timestamp(timestamp: i64, now: i64) -> Result<(), Failure> {
    let skew = timestamp.abs_diff(now);
    if skew > MAX_CLOCK_SKEW_SECS {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!(
                "the request's timestamp ({}) is {skew} s off the portal's clock; at most {MAX_CLOCK_SKEW_SECS} s are allowed",
                rfc3339(timestamp)
            ),
        )
        .with_hint("Check the device's clock (timedatectl) and try again."));
    }
    Ok(())
}

impl PortalService {
    /// Decommissions a device (signed by its key, timestamp within
    /// `MAX_CLOCK_SKEW_SECS`): its enrollments and its record are removed.
    /// Returns how many credentials were still active.
    pub async fn deactivate_device_from(
        &self,
        peer: Option<SocketAddr>,
        request: DeactivateDeviceRequest,
    ) -> Result<u32, Failure> {
        let now = now_unix();
        let (device, ()) = self
            .signed_by_device(
                "DeactivateDevice",
                peer,
                &request.device_id,
                &request.device_signature,
                || {
                    check_timestamp(request.timestamp, now)?;
                    let message =
                        binding::deactivation_message(&request.device_id, request.timestamp);
                    Ok((message, ()))
                },
            )
            .await?;
        self.with_store(move |store| {
            store.immediate(|db| {
                db.delete_device(&device.device_id)?.ok_or_else(|| {
                    Failure::new(
                        Reason::DeviceUnknown,
                        format!("device {} is not registered", device.device_id),
                    )
                })
            })
        })
        .await
    }
}

/// The device this key registered with this code earlier: a retry.
fn retried_by(
    db: &Db<'_>,
    record: &CodeRecord,
    device_public_key: &[u8],
    now: i64,
) -> Result<Option<Device>, Failure> {
    if let CodeState::Used {
        by_device: Some(device_id),
        ..
    } = record.state(now)
        && let Some(device) = db.device(&device_id)?
        && device.public_key == device_public_key
    {
        return Ok(Some(device));
    }
    Ok(None)
}

/// The answer for a registered device.
fn registered(device: Device) -> RegisterDeviceResponse {
    let attestation_detail = match (&device.tpm, device.attestation_detail.is_empty()) {
        (Some(identity), true) => tpm_detail(identity, true),
        (None, true) => DETAIL_NO_TPM.to_string(),
        (_, false) => device.attestation_detail,
    };
    RegisterDeviceResponse {
        device_id: device.device_id,
        tpm_challenge: None,
        attestation_detail,
    }
}

/// What was (or, while `bound` is false, will be) verified of a TPM
/// identity, for people.
fn tpm_detail(identity: &TpmIdentity, bound: bool) -> String {
    let binding = if bound {
        "TPM attestation key bound to the EK (TPM2_ActivateCredential)"
    } else {
        "TPM credential challenge pending: the attestation key is not bound to the EK yet"
    };
    let certificate = match (
        identity.ek_certificate_status,
        &identity.ek_certificate_anchor,
    ) {
        (EkCertificateStatus::Verified, Some(anchor)) => {
            format!("EK certificate verified (chains to {anchor})")
        }
        (EkCertificateStatus::Verified, None) => "EK certificate verified".to_string(),
        (EkCertificateStatus::NotChecked, _) => {
            "EK certificate not checked (the portal has no --tpm-ek-roots)".to_string()
        }
        (EkCertificateStatus::Absent, _) => {
            "no EK certificate (not checked: the portal has no --tpm-ek-roots)".to_string()
        }
    };
    format!("{binding}; {certificate}")
}

/// Checks a `tpm2-certify` attestation's data against the device's AK.
fn verify_tpm_certification(
    identity: &TpmIdentity,
    data: &[u8],
    nonce: &[u8],
    user_public_key: &[u8],
) -> Result<(), String> {
    let certification = TpmCertification::decode(data)
        .map_err(|e| format!("the attestation data is not a TpmCertification message: {e}"))?;
    let ak = tpm::Public::parse(&identity.ak_public)
        .map_err(|e| format!("the device's stored attestation key is unreadable: {e}"))?;
    tpm::verify_certification(
        &ak,
        &certification.public_area,
        &certification.certify_info,
        &certification.signature,
        nonce,
        user_public_key,
    )
    .map_err(|e| e.to_string())
}

fn internal(message: impl Into<String>) -> Failure {
    let message = message.into();
    tracing::error!(%message, "internal portal failure");
    Failure::new(Reason::Internal, message)
        .with_hint("Try again later; the portal's log says what failed.")
}

fn proto_kind(kind: CodeKind) -> fleetkey_proto::portal::CodeKind {
    match kind {
        CodeKind::Device => fleetkey_proto::portal::CodeKind::Device,
        CodeKind::User => fleetkey_proto::portal::CodeKind::User,
    }
}

fn parse_code(text: &str) -> Result<ActivationCode, Failure> {
    ActivationCode::parse(text).map_err(Failure::from)
}

fn parse_public_key(der: &[u8], field: &str) -> Result<VerifyingKey, Failure> {
    if der.is_empty() {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!("{field} is empty; it must be a P-256 SubjectPublicKeyInfo (DER)"),
        ));
    }
    VerifyingKey::from_public_key_der(der).map_err(|error| {
        Failure::new(
            Reason::InvalidArgument,
            format!("{field} is not a P-256 SubjectPublicKeyInfo (DER): {error}"),
        )
    })
}

/// Checks an ECDSA P-256 DER signature over SHA-256 of `message`.
fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8], what: &str) -> Result<(), Failure> {
    let signature = Signature::from_der(signature).map_err(|_| {
        Failure::new(
            Reason::SignatureInvalid,
            format!("the {what} is not a DER-encoded ECDSA P-256 signature"),
        )
    })?;
    key.verify_prehash(&binding::digest(message), &signature)
        .map_err(|_| {
            Failure::new(
                Reason::SignatureInvalid,
                format!("the {what} does not verify"),
            )
        })
}

/// A user name from a request, as the portal stores it: normalized by the
/// one user-name rule. A name that breaks the rule is still found when a
/// credential was stored under exactly that name before the rule existed.
fn stored_user_name(db: &Db<'_>, device_id: &str, raw: &str) -> Result<String, Failure> {
    match user_name::normalize(raw) {
        Ok(name) => Ok(name),
        Err(_) if db.active_enrollment(device_id, raw)?.is_some() => Ok(raw.to_string()),
        Err(error) => Err(user_name_invalid(raw, &error)),
    }
}

/// `USER_NAME_INVALID` for `raw`, saying why.
pub fn user_name_invalid(raw: &str, error: &user_name::UserNameError) -> Failure {
    Failure::new(
        Reason::UserNameInvalid,
        format!(
            "the user name \"{}\" is not valid: {error}",
            terminal::escape(raw)
        ),
    )
}

/// A device's name is a label for people, not an identity: any text up to
/// [`MAX_DEVICE_NAME_CHARS`] characters that prints as itself (no control,
/// bidi or zero-width characters).
fn check_device_name(value: &str) -> Result<String, Failure> {
    if value.len() > MAX_DEVICE_NAME_CHARS * 4
        || value.chars().count() > MAX_DEVICE_NAME_CHARS
        || value.chars().any(terminal::is_unsafe)
    {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!(
                "device_name must be at most {MAX_DEVICE_NAME_CHARS} characters without control, bidi or zero-width characters"
            ),
        ));
    }
    Ok(value.to_string())
}

/// A key store's name: `soft`, `tpm`, `pcsc`, ...: 1 to
/// [`MAX_BACKEND_LEN`] lower-case ASCII letters, digits, `-` and `_`.
fn check_backend(value: &str) -> Result<String, Failure> {
    let fits = (1..=MAX_BACKEND_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !fits {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!(
                "backend \"{}\" is not a key store name: 1 to {MAX_BACKEND_LEN} lower-case letters, digits, - and _",
                terminal::escape(value)
            ),
        ));
    }
    Ok(value.to_string())
}

fn lookup_code(db: &Db<'_>, code: &ActivationCode) -> Result<CodeRecord, Failure> {
    db.code(code)?.ok_or_else(|| {
        Failure::new(
            Reason::CodeUnknown,
            format!("code {code} was not issued by this portal"),
        )
    })
}

/// Refuses a used or expired code.
fn usable(code: &ActivationCode, record: &CodeRecord, now: i64) -> Result<(), Failure> {
    let shown = code.to_string();
    match record.state(now) {
        CodeState::Usable => Ok(()),
        CodeState::Used { at, .. } => Err(Failure::new(
            Reason::CodeAlreadyUsed,
            format!("code {shown} was already used at {}", rfc3339(at)),
        )),
        CodeState::Expired { at } => Err(Failure::new(
            Reason::CodeExpired,
            format!("code {shown} expired at {}", rfc3339(at)),
        )),
    }
}

/// A code of the other kind than the RPC redeems.
fn wrong_kind(code: &ActivationCode, record: &CodeRecord) -> Failure {
    let message = match record.kind {
        CodeKind::User => format!(
            "code {code} is an add-user code{}, not a device activation code",
            record
                .user
                .as_deref()
                .map(|u| format!(" (for user {u})"))
                .unwrap_or_default()
        ),
        CodeKind::Device => {
            format!("code {code} is a device activation code, not an add-user code")
        }
    };
    Failure::new(Reason::CodeWrongKind, message)
}

fn mark_used(
    db: &Db<'_>,
    code: &ActivationCode,
    record: &CodeRecord,
    device_id: &str,
    now: i64,
) -> Result<(), Failure> {
    // The IMMEDIATE transaction holds the write lock since the code was
    // read, so it cannot have been used in between.
    if db.mark_code_used(&record.code_hash, device_id, now)? {
        Ok(())
    } else {
        Err(internal(format!(
            "code {code} changed while it was being redeemed"
        )))
    }
}

fn known_device(db: &Db<'_>, device_id: &str) -> Result<Device, Failure> {
    if device_id.is_empty() {
        return Err(Failure::new(
            Reason::DeviceUnknown,
            "the request names no device (device_id is empty)",
        ));
    }
    db.device(device_id)?.ok_or_else(|| {
        Failure::new(
            Reason::DeviceUnknown,
            format!("device {device_id} is not registered with this portal"),
        )
    })
}

fn registered_key(device: &Device) -> Result<VerifyingKey, Failure> {
    VerifyingKey::from_public_key_der(&device.public_key).map_err(|_| {
        internal(format!(
            "device {}'s registered key cannot be read",
            device.device_id
        ))
    })
}

/// Logs a refusal and turns it into a status.
fn refused(rpc: &'static str, peer: Option<std::net::SocketAddr>, failure: Failure) -> Status {
    tracing::info!(
        rpc,
        peer = ?peer,
        reason = %failure.reason,
        message = %terminal::escape(&failure.message),
        "refused"
    );
    failure.to_status()
}

/// How often an open device stream looks for new challenges.
pub const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The stream of events a device receives.
pub type DeviceEventStream =
    tokio_stream::wrappers::ReceiverStream<Result<fleetkey_proto::portal::DeviceEvent, Status>>;

// --- approvals (docs/approvals.md) ---
impl PortalService {
    /// A fresh nonce for `device_id` to open its stream with.
    pub async fn stream_nonce_from(
        &self,
        peer: Option<SocketAddr>,
        request: fleetkey_proto::portal::GetStreamNonceRequest,
    ) -> Result<fleetkey_proto::portal::GetStreamNonceResponse, Failure> {
        self.limiter.charge_peer("GetStreamNonce", peer)?;
        let device_id = request.device_id;
        let looked_up = device_id.clone();
        self.with_store(move |store| known_device(&store.db(), &looked_up))
            .await?;
        let nonce = self.stream_nonces.issue(&device_id, now_unix())?;
        Ok(fleetkey_proto::portal::GetStreamNonceResponse { nonce })
    }

    /// Checks a stream opening and starts the stream: the device's pending
    /// challenges and integrity request, then each new one, until the
    /// device hangs up or opens a newer stream.
    pub async fn open_device_stream_from(
        &self,
        peer: Option<SocketAddr>,
        request: fleetkey_proto::portal::OpenDeviceStreamRequest,
    ) -> Result<DeviceEventStream, Failure> {
        let device_id = request.device_id.clone();
        let looked_up = device_id.clone();
        let device = match self
            .with_store(move |store| known_device(&store.db(), &looked_up))
            .await
        {
            Ok(device) => device,
            Err(failure) => {
                self.limiter.charge_peer("OpenDeviceStream", peer)?;
                return Err(failure);
            }
        };
        if !self
            .stream_nonces
            .take(&device_id, &request.nonce, now_unix())
        {
            self.limiter.charge_peer("OpenDeviceStream", peer)?;
            return Err(Failure::new(
                Reason::SignatureInvalid,
                "the stream nonce is unknown, used or expired",
            )
            .with_hint("Ask GetStreamNonce for a fresh one."));
        }
        let key = registered_key(&device)?;
        let message = binding::device_stream_message(&device_id, &request.nonce);
        verify(&key, &message, &request.signature, "device signature")?;
        let generation = {
            let mut streams = self
                .streams
                .lock()
                .map_err(|_| internal("the stream table lock is poisoned"))?;
            let entry = streams.entry(device_id.clone()).or_insert(0);
            *entry += 1;
            *entry
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move { service.push_challenges(device_id, generation, tx).await });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn is_current_stream(&self, device_id: &str, generation: u64) -> bool {
        self.streams
            .lock()
            .is_ok_and(|streams| streams.get(device_id) == Some(&generation))
    }

    async fn push_challenges(
        &self,
        device_id: String,
        generation: u64,
        tx: tokio::sync::mpsc::Sender<Result<fleetkey_proto::portal::DeviceEvent, Status>>,
    ) {
        use fleetkey_proto::portal::{DeviceEvent, device_event};
        let mut sent = std::collections::HashSet::new();
        // The operator's integrity request last sent on this stream.
        let mut integrity_pushed = None;
        while self.is_current_stream(&device_id, generation) {
            let looked_up = device_id.clone();
            let pending = self
                .with_store(move |store| {
                    Ok(login::pending_for_device(
                        &store.db(),
                        &looked_up,
                        now_unix(),
                    )?)
                })
                .await;
            match pending {
                Ok(pending) => {
                    // Forget what is no longer pending: the set stays as
                    // small as the pending list.
                    sent.retain(|id: &String| pending.iter().any(|c| &c.id == id));
                    for challenge in pending {
                        if sent.contains(&challenge.id) {
                            continue;
                        }
                        let event = DeviceEvent {
                            event: Some(device_event::Event::LoginChallenge(challenge.to_proto())),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                        tracing::info!(challenge = %challenge.id, device_id = %device_id, "login challenge pushed");
                        sent.insert(challenge.id);
                    }
                }
                Err(failure) => {
                    let _ = tx.send(Err(failure.to_status())).await;
                    return;
                }
            }
            match self
                .integrity_request_for(&device_id, &mut integrity_pushed)
                .await
            {
                Ok(Some(nonce)) => {
                    let event = DeviceEvent {
                        event: Some(device_event::Event::IntegrityRequest(
                            fleetkey_proto::portal::IntegrityRequest { nonce },
                        )),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    tracing::info!(device_id = %device_id, "integrity request pushed");
                }
                Ok(None) => {}
                Err(failure) => {
                    let _ = tx.send(Err(failure.to_status())).await;
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(STREAM_POLL) => {}
            }
        }
    }

    /// Checks and records an answer to a login challenge.
    pub async fn answer_challenge_from(
        &self,
        peer: Option<SocketAddr>,
        request: fleetkey_proto::portal::AnswerChallengeRequest,
    ) -> Result<login::Answered, Failure> {
        let _ = peer;
        self.limiter
            .device_has_room("AnswerChallenge", &request.device_id)?;
        let now = now_unix();
        self.with_store(move |store| store.immediate(|db| login::check_answer(db, &request, now)))
            .await?
    }
}

#[tonic::async_trait]
impl Portal for PortalService {
    type OpenDeviceStreamStream = DeviceEventStream;

    async fn get_stream_nonce(
        &self,
        request: Request<fleetkey_proto::portal::GetStreamNonceRequest>,
    ) -> Result<Response<fleetkey_proto::portal::GetStreamNonceResponse>, Status> {
        let peer = request.remote_addr();
        self.stream_nonce_from(peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|failure| refused("GetStreamNonce", peer, failure))
    }

    async fn open_device_stream(
        &self,
        request: Request<fleetkey_proto::portal::OpenDeviceStreamRequest>,
    ) -> Result<Response<DeviceEventStream>, Status> {
        let peer = request.remote_addr();
        let device_id = request.get_ref().device_id.clone();
        match self
            .open_device_stream_from(peer, request.into_inner())
            .await
        {
            Ok(stream) => {
                tracing::info!(rpc = "OpenDeviceStream", peer = ?peer, device_id = %terminal::escape(&device_id), "device stream opened");
                Ok(Response::new(stream))
            }
            Err(failure) => Err(refused("OpenDeviceStream", peer, failure)),
        }
    }

    async fn answer_challenge(
        &self,
        request: Request<fleetkey_proto::portal::AnswerChallengeRequest>,
    ) -> Result<Response<fleetkey_proto::portal::AnswerChallengeResponse>, Status> {
        let peer = request.remote_addr();
        let id = request.get_ref().challenge_id.clone();
        match self.answer_challenge_from(peer, request.into_inner()).await {
            Ok(answered) => {
                let outcome = match answered {
                    login::Answered::Approved => "approved",
                    login::Answered::Denied => "denied",
                };
                tracing::info!(rpc = "AnswerChallenge", peer = ?peer, challenge = %terminal::escape(&id), outcome, "login challenge answered; signature verified");
                Ok(Response::new(
                    fleetkey_proto::portal::AnswerChallengeResponse {
                        outcome: outcome.into(),
                    },
                ))
            }
            Err(failure) => Err(refused("AnswerChallenge", peer, failure)),
        }
    }

    async fn check_code(
        &self,
        request: Request<CheckCodeRequest>,
    ) -> Result<Response<CheckCodeResponse>, Status> {
        let peer = request.remote_addr();
        match self.check_code_from(peer, request.into_inner()).await {
            Ok(response) => {
                tracing::info!(
                    rpc = "CheckCode",
                    peer = ?peer,
                    kind = response.kind,
                    user = %terminal::escape(&response.user),
                    "code is usable"
                );
                Ok(Response::new(response))
            }
            Err(failure) => Err(refused("CheckCode", peer, failure)),
        }
    }

    async fn register_device(
        &self,
        request: Request<RegisterDeviceRequest>,
    ) -> Result<Response<RegisterDeviceResponse>, Status> {
        let peer = request.remote_addr();
        match self.register_device_from(peer, request.into_inner()).await {
            Ok((response, retry)) => {
                if response.tpm_challenge.is_some() {
                    tracing::info!(
                        rpc = "RegisterDevice",
                        peer = ?peer,
                        "TPM credential challenge sent; the code stays unused until CompleteTpmActivation"
                    );
                } else {
                    tracing::info!(
                        rpc = "RegisterDevice",
                        peer = ?peer,
                        device_id = %response.device_id,
                        retry,
                        detail = %response.attestation_detail,
                        "device registered"
                    );
                }
                Ok(Response::new(response))
            }
            Err(failure) => Err(refused("RegisterDevice", peer, failure)),
        }
    }

    async fn complete_tpm_activation(
        &self,
        request: Request<CompleteTpmActivationRequest>,
    ) -> Result<Response<RegisterDeviceResponse>, Status> {
        let peer = request.remote_addr();
        match self
            .complete_tpm_activation_from(peer, request.into_inner())
            .await
        {
            Ok((response, retry)) => {
                tracing::info!(
                    rpc = "CompleteTpmActivation",
                    peer = ?peer,
                    device_id = %response.device_id,
                    retry,
                    detail = %response.attestation_detail,
                    "device registered with its TPM identity"
                );
                Ok(Response::new(response))
            }
            Err(failure) => Err(refused("CompleteTpmActivation", peer, failure)),
        }
    }

    async fn enroll_user(
        &self,
        request: Request<EnrollUserRequest>,
    ) -> Result<Response<EnrollUserResponse>, Status> {
        let peer = request.remote_addr();
        match self.enroll_user_from(peer, request.into_inner()).await {
            Ok((enrollment, retry)) => {
                tracing::info!(
                    rpc = "EnrollUser",
                    peer = ?peer,
                    user = %terminal::escape(&enrollment.user),
                    device_id = %enrollment.device_id,
                    credential_id = %enrollment.credential_id,
                    backend = %enrollment.backend,
                    hardware_backed = enrollment.hardware_backed,
                    retry,
                    "user enrolled"
                );
                Ok(Response::new(EnrollUserResponse {
                    user: enrollment.user,
                    credential_id: enrollment.credential_id,
                    enrolled_at: enrollment.enrolled_at,
                    hardware_backed: enrollment.hardware_backed,
                    attestation_detail: enrollment.attestation_detail,
                }))
            }
            Err(failure) => Err(refused("EnrollUser", peer, failure)),
        }
    }

    // --- deactivation ---
    async fn deactivate_device(
        &self,
        request: Request<DeactivateDeviceRequest>,
    ) -> Result<Response<DeactivateDeviceResponse>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let device_id = request.device_id.clone();
        match self.deactivate_device_from(peer, request).await {
            Ok(revoked_credentials) => {
                tracing::info!(
                    rpc = "DeactivateDevice",
                    peer = ?peer,
                    device_id = %terminal::escape(&device_id),
                    revoked_credentials,
                    "device deactivated"
                );
                Ok(Response::new(DeactivateDeviceResponse {
                    revoked_credentials,
                }))
            }
            Err(failure) => Err(refused("DeactivateDevice", peer, failure)),
        }
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<RevokeUserResponse>, Status> {
        let peer = request.remote_addr();
        match self.revoke_user_from(peer, request.into_inner()).await {
            Ok(revoked) => {
                tracing::info!(
                    rpc = "RevokeUser",
                    peer = ?peer,
                    user = %terminal::escape(&revoked.user),
                    device_id = %revoked.device_id,
                    credential_id = %revoked.credential_id,
                    "credential revoked"
                );
                Ok(Response::new(RevokeUserResponse {}))
            }
            Err(failure) => Err(refused("RevokeUser", peer, failure)),
        }
    }

    // --- integrity ---
    async fn submit_integrity(
        &self,
        request: Request<fleetkey_proto::portal::SubmitIntegrityRequest>,
    ) -> Result<Response<fleetkey_proto::portal::SubmitIntegrityResponse>, Status> {
        let peer = request.remote_addr();
        match self.submit_integrity(request.into_inner()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(failure) => Err(refused("SubmitIntegrity", peer, failure)),
        }
    }
}
