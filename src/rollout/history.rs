//! The controller's history bookkeeping: which deployment each service is running, every
//! routing table as a snapshot, each arm's numbers per minute, and restoring the routing
//! state from the latest snapshot at start.
//!
//! A deployment here is one canary's life: it opens when a canary (a new generation) is
//! set, and ends `succeeded` on promotion, `rolled_back` when cut back (re-opened as
//! `running` if resumed), `superseded` when another canary replaces it, or `aborted` when
//! its canary goes away otherwise.

use super::state::DeploymentState;
pub use crate::events::new_deployment_id;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::events::EventKind;
use crate::metrics::Metrics;
use crate::routing::{Arm, RoutingOptions, RoutingTable, Service};
use crate::stats::{ArmStats, WindowSnapshot};
use crate::store::{ArmMinuteRow, DeploymentRow, Record, Recorder, ServiceRow, SnapshotRow};
use crate::time::now_ms;
use crate::types::StatusClass;
use crate::types::{ArmRole, ServiceState};
use crate::types::{UpstreamAddr, Weight};

struct Open {
    row: DeploymentRow,
    generation: u64,
}

struct MinuteAcc {
    stats: Arc<ArmStats>,
    upstreams: String,
    minute_ms: i64,
    last_slot: Option<u64>,
    sum: WindowSnapshot,
}

/// Bookkeeping that outlives single commands.
/// A planned deployment about to open: the id and strategy its history row gets.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The deployment id.
    pub id: String,
    /// `canary`, `blue_green`, `rolling`.
    pub strategy: String,
    /// Version label.
    pub label: Option<String>,
    /// The plan, JSON.
    pub plan: serde_json::Value,
}

pub struct Keeper {
    recorder: Option<Recorder>,
    run: String,
    probes_seen: u64,
    planned: HashMap<String, Planned>,
    open: HashMap<String, Open>,
    minutes: HashMap<(String, ArmRole), MinuteAcc>,
}

fn minute_of(ms: u64) -> i64 {
    (ms - ms % 60_000) as i64
}

fn specs(arm: &Arm) -> Vec<String> {
    arm.upstreams.iter().map(|u| u.spec.clone()).collect()
}

impl Keeper {
    /// A keeper writing to `recorder` (or keeping only its own state when history is off).
    pub fn new(recorder: Option<Recorder>) -> Keeper {
        let run = recorder
            .as_ref()
            .map(|r| r.run().to_string())
            .unwrap_or_else(|| format!("{:011x}", now_ms()));
        Keeper {
            recorder,
            run,
            probes_seen: 0,
            planned: HashMap::new(),
            open: HashMap::new(),
            minutes: HashMap::new(),
        }
    }

    fn record(&self, r: Record) {
        if let Some(rec) = &self.recorder {
            rec.record(r);
        }
    }

    /// The id of the deployment a service is running, if any.
    pub fn deployment_of(&self, service: &str) -> Option<String> {
        self.open.get(service).map(|o| o.row.id.clone())
    }

    /// The open deployment rows (for snapshots and the API).
    pub fn open_deployment(&self, service: &str) -> Option<&DeploymentRow> {
        self.open.get(service).map(|o| &o.row)
    }

    /// The next deployment opened for `service` is this planned one.
    pub fn expect(&mut self, service: &str, planned: Planned) {
        self.planned.insert(service.to_string(), planned);
    }

    /// A planned deployment that ended before its new version got an arm (its containers
    /// never started, or it was aborted while they did): recorded, opened and closed at once.
    pub fn close_planned(
        &mut self,
        service: &str,
        started_by: &str,
        started_ms: u64,
        end: &str,
        detail: serde_json::Value,
    ) {
        let Some(p) = self.planned.remove(service) else {
            return;
        };
        let row = DeploymentRow {
            id: p.id,
            service: service.to_string(),
            label: p.label,
            strategy: p.strategy,
            canary: json!({ "upstreams": [] }).to_string(),
            started_by: started_by.to_string(),
            started_ms: started_ms as i64,
            finished_ms: Some(now_ms() as i64),
            outcome: end.to_string(),
            detail: detail.to_string(),
        };
        self.record(Record::Deployment(row));
    }

