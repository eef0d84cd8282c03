//! Validators of `[[listeners]]` and `[tls]`: names and addresses, which listeners speak TLS,
//! and certificate files that load (each error names the file), cover the default name and
//! are not expired.

use std::collections::HashSet;
use std::path::Path;

use super::service::validate_name;
use super::Checker;
use crate::config::file::{AcmeFile, ListenerFile, TlsFile};
use crate::config::tls::{
    AcmeConfig, CertificatePaths, ListenerConfig, TlsConfig, UnknownNamePolicy,
    DEFAULT_LISTENER_NAME, DEFAULT_MAX_CONCURRENT_STREAMS,
};
use crate::config::ServerConfig;

/// What `[tls]` validation needs to know of one `[[services]]` entry.
pub(crate) struct ServiceTls {
    /// Its index in the file.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its host patterns, as written.
    pub hosts: Vec<String>,
    /// The key that asks for ACME certificates for it (`tls.acme` or
    /// `services[i].tls.acme`), when one does.
    pub acme: Option<String>,
}

/// The proxy listeners: `[[listeners]]`, or `server.listen` alone (a plain one, `http`).
pub(crate) fn validate_listeners(
    c: &mut Checker<'_>,
    files: &[ListenerFile],
    server: &ServerConfig,
    services: &[String],
) -> Vec<ListenerConfig> {
    if files.is_empty() {
        return vec![ListenerConfig {
            name: DEFAULT_LISTENER_NAME.into(),
            address: server.listen,
            tls: false,
            redirect_https: false,
            hsts: None,
            services: None,
            http2: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: None,
            proxy_protocol: false,
        }];
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let base = format!("listeners[{i}]");
        let name = match &f.name {
            Some(n) => {
                if let Err(m) = validate_name(n) {
                    c.fail(format!("{base}.name"), m);
                }
                if !names.insert(n.clone()) {
                    c.fail(format!("{base}.name"), format!("'{n}' is used twice"));
                }
                n.clone()
            }
            None => {
                c.fail(format!("{base}.name"), "is required");
                String::new()
            }
        };
        let address = match &f.address {
            Some(a) => c.socket_addr(&format!("{base}.address"), Some(a), ""),
            None => {
                c.fail(format!("{base}.address"), "is required (ip:port)");
                server.listen
            }
        };
        if address.port() != 0 && !addresses.insert(address) {
            c.fail(
                format!("{base}.address"),
                format!("{address} is used by another listener"),
            );
        }
        if address == server.admin_listen && address.port() != 0 {
            c.fail(
                format!("{base}.address"),
                format!("is the same address as server.admin_listen ({address})"),
            );
        }
        let tls = f.tls.unwrap_or(false);
        let redirect_https = f.redirect_https.unwrap_or(false);
        if tls && redirect_https {
            c.fail(
                format!("{base}.redirect_https"),
                "only a plain listener redirects to https",
            );
        }
        let hsts = f
            .hsts
            .as_deref()
            .map(|h| c.duration(&format!("{base}.hsts"), Some(h), Default::default()));
        if hsts.is_some() && !tls {
            c.fail(
                format!("{base}.hsts"),
                "only a TLS listener sends Strict-Transport-Security (browsers ignore it over http)",
            );
        }
        if let Some(list) = &f.services {
            for (j, s) in list.iter().enumerate() {
                if !services.iter().any(|n| n == s) {
                    c.fail(
                        format!("{base}.services[{j}]"),
                        format!("no service named '{s}'"),
                    );
                }
            }
        }
        let max_concurrent_streams = match f.max_concurrent_streams {
            None => DEFAULT_MAX_CONCURRENT_STREAMS,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                c.fail(
                    format!("{base}.max_concurrent_streams"),
                    format!("must be between 1 and 10000 (got {n})"),
                );
                DEFAULT_MAX_CONCURRENT_STREAMS
            }
        };
        let max_connections = match f.max_connections {
            None => None,
            Some(n) if (1..=10_000_000).contains(&n) => Some(n as usize),
            Some(n) => {
                c.fail(
                    format!("{base}.max_connections"),
                    format!("must be between 1 and 10000000 (got {n})"),
                );
                None
            }
        };
        out.push(ListenerConfig {
            name,
            address,
            tls,
            redirect_https,
            hsts,
            services: f.services.clone(),
            http2: f.http2.unwrap_or(tls),
            max_concurrent_streams,
            max_connections,
            proxy_protocol: f.proxy_protocol.unwrap_or(false),
        });
    }
    if out.iter().any(|l| l.redirect_https) && !out.iter().any(|l| l.tls) {
        c.fail(
            "listeners",
            "a listener redirects to https but no listener has tls = true",
        );
    }
    out
}

