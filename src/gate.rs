//! The gate process: runtimes, listeners, the control plane, drain and signals.
//!
//! Sluice hosts pingora's `HttpProxy` (the request engine: parsing, pooling, retries) in its
//! own accept loop — pingora's documented `http_proxy()` path — instead of pingora's
//! `Server`. That lets the gate bind its listeners before anything starts (so port 0
//! works and a bind error is reported at once), end a SIGTERM drain as soon as the last
//! connection finishes instead of sleeping a fixed grace period, and handle SIGHUP.
//!
//! Two runtimes: the proxy runtime (`server.threads` workers) runs only the data plane;
//! the control runtime (one worker) runs the controller, the admin API and the signal
//! handlers, so control work never queues behind requests and vice versa.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::ServerApp;
use pingora::protocols::l4::listener::Listener;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::events::{EventBus, EventKind, NewEvent};
use crate::metrics::Metrics;
use crate::proxy::GateProxy;
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
    /// A runtime could not be built.
    #[error("cannot start the {what} runtime: {source}")]
    Runtime {
        /// Which one.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Counts open client connections; drain waits for it to reach zero.
#[derive(Clone, Default, Debug)]
pub struct Connections(Arc<AtomicUsize>);

/// Decrements [`Connections`] when the connection task ends.
pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Connections {
    fn enter(&self) -> ConnectionGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.0.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Connections still open when the drain stopped waiting (0 when it completed).
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
    connections: Connections,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    stop_proxy: watch::Sender<bool>,
    stop_control: watch::Sender<bool>,
    proxy_rt: Option<Runtime>,
    control_rt: Option<Runtime>,
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, GateError> {
    let err = |source| GateError::Bind { key, addr, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

fn runtime(what: &'static str, threads: usize) -> Result<Runtime, GateError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(format!("sluice-{what}"))
        .enable_all()
        .build()
        .map_err(|source| GateError::Runtime { what, source })
}

/// Starts a gate: binds both listeners, then runs the proxy and the control plane on their
/// own threads. Returns once both listeners accept connections.
pub fn start(config: Config) -> Result<GateHandle, GateError> {
    let proxy_listener = bind("server.listen", config.server.listen)?;
    let admin_listener = bind("server.admin_listen", config.server.admin_listen)?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| GateError::Bind {
            key: "server.listen",
            addr: config.server.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| GateError::Bind {
            key: "server.admin_listen",
            addr: config.server.admin_listen,
            source,
        })?;

    let metrics = Arc::new(Metrics::new());
    let bus = EventBus::default();
    let drain_timeout = config.server.drain_timeout;
    let threads = config.server.threads;
    let keepalive_pool_size = config.server.keepalive_pool_size;
    let (controller, control, table, admin_token) =
        Controller::new(config, metrics.clone(), bus.clone());

    let (stop_proxy, proxy_stopped) = watch::channel(false);
    let (stop_control, control_stopped) = watch::channel(false);
    let connections = Connections::default();
    let draining = Arc::new(AtomicBool::new(false));

    let proxy_rt = runtime("proxy", threads)?;
    let conf = Arc::new(ServerConf {
        threads,
        upstream_keepalive_pool_size: keepalive_pool_size,
        ..ServerConf::default()
    });
    let proxy = {
        let _enter = proxy_rt.enter();
        Arc::new(http_proxy(&conf, GateProxy::new(table, metrics.clone())))
    };
    proxy_rt.spawn(accept_loop(
        proxy_listener,
        proxy,
        proxy_stopped,
        connections.clone(),
    ));

    let control_rt = runtime("control", 1)?;
    let state = AdminState {
        control: control.clone(),
        metrics: metrics.clone(),
        token: admin_token,
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
        connections,
        draining,
        drain_timeout,
        stop_proxy,
        stop_control,
        proxy_rt: Some(proxy_rt),
        control_rt: Some(control_rt),
    })
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<HttpProxy<GateProxy>>,
    mut shutdown: watch::Receiver<bool>,
    connections: Connections,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => Listener::from(l),
        Err(e) => {
            tracing::error!(error = %e, "proxy listener cannot be registered");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(mut stream) => {
                    if let Err(e) = stream.set_nodelay() {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    let guard = connections.enter();
                    let proxy = proxy.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let mut next = proxy.process_new(Box::new(stream), &shutdown).await;
                        while let Some(stream) = next {
                            next = proxy.process_new(stream, &shutdown).await;
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    // Wakes keep-alive connections parked between requests so they close now.
    proxy.cleanup().await;
}

impl GateHandle {
    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Stops accepting, lets requests in flight finish (up to `server.drain_timeout`), then
    /// stops the control plane. Blocks the calling thread; call it outside any runtime.
    pub fn drain(mut self) -> DrainReport {
        let started = Instant::now();
        self.draining.store(true, Ordering::Relaxed);
        self.bus.publish(NewEvent {
            kind: EventKind::ShuttingDown,
            service: None,
            actor: "signal".into(),
            message: format!(
                "draining {} open connection(s), at most {:?}",
                self.connections.open(),
                self.drain_timeout
            ),
            table: None,
            evidence: serde_json::json!({ "open_connections": self.connections.open() }),
        });
        let _ = self.stop_proxy.send(true);
        let deadline = started + self.drain_timeout;
        while self.connections.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let abandoned = self.connections.open();
        let _ = self.stop_control.send(true);
        if let Some(rt) = self.proxy_rt.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
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
        let _ = self.stop_proxy.send(true);
        let _ = self.stop_control.send(true);
        if let Some(rt) = self.proxy_rt.take() {
            rt.shutdown_background();
        }
        if let Some(rt) = self.control_rt.take() {
            rt.shutdown_background();
        }
    }
}
