//! The key stores this daemon runs with. A backend whose hardware or
//! setup is missing is kept as unavailable, with the reason, and the
//! daemon starts with the others.

use std::path::Path;
use std::sync::Arc;

use fleetkey_plugin::{BackendInfo, KeyStore};
use fleetkey_proto::{Failure, Reason, daemon};

use crate::config::Config;

const PCSC_DESCRIPTION: &str = "PIV smartcards and tokens over PC/SC";

/// The pcsc key store's settings; the management key read from its file,
/// which must not be readable by others.
#[cfg(feature = "pcsc")]
fn pcsc_config(
    config: &crate::config::PcscBackendConfig,
) -> Result<fleetkey_pcsc::PcscConfig, String> {
    use std::os::unix::fs::MetadataExt;

    let default_slot = fleetkey_pcsc::parse_slot(&config.default_slot)
        .ok_or_else(|| format!("'{}' is not a PIV key slot", config.default_slot))?;
    let algorithm =
        fleetkey_pcsc::Algorithm::parse(&config.management_key_algorithm).ok_or_else(|| {
            format!(
                "'{}' is not a management key algorithm",
                config.management_key_algorithm
            )
        })?;
    let Some(path) = &config.management_key_file else {
        return Ok(fleetkey_pcsc::PcscConfig {
            management_key: fleetkey_pcsc::ManagementKey::factory(),
            management_key_source: "the factory default management key".into(),
            default_slot,
        });
    };
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the management key file {shown}: {e}"))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the management key file {shown} may be read by others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        ));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the management key file {shown}: {e}"))?,
    );
    let key = fleetkey_pcsc::ManagementKey::from_hex(algorithm, &text)
        .map_err(|e| format!("the management key file {shown}: {e}"))?;
    Ok(fleetkey_pcsc::PcscConfig {
        management_key: key,
        management_key_source: format!("the management key in {shown}"),
        default_slot,
    })
}

enum Entry {
    Available {
        info: BackendInfo,
        store: Arc<dyn KeyStore>,
    },
    Unavailable {
        name: String,
        description: String,
        reason: String,
        /// Every key store but the software one keeps keys in hardware,
        /// whether or not it can be used right now.
        hardware_backed: bool,
    },
}

const TPM_NAME: &str = "tpm";
const TPM_DESCRIPTION: &str = "Keys inside the TPM 2.0, PINs checked by the TPM";

/// The backends by name, in a fixed order.
pub struct Backends {
    entries: Vec<Entry>,
}

/// A usable backend.
#[derive(Clone)]
pub struct Backend {
    pub info: BackendInfo,
    pub store: Arc<dyn KeyStore>,
}

impl Backends {
    /// Opens every backend the configuration enables.
    pub fn open(config: &Config, state_dir: &Path) -> Self {
        let mut backends = Self {
            entries: Vec::new(),
        };
        let soft = &config.backends.soft;
        let soft_description = "Software keys on disk, encrypted under the PIN";
        if soft.enabled {
            match fleetkey_soft::SoftKeyStore::open(
                &state_dir.join("soft-keys"),
                soft.soft_config(),
            ) {
                Ok(store) => backends.add(Arc::new(store)),
                Err(e) => backends.add_unavailable("soft", soft_description, e.to_string()),
            }
        } else {
            backends.add_unavailable(
                "soft",
                soft_description,
                "disabled in the configuration".into(),
            );
        }
        backends.open_tpm(config);
        backends.open_pcsc(config);
        backends
    }

    #[cfg(feature = "tpm")]
    fn open_tpm(&mut self, config: &Config) {
        let tpm = &config.backends.tpm;
        if !tpm.enabled {
            self.add_unavailable(
                TPM_NAME,
                TPM_DESCRIPTION,
                "disabled in the configuration".into(),
            );
            return;
        }
        let tpm_config = fleetkey_tpm::TpmConfig {
            tcti: tpm.tcti.clone(),
            persistent_handle: tpm.persistent_handle,
        };
        match fleetkey_tpm::TpmKeyStore::open(&tpm_config) {
            Ok(store) => self.add(Arc::new(store)),
            Err(e) => self.add_unavailable(TPM_NAME, TPM_DESCRIPTION, e.to_string()),
        }
    }

    #[cfg(not(feature = "tpm"))]
    fn open_tpm(&mut self, config: &Config) {
        if config.backends.tpm.enabled {
            self.add_unavailable(
                TPM_NAME,
                TPM_DESCRIPTION,
                "this fleetkeyd was built without TPM support (cargo feature `tpm`)".into(),
            );
        }
    }

