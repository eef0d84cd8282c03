//! The routing table: one immutable, versioned value that holds every routing decision.
//!
//! The proxy loads it once per request ([`TableReader::load_full`]) and keeps that `Arc`
//! in the request context, so a request finishes on the table it started with. Only the
//! rollout controller publishes new tables (one `store`, which is the rollback). A table
//! carries, per service, the arms with their upstreams, the canary weight, the state, and
//! the handles the request path writes to (window stats, metric handles); those live in
//! `Arc`s shared between successive tables, so a weight change keeps the arm's numbers.
//!
//! Arm choice ([`Service::choose_arm`]): the tester header first, then the sticky seed.
//! Each client carries a random 64-bit seed in a cookie; its bucket for a service is
//! `hash(seed, service, canary generation) mod 100 000`, and it is on the canary when the
//! bucket is below the weight (in thousandths of a percent). A client therefore keeps its
//! arm while the weight stays, and when the weight rises only stable clients move over.
//! A new canary (new generation) draws new buckets, so the same users are not always first.

mod handle;
pub use handle::{TablePublisher, TableReader};

use crate::types::{ArmRole, ServiceState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::config::{RoutingConfig, ServiceConfig};
use crate::metrics::{ArmMetrics, Metrics};
use crate::stats::ArmStats;
use crate::types::{HostPattern, UpstreamAddr, Weight};

/// One arm: a set of upstreams of one version, chosen round robin among those its probes
/// did not take out. When the probes take out every one, the arm keeps sending to all of
/// them (panic mode): a failing health check is better than no traffic path at all.
#[derive(Debug, Clone)]
pub struct Arm {
    /// Stable or canary.
    pub role: ArmRole,
    /// The upstreams, in the order given.
    pub upstreams: Arc<[UpstreamAddr]>,
    /// Upstreams taken out by their probes (same order as `upstreams`).
    pub down: Arc<[bool]>,
    /// Indexes of the upstreams that get requests.
    serving: Arc<[usize]>,
    cursor: Arc<AtomicUsize>,
    /// The sliding window this arm's requests are recorded in.
    pub stats: Arc<ArmStats>,
    /// Pre-resolved Prometheus handles.
    pub metrics: ArmMetrics,
}

impl Arm {
    /// A fresh arm: new window (the service's `cutback.window`), new round-robin cursor.
    pub fn new(
        role: ArmRole,
        service: &ServiceConfig,
        upstreams: Vec<UpstreamAddr>,
        metrics: &Metrics,
    ) -> Arm {
        let n = upstreams.len();
        Arm {
            role,
            upstreams: upstreams.into(),
            down: vec![false; n].into(),
            serving: (0..n).collect(),
            cursor: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(ArmStats::new(service.cutback.window)),
            metrics: metrics.arm(&service.name, role.as_str()),
        }
    }

    /// The same arm with these upstreams taken out (`down[i]` for `upstreams[i]`).
    pub fn with_down(&self, down: Vec<bool>) -> Arm {
        let mut serving: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !down.get(*i).copied().unwrap_or(false))
            .collect();
        if serving.is_empty() {
            serving = (0..self.upstreams.len()).collect();
        }
        Arm {
            down: down.into(),
            serving: serving.into(),
            ..self.clone()
        }
    }

    /// Whether every upstream is down and the arm sends to them anyway.
    pub fn panic(&self) -> bool {
        !self.down.is_empty() && self.down.iter().all(|d| *d)
    }

    /// How many upstreams get requests.
    #[inline]
    pub fn serving(&self) -> usize {
        self.serving.len()
    }

    /// The same upstreams with a fresh window (a resumed canary starts clean).
    pub fn renewed(&self, service: &ServiceConfig, metrics: &Metrics) -> Arm {
        Arm::new(self.role, service, self.upstreams.to_vec(), metrics)
    }

    /// The same version (numbers, cursor, metrics) over another set of upstreams, all up
    /// (rolling updates move instances between arms).
    pub fn with_upstreams(&self, upstreams: Vec<UpstreamAddr>) -> Arm {
        let n = upstreams.len();
        Arm {
            upstreams: upstreams.into(),
            down: vec![false; n].into(),
            serving: (0..n).collect(),
            ..self.clone()
        }
    }

    /// The same upstreams and numbers serving as another role (promotion).
    pub fn into_role(self, role: ArmRole, service: &str, metrics: &Metrics) -> Arm {
        Arm {
            role,
            metrics: metrics.arm(service, role.as_str()),
            ..self
        }
    }

    /// Where a request's round robin starts.
    #[inline]
    pub fn start(&self) -> usize {
        self.cursor.fetch_add(1, Relaxed)
    }

    /// The upstream for the `attempt`-th try of a request that started at `start`.
    #[inline]
    pub fn upstream(&self, start: usize, attempt: usize) -> &UpstreamAddr {
        let i = self.serving[start.wrapping_add(attempt) % self.serving.len()];
        &self.upstreams[i]
    }

    /// Whether the two arms route to the same upstreams.
    pub fn same_upstreams(&self, other: &[UpstreamAddr]) -> bool {
        self.upstreams.len() == other.len()
            && self
                .upstreams
                .iter()
                .zip(other)
                .all(|(a, b)| a.addr == b.addr)
    }
}

