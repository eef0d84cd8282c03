//! Deployment plans: what each strategy does next, as pure state machines of their inputs
//! and a clock (tested with virtual time).
//!
//! Every strategy keeps the new version in the canary arm, so the judge, the shield and the
//! one-swap cut-back protect all of them the same way:
//! - **canary**: steps of weight, bake time and minimum samples (or a pause for a manual
//!   decision); after the last step the canary is promoted.
//! - **blue-green**: green sits at 0 % (reachable with the tester header: the preview) until
//!   its probes have passed for `verify_for`; then all traffic switches to it in one swap
//!   while blue stays in the stable arm, warm, for `keep_blue_for` (a breach swaps back);
//!   then green is promoted.
//! - **rolling**: the N stable instances are replaced by N new ones in batches: a batch's old
//!   instances leave the stable arm (drained: no new requests, those in flight finish, at
//!   most `drain_timeout`), its new ones join the canary arm, whose weight is the share of
//!   instances replaced; each batch is health-gated (`health_wait`, probes) before the next.
//!   On a breach traffic goes back to the old instances at once, then the replaced old
//!   instances rejoin the stable arm in reverse order.
//!
//! The controller feeds [`Inputs`] every tick and applies the [`Want`]s.

pub use super::state::Outcome;
use std::time::Duration;

use serde::Serialize;

use crate::types::Weight;

/// The judge's current view, as a plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Nothing wrong.
    Healthy,
    /// Too little canary traffic.
    Inconclusive,
    /// A breach (the controller acts on it; plans only wait).
    Breach,
}

impl Judged {
    /// The name people read.
    pub fn as_str(self) -> &'static str {
        match self {
            Judged::Healthy => "healthy",
            Judged::Inconclusive => "inconclusive",
            Judged::Breach => "breach",
        }
    }
}

/// A duration for people: `0.3s`, `12s`, `5m 0s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 600.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}m {}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// What a plan sees each tick.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The plan's clock.
    pub now: Duration,
    /// The judge's view.
    pub judged: Judged,
    /// Canary requests since the current phase began.
    pub samples: u64,
    /// Probes: `None` when the service has none; else since when every canary upstream
    /// passes them (`Some(None)`: not all pass now).
    pub probes: Option<Option<Duration>>,
    /// Requests routed by the tables before the last change of arms have all finished.
    pub drained: bool,
}

/// What a plan asks the controller to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Set the canary weight.
    Weight(Weight),
    /// Rolling: the first `replaced` old instances are out of the stable arm and the first
    /// `replaced` new ones are in the canary arm, at `weight`.
    Reshape {
        /// Instances replaced so far.
        replaced: usize,
        /// Canary weight.
        weight: Weight,
    },
    /// Rolling revert: old instances `keep..` are back in the stable arm.
    Restore {
        /// Old instances still out.
        out: usize,
    },
    /// Make the canary the new stable.
    Promote,
    /// Cut the canary back to 0 (the judge usually has already).
    CutBack(String),
    /// The deployment is over.
    Finish(Outcome, String),
    /// A phase met its progress deadline (what follows says what the plan did about it).
    Stalled(Stall),
}

/// Where a plan is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Canary step `index`.
    Step {
        /// Which step.
        index: usize,
    },
    /// Blue-green: green at 0 %, waiting for its probes.
    Verify,
    /// Blue-green: green has all traffic, blue is warm.
    KeepBlue,
    /// Rolling: waiting for a batch's old instances to drain.
    Drain {
        /// Instances replaced including this batch.
        replaced: usize,
    },
    /// Rolling: health gate of a batch.
    Gate {
        /// Instances replaced including this batch.
        replaced: usize,
    },
    /// Rolling: pause before the next batch.
    Between {
        /// Instances replaced so far.
        replaced: usize,
    },
    /// Rolling: putting old instances back after a failure.
    Reverting {
        /// Old instances still out.
        out: usize,
    },
    /// Over.
    Done,
}

