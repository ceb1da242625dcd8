//! /metrics in the Prometheus text format, from the same counters as /status.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::state::{Shared, LATENCY_BUCKETS};
use crate::verdict::DecisionLabel;

pub fn metrics(shared: &Shared) -> String {
    let rt = shared.runtime.load();
    let stats = &shared.stats;
    let mut m = String::with_capacity(4096);
    m.push_str("# HELP cartguard_requests_total Requests by rule, decision and status class.\n# TYPE cartguard_requests_total counter\n");
    let mut rules: Vec<_> = stats.rules_snapshot().into_iter().collect();
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, s) in rules {
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
    let up = &stats.upstream;
    m.push_str("# HELP cartguard_upstream_response_seconds Time to the upstream's response head.\n# TYPE cartguard_upstream_response_seconds histogram\n");
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            m,
            "cartguard_upstream_response_seconds_bucket{{le=\"{b}\"}} {}",
            up.latency_buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = up.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(m, "cartguard_upstream_response_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        m,
        "cartguard_upstream_response_seconds_sum {}",
        up.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(m, "cartguard_upstream_response_seconds_count {count}");
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
    alert_metrics(&mut m, shared);
    m
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
