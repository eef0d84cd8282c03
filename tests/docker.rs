//! Docker control end to end, against the machine's real Docker engine: images built here
//! `FROM scratch` around the static test app (no registry), containers the gate creates,
//! restores and stops itself, containers started by hand and found by their labels.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failing test

mod common;

use std::time::Duration;

use common::docker::{available, docker, Scratch};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use sluice::demo::Load;
use sluice::gate::GateHandle;

/// One test at a time: each starts several containers, and one loads a CPU on purpose, which
/// on a two-core machine would slow the others' containers enough to look like a regression.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `[services.docker]` service `web` of this run: two replicas of `image`, with an
/// environment variable, a read-only bind mount and a network of the run.
fn web_config(
    s: &Scratch,
    image: &str,
    network: &str,
    data: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        r#"[[services]]
name = "web"
[services.docker]
image = "{image}"
name = "t{tag}"
port = 8080
replicas = 2
env = {{ GREETING = "hello; $(id) `x`" }}
volumes = ["{data}:/data:ro"]
networks = ["{network}"]
labels = {{ "test.run" = "{run}" }}
memory = "64MiB"
keep_old_for = "0s"
health_timeout = "30s"
{extra}"#,
        tag = &s.run[s.run.len() - 8..],
        data = data.display(),
        run = s.run,
    )
}

async fn body(gate: &GateHandle, path: &str) -> (u16, String) {
    let (status, text, _) = get(&client(), gate, "x", path, &[]).await;
    (status, text)
}

async fn releases(gate: &GateHandle) -> Value {
    admin_get(gate, "/api/v1/services/web/releases").await
}

/// What `docker inspect` says of a container's env, mounts, networks and image.
fn essentials(name: &str) -> Value {
    let (ok, out) = docker(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}|{{json .HostConfig.Binds}}|{{json .HostConfig.Memory}}|{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}|{{.Image}}|{{json .Config.Labels}}",
        name,
    ]);
    assert!(ok, "inspect {name}");
    let parts: Vec<&str> = out.split('|').collect();
    json!({
        "env": serde_json::from_str::<Value>(parts[0]).unwrap(),
        "binds": serde_json::from_str::<Value>(parts[1]).unwrap(),
        "memory": serde_json::from_str::<Value>(parts[2]).unwrap(),
        "networks": parts[3].trim(),
        "image": parts[4],
        "labels": serde_json::from_str::<Value>(parts[5]).unwrap(),
    })
}