    /// Records a deployment's progress or end (its outcome and detail).
    pub fn update(
        &mut self,
        service: &str,
        outcome: &str,
        detail: serde_json::Value,
        finished: bool,
    ) {
        let Some(open) = self.open.get_mut(service) else {
            return;
        };
        open.row.outcome = outcome.to_string();
        open.row.detail = detail.to_string();
        if finished {
            open.row.finished_ms = open.row.finished_ms.or(Some(now_ms() as i64));
        }
        let row = open.row.clone();
        self.record(Record::Deployment(row));
    }

    /// Takes over deployments restored from a snapshot.
    pub fn adopt(&mut self, service: &str, row: DeploymentRow, generation: u64) {
        self.open
            .insert(service.to_string(), Open { row, generation });
    }

    /// Follows a service's change: opens, closes or updates its deployment.
    pub fn follow(
        &mut self,
        after: &Service,
        kind: EventKind,
        actor: &str,
        label: Option<&str>,
        detail: serde_json::Value,
    ) {
        let name = after.name().to_string();
        let now = now_ms() as i64;
        match &after.canary {
            Some(canary) => {
                let same = self
                    .open
                    .get(&name)
                    .is_some_and(|o| o.generation == after.generation);
                if !same {
                    if let Some(old) = self.open.remove(&name) {
                        self.close(
                            old,
                            DeploymentState::Superseded.as_str(),
                            json!({ "replaced_by_generation": after.generation }),
                        );
                    }
                    let planned = self.planned.remove(&name);
                    let row = DeploymentRow {
                        id: planned
                            .as_ref()
                            .map(|p| p.id.clone())
                            .unwrap_or_else(|| new_deployment_id(&name)),
                        service: name.clone(),
                        label: planned
                            .as_ref()
                            .and_then(|p| p.label.clone())
                            .or(label.map(str::to_string)),
                        strategy: planned
                            .as_ref()
                            .map(|p| p.strategy.clone())
                            .unwrap_or_else(|| "canary".into()),
                        canary: json!({ "upstreams": specs(canary) }).to_string(),
                        started_by: actor.to_string(),
                        started_ms: now,
                        finished_ms: None,
                        outcome: DeploymentState::Running.as_str().into(),
                        detail: match &planned {
                            Some(p) => json!({ "plan": p.plan }),
                            None => json!({ "weight": after.weight.percent() }),
                        }
                        .to_string(),
                    };
                    self.record(Record::Deployment(row.clone()));
                    self.open.insert(
                        name.clone(),
                        Open {
                            row,
                            generation: after.generation,
                        },
                    );
                }
                let Some(open) = self.open.get_mut(&name) else {
                    return;
                };
                let wanted = if after.state == ServiceState::RolledBack {
                    DeploymentState::RolledBack.as_str()
                } else {
                    DeploymentState::Running.as_str()
                };
                let mut changed = false;
                if open.row.outcome != wanted {
                    open.row.outcome = wanted.into();
                    open.row.finished_ms =
                        (wanted == DeploymentState::RolledBack.as_str()).then_some(now);
                    changed = true;
                }
                if matches!(
                    kind,
                    EventKind::RolledBack | EventKind::Resumed | EventKind::WeightSet
                ) {
                    open.row.detail = json!({
                        "weight": after.weight.percent(),
                        "last": kind.as_str(),
                        "by": actor,
                        "detail": detail,
                    })
                    .to_string();
                    changed = true;
                }
                if changed {
                    let row = open.row.clone();
                    self.record(Record::Deployment(row));
                }
            }
            None => {
                if let Some(old) = self.open.remove(&name) {
                    let end = if kind == EventKind::Promoted {
                        DeploymentState::Succeeded.as_str()
                    } else if old.row.outcome == DeploymentState::RolledBack.as_str() {
                        DeploymentState::RolledBack.as_str()
                    } else {
                        DeploymentState::Aborted.as_str()
                    };
                    self.close(old, end, json!({ "by": actor, "last": kind.as_str() }));
                }
            }
        }
    }

    fn close(&mut self, mut old: Open, end: &str, detail: serde_json::Value) {
        // A rolled-back deployment that is replaced stays rolled back in history.
        if !(old.row.outcome == DeploymentState::RolledBack.as_str()
            && end == DeploymentState::Superseded.as_str())
        {
            old.row.outcome = end.into();
        }
        old.row.finished_ms = old.row.finished_ms.or(Some(now_ms() as i64));
        old.row.detail = detail.to_string();
        self.record(Record::Deployment(old.row));
    }

