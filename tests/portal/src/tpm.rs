//! TPM 2.0 attestation, portal side (docs/tpm-attestation.md), in pure
//! Rust: the marshalled structures the device sends (TPMT_PUBLIC,
//! TPMS_ATTEST, TPMT_SIGNATURE), object names, TPM2_MakeCredential in
//! software for an RSA-2048 EK, the checks of the AK's and the EK's public
//! areas, the EK certificate chain, and the check of a `tpm2-certify` user
//! key attestation.
//!
//! Structures are big-endian; a TPM2B is a u16 size and that many bytes.
//! Every parser refuses truncated, oversized and trailing input with a
//! [`TpmError`] naming the structure and field, and never panics: the
//! input comes from devices.

use aes::cipher::KeyIvInit;
use hmac::{KeyInit, Mac};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::der;

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_AES: u16 = 0x0006;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSAES: u16 = 0x0015;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECDAA: u16 = 0x001A;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ALG_CFB: u16 = 0x0043;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub use fleetkey_integrity::quote::{TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY};

/// TPMA_OBJECT bits.
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;

    /// Names of the set bits, for messages.
    pub fn names(value: u32) -> String {
        let all = [
            (FIXED_TPM, "fixedTPM"),
            (ST_CLEAR, "stClear"),
            (FIXED_PARENT, "fixedParent"),
            (SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (USER_WITH_AUTH, "userWithAuth"),
            (ADMIN_WITH_POLICY, "adminWithPolicy"),
            (NO_DA, "noDA"),
            (RESTRICTED, "restricted"),
            (DECRYPT, "decrypt"),
            (SIGN, "sign"),
        ];
        all.iter()
            .filter(|(bit, _)| value & bit != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The largest marshalled structure accepted (an RSA-4096 public area is
/// about 600 bytes).
pub const MAX_STRUCTURE: usize = 1024;
/// The largest digest (TPMU_HA) and so name, policy, nonce sizes.
const MAX_DIGEST: usize = 64;
const MAX_ECC_COORDINATE: usize = 66;
const MAX_RSA_MODULUS: usize = 512;

/// Why a TPM structure or check was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TpmError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, TpmError> {
    Err(TpmError(message.into()))
}

/// Reads one marshalled structure front to back.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Result<Self, TpmError> {
        if data.len() > MAX_STRUCTURE {
            return fail(format!(
                "the {what} is {} bytes, more than the {MAX_STRUCTURE} accepted",
                data.len()
            ));
        }
        Ok(Self { rest: data, what })
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], TpmError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => fail(format!(
                "the {} is truncated: {field} needs {n} bytes, {} are left",
                self.what,
                self.rest.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], TpmError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| TpmError(format!("{field}: internal size error")))
    }

    fn u16(&mut self, field: &str) -> Result<u16, TpmError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, TpmError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A TPM2B of at most `max` bytes.
    fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8], TpmError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return fail(format!(
                "the {}'s {field} is {size} bytes, more than the {max} allowed",
                self.what
            ));
        }
        self.take(size, field)
    }

    fn finish(self) -> Result<(), TpmError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            fail(format!(
                "the {} has {} unexpected bytes after its end",
                self.what,
                self.rest.len()
            ))
        }
    }
}

/// TPMT_SYM_DEF_OBJECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symmetric {
    pub algorithm: u16,
    /// (keyBits, mode) unless the algorithm is TPM_ALG_NULL.
    pub details: Option<(u16, u16)>,
}

/// A scheme (TPMT_ECC_SCHEME, TPMT_RSA_SCHEME, TPMT_KDF_SCHEME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub algorithm: u16,
    /// The scheme's hash, unless the scheme is TPM_ALG_NULL (or has none).
    pub hash: Option<u16>,
}

