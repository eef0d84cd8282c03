//! The judge, second generation, end to end: real upstreams under real load through a real
//! gate. A shared outage (both arms failing alike from one moment) cuts nothing back; a dead
//! canary beside a healthy stable still goes at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice::demo::{Load, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_outage_does_not_cut_the_canary_back() {
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    stable.set_error_rate(0.01);
    canary.set_error_rate(0.01);
    // No shield: every failure reaches the judge's windows as the 5xx it is.
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 50.0\nshield = false\n[services.cutback]\nwindow = \"5s\"\n",
        stable.addr, canary.addr
    ));
    let load = Load::start(LoadConfig {
        clients: 30,
        ..load_config(&gate, 600)
    })
    .unwrap();
    load_reaches(&load, LONG_WAIT, "traffic before the outage", |r| {
        r.sent > 1_000
    })
    .await;
    // The database goes away: both arms fail 30 % of their requests from the same moment.
    stable.set_error_rate(0.3);
    canary.set_error_rate(0.3);
    let before = web_service(&gate).await["arms"]["canary"]["totals"]["5xx"]
        .as_u64()
        .unwrap_or(0);
    // Until the canary has failed 600 more requests in the outage (runs of five in a row
    // come many times at 30 %), however long a loaded machine takes; never rolled back.
    let started = Instant::now();
    loop {
        let v = web_service(&gate).await;
        assert_eq!(
            v["state"], "canary",
            "a shared outage cut the canary back: {}",
            v["judge"]
        );
        let failed = v["arms"]["canary"]["totals"]["5xx"].as_u64().unwrap_or(0);
        if failed >= before + 600 {
            break;
        }
        assert!(
            started.elapsed() < LONG_WAIT,
            "not enough failures in {LONG_WAIT:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.stop();
    assert!(report.server_errors > 600, "{report:?}");
    // Then the canary alone dies: it goes at once, by the consecutive-failure rule.
    stable.set_error_rate(0.0);
    canary.set_error_rate(1.0);
    let load = Load::start(LoadConfig {
        clients: 10,
        ..load_config(&gate, 300)
    })
    .unwrap();
    let v = until_ok(WAIT, "the rollback", async || {
        let v = web_service(&gate).await;
        if v["state"] == "rolled_back" {
            Ok(v)
        } else {
            Err(v["judge"].to_string())
        }
    })
    .await;
    drop(load.stop());
    let events = admin_get(&gate, "/api/v1/history?service=web&kind=rolled_back").await;
    let text = events.to_string();
    assert!(
        text.contains("consecutive_failures") || text.contains("error_rate"),
        "{text} / {v}"
    );
}
