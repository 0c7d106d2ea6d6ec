//! The enrollment payload a portal encodes in its QR code:
//! `fleetkey://enroll?v=1&c=<code>&p=<portal URL>[&u=<user hint>][&e=<expiry>]`.
//! Specified in `docs/enrollment-codes.md`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::code::{ActivationCode, CodeError};

/// The payload version this build reads and writes.
pub const PAYLOAD_VERSION: u32 = 1;
const SCHEME: &str = "fleetkey://";
const ACTION: &str = "enroll";

/// Characters escaped in query values: everything but the unreserved set.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a payload URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("not a fleetkey enrollment URI (it must start with fleetkey://enroll?)")]
    NotFleetkeyUri,
    #[error("fleetkey URI asks for '{0}', but this version only knows 'enroll'")]
    UnknownAction(String),
    #[error(
        "enrollment URI version {0} is not supported (this build reads version 1); update fleetkey"
    )]
    UnsupportedVersion(String),
    #[error("enrollment URI version '{0}' is not a number")]
    BadVersion(String),
    #[error("enrollment URI lacks its '{0}' field")]
    Missing(&'static str),
    #[error("enrollment URI has the '{0}' field twice")]
    Duplicate(String),
    #[error("enrollment URI field '{0}' is not valid percent-encoded UTF-8")]
    BadEncoding(String),
    #[error("enrollment URI carries a malformed code: {0}")]
    Code(#[from] CodeError),
    #[error("enrollment URI names portal '{0}', which is not an http:// or https:// URL")]
    BadPortalUrl(String),
    #[error("enrollment URI expiry '{0}' is not a Unix time")]
    BadExpiry(String),
}

/// The content of an enrollment QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentPayload {
    pub code: ActivationCode,
    pub portal_url: String,
    /// Whom the code is for, as the portal wants it shown.
    pub user_hint: Option<String>,
    /// Unix seconds; informative, the portal decides.
    pub expires_at: Option<i64>,
}

impl EnrollmentPayload {
    /// The URI form, with every value percent-encoded.
    pub fn to_uri(&self) -> String {
        let mut uri = format!(
            "{SCHEME}{ACTION}?v={PAYLOAD_VERSION}&c={}&p={}",
            self.code,
            utf8_percent_encode(&self.portal_url, VALUE)
        );
        if let Some(user) = &self.user_hint {
            uri.push_str("&u=");
            uri.extend(utf8_percent_encode(user, VALUE));
        }
        if let Some(expiry) = self.expires_at {
            uri.push_str(&format!("&e={expiry}"));
        }
        uri
    }

    /// Parses a payload URI. Unknown fields are ignored so that newer
    /// portals can add optional ones; an unknown version is refused.
    pub fn parse_uri(uri: &str) -> Result<Self, PayloadError> {
        let uri = uri.trim();
        let rest = strip_prefix_ignore_case(uri, SCHEME).ok_or(PayloadError::NotFleetkeyUri)?;
        let (action, query) = rest.split_once('?').unwrap_or((rest, ""));
        let action = action.trim_end_matches('/');
        if !action.eq_ignore_ascii_case(ACTION) {
            return Err(PayloadError::UnknownAction(action.to_string()));
        }

        let mut fields: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| PayloadError::BadEncoding(key.to_string()))?
                .into_owned();
            if fields.iter().any(|(k, _)| k == key) {
                return Err(PayloadError::Duplicate(key.to_string()));
            }
            fields.push((key.to_string(), value));
        }
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);

        let version = field("v").ok_or(PayloadError::Missing("v"))?;
        match version.parse::<u32>() {
            Ok(PAYLOAD_VERSION) => {}
            Ok(_) => return Err(PayloadError::UnsupportedVersion(version.clone())),
            Err(_) => return Err(PayloadError::BadVersion(version.clone())),
        }
        let code = ActivationCode::parse(field("c").ok_or(PayloadError::Missing("c"))?)?;
        let portal_url = field("p").ok_or(PayloadError::Missing("p"))?.clone();
        validate_portal_url(&portal_url)?;
        let user_hint = field("u").filter(|u| !u.is_empty()).cloned();
        let expires_at = match field("e") {
            Some(e) => Some(
                e.parse::<i64>()
                    .map_err(|_| PayloadError::BadExpiry(e.clone()))?,
            ),
            None => None,
        };
        Ok(Self {
            code,
            portal_url,
            user_hint,
            expires_at,
        })
    }
}

/// Checks that a portal URL is an absolute http(s) URL with a host.
pub fn validate_portal_url(url: &str) -> Result<(), PayloadError> {
    let rest = strip_prefix_ignore_case(url, "https://")
        .or_else(|| strip_prefix_ignore_case(url, "http://"))
        .ok_or_else(|| PayloadError::BadPortalUrl(url.to_string()))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PayloadError::BadPortalUrl(url.to_string()));
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What a person or a scanner handed over: a URI or a bare typed code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentInput {
    Payload(EnrollmentPayload),
    Code(ActivationCode),
}

impl EnrollmentInput {
    /// A URI when the text starts with `fleetkey:`, else a typed code.
    pub fn parse(input: &str) -> Result<Self, PayloadError> {
        let trimmed = input.trim();
        if strip_prefix_ignore_case(trimmed, "fleetkey:").is_some() {
            EnrollmentPayload::parse_uri(trimmed).map(Self::Payload)
        } else if trimmed.contains(':') {
            // Codes never hold a colon: this is some other URI (a foreign QR
            // code, a web link), not a mistyped code.
            Err(PayloadError::NotFleetkeyUri)
        } else {
            Ok(Self::Code(ActivationCode::parse(trimmed)?))
        }
    }

