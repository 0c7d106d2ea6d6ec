//! The `[backends.pcsc]` section of the daemon's config, typed: the
//! algorithm and the slot are parsed once, when the config is loaded, by
//! the same rules `--slot` is; and how the daemon opens the store with it.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use fleetkey_plugin::{KeyStore, KeyStoreError, KeyStoreFactory, OpenContext};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{Algorithm, BACKEND_NAME, ManagementKey, PcscConfig, PcscKeyStore, piv};

/// A PIV key slot fleetkey may use: `9a`, `9c`, `9d`, `9e` or a retired
/// slot `82` to `95`; two hex digits, either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct KeySlot(u8);

impl KeySlot {
    pub fn parse(text: &str) -> Result<KeySlot, String> {
        let slot = (text.len() == 2)
            .then(|| u8::from_str_radix(text, 16).ok())
            .flatten()
            .filter(|slot| piv::cert_object(*slot).is_some());
        slot.map(KeySlot).ok_or_else(|| {
            format!("'{text}' is not a PIV key slot; use 9a, 9c, 9d, 9e or 82 to 95")
        })
    }

    pub fn number(self) -> u8 {
        self.0
    }
}

impl Default for KeySlot {
    /// 9a, PIV authentication.
    fn default() -> Self {
        KeySlot(0x9a)
    }
}

impl TryFrom<String> for KeySlot {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        KeySlot::parse(&text)
    }
}

impl TryFrom<String> for Algorithm {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Algorithm::parse(&name)
            .ok_or_else(|| format!("'{name}' is not one of 3des, aes128, aes192, aes256"))
    }
}

/// `[backends.pcsc]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PcscSettings {
    /// File holding the cards' management key as hex (mode 0600 or
    /// stricter). None: the factory default key.
    pub management_key_file: Option<PathBuf>,
    /// The management key's algorithm.
    pub management_key_algorithm: Algorithm,
    /// Slot for new keys when `user add` names none.
    pub default_slot: KeySlot,
}

impl PcscSettings {
    /// The store's configuration: the management key read from its file,
    /// which must not be readable by others.
    pub fn config(&self) -> Result<PcscConfig, KeyStoreError> {
        let default_slot = self.default_slot.number();
        let Some(path) = &self.management_key_file else {
            return Ok(PcscConfig {
                management_key: ManagementKey::factory(),
                management_key_source: "the factory default management key".into(),
                default_slot,
            });
        };
        let shown = path.display();
        let refuse = |message: String| {
            KeyStoreError::unavailable(message).with_hint(format!(
                "Fix backends.pcsc.management_key_file ({shown}): a file only root can read (chmod 600) holding the cards' management key as hex."
            ))
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| refuse(format!("cannot read the management key file {shown}: {e}")))?;
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "the management key file {shown} may be read by others (mode {:o}); chmod 600 it",
                meta.mode() & 0o777
            )));
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                refuse(format!("cannot read the management key file {shown}: {e}"))
            })?);
        let key = ManagementKey::from_hex(self.management_key_algorithm, &text)
            .map_err(|e| refuse(format!("the management key file {shown}: {e}")))?;
        Ok(PcscConfig {
            management_key: key,
            management_key_source: format!("the management key in {shown}"),
            default_slot,
        })
    }
}

/// Opens the PIV key store for the daemon's registry.
pub struct PcscFactory;

impl KeyStoreFactory for PcscFactory {
    const NAME: &'static str = BACKEND_NAME;
    const DESCRIPTION: &'static str = "PIV smartcards and tokens over PC/SC";
    const HARDWARE_BACKED: bool = true;
    type Config = PcscSettings;

    fn open(settings: &PcscSettings, _: &OpenContext) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
        Ok(Arc::new(PcscKeyStore::open(settings.config()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_slots() {
        for (text, slot) in [("9a", 0x9a), ("9C", 0x9c), ("82", 0x82), ("95", 0x95)] {
            assert_eq!(KeySlot::parse(text).map(KeySlot::number), Ok(slot));
        }
        for text in ["9b", "96", "81", "f9", "", "zz", "082", "0x9a", "9a "] {
            let err = KeySlot::parse(text).unwrap_err();
            assert!(err.contains("not a PIV key slot"), "{text}: {err}");
        }
    }

    #[test]
    fn a_management_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "01".repeat(24)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = PcscSettings {
            management_key_file: Some(path.clone()),
            ..Default::default()
        };
        let err = settings.config().unwrap_err();
        assert!(err.message.contains("chmod 600"), "{err}");
        assert!(err.hint.is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = settings.config().unwrap();
        assert!(!config.management_key.is_factory());
        assert_eq!(config.default_slot, 0x9a);
    }
}
