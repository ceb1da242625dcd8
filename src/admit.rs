//! The admission step after `policy::decide`: redirect, bans, password
//! verification and report mode, turned into one `Verdict`.
//!
//! What needs IO (the ban table, the verification pool) comes through `Gate`, so
//! the real handler and `cartguard explain` run this same function and show the
//! same verdict. It never records a failure itself: the caller does that once,
//! from `Verdict::failed_login`, so explain cannot ban anyone.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use http::StatusCode;

use crate::config::Config;
use crate::policy::basic_auth::{Credentials, CredentialsError};
use crate::policy::{Decision, Mode, Outcome};
use crate::verdict::{Action, DecisionLabel, Refusal, Verdict};

/// The result of checking one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Verified,
    WrongPassword,
    UnknownUser,
    /// The verification queue is full: 503, try again.
    Overloaded,
    /// Not checked (explain without a password).
    Unchecked,
}

/// What admission needs from outside the policy.
pub trait Gate {
    /// Time left on the client's ban, if it is banned now.
    fn banned_for(&self, client: IpAddr) -> Option<Duration>;
    /// Checks a login (off the async workers, in the real guard).
    fn verify(&self, creds: Credentials) -> impl Future<Output = Verification> + Send;
}

/// Where the request arrived, as far as admission cares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival {
    /// A plain listener with `redirect_https`: everything but allowlisted clients is redirected.
    pub redirect_https: bool,
}

pub async fn admit(gate: &impl Gate, config: &Config, decision: &Decision, arrival: Arrival) -> Verdict {
    let enforce = config.policy.mode == Mode::Enforce;
    let verdict = match &decision.outcome {
        Outcome::BadRequest { status, reason } => {
            // Malformed input is refused whatever the mode: it is never forwarded.
            return Verdict::answer(Refusal::new(*status, DecisionLabel::BadRequest, reason.clone()));
        }
        Outcome::Allow => Verdict::forward(DecisionLabel::Allow),
        _ if arrival.redirect_https => Verdict::answer(Refusal::new(
            StatusCode::PERMANENT_REDIRECT,
            DecisionLabel::Redirect,
            "plain HTTP listener redirects to https",
        )),
        Outcome::Open => Verdict::forward(DecisionLabel::Open),
        Outcome::Deny => Verdict::answer(Refusal::new(
            StatusCode::FORBIDDEN,
            DecisionLabel::Deny,
            if decision.rule.is_some() {
                "client is in no allow group of the rule, and the rule denies others"
            } else {
                "no rule matched"
            },
        )),
        Outcome::Authenticate(creds) => authenticate(gate, config, decision.client.ip, creds, enforce).await,
    };
    if enforce {
        return verdict;
    }
    // Report mode changes nothing on the way: no ban counted, the request forwarded as it came.
    let action = match verdict.action {
        Action::Answer(refusal) if refusal.label != DecisionLabel::Redirect => {
            Action::Forward { strip_authorization: false, not_enforced: Some(refusal) }
        }
        Action::Forward { not_enforced, .. } => Action::Forward { strip_authorization: false, not_enforced },
        answer => answer,
    };
    Verdict { action, failed_login: false, ..verdict }
}

async fn authenticate(
    gate: &impl Gate,
    config: &Config,
    client: IpAddr,
    creds: &Result<Credentials, CredentialsError>,
    enforce: bool,
) -> Verdict {
    let user = creds.as_ref().ok().map(|c| c.user.clone());
    if enforce {
        if let Some(left) = gate.banned_for(client) {
            let secs = left.as_secs().max(1);
            let refusal = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                DecisionLabel::Banned,
                format!("too many failed logins; banned for {secs}s more"),
            )
            .retry_after(secs);
            return Verdict { user, ..Verdict::answer(refusal) };
        }
    }
    let creds = match creds {
        Err(CredentialsError::Missing) => {
            return Verdict::answer(Refusal::new(
                StatusCode::UNAUTHORIZED,
                DecisionLabel::Challenge,
                "login required: no credentials sent",
            ))
        }
        Err(e) if e.is_bad_request() => return Verdict::answer(Refusal::bad_request(e.reason())),
        Err(e) => return failed(None, e.reason()),
        Ok(creds) => creds,
    };
    match gate.verify(creds.clone()).await {
        Verification::Verified | Verification::Unchecked => Verdict {
            label: DecisionLabel::AuthOk,
            action: Action::Forward { strip_authorization: !config.auth.forward_credentials, not_enforced: None },
            user,
            failed_login: false,
        },
        Verification::WrongPassword => failed(user, "wrong password"),
        Verification::UnknownUser => failed(user, "unknown user"),
        Verification::Overloaded => Verdict {
            user,
            ..Verdict::answer(
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    DecisionLabel::Overloaded,
                    "password verification queue is full",
                )
                .retry_after(1),
            )
        },
    }
}

