//! Pure conversions between Sluice's view of a container and the engine's.
//!
//! A new release's containers are made from the service's `[services.docker]` config and
//! the release's image ([`new_container`]). A running container is captured whole as a
//! [`Snapshot`]: the engine's own `Config` and `HostConfig` objects and its networks, plus
//! the image id; [`Snapshot::create_body`] turns it back into the same container (same
//! name, image id, command, environment, mounts, ports, limits, labels, networks), which is
//! how a previous release is restored exactly.

use std::collections::HashMap;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HealthConfig,
    HostConfig, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};

use super::labels;
use crate::config::docker::{DockerService, Reach, Restart};

/// A network a container is attached to, and its aliases there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttach {
    /// Network name.
    pub name: String,
    /// Aliases (without the engine's own short-id alias).
    pub aliases: Vec<String>,
}

/// A container's whole configuration, as the engine reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Name (without the leading slash).
    pub name: String,
    /// Id when captured.
    pub id: String,
    /// The image as asked (`app:v2`).
    pub image: String,
    /// The image id it ran (`sha256:...`): what a restore runs, even if the tag moved.
    pub image_id: String,
    /// The engine's `Config`.
    pub config: ContainerConfig,
    /// The engine's `HostConfig`.
    pub host_config: HostConfig,
    /// Networks in attach order (the primary one first).
    pub networks: Vec<NetworkAttach>,
}

impl Snapshot {
    /// Captures a container from its inspection; `None` when the engine left out what is
    /// needed to recreate it.
    pub fn of(info: &ContainerInspectResponse) -> Option<Snapshot> {
        let id = info.id.clone()?;
        let config = info.config.clone()?;
        let host_config = info.host_config.clone()?;
        let short = &id[..id.len().min(12)];
        let primary = host_config.network_mode.clone();
        let mut networks: Vec<NetworkAttach> = info
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| {
                nets.iter()
                    .map(|(name, e)| NetworkAttach {
                        name: name.clone(),
                        aliases: e
                            .aliases
                            .iter()
                            .flatten()
                            .filter(|a| a.as_str() != short && !id.starts_with(a.as_str()))
                            .cloned()
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        networks.sort_by(|a, b| {
            let first = |n: &NetworkAttach| Some(&n.name) != primary.as_ref();
            (first(a), &a.name).cmp(&(first(b), &b.name))
        });
        Some(Snapshot {
            name: super::container_name(info),
            id: id.clone(),
            image: config.image.clone().unwrap_or_default(),
            image_id: info.image.clone().unwrap_or_default(),
            config,
            host_config,
            networks,
        })
    }

    /// The body that recreates this container (running the image id), and the networks to
    /// connect after creation.
    pub fn create_body(&self) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
        let mut config = serde_json::to_value(&self.config).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut config {
            // The engine names a container's host after its id; a new container gets its own.
            let short = &self.id[..self.id.len().min(12)];
            if map.get("Hostname").and_then(|h| h.as_str()) == Some(short) {
                map.remove("Hostname");
            }
            map.insert(
                "Image".into(),
                serde_json::Value::String(self.image_id.clone()),
            );
        }
        let mut body: ContainerCreateBody = serde_json::from_value(config).unwrap_or_default();
        body.host_config = Some(self.host_config.clone());
        let endpoint = |n: &NetworkAttach| EndpointSettings {
            aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
            ..Default::default()
        };
        let mut networks = self.networks.iter();
        if let Some(first) = networks.next() {
            if is_user_network(&first.name) {
                body.networking_config = Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(first.name.clone(), endpoint(first))])),
                });
            }
        }
        let extra = networks.map(|n| (n.name.clone(), endpoint(n))).collect();
        (body, extra)
    }

    /// What a person compares to see that a restore is exact: image, command, environment,
    /// mounts, ports, limits, labels, networks.
    pub fn essentials(&self) -> serde_json::Value {
        let h = &self.host_config;
        let mut env = self.config.env.clone().unwrap_or_default();
        env.sort();
        let mut binds = h.binds.clone().unwrap_or_default();
        binds.sort();
        let labels: std::collections::BTreeMap<_, _> = self
            .config
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        serde_json::json!({
            "image_id": self.image_id,
            "entrypoint": self.config.entrypoint,
            "cmd": self.config.cmd,
            "env": env,
            "binds": binds,
            "port_bindings": h.port_bindings,
            "memory": h.memory,
            "nano_cpus": h.nano_cpus,
            "pids_limit": h.pids_limit,
            "restart": h.restart_policy.as_ref().and_then(|r| r.name).map(|n| n.to_string()),
            "labels": labels,
            "networks": self.networks,
            "healthcheck": self.config.healthcheck.as_ref().and_then(|c| c.test.clone()),
        })
    }
}

