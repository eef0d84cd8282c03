//! Notifications end to end: a real gate cuts a failing canary back, and the news reaches a
//! real HTTP receiver (generic webhook with its HMAC signature checked, Slack and Discord
//! formats), a real SMTP server (aiosmtpd), a flaky endpoint through retries; an endpoint
//! that is down is reported, and nobody hears about services they did not ask for.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use common::receivers::{HttpReceiver, SmtpServer};
use common::*;
use hmac::{Hmac, Mac};
use reqwest::Method;
use sha2::Sha256;
use sluice::demo::Load;
use sluice::events::EventKind;

const SECRET: &str = "test-secret-0123456789";

fn verify(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_back_reaches_every_notifier_with_the_reason_and_the_numbers() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let rx = HttpReceiver::start(2);
    let (stable, canary, other) = (
        spawn_upstream("stable"),
        spawn_upstream("canary"),
        spawn_upstream("api"),
    );
    let gate = spawn_gate(&format!(
        r#"[dashboard]
url = "http://dash.example.test/"

[[services]]
name = "web"
stable = ["{stable}"]
canary = ["{canary}"]
canary_weight = 50.0

[[services]]
name = "api"
hosts = ["api.test"]
stable = ["{other}"]

[[notify]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret = "{SECRET}"
events = ["rollback", "breach"]

[[notify]]
kind = "slack"
name = "slack"
url = "{slack}"
events = ["rollback"]
services = ["web"]

[[notify]]
kind = "discord"
name = "discord"
url = "{discord}"
events = ["rollback"]

[[notify]]
kind = "email"
name = "mail"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
tls = "none"
from = "Sluice <sluice@example.test>"
to = ["ops@example.test", "Oncall <oncall@example.test>"]
events = ["rollback"]

[[notify]]
kind = "webhook"
name = "flaky"
url = "{flaky}"
events = ["rollback"]
retries = 3
backoff = "100ms"

[[notify]]
kind = "webhook"
name = "down"
url = "http://{dead}/hook"
events = ["rollback"]
retries = 1
backoff = "50ms"
timeout = "500ms"

[[notify]]
kind = "webhook"
name = "api-only"
url = "{api_only}"
events = ["all"]
services = ["api"]
"#,
        stable = stable.addr,
        canary = canary.addr,
        other = other.addr,
        hook = rx.url("ok", "hook"),
        slack = rx.url("ok", "slack"),
        discord = rx.url("ok", "discord"),
        flaky = rx.url("flaky", "flaky"),
        api_only = rx.url("ok", "api-only"),
        smtp_port = smtp.port,
        dead = dead_addr(),
    ));
    let mut events = gate.bus.subscribe();
    let load = Load::start(load_config(&gate, 300)).unwrap();
    load_reaches(&load, WAIT, "canary traffic", |r| {
        r.from_upstream("canary") > 0
    })
    .await;
    canary.set_error_rate(1.0);

    let limit = LONG_WAIT;
    // The generic webhook: signed, with the event and its evidence.
    let hook = rx.wait_for(limit, |r| {
        r.path == "hook" && r.json()["kind"] == "rolled_back"
    });
    let ts = hook.header("x-sluice-timestamp").expect("timestamp header");
    let sig = hook.header("x-sluice-signature").expect("signature header");
    assert!(verify(SECRET, ts, &hook.body, sig), "bad signature {sig}");
    assert!(!verify("another-secret-0123", ts, &hook.body, sig));
    assert_eq!(hook.header("x-sluice-event"), Some("rolled_back"));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    let body = hook.json();
    assert_eq!(body["title"], "web: canary cut back");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["service"], "web");
    let rule = body["fields"]["rule"]
        .as_str()
        .expect("the rule")
        .to_string();
    assert_eq!(body["event"]["evidence"]["verdict"]["rule"], rule.as_str());
    assert!(body["fields"]["canary"]
        .as_str()
        .unwrap()
        .contains("error rate"));
    assert!(body["fields"]["versions"]
        .as_str()
        .unwrap()
        .contains(&canary.addr.to_string()));
    assert_eq!(body["fields"]["weight"], "50% -> 0%");
    assert!(body["link"]
        .as_str()
        .unwrap()
        .starts_with("http://dash.example.test/#"));
    // Only what it asked for.
    assert!(rx
        .received()
        .iter()
        .filter(|r| r.path == "hook")
        .all(|r| ["rolled_back", "breach"].contains(&r.json()["kind"].as_str().unwrap())));

    // Slack and Discord formats.
    let slack = rx.wait_for(limit, |r| r.path == "slack").json();
    assert_eq!(slack["blocks"][0]["text"]["text"], "web: canary cut back");
    assert!(slack["text"].as_str().unwrap().contains("cut back"));
    let fields = slack["blocks"][2]["fields"].to_string();
    assert!(
        fields.contains("*Rule*") && fields.contains(&rule),
        "{fields}"
    );
    assert!(slack["blocks"][3]
        .to_string()
        .contains("http://dash.example.test/#"));
    let discord = rx.wait_for(limit, |r| r.path == "discord").json();
    let embed = &discord["embeds"][0];
    assert_eq!(embed["title"], "web: canary cut back");
    assert_eq!(embed["color"], 0xD03B3B);
    assert!(embed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "Rule" && f["value"] == rule.as_str()));
    assert_eq!(discord["allowed_mentions"]["parse"], serde_json::json!([]));

    // Email over real SMTP.
    let mail = tokio::task::spawn_blocking(move || {
        let m = smtp.next_mail(LONG_WAIT);
        (m, smtp)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(mail.from, "sluice@example.test");
    assert_eq!(
        mail.to,
        vec!["ops@example.test".to_string(), "oncall@example.test".into()]
    );
    assert_eq!(mail.subject, "[sluice] web: canary cut back");
    assert!(mail.header_from.contains("Sluice"), "{}", mail.header_from);
    for needle in [
        "canary cut back from 50% to 0",
        "Dashboard: http://dash.example.test/#",
    ] {
        assert!(
            mail.body.contains(needle),
            "{needle:?} not in:\n{}",
            mail.body
        );
    }
    // Fields are "Name:" then the value, aligned on the longest name.
    let field = |name: &str| {
        mail.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} field in:\n{}", mail.body))
            .to_string()
    };
    assert_eq!(field("Rule"), rule);
    assert!(field("Canary").starts_with("error rate"), "{}", mail.body);
    assert_eq!(field("Weight"), "50% -> 0%");
    assert!(
        field("Failed requests").contains("GET / (500)"),
        "{}",
        mail.body
    );

    // The flaky endpoint got it after two failures.
    let flaky = rx.wait_for(limit, |r| r.path == "flaky");
    assert_eq!(flaky.json()["kind"], "rolled_back");

    // The endpoint that is down: reported once its attempts are spent.
    let failed = next_event(&mut events, EventKind::NotifyFailed, limit).await;
    assert_eq!(failed.evidence["notifier"], "down");
    assert_eq!(failed.evidence["failed"], 1);
    assert!(
        failed.message.contains("could not deliver"),
        "{}",
        failed.message
    );
    let report = load.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");

    // Nobody heard about a service they did not ask for.
    assert!(rx.received().iter().all(|r| r.path != "api-only"));
    // A sender counts a delivery once the receiver has answered it, a moment after the
    // receiver has it: the counters are polled.
    metrics_with(
        &client(),
        &gate,
        WAIT,
        &[
            r#"sluice_notifications_total{notifier="down",result="failed"} 1"#,
            r#"sluice_notifications_total{notifier="down",result="retried"} 1"#,
            r#"sluice_notifications_total{notifier="flaky",result="retried"} 2"#,
            r#"sluice_notifications_total{notifier="flaky",result="sent"} 1"#,
            r#"sluice_notifications_total{notifier="mail",result="sent"} 1"#,
        ],
    )
    .await;
    // History is written behind the events: polled until the failure is in.
    until_ok(WAIT, "the failure in history", async || {
        let history = admin(
            &client(),
            &gate,
            Method::GET,
            "/api/v1/history?kind=notify_failed",
            None,
            None,
        )
        .await
        .1;
        if history["items"].as_array().is_some_and(|i| !i.is_empty()) {
            Ok(())
        } else {
            Err(history.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_that_never_answers_holds_no_backlog() {
    let rx = HttpReceiver::start(0);
    let stable = spawn_upstream("stable");
    let canary = spawn_upstream("canary");
    let gate = spawn_gate(&format!(
        r#"[[services]]
name = "web"
stable = ["{}"]
canary = ["{}"]
[[notify]]
kind = "webhook"
name = "slow"
url = "{}"
events = ["weight_set"]
timeout = "300ms"
retries = 2
backoff = "100ms"
queue = 4
[[notify]]
kind = "webhook"
name = "seen"
url = "{}"
events = ["weight_set"]
"#,
        stable.addr,
        canary.addr,
        rx.url("slow", "slow"),
        rx.url("ok", "seen")
    ));
    let c = client();
    // 40 events in a row for a notifier whose every attempt times out (how fast the gate
    // stays meanwhile is measured by `benches/notify.rs`).
    for i in 0..40 {
        let (status, v) = admin(
            &c,
            &gate,
            Method::POST,
            "/api/v1/services/web/weight",
            None,
            Some(serde_json::json!({ "weight": (i % 10) as f64 })),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // A healthy notifier beside it got every one; links use the admin address bound.
    let seen = rx.wait_for(WAIT, |r| r.path == "seen");
    assert!(
        seen.json()["link"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/#", gate.admin_addr)),
        "{}",
        seen.json()["link"]
    );
    eventually(WAIT, "the healthy notifier to get all 40", async || {
        rx.received().iter().filter(|r| r.path == "seen").count() >= 40
    })
    .await;
    // The slow one's queue overflowed: polled, as it counts what it drops as it goes.
    until_ok(WAIT, "the slow notifier's drops", async || {
        let metrics = metrics_text(&c, &gate).await;
        let dropped = metrics
            .lines()
            .find(|l| {
                l.starts_with(r#"sluice_notifications_total{notifier="slow",result="dropped"}"#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if dropped >= 30 {
            Ok(())
        } else {
            Err(format!(
                "a queue of 4 kept more than it should: {dropped} dropped"
            ))
        }
    })
    .await;
}
