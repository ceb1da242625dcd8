//! The client to the cart: hyper's connection-level HTTP/1 client with a small
//! keep-alive pool of our own, and how its failures are described.
//!
//! One pool per config snapshot (one upstream address). The pool is a bounded
//! LIFO stack of idle connections: the most recently used one is the warmest and
//! the least likely to have been closed by the cart. A connection goes back on
//! the stack only once its response body has been read to the end, and is
//! checked on the way out (`ready()`: a closed one is dropped). A request that a
//! reused connection could not even start sending is retried once on a fresh
//! connection. Compared with hyper-util's pooled client this saves the dispatch
//! through a pool checkout future, a per-host map and a spawned "idle" task per
//! request (bench/README.md has the instruction counts).
//!
//! `https://` upstreams are verified against the system roots or
//! `upstream.tls.ca`; there is no way to skip verification. Failures are
//! classified so the log can say in one line whether the cart refused the
//! connection, failed TLS, or was too slow.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamConfig;

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle connections kept per upstream; more are closed when their response ends.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Upstream {
    pool: Arc<Pool>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The Host header sent when the request carries none (the url's authority).
    default_host: Option<HeaderValue>,
    pub config: UpstreamConfig,
}

#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    fn pop(&self) -> Option<Idle> {
        self.idle.lock().ok()?.pop()
    }

    fn push(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(Idle { sender, since: Instant::now() });
            }
        }
    }
}

/// The cart's response body; hands its connection back to the pool once read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    ended: bool,
    reuse: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body left half-read would leave its bytes on the connection: close it then.
        if self.ended || self.inner.is_end_stream() {
            if let Some((sender, pool)) = self.reuse.take() {
                pool.push(sender);
            }
        }
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    /// Refused, unreachable, DNS, connect timeout or TLS failure: 502.
    Connect(String),
    /// No response head within `upstream.timeout`: 504.
    Timeout(Duration),
    /// The request body failed (client went away or sent too much): the client's fault.
    RequestBody(String),
    /// Anything else on an established connection (bad response framing...): 502.
    Protocol(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "upstream connect failed: {e}"),
            UpstreamError::Timeout(d) => write!(f, "upstream sent no response head within {}ms", d.as_millis()),
            UpstreamError::RequestBody(e) => write!(f, "request body failed: {e}"),
            UpstreamError::Protocol(e) => write!(f, "upstream error: {e}"),
        }
    }
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, String> {
        let tls = if config.https {
            let mut tls = client_tls(config)?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = match &config.server_name {
                Some(name) => {
                    ServerName::try_from(name.clone()).map_err(|e| format!("upstream.tls.server_name: {e}"))?
                }
                None => {
                    let host = config.url.host().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    ServerName::try_from(host.to_string()).map_err(|e| format!("upstream.url: host {host}: {e}"))?
                }
            };
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let default_host = config.url.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        Ok(Upstream { pool: Arc::default(), tls, default_host, config: config.clone() })
    }

    /// Sends `req` (origin-form URI) and waits for the response head, at most `upstream.timeout`.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<UpstreamBody>, UpstreamError> {
        if !req.headers().contains_key(HOST) {
            if let Some(host) = &self.default_host {
                req.headers_mut().insert(HOST, host.clone());
            }
        }
        match tokio::time::timeout(self.config.timeout, self.send_pooled(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.config.timeout)),
            Ok(result) => result,
        }
    }

    async fn send_pooled(&self, mut req: Request<Body>) -> Result<Response<UpstreamBody>, UpstreamError> {
        while let Some(Idle { mut sender, since }) = self.pool.pop() {
            if since.elapsed() > IDLE_TIMEOUT || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                // Closed before the request went out (the cart dropped an idle
                // connection): nothing was sent, so try the next one.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(classify(e.error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender)),
            Err(e) => Err(classify(&e)),
        }
    }

    fn wrap(&self, resp: Response<Incoming>, sender: SendRequest<Body>) -> Response<UpstreamBody> {
        resp.map(|inner| UpstreamBody { inner, ended: false, reuse: Some((sender, self.pool.clone())) })
    }

    /// A new connection (TCP, then TLS for https://) whose driver runs as its own task.
    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let limit = self.config.connect_timeout;
        let authority = &self.config.authority;
        let tcp = match tokio::time::timeout(limit, TcpStream::connect(authority)).await {
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "connect to {authority} timed out after {}ms",
                    limit.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("tcp connect error: {authority}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = match tokio::time::timeout(limit, connector.connect(name.clone(), tcp)).await {
                    Err(_) => return Err(UpstreamError::Connect(format!("TLS handshake with {authority} timed out"))),
                    Ok(Err(e)) => {
                        return Err(UpstreamError::Connect(format!(
                            "TLS handshake with {authority}: {}",
                            error_chain(&e)
                        )))
                    }
                    Ok(Ok(tls)) => tls,
                };
                handshake(tls).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

fn classify(e: &hyper::Error) -> UpstreamError {
    // A failing request body surfaces as a hyper "user body" error.
    if e.is_user() || e.is_body_write_aborted() {
        return UpstreamError::RequestBody(error_chain(e));
    }
    UpstreamError::Protocol(error_chain(e))
}

/// "a: b: c" from an error and its sources, without repeats.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn client_tls(config: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("upstream.tls.ca: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("upstream.tls.ca: {} holds no certificate", path.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("upstream.tls.ca: {}: {e}", path.display()))?;
            }
        }
        None if config.https => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "upstream is https:// but no system root certificates were found; set upstream.tls.ca".into()
                );
            }
        }
        None => {}
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// Probes the upstream with a TCP connect every `probe_interval`.
pub async fn probe(shared: Arc<crate::state::Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let (authority, interval, timeout) = {
            let rt = shared.runtime.load();
            (
                rt.config.upstream.authority.clone(),
                rt.config.upstream.probe_interval,
                rt.config.upstream.connect_timeout,
            )
        };
        let result = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&authority)).await;
        let up = &shared.stats.upstream;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (was_up, first) = (up.reachable.load(relaxed), !up.probed.load(relaxed));
        match result {
            Ok(Ok(_)) => {
                up.reachable.store(true, std::sync::atomic::Ordering::Relaxed);
                up.ok();
            }
            Ok(Err(e)) => {
                if up.reachable.swap(false, std::sync::atomic::Ordering::Relaxed)
                    || !up.probed.load(std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(upstream = %authority, error = %e, "upstream probe failed");
                }
                up.failed(format!("probe: connect to {authority}: {e}"));
            }
            Err(_) => {
                up.reachable.store(false, std::sync::atomic::Ordering::Relaxed);
                up.failed(format!("probe: connect to {authority} timed out after {}ms", timeout.as_millis()));
            }
        }
        up.probed.store(true, std::sync::atomic::Ordering::Relaxed);
        crate::alerts::upstream_probed(&shared, &authority, was_up, first);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
