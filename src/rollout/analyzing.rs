//! The controller's external analyses: one task per (service, analysis, canary version)
//! while a canary serves, their states, and what they mean for the judge and for a
//! running deployment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::analysis::{
    AnalysisKey, AnalysisSpec, AnalysisState, Change, Context, Measurement, Observation,
};
use crate::judge::AnalysisFailure;
use crate::routing::{RoutingTable, Service};
use crate::types::ServiceState;

/// Measurements that may wait for the controller.
pub const MEASUREMENT_QUEUE: usize = 256;

struct Task {
    spec: Arc<AnalysisSpec>,
    context: Context,
    handle: JoinHandle<()>,
}

/// One analysis as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisView {
    /// Its settings.
    pub spec: AnalysisSpec,
    /// What the placeholders stood for.
    pub context: Context,
    /// Counts and the latest measurements.
    #[serde(flatten)]
    pub state: AnalysisState,
    /// Past its failure limit.
    pub failed: bool,
}

/// All analysis tasks and states of a gate.
pub struct Analyzing {
    client: reqwest::Client,
    tx: mpsc::Sender<Observation>,
    tasks: HashMap<AnalysisKey, Task>,
    states: HashMap<AnalysisKey, AnalysisState>,
}

fn key(service: &Service, spec: &AnalysisSpec) -> AnalysisKey {
    AnalysisKey {
        service: service.name().to_string(),
        analysis: spec.name.clone(),
        generation: service.generation,
    }
}

impl Analyzing {
    /// A manager; returns the receiver of measurements.
    pub fn new() -> (Analyzing, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(MEASUREMENT_QUEUE);
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        (
            Analyzing {
                client,
                tx,
                tasks: HashMap::new(),
                states: HashMap::new(),
            },
            rx,
        )
    }

