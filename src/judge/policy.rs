//! The cut-back policy: what the judge holds a canary to, with its defaults.

use std::time::Duration;

use serde::Serialize;

/// Canary failure ratio above which (significantly) the canary is cut back.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;
/// Canary minus stable failure ratio above which (significantly) the canary is cut back.
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.02;
/// Ceiling on the canary's p95 latency.
pub const DEFAULT_MAX_P95: Duration = Duration::from_secs(2);
/// Canary p95 may be at most this many times stable's.
pub const DEFAULT_MAX_P95_RATIO: f64 = 2.0;
/// ... and must also be this much above stable's before the ratio counts.
pub const DEFAULT_LATENCY_SLACK: Duration = Duration::from_millis(25);
/// Canary requests in the window before rates and latencies give a verdict.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// Canary failures in a row that cut back at once.
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 5;
/// How long a rate or latency breach must hold before the cut-back.
pub const DEFAULT_BREACH_FOR: Duration = Duration::from_millis(100);
/// Confidence of every statistical test.
pub const DEFAULT_CONFIDENCE: f64 = 0.999;
/// Over the canary's life its failure ratio may be at most this many times stable's ...
pub const DEFAULT_SUSTAINED_ERROR_RATIO: f64 = 1.25;
/// ... and at most this much above it (a share: 0.0025 is a quarter of a point).
pub const DEFAULT_SUSTAINED_ERROR_SLACK: f64 = 0.0025;
/// Since its weight last changed, the canary's p95 may be at most this many times stable's ...
pub const DEFAULT_SUSTAINED_P95_RATIO: f64 = 1.25;
/// ... and at most this much above it.
pub const DEFAULT_SUSTAINED_LATENCY_SLACK: Duration = Duration::from_millis(10);
/// How long canary memory must stay above `max_memory` when the rule is on.
pub const DEFAULT_MAX_MEMORY_FOR: Duration = Duration::from_secs(30);
/// How long canary CPU must stay above `max_cpu` when the rule is on.
pub const DEFAULT_MAX_CPU_FOR: Duration = Duration::from_secs(60);

/// When a canary is cut back; every field has a `DEFAULT_*` and a key under
/// `[services.cutback]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Whether the judge acts at all (it still reports); default on.
    pub enabled: bool,
    /// Default [`DEFAULT_MAX_ERROR_RATE`]; 1.0 turns the rule off.
    pub max_error_rate: f64,
    /// Default [`DEFAULT_MAX_ERROR_RATE_INCREASE`]; 1.0 turns the rule off.
    pub max_error_rate_increase: f64,
    /// Default [`DEFAULT_MAX_P95`]; `None` turns the rule off.
    #[serde(with = "crate::time::opt_text")]
    pub max_p95: Option<Duration>,
    /// Default none.
    #[serde(with = "crate::time::opt_text")]
    pub max_p99: Option<Duration>,
    /// Default [`DEFAULT_MAX_P95_RATIO`]; `None` turns the rule off.
    pub max_p95_ratio: Option<f64>,
    /// Default [`DEFAULT_LATENCY_SLACK`].
    #[serde(with = "crate::time::text")]
    pub latency_slack: Duration,
    /// Default [`DEFAULT_SUSTAINED_ERROR_RATIO`]; `None` turns the sustained error rule off.
    pub sustained_error_ratio: Option<f64>,
    /// Default [`DEFAULT_SUSTAINED_ERROR_SLACK`].
    pub sustained_error_slack: f64,
    /// Default [`DEFAULT_SUSTAINED_P95_RATIO`]; `None` turns the sustained latency rule off.
    pub sustained_p95_ratio: Option<f64>,
    /// Default [`DEFAULT_SUSTAINED_LATENCY_SLACK`].
    #[serde(with = "crate::time::text")]
    pub sustained_latency_slack: Duration,
    /// Default [`DEFAULT_MIN_REQUESTS`].
    pub min_requests: u64,
    /// Default [`DEFAULT_MAX_CONSECUTIVE_FAILURES`]; 0 turns the rule off.
    pub max_consecutive_failures: u32,
    /// Default [`DEFAULT_BREACH_FOR`].
    #[serde(with = "crate::time::text")]
    pub breach_for: Duration,
    /// Default [`DEFAULT_CONFIDENCE`].
    pub confidence: f64,
    /// The evidence window; default [`crate::stats::DEFAULT_WINDOW`].
    #[serde(with = "crate::time::text")]
    pub window: Duration,
    /// Canary container memory above this share of its limit for `max_memory_for` is a
    /// breach; `None` (the default) turns the rule off.
    pub max_memory: Option<f64>,
    /// Default [`DEFAULT_MAX_MEMORY_FOR`].
    #[serde(with = "crate::time::text")]
    pub max_memory_for: Duration,
    /// Canary container CPU above this share of its limit for `max_cpu_for` is a breach;
    /// `None` (the default) turns the rule off.
    pub max_cpu: Option<f64>,
    /// Default [`DEFAULT_MAX_CPU_FOR`].
    #[serde(with = "crate::time::text")]
    pub max_cpu_for: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            max_error_rate_increase: DEFAULT_MAX_ERROR_RATE_INCREASE,
            max_p95: Some(DEFAULT_MAX_P95),
            max_p99: None,
            max_p95_ratio: Some(DEFAULT_MAX_P95_RATIO),
            latency_slack: DEFAULT_LATENCY_SLACK,
            sustained_error_ratio: Some(DEFAULT_SUSTAINED_ERROR_RATIO),
            sustained_error_slack: DEFAULT_SUSTAINED_ERROR_SLACK,
            sustained_p95_ratio: Some(DEFAULT_SUSTAINED_P95_RATIO),
            sustained_latency_slack: DEFAULT_SUSTAINED_LATENCY_SLACK,
            min_requests: DEFAULT_MIN_REQUESTS,
            max_consecutive_failures: DEFAULT_MAX_CONSECUTIVE_FAILURES,
            breach_for: DEFAULT_BREACH_FOR,
            confidence: DEFAULT_CONFIDENCE,
            window: crate::stats::DEFAULT_WINDOW,
            max_memory: None,
            max_memory_for: DEFAULT_MAX_MEMORY_FOR,
            max_cpu: None,
            max_cpu_for: DEFAULT_MAX_CPU_FOR,
        }
    }
}
