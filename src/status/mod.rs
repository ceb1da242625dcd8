//! The admin listener: /status (JSON, or HTML for browsers), /healthz and /metrics.
//!
//! It answers "is Integration Management still reaching the cart, what did it
//! get, and what was refused?" It only reads counters and config metadata and is
//! never served on a public listener. It reads counters, config metadata and
//! the reload record; the only thing it writes is the HTTP answer.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::policy::Mode;
use crate::state::Shared;

pub mod doc;
pub mod html;
pub mod metrics;

pub use doc::StatusDoc;

pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/status" => {
            let doc = StatusDoc::collect(shared);
            if prefers_html(req) {
                reply(StatusCode::OK, "text/html; charset=utf-8", html::render(&doc))
            } else {
                reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
            }
        }
        "/healthz" => {
            let reasons = health_reasons(shared);
            if reasons.is_empty() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", reasons.join("\n") + "\n")
            }
        }
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics::metrics(shared)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /status, /healthz or /metrics\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// True when the Accept header ranks text/html above application/json.
fn prefers_html(req: &Request<Incoming>) -> bool {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let q = |mime: &str| {
        accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let m = it.next()?.trim();
                (m == mime).then(|| {
                    it.find_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.parse::<f32>().ok())).unwrap_or(1.0)
                })
            })
            .fold(0.0f32, f32::max)
    };
    q("text/html") > q("application/json")
}

/// Whether a group watched by `status.expect` was seen within its window.
pub struct Freshness {
    pub group: String,
    pub within: Duration,
    /// None: never seen since the guard started.
    pub last_seen_ago: Option<Duration>,
    /// Past its window (a never-seen group only once the guard has run that long).
    pub stale: bool,
}

pub fn group_freshness(shared: &Shared) -> Vec<Freshness> {
    let rt = shared.runtime.load();
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    rt.config
        .status
        .expect
        .iter()
        .filter_map(|e| {
            let i = rt.config.policy.group_index(&e.group)?;
            let last_ms = rt.group_stats[i].last_seen_unix_ms.load(Ordering::Relaxed);
            let ago = (last_ms != 0).then(|| Duration::from_millis(now_ms.saturating_sub(last_ms)));
            let stale = match ago {
                None => shared.started.elapsed() >= e.within,
                Some(ago) => ago >= e.within,
            };
            Some(Freshness { group: e.group.clone(), within: e.within, last_seen_ago: ago, stale })
        })
        .collect()
}

/// Why /healthz is failing; empty when healthy.
pub fn health_reasons(shared: &Shared) -> Vec<String> {
    let rt = shared.runtime.load();
    let mut reasons = Vec::new();
    let up = &shared.stats.upstream;
    if up.probed.load(Ordering::Relaxed) && !up.reachable.load(Ordering::Relaxed) {
        let err = up.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        reasons.push(format!("upstream {} unreachable: {err}", rt.config.upstream.authority));
    }
    for g in group_freshness(shared).into_iter().filter(|g| g.stale) {
        let seen = match g.last_seen_ago {
            None => "never seen since start".to_string(),
            Some(ago) => format!("last seen {}s ago", ago.as_secs()),
        };
        reasons.push(format!("group {} not seen within {}s ({seen})", g.group, g.within.as_secs()));
    }
    reasons.extend(shared.tls.acme.health_reasons());
    let reload = shared.reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(err) = reload.last_reload_error {
        reasons.push(format!("last reload failed: {err}"));
    }
    if rt.config.policy.mode == Mode::Report {
        reasons.push("mode is report: the guard is NOT enforcing, every request is forwarded".into());
    }
    reasons
}