/// One service in one table version.
#[derive(Debug, Clone)]
pub struct Service {
    /// The service's config (name, hosts, prefix, timeouts) as last loaded.
    pub config: Arc<ServiceConfig>,
    /// The production arm.
    pub stable: Arm,
    /// The trial arm, if any.
    pub canary: Option<Arm>,
    /// Share of new clients sent to the canary.
    pub weight: Weight,
    /// What the service is doing.
    pub state: ServiceState,
    /// Bumped whenever a new canary is set; part of the sticky hash.
    pub generation: u64,
    /// The weight a rolled-back canary had, for `resume`.
    pub held_weight: Weight,
}

/// What [`Service::choose_arm`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmChoice {
    /// The arm.
    pub role: ArmRole,
    /// A seed to hand the client in a new sticky cookie.
    pub new_seed: Option<u64>,
}

/// A 64-bit mixer (splitmix64's finaliser): good spread, a few cycles.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Buckets a seed falls into: one per 0.001 %.
pub const BUCKETS: u64 = 100 * Weight::UNITS_PER_PERCENT as u64;

impl Service {
    /// A service as its config describes it (fresh arms).
    pub fn from_config(config: &ServiceConfig, metrics: &Metrics) -> Service {
        let canary = (!config.canary.is_empty())
            .then(|| Arm::new(ArmRole::Canary, config, config.canary.clone(), metrics));
        let state = if canary.is_some() {
            ServiceState::Canary
        } else {
            ServiceState::Stable
        };
        Service {
            stable: Arm::new(ArmRole::Stable, config, config.stable.clone(), metrics),
            canary,
            weight: config.canary_weight,
            state,
            generation: 1,
            held_weight: Weight::ZERO,
            config: Arc::new(config.clone()),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The arm of a role (stable when there is no canary).
    pub fn arm(&self, role: ArmRole) -> &Arm {
        match role {
            ArmRole::Canary => self.canary.as_ref().unwrap_or(&self.stable),
            ArmRole::Stable => &self.stable,
        }
    }

    /// Whether arm choice depends on the client (a canary strictly between 0 and 100 %).
    #[inline]
    pub fn splits(&self) -> bool {
        self.canary.is_some() && !self.weight.is_zero() && self.weight < Weight::FULL
    }

    /// The bucket of a client seed for this service and canary generation.
    #[inline]
    pub fn bucket(&self, seed: u64) -> u64 {
        let salt = hash_str(self.name()) ^ self.generation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mix64(seed ^ salt) % BUCKETS
    }

    /// Chooses the arm: `forced` (the tester header) wins; then the client's sticky seed,
    /// or a new random one (returned, to be set as a cookie when `sticky`).
    #[inline]
    pub fn choose_arm(
        &self,
        forced: Option<ArmRole>,
        seed: Option<u64>,
        sticky: bool,
    ) -> ArmChoice {
        if let Some(role) = forced {
            let role = if self.canary.is_some() {
                role
            } else {
                ArmRole::Stable
            };
            return ArmChoice {
                role,
                new_seed: None,
            };
        }
        if self.canary.is_none() || self.weight.is_zero() {
            return ArmChoice {
                role: ArmRole::Stable,
                new_seed: None,
            };
        }
        if self.weight >= Weight::FULL {
            return ArmChoice {
                role: ArmRole::Canary,
                new_seed: None,
            };
        }
        let (seed, new_seed) = match seed {
            Some(s) => (s, None),
            None => {
                let s = fastrand::u64(..);
                (s, sticky.then_some(s))
            }
        };
        let role = if self.bucket(seed) < self.weight.units() as u64 {
            ArmRole::Canary
        } else {
            ArmRole::Stable
        };
        ArmChoice { role, new_seed }
    }
}

/// Arm-choice options shared by all services of a table.
#[derive(Debug, Clone)]
pub struct RoutingOptions {
    /// The tester header, when overrides are allowed.
    pub override_header: Option<HeaderName>,
    /// Whether new clients get a sticky cookie.
    pub sticky: bool,
    /// The cookie's name.
    pub cookie_name: String,
    /// `; Path=/; Max-Age=..; HttpOnly; SameSite=Lax`, ready to append.
    pub cookie_attributes: String,
    /// How long idle upstream connections stay pooled.
    pub idle_timeout: Duration,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<crate::trust::Cidr>,
    /// Clients whose tester header is honoured.
    pub override_from: Vec<crate::trust::Cidr>,
    /// The secret that lets any client use the tester header.
    pub override_token: Option<String>,
    /// Forward the tester header upstream.
    pub forward_override: bool,
}

impl RoutingOptions {
    /// From the validated `[routing]` section.
    pub fn from_config(routing: &RoutingConfig, idle_timeout: Duration) -> RoutingOptions {
        RoutingOptions {
            trusted_proxies: routing.trusted_proxies.clone(),
            override_from: routing.override_from.clone(),
            override_token: routing.override_token.clone(),
            forward_override: routing.forward_override_header,
            override_header: routing
                .override_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            sticky: routing.sticky,
            cookie_name: routing.sticky_cookie.clone(),
            cookie_attributes: format!(
                "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                routing.sticky_max_age.as_secs()
            ),
            idle_timeout,
        }
    }

    /// The client's sticky seed from its `Cookie` headers, if it has one.
    pub fn sticky_seed(&self, headers: &HeaderMap) -> Option<u64> {
        let name = self.cookie_name.as_bytes();
        for value in headers.get_all(http::header::COOKIE) {
            for pair in value.as_bytes().split(|b| *b == b';') {
                let pair = pair.trim_ascii();
                if pair.len() == name.len() + 17
                    && pair.starts_with(name)
                    && pair[name.len()] == b'='
                {
                    let hex = std::str::from_utf8(&pair[name.len() + 1..]).ok()?;
                    return u64::from_str_radix(hex, 16).ok();
                }
            }
        }
        None
    }

    /// The `Set-Cookie` value handing a client its seed.
    pub fn set_cookie(&self, seed: u64) -> String {
        format!("{}={seed:016x}{}", self.cookie_name, self.cookie_attributes)
    }
}

/// Host and path lookup, built once per table.
#[derive(Debug, Default, Clone)]
struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    /// `(".example.com", services)`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    catch_all: Vec<usize>,
}

/// Whether `path` is under `prefix` ("/api" takes "/api" and "/api/x", not "/apix").
#[inline]
fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One version of all routing state.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Increases by one with every publish.
    pub version: u64,
    /// Services in config order.
    pub services: Vec<Arc<Service>>,
    /// Arm-choice options.
    pub options: Arc<RoutingOptions>,
    index: HostIndex,
}

