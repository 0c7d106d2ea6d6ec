//! Parsers on hand-built structures, attribute checks, names, KDFa.

use super::*;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::EncodePublicKey;

const AK_ATTRIBUTES: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;
const USER_ATTRIBUTES: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::SIGN;

fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn u16b(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn tpm2b_of(out: &mut Vec<u8>, bytes: &[u8]) {
    u16b(out, u16::try_from(bytes.len()).unwrap());
    out.extend_from_slice(bytes);
}

/// A marshalled ECC P-256 TPMT_PUBLIC holding `key`'s point.
fn ecc_public(key: &SigningKey, attributes: u32, scheme: Option<u16>) -> Vec<u8> {
    let point = key.verifying_key().to_sec1_point(false);
    let bytes = point.as_bytes();
    let mut out = Vec::new();
    u16b(&mut out, TPM_ALG_ECC);
    u16b(&mut out, TPM_ALG_SHA256);
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b_of(&mut out, &[]);
    u16b(&mut out, TPM_ALG_NULL); // symmetric
    match scheme {
        Some(hash) => {
            u16b(&mut out, TPM_ALG_ECDSA);
            u16b(&mut out, hash);
        }
        None => u16b(&mut out, TPM_ALG_NULL),
    }
    u16b(&mut out, TPM_ECC_NIST_P256);
    u16b(&mut out, TPM_ALG_NULL); // kdf
    tpm2b_of(&mut out, &bytes[1..33]);
    tpm2b_of(&mut out, &bytes[33..65]);
    out
}

/// A marshalled RSA-2048 EK public area (template L-1 shape).
fn ek_public(modulus: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    u16b(&mut out, TPM_ALG_RSA);
    u16b(&mut out, TPM_ALG_SHA256);
    let attributes = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b_of(&mut out, &[0x83; 32]);
    u16b(&mut out, TPM_ALG_AES);
    u16b(&mut out, 128);
    u16b(&mut out, TPM_ALG_CFB);
    u16b(&mut out, TPM_ALG_NULL);
    u16b(&mut out, 2048);
    out.extend_from_slice(&0u32.to_be_bytes());
    tpm2b_of(&mut out, modulus);
    out
}

fn certify_attest(name: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
    u16b(&mut out, TPM_ST_ATTEST_CERTIFY);
    tpm2b_of(&mut out, &[0x00, 0x0b, 1, 2, 3]);
    tpm2b_of(&mut out, nonce);
    out.extend_from_slice(&7u64.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&2u32.to_be_bytes());
    out.push(1);
    out.extend_from_slice(&9u64.to_be_bytes());
    tpm2b_of(&mut out, name);
    tpm2b_of(&mut out, name);
    out
}

fn tpm_signature(ak: &SigningKey, data: &[u8]) -> Vec<u8> {
    let signature: Signature = ak.sign_prehash(&Sha256::digest(data)).unwrap();
    let (r, s) = signature.split_bytes();
    let mut out = Vec::new();
    u16b(&mut out, TPM_ALG_ECDSA);
    u16b(&mut out, TPM_ALG_SHA256);
    tpm2b_of(&mut out, &r);
    tpm2b_of(&mut out, &s);
    out
}

/// Every proper prefix and every extension by one byte is refused.
fn refuses_truncation_and_trailing<T: std::fmt::Debug>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, TpmError>,
) {
    parse(data).unwrap();
    for len in 0..data.len() {
        let error = parse(&data[..len]).unwrap_err();
        assert!(
            error.0.contains("truncated") || error.0.contains("more than"),
            "prefix {len}: {error}"
        );
    }
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(parse(&longer).unwrap_err().0.contains("unexpected bytes"));
    let huge = vec![0u8; MAX_STRUCTURE + 1];
    assert!(parse(&huge).unwrap_err().0.contains("more than"));
}

#[test]
fn ecc_public_area_parses_and_names() {
    let key = signing_key(3);
    let data = ecc_public(&key, AK_ATTRIBUTES, Some(TPM_ALG_SHA256));
    let public = Public::parse(&data).unwrap();
    assert_eq!(public.attributes, AK_ATTRIBUTES);
    assert_eq!(public.p256_key().unwrap(), *key.verifying_key());
    let name = public.name().unwrap();
    assert_eq!(&name[..2], &[0x00, 0x0b]);
    assert_eq!(&name[2..], Sha256::digest(&data).as_slice());
    check_ak_public(&public).unwrap();
    refuses_truncation_and_trailing(&data, Public::parse);
}

#[test]
fn rsa_public_area_parses() {
    let mut modulus = vec![0xC5; 256];
    modulus[255] = 0x01;
    let data = ek_public(&modulus);
    let public = Public::parse(&data).unwrap();
    check_ek_public(&public).unwrap();
    let (n, e) = rsa_parts(&public).unwrap();
    assert_eq!((n, e.as_slice()), (&modulus[..], &[1, 0, 1][..]));
    refuses_truncation_and_trailing(&data, Public::parse);
    // An EK is not an AK and the other way round.
    assert!(check_ak_public(&public).is_err());
    let ak = Public::parse(&ecc_public(
        &signing_key(3),
        AK_ATTRIBUTES,
        Some(TPM_ALG_SHA256),
    ))
    .unwrap();
    assert!(check_ek_public(&ak).is_err());
}

