//! The validated `acme:` section of a TLS listener: which names, which CA,
//! where the account and certificates live, and which challenges may be used.
//!
//! Only syntax and consistency are checked here; whether the state folder is
//! writable is checked by `acme::storage` (at start and by `cartguard check`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawAcme;
use super::{ConfigError, Validator};

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the CA may check that the guard answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// On the TLS listener itself (RFC 8737): no port 80 needed.
    TlsAlpn01,
    /// On a plain listener, under /.well-known/acme-challenge/.
    Http01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// Lower-case DNS names, the first one names the files in `state_dir`.
    pub domains: Vec<String>,
    /// `mailto:` contact for the CA's expiry and policy mails.
    pub email: Option<String>,
    pub directory: String,
    pub state_dir: PathBuf,
    /// In order of preference.
    pub challenges: Vec<Challenge>,
    pub ca: Option<PathBuf>,
    pub retry_backoff: Duration,
}

impl Validator<'_> {
    /// `has_plain`: some listener serves plain HTTP, so HTTP-01 can be answered.
    pub(super) fn acme(&self, i: usize, raw: &RawAcme, has_plain: bool) -> Result<AcmeConfig, ConfigError> {
        let key = |k: &str| format!("listen[{i}].acme.{k}");
        if raw.domains.is_empty() {
            return Err(self.err(key("domains"), "domains", "at least one domain name is needed"));
        }
        let mut seen = HashSet::new();
        let mut domains = Vec::new();
        for d in &raw.domains {
            let name = d.trim_end_matches('.').to_ascii_lowercase();
            if let Err(why) = check_domain(&name) {
                return Err(self.err(key("domains"), d, format!("{d:?}: {why}")));
            }
            if !seen.insert(name.clone()) {
                return Err(self.err(key("domains"), d, format!("{d:?} is listed twice")));
            }
            domains.push(name);
        }
        let email = match &raw.email {
            Some(e) if !valid_email(e) => {
                return Err(self.err(key("email"), e, format!("{e:?} is not an e-mail address")));
            }
            Some(e) => Some(format!("mailto:{e}")),
            None => None,
        };
        let directory = match raw.directory.as_str() {
            "letsencrypt" | "production" => LETS_ENCRYPT.to_string(),
            "staging" => LETS_ENCRYPT_STAGING.to_string(),
            url if url.starts_with("https://") && url.parse::<http::Uri>().is_ok() => url.to_string(),
            other => {
                return Err(self.err(
                    key("directory"),
                    other,
                    format!("{other:?}: use letsencrypt, staging, or the https:// URL of an ACME directory"),
                ))
            }
        };
        let challenges = match &raw.challenges {
            None if has_plain => vec![Challenge::TlsAlpn01, Challenge::Http01],
            None => vec![Challenge::TlsAlpn01],
            Some(list) => {
                let mut out = Vec::new();
                for c in list {
                    let challenge = match c.as_str() {
                        "tls-alpn-01" => Challenge::TlsAlpn01,
                        "http-01" if has_plain => Challenge::Http01,
                        "http-01" => {
                            return Err(self.err(
                                key("challenges"),
                                c,
                                "http-01 needs a plain (non-TLS) listener on port 80 for the CA to reach",
                            ))
                        }
                        _ => {
                            return Err(self.err(
                                key("challenges"),
                                c,
                                format!("{c:?}: the challenges are tls-alpn-01 and http-01"),
                            ))
                        }
                    };
                    if !out.contains(&challenge) {
                        out.push(challenge);
                    }
                }
                if out.is_empty() {
                    return Err(self.err(key("challenges"), "challenges", "at least one challenge is needed"));
                }
                out
            }
        };
        if raw.retry_backoff.0.is_zero() {
            return Err(self.err(key("retry_backoff"), "retry_backoff", "must be more than 0s"));
        }
        Ok(AcmeConfig {
            domains,
            email,
            directory,
            state_dir: self.relative(&raw.state_dir),
            challenges,
            ca: raw.ca.as_ref().map(|p| self.relative(p)),
            retry_backoff: raw.retry_backoff.0,
        })
    }
}

