//! Strict HTTP/1 framing: every request head is checked byte by byte before hyper
//! sees it, and ambiguous framing is refused instead of being resolved.
//!
//! hyper (through httparse) accepts bare LF line endings, lets chunked win over a
//! Content-Length, and drops a raw `#` from the target; a cart or another proxy
//! behind the guard may read the same bytes differently (request smuggling). So
//! `HeadCheck` follows the byte stream of one HTTP/1 connection: heads are held
//! back until they are complete and valid, bodies pass through while only their
//! length is counted (Content-Length, or the chunk sizes), which keeps pipelined
//! requests in step with hyper. `FramingIo` puts it under hyper: a refused head
//! never reaches hyper, which sees the end of the stream instead, finishes the
//! requests before it, and on shutdown the 400 is written.
//!
//! The normal path is one pass over bytes already read: heads are scanned once,
//! body bytes are skipped by count, and nothing is copied unless a head arrives
//! split across reads.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a head was refused, and with which status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub status: u16,
    pub reason: &'static str,
}

/// Where the head that is still open (incomplete) or was refused started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadStart {
    /// In an earlier piece of input.
    Earlier,
    /// At this offset of the current piece.
    At(usize),
}

/// What `HeadCheck::scan` found in one piece of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// All of it belongs to complete, valid heads and their bodies (a body may go on).
    Clean,
    /// A head is still incomplete at the end: hold it back from where it started.
    Open(HeadStart),
    /// A head is refused; what came before it is fine.
    Refused(Violation, HeadStart),
    /// The body of an accepted head is malformed (chunk syntax): cut the connection.
    BadBody(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: the next byte starts a head.
    Idle,
    /// A CR of an empty line before the request line.
    LeadLf,
    Method,
    Target,
    Version,
    RequestLineLf,
    LineStart,
    Name,
    Value,
    ValueLf,
    EndLf,
    Body(u64),
    ChunkSize,
    ChunkExt,
    ChunkSizeLf,
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    TrailerEndLf,
    /// HTTP/2 (after its connection preface): nothing more to check here.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    TransferEncoding,
    Other,
}

/// The longest header name worth capturing (`transfer-encoding`).
const NAME_CAP: usize = 17;
/// Longer Content-Length or Transfer-Encoding values are refused anyway.
const VALUE_CAP: usize = 32;

/// Follows one HTTP/1 connection's request stream; see the module doc.
#[derive(Debug)]
pub struct HeadCheck {
    state: State,
    max_head: usize,
    head_len: usize,
    messages: u64,
    target_len: usize,
    version: [u8; 8],
    version_len: usize,
    preface: bool,
    name: [u8; NAME_CAP],
    name_len: usize,
    current: Framing,
    value: [u8; VALUE_CAP],
    value_len: usize,
    content_lengths: u32,
    content_length: Option<u64>,
    content_length_bad: bool,
    transfer_encodings: u32,
    chunked: bool,
    chunk_digits: u32,
    chunk_size: u64,
}

impl HeadCheck {
    /// `max_head`: the longest head accepted (bytes, leading empty lines included).
    pub fn new(max_head: usize) -> HeadCheck {
        HeadCheck {
            state: State::Idle,
            max_head,
            head_len: 0,
            messages: 0,
            target_len: 0,
            version: [0; 8],
            version_len: 0,
            preface: false,
            name: [0; NAME_CAP],
            name_len: 0,
            current: Framing::Other,
            value: [0; VALUE_CAP],
            value_len: 0,
            content_lengths: 0,
            content_length: None,
            content_length_bad: false,
            transfer_encodings: 0,
            chunked: false,
            chunk_digits: 0,
            chunk_size: 0,
        }
    }

    fn in_head(&self) -> bool {
        matches!(
            self.state,
            State::LeadLf
                | State::Method
                | State::Target
                | State::Version
                | State::RequestLineLf
                | State::LineStart
                | State::Name
                | State::Value
                | State::ValueLf
                | State::EndLf
        )
    }

