//! The rollout controller: the one writer of the routing table.
//!
//! Everything that changes routing (the admin API, the CLI through it, SIGHUP, the judge)
//! goes through [`Controller::run`], which applies one change at a time, publishes a new
//! [`RoutingTable`] with one `store`, and emits an [`Event`] carrying the evidence. Every
//! 100 ms, and whenever the data plane pokes it after a canary failure, it judges every
//! canary; a breach that holds (see [`crate::judge::Hysteresis`]) is cut back at once:
//! weight 0, state `rolled_back`, one swap.

pub mod analyzing;
mod changes;
mod command;
pub mod containers;
pub mod deploy;
mod freezes;
mod health;
pub mod history;
mod judging;
pub mod ops;
pub mod plan;
pub mod probing;
pub mod state;
mod steering;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::json;
use tokio::sync::{mpsc, watch as tokio_watch};

pub use command::{Applied, Command, ControlError, ControlHandle, DeploySource, Op, COMMAND_QUEUE};
pub use history::{Keeper, RestoreReport, TableSnapshot};
pub use ops::ReloadReport;
pub use watch::{Board, JudgeStatus, SharedBoard, Wake};

use crate::config::{Config, ConfigError};
use crate::events::{Event, EventBus, EventKind, NewEvent, TableChange};
use crate::judge::Hysteresis;
use crate::metrics::Metrics;
use crate::routing::{Arm, RoutingOptions, RoutingTable, Service, TablePublisher, TableReader};

/// How often the controller judges every canary and maintains the windows.
pub const TICK: Duration = Duration::from_millis(100);
/// Shortest gap between two evaluations caused by canary failures.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(2);

/// What the rest of the gate needs from a new controller.
pub struct Wiring {
    /// Commands in.
    pub handle: ControlHandle,
    /// The table the proxy reads.
    pub table: TableReader,
    /// The admin token, swapped on reload.
    pub admin_token: Arc<ArcSwapOption<String>>,
    /// The data plane's poke after a canary failure.
    pub wake: Wake,
    /// Notifiers and the dashboard's address, swapped on reload.
    pub notify: crate::notify::SharedSettings,
}

/// The controller task's state.
pub struct Controller {
    config: Config,
    table: TablePublisher,
    board: SharedBoard,
    metrics: Arc<Metrics>,
    bus: EventBus,
    admin_token: Arc<ArcSwapOption<String>>,
    notify: crate::notify::SharedSettings,
    rx: mpsc::Receiver<Command>,
    wake_rx: mpsc::Receiver<()>,
    hysteresis: HashMap<String, Hysteresis>,
    /// Per canary service: both arms over the canary's life (the sustained rules).
    sustained: HashMap<String, crate::judge::Sustained>,
    last_decision: HashMap<String, Arc<Event>>,
    started: tokio::time::Instant,
    last_judged: Option<tokio::time::Instant>,
    keeper: Keeper,
    restored: Option<RestoreReport>,
    probing: probing::Probing,
    probe_rx: mpsc::Receiver<crate::probes::Observation>,
    analyzing: analyzing::Analyzing,
    analysis_rx: mpsc::Receiver<crate::analysis::Observation>,
    deployments: deploy::Deployments,
    deployment_views: Arc<ArcSwap<HashMap<String, deploy::DeploymentView>>>,
    pending_wants: HashMap<String, Vec<plan::Want>>,
    refused: HashMap<String, tokio::time::Instant>,
    freezes: Arc<ArcSwap<deploy::Freezes>>,
    /// The Docker release manager, when a service runs as containers.
    docker: Option<mpsc::UnboundedSender<crate::docker::manager::Request>>,
    /// The TLS listeners' certificates, reloaded with the config.
    certificates: Option<Arc<crate::listeners::Certificates>>,
    /// Reports of the release manager and discovery, and the sender they clone.
    reports: mpsc::Receiver<crate::docker::report::Envelope>,
    reporter: crate::docker::report::Reporter,
    /// Services whose stable release cannot be restored, and why.
    docker_gone: HashMap<String, String>,
    /// What discovery found, by service (re-applied after a reload).
    discovered: HashMap<String, crate::docker::discovery::Found>,
    /// Resource use of canary containers, for the judge.
    usage: crate::docker::usage::UsageBoard,
}

/// Where the first table of a run comes from.
pub enum Start {
    /// The config alone.
    Config,
    /// The config and the latest snapshot in history (`source`: database or spool).
    Restore(TableSnapshot, String),
}

/// Builds version 1 of the table from a config.
pub fn initial_table(config: &Config, metrics: &Metrics) -> RoutingTable {
    let services = config
        .services
        .iter()
        .map(|s| Arc::new(Service::from_config(s, metrics)))
        .collect();
    RoutingTable::new(
        1,
        services,
        Arc::new(RoutingOptions::from_config(
            &config.routing,
            config.server.idle_timeout,
        )),
    )
}

