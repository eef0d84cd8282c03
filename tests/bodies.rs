//! Refused request bodies: a client that sends more than the gate will take still reads the
//! gate's answer (lingering close), on the admin API and on the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FOUR_MIB: usize = 4 << 20;

/// Sends `head` and a body of `len` bytes on a raw connection, writing and reading at the
/// same time as a real client does, and returns what the gate answered (status line first).
async fn raw_exchange(addr: std::net::SocketAddr, head: String, len: usize) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            wr.write_all(&chunk[..n]).await?;
            sent += n;
        }
        std::io::Result::Ok(sent)
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut answer))
        .await
        .expect("the gate closes the connection")
        .expect("the answer is read, not reset");
    let _ = writer.await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_admin_limit_gets_a_readable_413() {
    let s = spawn_upstream("stable");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        s.addr
    ));
    // A real HTTP client sending the whole body first.
    let big = format!("{{\"weight\": 1, \"pad\": \"{}\"}}", "x".repeat(FOUR_MIB));
    let resp = client()
        .post(admin_url(&gate, "/api/v1/services/web/weight"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("the client reads the answer instead of a reset");
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");

    // And a raw client, several times (a reset would show as a read error).
    for _ in 0..5 {
        let head = format!(
            "POST /api/v1/services/web/weight HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {FOUR_MIB}\r\n\r\n"
        );
        let answer = raw_exchange(gate.admin_addr, head, FOUR_MIB).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_answers_a_refused_upload_readably() {
    let dead = dead_addr();
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\nstable = [\"{dead}\"]\n"
    ));
    // Unrouted host: 404 while the client is still uploading.
    for _ in 0..3 {
        let head =
            format!("POST / HTTP/1.1\r\nhost: nowhere.test\r\ncontent-length: {FOUR_MIB}\r\n\r\n");
        let answer = raw_exchange(gate.proxy_addr, head, FOUR_MIB).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
    // Upstream down: 502 while the client is still uploading.
    for _ in 0..3 {
        let head =
            format!("POST / HTTP/1.1\r\nhost: web.test\r\ncontent-length: {FOUR_MIB}\r\n\r\n");
        let answer = raw_exchange(gate.proxy_addr, head, FOUR_MIB).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    }
}
