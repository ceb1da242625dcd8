//! Test harness: a recording upstream, the real guard on loopback ports the OS
//! picks, and clients bound to chosen 127.0.0.x source addresses.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use cartguard::config::Config;
pub use cartguard::Guard;

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// A recording upstream. Paths with special behaviour:
/// `/status/NNN` answers NNN; `/slow/MS` waits MS milliseconds before the head;
/// `/big/N` answers N bytes; `/die` sends half a body then closes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen = seen2.clone();
                tokio::spawn(async move { if let Err(()) = serve_upstream(stream, seen).await {} });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().last().cloned().expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_upstream(stream: TcpStream, seen: Arc<Mutex<Vec<Recorded>>>) -> Result<(), ()> {
    // `/die` needs a raw socket; peek at the request line.
    let mut peek = [0u8; 64];
    let n = stream.peek(&mut peek).await.map_err(|_| ())?;
    if peek[..n].starts_with(b"GET /die") {
        let mut stream = stream;
        let mut buf = vec![0u8; 8192];
        let n = stream.read(&mut buf).await.map_err(|_| ())?;
        seen.lock().unwrap().push(parse_raw_request(&buf[..n]));
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly half").await;
        return Ok(());
    }
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            let target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            seen.lock().unwrap().push(Recorded {
                method: parts.method.to_string(),
                target: target.clone(),
                headers,
                body,
            });
            let mut resp = Response::new(Full::new(Bytes::from_static(b"upstream ok")));
            if let Some(code) = target.strip_prefix("/status/") {
                *resp.status_mut() = hyper::StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
            }
            if let Some(ms) = target.strip_prefix("/slow/") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            if let Some(n) = target.strip_prefix("/big/") {
                *resp.body_mut() = Full::new(Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    Ok(())
}

fn parse_raw_request(buf: &[u8]) -> Recorded {
    let text = String::from_utf8_lossy(buf);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    Recorded {
        method: parts.next().unwrap_or("").to_string(),
        target: parts.next().unwrap_or("").to_string(),
        headers: lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect(),
        body: Vec::new(),
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The real binary.
pub fn cartguard() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_cartguard"))
}

/// The integration, played through the trusted proxy (127.0.0.100): admitted by every
/// default rule, so anything but a 200 is the guard's own doing.
pub fn integration(g: &impl Serve, target: &str) -> RequestBuilder {
    client_from("127.0.0.100").get(g.addr(), target).header("X-Forwarded-For", "50.18.194.14")
}

/// A low-cost bcrypt hash (cost 4) for fixtures.
pub fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// A running guard with its temp folder and upstream.
pub struct TestGuard {
    pub guard: Option<Guard>,
    pub dir: tempfile::TempDir,
    pub upstream: Upstream,
    pub config_path: PathBuf,
}

/// Standard config head: listeners, upstream, status and log are filled in by the harness.
/// `body` supplies the rest (groups, client_ip, users, rules, auth, mode...).
pub const DEFAULT_RULES: &str = r#"
groups:
  office: ["127.0.0.2/32"]
client_ip:
  trusted_proxies: ["127.0.0.100/32"]
users:
  inline:
    alice: "$ALICE_HASH"
rules:
  - name: cart-api
    path_prefix: /wp-json/wc/
    query: {rest_route: /wc/}
    allow: [integration-management]
    others: auth
  - name: admin
    path_prefix: /wp-admin
    allow: [office]
    others: deny
  - name: feed
    path_prefix: /feed
    others: open
  - name: site
    path_prefix: /
    allow: [integration-management, office]
    others: auth
"#;

/// Password of `alice` in DEFAULT_RULES.
pub const ALICE: &str = "alice-pass";

pub struct GuardOptions {
    pub body: String,
    /// Extra top-level YAML for `upstream:` keys (indented under upstream).
    pub upstream_extra: String,
    pub log_format: &'static str,
    pub listeners: String,
    pub limits: String,
    pub upstream_url: Option<String>,
    /// Extra YAML under `status:` (indented two spaces), e.g.
    /// `"  expect:\n    - {group: integration-management, within: 1s}\n"`.
    pub status_extra: String,
    /// `upstream.timeout` (until the response head arrives).
    pub upstream_timeout: &'static str,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            body: DEFAULT_RULES.to_string(),
            upstream_extra: String::new(),
            log_format: "json",
            listeners: "  - addr: \"127.0.0.1:0\"\n".into(),
            limits: String::new(),
            upstream_url: None,
            status_extra: String::new(),
            upstream_timeout: "5s",
        }
    }
}

impl TestGuard {
    pub async fn start() -> TestGuard {
        Self::start_with(GuardOptions::default()).await
    }

    pub async fn with_body(body: &str) -> TestGuard {
        Self::start_with(GuardOptions { body: body.to_string(), ..Default::default() }).await
    }

    pub async fn start_with(o: GuardOptions) -> TestGuard {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = Self::yaml(&o, &upstream, &dir);
        let config_path = dir.path().join("cartguard.yaml");
        std::fs::write(&config_path, &yaml).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let guard = Guard::start(config).await.unwrap();
        TestGuard { guard: Some(guard), dir, upstream, config_path }
    }

    pub fn yaml(o: &GuardOptions, upstream: &Upstream, dir: &tempfile::TempDir) -> String {
        let body = o.body.replace("$ALICE_HASH", &hash(ALICE));
        let url = o.upstream_url.clone().unwrap_or_else(|| upstream.url());
        format!(
            "listen:\n{}upstream:\n  url: \"{url}\"\n  connect_timeout: 2s\n  timeout: {}\n  probe_interval: 200ms\n{}status:\n  listen: \"127.0.0.9:0\"\n{}\nlog:\n  format: {}\n  path: \"{}\"\n{}\n",
            o.listeners,
            o.upstream_timeout,
            o.upstream_extra,
            o.status_extra,
            o.log_format,
            dir.path().join("access.log").display(),
            if o.limits.is_empty() { String::new() } else { format!("limits:\n{}", o.limits) },
        ) + &body
    }

    pub fn guard(&self) -> &Guard {
        self.guard.as_ref().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.guard().addrs[0]
    }

    pub fn admin(&self) -> SocketAddr {
        self.guard().admin_addr.unwrap()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Waits until the access log holds at least `n` lines and returns them parsed.
    pub async fn log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        json_log_lines(&self.log_path(), n).await
    }

    pub async fn raw_log_lines(&self, n: usize) -> Vec<String> {
        raw_log_lines(&self.log_path(), n).await
    }

    /// The last access record (waits for `n` records in total).
    pub async fn record(&self, n: usize) -> serde_json::Value {
        self.log_lines(n).await[n - 1].clone()
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.guard.take() {
            g.shutdown().await;
        }
    }

    pub fn rewrite_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, f(text)).unwrap();
    }
}

