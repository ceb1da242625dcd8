//! Automatic HTTPS against a real ACME CA (pebble, on loopback): first issuance
//! by TLS-ALPN-01 and by HTTP-01, renewal of short-lived certificates without
//! dropping open connections, a CA that is down at start, and a restart that
//! reuses the stored account and certificate. Pebble resolves every test name
//! to 127.0.0.1 and validates against the guard's own listeners.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::*;
use crate::pebble::{free_port, Pebble, Targets};
use crate::tls::{date_in_days, peer_leaf, provider, try_tls_connect, AcceptAny};

const NAME: &str = "shop.cartguard.test";

/// One `acme:` listener entry for GuardOptions.listeners.
fn acme_listener(tls_port: u16, directory: &str, ca: &Path, state: &Path, challenge: &str, names: &[&str]) -> String {
    format!(
        "  - addr: \"127.0.0.1:{tls_port}\"\n    acme:\n      domains: [{}]\n      email: owner@cartguard.test\n      directory: \"{directory}\"\n      ca: \"{}\"\n      state_dir: \"{}\"\n      challenges: [{challenge}]\n      retry_backoff: 1s\n",
        names.join(", "),
        ca.display(),
        state.display()
    )
}

async fn guard_with(listeners: String) -> TestGuard {
    TestGuard::start_with(GuardOptions { listeners, ..Default::default() }).await
}

/// Polls /status until the first ACME entry satisfies `done` (60 s at most).
async fn wait_acme(g: &TestGuard, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = status_json(g.admin()).await;
        let entry = doc["acme"][0].clone();
        if done(&entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "ACME never got to: {what}; last status entry: {entry:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn issued(entry: &serde_json::Value) -> bool {
    entry["issuer"].as_str().is_some_and(|i| i.contains("Pebble"))
}

/// The leaf the guard presents for `name`, without verifying it.
async fn served_leaf(addr: SocketAddr, name: &str) -> std::io::Result<CertificateDer<'static>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(peer_leaf(&try_tls_connect("127.0.0.2", addr, cfg, name).await?))
}

/// A verified HTTPS connection to the guard as `name`, trusting only pebble's root.
async fn verified(addr: SocketAddr, name: &str, root: &CertificateDer<'static>) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    try_tls_connect("127.0.0.2", addr, cfg, name)
        .await
        .unwrap_or_else(|e| panic!("HTTPS as {name} with pebble's root failed: {e}"))
}

/// One keep-alive GET of the open /feed rule over an established TLS connection.
async fn get_feed(tls: &mut TlsStream<TcpStream>, name: &str) -> u16 {
    let req = format!("GET /feed HTTP/1.1\r\nHost: {name}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = parse_reply(&buf) {
            let len = r.header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            if r.body.len() >= len {
                return r.status;
            }
        }
        assert!(Instant::now() < deadline, "no full response: {:?}", String::from_utf8_lossy(&buf));
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk)).await.expect("read timed out");
        let n = n.expect("read");
        assert!(n > 0, "connection closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn stored_leaf(state: &Path, stem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(state.join(format!("{stem}.crt")))
        .expect("stored cert")
        .next()
        .expect("one")
        .expect("PEM")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn acme_issues_by_tls_alpn_01_and_serves_https_with_the_certificate() {
    if require_tool("pebble").is_none() {
        return;
    }
    let tls_port = free_port();
    let pebble = Pebble::start(&Targets { http_port: free_port(), tls_port }, None);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("acme");
    let g =
        guard_with(acme_listener(tls_port, &pebble.directory(), &pebble.ca, &state_dir, "tls-alpn-01", &[NAME])).await;
    let entry = wait_acme(&g, "a certificate from pebble", issued).await;
    assert_eq!(entry["name"], NAME);
    assert!(entry["last_error"].is_null(), "{entry:#}");
    let root = pebble.issuing_root().await;
    let mut tls = verified(g.addr(), NAME, &root).await;
    assert_eq!(get_feed(&mut tls, NAME).await, 200);
    assert_eq!(g.upstream.last().target, "/feed");
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&state_dir.join(format!("{NAME}.key"))), 0o600);
    assert_eq!(mode(&state_dir.join("account.json")), 0o600);
    let (_, metrics) = admin_get(g.admin(), "/metrics", "text/plain").await;
    let expiry = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("cartguard_acme_certificate_expiry_timestamp_seconds{{name=\"{NAME}\"}} "))
        })
        .unwrap_or_else(|| panic!("no expiry metric:\n{metrics}"));
    assert!(expiry.parse::<i64>().unwrap() > 0, "{expiry}");
    assert!(
        metrics.contains(&format!("cartguard_acme_attempts_total{{name=\"{NAME}\",result=\"success\"}} 1")),
        "{metrics}"
    );
    g.shutdown().await;
}

