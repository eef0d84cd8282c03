//! Docker: the containers of services Sluice runs itself (`[services.docker]`), the
//! containers it discovers by their labels, and their resource use.
//!
//! - [`Engine`]: the local engine through bollard (the API, never the `docker` CLI or a
//!   shell), version negotiated at connect.
//! - [`spec`]: pure conversions: a service's config into a container to create; a running
//!   container into a [`spec::Snapshot`] (its whole configuration as the engine reports
//!   it), and a snapshot back into the same container.
//! - [`release`]: the release manager: the first release at start, a new release for each
//!   image deployment (created, started, health-gated, then handed to the controller as the
//!   new arm), the previous release kept running and recreated exactly from its snapshot if
//!   it goes missing, failed releases stopped and kept for inspection.
//! - [`discovery`]: containers labelled `sluice.service=NAME` become upstreams, following
//!   the engine's events.
//! - [`usage`]: CPU and memory of canary containers for the judge's resource rules.
//!
//! - [`report`]: what the release manager and discovery tell the controller, on a channel
//!   of their own.
//!
//! The controller stays the one writer of the routing table: everything here reports to it
//! ([`report::Reporter`]) and imports nothing of `rollout`.

pub mod discovery;
pub mod manager;
pub mod release;
pub mod report;
pub mod spec;
pub mod usage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    HealthStatusEnum, NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::config::docker::Reach;

/// Sluice's labels on containers.
pub mod labels {
    /// The service a container serves (managed and discovered containers).
    pub const SERVICE: &str = "sluice.service";
    /// `true` on containers Sluice created (discovery leaves them alone).
    pub const MANAGED: &str = "sluice.managed";
    /// The release a managed container belongs to.
    pub const RELEASE: &str = "sluice.release";
    /// A managed container's index within its release.
    pub const INDEX: &str = "sluice.index";
    /// Discovery: `stable` (default) or `canary`.
    pub const ARM: &str = "sluice.arm";
    /// Discovery: the container port to send traffic to.
    pub const PORT: &str = "sluice.port";
    /// Discovery: host names of a service the config does not have (comma separated).
    pub const HOSTS: &str = "sluice.hosts";
    /// Discovery: path prefix of such a service.
    pub const PATH_PREFIX: &str = "sluice.path_prefix";
    /// Discovery: canary weight in percent of such a service.
    pub const WEIGHT: &str = "sluice.weight";
}

