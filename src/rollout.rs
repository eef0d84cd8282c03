//! The rollout controller: the one writer of the routing table.
//!
//! Everything that changes routing (the admin API, the CLI through it, SIGHUP, later the
//! judge and the probes) sends a [`Command`] over an `mpsc` channel to [`Controller::run`],
//! which applies commands one at a time, publishes a new [`RoutingTable`] with one `store`,
//! and emits an [`Event`] carrying the evidence. Readers only ever `load()`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, ConfigError, UpstreamAddr, Weight};
use crate::events::{Event, EventBus, EventKind, NewEvent, TableChange};
use crate::metrics::Metrics;
use crate::routing::{
    Arm, ArmRole, RoutingOptions, RoutingTable, Service, ServiceState, SharedTable,
};

/// How often the controller's tick runs (window maintenance; later the judge).
pub const TICK: Duration = Duration::from_millis(100);
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
    /// Re-read the config file and apply it.
    Reload,
}

/// A command: what, who asked, and where to send the answer.
#[derive(Debug)]
pub struct Command {
    /// The change.
    pub op: Op,
    /// Who asked (`api`, `cli:alice`, `signal:SIGHUP`, ...).
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

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Services new in the file.
    pub added: Vec<String>,
    /// Services no longer in the file (their traffic now has no route).
    pub removed: Vec<String>,
    /// Services whose settings changed.
    pub changed: Vec<String>,
    /// Keys that changed but only take effect after a restart.
    pub restart_required: Vec<String>,
    /// Services whose rolled-back canary stays held despite a new weight in the file.
    pub held: Vec<String>,
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
}

