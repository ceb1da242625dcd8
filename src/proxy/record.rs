//! One access record per request, whatever happens to it.
//!
//! A `Pending` record is created when the request arrives (or when a connection
//! is refused before it had one) and written when it is dropped: normally when the response body has been sent (so bytes_out and
//! the duration are true), or earlier if the client went away. The counting
//! bodies carry it along.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use http::{header, Request, Version};

use crate::access_log::AccessRecord;
use crate::conn::ConnInfo;
use crate::percent::redact_query;
use crate::policy::{Decision, Mode};
use crate::state::{Denial, GroupLast, Runtime, Shared};
use crate::upstream::BoxError;
use crate::verdict::{Action, DecisionLabel, Verdict};

pub struct Pending {
    pub shared: Arc<Shared>,
    pub runtime: Arc<Runtime>,
    pub record: AccessRecord,
    pub start: Instant,
    pub rule: Option<usize>,
    pub member_of: u64,
    pub bytes_in: Arc<AtomicU64>,
    /// Counts a refusal from an unknown address on a rule that admits a group.
    pub alarm: bool,
    /// Could raise the alarm: credentials sent from no known group, on a rule that admits groups.
    alarm_candidate: bool,
}

impl Pending {
    /// Opens the record of one request; it is written when this is dropped.
    pub fn new(shared: Arc<Shared>, runtime: Arc<Runtime>, record: AccessRecord) -> Box<Pending> {
        Box::new(Pending {
            shared,
            runtime,
            record,
            start: Instant::now(),
            rule: None,
            member_of: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            alarm: false,
            alarm_candidate: false,
        })
    }

    /// What is known of a request before any decision: method, host, path (secrets redacted), agent.
    pub fn for_request<B>(
        shared: Arc<Shared>,
        runtime: Arc<Runtime>,
        conn: &ConnInfo,
        req: &Request<B>,
    ) -> Box<Pending> {
        let mut record = AccessRecord::new(conn.peer, &conn.listener, conn.tls);
        let uri = req.uri();
        let path = match uri.query() {
            Some(q) => format!("{}?{}", uri.path(), redact_query(q)),
            None => uri.path().to_string(),
        };
        let text = |name: header::HeaderName, max: usize| {
            req.headers().get(name).map(|v| truncate(&String::from_utf8_lossy(v.as_bytes()), max)).unwrap_or_default()
        };
        record.request_id = crate::ids::request_id();
        record.protocol = protocol(req.version());
        record.enforced = runtime.config.policy.mode == Mode::Enforce;
        record.method = truncate(req.method().as_str(), 32);
        record.host = super::checks::request_host(req)
            .map(|h| truncate(&String::from_utf8_lossy(h.as_bytes()), 256))
            .unwrap_or_default();
        record.path = truncate(&path, 4096);
        record.user_agent = text(header::USER_AGENT, 512);
        record.referer = text(header::REFERER, 1024);
        Pending::new(shared, runtime, record)
    }

    /// Records the policy decision: client address, rule, group.
    pub fn decided(&mut self, d: &Decision, has_authorization: bool) {
        let policy = &self.runtime.config.policy;
        let client = &d.client;
        tracing::debug!(request_id = %self.record.request_id, peer = %client.peer, peer_trusted = client.peer_trusted, resolution = ?client.how, client = %client.ip, "client address");
        if client.ip != client.peer.to_canonical() {
            self.record.client_ip = super::headers::ip_string(client.ip);
        }
        self.rule = d.rule;
        self.member_of = d.member_of;
        self.record.rule = d.rule.map(|i| policy.rules[i].name.clone());
        self.record.group = d.group.map(|i| policy.groups[i].name.clone());
        let admits_groups = d.rule.is_some_and(|i| !policy.rules[i].allow.is_empty());
        self.alarm_candidate = admits_groups && d.member_of == 0 && has_authorization;
    }

