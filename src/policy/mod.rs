//! The admission decision: a plain function of the policy and the request facts.
//!
//! `decide` does no I/O and verifies no password: it says which rule applies,
//! whether the client is in one of its groups, and what must happen next. The
//! access log, `cartguard explain` and the status page all read the same
//! `Decision`, so they can never disagree about why a request was refused.

pub mod basic_auth;
pub mod client_ip;
pub mod groups;
pub mod path;
pub mod php_query;
pub mod rules;

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode};

use basic_auth::{Credentials, CredentialsError};
use client_ip::{ClientAddr, ClientIpConfig};
use groups::IpSet;
use path::NormalizedPath;
use rules::{MatchedBy, Rule};

/// `enforce` answers by the decision; `report` decides and logs but forwards everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// What happens to a client that is in none of the rule's `allow` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Others {
    Auth,
    Deny,
    Open,
}

impl Mode {
    /// The spelling the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

impl Others {
    /// The spelling the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Others::Auth => "auth",
            Others::Deny => "deny",
            Others::Open => "open",
        }
    }
}

/// The validated, immutable admission policy; one snapshot is read per request.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub client_ip: ClientIpConfig,
    pub groups: Vec<Group>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub set: IpSet,
}

/// What the decision needs to know about a request; built from a real request
/// or from `cartguard explain` arguments.
pub struct RequestFacts<'a> {
    pub peer: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub client: ClientAddr,
    pub path: Option<NormalizedPath>,
    pub rule: Option<usize>,
    pub matched_by: Option<MatchedBy>,
    /// The rule's allow group the client is in, if any.
    pub group: Option<usize>,
    /// Bit i set: the client is in `Policy::groups[i]` (any rule).
    pub member_of: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    BadRequest {
        status: StatusCode,
        reason: String,
    },
    /// In one of the rule's `allow` groups: forward, Authorization untouched.
    Allow,
    /// `others: open`.
    Open,
    /// `others: deny`, or no rule matched.
    Deny,
    /// `others: auth`: the caller verifies these credentials.
    Authenticate(Result<Credentials, CredentialsError>),
}

/// Groups are kept in a u64 bitmask.
pub const MAX_GROUPS: usize = 64;

pub fn decide(policy: &Policy, facts: &RequestFacts) -> Decision {
    let client = client_ip::resolve(&policy.client_ip, facts.peer, facts.headers);
    let member_of = policy
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.set.contains(client.ip))
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    let mut decision =
        Decision { client, path: None, rule: None, matched_by: None, group: None, member_of, outcome: Outcome::Deny };
    let path = match path::normalize(facts.path).and_then(|p| {
        facts.query.map_or(Ok(()), path::check_query)?;
        Ok(p)
    }) {
        Ok(p) => p,
        Err(e) => {
            decision.outcome = Outcome::BadRequest { status: StatusCode::BAD_REQUEST, reason: e.to_string() };
            return decision;
        }
    };
    let found = policy
        .rules
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.matches(facts.method, &path.decoded, facts.query).map(|m| (i, r, m)));
    decision.path = Some(path);
    let Some((index, rule, matched_by)) = found else {
        return decision;
    };
    decision.rule = Some(index);
    decision.matched_by = Some(matched_by);
    decision.group = rule.allow.iter().copied().find(|&g| member_of & (1 << g) != 0);
    decision.outcome = if decision.group.is_some() {
        Outcome::Allow
    } else {
        match rule.others {
            Others::Open => Outcome::Open,
            Others::Deny => Outcome::Deny,
            Others::Auth => Outcome::Authenticate(basic_auth::parse(facts.headers)),
        }
    };
    decision
}

impl Policy {
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
  - name: feed
    path_prefix: /feed
    methods: [GET]
    others: open
  - name: site
    path_prefix: /
    allow: [integration-management, office]
    others: auth
"#;

    fn policy() -> Policy {
        Config::from_yaml(YAML, "test.yaml".as_ref()).unwrap().policy
    }

    fn run(policy: &Policy, peer: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Decision {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let method: Method = method.parse().unwrap();
        decide(policy, &RequestFacts { peer: peer.parse().unwrap(), method: &method, path, query, headers: &h })
    }

    fn rule_name(p: &Policy, d: &Decision) -> String {
        d.rule.map(|i| p.rules[i].name.clone()).unwrap_or_default()
    }

    #[test]
    fn integration_is_allowed_on_the_api_with_its_own_credentials() {
        let p = policy();
        let d = run(
            &p,
            "127.0.0.1",
            "GET",
            "/wp-json/wc/v3/orders",
            &[("x-forwarded-for", "50.18.194.14"), ("authorization", "Basic Y2tfMTpjc18y")],
        );
        assert!(matches!(d.outcome, Outcome::Allow), "{d:?}");
        assert_eq!(rule_name(&p, &d), "cart-api");
        assert_eq!(p.groups[d.group.unwrap()].name, "integration-management");
    }

    #[test]
    fn spoofed_header_from_untrusted_peer_gets_a_challenge() {
        let p = policy();
        let d = run(&p, "192.0.2.5", "GET", "/wp-json/wc/v3/orders", &[("x-forwarded-for", "50.18.194.14")]);
        assert!(matches!(d.outcome, Outcome::Authenticate(Err(CredentialsError::Missing))), "{d:?}");
    }

    #[test]
    fn rest_route_query_hits_the_api_rule() {
        let p = policy();
        let d = run(&p, "198.51.100.1", "GET", "/index.php?rest_route=/wc/v3/orders", &[]);
        assert_eq!(rule_name(&p, &d), "cart-api");
        assert!(matches!(d.matched_by, Some(MatchedBy::Query(..))));
    }

    #[test]
    fn deny_open_and_fallthrough() {
        let p = policy();
        let d = run(&p, "198.51.100.1", "GET", "/wp-admin/index.php", &[]);
        assert!(matches!(d.outcome, Outcome::Deny));
        let d = run(&p, "203.0.113.4", "GET", "/wp-admin/index.php", &[]);
        assert!(matches!(d.outcome, Outcome::Allow));
        let d = run(&p, "198.51.100.1", "GET", "/feed/rss", &[]);
        assert!(matches!(d.outcome, Outcome::Open));
        // methods restrict the open rule: POST falls through to the site rule.
        let d = run(&p, "198.51.100.1", "POST", "/feed/rss", &[]);
        assert_eq!(rule_name(&p, &d), "site");
        assert!(matches!(d.outcome, Outcome::Authenticate(_)));
    }

    #[test]
    fn bad_paths_are_bad_requests_before_any_rule() {
        let p = policy();
        let d = run(&p, "50.18.194.14", "GET", "/wp-json/wc/../../wp-admin", &[]);
        assert!(matches!(d.outcome, Outcome::BadRequest { .. }));
        assert_eq!(d.rule, None);
        let d = run(&p, "50.18.194.14", "GET", "/?a=%zz", &[]);
        assert!(matches!(d.outcome, Outcome::BadRequest { .. }));
    }

    #[test]
    fn membership_is_recorded_for_every_group() {
        let p = policy();
        let d = run(&p, "203.0.113.9", "GET", "/wp-json/wc/v3/orders", &[]);
        let office = p.group_index("office").unwrap();
        assert_ne!(d.member_of & (1 << office), 0);
        assert!(matches!(d.outcome, Outcome::Authenticate(_)), "office is not allowed on the API rule");
    }
}
