//! The dashboard in a real headless Chromium: it loads without console errors, shows the
//! services, follows a weight change live, and a rollback clicked in the page reaches the
//! gate. Also the stream tickets browsers use, over plain HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::browser::{self, Browser};
use common::*;
use reqwest::Method;
use serde_json::json;
use sluice::demo::Load;

const TOKEN: &str = "dashboard-test-token-0123";

fn gate_config(stable: &str, canary: &str, api: &str) -> String {
    format!(
        r#"[admin]
token = "{TOKEN}"
[[services]]
name = "web"
stable = ["{stable}"]
canary = ["{canary}"]
canary_weight = 10.0
[[services]]
name = "api"
hosts = ["api.test"]
stable = ["{api}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_state_and_a_click_rolls_back() {
    if !browser::available() {
        return;
    }
    let (stable, canary, api) = (
        spawn_upstream("stable"),
        spawn_upstream("canary"),
        spawn_upstream("api"),
    );
    // A TLS listener with a certificate for the api's host: its card shows it.
    let dir = tempfile::tempdir().unwrap();
    let cert = common::tls::make_cert(dir.path(), "api", &["api.test"], 90);
    let gate = spawn_gate(&format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[[listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = true\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.cert.display(),
        cert.key.display(),
        gate_config(
            &stable.addr.to_string(),
            &canary.addr.to_string(),
            &api.addr.to_string(),
        )
    ));
    let load = Load::start(load_config(&gate, 150)).unwrap();
    let b = Browser::start().await;
    b.go(&format!("http://{}/#token={TOKEN}", gate.admin_addr))
        .await;

    let web = r#"[data-service="web"]"#;
    let limit = LONG_WAIT;
    b.wait_text(&format!(r#"{web} [data-field="weight"]"#), limit, |t| {
        t == "10%"
    })
    .await;
    b.wait_text(r#"[data-service="api"] [data-field="state"]"#, limit, |t| {
        t == "stable"
    })
    .await;
    b.wait_text(
        r#"[data-service="api"] [data-host="api.test"]"#,
        limit,
        |t| t.starts_with("api.test: file") && t.contains("until"),
    )
    .await;
    // The token left the address bar; the stream is live.
    let href = b.run("return location.href;").await;
    assert!(!href.as_str().unwrap().contains(TOKEN), "{href}");
    b.wait_text("#live", limit, |t| t == "live").await;

    // A weight change made elsewhere shows at once, with its decision.
    let (status, v) = admin(
        &client_with_token(),
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({ "weight": 25 })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    b.wait_text(&format!(r#"{web} [data-field="weight"]"#), limit, |t| {
        t == "25%"
    })
    .await;
    b.wait_text(r#"#decisions li[data-kind="weight_set"]"#, limit, |t| {
        t.contains("25")
    })
    .await;
    // The per-arm charts have data: the canary row shows a request rate.
    b.wait_text(
        &format!(r#"{web} tr[data-arm="canary"] td:nth-child(3)"#),
        limit,
        |t| t.parse::<f64>().is_ok_and(|r| r > 0.0),
    )
    .await;

    // A deployment with steps: its progress shows, and the page can pause it.
    let api_canary = spawn_upstream("api-v2");
    let (status, v) = admin(
        &client_with_token(),
        &gate,
        Method::POST,
        "/api/v1/services/api/deployments",
        None,
        Some(json!({
            "strategy": "canary",
            "upstreams": [api_canary.addr.to_string()],
            "label": "api-v2",
            "steps": [{ "weight": 20, "bake": "1h" }, { "pause": true }, { "weight": 100, "bake": "1m" }],
        })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let api_card = r#"[data-service="api"]"#;
    b.wait_text(&format!("{api_card} .step.current"), limit, |t| {
        t.starts_with("20%")
    })
    .await;
    b.wait_text(
        &format!(r#"{api_card} [data-field="deployment"]"#),
        limit,
        |t| t.contains("api-v2") && t.contains("step 1"),
    )
    .await;
    b.click(&format!(
        r#"{api_card} button[data-action="deployment-pause"]"#
    ))
    .await;
    b.wait_text("#confirm-text", limit, |t| t.contains(&id))
        .await;
    b.click("#confirm-yes").await;
    eventually(limit, "the deployment paused", async || {
        get_with_token(&gate, &format!("/api/v1/deployments/{id}")).await["state"] == "paused"
    })
    .await;

    // Roll back from the page: a confirmation, then the gate does it.
    b.click(&format!(r#"{web} button[data-action="rollback"]"#))
        .await;
    b.wait_text("#confirm-text", limit, |t| t.contains("Roll web back"))
        .await;
    b.click("#confirm-yes").await;
    eventually(limit, "the rollback", async || {
        get_with_token(&gate, "/api/v1/services/web").await["state"] == "rolled_back"
    })
    .await;
    let d = &get_with_token(&gate, "/api/v1/services/web").await["judge"]["last_decision"];
    assert_eq!(d["actor"], "api:dashboard@127.0.0.1", "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("rolled back from the dashboard"),
        "{d}"
    );
    b.wait_text(&format!(r#"{web} [data-field="state"]"#), limit, |t| {
        t == "rolled_back"
    })
    .await;
    b.wait_text(r#"#decisions li[data-kind="rolled_back"]"#, limit, |t| {
        t.contains("dashboard")
    })
    .await;
    // The page goes on refreshing (every second) without an error: two refreshes after
    // the rollback, done, before the screenshot and the console are read.
    let refreshed = refreshes(&b).await;
    eventually(limit, "two more refreshes of the page", async || {
        refreshes(&b).await >= refreshed + 2
    })
    .await;

    let png = b.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());

    let console = b.console().await;
    let errors: Vec<_> = console
        .iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
    let report = load.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");
}

/// How many `GET /api/v1/services` the page has had answered since this was first called
/// (which starts counting them).
async fn refreshes(b: &Browser) -> u64 {
    b.run(
        r#"if (window.__refreshes === undefined) {
             window.__refreshes = 0;
             const fetch = window.fetch;
             window.fetch = function (path, options) {
               const answer = fetch.apply(this, arguments);
               if (String(path) === "/api/v1/services" && (!options || !options.method || options.method === "GET")) {
                 answer.then(() => { window.__refreshes++; }, () => { window.__refreshes++; });
               }
               return answer;
             };
           }
           return window.__refreshes;"#,
    )
    .await
    .as_u64()
    .expect("a count")
}

async fn get_with_token(gate: &sluice::gate::GateHandle, path: &str) -> serde_json::Value {
    admin(&client(), gate, Method::GET, path, Some(TOKEN), None)
        .await
        .1
}

fn client_with_token() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_tickets_open_the_event_stream_and_nothing_else() {
    let (stable, canary, api) = (
        spawn_upstream("stable"),
        spawn_upstream("canary"),
        spawn_upstream("api"),
    );
    let gate = spawn_gate(&gate_config(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        &api.addr.to_string(),
    ));
    let plain = client();
    // The page itself needs no token; it is strict about what it loads.
    let page = plain.get(admin_url(&gate, "/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/dashboard/app.js"));
    for (path, kind) in [
        ("/dashboard/app.js", "javascript"),
        ("/dashboard/style.css", "css"),
    ] {
        let r = plain.get(admin_url(&gate, path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().contains(kind));
    }
    assert_eq!(
        plain
            .get(admin_url(&gate, "/dashboard/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A ticket needs the token.
    let r = plain
        .post(admin_url(&gate, "/api/v1/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client_with_token()
        .post(admin_url(&gate, "/api/v1/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ticket = r.json::<serde_json::Value>().await.unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ticket.len(), 48);

    // It opens the stream (SSE), and a wrong one does not.
    let mut stream = plain
        .get(admin_url(
            &gate,
            &format!("/api/v1/events?kind=weight_set&ticket={ticket}"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let bad = plain
        .get(admin_url(
            &gate,
            "/api/v1/events?ticket=00112233445566778899aabbccddeeff0011223344556677",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    // Nothing else takes it.
    let other = plain
        .get(admin_url(
            &gate,
            &format!("/api/v1/services?ticket={ticket}"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    let (status, _) = admin(
        &client_with_token(),
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({ "weight": 5 })),
    )
    .await;
    assert_eq!(status, 200);
    // The same ticket opens the WebSocket form of the stream.
    let ws_url = format!(
        "ws://{}/api/v1/events?kind=weight_set&ticket={ticket}",
        gate.admin_addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("a ticket opens the WebSocket");
    assert!(
        tokio_tungstenite::connect_async(
            format!("ws://{}/api/v1/events", gate.admin_addr).as_str()
        )
        .await
        .is_err(),
        "no ticket, no token: refused"
    );
    let (status, _) = admin(
        &client_with_token(),
        &gate,
        Method::POST,
        "/api/v1/services/web/weight",
        None,
        Some(json!({ "weight": 7 })),
    )
    .await;
    assert_eq!(status, 200);
    let v = next_ws_json(&mut ws, WAIT).await;
    assert_eq!(v["kind"], "weight_set", "{v}");
    let v = next_sse(&mut stream, "weight_set", WAIT).await;
    assert_eq!(v["kind"], "weight_set", "{v}");
}