impl ControlHandle {
    /// The table serving now.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
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

/// The controller task's state.
pub struct Controller {
    config: Config,
    table: SharedTable,
    metrics: Arc<Metrics>,
    bus: EventBus,
    admin_token: Arc<ArcSwapOption<String>>,
    rx: mpsc::Receiver<Command>,
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
        }),
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
    /// A controller over a fresh table built from `config`. Returns the controller (to be
    /// run), the handle to send it commands, and the table handle the proxy reads.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        bus: EventBus,
    ) -> (
        Controller,
        ControlHandle,
        SharedTable,
        Arc<ArcSwapOption<String>>,
    ) {
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(initial_table(&config, &metrics)));
        let admin_token = Arc::new(ArcSwapOption::from(
            config.admin.token.clone().map(Arc::new),
        ));
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let controller = Controller {
            config,
            table: table.clone(),
            metrics,
            bus,
            admin_token: admin_token.clone(),
            rx,
        };
        controller.update_gauges(&controller.table.load());
        let handle = ControlHandle {
            tx,
            table: table.clone(),
        };
        (controller, handle, table, admin_token)
    }

    /// Applies commands and ticks until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let version = self.table.load().version;
        self.bus.publish(NewEvent {
            kind: EventKind::Started,
            service: None,
            actor: "gate".into(),
            message: format!(
                "serving {} service(s) with routing table v{version}",
                self.table.load().services.len()
            ),
            table: Some(TableChange {
                from: 0,
                to: version,
            }),
            evidence: json!({
                "services": self.table.load().services.iter().map(|s| service_evidence(s)).collect::<Vec<_>>(),
            }),
        });
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = tick.tick() => self.tick(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }

    fn tick(&self) {
        let table = self.table.load();
        for s in &table.services {
            s.stable.stats.maintain();
            if let Some(c) = &s.canary {
                c.stats.maintain();
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        let Command { op, actor, reply } = cmd;
        let result = match op {
            Op::Reload => self.reload(&actor).await,
            op => self.apply(op, &actor),
        };
        // The asker may have gone (client disconnected); the change stands either way.
        let _ = reply.send(result);
    }

    /// Publishes `table` as the next version; returns the change.
    fn publish(&self, table: RoutingTable) -> TableChange {
        let from = self.table.load().version;
        let to = table.version;
        self.update_gauges(&table);
        self.table.store(Arc::new(table));
        TableChange { from, to }
    }

    fn update_gauges(&self, table: &RoutingTable) {
        self.metrics.set_table_version(table.version);
        for s in &table.services {
            self.metrics.canary_weight(s.name()).set(s.weight.percent());
        }
    }

    fn apply(&mut self, op: Op, actor: &str) -> Result<Applied, ControlError> {
        let current = self.table.load_full();
        let name = match &op {
            Op::SetCanary { service, .. }
            | Op::SetWeight { service, .. }
            | Op::Promote { service }
            | Op::Rollback { service, .. } => service.clone(),
            Op::Reload => unreachable!("reload is handled apart"),
        };
        let index = current
            .position(&name)
            .ok_or_else(|| ControlError::NotFound(name.clone()))?;
        let old = &current.services[index];
        let (next, kind, message) = match op {
            Op::SetCanary {
                upstreams, weight, ..
            } => self.set_canary(old, upstreams, weight)?,
            Op::SetWeight { weight, .. } => set_weight(old, weight)?,
            Op::Promote { .. } => self.promote(old)?,
            Op::Rollback { reason, .. } => {
                let r = rollback(old, &reason)?;
                self.metrics.rollback(&name, "manual");
                r
            }
            Op::Reload => unreachable!("reload is handled apart"),
        };
        let before = service_evidence(old);
        let after = service_evidence(&next);
        let mut services = current.services.clone();
        services[index] = Arc::new(next);
        let change = self.publish(current.next(services, None));
        let event = self.bus.publish(NewEvent {
            kind,
            service: Some(name),
            actor: actor.to_string(),
            message,
            table: Some(change),
            evidence: json!({ "before": before, "after": after }),
        });
        Ok(Applied {
            table_version: change.to,
            event,
            reload: None,
        })
    }

    fn set_canary(
        &self,
        old: &Service,
        upstreams: Vec<UpstreamAddr>,
        weight: Option<Weight>,
    ) -> Result<(Service, EventKind, String), ControlError> {
        if upstreams.is_empty() {
            return Err(ControlError::Invalid(
                "upstreams: at least one canary upstream is required".into(),
            ));
        }
        let stable: HashSet<_> = old.stable.upstreams.iter().map(|u| u.addr).collect();
        if let Some(u) = upstreams.iter().find(|u| stable.contains(&u.addr)) {
            return Err(ControlError::Invalid(format!(
                "upstreams: '{}' already serves the stable arm",
                u.spec
            )));
        }
        let weight = weight.unwrap_or(Weight::ZERO);
        let specs: Vec<_> = upstreams.iter().map(|u| u.spec.clone()).collect();
        let next = Service {
            canary: Some(Arm::new(
                ArmRole::Canary,
                old.name(),
                upstreams,
                &self.metrics,
            )),
            weight,
            state: ServiceState::Canary,
            generation: old.generation + 1,
            ..old.clone()
        };
        let message = format!("canary set to {} at {}", specs.join(", "), weight);
        Ok((next, EventKind::CanarySet, message))
    }

    fn promote(&self, old: &Service) -> Result<(Service, EventKind, String), ControlError> {
        let Some(canary) = &old.canary else {
            return Err(ControlError::Conflict(format!(
                "service '{}' has no canary to promote",
                old.name()
            )));
        };
        if old.state == ServiceState::RolledBack {
            return Err(ControlError::Conflict(format!(
                "the canary of '{}' was rolled back; set a new canary before promoting",
                old.name()
            )));
        }
        let specs: Vec<_> = canary.upstreams.iter().map(|u| u.spec.clone()).collect();
        let next = Service {
            stable: canary
                .clone()
                .into_role(ArmRole::Stable, old.name(), &self.metrics),
            canary: None,
            weight: Weight::ZERO,
            state: ServiceState::Stable,
            ..old.clone()
        };
        Ok((
            next,
            EventKind::Promoted,
            format!("canary promoted: stable is now {}", specs.join(", ")),
        ))
    }

    async fn reload(&mut self, actor: &str) -> Result<Applied, ControlError> {
        let Some(path) = self.config.source.clone() else {
            return Err(ControlError::Conflict(
                "this gate was not started from a config file; nothing to reload".into(),
            ));
        };
        let loaded = load_blocking(path).await;
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.bus.publish(NewEvent {
                    kind: EventKind::ReloadFailed,
                    service: None,
                    actor: actor.to_string(),
                    message: "config reload refused; the current table keeps serving".into(),
                    table: None,
                    evidence: json!({ "error": e.to_string(), "paths": e.paths() }),
                });
                return Err(ControlError::Config(e));
            }
        };
        let current = self.table.load_full();
        let (services, report) = merge(&self.config, &new, &current, &self.metrics);
        for name in &report.removed {
            self.metrics.forget_service(name);
        }
        let options = Arc::new(RoutingOptions::from_config(
            &new.routing,
            new.server.idle_timeout,
        ));
        self.admin_token
            .store(new.admin.token.clone().map(Arc::new));
        let change = self.publish(current.next(services, Some(options)));
        self.config = new;
        let event = self.bus.publish(NewEvent {
            kind: EventKind::ConfigReloaded,
            service: None,
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

fn set_weight(old: &Service, weight: Weight) -> Result<(Service, EventKind, String), ControlError> {
    if old.canary.is_none() {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary; set one first (PUT /api/v1/services/{}/canary)",
            old.name(),
            old.name()
        )));
    }
    if old.state == ServiceState::RolledBack {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' was rolled back and is held at 0; set a new canary to resume",
            old.name()
        )));
    }
    let next = Service {
        weight,
        state: ServiceState::Canary,
        ..old.clone()
    };
    let message = format!("canary weight {} -> {}", old.weight, weight);
    Ok((next, EventKind::WeightSet, message))
}