    #[cfg(feature = "pcsc")]
    fn open_pcsc(&mut self, config: &Config) {
        let pcsc = &config.backends.pcsc;
        if !pcsc.enabled {
            self.add_unavailable(
                "pcsc",
                PCSC_DESCRIPTION,
                "disabled in the configuration".into(),
            );
            return;
        }
        let opened = pcsc_config(pcsc)
            .and_then(|c| fleetkey_pcsc::PcscKeyStore::open(c).map_err(|e| e.to_string()));
        match opened {
            Ok(store) => self.add(Arc::new(store)),
            Err(reason) => self.add_unavailable("pcsc", PCSC_DESCRIPTION, reason),
        }
    }

    #[cfg(not(feature = "pcsc"))]
    fn open_pcsc(&mut self, config: &Config) {
        let reason = if config.backends.pcsc.enabled {
            "this fleetkeyd was built without the pcsc feature"
        } else {
            "disabled in the configuration"
        };
        self.add_unavailable("pcsc", PCSC_DESCRIPTION, reason.into());
    }

    /// Adds a working key store.
    pub fn add(&mut self, store: Arc<dyn KeyStore>) {
        let info = store.describe();
        tracing::info!(backend = %info.name, hardware_backed = info.hardware_backed, "key store available");
        self.entries.push(Entry::Available { info, store });
    }

    /// Records a key store that could not be opened.
    pub fn add_unavailable(&mut self, name: &str, description: &str, reason: String) {
        tracing::warn!(backend = name, %reason, "key store unavailable");
        self.entries.push(Entry::Unavailable {
            name: name.into(),
            description: description.into(),
            reason,
            hardware_backed: name != fleetkey_soft::BACKEND_NAME,
        });
    }

    /// The named backend, or why it cannot be used.
    pub fn get(&self, name: &str) -> Result<Backend, Failure> {
        for entry in &self.entries {
            match entry {
                Entry::Available { info, store } if info.name == name => {
                    return Ok(Backend {
                        info: info.clone(),
                        store: store.clone(),
                    });
                }
                Entry::Unavailable {
                    name: n, reason, ..
                } if n == name => {
                    return Err(Failure::new(
                        Reason::BackendUnavailable,
                        format!("key store '{name}' is not available: {reason}"),
                    )
                    .with_meta("backend", name));
                }
                _ => {}
            }
        }
        let known: Vec<&str> = self.entries.iter().map(Entry::name).collect();
        Err(Failure::new(
            Reason::BackendUnknown,
            format!(
                "there is no key store named '{name}'; this daemon has: {}",
                known.join(", ")
            ),
        )
        .with_meta("backend", name))
    }

    /// Every available backend.
    pub fn available(&self) -> Vec<Backend> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Available { info, store } => Some(Backend {
                    info: info.clone(),
                    store: store.clone(),
                }),
                Entry::Unavailable { .. } => None,
            })
            .collect()
    }

    /// What `status` shows, but the hardware `details` (which ask the
    /// hardware, so the caller fetches them off the async threads).
    pub fn describe(&self, policy_max_attempts: u32) -> Vec<daemon::Backend> {
        self.entries
            .iter()
            .map(|entry| match entry {
                Entry::Available { info, store } => daemon::Backend {
                    name: info.name.clone(),
                    description: info.description.clone(),
                    available: true,
                    unavailable_reason: String::new(),
                    hardware_backed: info.hardware_backed,
                    attestation_formats: info.attestation_formats.clone(),
                    capabilities: info.operations.iter().map(|o| o.to_string()).collect(),
                    pin_min_length: length(info.pin_rules.min_length),
                    pin_max_length: length(info.pin_rules.max_length),
                    details: Default::default(),
                    pin_max_attempts: max_attempts(store.as_ref(), policy_max_attempts),
                },
                Entry::Unavailable {
                    name,
                    description,
                    reason,
                    hardware_backed,
                } => daemon::Backend {
                    name: name.clone(),
                    description: description.clone(),
                    available: false,
                    unavailable_reason: reason.clone(),
                    hardware_backed: *hardware_backed,
                    ..Default::default()
                },
            })
            .collect()
    }
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Available { info, .. } => &info.name,
            Entry::Unavailable { name, .. } => name,
        }
    }
}

/// Wrong PINs in a row after which a user of `store` is locked: the
/// policy's limit, or the store's own where it is lower.
pub fn max_attempts(store: &dyn KeyStore, policy_max_attempts: u32) -> u32 {
    store.max_pin_attempts().map_or(policy_max_attempts, |own| {
        own.min(policy_max_attempts).max(1)
    })
}

fn length(value: Option<usize>) -> u32 {
    value.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
}
