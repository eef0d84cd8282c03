//! Active probes: HTTP, TCP, script and Docker-health checks of every upstream, their
//! policies, and how their results become an upstream's health.
//!
//! Probes run on the control plane, never on the request path: one task per (service,
//! probe, upstream) runs the check on its schedule ([`run`]) and sends each [`Outcome`] to
//! the controller. The controller keeps a [`ProbeState`] per task (consecutive successes
//! and failures against the policy's thresholds: one timeout among successes changes
//! nothing, a persistent failure does), combines a service's probes per upstream with
//! `all` (AND) or `any` (OR) ([`combine`]), takes failing stable upstreams out of their arm,
//! and gives a failing canary to the judge as a breach.

pub mod check;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::types::ArmRole;
use crate::types::UpstreamAddr;

/// How often a probe runs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How long after a target appears (start, new canary) before the first check.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(30);
/// How long a new canary's probes must stay healthy before it counts as proven.
pub const DEFAULT_MONITOR_FOR: Duration = Duration::from_secs(300);
/// Consecutive successes that make a target healthy.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// Consecutive failures that make a target unhealthy.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// How long one check may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a check is retried after a failure (at most `interval`).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Longest detail (output, body excerpt) kept with a result.
pub const DETAIL_LIMIT: usize = 1024;
/// Results kept per probe and target for the API.
pub const RECENT_RESULTS: usize = 5;

/// When a probe runs and what its results mean; every field has a `DEFAULT_*` and a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePolicy {
    /// Default [`DEFAULT_INTERVAL`].
    #[serde(with = "crate::time::text")]
    pub interval: Duration,
    /// Default [`DEFAULT_INITIAL_DELAY`].
    #[serde(with = "crate::time::text")]
    pub initial_delay: Duration,
    /// Default [`DEFAULT_TIMEOUT`].
    #[serde(with = "crate::time::text")]
    pub timeout: Duration,
    /// Default [`DEFAULT_SUCCESS_THRESHOLD`].
    pub success_threshold: u32,
    /// Default [`DEFAULT_FAILURE_THRESHOLD`].
    pub failure_threshold: u32,
    /// Default [`DEFAULT_MONITOR_FOR`].
    #[serde(with = "crate::time::text")]
    pub monitor_for: Duration,
    /// Default [`DEFAULT_RETRY_INTERVAL`].
    #[serde(with = "crate::time::text")]
    pub retry_interval: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        ProbePolicy {
            interval: DEFAULT_INTERVAL,
            initial_delay: DEFAULT_INITIAL_DELAY,
            timeout: DEFAULT_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            monitor_for: DEFAULT_MONITOR_FOR,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// Accepted status codes: single codes, classes (`2xx`) and ranges (`200-299`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    /// 200..=399 (what "it works" usually means behind a proxy).
    pub fn default_ok() -> StatusSet {
        StatusSet(vec![(200, 399)])
    }

    /// Parses one item: `200`, `"2xx"` or `"200-299"`.
    pub fn parse_item(text: &str) -> Result<(u16, u16), String> {
        let t = text.trim().to_ascii_lowercase();
        let code = |s: &str| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        let range = if let Some(class) = t.strip_suffix("xx") {
            class
                .parse::<u16>()
                .ok()
                .filter(|c| (1..=5).contains(c))
                .map(|c| (c * 100, c * 100 + 99))
        } else if let Some((a, b)) = t.split_once('-') {
            match (code(a), code(b)) {
                (Some(a), Some(b)) if a <= b => Some((a, b)),
                _ => None,
            }
        } else {
            code(&t).map(|c| (c, c))
        };
        range.ok_or_else(|| {
            format!("'{text}' is not a status code (100-599), a class (2xx) or a range (200-299)")
        })
    }

    /// Whether `status` is accepted.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An HTTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Method; default GET.
    pub method: http::Method,
    /// Path and query; default `/`.
    pub path: String,
    /// Host header; default the upstream's address.
    pub host: Option<String>,
    /// Extra headers.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Accepted statuses; default 200-399.
    pub expect_status: StatusSet,
    /// Text the body must contain.
    pub body_contains: Option<String>,
    /// Slower answers fail.
    pub max_response_time: Option<Duration>,
}

/// A TCP check: connect, optionally send bytes and wait for expected bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheck {
    /// Bytes to send after connecting.
    pub send: Option<Vec<u8>>,
    /// Bytes the answer must contain.
    pub expect: Option<Vec<u8>>,
}

