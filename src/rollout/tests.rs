//! The controller with virtual time: cut-backs, hysteresis, little traffic, the tick.

use super::*;
use crate::types::ServiceState;
use crate::types::StatusClass;

const WEB: &str = r#"
[[services]]
name = "web"
stable = ["127.0.0.1:1001"]
canary = ["127.0.0.1:1002"]
canary_weight = 10.0
[services.cutback]
breach_for = "300ms"
"#;

fn controller(toml: &str) -> (Controller, Wiring, EventBus) {
    let config = Config::parse(toml, "t.toml").unwrap();
    let bus = EventBus::default();
    let (c, w) = Controller::new(config, Arc::new(Metrics::new()), bus.clone());
    (c, w, bus)
}

fn record(table: &TableReader, canary: bool, class: StatusClass, n: usize) {
    let t = table.load_full();
    let s = &t.services[0];
    let arm = if canary {
        s.canary.as_ref().unwrap()
    } else {
        &s.stable
    };
    let at = tokio::time::Instant::now().into_std();
    for _ in 0..n {
        arm.stats.record_at(at, class, Duration::from_millis(3));
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_of_failures_cuts_back_at_once() {
    let (mut c, w, bus) = controller(WEB);
    let mut events = bus.subscribe();
    record(&w.table, false, StatusClass::Success, 200);
    record(&w.table, true, StatusClass::ServerError, 5);
    c.judge_all();
    let t = w.table.load_full();
    assert_eq!(t.services[0].state, ServiceState::RolledBack);
    assert!(t.services[0].weight.is_zero());
    let e = events.recv().await.unwrap();
    assert_eq!(e.kind, EventKind::RolledBack);
    assert_eq!(e.actor, "judge");
    assert_eq!(e.evidence["verdict"]["rule"], "consecutive_failures");
    assert_eq!(e.table.unwrap().to, t.version);
    let board = w.handle.board();
    assert_eq!(
        board["web"].last_decision.as_ref().unwrap().kind,
        EventKind::RolledBack
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_breach_must_hold_for_breach_for() {
    let (mut c, w, bus) = controller(WEB);
    let mut events = bus.subscribe();
    record(&w.table, false, StatusClass::Success, 1000);
    // 40 % errors, interleaved so there is never a run of 5.
    for _ in 0..20 {
        record(&w.table, true, StatusClass::Success, 3);
        record(&w.table, true, StatusClass::ServerError, 2);
    }
    c.judge_all();
    assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
    assert_eq!(events.recv().await.unwrap().kind, EventKind::Breach);
    assert!(w.handle.board()["web"].watching);
    tokio::time::advance(Duration::from_millis(200)).await;
    c.judge_all();
    assert_eq!(
        w.table.load().services[0].state,
        ServiceState::Canary,
        "too early"
    );
    tokio::time::advance(Duration::from_millis(150)).await;
    c.judge_all();
    assert_eq!(w.table.load().services[0].state, ServiceState::RolledBack);
    let e = events.recv().await.unwrap();
    assert_eq!(e.kind, EventKind::RolledBack);
    assert_eq!(e.evidence["verdict"]["rule"], "error_rate");
    assert!(e.evidence["verdict"]["p_value"].as_f64().unwrap() < 0.001);
    assert_eq!(e.evidence["policy"]["breach_for"], "300ms");
}

#[tokio::test(start_paused = true)]
async fn little_traffic_is_inconclusive_and_a_held_canary_is_not_judged() {
    let (mut c, w, _bus) = controller(WEB);
    record(&w.table, true, StatusClass::ServerError, 2);
    c.judge_all();
    let board = w.handle.board();
    let v = board["web"].verdict.as_ref().unwrap();
    assert_eq!(v.name(), "inconclusive");
    c.apply(
        Op::Rollback {
            service: "web".into(),
            reason: "manual".into(),
        },
        "test",
    )
    .unwrap();
    record(&w.table, true, StatusClass::ServerError, 50);
    c.judge_all();
    assert!(w.handle.board()["web"].verdict.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_controller_loop_judges_on_its_tick() {
    let (c, w, _bus) = controller(WEB);
    let (stop, stopped) = tokio_watch::channel(false);
    let task = tokio::spawn(c.run(stopped));
    record(&w.table, false, StatusClass::Success, 100);
    record(&w.table, true, StatusClass::NoResponse, 6);
    tokio::time::sleep(TICK * 2).await;
    assert_eq!(w.table.load().services[0].state, ServiceState::RolledBack);
    // An operator resumes it; the fresh window is clean.
    let applied = w
        .handle
        .send(
            Op::Resume {
                service: "web".into(),
                weight: None,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(applied.event.kind, EventKind::Resumed);
    let t = w.table.load_full();
    assert_eq!(t.services[0].state, ServiceState::Canary);
    assert_eq!(t.services[0].weight.percent(), 10.0);
    tokio::time::sleep(TICK * 2).await;
    assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_disabled_policy_reports_without_acting() {
    let (mut c, w, bus) = controller(&format!("{WEB}enabled = false\n"));
    let mut events = bus.subscribe();
    record(&w.table, true, StatusClass::ServerError, 10);
    c.judge_all();
    assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
    let e = events.recv().await.unwrap();
    assert_eq!(e.kind, EventKind::Breach);
    assert!(e.message.contains("disabled"));
}

#[tokio::test(start_paused = true)]
async fn virtual_time_moves_the_windows_the_judge_reads() {
    let (mut c, w, _bus) = controller(WEB);
    record(&w.table, false, StatusClass::Success, 500);
    // Errors first, so no run of failures is going on at the end: only the rate speaks.
    record(&w.table, true, StatusClass::ServerError, 20);
    record(&w.table, true, StatusClass::Success, 40);
    // Long after the window, the errors no longer count: too little traffic to judge.
    let window = w.table.load().services[0].config.cutback.window;
    tokio::time::advance(window * 3).await;
    c.maintain_windows();
    c.judge_all();
    assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
    let board = w.handle.board();
    let verdict = board["web"].verdict.as_ref().unwrap();
    assert!(verdict.breach().is_none(), "{verdict:?}");
}

#[tokio::test(start_paused = true)]
async fn a_point_more_errors_is_cut_back_by_the_sustained_rule() {
    // Stable fails 1 %, the canary 2 %: never enough in one window, plain over minutes.
    let (mut c, w, bus) = controller(WEB);
    let mut events = bus.subscribe();
    let mut cut_at = None;
    for second in 0..1800u64 {
        c.maintain_windows();
        record(&w.table, false, StatusClass::Success, 49);
        record(
            &w.table,
            false,
            StatusClass::ServerError,
            usize::from(second.is_multiple_of(2)),
        );
        record(
            &w.table,
            false,
            StatusClass::Success,
            usize::from(second % 2 == 1),
        );
        record(&w.table, true, StatusClass::Success, 4);
        record(
            &w.table,
            true,
            StatusClass::ServerError,
            usize::from(second.is_multiple_of(10)),
        );
        record(
            &w.table,
            true,
            StatusClass::Success,
            usize::from(!second.is_multiple_of(10)),
        );
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            c.judge_all();
        }
        if w.table.load().services[0].state == ServiceState::RolledBack {
            cut_at = Some(second);
            break;
        }
    }
    let cut_at = cut_at.expect("cut back within 30 minutes");
    assert!(cut_at > 300, "too early for a point of errors: {cut_at} s");
    loop {
        let e = events.recv().await.unwrap();
        if e.kind == EventKind::RolledBack {
            assert_eq!(e.evidence["verdict"]["rule"], "sustained_error_rate");
            let reason = e.evidence["verdict"]["reason"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(reason.contains("in the same seconds"), "{reason}");
            break;
        }
    }
}
