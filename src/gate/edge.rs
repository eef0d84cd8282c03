//! The gate's edge: its proxy listeners bound before anything starts, what each one is, the
//! TLS listeners' certificates, ClientHello inspector and counts, the ACME manager, and the
//! pingora services one worker runs over them (one per listener, so each knows its own).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::Fds;
use pingora::services::listening::Service;

use super::{bind, GateError};
use crate::access_log::AccessLog;
use crate::acme::challenges::Http01;
use crate::acme::manager::{Manager, Report};
use crate::config::tls::DEFAULT_LISTENER_NAME;
use crate::config::Config;
use crate::connections::{ConnectionLimits, Limited, ListenerSlot, PreTls};
use crate::listeners::{acme_settings, Certificates, ListenerInfo, TlsMetrics};
use crate::metrics::Metrics;
use crate::proxy::{GateProxy, InFlight};
use crate::rollout::Wake;
use crate::routing::TableReader;
use crate::tls::{HandshakeCounts, HelloInspector};

/// Each client connection's read and write buffers. pingora's default read buffer is 64 KiB,
/// most of what an idle or slow connection costs (about 97 KiB each under
/// `benches/slowloris.sh`); a request head fits in 16 KiB nearly always, a longer one is
/// read in more than one piece, and a body streams through it either way.
const CLIENT_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(16 * 1024),
    write: None,
};

/// One worker's listening descriptors and its services over them.
pub(super) type WorkerServices = (
    Arc<parking_lot::Mutex<Fds>>,
    Vec<Service<Limited<HttpProxy<GateProxy>>>>,
);

/// Everything about the proxy listeners a worker needs.
pub(super) struct Edge {
    /// The bound sockets and their addresses, in config order.
    sockets: Vec<(TcpListener, SocketAddr)>,
    /// Each listener's name and bound address.
    pub(super) names: Vec<(String, SocketAddr)>,
    info: Vec<Arc<ListenerInfo>>,
    /// The certificates, when a listener speaks TLS.
    pub(super) certificates: Option<Arc<Certificates>>,
    counts: Vec<Option<Arc<HandshakeCounts>>>,
    inspector: Option<Arc<HelloInspector>>,
    http01: Arc<Http01>,
    /// The ACME manager (its stored certificates already serving) and its reports.
    pub(super) acme: Option<(Manager, tokio::sync::mpsc::UnboundedReceiver<Report>)>,
    /// HTTP/2 on each listener: on or off, and its stream limit.
    http2: Vec<(bool, u32)>,
    /// `server.client_header_timeout` and `server.keepalive_timeout`.
    client_timeouts: (std::time::Duration, std::time::Duration),
    /// Where every listener writes its requests, when the access log is on.
    pub(super) access_log: Option<AccessLog>,
    /// The connection bounds all listeners share, and each listener's own.
    connections: Arc<ConnectionLimits>,
    slots: Vec<Arc<ListenerSlot>>,
}

