//! The validated configuration the rest of the gate sees, and the defaults (`DEFAULT_*`)
//! that fill what a file leaves out.

use crate::time::format_duration;
use crate::types::{fnv1a, HostPattern, UpstreamAddr, Weight};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::judge::Policy;
use crate::probes::{Combine, ProbeSpec};
/// Proxy listener when `server.listen` is absent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Admin listener when `server.admin_listen` is absent.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Proxy worker threads when `server.threads` is absent.
pub const DEFAULT_THREADS: usize = 2;
/// How long a SIGTERM waits for in-flight requests before exiting anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upstream read timeout (time between bytes of the answer).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream keep-alive connection stays in the pool.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per worker pool.
pub const DEFAULT_KEEPALIVE_POOL_SIZE: usize = 256;
/// The request header testers use to pick an arm (`stable` or `canary`).
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-sluice-arm";
/// Whether the override header is honoured.
pub const DEFAULT_ALLOW_OVERRIDE: bool = true;
/// Whether clients keep their arm through a cookie.
pub const DEFAULT_STICKY: bool = true;
/// The sticky cookie's name.
pub const DEFAULT_STICKY_COOKIE: &str = "sluice_id";
/// The sticky cookie's lifetime.
pub const DEFAULT_STICKY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Path prefix of a service that names none: everything.
pub const DEFAULT_PATH_PREFIX: &str = "/";
/// The history store when `store.url` is absent: an SQLite file next to the config.
pub const DEFAULT_STORE_URL: &str = "sqlite://sluice.db";
/// Largest the spool file may grow while the database is unreachable.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Probe results older than this are pruned.
pub const DEFAULT_PROBE_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Per-minute arm samples older than this are pruned.
pub const DEFAULT_SAMPLE_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// The Docker engine's socket when `docker.socket` is absent.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Whether failed idempotent canary requests are replayed on stable.
pub const DEFAULT_SHIELD: bool = true;
/// Methods the shield replays.
pub const DEFAULT_SHIELD_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];
/// Methods that may be replayed at all (idempotent per RFC 9110).
pub const IDEMPOTENT_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for reload and for messages).
    pub source: Option<PathBuf>,
    /// Listeners and proxy settings.
    pub server: ServerConfig,
    /// Admin API settings.
    pub admin: AdminConfig,
    /// Arm-choice settings shared by all services.
    pub routing: RoutingConfig,
    /// The history store.
    pub store: StoreConfig,
    /// The Docker engine's socket; default [`DEFAULT_DOCKER_SOCKET`].
    pub docker_socket: PathBuf,
    /// Pick up containers labelled `sluice.service=NAME` as upstreams (`[docker] discovery`).
    pub docker_discovery: bool,
    /// How often discovery lists containers besides following the engine's events.
    pub discovery_interval: Duration,
    /// Services in file order.
    pub services: Vec<ServiceConfig>,
    /// Notifiers (`[[notify]]`).
    pub notify: Vec<super::notify::NotifierConfig>,
    /// The dashboard (`[dashboard]`).
    pub dashboard: super::notify::DashboardConfig,
    /// Proxy listeners (`[[listeners]]`, or `server.listen` alone), at least one.
    pub listeners: Vec<super::tls::ListenerConfig>,
    /// Certificates for TLS listeners (`[tls]`).
    pub tls: super::tls::TlsConfig,
    /// One line per request (`[access_log]`), when on.
    pub access_log: Option<AccessLogConfig>,
}

/// `[access_log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// The file lines are appended to (reopened on SIGUSR1); `None`: standard output.
    pub path: Option<PathBuf>,
    /// `json` (default) or `combined`.
    pub format: AccessLogFormat,
    /// Lines waiting for the writer at most (default [`DEFAULT_ACCESS_LOG_BUFFER`]); more are
    /// dropped and counted, never waited for.
    pub buffer: usize,
}

/// Default `access_log.buffer`.
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 65_536;

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache's / nginx's `combined`, with Sluice's fields appended.
    Combined,
}

/// Which time of a request the judge's latency rules see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMeasure {
    /// Until the response is complete (default), except upgrades and event streams.
    #[default]
    Total,
    /// Until the response's header (streaming services).
    FirstByte,
}

/// Default `server.client_header_timeout`.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.keepalive_timeout`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default `server.client_body_timeout`.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.max_connections_per_ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// Default `server.max_uri_length`.
pub const DEFAULT_MAX_URI_LENGTH: usize = 8 * 1024;
/// Default `server.max_headers`.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `server.max_header_size`.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;
/// Default `services[].max_body_size`.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 100 * 1024 * 1024;

