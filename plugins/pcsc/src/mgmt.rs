//! The PIV management key (key reference 9B): what proves to a card that
//! the caller may generate keys and write objects.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use zeroize::Zeroizing;

/// Algorithms of a management key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Algorithm {
    /// The factory default.
    #[default]
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl Algorithm {
    /// Its config name: `3des`, `aes128`, `aes192`, `aes256`.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "3des" => Some(Algorithm::TripleDes),
            "aes128" => Some(Algorithm::Aes128),
            "aes192" => Some(Algorithm::Aes192),
            "aes256" => Some(Algorithm::Aes256),
            _ => None,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Algorithm::TripleDes | Algorithm::Aes192 => 24,
            Algorithm::Aes128 => 16,
            Algorithm::Aes256 => 32,
        }
    }
}

/// A management key; zeroized on drop, never shown by `Debug`.
#[derive(Clone)]
pub struct ManagementKey {
    algorithm: Algorithm,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagementKey({:?}, <redacted>)", self.algorithm)
    }
}

/// The factory management key of PIV cards and YubiKeys (3DES,
/// 0102030405060708 three times).
pub const FACTORY_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

impl ManagementKey {
    pub fn factory() -> Self {
        ManagementKey {
            algorithm: Algorithm::TripleDes,
            key: Zeroizing::new(FACTORY_KEY.to_vec()),
        }
    }

    /// From hex text (whitespace ignored); the error says what is wrong,
    /// never the key.
    pub fn from_hex(algorithm: Algorithm, text: &str) -> Result<Self, String> {
        let digits: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
        if !digits.len().is_multiple_of(2) || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("the management key must be hex digits".into());
        }
        if digits.len() != algorithm.key_len() * 2 {
            return Err(format!(
                "a {algorithm:?} management key is {} bytes ({} hex digits), not {}",
                algorithm.key_len(),
                algorithm.key_len() * 2,
                digits.len() / 2
            ));
        }
        let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
        hex::decode_to_slice(digits.as_bytes(), &mut key)
            .map_err(|_| "the management key must be hex digits".to_string())?;
        Ok(ManagementKey { algorithm, key })
    }

    pub fn is_factory(&self) -> bool {
        self.algorithm == Algorithm::TripleDes && self.key.as_slice() == FACTORY_KEY
    }

    /// PIV's algorithm identifier.
    pub fn algorithm_id(&self) -> u8 {
        match self.algorithm {
            Algorithm::TripleDes => 0x03,
            Algorithm::Aes128 => 0x08,
            Algorithm::Aes192 => 0x0A,
            Algorithm::Aes256 => 0x0C,
        }
    }

    pub fn block_len(&self) -> usize {
        match self.algorithm {
            Algorithm::TripleDes => 8,
            _ => 16,
        }
    }

    fn run(&self, block: &mut [u8], encrypt: bool) -> Result<(), String> {
        macro_rules! run {
            ($cipher:ty) => {{
                let cipher = <$cipher>::new_from_slice(&self.key)
                    .map_err(|_| "management key of the wrong length".to_string())?;
                let block = block
                    .try_into()
                    .map_err(|_| "a block of the wrong length".to_string())?;
                if encrypt {
                    cipher.encrypt_block(block);
                } else {
                    cipher.decrypt_block(block);
                }
            }};
        }
        match self.algorithm {
            Algorithm::TripleDes => run!(des::TdesEde3),
            Algorithm::Aes128 => run!(aes::Aes128),
            Algorithm::Aes192 => run!(aes::Aes192),
            Algorithm::Aes256 => run!(aes::Aes256),
        }
        Ok(())
    }

    pub fn encrypt_block(&self, block: &mut [u8]) -> Result<(), String> {
        self.run(block, true)
    }

    pub fn decrypt_block(&self, block: &mut [u8]) -> Result<(), String> {
        self.run(block, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let key = ManagementKey::from_hex(
            Algorithm::TripleDes,
            "010203040506070801020304050607080102030405060708",
        )
        .unwrap();
        assert!(key.is_factory());
        let mut block = *b"8 bytes!";
        key.encrypt_block(&mut block).unwrap();
        assert_ne!(&block, b"8 bytes!");
        key.decrypt_block(&mut block).unwrap();
        assert_eq!(&block, b"8 bytes!");
        let aes = ManagementKey::from_hex(Algorithm::Aes128, &"ab".repeat(16)).unwrap();
        assert_eq!((aes.algorithm_id(), aes.block_len()), (0x08, 16));
        let err = ManagementKey::from_hex(Algorithm::Aes256, "abcd").unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(ManagementKey::from_hex(Algorithm::Aes128, "zz").is_err());
        assert!(!format!("{key:?}").contains("01"));
    }
}