#[tokio::test]
async fn acme_issues_by_http_01_on_the_plain_listener_before_any_rule() {
    if require_tool("pebble").is_none() {
        return;
    }
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(&Targets { http_port, tls_port }, None);
    let state = tempfile::tempdir().unwrap();
    let listeners = format!("  - addr: \"127.0.0.1:{http_port}\"\n")
        + &acme_listener(tls_port, &pebble.directory(), &pebble.ca, state.path(), "http-01", &[NAME]);
    let g = guard_with(listeners).await;
    wait_acme(&g, "a certificate from pebble", issued).await;
    let root = pebble.issuing_root().await;
    let mut tls = verified(g.guard().addrs[1], NAME, &root).await;
    assert_eq!(get_feed(&mut tls, NAME).await, 200);
    // The site rule asks everyone for a login: pebble got its answer from the guard, not the rules.
    let lines = g.log_lines(1).await;
    let answered = lines.iter().find(|r| r["decision"] == "acme_challenge").expect("an acme_challenge record");
    assert_eq!(answered["status"], 200, "{answered}");
    assert!(answered["path"].as_str().unwrap().starts_with("/.well-known/acme-challenge/"), "{answered}");
    // Nothing else on that path: an unknown token is 404 from the guard, never forwarded.
    let r = client_from("127.0.0.2").get(g.addr(), "/.well-known/acme-challenge/not-a-token").send().await;
    assert_eq!(r.status, 404);
    assert!(g.upstream.requests().iter().all(|r| !r.target.starts_with("/.well-known/")), "challenge path forwarded");
    g.shutdown().await;
}

#[tokio::test]
async fn acme_renews_short_lived_certificates_without_dropping_open_connections() {
    if require_tool("pebble").is_none() {
        return;
    }
    let tls_port = free_port();
    let pebble = Pebble::start(&Targets { http_port: free_port(), tls_port }, Some(Duration::from_secs(15)));
    let state = tempfile::tempdir().unwrap();
    let g = guard_with(acme_listener(tls_port, &pebble.directory(), &pebble.ca, state.path(), "tls-alpn-01", &[NAME]))
        .await;
    let first = wait_acme(&g, "a certificate from pebble", issued).await;
    let root = pebble.issuing_root().await;
    let mut open = verified(g.addr(), NAME, &root).await;
    assert_eq!(get_feed(&mut open, NAME).await, 200);
    let first_leaf = peer_leaf(&open);
    // Renewal is due when a third of the 15 s lifetime remains.
    let renewed = wait_acme(&g, "a renewal", |e| e["not_after"] != first["not_after"] && issued(e)).await;
    assert!(renewed["last_error"].is_null(), "{renewed:#}");
    let fresh = verified(g.addr(), NAME, &root).await;
    assert_ne!(peer_leaf(&fresh), first_leaf, "new handshakes get the renewed certificate");
    assert_eq!(get_feed(&mut open, NAME).await, 200, "the connection opened before the renewal still works");
    g.shutdown().await;
}

/// A certificate for NAME from a CA that is not pebble, 60 days old with `days_left` to go.
fn write_old_certificate(state: &Path, days_left: i64) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(vec![NAME.to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Old CA");
    let (y, m, d) = date_in_days(-60);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date_in_days(days_left);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join(format!("{NAME}.crt")), cert.pem()).unwrap();
    std::fs::write(state.join(format!("{NAME}.key")), key.serialize_pem()).unwrap();
    cert.der().clone()
}

