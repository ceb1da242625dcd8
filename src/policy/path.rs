//! The request path as the cart will understand it.
//!
//! Rules are matched on the percent-decoded path, and what is forwarded is the
//! canonical re-encoding of exactly that decoded path, so the guard and the cart
//! can never disagree about which path was asked for. Anything ambiguous (dot
//! segments, encoded separators, control bytes, bad escapes) is refused.

pub use crate::percent::percent_decode;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded, double slashes collapsed: what rules see (`/wp-json/wc/v3/orders`).
    pub decoded: Vec<u8>,
    /// `decoded` re-encoded for the upstream request.
    pub forward: String,
}

impl NormalizedPath {
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.decoded).into_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    DotSegment,
    EncodedSeparator,
    Backslash,
    ControlByte,
    ForbiddenByte(u8),
    BadPercentEncoding,
    /// Two spellings PHP folds into one parameter name, with different values.
    AmbiguousParameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotOriginForm => f.write_str("request target is not an origin-form path"),
            PathError::DotSegment => f.write_str("path has a dot segment (. or ..)"),
            PathError::EncodedSeparator => f.write_str("path has an encoded slash or backslash"),
            PathError::Backslash => f.write_str("path has a backslash"),
            PathError::ControlByte => f.write_str("path or query has a control byte"),
            PathError::ForbiddenByte(b) => {
                write!(f, "request target has a forbidden byte 0x{b:02x}")
            }
            PathError::BadPercentEncoding => f.write_str("invalid percent-encoding"),
            PathError::AmbiguousParameter => {
                f.write_str("query names one parameter twice as PHP reads names (e.g. rest_route and rest.route), with different values")
            }
        }
    }
}

/// Normalises an origin-form path (without the query).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    for &b in bytes {
        check_target_byte(b, false)?;
    }
    let trailing_slash = bytes.len() > 1 && bytes.ends_with(b"/");
    let mut decoded = Vec::with_capacity(bytes.len());
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_decode(segment.as_bytes())?;
        if seg.contains(&b'/') || seg.contains(&b'\\') {
            return Err(PathError::EncodedSeparator);
        }
        if seg.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::ControlByte);
        }
        if seg == b"." || seg == b".." {
            return Err(PathError::DotSegment);
        }
        decoded.push(b'/');
        decoded.extend_from_slice(&seg);
    }
    if decoded.is_empty() || trailing_slash {
        decoded.push(b'/');
    }
    let forward = encode_path(&decoded);
    Ok(NormalizedPath { decoded, forward })
}

/// Checks a raw query string: same byte rules as the path, plus `?` and `/`,
/// and percent-escapes must be valid. It is forwarded unchanged.
pub fn check_query(raw: &str) -> Result<(), PathError> {
    for &b in raw.as_bytes() {
        check_target_byte(b, true)?;
    }
    for part in raw.split(['&', ';']) {
        percent_decode(part.as_bytes())?;
    }
    if super::php_query::ambiguous_name(raw).is_some() {
        return Err(PathError::AmbiguousParameter);
    }
    Ok(())
}

fn check_target_byte(b: u8, in_query: bool) -> Result<(), PathError> {
    match b {
        b'\\' => Err(PathError::Backslash),
        0..=0x1f | 0x7f => Err(PathError::ControlByte),
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => Ok(()),
        b'-' | b'.' | b'_' | b'~' | b'%' | b'/' => Ok(()),
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' => Ok(()),
        // Common in real query strings though not in RFC 3986; harmless there.
        b'?' | b'|' | b'[' | b']' | b'{' | b'}' | b'^' | b'`' if in_query => Ok(()),
        other => Err(PathError::ForbiddenByte(other)),
    }
}

