//! Real receivers for notifications: an HTTP server on 127.0.0.1:0 that records what it is
//! sent, and a real SMTP server (Python's aiosmtpd) that prints every message it accepts.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path's last segment.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    /// `/flaky/...` answers 500 this many times first.
    flaky_left: AtomicU32,
}

/// An HTTP receiver: `POST /ok/{name}` records and answers 200; `POST /flaky/{name}`
/// answers 503 the first few times (then records and answers 200); `POST /slow/{name}`
/// never answers in time (10 s).
pub struct HttpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        // Tests drop it from async code, where a runtime may not block to shut down.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl HttpReceiver {
    /// Starts one; `/flaky` fails `flaky_failures` times.
    pub fn start(flaky_failures: u32) -> HttpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared::default());
        shared.flaky_left.store(flaky_failures, Ordering::SeqCst);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/ok/{name}", post(record))
            .route("/flaky/{name}", post(flaky))
            .route("/slow/{name}", post(slow))
            .with_state(shared.clone());
        runtime.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(l, app).await;
        });
        HttpReceiver {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://ADDR/{kind}/{name}`.
    pub fn url(&self, kind: &str, name: &str) -> String {
        format!("http://{}/{kind}/{name}", self.addr)
    }

    /// Everything recorded so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// Waits until `f` finds something among the recorded requests.
    pub fn wait_for(&self, limit: Duration, f: impl Fn(&Received) -> bool) -> Received {
        let until = Instant::now() + limit;
        loop {
            if let Some(r) = self.received().into_iter().find(|r| f(r)) {
                return r;
            }
            assert!(
                Instant::now() < until,
                "nothing matching arrived; got {:?}",
                self.received()
                    .iter()
                    .map(|r| r.path.clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn keep(shared: &Shared, name: String, headers: &HeaderMap, body: Bytes) {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    shared.got.lock().unwrap().push(Received {
        path: name,
        headers,
        body: body.to_vec(),
    });
}

async fn record(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    keep(&shared, name, &headers, body);
    StatusCode::OK
}

async fn flaky(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let left = shared.flaky_left.load(Ordering::SeqCst);
    if left > 0 {
        shared.flaky_left.store(left - 1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    keep(&shared, name, &headers, body);
    StatusCode::OK
}

async fn slow() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(10)).await;
    StatusCode::OK
}

/// One message the SMTP server accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mail {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The Subject header, decoded.
    pub subject: String,
    /// The From header.
    pub header_from: String,
    /// The text body, decoded.
    pub body: String,
}

/// A real SMTP server (aiosmtpd) on a free loopback port.
pub struct SmtpServer {
    /// Its port.
    pub port: u16,
    child: Child,
    mails: mpsc::Receiver<Mail>,
}

impl SmtpServer {
    /// Starts one, or returns `None` (skips) when aiosmtpd is missing and tools are not
    /// required.
    pub fn start() -> Option<SmtpServer> {
        let has = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            assert!(
                std::env::var_os("SLUICE_REQUIRE_TOOLS").is_none(),
                "python3 with aiosmtpd is required (scripts/deps installs it)"
            );
            eprintln!("skipped: no aiosmtpd");
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, mails) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else if let Ok(m) = serde_json::from_str::<Mail>(&line) {
                    let _ = tx.send(m);
                }
            }
        });
        ready_rx
            .recv_timeout(super::LONG_WAIT)
            .expect("the SMTP server is ready");
        Some(SmtpServer { port, child, mails })
    }

    /// The next message, within `limit`.
    pub fn next_mail(&self, limit: Duration) -> Mail {
        self.mails
            .recv_timeout(limit)
            .expect("a message reached the SMTP server")
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
