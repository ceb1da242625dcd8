//! One access record per request, whatever happens to it.
//!
//! A `Pending` record is created when the request arrives and written when it
//! is dropped: normally when the response body has been sent (so bytes_out and
//! the duration are true), or earlier if the client went away. The counting
//! bodies carry it along.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::access_log::{AccessRecord, DecisionLabel};
use crate::state::{Denial, GroupLast, Runtime, Shared};
use crate::upstream::BoxError;

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
}

impl Drop for Pending {
    fn drop(&mut self) {
        let r = &mut self.record;
        r.duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        r.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = self.rule {
            if let Some(s) = self.runtime.rule_stats.get(i) {
                s.count(r.decision, r.status);
            }
        }
        if self.member_of != 0 {
            let at = SystemTime::now();
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
    AccessRecord::connection_level(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), "", None, 0, String::new())
}

/// The response body, counting bytes out and holding the record until the end.
pub struct LoggedBody<B> {
    inner: B,
    pending: Option<Box<Pending>>,
}

impl<B> LoggedBody<B> {
    pub fn new(inner: B, pending: Box<Pending>) -> Self {
        LoggedBody { inner, pending: Some(pending) }
    }
}

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

/// The request body on its way to the cart: counted, and cut at `limit` bytes.
pub struct LimitedBody<B> {
    inner: B,
    seen: Arc<AtomicU64>,
    limit: u64,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, seen: Arc<AtomicU64>, limit: u64) -> Self {
        LimitedBody { inner, seen, limit }
    }
}

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
