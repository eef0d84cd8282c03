//! The judge: `decide(&Evidence, &Policy) -> Verdict`, a pure function.
//!
//! Evidence is the two arms' windows over the same time span plus the canary's run of
//! failures. Rules, in order (the first that holds is the verdict):
//!
//! 0. **Probes.** A canary upstream whose active probes fail by their policy breaches at
//!    once, traffic or not (a canary at 1 % at night gets almost none). Not when the same
//!    probe fails on every stable upstream too (shared cause).
//! 1. **Consecutive failures.** `max_consecutive_failures` canary failures in a row (5xx or
//!    no response) breach at once, before `min_requests`: a dead canary needs no statistics.
//!    Not when stable is failing the same way (a shared outage is not the canary's fault).
//! 2. **Too little traffic.** Under `min_requests` canary requests the verdict is
//!    `Inconclusive`; nothing is ever rolled back on no or little traffic.
//! 3. **Error rate.** The canary's failure ratio is above `max_error_rate` *and* a one-sided
//!    exact binomial test says the true ratio is above it at `confidence`. Skipped when stable
//!    is above the same ceiling (shared cause).
//! 4. **Error rate against stable.** The canary's ratio exceeds stable's by more than
//!    `max_error_rate_increase` *and* the canary's failures are significant against the
//!    upper confidence bound of stable's ratio plus that margin. When both arms degrade
//!    together the margin is not exceeded, so a shared outage never cuts the canary back.
//! 5. **Latency.** Canary p95 above `max_p95` (or p99 above `max_p99`), significant: the
//!    share of canary requests slower than the ceiling is tested against the 5 % (1 %) a
//!    healthy quantile allows. Skipped when stable is over the same ceiling.
//! 6. **Latency against stable.** Canary p95 above `max_p95_ratio` × stable's p95 (and at
//!    least `latency_slack` above it), tested the same way against that threshold.
//!
//! Every verdict carries the numbers it was decided on. Time enters only through the
//! [`Hysteresis`] that the controller keeps per service: a rate or latency breach must hold
//! for `breach_for` before it acts; a run of failures acts at once.

use std::time::Duration;

use serde::Serialize;

use crate::stats::WindowSnapshot;

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
    /// Canary upstreams failing their probes by policy.
    pub probe_failures: Vec<ProbeFailure>,
    /// Probes failing on every stable upstream.
    pub stable_probes_failing: Vec<String>,
    /// Resource use of the canary's containers (when Docker runs or hosts them).
    pub canary_usage: Vec<ContainerUsage>,
}

