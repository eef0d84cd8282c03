//! Inline measurement: per-arm sliding windows of status classes and latency.
//!
//! [`ArmStats::record`] is what the proxy calls for every request, in the logging phase: a
//! handful of relaxed atomic increments, no lock, no allocation, O(1). The window is a ring
//! of time slots; each slot holds counts per status class and a log-linear latency
//! histogram (16 sub-buckets per power of two of microseconds: quantiles within ~3 %). Slots
//! merge by addition, so a window snapshot is a sum and quantiles come from the merged
//! histogram. The control plane calls [`ArmStats::maintain`] every tick to clear the slot
//! that is about to become current, so recorders never have to.

use crate::types::StatusClass;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Length of the window when a service names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Slots per window: the window moves in steps of `window / DEFAULT_SLOTS`.
pub const DEFAULT_SLOTS: u32 = 30;
/// The shortest slot; shorter windows get fewer slots.
pub const MIN_SLOT: Duration = Duration::from_millis(100);

/// Sub-buckets per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Largest latency kept apart: 2^36 µs, about 19 hours; longer ones land in the last bucket.
const MAX_MSB: u32 = 36;
/// Number of latency buckets.
pub const BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * SUB;

/// The bucket of a latency in microseconds: exact below 16 µs, then 16 buckets per octave.
#[inline]
pub fn bucket_of(micros: u64) -> usize {
    if micros < SUB as u64 {
        return micros as usize;
    }
    let msb = (63 - micros.leading_zeros()).min(MAX_MSB);
    let micros = micros.min((1u64 << (MAX_MSB + 1)) - 1);
    let shift = msb - SUB_BITS;
    (((msb - SUB_BITS + 1) as usize) << SUB_BITS) + ((micros >> shift) as usize & (SUB - 1))
}

/// The range of microseconds a bucket holds: `[low, high)`.
pub fn bucket_range(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, index as u64 + 1);
    }
    let octave = (index >> SUB_BITS) as u32; // >= 1
    let shift = octave - 1;
    let sub = (index & (SUB - 1)) as u64;
    let low = ((SUB as u64) + sub) << shift;
    (low, low + (1u64 << shift))
}

struct Slot {
    /// The time index this slot currently holds (`u64::MAX`: never used).
    id: AtomicU64,
    counts: [AtomicU64; 6],
    latency_sum_us: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            id: AtomicU64::new(u64::MAX),
            counts: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn clear(&self, id: u64) {
        for c in &self.counts {
            c.store(0, Relaxed);
        }
        self.latency_sum_us.store(0, Relaxed);
        for b in self.latency.iter() {
            b.store(0, Relaxed);
        }
        self.id.store(id, Relaxed);
    }
}

/// The sliding window of one arm of one service (one version: a new canary gets a new one).
pub struct ArmStats {
    origin: Instant,
    slot_ms: u64,
    window_slots: u64,
    slots: Box<[Slot]>,
    consecutive_failures: AtomicU32,
    /// When the current run of failures began (ms from `origin`; `u64::MAX`: no run).
    run_started_ms: AtomicU64,
    total: [AtomicU64; 6],
    /// The latest failed requests, a ring of [`FAILED_KEPT`] slots (lock-free: a failing
    /// request swaps one pointer).
    failed: [arc_swap::ArcSwapOption<FailedRequest>; FAILED_KEPT],
    /// Failed requests noted so far (the next slot, modulo the ring).
    failed_next: AtomicU64,
    /// The same window, per route.
    routes: RouteStats,
}

/// How many failed requests an arm keeps for a cut-back's evidence.
pub const FAILED_KEPT: usize = 5;

/// A failed request, for the evidence of a cut-back: an operator finds it in the app's logs
/// by its id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedRequest {
    /// Its `X-Request-Id`.
    pub request_id: String,
    /// Method and path.
    pub request: String,
    /// The status the arm answered (none: no answer).
    pub status: Option<u16>,
    /// When (epoch ms).
    pub at_ms: u64,
}

impl std::fmt::Debug for ArmStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmStats")
            .field("window", &self.window())
            .field("consecutive_failures", &self.consecutive_failures())
            .finish_non_exhaustive()
    }
}

impl ArmStats {
    /// A window of `window` length moved in steps of `window / DEFAULT_SLOTS` (at least
    /// [`MIN_SLOT`]).
    pub fn new(window: Duration) -> ArmStats {
        Self::with_origin(window, Instant::now())
    }

