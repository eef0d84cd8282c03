//! `sluice demo` and the real components it is made of: demo upstreams and a load
//! generator (also used by the tests and the benches).
//!
//! The demo starts a stable (v1) and a canary (v2) upstream and a gate in this process,
//! sends steady traffic from many sticky clients, raises the canary's weight step by step,
//! then makes v2 fail every request, and shows live what the gate sees and does: the
//! split, both arms' error rates and p95, and the moment of the cut-back with its measured
//! delay and how many requests clients saw fail.

pub mod load;
pub mod upstream;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use load::{Load, LoadConfig, LoadReport};
pub use upstream::DemoUpstream;

use crate::config::Config;
use crate::events::{Event, EventKind};
use crate::gate::{self, GateHandle};
use crate::rollout::Op;
use crate::types::ArmRole;
use crate::types::Weight;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Requests per second.
    pub rate: u32,
    /// Sticky clients.
    pub clients: usize,
    /// Replay failed canary GETs on stable.
    pub shield: bool,
    /// Canary weights, one step each, before v2 starts failing.
    pub steps: Vec<f64>,
    /// Length of each step.
    pub step: Duration,
    /// How long to keep going after the cut-back (default 2.5 s).
    pub after: Duration,
    /// SQLite file for the demo's history (replaced); `None` keeps no history.
    pub db: Option<std::path::PathBuf>,
}

/// How long the demo waits for the cut-back once v2 fails, at most.
pub const CUTBACK_WAIT: Duration = Duration::from_secs(30);

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            rate: 1000,
            clients: 200,
            shield: true,
            steps: vec![5.0, 20.0, 50.0],
            step: Duration::from_millis(1500),
            after: Duration::from_millis(2500),
            db: None,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Requests the clients sent.
    pub sent: u64,
    /// Requests that failed as the clients saw them (5xx or no answer).
    pub client_errors: u64,
    /// Canary failures replayed on stable.
    pub shielded: u64,
    /// Answers from v1 and v2.
    pub from_stable: u64,
    /// Answers from v2.
    pub from_canary: u64,
    /// From v2's first failing answer to the routing table swap.
    pub detect: Option<Duration>,
    /// From v2's first failing answer to the last request it received.
    pub cut_back: Option<Duration>,
    /// The rule that fired.
    pub rule: Option<String>,
    /// The judge's reason.
    pub reason: Option<String>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An upstream, the load or a runtime could not start.
    #[error("cannot start the demo: {0}")]
    Io(#[from] std::io::Error),
    /// The gate did not start.
    #[error(transparent)]
    Gate(#[from] gate::GateError),
    /// The demo's own config was refused (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A weight change was refused.
    #[error("the gate refused a change: {0}")]
    Control(#[from] crate::rollout::ControlError),
}

fn bar(share: f64, width: usize) -> String {
    let filled = ((share.clamp(0.0, 1.0) * width as f64).round()) as usize;
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

struct Display<'a> {
    out: &'a mut dyn Write,
    started: Instant,
    last: LoadReport,
}

impl Display<'_> {
    fn say(&mut self, text: &str) {
        let _ = writeln!(
            self.out,
            "{:>6.2}s  {text}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = self.out.flush();
    }

    fn header(&mut self) {
        let _ = writeln!(
            self.out,
            "{:>7}  {:>6}  {:<22} {:>16} {:>16}  state",
            "time", "weight", "split (v2 share)", "v1 err / p95", "v2 err / p95"
        );
    }

    fn row(&mut self, gate: &GateHandle, load: &Load) {
        let now = load.report();
        let stable = now
            .from_upstream("v1")
            .saturating_sub(self.last.from_upstream("v1"));
        let canary = now
            .from_upstream("v2")
            .saturating_sub(self.last.from_upstream("v2"));
        let share = if stable + canary == 0 {
            0.0
        } else {
            canary as f64 / (stable + canary) as f64
        };
        self.last = now;
        let table = gate.control.table();
        let Some(service) = table.service("shop") else {
            return;
        };
        let arm = |role| {
            let a = service.arm(role);
            let w = a.stats.snapshot();
            if w.requests() == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:>5.1}% / {:>4.1}ms",
                    w.error_rate() * 100.0,
                    w.quantile_ms(0.95).unwrap_or(0.0)
                )
            }
        };
        let line = format!(
            "{:>6.1}%  [{}] {:>5.1}% {:>16} {:>16}  {}",
            service.weight.percent(),
            bar(share, 14),
            share * 100.0,
            arm(ArmRole::Stable),
            if service.canary.is_some() {
                arm(ArmRole::Canary)
            } else {
                "-".into()
            },
            service.state.as_str()
        );
        self.say(&line);
    }
}

