//! Events: every change of state, with the evidence behind it, on one in-process bus.
//!
//! The controller is the main publisher. Subscribers (the log, and later the store, the
//! notifiers and the admin live stream) each get their own `broadcast` receiver. Publishing
//! never waits: a subscriber that falls behind loses the oldest events and is told how many
//! (`RecvError::Lagged`), it never slows the controller.

use crate::time::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it loses some.
pub const DEFAULT_BUS_CAPACITY: usize = 4096;
/// How many recent events the bus keeps for late subscribers (`?since=SEQ`).
pub const RECENT_EVENTS: usize = 512;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The gate started serving (first table published).
    Started,
    /// Canary upstreams were set (a new canary generation).
    CanarySet,
    /// The canary weight changed.
    WeightSet,
    /// The canary became the new stable.
    Promoted,
    /// The canary was cut back to 0 and is held there.
    RolledBack,
    /// The judge found the canary worse than its policy allows.
    Breach,
    /// A breach went away before it was acted on.
    BreachCleared,
    /// A rolled-back canary was given traffic again.
    Resumed,
    /// A config reload was applied.
    ConfigReloaded,
    /// A config reload was refused; the old table keeps serving.
    ReloadFailed,
    /// The gate is draining and will exit.
    ShuttingDown,
    /// Routing state was restored from history at start.
    Restored,
    /// An upstream's probe fails by its policy.
    ProbeFailed,
    /// An upstream's probe passes again.
    ProbeRecovered,
    /// A held or idle canary was removed.
    CanaryRemoved,
    /// A deployment started (its plan and who asked).
    DeploymentStarted,
    /// A deployment moved on (a step, a switch, a batch).
    DeploymentStep,
    /// A deployment was paused.
    DeploymentPaused,
    /// A deployment was resumed.
    DeploymentResumed,
    /// A deployment's phase waited past its progress deadline (and was paused, rolled back
    /// or promoted, as the deployment asked).
    DeploymentStalled,
    /// A deployment ended with the new version serving.
    DeploymentSucceeded,
    /// A deployment ended rolled back (the previous version serves).
    DeploymentFailed,
    /// An operator aborted a deployment (an instant rollback).
    DeploymentAborted,
    /// A rollback was refused: the previous version is gone, the current one keeps serving.
    RollbackRefused,
    /// Deployments were frozen or unfrozen.
    FreezeChanged,
    /// A release's containers were created, started and found ready (their snapshots).
    ReleaseReady,
    /// A release's containers could not be started or made ready (kept for inspection).
    ReleaseFailed,
    /// A release's containers were stopped: retired after a promotion, or failed.
    ReleaseStopped,
    /// A container of the stable release was restored (restarted, or recreated exactly
    /// from its snapshot).
    ContainerRestored,
    /// The stable release cannot be restored (its containers and its image are gone), or
    /// can again.
    ReleaseMissing,
    /// Containers found by their labels changed a service's upstreams.
    Discovered,
    /// Notifications could not be delivered (after their retries), or were dropped.
    NotifyFailed,
    /// A certificate was issued or renewed by the ACME server.
    CertificateIssued,
    /// An ACME order failed; the certificate the name had keeps serving.
    CertificateFailed,
    /// An external analysis measured (passed, failed or inconclusive), with its values.
    AnalysisMeasured,
    /// An external analysis had no answer `max_inconclusive` times in a row (a running
    /// deployment is paused).
    AnalysisInconclusive,
}

impl EventKind {
    /// Every kind, for filters and docs.
    pub const ALL: [EventKind; 36] = [
        EventKind::Started,
        EventKind::CanarySet,
        EventKind::WeightSet,
        EventKind::Promoted,
        EventKind::RolledBack,
        EventKind::Breach,
        EventKind::BreachCleared,
        EventKind::Resumed,
        EventKind::ConfigReloaded,
        EventKind::ReloadFailed,
        EventKind::ShuttingDown,
        EventKind::Restored,
        EventKind::ProbeFailed,
        EventKind::ProbeRecovered,
        EventKind::CanaryRemoved,
        EventKind::DeploymentStarted,
        EventKind::DeploymentStep,
        EventKind::DeploymentPaused,
        EventKind::DeploymentResumed,
        EventKind::DeploymentStalled,
        EventKind::DeploymentSucceeded,
        EventKind::DeploymentFailed,
        EventKind::DeploymentAborted,
        EventKind::RollbackRefused,
        EventKind::FreezeChanged,
        EventKind::ReleaseReady,
        EventKind::ReleaseFailed,
        EventKind::ReleaseStopped,
        EventKind::ContainerRestored,
        EventKind::ReleaseMissing,
        EventKind::Discovered,
        EventKind::NotifyFailed,
        EventKind::CertificateIssued,
        EventKind::CertificateFailed,
        EventKind::AnalysisMeasured,
        EventKind::AnalysisInconclusive,
    ];

