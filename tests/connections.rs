//! Client connections with real sockets: the bounds on open connections (in all, per
//! listener, per client address) with the admin API still answering past them, the PROXY
//! protocol (v1 and v2, plain and TLS) believed only from trusted proxies, a stalled body
//! answered 408.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::net::SocketAddr;

use common::recorder::Recorder;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gate(server_keys: &str, rest: &str) -> sluice::gate::GateHandle {
    let text = format!(
        "{}{server_keys}\n[store]\nenabled = false\n{rest}",
        server_table()
    );
    sluice::gate::start(sluice::config::Config::parse(&text, "test.toml").unwrap()).unwrap()
}

fn web(up: &Recorder) -> String {
    format!("[[services]]\nname = \"web\"\nstable = [\"{}\"]\n", up.addr)
}

/// A connection from `from` (a loopback address of its own) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// What the peer sends until it closes or `WAIT` passes.
async fn read_to_close(s: &mut TcpStream) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// One request on a kept-alive connection; the answer's head.
async fn request(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"ok") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_bounds_get_503_and_the_admin_api_still_answers() {
    let up = Recorder::start().await;
    let g = gate("max_connections = 4\nmax_connections_per_ip = 2", &web(&up));
    let to = g.proxy_addr;
    // Two from one address are served (each admitted before the next opens).
    let mut a1 = connect_from("127.0.0.1", to).await;
    assert!(request(&mut a1).await.starts_with("HTTP/1.1 200"));
    let mut a2 = connect_from("127.0.0.1", to).await;
    assert!(request(&mut a2).await.starts_with("HTTP/1.1 200"));
    // A third from it is refused with an answer it can read, then closed.
    let mut a3 = connect_from("127.0.0.1", to).await;
    let (answer, closed) = read_to_close(&mut a3).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("Retry-After: 1"), "{answer:?}");
    assert!(closed);
    // Other addresses fill the total; past it, everyone is refused.
    let mut b1 = connect_from("127.0.0.2", to).await;
    assert!(request(&mut b1).await.starts_with("HTTP/1.1 200"));
    let mut b2 = connect_from("127.0.0.3", to).await;
    assert!(request(&mut b2).await.starts_with("HTTP/1.1 200"));
    let mut c = connect_from("127.0.0.4", to).await;
    let (answer, _) = read_to_close(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // The admin listener is not one of them.
    let client = client();
    let m = metrics_text(&client, &g).await;
    assert!(
        m.contains(
            r#"sluice_connections_refused_total{listener="http",reason="max_connections_per_ip"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"sluice_connections_refused_total{listener="http",reason="max_connections"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"sluice_connections_open{listener="http"} 4"#),
        "{m}"
    );
    // A closed connection gives its place back (the gate sees the close a moment later).
    drop(a1);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut again = connect_from("127.0.0.1", to).await;
        let answer = request(&mut again).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop((a2, b1, b2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_bound_and_trusted_proxies_exempt_from_the_address_bound() {
    let up = Recorder::start().await;
    let g = gate(
        "max_connections_per_ip = 1",
        &format!(
            "[routing]\ntrusted_proxies = [\"127.0.0.9\"]\n[[listeners]]\nname = \"small\"\naddress = \"127.0.0.1:0\"\nmax_connections = 1\n[[listeners]]\nname = \"big\"\naddress = \"127.0.0.1:0\"\n{}",
            web(&up)
        ),
    );
    let (small, big) = (g.listener("small").unwrap(), g.listener("big").unwrap());
    let mut s1 = connect_from("127.0.0.5", small).await;
    assert!(request(&mut s1).await.starts_with("HTTP/1.1 200"));
    let mut s2 = connect_from("127.0.0.6", small).await;
    assert!(read_to_close(&mut s2).await.0.starts_with("HTTP/1.1 503"));
    // The trusted proxy holds as many as it needs on the other listener.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut p = connect_from("127.0.0.9", big).await;
        assert!(request(&mut p).await.starts_with("HTTP/1.1 200"));
        held.push(p);
    }
    let m = metrics_text(&client(), &g).await;
    assert!(
        m.contains(r#"sluice_connections_refused_total{listener="small",reason="listener_max_connections"} 1"#),
        "{m}"
    );
}

fn v2_header(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(c) = client else {
        panic!("v4 only here")
    };
    let mut v = sluice::proxy_protocol::V2_SIGNATURE.to_vec();
    v.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v.extend_from_slice(&c.ip().octets());
    v.extend_from_slice(&[127, 0, 0, 1]);
    v.extend_from_slice(&c.port().to_be_bytes());
    v.extend_from_slice(&80u16.to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_the_client_only_from_trusted_proxies() {
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = common::tls::make_cert(dir.path(), "web", &["web.test"], 90);
    let g = gate(
        "",
        &format!(
            "[routing]\ntrusted_proxies = [\"127.0.0.1\"]\n[[listeners]]\nname = \"lb\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n[[listeners]]\nname = \"lbtls\"\naddress = \"127.0.0.1:0\"\ntls = true\nproxy_protocol = true\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{}",
            cert.cert.display(),
            cert.key.display(),
            web(&up)
        ),
    );
    let lb = g.listener("lb").unwrap();
    // v1, then a request on the same bytes.
    let mut s = connect_from("127.0.0.1", lb).await;
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n")
        .await
        .unwrap();
    assert!(request(&mut s).await.starts_with("HTTP/1.1 200"));
    // v2 in the same write as the request.
    let mut s = connect_from("127.0.0.1", lb).await;
    let mut bytes = v2_header("198.51.100.2:4000".parse().unwrap());
    bytes.extend_from_slice(b"GET /v2 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n");
    s.write_all(&bytes).await.unwrap();
    assert!(read_to_close(&mut s).await.0.starts_with("HTTP/1.1 200"));
    // TLS: the header comes before the handshake.
    let lbtls = g.listener("lbtls").unwrap();
    let mut tcp = connect_from("127.0.0.1", lbtls).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.33 127.0.0.1 6000 443\r\n")
        .await
        .unwrap();
    let mut tls = common::tls::connect_over(tcp, lbtls, Some("web.test"), &[b"http/1.1"])
        .await
        .unwrap();
    let answer = common::tls::exchange(&mut tls, "web.test", "/tls").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = up.requests();
    let xff: Vec<Vec<String>> = got
        .iter()
        .map(|r| r.header_values("x-forwarded-for"))
        .collect();
    assert_eq!(
        xff,
        [
            vec!["203.0.113.7".to_string()],
            vec!["198.51.100.2".to_string()],
            vec!["192.0.2.33".to_string()]
        ]
    );
    // No header, or a header from a peer that is not trusted: closed, nothing forwarded.
    let mut s = connect_from("127.0.0.1", lb).await;
    s.write_all(b"GET /none HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut s).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    let mut s = connect_from("127.0.0.2", lb).await;
    s.write_all(b"PROXY TCP4 203.0.113.8 127.0.0.1 5555 80\r\nGET /untrusted HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut s).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    assert_eq!(up.requests().len(), 3, "{}", up.raw());
    let m = metrics_text(&client(), &g).await;
    assert!(
        m.contains(r#"sluice_connections_refused_total{listener="lb",reason="proxy_header"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408() {
    let up = Recorder::start().await;
    let g = gate("client_body_timeout = \"1s\"", &web(&up));
    let mut s = TcpStream::connect(g.proxy_addr).await.unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed);
}
