//! The /status page for a person: the same [`StatusDoc`] as the JSON, rendered
//! as tables and lists. One self-contained page: no scripts, no external assets.

use std::fmt::Write as _;

use super::doc::StatusDoc;
use crate::timeline::HourCount;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|x| esc(&x.to_string())).unwrap_or_else(|| "-".into())
}

/// Writes a titled table; `rows` are already-escaped cells.
fn table(out: &mut String, title: &str, head: &[&str], rows: Vec<Vec<String>>) {
    let _ = write!(out, "<h2>{}</h2>", esc(title));
    if rows.is_empty() {
        out.push_str("<p class=none>none</p>");
        return;
    }
    out.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// A `<ul>` of escaped items, or "-" when empty.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    let mut out = String::from("<ul>");
    for i in items {
        let _ = write!(out, "<li>{}</li>", esc(i.as_ref()));
    }
    out.push_str("</ul>");
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}ul{margin:0;padding-left:1.2em}.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}\
.none{color:#777}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}";

pub fn render(doc: &StatusDoc) -> String {
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><meta charset=utf-8><title>cartguard status</title><style>{STYLE}</style><h1>cartguard {}</h1>",
        esc(&doc.version)
    );
    if doc.healthy {
        out.push_str("<p class=ok>healthy</p>");
    } else {
        out.push_str("<ul class=bad>");
        for r in &doc.health_reasons {
            let _ = write!(out, "<li>{}</li>", esc(r));
        }
        out.push_str("</ul>");
    }
    let up = &doc.upstream;
    let reachable = match up.reachable {
        None => "not probed yet".to_string(),
        Some(true) => "<span class=ok>reachable</span>".to_string(),
        Some(false) => "<span class=bad>unreachable</span>".to_string(),
    };
    let _ = write!(
        out,
        "<dl><dt>mode</dt><dd>{}</dd><dt>uptime</dt><dd>{}s (since {})</dd><dt>config</dt><dd>{} (sha256 {}…, loaded {})</dd>\
         <dt>last reload</dt><dd>{} {}</dd><dt>upstream</dt><dd>{} {reachable}, {} in flight, last ok {}, last error {}</dd>\
         <dt>requests</dt><dd>{} ({} connections open)</dd><dt>access log dropped</dt><dd>{}</dd></dl>",
        esc(doc.mode.as_str()),
        doc.uptime_seconds,
        esc(&doc.started_at),
        esc(&doc.config.path),
        esc(doc.config.sha256.get(..12).unwrap_or(&doc.config.sha256)),
        esc(&doc.config.loaded_at),
        opt(&doc.config.last_reload_at),
        doc.config.last_reload_error.as_ref().map(|e| format!("<span class=bad>failed: {}</span>", esc(e))).unwrap_or_default(),
        esc(&up.url),
        up.in_flight,
        opt(&up.last_ok_at),
        opt(&up.last_error),
        doc.requests,
        doc.active_connections,
        doc.access_log_dropped,
    );
    timeline_svg(&mut out, &doc.timeline);
    if !doc.config.warnings.is_empty() {
        let _ = write!(out, "<h2>Config warnings</h2>{}", list(&doc.config.warnings));
    }
    let o = &doc.overload;
    let refused: Vec<String> = o.connections_refused.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    let _ = write!(
        out,
        "<h2>Overload</h2><dl><dt>connections</dt><dd>{} ordinary, {} allowlisted; {} idle shed; refused {}</dd>\
         <dt>password checks</dt><dd>{} run, {} shared, {} cached, {} refused (503), {} waiting</dd></dl>",
        o.ordinary_connections,
        o.allowlisted_connections,
        o.connections_shed_idle,
        esc(&refused.join(", ")),
        o.verifications_run,
        o.verifications_joined,
        o.verifications_cached,
        o.verifications_refused,
        o.verifications_waiting,
    );
    table(
        &mut out,
        "Groups",
        &["group", "addresses", "requests", "last seen", "from", "path", "status", "decision"],
        doc.groups
            .iter()
            .map(|g| {
                vec![
                    esc(&g.name),
                    list(&g.cidrs),
                    g.requests.to_string(),
                    opt(&g.last_seen_at),
                    opt(&g.last_client_ip),
                    opt(&g.last_path),
                    opt(&g.last_status),
                    opt(&g.last_decision.map(|d| d.as_str())),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Possible new integration addresses",
        &["client", "rule", "times", "first seen", "last seen"],
        doc.possible_new_integration_addresses
            .iter()
            .map(|a| vec![esc(&a.client_ip), esc(&a.rule), a.count.to_string(), esc(&a.first_seen), esc(&a.last_seen)])
            .collect(),
    );
    table(
        &mut out,
        "Rules (first match wins)",
        &["rule", "path prefix", "allow", "others", "decisions since start"],
        doc.rules
            .iter()
            .map(|r| {
                let decisions: Vec<String> = r.decisions.iter().map(|(d, n)| format!("{d}: {n}")).collect();
                vec![esc(&r.name), esc(&r.path_prefix), list(&r.allow), esc(r.others.as_str()), list(&decisions)]
            })
            .collect(),
    );
    table(
        &mut out,
        "Recent refusals (newest first)",
        &["time", "client", "peer", "rule", "decision", "status", "path", "reason"],
        doc.recent_denials
            .iter()
            .map(|d| {
                vec![
                    esc(&d.time),
                    esc(&d.client_ip),
                    esc(&d.peer_ip),
                    opt(&d.rule),
                    esc(d.decision.as_str()),
                    d.status.to_string(),
                    esc(&d.path),
                    opt(&d.reason),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Bans",
        &["client", "seconds left", "since"],
        doc.bans.iter().map(|b| vec![esc(&b.ip), b.seconds_left.to_string(), esc(&b.since)]).collect(),
    );
    table(
        &mut out,
        "Listeners",
        &["address", "TLS", "PROXY protocol", "redirect to HTTPS"],
        doc.listeners
            .iter()
            .map(|l| {
                let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
                vec![esc(&l.addr), yn(l.tls), yn(l.proxy_protocol), yn(l.redirect_https)]
            })
            .collect(),
    );
    table(
        &mut out,
        "Certificates",
        &["listener", "names", "expires", "days left"],
        doc.certificates
            .iter()
            .map(|c| vec![esc(&c.listener), list(&c.names), esc(&c.not_after), c.days_left.to_string()])
            .collect(),
    );
    table(
        &mut out,
        "Alert sinks",
        &["sink", "type", "sent", "failed", "last sent", "answer", "last error"],
        doc.alerts
            .sinks
            .iter()
            .map(|s| {
                let error = match (&s.last_error_at, &s.last_error) {
                    (Some(at), Some(e)) => format!("<span class=bad>{} {}</span>", esc(at), esc(e)),
                    _ => "-".into(),
                };
                vec![
                    esc(&s.name),
                    esc(&s.kind),
                    s.sent.to_string(),
                    s.failed.to_string(),
                    opt(&s.last_sent_at),
                    opt(&s.last_answer),
                    error,
                ]
            })
            .collect(),
    );
    if !doc.acme.is_empty() {
        let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
        table(
            &mut out,
            "Automatic HTTPS (ACME)",
            &["name", "issuer", "expires", "last attempt", "last error", "next attempt"],
            doc.acme
                .iter()
                .map(|a| {
                    vec![
                        esc(&a.name),
                        opt(&a.issuer),
                        opt(&a.not_after),
                        opt(&a.last_attempt_at),
                        opt(&a.last_error),
                        opt(&a.next_attempt_at),
                    ]
                })
                .collect(),
        );
    }
    out.push_str("</html>\n");
    out
}

/// Stacked hourly bars (served, refused, failed) as inline SVG: no script, no external asset.
fn timeline_svg(out: &mut String, hours: &[HourCount]) {
    const BAR: usize = 22;
    const HEIGHT: u64 = 120;
    let total: u64 = hours.iter().map(|h| h.served + h.refused + h.failed).sum();
    let _ = write!(out, "<h2>Allowlisted requests, last 24 hours (UTC)</h2>");
    if total == 0 {
        out.push_str("<p class=none>no requests from an allow group in the last 24 hours</p>");
        return;
    }
    let max = hours.iter().map(|h| h.served + h.refused + h.failed).max().unwrap_or(1).max(1);
    let width = hours.len() * BAR + 70;
    let _ = write!(
        out,
        "<svg role=img aria-label=\"allowlisted requests per hour\" width={width} height={} viewBox=\"0 0 {width} {}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=10>",
        HEIGHT + 30,
        HEIGHT + 30
    );
    let _ = write!(out, "<text x=0 y=10>{max}</text><text x=0 y={HEIGHT}>0</text>");
    for (i, h) in hours.iter().enumerate() {
        let x = 40 + i * BAR;
        let mut y = HEIGHT;
        for (n, color, what) in
            [(h.served, "#2a8f3c", "served"), (h.refused, "#e08a00", "refused"), (h.failed, "#c62828", "failed")]
        {
            if n == 0 {
                continue;
            }
            let height = (n * HEIGHT).div_ceil(max);
            y = y.saturating_sub(height);
            let hour = (h.hour_start / 3600) % 24;
            let _ = write!(
                out,
                "<rect x={x} y={y} width={} height={height} fill=\"{color}\"><title>{hour:02}:00 {what}: {n}</title></rect>",
                BAR - 4
            );
        }
        if i % 6 == 0 || i + 1 == hours.len() {
            let _ = write!(out, "<text x={x} y={}>{:02}:00</text>", HEIGHT + 14, (h.hour_start / 3600) % 24);
        }
    }
    let _ = write!(
        out,
        "<text x=40 y={}><tspan fill=\"#2a8f3c\">■ served</tspan> <tspan fill=\"#e08a00\">■ refused by the guard</tspan> <tspan fill=\"#c62828\">■ failed (5xx)</tspan></text></svg>",
        HEIGHT + 28
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_and_lists_are_html_lists() {
        let mut doc = StatusDoc::default();
        doc.health_reasons.push("<script>x</script>".into());
        doc.groups.push(super::super::doc::GroupStatus {
            name: "office".into(),
            cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            ..Default::default()
        });
        let html = render(&doc);
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("<ul><li>10.0.0.0/8</li><li>2001:db8::/32</li></ul>"), "{html}");
        assert!(!html.contains("[\""), "no JSON arrays in cells: {html}");
        assert!(html.contains("no requests from an allow group"), "{html}");
    }

    #[test]
    fn the_timeline_draws_one_bar_segment_per_outcome_and_hour() {
        let mut doc = StatusDoc {
            timeline: (0..24u64).map(|i| HourCount { hour_start: i * 3600, ..Default::default() }).collect(),
            ..Default::default()
        };
        doc.timeline[23] = HourCount { hour_start: 23 * 3600, served: 10, refused: 2, failed: 1 };
        doc.timeline[5].served = 5;
        let html = render(&doc);
        assert_eq!(html.matches("<rect ").count(), 4, "{html}");
        assert!(html.contains("<title>23:00 served: 10</title>"), "{html}");
        assert!(html.contains("<title>23:00 failed: 1</title>"), "{html}");
        // The tallest hour fills the chart; a half-as-busy hour gets half the height.
        assert!(html.contains("height=93 fill=\"#2a8f3c\"><title>23:00 served"), "{html}");
        assert!(html.contains("height=47 fill=\"#2a8f3c\"><title>05:00 served"), "{html}");
        assert!(!html.contains("<script"), "{html}");
    }
}
