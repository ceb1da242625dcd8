//! The `cartguard` command: run, check, explain, hash-password, status.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use cartguard::config::Config;

mod generate;

#[derive(Parser)]
#[command(
    name = "cartguard",
    version,
    about = "Admits Integration Management by address, asks everyone else to log in, forwards to the cart."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the guard.
    Run {
        #[arg(long, short, default_value = "/etc/cartguard/cartguard.yaml")]
        config: PathBuf,
    },
    /// Validate a config and print the effective policy; exit 1 on any error.
    Check {
        #[arg(long, short, default_value = "/etc/cartguard/cartguard.yaml")]
        config: PathBuf,
        /// Print only errors and warnings.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check a config, make the running guard reload it, and report whether it took effect.
    ///
    /// Exit 1 without signalling when the config is invalid, and exit 1 with the guard's
    /// own error when its reload fails (the previous config then keeps serving).
    Reload {
        #[arg(long, short, default_value = "/etc/cartguard/cartguard.yaml")]
        config: PathBuf,
        /// The running guard's PID (systemd: `--pid $MAINPID`); default: the PID its status endpoint reports.
        #[arg(long)]
        pid: Option<i32>,
        /// How long to wait for the guard to report the reload's result.
        #[arg(long, default_value = "30s", value_parser = parse_wait)]
        timeout: Duration,
    },
    /// Show how one request would be decided, step by step.
    Explain {
        #[arg(long, short, default_value = "/etc/cartguard/cartguard.yaml")]
        config: PathBuf,
        /// The client's address.
        #[arg(long)]
        ip: IpAddr,
        /// The socket peer, if the client comes through a proxy (default: --ip).
        #[arg(long)]
        peer: Option<IpAddr>,
        /// A request header, 'Name: value' (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Pretend the request carries Basic credentials for this user.
        #[arg(long)]
        user: Option<String>,
        /// Also check the user's password: read it without echo (or a line from stdin).
        #[arg(long, requires = "user")]
        password: bool,
        /// The listener the request arrives on (its address as in the config); default: the first.
        #[arg(long)]
        listener: Option<SocketAddr>,
        method: String,
        /// Path and optional query, e.g. '/wp-json/wc/v3/orders' or '/?rest_route=/wc/v3/orders'.
        target: String,
    },
    /// Read a password (no echo on a terminal, or from stdin) and print an htpasswd line.
    HashPassword {
        #[arg(default_value = "admin")]
        user: String,
        #[arg(long, default_value_t = 12)]
        cost: u32,
    },
    /// Alerts: `alert test` sends a test alert to every sink and prints each answer.
    Alert {
        #[command(subcommand)]
        action: AlertAction,
    },
    /// Fetch /status from the admin listener and print a summary.
    Status {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertAction {
    /// Send a test alert to every sink in `alerts:`; exit 1 if any failed.
    Test {
        #[arg(long, short, default_value = "/etc/cartguard/cartguard.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // `cartguard generate man|completions` (packaging, see src/generate.rs) is not in `Cli`,
    // so neither --help, the man pages nor the completions mention it.
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return generate::main(Cli::command());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, quiet } => check(&config, quiet),
        Command::Reload { config, pid, timeout } => reload(&config, pid, timeout),
        Command::Explain { config, ip, peer, headers, user, password, listener, method, target } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            let password = match password.then(|| read_password("password to check: ")).transpose() {
                Ok(p) => p,
                Err(e) => return fail(&e),
            };
            let redirect_https = match listener {
                None => config.listeners.first().is_some_and(|l| l.redirect_https),
                Some(addr) => match config.listeners.iter().find(|l| l.addr == addr) {
                    Some(l) => l.redirect_https,
                    None => return fail(&format!("--listener {addr}: no such listener in the config")),
                },
            };
            let q = cartguard::explain::Question { ip, peer, headers, user, password, method, target, redirect_https };
            explain(&config, &q)
        }
        Command::HashPassword { user, cost } => hash_password(&user, cost),
        Command::Status { admin, json } => status(admin, json),
        Command::Alert { action: AlertAction::Test { config } } => alert_test(&config),
    }
}

