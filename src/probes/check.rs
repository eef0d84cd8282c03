//! The checks themselves: HTTP, TCP, script and Docker health against a real target.
//!
//! Each returns an [`Outcome`] and never panics on what it sees: a wrong status, a short
//! body, a refused connection or a hung script are results, not errors of the gate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::Docker;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::{
    truncate, Checker, DockerCheck, HttpCheck, Outcome, ProbeKind, ProbeSpec, ProbeStatus,
    ScriptCheck, Target, TcpCheck,
};

/// Largest body read for `body_contains`.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The checker the gate runs: real network, processes and Docker engine.
pub struct RealChecker {
    http: Client<HttpConnector, Empty<Bytes>>,
    docker: OnceCell<Docker>,
    /// The container last found behind each address: a stopped container no longer
    /// publishes its port, but it is still the one to ask about.
    containers: parking_lot::Mutex<std::collections::HashMap<SocketAddr, String>>,
}

impl Default for RealChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl RealChecker {
    /// A checker with its own HTTP connection pool.
    pub fn new() -> RealChecker {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        RealChecker {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            docker: OnceCell::new(),
            containers: Default::default(),
        }
    }
}

fn done(status: ProbeStatus, started: Instant, detail: impl Into<String>) -> Outcome {
    Outcome {
        status,
        latency: started.elapsed(),
        detail: truncate(&detail.into()),
    }
}

#[async_trait::async_trait]
impl Checker for RealChecker {
    async fn check(&self, probe: &ProbeSpec, target: &Target) -> Outcome {
        match &probe.kind {
            ProbeKind::Http(h) => self.http_check(h, target.upstream.addr).await,
            ProbeKind::Tcp(t) => tcp_check(t, target.upstream.addr).await,
            ProbeKind::Script(s) => script_check(s, target, probe.policy.timeout).await,
            ProbeKind::Docker(d) => self.docker_check(d, target.upstream.addr).await,
        }
    }
}

impl RealChecker {
    async fn http_check(&self, h: &HttpCheck, addr: SocketAddr) -> Outcome {
        let started = Instant::now();
        let host = h.host.clone().unwrap_or_else(|| addr.to_string());
        let mut req = Request::builder()
            .method(h.method.clone())
            .uri(format!("http://{addr}{}", h.path))
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "sluice-probe");
        for (k, v) in &h.headers {
            req = req.header(k, v);
        }
        let Ok(req) = req.body(Empty::new()) else {
            return done(ProbeStatus::Error, started, "cannot build the request");
        };
        let resp = match self.http.request(req).await {
            Ok(r) => r,
            Err(e) => {
                return done(
                    ProbeStatus::Failure,
                    started,
                    format!("request failed: {e:#}"),
                )
            }
        };
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let mut incoming = resp.into_body();
        while body.len() < BODY_LIMIT {
            match incoming.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        body.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => {
                    return done(
                        ProbeStatus::Failure,
                        started,
                        format!("HTTP {status}, body cut: {e}"),
                    )
                }
                None => break,
            }
        }
        let latency = started.elapsed();
        if !h.expect_status.contains(status) {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return done(
                ProbeStatus::Failure,
                started,
                format!(
                    "HTTP {status} (expected {}): {}",
                    h.expect_status,
                    excerpt.trim()
                ),
            );
        }
        if let Some(want) = &h.body_contains {
            if !body
                .windows(want.len().max(1))
                .any(|w| w == want.as_bytes())
            {
                return done(
                    ProbeStatus::Failure,
                    started,
                    format!("HTTP {status}, body does not contain '{want}'"),
                );
            }
        }
        if let Some(max) = h.max_response_time {
            if latency > max {
                return done(
                    ProbeStatus::Failure,
                    started,
                    format!(
                        "HTTP {status} in {} ms, slower than {}",
                        latency.as_millis(),
                        crate::time::format_duration(max)
                    ),
                );
            }
        }
        done(ProbeStatus::Success, started, format!("HTTP {status}"))
    }

    async fn docker(&self, socket: &std::path::Path) -> Result<&Docker, String> {
        self.docker
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_unix(
                    &socket.display().to_string(),
                    10,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| {
                    format!(
                        "cannot reach the Docker engine at {}: {e}",
                        socket.display()
                    )
                })?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| format!("Docker engine at {}: {e}", socket.display()))
            })
            .await
    }

    async fn docker_check(&self, d: &DockerCheck, addr: SocketAddr) -> Outcome {
        let started = Instant::now();
        let docker = match self.docker(&d.socket).await {
            Ok(c) => c,
            Err(e) => return done(ProbeStatus::Error, started, e),
        };
        let known = self.containers.lock().get(&addr).cloned();
        let container = match find_container(docker, addr).await {
            Ok(Some(id)) => {
                self.containers.lock().insert(addr, id.clone());
                id
            }
            Ok(None) => match known {
                Some(id) => id,
                None => {
                    return done(
                        ProbeStatus::Error,
                        started,
                        format!("no container publishes or listens on {addr}"),
                    )
                }
            },
            Err(e) => return done(ProbeStatus::Error, started, e),
        };
        let info = match docker
            .inspect_container(
                &container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(i) => i,
            // It was there before: it is gone, which is a failure of the target.
            Err(e) => {
                return done(
                    ProbeStatus::Failure,
                    started,
                    format!("container {container} is gone: {e}"),
                )
            }
        };
        let name = info.name.clone().unwrap_or_default();
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return done(
                ProbeStatus::Failure,
                started,
                format!(
                    "container {name} is not running ({})",
                    state
                        .status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into())
                ),
            );
        }
        let health = state.health.and_then(|h| h.status);
        use bollard::models::HealthStatusEnum as H;
        match health {
            Some(H::HEALTHY) => done(
                ProbeStatus::Success,
                started,
                format!("container {name}: healthy"),
            ),
            Some(H::UNHEALTHY) => done(
                ProbeStatus::Failure,
                started,
                format!("container {name}: unhealthy"),
            ),
            // Still starting: says nothing yet.
            Some(H::STARTING) => done(
                ProbeStatus::Error,
                started,
                format!("container {name}: health starting"),
            ),
            // No HEALTHCHECK: running is all it can say.
            _ => done(
                ProbeStatus::Success,
                started,
                format!("container {name}: running (no healthcheck)"),
            ),
        }
    }
}

