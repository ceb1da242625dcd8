//! From a request to a response: checks, the decision, admission, then either
//! forwarding to the cart or answering ourselves.
//!
//! `handle` is the outer layer: it opens the one access record and turns the
//! inner result into a response, so every path out of `handle_inner` (a
//! `Refusal` or the cart's response) is logged exactly once. It is generic over
//! the request body, so tests call it in-process without a socket. Nothing here
//! panics on client input, and every refusal carries a reason for the record.

pub mod checks;
pub mod headers;
pub mod record;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Full};

use crate::admit::{admit, Arrival, Gate, Verification};
use crate::bans::BanPolicy;
use crate::config::HostMode;
use crate::conn::ConnInfo;
use crate::policy::basic_auth::Credentials;
use crate::policy::{decide, RequestFacts};
use crate::state::{Runtime, Shared};
use crate::upstream::{Body, BoxError, UpstreamBody, UpstreamError};
use crate::users::VerifyError;
use crate::verdict::{Action, DecisionLabel, Refusal};
use record::{LimitedBody, LoggedBody, Pending};

pub async fn handle<B>(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let runtime = shared.runtime.load_full();
    let mut pending = Pending::for_request(shared.clone(), runtime.clone(), &conn, &req);
    if let Some(reply) = crate::acme::http01::check(&shared, &runtime.config, &conn, &req) {
        return Ok(reply.respond(pending));
    }
    let result = handle_inner(&shared, &runtime, &conn, req, &mut pending).await;
    let challenge = &runtime.config.auth.challenge;
    Ok(match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            pending.record.status = parts.status.as_u16();
            pending.record.upstream_status = Some(parts.status.as_u16());
            pending.record.source = crate::access_log::StatusSource::Upstream;
            Response::from_parts(parts, LoggedBody::new(body, pending).watching(conn.activity.clone()).boxed())
        }
        Err(refusal) => answer(pending, refusal, challenge),
    })
}

async fn handle_inner<B>(
    shared: &Shared,
    runtime: &Arc<Runtime>,
    conn: &ConnInfo,
    req: Request<B>,
    pending: &mut Pending,
) -> Result<Response<UpstreamBody>, Refusal>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let config = &runtime.config;
    checks::check_request(&req, &config.limits)?;
    let facts = RequestFacts {
        peer: conn.peer.ip(),
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let decision = decide(&config.policy, &facts);
    pending.decided(&decision, req.headers().contains_key(header::AUTHORIZATION));
    let gate = SharedGate { shared, runtime };
    // A login queued for verification is silent by the guard's doing, like a wait on the cart:
    // the idle cut-off must not close it unanswered.
    let guard_wait = conn.activity.upstream_wait();
    let verdict = admit(&gate, config, &decision, Arrival { redirect_https: conn.redirect_https }).await;
    drop(guard_wait);
    pending.admitted(&verdict);
    if verdict.failed_login {
        gate.count_failure(decision.client.ip);
    }
    let strip_authorization = match verdict.action {
        Action::Answer(mut refusal) => {
            if refusal.label == DecisionLabel::Redirect {
                refusal.location = checks::https_location(checks::request_host(&req).as_ref(), req.uri());
            }
            return Err(refusal);
        }
        Action::Forward { strip_authorization, .. } => strip_authorization,
    };
    let path = decision.path.as_ref().ok_or_else(|| Refusal::bad_request("no path"))?;
    let host = checks::request_host(&req);
    let (mut parts, body) = req.into_parts();
    if strip_authorization {
        parts.headers.remove(header::AUTHORIZATION);
    }
    let upstream = &runtime.upstream.config;
    parts.uri = checks::origin_form(&path.forward, parts.uri.query());
    headers::remove_hop_by_hop(&mut parts.headers);
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    let forwarding = headers::Forwarding {
        client: &decision.client,
        proto,
        host: host.as_ref(),
        request_id: &pending.record.request_id,
    };
    headers::set_forwarding(&mut parts.headers, &forwarding);
    let host = match &upstream.host {
        HostMode::Preserve => host,
        HostMode::Upstream => HeaderValue::from_str(&checks::upstream_host(&upstream.url)).ok(),
        HostMode::Literal(v) => Some(v.clone()),
    };
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    parts.version = Version::HTTP_11;
    let limit = config.limits.max_body_bytes;
    let (rate, grace) = (config.limits.min_body_rate, config.limits.header_timeout);
    let body = LimitedBody::new(body, pending.bytes_in.clone(), limit, rate, grace).boxed();
    forward(shared, runtime, conn, pending, Request::from_parts(parts, body), limit).await
}

