//! Progress deadlines: a phase that waits for what it needs (samples, a healthy judge,
//! passing probes) longer than its deadline beyond its own minimum stops waiting silently:
//! the deployment pauses, rolls back, or promotes when its probes pass, and says so.
//!
//! Waits that belong to a person (a manual step, a verified green waiting for promote) are
//! not stalls: they never meet the deadline.

use std::time::Duration;

use serde::Serialize;

use super::{secs, Inputs, Outcome, Plan, Want};

/// The deadline when a deployment names none.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// What a stalled deployment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadline {
    /// Pause where it is and tell someone (the default).
    #[default]
    Pause,
    /// Roll back: the previous version takes the traffic again.
    Rollback,
    /// Promote when every canary upstream passes its probes now; otherwise pause.
    PromoteIfProbesHealthy,
}

impl OnDeadline {
    /// Every choice, as the API and the CLI spell them.
    pub const ALL: [OnDeadline; 3] = [
        OnDeadline::Pause,
        OnDeadline::Rollback,
        OnDeadline::PromoteIfProbesHealthy,
    ];

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDeadline::Pause => "pause",
            OnDeadline::Rollback => "rollback",
            OnDeadline::PromoteIfProbesHealthy => "promote_if_probes_healthy",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<OnDeadline> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

/// How long a phase may wait beyond its own minimum, and what then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deadline {
    /// The wait allowed.
    #[serde(with = "crate::time::text")]
    pub after: Duration,
    /// What happens when it is over.
    pub on: OnDeadline,
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline {
            after: DEFAULT_PROGRESS_DEADLINE,
            on: OnDeadline::Pause,
        }
    }
}

/// A stall as the controller reports it (event, notification).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    /// The deadline that was met.
    pub deadline: Deadline,
    /// What the phase was waiting for.
    pub waiting: String,
    /// What the deployment did about it.
    pub action: &'static str,
}

impl Plan {
    /// A phase waits for a condition; `beyond` is how long it has waited past its own
    /// minimum (a bake, `verify_for`, `health_wait`). Sets what it waits for and, once the
    /// wait since the phase began or was last resumed reaches the deadline, acts on it.
    pub(super) fn wait_for(&mut self, i: &Inputs, beyond: Duration, why: String) -> Vec<Want> {
        let Some(deadline) = self.deadline else {
            self.waiting = Some(why);
            return Vec::new();
        };
        let waited = beyond.min(self.in_phase(i.now).saturating_sub(self.resumed_in_phase));
        if waited < deadline.after {
            self.waiting = Some(why);
            return Vec::new();
        }
        let stalled = format!("no progress for {}: {why}", secs(deadline.after));
        let probes_pass = matches!(i.probes, Some(Some(_)));
        let (action, mut wants) = match deadline.on {
            OnDeadline::Rollback => (
                "rolled back",
                self.fail(Outcome::RolledBack, i.now, &stalled),
            ),
            OnDeadline::PromoteIfProbesHealthy if probes_pass => (
                "promoted (its probes pass)",
                self.promote_because(format!("{stalled}; promoted, the canary's probes pass")),
            ),
            on => {
                let why_pause = if on == OnDeadline::Pause {
                    String::new()
                } else if i.probes.is_none() {
                    " (not promoted: the service has no probes)".to_string()
                } else {
                    " (not promoted: the canary's probes do not all pass)".to_string()
                };
                self.paused_at = Some(i.now);
                self.waiting = Some(format!(
                    "{stalled}; paused{why_pause}: resume to wait again, promote or abort"
                ));
                ("paused", Vec::new())
            }
        };
        wants.insert(
            0,
            Want::Stalled(Stall {
                deadline,
                waiting: why,
                action,
            }),
        );
        wants
    }
}
