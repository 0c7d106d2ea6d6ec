//! The key stores this daemon runs with, and the registry of those it
//! knows. Each key-store crate exports a factory
//! ([`fleetkey_plugin::KeyStoreFactory`]: a name, a typed config section,
//! `open`); [`key_stores!`] below lists them, one line each, named by the
//! cargo feature that builds it. A key store whose feature is off is still
//! known by name (its config section is accepted, and `status` says how to
//! get it). A store whose hardware or setup is missing is kept as
//! unavailable, with the reason, and the daemon starts with the others.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use fleetkey_plugin::{BackendInfo, KeyStore, KeyStoreError, OpenContext};
use fleetkey_proto::{Failure, Reason, daemon};

use crate::config::Config;

/// The registry: `"feature" => factory;`, one line per key store. The
/// feature's name is the key store's name.
macro_rules! key_stores {
    ($($feature:literal => $factory:ty;)*) => {
        /// Every key store this daemon knows, in `status` order.
        pub fn registry() -> Vec<Registration> {
            vec![$({
                #[cfg(feature = $feature)]
                let registration = Registration::of::<$factory>();
                #[cfg(not(feature = $feature))]
                let registration = Registration::not_built($feature);
                registration
            },)*]
        }
    };
}

key_stores! {
    "soft" => fleetkey_soft::SoftFactory;
    "tpm" => fleetkey_tpm::TpmFactory;
    "pcsc" => fleetkey_pcsc::PcscFactory;
}

/// A key store's parsed config section, as its factory's `Config` type.
type Settings = Arc<dyn Any + Send + Sync>;

/// A key store the daemon knows, with its factory's type erased.
#[derive(Clone, Copy)]
pub struct Registration {
    pub name: &'static str,
    pub description: &'static str,
    pub hardware_backed: bool,
    /// None: this fleetkeyd was built without it.
    built: Option<Built>,
}

/// Opens a built-in key store from its parsed section.
type OpenFn = fn(&Settings, &OpenContext) -> Result<Arc<dyn KeyStore>, KeyStoreError>;

#[derive(Clone, Copy)]
struct Built {
    defaults: fn() -> Settings,
    parse: fn(toml::Table) -> Result<Settings, SectionError>,
    open: OpenFn,
}

/// Why a `[backends.NAME]` section cannot be used: the key inside it
/// (None: the section as a whole), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionError {
    pub key: Option<String>,
    pub message: String,
}

impl Registration {
    /// The registration of a factory built into this daemon.
    pub fn of<F: fleetkey_plugin::KeyStoreFactory + 'static>() -> Self {
        fn defaults<F: fleetkey_plugin::KeyStoreFactory>() -> Settings {
            Arc::new(F::Config::default())
        }
        fn parse<F: fleetkey_plugin::KeyStoreFactory>(
            table: toml::Table,
        ) -> Result<Settings, SectionError> {
            // Through TOML text, so that a bad value's error points at its
            // line, and so names its key.
            let text = toml::to_string(&table).map_err(|e| SectionError {
                key: None,
                message: e.to_string(),
            })?;
            let config: F::Config = toml::from_str(&text).map_err(|e| SectionError {
                key: e
                    .span()
                    .and_then(|span| text.get(..span.start))
                    .and_then(|before| text.lines().nth(before.matches('\n').count()))
                    .and_then(|line| line.split_once('='))
                    .map(|(key, _)| key.trim().to_string()),
                message: e.message().trim_end().replace('\n', " "),
            })?;
            F::check(&config).map_err(|e| SectionError {
                key: Some(e.key.to_string()),
                message: e.message,
            })?;
            Ok(Arc::new(config))
        }
        fn open<F: fleetkey_plugin::KeyStoreFactory>(
            settings: &Settings,
            context: &OpenContext,
        ) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
            match settings.downcast_ref::<F::Config>() {
                Some(config) => F::open(config, context),
                None => Err(KeyStoreError::internal(format!(
                    "the {} key store was given another store's settings",
                    F::NAME
                ))),
            }
        }
        Registration {
            name: F::NAME,
            description: F::DESCRIPTION,
            hardware_backed: F::HARDWARE_BACKED,
            built: Some(Built {
                defaults: defaults::<F>,
                parse: parse::<F>,
                open: open::<F>,
            }),
        }
    }

    /// A key store this fleetkeyd was built without.
    pub fn not_built(name: &'static str) -> Self {
        Registration {
            name,
            description: "not built into this fleetkeyd",
            hardware_backed: true,
            built: None,
        }
    }

    pub fn is_built(&self) -> bool {
        self.built.is_some()
    }
}

