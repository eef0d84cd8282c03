//! The access log: one line per request, written off the request path. A request hands its
//! [`Entry`] to a bounded queue and goes on; a writer thread drains the queue every
//! [`WRITE_INTERVAL`], formatting, writing and flushing the lines in one batch. A full queue drops the line and counts it
//! (`sluice_access_log_dropped_total`): the log never slows a request down. The file is
//! reopened on request (SIGUSR1, logrotate's convention), between two lines, so a rotation
//! loses none.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// One finished request, as the log shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Entry {
    /// When it ended (epoch ms).
    pub time_ms: u64,
    /// The client's address.
    pub client: String,
    /// Method.
    pub method: String,
    /// Host (header or authority).
    pub host: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status sent (0: none, the client went away first).
    pub status: u16,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From the request's header to its end, ms.
    pub duration_ms: f64,
    /// From the request's header to the response's header, ms.
    pub ttfb_ms: Option<f64>,
    /// The service it was routed to.
    pub service: Option<String>,
    /// `stable` or `canary`.
    pub arm: Option<&'static str>,
    /// The upstream that answered (the last one tried).
    pub upstream: Option<String>,
    /// A failed canary attempt was replayed on stable.
    pub shielded: bool,
    /// The request id (`X-Request-Id`).
    pub request_id: String,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The client's `Referer` (the combined format has it).
    #[serde(skip)]
    pub referer: Option<String>,
}

impl Entry {
    /// The line, without its newline.
    pub fn format(&self, format: AccessLogFormat, out: &mut String) {
        match format {
            AccessLogFormat::Json => {
                // Serialising owned strings and numbers cannot fail.
                if let Ok(s) = serde_json::to_string(self) {
                    out.push_str(&s);
                }
            }
            AccessLogFormat::Combined => self.combined(out),
        }
    }

    /// `client - - [time] "METHOD path PROTO" status bytes "referer" "agent"`, then
    /// `host service arm upstream duration ttfb shielded request_id` as `key=value`.
    fn combined(&self, out: &mut String) {
        let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = write!(
            out,
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" host={} service={} arm={} upstream={} duration_ms={:.3} ttfb_ms={} shielded={} request_id={}",
            self.client,
            clf_time(self.time_ms),
            q(&self.method),
            q(&self.path),
            self.protocol,
            self.status,
            self.bytes_out,
            q(self.referer.as_deref().unwrap_or("-")),
            q(self.user_agent.as_deref().unwrap_or("-")),
            q(&self.host),
            self.service.as_deref().unwrap_or("-"),
            self.arm.unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
            self.duration_ms,
            self.ttfb_ms.map(|t| format!("{t:.3}")).unwrap_or_else(|| "-".into()),
            if self.shielded { "yes" } else { "no" },
            self.request_id,
        );
    }
}

/// `02/Dec/2026:04:53:15 +0000`.
fn clf_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `2026-12-02 04:53:15`, taken apart.
    let t = crate::time::format_time(ms);
    let field = |r: std::ops::Range<usize>| t.get(r).unwrap_or("00");
    let month = field(5..7)
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    format!(
        "{}/{month}/{}:{} +0000",
        field(8..10),
        field(0..4),
        field(11..19)
    )
}

/// The request side: hands entries to the writer.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    reopen: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    /// Starts the writer thread for `config`; `dropped` counts the lines a full queue
    /// refused. The thread ends once every `AccessLog` is gone, after writing what it has.
    pub fn start(
        config: &AccessLogConfig,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<(AccessLog, std::thread::JoinHandle<()>)> {
        let (tx, rx) = sync_channel(config.buffer);
        let reopen = Arc::new(AtomicBool::new(false));
        let sink = Sink::open(config.path.clone())?;
        let writer = Writer {
            rx,
            sink,
            format: config.format,
            reopen: reopen.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || writer.run())?;
        Ok((
            AccessLog {
                tx,
                reopen,
                dropped,
            },
            handle,
        ))
    }

    /// Queues one line; drops it (counted) when the queue is full.
    #[inline]
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the writer to reopen its file before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

/// Where lines go.
enum Sink {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
    },
}

impl Sink {
    fn open(path: Option<PathBuf>) -> std::io::Result<Sink> {
        Ok(match path {
            None => Sink::Stdout(std::io::stdout()),
            Some(path) => Sink::File {
                file: std::io::BufWriter::with_capacity(64 * 1024, append(&path)?),
                path,
            },
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }

    /// Flushes, then reopens the file by its name (the old one was renamed away).
    fn reopen(&mut self) -> std::io::Result<()> {
        self.flush()?;
        if let Sink::File { path, file } = self {
            *file = std::io::BufWriter::with_capacity(64 * 1024, append(path)?);
        }
        Ok(())
    }
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

struct Writer {
    rx: Receiver<Entry>,
    sink: Sink,
    format: AccessLogFormat,
    reopen: Arc<AtomicBool>,
}

/// How often the writer drains the queue. Requests never wake it: a wake per line would cost
/// a futex call and a context switch per request (measured: a third of the throughput on
/// one core); lines are at most this late instead.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(100);

impl Writer {
    fn run(mut self) {
        let mut line = String::with_capacity(512);
        loop {
            std::thread::sleep(WRITE_INTERVAL);
            if self.reopen.swap(false, Ordering::AcqRel) {
                if let Err(e) = self.sink.reopen() {
                    tracing::warn!(error = %e, "access log: cannot reopen the file; still writing to the old one");
                }
            }
            let mut gone = false;
            loop {
                match self.rx.try_recv() {
                    Ok(entry) => {
                        line.clear();
                        entry.format(self.format, &mut line);
                        line.push('\n');
                        if let Err(e) = self.sink.write(line.as_bytes()) {
                            tracing::warn!(error = %e, "access log: write failed");
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if let Err(e) = self.sink.flush() {
                tracing::warn!(error = %e, "access log: flush failed");
            }
            if gone {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time_ms: 1_796_190_795_000,
            client: "127.0.0.1:5000".into(),
            method: "GET".into(),
            host: "shop.test".into(),
            path: "/a?\"b\"".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_out: 12,
            duration_ms: 1.5,
            ttfb_ms: Some(1.0),
            service: Some("shop".into()),
            arm: Some("canary"),
            upstream: Some("127.0.0.1:3000".into()),
            request_id: "abc".into(),
            user_agent: Some("curl/8".into()),
            ..Entry::default()
        }
    }

    #[test]
    fn json_lines_parse_back_and_combined_quotes_what_it_must() {
        let mut s = String::new();
        entry().format(AccessLogFormat::Json, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a?\"b\"");
        assert_eq!(v["arm"], "canary");
        assert_eq!(v["shielded"], false);
        s.clear();
        entry().format(AccessLogFormat::Combined, &mut s);
        assert!(
            s.starts_with("127.0.0.1:5000 - - [")
                && s.contains("\"GET /a?\\\"b\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\""),
            "{s}"
        );
        assert!(s.ends_with("shielded=no request_id=abc"), "{s}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let (log, handle) = AccessLog::start(
            &AccessLogConfig {
                path: Some(path.clone()),
                format: AccessLogFormat::Json,
                buffer: 4,
            },
            dropped.clone(),
        )
        .unwrap();
        for _ in 0..1000 {
            log.log(entry());
        }
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen();
        for _ in 0..10 {
            log.log(entry());
        }
        drop(log);
        handle.join().unwrap();
        let count = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map(|s| s.lines().count())
                .unwrap_or(0) as u64
        };
        let written = count(&path) + count(&dir.path().join("access.log.1"));
        assert_eq!(written + dropped.get(), 1010);
    }
}
