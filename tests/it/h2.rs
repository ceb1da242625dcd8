//! HTTP/2: prior knowledge on the plain listener, the stream
//! limit, and hyper/h2's protections against rapid reset (CVE-2023-44487), header
//! lists over `limits.max_header_bytes` and CONTINUATION floods.
//!
//! Well-behaved traffic goes through hyper's client. The attacks speak raw HTTP/2
//! (hand-built frames, HPACK literals without Huffman) so that they can do what a
//! client library refuses to do: ignore the stream limit, reset streams in bulk,
//! never end a header block.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::common::*;

async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut).await.unwrap_or_else(|_| panic!("{what} timed out"))
}

// ---------------------------------------------------------------------------
// hyper's HTTP/2 client with prior knowledge

async fn h2_client(source: &str, addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = connect_from(ip(source), addr).await;
    let (send, conn) = within(10, "h2 handshake", async {
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap()
    })
    .await;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One GET on an h2 connection: the status, or the error that ended the stream.
async fn h2_get(send: &mut SendRequest<Empty<Bytes>>, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let mut req = http::Request::get(format!("http://shop.test{path}"));
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).unwrap();
    within(15, "h2 request", async {
        send.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
        let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|e| format!("body: {e:?}"))?;
        Ok(status)
    })
    .await
}

/// A fresh h2 connection from the office: /wp-admin/ must still be served.
async fn office_still_served(addr: SocketAddr) {
    let mut send = h2_client("127.0.0.2", addr).await;
    assert_eq!(h2_get(&mut send, "/wp-admin/after", &[]).await, Ok(200), "a fresh h2 connection is not served");
}

// ---------------------------------------------------------------------------
// Raw HTTP/2 frames

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The frame size every HTTP/2 peer must accept (the guard does not raise it).
const MAX_FRAME: usize = 16_384;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
    fn last_stream(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }
    fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
            .collect()
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_FRAME);
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear).
fn hpack_len(out: &mut Vec<u8>, mut v: usize) {
    if v < 127 {
        out.push(v as u8);
        return;
    }
    out.push(127);
    v -= 127;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_len(out, s.len());
    out.extend_from_slice(s);
}

/// A GET header block: static-table :method GET and :scheme http, literal :path and
/// :authority (indexed names, never added to the dynamic table), then `extra`
/// as literal fields with literal names.
fn request_block(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04);
    hpack_str(&mut b, path.as_bytes());
    b.push(0x01);
    hpack_str(&mut b, b"shop.test");
    for (name, value) in extra {
        literal_field(&mut b, name, value);
    }
    b
}

/// A literal header field with a literal name, not indexed.
fn literal_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name.as_bytes());
    hpack_str(out, value);
}

/// The client preface, empty SETTINGS, and the ACK of the server's SETTINGS (the
/// server sends them first thing and waits for an ACK, so sending it up front keeps
/// the raw client from having to write while it reads).
fn opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(SETTINGS, ACK, 0, &[]));
    out
}

/// How a raw connection stopped delivering frames.
#[derive(Debug, PartialEq)]
enum End {
    /// EOF or a reset from the server.
    Closed,
    /// Nothing for `SILENCE`: the server kept the connection open.
    Silent,
}

const SILENCE: Duration = Duration::from_secs(5);

struct RawH2 {
    rd: OwnedReadHalf,
    /// Dropping the write half half-closes the socket, which h2 treats as the end of
    /// the connection; tests keep it until they have read what they need.
    wr: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
}

impl RawH2 {
    async fn open(source: &str, addr: SocketAddr) -> RawH2 {
        let (rd, mut wr) = connect_from(ip(source), addr).await.into_split();
        within(10, "h2 opening", wr.write_all(&opening())).await.unwrap();
        RawH2 { rd, wr: Some(wr), buf: Vec::new() }
    }

    /// Writes `bytes`; false when the server already closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        let wr = self.wr.as_mut().expect("write half taken");
        within(20, "h2 write", wr.write_all(bytes)).await.is_ok()
    }

    async fn next_frame(&mut self) -> Result<Frame, End> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(SILENCE, self.rd.read(&mut chunk)).await {
                Err(_) => return Err(End::Silent),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server closes or goes silent; returns the GOAWAY if one came.
    async fn until_end(&mut self) -> (Option<Frame>, End) {
        let mut goaway = None;
        for _ in 0..100_000 {
            match self.next_frame().await {
                Ok(f) if f.kind == GOAWAY => goaway = Some(f),
                Ok(_) => {}
                Err(end) => return (goaway, end),
            }
        }
        panic!("the server kept sending frames");
    }
}