/// A script check: an argv (no shell), the target passed in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCheck {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Exit code meaning healthy; default 0.
    pub expect_exit: i32,
}

/// A Docker-health check: the container's running state and HEALTHCHECK status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerCheck {
    /// The engine's socket.
    pub socket: std::path::PathBuf,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// HTTP.
    Http(HttpCheck),
    /// TCP.
    Tcp(TcpCheck),
    /// A script.
    Script(ScriptCheck),
    /// Docker health.
    Docker(DockerCheck),
}

impl ProbeKind {
    /// `http`, `tcp`, `script` or `docker`.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Http(_) => "http",
            ProbeKind::Tcp(_) => "tcp",
            ProbeKind::Script(_) => "script",
            ProbeKind::Docker(_) => "docker",
        }
    }
}

/// One configured probe of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Unique within the service.
    pub name: String,
    /// What it checks.
    pub kind: ProbeKind,
    /// When and how its results count.
    pub policy: ProbePolicy,
}

/// How a service's probes combine per upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Healthy when every probe is (AND); the default.
    #[default]
    All,
    /// Healthy when one probe is (OR).
    Any,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Healthy answer.
    Success,
    /// Wrong answer.
    Failure,
    /// No answer in time.
    Timeout,
    /// The check itself could not run (Docker unreachable, container not found): says
    /// nothing about the target, so it counts neither way.
    Error,
}

impl ProbeStatus {
    /// The label and stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Success => "success",
            ProbeStatus::Failure => "failure",
            ProbeStatus::Timeout => "timeout",
            ProbeStatus::Error => "error",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// What happened.
    pub status: ProbeStatus,
    /// How long it took.
    #[serde(rename = "latency_ms", serialize_with = "as_ms")]
    pub latency: Duration,
    /// What went wrong, or what was seen (truncated).
    pub detail: String,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Cuts text to [`DETAIL_LIMIT`] bytes on a character boundary.
pub fn truncate(text: &str) -> String {
    if text.len() <= DETAIL_LIMIT {
        return text.to_string();
    }
    let mut end = DETAIL_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A target's health as its probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not enough results yet (initial delay, or only errors).
    Unknown,
    /// Passing by policy.
    Healthy,
    /// Failing by policy.
    Unhealthy,
}

/// A result as kept for the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentResult {
    /// Epoch ms.
    pub at_ms: u64,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One probe's view of one target: thresholds applied to its results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeState {
    /// Current health.
    pub health: Health,
    /// Since when (epoch ms).
    pub since_ms: u64,
    /// Successes in a row.
    pub successes: u32,
    /// Failures (and timeouts) in a row.
    pub failures: u32,
    /// Latest results, newest last.
    pub recent: VecDeque<RecentResult>,
}

impl ProbeState {
    /// A state with no results yet.
    pub fn new(now_ms: u64) -> ProbeState {
        ProbeState {
            health: Health::Unknown,
            since_ms: now_ms,
            successes: 0,
            failures: 0,
            recent: VecDeque::with_capacity(RECENT_RESULTS),
        }
    }

    /// Applies one result; returns the new health when it changed.
    pub fn observe(
        &mut self,
        outcome: &Outcome,
        at_ms: u64,
        policy: &ProbePolicy,
    ) -> Option<Health> {
        if self.recent.len() == RECENT_RESULTS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentResult {
            at_ms,
            outcome: outcome.clone(),
        });
        let next = match outcome.status {
            ProbeStatus::Success => {
                self.successes += 1;
                self.failures = 0;
                (self.successes >= policy.success_threshold.max(1)).then_some(Health::Healthy)
            }
            ProbeStatus::Failure | ProbeStatus::Timeout => {
                self.failures += 1;
                self.successes = 0;
                (self.failures >= policy.failure_threshold.max(1)).then_some(Health::Unhealthy)
            }
            ProbeStatus::Error => None,
        };
        match next {
            Some(h) if h != self.health => {
                self.health = h;
                self.since_ms = at_ms;
                Some(h)
            }
            _ => None,
        }
    }
}

