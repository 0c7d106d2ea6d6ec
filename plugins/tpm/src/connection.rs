//! The connection to the TPM: which TCTI to use, the one ESAPI context and
//! its storage primary key, the TPM's identity and its dictionary-attack
//! (DA) settings.

use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;

use crate::error::TpmError;

/// Device nodes tried, in order, when neither config nor `TCTI` names one:
/// the kernel's resource manager first (it lets other programs share the
/// TPM), then the raw device.
pub const DEFAULT_DEVICES: [&str; 2] = ["device:/dev/tpmrm0", "device:/dev/tpm0"];

/// Bit of TPM_PT_PERMANENT that says the TPM is in DA lockout.
const PERMANENT_IN_LOCKOUT: u32 = 1 << 9;
/// Bit of TPM_PT_PERMANENT that says a lockout authorization is set.
const PERMANENT_LOCKOUT_AUTH_SET: u32 = 1 << 2;
/// First transient object handle.
const TRANSIENT_FIRST: u32 = 0x8000_0000;

/// The TCTIs to try, in order: the configured one, else `TCTI` from the
/// environment, else the default devices.
pub fn tcti_candidates(configured: Option<&str>, env: Option<&str>) -> Vec<String> {
    match (configured, env) {
        (Some(tcti), _) if !tcti.trim().is_empty() => vec![tcti.trim().to_string()],
        (_, Some(tcti)) if !tcti.trim().is_empty() => vec![tcti.trim().to_string()],
        _ => DEFAULT_DEVICES.iter().map(|d| d.to_string()).collect(),
    }
}

/// The device node a `device:` TCTI names, when it does not exist: the
/// TSS library would only say "response code not recognized".
pub fn missing_device(tcti: &str) -> Option<String> {
    let path = tcti.strip_prefix("device:")?;
    let path = if path.is_empty() { "/dev/tpm0" } else { path };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(path.to_string()),
        _ => None,
    }
}

/// The TPM's identity, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    pub tcti: String,
    /// TPM_PT_MANUFACTURER as text, e.g. "IBM", "INTC", "STM".
    pub manufacturer: String,
    /// Vendor strings 1-4 joined, e.g. "SW   TPM".
    pub vendor: String,
    /// "major.minor" from TPM_PT_FIRMWARE_VERSION_1, then _2 in hex.
    pub firmware: String,
    /// A software TPM (swtpm/libtpms, Microsoft's or IBM's simulator).
    pub simulator: bool,
}

/// The TPM's dictionary-attack settings and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaState {
    /// Authorization failures after which the TPM locks every DA-protected
    /// key (TPM_PT_MAX_AUTH_FAIL).
    pub max_tries: u32,
    /// Failures counted now (TPM_PT_LOCKOUT_COUNTER).
    pub counter: u32,
    /// Seconds for the counter to drop by one (TPM_PT_LOCKOUT_INTERVAL).
    pub interval: u32,
    /// Seconds before lockout auth may be retried (TPM_PT_LOCKOUT_RECOVERY).
    pub recovery: u32,
    pub in_lockout: bool,
    /// Whether the lockout hierarchy has an authorization value.
    pub lockout_auth_set: bool,
}

impl DaState {
    /// Wrong PINs one key may see: one fewer than the TPM's limit, so that
    /// one user's guesses alone never lock the TPM for everyone.
    pub fn per_key_limit(&self) -> u32 {
        self.max_tries.saturating_sub(1).max(1)
    }

    /// Longest wait before the TPM accepts PINs again, when it is locked.
    pub fn recovery_seconds(&self) -> Option<u64> {
        if self.interval == 0 {
            return None;
        }
        let excess = u64::from(self.counter.saturating_sub(self.max_tries)) + 1;
        Some(excess * u64::from(self.interval))
    }
}

/// An open TPM: the ESAPI context and the storage primary key under which
/// user keys live.
pub struct Tpm {
    pub context: Context,
    pub primary: KeyHandle,
    pub tcti: String,
    /// The attestation key, made at its first use on this connection and
    /// kept loaded after (see [`crate::attest::ak`]). A new connection
    /// starts without it: the TPM may have been restarted.
    pub ak: Option<(KeyHandle, Public)>,
}

// SAFETY: an ESAPI context is not tied to the thread that made it; it must
// only never be used by two threads at once, which the store's mutex
// guarantees (a `Tpm` is only reachable through it).
unsafe impl Send for Tpm {}