impl RoutingTable {
    /// A table over these services.
    pub fn new(
        version: u64,
        services: Vec<Arc<Service>>,
        options: Arc<RoutingOptions>,
    ) -> RoutingTable {
        let mut index = HostIndex::default();
        for (i, s) in services.iter().enumerate() {
            if s.config.hosts.is_empty() {
                index.catch_all.push(i);
            }
            for h in &s.config.hosts {
                match h {
                    HostPattern::Exact(name) => {
                        index.exact.entry(name.clone()).or_default().push(i)
                    }
                    HostPattern::Wildcard(suffix) => {
                        match index.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                            Some((_, v)) => v.push(i),
                            None => index.wildcard.push((suffix.clone(), vec![i])),
                        }
                    }
                }
            }
        }
        let by_prefix = |v: &mut Vec<usize>| {
            v.sort_by_key(|i| std::cmp::Reverse(services[*i].config.path_prefix.len()))
        };
        index.exact.values_mut().for_each(by_prefix);
        index.wildcard.iter_mut().for_each(|(_, v)| by_prefix(v));
        index
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        by_prefix(&mut index.catch_all);
        RoutingTable {
            version,
            services,
            options,
            index,
        }
    }

    /// The same services under the next version number with some replaced.
    pub fn next(
        &self,
        services: Vec<Arc<Service>>,
        options: Option<Arc<RoutingOptions>>,
    ) -> RoutingTable {
        RoutingTable::new(
            self.version + 1,
            services,
            options.unwrap_or_else(|| self.options.clone()),
        )
    }

    /// Index of the service named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name() == name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// The service for a request: exact host, then wildcard host, then the catch-all; within
    /// each, the longest matching path prefix. `host` may carry a port and any case.
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        let host = host_without_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let pick = |candidates: &[usize]| {
            candidates
                .iter()
                .copied()
                .find(|i| under_prefix(path, &self.services[*i].config.path_prefix))
        };
        if let Some(found) = self.index.exact.get(host).and_then(|v| pick(v)) {
            return Some(found);
        }
        for (suffix, candidates) in &self.index.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(found) = pick(candidates) {
                    return Some(found);
                }
            }
        }
        pick(&self.index.catch_all)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RoutingTable {
        let config = Config::parse(toml, "t.toml").unwrap();
        let metrics = Metrics::new();
        let services = config
            .services
            .iter()
            .map(|s| Arc::new(Service::from_config(s, &metrics)))
            .collect();
        RoutingTable::new(
            1,
            services,
            Arc::new(RoutingOptions::from_config(
                &config.routing,
                Duration::from_secs(60),
            )),
        )
    }

    const HOSTS: &str = r#"
