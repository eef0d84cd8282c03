//! The deployment plans, step by step: canary steps, blue-green switch and verify, rolling batches, pauses and aborts.

use super::*;

fn w(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn inputs(now: u64) -> Inputs {
    Inputs {
        now: secs(now),
        judged: Judged::Healthy,
        samples: 1000,
        probes: None,
        drained: true,
    }
}

fn canary(steps: &[(f64, u64)], soft: SoftRollback) -> Spec {
    Spec::Canary {
        steps: steps
            .iter()
            .map(|(weight, bake)| Step {
                weight: w(*weight),
                bake: secs(*bake),
                min_samples: 50,
                pause: false,
            })
            .collect(),
        soft_rollback: soft,
    }
}

#[test]
fn a_canary_plan_bakes_each_step_then_promotes() {
    let (mut p, first) = Plan::start(
        canary(&[(10.0, 30), (50.0, 30)], SoftRollback::Instant),
        None,
        secs(0),
    );
    assert_eq!(first, vec![Want::Weight(w(10.0))]);
    assert!(p.tick(&inputs(29)).is_empty(), "still baking");
    // Baked but too few samples: waits.
    let mut few = inputs(30);
    few.samples = 10;
    assert!(p.tick(&few).is_empty());
    assert!(p
        .progress(secs(30))
        .waiting
        .unwrap()
        .contains("50 canary samples"));
    assert_eq!(p.tick(&inputs(31)), vec![Want::Weight(w(50.0))]);
    assert!(p.tick(&inputs(60)).is_empty());
    let end = p.tick(&inputs(62));
    assert_eq!(end[0], Want::Promote);
    assert!(matches!(end[1], Want::Finish(Outcome::Succeeded, _)));
    assert!(p.done());
}

#[test]
fn pauses_stop_the_clock_and_manual_steps_wait_for_an_operator() {
    let spec = Spec::Canary {
        steps: vec![
            Step {
                weight: w(10.0),
                bake: secs(10),
                min_samples: 0,
                pause: false,
            },
            Step {
                weight: w(10.0),
                bake: Duration::ZERO,
                min_samples: 0,
                pause: true,
            },
            Step {
                weight: w(100.0),
                bake: secs(10),
                min_samples: 0,
                pause: false,
            },
        ],
        soft_rollback: SoftRollback::Instant,
    };
    let (mut p, _) = Plan::start(spec, None, secs(0));
    assert!(p.pause(secs(5)));
    assert!(p.tick(&inputs(100)).is_empty(), "paused");
    assert!(p.resume(secs(100)).is_empty());
    // 5 s baked before the pause, 5 more needed.
    assert!(p.tick(&inputs(104)).is_empty());
    assert_eq!(p.tick(&inputs(105)), vec![Want::Weight(w(10.0))]);
    // The manual step waits however long.
    assert!(p.tick(&inputs(106)).is_empty());
    assert!(p.paused());
    assert!(p.tick(&inputs(10_000)).is_empty());
    assert_eq!(p.resume(secs(10_000)), vec![Want::Weight(w(100.0))]);
    assert!(p.tick(&inputs(10_005)).is_empty());
    assert_eq!(p.tick(&inputs(10_010))[0], Want::Promote);
}

#[test]
fn hard_breaches_are_instant_and_soft_ones_may_step_back() {
    let (mut p, _) = Plan::start(
        canary(&[(10.0, 1), (50.0, 1)], SoftRollback::StepBack),
        None,
        secs(0),
    );
    p.tick(&inputs(2));
    assert_eq!(p.phase(), &Phase::Step { index: 1 });
    // A latency regression at 50 %: back to 10 % and paused.
    assert_eq!(
        p.breached(true, secs(3), "p95"),
        vec![Want::Weight(w(10.0))]
    );
    assert!(p.paused() && !p.done());
    // A hard failure is a cut-back whatever the setting.
    let out = p.breached(false, secs(4), "5xx");
    assert_eq!(out[0], Want::CutBack("5xx".into()));
    assert!(matches!(out[1], Want::Finish(Outcome::RolledBack, _)));
    let (mut q, _) = Plan::start(canary(&[(10.0, 1)], SoftRollback::Instant), None, secs(0));
    assert!(matches!(
        q.breached(true, secs(1), "p95")[1],
        Want::Finish(Outcome::RolledBack, _)
    ));
}

#[test]
fn blue_green_verifies_switches_and_keeps_blue_warm() {
    let spec = Spec::BlueGreen {
        verify_for: secs(60),
        keep_blue_for: secs(600),
        auto_switch: true,
    };
    let (mut p, first) = Plan::start(spec, None, secs(0));
    assert_eq!(first, vec![Want::Weight(Weight::ZERO)]);
    let mut i = inputs(10);
    i.probes = Some(None);
    assert!(p.tick(&i).is_empty());
    i.probes = Some(Some(secs(20)));
    i.now = secs(79);
    assert!(p.tick(&i).is_empty(), "passing for 59 s only");
    i.now = secs(80);
    assert_eq!(p.tick(&i), vec![Want::Weight(Weight::FULL)]);
    assert_eq!(p.phase(), &Phase::KeepBlue);
    i.now = secs(679);
    assert!(p.tick(&i).is_empty());
    i.now = secs(680);
    assert_eq!(p.tick(&i)[0], Want::Promote);
    // A breach while blue is warm swaps back.
    let (mut q, _) = Plan::start(
        Spec::BlueGreen {
            verify_for: Duration::ZERO,
            keep_blue_for: secs(600),
            auto_switch: true,
        },
        None,
        secs(0),
    );
    let mut j = inputs(1);
    j.probes = Some(Some(secs(0)));
    q.tick(&j);
    assert_eq!(q.phase(), &Phase::KeepBlue);
    assert_eq!(
        q.breached(false, secs(2), "5xx")[0],
        Want::CutBack("5xx".into())
    );
}

fn rolling(n: usize, batch: usize) -> Spec {
    Spec::Rolling {
        instances: n,
        batch_size: batch,
        max_unavailable: batch,
        pause_between: secs(5),
        drain_timeout: secs(30),
        health_wait: secs(10),
    }
}

#[test]
fn rolling_drains_gates_and_moves_batch_by_batch() {
    let (mut p, first) = Plan::start(rolling(3, 1), None, secs(0));
    assert_eq!(
        first,
        vec![Want::Reshape {
            replaced: 1,
            weight: w(33.333)
        }]
    );
    let mut i = inputs(1);
    i.drained = false;
    assert!(p.tick(&i).is_empty(), "draining");
    i.drained = true;
    assert!(p.tick(&i).is_empty());
    assert_eq!(p.phase(), &Phase::Gate { replaced: 1 });
    assert!(p.tick(&inputs(10)).is_empty(), "health wait");
    assert!(p.tick(&inputs(11)).is_empty());
    assert_eq!(p.phase(), &Phase::Between { replaced: 1 });
    assert_eq!(
        p.tick(&inputs(16)),
        vec![Want::Reshape {
            replaced: 2,
            weight: w(66.667)
        }]
    );
    // A drain that never completes ends at the timeout.
    let mut stuck = inputs(46);
    stuck.drained = false;
    assert!(p.tick(&stuck).is_empty());
    assert_eq!(p.phase(), &Phase::Gate { replaced: 2 });
    p.tick(&inputs(56));
    assert_eq!(
        p.tick(&inputs(61)),
        vec![Want::Reshape {
            replaced: 3,
            weight: Weight::FULL
        }]
    );
    p.tick(&inputs(61));
    let end = p.tick(&inputs(72));
    assert_eq!(end[0], Want::Promote);
}

#[test]
fn a_rolling_failure_reverts_in_reverse_order_and_reports() {
    let (mut p, _) = Plan::start(rolling(4, 2), None, secs(0));
    p.tick(&inputs(1));
    let out = p.breached(false, secs(2), "probe down");
    assert_eq!(out, vec![Want::CutBack("probe down".into())]);
    assert_eq!(p.tick(&inputs(3)), vec![Want::Restore { out: 1 }]);
    assert_eq!(p.tick(&inputs(4)), vec![Want::Restore { out: 0 }]);
    let end = p.tick(&inputs(5));
    assert!(matches!(&end[0], Want::Finish(Outcome::RolledBack, why) if why.contains("2 updated")));
    assert_eq!(p.progress(secs(5)).replaced_at_failure, Some(2));
}

#[test]
fn promote_and_abort_end_it() {
    let (mut p, _) = Plan::start(rolling(4, 1), None, secs(0));
    let out = p.promote();
    assert_eq!(
        out[0],
        Want::Reshape {
            replaced: 4,
            weight: Weight::FULL
        }
    );
    assert_eq!(out[1], Want::Promote);
    let (mut q, _) = Plan::start(canary(&[(10.0, 100)], SoftRollback::Instant), None, secs(0));
    let out = q.abort(secs(1));
    assert!(matches!(out[1], Want::Finish(Outcome::Aborted, _)));
    assert!(q.abort(secs(2)).is_empty());
}

fn deadline(after: u64, on: OnDeadline) -> Option<Deadline> {
    Some(Deadline {
        after: secs(after),
        on,
    })
}

fn starved(now: u64) -> Inputs {
    Inputs {
        samples: 3,
        ..inputs(now)
    }
}

#[test]
fn a_step_without_samples_pauses_at_its_deadline_and_waits_again_once_resumed() {
    let spec = canary(&[(10.0, 30), (50.0, 30)], SoftRollback::Instant);
    let (mut p, _) = Plan::start(spec, deadline(600, OnDeadline::Pause), secs(0));
    // The deadline counts from the end of the bake, not from the step's start.
    assert!(p.tick(&starved(629)).is_empty());
    assert!(!p.paused());
    let wants = p.tick(&starved(630));
    let [Want::Stalled(stall)] = wants.as_slice() else {
        panic!("{wants:?}");
    };
    assert_eq!(stall.action, "paused");
    assert!(stall.waiting.contains("50 canary samples (have 3"));
    assert!(p.paused());
    let waiting = p.progress(secs(630)).waiting.unwrap();
    assert!(waiting.contains("no progress for 10m 0s"), "{waiting}");
    // Paused, nothing more happens; resumed, it waits a whole deadline again.
    assert!(p.tick(&starved(5000)).is_empty());
    assert!(p.resume(secs(5000)).is_empty());
    assert!(p.tick(&starved(5599)).is_empty());
    assert!(!p.paused());
    assert!(matches!(
        p.tick(&starved(5600)).as_slice(),
        [Want::Stalled(_)]
    ));
    // Samples arrive after a resume: it moves on as usual.
    p.resume(secs(6000));
    assert_eq!(p.tick(&inputs(6001)), vec![Want::Weight(w(50.0))]);
}

#[test]
fn a_stalled_deployment_rolls_back_or_promotes_when_asked() {
    let spec = canary(&[(10.0, 30)], SoftRollback::Instant);
    let (mut p, _) = Plan::start(spec.clone(), deadline(60, OnDeadline::Rollback), secs(0));
    let wants = p.tick(&starved(90));
    assert!(matches!(wants[0], Want::Stalled(ref s) if s.action == "rolled back"));
    assert!(matches!(wants[1], Want::CutBack(ref r) if r.contains("no progress for")));
    assert!(matches!(wants[2], Want::Finish(Outcome::RolledBack, _)));
    assert!(p.done());

    // Promote only with passing probes; without probes it pauses and says why.
    let on = OnDeadline::PromoteIfProbesHealthy;
    let (mut p, _) = Plan::start(spec.clone(), deadline(60, on), secs(0));
    let mut healthy = starved(90);
    healthy.probes = Some(Some(secs(0)));
    let wants = p.tick(&healthy);
    assert!(matches!(wants[0], Want::Stalled(ref s) if s.action.starts_with("promoted")));
    assert_eq!(wants[1], Want::Promote);
    assert!(
        matches!(wants[2], Want::Finish(Outcome::Succeeded, ref why) if why.contains("probes pass"))
    );
    let (mut p, _) = Plan::start(spec, deadline(60, on), secs(0));
    let wants = p.tick(&starved(90));
    assert!(matches!(wants.as_slice(), [Want::Stalled(s)] if s.action == "paused"));
    assert!(p.progress(secs(90)).waiting.unwrap().contains("no probes"));
}

#[test]
fn waits_for_a_person_never_stall_but_failing_probes_do() {
    let manual = Spec::Canary {
        steps: vec![Step {
            weight: w(10.0),
            bake: secs(0),
            min_samples: 0,
            pause: true,
        }],
        soft_rollback: SoftRollback::Instant,
    };
    let (mut p, _) = Plan::start(manual, deadline(1, OnDeadline::Rollback), secs(0));
    assert!(p.tick(&starved(10_000)).is_empty());
    assert!(!p.done());
    // Blue-green without probes waits for promote: no stall.
    let bg = Spec::BlueGreen {
        verify_for: secs(60),
        keep_blue_for: secs(60),
        auto_switch: true,
    };
    let (mut p, _) = Plan::start(bg.clone(), deadline(1, OnDeadline::Rollback), secs(0));
    assert!(p.tick(&starved(10_000)).is_empty());
    // Green's probes never pass: stalled after verify_for and the deadline.
    let (mut p, _) = Plan::start(bg, deadline(100, OnDeadline::Rollback), secs(0));
    let mut failing = inputs(159);
    failing.probes = Some(None);
    assert!(p.tick(&failing).is_empty());
    failing.now = secs(160);
    assert!(matches!(p.tick(&failing)[0], Want::Stalled(_)));
    // A rolling batch whose new instance never gets healthy.
    let (mut p, _) = Plan::start(rolling(2, 1), deadline(100, OnDeadline::Pause), secs(0));
    p.tick(&inputs(1));
    let mut failing = inputs(110);
    failing.probes = Some(None);
    assert!(p.tick(&failing).is_empty());
    failing.now = secs(111);
    assert!(matches!(p.tick(&failing).as_slice(), [Want::Stalled(_)]));
    assert!(p.paused());
}
