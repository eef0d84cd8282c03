//! Reading history back: events with filters and paging, deployments with their events and
//! probe results, and the health trend of a deployment. Every filter value is a bound
//! parameter; the SQL text is assembled only from constants.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{ArmMinuteRow, DeploymentRow, EventRow, ProbeRow, Record, Store, StoreError};

/// Largest page.
pub const MAX_LIMIT: u32 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 100;

/// Which events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryFilter {
    /// One service.
    pub service: Option<String>,
    /// Any of these kinds.
    pub kinds: Vec<String>,
    /// One deployment.
    pub deployment: Option<String>,
    /// At or after (epoch ms).
    pub since_ms: Option<i64>,
    /// Before (epoch ms).
    pub until_ms: Option<i64>,
    /// Page size.
    pub limit: u32,
    /// Where the previous page stopped.
    pub cursor: Option<Cursor>,
}

impl HistoryFilter {
    /// Whether `e` matches, as the database query would decide (for records still in the
    /// spool).
    pub fn accepts(&self, e: &EventRow) -> bool {
        self.service
            .as_ref()
            .is_none_or(|s| e.service.as_ref() == Some(s))
            && self
                .deployment
                .as_ref()
                .is_none_or(|d| e.deployment_id.as_ref() == Some(d))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms < t)
            && self
                .cursor
                .as_ref()
                .is_none_or(|c| (e.at_ms, e.id.as_str()) < (c.at_ms, c.id.as_str()))
    }

    /// One page of `stored` (the database's page, newest first) merged with the `pending`
    /// events the filter accepts.
    pub fn merge_page(&self, stored: Page<EventRow>, pending: &[EventRow]) -> Page<EventRow> {
        // When the database had more rows than its page, a pending row older than the page's
        // last belongs to a later page (the next cursor finds it there, in the spool or in
        // the database by then).
        let floor = stored
            .next
            .as_ref()
            .and_then(|_| stored.items.last())
            .map(|e| (e.at_ms, e.id.clone()));
        let more_stored = floor.is_some();
        let mut rows = stored.items;
        let accepted: Vec<EventRow> = pending
            .iter()
            .filter(|e| self.accepts(e))
            .filter(|e| floor.as_ref().is_none_or(|f| (e.at_ms, e.id.clone()) > *f))
            .cloned()
            .collect();
        merge_by_id(&mut rows, &accepted, |e| (e.at_ms, e.id.clone()));
        let mut out = page(&mut rows, limit(self.limit), |e| Cursor {
            at_ms: e.at_ms,
            id: e.id.clone(),
        });
        if out.next.is_none() && more_stored {
            out.next = out.items.last().map(|e| {
                Cursor {
                    at_ms: e.at_ms,
                    id: e.id.clone(),
                }
                .encode()
            });
        }
        out
    }
}

/// A position in newest-first order: `(at_ms, id)` of the last row seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Time of the last row.
    pub at_ms: i64,
    /// Id of the last row.
    pub id: String,
}

