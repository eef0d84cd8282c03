//! What the Docker side tells the controller: a deployment's containers are up (or could
//! not be started), containers of the stable release were recreated at new addresses, the
//! stable release can no longer be restored, and containers found by their labels. The
//! controller turns each into a table change and an event, as it does for operators.

use std::sync::Arc;

use serde_json::json;

use super::plan::{Outcome, Plan};
use super::{ops, Applied, ControlError, Controller};
use crate::docker::discovery::Found;
use crate::events::{EventKind, NewEvent};
use crate::routing::Service;
use crate::types::{UpstreamAddr, Weight};

impl Controller {
    /// The service whose deployment `id` waits for its containers.
    fn preparing_service(&self, id: &str) -> Result<String, ControlError> {
        self.deployments
            .active
            .values()
            .find(|a| a.id == id && a.preparing)
            .map(|a| a.service.clone())
            .ok_or_else(|| {
                ControlError::Conflict(format!(
                    "deployment {id} is not waiting for containers (aborted, or over)"
                ))
            })
    }

    /// A deployment's containers are up: they become the new arm and the plan starts.
    pub(super) fn prepared(
        &mut self,
        id: &str,
        upstreams: Vec<UpstreamAddr>,
        evidence: serde_json::Value,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let service = self.preparing_service(id)?;
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::ReleaseReady,
                actor.to_string(),
                format!(
                    "containers of deployment {id} are ready at {}",
                    upstreams
                        .iter()
                        .map(|u| u.spec.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .service(service.clone())
            .deployment(Some(id.to_string()))
            .evidence(evidence),
        );
        self.remember(&event);
        let wants = {
            let active = self
                .deployments
                .active
                .get_mut(&service)
                .ok_or_else(|| ControlError::NotFound(format!("deployment {id}")))?;
            let (plan, wants) = Plan::start(
                active.plan.spec().clone(),
                active.plan.deadline(),
                std::time::Duration::ZERO,
            );
            active.plan = plan;
            active.new = upstreams;
            active.preparing = false;
            active.plan_origin_ms = crate::time::now_ms();
            wants
        };
        if let Err(e) = self.begin(&service, wants, actor) {
            self.finish_deployment(
                &service,
                Outcome::RolledBack,
                &format!("its containers could not be routed to: {e}"),
                actor,
            );
            return Err(e);
        }
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }

    /// A deployment's containers did not start or never became ready: it ends rolled back
    /// (nothing was routed to them).
    pub(super) fn prepare_failed(
        &mut self,
        id: &str,
        why: &str,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let service = self.preparing_service(id)?;
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::ReleaseFailed,
                actor.to_string(),
                format!("containers of deployment {id} failed: {why}"),
            )
            .service(service.clone())
            .deployment(Some(id.to_string()))
            .evidence(json!({ "why": why })),
        );
        self.remember(&event);
        self.finish_deployment(
            &service,
            Outcome::RolledBack,
            &format!("its containers failed: {why}"),
            actor,
        );
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }

    /// Containers of the stable release were recreated from their snapshots at new
    /// addresses: the stable arm (and a rolling update's list of old instances) follow.
    pub(super) fn stable_moved(
        &mut self,
        service: &str,
        moved: Vec<(UpstreamAddr, UpstreamAddr)>,
        why: &str,
        evidence: serde_json::Value,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        if let Some(active) = self.deployments.active.get_mut(service) {
            for u in active.old.iter_mut() {
                if let Some((_, to)) = moved.iter().find(|(from, _)| from.addr == u.addr) {
                    *u = to.clone();
                }
            }
        }
        self.docker_gone.remove(service);
        self.change(service, actor, json!({ "containers": evidence }), |s, _| {
            ops::move_stable(s, &moved, why)
        })
    }

    /// The stable release of `service` cannot take traffic back (`Some`), or can again.
    pub(super) fn release_gone(
        &mut self,
        service: &str,
        why: Option<String>,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let message = match &why {
            Some(w) => {
                self.docker_gone.insert(service.to_string(), w.clone());
                format!("the stable release of '{service}' cannot be restored: {w}; a rollback will be refused")
            }
            None => {
                self.docker_gone.remove(service);
                format!("the stable release of '{service}' can take traffic again")
            }
        };
        let event = self.bus.publish(
            NewEvent::new(EventKind::ReleaseMissing, actor.to_string(), message)
                .service(service.to_string())
                .deployment(self.keeper.deployment_of(service))
                .evidence(json!({ "why": why })),
        );
        tracing::warn!(service, "{}", event.message);
        self.remember(&event);
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }

    /// Containers found by their labels: the service's arms become its configured upstreams
    /// plus these; a service the config does not have is created (or removed once its last
    /// container is gone).
    pub(super) fn discovered(
        &mut self,
        found: Found,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let name = found.service.clone();
        let configured = self
            .config
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned();
        if configured.as_ref().is_some_and(|c| c.docker.is_some()) {
            return Err(ControlError::Conflict(format!(
                "'{name}' runs as containers Sluice manages ([services.docker]); labelled containers are not added to it"
            )));
        }
        let weight = match found.weight.as_deref() {
            None => None,
            Some(w) => Some(
                w.parse::<f64>()
                    .map_err(|_| format!("'{w}' is not a number"))
                    .and_then(Weight::from_percent)
                    .map_err(|m| ControlError::Invalid(format!("sluice.weight: {m}")))?,
            ),
        };
        let ups = |list: &[crate::docker::discovery::FoundContainer]| -> Vec<UpstreamAddr> {
            list.iter().map(|c| c.upstream.clone()).collect()
        };
        if found.is_empty() {
            self.discovered.remove(&name);
        } else {
            self.discovered.insert(name.clone(), found.clone());
        }
        let table = self.table.load_full();
        match (configured, table.service(&name).cloned()) {
            // A configured service: its own upstreams plus the containers.
            (Some(cfg), Some(_)) => {
                let mut stable = cfg.stable.clone();
                stable.extend(ups(&found.stable));
                let mut canary = cfg.canary.clone();
                canary.extend(ups(&found.canary));
                if self.deployments.active.contains_key(&name) {
                    // A deployment owns the canary arm: only stable follows the containers.
                    canary = table
                        .service(&name)
                        .and_then(|s| s.canary.as_ref())
                        .map(|c| c.upstreams.to_vec())
                        .unwrap_or_default();
                }
                let weight = weight.or(if found.canary.is_empty() {
                    None
                } else {
                    Some(cfg.canary_weight)
                });
                self.change(&name, actor, json!({ "found": found }), |s, m| {
                    ops::with_discovered(s, stable, canary, weight, m)
                })
            }
            (Some(_), None) => Err(ControlError::NotFound(name)),
            // A service of containers alone.
            (None, running) => {
                if found.is_empty() {
                    return match running {
                        Some(_) => self.remove_discovered_service(&name, actor),
                        None => Err(ControlError::NotFound(name)),
                    };
                }
                // Canary containers without stable ones are the service's only version.
                let (stable, canary) = if found.stable.is_empty() {
                    (ups(&found.canary), Vec::new())
                } else {
                    (ups(&found.stable), ups(&found.canary))
                };
                match running {
                    Some(_) => self.change(&name, actor, json!({ "found": found }), |s, m| {
                        ops::with_discovered(s, stable, canary, weight, m)
                    }),
                    None => self.add_discovered_service(&found, stable, canary, weight, actor),
                }
            }
        }
    }

    fn add_discovered_service(
        &mut self,
        found: &Found,
        stable: Vec<UpstreamAddr>,
        canary: Vec<UpstreamAddr>,
        weight: Option<Weight>,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let name = found.service.clone();
        let specs: Vec<String> = stable.iter().map(|u| u.spec.clone()).collect();
        let config = crate::config::discovered_service(
            &self.config,
            &name,
            &found.hosts,
            found.path_prefix.as_deref(),
            &specs,
        )
        .map_err(ControlError::Invalid)?;
        let table = self.table.load_full();
        for other in &table.services {
            let same_prefix = other.config.path_prefix == config.path_prefix;
            let clash = same_prefix
                && (other.config.hosts.is_empty() && config.hosts.is_empty()
                    || other.config.hosts.iter().any(|h| config.hosts.contains(h)));
            if clash {
                self.discovered.remove(&name);
                return Err(ControlError::Conflict(format!(
                    "labels of '{name}' route the same hosts and path prefix as service '{}'",
                    other.name()
                )));
            }
        }
        let mut service = Service::from_config(&config, &self.metrics);
        if !canary.is_empty() {
            let (with, _, _) = ops::with_discovered(
                &service,
                service.stable.upstreams.to_vec(),
                canary,
                weight,
                &self.metrics,
            )?;
            service = with;
        }
        let service = self.probing.apply(&service);
        self.keeper.follow(
            &service,
            EventKind::Discovered,
            actor,
            None,
            serde_json::Value::Null,
        );
        let mut services = table.services.clone();
        services.push(Arc::new(service));
        let change = self.publish(table.next(services, None), "discovered");
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::Discovered,
                actor.to_string(),
                format!(
                    "service '{name}' discovered from container labels: stable {}",
                    specs.join(", ")
                ),
            )
            .service(name.clone())
            .table(change)
            .evidence(json!({ "found": found })),
        );
        self.remember(&event);
        Ok(Applied {
            table_version: change.to,
            event,
            reload: None,
        })
    }

    fn remove_discovered_service(
        &mut self,
        name: &str,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        let table = self.table.load_full();
        let services: Vec<_> = table
            .services
            .iter()
            .filter(|s| s.name() != name)
            .cloned()
            .collect();
        let next = table.next(services, None);
        self.keeper.retain(&next);
        self.hysteresis.remove(name);
        self.sustained.remove(name);
        self.metrics.forget_service(name);
        let change = self.publish(next, "discovered");
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::Discovered,
                actor.to_string(),
                format!("service '{name}' removed: its last labelled container is gone"),
            )
            .service(name.to_string())
            .table(change),
        );
        self.remember(&event);
        Ok(Applied {
            table_version: change.to,
            event,
            reload: None,
        })
    }

    /// After a reload: discovered containers join their services again, and services of
    /// containers alone come back.
    pub(super) fn reapply_discovery(&mut self) {
        let found: Vec<Found> = self.discovered.values().cloned().collect();
        for f in found {
            if let Err(e) = self.discovered(f.clone(), "docker:discovery") {
                tracing::warn!(service = %f.service, error = %e, "discovered containers not re-applied after reload");
            }
        }
    }
}
