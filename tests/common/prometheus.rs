//! A real Prometheus server for tests (Debian's `prometheus`, which `scripts/deps` installs
//! for promtool), scraping the targets a test names every 500 ms, and a test app whose
//! business metric the test sets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

impl Prometheus {
    /// Starts one scraping `targets` (job name, `host:port`, metrics path), or `None` when
    /// it is not installed (the test skips, unless `SLUICE_REQUIRE_TOOLS` is set).
    pub fn start(targets: &[(&str, String, &str)]) -> Option<Prometheus> {
        Prometheus::start_on(super::loopback_port(), targets)
    }

    /// The same on `port` (for a config that must name it before Prometheus runs).
    pub fn start_on(port: u16, targets: &[(&str, String, &str)]) -> Option<Prometheus> {
        let Some(bin) = which("prometheus") else {
            assert!(
                std::env::var_os("SLUICE_REQUIRE_TOOLS").is_none(),
                "prometheus is required (Debian package 'prometheus'; scripts/deps installs it)"
            );
            eprintln!("skipped: prometheus not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-prom-")
            .tempdir()
            .unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n",
        );
        for (job, addr, path) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Some(Prometheus {
            child,
            _dir: dir,
            address: format!("http://127.0.0.1:{port}"),
        })
    }

    /// One instant query's first value, if it has one.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.address))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `promql` has a value for which `ok` holds.
    pub async fn wait_for(&self, promql: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let until = Instant::now() + limit;
        loop {
            if let Some(v) = self.value(promql).await.filter(|v| ok(*v)) {
                return v;
            }
            assert!(Instant::now() < until, "prometheus: {promql} never held");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A test app exposing `checkout_failures_total{version="v2"}` on `/metrics`, at a value
/// the test sets.
pub struct MetricsApp {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    failures: Arc<AtomicU64>,
}

impl MetricsApp {
    /// Starts it on a free port (a thread answering one request per connection).
    pub fn start() -> MetricsApp {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let failures = Arc::new(AtomicU64::new(0));
        let f = failures.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!(
                    "# TYPE checkout_failures_total counter\ncheckout_failures_total{{version=\"v2\"}} {}\ncheckout_failures_total{{version=\"v1\"}} 0\n",
                    f.load(Ordering::SeqCst)
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        MetricsApp { addr, failures }
    }

    /// Sets the counter.
    pub fn set_failures(&self, n: u64) {
        self.failures.store(n, Ordering::SeqCst);
    }
}