/// The type-specific parts of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ecc {
        symmetric: Symmetric,
        scheme: Scheme,
        curve: u16,
        kdf: Scheme,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        symmetric: Symmetric,
        scheme: Scheme,
        key_bits: u16,
        /// As marshalled: 0 means 65537.
        exponent: u32,
        modulus: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub key: PublicKey,
    /// The marshalled structure it was parsed from.
    pub marshalled: Vec<u8>,
}

fn symmetric(reader: &mut Reader<'_>) -> Result<Symmetric, TpmError> {
    let algorithm = reader.u16("symmetric.algorithm")?;
    let details = if algorithm == TPM_ALG_NULL {
        None
    } else {
        Some((
            reader.u16("symmetric.keyBits")?,
            reader.u16("symmetric.mode")?,
        ))
    };
    Ok(Symmetric { algorithm, details })
}

fn scheme(reader: &mut Reader<'_>, field: &'static str) -> Result<Scheme, TpmError> {
    let algorithm = reader.u16(field)?;
    let hash = match algorithm {
        TPM_ALG_NULL | TPM_ALG_RSAES => None,
        TPM_ALG_ECDAA => {
            let hash = reader.u16(field)?;
            reader.u16(field)?; // count
            Some(hash)
        }
        _ => Some(reader.u16(field)?),
    };
    Ok(Scheme { algorithm, hash })
}

