//! Automatic HTTPS: certificates for `acme:` listeners from an ACME CA
//! (Let's Encrypt by default), through the instant-acme client.
//!
//! At start the stored certificate is served if it is still valid (`load`);
//! a background task per listener (`manager`) issues one when there is none,
//! renews when a third of the lifetime remains, retries with a doubling,
//! bounded backoff, and swaps the result into the listener's `CertStore`, so
//! open connections keep theirs. Nothing here ever blocks serving: before the
//! first certificate exists, handshakes for the names simply fail.

pub mod challenge;
pub mod http01;
pub mod manager;
pub mod storage;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::access_log::rfc3339;
use crate::config::{AcmeConfig, Challenge, Config};
use crate::tls::LoadedCert;
pub use challenge::Challenges;

/// Below this, /healthz reports the certificate.
pub const HEALTH_MIN_DAYS: i64 = 7;

/// Everything the ACME tasks share with the listeners and the status pages.
#[derive(Debug, Default)]
pub struct AcmeState {
    pub challenges: Challenges,
    certs: Mutex<Vec<AcmeCertStatus>>,
}

/// One `acme:` listener's certificate and how getting it went, for /status and /metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeCertStatus {
    pub listener: String,
    pub names: Vec<String>,
    pub directory: String,
    pub issuer: Option<String>,
    pub not_before_unix: Option<i64>,
    pub not_after_unix: Option<i64>,
    pub last_attempt_at: Option<String>,
    pub last_attempt_unix: Option<i64>,
    pub last_renewed_at: Option<String>,
    /// The last attempt's error; cleared by a success.
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub renewals_ok: u64,
    pub renewals_failed: u64,
}

impl AcmeCertStatus {
    pub fn days_left(&self) -> Option<i64> {
        self.not_after_unix.map(|t| (t - storage::unix_now()).div_euclid(86_400))
    }

    /// When to renew: two thirds into the lifetime.
    fn renew_at_unix(&self) -> Option<i64> {
        let (from, to) = (self.not_before_unix?, self.not_after_unix?);
        Some(from + (to - from) * 2 / 3)
    }
}

impl AcmeState {
    /// Registers an `acme:` listener and returns the stored certificate to serve now, if valid.
    pub fn load(&self, listener: &str, cfg: &AcmeConfig) -> Result<Vec<LoadedCert>, String> {
        storage::prepare_dir(&cfg.state_dir)?;
        if let Some(ca) = &cfg.ca {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(ca)
                .map_err(|e| format!("acme.ca {}: {e} (a PEM certificate expected)", ca.display()))?;
        }
        let stored = storage::load_valid(cfg).unwrap_or_else(|e| {
            tracing::warn!(listener, "stored ACME certificate unusable, a new one will be requested: {e}");
            None
        });
        let mut status = AcmeCertStatus {
            listener: listener.to_string(),
            names: cfg.domains.clone(),
            directory: cfg.directory.clone(),
            ..Default::default()
        };
        let certs = match stored {
            Some(s) => {
                status.issuer = Some(s.issuer);
                status.not_before_unix = Some(s.not_before_unix);
                status.not_after_unix = Some(s.cert.info.not_after_unix);
                vec![s.cert]
            }
            None => Vec::new(),
        };
        let mut all = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|c| c.listener != listener);
        all.push(status);
        Ok(certs)
    }

    pub fn snapshot(&self) -> Vec<AcmeCertStatus> {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, listener: &str, f: impl FnOnce(&mut AcmeCertStatus)) {
        let mut all = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.iter_mut().find(|c| c.listener == listener) {
            f(s);
        }
    }

    fn get(&self, listener: &str) -> Option<AcmeCertStatus> {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|c| c.listener == listener).cloned()
    }

    /// Why /healthz should fail because of ACME certificates; empty when fine.
    pub fn health_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.snapshot() {
            let names = c.names.join(", ");
            let error = c.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default();
            match c.days_left() {
                None => out.push(format!("no ACME certificate yet for {names}{error}")),
                Some(d) if d < HEALTH_MIN_DAYS => {
                    out.push(format!("ACME certificate for {names} expires in {d} days{error}"))
                }
                Some(_) => {}
            }
        }
        out
    }
}

/// What `check` points out about `acme:` listeners: ports the CA will not
/// reach, and names claimed by two listeners.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let plain_80 = config.listeners.iter().any(|l| !l.is_tls() && l.addr.port() == 80);
    let mut seen: Vec<(&str, std::net::SocketAddr)> = Vec::new();
    for l in &config.listeners {
        let Some(a) = &l.acme else { continue };
        if a.challenges == [Challenge::TlsAlpn01] && l.addr.port() != 443 {
            out.push(format!(
                "listener {}: tls-alpn-01 is validated on port 443; this listener must be reachable there (a port forward)",
                l.addr
            ));
        }
        if a.challenges == [Challenge::Http01] && !plain_80 {
            out.push(format!(
                "listener {}: http-01 is validated on port 80, and no plain listener is on port 80",
                l.addr
            ));
        }
        for d in &a.domains {
            if let Some((_, other)) = seen.iter().find(|(n, _)| n == d) {
                out.push(format!(
                    "acme name {d} is on listeners {other} and {}: each will order its own certificate",
                    l.addr
                ));
            }
            seen.push((d, l.addr));
        }
    }
    out
}

/// RFC 3339 for a Unix time.
pub fn at(unix: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
}

fn now_string() -> String {
    rfc3339(SystemTime::now())
}