// ---------------------------------------------------------------------------
// 1. Prior knowledge on the plain listener

#[tokio::test]
async fn h2_prior_knowledge_on_the_plain_listener_gets_the_same_decisions() {
    let g = TestGuard::start().await;

    let mut office = h2_client("127.0.0.2", g.addr()).await;
    assert_eq!(h2_get(&mut office, "/wp-admin/", &[]).await, Ok(200));
    assert_eq!(g.upstream.count(), 1);
    assert_eq!(g.upstream.last().target, "/wp-admin/");
    let rec = g.record(1).await;
    assert_eq!(rec["protocol"], "HTTP/2");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["group"], "office");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["host"], "shop.test");

    let mut stranger = h2_client("127.0.0.3", g.addr()).await;
    assert_eq!(h2_get(&mut stranger, "/wp-admin/", &[]).await, Ok(403));
    assert_eq!(g.upstream.count(), 1, "a denied h2 request reached the upstream");
    let rec = g.record(2).await;
    assert_eq!(rec["protocol"], "HTTP/2");
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["rule"], "admin");
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["client_ip"], "127.0.0.3");
}

// ---------------------------------------------------------------------------
// 2. Stream limit

/// Opens `n` streams on /slow/1000 in one burst, ignoring the advertised limit, and
/// reads until every stream is answered or refused, or the connection ends.
/// Returns (SETTINGS pairs, answered-with-200 ids, refused ids, GOAWAY, end).
async fn over_the_stream_limit(
    g: &TestGuard,
    n: u32,
) -> (Vec<(u16, u32)>, BTreeSet<u32>, BTreeSet<u32>, Option<Frame>, Option<End>) {
    let mut c = RawH2::open("127.0.0.2", g.addr()).await;
    let block = request_block("/slow/1000", &[]);
    let burst: Vec<u8> = (0..n).flat_map(|i| frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &block)).collect();
    assert!(c.send(&burst).await, "the server closed before the burst was written");
    let (mut settings, mut answered, mut refused, mut goaway) = (Vec::new(), BTreeSet::new(), BTreeSet::new(), None);
    let mut end = None;
    while answered.len() + refused.len() < n as usize {
        match c.next_frame().await {
            Ok(f) if f.kind == SETTINGS && f.flags & ACK == 0 => settings = f.settings(),
            Ok(f) if f.kind == HEADERS => {
                // h2 encodes :status 200 as static-table index 8.
                assert_eq!(f.payload.first(), Some(&0x88), "stream {} not answered 200", f.stream);
                answered.insert(f.stream);
            }
            Ok(f) if f.kind == RST_STREAM => {
                assert_eq!(f.code(), REFUSED_STREAM, "stream {} reset for another reason", f.stream);
                refused.insert(f.stream);
            }
            Ok(f) if f.kind == GOAWAY => goaway = Some(f),
            Ok(_) => {}
            Err(e) => {
                end = Some(e);
                break;
            }
        }
    }
    (settings, answered, refused, goaway, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_limit_of_100_is_advertised_and_enforced() {
    let g = TestGuard::start().await;
    let (settings, answered, refused, goaway, end) = within(40, "150 streams", over_the_stream_limit(&g, 150)).await;

    assert!(settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 100)), "server SETTINGS: {settings:?}");
    assert!(settings.contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, 16 * 1024)), "server SETTINGS: {settings:?}");
    assert!(goaway.is_none(), "50 refusals must not end the connection: {goaway:?}");
    assert_eq!(end, None);
    // The first 100 streams are served; the 50 beyond the limit are refused before
    // anything is forwarded (REFUSED_STREAM: the client may retry them).
    assert_eq!(answered, (0..100).map(|i| 1 + 2 * i).collect::<BTreeSet<u32>>());
    assert_eq!(refused, (100..150).map(|i| 1 + 2 * i).collect::<BTreeSet<u32>>());
    assert_eq!(g.upstream.count(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_too_many_refused_streams_end_the_connection() {
    // max_local_error_reset_streams(64): a client that keeps opening streams beyond
    // the limit gets GOAWAY ENHANCE_YOUR_CALM after 64 refusals (hyper's default is 1024).
    let g = TestGuard::start().await;
    let (_, answered, refused, goaway, end) = within(40, "250 streams", over_the_stream_limit(&g, 250)).await;
    let goaway = goaway.expect("no GOAWAY after 150 streams over the limit");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
    assert_eq!(refused.len(), 64, "refusals before GOAWAY");
    assert!(answered.len() <= 100);
    assert_eq!(end, Some(End::Closed));
    assert!(g.upstream.count() <= 100, "{} requests reached the upstream", g.upstream.count());
    office_still_served(g.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_with_150_slow_requests_is_served_100_at_a_time() {
    let g = TestGuard::start().await;
    let send = h2_client("127.0.0.2", g.addr()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let mut send = send.clone();
        tasks.spawn(async move { h2_get(&mut send, "/slow/500", &[]).await });
    }
    // Every /slow/500 holds its stream for at least 500 ms, so while the first
    // wave is in flight at most 100 can have reached the upstream.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let early = g.upstream.count();
    assert!(early <= 100, "{early} requests in flight on one connection");
    let mut ok = 0;
    while let Some(r) = within(60, "150 slow requests", tasks.join_next()).await {
        assert_eq!(r.unwrap(), Ok(200));
        ok += 1;
    }
    assert_eq!(ok, 150);
    assert_eq!(g.upstream.count(), 150);
}

// ---------------------------------------------------------------------------
// 3. Rapid reset (CVE-2023-44487)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_ends_the_connection_and_spares_the_upstream() {
    const STREAMS: u32 = 2000;
    const CHUNK: u32 = 100;
    let g = TestGuard::start().await;
    let mut c = RawH2::open("127.0.0.5", g.addr()).await;
    let block = request_block("/feed/rr", &[]);
    let mut wr = c.wr.take().unwrap();
    // HEADERS then RST_STREAM(CANCEL) for each stream, written while the reader below
    // drains the server's frames. Returns the write half so the socket stays open.
    let writer = tokio::spawn(async move {
        let mut written = 0;
        for chunk in 0..STREAMS / CHUNK {
            let mut bytes = Vec::new();
            for i in chunk * CHUNK..(chunk + 1) * CHUNK {
                bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &block));
                bytes.extend(frame(RST_STREAM, 0, 1 + 2 * i, &CANCEL.to_be_bytes()));
            }
            match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&bytes)).await {
                Ok(Ok(())) => written += CHUNK,
                _ => break,
            }
        }
        (written, wr)
    });
    let (goaway, end) = within(60, "rapid reset", c.until_end()).await;
    let (written, _wr) = within(30, "rapid reset writer", writer).await.unwrap();

    assert_eq!(end, End::Closed, "the server kept a rapid-reset connection open ({written} streams written)");
    let goaway = goaway.expect("connection closed without GOAWAY");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM, "GOAWAY {goaway:?}");
    let last = goaway.last_stream();
    assert!(last < 2 * STREAMS - 1, "the server processed every stream (last {last})");

    // Streams hyper accepted before their reset arrived may have been forwarded;
    // wait for stragglers, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forwarded = g.upstream.count();
    eprintln!(
        "rapid reset: {written} streams written, GOAWAY last_stream_id {last} ({} streams), {forwarded} reached the upstream",
        last.div_ceil(2)
    );
    assert!(forwarded < 100, "{forwarded} of {STREAMS} reset streams reached the upstream");

    let mut send = h2_client("127.0.0.5", g.addr()).await;
    assert_eq!(h2_get(&mut send, "/feed/after", &[]).await, Ok(200), "fresh connection after a rapid reset");
    assert_eq!(g.upstream.last().target, "/feed/after");
}

