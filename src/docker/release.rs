//! Releases: one image run as `replicas` containers with the service's config; how a
//! release's containers are created and health-gated, a running one adopted, a lost one
//! recreated from its snapshot, and the stable releases found or started at boot
//! ([`bootstrap`]). The [`manager`](super::manager) keeps them running.

use super::spec::{new_container, Snapshot};
use super::{address, labels, Engine};
use crate::config::docker::DockerService;
use crate::config::Config;
use crate::store::{ReleaseRow, Store};
use crate::time::now_ms;
use crate::types::UpstreamAddr;
use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a container of the stable release may be missing or stopped before it is
/// restored (an operator in the middle of something gets a moment).
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a stopped container gets to exit.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a release is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Its containers are being created and health-gated.
    Preparing,
    /// Started and healthy: the deployment's new arm.
    Candidate,
    /// Serving as the stable arm.
    Stable,
    /// Replaced by a promotion, kept running `keep_old_for`.
    Retiring,
    /// Stopped and removed after a promotion (its snapshots stay in history).
    Retired,
    /// Rolled back or never healthy: stopped and kept for inspection.
    Failed,
}

impl ReleaseState {
    /// The name kept in history and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Preparing => "preparing",
            ReleaseState::Candidate => "candidate",
            ReleaseState::Stable => "stable",
            ReleaseState::Retiring => "retiring",
            ReleaseState::Retired => "retired",
            ReleaseState::Failed => "failed",
        }
    }
}

/// One container of a release.
#[derive(Debug, Clone)]
pub struct Managed {
    /// Its whole configuration.
    pub snapshot: Snapshot,
    /// Where the gate reaches it.
    pub addr: SocketAddr,
}

/// One image run as containers.
#[derive(Debug, Clone)]
pub struct Release {
    /// Id (the deployment's).
    pub id: String,
    /// Service.
    pub service: String,
    /// Image as asked.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// Where it is in its life.
    pub state: ReleaseState,
    /// When created (epoch ms).
    pub created_ms: u64,
    /// Its containers, in index order.
    pub containers: Vec<Managed>,
}

/// A release as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    /// Id.
    pub id: String,
    /// Image.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// State.
    pub state: ReleaseState,
    /// Created (epoch ms).
    pub created_ms: u64,
    /// Containers: name, id, address.
    pub containers: Vec<serde_json::Value>,
}

/// Releases by service, for the admin API.
pub type ReleaseBoard = Arc<ArcSwap<BTreeMap<String, Vec<ReleaseView>>>>;

impl Release {
    /// Where the gate reaches its containers.
    pub fn upstreams(&self) -> Vec<UpstreamAddr> {
        self.containers
            .iter()
            .map(|m| UpstreamAddr {
                spec: m.addr.to_string(),
                addr: m.addr,
            })
            .collect()
    }

    pub(super) fn row(&self) -> ReleaseRow {
        let snapshots: Vec<&Snapshot> = self.containers.iter().map(|m| &m.snapshot).collect();
        ReleaseRow {
            id: self.id.clone(),
            service: self.service.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            state: self.state.as_str().to_string(),
            containers: serde_json::to_string(&snapshots).unwrap_or_default(),
            created_ms: self.created_ms as i64,
            updated_ms: now_ms() as i64,
        }
    }

    /// The API's view.
    pub fn view(&self) -> ReleaseView {
        ReleaseView {
            id: self.id.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            state: self.state,
            created_ms: self.created_ms,
            containers: self
                .containers
                .iter()
                .map(|m| json!({ "name": m.snapshot.name, "id": m.snapshot.id, "addr": m.addr.to_string() }))
                .collect(),
        }
    }

