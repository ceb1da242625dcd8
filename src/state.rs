//! What outlives a single request and a single config: the current snapshot,
//! counters, recent refusals, bans and the verification pool.
//!
//! Counters are registered by rule and group *name*, so they survive a reload
//! that keeps the name; each snapshot holds direct `Arc`s to its counters, so the
//! request path increments atomics without looking anything up.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::access_log::{rfc3339, AccessLog};
use crate::bans::BanTable;
use crate::config::Config;
use crate::upstream::Upstream;
use crate::users::VerifyPool;
use crate::verdict::DecisionLabel;

/// One loaded configuration with everything built from it.
pub struct Runtime {
    pub config: Config,
    pub upstream: Upstream,
    pub rule_stats: Vec<Arc<RuleStats>>,
    pub group_stats: Vec<Arc<GroupStats>>,
}

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub stats: Stats,
    pub bans: BanTable,
    pub verify_pool: VerifyPool,
    /// Who holds the guard's connections, by client address.
    pub admission: Arc<crate::admission::Admission>,
    pub access_log: AccessLog,
    pub started_at: SystemTime,
    pub started: Instant,
    pub reload: Mutex<ReloadInfo>,
    pub tls: crate::tls::TlsStores,
    /// The addresses actually bound, in config order (port 0 resolved), for /status.
    pub bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// The alert queue, rate limits and what each sink answered.
    pub alerts: crate::alerts::Alerts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadInfo {
    pub last_reload_at: Option<String>,
    pub last_reload_error: Option<String>,
    pub restart_needed: Option<String>,
    /// Reloads attempted, counted under the same lock as the result so that a reader
    /// never sees a new count with an old result.
    pub attempts: u64,
}

impl Shared {
    pub fn new(config: Config, access_log: AccessLog, tls: crate::tls::TlsStores) -> Result<Arc<Shared>, String> {
        let stats = Stats::default();
        let runtime = stats.runtime_for(config)?;
        let auth = &runtime.config.auth;
        let verify_pool = VerifyPool::new(auth.max_concurrent_verifications, auth.verify_queue, auth.verify_nice);
        Ok(Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            stats,
            bans: BanTable::default(),
            verify_pool,
            admission: Arc::default(),
            access_log,
            started_at: SystemTime::now(),
            started: Instant::now(),
            reload: Mutex::new(ReloadInfo::default()),
            tls,
            bound: std::sync::OnceLock::new(),
            alerts: crate::alerts::Alerts::default(),
        }))
    }
}

#[derive(Default)]
pub struct RuleStats {
    /// [decision][status class 1xx..5xx]
    pub counts: [[AtomicU64; 5]; DecisionLabel::ALL.len()],
    /// Whole-request time (until the response body ends) by decision.
    pub durations: [Histogram; DecisionLabel::ALL.len()],
}

impl RuleStats {
    pub fn count(&self, decision: DecisionLabel, status: u16, took: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.counts[decision.index()][class].fetch_add(1, Ordering::Relaxed);
        self.durations[decision.index()].observe(took);
    }

