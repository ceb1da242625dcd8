//! Operations: /status, /healthz and /metrics after real traffic, reloads and
//! integration alarms (in-process), then signals, graceful stop and startup
//! errors on the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const IM: &str = "50.18.194.14";

/// Integration Management, through the trusted proxy.
fn im(addr: SocketAddr, target: &str) -> RequestBuilder {
    client_from("127.0.0.100").get(addr, target).header("X-Forwarded-For", IM)
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list:#}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls /healthz until it answers `want` (bounded: about 5s); returns the body.
async fn healthz_until(admin: SocketAddr, want: u16) -> String {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = admin_get(admin, "/healthz", "text/plain").await;
        if last.0 == want {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/healthz never answered {want}; last: {} {}", last.0, last.1);
}

/// Polls /status until the upstream probe has succeeded (bounded).
async fn upstream_probed_ok(admin: SocketAddr) {
    for _ in 0..100 {
        if status_json(admin).await["upstream"]["reachable"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upstream probe never succeeded: {:#}", status_json(admin).await["upstream"]);
}

/// The value of the metrics line that starts with `series ` (labels included).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(admin: SocketAddr) -> String {
    let (code, body) = admin_get(admin, "/metrics", "text/plain").await;
    assert_eq!(code, 200);
    body
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_json_reports_groups_rules_denials_listeners_upstream_and_config() {
    let g = TestGuard::start().await;
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    let r = im(g.addr(), "/wp-json/wc/v3/products?consumer_key=ck_live&consumer_secret=cs_live&page=2").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await.status, 200);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/shop").send().await.status, 401);
    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-admin/options.php?token=s3cret-token&tab=1")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/feed").send().await.status, 200);
    g.log_lines(6).await;
    upstream_probed_ok(g.admin()).await;

    let (code, text) = admin_get(g.admin(), "/status", "application/json").await;
    assert_eq!(code, 200);
    assert!(!text.contains("s3cret-token") && !text.contains("cs_live"), "a secret leaked into /status: {text}");
    let s: Value = serde_json::from_str(&text).unwrap();

    let imgroup = by_name(&s["groups"], "integration-management");
    assert_eq!(imgroup["requests"], 2);
    assert_eq!(imgroup["last_client_ip"], IM);
    assert_eq!(imgroup["last_path"], "/wp-json/wc/v3/products?consumer_key=REDACTED&consumer_secret=REDACTED&page=2");
    assert_eq!(imgroup["last_status"], 200);
    assert_eq!(imgroup["last_decision"], "allow");
    assert!(imgroup["last_seen_at"].as_str().is_some_and(|t| t.len() >= 20), "{imgroup}");
    assert!(imgroup["cidrs"].as_array().unwrap().iter().any(|c| c == "50.18.194.14/32"), "{imgroup}");
    let office = by_name(&s["groups"], "office");
    assert_eq!(office["requests"], 1);
    assert_eq!(office["last_client_ip"], "127.0.0.2");
    assert_eq!(office["last_path"], "/wp-admin/");

    assert_eq!(by_name(&s["rules"], "cart-api")["decisions"], serde_json::json!({"allow": 2}));
    assert_eq!(by_name(&s["rules"], "admin")["decisions"], serde_json::json!({"allow": 1, "deny": 1}));
    assert_eq!(by_name(&s["rules"], "site")["decisions"], serde_json::json!({"challenge": 1}));
    assert_eq!(by_name(&s["rules"], "feed")["decisions"], serde_json::json!({"open": 1}));
    let names: Vec<&str> = s["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cart-api", "admin", "feed", "site"]);

    let denials = s["recent_denials"].as_array().unwrap();
    assert_eq!(denials.len(), 2, "{denials:#?}");
    // Newest first.
    let d = &denials[0];
    assert_eq!(d["client_ip"], "203.0.113.9");
    assert_eq!(d["peer_ip"], "127.0.0.100");
    assert_eq!(d["rule"], "admin");
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["status"], 403);
    assert_eq!(d["path"], "/wp-admin/options.php?token=REDACTED&tab=1");
    assert!(d["time"].is_string());
    let d = &denials[1];
    assert_eq!((d["client_ip"].as_str(), d["peer_ip"].as_str()), (Some("127.0.0.3"), Some("127.0.0.3")));
    assert_eq!(
        (d["rule"].as_str(), d["decision"].as_str(), d["status"].as_u64()),
        (Some("site"), Some("challenge"), Some(401))
    );

    let listeners = s["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    // The bound address, not the configured port 0.
    assert_eq!(listeners[0]["addr"], g.addr().to_string(), "{listeners:?}");
    assert_eq!(listeners[0]["tls"], false);

    assert!(s["upstream"]["url"].as_str().unwrap().starts_with(&g.upstream.url()), "{}", s["upstream"]);
    assert_eq!(s["upstream"]["reachable"], true);
    assert_eq!(s["upstream"]["in_flight"], 0);

    assert_eq!(s["config"]["path"], g.config_path.display().to_string());
    assert_eq!(s["config"]["sha256"], sha256_hex(&std::fs::read(&g.config_path).unwrap()));
    assert!(s["config"]["last_reload_error"].is_null());
    assert_eq!(s["requests"], 6);
    assert_eq!(s["healthy"], true, "{}", s["health_reasons"]);
    assert_eq!(s["enforcing"], true);
    assert_eq!(g.upstream.count(), 4);
}

#[tokio::test]
async fn status_is_html_when_the_browser_prefers_it_and_escapes_hostile_text() {
    // `<` and `>` never get past hyper's URI parser, so the hostile markup comes
    // from a group name, and the hostile path carries quotes and ampersands.
    let body = DEFAULT_RULES.replace(
        "  office: [\"127.0.0.2/32\"]\n",
        "  office: [\"127.0.0.2/32\"]\n  \"<script>alert(1)</script>\": [\"127.0.0.4/32\"]\n",
    );
    let g = TestGuard::with_body(&body).await;
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    let r = client_from("127.0.0.3").get(g.addr(), "/x\"onmouseover=\"alert(1)&y").send().await;
    assert_eq!(r.status, 400);
    let rec = g.record(2).await;
    assert_eq!(rec["decision"], "bad_request");
    let json = status_json(g.admin()).await;
    assert_eq!(json["recent_denials"][0]["path"], "/x\"onmouseover=\"alert(1)&y", "{:#}", json["recent_denials"]);

    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (code, html) = admin_get(g.admin(), "/status", browser).await;
    assert_eq!(code, 200);
    assert!(html.contains("<table>"), "{html}");
    assert!(html.contains("integration-management"), "{html}");
    assert!(html.contains("/wp-json/wc/v3/orders"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "unescaped markup in the HTML status page: {html}");
    assert!(html.contains("/x&quot;onmouseover=&quot;alert(1)&amp;y"), "{html}");
    assert!(!html.contains("\"onmouseover"), "unescaped quote in the HTML status page: {html}");

    // JSON ranked higher than HTML: JSON.
    let (code, body) = admin_get(g.admin(), "/status", "text/html;q=0.5, application/json").await;
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
}

// ---------------------------------------------------------------------------
// /healthz
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_is_ok_and_503_naming_the_upstream_when_it_is_down() {
    let g = TestGuard::start().await;
    assert_eq!(healthz_until(g.admin(), 200).await, "ok\n");

    let closed = free_port();
    let down = TestGuard::start_with(GuardOptions {
        upstream_url: Some(format!("http://127.0.0.1:{closed}")),
        ..Default::default()
    })
    .await;
    let body = healthz_until(down.admin(), 503).await;
    assert!(body.contains("upstream") && body.contains(&format!("127.0.0.1:{closed}")), "{body}");
    assert!(body.contains("unreachable"), "{body}");
    let s = status_json(down.admin()).await;
    assert_eq!(s["upstream"]["reachable"], false);
    assert_eq!(s["healthy"], false);
    assert!(s["upstream"]["last_error"].as_str().is_some_and(|e| e.contains(&closed.to_string())), "{s:#}");
    let m = metrics(down.admin()).await;
    assert_eq!(metric(&m, "cartguard_upstream_up"), Some(0.0), "{m}");
    assert_eq!(metric(&metrics(g.admin()).await, "cartguard_upstream_up"), Some(1.0));
}

#[tokio::test]
async fn healthz_fails_when_an_expected_group_goes_quiet_and_recovers_on_its_next_request() {
    // 2s, not 1s: last-seen times have whole-second resolution.
    let g = TestGuard::start_with(GuardOptions {
        status_extra: "  expect:\n    - {group: integration-management, within: 2s}\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    g.record(1).await;
    assert_eq!(healthz_until(g.admin(), 200).await, "ok\n");

    // Other traffic does not count for the group.
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/").send().await.status, 200);
    let body = healthz_until(g.admin(), 503).await;
    assert!(body.contains("integration-management"), "{body}");
    assert!(body.contains("not seen within 2s"), "{body}");
    assert!(!body.contains("office"), "{body}");
    let s = status_json(g.admin()).await;
    assert_eq!(s["healthy"], false);

    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    g.record(3).await;
    let (code, body) = admin_get(g.admin(), "/healthz", "text/plain").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_by_rule_decision_and_status_class() {
    let g = TestGuard::start().await;
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders?page=2").send().await.status, 200);
    assert_eq!(im(g.addr(), "/status/503").send().await.status, 503);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "wrong").send().await.status, 401);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/shop").send().await.status, 401);
    g.log_lines(5).await;

    let m = metrics(g.admin()).await;
    let req = |rule: &str, decision: &str, class: &str| {
        metric(
            &m,
            &format!("cartguard_requests_total{{rule=\"{rule}\",decision=\"{decision}\",status_class=\"{class}\"}}"),
        )
    };
    assert_eq!(req("cart-api", "allow", "2xx"), Some(2.0), "{m}");
    assert_eq!(req("site", "allow", "5xx"), Some(1.0), "{m}");
    assert_eq!(req("site", "auth_fail", "4xx"), Some(1.0), "{m}");
    assert_eq!(req("site", "challenge", "4xx"), Some(1.0), "{m}");
    assert_eq!(req("site", "allow", "2xx"), None, "{m}");
    let total: f64 = m
        .lines()
        .filter(|l| l.starts_with("cartguard_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 5.0, "{m}");
    assert!(m.contains("# TYPE cartguard_requests_total counter"), "{m}");
    assert!(m.contains("# TYPE cartguard_upstream_response_seconds histogram"), "{m}");
    assert_eq!(metric(&m, "cartguard_upstream_response_seconds_count"), Some(3.0), "{m}");
    assert_eq!(metric(&m, "cartguard_upstream_response_seconds_bucket{le=\"+Inf\"}"), Some(3.0), "{m}");
    assert!(metric(&m, "cartguard_upstream_response_seconds_sum").is_some_and(|s| s > 0.0), "{m}");
    assert_eq!(metric(&m, "cartguard_auth_failures_total"), Some(1.0), "{m}");
    let seen = metric(&m, "cartguard_group_last_seen_timestamp_seconds{group=\"integration-management\"}").unwrap();
    assert!((now_unix() - seen).abs() < 120.0, "last seen {seen}");
    assert_eq!(metric(&m, "cartguard_group_last_seen_timestamp_seconds{group=\"office\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"success\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"failure\"}"), Some(0.0), "{m}");
    assert!(metric(&m, "cartguard_active_connections").is_some(), "{m}");
    let took = |rule: &str, decision: &str, what: &str| {
        metric(&m, &format!("cartguard_request_duration_seconds_{what}{{rule=\"{rule}\",decision=\"{decision}\"}}"))
    };
    assert_eq!(took("cart-api", "allow", "count"), Some(2.0), "{m}");
    assert_eq!(took("site", "challenge", "count"), Some(1.0), "{m}");
    assert!(took("cart-api", "allow", "sum").is_some_and(|s| s > 0.0), "{m}");
    assert_eq!(
        metric(&m, "cartguard_request_duration_seconds_bucket{rule=\"cart-api\",decision=\"allow\",le=\"+Inf\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(metric(&m, &format!("cartguard_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), Some(1.0));
    assert!(metric(&m, "process_resident_memory_bytes").is_some_and(|v| v > 1e6), "{m}");
    assert!(metric(&m, "process_open_fds").is_some_and(|v| v >= 3.0), "{m}");
    assert!(metric(&m, "process_cpu_seconds_total").is_some(), "{m}");

    g.guard().reload().unwrap();
    let m = metrics(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"success\"}"), Some(1.0), "{m}");
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

const FEED_OPEN: &str = "  - name: feed\n    path_prefix: /feed\n    others: open\n";
const FEED_DENY: &str = "  - name: feed\n    path_prefix: /feed\n    others: deny\n";

#[tokio::test]
async fn reload_applies_a_changed_rule_to_the_next_request() {
    let g = TestGuard::start().await;
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/feed").send().await.status, 200);
    let before = status_json(g.admin()).await["config"]["sha256"].clone();
    g.rewrite_config(|t| {
        assert!(t.contains(FEED_OPEN));
        t.replace(FEED_OPEN, FEED_DENY)
    });
    g.guard().reload().unwrap();
    let r = client_from("127.0.0.3").get(g.addr(), "/feed").send().await;
    assert_eq!(r.status, 403);
    assert_eq!(g.record(2).await["decision"], "deny");
    assert_eq!(g.upstream.count(), 1);
    let s = status_json(g.admin()).await;
    assert_ne!(s["config"]["sha256"], before);
    assert_eq!(s["config"]["sha256"], sha256_hex(&std::fs::read(&g.config_path).unwrap()));
    assert!(s["config"]["last_reload_error"].is_null());
    assert!(s["config"]["last_reload_at"].is_string());
    // Counters of a kept rule name carry over: one open, one deny.
    assert_eq!(by_name(&s["rules"], "feed")["decisions"], serde_json::json!({"open": 1, "deny": 1}));
}

#[tokio::test]
async fn failed_reload_is_kept_visible_while_the_old_policy_serves() {
    let g = TestGuard::start().await;
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await.status, 200);
    assert_eq!(im(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 200);
    g.log_lines(2).await;
    healthz_until(g.admin(), 200).await;
    let original = std::fs::read_to_string(&g.config_path).unwrap();
    let sha = sha256_hex(original.as_bytes());

    g.rewrite_config(|t| t.replacen("allow: [office]", "alow: [office]", 1));
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    let line = text.lines().position(|l| l.contains("alow:")).unwrap() + 1;
    let err = g.guard().reload().unwrap_err();
    assert!(matches!(err, cartguard::ReloadError::Config(_)), "a config error, typed as one: {err:?}");
    let err = err.to_string();
    assert!(err.contains("alow") && err.contains(&format!(":{line}:")), "{err}");

    let s = status_json(g.admin()).await;
    let kept = s["config"]["last_reload_error"].as_str().unwrap_or_default();
    assert!(kept.contains("alow") && kept.contains(&format!(":{line}:")), "{:#}", s["config"]);
    assert_eq!(s["config"]["sha256"], sha, "the old config must still be the one serving");
    assert_eq!(s["healthy"], false);
    let (code, body) = admin_get(g.admin(), "/healthz", "text/plain").await;
    assert_eq!(code, 503);
    assert!(body.contains("reload") && body.contains("alow"), "{body}");
    let m = metrics(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"failure\"}"), Some(1.0), "{m}");

    // The old policy still decides.
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await.status, 200);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/wp-admin/").send().await.status, 403);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/feed").send().await.status, 200);

    // Fixed: the error clears, health returns, counters survive.
    std::fs::write(&g.config_path, &original).unwrap();
    g.guard().reload().unwrap();
    assert_eq!(healthz_until(g.admin(), 200).await, "ok\n");
    assert_eq!(client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await.status, 200);
    g.log_lines(6).await;
    let s = status_json(g.admin()).await;
    assert!(s["config"]["last_reload_error"].is_null(), "{:#}", s["config"]);
    assert_eq!(by_name(&s["rules"], "admin")["decisions"], serde_json::json!({"allow": 3, "deny": 1}));
    assert_eq!(by_name(&s["rules"], "cart-api")["decisions"], serde_json::json!({"allow": 1}));
    assert_eq!(by_name(&s["groups"], "office")["requests"], 3);
    assert_eq!(by_name(&s["groups"], "integration-management")["requests"], 1);
    assert_eq!(by_name(&s["groups"], "integration-management")["last_path"], "/wp-json/wc/v3/orders");
    assert_eq!(s["requests"], 6);
    let m = metrics(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"success\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"failure\"}"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_in_a_loop_under_concurrent_traffic_fail_no_request() {
    const TASKS: usize = 4;
    const PER_TASK: usize = 75;
    const RELOADS: usize = 30;
    let g = TestGuard::start().await;
    let addr = g.addr();
    let mut clients = Vec::new();
    for t in 0..TASKS {
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let r = if i % 2 == 0 {
                    im(addr, &format!("/wp-json/wc/v3/orders?t={t}&i={i}")).send().await
                } else {
                    client_from("127.0.0.3").get(addr, &format!("/feed/{t}/{i}")).send().await
                };
                statuses.push(r.status);
            }
            statuses
        }));
    }
    for i in 0..RELOADS {
        g.rewrite_config(|t| {
            if i % 2 == 0 {
                t.replace("office: [\"127.0.0.2/32\"]", "office: [\"127.0.0.20/32\"]")
            } else {
                t.replace("office: [\"127.0.0.20/32\"]", "office: [\"127.0.0.2/32\"]")
            }
        });
        g.guard().reload().unwrap_or_else(|e| panic!("reload {i}: {e}"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(tokio::time::timeout(Duration::from_secs(60), c).await.expect("clients timed out").unwrap());
    }
    assert_eq!(statuses.len(), TASKS * PER_TASK);
    let failed: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), statuses.len());
    assert_eq!(g.upstream.count(), TASKS * PER_TASK);
    let m = metrics(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"success\"}"), Some(RELOADS as f64), "{m}");
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"failure\"}"), Some(0.0), "{m}");
    g.log_lines(TASKS * PER_TASK).await;
    let s = status_json(g.admin()).await;
    assert_eq!(by_name(&s["groups"], "integration-management")["requests"], (TASKS * PER_TASK.div_ceil(2)) as u64);
    assert_eq!(by_name(&s["rules"], "feed")["decisions"]["open"], (TASKS * (PER_TASK / 2)) as u64);
}

