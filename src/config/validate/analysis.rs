//! Validator of a service's `[[services.analysis]]`: external metrics (Prometheus) and the
//! condition that fails a measurement.

use crate::analysis::{
    AnalysisSpec, Condition, DEFAULT_FAILURE_LIMIT, DEFAULT_INTERVAL, DEFAULT_MAX_INCONCLUSIVE,
    DEFAULT_TIMEOUT,
};
use crate::config::file::AnalysisFile;

use super::Checker;

/// Placeholders a query may hold.
const PLACEHOLDERS: [&str; 4] = ["{service}", "{arm}", "{canary_version}", "{stable_version}"];

pub(crate) fn validate_analysis(
    c: &mut Checker<'_>,
    key: &str,
    a: &AnalysisFile,
) -> Option<AnalysisSpec> {
    let before = c.problems.len();
    let k = |name: &str| format!("{key}.{name}");
    let name = c.name(&k("name"), a.name.as_deref());
    match a.kind.as_deref() {
        Some("prometheus") => {}
        Some(other) => c.fail(k("kind"), format!("'{other}' is not prometheus")),
        None => c.fail(k("kind"), "is required (prometheus)"),
    }
    let address = match a.address.as_deref() {
        Some(addr) => match reqwest::Url::parse(addr) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    c.fail(k("address"), "must not have a query or fragment");
                }
                addr.trim_end_matches('/').to_string()
            }
            _ => {
                c.fail(
                    k("address"),
                    format!("'{addr}' is not an http(s) address like http://127.0.0.1:9090"),
                );
                String::new()
            }
        },
        None => {
            c.fail(
                k("address"),
                "is required (Prometheus' address, http://host:9090)",
            );
            String::new()
        }
    };
    let query = match a.query.as_deref().map(str::trim) {
        Some(q) if !q.is_empty() && q.len() <= 4096 => {
            // A `{word}` that is not a placeholder is almost always a typo: PromQL's own
            // braces hold matchers (`{job="x"}`), never a bare word.
            let mut rest = q;
            while let Some(open) = rest.find('{') {
                let tail = &rest[open..];
                let close = tail.find('}').map(|i| i + 1).unwrap_or(tail.len());
                let token = &tail[..close];
                let word = token.trim_matches(|ch| ch == '{' || ch == '}');
                if !word.is_empty()
                    && word
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                    && !PLACEHOLDERS.contains(&token)
                {
                    c.fail(
                        k("query"),
                        format!(
                            "'{token}' is not a placeholder: use {}",
                            PLACEHOLDERS.join(", ")
                        ),
                    );
                    break;
                }
                rest = &rest[open + 1..];
            }
            q.to_string()
        }
        Some(_) => {
            c.fail(k("query"), "must be 1 to 4096 characters of PromQL");
            String::new()
        }
        None => {
            c.fail(k("query"), "is required (PromQL)");
            String::new()
        }
    };
    let failure_condition = match a.failure_condition.as_deref() {
        Some(text) => match Condition::parse(text) {
            Ok(cond) => Some(cond),
            Err(m) => {
                c.fail(k("failure_condition"), m);
                None
            }
        },
        None => {
            c.fail(
                k("failure_condition"),
                "is required, as in 'result > 0.01' or 'canary > stable * 1.2'",
            );
            None
        }
    };
    let interval = c.duration(&k("interval"), a.interval.as_deref(), DEFAULT_INTERVAL);
    let timeout = c.duration(&k("timeout"), a.timeout.as_deref(), DEFAULT_TIMEOUT);
    let count = |c: &mut Checker<'_>, field: &str, v: Option<i64>, default: u32| match v {
        None => default,
        Some(n) if (0..=1000).contains(&n) => n as u32,
        Some(n) => {
            c.fail(k(field), format!("must be between 0 and 1000 (got {n})"));
            default
        }
    };
    let failure_limit = count(c, "failure_limit", a.failure_limit, DEFAULT_FAILURE_LIMIT);
    let max_inconclusive = count(
        c,
        "max_inconclusive",
        a.max_inconclusive,
        DEFAULT_MAX_INCONCLUSIVE,
    );
    if c.problems.len() != before {
        return None;
    }
    Some(AnalysisSpec {
        name,
        kind: "prometheus",
        address,
        query,
        interval,
        timeout,
        failure_condition: failure_condition?,
        failure_limit,
        max_inconclusive,
    })
}
