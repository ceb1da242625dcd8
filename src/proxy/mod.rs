//! From a request to a response: sanity checks, the decision, credentials,
//! then either forwarding to the cart or answering ourselves.
//!
//! `handle` is the outer layer: it sets up the one access record and turns every
//! outcome into a response. Nothing here panics on client input, and every
//! refusal carries a reason that ends up in the record.

pub mod headers;
pub mod record;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::access_log::{redact_query, AccessRecord, DecisionLabel, StatusSource};
use crate::bans::BanPolicy;
use crate::config::HostMode;
use crate::policy::basic_auth::{Credentials, CredentialsError};
use crate::policy::Mode;
use crate::policy::{decide, Outcome, RequestFacts};
use crate::state::Shared;
use crate::upstream::{Body, UpstreamError};
use crate::users::VerifyError;
use record::{LimitedBody, LoggedBody, Pending};

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket peer, or the address a PROXY protocol header carried.
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    /// Negotiated TLS version, on TLS listeners.
    pub tls: Option<&'static str>,
    pub redirect_https: bool,
    /// Lets the idle cut-off know when silence is the upstream's doing.
    pub activity: Arc<crate::server::Activity>,
}

/// The guard's own answer: status, reason for the log, decision label.
struct Refusal {
    status: StatusCode,
    decision: DecisionLabel,
    reason: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, decision: DecisionLabel, reason: impl Into<String>) -> Refusal {
        Refusal { status, decision, reason: reason.into(), retry_after: None }
    }

    fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let runtime = shared.runtime.load_full();
    let start = Instant::now();
    let request_id = request_id();
    let host = request_host(&req);
    let raw_path = req.uri().path();
    let logged_path = match req.uri().query() {
        Some(q) => format!("{raw_path}?{}", redact_query(q)),
        None => raw_path.to_string(),
    };
    let text = |name: header::HeaderName| {
        req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
    };
    let mut record = AccessRecord {
        time: SystemTime::now(),
        request_id: request_id.clone(),
        client_ip: String::new(),
        peer_ip: headers::ip_string(conn.peer.ip().to_canonical()),
        listener: conn.listener.to_string(),
        protocol: protocol(req.version()),
        tls: conn.tls,
        group: None,
        rule: None,
        decision: DecisionLabel::BadRequest,
        enforced: runtime.config.policy.mode == Mode::Enforce,
        user: None,
        method: truncate(req.method().as_str(), 32),
        host: host.as_ref().map(|h| truncate(&String::from_utf8_lossy(h.as_bytes()), 256)).unwrap_or_default(),
        path: truncate(&logged_path, 4096),
        status: 499,
        upstream_status: None,
        source: StatusSource::Guard,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        upstream_ms: None,
        user_agent: truncate(&text(header::USER_AGENT), 512),
        referer: truncate(&text(header::REFERER), 1024),
        error: Some("client closed the connection before the response".into()),
    };
    record.client_ip.clone_from(&record.peer_ip);
    let mut pending = Box::new(Pending {
        shared: shared.clone(),
        runtime: runtime.clone(),
        record,
        start,
        rule: None,
        member_of: 0,
        bytes_in: Arc::new(AtomicU64::new(0)),
        alarm: false,
    });

    if let Err(refusal) = check_request(&req, &runtime.config.limits) {
        return Ok(answer(pending, refusal, &runtime.config.auth.challenge, None));
    }

    let config = &runtime.config;
    let (path, query) = (req.uri().path(), req.uri().query());
    let decision = decide(
        &config.policy,
        &RequestFacts { peer: conn.peer.ip(), method: req.method(), path, query, headers: req.headers() },
    );
    let client = &decision.client;
    tracing::debug!(
        request_id = %request_id,
        peer = %client.peer,
        peer_trusted = client.peer_trusted,
        resolution = ?client.how,
        forwarding_header = ?req.headers().get(config.policy.client_ip.header.name()),
        client = %client.ip,
        "client address"
    );
    if client.ip != conn.peer.ip().to_canonical() {
        pending.record.client_ip = headers::ip_string(client.ip);
    }
    pending.rule = decision.rule;
    pending.member_of = decision.member_of;
    pending.record.rule = decision.rule.map(|i| config.policy.rules[i].name.clone());
    pending.record.group = decision.group.map(|i| config.policy.groups[i].name.clone());
    let enforce = config.policy.mode == Mode::Enforce;
    let rule_admits_groups = decision.rule.is_some_and(|i| !config.policy.rules[i].allow.is_empty());

    let mut strip_authorization = false;
    let verdict: Result<DecisionLabel, Refusal> = match decision.outcome {
        Outcome::BadRequest { status, reason } => Err(Refusal::new(status, DecisionLabel::BadRequest, reason)),
        _ if conn.redirect_https && !matches!(decision.outcome, Outcome::Allow) => Err(Refusal::new(
            StatusCode::PERMANENT_REDIRECT,
            DecisionLabel::Redirect,
            "plain HTTP listener redirects to https",
        )),
        Outcome::Allow => Ok(DecisionLabel::Allow),
        Outcome::Open => Ok(DecisionLabel::Open),
        Outcome::Deny => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            DecisionLabel::Deny,
            if decision.rule.is_some() {
                "client is in no allow group of the rule, and the rule denies others"
            } else {
                "no rule matched"
            },
        )),
        Outcome::Authenticate(creds) => {
            let verdict = authenticate(&shared, &runtime, client.ip, creds, enforce).await;
            if let Some(user) = verdict.1 {
                pending.record.user = Some(truncate(&user, 128));
            }
            strip_authorization =
                matches!(verdict.0, Ok(DecisionLabel::AuthOk)) && !config.auth.forward_credentials && enforce;
            verdict.0
        }
    };
    let verdict = match verdict {
        Err(r) if r.decision == DecisionLabel::BadRequest => Err(r),
        Err(r) if !enforce => {
            // Report mode: decided and logged as a refusal, but forwarded anyway.
            pending.record.error = Some(format!("not enforced: would answer {}: {}", r.status.as_u16(), r.reason));
            pending.record.decision = r.decision;
            Ok(r.decision)
        }
        Ok(label) => {
            // Forwarded as decided: drop the "client closed" placeholder (the report-mode note above stays).
            pending.record.error = None;
            Ok(label)
        }
        other => other,
    };
    match verdict {
        Err(refusal) => {
            // Only requests carrying credentials look like the integration; bots without any do not.
            pending.alarm = rule_admits_groups
                && decision.member_of == 0
                && req.headers().contains_key(header::AUTHORIZATION)
                && matches!(refusal.decision, DecisionLabel::AuthFail | DecisionLabel::Deny | DecisionLabel::Banned);
            let location = if refusal.decision == DecisionLabel::Redirect {
                https_location(host.as_ref(), req.uri())
            } else {
                None
            };
            Ok(answer(pending, refusal, &config.auth.challenge, location))
        }
        Ok(label) => {
            pending.record.decision = label;
            let Some(path) = decision.path.as_ref() else {
                return Ok(answer(
                    pending,
                    Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, "no path"),
                    &config.auth.challenge,
                    None,
                ));
            };
            let (mut parts, body) = req.into_parts();
            if strip_authorization {
                parts.headers.remove(header::AUTHORIZATION);
            }
            let uri = upstream_uri(&runtime.upstream.config.url, &path.forward, parts.uri.query());
            headers::remove_hop_by_hop(&mut parts.headers);
            let proto = if conn.tls.is_some() { "https" } else { "http" };
            headers::set_forwarding(
                &mut parts.headers,
                &headers::Forwarding { client: &decision.client, proto, host: host.as_ref(), request_id: &request_id },
            );
            match &runtime.upstream.config.host {
                HostMode::Preserve => {
                    if let Some(h) = host.clone() {
                        parts.headers.insert(header::HOST, h);
                    }
                }
                HostMode::Upstream => {
                    if let Ok(v) = HeaderValue::from_str(&upstream_host(&runtime.upstream.config.url)) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                HostMode::Literal(v) => {
                    parts.headers.insert(header::HOST, v.clone());
                }
            }
            parts.uri = uri;
            parts.version = Version::HTTP_11;
            let limit = config.limits.max_body_bytes;
            let body = LimitedBody::new(body, pending.bytes_in.clone(), limit).boxed();
            let upstream_req = Request::from_parts(parts, body);
            Ok(forward(&shared, &runtime, pending, upstream_req, limit, &conn.activity).await)
        }
    }
}

