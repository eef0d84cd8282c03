//! What the judge looks at: both arms' windows, runs of failures, failing probes and the
//! canary containers' resource use.

use std::time::Duration;

use serde::Serialize;

use crate::stats::WindowSnapshot;

/// A canary upstream its probes found failing, with the results that say so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeFailure {
    /// The probe's name.
    pub probe: String,
    /// The upstream.
    pub upstream: String,
    /// Failures in a row.
    pub failures: u32,
    /// Failing since (epoch ms).
    pub since_ms: u64,
    /// The latest results, newest last.
    pub results: Vec<crate::probes::RecentResult>,
}

/// One sample of a container's resource use, as shares of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsageSample {
    /// How long before the evidence was taken, ms.
    pub age_ms: u64,
    /// CPU used, as a share of the container's CPU limit (or of the host's CPUs).
    pub cpu: f64,
    /// Memory used (without page cache), as a share of its limit.
    pub memory: f64,
}

/// A canary container's recent resource use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerUsage {
    /// Container name.
    pub container: String,
    /// The upstream it serves.
    pub upstream: String,
    /// Samples, newest first.
    pub samples: Vec<UsageSample>,
}

/// Samples may be this far apart and still count as one unbroken stretch.
pub const USAGE_SAMPLE_SLACK: Duration = Duration::from_secs(2);

impl ContainerUsage {
    /// Whether `value` of every sample over the last `span` is above `limit`, and the
    /// samples cover that span (no gap wider than [`USAGE_SAMPLE_SLACK`]).
    pub fn above_for(
        &self,
        limit: f64,
        span: Duration,
        value: impl Fn(&UsageSample) -> f64,
    ) -> Option<f64> {
        let span_ms = span.as_millis() as u64;
        let slack = USAGE_SAMPLE_SLACK.as_millis() as u64;
        let recent: Vec<&UsageSample> = self
            .samples
            .iter()
            .filter(|s| s.age_ms <= span_ms)
            .collect();
        let newest = recent.first()?;
        let oldest = recent.last()?;
        if newest.age_ms > slack || oldest.age_ms + slack < span_ms {
            return None;
        }
        if recent.windows(2).any(|w| w[1].age_ms - w[0].age_ms > slack) {
            return None;
        }
        recent.iter().all(|s| value(s) > limit).then(|| {
            recent
                .iter()
                .map(|s| value(s))
                .fold(f64::INFINITY, f64::min)
        })
    }
}

/// What the judge looks at.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// Stable's window.
    pub stable: WindowSnapshot,
    /// The canary's window, same span.
    pub canary: WindowSnapshot,
    /// Canary failures in a row, up to its latest request.
    pub canary_consecutive_failures: u32,
    /// Stable failures in a row.
    pub stable_consecutive_failures: u32,
    /// Stable's requests and failures over the span of the canary's current run of
    /// failures (widened to enough requests), when the canary is in one: how likely such a
    /// run is when stable fails as it does now.
    pub stable_recent: Option<crate::stats::RecentCounts>,
    /// Both arms' counts per route over the same window (routes either arm saw).
    pub routes: Vec<RouteComparison>,
    /// Both arms over the canary's life, second by second (the sustained rules'; `None`:
    /// not kept, and those rules are silent).
    pub sustained: Option<super::SustainedCounts>,
    /// Canary upstreams failing their probes by policy.
    pub probe_failures: Vec<ProbeFailure>,
    /// Probes failing on every stable upstream.
    pub stable_probes_failing: Vec<String>,
    /// Resource use of the canary's containers (when Docker runs or hosts them).
    pub canary_usage: Vec<ContainerUsage>,
    /// External analyses with more failed measurements than their limit.
    pub analysis_failures: Vec<AnalysisFailure>,
}

/// An external analysis (`[[services.analysis]]`) past its failure limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisFailure {
    /// The analysis' name.
    pub analysis: String,
    /// Failed measurements of this canary version, of how many.
    pub failures: u32,
    pub measurements: u32,
    /// Failed measurements tolerated.
    pub failure_limit: u32,
    /// The latest failed measurement (its values, queries and condition).
    pub latest: Option<crate::analysis::Measurement>,
}

/// One route on both arms, over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteComparison {
    /// `POST /checkout`.
    pub route: String,
    /// The canary's requests and failures on it.
    pub canary_requests: u64,
    pub canary_failures: u64,
    /// Stable's.
    pub stable_requests: u64,
    pub stable_failures: u64,
}

impl RouteComparison {
    /// Both arms' route windows side by side, by route.
    pub fn merge(
        canary: Vec<crate::stats::RouteCounts>,
        stable: Vec<crate::stats::RouteCounts>,
    ) -> Vec<RouteComparison> {
        let mut out: Vec<RouteComparison> = canary
            .into_iter()
            .map(|c| RouteComparison {
                route: c.route,
                canary_requests: c.requests,
                canary_failures: c.failures,
                stable_requests: 0,
                stable_failures: 0,
            })
            .collect();
        for s in stable {
            match out.iter_mut().find(|o| o.route == s.route) {
                Some(o) => {
                    o.stable_requests = s.requests;
                    o.stable_failures = s.failures;
                }
                None => out.push(RouteComparison {
                    route: s.route,
                    canary_requests: 0,
                    canary_failures: 0,
                    stable_requests: s.requests,
                    stable_failures: s.failures,
                }),
            }
        }
        out
    }
}
