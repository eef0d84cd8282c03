//! The judge's answer: healthy, inconclusive or a breach, with the rule and the figures it
//! rests on.

use serde::Serialize;

use super::ProbeFailure;
use crate::stats::WindowSnapshot;

/// Which rule breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// An external analysis failed more measurements than its limit.
    Analysis,
    /// Active probes fail on a canary upstream.
    ProbeFailed,
    /// A run of failures.
    ConsecutiveFailures,
    /// Failure ratio over the ceiling.
    ErrorRate,
    /// Failure ratio over stable's plus the margin.
    ErrorRateIncrease,
    /// One route's failure ratio over stable's on that route plus the margin.
    RouteErrorRate,
    /// A latency quantile over its ceiling.
    Latency,
    /// p95 over stable's times the ratio.
    LatencyIncrease,
    /// Over the canary's life, its failure ratio above stable's in the same seconds.
    SustainedErrorRate,
    /// Since the weight last changed, its p95 above stable's times the ratio.
    SustainedLatency,
    /// A canary container's memory over its share of the limit for long enough.
    Memory,
    /// A canary container's CPU over its share of the limit for long enough.
    Cpu,
}

impl Rule {
    /// The label used in metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ProbeFailed => "probe_failed",
            Rule::ConsecutiveFailures => "consecutive_failures",
            Rule::ErrorRate => "error_rate",
            Rule::ErrorRateIncrease => "error_rate_increase",
            Rule::RouteErrorRate => "route_error_rate",
            Rule::Latency => "latency",
            Rule::LatencyIncrease => "latency_increase",
            Rule::SustainedErrorRate => "sustained_error_rate",
            Rule::SustainedLatency => "sustained_latency",
            Rule::Analysis => "analysis",
            Rule::Memory => "memory",
            Rule::Cpu => "cpu",
        }
    }

    /// Latency regressions (a deployment may step back from them instead).
    pub fn is_soft(self) -> bool {
        matches!(
            self,
            Rule::Latency | Rule::LatencyIncrease | Rule::SustainedLatency
        )
    }

    /// Hard failures act at once; soft regressions wait `breach_for`. (Resource rules
    /// carry their own duration: they act once it has held.)
    pub fn is_immediate(self) -> bool {
        matches!(
            self,
            Rule::ConsecutiveFailures
                | Rule::ProbeFailed
                | Rule::Analysis
                | Rule::Memory
                | Rule::Cpu
        )
    }
}

/// The numbers of one arm as the judge saw them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmFigures {
    /// Requests in the window.
    pub requests: u64,
    /// 5xx plus no response.
    pub failures: u64,
    /// failures / requests.
    pub error_rate: f64,
    /// p95 latency, ms.
    pub p95_ms: Option<f64>,
    /// p99 latency, ms.
    pub p99_ms: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

impl ArmFigures {
    /// An arm's figures from its window and its run of failures.
    pub fn of(w: &WindowSnapshot, consecutive: u32) -> ArmFigures {
        ArmFigures {
            requests: w.requests(),
            failures: w.failures(),
            error_rate: round6(w.error_rate()),
            p95_ms: w.quantile_ms(0.95).map(round3),
            p99_ms: w.quantile_ms(0.99).map(round3),
            consecutive_failures: consecutive,
        }
    }
}

/// A breach and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    /// The rule.
    pub rule: Rule,
    /// One readable sentence.
    pub reason: String,
    /// The threshold that applied (a ratio, milliseconds, or a count).
    pub threshold: f64,
    /// The observed value compared with it.
    pub observed: f64,
    /// The test's p-value (probability of seeing this much under "healthy"), if a test ran.
    pub p_value: Option<f64>,
    /// The confidence the test was run at.
    pub confidence: f64,
}

/// The judge's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing wrong that the data can show.
    Healthy {
        /// A remark, e.g. that both arms degrade together.
        note: Option<String>,
        /// Stable's numbers.
        stable: ArmFigures,
        /// The canary's numbers.
        canary: ArmFigures,
    },
    /// Too little canary traffic to say anything.
    Inconclusive {
        /// Why.
        reason: String,
        /// Stable's numbers.
        stable: ArmFigures,
        /// The canary's numbers.
        canary: ArmFigures,
    },
    /// The canary is worse than its policy allows.
    Breach {
        /// The rule and its statistic.
        #[serde(flatten)]
        breach: Breach,
        /// Stable's numbers.
        stable: ArmFigures,
        /// The canary's numbers.
        canary: ArmFigures,
        /// For a probe breach: the failing probes and their results.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        probes: Vec<ProbeFailure>,
    },
}

impl Verdict {
    /// `healthy`, `inconclusive` or `breach`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Healthy { .. } => "healthy",
            Verdict::Inconclusive { .. } => "inconclusive",
            Verdict::Breach { .. } => "breach",
        }
    }

    /// The breach, if this is one.
    pub fn breach(&self) -> Option<&Breach> {
        match self {
            Verdict::Breach { breach, .. } => Some(breach),
            _ => None,
        }
    }

    /// A one-line explanation.
    pub fn summary(&self) -> String {
        match self {
            Verdict::Healthy { note: Some(n), .. } => format!("healthy ({n})"),
            Verdict::Healthy {
                note: None, canary, ..
            } => format!(
                "healthy: canary {} requests, {:.2} % errors",
                canary.requests,
                canary.error_rate * 100.0
            ),
            Verdict::Inconclusive { reason, .. } => format!("inconclusive: {reason}"),
            Verdict::Breach { breach, .. } => format!("breach: {}", breach.reason),
        }
    }
}

/// Rounded to three decimals (milliseconds to microseconds), for evidence.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Rounded to six decimals (ratios), for evidence.
pub(crate) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