/// Waits until the log file holds at least `n` complete lines.
pub async fn raw_log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // The writer may be mid-line: only newline-terminated lines count.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let lines: Vec<String> = complete.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("access log has fewer than {n} lines:\n{}", std::fs::read_to_string(path).unwrap_or_default());
}

pub async fn json_log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    raw_log_lines(path, n)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect()
}

/// The guard's handler called in this process, with no listener: the request
/// facts a socket would give (peer address) are passed in. The upstream is real.
pub struct InProcess {
    pub shared: Arc<cartguard::state::Shared>,
    pub dir: tempfile::TempDir,
    pub upstream: Upstream,
}

/// A guard a test can send a request to: the real listener or the in-process handler.
pub trait Serve {
    fn addr(&self) -> SocketAddr;
    async fn serve(&self, rb: RequestBuilder) -> Reply;
}

impl Serve for TestGuard {
    fn addr(&self) -> SocketAddr {
        TestGuard::addr(self)
    }
    async fn serve(&self, rb: RequestBuilder) -> Reply {
        rb.send().await
    }
}

impl Serve for InProcess {
    fn addr(&self) -> SocketAddr {
        IN_PROCESS
    }
    async fn serve(&self, rb: RequestBuilder) -> Reply {
        self.call(rb).await
    }
}