/// Combines the healths of a service's probes for one upstream.
pub fn combine(healths: impl IntoIterator<Item = Health>, mode: Combine) -> Health {
    let (mut any_healthy, mut any_unhealthy, mut all_healthy, mut all_unhealthy, mut n) =
        (false, false, true, true, 0);
    for h in healths {
        n += 1;
        any_healthy |= h == Health::Healthy;
        any_unhealthy |= h == Health::Unhealthy;
        all_healthy &= h == Health::Healthy;
        all_unhealthy &= h == Health::Unhealthy;
    }
    if n == 0 {
        return Health::Unknown;
    }
    match mode {
        Combine::All if any_unhealthy => Health::Unhealthy,
        Combine::All if all_healthy => Health::Healthy,
        Combine::Any if any_healthy => Health::Healthy,
        Combine::Any if all_unhealthy => Health::Unhealthy,
        _ => Health::Unknown,
    }
}

/// What a probe task checks: one upstream of one arm of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Service name.
    pub service: String,
    /// The arm the upstream serves.
    pub role: ArmRole,
    /// The upstream.
    pub upstream: UpstreamAddr,
}

/// Identifies a probe task: probe name, target, and the canary generation (a new canary on
/// the same address starts over).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// Service name.
    pub service: String,
    /// Probe name.
    pub probe: String,
    /// Arm.
    pub role: ArmRole,
    /// Upstream as configured.
    pub upstream: String,
    /// Canary generation (0 for stable).
    pub generation: u64,
}

/// A result on its way to the controller.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Which task.
    pub key: ProbeKey,
    /// What the check found.
    pub outcome: Outcome,
    /// Epoch ms.
    pub at_ms: u64,
}

/// Runs checks. The real one does I/O ([`check::RealChecker`]); a test can script one.
#[async_trait::async_trait]
pub trait Checker: Send + Sync {
    /// Checks `target` once, within `probe.policy.timeout`.
    async fn check(&self, probe: &ProbeSpec, target: &Target) -> Outcome;
}