    /// Parses a kind name.
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The JSON / label name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::CanarySet => "canary_set",
            EventKind::WeightSet => "weight_set",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
            EventKind::Breach => "breach",
            EventKind::BreachCleared => "breach_cleared",
            EventKind::Resumed => "resumed",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ReloadFailed => "reload_failed",
            EventKind::ShuttingDown => "shutting_down",
            EventKind::Restored => "restored",
            EventKind::ProbeFailed => "probe_failed",
            EventKind::ProbeRecovered => "probe_recovered",
            EventKind::CanaryRemoved => "canary_removed",
            EventKind::DeploymentStarted => "deployment_started",
            EventKind::DeploymentStep => "deployment_step",
            EventKind::DeploymentPaused => "deployment_paused",
            EventKind::DeploymentResumed => "deployment_resumed",
            EventKind::DeploymentStalled => "deployment_stalled",
            EventKind::DeploymentSucceeded => "deployment_succeeded",
            EventKind::DeploymentFailed => "deployment_failed",
            EventKind::DeploymentAborted => "deployment_aborted",
            EventKind::RollbackRefused => "rollback_refused",
            EventKind::FreezeChanged => "freeze_changed",
            EventKind::ReleaseReady => "release_ready",
            EventKind::ReleaseFailed => "release_failed",
            EventKind::ReleaseStopped => "release_stopped",
            EventKind::ContainerRestored => "container_restored",
            EventKind::ReleaseMissing => "release_missing",
            EventKind::Discovered => "discovered",
            EventKind::NotifyFailed => "notify_failed",
            EventKind::CertificateIssued => "certificate_issued",
            EventKind::CertificateFailed => "certificate_failed",
            EventKind::AnalysisMeasured => "analysis_measured",
            EventKind::AnalysisInconclusive => "analysis_inconclusive",
        }
    }
}

/// A routing table change: the version before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableChange {
    /// Version that was serving.
    pub from: u64,
    /// Version now serving.
    pub to: u64,
}

/// One change of state.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing within one gate process.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The service it concerns, if one.
    pub service: Option<String>,
    /// The deployment of that service running at the time, if one.
    pub deployment: Option<String>,
    /// Who or what caused it: `api`, `cli:<user>`, `config`, `signal:SIGHUP`, `judge`, ...
    pub actor: String,
    /// One readable line.
    pub message: String,
    /// The routing table versions, when a table was published.
    pub table: Option<TableChange>,
    /// The numbers behind it (weights, counts, rates, quantiles, thresholds).
    pub evidence: serde_json::Value,
}

/// Where events go to be kept (the history spool). Called synchronously by `publish`, so
/// it must not wait: the spool appends to a local file and returns.
pub trait EventSink: Send + Sync {
    /// Keeps one event.
    fn keep(&self, event: &Event);
}

/// The bus: cheap to clone, never blocks the publisher.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    seq: Arc<AtomicU64>,
    recent: Arc<parking_lot::Mutex<std::collections::VecDeque<Arc<Event>>>>,
    sink: Option<Arc<dyn EventSink>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("kept", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_BUS_CAPACITY)
    }
}

/// The fields a publisher fills in; the bus adds `seq` and `at_ms`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The service it concerns.
    pub service: Option<String>,
    /// The deployment running then (filled in by the controller).
    pub deployment: Option<String>,
    /// Who or what caused it.
    pub actor: String,
    /// One readable line.
    pub message: String,
    /// Table versions.
    pub table: Option<TableChange>,
    /// The numbers behind it.
    pub evidence: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` caused by `actor`, about no service, with no table change and no
    /// evidence; the builders below add them.
    pub fn new(kind: EventKind, actor: impl Into<String>, message: impl Into<String>) -> NewEvent {
        NewEvent {
            kind,
            service: None,
            deployment: None,
            actor: actor.into(),
            message: message.into(),
            table: None,
            evidence: serde_json::Value::Null,
        }
    }

    /// About `service`.
    pub fn service(self, service: impl Into<String>) -> NewEvent {
        self.maybe_service(Some(service.into()))
    }

    /// About `service`, when there is one.
    pub fn maybe_service(mut self, service: Option<String>) -> NewEvent {
        self.service = service;
        self
    }

    /// During the deployment `id`, when one runs.
    pub fn deployment(mut self, id: Option<String>) -> NewEvent {
        self.deployment = id;
        self
    }

    /// With the table change it made.
    pub fn table(self, change: TableChange) -> NewEvent {
        self.maybe_table(Some(change))
    }

    /// With the table change it made, when it made one.
    pub fn maybe_table(mut self, change: Option<TableChange>) -> NewEvent {
        self.table = change;
        self
    }

    /// With the numbers behind it.
    pub fn evidence(mut self, evidence: serde_json::Value) -> NewEvent {
        self.evidence = evidence;
        self
    }
}

impl EventBus {
    /// A bus whose subscribers may lag `capacity` events.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity);
        EventBus {
            tx,
            seq: Arc::new(AtomicU64::new(1)),
            recent: Default::default(),
            sink: None,
        }
    }

    /// The same bus, also handing every event to `sink` (before any subscriber sees it).
    pub fn with_sink(mut self, sink: Arc<dyn EventSink>) -> EventBus {
        self.sink = Some(sink);
        self
    }

    /// Stamps, logs and sends an event; returns it.
    pub fn publish(&self, e: NewEvent) -> Arc<Event> {
        let event = Arc::new(Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            at_ms: now_ms(),
            kind: e.kind,
            service: e.service,
            deployment: e.deployment,
            actor: e.actor,
            message: e.message,
            table: e.table,
            evidence: e.evidence,
        });
        tracing::info!(
            kind = event.kind.as_str(),
            service = event.service.as_deref().unwrap_or("-"),
            actor = %event.actor,
            table = ?event.table.map(|t| t.to),
            "{}",
            event.message
        );
        if let Some(sink) = &self.sink {
            sink.keep(&event);
        }
        {
            // Held for a push, never across an await; publishers are control-plane tasks.
            let mut recent = self.recent.lock();
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No receiver is not an error: events are also logged above.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Kept events with `seq > after`, oldest first (at most [`RECENT_EVENTS`]).
    pub fn recent_after(&self, after: u64) -> Vec<Arc<Event>> {
        self.recent
            .lock()
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// A new subscriber, starting with the next event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// A new deployment id: the service, the time, a little randomness.
pub fn new_deployment_id(service: &str) -> String {
    format!("{service}-{:x}-{:04x}", now_ms(), fastrand::u16(..))
}
