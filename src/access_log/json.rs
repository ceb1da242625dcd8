//! The JSON access record, written by hand straight into the writer's batch
//! buffer: no intermediate `serde_json::Value`, no per-field `String`. The output
//! is the same document serde would produce for `AccessRecord` (same keys, same
//! order, `null` for absent values, `tls` left out when plain) with one addition:
//! DEL and the C1 controls, which serde leaves raw and some terminals act on,
//! are escaped like the C0 controls.

use super::{AccessRecord, StatusSource};

pub fn write_record(r: &AccessRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    super::push_rfc3339(out, r.time);
    out.push(b'"');
    field_str(out, "request_id", &r.request_id);
    field_str(out, "client_ip", &r.client_ip);
    field_str(out, "peer_ip", &r.peer_ip);
    field_str(out, "listener", &r.listener);
    field_str(out, "protocol", r.protocol);
    if let Some(tls) = r.tls {
        field_str(out, "tls", tls);
    }
    field_opt_str(out, "group", r.group.as_deref());
    field_opt_str(out, "rule", r.rule.as_deref());
    field_str(out, "decision", r.decision.as_str());
    key(out, "enforced");
    out.extend_from_slice(if r.enforced { b"true" } else { b"false" });
    field_opt_str(out, "user", r.user.as_deref());
    field_str(out, "method", &r.method);
    field_str(out, "host", &r.host);
    field_str(out, "path", &r.path);
    key(out, "status");
    push_u64(out, u64::from(r.status));
    key(out, "upstream_status");
    match r.upstream_status {
        Some(s) => push_u64(out, u64::from(s)),
        None => out.extend_from_slice(b"null"),
    }
    let source = match r.source {
        StatusSource::Guard => "guard",
        StatusSource::Upstream => "upstream",
    };
    field_str(out, "source", source);
    key(out, "bytes_in");
    push_u64(out, r.bytes_in);
    key(out, "bytes_out");
    push_u64(out, r.bytes_out);
    key(out, "duration_ms");
    push_ms(out, r.duration_ms);
    key(out, "upstream_ms");
    match r.upstream_ms {
        Some(ms) => push_ms(out, ms),
        None => out.extend_from_slice(b"null"),
    }
    field_str(out, "user_agent", &r.user_agent);
    field_str(out, "referer", &r.referer);
    field_opt_str(out, "error", r.error.as_deref());
    out.push(b'}');
}

/// `,"name":` (every field but the first, `time`, which opens the object).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn field_str(out: &mut Vec<u8>, name: &str, value: &str) {
    key(out, name);
    push_str(out, value);
}

fn field_opt_str(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    key(out, name);
    match value {
        Some(v) => push_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A quoted JSON string; control characters (C0, DEL, C1) become `\u00XX` or their short escape.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // U+0080..U+009F are 0xC2 0x80..0x9F in UTF-8.
        let c1 = b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
        if b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f && !c1 {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        let (code, len) = if c1 { (bytes[i + 1], 2) } else { (b, 1) };
        match code {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(code >> 4)]);
                out.push(HEX[usize::from(code & 0xf)]);
            }
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub(super) fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = digits.len();
    loop {
        n -= 1;
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[n..]);
}

/// Milliseconds to the microsecond, shortest form with at least one decimal
/// (`0.031`, `12.0`), as serde writes the rounded f64.
fn push_ms(out: &mut Vec<u8>, ms: f64) {
    if !ms.is_finite() || !(0.0..1e15).contains(&ms) {
        out.extend_from_slice(b"null");
        return;
    }
    let micros = (ms * 1000.0).round() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..keep]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::DecisionLabel;
    use std::time::{Duration, SystemTime};

    fn hand(r: &AccessRecord) -> serde_json::Value {
        let mut out = Vec::new();
        write_record(r, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn base() -> AccessRecord {
        let mut r = AccessRecord::new("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:8080", None);
        r.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_927_384_123);
        r
    }

    #[test]
    fn same_document_as_serde_for_every_field_shape() {
        let mut full = base();
        full.request_id = "abc".into();
        full.tls = Some("TLSv1.3");
        full.group = Some("integration-management".into());
        full.rule = Some("cart-api".into());
        full.decision = DecisionLabel::AuthOk;
        full.enforced = false;
        full.user = Some("ann \"the\" admin\\".into());
        full.method = "GET".into();
        full.path = "/wp-json/wc/v3/orders?a=1&b=\u{e9}".into();
        full.status = 200;
        full.upstream_status = Some(201);
        full.source = StatusSource::Upstream;
        full.bytes_in = 0;
        full.bytes_out = u64::MAX;
        full.upstream_ms = Some(0.0);
        full.user_agent = "tab\there\u{1}\u{8}\u{c}\r\n".into();
        full.error = None;
        for (duration, upstream) in [(1.5, Some(0.031016)), (12.0, None), (0.0004, Some(1234.5678)), (7.25, Some(0.1))]
        {
            for r in [&mut full.clone(), &mut base()] {
                r.duration_ms = duration;
                r.upstream_ms = upstream;
                let serde: serde_json::Value = serde_json::to_value(&*r).unwrap();
                assert_eq!(hand(r), serde);
            }
        }
    }

    #[test]
    fn milliseconds_are_written_shortest_with_one_decimal() {
        for (ms, want) in [(0.0, "0.0"), (1.5, "1.5"), (0.031016, "0.031"), (12.0, "12.0"), (3.1004, "3.1")] {
            let mut out = Vec::new();
            push_ms(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn del_and_c1_controls_are_escaped() {
        let mut r = base();
        r.user_agent = "a\u{7f}b\u{85}c\u{9f}d\u{a0}e".into();
        let mut out = Vec::new();
        write_record(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""user_agent":"a\u007fb\u0085c\u009fd"#), "{text}");
        assert!(text.contains('\u{a0}'), "U+00A0 is no control and stays: {text}");
        assert_eq!(hand(&r)["user_agent"], "a\u{7f}b\u{85}c\u{9f}d\u{a0}e");
    }
}
