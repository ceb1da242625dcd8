//! The access log: exactly one record per request, written off the hot path.
//!
//! Requests hand a finished record to a bounded channel (never blocking; a full
//! channel counts a drop); one writer thread formats and writes them through a
//! buffer, in batches: flushed when the queue runs dry, then a short nap lets the
//! next batch gather (no wake-up or write(2) per request under load). Passwords and Authorization
//! values are never part of a record; secret-looking query values are redacted
//! before the record is built, and control bytes are escaped in both formats.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

mod json;

use crate::config::LogFormat;
pub use crate::verdict::DecisionLabel;

/// Who produced the status the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    Guard,
    Upstream,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    #[serde(serialize_with = "ser_time")]
    pub time: SystemTime,
    pub request_id: String,
    pub client_ip: String,
    pub peer_ip: String,
    pub listener: String,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    pub group: Option<String>,
    pub rule: Option<String>,
    pub decision: DecisionLabel,
    pub enforced: bool,
    pub user: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub source: StatusSource,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(serialize_with = "ser_ms")]
    pub duration_ms: f64,
    #[serde(serialize_with = "ser_opt_ms")]
    pub upstream_ms: Option<f64>,
    pub user_agent: String,
    pub referer: String,
    pub error: Option<String>,
}

impl AccessRecord {
    /// A record with nothing known yet but the connection: every writer starts here.
    /// The status 499 and its error stand until something answers the request.
    pub fn new(peer: std::net::SocketAddr, listener: &str, tls: Option<&'static str>) -> AccessRecord {
        let ip = crate::proxy::headers::ip_string(peer.ip().to_canonical());
        AccessRecord {
            time: SystemTime::now(),
            request_id: String::new(),
            client_ip: ip.clone(),
            peer_ip: ip,
            listener: listener.to_string(),
            protocol: "HTTP/1.1",
            tls,
            group: None,
            rule: None,
            decision: DecisionLabel::BadRequest,
            enforced: true,
            user: None,
            method: "-".into(),
            host: String::new(),
            path: "-".into(),
            status: 499,
            upstream_status: None,
            source: StatusSource::Guard,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            upstream_ms: None,
            user_agent: String::new(),
            referer: String::new(),
            error: Some("client closed the connection before the response".into()),
        }
    }

    /// A request refused at the connection level, before it had a method or path.
    pub fn connection_level(
        peer: std::net::SocketAddr,
        listener: &str,
        tls: Option<&'static str>,
        status: u16,
        error: String,
    ) -> AccessRecord {
        AccessRecord { status, error: Some(error), ..AccessRecord::new(peer, listener, tls) }
    }
}

/// Milliseconds to the microsecond: `0.031`, not `0.031016000000000002`.
fn ser_ms<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms * 1000.0).round() / 1000.0)
}

fn ser_opt_ms<S: serde::Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => ser_ms(ms, s),
        None => s.serialize_none(),
    }
}

pub(crate) fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

enum Message {
    Record(Box<AccessRecord>),
    Reopen,
}

/// The sending side, cheap to clone into every request.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

const QUEUE: usize = 65_536;

impl AccessLog {
    /// Starts the writer thread. `path: None` is stdout.
    pub fn start(format: LogFormat, path: Option<PathBuf>) -> io::Result<AccessLog> {
        let sink = Sink::open(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx, sink, format))?;
        Ok(AccessLog { tx, dropped: Arc::new(AtomicU64::new(0)) })
    }

    pub fn write(&self, record: AccessRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Message::Record(Box::new(record))) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// SIGUSR1: reopen the file after logrotate renamed it.
    pub fn reopen(&self) {
        let _ = self.tx.send(Message::Reopen);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(PathBuf, File),
}

impl Sink {
    fn open(path: Option<PathBuf>) -> io::Result<Sink> {
        Ok(match path {
            None => Sink::Stdout(io::stdout()),
            Some(p) => {
                let f = OpenOptions::new().create(true).append(true).open(&p)?;
                Sink::File(p, f)
            }
        })
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(_, w) => w,
        }
    }
}

