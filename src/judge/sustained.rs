//! Sustained evidence: both arms' counts since the canary began taking traffic, cut into
//! strata of about a second, for the rules that judge a canary on everything it has served
//! rather than on the window alone.
//!
//! Two things follow from the strata. A small difference (a point more errors, a p95 a
//! quarter slower) builds up over minutes until it is significant, where a 30 s window
//! never holds enough requests to show it. And what both arms suffer in the same seconds (a
//! database outage, a burst of load) cancels out: each second compares the canary with
//! stable *in that second* (a Cochran-Mantel-Haenszel weighting), so a shared outage adds
//! nothing to the difference however large it is.
//!
//! Looking again every 100 ms must not multiply false alarms, so the rules read these counts
//! through an always-valid sequential test: a normal mixture likelihood ratio
//! ([`mixture_log_lr`]), whose chance of ever crossing `1 / alpha` under the null is at most
//! `alpha`, however often it is looked at (Ville's inequality).
//!
//! Memory is constant: a few sums and two latency histograms per canary.

use std::time::Instant;

use crate::stats::{ArmStats, WindowSnapshot};
use crate::types::StatusClass;

/// The length of a stratum: the arms are compared second by second.
pub const STRATUM_MS: u64 = 1000;

/// Both arms over the canary's life so far, per second, and their latencies since the
/// canary's weight last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct SustainedCounts {
    /// The time covered, ms.
    pub span_ms: u64,
    /// Requests and failures of each arm, over the seconds in which both arms had requests.
    pub canary_requests: u64,
    pub canary_failures: u64,
    pub stable_requests: u64,
    pub stable_failures: u64,
    /// Sum of the strata's weights `w = nc * ns / (nc + ns)`.
    pub weight: f64,
    /// Sum of `w * (pc - ps)`: the weighted difference of the failure ratios.
    pub weighted_difference: f64,
    /// Sum of `w * ps`: stable's weighted ratio.
    pub weighted_stable: f64,
    /// Sum of `w * p * (1 - p)`, `p` the stratum's pooled ratio: the difference's variance
    /// when both arms fail alike.
    pub weighted_variance: f64,
    /// Sums of `w^2 / nc` and `w^2 * p / nc`: what a margin adds to that variance.
    pub margin_weight: f64,
    pub margin_weight_p: f64,
    /// How long the latency histograms cover, ms (since the weight last changed).
    pub latency_span_ms: u64,
    /// The canary's and stable's latencies over that time (whole slots).
    pub canary_latency: WindowSnapshot,
    pub stable_latency: WindowSnapshot,
}

impl SustainedCounts {
    /// Nothing yet; `window` is only the histograms' nominal length.
    pub fn new(window: std::time::Duration) -> SustainedCounts {
        SustainedCounts {
            span_ms: 0,
            canary_requests: 0,
            canary_failures: 0,
            stable_requests: 0,
            stable_failures: 0,
            weight: 0.0,
            weighted_difference: 0.0,
            weighted_stable: 0.0,
            weighted_variance: 0.0,
            margin_weight: 0.0,
            margin_weight_p: 0.0,
            latency_span_ms: 0,
            canary_latency: WindowSnapshot::empty(window),
            stable_latency: WindowSnapshot::empty(window),
        }
    }

    /// Adds one stratum of `span_ms`: `nc` canary requests of which `kc` failed, `ns` and
    /// `ks` on stable. A stratum in which either arm had no request counts as time only (it
    /// compares nothing).
    pub fn add_stratum(&mut self, span_ms: u64, nc: u64, kc: u64, ns: u64, ks: u64) {
        self.span_ms += span_ms;
        if nc == 0 || ns == 0 {
            return;
        }
        let (kc, ks) = (kc.min(nc), ks.min(ns));
        self.canary_requests += nc;
        self.canary_failures += kc;
        self.stable_requests += ns;
        self.stable_failures += ks;
        let (ncf, nsf) = (nc as f64, ns as f64);
        let w = ncf * nsf / (ncf + nsf);
        let (pc, ps) = (kc as f64 / ncf, ks as f64 / nsf);
        let p = (kc + ks) as f64 / (ncf + nsf);
        self.weight += w;
        self.weighted_difference += w * (pc - ps);
        self.weighted_stable += w * ps;
        self.weighted_variance += w * p * (1.0 - p);
        self.margin_weight += w * w / ncf;
        self.margin_weight_p += w * w * p / ncf;
    }

    /// Stable's failure ratio, weighted as the difference is.
    pub fn stable_ratio(&self) -> f64 {
        if self.weight > 0.0 {
            self.weighted_stable / self.weight
        } else {
            0.0
        }
    }

