//! The rollout controller: the one writer of the routing table.
//!
//! Everything that changes routing (the admin API, the CLI through it, SIGHUP, the judge)
//! goes through [`Controller::run`], which applies one change at a time, publishes a new
//! [`RoutingTable`] with one `store`, and emits an [`Event`] carrying the evidence. Every
//! 100 ms, and whenever the data plane pokes it after a canary failure, it judges every
//! canary; a breach that holds (see [`crate::judge::Hysteresis`]) is cut back at once:
//! weight 0, state `rolled_back`, one swap.

pub mod containers;
pub mod deploy;
pub mod history;
pub mod ops;
pub mod plan;
pub mod probing;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

pub use history::{Keeper, RestoreReport, TableSnapshot};
use ops::Change;
pub use ops::ReloadReport;
pub use watch::{Board, JudgeStatus, SharedBoard, Wake};

use crate::config::{Config, ConfigError};
use crate::events::{Event, EventBus, EventKind, NewEvent, TableChange};
use crate::judge::{decide, Action, Hysteresis, Verdict};
use crate::metrics::Metrics;
use crate::routing::{Arm, RoutingOptions, RoutingTable, Service, SharedTable};
use crate::time::now_ms;
use crate::types::ServiceState;
use crate::types::{UpstreamAddr, Weight};

/// How often the controller judges every canary and maintains the windows.
pub const TICK: Duration = Duration::from_millis(100);
/// Shortest gap between two evaluations caused by canary failures.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(2);
/// Commands that may wait for the controller before senders wait in turn.
pub const COMMAND_QUEUE: usize = 256;

/// A change someone asks for.
#[derive(Debug)]
pub enum Op {
    /// Set (replace) the canary upstreams; `weight` defaults to 0.
    SetCanary {
        /// Service name.
        service: String,
        /// New canary upstreams (already parsed and resolved).
        upstreams: Vec<UpstreamAddr>,
        /// Weight to start with.
        weight: Option<Weight>,
        /// A version label for history (e.g. "v2").
        label: Option<String>,
    },
    /// Change the canary weight.
    SetWeight {
        /// Service name.
        service: String,
        /// New weight.
        weight: Weight,
    },
    /// Make the canary the new stable.
    Promote {
        /// Service name.
        service: String,
    },
    /// Cut the canary back to 0 and hold it there.
    Rollback {
        /// Service name.
        service: String,
        /// Why, in the operator's words.
        reason: String,
    },
    /// Lift a rolled-back hold.
    Resume {
        /// Service name.
        service: String,
        /// Weight to resume at (default: the weight it had).
        weight: Option<Weight>,
    },
    /// Re-read the config file and apply it.
    Reload,
    /// Remove a held or idle canary.
    ClearCanary {
        /// Service name.
        service: String,
    },
    /// Start a deployment.
    Deploy {
        /// Service name.
        service: String,
        /// Strategy and settings.
        spec: plan::Spec,
        /// The new version: its upstreams, or an image to run.
        source: DeploySource,
        /// Version label.
        label: Option<String>,
    },
    /// Pause, resume, abort or promote a deployment.
    Deployment {
        /// Deployment id.
        id: String,
        /// What to do.
        control: deploy::Control,
    },
    /// Freeze (with a reason) or unfreeze (`None`) deployments of a service or all.
    Freeze {
        /// One service, or all.
        service: Option<String>,
        /// Why; `None` lifts the freeze.
        reason: Option<String>,
    },
}

/// Where a deployment's new version comes from.
#[derive(Debug, Clone)]
pub enum DeploySource {
    /// Upstreams that already run.
    Upstreams(Vec<UpstreamAddr>),
    /// An image Sluice runs as containers (`[services.docker]`).
    Image(String),
}