    /// Forgets services that left the config, closing their deployments.
    pub fn retain(&mut self, table: &RoutingTable) {
        let gone: Vec<String> = self
            .open
            .keys()
            .filter(|n| table.service(n).is_none())
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.open.remove(&name) {
                self.close(
                    old,
                    DeploymentState::Aborted.as_str(),
                    json!({ "why": "service removed from the config" }),
                );
            }
        }
        self.minutes
            .retain(|(name, _), _| table.service(name).is_some());
    }

    /// Records a probe result (with the deployment the service is running).
    pub fn probe(&mut self, obs: &crate::probes::Observation) {
        self.probes_seen += 1;
        let deployment_id = self.deployment_of(&obs.key.service);
        self.record(Record::Probe(crate::store::ProbeRow {
            id: format!("{}-p{:010}", self.run, self.probes_seen),
            at_ms: obs.at_ms as i64,
            service: obs.key.service.clone(),
            probe: obs.key.probe.clone(),
            target: obs.key.upstream.clone(),
            arm: obs.key.role.as_str().to_string(),
            status: obs.outcome.status.as_str().to_string(),
            latency_us: Some(obs.outcome.latency.as_micros() as i64),
            detail: obs.outcome.detail.clone(),
            deployment_id,
        }));
    }

    /// Records the config of every service (new config versions only add rows).
    pub fn services(&self, config: &Config) {
        let source = config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "inline".into());
        for s in &config.services {
            self.record(Record::Service(ServiceRow {
                name: s.name.clone(),
                fingerprint: s.routing_fingerprint(),
                at_ms: now_ms() as i64,
                source: source.clone(),
                config: s.to_json().to_string(),
            }));
        }
    }

    /// The table as history keeps it, with each service's open deployment.
    pub fn table_snapshot(&self, table: &RoutingTable) -> TableSnapshot {
        TableSnapshot {
            version: table.version,
            services: table
                .services
                .iter()
                .map(|s| ServiceSnapshot {
                    name: s.name().to_string(),
                    file: s.config.routing_fingerprint(),
                    stable: specs(&s.stable),
                    canary: s.canary.as_ref().map(specs),
                    weight: s.weight.percent(),
                    state: s.state,
                    generation: s.generation,
                    held_weight: s.held_weight.percent(),
                    deployment: self.open.get(s.name()).map(|o| o.row.clone()),
                })
                .collect(),
        }
    }

    /// Records a published table.
    pub fn snapshot(&self, table: &RoutingTable, cause: &str) {
        if self.recorder.is_none() {
            return;
        }
        let snapshot = self.table_snapshot(table);
        self.record(Record::Snapshot(SnapshotRow {
            id: format!("{}-{:010}", self.run, table.version),
            run: self.run.clone(),
            version: table.version as i64,
            at_ms: now_ms() as i64,
            cause: cause.to_string(),
            snapshot: serde_json::to_string(&snapshot).unwrap_or_default(),
        }));
    }

    /// Adds each arm's newly completed slots to its minute; writes the minutes that ended
    /// (all of them when `flush`).
    pub fn sample(&mut self, table: &RoutingTable, flush: bool) {
        let now = now_ms();
        let minute = minute_of(now);
        let at = Instant::now();
        let mut done = Vec::new();
        for s in &table.services {
            let arms = [Some(&s.stable), s.canary.as_ref()];
            for arm in arms.into_iter().flatten() {
                let key = (s.name().to_string(), arm.role);
                let acc = self
                    .minutes
                    .entry(key.clone())
                    .or_insert_with(|| MinuteAcc {
                        stats: arm.stats.clone(),
                        upstreams: specs(arm).join(","),
                        minute_ms: minute,
                        last_slot: None,
                        sum: WindowSnapshot::empty(arm.stats.window()),
                    });
                if !Arc::ptr_eq(&acc.stats, &arm.stats) {
                    // A new arm (new canary, promotion): close the old one's minute.
                    let last = std::mem::replace(
                        acc,
                        MinuteAcc {
                            stats: arm.stats.clone(),
                            upstreams: specs(arm).join(","),
                            minute_ms: minute,
                            last_slot: None,
                            sum: WindowSnapshot::empty(arm.stats.window()),
                        },
                    );
                    done.push((key.clone(), last.minute_ms, last.upstreams, last.sum));
                }
                acc.last_slot = acc.stats.merge_completed(acc.last_slot, at, &mut acc.sum);
                if acc.minute_ms != minute || flush {
                    let sum =
                        std::mem::replace(&mut acc.sum, WindowSnapshot::empty(arm.stats.window()));
                    done.push((key, acc.minute_ms, acc.upstreams.clone(), sum));
                    acc.minute_ms = minute;
                }
            }
        }
        for ((service, role), minute_ms, upstreams, sum) in done {
            if sum.requests() == 0 {
                continue;
            }
            let deployment_id = self.deployment_of(&service);
            self.record(Record::ArmMinute(ArmMinuteRow {
                service,
                arm: role.as_str().to_string(),
                minute_ms,
                run: self.run.clone(),
                deployment_id,
                upstreams,
                requests: sum.requests() as i64,
                failures: sum.failures() as i64,
                status_4xx: sum.count(StatusClass::ClientError) as i64,
                p50_ms: sum.quantile_ms(0.50),
                p95_ms: sum.quantile_ms(0.95),
                p99_ms: sum.quantile_ms(0.99),
                mean_ms: sum.mean_ms(),
            }));
        }
    }
}