// ---------------------------------------------------------------------------
// 4. Header lists over max_header_bytes and CONTINUATION floods

#[tokio::test]
async fn h2_oversized_header_list_gets_431_and_never_reaches_the_upstream() {
    // Half of hyper's default (16 KiB), so that the test shows the setting is applied.
    let g =
        TestGuard::start_with(GuardOptions { limits: "  max_header_bytes: 8192\n".into(), ..Default::default() }).await;
    let mut send = h2_client("127.0.0.2", g.addr()).await;
    // 40 headers of 180 bytes: a header list of ~8.8 KiB (RFC 7541 size: name + value
    // + 32 each) against max_header_bytes 8 KiB, in a single HEADERS frame.
    let over: Vec<(String, String)> = (0..40).map(|i| (format!("x-over-{i}"), "v".repeat(180))).collect();
    assert_eq!(h2_get(&mut send, "/wp-admin/", &over).await, Ok(431));
    assert_eq!(g.upstream.count(), 0, "an oversized header list reached the upstream");
    // A stream error: the same connection keeps working.
    assert_eq!(h2_get(&mut send, "/wp-admin/", &[]).await, Ok(200));
    assert_eq!(g.upstream.count(), 1);

    // 200 headers of 200 bytes (~47 KiB), sent as HEADERS + CONTINUATION frames:
    // h2 stops buffering a block once it is over the limit, which ends the connection
    // (GOAWAY COMPRESSION_ERROR) rather than the stream.
    let mut send = h2_client("127.0.0.2", g.addr()).await;
    let flood: Vec<(String, String)> = (0..200).map(|i| (format!("x-flood-{i}"), "v".repeat(200))).collect();
    let r = h2_get(&mut send, "/wp-admin/", &flood).await;
    eprintln!("200 headers of 200 bytes: {r:?}");
    assert!(matches!(r, Ok(431)) || r.as_ref().is_err_and(|e| e.contains("GoAway")), "{r:?}");
    assert_eq!(g.upstream.count(), 1, "a 47 KiB header list reached the upstream");
    office_still_served(g.addr()).await;
}

