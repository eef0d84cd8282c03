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
    /// The certificate each host gets on the TLS listeners (empty when none speaks TLS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<HostCertificate>,
}

/// The certificate a TLS client asking for one host of a service gets.
#[derive(Debug, Clone, Serialize)]
pub struct HostCertificate {
    /// The host pattern, as configured.
    pub host: String,
    /// `file`, `acme`, `default` (no certificate covers it: the default one is served) or
    /// `none` (no certificate: the handshake is refused).
    pub source: &'static str,
    /// The name of the certificate that covers it (a wildcard, say), when one does.
    pub covered_by: Option<String>,
    /// Its issuer.
    pub issuer: Option<String>,
    /// Its expiry (epoch ms).
    pub not_after_ms: Option<u64>,
    /// How the host's ACME orders stand, when ACME keeps its certificate.
    pub acme: Option<crate::acme::NameStatus>,
}

/// `PUT /services/{name}/canary`: a new canary.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    pub upstreams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A version label kept in history ("v2", a commit, an image tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `POST /services/{name}/weight`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    pub weight: f64,
}

/// A command that takes no fields (`promote`); unknown fields are refused.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// `POST /services/{name}/rollback`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(default)]
    pub reason: String,
}

/// `POST /services/{name}/resume`: the weight to resume at (default: the one it had).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// One canary step of a deployment: a weight held for `bake` (default [`DEFAULT_BAKE`]) and at least `min_samples` requests, or a pause.
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
}

/// `POST /services/{name}/deployments`: strategy (`canary`, `blue_green`, `rolling`), the new version (upstreams or an image) and the strategy's settings; absent ones take the service's defaults.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepBody>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_rollback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_blue_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_switch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_between: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_wait: Option<String>,
    /// How long a phase may wait for samples, a healthy judge or probes beyond its own
    /// minimum (default 30m; `0s`: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// `pause` (default), `rollback` or `promote_if_probes_healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_deadline: Option<String>,
}

/// Step bake time when a step names none.
pub const DEFAULT_BAKE: &str = "30s";

/// `POST /freeze` (with a reason) and `POST /unfreeze`: one service, or all when absent.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Paths of the API's resources, under [`PREFIX`]. Names and ids are path segments: the
/// caller passes them as given, and they are percent-encoded here.
pub mod path {
    use super::PREFIX;

    /// Percent-encodes a path segment or query value (RFC 3986 unreserved and `:` kept).
    pub fn encode(v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        for b in v.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// Every service.
    pub fn services() -> String {
        format!("{PREFIX}/services")
    }

    /// One service, or one of its sub-resources (`canary`, `weight`, `promote`, ...).
    pub fn service(name: &str, sub: Option<&str>) -> String {
        match sub {
            Some(sub) => format!("{PREFIX}/services/{}/{sub}", encode(name)),
            None => format!("{PREFIX}/services/{}", encode(name)),
        }
    }

    /// One deployment, or an action on it (`pause`, `resume`, `abort`, `promote`).
    pub fn deployment(id: &str, action: Option<&str>) -> String {
        match action {
            Some(a) => format!("{PREFIX}/deployments/{}/{a}", encode(id)),
            None => format!("{PREFIX}/deployments/{}", encode(id)),
        }
    }

    /// A top-level resource: `reload`, `events`, `history`, `deployments`, `freeze`, ...
    pub fn root(resource: &str) -> String {
        format!("{PREFIX}/{resource}")
    }
}