impl Public {
    /// Parses a marshalled TPMT_PUBLIC (without the TPM2B_PUBLIC size).
    pub fn parse(data: &[u8]) -> Result<Self, TpmError> {
        let mut reader = Reader::new(data, "public area (TPMT_PUBLIC)")?;
        let kind = reader.u16("type")?;
        let name_alg = reader.u16("nameAlg")?;
        let attributes = reader.u32("objectAttributes")?;
        let auth_policy = reader.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
        let key = match kind {
            TPM_ALG_ECC => {
                let symmetric = symmetric(&mut reader)?;
                let scheme = scheme(&mut reader, "scheme")?;
                let curve = reader.u16("curveID")?;
                let kdf = scheme_kdf(&mut reader)?;
                let x = reader.tpm2b("unique.x", MAX_ECC_COORDINATE)?.to_vec();
                let y = reader.tpm2b("unique.y", MAX_ECC_COORDINATE)?.to_vec();
                PublicKey::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            TPM_ALG_RSA => {
                let symmetric = symmetric(&mut reader)?;
                let scheme = scheme(&mut reader, "scheme")?;
                let key_bits = reader.u16("keyBits")?;
                let exponent = reader.u32("exponent")?;
                let modulus = reader.tpm2b("unique.rsa", MAX_RSA_MODULUS)?.to_vec();
                PublicKey::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            other => {
                return fail(format!(
                    "the public area's type 0x{other:04x} is not supported (RSA 0x0001 or ECC 0x0023)"
                ));
            }
        };
        reader.finish()?;
        Ok(Self {
            name_alg,
            attributes,
            auth_policy,
            key,
            marshalled: data.to_vec(),
        })
    }

    /// The object's name: nameAlg then the digest of the public area. Only
    /// SHA-256 names are supported.
    pub fn name(&self) -> Result<Vec<u8>, TpmError> {
        if self.name_alg != TPM_ALG_SHA256 {
            return fail(format!(
                "the public area's nameAlg 0x{:04x} is not SHA-256 (0x000b)",
                self.name_alg
            ));
        }
        let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(&self.marshalled));
        Ok(name)
    }

    /// The P-256 public key of an ECC P-256 public area.
    pub fn p256_key(&self) -> Result<VerifyingKey, TpmError> {
        let PublicKey::Ecc { curve, x, y, .. } = &self.key else {
            return fail("the public area is not an ECC key");
        };
        if *curve != TPM_ECC_NIST_P256 {
            return fail(format!(
                "the public area's curve 0x{curve:04x} is not NIST P-256 (0x0003)"
            ));
        }
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(&left_pad_32(x, "unique.x")?);
        sec1.extend_from_slice(&left_pad_32(y, "unique.y")?);
        VerifyingKey::from_sec1_bytes(&sec1)
            .map_err(|_| TpmError("the public area's point is not on P-256".into()))
    }

    fn require(&self, role: &str, set: u32, clear: u32) -> Result<(), TpmError> {
        let missing = set & !self.attributes;
        if missing != 0 {
            return fail(format!(
                "the {role}'s attributes lack {}",
                attr::names(missing)
            ));
        }
        let forbidden = clear & self.attributes;
        if forbidden != 0 {
            return fail(format!(
                "the {role}'s attributes must not have {}",
                attr::names(forbidden)
            ));
        }
        Ok(())
    }
}

fn scheme_kdf(reader: &mut Reader<'_>) -> Result<Scheme, TpmError> {
    let algorithm = reader.u16("kdf")?;
    let hash = if algorithm == TPM_ALG_NULL {
        None
    } else {
        Some(reader.u16("kdf.hash")?)
    };
    Ok(Scheme { algorithm, hash })
}

/// A big-endian integer left-padded to 32 bytes (leading zeros beyond 32
/// are dropped).
fn left_pad_32(value: &[u8], field: &str) -> Result<[u8; 32], TpmError> {
    let start = value.iter().position(|b| *b != 0).unwrap_or(value.len());
    let digits = value.get(start..).unwrap_or_default();
    let mut out = [0u8; 32];
    let offset = 32usize
        .checked_sub(digits.len())
        .ok_or_else(|| TpmError(format!("{field} is longer than 32 bytes")))?;
    out.get_mut(offset..)
        .ok_or_else(|| TpmError(format!("{field}: internal size error")))?
        .copy_from_slice(digits);
    Ok(out)
}

/// Checks an attestation key's public area (docs/tpm-attestation.md):
/// ECC P-256, ECDSA SHA-256, nameAlg SHA-256, a restricted signing key
/// that never leaves its TPM.
pub fn check_ak_public(ak: &Public) -> Result<(), TpmError> {
    let PublicKey::Ecc { scheme, .. } = &ak.key else {
        return fail("the attestation key is not an ECC key");
    };
    if ak.name_alg != TPM_ALG_SHA256 {
        return fail("the attestation key's nameAlg is not SHA-256");
    }
    if *scheme
        != (Scheme {
            algorithm: TPM_ALG_ECDSA,
            hash: Some(TPM_ALG_SHA256),
        })
    {
        return fail("the attestation key's scheme is not ECDSA with SHA-256");
    }
    ak.p256_key()
        .map_err(|e| TpmError(format!("attestation key: {e}")))?;
    ak.require(
        "attestation key",
        attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::RESTRICTED
            | attr::SIGN,
        attr::DECRYPT,
    )
}

/// Checks an endorsement key's public area: RSA 2048, nameAlg SHA-256, a
/// restricted decryption key with AES-128-CFB (the TCG template L-1).
pub fn check_ek_public(ek: &Public) -> Result<(), TpmError> {
    let PublicKey::Rsa {
        symmetric,
        key_bits,
        modulus,
        ..
    } = &ek.key
    else {
        return fail("the endorsement key is not an RSA key");
    };
    if *key_bits != 2048 || modulus.len() != 256 {
        return fail(format!(
            "the endorsement key is RSA {key_bits} with a {}-byte modulus, not RSA 2048",
            modulus.len()
        ));
    }
    if ek.name_alg != TPM_ALG_SHA256 {
        return fail("the endorsement key's nameAlg is not SHA-256");
    }
    if *symmetric
        != (Symmetric {
            algorithm: TPM_ALG_AES,
            details: Some((128, TPM_ALG_CFB)),
        })
    {
        return fail("the endorsement key's symmetric algorithm is not AES-128-CFB");
    }
    ek.require(
        "endorsement key",
        attr::RESTRICTED | attr::DECRYPT,
        attr::SIGN,
    )
}

/// The RSA modulus and public exponent of an RSA public area (exponent
/// big-endian without leading zeros; 0 in the structure means 65537).
pub fn rsa_parts(public: &Public) -> Result<(&[u8], Vec<u8>), TpmError> {
    let PublicKey::Rsa {
        exponent, modulus, ..
    } = &public.key
    else {
        return fail("not an RSA key");
    };
    let exponent = if *exponent == 0 { 65537 } else { *exponent };
    let bytes = exponent.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let modulus_start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    Ok((
        modulus.get(modulus_start..).unwrap_or_default(),
        bytes.get(start..).unwrap_or_default().to_vec(),
    ))
}

/// What an EK certificate check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkCertificateCheck {
    /// The EK certificate's subject and issuer, for people.
    pub subject: String,
    pub issuer: String,
    /// The self-signed certificate of the trusted bundle the chain ends at.
    pub anchor: String,
}

