//! The monitoring pack in monitoring/, checked with the real tools a shop owner runs:
//! promtool (metrics page, alert rules and their unit tests), fail2ban-regex and goaccess
//! (against logs the guard wrote here), and the Grafana dashboard's queries against /metrics.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn pack(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring").join(rel)
}

fn output(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

async fn metrics_after_traffic() -> String {
    let g = TestGuard::start().await;
    assert_eq!(integration(&g, "/wp-json/wc/v3/orders").send().await.status, 200);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "wrong").send().await.status, 401);
    g.log_lines(2).await;
    let (code, body) = admin_get(g.admin(), "/metrics", "text/plain").await;
    assert_eq!(code, 200);
    body
}

#[tokio::test]
async fn promtool_accepts_the_metrics_page() {
    let Some(promtool) = require_tool("promtool") else { return };
    let body = metrics_after_traffic().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &body).unwrap();
    let (ok, out) =
        output(Command::new("sh").arg("-c").arg(format!("{} check metrics < {}", promtool.display(), file.display())));
    assert!(ok, "promtool check metrics:\n{out}\n{body}");
    assert!(!out.contains("problem"), "promtool lint findings:\n{out}");
}

#[test]
fn alert_rules_are_valid_and_fire_as_their_unit_tests_say() {
    let Some(promtool) = require_tool("promtool") else { return };
    let (ok, out) =
        output(Command::new(&promtool).args(["check", "rules"]).arg(pack("prometheus/cartguard.rules.yml")));
    assert!(ok && out.contains("5 rules found"), "{out}");
    let (ok, out) = output(Command::new(&promtool).current_dir(pack("prometheus")).args([
        "test",
        "rules",
        "cartguard.rules.test.yml",
    ]));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Every metric the dashboard and the alert rules query is one the guard exports.
#[tokio::test]
async fn dashboard_and_rules_query_only_metrics_the_guard_exports() {
    let body = metrics_after_traffic().await;
    let exported: Vec<&str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pack("grafana/cartguard-dashboard.json")).unwrap()).unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    queries.push(std::fs::read_to_string(pack("prometheus/cartguard.rules.yml")).unwrap());
    let mut checked = 0;
    for q in &queries {
        for name in metric_names(q) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(f)))
                .unwrap_or(&name);
            assert!(exported.contains(&family), "{name} is queried but not exported:\n{q}");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} metric references found");
}

fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (rest.starts_with("cartguard_") || rest.starts_with("process_")) {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Three wrong passwords from one address, a first visit without credentials (not a
/// failure), a good login and the integration: the filter matches the three failures only.
async fn log_with_failures(format: &'static str) -> TestGuard {
    let g = TestGuard::start_with(GuardOptions { log_format: format, ..Default::default() }).await;
    for _ in 0..3 {
        assert_eq!(client_from("127.0.0.3").get(g.addr(), "/shop").basic("alice", "guess").send().await.status, 401);
    }
    assert_eq!(client_from("127.0.0.4").get(g.addr(), "/shop").send().await.status, 401);
    assert_eq!(client_from("127.0.0.5").get(g.addr(), "/shop").basic("alice", ALICE).send().await.status, 200);
    assert_eq!(integration(&g, "/wp-json/wc/v3/orders").send().await.status, 200);
    g.raw_log_lines(6).await;
    g
}

fn fail2ban(log: &Path, filter: &str) -> String {
    let Some(tool) = require_tool("fail2ban-regex") else { return String::new() };
    let (ok, out) = output(
        Command::new(tool).arg("--print-all-matched").arg(log).arg(pack(&format!("fail2ban/filter.d/{filter}"))),
    );
    assert!(ok, "{out}");
    out
}

#[tokio::test]
async fn fail2ban_filters_match_exactly_the_failed_logins() {
    for (format, filter) in [("combined", "cartguard.conf"), ("json", "cartguard-json.conf")] {
        let g = log_with_failures(format).await;
        let out = fail2ban(&g.log_path(), filter);
        if out.is_empty() {
            return;
        }
        assert!(out.contains("Lines: 6 lines, 0 ignored, 3 matched, 3 missed"), "{format}:\n{out}");
        let matched = out.split("Matched line(s):").nth(1).unwrap_or_default();
        let matched = matched.split("`-").next().unwrap_or_default();
        assert_eq!(matched.matches("127.0.0.3").count(), 6, "{format}:\n{out}");
        assert!(!matched.contains("127.0.0.4") && !matched.contains("127.0.0.5"), "{format}:\n{out}");
    }
}

#[tokio::test]
async fn goaccess_reads_every_line_of_the_combined_log() {
    let Some(goaccess) = require_tool("goaccess") else { return };
    let g = log_with_failures("combined").await;
    let report = g.dir.path().join("report.json");
    let (ok, out) = output(
        Command::new(goaccess)
            .arg(g.log_path())
            .args(["--log-format=COMBINED", "--no-global-config", "-o"])
            .arg(&report),
    );
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["general"]["total_requests"], 6, "{}", r["general"]);
    assert_eq!(r["general"]["valid_requests"], 6, "{}", r["general"]);
    assert_eq!(r["general"]["failed_requests"], 0, "{}", r["general"]);
}