fn failed(user: Option<String>, reason: &'static str) -> Verdict {
    Verdict {
        user,
        failed_login: true,
        ..Verdict::answer(Refusal::new(StatusCode::UNAUTHORIZED, DecisionLabel::AuthFail, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{decide, RequestFacts};
    use http::{HeaderMap, Method};

    struct FakeGate {
        banned: Option<Duration>,
        verification: Verification,
    }

    impl Gate for FakeGate {
        fn banned_for(&self, _: IpAddr) -> Option<Duration> {
            self.banned
        }
        fn verify(&self, _: Credentials) -> impl Future<Output = Verification> + Send {
            std::future::ready(self.verification)
        }
    }

    fn config(mode: &str) -> Config {
        let yaml = format!(
            r#"
mode: {mode}
listen: [{{addr: "127.0.0.1:0"}}]
upstream: {{url: "http://127.0.0.1:9"}}
rules:
  - {{name: admin, path_prefix: /wp-admin, others: deny}}
  - {{name: site, path_prefix: /, allow: [integration-management], others: auth}}
"#
        );
        Config::from_yaml(&yaml, "t.yaml".as_ref()).unwrap()
    }

    fn verdict(config: &Config, gate: &FakeGate, ip: &str, path: &str, auth: Option<&str>, redirect: bool) -> Verdict {
        let mut headers = HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        let facts =
            RequestFacts { peer: ip.parse().unwrap(), method: &Method::GET, path, query: None, headers: &headers };
        let decision = decide(&config.policy, &facts);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(admit(gate, config, &decision, Arrival { redirect_https: redirect }))
    }

    const ALICE: &str = "Basic YWxpY2U6c2VjcmV0"; // alice:secret
    const OK: FakeGate = FakeGate { banned: None, verification: Verification::Verified };

    #[test]
    fn a_verified_login_is_forwarded_without_the_guards_own_header() {
        let v = verdict(&config("enforce"), &OK, "198.51.100.1", "/", Some(ALICE), false);
        assert_eq!(v.label, DecisionLabel::AuthOk);
        assert!(matches!(v.action, Action::Forward { strip_authorization: true, not_enforced: None }));
        assert_eq!(v.user.as_deref(), Some("alice"));
    }

    #[test]
    fn a_wrong_password_is_401_and_counts_toward_a_ban() {
        let gate = FakeGate { banned: None, verification: Verification::WrongPassword };
        let v = verdict(&config("enforce"), &gate, "198.51.100.1", "/", Some(ALICE), false);
        assert_eq!(v.label, DecisionLabel::AuthFail);
        assert!(v.failed_login);
        assert_eq!(v.refusal().map(|r| r.status), Some(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn a_banned_client_gets_429_even_with_the_right_password() {
        let gate = FakeGate { banned: Some(Duration::from_secs(30)), verification: Verification::Verified };
        let v = verdict(&config("enforce"), &gate, "198.51.100.1", "/", Some(ALICE), false);
        assert_eq!(v.label, DecisionLabel::Banned);
        assert_eq!(v.refusal().and_then(|r| r.retry_after), Some(30));
    }

    #[test]
    fn allowlisted_clients_are_never_asked_nor_banned() {
        let gate = FakeGate { banned: Some(Duration::from_secs(30)), verification: Verification::WrongPassword };
        let v = verdict(&config("enforce"), &gate, "50.18.194.14", "/", Some(ALICE), true);
        assert_eq!(v.label, DecisionLabel::Allow);
        assert!(matches!(v.action, Action::Forward { strip_authorization: false, .. }));
    }

    #[test]
    fn plain_listeners_with_redirect_send_others_to_https() {
        let v = verdict(&config("enforce"), &OK, "198.51.100.1", "/", None, true);
        assert_eq!(v.label, DecisionLabel::Redirect);
        assert_eq!(v.refusal().map(|r| r.status), Some(StatusCode::PERMANENT_REDIRECT));
    }

    #[test]
    fn report_mode_forwards_refusals_but_keeps_what_it_would_have_answered() {
        let v = verdict(&config("report"), &OK, "198.51.100.1", "/wp-admin", None, false);
        assert_eq!(v.label, DecisionLabel::Deny);
        match &v.action {
            Action::Forward { not_enforced: Some(r), .. } => assert_eq!(r.status, StatusCode::FORBIDDEN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn report_mode_still_refuses_malformed_requests() {
        let v = verdict(&config("report"), &OK, "198.51.100.1", "/a/../../b", None, false);
        assert_eq!(v.label, DecisionLabel::BadRequest);
        assert!(!v.is_forwarded());
    }
}
