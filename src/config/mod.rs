//! Turns the YAML file into the validated, immutable `Config` the guard runs on.
//!
//! `load` reads the file, `from_yaml` parses (unknown keys are errors, with line
//! and column), and validation builds typed values: CIDRs, groups, rules, users.
//! Every error names the key and, where it can be found, its line and column.
//! Nothing past this module sees raw YAML.

pub mod acme;
mod alerts;
mod group_file;
mod position;
pub mod raw;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;

use crate::policy::client_ip::{ClientIpConfig, IpHeader};
use crate::policy::groups::{IpSet, INTEGRATION_MANAGEMENT, INTEGRATION_MANAGEMENT_CIDRS};
use crate::policy::rules::{prepare_prefix, QueryMatch, Rule};
use crate::policy::{Group, Policy, MAX_GROUPS};
use crate::policy::{Mode, Others};
use crate::users::Users;
use raw::{RawCert, RawConfig};

pub use acme::{AcmeConfig, Challenge};

/// The access log's line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Combined,
}

impl LogFormat {
    /// The spelling the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Combined => "combined",
        }
    }
}

/// The whole validated configuration of one load.
#[derive(Debug)]
pub struct Config {
    pub source: Source,
    pub policy: Policy,
    pub listeners: Vec<ListenerConfig>,
    pub upstream: UpstreamConfig,
    pub users: Arc<Users>,
    pub auth: AuthSettings,
    pub status: StatusSettings,
    pub log: LogSettings,
    pub limits: Limits,
    pub alerts: AlertSettings,
    /// Groups read from their own files, watched for changes.
    pub group_files: Vec<GroupFile>,
    /// Not errors, but worth a look: printed by `check` and logged at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub sha256: String,
    pub loaded_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// Empty for plain HTTP; the first certificate is the default for SNI.
    pub certs: Vec<CertPaths>,
    pub proxy_protocol: bool,
    pub redirect_https: bool,
    pub unknown_sni: crate::tls::UnknownSni,
    /// Certificates from an ACME CA instead of files (then `certs` is empty).
    pub acme: Option<AcmeConfig>,
}

impl ListenerConfig {
    /// Serves TLS, with certificate files or ACME.
    pub fn is_tls(&self) -> bool {
        !self.certs.is_empty() || self.acme.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Uri,
    pub https: bool,
    /// host:port of the url, for the Host header in `host: upstream` mode and the probe.
    pub authority: String,
    pub host: HostMode,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub probe_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMode {
    Preserve,
    Upstream,
    Literal(HeaderValue),
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub realm: String,
    /// `Basic realm="...", charset="UTF-8"`, built once.
    pub challenge: HeaderValue,
    pub forward_credentials: bool,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub ban: Duration,
    pub cache_ttl: Duration,
    /// Password verifications running at once (read at start).
    pub max_concurrent_verifications: usize,
    /// Verifications waiting for a slot before new ones get 503 (read at start).
    pub verify_queue: usize,
    /// Nice value of the verification threads, 0..=19 (read at start).
    pub verify_nice: i32,
}

#[derive(Debug, Clone)]
pub struct StatusSettings {
    pub listen: Option<SocketAddr>,
    pub expect: Vec<Expect>,
}

#[derive(Debug, Clone)]
pub struct Expect {
    pub group: String,
    pub within: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `None` is stdout.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub reserved_for_allowlisted: usize,
    pub shutdown_grace: Duration,
    pub tls_handshake_timeout: Duration,
    /// 0 = off.
    pub min_body_rate: u64,
}

/// `alerts:`: the sinks every alert goes to and the repeat window.
#[derive(Debug, Clone, Default)]
pub struct AlertSettings {
    pub sinks: Vec<SinkConfig>,
    /// One alert per kind and key within this window; later ones are counted, not sent.
    pub repeat_after: Duration,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub target: SinkTarget,
    /// For one attempt: the whole HTTP exchange, or the command's run.
    pub timeout: Duration,
    /// Webhooks only: further attempts after a failure.
    pub retries: u32,
    /// Webhooks only: the first wait between attempts; doubles each time.
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub enum SinkTarget {
    /// POST of the alert as JSON. The URL is a secret (chat hooks carry their token in it).
    Webhook(Uri),
    /// argv[0] run directly, never through a shell.
    Command { argv: Vec<String>, stdin: CommandStdin },
}

impl SinkTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::Webhook(_) => "webhook",
            SinkTarget::Command { .. } => "command",
        }
    }
}