fn arm_evidence(arm: Option<&Arm>) -> serde_json::Value {
    match arm {
        None => serde_json::Value::Null,
        Some(a) => json!({
            "upstreams": a.upstreams.iter().map(|u| u.spec.clone()).collect::<Vec<_>>(),
            "window": a.stats.snapshot().summary(),
            "consecutive_failures": a.stats.consecutive_failures(),
        }),
    }
}

/// What the notifiers need of a config.
fn notify_settings(config: &Config) -> crate::notify::Settings {
    crate::notify::Settings {
        notifiers: config.notify.clone(),
        dashboard_url: config.dashboard.url.clone(),
    }
}

/// The numbers of both arms of a service, for an event.
pub fn service_evidence(s: &Service) -> serde_json::Value {
    json!({
        "state": s.state.as_str(),
        "canary_weight": s.weight.percent(),
        "generation": s.generation,
        "stable": arm_evidence(Some(&s.stable)),
        "canary": arm_evidence(s.canary.as_ref()),
    })
}

impl Controller {
    /// A controller over a fresh table built from `config`, keeping no history.
    pub fn new(config: Config, metrics: Arc<Metrics>, bus: EventBus) -> (Controller, Wiring) {
        Controller::with_history(config, metrics, bus, Keeper::new(None), Start::Config)
    }

    /// A controller whose first table comes from `start`, keeping history through `keeper`.
    pub fn with_history(
        config: Config,
        metrics: Arc<Metrics>,
        bus: EventBus,
        mut keeper: Keeper,
        start: Start,
    ) -> (Controller, Wiring) {
        let (first, restored) = match start {
            Start::Config => (initial_table(&config, &metrics), None),
            Start::Restore(snapshot, source) => {
                let (t, r) = history::restore(&config, &snapshot, &source, &metrics, &mut keeper);
                (t, Some(r))
            }
        };
        for s in &first.services {
            keeper.follow(
                s,
                EventKind::Started,
                "config",
                None,
                serde_json::Value::Null,
            );
        }
        keeper.services(&config);
        keeper.snapshot(&first, "started");
        let table = TablePublisher::new(first);
        let board: SharedBoard = Arc::new(ArcSwap::from_pointee(Board::new()));
        let admin_token = Arc::new(ArcSwapOption::from(
            config.admin.token.clone().map(Arc::new),
        ));
        let notify = Arc::new(ArcSwap::from_pointee(notify_settings(&config)));
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (wake, wake_rx) = Wake::channel();
        let (reporter, reports) = crate::docker::report::Reporter::channel();
        let (probing, probe_rx) =
            probing::Probing::new(Arc::new(crate::probes::check::RealChecker::new()));
        let (analyzing, analysis_rx) = analyzing::Analyzing::new();
        let deployment_views = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let freezes = Arc::new(ArcSwap::from_pointee(deploy::Freezes::default()));
        let reader = table.reader();
        let controller = Controller {
            config,
            table,
            board: board.clone(),
            metrics,
            bus,
            admin_token: admin_token.clone(),
            notify: notify.clone(),
            rx,
            wake_rx,
            hysteresis: HashMap::new(),
            sustained: HashMap::new(),
            last_decision: HashMap::new(),
            started: tokio::time::Instant::now(),
            last_judged: None,
            keeper,
            restored,
            probing,
            probe_rx,
            analyzing,
            analysis_rx,
            deployments: deploy::Deployments::default(),
            deployment_views: deployment_views.clone(),
            pending_wants: HashMap::new(),
            refused: HashMap::new(),
            freezes: freezes.clone(),
            docker: None,
            certificates: None,
            reports,
            reporter,
            docker_gone: HashMap::new(),
            discovered: HashMap::new(),
            usage: crate::docker::usage::UsageBoard::default(),
        };
        controller.update_gauges(&controller.table.load());
        let handle = ControlHandle {
            tx,
            table: reader.clone(),
            board,
            deployments: deployment_views,
            freezes: freezes.clone(),
        };
        let wiring = Wiring {
            handle,
            table: reader,
            admin_token,
            wake,
            notify,
        };
        (controller, wiring)
    }

    /// Connects the Docker release manager (image deployments go to it).
    pub fn attach_docker(&mut self, tx: mpsc::UnboundedSender<crate::docker::manager::Request>) {
        self.docker = Some(tx);
    }

    /// Connects the TLS listeners' certificates: a reload loads the new `[tls]` files.
    pub fn attach_certificates(&mut self, certificates: Arc<crate::listeners::Certificates>) {
        self.certificates = Some(certificates);
    }

    /// Where the release manager and discovery send their reports.
    pub fn reporter(&self) -> crate::docker::report::Reporter {
        self.reporter.clone()
    }

    /// The board the resource sampler fills with canary containers' CPU and memory.
    pub fn usage_board(&self) -> crate::docker::usage::UsageBoard {
        self.usage.clone()
    }