/// While records keep coming, the writer naps this long between batches instead of
/// being woken for each one: under load that saves a futex wake, a context switch
/// and a write(2) per request; an idle log still gets each record within this delay.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
/// A batch is written out when it reaches this size, or when the queue runs dry.
const BATCH_BYTES: usize = 64 * 1024;

/// Records are formatted straight into one batch buffer, which is written with one
/// write(2) per batch (no line buffer copied into a second, buffered writer).
struct Batch {
    buf: Vec<u8>,
    sink: Sink,
}

impl Batch {
    fn write_out(&mut self) {
        if !self.buf.is_empty() && self.sink.out().write_all(&self.buf).is_err() {
            // Nowhere better to report it than the diagnostic log.
            tracing::warn!("access log write failed");
        }
        self.buf.clear();
        let _ = self.sink.out().flush();
    }
}

fn writer(rx: Receiver<Message>, sink: Sink, format: LogFormat) {
    let mut batch = Batch { buf: Vec::with_capacity(BATCH_BYTES + 4096), sink };
    'idle: while let Ok(first) = rx.recv() {
        let mut msg = first;
        loop {
            handle(msg, &mut batch, format);
            match rx.try_recv() {
                Ok(m) => {
                    msg = m;
                    continue;
                }
                Err(TryRecvError::Disconnected) => break 'idle,
                Err(TryRecvError::Empty) => {}
            }
            // The queue ran dry: write the batch out, then give the next one time to gather.
            batch.write_out();
            std::thread::sleep(BATCH_PAUSE);
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(TryRecvError::Empty) => continue 'idle,
                Err(TryRecvError::Disconnected) => break 'idle,
            }
        }
    }
    batch.write_out();
}

fn handle(msg: Message, batch: &mut Batch, format: LogFormat) {
    match msg {
        Message::Record(r) => {
            format_record(&r, format, &mut batch.buf);
            if batch.buf.len() >= BATCH_BYTES {
                batch.write_out();
            }
        }
        Message::Reopen => {
            batch.write_out();
            let reopen_path = match &batch.sink {
                Sink::File(path, _) => Some(path.clone()),
                Sink::Stdout(_) => None,
            };
            if let Some(path) = reopen_path {
                match Sink::open(Some(path.clone())) {
                    Ok(s) => {
                        batch.sink = s;
                        tracing::info!(path = %path.display(), "access log reopened");
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "access log reopen failed; keeping the old file")
                    }
                }
            }
        }
    }
}

