//! Hostile input through the real server: malformed Authorization headers,
//! failed-login bans, per-request authentication on keep-alive, request
//! smuggling and malformed HTTP, and a password-guessing flood.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::logging::{complete_lines, record, records};

/// Reads one HTTP/1.1 response framed by Content-Length (or chunked) from a
/// keep-alive connection; bytes after it stay in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Reply> {
    for _ in 0..1000 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_start = end + 4;
            let total = if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(body_start + len)
            } else if head.contains("transfer-encoding: chunked") {
                buf[body_start..].windows(5).position(|w| w == b"0\r\n\r\n").map(|p| body_start + p + 5)
            } else {
                Some(body_start)
            };
            if let Some(total) = total.filter(|&t| buf.len() >= t) {
                let reply = parse_reply(&buf[..total]);
                buf.drain(..total);
                return reply;
            }
        }
        let mut chunk = [0u8; 8192];
        let n = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            return parse_reply(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    None
}

// ---------------------------------------------------------------------------
// Malformed Authorization headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_authorization_forms_are_401_or_400_and_never_forwarded() {
    let g = TestGuard::start().await;
    let right = format!("alice:{ALICE}");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad base64", b"Basic !!!not-base64!!!".to_vec(), 401),
        ("base64 without padding", format!("Basic {}", b64(right.as_bytes()).trim_end_matches('=')).into_bytes(), 401),
        ("no colon", format!("Basic {}", b64(b"alicealice-pass")).into_bytes(), 401),
        ("Bearer with the right credentials", format!("Bearer {}", b64(right.as_bytes())).into_bytes(), 401),
        ("Digest", b"Digest username=\"alice\", realm=\"Restricted\", nonce=\"x\", response=\"y\"".to_vec(), 401),
        ("Basic alone", b"Basic".to_vec(), 401),
        ("Basic and a space", b"Basic ".to_vec(), 401),
        ("scheme glued to the token", format!("Basic{}", b64(right.as_bytes())).into_bytes(), 401),
        ("huge (over 4096 bytes)", format!("Basic {}", "QUFB".repeat(1500)).into_bytes(), 401),
        (
            "huge, starting with the right credentials",
            format!("Basic {}{}", b64(right.as_bytes()), "A".repeat(5000)).into_bytes(),
            401,
        ),
        ("decodes to non-UTF-8", format!("Basic {}", b64(b"alice\xff\xfe:alice-pass")).into_bytes(), 401),
        ("non-UTF-8 raw header bytes", b"Basic \xff\xfe\xfd".to_vec(), 401),
        ("empty user and password", format!("Basic {}", b64(b":")).into_bytes(), 401),
        ("right user, empty password", format!("Basic {}", b64(b"alice:")).into_bytes(), 401),
        ("password with a trailing space", format!("Basic {}", b64(format!("{right} ").as_bytes())).into_bytes(), 401),
    ];
    for (i, (name, value, want)) in cases.iter().enumerate() {
        // A fresh source address per case, so failed logins never add up to a ban.
        let source = ip(&format!("127.0.3.{}", i + 1));
        let mut req = b"GET /shop HTTP/1.1\r\nHost: shop.test\r\nAuthorization: ".to_vec();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let r = raw(source, g.addr(), &req).await;
        assert_eq!(r.status, *want, "{name}: {}", r.text());
        if r.status == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Restricted\", charset=\"UTF-8\""), "{name}");
        }
        let rec = record(&g, i + 1).await;
        assert_eq!(rec["status"], *want, "{name}: {rec}");
        assert!(matches!(rec["decision"].as_str(), Some("auth_fail" | "challenge" | "bad_request")), "{name}: {rec}");
        assert_eq!(rec["source"], "guard", "{name}");
        assert_eq!(g.upstream.count(), 0, "{name} was forwarded");
    }
}

