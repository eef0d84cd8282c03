//! Deployments in the controller: starting one (per-service lock, freezes), driving its
//! plan every tick, applying what the plan wants to the table, operator control
//! (pause, resume, abort, promote), and the progress the API shows.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::history::Planned;
use super::plan::{Deadline, Outcome, Phase, Plan, Progress, Spec, Want};
use super::state::{DeploymentState, Strategy};
use super::{ops, Applied, ControlError, Controller};
use crate::events::{EventKind, NewEvent};
use crate::routing::RoutingTable;
use crate::time::now_ms;
use crate::types::UpstreamAddr;

/// A freeze: new deployments are refused until it is lifted.
#[derive(Debug, Clone, Serialize)]
pub struct Freeze {
    /// Why.
    pub reason: String,
    /// Who froze.
    pub by: String,
    /// Since (epoch ms).
    pub at_ms: u64,
}

/// The freezes in force, as the API shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freezes {
    /// All services frozen, or null.
    pub all: Option<Freeze>,
    /// Frozen services, by name.
    pub services: std::collections::BTreeMap<String, Freeze>,
}

/// An operator's control of a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop moving on (traffic stays as it is; the judge still acts).
    Pause,
    /// Move on again.
    Resume,
    /// Roll back at once.
    Abort,
    /// Skip what is left and promote.
    Promote,
}

/// A deployment in progress.
pub struct Active {
    /// Its id.
    pub id: String,
    /// The service.
    pub service: String,
    /// Version label.
    pub label: Option<String>,
    /// Who started it.
    pub started_by: String,
    /// When (epoch ms).
    pub started_ms: u64,
    /// The new version's upstreams.
    pub new: Vec<UpstreamAddr>,
    /// The stable upstreams it started from (rolling: the instances being replaced).
    pub old: Vec<UpstreamAddr>,
    /// The plan.
    pub plan: Plan,
    /// Canary requests counted when the current phase began.
    pub(super) phase_requests: u64,
    /// The phase (and pause state) last recorded.
    pub(super) last_seen: Option<(Phase, bool)>,
    /// The phase the sample count belongs to.
    pub(super) samples_phase: Option<Phase>,
    /// The plan before a failing transition, in case the rollback is refused.
    pub(super) before_failure: Option<Plan>,
    /// The table routing before the last change of arms: drained when no request holds it.
    pub(super) before_reshape: Option<Weak<RoutingTable>>,
    /// The image, for a deployment Sluice runs as containers.
    pub image: Option<String>,
    /// Waiting for the release manager to start the new containers.
    pub preparing: bool,
    /// When the plan's clock started (epoch ms): the start, or when the containers were up.
    pub(super) plan_origin_ms: u64,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// Id.
    pub id: String,
    /// Service.
    pub service: String,
    /// How it moves traffic.
    pub strategy: Strategy,
    /// Where it is.
    pub state: DeploymentState,
    /// Version label.
    pub label: Option<String>,
    /// Who started it.
    pub started_by: String,
    /// Epoch ms.
    pub started_ms: u64,
    /// The new version's upstreams.
    pub upstreams: Vec<String>,
    /// The image, when Sluice runs the new version as containers.
    pub image: Option<String>,
    /// Canary weight now.
    pub weight: f64,
    /// Plan state: phase, step, what it waits for.
    pub progress: Progress,
    /// Instances: total, updated (in the canary arm), healthy and failing by their probes.
    pub instances: Instances,
    /// The judge's current view, one line.
    pub judge: Option<String>,
    /// Where it is, for people: "step 2 at 10%", "verifying green", ...
    pub summary: String,
}

/// Instance counts of a deployment.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Instances {
    /// New instances in all.
    pub total: usize,
    /// New instances receiving traffic (in the canary arm).
    pub updated: usize,
    /// Updated instances passing their probes.
    pub healthy: usize,
    /// Updated instances failing their probes.
    pub failed: Vec<String>,
}

