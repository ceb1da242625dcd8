//! Who gets in: allowlisted addresses, trusted proxies, logins, denials.

use crate::common::*;

#[tokio::test]
async fn integration_via_trusted_proxy_passes_with_its_own_authorization() {
    let g = TestGuard::start().await;
    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-json/wc/v3/orders")
        .header("X-Forwarded-For", "50.18.194.14")
        .basic("ck_live", "cs_live")
        .send()
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
    let g = TestGuard::start().await;
    for header in ["X-Forwarded-For", "X-Real-IP", "Forwarded"] {
        let value = if header == "Forwarded" { "for=50.18.194.14" } else { "50.18.194.14" };
        let r = client_from("127.0.0.3").get(g.addr(), "/wp-json/wc/v3/orders").header(header, value).send().await;
        assert_eq!(r.status, 401, "{header}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Restricted\", charset=\"UTF-8\""));
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn near_miss_addresses_are_not_admitted() {
    let g = TestGuard::start().await;
    for ip in ["50.18.194.13", "50.18.194.15", "54.241.171.181", "54.241.171.179", "50.18.194.140"] {
        let r = client_from("127.0.0.100")
            .get(g.addr(), "/wp-json/wc/v3/orders")
            .header("X-Forwarded-For", ip)
            .send()
            .await;
        assert_eq!(r.status, 401, "{ip}");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn login_admits_and_strips_the_guards_credentials() {
    let g = TestGuard::start().await;
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().header("authorization"), None);
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "auth_ok");
    assert_eq!(rec["user"], "alice");
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "wrong").send().await;
    assert_eq!(r.status, 401);
    assert_eq!(g.record(2).await["decision"], "auth_fail");
    let r = client_from("127.0.0.3").get(g.addr(), "/shop").basic("mallory", ALICE).send().await;
    assert_eq!(r.status, 401);
    assert_eq!(g.record(3).await["error"], "unknown user");
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn office_is_admitted_to_admin_and_others_are_denied() {
    let g = TestGuard::start().await;
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await.status, 200);
    let r = client_from("127.0.0.3").get(g.addr(), "/wp-admin/").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 403);
    let rec = g.record(2).await;
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["rule"], "admin");
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn open_rule_forwards_everyone() {
    let g = TestGuard::start().await;
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/feed/rss").send().await.status, 200);
    assert_eq!(g.record(1).await["decision"], "open");
}
