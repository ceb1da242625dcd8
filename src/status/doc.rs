//! The /status document as one typed value: built once per request from the
//! counters and the current snapshot, serialised as JSON, rendered as HTML, and
//! read back by `cartguard status`. Fields added later default when absent, so
//! a newer `cartguard status` can read an older guard.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::access_log::rfc3339;
use crate::alerts::AlertsStatus;
use crate::bans::BanView;
use crate::policy::{Mode, Others};
use crate::state::{Alarm, Denial, Shared};
use crate::timeline::HourCount;
use crate::verdict::DecisionLabel;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    pub version: String,
    /// The guard's process id: what `cartguard reload` signals.
    pub pid: u32,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub mode: Mode,
    pub enforcing: bool,
    pub healthy: bool,
    /// Why /healthz fails; empty when healthy.
    pub health_reasons: Vec<String>,
    pub config: ConfigStatus,
    pub listeners: Vec<ListenerStatus>,
    pub upstream: UpstreamStatus,
    pub requests: u64,
    pub active_connections: i64,
    pub groups: Vec<GroupStatus>,
    pub rules: Vec<RuleStatus>,
    /// Newest first.
    pub recent_denials: Vec<Denial>,
    /// Most often refused first.
    pub possible_new_integration_addresses: Vec<Alarm>,
    pub bans: Vec<BanView>,
    pub auth_failures: u64,
    pub certificates: Vec<CertificateStatus>,
    /// One entry per name of every `acme:` listener.
    #[serde(default)]
    pub acme: Vec<AcmeNameStatus>,
    pub access_log_dropped: u64,
    /// Each alert sink's last success and last failure.
    #[serde(default)]
    pub alerts: AlertsStatus,
    /// Allow-group members' requests over the last 24 hours, oldest hour first.
    pub timeline: Vec<HourCount>,
    pub overload: OverloadStatus,
}

