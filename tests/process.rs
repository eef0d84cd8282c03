//! The `sluice` binary as operators run it: signals, CLI, config checks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice run` child process and the addresses it reported.
struct Running {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"]).arg(config);
        Running::start_command(cmd)
    }

    /// Starts `cmd` (a `sluice run` in some wrapper).
    fn start_command(mut cmd: Command) -> Running {
        let mut child = cmd
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    if line.contains("sluice ready") {
                        let field = |k: &str| {
                            line.split_whitespace()
                                .find_map(|w| w.strip_prefix(k))
                                .and_then(|v| v.parse::<SocketAddr>().ok())
                        };
                        let _ = tx.send((field("proxy="), field("admin=")));
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (proxy, admin) = rx.recv_timeout(LONG_WAIT).expect("sluice reports ready");
        Running {
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }

    /// Sends a signal by name ("TERM", "HUP") with kill(1), keeping the tests free of FFI.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "sluice did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    write_config_with(dir, server_table(), body)
}

fn write_config_with(dir: &Path, server: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, format!("{server}{body}")).unwrap();
    path
}

/// An upstream whose `/held` requests are answered only once the test releases them (`/`
/// answers at once): requests in flight for exactly as long as the test needs, however
/// slow the machine.
struct HeldUpstream {
    addr: SocketAddr,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldUpstream {
    async fn start() -> HeldUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let held = {
            let arrived = arrived.clone();
            move || {
                let (arrived, mut released) = (arrived.clone(), released.clone());
                async move {
                    arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    "held\n"
                }
            }
        };
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok\n" }))
            .route("/held", axum::routing::get(held));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HeldUpstream {
            addr,
            arrived,
            release,
        }
    }

    /// Requests that have reached `/held`.
    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every held request, and any later one at once.
    fn release(&self) {
        let _ = self.release.send(true);
    }
}

async fn body_of(c: &reqwest::Client, addr: SocketAddr) -> String {
    let resp = c.get(format!("http://{addr}/")).send().await.unwrap();
    resp.text().await.unwrap().trim().to_string()
}