fn running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", name]).1 == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_deploy_promote_and_a_bad_one_is_cut_back_and_kept_stopped() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scratch::new("deploy");
    let network = s.network();
    let v1 = s.image("v1", &[]);
    let v2 = s.image("v2", &[]);
    let v3 = s.image("v3", &[("FAIL_AFTER", "0")]);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("motd"), "from the volume\n").unwrap();
    // Fresh containers answer their first requests slower (new connections, cold pages);
    // this test is about containers, not latency: only a large slowdown counts.
    let gate = spawn_gate(&web_config(
        &s,
        &v1,
        &network,
        data.path(),
        "[services.cutback]\nlatency_slack = \"250ms\"\n",
    ));

    // The first release: two containers of v1, configured as the file says.
    assert_eq!(body(&gate, "/").await, (200, "v1".into()));
    assert_eq!(body(&gate, "/env/GREETING").await.1, "hello; $(id) `x`");
    assert_eq!(body(&gate, "/file/data/motd").await.1, "from the volume");
    let first = s.containers(&format!("test.run={}", s.run));
    assert_eq!(first.len(), 2, "{first:?}");

    // A good image: promoted through a canary step; v1 is retired (keep_old_for = 0).
    let traffic = Load::start(load_config(&gate, 300)).unwrap();
    let (status, v) = deploy(
        &gate,
        json!({ "strategy": "canary", "image": v2, "steps": [{ "weight": 50, "bake": "1s", "min_samples": 10 }] }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, &["succeeded", "rolled_back"], LONG_WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(body(&gate, "/").await.1, "v2");
    eventually(LONG_WAIT, "v1 retired", async || {
        first.iter().all(|c| !docker(&["inspect", c]).0)
    })
    .await;
    let r = releases(&gate).await;
    assert_eq!(r["releases"][0]["state"], "stable", "{r}");
    assert_eq!(r["releases"][0]["image"], v2.as_str());
    let v2_containers: Vec<String> = r["releases"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let before: Vec<Value> = v2_containers.iter().map(|c| essentials(c)).collect();

    // A bad image: every answer fails. Cut back at its first step; v2 keeps serving with
    // its own configuration; the v3 containers are stopped and kept.
    let (status, v) = deploy(
        &gate,
        json!({ "strategy": "canary", "image": v3, "label": "v3", "steps": [{ "weight": 20, "bake": "60s" }] }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_state(&gate, &id, &["rolled_back", "succeeded"], LONG_WAIT).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "clients saw errors: {report:?}");
    assert!(report.from_upstream("v2") > 0);
    for _ in 0..20 {
        assert_eq!(body(&gate, "/").await, (200, "v2".into()));
    }
    let after: Vec<Value> = v2_containers.iter().map(|c| essentials(c)).collect();
    assert_eq!(before, after, "the previous release is untouched");
    assert!(after[0]["binds"][0]
        .as_str()
        .unwrap()
        .ends_with(":/data:ro"));
    assert_eq!(after[0]["networks"], network.as_str());
    assert_eq!(after[0]["memory"], 64 << 20);
    let failed: Vec<String> = {
        let r = releases(&gate).await;
        let rel = r["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["state"] == "failed")
            .cloned()
            .unwrap_or_else(|| panic!("no failed release: {r}"));
        rel["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(LONG_WAIT, "v3 stopped", async || {
        failed.iter().all(|c| !running(c))
    })
    .await;
    assert!(
        failed.iter().all(|c| docker(&["inspect", c]).0),
        "v3 is kept for inspection"
    );
    // History has every release with its snapshots.
    let r = releases(&gate).await;
    let states: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"retired") && states.contains(&"failed") && states.contains(&"stable"),
        "{r}"
    );
    let kinds: Vec<String> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "deployment_started",
        "release_ready",
        "rolled_back",
        "deployment_failed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_container_that_disappears_is_recreated_exactly() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scratch::new("restore");
    let network = s.network();
    let v1 = s.image("v1", &[]);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("motd"), "kept\n").unwrap();
    let gate = spawn_gate(&web_config(&s, &v1, &network, data.path(), ""));
    let names = s.containers(&format!("test.run={}", s.run));
    assert_eq!(names.len(), 2);
    let before = essentials(&names[0]);
    let mut events = gate.bus.subscribe();
    let traffic = Load::start(load_config(&gate, 200)).unwrap();
    load_reaches(&traffic, WAIT, "traffic", |r| r.ok > 0).await;

    // Removed by hand: recreated under the same name with the same configuration.
    assert!(docker(&["rm", "-f", &names[0]]).0);
    let restored = next_event(
        &mut events,
        sluice::events::EventKind::ContainerRestored,
        LONG_WAIT,
    )
    .await;
    assert_eq!(
        restored.evidence["containers"]["same_config"], true,
        "{}",
        restored.evidence
    );
    assert!(running(&names[0]));
    assert_eq!(essentials(&names[0]), before, "recreated exactly");
    // Stopped by hand: started again.
    assert!(docker(&["stop", "-t", "1", &names[1]]).0);
    eventually(LONG_WAIT, "restarted", async || running(&names[1])).await;
    // Traffic goes on without errors after it: some more answers first.
    let answered = traffic.report().ok;
    load_reaches(&traffic, WAIT, "traffic after the restart", |r| {
        r.ok >= answered + 50
    })
    .await;
    let report = traffic.stop();
    assert_eq!(report.client_errors(), 0, "{report:?}");
    assert_eq!(body(&gate, "/file/data/motd").await.1, "kept");
    let service = admin(
        &client(),
        &gate,
        Method::GET,
        "/api/v1/services/web",
        None,
        None,
    )
    .await
    .1;
    let upstreams = service["arms"]["stable"]["upstreams"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(upstreams, 2, "{service}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_release_whose_image_is_gone_is_refused() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scratch::new("gone");
    let network = s.network();
    let v1 = s.image("v1", &[]);
    let v2 = s.image("v2", &[]);
    let data = tempfile::tempdir().unwrap();
    let gate = spawn_gate(&web_config(&s, &v1, &network, data.path(), ""));
    let old = s.containers(&format!("test.run={}", s.run));
    let (status, v) = deploy(
        &gate,
        json!({ "strategy": "canary", "image": v2, "steps": [{ "weight": 10, "bake": "0s", "min_samples": 0 }, { "pause": true }, { "weight": 100, "bake": "0s", "min_samples": 0 }] }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    eventually(LONG_WAIT, "the pause step", async || {
        deployment(&gate, &id).await["state"] == "paused"
    })
    .await;
    let mut events = gate.bus.subscribe();
    // The previous release goes away entirely: containers and image.
    for c in &old {
        assert!(docker(&["rm", "-f", c]).0);
    }
    let (ok, out) = docker(&["rmi", &v1]);
    assert!(ok, "rmi {v1}: {out}");
    next_event(
        &mut events,
        sluice::events::EventKind::ReleaseMissing,
        LONG_WAIT,
    )
    .await;
    let (status, v) = admin(
        &client(),
        &gate,
        Method::POST,
        &format!("/api/v1/deployments/{id}/abort"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer on this Docker engine"),
        "{v}"
    );
    let refused = next_event(
        &mut events,
        sluice::events::EventKind::RollbackRefused,
        WAIT,
    )
    .await;
    assert!(
        refused.message.contains("current version keeps serving"),
        "{}",
        refused.message
    );
    // The new version still has its traffic path; the operator moves on with it.
    assert_eq!(
        get(&client(), &gate, "x", "/", &[("x-sluice-arm", "canary")])
            .await
            .1,
        "v2"
    );
    let (status, v) = admin(
        &client(),
        &gate,
        Method::POST,
        &format!("/api/v1/deployments/{id}/promote"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let done = wait_state(&gate, &id, &["succeeded"], LONG_WAIT).await;
    assert_eq!(done["state"], "succeeded");
    for _ in 0..10 {
        assert_eq!(body(&gate, "/").await, (200, "v2".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_containers_started_by_hand_are_discovered() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scratch::new("discover");
    let app = s.image("hand", &[]);
    let stable = spawn_upstream("configured");
    let gate = spawn_gate(&format!(
        "[docker]\ndiscovery = true\ndiscovery_interval = \"1s\"\n[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\nstable = [\"{}\"]\n",
        stable.addr
    ));
    let c = client();
    assert_eq!(get(&c, &gate, "hello.test", "/", &[]).await.0, 404);
    let label = format!("test.run={}", s.run);
    let run = |name: &str, labels: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "127.0.0.1::8080",
            "--label",
            &label,
        ];
        for l in labels {
            args.push("--label");
            args.push(l);
        }
        args.push(&app);
        let (ok, out) = docker(&args);
        assert!(ok, "docker run: {out}");
    };
    // A service the config does not have, from its labels alone.
    let hello = format!("hello-{}", s.run);
    run(
        &hello,
        &[
            "sluice.service=hello",
            "sluice.hosts=hello.test",
            "sluice.port=8080",
        ],
    );
    eventually(LONG_WAIT, "hello discovered", async || {
        get(&c, &gate, "hello.test", "/", &[]).await.1 == "hand"
    })
    .await;
    // A canary of a configured service, at the weight its label asks.
    let canary = format!("canary-{}", s.run);
    run(
        &canary,
        &[
            "sluice.service=web",
            "sluice.arm=canary",
            "sluice.weight=100",
        ],
    );
    eventually(LONG_WAIT, "web's canary discovered", async || {
        get(&c, &gate, "web.test", "/", &[]).await.1 == "hand"
    })
    .await;
    // The table follows containers that stop.
    assert!(docker(&["stop", "-t", "1", &canary]).0);
    eventually(LONG_WAIT, "web back on its configured stable", async || {
        get(&c, &gate, "web.test", "/", &[]).await.1 == "configured"
    })
    .await;
    assert!(docker(&["rm", "-f", &hello]).0);
    eventually(LONG_WAIT, "hello removed", async || {
        get(&c, &gate, "hello.test", "/", &[]).await.0 == 404
    })
    .await;
    // History is written behind the events: polled until the four are in.
    until_ok(WAIT, "four discoveries in history", async || {
        let history = admin(
            &c,
            &gate,
            Method::GET,
            "/api/v1/history?kind=discovered",
            None,
            None,
        )
        .await
        .1;
        if history["items"].as_array().is_some_and(|i| i.len() >= 4) {
            Ok(())
        } else {
            Err(history.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_container_over_its_memory_or_cpu_share_is_cut_back() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scratch::new("usage");
    let app = s.image("hog", &[]);
    let stable = spawn_upstream("stable");
    let label = format!("test.run={}", s.run);
    let start = |name: &str, limits: &[&str]| -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "127.0.0.1::8080",
            "--label",
            &label,
        ];
        args.extend_from_slice(limits);
        args.push(&app);
        let (ok, out) = docker(&args);
        assert!(ok, "docker run: {out}");
        let (_, port) = docker(&["port", name, "8080/tcp"]);
        port.lines().next().unwrap().trim().to_string()
    };
    let gate = spawn_gate(&format!(
        "[[services]]\nname = \"web\"\nstable = [\"{}\"]\n[services.cutback]\nmax_memory = 0.5\nmax_memory_for = \"2s\"\nmax_cpu = 0.8\nmax_cpu_for = \"3s\"\n",
        stable.addr
    ));
    let c = client();
    for (what, limits, load, rule) in [
        ("mem", vec!["--memory", "64m"], "/admin/hog/48", "memory"),
        ("cpu", vec!["--cpus", "0.5"], "/admin/spin/20", "cpu"),
    ] {
        let name = format!("{what}-{}", s.run);
        let addr = start(&name, &limits);
        let (status, v) = admin(
            &c,
            &gate,
            Method::PUT,
            "/api/v1/services/web/canary",
            None,
            Some(json!({ "upstreams": [addr], "weight": 0 })),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        // Calm: no breach. Once the judge is judging this canary, for longer than either
        // rule's span (the samples themselves cannot be seen from here).
        eventually(WAIT, "the judge on the new canary", async || {
            let svc = admin(&c, &gate, Method::GET, "/api/v1/services/web", None, None)
                .await
                .1;
            !svc["judge"]["verdict"].is_null()
        })
        .await;
        let calm = std::time::Instant::now();
        while calm.elapsed() < Duration::from_secs(4) {
            let svc = admin(&c, &gate, Method::GET, "/api/v1/services/web", None, None)
                .await
                .1;
            assert_eq!(svc["state"], "canary", "{svc}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Then the container is pushed over its share, through the tester header.
        let mut events = gate.bus.subscribe();
        let resp = c
            .post(proxy_url(&gate, load))
            .header("x-sluice-arm", "canary")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cut = next_event(
            &mut events,
            sluice::events::EventKind::RolledBack,
            LONG_WAIT,
        )
        .await;
        assert_eq!(cut.evidence["verdict"]["rule"], rule, "{}", cut.evidence);
        assert!(cut.message.contains(&name), "{}", cut.message);
        let (status, _) = admin(
            &c,
            &gate,
            Method::DELETE,
            "/api/v1/services/web/canary",
            None,
            None,
        )
        .await;
        assert_eq!(status, 200);
        let _ = docker(&["rm", "-f", &name]);
    }
}
