//! Driving a running gate: each remote subcommand as one API call (or a followed stream),
//! its answer rendered or printed as JSON.

use super::args::*;
use super::client::AdminClient;
use super::render::*;
use crate::api::{
    path, CanaryBody, DeployBody, FreezeBody, ResumeBody, RollbackBody, StepBody, WeightBody,
};
use http::Method;
use serde_json::Value;
use std::process::ExitCode;

pub fn remote(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(remote_call(command))
}

/// What a remote subcommand does: one API call, a followed stream, a followed deployment,
/// or nothing (a usage mistake, with why).
pub enum Call {
    /// One API call; its answer is printed.
    Api {
        /// The gate and how to print.
        remote: Remote,
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// JSON body.
        body: Option<Value>,
    },
    /// The live event stream, followed.
    Events {
        /// The gate.
        remote: Remote,
        /// Services to follow (all when empty).
        services: Vec<String>,
        /// Kinds to follow (all when empty).
        kinds: Vec<String>,
        /// Resume after this sequence number.
        since: Option<u64>,
    },
    /// A deployment started, then followed unless detached.
    Deploy {
        /// The gate.
        remote: Remote,
        /// The service.
        service: String,
        /// The deployment's body.
        body: Value,
        /// Return once started.
        detach: bool,
    },
    /// Refused before asking the gate.
    Refused(String),
}

/// The call a remote subcommand makes (pure: nothing is sent).
pub fn call_for(command: Command) -> anyhow::Result<Call> {
    let (remote, method, path, body) = match command {
        Command::Status { service, remote } => {
            let path = match service {
                Some(s) => path::service(&s, None),
                None => path::services(),
            };
            (remote, Method::GET, path, None)
        }
        Command::Canary {
            service,
            upstreams,
            weight,
            label,
            remote,
        } => {
            let body = CanaryBody {
                upstreams,
                weight,
                label,
            };
            (
                remote,
                Method::PUT,
                path::service(&service, Some("canary")),
                Some(wire(&body)?),
            )
        }
        Command::Weight {
            service,
            percent,
            remote,
        } => (
            remote,
            Method::POST,
            path::service(&service, Some("weight")),
            Some(wire(&WeightBody { weight: percent })?),
        ),
        Command::Promote { service, remote } => (
            remote,
            Method::POST,
            path::service(&service, Some("promote")),
            None,
        ),
        Command::Rollback {
            service,
            reason,
            remote,
        } => (
            remote,
            Method::POST,
            path::service(&service, Some("rollback")),
            Some(wire(&RollbackBody { reason })?),
        ),
        Command::Resume {
            service,
            weight,
            remote,
        } => (
            remote,
            Method::POST,
            path::service(&service, Some("resume")),
            Some(wire(&ResumeBody { weight })?),
        ),
        Command::Reload { remote } => (remote, Method::POST, path::root("reload"), None),
        Command::Certificates { remote } => (remote, Method::GET, path::root("certificates"), None),
        Command::Events {
            services,
            kinds,
            since,
            remote,
        } => {
            return Ok(Call::Events {
                remote,
                services,
                kinds,
                since,
            })
        }
        Command::History {
            service,
            kinds,
            deployment,
            since,
            until,
            limit,
            cursor,
            remote,
        } => {
            let mut q = vec![format!("limit={limit}")];
            let mut add = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    q.push(format!("{k}={}", urlencode(&v)));
                }
            };
            add("service", service);
            add("deployment", deployment);
            add("since", since);
            add("until", until);
            add("cursor", cursor);
            if !kinds.is_empty() {
                q.push(format!("kind={}", urlencode(&kinds.join(","))));
            }
            (
                remote,
                Method::GET,
                format!("{}?{}", path::root("history"), q.join("&")),
                None,
            )
        }
        Command::Deployments { service, remote } => {
            let path = match service {
                Some(s) => format!("{}?service={}", path::root("deployments"), urlencode(&s)),
                None => path::root("deployments"),
            };
            (remote, Method::GET, path, None)
        }
        Command::Deployment {
            id,
            action: None,
            remote,
        } => (remote, Method::GET, path::deployment(&id, None), None),
        Command::Deployment {
            id,
            action: Some(action),
            remote,
        } => (
            remote,
            Method::POST,
            path::deployment(&id, Some(action.as_str())),
            None,
        ),
        Command::Freeze {
            service: None,
            reason: None,
            remote,
        } => (remote, Method::GET, path::root("freeze"), None),
        Command::Report { id, remote } => (
            remote,
            Method::GET,
            path::deployment(&id, Some("report")),
            None,
        ),
        Command::Releases { service, remote } => (
            remote,
            Method::GET,
            path::service(&service, Some("releases")),
            None,
        ),
        Command::Freeze {
            service: Some(s),
            reason: None,
            ..
        } => {
            return Ok(Call::Refused(format!("freeze {s}: say why with --reason")));
        }
        Command::Freeze {
            service,
            reason: Some(reason),
            remote,
        } => (
            remote,
            Method::POST,
            path::root("freeze"),
            Some(wire(&FreezeBody {
                service,
                reason: Some(reason),
            })?),
        ),
        Command::Unfreeze { service, remote } => (
            remote,
            Method::POST,
            path::root("unfreeze"),
            Some(wire(&FreezeBody {
                service,
                reason: None,
            })?),
        ),
        Command::Deploy {
            service,
            strategy,
            upstreams,
            image,
            label,
            steps,
            step_back,
            verify_for,
            keep_blue_for,
            no_auto_switch,
            batch_size,
            max_unavailable,
            pause_between,
            drain_timeout,
            health_wait,
            progress_deadline,
            on_deadline,
            detach,
            remote,
        } => {
            let steps = match steps
                .iter()
                .map(|s| parse_step(s))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(list) => (!list.is_empty()).then_some(list),
                Err(e) => {
                    return Ok(Call::Refused(format!("--step: {e}")));
                }
            };
            let body = DeployBody {
                strategy: match strategy {
                    Strategy::Canary => "canary",
                    Strategy::BlueGreen => "blue_green",
                    Strategy::Rolling => "rolling",
                }
                .into(),
                upstreams: if image.is_none() {
                    upstreams
                } else {
                    Vec::new()
                },
                image,
                label,
                steps,
                soft_rollback: step_back.then(|| "step_back".into()),
                verify_for,
                keep_blue_for,
                auto_switch: no_auto_switch.then_some(false),
                batch_size,
                max_unavailable,
                pause_between,
                drain_timeout,
                health_wait,
                progress_deadline,
                on_deadline,
            };
            let body = wire(&body)?;
            return Ok(Call::Deploy {
                remote,
                service,
                body,
                detach,
            });
        }
        Command::Run { .. }
        | Command::CheckConfig { .. }
        | Command::Demo { .. }
        | Command::Migrate { .. } => {
            unreachable!("handled in main")
        }
    };
    Ok(Call::Api {
        remote,
        method,
        path,
        body,
    })
}