    pub fn by_decision(&self) -> Vec<(DecisionLabel, u64)> {
        DecisionLabel::ALL
            .iter()
            .map(|d| (*d, self.counts[d.index()].iter().map(|c| c.load(Ordering::Relaxed)).sum()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[derive(Default)]
pub struct GroupStats {
    pub requests: AtomicU64,
    pub last: Mutex<Option<GroupLast>>,
    /// Unix milliseconds of the last request, for /metrics and /healthz without a lock.
    pub last_seen_unix_ms: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLast {
    /// Formatted only when /status asks, not on every request.
    #[serde(serialize_with = "crate::access_log::ser_time")]
    pub at: SystemTime,
    pub client_ip: String,
    pub path: String,
    pub status: u16,
    pub decision: DecisionLabel,
}

impl GroupStats {
    pub fn seen(&self, last: GroupLast) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.last_seen_unix_ms.store(now, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Denial {
    pub time: String,
    pub client_ip: String,
    pub peer_ip: String,
    pub rule: Option<String>,
    pub decision: DecisionLabel,
    pub status: u16,
    pub path: String,
    pub reason: Option<String>,
}

impl Denial {
    pub fn from_record(r: &crate::access_log::AccessRecord) -> Denial {
        Denial {
            time: rfc3339(r.time),
            client_ip: r.client_ip.clone(),
            peer_ip: r.peer_ip.clone(),
            rule: r.rule.clone(),
            decision: r.decision,
            status: r.status,
            path: r.path.clone(),
            reason: r.error.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alarm {
    pub client_ip: String,
    pub rule: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip)]
    pub last_warned: Option<Instant>,
}

pub const RECENT_DENIALS: usize = 100;
const MAX_ALARMS: usize = 1000;
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus-style histogram over LATENCY_BUCKETS (cumulative buckets).
#[derive(Default)]
pub struct Histogram {
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct UpstreamHealth {
    pub reachable: AtomicBool,
    pub probed: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub last_ok_at: Mutex<Option<SystemTime>>,
    pub in_flight: AtomicI64,
    /// Time to the upstream's response head.
    pub latency: Histogram,
}

impl UpstreamHealth {
    pub fn observe(&self, d: Duration) {
        self.latency.observe(d);
    }

    pub fn ok(&self) {
        *self.last_ok_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    }

    pub fn failed(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{} {error}", rfc3339(SystemTime::now())));
    }
}

#[derive(Default)]
pub struct Stats {
    rules: Mutex<HashMap<String, Arc<RuleStats>>>,
    groups: Mutex<HashMap<String, Arc<GroupStats>>>,
    pub recent_denials: Mutex<VecDeque<Denial>>,
    pub alarms: Mutex<HashMap<IpAddr, Alarm>>,
    pub upstream: UpstreamHealth,
    pub active_connections: AtomicI64,
    pub auth_failures: AtomicU64,
    pub bans_started: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub requests: AtomicU64,
    /// Requests refused before a rule applied (bad requests, connection-level refusals).
    pub no_rule: RuleStats,
    /// Allow-group members' requests by hour and outcome, for the status page.
    pub timeline: crate::timeline::Timeline,
    pub connection_refusals: ConnRefusals,
}

/// Why a connection was refused or cut before (or without) a request reaching the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The framing check refused an HTTP/1 head (ambiguous framing, bad target bytes).
    Framing,
    /// hyper's parser refused a head the framing check let through (e.g. > 100 headers).
    HttpParser,
    HeaderTimeout,
    ProxyHeader,
    TlsHandshake,
    TlsHandshakeTimeout,
    /// A client took its response slower than `limits.min_body_rate`: reset mid-response.
    SlowReader,
    /// HTTP/2: the guard's side ended the connection with GOAWAY (protocol error, flood).
    H2GoAway,
}

impl ConnRefusal {
    pub const ALL: [ConnRefusal; 8] = [
        ConnRefusal::Framing,
        ConnRefusal::HttpParser,
        ConnRefusal::HeaderTimeout,
        ConnRefusal::ProxyHeader,
        ConnRefusal::TlsHandshake,
        ConnRefusal::TlsHandshakeTimeout,
        ConnRefusal::SlowReader,
        ConnRefusal::H2GoAway,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRefusal::Framing => "framing",
            ConnRefusal::HttpParser => "http_parser",
            ConnRefusal::HeaderTimeout => "header_timeout",
            ConnRefusal::ProxyHeader => "proxy_header",
            ConnRefusal::TlsHandshake => "tls_handshake",
            ConnRefusal::TlsHandshakeTimeout => "tls_handshake_timeout",
            ConnRefusal::SlowReader => "slow_reader",
            ConnRefusal::H2GoAway => "h2_goaway",
        }
    }
}

/// Connection-level refusals by reason, for /metrics.
#[derive(Debug, Default)]
pub struct ConnRefusals([AtomicU64; ConnRefusal::ALL.len()]);

impl ConnRefusals {
    pub fn count(&self, why: ConnRefusal) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, why: ConnRefusal) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }
}

impl Stats {
    /// Builds a runtime for `config`, reusing counters of rules and groups that keep their names.
    pub fn runtime_for(&self, config: Config) -> Result<Runtime, String> {
        let upstream = Upstream::new(&config.upstream)?;
        let rule_stats = {
            let mut reg = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            config.policy.rules.iter().map(|r| reg.entry(r.name.clone()).or_default().clone()).collect()
        };
        let group_stats = {
            let mut reg = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            config.policy.groups.iter().map(|g| reg.entry(g.name.clone()).or_default().clone()).collect()
        };
        Ok(Runtime { config, upstream, rule_stats, group_stats })
    }

    pub fn deny(&self, d: Denial) {
        let mut q = self.recent_denials.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= RECENT_DENIALS {
            q.pop_front();
        }
        q.push_back(d);
    }

    /// Counts a refused request that looks like the integration from a new address;
    /// returns true when it deserves a warning (once per address per hour).
    pub fn alarm(&self, ip: IpAddr, rule: &str) -> bool {
        let now = Instant::now();
        let stamp = rfc3339(SystemTime::now());
        let mut alarms = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        if !alarms.contains_key(&ip) && alarms.len() >= MAX_ALARMS {
            return false;
        }
        let a = alarms.entry(ip).or_insert_with(|| Alarm {
            client_ip: ip.to_string(),
            rule: rule.to_string(),
            count: 0,
            first_seen: stamp.clone(),
            last_seen: stamp.clone(),
            last_warned: None,
        });
        a.count += 1;
        a.last_seen = stamp;
        a.rule = rule.to_string();
        let warn = a.last_warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(3600));
        if warn {
            a.last_warned = Some(now);
        }
        warn
    }

    pub fn rules_snapshot(&self) -> HashMap<String, Arc<RuleStats>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
