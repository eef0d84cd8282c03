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

mod edge;
use edge::Edge;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pingora::server::configuration::ServerConf;
use pingora::services::Service as _;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::events::{EventBus, EventKind, NewEvent};
use crate::listeners::{report_certificates, DEFAULT_CERT_POLL};
use crate::metrics::Metrics;
use crate::proxy::InFlight;
use crate::rollout::{ControlHandle, Controller, Keeper, Start, TableSnapshot};
use crate::store::spool::{self, Spool};
use crate::store::{History, Recorder, Store};

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A listener could not be bound.
    #[error("{key} = \"{addr}\": cannot listen: {source}")]
    Bind {
        /// The config key of the address.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A runtime or worker thread could not be started.
    #[error("cannot start the {0}: {1}")]
    Runtime(&'static str, std::io::Error),
    /// The Docker engine, or a service's first release, could not be started.
    #[error("{0}")]
    Docker(String),
    /// The TLS listeners' certificates could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// The history spool file cannot be opened.
    #[error("store.spool = \"{path}\": {source}")]
    Spool {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
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
    /// Every proxy listener's name and address, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Sends commands to the controller.
    pub control: ControlHandle,
    /// The event bus.
    pub bus: EventBus,
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    in_flight: InFlight,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    /// History, when kept.
    pub history: Option<History>,
    /// The access log, when on (`reopen` on SIGUSR1).
    pub access_log: Option<AccessLog>,
    stop_accepting: watch::Sender<bool>,
    stop_workers: watch::Sender<bool>,
    stop_control: watch::Sender<bool>,
    stop_writer: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control_tasks: Vec<tokio::task::JoinHandle<()>>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    control_rt: Option<Runtime>,
}

/// Runs `f` on `rt` and waits for it from any thread (even one inside another runtime).
fn run_on<T: Send + 'static>(
    rt: &Runtime,
    limit: Duration,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv_timeout(limit).ok()
}

/// The newest routing-table snapshot in history: in the database (if it answers within
/// the connect timeout) or among the records still in the spool.
async fn latest_snapshot(
    url: crate::config::StoreUrl,
    spool: Arc<Spool>,
    shared: Arc<ArcSwapOption<Store>>,
) -> Start {
    let mut newest: Option<(crate::store::SnapshotRow, &'static str)> = None;
    match tokio::time::timeout(crate::store::CONNECT_TIMEOUT, Store::open(&url)).await {
        Ok(Ok(store)) => {
            match store.latest_snapshot().await {
                Ok(Some(row)) => newest = Some((row, "database")),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the latest snapshot"),
            }
            shared.store(Some(Arc::new(store)));
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "history store unreachable at start"),
        Err(_) => tracing::warn!(url = %url, "history store did not answer at start"),
    }
    match spool.latest_pending_snapshot() {
        Ok(Some(row)) if newest.as_ref().is_none_or(|(n, _)| row.at_ms >= n.at_ms) => {
            newest = Some((row, "spool"));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the spool"),
    }
    match newest {
        Some((row, source)) => match serde_json::from_str::<TableSnapshot>(&row.snapshot) {
            Ok(snapshot) => Start::Restore(snapshot, source.to_string()),
            Err(e) => {
                tracing::error!(error = %e, id = %row.id, "unreadable snapshot; starting from the config");
                Start::Config
            }
        },
        None => Start::Config,
    }
}

/// Accept queue of every listener (default 4096; the kernel caps it at `somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listening socket. An IPv6 address listens on IPv6 only (`IPV6_V6ONLY`), so
/// `[::]:443` and `0.0.0.0:443` can be two listeners; a bind error names the key.
fn bind(key: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), GateError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| GateError::Bind {
        key: key.to_string(),
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    let listener: TcpListener = socket.into();
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// History: the spool first (records can be kept from the first event on), then the newest
/// snapshot to continue from.
fn open_history(
    store_config: &crate::config::StoreConfig,
    control_rt: &Runtime,
) -> Result<(Option<History>, Option<Recorder>, Start), GateError> {
    Ok(if store_config.enabled {
        let spool =
            Spool::open(&store_config.spool, store_config.spool_max_bytes).map_err(|source| {
                GateError::Spool {
                    path: store_config.spool.display().to_string(),
                    source,
                }
            })?;
        let spool = Arc::new(spool);
        let shared: Arc<ArcSwapOption<Store>> = Arc::new(ArcSwapOption::empty());
        let start = run_on(
            control_rt,
            crate::store::CONNECT_TIMEOUT + Duration::from_secs(2),
            latest_snapshot(store_config.url.clone(), spool.clone(), shared.clone()),
        )
        .unwrap_or(Start::Config);
        let recorder = Recorder::new(spool.clone());
        (
            Some(History {
                store: shared,
                spool,
            }),
            Some(recorder),
            start,
        )
    } else {
        (None, None, Start::Config)
    })
}

/// The Docker engine, when services run as containers, discovery is on or resource rules
/// (`wanted`) read container use; only the last go on without one.
fn connect_docker(
    config: &Config,
    wanted: bool,
    control_rt: &Runtime,
) -> Result<Option<crate::docker::Engine>, GateError> {
    let runs_containers = config.services.iter().any(|s| s.docker.is_some());
    Ok(if wanted || config.docker_discovery {
        let socket = config.docker_socket.clone();
        let connected = run_on(control_rt, Duration::from_secs(15), async move {
            crate::docker::Engine::connect(&socket).await
        })
        .ok_or_else(|| GateError::Docker("the Docker engine did not answer within 15s".into()))?;
        match connected {
            Ok(e) => Some(e),
            // Only resource rules want it: they stay silent without an engine.
            Err(e) if !runs_containers && !config.docker_discovery => {
                tracing::warn!(error = %e, "no Docker engine: resource rules have nothing to read");
                None
            }
            Err(e) => return Err(GateError::Docker(e.to_string())),
        }
    } else {
        None
    })
}

/// Raises the soft limit of open files to the hard one: every connection is a descriptor
/// (two when proxied), and the 1,024 a shell gives would let one client's idle connections
/// stop the gate serving anyone.
/// Returns the soft limit in force after.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => {
            tracing::info!(limit = soft, "open-file limit");
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            1024
        }
    }
}

/// One proxy worker thread per `threads`, each with its own single-threaded runtime running
/// its services (one per listener) until accepting stops, then staying up until the drain
/// releases it.
#[allow(clippy::too_many_arguments)]
fn spawn_workers(
    edge: &Edge,
    threads: usize,
    conf: &Arc<ServerConf>,
    table: &crate::routing::TableReader,
    metrics: &Arc<Metrics>,
    in_flight: &InFlight,
    wake: &crate::rollout::Wake,
    accepting_stopped: &watch::Receiver<bool>,
    workers_stopped: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, GateError> {
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let runtime_err = |e| GateError::Runtime("proxy worker", e);
        let (fds, mut services) = edge.services(conf, table, metrics, in_flight, wake)?;

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
                    futures_util::future::join_all(services.iter_mut().map(|service| {
                        service.start_service(Some(fds.clone()), accepting_stopped.clone(), 1)
                    }))
                    .await;
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
    Ok(workers)
}

/// Starts a gate: binds both listeners, then runs the proxy and the control plane on their
/// own threads. Returns once both listeners accept connections.
pub fn start(config: Config) -> Result<GateHandle, GateError> {
    let open_files = raise_open_files();
    let metrics = Arc::new(Metrics::new());
    let mut edge = Edge::bind(&config, &metrics, open_files)?;
    let proxy_addr = edge.names[0].1;
    let acme = edge.acme.take();
    let acme_board = acme.as_ref().map(|(m, _)| m.board());
    let (admin_listener, admin_addr) = bind("server.admin_listen", config.server.admin_listen)?;

    let access_log = match &config.access_log {
        Some(c) => Some(
            AccessLog::start(c, metrics.access_log_dropped.clone())
                .map(|(log, _writer)| log)
                .map_err(|e| GateError::Runtime("access_log.path", e))?,
        ),
        None => None,
    };
    edge.access_log = access_log.clone();
    let drain_timeout = config.server.drain_timeout;
    let threads = config.server.threads;
    let keepalive_pool_size = config.server.keepalive_pool_size;
    let store_config = config.store.clone();

    let control_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-control")
        .enable_all()
        .build()
        .map_err(|e| GateError::Runtime("control runtime", e))?;

    let (history, recorder, start) = open_history(&store_config, &control_rt)?;
    let bus = match &recorder {
        Some(r) => EventBus::default().with_sink(Arc::new(r.clone())),
        None => EventBus::default(),
    };

    // Docker: the engine, and the stable release of every service run as containers (its
    // addresses are the stable arm), before the first table is built.
    let mut config = config;
    // Links in notifications point at the admin address actually bound (port 0 included).
    if !config.dashboard.url_given {
        config.dashboard.url = format!("http://{admin_addr}/");
    }
    let runs_containers = config.services.iter().any(|s| s.docker.is_some());
    let wants_usage = config
        .services
        .iter()
        .any(|s| s.cutback.max_memory.is_some() || s.cutback.max_cpu.is_some());
    let engine = connect_docker(&config, runs_containers || wants_usage, &control_rt)?;
    let mut releases = std::collections::HashMap::new();
    if let (true, Some(engine)) = (runs_containers, &engine) {
        let limit = config
            .services
            .iter()
            .filter_map(|s| s.docker.as_ref().map(|d| d.health_timeout))
            .sum::<Duration>()
            + Duration::from_secs(60);
        let store = history.as_ref().and_then(|h| h.store.load_full());
        let booted = run_on(
            &control_rt,
            limit,
            crate::docker::release::bootstrap(engine.clone(), config, store),
        )
        .ok_or_else(|| {
            GateError::Docker("the services' first releases did not start in time".into())
        })?
        .map_err(GateError::Docker)?;
        config = booted.0;
        releases = booted.1;
    }
    let discovery_interval = config.discovery_interval;
    let discovery = config.docker_discovery;
    let manager_config = config.clone();
    let dashboard_enabled = config.dashboard.enabled;

    let (mut controller, wiring) = Controller::with_history(
        config,
        metrics.clone(),
        bus.clone(),
        Keeper::new(recorder.clone()),
        start,
    );
    let control = wiring.handle.clone();
    let table = wiring.table.clone();
    let mut background: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        Vec::new();
    let mut release_board = None;
    if let Some(engine) = &engine {
        if runs_containers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            controller.attach_docker(tx);
            let manager = crate::docker::manager::Manager::new(
                engine.clone(),
                controller.reporter(),
                bus.clone(),
                recorder.clone(),
                &manager_config,
                releases,
            );
            release_board = Some(manager.board());
            background.push(Box::pin(manager.run(rx)));
        }
        if discovery {
            background.push(Box::pin(crate::docker::discovery::run(
                engine.clone(),
                controller.reporter(),
                discovery_interval,
            )));
        }
        background.push(Box::pin(crate::docker::usage::run(
            engine.clone(),
            table.clone(),
            controller.usage_board(),
        )));
    }

    // Notifications: a dispatcher on the bus, a worker per notifier.
    background.push(Box::pin(crate::notify::run(
        wiring.notify.clone(),
        bus.clone(),
        metrics.clone(),
    )));

    let (stop_accepting, accepting_stopped) = watch::channel(false);
    let (stop_workers, workers_stopped) = watch::channel(false);
    let (stop_control, control_stopped) = watch::channel(false);
    let (stop_writer, writer_stopped) = watch::channel(false);
    let in_flight = InFlight::default();
    let draining = Arc::new(AtomicBool::new(false));

    let conf = Arc::new(ServerConf {
        threads,
        upstream_keepalive_pool_size: keepalive_pool_size,
        ..ServerConf::default()
    });
    if let Some(tls) = edge.tls_metrics() {
        metrics.register(Box::new(tls));
    }
    let workers = spawn_workers(
        &edge,
        threads,
        &conf,
        &table,
        &metrics,
        &in_flight,
        &wiring.wake,
        &accepting_stopped,
        &workers_stopped,
    )?;
    let Edge {
        names: listener_names,
        certificates,
        ..
    } = edge;
    if let Some((manager, reports)) = acme {
        background.push(Box::pin(manager.run(control_stopped.clone())));
        background.push(Box::pin(report_certificates(reports, bus.clone())));
    }
    if let Some(certs) = &certificates {
        controller.attach_certificates(certs.clone());
        background.push(Box::pin(certs.clone().watch(DEFAULT_CERT_POLL)));
    }

    let state = AdminState {
        auth_failures: Default::default(),
        control: control.clone(),
        metrics: metrics.clone(),
        token: wiring.admin_token.clone(),
        draining: draining.clone(),
        bus: bus.clone(),
        history: history.clone(),
        releases: release_board,
        tickets: Default::default(),
        dashboard: dashboard_enabled,
        certificates: certificates.clone(),
        acme: acme_board,
    };
    let mut control_tasks = vec![
        control_rt.spawn(controller.run(control_stopped.clone())),
        control_rt.spawn(admin::serve(admin_listener, state, control_stopped.clone())),
    ];
    for task in background {
        let mut stopped = control_stopped.clone();
        control_tasks.push(control_rt.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = stopped.changed() => {}
            }
        }));
    }
    let writer_task = history.as_ref().map(|h| {
        let (spool, figures) = (h.spool.clone(), metrics.clone());
        let mut stopped = control_stopped.clone();
        // The store's figures, once a second.
        control_rt.spawn(async move {
            loop {
                let c = &spool.counters;
                figures.store.observe(
                    spool.pending_bytes(),
                    c.written.load(Ordering::Relaxed),
                    c.dropped.load(Ordering::Relaxed),
                    c.write_errors.load(Ordering::Relaxed),
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => break,
                }
            }
        });
        control_rt.spawn(spool::run_writer(
            h.spool.clone(),
            store_config.clone(),
            h.store.clone(),
            metrics.store.up.clone(),
            writer_stopped,
        ))
    });

    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, threads, "sluice started");
    Ok(GateHandle {
        proxy_addr,
        admin_addr,
        listeners: listener_names,
        control,
        bus,
        metrics,
        in_flight,
        draining,
        drain_timeout,
        history,
        access_log,
        stop_accepting,
        stop_workers,
        stop_control,
        stop_writer,
        workers,
        control_tasks,
        writer_task,
        control_rt: Some(control_rt),
    })
}

