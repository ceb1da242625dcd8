//! A real ACME CA on loopback for the automatic-HTTPS tests: Debian's `pebble`
//! with `pebble-challtestsrv` as its DNS, which answers every name with
//! 127.0.0.1. Pebble's own HTTPS certificate comes from a CA made here with
//! rcgen; its validation ports point at the guard's test listeners. Both
//! processes are killed when the `Pebble` is dropped.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ports that were free a moment ago (TCP and UDP), for processes that need them fixed up front.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where pebble's validations go: the guard's plain and TLS listener ports.
pub struct Targets {
    pub http_port: u16,
    pub tls_port: u16,
}

pub struct Pebble {
    children: Vec<Child>,
    /// Holds the config, pebble's certificate and the CA the guard must trust.
    pub dir: tempfile::TempDir,
    pub port: u16,
    management: u16,
    /// The root that signs pebble's HTTPS certificate (the guard's `acme.ca`).
    pub ca: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Pebble {
    /// Starts pebble on a free port and waits until it accepts connections.
    /// `validity`: the lifetime of the certificates it issues.
    pub fn start(targets: &Targets, validity: Option<Duration>) -> Pebble {
        let mut p = Pebble::prepare(targets, validity);
        p.run();
        p
    }

    /// Writes the config and certificates and picks the ports, but starts nothing:
    /// until `run`, the directory URL refuses connections (a CA that is down).
    pub fn prepare(targets: &Targets, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_der) = write_certs(dir.path());
        let (port, management) = (free_port(), free_port());
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("pebble.crt"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": targets.http_port,
            "tlsPort": targets.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write pebble config");
        Pebble { children: Vec::new(), dir, port, management, ca, ca_der }
    }

    /// Starts the mock DNS and pebble, and waits for both.
    pub fn run(&mut self) {
        let (dns, dns_management) = (free_port(), free_port());
        let dir = self.dir.path();
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        self.children.push(dns_server);
        wait_tcp(dns_management, &self.dir);
        let pebble = Command::new("pebble")
            .args(["-config", &dir.join("pebble.json").display().to_string()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}"), "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        self.children.push(pebble);
        wait_tcp(self.port, &self.dir);
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root pebble signs with (made fresh at each start), from its management API.
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = https_get(self.management, &self.ca_der, "/roots/0").await;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pebble root PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA and a leaf for 127.0.0.1/localhost: pebble serves the leaf, the guard trusts the CA.
fn write_certs(dir: &Path) -> (PathBuf, CertificateDer<'static>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "cartguard test CA for pebble");
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(params, ca_key);
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    std::fs::write(dir.join("pebble.crt"), leaf.pem()).expect("write");
    std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).expect("write");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("write");
    (ca, ca_cert.der().clone())
}

fn wait_tcp(port: u16, dir: &tempfile::TempDir) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let logs: String = std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log" || x == "err"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            panic!("nothing listens on 127.0.0.1:{port} after 20s:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET over HTTPS to 127.0.0.1:`port`, trusting `ca`; returns the body.
async fn https_get(port: u16, ca: &CertificateDer<'static>, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("TLS to pebble");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let reply = crate::common::parse_reply(&buf).expect("HTTP reply from pebble");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}
