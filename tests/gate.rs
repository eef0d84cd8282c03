//! The gate end to end: real upstreams, a real gate, real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::collections::HashMap;

use common::*;
use reqwest::Method;
use serde_json::json;

/// A "web" service with a stable and a canary upstream at `weight`, behind a gate with
/// `extra` tables (e.g. `[admin]`) in front.
fn canary_gate(
    extra: &str,
    weight: f64,
) -> (
    sluice::demo::DemoUpstream,
    sluice::demo::DemoUpstream,
    sluice::gate::GateHandle,
) {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let services = canary_service(&s.addr.to_string(), &c.addr.to_string(), weight);
    let gate = spawn_gate(&format!("{extra}{services}"));
    (s, c, gate)
}

fn canary_service(stable: &str, canary: &str, weight: f64) -> String {
    format!(
        "[[services]]\nname = \"web\"\nstable = [\"{stable}\"]\ncanary = [\"{canary}\"]\ncanary_weight = {weight:?}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_is_within_two_points_of_the_weight() {
    let (s, c, gate) = canary_gate("", 10.0);
    let client = client();
    let n = 5_000;
    let mut canary = 0;
    for _ in 0..n {
        let (status, body, _) = get(&client, &gate, "any", "/", &[]).await;
        assert_eq!(status, 200);
        if body == "canary" {
            canary += 1;
        }
    }
    let share = canary as f64 / n as f64;
    assert!((share - 0.10).abs() <= 0.02, "canary share {share}");
    assert_eq!(s.hits() + c.hits(), n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_arm_and_only_stable_ones_move_up() {
    let (_s, _c, gate) = canary_gate("", 20.0);
    let client = client();
    // 300 clients arrive without a cookie and get one.
    let mut clients = Vec::new();
    for _ in 0..300 {
        let (_, arm, cookie) = get(&client, &gate, "any", "/", &[]).await;
        let cookie = cookie.expect("a new client gets a sticky cookie");
        let pair = cookie.split(';').next().unwrap().to_string();
        clients.push((pair, arm));
    }
    // Same weight: every client stays where it is, and gets no new cookie.
    for (cookie, arm) in clients.iter().take(100) {
        for _ in 0..3 {
            let (_, again, set) = get(&client, &gate, "any", "/", &[("cookie", cookie)]).await;
            assert_eq!(&again, arm);
            assert!(set.is_none());
        }
    }
    let (status, _) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({"weight": 60})),
    )
    .await;
    assert_eq!(status, 200);
    let mut moved = 0;
    for (cookie, arm) in &clients {
        let (_, now, _) = get(&client, &gate, "any", "/", &[("cookie", cookie)]).await;
        if arm == "canary" {
            assert_eq!(now, "canary", "a canary client went back to stable");
        } else if now == "canary" {
            moved += 1;
        }
    }
    let stable_before = clients.iter().filter(|(_, a)| a == "stable").count();
    // From 20 % to 60 %: half of the stable clients move (40 of the 80 points).
    let share = moved as f64 / stable_before as f64;
    assert!(
        (0.35..=0.65).contains(&share),
        "moved {moved} of {stable_before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tester_header_picks_the_arm_and_can_be_disabled() {
    let (s, c) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let services = canary_service(&s.addr.to_string(), &c.addr.to_string(), 0.0);
    let gate = spawn_gate(&services);
    let client = client();
    for _ in 0..5 {
        let (_, body, _) = get(&client, &gate, "x", "/", &[("x-sluice-arm", "canary")]).await;
        assert_eq!(body, "canary");
        let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
        assert_eq!(body, "stable");
    }
    drop(gate);
    let gate = spawn_gate(&format!("[routing]\nallow_override = false\n{services}"));
    let (_, body, _) = get(&client, &gate, "x", "/", &[("x-sluice-arm", "canary")]).await;
    assert_eq!(body, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_path_prefixes_route_to_their_services() {
    let (web, api, shop) = (
        spawn_upstream("web"),
        spawn_upstream("api"),
        spawn_upstream("shop"),
    );
    let gate = spawn_gate(&format!(
        r#"
[[services]]
name = "web"
hosts = ["web.test"]
stable = ["{}"]
[[services]]
name = "api"
hosts = ["web.test"]
path_prefix = "/api"
stable = ["{}"]
[[services]]
name = "shop"
hosts = ["*.shop.test"]
stable = ["{}"]
"#,
        web.addr, api.addr, shop.addr
    ));
    let client = client();
    let cases = [
        ("web.test", "/", 200, "web"),
        ("WEB.test:8080", "/index.html", 200, "web"),
        ("web.test", "/api/users", 200, "api"),
        ("web.test", "/apix", 200, "web"),
        ("eu.shop.test", "/", 200, "shop"),
    ];
    for (host, path, status, body) in cases {
        let got = get(&client, &gate, host, path, &[]).await;
        assert_eq!((got.0, got.1.as_str()), (status, body), "{host}{path}");
    }
    let (status, body, _) = get(&client, &gate, "other.test", "/", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no service"), "{body}");
    let metrics = metrics_text(&client, &gate).await;
    assert!(metrics.contains("sluice_unrouted_requests_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_moves_on_to_the_next_upstream_of_the_arm() {
    let live = spawn_upstream("live");
    let dead = dead_addr();
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{dead}\", \"{}\"]\n",
        live.addr
    ));
    let client = client();
    for _ in 0..20 {
        let (status, body, _) = get(&client, &gate, "x", "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "live"));
    }
    // POST too: a refused connect never reached the app, so it is safe to try elsewhere.
    let resp = client
        .post(proxy_url(&gate, "/"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = metrics_text(&client, &gate).await;
    assert!(
        metrics.contains("sluice_upstream_connect_failures_total{arm=\"stable\",service=\"web\"}")
    );
    // All upstreams of the arm down: the client gets a 502, recorded as a 5xx.
    drop(live);
    let (status, _, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_hop_by_hop_ones_removed() {
    let up = spawn_upstream("echo");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        up.addr
    ));
    let client = client();
    let resp = client
        .get(proxy_url(&gate, "/echo"))
        .header("host", "site.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    // The client is no trusted proxy: its X-Forwarded-For claim is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "site.test");
    assert_eq!(h["host"], "site.test");
    assert!(
        h.get("x-secret").is_none(),
        "Connection-named header leaked: {h}"
    );
    assert!(h.get("keep-alive").is_none(), "keep-alive leaked: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_and_rollback_apply_to_the_next_request() {
    let (_s, _c, gate) = canary_gate("", 0.0);
    let client = client();
    let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(body, "stable");
    let (status, v) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({"weight": 100})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["service"]["canary_weight"], 100.0);
    for _ in 0..10 {
        let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
        assert_eq!(body, "canary");
    }
    let (status, v) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/rollback",
        None,
        Some(json!({"reason": "errors in the logs"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["service"]["state"], "rolled_back");
    assert_eq!(v["event"]["kind"], "rolled_back");
    assert!(v["event"]["message"]
        .as_str()
        .unwrap()
        .contains("errors in the logs"));
    for _ in 0..10 {
        let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
        assert_eq!(body, "stable");
    }
    // Testers can still reach the held canary to look at it.
    let (_, body, _) = get(&client, &gate, "x", "/", &[("x-sluice-arm", "canary")]).await;
    assert_eq!(body, "canary");
    // A new canary lifts the hold; promote makes it stable.
    let next = spawn_upstream("next");
    let (status, v) = admin(
        &client,
        &gate,
        Method::PUT,
        "/api/v1/services/web/canary",
        None,
        Some(json!({"upstreams": [next.addr.to_string()], "weight": 100})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(body, "next");
    let (status, v) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/promote",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["service"]["state"], "stable");
    assert_eq!(
        v["service"]["arms"]["stable"]["upstreams"][0],
        next.addr.to_string()
    );
    let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(body, "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_per_arm_counts_errors_and_quantiles() {
    let (_s, _c, gate) = canary_gate("", 0.0);
    let client = client();
    for _ in 0..40 {
        get(&client, &gate, "x", "/", &[]).await;
    }
    for _ in 0..10 {
        get(
            &client,
            &gate,
            "x",
            "/status/503",
            &[("x-sluice-arm", "canary")],
        )
        .await;
    }
    for _ in 0..10 {
        get(
            &client,
            &gate,
            "x",
            "/status/404",
            &[("x-sluice-arm", "canary")],
        )
        .await;
    }
    // A request is counted once its answer is on its way: a client may read the answer a
    // moment before the count moves, so the counts are polled until all 60 are in.
    let v = until_ok(WAIT, "the requests to be counted", async || {
        let (status, v) = admin(
            &client,
            &gate,
            Method::GET,
            "/api/v1/services/web",
            None,
            None,
        )
        .await;
        assert_eq!(status, 200);
        let n = |arm: &str| v["arms"][arm]["stats"]["requests"].as_u64().unwrap_or(0);
        if n("stable") >= 40 && n("canary") >= 20 {
            Ok(v)
        } else {
            Err(v["arms"].to_string())
        }
    })
    .await;
    let stable = &v["arms"]["stable"]["stats"];
    let canary = &v["arms"]["canary"]["stats"];
    assert_eq!(stable["requests"], 40);
    assert_eq!(stable["status"]["2xx"], 40);
    assert_eq!(stable["error_rate"], 0.0);
    assert!(stable["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(stable["p99_ms"].as_f64().unwrap() >= stable["p50_ms"].as_f64().unwrap());
    assert_eq!(canary["requests"], 20);
    assert_eq!(canary["status"]["5xx"], 10);
    assert_eq!(canary["status"]["4xx"], 10);
    assert_eq!(canary["error_rate"], 0.5);
    metrics_with(
        &client,
        &gate,
        WAIT,
        &[
            r#"sluice_requests_total{arm="canary",code_class="5xx",service="web"} 10"#,
            r#"sluice_requests_total{arm="stable",code_class="2xx",service="web"} 40"#,
            r#"sluice_request_duration_seconds_count{arm="stable",service="web"} 40"#,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_auth_and_bad_input_are_refused_without_change() {
    let (s, _c, gate) = canary_gate("[admin]\ntoken = \"s3cret-token\"\n", 10.0);
    let client = client();
    let t = Some("s3cret-token");
    let (status, v) = admin(&client, &gate, Method::GET, "/api/v1/services", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, _) = admin(
        &client,
        &gate,
        Method::GET,
        "/api/v1/services",
        Some("s3cret-tokeN"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, v) = admin(&client, &gate, Method::GET, "/api/v1/services", t, None).await;
    assert_eq!(status, 200);
    let version = v["table_version"].as_u64().unwrap();
    // healthz and metrics stay open for probes and scrapers.
    assert_eq!(
        client
            .get(admin_url(&gate, "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(admin_url(&gate, "/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let weight = "/api/v1/services/web/weight";
    let bad = [
        (
            Method::POST,
            weight,
            Some(json!({"weight": 101})),
            400,
            "weight",
        ),
        (
            Method::POST,
            weight,
            Some(json!({"weight": -1})),
            400,
            "weight",
        ),
        (
            Method::POST,
            weight,
            Some(json!({"weight": "ten"})),
            400,
            "weight",
        ),
        (
            Method::POST,
            weight,
            Some(json!({"wieght": 10})),
            400,
            "wieght",
        ),
        (Method::POST, weight, Some(json!([1, 2])), 400, "invalid"),
        (Method::POST, weight, None, 400, "weight"),
        (
            Method::POST,
            "/api/v1/services/nope/weight",
            Some(json!({"weight": 1})),
            404,
            "nope",
        ),
        (Method::GET, "/api/v1/services/nope", None, 404, "nope"),
        (
            Method::POST,
            "/api/v1/services/web/canary",
            Some(json!({"upstreams": []})),
            405,
            "method",
        ),
        (
            Method::PUT,
            "/api/v1/services/web/canary",
            Some(json!({"upstreams": []})),
            400,
            "upstreams",
        ),
        (
            Method::PUT,
            "/api/v1/services/web/canary",
            Some(json!({"upstreams": ["not an address"]})),
            400,
            "upstreams[0]",
        ),
        (
            Method::PUT,
            "/api/v1/services/web/canary",
            Some(json!({"upstreams": [s.addr.to_string()]})),
            400,
            "stable",
        ),
        (Method::POST, "/api/v1/nothing", None, 404, "endpoint"),
    ];
    for (method, path, body, want, mention) in bad {
        let (status, v) = admin(&client, &gate, method.clone(), path, t, body.clone()).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            msg.contains(&mention.to_lowercase()),
            "{method} {path}: '{msg}' lacks '{mention}'"
        );
    }
    // Not JSON, not JSON at all, and too large.
    let raw = |method, path, ctype, body: String| {
        admin_raw(&client, &gate, method, path, "s3cret-token", ctype, body)
    };
    let (status, _) = raw(
        Method::POST,
        weight,
        "application/json",
        "{weight: 1".into(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = raw(Method::POST, weight, "text/plain", "weight=1".into()).await;
    assert_eq!(status, 415);
    let huge = format!("{{\"upstreams\": [\"{}\"]}}", "1".repeat(100_000));
    let canary = "/api/v1/services/web/canary";
    let (status, v) = raw(Method::PUT, canary, "application/json", huge).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "payload_too_large");

    // State conflicts: 409.
    let (status, _) = admin(
        &client,
        &gate,
        Method::POST,
        "/api/v1/services/web/rollback",
        t,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let version_after_rollback = version + 1;
    for (path, body) in [
        ("/api/v1/services/web/rollback", None),
        ("/api/v1/services/web/weight", Some(json!({"weight": 5}))),
        ("/api/v1/services/web/promote", None),
    ] {
        let (status, v) = admin(&client, &gate, Method::POST, path, t, body).await;
        assert_eq!(status, 409, "{path}: {v}");
        assert_eq!(v["error"]["code"], "conflict");
    }
    let (_, v) = admin(&client, &gate, Method::GET, "/api/v1/services", t, None).await;
    assert_eq!(
        v["table_version"].as_u64().unwrap(),
        version_after_rollback,
        "refused requests published a table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let Some(promtool) = which("promtool") else {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_TOOLS").is_none(),
            "promtool is required (Debian package 'prometheus')"
        );
        eprintln!("skipped: promtool not installed");
        return;
    };
    let (_s, _c, gate) = canary_gate("", 50.0);
    let client = client();
    for _ in 0..20 {
        get(&client, &gate, "x", "/", &[]).await;
    }
    let text = metrics_text(&client, &gate).await;
    for family in [
        "sluice_requests_total",
        "sluice_request_duration_seconds",
        "sluice_canary_weight",
        "sluice_routing_table_version",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_grafana_dashboard_queries_metrics_the_gate_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana-sluice.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let declared = include_str!("../src/metrics.rs");
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel without a place: {p}"
        );
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        exprs.push(a["expr"].as_str().unwrap().to_string());
    }
    assert!(exprs.len() >= 10);
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("sluice_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
            assert!(
                declared.contains(&format!("\"{family}\"")),
                "{family} (in {e}) is not a metric the gate exports"
            );
            rest = &rest[i + name.len()..];
        }
    }
    // Every query parses as PromQL (Grafana's variables filled in).
    let Some(promtool) = which("promtool") else {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_TOOLS").is_none(),
            "promtool is required"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__range", "1h").replace("$service", ".*");
            format!(
                "      - record: grafana:q{i}\n        expr: {}\n",
                serde_json::to_string(&e).unwrap()
            )
        })
        .collect();
    let file = dir.path().join("rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: grafana\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_and_refuses_a_bad_one() {
    let (a, b) = (spawn_upstream("a"), spawn_upstream("b"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let write = |body: &str| std::fs::write(&path, format!("{}{body}", server_table())).unwrap();
    write(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        a.addr
    ));
    let gate = spawn_gate_from_file(&path);
    let client = client();
    let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(body, "a");
    // A keep-alive connection opened before the reload keeps working after it.
    let (_, v) = admin(&client, &gate, Method::GET, "/api/v1/services", None, None).await;
    let v1 = v["table_version"].as_u64().unwrap();

    write(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\ncanary_weight = 5.0\n",
        a.addr
    ));
    let (status, v) = admin(&client, &gate, Method::POST, "/api/v1/reload", None, None).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("services[0].canary_weight"));
    let (_, v) = admin(&client, &gate, Method::GET, "/api/v1/services", None, None).await;
    assert_eq!(
        v["table_version"].as_u64().unwrap(),
        v1,
        "a bad file changed the table"
    );
    let (status, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "a"));

    write(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n[[services]]\nname = \"other\"\nhosts = [\"other.test\"]\nstable = [\"{}\"]\n",
        b.addr, a.addr
    ));
    let (status, v) = admin(&client, &gate, Method::POST, "/api/v1/reload", None, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["table_version"].as_u64().unwrap(), v1 + 1);
    assert_eq!(v["report"]["added"], json!(["other"]));
    assert_eq!(v["report"]["changed"], json!(["web"]));
    let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
    assert_eq!(body, "b");
    let (_, body, _) = get(&client, &gate, "other.test", "/", &[]).await;
    assert_eq!(body, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_over_an_arm() {
    let ups: Vec<_> = (0..3).map(|i| spawn_upstream(&format!("u{i}"))).collect();
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [{}]\n",
        list.join(", ")
    ));
    let client = client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let (_, body, _) = get(&client, &gate, "x", "/", &[]).await;
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 80), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = spawn_upstream("pooled");
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n",
        up.addr
    ));
    let client = client();
    for _ in 0..200 {
        let (status, _, _) = get(&client, &gate, "x", "/", &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(up.hits(), 200);
    // One pooled connection per worker at most, give or take a race at start.
    assert!(
        up.connections() <= 4,
        "{} upstream connections for 200 requests",
        up.connections()
    );
}
