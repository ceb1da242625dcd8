//! Which rule a path falls under, and path tricks, through the handler and the
//! recording upstream (raw-byte targets through the real listener).

use crate::common::*;

/// Raw request bytes (the target may hold any byte) from the integration via the trusted proxy.
fn integration_raw(target: &[u8]) -> Vec<u8> {
    let mut out = b"GET ".to_vec();
    out.extend_from_slice(target);
    out.extend_from_slice(
        b" HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 50.18.194.14\r\nConnection: close\r\n\r\n",
    );
    out
}

/// The office (127.0.0.2) is admitted by `site` but must log in on `cart-api`:
/// 401 means cart-api matched, 200 means the request fell through to site.
async fn office_status(g: &impl Serve, target: &str) -> u16 {
    g.serve(client_from("127.0.0.2").get(g.addr(), target)).await.status
}

#[tokio::test]
async fn path_prefix_matches_whole_segments_only() {
    let g = TestGuard::start().await;
    let cases: &[(&str, &str, u16)] = &[
        ("/wp-json/wc", "cart-api", 401),
        ("/wp-json/wc/", "cart-api", 401),
        ("/wp-json/wc/v3/orders", "cart-api", 401),
        ("/wp-json/wcx", "site", 200),
        ("/wp-json/wcx/v3/orders", "site", 200),
        ("/wp-json/w", "site", 200),
        ("/wp-json", "site", 200),
        ("/wp-adminx", "site", 200),
        ("/wp-admin", "admin", 200),
    ];
    for (i, (target, rule, status)) in cases.iter().enumerate() {
        assert_eq!(office_status(&g, target).await, *status, "{target}");
        let rec = g.record(i + 1).await;
        assert_eq!(rec["rule"], *rule, "{target}");
    }
}

#[tokio::test]
async fn path_prefix_matches_case_insensitively() {
    let g = TestGuard::start().await;
    for (i, target) in ["/WP-JSON/WC/v3", "/Wp-Json/Wc/v3/orders", "/wp-json/%57%43/v3"].iter().enumerate() {
        assert_eq!(office_status(&g, target).await, 401, "{target}");
        assert_eq!(g.record(i + 1).await["rule"], "cart-api", "{target}");
    }
    // The integration is admitted and the path goes upstream with its case untouched.
    let r = integration(&g, "/WP-JSON/WC/v3").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().target, "/WP-JSON/WC/v3");
    assert_eq!(g.record(4).await["rule"], "cart-api");
}

#[tokio::test]
async fn rest_route_query_hits_the_api_rule() {
    let g = InProcess::start().await;
    let cases: &[(&str, &str, u16)] = &[
        ("/?rest_route=/wc/v3/orders", "cart-api", 401),
        ("/index.php?rest_route=/wc/v3/orders", "cart-api", 401),
        ("/?rest_route=/wc", "cart-api", 401),
        ("/?rest_route=/WC/v3", "cart-api", 401),
        ("/?rest_route=//wc//v3", "cart-api", 401),
        ("/?rest%5Froute=/wc/v3/orders", "cart-api", 401),
        ("/?rest.route=/wc/v3/orders", "cart-api", 401),
        ("/?rest_route[]=/wc/v3/orders", "cart-api", 401),
        ("/?rest_route=/wp/v2/posts", "site", 200),
        ("/?rest_route=/wcx/v3", "site", 200),
        ("/?xrest_route=/wc/v3", "site", 200),
    ];
    for (i, (target, rule, status)) in cases.iter().enumerate() {
        assert_eq!(office_status(&g, target).await, *status, "{target}");
        assert_eq!(g.record(i + 1).await["rule"], *rule, "{target}");
    }
}

#[tokio::test]
async fn repeated_rest_route_is_checked_in_every_occurrence() {
    let g = InProcess::start().await;
    let targets = [
        "/?rest_route=/wp/v2/posts&rest_route=/wc/v3/orders",
        "/?rest_route=/wc/v3/orders&rest_route=/wp/v2/posts",
        "/index.php?a=1&rest_route=/wp/v2&b=2&rest_route=/wc/v3/orders",
    ];
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(office_status(&g, target).await, 401, "{target}");
        assert_eq!(g.record(i + 1).await["rule"], "cart-api", "{target}");
    }
    assert_eq!(g.upstream.count(), 0);
}

