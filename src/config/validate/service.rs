//! Validators of a `[[services]]` entry: name, hosts, upstreams, shield; and services
//! made from discovered containers.

use crate::config::Lookup;
use crate::types::{HostPattern, UpstreamAddr, Weight};
use std::collections::HashSet;
use std::path::Path;

use crate::config::file::ServiceFile;

use super::cutback::validate_cutback;
use super::probe::validate_probe;
use super::Checker;
use crate::config::model::*;
use crate::probes::{Combine, ProbeSpec};

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

/// Parses a list of upstreams, resolving names, recording each bad entry with its index.
pub fn parse_upstreams(list: &[String]) -> Result<Vec<UpstreamAddr>, Vec<(usize, String)>> {
    upstreams_with(list, Lookup::Resolve)
}

/// Same, resolving names only when `lookup` says so.
pub(crate) fn upstreams_with(
    list: &[String],
    lookup: Lookup,
) -> Result<Vec<UpstreamAddr>, Vec<(usize, String)>> {
    let mut out = Vec::with_capacity(list.len());
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (j, spec) in list.iter().enumerate() {
        let parsed = match lookup {
            Lookup::Resolve => UpstreamAddr::parse(spec),
            Lookup::SyntaxOnly => UpstreamAddr::unresolved(spec),
        };
        match parsed {
            Ok(u) => {
                // Without lookups two names cannot be compared by address: by spelling.
                let key = match lookup {
                    Lookup::Resolve => u.addr.to_string(),
                    Lookup::SyntaxOnly => u.spec.clone(),
                };
                if !seen.insert(key) {
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

pub(crate) fn validate_service(
    c: &mut Checker<'_>,
    base: &str,
    svc: &ServiceFile,
    server: &ServerConfig,
    docker_socket: &Path,
    base_dir: &Path,
    acme: bool,
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
    let lookup = c.lookup;
    let mut arm = |key: &str, list: &[String]| match upstreams_with(list, lookup) {
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
        .map(|d| super::docker::validate_docker(c, &format!("{base}.docker"), &name, d, base_dir));
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
    let mut analysis: Vec<crate::analysis::AnalysisSpec> = Vec::new();
    for (j, a) in svc.analysis.iter().enumerate() {
        let key = format!("{base}.analysis[{j}]");
        if let Some(spec) = super::analysis::validate_analysis(c, &key, a) {
            if analysis.iter().any(|q| q.name == spec.name) {
                c.fail(
                    format!("{key}.name"),
                    format!(
                        "'{}' is already the name of another analysis of this service",
                        spec.name
                    ),
                );
            } else {
                analysis.push(spec);
            }
        }
    }
    let latency = match svc.latency.as_deref() {
        None | Some("total") => LatencyMeasure::Total,
        Some("first_byte") => LatencyMeasure::FirstByte,
        Some(other) => {
            c.fail(
                format!("{base}.latency"),
                format!("'{other}' is not one of: total, first_byte"),
            );
            LatencyMeasure::Total
        }
    };
    let websocket_idle_timeout = c.duration(
        &format!("{base}.websocket_idle_timeout"),
        svc.websocket_idle_timeout.as_deref(),
        DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
    );
    let max_body_size = match svc.max_body_size {
        None => DEFAULT_MAX_BODY_SIZE,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            c.fail(
                format!("{base}.max_body_size"),
                format!("must be 0 (unlimited) or a number of bytes (got {n})"),
            );
            DEFAULT_MAX_BODY_SIZE
        }
    };
    let mut routes = Vec::new();
    for (j, r) in svc.routes.iter().flatten().enumerate() {
        match crate::routes::RoutePattern::parse(r) {
            Ok(p) => routes.push(p),
            Err(m) => c.fail(format!("{base}.routes[{j}]"), m),
        }
    }
    if routes.len() > crate::stats::ROUTES_KEPT {
        c.fail(
            format!("{base}.routes"),
            format!(
                "at most {} routes (got {})",
                crate::stats::ROUTES_KEPT,
                routes.len()
            ),
        );
    }
    let upstream = svc
        .upstream
        .as_ref()
        .map(|u| validate_upstream(c, &format!("{base}.upstream"), u, base_dir))
        .unwrap_or_default();
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
        analysis,
        probe_combine,
        docker,
        redirect_https: svc.redirect_https.unwrap_or(false),
        latency,
        websocket_idle_timeout,
        upstream,
        max_body_size,
        routes,
        acme: svc.tls.as_ref().and_then(|t| t.acme).unwrap_or(acme),
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
        lookup: Lookup::Resolve,
    };
    let service = validate_service(
        &mut c,
        "labels",
        &file,
        &config.server,
        &config.docker_socket,
        Path::new("."),
        false,
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

pub(crate) fn validate_shield(c: &mut Checker<'_>, base: &str, svc: &ServiceFile) -> Shield {
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

/// `[services.upstream]`: the protocol, and TLS's name, check and roots.
fn validate_upstream(
    c: &mut Checker<'_>,
    base: &str,
    f: &crate::config::file::UpstreamFile,
    base_dir: &Path,
) -> crate::upstream::UpstreamOptions {
    use crate::upstream::{CaBundle, Protocol, UpstreamOptions};
    let protocol = match f.protocol.as_deref() {
        None | Some("h1") => Protocol::H1,
        Some("h2c") => Protocol::H2c,
        Some("h2") => Protocol::H2,
        Some(other) => {
            c.fail(
                format!("{base}.protocol"),
                format!("'{other}' is not one of: h1, h2c, h2"),
            );
            Protocol::H1
        }
    };
    let tls = match (protocol, f.tls) {
        (Protocol::H2c, Some(true)) => {
            c.fail(
                format!("{base}.tls"),
                "h2c is HTTP/2 without TLS: use protocol = \"h2\" for HTTP/2 over TLS",
            );
            false
        }
        (Protocol::H2, Some(false)) => {
            c.fail(
                format!("{base}.tls"),
                "h2 is HTTP/2 over TLS: use protocol = \"h2c\" for HTTP/2 without TLS",
            );
            true
        }
        (Protocol::H2, _) => true,
        (_, t) => t.unwrap_or(false),
    };
    let ca = f
        .ca_file
        .as_ref()
        .and_then(|p| match CaBundle::load(&base_dir.join(p)) {
            Ok(b) => Some(std::sync::Arc::new(b)),
            Err(m) => {
                c.fail(format!("{base}.ca_file"), m);
                None
            }
        });
    if !tls {
        for (key, set) in [
            ("sni", f.sni.is_some()),
            ("ca_file", f.ca_file.is_some()),
            ("verify", f.verify.is_some()),
        ] {
            if set {
                c.fail(
                    format!("{base}.{key}"),
                    "only applies with TLS to the upstreams (tls = true or protocol = \"h2\")",
                );
            }
        }
    }
    UpstreamOptions {
        protocol,
        tls,
        sni: f.sni.clone(),
        verify: f.verify.unwrap_or(true),
        ca,
    }
}