#[test]
fn oversized_fields_are_refused() {
    let mut data = Vec::new();
    u16b(&mut data, TPM_ALG_ECC);
    u16b(&mut data, TPM_ALG_SHA256);
    data.extend_from_slice(&0u32.to_be_bytes());
    tpm2b_of(&mut data, &[0u8; 65]); // authPolicy longer than any digest
    let error = Public::parse(&data).unwrap_err();
    assert!(error.0.contains("authPolicy is 65 bytes"), "{error}");
    let mut data = vec![0x00, 0x25];
    data.extend_from_slice(&[0; 10]);
    assert!(Public::parse(&data).unwrap_err().0.contains("type 0x0025"));
}

#[test]
fn ak_attribute_checks() {
    let key = signing_key(4);
    let check = |attributes: u32, scheme: Option<u16>| {
        check_ak_public(&Public::parse(&ecc_public(&key, attributes, scheme)).unwrap())
    };
    check(AK_ATTRIBUTES, Some(TPM_ALG_SHA256)).unwrap();
    for (bit, name) in [
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (attr::RESTRICTED, "restricted"),
        (attr::SIGN, "sign"),
    ] {
        let error = check(AK_ATTRIBUTES & !bit, Some(TPM_ALG_SHA256)).unwrap_err();
        assert!(error.0.contains(&format!("lack {name}")), "{error}");
    }
    let error = check(AK_ATTRIBUTES | attr::DECRYPT, Some(TPM_ALG_SHA256)).unwrap_err();
    assert!(error.0.contains("must not have decrypt"), "{error}");
    assert!(check(AK_ATTRIBUTES, None).unwrap_err().0.contains("scheme"));
    assert!(check(AK_ATTRIBUTES, Some(0x000C)).is_err());
}

#[test]
fn a_point_off_the_curve_is_refused() {
    let mut data = ecc_public(&signing_key(5), AK_ATTRIBUTES, Some(TPM_ALG_SHA256));
    let last = data.len() - 1;
    data[last] ^= 1;
    let public = Public::parse(&data).unwrap();
    assert!(
        check_ak_public(&public)
            .unwrap_err()
            .0
            .contains("not on P-256")
    );
}

#[test]
fn certify_attest_and_signature_parse() {
    let attest = certify_attest(&[0x00, 0x0b, 9, 9], &[1; 32]);
    let parsed = parse_certify(&attest).unwrap();
    assert_eq!(parsed.extra_data, vec![1; 32]);
    assert_eq!(parsed.name, vec![0x00, 0x0b, 9, 9]);
    assert_eq!(
        (parsed.clock, parsed.reset_count, parsed.restart_count),
        (7, 1, 2)
    );
    assert_eq!((parsed.safe, parsed.firmware_version), (true, 9));
    refuses_truncation_and_trailing(&attest, parse_certify);
    let mut wrong = attest.clone();
    wrong[0] = 0;
    assert!(
        parse_certify(&wrong)
            .unwrap_err()
            .0
            .contains("TPM_GENERATED_VALUE")
    );
    let mut wrong = attest;
    wrong[5] = 0x18; // TPM_ST_ATTEST_QUOTE
    assert!(parse_certify(&wrong).unwrap_err().0.contains("0x8018"));

    let signature = tpm_signature(&signing_key(6), b"data");
    parse_ecdsa_signature(&signature).unwrap();
    refuses_truncation_and_trailing(&signature, parse_ecdsa_signature);
    let mut rsa = signature.clone();
    rsa[1] = 0x14; // RSASSA
    assert!(
        parse_ecdsa_signature(&rsa)
            .unwrap_err()
            .0
            .contains("0x0014")
    );
}

#[test]
fn short_signature_scalars_are_left_padded() {
    assert_eq!(left_pad_32(&[1, 2], "r").unwrap()[30..], [1, 2]);
    assert_eq!(left_pad_32(&[0; 33], "r").unwrap(), [0; 32]);
    let mut long = vec![1u8];
    long.extend_from_slice(&[0; 32]);
    assert!(left_pad_32(&long, "r").is_err());
}