/// A running plan.
#[derive(Debug, Clone)]
pub struct Plan {
    spec: Spec,
    phase: Phase,
    /// When the current phase began (plan clock, pauses excluded).
    entered: Duration,
    /// Paused since (wall of the plan clock), if paused.
    paused_at: Option<Duration>,
    /// Time spent paused in the current phase.
    paused_for: Duration,
    /// Why it is paused or waiting, for people.
    waiting: Option<String>,
    outcome: Option<Outcome>,
    /// Rolling: instances replaced when a failure began.
    replaced_at_failure: Option<usize>,
    /// The phase it was in when it failed.
    failed_in: Option<Phase>,
    /// How long a phase may wait for what it needs (none: forever).
    deadline: Option<Deadline>,
    /// Time in the phase when it was last resumed: the deadline counts from there.
    resumed_in_phase: Duration,
}

/// The plan's state for the API.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Strategy and settings.
    pub spec: Spec,
    /// Phase.
    pub phase: Phase,
    /// Time in this phase (pauses excluded), ms.
    pub in_phase_ms: u64,
    /// Paused by an operator (or a step-back).
    pub paused: bool,
    /// What it waits for.
    pub waiting: Option<String>,
    /// Canary steps: which of how many.
    pub step: Option<(usize, usize)>,
    /// Rolling: instances replaced so far.
    pub replaced: Option<usize>,
    /// Rolling: instances replaced when it failed.
    pub replaced_at_failure: Option<usize>,
    /// The phase it failed in (a canary step, the warm period, a batch).
    pub failed_in: Option<Phase>,
    /// The progress deadline, if one.
    pub deadline: Option<Deadline>,
    /// How it ended.
    pub outcome: Option<Outcome>,
}

fn weight_of(replaced: usize, instances: usize) -> Weight {
    let p = 100.0 * replaced as f64 / instances.max(1) as f64;
    Weight::from_percent(p.clamp(0.0, 100.0)).unwrap_or(Weight::FULL)
}

impl Plan {
    /// Starts a plan at `now` with a progress deadline (or none); returns what to do first.
    pub fn start(spec: Spec, deadline: Option<Deadline>, now: Duration) -> (Plan, Vec<Want>) {
        let (phase, wants) = match &spec {
            Spec::Canary { steps, .. } => (
                Phase::Step { index: 0 },
                vec![Want::Weight(
                    steps.first().map(|s| s.weight).unwrap_or(Weight::ZERO),
                )],
            ),
            Spec::BlueGreen { .. } => (Phase::Verify, vec![Want::Weight(Weight::ZERO)]),
            Spec::Rolling {
                instances,
                batch_size,
                ..
            } => {
                let replaced = (*batch_size).min(*instances);
                (
                    Phase::Drain { replaced },
                    vec![Want::Reshape {
                        replaced,
                        weight: weight_of(replaced, *instances),
                    }],
                )
            }
        };
        let plan = Plan {
            spec,
            phase,
            entered: now,
            paused_at: None,
            paused_for: Duration::ZERO,
            waiting: None,
            outcome: None,
            replaced_at_failure: None,
            failed_in: None,
            deadline,
            resumed_in_phase: Duration::ZERO,
        };
        (plan, wants)
    }

    /// The strategy.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The progress deadline.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// Where it is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Whether it is over.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether an operator (or a step-back) paused it.
    pub fn paused(&self) -> bool {
        self.paused_at.is_some()
    }

    fn in_phase(&self, now: Duration) -> Duration {
        let paused_now = self
            .paused_at
            .map(|p| now.saturating_sub(p))
            .unwrap_or_default();
        now.saturating_sub(self.entered)
            .saturating_sub(self.paused_for + paused_now)
    }