pub fn format_record(r: &AccessRecord, format: LogFormat, out: &mut Vec<u8>) {
    match format {
        LogFormat::Json => json::write_record(r, out),
        LogFormat::Combined => {
            use std::fmt::Write as _;
            let mut s = String::with_capacity(256);
            let _ = write!(
                s,
                "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" rule=\"{}\" decision={} source={} group=\"{}\" peer={} rid={} duration_ms={:.3}",
                r.client_ip,
                combined_user(r.user.as_deref()),
                clf_time(r.time),
                escape_combined(&r.method),
                escape_combined(&r.path),
                r.protocol,
                r.status,
                r.bytes_out,
                if r.referer.is_empty() { "-".into() } else { escape_combined(&r.referer) },
                if r.user_agent.is_empty() { "-".into() } else { escape_combined(&r.user_agent) },
                escape_combined(r.rule.as_deref().unwrap_or("-")),
                r.decision.as_str(),
                match r.source {
                    StatusSource::Guard => "guard",
                    StatusSource::Upstream => "upstream",
                },
                escape_combined(r.group.as_deref().unwrap_or("-")),
                r.peer_ip,
                r.request_id,
                r.duration_ms,
            );
            if let Some(e) = &r.error {
                let _ = write!(s, " error=\"{}\"", escape_combined(e));
            }
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.push(b'\n');
}

/// The unquoted `%u` field: one token whatever the client sent (an empty name
/// would leave two spaces, a space would shift every field after it).
fn combined_user(user: Option<&str>) -> String {
    match user {
        None | Some("") => "-".into(),
        Some(u) => escape_combined(u).replace(' ', "\\x20"),
    }
}

/// Quotes, backslashes and every control or non-ASCII byte become `\xHH`.
pub fn escape_combined(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60, since.subsec_millis())
}

/// `2026-11-29T04:43:04.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// `rfc3339` appended to `out`. By hand: this runs for every access record, and
/// `format!` costs several times more.
fn push_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    if !(0..=9999).contains(&y) {
        out.extend_from_slice(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z").as_bytes());
        return;
    }
    push_2(out, y as u64 / 100);
    push_2(out, y as u64 % 100);
    for (c, v) in [(b'-', u64::from(mo)), (b'-', u64::from(d)), (b'T', h), (b':', mi), (b':', s)] {
        out.push(c);
        push_2(out, v);
    }
    out.push(b'.');
    out.push(b'0' + (ms / 100 % 10) as u8);
    push_2(out, u64::from(ms % 100));
    out.push(b'Z');
}

fn push_2(out: &mut Vec<u8>, v: u64) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// `29/Nov/2026:04:43:04 +0000`
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, mo, d, h, mi, s, _) = parts(t);
    format!("{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000", MONTHS[(mo - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record() -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_927_384_123),
            request_id: "r1".into(),
            client_ip: "50.18.194.14".into(),
            peer_ip: "127.0.0.1".into(),
            listener: "127.0.0.1:8080".into(),
            protocol: "HTTP/1.1",
            tls: None,
            group: Some("integration-management".into()),
            rule: Some("cart-api".into()),
            decision: DecisionLabel::Allow,
            enforced: true,
            user: None,
            method: "GET".into(),
            host: "shop".into(),
            path: "/wp-json/wc/v3/orders".into(),
            status: 200,
            upstream_status: Some(200),
            source: StatusSource::Upstream,
            bytes_in: 0,
            bytes_out: 12,
            duration_ms: 1.5,
            upstream_ms: Some(1.0),
            user_agent: "curl/8".into(),
            referer: String::new(),
            error: None,
        }
    }

    #[test]
    fn times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_927_384_123);
        assert_eq!(rfc3339(t), "2026-11-29T04:43:04.123Z");
        assert_eq!(clf_time(t), "29/Nov/2026:04:43:04 +0000");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_line_has_the_fields() {
        let mut out = Vec::new();
        format_record(&record(), LogFormat::Json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["source"], "upstream");
        assert_eq!(v["group"], "integration-management");
        assert_eq!(v["time"], "2026-11-29T04:43:04.123Z");
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn combined_line_is_parseable_and_escaped() {
        let mut r = record();
        r.user_agent = "evil\r\n\u{1b}[31m\"x".into();
        r.path = "/a\nb".into();
        let mut out = Vec::new();
        format_record(&r, LogFormat::Combined, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("50.18.194.14 - - [29/Nov/2026:04:43:04 +0000] \"GET /a\\x0ab HTTP/1.1\" 200 12 \"-\" \"evil\\x0d\\x0a\\x1b[31m\\x22x\""), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn combined_user_is_always_one_token() {
        for (user, want) in
            [(None, "-"), (Some(""), "-"), (Some("two words"), "two\\x20words"), (Some("a\nb"), "a\\x0ab")]
        {
            let mut r = record();
            r.user = user.map(str::to_string);
            let mut out = Vec::new();
            format_record(&r, LogFormat::Combined, &mut out);
            let line = String::from_utf8(out).unwrap();
            assert!(line.starts_with(&format!("50.18.194.14 - {want} [")), "{line}");
        }
    }

    #[test]
    fn json_escapes_controls() {
        let mut r = record();
        r.user_agent = "a\u{1b}b\u{7f}c\u{85}d\ne".into();
        let mut out = Vec::new();
        format_record(&r, LogFormat::Json, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(!line[..line.len() - 1].bytes().any(|b| b < 0x20 || b == 0x7f), "{line:?}");
        assert!(!line.contains('\u{85}'));
    }
}
