//! The judge, second generation, end to end: real upstreams under real load through a real
//! gate. A shared outage (both arms failing alike from one moment) cuts nothing back; a dead
//! canary beside a healthy stable still goes at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice::demo::{Load, LoadConfig};

/// The service once it is rolled back (within `limit`).
async fn rolled_back(gate: &sluice::gate::GateHandle, limit: Duration) -> serde_json::Value {
    until_ok(limit, "the rollback", async || {
        let v = web_service(gate).await;
        if v["state"] == "rolled_back" {
            Ok(v)
        } else {
            Err(v["judge"].to_string())
        }
    })
    .await
}

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
    let v = rolled_back(&gate, WAIT).await;
    drop(load.stop());
    let events = admin_get(&gate, "/api/v1/history?service=web&kind=rolled_back").await;
    let text = events.to_string();
    assert!(
        text.contains("consecutive_failures") || text.contains("error_rate"),
        "{text} / {v}"
    );
}

/// An upstream answering every request 200, but `POST /checkout` 500 when `broken`
/// (keep-alive HTTP/1.1, Content-Length bodies).
async fn shop_upstream(broken: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let body: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + body {
                            break;
                        }
                        buf.drain(..end + 4 + body);
                        let fail = broken && head.starts_with("post /checkout");
                        let answer: &[u8] = if fail {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_endpoint_is_caught_though_it_is_a_sliver_of_the_traffic() {
    let (stable, canary) = (shop_upstream(false).await, shop_upstream(true).await);
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{stable}\"]\ncanary = [\"{canary}\"]\ncanary_weight = 50.0\nshield = false\nroutes = [\"/checkout\"]\n[services.cutback]\nwindow = \"5s\"\n"
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (stop, sent, url) = (stop.clone(), sent.clone(), proxy_url(&gate, ""));
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // 1 request in 64 is a checkout (1.6 %), the rest browse items.
                let req = if i % 64 == 0 {
                    client.post(format!("{url}/checkout")).body("{}")
                } else {
                    client.get(format!("{url}/items/{i}"))
                };
                let _ = req.send().await.map(|r| r.status());
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 8;
            }
        }));
    }
    let v = rolled_back(&gate, LONG_WAIT).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let decision = &v["judge"]["last_decision"];
    let verdict = &decision["evidence"]["verdict"];
    assert_eq!(verdict["rule"], "route_error_rate", "{decision}");
    let reason = verdict["reason"].as_str().unwrap_or("");
    assert!(reason.contains("route POST /checkout"), "{reason}");
    // The overall error rate was under both ceilings: only the route saw it.
    let overall = verdict["canary"]["error_rate"].as_f64().unwrap();
    assert!(overall < 0.05, "{verdict}");
    // The failing requests named are checkouts, with their ids.
    let failed = decision["evidence"]["failed_requests"].as_array().unwrap();
    assert!(!failed.is_empty(), "{decision}");
    for f in failed {
        assert_eq!(f["request"], "POST /checkout", "{f}");
        assert!(f["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}
