//! The judge against its anchors, on a simulated corpus (a benchmark, not a timed test).
//!
//! Thousands of canaries, healthy and bad, each simulated for `MINUTES` of virtual time with
//! requests drawn second by second on both arms (error rates, latencies, routes), and each
//! judged four ways:
//! - **Sluice**: the real `decide` and `Hysteresis` over the real `ArmStats` windows and
//!   the real `Sustained` counts (rules 7 and 8), every second (the gate judges every 100 ms and on every canary failure: this is slower than
//!   the gate, never faster);
//! - **Flagger** (its documented defaults): every 1 min, the canary's error rate over the
//!   last minute above 1 % or its p99 above 500 ms is a failed check; 5 failed checks in a
//!   row roll back;
//! - **Argo Rollouts** (its example analysis): every 5 min, a success rate below 95 % is a
//!   failed measurement; more than `failureLimit` 3 roll back;
//! - **Kayenta-style**: every 5 min, the canary's per-minute error rates and p95s over the
//!   last 5 minutes against stable's by a one-sided Mann-Whitney U test at 5 %.
//!
//! Printed: one table with the detection rate, the false rollback rate, the median and p95
//! time to detect (from the fault's start), and the rollbacks decided on fewer than
//! `min_requests` canary requests in the window.
//!
//! Run: `cargo bench --bench judge_corpus` (HEALTHY=2000 BAD=2000 MINUTES=30 SEED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

use std::time::{Duration, Instant};

use sluice::judge::{
    decide, Action, Evidence, Hysteresis, Policy, RouteComparison, Sustained, Verdict,
};
use sluice::routes::Route;
use sluice::stats::ArmStats;
use sluice::types::StatusClass;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What happens to a canary.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    // Healthy ones.
    Noise,
    LowTraffic,
    LongTail,
    SharedOutage,
    Diurnal,
    // Bad ones, from `fault_at`.
    PlusOnePoint,
    PlusTwoPoints,
    OneEndpoint,
    SlowerP95x15,
    SlowerP95x3,
    SlowLeak,
    ProbeFailing,
}

const HEALTHY: [Kind; 5] = [
    Kind::Noise,
    Kind::LowTraffic,
    Kind::LongTail,
    Kind::SharedOutage,
    Kind::Diurnal,
];
const BAD: [Kind; 7] = [
    Kind::PlusOnePoint,
    Kind::PlusTwoPoints,
    Kind::OneEndpoint,
    Kind::SlowerP95x15,
    Kind::SlowerP95x3,
    Kind::SlowLeak,
    Kind::ProbeFailing,
];

struct Case {
    kind: Kind,
    stable_rps: u64,
    canary_rps: u64,
    base_error: f64,
    /// Seconds from the start when the fault (or the shared outage) begins.
    fault_at: u64,
}

/// One second of one arm's requests: (failed, latency ms, is the checkout route).
fn draw_second(
    rng: &mut fastrand::Rng,
    c: &Case,
    canary: bool,
    t: u64,
    rps: u64,
) -> Vec<(bool, f64, bool)> {
    let after = t >= c.fault_at;
    let minutes = t as f64 / 60.0;
    // Diurnal: traffic and noise swing together on both arms.
    let swing = if c.kind == Kind::Diurnal {
        1.0 + 0.8 * (minutes * std::f64::consts::TAU / 20.0).sin()
    } else {
        1.0
    };
    let n = ((rps as f64 * swing).round() as u64).max(u64::from(rps > 0));
    let mut err = c.base_error * swing;
    if c.kind == Kind::SharedOutage && after && t < c.fault_at + 120 {
        err = 0.3;
    }
    if canary && after {
        match c.kind {
            Kind::PlusOnePoint => err += 0.01,
            Kind::PlusTwoPoints => err += 0.02,
            Kind::SlowLeak => err += 0.05 * ((t - c.fault_at) as f64 / 600.0).min(1.0),
            _ => {}
        }
    }
    let slow = match (canary && after, c.kind) {
        (true, Kind::SlowerP95x15) => 1.5,
        (true, Kind::SlowerP95x3) => 3.0,
        _ => 1.0,
    };
    let tail = if c.kind == Kind::LongTail { 0.05 } else { 0.02 };
    (0..n)
        .map(|_| {
            let checkout = rng.f64() < 0.015;
            let failed = if canary && after && checkout && c.kind == Kind::OneEndpoint {
                true
            } else {
                rng.f64() < err
            };
            let ms = 20.0
                * (rng.f64() * 1.2 - 0.6).exp()
                * if rng.f64() < tail { 6.0 } else { 1.0 }
                * slow;
            (failed, ms, checkout)
        })
        .collect()
}

