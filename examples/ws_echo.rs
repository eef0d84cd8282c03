//! A WebSocket echo server and a load client, for `benches/compare-edge.sh`.
//!
//! Run:  cargo run --release --example ws_echo -- server 127.0.0.1:9000
//!       cargo run --release --example ws_echo -- client ws://127.0.0.1:8080/ 16 10
//!       (16 connections for 10 s, each sending a message and waiting for its echo;
//!       prints the echoed messages per second)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool stops on a broken set-up

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(&args[2]).await,
        Some("client") => {
            let conns: usize = args[3].parse().unwrap();
            let secs: u64 = args[4].parse().unwrap();
            client(&args[2], conns, Duration::from_secs(secs)).await
        }
        _ => eprintln!("usage: ws_echo server ADDR | client URL CONNS SECONDS"),
    }
}

async fn server(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn client(url: &str, conns: usize, length: Duration) {
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (echoed, stop) = (echoed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let payload = "x".repeat(64);
            while !stop.load(Ordering::Relaxed) {
                ws.send(Message::text(payload.clone())).await.unwrap();
                match ws.next().await {
                    Some(Ok(_)) => echoed.fetch_add(1, Ordering::Relaxed),
                    _ => break,
                };
            }
            let _ = ws.close(None).await;
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let n = echoed.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    println!("{:.0}", n as f64 / secs);
}
