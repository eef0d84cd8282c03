//! Active probes against real targets, and what they do to routing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::docker::{self, Container};
use common::*;
use reqwest::Method;
use serde_json::Value;
use sluice::probes::check::RealChecker;
use sluice::probes::*;
use sluice::types::ArmRole;
use sluice::types::UpstreamAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The time limit of a check that must come back (pass or fail) on its own: what a
/// loaded machine may need, far more than an idle one does.
const ANSWER: Duration = Duration::from_secs(10);
/// The time limit of a check that must time out: its target never answers within it.
const HUNG: Duration = Duration::from_millis(800);

fn spec(kind: ProbeKind, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        name: "p".into(),
        kind,
        policy: ProbePolicy {
            timeout,
            ..ProbePolicy::default()
        },
    }
}

fn target(addr: std::net::SocketAddr) -> Target {
    Target {
        service: "web".into(),
        role: ArmRole::Canary,
        upstream: UpstreamAddr::parse(&addr.to_string()).unwrap(),
    }
}

fn http(path: &str) -> HttpCheck {
    HttpCheck {
        method: http::Method::GET,
        path: path.into(),
        host: None,
        headers: vec![],
        expect_status: StatusSet(vec![(200, 200)]),
        body_contains: None,
        max_response_time: None,
    }
}

async fn check(kind: ProbeKind, addr: std::net::SocketAddr) -> Outcome {
    check_with(&RealChecker::new(), kind, addr).await
}

async fn check_with(checker: &RealChecker, kind: ProbeKind, addr: std::net::SocketAddr) -> Outcome {
    check_within(checker, kind, addr, ANSWER).await
}

/// A check that must time out, within [`HUNG`].
async fn check_hung(kind: ProbeKind, addr: std::net::SocketAddr) -> Outcome {
    check_within(&RealChecker::new(), kind, addr, HUNG).await
}

