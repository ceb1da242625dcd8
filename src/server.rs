//! Listeners and connections: accept, PROXY header, TLS handshake, HTTP/1 and
//! HTTP/2 through hyper with its timers, idle cut-off and graceful drain.
//!
//! `bind` turns configured addresses into sockets before anything is served (port
//! 0 lets tests pick a free one); `serve` runs them until shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admission::Ticket;
use crate::config::ListenerConfig;
use crate::conn::{Activity, ConnInfo};
use crate::error::{ListenError, StartError};
use crate::framing::FramingIo;
use crate::proxy;
use crate::state::{ConnRefusal, Shared};

pub struct BoundListener {
    pub tcp: TcpListener,
    pub config: ListenerConfig,
}

/// Bind every configured listener; errors name the address.
pub async fn bind(listeners: &[ListenerConfig]) -> Result<Vec<BoundListener>, StartError> {
    let mut out = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let tcp = bind_one(l.addr).await.map_err(|reason| StartError::Listen {
            key: format!("listen[{i}].addr"),
            addr: l.addr,
            reason,
        })?;
        out.push(BoundListener { tcp, config: l.clone() });
    }
    Ok(out)
}

pub async fn bind_one(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// Tracks live connections so shutdown can wait for them.
#[derive(Default)]
pub struct Tracker {
    live: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }

    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct TrackGuard(Arc<Tracker>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Runs the accept loops until `shutdown` turns true, then drains for the grace period.
pub async fn serve(listeners: Vec<BoundListener>, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let tracker = Arc::new(Tracker::default());
    let mut tasks = Vec::new();
    for l in listeners {
        let addr = l.tcp.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| l.config.addr.to_string());
        tracing::info!(listener = %addr, tls = l.config.is_tls(), proxy_protocol = l.config.proxy_protocol, "listening");
        tasks.push(tokio::spawn(accept_loop(l, addr, shared.clone(), tracker.clone(), shutdown.clone())));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    for t in &tasks {
        t.abort();
    }
    let grace = shared.runtime.load().config.limits.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait_idle()).await.is_err() {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "connections still open after the shutdown grace; closing them"
        );
    }
}

async fn accept_loop(
    l: BoundListener,
    addr: String,
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    let listener: Arc<str> = addr.into();
    // Stores are keyed by the configured address (the bound one differs when the port is 0).
    let tls = match shared.tls.store_for(&l.config.addr.to_string()) {
        Some(store) if l.config.is_tls() => match store.server_config() {
            Ok(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg)),
            Err(e) => {
                tracing::error!(listener = %listener, error = %e, "TLS setup failed; listener not started");
                return;
            }
        },
        _ => None,
    };
    loop {
        // Always accept: admission (once the client address is known) closes or sheds,
        // so nobody waits unanswered in the listen backlog.
        let (stream, peer) = match l.tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = tracker.enter();
        let shared = shared.clone();
        let listener = listener.clone();
        let tls = tls.clone();
        let cfg = l.config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shared.stats.active_connections.fetch_add(1, Ordering::Relaxed);
            connection(stream, peer, cfg, listener, tls, shared.clone(), shutdown).await;
            shared.stats.active_connections.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    cfg: ListenerConfig,
    listener: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let mut peer = socket_peer;
    if cfg.proxy_protocol {
        match crate::proxy_protocol::read_header(&mut stream, limits.header_timeout).await {
            Ok(Some(addr)) => peer = addr,
            Ok(None) => {}
            Err(e) => {
                tracing::info!(peer = %socket_peer, listener = %listener, "closing connection: {e}");
                shared.stats.connection_refusals.count(ConnRefusal::ProxyHeader);
                return;
            }
        }
    }
    let activity = Arc::new(Activity::new());
    let Some(ticket) = admit(&shared, peer, &listener, activity.clone()) else {
        return;
    };
    let ticket = &ticket;
    let refused = crate::framing::Refused::default();
    let max_head = limits.max_header_bytes.max(8192);
    match tls {
        None => {
            let info = Arc::new(ConnInfo {
                peer,
                listener,
                tls: None,
                redirect_https: cfg.redirect_https,
                activity: activity.clone(),
            });
            let io = FramingIo::new(ActivityIo::new(stream, activity.clone()), max_head, refused.clone());
            serve_http(io, info, refused, ticket, shared, shutdown, &limits).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await;
            let tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, listener = %listener, error = %e, "TLS handshake failed");
                    shared.stats.connection_refusals.count(ConnRefusal::TlsHandshake);
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, listener = %listener, "TLS handshake timed out");
                    shared.stats.connection_refusals.count(ConnRefusal::TlsHandshakeTimeout);
                    return;
                }
            };
            // A TLS-ALPN-01 validation ends with the handshake: no HTTP on that protocol.
            if tls_stream.get_ref().1.alpn_protocol() == Some(crate::acme::challenge::ACME_TLS_ALPN) {
                tracing::info!(peer = %peer, listener = %listener, "answered an ACME tls-alpn-01 validation");
                return;
            }
            let version = match tls_stream.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            };
            let info = Arc::new(ConnInfo {
                peer,
                listener,
                tls: Some(version),
                redirect_https: false,
                activity: activity.clone(),
            });
            let io = FramingIo::new(ActivityIo::new(tls_stream, activity.clone()), max_head, refused.clone());
            serve_http(io, info, refused, ticket, shared, shutdown, &limits).await;
        }
    }
}

