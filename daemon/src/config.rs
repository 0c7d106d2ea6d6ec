//! Configuration: built-in defaults, overridden by a TOML file, overridden
//! by command-line flags. `fleetkeyd.example.toml` at the repository root
//! documents every option; options are never removed and defaults never
//! change silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config setting {setting} is not valid: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the daemon serves on.
    pub socket: Option<PathBuf>,
    /// Directory of the state database and software keys.
    pub state_dir: Option<PathBuf>,
    /// Portal used for bare typed codes (QR payloads name their own).
    pub portal_url: Option<String>,
    /// PEM file with extra CA certificates for https portals.
    pub portal_ca_file: Option<PathBuf>,
    /// Hosts (names or addresses) the daemon may reach over plain http://
    /// besides loopback; every other portal must be https://.
    pub allow_plaintext_portals: Vec<String>,
    /// Members of this group may activate and add or remove users.
    pub admin_group: Option<String>,
    /// Backend used when `user add` names none.
    pub default_backend: String,
    /// Name the device gives itself at the portal (default: host name).
    pub device_name: Option<String>,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    pub pin: PinConfig,
    pub backends: BackendsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: None,
            state_dir: None,
            portal_url: None,
            portal_ca_file: None,
            allow_plaintext_portals: Vec::new(),
            admin_group: None,
            default_backend: "soft".into(),
            device_name: None,
            log_level: "info".into(),
            pin: PinConfig::default(),
            backends: BackendsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PinConfig {
    pub min_length: u32,
    pub max_length: u32,
    /// Wrong PINs in a row after which the user is locked.
    pub max_attempts: u32,
    /// Only the digits 0-9 (else any printable ASCII but space).
    pub digits_only: bool,
}

impl Default for PinConfig {
    fn default() -> Self {
        Self {
            min_length: 4,
            max_length: 6,
            max_attempts: 5,
            digits_only: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    pub soft: SoftBackendConfig,
    pub tpm: TpmBackendConfig,
    pub pcsc: PcscBackendConfig,
}

/// `[backends.tpm]`. Read by every build (so one config file suits all);
/// used when fleetkeyd is built with the `tpm` feature.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TpmBackendConfig {
    pub enabled: bool,
    /// TCTI string; None: the TCTI environment variable, else
    /// /dev/tpmrm0, then /dev/tpm0.
    pub tcti: Option<String>,
    /// Keep the storage key at this persistent handle (0x81000000 to
    /// 0x81FFFFFF) instead of deriving it at each start.
    pub persistent_handle: Option<u32>,
}

impl Default for TpmBackendConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tcti: None,
            persistent_handle: None,
        }
    }
}

/// PIV smartcards over PC/SC.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PcscBackendConfig {
    pub enabled: bool,
    /// File holding the cards' management key as hex (mode 0600 or
    /// stricter). None: the factory default key.
    pub management_key_file: Option<PathBuf>,
    /// 3des, aes128, aes192 or aes256.
    pub management_key_algorithm: String,
    /// Slot for new keys when `user add` names none.
    pub default_slot: String,
}

impl Default for PcscBackendConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            management_key_file: None,
            management_key_algorithm: "3des".into(),
            default_slot: "9a".into(),
        }
    }
}