fn rollback(old: &Service, reason: &str) -> Result<(Service, EventKind, String), ControlError> {
    if old.canary.is_none() {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary to roll back",
            old.name()
        )));
    }
    if old.state == ServiceState::RolledBack {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' is already rolled back",
            old.name()
        )));
    }
    let next = Service {
        weight: Weight::ZERO,
        state: ServiceState::RolledBack,
        ..old.clone()
    };
    let reason = reason.trim();
    let message = if reason.is_empty() {
        format!("canary cut back from {} to 0", old.weight)
    } else {
        format!("canary cut back from {} to 0: {reason}", old.weight)
    };
    Ok((next, EventKind::RolledBack, message))
}

/// Applies a new config to the running services: services whose config did not change keep
/// their runtime state (canary, weight, hold); changed ones take the file's values but keep
/// the numbers of any arm whose upstreams stayed the same.
fn merge(
    old: &Config,
    new: &Config,
    current: &RoutingTable,
    metrics: &Metrics,
) -> (Vec<Arc<Service>>, ReloadReport) {
    let mut report = ReloadReport::default();
    let mut services = Vec::with_capacity(new.services.len());
    for sc in &new.services {
        let before_cfg = old.services.iter().find(|s| s.name == sc.name);
        let running = current.service(&sc.name);
        let next = match (before_cfg, running) {
            (Some(b), Some(r)) if b == sc => r.clone(),
            (_, Some(r)) => {
                report.changed.push(sc.name.clone());
                let mut fresh = Service::from_config(sc, metrics);
                if r.stable.same_upstreams(&sc.stable) {
                    fresh.stable = r.stable.clone();
                }
                if let (Some(rc), Some(_)) = (&r.canary, &fresh.canary) {
                    if rc.same_upstreams(&sc.canary) {
                        fresh.canary = Some(rc.clone());
                        fresh.generation = r.generation;
                        if r.state == ServiceState::RolledBack {
                            fresh.weight = Weight::ZERO;
                            fresh.state = ServiceState::RolledBack;
                            report.held.push(sc.name.clone());
                        }
                    } else {
                        fresh.generation = r.generation + 1;
                    }
                }
                Arc::new(fresh)
            }
            (_, None) => {
                report.added.push(sc.name.clone());
                Arc::new(Service::from_config(sc, metrics))
            }
        };
        services.push(next);
    }
    for s in &current.services {
        if !new.services.iter().any(|n| n.name == s.name()) {
            report.removed.push(s.name().to_string());
        }
    }
    let (a, b) = (&old.server, &new.server);
    for (key, changed) in [
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.threads", a.threads != b.threads),
        (
            "server.keepalive_pool_size",
            a.keepalive_pool_size != b.keepalive_pool_size,
        ),
    ] {
        if changed {
            report.restart_required.push(key.to_string());
        }
    }
    (services, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[services]]
name = "web"
hosts = ["web.test"]
stable = ["127.0.0.1:1001"]
canary = ["127.0.0.1:1002"]
canary_weight = 10.0
[[services]]
name = "api"
stable = ["127.0.0.1:2001"]
"#;

    fn controller(toml: &str) -> (Controller, SharedTable) {
        let config = Config::parse(toml, "t.toml").unwrap();
        let (c, _h, table, _t) =
            Controller::new(config, Arc::new(Metrics::new()), EventBus::default());
        (c, table)
    }

    fn op(c: &mut Controller, op: Op) -> Result<Applied, ControlError> {
        c.apply(op, "test")
    }

    #[test]
    fn weight_change_publishes_next_version_and_keeps_numbers() {
        let (mut c, table) = controller(TWO);
        let before = table.load_full();
        let applied = op(
            &mut c,
            Op::SetWeight {
                service: "web".into(),
                weight: Weight::from_percent(25.0).unwrap(),
            },
        )
        .unwrap();
        let after = table.load_full();
        assert_eq!(applied.table_version, before.version + 1);
        assert_eq!(after.version, before.version + 1);
        let web = after.service("web").unwrap();
        assert_eq!(web.weight.percent(), 25.0);
        assert!(Arc::ptr_eq(
            &web.canary.as_ref().unwrap().stats,
            &before
                .service("web")
                .unwrap()
                .canary
                .as_ref()
                .unwrap()
                .stats
        ));
        // The old table is untouched: requests in flight keep their view.
        assert_eq!(before.service("web").unwrap().weight.percent(), 10.0);
    }

    #[test]
    fn rollback_holds_until_a_new_canary() {
        let (mut c, table) = controller(TWO);
        op(
            &mut c,
            Op::Rollback {
                service: "web".into(),
                reason: "bad".into(),
            },
        )
        .unwrap();
        let web = table.load_full().service("web").unwrap().clone();
        assert_eq!(web.state, ServiceState::RolledBack);
        assert!(web.weight.is_zero());
        let err = op(
            &mut c,
            Op::SetWeight {
                service: "web".into(),
                weight: Weight::from_percent(5.0).unwrap(),
            },
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::Conflict(_)));
        assert!(matches!(
            op(
                &mut c,
                Op::Promote {
                    service: "web".into()
                }
            )
            .unwrap_err(),
            ControlError::Conflict(_)
        ));
        op(
            &mut c,
            Op::SetCanary {
                service: "web".into(),
                upstreams: vec![UpstreamAddr::parse("127.0.0.1:1003").unwrap()],
                weight: Some(Weight::from_percent(5.0).unwrap()),
            },
        )
        .unwrap();
        let web2 = table.load_full().service("web").unwrap().clone();
        assert_eq!(web2.state, ServiceState::Canary);
        assert_eq!(web2.generation, web.generation + 1);
    }

    #[test]
    fn promote_moves_canary_to_stable() {
        let (mut c, table) = controller(TWO);
        op(
            &mut c,
            Op::Promote {
                service: "web".into(),
            },
        )
        .unwrap();
        let web = table.load_full().service("web").unwrap().clone();
        assert_eq!(web.state, ServiceState::Stable);
        assert!(web.canary.is_none());
        assert_eq!(web.stable.upstreams[0].spec, "127.0.0.1:1002");
    }

    #[test]
    fn refusals_change_nothing() {
        let (mut c, table) = controller(TWO);
        let v = table.load().version;
        assert!(matches!(
            op(
                &mut c,
                Op::Promote {
                    service: "nope".into()
                }
            )
            .unwrap_err(),
            ControlError::NotFound(_)
        ));
        assert!(matches!(
            op(
                &mut c,
                Op::Promote {
                    service: "api".into()
                }
            )
            .unwrap_err(),
            ControlError::Conflict(_)
        ));
        assert!(matches!(
            op(
                &mut c,
                Op::SetCanary {
                    service: "web".into(),
                    upstreams: vec![UpstreamAddr::parse("127.0.0.1:1001").unwrap()],
                    weight: None
                }
            )
            .unwrap_err(),
            ControlError::Invalid(_)
        ));
        assert_eq!(table.load().version, v);
    }

    #[test]
    fn merge_keeps_runtime_state_of_unchanged_services() {
        let (mut c, table) = controller(TWO);
        op(
            &mut c,
            Op::SetWeight {
                service: "web".into(),
                weight: Weight::from_percent(50.0).unwrap(),
            },
        )
        .unwrap();
        let new = Config::parse(
            &format!("{TWO}\n[[services]]\nname = \"extra\"\nhosts=[\"x.test\"]\nstable = [\"127.0.0.1:3001\"]\n")
                .replace("2001", "2002"),
            "t.toml",
        )
        .unwrap();
        let current = table.load_full();
        let (services, report) = merge(&c.config, &new, &current, &c.metrics);
        assert_eq!(report.added, vec!["extra"]);
        assert_eq!(report.changed, vec!["api"]);
        let web = services.iter().find(|s| s.name() == "web").unwrap();
        assert_eq!(web.weight.percent(), 50.0, "runtime weight kept");
    }
}
