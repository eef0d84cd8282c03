//! Automatic certificates against a real ACME server (Debian's pebble): issuance over
//! HTTP-01 and TLS-ALPN-01, renewal near expiry, a refused name keeping its old
//! certificate, and a restart reusing what was stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::Duration;

use common::acme::*;
use common::tls::*;
use common::*;
use serde_json::Value;

struct Ports {
    http: u16,
    https: u16,
}

fn ports() -> Ports {
    Ports {
        http: free_port(),
        https: free_port(),
    }
}

fn gate_toml(
    p: &Ports,
    pebble: &Pebble,
    dir: &std::path::Path,
    extra: &str,
    names: &[&str],
) -> String {
    let hosts: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"[[listeners]]
name = "http"
address = "127.0.0.1:{}"
[[listeners]]
name = "https"
address = "127.0.0.1:{}"
tls = true
[tls]
acme = true
[acme]
directory = "{}"
ca_file = "{}"
dir = "{}"
email = "ops@example.com"
retry_min = "1s"
{extra}
[[services]]
name = "shop"
hosts = [{}]
stable = ["{{STABLE}}"]
"#,
        p.http,
        p.https,
        pebble.directory,
        pebble.api_ca.display(),
        dir.join("acme").display(),
        hosts.join(", ")
    )
}

async fn certificates(gate: &sluice::gate::GateHandle) -> Value {
    admin(
        &client(),
        gate,
        reqwest::Method::GET,
        "/api/v1/certificates",
        None,
        None,
    )
    .await
    .1
}

/// The certificate the API shows for `name`, once it has one from the ACME server.
async fn wait_issued(
    gate: &sluice::gate::GateHandle,
    name: &str,
    not_serial: Option<&str>,
) -> Value {
    until_ok(
        LONG_WAIT,
        &format!("a certificate for {name}"),
        async || {
            let v = certificates(gate).await;
            let found = v["certificates"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|c| c["name"] == name && c["source"] == "acme")
                })
                .cloned();
            match found {
                Some(c) if not_serial.is_none_or(|s| c["serial"] != s) => Ok(c),
                _ => Err(v.to_string()),
            }
        },
    )
    .await
}