// ---------------------------------------------------------------------------
// Integration alarms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_address_with_credentials_on_an_integration_rule_is_flagged() {
    let g = TestGuard::start().await;
    for _ in 0..3 {
        let r = client_from("127.0.0.5").get(g.addr(), "/wp-json/wc/v3/orders").basic("ck_new", "cs_new").send().await;
        assert_eq!(r.status, 401);
    }
    // Without credentials: a bot, not the integration.
    assert_eq!(client_from("127.0.0.6").get(g.addr(), "/wp-json/wc/v3/orders").send().await.status, 401);
    // On a rule that admits nobody by address: no alarm.
    assert_eq!(client_from("127.0.0.7").get(g.addr(), "/feed").basic("x", "y").send().await.status, 200);
    g.log_lines(5).await;
    assert_eq!(g.upstream.count(), 1);

    let s = status_json(g.admin()).await;
    let alarms = s["possible_new_integration_addresses"].as_array().unwrap();
    assert_eq!(alarms.len(), 1, "{alarms:#?}");
    assert_eq!(alarms[0]["client_ip"], "127.0.0.5");
    assert_eq!(alarms[0]["rule"], "cart-api");
    assert_eq!(alarms[0]["count"], 3);
    assert!(alarms[0]["first_seen"].is_string() && alarms[0]["last_seen"].is_string());
    let (_, html) = admin_get(g.admin(), "/status", "text/html").await;
    assert!(html.contains("Possible new integration addresses") && html.contains("127.0.0.5"), "{html}");
}

