//! Probe results in the controller: recorded, turned into events when health changes, and
//! followed by the routing table at once.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::events::{EventKind, NewEvent};
use crate::routing::Arm;

impl Controller {
    /// A probe result: record it, apply it, and act when a target's health changed (take a
    /// stable upstream out of its arm or put it back; let the judge see a failing canary).
    pub(super) fn on_probe(&mut self, obs: crate::probes::Observation) {
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
        // Routing follows the stable arm's health at once; the event names the table it made.
        let next = self.probing.apply(&service);
        let moved = |a: &Arm, b: &Arm| a.down != b.down;
        let changed = moved(&service.stable, &next.stable)
            || match (&service.canary, &next.canary) {
                (Some(a), Some(b)) => moved(a, b),
                _ => false,
            };
        let mut table_change = None;
        if changed {
            if let Some(index) = table.position(service.name()) {
                let mut services = table.services.clone();
                services[index] = Arc::new(next);
                table_change = Some(self.publish(table.next(services, None), "probe"));
            }
        }
        // A first success is not news; failing, and recovering from it, are; and so is every
        // table the probes change.
        let kind = match (change.from, change.health) {
            (_, Health::Unhealthy) => Some(EventKind::ProbeFailed),
            (Health::Unhealthy, Health::Healthy) => Some(EventKind::ProbeRecovered),
            _ if table_change.is_some() && after == Health::Unhealthy => {
                Some(EventKind::ProbeFailed)
            }
            _ if table_change.is_some() => Some(EventKind::ProbeRecovered),
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
            let event = self.bus.publish(
                NewEvent::new(
                    kind,
                    format!("probe:{}", obs.key.probe),
                    format!(
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
                )
                .service(obs.key.service.clone())
                .deployment(self.keeper.deployment_of(&obs.key.service))
                .maybe_table(table_change)
                .evidence(json!({ "probe": recent, "policy": policy, "upstream_health": after })),
            );
            self.remember(&event);
        }
        self.judge_all();
    }
}