/// What connection admission and the verification pool refused or shed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OverloadStatus {
    pub ordinary_connections: usize,
    pub allowlisted_connections: usize,
    /// Connections closed at accept time, by reason (no request existed yet).
    pub connections_refused: BTreeMap<String, u64>,
    /// Idle connections closed to make room for another.
    pub connections_shed_idle: u64,
    pub verifications_run: u64,
    /// Logins that shared a verification already running for the same credentials.
    pub verifications_joined: u64,
    pub verifications_cached: u64,
    /// Logins answered 503 because the verification queue was full.
    pub verifications_refused: u64,
    pub verifications_waiting: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigStatus {
    pub path: String,
    pub sha256: String,
    pub loaded_at: String,
    pub last_reload_at: Option<String>,
    pub last_reload_error: Option<String>,
    /// Reloads attempted since start, failed ones included: `cartguard reload` waits for it to move.
    pub reloads: u64,
    pub restart_needed: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerStatus {
    /// The address actually bound (port 0 resolved).
    pub addr: String,
    pub tls: bool,
    pub proxy_protocol: bool,
    pub redirect_https: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamStatus {
    pub url: String,
    /// None until the first probe.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    pub last_ok_at: Option<String>,
    pub in_flight: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupStatus {
    pub name: String,
    pub cidrs: Vec<String>,
    pub requests: u64,
    pub last_seen_at: Option<String>,
    pub last_client_ip: Option<String>,
    pub last_path: Option<String>,
    pub last_status: Option<u16>,
    pub last_decision: Option<DecisionLabel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub path_prefix: String,
    pub allow: Vec<String>,
    pub others: Others,
    /// Requests by decision label, since start.
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateStatus {
    pub listener: String,
    pub file: String,
    pub names: Vec<String>,
    pub not_after: String,
    pub days_left: i64,
}

/// How the certificate for one ACME name is doing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeNameStatus {
    pub name: String,
    pub listener: String,
    pub directory: String,
    /// None until a certificate exists.
    pub issuer: Option<String>,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    pub last_attempt_at: Option<String>,
    pub last_renewed_at: Option<String>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
}

impl Default for StatusDoc {
    fn default() -> StatusDoc {
        StatusDoc {
            version: String::new(),
            pid: 0,
            started_at: String::new(),
            uptime_seconds: 0,
            mode: Mode::Enforce,
            enforcing: true,
            healthy: false,
            health_reasons: Vec::new(),
            config: ConfigStatus::default(),
            listeners: Vec::new(),
            upstream: UpstreamStatus::default(),
            requests: 0,
            active_connections: 0,
            groups: Vec::new(),
            rules: Vec::new(),
            recent_denials: Vec::new(),
            possible_new_integration_addresses: Vec::new(),
            bans: Vec::new(),
            auth_failures: 0,
            certificates: Vec::new(),
            acme: Vec::new(),
            access_log_dropped: 0,
            timeline: Vec::new(),
            overload: OverloadStatus::default(),
            alerts: AlertsStatus::default(),
        }
    }
}

impl StatusDoc {
    pub fn collect(shared: &Shared) -> StatusDoc {
        let rt = shared.runtime.load();
        let c = &rt.config;
        let stats = &shared.stats;
        let reload = shared.reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let up = &stats.upstream;
        let groups = c
            .policy
            .groups
            .iter()
            .zip(rt.group_stats.iter())
            .map(|(g, s)| {
                let last = s.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
                GroupStatus {
                    name: g.name.clone(),
                    cidrs: g.set.cidrs().iter().map(|n| n.to_string()).collect(),
                    requests: s.requests.load(Ordering::Relaxed),
                    last_seen_at: last.as_ref().map(|l| rfc3339(l.at)),
                    last_client_ip: last.as_ref().map(|l| l.client_ip.clone()),
                    last_path: last.as_ref().map(|l| l.path.clone()),
                    last_status: last.as_ref().map(|l| l.status),
                    last_decision: last.as_ref().map(|l| l.decision),
                }
            })
            .collect();
        let rules = c
            .policy
            .rules
            .iter()
            .zip(rt.rule_stats.iter())
            .map(|(r, s)| RuleStatus {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                allow: r.allow.iter().map(|&g| c.policy.groups[g].name.clone()).collect(),
                others: r.others,
                decisions: s.by_decision().into_iter().map(|(d, n)| (d.as_str().to_string(), n)).collect(),
            })
            .collect();
        let recent_denials =
            stats.recent_denials.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect();
        let mut alarms: Vec<Alarm> = stats.alarms.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        alarms.sort_by_key(|a| std::cmp::Reverse(a.count));
        let health_reasons = super::health_reasons(shared);
        let bound = shared.bound.get();
        StatusDoc {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: rfc3339(shared.started_at),
            uptime_seconds: shared.started.elapsed().as_secs(),
            mode: c.policy.mode,
            enforcing: c.policy.mode == Mode::Enforce,
            healthy: health_reasons.is_empty(),
            health_reasons,
            config: ConfigStatus {
                path: c.source.path.display().to_string(),
                sha256: c.source.sha256.clone(),
                loaded_at: rfc3339(c.source.loaded_at),
                last_reload_at: reload.last_reload_at,
                last_reload_error: reload.last_reload_error,
                reloads: reload.attempts,
                restart_needed: reload.restart_needed,
                warnings: c.warnings.clone(),
            },
            listeners: c
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| ListenerStatus {
                    addr: bound.and_then(|b| b.get(i)).unwrap_or(&l.addr).to_string(),
                    tls: l.is_tls(),
                    proxy_protocol: l.proxy_protocol,
                    redirect_https: l.redirect_https,
                })
                .collect(),
            upstream: UpstreamStatus {
                url: c.upstream.url.to_string(),
                reachable: up.probed.load(Ordering::Relaxed).then(|| up.reachable.load(Ordering::Relaxed)),
                last_error: up.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                last_ok_at: up.last_ok_at.lock().unwrap_or_else(|p| p.into_inner()).map(rfc3339),
                in_flight: up.in_flight.load(Ordering::Relaxed),
            },
            requests: stats.requests.load(Ordering::Relaxed),
            active_connections: stats.active_connections.load(Ordering::Relaxed),
            groups,
            rules,
            recent_denials,
            possible_new_integration_addresses: alarms,
            bans: shared.bans.active(Instant::now()),
            auth_failures: stats.auth_failures.load(Ordering::Relaxed),
            certificates: shared
                .tls
                .infos()
                .into_iter()
                .map(|(listener, i)| CertificateStatus {
                    listener,
                    file: i.file,
                    names: i.names,
                    not_after: i.not_after,
                    days_left: i.days_left,
                })
                .collect(),
            acme: acme_names(shared),
            access_log_dropped: shared.access_log.dropped(),
            alerts: shared.alerts.status(c),
            timeline: stats.timeline.last_24h(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
            ),
            overload: OverloadStatus::collect(shared),
        }
    }
}

impl OverloadStatus {
    fn collect(shared: &Shared) -> OverloadStatus {
        let adm = &shared.admission;
        let (ordinary, allowlisted) = adm.open();
        let pool = &shared.verify_pool;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        OverloadStatus {
            ordinary_connections: ordinary,
            allowlisted_connections: allowlisted,
            connections_refused: adm.refused_by_reason().into_iter().map(|(r, n)| (r.to_string(), n)).collect(),
            connections_shed_idle: load(&adm.counters.shed_idle),
            verifications_run: load(&pool.runs),
            verifications_joined: load(&pool.joined),
            verifications_cached: load(&pool.cache_hits),
            verifications_refused: load(&pool.refused),
            verifications_waiting: pool.waiting(),
        }
    }
}

fn acme_names(shared: &Shared) -> Vec<AcmeNameStatus> {
    let mut out = Vec::new();
    for c in shared.tls.acme.snapshot() {
        for name in &c.names {
            out.push(AcmeNameStatus {
                name: name.clone(),
                listener: c.listener.clone(),
                directory: c.directory.clone(),
                issuer: c.issuer.clone(),
                not_after: c.not_after_unix.map(crate::acme::at),
                days_left: c.days_left(),
                last_attempt_at: c.last_attempt_at.clone(),
                last_renewed_at: c.last_renewed_at.clone(),
                last_error: c.last_error.clone(),
                next_attempt_at: c.next_attempt_at.clone(),
                failures: c.failures,
            });
        }
    }
    out
}
