//! History: events, deployments, probe results, routing-table snapshots and per-minute arm
//! numbers, in SQLite (the embedded default) or PostgreSQL, through one sqlx `Any` code path
//! (runtime-checked queries; no database is needed to compile).
//!
//! Nothing on the request path touches it. Records go into the [`spool::Spool`] (an
//! append-only local file with a bounded in-memory queue in front) and a writer task moves
//! them to the database in order, in batches, idempotently; when the database is slow or
//! down they wait in the spool, and a restart replays what was not yet written.

pub mod query;
pub mod records;
pub mod spool;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

pub use records::{
    ArmMinuteRow, DeploymentRow, EventRow, ProbeRow, Record, ReleaseRow, ServiceRow, SnapshotRow,
};

use crate::config::StoreUrl;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a connection attempt may take before the writer retries later.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or opened.
    #[error("cannot open the history store {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The migrations failed.
    #[error("cannot migrate the history store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed (the database went away, say).
    #[error("history store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value could not be read back.
    #[error("history store holds an unreadable value: {0}")]
    Corrupt(String),
}

/// A connection pool to the history database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: &'static str,
}

impl Store {
    /// Connects (creating an SQLite file if needed). Does not migrate.
    pub async fn connect(url: &StoreUrl) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if let StoreUrl::Sqlite(path) = url {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        let sqlite = matches!(url, StoreUrl::Sqlite(_));
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 2 } else { 4 })
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if sqlite {
                        // Readers do not block the writer; a busy database waits, then fails.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 2000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url.connect_url())
            .await
            .map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })?;
        Ok(Store {
            pool,
            backend: url.backend(),
        })
    }

    /// Connects and applies any pending migration.
    pub async fn open(url: &StoreUrl) -> Result<Store, StoreError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes a batch in one transaction. Idempotent: writing the same batch twice leaves
    /// the same rows.
    pub async fn write(&self, batch: &[Record]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for record in batch {
            match record {
                Record::Event(r) => {
                    sqlx::query(
                        "INSERT INTO events (id, seq, at_ms, kind, service, deployment_id, actor, message, table_from, table_to, evidence) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&r.id)
                    .bind(r.seq)
                    .bind(r.at_ms)
                    .bind(&r.kind)
                    .bind(&r.service)
                    .bind(&r.deployment_id)
                    .bind(&r.actor)
                    .bind(&r.message)
                    .bind(r.table_from)
                    .bind(r.table_to)
                    .bind(&r.evidence)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Deployment(r) => {
                    sqlx::query(
                        "INSERT INTO deployments (id, service, label, strategy, canary, started_by, started_ms, finished_ms, outcome, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (id) DO UPDATE SET label = excluded.label, strategy = excluded.strategy, \
                         canary = excluded.canary, finished_ms = excluded.finished_ms, outcome = excluded.outcome, detail = excluded.detail",
                    )
                    .bind(&r.id)
                    .bind(&r.service)
                    .bind(&r.label)
                    .bind(&r.strategy)
                    .bind(&r.canary)
                    .bind(&r.started_by)
                    .bind(r.started_ms)
                    .bind(r.finished_ms)
                    .bind(&r.outcome)
                    .bind(&r.detail)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Probe(r) => {
                    sqlx::query(
                        "INSERT INTO probe_results (id, at_ms, service, probe, target, arm, status, latency_us, detail, deployment_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&r.id)
                    .bind(r.at_ms)
                    .bind(&r.service)
                    .bind(&r.probe)
                    .bind(&r.target)
                    .bind(&r.arm)
                    .bind(&r.status)
                    .bind(r.latency_us)
                    .bind(&r.detail)
                    .bind(&r.deployment_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Snapshot(r) => {
                    sqlx::query(
                        "INSERT INTO table_snapshots (id, run, version, at_ms, cause, snapshot) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&r.id)
                    .bind(&r.run)
                    .bind(r.version)
                    .bind(r.at_ms)
                    .bind(&r.cause)
                    .bind(&r.snapshot)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::ArmMinute(r) => {
                    sqlx::query(
                        "INSERT INTO arm_minutes (service, arm, minute_ms, run, deployment_id, upstreams, requests, failures, status_4xx, p50_ms, p95_ms, p99_ms, mean_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (service, arm, minute_ms, run) DO UPDATE SET deployment_id = excluded.deployment_id, \
                         upstreams = excluded.upstreams, requests = excluded.requests, failures = excluded.failures, \
                         status_4xx = excluded.status_4xx, p50_ms = excluded.p50_ms, p95_ms = excluded.p95_ms, \
                         p99_ms = excluded.p99_ms, mean_ms = excluded.mean_ms",
                    )
                    .bind(&r.service)
                    .bind(&r.arm)
                    .bind(r.minute_ms)
                    .bind(&r.run)
                    .bind(&r.deployment_id)
                    .bind(&r.upstreams)
                    .bind(r.requests)
                    .bind(r.failures)
                    .bind(r.status_4xx)
                    .bind(r.p50_ms)
                    .bind(r.p95_ms)
                    .bind(r.p99_ms)
                    .bind(r.mean_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Service(r) => {
                    sqlx::query(
                        "INSERT INTO services (name, first_seen_ms, last_seen_ms, fingerprint) VALUES ($1, $2, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, fingerprint = excluded.fingerprint",
                    )
                    .bind(&r.name)
                    .bind(r.at_ms)
                    .bind(&r.fingerprint)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO config_versions (id, service, fingerprint, at_ms, source, config) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(format!("{}/{}", r.name, r.fingerprint))
                    .bind(&r.name)
                    .bind(&r.fingerprint)
                    .bind(r.at_ms)
                    .bind(&r.source)
                    .bind(&r.config)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Release(r) => {
                    sqlx::query(
                        "INSERT INTO releases (id, service, image, image_id, state, containers, created_ms, updated_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (id) DO UPDATE SET image_id = excluded.image_id, state = excluded.state, \
                         containers = excluded.containers, updated_ms = excluded.updated_ms",
                    )
                    .bind(&r.id)
                    .bind(&r.service)
                    .bind(&r.image)
                    .bind(&r.image_id)
                    .bind(&r.state)
                    .bind(&r.containers)
                    .bind(r.created_ms)
                    .bind(r.updated_ms)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A service's releases, newest first (at most `limit`).
    pub async fn releases(&self, service: &str, limit: u32) -> Result<Vec<ReleaseRow>, StoreError> {
        let rows = sqlx::query_as::<_, ReleaseRow>(
            "SELECT id, service, image, image_id, state, containers, created_ms, updated_ms FROM releases \
             WHERE service = $1 ORDER BY created_ms DESC, id DESC LIMIT $2",
        )
        .bind(service)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Deletes probe results older than `probe_before_ms` and arm minutes older than
    /// `samples_before_ms`; returns how many rows went.
    pub async fn prune(
        &self,
        probe_before_ms: i64,
        samples_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM probe_results WHERE at_ms < $1")
            .bind(probe_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM arm_minutes WHERE minute_ms < $1")
            .bind(samples_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
    }

    /// The most recent routing-table snapshot, if any.
    pub async fn latest_snapshot(&self) -> Result<Option<SnapshotRow>, StoreError> {
        let row = sqlx::query_as::<_, SnapshotRow>(
            "SELECT id, run, version, at_ms, cause, snapshot FROM table_snapshots ORDER BY at_ms DESC, version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Rows per table (for tests and `sluice migrate`).
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        for table in [
            "services",
            "config_versions",
            "deployments",
            "events",
            "probe_results",
            "table_snapshots",
            "arm_minutes",
            "releases",
        ] {
            // Table names are constants of this function, never input.
            let sql = format!("SELECT COUNT(*) AS n FROM {table}");
            let row: AnyRow = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await?;
            out.push((table.to_string(), row.try_get::<i64, _>("n")?));
        }
        Ok(out)
    }
}

/// The gate's handle on history: where records go, and this run's id (which keeps event and
/// snapshot ids unique across restarts).
#[derive(Clone, Debug)]
pub struct Recorder {
    spool: std::sync::Arc<spool::Spool>,
    run: std::sync::Arc<str>,
}

impl Recorder {
    /// A recorder for a new run, writing into `spool`.
    pub fn new(spool: std::sync::Arc<spool::Spool>) -> Recorder {
        Recorder {
            spool,
            run: format!("{:011x}", crate::time::now_ms()).into(),
        }
    }

    /// This run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The spool.
    pub fn spool(&self) -> &std::sync::Arc<spool::Spool> {
        &self.spool
    }

    /// Keeps a record (a full spool drops it, counting and logging; never waits).
    pub fn record(&self, record: Record) {
        let _ = self.spool.push(record);
    }
}

impl crate::events::EventSink for Recorder {
    fn keep(&self, event: &crate::events::Event) {
        self.record(Record::Event(EventRow::of(&self.run, event)));
    }
}

/// What the admin API needs to read history: the store once connected, and the spool.
#[derive(Clone, Debug)]
pub struct History {
    /// Set by the writer once the database is reachable.
    pub store: std::sync::Arc<arc_swap::ArcSwapOption<Store>>,
    /// The spool (for its backlog figures).
    pub spool: std::sync::Arc<spool::Spool>,
}
