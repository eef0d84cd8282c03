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
    /// The services it serves, by name (default: all); others answer 404 here.
    pub services: Option<Vec<String>>,
    /// HTTP/2: ALPN `h2` on a TLS listener (default on), h2c by prior knowledge on a plain
    /// one (default off).
    pub http2: bool,
    /// Streams one HTTP/2 connection may have open at once (default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`]).
    pub max_concurrent_streams: u32,
    /// Its own bound on open client connections (default none: only
    /// `server.max_connections`).
    pub max_connections: Option<usize>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), believed only from
    /// `routing.trusted_proxies` (default false).
    pub proxy_protocol: bool,
}

/// Default `listeners[].max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

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

/// `[acme]`, validated: where automatic certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// The ACME directory URL; default Let's Encrypt's production directory.
    pub directory: String,
    /// Contact address for the account (optional).
    pub email: Option<String>,
    /// Where the account and certificates are kept (0600 files); default `acme` beside the
    /// config file.
    pub dir: PathBuf,
    /// A CA bundle to trust for the ACME server's own HTTPS (a private ACME server).
    pub ca_file: Option<PathBuf>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: crate::acme::manager::Challenge,
    /// Renew this long before expiry; default 30 days.
    pub renew_before: Duration,
    /// The first retry after a failure (doubling after each); default 1 minute.
    pub retry_min: Duration,
    /// The names ordered: every exact host of every service (wildcards need DNS-01 and
    /// a certificate file).
    pub names: Vec<String>,
}

/// `[tls]`, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    /// Certificates for services' host names from the `[acme]` server (`tls.acme`).
    pub acme: Option<AcmeConfig>,
    /// Names no certificate covers; default [`UnknownNamePolicy::Default`].
    pub unknown_name: UnknownNamePolicy,
    /// The name whose certificate is the default (default: the first file's first name).
    pub default: Option<String>,
    /// Certificate files, in file order (earlier wins on equal names).
    pub certificates: Vec<CertificatePaths>,
}
