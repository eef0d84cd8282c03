//! Deployment strategies end to end: real upstreams, real load, a real gate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use sluice::demo::{DemoUpstream, Load};
use sluice::gate::GateHandle;

/// A quick HTTP probe. Its timeout is what a loaded machine needs for an answer from a
/// local upstream (a healthy one must never look down); a failing one is retried at once.
const PROBE: &str = "[[services.probes]]\nname = \"health\"\nkind = \"http\"\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_interval = \"100ms\"\ninitial_delay = \"0s\"\nfailure_threshold = 2\n";

fn gate(stable: &[&DemoUpstream], extra: &str) -> GateHandle {
    let list: Vec<String> = stable.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [{}]\n{extra}",
        list.join(", ")
    ))
}

async fn control(gate: &GateHandle, id: &str, action: &str) -> (u16, Value) {
    admin(
        &client(),
        gate,
        Method::POST,
        &format!("/api/v1/deployments/{id}/{action}"),
        None,
        None,
    )
    .await
}

fn load(gate: &GateHandle) -> Load {
    Load::start(load_config(gate, 400)).unwrap()
}

fn canary_body(new: &DemoUpstream, steps: Value) -> Value {
    json!({ "strategy": "canary", "upstreams": [new.addr.to_string()], "label": "v2", "steps": steps })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_plan_runs_to_promotion() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    let gate = gate(&[&old], "");
    let traffic = load(&gate);
    let (status, v) = deploy(
        &gate,
        canary_body(&new, json!([{ "weight": 10, "bake": "500ms", "min_samples": 10 }, { "weight": 50, "bake": "500ms", "min_samples": 10 }])),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["deployment"]["state"], "running");
    let done = wait_state(&gate, &id, ENDED, LONG_WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0);
    assert!(report.from_upstream("v2") > 0);
    let s = web_service(&gate).await;
    assert_eq!(s["state"], "stable");
    assert_eq!(
        s["arms"]["stable"]["upstreams"],
        json!([new.addr.to_string()])
    );
    // Every step is an event of the deployment.
    let kinds = event_kinds(&done);
    for k in [
        "deployment_started",
        "canary_set",
        "weight_set",
        "deployment_step",
        "promoted",
        "deployment_succeeded",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing in {kinds:?}");
    }
    assert_eq!(done["deployment"]["strategy"], "canary");
    assert_eq!(done["deployment"]["label"], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_at_its_first_step() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    new.set_error_rate(1.0);
    let gate = gate(&[&old], "");
    let traffic = load(&gate);
    let (status, v) = deploy(
        &gate,
        canary_body(
            &new,
            json!([{ "weight": 20, "bake": "10s" }, { "weight": 100, "bake": "10s" }]),
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, &["rolled_back", "succeeded"], LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(
        done["live"]["progress"]["failed_in"],
        json!({"phase": "step", "index": 0}),
        "failed at the first step"
    );
    assert_stops(
        WAIT,
        Duration::from_millis(500),
        "the new version's traffic after the rollback",
        || new.hits(),
    )
    .await;
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "clients saw errors: {report:?}");
    let s = web_service(&gate).await;
    assert_eq!(s["state"], "rolled_back");
    assert_eq!(
        s["arms"]["stable"]["upstreams"],
        json!([old.addr.to_string()])
    );
    // The report tells it back from the stored evidence.
    let r = admin_get(&gate, &format!("/api/v1/deployments/{id}/report")).await;
    assert_eq!(r["outcome"], "rolled_back", "{r}");
    let kinds: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "deployment_started",
        "canary_set",
        "rolled_back",
        "deployment_failed",
    ] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }
    assert!(r["breach"]["rule"].is_string(), "{r}");
    assert!(!r["failed_requests"].as_array().unwrap().is_empty(), "{r}");
    let detection = r["figures"]["detection_ms"].as_u64().unwrap();
    let recovery = r["figures"]["time_to_recovery_ms"].as_u64().unwrap();
    assert!(detection <= recovery, "{r}");
    let md = admin_get(
        &gate,
        &format!("/api/v1/deployments/{id}/report?format=markdown"),
    )
    .await;
    let md = md.as_str().unwrap();
    assert!(
        md.starts_with(&format!("# Deployment {id} of web: rolled_back")),
        "{md}"
    );
    assert!(
        md.contains("## What breached") && md.contains("GET / | 500 |"),
        "{md}"
    );
    let (status, _) = admin(
        &client(),
        &gate,
        Method::GET,
        &format!("/api/v1/deployments/{id}/report?format=pdf"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_verifies_switches_and_swaps_back() {
    let (blue, green) = (spawn_upstream("blue"), spawn_upstream("green"));
    let gate = gate(&[&blue], PROBE);
    let c = client();
    let (status, v) = deploy(
        &gate,
        json!({ "strategy": "blue_green", "upstreams": [green.addr.to_string()], "verify_for": "700ms", "keep_blue_for": "30s" }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Preview: only testers reach green.
    for _ in 0..10 {
        assert_eq!(get(&c, &gate, "x", "/", &[]).await.1, "blue");
    }
    assert_eq!(
        get(&c, &gate, "x", "/", &[("x-sluice-arm", "canary")])
            .await
            .1,
        "green"
    );
    // Verified by its probes, it takes all traffic in one swap.
    eventually(WAIT, "the switch to green", async || {
        web_service(&gate).await["canary_weight"] == 100.0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&c, &gate, "x", "/", &[]).await.1, "green");
    }
    let live = deployment(&gate, &id).await;
    assert_eq!(live["live"]["progress"]["phase"]["phase"], "keep_blue");
    // Green goes bad while blue is warm: one swap back, green kept for inspection.
    let traffic = load(&gate);
    load_reaches(&traffic, WAIT, "traffic on green", |r| {
        r.from_upstream("green") > 0
    })
    .await;
    green.set_error_rate(1.0);
    let done = wait_state(&gate, &id, &["rolled_back"], LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");
    assert_eq!(get(&c, &gate, "x", "/", &[]).await.1, "blue");
    assert_eq!(
        get(&c, &gate, "x", "/", &[("x-sluice-arm", "canary")])
            .await
            .0,
        500,
        "green is kept (held) for inspection"
    );
    // The operator removes it.
    let (status, v) = admin(
        &c,
        &gate,
        Method::DELETE,
        "/api/v1/services/web/canary",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["service"]["state"], "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_blue_green_switch_is_promoted_after_the_warm_period() {
    let (blue, green) = (spawn_upstream("blue"), spawn_upstream("green"));
    let gate = gate(&[&blue], PROBE);
    let (_, v) = deploy(
        &gate,
        json!({ "strategy": "blue_green", "upstreams": [green.addr.to_string()], "verify_for": "300ms", "keep_blue_for": "500ms" }),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, &["succeeded", "rolled_back"], LONG_WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        web_service(&gate).await["arms"]["stable"]["upstreams"],
        json!([green.addr.to_string()])
    );
}

fn names(ups: &[DemoUpstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_replaces_instances_batch_by_batch() {
    let old: Vec<_> = (0..3).map(|i| spawn_upstream(&format!("old{i}"))).collect();
    let new: Vec<_> = (0..3).map(|i| spawn_upstream(&format!("new{i}"))).collect();
    let gate = gate(&old.iter().collect::<Vec<_>>(), "");
    let traffic = load(&gate);
    let (status, v) = deploy(
        &gate,
        json!({ "strategy": "rolling", "upstreams": names(&new), "batch_size": 1, "health_wait": "300ms", "drain_timeout": "2s" }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Midway: some new instances serve, some old ones are out.
    let until = Instant::now() + LONG_WAIT;
    loop {
        let live = deployment(&gate, &id).await;
        if live["live"]["instances"]["updated"].as_u64() == Some(2) {
            let s = web_service(&gate).await;
            assert_eq!(
                s["arms"]["stable"]["upstreams"].as_array().unwrap().len(),
                1
            );
            assert_eq!(
                s["arms"]["canary"]["upstreams"].as_array().unwrap().len(),
                2
            );
            break;
        }
        assert!(Instant::now() < until, "never reached 2 of 3: {live}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = wait_state(&gate, &id, &["succeeded", "rolled_back"], LONG_WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0);
    let s = web_service(&gate).await;
    assert_eq!(s["arms"]["stable"]["upstreams"], json!(names(&new)));
    assert!(new.iter().all(|u| u.hits() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_failure_reverts_updated_instances_and_reports_them() {
    let old: Vec<_> = (0..3).map(|i| spawn_upstream(&format!("old{i}"))).collect();
    let new: Vec<_> = (0..3).map(|i| spawn_upstream(&format!("new{i}"))).collect();
    // The second new instance is broken: its probe fails.
    new[1].set_error_rate(1.0);
    let gate = gate(&old.iter().collect::<Vec<_>>(), PROBE);
    let traffic = load(&gate);
    let (_, v) = deploy(
        &gate,
        json!({ "strategy": "rolling", "upstreams": names(&new), "batch_size": 1, "health_wait": "500ms" }),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, &["rolled_back", "succeeded"], LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let progress = &done["live"]["progress"];
    assert_eq!(progress["replaced_at_failure"], 2, "{progress}");
    assert!(done["live"]["instances"]["failed"]
        .as_array()
        .unwrap()
        .contains(&json!(new[1].addr.to_string())));
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");
    // Every old instance serves again; the new ones are held for inspection.
    let s = web_service(&gate).await;
    assert_eq!(s["state"], "rolled_back");
    assert_eq!(s["arms"]["stable"]["upstreams"], json!(names(&old)));
    // The old instances came back most recent first.
    let reverts: Vec<String> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("rolling revert"))
        .map(str::to_string)
        .collect();
    assert_eq!(reverts.len(), 2, "{reverts:?}");
    assert!(reverts[0].contains(&old[1].addr.to_string()), "{reverts:?}");
    assert!(reverts[1].contains(&old[0].addr.to_string()), "{reverts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_promote_abort_lock_and_freeze() {
    let (old, new, other) = (
        spawn_upstream("v1"),
        spawn_upstream("v2"),
        spawn_upstream("v3"),
    );
    let gate = gate(&[&old], "");
    let c = client();
    let long = json!([{ "weight": 10, "bake": "1h" }, { "weight": 50, "bake": "1h" }]);
    let (_, v) = deploy(&gate, canary_body(&new, long.clone())).await;
    let id = v["id"].as_str().unwrap().to_string();

    // The lock: a second deployment and manual changes are refused, naming the holder.
    let (status, err) = deploy(&gate, canary_body(&other, long.clone())).await;
    assert_eq!(status, 409, "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&id) && msg.contains("holds the lock"), "{msg}");
    let (status, _) = admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({"weight": 90})),
    )
    .await;
    assert_eq!(status, 409);

    assert_eq!(control(&gate, &id, "pause").await.0, 200);
    assert_eq!(deployment(&gate, &id).await["state"], "paused");
    assert_eq!(control(&gate, &id, "pause").await.0, 409);
    assert_eq!(control(&gate, &id, "resume").await.0, 200);
    assert_eq!(deployment(&gate, &id).await["state"], "running");
    let (status, v) = control(&gate, &id, "promote").await;
    assert_eq!(status, 200, "{v}");
    let done = wait_state(&gate, &id, &["succeeded"], WAIT).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(
        web_service(&gate).await["arms"]["stable"]["upstreams"],
        json!([new.addr.to_string()])
    );
    assert_eq!(
        control(&gate, &id, "abort").await.0,
        409,
        "a finished deployment cannot be aborted"
    );
    assert_eq!(control(&gate, "nope", "abort").await.0, 404);
    assert_eq!(control(&gate, &id, "dance").await.0, 404);

    // Abort: an instant rollback.
    let (_, v) = deploy(&gate, canary_body(&other, long.clone())).await;
    let id2 = v["id"].as_str().unwrap().to_string();
    let (status, _) = control(&gate, &id2, "abort").await;
    assert_eq!(status, 200);
    let done = wait_state(&gate, &id2, &["aborted"], WAIT).await;
    assert_eq!(done["state"], "aborted");
    assert_eq!(web_service(&gate).await["canary_weight"], 0.0);
    assert_eq!(get(&c, &gate, "x", "/", &[]).await.1, "v2");

    // Freeze: this service, then all.
    let (status, _) = admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/freeze",
        None,
        Some(json!({"service": "web", "reason": "black friday"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) = deploy(&gate, canary_body(&other, long.clone())).await;
    assert_eq!(status, 409);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("black friday"),
        "{err}"
    );
    let (_, f) = admin(&c, &gate, Method::GET, "/api/v1/freeze", None, None).await;
    assert_eq!(f["services"]["web"]["reason"], "black friday");
    admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/unfreeze",
        None,
        Some(json!({"service": "web"})),
    )
    .await;
    let (status, _) = admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/freeze",
        None,
        Some(json!({"reason": "audit"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        deploy(&gate, canary_body(&other, long.clone())).await.0,
        409
    );
    admin(&c, &gate, Method::POST, "/api/v1/unfreeze", None, None).await;
    let (status, v) = deploy(&gate, canary_body(&other, long.clone())).await;
    assert_eq!(status, 201, "{v}");
    // A freeze needs a reason.
    let (status, _) = admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/freeze",
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployment_requests_are_refused_with_the_field() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    let gate = gate(&[&old], "");
    for (body, field) in [
        (
            json!({"strategy": "yolo", "upstreams": [new.addr.to_string()]}),
            "strategy",
        ),
        (
            json!({"strategy": "canary", "upstreams": [new.addr.to_string()]}),
            "steps",
        ),
        (
            json!({"strategy": "canary", "upstreams": [new.addr.to_string()], "steps": [{"weight": 150}]}),
            "steps[0].weight",
        ),
        (
            json!({"strategy": "canary", "upstreams": [new.addr.to_string()], "steps": [{"weight": 5, "bake": "soon"}]}),
            "steps[0].bake",
        ),
        (
            json!({"strategy": "canary", "upstreams": [old.addr.to_string()], "steps": [{"weight": 5}]}),
            "already serves",
        ),
        (
            json!({"strategy": "rolling", "upstreams": [new.addr.to_string(), dead_addr()]}),
            "upstreams",
        ),
        (
            json!({"strategy": "rolling", "upstreams": [new.addr.to_string()], "batch_size": 2, "max_unavailable": 1}),
            "batch_size",
        ),
        (
            json!({"strategy": "blue_green", "upstreams": [new.addr.to_string()], "steps": []}),
            "steps",
        ),
        (
            json!({"strategy": "canary", "upstreams": [], "steps": [{"weight": 5}]}),
            "upstreams",
        ),
    ] {
        let (status, v) = deploy(&gate, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let (status, _) = admin(&client(), &gate, Method::POST, "/api/v1/services/nope/deployments", None, Some(json!({"strategy": "canary", "upstreams": [new.addr.to_string()], "steps": [{"weight": 5}]}))).await;
    assert_eq!(status, 404);
    assert_eq!(
        web_service(&gate).await["state"],
        "stable",
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_version_that_is_gone_is_refused() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    let gate = gate(&[&old], PROBE);
    let c = client();
    let (_, v) = deploy(
        &gate,
        canary_body(&new, json!([{ "weight": 50, "bake": "1h" }])),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    // The previous version dies (its probes fail), then the canary breaches too.
    old.set_error_rate(1.0);
    eventually(WAIT, "stable to go down", async || {
        web_service(&gate).await["arms"]["stable"]["down"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    })
    .await;
    let (status, err) = admin(
        &c,
        &gate,
        Method::POST,
        "/api/v1/services/web/rollback",
        None,
        None,
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("previous version is gone"),
        "{err}"
    );
    let (status, err) = control(&gate, &id, "abort").await;
    assert_eq!(status, 409, "an abort is a rollback: refused too ({err})");
    let s = web_service(&gate).await;
    assert_eq!(
        s["canary_weight"], 50.0,
        "traffic still has a path: the canary keeps serving"
    );
    let (_, h) = admin(
        &c,
        &gate,
        Method::GET,
        "/api/v1/history?kind=rollback_refused",
        None,
        None,
    )
    .await;
    let _ = h;
    let (_, live) = admin(
        &c,
        &gate,
        Method::GET,
        &format!("/api/v1/deployments/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        live["state"], "running",
        "the deployment waits for the operator: {live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_cannot_collect_its_samples_pauses_at_its_deadline_and_notifies() {
    let rx = receivers::HttpReceiver::start(0);
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    // A notifier with the default events: a stall is among them.
    let gate = gate(
        &[&old],
        &format!(
            "[[notify]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("ok", "hook")
        ),
    );
    let traffic = load(&gate);
    // Real traffic, but a step asking for more canary samples than it can collect.
    let mut body = canary_body(
        &new,
        json!([{ "weight": 10, "bake": "0s", "min_samples": 100_000_000u64 }]),
    );
    body["progress_deadline"] = json!("1s");
    let (status, v) = deploy(&gate, body).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["deployment"]["progress"]["deadline"]["after"], "1s");
    let paused = wait_state(&gate, &id, &["paused"], LONG_WAIT).await;
    let waiting = paused["live"]["progress"]["waiting"].as_str().unwrap();
    assert!(waiting.contains("no progress for 1.0s"), "{waiting}");
    let stalled = event_of(&paused, "deployment_stalled")
        .unwrap_or_else(|| panic!("no deployment_stalled in {paused}"));
    assert_eq!(stalled["actor"], "deadline");
    assert_eq!(stalled["evidence"]["stall"]["action"], "paused");
    let hook = tokio::task::spawn_blocking(move || {
        rx.wait_for(LONG_WAIT, |r| r.json()["kind"] == "deployment_stalled")
    })
    .await
    .unwrap();
    let hook = hook.json();
    assert_eq!(hook["event"]["deployment"], json!(id));
    assert_eq!(
        hook["title"], "web: deployment stalled: no progress",
        "{hook}"
    );
    // Traffic stays where it was while paused; resumed, the deployment waits again.
    assert_eq!(web_service(&gate).await["canary_weight"], json!(10.0));
    let (status, v) = control(&gate, &id, "resume").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(traffic.stop().client_errors(), 0);
    let (status, v) = control(&gate, &id, "abort").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_deployment_rolls_back_when_it_asks_to() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    let gate = gate(&[&old], "");
    let mut body = canary_body(
        &new,
        json!([{ "weight": 5, "bake": "0s", "min_samples": 1_000_000 }]),
    );
    body["progress_deadline"] = json!("500ms");
    body["on_deadline"] = json!("rollback");
    let (status, v) = deploy(&gate, body).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, ENDED, LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert!(event_of(&done, "deployment_stalled").is_some(), "{done}");
    let s = web_service(&gate).await;
    assert_eq!(
        (&s["canary_weight"], &s["state"]),
        (&json!(0.0), &json!("rolled_back")),
        "{s}"
    );
    // Refused settings name their field.
    let mut bad = canary_body(&new, json!([{ "weight": 5 }]));
    bad["on_deadline"] = json!("later");
    let (status, v) = deploy(&gate, bad).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("on_deadline:"),
        "{v}"
    );
}
