//! Driving running deployments: the plan's wants applied to the table on each tick, progress
//! recorded, breaches turned into a step back or a cut-back, and rollbacks refused when the
//! previous version is gone.

use crate::events::{EventKind, NewEvent};
use crate::rollout::plan::{Inputs, Judged, Outcome, Stall, Want};
use crate::rollout::state::DeploymentState;
use crate::rollout::{ops, Controller};
use crate::types::ServiceState;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

impl Controller {
    /// Applies what a plan wants, in order; ends the deployment on `Finish`.
    pub(super) fn apply_wants(&mut self, service: &str, wants: Vec<Want>, actor: &str) {
        for want in wants {
            let Some(active) = self.deployments.active.get(service) else {
                return;
            };
            let (id, old, new) = (active.id.clone(), active.old.clone(), active.new.clone());
            let extra = json!({ "deployment": id });
            let result = match want {
                Want::Weight(w) => {
                    self.change(service, actor, extra, |s, _| ops::plan_weight(s, w))
                }
                Want::Reshape { replaced, weight } => {
                    let before = Arc::downgrade(&self.table.load_full());
                    let r = self.change(service, actor, extra, |s, m| {
                        ops::reshape(s, &old, &new, replaced, weight, m)
                    });
                    if let Some(a) = self.deployments.active.get_mut(service) {
                        a.before_reshape = Some(before);
                    }
                    r
                }
                Want::Restore { out } => {
                    self.change(service, actor, extra, |s, _| ops::restore_old(s, &old, out))
                }
                Want::Promote => self.change(service, actor, extra, ops::promote),
                Want::CutBack(reason) => {
                    let held = self
                        .table
                        .load()
                        .service(service)
                        .is_some_and(|s| s.state == ServiceState::RolledBack);
                    if held {
                        continue;
                    }
                    if let Some(why) = self.previous_version_gone(service) {
                        self.refuse_rollback(service, &why, actor);
                        // The deployment does not end: it waits, paused, where it was.
                        if let Some(a) = self.deployments.active.get_mut(service) {
                            let now = Self::plan_now(a);
                            if let Some(before) = a.before_failure.take() {
                                a.plan = before;
                            }
                            a.plan
                                .pause_because(now, &format!("rollback refused: {why}"));
                        }
                        return;
                    }
                    let r = self.change(service, actor, extra, |s, _| ops::rollback(s, &reason));
                    if r.is_ok() {
                        self.metrics.rollback(service, "deployment");
                    }
                    r
                }
                Want::Finish(end, why) => {
                    self.finish_deployment(service, end, &why, actor);
                    return;
                }
                Want::Stalled(stall) => {
                    self.deployment_stalled(service, &stall);
                    continue;
                }
            };
            if let Err(e) = result {
                tracing::warn!(service, deployment = %id, error = %e, "a deployment step was refused");
            }
        }
    }

    /// A phase met its progress deadline: said (and notified) before the plan acts on it.
    fn deployment_stalled(&mut self, service: &str, stall: &Stall) {
        let Some(active) = self.deployments.active.get(service) else {
            return;
        };
        let view = self.view(active);
        let message = format!(
            "deployment {} made no progress for {} ({}): {}",
            active.id,
            crate::time::format_duration(stall.deadline.after),
            stall.waiting,
            stall.action
        );
        tracing::warn!(service, "{message}");
        let event = self.bus.publish(
            NewEvent::new(EventKind::DeploymentStalled, "deadline", message)
                .service(service.to_string())
                .deployment(Some(active.id.clone()))
                .evidence(json!({ "stall": stall, "deployment": view })),
        );
        self.remember(&event);
    }

    /// Drives every running deployment one tick.
    pub(super) fn drive_deployments(&mut self) {
        let services: Vec<String> = self.deployments.active.keys().cloned().collect();
        for name in services {
            let table = self.table.load_full();
            let Some(service) = table.service(&name).cloned() else {
                self.finish_deployment(
                    &name,
                    Outcome::Aborted,
                    "the service left the config",
                    "config",
                );
                continue;
            };
            let board = self.board.load();
            let judged = match board.get(&name).and_then(|b| b.verdict.as_ref()) {
                Some(crate::judge::Verdict::Healthy { .. }) => Judged::Healthy,
                Some(crate::judge::Verdict::Breach { .. }) => Judged::Breach,
                _ => Judged::Inconclusive,
            };
            let canary_requests: u64 = service
                .canary
                .as_ref()
                .map(|c| c.stats.totals().iter().sum())
                .unwrap_or(0);
            let has_probes = !service.config.probes.is_empty();
            let healthy_since = self.probing.canary_healthy_since(&service);
            let Some(active) = self.deployments.active.get_mut(&name) else {
                continue;
            };
            if active.preparing {
                continue;
            }
            let phase = active.plan.phase().clone();
            if active.samples_phase.as_ref() != Some(&phase) {
                active.samples_phase = Some(phase);
                active.phase_requests = canary_requests;
            }
            let started = active.plan_origin_ms;
            let inputs = Inputs {
                now: Self::plan_now(active),
                judged,
                samples: canary_requests.saturating_sub(active.phase_requests),
                probes: has_probes.then(|| {
                    healthy_since.map(|ms| Duration::from_millis(ms.saturating_sub(started)))
                }),
                drained: active
                    .before_reshape
                    .as_ref()
                    .is_none_or(|w| w.strong_count() == 0),
            };
            let wants = active.plan.tick(&inputs);
            if !wants.is_empty() {
                self.apply_wants(&name, wants, "deployment");
            }
            self.record_progress(&name);
        }
    }