    pub fn code(&self) -> &ActivationCode {
        match self {
            Self::Payload(p) => &p.code,
            Self::Code(c) => c,
        }
    }

    /// The portal named by the payload, if any.
    pub fn portal_url(&self) -> Option<&str> {
        match self {
            Self::Payload(p) => Some(&p.portal_url),
            Self::Code(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EnrollmentPayload {
        EnrollmentPayload {
            code: ActivationCode::from_body(*b"K7QF9XWM2HPDTR4"),
            portal_url: "https://portal.example.com:8443/fleet".into(),
            user_hint: Some("Ana María".into()),
            expires_at: Some(1_800_000_000),
        }
    }

    #[test]
    fn uri_round_trip_and_shape() {
        let payload = sample();
        let uri = payload.to_uri();
        assert!(uri.starts_with("fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4"));
        assert!(uri.contains("&p=https%3A%2F%2Fportal.example.com%3A8443%2Ffleet"));
        assert_eq!(EnrollmentPayload::parse_uri(&uri).unwrap(), payload);
    }

    #[test]
    fn minimal_uri_and_unknown_fields() {
        let code = ActivationCode::from_body(*b"000000000000000");
        let uri = format!("FLEETKEY://enroll/?v=1&c={code}&p=http://127.0.0.1:5000&x=later");
        let parsed = EnrollmentPayload::parse_uri(&uri).unwrap();
        assert_eq!(parsed.code, code);
        assert_eq!(parsed.portal_url, "http://127.0.0.1:5000");
        assert_eq!(parsed.user_hint, None);
    }

    #[test]
    fn malformed_uris_say_why() {
        let code = ActivationCode::from_body(*b"000000000000000");
        let cases = [
            ("https://example.com", PayloadError::NotFleetkeyUri),
            (
                "fleetkey://pair?v=1",
                PayloadError::UnknownAction("pair".into()),
            ),
            (
                &format!("fleetkey://enroll?v=2&c={code}&p=https://x"),
                PayloadError::UnsupportedVersion("2".into()),
            ),
            ("fleetkey://enroll?c=x", PayloadError::Missing("v")),
            (
                "fleetkey://enroll?v=1.0&c=x",
                PayloadError::BadVersion("1.0".into()),
            ),
            (
                "fleetkey://enroll?v=1&p=https://x",
                PayloadError::Missing("c"),
            ),
            (
                &format!("fleetkey://enroll?v=1&c={code}"),
                PayloadError::Missing("p"),
            ),
            (
                &format!("fleetkey://enroll?v=1&v=1&c={code}"),
                PayloadError::Duplicate("v".into()),
            ),
            (
                &format!("fleetkey://enroll?v=1&c={code}&p=ftp://x"),
                PayloadError::BadPortalUrl("ftp://x".into()),
            ),
            (
                &format!("fleetkey://enroll?v=1&c={code}&p=https://x&e=soon"),
                PayloadError::BadExpiry("soon".into()),
            ),
            (
                "fleetkey://enroll?v=1&c=ABC&p=https://x",
                PayloadError::Code(CodeError::WrongLength { found: 3 }),
            ),
            (
                &format!("fleetkey://enroll?v=1&c={code}&p=%FF"),
                PayloadError::BadEncoding("p".into()),
            ),
        ];
        for (uri, expected) in cases {
            assert_eq!(EnrollmentPayload::parse_uri(uri), Err(expected), "{uri}");
        }
    }

    #[test]
    fn input_is_uri_or_code() {
        let payload = sample();
        let from_uri = EnrollmentInput::parse(&payload.to_uri()).unwrap();
        assert_eq!(
            from_uri.portal_url(),
            Some("https://portal.example.com:8443/fleet")
        );
        let typed = EnrollmentInput::parse(&payload.code.to_string().to_lowercase()).unwrap();
        assert_eq!(typed, EnrollmentInput::Code(payload.code.clone()));
        assert_eq!(typed.portal_url(), None);
        assert_eq!(
            EnrollmentInput::parse("https://example.com/login"),
            Err(PayloadError::NotFleetkeyUri)
        );
    }

    proptest! {
        #[test]
        fn round_trip_any_fields(
            body in proptest::array::uniform15(proptest::sample::select(crate::code::ALPHABET.to_vec())),
            host in "[a-z0-9.-]{1,20}",
            path in "(/[ -~]{0,10}){0,3}",
            user in proptest::option::of("\\PC{0,20}"),
            expiry in proptest::option::of(any::<i64>()),
        ) {
            let payload = EnrollmentPayload {
                code: ActivationCode::from_body(body),
                portal_url: format!("https://{host}{path}"),
                user_hint: user.filter(|u| !u.is_empty()),
                expires_at: expiry,
            };
            prop_assert_eq!(EnrollmentPayload::parse_uri(&payload.to_uri()).unwrap(), payload);
        }

        #[test]
        fn garbage_never_panics(input in "\\PC{0,80}") {
            let _ = EnrollmentInput::parse(&input);
            let _ = EnrollmentPayload::parse_uri(&format!("fleetkey://enroll?{input}"));
        }
    }
}