/// A minute of one arm, for the anchors.
#[derive(Default, Clone)]
struct Minute {
    requests: u64,
    failures: u64,
    latencies: Vec<f64>,
}

impl Minute {
    fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
    fn quantile(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.sort_by(f64::total_cmp);
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
}

/// One-sided Mann-Whitney U: p-value that `a` tends to be larger than `b` (normal
/// approximation with ties averaged; exact enough for 5 against 5 at 5 %).
fn mann_whitney_greater(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut u = 0.0;
    for x in a {
        for y in b {
            u += if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            };
        }
    }
    let mean = n1 * n2 / 2.0;
    let sd = (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    let z = (u - mean - 0.5) / sd;
    sluice::judge::significance::normal_sf(z)
}

/// When each judge rolled the canary back (seconds from the start), and whether Sluice's
/// decision stood on fewer than `min_requests` canary requests.
#[derive(Default)]
struct Outcome {
    sluice: Option<u64>,
    sluice_thin: bool,
    /// The rule Sluice cut back by.
    sluice_rule: Option<sluice::judge::Rule>,
    flagger: Option<u64>,
    flagger_thin: bool,
    argo: Option<u64>,
    argo_thin: bool,
    kayenta: Option<u64>,
    kayenta_thin: bool,
}

fn run(rng: &mut fastrand::Rng, c: &Case, policy: &Policy, seconds: u64) -> Outcome {
    let origin = Instant::now();
    let stable = ArmStats::with_origin(policy.window, origin);
    let canary = ArmStats::with_origin(policy.window, origin);
    let mut hysteresis = Hysteresis::default();
    let mut sustained = Sustained::new(&stable, &canary, 0, origin);
    let mut out = Outcome::default();
    let (mut s_min, mut c_min) = (Minute::default(), Minute::default());
    let (mut s_hist, mut c_hist): (Vec<Minute>, Vec<Minute>) = (Vec::new(), Vec::new());
    let (mut flagger_failed, mut argo_failed) = (0u32, 0u32);
    let checkout = Route::of("POST", "/checkout", &[]);
    let browse = Route::of("GET", "/items/1", &[]);
    for t in 0..seconds {
        let at = origin + Duration::from_secs(t);
        stable.maintain_at(at);
        canary.maintain_at(at);
        for (arm, minute, rps, is_canary) in [
            (&stable, &mut s_min, c.stable_rps, false),
            (&canary, &mut c_min, c.canary_rps, true),
        ] {
            for (failed, ms, is_checkout) in draw_second(rng, c, is_canary, t, rps) {
                let class = if failed {
                    StatusClass::ServerError
                } else {
                    StatusClass::Success
                };
                let route = if is_checkout { &checkout } else { &browse };
                arm.record_route_at(at, class, Duration::from_secs_f64(ms / 1e3), route);
                minute.requests += 1;
                minute.failures += u64::from(failed);
                minute.latencies.push(ms);
            }
        }
        // Sluice, every second.
        if out.sluice.is_none() {
            let probe_failures = if c.kind == Kind::ProbeFailing && t >= c.fault_at + 10 {
                // A probe every 5 s, failing 3 times in a row by policy from 10 s on.
                vec![sluice::judge::ProbeFailure {
                    probe: "health".into(),
                    upstream: "canary".into(),
                    failures: 3,
                    since_ms: (t - c.fault_at) * 1000,
                    results: Vec::new(),
                }]
            } else {
                Vec::new()
            };
            let e = Evidence {
                stable: stable.snapshot_at(at),
                canary: canary.snapshot_at(at),
                canary_consecutive_failures: canary.consecutive_failures(),
                stable_consecutive_failures: stable.consecutive_failures(),
                stable_recent: canary
                    .run_started()
                    .map(|since| stable.recent(at, since, sluice::judge::RECENT_STABLE_REQUESTS)),
                routes: RouteComparison::merge(canary.routes_at(at), stable.routes_at(at)),
                probe_failures,
                stable_probes_failing: Vec::new(),
                sustained: Some(sustained.observe(&stable, &canary, 0, at).clone()),
                canary_usage: Vec::new(),
                analysis_failures: Vec::new(),
            };
            let verdict = decide(&e, policy);
            if hysteresis.observe(&verdict, Duration::from_secs(t), policy.breach_for)
                == Action::CutBack
            {
                out.sluice = Some(t);
                out.sluice_rule = verdict.breach().map(|b| b.rule);
                let probe = matches!(&verdict, Verdict::Breach { breach, .. } if breach.rule == sluice::judge::Rule::ProbeFailed);
                out.sluice_thin = !probe && e.canary.requests() < policy.min_requests;
            }
        }
        // The anchors, at their minute marks.
        if (t + 1) % 60 == 0 {
            let minute = (t + 1) / 60;
            // Flagger: every minute, error rate > 1 % or p99 > 500 ms fails a check.
            let thin = c_min.requests < policy.min_requests;
            if out.flagger.is_none() {
                let failed = c_min.rate() > 0.01 || c_min.quantile(0.99) > 500.0;
                flagger_failed = if failed { flagger_failed + 1 } else { 0 };
                if flagger_failed >= 5 {
                    out.flagger = Some(t);
                    out.flagger_thin = thin;
                }
            }
            s_hist.push(std::mem::take(&mut s_min));
            c_hist.push(std::mem::take(&mut c_min));
            if minute % 5 == 0 {
                let last = |h: &[Minute]| h[h.len() - 5..].to_vec();
                let (mut s5, mut c5) = (last(&s_hist), last(&c_hist));
                let requests: u64 = c5.iter().map(|m| m.requests).sum();
                let failures: u64 = c5.iter().map(|m| m.failures).sum();
                let thin = requests < policy.min_requests;
                // Argo: success rate over the interval below 95 % fails a measurement.
                if out.argo.is_none()
                    && requests > 0
                    && 1.0 - failures as f64 / (requests as f64) < 0.95
                {
                    argo_failed += 1;
                    if argo_failed > 3 {
                        out.argo = Some(t);
                        out.argo_thin = thin;
                    }
                }
                // Kayenta-style: per-minute error rate or p95 higher on the canary.
                if out.kayenta.is_none() {
                    let rates = |h: &[Minute]| h.iter().map(Minute::rate).collect::<Vec<_>>();
                    let p95 = |h: &mut [Minute]| {
                        h.iter_mut().map(|m| m.quantile(0.95)).collect::<Vec<_>>()
                    };
                    let errors = mann_whitney_greater(&rates(&c5), &rates(&s5));
                    let slow = mann_whitney_greater(&p95(&mut c5), &p95(&mut s5));
                    if errors < 0.05 || slow < 0.05 {
                        out.kayenta = Some(t);
                        out.kayenta_thin = thin;
                    }
                }
            }
        }
        if out.sluice.is_some()
            && out.flagger.is_some()
            && out.argo.is_some()
            && out.kayenta.is_some()
        {
            break;
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    caught: u64,
    bad: u64,
    false_rollbacks: u64,
    healthy: u64,
    detect: Vec<u64>,
    thin: u64,
}

impl Tally {
    fn add(&mut self, bad: bool, fault_at: u64, at: Option<u64>, thin: bool) {
        if bad {
            self.bad += 1;
            if let Some(t) = at.filter(|t| *t >= fault_at) {
                self.caught += 1;
                self.detect.push(t - fault_at);
            }
        } else {
            self.healthy += 1;
            self.false_rollbacks += u64::from(at.is_some());
        }
        if at.is_some() && thin {
            self.thin += 1;
        }
    }

    fn row(&mut self, name: &str) {
        self.detect.sort_unstable();
        let q = |q: f64| {
            if self.detect.is_empty() {
                "-".to_string()
            } else {
                let i = ((self.detect.len() as f64 - 1.0) * q).round() as usize;
                format!("{} s", self.detect[i])
            }
        };
        println!(
            "| {name} | {:.1} % | {:.2} % | {} | {} | {} |",
            100.0 * self.caught as f64 / self.bad.max(1) as f64,
            100.0 * self.false_rollbacks as f64 / self.healthy.max(1) as f64,
            q(0.5),
            q(0.95),
            self.thin
        );
    }
}

fn main() {
    let healthy = env("HEALTHY", 2000);
    let bad = env("BAD", 2000);
    let seconds = env("MINUTES", 30) * 60;
    let mut rng = fastrand::Rng::with_seed(env("SEED", 1));
    let policy = Policy {
        window: Duration::from_secs(30),
        ..Policy::default()
    };
    let mut tallies: [Tally; 4] = Default::default();
    // Sluice per kind, and the rules it cut back by (healthy and bad apart).
    let mut kinds: Vec<(Kind, Tally)> = HEALTHY
        .iter()
        .chain(BAD.iter())
        .map(|k| (*k, Tally::default()))
        .collect();
    let mut rules: std::collections::BTreeMap<(bool, &'static str), u64> = Default::default();
    let started = Instant::now();
    for i in 0..healthy + bad {
        let is_bad = i >= healthy;
        let kind = if is_bad {
            BAD[(i - healthy) as usize % BAD.len()]
        } else {
            HEALTHY[i as usize % HEALTHY.len()]
        };
        let stable_rps = 20 + rng.u64(0..300);
        let canary_rps = match kind {
            Kind::LowTraffic => 1,
            _ => (stable_rps * (5 + rng.u64(0..45)) / 100).max(1),
        };
        let case = Case {
            kind,
            stable_rps,
            canary_rps,
            base_error: 0.001 + rng.f64() * 0.02,
            fault_at: 60 + rng.u64(0..300),
        };
        let o = run(&mut rng, &case, &policy, seconds);
        let fault_at = if is_bad { case.fault_at } else { 0 };
        tallies[0].add(is_bad, fault_at, o.sluice, o.sluice_thin);
        if let Some((_, t)) = kinds.iter_mut().find(|(k, _)| *k == kind) {
            t.add(is_bad, fault_at, o.sluice, o.sluice_thin);
        }
        if let Some(rule) = o.sluice_rule {
            *rules.entry((is_bad, rule.as_str())).or_default() += 1;
        }
        tallies[1].add(is_bad, fault_at, o.flagger, o.flagger_thin);
        tallies[2].add(is_bad, fault_at, o.argo, o.argo_thin);
        tallies[3].add(is_bad, fault_at, o.kayenta, o.kayenta_thin);
    }
    println!(
        "{healthy} healthy and {bad} bad canaries, {} min each, in {:.0} s\n",
        seconds / 60,
        started.elapsed().as_secs_f64()
    );
    println!("| judge | bad caught | false rollbacks | median time to detect | p95 time to detect | rollbacks on < min_requests |");
    println!("|---|---|---|---|---|---|");
    for (t, name) in tallies.iter_mut().zip([
        "Sluice",
        "Flagger (1m, 1 %, 5 checks)",
        "Argo Rollouts (5m, failureLimit 3)",
        "Kayenta-style (Mann-Whitney, 1m buckets)",
    ]) {
        t.row(name);
    }
    println!("\nSluice by kind of canary:\n");
    println!("| kind | bad caught | false rollbacks | median time to detect | p95 time to detect | rollbacks on < min_requests |");
    println!("|---|---|---|---|---|---|");
    for (kind, t) in &mut kinds {
        t.row(&format!("{kind:?}"));
    }
    println!("\nSluice's cut-backs by rule:\n");
    for ((bad, rule), n) in rules {
        println!(
            "- {} canaries, {rule}: {n}",
            if bad { "bad" } else { "healthy" }
        );
    }
}
