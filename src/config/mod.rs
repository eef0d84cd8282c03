//! Configuration: the TOML file model turned into a validated [`Config`].
//!
//! Two layers, as in river and sozu: [`file::FileConfig`] mirrors the file (serde, unknown
//! keys refused), and `Config::try_from(Source)` checks every value and fills the defaults
//! (the `DEFAULT_*` constants below). The rest of the code only ever sees a [`Config`].
//! Every error names the file and the key path, e.g.
//! `sluice.toml: services[1].canary_weight: must be between 0 and 100 (got 150)`.

pub mod docker;
pub mod file;
pub mod notify;

use crate::time::{format_duration, parse_duration};
use crate::types::{fnv1a, HostPattern, UpstreamAddr, Weight};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use file::{CutbackFile, FileConfig, ProbeFile, ServiceFile, StatusItem};

use crate::judge::Policy;
use crate::probes::{
    Combine, DockerCheck, HttpCheck, ProbeKind, ProbePolicy, ProbeSpec, ScriptCheck, StatusSet,
    TcpCheck,
};

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
    pub notify: Vec<notify::NotifierConfig>,
    /// The dashboard (`[dashboard]`).
    pub dashboard: notify::DashboardConfig,
}

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
    /// How the probes combine per upstream; default `all`.
    pub probe_combine: Combine,
    /// Containers Sluice runs for this service (`[services.docker]`); its arms are then
    /// filled from them at run time.
    pub docker: Option<docker::DockerService>,
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

/// One problem found in a file: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `services[1].cutback.min_requests`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key of the wrong type or an unknown key.
    #[error("{file}: {}{message}{}", if path.is_empty() { String::new() } else { format!("{path}: ") }, line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        /// The file.
        file: String,
        /// Key path where parsing stopped ("" at the top level).
        path: String,
        /// The parser's message.
        message: String,
        /// Line number, when known.
        line: Option<usize>,
    },
    /// The file parsed but some values are not acceptable.
    #[error("{}", render_problems(file, problems))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The key paths named by this error (empty for I/O errors).
    pub fn paths(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![],
            ConfigError::Parse { path, .. } => vec![path.clone()],
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.path.clone()).collect()
            }
        }
    }
}

fn render_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{file}: {}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
        let mut config = Config::parse_in(&text, &file, &base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates TOML text; `file` is only used in messages; relative paths are
    /// relative to the current directory.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Config::parse_in(text, file, &base)
    }

    /// Same, with relative paths resolved against `base`.
    pub fn parse_in(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let model = parse_model(text, file)?;
        validate(model, file, base)
    }
}

