//! The client connections the proxy listeners hold, bounded: a total for all of them
//! (`server.max_connections`, by default what the open-file limit leaves after a reserve for
//! upstream connections, the admin listener, probes and files), one per listener when set
//! (`listeners[].max_connections`) and one per client address
//! (`server.max_connections_per_ip`; the trusted proxies are exempt, since every client
//! behind them shares their address). A connection past a limit is answered `503` with
//! `Retry-After` (HTTP/1) or closed (HTTP/2), and counted in
//! `sluice_connections_refused_total{listener,reason}`.
//!
//! [`Limited`] wraps a listener's pingora app: it admits each connection once, before its
//! first request, reads its PROXY header on a plain listener that asks for one (a TLS
//! listener reads it before the handshake, [`PreTls`]), and holds the admission until the
//! connection closes, across all its keep-alive requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, UniqueID};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::io::AsyncWriteExt;

use crate::routing::TableReader;
use crate::trust;

/// What an open-file limit leaves for client connections: half of it after a reserve of a
/// quarter (at most 4,096) for the rest, since each proxied connection may hold an upstream
/// connection too; never under 64.
pub fn default_max_connections(open_files: u64) -> usize {
    let reserve = (open_files / 4).min(4096);
    let left = open_files.saturating_sub(reserve) / 2;
    usize::try_from(left).unwrap_or(usize::MAX).max(64)
}

/// Why a connection was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` are open.
    Total,
    /// The listener's `max_connections` are open.
    Listener,
    /// The client's address holds `server.max_connections_per_ip`.
    PerIp,
    /// A PROXY header was missing, malformed or sent by an untrusted peer.
    ProxyHeader,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::Listener => "listener_max_connections",
            Refusal::PerIp => "max_connections_per_ip",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// The counts every proxy listener of the gate shares (all workers).
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    total: AtomicUsize,
    /// 0: no limit per address.
    max_per_ip: usize,
    per_ip: parking_lot::Mutex<HashMap<IpAddr, usize>>,
    refused: IntCounterVec,
    open: IntGaugeVec,
}

/// One listener's count and what it asks of its connections.
#[derive(Debug)]
pub struct ListenerSlot {
    /// The listener's name (the metric label).
    pub name: String,
    /// Its own bound, when set.
    pub max: Option<usize>,
    open: AtomicUsize,
    /// Its connections start with a PROXY header.
    pub proxy_protocol: bool,
    /// It speaks TLS (the PROXY header is read before the handshake, by [`PreTls`]).
    pub tls: bool,
}

impl ListenerSlot {
    /// A listener's slot.
    pub fn new(name: &str, max: Option<usize>, proxy_protocol: bool, tls: bool) -> ListenerSlot {
        ListenerSlot {
            name: name.to_string(),
            max,
            open: AtomicUsize::new(0),
            proxy_protocol,
            tls,
        }
    }
}

/// Takes one from `count` when under `max`; `false` (nothing taken) at it.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
        .is_ok()
}

impl ConnectionLimits {
    /// The shared counts: `max_total` over all listeners, `max_per_ip` per client address
    /// (0: none); refusals and open connections are counted in the two families.
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        refused: IntCounterVec,
        open: IntGaugeVec,
    ) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            total: AtomicUsize::new(0),
            max_per_ip,
            per_ip: parking_lot::Mutex::default(),
            refused,
            open,
        }
    }

    /// The total bound in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Connections open now, over all listeners.
    pub fn open(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Admits one connection from `ip` on `slot` (`exempt`: a trusted proxy, no bound per
    /// address), or says which bound it meets.
    pub fn admit(
        self: &Arc<Self>,
        slot: &Arc<ListenerSlot>,
        ip: Option<IpAddr>,
        exempt: bool,
    ) -> Result<Admitted, Refusal> {
        if !take(&self.total, self.max_total) {
            return Err(Refusal::Total);
        }
        if !take(&slot.open, slot.max.unwrap_or(usize::MAX)) {
            self.total.fetch_sub(1, Relaxed);
            return Err(Refusal::Listener);
        }
        let ip = ip.filter(|_| self.max_per_ip > 0 && !exempt);
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(per_ip);
                slot.open.fetch_sub(1, Relaxed);
                self.total.fetch_sub(1, Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        self.open.with_label_values(&[&slot.name]).inc();
        Ok(Admitted {
            limits: self.clone(),
            slot: slot.clone(),
            ip,
        })
    }

    /// Counts a refusal.
    pub fn refused(&self, slot: &ListenerSlot, why: Refusal) {
        self.refused
            .with_label_values(&[&slot.name, why.label()])
            .inc();
    }
}

/// One admitted connection; its counts are given back when it drops.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    slot: Arc<ListenerSlot>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.limits.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.slot.open.fetch_sub(1, Relaxed);
        self.limits.total.fetch_sub(1, Relaxed);
        self.limits.open.with_label_values(&[&self.slot.name]).dec();
    }
}

/// The client's address as the connection's digest has it (after any PROXY header).
fn peer_of(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr().and_then(PeerAddr::as_inet).copied()
}