/// Runs a remote subcommand against the gate; the exit code says how it went.
pub async fn remote_call(command: Command) -> anyhow::Result<ExitCode> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let actor = format!("cli:{user}");
    let (remote, method, path, body) = match call_for(command)? {
        Call::Api {
            remote,
            method,
            path,
            body,
        } => (remote, method, path, body),
        Call::Events {
            remote,
            services,
            kinds,
            since,
        } => return follow_events(remote, actor, services, kinds, since).await,
        Call::Deploy {
            remote,
            service,
            body,
            detach,
        } => return deploy(remote, actor, &service, body, detach).await,
        Call::Refused(why) => {
            eprintln!("sluice: {why}");
            return Ok(ExitCode::from(1));
        }
    };
    let client = AdminClient::new(&remote.admin_url, remote.token.clone(), actor)?;
    let answer = match client.call(method, &path, body).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sluice: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", summarize(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn follow_events(
    remote: Remote,
    actor: String,
    services: Vec<String>,
    kinds: Vec<String>,
    since: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if !services.is_empty() {
        query.push(format!("service={}", services.join(",")));
    }
    if !kinds.is_empty() {
        query.push(format!("kind={}", kinds.join(",")));
    }
    if let Some(s) = since {
        query.push(format!("since={s}"));
    }
    let path = format!("{}?{}", path::root("events"), query.join("&"));
    let client = AdminClient::new(&remote.admin_url, remote.token.clone(), actor)?;
    let json = remote.json;
    let result = client
        .follow(&path, |e| {
            if json {
                println!("{e}");
            } else {
                println!("{}", render_event(&e));
            }
        })
        .await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("sluice: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// One `--step`: `pause`, or `WEIGHT[:BAKE[:MIN_SAMPLES]]`.
pub fn parse_step(text: &str) -> Result<StepBody, String> {
    if text.trim() == "pause" {
        return Ok(StepBody {
            pause: Some(true),
            ..StepBody::default()
        });
    }
    let mut parts = text.split(':');
    let weight: f64 = parts
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| {
            format!("'{text}': the weight is not a number (use 10, 10:30s or 10:30s:200)")
        })?;
    let mut step = StepBody {
        weight: Some(weight),
        ..StepBody::default()
    };
    if let Some(bake) = parts.next() {
        step.bake = Some(bake.trim().to_string());
    }
    if let Some(min) = parts.next() {
        let n: u64 = min
            .trim()
            .parse()
            .map_err(|_| format!("'{text}': MIN_SAMPLES '{min}' is not a whole number"))?;
        step.min_samples = Some(n);
    }
    if parts.next().is_some() {
        return Err(format!("'{text}': at most WEIGHT:BAKE:MIN_SAMPLES"));
    }
    Ok(step)
}

