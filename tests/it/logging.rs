//! The access log through the real server: one record per request with every
//! field, secrets kept out, both formats parseable and injection-proof, and
//! report mode.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// The complete lines of the access log once it holds at least `n` (bounded
/// wait). A line the writer has only half written is not returned: reading the
/// file while it is being appended can show a partial last line.
pub(crate) async fn complete_lines(g: &TestGuard, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(g.log_path()).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<String> = complete.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "access log has fewer than {n} complete lines:\n{}",
        std::fs::read_to_string(g.log_path()).unwrap_or_default()
    );
}

/// Parsed JSON records, once there are at least `n`.
pub(crate) async fn records(g: &TestGuard, n: usize) -> Vec<Value> {
    complete_lines(g, n)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect()
}

/// The `n`-th record (1-based), waiting for it.
pub(crate) async fn record(g: &TestGuard, n: usize) -> Value {
    records(g, n).await.swap_remove(n - 1)
}

/// Waits (bounded) for `n` records, then checks that no further one arrives.
async fn exactly(g: &TestGuard, n: usize) -> Vec<Value> {
    let lines = records(g, n).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = complete_lines(g, n).await;
    assert_eq!(again.len(), n, "expected exactly {n} access records, got:\n{}", again.join("\n"));
    lines
}

fn combined_guard() -> GuardOptions {
    GuardOptions { log_format: "combined", ..Default::default() }
}

/// One Apache/nginx combined line, parsed the way this regex would:
/// `^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"(.*)$`
#[derive(Debug)]
struct Combined {
    ip: String,
    user: String,
    time: String,
    request: String,
    status: u16,
    bytes: String,
    referer: String,
    user_agent: String,
    rest: String,
}

fn parse_combined(line: &str) -> Option<Combined> {
    fn token(s: &str) -> Option<(&str, &str)> {
        let (t, rest) = s.split_once(' ')?;
        (!t.is_empty()).then_some((t, rest))
    }
    fn quoted(s: &str) -> Option<(&str, &str)> {
        let s = s.strip_prefix('"')?;
        let end = s.find('"')?;
        Some((&s[..end], &s[end + 1..]))
    }
    let (ip, rest) = token(line)?;
    let (_ident, rest) = token(rest)?;
    let (user, rest) = token(rest)?;
    let rest = rest.strip_prefix('[')?;
    let end = rest.find(']')?;
    let (time, rest) = (&rest[..end], rest[end + 1..].strip_prefix(' ')?);
    let (request, rest) = quoted(rest)?;
    let (status, rest) = token(rest.strip_prefix(' ')?)?;
    let (bytes, rest) = token(rest)?;
    let (referer, rest) = quoted(rest)?;
    let (user_agent, rest) = quoted(rest.strip_prefix(' ')?)?;
    let ok = status.len() == 3
        && status.bytes().all(|b| b.is_ascii_digit())
        && (bytes == "-" || bytes.bytes().all(|b| b.is_ascii_digit()))
        && !time.is_empty()
        && ![ip, user].iter().any(|t| t.chars().any(char::is_whitespace));
    ok.then(|| Combined {
        ip: ip.into(),
        user: user.into(),
        time: time.into(),
        request: request.into(),
        status: status.parse().unwrap(),
        bytes: bytes.into(),
        referer: referer.into(),
        user_agent: user_agent.into(),
        rest: rest.into(),
    })
}

