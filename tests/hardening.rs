//! Hostile clients and upstreams, byte for byte: each finding of the hardening issue sent to a
//! real gate, with what a recording upstream received checked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::recorder::{exchange_raw, Recorder};
use common::*;

async fn gate_to(up: &Recorder) -> sluice::gate::GateHandle {
    spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\nstable = [\"{}\"]\n",
        up.addr
    ))
}

fn status_lines(answer: &str) -> usize {
    answer.matches("HTTP/1.1 ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_a_chunk_extension_is_refused_not_smuggled() {
    let up = Recorder::start().await;
    let gate = gate_to(&up).await;
    // Finding 1, in two writes: the second request must never reach the upstream.
    let (answer, closed) = exchange_raw(
        gate.proxy_addr,
        &[
            b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n47\r\n",
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n0\r\n\r\n",
        ],
        WAIT,
    )
    .await;
    assert!(closed, "the gate closes the connection: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(status_lines(&answer), 1, "one answer only: {answer:?}");
    // The same bytes in one write: an answer, not a hang.
    let (answer, closed) = exchange_raw(
        gate.proxy_addr,
        &[b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nAAAAA\r\n0\r\n\r\n"],
        WAIT,
    )
    .await;
    assert!(closed && answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(!up.raw().contains("/smuggled"), "{}", up.raw());
    // A well-formed extension still passes.
    let (answer, _) = exchange_raw(
        gate.proxy_addr,
        &[b"POST /ok HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2;name=v\r\nxx\r\n0\r\n\r\n"],
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let got = up.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, b"xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_content_length_reaches_the_upstream_and_conflicting_ones_are_refused() {
    let up = Recorder::start().await;
    let gate = gate_to(&up).await;
    let head = "POST /p HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n";
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
    ] {
        let req = format!("{head}{lengths}\r\nAAAAA");
        let (answer, _) = exchange_raw(gate.proxy_addr, &[req.as_bytes()], WAIT).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{lengths:?}: {answer:?}"
        );
    }
    let got = up.requests();
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(r.header_values("content-length"), ["5"], "{}", r.head);
        assert_eq!(r.body, b"AAAAA");
    }
    let req = format!("{head}Content-Length: 5, 6\r\n\r\nAAAAAA");
    let (answer, _) = exchange_raw(gate.proxy_addr, &[req.as_bytes()], WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(up.requests().len(), 2, "nothing more reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_oddities_and_bad_request_lines_are_refused() {
    let up = Recorder::start().await;
    let gate = gate_to(&up).await;
    let cases: [(&[u8], &str); 7] = [
        (b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"),
        (b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"),
        (b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"),
        (b"POST /p HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501"),
        (b"GET  /p HTTP/1.1\r\nHost: web.test\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /p HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /p HTTP/1.1\r\nHost: web.test\r\nHost: other.test\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (bytes, want) in cases {
        let (answer, closed) = exchange_raw(gate.proxy_addr, &[bytes], WAIT).await;
        assert!(
            closed,
            "a refused request closes its connection: {answer:?}"
        );
        // An unknown coding: 501 (RFC 9112 6.1), or 400 where pingora's parser refuses it
        // before Sluice sees the request.
        let unknown_coding = want.ends_with("501") && answer.starts_with("HTTP/1.1 400");
        assert!(
            answer.starts_with(want) || unknown_coding,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            !answer.to_ascii_lowercase().contains("server: pingora"),
            "{answer:?}"
        );
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // An underscore header is dropped, not forwarded.
    let (answer, _) = exchange_raw(
        gate.proxy_addr,
        &[b"GET /u HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\nTransfer_Encoding: chunked\r\nX-Ok: 1\r\n\r\n"],
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let r = &up.requests()[0];
    assert!(
        r.header_values("transfer_encoding").is_empty(),
        "{}",
        r.head
    );
    assert_eq!(r.header_values("x-ok"), ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let up = Recorder::start().await;
    let gate = gate_to(&up).await;
    let (answer, _) = exchange_raw(
        gate.proxy_addr,
        &[b"GET /1 HTTP/1.1\r\nHost: web.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: web.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"],
        WAIT,
    )
    .await;
    assert_eq!(status_lines(&answer), 3, "{answer:?}");
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(paths, ["/1", "/2", "/3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_ambiguous_framing_does_not_reach_the_client() {
    let up =
        Recorder::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\nupgrade: h2c\r\n\r\nok")
            .await;
    let gate = gate_to(&up).await;
    let (answer, _) = exchange_raw(
        gate.proxy_addr,
        &[b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"],
        WAIT,
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(lower.contains("content-length: 2\r\n"), "{answer:?}");
    assert!(
        !lower.contains("2, 2") && !lower.contains("upgrade:"),
        "{answer:?}"
    );
    let bad =
        Recorder::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")
            .await;
    let gate = gate_to(&bad).await;
    let (answer, _) = exchange_raw(
        gate.proxy_addr,
        &[b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"],
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let up = Recorder::start().await;
    let req = b"GET /f HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\n\r\n";
    // Nobody trusted (the default): the gate's own view replaces the client's claims.
    let gate = gate_to(&up).await;
    let (answer, _) = exchange_raw(gate.proxy_addr, &[req], WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let r = &up.requests()[0];
    assert_eq!(
        r.header_values("x-forwarded-for"),
        ["127.0.0.1"],
        "{}",
        r.head
    );
    assert_eq!(r.header_values("x-forwarded-proto"), ["http"], "{}", r.head);
    assert!(r.header_values("forwarded").is_empty(), "{}", r.head);
    assert!(r.header_values("x-real-ip").is_empty(), "{}", r.head);
    // A trusted proxy in front (here: loopback): its X-Forwarded-For is extended.
    let up2 = Recorder::start().await;
    let gate = spawn_gate(&format!(
        "[routing]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        up2.addr
    ));
    let (answer, _) = exchange_raw(gate.proxy_addr, &[req], WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let r = &up2.requests()[0];
    assert_eq!(
        r.header_values("x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"],
        "{}",
        r.head
    );
    assert_eq!(
        r.header_values("x-forwarded-proto"),
        ["https"],
        "{}",
        r.head
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tester_header_needs_a_trusted_address_or_the_token_and_is_not_forwarded() {
    let (stable, canary) = (Recorder::start().await, Recorder::start().await);
    let service = format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\n",
        stable.addr, canary.addr
    );
    let ask = async |gate: &sluice::gate::GateHandle, extra: &str| {
        let req = format!(
            "GET /t HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\nX-Sluice-Arm: canary\r\n{extra}\r\n"
        );
        let (answer, _) = exchange_raw(gate.proxy_addr, &[req.as_bytes()], WAIT).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    };
    // Testers only from ranges that are not this machine, and a token: a loopback client
    // without the token stays on stable; with it, it reaches the canary.
    let gate = spawn_gate(&format!(
        "[routing]\noverride_from = [\"192.0.2.0/24\"]\noverride_token = \"tester-secret-0001\"\n{service}"
    ));
    ask(&gate, "").await;
    ask(&gate, "X-Sluice-Token: wrong\r\n").await;
    assert_eq!((stable.requests().len(), canary.requests().len()), (2, 0));
    ask(&gate, "X-Sluice-Token: tester-secret-0001\r\n").await;
    assert_eq!(canary.requests().len(), 1);
    // Neither the tester header nor the token goes upstream.
    for r in stable.requests().iter().chain(canary.requests().iter()) {
        assert!(r.header_values("x-sluice-arm").is_empty(), "{}", r.head);
        assert!(r.header_values("x-sluice-token").is_empty(), "{}", r.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_forwarded_in_their_normal_form() {
    let (internal, public) = (Recorder::start().await, Recorder::start().await);
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"internal\"\npath_prefix = \"/internal\"\nstable = [\"{}\"]\n[[services]]\nname = \"public\"\nstable = [\"{}\"]\n",
        internal.addr, public.addr
    ));
    let get = async |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n");
        let (answer, _) = exchange_raw(gate.proxy_addr, &[req.as_bytes()], WAIT).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
    };
    for path in [
        "/x/../internal/x",
        "/%69nternal/x",
        "//internal/x",
        "/./internal/x",
    ] {
        get(path).await;
    }
    get("/internal/../x?q=1").await;
    let line = |r: &common::recorder::Recorded| r.head.lines().next().unwrap_or("").to_string();
    let inside: Vec<String> = internal.requests().iter().map(line).collect();
    assert_eq!(inside, vec!["GET /internal/x HTTP/1.1"; 4]);
    let outside: Vec<String> = public.requests().iter().map(line).collect();
    assert_eq!(outside, ["GET /x?q=1 HTTP/1.1"]);
    // A broken escape that would decode into a new one (found by fuzzing): refused, not
    // forwarded as a path another parser reads differently.
    let req = b"GET /%%369nternal/x HTTP/1.1\r\nHost: web.test\r\n\r\n";
    let (answer, closed) = exchange_raw(gate.proxy_addr, &[req], WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 400") && closed, "{answer:?}");
    assert!(answer.contains("percent-encoding"), "{answer:?}");
    assert_eq!(internal.requests().len() + public.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_bodies_past_their_limits_get_414_431_413() {
    let up = Recorder::start().await;
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\nmax_body_size = 10\n",
        up.addr
    ));
    let send = async |req: String| exchange_raw(gate.proxy_addr, &[req.as_bytes()], WAIT).await;
    let long = format!("/{}", "a".repeat(9 * 1024));
    let (answer, closed) = send(format!("GET {long} HTTP/1.1\r\nHost: web.test\r\n\r\n")).await;
    assert!(closed && answer.starts_with("HTTP/1.1 414"), "{answer:?}");
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (answer, closed) = send(format!("GET / HTTP/1.1\r\nHost: web.test\r\n{many}\r\n")).await;
    assert!(closed && answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let big = "b".repeat(33 * 1024);
    let (answer, closed) = send(format!(
        "GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: {big}\r\n\r\n"
    ))
    .await;
    assert!(closed && answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // An announced body over the service's limit: 413 the client reads, nothing forwarded.
    let (answer, _) =
        send("POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 11\r\n\r\nAAAAAAAAAAA".into())
            .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // A chunked one that grows past it: 413 too.
    let (answer, _) = send(
        "POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nAAAAAA\r\n6\r\nAAAAAA\r\n0\r\n\r\n".into(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // Within the limits, all is well.
    let (answer, _) = send(
        "POST / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\nContent-Length: 10\r\n\r\nAAAAAAAAAA".into(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Recorder::start().await;
    let text = format!(
        "{}client_header_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n[store]\nenabled = false\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        server_table(),
        up.addr
    );
    let gate =
        sluice::gate::start(sluice::config::Config::parse(&text, "test.toml").unwrap()).unwrap();
    // Silent: closed by the gate (the bound is only how long the test waits).
    let mut silent = tokio::net::TcpStream::connect(gate.proxy_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client was kept: {n:?}"
    );
    // Slowloris: a header byte every 100 ms never completes a head; the gate hangs up.
    let mut slow = tokio::net::TcpStream::connect(gate.proxy_addr)
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n")
        .await
        .unwrap();
    let mut closed = false;
    let mut told = Vec::new();
    for _ in 0..300 {
        if slow.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(100), slow.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => told.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    assert!(closed, "a slowloris client was kept for 30 s");
    // It began a head, so it is told why (a silent one above was not).
    assert!(
        told.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "{:?}",
        String::from_utf8_lossy(&told)
    );
    // An idle keep-alive connection closes after keepalive_timeout; a quick client is served.
    let mut kept = tokio::net::TcpStream::connect(gate.proxy_addr)
        .await
        .unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match kept.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{got:?}"
    );
    assert!(ended.is_ok(), "an idle keep-alive connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_counted_and_then_refused_for_a_while() {
    let up = Recorder::start().await;
    let gate = spawn_gate(&format!(
        "[admin]\ntoken = \"right-token-0123456789\"\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        up.addr
    ));
    let c = client();
    let ask = async |token: &str| {
        c.get(format!("http://{}/api/v1/services", gate.admin_addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(ask("right-token-0123456789").await.status(), 200);
    for _ in 0..sluice::admin::MAX_AUTH_FAILURES {
        assert_eq!(ask("wrong").await.status(), 401);
    }
    // Past the limit this address is refused, even with the right token, for the window.
    let r = ask("right-token-0123456789").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_failures", "{body}");
    let m = c
        .get(format!("http://{}/metrics", gate.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(&format!(
            "sluice_admin_auth_failures_total {}",
            sluice::admin::MAX_AUTH_FAILURES
        )),
        "{m}"
    );
}