fn parse_model(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let parse_err = |path: String, e: &toml::de::Error| ConfigError::Parse {
        file: file.to_string(),
        path,
        message: e.message().trim().to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| parse_err(String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        parse_err(path, e.inner())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Collects problems while walking the model.
struct Checker<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Unwraps a per-key result, recording the problem and returning the fallback.
    fn take<T>(&mut self, path: &str, result: Result<T, String>, fallback: T) -> T {
        match result {
            Ok(v) => v,
            Err(m) => {
                self.fail(path, m);
                fallback
            }
        }
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => {
                let d = self.take(path, parse_duration(text), default);
                if d.is_zero() {
                    self.fail(path, "must be greater than zero");
                }
                d
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.take(
            path,
            text.parse::<SocketAddr>()
                .map_err(|_| format!("'{text}' is not an ip:port address")),
            fallback,
        )
    }
}

fn validate(model: FileConfig, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let base = base_dir;
    let mut c = Checker {
        file,
        problems: Vec::new(),
    };

    let s = &model.server;
    let listen = c.socket_addr("server.listen", s.listen.as_deref(), DEFAULT_LISTEN);
    let admin_listen = c.socket_addr(
        "server.admin_listen",
        s.admin_listen.as_deref(),
        DEFAULT_ADMIN_LISTEN,
    );
    let threads = match s.threads {
        None => DEFAULT_THREADS,
        Some(n) if (1..=256).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                "server.threads",
                format!("must be between 1 and 256 (got {n})"),
            );
            DEFAULT_THREADS
        }
    };
    let keepalive_pool_size = match s.keepalive_pool_size {
        None => DEFAULT_KEEPALIVE_POOL_SIZE,
        Some(n) if (0..=65_536).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                "server.keepalive_pool_size",
                format!("must be between 0 and 65536 (got {n})"),
            );
            DEFAULT_KEEPALIVE_POOL_SIZE
        }
    };
    let server = ServerConfig {
        listen,
        admin_listen,
        threads,
        drain_timeout: c.duration(
            "server.drain_timeout",
            s.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        ),
        connect_timeout: c.duration(
            "server.connect_timeout",
            s.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        read_timeout: c.duration(
            "server.read_timeout",
            s.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        ),
        idle_timeout: c.duration(
            "server.idle_timeout",
            s.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        ),
        keepalive_pool_size,
    };
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        c.fail(
            "server.admin_listen",
            format!("is the same address as server.listen ({})", server.listen),
        );
    }

    let admin = validate_admin(&mut c, &model, &server);
    let routing = validate_routing(&mut c, &model);
    let store = validate_store(&mut c, &model, base);
    let docker_socket = model
        .docker
        .socket
        .as_deref()
        .map(|s| PathBuf::from(s.strip_prefix("unix://").unwrap_or(s)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
    let docker_discovery = model.docker.discovery.unwrap_or(false);
    let discovery_interval = c.duration(
        "docker.discovery_interval",
        model.docker.discovery_interval.as_deref(),
        docker::DEFAULT_DISCOVERY_INTERVAL,
    );

    if model.services.is_empty() {
        c.fail("services", "at least one [[services]] table is required");
    }
    let mut services = Vec::with_capacity(model.services.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routes: HashMap<(String, String), usize> = HashMap::new();
    for (i, svc) in model.services.iter().enumerate() {
        let base = format!("services[{i}]");
        let Some(service) = validate_service(&mut c, &base, svc, &server, &docker_socket, base_dir)
        else {
            continue;
        };
        if let Some(first) = names.insert(service.name.clone(), i) {
            c.fail(
                format!("{base}.name"),
                format!(
                    "'{}' is already the name of services[{first}]",
                    service.name
                ),
            );
        }
        let route_keys: Vec<String> = if service.hosts.is_empty() {
            vec!["*catch-all*".into()]
        } else {
            service.hosts.iter().map(|h| h.to_string()).collect()
        };
        for host in route_keys {
            let key = (host.clone(), service.path_prefix.clone());
            if let Some(first) = routes.insert(key, i) {
                let what = if host == "*catch-all*" {
                    "a second catch-all service (no hosts)".to_string()
                } else {
                    format!("host '{host}'")
                };
                c.fail(
                    format!("{base}.hosts"),
                    format!(
                        "{what} with path prefix '{}' is already routed to services[{first}]",
                        service.path_prefix
                    ),
                );
            }
        }
        services.push(service);
    }

    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let notify = notify::validate_notify(&mut c, &model.notify, &names);
    let dashboard = notify::validate_dashboard(&mut c, &model.dashboard, &server);

    if c.problems.is_empty() {
        Ok(Config {
            source: None,
            server,
            admin,
            routing,
            store,
            docker_socket,
            docker_discovery,
            discovery_interval,
            services,
            notify,
            dashboard,
        })
    } else {
        Err(ConfigError::Invalid {
            file: c.file.to_string(),
            problems: c.problems,
        })
    }
}

fn validate_admin(c: &mut Checker<'_>, model: &FileConfig, server: &ServerConfig) -> AdminConfig {
    let a = &model.admin;
    let given = [
        a.token.is_some(),
        a.token_env.is_some(),
        a.token_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        c.fail(
            "admin",
            "set only one of admin.token, admin.token_env and admin.token_file",
        );
    }
    let token = if let Some(t) = &a.token {
        Some(("admin.token", t.trim().to_string()))
    } else if let Some(var) = &a.token_env {
        match std::env::var(var) {
            Ok(v) => Some(("admin.token_env", v.trim().to_string())),
            Err(_) => {
                c.fail(
                    "admin.token_env",
                    format!("environment variable {var} is not set"),
                );
                None
            }
        }
    } else if let Some(path) = &a.token_file {
        match std::fs::read_to_string(path) {
            Ok(v) => Some(("admin.token_file", v.trim().to_string())),
            Err(e) => {
                c.fail("admin.token_file", format!("cannot read '{path}': {e}"));
                None
            }
        }
    } else {
        None
    };
    let token = match token {
        Some((key, t)) if t.is_empty() => {
            c.fail(key, "the token is empty");
            None
        }
        Some((key, t)) if t.len() < 8 => {
            c.fail(key, "the token must be at least 8 characters long");
            None
        }
        Some((_, t)) => Some(t),
        None => None,
    };
    if token.is_none() && given == 0 && !server.admin_listen.ip().is_loopback() {
        c.fail(
            "admin.token",
            format!(
                "is required when server.admin_listen ({}) is not a loopback address",
                server.admin_listen
            ),
        );
    }
    AdminConfig { token }
}

fn validate_store(c: &mut Checker<'_>, model: &FileConfig, base: &Path) -> StoreConfig {
    let f = &model.store;
    let text = f
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE_URL.to_string());
    let absolute = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let url = if let Some(path) = text.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() || path == ":memory:" {
            c.fail(
                "store.url",
                "an SQLite store needs a file path (sqlite://sluice.db); history must survive a restart",
            );
        }
        StoreUrl::Sqlite(absolute(path))
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        StoreUrl::Postgres(text.clone())
    } else {
        c.fail(
            "store.url",
            format!("'{text}' is not sqlite://PATH or postgres://USER@HOST/DB"),
        );
        StoreUrl::Sqlite(absolute("sluice.db"))
    };
    let spool = match (&f.spool, &url) {
        (Some(p), _) => absolute(p),
        (None, StoreUrl::Sqlite(db)) => {
            let mut name = db.clone().into_os_string();
            name.push(".spool");
            PathBuf::from(name)
        }
        (None, StoreUrl::Postgres(_)) => absolute("sluice.spool"),
    };
    let spool_max_bytes = match f.spool_max_bytes {
        None => DEFAULT_SPOOL_MAX_BYTES,
        Some(n) if n >= 64 * 1024 => n as u64,
        Some(n) => {
            c.fail(
                "store.spool_max_bytes",
                format!("must be at least 65536 (got {n})"),
            );
            DEFAULT_SPOOL_MAX_BYTES
        }
    };
    StoreConfig {
        enabled: f.enabled.unwrap_or(true),
        url,
        spool,
        spool_max_bytes,
        probe_retention: c.duration(
            "store.probe_retention",
            f.probe_retention.as_deref(),
            DEFAULT_PROBE_RETENTION,
        ),
        sample_retention: c.duration(
            "store.sample_retention",
            f.sample_retention.as_deref(),
            DEFAULT_SAMPLE_RETENTION,
        ),
    }
}

