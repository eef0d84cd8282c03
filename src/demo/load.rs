//! A small load generator: many sticky clients sending at a steady rate through the gate.
//!
//! It runs on its own thread and runtime, keeps a cookie per client (so clients stay on
//! their arm, like browsers), and counts what the clients saw: answers by status class and
//! by the upstream that produced them (`x-upstream` header), transport errors, latency.
//! Bounded: it stops on [`Load::stop`] or at its deadline, whichever comes first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::stats::{ArmStats, WindowSnapshot};
use crate::types::StatusClass;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The gate's proxy address.
    pub target: SocketAddr,
    /// Host header.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Method.
    pub method: Method,
    /// Requests per second, all clients together.
    pub rate: u32,
    /// Concurrent clients, each with its own cookie.
    pub clients: usize,
    /// Hard stop.
    pub max_duration: Duration,
}

impl LoadConfig {
    /// GET / at `rate` from 100 sticky clients (enough that a 10 % canary gets some: with
    /// 20, none would in 12 % of runs), for at most a minute.
    pub fn new(target: SocketAddr, rate: u32) -> LoadConfig {
        LoadConfig {
            target,
            host: "demo.local".into(),
            path: "/".into(),
            method: Method::GET,
            rate,
            clients: 100,
            max_duration: Duration::from_secs(60),
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    server_errors: AtomicU64,
    other_status: AtomicU64,
    transport_errors: AtomicU64,
    by_upstream: Mutex<HashMap<String, u64>>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// 2xx/3xx answers.
    pub ok: u64,
    /// 5xx answers the clients saw.
    pub server_errors: u64,
    /// 1xx/4xx answers.
    pub other_status: u64,
    /// Requests that got no answer.
    pub transport_errors: u64,
    /// Answers per upstream name.
    pub by_upstream: HashMap<String, u64>,
    /// Client-side latency over the last 10 s.
    pub latency: Option<WindowSnapshot>,
}

impl LoadReport {
    /// Answers that came from `upstream`.
    pub fn from_upstream(&self, upstream: &str) -> u64 {
        self.by_upstream.get(upstream).copied().unwrap_or(0)
    }

    /// 5xx plus no answer: what a user would call an error.
    pub fn client_errors(&self) -> u64 {
        self.server_errors + self.transport_errors
    }
}

/// A running load.
pub struct Load {
    counters: Arc<Counters>,
    latency: Arc<ArmStats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts sending.
    pub fn start(config: LoadConfig) -> std::io::Result<Load> {
        let counters = Arc::new(Counters::default());
        let latency = Arc::new(ArmStats::new(Duration::from_secs(10)));
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = {
            let (counters, latency) = (counters.clone(), latency.clone());
            std::thread::Builder::new()
                .name("sluice-load".into())
                .spawn(move || runtime.block_on(drive(config, counters, latency, stopped)))?
        };
        Ok(Load {
            counters,
            latency,
            stop,
            thread: Some(thread),
        })
    }

    /// The counts so far.
    pub fn report(&self) -> LoadReport {
        let c = &self.counters;
        self.latency.maintain();
        LoadReport {
            sent: c.sent.load(Relaxed),
            ok: c.ok.load(Relaxed),
            server_errors: c.server_errors.load(Relaxed),
            other_status: c.other_status.load(Relaxed),
            transport_errors: c.transport_errors.load(Relaxed),
            by_upstream: c.by_upstream.lock().clone(),
            latency: Some(self.latency.snapshot()),
        }
    }

    /// Stops sending, waits for the answers in flight, returns the final counts.
    pub fn stop(mut self) -> LoadReport {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.report()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn drive(
    config: LoadConfig,
    counters: Arc<Counters>,
    latency: Arc<ArmStats>,
    stopped: watch::Receiver<bool>,
) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.clients)
        .build_http();
    let clients = config.clients.max(1);
    let per_client = Duration::from_secs_f64(clients as f64 / config.rate.max(1) as f64);
    let deadline = tokio::time::Instant::now() + config.max_duration;
    let config = Arc::new(config);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (client, config, counters, latency) = (
            client.clone(),
            config.clone(),
            counters.clone(),
            latency.clone(),
        );
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            // Spread the clients' first requests over one period.
            let offset = per_client.mul_f64(i as f64 / clients as f64);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, per_client);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut cookie: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                if *stopped.borrow() {
                    break;
                }
                one(&client, &config, &counters, &latency, &mut cookie).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    config: &LoadConfig,
    counters: &Counters,
    latency: &ArmStats,
    cookie: &mut Option<String>,
) {
    let mut req = Request::builder()
        .method(config.method.clone())
        .uri(format!("http://{}{}", config.target, config.path))
        .header(http::header::HOST, &config.host);
    if let Some(c) = cookie.as_ref() {
        req = req.header(http::header::COOKIE, c);
    }
    let Ok(req) = req.body(Full::new(Bytes::new())) else {
        return;
    };
    counters.sent.fetch_add(1, Relaxed);
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = client.request(req).await.map_err(|_| ())?;
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let set_cookie = resp
            .headers()
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        resp.into_body().collect().await.map_err(|_| ())?;
        Ok::<_, ()>((status, upstream, set_cookie))
    })
    .await;
    match answer {
        Ok(Ok((status, upstream, set_cookie))) => {
            if set_cookie.is_some() {
                *cookie = set_cookie;
            }
            let class = StatusClass::of(Some(status));
            latency.record(class, started.elapsed());
            match status {
                200..=399 => &counters.ok,
                500..=599 => &counters.server_errors,
                _ => &counters.other_status,
            }
            .fetch_add(1, Relaxed);
            if let Some(u) = upstream {
                *counters.by_upstream.lock().entry(u).or_default() += 1;
            }
        }
        _ => {
            latency.record(StatusClass::NoResponse, started.elapsed());
            counters.transport_errors.fetch_add(1, Relaxed);
        }
    }
}
