//! The rules: `decide` runs them in order and the first that gives a verdict wins; each is a
//! small pure function of the evidence and the policy (see the module doc of `judge` for
//! what each one means).

use std::time::Duration;

use super::significance::{
    binomial_upper_tail, difference_p_value, newcombe_lower, wilson, wilson_upper,
};
use super::verdict::{round3, round6};
use super::{ArmFigures, Breach, Evidence, Policy, ProbeFailure, Rule, UsageSample, Verdict};

/// One evaluation: the evidence, the policy, both arms' figures and the remarks the rules
/// leave for a healthy verdict.
struct Case<'a> {
    e: &'a Evidence,
    p: &'a Policy,
    stable: ArmFigures,
    canary: ArmFigures,
    notes: Vec<String>,
}

/// The counts the rate and latency rules compare (only once there is enough traffic).
struct Counts {
    /// Canary requests and failures.
    n: u64,
    k: u64,
    /// Stable requests and failures.
    ns: u64,
    ks: u64,
    rate_c: f64,
    rate_s: f64,
    /// Stable has enough requests for comparisons with it to mean anything.
    stable_known: bool,
}

impl Case<'_> {
    fn alpha(&self) -> f64 {
        1.0 - self.p.confidence
    }

    /// The windowed tests' (rules 3 to 6) share of `1 - confidence`: the window is looked at
    /// every 100 ms for as long as a canary runs, so each of an hour's windows gets its
    /// Bonferroni share and an hour of looks costs at most `1 - confidence` of false alarm.
    /// (The sustained rules need no such share: their test is valid at every look.)
    fn window_alpha(&self) -> f64 {
        let windows = (3600.0 / self.p.window.as_secs_f64().max(1.0)).max(1.0);
        self.alpha() / windows
    }

    fn window_confidence(&self) -> f64 {
        1.0 - self.window_alpha()
    }

    fn breach(&self, b: Breach) -> Verdict {
        Verdict::Breach {
            breach: b,
            stable: self.stable.clone(),
            canary: self.canary.clone(),
            probes: Vec::new(),
        }
    }

    fn healthy(&self, note: String) -> Verdict {
        Verdict::Healthy {
            note: Some(note),
            stable: self.stable.clone(),
            canary: self.canary.clone(),
        }
    }

    fn counts(&self) -> Counts {
        let (n, k) = (self.e.canary.requests(), self.e.canary.failures());
        let (ns, ks) = (self.e.stable.requests(), self.e.stable.failures());
        Counts {
            n,
            k,
            ns,
            ks,
            rate_c: if n > 0 { k as f64 / n as f64 } else { 0.0 },
            rate_s: if ns > 0 { ks as f64 / ns as f64 } else { 0.0 },
            stable_known: ns >= self.p.min_requests.max(1),
        }
    }
}

