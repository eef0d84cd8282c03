//! The controller's probes: one task per (service, probe, upstream) of the serving table,
//! the state of each, and what they mean for routing.
//!
//! Tasks follow the table: a new canary's upstreams get probes (after their initial delay),
//! removed upstreams lose theirs. Results come back as observations; the states apply the
//! thresholds; [`Probing::apply`] takes stable upstreams that fail out of their arm and
//! [`Probing::canary_failures`] hands failing canary upstreams to the judge.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::judge::ProbeFailure;
use crate::probes::{
    combine, Checker, Health, Observation, ProbeKey, ProbePolicy, ProbeSpec, ProbeState, Target,
};
use crate::routing::{Arm, RoutingTable, Service};
use crate::types::ArmRole;

/// Observations that may wait for the controller.
pub const OBSERVATION_QUEUE: usize = 1024;

struct Task {
    spec: Arc<ProbeSpec>,
    handle: JoinHandle<()>,
}

/// A change of a target's health.
#[derive(Debug, Clone)]
pub struct HealthChange {
    /// Which probe and target.
    pub key: ProbeKey,
    /// The health before.
    pub from: Health,
    /// The new health.
    pub health: Health,
}

/// One probe's state on one target, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    /// Probe name.
    pub probe: String,
    /// `http`, `tcp`, `script`, `docker`.
    pub kind: &'static str,
    /// Arm of the target.
    pub arm: ArmRole,
    /// The target.
    pub upstream: String,
    /// The probe's policy.
    pub policy: ProbePolicy,
    /// State and latest results.
    #[serde(flatten)]
    pub state: ProbeState,
}

/// All probe tasks and states of a gate.
pub struct Probing {
    checker: Arc<dyn Checker>,
    tx: mpsc::Sender<Observation>,
    tasks: HashMap<ProbeKey, Task>,
    states: HashMap<ProbeKey, ProbeState>,
}

fn key(service: &Service, probe: &ProbeSpec, role: ArmRole, upstream: &str) -> ProbeKey {
    ProbeKey {
        service: service.name().to_string(),
        probe: probe.name.clone(),
        role,
        upstream: upstream.to_string(),
        generation: if role == ArmRole::Canary {
            service.generation
        } else {
            0
        },
    }
}

fn arms(service: &Service) -> impl Iterator<Item = (ArmRole, &Arm)> {
    [Some(&service.stable), service.canary.as_ref()]
        .into_iter()
        .flatten()
        .map(|a| (a.role, a))
}

impl Probing {
    /// A manager running checks with `checker`; returns the receiver of observations.
    pub fn new(checker: Arc<dyn Checker>) -> (Probing, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(OBSERVATION_QUEUE);
        (
            Probing {
                checker,
                tx,
                tasks: HashMap::new(),
                states: HashMap::new(),
            },
            rx,
        )
    }

