//! Ambiguous HTTP/1 framing through the real server: refused with 400 before
//! hyper reads it, the connection closed, one access record naming the reason,
//! and pipelined requests before it still answered in order.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::logging::{complete_lines, record};

fn office() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// Sends `bytes` and reads until the guard closes (bounded): the whole answer.
async fn send_until_close(source: IpAddr, addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect_from(source, addr).await;
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the connection was left open after a refused head")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Each form with the reason its record must name; a smuggled request follows each.
pub(crate) fn ambiguous_forms() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding other than exactly chunked",
        ),
        (
            "POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "several Content-Length values",
        ),
        ("GET /shop HTTP/1.1\nHost: shop.test\n\n", "bare LF line ending"),
        ("GET /shop HTTP/1.1\r\nHost: shop.test\r\nX-A: 1\r\n\tcontinued\r\n\r\n", "obs-fold"),
        ("GET /shop HTTP/1.1\r\nHost : shop.test\r\n\r\n", "whitespace between a header name and the colon"),
        ("GET /shop#/../wp-admin HTTP/1.1\r\nHost: shop.test\r\n\r\n", "raw '#' in the request target"),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: shop.test\r\n\r\n", "byte not allowed in the request target"),
    ]
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_400_the_connection_closed_and_one_record_naming_the_reason() {
    let g = TestGuard::start().await;
    let forms = ambiguous_forms();
    for (i, (form, reason)) in forms.iter().enumerate() {
        let mut bytes = form.as_bytes().to_vec();
        bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n");
        let text = send_until_close(office(), g.addr(), &bytes).await;
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{form:?}: {text}");
        let reply = parse_reply(text.as_bytes()).unwrap();
        assert_eq!(reply.status, 400, "{form:?}: {text}");
        assert_eq!(reply.header("connection"), Some("close"), "{form:?}");
        let rec = record(&g, i + 1).await;
        assert_eq!(rec["decision"], "bad_request", "{form:?}: {rec}");
        assert_eq!(rec["status"], 400, "{form:?}: {rec}");
        assert_eq!(rec["client_ip"], "127.0.0.2", "{form:?}: {rec}");
        assert!(rec["error"].as_str().is_some_and(|e| e.contains(reason)), "{form:?}: want {reason:?} in {rec}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(complete_lines(&g, 0).await.len(), forms.len(), "exactly one record per refused connection");
    assert_eq!(g.upstream.count(), 0, "forwarded: {:?}", g.upstream.requests());
    // Counted by reason, and as bad requests outside any rule.
    let (_, metrics) = admin_get(g.admin(), "/metrics", "text/plain").await;
    let n = forms.len();
    assert!(metrics.contains(&format!("cartguard_connection_refusals_total{{reason=\"framing\"}} {n}\n")), "{metrics}");
    assert!(metrics.contains("cartguard_connection_refusals_total{reason=\"tls_handshake\"} 0\n"), "{metrics}");
    let bad = format!("cartguard_requests_total{{rule=\"-\",decision=\"bad_request\",status_class=\"4xx\"}} {n}\n");
    assert!(metrics.contains(&bad), "{metrics}");
}

#[tokio::test]
async fn pipelined_requests_before_a_refused_head_are_answered_in_order_first() {
    let g = TestGuard::start().await;
    let bytes = b"GET /shop/a HTTP/1.1\r\nHost: shop.test\r\n\r\n\
POST /shop/b HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 25\r\n\r\nGET /#x HTTP/1.1\nX: y\r\n\r\n\
POST /shop/c HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET #\r\n0\r\n\r\n\
GET /shop/d HTTP/1.1\r\nHost: shop.test\r\nX-Bad : 1\r\n\r\nGET /shop/e HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let text = send_until_close(office(), g.addr(), bytes).await;
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "200", "400"], "{text}\n{:?}", crate::logging::records(&g, 2).await);
    let seen: Vec<(String, Vec<u8>)> = g.upstream.requests().into_iter().map(|r| (r.target, r.body)).collect();
    assert_eq!(
        seen,
        [
            ("/shop/a".to_string(), b"".to_vec()),
            ("/shop/b".to_string(), b"GET /#x HTTP/1.1\nX: y\r\n\r\n".to_vec()),
            ("/shop/c".to_string(), b"GET #".to_vec()),
        ]
    );
    let last = record(&g, 4).await;
    assert!(last["error"].as_str().is_some_and(|e| e.contains("whitespace between a header name")), "{last}");
}

