//! The table operations: pure functions from the serving `Service` to the next one.
//!
//! Each returns the new service, the event kind and a readable message, or the reason it is
//! refused (nothing changes then). The controller applies them and publishes the table.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::ControlError;
use crate::config::Config;
use crate::events::EventKind;
use crate::metrics::Metrics;
use crate::routing::{Arm, RoutingTable, Service};
use crate::types::{ArmRole, ServiceState};
use crate::types::{UpstreamAddr, Weight};

/// A changed service with the event that describes the change.
pub type Change = (Service, EventKind, String);

/// A new canary (a new generation): fresh numbers, weight `weight` (default 0).
pub fn set_canary(
    old: &Service,
    upstreams: Vec<UpstreamAddr>,
    weight: Option<Weight>,
    metrics: &Metrics,
) -> Result<Change, ControlError> {
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
        canary: Some(Arm::new(ArmRole::Canary, &old.config, upstreams, metrics)),
        weight,
        state: ServiceState::Canary,
        generation: old.generation + 1,
        held_weight: Weight::ZERO,
        ..old.clone()
    };
    let message = format!("canary set to {} at {weight}", specs.join(", "));
    Ok((next, EventKind::CanarySet, message))
}

/// A new canary weight.
pub fn set_weight(old: &Service, weight: Weight) -> Result<Change, ControlError> {
    if old.canary.is_none() {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary; set one first (PUT /api/v1/services/{}/canary)",
            old.name(),
            old.name()
        )));
    }
    if old.state == ServiceState::RolledBack {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' was rolled back and is held at 0; resume it or set a new canary",
            old.name()
        )));
    }
    let next = Service {
        weight,
        state: ServiceState::Canary,
        ..old.clone()
    };
    let message = format!("canary weight {} -> {weight}", old.weight);
    Ok((next, EventKind::WeightSet, message))
}

/// The canary becomes the new stable, keeping its numbers.
pub fn promote(old: &Service, metrics: &Metrics) -> Result<Change, ControlError> {
    let Some(canary) = &old.canary else {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary to promote",
            old.name()
        )));
    };
    if old.state == ServiceState::RolledBack {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' was rolled back; resume it or set a new canary before promoting",
            old.name()
        )));
    }
    let specs: Vec<_> = canary.upstreams.iter().map(|u| u.spec.clone()).collect();
    let next = Service {
        stable: canary
            .clone()
            .into_role(ArmRole::Stable, old.name(), metrics),
        canary: None,
        weight: Weight::ZERO,
        state: ServiceState::Stable,
        held_weight: Weight::ZERO,
        ..old.clone()
    };
    let message = format!("canary promoted: stable is now {}", specs.join(", "));
    Ok((next, EventKind::Promoted, message))
}

/// Weight 0, held there (`rolled_back`) until the canary is resumed or replaced.
pub fn rollback(old: &Service, reason: &str) -> Result<Change, ControlError> {
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
        held_weight: old.weight,
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

/// Lifts a rolled-back hold: the same canary at `weight` (default: the weight it had), with
/// a fresh window so the judge starts clean.
pub fn resume(
    old: &Service,
    weight: Option<Weight>,
    metrics: &Metrics,
) -> Result<Change, ControlError> {
    let Some(canary) = &old.canary else {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary to resume",
            old.name()
        )));
    };
    if old.state != ServiceState::RolledBack {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' is not rolled back (state {})",
            old.name(),
            old.state.as_str()
        )));
    }
    let weight = weight.unwrap_or(old.held_weight);
    let next = Service {
        canary: Some(canary.renewed(&old.config, metrics)),
        weight,
        state: ServiceState::Canary,
        held_weight: Weight::ZERO,
        ..old.clone()
    };
    let message = format!("rolled-back canary resumed at {weight}");
    Ok((next, EventKind::Resumed, message))
}

/// A plan's weight change: like [`set_weight`], but also from a step-back hold.
pub fn plan_weight(old: &Service, weight: Weight) -> Result<Change, ControlError> {
    if old.canary.is_none() {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary",
            old.name()
        )));
    }
    let next = Service {
        weight,
        state: ServiceState::Canary,
        ..old.clone()
    };
    let message = format!("canary weight {} -> {weight}", old.weight);
    Ok((next, EventKind::WeightSet, message))
}