#[test]
fn certification_checks() {
    let ak_key = signing_key(7);
    let ak = Public::parse(&ecc_public(&ak_key, AK_ATTRIBUTES, Some(TPM_ALG_SHA256))).unwrap();
    let user = signing_key(8);
    let user_spki = user.verifying_key().to_public_key_der().unwrap().to_vec();
    let public_area = ecc_public(&user, USER_ATTRIBUTES, Some(TPM_ALG_SHA256));
    let name = Public::parse(&public_area).unwrap().name().unwrap();
    let nonce = [0x42; 32];
    let attest = certify_attest(&name, &nonce);
    let signature = tpm_signature(&ak_key, &attest);
    let verify =
        |public_area: &[u8], attest: &[u8], signature: &[u8], nonce: &[u8], user: &[u8]| {
            verify_certification(&ak, public_area, attest, signature, nonce, user)
        };
    verify(&public_area, &attest, &signature, &nonce, &user_spki).unwrap();

    let error = verify(&public_area, &attest, &signature, &[0x43; 32], &user_spki).unwrap_err();
    assert!(error.0.contains("extraData"), "{error}");
    let other_ak = tpm_signature(&signing_key(9), &attest);
    let error = verify(&public_area, &attest, &other_ak, &nonce, &user_spki).unwrap_err();
    assert!(error.0.contains("signature does not verify"), "{error}");
    let mut flipped = attest.clone();
    flipped[20] ^= 1;
    assert!(verify(&public_area, &flipped, &signature, &nonce, &user_spki).is_err());
    let other_user = signing_key(10);
    let other_area = ecc_public(&other_user, USER_ATTRIBUTES, Some(TPM_ALG_SHA256));
    let error = verify(&other_area, &attest, &signature, &nonce, &user_spki).unwrap_err();
    assert!(error.0.contains("another key"), "{error}");
    let other_spki = other_user
        .verifying_key()
        .to_public_key_der()
        .unwrap()
        .to_vec();
    let error = verify(&public_area, &attest, &signature, &nonce, &other_spki).unwrap_err();
    assert!(error.0.contains("user_public_key"), "{error}");

    // A key that may leave its TPM is refused, even when certified.
    let exportable = ecc_public(
        &user,
        USER_ATTRIBUTES & !attr::FIXED_TPM,
        Some(TPM_ALG_SHA256),
    );
    let attest = certify_attest(&Public::parse(&exportable).unwrap().name().unwrap(), &nonce);
    let signature = tpm_signature(&ak_key, &attest);
    let error = verify(&exportable, &attest, &signature, &nonce, &user_spki).unwrap_err();
    assert!(error.0.contains("lack fixedTPM"), "{error}");
}

/// Computed independently with OpenSSL:
/// `openssl kdf -keylen 16 -kdfopt digest:SHA256 -kdfopt mac:HMAC
/// -kdfopt hexkey:000102...1f -kdfopt hexsalt:53544f52414745 ("STORAGE")
/// -kdfopt hexinfo:000baa...aa KBKDF` (OpenSSL's KBKDF adds the 0x00
/// separator and [L]32 itself), and with Python's hmac module.
#[test]
fn kdfa_matches_openssl_kbkdf() {
    let key: Vec<u8> = (0u8..32).collect();
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&[0xaa; 32]);
    assert_eq!(
        hex::encode(kdfa_sha256(&key, "STORAGE", &name, &[], 128).unwrap()),
        "0415b32b6f43896a87e7b29be8f2ac14"
    );
    assert_eq!(
        hex::encode(kdfa_sha256(&key, "INTEGRITY", &[], &[], 256).unwrap()),
        "bacf689f634ece301e1f1b15b072d9c87db6a69585db42b1a0cb8f73ebe2692e"
    );
    // More than one HMAC block: the counter runs.
    assert_eq!(
        hex::encode(kdfa_sha256(&key, "STORAGE", &name, &[], 384).unwrap()),
        "278d8e605330e4b8e0cb8ce3e61374225fd82ed70e76fe28412239dffa16aa741a8df5833fa3dd81818741c3d81d2899"
    );
}

#[test]
fn credential_blob_layout() {
    let mut modulus = vec![0xC5; 256];
    modulus[255] = 0x01;
    let ek = Public::parse(&ek_public(&modulus)).unwrap();
    let name = [0x00, 0x0b, 1, 2, 3];
    let seed = [0x11; 32];
    let secret = [0x5a; 32];
    let credential = make_credential_with_seed(&ek, &name, &secret, &seed).unwrap();
    assert_eq!(credential.encrypted_secret.len(), 256);
    let blob = &credential.credential_blob;
    assert_eq!(&blob[..2], &[0, 32]);
    let (integrity, enc_identity) = (&blob[2..34], &blob[34..]);
    assert_eq!(enc_identity.len(), 2 + 32);
    let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256).unwrap();
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&hmac_key).unwrap();
    mac.update(enc_identity);
    mac.update(&name);
    mac.verify_slice(integrity).unwrap();
    let sym_key = kdfa_sha256(&seed, "STORAGE", &name, &[], 128).unwrap();
    let mut plain = enc_identity.to_vec();
    cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0; 16])
        .unwrap()
        .decrypt(&mut plain);
    assert_eq!(&plain[..2], &[0, 32]);
    assert_eq!(&plain[2..], &secret);
    assert!(make_credential_with_seed(&ek, &name, &[], &seed).is_err());
    assert!(make_credential_with_seed(&ek, &name, &[0; 33], &seed).is_err());
}

#[test]
fn constant_time_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}