async fn table_version(c: &reqwest::Client, admin: SocketAddr) -> u64 {
    let v: Value = c
        .get(format!("http://{admin}/api/v1/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["table_version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits() {
    let up = HeldUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A drain timeout far beyond what the test needs: the drain must end with the last
    // request, long before it.
    let server = server_table().replace("drain_timeout = \"5s\"", "drain_timeout = \"120s\"");
    assert_ne!(
        server,
        server_table(),
        "the test sets its own drain timeout"
    );
    let path = write_config_with(
        dir.path(),
        &server,
        &format!("[[services]]\nname = \"web\"\nstable = [\"{}\"]\n", up.addr),
    );
    let mut gate = Running::start(&path);
    let client = client();
    // An idle keep-alive connection in the pool must not hold the drain up.
    let r = client
        .get(format!("http://{}/", gate.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let c = client.clone();
            let url = format!("http://{}/held", gate.proxy);
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually(WAIT, "the requests to reach the upstream", async || {
        up.arrived() == 5
    })
    .await;
    gate.signal("TERM");
    // New connections are refused while the old requests are in flight (held).
    eventually(
        WAIT,
        "the listener to stop accepting during the drain",
        async || {
            std::net::TcpStream::connect_timeout(&gate.proxy, Duration::from_millis(500)).is_err()
        },
    )
    .await;
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "sluice exited with requests in flight"
    );
    let released = Instant::now();
    up.release();
    for r in in_flight {
        assert_eq!(r.await.unwrap().expect("in-flight request completes"), 200);
    }
    let status = gate.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "exit status {status}");
    // Drain ends when the last request does, not at drain_timeout (120 s); how soon is for
    // a bench to measure, this is a sanity bound.
    assert!(
        released.elapsed() < Duration::from_secs(60),
        "took {:?}",
        released.elapsed()
    );
    eprintln!(
        "exited {:?} after the last request was released",
        released.elapsed()
    );
    assert!(gate.log_contains("shutting_down"));
    assert!(gate.log_contains("abandoned=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_table() {
    let (a, b) = (spawn_upstream("a"), spawn_upstream("b"));
    let dir = tempfile::tempdir().unwrap();
    let service = |addr: SocketAddr, extra: &str| {
        format!("[[services]]\nname = \"web\"\nstable = [\"{addr}\"]\n{extra}")
    };
    let path = write_config(dir.path(), &service(a.addr, ""));
    let gate = Running::start(&path);
    let client = client();
    let v1 = table_version(&client, gate.admin).await;

    write_config(dir.path(), &service(b.addr, ""));
    gate.signal("HUP");
    eventually(WAIT, "the reload on SIGHUP", async || {
        table_version(&client, gate.admin).await != v1
    })
    .await;
    assert_eq!(body_of(&client, gate.proxy).await, "b");

    write_config(dir.path(), &service(a.addr, "threads = 3\n"));
    gate.signal("HUP");
    eventually(WAIT, "the bad reload to be reported", async || {
        gate.log_contains("reload on SIGHUP refused")
    })
    .await;
    assert!(gate.log_contains("services[0].threads"));
    assert_eq!(table_version(&client, gate.admin).await, v1 + 1);
    assert_eq!(body_of(&client, gate.proxy).await, "b");
}

/// Runs the CLI against a gate's admin API; returns (exit code, stdout, stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_the_admin_api() {
    let (s, c, n) = (
        spawn_upstream("stable"),
        spawn_upstream("canary"),
        spawn_upstream("next"),
    );
    let gate = spawn_gate(&format!(
        "[admin]\ntoken = \"cli-token-123\"\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 5.0\n",
        s.addr, c.addr
    ));
    let admin = gate.admin_addr;
    let run = |args: &'static [&'static str]| cli(admin, Some("cli-token-123"), args);

    let (code, out, _) = run(&["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("web  state=canary  canary_weight=5%"), "{out}");
    let (code, out, _) = run(&["weight", "web", "12.5"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("canary weight 5% -> 12.5%"), "{out}");
    let (code, _, err) = run(&["weight", "web", "150"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("must be between 0 and 100"), "{err}");
    let (code, out, _) = run(&["rollback", "web", "--reason", "p95 doubled"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("p95 doubled"), "{out}");
    let (code, _, err) = run(&["promote", "web"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");
    let next = n.addr.to_string();
    let args = ["canary", "web", "--upstream", &next, "--weight", "1"];
    let (code, out, _) = cli(admin, Some("cli-token-123"), &args).await;
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&["promote", "web"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("state=stable"), "{out}");
    let (code, out, _) = run(&["status", "web", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["arms"]["stable"]["upstreams"][0], next);

    // Wrong token and no gate: clear errors, exit 1.
    let (code, _, err) = cli(admin, Some("wrong-token"), &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let dead: SocketAddr = dead_addr().parse().unwrap();
    let (code, _, err) = cli(dead, None, &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[test]
fn check_config_accepts_the_examples_and_refuses_every_invalid_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut valid = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(BIN)
                .arg("check-config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            valid += 1;
        }
    }
    assert!(valid >= 1);
    let mut invalid = 0;
    for entry in std::fs::read_dir(root.join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue; // certs/: the files the configs point at
        }
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} was accepted",
            path.display()
        );
        let name = path.display().to_string();
        assert!(
            err.starts_with(&name),
            "message does not name the file: {err}"
        );
        // Every message names a key path (`a.b[0].c: ...`) or, for broken TOML, a line.
        let after = &err[name.len() + 2..];
        let names_key = after.split(": ").next().is_some_and(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c))
        });
        assert!(names_key || err.contains("(line "), "no key path in: {err}");
        invalid += 1;
    }
    assert!(invalid >= 10);
}

#[test]
fn the_demo_cuts_a_failing_canary_back_with_no_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let out = Command::new(BIN)
        .args(["demo", "--rate", "500", "--db"])
        .arg(&db)
        .output()
        .expect("demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(">>> CUT BACK by judge"), "{text}");
    assert!(
        text.contains("requests clients saw fail          0"),
        "{text}"
    );
    assert!(text.contains("state"), "{text}");
    // Its history: the deployment of v2, rolled back, with the judge's reason.
    assert!(text.contains("history kept in"), "{text}");
    assert!(text.contains(": rolled_back"), "{text}");
    assert!(text.contains("rolled_back by judge"), "{text}");
    assert!(db.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_follows_events_and_status_shows_the_last_decision() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 5.0\n",
        s.addr, c.addr
    ));
    let admin = gate.admin_addr;
    let mut follower = tokio::process::Command::new(BIN)
        .args(["events", "--service", "web"])
        .env("SLUICE_ADMIN_URL", format!("http://{admin}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().unwrap(),
    ));
    // Once it follows (it shows a weight change made after it connected)...
    let mut weight = 5;
    until_ok(WAIT, "the follower to show an event", async || {
        weight += 1;
        let w = weight.to_string();
        let (code, _, err) = cli(admin, None, &["weight", "web", &w]).await;
        assert_eq!(code, 0, "{err}");
        match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            Ok(line) => Ok(line.unwrap().expect("the follower runs")),
            Err(_) => Err("no line yet".to_string()),
        }
    })
    .await;
    // ...a rollback reaches it.
    let (code, _, _) = cli(admin, None, &["rollback", "web", "--reason", "watch this"]).await;
    assert_eq!(code, 0);
    let line = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the follower runs");
            if line.contains("rolled_back") {
                return line;
            }
        }
    })
    .await
    .expect("an event line");
    assert!(
        line.contains("rolled_back") && line.contains("watch this"),
        "{line}"
    );
    assert!(line.contains("api:cli:"), "the actor is recorded: {line}");
    let (code, out, _) = cli(admin, None, &["status", "web"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("last    ") && out.contains("rolled_back by api:cli:"),
        "{out}"
    );
    let (code, out, _) = cli(admin, None, &["resume", "web", "--weight", "2"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resumed at 2%"), "{out}");
    // The judge's line, once it has judged the resumed canary.
    let out = until_ok(WAIT, "the judge's verdict", async || {
        let (code, out, _) = cli(admin, None, &["status", "web"]).await;
        assert_eq!(code, 0);
        if out.contains("  judge   ") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(out.contains("judge   inconclusive"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reads_history_and_migrate_reports_the_tables() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 5.0\n",
            s.addr, c.addr
        ),
    );
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("migrated (sqlite)") && text.contains("events"),
        "{text}"
    );

    let gate = spawn_gate_from_file(&path);
    let admin = gate.admin_addr;
    let (code, _, err) = cli(admin, None, &["weight", "web", "20"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(admin, None, &["rollback", "web", "--reason", "smoke"]).await;
    assert_eq!(code, 0, "{err}");
    // The writer moves records behind the events; poll.
    let out = until_ok(WAIT, "the rollback in history", async || {
        let (code, out, _) = cli(
            admin,
            None,
            &["history", "--service", "web", "--since", "-1h"],
        )
        .await;
        if code == 0 && out.contains("rolled_back") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(
        out.contains("rolled_back") && out.contains("smoke") && out.contains("weight_set"),
        "{out}"
    );
    let (code, out, _) = cli(admin, None, &["deployments", "web"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("rolled_back"), "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let (code, out, _) = cli(admin, None, &["deployment", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("per minute") && out.contains("rolled_back          web          api:cli:"),
        "{out}"
    );
    let (code, _, err) = cli(admin, None, &["history", "--kind", "nonsense"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown event kind"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_follows_and_exits_by_outcome() {
    let (v1, v2, bad) = (
        spawn_upstream("v1"),
        spawn_upstream("v2"),
        spawn_upstream("bad"),
    );
    bad.set_error_rate(1.0);
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        v1.addr
    ));
    let admin = gate.admin_addr;
    let traffic = sluice::demo::Load::start(load_config(&gate, 300)).unwrap();

    // Bad input is refused before anything starts.
    let (code, _, err) = cli(
        admin,
        None,
        &[
            "deploy",
            "web",
            "--upstream",
            "127.0.0.1:1",
            "--step",
            "ten",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("--step: 'ten'"), "{err}");
    let (code, _, err) = cli(admin, None, &["deploy", "web", "--upstream", "127.0.0.1:1"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("steps: a canary deployment needs at least one step"),
        "{err}"
    );

    // A good release runs to the end: exit 0, with its steps shown as they happen.
    let good = v2.addr.to_string();
    let (code, out, err) = cli(
        admin,
        None,
        &[
            "deploy",
            "web",
            "--upstream",
            &good,
            "--label",
            "v2",
            "--step",
            "10:300ms:5",
            "--step",
            "50:300ms:5",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("step 1 at 10%"), "{out}");
    assert!(out.contains("step 2 at 50%"), "{out}");
    assert!(out.contains("deployment_succeeded"), "{out}");
    assert!(out.trim_end().ends_with("succeeded"), "{out}");

    // A bad one is rolled back: exit 2.
    let bad_addr = bad.addr.to_string();
    let (code, out, err) = cli(
        admin,
        None,
        &["deploy", "web", "--upstream", &bad_addr, "--step", "20:10s"],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("deployment_failed"), "{out}");
    assert!(out.trim_end().ends_with("rolled_back"), "{out}");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");

    // Freeze refuses a deployment; the lock names its holder; abort exits 3 for the follower.
    let (code, out, _) = cli(
        admin,
        None,
        &["freeze", "--reason", "release window closed"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("frozen"), "{out}");
    let (code, out, _) = cli(admin, None, &["freeze"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("all services") && out.contains("release window closed"),
        "{out}"
    );
    let (code, _, err) = cli(
        admin,
        None,
        &["deploy", "web", "--upstream", &good, "--step", "10"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("release window closed"),
        "{err}"
    );
    let (code, _, _) = cli(admin, None, &["unfreeze"]).await;
    assert_eq!(code, 0);

    // v2 is stable now: v1 comes back as the next version.
    let old = v1.addr.to_string();
    let (code, id, err) = cli(
        admin,
        None,
        &[
            "deploy",
            "web",
            "--upstream",
            &old,
            "--step",
            "10:1h",
            "--detach",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    let follower = tokio::spawn(cli(
        admin,
        None,
        Box::leak(
            vec!["deploy", "web", "--upstream", "127.0.0.1:2", "--step", "5"].into_boxed_slice(),
        ),
    ));
    let (code, _, err) = follower.await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains(&id), "{err}");
    let (code, out, _) = cli(admin, None, &["deployment", &id, "pause"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("paused"), "{out}");
    let (code, out, _) = cli(admin, None, &["deployment", &id, "abort"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("aborted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_under_load_and_loses_no_line() {
    let up = spawn_upstream("web");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let path = write_config(
        dir.path(),
        &format!(
            "[access_log]\npath = \"{}\"\n[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
            log.display(),
            up.addr
        ),
    );
    let gate = Running::start(&path);
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    // Load from four clients until told to stop; each counts its answered requests.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, url, c) = (stop.clone(), format!("http://{}/", gate.proxy), client());
        load.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    until_ok(WAIT, "lines in the access log", async || {
        if lines(&log) >= 100 {
            Ok(())
        } else {
            Err(format!("{} lines", lines(&log)))
        }
    })
    .await;
    // logrotate's way: rename, then SIGUSR1; lines go on into the new file.
    std::fs::rename(&log, &rotated).unwrap();
    gate.signal("USR1");
    until_ok(WAIT, "lines in the reopened file", async || {
        if lines(&log) >= 100 {
            Ok(())
        } else {
            Err(format!("{} lines", lines(&log)))
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for l in load {
        sent += l.await.unwrap();
    }
    until_ok(WAIT, "every request in one file or the other", async || {
        let written = lines(&rotated) + lines(&log);
        if written == sent {
            Ok(())
        } else {
            Err(format!("{written} lines for {sent} requests"))
        }
    })
    .await;
    assert!(gate.log_contains("access log reopened on SIGUSR1"));
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let up = spawn_upstream("web");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[[services]]\nname = \"web\"\nstable = [\"{}\"]\n", up.addr),
    );
    // Started from a shell with the soft limit a shell often has.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 256 && exec \"$0\" run --config \"$1\""])
        .arg(BIN)
        .arg(&path);
    let gate = Running::start_command(cmd);
    let pid = gate.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "soft = hard: {line}");
    assert_ne!(nums[0], "256", "{line}");
    assert!(gate.log_contains("raised the open-file limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_drop_mid_head_are_not_logged_as_errors() {
    use tokio::io::AsyncWriteExt;
    let up = spawn_upstream("web");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[[services]]\nname = \"web\"\nstable = [\"{}\"]\n", up.addr),
    );
    let gate = Running::start(&path);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", gate.child.id()))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(gate.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: web").await.unwrap();
        drop(s);
    }
    until_ok(
        WAIT,
        "the dropped connections closed by the gate",
        async || {
            if fds() <= before {
                Ok(())
            } else {
                Err(format!("{} descriptors, {before} before", fds()))
            }
        },
    )
    .await;
    // A reload's log line comes after anything those connections logged.
    gate.signal("HUP");
    until_ok(WAIT, "the reload in the log", async || {
        if gate.log_contains("reload") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    assert!(
        !gate.log_contains("Fail to proxy"),
        "{:?}",
        gate.log.lock().unwrap()
    );
}