/// A rolling update's arms: the first `replaced` old instances are out of the stable arm
/// and the first `replaced` new ones in the canary arm, at `weight`. Once all are
/// replaced, the stable arm keeps every old instance (no traffic at 100 %) so a cut-back
/// has somewhere to go. The first reshape starts a new canary generation.
pub fn reshape(
    old: &Service,
    old_instances: &[UpstreamAddr],
    new_instances: &[UpstreamAddr],
    replaced: usize,
    weight: Weight,
    metrics: &Metrics,
) -> Result<Change, ControlError> {
    let n = old_instances.len();
    let replaced = replaced.min(n).min(new_instances.len());
    let stable_now: Vec<UpstreamAddr> = if replaced >= n {
        old_instances.to_vec()
    } else {
        old_instances[replaced..].to_vec()
    };
    let canary_now = new_instances[..replaced].to_vec();
    let (canary, generation) = match &old.canary {
        Some(arm) if old.state != ServiceState::Stable => {
            (arm.with_upstreams(canary_now.clone()), old.generation)
        }
        _ => (
            Arm::new(ArmRole::Canary, &old.config, canary_now.clone(), metrics),
            old.generation + 1,
        ),
    };
    let next = Service {
        stable: old.stable.with_upstreams(stable_now),
        canary: Some(canary),
        weight,
        state: ServiceState::Canary,
        generation,
        held_weight: Weight::ZERO,
        ..old.clone()
    };
    let kind = if generation != old.generation {
        EventKind::CanarySet
    } else {
        EventKind::WeightSet
    };
    let message = format!(
        "rolling: {replaced} of {n} instance(s) replaced ({}), canary at {weight}",
        canary_now
            .iter()
            .map(|u| u.spec.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((next, kind, message))
}

/// A rolling revert: old instances `out..` are back in the stable arm (the canary keeps
/// the new ones, held, for inspection).
pub fn restore_old(
    old: &Service,
    old_instances: &[UpstreamAddr],
    out: usize,
) -> Result<Change, ControlError> {
    let out = out.min(old_instances.len().saturating_sub(1));
    let back = &old_instances[out..];
    let next = Service {
        stable: old.stable.with_upstreams(back.to_vec()),
        ..old.clone()
    };
    let message = format!(
        "rolling revert: old instance {} serves again ({} of {} back)",
        back[0].spec,
        back.len(),
        old_instances.len()
    );
    Ok((next, EventKind::WeightSet, message))
}

/// Removes a held or idle canary (kept for inspection after a rollback).
pub fn clear_canary(old: &Service) -> Result<Change, ControlError> {
    let Some(canary) = &old.canary else {
        return Err(ControlError::Conflict(format!(
            "service '{}' has no canary to remove",
            old.name()
        )));
    };
    if !old.weight.is_zero() {
        return Err(ControlError::Conflict(format!(
            "the canary of '{}' still gets {} of the traffic; roll it back first",
            old.name(),
            old.weight
        )));
    }
    let specs: Vec<_> = canary.upstreams.iter().map(|u| u.spec.clone()).collect();
    let next = Service {
        canary: None,
        weight: Weight::ZERO,
        state: ServiceState::Stable,
        held_weight: Weight::ZERO,
        ..old.clone()
    };
    Ok((
        next,
        EventKind::CanaryRemoved,
        format!("canary {} removed", specs.join(", ")),
    ))
}

/// Stable upstreams at new addresses (containers of the stable release were recreated): the
/// same version, its numbers kept.
pub fn move_stable(
    old: &Service,
    moved: &[(UpstreamAddr, UpstreamAddr)],
    why: &str,
) -> Result<Change, ControlError> {
    let upstreams: Vec<UpstreamAddr> = old
        .stable
        .upstreams
        .iter()
        .map(|u| {
            moved
                .iter()
                .find(|(from, _)| from.addr == u.addr)
                .map(|(_, to)| to.clone())
                .unwrap_or_else(|| u.clone())
        })
        .collect();
    let specs: Vec<_> = upstreams.iter().map(|u| u.spec.clone()).collect();
    let next = Service {
        stable: old.stable.with_upstreams(upstreams),
        ..old.clone()
    };
    Ok((
        next,
        EventKind::ContainerRestored,
        format!("{why}; stable now {}", specs.join(", ")),
    ))
}

/// Both arms of a service as its configured upstreams plus the containers discovered for it.
/// A canary that appears is a new generation at `weight` (default 0); one whose containers
/// are all gone is removed.
pub fn with_discovered(
    old: &Service,
    stable: Vec<UpstreamAddr>,
    canary: Vec<UpstreamAddr>,
    weight: Option<Weight>,
    metrics: &Metrics,
) -> Result<Change, ControlError> {
    let list = |ups: &[UpstreamAddr]| {
        if ups.is_empty() {
            "none".to_string()
        } else {
            ups.iter()
                .map(|u| u.spec.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let message = format!(
        "discovered: stable {}, canary {}",
        list(&stable),
        list(&canary)
    );
    let stable_arm = if old.stable.same_upstreams(&stable) {
        old.stable.clone()
    } else {
        old.stable.with_upstreams(stable)
    };
    let next = match (&old.canary, canary.is_empty()) {
        (Some(c), false) => Service {
            stable: stable_arm,
            canary: Some(if c.same_upstreams(&canary) {
                c.clone()
            } else {
                c.with_upstreams(canary)
            }),
            weight: weight.unwrap_or(old.weight),
            ..old.clone()
        },
        (None, false) => Service {
            stable: stable_arm,
            canary: Some(Arm::new(ArmRole::Canary, &old.config, canary, metrics)),
            weight: weight.unwrap_or(Weight::ZERO),
            state: ServiceState::Canary,
            generation: old.generation + 1,
            held_weight: Weight::ZERO,
            ..old.clone()
        },
        (_, true) => Service {
            stable: stable_arm,
            canary: None,
            weight: Weight::ZERO,
            state: ServiceState::Stable,
            held_weight: Weight::ZERO,
            ..old.clone()
        },
    };
    Ok((next, EventKind::Discovered, message))
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

/// Applies a new config to the running services: services whose config did not change keep
/// their runtime state (canary, weight, hold); changed ones take the file's values but keep
/// the numbers of any arm whose upstreams stayed the same.
pub fn merge(
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
                let same_window = r.config.cutback.window == sc.cutback.window;
                if same_window && r.stable.same_upstreams(&sc.stable) {
                    fresh.stable = r.stable.clone();
                }
                if let (Some(rc), Some(_)) = (&r.canary, &fresh.canary) {
                    if same_window && rc.same_upstreams(&sc.canary) {
                        fresh.canary = Some(rc.clone());
                        fresh.generation = r.generation;
                        if r.state == ServiceState::RolledBack {
                            fresh.held_weight = fresh.weight;
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
    use crate::rollout::initial_table;

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

    fn web() -> (Service, Metrics) {
        let metrics = Metrics::new();
        let config = Config::parse(TWO, "t.toml").unwrap();
        let table = initial_table(&config, &metrics);
        ((*table.services[0]).clone(), metrics)
    }

    fn w(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    #[test]
    fn weight_change_keeps_the_numbers() {
        let (s, _) = web();
        let (next, kind, msg) = set_weight(&s, w(25.0)).unwrap();
        assert_eq!(kind, EventKind::WeightSet);
        assert_eq!(msg, "canary weight 10% -> 25%");
        assert!(Arc::ptr_eq(
            &next.canary.as_ref().unwrap().stats,
            &s.canary.as_ref().unwrap().stats
        ));
    }

    #[test]
    fn rollback_holds_until_resumed_or_replaced() {
        let (s, m) = web();
        let (held, kind, _) = rollback(&s, "bad").unwrap();
        assert_eq!(kind, EventKind::RolledBack);
        assert_eq!(held.state, ServiceState::RolledBack);
        assert!(held.weight.is_zero());
        assert_eq!(held.held_weight, w(10.0));
        assert!(matches!(
            set_weight(&held, w(5.0)),
            Err(ControlError::Conflict(_))
        ));
        assert!(matches!(promote(&held, &m), Err(ControlError::Conflict(_))));
        assert!(matches!(
            rollback(&held, ""),
            Err(ControlError::Conflict(_))
        ));
        let (resumed, kind, _) = resume(&held, None, &m).unwrap();
        assert_eq!(kind, EventKind::Resumed);
        assert_eq!(resumed.weight, w(10.0));
        assert_eq!(
            resumed.generation, s.generation,
            "same canary, same buckets"
        );
        assert!(!Arc::ptr_eq(
            &resumed.canary.as_ref().unwrap().stats,
            &s.canary.as_ref().unwrap().stats
        ));
        assert!(matches!(
            resume(&resumed, None, &m),
            Err(ControlError::Conflict(_))
        ));
        let up = UpstreamAddr::parse("127.0.0.1:1003").unwrap();
        let (replaced, _, _) = set_canary(&held, vec![up], Some(w(5.0)), &m).unwrap();
        assert_eq!(replaced.state, ServiceState::Canary);
        assert_eq!(replaced.generation, s.generation + 1);
    }

    #[test]
    fn promote_moves_canary_to_stable() {
        let (s, m) = web();
        let (next, _, _) = promote(&s, &m).unwrap();
        assert_eq!(next.state, ServiceState::Stable);
        assert!(next.canary.is_none());
        assert_eq!(next.stable.upstreams[0].spec, "127.0.0.1:1002");
    }

    #[test]
    fn a_canary_on_a_stable_upstream_is_refused() {
        let (s, m) = web();
        let up = UpstreamAddr::parse("127.0.0.1:1001").unwrap();
        assert!(matches!(
            set_canary(&s, vec![up], None, &m),
            Err(ControlError::Invalid(_))
        ));
        assert!(matches!(
            set_canary(&s, vec![], None, &m),
            Err(ControlError::Invalid(_))
        ));
    }

    #[test]
    fn merge_keeps_runtime_state_of_unchanged_services() {
        let metrics = Metrics::new();
        let old = Config::parse(TWO, "t.toml").unwrap();
        let table = initial_table(&old, &metrics);
        let mut services = table.services.clone();
        services[0] = Arc::new(set_weight(&services[0], w(50.0)).unwrap().0);
        let current = table.next(services, None);
        let new = Config::parse(
            &format!("{TWO}\n[[services]]\nname = \"extra\"\nhosts=[\"x.test\"]\nstable = [\"127.0.0.1:3001\"]\n")
                .replace("2001", "2002"),
            "t.toml",
        )
        .unwrap();
        let (services, report) = merge(&old, &new, &current, &metrics);
        assert_eq!(report.added, vec!["extra"]);
        assert_eq!(report.changed, vec!["api"]);
        let web = services.iter().find(|s| s.name() == "web").unwrap();
        assert_eq!(web.weight.percent(), 50.0, "runtime weight kept");
    }
}
