//! The software key store: P-256 keys in files, each encrypted under its
//! user's PIN.
//!
//! This is fleetkey's embedded default backend, for development and tests.
//! It is **not hardware-backed** and says so in [`KeyStore::describe`]: the
//! private key exists in the daemon's memory while it signs, and anyone who
//! can read the key directory can mount an offline guessing attack on the
//! PIN (slowed, not stopped, by Argon2id).
//!
//! # Layout on disk
//!
//! One directory (mode 0700) holds one file per key, `<key_id>.key`
//! (mode 0600). The `key_ref` handed to the daemon is the key_id's UTF-8
//! bytes. A key_id is 1 to 64 characters from `A-Z a-z 0-9 _ -`, so it can
//! never name a path outside the directory.
//!
//! Files are replaced atomically and durably: the new content is written to
//! `<key_id>.key.tmp`, fsynced, moved into place (a hard link for a new key,
//! so an existing key is never overwritten; a rename for a PIN change), and
//! the directory is fsynced. [`SoftKeyStore::open`] removes `*.key.tmp`
//! files an interrupted write left behind.
//!
//! # Key file format, version 1
//!
//! A key file is exactly 158 bytes; integers are big-endian.
//!
//! | offset | length | field |
//! | ---: | ---: | --- |
//! | 0 | 4 | magic, ASCII `FKSK` |
//! | 4 | 1 | format version, `0x01` |
//! | 5 | 4 | Argon2id memory cost `m`, KiB (u32) |
//! | 9 | 4 | Argon2id iterations `t` (u32) |
//! | 13 | 4 | Argon2id parallelism `p` (u32) |
//! | 17 | 16 | Argon2id salt (random) |
//! | 33 | 12 | AES-GCM nonce (random) |
//! | 45 | 65 | public key, SEC1 uncompressed point (`0x04 ‖ x ‖ y`) |
//! | 110 | 32 | AES-256-GCM ciphertext of the private scalar (32 bytes, big-endian) |
//! | 142 | 16 | AES-256-GCM tag |
//!
//! - AEAD key: Argon2id (version 0x13) of the PIN's UTF-8 bytes with the salt
//!   and the file's `m`, `t`, `p`; 32 bytes of output. No secret or
//!   associated data is given to Argon2.
//! - AAD: bytes 0..110 (everything before the ciphertext) followed by the
//!   key_id's UTF-8 bytes. Tampering with any header field, or renaming one
//!   user's file to another key_id, makes decryption fail.
//! - On reading, a file of any other length, a wrong magic, an unknown
//!   version, Argon2 parameters outside the limits below, or a public key
//!   that is not a point on P-256 is reported as
//!   a damaged-key error ([`KeyStoreError::corrupt`]). A failed decryption is reported as
//!   a wrong PIN ([`KeyStoreError::pin_incorrect`]): with a password-derived key, a wrong PIN
//!   and a tampered salt, parameter, nonce, ciphertext or tag look the same.
//!   A decrypted scalar that is not a valid private key, or whose public key
//!   differs from the stored one, is damaged too.
//! - Argon2 parameter limits (for writing and reading, so a damaged file
//!   cannot make the daemon allocate terabytes or loop for hours):
//!   `8·p ≤ m ≤ 4 GiB` ([`MAX_MEMORY_KIB`]), `1 ≤ t ≤` [`MAX_ITERATIONS`],
//!   `1 ≤ p ≤` [`MAX_PARALLELISM`].
//! - A PIN change writes a new file with a fresh salt and nonce, and the
//!   store's current [`SoftConfig`] parameters.
//!
//! A future format bumps the version byte; readers refuse versions they do
//! not know.
//!
//! PINs, derived keys and private scalars are never logged and are zeroized
//! after use.

mod memory;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use argon2::{Algorithm, Argon2, Params, Version};
use fleetkey_plugin::{
    Attestation, BackendInfo, CreatedKey, KeyStore, KeyStoreError, KeyStoreFactory, OpenContext,
    Operation, Pin, PinRules, SettingError,
};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

/// The backend's name in config, on the wire and in user records.
pub const BACKEND_NAME: &str = "soft";

/// Largest Argon2 memory cost accepted, in KiB (4 GiB).
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Largest Argon2 iteration count accepted.
pub const MAX_ITERATIONS: u32 = 1024;
/// Largest Argon2 parallelism accepted.
pub const MAX_PARALLELISM: u32 = 255;

const MAGIC: &[u8; 4] = b"FKSK";
const FORMAT_VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const PUBLIC_KEY_LEN: usize = 65;
const SCALAR_LEN: usize = 32;
const TAG_LEN: usize = 16;

const OFF_VERSION: usize = MAGIC.len();
const OFF_PARAMS: usize = OFF_VERSION + 1;
const OFF_SALT: usize = OFF_PARAMS + 12;
const OFF_NONCE: usize = OFF_SALT + SALT_LEN;
const OFF_PUBLIC_KEY: usize = OFF_NONCE + NONCE_LEN;
const HEADER_LEN: usize = OFF_PUBLIC_KEY + PUBLIC_KEY_LEN;
const FILE_LEN: usize = HEADER_LEN + SCALAR_LEN + TAG_LEN;

