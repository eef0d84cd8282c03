//! Per-route counts of one arm over the same sliding window as its [`super::ArmStats`]:
//! requests and failures for each of the first [`ROUTES_KEPT`] routes it sees, the rest
//! together as [`OTHER_ROUTE`]. Bounded: an arm holds `(ROUTES_KEPT + 1) * 2` counters per
//! slot of its window (about 8 KiB for the default 30 slots), whatever its traffic.
//! Recording is lock-free: a route finds its place by its key (linear probing over the
//! table), a new one claims a free place with one compare-and-swap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::routes::Route;

/// Routes an arm keeps apart; later ones count as [`OTHER_ROUTE`].
pub const ROUTES_KEPT: usize = 32;
/// The name of the routes beyond [`ROUTES_KEPT`].
pub const OTHER_ROUTE: &str = "(other routes)";

struct RouteSlot {
    id: AtomicU64,
    requests: [AtomicU32; ROUTES_KEPT + 1],
    failures: [AtomicU32; ROUTES_KEPT + 1],
}

impl RouteSlot {
    fn clear(&self) {
        for c in self.requests.iter().chain(&self.failures) {
            c.store(0, Relaxed);
        }
    }
}

/// One arm's per-route window.
pub struct RouteStats {
    origin: Instant,
    slot_ms: u64,
    window_slots: u64,
    keys: [AtomicU64; ROUTES_KEPT],
    labels: [arc_swap::ArcSwapOption<String>; ROUTES_KEPT],
    slots: Box<[RouteSlot]>,
}

/// One route's counts over the window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteCounts {
    /// `POST /checkout`, or [`OTHER_ROUTE`].
    pub route: String,
    /// Requests answered.
    pub requests: u64,
    /// Of which failures.
    pub failures: u64,
}

impl RouteStats {
    /// A table over `window_slots` slots of `slot_ms` from `origin` (its arm's).
    pub fn new(origin: Instant, slot_ms: u64, window_slots: u64) -> RouteStats {
        RouteStats {
            origin,
            slot_ms,
            window_slots,
            keys: std::array::from_fn(|_| AtomicU64::new(0)),
            labels: std::array::from_fn(|_| Default::default()),
            slots: (0..window_slots + 2)
                .map(|_| RouteSlot {
                    id: AtomicU64::new(u64::MAX),
                    requests: std::array::from_fn(|_| AtomicU32::new(0)),
                    failures: std::array::from_fn(|_| AtomicU32::new(0)),
                })
                .collect(),
        }
    }

    fn place(&self, route: &Route<'_>) -> usize {
        let key = route.key();
        let start = (key % ROUTES_KEPT as u64) as usize;
        for i in 0..ROUTES_KEPT {
            let at = (start + i) % ROUTES_KEPT;
            match self.keys[at].load(Relaxed) {
                k if k == key => return at,
                0 => match self.keys[at].compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => {
                        self.labels[at].store(Some(std::sync::Arc::new(route.label())));
                        return at;
                    }
                    Err(k) if k == key => return at,
                    Err(_) => continue,
                },
                _ => continue,
            }
        }
        ROUTES_KEPT
    }

    /// Counts one request of `route` at `at`.
    pub fn record_at(&self, at: Instant, route: &Route<'_>, failed: bool) {
        let id = at.saturating_duration_since(self.origin).as_millis() as u64 / self.slot_ms;
        let slot = &self.slots[(id % self.slots.len() as u64) as usize];
        let seen = slot.id.load(Relaxed);
        if seen != id {
            if seen < id || seen == u64::MAX {
                if slot.id.compare_exchange(seen, id, Relaxed, Relaxed).is_ok() {
                    slot.clear();
                }
            } else {
                return;
            }
        }
        let place = self.place(route);
        slot.requests[place].fetch_add(1, Relaxed);
        if failed {
            slot.failures[place].fetch_add(1, Relaxed);
        }
    }

    /// Every route's counts over the window ending at `at`, routes with no request left out.
    pub fn snapshot_at(&self, at: Instant) -> Vec<RouteCounts> {
        let now = at.saturating_duration_since(self.origin).as_millis() as u64 / self.slot_ms;
        let oldest = now.saturating_sub(self.window_slots - 1);
        let mut requests = [0u64; ROUTES_KEPT + 1];
        let mut failures = [0u64; ROUTES_KEPT + 1];
        for slot in self.slots.iter() {
            let id = slot.id.load(Relaxed);
            if id == u64::MAX || id < oldest || id > now {
                continue;
            }
            for i in 0..=ROUTES_KEPT {
                requests[i] += u64::from(slot.requests[i].load(Relaxed));
                failures[i] += u64::from(slot.failures[i].load(Relaxed));
            }
        }
        (0..=ROUTES_KEPT)
            .filter(|i| requests[*i] > 0)
            .map(|i| RouteCounts {
                route: if i == ROUTES_KEPT {
                    OTHER_ROUTE.to_string()
                } else {
                    self.labels[i]
                        .load_full()
                        .map_or_else(|| OTHER_ROUTE.to_string(), |l| (*l).clone())
                },
                requests: requests[i],
                failures: failures[i],
            })
            .collect()
    }
}
