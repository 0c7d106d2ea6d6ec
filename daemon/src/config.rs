//! Configuration: built-in defaults, overridden by a TOML file, overridden
//! by command-line flags. `fleetkeyd.example.toml` at the repository root
//! documents every option; options are never removed and defaults never
//! change silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backends::KeyStoreSections;

/// Most drop-in files read from one directory.
const MAX_DROP_INS: usize = 256;

/// Merges `over` into `base`: tables key by key, other values replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => merge(into, from),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

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
    pub log_level: LogLevel,
    pub pin: PinConfig,
    /// `[integrity]`: the integrity report and the gate on activation and
    /// `user add` (docs/integrity.md).
    pub integrity: IntegrityConfig,
    /// `[backends.NAME]`: each key store's section, parsed by its factory
    /// (`backends.rs`).
    pub backends: KeyStoreSections,
    /// The merged files as read, to tell what a reload changed.
    #[serde(skip)]
    pub source: toml::Table,
    /// Which D-Bus bus the daemon owns org.fleetkey.Daemon1 on: `auto`,
    /// `system`, `session` or `off` (docs/dbus.md).
    pub dbus: BusChoice,
}

/// The top-level settings SIGHUP applies without a restart.
pub const RELOADABLE: [&str; 2] = ["log_level", "pin"];

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
            log_level: LogLevel::default(),
            pin: PinConfig::default(),
            integrity: IntegrityConfig::default(),
            backends: KeyStoreSections::default(),
            source: toml::Table::new(),
            dbus: BusChoice::default(),
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

/// `[integrity]`: what the integrity checks read and what the gate
/// requires before activation and `user add`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// The file-system root the checks read sysfs, procfs, efivars and
    /// /etc from: `/` on a real machine.
    pub root: PathBuf,
    /// Every check of this HSI level or below must pass (0: none; 1-4).
    pub min_level: u8,
    /// Checks (IDs such as `org.fleetkey.SecureBoot`) that must pass
    /// whatever their level.
    pub required: Vec<String>,
    /// Checks never held against the device; each time one fails and is
    /// let pass, the audit log records the exception.
    pub ignored: Vec<String>,
    /// Unix accounts (besides the enrolled users) that must not hold
    /// root-equivalent power, e.g. the kiosk's login account.
    pub kiosk_accounts: Vec<String>,
    /// The config file the daemon was started with (set at load, not in
    /// the file): checked by `org.fleetkey.FleetkeyFiles`.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            min_level: 0,
            required: Vec::new(),
            ignored: Vec::new(),
            kiosk_accounts: Vec::new(),
            config_path: None,
        }
    }
}

impl IntegrityConfig {
    /// The gate's policy.
    pub fn policy(&self) -> fleetkey_integrity::Policy {
        fleetkey_integrity::Policy {
            min_level: self.min_level,
            require: self.required.clone(),
            ignore: self.ignored.clone(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.policy()
            .validate()
            .map_err(|message| ConfigError::Invalid {
                setting: "integrity.min_level / integrity.required / integrity.ignored",
                message,
            })?;
        if !self.root.is_absolute() {
            return Err(ConfigError::Invalid {
                setting: "integrity.root",
                message: format!("{} is not an absolute path", self.root.display()),
            });
        }

        if self.kiosk_accounts.len() > 64 {
            return Err(ConfigError::Invalid {
                setting: "integrity.kiosk_accounts",
                message: format!("at most 64 accounts, got {}", self.kiosk_accounts.len()),
            });
        }
        Ok(())
    }
}

/// How much the daemon logs: `error`, `warn`, `info`, `debug` or `trace`
/// (lower case), in the config file and in `--log-level` alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(text: &str) -> Result<LogLevel, String> {
        match text {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(format!(
                "'{text}' is not one of error, warn, info, debug, trace"
            )),
        }
    }

    pub fn tracing_level(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        LogLevel::parse(&text)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        LogLevel::parse(text)
    }
}

