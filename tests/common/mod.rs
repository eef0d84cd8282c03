//! Test scaffolding: real upstreams on 127.0.0.1:0 and a real gate in this process.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::config::Config;
use sluice::demo::{DemoUpstream, Load, LoadConfig, LoadReport};
use sluice::gate::{self, GateHandle};

/// How long a test waits for something an idle machine does in well under a second or
/// two (a cut-back, an event, a probe's verdict, a deployment of demo upstreams): the
/// tests run on loaded machines, so every wait is bounded generously, never tight.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a test waits for slow things: containers, a browser, a process starting.
pub const LONG_WAIT: Duration = Duration::from_secs(120);

/// A demo upstream named `name` on a free port.
pub fn spawn_upstream(name: &str) -> DemoUpstream {
    DemoUpstream::spawn(name).expect("upstream starts")
}

/// A loopback port free a moment ago (bound, then released), for a server started by
/// another process.
pub fn loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A port nothing listens on (bound, then released).
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// The `[server]` table every test gate uses: free ports, short drain.
pub fn server_table() -> &'static str {
    "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\ndrain_timeout = \"5s\"\n"
}

/// An SQLite history file of its own for a test gate (under one directory per test run).
pub fn scratch_db() -> String {
    let dir = std::env::temp_dir().join(format!("sluice-tests-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let n = NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("sqlite://{}/gate-{n}.db", dir.display())
}

static NEXT_DB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A gate running `services_toml` (plus any other tables) on free ports, with its own
/// history file unless the tables name a `[store]`.
pub fn spawn_gate(services_toml: &str) -> GateHandle {
    let store = if services_toml.contains("[store]") {
        String::new()
    } else {
        format!("[store]\nurl = \"{}\"\n", scratch_db())
    };
    let text = format!("{}{store}{services_toml}", server_table());
    let config = Config::parse(&text, "test.toml").expect("test config is valid");
    gate::start(config).expect("gate starts")
}

/// A gate from a config file (for reloads).
pub fn spawn_gate_from_file(path: &std::path::Path) -> GateHandle {
    let config = Config::load(path).expect("test config is valid");
    gate::start(config).expect("gate starts")
}

/// An HTTP client that keeps no cookies of its own.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .build()
        .unwrap()
}

/// `http://proxy_addr{path}`.
pub fn proxy_url(gate: &GateHandle, path: &str) -> String {
    format!("http://{}{}", gate.proxy_addr, path)
}

/// `http://admin_addr{path}`.
pub fn admin_url(gate: &GateHandle, path: &str) -> String {
    format!("http://{}{}", gate.admin_addr, path)
}

/// GET through the proxy with a Host header; returns (status, body, set-cookie).
pub async fn get(
    c: &reqwest::Client,
    gate: &GateHandle,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut req = c.get(proxy_url(gate, path)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("proxy answers");
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        resp.text().await.unwrap().trim().to_string(),
        cookie,
    )
}

/// An admin API call; returns (status, JSON body).
pub async fn admin(
    c: &reqwest::Client,
    gate: &GateHandle,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, admin_url(gate, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// `GET path` on the admin API without a token: the JSON body, whatever the status.
pub async fn admin_get(gate: &GateHandle, path: &str) -> Value {
    admin(&client(), gate, reqwest::Method::GET, path, None, None)
        .await
        .1
}

/// The service `web` as the API shows it.
pub async fn web_service(gate: &GateHandle) -> Value {
    admin_get(gate, "/api/v1/services/web").await
}

/// The `/metrics` text.
pub async fn metrics_text(c: &reqwest::Client, gate: &GateHandle) -> String {
    c.get(admin_url(gate, "/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap()
}

/// An admin call with a raw body and content type; returns (status, JSON body).
pub async fn admin_raw(
    c: &reqwest::Client,
    gate: &GateHandle,
    method: reqwest::Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let resp = c
        .request(method, admin_url(gate, path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("admin answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
/// Starts a deployment of service `web`; returns (status, JSON body).
pub async fn deploy(gate: &GateHandle, body: Value) -> (u16, Value) {
    admin(
        &client(),
        gate,
        reqwest::Method::POST,
        "/api/v1/services/web/deployments",
        None,
        Some(body),
    )
    .await
}

/// The states a deployment ends in.
pub const ENDED: &[&str] = &["succeeded", "rolled_back", "aborted"];

/// The first event of `kind` in a `GET /api/v1/deployments/{id}` answer.
pub fn event_of<'a>(deployment: &'a Value, kind: &str) -> Option<&'a Value> {
    deployment["events"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == kind)
}

/// The kinds of the events in a `GET /api/v1/deployments/{id}` answer.
pub fn event_kinds(deployment: &Value) -> Vec<String> {
    deployment["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// `GET /api/v1/deployments/{id}`.
pub async fn deployment(gate: &GateHandle, id: &str) -> Value {
    admin(
        &client(),
        gate,
        reqwest::Method::GET,
        &format!("/api/v1/deployments/{id}"),
        None,
        None,
    )
    .await
    .1
}

/// Polls the deployment until its state is one of `states`.
pub async fn wait_state(gate: &GateHandle, id: &str, states: &[&str], limit: Duration) -> Value {
    let until = Instant::now() + limit;
    loop {
        let v = deployment(gate, id).await;
        let state = v["state"].as_str().unwrap_or("");
        if states.contains(&state) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "deployment stuck in '{state}' after {limit:?}: {}",
            v["live"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it is true or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f().await {
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` until it gives `Ok`, and returns that; after `limit`, fails with the last
/// `Err` (which says what was seen instead).
pub async fn until_ok<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let until = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < until,
                "timed out after {limit:?} waiting for {what}: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Load on `gate`'s proxy at `rate` (see [`LoadConfig::new`]) that goes on for as long as
/// a test on a slow machine may need (its default hard stop is a minute); dropping the
/// [`Load`] stops it.
pub fn load_config(gate: &GateHandle, rate: u32) -> LoadConfig {
    LoadConfig {
        max_duration: Duration::from_secs(600),
        ..LoadConfig::new(gate.proxy_addr, rate)
    }
}

/// Polls a running load's counts until `ok` holds for them, and returns them.
pub async fn load_reaches(
    load: &Load,
    limit: Duration,
    what: &str,
    ok: impl Fn(&LoadReport) -> bool,
) -> LoadReport {
    until_ok(limit, what, async || {
        let r = load.report();
        if ok(&r) {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
}

/// An absence check made meaningful: first waits (within `limit`) until `count` has
/// stopped moving for a quiet half second (what was already on its way has arrived), then
/// watches it for `window` more and asserts it did not move. `what` names what must stop.
pub async fn assert_stops(
    limit: Duration,
    window: Duration,
    what: &str,
    mut count: impl FnMut() -> u64,
) -> u64 {
    let quiet = Duration::from_millis(500);
    let until = Instant::now() + limit;
    let mut last = count();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            break;
        }
        assert!(
            Instant::now() < until,
            "{what}: still moving after {limit:?} (at {now})"
        );
    }
    tokio::time::sleep(window).await;
    assert_eq!(count(), last, "{what}: it moved again");
    last
}

/// Polls `/metrics` until it has every one of `lines`; returns the text.
pub async fn metrics_with(
    c: &reqwest::Client,
    gate: &GateHandle,
    limit: Duration,
    lines: &[&str],
) -> String {
    until_ok(limit, "the metrics", async || {
        let text = metrics_text(c, gate).await;
        match lines.iter().find(|l| !text.contains(**l)) {
            None => Ok(text),
            Some(missing) => Err(format!("{missing} missing")),
        }
    })
    .await
}

/// Reads an SSE response until a whole event of `kind` has arrived (within `limit`), and
/// returns its data; other events are skipped.
pub async fn next_sse(resp: &mut reqwest::Response, kind: &str, limit: Duration) -> Value {
    let mut pending = String::new();
    tokio::time::timeout(limit, async {
        loop {
            while let Some(end) = pending.find("\n\n") {
                let message: String = pending.drain(..end + 2).collect();
                let field = |name: &str| {
                    message
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::trim)
                        .map(str::to_string)
                };
                if field("event:").as_deref() == Some(kind) {
                    let data = field("data:").expect("an event has data");
                    return serde_json::from_str(&data).expect("JSON data");
                }
            }
            let chunk = resp
                .chunk()
                .await
                .expect("the stream reads")
                .expect("the stream stays open");
            pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event on the stream within {limit:?}: {pending:?}"))
}

/// The next text message on a WebSocket (within `limit`), as JSON.
pub async fn next_ws_json<S>(ws: &mut S, limit: Duration) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(limit, async {
        loop {
            let msg = ws
                .next()
                .await
                .expect("the socket stays open")
                .expect("the socket reads");
            if let Ok(text) = msg.to_text() {
                if !text.is_empty() {
                    return serde_json::from_str(text).expect("a JSON message");
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no WebSocket message within {limit:?}"))
}

/// The next event of `kind` on a bus subscription, within `limit`.
pub async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<sluice::events::Event>>,
    kind: sluice::events::EventKind,
    limit: Duration,
) -> std::sync::Arc<sluice::events::Event> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(e) if e.kind == kind => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event bus: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {} event within {limit:?}", kind.as_str()))
}

pub mod acme;
pub mod browser;
pub mod docker;
pub mod pg;
pub mod prometheus;
pub mod receivers;
pub mod recorder;
pub mod tls;

/// Runs the `sluice` binary's CLI against the admin API at `admin`: exit code, stdout, stderr.
pub async fn cli(
    admin: std::net::SocketAddr,
    token: Option<&str>,
    args: &[&str],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .env("SLUICE_ADMIN_URL", format!("http://{admin}"))
        .env_remove("SLUICE_TOKEN");
    if let Some(t) = token {
        cmd.env("SLUICE_TOKEN", t);
    }
    let out = tokio::time::timeout(LONG_WAIT, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("sluice {args:?} did not finish within {LONG_WAIT:?}"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs curl (bounded to 30 s); returns (success, stdout + stderr).
pub fn curl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sets `service`'s canary weight (percent) through the admin API; panics unless it is taken.
pub async fn set_weight(gate: &GateHandle, service: &str, percent: f64) {
    let (status, v) = admin(
        &client(),
        gate,
        reqwest::Method::POST,
        &format!("/api/v1/services/{service}/weight"),
        None,
        Some(serde_json::json!({ "weight": percent })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}