#[tokio::test]
async fn a_head_split_across_many_writes_is_checked_whole() {
    let g = TestGuard::start().await;
    for (form, status) in [
        (&b"GET /shop HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"[..], "200"),
        (b"GET /shop HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nX-Y : z\r\n\r\n", "400"),
    ] {
        let mut s = connect_from(office(), g.addr()).await;
        for byte in form {
            s.write_all(&[*byte]).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn framing_is_checked_after_a_proxy_protocol_header() {
    let g = TestGuard::start_with(GuardOptions {
        listeners: "  - addr: \"127.0.0.1:0\"\n    proxy_protocol: true\n".into(),
        ..Default::default()
    })
    .await;
    let text = send_until_close(
        "127.0.0.7".parse().unwrap(),
        g.addr(),
        b"PROXY TCP4 50.18.194.14 127.0.0.1 40000 443\r\nGET /wp-json/wc/v3/orders HTTP/1.1\nHost: shop.test\n\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let rec = record(&g, 1).await;
    assert_eq!(rec["peer_ip"], "50.18.194.14", "{rec}");
    assert!(rec["error"].as_str().is_some_and(|e| e.contains("bare LF")), "{rec}");
    assert_eq!(g.upstream.count(), 0);
}

/// A body trickled one byte at a time, each well inside idle_timeout, is cut by
/// `limits.min_body_rate` once `header_timeout` has passed, instead of holding the
/// request open until upstream.timeout.
#[tokio::test]
async fn a_trickled_request_body_is_cut_with_408() {
    let g = TestGuard::start_with(GuardOptions {
        limits: "  header_timeout: 1s\n  idle_timeout: 10s\n  min_body_rate: 100\n".into(),
        upstream_timeout: "30s",
        ..Default::default()
    })
    .await;
    let mut s = connect_from(office(), g.addr()).await;
    s.write_all(b"POST /shop HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut reply = [0u8; 4096];
    // At most 40 bytes over ~8 s: far below 100 bytes/s, each within idle_timeout.
    for _ in 0..40 {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut reply)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&reply[..n]),
            Err(_) => {}
        }
        if !buf.is_empty() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let rec = record(&g, 1).await;
    assert_eq!(rec["status"], 408, "{rec}");
    assert!(rec["error"].as_str().is_some_and(|e| e.contains("min_body_rate")), "{rec}");
}

/// A client that takes its response a few bytes at a time, each read just inside
/// idle_timeout, is cut once it has held output back for longer than header_timeout
/// at less than min_body_rate; a client reading at full speed is not.
#[tokio::test]
async fn a_client_reading_the_response_slower_than_min_body_rate_is_cut() {
    const SIZE: usize = 32 << 20;
    let g = TestGuard::start_with(GuardOptions {
        limits: "  header_timeout: 1s\n  idle_timeout: 10s\n  min_body_rate: 1048576\n".into(),
        ..Default::default()
    })
    .await;
    let request = format!("GET /big/{SIZE} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");

    let mut fast = connect_from(office(), g.addr()).await;
    fast.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), fast.read_to_end(&mut all)).await.unwrap().unwrap();
    assert!(all.len() > SIZE, "a fast reader must get the whole response: {} bytes", all.len());

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(office(), 0)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(g.addr()).await.unwrap();
    slow.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let (mut got, mut chunk) = (0usize, [0u8; 1024]);
    let mut ended = false;
    // About 10 KB/s for at most 15 s: far below 1 MiB/s.
    while started.elapsed() < Duration::from_secs(15) {
        match slow.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(n) => got += n,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the slow reader was never cut ({got} bytes in {:?})", started.elapsed());
    assert!(got < SIZE, "the slow reader got the whole response");
    let rec = record(&g, 2).await;
    assert_eq!(rec["status"], 200, "{rec}");
    assert!(rec["error"].as_str().is_some_and(|e| e.contains("min_body_rate")), "{rec}");
    let refusals = &g.guard().shared.stats.connection_refusals;
    assert_eq!(refusals.get(cartguard::state::ConnRefusal::SlowReader), 1, "counted for /metrics");
}