impl GateHandle {
    /// The address of the proxy listener `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

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
        self.bus.publish(
            NewEvent::new(
                EventKind::ShuttingDown,
                "signal",
                format!(
                    "draining {} request(s) in flight, at most {:?}",
                    self.in_flight.count(),
                    self.drain_timeout
                ),
            )
            .evidence(serde_json::json!({ "in_flight": self.in_flight.count() })),
        );
        let _ = self.stop_accepting.send(true);
        let deadline = started + self.drain_timeout;
        while self.in_flight.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let abandoned = self.in_flight.count();
        self.stop_workers_now();
        // The controller writes its last minutes and events into the spool, then the
        // writer gets a moment to move them to the database (the rest waits in the spool).
        let _ = self.stop_control.send(true);
        if let Some(rt) = self.control_rt.take() {
            let control = std::mem::take(&mut self.control_tasks);
            let writer = self.writer_task.take();
            let stop_writer = self.stop_writer.clone();
            run_on(&rt, Duration::from_secs(6), async move {
                for task in control {
                    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                }
                let _ = stop_writer.send(true);
                if let Some(w) = writer {
                    let _ = tokio::time::timeout(Duration::from_secs(3), w).await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
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
        let _ = self.stop_writer.send(true);
        if let Some(rt) = self.control_rt.take() {
            rt.shutdown_background();
        }
    }
}
