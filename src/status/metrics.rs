//! /metrics in the Prometheus text format, from the same counters as /status.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::state::{Histogram, Shared, LATENCY_BUCKETS};
use crate::verdict::DecisionLabel;

pub fn metrics(shared: &Shared) -> String {
    let rt = shared.runtime.load();
    let stats = &shared.stats;
    let mut m = String::with_capacity(4096);
    m.push_str("# HELP cartguard_requests_total Requests by rule, decision and status class.\n# TYPE cartguard_requests_total counter\n");
    let mut rules: Vec<_> = stats.rules_snapshot().into_iter().collect();
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    // Refused before any rule applied (bad requests, connection-level refusals): rule "-".
    let no_rule = [("-".to_string(), &stats.no_rule)];
    for (name, s) in rules.iter().map(|(n, s)| (n.clone(), &**s)).chain(no_rule) {
        for d in DecisionLabel::ALL {
            for (class, counter) in s.counts[d.index()].iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        m,
                        "cartguard_requests_total{{rule=\"{}\",decision=\"{}\",status_class=\"{}xx\"}} {n}",
                        label(&name),
                        d.as_str(),
                        class + 1
                    );
                }
            }
        }
    }
    m.push_str("# HELP cartguard_request_duration_seconds Whole-request time (to the end of the response body) by rule and decision.\n# TYPE cartguard_request_duration_seconds histogram\n");
    for (name, s) in &rules {
        for d in DecisionLabel::ALL {
            let h = &s.durations[d.index()];
            if h.count.load(Ordering::Relaxed) > 0 {
                let labels = format!("rule=\"{}\",decision=\"{}\"", label(name), d.as_str());
                histogram(&mut m, "cartguard_request_duration_seconds", &labels, h);
            }
        }
    }
    m.push_str("# HELP cartguard_connection_refusals_total Connections refused or cut before a request reached the guard's handler, by reason.\n# TYPE cartguard_connection_refusals_total counter\n");
    for why in crate::state::ConnRefusal::ALL {
        let n = stats.connection_refusals.get(why);
        let _ = writeln!(m, "cartguard_connection_refusals_total{{reason=\"{}\"}} {n}", why.as_str());
    }
    let up = &stats.upstream;
    m.push_str("# HELP cartguard_upstream_response_seconds Time to the upstream's response head.\n# TYPE cartguard_upstream_response_seconds histogram\n");
    histogram(&mut m, "cartguard_upstream_response_seconds", "", &up.latency);
    let gauge = |m: &mut String, name: &str, help: &str, kind: &str, value: String| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge(
        &mut m,
        "cartguard_active_connections",
        "Open client connections.",
        "gauge",
        stats.active_connections.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut m,
        "cartguard_upstream_in_flight",
        "Requests waiting on the upstream.",
        "gauge",
        up.in_flight.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut m,
        "cartguard_upstream_up",
        "1 if the last upstream probe connected.",
        "gauge",
        u8::from(up.reachable.load(Ordering::Relaxed)).to_string(),
    );
    gauge(
        &mut m,
        "cartguard_auth_failures_total",
        "Failed logins.",
        "counter",
        stats.auth_failures.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut m,
        "cartguard_bans_total",
        "Bans started.",
        "counter",
        stats.bans_started.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut m,
        "cartguard_bans_active",
        "Addresses banned now.",
        "gauge",
        shared.bans.active(Instant::now()).len().to_string(),
    );
    gauge(
        &mut m,
        "cartguard_access_log_dropped_total",
        "Access records dropped because the writer fell behind.",
        "counter",
        shared.access_log.dropped().to_string(),
    );
    overload(&mut m, shared);
    let _ =
        writeln!(m, "# HELP cartguard_reloads_total Config reloads by result.\n# TYPE cartguard_reloads_total counter");
    let _ = writeln!(m, "cartguard_reloads_total{{result=\"success\"}} {}", stats.reloads_ok.load(Ordering::Relaxed));
    let _ =
        writeln!(m, "cartguard_reloads_total{{result=\"failure\"}} {}", stats.reloads_failed.load(Ordering::Relaxed));
    m.push_str("# HELP cartguard_group_last_seen_timestamp_seconds Unix time of the last request from each group (0: never).\n# TYPE cartguard_group_last_seen_timestamp_seconds gauge\n");
    for (g, s) in rt.config.policy.groups.iter().zip(rt.group_stats.iter()) {
        let _ = writeln!(
            m,
            "cartguard_group_last_seen_timestamp_seconds{{group=\"{}\"}} {}",
            label(&g.name),
            s.last_seen_unix_ms.load(Ordering::Relaxed) / 1000
        );
    }
    let freshness = super::group_freshness(shared);
    m.push_str("# HELP cartguard_group_expected_within_seconds The status.expect window of each watched group.\n# TYPE cartguard_group_expected_within_seconds gauge\n");
    for f in &freshness {
        let _ = writeln!(
            m,
            "cartguard_group_expected_within_seconds{{group=\"{}\"}} {}",
            label(&f.group),
            f.within.as_secs()
        );
    }
    m.push_str("# HELP cartguard_group_stale 1 when a watched group was not seen within its status.expect window (as /healthz says).\n# TYPE cartguard_group_stale gauge\n");
    for f in &freshness {
        let _ = writeln!(m, "cartguard_group_stale{{group=\"{}\"}} {}", label(&f.group), u8::from(f.stale));
    }
    m.push_str("# HELP cartguard_certificate_expiry_timestamp_seconds Unix time each certificate expires.\n# TYPE cartguard_certificate_expiry_timestamp_seconds gauge\n");
    for (listener, info) in shared.tls.infos() {
        let _ = writeln!(
            m,
            "cartguard_certificate_expiry_timestamp_seconds{{listener=\"{}\",name=\"{}\"}} {}",
            label(&listener),
            label(info.names.first().map(String::as_str).unwrap_or("")),
            info.not_after_unix
        );
    }
    let _ = writeln!(
        m,
        "# HELP cartguard_build_info The running version.\n# TYPE cartguard_build_info gauge\ncartguard_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    alert_metrics(&mut m, shared);
    acme_metrics(&mut m, shared, &label);
    process_metrics(&mut m);
    m
}