/// The history page of events of `kind`, once it has one.
async fn history_of(gate: &sluice::gate::GateHandle, kind: &str, limit: Duration) -> Value {
    let path = format!("/api/v1/history?kind={kind}");
    until_ok(limit, &format!("{kind} in history"), async || {
        let v = admin_get(gate, &path).await;
        if v["items"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}

async fn https_get(pebble: &Pebble, name: &str, port: u16) -> (u16, String) {
    let c = https_client(
        &[&pebble.issuing_root],
        name,
        format!("127.0.0.1:{port}").parse().unwrap(),
    );
    let r = c
        .get(format!("https://{name}:{port}/"))
        .send()
        .await
        .expect("the issued certificate is trusted");
    (
        r.status().as_u16(),
        r.text().await.unwrap().trim().to_string(),
    )
}

fn start(toml: String, stable: &sluice::demo::DemoUpstream) -> sluice::gate::GateHandle {
    spawn_gate(&toml.replace("{STABLE}", &stable.addr.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_and_a_restart_reuses_it() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions {
        http_port: p.http,
        tls_port: p.https,
        blocked: vec![],
        validity_secs: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stable = spawn_upstream("stable");
    let toml = gate_toml(
        &p,
        &pebble,
        dir.path(),
        "challenge = \"http-01\"\n",
        &["shop.test"],
    );
    let gate = start(toml.clone(), &stable);
    let cert = wait_issued(&gate, "shop.test", None).await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    assert_eq!(
        https_get(&pebble, "shop.test", p.https).await,
        (200, "stable".into())
    );
    // Kept on disk, private.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("acme/certs/shop.test.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let serial = cert["serial"].as_str().unwrap().to_string();
    // In history, with its evidence.
    let history = history_of(&gate, "certificate_issued", WAIT).await;
    assert_eq!(
        history["items"][0]["evidence"]["name"], "shop.test",
        "{history}"
    );
    tokio::task::spawn_blocking(move || gate.drain())
        .await
        .unwrap();

    // A restart serves the stored certificate at once and orders nothing.
    let gate = start(toml, &stable);
    let v = certificates(&gate).await;
    let again = v["certificates"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "shop.test"))
        .cloned()
        .unwrap_or_else(|| panic!("the stored certificate at start: {v}"));
    assert_eq!(again["serial"], serial.as_str());
    assert_eq!(https_get(&pebble, "shop.test", p.https).await.0, 200);
    let board = until_ok(WAIT, "the ACME manager's first pass", async || {
        let v = certificates(&gate).await;
        if v["acme"]["shop.test"]["next_order_ms"].is_u64() {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(board["acme"]["shop.test"]["orders"], 0, "{board}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_certificate_and_renews_it_before_expiry() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions {
        http_port: p.http,
        tls_port: p.https,
        blocked: vec![],
        validity_secs: 120,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stable = spawn_upstream("stable");
    let gate = start(
        gate_toml(
            &p,
            &pebble,
            dir.path(),
            "challenge = \"tls-alpn-01\"\nrenew_before = \"100s\"\n",
            &["alpn.test"],
        ),
        &stable,
    );
    let first = wait_issued(&gate, "alpn.test", None).await;
    assert_eq!(
        https_get(&pebble, "alpn.test", p.https).await,
        (200, "stable".into())
    );
    // Valid for two minutes, renewed 100 s (plus jitter) before: within about 20 s.
    let renewed = wait_issued(&gate, "alpn.test", first["serial"].as_str()).await;
    assert!(
        renewed["not_after_ms"].as_u64() > first["not_after_ms"].as_u64(),
        "{renewed}"
    );
    assert_eq!(https_get(&pebble, "alpn.test", p.https).await.0, 200);
    let m = metrics_text(&client(), &gate).await;
    assert!(
        m.contains("sluice_tls_handshakes_total{listener=\"https\",result=\"acme\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_keeps_its_old_certificate_and_says_so() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions {
        http_port: p.http,
        tls_port: p.https,
        blocked: vec!["blocked.test".into()],
        validity_secs: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A certificate stored by an earlier run, due for renewal (10 days left, renew 30 days
    // before): the server refuses the name.
    let certs = dir.path().join("acme/certs");
    std::fs::create_dir_all(&certs).unwrap();
    let old = make_cert(&certs, "shop.blocked.test", &["shop.blocked.test"], 10);
    std::fs::rename(&old.cert, certs.join("shop.blocked.test.crt")).unwrap();
    std::fs::rename(&old.key, certs.join("shop.blocked.test.key")).unwrap();
    let stable = spawn_upstream("stable");
    let gate = start(
        gate_toml(
            &p,
            &pebble,
            dir.path(),
            "challenge = \"http-01\"\n",
            &["shop.blocked.test"],
        ),
        &stable,
    );
    let failed = history_of(&gate, "certificate_failed", LONG_WAIT).await;
    let e = &failed["items"][0];
    assert_eq!(e["evidence"]["name"], "shop.blocked.test", "{e}");
    assert!(
        e["evidence"]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("rejectedIdentifier"),
        "{e}"
    );
    // The old certificate keeps serving.
    let https = format!("127.0.0.1:{}", p.https).parse().unwrap();
    assert_eq!(
        served_names(https, Some("shop.blocked.test"))
            .await
            .unwrap(),
        ["shop.blocked.test"]
    );
    let c = https_client(&[&old.pem], "shop.blocked.test", https);
    let r = c
        .get(format!("https://shop.blocked.test:{}/", p.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The issue's story: one service says `tls.acme = true` and `redirect_https = true`, the gate
/// opens a plain and a TLS port, and gets a certificate (HTTP-01 answered before the
/// redirect), a redirect, and HTTPS traffic with the canary features; `sluice status` shows
/// the certificate. Another service, without either, keeps plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_asking_for_acme_gets_a_certificate_a_redirect_and_canaries_over_https() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions {
        http_port: p.http,
        tls_port: p.https,
        blocked: vec![],
        validity_secs: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary, intranet) = (
        spawn_upstream("stable"),
        spawn_upstream("canary"),
        spawn_upstream("intranet"),
    );
    let gate = spawn_gate(&format!(
        r#"[[listeners]]
name = "http"
address = "127.0.0.1:{http}"
[[listeners]]
name = "https"
address = "127.0.0.1:{https}"
tls = true
[acme]
directory = "{directory}"
ca_file = "{ca}"
dir = "{dir}"
retry_min = "1s"
[[services]]
name = "shop"
hosts = ["shop.test"]
stable = ["{stable}"]
canary = ["{canary}"]
tls.acme = true
redirect_https = true
[[services]]
name = "intranet"
hosts = ["intranet.test"]
stable = ["{intranet}"]
"#,
        http = p.http,
        https = p.https,
        directory = pebble.directory,
        ca = pebble.api_ca.display(),
        dir = dir.path().join("acme").display(),
        stable = stable.addr,
        canary = canary.addr,
        intranet = intranet.addr,
    ));
    let cert = wait_issued(&gate, "shop.test", None).await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    // Only the service that asked is ordered for.
    let v = certificates(&gate).await;
    assert!(v["acme"]["intranet.test"].is_null(), "{v}");

    // Plain HTTP: the shop is redirected, the intranet is served.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |host: &'static str| {
        plain
            .get(format!("http://127.0.0.1:{}/cart?item=1", p.http))
            .header("host", host)
            .send()
    };
    let r = get("shop.test").await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://shop.test:{}/cart?item=1", p.https).as_str()
    );
    let r = get("intranet.test").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "intranet");

    // HTTPS with the canary features: the tester header, weight and a Secure sticky cookie.
    let c = https_client(
        &[&pebble.issuing_root],
        "shop.test",
        format!("127.0.0.1:{}", p.https).parse().unwrap(),
    );
    let url = format!("https://shop.test:{}/", p.https);
    let r = c
        .get(&url)
        .header("x-sluice-arm", "canary")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "canary");
    set_weight(&gate, "shop", 50.0).await;
    let r = c.get(&url).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // The services API and `sluice status` show the host's certificate.
    let v = admin_get(&gate, "/api/v1/services/shop").await;
    assert_eq!(v["tls"][0]["host"], "shop.test", "{v}");
    assert_eq!(v["tls"][0]["source"], "acme", "{v}");
    assert_eq!(v["tls"][0]["not_after_ms"], cert["not_after_ms"], "{v}");
    let (code, out, err) = cli(gate.admin_addr, None, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("tls") && l.contains("shop.test"))
        .unwrap_or_else(|| panic!("no tls line for shop.test in:\n{out}"));
    assert!(line.contains("acme") && line.contains("Pebble"), "{line}");
}
