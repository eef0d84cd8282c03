//! A deployment's view reads its own writes: the first answer that shows how a deployment
//! ended also holds every event that led there, whether the history writer has already
//! moved them to the database or not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::*;
use serde_json::{json, Value};
use sluice::demo::Load;
use sluice::gate::GateHandle;

fn kinds(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Deploys a canary that fails everything under load, and reads the view at the very first
/// answer that says `rolled_back`.
async fn cut_back_and_read_at_once(gate: &GateHandle, label: &str) -> Value {
    let bad = spawn_upstream(label);
    bad.set_error_rate(1.0);
    let (status, v) = deploy(
        gate,
        json!({ "strategy": "canary", "upstreams": [bad.addr.to_string()], "label": label,
                "steps": [{ "weight": 20, "bake": "60s" }] }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // No pause between the polls: the test is about the first answer that shows the end.
    let done = wait_state(gate, &id, &["rolled_back", "succeeded"], LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    done
}

fn assert_complete(view: &Value) {
    let got = kinds(view);
    for k in [
        "deployment_started",
        "canary_set",
        "rolled_back",
        "deployment_failed",
    ] {
        assert!(got.iter().any(|x| x == k), "{k} missing in {got:?}: {view}");
    }
    assert_eq!(view["deployment"]["outcome"], "rolled_back", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_back_deployment_is_whole_at_the_first_read() {
    let stable = spawn_upstream("v1");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        stable.addr
    ));
    let traffic = Load::start(load_config(&gate, 400)).unwrap();
    for i in 0..3 {
        let view = cut_back_and_read_at_once(&gate, &format!("bad{i}")).await;
        assert_complete(&view);
        // Resume is refused for a finished deployment's canary; a new deployment replaces
        // it, so the next round starts from the same state.
    }
    assert_eq!(traffic.stop().client_errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_the_view_comes_from_the_spool() {
    let stable = spawn_upstream("v1");
    // PostgreSQL on a port nothing listens on: every record waits in the spool.
    let spool = std::env::temp_dir().join(format!(
        "sluice-readback-{}-{}.spool",
        std::process::id(),
        fastrand_suffix()
    ));
    let gate = spawn_gate(&format!(
        "[store]\nurl = \"postgres://sluice@{}/sluice\"\nspool = \"{}\"\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        dead_addr(),
        spool.display(),
        stable.addr
    ));
    let traffic = Load::start(load_config(&gate, 400)).unwrap();
    let view = cut_back_and_read_at_once(&gate, "bad").await;
    assert_complete(&view);
    assert_eq!(traffic.stop().client_errors(), 0);
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
