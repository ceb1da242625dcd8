//! `cartguard explain`: the decision trace for one imagined request, from the
//! same `decide` the server runs, in words a shop owner can act on.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::Config;
use crate::policy::basic_auth::CredentialsError;
use crate::policy::client_ip::Resolution;
use crate::policy::rules::MatchedBy;
use crate::policy::{decide, Outcome, RequestFacts};
use crate::policy::{Mode, Others};
use crate::report::{group_line, rule_line};

pub struct Question {
    pub ip: IpAddr,
    pub peer: Option<IpAddr>,
    pub headers: Vec<String>,
    pub user: Option<String>,
    pub method: String,
    pub target: String,
}

pub fn explain(config: &Config, q: &Question) -> Result<String, String> {
    let method = Method::from_bytes(q.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", q.method))?;
    let mut headers = HeaderMap::new();
    for h in &q.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("--header {h:?}: expected 'Name: value'"))?;
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("--header {h:?}: bad header name"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("--header {h:?}: bad header value"))?;
        headers.append(name, value);
    }
    let peer = q.peer.unwrap_or(q.ip);
    // With only --ip, the imagined client connects directly.
    if q.peer.is_some() && q.peer != Some(q.ip) && !headers.contains_key(config.policy.client_ip.header.name()) {
        if let Ok(v) = HeaderValue::from_str(&q.ip.to_string()) {
            if let Ok(n) = HeaderName::from_bytes(config.policy.client_ip.header.name().as_bytes()) {
                let v = if n == "forwarded" {
                    HeaderValue::from_str(&format!("for=\"{}\"", bracket(q.ip))).unwrap_or(v)
                } else {
                    v
                };
                headers.insert(n, v);
            }
        }
    }
    if let Some(user) = &q.user {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:(password not checked)"));
        if let Ok(v) = HeaderValue::from_str(&format!("Basic {token}")) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    let (path, query) = match q.target.split_once('?') {
        Some((p, qs)) => (p, Some(qs)),
        None => (q.target.as_str(), None),
    };
    let d = decide(&config.policy, &RequestFacts { peer, method: &method, path, query, headers: &headers });
    let p = &config.policy;
    let mut out = String::new();
    let _ = writeln!(out, "request   {} {}", method, q.target);
    let _ = writeln!(out, "\nclient address");
    let trusted = if d.client.peer_trusted { "a trusted proxy" } else { "not a trusted proxy" };
    let _ = writeln!(out, "  peer {} is {trusted}", d.client.peer);
    let how = match &d.client.how {
        Resolution::Peer if !headers.is_empty() && headers.contains_key(p.client_ip.header.name()) => {
            format!(
                "its {} header is ignored (only trusted proxies are believed); client = peer",
                p.client_ip.header.name()
            )
        }
        Resolution::Peer => "client = peer".into(),
        Resolution::TrustedPeerNoHeader => {
            format!("no {} header; client = peer", p.client_ip.header.name())
        }
        Resolution::Header => format!("{} walked from the right, skipping trusted proxies", p.client_ip.header.name()),
        Resolution::Malformed(why) => format!("{} is unusable ({why}); client = peer", p.client_ip.header.name()),
    };
    let _ = writeln!(out, "  {how}\n  client = {}", d.client.ip);
    let _ = writeln!(out, "\ngroups");
    for i in 0..p.groups.len() {
        let member = d.member_of & (1 << i) != 0;
        let _ = writeln!(out, "  {}  {}", group_line(p, i, 6), if member { "<- client is a member" } else { "" });
    }
    let _ = writeln!(out, "\nrules (first match wins)");
    for i in 0..p.rules.len() {
        let mark = match (d.rule == Some(i), &d.matched_by) {
            (true, Some(MatchedBy::Path)) => "<- matched (path)".to_string(),
            (true, Some(MatchedBy::Query(n, v))) => format!("<- matched (query {n}={v})"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  {}  {mark}", rule_line(p, i));
    }
    let _ = writeln!(out, "\ndecision");
    let rule = d.rule.map(|i| &p.rules[i]);
    let rule_name = rule.map(|r| r.name.as_str()).unwrap_or("(none)");
    let verdict = match &d.outcome {
        Outcome::BadRequest { status, reason } => format!("{} bad_request: {reason}; nothing is forwarded", status.as_u16()),
        Outcome::Allow => format!(
            "allow: {} is in group {:?}, admitted by rule {rule_name:?} without a login; its own Authorization header is forwarded untouched.\n  If this client still gets 401/403, the cart sent it (the access log says source=upstream): check the API credentials, and that the cart trusts X-Forwarded-Proto: https.",
            d.client.ip,
            d.group.map(|g| p.groups[g].name.as_str()).unwrap_or("?")
        ),
        Outcome::Open => format!("open: rule {rule_name:?} lets everyone through; forwarded"),
        Outcome::Deny => format!("403 deny: {} is in none of the allow groups of rule {rule_name:?}, which denies others", d.client.ip),
        Outcome::Authenticate(creds) => {
            let who = format!("{} is in none of the allow groups of rule {rule_name:?}, which asks others to log in", d.client.ip);
            match (creds, &q.user) {
                (Err(CredentialsError::Missing), _) => format!("401 challenge: {who}; without credentials the guard answers 401 with WWW-Authenticate: {}", config.auth.challenge.to_str().unwrap_or("")),
                (Err(e), _) => format!("401/400: {who}; the Authorization header is unusable: {}", e.reason()),
                (Ok(_), Some(user)) if config.users.contains(user) => format!("auth: {who}; user {user:?} exists: the right password is forwarded (auth_ok), a wrong one gets 401 (auth_fail) and counts toward a ban"),
                (Ok(_), Some(user)) => format!("401 auth_fail: {who}; user {user:?} is not in the users table"),
                (Ok(_), None) => format!("auth: {who}; the credentials sent are verified against the users table (401 if wrong). If this is the integration's own API key, its address is missing from the allow groups"),
            }
        }
    };
    let _ = writeln!(out, "  {verdict}");
    if matches!(rule.map(|r| r.others), Some(Others::Auth) | Some(Others::Deny))
        && d.group.is_none()
        && !d.client.peer_trusted
        && !p.client_ip.trusted_proxies.is_empty()
    {
        let _ = writeln!(
            out,
            "  note: the peer is not in client_ip.trusted_proxies, so forwarding headers from it were not used"
        );
    }
    if p.mode == Mode::Report {
        let _ = writeln!(out, "  note: mode is report: this is logged, but the request is forwarded anyway");
    }
    if let Some(path) = &d.path {
        if path.forward != path.display() || q.target.starts_with("//") {
            let _ = writeln!(out, "  forwarded path: {}", path.forward);
        }
    }
    Ok(out)
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let yaml = r#"
listen: [{addr: "127.0.0.1:0"}]
upstream: {url: "http://127.0.0.1:9"}
client_ip: {trusted_proxies: ["10.0.0.1/32"]}
rules:
  - {name: cart-api, path_prefix: /wp-json/wc/, allow: [integration-management], others: auth}
  - {name: site, path_prefix: /, others: deny}
"#;
        Config::from_yaml(yaml, "t.yaml".as_ref()).unwrap()
    }

    fn ask(ip: &str, peer: Option<&str>, headers: &[&str], target: &str) -> String {
        explain(
            &config(),
            &Question {
                ip: ip.parse().unwrap(),
                peer: peer.map(|p| p.parse().unwrap()),
                headers: headers.iter().map(|s| s.to_string()).collect(),
                user: None,
                method: "GET".into(),
                target: target.into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn integration_direct_is_allowed_and_401_points_at_the_cart() {
        let out = ask("50.18.194.14", None, &[], "/wp-json/wc/v3/orders");
        assert!(out.contains("allow: 50.18.194.14 is in group \"integration-management\""), "{out}");
        assert!(out.contains("the cart sent it"), "{out}");
    }

    #[test]
    fn through_an_untrusted_proxy_the_header_is_ignored() {
        let out = ask("50.18.194.14", Some("10.0.0.2"), &[], "/wp-json/wc/v3/orders");
        assert!(out.contains("header is ignored"), "{out}");
        assert!(out.contains("401 challenge"), "{out}");
        let out = ask("50.18.194.14", Some("10.0.0.1"), &[], "/wp-json/wc/v3/orders");
        assert!(out.contains("allow:"), "{out}");
    }

    #[test]
    fn deny_and_bad_request() {
        assert!(ask("198.51.100.1", None, &[], "/wp-admin").contains("403 deny"));
        assert!(ask("198.51.100.1", None, &[], "/a/../b").contains("400 bad_request"));
    }
}