/// A service as a snapshot keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSnapshot {
    /// Name.
    pub name: String,
    /// Routing fingerprint of the config file's values at the time.
    pub file: String,
    /// Stable upstreams.
    pub stable: Vec<String>,
    /// Canary upstreams.
    pub canary: Option<Vec<String>>,
    /// Canary weight, percent.
    pub weight: f64,
    /// State.
    pub state: ServiceState,
    /// Canary generation.
    pub generation: u64,
    /// Weight a rolled-back canary had.
    pub held_weight: f64,
    /// The deployment it was running.
    pub deployment: Option<DeploymentRow>,
}

/// A routing table as history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableSnapshot {
    /// Table version.
    pub version: u64,
    /// Every service.
    pub services: Vec<ServiceSnapshot>,
}

/// What restoring did, per service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// The snapshot it came from.
    pub from_version: u64,
    /// Where: `database` or `spool`.
    pub source: String,
    /// Services whose runtime state (arms, weight, state) was restored.
    pub restored: Vec<String>,
    /// Services whose file changed: the file's values apply, but a rolled-back hold on the
    /// same canary stays.
    pub held: Vec<String>,
    /// Services started from the file (changed, or not in the snapshot).
    pub from_config: Vec<String>,
}

fn parse_all(specs: &[String]) -> Option<Vec<UpstreamAddr>> {
    specs.iter().map(|s| UpstreamAddr::parse(s).ok()).collect()
}

