//! The per-request admission decision: client address (X-Forwarded-For from a
//! trusted proxy), rule match and allowlist lookup, with 2 CIDRs (the built-in
//! integration-management group) and with 10,000 more in an allow group.
//!
//!   cargo bench --bench decision
//!
//! divan prints fastest / slowest / median / mean per case; the median is the figure to quote.

use std::net::IpAddr;

use cartguard::config::Config;
use cartguard::policy::{decide, Outcome, Policy, RequestFacts};
use divan::{black_box, Bencher};
use http::{HeaderMap, HeaderValue, Method};

fn main() {
    divan::main();
}

const BASE: &str = r#"
listen: [{addr: "127.0.0.1:0"}]
upstream: {url: "http://127.0.0.1:9"}
status: {listen: null}
client_ip: {trusted_proxies: ["127.0.0.1/32"]}
"#;

/// A config whose rules admit integration-management (2 CIDRs) and, with
/// `extra` > 0, a group of `extra` non-adjacent /24s that the client is not in.
fn policy(extra: u32) -> Policy {
    let mut yaml = String::from(BASE);
    let allow = if extra > 0 {
        yaml.push_str("groups:\n  partners:\n");
        for i in 0..extra {
            // 11.0.0.0 + i * 512: /24s with a gap between them, so none merge.
            let a = 0x0b00_0000u32 + i * 512;
            yaml.push_str(&format!("    - \"{}/24\"\n", std::net::Ipv4Addr::from(a)));
        }
        "[integration-management, partners]"
    } else {
        "[integration-management]"
    };
    yaml.push_str(&format!(
        "rules:
  - name: cart-api
    path_prefix: /wp-json/wc/
    query: {{rest_route: /wc/}}
    allow: {allow}
    others: auth
  - name: site
    path_prefix: /
    allow: {allow}
    others: auth
"
    ));
    let config = Config::from_yaml(&yaml, "bench.yaml".as_ref()).expect("bench config is valid");
    let cidrs: usize = config.policy.groups.iter().map(|g| g.set.cidrs().len()).sum();
    assert_eq!(cidrs, 2 + extra as usize, "CIDRs in the groups");
    config.policy
}

fn headers(xff: &str, authorization: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("shop.example"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
    if let Some(a) = authorization {
        h.insert("authorization", HeaderValue::from_str(a).unwrap());
    }
    h
}

fn run(bencher: Bencher, extra: u32, xff: &str, authorization: Option<&str>, allowed: bool) {
    let policy = policy(extra);
    let headers = headers(xff, authorization);
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let method = Method::GET;
    let facts = RequestFacts { peer, method: &method, path: "/wp-json/wc/v3/orders", query: None, headers: &headers };
    // The case really is what its name says.
    let d = decide(&policy, &facts);
    assert_eq!(matches!(d.outcome, Outcome::Allow), allowed, "{d:?}");
    assert_eq!(matches!(d.outcome, Outcome::Authenticate(Ok(_))), !allowed, "{d:?}");
    bencher.bench_local(|| decide(black_box(&policy), black_box(&facts)));
}

/// Integration Management through the trusted proxy: admitted by address.
#[divan::bench(args = [0, 10_000], name = "allowlisted_xff")]
fn allowlisted(bencher: Bencher, extra_cidrs: u32) {
    run(bencher, extra_cidrs, "50.18.194.14", None, true);
}

/// Anyone else through the trusted proxy, with Basic credentials to check.
#[divan::bench(args = [0, 10_000], name = "not_allowlisted_xff_basic")]
fn not_allowlisted(bencher: Bencher, extra_cidrs: u32) {
    // bench:secret
    run(bencher, extra_cidrs, "198.51.100.7, 127.0.0.1", Some("Basic YmVuY2g6c2VjcmV0"), false);
}