/// Which rule breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Active probes fail on a canary upstream.
    ProbeFailed,
    /// A run of failures.
    ConsecutiveFailures,
    /// Failure ratio over the ceiling.
    ErrorRate,
    /// Failure ratio over stable's plus the margin.
    ErrorRateIncrease,
    /// A latency quantile over its ceiling.
    Latency,
    /// p95 over stable's times the ratio.
    LatencyIncrease,
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
            Rule::Latency => "latency",
            Rule::LatencyIncrease => "latency_increase",
            Rule::Memory => "memory",
            Rule::Cpu => "cpu",
        }
    }

    /// Latency regressions (a deployment may step back from them instead).
    pub fn is_soft(self) -> bool {
        matches!(self, Rule::Latency | Rule::LatencyIncrease)
    }

    /// Hard failures act at once; soft regressions wait `breach_for`. (Resource rules
    /// carry their own duration: they act once it has held.)
    pub fn is_immediate(self) -> bool {
        matches!(
            self,
            Rule::ConsecutiveFailures | Rule::ProbeFailed | Rule::Memory | Rule::Cpu
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
    fn of(w: &WindowSnapshot, consecutive: u32) -> ArmFigures {
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

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Decides on a canary. Pure: same evidence and policy, same verdict.
pub fn decide(e: &Evidence, p: &Policy) -> Verdict {
    let stable = ArmFigures::of(&e.stable, e.stable_consecutive_failures);
    let canary = ArmFigures::of(&e.canary, e.canary_consecutive_failures);
    let alpha = 1.0 - p.confidence;
    let breach = |b: Breach| Verdict::Breach {
        breach: b,
        stable: stable.clone(),
        canary: canary.clone(),
        probes: Vec::new(),
    };

    // 0. Active probes.
    if !e.probe_failures.is_empty() {
        let own: Vec<&ProbeFailure> = e
            .probe_failures
            .iter()
            .filter(|f| !e.stable_probes_failing.contains(&f.probe))
            .collect();
        if own.is_empty() {
            return Verdict::Healthy {
                note: Some(format!(
                    "probe(s) {} fail on stable too: shared cause",
                    e.stable_probes_failing.join(", ")
                )),
                stable,
                canary,
            };
        }
        let first = own[0];
        let last = first
            .results
            .last()
            .map(|r| r.outcome.detail.clone())
            .unwrap_or_default();
        return Verdict::Breach {
            breach: Breach {
                rule: Rule::ProbeFailed,
                reason: format!(
                    "probe '{}' fails on canary {} ({} in a row: {last}){}",
                    first.probe,
                    first.upstream,
                    first.failures,
                    if own.len() > 1 {
                        format!(" and {} more", own.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                threshold: 0.0,
                observed: first.failures as f64,
                p_value: None,
                confidence: p.confidence,
            },
            stable,
            canary,
            probes: own.into_iter().cloned().collect(),
        };
    }

    // 0b. Resources of the canary's containers.
    type Reading = fn(&UsageSample) -> f64;
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
        for u in &e.canary_usage {
            if let Some(low) = u.above_for(limit, span, value) {
                return breach(Breach {
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
                });
            }
        }
    }

    // 1. A run of failures.
    let run = e.canary_consecutive_failures;
    if p.max_consecutive_failures > 0 && run >= p.max_consecutive_failures {
        if e.stable_consecutive_failures >= p.max_consecutive_failures {
            return Verdict::Healthy {
                note: Some(format!(
                    "both arms fail in a row (stable {}, canary {run}): shared cause",
                    e.stable_consecutive_failures
                )),
                stable,
                canary,
            };
        }
        return breach(Breach {
            rule: Rule::ConsecutiveFailures,
            reason: format!(
                "{run} canary requests failed in a row (limit {})",
                p.max_consecutive_failures
            ),
            threshold: p.max_consecutive_failures as f64,
            observed: run as f64,
            p_value: None,
            confidence: p.confidence,
        });
    }

    // 2. Enough traffic?
    let n = e.canary.requests();
    if n < p.min_requests.max(1) {
        let reason = if n == 0 {
            "no canary traffic in the window".to_string()
        } else {
            format!("{n} of {} canary requests needed", p.min_requests)
        };
        return Verdict::Inconclusive {
            reason,
            stable,
            canary,
        };
    }
    let k = e.canary.failures();
    let ns = e.stable.requests();
    let ks = e.stable.failures();
    let rate_c = k as f64 / n as f64;
    let rate_s = if ns > 0 { ks as f64 / ns as f64 } else { 0.0 };
    let stable_known = ns >= p.min_requests.max(1);
    let mut notes = Vec::new();

    // 3. Error rate over the ceiling.
    if p.max_error_rate < 1.0 && rate_c > p.max_error_rate {
        if stable_known && rate_s > p.max_error_rate {
            notes.push(format!(
                "both arms over the {:.1} % error ceiling (stable {:.2} %, canary {:.2} %): shared cause",
                p.max_error_rate * 100.0,
                rate_s * 100.0,
                rate_c * 100.0
            ));
        } else {
            let pv = binomial_upper_tail(k, n, p.max_error_rate);
            if pv < alpha {
                return breach(Breach {
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
                    confidence: p.confidence,
                });
            }
        }
    }

    // 4. Error rate against stable: the lower confidence bound of the difference
    //    (Newcombe's hybrid score interval) must clear the margin.
    if p.max_error_rate_increase < 1.0
        && stable_known
        && rate_c - rate_s > p.max_error_rate_increase
    {
        let lower = newcombe_lower(k, n, ks, ns, p.confidence);
        if lower > p.max_error_rate_increase {
            let pv = difference_p_value(k, n, ks, ns, p.max_error_rate_increase);
            return breach(Breach {
                rule: Rule::ErrorRateIncrease,
                reason: format!(
                    "canary error rate {:.2} % ({k}/{n}) exceeds stable's {:.2} % ({ks}/{ns}) by more than {:.2} points (at least {:.2} at {} % confidence)",
                    rate_c * 100.0,
                    rate_s * 100.0,
                    p.max_error_rate_increase * 100.0,
                    lower * 100.0,
                    p.confidence * 100.0
                ),
                threshold: p.max_error_rate_increase,
                observed: round6(rate_c - rate_s),
                p_value: Some(pv),
                confidence: p.confidence,
            });
        }
    }

    // 5. Latency ceilings.
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
            notes.push(format!(
                "both arms over the p{} ceiling of {limit_ms} ms: shared cause",
                (q * 100.0) as u32
            ));
            continue;
        }
        let slow = e.canary.count_above_ms(limit_ms);
        let pv = binomial_upper_tail(slow, n, 1.0 - q);
        if pv < alpha {
            return breach(Breach {
                rule: Rule::Latency,
                reason: format!(
                    "canary p{} {observed:.1} ms is above {limit_ms} ms ({slow}/{n} slower, p = {})",
                    (q * 100.0) as u32,
                    fmt_p(pv)
                ),
                threshold: limit_ms,
                observed: round3(observed),
                p_value: Some(pv),
                confidence: p.confidence,
            });
        }
    }

    // 6. Latency against stable.
    if let (Some(ratio), true) = (p.max_p95_ratio, stable_known) {
        if let (Some(c95), Some(s95)) = (e.canary.quantile_ms(0.95), e.stable.quantile_ms(0.95)) {
            let limit = (s95 * ratio).max(s95 + p.latency_slack.as_secs_f64() * 1e3);
            if c95 > limit {
                let slow = e.canary.count_above_ms(limit);
                let pv = binomial_upper_tail(slow, n, 0.05);
                if pv < alpha {
                    return breach(Breach {
                        rule: Rule::LatencyIncrease,
                        reason: format!(
                            "canary p95 {c95:.1} ms is above {ratio} x stable's {s95:.1} ms ({slow}/{n} slower than {limit:.1} ms, p = {})",
                            fmt_p(pv)
                        ),
                        threshold: round3(limit),
                        observed: round3(c95),
                        p_value: Some(pv),
                        confidence: p.confidence,
                    });
                }
            }
        }
    }

    Verdict::Healthy {
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        stable,
        canary,
    }
}

fn fmt_p(p: f64) -> String {
    if p < 1e-6 {
        format!("{p:.1e}")
    } else {
        format!("{p:.6}")
    }
}

/// What the controller should do after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing.
    None,
    /// A breach started; wait `breach_for` before acting (report it).
    Watch,
    /// A breach cleared before it was acted on (report it).
    Cleared,
    /// Cut the canary back now.
    CutBack,
}

/// Hysteresis over verdicts: soft breaches must hold for `breach_for`; hard ones act at
/// once. Pure: time is passed in.
#[derive(Debug, Clone, Default)]
pub struct Hysteresis {
    since: Option<Duration>,
}

impl Hysteresis {
    /// Feeds one verdict observed at `now` (any monotonic origin).
    pub fn observe(&mut self, verdict: &Verdict, now: Duration, breach_for: Duration) -> Action {
        match verdict.breach() {
            Some(b) if b.rule.is_immediate() || breach_for.is_zero() => {
                self.since = None;
                Action::CutBack
            }
            Some(_) => match self.since {
                None => {
                    self.since = Some(now);
                    Action::Watch
                }
                Some(start) if now.saturating_sub(start) >= breach_for => {
                    self.since = None;
                    Action::CutBack
                }
                Some(_) => Action::None,
            },
            None => {
                if self.since.take().is_some() {
                    Action::Cleared
                } else {
                    Action::None
                }
            }
        }
    }

    /// Whether a breach is being watched.
    pub fn watching(&self) -> bool {
        self.since.is_some()
    }

    /// Forgets any breach being watched (a new canary, a manual change).
    pub fn reset(&mut self) {
        self.since = None;
    }
}

// ---- statistics -------------------------------------------------------------------------

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function `I_x(a, b)`.
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`: how surprising `k` failures in `n` are when the
/// true ratio is `p`. Exact (through the incomplete beta function) for any `n`.
pub fn binomial_upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    inc_beta(k as f64, (n - k + 1) as f64, p).clamp(0.0, 1.0)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, ~1e-9).
fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.024_25;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The one-sided Wilson score interval `(lower, upper)` for `k` of `n` at `confidence`.
pub fn wilson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = normal_quantile(confidence);
    let n = n as f64;
    let phat = k as f64 / n;
    let z2 = z * z;
    let centre = phat + z2 / (2.0 * n);
    let spread = z * (phat * (1.0 - phat) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - spread) / denom).max(0.0),
        ((centre + spread) / denom).min(1.0),
    )
}

/// Upper end of the one-sided Wilson score interval.
pub fn wilson_upper(k: u64, n: u64, confidence: f64) -> f64 {
    wilson(k, n, confidence).1
}

/// Lower confidence bound of `p1 - p2` (Newcombe's hybrid score method, from the two
/// Wilson intervals); well behaved with small and zero counts.
pub fn newcombe_lower(k1: u64, n1: u64, k2: u64, n2: u64, confidence: f64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return -1.0;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let (l1, _) = wilson(k1, n1, confidence);
    let (_, u2) = wilson(k2, n2, confidence);
    p1 - p2 - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt()
}

/// Approximate one-sided p-value of `p1 - p2 > margin` (unpooled z), for the record.
pub fn difference_p_value(k1: u64, n1: u64, k2: u64, n2: u64, margin: f64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let se = (p1 * (1.0 - p1) / n1 as f64 + p2 * (1.0 - p2) / n2 as f64).sqrt();
    if se == 0.0 {
        return if p1 - p2 > margin { 0.0 } else { 1.0 };
    }
    normal_sf((p1 - p2 - margin) / se)
}

/// `P(Z > z)` for a standard normal `Z` (complementary error function, ~1e-7).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ArmStats;
    use crate::types::StatusClass;
    use std::time::Instant;

    /// A window with `ok` 2xx and `bad` 5xx answers, all taking `latency`.
    fn window(ok: u64, bad: u64, latency: Duration) -> WindowSnapshot {
        let origin = Instant::now();
        let s = ArmStats::with_origin(Duration::from_secs(30), origin);
        for _ in 0..ok {
            s.record_at(origin, StatusClass::Success, latency);
        }
        for _ in 0..bad {
            s.record_at(origin, StatusClass::ServerError, latency);
        }
        s.snapshot_at(origin)
    }

    fn evidence(stable: WindowSnapshot, canary: WindowSnapshot) -> Evidence {
        Evidence {
            stable,
            canary,
            canary_consecutive_failures: 0,
            stable_consecutive_failures: 0,
            probe_failures: Vec::new(),
            stable_probes_failing: Vec::new(),
            canary_usage: Vec::new(),
        }
    }

    fn usage(memory: &[f64]) -> ContainerUsage {
        ContainerUsage {
            container: "web-v2-1".into(),
            upstream: "127.0.0.1:3001".into(),
            samples: memory
                .iter()
                .enumerate()
                .map(|(i, m)| UsageSample {
                    age_ms: i as u64 * 1000,
                    cpu: 0.1,
                    memory: *m,
                })
                .collect(),
        }
    }

    #[test]
    fn memory_over_its_share_for_long_enough_breaches() {
        let policy = Policy {
            max_memory: Some(0.9),
            max_memory_for: Duration::from_secs(5),
            ..Policy::default()
        };
        let mut e = evidence(window(0, 0, MS), window(0, 0, MS));
        // Four seconds above: not yet.
        e.canary_usage = vec![usage(&[0.95, 0.95, 0.96, 0.97, 0.5])];
        assert_eq!(decide(&e, &policy).name(), "inconclusive");
        // Six seconds above, with no gap: a breach, without any traffic.
        e.canary_usage = vec![usage(&[0.95, 0.95, 0.96, 0.97, 0.93, 0.92, 0.91])];
        let v = decide(&e, &policy);
        let b = v.breach().expect("memory breach");
        assert_eq!(b.rule, Rule::Memory);
        assert!((b.observed - 0.92).abs() < 1e-9, "{b:?}");
        assert!(b.reason.contains("web-v2-1"), "{}", b.reason);
        // A gap in the samples proves nothing.
        let mut gappy = usage(&[0.95, 0.95, 0.96, 0.97, 0.93, 0.92, 0.91]);
        gappy.samples.remove(3);
        gappy.samples.remove(3);
        e.canary_usage = vec![gappy];
        assert_eq!(decide(&e, &policy).name(), "inconclusive");
        // Off by default.
        e.canary_usage = vec![usage(&[0.99; 10])];
        assert_eq!(decide(&e, &Policy::default()).name(), "inconclusive");
        // Stale samples (the newest is old) prove nothing either.
        let mut stale = usage(&[0.99; 10]);
        for s in &mut stale.samples {
            s.age_ms += 10_000;
        }
        e.canary_usage = vec![stale];
        assert_eq!(decide(&e, &policy).name(), "inconclusive");
    }

    #[test]
    fn a_failing_probe_breaches_without_any_traffic() {
        let mut e = evidence(window(0, 0, MS), window(0, 0, MS));
        e.probe_failures = vec![ProbeFailure {
            probe: "health".into(),
            upstream: "127.0.0.1:3001".into(),
            failures: 3,
            since_ms: 0,
            results: vec![],
        }];
        let v = decide(&e, &Policy::default());
        assert_eq!(v.breach().map(|b| b.rule), Some(Rule::ProbeFailed), "{v:?}");
        assert!(Rule::ProbeFailed.is_immediate());
        // The same probe failing on every stable upstream: shared cause.
        e.stable_probes_failing = vec!["health".into()];
        assert_eq!(decide(&e, &Policy::default()).name(), "healthy");
    }

    const MS: Duration = Duration::from_millis(10);

    #[test]
    fn binomial_tail_matches_known_values() {
        // P(X >= 1 | n = 10, p = 0.1) = 1 - 0.9^10
        let v = binomial_upper_tail(1, 10, 0.1);
        assert!((v - (1.0 - 0.9f64.powi(10))).abs() < 1e-12, "{v}");
        // P(X >= 10 | n = 10, p = 0.5) = 0.5^10
        assert!((binomial_upper_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-15);
        // P(X >= 3 | n = 20, p = 0.05) = 0.07548...
        assert!((binomial_upper_tail(3, 20, 0.05) - 0.075_483_6).abs() < 1e-6);
        assert_eq!(binomial_upper_tail(0, 5, 0.3), 1.0);
        // Large n stays finite and sensible.
        let big = binomial_upper_tail(450, 20_000, 0.02);
        assert!(big > 0.0 && big < 0.01, "{big}");
    }

    #[test]
    fn wilson_bounds_behave() {
        let u = wilson_upper(1, 100, 0.95);
        assert!(u > 0.01 && u < 0.06, "{u}");
        assert_eq!(wilson_upper(0, 0, 0.99), 1.0);
        assert!(wilson_upper(0, 1_000_000, 0.999) < 1e-5);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_sf(1.959_964) - 0.025).abs() < 1e-6);
        let (lo, hi) = wilson(0, 50, 0.99);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.05 && hi < 0.15, "{hi}");
        // A clear difference has a positive lower bound; equal rates do not.
        assert!(newcombe_lower(400, 20_000, 200, 20_000, 0.999) > 0.005);
        assert!(newcombe_lower(4, 200, 2, 200, 0.999) < 0.0);
    }

    #[test]
    fn no_traffic_is_inconclusive() {
        let v = decide(
            &evidence(window(500, 0, MS), window(0, 0, MS)),
            &Policy::default(),
        );
        assert!(matches!(v, Verdict::Inconclusive { .. }), "{v:?}");
        assert!(v.summary().contains("no canary traffic"));
    }

    #[test]
    fn three_failures_in_a_row_breach_before_min_requests() {
        let p = Policy {
            max_consecutive_failures: 3,
            ..Policy::default()
        };
        let mut e = evidence(window(500, 0, MS), window(0, 3, MS));
        e.canary_consecutive_failures = 3;
        let v = decide(&e, &p);
        assert_eq!(
            v.breach().map(|b| b.rule),
            Some(Rule::ConsecutiveFailures),
            "{v:?}"
        );
        // The same run while stable fails the same way is a shared outage.
        e.stable_consecutive_failures = 7;
        assert_eq!(decide(&e, &p).name(), "healthy");
    }

    #[test]
    fn both_arms_failing_equally_is_not_the_canarys_fault() {
        let v = decide(
            &evidence(window(5_000, 5_000, MS), window(500, 500, MS)),
            &Policy::default(),
        );
        assert_eq!(v.name(), "healthy", "{v:?}");
        assert!(v.summary().contains("shared cause"), "{}", v.summary());
    }

    #[test]
    fn two_against_one_percent_needs_enough_data() {
        // 10 requests: inconclusive (min_requests).
        let v = decide(
            &evidence(window(990, 10, MS), window(10, 0, MS)),
            &Policy::default(),
        );
        assert_eq!(v.name(), "inconclusive");
        // Canary 2 % vs stable 1 %, 20,000 requests each, margin 0.5 points: breach.
        let p = Policy {
            max_error_rate_increase: 0.005,
            ..Policy::default()
        };
        let v = decide(
            &evidence(window(19_800, 200, MS), window(19_600, 400, MS)),
            &p,
        );
        assert_eq!(
            v.breach().map(|b| b.rule),
            Some(Rule::ErrorRateIncrease),
            "{v:?}"
        );
        // The same rates on 200 requests are not significant.
        let v = decide(&evidence(window(198, 2, MS), window(196, 4, MS)), &p);
        assert_eq!(v.name(), "healthy", "{v:?}");
    }

    #[test]
    fn a_clearly_failing_canary_breaches_the_ceiling() {
        let v = decide(
            &evidence(window(1000, 5, MS), window(15, 15, MS)),
            &Policy::default(),
        );
        let b = v.breach().expect("breach");
        assert_eq!(b.rule, Rule::ErrorRate);
        assert!(b.p_value.unwrap() < 1e-3);
        // A few failures over the ceiling on little data are not enough.
        let v = decide(
            &evidence(window(1000, 5, MS), window(18, 2, MS)),
            &Policy::default(),
        );
        assert_eq!(v.name(), "healthy", "{v:?}");
    }

    #[test]
    fn latency_regression_against_stable() {
        let v = decide(
            &evidence(
                window(2000, 0, MS),
                window(200, 0, Duration::from_millis(80)),
            ),
            &Policy::default(),
        );
        let b = v.breach().expect("breach");
        assert_eq!(b.rule, Rule::LatencyIncrease, "{v:?}");
        // Within the slack: 10 ms vs 30 ms is over 2x but under 25 ms more.
        let v = decide(
            &evidence(
                window(2000, 0, MS),
                window(200, 0, Duration::from_millis(30)),
            ),
            &Policy::default(),
        );
        assert_eq!(v.name(), "healthy", "{v:?}");
    }

    #[test]
    fn latency_ceiling_unless_stable_is_as_slow() {
        let slow = Duration::from_millis(3000);
        let v = decide(
            &evidence(window(2000, 0, MS), window(100, 0, slow)),
            &Policy::default(),
        );
        assert!(v.breach().is_some(), "{v:?}");
        let v = decide(
            &evidence(window(2000, 0, slow), window(100, 0, slow)),
            &Policy::default(),
        );
        assert_eq!(v.name(), "healthy", "{v:?}");
    }

    #[test]
    fn rules_can_be_turned_off() {
        let p = Policy {
            max_error_rate: 1.0,
            max_error_rate_increase: 1.0,
            max_consecutive_failures: 0,
            ..Policy::default()
        };
        let mut e = evidence(window(1000, 0, MS), window(0, 100, MS));
        e.canary_consecutive_failures = 100;
        assert_eq!(decide(&e, &p).name(), "healthy");
    }

    #[test]
    fn healthy_noisy_canaries_are_never_breached() {
        // 1,000 simulated canaries with the same 1 % background error rate as stable and
        // the same latency spread, judged on windows of 20..2,020 requests (benches/cutback.rs runs many more).
        let mut rng = fastrand::Rng::with_seed(7);
        let p = Policy::default();
        let mut breaches = 0;
        for i in 0..1_000u64 {
            let n_canary = 20 + (i * 37) % 2_000;
            let n_stable = n_canary * 9;
            let draw = |n: u64, rng: &mut fastrand::Rng| {
                let origin = Instant::now();
                let s = ArmStats::with_origin(Duration::from_secs(30), origin);
                for _ in 0..n {
                    let class = if rng.f64() < 0.01 {
                        StatusClass::ServerError
                    } else {
                        StatusClass::Success
                    };
                    let ms = 5.0 + rng.f64() * rng.f64() * 40.0;
                    s.record_at(origin, class, Duration::from_secs_f64(ms / 1000.0));
                }
                s.snapshot_at(origin)
            };
            let e = evidence(draw(n_stable, &mut rng), draw(n_canary, &mut rng));
            if decide(&e, &p).breach().is_some() {
                breaches += 1;
            }
        }
        assert_eq!(breaches, 0);
    }

    #[test]
    fn hysteresis_waits_for_soft_breaches_only() {
        let breach = |rule| Verdict::Breach {
            breach: Breach {
                rule,
                reason: String::new(),
                threshold: 0.0,
                observed: 0.0,
                p_value: None,
                confidence: 0.99,
            },
            stable: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            canary: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            probes: Vec::new(),
        };
        let healthy = Verdict::Healthy {
            note: None,
            stable: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            canary: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
        };
        let hold = Duration::from_millis(200);
        let at = Duration::from_millis;
        let mut h = Hysteresis::default();
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(0), hold),
            Action::Watch
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(100), hold),
            Action::None
        );
        assert_eq!(h.observe(&healthy, at(150), hold), Action::Cleared);
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(300), hold),
            Action::Watch
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(500), hold),
            Action::CutBack
        );
        assert_eq!(
            h.observe(&breach(Rule::ConsecutiveFailures), at(600), hold),
            Action::CutBack
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(0), Duration::ZERO),
            Action::CutBack
        );
    }
}