/// What a command sink gets on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStdin {
    Json,
    /// A mail message (Subject header, text, then the JSON) for `sendmail`.
    Mail,
}

/// A group whose addresses live in their own file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFile {
    pub group: String,
    pub path: PathBuf,
    /// The file as it was when read; a different stamp means it changed.
    pub stamp: Option<FileStamp>,
}

/// Modification time and length: enough to notice an edit without reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub modified: Option<SystemTime>,
    pub len: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp { modified: meta.modified().ok(), len: meta.len() })
    }
}

/// A configuration error: which key, where, and what is wrong.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub line: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::from_yaml(&text, path)
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| yaml_error(text, path, e))?;
        Validator { text, path, warnings: Vec::new() }.validate(raw)
    }

    pub fn integration_group(&self) -> Option<usize> {
        self.policy.group_index(INTEGRATION_MANAGEMENT)
    }
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    warnings: Vec<String>,
}

impl Validator<'_> {
    /// An error at `needle` within the value of `key` (at the key when `needle` is not
    /// there; anywhere outside comments when the key is not written at all).
    fn err(&self, key: impl Into<String>, needle: &str, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let line = match position::of_key(self.text, &key) {
            Some((line, col)) => {
                let end = position::block_end(self.text, line, col);
                position::of_text_after(self.text, line, needle).filter(|(l, _)| *l < end).or(Some((line, col)))
            }
            None => position::of_text_after(self.text, 1, needle),
        };
        ConfigError { file: self.path.to_path_buf(), key, line, message: message.into() }
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listeners = self.listeners(&raw)?;
        let upstream = self.upstream(&raw.upstream)?;
        let client_ip = self.client_ip(&raw.client_ip)?;
        let (groups, group_files) = self.groups(&raw.groups)?;
        let rules = self.rules(&raw, &groups)?;
        let auth = self.auth(&raw.auth)?;
        let users = self.users(&raw)?;
        let status = self.status(&raw, &groups)?;
        let log = LogSettings {
            format: raw.log.format,
            path: match raw.log.path.as_str() {
                "-" => None,
                "" => return Err(self.err("log.path", "path:", "must be \"-\" (stdout) or a file path")),
                p => Some(self.relative(Path::new(p))),
            },
        };
        let limits = self.limits(&raw.limits)?;
        let alerts = self.alerts(&raw.alerts)?;
        self.warn_about(&raw, &client_ip, &groups, &rules, &users);
        let policy = Policy { mode: raw.mode, client_ip, groups, rules };
        Ok(Config {
            source: Source {
                path: self.path.to_path_buf(),
                sha256: sha256_hex(self.text.as_bytes()),
                loaded_at: SystemTime::now(),
            },
            policy,
            listeners,
            upstream,
            users: Arc::new(users),
            auth,
            status,
            log,
            limits,
            alerts,
            group_files,
            warnings: self.warnings,
        })
    }

    /// Relative file names are relative to the config file's folder.
    fn relative(&self, p: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn listeners(&self, raw: &RawConfig) -> Result<Vec<ListenerConfig>, ConfigError> {
        if raw.listen.is_empty() {
            return Err(self.err("listen", "listen:", "at least one listener is needed"));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.listen.iter().enumerate() {
            let key = format!("listen[{i}].addr");
            let addr: SocketAddr = l.addr.parse().map_err(|_| {
                self.err(&key, &l.addr, format!("{:?} is not an address:port (IPv6 in brackets: \"[::]:443\")", l.addr))
            })?;
            if !seen.insert(addr) {
                return Err(self.err(&key, &l.addr, format!("{addr} is listed twice")));
            }
            let certs: Vec<CertPaths> = l
                .tls
                .as_ref()
                .map(|t| {
                    t.0.iter()
                        .map(|c: &RawCert| CertPaths { cert: self.relative(&c.cert), key: self.relative(&c.key) })
                        .collect()
                })
                .unwrap_or_default();
            if l.tls.is_some() && certs.is_empty() {
                return Err(self.err(format!("listen[{i}].tls"), "tls:", "an empty certificate list"));
            }
            if l.tls.is_some() && l.acme.is_some() {
                return Err(self.err(
                    format!("listen[{i}].acme"),
                    "acme:",
                    "a listener takes either tls (certificate files) or acme, not both",
                ));
            }
            let has_plain = raw.listen.iter().any(|l| l.tls.is_none() && l.acme.is_none());
            let acme = l.acme.as_ref().map(|a| self.acme(i, a, has_plain)).transpose()?;
            if l.redirect_https && (!certs.is_empty() || acme.is_some()) {
                return Err(self.err(
                    format!("listen[{i}].redirect_https"),
                    "redirect_https",
                    "only a plain (non-TLS) listener can redirect to https",
                ));
            }
            if l.unknown_sni.is_some() && certs.is_empty() {
                return Err(self.err(
                    format!("listen[{i}].unknown_sni"),
                    "unknown_sni",
                    "only a TLS listener has SNI; add tls: or remove unknown_sni",
                ));
            }
            out.push(ListenerConfig {
                addr,
                certs,
                proxy_protocol: l.proxy_protocol,
                redirect_https: l.redirect_https,
                unknown_sni: l.unknown_sni.unwrap_or_default(),
                acme,
            });
        }
        Ok(out)
    }

    fn upstream(&self, raw: &raw::RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let url: Uri = raw
            .url
            .parse()
            .map_err(|e| self.err("upstream.url", &raw.url, format!("{:?} is not a URL: {e}", raw.url)))?;
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(self.err("upstream.url", &raw.url, "must start with http:// or https://")),
        };
        let Some(authority) = url.authority() else {
            return Err(self.err("upstream.url", &raw.url, "has no host"));
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(self.err(
                "upstream.url",
                &raw.url,
                "must not have a path or query: requests keep their own path",
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:{default_port}", authority.host()),
        };
        let host =
            match raw.host.as_str() {
                "preserve" => HostMode::Preserve,
                "upstream" => HostMode::Upstream,
                literal => {
                    let valid = !literal.is_empty() && literal.parse::<http::uri::Authority>().is_ok();
                    let value = HeaderValue::from_str(literal).ok().filter(|_| valid);
                    HostMode::Literal(value.ok_or_else(|| {
                        self.err("upstream.host", literal, "must be preserve, upstream or a host name")
                    })?)
                }
            };
        let (ca, server_name) = match &raw.tls {
            Some(t) => {
                if !https {
                    return Err(self.err("upstream.tls", "tls:", "upstream.tls needs an https:// upstream.url"));
                }
                if let Some(name) = &t.server_name {
                    if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                        return Err(self.err(
                            "upstream.tls.server_name",
                            name,
                            "is not a valid DNS name or IP address",
                        ));
                    }
                }
                (t.ca.as_deref().map(|p| self.relative(p)), t.server_name.clone())
            }
            None => (None, None),
        };
        for (key, d) in [
            ("upstream.connect_timeout", raw.connect_timeout),
            ("upstream.timeout", raw.timeout),
            ("upstream.probe_interval", raw.probe_interval),
        ] {
            if d.0.is_zero() {
                return Err(self.err(key, key.rsplit('.').next().unwrap_or(key), "must be more than zero"));
            }
        }
        Ok(UpstreamConfig {
            url,
            https,
            authority,
            host,
            connect_timeout: raw.connect_timeout.0,
            timeout: raw.timeout.0,
            ca,
            server_name,
            probe_interval: raw.probe_interval.0,
        })
    }

    fn cidrs(&self, key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, text)| {
                parse_net(text).ok_or_else(|| {
                    self.err(format!("{key}[{i}]"), text, format!("{text:?} is not an IP address or CIDR"))
                })
            })
            .collect()
    }

    fn client_ip(&self, raw: &raw::RawClientIp) -> Result<ClientIpConfig, ConfigError> {
        let nets = self.cidrs("client_ip.trusted_proxies", &raw.trusted_proxies)?;
        if let Some(n) = nets.iter().find(|n| n.prefix_len() == 0) {
            return Err(self.err(
                "client_ip.trusted_proxies",
                &n.to_string(),
                format!("{n} would let anyone on the internet claim any address"),
            ));
        }
        let name = raw.header.trim().to_ascii_lowercase();
        let header = match name.as_str() {
            "x-forwarded-for" => IpHeader::XForwardedFor,
            "forwarded" => IpHeader::Forwarded,
            other => IpHeader::Single(
                HeaderName::from_bytes(other.as_bytes())
                    .map_err(|_| self.err("client_ip.header", &raw.header, "is not a header name"))?,
            ),
        };
        Ok(ClientIpConfig { trusted_proxies: IpSet::new(nets), header })
    }

    fn groups(&self, raw: &BTreeMap<String, raw::RawGroup>) -> Result<(Vec<Group>, Vec<GroupFile>), ConfigError> {
        let mut groups = Vec::new();
        let mut files = Vec::new();
        if !raw.contains_key(INTEGRATION_MANAGEMENT) {
            groups.push(Group {
                name: INTEGRATION_MANAGEMENT.into(),
                set: IpSet::new(INTEGRATION_MANAGEMENT_CIDRS.iter().filter_map(|c| c.parse().ok())),
            });
        }
        for (name, list) in raw {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(self.err(format!("groups.{name}"), name, "group names must be non-empty words"));
            }
            let nets = match list {
                raw::RawGroup::List(list) => self.cidrs(&format!("groups.{name}"), list)?,
                raw::RawGroup::File(f) => {
                    let path = self.relative(&f.file);
                    let (nets, stamp) = group_file::read(name, &path)?;
                    files.push(GroupFile { group: name.clone(), path, stamp });
                    nets
                }
            };
            groups.push(Group { name: name.clone(), set: IpSet::new(nets) });
        }
        if groups.len() > MAX_GROUPS {
            return Err(self.err("groups", "groups:", format!("at most {MAX_GROUPS} groups")));
        }
        Ok((groups, files))
    }

    fn rules(&self, raw: &RawConfig, groups: &[Group]) -> Result<Vec<Rule>, ConfigError> {
        if raw.rules.is_empty() {
            return Err(self.err(
                "rules",
                "rules:",
                "at least one rule is needed; the last one must have path_prefix: /",
            ));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            if r.name.trim().is_empty() {
                return Err(self.err(key("name"), "name:", "must not be empty"));
            }
            if !names.insert(r.name.clone()) {
                return Err(self.err(key("name"), &r.name, format!("rule name {:?} is used twice", r.name)));
            }
            let prefix_ok = crate::policy::path::normalize(&r.path_prefix).is_ok();
            if !prefix_ok {
                return Err(self.err(
                    key("path_prefix"),
                    &r.path_prefix,
                    "must be a plain path starting with / (no dot segments, escapes or control bytes)",
                ));
            }
            let methods = match &r.methods {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(self.err(
                        key("methods"),
                        "methods:",
                        "an empty list matches nothing; leave it out to match every method",
                    ))
                }
                Some(list) => Some(
                    list.iter()
                        .map(|m| {
                            let upper = m.trim().to_ascii_uppercase();
                            Method::from_bytes(upper.as_bytes())
                                .map_err(|_| self.err(key("methods"), m, format!("{m:?} is not an HTTP method")))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let mut query = Vec::new();
            for (name, prefix) in &r.query {
                if name.is_empty() || prefix.is_empty() {
                    return Err(self.err(key("query"), "query:", "parameter names and prefixes must not be empty"));
                }
                query.push(QueryMatch { name: name.clone(), prefix: prepare_prefix(prefix) });
            }
            let mut allow = Vec::new();
            for (j, g) in r.allow.iter().enumerate() {
                let index = groups.iter().position(|x| &x.name == g).ok_or_else(|| {
                    self.err(
                        format!("rules[{i}].allow[{j}]"),
                        g,
                        format!("unknown group {g:?} (define it under groups:)"),
                    )
                })?;
                if let Some(n) = groups[index].set.cidrs().iter().find(|n| n.prefix_len() == 0) {
                    return Err(self.err(
                        format!("groups.{g}"),
                        &n.to_string(),
                        format!("{n} in an allow group admits everyone; use others: open instead"),
                    ));
                }
                allow.push(index);
            }
            rules.push(Rule {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                prefix: prepare_prefix(&r.path_prefix),
                methods,
                query,
                allow,
                others: r.others,
            });
        }
        let last = rules.last().filter(|r| r.prefix == b"/" && r.methods.is_none());
        if last.is_none() {
            let name = &raw.rules[raw.rules.len() - 1].name;
            return Err(self.err(
                format!("rules[{}]", rules.len() - 1),
                name,
                "the last rule must have path_prefix: / and no methods, so that every request meets a rule",
            ));
        }
        Ok(rules)
    }

    fn auth(&self, raw: &raw::RawAuth) -> Result<AuthSettings, ConfigError> {
        if raw.realm.is_empty() || raw.realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            return Err(self.err(
                "auth.realm",
                &raw.realm,
                "must be non-empty, without quotes, backslashes or control characters",
            ));
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", raw.realm))
            .map_err(|_| self.err("auth.realm", &raw.realm, "must be plain text"))?;
        if raw.max_failures == 0 {
            return Err(self.err("auth.max_failures", "max_failures", "must be at least 1"));
        }
        for (key, d) in [("auth.failure_window", raw.failure_window), ("auth.ban", raw.ban)] {
            if d.0.is_zero() {
                return Err(self.err(key, key.rsplit('.').next().unwrap_or(key), "must be more than zero"));
            }
        }
        Ok(AuthSettings {
            realm: raw.realm.clone(),
            challenge,
            forward_credentials: raw.forward_credentials,
            max_failures: raw.max_failures,
            failure_window: raw.failure_window.0,
            ban: raw.ban.0,
            cache_ttl: raw.cache_ttl.0,
            max_concurrent_verifications: match raw.max_concurrent_verifications {
                Some(0) => {
                    return Err(self.err(
                        "auth.max_concurrent_verifications",
                        "max_concurrent_verifications",
                        "must be at least 1",
                    ))
                }
                Some(n) => n,
                None => default_verifications(),
            },
            verify_queue: raw.verify_queue,
            verify_nice: match raw.verify_nice {
                n @ 0..=19 => n,
                _ => return Err(self.err("auth.verify_nice", "verify_nice", "must be between 0 and 19")),
            },
        })
    }

    fn users(&self, raw: &RawConfig) -> Result<Users, ConfigError> {
        let htpasswd = raw.users.htpasswd.as_deref().map(|p| self.relative(p));
        Users::load(htpasswd.as_deref(), &raw.users.inline, raw.auth.cache_ttl.0).map_err(|message| {
            let needle =
                raw.users.htpasswd.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "users:".into());
            let message = message.strip_prefix("users.htpasswd: ").map(str::to_string).unwrap_or(message);
            self.err(if raw.users.htpasswd.is_some() { "users.htpasswd" } else { "users" }, &needle, message)
        })
    }

    fn status(&self, raw: &RawConfig, groups: &[Group]) -> Result<StatusSettings, ConfigError> {
        let listen = match &raw.status.listen {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| self.err("status.listen", a, format!("{a:?} is not an address:port")))?,
            ),
        };
        let mut expect = Vec::new();
        for (i, e) in raw.status.expect.iter().enumerate() {
            if !groups.iter().any(|g| g.name == e.group) {
                return Err(self.err(
                    format!("status.expect[{i}].group"),
                    &e.group,
                    format!("unknown group {:?}", e.group),
                ));
            }
            if e.within.0.is_zero() {
                return Err(self.err(format!("status.expect[{i}].within"), "within", "must be more than zero"));
            }
            expect.push(Expect { group: e.group.clone(), within: e.within.0 });
        }
        if let Some(addr) = listen {
            if raw.listen.iter().any(|l| l.addr.parse::<SocketAddr>().ok() == Some(addr)) {
                return Err(self.err("status.listen", &addr.to_string(), "must not be one of the public listeners"));
            }
        }
        Ok(StatusSettings { listen, expect })
    }

    fn limits(&self, raw: &raw::RawLimits) -> Result<Limits, ConfigError> {
        if raw.max_header_bytes < 1024 {
            return Err(self.err("limits.max_header_bytes", "max_header_bytes", "must be at least 1024"));
        }
        if raw.max_connections == 0 {
            return Err(self.err("limits.max_connections", "max_connections", "must be at least 1"));
        }
        if raw.max_connections_per_address == 0 {
            return Err(self.err(
                "limits.max_connections_per_address",
                "max_connections_per_address",
                "must be at least 1",
            ));
        }
        let reserved = raw.reserved_for_allowlisted.unwrap_or(raw.max_connections / 8);
        if reserved >= raw.max_connections {
            return Err(self.err(
                "limits.reserved_for_allowlisted",
                "reserved_for_allowlisted",
                "must be less than limits.max_connections, or other clients get no connection at all",
            ));
        }
        for (key, d) in [
            ("limits.header_timeout", raw.header_timeout),
            ("limits.idle_timeout", raw.idle_timeout),
            ("limits.tls_handshake_timeout", raw.tls_handshake_timeout),
        ] {
            if d.0.is_zero() {
                return Err(self.err(key, key.rsplit('.').next().unwrap_or(key), "must be more than zero"));
            }
        }
        Ok(Limits {
            header_timeout: raw.header_timeout.0,
            idle_timeout: raw.idle_timeout.0,
            max_header_bytes: raw.max_header_bytes,
            max_body_bytes: raw.max_body_bytes,
            max_connections: raw.max_connections,
            max_connections_per_address: raw.max_connections_per_address,
            reserved_for_allowlisted: reserved,
            shutdown_grace: raw.shutdown_grace.0,
            tls_handshake_timeout: raw.tls_handshake_timeout.0,
            min_body_rate: raw.min_body_rate,
        })
    }

    fn warn_about(
        &mut self,
        raw: &RawConfig,
        client_ip: &ClientIpConfig,
        groups: &[Group],
        rules: &[Rule],
        users: &Users,
    ) {
        if raw.mode == Mode::Report {
            self.warnings.push("mode: report: nothing is enforced, every request is forwarded".into());
        }
        let used: HashSet<usize> = rules.iter().flat_map(|r| r.allow.iter().copied()).collect();
        for proxy in client_ip.trusted_proxies.cidrs() {
            for &g in &used {
                if groups[g].set.cidrs().iter().any(|n| n.contains(&proxy.network()) || proxy.contains(&n.network())) {
                    self.warnings.push(format!(
                        "trusted proxy {proxy} overlaps allow group {:?}: requests without a forwarding header from it are admitted as that group",
                        groups[g].name
                    ));
                }
            }
        }
        if users.is_empty() && rules.iter().any(|r| r.others == Others::Auth) {
            self.warnings.push("rules ask for a login (others: auth) but no users are configured: nobody outside the allow groups can get in".into());
        }
        if let Some(last) = rules.last() {
            if last.others == Others::Open {
                self.warnings
                    .push(format!("the last rule {:?} is open: every path not matched earlier is public", last.name));
            }
        }
        for (i, r) in rules.iter().enumerate() {
            if let Some(earlier) = rules[..i].iter().find(|e| {
                e.methods.is_none()
                    && e.query.is_empty()
                    && crate::policy::path::segment_prefix_matches(&e.prefix, &r.prefix)
            }) {
                self.warnings.push(format!(
                    "rule {:?} can only match through its query: rule {:?} comes first and covers its path",
                    r.name, earlier.name
                ));
            }
        }
    }
}

