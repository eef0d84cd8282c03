//! Does a notifier that is down slow the gate? (A scenario, not a timed test.)
//!
//! Two gates in turn, the same services and load: one without notifiers, one with three
//! notifiers that want every event and are all down in a different way: a port that
//! refuses connections, a listener that accepts and never answers (each attempt waits for
//! its timeout), and an HTTP server that answers after 10 s. During 8 s of 1,000 req/s from
//! sticky clients, the API changes the canary weight 20 times a second (every change is an
//! event every notifier wants). Then the canary starts failing and the cut-back is timed
//! from its first failing answer to the table swap.
//!
//! Reported as ratios, down / none: the clients' p50 and p99 through the proxy, the admin
//! API's p50 and p99 for a weight change, and the cut-back time.
//!
//! Run: `cargo bench --bench notify` (TRIALS=3 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark panics on a broken set-up

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::config::Config;
use sluice::demo::{DemoUpstream, Load, LoadConfig};
use sluice::events::EventKind;

struct Figures {
    proxy_p50: f64,
    proxy_p99: f64,
    api_p50: f64,
    api_p99: f64,
    cutback_ms: f64,
    client_errors: u64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A listener that accepts connections and never reads or answers.
fn black_hole() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// An HTTP server that reads the request and answers after 10 s.
fn slow_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(Duration::from_secs(10));
                use std::io::Write;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            });
        }
    });
    addr
}

fn refused() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

async fn trial(notifiers: bool) -> Option<Figures> {
    let stable = DemoUpstream::spawn("stable").ok()?;
    let canary = DemoUpstream::spawn("canary").ok()?;
    let dir = tempfile::tempdir().ok()?;
    let notify = if notifiers {
        format!(
            "[[notify]]\nname = \"refused\"\nkind = \"webhook\"\nurl = \"http://{}/hook\"\nevents = [\"all\"]\n\
             [[notify]]\nname = \"black-hole\"\nkind = \"slack\"\nurl = \"http://{}/hook\"\nevents = [\"all\"]\n\
             [[notify]]\nname = \"slow\"\nkind = \"discord\"\nurl = \"http://{}/hook\"\nevents = [\"all\"]\n",
            refused(),
            black_hole(),
            slow_server()
        )
    } else {
        String::new()
    };
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}/history.db\"\n\
             [[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\n{notify}",
            dir.path().display(),
            stable.addr,
            canary.addr
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
    let http = reqwest::Client::new();
    // 8 s of weight changes, 20 a second.
    let mut api_ms = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    let mut i = 0u32;
    while Instant::now() < until {
        let t = Instant::now();
        let r = http
            .post(format!("http://{admin}/api/v1/services/web/weight"))
            .json(&json!({ "weight": 10 + (i % 5) }))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        api_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = load.report();
    // Then a failing canary: time to the swap.
    while events.try_recv().is_ok() {}
    canary.set_error_rate(1.0);
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
    let report = load.stop();
    let first = canary.first_failure_at()?;
    let latency = during.latency?;
    api_ms.sort_by(f64::total_cmp);
    let figures = Figures {
        proxy_p50: latency.quantile_ms(0.5)?,
        proxy_p99: latency.quantile_ms(0.99)?,
        api_p50: quantile(&api_ms, 0.5),
        api_p99: quantile(&api_ms, 0.99),
        cutback_ms: swapped_at?.saturating_duration_since(first).as_secs_f64() * 1000.0,
        client_errors: report.client_errors(),
    };
    drop(gate);
    Some(figures)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<(bool, Vec<Figures>)> = vec![(false, Vec::new()), (true, Vec::new())];
    // Interleaved, so drift on a shared machine hits both alike.
    for t in 0..trials {
        for (with, list) in results.iter_mut() {
            match runtime.block_on(trial(*with)) {
                Some(f) => list.push(f),
                None => println!("trial {t} ({}) failed", if *with { "down" } else { "none" }),
            }
        }
    }
    println!("notifiers down vs none ({trials} trials each, 1,000 req/s, 20 events/s to 3 dead notifiers)");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "", "proxy p50", "proxy p99", "api p50", "api p99", "cut-back", "errors"
    );
    let mut means = Vec::new();
    for (with, list) in &results {
        let pick = |f: fn(&Figures) -> f64| mean(&list.iter().map(f).collect::<Vec<_>>());
        let row = [
            pick(|f| f.proxy_p50),
            pick(|f| f.proxy_p99),
            pick(|f| f.api_p50),
            pick(|f| f.api_p99),
            pick(|f| f.cutback_ms),
        ];
        let errors: u64 = list.iter().map(|f| f.client_errors).sum();
        println!(
            "{:<28} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>10.1}ms {:>8}",
            if *with {
                "3 notifiers down"
            } else {
                "no notifiers"
            },
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            errors
        );
        means.push(row);
    }
    if means.len() == 2 {
        let r: Vec<String> = (0..5)
            .map(|i| format!("{:.2}", means[1][i] / means[0][i]))
            .collect();
        println!(
            "{:<28} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "ratio (down / none)", r[0], r[1], r[2], r[3], r[4]
        );
    }
}