/// The schedule of one probe task: waits `initial_delay`, then checks every `interval`, or
/// after `retry_interval` following a failure; sends every outcome; ends when the receiver
/// is gone (or the task is aborted).
pub async fn run(
    key: ProbeKey,
    probe: Arc<ProbeSpec>,
    target: Target,
    checker: Arc<dyn Checker>,
    tx: mpsc::Sender<Observation>,
) {
    let p = &probe.policy;
    tokio::time::sleep(p.initial_delay).await;
    loop {
        let outcome = match tokio::time::timeout(p.timeout, checker.check(&probe, &target)).await {
            Ok(o) => o,
            Err(_) => Outcome {
                status: ProbeStatus::Timeout,
                latency: p.timeout,
                detail: format!(
                    "no answer within {}",
                    crate::time::format_duration(p.timeout)
                ),
            },
        };
        let pause = match outcome.status {
            ProbeStatus::Success => p.interval,
            _ => p.retry_interval.min(p.interval),
        };
        let observation = Observation {
            key: key.clone(),
            outcome,
            at_ms: crate::time::now_ms(),
        };
        if tx.send(observation).await.is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: ProbeStatus) -> Outcome {
        Outcome {
            status,
            latency: Duration::from_millis(3),
            detail: String::new(),
        }
    }

    #[test]
    fn status_sets_parse_codes_classes_and_ranges() {
        assert_eq!(StatusSet::parse_item("200"), Ok((200, 200)));
        assert_eq!(StatusSet::parse_item("2xx"), Ok((200, 299)));
        assert_eq!(StatusSet::parse_item("301-308"), Ok((301, 308)));
        for bad in ["2xx0", "600", "299-200", "9xx", "ok", ""] {
            assert!(StatusSet::parse_item(bad).is_err(), "{bad}");
        }
        let s = StatusSet(vec![(200, 299), (304, 304)]);
        assert!(s.contains(204) && s.contains(304) && !s.contains(301));
        assert_eq!(s.to_string(), "200-299,304");
    }

    #[test]
    fn one_timeout_among_successes_changes_nothing() {
        let policy = ProbePolicy::default();
        let mut s = ProbeState::new(0);
        assert_eq!(
            s.observe(&outcome(ProbeStatus::Success), 1, &policy),
            Some(Health::Healthy)
        );
        assert_eq!(s.observe(&outcome(ProbeStatus::Timeout), 2, &policy), None);
        assert_eq!(s.observe(&outcome(ProbeStatus::Success), 3, &policy), None);
        assert_eq!(s.health, Health::Healthy);
        // Three in a row do.
        assert_eq!(s.observe(&outcome(ProbeStatus::Failure), 4, &policy), None);
        assert_eq!(s.observe(&outcome(ProbeStatus::Timeout), 5, &policy), None);
        assert_eq!(
            s.observe(&outcome(ProbeStatus::Failure), 6, &policy),
            Some(Health::Unhealthy)
        );
        assert_eq!(s.since_ms, 6);
        // Errors count neither way.
        for t in 7..20 {
            assert_eq!(s.observe(&outcome(ProbeStatus::Error), t, &policy), None);
        }
        assert_eq!(s.health, Health::Unhealthy);
        assert_eq!(s.recent.len(), RECENT_RESULTS);
    }

    #[test]
    fn success_threshold_needs_a_run() {
        let policy = ProbePolicy {
            success_threshold: 2,
            ..ProbePolicy::default()
        };
        let mut s = ProbeState::new(0);
        assert_eq!(s.observe(&outcome(ProbeStatus::Success), 1, &policy), None);
        assert_eq!(s.observe(&outcome(ProbeStatus::Failure), 2, &policy), None);
        assert_eq!(s.observe(&outcome(ProbeStatus::Success), 3, &policy), None);
        assert_eq!(
            s.observe(&outcome(ProbeStatus::Success), 4, &policy),
            Some(Health::Healthy)
        );
    }

    #[test]
    fn all_and_any() {
        use Health::*;
        assert_eq!(combine([Healthy, Healthy], Combine::All), Healthy);
        assert_eq!(combine([Healthy, Unhealthy], Combine::All), Unhealthy);
        assert_eq!(combine([Healthy, Unknown], Combine::All), Unknown);
        assert_eq!(combine([Healthy, Unhealthy], Combine::Any), Healthy);
        assert_eq!(combine([Unhealthy, Unhealthy], Combine::Any), Unhealthy);
        assert_eq!(combine([Unhealthy, Unknown], Combine::Any), Unknown);
        assert_eq!(combine([], Combine::All), Unknown);
    }

    /// Plays back a list of statuses, one per check.
    struct Script(std::sync::Mutex<Vec<ProbeStatus>>);

    #[async_trait::async_trait]
    impl Checker for Script {
        async fn check(&self, _: &ProbeSpec, _: &Target) -> Outcome {
            let next = self.0.lock().unwrap().pop().unwrap_or(ProbeStatus::Success);
            outcome(next)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_waits_then_retries_failures_sooner() {
        let policy = ProbePolicy {
            initial_delay: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            retry_interval: Duration::from_secs(2),
            ..ProbePolicy::default()
        };
        let probe = Arc::new(ProbeSpec {
            name: "health".into(),
            kind: ProbeKind::Tcp(TcpCheck {
                send: None,
                expect: None,
            }),
            policy,
        });
        let target = Target {
            service: "web".into(),
            role: ArmRole::Canary,
            upstream: UpstreamAddr::parse("127.0.0.1:9").unwrap(),
        };
        let key = ProbeKey {
            service: "web".into(),
            probe: "health".into(),
            role: ArmRole::Canary,
            upstream: "127.0.0.1:9".into(),
            generation: 1,
        };
        // Popped from the end: success, failure, failure, failure, success...
        let checker = Arc::new(Script(std::sync::Mutex::new(vec![
            ProbeStatus::Failure,
            ProbeStatus::Failure,
            ProbeStatus::Failure,
            ProbeStatus::Success,
        ])));
        let (tx, mut rx) = mpsc::channel(16);
        let start = tokio::time::Instant::now();
        tokio::spawn(run(key, probe, target, checker, tx));
        let mut times = Vec::new();
        let mut state = ProbeState::new(0);
        let mut turned = None;
        for _ in 0..5 {
            let o = rx.recv().await.unwrap();
            let t = (tokio::time::Instant::now() - start).as_secs();
            times.push(t);
            if state.observe(&o.outcome, t * 1000, &ProbePolicy::default())
                == Some(Health::Unhealthy)
            {
                turned = Some(t);
            }
        }
        // 30 s delay; success -> 10 s; failures -> 2 s apart; third failure at 44 s.
        assert_eq!(times, vec![30, 40, 42, 44, 46]);
        assert_eq!(turned, Some(44));
    }
}
