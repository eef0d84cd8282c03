//! External analysis: what the gate cannot see inline (checkouts, sign-ups, database
//! errors, queue depth), read from Prometheus while a canary serves, and judged by a
//! `failure_condition`.
//!
//! Each `[[services.analysis]]` runs as one task per canary version ([`run`]): every
//! `interval` it renders its query for the canary (and, when the condition reads `stable`,
//! for stable), asks Prometheus, and sends a [`Measurement`] to the controller: `passed`,
//! `failed` (the condition holds) or `inconclusive` (Prometheus unreachable, an error, no
//! series or several, a value that is not a number). The controller keeps an
//! [`AnalysisState`] per task: more failed measurements than `failure_limit` is a breach the
//! judge acts on like any other rule; `max_inconclusive` inconclusive ones in a row pause a
//! running deployment and say so, never a rollback on their own.

pub mod condition;
pub mod prometheus;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::sync::mpsc;

pub use condition::Condition;

use crate::types::ArmRole;

/// How often an analysis measures.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How long one query may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed measurements tolerated before the breach (0: the first one breaches).
pub const DEFAULT_FAILURE_LIMIT: u32 = 0;
/// Inconclusive measurements in a row that pause a deployment.
pub const DEFAULT_MAX_INCONCLUSIVE: u32 = 3;
/// Measurements kept per analysis for the API and the evidence.
pub const RECENT_MEASUREMENTS: usize = 10;
/// Longest error text kept with a measurement.
const DETAIL_LIMIT: usize = 512;

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `[[services.analysis]]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisSpec {
    /// Unique within the service.
    pub name: String,
    /// `prometheus` (the one kind so far).
    pub kind: &'static str,
    /// Prometheus' base address (`http://127.0.0.1:9090`).
    pub address: String,
    /// PromQL with `{service}`, `{arm}`, `{canary_version}`, `{stable_version}`.
    pub query: String,
    /// Default [`DEFAULT_INTERVAL`].
    #[serde(with = "crate::time::text")]
    pub interval: Duration,
    /// Default [`DEFAULT_TIMEOUT`].
    #[serde(with = "crate::time::text")]
    pub timeout: Duration,
    /// When a measurement fails.
    pub failure_condition: Condition,
    /// Default [`DEFAULT_FAILURE_LIMIT`].
    pub failure_limit: u32,
    /// Default [`DEFAULT_MAX_INCONCLUSIVE`].
    pub max_inconclusive: u32,
}

/// What a query's placeholders stand for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Context {
    /// The service's name.
    pub service: String,
    /// The canary's version: its deployment's label, else its upstreams.
    pub canary_version: String,
    /// Stable's: the label of the deployment that made it, else its upstreams.
    pub stable_version: String,
}

/// A value as it goes inside a PromQL string literal (`"..."`): backslashes and quotes
/// escaped, so a version label cannot end the literal and change the query.
fn literal(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The query for `arm`.
pub fn render(query: &str, ctx: &Context, arm: ArmRole) -> String {
    query
        .replace("{service}", &literal(&ctx.service))
        .replace("{arm}", arm.as_str())
        .replace("{canary_version}", &literal(&ctx.canary_version))
        .replace("{stable_version}", &literal(&ctx.stable_version))
}

/// How a measurement came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The condition does not hold.
    Passed,
    /// The condition holds.
    Failed,
    /// No answer to judge by.
    Inconclusive,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Epoch ms.
    pub at_ms: u64,
    /// How it came out.
    pub outcome: Outcome,
    /// The canary query's value.
    pub canary: Option<f64>,
    /// Stable's, when the condition reads it.
    pub stable: Option<f64>,
    /// The queries as sent (canary first).
    pub queries: Vec<String>,
    /// For people: the condition with its values, or why there is no answer.
    pub detail: String,
}

/// Which task: the canary generation keeps one version's measurements apart from the
/// next's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnalysisKey {
    /// Service.
    pub service: String,
    /// Analysis name.
    pub analysis: String,
    /// The canary generation it measures.
    pub generation: u64,
}

/// A measurement on its way to the controller.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Which task.
    pub key: AnalysisKey,
    /// What it found.
    pub measurement: Measurement,
}