impl Tpm {
    /// Opens the first TCTI that answers and makes (or finds) the storage
    /// primary key.
    pub fn open(candidates: &[String], persistent_handle: Option<u32>) -> Result<Tpm, TpmError> {
        let mut last = String::from("no TCTI to try");
        for tcti in candidates {
            let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::BadTcti {
                tcti: tcti.clone(),
                source,
            })?;
            if let Some(missing) = missing_device(tcti) {
                last = format!("{tcti}: no such device ({missing} does not exist)");
                continue;
            }
            let mut context = match Context::new(conf) {
                Ok(context) => context,
                Err(e) => {
                    last = format!("{tcti}: {e}");
                    continue;
                }
            };
            // A context opens without talking to the TPM; ask it something.
            if let Err(e) = context.get_tpm_property(PropertyTag::Manufacturer) {
                last = format!("{tcti}: {e}");
                continue;
            }
            flush_stale_objects(&mut context);
            let primary = storage_primary(&mut context, persistent_handle)?;
            return Ok(Tpm {
                context,
                primary,
                tcti: tcti.clone(),
                ak: None,
            });
        }
        Err(TpmError::NoTpm {
            tried: candidates.join(", "),
            last,
        })
    }

    pub fn identity(&mut self) -> Result<TpmIdentity, TpmError> {
        let property = |context: &mut Context, tag| {
            context
                .get_tpm_property(tag)
                .map(Option::unwrap_or_default)
                .map_err(TpmError::Properties)
        };
        let manufacturer = fourcc(property(&mut self.context, PropertyTag::Manufacturer)?);
        let mut vendor = String::new();
        for tag in [
            PropertyTag::VendorString1,
            PropertyTag::VendorString2,
            PropertyTag::VendorString3,
            PropertyTag::VendorString4,
        ] {
            vendor.push_str(&fourcc(property(&mut self.context, tag)?));
        }
        let v1 = property(&mut self.context, PropertyTag::FirmwareVersion1)?;
        let v2 = property(&mut self.context, PropertyTag::FirmwareVersion2)?;
        let firmware = format!("{}.{} ({v2:#010x})", v1 >> 16, v1 & 0xffff);
        let simulator = is_simulator(&manufacturer, &vendor);
        Ok(TpmIdentity {
            tcti: self.tcti.clone(),
            manufacturer,
            vendor: vendor.trim().to_string(),
            firmware,
            simulator,
        })
    }

    /// Reads the DA settings and state now (not cached: they change).
    pub fn da_state(&mut self) -> Result<DaState, TpmError> {
        let tags = [
            PropertyTag::MaxAuthFail,
            PropertyTag::LockoutCounter,
            PropertyTag::LockoutInterval,
            PropertyTag::LockoutRecovery,
            PropertyTag::Permanent,
        ];
        let mut values = [0u32; 5];
        for (value, tag) in values.iter_mut().zip(tags) {
            *value = read_variable_property(&mut self.context, tag)?;
        }
        Ok(DaState {
            max_tries: values[0],
            counter: values[1],
            interval: values[2],
            recovery: values[3],
            in_lockout: values[4] & PERMANENT_IN_LOCKOUT != 0,
            lockout_auth_set: values[4] & PERMANENT_LOCKOUT_AUTH_SET != 0,
        })
    }

    /// A salted HMAC session (salt encrypted to the storage key) with
    /// AES-128-CFB parameter encryption: authorization values and the first
    /// command parameter never cross the bus in clear, and an eavesdropper
    /// cannot brute-force the PIN from the HMAC offline.
    pub fn hmac_session(&mut self) -> Result<AuthSession, TpmError> {
        let session = self
            .context
            .start_auth_session(
                Some(self.primary),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(TpmError::Session)?
            .ok_or_else(|| TpmError::Unexpected("empty session handle".into()))?;
        Ok(session)
    }

    /// Sets the session's parameter-encryption attributes for the next
    /// command: `decrypt` encrypts the command's first parameter,
    /// `encrypt` the response's (only where that parameter is a TPM2B).
    pub fn set_encryption(
        &mut self,
        session: AuthSession,
        decrypt: bool,
        encrypt: bool,
    ) -> Result<(), TpmError> {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(decrypt)
            .with_encrypt(encrypt)
            .build();
        self.context
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(TpmError::Session)
    }

    /// Flushes a session; failures only leak a slot until the TPM restarts.
    pub fn flush_session(&mut self, session: AuthSession) {
        let handle = ObjectHandle::from(SessionHandle::from(session));
        if let Err(e) = self.context.flush_context(handle) {
            tracing::warn!(error = %e, "could not flush a TPM session");
        }
    }

    /// Flushes a loaded key.
    pub fn flush_key(&mut self, key: KeyHandle) {
        if let Err(e) = self.context.flush_context(key.into()) {
            tracing::warn!(error = %e, "could not flush a TPM key");
        }
    }
}

fn read_variable_property(context: &mut Context, tag: PropertyTag) -> Result<u32, TpmError> {
    // get_tpm_property caches fixed and variable properties alike; ask the
    // TPM directly for values that change.
    let (data, _) = context
        .get_capability(CapabilityType::TpmProperties, tag.into(), 1)
        .map_err(TpmError::Properties)?;
    match data {
        CapabilityData::TpmProperties(list) => Ok(list
            .iter()
            .find(|p| p.property() == tag)
            .map_or(0, |p| p.value())),
        other => Err(TpmError::Unexpected(format!(
            "capability answer {other:?} for {tag:?}"
        ))),
    }
}

