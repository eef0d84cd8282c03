//! Demo upstreams: small real HTTP servers that `sluice demo`, the tests and the benches
//! put behind the gate.
//!
//! Each one listens on its own thread and runtime (so a test or bench can drive it from
//! any context), answers with its name, and can be told to fail a share of requests or to
//! be slow, at any moment. Paths:
//! `/echo` (method, path and headers as JSON), `/status/{code}`, `/sleep/{ms}`, anything
//! else: `200 {name}\n` (or a 500 / a delay when the behaviour says so).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// How a demo upstream misbehaves (changed at any time through [`DemoUpstream`]) and when
/// it answered what.
#[derive(Debug)]
struct Behaviour {
    /// Share of requests answered 500, in millionths.
    error_ppm: AtomicU64,
    /// Delay added to every answer, in microseconds.
    delay_us: AtomicU64,
    /// Time origin of the marks below.
    origin: Instant,
    /// First 500 answered, µs after `origin` + 1 (0: none yet).
    first_failure_us: AtomicU64,
    /// Latest request, µs after `origin` + 1 (0: none yet).
    last_hit_us: AtomicU64,
}

impl Behaviour {
    fn new() -> Behaviour {
        Behaviour {
            error_ppm: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            origin: Instant::now(),
            first_failure_us: AtomicU64::new(0),
            last_hit_us: AtomicU64::new(0),
        }
    }

    fn mark(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64 + 1
    }

    fn at(&self, mark: u64) -> Option<Instant> {
        (mark != 0).then(|| self.origin + Duration::from_micros(mark - 1))
    }
}

/// A running demo upstream. Dropping it stops it.
pub struct DemoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    behaviour: Arc<Behaviour>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DemoUpstream {
    /// Starts one on `127.0.0.1:0`.
    pub fn spawn(name: &str) -> std::io::Result<DemoUpstream> {
        Self::spawn_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts one on a given address.
    pub fn spawn_on(name: &str, addr: SocketAddr) -> std::io::Result<DemoUpstream> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let hits = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let behaviour = Arc::new(Behaviour::new());
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = {
            let counters = (hits.clone(), connections.clone());
            let (name, behaviour) = (name.clone(), behaviour.clone());
            std::thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || {
                    runtime.block_on(serve(listener, name, counters, behaviour, stopped))
                })?
        };
        Ok(DemoUpstream {
            addr,
            name,
            hits,
            connections,
            behaviour,
            stop,
            thread: Some(thread),
        })
    }

    /// Its name (the body of its answers).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Client requests it has answered (or started answering); probes are not counted.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// TCP connections it has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Answers a share (0.0..=1.0) of ordinary requests with 500 from now on.
    pub fn set_error_rate(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1e6) as u64;
        self.behaviour.first_failure_us.store(0, Relaxed);
        self.behaviour.error_ppm.store(ppm, Relaxed);
    }

    /// When it first answered a client 500 since it was told to fail.
    pub fn first_failure_at(&self) -> Option<Instant> {
        self.behaviour
            .at(self.behaviour.first_failure_us.load(Relaxed))
    }

    /// When it last received a client request.
    pub fn last_hit_at(&self) -> Option<Instant> {
        self.behaviour.at(self.behaviour.last_hit_us.load(Relaxed))
    }

    /// Delays every ordinary answer by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_us
            .store(delay.as_micros() as u64, Relaxed);
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    name: Arc<str>,
    (hits, connections): (Arc<AtomicU64>, Arc<AtomicU64>),
    behaviour: Arc<Behaviour>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        connections.fetch_add(1, Relaxed);
        let (name, hits, behaviour) = (name.clone(), hits.clone(), behaviour.clone());
        tasks.spawn(async move {
            let service =
                service_fn(move |req| answer(req, name.clone(), hits.clone(), behaviour.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    tasks.shutdown().await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    behaviour: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Sluice's own probes are not client traffic: they leave the counters alone.
    let probe = req
        .headers()
        .get(http::header::USER_AGENT)
        .is_some_and(|v| v.as_bytes() == b"sluice-probe");
    if !probe {
        hits.fetch_add(1, Relaxed);
        behaviour.last_hit_us.store(behaviour.mark(), Relaxed);
    }
    let path = req.uri().path().to_string();
    let mut resp = if path == "/echo" {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                )
            })
            .collect();
        let body = serde_json::json!({
            "upstream": &*name,
            "method": req.method().as_str(),
            "path": req.uri().to_string(),
            "headers": headers,
        });
        text(StatusCode::OK, body.to_string())
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        text(status, format!("{name}\n"))
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        text(StatusCode::OK, format!("{name}\n"))
    } else {
        let delay = behaviour.delay_us.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let ppm = behaviour.error_ppm.load(Relaxed);
        if ppm > 0 && fastrand::u64(0..1_000_000) < ppm {
            if !probe {
                let _ = behaviour.first_failure_us.compare_exchange(
                    0,
                    behaviour.mark(),
                    Relaxed,
                    Relaxed,
                );
            }
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} failed\n"),
            )
        } else {
            text(StatusCode::OK, format!("{name}\n"))
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}
