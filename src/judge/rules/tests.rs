use super::*;
use crate::judge::{ContainerUsage, Policy, SustainedCounts, UsageSample};
use crate::stats::ArmStats;
use crate::stats::WindowSnapshot;
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
        stable_recent: None,
        routes: Vec::new(),
        probe_failures: Vec::new(),
        stable_probes_failing: Vec::new(),
        sustained: None,
        canary_usage: Vec::new(),
        analysis_failures: Vec::new(),
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

fn recent(requests: u64, failures: u64) -> Option<crate::stats::RecentCounts> {
    Some(crate::stats::RecentCounts {
        requests,
        failures,
        span_ms: 1000,
    })
}

#[test]
fn a_run_of_failures_during_a_shared_outage_is_not_a_dead_canary() {
    // Both arms fail 30 % of their requests since the database went away; the canary's
    // latest five failed in a row, as happens often at 30 %.
    let p = Policy::default();
    let mut e = evidence(window(7_000, 3_000, MS), window(700, 300, MS));
    e.canary_consecutive_failures = 5;
    e.stable_consecutive_failures = 1;
    e.stable_recent = recent(1_000, 300);
    let v = decide(&e, &p);
    assert_eq!(v.name(), "healthy", "{v:?}");
    assert!(
        v.summary().contains("likely while stable fails 30.0 %"),
        "{v:?}"
    );
    // A run as long as 30 % makes unlikely among 1,000 requests is one.
    e.canary_consecutive_failures = 14;
    let v = decide(&e, &p);
    let b = v.breach().expect("a breach");
    assert_eq!(b.rule, Rule::ConsecutiveFailures);
    assert!(b.p_value.is_some_and(|p| p < 0.01), "{b:?}");
    assert!(b.reason.contains("stable failed 300 of 1000"), "{b:?}");
}