/// A command: what, who asked, and where to send the answer.
#[derive(Debug)]
pub struct Command {
    /// The change.
    pub op: Op,
    /// Who asked (`api`, `api:cli:alice`, `signal:SIGHUP`, ...).
    pub actor: String,
    /// The answer.
    pub reply: oneshot::Sender<Result<Applied, ControlError>>,
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The table version now serving.
    pub table_version: u64,
    /// The event it produced.
    pub event: Arc<Event>,
    /// For a reload: what changed.
    pub reload: Option<ReloadReport>,
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such service.
    #[error("no service named '{0}'")]
    NotFound(String),
    /// The service's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The new config file is invalid; the old table keeps serving.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The controller has stopped (the gate is shutting down).
    #[error("the controller is not running")]
    Unavailable,
}

/// The sending side, cheap to clone: admin API handlers and signal handlers hold one.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: mpsc::Sender<Command>,
    table: SharedTable,
    board: SharedBoard,
    deployments: Arc<ArcSwap<HashMap<String, deploy::DeploymentView>>>,
    freezes: Arc<ArcSwap<serde_json::Value>>,
}

impl ControlHandle {
    /// The freezes in force (`{"all": ..., "services": {...}}`).
    pub fn freezes(&self) -> serde_json::Value {
        (**self.freezes.load()).clone()
    }

    /// The table serving now.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The judge's status board.
    pub fn board(&self) -> Arc<Board> {
        self.board.load_full()
    }

    /// A live (running, paused or recently finished) deployment.
    pub fn deployment(&self, id: &str) -> Option<deploy::DeploymentView> {
        self.deployments.load().get(id).cloned()
    }

    /// Every live deployment.
    pub fn deployments(&self) -> Arc<HashMap<String, deploy::DeploymentView>> {
        self.deployments.load_full()
    }

    /// Sends a command and waits for its answer.
    pub async fn send(&self, op: Op, actor: impl Into<String>) -> Result<Applied, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                op,
                actor: actor.into(),
                reply,
            })
            .await
            .map_err(|_| ControlError::Unavailable)?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }
}

