//! The spool: records on their way to the database, never lost and never blocking traffic.
//!
//! Every record is appended to a local file first (one JSON line), so a record survives the
//! database being down and the gate restarting. A bounded in-memory queue keeps a copy of
//! the latest records so that, while the database keeps up, the writer never reads the
//! file back; once the queue is full (the database is slow or down), new records are only
//! in the file and the writer catches up from it, in order. After each batch the writer
//! stores the committed offset (`<spool>.offset`); on start, everything after it is
//! replayed. Writes are idempotent, so a batch written twice (a crash between the commit and
//! the offset) changes nothing. When the file reaches `spool_max_bytes` new records are
//! dropped, counted (`sluice_store_dropped_total`) and logged: never silently.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::{Record, SnapshotRow, Store};
use crate::config::StoreConfig;

/// Records the in-memory queue holds before the writer reads from the file instead.
pub const MEMORY_RECORDS: usize = 4096;
/// Records written per transaction.
pub const BATCH: usize = 256;
/// The file is emptied once fully written and at least this large (or a quarter of
/// `spool_max_bytes`, if that is smaller).
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;

struct State {
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes already in the database.
    committed: u64,
    /// Records after `committed`, with the file offset where each ends.
    memory: VecDeque<(u64, Record)>,
    /// The queue stopped taking records; they are read back from the file.
    spilled: bool,
}

/// Counters of a spool.
#[derive(Debug, Default)]
pub struct SpoolCounters {
    /// Records accepted.
    pub accepted: AtomicU64,
    /// Records written to the database.
    pub written: AtomicU64,
    /// Records refused because the spool was full (or its file failed).
    pub dropped: AtomicU64,
    /// Failed database writes (each retried).
    pub write_errors: AtomicU64,
    /// Unreadable lines skipped while reading the file back.
    pub corrupt: AtomicU64,
}

/// The spool. Cheap to share (`Arc`).
pub struct Spool {
    state: Mutex<State>,
    notify: Notify,
    path: PathBuf,
    offset_path: PathBuf,
    max_bytes: u64,
    /// Its counters.
    pub counters: SpoolCounters,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).finish()
    }
}

fn offset_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".offset");
    PathBuf::from(p)
}

/// Why a record was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// `spool_max_bytes` reached.
    #[error("spool full ({0} bytes): record dropped")]
    Full(u64),
    /// The spool file cannot be written.
    #[error("spool file: {0}")]
    Io(#[from] io::Error),
}

