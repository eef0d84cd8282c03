//! The config file model: what a TOML file may say, before validation.
//!
//! Every table denies unknown keys, and every optional key is an `Option` so that
//! validation (in `config::validate`) can tell "absent, use the default" from
//! "present and wrong". Defaults live in `config` as `DEFAULT_*` constants.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners, worker threads, timeouts.
    #[serde(default)]
    pub server: ServerFile,
    /// Admin API authentication.
    #[serde(default)]
    pub admin: AdminFile,
    /// Arm choice: tester header and sticky cookie.
    #[serde(default)]
    pub routing: RoutingFile,
    /// History store.
    #[serde(default)]
    pub store: StoreFile,
    /// The Docker engine.
    #[serde(default)]
    pub docker: DockerFile,
    /// The services behind the gate.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    /// Notifications.
    #[serde(default)]
    pub notify: Vec<NotifyFile>,
    /// The web dashboard.
    #[serde(default)]
    pub dashboard: DashboardFile,
    /// Proxy listeners (replace `server.listen` when given).
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// Certificates for TLS listeners.
    #[serde(default)]
    pub tls: TlsFile,
    /// The ACME server automatic certificates come from.
    #[serde(default)]
    pub acme: AcmeFile,
    /// One line per request (on when the table is there).
    pub access_log: Option<AccessLogFile>,
}

/// `[access_log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub buffer: Option<i64>,
}

/// `[acme]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub dir: Option<String>,
    pub ca_file: Option<String>,
    pub challenge: Option<String>,
    pub renew_before: Option<String>,
    pub retry_min: Option<String>,
}

/// One `[[listeners]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub tls: Option<bool>,
    pub redirect_https: Option<bool>,
    pub hsts: Option<String>,
    pub services: Option<Vec<String>>,
    pub http2: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
    pub max_connections: Option<i64>,
    pub proxy_protocol: Option<bool>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub acme: Option<bool>,
    pub unknown_name: Option<String>,
    pub default: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertificateFile>,
}

/// One `[[tls.certificates]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[dashboard]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardFile {
    pub enabled: Option<bool>,
    pub url: Option<String>,
}

/// One `[[notify]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub events: Option<Vec<String>>,
    pub services: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    pub backoff: Option<String>,
    pub queue: Option<i64>,
    // webhook, slack, discord
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    // email
    pub smtp_host: Option<String>,
    pub smtp_port: Option<i64>,
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<i64>,
    pub drain_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub keepalive_pool_size: Option<i64>,
    pub max_uri_length: Option<i64>,
    pub client_header_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_headers: Option<i64>,
    pub max_header_size: Option<i64>,
    pub client_body_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub enabled: Option<bool>,
    pub url: Option<String>,
    pub spool: Option<String>,
    pub spool_max_bytes: Option<i64>,
    pub probe_retention: Option<String>,
    pub sample_retention: Option<String>,
}

/// `[docker]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFile {
    pub socket: Option<String>,
    pub discovery: Option<bool>,
    pub discovery_interval: Option<String>,
}

/// `[routing]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    pub override_header: Option<String>,
    pub allow_override: Option<bool>,
    pub sticky: Option<bool>,
    pub sticky_cookie: Option<String>,
    pub sticky_max_age: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub override_from: Option<Vec<String>>,
    pub override_token: Option<String>,
    pub forward_override_header: Option<bool>,
}

/// One `[[services]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub stable: Vec<String>,
    #[serde(default)]
    pub canary: Vec<String>,
    pub canary_weight: Option<f64>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub shield: Option<bool>,
    pub shield_methods: Option<Vec<String>>,
    #[serde(default)]
    pub cutback: CutbackFile,
    pub probe_combine: Option<String>,
    #[serde(default)]
    pub probes: Vec<ProbeFile>,
    /// External analyses (`[[services.analysis]]`).
    #[serde(default)]
    pub analysis: Vec<AnalysisFile>,
    pub docker: Option<ServiceDockerFile>,
    /// Plain requests for this service get a 308 to https (ACME's HTTP-01 path excepted).
    pub redirect_https: Option<bool>,
    /// Which time of a request its latency is: `total` or `first_byte`.
    pub latency: Option<String>,
    /// How long an upgraded connection (WebSocket) may stay silent both ways.
    pub websocket_idle_timeout: Option<String>,
    /// The largest request body, bytes (0: unlimited).
    pub max_body_size: Option<i64>,
    /// Route patterns the judge scores apart.
    pub routes: Option<Vec<String>>,
    /// `tls.acme`: automatic certificates for this service's hosts (overrides `[tls] acme`).
    pub tls: Option<ServiceTlsFile>,
    /// How its upstreams are spoken to.
    pub upstream: Option<UpstreamFile>,
}

/// `[services.upstream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub protocol: Option<String>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
}

/// `[services.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTlsFile {
    pub acme: Option<bool>,
}

/// `[services.docker]`: the service's versions run as containers Sluice manages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDockerFile {
    pub image: Option<String>,
    pub name: Option<String>,
    pub port: Option<i64>,
    pub reach: Option<String>,
    pub publish_ip: Option<String>,
    pub replicas: Option<i64>,
    pub command: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub volumes: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub restart: Option<String>,
    pub healthcheck: Option<HealthcheckFile>,
    pub health_timeout: Option<String>,
    pub keep_old_for: Option<String>,
    pub keep_failed: Option<i64>,
}

/// `[services.docker.healthcheck]`: a container HEALTHCHECK (exec form, no shell).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckFile {
    pub command: Option<Vec<String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    pub start_period: Option<String>,
}

/// A status code in `expect_status`: a number or a string (`"2xx"`, `"200-299"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusItem {
    Code(i64),
    Text(String),
}

/// One `[[services.probes]]` table. Keys of other kinds are refused at validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub initial_delay: Option<String>,
    pub timeout: Option<String>,
    pub success_threshold: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub monitor_for: Option<String>,
    pub retry_interval: Option<String>,
    // http
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub expect_status: Option<Vec<StatusItem>>,
    pub body_contains: Option<String>,
    pub max_response_time: Option<String>,
    // tcp
    pub send: Option<String>,
    pub expect: Option<String>,
    // script
    pub command: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub expect_exit: Option<i64>,
}

/// One `[[services.analysis]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisFile {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub address: Option<String>,
    pub query: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub failure_condition: Option<String>,
    pub failure_limit: Option<i64>,
    pub max_inconclusive: Option<i64>,
}

/// `[services.cutback]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutbackFile {
    pub enabled: Option<bool>,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p95: Option<String>,
    pub max_p99: Option<String>,
    pub max_p95_ratio: Option<f64>,
    pub latency_slack: Option<String>,
    pub sustained_error_ratio: Option<f64>,
    pub sustained_error_slack: Option<f64>,
    pub sustained_p95_ratio: Option<f64>,
    pub sustained_latency_slack: Option<String>,
    pub min_requests: Option<i64>,
    pub max_consecutive_failures: Option<i64>,
    pub breach_for: Option<String>,
    pub confidence: Option<f64>,
    pub window: Option<String>,
    pub max_memory: Option<f64>,
    pub max_memory_for: Option<String>,
    pub max_cpu: Option<f64>,
    pub max_cpu_for: Option<String>,
}