    /// Records the verdict; the answer (or the cart's) fills in the status later.
    pub fn admitted(&mut self, v: &Verdict) {
        self.record.decision = v.label;
        self.record.user = v.user.as_deref().map(|u| truncate(u, 128));
        match &v.action {
            Action::Forward { not_enforced: Some(r), .. } => {
                self.record.error = Some(format!("not enforced: would answer {}: {}", r.status.as_u16(), r.reason));
            }
            Action::Forward { .. } => self.record.error = None,
            // Only requests carrying credentials look like the integration; bots without any do not.
            Action::Answer(r) => {
                self.alarm = self.alarm_candidate
                    && matches!(r.label, DecisionLabel::AuthFail | DecisionLabel::Deny | DecisionLabel::Banned)
            }
        }
    }
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

impl Drop for Pending {
    fn drop(&mut self) {
        let r = &mut self.record;
        let took = self.start.elapsed();
        r.duration_ms = took.as_secs_f64() * 1000.0;
        r.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match self.rule.and_then(|i| self.runtime.rule_stats.get(i)) {
            Some(s) => s.count(r.decision, r.status, took),
            // Refused before any rule applied (bad requests, connection-level refusals).
            None => stats.no_rule.count(r.decision, r.status, took),
        }
        if self.member_of != 0 {
            let at = SystemTime::now();
            let unix = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
            let from_upstream = matches!(r.source, crate::access_log::StatusSource::Upstream);
            stats.timeline.record(unix, crate::timeline::Outcome::of(r.status, from_upstream));
            for (i, g) in self.runtime.group_stats.iter().enumerate() {
                if self.member_of & (1 << i) != 0 {
                    g.seen(GroupLast {
                        at,
                        client_ip: r.client_ip.clone(),
                        path: r.path.clone(),
                        status: r.status,
                        decision: r.decision,
                    });
                }
            }
        }
        if r.decision.is_refusal() {
            stats.deny(Denial::from_record(r));
        }
        if self.alarm {
            if let Ok(ip) = r.client_ip.parse() {
                if stats.alarm(ip, r.rule.as_deref().unwrap_or("-")) {
                    tracing::warn!(
                        client_ip = %r.client_ip,
                        rule = r.rule.as_deref().unwrap_or("-"),
                        path = %r.path,
                        "possible new integration address: refused on a rule that admits an allow group; if this is Integration Management, add it to the group"
                    );
                    let alert = crate::alerts::Alert::new_integration_address(
                        &r.client_ip,
                        r.rule.as_deref().unwrap_or("-"),
                        &r.path,
                    );
                    crate::alerts::raise(&self.shared, alert);
                }
            }
        }
        if matches!(r.decision, DecisionLabel::AuthFail) {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        let record = std::mem::replace(r, blank_record());
        self.shared.access_log.write(record);
    }
}

fn blank_record() -> AccessRecord {
    AccessRecord::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), "", None)
}

/// The response body, counting bytes out and holding the record until the end.
pub struct LoggedBody<B> {
    inner: B,
    pending: Option<Box<Pending>>,
    /// The client connection, to say in the record why a response was cut short.
    activity: Option<Arc<crate::conn::Activity>>,
}

impl<B> LoggedBody<B> {
    pub fn new(inner: B, pending: Box<Pending>) -> Self {
        LoggedBody { inner, pending: Some(pending), activity: None }
    }
    pub fn watching(mut self, activity: Arc<crate::conn::Activity>) -> Self {
        self.activity = Some(activity);
        self
    }
}

/// A response dropped before its end: the record (written as `pending` drops) says why
/// when the guard itself cut the connection.
impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let (Some(p), Some(a)) = (self.pending.as_mut(), self.activity.as_ref()) {
            if a.cut_as_slow_reader() {
                p.record.error = Some(SLOW_READER.into());
            }
        }
    }
}

pub const SLOW_READER: &str = "client read the response slower than limits.min_body_rate; connection cut";

impl<B> HttpBody for LoggedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.record.bytes_out += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                if let Some(p) = this.pending.as_mut() {
                    p.record.error =
                        Some(format!("response body aborted: {}", crate::upstream::error_chain(e.as_ref())));
                }
                // Dropping the record now logs it; the client connection is aborted by hyper.
                this.pending = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.pending = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body on its way to the cart: counted, cut at `limit` bytes, and
/// cut when it trickles in slower than `min_rate` bytes/s once `grace` has passed
/// (each byte just inside idle_timeout would otherwise hold it open until upstream.timeout).
pub struct LimitedBody<B> {
    inner: B,
    seen: Arc<AtomicU64>,
    limit: u64,
    start: Instant,
    min_rate: u64,
    grace: std::time::Duration,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, seen: Arc<AtomicU64>, limit: u64, min_rate: u64, grace: std::time::Duration) -> Self {
        LimitedBody { inner, seen, limit, start: Instant::now(), min_rate, grace }
    }
}

/// What a body slower than `limits.min_body_rate` fails with.
#[derive(Debug)]
pub struct BodyTooSlow(pub u64);

impl BodyTooSlow {
    pub const REASON: &'static str = "request body slower than limits.min_body_rate";
}

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes/s)", Self::REASON, self.0)
    }
}

impl std::error::Error for BodyTooSlow {}

#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.seen.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    let elapsed = this.start.elapsed();
                    if this.min_rate > 0
                        && elapsed > this.grace
                        && (total as f64) < this.min_rate as f64 * elapsed.as_secs_f64()
                    {
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow(this.min_rate)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
