//! Validation: the file model checked key by key into a [`Config`](crate::config::Config),
//! every problem collected with its key path before any is reported.

pub mod analysis;
pub mod cutback;
pub mod docker;
pub mod notify;
pub mod probe;
pub mod server;
pub mod service;
pub mod tls;

use crate::time::parse_duration;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::file::FileConfig;

use crate::config::model::*;
use crate::config::{ConfigError, Problem};
use server::{validate_admin, validate_routing, validate_store};
use service::{validate_name, validate_service};

/// Collects problems while walking the model.
pub(crate) struct Checker<'a> {
    pub(crate) file: &'a str,
    pub(crate) problems: Vec<Problem>,
    /// Whether upstream names are resolved (start) or only checked (`check-config`).
    pub(crate) lookup: crate::config::Lookup,
}

impl Checker<'_> {
    pub(crate) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Unwraps a per-key result, recording the problem and returning the fallback.
    pub(crate) fn take<T>(&mut self, path: &str, result: Result<T, String>, fallback: T) -> T {
        match result {
            Ok(v) => v,
            Err(m) => {
                self.fail(path, m);
                fallback
            }
        }
    }

    /// A probe's or an analysis' name: required, 1 to 64 characters once trimmed.
    pub(crate) fn name(&mut self, path: &str, value: Option<&str>) -> String {
        match value.map(str::trim) {
            Some(n) if !n.is_empty() && n.len() <= 64 => n.to_string(),
            Some(_) => {
                self.fail(path, "must be 1 to 64 characters");
                String::new()
            }
            None => {
                self.fail(path, "is required");
                String::new()
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
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

    pub(crate) fn socket_addr(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: &str,
    ) -> SocketAddr {
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

pub(crate) fn validate(
    model: FileConfig,
    file: &str,
    base_dir: &Path,
    lookup: crate::config::Lookup,
) -> Result<Config, ConfigError> {
    let base = base_dir;
    let mut c = Checker {
        file,
        problems: Vec::new(),
        lookup,
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
    let mut limit = |key: &str, v: Option<i64>, default: usize, max: i64| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                format!("server.{key}"),
                format!("must be between 1 and {max} (got {n})"),
            );
            default
        }
    };
    let max_uri_length = limit(
        "max_uri_length",
        s.max_uri_length,
        DEFAULT_MAX_URI_LENGTH,
        1 << 20,
    );
    let max_headers = limit("max_headers", s.max_headers, DEFAULT_MAX_HEADERS, 10_000);
    let max_header_size = limit(
        "max_header_size",
        s.max_header_size,
        DEFAULT_MAX_HEADER_SIZE,
        1 << 20,
    );
    let client_header_timeout = c.duration(
        "server.client_header_timeout",
        s.client_header_timeout.as_deref(),
        DEFAULT_CLIENT_HEADER_TIMEOUT,
    );
    let keepalive_timeout = c.duration(
        "server.keepalive_timeout",
        s.keepalive_timeout.as_deref(),
        DEFAULT_KEEPALIVE_TIMEOUT,
    );
    let max_connections = match s.max_connections {
        None => None,
        Some(n) if (1..=10_000_000).contains(&n) => Some(n as usize),
        Some(n) => {
            c.fail(
                "server.max_connections",
                format!("must be between 1 and 10000000 (got {n})"),
            );
            None
        }
    };
    let max_connections_per_ip = match s.max_connections_per_ip {
        None => DEFAULT_MAX_CONNECTIONS_PER_IP,
        Some(n) if (0..=10_000_000).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                "server.max_connections_per_ip",
                format!("must be between 0 (no limit) and 10000000 (got {n})"),
            );
            DEFAULT_MAX_CONNECTIONS_PER_IP
        }
    };
    let client_body_timeout = c.duration(
        "server.client_body_timeout",
        s.client_body_timeout.as_deref(),
        DEFAULT_CLIENT_BODY_TIMEOUT,
    );
    let server = ServerConfig {
        listen,
        client_body_timeout,
        max_connections,
        max_connections_per_ip,
        client_header_timeout,
        keepalive_timeout,
        max_uri_length,
        max_headers,
        max_header_size,
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
        crate::config::docker::DEFAULT_DISCOVERY_INTERVAL,
    );

    if model.services.is_empty() {
        c.fail("services", "at least one [[services]] table is required");
    }
    let global_acme = model.tls.acme.unwrap_or(false);
    let mut services = Vec::with_capacity(model.services.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routes: HashMap<(String, String), usize> = HashMap::new();
    for (i, svc) in model.services.iter().enumerate() {
        let base = format!("services[{i}]");
        let Some(service) = validate_service(
            &mut c,
            &base,
            svc,
            &server,
            &docker_socket,
            base_dir,
            global_acme,
        ) else {
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
    let service_names: Vec<String> = model
        .services
        .iter()
        .filter_map(|s| s.name.clone())
        .collect();
    let listeners = tls::validate_listeners(&mut c, &model.listeners, &server, &service_names);
    for (i, l) in listeners.iter().enumerate() {
        if l.proxy_protocol && routing.trusted_proxies.is_empty() {
            c.fail(
                format!("listeners[{i}].proxy_protocol"),
                "needs routing.trusted_proxies: the load balancers allowed to send the header",
            );
        }
    }
    let tls_listener = listeners.iter().any(|l| l.tls);
    let mut service_tls = Vec::with_capacity(model.services.len());
    for (i, svc) in model.services.iter().enumerate() {
        let own = svc.tls.as_ref().and_then(|t| t.acme);
        service_tls.push(tls::ServiceTls {
            index: i,
            name: svc.name.clone().unwrap_or_default(),
            hosts: svc.hosts.clone(),
            acme: own.unwrap_or(global_acme).then(|| match own {
                Some(_) => format!("services[{i}].tls.acme"),
                None => "tls.acme".to_string(),
            }),
        });
        if svc.redirect_https == Some(true) && !tls_listener {
            c.fail(
                format!("services[{i}].redirect_https"),
                "needs a listener with tls = true to redirect to",
            );
        }
    }
    let tls = tls::validate_tls(
        &mut c,
        &model.tls,
        &model.acme,
        base,
        &listeners,
        &service_tls,
    );

    let access_log = model
        .access_log
        .as_ref()
        .and_then(|f| server::validate_access_log(&mut c, f, base));

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
            listeners,
            tls,
            access_log,
        })
    } else {
        Err(ConfigError::Invalid {
            file: c.file.to_string(),
            problems: c.problems,
        })
    }
}