/// Starts a deployment, then (unless detached) follows it until it ends, one line each time
/// its progress changes and one per event. Exit code: 0 succeeded, 2 rolled back, 3 aborted.
pub async fn deploy(
    remote: Remote,
    actor: String,
    service: &str,
    body: Value,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&remote.admin_url, remote.token.clone(), actor)?;
    let started = match client
        .call(
            Method::POST,
            &path::service(service, Some("deployments")),
            Some(body),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sluice: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let id = started["id"].as_str().unwrap_or_default().to_string();
    if detach {
        if remote.json {
            println!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !remote.json {
        println!("deployment {id} started (follow it elsewhere with: sluice deployment {id})");
    }
    let path = path::deployment(&id, None);
    let mut seen = std::collections::HashSet::new();
    let mut last_line = String::new();
    // On a terminal the progress line is redrawn in place; elsewhere (logs, CI) a line is
    // printed when it says something new, counters aside.
    let tty = !remote.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut drawn = false;
    let mut ended_at: Option<std::time::Instant> = None;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let v = match client.call(Method::GET, &path, None).await {
            Ok(v) => {
                unreachable_since = None;
                v
            }
            Err(e) => {
                // A gate restarting or a slow answer: keep trying for a while.
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > std::time::Duration::from_secs(30) {
                    eprintln!("sluice: lost the gate while following {id}: {e}");
                    return Ok(ExitCode::from(1));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let state = v["state"].as_str().unwrap_or("").to_string();
        let mut events: Vec<&Value> = v["events"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        events.reverse();
        let mut final_event = false;
        for e in events {
            let key = e["id"].as_str().unwrap_or_default().to_string();
            if !seen.insert(key) {
                continue;
            }
            let kind = e["kind"].as_str().unwrap_or("");
            final_event |= matches!(
                kind,
                "deployment_succeeded" | "deployment_failed" | "deployment_aborted"
            );
            if remote.json {
                println!("{e}");
            } else if kind != "deployment_step" {
                if std::mem::take(&mut drawn) {
                    print!("\r\x1b[2K");
                }
                println!("{}", render_event(e));
            }
        }
        if !v["live"].is_null() {
            let line = if remote.json {
                v["live"].to_string()
            } else {
                format!(
                    "{}  {}",
                    &crate::time::format_time(crate::time::now_ms())[11..19],
                    crate::cli::render::render_progress(&v["live"])
                )
            };
            let shape = |l: &str| -> String {
                l.chars().skip(10).filter(|c| !c.is_ascii_digit()).collect()
            };
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
                drawn = true;
            } else if remote.json || shape(&line) != shape(&last_line) {
                println!("{line}");
            }
            last_line = line;
        }
        let code = match state.as_str() {
            "succeeded" => Some(0),
            "rolled_back" => Some(2),
            "aborted" => Some(3),
            _ => None,
        };
        if let Some(code) = code {
            // History is written behind the live state: wait briefly for the last event.
            let ended = *ended_at.get_or_insert_with(std::time::Instant::now);
            if final_event
                || v["events"].is_null()
                || ended.elapsed() > std::time::Duration::from_secs(2)
            {
                if std::mem::take(&mut drawn) {
                    println!();
                }
                if !remote.json {
                    println!("deployment {id}: {state}");
                }
                return Ok(ExitCode::from(code));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Percent-encodes a query value.
/// A request body as the JSON the API takes.
fn wire<T: serde::Serialize>(body: &T) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(body)?)
}

/// Percent-encodes a query value.
pub fn urlencode(v: &str) -> String {
    path::encode(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn call(args: &[&str]) -> Call {
        let cli =
            Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied())).unwrap();
        call_for(cli.command).unwrap()
    }

    #[test]
    fn subcommands_map_to_typed_api_calls() {
        match call(&["weight", "web", "12.5"]) {
            Call::Api {
                method, path, body, ..
            } => {
                assert_eq!(method, Method::POST);
                assert_eq!(path, "/api/v1/services/web/weight");
                assert_eq!(body, Some(serde_json::json!({ "weight": 12.5 })));
            }
            _ => panic!("an API call"),
        }
        match call(&["freeze", "web"]) {
            Call::Refused(why) => assert!(why.contains("--reason"), "{why}"),
            _ => panic!("a freeze without a reason is refused before asking"),
        }
        match call(&[
            "deploy",
            "web",
            "--step",
            "10:30s:200",
            "--upstream",
            "127.0.0.1:9",
        ]) {
            Call::Deploy { service, body, .. } => {
                assert_eq!(service, "web");
                assert_eq!(body["strategy"], "canary");
                assert_eq!(
                    body["steps"],
                    serde_json::json!([{ "weight": 10.0, "bake": "30s", "min_samples": 200 }])
                );
            }
            _ => panic!("a deployment"),
        }
    }
}