/// A name a CA can validate by HTTP-01 or TLS-ALPN-01: no wildcard, no address.
fn check_domain(name: &str) -> Result<(), &'static str> {
    if name.starts_with("*.") {
        return Err("wildcard names need the DNS-01 challenge, which cartguard does not answer");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address, not a domain name");
    }
    if name.is_empty() || name.len() > 253 {
        return Err("not a domain name");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err("not a domain name (letters, digits, '-' and dots; IDNs in their xn-- form)");
    }
    Ok(())
}

fn valid_email(e: &str) -> bool {
    match e.split_once('@') {
        Some((user, host)) => {
            !user.is_empty() && host.contains('.') && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{check_domain, Challenge, LETS_ENCRYPT, LETS_ENCRYPT_STAGING};
    use crate::config::Config;

    /// A config whose listeners are `listen` (YAML list items).
    fn with_listeners(listen: &str) -> Result<Config, String> {
        let text = format!(
            "listen:\n{listen}upstream:\n  url: \"http://127.0.0.1:8081\"\nrules:\n  - name: site\n    path_prefix: /\n    others: auth\n"
        );
        Config::from_yaml(&text, Path::new("/etc/cartguard/t.yaml")).map_err(|e| e.to_string())
    }

    const ACME: &str = "  - addr: \"[::]:443\"\n    acme:\n      domains: [Shop.Example.com]\n      state_dir: acme\n";

    #[test]
    fn acme_defaults_to_lets_encrypt_and_tls_alpn_and_adds_http01_with_a_plain_listener() {
        let c = with_listeners(ACME).expect("valid");
        let a = c.listeners[0].acme.as_ref().expect("acme");
        assert!(c.listeners[0].is_tls());
        assert_eq!(a.domains, ["shop.example.com"]);
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.challenges, [Challenge::TlsAlpn01]);
        assert_eq!(a.state_dir, Path::new("/etc/cartguard/acme"), "relative to the config file");
        let c = with_listeners(&format!("{ACME}  - addr: \"[::]:80\"\n")).expect("valid");
        let a = c.listeners[0].acme.as_ref().expect("acme");
        assert_eq!(a.challenges, [Challenge::TlsAlpn01, Challenge::Http01]);
        let staging = with_listeners(&format!("{ACME}      directory: staging\n      email: a@shop.example.com\n"))
            .expect("valid");
        let a = staging.listeners[0].acme.as_ref().expect("acme");
        assert_eq!(a.directory, LETS_ENCRYPT_STAGING);
        assert_eq!(a.email.as_deref(), Some("mailto:a@shop.example.com"));
    }

    #[test]
    fn acme_mistakes_are_errors_naming_the_key() {
        let cases = [
            (format!("{ACME}    tls: {{cert: a.pem, key: b.pem}}\n"), "listen[0].acme", "not both"),
            (format!("{ACME}      challenges: [http-01]\n"), "listen[0].acme.challenges", "plain"),
            (format!("{ACME}      challenges: [dns-01]\n"), "listen[0].acme.challenges", "dns-01"),
            (format!("{ACME}      directory: http://ca.example/dir\n"), "listen[0].acme.directory", "https://"),
            (format!("{ACME}      email: nobody\n"), "listen[0].acme.email", "e-mail"),
            (ACME.replace("[Shop.Example.com]", "[\"*.example.com\"]"), "listen[0].acme.domains", "DNS-01"),
            (ACME.replace("[Shop.Example.com]", "[a.example, A.example]"), "listen[0].acme.domains", "twice"),
            (ACME.replace("[Shop.Example.com]", "[]"), "listen[0].acme.domains", "at least one"),
            (format!("{ACME}    redirect_https: true\n"), "listen[0].redirect_https", "plain"),
            (format!("{ACME}      stat_dir: x\n"), "", "stat_dir"),
        ];
        for (yaml, key, words) in cases {
            let e = with_listeners(&yaml).expect_err(&yaml);
            assert!(e.contains(key) && e.contains(words), "{yaml}\n→ {e}");
        }
    }

    #[test]
    fn acme_names_must_be_plain_dns_names() {
        assert!(check_domain("shop.example.com").is_ok());
        assert!(check_domain("xn--bcher-kva.example").is_ok());
        assert!(check_domain("*.example.com").is_err());
        assert!(check_domain("192.0.2.1").is_err());
        assert!(check_domain("shop..example.com").is_err());
        assert!(check_domain("-shop.example.com").is_err());
        assert!(check_domain("shop_1.example.com").is_err());
    }
}
