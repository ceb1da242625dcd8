//! `cartguard explain`: the decision trace for one imagined request, from the
//! same `decide` and `admit` the server runs, in words a shop owner can act on.
//!
//! What admission needs from outside (bans, password checks) comes from an
//! [`ExplainGate`]: the running guard's bans (read from its /status) and the
//! users table, checked in this process. It never records a failure.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use std::future::Future;
use std::time::Duration;

use crate::admit::{admit, Arrival, Gate, Verification};
use crate::config::Config;
use crate::policy::basic_auth::Credentials;
use crate::policy::basic_auth::CredentialsError;
use crate::policy::client_ip::Resolution;
use crate::policy::rules::MatchedBy;
use crate::policy::{decide, Outcome, RequestFacts};
use crate::policy::{Mode, Others};
use crate::report::{group_line, rule_line};
use crate::users::Users;
use crate::verdict::{Action, DecisionLabel, Verdict};

pub struct Question {
    pub ip: IpAddr,
    pub peer: Option<IpAddr>,
    pub headers: Vec<String>,
    pub user: Option<String>,
    /// The password to check for `user`; None leaves the login unchecked.
    pub password: Option<String>,
    pub method: String,
    pub target: String,
    /// The request arrives on a plain listener with `redirect_https`.
    pub redirect_https: bool,
}

/// The trace and the verdict it ends in.
pub struct Explanation {
    pub text: String,
    pub verdict: Verdict,
}

/// Bans and password checks for explain: nothing recorded, nothing banned.
struct ExplainGate<'a> {
    users: &'a Users,
    bans: &'a [(IpAddr, Duration)],
    /// False when only a user name was given: the login is then left unchecked.
    check_password: bool,
}

impl Gate for ExplainGate<'_> {
    fn banned_for(&self, client: IpAddr) -> Option<Duration> {
        self.bans.iter().find(|(ip, _)| *ip == client).map(|(_, left)| *left)
    }

    fn verify(&self, creds: Credentials) -> impl Future<Output = Verification> + Send {
        let v = if !self.users.contains(&creds.user) {
            Verification::UnknownUser
        } else if !self.check_password {
            Verification::Unchecked
        } else if self.users.verify_blocking(&creds) {
            Verification::Verified
        } else {
            Verification::WrongPassword
        };
        std::future::ready(v)
    }
}

/// Traces `q` through the policy and admission. `bans` are the running guard's
/// active bans (empty when it could not be asked).
pub async fn explain(config: &Config, q: &Question, bans: &[(IpAddr, Duration)]) -> Result<Explanation, String> {
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
        let password = q.password.as_deref().unwrap_or("(not checked)");
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
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
            format!("its {} header is ignored (only trusted proxies are believed)", p.client_ip.header.name())
        }
        Resolution::Peer => "the client is the socket peer".into(),
        Resolution::TrustedPeerNoHeader => {
            format!("no {} header: the client is the socket peer", p.client_ip.header.name())
        }
        Resolution::Header => format!("{} walked from the right, skipping trusted proxies", p.client_ip.header.name()),
        Resolution::Malformed(why) => {
            format!("{} is unusable ({why}): the client is the socket peer", p.client_ip.header.name())
        }
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
    let check_password =
        q.password.is_some() || (q.user.is_none() && headers.contains_key(http::header::AUTHORIZATION));
    let gate = ExplainGate { users: &config.users, bans, check_password };
    let verdict = admit(&gate, config, &d, Arrival { redirect_https: q.redirect_https }).await;
    let _ = writeln!(out, "\nverdict\n  {}", verdict_line(&verdict, q));
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
    Ok(Explanation { text: out, verdict })
}