fn validate_routing(c: &mut Checker<'_>, model: &FileConfig) -> RoutingConfig {
    let r = &model.routing;
    let header = r
        .override_header
        .clone()
        .unwrap_or_else(|| DEFAULT_OVERRIDE_HEADER.to_string())
        .to_ascii_lowercase();
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        c.fail(
            "routing.override_header",
            format!("'{header}' is not a valid header name"),
        );
    }
    let cookie = r
        .sticky_cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        c.fail(
            "routing.sticky_cookie",
            format!("'{cookie}' is not a valid cookie name (letters, digits, '_', '-', '.')"),
        );
    }
    RoutingConfig {
        override_header: r
            .allow_override
            .unwrap_or(DEFAULT_ALLOW_OVERRIDE)
            .then_some(header),
        sticky: r.sticky.unwrap_or(DEFAULT_STICKY),
        sticky_cookie: cookie,
        sticky_max_age: c.duration(
            "routing.sticky_max_age",
            r.sticky_max_age.as_deref(),
            DEFAULT_STICKY_MAX_AGE,
        ),
    }
}

/// Checks a service name: the API and the metrics use it as is.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("'{name}' must be 1 to 64 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "'{name}' may only contain lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Parses a list of upstreams, recording each bad entry with its index.
pub fn parse_upstreams(list: &[String]) -> Result<Vec<UpstreamAddr>, Vec<(usize, String)>> {
    let mut out = Vec::with_capacity(list.len());
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (j, spec) in list.iter().enumerate() {
        match UpstreamAddr::parse(spec) {
            Ok(u) => {
                if !seen.insert(u.addr) {
                    errors.push((j, format!("'{spec}' is listed twice")));
                }
                out.push(u)
            }
            Err(m) => errors.push((j, m)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn validate_service(
    c: &mut Checker<'_>,
    base: &str,
    svc: &ServiceFile,
    server: &ServerConfig,
    docker_socket: &Path,
    base_dir: &Path,
) -> Option<ServiceConfig> {
    let before = c.problems.len();
    let name = match &svc.name {
        None => {
            c.fail(format!("{base}.name"), "is required");
            String::new()
        }
        Some(n) => {
            if let Err(m) = validate_name(n) {
                c.fail(format!("{base}.name"), m);
            }
            n.clone()
        }
    };
    let mut hosts = Vec::new();
    for (j, h) in svc.hosts.iter().enumerate() {
        if let Some(p) = c
            .take(
                &format!("{base}.hosts[{j}]"),
                HostPattern::parse(h).map(Some),
                None,
            )
            .filter(|p| !hosts.contains(p))
        {
            hosts.push(p);
        }
    }
    let path_prefix = svc
        .path_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
    if !path_prefix.starts_with('/') || path_prefix.contains(char::is_whitespace) {
        c.fail(
            format!("{base}.path_prefix"),
            format!("'{path_prefix}' must start with '/' and contain no spaces"),
        );
    }
    let mut arm = |key: &str, list: &[String]| match parse_upstreams(list) {
        Ok(v) => v,
        Err(errors) => {
            for (j, m) in errors {
                c.fail(format!("{base}.{key}[{j}]"), m);
            }
            Vec::new()
        }
    };
    let stable = arm("stable", &svc.stable);
    let canary = arm("canary", &svc.canary);
    let docker = svc
        .docker
        .as_ref()
        .map(|d| docker::validate_docker(c, &format!("{base}.docker"), &name, d, base_dir));
    if docker.is_some() {
        for (key, list) in [("stable", &svc.stable), ("canary", &svc.canary)] {
            if !list.is_empty() {
                c.fail(
                    format!("{base}.{key}"),
                    "is filled from the service's containers when [services.docker] is set: remove it",
                );
            }
        }
    } else if svc.stable.is_empty() {
        c.fail(
            format!("{base}.stable"),
            "needs at least one upstream (host:port), or a [services.docker] section",
        );
    }
    let canary_weight = match svc.canary_weight {
        None => Weight::ZERO,
        Some(p) => c.take(
            &format!("{base}.canary_weight"),
            Weight::from_percent(p),
            Weight::ZERO,
        ),
    };
    if !canary_weight.is_zero() && svc.canary.is_empty() {
        c.fail(
            format!("{base}.canary_weight"),
            format!(
                "is {}% but the service has no canary upstreams",
                canary_weight.percent()
            ),
        );
    }
    let connect_timeout = c.duration(
        &format!("{base}.connect_timeout"),
        svc.connect_timeout.as_deref(),
        server.connect_timeout,
    );
    let read_timeout = c.duration(
        &format!("{base}.read_timeout"),
        svc.read_timeout.as_deref(),
        server.read_timeout,
    );
    let shield = validate_shield(c, base, svc);
    let cutback = validate_cutback(c, &format!("{base}.cutback"), &svc.cutback);
    let probe_combine = match svc.probe_combine.as_deref() {
        None | Some("all") => Combine::All,
        Some("any") => Combine::Any,
        Some(other) => {
            c.fail(
                format!("{base}.probe_combine"),
                format!("'{other}' is not \"all\" (AND) or \"any\" (OR)"),
            );
            Combine::All
        }
    };
    let mut probes: Vec<ProbeSpec> = Vec::new();
    for (j, p) in svc.probes.iter().enumerate() {
        let key = format!("{base}.probes[{j}]");
        if let Some(spec) = validate_probe(c, &key, p, docker_socket, base_dir) {
            if probes.iter().any(|q| q.name == spec.name) {
                c.fail(
                    format!("{key}.name"),
                    format!(
                        "'{}' is already the name of another probe of this service",
                        spec.name
                    ),
                );
            } else {
                probes.push(spec);
            }
        }
    }
    (c.problems.len() == before).then_some(ServiceConfig {
        name,
        hosts,
        path_prefix,
        stable,
        canary,
        canary_weight,
        connect_timeout,
        read_timeout,
        shield,
        cutback,
        probes,
        probe_combine,
        docker,
    })
}

/// A service the config does not have, made from its discovered containers' labels: the
/// given hosts, path prefix and stable upstreams, and every other setting at its default.
pub fn discovered_service(
    config: &Config,
    name: &str,
    hosts: &[String],
    path_prefix: Option<&str>,
    stable: &[String],
) -> Result<ServiceConfig, String> {
    let file = ServiceFile {
        name: Some(name.to_string()),
        hosts: hosts.to_vec(),
        path_prefix: path_prefix.map(str::to_string),
        stable: stable.to_vec(),
        ..Default::default()
    };
    let mut c = Checker {
        file: "labels",
        problems: Vec::new(),
    };
    let service = validate_service(
        &mut c,
        "labels",
        &file,
        &config.server,
        &config.docker_socket,
        Path::new("."),
    );
    match service {
        Some(s) if c.problems.is_empty() => Ok(s),
        _ => Err(c
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path.replace("labels.", "sluice."), p.message))
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Which probe kind each kind-specific key belongs to.
const PROBE_KEYS: &[(&str, &str)] = &[
    ("method", "http"),
    ("path", "http"),
    ("host", "http"),
    ("headers", "http"),
    ("expect_status", "http"),
    ("body_contains", "http"),
    ("max_response_time", "http"),
    ("send", "tcp"),
    ("expect", "tcp"),
    ("command", "script"),
    ("env", "script"),
    ("expect_exit", "script"),
];

/// Finds `program` the way exec would: a path (relative to the config file), or a name
/// on PATH; it must be an executable file.
fn resolve_program(program: &str, base_dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        let p = Path::new(program);
        vec![if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut exists = None;
    for c in candidates {
        if let Ok(meta) = std::fs::metadata(&c) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(c);
            }
            exists.get_or_insert(c);
        }
    }
    match exists {
        Some(p) => Err(format!("'{}' is not an executable file", p.display())),
        None if program.contains('/') => Err(format!("'{program}' does not exist")),
        None => Err(format!("'{program}' is not found on PATH")),
    }
}

fn validate_probe(
    c: &mut Checker<'_>,
    key: &str,
    p: &ProbeFile,
    docker_socket: &Path,
    base_dir: &Path,
) -> Option<ProbeSpec> {
    let before = c.problems.len();
    let k = |name: &str| format!("{key}.{name}");
    let name = match &p.name {
        Some(n) if !n.trim().is_empty() && n.len() <= 64 => n.trim().to_string(),
        Some(_) => {
            c.fail(k("name"), "must be 1 to 64 characters");
            String::new()
        }
        None => {
            c.fail(k("name"), "is required");
            String::new()
        }
    };
    let kind = p.kind.as_deref().unwrap_or("");
    if !["http", "tcp", "script", "docker"].contains(&kind) {
        c.fail(
            k("kind"),
            format!("'{kind}' is not one of http, tcp, script, docker"),
        );
    }
    let present = |field: &str| match field {
        "method" => p.method.is_some(),
        "path" => p.path.is_some(),
        "host" => p.host.is_some(),
        "headers" => p.headers.is_some(),
        "expect_status" => p.expect_status.is_some(),
        "body_contains" => p.body_contains.is_some(),
        "max_response_time" => p.max_response_time.is_some(),
        "send" => p.send.is_some(),
        "expect" => p.expect.is_some(),
        "command" => p.command.is_some(),
        "env" => p.env.is_some(),
        "expect_exit" => p.expect_exit.is_some(),
        _ => false,
    };
    for (field, owner) in PROBE_KEYS {
        if present(field) && *owner != kind && !kind.is_empty() {
            c.fail(
                k(field),
                format!("only applies to kind = \"{owner}\" (this probe is \"{kind}\")"),
            );
        }
    }
    let d = ProbePolicy::default();
    let threshold = |c: &mut Checker<'_>, field: &str, v: Option<i64>, default: u32| match v {
        None => default,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(n) => {
            c.fail(k(field), format!("must be between 1 and 1000 (got {n})"));
            default
        }
    };
    let policy = ProbePolicy {
        interval: c.duration(&k("interval"), p.interval.as_deref(), d.interval),
        initial_delay: match p.initial_delay.as_deref() {
            None => d.initial_delay,
            Some(t) => c.take(&k("initial_delay"), parse_duration(t), d.initial_delay),
        },
        timeout: c.duration(&k("timeout"), p.timeout.as_deref(), d.timeout),
        success_threshold: threshold(
            c,
            "success_threshold",
            p.success_threshold,
            d.success_threshold,
        ),
        failure_threshold: threshold(
            c,
            "failure_threshold",
            p.failure_threshold,
            d.failure_threshold,
        ),
        monitor_for: match p.monitor_for.as_deref() {
            None => d.monitor_for,
            Some(t) => c.take(&k("monitor_for"), parse_duration(t), d.monitor_for),
        },
        retry_interval: c.duration(
            &k("retry_interval"),
            p.retry_interval.as_deref(),
            d.retry_interval,
        ),
    };
    if policy.timeout > policy.interval {
        c.fail(
            k("timeout"),
            format!(
                "{} is longer than the interval ({})",
                format_duration(policy.timeout),
                format_duration(policy.interval)
            ),
        );
    }
    let kind = match kind {
        "http" => {
            let method = p.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
            let method = c.take(
                &k("method"),
                http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("'{method}' is not a method")),
                http::Method::GET,
            );
            let path = p.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                c.fail(
                    k("path"),
                    format!("'{path}' must start with '/' and contain no spaces"),
                );
            }
            let mut headers = Vec::new();
            for (name, value) in p.headers.iter().flatten() {
                match (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => headers.push((n, v)),
                    _ => c.fail(k(&format!("headers.{name}")), "is not a valid header"),
                }
            }
            let expect_status = match &p.expect_status {
                None => StatusSet::default_ok(),
                Some(items) if items.is_empty() => {
                    c.fail(k("expect_status"), "lists no status");
                    StatusSet::default_ok()
                }
                Some(items) => {
                    let mut ranges = Vec::new();
                    for (j, item) in items.iter().enumerate() {
                        let text = match item {
                            StatusItem::Code(n) => n.to_string(),
                            StatusItem::Text(t) => t.clone(),
                        };
                        match StatusSet::parse_item(&text) {
                            Ok(r) => ranges.push(r),
                            Err(m) => c.fail(k(&format!("expect_status[{j}]")), m),
                        }
                    }
                    StatusSet(ranges)
                }
            };
            let max_response_time = p
                .max_response_time
                .as_deref()
                .map(|t| c.duration(&k("max_response_time"), Some(t), d.timeout));
            ProbeKind::Http(HttpCheck {
                method,
                path,
                host: p.host.clone(),
                headers,
                expect_status,
                body_contains: p.body_contains.clone().filter(|b| !b.is_empty()),
                max_response_time,
            })
        }
        "tcp" => ProbeKind::Tcp(TcpCheck {
            send: p.send.as_ref().map(|s| unescape(s).into_bytes()),
            expect: p
                .expect
                .as_ref()
                .map(|s| unescape(s).into_bytes())
                .filter(|e| !e.is_empty()),
        }),
        "script" => {
            let command = p.command.clone().unwrap_or_default();
            match command.first() {
                None => c.fail(
                    k("command"),
                    "needs a program (an argv list, e.g. [\"/usr/local/bin/check\", \"--fast\"])",
                ),
                Some(program) => {
                    if let Err(m) = resolve_program(program, base_dir) {
                        c.fail(k("command[0]"), m);
                    }
                }
            }
            let command = match command.split_first() {
                Some((program, rest)) => {
                    let mut argv = vec![resolve_program(program, base_dir)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| program.clone())];
                    argv.extend(rest.iter().cloned());
                    argv
                }
                None => Vec::new(),
            };
            let expect_exit = match p.expect_exit {
                None => 0,
                Some(n) if (0..=255).contains(&n) => n as i32,
                Some(n) => {
                    c.fail(
                        k("expect_exit"),
                        format!("must be between 0 and 255 (got {n})"),
                    );
                    0
                }
            };
            ProbeKind::Script(ScriptCheck {
                command,
                env: p.env.clone().unwrap_or_default().into_iter().collect(),
                expect_exit,
            })
        }
        _ => ProbeKind::Docker(DockerCheck {
            socket: docker_socket.to_path_buf(),
        }),
    };
    (c.problems.len() == before).then_some(ProbeSpec { name, kind, policy })
}

