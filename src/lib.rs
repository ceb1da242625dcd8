//! cartguard: a reverse proxy that admits an order-integration service by
//! address and asks everyone else to log in.
//!
//! One request flows one way:
//! `server` (accept, PROXY header, TLS, `framing` checks HTTP/1 heads, hyper) → `policy::client_ip` (who is
//! the client) → `policy::rules` / `policy::path` (which rule) → `policy::decide`
//! (what to do; pure) → `users` (verify a login, off the async workers) →
//! `proxy` (forward or answer) → `access_log` (one record per request).
//! `config` turns YAML into the immutable snapshot each request reads once;
//! `state` holds what outlives a snapshot; `status` serves the admin endpoints;
//! `alerts` tells the owner (webhooks, commands) what needs them.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admission;
pub mod admit;
pub mod alerts;
pub mod bans;
pub mod config;
pub mod conn;
pub mod error;
pub mod explain;
pub mod framing;
pub mod ids;
pub mod percent;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod report;
pub mod server;
pub mod state;
pub mod status;
pub mod timeline;
pub mod tls;
pub mod upstream;
pub mod users;
pub mod verdict;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use config::Config;
pub use error::{ListenError, ReloadError, StartError};
use state::Shared;

/// A running guard: its bound addresses and the switch that stops it.
pub struct Guard {
    pub shared: Arc<Shared>,
    /// Public listeners, in config order, with the ports actually bound.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Guard {
    /// Binds every listener of `config` (port 0 picks a free one) and starts serving.
    pub async fn start(config: Config) -> Result<Guard, StartError> {
        let listeners = server::bind(&config.listeners).await?;
        let admin = match config.status.listen {
            Some(addr) => Some(server::bind_one(addr).await.map_err(|reason| StartError::Listen {
                key: "status.listen".into(),
                addr,
                reason,
            })?),
            None => None,
        };
        let shared = shared_state(config)?;
        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.tcp.local_addr().ok()).collect();
        let _ = shared.bound.set(addrs.clone());
        let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
        let (tx, rx) = watch::channel(false);
        if let Some(admin) = admin {
            tokio::spawn(status::serve_admin(admin, shared.clone(), rx.clone()));
        }
        tokio::spawn(upstream::probe(shared.clone(), rx.clone()));
        tokio::spawn(alerts::deliver_queued(shared.clone(), rx.clone()));
        tokio::spawn(alerts::watch(shared.clone(), rx.clone()));
        acme::manager::spawn_all(&shared, &rx);
        let done = tokio::spawn(server::serve(listeners, shared.clone(), rx));
        Ok(Guard { shared, addrs, admin_addr, shutdown: tx, done })
    }

    /// Re-reads the config file the guard was started with.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.shared.runtime.load().config.source.path.clone();
        reload(&self.shared, &path)
    }

    /// Stops accepting, lets requests in flight finish (up to the grace), returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.done.await;
    }
}

/// Everything a guard shares between requests, without any socket: certificates
/// loaded, the access log open. Tests call `proxy::handle` on it directly.
pub fn shared_state(config: Config) -> Result<Arc<Shared>, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tls::TlsStores::load(&config.listeners).map_err(StartError::Certificates)?;
    let log =
        access_log::AccessLog::start(config.log.format, config.log.path.clone()).map_err(StartError::AccessLog)?;
    Shared::new(config, log, tls).map_err(StartError::Upstream)
}

/// Loads, validates and swaps in a new config (policy and certificates together);
/// on any error nothing changes, the old one keeps serving and the error is kept
/// for /status and /healthz.
pub fn reload(shared: &Shared, path: &Path) -> Result<(), ReloadError> {
    let result = try_reload(shared, path);
    let mut info = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
    info.last_reload_at = Some(access_log::rfc3339(SystemTime::now()));
    info.attempts += 1;
    match &result {
        Ok(restart) => {
            shared.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info.last_reload_error = None;
            info.restart_needed = restart.clone();
            if let Some(r) = restart {
                tracing::warn!("config reloaded, but {r}");
            } else {
                tracing::info!(path = %path.display(), "config reloaded");
            }
        }
        Err(e) => {
            shared.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
            let e = e.to_string();
            tracing::error!("config reload failed, the previous config keeps serving: {e}");
            alerts::raise(shared, alerts::Alert::reload_failed(&path.display().to_string(), &e));
            info.last_reload_error = Some(e);
        }
    }
    result.map(|_| ())
}

fn try_reload(shared: &Shared, path: &Path) -> Result<Option<String>, ReloadError> {
    let config = Config::load(path)?;
    let old = shared.runtime.load();
    let mut restart = Vec::new();
    // Certificate files are re-read in place; what needs new sockets or acceptors is the rest.
    let shape = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.addr, l.is_tls(), l.proxy_protocol, l.redirect_https, l.unknown_sni))
            .collect::<Vec<_>>()
    };
    if shape(&config) != shape(&old.config) {
        restart.push(
            "listener changes (addresses, TLS on/off, proxy_protocol, redirect_https, unknown_sni) need a restart",
        );
    }
    if config.listeners.iter().map(|l| &l.acme).ne(old.config.listeners.iter().map(|l| &l.acme)) {
        restart.push("acme changes need a restart");
    }
    if config.status.listen != old.config.status.listen {
        restart.push("status.listen changes need a restart");
    }
    if config.log != old.config.log {
        restart.push("log changes need a restart");
    }
    if config.limits.shutdown_grace != old.config.limits.shutdown_grace {
        restart.push("limits.shutdown_grace needs a restart (other limits apply to new connections)");
    }
    let pool = |c: &Config| (c.auth.max_concurrent_verifications, c.auth.verify_queue, c.auth.verify_nice);
    if pool(&config) != pool(&old.config) {
        restart.push("auth.max_concurrent_verifications, auth.verify_queue and auth.verify_nice need a restart");
    }
    // All or nothing: everything that can fail runs before anything is swapped in.
    let certs = shared.tls.prepare(&config.listeners).map_err(ReloadError::Certificates)?;
    let warnings = config.warnings.clone();
    let runtime = shared.stats.runtime_for(config).map_err(ReloadError::Upstream)?;
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    certs.swap();
    shared.runtime.store(Arc::new(runtime));
    Ok((!restart.is_empty()).then(|| restart.join("; ")))
}
