//! The `sluice` command: parsing and dispatch. Running the gate, checking configs, the
//! demo and migrations are here; driving a running gate is `sluice::cli`.

use anyhow::Context;
use clap::Parser;
use sluice::cli::{remote, Cli, Command};
use sluice::config::Config;
use sluice::gate;
use sluice::rollout::{ControlHandle, Op};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own view; the gate's info lines would only interleave with it.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    // Per-connection complaints about what clients send (a bad ClientHello, an IP address
    // as SNI, a reset mid-handshake) are counted in sluice_tls_handshakes_total; logged
    // one line each they would let any client flood the log. SLUICE_LOG can turn them on.
    let quiet = ["rustls=error", "pingora_core::services::listening=off"];
    let filter = std::env::var("SLUICE_LOG").unwrap_or_else(|_| default_filter.to_string());
    let mut directives = filter.clone();
    for q in quiet {
        let target = q.split('=').next().unwrap_or(q);
        if !filter.contains(target) {
            directives.push(',');
            directives.push_str(q);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&directives)
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
        match Config::check(f) {
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
    let (installed_tx, installed) = std::sync::mpsc::channel();
    gate.spawn_control(handle_signals(
        gate.control.clone(),
        gate.access_log.clone(),
        tx,
        installed_tx,
    ));
    // Ready only once signals are caught: a SIGHUP or SIGTERM before that would end the
    // process (their default action) instead of reloading or draining.
    if installed
        .recv_timeout(std::time::Duration::from_secs(30))
        .is_err()
    {
        anyhow::bail!("the signal handlers did not start");
    }
    tracing::info!(proxy = %gate.proxy_addr, admin = %gate.admin_addr, "sluice ready");
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

/// SIGHUP reloads the config; SIGUSR1 reopens the access log; SIGTERM or SIGINT start a
/// drain; a second one exits at once.
async fn handle_signals(
    control: ControlHandle,
    access_log: Option<sluice::access_log::AccessLog>,
    stop: std::sync::mpsc::Sender<&'static str>,
    installed: std::sync::mpsc::Sender<()>,
) {
    let (Ok(mut hup), Ok(mut usr1), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let _ = installed.send(());
    let mut stopping = false;
    loop {
        let name = tokio::select! {
            _ = usr1.recv() => {
                if let Some(log) = &access_log {
                    log.reopen();
                    tracing::info!("access log reopened on SIGUSR1");
                }
                continue;
            }
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
