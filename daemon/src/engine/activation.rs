//! Activation: the device proves itself to the portal (with the TPM's
//! identity where there is one) and gets its device id.

use fleetkey_plugin::{CredentialChallenge, HardwareIdentity, Operation};
use fleetkey_proto::portal::{self, CodeKind};
use fleetkey_proto::{EnrollmentInput, Failure, Reason, binding, daemon, time};

use super::{Engine, Requester, Store, wrong_kind};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;
use crate::state::DeviceRecord;

impl Engine {
    /// Activates the device with a device code: makes the device key and
    /// registers it with the portal.
    pub async fn activate(
        &self,
        who: Requester,
        input: &str,
    ) -> Result<daemon::ActivateResponse, Failure> {
        let input = EnrollmentInput::parse(input)?;
        let _guard = self.enroll_lock.lock().await;
        if let Some(device) = self.device()? {
            return Err(Failure::new(
                Reason::AlreadyActivated,
                format!(
                    "this device is already activated as {} with {}",
                    device.device_id, device.portal_url
                ),
            ));
        }
        let portal_url = match input.portal_url() {
            Some(url) => url.to_string(),
            None => self.default_portal.clone().ok_or_else(|| {
                Failure::new(
                    Reason::InvalidArgument,
                    "a typed code needs a portal, and none is configured",
                )
                .with_hint("Set portal_url in fleetkeyd.toml, or use the fleetkey:// URI from the QR code.")
            })?,
        };
        let started = std::time::Instant::now();
        let report = self.integrity_gate(who, "activation", None).await?;
        let gate_time = started.elapsed();
        let code = input.code().compact().to_string();
        let mut portal = self.portal.connect(&portal_url).await?;
        let checked = portal.check_code(&code).await?;
        if checked.kind() != CodeKind::Device {
            return Err(wrong_kind(
                "an add-user code",
                "activate this device",
                "fleetkeyctl user add",
            ));
        }
        let identity = self.hardware_identity().await?;
        let evidence_started = std::time::Instant::now();
        let evidence = self
            .evidence_json(&report, &checked.integrity_nonce, who)
            .await?;
        tracing::info!(
            gate_ms = gate_time.as_secs_f64() * 1000.0,
            evidence_ms = evidence_started.elapsed().as_secs_f64() * 1000.0,
            "integrity work for activation"
        );
        let device_key = DeviceKey::generate()?;
        let public_key = device_key.public_key_der()?;
        let signature = device_key.sign_digest(&binding::digest(&binding::activation_message(
            &code,
            &public_key,
        )))?;
        let mut registered = portal
            .register_device(portal::RegisterDeviceRequest {
                code: code.clone(),
                device_public_key: public_key.clone(),
                device_name: self.device_name.clone(),
                signature,
                tpm: identity.as_ref().map(|(_, id)| portal::TpmIdentity {
                    ek_public: id.ek_public.clone(),
                    ek_certificate: id.ek_certificate.clone(),
                    ak_public: id.ak_public.clone(),
                }),
                // With a TPM identity the evidence goes with the
                // completion, once the AK is proven.
                integrity_evidence: if identity.is_some() {
                    String::new()
                } else {
                    evidence.clone()
                },
            })
            .await?;
        let registered = match (identity, registered.tpm_challenge.take()) {
            (Some((backend, _)), Some(challenge)) => {
                self.complete_tpm_activation(
                    &mut portal,
                    &backend,
                    &code,
                    &device_key,
                    challenge,
                    evidence,
                )
                .await?
            }
            (Some((backend, _)), None) => {
                tracing::warn!(backend = %backend.name(), "the portal registered the device without checking its TPM identity");
                registered
            }
            (None, _) => registered,
        };
        if registered.device_id.is_empty() {
            return Err(Failure::new(
                Reason::PortalError,
                format!("the portal at {portal_url} answered the activation without a device id"),
            ));
        }
        let record = DeviceRecord {
            device_id: registered.device_id.clone(),
            portal_url: portal_url.clone(),
            key_secret: device_key.secret(),
            public_key_der: public_key,
            activated_at: time::now_unix(),
            attestation: registered.attestation_detail.clone(),
        };
        self.write(move |state| state.set_device(&record)).await?;
        tracing::info!(device_id = %registered.device_id, portal = %portal_url, attestation = %registered.attestation_detail, "device activated");
        self.audit(
            who,
            AuditEvent::DeviceActivated {
                device_id: registered.device_id.clone(),
                portal: portal_url.clone(),
            },
        );
        Ok(daemon::ActivateResponse {
            device_id: registered.device_id,
            portal_url,
            attestation: registered.attestation_detail,
        })
    }

    /// The hardware identity the device activates with: that of the first
    /// available key store that has one (the TPM). A key store that has
    /// one but cannot produce it fails the activation, rather than
    /// activating the device unattested behind the operator's back.
    async fn hardware_identity(&self) -> Result<Option<(Store, HardwareIdentity)>, Failure> {
        for store in self.stores() {
            if !store.info().operations.contains(&Operation::Attest) {
                continue;
            }
            if let Some(identity) = store.hardware_identity().await? {
                return Ok(Some((store, identity)));
            }
        }
        Ok(None)
    }

    /// Answers the portal's credential challenge with the TPM and sends
    /// the recovered secret back, signed with the new device key.
    async fn complete_tpm_activation(
        &self,
        portal: &mut crate::portal_client::Portal,
        store: &Store,
        code: &str,
        device_key: &DeviceKey,
        challenge: portal::TpmChallenge,
        integrity_evidence: String,
    ) -> Result<portal::RegisterDeviceResponse, Failure> {
        let public_key = device_key.public_key_der()?;
        let challenge = CredentialChallenge {
            credential_blob: challenge.credential_blob,
            encrypted_secret: challenge.encrypted_secret,
        };
        let secret = store.activate_credential(challenge).await?;
        let signature = device_key.sign_digest(&binding::digest(
            &binding::tpm_activation_message(code, &public_key, &secret),
        ))?;
        portal
            .complete_tpm_activation(portal::CompleteTpmActivationRequest {
                code: code.to_string(),
                device_public_key: public_key,
                secret: secret.to_vec(),
                signature,
                integrity_evidence,
            })
            .await
    }
}
