//! History store throughput on each backend: how many events per second reach the database
//! through the whole path (bus sink -> spool file -> writer -> batched transactions), and
//! through `Store::write` alone. PostgreSQL is a throwaway server started here (the same
//! launcher the tests use); it is skipped when PostgreSQL is not installed.
//!
//! Run: `cargo bench --bench store` (EVENTS=20000 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

#[path = "../tests/common/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use sluice::config::{StoreConfig, StoreUrl};
use sluice::store::spool::{run_writer, Spool};
use sluice::store::{EventRow, Record, Store};

fn event(i: i64) -> Record {
    Record::Event(EventRow {
        id: format!("bench-{i:010}"),
        seq: i,
        at_ms: 1_800_000_000_000 + i,
        kind: "weight_set".into(),
        service: Some("web".into()),
        deployment_id: Some("web-1".into()),
        actor: "bench".into(),
        message: format!("canary weight {}% -> {}%", i % 100, (i + 1) % 100),
        table_from: Some(i),
        table_to: Some(i + 1),
        evidence: serde_json::json!({
            "before": { "canary_weight": i % 100, "stable": { "requests": 12345, "error_rate": 0.001 } },
            "after": { "canary_weight": (i + 1) % 100 },
        })
        .to_string(),
    })
}

async fn measure(label: &str, url: StoreUrl, events: i64, dir: &std::path::Path) {
    // 1. Store::write in batches of 256.
    let store = Store::open(&url).await.expect("store opens");
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(256) {
        let batch: Vec<Record> = chunk.iter().map(|i| event(*i)).collect();
        store.write(&batch).await.expect("write");
    }
    let direct = events as f64 / started.elapsed().as_secs_f64();

    // 2. The whole path: spool + writer, as the gate runs it.
    let spool = Arc::new(Spool::open(&dir.join(format!("{label}.spool")), 1 << 34).unwrap());
    let shared = Arc::new(ArcSwapOption::from(Some(Arc::new(store.clone()))));
    let config = StoreConfig {
        enabled: true,
        url: url.clone(),
        spool: dir.join(format!("{label}.spool")),
        spool_max_bytes: 1 << 34,
        probe_retention: Duration::from_secs(86_400),
        sample_retention: Duration::from_secs(86_400),
    };
    let up = prometheus::IntGauge::new("up", "up").unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(run_writer(spool.clone(), config, shared, up, stopped));
    let started = Instant::now();
    let mut pushing = Duration::ZERO;
    for i in events..events * 2 {
        let t = Instant::now();
        spool.push(event(i)).expect("spool accepts");
        pushing += t.elapsed();
    }
    while spool.pending_bytes() > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let whole = events as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = writer.await;
    println!(
        "{label:<9} Store::write {direct:>9.0} events/s   spool -> writer -> db {whole:>9.0} events/s   push (the publisher's cost) {:.1} µs/event",
        pushing.as_secs_f64() * 1e6 / events as f64
    );
    store.close().await;
}

fn main() {
    let events: i64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let quick = !std::env::args().any(|a| a == "--bench");
    let events = if quick { 500 } else { events };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(measure(
        "sqlite",
        StoreUrl::Sqlite(dir.path().join("bench.db")),
        events,
        dir.path(),
    ));
    if let Some(server) = pg::PgServer::start() {
        server.create_db("bench");
        runtime.block_on(measure(
            "postgres",
            StoreUrl::Postgres(server.url("bench")),
            events,
            dir.path(),
        ));
    }
}