    /// Checks the next piece of the connection's bytes, continuing where the last one ended.
    pub fn scan(&mut self, input: &[u8]) -> Scan {
        let mut open = self.in_head().then_some(HeadStart::Earlier);
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Passthrough => return Scan::Clean,
                State::Body(n) => {
                    let take = n.min((input.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n { State::Idle } else { State::Body(n - take) };
                    continue;
                }
                State::ChunkData(n) => {
                    let take = n.min((input.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n { State::ChunkDataCr } else { State::ChunkData(n - take) };
                    continue;
                }
                State::Idle => {
                    open = Some(HeadStart::At(i));
                    self.start_head();
                }
                _ => {}
            }
            // Most head bytes are header values and the target: skip those runs in one go.
            let run = match (self.state, self.current) {
                (State::Value, Framing::Other) => input[i..].iter().position(|&b| !is_value_byte(b)),
                (State::Target, _) => input[i..].iter().position(|&b| !matches!(b, b'!'..=b'~') || b == b'#'),
                _ => Some(0),
            }
            .unwrap_or(input.len() - i);
            if run > 0 {
                self.head_len += run;
                if self.state == State::Target {
                    self.target_len += run;
                }
                if self.head_len > self.max_head {
                    return Scan::Refused(violation(431, "request head too large"), started(open));
                }
                i += run;
                continue;
            }
            let b = input[i];
            i += 1;
            if self.in_head() || self.state == State::Idle {
                self.head_len += 1;
                if self.head_len > self.max_head {
                    return Scan::Refused(violation(431, "request head too large"), started(open));
                }
                if let Err(reason) = self.head_byte(b) {
                    return Scan::Refused(violation(400, reason), started(open));
                }
                if self.state == State::Idle || !self.in_head() {
                    // The head just ended (and was accepted).
                    open = None;
                }
            } else if let Err(reason) = self.body_byte(b) {
                return Scan::BadBody(reason);
            }
        }
        match open {
            Some(start) => Scan::Open(start),
            None => Scan::Clean,
        }
    }

    fn start_head(&mut self) {
        self.head_len = 0;
        self.target_len = 0;
        self.version_len = 0;
        self.preface = false;
        self.content_lengths = 0;
        self.content_length = None;
        self.content_length_bad = false;
        self.transfer_encodings = 0;
        self.chunked = false;
    }

    /// One byte of a head; moves to a body state (or Idle) when the head ends.
    fn head_byte(&mut self, b: u8) -> Result<(), &'static str> {
        match self.state {
            State::Idle => match b {
                b'\r' => self.state = State::LeadLf,
                b'\n' => return Err(BARE_LF),
                _ if is_tchar(b) => self.state = State::Method,
                _ => return Err("malformed request line"),
            },
            State::LeadLf => match b {
                b'\n' => {
                    // An empty line before the request line is ignored (RFC 9112 §2.2).
                    self.state = State::Idle;
                }
                _ => return Err(BARE_CR),
            },
            State::Method => match b {
                b' ' => self.state = State::Target,
                _ if is_tchar(b) => {}
                _ => return Err("malformed request line"),
            },
            State::Target => match b {
                b' ' if self.target_len > 0 => self.state = State::Version,
                b'#' => return Err("raw '#' in the request target"),
                b'!'..=b'~' => self.target_len += 1,
                _ => return Err("byte not allowed in the request target"),
            },
            State::Version => match b {
                b'\r' => self.state = State::RequestLineLf,
                b'\n' => return Err(BARE_LF),
                _ if self.version_len < self.version.len() => {
                    self.version[self.version_len] = b;
                    self.version_len += 1;
                }
                _ => return Err("unsupported HTTP version"),
            },
            State::RequestLineLf => {
                if b != b'\n' {
                    return Err(BARE_CR);
                }
                match &self.version[..self.version_len] {
                    b"HTTP/1.1" | b"HTTP/1.0" => {}
                    b"HTTP/2.0" if self.messages == 0 => self.preface = true,
                    _ => return Err("unsupported HTTP version"),
                }
                self.state = State::LineStart;
            }
            State::LineStart => match b {
                b'\r' => self.state = State::EndLf,
                b'\n' => return Err(BARE_LF),
                b' ' | b'\t' => return Err("obs-fold (a header line continued on the next line)"),
                _ if is_tchar(b) => {
                    self.name[0] = b.to_ascii_lowercase();
                    self.name_len = 1;
                    self.state = State::Name;
                }
                _ => return Err("malformed header line"),
            },
            State::Name => match b {
                b':' => {
                    self.current = match &self.name[..self.name_len.min(NAME_CAP)] {
                        _ if self.name_len > NAME_CAP => Framing::Other,
                        b"content-length" => Framing::ContentLength,
                        b"transfer-encoding" => Framing::TransferEncoding,
                        _ => Framing::Other,
                    };
                    self.value_len = 0;
                    self.state = State::Value;
                }
                b' ' | b'\t' => return Err("whitespace between a header name and the colon"),
                _ if is_tchar(b) => {
                    if self.name_len < NAME_CAP {
                        self.name[self.name_len] = b.to_ascii_lowercase();
                    }
                    self.name_len += 1;
                }
                _ => return Err("malformed header line"),
            },
            State::Value => match b {
                b'\r' => self.state = State::ValueLf,
                b'\n' => return Err(BARE_LF),
                _ if is_value_byte(b) => {
                    if self.current != Framing::Other {
                        if self.value_len < VALUE_CAP {
                            self.value[self.value_len] = b;
                        }
                        self.value_len += 1;
                    }
                }
                _ => return Err("control character in a header value"),
            },
            State::ValueLf => {
                if b != b'\n' {
                    return Err(BARE_CR);
                }
                self.end_header();
                self.state = State::LineStart;
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(BARE_CR);
                }
                self.end_head()?;
            }
            // Body states never reach here (`scan` routes them to `body_byte`).
            _ => debug_assert!(false, "head_byte outside a head"),
        }
        Ok(())
    }