/// `\r`, `\n`, `\t`, `\\` in TCP send/expect strings.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn validate_shield(c: &mut Checker<'_>, base: &str, svc: &ServiceFile) -> Shield {
    let names: Vec<String> = match &svc.shield_methods {
        Some(list) => list.clone(),
        None => DEFAULT_SHIELD_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect(),
    };
    let mut methods = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let upper = name.trim().to_ascii_uppercase();
        if !IDEMPOTENT_METHODS.contains(&upper.as_str()) {
            c.fail(
                format!("{base}.shield_methods[{j}]"),
                format!(
                    "'{name}' is not an idempotent method and can never be replayed (allowed: {})",
                    IDEMPOTENT_METHODS.join(", ")
                ),
            );
            continue;
        }
        if let Ok(m) = http::Method::from_bytes(upper.as_bytes()) {
            methods.push(m);
        }
    }
    Shield {
        enabled: svc.shield.unwrap_or(DEFAULT_SHIELD),
        methods,
    }
}

fn validate_cutback(c: &mut Checker<'_>, base: &str, f: &CutbackFile) -> Policy {
    let d = Policy::default();
    let key = |k: &str| format!("{base}.{k}");
    let mut ratio = |k: &str, v: Option<f64>, default: f64| match v {
        None => default,
        Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => x,
        Some(x) => {
            c.fail(key(k), format!("must be a ratio between 0 and 1 (got {x})"));
            default
        }
    };
    let max_error_rate = ratio("max_error_rate", f.max_error_rate, d.max_error_rate);
    let max_error_rate_increase = ratio(
        "max_error_rate_increase",
        f.max_error_rate_increase,
        d.max_error_rate_increase,
    );
    let confidence = match f.confidence {
        None => d.confidence,
        Some(x) if x.is_finite() && (0.5..1.0).contains(&x) => x,
        Some(x) => {
            c.fail(
                key("confidence"),
                format!("must be at least 0.5 and below 1 (got {x}; e.g. 0.99 or 0.999)"),
            );
            d.confidence
        }
    };
    let max_p95_ratio = match f.max_p95_ratio {
        None => d.max_p95_ratio,
        Some(0.0) => None,
        Some(x) if x.is_finite() && x >= 1.0 => Some(x),
        Some(x) => {
            c.fail(
                key("max_p95_ratio"),
                format!("must be at least 1 (got {x}); 0 turns the rule off"),
            );
            d.max_p95_ratio
        }
    };
    let mut optional_duration = |k: &str, v: Option<&str>, default: Option<Duration>| match v {
        None => default,
        Some(text) => match parse_duration(text) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(m) => {
                c.fail(key(k), m);
                default
            }
        },
    };
    let max_p95 = optional_duration("max_p95", f.max_p95.as_deref(), d.max_p95);
    let max_p99 = optional_duration("max_p99", f.max_p99.as_deref(), d.max_p99);
    let latency_slack = match f.latency_slack.as_deref() {
        None => d.latency_slack,
        Some(text) => c.take(&key("latency_slack"), parse_duration(text), d.latency_slack),
    };
    let breach_for = match f.breach_for.as_deref() {
        None => d.breach_for,
        Some(text) => c.take(&key("breach_for"), parse_duration(text), d.breach_for),
    };
    let window = c.duration(&key("window"), f.window.as_deref(), d.window);
    if window > Duration::from_secs(3600) {
        c.fail(key("window"), "must be at most 1h");
    }
    let min_requests = match f.min_requests {
        None => d.min_requests,
        Some(n) if n >= 1 => n as u64,
        Some(n) => {
            c.fail(key("min_requests"), format!("must be > 0 (got {n})"));
            d.min_requests
        }
    };
    let mut usage = |k: &str, v: Option<f64>| match v {
        None => None,
        Some(x) if x.is_finite() && x > 0.0 && x <= 1.0 => Some(x),
        Some(x) => {
            c.fail(
                key(k),
                format!(
                    "must be a share of the container's limit, above 0 and at most 1 (got {x})"
                ),
            );
            None
        }
    };
    let max_memory = usage("max_memory", f.max_memory);
    let max_cpu = usage("max_cpu", f.max_cpu);
    let max_memory_for = c.duration(
        &key("max_memory_for"),
        f.max_memory_for.as_deref(),
        d.max_memory_for,
    );
    let max_cpu_for = c.duration(&key("max_cpu_for"), f.max_cpu_for.as_deref(), d.max_cpu_for);
    let max_consecutive_failures = match f.max_consecutive_failures {
        None => d.max_consecutive_failures,
        Some(n) if (0..=1_000_000).contains(&n) => n as u32,
        Some(n) => {
            c.fail(
                key("max_consecutive_failures"),
                format!("must be between 0 (off) and 1000000 (got {n})"),
            );
            d.max_consecutive_failures
        }
    };
    Policy {
        enabled: f.enabled.unwrap_or(d.enabled),
        max_error_rate,
        max_error_rate_increase,
        max_p95,
        max_p99,
        max_p95_ratio,
        latency_slack,
        min_requests,
        max_consecutive_failures,
        breach_for,
        confidence,
        window,
        max_memory,
        max_memory_for,
        max_cpu,
        max_cpu_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    const MINIMAL: &str = r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
"#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.server.threads, DEFAULT_THREADS);
        assert_eq!(c.services[0].path_prefix, "/");
        assert!(c.services[0].canary.is_empty());
        assert_eq!(
            c.routing.override_header.as_deref(),
            Some(DEFAULT_OVERRIDE_HEADER)
        );
        assert!(c.admin.token.is_none());
    }

    #[test]
    fn weight_parses_fractions_and_refuses_out_of_range() {
        assert_eq!(Weight::from_percent(0.1).unwrap().units(), 100);
        assert_eq!(Weight::from_percent(12.345).unwrap().units(), 12_345);
        assert!(Weight::from_percent(100.01).is_err());
        assert!(Weight::from_percent(-1.0).is_err());
        assert!(Weight::from_percent(f64::NAN).is_err());
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = parse(
            r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
colour = "blue"
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.toml: services[0]"), "{text}");
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("line 5"), "{text}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let err = parse(
            "[server]\nthreads = \"two\"\n[[services]]\nname=\"a\"\nstable=[\"127.0.0.1:1\"]\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("test.toml: server.threads: "),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = parse(
            r#"
[server]
threads = 0
[[services]]
name = "Web Site"
stable = []
canary_weight = 150.0
[[services]]
name = "api"
stable = ["nonsense"]
canary_weight = 5
"#,
        )
        .unwrap_err();
        let paths = err.paths();
        for p in [
            "server.threads",
            "services[0].name",
            "services[0].stable",
            "services[0].canary_weight",
            "services[1].stable[0]",
            "services[1].canary_weight",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} missing in {paths:?}");
        }
    }

    #[test]
    fn duplicate_names_and_routes_are_refused() {
        let err = parse(
            r#"
[[services]]
name = "a"
stable = ["127.0.0.1:1"]
[[services]]
name = "a"
stable = ["127.0.0.1:2"]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("services[1].name"), "{text}");
        assert!(text.contains("second catch-all"), "{text}");
    }

    #[test]
    fn public_admin_needs_a_token() {
        let err = parse(&format!(
            "[server]\nadmin_listen = \"0.0.0.0:9901\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(err.paths(), vec!["admin.token".to_string()]);
        let ok = parse(&format!(
            "[server]\nadmin_listen = \"0.0.0.0:9901\"\n[admin]\ntoken = \"0123456789\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(ok.admin.token.as_deref(), Some("0123456789"));
    }

    #[test]
    fn store_paths_are_relative_to_the_config() {
        let c = Config::parse_in(MINIMAL, "t.toml", Path::new("/etc/sluice")).unwrap();
        assert_eq!(
            c.store.url,
            StoreUrl::Sqlite("/etc/sluice/sluice.db".into())
        );
        assert_eq!(c.store.spool, PathBuf::from("/etc/sluice/sluice.db.spool"));
        let c = Config::parse_in(
            &format!("[store]\nurl = \"postgres://gate:s3cret@db.internal/sluice\"\n{MINIMAL}"),
            "t.toml",
            Path::new("/srv"),
        )
        .unwrap();
        assert_eq!(
            c.store.url.to_string(),
            "postgres://gate:***@db.internal/sluice"
        );
        assert_eq!(c.store.spool, PathBuf::from("/srv/sluice.spool"));
        let err = Config::parse(
            &format!("[store]\nurl = \"mysql://x\"\n{MINIMAL}"),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.paths(), vec!["store.url".to_string()]);
    }

    #[test]
    fn probes_are_validated_with_their_key_paths() {
        let err = parse(
            r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
probe_combine = "most"
[[services.probes]]
name = "a"
kind = "http"
interval = "0s"
expect_status = ["2xx", "600"]
send = "PING"
[[services.probes]]
name = "b"
kind = "script"
command = ["/definitely/not/here"]
[[services.probes]]
name = "c"
kind = "carrier-pigeon"
[[services.probes]]
name = "a"
kind = "tcp"
timeout = "20s"
"#,
        )
        .unwrap_err();
        let paths = err.paths();
        for p in [
            "services[0].probe_combine",
            "services[0].probes[0].interval",
            "services[0].probes[0].expect_status[1]",
            "services[0].probes[0].send",
            "services[0].probes[1].command[0]",
            "services[0].probes[2].kind",
            "services[0].probes[3].timeout",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} missing in {paths:?}");
        }
    }

    #[test]
    fn probes_get_their_defaults() {
        let c = parse(
            r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
probe_combine = "any"
[[services.probes]]
name = "health"
kind = "http"
path = "/health"
expect_status = [200, "3xx"]
body_contains = "ok"
[[services.probes]]
name = "redis"
kind = "tcp"
send = "PING\\r\\n"
expect = "+PONG"
[[services.probes]]
name = "check"
kind = "script"
command = ["true"]
"#,
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.probe_combine, Combine::Any);
        assert_eq!(s.probes.len(), 3);
        assert_eq!(s.probes[0].policy, ProbePolicy::default());
        let ProbeKind::Http(h) = &s.probes[0].kind else {
            panic!()
        };
        assert!(
            h.expect_status.contains(200)
                && h.expect_status.contains(302)
                && !h.expect_status.contains(204)
        );
        let ProbeKind::Tcp(t) = &s.probes[1].kind else {
            panic!()
        };
        assert_eq!(t.send.as_deref(), Some(&b"PING\r\n"[..]));
        let ProbeKind::Script(sc) = &s.probes[2].kind else {
            panic!()
        };
        assert!(
            sc.command[0].ends_with("/true"),
            "resolved on PATH: {:?}",
            sc.command
        );
    }

    #[test]
    fn hosts_are_normalised() {
        let c = parse(
            r#"
[[services]]
name = "a"
hosts = ["Web.Example.com", "*.example.org"]
stable = ["127.0.0.1:1"]
"#,
        )
        .unwrap();
        assert_eq!(
            c.services[0].hosts,
            vec![
                HostPattern::Exact("web.example.com".into()),
                HostPattern::Wildcard(".example.org".into())
            ]
        );
        assert!(
            parse("[[services]]\nname=\"a\"\nhosts=[\"a.com:80\"]\nstable=[\"127.0.0.1:1\"]")
                .is_err()
        );
    }
}