impl Config {
    /// Reads `path`, then its drop-ins (`<path>.d/*.toml`, in lexical
    /// order of their names), each typed and checked like the main file;
    /// a missing main file is an error only when `required`. A drop-in
    /// replaces the keys it names: tables (`[pin]`, `[backends.NAME]`)
    /// are merged key by key, any other value (lists included) replaced.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let mut merged = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_file(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => toml::Table::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        for drop_in in Self::drop_ins(path)? {
            let text = std::fs::read_to_string(&drop_in).map_err(|source| ConfigError::Read {
                path: drop_in.clone(),
                source,
            })?;
            merge(&mut merged, Self::parse_file(&drop_in, &text)?);
        }
        let source = merged.clone();
        let config: Config =
            merged
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!(
                        "{} (with its drop-ins merged)",
                        e.to_string().trim_end().replace('\n', " ")
                    ),
                })?;
        config.validate()?;
        let mut config = config;
        config.source = source;
        config.integrity.config_path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The drop-in directory of a config file: `<path>.d`.
    pub fn drop_in_dir(path: &Path) -> PathBuf {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".d");
        PathBuf::from(dir)
    }

    /// The `*.toml` files of the drop-in directory, sorted by name; none
    /// when it does not exist. Other files (editor backups, `.dpkg-old`)
    /// are skipped.
    fn drop_ins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let dir = Self::drop_in_dir(path);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let file = entry.path();
            if file.extension().is_some_and(|e| e == "toml")
                && !entry.file_name().to_string_lossy().starts_with('.')
            {
                files.push(file);
            }
        }
        if files.len() > MAX_DROP_INS {
            return Err(ConfigError::Invalid {
                setting: "drop-in directory",
                message: format!(
                    "{} holds {} files; at most {MAX_DROP_INS} are read",
                    dir.display(),
                    files.len()
                ),
            });
        }
        files.sort();
        Ok(files)
    }

    /// One file as a table, after checking that it is a valid (partial)
    /// config on its own, so that an error names the file it is in.
    fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        };
        toml::from_str::<Config>(text).map_err(parse_error)?;
        toml::from_str::<toml::Table>(text).map_err(parse_error)
    }

    /// The top-level settings whose text differs between `self`
    /// (running) and `new` as their files say, and that take effect only
    /// at a restart: all but `log_level` and `[pin]`.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut keys: Vec<&String> = self.source.keys().chain(new.source.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|key| !RELOADABLE.contains(&key.as_str()))
            .filter(|key| self.source.get(*key) != new.source.get(*key))
            .cloned()
            .collect()
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
        self.integrity.validate()?;
        if let Some(url) = &self.portal_url {
            fleetkey_proto::payload::validate_portal_url(url).map_err(|e| {
                ConfigError::Invalid {
                    setting: "portal_url",
                    message: e.to_string(),
                }
            })?;
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
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(
            config.integrity,
            IntegrityConfig {
                config_path: config.integrity.config_path.clone(),
                ..IntegrityConfig::default()
            }
        );
        for name in ["soft", "tpm", "pcsc"] {
            let section = config.backends.get(name).unwrap();
            assert!(section.enabled, "{name}");
        }
        let soft = config.backends.get("soft").unwrap();
        #[cfg(feature = "soft")]
        assert_eq!(
            soft.settings::<fleetkey_soft::SoftConfig>(),
            Some(&fleetkey_soft::SoftConfig::default())
        );
        #[cfg(feature = "tpm")]
        assert_eq!(
            config
                .backends
                .get("tpm")
                .unwrap()
                .settings::<fleetkey_tpm::TpmConfig>(),
            Some(&fleetkey_tpm::TpmConfig::default())
        );
        #[cfg(feature = "pcsc")]
        assert_eq!(
            config
                .backends
                .get("pcsc")
                .unwrap()
                .settings::<fleetkey_pcsc::PcscSettings>(),
            Some(&fleetkey_pcsc::PcscSettings::default())
        );
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn tpm_section_reads_tcti_and_handle() {
        let config = parse(
            "[backends.tpm]\nenabled = true\ntcti = 'swtpm:port=2321'\npersistent_handle = 0x81000001",
        )
        .unwrap();
        let tpm = config.backends.get("tpm").unwrap();
        let tpm = tpm.settings::<fleetkey_tpm::TpmConfig>().unwrap();
        assert_eq!(tpm.tcti.as_deref(), Some("swtpm:port=2321"));
        assert_eq!(tpm.persistent_handle, Some(0x8100_0001));
    }

    /// The slot and the algorithm are typed when the config is loaded, by
    /// the rules `--slot` uses; a bad value names its key.
    #[cfg(feature = "pcsc")]
    #[test]
    fn pcsc_settings_are_typed_at_load() {
        let err = parse("[backends.pcsc]\nmanagement_key_algorithm = 'rot13'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("management_key_algorithm"), "{err}");
        assert!(err.contains("'rot13' is not one of"), "{err}");
        for bad in ["9b", "082", "0x9a"] {
            let err = parse(&format!("[backends.pcsc]\ndefault_slot = '{bad}'"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("default_slot"), "{err}");
            assert!(err.contains("not a PIV key slot"), "{err}");
        }
        let config =
            parse("[backends.pcsc]\ndefault_slot = '9D'\nmanagement_key_algorithm = 'aes256'")
                .unwrap();
        let pcsc = config.backends.get("pcsc").unwrap();
        let pcsc = pcsc.settings::<fleetkey_pcsc::PcscSettings>().unwrap();
        assert_eq!(pcsc.default_slot.number(), 0x9d);
        assert_eq!(
            pcsc.management_key_algorithm,
            fleetkey_pcsc::Algorithm::Aes256
        );
    }

    #[test]
    fn key_store_sections_are_checked_by_their_factories() {
        let err = parse("[backends.soft]\nargon2_iterations = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backends.soft.argon2_iterations"), "{err}");
        let err = parse("[backends.soft]\nargon2_memroy_kib = 64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backends.soft"), "{err}");
        assert!(err.contains("argon2_memroy_kib"), "{err}");
        let err = parse("[backends.tmp]\nenabled = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backends.tmp"), "{err}");
        assert!(err.contains("soft, tpm, pcsc"), "{err}");
        let err = parse("[backends.tpm]\nenabled = 'yes'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backends.tpm.enabled"), "{err}");
        let config = parse("[backends.soft]\nenabled = false").unwrap();
        assert!(!config.backends.get("soft").unwrap().enabled);
    }

    #[test]
    fn log_level_has_one_rule() {
        assert_eq!(
            parse("log_level = 'debug'").unwrap().log_level,
            LogLevel::Debug
        );
        for bad in ["loud", "INFO", "1"] {
            let err = parse(&format!("log_level = '{bad}'"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("log_level"), "{err}");
            assert!("x".parse::<LogLevel>().is_err());
            assert!(bad.parse::<LogLevel>().is_err(), "{bad}");
        }
        assert_eq!("trace".parse::<LogLevel>(), Ok(LogLevel::Trace));
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
        #[cfg(feature = "tpm")]
        {
            let err = parse("[backends.tpm]\npersistent_handle = 0x80000001")
                .unwrap_err()
                .to_string();
            assert!(err.contains("backends.tpm.persistent_handle"), "{err}");
            let err = parse("[backends.tpm]\ntcti = ''").unwrap_err().to_string();
            assert!(err.contains("backends.tpm.tcti"), "{err}");
        }
        let err = parse("[pin\n").unwrap_err().to_string();
        assert!(err.contains("not valid"), "{err}");
    }

    #[test]
    fn drop_ins_merge_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetkeyd.toml");
        std::fs::write(
            &path,
            "log_level = 'warn'\nadmin_group = 'wheel'\n[pin]\nmin_length = 4\nmax_length = 8\n",
        )
        .unwrap();
        let drop_ins = Config::drop_in_dir(&path);
        assert!(drop_ins.ends_with("fleetkeyd.toml.d"));
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(drop_ins.join("20-pin.toml"), "[pin]\nmin_length = 6\n").unwrap();
        std::fs::write(
            drop_ins.join("10-log.toml"),
            "log_level = 'debug'\n[pin]\nmin_length = 5\n",
        )
        .unwrap();
        std::fs::write(drop_ins.join("30-ignored.toml~"), "garbage = [").unwrap();
        let config = Config::load(&path, true).unwrap();
        assert_eq!(config.log_level, LogLevel::Debug);
        // 20-pin.toml comes after 10-log.toml and wins; [pin] merged key by key.
        assert_eq!(config.pin.min_length, 6);
        assert_eq!(config.pin.max_length, 8);
        assert_eq!(config.admin_group.as_deref(), Some("wheel"));

        // A drop-in is typed like the main file and the error names it.
        std::fs::write(drop_ins.join("40-bad.toml"), "log_level = 'loud'\n").unwrap();
        let err = Config::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("40-bad.toml"), "{err}");
        assert!(err.contains("log_level"), "{err}");
        std::fs::write(drop_ins.join("40-bad.toml"), "sokcet = '/x'\n").unwrap();
        let err = Config::load(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("40-bad.toml") && err.contains("sokcet"),
            "{err}"
        );
        // Checks across keys run on the merged result.
        std::fs::write(drop_ins.join("40-bad.toml"), "[pin]\nmax_length = 5\n").unwrap();
        let err = Config::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("pin.min_length"), "{err}");
        std::fs::remove_file(drop_ins.join("40-bad.toml")).unwrap();

        // Drop-ins apply even when the optional main file is missing.
        std::fs::remove_file(&path).unwrap();
        let config = Config::load(&path, false).unwrap();
        assert_eq!(config.pin.min_length, 6);
        assert_eq!(config.log_level, LogLevel::Debug);
    }

    #[test]
    fn only_log_level_and_pin_reload_without_restart() {
        let old = parse("log_level = 'info'").unwrap();
        let new = parse("log_level = 'debug'\n[pin]\nmin_length = 5").unwrap();
        assert!(old.restart_needed(&new).is_empty());
        let new = parse("admin_group = 'wheel'\n[backends.soft]\nenabled = false").unwrap();
        assert_eq!(old.restart_needed(&new), ["admin_group", "backends"]);
    }

    #[test]
    fn integrity_section_is_typed_at_load() {
        let config = parse("").unwrap();
        // The file it was read from, for the report's config check.
        assert!(
            config
                .integrity
                .config_path
                .as_ref()
                .unwrap()
                .ends_with("c.toml")
        );
        assert_eq!(
            config.integrity,
            IntegrityConfig {
                config_path: config.integrity.config_path.clone(),
                ..IntegrityConfig::default()
            }
        );
        assert_eq!(config.integrity.root, PathBuf::from("/"));
        let config = parse(
            "[integrity]\nroot = '/fake'\nmin_level = 2\nrequired = ['org.fleetkey.Lsm']\nignored = ['org.fleetkey.SecureBoot']\nkiosk_accounts = ['kiosk']",
        )
        .unwrap();
        let policy = config.integrity.policy();
        assert_eq!(policy.min_level, 2);
        assert_eq!(policy.require, ["org.fleetkey.Lsm"]);
        assert_eq!(policy.ignore, ["org.fleetkey.SecureBoot"]);
        assert_eq!(config.integrity.kiosk_accounts, ["kiosk"]);
        for (bad, says) in [
            ("min_level = 5", "HSI levels are 0 to 4"),
            (
                "required = ['org.fleetkey.Nope']",
                "unknown integrity check",
            ),
            (
                "required = ['org.fleetkey.Lsm']\nignored = ['org.fleetkey.Lsm']",
                "both required and ignored",
            ),
            ("root = 'relative'", "integrity.root"),
            // Gone with the portal stream: an old config says so.
            ("poll_interval_secs = 60", "poll_interval_secs"),
            ("minimum_level = 1", "minimum_level"),
        ] {
            let err = parse(&format!("[integrity]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_optional_file_is_defaults() {
        let config = Config::load(Path::new("/nonexistent/fleetkeyd.toml"), false).unwrap();
        assert_eq!(config.pin.max_attempts, 5);
        assert!(Config::load(Path::new("/nonexistent/fleetkeyd.toml"), true).is_err());
    }
}

/// The bus the D-Bus service (daemon/src/dbus) uses, in the config file
/// (`dbus = "..."`) and in `--dbus` alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BusChoice {
    /// The system bus when the daemon runs as root or as a system account
    /// (uid below 1000, like the packaged `_fleetkey`); else the session
    /// bus (development).
    #[default]
    Auto,
    System,
    Session,
    /// No D-Bus service: gRPC only.
    Off,
}