    /// The weighted difference of the failure ratios (canary minus stable) beyond `margin`,
    /// and its variance were the canary's ratio stable's plus `margin` in every second;
    /// `None` before any stratum compared both arms.
    pub fn excess(&self, margin: f64) -> Option<(f64, f64)> {
        if self.weight <= 0.0 {
            return None;
        }
        let w = self.weight;
        let m = margin.clamp(0.0, 1.0);
        // Var(sum w (pc - ps)) with pc = p + m, ps = p in each stratum.
        let var = self.weighted_variance + m * (1.0 - m) * self.margin_weight
            - 2.0 * m * self.margin_weight_p;
        Some((self.weighted_difference / w - m, var.max(0.0) / (w * w)))
    }
}

/// The log likelihood ratio of a normal mixture test (prior `N(0, tau^2)` on the effect)
/// for an estimate `s` of variance `v`: an always-valid sequential test of "the effect is
/// at most 0" (one-sided: `-inf` unless `s > 0`).
pub fn mixture_log_lr(s: f64, v: f64, tau: f64) -> f64 {
    if s <= 0.0 || v <= 0.0 || !s.is_finite() || !v.is_finite() {
        return f64::NEG_INFINITY;
    }
    let t2 = tau * tau;
    0.5 * (v / (v + t2)).ln() + t2 * s * s / (2.0 * v * (v + t2))
}

/// The always-valid p-value of a mixture log likelihood ratio.
pub fn always_valid_p(log_lr: f64) -> f64 {
    (-log_lr).exp().min(1.0)
}

/// Requests and failures an arm has answered since it was created.
fn requests_and_failures(arm: &ArmStats) -> (u64, u64) {
    let totals = arm.totals();
    let requests = totals.iter().sum();
    let failures = StatusClass::ALL
        .iter()
        .zip(totals)
        .filter(|(class, _)| class.is_failure())
        .map(|(_, n)| n)
        .sum();
    (requests, failures)
}

/// The controller's accumulator for one canary: turns both arms' running totals into
/// strata and their completed slots into latency histograms.
#[derive(Debug, Clone)]
pub struct Sustained {
    /// Which canary (its stats' address: a new canary version has new stats).
    canary: usize,
    /// The canary's weight (units) the latency histograms are for.
    weight: u32,
    stratum_started: Instant,
    latency_started: Instant,
    /// Both arms' totals when the current stratum began: canary (n, k), stable (n, k).
    base: [u64; 4],
    /// The last slot of each arm merged into the histograms.
    canary_slot: Option<u64>,
    stable_slot: Option<u64>,
    counts: SustainedCounts,
}

impl Sustained {
    /// Starts counting at `at`; what the arms answered before is not counted.
    pub fn new(stable: &ArmStats, canary: &ArmStats, weight: u32, at: Instant) -> Sustained {
        let mut s = Sustained {
            canary: canary as *const ArmStats as usize,
            weight,
            stratum_started: at,
            latency_started: at,
            base: [0; 4],
            canary_slot: None,
            stable_slot: None,
            counts: SustainedCounts::new(canary.window()),
        };
        s.rebase(stable, canary);
        s.restart_latency(stable, canary, at);
        s
    }

    /// Whether this accumulator counts for `canary`.
    pub fn is_for(&self, canary: &ArmStats) -> bool {
        self.canary == canary as *const ArmStats as usize
    }

    fn rebase(&mut self, stable: &ArmStats, canary: &ArmStats) {
        let (nc, kc) = requests_and_failures(canary);
        let (ns, ks) = requests_and_failures(stable);
        self.base = [nc, kc, ns, ks];
    }

    fn restart_latency(&mut self, stable: &ArmStats, canary: &ArmStats, at: Instant) {
        self.latency_started = at;
        self.canary_slot = Some(canary.slot_at(at));
        self.stable_slot = Some(stable.slot_at(at));
        self.counts.canary_latency = WindowSnapshot::empty(canary.window());
        self.counts.stable_latency = WindowSnapshot::empty(stable.window());
        self.counts.latency_span_ms = 0;
    }