/// Writes one histogram's buckets, sum and count; `labels` is empty or `k="v",...`.
fn histogram(m: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        let _ = writeln!(m, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", h.buckets[i].load(Ordering::Relaxed));
    }
    let count = h.count.load(Ordering::Relaxed);
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(m, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let _ = writeln!(m, "{name}_sum{braces} {}", h.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
    let _ = writeln!(m, "{name}_count{braces} {count}");
}

/// The standard process_* metrics (as the Prometheus client libraries name them), from /proc.
fn process_metrics(m: &mut String) {
    let page = 4096u64;
    let ticks = 100f64; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        // fields[0] is the state (3rd field of stat): utime = 14th, stime = 15th, rss = 24th.
        if let (Some(utime), Some(stime)) = (field(11), field(12)) {
            let _ = writeln!(
                m,
                "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
                (utime + stime) as f64 / ticks
            );
        }
        if let Some(rss) = field(21) {
            let _ = writeln!(
                m,
                "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
                rss * page
            );
        }
    }
    if let Some(start) = process_start_unix() {
        let _ = writeln!(
            m,
            "# HELP process_start_time_seconds Unix time the process started.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}"
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            m,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            dir.count()
        );
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines().find(|x| x.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse::<u64>().ok()
    }) {
        let _ = writeln!(
            m,
            "# HELP process_max_fds Limit of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds {max}"
        );
    }
}

/// Boot time plus the process's start tick, both from /proc.
fn process_start_unix() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    Some(btime + start_ticks / 100)
}