/// What the rest of the gate needs from a new controller.
pub struct Wiring {
    /// Commands in.
    pub handle: ControlHandle,
    /// The table the proxy reads.
    pub table: SharedTable,
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
    table: SharedTable,
    board: SharedBoard,
    metrics: Arc<Metrics>,
    bus: EventBus,
    admin_token: Arc<ArcSwapOption<String>>,
    notify: crate::notify::SharedSettings,
    rx: mpsc::Receiver<Command>,
    wake_rx: mpsc::Receiver<()>,
    hysteresis: HashMap<String, Hysteresis>,
    last_decision: HashMap<String, Arc<Event>>,
    started: tokio::time::Instant,
    last_judged: Option<tokio::time::Instant>,
    keeper: Keeper,
    restored: Option<RestoreReport>,
    probing: probing::Probing,
    probe_rx: mpsc::Receiver<crate::probes::Observation>,
    deployments: deploy::Deployments,
    deployment_views: Arc<ArcSwap<HashMap<String, deploy::DeploymentView>>>,
    pending_wants: HashMap<String, Vec<plan::Want>>,
    refused: HashMap<String, tokio::time::Instant>,
    freezes: Arc<ArcSwap<serde_json::Value>>,
    /// The Docker release manager, when a service runs as containers.
    docker: Option<mpsc::UnboundedSender<crate::docker::release::Request>>,
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

fn service_name(op: &Op) -> Option<&str> {
    match op {
        Op::SetCanary { service, .. }
        | Op::SetWeight { service, .. }
        | Op::Promote { service }
        | Op::Rollback { service, .. }
        | Op::Resume { service, .. }
        | Op::ClearCanary { service } => Some(service),
        _ => None,
    }
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
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(first));
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
        let deployment_views = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let freezes = Arc::new(ArcSwap::from_pointee(
            json!({ "all": null, "services": {} }),
        ));
        let controller = Controller {
            config,
            table: table.clone(),
            board: board.clone(),
            metrics,
            bus,
            admin_token: admin_token.clone(),
            notify: notify.clone(),
            rx,
            wake_rx,
            hysteresis: HashMap::new(),
            last_decision: HashMap::new(),
            started: tokio::time::Instant::now(),
            last_judged: None,
            keeper,
            restored,
            probing,
            probe_rx,
            deployments: deploy::Deployments::default(),
            deployment_views: deployment_views.clone(),
            pending_wants: HashMap::new(),
            refused: HashMap::new(),
            freezes: freezes.clone(),
            docker: None,
            reports,
            reporter,
            docker_gone: HashMap::new(),
            discovered: HashMap::new(),
            usage: crate::docker::usage::UsageBoard::default(),
        };
        controller.update_gauges(&controller.table.load());
        let handle = ControlHandle {
            tx,
            table: table.clone(),
            board,
            deployments: deployment_views,
            freezes: freezes.clone(),
        };
        let wiring = Wiring {
            handle,
            table,
            admin_token,
            wake,
            notify,
        };
        (controller, wiring)
    }

    /// Connects the Docker release manager (image deployments go to it).
    pub fn attach_docker(&mut self, tx: mpsc::UnboundedSender<crate::docker::release::Request>) {
        self.docker = Some(tx);
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
            self.bus.publish(NewEvent {
                kind: EventKind::Restored,
                service: None,
                deployment: None,
                actor: "gate".into(),
                message: format!(
                    "routing state restored from table v{} ({}): {} restored, {} held, {} from the config",
                    report.from_version,
                    report.source,
                    report.restored.len(),
                    report.held.len(),
                    report.from_config.len()
                ),
                table: Some(TableChange {
                    from: report.from_version,
                    to: table.version,
                }),
                evidence: serde_json::to_value(&report).unwrap_or_default(),
            });
        }
        self.bus.publish(NewEvent {
            kind: EventKind::Started,
            service: None,
            deployment: None,
            actor: "gate".into(),
            message: format!(
                "serving {} service(s) with routing table v{}",
                table.services.len(),
                table.version
            ),
            table: Some(TableChange {
                from: 0,
                to: table.version,
            }),
            evidence: json!({
                "services": table.services.iter().map(|s| service_evidence(s)).collect::<Vec<_>>(),
            }),
        });
    }

    /// Applies commands, judges and ticks until `shutdown` turns true; then writes the
    /// minutes in progress.
    pub async fn run(mut self, mut shutdown: tokio_watch::Receiver<bool>) {
        self.announce_start();
        self.started = tokio::time::Instant::now();
        self.probing.reconcile(&self.table.load());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(obs) = self.probe_rx.recv() => self.on_probe(obs),
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
    }

    /// A probe result: record it, apply it, and act when a target's health changed (take a
    /// stable upstream out of its arm or put it back; let the judge see a failing canary).
    fn on_probe(&mut self, obs: crate::probes::Observation) {
        self.metrics.probe_result(
            &obs.key.service,
            &obs.key.probe,
            obs.outcome.status.as_str(),
            obs.outcome.latency.as_secs_f64(),
        );
        self.keeper.probe(&obs);
        let table = self.table.load_full();
        let Some(service) = table.service(&obs.key.service).cloned() else {
            return;
        };
        let Some(change) = self.probing.observe(&obs) else {
            return;
        };
        let after = self
            .probing
            .upstream_health(&service, obs.key.role, &obs.key.upstream);
        self.metrics.upstream_healthy(
            &obs.key.service,
            obs.key.role.as_str(),
            &obs.key.upstream,
            after != crate::probes::Health::Unhealthy,
        );
        use crate::probes::Health;
        // A first success is not news; failing, and recovering from it, are.
        let kind = match (change.from, change.health) {
            (_, Health::Unhealthy) => Some(EventKind::ProbeFailed),
            (Health::Unhealthy, Health::Healthy) => Some(EventKind::ProbeRecovered),
            _ => None,
        };
        if let Some(kind) = kind {
            let policy = self.probing.spec(&obs.key).map(|s| s.policy.clone());
            let recent: Vec<_> = self
                .probing
                .views(&service)
                .into_iter()
                .filter(|v| {
                    v.probe == obs.key.probe
                        && v.upstream == obs.key.upstream
                        && v.arm == obs.key.role
                })
                .collect();
            let event = self.bus.publish(NewEvent {
                kind,
                service: Some(obs.key.service.clone()),
                deployment: self.keeper.deployment_of(&obs.key.service),
                actor: format!("probe:{}", obs.key.probe),
                message: format!(
                    "probe '{}' {} on {} upstream {} (upstream now {:?}): {}",
                    obs.key.probe,
                    if kind == EventKind::ProbeFailed {
                        "fails"
                    } else {
                        "passes again"
                    },
                    obs.key.role.as_str(),
                    obs.key.upstream,
                    after,
                    obs.outcome.detail
                ),
                table: None,
                evidence: json!({ "probe": recent, "policy": policy, "upstream_health": after }),
            });
            self.remember(&event);
        }
        // Routing follows the stable arm's health at once.
        let next = self.probing.apply(&service);
        let moved = |a: &Arm, b: &Arm| a.down != b.down;
        let changed = moved(&service.stable, &next.stable)
            || match (&service.canary, &next.canary) {
                (Some(a), Some(b)) => moved(a, b),
                _ => false,
            };
        if changed {
            if let Some(index) = table.position(service.name()) {
                let mut services = table.services.clone();
                services[index] = Arc::new(next);
                self.publish(table.next(services, None), "probe");
            }
        }
        self.judge_all();
    }

    fn maintain_windows(&self) {
        let table = self.table.load();
        for s in &table.services {
            s.stable.stats.maintain();
            if let Some(c) = &s.canary {
                c.stats.maintain();
            }
        }
    }

    /// Judges every canary that is receiving its weight, acts on breaches, and refreshes
    /// the board.
    pub fn judge_all(&mut self) {
        let now = tokio::time::Instant::now();
        self.last_judged = Some(now);
        let clock = now - self.started;
        let at = Instant::now();
        let table = self.table.load_full();
        let mut board = Board::with_capacity(table.services.len());
        for service in &table.services {
            let name = service.name().to_string();
            let verdict = match (
                service.state,
                watch::evidence(service, at, &self.probing, &self.usage),
            ) {
                (ServiceState::Canary, Some(e)) => {
                    let policy = &service.config.cutback;
                    let verdict = decide(&e, policy);
                    let h = self.hysteresis.entry(name.clone()).or_default();
                    match h.observe(&verdict, clock, policy.breach_for) {
                        Action::None => {}
                        Action::Watch => self.report_breach(service, &verdict, false),
                        Action::Cleared => self.report_cleared(service, &verdict),
                        Action::CutBack if policy.enabled => self.breach_acted(service, &verdict),
                        Action::CutBack => self.report_breach(service, &verdict, true),
                    }
                    Some(verdict)
                }
                _ => {
                    self.hysteresis.remove(&name);
                    None
                }
            };
            let watching = self.hysteresis.get(&name).is_some_and(Hysteresis::watching);
            board.insert(
                name.clone(),
                JudgeStatus {
                    verdict,
                    at_ms: now_ms(),
                    watching,
                    last_decision: self.last_decision.get(&name).cloned(),
                    probes: self.probing.views(service),
                    canary_healthy_since_ms: self.probing.canary_healthy_since(service),
                },
            );
        }
        self.board.store(Arc::new(board));
        self.deployment_views
            .store(Arc::new(self.deployment_views()));
    }

    /// A breach that holds: a deployment may step back (soft regressions, when asked);
    /// otherwise the canary is cut back, unless the previous version is gone.
    fn breach_acted(&mut self, service: &Service, verdict: &Verdict) {
        let Some(b) = verdict.breach() else {
            return;
        };
        let name = service.name().to_string();
        if self.deployment_breached(&name, b.rule.is_soft(), &b.reason) {
            return;
        }
        if let Some(why) = self.previous_version_gone(&name) {
            // Say it once a minute at most; the canary keeps serving.
            let now = tokio::time::Instant::now();
            if self
                .refused
                .get(&name)
                .is_none_or(|t| now - *t > Duration::from_secs(60))
            {
                self.refused.insert(name.clone(), now);
                self.refuse_rollback(&name, &why, "judge");
            }
            self.pending_wants.remove(&name);
            return;
        }
        self.cut_back(service, verdict);
        self.after_cut_back(&name);
    }

    fn remember(&mut self, event: &Arc<Event>) {
        if let Some(service) = &event.service {
            self.last_decision.insert(service.clone(), event.clone());
        }
    }

    fn report_breach(&mut self, service: &Service, verdict: &Verdict, dry_run: bool) {
        let policy = &service.config.cutback;
        let message = if dry_run {
            format!("{} (cut-back disabled: nothing done)", verdict.summary())
        } else {
            format!(
                "{}; cutting back if it holds for {}",
                verdict.summary(),
                crate::time::format_duration(policy.breach_for)
            )
        };
        let event = self.bus.publish(NewEvent {
            kind: EventKind::Breach,
            service: Some(service.name().to_string()),
            deployment: self.keeper.deployment_of(service.name()),
            actor: "judge".into(),
            message,
            table: None,
            evidence: json!({ "verdict": verdict, "policy": policy }),
        });
        self.remember(&event);
    }

    fn report_cleared(&mut self, service: &Service, verdict: &Verdict) {
        let event = self.bus.publish(NewEvent {
            kind: EventKind::BreachCleared,
            service: Some(service.name().to_string()),
            deployment: self.keeper.deployment_of(service.name()),
            actor: "judge".into(),
            message: format!("breach cleared before the cut-back: {}", verdict.summary()),
            table: None,
            evidence: json!({ "verdict": verdict, "policy": &service.config.cutback }),
        });
        self.remember(&event);
    }

    /// The automatic rollback: same path as the operator's, with the verdict as evidence.
    fn cut_back(&mut self, service: &Service, verdict: &Verdict) {
        let Some(breach) = verdict.breach() else {
            return;
        };
        let rule = breach.rule.as_str();
        let reason = breach.reason.clone();
        let evidence = json!({ "verdict": verdict, "policy": &service.config.cutback });
        let result = self.change(service.name(), "judge", evidence, |old, _| {
            ops::rollback(old, &reason)
        });
        match result {
            Ok(_) => self.metrics.rollback(service.name(), rule),
            Err(e) => tracing::warn!(service = service.name(), error = %e, "cut-back refused"),
        }
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
            } => self.start_deployment(&service, spec, source, label, &actor),
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
        }
        TableChange { from, to }
    }

    fn update_gauges(&self, table: &RoutingTable) {
        self.metrics.set_table_version(table.version);
        for s in &table.services {
            self.metrics.canary_weight(s.name()).set(s.weight.percent());
        }
    }

    /// Applies an operator's change.
    pub fn apply(&mut self, op: Op, actor: &str) -> Result<Applied, ControlError> {
        let name = service_name(&op)
            .ok_or_else(|| ControlError::Invalid("reload is not a service change".into()))?
            .to_string();
        let manual_rollback = matches!(op, Op::Rollback { .. });
        if let Some(active) = self.deployments.active.get(&name) {
            if !manual_rollback {
                return Err(ControlError::Conflict(format!(
                    "deployment {} ({}) started by {} is running on '{name}'; control it through /api/v1/deployments/{} (pause, resume, promote, abort) or roll back",
                    active.id,
                    active.plan.spec().name(),
                    active.started_by,
                    active.id
                )));
            }
        }
        let runs_containers = self
            .config
            .services
            .iter()
            .any(|s| s.name == name && s.docker.is_some());
        if runs_containers && matches!(op, Op::SetCanary { .. } | Op::Resume { .. }) {
            return Err(ControlError::Conflict(format!(
                "'{name}' runs as containers Sluice manages: start a deployment with an image instead (POST /api/v1/services/{name}/deployments)"
            )));
        }
        if manual_rollback {
            if let Some(why) = self.previous_version_gone(&name) {
                self.refuse_rollback(&name, &why, actor);
                return Err(ControlError::Conflict(format!("rollback refused: {why}")));
            }
        }
        let label = match &op {
            Op::SetCanary { label, .. } => label.clone(),
            _ => None,
        };
        let extra = match &label {
            Some(l) => json!({ "label": l }),
            None => serde_json::Value::Null,
        };
        let applied = self.change_labelled(
            &name,
            actor,
            extra,
            label.as_deref(),
            |old, metrics| match op {
                Op::SetCanary {
                    upstreams, weight, ..
                } => ops::set_canary(old, upstreams, weight, metrics),
                Op::SetWeight { weight, .. } => ops::set_weight(old, weight),
                Op::Promote { .. } => ops::promote(old, metrics),
                Op::Rollback { reason, .. } => ops::rollback(old, &reason),
                Op::Resume { weight, .. } => ops::resume(old, weight, metrics),
                Op::ClearCanary { .. } => ops::clear_canary(old),
                _ => Err(ControlError::Invalid("not a service change".into())),
            },
        )?;
        if manual_rollback {
            self.metrics.rollback(&name, "manual");
            self.manual_rollback_during_deployment(&name, "rolled back by an operator");
        }
        // Any operator change starts the judge's watch afresh.
        self.hysteresis.remove(&name);
        Ok(applied)
    }

    /// Replaces one service of the serving table through `f`, publishes, and emits the event
    /// (with both arms before and after, plus `extra`).
    fn change(
        &mut self,
        name: &str,
        actor: &str,
        extra: serde_json::Value,
        f: impl FnOnce(&Service, &Metrics) -> Result<Change, ControlError>,
    ) -> Result<Applied, ControlError> {
        self.change_labelled(name, actor, extra, None, f)
    }

    fn change_labelled(
        &mut self,
        name: &str,
        actor: &str,
        extra: serde_json::Value,
        label: Option<&str>,
        f: impl FnOnce(&Service, &Metrics) -> Result<Change, ControlError>,
    ) -> Result<Applied, ControlError> {
        let current = self.table.load_full();
        let index = current
            .position(name)
            .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        let old = &current.services[index];
        let (next, kind, message) = f(old, &self.metrics)?;
        // New arms start with every upstream up; the probes' view applies at once.
        let next = self.probing.apply(&next);
        let mut evidence = json!({
            "before": service_evidence(old),
            "after": service_evidence(&next),
        });
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                evidence[k] = v;
            }
        }
        // The canary's version, for people reading the event (notifications, dashboard).
        if let Some(v) = label.map(str::to_string).or_else(|| {
            self.keeper
                .open_deployment(name)
                .and_then(|d| d.label.clone())
        }) {
            evidence["version"] = json!(v);
        }
        let deployment_before = self.keeper.deployment_of(name);
        self.keeper.follow(
            &next,
            kind,
            actor,
            label,
            evidence
                .get("verdict")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        );
        // A promotion or a closed deployment is still about the deployment it ended.
        let deployment = self.keeper.deployment_of(name).or(deployment_before);
        let mut services = current.services.clone();
        services[index] = Arc::new(next);
        let change = self.publish(current.next(services, None), kind.as_str());
        let event = self.bus.publish(NewEvent {
            kind,
            service: Some(name.to_string()),
            deployment,
            actor: actor.to_string(),
            message,
            table: Some(change),
            evidence,
        });
        self.remember(&event);
        Ok(Applied {
            table_version: change.to,
            event,
            reload: None,
        })
    }

    async fn reload(&mut self, actor: &str) -> Result<Applied, ControlError> {
        let Some(path) = self.config.source.clone() else {
            return Err(ControlError::Conflict(
                "this gate was not started from a config file; nothing to reload".into(),
            ));
        };
        let new = match load_blocking(path).await {
            Ok(c) => c,
            Err(e) => {
                self.bus.publish(NewEvent {
                    kind: EventKind::ReloadFailed,
                    service: None,
                    deployment: None,
                    actor: actor.to_string(),
                    message: "config reload refused; the current table keeps serving".into(),
                    table: None,
                    evidence: json!({ "error": e.to_string(), "paths": e.paths() }),
                });
                return Err(ControlError::Config(e));
            }
        };
        let current = self.table.load_full();
        // The arms of services run as containers belong to the release manager, not the
        // file: both configs get them from the serving table, so only the other settings
        // are compared.
        let mut new = new;
        let mut old = self.config.clone();
        for cfg in [&mut old, &mut new] {
            for sc in cfg.services.iter_mut().filter(|s| s.docker.is_some()) {
                if let Some(running) = current.service(&sc.name) {
                    sc.stable = running.stable.upstreams.to_vec();
                    sc.canary = running
                        .canary
                        .as_ref()
                        .map(|c| c.upstreams.to_vec())
                        .unwrap_or_default();
                    sc.canary_weight = running.weight;
                }
            }
        }
        if let Some(added) = new
            .services
            .iter()
            .find(|s| s.docker.is_some() && current.service(&s.name).is_none())
        {
            let message = format!(
                "service '{}' is new and runs as containers: restart the gate to start its first release",
                added.name
            );
            self.bus.publish(NewEvent {
                kind: EventKind::ReloadFailed,
                service: Some(added.name.clone()),
                deployment: None,
                actor: actor.to_string(),
                message: format!(
                    "config reload refused; the current table keeps serving: {message}"
                ),
                table: None,
                evidence: serde_json::Value::Null,
            });
            return Err(ControlError::Conflict(message));
        }
        let (services, report) = ops::merge(&old, &new, &current, &self.metrics);
        for name in report.removed.iter().chain(&report.changed) {
            self.hysteresis.remove(name);
        }
        for name in &report.removed {
            self.metrics.forget_service(name);
            self.last_decision.remove(name);
        }
        let options = Arc::new(RoutingOptions::from_config(
            &new.routing,
            new.server.idle_timeout,
        ));
        self.admin_token
            .store(new.admin.token.clone().map(Arc::new));
        if !new.dashboard.url_given {
            new.dashboard.url = self.config.dashboard.url.clone();
        }
        if new.notify != self.config.notify || new.dashboard != self.config.dashboard {
            self.notify.store(Arc::new(notify_settings(&new)));
        }
        let services = services
            .iter()
            .map(|s| Arc::new(self.probing.apply(s)))
            .collect();
        let next = current.next(services, Some(options));
        for s in &next.services {
            self.keeper.follow(
                s,
                EventKind::ConfigReloaded,
                actor,
                None,
                serde_json::Value::Null,
            );
        }
        self.keeper.retain(&next);
        self.keeper.services(&new);
        let change = self.publish(next, "config_reloaded");
        self.config = new;
        if let Some(tx) = &self.docker {
            let configs = self
                .config
                .services
                .iter()
                .filter_map(|s| s.docker.clone().map(|d| (s.name.clone(), d)))
                .collect();
            let _ = tx.send(crate::docker::release::Request::Configs(configs));
        }
        let event = self.bus.publish(NewEvent {
            kind: EventKind::ConfigReloaded,
            service: None,
            deployment: None,
            actor: actor.to_string(),
            message: format!(
                "config reloaded: {} added, {} removed, {} changed",
                report.added.len(),
                report.removed.len(),
                report.changed.len()
            ),
            table: Some(change),
            evidence: serde_json::to_value(&report).unwrap_or_default(),
        });
        // Containers found by their labels join their services again.
        self.reapply_discovery();
        Ok(Applied {
            table_version: change.to,
            event,
            reload: Some(report),
        })
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
mod tests {
    use super::*;
    use crate::types::StatusClass;

    const WEB: &str = r#"
[[services]]
name = "web"
stable = ["127.0.0.1:1001"]
canary = ["127.0.0.1:1002"]
canary_weight = 10.0
[services.cutback]
breach_for = "300ms"
"#;

    fn controller(toml: &str) -> (Controller, Wiring, EventBus) {
        let config = Config::parse(toml, "t.toml").unwrap();
        let bus = EventBus::default();
        let (c, w) = Controller::new(config, Arc::new(Metrics::new()), bus.clone());
        (c, w, bus)
    }

    fn record(table: &SharedTable, canary: bool, class: StatusClass, n: usize) {
        let t = table.load_full();
        let s = &t.services[0];
        let arm = if canary {
            s.canary.as_ref().unwrap()
        } else {
            &s.stable
        };
        for _ in 0..n {
            arm.stats.record(class, Duration::from_millis(3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_cuts_back_at_once() {
        let (mut c, w, bus) = controller(WEB);
        let mut events = bus.subscribe();
        record(&w.table, false, StatusClass::Success, 200);
        record(&w.table, true, StatusClass::ServerError, 5);
        c.judge_all();
        let t = w.table.load_full();
        assert_eq!(t.services[0].state, ServiceState::RolledBack);
        assert!(t.services[0].weight.is_zero());
        let e = events.recv().await.unwrap();
        assert_eq!(e.kind, EventKind::RolledBack);
        assert_eq!(e.actor, "judge");
        assert_eq!(e.evidence["verdict"]["rule"], "consecutive_failures");
        assert_eq!(e.table.unwrap().to, t.version);
        let board = w.handle.board();
        assert_eq!(
            board["web"].last_decision.as_ref().unwrap().kind,
            EventKind::RolledBack
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_breach_must_hold_for_breach_for() {
        let (mut c, w, bus) = controller(WEB);
        let mut events = bus.subscribe();
        record(&w.table, false, StatusClass::Success, 1000);
        // 40 % errors, interleaved so there is never a run of 5.
        for _ in 0..20 {
            record(&w.table, true, StatusClass::Success, 3);
            record(&w.table, true, StatusClass::ServerError, 2);
        }
        c.judge_all();
        assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
        assert_eq!(events.recv().await.unwrap().kind, EventKind::Breach);
        assert!(w.handle.board()["web"].watching);
        tokio::time::advance(Duration::from_millis(200)).await;
        c.judge_all();
        assert_eq!(
            w.table.load().services[0].state,
            ServiceState::Canary,
            "too early"
        );
        tokio::time::advance(Duration::from_millis(150)).await;
        c.judge_all();
        assert_eq!(w.table.load().services[0].state, ServiceState::RolledBack);
        let e = events.recv().await.unwrap();
        assert_eq!(e.kind, EventKind::RolledBack);
        assert_eq!(e.evidence["verdict"]["rule"], "error_rate");
        assert!(e.evidence["verdict"]["p_value"].as_f64().unwrap() < 0.001);
        assert_eq!(e.evidence["policy"]["breach_for"], "300ms");
    }

    #[tokio::test(start_paused = true)]
    async fn little_traffic_is_inconclusive_and_a_held_canary_is_not_judged() {
        let (mut c, w, _bus) = controller(WEB);
        record(&w.table, true, StatusClass::ServerError, 2);
        c.judge_all();
        let board = w.handle.board();
        let v = board["web"].verdict.as_ref().unwrap();
        assert_eq!(v.name(), "inconclusive");
        c.apply(
            Op::Rollback {
                service: "web".into(),
                reason: "manual".into(),
            },
            "test",
        )
        .unwrap();
        record(&w.table, true, StatusClass::ServerError, 50);
        c.judge_all();
        assert!(w.handle.board()["web"].verdict.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_controller_loop_judges_on_its_tick() {
        let (c, w, _bus) = controller(WEB);
        let (stop, stopped) = tokio_watch::channel(false);
        let task = tokio::spawn(c.run(stopped));
        record(&w.table, false, StatusClass::Success, 100);
        record(&w.table, true, StatusClass::NoResponse, 6);
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(w.table.load().services[0].state, ServiceState::RolledBack);
        // An operator resumes it; the fresh window is clean.
        let applied = w
            .handle
            .send(
                Op::Resume {
                    service: "web".into(),
                    weight: None,
                },
                "test",
            )
            .await
            .unwrap();
        assert_eq!(applied.event.kind, EventKind::Resumed);
        let t = w.table.load_full();
        assert_eq!(t.services[0].state, ServiceState::Canary);
        assert_eq!(t.services[0].weight.percent(), 10.0);
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_policy_reports_without_acting() {
        let (mut c, w, bus) = controller(&format!("{WEB}enabled = false\n"));
        let mut events = bus.subscribe();
        record(&w.table, true, StatusClass::ServerError, 10);
        c.judge_all();
        assert_eq!(w.table.load().services[0].state, ServiceState::Canary);
        let e = events.recv().await.unwrap();
        assert_eq!(e.kind, EventKind::Breach);
        assert!(e.message.contains("disabled"));
    }
}
