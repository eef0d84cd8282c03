//! The gate process: runtimes, listeners, the control plane, drain and signals.
//!
//! The data plane is pingora's own listening `Service` around `HttpProxy` (parsing, buffered
//! writes, pooling, retries), run the way pingora's no-steal runtime runs it: one worker
//! thread per `server.threads`, each with a single-threaded tokio runtime (measured 10 %
//! faster than a work-stealing one here). Each worker runs its own service on a `dup` of the
//! one listening socket, so the workers share one accept queue like nginx workers do, and
//! each has its own upstream keep-alive pool. (pingora's `NoStealRuntime` itself is not
//! used: it records its pools in a thread-local that outlives its threads, so a second gate
//! in one process, as in the tests, would spawn onto the first one's dead runtime.)
//!
//! What Sluice does instead of pingora's `Server` is the orchestration around it: it binds
//! both listeners itself before anything starts (a bind error is reported at once and port
//! 0 works; the socket reaches pingora through its inherited-fd table), it ends a SIGTERM
//! drain as soon as the last request in flight finishes instead of sleeping a fixed grace
//! period, and it handles SIGHUP. The control plane (controller, admin API, signal handlers)
//! runs on its own one-thread runtime, so control work never queues behind requests.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Fds;
use pingora::services::Service as _;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::events::{EventBus, EventKind, NewEvent};
use crate::metrics::Metrics;
use crate::proxy::{GateProxy, InFlight};
use crate::rollout::{ControlHandle, Controller};

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A listener could not be bound.
    #[error("{key} = \"{addr}\": cannot listen: {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A runtime or worker thread could not be started.
    #[error("cannot start the {0}: {1}")]
    Runtime(&'static str, std::io::Error),
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Requests still in flight when the drain stopped waiting (0 when it completed).
    pub abandoned: usize,
    /// How long it took.
    pub took: Duration,
}

/// A running gate. Dropping it stops everything at once; [`GateHandle::drain`] stops it
/// gracefully.
pub struct GateHandle {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Sends commands to the controller.
    pub control: ControlHandle,
    /// The event bus.
    pub bus: EventBus,
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    in_flight: InFlight,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    stop_accepting: watch::Sender<bool>,
    stop_workers: watch::Sender<bool>,
    stop_control: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control_rt: Option<Runtime>,
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), GateError> {
    let err = |source| GateError::Bind { key, addr, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Starts a gate: binds both listeners, then runs the proxy and the control plane on their
/// own threads. Returns once both listeners accept connections.
pub fn start(config: Config) -> Result<GateHandle, GateError> {
    let (proxy_listener, proxy_addr) = bind("server.listen", config.server.listen)?;
    let (admin_listener, admin_addr) = bind("server.admin_listen", config.server.admin_listen)?;

    let metrics = Arc::new(Metrics::new());
    let bus = EventBus::default();
    let drain_timeout = config.server.drain_timeout;
    let threads = config.server.threads;
    let keepalive_pool_size = config.server.keepalive_pool_size;
    let (controller, wiring) = Controller::new(config, metrics.clone(), bus.clone());
    let control = wiring.handle.clone();
    let table = wiring.table.clone();

    let (stop_accepting, accepting_stopped) = watch::channel(false);
    let (stop_workers, workers_stopped) = watch::channel(false);
    let (stop_control, control_stopped) = watch::channel(false);
    let in_flight = InFlight::default();
    let draining = Arc::new(AtomicBool::new(false));

    let conf = Arc::new(ServerConf {
        threads,
        upstream_keepalive_pool_size: keepalive_pool_size,
        ..ServerConf::default()
    });
    let key = proxy_addr.to_string();
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let runtime_err = |e| GateError::Runtime("proxy worker", e);
        // Each worker gets its own descriptor of the same socket; pingora takes it over
        // (through its inherited-fd table) instead of binding the address again.
        let socket = proxy_listener.try_clone().map_err(runtime_err)?;
        let mut fds = Fds::new();
        fds.add(key.clone(), socket.into_raw_fd());
        let fds = Arc::new(parking_lot::Mutex::new(fds));
        let mut service = http_proxy_service_with_name(
            &conf,
            GateProxy::new(
                table.clone(),
                metrics.clone(),
                in_flight.clone(),
                wiring.wake.clone(),
            ),
            "sluice proxy",
        );
        service.add_tcp(&key);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(runtime_err)?;
        let (accepting_stopped, mut workers_stopped) =
            (accepting_stopped.clone(), workers_stopped.clone());
        let worker = std::thread::Builder::new()
            .name(format!("sluice-proxy-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    // Returns once accepting stops; requests in flight go on until the
                    // drain releases the workers.
                    service.start_service(Some(fds), accepting_stopped, 1).await;
                    while !*workers_stopped.borrow() {
                        if workers_stopped.changed().await.is_err() {
                            break;
                        }
                    }
                });
            })
            .map_err(runtime_err)?;
        workers.push(worker);
    }
    drop(proxy_listener);

    let control_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-control")
        .enable_all()
        .build()
        .map_err(|e| GateError::Runtime("control runtime", e))?;
    let state = AdminState {
        control: control.clone(),
        metrics: metrics.clone(),
        token: wiring.admin_token.clone(),
        draining: draining.clone(),
        bus: bus.clone(),
    };
    control_rt.spawn(controller.run(control_stopped.clone()));
    control_rt.spawn(admin::serve(admin_listener, state, control_stopped));

    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, threads, "sluice ready");
    Ok(GateHandle {
        proxy_addr,
        admin_addr,
        control,
        bus,
        metrics,
        in_flight,
        draining,
        drain_timeout,
        stop_accepting,
        stop_workers,
        stop_control,
        workers,
        control_rt: Some(control_rt),
    })
}

impl GateHandle {
    /// Requests in flight now.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Stops accepting (and closes idle keep-alive connections), lets requests in flight
    /// finish, up to `server.drain_timeout`, then stops the control plane. Blocks the
    /// calling thread; call it outside any runtime.
    pub fn drain(mut self) -> DrainReport {
        let started = Instant::now();
        self.draining.store(true, Ordering::Relaxed);
        self.bus.publish(NewEvent {
            kind: EventKind::ShuttingDown,
            service: None,
            actor: "signal".into(),
            message: format!(
                "draining {} request(s) in flight, at most {:?}",
                self.in_flight.count(),
                self.drain_timeout
            ),
            table: None,
            evidence: serde_json::json!({ "in_flight": self.in_flight.count() }),
        });
        let _ = self.stop_accepting.send(true);
        let deadline = started + self.drain_timeout;
        while self.in_flight.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let abandoned = self.in_flight.count();
        self.stop_workers_now();
        let _ = self.stop_control.send(true);
        if let Some(rt) = self.control_rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let report = DrainReport {
            abandoned,
            took: started.elapsed(),
        };
        tracing::info!(abandoned, took = ?report.took, "sluice stopped");
        report
    }

    fn stop_workers_now(&mut self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.stop_workers.send(true);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }

    /// Runs `f` on the control runtime (signal handlers, for instance).
    pub fn spawn_control<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.control_rt {
            rt.spawn(f);
        }
    }
}

impl Drop for GateHandle {
    fn drop(&mut self) {
        self.stop_workers_now();
        let _ = self.stop_control.send(true);
        if let Some(rt) = self.control_rt.take() {
            rt.shutdown_background();
        }
    }
}