async fn forward(
    shared: &Shared,
    runtime: &crate::state::Runtime,
    mut pending: Box<Pending>,
    req: Request<Body>,
    limit: u64,
    activity: &Arc<crate::server::Activity>,
) -> Response<Body> {
    let health = &shared.stats.upstream;
    health.in_flight.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    let wait = activity.upstream_wait();
    let result = runtime.upstream.send(req).await;
    drop(wait);
    health.in_flight.fetch_sub(1, Ordering::Relaxed);
    let elapsed = sent.elapsed();
    pending.record.upstream_ms = Some(elapsed.as_secs_f64() * 1000.0);
    match result {
        Ok(resp) => {
            health.observe(elapsed);
            health.ok();
            let (mut parts, body) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            pending.record.status = parts.status.as_u16();
            pending.record.upstream_status = Some(parts.status.as_u16());
            pending.record.source = StatusSource::Upstream;
            Response::from_parts(parts, LoggedBody::new(body, pending).boxed())
        }
        Err(e) => {
            let too_large = pending.bytes_in.load(Ordering::Relaxed) > limit;
            let (status, decision) = match &e {
                UpstreamError::RequestBody(_) if too_large => {
                    (StatusCode::PAYLOAD_TOO_LARGE, DecisionLabel::BadRequest)
                }
                UpstreamError::RequestBody(_) => (StatusCode::BAD_REQUEST, DecisionLabel::BadRequest),
                UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, DecisionLabel::UpstreamError),
                UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
                    (StatusCode::BAD_GATEWAY, DecisionLabel::UpstreamError)
                }
            };
            let reason = if too_large { format!("request body larger than {limit} bytes") } else { e.to_string() };
            if decision == DecisionLabel::UpstreamError {
                health.failed(reason.clone());
                tracing::warn!(request_id = %pending.record.request_id, client_ip = %pending.record.client_ip, path = %pending.record.path, status = status.as_u16(), "{reason}");
            }
            let challenge = runtime.config.auth.challenge.clone();
            answer(pending, Refusal::new(status, decision, reason), &challenge, None)
        }
    }
}

