//! The judge on any evidence and any policy the config accepts: a verdict, never a panic,
//! the same verdict twice, finite figures, and no breach it has no grounds for (a canary
//! without failures when only failure rules are on; too few canary requests without a dead
//! run of failures).
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::judge::{decide, Evidence, Policy, SustainedCounts, Verdict};
use sluice::stats::{bucket_range, WindowSnapshot, BUCKETS};

#[derive(Arbitrary, Debug)]
struct Arm {
    /// (status class, latency bucket, requests)
    groups: Vec<(u8, u16, u16)>,
    consecutive: u16,
}

#[derive(Arbitrary, Debug)]
struct Knobs {
    enabled: bool,
    max_error_rate: u16,
    max_error_rate_increase: u16,
    max_p95_ms: Option<u32>,
    max_p99_ms: Option<u32>,
    max_p95_ratio: Option<u16>,
    latency_slack_ms: u16,
    min_requests: u16,
    max_consecutive_failures: u8,
    confidence: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stable: Arm,
    canary: Arm,
    knobs: Knobs,
    recent: Option<(u16, u16, u16)>,
    /// Seconds of both arms: (canary requests, failures, stable requests, failures).
    strata: Option<Vec<(u16, u16, u16, u16)>>,
    sustained_error_ratio: Option<u16>,
    sustained_error_slack: u16,
    sustained_p95_ratio: Option<u16>,
    sustained_latency_slack_ms: u16,
}

fn window(arm: &Arm, span: Duration) -> WindowSnapshot {
    let mut w = WindowSnapshot::empty(span);
    for &(class, bucket, n) in arm.groups.iter().take(64) {
        let (class, bucket, n) = (usize::from(class) % 6, usize::from(bucket) % BUCKETS, u64::from(n));
        w.counts[class] += n;
        w.latency[bucket] += n;
        w.latency_sum_us += bucket_range(bucket).0 * n;
    }
    w
}

fn policy(k: &Knobs) -> Policy {
    let ratio = |x: u16| f64::from(x) / f64::from(u16::MAX);
    Policy {
        enabled: k.enabled,
        max_error_rate: ratio(k.max_error_rate),
        max_error_rate_increase: ratio(k.max_error_rate_increase),
        max_p95: k.max_p95_ms.map(|ms| Duration::from_millis(u64::from(ms))),
        max_p99: k.max_p99_ms.map(|ms| Duration::from_millis(u64::from(ms))),
        max_p95_ratio: k.max_p95_ratio.map(|r| 1.0 + f64::from(r) / 100.0),
        latency_slack: Duration::from_millis(u64::from(k.latency_slack_ms)),
        min_requests: u64::from(k.min_requests).max(1),
        max_consecutive_failures: u32::from(k.max_consecutive_failures),
        // The config's range: [0.5, 1).
        confidence: 0.5 + 0.4999 * ratio(k.confidence),
        ..Policy::default()
    }
}

fn finite(v: &Verdict) {
    let figures = match v {
        Verdict::Healthy { stable, canary, .. }
        | Verdict::Inconclusive { stable, canary, .. }
        | Verdict::Breach { stable, canary, .. } => [stable, canary],
    };
    for f in figures {
        assert!(f.error_rate.is_finite() && (0.0..=1.0).contains(&f.error_rate), "{v:?}");
        for q in [f.p95_ms, f.p99_ms].into_iter().flatten() {
            assert!(q.is_finite() && q >= 0.0, "{v:?}");
        }
    }
    if let Verdict::Breach { breach, .. } = v {
        assert!(breach.threshold.is_finite() && breach.observed.is_finite(), "{v:?}");
        if let Some(p) = breach.p_value {
            assert!((0.0..=1.0).contains(&p), "{v:?}");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut p = policy(&input.knobs);
    p.sustained_error_ratio = input.sustained_error_ratio.map(|r| 1.0 + f64::from(r) / 100.0);
    p.sustained_error_slack = f64::from(input.sustained_error_slack) / f64::from(u16::MAX);
    p.sustained_p95_ratio = input.sustained_p95_ratio.map(|r| 1.0 + f64::from(r) / 100.0);
    p.sustained_latency_slack = Duration::from_millis(u64::from(input.sustained_latency_slack_ms));
    let e = Evidence {
        stable: window(&input.stable, p.window),
        canary: window(&input.canary, p.window),
        canary_consecutive_failures: u32::from(input.canary.consecutive),
        stable_consecutive_failures: u32::from(input.stable.consecutive),
        routes: Vec::new(),
        stable_recent: input.recent.map(|(requests, failures, span)| sluice::stats::RecentCounts {
            requests: u64::from(requests),
            failures: u64::from(failures.min(requests)),
            span_ms: u64::from(span),
        }),
        probe_failures: Vec::new(),
        stable_probes_failing: Vec::new(),
        sustained: input.strata.as_ref().map(|strata| {
            let mut s = SustainedCounts::new(p.window);
            for &(nc, kc, ns, ks) in strata.iter().take(256) {
                s.add_stratum(1000, nc.into(), kc.into(), ns.into(), ks.into());
            }
            s.canary_latency = window(&input.canary, p.window);
            s.stable_latency = window(&input.stable, p.window);
            s
        }),
        canary_usage: Vec::new(),
        analysis_failures: Vec::new(),
    };
    let v = decide(&e, &p);
    assert_eq!(v, decide(&e, &p), "the same evidence, another verdict");
    finite(&v);
    serde_json::to_string(&v).expect("a verdict serialises");
    let breach = matches!(v, Verdict::Breach { .. });
    let dead_run = p.max_consecutive_failures > 0
        && e.canary_consecutive_failures >= p.max_consecutive_failures;
    if e.canary.requests() < p.min_requests && !dead_run {
        assert!(!breach, "a breach on {} requests: {v:?}", e.canary.requests());
    }
    let latency_rules_off = p.max_p95.is_none()
        && p.max_p99.is_none()
        && p.max_p95_ratio.is_none()
        && p.sustained_p95_ratio.is_none();
    // No canary failure anywhere: not in the window, not in a run, not over its life.
    let no_failure = e.canary.failures() == 0
        && e.canary_consecutive_failures == 0
        && e.sustained.as_ref().is_none_or(|s| s.canary_failures == 0);
    if no_failure && latency_rules_off {
        assert!(!breach, "a breach without a failure: {v:?}");
    }
});
