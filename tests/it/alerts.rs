//! Alerts on loopback: a recording webhook receiver and command sinks writing
//! to temp files, with each event triggered for real (a stopped upstream, a
//! quiet group, a new-address probe, an expiring certificate, a failed reload),
//! then rate limits, retries, timeouts, `cartguard alert test` and group files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::common::*;
use cartguard::alerts::{raise, Alert};

/// A webhook receiver that records every POST body and answers 500 to the first `fail_first`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen = recorded.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let doc = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(doc);
                            seen.len()
                        };
                        let (code, text) = if n <= fail_first { (500, "busy") } else { (200, "ok") };
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/secret-token", self.addr)
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.all().into_iter().filter(|v| v["kind"] == kind).collect()
    }

    /// Waits (bounded, about 10s) for the first alert of `kind`.
    async fn first(&self, kind: &str) -> Value {
        for _ in 0..200 {
            if let Some(v) = self.of_kind(kind).into_iter().next() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {kind} alert arrived; got {:#?}", self.all());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `alerts:` with one webhook sink `hook` plus any extra sink entries.
fn alerts_yaml(hook: &Receiver, extra_sinks: &str) -> String {
    format!(
        "alerts:\n  repeat_after: 1h\n  sinks:\n    - name: hook\n      webhook: \"{}\"\n      timeout: 2s\n      retries: 3\n      backoff: 50ms\n{extra_sinks}",
        hook.url()
    )
}

/// A command sink that appends its stdin and some of its environment to `file`.
fn command_sink(name: &str, file: &Path) -> String {
    format!(
        "    - name: {name}\n      command: [\"/bin/sh\", \"-c\", \"cat >> '{0}'; echo \\\"env kind=$CARTGUARD_ALERT_KIND key=$CARTGUARD_ALERT_KEY\\\" >> '{0}'\"]\n      timeout: 5s\n",
        file.display()
    )
}

async fn guard_with(alerts: &str, o: GuardOptions) -> TestGuard {
    TestGuard::start_with(GuardOptions { body: format!("{}{alerts}", o.body), ..o }).await
}

async fn metrics_text(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics", "text/plain").await.1
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls /status until sink `name` satisfies `cond` (bounded, about 10s).
async fn sink_status(admin: SocketAddr, name: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let s = status_json(admin).await;
        if let Some(sink) = s["alerts"]["sinks"].as_array().and_then(|l| l.iter().find(|v| v["name"] == name)) {
            last = sink.clone();
            if cond(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sink {name} never reached the expected state: {last:#}");
}

/// Waits (bounded) until `path` holds `needle`; returns the text.
async fn file_with(path: &Path, needle: &str) -> String {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never contained {needle:?}: {:?}", path.display(), std::fs::read_to_string(path));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_stopped_upstream_alerts_down_then_recovered_to_the_webhook_and_the_command() {
    let hook = Receiver::start(0).await;
    let out = tempfile::tempdir().unwrap();
    let mailbox = out.path().join("mailbox");
    let port = free_port();
    let g = guard_with(
        &alerts_yaml(&hook, &command_sink("mail", &mailbox)),
        GuardOptions { upstream_url: Some(format!("http://127.0.0.1:{port}")), ..Default::default() },
    )
    .await;
    let down = hook.first("upstream_down").await;
    let authority = format!("127.0.0.1:{port}");
    assert_eq!(down["key"], authority.as_str());
    assert_eq!(down["details"]["upstream"], authority.as_str());
    assert!(down["text"].as_str().unwrap().contains(&format!("upstream {authority} is down")), "{down:#}");
    // The command got the same alert as JSON on stdin and as variables.
    let text = file_with(&mailbox, "env kind=upstream_down").await;
    assert!(text.contains("\"kind\": \"upstream_down\""), "{text}");
    assert!(text.contains(&format!("env kind=upstream_down key={authority}")), "{text}");

    // The cart comes back on its port.
    let _cart = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let back = hook.first("upstream_recovered").await;
    assert_eq!(back["key"], authority.as_str());
    assert_eq!(hook.of_kind("upstream_down").len(), 1, "one down alert while it stayed down");
    file_with(&mailbox, "env kind=upstream_recovered").await;

    let s = sink_status(g.admin(), "hook", |s| s["sent"] == 2).await;
    assert_eq!(s["kind"], "webhook");
    assert_eq!(s["last_answer"], "HTTP 200 ok");
    assert!(s["last_sent_at"].is_string() && s["last_error"].is_null(), "{s:#}");
    // The command's file is written before the command exits and counts as sent.
    sink_status(g.admin(), "mail", |s| s["sent"] == 2).await;
    let status = serde_json::to_string(&status_json(g.admin()).await).unwrap();
    assert!(!status.contains("secret-token"), "the webhook URL is a secret: {status}");
    let m = metrics_text(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_alerts_sent_total{sink=\"hook\",kind=\"upstream_down\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "cartguard_alerts_sent_total{sink=\"mail\",kind=\"upstream_recovered\"}"), Some(1.0), "{m}");
    g.shutdown().await;
}

#[tokio::test]
async fn shedding_connections_raises_one_overload_alert() {
    let hook = Receiver::start(0).await;
    let g = guard_with(
        &alerts_yaml(&hook, ""),
        GuardOptions {
            limits: "  max_connections: 40\n  max_connections_per_address: 1000\n  header_timeout: 60s\n".into(),
            ..Default::default()
        },
    )
    .await;
    // Let the watcher take its baseline before the flood (it ticks once a second).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let flood_from: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(connect_from(flood_from, g.addr()).await);
    }
    let started = hook.first("overload_started").await;
    let text = started["text"].as_str().unwrap_or_default();
    assert!(text.contains("idle connections shed"), "{started:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.of_kind("overload_started").len(), 1, "one alert per episode: {:#?}", hook.all());
    assert!(hook.of_kind("overload_stopped").is_empty(), "still within the calm period");
    drop(held);
    g.shutdown().await;
}

#[tokio::test]
async fn a_quiet_expected_group_alerts_once_and_again_when_it_is_back() {
    let hook = Receiver::start(0).await;
    let g = guard_with(
        &alerts_yaml(&hook, ""),
        GuardOptions {
            status_extra: "  expect:\n    - {group: integration-management, within: 1s}\n".into(),
            ..Default::default()
        },
    )
    .await;
    let quiet = hook.first("group_quiet").await;
    assert_eq!(quiet["key"], "integration-management");
    assert_eq!(quiet["details"]["within_seconds"], "1");
    // Still quiet two checks later: still one alert.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(hook.of_kind("group_quiet").len(), 1);

    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-json/wc/v3/orders")
        .header("X-Forwarded-For", "50.18.194.14")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let back = hook.first("group_recovered").await;
    assert_eq!(back["details"]["client_ip"], "50.18.194.14");
    g.shutdown().await;
}

#[tokio::test]
async fn credentials_from_an_unknown_address_on_an_integration_rule_alert_with_address_and_path() {
    let hook = Receiver::start(0).await;
    let g = guard_with(&alerts_yaml(&hook, ""), GuardOptions::default()).await;
    for _ in 0..3 {
        let r = client_from("127.0.0.5").get(g.addr(), "/wp-json/wc/v3/orders").basic("ck_x", "cs_x").send().await;
        assert_eq!(r.status, 401);
    }
    let a = hook.first("new_integration_address").await;
    assert_eq!(a["details"]["client_ip"], "127.0.0.5");
    assert_eq!(a["details"]["path"], "/wp-json/wc/v3/orders");
    assert_eq!(a["details"]["rule"], "cart-api");
    // A second address is a second alert; the first address stays at one.
    client_from("127.0.0.6").get(g.addr(), "/wp-json/wc/v3/orders").basic("ck_y", "cs_y").send().await;
    for _ in 0..100 {
        if hook.of_kind("new_integration_address").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ips: Vec<Value> = hook.of_kind("new_integration_address").iter().map(|a| a["key"].clone()).collect();
    assert_eq!(ips, ["127.0.0.5", "127.0.0.6"]);
    g.shutdown().await;
}

#[tokio::test]
async fn a_certificate_expiring_within_14_days_alerts_once() {
    let hook = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
    let (y, m, d) = crate::tls::date_in_days(5);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("soon.pem"), dir.path().join("soon.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let listeners = format!(
        "  - addr: \"127.0.0.1:0\"\n    tls: {{cert: \"{}\", key: \"{}\"}}\n",
        cert_path.display(),
        key_path.display()
    );
    let g = guard_with(&alerts_yaml(&hook, ""), GuardOptions { listeners, ..Default::default() }).await;
    let a = hook.first("certificate_expiring").await;
    let days: i64 = a["details"]["days_left"].as_str().unwrap().parse().unwrap();
    assert!((4..=5).contains(&days), "{a:#}");
    assert_eq!(a["details"]["file"], cert_path.display().to_string());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(hook.of_kind("certificate_expiring").len(), 1, "once a day, not once a check");
    g.shutdown().await;
}

#[tokio::test]
async fn failed_reloads_alert_once_per_window_and_the_rest_are_counted_as_suppressed() {
    let hook = Receiver::start(0).await;
    let g = guard_with(&alerts_yaml(&hook, ""), GuardOptions::default()).await;
    g.rewrite_config(|t| t.replace("others: deny", "others: dney"));
    assert!(g.guard().reload().is_err());
    let a = hook.first("reload_failed").await;
    assert!(a["details"]["error"].as_str().unwrap().contains("dney"), "{a:#}");
    assert!(g.guard().reload().is_err());
    assert!(g.guard().reload().is_err());
    let m = metrics_text(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_alerts_suppressed_total{kind=\"reload_failed\"}"), Some(2.0), "{m}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.of_kind("reload_failed").len(), 1);
    assert_eq!(status_json(g.admin()).await["alerts"]["suppressed"], 2);
    g.shutdown().await;
}

#[tokio::test]
async fn a_webhook_answering_500_is_retried_until_it_accepts() {
    let hook = Receiver::start(2).await;
    let g = guard_with(&alerts_yaml(&hook, ""), GuardOptions::default()).await;
    raise(&g.guard().shared, Alert::overload_started("queue full"));
    let s = sink_status(g.admin(), "hook", |s| s["sent"] == 1).await;
    assert_eq!(s["failed"], 0);
    let posts = hook.of_kind("overload_started");
    assert_eq!(posts.len(), 3, "two 500s, then 200: {posts:#?}");
    assert_eq!(posts[0]["details"]["detail"], "queue full");
    let m = metrics_text(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_alerts_sent_total{sink=\"hook\",kind=\"overload_started\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "cartguard_alerts_failed_total{sink=\"hook\",kind=\"overload_started\"}"), Some(0.0), "{m}");
    // The stop is another kind: not rate-limited by the start.
    raise(&g.guard().shared, Alert::overload_stopped("queue drained"));
    hook.first("overload_stopped").await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_after_its_retries_and_shown_in_status() {
    let hook = Receiver::start(usize::MAX).await;
    let alerts = alerts_yaml(&hook, "").replace("retries: 3", "retries: 1");
    let g = guard_with(&alerts, GuardOptions::default()).await;
    raise(&g.guard().shared, Alert::overload_started("queue full"));
    let s = sink_status(g.admin(), "hook", |s| s["failed"] == 1).await;
    assert_eq!(s["sent"], 0);
    let error = s["last_error"].as_str().unwrap();
    assert!(error.contains("HTTP 500 busy") && error.contains("after 2 attempts"), "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.all().len(), 2, "one attempt and one retry, then it stops");
    let m = metrics_text(g.admin()).await;
    assert_eq!(metric(&m, "cartguard_alerts_failed_total{sink=\"hook\",kind=\"overload_started\"}"), Some(1.0), "{m}");
    let (_, html) = admin_get(g.admin(), "/status", "text/html").await;
    assert!(html.contains("Alert sinks") && html.contains("HTTP 500 busy"), "{html}");
    g.shutdown().await;
}

#[tokio::test]
async fn a_command_sink_past_its_timeout_is_killed_and_counted_as_failed() {
    let hook = Receiver::start(0).await;
    let out = tempfile::tempdir().unwrap();
    let pid_file = out.path().join("pid");
    let slow = format!(
        "    - name: slow\n      command: [\"/bin/sh\", \"-c\", \"echo $$ > '{}'; exec sleep 30\"]\n      timeout: 300ms\n",
        pid_file.display()
    );
    let g = guard_with(&alerts_yaml(&hook, &slow), GuardOptions::default()).await;
    raise(&g.guard().shared, Alert::overload_started("queue full"));
    let s = sink_status(g.admin(), "slow", |s| s["failed"] == 1).await;
    assert!(s["last_error"].as_str().unwrap().contains("no answer within 300ms"), "{s:#}");
    let pid = file_with(&pid_file, "\n").await.trim().to_string();
    let mut gone = false;
    for _ in 0..100 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting to be reaped: either way it no longer runs.
        if state.is_empty() || state.contains(") Z ") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the timed-out command {pid} still runs");
    // The other sink is not held up by the slow one.
    hook.first("overload_started").await;
    g.shutdown().await;
}

#[tokio::test]
async fn alert_test_prints_each_sinks_answer_and_fails_when_one_fails() {
    let hook = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cartguard.yaml");
    let base = "listen:\n  - addr: \"127.0.0.1:0\"\nupstream:\n  url: \"http://127.0.0.1:9\"\nrules:\n  - name: site\n    path_prefix: /\n    others: deny\n";
    let broken = "    - name: broken\n      command: [\"/bin/false\"]\n";
    let run = |config: &Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cartguard"))
            .args(["alert", "test", "--config"])
            .arg(config)
            .output()
    };

    std::fs::write(&config, format!("{base}{}", alerts_yaml(&hook, broken))).unwrap();
    let out = run(&config).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("hook (webhook): ok: HTTP 200 ok"), "{stdout}");
    assert!(stdout.contains("broken (command): FAILED: exit status: 1"), "{stdout}");
    assert_eq!(hook.of_kind("test").len(), 1);

    std::fs::write(&config, format!("{base}{}", alerts_yaml(&hook, ""))).unwrap();
    let out = run(&config).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(hook.of_kind("test").len(), 2);
}

const FILE_GROUP_RULES: &str = "rules:\n  - name: site\n    path_prefix: /\n    allow: [partners]\n    others: deny\n";

#[tokio::test]
async fn a_group_file_is_reread_when_it_changes_and_a_bad_file_keeps_the_last_good_list() {
    let hook = Receiver::start(0).await;
    let files = tempfile::tempdir().unwrap();
    let list = files.path().join("partners.txt");
    std::fs::write(&list, "# partners, one a line\n127.0.0.2   # shop A\n").unwrap();
    let body = format!("groups:\n  partners: {{file: \"{}\"}}\n{FILE_GROUP_RULES}", list.display());
    let g = guard_with(&alerts_yaml(&hook, ""), GuardOptions { body, ..Default::default() }).await;
    let status = |ip: &'static str| {
        let addr = g.addr();
        async move { client_from(ip).get(addr, "/").send().await.status }
    };
    assert_eq!(status("127.0.0.2").await, 200);
    assert_eq!(status("127.0.0.3").await, 403);

    std::fs::write(&list, "127.0.0.3/32\n").unwrap();
    let mut switched = false;
    for _ in 0..100 {
        if status("127.0.0.3").await == 200 {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "the changed file was not picked up");
    assert_eq!(status("127.0.0.2").await, 403);

    std::fs::write(&list, "127.0.0.3\n\n  not-an-address\n").unwrap();
    let a = hook.first("reload_failed").await;
    let error = a["details"]["error"].as_str().unwrap();
    assert!(error.contains("partners.txt:3:3: groups.partners.file") && error.contains("not-an-address"), "{error}");
    assert_eq!(status("127.0.0.3").await, 200, "the last good list keeps serving");
    assert!(status_json(g.admin()).await["config"]["last_reload_error"].is_string());
    g.shutdown().await;
}
