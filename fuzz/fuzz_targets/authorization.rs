//! The Authorization header parser (`Basic <base64(user:password)>`).
//!
//! Invariants: never panics; Ok only for inputs that, trimmed of spaces and
//! tabs, start with "basic " (any case) and fit the length cap; what it returns
//! has no colon in the user name and survives a re-encode round trip.
#![no_main]

use base64::Engine;
use cartguard::policy::basic_auth::{parse_value, MAX_AUTHORIZATION_LEN};
use libfuzzer_sys::fuzz_target;

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ' && c != b'\t').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ' && c != b'\t').map_or(start, |e| e + 1);
    &b[start..end]
}

fuzz_target!(|data: &[u8]| {
    let Ok(creds) = parse_value(data) else {
        return;
    };
    assert!(data.len() <= MAX_AUTHORIZATION_LEN);
    let t = trim(data);
    assert!(t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"basic "), "accepted {:?}", String::from_utf8_lossy(data));
    assert!(!creds.user.contains(':'));
    let again = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.user, creds.password))
    );
    assert_eq!(parse_value(again.as_bytes()), Ok(creds));
});
