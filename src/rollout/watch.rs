//! The judge's watch: evidence from the serving table, the per-service hysteresis, the
//! status board the admin API shows, and the wake the data plane pokes on canary failures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::events::Event;
use crate::judge::{Evidence, Verdict};
use crate::routing::Service;

/// The judge's latest view of one service, and the last decision taken about it.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeStatus {
    /// The latest verdict with its numbers (`None` without a canary).
    pub verdict: Option<Verdict>,
    /// When it was reached, ms since the epoch.
    pub at_ms: u64,
    /// Whether a breach is being watched (waiting `breach_for`).
    pub watching: bool,
    /// The last change of state of this service (cut-back, breach, promote, new canary...).
    pub last_decision: Option<Arc<Event>>,
    /// Every probe on every upstream: state and latest results (shown at the service's
    /// top level by the API).
    #[serde(skip)]
    pub probes: Vec<super::probing::ProbeView>,
    /// The external analyses of the serving canary: settings, counts, latest measurements.
    pub analysis: Vec<super::analyzing::AnalysisView>,
    /// Since when every canary upstream passes its probes (epoch ms), if they all do.
    pub canary_healthy_since_ms: Option<u64>,
}

/// Every service's status, replaced as a whole by the controller.
pub type Board = HashMap<String, JudgeStatus>;
/// The board handle the admin API reads.
pub type SharedBoard = Arc<ArcSwap<Board>>;

/// Pokes the controller to judge now. Never waits: a full channel means a poke is already
/// pending.
#[derive(Clone, Debug)]
pub struct Wake(mpsc::Sender<()>);

impl Wake {
    /// A wake and the receiver the controller listens on.
    pub fn channel() -> (Wake, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (Wake(tx), rx)
    }

    /// Asks for an evaluation.
    #[inline]
    pub fn poke(&self) {
        let _ = self.0.try_send(());
    }
}

/// The evidence for a service's canary at `at`: both windows over the same span, and what
/// the probes say.
pub fn evidence(
    service: &Service,
    at: Instant,
    probing: &super::probing::Probing,
    usage: &crate::docker::usage::UsageBoard,
) -> Option<Evidence> {
    let canary = service.canary.as_ref()?;
    let (probe_failures, stable_probes_failing) = probing.canary_failures(service);
    Some(Evidence {
        stable: service.stable.stats.snapshot_at(at),
        canary: canary.stats.snapshot_at(at),
        canary_consecutive_failures: canary.stats.consecutive_failures(),
        stable_consecutive_failures: service.stable.stats.consecutive_failures(),
        routes: crate::judge::RouteComparison::merge(
            canary.stats.routes_at(at),
            service.stable.stats.routes_at(at),
        ),
        stable_recent: canary.stats.run_started().map(|since| {
            service
                .stable
                .stats
                .recent(at, since, crate::judge::RECENT_STABLE_REQUESTS)
        }),
        probe_failures,
        stable_probes_failing,
        sustained: None,
        analysis_failures: Vec::new(),
        // Only the containers behind the canary's upstreams now (a replaced canary's
        // samples may linger until the sampler's next round).
        canary_usage: usage
            .usage(service.name(), at)
            .into_iter()
            .filter(|u| canary.upstreams.iter().any(|c| c.spec == u.upstream))
            .collect(),
    })
}
