//! Floods: one address holding every connection, repeated and concurrent logins.
//! The allowlisted client (127.0.0.1 here) must still be answered, and what was
//! refused or shed must show in /status and /metrics.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::common::*;

const FLOOD: &str = "127.0.0.2";
const ALLOWLISTED: &str = "127.0.0.1";

/// 127.0.0.1 is the allow group; everyone else logs in.
const RULES: &str = r#"
groups:
  integration: ["127.0.0.1/32"]
users:
  inline:
    alice: "$ALICE_HASH"
auth:
  max_failures: 3
rules:
  - name: site
    path_prefix: /
    allow: [integration]
    others: auth
"#;

async fn guard_with_limits(limits: &str) -> TestGuard {
    TestGuard::start_with(GuardOptions { body: RULES.into(), limits: limits.into(), ..Default::default() }).await
}

/// Opens `n` connections from `source` that send nothing (bounded: n connects).
async fn idle_connections(source: &str, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let source: IpAddr = source.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(connect_from(source, addr).await);
    }
    held
}

/// Polls /status (at most 10 s) until `done` holds for its `overload` section.
async fn overload_until(admin: SocketAddr, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = status_json(admin).await["overload"].clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened; /status overload: {last:#}");
}

async fn allowlisted_answer_time(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(1), client_from(ALLOWLISTED).get(addr, "/orders").send())
        .await
        .expect("the allowlisted client got no answer within 1 s while another address held the connections");
    assert_eq!(reply.status, 200);
    started.elapsed()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlisted_client_is_answered_while_idle_connections_fill_the_guard() {
    // The flood may hold every ordinary slot (no per-address cap in the way).
    let g = guard_with_limits(
        "  max_connections: 200\n  max_connections_per_address: 1000\n  header_timeout: 60s\n  idle_timeout: 60s\n",
    )
    .await;
    let flood = idle_connections(FLOOD, g.addr(), 300).await;
    // 175 ordinary slots (200 minus the default reserve of 200/8): the rest shed the idlest.
    let seen = overload_until(g.admin(), "admitting the whole flood", |o| {
        o["ordinary_connections"].as_u64().unwrap_or(0) + o["connections_shed_idle"].as_u64().unwrap_or(0) >= 300
    })
    .await;
    assert_eq!(seen["ordinary_connections"], 175, "{seen:#}");
    let took = allowlisted_answer_time(g.addr()).await;
    eprintln!("allowlisted answer with 300 idle flood connections open: {took:?}");
    // Another ordinary client also gets in, by shedding an idle flood connection.
    let reply = client_from("127.0.0.3").get(g.addr(), "/").basic("alice", ALICE).send().await;
    assert_eq!(reply.status, 200);
    let m = admin_get(g.admin(), "/metrics", "text/plain").await.1;
    let shed = metric(&m, "cartguard_connections_shed_total{reason=\"idle\"}").unwrap();
    assert!(shed >= 126.0, "{shed} shed\n{m}");
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_its_share_at_the_default_limits() {
    let g = guard_with_limits("  header_timeout: 60s\n").await;
    // 5,000 connections where the open-file limit allows (each needs two descriptors here).
    let flood_size = 5000.min(open_file_limit().saturating_sub(600) / 2);
    assert!(flood_size > 300, "open-file limit too low for this test: {}", open_file_limit());
    let flood = idle_connections(FLOOD, g.addr(), flood_size).await;
    let refused = (flood_size - 256) as u64;
    let seen = overload_until(g.admin(), "refusing the flood beyond 256", |o| {
        o["connections_refused"]["per_address_limit"].as_u64() == Some(refused)
    })
    .await;
    assert_eq!(seen["ordinary_connections"], 256, "{seen:#}");
    let took = allowlisted_answer_time(g.addr()).await;
    eprintln!("allowlisted answer with {flood_size} flood connections tried: {took:?}");
    let m = admin_get(g.admin(), "/metrics", "text/plain").await.1;
    assert_eq!(
        metric(&m, "cartguard_connections_refused_total{reason=\"per_address_limit\"}"),
        Some(refused as f64),
        "{m}"
    );
    drop(flood);
}

/// The soft RLIMIT_NOFILE of this process, from /proc (1024 if unreadable).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

#[tokio::test]
async fn an_exactly_repeated_wrong_password_is_not_rehashed_but_still_counts_toward_a_ban() {
    let g = guard_with_limits("").await;
    let client = client_from("127.0.0.4");
    for _ in 0..3 {
        let reply = client.get(g.addr(), "/").basic("alice", "guess").send().await;
        assert_eq!(reply.status, 401);
    }
    let o = status_json(g.admin()).await["overload"].clone();
    assert_eq!(o["verifications_run"], 1, "{o:#}");
    assert_eq!(o["verifications_cached"], 2, "{o:#}");
    // Three failures ban the address even though only one cost a bcrypt.
    let reply = client.get(g.addr(), "/").basic("alice", ALICE).send().await;
    assert_eq!(reply.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_logins_of_one_user_share_one_verification() {
    let g = guard_with_limits("").await;
    let addr = g.addr();
    let logins: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move { client_from("127.0.0.5").get(addr, "/").basic("alice", ALICE).send().await })
        })
        .collect();
    for login in logins {
        assert_eq!(login.await.unwrap().status, 200);
    }
    let o = status_json(g.admin()).await["overload"].clone();
    assert_eq!(o["verifications_run"], 1, "{o:#}");
    assert_eq!(o["verifications_joined"].as_u64().unwrap() + o["verifications_cached"].as_u64().unwrap(), 19, "{o:#}");
}

#[tokio::test]
async fn a_login_waiting_for_its_verification_is_not_cut_as_idle() {
    // Cost 12 (slower than idle_timeout here) on purpose: the wait is the guard's, not the client's.
    let slow = tokio::task::spawn_blocking(|| bcrypt::hash("slow-pass", 12).unwrap()).await.unwrap();
    let body =
        RULES.replace("    alice: \"$ALICE_HASH\"\n", &format!("    alice: \"$ALICE_HASH\"\n    slow: \"{slow}\"\n"));
    let g = TestGuard::start_with(GuardOptions { body, limits: "  idle_timeout: 50ms\n".into(), ..Default::default() })
        .await;
    let reply = client_from("127.0.0.6").get(g.addr(), "/").basic("slow", "slow-pass").send().await;
    assert_eq!(reply.status, 200);
}