    /// What an event says about it: each container and the essentials of its config.
    pub(super) fn evidence(&self) -> serde_json::Value {
        json!({
            "release": self.id,
            "image": self.image,
            "image_id": self.image_id,
            "containers": self.containers.iter().map(|m| json!({
                "name": m.snapshot.name,
                "addr": m.addr.to_string(),
                "config": m.snapshot.essentials(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Creates and starts the containers of a new release and waits until every one is ready.
/// On failure returns what was created (to be stopped and kept) and why.
pub async fn launch(
    engine: &Engine,
    cfg: &DockerService,
    service: &str,
    id: &str,
    image: &str,
) -> Result<Release, (Release, String)> {
    let mut release = Release {
        id: id.to_string(),
        service: service.to_string(),
        image: image.to_string(),
        image_id: String::new(),
        state: ReleaseState::Preparing,
        created_ms: now_ms(),
        containers: Vec::new(),
    };
    match engine.image_id(image).await {
        Ok(Some(i)) => release.image_id = i,
        Ok(None) => {
            return Err((
                release,
                format!("image {image} is not on this Docker engine: build, load or pull it first"),
            ))
        }
        Err(e) => return Err((release, e.to_string())),
    }
    let mut ids = Vec::new();
    for index in 0..cfg.replicas {
        let (name, body, extra) = new_container(cfg, service, id, index, image);
        let created = match engine.create(&name, body, &extra).await {
            Ok(c) => c,
            Err(e) => return Err((with_created(engine, release, &ids).await, e.to_string())),
        };
        ids.push(created.clone());
        if let Err(e) = engine.start(&created).await {
            return Err((with_created(engine, release, &ids).await, e.to_string()));
        }
    }
    let waits = ids
        .iter()
        .map(|c| engine.wait_ready(c, &cfg.reach, cfg.port, cfg.health_timeout));
    let ready = futures_util::future::join_all(waits).await;
    let mut failures = Vec::new();
    let mut addrs = Vec::new();
    for r in ready {
        match r {
            Ok(a) => addrs.push(a),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let release = with_created(engine, release, &ids).await;
    if !failures.is_empty() {
        return Err((release, failures.join("; ")));
    }
    let mut release = release;
    for (m, a) in release.containers.iter_mut().zip(addrs) {
        m.addr = a;
    }
    Ok(release)
}

/// The release with a snapshot of each container created so far.
pub(super) async fn with_created(engine: &Engine, mut release: Release, ids: &[String]) -> Release {
    for id in ids {
        if let Ok(Some(info)) = engine.inspect(id).await {
            if let Some(snapshot) = Snapshot::of(&info) {
                release.containers.push(Managed {
                    snapshot,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                });
            }
        }
    }
    release
}

/// Recreates a container exactly from its snapshot (removing a dead one of that name) and
/// waits until it is ready.
pub async fn recreate(
    engine: &Engine,
    snapshot: &Snapshot,
    cfg: &DockerService,
) -> Result<Managed, String> {
    match engine.image_id(&snapshot.image_id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "its image {} ({}) is no longer on this Docker engine",
                snapshot.image, snapshot.image_id
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    engine
        .remove(&snapshot.name)
        .await
        .map_err(|e| e.to_string())?;
    let (body, extra) = snapshot.create_body();
    let id = engine
        .create(&snapshot.name, body, &extra)
        .await
        .map_err(|e| e.to_string())?;
    engine.start(&id).await.map_err(|e| e.to_string())?;
    ready(engine, &id, cfg).await
}

/// Starts a stopped container again and waits until it is ready.
pub(super) async fn restart(
    engine: &Engine,
    name: &str,
    cfg: &DockerService,
) -> Result<Managed, String> {
    engine.start(name).await.map_err(|e| e.to_string())?;
    ready(engine, name, cfg).await
}

pub(super) async fn ready(
    engine: &Engine,
    container: &str,
    cfg: &DockerService,
) -> Result<Managed, String> {
    let addr = engine
        .wait_ready(container, &cfg.reach, cfg.port, cfg.health_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let info = engine
        .inspect(container)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("container {container} vanished"))?;
    let snapshot =
        Snapshot::of(&info).ok_or_else(|| format!("container {container} cannot be inspected"))?;
    Ok(Managed { snapshot, addr })
}

/// Adopts a release whose containers may be running, stopped or gone: running ones as they
/// are, stopped ones started, missing ones recreated from their snapshots.
pub(super) async fn adopt(
    engine: &Engine,
    cfg: &DockerService,
    mut release: Release,
    snapshots: Vec<Snapshot>,
) -> Result<Release, String> {
    release.containers.clear();
    for snap in snapshots {
        let m = match engine
            .inspect(&snap.name)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {
                let addr = address(&info, cfg.port, &cfg.reach).ok_or_else(|| {
                    format!("container {} has no reachable port {}", snap.name, cfg.port)
                })?;
                Managed {
                    snapshot: Snapshot::of(&info).unwrap_or(snap),
                    addr,
                }
            }
            Some(_) => restart(engine, &snap.name, cfg).await?,
            None => recreate(engine, &snap, cfg).await?,
        };
        release.containers.push(m);
    }
    if release.containers.is_empty() {
        return Err("it has no containers".into());
    }
    release.state = ReleaseState::Stable;
    Ok(release)
}

/// Finds or starts the stable release of every service with `[services.docker]` and fills
/// its stable arm with the release's addresses. Runs before the gate serves.
pub async fn bootstrap(
    engine: Engine,
    mut config: Config,
    store: Option<Arc<Store>>,
) -> Result<(Config, HashMap<String, Release>), String> {
    let mut releases = HashMap::new();
    for i in 0..config.services.len() {
        let Some(cfg) = config.services[i].docker.clone() else {
            continue;
        };
        let service = config.services[i].name.clone();
        let fail = |m: String| format!("services[{i}].docker ({service}): {m}");
        let mut found: Option<Release> = None;
        // 1. The release history says is stable.
        if let Some(store) = &store {
            match store.releases(&service, 50).await {
                Ok(rows) => {
                    if let Some(row) = rows
                        .into_iter()
                        .find(|r| r.state == ReleaseState::Stable.as_str())
                    {
                        let snapshots: Vec<Snapshot> =
                            serde_json::from_str(&row.containers).unwrap_or_default();
                        let release = Release {
                            id: row.id.clone(),
                            service: service.clone(),
                            image: row.image.clone(),
                            image_id: row.image_id.clone(),
                            state: ReleaseState::Stable,
                            created_ms: row.created_ms.max(0) as u64,
                            containers: Vec::new(),
                        };
                        match adopt(&engine, &cfg, release, snapshots).await {
                            Ok(r) => found = Some(r),
                            Err(e) => {
                                tracing::warn!(service = %service, release = %row.id, error = %e, "the stable release in history cannot be restored")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %service, error = %e, "cannot read releases from history")
                }
            }
        }
        // 2. The newest release with running containers.
        if found.is_none() {
            let list = engine
                .list(
                    &[(labels::SERVICE, &service), (labels::MANAGED, "true")],
                    true,
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut newest: Option<(i64, String)> = None;
            for c in &list {
                let running = c.state.map(|s| s.to_string()).as_deref() == Some("running");
                let Some(rel) = c.labels.as_ref().and_then(|l| l.get(labels::RELEASE)) else {
                    continue;
                };
                let created = c.created.unwrap_or(0);
                if running && newest.as_ref().is_none_or(|(t, _)| created > *t) {
                    newest = Some((created, rel.clone()));
                }
            }
            if let Some((_, rel)) = newest {
                let mut members: Vec<(usize, String)> = list
                    .iter()
                    .filter(|c| {
                        c.labels.as_ref().and_then(|l| l.get(labels::RELEASE)) == Some(&rel)
                    })
                    .filter_map(|c| {
                        let index = c
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(labels::INDEX))
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0);
                        c.id.clone().map(|id| (index, id))
                    })
                    .collect();
                members.sort();
                let mut snapshots = Vec::new();
                for (_, id) in &members {
                    if let Ok(Some(info)) = engine.inspect(id).await {
                        if let Some(s) = Snapshot::of(&info) {
                            snapshots.push(s);
                        }
                    }
                }
                let first = snapshots.first().cloned();
                let release = Release {
                    id: rel.clone(),
                    service: service.clone(),
                    image: first.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                    image_id: first.map(|s| s.image_id).unwrap_or_default(),
                    state: ReleaseState::Stable,
                    created_ms: now_ms(),
                    containers: Vec::new(),
                };
                match adopt(&engine, &cfg, release, snapshots).await {
                    Ok(r) => found = Some(r),
                    Err(e) => {
                        tracing::warn!(service = %service, release = %rel, error = %e, "running release cannot be adopted")
                    }
                }
            }
        }
        // 3. A first release of the configured image.
        let release = match found {
            Some(r) => r,
            None => {
                let id = crate::events::new_deployment_id(&service);
                match launch(&engine, &cfg, &service, &id, &cfg.image).await {
                    Ok(mut r) => {
                        r.state = ReleaseState::Stable;
                        r
                    }
                    Err((partial, why)) => {
                        for m in &partial.containers {
                            let _ = engine.stop(&m.snapshot.id, STOP_GRACE).await;
                        }
                        return Err(fail(format!(
                            "the first release of {} did not start: {why}",
                            cfg.image
                        )));
                    }
                }
            }
        };
        config.services[i].stable = release.upstreams();
        tracing::info!(service = %service, release = %release.id, image = %release.image, upstreams = ?config.services[i].stable.iter().map(|u| &u.spec).collect::<Vec<_>>(), "stable release");
        releases.insert(service, release);
    }
    Ok((config, releases))
}