/// The engine's default networks are not named in a `NetworkingConfig`.
fn is_user_network(name: &str) -> bool {
    !matches!(name, "bridge" | "default" | "host" | "none")
}

/// The name of container `index` of release `release` of a service.
pub fn container_name(prefix: &str, release: &str, index: usize) -> String {
    format!("{prefix}-{}-{}", release_tag(release), index + 1)
}

/// The short part of a release id used in container names (`web-1a2b3c4d5e6-9f0a` ->
/// `1a2b3c4d5e6-9f0a`).
pub fn release_tag(release: &str) -> &str {
    release.split_once('-').map(|(_, t)| t).unwrap_or(release)
}

fn nanos(d: std::time::Duration) -> i64 {
    d.as_nanos().min(i64::MAX as u128) as i64
}

/// A new container of release `release` running `image`, as the service's config says:
/// returns its name, the create body and the networks to connect after creation.
pub fn new_container(
    cfg: &DockerService,
    service: &str,
    release: &str,
    index: usize,
    image: &str,
) -> (String, ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let name = container_name(&cfg.name, release, index);
    let mut container_labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    container_labels.insert(labels::SERVICE.into(), service.into());
    container_labels.insert(labels::MANAGED.into(), "true".into());
    container_labels.insert(labels::RELEASE.into(), release.into());
    container_labels.insert(labels::INDEX.into(), (index + 1).to_string());
    let port_key = format!("{}/tcp", cfg.port);
    let port_bindings = match &cfg.reach {
        Reach::Published { ip } => Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(ip.to_string()),
                host_port: Some(String::new()),
            }]),
        )])),
        Reach::Network => None,
    };
    let restart = match cfg.restart {
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
    };
    let host_config = HostConfig {
        binds: (!cfg.volumes.is_empty())
            .then(|| cfg.volumes.iter().map(|v| v.bind_spec()).collect()),
        port_bindings,
        memory: cfg.memory.map(|m| m as i64),
        nano_cpus: cfg.cpus.map(|c| (c * 1e9) as i64),
        pids_limit: cfg.pids_limit,
        restart_policy: Some(RestartPolicy {
            name: Some(restart),
            maximum_retry_count: None,
        }),
        network_mode: cfg.networks.first().cloned(),
        ..Default::default()
    };
    let healthcheck = cfg.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(
            std::iter::once("CMD".to_string())
                .chain(h.command.iter().cloned())
                .collect(),
        ),
        interval: Some(nanos(h.interval)),
        timeout: Some(nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(nanos(h.start_period)),
        start_interval: None,
    });
    // Other containers of the service find it by the service's name on its networks.
    let endpoint = EndpointSettings {
        aliases: Some(vec![service.to_string()]),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: cfg.command.clone(),
        env: (!cfg.env.is_empty())
            .then(|| cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(container_labels),
        exposed_ports: Some(vec![port_key]),
        healthcheck,
        host_config: Some(host_config),
        networking_config: cfg.networks.first().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(n.clone(), endpoint.clone())])),
        }),
        ..Default::default()
    };
    let extra = cfg
        .networks
        .iter()
        .skip(1)
        .map(|n| (n.clone(), endpoint.clone()))
        .collect();
    (name, body, extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::docker::{HealthCheck, Volume};
    use std::time::Duration;

    fn service() -> DockerService {
        DockerService {
            image: "app:v1".into(),
            name: "web".into(),
            port: 8080,
            reach: Reach::Published {
                ip: "127.0.0.1".parse().unwrap(),
            },
            replicas: 2,
            command: Some(vec!["serve".into(), "--port".into(), "8080".into()]),
            env: [("GREETING".to_string(), "hello; $(id)".to_string())].into(),
            volumes: vec![Volume {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            }],
            networks: vec!["front".into(), "back".into()],
            labels: [("team".to_string(), "web".to_string())].into(),
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(64),
            restart: Restart::UnlessStopped,
            healthcheck: Some(HealthCheck {
                command: vec!["/app".into(), "check".into()],
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                retries: 2,
                start_period: Duration::ZERO,
            }),
            health_timeout: Duration::from_secs(30),
            keep_old_for: Duration::ZERO,
            keep_failed: 3,
        }
    }

    #[test]
    fn a_new_container_follows_the_config_exactly_and_without_a_shell() {
        let (name, body, extra) = new_container(&service(), "web", "web-1a2b-3c4d", 1, "app:v2");
        assert_eq!(name, "web-1a2b-3c4d-2");
        assert_eq!(body.image.as_deref(), Some("app:v2"));
        assert_eq!(body.env, Some(vec!["GREETING=hello; $(id)".to_string()]));
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels["sluice.service"], "web");
        assert_eq!(labels["sluice.managed"], "true");
        assert_eq!(labels["sluice.release"], "web-1a2b-3c4d");
        assert_eq!(labels["team"], "web");
        let hc = body.healthcheck.as_ref().unwrap();
        assert_eq!(
            hc.test.as_ref().unwrap(),
            &vec!["CMD".to_string(), "/app".into(), "check".into()],
            "exec form, never CMD-SHELL"
        );
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.binds, Some(vec!["/srv/data:/data:ro".to_string()]));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.network_mode.as_deref(), Some("front"));
        let ports = host.port_bindings.as_ref().unwrap();
        let b = ports["8080/tcp"].as_ref().unwrap();
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port.as_deref(), Some(""));
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].0, "back");
    }

    #[test]
    fn a_snapshot_recreates_the_same_container_on_its_image_id() {
        let (_, body, _) = new_container(&service(), "web", "web-1a2b-3c4d", 0, "app:v2");
        let id = "0123456789abcdef0123456789abcdef";
        let config: ContainerConfig =
            serde_json::from_value(serde_json::to_value(&body).unwrap()).unwrap();
        let mut config = config;
        config.hostname = Some(id[..12].to_string());
        let info = ContainerInspectResponse {
            id: Some(id.into()),
            name: Some("/web-1a2b-3c4d-1".into()),
            image: Some("sha256:feed".into()),
            config: Some(config),
            host_config: body.host_config.clone(),
            network_settings: Some(bollard::models::NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "back".to_string(),
                        EndpointSettings {
                            aliases: Some(vec!["web".into(), id[..12].into()]),
                            ..Default::default()
                        },
                    ),
                    (
                        "front".to_string(),
                        EndpointSettings {
                            aliases: Some(vec!["web".into()]),
                            ..Default::default()
                        },
                    ),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let snap = Snapshot::of(&info).unwrap();
        assert_eq!(snap.name, "web-1a2b-3c4d-1");
        assert_eq!(snap.image, "app:v2");
        assert_eq!(snap.networks[0].name, "front", "the primary network first");
        assert_eq!(snap.networks[1].aliases, vec!["web".to_string()]);
        let (again, extra) = snap.create_body();
        assert_eq!(
            again.image.as_deref(),
            Some("sha256:feed"),
            "the image id, not the tag"
        );
        assert_eq!(again.hostname, None);
        assert_eq!(again.env, body.env);
        assert_eq!(again.cmd, body.cmd);
        assert_eq!(again.labels, body.labels);
        assert_eq!(again.healthcheck, body.healthcheck);
        assert_eq!(again.host_config, body.host_config);
        assert!(again
            .networking_config
            .unwrap()
            .endpoints_config
            .unwrap()
            .contains_key("front"));
        assert_eq!(extra[0].0, "back");
        // Through JSON (as the store keeps it) nothing changes.
        let stored: Snapshot =
            serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(stored, snap);
        assert_eq!(stored.essentials(), snap.essentials());
    }
}
