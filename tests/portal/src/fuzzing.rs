//! Fuzzing entry point of the `portal_tpm_der` target (the `fuzz/` crate)
//! and its stable replay (`tests/fuzz_corpus.rs`): every parser the
//! portal runs on bytes a device sends at activation and user add.

use crate::{attestation, der, tpm};

/// The TPM structure parsers and checks in the order the portal runs them
/// (a public area, then its AK or EK checks, the EK's credential; a
/// certify attestation; an ECDSA signature), and the X.509 DER parsers:
/// a certificate and its self-signature, a PIV attestation chain whose
/// user key and root are its own certificates, PEM bundles.
pub fn tpm_der(data: &[u8]) -> Result<(), String> {
    tpm_structures(data)?;
    x509(data)
}

fn tpm_structures(data: &[u8]) -> Result<(), String> {
    if let Ok(public) = tpm::Public::parse(data) {
        let name = public.name();
        if let Ok(name) = &name
            && name.len() != 34
        {
            return Err(format!("a SHA-256 name of {} bytes", name.len()));
        }
        let _ = public.p256_key();
        let _ = tpm::check_ak_public(&public);
        let _ = tpm::rsa_parts(&public);
        if tpm::check_ek_public(&public).is_ok() {
            // The portal encrypts the activation secret to any EK that
            // passes its checks.
            let ak_name = name.unwrap_or_default();
            let _ = tpm::make_credential(&public, &ak_name, &[7; 32]);
        }
    }
    if let Ok(certify) = tpm::parse_certify(data)
        && certify.extra_data.len() > 64
    {
        return Err(format!(
            "a certify attestation with {} bytes of qualifying data",
            certify.extra_data.len()
        ));
    }
    let _ = tpm::parse_ecdsa_signature(data);
    Ok(())
}

fn x509(data: &[u8]) -> Result<(), String> {
    if let Some((cert, rest)) = der::certificate(data) {
        if cert.der.len() + rest.len() != data.len() {
            return Err("a certificate and what follows it are not the input".into());
        }
        let _ = der::name_text(cert.subject);
        let _ = der::name_text(cert.issuer);
        let _ = der::oid_text(cert.signature_algorithm);
        let _ = der::rsa_public_key(cert.spki);
        let _ = cert.self_issued();
        let _ = der::check_signature(&cert, cert.spki);
        // A PIV attestation: the key's certificate, then the card's.
        let root = der::certificate(rest)
            .map(|(card, _)| card.spki.to_vec())
            .unwrap_or_default();
        let _ = attestation::verify(data, cert.spki, &[root]);
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(certificates) = der::pem_certificates(&text) {
        for certificate in &certificates {
            if der::certificate(certificate).is_none() {
                return Err("a PEM bundle accepted a block that is not a certificate".into());
            }
        }
    }
    let _ = attestation::roots_from_pem(&text);
    Ok(())
}
