//! gRPC through the gate with a real server and client (grpcio, tests/support/grpc_peer.py):
//! h2c and h2+TLS from the client, h2c and h2+TLS to the upstream (its certificate checked,
//! a wrong one refused), and a canary answering UNAVAILABLE in its trailers cut back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::tls::*;
use common::*;
use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_peer.py");

/// A gRPC server process; stops when dropped (its stdin closes).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(name: &str, mode: &str, tls: Option<&CertFiles>) -> Server {
        let mut cmd = Command::new("python3");
        cmd.args([PEER, "server", name, mode]);
        if let Some(t) = tls {
            cmd.arg(&t.cert).arg(&t.key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the gRPC server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("gRPC server did not start: {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` calls to `target` (h2c, or TLS trusting `ca`), with `authority` as the
/// `:authority` (and TLS name) when given: one answer each.
async fn calls(
    target: &str,
    count: usize,
    ca: Option<&CertFiles>,
    authority: Option<&str>,
) -> Vec<Value> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args([PEER, "client", target, &count.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(&ca.cert);
    }
    if let Some(a) = authority {
        cmd.args(["--authority", a]);
    }
    let out = tokio::time::timeout(LONG_WAIT, cmd.kill_on_drop(true).output())
        .await
        .expect("the gRPC client finishes")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers.len(),
        count,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    answers
}

fn listeners(cert: &CertFiles) -> String {
    format!(
        r#"[[listeners]]
name = "h2c"
address = "127.0.0.1:0"
http2 = true
[[listeners]]
name = "https"
address = "127.0.0.1:0"
tls = true
[[tls.certificates]]
cert = "{}"
key = "{}"
"#,
        cert.cert.display(),
        cert.key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_over_h2c_and_tls_and_a_failing_canary_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "grpc", &["grpc.test"], 30);
    let stable = Server::start("stable", "ok", None);
    let canary = Server::start("canary", "unavailable", None);
    let gate = spawn_gate(&format!(
        "{}[[services]]\nname = \"grpc\"\nstable = [\"127.0.0.1:{}\"]\ncanary = [\"127.0.0.1:{}\"]\nupstream = {{ protocol = \"h2c\" }}\n[services.cutback]\nmin_requests = 5\n",
        listeners(&cert),
        stable.port,
        canary.port
    ));
    let h2c = gate.listener("h2c").unwrap().to_string();
    let https = gate.listener("https").unwrap().to_string();
    for a in calls(&h2c, 5, None, None).await {
        assert!(
            a["reply"].as_str().unwrap().starts_with("stable:hello"),
            "{a}"
        );
    }
    for a in calls(&https, 5, Some(&cert), Some("grpc.test")).await {
        assert!(
            a["reply"].as_str().unwrap().starts_with("stable:hello"),
            "{a}"
        );
    }

    // The canary answers HTTP 200 with grpc-status UNAVAILABLE in its trailers: a failure.
    set_weight(&gate, "grpc", 50.0).await;
    let mut unavailable = 0;
    until_ok(WAIT, "the gRPC canary is cut back", async || {
        for a in calls(&h2c, 10, None, None).await {
            if a["code"] == "UNAVAILABLE" {
                unavailable += 1;
            }
        }
        let v = admin_get(&gate, "/api/v1/services/grpc").await;
        if v["state"] == "rolled_back" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert!(unavailable > 0, "the client saw the canary's gRPC status");
    // The judge counted them as failures, by the trailers, not by the HTTP status.
    let history = admin_get(&gate, "/api/v1/history?kind=rolled_back").await;
    let failed = &history["items"][0]["evidence"]["failed_requests"];
    assert_eq!(failed[0]["request"], "POST /sluice.Echo/Say", "{history}");
    assert_eq!(failed[0]["status"], 200, "{history}");
    for a in calls(&h2c, 5, None, None).await {
        assert_eq!(a["ok"], true, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_checked_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let front = make_cert(dir.path(), "front", &["grpc.test"], 30);
    let backend = make_cert(dir.path(), "backend", &["backend.test"], 30);
    let stranger = make_cert(dir.path(), "stranger", &["backend.test"], 30);
    let server = Server::start("secure", "ok", Some(&backend));
    let service = |name: &str, ca: &CertFiles, extra: &str| {
        format!(
            "[[services]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nstable = [\"127.0.0.1:{}\"]\nupstream = {{ protocol = \"h2\", sni = \"backend.test\", ca_file = \"{}\"{extra} }}\n",
            server.port,
            ca.cert.display()
        )
    };
    let gate = spawn_gate(&format!(
        "{}{}{}{}",
        listeners(&front),
        service("right", &backend, ""),
        service("wrong", &stranger, ""),
        service("unchecked", &stranger, ", verify = false"),
    ));
    let h2c = gate.listener("h2c").unwrap().to_string();
    // The gRPC client's :authority picks the service.
    let call = async |authority: &str| calls(&h2c, 1, None, Some(authority)).await.remove(0);
    let right = call("right.test").await;
    assert_eq!(right["reply"], "secure:hello0", "{right}");
    let wrong = call("wrong.test").await;
    assert_eq!(
        wrong["ok"], false,
        "a certificate from another CA is refused: {wrong}"
    );
    let unchecked = call("unchecked.test").await;
    assert_eq!(unchecked["reply"], "secure:hello0", "{unchecked}");
}