/// `[acme]`, when `tls.acme` asks for it; `hosts` are the host patterns of the services
/// that ask, each with the key that asked (`tls.acme` or `services[i].tls.acme`).
fn validate_acme(
    c: &mut Checker<'_>,
    f: &AcmeFile,
    base_dir: &Path,
    hosts: &[(String, Vec<String>)],
) -> AcmeConfig {
    use crate::acme::manager::{Challenge, DEFAULT_RENEW_BEFORE, DEFAULT_RETRY_MIN, LETS_ENCRYPT};
    let directory = f
        .directory
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT.to_string());
    if !(directory.starts_with("https://") || directory.starts_with("http://127.0.0.1")) {
        c.fail(
            "acme.directory",
            format!("'{directory}' must be an https:// URL"),
        );
    }
    let challenge = match f.challenge.as_deref() {
        None | Some("http-01") => Challenge::Http01,
        Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some(other) => {
            c.fail(
                "acme.challenge",
                format!("'{other}' is not one of: http-01, tls-alpn-01"),
            );
            Challenge::Http01
        }
    };
    if let Some(e) = &f.email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            c.fail("acme.email", format!("'{e}' is not an email address"));
        }
    }
    let ca_file = f.ca_file.as_ref().map(|p| base_dir.join(p));
    if let Some(p) = &ca_file {
        if !p.is_file() {
            c.fail(
                "acme.ca_file",
                format!("{} is not a readable file", p.display()),
            );
        }
    }
    let mut names: Vec<String> = hosts
        .iter()
        .flat_map(|(_, h)| h)
        .filter(|h| !h.starts_with("*."))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    for (key, h) in hosts {
        if key != "tls.acme" && h.iter().all(|h| h.starts_with("*.")) {
            c.fail(
                key.clone(),
                "the service has no exact host name to order a certificate for",
            );
        }
    }
    if names.is_empty() && hosts.iter().any(|(key, _)| key == "tls.acme") {
        c.fail(
            "tls.acme",
            "no service has an exact host name to order a certificate for",
        );
    }
    AcmeConfig {
        directory,
        email: f.email.clone(),
        dir: base_dir.join(f.dir.as_deref().unwrap_or("acme")),
        ca_file,
        challenge,
        renew_before: c.duration(
            "acme.renew_before",
            f.renew_before.as_deref(),
            DEFAULT_RENEW_BEFORE,
        ),
        retry_min: c.duration("acme.retry_min", f.retry_min.as_deref(), DEFAULT_RETRY_MIN),
        names,
    }
}