/// HEADERS (with END_STREAM) and CONTINUATION frames carrying `block`, split at
/// `MAX_FRAME`; END_HEADERS on the last frame only when `end`.
fn split_block(stream: u32, block: &[u8], end: bool) -> Vec<u8> {
    let parts: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = end && i + 1 == parts.len();
        let flags = if last { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, flags | END_STREAM, stream, part));
        } else {
            out.extend(frame(CONTINUATION, flags, stream, part));
        }
    }
    out
}

#[tokio::test]
async fn h2_header_list_far_over_the_limit_ends_the_connection() {
    let g = TestGuard::start().await;
    // One 80 KiB header: beyond 4 x max_header_bytes, where h2 stops decoding and
    // answers GOAWAY ENHANCE_YOUR_CALM instead of a 431.
    let big = vec![b'a'; 80 * 1024];
    let block = request_block("/wp-admin/", &[("x-big", &big)]);
    let mut c = RawH2::open("127.0.0.2", g.addr()).await;
    c.send(&split_block(1, &block, true)).await;
    let (goaway, end) = within(30, "80 KiB header", c.until_end()).await;
    let goaway = goaway.expect("no GOAWAY for an 80 KiB header");
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
    assert_eq!(end, End::Closed);
    assert_eq!(g.upstream.count(), 0, "an 80 KiB header reached the upstream");
    office_still_served(g.addr()).await;
}

#[tokio::test]
async fn h2_continuation_flood_ends_the_connection() {
    let g = TestGuard::start().await;
    // A header block that never ends: CONTINUATION frames without END_HEADERS, first
    // empty (nothing grows, the classic flood), then each with one small header.
    let mut small = Vec::new();
    literal_field(&mut small, "x-c", &[b'b'; 64]);
    let fragments = [("empty", Vec::new()), ("small headers", small)];
    for (what, fragment) in fragments {
        let mut c = RawH2::open("127.0.0.2", g.addr()).await;
        let mut bytes = split_block(1, &request_block("/wp-admin/", &[]), false);
        for _ in 0..1000 {
            bytes.extend(frame(CONTINUATION, 0, 1, &fragment));
        }
        c.send(&bytes).await;
        let (goaway, end) = within(30, "CONTINUATION flood", c.until_end()).await;
        let goaway = goaway.unwrap_or_else(|| panic!("{what}: no GOAWAY for 1000 CONTINUATION frames ({end:?})"));
        assert_eq!(goaway.code(), ENHANCE_YOUR_CALM, "{what}");
        assert_eq!(end, End::Closed, "{what}");
    }
    assert_eq!(g.upstream.count(), 0, "a request with an endless header block reached the upstream");
    let goaways = g.guard().shared.stats.connection_refusals.get(cartguard::state::ConnRefusal::H2GoAway);
    assert_eq!(goaways, 2, "each GOAWAY is counted for /metrics");
    office_still_served(g.addr()).await;
}