/// How many certificates may sit between the EK certificate and the
/// self-signed root.
pub const MAX_CHAIN_DEPTH: usize = 5;

/// Checks an EK certificate (DER, possibly followed by NV padding) against
/// the EK's public area and the trusted bundle: its key is the EK's, and
/// it chains through certificates of the bundle to a self-signed
/// certificate of the bundle (at most [`MAX_CHAIN_DEPTH`] links).
pub fn check_ek_certificate(
    certificate: &[u8],
    ek: &Public,
    bundle: &[Vec<u8>],
) -> Result<EkCertificateCheck, TpmError> {
    if certificate.is_empty() {
        return fail("the device sent no EK certificate, and this portal requires one");
    }
    let (leaf, _padding) = der::certificate(certificate)
        .ok_or_else(|| TpmError("the EK certificate is not X.509 DER".into()))?;
    let (modulus, exponent) = der::rsa_public_key(leaf.spki)
        .ok_or_else(|| TpmError("the EK certificate's key is not an RSA key".into()))?;
    let (ek_modulus, ek_exponent) = rsa_parts(ek)?;
    if modulus != ek_modulus || exponent != ek_exponent.as_slice() {
        return fail("the EK certificate certifies another key than the EK presented");
    }
    let parsed: Vec<der::Certificate<'_>> = bundle
        .iter()
        .filter_map(|der| der::certificate(der).map(|(cert, _)| cert))
        .collect();
    let mut current = leaf;
    let mut last_error = None;
    for _ in 0..MAX_CHAIN_DEPTH {
        let mut next = None;
        for candidate in parsed.iter().filter(|c| c.subject == current.issuer) {
            match der::check_signature(&current, candidate.spki) {
                Ok(()) => {
                    next = Some(*candidate);
                    break;
                }
                Err(why) => last_error = Some(why),
            }
        }
        let Some(issuer) = next else {
            return fail(match last_error {
                Some(why) => format!(
                    "the certificate of {} does not verify with its issuer's key in the trusted bundle: {why}",
                    der::name_text(current.subject)
                ),
                None => format!(
                    "the trusted bundle has no certificate of {}, the issuer of {}",
                    der::name_text(current.issuer),
                    der::name_text(current.subject)
                ),
            });
        };
        if issuer.self_issued() && der::check_signature(&issuer, issuer.spki).is_ok() {
            return Ok(EkCertificateCheck {
                subject: der::name_text(leaf.subject),
                issuer: der::name_text(leaf.issuer),
                anchor: der::name_text(issuer.subject),
            });
        }
        current = issuer;
    }
    fail(format!(
        "the EK certificate does not reach a self-signed certificate of the trusted bundle within {MAX_CHAIN_DEPTH} links"
    ))
}

/// A parsed TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY: the integrity
/// crate's, whose one TPMS_ATTEST parser reads quotes too.
pub use fleetkey_integrity::quote::CertifyAttest;

