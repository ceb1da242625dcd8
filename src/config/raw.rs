//! The YAML as written: serde types that mirror the contract key for key.
//!
//! Every struct rejects unknown keys, so a typo such as `alow:` is an error
//! instead of a silent change of who gets in. `validate` turns these into the typed
//! `Config`; the few enums that are the same in both (mode, others, log format)
//! are defined with the types that use them and only re-exported here.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

pub use super::LogFormat;
pub use crate::policy::{Mode, Others};
pub use crate::tls::UnknownSni;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub mode: Mode,
    pub listen: Vec<RawListener>,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub client_ip: RawClientIp,
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    pub users: RawUsers,
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub alerts: RawAlerts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<OneOrMany<RawCert>>,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Plain listeners only: answer 308 to https, except for allowlisted clients.
    #[serde(default)]
    pub redirect_https: bool,
    /// TLS listeners only: what a ClientHello without a known name gets.
    #[serde(default)]
    pub unknown_sni: Option<UnknownSni>,
    /// Certificates from an ACME CA instead of `tls:` files.
    #[serde(default)]
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// `letsencrypt` (default), `staging`, or the https URL of a directory.
    #[serde(default = "default_directory")]
    pub directory: String,
    pub state_dir: PathBuf,
    /// `tls-alpn-01` and/or `http-01`, in order of preference.
    #[serde(default)]
    pub challenges: Option<Vec<String>>,
    /// A PEM root that signs the directory's HTTPS certificate (test or private CAs).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The first wait after a failed attempt; it doubles up to an hour.
    #[serde(default = "secs::<60>")]
    pub retry_backoff: Dur,
}

fn default_directory() -> String {
    "letsencrypt".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "secs::<5>")]
    pub connect_timeout: Dur,
    #[serde(default = "secs::<60>")]
    pub timeout: Dur,
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// How often the status listener probes the upstream with a TCP connect.
    #[serde(default = "secs::<10>")]
    pub probe_interval: Dur,
}

fn default_host() -> String {
    "preserve".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_ip_header")]
    pub header: String,
}

impl Default for RawClientIp {
    fn default() -> Self {
        RawClientIp { trusted_proxies: Vec::new(), header: default_ip_header() }
    }
}

fn default_ip_header() -> String {
    "x-forwarded-for".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsers {
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub allow: Vec<String>,
    pub others: Others,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default)]
    pub forward_credentials: bool,
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "mins::<10>")]
    pub failure_window: Dur,
    #[serde(default = "mins::<15>")]
    pub ban: Dur,
    /// How long a successful bcrypt/argon2 verification is remembered.
    #[serde(default = "mins::<5>")]
    pub cache_ttl: Dur,
    /// bcrypt/argon2 runs at once; absent: one per core minus one (at least 1).
    #[serde(default)]
    pub max_concurrent_verifications: Option<usize>,
    /// Logins waiting for a verification slot; beyond this they get 503.
    #[serde(default = "default_verify_queue")]
    pub verify_queue: usize,
    /// Nice value of the verification threads (0 = same priority as the rest).
    #[serde(default = "default_verify_nice")]
    pub verify_nice: i32,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            realm: default_realm(),
            forward_credentials: false,
            max_failures: default_max_failures(),
            failure_window: mins::<10>(),
            ban: mins::<15>(),
            cache_ttl: mins::<5>(),
            max_concurrent_verifications: None,
            verify_queue: default_verify_queue(),
            verify_nice: default_verify_nice(),
        }
    }
}

fn default_verify_queue() -> usize {
    256
}
fn default_verify_nice() -> i32 {
    10
}

fn default_realm() -> String {
    "Restricted".into()
}
fn default_max_failures() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// `null` turns the admin listener off.
    #[serde(default = "default_status_listen")]
    pub listen: Option<String>,
    #[serde(default)]
    pub expect: Vec<RawExpect>,
}

impl Default for RawStatus {
    fn default() -> Self {
        RawStatus { listen: default_status_listen(), expect: Vec::new() }
    }
}

fn default_status_listen() -> Option<String> {
    Some("127.0.0.1:9901".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub group: String,
    pub within: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_log_path")]
    pub path: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: LogFormat::Json, path: default_log_path() }
    }
}

