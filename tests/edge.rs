//! The edge, part 2, with real clients: HTTP/2 over TLS and h2c (curl, h2load), request
//! ids, the access log parsed back, and a WebSocket held open while the judge runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::{Duration, Instant};

use common::tls::*;
use common::*;
use serde_json::Value;

/// A plain and a TLS listener (certificate for `shop.test`), with `extra` in the plain
/// listener's table, then `rest`.
fn h2_config(cert: &CertFiles, plain_extra: &str, tls_extra: &str, rest: &str) -> String {
    format!(
        r#"[[listeners]]
name = "http"
address = "127.0.0.1:0"
{plain_extra}
[[listeners]]
name = "https"
address = "127.0.0.1:0"
tls = true
{tls_extra}
[[tls.certificates]]
cert = "{}"
key = "{}"
{rest}"#,
        cert.cert.display(),
        cert.key.display(),
    )
}

fn shop(stable: &sluice::demo::DemoUpstream, canary: &sluice::demo::DemoUpstream) -> String {
    format!(
        "[[services]]\nname = \"shop\"\nhosts = [\"shop.test\"]\nstable = [\"{}\"]\ncanary = [\"{}\"]\n",
        stable.addr, canary.addr
    )
}

/// curl over TLS to `shop.test` on `port`, trusting `ca`; `-w` appends the HTTP version.
fn curl_tls(ca: &std::path::Path, port: u16, args: &[&str]) -> (bool, String) {
    let resolve = format!("shop.test:{port}:127.0.0.1");
    let mut all = vec![
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        "%{http_version}",
    ];
    all.extend_from_slice(args);
    curl(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_h2c_carry_every_canary_feature() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "shop", &["shop.test"], 30);
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    // A catch-all too, for h2load (which cannot choose its :authority).
    let gate = spawn_gate(&format!(
        "{}[[services]]\nname = \"any\"\nstable = [\"{}\"]\n{}[services.cutback]\nmin_requests = 10\n",
        h2_config(&cert, "http2 = true\n", "", ""),
        stable.addr,
        shop(&stable, &canary)
    ));
    let https = gate.listener("https").unwrap().port();
    let http = gate.listener("http").unwrap();
    let url = format!("https://shop.test:{https}/");

    // ALPN h2 by default; the tester header picks the canary over h2 as over h1.
    let (ok, out) = curl_tls(&cert.cert, https, &["--http2", &url]);
    assert!(ok, "{out}");
    assert_eq!(out, "stable\n2", "{out}");
    let (ok, out) = curl_tls(
        &cert.cert,
        https,
        &["--http2", "-H", "x-sluice-arm: canary", &url],
    );
    assert!(ok && out == "canary\n2", "{out}");
    // h2c by prior knowledge on the plain listener that asks for it; HTTP/1.1 still works.
    let plain = format!("http://{http}/");
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "host: shop.test",
        "-w",
        "%{http_version}",
        &plain,
    ]);
    assert!(ok && out == "stable\n2", "{out}");
    let (ok, out) = curl(&["-H", "host: shop.test", "-w", "%{http_version}", &plain]);
    assert!(ok && out == "stable\n1.1", "{out}");

    // Weight: a new h2 client gets a Secure sticky cookie.
    set_weight(&gate, "shop", 50.0).await;
    let (ok, out) = curl_tls(&cert.cert, https, &["--http2", "-i", &url]);
    assert!(ok, "{out}");
    let cookie = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {out}"));
    assert!(cookie.contains("; Secure"), "{cookie}");

    // h2load: 100 streams over 10 connections, every one answered.
    let out = std::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10", "-t", "1"])
        .arg(format!("https://127.0.0.1:{https}/"))
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("Application protocol: h2"), "{text}");

    // The canary fails over h2: the shield replays on stable, the judge cuts it back.
    canary.set_error_rate(1.0);
    let mut errors = 0;
    until_ok(WAIT, "the canary is cut back", async || {
        let (ok, out) = curl_tls(&cert.cert, https, &["--http2", "-o", "/dev/null", &url]);
        if !ok || !out.trim().ends_with('2') {
            errors += 1;
        }
        let v = admin_get(&gate, "/api/v1/services/shop").await;
        if v["state"] == "rolled_back" {
            Ok(v)
        } else {
            Err(v["state"].to_string())
        }
    })
    .await;
    assert_eq!(errors, 0, "no client saw the canary's failures");
    let m = metrics_text(&client(), &gate).await;
    assert!(m.contains("sluice_shielded_requests_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_can_be_turned_off_per_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "shop", &["shop.test"], 30);
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "{}{}",
        h2_config(&cert, "", "http2 = false\n", ""),
        shop(&stable, &canary)
    ));
    let https = gate.listener("https").unwrap().port();
    let (ok, out) = curl_tls(
        &cert.cert,
        https,
        &["--http2", &format!("https://shop.test:{https}/")],
    );
    assert!(ok && out == "stable\n1.1", "{out}");
    // No h2c on a plain listener unless asked.
    let (_, out) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "host: shop.test",
        &format!("http://{}/", gate.listener("http").unwrap()),
    ]);
    assert!(!out.contains("stable"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_and_reach_upstream_client_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "[access_log]\npath = \"{}\"\nformat = \"json\"\n{}",
        log.display(),
        shop(&stable, &canary)
    ));
    let c = client();
    let echo = |id: Option<&'static str>| {
        let mut r = c
            .get(format!("http://{}/echo?x=1", gate.proxy_addr))
            .header("host", "shop.test")
            .header("user-agent", "edge-test");
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let r = echo(Some("order-42.a:b")).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "order-42.a:b");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "order-42.a:b", "{seen}");
    for bad in [None, Some("has space"), Some("quote\"d")] {
        let r = echo(bad).await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "{bad:?} -> {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-request-id"], id.as_str());
    }
    // The gate's own answers carry one too.
    let r = c
        .get(format!("http://{}/", gate.proxy_addr))
        .header("host", "nobody.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));

    // A load run: every request is a line, in JSON that parses, with its fields.
    let sent = 300;
    for _ in 0..sent {
        let r = echo(None).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let total = sent + 5;
    let lines = until_ok(WAIT, "every request in the access log", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
            .collect::<Result<_, _>>()?;
        if lines.len() == total {
            Ok(lines)
        } else {
            Err(format!("{} of {total} lines", lines.len()))
        }
    })
    .await;
    let first = &lines[0];
    assert_eq!(first["request_id"], "order-42.a:b", "{first}");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.test");
    assert_eq!(first["path"], "/echo?x=1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["service"], "shop");
    assert_eq!(first["arm"], "stable");
    assert_eq!(first["upstream"], stable.addr.to_string());
    assert_eq!(first["shielded"], false);
    assert_eq!(first["user_agent"], "edge-test");
    assert!(first["bytes_out"].as_u64().unwrap() > 0, "{first}");
    assert!(first["ttfb_ms"].as_f64().unwrap() <= first["duration_ms"].as_f64().unwrap());
    assert!(lines
        .iter()
        .any(|l| l["status"] == 404 && l["service"].is_null()));
    let m = metrics_text(&client(), &gate).await;
    assert!(m.contains("sluice_access_log_dropped_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_back_names_the_failed_requests_by_id() {
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "{}canary_weight = 100.0\nshield = false\n[services.cutback]\nmin_requests = 5\n",
        shop(&stable, &canary)
    ));
    canary.set_error_rate(1.0);
    let c = client();
    let v = until_ok(WAIT, "the canary is cut back", async || {
        let _ = c
            .get(format!("http://{}/orders/7", gate.proxy_addr))
            .header("host", "shop.test")
            .header("x-request-id", "req-7")
            .send()
            .await;
        let v = admin_get(&gate, "/api/v1/history?kind=rolled_back").await;
        if v["items"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let failed = &v["items"][0]["evidence"]["failed_requests"];
    let list = failed.as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(!list.is_empty() && list.len() <= 5, "{failed}");
    assert_eq!(list[0]["request_id"], "req-7", "{failed}");
    assert_eq!(list[0]["request"], "GET /orders/7", "{failed}");
    assert_eq!(list[0]["status"], 500, "{failed}");
}

/// A WebSocket echo upstream: accepts upgrades and echoes every message until closed.
async fn websocket_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
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
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_held_open_is_not_a_slow_request_to_the_judge() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stable = spawn_upstream("stable");
    let ws_upstream = websocket_upstream().await;
    // The canary's p95 may not exceed 500 ms; a session held for seconds must not count.
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"chat\"\nstable = [\"{}\"]\ncanary = [\"{ws_upstream}\"]\ncanary_weight = 100.0\n[services.cutback]\nmin_requests = 1\nmax_p95 = \"500ms\"\n",
        stable.addr
    ));
    // Stable gets a little traffic of its own (the tester header), for the comparison.
    for _ in 0..5 {
        let r = client()
            .get(format!("http://{}/", gate.proxy_addr))
            .header("x-sluice-arm", "stable")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/socket", gate.proxy_addr))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    // Held open past several judge passes (they run every few hundred ms), echoing.
    let opened = Instant::now();
    let mut echoed = 0u32;
    while opened.elapsed() < Duration::from_secs(2) || echoed < 20 {
        ws.send(Message::text(format!("m{echoed}"))).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{echoed}")),
            other => panic!("no echo: {other:?}"),
        }
        echoed += 1;
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // The session is counted once, by its time to the 101; the judge, looking at it, finds
    // the canary healthy (a session's length as latency would breach max_p95).
    let v = until_ok(WAIT, "a verdict on the session", async || {
        let v = admin_get(&gate, "/api/v1/services/chat").await;
        let requests = v["judge"]["verdict"]["canary"]["requests"].as_u64();
        if v["arms"]["canary"]["stats"]["requests"].as_u64() == Some(1) && requests == Some(1) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let p95 = v["arms"]["canary"]["stats"]["p95_ms"].as_f64().unwrap();
    assert!(
        p95 < 500.0,
        "the session's length leaked into the latency: {v}"
    );
    assert_eq!(v["judge"]["verdict"]["verdict"], "healthy", "{v}");
    assert_eq!(v["state"], "canary", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_after_its_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_upstream = websocket_upstream().await;
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"chat\"\nstable = [\"{ws_upstream}\"]\nwebsocket_idle_timeout = \"300ms\"\n"
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", gate.proxy_addr))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    // Then nothing either way: the gate closes it (the bound is only how long we wait).
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle WebSocket was not closed");
}
