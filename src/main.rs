//! The `sluice` command: run the gate, check configs, and drive a running gate.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::Method;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use sluice::client::{
    render_event, render_service, render_services, AdminClient, DEFAULT_ADMIN_URL,
};
use sluice::config::Config;
use sluice::gate;
use sluice::rollout::{ControlHandle, Op};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A traffic gate: canary releases with instant automatic cut-back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Remote {
    /// Admin API of the gate.
    #[arg(long, env = "SLUICE_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, global = true)]
    admin_url: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Show what Sluice does, in one command: a canary that goes bad is cut back live.
    Demo {
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Sticky clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Turn the canary shield off (clients then see the few failures before the cut).
        #[arg(long)]
        no_shield: bool,
        /// SQLite file the demo keeps its history in (replaced on each run).
        #[arg(long, default_value = "sluice-demo.db")]
        db: PathBuf,
    },
    /// Create or update the history database's tables, then show how many rows each holds.
    Migrate {
        /// Config file (its [store] section).
        #[arg(long, short, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// Run the gate.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// Validate config files; exits non-zero naming the file and key of each problem.
    CheckConfig {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show services, their arms and live stats.
    Status {
        /// One service only.
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set a service's canary upstreams (a new canary version).
    Canary {
        /// Service name.
        service: String,
        /// Canary upstream host:port (repeat for several).
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// Starting weight in percent (default 0).
        #[arg(long)]
        weight: Option<f64>,
        /// Version label kept in history (v2, a git sha, ...).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set the canary weight in percent (fractions allowed).
    Weight {
        /// Service name.
        service: String,
        /// Percent of new clients sent to the canary, 0..=100.
        percent: f64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the canary the new stable.
    Promote {
        /// Service name.
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cut the canary back to 0 and hold it there.
    Rollback {
        /// Service name.
        service: String,
        /// Why (kept in the event).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Give a rolled-back canary traffic again (with a fresh window).
    Resume {
        /// Service name.
        service: String,
        /// Weight in percent (default: the weight it had).
        #[arg(long)]
        weight: Option<f64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask the gate to re-read its config file.
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
    /// Stored events, newest first.
    History {
        /// One service.
        #[arg(long)]
        service: Option<String>,
        /// Only these kinds (repeat).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// One deployment.
        #[arg(long)]
        deployment: Option<String>,
        /// From (epoch ms, 2026-11-22T04:00:00Z, or -1h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Until (same forms).
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        /// Rows per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deployments, newest first.
    Deployments {
        /// One service.
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// One deployment: its events and its health trend per minute; or control it.
    Deployment {
        /// Deployment id.
        id: String,
        /// pause, resume, abort (instant rollback) or promote (skip the remaining steps).
        #[arg(value_enum)]
        action: Option<DeployAction>,
        #[command(flatten)]
        remote: Remote,
    },
    /// A container service's releases: live ones and those in history.
    Releases {
        /// Service name.
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a deployment of a new version and follow it until it ends.
    ///
    /// Exits 0 when it succeeds, 2 when it is rolled back, 3 when it is aborted.
    Deploy {
        /// Service name.
        service: String,
        /// canary (weighted steps), blue-green (switch in one swap) or rolling (batches).
        #[arg(long, value_enum, default_value = "canary")]
        strategy: Strategy,
        /// New version's upstream host:port (repeat for several).
        #[arg(
            long = "upstream",
            required_unless_present = "image",
            conflicts_with = "image"
        )]
        upstreams: Vec<String>,
        /// Image to run as the new version (a service with [services.docker]).
        #[arg(long)]
        image: Option<String>,
        /// Version label kept in history (v2, a git sha, ...).
        #[arg(long)]
        label: Option<String>,
        /// Canary step, in order: WEIGHT[:BAKE[:MIN_SAMPLES]] (10:30s:200) or `pause`.
        #[arg(long = "step")]
        steps: Vec<String>,
        /// Canary: step back one step on soft (latency) breaches instead of cutting to 0.
        #[arg(long)]
        step_back: bool,
        /// Blue-green: how long green's probes must pass before the switch.
        #[arg(long)]
        verify_for: Option<String>,
        /// Blue-green: how long blue stays warm after the switch.
        #[arg(long)]
        keep_blue_for: Option<String>,
        /// Blue-green: wait for a promote instead of switching once verified.
        #[arg(long)]
        no_auto_switch: bool,
        /// Rolling: instances replaced per batch.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Rolling: old instances out of rotation at once.
        #[arg(long)]
        max_unavailable: Option<usize>,
        /// Rolling: pause between batches.
        #[arg(long)]
        pause_between: Option<String>,
        /// Rolling: how long an old instance may take to finish its requests.
        #[arg(long)]
        drain_timeout: Option<String>,
        /// Rolling: how long a batch must stay healthy before the next one.
        #[arg(long)]
        health_wait: Option<String>,
        /// Start it and print its id without following it.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Freeze deployments (all, or one service): new ones are refused. Without --reason,
    /// shows the freezes in force.
    Freeze {
        /// One service (default: all).
        service: Option<String>,
        /// Why (required to freeze).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Lift a freeze (all, or one service).
    Unfreeze {
        /// One service (default: the global freeze).
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow the gate's events live (breaches, cut-backs, changes), one line each.
    Events {
        /// Only these services (repeat).
        #[arg(long = "service")]
        services: Vec<String>,
        /// Only these kinds (repeat): breach, rolled_back, weight_set, ...
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Also show the kept events after this sequence number (0: all kept).
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeployAction {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl DeployAction {
    fn as_str(self) -> &'static str {
        match self {
            DeployAction::Pause => "pause",
            DeployAction::Resume => "resume",
            DeployAction::Abort => "abort",
            DeployAction::Promote => "promote",
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Strategy {
    Canary,
    #[value(alias = "blue_green")]
    BlueGreen,
    Rolling,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own view; the gate's info lines would only interleave with it.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Demo {
            rate,
            clients,
            no_shield,
            db,
        } => demo(rate, clients, !no_shield, db),
        Command::Migrate { config } => migrate(config),
        Command::Run { config } => run(config),
        Command::CheckConfig { files } => return check_config(&files),
        other => remote(other),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn migrate(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = sluice::store::Store::open(&config.store.url).await?;
        println!("{}: migrated ({})", config.store.url, store.backend());
        for (table, rows) in store.counts().await? {
            println!("  {table:<16} {rows:>9} rows");
        }
        store.close().await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

fn demo(rate: u32, clients: usize, shield: bool, db: PathBuf) -> anyhow::Result<ExitCode> {
    let options = sluice::demo::DemoOptions {
        rate,
        clients,
        shield,
        db: Some(db),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let mut out = std::io::stdout();
        sluice::demo::run(options, &mut out).await
    })?;
    // A demo that did not cut back, or let errors through with the shield on, failed.
    let ok = summary.detect.is_some() && (!shield || summary.client_errors == 0);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        match Config::load(f) {
            Ok(c) => println!("{}: ok ({} service(s))", f.display(), c.services.len()),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let gate = gate::start(config).context("cannot start")?;
    let (tx, rx) = std::sync::mpsc::channel();
    gate.spawn_control(handle_signals(gate.control.clone(), tx));
    let signal = rx.recv().unwrap_or("channel closed");
    tracing::info!(signal, "draining");
    let report = gate.drain();
    if report.abandoned > 0 {
        tracing::warn!(
            abandoned = report.abandoned,
            "drain timeout: connections cut"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP reloads the config; SIGTERM or SIGINT start a drain; a second one exits at once.
async fn handle_signals(control: ControlHandle, stop: std::sync::mpsc::Sender<&'static str>) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut stopping = false;
    loop {
        let name = tokio::select! {
            _ = hup.recv() => {
                match control.send(Op::Reload, "signal:SIGHUP").await {
                    Ok(done) => tracing::info!(table = done.table_version, "reloaded on SIGHUP"),
                    Err(e) => tracing::error!("reload on SIGHUP refused, old config keeps serving: {e}"),
                }
                continue;
            }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if stopping {
            tracing::warn!(signal = name, "second signal: exiting without waiting");
            std::process::exit(130);
        }
        stopping = true;
        let _ = stop.send(name);
    }
}

fn remote(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(remote_call(command))
}

async fn remote_call(command: Command) -> anyhow::Result<ExitCode> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let actor = format!("cli:{user}");
    let (remote, method, path, body) = match command {
        Command::Status { service, remote } => {
            let path = match service {
                Some(s) => format!("/api/v1/services/{s}"),
                None => "/api/v1/services".into(),
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
            let mut body = json!({ "upstreams": upstreams });
            if let Some(w) = weight {
                body["weight"] = json!(w);
            }
            if let Some(l) = label {
                body["label"] = json!(l);
            }
            (
                remote,
                Method::PUT,
                format!("/api/v1/services/{service}/canary"),
                Some(body),
            )
        }
        Command::Weight {
            service,
            percent,
            remote,
        } => (
            remote,
            Method::POST,
            format!("/api/v1/services/{service}/weight"),
            Some(json!({ "weight": percent })),
        ),
        Command::Promote { service, remote } => (
            remote,
            Method::POST,
            format!("/api/v1/services/{service}/promote"),
            None,
        ),
        Command::Rollback {
            service,
            reason,
            remote,
        } => (
            remote,
            Method::POST,
            format!("/api/v1/services/{service}/rollback"),
            Some(json!({ "reason": reason })),
        ),
        Command::Resume {
            service,
            weight,
            remote,
        } => (
            remote,
            Method::POST,
            format!("/api/v1/services/{service}/resume"),
            Some(match weight {
                Some(w) => json!({ "weight": w }),
                None => json!({}),
            }),
        ),
        Command::Reload { remote } => (remote, Method::POST, "/api/v1/reload".into(), None),
        Command::Events {
            services,
            kinds,
            since,
            remote,
        } => return follow_events(remote, actor, services, kinds, since).await,
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
                format!("/api/v1/history?{}", q.join("&")),
                None,
            )
        }
        Command::Deployments { service, remote } => {
            let path = match service {
                Some(s) => format!("/api/v1/deployments?service={}", urlencode(&s)),
                None => "/api/v1/deployments".into(),
            };
            (remote, Method::GET, path, None)
        }
        Command::Deployment {
            id,
            action: None,
            remote,
        } => (
            remote,
            Method::GET,
            format!("/api/v1/deployments/{}", urlencode(&id)),
            None,
        ),
        Command::Deployment {
            id,
            action: Some(action),
            remote,
        } => (
            remote,
            Method::POST,
            format!("/api/v1/deployments/{}/{}", urlencode(&id), action.as_str()),
            None,
        ),
        Command::Freeze {
            service: None,
            reason: None,
            remote,
        } => (remote, Method::GET, "/api/v1/freeze".into(), None),
        Command::Releases { service, remote } => (
            remote,
            Method::GET,
            format!("/api/v1/services/{}/releases", urlencode(&service)),
            None,
        ),
        Command::Freeze {
            service: Some(s),
            reason: None,
            ..
        } => {
            eprintln!("sluice: freeze {s}: say why with --reason");
            return Ok(ExitCode::from(1));
        }
        Command::Freeze {
            service,
            reason: Some(reason),
            remote,
        } => (
            remote,
            Method::POST,
            "/api/v1/freeze".into(),
            Some(json!({ "service": service, "reason": reason })),
        ),
        Command::Unfreeze { service, remote } => (
            remote,
            Method::POST,
            "/api/v1/unfreeze".into(),
            Some(json!({ "service": service })),
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
            detach,
            remote,
        } => {
            let mut body = json!({
                "strategy": match strategy {
                    Strategy::Canary => "canary",
                    Strategy::BlueGreen => "blue_green",
                    Strategy::Rolling => "rolling",
                },
            });
            if image.is_none() {
                body["upstreams"] = json!(upstreams);
            }
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(v) = value {
                    body[key] = v;
                }
            };
            set("label", label.map(Value::from));
            set("image", image.map(Value::from));
            if !steps.is_empty() {
                let parsed: Result<Vec<Value>, String> =
                    steps.iter().map(|s| parse_step(s)).collect();
                match parsed {
                    Ok(list) => set("steps", Some(Value::from(list))),
                    Err(e) => {
                        eprintln!("sluice: --step: {e}");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            set("soft_rollback", step_back.then(|| json!("step_back")));
            set("verify_for", verify_for.map(Value::from));
            set("keep_blue_for", keep_blue_for.map(Value::from));
            set("auto_switch", no_auto_switch.then_some(Value::Bool(false)));
            set("batch_size", batch_size.map(Value::from));
            set("max_unavailable", max_unavailable.map(Value::from));
            set("pause_between", pause_between.map(Value::from));
            set("drain_timeout", drain_timeout.map(Value::from));
            set("health_wait", health_wait.map(Value::from));
            return deploy(remote, actor, &service, body, detach).await;
        }
        Command::Run { .. }
        | Command::CheckConfig { .. }
        | Command::Demo { .. }
        | Command::Migrate { .. } => {
            unreachable!("handled in main")
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

async fn follow_events(
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
    let path = format!("/api/v1/events?{}", query.join("&"));
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
fn parse_step(text: &str) -> Result<Value, String> {
    if text.trim() == "pause" {
        return Ok(json!({ "pause": true }));
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
    let mut step = json!({ "weight": weight });
    if let Some(bake) = parts.next() {
        step["bake"] = json!(bake.trim());
    }
    if let Some(min) = parts.next() {
        let n: u64 = min
            .trim()
            .parse()
            .map_err(|_| format!("'{text}': MIN_SAMPLES '{min}' is not a whole number"))?;
        step["min_samples"] = json!(n);
    }
    if parts.next().is_some() {
        return Err(format!("'{text}': at most WEIGHT:BAKE:MIN_SAMPLES"));
    }
    Ok(step)
}

/// Starts a deployment, then (unless detached) follows it until it ends, one line each time
/// its progress changes and one per event. Exit code: 0 succeeded, 2 rolled back, 3 aborted.
async fn deploy(
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
            &format!("/api/v1/services/{}/deployments", urlencode(service)),
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
    let path = format!("/api/v1/deployments/{}", urlencode(&id));
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
                    &sluice::time::format_time(sluice::time::now_ms())[11..19],
                    sluice::client::render_progress(&v["live"])
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
fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn render_freezes(v: &Value) -> String {
    let line = |what: &str, f: &Value| {
        format!(
            "{what:<16} frozen since {} by {}: {}\n",
            sluice::time::format_time(f["at_ms"].as_u64().unwrap_or(0)),
            f["by"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("")
        )
    };
    let mut out = String::new();
    if v["all"].is_object() {
        out.push_str(&line("all services", &v["all"]));
    }
    if let Some(map) = v["services"].as_object() {
        for (name, f) in map {
            out.push_str(&line(name, f));
        }
    }
    if out.is_empty() {
        out.push_str("no freeze in force\n");
    }
    out
}

fn summarize(answer: &Value) -> String {
    if let Some(list) = answer.get("releases").and_then(Value::as_array) {
        return sluice::client::render_releases(list, answer["history"].as_array());
    }
    if answer.get("all").is_some() && answer.get("services").is_some() {
        return render_freezes(answer);
    }
    if answer.get("services").is_some() {
        return render_services(answer);
    }
    if let Some(items) = answer.get("items").and_then(Value::as_array) {
        let mut out = String::new();
        for item in items {
            if item.get("kind").is_some() {
                out.push_str(&render_event(item));
            } else {
                out.push_str(&sluice::client::render_deployment(item));
            }
            out.push('\n');
        }
        if let Some(next) = answer["next"].as_str() {
            out.push_str(&format!("(more: --cursor {next})\n"));
        }
        return out;
    }
    if answer.get("deployment").is_some() && answer.get("trend").is_some() {
        return sluice::client::render_deployment_detail(answer);
    }
    if answer.get("arms").is_some() {
        return render_service(answer);
    }
    let mut out = String::new();
    if let Some(msg) = answer["event"]["message"].as_str() {
        match answer["table_version"].as_u64() {
            Some(v) => out.push_str(&format!("{msg} (table v{v})\n")),
            None => out.push_str(&format!("{msg}\n")),
        }
    }
    if let Some(d) = answer.get("deployment").filter(|d| d.is_object()) {
        out.push_str(&format!(
            "{}  {}\n",
            d["id"].as_str().unwrap_or("?"),
            sluice::client::render_progress(d)
        ));
    }
    if let Some(report) = answer.get("report").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "{}\n",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ));
    }
    if answer["service"].is_object() {
        out.push_str(&render_service(&answer["service"]));
    }
    out
}