/// Credentials → verdict, with bans and the bounded verification pool.
async fn authenticate(
    shared: &Shared,
    runtime: &Arc<crate::state::Runtime>,
    client: std::net::IpAddr,
    creds: Result<Credentials, CredentialsError>,
    enforce: bool,
) -> (Result<DecisionLabel, Refusal>, Option<String>) {
    let auth = &runtime.config.auth;
    let now = Instant::now();
    if enforce {
        if let Some(left) = shared.bans.banned(client, now) {
            let secs = left.as_secs().max(1);
            let r = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                DecisionLabel::Banned,
                format!("too many failed logins; banned for {secs}s more"),
            )
            .retry_after(secs);
            return (Err(r), creds.ok().map(|c| c.user));
        }
    }
    let policy = BanPolicy { max_failures: auth.max_failures, window: auth.failure_window, ban: auth.ban };
    let fail = |reason: String| {
        if enforce && shared.bans.record_failure(client, policy, now) {
            shared.stats.bans_started.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_ip = %client, ban_seconds = auth.ban.as_secs(), "client banned after {} failed logins", auth.max_failures);
        }
        Err(Refusal::new(StatusCode::UNAUTHORIZED, DecisionLabel::AuthFail, reason))
    };
    match creds {
        Err(CredentialsError::Missing) => (
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                DecisionLabel::Challenge,
                "login required: no credentials sent",
            )),
            None,
        ),
        Err(e) if e.is_bad_request() => {
            (Err(Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, e.reason())), None)
        }
        Err(e) => (fail(e.reason().to_string()), None),
        Ok(creds) => {
            let user = creds.user.clone();
            match shared.verify_pool.verify(runtime.config.users.clone(), creds).await {
                Ok((_, true)) => (Ok(DecisionLabel::AuthOk), Some(user)),
                Ok((_, false)) => {
                    let known = runtime.config.users.contains(&user);
                    (fail(if known { "wrong password".into() } else { "unknown user".into() }), Some(user))
                }
                Err(VerifyError::Overloaded) => (
                    Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        DecisionLabel::Overloaded,
                        "password verification queue is full",
                    )
                    .retry_after(1)),
                    Some(user),
                ),
            }
        }
    }
}

