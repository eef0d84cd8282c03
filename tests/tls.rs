//! HTTPS end to end: a plain and a TLS listener, certificates from files chosen by SNI, the
//! default certificate or a refusal, hot reload while a connection stays open, the
//! redirect, and the canary features over TLS — with real TLS clients (rustls and curl).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::tls::*;
use common::*;

struct Setup {
    dir: tempfile::TempDir,
    shop: CertFiles,
    wild: CertFiles,
    other: CertFiles,
}

fn certs() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"], 90);
    let wild = make_cert(dir.path(), "wild", &["*.apps.test"], 90);
    let other = make_cert(dir.path(), "other", &["default.test"], 90);
    Setup {
        dir,
        shop,
        wild,
        other,
    }
}

fn tls_tables(s: &Setup, unknown: &str, extra: &str) -> String {
    tls_tables_with(s, unknown, extra, "")
}

/// `extra` goes into the plain listener's table, `https_extra` into the TLS one's.
fn tls_tables_with(s: &Setup, unknown: &str, extra: &str, https_extra: &str) -> String {
    format!(
        r#"[[listeners]]
name = "http"
address = "127.0.0.1:0"
{extra}
[[listeners]]
name = "https"
address = "127.0.0.1:0"
tls = true
{https_extra}

[tls]
unknown_name = "{unknown}"
default = "default.test"
[[tls.certificates]]
cert = "{}"
key = "{}"
[[tls.certificates]]
cert = "{}"
key = "{}"
[[tls.certificates]]
cert = "{}"
key = "{}"
"#,
        s.shop.cert.display(),
        s.shop.key.display(),
        s.wild.cert.display(),
        s.wild.key.display(),
        s.other.cert.display(),
        s.other.key.display(),
    )
}

