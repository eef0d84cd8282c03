//! Rollback time per deployment strategy (a scenario, not a timed test).
//!
//! A real gate, real upstreams, 1,000 req/s from sticky clients. A deployment is started
//! through the admin API and taken to the point where a bad release hurts most:
//!
//! - canary: its first step (10 %), baking;
//! - blue-green: after the switch (green has 100 %, blue is warm);
//! - rolling: 4 instances, batch size 1, in the health gate of the second batch (half the
//!   instances replaced).
//!
//! Then every new instance starts answering 500. Measured, from the first failing answer:
//! the routing-table swap (the `rolled_back` event), the last request any new instance
//! receives (all traffic on the previous version), and how many requests clients saw
//! fail (GETs are replayed on the previous version by the shield, so this should be 0).
//!
//! Run: `cargo bench --bench strategies` (TRIALS=5 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::config::Config;
use sluice::demo::{DemoUpstream, Load, LoadConfig};
use sluice::events::EventKind;

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Canary,
    BlueGreen,
    Rolling,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Canary => "canary (step 1, 10 %)",
            Strategy::BlueGreen => "blue-green (after the switch)",
            Strategy::Rolling => "rolling (2 of 4 replaced)",
        }
    }
}

struct Trial {
    swap: Duration,
    last_hit: Duration,
    client_errors: u64,
}

async fn api(
    admin: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Option<Value> {
    let c = reqwest::Client::new();
    let mut req = c.request(method, format!("http://{admin}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.ok()?.json().await.ok()
}

/// Waits until the deployment's live view satisfies `ready`.
async fn wait_for(admin: std::net::SocketAddr, id: &str, ready: impl Fn(&Value) -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Some(v) = api(
            admin,
            reqwest::Method::GET,
            &format!("/api/v1/deployments/{id}"),
            None,
        )
        .await
        {
            if ready(&v["live"]) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn trial(strategy: Strategy) -> Option<Trial> {
    let old_count = if matches!(strategy, Strategy::Rolling) {
        4
    } else {
        1
    };
    let old: Vec<DemoUpstream> = (0..old_count)
        .map(|i| DemoUpstream::spawn(&format!("old{i}")))
        .collect::<Result<_, _>>()
        .ok()?;
    let new: Vec<DemoUpstream> = (0..old_count)
        .map(|i| DemoUpstream::spawn(&format!("new{i}")))
        .collect::<Result<_, _>>()
        .ok()?;
    let list = |ups: &[DemoUpstream]| ups.iter().map(|u| u.addr.to_string()).collect::<Vec<_>>();
    let probe = "[[services.probes]]\nname = \"health\"\nkind = \"http\"\npath = \"/\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nretry_interval = \"100ms\"\ninitial_delay = \"0s\"\nfailure_threshold = 2\n";
    let dir = tempfile::tempdir().ok()?;
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}/history.db\"\n[[services]]\nname = \"web\"\nstable = {:?}\n{}",
            dir.path().display(),
            list(&old),
            if matches!(strategy, Strategy::BlueGreen) { probe } else { "" }
        ),
        "bench",
    )
    .ok()?;
    let gate = sluice::gate::start(config).ok()?;
    let admin = gate.admin_addr;
    let mut events = gate.bus.subscribe();
    let load = Load::start(LoadConfig {
        clients: 200,
        ..LoadConfig::new(gate.proxy_addr, 1000)
    })
    .ok()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = match strategy {
        Strategy::Canary => {
            json!({ "strategy": "canary", "upstreams": list(&new), "steps": [{ "weight": 10, "bake": "1h" }] })
        }
        Strategy::BlueGreen => {
            json!({ "strategy": "blue_green", "upstreams": list(&new), "verify_for": "300ms", "keep_blue_for": "1h" })
        }
        Strategy::Rolling => {
            json!({ "strategy": "rolling", "upstreams": list(&new), "batch_size": 1, "health_wait": "400ms", "drain_timeout": "1s" })
        }
    };
    let started = api(
        admin,
        reqwest::Method::POST,
        "/api/v1/services/web/deployments",
        Some(body),
    )
    .await?;
    let id = started["id"].as_str()?.to_string();
    let reached = wait_for(admin, &id, |live| match strategy {
        Strategy::Canary => live["progress"]["in_phase_ms"].as_u64().unwrap_or(0) > 1000,
        Strategy::BlueGreen => live["progress"]["phase"]["phase"] == "keep_blue",
        Strategy::Rolling => {
            live["progress"]["phase"]["phase"] == "gate"
                && live["progress"]["phase"]["replaced"] == 2
        }
    })
    .await;
    if !reached {
        println!("  {strategy:?}: the deployment never reached the point of failure");
        return None;
    }
    // Let the new version's window fill with healthy traffic first.
    if !matches!(strategy, Strategy::Rolling) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    while events.try_recv().is_ok() {}
    for n in &new {
        n.set_error_rate(1.0);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut swapped_at = None;
    while Instant::now() < deadline && swapped_at.is_none() {
        while let Ok(e) = events.try_recv() {
            if e.kind == EventKind::RolledBack {
                swapped_at = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop();
    let first = new.iter().filter_map(|n| n.first_failure_at()).min()?;
    let last = new.iter().filter_map(|n| n.last_hit_at()).max()?;
    let swapped = swapped_at?;
    drop(gate);
    Some(Trial {
        swap: swapped.saturating_duration_since(first),
        last_hit: last.saturating_duration_since(first),
        client_errors: report.client_errors(),
    })
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: nothing to check quickly.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "rollback time per strategy at 1,000 req/s, every new instance failing every request:"
    );
    for strategy in [Strategy::Canary, Strategy::BlueGreen, Strategy::Rolling] {
        let mut done = Vec::new();
        for _ in 0..trials {
            if let Some(t) = runtime.block_on(trial(strategy)) {
                done.push(t);
            }
        }
        if done.is_empty() {
            println!("{:<30} no trial completed", strategy.name());
            continue;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean = |f: &dyn Fn(&Trial) -> f64| done.iter().map(f).sum::<f64>() / done.len() as f64;
        let max = |f: &dyn Fn(&Trial) -> f64| done.iter().map(f).fold(0.0, f64::max);
        println!(
            "{:<30} trials {}  first failure -> table swap: mean {:.1} ms, max {:.1} ms;  -> last request to the new version: mean {:.1} ms, max {:.1} ms;  client-visible errors: mean {:.1}, max {:.0}",
            strategy.name(),
            done.len(),
            mean(&|t| ms(t.swap)),
            max(&|t| ms(t.swap)),
            mean(&|t| ms(t.last_hit)),
            max(&|t| ms(t.last_hit)),
            mean(&|t| t.client_errors as f64),
            max(&|t| t.client_errors as f64),
        );
    }
}
