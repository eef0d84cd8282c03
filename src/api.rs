//! The admin API's wire contract, shared by the router (`admin`) and the CLI (`cli`): the
//! path prefix, headers, limits and the request bodies each endpoint takes, and the service
//! view it answers with.

use serde::{Deserialize, Serialize};

use crate::rollout::JudgeStatus;
use crate::stats::StatsSummary;

/// Where every API route lives.
pub const PREFIX: &str = "/api/v1";

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Header the CLI sends to say who is asking; recorded as the event's actor.
pub const ACTOR_HEADER: &str = "x-sluice-actor";

/// One arm as the API shows it.
#[derive(Debug, Serialize)]
pub struct ArmView {
    /// Upstreams as given.
    pub upstreams: Vec<String>,
    /// Upstreams their probes took out.
    pub down: Vec<String>,
    /// Every upstream is down and the arm sends to them anyway.
    pub panic: bool,
    /// The live window.
    pub stats: StatsSummary,
    /// Failures in a row up to the latest request.
    pub consecutive_failures: u32,
    /// Requests since the arm was created, by status class (`1xx`..`5xx`, `none`): rates
    /// between two reads.
    pub totals: std::collections::BTreeMap<&'static str, u64>,
}

/// Both arms.
#[derive(Debug, Serialize)]
pub struct ArmsView {
    /// The production arm.
    pub stable: ArmView,
    /// The trial arm, or null.
    pub canary: Option<ArmView>,
}

/// A service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// Host patterns (empty: catch-all).
    pub hosts: Vec<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// `stable`, `canary` or `rolled_back`.
    pub state: &'static str,
    /// Canary weight in percent.
    pub canary_weight: f64,
    /// Canary generation (bumped by each new canary).
    pub generation: u64,
    /// The routing table version this view was read from.
    pub table_version: u64,
    /// Per-arm upstreams and stats.
    pub arms: ArmsView,
    /// The judge's latest verdict on the canary and the last decision about this service.
    pub judge: Option<JudgeStatus>,
    /// Every probe on every upstream: health, counts and latest results.
    pub probes: Vec<crate::rollout::probing::ProbeView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub weight: Option<f64>,
    /// A version label kept in history ("v2", a commit, an image tag).
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    pub weight: f64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    #[serde(default)]
    pub weight: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub bake: Option<String>,
    #[serde(default)]
    pub min_samples: Option<u64>,
    #[serde(default)]
    pub pause: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub strategy: String,
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub steps: Option<Vec<StepBody>>,
    #[serde(default)]
    pub soft_rollback: Option<String>,
    #[serde(default)]
    pub verify_for: Option<String>,
    #[serde(default)]
    pub keep_blue_for: Option<String>,
    #[serde(default)]
    pub auto_switch: Option<bool>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub max_unavailable: Option<usize>,
    #[serde(default)]
    pub pause_between: Option<String>,
    #[serde(default)]
    pub drain_timeout: Option<String>,
    #[serde(default)]
    pub health_wait: Option<String>,
}

/// Step bake time when a step names none.
pub const DEFAULT_BAKE: &str = "30s";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}
