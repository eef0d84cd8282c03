//! The records history is made of: one row type per table, and [`Record`], what travels
//! through the spool (one JSON line each) to the database.
//!
//! Every record carries its own id, and every write is idempotent (insert-or-ignore, or an
//! upsert to the record's latest state), so the spool may deliver a record twice (after a
//! crash between the database commit and the spool's bookkeeping) without duplicating it.

use serde::{Deserialize, Serialize};

use crate::events::Event;

/// A row of `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct EventRow {
    /// `run-seq`.
    pub id: String,
    /// Sequence number within the run.
    pub seq: i64,
    /// Epoch ms.
    pub at_ms: i64,
    /// Event kind.
    pub kind: String,
    /// Service, if one.
    pub service: Option<String>,
    /// Deployment, if one was running.
    pub deployment_id: Option<String>,
    /// Who or what caused it.
    pub actor: String,
    /// Readable line.
    pub message: String,
    /// Table version before.
    pub table_from: Option<i64>,
    /// Table version after.
    pub table_to: Option<i64>,
    /// Evidence, JSON.
    pub evidence: String,
}

fn parsed(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

impl EventRow {
    /// The row as the API shows it: evidence as JSON, not text.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["evidence"] = parsed(&self.evidence);
        v
    }

    /// The row of an event of run `run`.
    pub fn of(run: &str, e: &Event) -> EventRow {
        EventRow {
            id: format!("{run}-{:010}", e.seq),
            seq: e.seq as i64,
            at_ms: e.at_ms as i64,
            kind: e.kind.as_str().to_string(),
            service: e.service.clone(),
            deployment_id: e.deployment.clone(),
            actor: e.actor.clone(),
            message: e.message.clone(),
            table_from: e.table.map(|t| t.from as i64),
            table_to: e.table.map(|t| t.to as i64),
            evidence: e.evidence.to_string(),
        }
    }
}

/// A row of `deployments`: written when it starts and again on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DeploymentRow {
    /// Generated id.
    pub id: String,
    /// Service.
    pub service: String,
    /// Version label or image.
    pub label: Option<String>,
    /// `canary`, `blue_green`, `rolling`.
    pub strategy: String,
    /// JSON: what is deployed (upstreams, image).
    pub canary: String,
    /// Who started it.
    pub started_by: String,
    /// Epoch ms.
    pub started_ms: i64,
    /// Epoch ms, when it ended.
    pub finished_ms: Option<i64>,
    /// `running`, `paused`, `succeeded`, `rolled_back`, `aborted`, `superseded`.
    pub outcome: String,
    /// JSON: why it ended, progress.
    pub detail: String,
}

impl DeploymentRow {
    /// The row as the API shows it: `canary` and `detail` as JSON, not text.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["canary"] = parsed(&self.canary);
        v["detail"] = parsed(&self.detail);
        v
    }
}

/// A row of `probe_results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProbeRow {
    /// Generated id.
    pub id: String,
    /// Epoch ms.
    pub at_ms: i64,
    /// Service.
    pub service: String,
    /// Probe name.
    pub probe: String,
    /// What was probed (an upstream address, a container).
    pub target: String,
    /// `stable` or `canary`.
    pub arm: String,
    /// `success`, `failure`, `timeout`, `error`.
    pub status: String,
    /// How long it took.
    pub latency_us: Option<i64>,
    /// What went wrong, or the answer (truncated).
    pub detail: String,
    /// The deployment running at the time.
    pub deployment_id: Option<String>,
}

/// A row of `table_snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SnapshotRow {
    /// `run-version`.
    pub id: String,
    /// The run that published it.
    pub run: String,
    /// Table version.
    pub version: i64,
    /// Epoch ms.
    pub at_ms: i64,
    /// What caused it (an event kind and id).
    pub cause: String,
    /// The whole routing state, JSON.
    pub snapshot: String,
}

/// A row of `arm_minutes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArmMinuteRow {
    /// Service.
    pub service: String,
    /// `stable` or `canary`.
    pub arm: String,
    /// Start of the minute, epoch ms.
    pub minute_ms: i64,
    /// The run that measured it.
    pub run: String,
    /// The deployment running then.
    pub deployment_id: Option<String>,
    /// The arm's upstreams, comma separated.
    pub upstreams: String,
    /// Requests finished in the minute.
    pub requests: i64,
    /// 5xx plus no response.
    pub failures: i64,
    /// 4xx.
    pub status_4xx: i64,
    /// Latency quantiles and mean, ms.
    pub p50_ms: Option<f64>,
    /// p95, ms.
    pub p95_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// mean, ms.
    pub mean_ms: Option<f64>,
}

/// A service and its config as of now (rows of `services` and `config_versions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// Name.
    pub name: String,
    /// Fingerprint of the config.
    pub fingerprint: String,
    /// Epoch ms.
    pub at_ms: i64,
    /// Where the config came from (the file).
    pub source: String,
    /// The config, JSON.
    pub config: String,
}

/// A row of `releases`: a service's version run as containers, with their snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ReleaseRow {
    /// The deployment's id (or `SERVICE-initial-...`).
    pub id: String,
    /// Service.
    pub service: String,
    /// The image as asked.
    pub image: String,
    /// The image id it resolved to.
    pub image_id: String,
    /// `preparing`, `candidate`, `stable`, `retired`, `failed`.
    pub state: String,
    /// Each container's snapshot, JSON.
    pub containers: String,
    /// Epoch ms.
    pub created_ms: i64,
    /// Epoch ms.
    pub updated_ms: i64,
}

impl ReleaseRow {
    /// The row as the API shows it: containers as JSON, not text.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["containers"] = parsed(&self.containers);
        v
    }
}

/// Anything written to history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An event.
    Event(EventRow),
    /// A deployment's current state.
    Deployment(DeploymentRow),
    /// A probe result.
    Probe(ProbeRow),
    /// A routing table.
    Snapshot(SnapshotRow),
    /// An arm's minute.
    ArmMinute(ArmMinuteRow),
    /// A service's config.
    Service(ServiceRow),
    /// A release's current state.
    Release(ReleaseRow),
}

impl Record {
    /// The table it goes to (for counts and logs).
    pub fn table(&self) -> &'static str {
        match self {
            Record::Event(_) => "events",
            Record::Deployment(_) => "deployments",
            Record::Probe(_) => "probe_results",
            Record::Snapshot(_) => "table_snapshots",
            Record::ArmMinute(_) => "arm_minutes",
            Record::Service(_) => "services",
            Record::Release(_) => "releases",
        }
    }
}