/// The cart is PHP: every spelling PHP reads as `rest_route` hits the query rule, and
/// two spellings with different values (PHP keeps one, the guard cannot know which) are 400.
#[tokio::test]
async fn php_spellings_of_a_parameter_hit_the_query_rule_and_ambiguous_ones_are_refused() {
    let g = TestGuard::start().await;
    let cases: &[(&str, Option<&str>, u16)] = &[
        ("/?rest[route=/wc/v3/orders", Some("cart-api"), 401),
        ("/?++rest_route=/wc/v3/orders", Some("cart-api"), 401),
        ("/?rest%20route=/wc/v3/orders", Some("cart-api"), 401),
        ("/?rest_route[x][y]=/wc/v3/orders", Some("cart-api"), 401),
        ("/?rest_route=/wp/v2/posts&rest.route=/wc/v3/orders", None, 400),
        ("/?rest.route=/wp/v2&rest_route=/wp/v2", Some("site"), 200),
        ("/?f[status]=1&f[type]=2", Some("site"), 200),
    ];
    for (i, (target, rule, status)) in cases.iter().enumerate() {
        assert_eq!(office_status(&g, target).await, *status, "{target}");
        let rec = g.record(i + 1).await;
        assert_eq!(rec["rule"].as_str(), *rule, "{target}: {rec}");
        if *status == 400 {
            assert!(rec["error"].as_str().is_some_and(|e| e.contains("as PHP reads names")), "{rec}");
        }
    }
    assert_eq!(g.upstream.count(), 2);
}

#[tokio::test]
async fn encoded_rest_route_hits_the_api_rule() {
    let g = TestGuard::start().await;
    let targets = ["/?rest_route=%2Fwc%2Fv3%2Forders", "/?rest_route=%2fwc%2f", "/index.php?rest_route=%2F%77c%2Fv3"];
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(office_status(&g, target).await, 401, "{target}");
        assert_eq!(g.record(i + 1).await["rule"], "cart-api", "{target}");
    }
    // Admitted through the query rule, the query goes upstream byte for byte.
    let r = integration(&g, "/?rest_route=%2Fwc%2Fv3%2Forders&per_page=5").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().target, "/?rest_route=%2Fwc%2Fv3%2Forders&per_page=5");
    assert_eq!(g.record(4).await["rule"], "cart-api");
}

#[tokio::test]
async fn methods_restrict_a_rule() {
    let body = r#"
rules:
  - name: read-api
    path_prefix: /api
    methods: [GET]
    others: open
  - name: site
    path_prefix: /
    others: deny
"#;
    let g = TestGuard::with_body(body).await;
    let c = client_from("127.0.0.3");
    assert_eq!(c.get(g.addr(), "/api/orders").send().await.status, 200);
    assert_eq!(g.record(1).await["rule"], "read-api");
    for (i, method) in ["POST", "PUT", "DELETE"].iter().enumerate() {
        let r = c.request(g.addr(), method, "/api/orders").body(b"{}").send().await;
        assert_eq!(r.status, 403, "{method}");
        let rec = g.record(i + 2).await;
        assert_eq!(rec["rule"], "site", "{method}");
        assert_eq!(rec["decision"], "deny", "{method}");
    }
    assert_eq!(g.upstream.count(), 1);
    assert_eq!(g.upstream.last().method, "GET");
}

