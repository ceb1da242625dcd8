//! Text for a sysadmin on SSH: the effective policy (`check`) and a summary of
//! /status (`cartguard status`).

use std::fmt::Write as _;

use crate::config::Config;
use crate::policy::Policy;
use crate::status::StatusDoc;

/// The effective policy as `check` prints it.
pub fn describe(config: &Config) -> String {
    let p = &config.policy;
    let mut out = String::new();
    let _ = writeln!(out, "config    {} (sha256 {})", config.source.path.display(), &config.source.sha256[..12]);
    let _ = writeln!(out, "mode      {}", p.mode.as_str());
    for l in &config.listeners {
        let kind = match &l.acme {
            Some(a) => format!(
                "https (acme: {} from {}, {})",
                a.domains.join(", "),
                a.directory,
                a.challenges.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("/")
            ),
            None if l.certs.is_empty() => "http".to_string(),
            None => format!("https ({} certificate(s))", l.certs.len()),
        };
        let extra = [(l.proxy_protocol, " proxy_protocol"), (l.redirect_https, " redirect_https")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect::<String>();
        let _ = writeln!(out, "listen    {} {kind}{extra}", l.addr);
    }
    let _ = writeln!(
        out,
        "upstream  {} (host: {}, timeout {}s)",
        config.upstream.url,
        match &config.upstream.host {
            crate::config::HostMode::Preserve => "preserve",
            crate::config::HostMode::Upstream => "upstream",
            crate::config::HostMode::Literal(h) => h.to_str().unwrap_or("(not text)"),
        },
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
    for i in 0..p.groups.len() {
        let _ = writeln!(out, "  {}", group_line(p, i, 8));
    }
    let _ = writeln!(out, "rules (first match wins)");
    for i in 0..p.rules.len() {
        let _ = writeln!(out, "  {}", rule_line(p, i));
    }
    let _ = writeln!(out, "users     {}", config.users.len());
    let _ = writeln!(out, "status    {}", config.status.listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into()));
    out
}

/// A short human summary of the /status document.
pub fn summarize_status(doc: &StatusDoc) -> String {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let health = if doc.healthy { "healthy" } else { "UNHEALTHY" };
    let _ =
        writeln!(out, "cartguard {} · {health} · mode {} · up {}s", doc.version, doc.mode.as_str(), doc.uptime_seconds);
    for r in &doc.health_reasons {
        let _ = writeln!(out, "  ! {r}");
    }
    let _ = writeln!(out, "config    {} loaded {}", doc.config.path, doc.config.loaded_at);
    if let Some(e) = &doc.config.last_reload_error {
        let _ = writeln!(out, "  ! last reload failed: {e}");
    }
    let up = &doc.upstream;
    let reachable = match up.reachable {
        None => "not probed yet",
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
    };
    let _ = writeln!(
        out,
        "upstream  {} {reachable}, {} in flight, last ok {}, last error {}",
        up.url,
        up.in_flight,
        o(&up.last_ok_at),
        o(&up.last_error)
    );
    let _ = writeln!(out, "groups");
    for g in &doc.groups {
        let _ = writeln!(
            out,
            "  {:<24} {} requests, last {} from {} {} -> {}",
            g.name,
            g.requests,
            o(&g.last_seen_at),
            o(&g.last_client_ip),
            o(&g.last_path),
            g.last_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    if !doc.possible_new_integration_addresses.is_empty() {
        let _ = writeln!(out, "possible new integration addresses (refused on a rule that admits a group)");
        for a in doc.possible_new_integration_addresses.iter().take(10) {
            let _ = writeln!(out, "  {} on rule {}: {} times, last {}", a.client_ip, a.rule, a.count, a.last_seen);
        }
    }
    let _ = writeln!(out, "recent refusals ({} kept, newest first)", doc.recent_denials.len());
    for d in doc.recent_denials.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} {} rule {} {} {} {}: {}",
            d.time,
            d.client_ip,
            o(&d.rule),
            d.decision.as_str(),
            d.status,
            d.path,
            o(&d.reason)
        );
    }
    for c in &doc.certificates {
        let _ = writeln!(out, "certificate {} expires {} ({} days)", c.names.join(", "), c.not_after, c.days_left);
    }
    out
}

/// One line per group: name, the first `max` CIDRs, and how many more.
pub fn group_line(p: &Policy, i: usize, max: usize) -> String {
    let g = &p.groups[i];
    let cidrs: Vec<String> = g.set.cidrs().iter().take(max).map(|n| n.to_string()).collect();
    let more =
        if g.set.cidrs().len() > max { format!(" (+{} more)", g.set.cidrs().len() - max) } else { String::new() };
    format!("{:<24} {}{more}", g.name, cidrs.join(", "))
}

/// One line per rule, as check, explain and the startup log print it.
pub fn rule_line(p: &Policy, i: usize) -> String {
    let r = &p.rules[i];
    let allow: Vec<&str> = r.allow.iter().map(|&g| p.groups[g].name.as_str()).collect();
    let query: Vec<String> =
        r.query.iter().map(|q| format!("{}={}", q.name, String::from_utf8_lossy(&q.prefix))).collect();
    let methods = r
        .methods
        .as_ref()
        .map(|m| format!(" methods {}", m.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")))
        .unwrap_or_default();
    let query = if query.is_empty() { String::new() } else { format!(" or query {}", query.join(" or ")) };
    format!(
        "{}. {:<16} {}{query}{methods}  allow [{}]  others {}",
        i + 1,
        r.name,
        r.path_prefix,
        allow.join(", "),
        r.others.as_str()
    )
}