impl Edge {
    /// Binds every proxy listener (`[[listeners]]`, or `server.listen`) and loads what
    /// their handshakes need; a bind error names the listener's key and address.
    pub(super) fn bind(
        config: &Config,
        metrics: &Metrics,
        open_files: u64,
    ) -> Result<Edge, GateError> {
        let mut sockets = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            let key = if config.listeners.len() == 1 && l.name == DEFAULT_LISTENER_NAME && !l.tls {
                "server.listen".to_string()
            } else {
                format!("listeners[{i}].address")
            };
            sockets.push(bind(&key, l.address)?);
        }
        let bound: Vec<SocketAddr> = sockets.iter().map(|(_, a)| *a).collect();
        let acme_config = config.tls.acme.clone();
        let limits = crate::listeners::RequestLimits {
            max_uri_length: config.server.max_uri_length,
            max_headers: config.server.max_headers,
            max_header_size: config.server.max_header_size,
            client_body_timeout: config.server.client_body_timeout,
        };
        let info = ListenerInfo::all(&config.listeners, &bound, acme_config.is_some(), limits)
            .into_iter()
            .map(Arc::new)
            .collect();
        let names = config
            .listeners
            .iter()
            .zip(&bound)
            .map(|(l, a)| (l.name.clone(), *a))
            .collect();
        let any_tls = config.listeners.iter().any(|l| l.tls);
        let certificates = if any_tls {
            Some(Arc::new(
                Certificates::load(&config.tls).map_err(GateError::Tls)?,
            ))
        } else {
            None
        };
        if let (Some(certs), None) = (&certificates, &config.tls.acme) {
            let hosts: Vec<String> = config
                .services
                .iter()
                .flat_map(|s| s.hosts.iter().map(|h| h.to_string()))
                .collect();
            certs.warn_uncovered(&hosts);
        }
        let counts: Vec<Option<Arc<HandshakeCounts>>> = config
            .listeners
            .iter()
            .map(|l| l.tls.then(Arc::default))
            .collect();
        let inspector = certificates.as_ref().map(|c| {
            Arc::new(HelloInspector::new(
                c.store().clone(),
                bound
                    .iter()
                    .zip(&counts)
                    .filter_map(|(a, c)| Some((a.port(), c.clone()?)))
                    .collect(),
            ))
        });
        let http01: Arc<Http01> = Arc::default();
        // Automatic certificates: what was stored serves before the first handshake.
        let mut acme = None;
        if let (Some(cfg), Some(certs)) = (&acme_config, &certificates) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let manager = Manager::new(
                acme_settings(cfg),
                certs.store().clone(),
                http01.clone(),
                tx,
            )
            .map_err(|e| GateError::Tls(e.to_string()))?;
            manager.restore();
            acme = Some((manager, rx));
        }
        let max_connections = config
            .server
            .max_connections
            .unwrap_or_else(|| crate::connections::default_max_connections(open_files));
        tracing::info!(
            max_connections,
            per_ip = config.server.max_connections_per_ip,
            "client connection limits"
        );
        let connections = Arc::new(ConnectionLimits::new(
            max_connections,
            config.server.max_connections_per_ip,
            metrics.connections_refused.clone(),
            metrics.connections_open.clone(),
        ));
        let slots = config
            .listeners
            .iter()
            .map(|l| {
                Arc::new(ListenerSlot::new(
                    &l.name,
                    l.max_connections,
                    l.proxy_protocol,
                    l.tls,
                ))
            })
            .collect();
        Ok(Edge {
            connections,
            slots,
            sockets,
            names,
            info,
            certificates,
            counts,
            inspector,
            http01,
            acme,
            http2: config
                .listeners
                .iter()
                .map(|l| (l.http2, l.max_concurrent_streams))
                .collect(),
            access_log: None,
            client_timeouts: (
                config.server.client_header_timeout,
                config.server.keepalive_timeout,
            ),
        })
    }

    /// The TLS figures for `/metrics`, when a listener speaks TLS.
    pub(super) fn tls_metrics(&self) -> Option<TlsMetrics> {
        let certs = self.certificates.clone()?;
        Some(TlsMetrics::new(
            self.info
                .iter()
                .zip(&self.counts)
                .filter_map(|(i, c)| Some((i.name.clone(), c.clone()?)))
                .collect(),
            certs,
        ))
    }

    /// One worker's services, one per listener, and the descriptors they take over: each
    /// worker gets its own descriptor of every listening socket (pingora takes them through
    /// its inherited-fd table instead of binding the addresses again).
    pub(super) fn services(
        &self,
        conf: &Arc<ServerConf>,
        table: &TableReader,
        metrics: &Arc<Metrics>,
        in_flight: &InFlight,
        wake: &Wake,
    ) -> Result<WorkerServices, GateError> {
        let runtime_err = |e| GateError::Runtime("proxy worker", e);
        let mut fds = Fds::new();
        for (socket, addr) in &self.sockets {
            let socket = socket.try_clone().map_err(runtime_err)?;
            fds.add(addr.to_string(), socket.into_raw_fd());
        }
        let mut services = Vec::with_capacity(self.sockets.len());
        for (j, (_, addr)) in self.sockets.iter().enumerate() {
            let mut proxy = http_proxy(
                conf,
                GateProxy::on_listener(
                    table.clone(),
                    metrics.clone(),
                    in_flight.clone(),
                    wake.clone(),
                    self.info[j].clone(),
                    self.http01.clone(),
                    self.access_log.clone(),
                ),
            );
            let (http2, streams) = self.http2.get(j).copied().unwrap_or_default();
            {
                let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
                h2.max_concurrent_streams(streams.max(1));
                proxy.h2_options = Some(h2);
                // h2c by prior knowledge on a plain listener that asks for HTTP/2.
                let mut options = pingora::apps::HttpServerOptions::default();
                options.h2c = http2 && self.counts[j].is_none();
                // Slow clients: the head within client_header_timeout, idle keep-alive
                // connections closed after keepalive_timeout (a pingora patch, PATCHES.md).
                options.h1_header_timeout = Some(self.client_timeouts.0);
                options.h1_keepalive_timeout = Some(self.client_timeouts.1);
                proxy.server_options = Some(options);
            }
            let mut service = Service::new(
                "sluice proxy".to_string(),
                Limited::new(
                    proxy,
                    self.connections.clone(),
                    self.slots[j].clone(),
                    table.clone(),
                    self.client_timeouts.0,
                ),
            );
            let key = addr.to_string();
            match (&self.counts[j], &self.certificates, &self.inspector) {
                (Some(counts), Some(certs), Some(inspector)) => {
                    let settings =
                        crate::tls::settings(certs.store(), &self.info[j].name, counts, http2)
                            .map_err(|e| GateError::Tls(format!("listeners[{j}]: {e}")))?;
                    let slot = &self.slots[j];
                    service.endpoints().set_pre_tls_callback(Arc::new(PreTls {
                        proxy: slot.proxy_protocol.then(|| {
                            (
                                table.clone(),
                                self.client_timeouts.0,
                                self.connections.clone(),
                                slot.clone(),
                            )
                        }),
                        next: inspector.clone(),
                    }));
                    service.add_listener(
                        ListenerConfig::tcp(key)
                            .tls(settings)
                            .l4_buffer(CLIENT_BUFFERS),
                    );
                }
                _ => service.add_listener(ListenerConfig::tcp(key).l4_buffer(CLIENT_BUFFERS)),
            }
            services.push(service);
        }
        Ok((Arc::new(parking_lot::Mutex::new(fds)), services))
    }
}
