//! The answers the CA is waiting for while an order is open: a TLS-ALPN-01
//! certificate per name (RFC 8737) and an HTTP-01 body per token (RFC 8555 §8.3).
//!
//! An answer exists only while its `Posted` handle lives, so a finished or
//! failed order leaves nothing behind for a stranger to read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::crypto_provider;

/// The ALPN protocol a TLS-ALPN-01 validation connects with.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path HTTP-01 answers live under.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Default)]
pub struct Challenges {
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    http: Mutex<HashMap<String, String>>,
}

/// Removes its answer when dropped.
pub struct Posted<'a> {
    challenges: &'a Challenges,
    kind: Kind,
}

enum Kind {
    TlsAlpn(String),
    Http(String),
}

impl Challenges {
    /// The validation certificate for `name`, if an order is waiting on it.
    pub fn tls_alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned()
    }

    /// The key authorization for an HTTP-01 token, if an order is waiting on it.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }

    /// A self-signed certificate for `name` carrying the acmeIdentifier extension
    /// with the SHA-256 of the key authorization.
    pub fn post_tls_alpn(&self, name: &str, digest: &[u8]) -> Result<Posted<'_>, String> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
            .map_err(|e| format!("tls-alpn-01 certificate for {name}: {e}"))?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(|e| format!("tls-alpn-01 key: {e}"))?;
        let cert = params.self_signed(&key).map_err(|e| format!("tls-alpn-01 certificate for {name}: {e}"))?;
        let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // Not from_der: its key check parses the certificate and refuses the critical acmeIdentifier.
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(der_key)
            .map_err(|e| format!("tls-alpn-01 key for {name}: {e}"))?;
        let certified = CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signing_key);
        self.tls_alpn.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Arc::new(certified));
        Ok(Posted { challenges: self, kind: Kind::TlsAlpn(name.to_string()) })
    }

    pub fn post_http(&self, token: &str, key_authorization: &str) -> Posted<'_> {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).insert(token.to_string(), key_authorization.to_string());
        Posted { challenges: self, kind: Kind::Http(token.to_string()) }
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        match &self.kind {
            Kind::TlsAlpn(name) => {
                self.challenges.tls_alpn.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            }
            Kind::Http(token) => {
                self.challenges.http.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Challenges;

    #[test]
    fn answers_exist_only_while_posted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = Challenges::default();
        {
            let _a = c.post_http("tok", "tok.thumb");
            let _b = c.post_tls_alpn("shop.example", &[7u8; 32]).expect("challenge certificate");
            assert_eq!(c.http_answer("tok").as_deref(), Some("tok.thumb"));
            assert!(c.tls_alpn_cert("SHOP.example.").is_some());
            assert!(c.http_answer("other").is_none());
        }
        assert!(c.http_answer("tok").is_none());
        assert!(c.tls_alpn_cert("shop.example").is_none());
    }
}
