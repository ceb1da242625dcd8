//! The path normaliser, the query check and rule matching.
//!
//! The input (if UTF-8) is a request target: split at the first '?' into the
//! path and the query. Invariants for an accepted path: what is forwarded has
//! no "//", no dot segment, no encoded separator, starts with '/', and
//! normalises to itself with the same decoded form; `decide` never panics,
//! refuses exactly what the normaliser and query check refuse, and picks the
//! same rule for the forwarded path as for the original (so the guard and the
//! cart cannot disagree about which rule a path falls under).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use cartguard::config::Config;
use cartguard::policy::path::{check_query, normalize};
use cartguard::policy::{decide, Decision, Outcome, Policy, RequestFacts};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

const YAML: &str = r#"
listen: [{addr: "127.0.0.1:0"}]
upstream: {url: "http://127.0.0.1:9"}
client_ip: {trusted_proxies: ["127.0.0.1/32"]}
groups: {office: ["203.0.113.0/24"]}
rules:
  - name: cart-api
    path_prefix: /wp-json/wc/
    query: {rest_route: /wc/}
    allow: [integration-management]
    others: auth
  - name: admin
    path_prefix: /wp-admin
    allow: [office]
    others: deny
  - name: legacy-api
    path_prefix: /wc-api/
    query: {route: api/}
    others: deny
  - name: feed
    path_prefix: /feed
    methods: [GET]
    others: open
  - name: site
    path_prefix: /
    allow: [integration-management, office]
    others: auth
"#;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Config::from_yaml(YAML, "fuzz.yaml".as_ref()).expect("fuzz policy").policy)
}

fn run(peer: IpAddr, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> Decision {
    decide(policy(), &RequestFacts { peer, method, path, query, headers })
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let normalized = normalize(path);
    let query_ok = query.map_or(Ok(()), check_query);

    if let Ok(n) = &normalized {
        let f = n.forward.as_str();
        assert!(f.starts_with('/'), "{f:?}");
        assert!(!f.contains("//"), "{f:?}");
        assert!(!f.contains("/./") && !f.contains("/../"), "{f:?}");
        assert!(f.split('/').all(|s| s != "." && s != ".."), "{f:?}");
        let upper = f.to_ascii_uppercase();
        assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{f:?}");
        assert!(!n.decoded.windows(2).any(|w| w == b"//"), "{:?}", n.display());
        assert!(!n.decoded.iter().any(|b| b.is_ascii_control() || *b == b'\\'), "{:?}", n.display());
        let again = normalize(f).unwrap_or_else(|e| panic!("forwarded {f:?} is refused: {e}"));
        assert_eq!(again.decoded, n.decoded, "{f:?} decodes differently");
        assert_eq!(again.forward, n.forward, "forwarding is not idempotent");
    }

    let headers = HeaderMap::new();
    let mut im_via_proxy = HeaderMap::new();
    im_via_proxy.insert("x-forwarded-for", http::HeaderValue::from_static("50.18.194.14"));
    let cases: [(IpAddr, &HeaderMap); 3] = [
        ([198, 51, 100, 1].into(), &headers),
        ([203, 0, 113, 9].into(), &headers),
        ([127, 0, 0, 1].into(), &im_via_proxy),
    ];
    for method in [Method::GET, Method::POST] {
        for (peer, h) in cases {
            let d = run(peer, &method, path, query, h);
            let refused = matches!(d.outcome, Outcome::BadRequest { .. });
            assert_eq!(refused, normalized.is_err() || query_ok.is_err(), "{target:?}: {:?}", d.outcome);
            if refused {
                assert_eq!(d.rule, None);
                continue;
            }
            assert_eq!(d.path.as_ref(), normalized.as_ref().ok());
            // Forwarded path → same rule, same way of matching, same outcome kind.
            let fwd = &d.path.as_ref().unwrap().forward;
            let d2 = run(peer, &method, fwd, query, h);
            assert_eq!((d2.rule, &d2.matched_by), (d.rule, &d.matched_by), "{target:?} vs forwarded {fwd:?}");
            assert_eq!(std::mem::discriminant(&d2.outcome), std::mem::discriminant(&d.outcome));
        }
    }
});