/// Every path trick (dot segments, encoded slashes, ...), sent by a client every rule admits: 400, logged, never forwarded.
#[tokio::test]
async fn path_tricks_are_refused_logged_and_not_forwarded() {
    let g = TestGuard::start().await;
    let tricks: &[&[u8]] = &[
        b"/wp-json/./wc/v3",
        b"/wp-json/wc/../../wp-admin/",
        b"/wp-json/%2e%2e/wp-admin",
        b"/wp-json/%2E/wc/v3",
        b"/wp-json/.%2e/wp-admin",
        b"/wp-json/%2E%2e/wp-admin",
        b"/..",
        b"/wp-json%2fwc/v3",
        b"/wp-json%2Fwc/v3",
        b"/wp-json%5cwc/v3",
        b"/wp-json%5Cwc/v3",
        b"/wp-json\\wc/v3",
        b"/a%00b",
        b"/a%0d%0ab",
        b"/a%7fb",
        b"/a\x01b",
        b"/a\x7fb",
        b"/a b",
        b"/a\tb",
        b"/a\"b",
        b"/a<b",
        b"/a{b}",
        b"/a|b",
        b"/caf\xc3\xa9",
        b"/a\xffb",
        b"/%zz",
        b"/abc%",
        b"/abc%4",
        b"/?a=%zz",
        b"/?a=b%",
        b"/?a=b c",
        b"/?a=\x01",
        b"/?a=b\\c",
    ];
    let mut parser_refused = Vec::new();
    for (i, trick) in tricks.iter().enumerate() {
        let shown = String::from_utf8_lossy(trick).into_owned();
        let r = raw_maybe("127.0.0.100".parse().unwrap(), g.addr(), &integration_raw(trick)).await;
        let r = r.unwrap_or_else(|| panic!("{shown:?}: connection closed without a response"));
        assert_eq!(r.status, 400, "{shown:?}: {}", r.text());
        let rec = g.record(i + 1).await;
        assert_eq!(rec["decision"], "bad_request", "{shown:?}: {rec}");
        assert_eq!(rec["status"], 400, "{shown:?}: {rec}");
        assert_eq!(rec["source"], "guard", "{shown:?}: {rec}");
        let reason = rec["error"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{shown:?}: no reason in {rec}");
        if rec["method"] == "-" {
            // Refused by hyper's parser before the guard saw it; still one access record.
            assert!(reason.contains("HTTP parser"), "{shown:?}: {rec}");
            parser_refused.push(shown);
        } else {
            assert_eq!(rec["rule"], serde_json::Value::Null, "{shown:?}: no rule may match a bad path");
        }
    }
    assert_eq!(g.upstream.count(), 0, "a trick was forwarded: {:?}", g.upstream.requests());
    // With hyper 1.12 / http 1.5 the parser itself refuses raw control bytes, space, tab, '<', invalid
    // UTF-8 and raw bytes in the query that it does not allow; each of those still has its access record.
    assert!(parser_refused.iter().any(|t| t.contains('\u{1}')), "{parser_refused:?}");
    // Nothing else was written: one record per trick.
    assert_eq!(g.raw_log_lines(tricks.len()).await.len(), tricks.len());
}

#[tokio::test]
async fn reasons_name_the_trick() {
    let g = TestGuard::start().await;
    let cases: &[(&str, &str)] = &[
        ("/wp-json/%2e%2e/wp-admin", "dot segment"),
        ("/wp-json%2Fwc", "encoded slash"),
        ("/wp-json\\wc", "backslash"),
        ("/a%00b", "control byte"),
        ("/a|b", "forbidden byte 0x7c"),
        ("/%zz", "percent-encoding"),
        ("/?a=%zz", "percent-encoding"),
    ];
    for (i, (target, reason)) in cases.iter().enumerate() {
        let r = raw("127.0.0.100".parse().unwrap(), g.addr(), &integration_raw(target.as_bytes())).await;
        assert_eq!(r.status, 400, "{target}");
        let rec = g.record(i + 1).await;
        let error = rec["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{target}: {error:?} should mention {reason:?}");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn double_slashes_are_collapsed_and_forwarded_as_matched() {
    let g = TestGuard::start().await;
    let cases: &[(&str, &str)] = &[
        ("//wp-json//wc/v3", "/wp-json/wc/v3"),
        ("/wp-json///wc//v3/orders/", "/wp-json/wc/v3/orders/"),
        ("/wp-json/%77c/v3", "/wp-json/wc/v3"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b/%7Euser", "/a%20b/~user"),
        ("/100%25", "/100%25"),
    ];
    for (target, forwarded) in cases {
        let r = integration(&g, target).send().await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(g.upstream.last().target, *forwarded, "{target}");
    }
    // Collapsing happens before matching: //wp-json//wc is the API, and office must log in there.
    assert_eq!(office_status(&g, "//wp-json//wc/v3").await, 401);
    assert_eq!(g.record(cases.len() + 1).await["rule"], "cart-api");
    assert_eq!(g.upstream.count(), cases.len());
}

#[tokio::test]
async fn query_is_forwarded_unchanged() {
    let g = TestGuard::start().await;
    let targets = [
        "/wp-json/wc/v3/orders?per_page=5&after=2024-01-01T00%3A00%3A00&x=a+b",
        "/?rest_route=/wc/v3/orders&consumer_key=ck_1&consumer_secret=cs_2",
        "/index.php?route=api/sale|add&a[]=1&b={x}",
        "/shop?",
        // Encoded control bytes are data in a query value; they stay encoded.
        "/?note=line1%0D%0Aline2%00",
    ];
    for target in targets {
        let r = integration(&g, target).send().await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(g.upstream.last().target, target);
    }
    // Double slashes in the path collapse; the query next to them does not change.
    let r = integration(&g, "//wp-json//wc/v3?rest_route=//wc//v3&q=%2F%2F").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().target, "/wp-json/wc/v3?rest_route=//wc//v3&q=%2F%2F");
}

/// The http crate's URI parser would cut the target at '#' (and the cart would match one path
/// while the guard matched another); the framing check refuses a raw '#' before that.
#[tokio::test]
async fn raw_hash_in_the_target_is_refused_and_never_forwarded() {
    let g = TestGuard::start().await;
    let office = "127.0.0.2".parse().unwrap();
    let office_req = |t: &str| format!("GET {t} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    for (i, target) in ["/wp-json/wc/v3#/../../shop", "/shop?rest_route=/wp/v2#&rest_route=/wc/v3"].iter().enumerate() {
        let r = raw(office, g.addr(), office_req(target).as_bytes()).await;
        assert_eq!(r.status, 400, "{target}");
        let rec = g.record(i + 1).await;
        assert!(rec["error"].as_str().is_some_and(|e| e.contains("raw '#'")), "{rec}");
    }
    let r = raw("127.0.0.100".parse().unwrap(), g.addr(), &integration_raw(b"/wp-json/wc/v3#/../../wp-admin")).await;
    assert_eq!(r.status, 400);
    assert_eq!(g.upstream.count(), 0);
    // Encoded, it is an ordinary byte of the path.
    let r = raw(office, g.addr(), office_req("/shop%23x").as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.last().target, "/shop%23x");
}