const KEY_SUFFIX: &str = ".key";
const TMP_SUFFIX: &str = ".key.tmp";
const MAX_KEY_ID_LEN: usize = 64;

/// Argon2id cost of deriving a key file's encryption key from a PIN; the
/// `[backends.soft]` section of the daemon's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftConfig {
    /// Memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Number of passes over the memory.
    pub argon2_iterations: u32,
    /// Number of lanes.
    pub argon2_parallelism: u32,
}

impl Default for SoftConfig {
    /// OWASP's recommended Argon2id settings: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

impl SoftConfig {
    /// Checks the settings against what Argon2 and this store accept.
    pub fn validate(&self) -> Result<(), KeyStoreError> {
        self.params()
            .map(|_| ())
            .map_err(|detail| KeyStoreError::internal(format!("soft key store: {detail}")))
    }

    /// The Argon2 parameters, or why they are refused.
    fn params(&self) -> Result<Params, String> {
        self.checked_params().map_err(|e| e.message)
    }

    /// The Argon2 parameters, or which setting is refused and why.
    fn checked_params(&self) -> Result<Params, SettingError> {
        let (m, t, p) = (
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
        );

        if p == 0 {
            return Err(SettingError::new(
                "argon2_parallelism",
                "argon2_parallelism must be at least 1",
            ));
        }
        if p > MAX_PARALLELISM {
            return Err(SettingError::new(
                "argon2_parallelism",
                format!("argon2_parallelism = {p} is more than the limit of {MAX_PARALLELISM}"),
            ));
        }
        if t == 0 {
            return Err(SettingError::new(
                "argon2_iterations",
                "argon2_iterations must be at least 1",
            ));
        }
        if t > MAX_ITERATIONS {
            return Err(SettingError::new(
                "argon2_iterations",
                format!("argon2_iterations = {t} is more than the limit of {MAX_ITERATIONS}"),
            ));
        }
        let min_m = 8 * p;
        if m < min_m {
            return Err(SettingError::new(
                "argon2_memory_kib",
                format!(
                    "argon2_memory_kib = {m} is too small: Argon2 needs at least 8 KiB per lane \
                     (8 x argon2_parallelism = {min_m})"
                ),
            ));
        }
        if m > MAX_MEMORY_KIB {
            return Err(SettingError::new(
                "argon2_memory_kib",
                format!(
                    "argon2_memory_kib = {m} is more than the limit of {MAX_MEMORY_KIB} (4 GiB)"
                ),
            ));
        }
        Params::new(m, t, p, Some(SCALAR_LEN)).map_err(|e| {
            SettingError::new(
                "argon2_memory_kib",
                format!("Argon2 refuses m={m} KiB, t={t}, p={p}: {e}"),
            )
        })
    }
}

/// Opens the software key store for the daemon's registry: keys in
/// `soft-keys/` under the state directory.
pub struct SoftFactory;

impl KeyStoreFactory for SoftFactory {
    const NAME: &'static str = BACKEND_NAME;
    const DESCRIPTION: &'static str = "Software keys on disk, encrypted under the PIN";
    const HARDWARE_BACKED: bool = false;
    type Config = SoftConfig;

    fn check(config: &SoftConfig) -> Result<(), SettingError> {
        config.checked_params().map(|_| ())
    }

    fn open(
        config: &SoftConfig,
        context: &OpenContext,
    ) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
        Ok(Arc::new(SoftKeyStore::open(
            &context.state_dir.join("soft-keys"),
            *config,
        )?))
    }
}

/// Software keys in a directory, one PIN-encrypted file per key.
#[derive(Debug)]
pub struct SoftKeyStore {
    dir: PathBuf,
    config: SoftConfig,
    /// Serializes writers within the process (two PIN changes of one key
    /// would otherwise share a temporary file).
    write_lock: Mutex<()>,
    /// Argon2's working memory, kept between the operations of a burst.
    memory: memory::ArgonMemory,
}

impl SoftKeyStore {
    /// Opens (creating it with mode 0700 if missing) the key directory and
    /// removes temporary files an interrupted write left behind.
    pub fn open(dir: &Path, config: SoftConfig) -> Result<Self, KeyStoreError> {
        config.validate()?;
        let context = || format!("soft key store directory {}", dir.display());
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(KeyStoreError::unavailable(format!(
                    "{} is not a directory",
                    context()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| KeyStoreError::io(format!("creating {}", context()), e))?;
                // The umask may only have removed bits; make it exactly 0700.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| KeyStoreError::io(format!("setting mode of {}", context()), e))?;
            }
            Err(e) => return Err(KeyStoreError::io(format!("reading {}", context()), e)),
        }

        let store = Self {
            dir: dir.to_path_buf(),
            config,
            write_lock: Mutex::new(()),
            memory: memory::ArgonMemory::default(),
        };
        let mut removed_any = false;
        for name in store.file_names()? {
            if name.ends_with(TMP_SUFFIX) {
                let path = store.dir.join(&name);
                match fs::remove_file(&path) {
                    Ok(()) => removed_any = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(KeyStoreError::io(
                            format!("removing leftover {}", path.display()),
                            e,
                        ));
                    }
                }
            }
        }
        if removed_any {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// The directory holding the key files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Argon2 settings used for new files.
    pub fn config(&self) -> SoftConfig {
        self.config
    }

    fn key_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{KEY_SUFFIX}"))
    }