/// The `[backends.*]` sections of the config, each parsed by its key
/// store's factory when the config is loaded (never again later).
#[derive(Clone)]
pub struct KeyStoreSections {
    sections: Vec<Section>,
}

/// One key store's section.
#[derive(Clone)]
pub struct Section {
    pub registration: Registration,
    pub enabled: bool,
    /// None when the key store is not built in: its settings beyond
    /// `enabled` are then not read.
    settings: Option<Settings>,
}

impl Section {
    /// The parsed settings, as the factory's `Config` type.
    pub fn settings<T: 'static>(&self) -> Option<&T> {
        self.settings.as_ref()?.downcast_ref::<T>()
    }
}

impl Default for KeyStoreSections {
    fn default() -> Self {
        Self {
            sections: registry()
                .into_iter()
                .map(|registration| Section {
                    registration,
                    enabled: true,
                    settings: registration.built.map(|b| (b.defaults)()),
                })
                .collect(),
        }
    }
}

impl std::fmt::Debug for KeyStoreSections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for section in &self.sections {
            map.entry(&section.registration.name, &section.enabled);
        }
        map.finish()
    }
}

impl KeyStoreSections {
    /// Parses `[backends.NAME]` tables; an error names the table and key.
    pub fn parse(tables: BTreeMap<String, toml::Table>) -> Result<Self, String> {
        let mut sections = Self::default();
        for (name, mut table) in tables {
            let Some(section) = sections
                .sections
                .iter_mut()
                .find(|s| s.registration.name == name)
            else {
                let known: Vec<&str> = registry().iter().map(|r| r.name).collect();
                return Err(format!(
                    "backends.{name}: there is no key store named '{name}'; fleetkeyd knows {}",
                    known.join(", ")
                ));
            };
            match table.remove("enabled") {
                None => {}
                Some(toml::Value::Boolean(enabled)) => section.enabled = enabled,
                Some(other) => {
                    return Err(format!(
                        "backends.{name}.enabled: must be true or false, not {other}"
                    ));
                }
            }
            if let Some(built) = section.registration.built {
                let settings = (built.parse)(table).map_err(|e| match e.key {
                    Some(key) => format!("backends.{name}.{key}: {}", e.message),
                    None => format!("backends.{name}: {}", e.message),
                })?;
                section.settings = Some(settings);
            }
        }
        Ok(sections)
    }

    /// The section of the key store named `name`.
    pub fn get(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.registration.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter()
    }
}