/// An address with IPv4-mapped IPv6 folded to IPv4 (one client, one count).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Reads a PROXY header from `stream` when its peer is trusted, and makes the client it
/// names the connection's peer (what the proxy, its logs and its limits see).
async fn take_proxy_header<S>(
    stream: &mut S,
    table: &TableReader,
    timeout: Duration,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + GetSocketDigest + UniqueID + Unpin + ?Sized,
{
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(PeerAddr::as_inet).copied());
    let trusted = peer.is_some_and(|p| {
        trust::any_contains(&table.load().options.trusted_proxies, canonical(p.ip()))
    });
    if !trusted {
        return Err(format!(
            "a PROXY header is accepted only from routing.trusted_proxies (peer {})",
            peer.map_or("unknown".into(), |p| p.to_string())
        ));
    }
    let named = tokio::time::timeout(timeout, crate::proxy_protocol::read(stream))
        .await
        .map_err(|_| "no PROXY header in time".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(client) = named {
        let digest = SocketDigest::from_raw_fd(stream.id());
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
        if let Some(local) = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().cloned())
        {
            let _ = digest.local_addr.set(Some(local));
        }
        stream.set_socket_digest(digest);
    }
    Ok(())
}

const REFUSED_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// A listener's pingora app behind its connection limits.
pub struct Limited<A> {
    inner: Arc<A>,
    limits: Arc<ConnectionLimits>,
    slot: Arc<ListenerSlot>,
    table: TableReader,
    /// How long a PROXY header may take (`server.client_header_timeout`).
    header_timeout: Duration,
}

impl<A> Limited<A> {
    /// Wraps `inner`, the app serving the listener `slot`.
    pub fn new(
        inner: A,
        limits: Arc<ConnectionLimits>,
        slot: Arc<ListenerSlot>,
        table: TableReader,
        header_timeout: Duration,
    ) -> Limited<A> {
        Limited {
            inner: Arc::new(inner),
            limits,
            slot,
            table,
            header_timeout,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.slot.proxy_protocol && !self.slot.tls {
            if let Err(why) =
                take_proxy_header(&mut *stream, &self.table, self.header_timeout).await
            {
                tracing::debug!(listener = %self.slot.name, %why, "connection refused");
                self.limits.refused(&self.slot, Refusal::ProxyHeader);
                return None;
            }
        }
        let ip = peer_of(&stream).map(|p| canonical(p.ip()));
        // Trusted proxies are exempt from the bound per address (none: no table look).
        let exempt = self.limits.max_per_ip > 0
            && ip.is_some_and(|ip| {
                trust::any_contains(&self.table.load().options.trusted_proxies, ip)
            });
        let _admitted = match self.limits.admit(&self.slot, ip, exempt) {
            Ok(a) => a,
            Err(why) => {
                self.limits.refused(&self.slot, why);
                let h2 = stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2);
                if !h2 {
                    let answer = async {
                        stream.write_all(REFUSED_ANSWER).await?;
                        stream.flush().await?;
                        stream.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
                }
                return None;
            }
        };
        // Every request of the connection under one admission: pingora hands a kept-alive
        // connection back after each; it is served here until it closes.
        let mut stream = stream;
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A TLS listener's look at each connection before its handshake: its PROXY header when it
/// asks for one, then the ClientHello inspector.
pub struct PreTls {
    /// Read a PROXY header first (the routing table for the trusted proxies, the bound).
    pub proxy: Option<(
        TableReader,
        Duration,
        Arc<ConnectionLimits>,
        Arc<ListenerSlot>,
    )>,
    /// What looks at the ClientHello next.
    pub next: Arc<dyn PreTlsProcess>,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        if let Some((table, timeout, limits, slot)) = &self.proxy {
            if let Err(why) = take_proxy_header(stream, table, *timeout).await {
                limits.refused(slot, Refusal::ProxyHeader);
                return pingora::Error::e_explain(pingora::ErrorType::AcceptError, why);
            }
        }
        self.next.process(stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(
            total,
            per_ip,
            IntCounterVec::new(prometheus::Opts::new("r", "r"), &["listener", "reason"]).unwrap(),
            IntGaugeVec::new(prometheus::Opts::new("o", "o"), &["listener"]).unwrap(),
        ))
    }

    #[test]
    fn each_bound_holds_and_is_given_back() {
        let l = limits(3, 2);
        let a = Arc::new(ListenerSlot::new("a", Some(2), false, false));
        let b = Arc::new(ListenerSlot::new("b", None, false, false));
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let x = l.admit(&a, Some(one), false).unwrap();
        let y = l.admit(&a, Some(one), false).unwrap();
        assert_eq!(l.admit(&b, Some(one), false).unwrap_err(), Refusal::PerIp);
        assert_eq!(
            l.admit(&a, Some(two), false).unwrap_err(),
            Refusal::Listener
        );
        let z = l.admit(&b, Some(one), true).unwrap(); // a trusted proxy: no bound per address
        assert_eq!(l.admit(&b, Some(two), false).unwrap_err(), Refusal::Total);
        assert_eq!(l.open(), 3);
        drop((x, y, z));
        assert_eq!(l.open(), 0);
        assert!(l.per_ip.lock().is_empty());
        assert!(l.admit(&a, Some(one), false).is_ok());
    }

    #[test]
    fn the_default_leaves_room_for_upstreams_and_files() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(1 << 20), ((1 << 20) - 4096) / 2);
        assert_eq!(default_max_connections(10), 64);
    }

    #[test]
    fn mapped_addresses_count_as_their_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
