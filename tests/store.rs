//! History on both backends: SQLite (a file) and a real PostgreSQL server started here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::pg::PgServer;
use common::*;
use reqwest::Method;
use serde_json::json;
use sluice::config::StoreUrl;
use sluice::demo::Load;
use sluice::store::query::{Cursor, HistoryFilter};
use sluice::store::*;

/// An SQLite file and, when PostgreSQL is installed, a fresh database on a new server.
fn backends() -> (tempfile::TempDir, Vec<(StoreUrl, Option<PgServer>)>) {
    let dir = tempfile::tempdir().unwrap();
    let mut list = vec![(StoreUrl::Sqlite(dir.path().join("h.db")), None)];
    if let Some(pg) = PgServer::start() {
        pg.create_db("history");
        list.push((StoreUrl::Postgres(pg.url("history")), Some(pg)));
    }
    (dir, list)
}

fn event(i: i64, service: &str, kind: &str, deployment: Option<&str>) -> Record {
    Record::Event(EventRow {
        id: format!("run-{i:010}"),
        seq: i,
        at_ms: 1_000_000 + i * 10,
        kind: kind.into(),
        service: Some(service.into()),
        deployment_id: deployment.map(str::to_string),
        actor: "test".into(),
        message: format!("event {i}"),
        table_from: Some(i),
        table_to: Some(i + 1),
        evidence: json!({ "i": i, "rate": 0.25 }).to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_a_round_trip_of_every_record_kind() {
    let (_dir, backends) = backends();
    for (url, _pg) in backends {
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap(); // idempotent
        assert!(
            store.counts().await.unwrap().iter().all(|(_, n)| *n == 0),
            "{url}"
        );

        let deployment = DeploymentRow {
            id: "web-1".into(),
            service: "web".into(),
            label: Some("v2".into()),
            strategy: "canary".into(),
            canary: json!({ "upstreams": ["127.0.0.1:3001"] }).to_string(),
            started_by: "api:cli:alice".into(),
            started_ms: 1_000_000,
            finished_ms: None,
            outcome: "running".into(),
            detail: "{}".into(),
        };
        let probe = ProbeRow {
            id: "p-1".into(),
            at_ms: 1_000_050,
            service: "web".into(),
            probe: "health".into(),
            target: "127.0.0.1:3001".into(),
            arm: "canary".into(),
            status: "failure".into(),
            latency_us: Some(1234),
            detail: "HTTP 503 (expected 200)".into(),
            deployment_id: Some("web-1".into()),
        };
        let snapshot = SnapshotRow {
            id: "run-0000000007".into(),
            run: "run".into(),
            version: 7,
            at_ms: 1_000_060,
            cause: "weight_set".into(),
            snapshot: json!({ "version": 7, "services": [] }).to_string(),
        };
        let minute = ArmMinuteRow {
            service: "web".into(),
            arm: "canary".into(),
            minute_ms: 960_000,
            run: "run".into(),
            deployment_id: Some("web-1".into()),
            upstreams: "127.0.0.1:3001".into(),
            requests: 600,
            failures: 12,
            status_4xx: 3,
            p50_ms: Some(1.5),
            p95_ms: Some(12.25),
            p99_ms: Some(40.0),
            mean_ms: Some(3.5),
        };
        let service = ServiceRow {
            name: "web".into(),
            fingerprint: "abc".into(),
            at_ms: 1_000_000,
            source: "sluice.toml".into(),
            config: json!({ "name": "web" }).to_string(),
        };
        let batch = vec![
            Record::Service(service.clone()),
            Record::Deployment(deployment.clone()),
            event(1, "web", "canary_set", Some("web-1")),
            Record::Probe(probe.clone()),
            Record::Snapshot(snapshot.clone()),
            Record::ArmMinute(minute.clone()),
            event(2, "web", "rolled_back", Some("web-1")),
        ];
        store.write(&batch).await.unwrap();
        // Written twice (a replay after a crash): nothing doubles.
        store.write(&batch).await.unwrap();
        // The deployment's later state replaces the earlier one.
        let ended = DeploymentRow {
            outcome: "rolled_back".into(),
            finished_ms: Some(1_000_100),
            ..deployment.clone()
        };
        store
            .write(&[Record::Deployment(ended.clone())])
            .await
            .unwrap();

        let counts: std::collections::HashMap<_, _> =
            store.counts().await.unwrap().into_iter().collect();
        for (table, n) in [
            ("services", 1),
            ("config_versions", 1),
            ("deployments", 1),
            ("events", 2),
            ("probe_results", 1),
            ("table_snapshots", 1),
            ("arm_minutes", 1),
        ] {
            assert_eq!(counts[table], n, "{url}: {table}");
        }
        assert_eq!(
            store.deployment("web-1").await.unwrap(),
            Some(ended.clone()),
            "{url}"
        );
        assert_eq!(
            store.latest_snapshot().await.unwrap(),
            Some(snapshot),
            "{url}"
        );
        assert_eq!(
            store.probe_results("web-1", 10).await.unwrap(),
            vec![probe],
            "{url}"
        );
        let page = store.history(&HistoryFilter::default()).await.unwrap();
        assert_eq!(page.items.len(), 2);
        let Record::Event(e2) = event(2, "web", "rolled_back", Some("web-1")) else {
            unreachable!()
        };
        assert_eq!(
            page.items[0], e2,
            "{url}: newest first, every column intact"
        );
        let trend = store.trend("web-1").await.unwrap().unwrap();
        assert_eq!(trend.arms["canary"][0].requests, 600);
        assert_eq!(trend.arms["canary"][0].error_rate, 0.02);
        assert_eq!(trend.arms["canary"][0].p95_ms, Some(12.25));
        assert_eq!(trend.decisions.len(), 1);
        assert!(
            trend.render().contains("rolled_back by test"),
            "{}",
            trend.render()
        );
        // Pruning removes old probe results and minutes only.
        assert_eq!(store.prune(2_000_000, 2_000_000).await.unwrap(), 2);
        assert_eq!(
            store
                .history(&HistoryFilter::default())
                .await
                .unwrap()
                .items
                .len(),
            2
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_and_paging() {
    let (_dir, backends) = backends();
    for (url, _pg) in backends {
        let store = Store::open(&url).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..45 {
            let (service, kind) = match i % 3 {
                0 => ("web", "weight_set"),
                1 => ("api", "weight_set"),
                _ => ("web", "rolled_back"),
            };
            batch.push(event(i, service, kind, (i < 9).then_some("d-1")));
        }
        store.write(&batch).await.unwrap();
        // Paging through everything, 10 at a time, newest first, no gap, no repeat.
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = store
                .history(&HistoryFilter {
                    limit: 10,
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|e| e.seq));
            match page.next {
                Some(n) => cursor = Cursor::decode(&n),
                None => break,
            }
        }
        assert_eq!(seen, (0..45).rev().collect::<Vec<_>>(), "{url}");
        let web_rollbacks = store
            .history(&HistoryFilter {
                service: Some("web".into()),
                kinds: vec!["rolled_back".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(web_rollbacks.items.len(), 15);
        assert!(web_rollbacks.items.iter().all(|e| e.kind == "rolled_back"));
        let window = store
            .history(&HistoryFilter {
                since_ms: Some(1_000_100),
                until_ms: Some(1_000_200),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            window.items.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (10..20).rev().collect::<Vec<_>>()
        );
        let deployment = store
            .history(&HistoryFilter {
                deployment: Some("d-1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(deployment.items.len(), 9);
        // A filter value is data, never SQL.
        let hostile = store
            .history(&HistoryFilter {
                service: Some("web' OR '1'='1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(hostile.items.is_empty());
        store.close().await;
    }
}

/// A gate whose history goes to `url`.
fn gate_on(url: &StoreUrl, spool: &std::path::Path, services: &str) -> sluice::gate::GateHandle {
    spawn_gate(&format!(
        "[store]\nurl = \"{}\"\nspool = \"{}\"\n{services}",
        url.connect_url().replace("?mode=rwc", ""),
        spool.display()
    ))
}

async fn weight(c: &reqwest::Client, gate: &sluice::gate::GateHandle, w: f64) {
    let (status, v) = admin(
        c,
        gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({ "weight": w })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// `GET path` once the history it asks for has at least one item (the writer puts events
/// in the database a moment after they happen).
async fn history_with(
    c: &reqwest::Client,
    gate: &sluice::gate::GateHandle,
    path: &str,
) -> serde_json::Value {
    until_ok(WAIT, path, async || {
        let (status, v) = admin(c, gate, Method::GET, path, None, None).await;
        if status == 200 && v["items"].as_array().is_some_and(|i| !i.is_empty()) {
            Ok(v)
        } else {
            Err(format!("{status} {v}"))
        }
    })
    .await
}

async fn metric(c: &reqwest::Client, gate: &sluice::gate::GateHandle, name: &str) -> f64 {
    metrics_text(c, gate)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_mid_run_loses_nothing_and_keeps_order() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("gate");
    let url = StoreUrl::Postgres(pg.url("gate"));
    let dir = tempfile::tempdir().unwrap();
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = gate_on(
        &url,
        &dir.path().join("gate.spool"),
        &format!(
            "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\n",
            s.addr, c.addr
        ),
    );
    let client = client();
    eventually(WAIT, "the store", async || {
        metric(&client, &gate, "sluice_store_up").await == 1.0
    })
    .await;
    let load = Load::start(load_config(&gate, 200)).unwrap();

    pg.stop();
    for i in 0..20 {
        weight(&client, &gate, 10.0 + i as f64).await;
    }
    eventually(WAIT, "the writer to notice", async || {
        metric(&client, &gate, "sluice_store_up").await == 0.0
    })
    .await;
    assert!(metric(&client, &gate, "sluice_store_pending_bytes").await > 0.0);
    let (status, v) = admin(&client, &gate, Method::GET, "/api/v1/history", None, None).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("spool"),
        "{v}"
    );

    pg.resume();
    eventually(LONG_WAIT, "the spool to drain", async || {
        metric(&client, &gate, "sluice_store_pending_bytes").await == 0.0
            && metric(&client, &gate, "sluice_store_up").await == 1.0
    })
    .await;
    // However fast that went: the load has sent its 500 before it stops.
    load_reaches(&load, WAIT, "500 requests", |r| r.sent > 500).await;
    let report = load.stop();
    assert_eq!(
        report.client_errors(),
        0,
        "requests failed while the database was down"
    );
    assert!(report.sent > 500);

    let (status, v) = admin(
        &client,
        &gate,
        Method::GET,
        "/api/v1/history?service=web&kind=weight_set&limit=100",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 20, "lost or doubled events");
    let weights: Vec<f64> = items
        .iter()
        .rev()
        .map(|e| e["evidence"]["after"]["canary_weight"].as_f64().unwrap())
        .collect();
    assert_eq!(
        weights,
        (0..20).map(|i| 10.0 + i as f64).collect::<Vec<_>>(),
        "order kept"
    );
    let seqs: Vec<i64> = items
        .iter()
        .rev()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(
        metric(&client, &gate, "sluice_store_dropped_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_canary_restores_the_state() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "{}[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\n[[services]]\nname = \"api\"\nhosts = [\"api.test\"]\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 5.0\n",
            server_table(),
            s.addr,
            c.addr,
            s.addr,
            c.addr
        ),
    )
    .unwrap();
    let client = client();
    let gate = spawn_gate_from_file(&path);
    weight(&client, &gate, 40.0).await;
    let (status, _) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/api/rollback",
        None,
        Some(json!({ "reason": "bad release" })),
    )
    .await;
    assert_eq!(status, 200);
    let (_, before) = admin(&client, &gate, Method::GET, "/api/v1/services", None, None).await;
    let version = before["table_version"].as_u64().unwrap();
    tokio::task::spawn_blocking(move || gate.drain())
        .await
        .unwrap();

    let gate = spawn_gate_from_file(&path);
    let (_, after) = admin(&client, &gate, Method::GET, "/api/v1/services", None, None).await;
    assert_eq!(
        after["table_version"].as_u64().unwrap(),
        version + 1,
        "versions continue"
    );
    let find = |name: &str| {
        after["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        find("web")["canary_weight"],
        40.0,
        "the weight set at runtime is kept"
    );
    assert_eq!(find("api")["state"], "rolled_back", "the hold is kept");
    assert_eq!(find("api")["canary_weight"], 0.0);
    for _ in 0..20 {
        let (status, body, _) = get(&client, &gate, "api.test", "/", &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "stable"),
            "traffic reached a cut-back canary"
        );
    }
    // The restore is an event (in history once the writer has it there), and the
    // deployment continues across the restart.
    let v = history_with(&client, &gate, "/api/v1/history?kind=restored").await;
    let restored = &v["items"][0];
    assert_eq!(restored["kind"], "restored", "{v}");
    let (_, d) = admin(
        &client,
        &gate,
        Method::GET,
        "/api/v1/deployments?service=api",
        None,
        None,
    )
    .await;
    assert_eq!(d["items"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["items"][0]["outcome"], "rolled_back");
    let id = d["items"][0]["id"].as_str().unwrap().to_string();
    let (status, detail) = admin(
        &client,
        &gate,
        Method::GET,
        &format!("/api/v1/deployments/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"rolled_back"), "{kinds:?}");
    let text = reqwest::get(admin_url(
        &gate,
        &format!("/api/v1/deployments/{id}/trend?format=text"),
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(text.contains("bad release"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_postgres_is_down_restores_from_the_spool() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("gate");
    let url = StoreUrl::Postgres(pg.url("gate"));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("gate.spool");
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let services = format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\n",
        s.addr, c.addr
    );
    let client = client();
    let gate = gate_on(&url, &spool, &services);
    pg.stop();
    let (status, _) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/rollback",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    tokio::task::spawn_blocking(move || gate.drain())
        .await
        .unwrap();
    assert!(std::fs::metadata(&spool).unwrap().len() > 0);

    // Still down: the state comes from the spool.
    let gate = gate_on(&url, &spool, &services);
    let (_, v) = admin(
        &client,
        &gate,
        Method::GET,
        "/api/v1/services/web",
        None,
        None,
    )
    .await;
    assert_eq!(v["state"], "rolled_back", "{v}");
    pg.resume();
    eventually(LONG_WAIT, "the spool to drain", async || {
        metric(&client, &gate, "sluice_store_pending_bytes").await == 0.0
    })
    .await;
    let (_, v) = admin(
        &client,
        &gate,
        Method::GET,
        "/api/v1/history?kind=rolled_back,restored",
        None,
        None,
    )
    .await;
    let kinds: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["restored", "rolled_back"], "{v}");
    assert_eq!(v["items"][0]["evidence"]["source"], "spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_api_refuses_bad_filters() {
    let s = spawn_upstream("stable");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        s.addr
    ));
    let c = client();
    for (path, mention) in [
        ("/api/v1/history?colour=red", "colour"),
        ("/api/v1/history?kind=nope", "nope"),
        ("/api/v1/history?since=yesterday", "since"),
        ("/api/v1/history?limit=0", "limit"),
        ("/api/v1/history?limit=5000", "limit"),
        ("/api/v1/history?cursor=xyz", "cursor"),
        ("/api/v1/deployments?sort=up", "sort"),
        ("/api/v1/deployments/x/trend?format=xml", "format"),
    ] {
        let (status, v) = admin(&c, &gate, Method::GET, path, None, None).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(mention),
            "{path}: {v}"
        );
    }
    eventually(WAIT, "the store", async || {
        admin(&c, &gate, Method::GET, "/api/v1/history", None, None)
            .await
            .0
            == 200
    })
    .await;
    let (status, v) = admin(
        &c,
        &gate,
        Method::GET,
        "/api/v1/deployments/nope",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let v = history_with(&c, &gate, "/api/v1/history?since=-1h&kind=started").await;
    assert_eq!(v["items"][0]["kind"], "started");
}