async fn serve_http<I>(
    io: I,
    info: Arc<ConnInfo>,
    refused: crate::framing::Refused,
    ticket: &Ticket,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    limits: &crate::config::Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = info.activity.clone();
    activity.min_rate.store(limits.min_body_rate, Ordering::Relaxed);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's header timer also runs while a keep-alive connection waits for its
        // next request, which would cap idle_timeout at header_timeout; the loop below
        // times request heads and idle connections separately instead.
        .header_read_timeout(None)
        // The framing check ends the stream at a refused head: requests pipelined
        // before it must still be answered, not cancelled by that end of stream.
        .half_close(true)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(64);
    let in_flight = activity.clone();
    let peer = info.peer;
    let shared_for_errors = shared.clone();
    let info_for_errors = info.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let info = info.clone();
        let guard = in_flight.request();
        if req.version() == http::Version::HTTP_2 {
            in_flight.is_h2.store(true, Ordering::Relaxed);
        }
        // Boxed: an idle keep-alive connection then holds a pointer, not a
        // request-sized future, in its in-flight slot.
        async move {
            let resp = Box::pin(proxy::handle(shared, info, req)).await;
            drop(guard);
            resp
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_timeout = limits.idle_timeout;
    let header_timeout = limits.header_timeout;
    let mut closing = false;
    // One timer per connection, armed for the next moment a deadline could pass (not a
    // periodic tick: 10,000 idle connections should not mean 10,000 wake-ups a second).
    let timer = tokio::time::sleep_until(activity.next_check(header_timeout, idle_timeout).into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if refused.get().is_some() {
                    record_framing_refusal(&shared_for_errors, &info_for_errors, &refused);
                } else if let Err(e) = result {
                    connection_error(&shared_for_errors, &info_for_errors, e.as_ref());
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticket.shed(), if !closing => {
                // Chosen while idle; if a request slipped in since, it may finish.
                if activity.in_flight() == 0 {
                    tracing::debug!(peer = %peer, "closing an idle connection to make room for another");
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut timer, if !closing => {
                if activity.head_overdue(header_timeout) {
                    refuse_at_connection(
                        &shared_for_errors,
                        &info_for_errors,
                        ConnRefusal::HeaderTimeout,
                        408,
                        "request headers not received within limits.header_timeout".into(),
                    );
                    return;
                }
                if activity.reads_too_slowly(header_timeout) {
                    activity.slow_reader.store(true, Ordering::Relaxed);
                    shared_for_errors.stats.connection_refusals.count(ConnRefusal::SlowReader);
                    tracing::info!(peer = %peer, "closing a connection whose client reads the response slower than limits.min_body_rate ({} bytes/s)", limits.min_body_rate);
                    return;
                }
                // No bytes either way for idle_timeout, and not waiting on the cart:
                // an idle keep-alive is closed politely, a stalled body or reader is cut.
                if activity.idle_for() >= idle_timeout && activity.waiting_upstream() == 0 {
                    if activity.in_flight() == 0 {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        tracing::info!(peer = %peer, "closing a stalled connection: no bytes for {}ms with a request in flight", idle_timeout.as_millis());
                        // A head refused behind the stalled request still gets its record.
                        record_framing_refusal(&shared_for_errors, &info_for_errors, &refused);
                        return;
                    }
                }
                let next = if activity.waiting_upstream() > 0 {
                    Instant::now() + idle_timeout
                } else {
                    activity.next_check(header_timeout, idle_timeout).max(Instant::now() + Duration::from_millis(10))
                };
                // A client that is not taking its response is looked at every second.
                let next = if activity.is_stalled() { next.min(Instant::now() + Duration::from_secs(1)) } else { next };
                timer.as_mut().reset(next.into());
            }
        }
    }
}

/// Registers the connection under its client address, or closes it (counted by reason).
fn admit(shared: &Shared, peer: SocketAddr, listener: &str, activity: Arc<Activity>) -> Option<Ticket> {
    let rt = shared.runtime.load();
    let protected = crate::admission::is_protected(&rt.config.policy, peer.ip().to_canonical());
    match shared.admission.admit(peer.ip(), protected, activity, &rt.config.limits) {
        Ok(ticket) => Some(ticket),
        Err(why) => {
            tracing::debug!(peer = %peer, listener = %listener, reason = why.as_str(), "connection refused by admission");
            None
        }
    }
}

/// An IO wrapper that records activity for the idle cut-off and the slow-reader check.
struct ActivityIo<T: Resettable> {
    inner: T,
    activity: Arc<Activity>,
}

/// A client socket the guard can reset instead of closing: megabytes still queued in
/// the kernel for a client that stopped reading are dropped with the connection, not
/// trickled out after the guard has given up on it.
trait Resettable {
    fn reset_on_close(&self);
}

impl Resettable for TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Resettable for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl<T: Resettable> Drop for ActivityIo<T> {
    fn drop(&mut self) {
        if self.activity.cut_as_slow_reader() {
            self.inner.reset_on_close();
        }
    }
}

impl<T: Resettable> ActivityIo<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActivityIo { inner, activity }
    }
    fn written(&self, r: &Poll<std::io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(*n),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Resettable + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            let previous =
                self.activity.read_since_idle.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
            if previous == 0 && self.activity.served.load(Ordering::Relaxed) > 0 {
                let now = self.activity.start.elapsed().as_millis() as u64;
                self.activity.head_started_ms.store(now, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Resettable + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(&r);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            self.activity.flushed();
        }
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests hyper refuses before the guard sees them (malformed framing, oversized
/// heads, slow headers) still get a log line and an access record.
fn connection_error(shared: &Arc<Shared>, info: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
    // HTTP/2: a GOAWAY the guard's side sent (protocol error, reset flood) ends the
    // connection with no request to log; count it by reason instead.
    if let Some(h2) = find_source::<h2::Error>(e).filter(|h2| h2.is_go_away() && h2.is_library()) {
        let reason = h2.reason().map(|r| r.to_string()).unwrap_or_default();
        tracing::info!(peer = %info.peer, listener = %info.listener, "HTTP/2 connection closed with GOAWAY: {reason}");
        shared.stats.connection_refusals.count(ConnRefusal::H2GoAway);
        return;
    }
    let Some(h) = find_source::<hyper::Error>(e) else {
        tracing::debug!(peer = %info.peer, listener = %info.listener, error = %e, "connection error");
        return;
    };
    let (status, reason) = if h.is_parse_too_large() {
        (431, format!("request head too large, refused by the HTTP parser: {h}"))
    } else if h.is_parse() {
        (400, format!("malformed request refused by the HTTP parser: {h}"))
    } else {
        tracing::debug!(peer = %info.peer, listener = %info.listener, error = %h, "connection closed");
        return;
    };
    refuse_at_connection(shared, info, ConnRefusal::HttpParser, status, reason);
}

/// The record of a head the framing check refused, if it refused one.
fn record_framing_refusal(shared: &Arc<Shared>, info: &ConnInfo, refused: &crate::framing::Refused) {
    if let Some(v) = refused.get() {
        let reason = format!("request head refused before the HTTP parser: {}", v.reason);
        refuse_at_connection(shared, info, ConnRefusal::Framing, v.status, reason);
    }
}

/// A refusal before the guard's handler saw a request: one log line, one record.
/// Goes through `Pending` like any request, so counters and recent refusals see it.
fn refuse_at_connection(shared: &Arc<Shared>, info: &ConnInfo, why: ConnRefusal, status: u16, reason: String) {
    tracing::info!(peer = %info.peer, listener = %info.listener, status, "{reason}");
    shared.stats.connection_refusals.count(why);
    let record = crate::access_log::AccessRecord::connection_level(info.peer, &info.listener, info.tls, status, reason);
    drop(crate::proxy::record::Pending::new(shared.clone(), shared.runtime.load_full(), record));
}

fn find_source<'a, E: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(h) = err.downcast_ref::<E>() {
            return Some(h);
        }
        current = err.source();
    }
    None
}