/// A rule: `Some(verdict)` ends the evaluation.
type RuleFn = fn(&mut Case<'_>) -> Option<Verdict>;

/// The rules, in the order they are tried.
const RULES: [RuleFn; 12] = [
    probes,
    analysis,
    resources,
    consecutive_failures,
    enough_traffic,
    error_rate,
    error_rate_increase,
    route_errors,
    sustained::sustained_errors,
    latency_ceilings,
    latency_increase,
    sustained::sustained_latency,
];

/// Decides on a canary. Pure: same evidence and policy, same verdict.
pub fn decide(e: &Evidence, p: &Policy) -> Verdict {
    let mut case = Case {
        e,
        p,
        stable: ArmFigures::of(&e.stable, e.stable_consecutive_failures),
        canary: ArmFigures::of(&e.canary, e.canary_consecutive_failures),
        notes: Vec::new(),
    };
    for rule in RULES {
        if let Some(verdict) = rule(&mut case) {
            return verdict;
        }
    }
    Verdict::Healthy {
        note: (!case.notes.is_empty()).then(|| case.notes.join("; ")),
        stable: case.stable,
        canary: case.canary,
    }
}

/// 0. A canary upstream failing its active probes breaches at once, traffic or not, unless
///    the same probe fails on every stable upstream too (shared cause).
fn probes(c: &mut Case<'_>) -> Option<Verdict> {
    let e = c.e;
    if e.probe_failures.is_empty() {
        return None;
    }
    let own: Vec<&ProbeFailure> = e
        .probe_failures
        .iter()
        .filter(|f| !e.stable_probes_failing.contains(&f.probe))
        .collect();
    let Some(first) = own.first() else {
        return Some(c.healthy(format!(
            "probe(s) {} fail on stable too: shared cause",
            e.stable_probes_failing.join(", ")
        )));
    };
    let last = first
        .results
        .last()
        .map(|r| r.outcome.detail.clone())
        .unwrap_or_default();
    let more = if own.len() > 1 {
        format!(" and {} more", own.len() - 1)
    } else {
        String::new()
    };
    Some(Verdict::Breach {
        breach: Breach {
            rule: Rule::ProbeFailed,
            reason: format!(
                "probe '{}' fails on canary {} ({} in a row: {last}){more}",
                first.probe, first.upstream, first.failures,
            ),
            threshold: 0.0,
            observed: first.failures as f64,
            p_value: None,
            confidence: c.p.confidence,
        },
        stable: c.stable.clone(),
        canary: c.canary.clone(),
        probes: own.into_iter().cloned().collect(),
    })
}

/// 0b. An external analysis (Prometheus) failed more measurements than its
///     `failure_limit`: its own evidence, judged by its own condition, acts at once.
fn analysis(c: &mut Case<'_>) -> Option<Verdict> {
    let first = c.e.analysis_failures.first()?;
    let detail = first
        .latest
        .as_ref()
        .map(|m| format!(": {}", m.detail))
        .unwrap_or_default();
    let more = match c.e.analysis_failures.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Some(c.breach(Breach {
        rule: Rule::Analysis,
        reason: format!(
            "analysis '{}' failed {} of {} measurements (limit {}){detail}{more}",
            first.analysis, first.failures, first.measurements, first.failure_limit
        ),
        threshold: f64::from(first.failure_limit),
        observed: f64::from(first.failures),
        p_value: None,
        confidence: c.p.confidence,
    }))
}

/// 0c. A canary container over its share of its memory or CPU limit for the rule's whole
///     duration.
fn resources(c: &mut Case<'_>) -> Option<Verdict> {
    type Reading = fn(&UsageSample) -> f64;
    let p = c.p;
    let rules: [(Rule, Option<f64>, Duration, &str, Reading); 2] = [
        (
            Rule::Memory,
            p.max_memory,
            p.max_memory_for,
            "memory",
            |s| s.memory,
        ),
        (Rule::Cpu, p.max_cpu, p.max_cpu_for, "CPU", |s| s.cpu),
    ];
    for (rule, limit, span, what, value) in rules {
        let Some(limit) = limit else {
            continue;
        };
        for u in &c.e.canary_usage {
            if let Some(low) = u.above_for(limit, span, value) {
                return Some(c.breach(Breach {
                    rule,
                    reason: format!(
                        "canary container {} ({}) used over {:.0} % of its {what} limit for {} (at least {:.1} %)",
                        u.container,
                        u.upstream,
                        limit * 100.0,
                        crate::time::format_duration(span),
                        low * 100.0
                    ),
                    threshold: limit,
                    observed: round6(low),
                    p_value: None,
                    confidence: p.confidence,
                }));
            }
        }
    }
    None
}

/// 1. `max_consecutive_failures` canary failures in a row breach at once, before any
///    minimum of requests; not while stable fails the same way.
fn consecutive_failures(c: &mut Case<'_>) -> Option<Verdict> {
    let (e, p) = (c.e, c.p);
    let run = e.canary_consecutive_failures;
    if p.max_consecutive_failures == 0 || run < p.max_consecutive_failures {
        return None;
    }
    if e.stable_consecutive_failures >= p.max_consecutive_failures {
        return Some(c.healthy(format!(
            "both arms fail in a row (stable {}, canary {run}): shared cause",
            e.stable_consecutive_failures
        )));
    }
    // A run of `run` failures is evidence only when it is unlikely for a canary failing as
    // often as stable does now (over the run's own span): among the canary's n requests a
    // run that long turns up with probability at most n * r^run, r being the upper
    // confidence bound of stable's recent failure ratio.
    let mut p_value = None;
    let mut stable_note = String::new();
    if let Some(recent) = e.stable_recent.filter(|r| r.requests > 0) {
        let r = wilson_upper(recent.failures, recent.requests, p.confidence);
        let n = c.e.canary.requests().max(u64::from(run)) as f64;
        let chance = (n * r.powf(f64::from(run))).min(1.0);
        stable_note = format!(
            "; stable failed {} of {} requests over the same {:.1} s",
            recent.failures,
            recent.requests,
            recent.span_ms as f64 / 1000.0
        );
        if chance >= c.alpha() {
            c.notes.push(format!(
                "{run} canary failures in a row are likely while stable fails {:.1} % of its \
                 requests (chance {chance:.3}): not taken as a dead canary",
                100.0 * recent.failures as f64 / recent.requests as f64
            ));
            return None;
        }
        p_value = Some(round6(chance));
    }
    Some(c.breach(Breach {
        rule: Rule::ConsecutiveFailures,
        reason: format!(
            "{run} canary requests failed in a row (limit {}){stable_note}",
            p.max_consecutive_failures
        ),
        threshold: p.max_consecutive_failures as f64,
        observed: run as f64,
        p_value,
        confidence: p.confidence,
    }))
}

/// 2. Under `min_requests` canary requests nothing can be shown: inconclusive.
fn enough_traffic(c: &mut Case<'_>) -> Option<Verdict> {
    let n = c.e.canary.requests();
    if n >= c.p.min_requests.max(1) {
        return None;
    }
    let reason = if n == 0 {
        "no canary traffic in the window".to_string()
    } else {
        format!("{n} of {} canary requests needed", c.p.min_requests)
    };
    Some(Verdict::Inconclusive {
        reason,
        stable: c.stable.clone(),
        canary: c.canary.clone(),
    })
}

/// 3. The canary's failure ratio over `max_error_rate`, significant by an exact binomial
///    test; skipped when stable is over the same ceiling (shared cause).
fn error_rate(c: &mut Case<'_>) -> Option<Verdict> {
    let p = c.p;
    let Counts {
        n,
        k,
        rate_c,
        rate_s,
        stable_known,
        ..
    } = c.counts();
    if p.max_error_rate >= 1.0 || rate_c <= p.max_error_rate {
        return None;
    }
    if stable_known && rate_s > p.max_error_rate {
        c.notes.push(format!(
            "both arms over the {:.1} % error ceiling (stable {:.2} %, canary {:.2} %): shared cause",
            p.max_error_rate * 100.0,
            rate_s * 100.0,
            rate_c * 100.0
        ));
        return None;
    }
    let pv = binomial_upper_tail(k, n, p.max_error_rate);
    (pv < c.window_alpha()).then(|| {
        c.breach(Breach {
            rule: Rule::ErrorRate,
            reason: format!(
                "canary error rate {:.2} % ({k}/{n}) is above {:.2} % (p = {})",
                rate_c * 100.0,
                p.max_error_rate * 100.0,
                fmt_p(pv)
            ),
            threshold: p.max_error_rate,
            observed: round6(rate_c),
            p_value: Some(pv),
            confidence: c.window_confidence(),
        })
    })
}

/// 4. The canary's ratio over stable's by more than `max_error_rate_increase`: the lower
///    confidence bound of the difference (Newcombe's hybrid score interval) must clear
///    the margin, so arms degrading together never breach.
fn error_rate_increase(c: &mut Case<'_>) -> Option<Verdict> {
    let p = c.p;
    let Counts {
        n,
        k,
        ns,
        ks,
        rate_c,
        rate_s,
        stable_known,
    } = c.counts();
    if p.max_error_rate_increase >= 1.0
        || !stable_known
        || rate_c - rate_s <= p.max_error_rate_increase
    {
        return None;
    }
    let confidence = c.window_confidence();
    let lower = newcombe_lower(k, n, ks, ns, confidence);
    if lower <= p.max_error_rate_increase
        || !exact_above(k, n, rate_s, p.max_error_rate_increase, confidence)
    {
        return None;
    }
    let pv = difference_p_value(k, n, ks, ns, p.max_error_rate_increase);
    Some(c.breach(Breach {
        rule: Rule::ErrorRateIncrease,
        reason: format!(
            "canary error rate {:.2} % ({k}/{n}) exceeds stable's {:.2} % ({ks}/{ns}) by more than {:.2} points (at least {:.2} at {:.4} % confidence)",
            rate_c * 100.0,
            rate_s * 100.0,
            p.max_error_rate_increase * 100.0,
            lower * 100.0,
            confidence * 100.0
        ),
        threshold: p.max_error_rate_increase,
        observed: round6(rate_c - rate_s),
        p_value: Some(pv),
        confidence,
    }))
}

/// Whether an exact binomial test agrees that `k` of `n` canary failures are above
/// `stable` (stable's ratio, or a bound of it) plus `margin`. Score intervals flatter a
/// handful of failures among a few dozen canary requests; judged every 100 ms, that
/// flattery adds up to false alarms, so the rules that compare a window with stable also
/// ask this.
fn exact_above(k: u64, n: u64, stable: f64, margin: f64, confidence: f64) -> bool {
    binomial_upper_tail(k, n, (stable + margin).min(1.0)) < 1.0 - confidence
}

/// The fewest canary requests a route needs to be compared on its own.
pub const ROUTE_MIN_REQUESTS: u64 = 10;

/// 4b. One route worse on the canary than on stable: its failure ratio exceeds stable's on
///     the same route by more than `max_error_rate_increase` (or, when stable has too few
///     requests there, exceeds `max_error_rate`), by a confidence bound made stricter by the
///     number of routes compared (Bonferroni: `1 - (1 - confidence) / routes`), so that many
///     routes do not multiply false alarms.
fn route_errors(c: &mut Case<'_>) -> Option<Verdict> {
    let (e, p) = (c.e, c.p);
    if p.max_error_rate_increase >= 1.0 {
        return None;
    }
    let compared: Vec<&super::RouteComparison> = e
        .routes
        .iter()
        .filter(|r| r.route != crate::stats::OTHER_ROUTE && r.canary_requests >= ROUTE_MIN_REQUESTS)
        .collect();
    if compared.is_empty() {
        return None;
    }
    let m = compared.len() as f64;
    let confidence = 1.0 - c.window_alpha() / m;
    let mut worst: Option<(f64, Breach)> = None;
    for r in compared {
        let (kc, nc, ks, ns) = (
            r.canary_failures,
            r.canary_requests,
            r.stable_failures,
            r.stable_requests,
        );
        let rate_c = kc as f64 / nc as f64;
        let rate_s = if ns > 0 { ks as f64 / ns as f64 } else { 0.0 };
        let (lower, threshold, against) = if ns >= ROUTE_MIN_REQUESTS {
            // A route holds few stable requests: a failure and a success added to them (a
            // few lucky stable successes must not make an ordinary canary look bad).
            let stable = (ks + 1) as f64 / (ns + 2) as f64;
            if !exact_above(kc, nc, stable, p.max_error_rate_increase, confidence) {
                continue;
            }
            (
                newcombe_lower(kc, nc, ks, ns, confidence),
                p.max_error_rate_increase,
                format!("stable's {:.1} % ({ks}/{ns}) on it", rate_s * 100.0),
            )
        } else {
            if p.max_error_rate >= 1.0
                || binomial_upper_tail(kc, nc, p.max_error_rate) >= 1.0 - confidence
            {
                continue;
            }
            (
                wilson(kc, nc, confidence).0 - p.max_error_rate,
                0.0,
                format!(
                    "the {:.1} % ceiling (stable has {ns} requests on it)",
                    p.max_error_rate * 100.0
                ),
            )
        };
        if lower <= threshold || worst.as_ref().is_some_and(|(w, _)| *w >= lower) {
            continue;
        }
        let breach = Breach {
            rule: Rule::RouteErrorRate,
            reason: format!(
                "route {}: canary failed {kc} of {nc} ({:.1} %), above {against} by at least {:.1} points at {:.3} % confidence ({} routes compared)",
                r.route,
                rate_c * 100.0,
                lower * 100.0,
                confidence * 100.0,
                m
            ),
            threshold: p.max_error_rate_increase,
            observed: round6(rate_c - rate_s),
            p_value: Some(round6(difference_p_value(
                kc,
                nc,
                ks,
                ns.max(1),
                p.max_error_rate_increase,
            ))),
            confidence,
        };
        worst = Some((lower, breach));
    }
    worst.map(|(_, b)| c.breach(b))
}

/// 5. Canary p95 over `max_p95` (p99 over `max_p99`), significant: the share of slower
///    requests is tested against the 5 % (1 %) a healthy quantile allows; skipped when
///    stable is over the same ceiling.
fn latency_ceilings(c: &mut Case<'_>) -> Option<Verdict> {
    let (e, p) = (c.e, c.p);
    let Counts {
        n, stable_known, ..
    } = c.counts();
    for (q, ceiling) in [(0.95, p.max_p95), (0.99, p.max_p99)] {
        let Some(ceiling) = ceiling else { continue };
        let limit_ms = ceiling.as_secs_f64() * 1e3;
        let Some(observed) = e.canary.quantile_ms(q) else {
            continue;
        };
        if observed <= limit_ms {
            continue;
        }
        if stable_known && e.stable.quantile_ms(q).is_some_and(|s| s > limit_ms) {
            c.notes.push(format!(
                "both arms over the p{} ceiling of {limit_ms} ms: shared cause",
                (q * 100.0) as u32
            ));
            continue;
        }
        let slow = e.canary.count_above_ms(limit_ms);
        let pv = binomial_upper_tail(slow, n, 1.0 - q);
        if pv < c.window_alpha() {
            return Some(c.breach(Breach {
                rule: Rule::Latency,
                reason: format!(
                    "canary p{} {observed:.1} ms is above {limit_ms} ms ({slow}/{n} slower, p = {})",
                    (q * 100.0) as u32,
                    fmt_p(pv)
                ),
                threshold: limit_ms,
                observed: round3(observed),
                p_value: Some(pv),
                confidence: c.window_confidence(),
            }));
        }
    }
    None
}

/// 6. Canary p95 over `max_p95_ratio` × stable's (and at least `latency_slack` above it),
///    tested the same way against that threshold.
fn latency_increase(c: &mut Case<'_>) -> Option<Verdict> {
    let (e, p) = (c.e, c.p);
    let Counts {
        n, stable_known, ..
    } = c.counts();
    let ratio = p.max_p95_ratio.filter(|_| stable_known)?;
    let (c95, s95) = (e.canary.quantile_ms(0.95)?, e.stable.quantile_ms(0.95)?);
    let limit = (s95 * ratio).max(s95 + p.latency_slack.as_secs_f64() * 1e3);
    if c95 <= limit {
        return None;
    }
    let slow = e.canary.count_above_ms(limit);
    let pv = binomial_upper_tail(slow, n, 0.05);
    (pv < c.window_alpha()).then(|| {
        c.breach(Breach {
            rule: Rule::LatencyIncrease,
            reason: format!(
                "canary p95 {c95:.1} ms is above {ratio} x stable's {s95:.1} ms ({slow}/{n} slower than {limit:.1} ms, p = {})",
                fmt_p(pv)
            ),
            threshold: round3(limit),
            observed: round3(c95),
            p_value: Some(pv),
            confidence: c.window_confidence(),
        })
    })
}

fn fmt_p(p: f64) -> String {
    if p < 1e-6 {
        format!("{p:.1e}")
    } else {
        format!("{p:.6}")
    }
}

mod sustained;

#[cfg(test)]
mod tests;