    /// Same, with an explicit time origin (tests use it to drive virtual time).
    pub fn with_origin(window: Duration, origin: Instant) -> ArmStats {
        let window_ms = window.as_millis().max(MIN_SLOT.as_millis()) as u64;
        let slots = (window_ms / MIN_SLOT.as_millis() as u64).clamp(1, DEFAULT_SLOTS as u64);
        let slot_ms = window_ms.div_ceil(slots);
        ArmStats {
            origin,
            slot_ms,
            window_slots: slots,
            // +2: the slots of the window, the one being cleared ahead, and one of slack.
            slots: (0..slots + 2).map(|_| Slot::new()).collect(),
            consecutive_failures: AtomicU32::new(0),
            run_started_ms: AtomicU64::new(u64::MAX),
            total: Default::default(),
            failed: Default::default(),
            failed_next: AtomicU64::new(0),
            routes: RouteStats::new(origin, slot_ms, slots),
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.slot_ms * self.window_slots)
    }

    fn slot_id(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 / self.slot_ms
    }

    /// Records one finished request. Lock-free and O(1).
    #[inline]
    pub fn record(&self, class: StatusClass, latency: Duration) {
        self.record_at(Instant::now(), class, latency)
    }

    /// Records one finished request at a given time.
    pub fn record_at(&self, at: Instant, class: StatusClass, latency: Duration) {
        let id = self.slot_id(at);
        let slot = &self.slots[(id % self.slots.len() as u64) as usize];
        let seen = slot.id.load(Relaxed);
        if seen != id {
            // The control tick did not prepare this slot (it was late): whoever wins the
            // swap clears it. A few samples may be lost at that instant; none are misfiled.
            if seen < id || seen == u64::MAX {
                if slot.id.compare_exchange(seen, id, Relaxed, Relaxed).is_ok() {
                    slot.clear(id);
                }
            } else {
                return; // a sample from a slot older than the ring: drop it
            }
        }
        let micros = latency.as_micros().min(u64::MAX as u128) as u64;
        slot.counts[class.index()].fetch_add(1, Relaxed);
        slot.latency_sum_us.fetch_add(micros, Relaxed);
        slot.latency[bucket_of(micros)].fetch_add(1, Relaxed);
        self.total[class.index()].fetch_add(1, Relaxed);
        if class.is_failure() {
            if self.consecutive_failures.fetch_add(1, Relaxed) == 0 {
                let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
                self.run_started_ms.store(ms, Relaxed);
            }
        } else if self.consecutive_failures.load(Relaxed) != 0 {
            // Only write when needed, so successes do not bounce the cache line.
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Records one finished request of `route` (the arm's window and its route's).
    #[inline]
    pub fn record_route(
        &self,
        class: StatusClass,
        latency: Duration,
        route: &crate::routes::Route<'_>,
    ) {
        let at = Instant::now();
        self.record_at(at, class, latency);
        self.routes.record_at(at, route, class.is_failure());
    }

    /// [`Self::record_route`] at a given time.
    pub fn record_route_at(
        &self,
        at: Instant,
        class: StatusClass,
        latency: Duration,
        route: &crate::routes::Route<'_>,
    ) {
        self.record_at(at, class, latency);
        self.routes.record_at(at, route, class.is_failure());
    }

    /// Every route's counts over the window ending at `at`.
    pub fn routes_at(&self, at: Instant) -> Vec<RouteCounts> {
        self.routes.snapshot_at(at)
    }

    /// Keeps a failed request for the evidence (the oldest kept one goes).
    pub fn note_failed(&self, failed: FailedRequest) {
        let n = self.failed_next.fetch_add(1, Relaxed);
        self.failed[(n % FAILED_KEPT as u64) as usize].store(Some(Arc::new(failed)));
    }

    /// The latest failed requests, oldest first.
    pub fn failed_requests(&self) -> Vec<FailedRequest> {
        let n = self.failed_next.load(Relaxed);
        (n.saturating_sub(FAILED_KEPT as u64)..n)
            .filter_map(|i| self.failed[(i % FAILED_KEPT as u64) as usize].load_full())
            .map(|f| (*f).clone())
            .collect()
    }

    /// Failures (5xx or no response) in a row, up to the latest request.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// When the current run of failures began (`None` when the latest request succeeded).
    pub fn run_started(&self) -> Option<Instant> {
        if self.consecutive_failures() == 0 {
            return None;
        }
        match self.run_started_ms.load(Relaxed) {
            u64::MAX => None,
            ms => Some(self.origin + Duration::from_millis(ms)),
        }
    }

    /// Requests and failures in the slots from the one `since` falls in to the one `at` falls
    /// in, widened back a slot at a time (within the window) until they hold `min_requests`:
    /// an arm's recent failure ratio, over a span another arm's run of failures took.
    pub fn recent(&self, at: Instant, since: Instant, min_requests: u64) -> RecentCounts {
        let now = self.slot_id(at);
        let oldest = now.saturating_sub(self.window_slots - 1);
        let ring = self.slots.len() as u64;
        let mut first = self.slot_id(since).clamp(oldest, now);
        let mut out = RecentCounts::default();
        let add = |id: u64, out: &mut RecentCounts| {
            let slot = &self.slots[(id % ring) as usize];
            if slot.id.load(Relaxed) != id {
                return;
            }
            for (class, c) in StatusClass::ALL.iter().zip(&slot.counts) {
                let n = c.load(Relaxed);
                out.requests += n;
                if class.is_failure() {
                    out.failures += n;
                }
            }
        };
        for id in first..=now {
            add(id, &mut out);
        }
        while out.requests < min_requests && first > oldest {
            first -= 1;
            add(first, &mut out);
        }
        out.span_ms = (now + 1 - first) * self.slot_ms;
        out
    }

    /// Requests by class since this arm's stats were created.
    pub fn totals(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.total[i].load(Relaxed))
    }

    /// Clears the slot that becomes current next, so recorders find it ready. Called by the
    /// control tick (every 100 ms); harmless to call more often.
    pub fn maintain(&self) {
        self.maintain_at(Instant::now())
    }

    /// [`Self::maintain`] at a given time.
    pub fn maintain_at(&self, at: Instant) {
        let next = self.slot_id(at) + 1;
        let slot = &self.slots[(next % self.slots.len() as u64) as usize];
        let seen = slot.id.load(Relaxed);
        if (seen < next || seen == u64::MAX)
            && slot
                .id
                .compare_exchange(seen, next, Relaxed, Relaxed)
                .is_ok()
        {
            slot.clear(next);
        }
    }

    /// The time index of the slot `at` falls in.
    pub fn slot_at(&self, at: Instant) -> u64 {
        self.slot_id(at)
    }

    /// Adds the slots completed after slot `after` and before the one `at` falls in into
    /// `into` (each slot once, for exact per-minute sums); returns the last slot merged.
    /// Slots that already left the ring are skipped.
    pub fn merge_completed(
        &self,
        after: Option<u64>,
        at: Instant,
        into: &mut WindowSnapshot,
    ) -> Option<u64> {
        let current = self.slot_id(at);
        if current == 0 {
            return after;
        }
        let last = current - 1;
        let ring = self.slots.len() as u64;
        let first = match after {
            Some(a) if a >= last => return after,
            Some(a) => (a + 1).max(current.saturating_sub(ring - 1)),
            None => current.saturating_sub(ring - 1),
        };
        for id in first..=last {
            let slot = &self.slots[(id % ring) as usize];
            if slot.id.load(Relaxed) != id {
                continue;
            }
            for (i, c) in slot.counts.iter().enumerate() {
                into.counts[i] += c.load(Relaxed);
            }
            into.latency_sum_us += slot.latency_sum_us.load(Relaxed);
            for (i, b) in slot.latency.iter().enumerate() {
                let n = b.load(Relaxed);
                if n != 0 {
                    into.latency[i] += n;
                }
            }
        }
        Some(last)
    }

    /// The window ending now.
    pub fn snapshot(&self) -> WindowSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// The window ending at `at`: every slot whose time index lies in the last
    /// `window_slots` indexes, the current partial one included.
    pub fn snapshot_at(&self, at: Instant) -> WindowSnapshot {
        let now = self.slot_id(at);
        let oldest = now.saturating_sub(self.window_slots - 1);
        let mut snap = WindowSnapshot::empty(self.window());
        for slot in self.slots.iter() {
            let id = slot.id.load(Relaxed);
            if id == u64::MAX || id < oldest || id > now {
                continue;
            }
            for (i, c) in slot.counts.iter().enumerate() {
                snap.counts[i] += c.load(Relaxed);
            }
            snap.latency_sum_us += slot.latency_sum_us.load(Relaxed);
            for (i, b) in slot.latency.iter().enumerate() {
                let n = b.load(Relaxed);
                if n != 0 {
                    snap.latency[i] += n;
                }
            }
        }
        snap
    }
}

/// An arm's requests and failures over a recent span ([`ArmStats::recent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RecentCounts {
    /// Requests answered in the span.
    pub requests: u64,
    /// Of which failures (5xx or no response).
    pub failures: u64,
    /// The span, ms (whole slots).
    pub span_ms: u64,
}