/// Re-encodes a decoded path: only unreserved characters, sub-delims, `:`, `@`
/// and `/` stay raw; everything else becomes `%XX`.
fn encode_path(decoded: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(decoded.len());
    for &b in decoded {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(b as char),
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' => {
                out.push(b as char)
            }
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

/// Segment-aware, ASCII case-insensitive prefix match: `/wp-json/wc` matches
/// `/wp-json/wc` and `/wp-json/wc/...`, never `/wp-json/wcx`.
/// `prefix` is stored without a trailing slash, except for `/` itself.
pub fn segment_prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.len() >= prefix.len()
        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// Collapses repeated slashes in a decoded value (for query values that hold routes).
pub fn collapse_slashes(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let n = normalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (n.display(), n.forward)
    }

    #[test]
    fn plain_paths_pass_through() {
        assert_eq!(ok("/wp-json/wc/v3/orders"), ("/wp-json/wc/v3/orders".into(), "/wp-json/wc/v3/orders".into()));
        assert_eq!(ok("/"), ("/".into(), "/".into()));
        assert_eq!(ok("/shop/"), ("/shop/".into(), "/shop/".into()));
    }

    #[test]
    fn double_slashes_collapse_and_are_forwarded_collapsed() {
        assert_eq!(ok("//wp-json///wc//v3"), ("/wp-json/wc/v3".into(), "/wp-json/wc/v3".into()));
    }

    #[test]
    fn encoded_letters_decode_and_forward_canonically() {
        assert_eq!(ok("/wp-json/%77c/v3"), ("/wp-json/wc/v3".into(), "/wp-json/wc/v3".into()));
        assert_eq!(ok("/caf%c3%a9/a%20b"), ("/café/a b".into(), "/caf%C3%A9/a%20b".into()));
        assert_eq!(ok("/100%25"), ("/100%".into(), "/100%25".into()));
    }

    #[test]
    fn tricks_are_refused() {
        let cases: &[(&str, PathError)] = &[
            ("/wp-json/../wc", PathError::DotSegment),
            ("/wp-json/./wc", PathError::DotSegment),
            ("/wp-json/%2e%2e/wc", PathError::DotSegment),
            ("/wp-json/%2E/wc", PathError::DotSegment),
            ("/wp-json/.%2e/wc", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/wp-json%2fwc", PathError::EncodedSeparator),
            ("/wp-json%2Fwc", PathError::EncodedSeparator),
            ("/wp-json%5cwc", PathError::EncodedSeparator),
            ("/wp-json\\wc", PathError::Backslash),
            ("/a%00b", PathError::ControlByte),
            ("/a%0d%0ab", PathError::ControlByte),
            ("/a%7fb", PathError::ControlByte),
            ("/a\u{1}b", PathError::ControlByte),
            ("/a#b", PathError::ForbiddenByte(b'#')),
            ("/a b", PathError::ForbiddenByte(b' ')),
            ("/a\"b", PathError::ForbiddenByte(b'"')),
            ("/a<b", PathError::ForbiddenByte(b'<')),
            ("/a|b", PathError::ForbiddenByte(b'|')),
            ("/%", PathError::BadPercentEncoding),
            ("/%4", PathError::BadPercentEncoding),
            ("/%zz", PathError::BadPercentEncoding),
            ("/%%32%65", PathError::BadPercentEncoding),
            ("*", PathError::NotOriginForm),
            ("wp-json", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(*want), "{raw:?}");
        }
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(ok("/index.php/wp-json/wc/"), ("/index.php/wp-json/wc/".into(), "/index.php/wp-json/wc/".into()));
        assert_eq!(ok("/.well-known/x"), ("/.well-known/x".into(), "/.well-known/x".into()));
        assert_eq!(ok("/a/.../b").0, "/a/.../b");
    }

    /// Regression (proptest, raw = "/%A0"): a non-UTF-8 byte survives decoding and
    /// re-encoding unchanged, and still matches itself by segments.
    #[test]
    fn non_utf8_bytes_round_trip() {
        let n = normalize("/%A0/x").unwrap();
        assert_eq!(n.decoded, b"/\xa0/x".to_vec());
        assert_eq!(n.forward, "/%A0/x");
        assert!(segment_prefix_matches(b"/\xa0", &n.decoded));
    }

    #[test]
    fn query_checks() {
        assert!(check_query("rest_route=/wc/v3/orders&consumer_key=ck_1").is_ok());
        assert!(check_query("route=api/sale|add").is_ok());
        assert!(check_query("a=%zz").is_err());
        assert!(check_query("a=b#c").is_err());
        assert!(check_query("a=\u{7f}").is_err());
        assert!(check_query("a=b c").is_err());
    }

    #[test]
    fn segment_matching() {
        assert!(segment_prefix_matches(b"/wp-json/wc", b"/wp-json/wc"));
        assert!(segment_prefix_matches(b"/wp-json/wc", b"/wp-json/wc/"));
        assert!(segment_prefix_matches(b"/wp-json/wc", b"/wp-json/wc/v3/orders"));
        assert!(segment_prefix_matches(b"/wp-json/wc", b"/WP-JSON/WC/v3"));
        assert!(!segment_prefix_matches(b"/wp-json/wc", b"/wp-json/wcx"));
        assert!(!segment_prefix_matches(b"/wp-json/wc", b"/wp-json/w"));
        assert!(!segment_prefix_matches(b"/wp-json/wc", b"/wp-json"));
        assert!(segment_prefix_matches(b"/", b"/anything"));
    }

    #[test]
    fn collapse() {
        assert_eq!(collapse_slashes(b"//wc///v3"), b"/wc/v3".to_vec());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Pieces that make path tricks likely, mixed with any ASCII character.
        fn piece() -> impl Strategy<Value = String> {
            let benign = prop::sample::select(vec![
                "/", "//", ".", "..", "%2e", "%2E", "%25", "%41", "%7e", "%c3%a9", "%20", "wc", "WC", "wp-json", "a",
                "-", "~", ";", "=", "@", ":",
            ]);
            let tricky = prop::sample::select(vec![
                "%2f", "%2F", "%5c", "%5C", "%", "%4", "%zz", "%00", "%0a", "%7f", "\\", "#", "?", " ",
            ]);
            prop_oneof![
                4 => benign.prop_map(str::to_string),
                1 => tricky.prop_map(str::to_string),
                1 => (0u8..0x80).prop_map(|b| (b as char).to_string()),
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..16).prop_map(|p| format!("/{}", p.concat()))
        }

        const PREFIXES: [&[u8]; 6] = [b"/", b"/wp-json/wc", b"/wp-json", b"/a", b"/wc", b"/%"];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn forward_is_a_fixed_point_with_no_tricks(raw in path()) {
                if let Ok(n) = normalize(&raw) {
                    let again = normalize(&n.forward).expect("the forwarded path must normalise");
                    prop_assert_eq!(&again.decoded, &n.decoded, "{:?} -> {:?}", raw, n.forward);
                    prop_assert_eq!(&again.forward, &n.forward);
                    let lower = n.forward.to_ascii_lowercase();
                    for bad in ["/./", "/../", "%2f", "%5c", "//", "\\", "#", "?"] {
                        prop_assert!(!lower.contains(bad), "{:?} forwarded as {:?}", raw, n.forward);
                    }
                    prop_assert!(n.forward.starts_with('/'));
                    prop_assert!(n.forward.split('/').all(|s| s != "." && s != ".."), "{:?}", n.forward);
                    prop_assert!(!n.decoded.windows(2).any(|w| w == b"//"));
                    prop_assert!(n.forward.bytes().all(|b| b.is_ascii_graphic()));
                    for prefix in PREFIXES {
                        prop_assert_eq!(
                            segment_prefix_matches(prefix, &n.decoded),
                            segment_prefix_matches(prefix, &again.decoded),
                        );
                    }
                    // A generated prefix too: matching the path against itself by segments.
                    // (From the decoded bytes: `display()` is lossy for non-UTF-8 bytes such as %A0.)
                    let own = n.decoded.strip_suffix(b"/").filter(|p| !p.is_empty()).unwrap_or(&n.decoded);
                    prop_assert!(segment_prefix_matches(own, &again.decoded));
                }
            }

            #[test]
            fn encoded_separators_and_raw_tricks_never_pass(raw in path()) {
                let lower = raw.to_ascii_lowercase();
                let tricky = ["%2f", "%5c", "\\", "#", " ", "%00", "%0a", "%7f", "%zz"].iter().any(|t| lower.contains(t))
                    || raw.bytes().any(|b| b.is_ascii_control());
                if tricky {
                    prop_assert!(normalize(&raw).is_err(), "{:?} was accepted", raw);
                }
            }
        }
    }
}
