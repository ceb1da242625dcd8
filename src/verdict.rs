//! What happens to a request and why, as one value.
//!
//! `admit` produces a `Verdict`; the access log, /status, /metrics and
//! `cartguard explain` all read it, so they cannot disagree about a request.
//! Nothing here does IO.

use std::borrow::Cow;

use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// What the guard decided; the same words appear in the log, /status and /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionLabel {
    Allow,
    Open,
    AuthOk,
    Challenge,
    AuthFail,
    Deny,
    Banned,
    BadRequest,
    UpstreamError,
    Redirect,
    Overloaded,
    /// An ACME HTTP-01 validation answered by the guard, before any rule.
    AcmeChallenge,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 12] = [
        DecisionLabel::Allow,
        DecisionLabel::Open,
        DecisionLabel::AuthOk,
        DecisionLabel::Challenge,
        DecisionLabel::AuthFail,
        DecisionLabel::Deny,
        DecisionLabel::Banned,
        DecisionLabel::BadRequest,
        DecisionLabel::UpstreamError,
        DecisionLabel::Redirect,
        DecisionLabel::Overloaded,
        DecisionLabel::AcmeChallenge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allow => "allow",
            DecisionLabel::Open => "open",
            DecisionLabel::AuthOk => "auth_ok",
            DecisionLabel::Challenge => "challenge",
            DecisionLabel::AuthFail => "auth_fail",
            DecisionLabel::Deny => "deny",
            DecisionLabel::Banned => "banned",
            DecisionLabel::BadRequest => "bad_request",
            DecisionLabel::UpstreamError => "upstream_error",
            DecisionLabel::Redirect => "redirect",
            DecisionLabel::Overloaded => "overloaded",
            DecisionLabel::AcmeChallenge => "acme_challenge",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Refusals are what /status keeps in `recent_denials`.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            DecisionLabel::Challenge
                | DecisionLabel::AuthFail
                | DecisionLabel::Deny
                | DecisionLabel::Banned
                | DecisionLabel::BadRequest
                | DecisionLabel::Overloaded
        )
    }
}

/// The guard's own answer: status, label, and the reason that goes into the record.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub label: DecisionLabel,
    pub reason: Cow<'static, str>,
    pub retry_after: Option<u64>,
    /// Where a redirect points.
    pub location: Option<HeaderValue>,
}

impl Refusal {
    pub fn new(status: StatusCode, label: DecisionLabel, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { status, label, reason: reason.into(), retry_after: None, location: None }
    }

    pub fn bad_request(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, reason)
    }

    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }
}

/// Forward or answer, and everything the log needs to say why.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub label: DecisionLabel,
    pub action: Action,
    /// The user name a login carried (never the password).
    pub user: Option<String>,
    /// A failed login: counts toward a ban.
    pub failed_login: bool,
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward {
        /// The guard's own login is removed before forwarding (`auth.forward_credentials: false`).
        strip_authorization: bool,
        /// Report mode: the refusal enforcement would have answered with.
        not_enforced: Option<Refusal>,
    },
    Answer(Refusal),
}

impl Verdict {
    pub fn forward(label: DecisionLabel) -> Verdict {
        Verdict {
            label,
            action: Action::Forward { strip_authorization: false, not_enforced: None },
            user: None,
            failed_login: false,
        }
    }

    pub fn answer(refusal: Refusal) -> Verdict {
        Verdict { label: refusal.label, action: Action::Answer(refusal), user: None, failed_login: false }
    }

    pub fn is_forwarded(&self) -> bool {
        matches!(self.action, Action::Forward { .. })
    }

    /// The status the guard itself answers with, if it does.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.action {
            Action::Answer(r) => Some(r),
            Action::Forward { not_enforced, .. } => not_enforced.as_ref(),
        }
    }
}