    fn tmp_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{TMP_SUFFIX}"))
    }

    /// Names of the directory's entries that are valid UTF-8.
    fn file_names(&self) -> Result<Vec<String>, KeyStoreError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| KeyStoreError::io(format!("listing {}", self.dir.display()), e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| KeyStoreError::io(format!("listing {}", self.dir.display()), e))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn sync_dir(&self) -> Result<(), KeyStoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| KeyStoreError::io(format!("syncing directory {}", self.dir.display()), e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it broken.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads and parses a key file.
    fn read_key_file(&self, key_id: &str) -> Result<KeyFile, KeyStoreError> {
        let path = self.key_path(key_id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyStoreError::key_not_found(key_id));
            }
            Err(e) => return Err(KeyStoreError::io(format!("opening {}", path.display()), e)),
        };
        let mut bytes = Vec::with_capacity(FILE_LEN + 1);
        // One byte more than a valid file, to tell "too long" from "exact".
        file.take(FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| KeyStoreError::io(format!("reading {}", path.display()), e))?;
        KeyFile::parse(&bytes).map_err(|detail| corrupt(key_id, detail))
    }

    /// Writes a key file atomically and durably. With `replace` false an
    /// existing key file is never overwritten.
    fn write_key_file(
        &self,
        key_id: &str,
        bytes: &[u8],
        replace: bool,
    ) -> Result<(), KeyStoreError> {
        let tmp = self.tmp_path(key_id);
        let result = self.write_key_file_via(&tmp, key_id, bytes, replace);
        if result.is_err() {
            // Best effort: `open` removes it next time otherwise.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_key_file_via(
        &self,
        tmp: &Path,
        key_id: &str,
        bytes: &[u8],
        replace: bool,
    ) -> Result<(), KeyStoreError> {
        let target = self.key_path(key_id);
        match fs::remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(KeyStoreError::io(format!("removing {}", tmp.display()), e)),
        }
        let io_err = |what: &str| {
            let what = format!("{what} {}", tmp.display());
            move |e| KeyStoreError::io(what, e)
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err("creating"))?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting mode of"))?;
        file.write_all(bytes).map_err(io_err("writing"))?;
        file.sync_all().map_err(io_err("syncing"))?;
        drop(file);

        if replace {
            fs::rename(tmp, &target).map_err(|e| {
                KeyStoreError::io(format!("moving new key file to {}", target.display()), e)
            })?;
        } else {
            match fs::hard_link(tmp, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(already_exists(key_id));
                }
                Err(e) => {
                    return Err(KeyStoreError::io(
                        format!("linking new key file to {}", target.display()),
                        e,
                    ));
                }
            }
            fs::remove_file(tmp).map_err(io_err("removing"))?;
        }
        self.sync_dir()
    }

    /// Argon2 buffers kept for the next operations (memory.rs); none
    /// after [`KeyStore::release_memory`].
    pub fn kept_argon2_buffers(&self) -> usize {
        self.memory.kept()
    }

    /// Reads a key and decrypts it with `pin`.
    fn unlock(&self, key_id: &str, pin: &Pin) -> Result<SigningKey, KeyStoreError> {
        let file = self.read_key_file(key_id)?;
        file.decrypt(key_id, pin, &self.memory)
    }
}

impl KeyStore for SoftKeyStore {
    fn release_memory(&self) {
        self.memory.release();
    }

    fn describe(&self) -> BackendInfo {
        BackendInfo {
            name: BACKEND_NAME.into(),
            description:
                "Software keys on disk, encrypted under the PIN (development and tests; not hardware-backed)"
                    .into(),
            hardware_backed: false,
            attestation_formats: vec!["none".into()],
            pin_rules: PinRules::default(),
            operations: vec![
                Operation::Create,
                Operation::Sign,
                Operation::Delete,
                Operation::ChangePin,
                Operation::Attest,
            ],
        }
    }

    fn create_key(&self, key_id: &str, pin: &Pin) -> Result<CreatedKey, KeyStoreError> {
        check_key_id(key_id)?;
        let _guard = self.lock();
        if self.key_path(key_id).exists() {
            return Err(already_exists(key_id));
        }
        let signing_key = SigningKey::try_generate().map_err(|e| {
            KeyStoreError::internal(format!(
                "the operating system's random number generator failed: {e}"
            ))
        })?;
        let verifying_key = *signing_key.verifying_key();
        let public_key_der = verifying_key
            .to_public_key_der()
            .map_err(|e| KeyStoreError::internal(format!("encoding the public key: {e}")))?
            .into_vec();
        let bytes = KeyFile::encrypt(key_id, pin, &signing_key, &self.config, &self.memory)?;
        drop(signing_key);
        self.write_key_file(key_id, &bytes, false)?;
        Ok(CreatedKey {
            key_ref: key_id.as_bytes().to_vec(),
            public_key_der,
        })
    }