    fn enter(&mut self, phase: Phase, now: Duration) {
        self.phase = phase;
        self.entered = now;
        self.paused_for = Duration::ZERO;
        self.resumed_in_phase = Duration::ZERO;
        if let Some(p) = self.paused_at.as_mut() {
            *p = now;
        }
        self.waiting = None;
    }

    fn finish(&mut self, outcome: Outcome, why: String) -> Want {
        self.phase = Phase::Done;
        self.outcome = Some(outcome);
        self.paused_at = None;
        self.waiting = None;
        Want::Finish(outcome, why)
    }

    /// One tick: moves on when the current phase is satisfied.
    pub fn tick(&mut self, i: &Inputs) -> Vec<Want> {
        if self.done() || self.paused() {
            return Vec::new();
        }
        let elapsed = self.in_phase(i.now);
        match self.phase.clone() {
            Phase::Step { index } => {
                let Spec::Canary { steps, .. } = &self.spec else {
                    return Vec::new();
                };
                let step = steps[index].clone();
                let last = index + 1 == steps.len();
                if step.pause {
                    self.paused_at = Some(i.now);
                    self.waiting = Some(format!(
                        "step {} of {} waits for an operator: resume to continue, promote to finish",
                        index + 1,
                        steps.len()
                    ));
                    return Vec::new();
                }
                if elapsed < step.bake {
                    self.waiting = Some(format!(
                        "baking at {}: {} of {}",
                        step.weight,
                        secs(elapsed),
                        secs(step.bake)
                    ));
                    return Vec::new();
                }
                // A step that asks for no samples only needs the judge not to object.
                let proven = if step.min_samples == 0 {
                    i.judged != Judged::Breach
                } else {
                    i.judged == Judged::Healthy && i.samples >= step.min_samples
                };
                if !proven {
                    let why = format!(
                        "baked; waiting for a healthy judge with {} canary samples (have {}, judge {})",
                        step.min_samples, i.samples, i.judged.as_str()
                    );
                    return self.wait_for(i, elapsed.saturating_sub(step.bake), why);
                }
                if last {
                    let done = self.finish(Outcome::Succeeded, "every step passed".into());
                    return vec![Want::Promote, done];
                }
                let next = steps[index + 1].weight;
                self.enter(Phase::Step { index: index + 1 }, i.now);
                vec![Want::Weight(next)]
            }
            Phase::Verify => {
                let Spec::BlueGreen {
                    verify_for,
                    auto_switch,
                    ..
                } = self.spec
                else {
                    return Vec::new();
                };
                let verified = match i.probes {
                    Some(Some(since)) => {
                        i.now.saturating_sub(since.max(self.entered)) >= verify_for
                    }
                    _ => false,
                };
                if !verified {
                    let why = match i.probes {
                        None => {
                            // A person's decision, not a stall.
                            self.waiting =
                                Some("green has no probes to verify it: promote to switch".into());
                            return Vec::new();
                        }
                        Some(None) => "green's probes do not all pass yet".into(),
                        Some(Some(_)) => {
                            format!("green's probes pass; verifying for {}", secs(verify_for))
                        }
                    };
                    return self.wait_for(i, elapsed.saturating_sub(verify_for), why);
                }
                if !auto_switch {
                    self.waiting = Some("green verified: promote to switch".into());
                    return Vec::new();
                }
                self.enter(Phase::KeepBlue, i.now);
                vec![Want::Weight(Weight::FULL)]
            }
            Phase::KeepBlue => {
                let Spec::BlueGreen { keep_blue_for, .. } = self.spec else {
                    return Vec::new();
                };
                if elapsed < keep_blue_for {
                    self.waiting = Some(format!(
                        "all traffic on green; blue warm for {} more",
                        secs(keep_blue_for.saturating_sub(elapsed))
                    ));
                    return Vec::new();
                }
                let done = self.finish(Outcome::Succeeded, "green kept all traffic".into());
                vec![Want::Promote, done]
            }
            Phase::Drain { replaced } => {
                let Spec::Rolling { drain_timeout, .. } = self.spec else {
                    return Vec::new();
                };
                if !i.drained && elapsed < drain_timeout {
                    self.waiting = Some("draining the batch's old instances".into());
                    return Vec::new();
                }
                self.enter(Phase::Gate { replaced }, i.now);
                Vec::new()
            }
            Phase::Gate { replaced } => {
                let Spec::Rolling {
                    instances,
                    health_wait,
                    pause_between,
                    ..
                } = self.spec
                else {
                    return Vec::new();
                };
                let probes_ok = match i.probes {
                    None => true,
                    Some(Some(since)) => i.now.saturating_sub(since) >= health_wait,
                    Some(None) => false,
                };
                if elapsed < health_wait || !probes_ok || i.judged == Judged::Breach {
                    let why = format!(
                        "health gate: {replaced} of {instances} new instances must stay healthy for {}",
                        secs(health_wait)
                    );
                    return self.wait_for(i, elapsed.saturating_sub(health_wait), why);
                }
                if replaced >= instances {
                    let done = self.finish(Outcome::Succeeded, "every instance replaced".into());
                    return vec![Want::Promote, done];
                }
                if pause_between.is_zero() {
                    return self.next_batch(replaced, i.now);
                }
                self.enter(Phase::Between { replaced }, i.now);
                Vec::new()
            }
            Phase::Between { replaced } => {
                let Spec::Rolling { pause_between, .. } = self.spec else {
                    return Vec::new();
                };
                if elapsed < pause_between {
                    self.waiting = Some("pause between batches".into());
                    return Vec::new();
                }
                self.next_batch(replaced, i.now)
            }
            Phase::Reverting { out } => {
                if out == 0 {
                    let updated = self.replaced_at_failure.unwrap_or(0);
                    let done = self.finish(
                        Outcome::RolledBack,
                        format!("{updated} updated instance(s) reverted; every old instance serves again"),
                    );
                    return vec![done];
                }
                // One old instance back per tick: the most recently replaced first.
                self.phase = Phase::Reverting { out: out - 1 };
                vec![Want::Restore { out: out - 1 }]
            }
            Phase::Done => Vec::new(),
        }
    }