impl Spool {
    /// Opens (or creates) the spool file; repairs a line cut by a crash; everything after
    /// the stored offset is pending.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Spool> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            // A crash mid-append leaves a partial last line: cut back to the last newline.
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                let mut content = Vec::new();
                file.seek(SeekFrom::Start(0))?;
                file.read_to_end(&mut content)?;
                let keep = content
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i as u64 + 1)
                    .unwrap_or(0);
                file.set_len(keep)?;
                len = keep;
            }
        }
        let offset_path = offset_path(path);
        let committed = std::fs::read_to_string(&offset_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(len);
        Ok(Spool {
            state: Mutex::new(State {
                file,
                len,
                committed,
                memory: VecDeque::new(),
                spilled: committed < len,
            }),
            notify: Notify::new(),
            path: path.to_path_buf(),
            offset_path,
            max_bytes,
            counters: SpoolCounters::default(),
        })
    }

    /// Appends a record. Never waits on the database; refuses (and counts) when full.
    pub fn push(&self, record: Record) -> Result<(), SpoolError> {
        let mut line = match serde_json::to_vec(&record) {
            Ok(v) => v,
            Err(e) => return Err(SpoolError::Io(io::Error::other(e))),
        };
        line.push(b'\n');
        let result = {
            let mut s = self.state.lock();
            if s.len - s.committed + line.len() as u64 > self.max_bytes {
                Err(SpoolError::Full(self.max_bytes))
            } else {
                match s.file.write_all(&line) {
                    Ok(()) => {
                        s.len += line.len() as u64;
                        let end = s.len;
                        if !s.spilled && s.memory.len() < MEMORY_RECORDS {
                            s.memory.push_back((end, record));
                        } else {
                            s.spilled = true;
                        }
                        Ok(())
                    }
                    Err(e) => Err(SpoolError::Io(e)),
                }
            }
        };
        match &result {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Relaxed);
                self.notify.notify_one();
            }
            Err(e) => {
                let n = self.counters.dropped.fetch_add(1, Relaxed) + 1;
                // Log the first and then every 1000th, with the running count.
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::error!(dropped = n, error = %e, "history record dropped");
                }
            }
        }
        result
    }

    /// Bytes accepted but not yet in the database.
    pub fn pending_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.len - s.committed
    }

    /// The next records to write (at most `max`) and the offset they end at.
    pub fn next_batch(&self, max: usize) -> io::Result<Option<(Vec<Record>, u64)>> {
        let from = {
            let s = self.state.lock();
            if let Some((end, _)) = s.memory.front() {
                let _ = end;
                let batch: Vec<(u64, Record)> = s.memory.iter().take(max).cloned().collect();
                let end = batch.last().map(|(e, _)| *e).unwrap_or(s.committed);
                return Ok(Some((batch.into_iter().map(|(_, r)| r).collect(), end)));
            }
            if !s.spilled || s.committed >= s.len {
                return Ok(None);
            }
            s.committed
        };
        // Spilled: read back from the file (only the writer does this; appends go on).
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(from))?;
        let mut records = Vec::new();
        let mut end = from;
        let mut line = Vec::new();
        while records.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // end of file, or a line still being appended
            }
            end += n as u64;
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.counters.corrupt.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, offset = end - n as u64, "unreadable spool line skipped");
                }
            }
        }
        if end == from {
            return Ok(None);
        }
        Ok(Some((records, end)))
    }

    /// Marks everything up to `end` as written; rotates the file once it is all written.
    pub fn commit(&self, end: u64, records: usize) -> io::Result<()> {
        self.counters.written.fetch_add(records as u64, Relaxed);
        let mut s = self.state.lock();
        s.committed = s.committed.max(end);
        while s.memory.front().is_some_and(|(e, _)| *e <= end) {
            s.memory.pop_front();
        }
        if s.spilled && s.committed >= s.len {
            s.spilled = false;
            s.memory.clear();
        }
        if s.committed >= s.len && s.len >= ROTATE_BYTES.min(self.max_bytes / 4) {
            s.file.set_len(0)?;
            s.len = 0;
            s.committed = 0;
        }
        let committed = s.committed;
        drop(s);
        let tmp = self.offset_path.with_extension("offset.tmp");
        std::fs::write(&tmp, format!("{committed}\n"))?;
        std::fs::rename(&tmp, &self.offset_path)
    }

    /// The records accepted but not yet in the database that `keep` selects, oldest first.
    ///
    /// Readers that must see their own writes (a deployment's view right after its last
    /// event) read this *before* querying the database: a record the writer commits in
    /// between is then in the database by the time it is queried, so nothing falls between.
    pub fn pending(&self, keep: impl Fn(&Record) -> bool) -> io::Result<Vec<Record>> {
        let from = {
            let s = self.state.lock();
            if !s.spilled {
                return Ok(s
                    .memory
                    .iter()
                    .filter(|(_, r)| keep(r))
                    .map(|(_, r)| r.clone())
                    .collect());
            }
            s.committed
        };
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(from))?;
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // end of file, or a line still being appended
            }
            if let Ok(r) = serde_json::from_slice::<Record>(&line) {
                if keep(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The latest routing-table snapshot among the records not yet written (for restoring
    /// state when the database is behind or unreachable).
    pub fn latest_pending_snapshot(&self) -> io::Result<Option<SnapshotRow>> {
        let from = self.state.lock().committed;
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(from))?;
        let mut latest: Option<SnapshotRow> = None;
        for line in reader.split(b'\n') {
            let line = line?;
            if let Ok(Record::Snapshot(s)) = serde_json::from_slice::<Record>(&line) {
                if latest.as_ref().is_none_or(|l| s.at_ms >= l.at_ms) {
                    latest = Some(s);
                }
            }
        }
        Ok(latest)
    }

    /// Waits until a record is pushed.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// The writer task: connects (retrying while the database is unreachable), moves spooled
/// records to the database in order, prunes old rows hourly, and on shutdown tries for a
/// short while to write what is left (the rest stays in the spool for the next start).
pub async fn run_writer(
    spool: Arc<Spool>,
    config: StoreConfig,
    shared: Arc<ArcSwapOption<Store>>,
    up: prometheus::IntGauge,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut last_prune = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut logged_down = false;
    loop {
        let stopping = *shutdown.borrow();
        let store = match shared.load_full() {
            Some(s) => s,
            None => match Store::open(&config.url).await {
                Ok(s) => {
                    tracing::info!(url = %config.url, "history store connected");
                    let s = Arc::new(s);
                    shared.store(Some(s.clone()));
                    up.set(1);
                    logged_down = false;
                    s
                }
                Err(e) => {
                    up.set(0);
                    if !logged_down {
                        tracing::warn!(error = %e, pending_bytes = spool.pending_bytes(), "history store unreachable; records wait in the spool");
                        logged_down = true;
                    }
                    if stopping {
                        return;
                    }
                    sleep_or_stop(&mut shutdown, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            let now = crate::time::now_ms() as i64;
            let probes = now - config.probe_retention.as_millis() as i64;
            let samples = now - config.sample_retention.as_millis() as i64;
            match store.prune(probes, samples).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old probe results and samples"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
            last_prune = tokio::time::Instant::now();
        }
        let batch = match spool.next_batch(BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                sleep_or_stop(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((records, end)) = batch else {
            if stopping {
                return;
            }
            tokio::select! {
                _ = spool.wait() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            continue;
        };
        match store.write(&records).await {
            Ok(()) => {
                up.set(1);
                logged_down = false;
                backoff = Duration::from_millis(100);
                if let Err(e) = spool.commit(end, records.len()) {
                    tracing::error!(error = %e, "cannot record the spool offset");
                }
            }
            Err(e) => {
                up.set(0);
                spool.counters.write_errors.fetch_add(1, Relaxed);
                if !logged_down {
                    tracing::warn!(error = %e, pending_bytes = spool.pending_bytes(), "history write failed; records wait in the spool");
                    logged_down = true;
                }
                if stopping {
                    return;
                }
                sleep_or_stop(&mut shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventRow;

    fn event(i: i64) -> Record {
        Record::Event(EventRow {
            id: format!("run-{i:010}"),
            seq: i,
            at_ms: i,
            kind: "weight_set".into(),
            service: Some("web".into()),
            deployment_id: None,
            actor: "test".into(),
            message: format!("event {i}"),
            table_from: None,
            table_to: None,
            evidence: "{}".into(),
        })
    }

    fn drain(spool: &Spool) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some((batch, end)) = spool.next_batch(7).unwrap() {
            let n = batch.len();
            out.extend(batch);
            spool.commit(end, n).unwrap();
        }
        out
    }

    #[test]
    fn records_come_out_in_order_from_memory_and_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.spool"), 1 << 30).unwrap();
        let n = MEMORY_RECORDS as i64 + 500; // more than the queue holds
        for i in 0..n {
            spool.push(event(i)).unwrap();
        }
        let out = drain(&spool);
        assert_eq!(out, (0..n).map(event).collect::<Vec<_>>());
        assert_eq!(spool.pending_bytes(), 0);
        // After catching up, the queue takes records again.
        spool.push(event(n)).unwrap();
        assert_eq!(drain(&spool), vec![event(n)]);
    }

    #[test]
    fn a_restart_replays_what_was_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.spool");
        {
            let spool = Spool::open(&path, 1 << 30).unwrap();
            for i in 0..10 {
                spool.push(event(i)).unwrap();
            }
            let (batch, end) = spool.next_batch(4).unwrap().unwrap();
            assert_eq!(batch.len(), 4);
            spool.commit(end, 4).unwrap();
        }
        // A crash cut the last append in half.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"type\":\"event\",\"id\":").unwrap();
        let spool = Spool::open(&path, 1 << 30).unwrap();
        assert_eq!(drain(&spool), (4..10).map(event).collect::<Vec<_>>());
        spool.push(event(10)).unwrap();
        assert_eq!(drain(&spool), vec![event(10)]);
    }

    #[test]
    fn a_full_spool_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.spool"), 1000).unwrap();
        let mut refused = 0;
        for i in 0..50 {
            if spool.push(event(i)).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert_eq!(spool.counters.dropped.load(Relaxed), refused);
        let kept = drain(&spool);
        assert_eq!(kept.len() as u64 + refused, 50);
        // Once written, there is room again.
        assert!(spool.push(event(99)).is_ok());
    }

    #[test]
    fn the_file_rotates_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.spool");
        let spool = Spool::open(&path, 1 << 30).unwrap();
        let mut i = 0;
        while std::fs::metadata(&path).unwrap().len() < ROTATE_BYTES {
            spool.push(event(i)).unwrap();
            i += 1;
            if i % 1000 == 0 {
                drain(&spool);
            }
        }
        drain(&spool);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        spool.push(event(i)).unwrap();
        assert_eq!(drain(&spool), vec![event(i)]);
    }
}
