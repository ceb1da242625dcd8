//! TLS termination: certificates per listener, chosen by SNI, swappable on reload.
//!
//! Each TLS listener owns a `CertStore`; its resolver reads the current set
//! atomically on every handshake, so a reload (SIGHUP) changes the certificate
//! for new handshakes without touching established connections. A broken or
//! missing file keeps the old certificates and is reported. `acme:` listeners
//! start with their stored certificate (or none) and the ACME task swaps in new
//! ones; their resolver also answers TLS-ALPN-01 validations.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::acme::challenge::ACME_TLS_ALPN;
use crate::acme::AcmeState;
use crate::config::{CertPaths, ListenerConfig};

/// ring, the one crypto provider of every rustls config here (server, upstream client,
/// ACME and webhooks): no aws-lc-rs, no C toolchain beyond ring's own.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One loaded certificate with what /status shows about it.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub file: String,
    pub names: Vec<String>,
    pub not_after: String,
    #[serde(skip)]
    pub not_after_unix: i64,
    pub days_left: i64,
}

/// What a TLS listener does with a ClientHello whose SNI names none of its
/// certificates, or has no SNI at all (a client or scanner using the IP address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// Serve the first certificate (the client's verification then fails on its side).
    #[default]
    DefaultCert,
    /// Fail the handshake: nothing about the site is shown to a name it does not serve.
    Reject,
}

/// The certificates of one listener; the first is the default.
#[derive(Debug)]
pub struct CertStore {
    pub listener: String,
    current: ArcSwap<Vec<LoadedCert>>,
    unknown_sni: UnknownSni,
    /// Set on `acme:` listeners: where TLS-ALPN-01 answers come from.
    acme: Option<Arc<AcmeState>>,
}

/// Certificates read for a reload, not yet serving.
pub struct CertsReady(Vec<(Arc<CertStore>, Vec<LoadedCert>)>);

impl CertsReady {
    /// New handshakes use these from now on.
    pub fn swap(self) {
        for (store, certs) in self.0 {
            store.current.store(Arc::new(certs));
        }
    }
}

/// Every TLS listener's store, by listener address.
#[derive(Debug, Default)]
pub struct TlsStores {
    pub stores: Vec<Arc<CertStore>>,
    /// Challenge answers and certificate status of the `acme:` listeners.
    pub acme: Arc<AcmeState>,
}

impl TlsStores {
    pub fn load(listeners: &[ListenerConfig]) -> Result<TlsStores, String> {
        let acme_state = Arc::new(AcmeState::default());
        let mut stores = Vec::new();
        for l in listeners.iter().filter(|l| l.is_tls()) {
            let listener = l.addr.to_string();
            let (certs, acme) = match &l.acme {
                Some(cfg) => (acme_state.load(&listener, cfg)?, Some(acme_state.clone())),
                None => (load_all(&l.certs)?, None),
            };
            stores.push(Arc::new(CertStore {
                listener,
                current: ArcSwap::from_pointee(certs),
                unknown_sni: l.unknown_sni,
                acme,
            }));
        }
        Ok(TlsStores { stores, acme: acme_state })
    }

    pub fn store_for(&self, listener: &str) -> Option<Arc<CertStore>> {
        self.stores.iter().find(|s| s.listener == listener).cloned()
    }

    /// Reads the files of each listener still configured, changing nothing: a
    /// reload swaps them in (`CertsReady::swap`) only once the whole config is good.
    pub fn prepare(&self, listeners: &[ListenerConfig]) -> Result<CertsReady, String> {
        let mut ready = Vec::new();
        let mut errors = Vec::new();
        for l in listeners.iter().filter(|l| !l.certs.is_empty()) {
            let Some(store) = self.store_for(&l.addr.to_string()) else {
                continue;
            };
            match load_all(&l.certs) {
                Ok(certs) => ready.push((store, certs)),
                Err(e) => errors.push(format!("listener {}: {e}", l.addr)),
            }
        }
        if errors.is_empty() {
            Ok(CertsReady(ready))
        } else {
            Err(errors.join("; "))
        }
    }

