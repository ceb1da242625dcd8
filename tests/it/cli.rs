//! The command line: check, explain, hash-password and status, run as the real binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::*;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(args: &[&str]) -> Output {
    cartguard().args(args).stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check(path: &Path) -> Output {
    cartguard().arg("check").arg("--config").arg(path).stdin(Stdio::null()).output().unwrap()
}

/// Stand-ins for the files the shipped configs name under /etc.
struct Fixtures {
    dir: tempfile::TempDir,
    htpasswd: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn fixtures() -> Fixtures {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{}\n", hash("alice-pass"))).unwrap();
    let names = vec!["shop.example.com".to_string(), "staging.shop.example.com".to_string()];
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert_path, key_path) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    Fixtures { dir, htpasswd, cert: cert_path, key: key_path }
}

/// The part of a YAML line before its comment (a `#` at the start or after a space).
fn code_part(line: &str) -> &str {
    let bytes = line.as_bytes();
    let cut = (0..bytes.len()).find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()));
    &line[..cut.unwrap_or(line.len())]
}

/// Points every absolute /etc path outside comments at a fixture, by what the file is.
fn with_fixture_paths(text: &str, fx: &Fixtures) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let code = code_part(line);
        let mut new_code = String::new();
        let mut rest = code;
        while let Some(i) = rest.find("/etc/") {
            new_code.push_str(&rest[..i]);
            let end = rest[i..].find(|c: char| c.is_whitespace() || ",}]\"'".contains(c)).map_or(rest.len(), |e| i + e);
            let path = &rest[i..end];
            let fixture = if path.contains("htpasswd") {
                &fx.htpasswd
            } else if path.contains("key") {
                &fx.key
            } else {
                &fx.cert
            };
            new_code.push_str(&fixture.display().to_string());
            rest = &rest[end..];
        }
        new_code.push_str(rest);
        out.push_str(&new_code);
        out.push_str(&line[code.len()..]);
        out.push('\n');
    }
    out
}

#[test]
fn check_passes_on_the_shipped_config() {
    let o = check(&repo("config/cartguard.yaml"));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("config OK"), "{out}");
    assert!(!stderr(&o).contains("error"), "{}", stderr(&o));
}

#[test]
fn check_passes_on_every_example_config() {
    let fx = fixtures();
    let mut checked = Vec::new();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(repo("config/examples")).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for example in entries {
        if !matches!(example.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        let name = example.file_name().unwrap().to_string_lossy().into_owned();
        let text = with_fixture_paths(&std::fs::read_to_string(&example).unwrap(), &fx);
        for line in text.lines() {
            assert!(!code_part(line).contains("/etc/"), "{name}: a file path the test cannot stand in for: {line}");
        }
        let path = fx.dir.path().join(&name);
        std::fs::write(&path, &text).unwrap();
        let o = check(&path);
        assert_eq!(o.status.code(), Some(0), "{name}:\n{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("config OK"), "{name}: {}", stdout(&o));
        assert!(!stderr(&o).contains("error"), "{name}: {}", stderr(&o));
        checked.push(name);
    }
    assert!(checked.len() >= 6, "examples checked: {checked:?}");
}

#[test]
fn check_prints_groups_rules_in_order_and_users() {
    let fx = fixtures();
    let text = with_fixture_paths(&std::fs::read_to_string(repo("config/examples/staging-lock.yaml")).unwrap(), &fx);
    let path = fx.dir.path().join("staging.yaml");
    std::fs::write(&path, text).unwrap();
    let o = check(&path);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("integration-management") && out.contains("50.18.194.14/32"), "{out}");
    assert!(out.contains("office") && out.contains("198.51.100.0/24"), "{out}");
    let pos = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} missing:\n{out}"));
    assert!(pos("1. admin-ajax") < pos("2. wp-admin") && pos("2. wp-admin") < pos("3. site"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("users") && l.trim_end().ends_with(" 1")), "{out}");
}

#[test]
fn check_fails_on_a_typo_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.yaml");
    let text = std::fs::read_to_string(repo("config/cartguard.yaml")).unwrap().replacen(
        "    others: auth",
        "    othrs: auth",
        1,
    );
    let line = text.lines().position(|l| l.contains("othrs:")).unwrap() + 1;
    std::fs::write(&path, &text).unwrap();
    let o = check(&path);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("othrs") && err.contains(&format!("{}:{line}:", path.display())), "{err}");
    assert!(!stdout(&o).contains("config OK"));
}