/// The container behind an upstream address: one publishing that port on the host, or one
/// whose network address it is.
async fn find_container(docker: &Docker, addr: SocketAddr) -> Result<Option<String>, String> {
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("cannot list containers: {e}"))?;
    Ok(container_at(&list, addr).map(|(id, _)| id))
}

async fn tcp_check(t: &TcpCheck, addr: SocketAddr) -> Outcome {
    let started = Instant::now();
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            return done(
                ProbeStatus::Failure,
                started,
                format!("connect {addr}: {e}"),
            )
        }
    };
    if let Some(bytes) = &t.send {
        if let Err(e) = stream.write_all(bytes).await {
            return done(ProbeStatus::Failure, started, format!("send: {e}"));
        }
    }
    let Some(want) = &t.expect else {
        return done(
            ProbeStatus::Success,
            started,
            format!("connected to {addr}"),
        );
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while seen.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen
                    .windows(want.len().max(1))
                    .any(|w| w == want.as_slice())
                {
                    return done(ProbeStatus::Success, started, "expected bytes received");
                }
            }
            Err(e) => return done(ProbeStatus::Failure, started, format!("read: {e}")),
        }
    }
    done(
        ProbeStatus::Failure,
        started,
        format!(
            "answer does not contain the expected bytes: {:?}",
            String::from_utf8_lossy(&seen[..seen.len().min(200)])
        ),
    )
}

async fn script_check(s: &ScriptCheck, target: &Target, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let addr = target.upstream.addr;
    let mut cmd = tokio::process::Command::new(&s.command[0]);
    cmd.args(&s.command[1..])
        .env("SLUICE_TARGET", addr.to_string())
        .env("SLUICE_TARGET_HOST", addr.ip().to_string())
        .env("SLUICE_TARGET_PORT", addr.port().to_string())
        .env("SLUICE_SERVICE", &target.service)
        .env("SLUICE_ARM", target.role.as_str())
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a hung script and everything it started can be killed.
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return done(
                ProbeStatus::Error,
                started,
                format!("cannot run {}: {e}", s.command[0]),
            )
        }
    };
    let pid = child.id();
    // Leave a little room under the probe's own timeout to kill and report.
    let limit = timeout
        .saturating_sub(Duration::from_millis(50))
        .max(Duration::from_millis(10));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let code = out.status.code();
            let text = format!(
                "exit {}; stdout: {}; stderr: {}",
                code.map(|c| c.to_string())
                    .unwrap_or_else(|| "by signal".into()),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let status = if code == Some(s.expect_exit) {
                ProbeStatus::Success
            } else {
                ProbeStatus::Failure
            };
            done(status, started, text)
        }
        Ok(Err(e)) => done(
            ProbeStatus::Error,
            started,
            format!("waiting for the script: {e}"),
        ),
        Err(_) => {
            if let Some(pid) = pid {
                // The group id is the child's pid (process_group(0)).
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            done(
                ProbeStatus::Timeout,
                started,
                format!(
                    "killed after {} (process group {})",
                    crate::time::format_duration(limit),
                    pid.map(|p| p.to_string()).unwrap_or_default()
                ),
            )
        }
    }
}

/// The container behind an address: one publishing that port, or owning that address.
pub fn container_at(
    list: &[bollard::models::ContainerSummary],
    addr: SocketAddr,
) -> Option<(String, String)> {
    let ip = addr.ip().to_string();
    list.iter().find_map(|c| {
        let published = c.ports.iter().flatten().any(|p| {
            p.public_port == Some(addr.port())
                && (addr.ip().is_loopback()
                    || p.ip
                        .as_deref()
                        .is_none_or(|h| h == "0.0.0.0" || h == "::" || h == ip))
        });
        let on_network = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .is_some_and(|nets| {
                nets.values()
                    .any(|n| n.ip_address.as_deref() == Some(ip.as_str()))
            });
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        (published || on_network)
            .then(|| c.id.clone().map(|id| (id, name)))
            .flatten()
    })
}