fn demo_config(
    stable: &DemoUpstream,
    canary: &DemoUpstream,
    shield: bool,
    db: Option<&std::path::Path>,
) -> Result<Config, DemoError> {
    let store = match db {
        Some(p) => format!("[store]\nurl = \"sqlite://{}\"\n", p.display()),
        None => "[store]\nenabled = false\n".into(),
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 2
drain_timeout = "2s"
{store}
[[services]]
name = "shop"
stable = ["{}"]
shield = {shield}
"#,
        stable.addr
    );
    let _ = canary;
    Ok(Config::parse(&text, "demo")?)
}

/// Runs the demo, writing the live view to `out`.
pub async fn run(options: DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let stable = DemoUpstream::spawn("v1")?;
    let canary = DemoUpstream::spawn("v2")?;
    // A little work per request, so latencies look like an application's.
    stable.set_delay(Duration::from_millis(2));
    canary.set_delay(Duration::from_millis(2));
    let db = options.db.as_ref().map(|p| {
        // A fresh history for each demo run.
        for suffix in ["", "-wal", "-shm", ".spool", ".spool.offset"] {
            let mut f = p.clone().into_os_string();
            f.push(suffix);
            let _ = std::fs::remove_file(f);
        }
        std::path::absolute(p).unwrap_or_else(|_| p.clone())
    });
    let gate = gate::start(demo_config(
        &stable,
        &canary,
        options.shield,
        db.as_deref(),
    )?)?;
    let mut events = gate.bus.subscribe();
    let mut view = Display {
        out,
        started: Instant::now(),
        last: LoadReport::default(),
    };
    let _ = writeln!(
        view.out,
        "sluice demo: gate on http://{} (admin http://{}), {} req/s from {} sticky clients, shield {}",
        gate.proxy_addr,
        gate.admin_addr,
        options.rate,
        options.clients,
        if options.shield { "on" } else { "off" }
    );
    let _ = writeln!(
        view.out,
        "stable v1 = {}, canary v2 = {}; the judge cuts v2 back when it is worse than its policy\n",
        stable.addr, canary.addr
    );
    view.header();
    let load = Load::start(LoadConfig {
        clients: options.clients,
        max_duration: options.step * (options.steps.len() as u32 + 2)
            + options.after
            + CUTBACK_WAIT,
        ..LoadConfig::new(gate.proxy_addr, options.rate)
    })?;
    let tick = Duration::from_millis(250);

    for (i, weight) in options.steps.iter().enumerate() {
        let w = Weight::from_percent(*weight).map_err(crate::rollout::ControlError::Invalid)?;
        let op = if i == 0 {
            // The deployment of v2: a canary with a label, as an operator would set it.
            let upstream = crate::types::UpstreamAddr::parse(&canary.addr.to_string())
                .map_err(crate::rollout::ControlError::Invalid)?;
            Op::SetCanary {
                service: "shop".into(),
                upstreams: vec![upstream],
                weight: Some(w),
                label: Some("v2".into()),
            }
        } else {
            Op::SetWeight {
                service: "shop".into(),
                weight: w,
            }
        };
        gate.control.send(op, "demo").await?;
        view.say(&format!("--- canary v2 at {weight}% of clients"));
        let until = Instant::now() + options.step;
        while Instant::now() < until {
            tokio::time::sleep(tick).await;
            view.row(&gate, &load);
            drain_events(&mut events, &mut view);
        }
    }

    view.say("--- v2 starts failing: every request answers 500");
    canary.set_error_rate(1.0);
    let mut summary = DemoSummary::default();
    let mut rolled_back: Option<Arc<Event>> = None;
    // Until the cut-back and `after` beyond it; without a cut-back, at most
    // CUTBACK_WAIT (a loaded machine may take longer than an idle one, never that long).
    let mut until = Instant::now() + CUTBACK_WAIT;
    while Instant::now() < until {
        tokio::time::sleep(tick).await;
        view.row(&gate, &load);
        if let Some(e) = drain_events(&mut events, &mut view) {
            if rolled_back.is_none() {
                until = Instant::now() + options.after;
            }
            rolled_back.get_or_insert(e);
        }
    }
    let report = load.stop();
    let shielded = shielded_count(&gate);

    let first_failure = canary.first_failure_at();
    if let (Some(first), Some(e)) = (first_failure, rolled_back.as_ref()) {
        // The event carries wall-clock time; map the failure instant onto it.
        let failure_wall = crate::time::now_ms() as i64 - first.elapsed().as_millis() as i64;
        summary.detect = Some(Duration::from_millis(
            (e.at_ms as i64 - failure_wall).max(0) as u64,
        ));
        summary.rule = e.evidence["verdict"]["rule"].as_str().map(str::to_string);
        summary.reason = e.evidence["verdict"]["reason"].as_str().map(str::to_string);
    }
    if let (Some(first), Some(last)) = (first_failure, canary.last_hit_at()) {
        summary.cut_back = Some(last.saturating_duration_since(first));
    }
    summary.sent = report.sent;
    summary.client_errors = report.client_errors();
    summary.shielded = shielded;
    summary.from_stable = report.from_upstream("v1");
    summary.from_canary = report.from_upstream("v2");
    let report_lines = summary_lines(&summary, options.shield);
    let _ = writeln!(view.out);
    for line in report_lines {
        let _ = writeln!(view.out, "{line}");
    }
    let _ = view.out.flush();
    // Stop serving before returning (the drain is quick: the load has stopped); the drain
    // also moves the last history records to the database.
    let _ = tokio::task::spawn_blocking(move || gate.drain()).await;
    if let Some(db) = &db {
        show_history(db, view.out).await;
    }
    Ok(summary)
}