    fn next_batch(&mut self, replaced: usize, now: Duration) -> Vec<Want> {
        let Spec::Rolling {
            instances,
            batch_size,
            ..
        } = self.spec
        else {
            return Vec::new();
        };
        let next = (replaced + batch_size).min(instances);
        self.enter(Phase::Drain { replaced: next }, now);
        vec![Want::Reshape {
            replaced: next,
            weight: weight_of(next, instances),
        }]
    }

    /// Instances replaced so far (rolling).
    pub fn replaced(&self) -> Option<usize> {
        match self.phase {
            Phase::Drain { replaced } | Phase::Gate { replaced } | Phase::Between { replaced } => {
                Some(replaced)
            }
            _ => None,
        }
    }

    /// The judge found a breach. `soft`: a latency regression. Returns what to do (the
    /// controller has not cut back yet when a step-back is wanted).
    pub fn breached(&mut self, soft: bool, now: Duration, reason: &str) -> Vec<Want> {
        if self.done() {
            return Vec::new();
        }
        if let (
            Spec::Canary {
                steps,
                soft_rollback: SoftRollback::StepBack,
            },
            Phase::Step { index },
            true,
        ) = (&self.spec, &self.phase, soft)
        {
            if *index > 0 {
                let back = index - 1;
                let w = steps[back].weight;
                self.enter(Phase::Step { index: back }, now);
                self.paused_at = Some(now);
                self.waiting = Some(format!(
                    "stepped back to {w} after a latency regression ({reason}): resume to retry, abort to roll back"
                ));
                return vec![Want::Weight(w)];
            }
        }
        self.fail(Outcome::RolledBack, now, reason)
    }

