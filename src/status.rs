//! The admin listener: /status (JSON, or HTML for browsers), /healthz and /metrics.
//!
//! It answers "is Integration Management still reaching the cart, what did it
//! get, and what was refused?" It only reads counters and config metadata and is
//! never served on a public listener.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log::{rfc3339, DecisionLabel};
use crate::policy::Mode;
use crate::state::{Shared, LATENCY_BUCKETS};

pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/status" => {
            let doc = status_json(shared);
            if prefers_html(req) {
                reply(StatusCode::OK, "text/html; charset=utf-8", status_html(&doc))
            } else {
                reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
            }
        }
        "/healthz" => {
            let reasons = health_reasons(shared);
            if reasons.is_empty() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", reasons.join("\n") + "\n")
            }
        }
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(shared)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /status, /healthz or /metrics\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// True when the Accept header ranks text/html above application/json.
fn prefers_html(req: &Request<Incoming>) -> bool {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let q = |mime: &str| {
        accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let m = it.next()?.trim();
                (m == mime).then(|| {
                    it.find_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.parse::<f32>().ok())).unwrap_or(1.0)
                })
            })
            .fold(0.0f32, f32::max)
    };
    q("text/html") > q("application/json")
}

/// Why /healthz is failing; empty when healthy.
pub fn health_reasons(shared: &Shared) -> Vec<String> {
    let rt = shared.runtime.load();
    let mut reasons = Vec::new();
    let up = &shared.stats.upstream;
    if up.probed.load(Ordering::Relaxed) && !up.reachable.load(Ordering::Relaxed) {
        let err = up.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        reasons.push(format!("upstream {} unreachable: {err}", rt.config.upstream.authority));
    }
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    for e in &rt.config.status.expect {
        let Some(i) = rt.config.policy.group_index(&e.group) else {
            continue;
        };
        let last_ms = rt.group_stats[i].last_seen_unix_ms.load(Ordering::Relaxed);
        let ago = Duration::from_millis(now_ms.saturating_sub(last_ms));
        let stale = if last_ms == 0 { shared.started.elapsed() >= e.within } else { ago >= e.within };
        if stale {
            let seen = if last_ms == 0 {
                "never seen since start".to_string()
            } else {
                format!("last seen {}s ago", ago.as_secs())
            };
            reasons.push(format!("group {} not seen within {}s ({seen})", e.group, e.within.as_secs()));
        }
    }
    let reload = shared.reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(err) = reload.last_reload_error {
        reasons.push(format!("last reload failed: {err}"));
    }
    if rt.config.policy.mode == Mode::Report {
        reasons.push("mode is report: the guard is NOT enforcing, every request is forwarded".into());
    }
    reasons
}

