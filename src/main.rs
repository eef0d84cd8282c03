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
    /// One deployment: its events and its health trend per minute.
    Deployment {
        /// Deployment id.
        id: String,
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
            remote,
        } => {
            let mut body = json!({ "upstreams": upstreams });
            if let Some(w) = weight {
                body["weight"] = json!(w);
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
        Command::Deployment { id, remote } => (
            remote,
            Method::GET,
            format!("/api/v1/deployments/{}", urlencode(&id)),
            None,
        ),
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

fn summarize(answer: &Value) -> String {
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
        out.push_str(&format!(
            "{msg} (table v{})\n",
            answer["table_version"].as_u64().unwrap_or(0)
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