    fn sign_digest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let key_id = key_id_of(key_ref)?;
        let signing_key = self.unlock(key_id, pin)?;
        let signature: DerSignature = signing_key
            .sign_prehash(digest)
            .map_err(|e| KeyStoreError::internal(format!("signing with key {key_id}: {e}")))?;
        Ok(signature.as_bytes().to_vec())
    }

    fn delete_key(&self, key_ref: &[u8]) -> Result<(), KeyStoreError> {
        let key_id = key_id_of(key_ref)?;
        let _guard = self.lock();
        let path = self.key_path(key_id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KeyStoreError::io(format!("removing {}", path.display()), e)),
        }
    }

    fn change_pin(
        &self,
        key_ref: &[u8],
        old_pin: &Pin,
        new_pin: &Pin,
    ) -> Result<Vec<u8>, KeyStoreError> {
        let key_id = key_id_of(key_ref)?;
        let _guard = self.lock();
        let signing_key = self.unlock(key_id, old_pin)?;
        let bytes = KeyFile::encrypt(key_id, new_pin, &signing_key, &self.config, &self.memory)?;
        drop(signing_key);
        self.write_key_file(key_id, &bytes, true)?;
        Ok(key_ref.to_vec())
    }

    fn attest(
        &self,
        key_ref: &[u8],
        _pin: &Pin,
        _nonce: &[u8; 32],
    ) -> Result<Attestation, KeyStoreError> {
        let key_id = key_id_of(key_ref)?;
        if !self.key_path(key_id).exists() {
            return Err(KeyStoreError::key_not_found(key_id));
        }
        Ok(Attestation::none())
    }

    fn resident_keys(&self) -> Result<Vec<Vec<u8>>, KeyStoreError> {
        let mut keys: Vec<Vec<u8>> = self
            .file_names()?
            .into_iter()
            .filter_map(|name| {
                let id = name.strip_suffix(KEY_SUFFIX)?;
                valid_key_id(id).then(|| id.as_bytes().to_vec())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// A parsed key file (format version 1).
struct KeyFile {
    /// Bytes 0..HEADER_LEN exactly as stored: the first part of the AAD.
    header: [u8; HEADER_LEN],
    params: Params,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    public_key: VerifyingKey,
    ciphertext: [u8; SCALAR_LEN],
    tag: [u8; TAG_LEN],
}

impl KeyFile {
    /// Builds the file content for `signing_key` under `pin`.
    fn encrypt(
        key_id: &str,
        pin: &Pin,
        signing_key: &SigningKey,
        config: &SoftConfig,
        memory: &memory::ArgonMemory,
    ) -> Result<Vec<u8>, KeyStoreError> {
        let params = config
            .params()
            .map_err(|detail| KeyStoreError::internal(format!("soft key store: {detail}")))?;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut salt)
            .and_then(|()| getrandom::fill(&mut nonce))
            .map_err(|e| {
                KeyStoreError::internal(format!(
                    "the operating system's random number generator failed: {e}"
                ))
            })?;

        let mut bytes = Vec::with_capacity(FILE_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&config.argon2_memory_kib.to_be_bytes());
        bytes.extend_from_slice(&config.argon2_iterations.to_be_bytes());
        bytes.extend_from_slice(&config.argon2_parallelism.to_be_bytes());
        bytes.extend_from_slice(&salt);
        bytes.extend_from_slice(&nonce);
        let point = signing_key.verifying_key().to_sec1_point(false);
        let point = point.as_bytes();
        if point.len() != PUBLIC_KEY_LEN {
            return Err(KeyStoreError::internal(format!(
                "unexpected public key encoding of {} bytes",
                point.len()
            )));
        }
        bytes.extend_from_slice(point);

        let cipher = derive_cipher(pin, &salt, params, memory)
            .map_err(|e| KeyStoreError::internal(format!("deriving the key from the PIN: {e}")))?;
        let aad = aad(&bytes, key_id);
        let mut buffer: Zeroizing<[u8; SCALAR_LEN]> = Zeroizing::new([0u8; SCALAR_LEN]);
        let scalar = Zeroizing::new(signing_key.to_bytes());
        buffer.copy_from_slice(&scalar);
        drop(scalar);
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &aad, (&mut buffer[..]).into())
            .map_err(|_| KeyStoreError::internal("encrypting the key failed"))?;
        bytes.extend_from_slice(&buffer[..]);
        bytes.extend_from_slice(&tag);
        Ok(bytes)
    }

    /// Parses the fixed layout; the error is a detail for `Corrupt`.
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != FILE_LEN {
            return Err(format!(
                "the file has {}{} bytes; a key file has {FILE_LEN}",
                bytes.len(),
                if bytes.len() > FILE_LEN { "+" } else { "" }
            ));
        }
        if &bytes[..OFF_VERSION] != MAGIC {
            return Err("not a fleetkey soft key file (bad magic)".into());
        }
        let version = bytes[OFF_VERSION];
        if version != FORMAT_VERSION {
            return Err(format!(
                "key file format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            ));
        }
        let u32_at = |offset: usize| -> Result<u32, String> {
            bytes
                .get(offset..offset + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| "truncated header".to_string())
        };
        let config = SoftConfig {
            argon2_memory_kib: u32_at(OFF_PARAMS)?,
            argon2_iterations: u32_at(OFF_PARAMS + 4)?,
            argon2_parallelism: u32_at(OFF_PARAMS + 8)?,
        };
        let params = config
            .params()
            .map_err(|detail| format!("stored Argon2 parameters refused: {detail}"))?;
        let public_key = VerifyingKey::from_sec1_bytes(&bytes[OFF_PUBLIC_KEY..HEADER_LEN])
            .map_err(|_| "the stored public key is not a P-256 point".to_string())?;
        let array = |range: std::ops::Range<usize>| {
            bytes.get(range).ok_or_else(|| "truncated file".to_string())
        };
        let mut file = Self {
            header: [0u8; HEADER_LEN],
            params,
            salt: [0u8; SALT_LEN],
            nonce: [0u8; NONCE_LEN],
            public_key,
            ciphertext: [0u8; SCALAR_LEN],
            tag: [0u8; TAG_LEN],
        };
        file.header.copy_from_slice(array(0..HEADER_LEN)?);
        file.salt
            .copy_from_slice(array(OFF_SALT..OFF_SALT + SALT_LEN)?);
        file.nonce
            .copy_from_slice(array(OFF_NONCE..OFF_NONCE + NONCE_LEN)?);
        file.ciphertext
            .copy_from_slice(array(HEADER_LEN..HEADER_LEN + SCALAR_LEN)?);
        file.tag
            .copy_from_slice(array(HEADER_LEN + SCALAR_LEN..FILE_LEN)?);
        Ok(file)
    }

    /// Decrypts the private key with `pin`.
    fn decrypt(
        &self,
        key_id: &str,
        pin: &Pin,
        memory: &memory::ArgonMemory,
    ) -> Result<SigningKey, KeyStoreError> {
        let cipher = derive_cipher(pin, &self.salt, self.params.clone(), memory)
            .map_err(|e| corrupt(key_id, format!("Argon2 refused the stored parameters: {e}")))?;
        let aad = aad(&self.header, key_id);
        let mut buffer: Zeroizing<[u8; SCALAR_LEN]> = Zeroizing::new(self.ciphertext);
        cipher
            .decrypt_inout_detached(
                &self.nonce.into(),
                &aad,
                (&mut buffer[..]).into(),
                &self.tag.into(),
            )
            .map_err(|_| KeyStoreError::pin_incorrect(None))?;
        let signing_key = SigningKey::from_slice(&buffer[..])
            .map_err(|_| corrupt(key_id, "the decrypted private key is not valid"))?;
        if *signing_key.verifying_key() != self.public_key {
            return Err(corrupt(
                key_id,
                "the private key does not match the stored public key",
            ));
        }
        Ok(signing_key)
    }
}

/// AES-256-GCM keyed with Argon2id(PIN, salt).
/// Argon2's memory comes from the store's kept buffers (memory.rs).
fn derive_cipher(
    pin: &Pin,
    salt: &[u8],
    params: Params,
    memory: &memory::ArgonMemory,
) -> Result<Aes256Gcm, argon2::Error> {
    let mut key: Zeroizing<[u8; 32]> = Zeroizing::new([0u8; 32]);
    let blocks = params.block_count();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    memory.with(blocks, |buffer| {
        argon2.hash_password_into_with_memory(pin.as_bytes(), salt, &mut key[..], buffer)
    })?;
    // A 32-byte slice always has the length AES-256 wants.
    Aes256Gcm::new_from_slice(&key[..]).map_err(|_| argon2::Error::OutputTooShort)
}

fn aad(header: &[u8], key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + key_id.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

fn valid_key_id(key_id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_key_id(key_id: &str) -> Result<(), KeyStoreError> {
    if valid_key_id(key_id) {
        Ok(())
    } else {
        Err(KeyStoreError::internal(format!(
            "soft key store: invalid key id {key_id:?}: it must be 1 to {MAX_KEY_ID_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

fn key_id_of(key_ref: &[u8]) -> Result<&str, KeyStoreError> {
    let key_id = std::str::from_utf8(key_ref).map_err(|_| {
        KeyStoreError::internal(format!(
            "soft key store: key reference is not a key id ({} bytes, not UTF-8)",
            key_ref.len()
        ))
    })?;
    check_key_id(key_id)?;
    Ok(key_id)
}

fn corrupt(key_id: &str, detail: impl Into<String>) -> KeyStoreError {
    KeyStoreError::corrupt(key_id, detail.into()).with_hint(
        "The user's key file is damaged and cannot be used; remove the user and enroll them again.",
    )
}

fn already_exists(key_id: &str) -> KeyStoreError {
    KeyStoreError::internal(format!("soft key store: key {key_id} already exists"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkey_plugin::Reason;

    /// A key file that cannot be read (the store's "damaged" error).
    fn is_damaged(error: &KeyStoreError) -> bool {
        error.is(Reason::Internal) && error.message.contains("is damaged")
    }
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;
    use proptest::prelude::*;

    const FAST: SoftConfig = SoftConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        argon2_parallelism: 1,
    };
    const DIGEST: [u8; 32] = [0x5a; 32];

    fn store() -> (tempfile::TempDir, SoftKeyStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SoftKeyStore::open(&tmp.path().join("keys"), FAST).unwrap();
        (tmp, store)
    }

    fn verifies(public_key_der: &[u8], digest: &[u8; 32], signature_der: &[u8]) -> bool {
        let key = VerifyingKey::from_public_key_der(public_key_der).unwrap();
        let signature = DerSignature::from_bytes(signature_der).unwrap();
        key.verify_prehash(digest, &signature).is_ok()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn describe_says_software() {
        let (_tmp, store) = store();
        let info = store.describe();
        assert_eq!(info.name, "soft");
        assert!(!info.hardware_backed);
        assert_eq!(info.attestation_formats, vec!["none".to_string()]);
        assert_eq!(info.pin_rules, PinRules::default());
        assert_eq!(
            info.operations,
            vec![
                Operation::Create,
                Operation::Sign,
                Operation::Delete,
                Operation::ChangePin,
                Operation::Attest
            ]
        );
        assert!(matches!(
            store.pin_status(b"alice"),
            Err(ref e) if e.is(Reason::Unsupported) && e.message.contains("pin_status")
        ));
    }

    #[test]
    fn create_and_sign_verifies_against_spki() {
        let (_tmp, store) = store();
        let pin = Pin::new("123456");
        let created = store.create_key("alice", &pin).unwrap();
        assert_eq!(created.key_ref, b"alice");
        let signature = store.sign_digest(&created.key_ref, &pin, &DIGEST).unwrap();
        assert!(verifies(&created.public_key_der, &DIGEST, &signature));
        assert!(!verifies(&created.public_key_der, &[0u8; 32], &signature));
        assert_eq!(
            store.attest(&created.key_ref, &pin, &DIGEST).unwrap(),
            Attestation::none()
        );
    }

    #[test]
    fn wrong_pin_is_pin_incorrect() {
        let (_tmp, store) = store();
        store.create_key("alice", &Pin::new("123456")).unwrap();
        assert!(matches!(
            store.sign_digest(b"alice", &Pin::new("123457"), &DIGEST),
            Err(ref e) if e.is(Reason::PinWrong) && e.tries_left.is_none()
        ));
    }

    #[test]
    fn create_refuses_existing_key() {
        let (_tmp, store) = store();
        let pin = Pin::new("1111");
        let first = store.create_key("alice", &pin).unwrap();
        let err = store.create_key("alice", &Pin::new("2222")).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let signature = store.sign_digest(b"alice", &pin, &DIGEST).unwrap();
        assert!(verifies(&first.public_key_der, &DIGEST, &signature));
    }

    #[test]
    fn change_pin_replaces_the_pin() {
        let (_tmp, store) = store();
        let (old, new) = (Pin::new("1111"), Pin::new("2222"));
        let created = store.create_key("alice", &old).unwrap();
        assert!(matches!(
            store.change_pin(b"alice", &new, &old),
            Err(ref e) if e.is(Reason::PinWrong)
        ));
        assert_eq!(store.change_pin(b"alice", &old, &new).unwrap(), b"alice");
        assert!(matches!(
            store.sign_digest(b"alice", &old, &DIGEST),
            Err(ref e) if e.is(Reason::PinWrong)
        ));
        let signature = store.sign_digest(b"alice", &new, &DIGEST).unwrap();
        assert!(verifies(&created.public_key_der, &DIGEST, &signature));
        assert!(!store.tmp_path("alice").exists());
    }

    #[test]
    fn delete_then_sign_is_not_found_and_delete_is_idempotent() {
        let (_tmp, store) = store();
        let pin = Pin::new("1111");
        store.create_key("alice", &pin).unwrap();
        store.delete_key(b"alice").unwrap();
        assert!(matches!(
            store.sign_digest(b"alice", &pin, &DIGEST),
            Err(ref e) if e.message == "no key alice in the key store"
        ));
        store.delete_key(b"alice").unwrap();
        assert!(matches!(
            store.change_pin(b"alice", &pin, &pin),
            Err(ref e) if e.message.starts_with("no key")
        ));
        assert!(matches!(
            store.attest(b"alice", &pin, &DIGEST),
            Err(ref e) if e.message.starts_with("no key")
        ));
    }

    #[test]
    fn resident_keys_lists_exactly_the_keys() {
        let (_tmp, store) = store();
        assert!(store.resident_keys().unwrap().is_empty());
        store.create_key("bob", &Pin::new("1")).unwrap();
        store.create_key("alice", &Pin::new("2")).unwrap();
        store.create_key("carol-2_X", &Pin::new("3")).unwrap();
        for name in [
            "notes.txt",
            "x.key.bak",
            ".key",
            "bad name.key",
            "dave.key.tmp",
        ] {
            fs::write(store.dir().join(name), b"junk").unwrap();
        }
        fs::create_dir(store.dir().join("sub")).unwrap();
        store.delete_key(b"bob").unwrap();
        assert_eq!(
            store.resident_keys().unwrap(),
            vec![b"alice".to_vec(), b"carol-2_X".to_vec()]
        );
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let (_tmp, store) = store();
        let pin = Pin::new("123456");
        store.create_key("alice", &pin).unwrap();
        let path = store.key_path("alice");
        let original = fs::read(&path).unwrap();
        assert_eq!(original.len(), FILE_LEN);
        for position in 0..original.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut damaged = original.clone();
                damaged[position] ^= mask;
                fs::write(&path, &damaged).unwrap();
                let result = store.sign_digest(b"alice", &pin, &DIGEST);
                assert!(
                    matches!(
                        result,
                        Err(ref e) if e.is(Reason::PinWrong) || is_damaged(e)
                    ),
                    "byte {position} ^ {mask:#x}: {result:?}"
                );
            }
        }
        fs::write(&path, &original).unwrap();
        store.sign_digest(b"alice", &pin, &DIGEST).unwrap();
    }

    #[test]
    fn header_damage_outside_the_aead_is_corrupt() {
        let (_tmp, store) = store();
        let pin = Pin::new("123456");
        store.create_key("alice", &pin).unwrap();
        let path = store.key_path("alice");
        let original = fs::read(&path).unwrap();
        for position in [0, OFF_VERSION, OFF_PARAMS, OFF_PARAMS + 11] {
            let mut damaged = original.clone();
            damaged[position] ^= 0xff;
            fs::write(&path, &damaged).unwrap();
            assert!(
                matches!(
                    store.sign_digest(b"alice", &pin, &DIGEST),
                    Err(ref e) if is_damaged(e)
                ),
                "byte {position}"
            );
        }
    }

    #[test]
    fn truncated_or_extended_file_is_corrupt() {
        let (_tmp, store) = store();
        let pin = Pin::new("123456");
        store.create_key("alice", &pin).unwrap();
        let path = store.key_path("alice");
        let original = fs::read(&path).unwrap();
        for len in [0, 1, 4, 5, HEADER_LEN, FILE_LEN - 1] {
            fs::write(&path, &original[..len]).unwrap();
            assert!(
                matches!(
                    store.sign_digest(b"alice", &pin, &DIGEST),
                    Err(ref e) if is_damaged(e) && e.message.contains("alice")
                ),
                "length {len}"
            );
        }
        let mut longer = original.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(matches!(
            store.sign_digest(b"alice", &pin, &DIGEST),
            Err(ref e) if is_damaged(e)
        ));
    }

    #[test]
    fn a_file_renamed_to_another_key_id_does_not_open() {
        let (_tmp, store) = store();
        let pin = Pin::new("123456");
        store.create_key("alice", &pin).unwrap();
        fs::rename(store.key_path("alice"), store.key_path("bob")).unwrap();
        assert!(matches!(
            store.sign_digest(b"bob", &pin, &DIGEST),
            Err(ref e) if e.is(Reason::PinWrong)
        ));
    }

    #[test]
    fn bad_key_ids_are_refused() {
        let (tmp, store) = store();
        fs::write(tmp.path().join("outside.key"), b"x").unwrap();
        let long = "a".repeat(65);
        for id in [
            "",
            "../outside",
            "a/b",
            "a.b",
            ".",
            "..",
            "a b",
            "é",
            long.as_str(),
        ] {
            let err = store.create_key(id, &Pin::new("1")).unwrap_err();
            assert!(
                err.is(Reason::Internal) && err.message.contains("invalid key id"),
                "{id:?}: {err}"
            );
            assert!(matches!(
                store.sign_digest(id.as_bytes(), &Pin::new("1"), &DIGEST),
                Err(ref e) if e.is(Reason::Internal)
            ));
            assert!(matches!(
                store.delete_key(id.as_bytes()),
                Err(ref e) if e.is(Reason::Internal)
            ));
        }
        assert!(matches!(
            store.sign_digest(&[0xff, 0xfe], &Pin::new("1"), &DIGEST),
            Err(ref e) if e.is(Reason::Internal)
        ));
        assert!(tmp.path().join("outside.key").exists());
        store.create_key(&"a".repeat(64), &Pin::new("1")).unwrap();
    }

    #[test]
    fn files_are_0600_and_dir_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state").join("keys");
        let store = SoftKeyStore::open(&dir, FAST).unwrap();
        assert_eq!(mode(&dir), 0o700);
        store.create_key("alice", &Pin::new("1")).unwrap();
        assert_eq!(mode(&store.key_path("alice")), 0o600);
        store
            .change_pin(b"alice", &Pin::new("1"), &Pin::new("2"))
            .unwrap();
        assert_eq!(mode(&store.key_path("alice")), 0o600);
    }

    #[test]
    fn open_removes_leftover_tmp_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        {
            let store = SoftKeyStore::open(&dir, FAST).unwrap();
            store.create_key("alice", &Pin::new("1")).unwrap();
        }
        fs::write(dir.join("alice.key.tmp"), b"half").unwrap();
        fs::write(dir.join("bob.key.tmp"), b"half").unwrap();
        fs::write(dir.join("notes.txt"), b"keep").unwrap();
        let store = SoftKeyStore::open(&dir, FAST).unwrap();
        assert!(!dir.join("alice.key.tmp").exists());
        assert!(!dir.join("bob.key.tmp").exists());
        assert!(dir.join("notes.txt").exists());
        assert_eq!(store.resident_keys().unwrap(), vec![b"alice".to_vec()]);
        store
            .sign_digest(b"alice", &Pin::new("1"), &DIGEST)
            .unwrap();
    }

    #[test]
    fn open_refuses_a_file_and_bad_config() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            SoftKeyStore::open(&file, FAST),
            Err(ref e) if e.is(Reason::BackendUnavailable)
        ));
        let bad = SoftConfig {
            argon2_iterations: 0,
            ..FAST
        };
        assert!(SoftKeyStore::open(&tmp.path().join("keys"), bad).is_err());
    }

    #[test]
    fn config_validation_names_the_setting() {
        SoftConfig::default().validate().unwrap();
        FAST.validate().unwrap();
        assert_eq!(
            SoftConfig::default(),
            SoftConfig {
                argon2_memory_kib: 19456,
                argon2_iterations: 2,
                argon2_parallelism: 1
            }
        );
        let cases = [
            (
                SoftConfig {
                    argon2_memory_kib: 4,
                    ..FAST
                },
                "argon2_memory_kib",
            ),
            (
                SoftConfig {
                    argon2_memory_kib: 64,
                    argon2_parallelism: 9,
                    ..FAST
                },
                "argon2_memory_kib",
            ),
            (
                SoftConfig {
                    argon2_memory_kib: MAX_MEMORY_KIB + 1,
                    ..FAST
                },
                "argon2_memory_kib",
            ),
            (
                SoftConfig {
                    argon2_iterations: 0,
                    ..FAST
                },
                "argon2_iterations",
            ),
            (
                SoftConfig {
                    argon2_iterations: MAX_ITERATIONS + 1,
                    ..FAST
                },
                "argon2_iterations",
            ),
            (
                SoftConfig {
                    argon2_parallelism: 0,
                    ..FAST
                },
                "argon2_parallelism",
            ),
            (
                SoftConfig {
                    argon2_parallelism: u32::MAX,
                    ..FAST
                },
                "argon2_parallelism",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{config:?}: {err}");
        }
    }

    #[test]
    fn files_record_their_own_params() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let pin = Pin::new("1");
        let created = SoftKeyStore::open(&dir, FAST)
            .unwrap()
            .create_key("alice", &pin)
            .unwrap();
        let other = SoftConfig {
            argon2_memory_kib: 128,
            argon2_iterations: 2,
            argon2_parallelism: 2,
        };
        let store = SoftKeyStore::open(&dir, other).unwrap();
        let signature = store.sign_digest(b"alice", &pin, &DIGEST).unwrap();
        assert!(verifies(&created.public_key_der, &DIGEST, &signature));
        store.change_pin(b"alice", &pin, &Pin::new("2")).unwrap();
        let bytes = fs::read(store.key_path("alice")).unwrap();
        assert_eq!(&bytes[OFF_PARAMS..OFF_PARAMS + 4], &128u32.to_be_bytes());
        assert_eq!(&bytes[OFF_PARAMS + 8..OFF_PARAMS + 12], &2u32.to_be_bytes());
    }

    #[test]
    fn pin_never_appears_in_the_file_or_debug() {
        let (_tmp, store) = store();
        let pin = Pin::new("secret-pin-4711");
        store.create_key("alice", &pin).unwrap();
        let bytes = fs::read(store.key_path("alice")).unwrap();
        assert!(!bytes.windows(15).any(|w| w == b"secret-pin-4711"));
        assert!(!format!("{store:?}").contains("secret"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_edits_never_panic_or_sign(
            // The Argon2 parameters are left out: a random memory cost up to
            // the 4 GiB limit would make the test allocate gigabytes. The
            // exhaustive flip test above covers them.
            edits in proptest::collection::vec(
                (0..FILE_LEN, any::<u8>())
                    .prop_filter("not the Argon2 parameters", |(p, _)| !(OFF_PARAMS..OFF_SALT).contains(p)),
                1..4,
            ),
            cut in proptest::option::of(0..FILE_LEN + 8),
        ) {
            let (_tmp, store) = store();
            let pin = Pin::new("123456");
            store.create_key("alice", &pin).unwrap();
            let path = store.key_path("alice");
            let original = fs::read(&path).unwrap();
            let mut damaged = original.clone();
            for (position, value) in edits {
                damaged[position] = value;
            }
            if let Some(len) = cut {
                damaged.resize(len, 0);
            }
            prop_assume!(damaged != original);
            fs::write(&path, &damaged).unwrap();
            prop_assert!(store.sign_digest(b"alice", &pin, &DIGEST).is_err());
        }
    }
}