/// A merged view of a window: counts per class and the latency histogram.
#[derive(Clone, PartialEq)]
pub struct WindowSnapshot {
    /// The window's length.
    pub window: Duration,
    /// Requests per [`StatusClass`] (in [`StatusClass::ALL`] order).
    pub counts: [u64; 6],
    /// Sum of latencies, in microseconds.
    pub latency_sum_us: u64,
    /// Latency histogram over [`BUCKETS`] buckets.
    pub latency: Vec<u64>,
}

impl std::fmt::Debug for WindowSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSnapshot")
            .field("requests", &self.requests())
            .field("failures", &self.failures())
            .field("p95_ms", &self.quantile_ms(0.95))
            .finish()
    }
}

impl WindowSnapshot {
    /// An empty window of the given length.
    pub fn empty(window: Duration) -> WindowSnapshot {
        WindowSnapshot {
            window,
            counts: [0; 6],
            latency_sum_us: 0,
            latency: vec![0; BUCKETS],
        }
    }

    /// Adds another window (of another arm or instance) into this one.
    pub fn merge(&mut self, other: &WindowSnapshot) {
        for i in 0..6 {
            self.counts[i] += other.counts[i];
        }
        self.latency_sum_us += other.latency_sum_us;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// All requests in the window.
    pub fn requests(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Requests of one class.
    pub fn count(&self, class: StatusClass) -> u64 {
        self.counts[class.index()]
    }

    /// 5xx answers plus requests that got no answer.
    pub fn failures(&self) -> u64 {
        self.count(StatusClass::ServerError) + self.count(StatusClass::NoResponse)
    }

    /// `failures / requests`, 0 when there were none.
    pub fn error_rate(&self) -> f64 {
        let n = self.requests();
        if n == 0 {
            0.0
        } else {
            self.failures() as f64 / n as f64
        }
    }

    /// The latency below which a fraction `q` of the requests fell, in milliseconds
    /// (the midpoint of the bucket that holds it); `None` with no requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                let mid = if hi - lo == 1 {
                    lo as f64
                } else {
                    (lo + hi) as f64 / 2.0
                };
                return Some(mid / 1000.0);
            }
        }
        None
    }

    /// Requests slower than `limit_ms` (those in buckets whose midpoint lies above it, the
    /// same reading [`Self::quantile_ms`] uses).
    pub fn count_above_ms(&self, limit_ms: f64) -> u64 {
        let limit_us = limit_ms * 1000.0;
        self.latency
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let (lo, hi) = bucket_range(*i);
                (lo + hi) as f64 / 2.0 > limit_us
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Mean latency in milliseconds; `None` with no requests.
    pub fn mean_ms(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.latency_sum_us as f64 / n as f64 / 1000.0)
    }

    /// The JSON view the admin API shows.
    pub fn summary(&self) -> StatsSummary {
        let c = |k: StatusClass| self.count(k);
        let secs = self.window.as_secs_f64().max(0.001);
        StatsSummary {
            window: crate::time::format_duration(self.window),
            requests: self.requests(),
            rate_per_second: round3(self.requests() as f64 / secs),
            status: StatusCounts {
                informational: c(StatusClass::Informational),
                success: c(StatusClass::Success),
                redirect: c(StatusClass::Redirect),
                client_error: c(StatusClass::ClientError),
                server_error: c(StatusClass::ServerError),
                no_response: c(StatusClass::NoResponse),
            },
            errors: self.failures(),
            error_rate: round3(self.error_rate() * 1000.0) / 1000.0,
            p50_ms: self.quantile_ms(0.50).map(round3),
            p95_ms: self.quantile_ms(0.95).map(round3),
            p99_ms: self.quantile_ms(0.99).map(round3),
            mean_ms: self.mean_ms().map(round3),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Requests per status class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusCounts {
    /// 1xx
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx
    #[serde(rename = "3xx")]
    pub redirect: u64,
    /// 4xx
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// no response at all
    pub no_response: u64,
}

/// What the admin API shows for an arm's window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSummary {
    /// Window length, e.g. "30s".
    pub window: String,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub rate_per_second: f64,
    /// Requests by status class.
    pub status: StatusCounts,
    /// 5xx plus no-response.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Median latency.
    pub p50_ms: Option<f64>,
    /// 95th percentile latency.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Mean latency.
    pub mean_ms: Option<f64>,
}

mod routes;
pub use routes::{RouteCounts, RouteStats, OTHER_ROUTE, ROUTES_KEPT};

#[cfg(test)]
mod tests;
