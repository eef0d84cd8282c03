//! Validators of a service's `[services.cutback]` policy: the judge's thresholds.

use crate::time::parse_duration;
use std::time::Duration;

use crate::config::file::CutbackFile;

use super::Checker;
use crate::judge::Policy;

pub(crate) fn validate_cutback(c: &mut Checker<'_>, base: &str, f: &CutbackFile) -> Policy {
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
    let sustained_error_slack = ratio(
        "sustained_error_slack",
        f.sustained_error_slack,
        d.sustained_error_slack,
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
    // A multiple of stable's figure, at least 1; 0 turns its rule off.
    let mut multiple = |k: &str, v: Option<f64>, default: Option<f64>| match v {
        None => default,
        Some(0.0) => None,
        Some(x) if x.is_finite() && x >= 1.0 => Some(x),
        Some(x) => {
            c.fail(
                key(k),
                format!("must be at least 1 (got {x}); 0 turns the rule off"),
            );
            default
        }
    };
    let max_p95_ratio = multiple("max_p95_ratio", f.max_p95_ratio, d.max_p95_ratio);
    let sustained_error_ratio = multiple(
        "sustained_error_ratio",
        f.sustained_error_ratio,
        d.sustained_error_ratio,
    );
    let sustained_p95_ratio = multiple(
        "sustained_p95_ratio",
        f.sustained_p95_ratio,
        d.sustained_p95_ratio,
    );
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
    let sustained_latency_slack = match f.sustained_latency_slack.as_deref() {
        None => d.sustained_latency_slack,
        Some(text) => c.take(
            &key("sustained_latency_slack"),
            parse_duration(text),
            d.sustained_latency_slack,
        ),
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
        sustained_error_ratio,
        sustained_error_slack,
        sustained_p95_ratio,
        sustained_latency_slack,
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
