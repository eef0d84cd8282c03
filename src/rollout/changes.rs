//! Operator changes through the controller: direct service commands (canary, weight,
//! promote, rollback, resume) and config reloads, each one table swap with its event.

use std::sync::Arc;

use serde_json::json;

use ops::Change;

use super::command::service_name;
use super::*;
use crate::events::{EventKind, NewEvent};
use crate::metrics::Metrics;
use crate::routing::{RoutingOptions, Service};

impl Controller {
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
        self.sustained.remove(&name);
        Ok(applied)
    }

    /// Replaces one service of the serving table through `f`, publishes, and emits the event
    /// (with both arms before and after, plus `extra`).
    pub(super) fn change(
        &mut self,
        name: &str,
        actor: &str,
        extra: serde_json::Value,
        f: impl FnOnce(&Service, &Metrics) -> Result<Change, ControlError>,
    ) -> Result<Applied, ControlError> {
        self.change_labelled(name, actor, extra, None, f)
    }

    pub(super) fn change_labelled(
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
        let event = self.bus.publish(
            NewEvent::new(kind, actor.to_string(), message)
                .service(name.to_string())
                .deployment(deployment)
                .table(change)
                .evidence(evidence),
        );
        self.remember(&event);
        Ok(Applied {
            table_version: change.to,
            event,
            reload: None,
        })
    }

    pub(super) async fn reload(&mut self, actor: &str) -> Result<Applied, ControlError> {
        let Some(path) = self.config.source.clone() else {
            return Err(ControlError::Conflict(
                "this gate was not started from a config file; nothing to reload".into(),
            ));
        };
        let new = match load_blocking(path).await {
            Ok(c) => c,
            Err(e) => {
                self.bus.publish(
                    NewEvent::new(
                        EventKind::ReloadFailed,
                        actor.to_string(),
                        "config reload refused; the current table keeps serving",
                    )
                    .evidence(json!({ "error": e.to_string(), "paths": e.paths() })),
                );
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
            self.bus.publish(
                NewEvent::new(
                    EventKind::ReloadFailed,
                    actor.to_string(),
                    format!("config reload refused; the current table keeps serving: {message}"),
                )
                .service(added.name.clone()),
            );
            return Err(ControlError::Conflict(message));
        }
        let (services, report) = ops::merge(&old, &new, &current, &self.metrics);
        for name in report.removed.iter().chain(&report.changed) {
            self.hysteresis.remove(name);
            self.sustained.remove(name);
        }
        for name in &report.removed {
            self.metrics.forget_service(name);
            self.last_decision.remove(name);
        }
        let options = Arc::new(RoutingOptions::from_config(
            &new.routing,
            new.server.idle_timeout,
        ));
        if new.listeners != self.config.listeners {
            tracing::warn!("[[listeners]] changed: listeners are bound at start; restart to apply");
        }
        if let Some(certs) = &self.certificates {
            if let Err(e) = certs.apply(&new.tls) {
                return Err(ControlError::Invalid(format!(
                    "config reload refused; the current table keeps serving: {e}"
                )));
            }
        }
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
            let _ = tx.send(crate::docker::manager::Request::Configs(configs));
        }
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::ConfigReloaded,
                actor.to_string(),
                format!(
                    "config reloaded: {} added, {} removed, {} changed",
                    report.added.len(),
                    report.removed.len(),
                    report.changed.len()
                ),
            )
            .table(change)
            .evidence(serde_json::to_value(&report).unwrap_or_default()),
        );
        // Containers found by their labels join their services again.
        self.reapply_discovery();
        Ok(Applied {
            table_version: change.to,
            event,
            reload: Some(report),
        })
    }
}
