//! Who gets in: allowlisted addresses, trusted proxies, logins, denials.
//! The decision tests call the handler in process (no listener: the peer
//! address is passed in); the PROXY protocol tests need the real listener.

use crate::common::*;

#[tokio::test]
async fn integration_via_trusted_proxy_passes_with_its_own_authorization() {
    let g = InProcess::start().await;
    let r = g
        .call(
            client_from("127.0.0.100")
                .get(IN_PROCESS, "/wp-json/wc/v3/orders")
                .header("X-Forwarded-For", "50.18.194.14")
                .basic("ck_live", "cs_live"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = g.upstream.last();
    assert_eq!(seen.target, "/wp-json/wc/v3/orders");
    assert_eq!(seen.header("authorization"), Some("Basic Y2tfbGl2ZTpjc19saXZl"));
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["group"], "integration-management");
    assert_eq!(rec["client_ip"], "50.18.194.14");
    assert_eq!(rec["peer_ip"], "127.0.0.100");
}

#[tokio::test]
async fn spoofed_forwarding_header_from_untrusted_peer_is_ignored() {
    let g = InProcess::start().await;
    for header in ["X-Forwarded-For", "X-Real-IP", "Forwarded"] {
        let value = if header == "Forwarded" { "for=50.18.194.14" } else { "50.18.194.14" };
        let r = g.call(client_from("127.0.0.3").get(IN_PROCESS, "/wp-json/wc/v3/orders").header(header, value)).await;
        assert_eq!(r.status, 401, "{header}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Restricted\", charset=\"UTF-8\""));
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn near_miss_addresses_are_not_admitted() {
    let g = InProcess::start().await;
    for ip in ["50.18.194.13", "50.18.194.15", "54.241.171.181", "54.241.171.179", "50.18.194.140"] {
        let r = g
            .call(client_from("127.0.0.100").get(IN_PROCESS, "/wp-json/wc/v3/orders").header("X-Forwarded-For", ip))
            .await;
        assert_eq!(r.status, 401, "{ip}");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn login_admits_and_strips_the_guards_credentials() {
    let g = InProcess::start().await;
    let r = g.call(client_from("127.0.0.3").get(IN_PROCESS, "/shop").basic("alice", ALICE)).await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header("authorization"), None);
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "auth_ok");
    assert_eq!(rec["user"], "alice");
    let r = g.call(client_from("127.0.0.3").get(IN_PROCESS, "/shop").basic("alice", "wrong")).await;
    assert_eq!(r.status, 401);
    assert_eq!(g.record(2).await["decision"], "auth_fail");
    let r = g.call(client_from("127.0.0.3").get(IN_PROCESS, "/shop").basic("mallory", ALICE)).await;
    assert_eq!(r.status, 401);
    assert_eq!(g.record(3).await["error"], "unknown user");
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn office_is_admitted_to_admin_and_others_are_denied() {
    let g = InProcess::start().await;
    assert_eq!(g.call(client_from("127.0.0.2").get(IN_PROCESS, "/wp-admin/")).await.status, 200);
    let r = g.call(client_from("127.0.0.3").get(IN_PROCESS, "/wp-admin/").basic("alice", ALICE)).await;
    assert_eq!(r.status, 403);
    let rec = g.record(2).await;
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["rule"], "admin");
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn open_rule_forwards_everyone() {
    let g = InProcess::start().await;
    assert_eq!(g.call(client_from("127.0.0.3").get(IN_PROCESS, "/feed/rss")).await.status, 200);
    assert_eq!(g.record(1).await["decision"], "open");
}

fn proxy_listener() -> GuardOptions {
    GuardOptions { listeners: "  - addr: \"127.0.0.1:0\"\n    proxy_protocol: true\n".into(), ..Default::default() }
}

/// Behind a TCP load balancer the PROXY header's address is the peer.
#[tokio::test]
async fn proxy_protocol_v1_address_is_the_peer() {
    let g = TestGuard::start_with(proxy_listener()).await;
    let req = b"PROXY TCP4 50.18.194.14 127.0.0.1 40000 443\r\nGET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    let r = raw("127.0.0.7".parse().unwrap(), g.addr(), req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = g.record(1).await;
    assert_eq!(rec["peer_ip"], "50.18.194.14");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(g.upstream.last().header("x-forwarded-for"), Some("50.18.194.14"));
    // Any other address in the header is just another client.
    let req = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\nGET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw("127.0.0.7".parse().unwrap(), g.addr(), req).await.status, 401);
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn proxy_protocol_v2_address_is_the_peer() {
    let g = TestGuard::start_with(proxy_listener()).await;
    let mut req = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    req.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    req.extend_from_slice(&[54, 241, 171, 180, 127, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    req.extend_from_slice(b"GET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    let r = raw("127.0.0.7".parse().unwrap(), g.addr(), &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(g.record(1).await["peer_ip"], "54.241.171.180");
}

/// On a proxy_protocol listener a connection without a valid header is closed unanswered.
#[tokio::test]
async fn proxy_protocol_listener_closes_connections_without_a_header() {
    let g = TestGuard::start_with(proxy_listener()).await;
    for bytes in [
        &b"GET /wp-json/wc/v3/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"[..],
        b"PROXY TCP4 50.18.194.999 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    ] {
        assert!(raw_maybe("127.0.0.7".parse().unwrap(), g.addr(), bytes).await.is_none());
    }
    assert_eq!(g.upstream.count(), 0);
}
