//! The release manager: the containers of each service that runs as containers.
//!
//! A **release** is one image run as `replicas` containers with the service's config. The
//! manager:
//! - at start ([`bootstrap`]) finds the stable release (the one history says is stable,
//!   else the newest running one, else a first one from `docker.image`) and fills the
//!   service's stable arm with its addresses;
//! - for an image deployment, records a snapshot of every running container of the stable
//!   release, creates and starts the new containers, waits until each is ready (its
//!   HEALTHCHECK healthy, or its port answering), and hands their addresses to the
//!   controller, which runs the deployment's strategy over them;
//! - keeps the stable release running: a container of it that stops is started again, one
//!   that disappears is recreated exactly from its snapshot (same name, image id, command,
//!   environment, mounts, ports, limits, labels, networks) and the stable arm follows its
//!   new address; if it cannot be (its image is gone too), the controller is told, and a
//!   rollback is refused rather than leaving no traffic path;
//! - after a promotion keeps the previous release running `keep_old_for`, then stops and
//!   removes it (its snapshot stays in history); after a rollback stops the new containers
//!   and keeps them for inspection, the newest `keep_failed` releases' worth.
//!
//! Slow work (creating, health-gating, restoring) runs in tasks that report back, so the
//! manager always answers. Every release and its snapshots go to history (`releases`).

use super::release::*;
use super::report::{NotApplied, Report, Reporter};
use super::Engine;
use crate::config::docker::DockerService;
use crate::config::Config;
use crate::events::{EventBus, EventKind, NewEvent};
use crate::store::{Record, Recorder};
use crate::types::UpstreamAddr;
use arc_swap::ArcSwap;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the controller asks of the manager.
#[derive(Debug)]
pub enum Request {
    /// Start the containers of a deployment's new release.
    Prepare {
        /// Deployment id (also the release id).
        deployment: String,
        /// Service.
        service: String,
        /// Image to run.
        image: String,
    },
    /// A deployment ended: promote its release, or stop it.
    Finished {
        /// Deployment id.
        deployment: String,
        /// Service.
        service: String,
        /// Promoted (else rolled back or aborted).
        succeeded: bool,
    },
    /// The services' Docker settings after a reload.
    Configs(HashMap<String, DockerService>),
}

#[derive(Default)]
struct Releases {
    stable: Option<Release>,
    candidate: Option<Release>,
    retiring: Vec<(Release, Instant)>,
    failed: VecDeque<Release>,
    /// Containers of the stable release seen stopped or missing, since when.
    missing: HashMap<String, Instant>,
    /// Containers being restored now.
    busy: HashSet<String>,
    /// Why the stable release cannot be restored, as last told to the controller.
    gone: Option<String>,
}

enum Done {
    Prepared {
        deployment: String,
        service: String,
        result: Result<Release, (Release, String)>,
    },
    Restored {
        service: String,
        index: usize,
        name: String,
        old: SocketAddr,
        how: &'static str,
        result: Box<Result<Managed, String>>,
    },
}

/// The release manager (see the module's documentation).
pub struct Manager {
    engine: Engine,
    reporter: Reporter,
    bus: EventBus,
    recorder: Option<Recorder>,
    configs: HashMap<String, DockerService>,
    services: HashMap<String, Releases>,
    board: ReleaseBoard,
    /// Deployments that ended while their containers were still starting.
    cancelled: HashSet<String>,
}

impl Manager {
    /// A manager over the releases [`bootstrap`] found.
    pub fn new(
        engine: Engine,
        reporter: Reporter,
        bus: EventBus,
        recorder: Option<Recorder>,
        config: &Config,
        stable: HashMap<String, Release>,
    ) -> Manager {
        let configs = config
            .services
            .iter()
            .filter_map(|s| s.docker.clone().map(|d| (s.name.clone(), d)))
            .collect();
        let mut manager = Manager {
            engine,
            reporter,
            bus,
            recorder,
            configs,
            services: HashMap::new(),
            board: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
            cancelled: HashSet::new(),
        };
        for (service, release) in stable {
            manager.record(&release);
            manager.services.entry(service).or_default().stable = Some(release);
        }
        manager.publish_board();
        manager
    }

