//! Attestation: the TPM's identity for device activation (its endorsement
//! key, EK certificate and an attestation key), the answer to the portal's
//! credential challenge, and the certification of user keys. The protocol
//! is in `docs/tpm-attestation.md`.
//!
//! Both the EK and the AK are primary keys of the endorsement hierarchy,
//! made from their templates (the TPM derives them from its endorsement
//! seed, so they come out the same every time); nothing of them is stored.
//! The EK is made when needed and flushed right after. The AK is made at
//! its first use on a connection and stays loaded (one object slot; it
//! has no authorization value, so nothing secret is kept): every user
//! enrollment certifies with it and every integrity report quotes with
//! it, and making it again each time cost a TPM2_CreatePrimary. If the
//! TPM was restarted under the store, the stale handle fails as a handle
//! that is not loaded, and the store reconnects and makes it again.

use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, ek};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EccParameter, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject,
    KeyDerivationFunctionScheme, Nonce, Public, PublicBuilder, PublicEccParametersBuilder,
    SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;

use crate::connection::Tpm;
use crate::error::TpmError;

/// The AK's `unique.x`: makes the AK fleetkey's own key in the endorsement
/// hierarchy, not one another program's template happens to produce.
pub const AK_UNIQUE: &[u8] = b"fleetkey attestation key v1";

/// The EK this store uses: RSA 2048 from the TCG default template (L-1),
/// the one nearly every TPM's maker certifies (NV index 0x01c00002).
const EK_ALGORITHM: AsymmetricAlgorithmSelection =
    AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048);

/// The AK's template: ECC P-256, ECDSA SHA-256, restricted signing (it only
/// signs what the TPM itself produced), made in this TPM and never leaving
/// it. Its authorization value is empty, and it is not under
/// dictionary-attack protection (nothing to guess).
pub fn ak_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
        .map_err(TpmError::Structure)?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()
        .map_err(TpmError::Structure)?;
    let unique = EccPoint::new(
        EccParameter::try_from(AK_UNIQUE.to_vec()).map_err(TpmError::Structure)?,
        EccParameter::default(),
    );
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(unique)
        .build()
        .map_err(TpmError::Structure)
}

/// A primary key of the endorsement hierarchy, made from `template`.
fn endorsement_primary(tpm: &mut Tpm, template: Public) -> Result<(KeyHandle, Public), TpmError> {
    let created = tpm
        .context
        .execute_with_nullauth_session(|ctx| {
            ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .map_err(TpmError::Attest)?;
    Ok((created.key_handle, created.out_public))
}

/// The AK (the same key every time): its handle and public area. Made at
/// the first use on this connection and kept loaded; callers do not flush
/// it.
pub fn ak(tpm: &mut Tpm) -> Result<(KeyHandle, Public), TpmError> {
    if let Some((handle, public)) = &tpm.ak {
        return Ok((*handle, public.clone()));
    }
    let made = endorsement_primary(tpm, ak_template()?)?;
    tpm.ak = Some(made.clone());
    Ok(made)
}

/// Makes the EK from the TCG default template; the caller flushes it.
fn load_ek(tpm: &mut Tpm) -> Result<(KeyHandle, Public), TpmError> {
    let template = ek::create_ek_public_from_default_template_2(EK_ALGORITHM, None)
        .map_err(TpmError::Attest)?;
    endorsement_primary(tpm, template)
}

/// What the portal needs to know this TPM: the EK's and AK's public areas
/// (marshalled TPMT_PUBLIC) and the EK certificate, empty when the TPM's
/// maker stored none.
pub struct Identity {
    pub ek_public: Vec<u8>,
    pub ek_certificate: Vec<u8>,
    pub ak_public: Vec<u8>,
}

pub fn identity(tpm: &mut Tpm) -> Result<Identity, TpmError> {
    let (ek, ek_public) = load_ek(tpm)?;
    tpm.flush_key(ek);
    let (_, ak_public) = ak(tpm)?;
    let ek_certificate = match ek::retrieve_ek_pubcert(&mut tpm.context, EK_ALGORITHM) {
        Ok(der) => der,
        Err(e) => {
            tracing::info!(error = %e, "the TPM holds no RSA 2048 EK certificate (NV 0x01c00002); the portal cannot check who made this TPM");
            Vec::new()
        }
    };
    Ok(Identity {
        ek_public: ek_public.marshall().map_err(TpmError::Structure)?,
        ek_certificate,
        ak_public: ak_public.marshall().map_err(TpmError::Structure)?,
    })
}

/// TPM2_ActivateCredential: the secret the portal sealed to this TPM's EK
/// for this AK. The AK is authorized in `session` (salted, so the secret
/// comes back encrypted on the bus); the EK by its policy,
/// PolicySecret(TPM_RH_ENDORSEMENT).
pub fn activate_credential(
    tpm: &mut Tpm,
    session: AuthSession,
    credential_blob: &[u8],
    encrypted_secret: &[u8],
) -> Result<Vec<u8>, TpmError> {
    let blob = IdObject::try_from(credential_blob.to_vec())
        .map_err(|e| TpmError::BadChallenge(format!("credential blob: {e}")))?;
    let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
        .map_err(|e| TpmError::BadChallenge(format!("encrypted secret: {e}")))?;
    let (ek, _) = load_ek(tpm)?;
    let result = (|| {
        let (ak, _) = ak(tpm)?;
        let policy = tpm
            .context
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(TpmError::Session)?
            .ok_or_else(|| TpmError::Unexpected("empty policy session handle".into()))?;
        let result = (|| {
            let policy_session = PolicySession::try_from(policy).map_err(TpmError::Structure)?;
            tpm.context
                .execute_with_nullauth_session(|ctx| {
                    ctx.policy_secret(
                        policy_session,
                        AuthHandle::Endorsement,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })
                .map_err(TpmError::Attest)?;
            tpm.set_encryption(session, false, true)?;
            let (blob, secret) = (blob.clone(), secret.clone());
            tpm.context
                .execute_with_sessions((Some(session), Some(policy), None), |ctx| {
                    ctx.activate_credential(ak, ek, blob, secret)
                })
                .map_err(TpmError::ActivateCredential)
        })();
        tpm.flush_session(policy);
        result
    })();
    tpm.flush_key(ek);
    Ok(result?.value().to_vec())
}

/// TPM2_Certify of a loaded user key by the AK, with `nonce` as qualifying
/// data. The key's authorization (the PIN) is set on `key` and proven in
/// `session`; the AK needs none. Returns the marshalled TPMS_ATTEST and
/// TPMT_SIGNATURE.
/// `on_error` turns the TPM's refusal into an error (a wrong PIN is the
/// caller's to count).
pub fn certify(
    tpm: &mut Tpm,
    session: AuthSession,
    key: KeyHandle,
    nonce: &[u8; 32],
    on_error: impl Fn(&mut Tpm, tss_esapi::Error) -> TpmError,
) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    let data = Data::try_from(nonce.to_vec()).map_err(TpmError::Structure)?;
    let (ak, _) = ak(tpm)?;
    tpm.set_encryption(session, false, false)?;
    let certified = tpm
        .context
        .execute_with_sessions((Some(session), Some(AuthSession::Password), None), |ctx| {
            ctx.certify(key.into(), ak, data, SignatureScheme::Null)
        });
    let (attest, signature) = certified.map_err(|e| on_error(tpm, e))?;
    Ok((
        attest.marshall().map_err(TpmError::Structure)?,
        signature.marshall().map_err(TpmError::Structure)?,
    ))
}