    /// Runs the analyses of every service whose canary serves (a new canary version gets
    /// fresh ones) and stops the others. `context` names the versions. Must run inside a
    /// runtime.
    pub fn reconcile(&mut self, table: &RoutingTable, context: impl Fn(&Service) -> Context) {
        let mut wanted: HashSet<AnalysisKey> = HashSet::new();
        for service in &table.services {
            if service.state != ServiceState::Canary || service.canary.is_none() {
                continue;
            }
            for spec in &service.config.analysis {
                let k = key(service, spec);
                wanted.insert(k.clone());
                let ctx = context(service);
                let current = self
                    .tasks
                    .get(&k)
                    .map(|t| *t.spec == *spec && t.context == ctx);
                if current == Some(true) {
                    continue;
                }
                if let Some(old) = self.tasks.remove(&k) {
                    old.handle.abort();
                    self.states.remove(&k);
                }
                let spec = Arc::new(spec.clone());
                let handle = tokio::spawn(crate::analysis::run(
                    k.clone(),
                    spec.clone(),
                    ctx.clone(),
                    self.client.clone(),
                    self.tx.clone(),
                ));
                self.states.insert(k.clone(), AnalysisState::default());
                self.tasks.insert(
                    k,
                    Task {
                        spec,
                        context: ctx,
                        handle,
                    },
                );
            }
        }
        self.tasks.retain(|k, t| {
            let keep = wanted.contains(k);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        self.states.retain(|k, _| wanted.contains(k));
    }

    /// Takes a measurement in; `None` for a task no longer wanted (a race with a
    /// reconcile).
    pub fn observe(&mut self, obs: &Observation) -> Option<(Arc<AnalysisSpec>, Change)> {
        let spec = self.tasks.get(&obs.key)?.spec.clone();
        let state = self.states.get_mut(&obs.key)?;
        Some((spec.clone(), state.observe(&obs.measurement, &spec)))
    }

    /// The service's analyses past their failure limit, for the judge.
    pub fn failures(&self, service: &Service) -> Vec<AnalysisFailure> {
        service
            .config
            .analysis
            .iter()
            .filter_map(|spec| {
                let state = self.states.get(&key(service, spec))?;
                state.failed(spec).then(|| AnalysisFailure {
                    analysis: spec.name.clone(),
                    failures: state.failures,
                    measurements: state.measurements,
                    failure_limit: spec.failure_limit,
                    latest: state
                        .recent
                        .iter()
                        .rev()
                        .find(|m| m.outcome == crate::analysis::Outcome::Failed)
                        .cloned(),
                })
            })
            .collect()
    }

    /// The service's running analyses, for the API.
    pub fn views(&self, service: &Service) -> Vec<AnalysisView> {
        service
            .config
            .analysis
            .iter()
            .filter_map(|spec| {
                let k = key(service, spec);
                let (task, state) = (self.tasks.get(&k)?, self.states.get(&k)?);
                Some(AnalysisView {
                    spec: spec.clone(),
                    context: task.context.clone(),
                    state: state.clone(),
                    failed: state.failed(spec),
                })
            })
            .collect()
    }

    /// The latest measurement of each analysis of `service` (for a cut-back's evidence).
    pub fn latest(&self, service: &Service) -> Vec<(String, Measurement)> {
        service
            .config
            .analysis
            .iter()
            .filter_map(|spec| {
                let m = self.states.get(&key(service, spec))?.recent.back()?;
                Some((spec.name.clone(), m.clone()))
            })
            .collect()
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
        self.tasks.clear();
        self.states.clear();
    }
}

impl super::Controller {
    /// What each serving canary's placeholders stand for: its deployment's label (or its
    /// upstreams), stable's upstreams.
    fn analysis_context(&self, service: &Service) -> Context {
        let name = service.name();
        let upstreams = |arm: Option<&crate::routing::Arm>| {
            arm.map(|a| {
                a.upstreams
                    .iter()
                    .map(|u| u.spec.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
        };
        let label = self
            .deployments
            .active
            .get(name)
            .and_then(|a| a.label.clone())
            .or_else(|| {
                self.keeper
                    .open_deployment(name)
                    .and_then(|row| row.label.clone())
            });
        Context {
            service: name.to_string(),
            canary_version: label.unwrap_or_else(|| upstreams(service.canary.as_ref())),
            stable_version: upstreams(Some(&service.stable)),
        }
    }

    /// Starts and stops analysis tasks to follow `table`.
    pub(super) fn reconcile_analyses(&mut self, table: &RoutingTable) {
        let contexts: HashMap<String, Context> = table
            .services
            .iter()
            .filter(|s| !s.config.analysis.is_empty())
            .map(|s| (s.name().to_string(), self.analysis_context(s)))
            .collect();
        self.analyzing.reconcile(table, |s| {
            contexts.get(s.name()).cloned().unwrap_or_else(|| Context {
                service: s.name().to_string(),
                canary_version: String::new(),
                stable_version: String::new(),
            })
        });
    }

    /// A measurement: recorded as an event; past the failure limit the judge acts at once;
    /// too many inconclusive ones in a row pause a running deployment.
    pub(super) fn on_analysis(&mut self, obs: Observation) {
        let Some((spec, change)) = self.analyzing.observe(&obs) else {
            return;
        };
        let m = &obs.measurement;
        let service = obs.key.service.clone();
        let deployment = self.keeper.deployment_of(&service);
        let outcome = serde_json::to_value(m.outcome).unwrap_or_default();
        self.bus.publish(
            crate::events::NewEvent::new(
                crate::events::EventKind::AnalysisMeasured,
                "analysis",
                format!(
                    "analysis '{}' {}: {}",
                    spec.name,
                    outcome.as_str().unwrap_or(""),
                    m.detail
                ),
            )
            .service(service.clone())
            .deployment(deployment.clone())
            .evidence(serde_json::json!({ "analysis": &*spec, "measurement": m })),
        );
        if change.failed {
            self.judge_all();
        }
        if change.inconclusive_limit {
            let why = format!(
                "analysis '{}' was inconclusive {} times in a row ({})",
                spec.name, spec.max_inconclusive, m.detail
            );
            let paused = self.deployments.active.get_mut(&service).is_some_and(|a| {
                let now = Self::plan_now(a);
                a.plan
                    .pause_because(now, &format!("{why}: resume once Prometheus answers"))
            });
            let event = self.bus.publish(
                crate::events::NewEvent::new(
                    crate::events::EventKind::AnalysisInconclusive,
                    "analysis",
                    if paused {
                        format!("{why}: the deployment is paused")
                    } else {
                        format!("{why}: nothing is rolled back on no answer")
                    },
                )
                .service(service.clone())
                .deployment(deployment)
                .evidence(
                    serde_json::json!({ "analysis": &*spec, "measurement": m, "paused": paused }),
                ),
            );
            self.remember(&event);
            if paused {
                self.record_progress(&service);
            }
        }
    }
}
