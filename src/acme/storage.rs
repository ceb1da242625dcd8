//! The state folder: the ACME account and the current certificate and key.
//!
//! The folder is 0700 and every file 0600, written to a temporary name and
//! renamed, so a crash leaves the old file or the new one, never half of one.
//! Files are named after the first domain, so listeners may share a folder.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{AcmeConfig, CertPaths};
use crate::tls::{load_one, name_matches, LoadedCert};

/// A stored certificate that is still valid and covers every configured name.
pub struct Stored {
    pub cert: LoadedCert,
    pub not_before_unix: i64,
    pub issuer: String,
}

/// The account as kept on disk: which directory it belongs to, and its key.
#[derive(Serialize, Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    pub credentials: instant_acme::AccountCredentials,
}

/// Creates the folder (0700) if missing and proves it can be written.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("acme state_dir {}: {e}", dir.display());
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let probe = dir.join(".cartguard-write-test");
    write_private(&probe, b"").map_err(|e| format!("acme state_dir {} is not writable: {e}", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

pub fn paths(cfg: &AcmeConfig) -> CertPaths {
    let stem = &cfg.domains[0];
    CertPaths { cert: cfg.state_dir.join(format!("{stem}.crt")), key: cfg.state_dir.join(format!("{stem}.key")) }
}

fn account_path(cfg: &AcmeConfig) -> PathBuf {
    cfg.state_dir.join("account.json")
}

/// The stored certificate, if there is one, it covers the names and has not expired.
pub fn load_valid(cfg: &AcmeConfig) -> Result<Option<Stored>, String> {
    let p = paths(cfg);
    if !p.cert.exists() {
        return Ok(None);
    }
    let cert = load_one(&p)?;
    let now = unix_now();
    if cert.info.not_after_unix <= now {
        tracing::info!(file = %p.cert.display(), "stored ACME certificate has expired; a new one will be requested");
        return Ok(None);
    }
    if !cfg.domains.iter().all(|d| cert.info.names.iter().any(|n| name_matches(n, d))) {
        tracing::info!(file = %p.cert.display(), "stored ACME certificate does not cover every configured name; a new one will be requested");
        return Ok(None);
    }
    let (not_before_unix, issuer) = validity_and_issuer(cert.key.cert.first().map(|c| c.as_ref()).unwrap_or(&[]))?;
    Ok(Some(Stored { cert, not_before_unix, issuer }))
}

fn validity_and_issuer(der: &[u8]) -> Result<(i64, String), String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("stored certificate: {e}"))?;
    let issuer = x
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| x.issuer().to_string());
    Ok((x.validity().not_before.timestamp(), issuer))
}

/// Writes the key first and the certificate last: the certificate's presence means both are complete.
pub fn save(cfg: &AcmeConfig, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    let p = paths(cfg);
    write_private(&p.key, key_pem.as_bytes()).map_err(|e| format!("{}: {e}", p.key.display()))?;
    write_private(&p.cert, chain_pem.as_bytes()).map_err(|e| format!("{}: {e}", p.cert.display()))
}

/// The stored account for this directory, if any (an account of another CA is ignored).
pub fn load_account(cfg: &AcmeConfig) -> Result<Option<instant_acme::AccountCredentials>, String> {
    let path = account_path(cfg);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let stored: StoredAccount = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((stored.directory == cfg.directory).then_some(stored.credentials))
}

pub fn save_account(cfg: &AcmeConfig, credentials: instant_acme::AccountCredentials) -> Result<(), String> {
    let path = account_path(cfg);
    let stored = StoredAccount { directory: cfg.directory.clone(), credentials };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| format!("{}: {e}", path.display()))?;
    write_private(&path, &json).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn state_dir_is_created_private_and_a_read_only_one_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("acme");
        super::prepare_dir(&dir).expect("writable");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        // root ignores permission bits; only check the refusal where they apply.
        let probe = std::fs::File::create(dir.join("x"));
        if probe.is_err() {
            let readonly = dir.join("sub");
            assert!(super::prepare_dir(&readonly).is_err());
        }
    }
}