pub fn status_json(shared: &Shared) -> Value {
    let rt = shared.runtime.load();
    let c = &rt.config;
    let stats = &shared.stats;
    let reload = shared.reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let up = &stats.upstream;
    let groups: Vec<Value> = c
        .policy
        .groups
        .iter()
        .zip(rt.group_stats.iter())
        .map(|(g, s)| {
            let last = s.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            json!({
                "name": g.name,
                "cidrs": g.set.cidrs().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "requests": s.requests.load(Ordering::Relaxed),
                "last_seen_at": last.as_ref().map(|l| crate::access_log::rfc3339(l.at)),
                "last_client_ip": last.as_ref().map(|l| l.client_ip.clone()),
                "last_path": last.as_ref().map(|l| l.path.clone()),
                "last_status": last.as_ref().map(|l| l.status),
                "last_decision": last.as_ref().map(|l| l.decision),
            })
        })
        .collect();
    let rules: Vec<Value> = c
        .policy
        .rules
        .iter()
        .zip(rt.rule_stats.iter())
        .map(|(r, s)| {
            let counts: serde_json::Map<String, Value> =
                s.by_decision().into_iter().map(|(d, n)| (d.as_str().to_string(), json!(n))).collect();
            json!({
                "name": r.name,
                "path_prefix": r.path_prefix,
                "allow": r.allow.iter().map(|&g| c.policy.groups[g].name.clone()).collect::<Vec<_>>(),
                "others": r.others,
                "decisions": counts,
            })
        })
        .collect();
    let denials: Vec<Value> =
        stats.recent_denials.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().map(|d| json!(d)).collect();
    let mut alarms: Vec<Value> =
        stats.alarms.lock().unwrap_or_else(|p| p.into_inner()).values().map(|a| json!(a)).collect();
    alarms.sort_by_key(|a| std::cmp::Reverse(a["count"].as_u64().unwrap_or(0)));
    let health = health_reasons(shared);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(shared.started_at),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "mode": c.policy.mode,
        "enforcing": c.policy.mode == Mode::Enforce,
        "healthy": health.is_empty(),
        "health_reasons": health,
        "config": {
            "path": c.source.path.display().to_string(),
            "sha256": c.source.sha256,
            "loaded_at": rfc3339(c.source.loaded_at),
            "last_reload_at": reload.last_reload_at,
            "last_reload_error": reload.last_reload_error,
            "restart_needed": reload.restart_needed,
            "warnings": c.warnings,
        },
        "listeners": c.listeners.iter().enumerate().map(|(i, l)| json!({
            "addr": shared.bound.get().and_then(|b| b.get(i)).unwrap_or(&l.addr).to_string(),
            "tls": !l.certs.is_empty(),
            "proxy_protocol": l.proxy_protocol,
            "redirect_https": l.redirect_https,
        })).collect::<Vec<_>>(),
        "upstream": {
            "url": c.upstream.url.to_string(),
            "reachable": up.probed.load(Ordering::Relaxed).then(|| up.reachable.load(Ordering::Relaxed)),
            "last_error": up.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "last_ok_at": up.last_ok_at.lock().unwrap_or_else(|p| p.into_inner()).map(rfc3339),
            "in_flight": up.in_flight.load(Ordering::Relaxed),
        },
        "requests": stats.requests.load(Ordering::Relaxed),
        "active_connections": stats.active_connections.load(Ordering::Relaxed),
        "groups": groups,
        "rules": rules,
        "recent_denials": denials,
        "possible_new_integration_addresses": alarms,
        "bans": shared.bans.active(Instant::now()),
        "auth_failures": stats.auth_failures.load(Ordering::Relaxed),
        "certificates": shared.tls.infos().into_iter().map(|(l, i)| json!({"listener": l, "file": i.file, "names": i.names, "not_after": i.not_after, "days_left": i.days_left})).collect::<Vec<_>>(),
        "access_log_dropped": shared.access_log.dropped(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn table(out: &mut String, title: &str, rows: &[Value], cols: &[&str]) {
    let _ = write!(out, "<h2>{}</h2>", esc(title));
    if rows.is_empty() {
        out.push_str("<p>none</p>");
        return;
    }
    out.push_str("<table><tr>");
    for c in cols {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in cols {
            let _ = write!(out, "<td>{}</td>", cell(&r[*c]));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn status_html(doc: &Value) -> String {
    let mut out = String::from("<!doctype html><meta charset=utf-8><title>cartguard status</title><style>body{font:14px sans-serif;margin:1em 2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}</style>");
    let _ = write!(out, "<h1>cartguard {}</h1>", cell(&doc["version"]));
    if doc["healthy"].as_bool() == Some(true) {
        out.push_str("<p class=ok>healthy</p>");
    } else {
        for r in doc["health_reasons"].as_array().into_iter().flatten() {
            let _ = write!(out, "<p class=bad>{}</p>", cell(r));
        }
    }
    let _ = write!(
        out,
        "<p>mode {} · up {}s · config {} ({}) loaded {} · upstream {} reachable {} last error {}</p>",
        cell(&doc["mode"]),
        cell(&doc["uptime_seconds"]),
        cell(&doc["config"]["path"]),
        cell(&doc["config"]["sha256"]).chars().take(12).collect::<String>(),
        cell(&doc["config"]["loaded_at"]),
        cell(&doc["upstream"]["url"]),
        cell(&doc["upstream"]["reachable"]),
        cell(&doc["upstream"]["last_error"]),
    );
    let arr = |k: &str| doc[k].as_array().cloned().unwrap_or_default();
    table(
        &mut out,
        "Groups",
        &arr("groups"),
        &["name", "requests", "last_seen_at", "last_client_ip", "last_path", "last_status", "last_decision"],
    );
    table(
        &mut out,
        "Possible new integration addresses",
        &arr("possible_new_integration_addresses"),
        &["client_ip", "rule", "count", "first_seen", "last_seen"],
    );
    table(&mut out, "Rules", &arr("rules"), &["name", "path_prefix", "allow", "others", "decisions"]);
    table(
        &mut out,
        "Recent refusals",
        &arr("recent_denials"),
        &["time", "client_ip", "peer_ip", "rule", "decision", "status", "path", "reason"],
    );
    table(&mut out, "Bans", &arr("bans"), &["ip", "seconds_left", "since"]);
    table(&mut out, "Certificates", &arr("certificates"), &["listener", "names", "not_after", "days_left"]);
    out
}

pub fn metrics(shared: &Shared) -> String {
    let rt = shared.runtime.load();
    let stats = &shared.stats;
    let mut m = String::with_capacity(4096);
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
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
    m
}

/// Probes the upstream with a TCP connect every `probe_interval`.
pub async fn probe_upstream(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (authority, interval, timeout) = {
            let rt = shared.runtime.load();
            (
                rt.config.upstream.authority.clone(),
                rt.config.upstream.probe_interval,
                rt.config.upstream.connect_timeout,
            )
        };
        let result = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&authority)).await;
        let up = &shared.stats.upstream;
        match result {
            Ok(Ok(_)) => {
                up.reachable.store(true, Ordering::Relaxed);
                up.ok();
            }
            Ok(Err(e)) => {
                if up.reachable.swap(false, Ordering::Relaxed) || !up.probed.load(Ordering::Relaxed) {
                    tracing::warn!(upstream = %authority, error = %e, "upstream probe failed");
                }
                up.failed(format!("probe: connect to {authority}: {e}"));
            }
            Err(_) => {
                up.reachable.store(false, Ordering::Relaxed);
                up.failed(format!("probe: connect to {authority} timed out after {}ms", timeout.as_millis()));
            }
        }
        up.probed.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