/// What a real request would get: the status, the log's decision label and the reason.
fn verdict_line(v: &Verdict, q: &Question) -> String {
    let user = v.user.as_deref().map(|u| format!(" (user {u:?})")).unwrap_or_default();
    match &v.action {
        Action::Answer(r) => format!("{} {}{user}: {}", r.status.as_u16(), r.label.as_str(), r.reason),
        Action::Forward { not_enforced: Some(r), .. } => format!(
            "forwarded ({}), but enforce mode would answer {} {}: {}",
            v.label.as_str(),
            r.status.as_u16(),
            r.label.as_str(),
            r.reason
        ),
        Action::Forward { strip_authorization, .. } => {
            let unchecked = v.label == DecisionLabel::AuthOk && q.password.is_none();
            let strip = if *strip_authorization { "; the guard's own Authorization header is removed" } else { "" };
            if unchecked {
                format!(
                    "forwarded ({}){user} if the password is right{strip}: not checked (add --password to check it)",
                    v.label.as_str()
                )
            } else {
                format!("forwarded ({}){user}{strip}", v.label.as_str())
            }
        }
    }
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

    fn question(ip: &str, peer: Option<&str>, headers: &[&str], target: &str) -> Question {
        Question {
            ip: ip.parse().unwrap(),
            peer: peer.map(|p| p.parse().unwrap()),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            user: None,
            password: None,
            method: "GET".into(),
            target: target.into(),
            redirect_https: false,
        }
    }

    fn run(config: &Config, q: &Question, bans: &[(IpAddr, Duration)]) -> Explanation {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(explain(config, q, bans)).unwrap()
    }

    fn ask(ip: &str, peer: Option<&str>, headers: &[&str], target: &str) -> String {
        run(&config(), &question(ip, peer, headers, target), &[]).text
    }

    /// bcrypt cost 4 of "secret".
    fn config_with_alice() -> Config {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let yaml = format!(
            r#"
listen: [{{addr: "127.0.0.1:0"}}]
upstream: {{url: "http://127.0.0.1:9"}}
users: {{inline: {{alice: "{hash}"}}}}
rules:
  - {{name: site, path_prefix: /, allow: [integration-management], others: auth}}
"#
        );
        Config::from_yaml(&yaml, "t.yaml".as_ref()).unwrap()
    }

    #[test]
    fn explain_checks_the_password_when_one_is_given() {
        let config = config_with_alice();
        let mut q = question("198.51.100.7", None, &[], "/");
        q.user = Some("alice".into());
        q.password = Some("secret".into());
        let e = run(&config, &q, &[]);
        assert_eq!(e.verdict.label, DecisionLabel::AuthOk, "{}", e.text);
        assert!(e.text.contains("forwarded (auth_ok) (user \"alice\")"), "{}", e.text);
        q.password = Some("wrong".into());
        let e = run(&config, &q, &[]);
        assert_eq!(e.verdict.label, DecisionLabel::AuthFail, "{}", e.text);
        assert!(e.text.contains("401 auth_fail (user \"alice\"): wrong password"), "{}", e.text);
        q.password = None;
        let e = run(&config, &q, &[]);
        assert!(e.text.contains("not checked"), "{}", e.text);
        q.user = Some("mallory".into());
        let e = run(&config, &q, &[]);
        assert!(e.text.contains("401 auth_fail (user \"mallory\"): unknown user"), "{}", e.text);
    }

    #[test]
    fn explain_shows_a_ban_of_the_running_guard() {
        let config = config_with_alice();
        let mut q = question("198.51.100.7", None, &[], "/");
        q.user = Some("alice".into());
        q.password = Some("secret".into());
        let bans = [("198.51.100.7".parse().unwrap(), Duration::from_secs(600))];
        let e = run(&config, &q, &bans);
        assert_eq!(e.verdict.label, DecisionLabel::Banned, "{}", e.text);
        assert!(e.text.contains("429 banned"), "{}", e.text);
        // Another address is not affected by that ban.
        let e = run(&config, &question("198.51.100.8", None, &[], "/"), &bans);
        assert_eq!(e.verdict.label, DecisionLabel::Challenge, "{}", e.text);
    }

    #[test]
    fn explain_models_the_https_redirect() {
        let mut q = question("198.51.100.7", None, &[], "/wp-admin");
        q.redirect_https = true;
        let e = run(&config(), &q, &[]);
        assert_eq!(e.verdict.label, DecisionLabel::Redirect, "{}", e.text);
        q.ip = "50.18.194.14".parse().unwrap();
        q.target = "/wp-json/wc/v3/orders".into();
        let e = run(&config(), &q, &[]);
        assert_eq!(e.verdict.label, DecisionLabel::Allow, "allowlisted clients are not redirected: {}", e.text);
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
