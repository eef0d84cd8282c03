//! A deployment's state and strategy as values: one model each, serialised by serde as the
//! names history keeps (`running`, `rolled_back`, `blue_green`, ...).

use std::fmt;

use serde::Serialize;

/// Where a deployment is. Its last three are a plan's [`Outcome`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Receiving traffic.
    Running,
    /// A planned deployment waiting for an operator.
    Paused,
    /// Promoted to stable.
    Succeeded,
    /// Cut back (by the judge or an operator) and held.
    RolledBack,
    /// Its canary went away without a promotion.
    Aborted,
    /// Replaced by a newer canary.
    Superseded,
}

impl DeploymentState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Running => "running",
            DeploymentState::Paused => "paused",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Aborted => "aborted",
            DeploymentState::Superseded => "superseded",
        }
    }
}

impl From<Outcome> for DeploymentState {
    fn from(o: Outcome) -> DeploymentState {
        match o {
            Outcome::Succeeded => DeploymentState::Succeeded,
            Outcome::RolledBack => DeploymentState::RolledBack,
            Outcome::Aborted => DeploymentState::Aborted,
        }
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a deployment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Promoted.
    Succeeded,
    /// Cut back (by the judge, or an operator's rollback).
    RolledBack,
    /// Stopped by an operator (an instant rollback).
    Aborted,
}

impl Outcome {
    /// The stored outcome name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
        }
    }
}

/// How a deployment moves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Weighted steps, judged at each.
    Canary,
    /// The whole new version verified, then switched at once.
    BlueGreen,
    /// Instances replaced in batches.
    Rolling,
}

impl Strategy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue_green",
            Strategy::Rolling => "rolling",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