#[test]
fn a_dead_canary_beside_a_healthy_stable_is_cut_at_once() {
    let p = Policy::default();
    let mut e = evidence(window(9_900, 100, MS), window(0, 5, MS));
    e.canary_consecutive_failures = 5;
    e.stable_recent = recent(1_000, 10);
    let b = decide(&e, &p).breach().cloned().expect("a breach");
    assert_eq!(b.rule, Rule::ConsecutiveFailures);
    // Little stable traffic to compare with: its bound is wide, the run must be longer.
    e.stable_recent = recent(3, 0);
    assert_eq!(decide(&e, &p).breach(), None);
    e.canary_consecutive_failures = 60;
    assert_eq!(
        decide(&e, &p).breach().map(|b| b.rule),
        Some(Rule::ConsecutiveFailures)
    );
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
    // Canary 2 % vs stable 1 %, 40,000 requests each, margin 0.5 points: breach (at the
    // window's share of 1 - confidence, 1/120 of it: the window is looked at all the time).
    let p = Policy {
        max_error_rate_increase: 0.005,
        ..Policy::default()
    };
    let v = decide(
        &evidence(window(39_600, 400, MS), window(39_200, 800, MS)),
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

fn route(name: &str, canary: (u64, u64), stable: (u64, u64)) -> crate::judge::RouteComparison {
    crate::judge::RouteComparison {
        route: name.into(),
        canary_requests: canary.0,
        canary_failures: canary.1,
        stable_requests: stable.0,
        stable_failures: stable.1,
    }
}

#[test]
fn one_broken_route_is_not_averaged_away() {
    // POST /checkout fails every time on the canary: 1.5 % of its traffic, under both
    // overall ceilings.
    let mut e = evidence(window(990, 10, MS), window(985, 15, MS));
    e.routes = vec![
        route("GET /items", (985, 0), (975, 10)),
        route("POST /checkout", (15, 15), (15, 0)),
    ];
    let v = decide(&e, &Policy::default());
    let b = v.breach().expect("a breach");
    assert_eq!(b.rule, Rule::RouteErrorRate, "{v:?}");
    assert!(
        b.reason
            .contains("route POST /checkout: canary failed 15 of 15"),
        "{b:?}"
    );
    assert!(b.reason.contains("2 routes compared"), "{b:?}");
    // A new route stable never saw is held to the ceiling instead.
    e.routes[1] = route("POST /checkout", (15, 15), (0, 0));
    let b = decide(&e, &Policy::default())
        .breach()
        .cloned()
        .expect("a breach");
    assert!(b.reason.contains("ceiling"), "{b:?}");
    // Too few requests on the route to say anything alone.
    e.routes[1] = route("POST /checkout", (4, 4), (4, 0));
    assert_eq!(decide(&e, &Policy::default()).breach(), None);
}

#[test]
fn many_routes_with_the_same_noise_do_not_alarm() {
    let mut e = evidence(window(9_900, 100, MS), window(9_900, 100, MS));
    e.routes = (0..30)
        .map(|i| {
            // Some routes noisier than others by chance, on either arm.
            let kc = [0, 1, 2, 6][i % 4];
            let ks = [3, 0, 4, 1][i % 4];
            route(&format!("GET /r{i}"), (330, kc), (330, ks))
        })
        .collect();
    let v = decide(&e, &Policy::default());
    assert_eq!(v.breach(), None, "{v:?}");
}

/// Both arms second by second: each second `nc` canary requests (one of them failing every
/// `canary_every` seconds; 0: never) and `ns` stable ones (one failing every `stable_every`).
fn sustained(
    seconds: u64,
    nc: u64,
    canary_every: u64,
    ns: u64,
    stable_every: u64,
) -> SustainedCounts {
    let mut s = SustainedCounts::new(Duration::from_secs(30));
    let fails = |every: u64, t: u64| u64::from(every > 0 && t.is_multiple_of(every));
    for t in 0..seconds {
        s.add_stratum(1000, nc, fails(canary_every, t), ns, fails(stable_every, t));
    }
    s
}

/// Windows in which nothing is wrong, for the sustained rules to speak alone.
fn quiet() -> Evidence {
    evidence(window(990, 10, MS), window(99, 1, MS))
}

#[test]
fn a_point_of_errors_more_is_caught_once_enough_seconds_show_it() {
    // The canary fails 2 % (1 of its 5 requests every 10 s), stable 1 %.
    let mut e = quiet();
    e.sustained = Some(sustained(600, 5, 10, 50, 2));
    assert_eq!(decide(&e, &Policy::default()).name(), "healthy");
    e.sustained = Some(sustained(1200, 5, 10, 50, 2));
    let v = decide(&e, &Policy::default());
    let b = v.breach().expect("sustained breach");
    assert_eq!(b.rule, Rule::SustainedErrorRate);
    assert!(b.reason.contains("120/6000"), "{}", b.reason);
    assert!(b.p_value.is_some_and(|p| p < 0.001), "{b:?}");
    assert!(!b.rule.is_soft() && !b.rule.is_immediate());
    // Off: silent.
    let off = Policy {
        sustained_error_ratio: None,
        ..Policy::default()
    };
    assert_eq!(decide(&e, &off).name(), "healthy");
}

#[test]
fn equal_failure_ratios_stay_healthy_however_long() {
    let mut e = quiet();
    // 2 % on both arms for two hours.
    e.sustained = Some(sustained(7200, 5, 10, 50, 1));
    assert_eq!(decide(&e, &Policy::default()).name(), "healthy");
}

#[test]
fn a_shared_outage_over_the_canary_life_is_no_breach() {
    // An hour of both arms failing alike: 1 % then 30 % in the same seconds.
    let mut s = SustainedCounts::new(Duration::from_secs(30));
    for t in 0..3600u64 {
        let (kc, ks) = if t % 60 < 20 {
            (3, 30)
        } else {
            (u64::from(t.is_multiple_of(10)), 1)
        };
        s.add_stratum(1000, 10, kc, 100, ks);
    }
    let mut e = quiet();
    e.sustained = Some(s);
    assert_eq!(decide(&e, &Policy::default()).name(), "healthy");
}

#[test]
fn a_slower_canary_is_caught_on_its_sustained_share_of_slow_requests() {
    let slow = |fast: u64, slow: u64| {
        let mut w = window(fast, 0, MS * 20);
        w.merge(&window(slow, 0, MS * 40));
        w
    };
    let mut s = sustained(600, 5, 0, 50, 0);
    s.stable_latency = window(10_000, 0, MS * 20);
    // 10 % of the canary's requests twice as slow: its p95 is stable's; healthy.
    s.canary_latency = slow(90, 10);
    let mut e = quiet();
    e.sustained = Some(s.clone());
    assert_eq!(decide(&e, &Policy::default()).name(), "healthy");
    // The same share over 2,000 requests: the p95 is twice stable's, and it shows.
    s.canary_latency = slow(1800, 200);
    e.sustained = Some(s);
    let v = decide(&e, &Policy::default());
    let b = v.breach().expect("sustained latency breach");
    assert_eq!(b.rule, Rule::SustainedLatency);
    assert!(b.rule.is_soft());
    assert!(b.reason.contains("200/2000"), "{}", b.reason);
}