    /// Starts the probes the table needs and stops the others. Must run inside a runtime.
    pub fn reconcile(&mut self, table: &RoutingTable) {
        let mut wanted: HashSet<ProbeKey> = HashSet::new();
        for service in &table.services {
            for probe in &service.config.probes {
                for (role, arm) in arms(service) {
                    for upstream in arm.upstreams.iter() {
                        let k = key(service, probe, role, &upstream.spec);
                        wanted.insert(k.clone());
                        let current = self.tasks.get(&k).map(|t| &*t.spec == probe);
                        if current == Some(true) {
                            continue;
                        }
                        if let Some(old) = self.tasks.remove(&k) {
                            old.handle.abort();
                            self.states.remove(&k);
                        }
                        let spec = Arc::new(probe.clone());
                        let target = Target {
                            service: service.name().to_string(),
                            role,
                            upstream: upstream.clone(),
                        };
                        let handle = tokio::spawn(crate::probes::run(
                            k.clone(),
                            spec.clone(),
                            target,
                            self.checker.clone(),
                            self.tx.clone(),
                        ));
                        self.states
                            .insert(k.clone(), ProbeState::new(crate::time::now_ms()));
                        self.tasks.insert(k, Task { spec, handle });
                    }
                }
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

    /// The policy of a running probe.
    pub fn spec(&self, key: &ProbeKey) -> Option<&Arc<ProbeSpec>> {
        self.tasks.get(key).map(|t| &t.spec)
    }

    /// Applies a result; returns the target's new health when it changed. Results of
    /// probes no longer wanted (a race with a reconcile) are ignored.
    pub fn observe(&mut self, obs: &Observation) -> Option<HealthChange> {
        let policy = self.tasks.get(&obs.key)?.spec.policy.clone();
        let state = self.states.get_mut(&obs.key)?;
        let from = state.health;
        state
            .observe(&obs.outcome, obs.at_ms, &policy)
            .map(|health| HealthChange {
                key: obs.key.clone(),
                from,
                health,
            })
    }

    /// An upstream's health: its probes combined per the service's `probe_combine`.
    pub fn upstream_health(&self, service: &Service, role: ArmRole, upstream: &str) -> Health {
        combine(
            service.config.probes.iter().map(|p| {
                self.states
                    .get(&key(service, p, role, upstream))
                    .map(|s| s.health)
                    .unwrap_or(Health::Unknown)
            }),
            service.config.probe_combine,
        )
    }

    /// The service with each arm's failing upstreams taken out (unchanged arms shared).
    pub fn apply(&self, service: &Service) -> Service {
        if service.config.probes.is_empty() {
            return service.clone();
        }
        let mark = |arm: &Arm| {
            let down: Vec<bool> = arm
                .upstreams
                .iter()
                .map(|u| self.upstream_health(service, arm.role, &u.spec) == Health::Unhealthy)
                .collect();
            if down.as_slice() == &*arm.down {
                arm.clone()
            } else {
                arm.with_down(down)
            }
        };
        Service {
            stable: mark(&service.stable),
            canary: service.canary.as_ref().map(mark),
            ..service.clone()
        }
    }

    /// Canary upstreams failing by policy (for the judge), and the probes failing on every
    /// stable upstream (a shared cause).
    pub fn canary_failures(&self, service: &Service) -> (Vec<ProbeFailure>, Vec<String>) {
        let Some(canary) = &service.canary else {
            return (Vec::new(), Vec::new());
        };
        let mut failing = Vec::new();
        for u in canary.upstreams.iter() {
            if self.upstream_health(service, ArmRole::Canary, &u.spec) != Health::Unhealthy {
                continue;
            }
            for p in &service.config.probes {
                if let Some(s) = self.states.get(&key(service, p, ArmRole::Canary, &u.spec)) {
                    if s.health == Health::Unhealthy {
                        failing.push(ProbeFailure {
                            probe: p.name.clone(),
                            upstream: u.spec.clone(),
                            failures: s.failures,
                            since_ms: s.since_ms,
                            results: s.recent.iter().cloned().collect(),
                        });
                    }
                }
            }
        }
        let shared = service
            .config
            .probes
            .iter()
            .filter(|p| {
                !service.stable.upstreams.is_empty()
                    && service.stable.upstreams.iter().all(|u| {
                        self.states
                            .get(&key(service, p, ArmRole::Stable, &u.spec))
                            .is_some_and(|s| s.health == Health::Unhealthy)
                    })
            })
            .map(|p| p.name.clone())
            .collect();
        (failing, shared)
    }

    /// Every probe state of a service, for the API.
    pub fn views(&self, service: &Service) -> Vec<ProbeView> {
        let mut out = Vec::new();
        for p in &service.config.probes {
            for (role, arm) in arms(service) {
                for u in arm.upstreams.iter() {
                    if let Some(s) = self.states.get(&key(service, p, role, &u.spec)) {
                        out.push(ProbeView {
                            probe: p.name.clone(),
                            kind: p.kind.name(),
                            arm: role,
                            upstream: u.spec.clone(),
                            policy: p.policy.clone(),
                            state: s.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Since when every canary upstream has been healthy by its probes (`None`: not all
    /// healthy now, or no probes).
    pub fn canary_healthy_since(&self, service: &Service) -> Option<u64> {
        let canary = service.canary.as_ref()?;
        if service.config.probes.is_empty() {
            return None;
        }
        let mut since = 0;
        for u in canary.upstreams.iter() {
            for p in &service.config.probes {
                let s = self
                    .states
                    .get(&key(service, p, ArmRole::Canary, &u.spec))?;
                if s.health != Health::Healthy {
                    return None;
                }
                since = since.max(s.since_ms);
            }
        }
        Some(since)
    }

    /// Stops every probe.
    pub fn stop(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.handle.abort();
        }
    }
}

impl Drop for Probing {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::probes::{Outcome, ProbeStatus};
    use crate::rollout::initial_table;
    use std::time::Duration;

    /// Probe `good` always passes; probe `bad` fails on port 2 only.
    struct Scripted;

    #[async_trait::async_trait]
    impl Checker for Scripted {
        async fn check(&self, probe: &ProbeSpec, target: &Target) -> Outcome {
            let fail = probe.name == "bad" && target.upstream.addr.port() == 2;
            Outcome {
                status: if fail {
                    ProbeStatus::Failure
                } else {
                    ProbeStatus::Success
                },
                latency: Duration::from_millis(1),
                detail: String::new(),
            }
        }
    }

    fn config(combine: &str) -> Config {
        let probe = |name: &str| {
            format!("[[services.probes]]\nname = \"{name}\"\nkind = \"tcp\"\ninterval = \"10s\"\ninitial_delay = \"5s\"\nretry_interval = \"1s\"\nfailure_threshold = 3\n")
        };
        Config::parse(
            &format!(
                "[[services]]\nname = \"web\"\nstable = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ncanary = [\"127.0.0.1:3\"]\nprobe_combine = \"{combine}\"\n{}{}",
                probe("good"),
                probe("bad")
            ),
            "t.toml",
        )
        .unwrap()
    }

    /// Feeds the manager the observations its tasks produce for `secs` of virtual time.
    async fn run_for(
        probing: &mut Probing,
        rx: &mut mpsc::Receiver<crate::probes::Observation>,
        secs: u64,
    ) {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            tokio::select! {
                Some(obs) = rx.recv() => { probing.observe(&obs); }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_takes_out_an_upstream_that_fails_one_probe_and_any_does_not() {
        for (combine, expected) in [("all", vec![false, true]), ("any", vec![false, false])] {
            let table = initial_table(&config(combine), &Metrics::new());
            let (mut probing, mut rx) = Probing::new(Arc::new(Scripted));
            probing.reconcile(&table);
            let web = &table.services[0];
            // Initial delay 5 s: nothing known yet, nothing taken out.
            run_for(&mut probing, &mut rx, 4).await;
            assert_eq!(
                probing.upstream_health(web, ArmRole::Stable, "127.0.0.1:2"),
                Health::Unknown
            );
            // First check at 5 s, failures retried every second: the third at 7 s.
            run_for(&mut probing, &mut rx, 2).await;
            assert_ne!(
                probing.upstream_health(web, ArmRole::Stable, "127.0.0.1:2"),
                Health::Unhealthy,
                "{combine}: two failures are not three"
            );
            run_for(&mut probing, &mut rx, 2).await;
            let applied = probing.apply(web);
            assert_eq!(&*applied.stable.down, expected.as_slice(), "{combine}");
            assert!(
                probing.canary_failures(web).0.is_empty(),
                "the canary passes both probes"
            );
            assert_eq!(probing.views(web).len(), 6, "2 probes x 3 upstreams");
        }
    }
}
