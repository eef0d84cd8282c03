//! Validators of the process-wide sections: `[admin]`, `[store]` and `[routing]`.

use std::path::{Path, PathBuf};

use crate::config::file::FileConfig;

use super::Checker;
use crate::config::model::*;

pub(crate) fn validate_admin(
    c: &mut Checker<'_>,
    model: &FileConfig,
    server: &ServerConfig,
) -> AdminConfig {
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

pub(crate) fn validate_store(c: &mut Checker<'_>, model: &FileConfig, base: &Path) -> StoreConfig {
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

pub(crate) fn validate_routing(c: &mut Checker<'_>, model: &FileConfig) -> RoutingConfig {
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
        trusted_proxies: cidrs(c, "routing.trusted_proxies", r.trusted_proxies.as_deref())
            .unwrap_or_default(),
        override_from: cidrs(c, "routing.override_from", r.override_from.as_deref())
            .unwrap_or_else(crate::trust::loopback),
        override_token: match &r.override_token {
            Some(t) if t.len() < 16 => {
                c.fail(
                    "routing.override_token",
                    "must be at least 16 characters (it opens the canary to whoever has it)",
                );
                None
            }
            t => t.clone(),
        },
        forward_override_header: r.forward_override_header.unwrap_or(false),
    }
}

/// A list of address ranges, each error under its index.
fn cidrs(
    c: &mut Checker<'_>,
    key: &str,
    list: Option<&[String]>,
) -> Option<Vec<crate::trust::Cidr>> {
    let list = list?;
    let mut out = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        match crate::trust::Cidr::parse(text) {
            Ok(cidr) => out.push(cidr),
            Err(m) => c.fail(format!("{key}[{i}]"), m),
        }
    }
    Some(out)
}

/// `[access_log]`: `None` when it says `enabled = false`.
pub(crate) fn validate_access_log(
    c: &mut Checker<'_>,
    f: &crate::config::file::AccessLogFile,
    base: &Path,
) -> Option<AccessLogConfig> {
    let format = match f.format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            c.fail(
                "access_log.format",
                format!("'{other}' is not one of: json, combined"),
            );
            AccessLogFormat::Json
        }
    };
    let buffer = match f.buffer {
        None => DEFAULT_ACCESS_LOG_BUFFER,
        Some(n) if (1..=16 * 1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                "access_log.buffer",
                format!("must be between 1 and 16777216 lines (got {n})"),
            );
            DEFAULT_ACCESS_LOG_BUFFER
        }
    };
    let path = f.path.as_ref().map(|p| base.join(p));
    if let Some(dir) = path.as_ref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            c.fail(
                "access_log.path",
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    f.enabled.unwrap_or(true).then_some(AccessLogConfig {
        path,
        format,
        buffer,
    })
}
