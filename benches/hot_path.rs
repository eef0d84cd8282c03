//! Criterion benches of the per-request hot path: routing lookup and arm choice, loading
//! the routing table, publishing a new one, and recording a finished request.
//!
//! Run: `cargo bench --bench hot_path` (HTML report under target/criterion).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::rollout::initial_table;
use sluice::routing::{RoutingTable, Service};
use sluice::stats::ArmStats;
use sluice::types::StatusClass;
use sluice::types::Weight;

fn config(services: usize) -> Config {
    let mut text = String::new();
    for i in 0..services {
        text.push_str(&format!(
            "[[services]]\nname = \"svc{i}\"\nhosts = [\"svc{i}.example.com\"]\nstable = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\ncanary = [\"127.0.0.1:{}\"]\ncanary_weight = 10.0\n",
            10_000 + i * 3,
            10_001 + i * 3,
            10_002 + i * 3
        ));
    }
    text.push_str("[[services]]\nname = \"fallback\"\nstable = [\"127.0.0.1:9\"]\n");
    Config::parse(&text, "bench.toml").expect("bench config is valid")
}

fn arm_choice(c: &mut Criterion) {
    let metrics = Metrics::new();
    let table = initial_table(&config(50), &metrics);
    let mut g = c.benchmark_group("arm_choice");
    g.bench_function("route_host_50_services", |b| {
        b.iter(|| table.route(black_box("svc37.example.com"), black_box("/index.html")))
    });
    g.bench_function("route_catch_all", |b| {
        b.iter(|| table.route(black_box("unknown.example.org:8080"), black_box("/")))
    });
    let service = table.services[7].clone();
    g.bench_function("sticky_seed", |b| {
        let mut seed = 0u64;
        b.iter(|| {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            service.choose_arm(None, Some(black_box(seed)), true)
        })
    });
    g.bench_function("new_client", |b| {
        b.iter(|| service.choose_arm(None, None, true))
    });
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        "theme=dark; sluice_id=00000000deadbeef; lang=en"
            .parse()
            .unwrap(),
    );
    g.bench_function("parse_sticky_cookie", |b| {
        b.iter(|| table.options.sticky_seed(black_box(&headers)))
    });
    g.finish();
}

fn table_load_and_swap(c: &mut Criterion) {
    let metrics = Metrics::new();
    let shared = Arc::new(ArcSwap::from_pointee(initial_table(&config(50), &metrics)));
    let mut g = c.benchmark_group("routing_table");
    g.bench_function("load_full", |b| b.iter(|| black_box(shared.load_full())));
    g.bench_function("load_guard", |b| {
        b.iter(|| black_box(shared.load().version))
    });
    // What the controller does for a weight change: copy the service list, replace one
    // service, build the index, store.
    g.bench_function("build_and_swap_50_services", |b| {
        b.iter(|| {
            let current = shared.load_full();
            let mut services = current.services.clone();
            let next = Service {
                weight: Weight::from_percent(20.0).unwrap(),
                ..(*services[3]).clone()
            };
            services[3] = Arc::new(next);
            let table: RoutingTable = current.next(services, None);
            shared.store(Arc::new(table));
        })
    });
    g.finish();
}

fn stats_record(c: &mut Criterion) {
    let metrics = Metrics::new();
    let stats = ArmStats::new(Duration::from_secs(30));
    let arm = metrics.arm("web", "canary");
    let mut g = c.benchmark_group("stats");
    g.bench_function("window_record", |b| {
        b.iter(|| {
            stats.record(
                black_box(StatusClass::Success),
                black_box(Duration::from_micros(850)),
            )
        })
    });
    g.bench_function("prometheus_record", |b| {
        b.iter(|| arm.record(black_box(StatusClass::Success), black_box(0.00085)))
    });
    for _ in 0..100_000 {
        stats.record(
            StatusClass::Success,
            Duration::from_micros(fastrand::u64(100..50_000)),
        );
    }
    g.bench_function("window_snapshot_and_quantiles", |b| {
        b.iter(|| {
            let s = stats.snapshot();
            (s.quantile_ms(0.5), s.quantile_ms(0.95), s.quantile_ms(0.99))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = arm_choice, table_load_and_swap, stats_record
}
criterion_main!(benches);