/// Default `services[].websocket_idle_timeout`.
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where history goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite file (created on first run).
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(String),
}

impl StoreUrl {
    /// The URL sqlx connects with.
    pub fn connect_url(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite://{}?mode=rwc", p.display()),
            StoreUrl::Postgres(u) => u.clone(),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreUrl::Sqlite(_) => "sqlite",
            StoreUrl::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for StoreUrl {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreUrl::Postgres(u) => {
                // postgres://user:secret@host/db -> postgres://user:***@host/db
                match (u.find("://"), u.rfind('@')) {
                    (Some(s), Some(at)) if at > s => {
                        let creds = &u[s + 3..at];
                        match creds.find(':') {
                            Some(c) => write!(f, "{}{}:***{}", &u[..s + 3], &creds[..c], &u[at..]),
                            None => f.write_str(u),
                        }
                    }
                    _ => f.write_str(u),
                }
            }
        }
    }
}

/// `[store]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Whether history is kept at all; default on.
    pub enabled: bool,
    /// Default [`DEFAULT_STORE_URL`], relative to the config file's directory.
    pub url: StoreUrl,
    /// The spool file; default `<db>.spool` (SQLite) or `sluice.spool` next to the config.
    pub spool: PathBuf,
    /// Default [`DEFAULT_SPOOL_MAX_BYTES`].
    pub spool_max_bytes: u64,
    /// Default [`DEFAULT_PROBE_RETENTION`].
    pub probe_retention: Duration,
    /// Default [`DEFAULT_SAMPLE_RETENTION`].
    pub sample_retention: Duration,
}

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Proxy listener; default [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// Admin listener; default [`DEFAULT_ADMIN_LISTEN`].
    pub admin_listen: SocketAddr,
    /// Proxy worker threads; default [`DEFAULT_THREADS`].
    pub threads: usize,
    /// SIGTERM drain limit; default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Default upstream connect timeout; default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Default upstream read timeout; default [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// Pooled upstream connection idle limit; default [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Upstream keep-alive pool size; default [`DEFAULT_KEEPALIVE_POOL_SIZE`].
    pub keepalive_pool_size: usize,
    /// A request head must arrive whole within this (default
    /// [`DEFAULT_CLIENT_HEADER_TIMEOUT`]); a slower client is disconnected.
    pub client_header_timeout: Duration,
    /// An idle keep-alive client connection closes after this (default
    /// [`DEFAULT_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// The longest request target, bytes (default [`DEFAULT_MAX_URI_LENGTH`]; 414 beyond).
    pub max_uri_length: usize,
    /// The most request header fields (default [`DEFAULT_MAX_HEADERS`]; 431 beyond).
    pub max_headers: usize,
    /// The most bytes of request header fields (default [`DEFAULT_MAX_HEADER_SIZE`]; 431).
    pub max_header_size: usize,
    /// The longest wait between two reads of a request body (default
    /// [`DEFAULT_CLIENT_BODY_TIMEOUT`]; 408 and close beyond).
    pub client_body_timeout: Duration,
    /// Client connections open at once over all proxy listeners (default `None`: from
    /// the open-file limit, `connections::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Client connections one address may hold (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`]; 0: no limit; trusted proxies are exempt).
    pub max_connections_per_ip: usize,
}

/// `[admin]`, validated: the token itself, wherever it came from.
#[derive(Clone, PartialEq)]
pub struct AdminConfig {
    /// Bearer token required on `/api` routes; `None` only on a loopback admin listener.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[routing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Tester header name, lowercase; `None` when overrides are off. Default
    /// [`DEFAULT_OVERRIDE_HEADER`], on.
    pub override_header: Option<String>,
    /// Whether clients keep their arm; default [`DEFAULT_STICKY`].
    pub sticky: bool,
    /// Sticky cookie name; default [`DEFAULT_STICKY_COOKIE`].
    pub sticky_cookie: String,
    /// Sticky cookie lifetime; default [`DEFAULT_STICKY_MAX_AGE`].
    pub sticky_max_age: Duration,
    /// Proxies in front whose forwarding headers are believed (default none).
    pub trusted_proxies: Vec<crate::trust::Cidr>,
    /// Clients whose tester header is honoured (default this machine).
    pub override_from: Vec<crate::trust::Cidr>,
    /// A secret that lets any client use the tester header (`x-sluice-token`).
    pub override_token: Option<String>,
    /// Forward the tester header upstream (default false).
    pub forward_override_header: bool,
}

