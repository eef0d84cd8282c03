//! The validated `[[listeners]]` and `[tls]` sections: where the proxy listens, which
//! listeners speak TLS, and the certificate files chosen by SNI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The listener's name when `[[listeners]]` is absent and `server.listen` is used.
pub const DEFAULT_LISTENER_NAME: &str = "http";

/// One proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Name (metrics label, `GateHandle::listener`).
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// It terminates TLS (default false).
    pub tls: bool,
    /// A plain listener answers every request (but ACME's HTTP-01 path) with a 308 to
    /// the first TLS listener (default false).
    pub redirect_https: bool,
    /// A TLS listener adds `Strict-Transport-Security: max-age=...` (default none).
    pub hsts: Option<Duration>,
}

/// What a TLS listener does with a name no certificate covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownNamePolicy {
    /// Serve the default certificate (default).
    #[default]
    Default,
    /// Refuse the handshake.
    Refuse,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[tls]`, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    /// Names no certificate covers; default [`UnknownNamePolicy::Default`].
    pub unknown_name: UnknownNamePolicy,
    /// The name whose certificate is the default (default: the first file's first name).
    pub default: Option<String>,
    /// Certificate files, in file order (earlier wins on equal names).
    pub certificates: Vec<CertificatePaths>,
}
