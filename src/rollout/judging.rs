//! The controller's judging pass: every canary's evidence through `decide`, hysteresis,
//! and what a breach that holds does (report, step back, cut back).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use watch::{Board, JudgeStatus};

use super::*;
use crate::events::{Event, EventKind, NewEvent};
use crate::judge::{decide, Action, Hysteresis, Verdict};
use crate::routing::Service;
use crate::time::now_ms;
use crate::types::ServiceState;

impl Controller {
    /// Rotates the windows. The controller reads one clock, tokio's (virtual in tests, the
    /// system's monotonic clock otherwise, the one the data plane records with).
    pub(super) fn maintain_windows(&self) {
        let at = tokio::time::Instant::now().into_std();
        let table = self.table.load();
        for s in &table.services {
            s.stable.stats.maintain_at(at);
            if let Some(c) = &s.canary {
                c.stats.maintain_at(at);
            }
        }
    }

    /// Judges every canary that is receiving its weight, acts on breaches, and refreshes
    /// the board.
    pub fn judge_all(&mut self) {
        let now = tokio::time::Instant::now();
        self.last_judged = Some(now);
        let clock = now - self.started;
        let at = now.into_std();
        let table = self.table.load_full();
        let mut board = Board::with_capacity(table.services.len());
        for service in &table.services {
            let name = service.name().to_string();
            let verdict = match (
                service.state,
                watch::evidence(service, at, &self.probing, &self.usage),
            ) {
                (ServiceState::Canary, Some(mut e)) => {
                    e.sustained = self.sustained_counts(service, at);
                    e.analysis_failures = self.analyzing.failures(service);
                    let policy = &service.config.cutback;
                    let verdict = decide(&e, policy);
                    let h = self.hysteresis.entry(name.clone()).or_default();
                    match h.observe(&verdict, clock, policy.breach_for) {
                        Action::None => {}
                        Action::Watch => self.report_breach(service, &verdict, false),
                        Action::Cleared => self.report_cleared(service, &verdict),
                        Action::CutBack if policy.enabled => self.breach_acted(service, &verdict),
                        Action::CutBack => self.report_breach(service, &verdict, true),
                    }
                    Some(verdict)
                }
                _ => {
                    self.hysteresis.remove(&name);
                    self.sustained.remove(&name);
                    None
                }
            };
            let watching = self.hysteresis.get(&name).is_some_and(Hysteresis::watching);
            board.insert(
                name.clone(),
                JudgeStatus {
                    verdict,
                    at_ms: now_ms(),
                    watching,
                    last_decision: self.last_decision.get(&name).cloned(),
                    probes: self.probing.views(service),
                    analysis: self.analyzing.views(service),
                    canary_healthy_since_ms: self.probing.canary_healthy_since(service),
                },
            );
        }
        self.board.store(Arc::new(board));
        self.deployment_views
            .store(Arc::new(self.deployment_views()));
    }

    /// Both arms over the canary's life so far, brought up to `at` (a new canary version
    /// starts afresh).
    fn sustained_counts(
        &mut self,
        service: &Service,
        at: std::time::Instant,
    ) -> Option<crate::judge::SustainedCounts> {
        let canary = &service.canary.as_ref()?.stats;
        let stable = &service.stable.stats;
        let weight = service.weight.units();
        let s = self
            .sustained
            .entry(service.name().to_string())
            .or_insert_with(|| crate::judge::Sustained::new(stable, canary, weight, at));
        if !s.is_for(canary) {
            *s = crate::judge::Sustained::new(stable, canary, weight, at);
        }
        Some(s.observe(stable, canary, weight, at).clone())
    }

    /// A breach that holds: a deployment may step back (soft regressions, when asked);
    /// otherwise the canary is cut back, unless the previous version is gone.
    pub(super) fn breach_acted(&mut self, service: &Service, verdict: &Verdict) {
        let Some(b) = verdict.breach() else {
            return;
        };
        let name = service.name().to_string();
        if self.deployment_breached(&name, b.rule.is_soft(), &b.reason) {
            return;
        }
        if let Some(why) = self.previous_version_gone(&name) {
            // Say it once a minute at most; the canary keeps serving.
            let now = tokio::time::Instant::now();
            if self
                .refused
                .get(&name)
                .is_none_or(|t| now - *t > Duration::from_secs(60))
            {
                self.refused.insert(name.clone(), now);
                self.refuse_rollback(&name, &why, "judge");
            }
            self.pending_wants.remove(&name);
            return;
        }
        self.cut_back(service, verdict);
        self.after_cut_back(&name);
    }

    pub(super) fn remember(&mut self, event: &Arc<Event>) {
        if let Some(service) = &event.service {
            self.last_decision.insert(service.clone(), event.clone());
        }
    }

    pub(super) fn report_breach(&mut self, service: &Service, verdict: &Verdict, dry_run: bool) {
        let policy = &service.config.cutback;
        let message = if dry_run {
            format!("{} (cut-back disabled: nothing done)", verdict.summary())
        } else {
            format!(
                "{}; cutting back if it holds for {}",
                verdict.summary(),
                crate::time::format_duration(policy.breach_for)
            )
        };
        let event = self.bus.publish(
            NewEvent::new(EventKind::Breach, "judge", message)
                .service(service.name().to_string())
                .deployment(self.keeper.deployment_of(service.name()))
                .evidence(json!({ "verdict": verdict, "policy": policy })),
        );
        self.remember(&event);
    }

    pub(super) fn report_cleared(&mut self, service: &Service, verdict: &Verdict) {
        let event = self.bus.publish(
            NewEvent::new(
                EventKind::BreachCleared,
                "judge",
                format!("breach cleared before the cut-back: {}", verdict.summary()),
            )
            .service(service.name().to_string())
            .deployment(self.keeper.deployment_of(service.name()))
            .evidence(json!({ "verdict": verdict, "policy": &service.config.cutback })),
        );
        self.remember(&event);
    }

    /// The automatic rollback: same path as the operator's, with the verdict as evidence.
    pub(super) fn cut_back(&mut self, service: &Service, verdict: &Verdict) {
        let Some(breach) = verdict.breach() else {
            return;
        };
        let rule = breach.rule.as_str();
        let reason = breach.reason.clone();
        // The canary's latest failed requests, by id: the app's logs have the rest.
        let failed = service
            .canary
            .as_ref()
            .map(|c| c.stats.failed_requests())
            .unwrap_or_default();
        let evidence = json!({
            "verdict": verdict,
            "policy": &service.config.cutback,
            "failed_requests": failed,
            "analysis": self.analyzing.latest(service).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
        let result = self.change(service.name(), "judge", evidence, |old, _| {
            ops::rollback(old, &reason)
        });
        match result {
            Ok(_) => self.metrics.rollback(service.name(), rule),
            Err(e) => tracing::warn!(service = service.name(), error = %e, "cut-back refused"),
        }
    }
}