/// `[tls]`: its certificates must load when any listener speaks TLS.
pub(crate) fn validate_tls(
    c: &mut Checker<'_>,
    f: &TlsFile,
    acme: &AcmeFile,
    base_dir: &Path,
    listeners: &[ListenerConfig],
    services: &[ServiceTls],
) -> TlsConfig {
    let acme_hosts: Vec<(String, Vec<String>)> = services
        .iter()
        .filter_map(|s| s.acme.clone().map(|key| (key, s.hosts.clone())))
        .collect();
    let acme_hosts = &acme_hosts[..];
    let acme = (!acme_hosts.is_empty()).then(|| validate_acme(c, acme, base_dir, acme_hosts));
    let asked = acme_hosts.first().map(|(key, _)| key.clone());
    if let (Some(key), Some(_)) = (asked, &acme) {
        if !listeners.iter().any(|l| l.tls) {
            c.fail(
                key,
                "needs a listener with tls = true to serve the certificates",
            );
        }
    }
    let unknown_name = match f.unknown_name.as_deref() {
        None | Some("default") => UnknownNamePolicy::Default,
        Some("refuse") => UnknownNamePolicy::Refuse,
        Some(other) => {
            c.fail(
                "tls.unknown_name",
                format!("'{other}' is not one of: default, refuse"),
            );
            UnknownNamePolicy::Default
        }
    };
    let now = crate::time::now_ms() as i64 / 1000;
    let mut certificates = Vec::with_capacity(f.certificates.len());
    // Each file loaded once here; `None` for one that does not load (already reported).
    let mut loaded: Vec<Option<crate::tls::Loaded>> = Vec::new();
    for (i, cf) in f.certificates.iter().enumerate() {
        let base = format!("tls.certificates[{i}]");
        let (Some(cert), Some(key)) = (&cf.cert, &cf.key) else {
            c.fail(base, "needs both cert and key (PEM files)");
            continue;
        };
        let paths = CertificatePaths {
            cert: base_dir.join(cert),
            key: base_dir.join(key),
        };
        match crate::tls::load_files(&paths.cert, &paths.key, now) {
            Ok(l) => loaded.push(Some(l)),
            Err(e) => {
                c.fail(base, e.to_string());
                loaded.push(None);
            }
        }
        certificates.push(paths);
    }
    let all_loaded = loaded.iter().all(Option::is_some);
    if let Some(d) = &f.default {
        let covered = loaded.iter().flatten().any(|l| l.covers(d));
        if !covered && all_loaded {
            c.fail(
                "tls.default",
                format!("'{d}' is not covered by any of tls.certificates"),
            );
        }
    }
    if acme.is_some() {
        // HTTP-01 and TLS-ALPN-01 cannot prove a wildcard: it needs a certificate file.
        let wildcards = acme_hosts
            .iter()
            .flat_map(|(key, h)| h.iter().map(move |h| (key, h)))
            .filter(|(_, h)| h.starts_with("*."));
        for (key, h) in wildcards {
            let filed = loaded
                .iter()
                .flatten()
                .any(|l| l.names.iter().any(|n| n.eq_ignore_ascii_case(h)));
            if !filed {
                c.fail(
                    key.clone(),
                    format!("'{h}' is a wildcard: ACME certificates for wildcards need DNS-01, which Sluice does not do; give it a [[tls.certificates]] file"),
                );
            }
        }
    }
    if unknown_name == UnknownNamePolicy::Refuse && all_loaded {
        unreachable_hosts(c, services, listeners, &loaded);
    }
    if listeners.iter().any(|l| l.tls) && f.certificates.is_empty() && acme.is_none() {
        c.fail(
            "tls.certificates",
            "a listener has tls = true but there is no certificate (add [[tls.certificates]] cert and key, or tls.acme = true)",
        );
    }
    TlsConfig {
        acme,
        unknown_name,
        default: f.default.clone(),
        certificates,
    }
}

/// With `tls.unknown_name = "refuse"`, a host of a service only TLS listeners serve that no
/// certificate covers (and ACME does not order one for) could never be reached: an error.
fn unreachable_hosts(
    c: &mut Checker<'_>,
    services: &[ServiceTls],
    listeners: &[ListenerConfig],
    loaded: &[Option<crate::tls::Loaded>],
) {
    let serves = |l: &ListenerConfig, name: &str| {
        l.services
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == name))
    };
    for s in services.iter().filter(|s| s.acme.is_none()) {
        let plain = listeners.iter().any(|l| !l.tls && serves(l, &s.name));
        let tls = listeners.iter().any(|l| l.tls && serves(l, &s.name));
        if plain || !tls {
            continue;
        }
        for (j, h) in s.hosts.iter().enumerate() {
            if !loaded.iter().flatten().any(|l| l.covers(h)) {
                c.fail(
                    format!("services[{}].hosts[{j}]", s.index),
                    format!("'{h}' is covered by no certificate and tls.unknown_name is \"refuse\": no client could reach it (add a [[tls.certificates]] file or tls.acme = true)"),
                );
            }
        }
    }
}
