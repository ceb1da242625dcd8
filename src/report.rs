//! Text for a sysadmin on SSH: the effective policy (`check`) and a summary of
//! /status (`cartguard status`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::Config;

/// The effective policy as `check` prints it.
pub fn describe(config: &Config) -> String {
    let p = &config.policy;
    let mut out = String::new();
    let _ = writeln!(out, "config    {} (sha256 {})", config.source.path.display(), &config.source.sha256[..12]);
    let _ = writeln!(out, "mode      {:?}", p.mode);
    for l in &config.listeners {
        let kind =
            if l.certs.is_empty() { "http".to_string() } else { format!("https ({} certificate(s))", l.certs.len()) };
        let extra = [(l.proxy_protocol, " proxy_protocol"), (l.redirect_https, " redirect_https")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect::<String>();
        let _ = writeln!(out, "listen    {} {kind}{extra}", l.addr);
    }
    let _ = writeln!(
        out,
        "upstream  {} (host: {:?}, timeout {}s)",
        config.upstream.url,
        config.upstream.host,
        config.upstream.timeout.as_secs()
    );
    let trusted: Vec<String> = p.client_ip.trusted_proxies.cidrs().iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        out,
        "client ip {}",
        if trusted.is_empty() {
            "socket peer (no trusted proxies)".to_string()
        } else {
            format!("{} from trusted proxies {}", p.client_ip.header.name(), trusted.join(", "))
        }
    );
    let _ = writeln!(out, "groups");
    for g in &p.groups {
        let cidrs: Vec<String> = g.set.cidrs().iter().take(8).map(|n| n.to_string()).collect();
        let more =
            if g.set.cidrs().len() > 8 { format!(" (+{} more)", g.set.cidrs().len() - 8) } else { String::new() };
        let _ = writeln!(out, "  {:<24} {}{more}", g.name, cidrs.join(", "));
    }
    let _ = writeln!(out, "rules (first match wins)");
    for (i, r) in p.rules.iter().enumerate() {
        let allow: Vec<&str> = r.allow.iter().map(|&g| p.groups[g].name.as_str()).collect();
        let query: Vec<String> =
            r.query.iter().map(|q| format!("{}={}", q.name, String::from_utf8_lossy(&q.prefix))).collect();
        let methods = r
            .methods
            .as_ref()
            .map(|m| format!(" methods {}", m.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")))
            .unwrap_or_default();
        let query = if query.is_empty() { String::new() } else { format!(" or query {}", query.join(" or ")) };
        let _ = writeln!(
            out,
            "  {}. {:<16} {}{query}{methods}  allow [{}]  others {:?}",
            i + 1,
            r.name,
            r.path_prefix,
            allow.join(", "),
            r.others
        );
    }
    let _ = writeln!(out, "users     {}", config.users.len());
    let _ = writeln!(out, "status    {}", config.status.listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into()));
    out
}

/// A short human summary of the /status document.
pub fn summarize_status(doc: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let health = if doc["healthy"].as_bool() == Some(true) { "healthy".to_string() } else { "UNHEALTHY".to_string() };
    let _ = writeln!(
        out,
        "cartguard {} · {} · mode {} · up {}s",
        s(&doc["version"]),
        health,
        s(&doc["mode"]),
        s(&doc["uptime_seconds"])
    );
    for r in doc["health_reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  ! {}", s(r));
    }
    let _ = writeln!(out, "config    {} loaded {}", s(&doc["config"]["path"]), s(&doc["config"]["loaded_at"]));
    if !doc["config"]["last_reload_error"].is_null() {
        let _ = writeln!(out, "  ! last reload failed: {}", s(&doc["config"]["last_reload_error"]));
    }
    let up = &doc["upstream"];
    let _ = writeln!(
        out,
        "upstream  {} reachable {} in-flight {} last ok {} last error {}",
        s(&up["url"]),
        s(&up["reachable"]),
        s(&up["in_flight"]),
        s(&up["last_ok_at"]),
        s(&up["last_error"])
    );
    let _ = writeln!(out, "groups");
    for g in doc["groups"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<24} {} requests, last {} from {} {} -> {}",
            s(&g["name"]),
            s(&g["requests"]),
            s(&g["last_seen_at"]),
            s(&g["last_client_ip"]),
            s(&g["last_path"]),
            s(&g["last_status"])
        );
    }
    let alarms = doc["possible_new_integration_addresses"].as_array().cloned().unwrap_or_default();
    if !alarms.is_empty() {
        let _ = writeln!(out, "possible new integration addresses (refused on a rule that admits a group)");
        for a in alarms.iter().take(10) {
            let _ = writeln!(
                out,
                "  {} on rule {}: {} times, last {}",
                s(&a["client_ip"]),
                s(&a["rule"]),
                s(&a["count"]),
                s(&a["last_seen"])
            );
        }
    }
    let denials = doc["recent_denials"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "recent refusals ({} kept, newest first)", denials.len());
    for d in denials.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} {} rule {} {} {} {}: {}",
            s(&d["time"]),
            s(&d["client_ip"]),
            s(&d["rule"]),
            s(&d["decision"]),
            s(&d["status"]),
            s(&d["path"]),
            s(&d["reason"])
        );
    }
    for c in doc["certificates"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "certificate {} expires {} ({} days)",
            s(&c["names"]),
            s(&c["not_after"]),
            s(&c["days_left"])
        );
    }
    out
}