#[tokio::test]
async fn two_authorization_headers_are_400_even_with_the_right_password_second() {
    let g = TestGuard::start().await;
    let right = format!("Basic {}", b64(format!("alice:{ALICE}").as_bytes()));
    let wrong = format!("Basic {}", b64(b"alice:wrong"));
    let orders: [(&str, &str); 3] = [(&wrong, &right), (&right, &wrong), (&right, &right)];
    for (n, (first, second)) in orders.iter().enumerate() {
        let r = client_from("127.0.0.3")
            .get(g.addr(), "/shop")
            .header("Authorization", first)
            .header("Authorization", second)
            .send()
            .await;
        assert_eq!(r.status, 400, "case {n}: {}", r.text());
        let rec = record(&g, n + 1).await;
        assert_eq!(rec["decision"], "bad_request");
        assert_eq!(rec["user"], serde_json::Value::Null);
    }
    assert_eq!(g.upstream.count(), 0);
    // The same right password alone passes: the 400s above were about the duplicate.
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").header("Authorization", &right).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// Failed-login bans
// ---------------------------------------------------------------------------

const BAN_AUTH: &str = "auth:\n  max_failures: 3\n  failure_window: 1m\n  ban: 1m\n";

#[tokio::test]
async fn three_failures_ban_the_address_even_with_the_right_password() {
    let g = TestGuard::with_body(&format!("{DEFAULT_RULES}{BAN_AUTH}")).await;
    for n in 1..=3 {
        let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "wrong").send().await;
        assert_eq!(r.status, 401, "failure {n}");
    }
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let rec = record(&g, 4).await;
    assert_eq!(rec["decision"], "banned");
    assert_eq!(rec["status"], 429);
    assert_eq!(rec["client_ip"], "127.0.0.3");
    // Without credentials too, and on another auth rule.
    let r = client_from("127.0.0.3").get(g.addr(), "/wp-json/wc/v3/orders").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 429);
    assert_eq!(g.upstream.count(), 0);

    // Another address is not affected.
    let r = client_from("127.0.0.4").get(g.addr(), "/shop").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.count(), 1);

    let status = status_json(g.admin()).await;
    let bans = status["bans"].as_array().expect("bans array");
    let ips: Vec<&str> = bans.iter().filter_map(|b| b["ip"].as_str()).collect();
    assert_eq!(ips, vec!["127.0.0.3"], "{status:#}");
    let left = bans[0]["seconds_left"].as_u64().unwrap();
    assert!(left <= 60 && left > 0, "{left}");
}

#[tokio::test]
async fn allowlisted_clients_are_never_banned() {
    let g = TestGuard::with_body(&format!("{DEFAULT_RULES}{BAN_AUTH}")).await;
    // The office is allowlisted on "/" but not on the cart API: fail there until banned.
    for _ in 0..4 {
        let r = client_from("127.0.0.2").get(g.addr(), "/wp-json/wc/v3/orders").basic("alice", "wrong").send().await;
        assert!(matches!(r.status, 401 | 429), "{}", r.status);
    }
    // Where it is allowlisted it never reaches authentication, so the ban cannot touch it,
    // wrong credentials or not (they are the office's own and pass untouched).
    for n in 0..5 {
        let r = client_from("127.0.0.2").get(g.addr(), "/shop").basic("alice", "wrong").send().await;
        assert_eq!(r.status, 200, "office request {n}");
    }
    assert_eq!(g.upstream.count(), 5);
    assert_eq!(g.upstream.last().header("authorization"), Some(format!("Basic {}", b64(b"alice:wrong")).as_str()));

    // Integration Management through the trusted proxy, with credentials the guard does not know.
    for n in 0..5 {
        let r = client_from("127.0.0.100")
            .get(g.addr(), "/wp-json/wc/v3/orders")
            .header("X-Forwarded-For", "50.18.194.14")
            .basic("ck_x", "cs_wrong")
            .send()
            .await;
        assert_eq!(r.status, 200, "integration request {n}");
    }
    assert_eq!(g.upstream.count(), 10);
    let status = status_json(g.admin()).await;
    let ips: Vec<&str> = status["bans"].as_array().unwrap().iter().filter_map(|b| b["ip"].as_str()).collect();
    assert!(!ips.contains(&"50.18.194.14"), "{ips:?}");
    assert!(!ips.contains(&"127.0.0.100"), "{ips:?}");
    let lines = records(&g, 14).await;
    let admitted: Vec<_> = lines.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(admitted.len(), 10);
    assert!(admitted.iter().all(|l| l["decision"] == "allow" && l["user"].is_null()), "{admitted:#?}");
}

// ---------------------------------------------------------------------------
// Authentication is per request
// ---------------------------------------------------------------------------

