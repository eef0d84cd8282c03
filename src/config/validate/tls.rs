//! Validators of `[[listeners]]` and `[tls]`: names and addresses, which listeners speak TLS,
//! and certificate files that load (each error names the file), cover the default name and
//! are not expired.

use std::collections::HashSet;
use std::path::Path;

use super::service::validate_name;
use super::Checker;
use crate::config::file::{ListenerFile, TlsFile};
use crate::config::tls::{
    CertificatePaths, ListenerConfig, TlsConfig, UnknownNamePolicy, DEFAULT_LISTENER_NAME,
};
use crate::config::ServerConfig;

/// The proxy listeners: `[[listeners]]`, or `server.listen` alone (a plain one, `http`).
pub(crate) fn validate_listeners(
    c: &mut Checker<'_>,
    files: &[ListenerFile],
    server: &ServerConfig,
) -> Vec<ListenerConfig> {
    if files.is_empty() {
        return vec![ListenerConfig {
            name: DEFAULT_LISTENER_NAME.into(),
            address: server.listen,
            tls: false,
            redirect_https: false,
            hsts: None,
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
        out.push(ListenerConfig {
            name,
            address,
            tls,
            redirect_https,
            hsts,
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

/// `[tls]`: its certificates must load when any listener speaks TLS.
pub(crate) fn validate_tls(
    c: &mut Checker<'_>,
    f: &TlsFile,
    base_dir: &Path,
    listeners: &[ListenerConfig],
) -> TlsConfig {
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
    let mut names: Vec<Vec<String>> = Vec::new();
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
            Ok(loaded) => names.push(loaded.names.clone()),
            Err(e) => {
                c.fail(base, e.to_string());
                names.push(Vec::new());
            }
        }
        certificates.push(paths);
    }
    if let Some(d) = &f.default {
        let covered = names.iter().flatten().any(|n| {
            n.eq_ignore_ascii_case(d)
                || n.strip_prefix("*.").is_some_and(|rest| {
                    d.split_once('.')
                        .is_some_and(|(_, tail)| tail.eq_ignore_ascii_case(rest))
                })
        });
        if !covered && names.iter().all(|n| !n.is_empty()) {
            c.fail(
                "tls.default",
                format!("'{d}' is not covered by any of tls.certificates"),
            );
        }
    }
    if listeners.iter().any(|l| l.tls) && f.certificates.is_empty() {
        c.fail(
            "tls.certificates",
            "a listener has tls = true but there is no certificate (add [[tls.certificates]] cert and key)",
        );
    }
    TlsConfig {
        unknown_name,
        default: f.default.clone(),
        certificates,
    }
}