/// PIV key slots fleetkey may use.
pub fn is_piv_slot(text: &str) -> bool {
    matches!(text, "9a" | "9c" | "9d" | "9e")
        || u8::from_str_radix(text, 16).is_ok_and(|n| (0x82..=0x95).contains(&n)) && text.len() == 2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftBackendConfig {
    pub enabled: bool,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
}

impl Default for SoftBackendConfig {
    fn default() -> Self {
        let soft = fleetkey_soft::SoftConfig::default();
        Self {
            enabled: true,
            argon2_memory_kib: soft.argon2_memory_kib,
            argon2_iterations: soft.argon2_iterations,
            argon2_parallelism: soft.argon2_parallelism,
        }
    }
}

impl SoftBackendConfig {
    pub fn soft_config(&self) -> fleetkey_soft::SoftConfig {
        fleetkey_soft::SoftConfig {
            argon2_memory_kib: self.argon2_memory_kib,
            argon2_iterations: self.argon2_iterations,
            argon2_parallelism: self.argon2_parallelism,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let pin = &self.pin;
        if pin.min_length == 0 || pin.min_length > pin.max_length || pin.max_length > 64 {
            return Err(ConfigError::Invalid {
                setting: "pin.min_length / pin.max_length",
                message: format!(
                    "need 1 <= min_length <= max_length <= 64, got {}..{}",
                    pin.min_length, pin.max_length
                ),
            });
        }
        if pin.max_attempts == 0 || pin.max_attempts > 100 {
            return Err(ConfigError::Invalid {
                setting: "pin.max_attempts",
                message: format!("must be between 1 and 100, got {}", pin.max_attempts),
            });
        }
        if let Some(url) = &self.portal_url {
            fleetkey_proto::payload::validate_portal_url(url).map_err(|e| {
                ConfigError::Invalid {
                    setting: "portal_url",
                    message: e.to_string(),
                }
            })?;
        }
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(ConfigError::Invalid {
                setting: "log_level",
                message: format!(
                    "'{}' is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            });
        }
        let pcsc = &self.backends.pcsc;
        if !matches!(
            pcsc.management_key_algorithm.as_str(),
            "3des" | "aes128" | "aes192" | "aes256"
        ) {
            return Err(ConfigError::Invalid {
                setting: "backends.pcsc.management_key_algorithm",
                message: format!(
                    "'{}' is not one of 3des, aes128, aes192, aes256",
                    pcsc.management_key_algorithm
                ),
            });
        }
        if !is_piv_slot(&pcsc.default_slot) {
            return Err(ConfigError::Invalid {
                setting: "backends.pcsc.default_slot",
                message: format!(
                    "'{}' is not a PIV key slot (9a, 9c, 9d, 9e or 82 to 95, lower case)",
                    pcsc.default_slot
                ),
            });
        }
        if self.backends.soft.enabled {
            self.backends
                .soft
                .soft_config()
                .validate()
                .map_err(|e| ConfigError::Invalid {
                    setting: "backends.soft",
                    message: e.to_string(),
                })?;
        }
        if let Some(handle) = self.backends.tpm.persistent_handle
            && !(0x8100_0000..=0x81ff_ffff).contains(&handle)
        {
            return Err(ConfigError::Invalid {
                setting: "backends.tpm.persistent_handle",
                message: format!(
                    "{handle:#010x} is not a persistent handle (0x81000000 to 0x81ffffff)"
                ),
            });
        }
        if let Some(tcti) = &self.backends.tpm.tcti
            && tcti.trim().is_empty()
        {
            return Err(ConfigError::Invalid {
                setting: "backends.tpm.tcti",
                message:
                    "is empty; leave it out to use the TCTI environment variable or /dev/tpmrm0"
                        .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, true)
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let example = include_str!("../../fleetkeyd.example.toml");
        let config = parse(example).unwrap();
        assert_eq!(config.pin, PinConfig::default());
        assert_eq!(config.default_backend, "soft");
        assert!(config.backends.soft.enabled);
        assert_eq!(config.backends.tpm, TpmBackendConfig::default());
        assert_eq!(config.backends.pcsc, PcscBackendConfig::default());
    }

    #[test]
    fn tpm_section_reads_tcti_and_handle() {
        let config = parse(
            "[backends.tpm]\nenabled = true\ntcti = 'swtpm:port=2321'\npersistent_handle = 0x81000001",
        )
        .unwrap();
        assert_eq!(config.backends.tpm.tcti.as_deref(), Some("swtpm:port=2321"));
        assert_eq!(config.backends.tpm.persistent_handle, Some(0x8100_0001));
    }

    #[test]
    fn pcsc_settings_are_checked() {
        let err = parse("[backends.pcsc]\nmanagement_key_algorithm = 'rot13'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("management_key_algorithm"), "{err}");
        let err = parse("[backends.pcsc]\ndefault_slot = '9b'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_slot"), "{err}");
        for slot in ["9a", "9c", "9d", "9e", "82", "95"] {
            assert!(is_piv_slot(slot), "{slot}");
        }
        for slot in ["9b", "96", "81", "f9", "082"] {
            assert!(!is_piv_slot(slot), "{slot}");
        }
    }

    #[test]
    fn bad_config_says_what_is_wrong() {
        let err = parse("sokcet = '/x'").unwrap_err().to_string();
        assert!(err.contains("sokcet"), "{err}");
        let err = parse("[pin]\nmin_length = 8\nmax_length = 4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pin.min_length"), "{err}");
        let err = parse("portal_url = 'ftp://x'").unwrap_err().to_string();
        assert!(err.contains("portal_url"), "{err}");
        let err = parse("[pin]\nmax_attempts = 0").unwrap_err().to_string();
        assert!(err.contains("max_attempts"), "{err}");
        let err = parse("log_level = 'loud'").unwrap_err().to_string();
        assert!(err.contains("log_level"), "{err}");
        let err = parse("[backends.tpm]\npersistent_handle = 0x80000001")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backends.tpm.persistent_handle"), "{err}");
        let err = parse("[backends.tpm]\ntcti = ''").unwrap_err().to_string();
        assert!(err.contains("backends.tpm.tcti"), "{err}");
        let err = parse("[pin\n").unwrap_err().to_string();
        assert!(err.contains("not valid"), "{err}");
    }

    #[test]
    fn missing_optional_file_is_defaults() {
        let config = Config::load(Path::new("/nonexistent/fleetkeyd.toml"), false).unwrap();
        assert_eq!(config.pin.max_attempts, 5);
        assert!(Config::load(Path::new("/nonexistent/fleetkeyd.toml"), true).is_err());
    }
}