    /// Brings the counts up to `at`: closes the stratum once a second has passed (a late
    /// call closes one wider stratum), and restarts the latency histograms when the
    /// canary's weight changed (latency depends on load).
    pub fn observe(
        &mut self,
        stable: &ArmStats,
        canary: &ArmStats,
        weight: u32,
        at: Instant,
    ) -> &SustainedCounts {
        if weight != self.weight {
            self.weight = weight;
            self.restart_latency(stable, canary, at);
        } else {
            let c = &mut self.counts;
            self.canary_slot = canary.merge_completed(self.canary_slot, at, &mut c.canary_latency);
            self.stable_slot = stable.merge_completed(self.stable_slot, at, &mut c.stable_latency);
            c.latency_span_ms = at
                .saturating_duration_since(self.latency_started)
                .as_millis() as u64;
        }
        let elapsed = at
            .saturating_duration_since(self.stratum_started)
            .as_millis() as u64;
        if elapsed >= STRATUM_MS {
            let (nc, kc) = requests_and_failures(canary);
            let (ns, ks) = requests_and_failures(stable);
            let [bnc, bkc, bns, bks] = self.base;
            // Totals only grow; if they did not, these are other stats: count afresh.
            if nc >= bnc && kc >= bkc && ns >= bns && ks >= bks {
                self.counts
                    .add_stratum(elapsed, nc - bnc, kc - bkc, ns - bns, ks - bks);
            }
            self.base = [nc, kc, ns, ks];
            self.stratum_started = at;
        }
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_shared_outage_adds_no_difference() {
        let mut c = SustainedCounts::new(Duration::from_secs(30));
        for _ in 0..100 {
            // Both arms fail alike in each second, 0 or 10 % as usual ...
            c.add_stratum(1000, 10, 0, 100, 0);
            c.add_stratum(1000, 10, 1, 100, 10);
            // ... and 30 % in the same seconds of an outage.
            c.add_stratum(1000, 10, 3, 100, 30);
        }
        let (d, v) = c.excess(0.0).unwrap();
        assert!(d.abs() < 1e-12, "{d}");
        assert!(v > 0.0);
        assert!(
            mixture_log_lr(d, v, 0.01) == f64::NEG_INFINITY || mixture_log_lr(d, v, 0.01) < 0.0
        );
    }

    #[test]
    fn seconds_without_both_arms_count_time_only() {
        let mut c = SustainedCounts::new(Duration::from_secs(30));
        c.add_stratum(1000, 0, 0, 100, 3);
        c.add_stratum(1000, 5, 5, 0, 0);
        assert_eq!(c.span_ms, 2000);
        assert_eq!((c.canary_requests, c.stable_requests), (0, 0));
        assert!(c.excess(0.0).is_none());
    }

    #[test]
    fn a_margin_widens_the_variance_and_lowers_the_excess() {
        let mut c = SustainedCounts::new(Duration::from_secs(30));
        for _ in 0..600 {
            c.add_stratum(1000, 10, 0, 100, 1);
        }
        let (d0, v0) = c.excess(0.0).unwrap();
        let (d1, v1) = c.excess(0.01).unwrap();
        assert!((d0 - d1 - 0.01).abs() < 1e-12);
        assert!(v1 > v0);
    }

    #[test]
    fn the_mixture_asks_more_than_a_single_look_would() {
        // z = 3.1 is p = 0.001 for one look; repeated looks need more.
        let v: f64 = 1e-6;
        assert!(mixture_log_lr(3.1 * v.sqrt(), v, 0.01) < 1000f64.ln());
        assert!(mixture_log_lr(5.0 * v.sqrt(), v, 0.01) > 1000f64.ln());
        assert_eq!(mixture_log_lr(-1.0, v, 0.01), f64::NEG_INFINITY);
        assert!((always_valid_p(1000f64.ln()) - 0.001).abs() < 1e-9);
        assert_eq!(always_valid_p(-3.0), 1.0);
    }

    #[test]
    fn the_accumulator_closes_strata_and_restarts_latency_on_a_new_weight() {
        let origin = Instant::now();
        let window = Duration::from_secs(30);
        let stable = ArmStats::with_origin(window, origin);
        let canary = ArmStats::with_origin(window, origin);
        let mut s = Sustained::new(&stable, &canary, 500, origin);
        assert!(s.is_for(&canary) && !s.is_for(&stable));
        let ms = Duration::from_millis(20);
        for t in 0..10u64 {
            let at = origin + Duration::from_millis(t * 1000 + 500);
            stable.maintain_at(at);
            canary.maintain_at(at);
            for _ in 0..10 {
                stable.record_at(at, StatusClass::Success, ms);
            }
            stable.record_at(at, StatusClass::ServerError, ms);
            canary.record_at(at, StatusClass::Success, ms);
            canary.record_at(at, StatusClass::NoResponse, ms);
            s.observe(&stable, &canary, 500, at + Duration::from_millis(500));
        }
        let c = s.observe(&stable, &canary, 500, origin + Duration::from_secs(11));
        assert_eq!((c.canary_requests, c.canary_failures), (20, 10));
        assert_eq!((c.stable_requests, c.stable_failures), (110, 10));
        assert!(c.canary_latency.requests() >= 18, "{:?}", c.canary_latency);
        let c = s.observe(&stable, &canary, 1000, origin + Duration::from_secs(12));
        assert_eq!(c.canary_latency.requests(), 0);
        assert_eq!(c.canary_requests, 20);
    }
}