/// Sends to the cart; failures become 502/504 (or 400/413 when the client's body was at fault).
async fn forward(
    shared: &Shared,
    runtime: &Runtime,
    conn: &ConnInfo,
    pending: &mut Pending,
    req: Request<Body>,
    limit: u64,
) -> Result<Response<UpstreamBody>, Refusal> {
    let health = &shared.stats.upstream;
    health.in_flight.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    let wait = conn.activity.upstream_wait();
    let result = runtime.upstream.send(req).await;
    drop(wait);
    health.in_flight.fetch_sub(1, Ordering::Relaxed);
    let elapsed = sent.elapsed();
    pending.record.upstream_ms = Some(elapsed.as_secs_f64() * 1000.0);
    let e = match result {
        Ok(resp) => {
            health.observe(elapsed);
            health.ok();
            return Ok(resp);
        }
        Err(e) => e,
    };
    let too_large = pending.bytes_in.load(Ordering::Relaxed) > limit;
    let (status, label) = match &e {
        UpstreamError::RequestBody(_) if too_large => (StatusCode::PAYLOAD_TOO_LARGE, DecisionLabel::BadRequest),
        UpstreamError::RequestBody(e) if e.contains(record::BodyTooSlow::REASON) => {
            (StatusCode::REQUEST_TIMEOUT, DecisionLabel::BadRequest)
        }
        UpstreamError::RequestBody(_) => (StatusCode::BAD_REQUEST, DecisionLabel::BadRequest),
        UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, DecisionLabel::UpstreamError),
        UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
            (StatusCode::BAD_GATEWAY, DecisionLabel::UpstreamError)
        }
    };
    let reason = if too_large { format!("request body larger than {limit} bytes") } else { e.to_string() };
    if label == DecisionLabel::UpstreamError {
        health.failed(reason.clone());
        let r = &pending.record;
        tracing::warn!(request_id = %r.request_id, client_ip = %r.client_ip, path = %r.path, status = status.as_u16(), "{reason}");
    }
    Err(Refusal::new(status, label, reason))
}

/// Admission's view of the running guard: its ban table and verification pool.
struct SharedGate<'a> {
    shared: &'a Shared,
    runtime: &'a Runtime,
}

impl SharedGate<'_> {
    fn count_failure(&self, client: IpAddr) {
        let auth = &self.runtime.config.auth;
        let policy = BanPolicy { max_failures: auth.max_failures, window: auth.failure_window, ban: auth.ban };
        if self.shared.bans.record_failure(client, policy, Instant::now()) {
            self.shared.stats.bans_started.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_ip = %client, ban_seconds = auth.ban.as_secs(), "client banned after {} failed logins", auth.max_failures);
        }
    }
}

impl Gate for SharedGate<'_> {
    fn banned_for(&self, client: IpAddr) -> Option<Duration> {
        self.shared.bans.banned(client, Instant::now())
    }

    fn verify(&self, creds: Credentials) -> impl Future<Output = Verification> + Send {
        let users = self.runtime.config.users.clone();
        let pool = &self.shared.verify_pool;
        async move {
            let user = creds.user.clone();
            match pool.verify(users.clone(), creds).await {
                Ok(true) => Verification::Verified,
                Ok(false) if users.contains(&user) => Verification::WrongPassword,
                Ok(false) => Verification::UnknownUser,
                Err(VerifyError::Overloaded) => Verification::Overloaded,
            }
        }
    }
}

/// Builds the guard's own response and hands the record to its body.
fn answer(mut pending: Box<Pending>, refusal: Refusal, challenge: &HeaderValue) -> Response<Body> {
    let status = refusal.status;
    pending.record.status = status.as_u16();
    pending.record.decision = refusal.label;
    pending.record.source = crate::access_log::StatusSource::Guard;
    pending.record.error = Some(refusal.reason.clone().into_owned());
    let text: Bytes = match refusal.label {
        DecisionLabel::Challenge | DecisionLabel::AuthFail => Bytes::from_static(b"login required\n"),
        DecisionLabel::Deny => Bytes::from_static(b"forbidden\n"),
        DecisionLabel::Banned => Bytes::from_static(b"too many failed logins\n"),
        _ => format!("{}\n", status.canonical_reason().unwrap_or("error").to_ascii_lowercase()).into(),
    };
    let mut resp = Response::new(LoggedBody::new(Full::new(text), pending).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, challenge.clone());
    }
    if let Some(secs) = refusal.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(loc) = refusal.location {
        h.insert(header::LOCATION, loc);
    }
    resp
}