/// Without a resource manager (swtpm, /dev/tpm0) objects a killed daemon
/// left loaded stay in the TPM's few slots; this daemon owns such a TPM, so
/// it flushes them. Behind a resource manager the list is empty.
fn flush_stale_objects(context: &mut Context) {
    let handles = match context.get_capability(CapabilityType::Handles, TRANSIENT_FIRST, 64) {
        Ok((CapabilityData::Handles(list), _)) => list.into_inner(),
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the TPM's loaded objects");
            return;
        }
    };
    for handle in handles {
        let result = context
            .tr_from_tpm_public(handle)
            .and_then(|object| context.flush_context(object));
        match result {
            Ok(()) => {
                tracing::info!(handle = %format!("{:#010x}", u32::from(handle)), "flushed a TPM object left loaded by an earlier run")
            }
            Err(e) => tracing::warn!(error = %e, "could not flush a stale TPM object"),
        }
    }
}

/// The storage primary key's template: ECC P-256, restricted decryption,
/// AES-128-CFB for its children (the TCG "SRK" template). The owner seed
/// makes the same template give the same key every time, so it need not be
/// stored.
pub fn storage_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .build()
        .map_err(TpmError::Structure)?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .build()
        .map_err(TpmError::Structure)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(TpmError::Structure)
}

fn storage_primary(
    context: &mut Context,
    persistent_handle: Option<u32>,
) -> Result<KeyHandle, TpmError> {
    let Some(handle) = persistent_handle else {
        return create_primary(context);
    };
    let persistent_err = |source| TpmError::PersistentPrimary { handle, source };
    let tpm_handle = PersistentTpmHandle::new(handle).map_err(persistent_err)?;
    if let Ok(object) = context.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle)) {
        return Ok(object.into());
    }
    // Not there yet: make it and keep it at that handle.
    let transient = create_primary(context)?;
    let result = context.execute_with_nullauth_session(|ctx| {
        ctx.evict_control(
            Provision::Owner,
            transient.into(),
            Persistent::Persistent(tpm_handle),
        )
    });
    let persistent = result.map_err(persistent_err);
    if let Err(e) = context.flush_context(transient.into()) {
        tracing::warn!(error = %e, "could not flush the transient storage key");
    }
    let object = persistent?;
    tracing::info!(handle = %format!("{handle:#010x}"), "storage key made persistent");
    Ok(object.into())
}

fn create_primary(context: &mut Context) -> Result<KeyHandle, TpmError> {
    let template = storage_template()?;
    let result = context.execute_with_nullauth_session(|ctx| {
        ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
    });
    result.map(|r| r.key_handle).map_err(TpmError::Primary)
}

/// A TPM property holding four ASCII characters, as text.
fn fourcc(value: u32) -> String {
    value
        .to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|b| char::from(*b))
        .collect::<String>()
}

/// Software TPMs: swtpm/libtpms and IBM's simulator report manufacturer
/// "IBM" with vendor "SW   TPM"; Microsoft's reference simulator "MSFT".
pub fn is_simulator(manufacturer: &str, vendor: &str) -> bool {
    let vendor: String = vendor.split_whitespace().collect();
    vendor.contains("SWTPM") || manufacturer.trim() == "MSFT"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_comes_from_config_then_environment_then_devices() {
        assert_eq!(
            tcti_candidates(Some("swtpm:port=1"), Some("mssim:")),
            ["swtpm:port=1"]
        );
        assert_eq!(tcti_candidates(None, Some("mssim:")), ["mssim:"]);
        assert_eq!(tcti_candidates(Some(" "), None), DEFAULT_DEVICES);
        assert_eq!(tcti_candidates(None, None), DEFAULT_DEVICES);
    }

    #[test]
    fn a_missing_device_node_is_named() {
        assert_eq!(
            missing_device("device:/dev/fleetkey-no-such-tpm").as_deref(),
            Some("/dev/fleetkey-no-such-tpm")
        );
        assert_eq!(missing_device("device:/dev/null"), None);
        assert_eq!(missing_device("swtpm:port=2321"), None);
        let Err(e) = Tpm::open(&["device:/dev/fleetkey-no-such-tpm".into()], None) else {
            panic!("opened a TPM that does not exist");
        };
        let message = e.to_string();
        assert!(message.contains("no such device"), "{message}");
        assert!(!message.contains("not recognized"), "{message}");
    }

    #[test]
    fn simulators_are_recognised() {
        assert!(is_simulator("IBM", "SW   TPM"));
        assert!(is_simulator("MSFT", ""));
        assert!(!is_simulator("INTC", "Intel"));
        assert!(!is_simulator("IFX", "SLB9670"));
        assert_eq!(fourcc(0x4942_4d00), "IBM");
    }

    #[test]
    fn per_key_limit_stays_below_the_tpm_lockout() {
        let da = DaState {
            max_tries: 3,
            counter: 0,
            interval: 1000,
            recovery: 1000,
            in_lockout: false,
            lockout_auth_set: false,
        };
        assert_eq!(da.per_key_limit(), 2);
        assert_eq!(
            DaState {
                max_tries: 32,
                ..da
            }
            .per_key_limit(),
            31
        );
        assert_eq!(DaState { max_tries: 0, ..da }.per_key_limit(), 1);
        assert_eq!(
            DaState {
                counter: 3,
                in_lockout: true,
                ..da
            }
            .recovery_seconds(),
            Some(1000)
        );
    }
}
