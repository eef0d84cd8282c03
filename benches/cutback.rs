//! Cut-back benchmark (a scenario, not a timed test):
//!
//! 1. Real gate, real upstreams, 1,000 req/s from sticky clients, canary at 10 %. The
//!    canary starts answering 500 to everything; measured: time from its first failing
//!    answer to the table swap and to the last request it receives, and how many requests
//!    clients saw fail, with and without the shield. Several trials each.
//! 2. False rollbacks: many simulated healthy canaries whose error rate and latency match
//!    stable's (with noise), each judged every 100 ms over a sliding window for a simulated
//!    run, through the same `decide` and `Hysteresis` the controller uses.
//!
//! Run: `cargo bench --bench cutback` (TRIALS=5 CANARIES=2000 MINUTES=2 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::demo::{DemoUpstream, Load, LoadConfig};
use sluice::judge::{decide, Action, Evidence, Hysteresis, Policy};
use sluice::stats::ArmStats;
use sluice::types::StatusClass;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Trial {
    detect: Duration,
    last_hit: Duration,
    client_errors: u64,
}

fn trial(shield: bool) -> Option<Trial> {
    let stable = DemoUpstream::spawn("stable").ok()?;
    let canary = DemoUpstream::spawn("canary").ok()?;
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\nshield = {shield}\n",
            stable.addr, canary.addr
        ),
        "bench",
    )
    .ok()?;
    let gate = sluice::gate::start(config).ok()?;
    let mut events = gate.bus.subscribe();
    let load = Load::start(LoadConfig {
        clients: 200,
        ..LoadConfig::new(gate.proxy_addr, 1000)
    })
    .ok()?;
    std::thread::sleep(Duration::from_millis(1500));
    canary.set_error_rate(1.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut swapped_at = None;
    while Instant::now() < deadline && swapped_at.is_none() {
        while let Ok(e) = events.try_recv() {
            if e.kind == sluice::events::EventKind::RolledBack {
                swapped_at = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let first = canary.first_failure_at()?;
    let last = canary.last_hit_at()?;
    let swapped = swapped_at?;
    drop(gate);
    Some(Trial {
        // The poll loop above adds up to 1 ms.
        detect: swapped.saturating_duration_since(first),
        last_hit: last.saturating_duration_since(first),
        client_errors: report.client_errors(),
    })
}

fn live(trials: u64) {
    for shield in [true, false] {
        let mut done = Vec::new();
        for _ in 0..trials {
            match trial(shield) {
                Some(t) => done.push(t),
                None => println!("  trial failed to cut back"),
            }
        }
        if done.is_empty() {
            continue;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean = |f: &dyn Fn(&Trial) -> f64| done.iter().map(f).sum::<f64>() / done.len() as f64;
        let max = |f: &dyn Fn(&Trial) -> f64| done.iter().map(f).fold(0.0, f64::max);
        println!(
            "shield {:<3}  trials {}  first failure -> table swap: mean {:.1} ms, max {:.1} ms;  -> last canary request: mean {:.1} ms, max {:.1} ms;  client-visible errors: mean {:.1}, max {:.0}",
            if shield { "on" } else { "off" },
            done.len(),
            mean(&|t| ms(t.detect)),
            max(&|t| ms(t.detect)),
            mean(&|t| ms(t.last_hit)),
            max(&|t| ms(t.last_hit)),
            mean(&|t| t.client_errors as f64),
            max(&|t| t.client_errors as f64),
        );
    }
}

/// One healthy canary over a simulated run: returns whether it was ever cut back.
fn simulate(rng: &mut fastrand::Rng, policy: &Policy, seconds: u64) -> bool {
    let origin = Instant::now();
    let stable = ArmStats::with_origin(policy.window, origin);
    let canary = ArmStats::with_origin(policy.window, origin);
    let error_rate = 0.001 + rng.f64() * 0.03; // the same background for both arms
    let stable_rps = 50 + rng.u64(0..900);
    let canary_rps = 1 + rng.u64(0..(stable_rps / 4).max(2));
    let mut hysteresis = Hysteresis::default();
    let tick = Duration::from_millis(100);
    let draw = |rng: &mut fastrand::Rng| {
        let class = if rng.f64() < error_rate {
            StatusClass::ServerError
        } else {
            StatusClass::Success
        };
        // Log-normal-ish latency around 5 ms with a long tail.
        let ms = 5.0 * (rng.f64() * 1.2 - 0.6).exp() * if rng.f64() < 0.02 { 8.0 } else { 1.0 };
        (class, Duration::from_secs_f64(ms / 1e3))
    };
    for step in 0..seconds * 10 {
        let at = origin + tick * step as u32;
        stable.maintain_at(at);
        canary.maintain_at(at);
        for _ in 0..stable_rps / 10 {
            let (c, l) = draw(rng);
            stable.record_at(at, c, l);
        }
        // Poisson-ish canary arrivals at low rates.
        let n = canary_rps / 10 + u64::from(rng.u64(0..10) < canary_rps % 10);
        for _ in 0..n {
            let (c, l) = draw(rng);
            canary.record_at(at, c, l);
        }
        let e = Evidence {
            stable: stable.snapshot_at(at),
            canary: canary.snapshot_at(at),
            canary_consecutive_failures: canary.consecutive_failures(),
            stable_consecutive_failures: stable.consecutive_failures(),
            routes: Vec::new(),
            stable_recent: canary
                .run_started()
                .map(|since| stable.recent(at, since, sluice::judge::RECENT_STABLE_REQUESTS)),
            probe_failures: Vec::new(),
            stable_probes_failing: Vec::new(),
            sustained: None,
            canary_usage: Vec::new(),
            analysis_failures: Vec::new(),
        };
        let verdict = decide(&e, policy);
        if hysteresis.observe(&verdict, tick * step as u32, policy.breach_for) == Action::CutBack {
            return true;
        }
    }
    false
}

fn false_rollbacks(canaries: u64, minutes: u64) {
    let policy = Policy::default();
    let mut rng = fastrand::Rng::with_seed(42);
    let started = Instant::now();
    let mut cut = 0;
    for _ in 0..canaries {
        if simulate(&mut rng, &policy, minutes * 60) {
            cut += 1;
        }
    }
    println!(
        "false rollbacks: {cut} of {canaries} healthy canaries, each judged every 100 ms for {minutes} simulated minute(s) (error rate 0.1..3.1 % on both arms, canary 1..25 % of traffic; {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        false_rollbacks(20, 1);
        return;
    }
    let trials = env("TRIALS", 5);
    println!("cut-back at 1,000 req/s, canary at 10 %, canary failing every request:");
    live(trials);
    false_rollbacks(env("CANARIES", 2000), env("MINUTES", 2));
}