/// Builds the first table of this run from the config and the latest snapshot: where the
/// file still says what it said then, the routing state continues (a canary keeps its
/// weight, a rolled-back canary stays held); the version continues from the snapshot's.
pub fn restore(
    config: &Config,
    snapshot: &TableSnapshot,
    source: &str,
    metrics: &Metrics,
    keeper: &mut Keeper,
) -> (RoutingTable, RestoreReport) {
    let mut report = RestoreReport {
        from_version: snapshot.version,
        source: source.to_string(),
        ..Default::default()
    };
    let mut services = Vec::with_capacity(config.services.len());
    for sc in &config.services {
        let mut service = Service::from_config(sc, metrics);
        let Some(saved) = snapshot.services.iter().find(|s| s.name == sc.name) else {
            report.from_config.push(sc.name.clone());
            services.push(Arc::new(service));
            continue;
        };
        let same_file = saved.file == sc.routing_fingerprint();
        let stable = parse_all(&saved.stable);
        let canary = saved.canary.as_deref().map(parse_all);
        match (same_file, stable, canary) {
            (true, Some(stable), canary) => {
                service.stable = Arm::new(ArmRole::Stable, sc, stable, metrics);
                service.canary = match canary {
                    Some(Some(c)) => Some(Arm::new(ArmRole::Canary, sc, c, metrics)),
                    _ => None,
                };
                service.weight = Weight::from_percent(saved.weight).unwrap_or(Weight::ZERO);
                service.state = saved.state;
                service.generation = saved.generation;
                service.held_weight =
                    Weight::from_percent(saved.held_weight).unwrap_or(Weight::ZERO);
                if service.canary.is_none() {
                    service.state = ServiceState::Stable;
                    service.weight = Weight::ZERO;
                }
                report.restored.push(sc.name.clone());
            }
            _ => {
                // The file changed since: its values apply. A canary that was cut back and is
                // still the file's canary stays held.
                let same_canary = saved.canary.as_ref().is_some_and(|c| {
                    *c == sc.canary.iter().map(|u| u.spec.clone()).collect::<Vec<_>>()
                });
                if saved.state == ServiceState::RolledBack
                    && same_canary
                    && service.canary.is_some()
                {
                    service.held_weight = service.weight;
                    service.weight = Weight::ZERO;
                    service.state = ServiceState::RolledBack;
                    service.generation = saved.generation;
                    report.held.push(sc.name.clone());
                } else {
                    report.from_config.push(sc.name.clone());
                }
            }
        }
        if let (Some(row), true) = (&saved.deployment, service.canary.is_some()) {
            if service.generation == saved.generation {
                keeper.adopt(&sc.name, row.clone(), saved.generation);
            }
        }
        services.push(Arc::new(service));
    }
    let table = RoutingTable::new(
        snapshot.version + 1,
        services,
        Arc::new(RoutingOptions::from_config(
            &config.routing,
            config.server.idle_timeout,
        )),
    );
    (table, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{initial_table, ops};

    const WEB: &str = r#"
[[services]]
name = "web"
stable = ["127.0.0.1:1001"]
canary = ["127.0.0.1:1002"]
canary_weight = 10.0
"#;

    #[test]
    fn a_hold_survives_a_restart_even_when_the_file_changes_its_weight() {
        let metrics = Metrics::new();
        let config = Config::parse(WEB, "t.toml").unwrap();
        let mut keeper = Keeper::new(None);
        let table = initial_table(&config, &metrics);
        let web = &table.services[0];
        keeper.follow(web, EventKind::Started, "config", None, json!({}));
        let (held, kind, _) = ops::rollback(web, "bad").unwrap();
        keeper.follow(&held, kind, "judge", None, json!({}));
        let table = table.next(vec![Arc::new(held)], None);
        let snap = keeper.table_snapshot(&table);
        let json = serde_json::to_string(&snap).unwrap();
        let snap: TableSnapshot = serde_json::from_str(&json).unwrap();

        // Same file: everything continues, version included.
        let mut k2 = Keeper::new(None);
        let (t2, report) = restore(&config, &snap, "database", &metrics, &mut k2);
        assert_eq!(t2.version, table.version + 1);
        assert_eq!(report.restored, vec!["web"]);
        assert_eq!(t2.services[0].state, ServiceState::RolledBack);
        assert!(t2.services[0].weight.is_zero());
        assert_eq!(
            k2.open_deployment("web").unwrap().outcome,
            DeploymentState::RolledBack.as_str()
        );

        // The file raised the weight of the same canary: still held.
        let edited = Config::parse(&WEB.replace("10.0", "30.0"), "t.toml").unwrap();
        let (t3, report) = restore(&edited, &snap, "database", &metrics, &mut Keeper::new(None));
        assert_eq!(report.held, vec!["web"]);
        assert_eq!(t3.services[0].state, ServiceState::RolledBack);
        assert!(t3.services[0].weight.is_zero());

        // A new canary in the file starts fresh.
        let new = Config::parse(&WEB.replace("1002", "1003"), "t.toml").unwrap();
        let (t4, report) = restore(&new, &snap, "database", &metrics, &mut Keeper::new(None));
        assert_eq!(report.from_config, vec!["web"]);
        assert_eq!(t4.services[0].state, ServiceState::Canary);
        assert_eq!(t4.services[0].weight.percent(), 10.0);
    }

    #[test]
    fn deployments_follow_the_canary_life() {
        let metrics = Metrics::new();
        let config = Config::parse(WEB, "t.toml").unwrap();
        let mut keeper = Keeper::new(None);
        let table = initial_table(&config, &metrics);
        let web = (*table.services[0]).clone();
        keeper.follow(&web, EventKind::Started, "config", Some("v2"), json!({}));
        let first = keeper.deployment_of("web").unwrap();
        assert_eq!(
            keeper.open_deployment("web").unwrap().label.as_deref(),
            Some("v2")
        );
        let up = UpstreamAddr::parse("127.0.0.1:1005").unwrap();
        let (next, kind, _) = ops::set_canary(&web, vec![up], None, &metrics).unwrap();
        keeper.follow(&next, kind, "api", Some("v3"), json!({}));
        let second = keeper.deployment_of("web").unwrap();
        assert_ne!(first, second);
        let (promoted, kind, _) = ops::promote(&next, &metrics).unwrap();
        keeper.follow(&promoted, kind, "api", None, json!({}));
        assert!(keeper.deployment_of("web").is_none());
    }
}
