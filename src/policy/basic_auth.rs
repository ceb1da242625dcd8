//! Reading HTTP Basic credentials from a request. Parsing only: no secrets are
//! compared here, and nothing parsed is ever logged except the user name.

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;

/// Larger Authorization headers are refused before decoding.
pub const MAX_AUTHORIZATION_LEN: usize = 4096;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsError {
    Missing,
    /// Two Authorization headers: ambiguous, refused with 400.
    Duplicate,
    TooLong,
    NotBasic,
    BadBase64,
    NotUtf8,
    NoColon,
}

impl CredentialsError {
    /// Ambiguous requests are 400; everything else is a fresh 401 challenge.
    pub fn is_bad_request(self) -> bool {
        matches!(self, CredentialsError::Duplicate)
    }

    pub fn reason(self) -> &'static str {
        match self {
            CredentialsError::Missing => "no credentials",
            CredentialsError::Duplicate => "more than one Authorization header",
            CredentialsError::TooLong => "Authorization header too long",
            CredentialsError::NotBasic => "Authorization scheme is not Basic",
            CredentialsError::BadBase64 => "Basic credentials are not valid base64",
            CredentialsError::NotUtf8 => "Basic credentials are not UTF-8",
            CredentialsError::NoColon => "Basic credentials have no colon",
        }
    }
}

pub fn parse(headers: &HeaderMap) -> Result<Credentials, CredentialsError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(CredentialsError::Missing)?;
    if values.next().is_some() {
        return Err(CredentialsError::Duplicate);
    }
    parse_value(value.as_bytes())
}

pub fn parse_value(value: &[u8]) -> Result<Credentials, CredentialsError> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(CredentialsError::TooLong);
    }
    let value = trim(value);
    let split = value.iter().position(|&b| b == b' ').ok_or(CredentialsError::NotBasic)?;
    let (scheme, token) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(CredentialsError::NotBasic);
    }
    let token = trim(token);
    let decoded = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| CredentialsError::BadBase64)?;
    let text = String::from_utf8(decoded).map_err(|_| CredentialsError::NotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(CredentialsError::NoColon)?;
    Ok(Credentials { user: user.to_string(), password: password.to_string() })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ' && c != b'\t').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ' && c != b'\t').map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn valid_basic() {
        let v = format!("Basic {}", b64(b"alice:s3cret:with:colons"));
        let c = parse_value(v.as_bytes()).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password, "s3cret:with:colons");
        let v = format!("bAsIc   {}  ", b64("jörg:pässword".as_bytes()));
        assert_eq!(parse_value(v.as_bytes()).unwrap().user, "jörg");
    }

    #[test]
    fn malformed_forms() {
        let cases: Vec<(Vec<u8>, CredentialsError)> = vec![
            (format!("Bearer {}", b64(b"a:b")).into_bytes(), CredentialsError::NotBasic),
            (b"Basic".to_vec(), CredentialsError::NotBasic),
            (b"Basicxyz".to_vec(), CredentialsError::NotBasic),
            (b"Basic !!!notbase64".to_vec(), CredentialsError::BadBase64),
            (b"Basic YWxpY2U6cGFzcw".to_vec(), CredentialsError::BadBase64),
            (format!("Basic {}", b64(b"nocolon")).into_bytes(), CredentialsError::NoColon),
            (format!("Basic {}", b64(b"a\xff:b")).into_bytes(), CredentialsError::NotUtf8),
            (format!("Basic {}", "A".repeat(5000)).into_bytes(), CredentialsError::TooLong),
            (b"Basic ".to_vec(), CredentialsError::NotBasic),
        ];
        for (value, want) in cases {
            assert_eq!(parse_value(&value), Err(want), "{:?}", String::from_utf8_lossy(&value));
        }
    }

    #[test]
    fn empty_token_after_scheme_is_no_colon() {
        assert_eq!(parse_value(b"Basic  ="), Err(CredentialsError::BadBase64));
    }

    #[test]
    fn duplicate_and_missing_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(parse(&h), Err(CredentialsError::Missing));
        let v = HeaderValue::from_str(&format!("Basic {}", b64(b"a:b"))).unwrap();
        h.append(AUTHORIZATION, v.clone());
        assert!(parse(&h).is_ok());
        h.append(AUTHORIZATION, v);
        assert_eq!(parse(&h), Err(CredentialsError::Duplicate));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials { user: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// Any user without a colon and any password survive encode → parse,
            /// whatever the scheme's case and the surrounding blanks.
            #[test]
            fn encoded_credentials_round_trip(
                user in "[^:]{0,64}",
                password in ".{0,128}",
                scheme in prop::sample::select(vec!["Basic", "basic", "BASIC", "bAsIc"]),
                before in "[ \t]{0,3}",
                between in "[ \t]{0,3}",
                after in "[ \t]{0,3}",
            ) {
                let token = b64(format!("{user}:{password}").as_bytes());
                let value = format!("{before}{scheme} {between}{token}{after}");
                let c = parse_value(value.as_bytes()).unwrap();
                prop_assert_eq!(c.user, user);
                prop_assert_eq!(c.password, password);
            }

            /// Whatever the bytes, Ok means the value (trimmed) starts with "basic ".
            #[test]
            fn only_basic_is_accepted(value in prop::collection::vec(any::<u8>(), 0..64), basic in any::<bool>()) {
                let value = if basic { [b"Basic ".to_vec(), value].concat() } else { value };
                if let Ok(c) = parse_value(&value) {
                    let t = trim(&value);
                    prop_assert!(t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"basic "), "{:?}", value);
                    prop_assert!(!c.user.contains(':'));
                }
            }
        }
    }
}
