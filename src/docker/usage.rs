//! Resource use of canary containers: CPU and memory from the engine's stats stream, as
//! shares of each container's limits, kept as a short series per container for the
//! judge's resource rules (`cutback.max_memory` / `max_cpu`, each held for a duration).
//!
//! Only services that turn a resource rule on are sampled, and only their canary arm. The
//! container behind a canary upstream is found by its published port or network address,
//! so this works for managed, discovered and hand-run containers alike.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::ContainerStatsResponse;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::Engine;
use crate::judge::{ContainerUsage, UsageSample};
use crate::routing::TableReader;

/// Samples kept per container (one a second).
pub const MAX_SAMPLES: usize = 900;

#[derive(Debug)]
struct Track {
    container: String,
    upstream: String,
    samples: VecDeque<(Instant, f64, f64)>,
}

/// The latest resource samples of canary containers, by service.
#[derive(Clone, Debug, Default)]
pub struct UsageBoard(Arc<Mutex<HashMap<String, Vec<Track>>>>);

impl UsageBoard {
    /// A service's canary containers' series, newest sample first, ages taken at `at`.
    pub fn usage(&self, service: &str, at: Instant) -> Vec<ContainerUsage> {
        let map = self.0.lock();
        let Some(tracks) = map.get(service) else {
            return Vec::new();
        };
        tracks
            .iter()
            .map(|t| ContainerUsage {
                container: t.container.clone(),
                upstream: t.upstream.clone(),
                samples: t
                    .samples
                    .iter()
                    .rev()
                    .map(|(when, cpu, memory)| UsageSample {
                        age_ms: at.saturating_duration_since(*when).as_millis() as u64,
                        cpu: *cpu,
                        memory: *memory,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Records one sample.
    pub fn record(
        &self,
        service: &str,
        container: &str,
        upstream: &str,
        at: Instant,
        cpu: f64,
        memory: f64,
    ) {
        let mut map = self.0.lock();
        let tracks = map.entry(service.to_string()).or_default();
        let i = match tracks.iter().position(|t| t.container == container) {
            Some(i) => i,
            None => {
                tracks.push(Track {
                    container: container.to_string(),
                    upstream: upstream.to_string(),
                    samples: VecDeque::new(),
                });
                tracks.len() - 1
            }
        };
        let track = &mut tracks[i];
        track.upstream = upstream.to_string();
        track.samples.push_back((at, cpu, memory));
        while track.samples.len() > MAX_SAMPLES {
            track.samples.pop_front();
        }
    }

    /// Forgets containers no longer sampled.
    fn retain(&self, keep: &HashSet<(String, String)>) {
        let mut map = self.0.lock();
        for (service, tracks) in map.iter_mut() {
            tracks.retain(|t| keep.contains(&(service.clone(), t.container.clone())));
        }
        map.retain(|_, t| !t.is_empty());
    }
}

/// CPU (share of the container's CPU limit, or of the host's CPUs without one) and memory
/// (share of its limit, page cache left out) of one stats answer; `None` on the first
/// answer of a stream (no previous CPU reading yet).
pub fn shares(stats: &ContainerStatsResponse, cpu_limit: Option<f64>) -> Option<(f64, f64)> {
    let cpu = stats.cpu_stats.as_ref()?;
    let pre = stats.precpu_stats.as_ref()?;
    let total = cpu.cpu_usage.as_ref()?.total_usage?;
    let pre_total = pre.cpu_usage.as_ref()?.total_usage?;
    let system = cpu.system_cpu_usage?;
    let pre_system = pre.system_cpu_usage?;
    if pre_system == 0 || system <= pre_system {
        return None;
    }
    let online = cpu.online_cpus.filter(|n| *n > 0).unwrap_or(1) as f64;
    let used_cpus = total.saturating_sub(pre_total) as f64 / (system - pre_system) as f64 * online;
    let cpu_share = used_cpus / cpu_limit.unwrap_or(online).max(0.001);
    let mem = stats.memory_stats.as_ref()?;
    let usage = mem.usage? as f64;
    let cache = mem
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
                .or_else(|| s.get("cache"))
                .copied()
        })
        .unwrap_or(0) as f64;
    let limit = mem.limit.filter(|l| *l > 0)? as f64;
    Some((
        cpu_share,
        ((usage - cache).max(0.0) / limit).clamp(0.0, 1.0),
    ))
}

/// Follows one container's stats stream into the board until aborted or it ends.
async fn follow(
    engine: Engine,
    board: UsageBoard,
    service: String,
    id: String,
    name: String,
    upstream: String,
) {
    let cpu_limit = engine
        .inspect(&id)
        .await
        .ok()
        .flatten()
        .and_then(|i| i.host_config)
        .and_then(|h| h.nano_cpus)
        .filter(|n| *n > 0)
        .map(|n| n as f64 / 1e9);
    let options = bollard::query_parameters::StatsOptionsBuilder::default()
        .stream(true)
        .build();
    let mut stream = engine.client().stats(&id, Some(options)).boxed();
    while let Some(Ok(stats)) = stream.next().await {
        if let Some((cpu, memory)) = shares(&stats, cpu_limit) {
            board.record(&service, &name, &upstream, Instant::now(), cpu, memory);
        }
    }
}

/// Samples the canary containers of services with resource rules, every second, until the
/// task is dropped.
pub async fn run(engine: Engine, table: TableReader, board: UsageBoard) {
    let mut following: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut listing: Vec<bollard::models::ContainerSummary> = Vec::new();
    let mut listed_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = table.load_full();
        let targets: Vec<(String, SocketAddr, String)> = t
            .services
            .iter()
            .filter(|s| s.config.cutback.max_memory.is_some() || s.config.cutback.max_cpu.is_some())
            .filter_map(|s| s.canary.as_ref().map(|c| (s, c)))
            .flat_map(|(s, c)| {
                c.upstreams
                    .iter()
                    .map(|u| (s.name().to_string(), u.addr, u.spec.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if targets.is_empty() {
            for (_, h) in following.drain() {
                h.abort();
            }
            board.retain(&HashSet::new());
            continue;
        }
        let stale = listed_at.is_none_or(|at| at.elapsed() > Duration::from_secs(5));
        let unknown = targets
            .iter()
            .any(|(_, a, _)| crate::probes::check::container_at(&listing, *a).is_none());
        if stale || unknown {
            match engine.list(&[], false).await {
                Ok(l) => {
                    listing = l;
                    listed_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "resource sampler cannot list containers");
                    continue;
                }
            }
        }
        let mut keep = HashSet::new();
        for (service, addr, spec) in targets {
            let Some((id, name)) = crate::probes::check::container_at(&listing, addr) else {
                continue;
            };
            let key = (service.clone(), name.clone());
            keep.insert(key.clone());
            let running = following.get(&key).is_some_and(|h| !h.is_finished());
            if !running {
                let task = tokio::spawn(follow(
                    engine.clone(),
                    board.clone(),
                    service,
                    id,
                    name,
                    spec,
                ));
                following.insert(key, task);
            }
        }
        following.retain(|k, h| {
            let kept = keep.contains(k);
            if !kept {
                h.abort();
            }
            kept
        });
        board.retain(&keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    fn stats(
        total: u64,
        pre_total: u64,
        system: u64,
        pre_system: u64,
        mem: u64,
        cache: u64,
        limit: u64,
    ) -> ContainerStatsResponse {
        let cpu = |t, s| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(t),
                ..Default::default()
            }),
            system_cpu_usage: Some(s),
            online_cpus: Some(2),
            ..Default::default()
        };
        ContainerStatsResponse {
            cpu_stats: Some(cpu(total, system)),
            precpu_stats: Some(cpu(pre_total, pre_system)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(mem),
                limit: Some(limit),
                stats: Some([("inactive_file".to_string(), cache)].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn shares_follow_the_docker_cli_formulas() {
        // Half of the host's CPU time over 2 CPUs = 1 CPU; against a 0.5 CPU limit: 200 %.
        let s = stats(1_500, 1_000, 2_000, 1_000, 80 << 20, 16 << 20, 128 << 20);
        let (cpu, mem) = shares(&s, Some(0.5)).unwrap();
        assert!((cpu - 2.0).abs() < 1e-9, "{cpu}");
        assert!((mem - 0.5).abs() < 1e-9, "{mem}");
        // Without a limit: a share of the host's CPUs.
        let (cpu, _) = shares(&s, None).unwrap();
        assert!((cpu - 0.5).abs() < 1e-9, "{cpu}");
        // The first answer of a stream has no previous reading.
        assert!(shares(&stats(1_500, 0, 2_000, 0, 1, 0, 2), None).is_none());
    }

    #[test]
    fn the_board_keeps_series_newest_first() {
        let board = UsageBoard::default();
        let t0 = Instant::now();
        for i in 0..3u64 {
            board.record(
                "web",
                "web-v2-1",
                "127.0.0.1:1",
                t0 + Duration::from_secs(i),
                0.1,
                0.9 + i as f64 / 100.0,
            );
        }
        let u = board.usage("web", t0 + Duration::from_secs(2));
        assert_eq!(u[0].samples[0].age_ms, 0);
        assert_eq!(u[0].samples[2].age_ms, 2000);
        assert!((u[0].samples[0].memory - 0.92).abs() < 1e-9);
        board.retain(&HashSet::new());
        assert!(board.usage("web", t0).is_empty());
    }
}