/// [`CertifyAttest::parse`] within this module's size bound; refuses
/// other types than certify.
pub fn parse_certify(data: &[u8]) -> Result<CertifyAttest, TpmError> {
    if data.len() > MAX_STRUCTURE {
        return fail(format!(
            "the attestation (TPMS_ATTEST) is {} bytes, more than {MAX_STRUCTURE}",
            data.len()
        ));
    }
    CertifyAttest::parse(data).map_err(|e| TpmError(e.0))
}

/// Parses a marshalled TPMT_SIGNATURE that must be ECDSA with SHA-256.
pub fn parse_ecdsa_signature(data: &[u8]) -> Result<Signature, TpmError> {
    let mut reader = Reader::new(data, "signature (TPMT_SIGNATURE)")?;
    let algorithm = reader.u16("sigAlg")?;
    if algorithm != TPM_ALG_ECDSA {
        return fail(format!(
            "the signature's algorithm is 0x{algorithm:04x}, not ECDSA (0x0018)"
        ));
    }
    let hash = reader.u16("hash")?;
    if hash != TPM_ALG_SHA256 {
        return fail(format!(
            "the signature's hash is 0x{hash:04x}, not SHA-256 (0x000b)"
        ));
    }
    let r = reader.tpm2b("signatureR", MAX_ECC_COORDINATE)?;
    let s = reader.tpm2b("signatureS", MAX_ECC_COORDINATE)?;
    reader.finish()?;
    let (r, s) = (left_pad_32(r, "signatureR")?, left_pad_32(s, "signatureS")?);
    Signature::from_scalars(r, s)
        .map_err(|_| TpmError("the signature's r or s is out of range".into()))
}

/// What a verified `tpm2-certify` attestation showed.
pub const CERTIFIED_PROPERTIES: &str =
    "fixedTPM, fixedParent, sensitiveDataOrigin, P-256 signing key";

/// Checks a TPM2_Certify of a user key (docs/tpm-attestation.md,
/// "Enrollment"): the AK signed the attestation, it is a certify of the
/// submitted public area with `nonce` as qualifying data, that public
/// area's point is `user_key` (SubjectPublicKeyInfo DER), and the key
/// never leaves its TPM. The error names the check that failed.
pub fn verify_certification(
    ak: &Public,
    public_area: &[u8],
    certify_info: &[u8],
    signature: &[u8],
    nonce: &[u8],
    user_key: &[u8],
) -> Result<(), TpmError> {
    let ak_key = ak
        .p256_key()
        .map_err(|e| TpmError(format!("the device's attestation key is unusable: {e}")))?;
    let signature = parse_ecdsa_signature(signature)?;
    ak_key
        .verify_prehash(&Sha256::digest(certify_info), &signature)
        .or_else(|_| {
            // TPMs do not normalize s; ECDSA accepts either.
            match signature.normalize_s() {
                normalized if normalized != signature => {
                    ak_key.verify_prehash(&Sha256::digest(certify_info), &normalized)
                }
                _ => Err(p256::ecdsa::Error::new()),
            }
        })
        .map_err(|_| {
            TpmError(
                "the attestation's signature does not verify with the device's attestation key"
                    .into(),
            )
        })?;
    let attest = parse_certify(certify_info)?;
    if attest.extra_data != nonce {
        return fail(
            "the attestation's qualifying data (extraData) is not the nonce of this device and code",
        );
    }
    let public = Public::parse(public_area)?;
    if attest.name != public.name()? {
        return fail("the attestation certifies another key than the public area submitted");
    }
    let user_key = VerifyingKey::from_public_key_der(user_key)
        .map_err(|_| TpmError("the user key is not a P-256 key".into()))?;
    let certified_key = public.p256_key()?;
    if certified_key != user_key {
        return fail("the certified public area's point is not the user_public_key of the request");
    }
    if let PublicKey::Ecc { scheme, .. } = &public.key
        && scheme.algorithm != TPM_ALG_NULL
        && *scheme
            != (Scheme {
                algorithm: TPM_ALG_ECDSA,
                hash: Some(TPM_ALG_SHA256),
            })
    {
        return fail("the certified key's scheme is neither ECDSA SHA-256 nor unrestricted");
    }
    public.require(
        "certified key",
        attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::SIGN,
        0,
    )
}