/// An address or CIDR, as groups and trusted proxies write them.
fn parse_net(text: &str) -> Option<IpNet> {
    let t = text.trim();
    t.parse::<IpNet>().or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from)).ok()
}

/// A parser error as the user needs it: the full key path of a bad value and that key's
/// own line, or for broken syntax the parser's position and the likely cause.
fn yaml_error(text: &str, path: &Path, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let key = e.path().to_string();
    // `?` marks a place the parser never reached as a key: broken syntax.
    let syntax = key.contains('?');
    let key = if key == "." || syntax { String::new() } else { key };
    let e = e.into_inner();
    let parser_line = e.location().map(|l| (l.line(), l.column()));
    // The message already ends with "at line L column C"; keep just the words.
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) if parser_line.is_some() => message[..i].to_string(),
        _ => message,
    };
    // The parser may prefix part of the path the key already shows.
    let message = (1..=key.len())
        .rev()
        .filter(|&n| key.is_char_boundary(n))
        .find_map(|n| message.strip_prefix(&key[..n]).and_then(|m| m.strip_prefix(": ")))
        .map(str::to_string)
        .unwrap_or(message);
    // The parser knows where an unknown key or broken syntax is; for a bad value it
    // may point at the start of the enclosing map, so the key path says better.
    let line = match message.contains("unknown field") || key.is_empty() {
        true => parser_line,
        false => position::of_key(text, &key).or(parser_line),
    };
    // The parser reports where it gave up, often lines after the real mistake.
    let message = match line.filter(|_| syntax).and_then(|(l, _)| position::unclosed_quote(text, l)) {
        Some(q) => format!("{message} (line {q} opens a quote it never closes)"),
        None => message,
    };
    ConfigError { file: path.to_path_buf(), key, line, message }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One verification per core, minus one core that keeps requests flowing.
fn default_verifications() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests;