impl Cursor {
    /// `at_ms:id`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.at_ms, self.id)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once(':')?;
        Some(Cursor {
            at_ms: at.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// A page of rows and where the next one starts.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// Cursor for the next page, if there may be one.
    pub next: Option<String>,
}

enum Bind {
    Text(String),
    Int(i64),
}

/// `WHERE` clauses with numbered placeholders; their values are bound in order.
#[derive(Default)]
struct Clauses {
    parts: Vec<String>,
    binds: Vec<Bind>,
}

impl Clauses {
    fn next(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn add(&mut self, part: String) {
        self.parts.push(part);
    }

    fn sql(&self) -> String {
        if self.parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.parts.join(" AND "))
        }
    }

    fn bind<'q, O>(
        &'q self,
        mut q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
        for b in &self.binds {
            q = match b {
                Bind::Text(t) => q.bind(t.as_str()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// One minute of one arm in a trend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    /// Start of the minute, epoch ms.
    pub minute_ms: i64,
    /// Requests.
    pub requests: i64,
    /// 5xx plus no response.
    pub failures: i64,
    /// failures / requests.
    pub error_rate: f64,
    /// p95 latency, ms (request-weighted across restarts within the minute).
    pub p95_ms: Option<f64>,
}

/// A deployment's health trend: per minute, each arm; and why it was rolled back.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    /// The deployment.
    pub deployment: DeploymentRow,
    /// Per arm (`stable`, `canary`), per minute.
    pub arms: BTreeMap<String, Vec<TrendPoint>>,
    /// Breaches and rollbacks, oldest first.
    pub decisions: Vec<EventRow>,
}

impl Trend {
    /// The trend as a plain-text table.
    pub fn render(&self) -> String {
        let d = &self.deployment;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "deployment {} of {} ({}) by {}: {}",
            d.id,
            d.service,
            d.label.as_deref().unwrap_or("unlabelled"),
            d.started_by,
            d.outcome
        );
        let _ = writeln!(
            out,
            "{:<17} {:>9} {:>8} {:>9}   {:>9} {:>8} {:>9}",
            "minute (UTC)", "stable", "err %", "p95 ms", "canary", "err %", "p95 ms"
        );
        let mut minutes: Vec<i64> = self
            .arms
            .values()
            .flat_map(|v| v.iter().map(|p| p.minute_ms))
            .collect();
        minutes.sort_unstable();
        minutes.dedup();
        let cell = |arm: &str, m: i64| {
            self.arms
                .get(arm)
                .and_then(|v| v.iter().find(|p| p.minute_ms == m))
                .map(|p| {
                    format!(
                        "{:>9} {:>8.2} {:>9}",
                        p.requests,
                        p.error_rate * 100.0,
                        p.p95_ms
                            .map(|x| format!("{x:.1}"))
                            .unwrap_or_else(|| "-".into())
                    )
                })
                .unwrap_or_else(|| format!("{:>9} {:>8} {:>9}", "-", "-", "-"))
        };
        for m in minutes {
            let time = crate::time::format_time(m as u64);
            let _ = writeln!(
                out,
                "{:<17} {}   {}",
                &time[..16],
                cell("stable", m),
                cell("canary", m)
            );
        }
        if self.decisions.is_empty() {
            let _ = writeln!(out, "no breach or rollback");
        }
        for e in &self.decisions {
            let _ = writeln!(
                out,
                "{}  {} by {}: {}",
                crate::time::format_time(e.at_ms as u64),
                e.kind,
                e.actor,
                e.message
            );
        }
        out
    }
}

/// SQL assembled in this module: column lists and clauses from constants, placeholders
/// numbered by [`Clauses`]; no value ever goes into the text.
fn audited(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn limit(l: u32) -> i64 {
    i64::from(if l == 0 {
        DEFAULT_LIMIT
    } else {
        l.min(MAX_LIMIT)
    })
}

const EVENT_COLUMNS: &str =
    "id, seq, at_ms, kind, service, deployment_id, actor, message, table_from, table_to, evidence";
const DEPLOYMENT_COLUMNS: &str =
    "id, service, label, strategy, canary, started_by, started_ms, finished_ms, outcome, detail";
const PROBE_COLUMNS: &str =
    "id, at_ms, service, probe, target, arm, status, latency_us, detail, deployment_id";

impl Store {
    /// Events matching `f`, newest first, one page.
    pub async fn history(&self, f: &HistoryFilter) -> Result<Page<EventRow>, StoreError> {
        let mut c = Clauses::default();
        if let Some(s) = &f.service {
            let p = c.next(Bind::Text(s.clone()));
            c.add(format!("service = {p}"));
        }
        if let Some(d) = &f.deployment {
            let p = c.next(Bind::Text(d.clone()));
            c.add(format!("deployment_id = {p}"));
        }
        if !f.kinds.is_empty() {
            let ps: Vec<String> = f
                .kinds
                .iter()
                .map(|k| c.next(Bind::Text(k.clone())))
                .collect();
            c.add(format!("kind IN ({})", ps.join(", ")));
        }
        if let Some(t) = f.since_ms {
            let p = c.next(Bind::Int(t));
            c.add(format!("at_ms >= {p}"));
        }
        if let Some(t) = f.until_ms {
            let p = c.next(Bind::Int(t));
            c.add(format!("at_ms < {p}"));
        }
        if let Some(cur) = &f.cursor {
            let a = c.next(Bind::Int(cur.at_ms));
            let b = c.next(Bind::Int(cur.at_ms));
            let i = c.next(Bind::Text(cur.id.clone()));
            c.add(format!("(at_ms < {a} OR (at_ms = {b} AND id < {i}))"));
        }
        let n = limit(f.limit);
        let lp = c.next(Bind::Int(n + 1));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events{} ORDER BY at_ms DESC, id DESC LIMIT {lp}",
            c.sql()
        );
        let mut rows = c
            .bind(sqlx::query_as::<_, EventRow>(audited(sql)))
            .fetch_all(self.pool())
            .await?;
        Ok(page(&mut rows, n, |e| Cursor {
            at_ms: e.at_ms,
            id: e.id.clone(),
        }))
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        Ok(sqlx::query_as::<_, DeploymentRow>(audited(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Deployments, newest first.
    pub async fn deployments(
        &self,
        service: Option<&str>,
        lim: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page<DeploymentRow>, StoreError> {
        let mut c = Clauses::default();
        if let Some(s) = service {
            let p = c.next(Bind::Text(s.to_string()));
            c.add(format!("service = {p}"));
        }
        if let Some(cur) = cursor {
            let a = c.next(Bind::Int(cur.at_ms));
            let b = c.next(Bind::Int(cur.at_ms));
            let i = c.next(Bind::Text(cur.id.clone()));
            c.add(format!(
                "(started_ms < {a} OR (started_ms = {b} AND id < {i}))"
            ));
        }
        let n = limit(lim);
        let lp = c.next(Bind::Int(n + 1));
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments{} ORDER BY started_ms DESC, id DESC LIMIT {lp}",
            c.sql()
        );
        let mut rows = c
            .bind(sqlx::query_as::<_, DeploymentRow>(audited(sql)))
            .fetch_all(self.pool())
            .await?;
        Ok(page(&mut rows, n, |d| Cursor {
            at_ms: d.started_ms,
            id: d.id.clone(),
        }))
    }

    /// Probe results of a deployment, newest first.
    pub async fn probe_results(
        &self,
        deployment: &str,
        lim: u32,
    ) -> Result<Vec<ProbeRow>, StoreError> {
        let sql = format!(
            "SELECT {PROBE_COLUMNS} FROM probe_results WHERE deployment_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2"
        );
        Ok(sqlx::query_as::<_, ProbeRow>(audited(sql))
            .bind(deployment)
            .bind(limit(lim))
            .fetch_all(self.pool())
            .await?)
    }

    /// Probe results of a service, newest first.
    pub async fn service_probe_results(
        &self,
        service: &str,
        lim: u32,
    ) -> Result<Vec<ProbeRow>, StoreError> {
        let sql = format!(
            "SELECT {PROBE_COLUMNS} FROM probe_results WHERE service = $1 ORDER BY at_ms DESC, id DESC LIMIT $2"
        );
        Ok(sqlx::query_as::<_, ProbeRow>(audited(sql))
            .bind(service)
            .bind(limit(lim))
            .fetch_all(self.pool())
            .await?)
    }

    /// The health trend of a deployment: each arm's minutes while it ran, and its breaches
    /// and rollbacks.
    pub async fn trend(&self, id: &str) -> Result<Option<Trend>, StoreError> {
        let Some(deployment) = self.deployment(id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query_as::<_, ArmMinuteRow>(
            "SELECT service, arm, minute_ms, run, deployment_id, upstreams, requests, failures, status_4xx, p50_ms, p95_ms, p99_ms, mean_ms \
             FROM arm_minutes WHERE deployment_id = $1 ORDER BY minute_ms, arm",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        // A minute cut by a restart has one row per run: add them up, weighting p95 by
        // requests.
        #[derive(Default)]
        struct Sum {
            requests: i64,
            failures: i64,
            p95_weighted: f64,
            p95_requests: i64,
        }
        let mut arms: BTreeMap<String, BTreeMap<i64, Sum>> = BTreeMap::new();
        for r in rows {
            let e = arms
                .entry(r.arm.clone())
                .or_default()
                .entry(r.minute_ms)
                .or_default();
            e.requests += r.requests;
            e.failures += r.failures;
            if let Some(p) = r.p95_ms {
                e.p95_weighted += p * r.requests as f64;
                e.p95_requests += r.requests;
            }
        }
        let arms = arms
            .into_iter()
            .map(|(arm, minutes)| {
                let points = minutes
                    .into_iter()
                    .map(|(m, s)| TrendPoint {
                        minute_ms: m,
                        requests: s.requests,
                        failures: s.failures,
                        error_rate: if s.requests > 0 {
                            s.failures as f64 / s.requests as f64
                        } else {
                            0.0
                        },
                        p95_ms: (s.p95_requests > 0).then(|| {
                            (s.p95_weighted / s.p95_requests as f64 * 1000.0).round() / 1000.0
                        }),
                    })
                    .collect();
                (arm, points)
            })
            .collect();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE deployment_id = $1 AND kind IN ($2, $3, $4) ORDER BY at_ms, id"
        );
        let decisions = sqlx::query_as::<_, EventRow>(audited(sql))
            .bind(id)
            .bind(DECISION_KINDS[0])
            .bind(DECISION_KINDS[1])
            .bind(DECISION_KINDS[2])
            .fetch_all(self.pool())
            .await?;
        Ok(Some(Trend {
            deployment,
            arms,
            decisions,
        }))
    }
}

fn page<T>(rows: &mut Vec<T>, n: i64, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let more = rows.len() as i64 > n;
    rows.truncate(n as usize);
    let next = if more {
        rows.last().map(|r| cursor(r).encode())
    } else {
        None
    };
    Page {
        items: std::mem::take(rows),
        next,
    }
}

/// What the spool still holds of one deployment: its events, its probe results and its
/// latest row, not yet in the database.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    /// Events, oldest first.
    pub events: Vec<EventRow>,
    /// Probe results, oldest first.
    pub probes: Vec<ProbeRow>,
    /// The latest row written for it.
    pub deployment: Option<DeploymentRow>,
}

impl Pending {
    /// Picks deployment `id`'s records out of the spool's pending ones.
    pub fn of(id: &str, records: Vec<Record>) -> Pending {
        let mut p = Pending::default();
        for r in records {
            match r {
                Record::Event(e) if e.deployment_id.as_deref() == Some(id) => p.events.push(e),
                Record::Probe(r) if r.deployment_id.as_deref() == Some(id) => p.probes.push(r),
                Record::Deployment(d) if d.id == id => p.deployment = Some(d),
                _ => {}
            }
        }
        p
    }

    /// Whether a record of `id` is pending.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.probes.is_empty() && self.deployment.is_none()
    }

    /// `stored` (newest first) with the pending events added, newest first, each once.
    pub fn events_newest_first(&self, mut stored: Vec<EventRow>) -> Vec<EventRow> {
        merge_by_id(&mut stored, &self.events, |e| (e.at_ms, e.id.clone()));
        stored
    }

    /// `stored` probe results (newest first) with the pending ones, newest first, at most
    /// `max`.
    pub fn probes_newest_first(&self, mut stored: Vec<ProbeRow>, max: usize) -> Vec<ProbeRow> {
        merge_by_id(&mut stored, &self.probes, |r| (r.at_ms, r.id.clone()));
        stored.truncate(max);
        stored
    }

    /// A stored trend brought up to date: the pending row replaces the stored one and the
    /// pending decisions join the stored ones.
    pub fn update_trend(&self, trend: &mut Trend) {
        if let Some(d) = &self.deployment {
            trend.deployment = d.clone();
        }
        let decisions: Vec<EventRow> = self
            .events
            .iter()
            .filter(|e| DECISION_KINDS.contains(&e.kind.as_str()))
            .cloned()
            .collect();
        merge_by_id(&mut trend.decisions, &decisions, |e| {
            (e.at_ms, e.id.clone())
        });
        trend.decisions.reverse(); // oldest first, as stored
    }
}

/// The event kinds a trend shows as decisions.
pub const DECISION_KINDS: [&str; 3] = ["breach", "rolled_back", "aborted"];

/// Adds the rows of `more` whose id is not in `rows`, then sorts newest first.
fn merge_by_id<T: Clone>(rows: &mut Vec<T>, more: &[T], key: impl Fn(&T) -> (i64, String)) {
    let known: std::collections::HashSet<String> = rows.iter().map(|r| key(r).1).collect();
    rows.extend(more.iter().filter(|r| !known.contains(&key(r).1)).cloned());
    rows.sort_by_key(|r| std::cmp::Reverse(key(r)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: i64, id: &str, service: &str) -> EventRow {
        EventRow {
            id: id.into(),
            seq: 0,
            at_ms,
            kind: "weight_set".into(),
            service: Some(service.into()),
            deployment_id: None,
            actor: "t".into(),
            message: String::new(),
            table_from: None,
            table_to: None,
            evidence: "null".into(),
        }
    }

    fn ids(p: &Page<EventRow>) -> Vec<&str> {
        p.items.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn pending_events_join_the_page_once_and_in_order() {
        let f = HistoryFilter {
            service: Some("web".into()),
            limit: 10,
            ..Default::default()
        };
        let stored = Page {
            items: vec![event(20, "b", "web"), event(10, "a", "web")],
            next: None,
        };
        // "b" is both written and still pending (the writer's window); "x" is another
        // service's.
        let pending = [
            event(20, "b", "web"),
            event(30, "c", "web"),
            event(40, "x", "db"),
        ];
        let page = f.merge_page(stored, &pending);
        assert_eq!(ids(&page), ["c", "b", "a"]);
        assert!(page.next.is_none());
    }

    #[test]
    fn a_full_database_page_keeps_older_pending_rows_for_the_next_page() {
        let f = HistoryFilter {
            limit: 2,
            ..Default::default()
        };
        let stored = Page {
            items: vec![event(50, "e", "web"), event(40, "d", "web")],
            next: Some("40:d".into()),
        };
        let pending = [event(60, "f", "web"), event(5, "old", "web")];
        let page = f.merge_page(stored, &pending);
        assert_eq!(ids(&page), ["f", "e"]);
        assert_eq!(page.next.as_deref(), Some("50:e"));
        // The next page (cursor 50:e) takes "old" from the spool.
        let next = HistoryFilter {
            cursor: Cursor::decode("50:e"),
            ..f
        };
        let stored = Page {
            items: vec![event(40, "d", "web")],
            next: None,
        };
        assert_eq!(ids(&next.merge_page(stored, &pending)), ["d", "old"]);
    }
}