#[tokio::test]
async fn acme_with_the_ca_down_serves_the_stored_certificate_and_retries_until_it_is_back() {
    if require_tool("pebble").is_none() {
        return;
    }
    let tls_port = free_port();
    let state = tempfile::tempdir().unwrap();
    let old = write_old_certificate(state.path(), 10);
    let mut pebble = Pebble::prepare(&Targets { http_port: free_port(), tls_port }, None);
    let g = guard_with(acme_listener(tls_port, &pebble.directory(), &pebble.ca, state.path(), "tls-alpn-01", &[NAME]))
        .await;
    assert_eq!(served_leaf(g.addr(), NAME).await.expect("handshake"), old, "the stored certificate is served");
    let entry = wait_acme(&g, "two failed attempts", |e| e["failures"].as_u64() >= Some(2)).await;
    assert!(entry["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{entry:#}");
    assert_eq!(entry["issuer"], "Old CA");
    assert_eq!(served_leaf(g.addr(), NAME).await.expect("handshake"), old, "still served while the CA is down");
    // The CA comes up; a retry gets the certificate, with no restart.
    pebble.run();
    wait_acme(&g, "a certificate from pebble", issued).await;
    let root = pebble.issuing_root().await;
    let mut tls = verified(g.addr(), NAME, &root).await;
    assert_eq!(get_feed(&mut tls, NAME).await, 200);
    g.shutdown().await;
}

#[tokio::test]
async fn acme_restart_reuses_the_stored_account_and_certificate() {
    if require_tool("pebble").is_none() {
        return;
    }
    let tls_port = free_port();
    let pebble = Pebble::start(&Targets { http_port: free_port(), tls_port }, None);
    let state = tempfile::tempdir().unwrap();
    let listeners =
        |names: &[&str]| acme_listener(tls_port, &pebble.directory(), &pebble.ca, state.path(), "tls-alpn-01", names);
    let g = guard_with(listeners(&[NAME])).await;
    wait_acme(&g, "a certificate from pebble", issued).await;
    g.shutdown().await;
    let account = std::fs::read(state.path().join("account.json")).unwrap();
    let stored = stored_leaf(state.path(), NAME);

    let g = guard_with(listeners(&[NAME])).await;
    assert_eq!(served_leaf(g.addr(), NAME).await.expect("handshake"), stored, "the stored certificate is served");
    let entry = status_json(g.admin()).await["acme"][0].clone();
    assert!(issued(&entry), "{entry:#}");
    assert!(entry["last_attempt_at"].is_null(), "no new order for a valid certificate: {entry:#}");
    g.shutdown().await;

    // A new name needs a new certificate, ordered with the stored account.
    let www = format!("www.{NAME}");
    let g = guard_with(listeners(&[NAME, &www])).await;
    wait_acme(&g, "a certificate for both names", |e| issued(e) && !e["last_renewed_at"].is_null()).await;
    let root = pebble.issuing_root().await;
    let mut tls = verified(g.addr(), &www, &root).await;
    assert_eq!(get_feed(&mut tls, &www).await, 200);
    assert_eq!(std::fs::read(state.path().join("account.json")).unwrap(), account, "the account was reused");
    g.shutdown().await;
}

#[tokio::test]
async fn acme_listener_without_a_certificate_refuses_handshakes_and_reports_why() {
    let (ca_port, tls_port) = (free_port(), free_port());
    let state = tempfile::tempdir().unwrap();
    // A root the guard would trust, for a CA that is not running.
    let ca = state.path().join("ca.pem");
    std::fs::write(&ca, rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap().cert.pem()).unwrap();
    let directory = format!("https://127.0.0.1:{ca_port}/dir");
    let listeners = "  - addr: \"127.0.0.1:0\"\n".to_string()
        + &acme_listener(tls_port, &directory, &ca, &state.path().join("acme"), "tls-alpn-01", &[NAME]);
    let g = guard_with(listeners).await;
    assert!(served_leaf(g.guard().addrs[1], NAME).await.is_err(), "no certificate yet: the handshake fails");
    // The plain listener serves on regardless.
    let r = client_from("127.0.0.2").get(g.addr(), "/feed").send().await;
    assert_eq!(r.status, 200);
    let entry = wait_acme(&g, "a failed attempt", |e| e["failures"].as_u64() >= Some(1)).await;
    assert!(entry["last_error"].as_str().is_some_and(|e| e.contains(&directory)), "{entry:#}");
    assert!(entry["issuer"].is_null());
    assert!(entry["next_attempt_at"].is_string(), "a retry is scheduled: {entry:#}");
    let (code, body) = admin_get(g.admin(), "/healthz", "text/plain").await;
    assert_eq!(code, 503);
    assert!(body.contains(&format!("no ACME certificate yet for {NAME}")), "{body}");
    g.shutdown().await;
}