[[services]]
name = "web"
hosts = ["web.example.com"]
stable = ["127.0.0.1:1"]
[[services]]
name = "api"
hosts = ["web.example.com"]
path_prefix = "/api"
stable = ["127.0.0.1:2"]
[[services]]
name = "wild"
hosts = ["*.example.com"]
stable = ["127.0.0.1:3"]
[[services]]
name = "rest"
stable = ["127.0.0.1:4"]
"#;

    #[test]
    fn routes_by_host_then_longest_prefix() {
        let t = table(HOSTS);
        let name = |h: &str, p: &str| t.route(h, p).map(|i| t.services[i].name().to_string());
        assert_eq!(name("web.example.com", "/").as_deref(), Some("web"));
        assert_eq!(
            name("WEB.example.com:8080", "/api/x").as_deref(),
            Some("api")
        );
        assert_eq!(name("web.example.com", "/api").as_deref(), Some("api"));
        assert_eq!(name("web.example.com", "/apix").as_deref(), Some("web"));
        assert_eq!(name("a.b.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(name("example.com", "/").as_deref(), Some("rest"));
        assert_eq!(name("", "/").as_deref(), Some("rest"));
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let t = table("[[services]]\nname=\"a\"\nhosts=[\"a.com\"]\nstable=[\"127.0.0.1:1\"]");
        assert_eq!(t.route("b.com", "/"), None);
    }

    fn canary_service(weight: f64) -> Service {
        let t = table(&format!(
            "[[services]]\nname=\"web\"\nstable=[\"127.0.0.1:1\"]\ncanary=[\"127.0.0.1:2\"]\ncanary_weight={weight:?}\n"
        ));
        (*t.services[0]).clone()
    }

    #[test]
    fn split_follows_the_weight() {
        let s = canary_service(10.0);
        let n = 100_000;
        let canary = (0..n)
            .filter(|_| s.choose_arm(None, None, true).role == ArmRole::Canary)
            .count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.01, "share {share}");
    }

    #[test]
    fn raising_the_weight_only_moves_stable_clients() {
        let low = canary_service(10.0);
        let mut high = low.clone();
        high.weight = Weight::from_percent(30.0).unwrap();
        let mut moved = 0;
        for seed in 0..20_000u64 {
            let seed = mix64(seed);
            let before = low.choose_arm(None, Some(seed), true);
            let after = high.choose_arm(None, Some(seed), true);
            assert_eq!(before.new_seed, None);
            assert_eq!(
                before,
                low.choose_arm(None, Some(seed), true),
                "same weight, same arm"
            );
            if before.role == ArmRole::Canary {
                assert_eq!(after.role, ArmRole::Canary, "a canary client went back");
            } else if after.role == ArmRole::Canary {
                moved += 1;
            }
        }
        let moved_share = moved as f64 / 20_000.0;
        assert!((moved_share - 0.20).abs() < 0.02, "moved {moved_share}");
    }

    #[test]
    fn header_override_and_edges() {
        let s = canary_service(0.0);
        assert_eq!(s.choose_arm(None, None, true).role, ArmRole::Stable);
        assert_eq!(
            s.choose_arm(Some(ArmRole::Canary), None, true).role,
            ArmRole::Canary
        );
        let full = canary_service(100.0);
        assert_eq!(full.choose_arm(None, None, true).role, ArmRole::Canary);
        assert_eq!(
            full.choose_arm(Some(ArmRole::Stable), None, true).role,
            ArmRole::Stable
        );
        let mut none = canary_service(0.0);
        none.canary = None;
        assert_eq!(
            none.choose_arm(Some(ArmRole::Canary), None, true).role,
            ArmRole::Stable
        );
    }

    #[test]
    fn new_clients_get_a_seed_only_when_sticky() {
        let s = canary_service(50.0);
        assert!(s.choose_arm(None, None, true).new_seed.is_some());
        assert!(s.choose_arm(None, None, false).new_seed.is_none());
    }

    #[test]
    fn cookie_round_trip() {
        let t = table(HOSTS);
        let opts = &t.options;
        let cookie = opts.set_cookie(0xdead_beef);
        assert!(cookie.starts_with("sluice_id=00000000deadbeef; Path=/"));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=b; sluice_id=00000000deadbeef; c=d".parse().unwrap(),
        );
        assert_eq!(opts.sticky_seed(&h), Some(0xdead_beef));
        h.insert(http::header::COOKIE, "sluice_id=zz".parse().unwrap());
        assert_eq!(opts.sticky_seed(&h), None);
    }

    #[test]
    fn down_upstreams_are_skipped_until_all_are_down() {
        let t = table(
            "[[services]]\nname=\"a\"\nstable=[\"127.0.0.1:1\",\"127.0.0.1:2\",\"127.0.0.1:3\"]",
        );
        let arm = t.services[0].stable.with_down(vec![false, true, false]);
        let ports: std::collections::HashSet<u16> =
            (0..30).map(|a| arm.upstream(0, a).addr.port()).collect();
        assert_eq!(ports, [1, 3].into_iter().collect());
        assert_eq!(arm.serving(), 2);
        assert!(!arm.panic());
        let all_down = arm.with_down(vec![true, true, true]);
        assert!(all_down.panic());
        assert_eq!(
            all_down.serving(),
            3,
            "panic mode: send to all rather than to nothing"
        );
    }

    #[test]
    fn round_robin_and_retry_walk_the_arm() {
        let t = table(
            "[[services]]\nname=\"a\"\nstable=[\"127.0.0.1:1\",\"127.0.0.1:2\",\"127.0.0.1:3\"]",
        );
        let arm = &t.services[0].stable;
        let start = arm.start();
        let ports: Vec<u16> = (0..3).map(|a| arm.upstream(start, a).addr.port()).collect();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3]);
        assert_ne!(arm.start(), start);
    }
}
