//! The judge: `decide(&Evidence, &Policy) -> Verdict`, a pure function.
//!
//! Evidence is the two arms' windows over the same time span plus the canary's run of
//! failures. Rules, in order (the first that holds is the verdict):
//!
//! 0. **Probes.** A canary upstream whose active probes fail by their policy breaches at
//!    once, traffic or not (a canary at 1 % at night gets almost none). Not when the same
//!    probe fails on every stable upstream too (shared cause).
//!    **External analysis** (`[[services.analysis]]`, Prometheus) with more failed
//!    measurements than its `failure_limit` breaches at once too: its condition has judged.
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
//! 7. **Sustained errors.** Over the canary's whole life, second by second against stable
//!    in the same seconds, its failure ratio is above stable's by more than the larger of
//!    `(sustained_error_ratio - 1)` × stable's ratio and `sustained_error_slack`, by an
//!    always-valid sequential test (looking every 100 ms costs no extra false alarms). What
//!    both arms suffer in the same seconds cancels out, so a shared outage never counts;
//!    a point of errors more, invisible in one window, is caught within minutes.
//! 8. **Sustained latency.** Since the canary's weight last changed, more than 5 % of its
//!    requests are slower than `sustained_p95_ratio` × stable's p95 over the same time
//!    (and `sustained_latency_slack` above it), by the same sequential test.
//!
//! Rules 3–6 (and 4b, per route) judge the window and are fast on large faults; rules 7–8
//! are slower and see small ones.
//!
//! Every verdict carries the numbers it was decided on. Time enters only through the
//! [`Hysteresis`] that the controller keeps per service: a rate or latency breach must hold
//! for `breach_for` before it acts; a run of failures acts at once.

mod evidence;
mod hysteresis;
mod policy;
mod rules;
pub mod significance;
pub mod sustained;
mod verdict;

pub use evidence::{
    AnalysisFailure, ContainerUsage, Evidence, ProbeFailure, RouteComparison, UsageSample,
    USAGE_SAMPLE_SLACK,
};
pub use hysteresis::{Action, Hysteresis};
pub use policy::*;
pub use rules::decide;
pub use sustained::{Sustained, SustainedCounts};

/// The stable requests the consecutive-failure rule wants for its view of stable's recent
/// failure ratio: the span of the canary's run, widened a slot at a time until it holds
/// this many (or the window ends).
pub const RECENT_STABLE_REQUESTS: u64 = 50;
pub use significance::{
    binomial_upper_tail, difference_p_value, newcombe_lower, wilson, wilson_upper,
};
pub use verdict::{ArmFigures, Breach, Rule, Verdict};