#[tokio::test]
async fn login_on_one_keep_alive_request_admits_nothing_else_on_the_connection() {
    let g = TestGuard::start().await;
    let token = b64(format!("alice:{ALICE}").as_bytes());

    // Sequential on one socket.
    let mut s = connect_from(ip("127.0.0.3"), g.addr()).await;
    let first = format!("GET /shop/1 HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Basic {token}\r\n\r\n");
    s.write_all(first.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r1 = read_response(&mut s, &mut buf).await.expect("first response");
    assert_eq!(r1.status, 200);
    s.write_all(b"GET /shop/2 HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
    let r2 = read_response(&mut s, &mut buf).await.expect("second response");
    assert_eq!(r2.status, 401);
    s.write_all(b"GET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let r3 = read_response(&mut s, &mut buf).await.expect("third response");
    assert_eq!(r3.status, 401);
    assert_eq!(g.upstream.count(), 1);
    assert_eq!(g.upstream.last().target, "/shop/1");

    // Pipelined: both requests in one write.
    let mut s = connect_from(ip("127.0.0.3"), g.addr()).await;
    let both = format!(
        "GET /shop/3 HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Basic {token}\r\n\r\nGET /shop/4 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
    );
    s.write_all(both.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r1 = read_response(&mut s, &mut buf).await.expect("pipelined first");
    let r2 = read_response(&mut s, &mut buf).await.expect("pipelined second");
    assert_eq!((r1.status, r2.status), (200, 401));
    assert_eq!(g.upstream.count(), 2);
    assert_eq!(g.upstream.last().target, "/shop/3");
    let lines = records(&g, 5).await;
    let decisions: Vec<&str> = lines.iter().map(|l| l["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["auth_ok", "challenge", "challenge", "auth_ok", "challenge"]);
}

// ---------------------------------------------------------------------------
// Request smuggling and malformed HTTP
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Acceptable statuses; `None` in the list would mean "closed without an answer".
    want: &'static [u16],
}

fn case(name: &'static str, text: &str, want: &'static [u16]) -> Case {
    Case { name, bytes: text.as_bytes().to_vec(), want }
}

fn malformed_cases() -> Vec<Case> {
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: shop.test\r\n\r\n", "a".repeat(20_000));
    let mut big_headers = String::from("GET /shop HTTP/1.1\r\nHost: shop.test\r\n");
    for i in 0..3 {
        big_headers.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(8000)));
    }
    big_headers.push_str("\r\n");
    let mut many_headers = String::from("GET /shop HTTP/1.1\r\nHost: shop.test\r\n");
    for i in 0..150 {
        many_headers.push_str(&format!("X-Many-{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let mut proxy_v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    proxy_v2.extend_from_slice(&[50, 18, 194, 14, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x50]);
    proxy_v2.extend_from_slice(b"GET /shop HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    vec![
        case(
            "two different Content-Length",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            &[400],
        ),
        case(
            "Content-Length list",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
            &[400],
        ),
        case("invalid Content-Length", "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5x\r\n\r\nhello", &[400]),
        case("signed Content-Length", "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: +5\r\n\r\nhello", &[400]),
        case(
            "negative Content-Length",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: -1\r\n\r\nhello",
            &[400],
        ),
        case(
            "Transfer-Encoding: gzip, chunked",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            &[400],
        ),
        case("unknown Transfer-Encoding", "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip\r\n\r\n", &[400]),
        case(
            "two Transfer-Encoding headers",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            &[400],
        ),
        case(
            "Transfer-Encoding: xchunked",
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            &[400],
        ),
        case("obs-fold", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nX-Folded: a\r\n b\r\n\r\n", &[400]),
        case("space in a header name", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nBad Name: x\r\n\r\n", &[400]),
        case("space before the colon", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nX-Foo : x\r\n\r\n", &[400]),
        case("invalid byte in a header name", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nX@Y: x\r\n\r\n", &[400]),
        case("NUL in a header value", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nX-Nul: a\0b\r\n\r\n", &[400]),
        case("bare CR line endings", "GET /shop HTTP/1.1\rHost: shop.test\r\r", &[400]),
        Case { name: "request line longer than max_header_bytes", bytes: long_line.into_bytes(), want: &[400, 414, 431] },
        case("absolute-form target", "GET http://evil/ HTTP/1.1\r\nHost: shop.test\r\n\r\n", &[400]),
        case("absolute-form target, same host", "GET http://shop.test/shop HTTP/1.1\r\nHost: shop.test\r\n\r\n", &[400]),
        case("CONNECT", "CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\nConnection: close\r\n\r\n", &[400, 405]),
        case("asterisk-form OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n\r\n", &[400]),
        case("missing Host on HTTP/1.1", "GET /shop HTTP/1.1\r\nX-A: b\r\n\r\n", &[400]),
        case("two Host headers", "GET /shop HTTP/1.1\r\nHost: shop.test\r\nHost: evil.test\r\n\r\n", &[400]),
        case(
            "Upgrade: websocket",
            "GET /shop HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            &[400],
        ),
        case(
            "h2c upgrade",
            "GET /shop HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            &[400],
        ),
        Case { name: "headers bigger than max_header_bytes", bytes: big_headers.into_bytes(), want: &[431] },
        Case { name: "more than 100 headers", bytes: many_headers.into_bytes(), want: &[400, 431] },
        case(
            "PROXY v1 line on a normal listener",
            "PROXY TCP4 50.18.194.14 127.0.0.1 12345 80\r\nGET /shop HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
        ),
        Case { name: "PROXY v2 header on a normal listener", bytes: proxy_v2, want: &[400] },
    ]
}

/// Every malformed form gets a 4xx from the allowlisted office (which would
/// otherwise be forwarded), exactly one `bad_request` record, and nothing
/// reaches the upstream. Forms the framing check or hyper's parser refuses get
/// a connection-level record (method "-", no path, host or user agent); the
/// rest are refused by the guard's own checks with a full record. Ambiguous
/// framing with a smuggled request behind it: tests/it/framing.rs.
#[tokio::test]
async fn smuggling_and_malformed_http_are_refused_and_never_forwarded() {
    let g = TestGuard::start().await;
    let mut layers = Vec::new();
    for (i, c) in malformed_cases().into_iter().enumerate() {
        let reply = raw_maybe(ip("127.0.0.2"), g.addr(), &c.bytes).await;
        let status = reply.as_ref().map(|r| r.status);
        assert!(status.is_some_and(|s| c.want.contains(&s)), "{}: got {status:?}, want {:?}", c.name, c.want);
        assert_eq!(g.upstream.count(), 0, "{}: forwarded: {:?}", c.name, g.upstream.requests());
        let rec = record(&g, i + 1).await;
        assert_eq!(rec["decision"], "bad_request", "{}: {rec}", c.name);
        assert_eq!(rec["status"], status.unwrap(), "{}: {rec}", c.name);
        assert_eq!(rec["client_ip"], "127.0.0.2", "{}: {rec}", c.name);
        assert!(rec["error"].as_str().is_some_and(|e| !e.is_empty()), "{}: {rec}", c.name);
        let layer =
            if rec["method"] == "-" { "framing check or parser, connection-level record" } else { "guard handler" };
        layers.push(format!("{:45} {:?} {layer}: {}", c.name, status.unwrap(), rec["error"]));
    }
    eprintln!("{}", layers.join("\n"));
    // One record per case, nothing more (no second record when the connection closes).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(complete_lines(&g, 0).await.len(), malformed_cases().len());
    assert_eq!(g.upstream.count(), 0);
    // The guard still serves normally afterwards.
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/shop").send().await.status, 200);
    assert_eq!(g.upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// A password-guessing flood does not stall admitted clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_flood_does_not_stall_allowlisted_clients() {
    let bob = tokio::task::spawn_blocking(|| bcrypt::hash("bob-pass", 10).unwrap()).await.unwrap();
    let body = DEFAULT_RULES
        .replace("    alice: \"$ALICE_HASH\"\n", &format!("    alice: \"$ALICE_HASH\"\n    bob: \"{bob}\"\n"))
        // verify_nice 0: 200 cost-10 guesses must all be answered within the test's
        // timeouts even when other processes load the machine (nice 10 yields to them too).
        + "auth:\n  max_failures: 100000\n  failure_window: 1m\n  ban: 1m\n  verify_nice: 0\n";
    let g = TestGuard::with_body(&body).await;
    let addr = g.addr();

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Option<u16>>();
    let mut flood = Vec::new();
    for i in 0..200u32 {
        let done_tx = done_tx.clone();
        flood.push(tokio::spawn(async move {
            let source: IpAddr = format!("127.0.4.{}", i % 250 + 1).parse().unwrap();
            let token = b64(format!("bob:guess-{i}").as_bytes());
            let req = format!(
                "GET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n"
            );
            let status = tokio::time::timeout(Duration::from_secs(120), async {
                let mut s = connect_from(source, addr).await;
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.ok()?;
                parse_reply(&buf).map(|r| r.status)
            })
            .await
            .ok()
            .flatten();
            let _ = done_tx.send(status);
            status
        }));
    }
    drop(done_tx);
    // Start once the flood is under way (the first answer is back).
    let first = tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await.expect("no flood answer");
    assert!(first.is_some());

    let mut office_ok = 0;
    for n in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(10), client_from("127.0.0.2").get(addr, "/shop").send())
            .await
            .unwrap_or_else(|_| panic!("office request {n} stalled behind the password flood"));
        assert_eq!(r.status, 200, "office request {n}");
        office_ok += 1;
    }
    let mut flood_done_during_office = 1;
    while done_rx.try_recv().is_ok() {
        flood_done_during_office += 1;
    }

    let mut statuses = std::collections::BTreeMap::new();
    for t in flood {
        let s = t.await.unwrap();
        *statuses.entry(s).or_insert(0) += 1;
    }
    eprintln!(
        "flood statuses {statuses:?}; {flood_done_during_office} of 200 answered by the time 20 office requests were done"
    );
    assert_eq!(office_ok, 20);
    for (status, count) in &statuses {
        assert!(matches!(status, Some(401 | 503)), "{count} flood requests got {status:?}");
    }
    // Only the office requests reached the cart.
    assert_eq!(g.upstream.count(), 20);
    assert!(g.upstream.requests().iter().all(|r| r.target == "/shop"));
}

/// Regression: hyper's header timer used to close idle keep-alive connections
/// after header_timeout; idle_timeout now governs idle connections, while a
/// silent new connection or a slow head is still cut after header_timeout.
#[tokio::test]
async fn keep_alive_outlives_the_header_timeout_but_not_the_idle_timeout() {
    let g = TestGuard::start_with(GuardOptions {
        limits: "  header_timeout: 300ms\n  idle_timeout: 1500ms\n".into(),
        ..Default::default()
    })
    .await;
    let request = b"GET /shop HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let mut s = connect_from(ip("127.0.0.2"), g.addr()).await;
    let mut buf = [0u8; 4096];
    for round in 0..2 {
        s.write_all(request).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "round {round}");
        // Idle for longer than header_timeout, shorter than idle_timeout.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(g.upstream.count(), 2);
    // Past idle_timeout the guard closes the connection itself.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed by the idle timeout");
    assert_eq!(n.unwrap_or(0), 0, "closed without another response");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());

    // A new connection that sends nothing is cut after header_timeout, and logged as 408.
    let mut silent = connect_from(ip("127.0.0.3"), g.addr()).await;
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("silent client cut");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    let lines = g.log_lines(3).await;
    assert_eq!(lines[2]["status"], 408, "{}", lines[2]);
    assert_eq!(lines[2]["client_ip"], "127.0.0.3");
}

/// A slow head on a keep-alive connection (after a first request) is cut too:
/// within 1.5 × header_timeout, well before idle_timeout, and logged as 408.
#[tokio::test]
async fn slow_second_head_on_a_keep_alive_connection_is_cut() {
    let g = TestGuard::start_with(GuardOptions {
        limits: "  header_timeout: 400ms\n  idle_timeout: 10s\n".into(),
        ..Default::default()
    })
    .await;
    let mut s = connect_from(ip("127.0.0.2"), g.addr()).await;
    let mut buf = [0u8; 4096];
    s.write_all(b"GET /shop HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /shop HTTP/1.1\r\nHo").await.unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("cut before idle_timeout");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let lines = g.log_lines(2).await;
    assert_eq!(lines[1]["status"], 408, "{}", lines[1]);
    assert_eq!(g.upstream.count(), 1);
}
