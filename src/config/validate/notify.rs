//! Validators of `[[notify]]` and `[dashboard]`: targets, secrets from the environment,
//! event filters, retries.

use super::Checker;
use crate::config::file::{DashboardFile, NotifyFile};
use crate::config::notify::*;
use crate::config::ServerConfig;
use crate::events::EventKind;

/// Names an event in a `events` list: a kind, one of the short aliases, or `all`.
fn event_names(name: &str) -> Option<Vec<EventKind>> {
    let alias = match name {
        "all" | "*" => return Some(EventKind::ALL.to_vec()),
        "rollback" | "cut_back" | "cutback" => "rolled_back",
        "promote" => "promoted",
        "probe_failure" => "probe_failed",
        other => other,
    };
    EventKind::parse(alias).map(|k| vec![k])
}

/// `http://` or `https://` with a host.
fn check_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("'{text}' is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("'{text}' has no host"));
    }
    if text.chars().any(|c| c.is_control() || c == ' ') {
        return Err("URLs may not contain spaces or control characters".into());
    }
    Ok(())
}

/// A value given directly or through an environment variable (`KEY` or `KEY_env`).
fn direct_or_env(
    c: &mut Checker<'_>,
    base: &str,
    key: &str,
    direct: &Option<String>,
    env: &Option<String>,
) -> Option<String> {
    match (direct, env) {
        (Some(_), Some(_)) => {
            c.fail(
                format!("{base}.{key}"),
                format!("set {key} or {key}_env, not both"),
            );
            None
        }
        (Some(v), None) => Some(v.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => {
                c.fail(
                    format!("{base}.{key}_env"),
                    format!("environment variable '{var}' is not set"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

/// Validates `[dashboard]`.
pub(super) fn validate_dashboard(
    c: &mut Checker<'_>,
    f: &DashboardFile,
    server: &ServerConfig,
) -> DashboardConfig {
    let url = match &f.url {
        Some(u) => {
            if let Err(m) = check_url(u) {
                c.fail("dashboard.url", m);
            }
            u.clone()
        }
        None => format!("http://{}/", server.admin_listen),
    };
    DashboardConfig {
        enabled: f.enabled.unwrap_or(true),
        url,
        url_given: f.url.is_some(),
    }
}

/// Validates every `[[notify]]`.
pub(super) fn validate_notify(
    c: &mut Checker<'_>,
    list: &[NotifyFile],
    services: &[String],
) -> Vec<NotifierConfig> {
    let mut out: Vec<NotifierConfig> = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let base = format!("notify[{i}]");
        let key = |k: &str| format!("{base}.{k}");
        let kind = match f.kind.as_deref() {
            Some(k @ ("webhook" | "slack" | "discord" | "email")) => k,
            Some(other) => {
                c.fail(
                    key("kind"),
                    format!("'{other}' is not webhook, slack, discord or email"),
                );
                continue;
            }
            None => {
                c.fail(key("kind"), "is required: webhook, slack, discord or email");
                continue;
            }
        };
        let name = f.name.clone().unwrap_or_else(|| format!("{kind}-{i}"));
        if let Err(m) = super::validate_name(&name) {
            c.fail(key("name"), m);
        }
        if out.iter().any(|n| n.name == name) {
            c.fail(
                key("name"),
                format!("'{name}' is already the name of another notifier"),
            );
        }
        // Keys of the other kinds are mistakes, not silently ignored.
        const HTTP: &[&str] = &["webhook", "slack", "discord"];
        const EMAIL: &[&str] = &["email"];
        let owned: [(&str, bool, &[&str]); 12] = [
            ("url", f.url.is_some(), HTTP),
            ("url_env", f.url_env.is_some(), HTTP),
            ("secret", f.secret.is_some(), &["webhook"]),
            ("secret_env", f.secret_env.is_some(), &["webhook"]),
            ("smtp_host", f.smtp_host.is_some(), EMAIL),
            ("smtp_port", f.smtp_port.is_some(), EMAIL),
            ("tls", f.tls.is_some(), EMAIL),
            ("username", f.username.is_some(), EMAIL),
            ("password", f.password.is_some(), EMAIL),
            ("password_env", f.password_env.is_some(), EMAIL),
            ("from", f.from.is_some(), EMAIL),
            ("to", f.to.is_some(), EMAIL),
        ];
        for (k, set, kinds) in owned {
            if set && !kinds.contains(&kind) {
                c.fail(key(k), format!("is not a setting of a {kind} notifier"));
            }
        }

        let target = if kind == "email" {
            let host = match &f.smtp_host {
                Some(h) if !h.trim().is_empty() && !h.contains(char::is_whitespace) => h.clone(),
                Some(h) => {
                    c.fail(key("smtp_host"), format!("'{h}' is not a host name"));
                    String::new()
                }
                None => {
                    c.fail(key("smtp_host"), "is required for an email notifier");
                    String::new()
                }
            };
            let tls = match f.tls.as_deref() {
                None | Some("starttls") => SmtpTls::StartTls,
                Some("tls") => SmtpTls::Tls,
                Some("none") => SmtpTls::None,
                Some(other) => {
                    c.fail(
                        key("tls"),
                        format!("'{other}' is not starttls, tls or none"),
                    );
                    SmtpTls::StartTls
                }
            };
            let port = match f.smtp_port {
                None => match tls {
                    SmtpTls::Tls => 465,
                    SmtpTls::StartTls => 587,
                    SmtpTls::None => 25,
                },
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => {
                    c.fail(key("smtp_port"), format!("'{p}' is not a port"));
                    25
                }
            };
            let password = direct_or_env(c, &base, "password", &f.password, &f.password_env);
            if password.is_some() && f.username.is_none() {
                c.fail(key("username"), "is required when a password is set");
            }
            let mailbox = |c: &mut Checker<'_>, k: &str, v: &str| {
                if v.parse::<lettre::message::Mailbox>().is_err() {
                    c.fail(
                        key(k),
                        format!(
                            "'{v}' is not a mailbox (name@example.com or Name <name@example.com>)"
                        ),
                    );
                }
            };
            let from = match &f.from {
                Some(v) => {
                    mailbox(c, "from", v);
                    v.clone()
                }
                None => {
                    c.fail(key("from"), "is required for an email notifier");
                    String::new()
                }
            };
            let to = match &f.to {
                Some(list) if !list.is_empty() => {
                    for (j, v) in list.iter().enumerate() {
                        mailbox(c, &format!("to[{j}]"), v);
                    }
                    list.clone()
                }
                _ => {
                    c.fail(key("to"), "needs at least one recipient");
                    Vec::new()
                }
            };
            NotifyTarget::Email(EmailConfig {
                host,
                port,
                tls,
                username: f.username.clone(),
                password: password.map(Secret),
                from,
                to,
            })
        } else {
            let url = direct_or_env(c, &base, "url", &f.url, &f.url_env).unwrap_or_default();
            if f.url.is_none() && f.url_env.is_none() {
                c.fail(key("url"), format!("is required for a {kind} notifier"));
            } else if !url.is_empty() {
                if let Err(m) = check_url(&url) {
                    c.fail(key("url"), m);
                }
            }
            match kind {
                "webhook" => {
                    let secret = direct_or_env(c, &base, "secret", &f.secret, &f.secret_env);
                    if secret.as_ref().is_some_and(|s| s.len() < 16) {
                        c.fail(key("secret"), "must be at least 16 characters");
                    }
                    NotifyTarget::Webhook {
                        url,
                        secret: secret.map(Secret),
                    }
                }
                "slack" => NotifyTarget::Slack { url: Secret(url) },
                _ => NotifyTarget::Discord { url: Secret(url) },
            }
        };

        let events = match &f.events {
            None => DEFAULT_NOTIFY_EVENTS.to_vec(),
            Some(names) => {
                let mut kinds = Vec::new();
                for (j, n) in names.iter().enumerate() {
                    match event_names(n) {
                        Some(ks) => {
                            for k in ks {
                                if !kinds.contains(&k) {
                                    kinds.push(k);
                                }
                            }
                        }
                        None => c.fail(
                            format!("{base}.events[{j}]"),
                            format!("'{n}' is not an event kind (see `GET /api/v1/events` kinds, or rollback, all)"),
                        ),
                    }
                }
                if names.is_empty() {
                    c.fail(key("events"), "is empty: the notifier would never send");
                }
                kinds
            }
        };
        let wanted_services = f.services.clone().unwrap_or_default();
        for (j, s) in wanted_services.iter().enumerate() {
            if !services.iter().any(|x| x == s) {
                c.fail(
                    format!("{base}.services[{j}]"),
                    format!("'{s}' is not a configured service"),
                );
            }
        }
        let retries = match f.retries {
            None => DEFAULT_NOTIFY_RETRIES,
            Some(n) if (0..=20).contains(&n) => n as u32,
            Some(n) => {
                c.fail(
                    key("retries"),
                    format!("must be between 0 and 20 (got {n})"),
                );
                DEFAULT_NOTIFY_RETRIES
            }
        };
        let queue = match f.queue {
            None => DEFAULT_NOTIFY_QUEUE,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                c.fail(
                    key("queue"),
                    format!("must be between 1 and 100000 (got {n})"),
                );
                DEFAULT_NOTIFY_QUEUE
            }
        };
        out.push(NotifierConfig {
            name,
            target,
            events,
            services: wanted_services,
            timeout: c.duration(
                &key("timeout"),
                f.timeout.as_deref(),
                DEFAULT_NOTIFY_TIMEOUT,
            ),
            retries,
            backoff: c.duration(
                &key("backoff"),
                f.backoff.as_deref(),
                DEFAULT_NOTIFY_BACKOFF,
            ),
            queue,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_aliases_resolve() {
        assert_eq!(event_names("rollback"), Some(vec![EventKind::RolledBack]));
        assert_eq!(event_names("breach"), Some(vec![EventKind::Breach]));
        assert_eq!(event_names("all").unwrap().len(), EventKind::ALL.len());
        assert_eq!(event_names("nope"), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.slack.com/services/T/B/X").is_ok());
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http:///x").is_err());
        assert!(check_url("http://a b/").is_err());
    }
}