// ---------------------------------------------------------------------------
// The real binary: signals, graceful stop, startup errors
// ---------------------------------------------------------------------------

const BIN_RULES: &str = "rules:
  - name: cart-api
    path_prefix: /wp-json/wc/
    allow: [integration-management]
    others: deny
  - name: feed
    path_prefix: /feed
    others: open
  - name: site
    path_prefix: /
    others: open
";

fn bin_yaml(port: u16, admin: u16, upstream: &str, log: &Path) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:{port}\"\nupstream:\n  url: \"{upstream}\"\n  connect_timeout: 2s\n  timeout: 10s\n  probe_interval: 200ms\nstatus:\n  listen: \"127.0.0.1:{admin}\"\nlog:\n  format: json\n  path: \"{}\"\nlimits:\n  shutdown_grace: 10s\n{BIN_RULES}",
        log.display()
    )
}

/// The binary with one worker and info logging, as the unit runs it.
fn cartguard_service() -> Command {
    let mut c = cartguard();
    c.env("CARTGUARD_WORKER_THREADS", "1").env("CARTGUARD_LOG", "info");
    c
}

/// `cartguard run` as a child process, on free ports, with a recording upstream.
struct Running {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    upstream: Upstream,
}

impl Running {
    async fn start() -> Running {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = dir.path().join("cartguard.yaml");
        std::fs::write(&config, bin_yaml(port, admin, &upstream.url(), &dir.path().join("access.log"))).unwrap();
        let child = cartguard_service()
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut r = Running {
            child,
            dir,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            upstream,
        };
        for _ in 0..200 {
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!("cartguard exited at start ({status}): {}", r.stderr());
            }
            let public = tokio::net::TcpStream::connect(r.addr).await.is_ok();
            if public && tokio::net::TcpStream::connect(r.admin).await.is_ok() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cartguard did not start listening within 10s: {}", r.stderr());
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cartguard did not exit within 15s: {}", self.stderr());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` on the file at `path` (bounded, about 5s).
async fn file_until(path: &Path, cond: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if cond(&text) {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never reached the expected state: {:?}", path.display(), std::fs::read_to_string(path));
}

#[tokio::test]
async fn sighup_reloads_the_config_of_the_running_binary() {
    let p = Running::start().await;
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed").send().await.status, 200);
    let text = std::fs::read_to_string(&p.config).unwrap().replace(FEED_OPEN, FEED_DENY);
    assert!(text.contains(FEED_DENY));
    std::fs::write(&p.config, &text).unwrap();
    let sha = sha256_hex(text.as_bytes());
    p.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if status_json(p.admin).await["config"]["sha256"] == sha {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP did not reload: {}", p.stderr());
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed").send().await.status, 403);
    assert_eq!(p.upstream.count(), 1);
    let m = metrics(p.admin).await;
    assert_eq!(metric(&m, "cartguard_reloads_total{result=\"success\"}"), Some(1.0), "{m}");

    // An invalid file on SIGHUP: kept out, reported, the process lives on.
    std::fs::write(&p.config, text.replace("others: deny", "others: dney")).unwrap();
    p.signal("HUP");
    let mut failed = false;
    for _ in 0..100 {
        if status_json(p.admin).await["config"]["last_reload_error"].is_string() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "the failed reload is not in /status");
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed").send().await.status, 403);
    assert!(p.stderr().contains("dney"), "{}", p.stderr());
}

/// `cartguard reload` as the unit's ExecReload runs it; blocking, off the test's runtime.
async fn reload_command(config: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = cartguard();
    c.args(["reload", "--timeout", "10s", "--config"]).arg(config).args(extra);
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

#[tokio::test]
async fn reload_command_refuses_a_broken_config_without_signalling_and_confirms_a_good_one() {
    let p = Running::start().await;
    let good = std::fs::read_to_string(&p.config).unwrap().replace(FEED_OPEN, FEED_DENY);
    assert!(good.contains(FEED_DENY));

    std::fs::write(&p.config, good.replace("others: deny", "others: dney")).unwrap();
    let out = reload_command(&p.config, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken config must fail the reload: {err}");
    assert!(err.contains("not reloading") && err.contains("dney"), "{err}");
    assert_eq!(status_json(p.admin).await["config"]["reloads"], 0, "the guard was signalled anyway");
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed").send().await.status, 200);

    std::fs::write(&p.config, &good).unwrap();
    let out = reload_command(&p.config, &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&sha256_hex(good.as_bytes())), "the reload did not report the new config: {text}");
    assert_eq!(status_json(p.admin).await["config"]["reloads"], 1);
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed").send().await.status, 403);
}

/// A status endpoint that reports no reload until it has been asked `before` times, then
/// one failed reload: the guard's side of a reload that `check` could not foresee.
async fn status_reporting_a_failed_reload(before: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for asked in 0..200 {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let config = if asked < before {
                serde_json::json!({"reloads": 0})
            } else {
                serde_json::json!({"reloads": 1, "last_reload_error": "tls.cert: permission denied"})
            };
            let body = serde_json::json!({"pid": 0, "config": config}).to_string();
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
        }
    });
    addr
}

#[tokio::test]
async fn reload_command_fails_with_the_guards_own_error_when_its_reload_fails() {
    let admin = status_reporting_a_failed_reload(2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cartguard.yaml");
    let yaml = bin_yaml(free_port(), admin.port(), "http://127.0.0.1:9", &dir.path().join("access.log"));
    std::fs::write(&config, yaml).unwrap();
    // A stand-in for the guard's process: it only has to receive the SIGHUP.
    let mut stand_in = Command::new("sleep").arg("30").spawn().unwrap();
    let out = reload_command(&config, &["--pid", &stand_in.id().to_string()]).await;
    let _ = stand_in.kill();
    let _ = stand_in.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed reload must fail the command: {err}");
    assert!(err.contains("reload failed") && err.contains("tls.cert: permission denied"), "{err}");
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_a_rename() {
    let p = Running::start().await;
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed/before-rotate").send().await.status, 200);
    file_until(&p.log_path(), |t| t.contains("/feed/before-rotate")).await;
    let rotated = p.dir.path().join("access.log.1");
    std::fs::rename(p.log_path(), &rotated).unwrap();
    p.signal("USR1");
    file_until(&p.log_path(), |_| true).await;
    assert_eq!(client_from("127.0.0.3").get(p.addr, "/feed/after-rotate").send().await.status, 200);
    let fresh = file_until(&p.log_path(), |t| t.contains("/feed/after-rotate")).await;
    assert!(!fresh.contains("/feed/before-rotate"), "{fresh}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/feed/before-rotate") && !old.contains("/feed/after-rotate"), "{old}");
    for line in fresh.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[tokio::test]
async fn sigterm_finishes_the_slow_request_in_flight_and_exits_0() {
    let mut p = Running::start().await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { client_from("127.0.0.3").get(addr, "/slow/1500").send().await });
    let mut arrived = false;
    for _ in 0..200 {
        if p.upstream.count() >= 1 {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(arrived, "the slow request never reached the upstream");
    p.signal("TERM");
    let r = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("slow request hung").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upstream ok");
    let status = p.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    let log = std::fs::read_to_string(p.log_path()).unwrap();
    let rec: Value = serde_json::from_str(log.lines().last().expect("no access record")).unwrap();
    assert_eq!((rec["path"].as_str(), rec["status"].as_u64()), (Some("/slow/1500"), Some(200)), "{log}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after exit");
}

#[test]
fn startup_with_the_port_in_use_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("cartguard.yaml");
    let yaml = bin_yaml(port, free_port(), &format!("http://127.0.0.1:{}", free_port()), &dir.path().join("a.log"));
    std::fs::write(&config, yaml).unwrap();
    let out = cartguard_service().args(["run", "--config"]).arg(&config).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("already in use")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn a_taken_status_port_is_a_typed_listen_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let yaml = bin_yaml(0, admin.port(), "http://127.0.0.1:9", &dir.path().join("a.log"));
    let config = cartguard::config::Config::from_yaml(&yaml, &dir.path().join("cartguard.yaml")).unwrap();
    match cartguard::Guard::start(config).await {
        Err(cartguard::StartError::Listen { key, addr, reason: cartguard::ListenError::InUse }) => {
            assert_eq!((key.as_str(), addr), ("status.listen", admin));
        }
        Err(other) => panic!("expected a port-in-use error on status.listen, got {other:?}"),
        Ok(_) => panic!("started on a port that is taken"),
    }
    drop(taken);
}

#[test]
fn startup_with_an_invalid_config_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cartguard.yaml");
    let yaml = bin_yaml(free_port(), free_port(), "http://127.0.0.1:9", &dir.path().join("a.log")).replacen(
        "allow: [integration-management]",
        "alow: [integration-management]",
        1,
    );
    let line = yaml.lines().position(|l| l.contains("alow:")).unwrap() + 1;
    std::fs::write(&config, yaml).unwrap();
    let out = cartguard_service().args(["run", "--config"]).arg(&config).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let prefix = format!("{}:{line}:", config.display());
    let hits: Vec<&str> = stderr.lines().filter(|l| l.contains(&prefix)).collect();
    assert_eq!(hits.len(), 1, "{stderr}");
    let col = hits[0].split(&prefix).nth(1).unwrap().split(':').next().unwrap();
    assert!(col.parse::<u32>().is_ok(), "no column in {:?}", hits[0]);
    assert!(hits[0].contains("alow"), "{stderr}");
    assert!(!std::fs::exists(dir.path().join("a.log")).unwrap_or(false), "nothing should start");
}
