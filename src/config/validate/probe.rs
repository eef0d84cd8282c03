//! Validators of a service's `[[services.probes]]`: HTTP, TCP, script and Docker-health
//! checks and their policies.

use crate::time::{format_duration, parse_duration};
use std::path::{Path, PathBuf};

use crate::config::file::{ProbeFile, StatusItem};

use super::Checker;
use crate::probes::{
    DockerCheck, HttpCheck, ProbeKind, ProbePolicy, ProbeSpec, ScriptCheck, StatusSet, TcpCheck,
};

/// Which probe kind each kind-specific key belongs to.
pub(crate) const PROBE_KEYS: &[(&str, &str)] = &[
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
pub(crate) fn resolve_program(program: &str, base_dir: &Path) -> Result<PathBuf, String> {
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

pub(crate) fn validate_probe(
    c: &mut Checker<'_>,
    key: &str,
    p: &ProbeFile,
    docker_socket: &Path,
    base_dir: &Path,
) -> Option<ProbeSpec> {
    let before = c.problems.len();
    let k = |name: &str| format!("{key}.{name}");
    let name = c.name(&k("name"), p.name.as_deref());
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
pub(crate) fn unescape(s: &str) -> String {
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