/// Every line is one record: no raw control byte (other than the final LF), no
/// DEL, no C1 control; returns the lines.
fn assert_clean_lines(text: &str) -> Vec<&str> {
    assert!(text.ends_with('\n'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines {
        for c in line.chars() {
            assert!(
                !(c.is_control() || ('\u{80}'..='\u{9f}').contains(&c)),
                "raw control character {c:?} in a log line: {line:?}"
            );
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// JSON records
// ---------------------------------------------------------------------------

const FIELDS: [&str; 21] = [
    "time",
    "request_id",
    "client_ip",
    "peer_ip",
    "group",
    "rule",
    "decision",
    "enforced",
    "user",
    "method",
    "host",
    "path",
    "status",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_ms",
    "user_agent",
    "error",
    "source",
];

fn is_rfc3339_millis(s: &str) -> bool {
    // 2026-11-29T04:43:04.123Z
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn json_record_has_every_field() {
    let g = TestGuard::start().await;
    let r = client_from("127.0.0.3")
        .request(g.addr(), "POST", "/shop/cart?page=2")
        .basic("alice", ALICE)
        .header("User-Agent", "test-agent/1.0")
        .body(b"0123456789")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let raw = complete_lines(&g, 1).await;
    let rec: Value = serde_json::from_str(&raw[0]).unwrap();
    let obj = rec.as_object().unwrap();
    for f in FIELDS {
        assert!(obj.contains_key(f), "field {f} missing: {rec}");
    }
    assert!(is_rfc3339_millis(rec["time"].as_str().unwrap()), "{}", rec["time"]);
    let rid = rec["request_id"].as_str().unwrap();
    assert!(rid.len() >= 8 && rid.bytes().all(|b| b.is_ascii_hexdigit()), "{rid}");
    assert_eq!(g.upstream.last().header("x-request-id"), Some(rid), "the cart sees the same request id");
    assert_eq!(rec["client_ip"], "127.0.0.3");
    assert_eq!(rec["peer_ip"], "127.0.0.3");
    assert_eq!(rec["group"], Value::Null);
    assert_eq!(rec["rule"], "site");
    assert_eq!(rec["decision"], "auth_ok");
    assert_eq!(rec["enforced"], true);
    assert_eq!(rec["user"], "alice");
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["host"], "shop.test");
    assert_eq!(rec["path"], "/shop/cart?page=2");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["upstream_status"], 200);
    assert_eq!(rec["bytes_in"], 10);
    assert_eq!(rec["bytes_out"], r.body.len());
    assert!(rec["duration_ms"].as_f64().unwrap() >= 0.0);
    let up = rec["upstream_ms"].as_f64().unwrap();
    assert!(up >= 0.0 && up <= rec["duration_ms"].as_f64().unwrap(), "{rec}");
    assert_eq!(rec["user_agent"], "test-agent/1.0");
    assert_eq!(rec["error"], Value::Null);
    assert_eq!(rec["source"], "upstream");

    // A group member through the trusted proxy: the group is named, the client is the forwarded address.
    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-json/wc/v3/orders")
        .header("X-Forwarded-For", "50.18.194.14")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let rec = record(&g, 2).await;
    assert_eq!(rec["group"], "integration-management");
    assert_eq!(rec["rule"], "cart-api");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["client_ip"], "50.18.194.14");
    assert_eq!(rec["peer_ip"], "127.0.0.100");
    assert_eq!(rec["user"], Value::Null);
}

#[tokio::test]
async fn exactly_one_record_per_request_for_every_decision() {
    let g = TestGuard::start().await;
    let office = client_from("127.0.0.2");
    let other = client_from("127.0.0.3");
    let steps: Vec<(&str, u16, RequestBuilder)> = vec![
        ("allow", 200, office.get(g.addr(), "/shop")),
        ("open", 200, other.get(g.addr(), "/feed/rss")),
        ("auth_ok", 200, other.get(g.addr(), "/shop").basic("alice", ALICE)),
        ("challenge", 401, other.get(g.addr(), "/shop")),
        ("auth_fail", 401, other.get(g.addr(), "/shop").basic("alice", "nope")),
        ("deny", 403, other.get(g.addr(), "/wp-admin/")),
        ("bad_request", 400, office.get(g.addr(), "/shop/%2e%2e/wp-admin/")),
        ("allow", 401, office.get(g.addr(), "/status/401")),
    ];
    for (n, (decision, status, req)) in steps.into_iter().enumerate() {
        let r = req.send().await;
        assert_eq!(r.status, status, "{decision}");
        let lines = exactly(&g, n + 1).await;
        assert_eq!(lines[n]["decision"], decision, "{}", lines[n]);
        assert_eq!(lines[n]["status"], status);
    }
    // A request hyper refuses before the guard's handler: one connection-level record.
    let r = raw(ip("127.0.0.3"), g.addr(), b"GET /shop HTTP/1.1\r\nHost: shop.test\r\nBad Name: x\r\n\r\n").await;
    assert_eq!(r.status, 400);
    let lines = exactly(&g, 9).await;
    assert_eq!(lines[8]["decision"], "bad_request");
    assert_eq!(lines[8]["method"], "-");
    assert_eq!(g.upstream.count(), 4);

    // upstream_error: the cart refuses connections.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let g = TestGuard::start_with(GuardOptions { upstream_url: Some(url), ..Default::default() }).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/shop").send().await;
    assert_eq!(r.status, 502);
    let lines = exactly(&g, 1).await;
    assert_eq!(lines[0]["decision"], "upstream_error");
    assert_eq!(lines[0]["source"], "guard");
    assert_eq!(lines[0]["upstream_status"], Value::Null);
    assert!(lines[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", lines[0]);
}

#[tokio::test]
async fn keep_alive_requests_get_one_record_each() {
    let g = TestGuard::start().await;
    let mut s = connect_from(ip("127.0.0.2"), g.addr()).await;
    s.write_all(b"GET /shop/1 HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /shop/2 HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /shop/3 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let lines = exactly(&g, 3).await;
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/shop/1", "/shop/2", "/shop/3"]);
}

/// A keep-alive connection waiting for its next request is not a slow request
/// and must not be logged as a 408 (hyper's header timer used to fire then).
#[tokio::test]
async fn idle_keep_alive_connection_writes_no_extra_record() {
    let g = TestGuard::start_with(GuardOptions {
        limits: "  header_timeout: 300ms\n  idle_timeout: 5s\n".into(),
        ..Default::default()
    })
    .await;
    let mut s = connect_from(ip("127.0.0.2"), g.addr()).await;
    s.write_all(b"GET /shop HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for longer than header_timeout, less than idle_timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lines = exactly(&g, 1).await;
    assert_eq!(lines[0]["status"], 200);
    drop(s);

    // A client that really is slow with its headers is still logged once, as 408.
    let mut s = connect_from(ip("127.0.0.3"), g.addr()).await;
    s.write_all(b"GET /shop HTTP/1.1\r\nHost: sh").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let lines = exactly(&g, 2).await;
    assert_eq!(lines[1]["status"], 408, "{}", lines[1]);
    assert_eq!(lines[1]["client_ip"], "127.0.0.3");
}

#[tokio::test]
async fn bytes_out_equals_the_body_length() {
    let g = TestGuard::start().await;
    let cases: Vec<(RequestBuilder, u16)> = vec![
        (client_from("127.0.0.2").get(g.addr(), "/big/100000"), 200),
        (client_from("127.0.0.2").get(g.addr(), "/big/0"), 200),
        (client_from("127.0.0.3").get(g.addr(), "/shop"), 401),
        (client_from("127.0.0.3").get(g.addr(), "/wp-admin/"), 403),
        (client_from("127.0.0.2").get(g.addr(), "/a/%2fb"), 400),
    ];
    for (n, (req, status)) in cases.into_iter().enumerate() {
        let r = req.send().await;
        assert_eq!(r.status, status);
        let rec = record(&g, n + 1).await;
        assert_eq!(rec["bytes_out"], r.body.len(), "{rec}");
    }
    assert_eq!(record(&g, 1).await["bytes_out"], 100000);
    let r = client_from("127.0.0.2").request(g.addr(), "PUT", "/shop").body(&[b'z'; 4321]).send().await;
    assert_eq!(r.status, 200);
    let rec = record(&g, 6).await;
    assert_eq!(rec["bytes_in"], 4321);
    assert_eq!(g.upstream.last().body.len(), 4321);
}

#[tokio::test]
async fn a_401_from_the_cart_is_told_apart_from_the_guards_challenge() {
    let g = TestGuard::start().await;
    let cart = client_from("127.0.0.2").get(g.addr(), "/status/401").send().await;
    assert_eq!(cart.status, 401);
    assert_eq!(cart.header("www-authenticate"), None, "the cart sent no challenge; the guard adds none");
    let rec = record(&g, 1).await;
    assert_eq!(rec["source"], "upstream");
    assert_eq!(rec["upstream_status"], 401);
    assert_eq!(rec["status"], 401);
    assert_eq!(rec["decision"], "allow");

    let guard = client_from("127.0.0.3").get(g.addr(), "/status/401").send().await;
    assert_eq!(guard.status, 401);
    let rec = record(&g, 2).await;
    assert_eq!(rec["source"], "guard");
    assert_eq!(rec["upstream_status"], Value::Null);
    assert_eq!(rec["upstream_ms"], Value::Null);
    assert_eq!(rec["decision"], "challenge");
    assert_eq!(g.upstream.count(), 1);

    // The cart's 5xx is the cart's, not an upstream_error.
    let r = client_from("127.0.0.2").get(g.addr(), "/status/503").send().await;
    assert_eq!(r.status, 503);
    let rec = record(&g, 3).await;
    assert_eq!((rec["source"].as_str(), rec["decision"].as_str()), (Some("upstream"), Some("allow")));
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn passwords_and_authorization_values_never_reach_the_log() {
    for format in ["json", "combined"] {
        let g = TestGuard::start_with(GuardOptions { log_format: format, ..Default::default() }).await;
        let wrong = "Wr0ng-Secret-Guess";
        let im_secret = "cs_live_0123456789abcdef";
        let ok = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", ALICE).send().await;
        assert_eq!(ok.status, 200);
        let fail = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", wrong).send().await;
        assert_eq!(fail.status, 401);
        let unknown = client_from("127.0.0.3").get(g.addr(), "/shop").basic("mallory", wrong).send().await;
        assert_eq!(unknown.status, 401);
        let bearer = client_from("127.0.0.3")
            .get(g.addr(), "/shop")
            .header("Authorization", &format!("Bearer {wrong}"))
            .send()
            .await;
        assert_eq!(bearer.status, 401);
        let im = client_from("127.0.0.100")
            .get(g.addr(), "/wp-json/wc/v3/orders")
            .header("X-Forwarded-For", "50.18.194.14")
            .basic("ck_live_key", im_secret)
            .send()
            .await;
        assert_eq!(im.status, 200);
        let lines = complete_lines(&g, 5).await;
        let text = std::fs::read_to_string(g.log_path()).unwrap();
        assert_eq!(lines.len(), 5);
        let forbidden = [
            ALICE.to_string(),
            wrong.to_string(),
            im_secret.to_string(),
            b64(format!("alice:{ALICE}").as_bytes()),
            b64(format!("alice:{wrong}").as_bytes()),
            b64(format!("mallory:{wrong}").as_bytes()),
            b64(format!("ck_live_key:{im_secret}").as_bytes()),
        ];
        for secret in &forbidden {
            assert!(!text.contains(secret.as_str()), "{format}: {secret:?} is in the log:\n{text}");
        }
        assert!(!text.to_ascii_lowercase().contains("basic "), "{format}: {text}");
        // The user name is logged, for auth_ok and auth_fail alike.
        assert!(text.contains("alice") && text.contains("mallory"), "{format}: {text}");
    }
}

#[tokio::test]
async fn query_secrets_are_redacted_and_other_parameters_kept() {
    let g = TestGuard::start().await;
    let secrets = [
        ("consumer_key", "ck_SECRET_1"),
        ("consumer_secret", "cs_SECRET_2"),
        ("oauth_signature", "SIG_SECRET_3"),
        ("token", "TOK_SECRET_4"),
        ("password", "PW_SECRET_5"),
        ("api_key", "AK_SECRET_6"),
        ("sig", "S_SECRET_7"),
        ("Consumer_Secret", "cs_SECRET_8"),
    ];
    let mut query = String::from("rest_route=/wc/v3/orders&page=2");
    for (k, v) in &secrets {
        query.push_str(&format!("&{k}={v}"));
    }
    query.push_str("&orderby=date&status=processing");
    let target = format!("/?{query}");
    // rest_route=/wc/ puts it on the cart API: Integration Management through the trusted proxy.
    let im = || client_from("127.0.0.100");
    let r = im().get(g.addr(), &target).header("X-Forwarded-For", "50.18.194.14").send().await;
    assert_eq!(r.status, 200);
    // Redaction is for the log only: the cart gets the query untouched.
    assert_eq!(g.upstream.last().target, target);
    let rec = record(&g, 1).await;
    let path = rec["path"].as_str().unwrap();
    for (k, v) in &secrets {
        assert!(path.contains(&format!("{k}=REDACTED")), "{k}: {path}");
        assert!(!path.contains(v), "{v}: {path}");
    }
    for kept in ["rest_route=/wc/v3/orders", "page=2", "orderby=date", "status=processing"] {
        assert!(path.contains(kept), "{kept}: {path}");
    }
    let text = std::fs::read_to_string(g.log_path()).unwrap();
    for (_, v) in &secrets {
        assert!(!text.contains(v), "{v} in the raw log");
    }

    // Same in the combined format.
    let g = TestGuard::start_with(combined_guard()).await;
    let r = im().get(g.addr(), &target).header("X-Forwarded-For", "54.241.171.180").send().await;
    assert_eq!(r.status, 200);
    let line = complete_lines(&g, 1).await.remove(0);
    for (k, v) in &secrets {
        assert!(!line.contains(v) && line.contains(&format!("{k}=REDACTED")), "{k}: {line}");
    }
    assert!(line.contains("page=2"), "{line}");
}

// ---------------------------------------------------------------------------
// Combined format
// ---------------------------------------------------------------------------

#[tokio::test]
async fn combined_format_is_parseable_apache_combined() {
    let g = TestGuard::start_with(combined_guard()).await;
    let r = client_from("127.0.0.3")
        .get(g.addr(), "/shop/item?id=7")
        .basic("alice", ALICE)
        .header("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) test")
        .header("Referer", "https://shop.test/from")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let r2 = client_from("127.0.0.3").get(g.addr(), "/shop").send().await;
    assert_eq!(r2.status, 401);
    let r3 = client_from("127.0.0.3").get(g.addr(), "/shop").basic("", "x").send().await;
    assert_eq!(r3.status, 401);
    let r4 = client_from("127.0.0.3").get(g.addr(), "/shop").basic("two words", "x").send().await;
    assert_eq!(r4.status, 401);
    let lines = complete_lines(&g, 4).await;
    let parsed: Vec<Combined> =
        lines.iter().map(|l| parse_combined(l).unwrap_or_else(|| panic!("not a combined line: {l:?}"))).collect();

    let c = &parsed[0];
    assert_eq!(c.ip, "127.0.0.3");
    assert_eq!(c.user, "alice");
    assert!(c.time.ends_with(" +0000") && c.time.len() == 26, "{}", c.time);
    assert_eq!(c.request, "GET /shop/item?id=7 HTTP/1.1");
    assert_eq!(c.status, 200);
    assert_eq!(c.bytes, r.body.len().to_string());
    assert_eq!(c.referer, "https://shop.test/from");
    assert_eq!(c.user_agent, "Mozilla/5.0 (X11; Linux x86_64) test");
    assert!(c.rest.contains("decision=auth_ok") && c.rest.contains("source=upstream"), "{}", c.rest);

    let c = &parsed[1];
    assert_eq!(c.user, "-");
    assert_eq!(c.status, 401);
    assert_eq!((c.referer.as_str(), c.user_agent.as_str()), ("-", "-"));
    assert!(c.rest.contains("decision=challenge") && c.rest.contains("source=guard"), "{}", c.rest);
    // An empty or spaced user name must not shift the fields.
    assert!(!parsed[2].user.is_empty() && parsed[2].status == 401, "{:?}", parsed[2]);
    assert!(parsed[3].user.starts_with("two") && parsed[3].status == 401, "{:?}", parsed[3]);
}

// ---------------------------------------------------------------------------
// Log injection
// ---------------------------------------------------------------------------

/// Requests carrying CR, LF, ESC, quotes and C1 controls in the user agent,
/// the path and the user name. Returns how many requests were sent.
async fn send_injections(g: &TestGuard) -> usize {
    let mut sent = 0;
    let mut send = |bytes: Vec<u8>| {
        sent += 1;
        let addr = g.addr();
        async move { raw_maybe(ip("127.0.0.3"), addr, &bytes).await }
    };
    // User-Agent: quotes, backslash and obs-text C1 controls (NEL, CSI) pass hyper.
    let mut ua = b"GET /feed HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: a\"b\\c ".to_vec();
    ua.extend_from_slice("\u{85}NEL \u{9b}31m \u{2028}".as_bytes());
    ua.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(send(ua).await.map(|r| r.status), Some(200));
    // ESC, DEL and bare CR in a header value: hyper refuses them (a connection-level record, still one line).
    for bad in [&b"a\x1b[31mred"[..], b"a\x7fb", b"a\rInjected: 1"] {
        let mut req = b"GET /feed HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: ".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let status = send(req).await.map(|r| r.status);
        assert_eq!(status, Some(400), "{:?}: refused by the HTTP parser", String::from_utf8_lossy(bad));
    }
    // Path: percent-encoded CR/LF/ESC is refused, and logged as sent.
    let status =
        send(b"GET /feed/%0d%0aFAKE%20200%1b[31m HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n".to_vec())
            .await
            .map(|r| r.status);
    assert_eq!(status, Some(400));
    // Raw non-ASCII in the path.
    let mut req = b"GET /feed/".to_vec();
    req.extend_from_slice("\u{85}x".as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    let status = send(req).await.map(|r| r.status);
    assert_eq!(status, Some(400), "raw non-ASCII in the path");
    // User names with LF, CR, ESC, quotes and backslashes.
    for user in [
        "evil\nuser",
        "evil\r\n127.0.0.1 - admin [01/Jan/2000:00:00:00 +0000] \"GET / HTTP/1.1\" 200",
        "\u{1b}[2J\"q\\",
    ] {
        let token = b64(format!("{user}:pw").as_bytes());
        let req = format!(
            "GET /shop HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(send(req.into_bytes()).await.map(|r| r.status), Some(401));
    }
    sent
}

#[tokio::test]
async fn control_bytes_are_escaped_in_json() {
    let g = TestGuard::start().await;
    let sent = send_injections(&g).await;
    let lines = exactly(&g, sent).await;
    let text = std::fs::read_to_string(g.log_path()).unwrap();
    assert_clean_lines(&text);
    // Escaped, not dropped: the JSON decodes back to what was sent.
    assert_eq!(lines[0]["user_agent"], "a\"b\\c \u{85}NEL \u{9b}31m \u{2028}");
    let users: Vec<&str> = lines.iter().filter_map(|l| l["user"].as_str()).collect();
    assert!(users.contains(&"evil\nuser"), "{users:?}");
    assert!(users.contains(&"\u{1b}[2J\"q\\"), "{users:?}");
    let path = lines.iter().find(|l| l["path"].as_str().is_some_and(|p| p.contains("FAKE"))).expect("path record");
    assert_eq!(path["decision"], "bad_request");
    assert_eq!(path["path"], "/feed/%0d%0aFAKE%20200%1b[31m");
    assert_eq!(g.upstream.requests().iter().filter(|r| r.target.contains("FAKE")).count(), 0);
}

#[tokio::test]
async fn control_bytes_are_escaped_in_combined() {
    let g = TestGuard::start_with(combined_guard()).await;
    let sent = send_injections(&g).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(g.log_path()).unwrap();
    let lines = assert_clean_lines(&text);
    assert_eq!(lines.len(), sent, "{text}");
    for line in &lines {
        assert!(parse_combined(line).is_some(), "not a combined line: {line:?}");
    }
    // No line was forged: every one starts with the real client address.
    assert!(lines.iter().all(|l| l.starts_with("127.0.0.3 - ")), "{text}");
    let ua = parse_combined(lines[0]).unwrap().user_agent;
    assert!(!ua.contains('"') && ua.contains("\\x22") && ua.contains("\\x5c"), "{ua}");
    let users: Vec<String> = lines.iter().map(|l| parse_combined(l).unwrap().user).collect();
    assert!(users.iter().any(|u| u == "evil\\x0auser"), "{users:?}");
}

// ---------------------------------------------------------------------------
// Report mode
// ---------------------------------------------------------------------------

#[tokio::test]
async fn report_mode_forwards_and_logs_the_decision_it_would_have_made() {
    let g = TestGuard::with_body(&format!("mode: report\n{DEFAULT_RULES}")).await;
    let deny = client_from("127.0.0.3").get(g.addr(), "/wp-admin/").send().await;
    assert_eq!(deny.status, 200, "report mode forwards a request the admin rule would deny");
    assert_eq!(g.upstream.count(), 1);
    let rec = record(&g, 1).await;
    assert_eq!(rec["enforced"], false);
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["source"], "upstream");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("not enforced") && err.contains("403"), "{rec}");

    let challenge = client_from("127.0.0.3").get(g.addr(), "/shop").send().await;
    assert_eq!(challenge.status, 200);
    assert_eq!(g.upstream.count(), 2);
    let rec = record(&g, 2).await;
    assert_eq!((rec["decision"].as_str(), rec["enforced"].as_bool()), (Some("challenge"), Some(false)));
    assert!(rec["error"].as_str().unwrap_or_default().contains("not enforced"), "{rec}");

    let fail = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "wrong").send().await;
    assert_eq!(fail.status, 200);
    let rec = record(&g, 3).await;
    assert_eq!((rec["decision"].as_str(), rec["enforced"].as_bool()), (Some("auth_fail"), Some(false)));

    // What would pass is logged as such, with no error.
    let ok = client_from("127.0.0.2").get(g.addr(), "/shop").send().await;
    assert_eq!(ok.status, 200);
    let rec = record(&g, 4).await;
    assert_eq!((rec["decision"].as_str(), rec["error"].clone()), (Some("allow"), Value::Null));

    // Malformed requests are still refused: report mode is about policy, not HTTP safety.
    let bad = client_from("127.0.0.3").get(g.addr(), "/shop/%2e%2e/wp-admin/").send().await;
    assert_eq!(bad.status, 400);
    assert_eq!(g.upstream.count(), 4);

    let (code, body) = admin_get(g.admin(), "/healthz", "text/plain").await;
    assert_eq!(code, 503, "{body}");
    let lower = body.to_lowercase();
    assert!(lower.contains("report") && lower.contains("not enforcing"), "{body}");
    let status = status_json(g.admin()).await;
    assert_eq!(status["enforcing"], false, "{status:#}");
}
