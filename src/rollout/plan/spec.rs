//! What a deployment asks for: its strategy and the strategy's settings.

use std::time::Duration;

use serde::Serialize;

use super::super::state::Strategy;
use crate::types::Weight;

/// One step of a canary plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Weight for this step.
    pub weight: Weight,
    /// How long to stay before moving on.
    #[serde(with = "crate::time::text")]
    pub bake: Duration,
    /// Canary requests needed during the bake (with a healthy judge) to move on.
    pub min_samples: u64,
    /// Wait here for an operator (resume moves on, promote finishes).
    pub pause: bool,
}

/// What to do on a soft (latency) breach during a canary plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SoftRollback {
    /// Cut back at once, like any breach (the default).
    #[default]
    Instant,
    /// Go back one step and pause; hard failures are still instant.
    StepBack,
}

/// A strategy and its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum Spec {
    /// Weight steps.
    Canary {
        /// The steps.
        steps: Vec<Step>,
        /// Latency regressions step back instead of cutting back.
        soft_rollback: SoftRollback,
    },
    /// Preview, verify, switch, keep blue warm.
    BlueGreen {
        /// Green's probes must pass this long before the switch.
        #[serde(with = "crate::time::text")]
        verify_for: Duration,
        /// Blue stays ready this long after the switch.
        #[serde(with = "crate::time::text")]
        keep_blue_for: Duration,
        /// Switch by itself once verified (else wait for promote).
        auto_switch: bool,
    },
    /// Instance by instance.
    Rolling {
        /// Instances in all (old and new alike).
        instances: usize,
        /// Instances replaced per batch.
        batch_size: usize,
        /// Instances out of service at once (a batch never exceeds it).
        max_unavailable: usize,
        /// Wait between batches.
        #[serde(with = "crate::time::text")]
        pause_between: Duration,
        /// Longest wait for a batch's old instances to finish their requests.
        #[serde(with = "crate::time::text")]
        drain_timeout: Duration,
        /// How long new instances must stay healthy before the next batch.
        #[serde(with = "crate::time::text")]
        health_wait: Duration,
    },
}

impl Spec {
    /// Its strategy.
    pub fn strategy(&self) -> Strategy {
        match self {
            Spec::Canary { .. } => Strategy::Canary,
            Spec::BlueGreen { .. } => Strategy::BlueGreen,
            Spec::Rolling { .. } => Strategy::Rolling,
        }
    }

    /// `canary`, `blue_green` or `rolling`.
    pub fn name(&self) -> &'static str {
        match self {
            Spec::Canary { .. } => "canary",
            Spec::BlueGreen { .. } => "blue_green",
            Spec::Rolling { .. } => "rolling",
        }
    }
}