/// The address requests are "sent" to in process; never connected to.
pub const IN_PROCESS: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl InProcess {
    pub async fn start() -> InProcess {
        Self::start_with(GuardOptions::default()).await
    }

    pub async fn with_body(body: &str) -> InProcess {
        Self::start_with(GuardOptions { body: body.to_string(), ..Default::default() }).await
    }

    pub async fn start_with(o: GuardOptions) -> InProcess {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = TestGuard::yaml(&o, &upstream, &dir);
        let config = Config::from_yaml(&yaml, &dir.path().join("cartguard.yaml"))
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let shared = cartguard::shared_state(config).unwrap();
        InProcess { shared, dir, upstream }
    }

    /// Runs the whole handler for one request from `rb`'s source address.
    pub async fn call(&self, rb: RequestBuilder) -> Reply {
        let mut req = Request::builder().method(rb.method.as_str()).uri(rb.target.as_str());
        for (n, v) in &rb.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(rb.body))).unwrap();
        let conn = Arc::new(cartguard::conn::ConnInfo::detached(SocketAddr::new(rb.source, 40000), "in-process"));
        let resp = cartguard::proxy::handle(self.shared.clone(), conn, req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        Reply {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The `n`th access record (waits for `n` records in total).
    pub async fn record(&self, n: usize) -> serde_json::Value {
        json_log_lines(&self.log_path(), n).await[n - 1].clone()
    }

    pub fn status(&self) -> cartguard::status::StatusDoc {
        cartguard::status::StatusDoc::collect(&self.shared)
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client bound to a chosen loopback source address.
pub struct Client {
    pub source: IpAddr,
}

pub fn client_from(source: &str) -> Client {
    Client { source: source.parse().unwrap() }
}

pub struct RequestBuilder {
    source: IpAddr,
    addr: SocketAddr,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Client {
    pub fn request(&self, addr: SocketAddr, method: &str, target: &str) -> RequestBuilder {
        RequestBuilder {
            source: self.source,
            addr,
            method: method.into(),
            target: target.into(),
            headers: vec![("Host".into(), "shop.test".into())],
            body: Vec::new(),
        }
    }
    pub fn get(&self, addr: SocketAddr, target: &str) -> RequestBuilder {
        self.request(addr, "GET", target)
    }
    pub async fn connect(&self, addr: SocketAddr) -> TcpStream {
        connect_from(self.source, addr).await
    }
}

pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

impl RequestBuilder {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn no_host(mut self) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        self
    }
    pub fn basic(self, user: &str, password: &str) -> Self {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self.headers.push(("Content-Length".into(), body.len().to_string()));
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
    pub async fn send(self) -> Reply {
        raw(self.source, self.addr, &self.bytes()).await
    }
}

/// Sends raw bytes from `source` and reads the response until the server closes.
pub async fn raw(source: IpAddr, addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut s = connect_from(source, addr).await;
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("response timed out");
    parse_reply(&buf).unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// Like `raw` but returns None when the server closes without a response.
pub async fn raw_maybe(source: IpAddr, addr: SocketAddr, bytes: &[u8]) -> Option<Reply> {
    let mut s = connect_from(source, addr).await;
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse_reply(&buf)
}

pub fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Reply { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// GET on the admin listener; returns (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str, accept: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    let r = raw("127.0.0.1".parse().unwrap(), addr, req.as_bytes()).await;
    (r.status, r.text())
}

pub async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = admin_get(addr, "/status", "application/json").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

pub fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The path of an outside tool a test checks against (promtool, pebble, ...), or `None` with a
/// note when it is missing on a developer machine. CI sets `CARTGUARD_REQUIRE_TOOLS=1` after
/// `.ci/install-tools`, which turns a missing tool into a failure rather than a silent skip.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CARTGUARD_REQUIRE_TOOLS").is_none(),
            "{name} is required (CARTGUARD_REQUIRE_TOOLS is set): install it with .ci/install-tools"
        );
        eprintln!("skipped: {name} is not installed (run .ci/install-tools to check against it)");
    }
    found
}