    /// What `check` warns about: certificates expiring within 14 days, and
    /// listeners none of whose certificates covers the configured host.
    pub fn warnings(&self, host: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        for store in &self.stores {
            let certs = store.current.load();
            if let Some(host) = host {
                // An acme: listener without a certificate yet gets one for its own names.
                if store.acme.is_some() && certs.is_empty() {
                    continue;
                }
                if !certs.iter().any(|c| c.info.names.iter().any(|n| name_matches(n, host))) {
                    out.push(format!("no certificate on {} covers the configured host {host:?}", store.listener));
                }
            }
            for c in certs.iter().filter(|c| c.info.days_left < 14) {
                out.push(format!(
                    "certificate {} on {} expires in {} days ({})",
                    c.info.file, store.listener, c.info.days_left, c.info.not_after
                ));
            }
        }
        out
    }

    pub fn infos(&self) -> Vec<(String, CertInfo)> {
        self.stores
            .iter()
            .flat_map(|s| s.current.load().iter().map(|c| (s.listener.clone(), c.info.clone())).collect::<Vec<_>>())
            .collect()
    }
}

impl CertStore {
    /// Swaps the served certificates; handshakes already done keep theirs.
    pub fn replace(&self, certs: Vec<LoadedCert>) {
        self.current.store(Arc::new(certs));
    }

    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.acme.is_some() {
            cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.0.acme {
            // A validation asks for acme-tls/1 only, and gets the challenge certificate or nothing.
            if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
                return hello.server_name().and_then(|name| acme.challenges.tls_alpn_cert(name));
            }
        }
        let certs = self.0.current.load();
        if let Some(sni) = hello.server_name() {
            if let Some(c) = certs.iter().find(|c| c.info.names.iter().any(|n| name_matches(n, sni))) {
                return Some(c.key.clone());
            }
        }
        match self.0.unknown_sni {
            UnknownSni::DefaultCert => certs.first().map(|c| c.key.clone()),
            UnknownSni::Reject => {
                tracing::debug!(listener = %self.0.listener, sni = ?hello.server_name(), "TLS handshake refused: unknown SNI");
                None
            }
        }
    }
}

/// Exact or single-label wildcard match, ASCII case-insensitive.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        };
    }
    pattern.eq_ignore_ascii_case(host)
}

fn load_all(paths: &[CertPaths]) -> Result<Vec<LoadedCert>, String> {
    paths.iter().map(load_one).collect()
}

pub fn load_one(p: &CertPaths) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&p.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("certificate {}: {e}", p.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("certificate {}: no PEM certificate in the file", p.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&p.key)
        .map_err(|e| format!("key {}: {e} (PKCS#8, PKCS#1 or SEC1 PEM expected)", p.key.display()))?;
    let info = cert_info(&p.cert, &chain[0])?;
    let certified = CertifiedKey::from_der(chain, key, &crypto_provider())
        .map_err(|e| format!("{} / {}: {e}", p.cert.display(), p.key.display()))?;
    Ok(LoadedCert { key: Arc::new(certified), info })
}

fn cert_info(file: &Path, der: &CertificateDer) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("certificate {}: {e}", file.display()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
    }
    let not_after_unix = cert.validity().not_after.timestamp();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Ok(CertInfo {
        file: file.display().to_string(),
        names,
        not_after: crate::access_log::rfc3339(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(not_after_unix.max(0) as u64),
        ),
        not_after_unix,
        days_left: (not_after_unix - now).div_euclid(86_400),
    })
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn sni_names() {
        assert!(name_matches("shop.example.com", "SHOP.example.com"));
        assert!(name_matches("*.example.com", "shop.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("shop.example.com", "shop.example.org"));
    }
}
