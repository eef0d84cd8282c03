//! `[services.docker]`: a service whose versions run as containers Sluice manages, and the
//! grammar of what reaches the Docker engine (image references, container and network
//! names, labels, environment, mounts). Everything is checked here, at load, so nothing a
//! user wrote reaches the engine unchecked; nothing reaches a shell at all (the engine is
//! driven through its API, health checks are exec-form argv).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// Replicas when `replicas` is absent.
pub const DEFAULT_REPLICAS: usize = 1;
/// How long new containers get to become healthy.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the previous release keeps running after a promotion.
pub const DEFAULT_KEEP_OLD_FOR: Duration = Duration::from_secs(300);
/// Failed releases whose (stopped) containers are kept for inspection.
pub const DEFAULT_KEEP_FAILED: usize = 3;
/// Host address ports are published on when `publish_ip` is absent.
pub const DEFAULT_PUBLISH_IP: &str = "127.0.0.1";
/// How often discovery lists the engine's containers besides following its events.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// The label prefix Sluice reserves for its own labels.
pub const LABEL_PREFIX: &str = "sluice.";

/// How the gate reaches a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reach {
    /// The container port is published on `ip` with a port the engine picks.
    Published {
        /// Host address.
        ip: IpAddr,
    },
    /// The container's own address on its (first) network.
    Network,
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// An absolute host path (bind mount) or a volume name.
    pub source: String,
    /// Where it appears in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Volume {
    /// Whether the source is a host path (a bind mount) rather than a named volume.
    pub fn is_bind(&self) -> bool {
        self.source.starts_with('/')
    }

    /// The `SOURCE:TARGET[:ro]` form the engine takes.
    pub fn bind_spec(&self) -> String {
        format!(
            "{}:{}{}",
            self.source,
            self.target,
            if self.read_only { ":ro" } else { "" }
        )
    }
}

/// A container HEALTHCHECK in exec form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// The argv (no shell).
    pub command: Vec<String>,
    /// Between checks.
    #[serde(with = "crate::time::text")]
    pub interval: Duration,
    /// For one check.
    #[serde(with = "crate::time::text")]
    pub timeout: Duration,
    /// Failures before unhealthy.
    pub retries: u32,
    /// Grace period after start.
    #[serde(with = "crate::time::text")]
    pub start_period: Duration,
}

/// A restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never.
    No,
    /// Always.
    Always,
    /// Unless stopped by someone (the default).
    UnlessStopped,
    /// When it exits non-zero.
    OnFailure,
}

impl Restart {
    /// The engine's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::Always => "always",
            Restart::UnlessStopped => "unless-stopped",
            Restart::OnFailure => "on-failure",
        }
    }
}

/// A validated `[services.docker]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerService {
    /// Image of the first release (later ones come with each deployment).
    pub image: String,
    /// Container name prefix; default the service name.
    pub name: String,
    /// The port the app listens on inside the container.
    pub port: u16,
    /// How the gate reaches the containers.
    pub reach: Reach,
    /// Containers per release.
    pub replicas: usize,
    /// Command (replaces the image's CMD); `None` keeps the image's.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Mounts.
    pub volumes: Vec<Volume>,
    /// Networks (the first is the one reached with `reach = "network"`).
    pub networks: Vec<String>,
    /// Extra labels (never `sluice.*`).
    pub labels: BTreeMap<String, String>,
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// CPU limit, in CPUs.
    pub cpus: Option<f64>,
    /// Process limit.
    pub pids_limit: Option<i64>,
    /// Restart policy; default unless-stopped.
    pub restart: Restart,
    /// HEALTHCHECK override; `None` keeps the image's.
    pub healthcheck: Option<HealthCheck>,
    /// How long new containers get to become healthy.
    #[serde(with = "crate::time::text")]
    pub health_timeout: Duration,
    /// How long the previous release keeps running after a promotion.
    #[serde(with = "crate::time::text")]
    pub keep_old_for: Duration,
    /// Failed releases kept (stopped) for inspection.
    pub keep_failed: usize,
}