impl<'de> serde::Deserialize<'de> for KeyStoreSections {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tables = BTreeMap::<String, toml::Table>::deserialize(deserializer)?;
        KeyStoreSections::parse(tables).map_err(serde::de::Error::custom)
    }
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
    /// Opens every key store the configuration enables, as the registry
    /// lists them.
    pub fn open(config: &Config, state_dir: &Path) -> Self {
        let context = OpenContext {
            state_dir: state_dir.to_path_buf(),
        };
        let mut backends = Self {
            entries: Vec::new(),
        };
        for section in config.backends.iter() {
            let registration = section.registration;
            let Some(built) = registration.built else {
                backends.add_unavailable(
                    &registration,
                    format!(
                        "this fleetkeyd was built without the {name} key store (cargo feature `{name}`)",
                        name = registration.name
                    ),
                );
                continue;
            };
            if !section.enabled {
                backends.add_unavailable(&registration, "disabled in the configuration".into());
                continue;
            }
            let Some(settings) = &section.settings else {
                backends.add_unavailable(&registration, "its settings were not read".into());
                continue;
            };
            match (built.open)(settings, &context) {
                Ok(store) => backends.add(store),
                Err(e) => backends.add_unavailable(&registration, e.detail()),
            }
        }
        backends
    }

    /// Adds a working key store.
    pub fn add(&mut self, store: Arc<dyn KeyStore>) {
        let info = store.describe();
        tracing::info!(backend = %info.name, hardware_backed = info.hardware_backed, "key store available");
        self.entries.push(Entry::Available { info, store });
    }

    /// Records a key store that could not be opened.
    pub fn add_unavailable(&mut self, registration: &Registration, reason: String) {
        tracing::warn!(backend = registration.name, %reason, "key store unavailable");
        self.entries.push(Entry::Unavailable {
            name: registration.name.into(),
            description: registration.description.into(),
            reason,
            hardware_backed: registration.hardware_backed,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetkeyd.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, true).unwrap()
    }

    #[test]
    fn the_registry_names_each_key_store_once() {
        let names: Vec<&str> = registry().iter().map(|r| r.name).collect();
        assert_eq!(names, ["soft", "tpm", "pcsc"]);
        for registration in registry() {
            // A built store's factory answers to the registry line's name.
            assert_eq!(
                registration.is_built(),
                registration.description != "not built into this fleetkeyd",
                "{}",
                registration.name
            );
        }
        assert_eq!(
            registry()
                .iter()
                .find(|r| r.name == "soft")
                .map(|r| r.hardware_backed),
            Some(false)
        );
    }

    #[test]
    fn a_key_store_opens_through_its_factory_with_its_typed_section() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(
            "[backends.soft]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
             [backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n",
        );
        let backends = Backends::open(&config, dir.path());
        let soft = backends.get("soft").unwrap();
        assert!(!soft.info.hardware_backed);
        // The section's settings reached the store.
        assert!(dir.path().join("soft-keys").is_dir());
        let status = backends.describe(5);
        let names: Vec<&str> = status.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["soft", "tpm", "pcsc"]);
        for (name, built_in) in [
            ("tpm", cfg!(feature = "tpm")),
            ("pcsc", cfg!(feature = "pcsc")),
        ] {
            let failure = backends.get(name).err().unwrap();
            assert_eq!(failure.reason, Reason::BackendUnavailable);
            // Without its cargo feature a store is not built in, whatever
            // the config says.
            let why = if built_in {
                "disabled"
            } else {
                "built without"
            };
            assert!(failure.message.contains(why), "{failure}");
        }
        let unknown = backends.get("hsm").err().unwrap();
        assert_eq!(unknown.reason, Reason::BackendUnknown);
        assert!(unknown.message.contains("soft, tpm, pcsc"), "{unknown}");
    }

    #[test]
    fn a_store_that_cannot_open_is_unavailable_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        // The soft store's directory is a file: it cannot open.
        std::fs::write(dir.path().join("soft-keys"), b"").unwrap();
        let config = config("[backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n");
        let backends = Backends::open(&config, dir.path());
        let failure = backends.get("soft").err().unwrap();
        assert_eq!(failure.reason, Reason::BackendUnavailable);
        assert!(failure.message.contains("not a directory"), "{failure}");
        let status = backends.describe(5);
        assert!(!status[0].available);
        assert!(!status[0].hardware_backed);
    }

    /// "key store 'pcsc' is not available" is said once, not followed by
    /// the store's own "the key store is not available".
    #[test]
    fn an_unavailable_store_is_said_to_be_unavailable_once() {
        let mut backends = Backends {
            entries: Vec::new(),
        };
        let error =
            KeyStoreError::unavailable("cannot talk to pcscd (no service); is pcscd running?");
        backends.add_unavailable(&Registration::not_built("pcsc"), error.detail());
        let failure = backends.get("pcsc").err().unwrap();
        assert_eq!(
            failure.message,
            "key store 'pcsc' is not available: cannot talk to pcscd (no service); is pcscd running?"
        );
        assert_eq!(
            backends.describe(5)[0].unavailable_reason,
            "cannot talk to pcscd (no service); is pcscd running?"
        );
        // Other errors keep their whole text.
        assert_eq!(KeyStoreError::internal("boom").detail(), "boom");
    }

    #[test]
    fn a_store_left_out_of_the_build_is_known_by_name() {
        let mut sections = KeyStoreSections::default();
        sections.sections.push(Section {
            registration: Registration::not_built("hsm"),
            enabled: true,
            settings: None,
        });
        let config = Config {
            backends: sections,
            ..Config::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let backends = Backends::open(&config, dir.path());
        let failure = backends.get("hsm").err().unwrap();
        assert_eq!(failure.reason, Reason::BackendUnavailable);
        assert!(failure.message.contains("cargo feature `hsm`"), "{failure}");
    }
}