fn services(stable: &sluice::demo::DemoUpstream, canary: &sluice::demo::DemoUpstream) -> String {
    format!(
        "[[services]]\nname = \"shop\"\nhosts = [\"shop.test\", \"*.apps.test\"]\nstable = [\"{}\"]\ncanary = [\"{}\"]\ncanary_weight = 0.0\n",
        stable.addr, canary.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_unknown_names_get_the_default() {
    let s = certs();
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "{}{}",
        tls_tables(&s, "default", ""),
        services(&stable, &canary)
    ));
    let https = gate.listener("https").expect("an https listener");
    assert_eq!(
        served_names(https, Some("shop.test")).await.unwrap(),
        ["shop.test"]
    );
    assert_eq!(
        served_names(https, Some("x.apps.test")).await.unwrap(),
        ["*.apps.test"]
    );
    assert_eq!(
        served_names(https, Some("nobody.test")).await.unwrap(),
        ["default.test"]
    );
    assert_eq!(served_names(https, None).await.unwrap(), ["default.test"]);

    // A real client that trusts only the shop certificate gets the service over TLS 1.3,
    // and the upstream is told the request came over https. (With the canary at some
    // weight, so that a new client gets its sticky cookie.)
    set_weight(&gate, "shop", 50.0).await;
    let c = https_client(&[&s.shop.pem], "shop.test", https);
    let r = c
        .get(format!("https://shop.test:{}/echo", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        cookie.contains("Secure"),
        "sticky cookie over TLS: {cookie}"
    );
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    set_weight(&gate, "shop", 0.0).await;
    // TLS 1.2 works too.
    let (ok, out) = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        s.shop.cert.to_str().unwrap(),
        "--resolve",
        &format!("shop.test:{}:127.0.0.1", https.port()),
        &format!("https://shop.test:{}/", https.port()),
    ]);
    assert!(ok, "curl over TLS 1.2: {out}");
    assert!(out.contains("stable"), "{out}");
    // The plain listener serves the same service.
    let (status, body, _) = get(&client(), &gate, "shop.test", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_can_be_refused() {
    let s = certs();
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "{}{}",
        tls_tables(&s, "refuse", ""),
        services(&stable, &canary)
    ));
    let https = gate.listener("https").unwrap();
    assert!(served_names(https, Some("nobody.test")).await.is_err());
    assert!(served_names(https, None).await.is_err());
    assert_eq!(
        served_names(https, Some("shop.test")).await.unwrap(),
        ["shop.test"]
    );
    let text = metrics_with(
        &client(),
        &gate,
        WAIT,
        // The client ends its handshake before the gate reads its Finished
        // message, so the gate's "ok" may land a moment after: wait for both.
        &[
            "sluice_tls_handshakes_total{listener=\"https\",result=\"refused\"} 2",
            "sluice_tls_handshakes_total{listener=\"https\",result=\"ok\"} 1",
        ],
    )
    .await;
    assert!(text.contains("sluice_tls_certificate_expiry_timestamp_seconds{name=\"shop.test\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_certificates_and_keeps_open_connections() {
    let s = certs();
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let path = s.dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "{}{}{}",
            server_table(),
            tls_tables(&s, "default", ""),
            services(&stable, &canary)
        ) + &format!("[store]\nurl = \"{}\"\n", scratch_db()),
    )
    .unwrap();
    let gate = spawn_gate_from_file(&path);
    let https = gate.listener("https").unwrap();
    // A kept-alive connection made with the first certificate.
    let mut open = connect(https, Some("shop.test"), &[b"http/1.1"])
        .await
        .unwrap();
    let first = open.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert!(exchange(&mut open, "shop.test", "/")
        .await
        .contains("200 OK"));

    // New certificate files for shop.test; a reload through the API swaps them.
    let renewed = make_cert(s.dir.path(), "shop", &["shop.test", "www.shop.test"], 90);
    let (status, v) = admin(
        &client(),
        &gate,
        reqwest::Method::POST,
        "/api/v1/reload",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        served_names(https, Some("shop.test")).await.unwrap(),
        ["shop.test", "www.shop.test"]
    );
    // The old connection goes on, on the certificate it shook hands with.
    assert!(exchange(&mut open, "shop.test", "/")
        .await
        .contains("200 OK"));
    assert_eq!(open.get_ref().1.peer_certificates().unwrap()[0], first);

    // A changed file alone is noticed too (no reload asked for).
    make_cert(s.dir.path(), "shop", &["shop.test", "api.shop.test"], 90);
    until_ok(WAIT, "the changed certificate file is served", async || {
        let names = served_names(https, Some("shop.test")).await?;
        if names.contains(&"api.shop.test".to_string()) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    drop(renewed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_and_the_canary_is_judged_over_tls() {
    let s = certs();
    let (stable, canary) = (spawn_upstream("stable"), spawn_upstream("canary"));
    let gate = spawn_gate(&format!(
        "{}{}[services.cutback]\nmin_requests = 10\n",
        tls_tables_with(
            &s,
            "default",
            "redirect_https = true\n",
            "hsts = \"365d\"\n"
        ),
        services(&stable, &canary)
    ));
    let https = gate.listener("https").unwrap();
    let http = gate.listener("http").unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{http}/cart?item=1"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://shop.test:{}/cart?item=1", https.port()).as_str()
    );
    // ACME's HTTP-01 path is never redirected (nothing to answer here: 404).
    let r = plain
        .get(format!("http://{http}/.well-known/acme-challenge/abc"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The canary gets weight, then fails over TLS: the judge cuts it back; the shield hides it.
    let c = https_client(&[&s.shop.pem], "shop.test", https);
    set_weight(&gate, "shop", 50.0).await;
    canary.set_error_rate(1.0);
    let mut errors = 0;
    let mut hsts = None;
    until_ok(WAIT, "the canary is cut back", async || {
        let r = c
            .get(format!("https://shop.test:{}/", https.port()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        hsts = r.headers().get("strict-transport-security").cloned();
        if r.status().is_server_error() {
            errors += 1;
        }
        let v = admin(
            &client(),
            &gate,
            reqwest::Method::GET,
            "/api/v1/services/shop",
            None,
            None,
        )
        .await
        .1;
        if v["state"] == "rolled_back" {
            Ok(())
        } else {
            Err(v["state"].to_string())
        }
    })
    .await;
    assert_eq!(
        errors, 0,
        "the shield replays failed GETs on stable over TLS too"
    );
    assert_eq!(
        hsts.map(|v| v.to_str().unwrap().to_string()).as_deref(),
        Some("max-age=31536000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_serves_only_its_services() {
    let (one, two) = (spawn_upstream("one"), spawn_upstream("two"));
    let gate = spawn_gate(&format!(
        r#"[[listeners]]
name = "public"
address = "127.0.0.1:0"
services = ["one"]
[[listeners]]
name = "internal"
address = "127.0.0.1:0"
[[services]]
name = "one"
hosts = ["one.test"]
stable = ["{}"]
[[services]]
name = "two"
hosts = ["two.test"]
stable = ["{}"]
"#,
        one.addr, two.addr
    ));
    let ask = async |listener: &str, host: &str| {
        let addr = gate.listener(listener).unwrap();
        let r = client()
            .get(format!("http://{addr}/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.text().await.unwrap().trim().to_string(),
        )
    };
    assert_eq!(ask("public", "one.test").await, (200, "one".into()));
    assert_eq!(ask("public", "two.test").await.0, 404);
    assert_eq!(ask("internal", "two.test").await, (200, "two".into()));
    assert_eq!(ask("internal", "one.test").await, (200, "one".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_wildcard_and_an_ipv4_listener_share_a_port() {
    let (one, two) = (spawn_upstream("one"), spawn_upstream("two"));
    let port = common::acme::free_port();
    let gate = spawn_gate(&format!(
        r#"[[listeners]]
name = "v6"
address = "[::]:{port}"
services = ["one"]
[[listeners]]
name = "v4"
address = "127.0.0.1:{port}"
services = ["two"]
[[services]]
name = "one"
path_prefix = "/a"
stable = ["{}"]
[[services]]
name = "two"
path_prefix = "/b"
stable = ["{}"]
"#,
        one.addr, two.addr
    ));
    assert_eq!(gate.listener("v6").unwrap().port(), port);
    let ask = async |url: String| {
        let r = client().get(url).send().await.unwrap();
        (
            r.status().as_u16(),
            r.text().await.unwrap().trim().to_string(),
        )
    };
    assert_eq!(
        ask(format!("http://[::1]:{port}/a")).await,
        (200, "one".into())
    );
    assert_eq!(
        ask(format!("http://127.0.0.1:{port}/b")).await,
        (200, "two".into())
    );
    // Two sockets, not one dual-stack socket: IPv4 reaches only the IPv4 listener.
    assert_eq!(ask(format!("http://127.0.0.1:{port}/a")).await.0, 404);
}