    /// The `restored` and `started` events. Holds the first table only while it speaks: a
    /// table kept alive would look like requests still in flight to a drain.
    fn announce_start(&mut self) {
        let table = self.table.load_full();
        if let Some(report) = self.restored.take() {
            self.bus.publish(NewEvent::new(EventKind::Restored, "gate", format!(
                    "routing state restored from table v{} ({}): {} restored, {} held, {} from the config",
                    report.from_version,
                    report.source,
                    report.restored.len(),
                    report.held.len(),
                    report.from_config.len()
                )).table(TableChange {
                    from: report.from_version,
                    to: table.version,
                }).evidence(serde_json::to_value(&report).unwrap_or_default()));
        }
        self.bus.publish(
            NewEvent::new(
                EventKind::Started,
                "gate",
                format!(
                    "serving {} service(s) with routing table v{}",
                    table.services.len(),
                    table.version
                ),
            )
            .table(TableChange {
                from: 0,
                to: table.version,
            })
            .evidence(json!({
                "services": table.services.iter().map(|s| service_evidence(s)).collect::<Vec<_>>(),
            })),
        );
    }

    /// Applies commands, judges and ticks until `shutdown` turns true; then writes the
    /// minutes in progress.
    pub async fn run(mut self, mut shutdown: tokio_watch::Receiver<bool>) {
        self.announce_start();
        self.started = tokio::time::Instant::now();
        self.probing.reconcile(&self.table.load());
        self.reconcile_analyses(&self.table.load_full());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(obs) = self.probe_rx.recv() => self.on_probe(obs),
                Some(obs) = self.analysis_rx.recv() => self.on_analysis(obs),
                Some(envelope) = self.reports.recv() => self.on_report(envelope),
                Some(()) = self.wake_rx.recv() => {
                    let now = tokio::time::Instant::now();
                    if self.last_judged.is_none_or(|t| now - t >= MIN_WAKE_INTERVAL) {
                        self.judge_all();
                    }
                }
                _ = tick.tick() => {
                    self.maintain_windows();
                    self.judge_all();
                    self.drive_deployments();
                    self.deployment_views.store(Arc::new(self.deployment_views()));
                    self.keeper.sample(&self.table.load(), false);
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.keeper.sample(&self.table.load(), true);
        self.probing.stop();
        self.analyzing.stop();
    }

    async fn handle(&mut self, cmd: Command) {
        let Command { op, actor, reply } = cmd;
        let result = match op {
            Op::Reload => self.reload(&actor).await,
            Op::Deploy {
                service,
                spec,
                source,
                label,
                deadline,
            } => self.start_deployment(&service, spec, deadline, source, label, &actor),
            Op::Deployment { id, control } => self.control_deployment(&id, control, &actor),
            Op::Freeze { service, reason } => self.set_freeze(service, reason, &actor),
            op => self.apply(op, &actor),
        };
        // The board shows the change at once, not at the next tick.
        self.judge_all();
        self.deployment_views
            .store(Arc::new(self.deployment_views()));
        // The asker may have gone (client disconnected); the change stands either way.
        let _ = reply.send(result);
    }

    /// A report from the Docker side, applied like a command and answered.
    fn on_report(&mut self, envelope: crate::docker::report::Envelope) {
        use crate::docker::report::Report;
        let crate::docker::report::Envelope {
            report,
            from,
            answer,
        } = envelope;
        let result = match report {
            Report::Prepared {
                id,
                upstreams,
                evidence,
            } => self.prepared(&id, upstreams, evidence, from),
            Report::PrepareFailed { id, why } => self.prepare_failed(&id, &why, from),
            Report::StableMoved {
                service,
                moved,
                why,
                evidence,
            } => self.stable_moved(&service, moved, &why, evidence, from),
            Report::ReleaseGone { service, why } => self.release_gone(&service, why, from),
            Report::Discovered(found) => self.discovered(found, from),
        };
        self.judge_all();
        self.deployment_views
            .store(Arc::new(self.deployment_views()));
        // The sender may have stopped waiting; the change stands either way.
        let _ = answer.send(result.map(|_| ()).map_err(|e| e.to_string()));
    }

    /// Publishes `table` as the next version (and keeps it in history); the probes follow
    /// its upstreams. Returns the change.
    fn publish(&mut self, table: RoutingTable, cause: &str) -> TableChange {
        let from = self.table.load().version;
        let to = table.version;
        self.update_gauges(&table);
        let table = Arc::new(table);
        self.table.store(table.clone());
        self.keeper.snapshot(&table, cause);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.probing.reconcile(&table);
            self.reconcile_analyses(&table);
        }
        TableChange { from, to }
    }

    fn update_gauges(&self, table: &RoutingTable) {
        self.metrics.set_table_version(table.version);
        for s in &table.services {
            self.metrics.canary_weight(s.name()).set(s.weight.percent());
        }
    }
}

async fn load_blocking(path: PathBuf) -> Result<Config, ConfigError> {
    let display = path.display().to_string();
    match tokio::task::spawn_blocking(move || Config::load(&path)).await {
        Ok(result) => result,
        Err(e) => Err(ConfigError::Io {
            file: display,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests;