/// A failure talking to the engine, as one readable sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DockerError(pub String);

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> DockerError {
    DockerError(format!("{what}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The local Docker engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to the engine on `socket` and negotiates the API version.
    pub async fn connect(socket: &Path) -> Result<Engine, DockerError> {
        let docker = Docker::connect_with_unix(
            &socket.display().to_string(),
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| {
            err(
                format!("cannot reach the Docker engine at {}", socket.display()),
                e,
            )
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| err(format!("Docker engine at {}", socket.display()), e))?;
        Ok(Engine { docker })
    }

    /// The bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// A container by name or id; `None` when there is none.
    pub async fn inspect(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(err(format!("inspect container {container}"), e)),
        }
    }

    /// The id of a local image; `None` when the engine does not have it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(err(format!("inspect image {image}"), e)),
        }
    }

    /// Containers (running, or all) carrying every `key=value` label given.
    pub async fn list(
        &self,
        labels: &[(&str, &str)],
        all: bool,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert(
            "label".into(),
            labels
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.to_string()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect(),
        );
        let options = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| err("list containers", e))
    }

    /// Creates a container named `name` from `body`, connecting it to `extra_networks` (the
    /// engine takes one network at creation); returns its id.
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
        extra_networks: &[(String, EndpointSettings)],
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| err(format!("create container {name}"), e))?;
        for (network, endpoint) in extra_networks {
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint.clone()),
            };
            if let Err(e) = self.docker.connect_network(network, request).await {
                let _ = self.remove(&created.id).await;
                return Err(err(format!("connect {name} to network {network}"), e));
            }
        }
        Ok(created.id)
    }

    /// Starts a container.
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|e| err(format!("start container {container}"), e))
    }

    /// Stops a container (kept), giving it `grace` to exit.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(300) as i32)
            .build();
        match self.docker.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(err(format!("stop container {container}"), e)),
        }
    }

    /// Removes a container (stopping it first if it runs).
    pub async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(err(format!("remove container {container}"), e)),
        }
    }

    /// The last lines a container wrote (for error messages).
    pub async fn tail(&self, container: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut out = String::new();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(2), stream.next()).await
        {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 4096 {
                break;
            }
        }
        out.trim().to_string()
    }

    /// Waits until a started container is ready: its HEALTHCHECK says healthy, or, without
    /// one, it runs and `addr` accepts a connection. Fails at once when it exits or turns
    /// unhealthy, and after `limit`.
    pub async fn wait_ready(
        &self,
        container: &str,
        reach: &Reach,
        port: u16,
        limit: Duration,
    ) -> Result<SocketAddr, DockerError> {
        let deadline = Instant::now() + limit;
        let mut last: String;
        loop {
            let info = self
                .inspect(container)
                .await?
                .ok_or_else(|| DockerError(format!("container {container} is gone")))?;
            let state = info.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                let code = state.exit_code.unwrap_or(0);
                let status = state.status.map(|s| s.to_string()).unwrap_or_default();
                if status != "created" && status != "restarting" {
                    let logs = self.tail(container, 10).await;
                    return Err(DockerError(format!(
                        "container {container} is {status} (exit code {code}){}",
                        if logs.is_empty() {
                            String::new()
                        } else {
                            format!("; its last output: {logs}")
                        }
                    )));
                }
            }
            let addr = address(&info, port, reach);
            match state.health.as_ref().and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => {
                    if let Some(a) = addr {
                        return Ok(a);
                    }
                    last = "healthy, but its port is not reachable".into();
                }
                Some(HealthStatusEnum::UNHEALTHY) => {
                    let output = state
                        .health
                        .as_ref()
                        .and_then(|h| h.log.as_ref())
                        .and_then(|l| l.last())
                        .and_then(|l| l.output.clone())
                        .unwrap_or_default();
                    return Err(DockerError(format!(
                        "container {container} is unhealthy: {}",
                        output.trim()
                    )));
                }
                Some(HealthStatusEnum::STARTING) => last = "health check starting".into(),
                _ if state.running == Some(true) => match addr {
                    Some(a) => {
                        match tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect(a),
                        )
                        .await
                        {
                            Ok(Ok(_)) => return Ok(a),
                            Ok(Err(e)) => last = format!("{a} refuses connections ({e})"),
                            Err(_) => last = format!("{a} does not accept connections"),
                        }
                    }
                    None => last = format!("port {port} is not published or reachable"),
                },
                _ => last = "starting".into(),
            }
            if Instant::now() >= deadline {
                return Err(DockerError(format!(
                    "container {container} was not ready within {}: {last}",
                    crate::time::format_duration(limit)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Where the gate reaches a container's `port`: its published host port, or its own
/// address on its first network.
pub fn address(info: &ContainerInspectResponse, port: u16, reach: &Reach) -> Option<SocketAddr> {
    let settings = info.network_settings.as_ref()?;
    match reach {
        Reach::Published { ip } => {
            let bindings = settings
                .ports
                .as_ref()?
                .get(&format!("{port}/tcp"))?
                .as_ref()?;
            let binding = bindings.iter().find(|b| {
                b.host_ip
                    .as_deref()
                    .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                    .is_none_or(|h| h.is_unspecified() || h == *ip)
            })?;
            let host_port: u16 = binding.host_port.as_deref()?.parse().ok()?;
            let host_ip = match binding
                .host_ip
                .as_deref()
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            {
                Some(h) if !h.is_unspecified() => h,
                _ if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
                _ => *ip,
            };
            Some(SocketAddr::new(host_ip, host_port))
        }
        Reach::Network => {
            let networks = settings.networks.as_ref()?;
            // The network named first in the config when known, else any with an address.
            let configured = info
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.clone())
                .and_then(|m| networks.get(&m).cloned());
            let endpoint = configured.or_else(|| {
                let mut all: Vec<_> = networks.iter().collect();
                all.sort_by(|a, b| a.0.cmp(b.0));
                all.into_iter()
                    .map(|(_, e)| e.clone())
                    .find(|e| e.ip_address.as_deref().is_some_and(|ip| !ip.is_empty()))
            })?;
            let ip: std::net::IpAddr = endpoint.ip_address.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        }
    }
}

/// A container's name without the engine's leading slash.
pub fn container_name(info: &ContainerInspectResponse) -> String {
    info.name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}
