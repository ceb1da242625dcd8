//! HTTP-01 on plain listeners: while some `acme:` listener may use HTTP-01,
//! the guard owns /.well-known/acme-challenge/ and answers it before any rule,
//! with the key authorization of an open order or 404. Nothing on that path
//! reaches the cart. Each answer still gets its one access record.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::challenge::HTTP01_PREFIX;
use crate::config::{Challenge, Config};
use crate::conn::ConnInfo;
use crate::proxy::record::{LoggedBody, Pending};
use crate::state::Shared;
use crate::upstream::Body;
use crate::verdict::DecisionLabel;

/// What the guard answers to an HTTP-01 validation.
pub struct Http01Reply {
    status: StatusCode,
    body: Bytes,
}

/// `Some` when `req` is on the challenge path of a plain listener and some
/// `acme:` listener may use HTTP-01; the rules are never consulted then.
pub fn check<B>(shared: &Shared, config: &Config, conn: &ConnInfo, req: &Request<B>) -> Option<Http01Reply> {
    if conn.tls.is_some() {
        return None;
    }
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    let uses_http01 =
        config.listeners.iter().any(|l| l.acme.as_ref().is_some_and(|a| a.challenges.contains(&Challenge::Http01)));
    if !uses_http01 {
        return None;
    }
    Some(match shared.tls.acme.challenges.http_answer(token) {
        Some(key_authorization) => Http01Reply { status: StatusCode::OK, body: Bytes::from(key_authorization) },
        None => Http01Reply { status: StatusCode::NOT_FOUND, body: Bytes::from_static(b"not found\n") },
    })
}

impl Http01Reply {
    pub fn respond(self, mut pending: Box<Pending>) -> Response<Body> {
        let ok = self.status == StatusCode::OK;
        pending.record.status = self.status.as_u16();
        pending.record.decision = DecisionLabel::AcmeChallenge;
        pending.record.source = crate::access_log::StatusSource::Guard;
        pending.record.error = (!ok).then(|| "no open ACME http-01 challenge for this token".to_string());
        tracing::info!(path = %pending.record.path, status = self.status.as_u16(), "ACME http-01 validation request");
        let mut resp = Response::new(LoggedBody::new(Full::new(self.body), pending).boxed());
        *resp.status_mut() = self.status;
        let content_type = if ok { "application/octet-stream" } else { "text/plain; charset=utf-8" };
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