    fn end_header(&mut self) {
        let value = trim_ows(&self.value[..self.value_len.min(VALUE_CAP)]);
        let whole = self.value_len <= VALUE_CAP;
        match self.current {
            Framing::ContentLength => {
                self.content_lengths += 1;
                if value.contains(&b',') {
                    // "5, 5" is several values too.
                    self.content_lengths += 1;
                }
                let digits = whole && !value.is_empty() && value.len() <= 18 && value.iter().all(u8::is_ascii_digit);
                self.content_length = digits.then(|| value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                self.content_length_bad |= !digits;
            }
            Framing::TransferEncoding => {
                self.transfer_encodings += 1;
                self.chunked = whole && value.eq_ignore_ascii_case(b"chunked");
            }
            Framing::Other => {}
        }
        self.current = Framing::Other;
    }

    /// The empty line: decide the body's framing, or refuse.
    fn end_head(&mut self) -> Result<(), &'static str> {
        self.messages += 1;
        if self.preface {
            if self.messages > 1 || self.head_len != "PRI * HTTP/2.0\r\n\r\n".len() {
                return Err("unsupported HTTP version");
            }
            self.state = State::Passthrough;
            return Ok(());
        }
        if self.transfer_encodings > 0 && self.content_lengths > 0 {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if self.transfer_encodings > 1 || (self.transfer_encodings == 1 && !self.chunked) {
            return Err("Transfer-Encoding other than exactly chunked");
        }
        if self.transfer_encodings == 1 && &self.version[..self.version_len] == b"HTTP/1.0" {
            return Err("Transfer-Encoding on an HTTP/1.0 request");
        }
        if self.content_lengths > 1 {
            return Err("several Content-Length values");
        }
        if self.content_length_bad {
            return Err("invalid Content-Length");
        }
        self.state = match (self.chunked, self.content_length) {
            (true, _) => {
                self.chunk_digits = 0;
                self.chunk_size = 0;
                State::ChunkSize
            }
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Idle,
        };
        Ok(())
    }

    /// One byte of chunked framing (sizes, line ends, trailers); data is skipped by count.
    fn body_byte(&mut self, b: u8) -> Result<(), &'static str> {
        const BAD_CHUNK: &str = "malformed chunked body";
        self.state = match (self.state, b) {
            (State::ChunkSize, _) if b.is_ascii_hexdigit() => {
                self.chunk_digits += 1;
                if self.chunk_digits > 15 {
                    return Err("chunk size too large");
                }
                self.chunk_size = self.chunk_size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                State::ChunkSize
            }
            (State::ChunkSize, b';' | b' ' | b'\t') if self.chunk_digits > 0 => State::ChunkExt,
            (State::ChunkSize, b'\r') if self.chunk_digits > 0 => State::ChunkSizeLf,
            (State::ChunkExt, b'\r') => State::ChunkSizeLf,
            (State::ChunkExt, b'\n') => return Err(BAD_CHUNK),
            (State::ChunkExt, _) => State::ChunkExt,
            (State::ChunkSizeLf, b'\n') if self.chunk_size == 0 => State::TrailerStart,
            (State::ChunkSizeLf, b'\n') => State::ChunkData(self.chunk_size),
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => {
                self.chunk_digits = 0;
                self.chunk_size = 0;
                State::ChunkSize
            }
            (State::TrailerStart, b'\r') => State::TrailerEndLf,
            (State::TrailerStart | State::Trailer, b'\n') => return Err(BAD_CHUNK),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => State::Trailer,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::TrailerEndLf, b'\n') => State::Idle,
            _ => return Err(BAD_CHUNK),
        };
        Ok(())
    }
}