/// KDFa (TPM 2.0 Part 1, 11.4.10.2): SP 800-108 counter-mode KDF with
/// HMAC-SHA-256: `HMAC(key, [i]32 || label || 0x00 || contextU ||
/// contextV || [bits]32)` for i = 1, 2, ..., truncated to `bits` (a
/// multiple of 8).
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, TpmError> {
    let bytes = usize::try_from(bits / 8).map_err(|_| TpmError("KDFa: size overflow".into()))?;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| TpmError("KDFa: unusable key".into()))?;
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    Ok(out)
}

/// TPM2_MakeCredential's output (the `TpmChallenge` of the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents: TPM2B_DIGEST integrity HMAC, then the
    /// encrypted TPM2B_DIGEST credential.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the seed, RSA-OAEP to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// The OS random generator for the `rsa` crate.
struct OsRng;

/// The OS random generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed: {0}")]
struct RngFailure(getrandom::Error);

impl rsa::rand_core::TryRng for OsRng {
    type Error = RngFailure;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(RngFailure)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(RngFailure)?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst).map_err(RngFailure)
    }
}

impl rsa::rand_core::TryCryptoRng for OsRng {}

/// TPM2_MakeCredential in software for an RSA EK (checked with
/// [`check_ek_public`]): wraps `secret` so that only the TPM holding the
/// EK, with the object named `name` loaded, can recover it.
pub fn make_credential(ek: &Public, name: &[u8], secret: &[u8]) -> Result<Credential, TpmError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| TpmError(format!("the random generator failed: {e}")))?;
    make_credential_with_seed(ek, name, secret, &seed)
}

fn make_credential_with_seed(
    ek: &Public,
    name: &[u8],
    secret: &[u8],
    seed: &[u8; 32],
) -> Result<Credential, TpmError> {
    if secret.is_empty() || secret.len() > 32 {
        return fail("the credential must be 1 to 32 bytes");
    }
    let (modulus, exponent) = rsa_parts(ek)?;
    let key = rsa::PublicKey::new(
        der::rsa_uint(modulus).ok_or_else(|| TpmError("the EK's modulus is unusable".into()))?,
        der::rsa_uint(&exponent).ok_or_else(|| TpmError("the EK's exponent is unusable".into()))?,
    )
    .map_err(|e| TpmError(format!("the EK's RSA key is unusable: {e}")))?;
    let encrypted_secret = key
        .encrypt(
            &mut OsRng,
            rsa::Oaep::<Sha256>::new_with_label(b"IDENTITY\0".to_vec()),
            seed,
        )
        .map_err(|e| TpmError(format!("RSA-OAEP to the EK failed: {e}")))?;

    let sym_key = kdfa_sha256(seed, "STORAGE", name, &[], 128)?;
    let mut enc_identity = tpm2b(secret)?;
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .map_err(|_| TpmError("AES-128-CFB: bad key size".into()))?
        .encrypt(&mut enc_identity);
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&hmac_key)
        .map_err(|_| TpmError("HMAC: unusable key".into()))?;
    mac.update(&enc_identity);
    mac.update(name);
    let mut credential_blob = tpm2b(&mac.finalize().into_bytes())?;
    credential_blob.extend_from_slice(&enc_identity);
    Ok(Credential {
        credential_blob,
        encrypted_secret,
    })
}

/// `bytes` as a TPM2B (u16 size, then the bytes).
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>, TpmError> {
    let size = u16::try_from(bytes.len()).map_err(|_| TpmError("TPM2B too large".into()))?;
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    Ok(out)
}

/// Equality of two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
