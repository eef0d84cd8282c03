//! External analysis end to end: a real Prometheus server scraping a real test app's
//! business metric and the gate's own `/metrics`, a real gate under load, deployments.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::Duration;

use common::prometheus::{MetricsApp, Prometheus};
use common::*;
use reqwest::Method;
use serde_json::json;
use sluice::demo::Load;

fn analysis(name: &str, address: &str, query: &str, condition: &str, extra: &str) -> String {
    format!(
        "[[services.analysis]]\nname = \"{name}\"\nkind = \"prometheus\"\naddress = \"{address}\"\nquery = '{query}'\nfailure_condition = \"{condition}\"\ninterval = \"300ms\"\ntimeout = \"2s\"\n{extra}"
    )
}

/// A canary deployment of `new` labelled v2, one step held for an hour.
async fn deploy_v2(gate: &sluice::gate::GateHandle, new: &sluice::demo::DemoUpstream) -> String {
    let (status, v) = deploy(
        gate,
        json!({ "strategy": "canary", "upstreams": [new.addr.to_string()], "label": "v2",
                "steps": [{ "weight": 20, "bake": "1h" }] }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn control(gate: &sluice::gate::GateHandle, id: &str, action: &str) -> u16 {
    admin(
        &client(),
        gate,
        Method::POST,
        &format!("/api/v1/deployments/{id}/{action}"),
        None,
        None,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_metric_in_prometheus_cuts_the_canary_back() {
    let app = MetricsApp::start();
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    // The gate's admin port is only known once it runs: Prometheus starts after it.
    let prom_port = loopback_port();
    let address = format!("http://127.0.0.1:{prom_port}");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n{}{}",
        old.addr,
        analysis(
            "checkout-failures",
            &address,
            r#"sum(checkout_failures_total{version="{canary_version}"})"#,
            "result > 5",
            "",
        ),
        analysis(
            "own-requests",
            &address,
            r#"sum(sluice_requests_total{service="{service}",arm="{arm}"})"#,
            "canary > stable * 1000",
            "max_inconclusive = 0\n",
        ),
    ));
    let Some(prom) = Prometheus::start_on(
        prom_port,
        &[
            ("app", app.addr.clone(), "/metrics"),
            ("sluice", gate.admin_addr.to_string(), "/metrics"),
        ],
    ) else {
        return;
    };
    let traffic = Load::start(load_config(&gate, 300)).unwrap();
    // Both targets are scraped before the canary starts.
    prom.wait_for(r#"sum(up{job=~"app|sluice"})"#, LONG_WAIT, |v| v == 2.0)
        .await;
    let id = deploy_v2(&gate, &new).await;
    // Healthy measurements first: the business metric at 0, and the canary's share of the
    // gate's own requests compared with stable's once Prometheus has both.
    let until = std::time::Instant::now() + LONG_WAIT;
    loop {
        let s = web_service(&gate).await;
        let list = s["judge"]["analysis"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let passed = |name: &str| {
            list.iter().any(|a| {
                a["spec"]["name"] == name
                    && a["recent"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|m| m["outcome"] == "passed"))
            })
        };
        if passed("checkout-failures") && passed("own-requests") {
            let a = list
                .iter()
                .find(|a| a["spec"]["name"] == "checkout-failures")
                .unwrap();
            assert_eq!(a["context"]["canary_version"], "v2", "{a}");
            assert_eq!(a["failed"], false);
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no passing measurements: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(deployment(&gate, &id).await["state"], "running");
    // Checkouts start failing on the new version: the next measurement cuts it back.
    app.set_failures(10);
    let done = wait_state(&gate, &id, ENDED, LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0);
    let rolled = event_of(&done, "rolled_back").unwrap();
    let ev = &rolled["evidence"];
    assert_eq!(ev["verdict"]["rule"], "analysis", "{ev}");
    let reason = ev["verdict"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("analysis 'checkout-failures' failed 1 of")
            && reason.contains("result > 5 holds with result = 10"),
        "{reason}"
    );
    let m = &ev["analysis"]["checkout-failures"];
    assert_eq!(m["outcome"], "failed", "{ev}");
    assert_eq!(
        m["queries"][0],
        r#"sum(checkout_failures_total{version="v2"})"#
    );
    // Every measurement is an event of the deployment, with its values.
    assert!(event_kinds(&done).iter().any(|k| k == "analysis_measured"));
    let text = metrics_text(&client(), &gate).await;
    assert!(
        text.contains(r#"sluice_rollbacks_total{service="web",trigger="analysis"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_from_prometheus_pauses_the_deployment_and_rolls_nothing_back() {
    let (old, new) = (spawn_upstream("v1"), spawn_upstream("v2"));
    let dead = format!("http://{}", dead_addr());
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n{}",
        old.addr,
        analysis(
            "checkouts",
            &dead,
            "sum(checkout_failures_total)",
            "result > 5",
            "max_inconclusive = 2\n",
        ),
    ));
    let traffic = Load::start(load_config(&gate, 100)).unwrap();
    let id = deploy_v2(&gate, &new).await;
    let paused = wait_state(&gate, &id, &["paused", "rolled_back"], LONG_WAIT).await;
    assert_eq!(paused["state"], "paused", "{paused}");
    let event = event_of(&paused, "analysis_inconclusive")
        .unwrap_or_else(|| panic!("no analysis_inconclusive in {paused}"));
    let msg = event["message"].as_str().unwrap();
    assert!(
        msg.contains("inconclusive 2 times in a row") && msg.contains("the deployment is paused"),
        "{msg}"
    );
    assert_eq!(event["evidence"]["measurement"]["outcome"], "inconclusive");
    // Nothing was rolled back on no answer; the canary still serves at its weight.
    let s = web_service(&gate).await;
    assert_eq!(
        (&s["state"], &s["canary_weight"]),
        (&json!("canary"), &json!(20.0)),
        "{s}"
    );
    assert_eq!(traffic.stop().client_errors(), 0);
    assert_eq!(control(&gate, &id, "abort").await, 200);
}
