//! What one client connection is, as the request handler sees it: who is on the
//! other end, which listener, and the activity clock the idle cut-off reads.
//!
//! The listener (`server`) creates these and the handler (`proxy`) reads them;
//! neither imports the other through here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub activity: Arc<Activity>,
}

impl ConnInfo {
    /// A connection that exists only in a test or in `explain`: no socket behind it.
    pub fn detached(peer: SocketAddr, listener: &str) -> ConnInfo {
        ConnInfo {
            peer,
            listener: listener.into(),
            tls: None,
            redirect_https: false,
            activity: Arc::new(Activity::new()),
        }
    }
}

/// Last read/write time and requests in flight on one connection.
#[derive(Debug)]
pub struct Activity {
    pub(crate) start: Instant,
    pub(crate) last_ms: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    /// Requests waiting for the cart's response head or a password check: silence then is not the client's fault.
    pub(crate) upstream_waits: AtomicUsize,
    /// Requests started on this connection.
    pub(crate) served: AtomicU64,
    /// Bytes read since the connection last had no request in flight.
    pub(crate) read_since_idle: AtomicU64,
    /// When the current request head started (ms since `start`; 0 = the connection's start).
    pub(crate) head_started_ms: AtomicU64,
    /// HTTP/2 streams have no header timer of ours; idle_timeout covers the connection.
    pub(crate) is_h2: std::sync::atomic::AtomicBool,
    /// Output held back by the client: since when the socket refuses writes (ms since
    /// `start`, `NOT_BLOCKED` when it takes them), how long it refused them before in
    /// this episode, and the bytes it took meanwhile. An episode ends when everything
    /// written has been taken at `min_rate` or faster. A client that reads a byte just
    /// inside idle_timeout would otherwise hold a response open indefinitely.
    pub(crate) blocked_since_ms: AtomicU64,
    pub(crate) blocked_before_ms: AtomicU64,
    pub(crate) blocked_bytes: AtomicU64,
    /// `limits.min_body_rate` as the connection started (0: no check).
    pub(crate) min_rate: AtomicU64,
    /// The connection was cut because its client read slower than `limits.min_body_rate`.
    pub(crate) slow_reader: std::sync::atomic::AtomicBool,
}

const NOT_BLOCKED: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            upstream_waits: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            read_since_idle: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            is_h2: std::sync::atomic::AtomicBool::new(false),
            blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            blocked_before_ms: AtomicU64::new(0),
            blocked_bytes: AtomicU64::new(0),
            min_rate: AtomicU64::new(0),
            slow_reader: std::sync::atomic::AtomicBool::new(false),
        }
    }
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    /// The socket refused a write: the client is not taking what it was sent.
    pub(crate) fn write_blocked(&self) {
        if self.blocked_since_ms.load(Ordering::Relaxed) == NOT_BLOCKED {
            self.blocked_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }
    pub(crate) fn wrote(&self, n: usize) {
        self.touch();
        if self.blocked_since_ms.load(Ordering::Relaxed) != NOT_BLOCKED
            || self.blocked_before_ms.load(Ordering::Relaxed) > 0
        {
            self.blocked_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    /// Everything written has reached the socket. The episode ends if the client took
    /// it fast enough; a slow one carries over to the next response chunk.
    pub(crate) fn flushed(&self) {
        let since = self.blocked_since_ms.swap(NOT_BLOCKED, Ordering::Relaxed);
        if since == NOT_BLOCKED {
            return;
        }
        let total = self.blocked_before_ms.load(Ordering::Relaxed) + self.now_ms().saturating_sub(since);
        let rate = self.min_rate.load(Ordering::Relaxed);
        if self.blocked_bytes.load(Ordering::Relaxed) as u128 * 1000 >= rate as u128 * total as u128 {
            self.blocked_before_ms.store(0, Ordering::Relaxed);
            self.blocked_bytes.store(0, Ordering::Relaxed);
        } else {
            self.blocked_before_ms.store(total, Ordering::Relaxed);
        }
    }
    pub(crate) fn is_stalled(&self) -> bool {
        self.blocked_since_ms.load(Ordering::Relaxed) != NOT_BLOCKED
    }
    /// The client has held output back for longer than `grace` in this episode and
    /// took less than `min_rate` bytes/s of it (nginx's send_timeout, but as a rate).
    pub(crate) fn reads_too_slowly(&self, grace: Duration) -> bool {
        let rate = self.min_rate.load(Ordering::Relaxed);
        let since = self.blocked_since_ms.load(Ordering::Relaxed);
        if rate == 0 || since == NOT_BLOCKED {
            return false;
        }
        let total = self.blocked_before_ms.load(Ordering::Relaxed) + self.now_ms().saturating_sub(since);
        total > grace.as_millis() as u64
            && (self.blocked_bytes.load(Ordering::Relaxed) as u128 * 1000) < rate as u128 * total as u128
    }
    /// Whether the connection was cut for reading too slowly (the access record says so).
    pub fn cut_as_slow_reader(&self) -> bool {
        self.slow_reader.load(Ordering::Relaxed)
    }
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub(crate) fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
    /// Nothing of a request read and nothing in flight: admission may close it to make room.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.read_since_idle.load(Ordering::Relaxed) == 0
    }
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    pub(crate) fn waiting_upstream(&self) -> usize {
        self.upstream_waits.load(Ordering::Relaxed)
    }
    /// Held while a request waits for the upstream's response head.
    pub fn upstream_wait(self: &Arc<Self>) -> UpstreamWait {
        self.upstream_waits.fetch_add(1, Ordering::Relaxed);
        UpstreamWait(self.clone())
    }
    /// A request head (or a new connection's first one) that has been arriving for
    /// longer than `header_timeout`: slow headers, or a client that sends nothing.
    pub(crate) fn head_overdue(&self, header_timeout: Duration) -> bool {
        self.awaiting_head() && Instant::now() >= self.head_deadline(header_timeout)
    }
    /// HTTP/1, nothing in flight, and either nothing served yet or bytes of a next head read.
    pub(crate) fn awaiting_head(&self) -> bool {
        self.in_flight() == 0
            && !self.is_h2.load(Ordering::Relaxed)
            && (self.served.load(Ordering::Relaxed) == 0 || self.read_since_idle.load(Ordering::Relaxed) > 0)
    }
    pub(crate) fn head_deadline(&self, header_timeout: Duration) -> Instant {
        self.start + Duration::from_millis(self.head_started_ms.load(Ordering::Relaxed)) + header_timeout
    }
    /// When a timer could next fire. A head that starts on an idle keep-alive
    /// connection does not re-arm the timer, so an idle connection also wakes every
    /// half header_timeout: slow heads there are cut within 1.5 × header_timeout.
    pub(crate) fn next_check(&self, header_timeout: Duration, idle_timeout: Duration) -> Instant {
        let idle_at = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle_timeout;
        if self.awaiting_head() {
            idle_at.min(self.head_deadline(header_timeout))
        } else {
            idle_at.min(Instant::now() + header_timeout / 2)
        }
    }
    pub(crate) fn request(self: &Arc<Self>) -> RequestGuard {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

pub struct UpstreamWait(Arc<Activity>);

impl Drop for UpstreamWait {
    fn drop(&mut self) {
        self.0.upstream_waits.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

pub(crate) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.read_since_idle.store(0, Ordering::Relaxed);
        }
        self.0.touch();
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}