/// Builds the guard's own response and hands the record to its body.
fn answer(
    mut pending: Box<Pending>,
    refusal: Refusal,
    challenge: &HeaderValue,
    location: Option<HeaderValue>,
) -> Response<Body> {
    let status = refusal.status;
    pending.record.status = status.as_u16();
    pending.record.decision = refusal.decision;
    pending.record.source = StatusSource::Guard;
    pending.record.error = Some(refusal.reason.clone());
    let text = match refusal.decision {
        DecisionLabel::Challenge | DecisionLabel::AuthFail => "login required\n".to_string(),
        DecisionLabel::Deny => "forbidden\n".to_string(),
        DecisionLabel::Banned => "too many failed logins\n".to_string(),
        _ => format!("{}\n", status.canonical_reason().unwrap_or("error").to_ascii_lowercase()),
    };
    let mut resp = Response::new(LoggedBody::new(Full::new(Bytes::from(text)), pending).boxed());
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
    if let Some(loc) = location {
        h.insert(header::LOCATION, loc);
    }
    resp
}

/// HTTP-level checks that come before any policy: framing, method, sizes.
fn check_request(req: &Request<Incoming>, limits: &crate::config::Limits) -> Result<(), Refusal> {
    let bad = |reason: &str| Err(Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, reason));
    let h = req.headers();
    if headers::header_bytes(h) > limits.max_header_bytes {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            DecisionLabel::BadRequest,
            format!("headers larger than {} bytes", limits.max_header_bytes),
        ));
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            DecisionLabel::BadRequest,
            "CONNECT is not supported",
        ));
    }
    if req.version() != Version::HTTP_2 {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            return bad("absolute-form request target (proxy request) refused");
        }
        let hosts = h.get_all(header::HOST).iter().count();
        if req.version() == Version::HTTP_11 && hosts == 0 {
            return bad("missing Host header");
        }
        if hosts > 1 {
            return bad("more than one Host header");
        }
    }
    if h.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return bad("more than one Authorization header");
    }
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return bad("both Content-Length and Transfer-Encoding");
    }
    let te: Vec<&[u8]> = h.get_all(header::TRANSFER_ENCODING).iter().map(|v| v.as_bytes()).collect();
    if !te.is_empty() && (te.len() > 1 || !te[0].eq_ignore_ascii_case(b"chunked")) {
        return bad("unsupported Transfer-Encoding");
    }
    if h.contains_key(header::UPGRADE) || h.contains_key("http2-settings") {
        return bad("protocol upgrades (websocket, h2c) are not forwarded");
    }
    if let Some(len) = h.get(header::CONTENT_LENGTH) {
        let len: u64 = std::str::from_utf8(len.as_bytes()).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            Refusal::new(StatusCode::BAD_REQUEST, DecisionLabel::BadRequest, "invalid Content-Length")
        })?;
        if len > limits.max_body_bytes {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                DecisionLabel::BadRequest,
                format!("Content-Length {len} over the limit of {} bytes", limits.max_body_bytes),
            ));
        }
    }
    Ok(())
}

/// The Host header, or the :authority of an HTTP/2 request.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

fn https_location(host: Option<&HeaderValue>, uri: &Uri) -> Option<HeaderValue> {
    let host = host?.to_str().ok()?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    HeaderValue::from_str(&format!("https://{}{}", authority.host(), target)).ok()
}

fn upstream_uri(base: &Uri, path: &str, query: Option<&str>) -> Uri {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

fn upstream_host(url: &Uri) -> String {
    url.authority().map(|a| a.as_str().to_string()).unwrap_or_default()
}

/// 16 hex digits, unique per process and not sequential: a random per-process key
/// plus a counter, through the splitmix64 finaliser (a bijection). No syscall per
/// request, unlike drawing from the system RNG each time.
fn request_id() -> String {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| u64::from_str_radix(&crate::users::random_hex(8), 16).unwrap_or(0x5eed));
    let mut z = key.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
