//! What reaches the cart and what comes back: header hygiene,
//! forwarding headers, Host, credentials, streamed bodies, limits and upstream failures.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// The office (127.0.0.2): admitted by the `site` rule, from an untrusted peer.
fn office(g: &TestGuard, target: &str) -> RequestBuilder {
    client_from("127.0.0.2").get(g.addr(), target)
}

fn limits(max_body_bytes: u64) -> GuardOptions {
    GuardOptions { limits: format!("  max_body_bytes: {max_body_bytes}\n"), ..Default::default() }
}

#[tokio::test]
async fn hop_by_hop_headers_and_the_headers_connection_names_are_removed() {
    let g = TestGuard::start().await;
    let r = integration(&g, "/shop")
        .header("Connection", "X-Secret, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto")
        .header("X-Secret", "1")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("Proxy-Connection", "keep-alive")
        .header("TE", "trailers")
        .header("Trailer", "X-Checksum")
        .header("X-Keep", "yes")
        .header("Accept", "application/json")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = g.upstream.last();
    for gone in ["connection", "x-secret", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer"] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(seen.header("accept"), Some("application/json"));
    // Connection named them, but the guard's own forwarding headers are set after the removal.
    assert_eq!(seen.header_all("x-forwarded-for"), ["50.18.194.14, 127.0.0.100"]);
    assert_eq!(seen.header_all("x-real-ip"), ["50.18.194.14"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn connection_header_cannot_delete_the_guards_x_forwarded_for() {
    let g = TestGuard::start().await;
    let r = office(&g, "/shop")
        .header("Connection", "X-Forwarded-For")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("Connection", "x-forwarded-for, X-Real-IP, X-Forwarded-Host")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.2"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["shop.test"]);
}

#[tokio::test]
async fn upgrade_is_refused_and_not_forwarded() {
    let g = TestGuard::start().await;
    let upgrades: &[&[(&str, &str)]] = &[
        &[("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
        &[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")],
        &[("HTTP2-Settings", "AAMAAABkAAQAAP__")],
    ];
    for (i, headers) in upgrades.iter().enumerate() {
        let mut req = integration(&g, "/shop");
        for (n, v) in headers.iter() {
            req = req.header(n, v);
        }
        let r = req.send().await;
        assert_eq!(r.status, 400, "{headers:?}");
        let rec = g.record(i + 1).await;
        assert_eq!(rec["decision"], "bad_request");
        assert!(rec["error"].as_str().unwrap_or_default().contains("upgrade"), "{rec}");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_replaced_not_appended() {
    let g = TestGuard::start().await;
    let r = office(&g, "/shop")
        .header("X-Forwarded-For", "50.18.194.14")
        .header("X-Forwarded-For", "6.6.6.6, 7.7.7.7")
        .header("X-Real-IP", "50.18.194.14")
        .header("Forwarded", "for=50.18.194.14")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.2"]);
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(g.record(1).await["client_ip"], "127.0.0.2");
}

#[tokio::test]
async fn x_forwarded_for_through_the_trusted_proxy_keeps_the_chain_and_appends_the_peer() {
    let g = TestGuard::start().await;
    // (header lines, forwarded X-Forwarded-For, client)
    let cases: &[(&[&str], &str, &str)] = &[
        (&["50.18.194.14"], "50.18.194.14, 127.0.0.100", "50.18.194.14"),
        // A trusted hop to the right of the client stays in the chain.
        (&["50.18.194.14, 127.0.0.100"], "50.18.194.14, 127.0.0.100, 127.0.0.100", "50.18.194.14"),
        // Several header lines are one list.
        (&["50.18.194.14", "127.0.0.100"], "50.18.194.14, 127.0.0.100, 127.0.0.100", "50.18.194.14"),
        // Left of the client is what the client itself claimed: not believed, not forwarded.
        (&["198.51.100.9, 50.18.194.14"], "50.18.194.14, 127.0.0.100", "50.18.194.14"),
    ];
    for (i, (lines, forwarded, client)) in cases.iter().enumerate() {
        let mut req = client_from("127.0.0.100").get(g.addr(), "/wp-json/wc/v3/orders");
        for l in lines.iter() {
            req = req.header("X-Forwarded-For", l);
        }
        let r = req.send().await;
        assert_eq!(r.status, 200, "{lines:?}");
        let seen = g.upstream.last();
        assert_eq!(seen.header_all("x-forwarded-for"), [*forwarded], "{lines:?}");
        assert_eq!(seen.header_all("x-real-ip"), [*client], "{lines:?}");
        assert_eq!(g.record(i + 1).await["client_ip"], *client);
    }
    // The trusted proxy without a header is the client itself, listed once.
    let r = client_from("127.0.0.100").get(g.addr(), "/feed").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-for"), ["127.0.0.100"]);
}

#[tokio::test]
async fn x_forwarded_proto_is_http_on_plain_and_only_a_trusted_proxy_may_say_https() {
    let g = TestGuard::start().await;
    assert_eq!(office(&g, "/shop").send().await.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-proto"), ["http"]);
    // From an untrusted peer a claimed https is overwritten.
    assert_eq!(office(&g, "/shop").header("X-Forwarded-Proto", "https").send().await.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-proto"), ["http"]);
    // The TLS-terminating proxy in front of the guard is believed.
    assert_eq!(integration(&g, "/shop").header("X-Forwarded-Proto", "https").send().await.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-proto"), ["https"]);
    // ...but only for http or https.
    assert_eq!(integration(&g, "/shop").header("X-Forwarded-Proto", "gopher").send().await.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn x_forwarded_host_is_the_clients_host() {
    let g = TestGuard::start().await;
    let r = office(&g, "/shop").header("X-Forwarded-Host", "evil.test").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-host"), ["shop.test"]);
    let r = office(&g, "/shop").no_host().header("Host", "shop.test:8080").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header_all("x-forwarded-host"), ["shop.test:8080"]);
}

#[tokio::test]
async fn spoofable_client_headers_are_stripped() {
    let g = TestGuard::start().await;
    let spoofed = [
        ("Client-IP", "50.18.194.14"),
        ("X-Client-IP", "50.18.194.14"),
        ("True-Client-IP", "50.18.194.14"),
        ("X-Cluster-Client-IP", "50.18.194.14"),
        ("X-Forwarded-SSL", "on"),
        ("Front-End-Https", "on"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Server", "evil.test"),
        ("Forwarded", "for=50.18.194.14;proto=https"),
    ];
    for source in ["127.0.0.2", "127.0.0.100"] {
        let mut req = client_from(source).get(g.addr(), "/shop").header("X-Forwarded-For", "50.18.194.14");
        for (n, v) in spoofed {
            req = req.header(n, v);
        }
        req = req.header("X-Request-Id", "mine");
        assert_eq!(req.send().await.status, 200, "{source}");
        let seen = g.upstream.last();
        for (n, _) in spoofed {
            assert_eq!(seen.header(n), None, "{n} from {source} was forwarded");
        }
        // The request id is the guard's, the same as in its access record.
        let id = seen.header("x-request-id").unwrap_or_default().to_string();
        assert_ne!(id, "mine");
        let rec = g.record(g.upstream.count()).await;
        assert_eq!(rec["request_id"], id.as_str());
    }
}

#[tokio::test]
async fn upstream_host_preserve_upstream_and_literal() {
    let g = TestGuard::start().await;
    assert_eq!(office(&g, "/shop").send().await.status, 200);
    assert_eq!(g.upstream.last().header_all("host"), ["shop.test"]);

    let g =
        TestGuard::start_with(GuardOptions { upstream_extra: "  host: upstream\n".into(), ..Default::default() }).await;
    assert_eq!(office(&g, "/shop").send().await.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.header_all("host"), [g.upstream.addr.to_string().as_str()]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["shop.test"]);

    let g =
        TestGuard::start_with(GuardOptions { upstream_extra: "  host: cart.internal\n".into(), ..Default::default() })
            .await;
    assert_eq!(office(&g, "/shop").send().await.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.header_all("host"), ["cart.internal"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["shop.test"]);
}

#[tokio::test]
async fn guards_own_authorization_is_removed_unless_forward_credentials() {
    let g = TestGuard::start().await;
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header("authorization"), None);

    let g = TestGuard::with_body(&format!("{DEFAULT_RULES}auth:\n  forward_credentials: true\n")).await;
    let req = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", ALICE);
    let sent = req.bytes();
    let r = req.send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.record(1).await["decision"], "auth_ok");
    let value = String::from_utf8_lossy(&sent)
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: ").map(str::to_string))
        .unwrap();
    assert_eq!(g.upstream.last().header_all("authorization"), [value.as_str()]);
}

#[tokio::test]
async fn allowlisted_clients_authorization_is_untouched() {
    let g = TestGuard::start().await;
    // Whatever the allowlisted client sends is the cart's business, even what the guard could not parse.
    let values = ["Bearer abc.def", "Basic Y2tfMTpjc18y", "Basic !!!not-base64", "Digest username=\"x\""];
    for value in values {
        let r = office(&g, "/shop").header("Authorization", value).send().await;
        assert_eq!(r.status, 200, "{value}");
        assert_eq!(g.upstream.last().header_all("authorization"), [value]);
        let r = integration(&g, "/wp-json/wc/v3/orders").header("Authorization", value).send().await;
        assert_eq!(r.status, 200, "{value}");
        assert_eq!(g.upstream.last().header_all("authorization"), [value]);
    }
}

#[tokio::test]
async fn request_body_reaches_the_upstream_intact() {
    let g = InProcess::start().await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = g
        .call(
            client_from("127.0.0.100")
                .request(IN_PROCESS, "POST", "/wp-json/wc/v3/orders")
                .header("X-Forwarded-For", "50.18.194.14")
                .header("Content-Type", "application/octet-stream")
                .body(&body),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("content-length"), Some("200000"));
    assert!(seen.body == body, "body changed on the way ({} bytes arrived)", seen.body.len());
    assert_eq!(g.record(1).await["bytes_in"], 200_000);
}

#[tokio::test]
async fn chunked_request_body_reaches_the_upstream_intact() {
    let g = TestGuard::start().await;
    let req = b"POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let r = raw("127.0.0.2".parse().unwrap(), g.addr(), req).await;
    assert_eq!(r.status, 200);
    let seen = g.upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, b"hello 0123456789abcdef");
    assert_eq!(g.record(1).await["bytes_in"], 22);
}

#[tokio::test]
async fn response_body_reaches_the_client_intact() {
    let g = TestGuard::start().await;
    let r = office(&g, "/big/300000").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
    assert!(r.body.iter().all(|&b| b == b'x'));
    let rec = g.record(1).await;
    assert_eq!(rec["bytes_out"], 300_000);
    assert_eq!(rec["source"], "upstream");
}

#[tokio::test]
async fn content_length_over_max_body_bytes_is_413_and_not_forwarded() {
    let g = TestGuard::start_with(limits(1000)).await;
    let r = office(&g, "/shop").body(&[b'a'; 1001]).send().await;
    assert_eq!(r.status, 413);
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "bad_request");
    assert_eq!(rec["status"], 413);
    assert!(rec["error"].as_str().unwrap_or_default().contains("1000"), "{rec}");
    assert_eq!(g.upstream.count(), 0);
    // The limit itself is allowed.
    let r = office(&g, "/shop").body(&[b'a'; 1000]).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().body.len(), 1000);
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes_is_cut_and_never_delivered_whole() {
    let g = TestGuard::start_with(limits(1000)).await;
    let mut req =
        b"POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"258\r\n"); // 600 bytes
        req.extend_from_slice(&[b'z'; 600]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_maybe("127.0.0.2".parse().unwrap(), g.addr(), &req).await;
    if let Some(r) = &r {
        assert_eq!(r.status, 413, "{}", r.text());
    }
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "bad_request", "{rec}");
    assert_eq!(rec["status"], 413, "{rec}");
    assert!(rec["error"].as_str().unwrap_or_default().contains("larger than 1000"), "{rec}");
    // The upstream may have seen the head of a request, but never a complete oversized body.
    for seen in g.upstream.requests() {
        assert!(seen.body.len() <= 1000, "upstream got {} bytes", seen.body.len());
    }
}

#[tokio::test]
async fn refused_upstream_is_502_with_a_connect_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let g = TestGuard::start_with(GuardOptions {
        upstream_url: Some(format!("http://127.0.0.1:{closed}")),
        ..Default::default()
    })
    .await;
    let r = office(&g, "/shop").send().await;
    assert_eq!(r.status, 502);
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "upstream_error");
    assert_eq!(rec["status"], 502);
    assert_eq!(rec["source"], "guard");
    assert_eq!(rec["upstream_status"], serde_json::Value::Null);
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("connect"), "{error}");
    assert!(!error.contains('\n'), "one line: {error:?}");
}

#[tokio::test]
async fn slow_upstream_is_504_with_a_timeout_reason() {
    let g = TestGuard::start_with(GuardOptions { upstream_timeout: "300ms", ..Default::default() }).await;
    let r = office(&g, "/slow/3000").send().await;
    assert_eq!(r.status, 504);
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "upstream_error");
    assert_eq!(rec["status"], 504);
    assert_eq!(rec["source"], "guard");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("300ms") && error.contains("response head"), "{error}");
    assert_eq!(g.upstream.count(), 1, "the request did reach the upstream");
}

#[tokio::test]
async fn upstream_401_passes_through_and_is_told_apart_from_the_guards() {
    let g = TestGuard::start().await;
    let r = office(&g, "/status/401").send().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), None, "the guard must not add its challenge to the cart's 401");
    assert_eq!(r.text(), "upstream ok");
    let rec = g.record(1).await;
    assert_eq!(rec["source"], "upstream");
    assert_eq!(rec["status"], 401);
    assert_eq!(rec["upstream_status"], 401);
    assert_eq!(rec["decision"], "allow");

    let r = client_from("127.0.0.3").get(g.addr(), "/status/401").send().await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let rec = g.record(2).await;
    assert_eq!(rec["source"], "guard");
    assert_eq!(rec["upstream_status"], serde_json::Value::Null);
    assert_eq!(rec["decision"], "challenge");

    // The cart's own 5xx is the cart's, not an upstream_error of the guard.
    assert_eq!(office(&g, "/status/503").send().await.status, 503);
    let rec = g.record(3).await;
    assert_eq!(rec["source"], "upstream");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(g.upstream.count(), 2);
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_and_logs_an_error() {
    let g = TestGuard::start().await;
    let req = office(&g, "/die").bytes();
    if let Some(r) = raw_maybe("127.0.0.2".parse().unwrap(), g.addr(), &req).await {
        let promised: usize = r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        assert!(r.body.len() < promised, "the client got a complete response: {r:?}");
    }
    let rec = g.record(1).await;
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("aborted"), "{rec}");
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn keep_alive_client_connection_carries_several_requests() {
    let g = TestGuard::start().await;
    let mut s = client_from("127.0.0.2").connect(g.addr()).await;
    let mut buf = Vec::new();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
    let read_first = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(11).any(|w| w == b"upstream ok") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed after the first response");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_first).await.expect("first response timed out");
    assert_eq!(parse_reply(&buf).unwrap().status, 200);
    s.write_all(b"GET /two HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(parse_reply(&rest).unwrap().status, 200);
    let targets: Vec<String> = g.upstream.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two"]);
}

/// An upstream that answers every connection with `reply` (then closes); bounded to a few connections.
async fn misbehaving_upstream(reply: Vec<u8>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&reply).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

/// A response the guard cannot frame or whose head is oversized
/// becomes a 502 with a reason, never a half-forwarded answer.
#[tokio::test]
async fn misbehaving_upstream_responses_become_502() {
    let mut oversized = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    oversized.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok".to_vec()),
        (
            "two different Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
        ),
        ("not HTTP at all", b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
        ("empty reply", Vec::new()),
        ("head over a megabyte", oversized),
    ];
    for (name, reply) in cases {
        let upstream = misbehaving_upstream(reply).await;
        let g = TestGuard::start_with(GuardOptions {
            upstream_url: Some(format!("http://{upstream}")),
            ..Default::default()
        })
        .await;
        let r = office(&g, "/shop").send().await;
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        let rec = g.record(1).await;
        assert_eq!(rec["decision"], "upstream_error", "{name}: {rec}");
        assert_eq!(rec["source"], "guard", "{name}");
        assert!(rec["error"].as_str().is_some_and(|e| e.starts_with("upstream")), "{name}: {rec}");
    }
}