/// The deployments of a gate.
#[derive(Default)]
pub struct Deployments {
    /// Running or paused, by service (the lock).
    pub active: HashMap<String, Active>,
    /// All services frozen.
    pub frozen_all: Option<Freeze>,
    /// Frozen services.
    pub frozen: HashMap<String, Freeze>,
    /// Recently finished, newest last (for the API when history is off).
    pub finished: Vec<DeploymentView>,
}

fn state_of(plan: &Plan) -> DeploymentState {
    if let Some(o) = plan.progress(Duration::ZERO).outcome {
        if plan.done() {
            return o.into();
        }
    }
    if plan.paused() {
        DeploymentState::Paused
    } else {
        DeploymentState::Running
    }
}

impl Controller {
    pub(super) fn plan_now(active: &Active) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(active.plan_origin_ms))
    }

    /// Starts a deployment: refused when frozen, when another holds the service's lock, or
    /// when the request does not fit the service. An image deployment first waits for the
    /// release manager to start its containers ([`Controller::prepared`]).
    pub(super) fn start_deployment(
        &mut self,
        service: &str,
        spec: Spec,
        deadline: Option<Deadline>,
        source: super::DeploySource,
        label: Option<String>,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let table = self.table.load_full();
        let current = table
            .service(service)
            .ok_or_else(|| ControlError::NotFound(service.to_string()))?
            .clone();
        if let Some(f) = self
            .deployments
            .frozen
            .get(service)
            .or(self.deployments.frozen_all.as_ref())
        {
            return Err(ControlError::Conflict(format!(
                "deployments of '{service}' are frozen by {} since {}: {}",
                f.by,
                crate::time::format_time(f.at_ms),
                f.reason
            )));
        }
        if let Some(a) = self.deployments.active.get(service) {
            return Err(ControlError::Conflict(format!(
                "deployment {} ({}) started by {} holds the lock on '{service}'; pause, promote or abort it first",
                a.id,
                a.plan.spec().name(),
                a.started_by
            )));
        }
        let docker = current.config.docker.as_ref();
        let (upstreams, image) = match source {
            super::DeploySource::Upstreams(u) => {
                if docker.is_some() {
                    return Err(ControlError::Invalid(format!(
                        "upstreams: '{service}' runs as containers ([services.docker]): deploy an image instead"
                    )));
                }
                (u, None)
            }
            super::DeploySource::Image(i) => {
                if docker.is_none() {
                    return Err(ControlError::Invalid(format!(
                        "image: '{service}' has no [services.docker] section: deploy upstreams instead"
                    )));
                }
                if self.docker.is_none() {
                    return Err(ControlError::Conflict(
                        "the Docker release manager is not running".into(),
                    ));
                }
                (Vec::new(), Some(i))
            }
        };
        let new_count = match (&image, docker) {
            (Some(_), Some(d)) => d.replicas,
            _ => upstreams.len(),
        };
        let old: Vec<UpstreamAddr> = current.stable.upstreams.to_vec();
        if let Spec::Rolling {
            instances,
            batch_size,
            max_unavailable,
            ..
        } = &spec
        {
            if new_count != old.len() || *instances != old.len() {
                return Err(ControlError::Invalid(format!(
                    "{}: a rolling update replaces each of the {} stable instance(s) with a new one; got {new_count}",
                    if image.is_some() { "replicas" } else { "upstreams" },
                    old.len(),
                )));
            }
            if batch_size > max_unavailable {
                return Err(ControlError::Invalid(format!(
                    "batch_size: {batch_size} is more than max_unavailable ({max_unavailable})"
                )));
            }
        } else if let Some(u) = upstreams
            .iter()
            .find(|u| old.iter().any(|o| o.addr == u.addr))
        {
            return Err(ControlError::Invalid(format!(
                "upstreams: '{}' already serves the stable arm",
                u.spec
            )));
        }
        let id = super::history::new_deployment_id(service);
        let started_ms = now_ms();
        let (plan, wants) = Plan::start(spec.clone(), deadline, Duration::ZERO);
        let label = label.or_else(|| image.clone());
        self.keeper.expect(
            service,
            Planned {
                id: id.clone(),
                strategy: spec.name().to_string(),
                label: label.clone(),
                plan: serde_json::to_value(&spec).unwrap_or_default(),
            },
        );
        let what = match &image {
            Some(i) => format!("image {i}"),
            None => upstreams
                .iter()
                .map(|u| u.spec.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::DeploymentStarted,
                actor.to_string(),
                format!(
                    "{} deployment of {what} started{}",
                    spec.name(),
                    label
                        .as_deref()
                        .filter(|l| Some(*l) != image.as_deref())
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                ),
            )
            .service(service.to_string())
            .deployment(Some(id.clone()))
            .evidence(json!({
                "plan": spec,
                "deadline": deadline,
                "upstreams": upstreams.iter().map(|u| u.spec.clone()).collect::<Vec<_>>(),
                "image": image,
            })),
        );
        self.remember(&event);
        let preparing = image.is_some();
        self.deployments.active.insert(
            service.to_string(),
            Active {
                id: id.clone(),
                service: service.to_string(),
                label,
                started_by: actor.to_string(),
                started_ms,
                new: upstreams,
                old,
                plan,
                phase_requests: 0,
                last_seen: None,
                samples_phase: None,
                before_failure: None,
                before_reshape: None,
                image: image.clone(),
                preparing,
                plan_origin_ms: started_ms,
            },
        );
        if let Some(image) = image {
            let sent = self.docker.as_ref().is_some_and(|tx| {
                tx.send(crate::docker::manager::Request::Prepare {
                    deployment: id.clone(),
                    service: service.to_string(),
                    image,
                })
                .is_ok()
            });
            if !sent {
                self.deployments.active.remove(service);
                return Err(ControlError::Conflict(
                    "the Docker release manager is not running".into(),
                ));
            }
            self.record_progress(service);
        } else if let Err(e) = self.begin(service, wants, actor) {
            self.deployments.active.remove(service);
            return Err(e);
        }
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }

    /// The plan's first step, once the new version's upstreams are known: the new arm (at
    /// 0 % for blue-green), or the first batch of a rolling update.
    pub(super) fn begin(
        &mut self,
        service: &str,
        wants: Vec<Want>,
        actor: &str,
    ) -> Result<(), ControlError> {
        let Some(active) = self.deployments.active.get(service) else {
            return Ok(());
        };
        let id = active.id.clone();
        let first = match active.plan.spec() {
            Spec::Rolling { .. } => wants,
            _ => {
                let weight = match wants.first() {
                    Some(Want::Weight(w)) => *w,
                    _ => crate::types::Weight::ZERO,
                };
                let new = active.new.clone();
                self.change_labelled(
                    service,
                    actor,
                    json!({ "deployment": id }),
                    None,
                    |old, metrics| ops::set_canary(old, new, Some(weight), metrics),
                )?;
                Vec::new()
            }
        };
        self.apply_wants(service, first, actor);
        self.record_progress(service);
        Ok(())
    }

    pub(super) fn finish_deployment(
        &mut self,
        service: &str,
        end: Outcome,
        why: &str,
        actor: &str,
    ) {
        let Some(active) = self.deployments.active.remove(service) else {
            return;
        };
        let view = self.view(&active);
        let detail = json!({ "progress": view.progress, "instances": view.instances, "why": why });
        if active.preparing {
            self.keeper.close_planned(
                service,
                &active.started_by,
                active.started_ms,
                end.as_str(),
                detail,
            );
        } else {
            self.keeper.update(service, end.as_str(), detail, true);
        }
        let kind = match end {
            Outcome::Succeeded => EventKind::DeploymentSucceeded,
            Outcome::RolledBack => EventKind::DeploymentFailed,
            Outcome::Aborted => EventKind::DeploymentAborted,
        };
        let event = self.bus.publish(
            NewEvent::new(
                kind,
                actor.to_string(),
                format!(
                    "{} deployment {} {}: {why}",
                    active.plan.spec().name(),
                    active.id,
                    end.as_str()
                ),
            )
            .service(service.to_string())
            .deployment(Some(active.id.clone()))
            .evidence(serde_json::to_value(&view).unwrap_or_default()),
        );
        self.remember(&event);
        if active.image.is_some() {
            if let Some(tx) = &self.docker {
                let _ = tx.send(crate::docker::manager::Request::Finished {
                    deployment: active.id.clone(),
                    service: service.to_string(),
                    succeeded: end == Outcome::Succeeded,
                });
            }
        }
        let mut view = view;
        view.state = end.into();
        self.deployments.finished.push(view);
        if self.deployments.finished.len() > 50 {
            self.deployments.finished.remove(0);
        }
    }

    /// Operator control of the deployment `id`.
    pub(super) fn control_deployment(
        &mut self,
        id: &str,
        control: Control,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let Some(service) = self
            .deployments
            .active
            .values()
            .find(|a| a.id == id)
            .map(|a| a.service.clone())
        else {
            let finished = self.deployments.finished.iter().any(|d| d.id == id);
            return Err(if finished {
                ControlError::Conflict(format!("deployment {id} is over"))
            } else {
                ControlError::NotFound(format!("deployment {id}"))
            });
        };
        let active = self
            .deployments
            .active
            .get_mut(&service)
            .ok_or_else(|| ControlError::NotFound(format!("deployment {id}")))?;
        if active.preparing {
            if control != Control::Abort {
                return Err(ControlError::Conflict(format!(
                    "deployment {id} is still starting its containers: only abort applies now"
                )));
            }
            // Nothing routes to the new version yet: the manager stops what it started.
            self.finish_deployment(
                &service,
                Outcome::Aborted,
                "aborted while its containers were starting",
                actor,
            );
            let event = self.last_decision.get(&service).cloned().ok_or_else(|| {
                ControlError::Conflict(format!("deployment {id} ended without its event"))
            })?;
            return Ok(Applied {
                table_version: self.table.load().version,
                event,
                reload: None,
            });
        }
        let now = Self::plan_now(active);
        let (kind, wants) = match control {
            Control::Pause => {
                if !active.plan.pause(now) {
                    return Err(ControlError::Conflict(format!(
                        "deployment {id} is already paused"
                    )));
                }
                (EventKind::DeploymentPaused, Vec::new())
            }
            Control::Resume => {
                if !active.plan.paused() {
                    return Err(ControlError::Conflict(format!(
                        "deployment {id} is not paused"
                    )));
                }
                (EventKind::DeploymentResumed, active.plan.resume(now))
            }
            Control::Abort => {
                if let Some(why) = self.previous_version_gone(&service) {
                    // Nothing to go back to: the deployment stays as it is.
                    self.refuse_rollback(&service, &why, actor);
                    return Err(ControlError::Conflict(format!("rollback refused: {why}")));
                }
                let active = self
                    .deployments
                    .active
                    .get_mut(&service)
                    .ok_or_else(|| ControlError::NotFound(format!("deployment {id}")))?;
                active.before_failure = Some(active.plan.clone());
                (EventKind::DeploymentAborted, active.plan.abort(now))
            }
            Control::Promote => (EventKind::DeploymentStep, active.plan.promote()),
        };
        let message = match control {
            Control::Pause => format!("deployment {id} paused"),
            Control::Resume => format!("deployment {id} resumed"),
            Control::Abort => format!("deployment {id} aborted: rolling back"),
            Control::Promote => format!("deployment {id} promoted: skipping the rest"),
        };
        let event = if matches!(control, Control::Pause | Control::Resume | Control::Promote) {
            let e = self.bus.publish(
                NewEvent::new(kind, actor.to_string(), message)
                    .service(service.clone())
                    .deployment(Some(id.to_string())),
            );
            self.remember(&e);
            Some(e)
        } else {
            None
        };
        self.apply_wants(&service, wants, actor);
        self.record_progress(&service);
        let event = match event {
            Some(e) => e,
            None => self
                .last_decision
                .get(&service)
                .cloned()
                .unwrap_or_else(|| {
                    self.bus.publish(
                        NewEvent::new(kind, actor.to_string(), format!("deployment {id} aborted"))
                            .service(service.clone())
                            .deployment(Some(id.to_string())),
                    )
                }),
        };
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }

    /// A running deployment as the API shows it.
    pub(super) fn view(&self, active: &Active) -> DeploymentView {
        let table = self.table.load();
        let service = table.service(&active.service);
        let board = self.board.load();
        let mut instances = Instances {
            total: active.new.len(),
            ..Default::default()
        };
        if let Some(canary) = service.and_then(|s| s.canary.as_ref()) {
            instances.updated = canary
                .upstreams
                .iter()
                .filter(|u| active.new.iter().any(|n| n.addr == u.addr))
                .count();
            if let Some(s) = service {
                for u in canary.upstreams.iter() {
                    match self
                        .probing
                        .upstream_health(s, crate::types::ArmRole::Canary, &u.spec)
                    {
                        crate::probes::Health::Healthy => instances.healthy += 1,
                        crate::probes::Health::Unhealthy => instances.failed.push(u.spec.clone()),
                        crate::probes::Health::Unknown => {}
                    }
                }
            }
        }
        let mut view = DeploymentView {
            id: active.id.clone(),
            service: active.service.clone(),
            strategy: active.plan.spec().strategy(),
            state: state_of(&active.plan),
            label: active.label.clone(),
            started_by: active.started_by.clone(),
            started_ms: active.started_ms,
            upstreams: active.new.iter().map(|u| u.spec.clone()).collect(),
            image: active.image.clone(),
            weight: service.map(|s| s.weight.percent()).unwrap_or(0.0),
            progress: active.plan.progress(Self::plan_now(active)),
            instances,
            judge: board
                .get(&active.service)
                .and_then(|b| b.verdict.as_ref())
                .map(|v| v.summary()),
            summary: String::new(),
        };
        view.summary = if active.preparing {
            format!(
                "starting the containers of {}",
                active.image.as_deref().unwrap_or("the new image")
            )
        } else {
            phase_text(&view)
        };
        view
    }

    /// Every live view, for the board.
    pub(super) fn deployment_views(&self) -> HashMap<String, DeploymentView> {
        let mut views: HashMap<String, DeploymentView> = self
            .deployments
            .finished
            .iter()
            .map(|v| (v.id.clone(), v.clone()))
            .collect();
        for a in self.deployments.active.values() {
            views.insert(a.id.clone(), self.view(a));
        }
        views
    }
}

fn phase_text(v: &DeploymentView) -> String {
    use super::plan::Phase;
    match &v.progress.phase {
        Phase::Step { index } => format!("step {} at {}%", index + 1, v.weight),
        Phase::Verify => "verifying green (0 %, preview only)".into(),
        Phase::KeepBlue => "switched: all traffic on green, blue warm".into(),
        Phase::Drain { replaced } => format!("batch to {replaced} instance(s): draining old ones"),
        Phase::Gate { replaced } => format!("{replaced} instance(s) replaced: health gate"),
        Phase::Between { replaced } => format!("{replaced} instance(s) replaced: pause"),
        Phase::Reverting { out } => format!("reverting: {out} old instance(s) still out"),
        Phase::Done => "done".into(),
    }
}