    /// The releases of every service, for the admin API.
    pub fn board(&self) -> ReleaseBoard {
        self.board.clone()
    }

    fn record(&self, release: &Release) {
        if let Some(r) = &self.recorder {
            r.record(Record::Release(release.row()));
        }
    }

    fn publish_board(&self) {
        let mut map = BTreeMap::new();
        for (name, r) in &self.services {
            let mut list = Vec::new();
            list.extend(r.candidate.iter().map(Release::view));
            list.extend(r.stable.iter().map(Release::view));
            list.extend(r.retiring.iter().map(|(x, _)| x.view()));
            list.extend(r.failed.iter().rev().map(Release::view));
            map.insert(name.clone(), list);
        }
        self.board.store(Arc::new(map));
    }

    fn event(
        &self,
        kind: EventKind,
        service: &str,
        deployment: Option<&str>,
        message: String,
        evidence: serde_json::Value,
    ) {
        self.bus.publish(
            NewEvent::new(kind, "docker", message)
                .service(service.to_string())
                .deployment(deployment.map(str::to_string))
                .evidence(evidence),
        );
    }

    /// Runs until the controller is gone.
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = requests.recv() => match req {
                    Some(r) => self.on_request(r, &done_tx),
                    None => break,
                },
                Some(done) = done_rx.recv() => self.on_done(done).await,
                _ = tick.tick() => {
                    self.supervise(&done_tx).await;
                    self.retire_due();
                }
            }
            self.publish_board();
        }
    }

    fn on_request(&mut self, request: Request, done: &mpsc::UnboundedSender<Done>) {
        match request {
            Request::Prepare {
                deployment,
                service,
                image,
            } => {
                let Some(cfg) = self.configs.get(&service).cloned() else {
                    let reporter = self.reporter.clone();
                    tokio::spawn(async move {
                        let _ = reporter
                            .send(
                                Report::PrepareFailed {
                                    id: deployment,
                                    why: format!("'{service}' has no [services.docker] section"),
                                },
                                "docker",
                            )
                            .await;
                    });
                    return;
                };
                let (engine, done) = (self.engine.clone(), done.clone());
                tokio::spawn(async move {
                    let result = launch(&engine, &cfg, &service, &deployment, &image).await;
                    let _ = done.send(Done::Prepared {
                        deployment,
                        service,
                        result,
                    });
                });
            }
            Request::Finished {
                deployment,
                service,
                succeeded,
            } => {
                let entry = self.services.entry(service.clone()).or_default();
                let candidate = match entry.candidate.take() {
                    Some(c) if c.id == deployment => c,
                    other => {
                        // Still starting: stopped once it is up.
                        entry.candidate = other;
                        self.cancelled.insert(deployment);
                        return;
                    }
                };
                if succeeded {
                    self.promote(&service, candidate);
                } else {
                    self.fail(&service, candidate, "its deployment was rolled back");
                }
            }
            Request::Configs(configs) => self.configs = configs,
        }
    }

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::Prepared {
                deployment,
                service,
                result,
            } => {
                if self.cancelled.remove(&deployment) {
                    let release = match result {
                        Ok(r) => r,
                        Err((r, _)) => r,
                    };
                    self.fail(
                        &service,
                        release,
                        "its deployment ended while it was starting",
                    );
                    return;
                }
                match result {
                    Ok(mut release) => {
                        release.state = ReleaseState::Candidate;
                        self.record(&release);
                        let upstreams = release.upstreams();
                        let evidence = release.evidence();
                        self.services.entry(service.clone()).or_default().candidate = Some(release);
                        let answer = self
                            .reporter
                            .send(
                                Report::Prepared {
                                    id: deployment.clone(),
                                    upstreams,
                                    evidence,
                                },
                                "docker",
                            )
                            .await;
                        if let Err(e) = answer {
                            if let Some(r) = self
                                .services
                                .get_mut(&service)
                                .and_then(|s| s.candidate.take())
                            {
                                self.fail(&service, r, &format!("the controller refused it: {e}"));
                            }
                        }
                    }
                    Err((release, why)) => {
                        self.fail(&service, release, &why);
                        let _ = self
                            .reporter
                            .send(
                                Report::PrepareFailed {
                                    id: deployment,
                                    why,
                                },
                                "docker",
                            )
                            .await;
                    }
                }
            }
            Done::Restored {
                service,
                index,
                name,
                old,
                how,
                result,
            } => {
                let Some(entry) = self.services.get_mut(&service) else {
                    return;
                };
                entry.busy.remove(&name);
                match *result {
                    Ok(m) => {
                        entry.missing.remove(&name);
                        let Some(stable) = entry.stable.as_mut() else {
                            return;
                        };
                        let before = stable
                            .containers
                            .get(index)
                            .map(|c| c.snapshot.essentials());
                        let after = m.snapshot.essentials();
                        let new = m.addr;
                        if let Some(slot) = stable.containers.get_mut(index) {
                            *slot = m;
                        }
                        let release = stable.clone();
                        self.record(&release);
                        let moved = vec![(
                            UpstreamAddr {
                                spec: old.to_string(),
                                addr: old,
                            },
                            UpstreamAddr {
                                spec: new.to_string(),
                                addr: new,
                            },
                        )];
                        let why = format!("container {name} of the stable release {how}");
                        let evidence = json!({
                            "container": name,
                            "release": release.id,
                            "how": how,
                            "same_config": before.as_ref() == Some(&after),
                            "config": after,
                        });
                        match self
                            .reporter
                            .send(
                                Report::StableMoved {
                                    service: service.clone(),
                                    moved,
                                    why,
                                    evidence,
                                },
                                "docker",
                            )
                            .await
                        {
                            Ok(_) | Err(NotApplied::Stopped) => {}
                            Err(e) => {
                                tracing::warn!(service = %service, error = %e, "restored container not routed")
                            }
                        }
                    }
                    Err(e) => {
                        // Try again after another settle period.
                        entry.missing.insert(name.clone(), Instant::now());
                        tracing::warn!(service = %service, container = %name, error = %e, "cannot restore a container of the stable release");
                    }
                }
            }
        }
    }

    fn promote(&mut self, service: &str, mut release: Release) {
        let keep = self
            .configs
            .get(service)
            .map(|c| c.keep_old_for)
            .unwrap_or_default();
        release.state = ReleaseState::Stable;
        self.record(&release);
        let entry = self.services.entry(service.to_string()).or_default();
        entry.missing.clear();
        if let Some(mut old) = entry.stable.replace(release) {
            old.state = ReleaseState::Retiring;
            self.record(&old);
            self.services
                .entry(service.to_string())
                .or_default()
                .retiring
                .push((old, Instant::now() + keep));
        }
        self.retire_due();
    }

    /// Stops the previous releases whose time is up, and removes their containers.
    fn retire_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (service, entry) in self.services.iter_mut() {
            let (ready, keep): (Vec<_>, Vec<_>) =
                entry.retiring.drain(..).partition(|(_, at)| *at <= now);
            entry.retiring = keep;
            due.extend(ready.into_iter().map(|(r, _)| (service.clone(), r)));
        }
        for (service, mut release) in due {
            release.state = ReleaseState::Retired;
            self.record(&release);
            self.event(
                EventKind::ReleaseStopped,
                &service,
                None,
                format!(
                    "release {} ({}) retired: its containers are stopped and removed; its snapshot stays in history",
                    release.id, release.image
                ),
                release.evidence(),
            );
            let engine = self.engine.clone();
            tokio::spawn(async move {
                let each = release.containers.iter().map(|m| {
                    let engine = engine.clone();
                    async move {
                        let _ = engine.stop(&m.snapshot.id, STOP_GRACE).await;
                        if let Err(e) = engine.remove(&m.snapshot.id).await {
                            tracing::warn!(container = %m.snapshot.name, error = %e, "cannot remove a retired container");
                        }
                    }
                });
                futures_util::future::join_all(each).await;
            });
        }
    }

    /// Stops a failed release's containers (kept for inspection) and removes the oldest
    /// failed releases beyond `keep_failed`.
    fn fail(&mut self, service: &str, mut release: Release, why: &str) {
        release.state = ReleaseState::Failed;
        self.record(&release);
        self.event(
            EventKind::ReleaseStopped,
            service,
            Some(&release.id),
            format!(
                "release {} ({}) stopped and kept for inspection: {why}",
                release.id, release.image
            ),
            release.evidence(),
        );
        let keep = self
            .configs
            .get(service)
            .map(|c| c.keep_failed)
            .unwrap_or(0);
        let entry = self.services.entry(service.to_string()).or_default();
        entry.failed.push_back(release.clone());
        let mut drop_list = Vec::new();
        while entry.failed.len() > keep {
            if let Some(old) = entry.failed.pop_front() {
                drop_list.push(old);
            }
        }
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let each = release.containers.iter().map(|m| {
                let engine = engine.clone();
                async move {
                    if let Err(e) = engine.stop(&m.snapshot.id, STOP_GRACE).await {
                        tracing::warn!(container = %m.snapshot.name, error = %e, "cannot stop a failed container");
                    }
                }
            });
            futures_util::future::join_all(each).await;
            for old in drop_list {
                for m in &old.containers {
                    let _ = engine.remove(&m.snapshot.id).await;
                }
            }
        });
    }

    /// Keeps the stable releases running: restarts stopped containers, recreates missing
    /// ones from their snapshots, and tells the controller when a release cannot be
    /// restored at all.
    async fn supervise(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for service in names {
            let Some(cfg) = self.configs.get(&service).cloned() else {
                continue;
            };
            let Some(stable) = self.services.get(&service).and_then(|s| s.stable.clone()) else {
                continue;
            };
            let mut running = 0;
            let mut lost_image = None;
            for (index, m) in stable.containers.iter().enumerate() {
                let name = m.snapshot.name.clone();
                let Some(entry) = self.services.get_mut(&service) else {
                    // Forgotten meanwhile (a reload removed it): nothing left to keep.
                    break;
                };
                if entry.busy.contains(&name) {
                    continue;
                }
                let state = match self.engine.inspect(&name).await {
                    Ok(Some(info)) => Some(info.state.and_then(|s| s.running) == Some(true)),
                    Ok(None) => None,
                    // The engine is not answering: nothing to conclude.
                    Err(_) => return,
                };
                let Some(entry) = self.services.get_mut(&service) else {
                    // Forgotten meanwhile (a reload removed it): nothing left to keep.
                    break;
                };
                if state == Some(true) {
                    entry.missing.remove(&name);
                    running += 1;
                    continue;
                }
                let since = *entry
                    .missing
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() < SETTLE {
                    continue;
                }
                if state.is_none() {
                    match self.engine.image_id(&m.snapshot.image_id).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            lost_image = Some(format!(
                                "container {name} is gone and its image {} ({}) is no longer on this Docker engine",
                                m.snapshot.image, m.snapshot.image_id
                            ));
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
                let Some(entry) = self.services.get_mut(&service) else {
                    // Forgotten meanwhile (a reload removed it): nothing left to keep.
                    break;
                };
                entry.busy.insert(name.clone());
                let (engine, cfg, snapshot, done) = (
                    self.engine.clone(),
                    cfg.clone(),
                    m.snapshot.clone(),
                    done.clone(),
                );
                let (old, service2) = (m.addr, service.clone());
                tokio::spawn(async move {
                    let (how, result) = match state {
                        Some(false) => (
                            "was stopped: started again",
                            restart(&engine, &snapshot.name, &cfg).await,
                        ),
                        _ => (
                            "was gone: recreated from its snapshot",
                            recreate(&engine, &snapshot, &cfg).await,
                        ),
                    };
                    let _ = done.send(Done::Restored {
                        service: service2,
                        index,
                        name: snapshot.name.clone(),
                        old,
                        how,
                        result: Box::new(result),
                    });
                });
            }
            // Gone: nothing of it runs and it cannot be recreated.
            let gone = if running == 0 { lost_image } else { None };
            let Some(entry) = self.services.get_mut(&service) else {
                continue;
            };
            if gone != entry.gone && (gone.is_some() || entry.busy.is_empty()) {
                entry.gone = gone.clone();
                let answer = self
                    .reporter
                    .send(
                        Report::ReleaseGone {
                            service: service.clone(),
                            why: gone,
                        },
                        "docker",
                    )
                    .await;
                if let Err(e) = answer {
                    tracing::debug!(error = %e, "release state not delivered");
                }
            }
        }
    }
}