fn default_log_path() -> String {
    "-".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "secs::<10>")]
    pub header_timeout: Dur,
    #[serde(default = "secs::<60>")]
    pub idle_timeout: Dur,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address (TCP peer or PROXY source) may hold.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Slots only allowlisted addresses may use; absent: max_connections / 8.
    #[serde(default)]
    pub reserved_for_allowlisted: Option<usize>,
    /// How long SIGTERM waits for requests in flight.
    #[serde(default = "secs::<30>")]
    pub shutdown_grace: Dur,
    /// hyper's timers do not cover the TLS handshake; this does.
    #[serde(default = "secs::<10>")]
    pub tls_handshake_timeout: Dur,
    /// Bytes per second a request body must average once it has taken longer than header_timeout.
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            header_timeout: secs::<10>(),
            idle_timeout: secs::<60>(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            reserved_for_allowlisted: None,
            shutdown_grace: secs::<30>(),
            tls_handshake_timeout: secs::<10>(),
            min_body_rate: default_min_body_rate(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_min_body_rate() -> u64 {
    1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_address() -> usize {
    256
}

/// A group is a list of addresses/CIDRs, or `{file: PATH}` with one a line.
#[derive(Debug)]
pub enum RawGroup {
    List(Vec<String>),
    File(RawGroupFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroupFile {
    pub file: PathBuf,
}

impl<'de> Deserialize<'de> for RawGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawGroup;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of addresses/CIDRs or {file: PATH}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawGroupFile::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawGroup::File)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(RawGroup::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// `alerts:`: where to tell the owner, and how often at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// The same kind of alert about the same thing is sent at most once per this window.
    #[serde(default = "mins::<60>")]
    pub repeat_after: Dur,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts { sinks: Vec::new(), repeat_after: mins::<60>() }
    }
}

/// One place alerts go: exactly one of `webhook` and `command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Command sinks: what goes to stdin (`json`, or `mail` for sendmail).
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default = "secs::<10>")]
    pub timeout: Dur,
    /// Webhooks: attempts after the first failed one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Webhooks: the wait before the first retry; doubles each time.
    #[serde(default = "secs::<2>")]
    pub backoff: Dur,
}

fn default_retries() -> u32 {
    3
}

fn secs<const N: u64>() -> Dur {
    Dur(Duration::from_secs(N))
}
fn mins<const N: u64>() -> Dur {
    Dur(Duration::from_secs(N * 60))
}

/// A duration written as "500ms", "10s", "5m" or "6h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(de::Error::custom)
    }
}

/// Parses "500ms", "10s", "5m", "6h", "1d" (one number, one unit; no sign, no fractions).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: expected numbers with units d, h, m, s, ms, largest first \
             and each at most once, like 500ms, 10s, 5m, 6h or 1h30m"
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen: the next one must be smaller, so that a
    // typo such as `30m1h` or `5m5m` is an error rather than a surprise sum.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let i = UNITS.iter().position(|(name, _)| *name == unit).ok_or_else(bad)?;
        if last.is_some_and(|l| i <= l) {
            return Err(bad());
        }
        last = Some(i);
        let part = n.checked_mul(UNITS[i].1).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Duration units, largest first, in milliseconds.
const UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// `tls:` may be one `{cert, key}` or a list of them (SNI); keeps the inner error messages.
#[derive(Debug, Clone)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a {cert, key} map or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
    }

    #[test]
    fn compound_durations_add_up_largest_unit_first() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("2m30s500ms"), Ok(Duration::from_millis(150_500)));
        assert_eq!(parse_duration(" 90m "), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn compound_durations_out_of_order_or_repeated_are_errors() {
        for bad in ["30m1h", "5m5m", "1s1m", "1h 30m", "1h30", "500ms1s"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("1h30m"), "the error should show the accepted forms: {e}");
        }
    }

    #[test]
    fn bad_durations_are_errors() {
        for bad in ["", "10", "s", "-5s", "1.5s", "10 sec", "5x", "99999999999999999999h", "10S", "213503982334601d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