    /// Records (history, events) a deployment's move to another phase or pause state.
    pub(super) fn record_progress(&mut self, service: &str) {
        let Some(active) = self.deployments.active.get(service) else {
            return;
        };
        let seen = (active.plan.phase().clone(), active.plan.paused());
        if active.last_seen.as_ref() == Some(&seen) {
            return;
        }
        let view = self.view(active);
        let first = active.last_seen.is_none();
        let id = active.id.clone();
        if let Some(a) = self.deployments.active.get_mut(service) {
            a.last_seen = Some(seen);
        }
        self.keeper.update(
            service,
            if view.progress.paused {
                DeploymentState::Paused.as_str()
            } else {
                DeploymentState::Running.as_str()
            },
            json!({ "progress": view.progress, "instances": view.instances }),
            false,
        );
        if !first {
            let event = self.bus.publish(
                NewEvent::new(
                    EventKind::DeploymentStep,
                    "deployment",
                    format!(
                        "{}: {}{}",
                        view.strategy,
                        view.summary,
                        view.progress
                            .waiting
                            .as_deref()
                            .map(|w| format!(" ({w})"))
                            .unwrap_or_default()
                    ),
                )
                .service(service.to_string())
                .deployment(Some(id))
                .evidence(serde_json::to_value(&view).unwrap_or_default()),
            );
            self.remember(&event);
        }
    }

    /// The judge found a breach on `service`. Returns true when a running deployment chose
    /// to step back (no cut-back then).
    pub(super) fn deployment_breached(&mut self, service: &str, soft: bool, reason: &str) -> bool {
        let Some(active) = self.deployments.active.get_mut(service) else {
            return false;
        };
        let now = Self::plan_now(active);
        active.before_failure = Some(active.plan.clone());
        let wants = active.plan.breached(soft, now, reason);
        let step_back = matches!(wants.first(), Some(Want::Weight(_)));
        if step_back {
            self.apply_wants(service, wants, "judge");
            self.record_progress(service);
            return true;
        }
        // The judge cuts back; the plan's own cut-back is then a no-op. Its revert steps
        // (rolling) follow on the next ticks.
        self.pending_wants.insert(service.to_string(), wants);
        false
    }

    /// After a cut-back the judge made, the plan's own follow-up.
    pub(super) fn after_cut_back(&mut self, service: &str) {
        if let Some(wants) = self.pending_wants.remove(service) {
            self.apply_wants(service, wants, "judge");
            self.record_progress(service);
        }
    }

    /// An operator rolled the service back by hand during a deployment: it has failed.
    pub(super) fn manual_rollback_during_deployment(&mut self, service: &str, reason: &str) {
        let Some(active) = self.deployments.active.get_mut(service) else {
            return;
        };
        let now = Self::plan_now(active);
        active.before_failure = Some(active.plan.clone());
        let wants = active.plan.breached(false, now, reason);
        self.apply_wants(service, wants, "api");
        self.record_progress(service);
    }

    /// Why the previous version cannot take the traffic back, if it cannot: its containers
    /// and image are gone, or every stable upstream fails its probes.
    pub(super) fn previous_version_gone(&self, service: &str) -> Option<String> {
        if let Some(why) = self.docker_gone.get(service) {
            return Some(why.clone());
        }
        let table = self.table.load();
        let s = table.service(service)?;
        if s.config.probes.is_empty() || s.stable.upstreams.is_empty() {
            return None;
        }
        let all_down = s.stable.upstreams.iter().all(|u| {
            self.probing
                .upstream_health(s, crate::types::ArmRole::Stable, &u.spec)
                == crate::probes::Health::Unhealthy
        });
        all_down.then(|| {
            format!(
                "every stable upstream of '{service}' ({}) fails its probes: the previous version is gone",
                s.stable.upstreams.iter().map(|u| u.spec.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Warns that a rollback was refused (the current version keeps serving).
    pub(super) fn refuse_rollback(&mut self, service: &str, why: &str, actor: &str) {
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::RollbackRefused,
                actor.to_string(),
                format!("rollback refused, the current version keeps serving: {why}"),
            )
            .service(service.to_string())
            .deployment(self.keeper.deployment_of(service))
            .evidence(json!({ "why": why })),
        );
        tracing::warn!(service, "{}", event.message);
        self.remember(&event);
    }
}
