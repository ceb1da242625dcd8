//! The pooled client to the cart, and how its failures are described.
//!
//! One keep-alive pool per config snapshot. `https://` upstreams are verified
//! against the system roots or `upstream.tls.ca`; there is no way to skip
//! verification. Failures are classified so the log can say in one line
//! whether the cart refused the connection, failed TLS, or was too slow.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::config::UpstreamConfig;

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    pub config: UpstreamConfig,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// Refused, unreachable, DNS, connect timeout or TLS failure: 502.
    Connect(String),
    /// No response head within `upstream.timeout`: 504.
    Timeout(Duration),
    /// The request body failed (client went away or sent too much): the client's fault.
    RequestBody(String),
    /// Anything else on an established connection (bad response framing...): 502.
    Protocol(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "upstream connect failed: {e}"),
            UpstreamError::Timeout(d) => write!(f, "upstream sent no response head within {}ms", d.as_millis()),
            UpstreamError::RequestBody(e) => write!(f, "request body failed: {e}"),
            UpstreamError::Protocol(e) => write!(f, "upstream error: {e}"),
        }
    }
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = client_tls(config)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = match &config.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| format!("upstream.tls.server_name: {e}"))?;
                builder.https_or_http().with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder.https_or_http(),
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream { client, config: config.clone() })
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.config.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.config.timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let chain = error_chain(e);
    if e.is_connect() {
        return UpstreamError::Connect(chain);
    }
    // A failing request body surfaces as a hyper "user body" error.
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_user() || h.is_body_write_aborted() {
                return UpstreamError::RequestBody(chain);
            }
        }
        source = s.source();
    }
    UpstreamError::Protocol(chain)
}

/// "a: b: c" from an error and its sources, without repeats.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn client_tls(config: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("upstream.tls.ca: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("upstream.tls.ca: {} holds no certificate", path.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("upstream.tls.ca: {}: {e}", path.display()))?;
            }
        }
        None if config.https => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "upstream is https:// but no system root certificates were found; set upstream.tls.ca".into()
                );
            }
        }
        None => {}
    }
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// Probes the upstream with a TCP connect every `probe_interval`.
pub async fn probe(shared: Arc<crate::state::Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let (authority, interval, timeout) = {
            let rt = shared.runtime.load();
            (
                rt.config.upstream.authority.clone(),
                rt.config.upstream.probe_interval,
                rt.config.upstream.connect_timeout,
            )
        };
        let result = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&authority)).await;
        let up = &shared.stats.upstream;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (was_up, first) = (up.reachable.load(relaxed), !up.probed.load(relaxed));
        match result {
            Ok(Ok(_)) => {
                up.reachable.store(true, std::sync::atomic::Ordering::Relaxed);
                up.ok();
            }
            Ok(Err(e)) => {
                if up.reachable.swap(false, std::sync::atomic::Ordering::Relaxed)
                    || !up.probed.load(std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(upstream = %authority, error = %e, "upstream probe failed");
                }
                up.failed(format!("probe: connect to {authority}: {e}"));
            }
            Err(_) => {
                up.reachable.store(false, std::sync::atomic::Ordering::Relaxed);
                up.failed(format!("probe: connect to {authority} timed out after {}ms", timeout.as_millis()));
            }
        }
        up.probed.store(true, std::sync::atomic::Ordering::Relaxed);
        crate::alerts::upstream_probed(&shared, &authority, was_up, first);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
