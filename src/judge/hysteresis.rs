//! Hysteresis over verdicts: a soft breach must hold for `breach_for` before it acts; a
//! hard one acts at once. Pure: time is passed in.

use std::time::Duration;

use super::Verdict;

/// What the controller should do after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing.
    None,
    /// A breach started; wait `breach_for` before acting (report it).
    Watch,
    /// A breach cleared before it was acted on (report it).
    Cleared,
    /// Cut the canary back now.
    CutBack,
}

/// Hysteresis over verdicts: soft breaches must hold for `breach_for`; hard ones act at
/// once. Pure: time is passed in.
#[derive(Debug, Clone, Default)]
pub struct Hysteresis {
    since: Option<Duration>,
}

impl Hysteresis {
    /// Feeds one verdict observed at `now` (any monotonic origin).
    pub fn observe(&mut self, verdict: &Verdict, now: Duration, breach_for: Duration) -> Action {
        match verdict.breach() {
            Some(b) if b.rule.is_immediate() || breach_for.is_zero() => {
                self.since = None;
                Action::CutBack
            }
            Some(_) => match self.since {
                None => {
                    self.since = Some(now);
                    Action::Watch
                }
                Some(start) if now.saturating_sub(start) >= breach_for => {
                    self.since = None;
                    Action::CutBack
                }
                Some(_) => Action::None,
            },
            None => {
                if self.since.take().is_some() {
                    Action::Cleared
                } else {
                    Action::None
                }
            }
        }
    }

    /// Whether a breach is being watched.
    pub fn watching(&self) -> bool {
        self.since.is_some()
    }

    /// Forgets any breach being watched (a new canary, a manual change).
    pub fn reset(&mut self) {
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{ArmFigures, Breach, Rule};
    use crate::stats::WindowSnapshot;

    const MS: Duration = Duration::from_millis(10);

    #[test]
    fn hysteresis_waits_for_soft_breaches_only() {
        let breach = |rule| Verdict::Breach {
            breach: Breach {
                rule,
                reason: String::new(),
                threshold: 0.0,
                observed: 0.0,
                p_value: None,
                confidence: 0.99,
            },
            stable: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            canary: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            probes: Vec::new(),
        };
        let healthy = Verdict::Healthy {
            note: None,
            stable: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
            canary: ArmFigures::of(&WindowSnapshot::empty(MS), 0),
        };
        let hold = Duration::from_millis(200);
        let at = Duration::from_millis;
        let mut h = Hysteresis::default();
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(0), hold),
            Action::Watch
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(100), hold),
            Action::None
        );
        assert_eq!(h.observe(&healthy, at(150), hold), Action::Cleared);
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(300), hold),
            Action::Watch
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(500), hold),
            Action::CutBack
        );
        assert_eq!(
            h.observe(&breach(Rule::ConsecutiveFailures), at(600), hold),
            Action::CutBack
        );
        assert_eq!(
            h.observe(&breach(Rule::ErrorRate), at(0), Duration::ZERO),
            Action::CutBack
        );
    }
}