const BARE_LF: &str = "bare LF line ending";
const BARE_CR: &str = "bare CR in the request head";

fn violation(status: u16, reason: &'static str) -> Violation {
    Violation { status, reason }
}

fn started(open: Option<HeadStart>) -> HeadStart {
    open.unwrap_or(HeadStart::Earlier)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &v[start..end]
}

/// RFC 9110 field-value bytes: VCHAR, obs-text, space and tab.
fn is_value_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// RFC 9110 token characters (method, header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The refused head, once there is one: the connection's record is written from it.
pub type Refused = Arc<OnceLock<Violation>>;

/// The IO under hyper on an HTTP/1-capable connection; see the module doc.
pub struct FramingIo<T> {
    inner: T,
    check: HeadCheck,
    /// An incomplete head, not yet given to hyper.
    held: Vec<u8>,
    /// Checked bytes waiting for room in hyper's buffer.
    ready: Vec<u8>,
    ready_pos: usize,
    refused: Refused,
    /// The 400 still to write on shutdown, and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
}

impl<T> FramingIo<T> {
    pub fn new(inner: T, max_head: usize, refused: Refused) -> Self {
        FramingIo {
            inner,
            check: HeadCheck::new(max_head),
            held: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            refused,
            reply: None,
        }
    }

    fn refuse(&mut self, v: Violation) {
        let body = format!("bad request: {}\n", v.reason);
        let status = if v.status == 431 { "431 Request Header Fields Too Large" } else { "400 Bad Request" };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        self.reply = Some(([head.into_bytes(), body.into_bytes()].concat(), 0));
        let _ = self.refused.set(v);
    }