fn clip(mut s: String) -> String {
    if s.len() > DETAIL_LIMIT {
        let mut cut = DETAIL_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Measures once.
pub async fn measure(spec: &AnalysisSpec, ctx: &Context, client: &reqwest::Client) -> Measurement {
    let mut queries = vec![render(&spec.query, ctx, ArmRole::Canary)];
    if spec.failure_condition.needs_stable() {
        queries.push(render(&spec.query, ctx, ArmRole::Stable));
    }
    let ask =
        |q: String| async move { prometheus::query(client, &spec.address, &q, spec.timeout).await };
    let canary = ask(queries[0].clone()).await;
    let stable = match queries.get(1) {
        Some(q) => Some(ask(q.clone()).await),
        None => None,
    };
    let at_ms = crate::time::now_ms();
    let (canary, stable) = match (canary, stable) {
        (Err(e), _) => {
            return Measurement {
                at_ms,
                outcome: Outcome::Inconclusive,
                canary: None,
                stable: None,
                queries,
                detail: clip(format!("canary query: {}", e.0)),
            }
        }
        (Ok(c), Some(Err(e))) => {
            return Measurement {
                at_ms,
                outcome: Outcome::Inconclusive,
                canary: Some(c),
                stable: None,
                queries,
                detail: clip(format!("stable query: {}", e.0)),
            }
        }
        (Ok(c), Some(Ok(s))) => (c, Some(s)),
        (Ok(c), None) => (c, None),
    };
    let values = match stable {
        Some(s) => format!("canary = {canary}, stable = {s}"),
        None => format!("result = {canary}"),
    };
    let (outcome, detail) = match spec.failure_condition.holds(canary, stable) {
        Some(true) => (
            Outcome::Failed,
            format!("{} holds with {values}", spec.failure_condition),
        ),
        Some(false) => (
            Outcome::Passed,
            format!("{} does not hold with {values}", spec.failure_condition),
        ),
        None => (
            Outcome::Inconclusive,
            format!(
                "{} cannot be computed with {values}",
                spec.failure_condition
            ),
        ),
    };
    Measurement {
        at_ms,
        outcome,
        canary: Some(canary),
        stable,
        queries,
        detail: clip(detail),
    }
}

/// Measures every `interval` (the first after one interval, so the canary has served)
/// until the controller stops listening or aborts the task.
pub async fn run(
    key: AnalysisKey,
    spec: Arc<AnalysisSpec>,
    ctx: Context,
    client: reqwest::Client,
    tx: mpsc::Sender<Observation>,
) {
    loop {
        tokio::time::sleep(spec.interval).await;
        let measurement = measure(&spec, &ctx, &client).await;
        let obs = Observation {
            key: key.clone(),
            measurement,
        };
        if tx.send(obs).await.is_err() {
            return;
        }
    }
}

/// What the controller knows of one analysis of one canary version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnalysisState {
    /// Measurements so far.
    pub measurements: u32,
    /// Failed ones.
    pub failures: u32,
    /// Inconclusive ones in a row, up to the latest.
    pub inconclusive_in_a_row: u32,
    /// The latest measurements, newest last.
    pub recent: VecDeque<Measurement>,
}

/// What a measurement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Failures now exceed the limit (this measurement made it so).
    pub failed: bool,
    /// Inconclusive measurements in a row just reached `max_inconclusive`.
    pub inconclusive_limit: bool,
}

impl AnalysisState {
    /// Takes a measurement in.
    pub fn observe(&mut self, m: &Measurement, spec: &AnalysisSpec) -> Change {
        let was_failed = self.failed(spec);
        self.measurements = self.measurements.saturating_add(1);
        match m.outcome {
            Outcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                self.inconclusive_in_a_row = 0;
            }
            Outcome::Passed => self.inconclusive_in_a_row = 0,
            Outcome::Inconclusive => {
                self.inconclusive_in_a_row = self.inconclusive_in_a_row.saturating_add(1)
            }
        }
        self.recent.push_back(m.clone());
        while self.recent.len() > RECENT_MEASUREMENTS {
            self.recent.pop_front();
        }
        Change {
            failed: !was_failed && self.failed(spec),
            inconclusive_limit: spec.max_inconclusive > 0
                && self.inconclusive_in_a_row == spec.max_inconclusive,
        }
    }

    /// More failed measurements than the limit.
    pub fn failed(&self, spec: &AnalysisSpec) -> bool {
        self.failures > spec.failure_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32) -> AnalysisSpec {
        AnalysisSpec {
            name: "checkouts".into(),
            kind: "prometheus",
            address: "http://127.0.0.1:9".into(),
            query: r#"sum(rate(checkout_failures_total{service="{service}",version="{canary_version}",arm="{arm}"}[1m]))"#.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_condition: Condition::parse("result > 0.01").unwrap(),
            failure_limit: limit,
            max_inconclusive: 2,
        }
    }

    fn m(outcome: Outcome) -> Measurement {
        Measurement {
            at_ms: 0,
            outcome,
            canary: None,
            stable: None,
            queries: Vec::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn queries_are_rendered_per_arm_and_labels_cannot_break_out() {
        let ctx = Context {
            service: "web".into(),
            canary_version: r#"v2"} or vector(1) #"#.into(),
            stable_version: "v1".into(),
        };
        let q = render(&spec(0).query, &ctx, ArmRole::Stable);
        assert_eq!(
            q,
            r#"sum(rate(checkout_failures_total{service="web",version="v2\"} or vector(1) #",arm="stable"}[1m]))"#
        );
    }

    #[test]
    fn failures_past_the_limit_breach_once_and_inconclusive_runs_are_counted() {
        let s = spec(1);
        let mut st = AnalysisState::default();
        assert_eq!(st.observe(&m(Outcome::Failed), &s), Change::default());
        let c = st.observe(&m(Outcome::Failed), &s);
        assert!(c.failed && st.failed(&s));
        assert!(!st.observe(&m(Outcome::Failed), &s).failed, "said once");
        assert!(!st.observe(&m(Outcome::Inconclusive), &s).inconclusive_limit);
        assert!(st.observe(&m(Outcome::Inconclusive), &s).inconclusive_limit);
        assert!(!st.observe(&m(Outcome::Inconclusive), &s).inconclusive_limit);
        st.observe(&m(Outcome::Passed), &s);
        assert_eq!(st.inconclusive_in_a_row, 0);
        for _ in 0..20 {
            st.observe(&m(Outcome::Passed), &s);
        }
        assert_eq!(st.recent.len(), RECENT_MEASUREMENTS);
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_inconclusive() {
        let client = reqwest::Client::new();
        let ctx = Context {
            service: "web".into(),
            canary_version: "v2".into(),
            stable_version: "v1".into(),
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut s = spec(0);
        s.address = format!("http://{addr}");
        let got = measure(&s, &ctx, &client).await;
        assert_eq!(got.outcome, Outcome::Inconclusive);
        assert!(
            got.detail.starts_with("canary query: http://"),
            "{}",
            got.detail
        );
    }
}