fn alert_test(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if config.alerts.sinks.is_empty() {
        return fail("no alert sinks: add alerts.sinks to the config");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut failed = 0;
    for (name, kind, result) in runtime.block_on(cartguard::alerts::test_all(&config)) {
        match result {
            Ok(answer) => println!("{name} ({kind}): ok: {answer}"),
            Err(error) => {
                failed += 1;
                println!("{name} ({kind}): FAILED: {error}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("cartguard: {failed} of {} sinks failed", config.alerts.sinks.len());
        ExitCode::FAILURE
    }
}

/// Exit 0 when the request would be forwarded, 1 when the guard would answer it.
fn explain(config: &Config, q: &cartguard::explain::Question) -> ExitCode {
    let bans = match config.status.listen.map(fetch_status) {
        Some(Ok(body)) => serde_json::from_str::<cartguard::status::StatusDoc>(&body)
            .map(|doc| {
                doc.bans
                    .iter()
                    .filter_map(|b| Some((b.ip.parse().ok()?, Duration::from_secs(b.seconds_left))))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        Some(Err(e)) => {
            eprintln!("note: the running guard's bans are not known ({e}); assuming none");
            Vec::new()
        }
        None => Vec::new(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(cartguard::explain::explain(config, q, &bans)) {
        Ok(e) => {
            print!("{}", e.text);
            if e.verdict.is_forwarded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("cartguard: {message}");
    ExitCode::FAILURE
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&format!("invalid config: {e}")),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARTGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // CARTGUARD_WORKER_THREADS=n: a fixed number of async workers (default: one per CPU).
    // One worker runs tokio's current-thread scheduler: no work-stealing bookkeeping.
    let workers = std::env::var("CARTGUARD_WORKER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    log_policy(&config);
    let path = config.source.path.clone();
    let guard = cartguard::Guard::start(config).await.map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(addrs = ?guard.addrs, admin = ?guard.admin_addr, "cartguard ready");
    let mut watchdog = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading, monotonic_usec()]);
                let _ = cartguard::reload(&guard.shared, &path);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = usr1.recv() => guard.shared.access_log.reopen(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } } => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: finishing requests in flight");
    guard.shutdown().await;
    // Give the access-log writer a moment to flush the last records.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("stopped");
    Ok(())
}

fn monotonic_usec() -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Ready)
}

fn log_policy(config: &Config) {
    let p = &config.policy;
    for i in 0..p.groups.len() {
        tracing::info!("group {}", cartguard::report::group_line(p, i, 8));
    }
    for i in 0..p.rules.len() {
        tracing::info!("rule {}", cartguard::report::rule_line(p, i));
    }
}

/// Loads a config the way `run` would and collects what `check` reports: the config
/// (when it parses), its warnings, and the errors that would stop a start or reload.
fn validate(path: &Path) -> Result<(Config, Vec<String>, Vec<String>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let mut warnings = config.warnings.clone();
    warnings.extend(cartguard::acme::warnings(&config));
    match cartguard::tls::TlsStores::load(&config.listeners) {
        Err(e) => errors.push(e),
        Ok(stores) => {
            let host = match &config.upstream.host {
                cartguard::config::HostMode::Literal(h) => h.to_str().ok().map(|h| h.split(':').next().unwrap_or(h)),
                _ => None,
            };
            warnings.extend(stores.warnings(host));
        }
    }
    Ok((config, warnings, errors))
}

fn check(path: &Path, quiet: bool) -> ExitCode {
    let (config, warnings, errors) = match validate(path) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if !quiet {
        print!("{}", cartguard::report::describe(&config));
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        if !quiet {
            println!("config OK");
        }
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    cartguard::config::raw::parse_duration(text)
}

/// `systemctl reload` semantics that tell the truth: a broken config is refused before
/// the guard is touched, and a reload the guard itself rejects (a certificate it cannot
/// read, say) is reported with the guard's own error and a non-zero exit.
fn reload(path: &Path, pid: Option<i32>, timeout: Duration) -> ExitCode {
    let (config, warnings, errors) = match validate(path) {
        Ok(v) => v,
        Err(e) => return fail(&format!("not reloading, the config is invalid: {e}")),
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if let Some(e) = errors.first() {
        return fail(&format!("not reloading, the config is invalid: {e}"));
    }
    // The status endpoint of the *running* guard; a reload that moves it is confirmed there
    // only if the old address still answers, so read it before signalling.
    let admin = config.status.listen;
    let before = admin.map(fetch_status_doc);
    let pid = match (pid, &before) {
        (Some(p), _) => p,
        (None, Some(Ok(doc))) if doc.pid > 0 => doc.pid as i32,
        (None, Some(Err(e))) => return fail(&format!("cannot find the running guard: {e}; pass --pid")),
        _ => return fail("cannot find the running guard: no status.listen in the config; pass --pid"),
    };
    let Some(target) = rustix::process::Pid::from_raw(pid) else {
        return fail(&format!("--pid {pid}: not a process id"));
    };
    if let Err(e) = rustix::process::kill_process(target, rustix::process::Signal::HUP) {
        return fail(&format!("cannot signal process {pid}: {e}"));
    }
    let (admin, before) = match (admin, before) {
        (Some(admin), Some(Ok(before))) => (admin, before),
        (Some(admin), Some(Err(e))) => {
            return fail(&format!(
                "signalled process {pid}, but cannot confirm the result: {e} (status.listen {admin})"
            ))
        }
        _ => {
            println!("signalled process {pid}; no status endpoint to confirm the result (see status.listen)");
            return ExitCode::SUCCESS;
        }
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        match fetch_status_doc(admin) {
            Ok(now) if now.config.reloads > before.config.reloads => {
                return match now.config.last_reload_error {
                    Some(e) => fail(&format!("reload failed, the previous config keeps serving: {e}")),
                    None => {
                        println!("reloaded {} (sha256 {})", now.config.path, now.config.sha256);
                        ExitCode::SUCCESS
                    }
                };
            }
            _ if std::time::Instant::now() >= deadline => {
                return fail(&format!("signalled process {pid}, but {admin} reported no reload within {timeout:?}"))
            }
            _ => {}
        }
    }
}

fn fetch_status_doc(admin: SocketAddr) -> Result<cartguard::status::StatusDoc, String> {
    let body = fetch_status(admin).map_err(|e| format!("cannot read status from {admin}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{admin} did not answer a cartguard status document: {e}"))
}

/// Reads a password without echo on a terminal, or the first line of stdin.
fn read_password(prompt: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).map_err(|e| format!("cannot read the password: {e}"));
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(s.lines().next().unwrap_or("").to_string())
}

fn hash_password(user: &str, cost: u32) -> ExitCode {
    if user.is_empty() || user.contains(':') {
        return fail("the user name must be non-empty and have no colon");
    }
    let password = match read_password(&format!("password for {user}: ")) {
        Ok(first) if std::io::stdin().is_terminal() => match rpassword::prompt_password("again: ") {
            Ok(again) if again == first => first,
            Ok(_) => return fail("the passwords differ"),
            Err(e) => return fail(&format!("cannot read the password: {e}")),
        },
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if password.is_empty() {
        return fail("empty password");
    }
    match bcrypt::hash_with_result(&password, cost) {
        Ok(h) => {
            println!("{user}:{}", h.format_for_version(bcrypt::Version::TwoY));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot hash: {e}")),
    }
}

fn status(admin: SocketAddr, raw: bool) -> ExitCode {
    let body = match fetch_status(admin) {
        Ok(b) => b,
        Err(e) => {
            return fail(&format!("cannot read status from {admin}: {e} (is the guard running? see status.listen)"))
        }
    };
    if raw {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let doc: cartguard::status::StatusDoc = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return fail(&format!("status is not a cartguard status document: {e}")),
    };
    print!("{}", cartguard::report::summarize_status(&doc));
    if doc.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A tiny HTTP/1.0 GET, enough for the loopback admin listener.
fn fetch_status(admin: SocketAddr) -> Result<String, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: cartguard\r\nAccept: application/json\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (_, body) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
    Ok(body.to_string())
}