/// Reads the demo's history back from its SQLite file and prints the deployments.
async fn show_history(db: &std::path::Path, out: &mut dyn Write) {
    let url = crate::config::StoreUrl::Sqlite(db.to_path_buf());
    let store = match crate::store::Store::open(&url).await {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "\nhistory: cannot open {}: {e}", db.display());
            return;
        }
    };
    let _ = writeln!(out, "\nhistory kept in {} (read it with: sluice history / sluice deployment ID against a running gate, or any SQLite client)", db.display());
    if let Ok(page) = store.deployments(None, 10, None).await {
        for d in page.items.iter().rev() {
            if let Ok(Some(trend)) = store.trend(&d.id).await {
                let _ = write!(out, "{}", trend.render());
            }
        }
    }
    if let Ok(counts) = store.counts().await {
        let line: Vec<String> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let _ = writeln!(out, "rows: {}", line.join(", "));
    }
    store.close().await;
}

fn shielded_count(gate: &GateHandle) -> u64 {
    gate.metrics
        .render()
        .lines()
        .find(|l| l.starts_with("sluice_shielded_requests_total{service=\"shop\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Prints the judge's events as they come; returns the cut-back when it happens.
fn drain_events(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Event>>,
    view: &mut Display<'_>,
) -> Option<Arc<Event>> {
    let mut cut = None;
    while let Ok(e) = rx.try_recv() {
        match e.kind {
            EventKind::Breach | EventKind::BreachCleared => {
                view.say(&format!("judge: {}", e.message));
            }
            EventKind::RolledBack => {
                view.say(&format!(
                    ">>> CUT BACK by {}: {} (table v{})",
                    e.actor,
                    e.message,
                    e.table.map(|t| t.to).unwrap_or(0)
                ));
                cut = Some(e);
            }
            _ => {}
        }
    }
    cut
}

fn summary_lines(s: &DemoSummary, shield: bool) -> Vec<String> {
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let mut lines = vec![
        "summary".to_string(),
        format!("  requests sent                      {}", s.sent),
        format!(
            "  answered by v1 / v2                {} / {}",
            s.from_stable, s.from_canary
        ),
        format!(
            "  failing v2 answer -> cut-back      {} (routing table swapped)",
            ms(s.detect)
        ),
        format!(
            "  failing v2 answer -> last v2 hit   {} (v2 gets nothing after this)",
            ms(s.cut_back)
        ),
        format!(
            "  why                                {}",
            s.reason.as_deref().unwrap_or("no cut-back happened")
        ),
        format!(
            "  failures absorbed by the shield    {}{}",
            s.shielded,
            if shield { "" } else { " (shield off)" }
        ),
        format!("  requests clients saw fail          {}", s.client_errors),
    ];
    if s.detect.is_none() {
        lines.push("  the canary was NOT cut back (see the judge lines above)".into());
    }
    lines
}