async fn check_within(
    checker: &RealChecker,
    kind: ProbeKind,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Outcome {
    let s = spec(kind, timeout);
    // The same time limit the schedule applies.
    match tokio::time::timeout(s.policy.timeout, checker.check(&s, &target(addr))).await {
        Ok(o) => o,
        Err(_) => Outcome {
            status: ProbeStatus::Timeout,
            latency: s.policy.timeout,
            detail: "timeout".into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_see_codes_bodies_and_slowness() {
    let up = spawn_upstream("svc");
    let ok = check(ProbeKind::Http(http("/")), up.addr).await;
    assert_eq!(ok.status, ProbeStatus::Success, "{ok:?}");
    let wrong = check(ProbeKind::Http(http("/status/503")), up.addr).await;
    assert_eq!(wrong.status, ProbeStatus::Failure);
    assert!(
        wrong.detail.contains("HTTP 503 (expected 200)"),
        "{}",
        wrong.detail
    );
    let body = check(
        ProbeKind::Http(HttpCheck {
            body_contains: Some("nope".into()),
            ..http("/")
        }),
        up.addr,
    )
    .await;
    assert_eq!(body.status, ProbeStatus::Failure);
    assert!(
        body.detail.contains("does not contain 'nope'"),
        "{}",
        body.detail
    );
    let good_body = check(
        ProbeKind::Http(HttpCheck {
            body_contains: Some("svc".into()),
            ..http("/")
        }),
        up.addr,
    )
    .await;
    assert_eq!(good_body.status, ProbeStatus::Success);
    up.set_delay(Duration::from_millis(200));
    let slow = check(
        ProbeKind::Http(HttpCheck {
            max_response_time: Some(Duration::from_millis(100)),
            ..http("/")
        }),
        up.addr,
    )
    .await;
    assert_eq!(slow.status, ProbeStatus::Failure);
    assert!(slow.detail.contains("slower than 100ms"), "{}", slow.detail);
    up.set_delay(Duration::from_secs(30));
    let hung = check_hung(ProbeKind::Http(http("/")), up.addr).await;
    assert_eq!(hung.status, ProbeStatus::Timeout);
    let refused = check(ProbeKind::Http(http("/")), dead_addr().parse().unwrap()).await;
    assert_eq!(refused.status, ProbeStatus::Failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_connect_and_converse() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"PING") {
                        let _ = s.write_all(b"+PONG\r\n").await;
                    } else {
                        let _ = s.write_all(b"-ERR\r\n").await;
                    }
                }
            });
        }
    });
    let connect = check(
        ProbeKind::Tcp(TcpCheck {
            send: None,
            expect: None,
        }),
        addr,
    )
    .await;
    assert_eq!(connect.status, ProbeStatus::Success);
    let pong = check(
        ProbeKind::Tcp(TcpCheck {
            send: Some(b"PING\r\n".to_vec()),
            expect: Some(b"+PONG".to_vec()),
        }),
        addr,
    )
    .await;
    assert_eq!(pong.status, ProbeStatus::Success, "{pong:?}");
    let wrong = check(
        ProbeKind::Tcp(TcpCheck {
            send: Some(b"HELLO\r\n".to_vec()),
            expect: Some(b"+PONG".to_vec()),
        }),
        addr,
    )
    .await;
    assert_eq!(wrong.status, ProbeStatus::Failure);
    assert!(wrong.detail.contains("-ERR"), "{}", wrong.detail);
    let closed = check(
        ProbeKind::Tcp(TcpCheck {
            send: None,
            expect: None,
        }),
        dead_addr().parse().unwrap(),
    )
    .await;
    assert_eq!(closed.status, ProbeStatus::Failure);
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn script_check(command: Vec<String>) -> ProbeKind {
    ProbeKind::Script(ScriptCheck {
        command,
        env: vec![("EXTRA".into(), "yes".into())],
        expect_exit: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_pass_fail_and_hang() {
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:6543".parse().unwrap();
    let pass = script(
        dir.path(),
        "pass.sh",
        "echo \"checked $SLUICE_TARGET $SLUICE_ARM $EXTRA\"",
    );
    let o = check(script_check(vec![pass]), addr).await;
    assert_eq!(o.status, ProbeStatus::Success, "{o:?}");
    assert!(
        o.detail.contains("checked 127.0.0.1:6543 canary yes"),
        "{}",
        o.detail
    );

    let fail = script(dir.path(), "fail.sh", "echo 'replica lag 40s' >&2\nexit 3");
    let o = check(script_check(vec![fail]), addr).await;
    assert_eq!(o.status, ProbeStatus::Failure);
    assert!(
        o.detail.contains("exit 3") && o.detail.contains("replica lag 40s"),
        "{}",
        o.detail
    );

    // A hung script and the child it started are both killed at the timeout.
    let pidfile = dir.path().join("child.pid");
    let hang = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 300 &\necho $! > {}\nsleep 300", pidfile.display()),
    );
    // The script must get as far as writing its child's pid before the timeout: on a
    // loaded machine it may not in 800 ms, and then the check is made again with more time.
    let mut timeout = HUNG;
    let child = loop {
        let _ = std::fs::remove_file(&pidfile);
        let started = Instant::now();
        let o = check_within(
            &RealChecker::new(),
            script_check(vec![hang.clone()]),
            addr,
            timeout,
        )
        .await;
        assert_eq!(o.status, ProbeStatus::Timeout, "{o:?}");
        // Killed at the timeout, not waited for (it would run 300 s): a sanity bound.
        assert!(
            started.elapsed() < timeout + Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        if let Ok(child) = pid.trim().parse::<u32>() {
            break child;
        }
        assert!(timeout < LONG_WAIT, "the script never started its child");
        timeout *= 4;
    };
    eventually(WAIT, "the script's child to be killed", async || {
        let status = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // Gone, or a zombie awaiting its reaper.
        status.is_empty() || status.split_whitespace().nth(2) == Some("Z")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_health_follows_the_containers_healthcheck() {
    if !docker::available() {
        return;
    }
    let c = tokio::task::spawn_blocking(|| {
        Container::run(
            "sluice-test-probe",
            &["serve", "--port", "8080", "--version", "v1"],
        )
    })
    .await
    .unwrap();
    // One checker, as in the gate: it remembers which container served an address.
    let checker = RealChecker::new();
    let kind = || {
        ProbeKind::Docker(DockerCheck {
            socket: "/var/run/docker.sock".into(),
        })
    };
    // Healthy once its HEALTHCHECK has run.
    let o = until_ok(LONG_WAIT, "the container to be healthy", async || {
        let o = check_with(&checker, kind(), c.addr).await;
        if o.status == ProbeStatus::Success {
            Ok(o)
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await;
    assert!(o.detail.contains("healthy"), "{}", o.detail);
    // Its app turns unhealthy: the HEALTHCHECK says so, and so does the probe.
    client()
        .post(format!("http://{}/admin/unhealthy", c.addr))
        .send()
        .await
        .unwrap();
    let o = until_ok(
        LONG_WAIT,
        "the probe to see the container unhealthy",
        async || {
            let o = check_with(&checker, kind(), c.addr).await;
            if o.status == ProbeStatus::Failure {
                Ok(o)
            } else {
                Err(format!("{o:?}"))
            }
        },
    )
    .await;
    assert!(o.detail.contains("unhealthy"), "{}", o.detail);
    assert_eq!(c.inspect("{{.State.Health.Status}}"), "unhealthy");
    // Stopped: not running. Nothing there at all: the probe cannot tell (error).
    let addr = c.addr;
    let _c = tokio::task::spawn_blocking(move || {
        c.stop();
        c
    })
    .await
    .unwrap();
    let o = check_with(&checker, kind(), addr).await;
    assert_eq!(o.status, ProbeStatus::Failure, "{o:?}");
    assert!(o.detail.contains("not running"), "{}", o.detail);
    let o = check(kind(), dead_addr().parse().unwrap()).await;
    assert_eq!(o.status, ProbeStatus::Error, "{o:?}");
}

/// A quick schedule. The timeout is what a loaded machine needs for a check to come back
/// (a healthy target must never time out); a failing target is retried at once.
const FAST: &str = "interval = \"1s\"\ntimeout = \"1s\"\nretry_interval = \"100ms\"\ninitial_delay = \"0s\"\nfailure_threshold = 2\n";

async fn wait_until(
    what: &str,
    limit: Duration,
    gate: &sluice::gate::GateHandle,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + limit;
    loop {
        let v = web_service(gate).await;
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stable_upstream_leaves_its_arm_until_it_recovers() {
    let (a, b) = (spawn_upstream("a"), spawn_upstream("b"));
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\", \"{}\"]\n[[services.probes]]\nname = \"root\"\nkind = \"http\"\npath = \"/\"\n{FAST}",
        a.addr, b.addr
    ));
    let c = client();
    wait_until("both healthy", WAIT, &gate, |v| {
        v["probes"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["health"] == "healthy"))
    })
    .await;
    b.set_error_rate(1.0);
    let v = wait_until("b down", WAIT, &gate, |v| {
        v["arms"]["stable"]["down"] == serde_json::json!([b.addr.to_string()])
    })
    .await;
    assert_eq!(v["arms"]["stable"]["panic"], false);
    let hits = b.hits();
    for _ in 0..20 {
        let (status, body, _) = get(&c, &gate, "x", "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "a"));
    }
    // Only its probes reach b now (a handful in this time), no client request.
    assert!(b.hits() - hits < 10, "b still gets client traffic");

    // Both down: panic mode keeps sending to both rather than to nothing.
    a.set_error_rate(1.0);
    wait_until("panic", WAIT, &gate, |v| {
        v["arms"]["stable"]["panic"] == true
    })
    .await;
    let (ha, hb) = (a.hits(), b.hits());
    for _ in 0..20 {
        get(&c, &gate, "x", "/", &[]).await;
    }
    assert!(
        a.hits() - ha >= 5 && b.hits() - hb >= 5,
        "panic mode did not spread traffic"
    );

    // Recovery brings them back.
    a.set_error_rate(0.0);
    b.set_error_rate(0.0);
    wait_until("recovered", WAIT, &gate, |v| {
        v["arms"]["stable"]["down"]
            .as_array()
            .is_some_and(|d| d.is_empty())
    })
    .await;
    let metrics = metrics_text(&c, &gate).await;
    for family in [
        "sluice_probe_results_total{probe=\"root\",result=\"failure\",service=\"web\"}",
        "sluice_upstream_healthy{arm=\"stable\",service=\"web\",upstream=",
        "sluice_probe_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_its_probe_with_no_traffic_is_cut_back() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    c.set_error_rate(1.0);
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 0.0\n[[services.probes]]\nname = \"health\"\nkind = \"http\"\npath = \"/\"\n{FAST}",
        s.addr, c.addr
    ));
    let v = wait_until("the cut-back", WAIT, &gate, |v| v["state"] == "rolled_back").await;
    let decision = &v["judge"]["last_decision"];
    assert_eq!(decision["actor"], "judge");
    let verdict = &decision["evidence"]["verdict"];
    assert_eq!(verdict["rule"], "probe_failed", "{verdict}");
    assert!(
        verdict["reason"].as_str().unwrap().contains("HTTP 500"),
        "{verdict}"
    );
    assert!(!verdict["probes"][0]["results"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        v["arms"]["canary"]["stats"]["requests"], 0,
        "no traffic at all"
    );
    // Its probe results are in history, with the deployment.
    let client = client();
    eventually(WAIT, "probe results in history", async || {
        let (_, d) = admin(
            &client,
            &gate,
            Method::GET,
            "/api/v1/deployments?service=web",
            None,
            None,
        )
        .await;
        if let Some(id) = d["items"][0]["id"].as_str() {
            let (_, detail) = admin(
                &client,
                &gate,
                Method::GET,
                &format!("/api/v1/deployments/{id}"),
                None,
                None,
            )
            .await;
            if detail["probe_results"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|r| r["status"] == "failure" && r["arm"] == "canary")
            }) {
                return true;
            }
        }
        false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermittent_failure_never_trips_the_threshold() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let dir = tempfile::tempdir().unwrap();
    // Fails every other run on each target: never two in a row.
    let flaky = script(
        dir.path(),
        "flaky.sh",
        &format!(
            "f={}/n-$SLUICE_TARGET_PORT; n=$(cat $f 2>/dev/null || echo 0); echo $((n+1)) > $f; [ $((n % 2)) -eq 0 ]",
            dir.path().display()
        ),
    );
    let state = dir.path().join(format!("n-{}", c.addr.port()));
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 10.0\n[[services.probes]]\nname = \"flaky\"\nkind = \"script\"\ncommand = [\"{flaky}\"]\n{}",
        s.addr,
        c.addr,
        FAST
    ));
    // Until the probe has run often enough to have tripped a threshold of 2 several times
    // over, however long that takes on a loaded machine.
    let until = Instant::now() + LONG_WAIT;
    let mut runs = 0;
    while runs < 8 {
        let v = web_service(&gate).await;
        assert_eq!(
            v["state"], "canary",
            "an intermittent failure cut the canary back: {v}"
        );
        assert!(
            Instant::now() < until,
            "the probe hardly ran ({runs} in {LONG_WAIT:?})"
        );
        runs = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The judge has seen the last of those runs too.
    let v = web_service(&gate).await;
    assert_eq!(
        v["state"], "canary",
        "an intermittent failure cut the canary back: {v}"
    );
    assert!(runs >= 8, "the probe hardly ran ({runs})");
}