#[test]
fn check_fails_on_trusting_the_whole_internet() {
    let dir = tempfile::tempdir().unwrap();
    for (cidr, any) in [("0.0.0.0/0", "0.0.0.0/0"), ("::/0", "::/0")] {
        let path = dir.path().join("trust-all.yaml");
        let text = std::fs::read_to_string(repo("config/cartguard.yaml")).unwrap().replacen(
            "trusted_proxies: []",
            &format!("trusted_proxies: [\"10.0.0.1/32\", \"{cidr}\"]"),
            1,
        );
        let line = text.lines().position(|l| l.contains(cidr)).unwrap() + 1;
        std::fs::write(&path, &text).unwrap();
        let o = check(&path);
        assert_eq!(o.status.code(), Some(1), "{cidr}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains("client_ip.trusted_proxies") && err.contains(any), "{err}");
        assert!(err.contains(&format!(":{line}:")), "{cidr}: no line {line}: {err}");
    }
}

#[test]
fn explain_admits_the_integration_and_names_group_and_rule_on_one_screen() {
    let config = repo("config/cartguard.yaml");
    let o =
        run(&["explain", "--config", config.to_str().unwrap(), "--ip", "50.18.194.14", "GET", "/wp-json/wc/v3/orders"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let decision = out.split("\ndecision").nth(1).unwrap_or_else(|| panic!("no decision section:\n{out}"));
    assert!(decision.contains("allow"), "{out}");
    assert!(decision.contains("integration-management") && decision.contains("cart-api"), "{out}");
    assert!(out.lines().count() < 60, "{} lines:\n{out}", out.lines().count());

    // The other built-in address, by the query form.
    let o = run(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--ip",
        "54.241.171.180",
        "GET",
        "/?rest_route=/wc/v3/orders",
    ]);
    let out = stdout(&o);
    assert!(out.contains("allow:") && out.contains("\"cart-api\"") && out.contains("matched (query"), "{out}");

    // Anyone else: a login.
    let o =
        run(&["explain", "--config", config.to_str().unwrap(), "--ip", "198.51.100.1", "GET", "/wp-json/wc/v3/orders"]);
    let out = stdout(&o);
    assert!(out.contains("401") && !out.contains("allow:"), "{out}");
}

fn trusting_config(dir: &Path) -> PathBuf {
    let path = dir.join("proxy.yaml");
    let text = std::fs::read_to_string(repo("config/cartguard.yaml")).unwrap().replacen(
        "trusted_proxies: []",
        "trusted_proxies: [\"127.0.0.100/32\"]",
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn explain_believes_the_header_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let config = trusting_config(dir.path());
    let ask = |peer: &str| {
        let o = run(&[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--ip",
            "50.18.194.14",
            "--peer",
            peer,
            "-H",
            "X-Forwarded-For: 50.18.194.14",
            "GET",
            "/wp-json/wc/v3/orders",
        ]);
        (o.status.code(), stdout(&o))
    };
    let (code, trusted) = ask("127.0.0.100");
    assert_eq!(code, Some(0), "forwarded: exit 0\n{trusted}");
    assert!(trusted.contains("127.0.0.100 is a trusted proxy"), "{trusted}");
    assert!(trusted.contains("allow: 50.18.194.14 is in group \"integration-management\""), "{trusted}");
    let (code, untrusted) = ask("127.0.0.101");
    assert_eq!(code, Some(1), "answered by the guard: exit 1\n{untrusted}");
    assert_eq!(untrusted.matches("client = ").count(), 1, "{untrusted}");
    assert!(untrusted.contains("header is ignored"), "{untrusted}");
    assert!(untrusted.contains("client = 127.0.0.101"), "{untrusted}");
    assert!(untrusted.contains("401") && !untrusted.contains("allow:"), "{untrusted}");
}

#[test]
fn explain_refuses_path_tricks_with_400() {
    let config = repo("config/cartguard.yaml");
    for target in ["/wp-json/wc/v3/../../../wp-admin", "/wp-json/wc%2fv3/orders", "/shop/%2e%2e/wp-json/wc/v3"] {
        let o = run(&["explain", "--config", config.to_str().unwrap(), "--ip", "50.18.194.14", "GET", target]);
        assert_eq!(o.status.code(), Some(1), "a refused request exits 1: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("400 bad_request") && !out.contains("allow:"), "{target}: {out}");
    }
}

#[test]
fn explain_checks_a_password_read_from_stdin() {
    let f = fixtures();
    let config = f.dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [{{addr: \"127.0.0.1:0\"}}]\nupstream: {{url: \"http://127.0.0.1:9\"}}\nusers: {{htpasswd: {}}}\nrules:\n  - {{name: site, path_prefix: /, others: auth}}\n",
            f.htpasswd.display()
        ),
    )
    .unwrap();
    let ask = |password: &str| {
        let mut child = cartguard()
            .args(["explain", "--config", config.to_str().unwrap(), "--ip", "198.51.100.1"])
            .args(["--user", "alice", "--password", "GET", "/"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.code(), stdout(&o))
    };
    let (code, out) = ask("alice-pass");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("forwarded (auth_ok)"), "{out}");
    let (code, out) = ask("not-her-pass");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401 auth_fail (user \"alice\"): wrong password"), "{out}");
    assert!(!out.contains("not-her-pass") && !out.contains("alice-pass"), "the password is never printed: {out}");
}

#[test]
fn hash_password_reads_stdin_and_prints_a_verifiable_line() {
    let mut child = cartguard()
        .args(["hash-password", "alice", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out.trim_end();
    assert_eq!(line.lines().count(), 1, "{out}");
    let hash = line.strip_prefix("alice:").unwrap_or_else(|| panic!("{line}"));
    assert!(hash.starts_with("$2y$04$"), "{hash}");
    assert!(bcrypt::verify("correct horse", hash).unwrap());
    assert!(!bcrypt::verify("correct horse\n", hash).unwrap());
    assert!(!bcrypt::verify("wrong", hash).unwrap());

    // The line works as an htpasswd file for the guard.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), &out).unwrap();
    let text = std::fs::read_to_string(repo("config/cartguard.yaml")).unwrap().replacen(
        "inline: {}",
        &format!("htpasswd: {}", dir.path().join("htpasswd").display()),
        1,
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    let o = check(&path);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with("users") && l.trim_end().ends_with(" 1")), "{}", stdout(&o));
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let mut child = cartguard()
        .args(["hash-password", "alice", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(stderr(&o).contains("empty password"), "{}", stderr(&o));
}

/// `cartguard status --admin ADDR`, off the async workers.
async fn status_cli(admin: std::net::SocketAddr) -> Output {
    tokio::task::spawn_blocking(move || run(&["status", "--admin", &admin.to_string()])).await.unwrap()
}

#[tokio::test]
async fn status_summarizes_a_healthy_guard_and_exits_0() {
    let g = TestGuard::start().await;
    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-json/wc/v3/orders")
        .header("X-Forwarded-For", "50.18.194.14")
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/wp-admin/").send().await.status, 403);
    g.log_lines(2).await;
    // Healthy needs a successful upstream probe.
    let mut probed = false;
    for _ in 0..100 {
        if status_json(g.admin()).await["upstream"]["reachable"] == true {
            probed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(probed);
    let o = status_cli(g.admin()).await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("healthy") && !out.contains("UNHEALTHY"), "{out}");
    assert!(out.contains("integration-management") && out.contains("office"), "{out}");
    let im_line = out.lines().find(|l| l.trim_start().starts_with("integration-management")).unwrap();
    assert!(im_line.contains("1 requests") && im_line.contains("50.18.194.14"), "{out}");
    assert!(out.contains("/wp-json/wc/v3/orders"), "{out}");
    assert!(out.contains("/wp-admin/") && out.contains("deny"), "the refusal should be listed: {out}");
    assert!(out.lines().count() < 60, "{out}");
}

#[tokio::test]
async fn status_exits_non_zero_when_the_guard_is_unhealthy_or_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let g = TestGuard::start_with(GuardOptions {
        upstream_url: Some(format!("http://127.0.0.1:{closed}")),
        ..Default::default()
    })
    .await;
    let mut down = false;
    for _ in 0..100 {
        if status_json(g.admin()).await["upstream"]["reachable"] == false {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down);
    let o = status_cli(g.admin()).await;
    let out = stdout(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("UNHEALTHY") && out.contains(&format!("127.0.0.1:{closed}")), "{out}");

    // Nothing listening: a clear error, non-zero.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = status_cli(nobody).await;
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains(&nobody.to_string()), "{}", stderr(&o));
}
