//! 7–8. The sustained rules: the canary against stable over everything it has served, second
//! by second (see `judge::sustained`), by an always-valid sequential test so that judging
//! every 100 ms for hours costs no more false alarms than judging once.

use super::super::significance::binomial_upper_tail;
use super::super::sustained::{always_valid_p, mixture_log_lr};
use super::super::verdict::{round3, round6};
use super::{fmt_p, Case};
use crate::judge::{Breach, Rule, Verdict};

/// The error difference the sequential test is tuned to find fastest (its prior's scale):
/// a point of errors.
pub const ERROR_TAU: f64 = 0.01;
/// Same for the share of canary requests over stable's p95 (beyond the 5 % allowed).
pub const LATENCY_TAU: f64 = 0.05;
/// Canary failures the sustained error rule wants before it speaks (a handful of failures
/// is the consecutive-failure rule's business).
pub const SUSTAINED_MIN_FAILURES: u64 = 5;

fn seconds(ms: u64) -> String {
    crate::time::format_duration(std::time::Duration::from_millis(ms / 1000 * 1000))
}

/// 7. Over the canary's life, second by second, its failure ratio is above stable's in the
///    same seconds by more than the larger of `(sustained_error_ratio - 1) x stable's
///    ratio` and `sustained_error_slack`: the sequential test's likelihood ratio crosses
///    `1 / (1 - confidence)` (and an exact binomial test of the canary's failures against
///    that level agrees, for the few-failure cases a normal approximation flatters).
pub(super) fn sustained_errors(c: &mut Case<'_>) -> Option<Verdict> {
    let p = c.p;
    let ratio = p.sustained_error_ratio?;
    let s = c.e.sustained.as_ref()?;
    let min = p.min_requests.max(1);
    if s.canary_requests < min
        || s.stable_requests < min
        || s.canary_failures < SUSTAINED_MIN_FAILURES
    {
        return None;
    }
    let stable = s.stable_ratio();
    let margin = ((ratio - 1.0) * stable).max(p.sustained_error_slack);
    let (excess, variance) = s.excess(margin)?;
    let log_lr = mixture_log_lr(excess, variance, ERROR_TAU);
    let alpha = c.alpha();
    if log_lr < (1.0 / alpha).ln() {
        return None;
    }
    let level = (stable + margin).min(1.0);
    if binomial_upper_tail(s.canary_failures, s.canary_requests, level) >= alpha {
        return None;
    }
    let pv = always_valid_p(log_lr);
    let canary = s.canary_failures as f64 / s.canary_requests as f64;
    let stable_plain = s.stable_failures as f64 / s.stable_requests as f64;
    Some(c.breach(Breach {
        rule: Rule::SustainedErrorRate,
        reason: format!(
            "over {} the canary failed {:.2} % ({}/{}) against stable's {:.2} % ({}/{}) in the same seconds: more than {ratio} x stable's and {:.2} points above it (sequential test, p = {})",
            seconds(s.span_ms),
            canary * 100.0,
            s.canary_failures,
            s.canary_requests,
            stable_plain * 100.0,
            s.stable_failures,
            s.stable_requests,
            p.sustained_error_slack * 100.0,
            fmt_p(pv)
        ),
        threshold: round6(margin),
        observed: round6(excess + margin),
        p_value: Some(round6(pv)),
        confidence: p.confidence,
    }))
}

/// 8. Since the canary's weight last changed, more than the 5 % of its requests a healthy
///    p95 allows are slower than `sustained_p95_ratio` x stable's p95 over the same time
///    (and at least `sustained_latency_slack` above it), by the same sequential test.
pub(super) fn sustained_latency(c: &mut Case<'_>) -> Option<Verdict> {
    let p = c.p;
    let ratio = p.sustained_p95_ratio?;
    let s = c.e.sustained.as_ref()?;
    let (canary, stable) = (&s.canary_latency, &s.stable_latency);
    let n = canary.requests();
    let min = p.min_requests.max(1);
    if n < min || stable.requests() < min {
        return None;
    }
    let s95 = stable.quantile_ms(0.95)?;
    let limit = (s95 * ratio).max(s95 + p.sustained_latency_slack.as_secs_f64() * 1e3);
    let slow = canary.count_above_ms(limit);
    let share = slow as f64 / n as f64;
    let log_lr = mixture_log_lr(share - 0.05, 0.05 * 0.95 / n as f64, LATENCY_TAU);
    let alpha = c.alpha();
    if log_lr < (1.0 / alpha).ln() || binomial_upper_tail(slow, n, 0.05) >= alpha {
        return None;
    }
    let pv = always_valid_p(log_lr);
    let c95 = canary.quantile_ms(0.95).unwrap_or(0.0);
    Some(c.breach(Breach {
        rule: Rule::SustainedLatency,
        reason: format!(
            "over {} at this weight the canary's p95 {c95:.1} ms is above {ratio} x stable's {s95:.1} ms ({slow}/{n} slower than {limit:.1} ms, sequential test, p = {})",
            seconds(s.latency_span_ms),
            fmt_p(pv)
        ),
        threshold: round3(limit),
        observed: round3(c95),
        p_value: Some(round6(pv)),
        confidence: p.confidence,
    }))
}