    /// An operator aborts: an instant rollback.
    pub fn abort(&mut self, now: Duration) -> Vec<Want> {
        if self.done() {
            return Vec::new();
        }
        self.fail(Outcome::Aborted, now, "aborted by an operator")
    }

    fn fail(&mut self, outcome: Outcome, now: Duration, reason: &str) -> Vec<Want> {
        self.failed_in = Some(self.phase.clone());
        let mut wants = vec![Want::CutBack(reason.to_string())];
        if let Spec::Rolling { .. } = self.spec {
            let replaced = self.replaced().unwrap_or(0);
            self.replaced_at_failure = Some(replaced);
            if replaced > 0 {
                self.outcome = Some(outcome);
                self.enter(Phase::Reverting { out: replaced }, now);
                self.paused_at = None;
                self.waiting = Some("reverting: old instances rejoin, most recent first".into());
                return wants;
            }
        }
        wants.push(self.finish(outcome, reason.to_string()));
        wants
    }

    /// An operator pauses it.
    pub fn pause(&mut self, now: Duration) -> bool {
        self.pause_because(now, "paused by an operator")
    }

    /// Pauses it, saying why.
    pub fn pause_because(&mut self, now: Duration, why: &str) -> bool {
        if self.done() || self.paused() {
            return false;
        }
        self.paused_at = Some(now);
        self.waiting = Some(why.to_string());
        true
    }

    /// An operator resumes it (a paused canary step then moves on).
    pub fn resume(&mut self, now: Duration) -> Vec<Want> {
        let Some(at) = self.paused_at.take() else {
            return Vec::new();
        };
        self.paused_for += now.saturating_sub(at);
        self.waiting = None;
        self.resumed_in_phase = self.in_phase(now);
        // A manual-decision step is passed by resuming it.
        if let (Spec::Canary { steps, .. }, Phase::Step { index }) = (&self.spec, &self.phase) {
            if steps[*index].pause {
                if *index + 1 == steps.len() {
                    let done = self.finish(Outcome::Succeeded, "resumed past the last step".into());
                    return vec![Want::Promote, done];
                }
                let next = steps[index + 1].weight;
                self.enter(Phase::Step { index: index + 1 }, now);
                return vec![Want::Weight(next)];
            }
        }
        Vec::new()
    }

    /// An operator promotes: skip what is left. For rolling, every remaining instance is
    /// replaced at once.
    pub fn promote(&mut self) -> Vec<Want> {
        self.promote_because("promoted by an operator".into())
    }

    fn promote_because(&mut self, why: String) -> Vec<Want> {
        if self.done() || matches!(self.phase, Phase::Reverting { .. }) {
            return Vec::new();
        }
        let mut wants = Vec::new();
        if let Spec::Rolling { instances, .. } = self.spec {
            wants.push(Want::Reshape {
                replaced: instances,
                weight: Weight::FULL,
            });
        }
        wants.push(Want::Promote);
        wants.push(self.finish(Outcome::Succeeded, why));
        wants
    }

    /// The state for the API.
    pub fn progress(&self, now: Duration) -> Progress {
        let step = match (&self.spec, &self.phase) {
            (Spec::Canary { steps, .. }, Phase::Step { index }) => Some((index + 1, steps.len())),
            _ => None,
        };
        Progress {
            spec: self.spec.clone(),
            phase: self.phase.clone(),
            in_phase_ms: self.in_phase(now).as_millis() as u64,
            paused: self.paused(),
            waiting: self.waiting.clone(),
            step,
            replaced: self.replaced(),
            replaced_at_failure: self.replaced_at_failure,
            failed_in: self.failed_in.clone(),
            deadline: self.deadline,
            outcome: self.outcome,
        }
    }
}

mod deadline;
mod spec;
#[cfg(test)]
mod tests;

pub use deadline::{Deadline, OnDeadline, Stall, DEFAULT_PROGRESS_DEADLINE};
pub use spec::{SoftRollback, Spec, Step};