    /// Moves held bytes plus `tail` to the ready queue.
    fn release(&mut self, tail: &[u8]) {
        self.ready.clear();
        self.ready_pos = 0;
        self.ready.append(&mut self.held);
        self.ready.extend_from_slice(tail);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = (this.ready.len() - this.ready_pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.reply.is_some() {
                // Refused: hyper sees the end of the stream after the requests before.
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                this.held.clear();
                return Poll::Ready(Ok(()));
            }
            let scan = this.check.scan(&buf.filled()[before..]);
            if scan == Scan::Clean && this.held.is_empty() {
                // The normal path: whole heads and bodies, passed on as read.
                return Poll::Ready(Ok(()));
            }
            // Offset (in the new bytes) up to which they may go on to hyper, and what to hold.
            let keep = match scan {
                Scan::Clean => None,
                Scan::Open(start) => Some((start, true)),
                Scan::Refused(v, start) => {
                    this.refuse(v);
                    Some((start, false))
                }
                Scan::BadBody(reason) => {
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason)));
                }
            };
            let new = buf.filled()[before..].to_vec();
            let new_len = new.len();
            let cut = match keep {
                None => new_len,
                Some((HeadStart::At(k), _)) => k,
                Some((HeadStart::Earlier, _)) => 0,
            };
            if this.held.is_empty() {
                buf.set_filled(before + cut);
            } else {
                let held_still_open = matches!(keep, Some((HeadStart::Earlier, _)));
                if !held_still_open {
                    this.release(&new[..cut]);
                }
                buf.set_filled(before);
            }
            match keep {
                Some((_, true)) => this.held.extend_from_slice(&new[cut..]),
                Some((_, false)) => this.held.clear(),
                None => {}
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    /// hyper shuts down after the last response before a refused head: the 400 goes out then.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some((reply, written)) = &mut this.reply {
            while *written < reply.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &reply[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(input: &[u8]) -> Option<&'static str> {
        match HeadCheck::new(8192).scan(input) {
            Scan::Refused(v, _) => Some(v.reason),
            _ => None,
        }
    }

    /// Every split of `input` into two reads gives the same verdict as one read.
    fn scan_split(input: &[u8]) -> Vec<Option<&'static str>> {
        (0..=input.len())
            .map(|cut| {
                let mut c = HeadCheck::new(8192);
                for part in [&input[..cut], &input[cut..]] {
                    if let Scan::Refused(v, _) = c.scan(part) {
                        return Some(v.reason);
                    }
                }
                None
            })
            .collect()
    }

    const OK: &[u8] = b"GET /shop?a=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n";

    #[test]
    fn a_plain_head_is_clean() {
        assert_eq!(HeadCheck::new(8192).scan(OK), Scan::Clean);
    }

    #[test]
    fn ambiguous_framing_is_named() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Transfer-Encoding other than exactly chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding other than exactly chunked",
            ),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding on an HTTP/1.0 request"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "several Content-Length values"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", "several Content-Length values"),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "invalid Content-Length"),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", BARE_LF),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", BARE_LF),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", BARE_LF),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", BARE_CR),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "obs-fold (a header line continued on the next line)"),
            (b"GET / HTTP/1.1\r\nX-Foo : a\r\n\r\n", "whitespace between a header name and the colon"),
            (b"GET / HTTP/1.1\r\nX-Foo\t: a\r\n\r\n", "whitespace between a header name and the colon"),
            (b"GET /a#b HTTP/1.1\r\n\r\n", "raw '#' in the request target"),
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", "byte not allowed in the request target"),
            (b"GET /a\x7fb HTTP/1.1\r\n\r\n", "byte not allowed in the request target"),
            (b"GET /a\tb HTTP/1.1\r\n\r\n", "byte not allowed in the request target"),
            (b"GET /a  HTTP/1.1\r\n\r\n", "unsupported HTTP version"),
            (b"GET / HTTP/1.2\r\n\r\n", "unsupported HTTP version"),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control character in a header value"),
        ];
        for (input, want) in cases {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(refusal(input), Some(*want), "{shown:?}");
            assert!(scan_split(input).iter().all(|r| *r == Some(*want)), "{shown:?} split: {:?}", scan_split(input));
        }
    }

    #[test]
    fn printable_target_bytes_are_left_to_the_path_checks() {
        // The guard's path and query checks refuse `"`, `\\`, bad escapes… with a full record.
        for target in ["/?a[]=1&b[x]=2", "/?q={x}|y^z`", "/a%20b/c;d=e@f:g!$&'()*+,~", "*", "/a\"b\\c%zz<>"] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(refusal(head.as_bytes()), None, "{target}");
        }
    }

    #[test]
    fn leading_empty_lines_are_ignored() {
        assert_eq!(HeadCheck::new(8192).scan(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), Scan::Clean);
    }

    #[test]
    fn an_oversized_head_is_431() {
        let mut c = HeadCheck::new(64);
        let head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(c.scan(head.as_bytes()), Scan::Refused(violation(431, "request head too large"), HeadStart::At(0)));
    }

    #[test]
    fn an_incomplete_head_is_held_from_where_it_started() {
        let mut c = HeadCheck::new(8192);
        let mut two = OK.to_vec();
        two.extend_from_slice(b"GET /next HT");
        assert_eq!(c.scan(&two), Scan::Open(HeadStart::At(OK.len())));
        assert_eq!(c.scan(b"TP/1.1\r\n"), Scan::Open(HeadStart::Earlier));
        assert_eq!(c.scan(b"Host: a\r\n\r\n"), Scan::Clean);
    }

    #[test]
    fn content_length_bodies_are_skipped_so_pipelined_heads_are_found() {
        let mut c = HeadCheck::new(8192);
        let body_looks_like_a_bad_head =
            b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nGET /#x \n\r\nGET /#y HTTP/1.1\r\n\r\n";
        let at = body_looks_like_a_bad_head.len() - "GET /#y HTTP/1.1\r\n\r\n".len();
        assert_eq!(
            c.scan(body_looks_like_a_bad_head),
            Scan::Refused(violation(400, "raw '#' in the request target"), HeadStart::At(at))
        );
    }

    #[test]
    fn chunked_bodies_and_trailers_are_followed() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nGET /\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(scan_split(input).iter().all(Option::is_none));
        assert_eq!(HeadCheck::new(8192).scan(input), Scan::Clean);
        let mut c = HeadCheck::new(8192);
        let smuggle = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /#x HTTP/1.1\r\n\r\n";
        let at = smuggle.len() - "GET /#x HTTP/1.1\r\n\r\n".len();
        assert!(matches!(c.scan(smuggle), Scan::Refused(_, HeadStart::At(k)) if k == at));
    }

    #[test]
    fn malformed_chunks_cut_the_connection() {
        for body in [&b"zz\r\n"[..], b"5\nhello", b"5\r\nhelloX", b"\r\n", b"1234567890abcdef0\r\n"] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            assert!(
                matches!(HeadCheck::new(8192).scan(&input), Scan::BadBody(_)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_http2_preface_switches_checking_off() {
        let mut c = HeadCheck::new(8192);
        assert_eq!(c.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"), Scan::Clean);
        assert_eq!(c.scan(b"\x00\n\r#anything"), Scan::Clean);
        // Only as the first thing on a connection.
        let mut late = OK.to_vec();
        late.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\n");
        assert_eq!(refusal(&late), Some("unsupported HTTP version"));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic, and splitting them never changes the verdict.
        #[test]
        fn any_bytes_scan_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), cut in 0usize..300) {
            let whole = HeadCheck::new(128).scan(&bytes);
            let cut = cut.min(bytes.len());
            let mut c = HeadCheck::new(128);
            let first = c.scan(&bytes[..cut]);
            let verdict = |s: &Scan| match s { Scan::Refused(v, _) => Some(v.clone()), _ => None };
            let split = if verdict(&first).is_some() || matches!(first, Scan::BadBody(_)) { first } else { c.scan(&bytes[cut..]) };
            proptest::prop_assert_eq!(verdict(&whole), verdict(&split));
        }
    }
}