/// One service, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Unique name: `[a-z0-9_-]`, 1..=64 characters.
    pub name: String,
    /// Host patterns; empty means the catch-all service.
    pub hosts: Vec<HostPattern>,
    /// Path prefix; default [`DEFAULT_PATH_PREFIX`].
    pub path_prefix: String,
    /// Stable upstreams (at least one).
    pub stable: Vec<UpstreamAddr>,
    /// Canary upstreams (may be empty).
    pub canary: Vec<UpstreamAddr>,
    /// Canary weight; default 0.
    pub canary_weight: Weight,
    /// Upstream connect timeout; default `server.connect_timeout`.
    pub connect_timeout: Duration,
    /// Upstream read timeout; default `server.read_timeout`.
    pub read_timeout: Duration,
    /// Replay of failed canary requests on stable; default on for
    /// [`DEFAULT_SHIELD_METHODS`].
    pub shield: Shield,
    /// When the judge cuts the canary back (`[services.cutback]`).
    pub cutback: Policy,
    /// Active probes (`[[services.probes]]`).
    pub probes: Vec<ProbeSpec>,
    /// External analyses (`[[services.analysis]]`).
    pub analysis: Vec<crate::analysis::AnalysisSpec>,
    /// How the probes combine per upstream; default `all`.
    pub probe_combine: Combine,
    /// Containers Sluice runs for this service (`[services.docker]`); its arms are then
    /// filled from them at run time.
    pub docker: Option<super::docker::DockerService>,
    /// Plain requests are answered with a 308 to the first TLS listener (default false).
    pub redirect_https: bool,
    /// Which time of a request is its latency (default total).
    pub latency: LatencyMeasure,
    /// An upgraded connection silent both ways this long is closed (default 1 h).
    pub websocket_idle_timeout: Duration,
    /// The largest request body, bytes; 0: unlimited (default [`DEFAULT_MAX_BODY_SIZE`]).
    pub max_body_size: u64,
    /// Route patterns the judge scores apart (`routes = ["/checkout", "/api/orders/:id"]`);
    /// requests matching none are grouped by their first path segments, ids folded.
    pub routes: Vec<crate::routes::RoutePattern>,
    /// How the upstreams are spoken to (`[services.upstream]`; default HTTP/1.1, no TLS).
    pub upstream: crate::upstream::UpstreamOptions,
    /// Its exact hosts get ACME certificates (`services.tls.acme`, else `[tls] acme`).
    pub acme: bool,
}

impl ServiceConfig {
    /// A fingerprint of what the file says about routing (stable, canary, weight): when it
    /// is unchanged across a restart, the runtime state saved in history is restored.
    pub fn routing_fingerprint(&self) -> String {
        let text = format!(
            "{}|{}|{}",
            self.stable
                .iter()
                .map(|u| u.spec.as_str())
                .collect::<Vec<_>>()
                .join(","),
            self.canary
                .iter()
                .map(|u| u.spec.as_str())
                .collect::<Vec<_>>()
                .join(","),
            self.canary_weight.units()
        );
        format!("{:016x}", fnv1a(text.as_bytes()))
    }

    /// The config as JSON, for history.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "hosts": self.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "path_prefix": self.path_prefix,
            "stable": self.stable.iter().map(|u| u.spec.clone()).collect::<Vec<_>>(),
            "canary": self.canary.iter().map(|u| u.spec.clone()).collect::<Vec<_>>(),
            "canary_weight": self.canary_weight.percent(),
            "connect_timeout": format_duration(self.connect_timeout),
            "read_timeout": format_duration(self.read_timeout),
            "shield": self.shield.enabled,
            "shield_methods": self.shield.methods.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>(),
            "cutback": self.cutback,
        })
    }
}

/// The canary shield of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shield {
    /// Default [`DEFAULT_SHIELD`].
    pub enabled: bool,
    /// Upper-case method names; default [`DEFAULT_SHIELD_METHODS`].
    pub methods: Vec<http::Method>,
}

impl Shield {
    /// Whether a request with this method may be replayed.
    #[inline]
    pub fn covers(&self, method: &http::Method) -> bool {
        self.enabled && self.methods.iter().any(|m| m == method)
    }
}