/// Connection admission and the verification pool: what was refused, shed or shared.
fn overload(m: &mut String, shared: &Shared) {
    let adm = &shared.admission;
    m.push_str("# HELP cartguard_connections_refused_total Connections closed at accept time (no request yet), by reason.\n# TYPE cartguard_connections_refused_total counter\n");
    for (reason, n) in adm.refused_by_reason() {
        let _ = writeln!(m, "cartguard_connections_refused_total{{reason=\"{reason}\"}} {n}");
    }
    m.push_str("# HELP cartguard_connections_shed_total Idle connections closed to make room for another.\n# TYPE cartguard_connections_shed_total counter\n");
    let _ = writeln!(
        m,
        "cartguard_connections_shed_total{{reason=\"idle\"}} {}",
        adm.counters.shed_idle.load(Ordering::Relaxed)
    );
    let (ordinary, allowlisted) = adm.open();
    m.push_str("# HELP cartguard_admitted_connections Open connections by admission class.\n# TYPE cartguard_admitted_connections gauge\n");
    let _ = writeln!(m, "cartguard_admitted_connections{{class=\"ordinary\"}} {ordinary}");
    let _ = writeln!(m, "cartguard_admitted_connections{{class=\"allowlisted\"}} {allowlisted}");
    let pool = &shared.verify_pool;
    m.push_str("# HELP cartguard_verifications_total Login checks by how they were answered.\n# TYPE cartguard_verifications_total counter\n");
    for (how, c) in
        [("run", &pool.runs), ("joined", &pool.joined), ("cached", &pool.cache_hits), ("refused", &pool.refused)]
    {
        let _ = writeln!(m, "cartguard_verifications_total{{result=\"{how}\"}} {}", c.load(Ordering::Relaxed));
    }
    let _ = writeln!(m, "# HELP cartguard_verifications_waiting Logins waiting for a verification slot.\n# TYPE cartguard_verifications_waiting gauge\ncartguard_verifications_waiting {}", pool.waiting());
}

fn alert_metrics(m: &mut String, shared: &Shared) {
    let deliveries = shared.alerts.deliveries();
    for (name, help, failed) in [
        ("cartguard_alerts_sent_total", "Alerts delivered, by sink and kind.", false),
        ("cartguard_alerts_failed_total", "Alerts a sink did not accept (after retries), by sink and kind.", true),
    ] {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} counter");
        for d in &deliveries {
            let n = if failed { d.failed } else { d.sent };
            let _ = writeln!(m, "{name}{{sink=\"{}\",kind=\"{}\"}} {n}", label(&d.sink), d.kind.as_str());
        }
    }
    let _ = writeln!(m, "# HELP cartguard_alerts_suppressed_total Alerts not sent: the same kind and key was sent within alerts.repeat_after.\n# TYPE cartguard_alerts_suppressed_total counter");
    for (kind, n) in shared.alerts.suppressed() {
        let _ = writeln!(m, "cartguard_alerts_suppressed_total{{kind=\"{}\"}} {n}", kind.as_str());
    }
    let _ = writeln!(
        m,
        "# HELP cartguard_alerts_dropped_total Alerts dropped because the queue was full.\n# TYPE cartguard_alerts_dropped_total counter\ncartguard_alerts_dropped_total {}",
        shared.alerts.dropped()
    );
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per ACME name: expiry, last attempt, consecutive failures and attempts by result.
fn acme_metrics(m: &mut String, shared: &Shared, label: &dyn Fn(&str) -> String) {
    let certs = shared.tls.acme.snapshot();
    if certs.is_empty() {
        return;
    }
    let series: [(&str, &str, &str); 3] = [
        (
            "cartguard_acme_certificate_expiry_timestamp_seconds",
            "Unix time the ACME certificate for each name expires (0: none yet).",
            "gauge",
        ),
        (
            "cartguard_acme_last_attempt_timestamp_seconds",
            "Unix time of the last issue or renewal attempt (0: none since start).",
            "gauge",
        ),
        ("cartguard_acme_consecutive_failures", "Failed ACME attempts since the last success.", "gauge"),
    ];
    for (i, (name, help, kind)) in series.iter().enumerate() {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in &certs {
            let value = match i {
                0 => c.not_after_unix.unwrap_or(0),
                1 => c.last_attempt_unix.unwrap_or(0),
                _ => i64::from(c.failures),
            };
            for n in &c.names {
                let _ = writeln!(m, "{name}{{name=\"{}\"}} {value}", label(n));
            }
        }
    }
    let _ = writeln!(m, "# HELP cartguard_acme_attempts_total ACME issue and renewal attempts by result.\n# TYPE cartguard_acme_attempts_total counter");
    for c in &certs {
        for n in &c.names {
            let _ = writeln!(
                m,
                "cartguard_acme_attempts_total{{name=\"{}\",result=\"success\"}} {}",
                label(n),
                c.renewals_ok
            );
            let _ = writeln!(
                m,
                "cartguard_acme_attempts_total{{name=\"{}\",result=\"failure\"}} {}",
                label(n),
                c.renewals_failed
            );
        }
    }
}
