//! Why the guard could not start or reload: typed where a caller branches (a port in
//! use is a different fix from a bad certificate), and worded for the person who must
//! fix it, with the key, file or address.

use std::net::SocketAddr;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `key` is the config key of the address (`listen[0].addr`, `status.listen`).
    #[error("{key}: cannot listen on {addr}: {reason}")]
    Listen { key: String, addr: SocketAddr, reason: ListenError },
    #[error("{0}")]
    Certificates(String),
    #[error("log.path: cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("upstream: {0}")]
    Upstream(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("the port is already in use")]
    InUse,
    #[error("permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)")]
    PermissionDenied,
    #[error("{0}")]
    Other(std::io::Error),
}

impl From<std::io::Error> for ListenError {
    fn from(e: std::io::Error) -> ListenError {
        match e.kind() {
            std::io::ErrorKind::AddrInUse => ListenError::InUse,
            std::io::ErrorKind::PermissionDenied => ListenError::PermissionDenied,
            _ => ListenError::Other(e),
        }
    }
}

/// A reload that changed nothing: the previous config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Certificates(String),
    #[error("upstream: {0}")]
    Upstream(String),
}
