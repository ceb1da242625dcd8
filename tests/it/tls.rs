//! TLS termination and HTTPS upstreams: ALPN h2/http1.1 through the same
//! decisions, SNI certificate choice, protocol versions, certificate reload, a
//! private-CA upstream, and hostile bytes on the TLS port. Every certificate is
//! generated here with rcgen and lives only in a temp folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::common::*;

// ---------------------------------------------------------------- certificates

/// A throwaway certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate signed by a `Ca`.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, names: &[&str], cn: &str) -> Leaf {
        self.leaf_until(names, cn, None)
    }

    /// A leaf for `names` (DNS names or IP addresses); `days` sets not_after that many days ahead.
    fn leaf_until(&self, names: &[&str], cn: &str, days: Option<i64>) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(days) = days {
            let (y, m, d) = date_in_days(days);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { der: cert.der().clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir` and returns both paths.
    fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        Arc::new(cfg)
    }
}

/// (year, month, day) of today + `days` (UTC), without a date crate.
pub(crate) fn date_in_days(days: i64) -> (i32, u8, u8) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let z = now.div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// One `- addr: ... tls: [...]` listener entry for GuardOptions.listeners.
fn tls_listener(certs: &[(PathBuf, PathBuf)]) -> String {
    let mut out = "  - addr: \"127.0.0.1:0\"\n    tls:\n".to_string();
    for (cert, key) in certs {
        out.push_str(&format!("      - {{cert: \"{}\", key: \"{}\"}}\n", cert.display(), key.display()));
    }
    out
}

/// A guard with one TLS listener serving `certs` (first = default).
async fn tls_guard(certs: &[(PathBuf, PathBuf)], limits: &str) -> TestGuard {
    TestGuard::start_with(GuardOptions { listeners: tls_listener(certs), limits: limits.into(), ..Default::default() })
        .await
}

// ---------------------------------------------------------------- TLS client

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh client config (no session resumption, so every handshake shows the current certificate).
fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

fn default_client(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> ClientConfig {
    client_config(ca, alpn, rustls::DEFAULT_VERSIONS)
}

/// Accepts any certificate: only to look at what the server presents for an unknown name.
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshake from `source`, verifying the server as `name`.
pub async fn try_tls_connect(
    source: &str,
    addr: SocketAddr,
    cfg: ClientConfig,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(source.parse().unwrap(), addr).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await.expect("TLS handshake timed out")
}

async fn tls_connect(source: &str, addr: SocketAddr, cfg: ClientConfig, name: &str) -> TlsStream<TcpStream> {
    try_tls_connect(source, addr, cfg, name).await.unwrap_or_else(|e| panic!("TLS handshake as {name} failed: {e}"))
}

pub fn peer_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("no peer certificate")[0].clone()
}

/// An HTTP connection over TLS, h2 or http/1.1 by what ALPN chose.
enum Http {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Http {
    async fn open(tls: TlsStream<TcpStream>) -> Http {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Http::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Http::H1(send)
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let fut = async {
            let resp = match self {
                // `ready` first: the client's connection task may not yet have seen the end
                // of the previous response, and hyper refuses a request sent before that.
                Http::H1(s) => {
                    let req = http::Request::get(path).header("host", "shop.test").body(Empty::new()).unwrap();
                    match s.ready().await {
                        Ok(()) => s.send_request(req).await,
                        Err(e) => Err(e),
                    }
                }
                Http::H2(s) => {
                    let req = http::Request::get(format!("https://shop.test{path}")).body(Empty::new()).unwrap();
                    match s.ready().await {
                        Ok(()) => s.send_request(req).await,
                        Err(e) => Err(e),
                    }
                }
            }
            .expect("request failed");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("response body failed").to_bytes();
            Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut).await.expect("request timed out")
    }
}

/// One GET over a new TLS connection with the given ALPN list.
async fn tls_get(source: &str, addr: SocketAddr, ca: &CertificateDer<'static>, alpn: &[&[u8]], path: &str) -> Answer {
    let tls = tls_connect(source, addr, default_client(ca, alpn), "shop.test").await;
    Http::open(tls).await.get(path).await
}

/// Reads until the server closes (or `limit` passes); returns the bytes and whether it closed.
async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

// ---------------------------------------------------------------- HTTPS upstream

/// An upstream that terminates TLS with `leaf` and counts requests.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    async fn start(leaf: &Leaf) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (seen2, handshakes2) = (seen.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (acceptor, seen, handshakes) = (acceptor.clone(), seen2.clone(), handshakes2.clone());
                tokio::spawn(async move {
                    // The guard's probe only connects; a failed handshake is normal here.
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            seen.lock().unwrap().push(req.uri().path().to_string());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"tls upstream ok",
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream { addr, seen, handshakes, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain-listener guard whose upstream is `url` with the given `upstream.tls` block.
async fn guard_to_https(url: String, tls_block: String) -> TestGuard {
    TestGuard::start_with(GuardOptions { upstream_url: Some(url), upstream_extra: tls_block, ..Default::default() })
        .await
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_via_alpn_get_the_same_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let cert = ca.leaf(&["shop.test", "localhost", "127.0.0.1"], "shop.test").write(dir.path(), "shop");
    let g = tls_guard(&[cert], "").await;
    let ca = ca.der();

    // ALPN: the server picks h2 when offered, http/1.1 otherwise or without ALPN.
    for (offer, expect) in [
        (vec![b"h2".as_slice(), b"http/1.1".as_slice()], Some(b"h2".as_slice())),
        (vec![b"http/1.1".as_slice()], Some(b"http/1.1".as_slice())),
        (vec![], None),
    ] {
        let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca, &offer), "shop.test").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), expect, "offered {offer:?}");
    }

    let h2: &[&[u8]] = &[b"h2", b"http/1.1"];
    let h1: &[&[u8]] = &[b"http/1.1"];
    let mut n = 0;
    for (alpn, protocol) in [(h2, "HTTP/2"), (h1, "HTTP/1.1")] {
        // The office is admitted to the admin area.
        let r = tls_get("127.0.0.2", g.addr(), &ca, alpn, "/wp-admin/").await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.body);
        assert_eq!(r.body, "upstream ok");
        n += 1;
        let rec = g.record(n).await;
        assert_eq!(rec["protocol"], protocol);
        assert_eq!(rec["tls"], "TLSv1.3");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["group"], "office");
        assert_eq!(rec["rule"], "admin");
        assert_eq!(rec["client_ip"], "127.0.0.2");
        let seen = g.upstream.last();
        assert_eq!(seen.target, "/wp-admin/");
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{protocol}");
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.2"), "{protocol}");
        // h2 carries the host in :authority; the cart still gets a Host header.
        assert_eq!(seen.header("host"), Some("shop.test"), "{protocol}");
        assert_eq!(rec["host"], "shop.test", "{protocol}");

        // An unknown client is denied there, and asked to log in on the site.
        let r = tls_get("127.0.0.3", g.addr(), &ca, alpn, "/wp-admin/").await;
        assert_eq!(r.status, 403, "{protocol}");
        n += 1;
        let rec = g.record(n).await;
        assert_eq!((rec["protocol"].as_str(), rec["decision"].as_str()), (Some(protocol), Some("deny")));
        assert_eq!(rec["tls"], "TLSv1.3");
        let r = tls_get("127.0.0.3", g.addr(), &ca, alpn, "/shop").await;
        assert_eq!(r.status, 401, "{protocol}");
        let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(challenge.starts_with("Basic realm="), "{protocol}: {challenge:?}");
        n += 1;
        let rec = g.record(n).await;
        assert_eq!((rec["protocol"].as_str(), rec["decision"].as_str()), (Some(protocol), Some("challenge")));
    }
    // Only the two admitted requests reached the cart.
    assert_eq!(g.upstream.count(), 2);

    // A login over h2 works like over HTTP/1.1 and the guard's credentials are stripped.
    let tls = tls_connect("127.0.0.3", g.addr(), default_client(&ca, h2), "shop.test").await;
    let Http::H2(mut send) = Http::open(tls).await else { panic!("h2 expected") };
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE}"));
    let req = http::Request::get("https://shop.test/shop")
        .header("authorization", format!("Basic {token}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let rec = g.record(n + 1).await;
    assert_eq!((rec["decision"].as_str(), rec["user"].as_str()), (Some("auth_ok"), Some("alice")));
    assert_eq!(rec["protocol"], "HTTP/2");
    assert_eq!(g.upstream.last().header("authorization"), None);
    assert_eq!(g.upstream.count(), 3);
}

#[tokio::test]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let shop = ca.leaf(&["shop.test", "127.0.0.1"], "shop.test");
    let other = ca.leaf(&["other.test"], "other.test");
    let g = tls_guard(&[shop.write(dir.path(), "shop"), other.write(dir.path(), "other")], "").await;
    let ca_der = ca.der();
    assert_ne!(shop.der, other.der);

    // Named: each name gets its own certificate, verified against the CA.
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "other.test").await;
    assert_eq!(peer_leaf(&tls), other.der, "SNI other.test must get the other.test certificate");
    let mut http = Http::open(tls).await;
    assert_eq!(http.get("/wp-admin/").await.status, 200);
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "shop.test").await;
    assert_eq!(peer_leaf(&tls), shop.der);
    // Case-insensitive, as DNS names are.
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "OTHER.test").await;
    assert_eq!(peer_leaf(&tls), other.der);

    // No SNI at all: the first certificate.
    let mut cfg = default_client(&ca_der, &[]);
    cfg.enable_sni = false;
    let tls = tls_connect("127.0.0.2", g.addr(), cfg, "shop.test").await;
    assert_eq!(peer_leaf(&tls), shop.der, "no SNI must get the default (first) certificate");
    // An IP address is never sent as SNI either.
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "127.0.0.1").await;
    assert_eq!(peer_leaf(&tls), shop.der);

    // An unknown name: still the default certificate (which then fails the client's name check).
    let mut cfg = default_client(&ca_der, &[]);
    cfg.dangerous().set_certificate_verifier(Arc::new(AcceptAny(provider())));
    let tls = tls_connect("127.0.0.2", g.addr(), cfg, "nobody.test").await;
    assert_eq!(peer_leaf(&tls), shop.der, "unknown SNI must get the default (first) certificate");
    let err = try_tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "nobody.test").await.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // /status lists both certificates with their names.
    let status = status_json(g.admin()).await;
    let certs = status["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{certs:?}");
    assert_eq!(certs[0]["names"], serde_json::json!(["shop.test", "127.0.0.1"]));
    assert_eq!(certs[1]["names"], serde_json::json!(["other.test"]));
}

/// `unknown_sni: reject`: a name the listener has no certificate for (or no SNI at
/// all) fails the handshake; known names are served as usual.
#[tokio::test]
async fn unknown_sni_reject_fails_the_handshake_and_serves_known_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let shop = ca.leaf(&["shop.test"], "shop.test");
    let listeners = tls_listener(&[shop.write(dir.path(), "shop")]) + "    unknown_sni: reject\n";
    let g = TestGuard::start_with(GuardOptions { listeners, ..Default::default() }).await;
    let ca_der = ca.der();

    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[]), "shop.test").await;
    assert_eq!(peer_leaf(&tls), shop.der);
    assert_eq!(Http::open(tls).await.get("/wp-admin/").await.status, 200);

    let mut any = default_client(&ca_der, &[]);
    any.dangerous().set_certificate_verifier(Arc::new(AcceptAny(provider())));
    let err = try_tls_connect("127.0.0.2", g.addr(), any.clone(), "nobody.test").await.unwrap_err();
    assert!(!err.to_string().contains("not valid for name"), "refused by the server, not by the client: {err}");
    let mut no_sni = any;
    no_sni.enable_sni = false;
    assert!(try_tls_connect("127.0.0.2", g.addr(), no_sni, "shop.test").await.is_err(), "no SNI is unknown too");
    assert_eq!(g.upstream.count(), 1);
    // Failed handshakes are counted by reason.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = admin_get(g.admin(), "/metrics", "text/plain").await.1;
        if metrics.contains("cartguard_connection_refusals_total{reason=\"tls_handshake\"} 2\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains("cartguard_connection_refusals_total{reason=\"tls_handshake\"} 2\n"), "{metrics}");
}

/// The framing check runs inside TLS too: an ambiguous head is refused with 400
/// and one record, and nothing reaches the cart.
#[tokio::test]
async fn ambiguous_framing_over_tls_is_refused_with_400() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let shop = ca.leaf(&["shop.test"], "shop.test");
    let g = tls_guard(&[shop.write(dir.path(), "shop")], "").await;
    let h1: &[&[u8]] = &[b"http/1.1"];
    let mut tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca.der(), h1), "shop.test").await;
    tls.write_all(b"GET /wp-admin/ HTTP/1.1\r\nHost: shop.test\r\n\r\nPOST /wp-admin/ HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await.expect("connection left open");
    let text = String::from_utf8_lossy(&buf);
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "400"], "{text}");
    assert_eq!(g.upstream.count(), 1);
    let rec = g.record(2).await;
    assert!(rec["error"].as_str().is_some_and(|e| e.contains("both Content-Length and Transfer-Encoding")), "{rec}");
    assert_eq!(rec["tls"], "TLSv1.3", "{rec}");
}

#[tokio::test]
async fn tls12_client_is_served_and_tls11_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let cert = ca.leaf(&["shop.test", "127.0.0.1"], "shop.test").write(dir.path(), "shop");
    let g = tls_guard(&[cert], "").await;
    let ca_der = ca.der();

    let cfg = client_config(&ca_der, &[b"http/1.1"], &[&rustls::version::TLS12]);
    let tls = tls_connect("127.0.0.2", g.addr(), cfg, "shop.test").await;
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(Http::open(tls).await.get("/wp-admin/").await.status, 200);
    let rec = g.record(1).await;
    assert_eq!(rec["tls"], "TLSv1.2");
    assert_eq!(rec["protocol"], "HTTP/1.1");

    // rustls cannot speak TLS 1.1; use the openssl client when the machine has one.
    for (flag, name) in [("-tls1_1", "TLS 1.1"), ("-tls1", "TLS 1.0")] {
        // Off the runtime's thread: the guard runs on this runtime too.
        let addr = g.addr().to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", flag, "-cipher", "DEFAULT:@SECLEVEL=0", "-connect", &addr])
                .args(["-servername", "shop.test"])
                .stdin(std::process::Stdio::null())
                .output()
        })
        .await
        .unwrap();
        let Ok(out) = out else {
            println!("note: openssl not found; skipping the {name} refusal check");
            return;
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if text.contains("no protocols available") || text.contains("unknown option") {
            println!("note: this openssl cannot offer {name}; skipping that check:\n{text}");
            continue;
        }
        assert!(!out.status.success(), "{name} handshake must fail:\n{text}");
        // The server refused at once with an alert, before sending any certificate.
        assert!(text.contains("SSL alert number"), "{name}: expected an alert from the server:\n{text}");
        assert!(text.contains("no peer certificate available"), "{name}:\n{text}");
        assert!(!text.contains("BEGIN CERTIFICATE"), "{name}:\n{text}");
    }
    // The refusals disturbed nothing.
    let cfg = client_config(&ca_der, &[b"h2"], rustls::DEFAULT_VERSIONS);
    let tls = tls_connect("127.0.0.2", g.addr(), cfg, "shop.test").await;
    assert_eq!(Http::open(tls).await.get("/wp-admin/").await.status, 200);
    assert_eq!(g.upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_serves_new_handshakes_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let first = ca.leaf(&["shop.test"], "first");
    let (cert_path, key_path) = first.write(dir.path(), "shop");
    let g = tls_guard(&[(cert_path.clone(), key_path.clone())], "").await;
    let ca_der = ca.der();
    let h1: &[&[u8]] = &[b"http/1.1"];

    // A keep-alive HTTP/1.1 and an h2 connection opened before the reload.
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, h1), "shop.test").await;
    assert_eq!(peer_leaf(&tls), first.der);
    let mut old_h1 = Http::open(tls).await;
    assert!(matches!(old_h1, Http::H1(_)));
    assert_eq!(old_h1.get("/wp-admin/a").await.status, 200);
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[b"h2"]), "shop.test").await;
    let mut old_h2 = Http::open(tls).await;
    assert!(matches!(old_h2, Http::H2(_)));
    assert_eq!(old_h2.get("/wp-admin/b").await.status, 200);

    // Renewal: new key, new CN, one more name; then reload.
    let renewed = ca.leaf(&["shop.test", "www.shop.test"], "renewed");
    assert_ne!(renewed.der, first.der);
    renewed.write(dir.path(), "shop");
    g.guard().reload().expect("reload with a good certificate must succeed");

    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, h1), "shop.test").await;
    assert_eq!(peer_leaf(&tls), renewed.der, "a new handshake must see the renewed certificate");
    assert_eq!(Http::open(tls).await.get("/wp-admin/c").await.status, 200);
    // The connections opened before the reload keep working.
    assert_eq!(old_h1.get("/wp-admin/d").await.status, 200);
    assert_eq!(old_h2.get("/wp-admin/e").await.status, 200);
    let status = status_json(g.admin()).await;
    assert_eq!(status["certificates"][0]["names"], serde_json::json!(["shop.test", "www.shop.test"]));
    assert_eq!(status["config"]["last_reload_error"], serde_json::Value::Null);

    // A broken certificate file: the reload fails, names the file, and the renewed certificate stays.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n").unwrap();
    let err = g.guard().reload().expect_err("a broken certificate must fail the reload");
    assert!(matches!(err, cartguard::ReloadError::Certificates(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, h1), "shop.test").await;
    assert_eq!(peer_leaf(&tls), renewed.der, "a failed reload must keep the previous certificate");
    assert_eq!(Http::open(tls).await.get("/wp-admin/f").await.status, 200);
    let status = status_json(g.admin()).await;
    let last = status["config"]["last_reload_error"].as_str().expect("last_reload_error must be set");
    assert!(last.contains(&cert_path.display().to_string()), "{last}");
    assert_eq!(status["certificates"][0]["names"], serde_json::json!(["shop.test", "www.shop.test"]));

    // A certificate with a key that does not match it is refused too.
    std::fs::write(&cert_path, &renewed.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();
    assert!(g.guard().reload().is_err(), "a key that does not match the certificate must fail the reload");
    // A missing key file as well.
    std::fs::remove_file(&key_path).unwrap();
    let err = g.guard().reload().expect_err("a missing key must fail the reload");
    assert!(matches!(err, cartguard::ReloadError::Certificates(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, h1), "shop.test").await;
    assert_eq!(peer_leaf(&tls), renewed.der);

    // Fixed files: the next reload succeeds and clears the error.
    let third = ca.leaf(&["shop.test"], "third");
    third.write(dir.path(), "shop");
    g.guard().reload().unwrap();
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, h1), "shop.test").await;
    assert_eq!(peer_leaf(&tls), third.der);
    assert_eq!(status_json(g.admin()).await["config"]["last_reload_error"], serde_json::Value::Null);
    assert_eq!(old_h1.get("/wp-admin/g").await.status, 200);
    assert_eq!(g.upstream.count(), 7);
}

/// A reload whose policy is good but whose certificate is broken changes nothing:
/// the old policy and certificate keep serving and /status says the reload failed.
#[tokio::test]
async fn reload_with_a_broken_certificate_changes_neither_policy_nor_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let first = ca.leaf(&["shop.test"], "first");
    let paths = first.write(dir.path(), "shop");
    let cert_path = paths.0.clone();
    let g = tls_guard(&[paths], "").await;
    let ca_der = ca.der();
    let h1: &[&[u8]] = &[b"http/1.1"];
    let feed = |g: &TestGuard| {
        let addr = g.addr();
        let ca_der = ca_der.clone();
        async move {
            let tls = tls_connect("127.0.0.9", addr, default_client(&ca_der, h1), "shop.test").await;
            (peer_leaf(&tls), Http::open(tls).await.get("/feed").await.status)
        }
    };
    assert_eq!(feed(&g).await, (first.der.clone(), 200));

    // The new config closes /feed to strangers, and the renewed certificate file is broken.
    g.rewrite_config(|c| c.replace("path_prefix: /feed\n    others: open", "path_prefix: /feed\n    others: deny"));
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    let err = g.guard().reload().expect_err("a broken certificate must fail the whole reload");
    assert!(matches!(err, cartguard::ReloadError::Certificates(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");
    assert_eq!(feed(&g).await, (first.der.clone(), 200), "neither the policy nor the certificate may change");
    let status = status_json(g.admin()).await;
    let last = status["config"]["last_reload_error"].as_str().unwrap_or_default();
    assert!(last.contains(&cert_path.display().to_string()), "{status}");

    // Fixed certificate: now both take effect together.
    let renewed = ca.leaf(&["shop.test"], "renewed");
    renewed.write(dir.path(), "shop");
    g.guard().reload().expect("a good config reloads");
    assert_eq!(feed(&g).await, (renewed.der.clone(), 403));
    assert_eq!(status_json(g.admin()).await["config"]["last_reload_error"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cart ca");
    let ca_path = ca.write(dir.path(), "ca");
    let wrong_path = Ca::new("someone else").write(dir.path(), "wrong-ca");
    let cart = TlsUpstream::start(&ca.leaf(&["127.0.0.1", "localhost"], "cart")).await;
    let url = format!("https://127.0.0.1:{}", cart.addr.port());

    // The right CA: forwarded over TLS.
    let g = guard_to_https(url.clone(), format!("  tls:\n    ca: \"{}\"\n", ca_path.display())).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/wp-admin/orders").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls upstream ok");
    assert_eq!(cart.seen.lock().unwrap().last().map(String::as_str), Some("/wp-admin/orders"));
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["upstream_status"], 200);
    // A refusal still never reaches the cart.
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/wp-admin/").send().await.status, 403);
    assert_eq!(cart.count(), 1);
    g.shutdown().await;

    // The wrong CA: 502, nothing forwarded, and the log says why.
    let handshakes = cart.handshakes.load(Ordering::SeqCst);
    let g = guard_to_https(url.clone(), format!("  tls:\n    ca: \"{}\"\n", wrong_path.display())).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/wp-admin/orders").send().await;
    assert_eq!(r.status, 502, "{}", r.text());
    let rec = g.record(1).await;
    assert_eq!(rec["decision"], "upstream_error");
    assert_eq!(rec["status"], 502);
    let error = rec["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("certificate"), "{error}");
    assert!(error.contains("unknownissuer") || error.contains("unknown issuer"), "{error}");
    assert_eq!(cart.count(), 1, "nothing may be sent to an unverified upstream");
    assert_eq!(cart.handshakes.load(Ordering::SeqCst), handshakes);
    g.shutdown().await;

    // No upstream.tls: the system roots don't know a private CA.
    let g = guard_to_https(url.clone(), String::new()).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/wp-admin/orders").send().await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(g.record(1).await["decision"], "upstream_error");
    assert_eq!(cart.count(), 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_server_name_override_is_used_for_verification() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cart ca");
    let ca_path = ca.write(dir.path(), "ca");
    // The cart's certificate names only cart.internal, not the address the guard dials.
    let cart = TlsUpstream::start(&ca.leaf(&["cart.internal"], "cart.internal")).await;
    let url = format!("https://127.0.0.1:{}", cart.addr.port());

    let g = guard_to_https(url.clone(), format!("  tls:\n    ca: \"{}\"\n", ca_path.display())).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await;
    assert_eq!(r.status, 502, "the name check must fail without server_name: {}", r.text());
    let error = g.record(1).await["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("certificate") && error.contains("name"), "{error}");
    assert_eq!(cart.count(), 0);
    g.shutdown().await;

    let block = format!("  tls:\n    ca: \"{}\"\n    server_name: cart.internal\n", ca_path.display());
    let g = guard_to_https(url, block).await;
    let r = client_from("127.0.0.2").get(g.addr(), "/wp-admin/").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls upstream ok");
    assert_eq!(cart.count(), 1);
    assert_eq!(g.record(1).await["decision"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_gets_no_http_answer_and_disturbs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let cert = ca.leaf(&["shop.test"], "shop.test").write(dir.path(), "shop");
    let g = tls_guard(&[cert], "").await;
    let ca_der = ca.der();

    // A connection established before the bad input.
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[b"http/1.1"]), "shop.test").await;
    let mut before = Http::open(tls).await;
    assert_eq!(before.get("/wp-admin/1").await.status, 200);

    let mut s = connect_from("127.0.0.3".parse().unwrap(), g.addr()).await;
    s.write_all(b"GET /wp-admin/ HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
    let (buf, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the guard must close a plain-HTTP connection on its TLS port");
    assert!(parse_reply(&buf).is_none() && !buf.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&buf));

    // The guard keeps serving both the old connection and a new one.
    assert_eq!(before.get("/wp-admin/2").await.status, 200);
    assert_eq!(tls_get("127.0.0.2", g.addr(), &ca_der, &[b"h2"], "/wp-admin/3").await.status, 200);
    assert_eq!(g.upstream.count(), 3, "the plain request must not be forwarded");
    // No access record for a failed handshake: only the three requests.
    let lines = g.raw_log_lines(3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_client_hello_does_not_disturb_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let cert = ca.leaf(&["shop.test"], "shop.test").write(dir.path(), "shop");
    let g = tls_guard(&[cert], "").await;
    let ca_der = ca.der();
    let tls = tls_connect("127.0.0.2", g.addr(), default_client(&ca_der, &[b"h2"]), "shop.test").await;
    let mut before = Http::open(tls).await;
    assert_eq!(before.get("/wp-admin/1").await.status, 200);

    // The start of a real ClientHello record (handshake, TLS 1.0 record version, 512 bytes),
    // cut after 10 bytes: once closed at once, once left hanging.
    let truncated: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let mut closed_now = connect_from("127.0.0.3".parse().unwrap(), g.addr()).await;
    closed_now.write_all(truncated).await.unwrap();
    drop(closed_now);
    let mut hanging = connect_from("127.0.0.3".parse().unwrap(), g.addr()).await;
    hanging.write_all(truncated).await.unwrap();
    // Ten bytes of noise.
    let mut noise = connect_from("127.0.0.4".parse().unwrap(), g.addr()).await;
    noise.write_all(&[0x9c, 0x01, 0xff, 0x00, 0x42, 0x13, 0x37, 0xde, 0xad, 0x00]).await.unwrap();
    let (buf, closed) = read_until_close(&mut noise, Duration::from_secs(5)).await;
    assert!(closed && parse_reply(&buf).is_none(), "{buf:?}");

    // While the truncated hello hangs, others are served.
    assert_eq!(before.get("/wp-admin/2").await.status, 200);
    assert_eq!(tls_get("127.0.0.2", g.addr(), &ca_der, &[b"http/1.1"], "/wp-admin/3").await.status, 200);
    assert_eq!(tls_get("127.0.0.2", g.addr(), &ca_der, &[b"h2"], "/wp-admin/4").await.status, 200);
    drop(hanging);
    assert_eq!(before.get("/wp-admin/5").await.status, 200);
    assert_eq!(g.upstream.count(), 5);
}

#[tokio::test]
async fn silent_client_is_cut_after_the_tls_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let cert = ca.leaf(&["shop.test"], "shop.test").write(dir.path(), "shop");
    let g = tls_guard(&[cert], "  tls_handshake_timeout: 500ms\n").await;

    let started = Instant::now();
    let mut silent = connect_from("127.0.0.3".parse().unwrap(), g.addr()).await;
    let (buf, closed) = read_until_close(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a client that sends nothing must be cut after limits.tls_handshake_timeout");
    assert!(buf.is_empty(), "{buf:?}");
    // It was the handshake timeout, not an immediate refusal.
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());

    // A slow but complete ClientHello within the timeout is fine.
    let r = tls_get("127.0.0.2", g.addr(), &ca.der(), &[b"h2"], "/wp-admin/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn status_lists_certificates_with_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let soon = ca.leaf_until(&["shop.test", "www.shop.test"], "shop.test", Some(30)).write(dir.path(), "soon");
    let later = ca.leaf(&["other.test"], "other.test").write(dir.path(), "later");
    let g = tls_guard(&[soon.clone(), later], "").await;

    let status = status_json(g.admin()).await;
    let certs = status["certificates"].as_array().expect("certificates must be a list");
    assert_eq!(certs.len(), 2, "{certs:?}");
    let c = &certs[0];
    assert_eq!(c["names"], serde_json::json!(["shop.test", "www.shop.test"]));
    assert_eq!(c["file"], soon.0.display().to_string());
    let days = c["days_left"].as_i64().expect("days_left must be a number");
    assert!((28..=30).contains(&days), "days_left {days}");
    let (y, m, d) = date_in_days(30);
    let not_after = c["not_after"].as_str().unwrap();
    assert!(not_after.starts_with(&format!("{y:04}-{m:02}-{d:02}")), "{not_after}");
    assert!(certs[1]["days_left"].as_i64().unwrap() > 365 * 100, "{:?}", certs[1]);
    assert_eq!(certs[1]["names"], serde_json::json!(["other.test"]));
    assert_eq!(status["listeners"][0]["tls"], true);

    // The metrics carry the expiry too.
    let (code, metrics) = admin_get(g.admin(), "/metrics", "text/plain").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("cartguard_certificate_expiry_timestamp_seconds{"), "{metrics}");
}

#[tokio::test]
async fn check_warns_about_expiring_or_uncovering_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let upstream = Upstream::start().await;
    let write_config = |days: Option<i64>, stem: &str, upstream_extra: &str| {
        let cert = ca.leaf_until(&["shop.test", "*.shop.test"], "shop.test", days).write(dir.path(), stem);
        let o = GuardOptions {
            listeners: tls_listener(&[cert]),
            upstream_extra: upstream_extra.into(),
            ..Default::default()
        };
        let path = dir.path().join(format!("{stem}.yaml"));
        std::fs::write(&path, TestGuard::yaml(&o, &upstream, &dir)).unwrap();
        path
    };
    let check = |path: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartguard"))
            .args(["check", "--quiet", "--config"])
            .arg(path)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (ok, stderr) = check(&write_config(Some(5), "soon", ""));
    assert!(ok, "an expiring certificate is a warning, not an error: {stderr}");
    assert!(stderr.contains("expires in"), "{stderr}");
    assert!(stderr.contains("soon.pem"), "{stderr}");

    let (ok, stderr) = check(&write_config(Some(60), "fine", ""));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("expires in"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    // A configured host the certificates don't name is a warning; one they cover is not.
    let (ok, stderr) = check(&write_config(None, "uncovered", "  host: cart.example.org\n"));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("covers the configured host \"cart.example.org\""), "{stderr}");
    let (ok, stderr) = check(&write_config(None, "covered", "  host: www.shop.test\n"));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("covers the configured host"), "{stderr}");

    // A missing certificate file is an error.
    let path = write_config(None, "gone", "");
    std::fs::remove_file(dir.path().join("gone.pem")).unwrap();
    let (ok, stderr) = check(&path);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("gone.pem"), "{stderr}");
}

/// A plain listener with `redirect_https` sends everyone to https,
/// except clients a rule admits by group (integrations configured with http:// URLs).
#[tokio::test]
async fn redirect_https_sends_others_to_https_but_serves_allowlisted_groups() {
    let g = TestGuard::start_with(GuardOptions {
        listeners: "  - addr: \"127.0.0.1:0\"\n    redirect_https: true\n".into(),
        ..Default::default()
    })
    .await;
    let r = client_from("127.0.0.3").get(g.addr(), "/shop/cart?item=1").basic("alice", ALICE).send().await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://shop.test/shop/cart?item=1"));
    assert_eq!(g.record(1).await["decision"], "redirect");
    let r = client_from("127.0.0.100")
        .get(g.addr(), "/wp-json/wc/v3/orders")
        .header("X-Forwarded-For", "50.18.194.14")
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(g.upstream.count(), 1, "only the allowlisted request reaches the cart");
    assert_eq!(g.upstream.last().header("x-forwarded-proto"), Some("http"));
}
