//! A TLS listener's side of the handshake in pingora: the settings every worker's endpoint
//! is built from (one shared resolver, ALPN, callbacks), the look at each ClientHello before
//! rustls (TLS-ALPN-01 validation answered there, refused and malformed hellos counted), and
//! what a finished handshake leaves for the request path (SNI, protocol version).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{PreTlsProcess, TlsAccept};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::TlsRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::{CertStore, Resolver, UnknownName, ACME_TLS_ALPN};

/// How long a client may take to send its ClientHello (default 10 s).
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest ClientHello read (default 64 KiB over at most 8 records).
pub const MAX_HELLO_BYTES: usize = 64 << 10;
const MAX_HELLO_RECORDS: usize = 8;
const HANDSHAKE_RECORD: u8 = 22;

/// Counts of one TLS listener's connections (exported as
/// `sluice_tls_handshakes_total{listener,result}` with `result` one of the field names).
/// Handshakes that fail after the ClientHello (no common protocol version or cipher, the
/// client rejected the certificate, or went away) are `started` minus the others, minus
/// the few still in progress.
#[derive(Debug, Default)]
pub struct HandshakeCounts {
    /// Connections accepted (every one starts a handshake).
    pub started: AtomicU64,
    /// Handshakes completed.
    pub ok: AtomicU64,
    /// Refused: a name no certificate covers, under `unknown_name = "refuse"`.
    pub refused: AtomicU64,
    /// Not a TLS ClientHello, or none within [`DEFAULT_HELLO_TIMEOUT`].
    pub malformed: AtomicU64,
    /// TLS-ALPN-01 validation connections answered.
    pub acme: AtomicU64,
}

/// What a completed handshake tells the request path (in the session's `SslDigest`).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The server name the client asked for.
    pub sni: Option<String>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<&'static str>,
}

struct Completed {
    listener: Arc<str>,
    counts: Arc<HandshakeCounts>,
}

#[async_trait]
impl TlsAccept for Completed {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.counts.ok.fetch_add(1, Relaxed);
        Some(Arc::new(TlsInfo {
            listener: self.listener.clone(),
            sni: tls.server_name().map(str::to_ascii_lowercase),
            version: tls.version(),
        }))
    }
}

/// The settings of one TLS endpoint (one per worker: pingora consumes them), sharing
/// `store`'s resolver. `h2` adds ALPN `h2` before `http/1.1`.
pub fn settings(
    store: &Arc<CertStore>,
    listener: &str,
    counts: &Arc<HandshakeCounts>,
    h2: bool,
) -> pingora::Result<TlsSettings> {
    let mut s = TlsSettings::with_callbacks(Box::new(Completed {
        listener: listener.into(),
        counts: counts.clone(),
    }))?;
    s.set_cert_resolver(Arc::new(Resolver(store.clone())));
    s.set_alpn(if h2 {
        pingora::listeners::ALPN::H2H1
    } else {
        pingora::listeners::ALPN::H1
    });
    Ok(s)
}

/// The pre-handshake look at every connection of a service's TLS endpoints. Which listener
/// a connection came in on is told by its local port.
pub struct HelloInspector {
    store: Arc<CertStore>,
    /// Local port -> that listener's counts.
    listeners: Vec<(u16, Arc<HandshakeCounts>)>,
    challenge: Arc<rustls::ServerConfig>,
}

impl HelloInspector {
    /// An inspector for the TLS listeners on `listeners` (port, counts).
    pub fn new(store: Arc<CertStore>, listeners: Vec<(u16, Arc<HandshakeCounts>)>) -> Self {
        let mut challenge = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(store.clone())));
        challenge.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        HelloInspector {
            store,
            listeners,
            challenge: Arc::new(challenge),
        }
    }

    fn counts(&self, stream: &L4Stream) -> Option<&Arc<HandshakeCounts>> {
        use pingora::protocols::GetSocketDigest;
        let port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()))?;
        self.listeners
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, c)| c)
    }
}

/// What the ClientHello asked for, as far as the gate cares.
#[derive(Debug, PartialEq)]
enum Hello {
    /// A TLS-ALPN-01 validation for this name.
    Acme(Option<String>),
    /// An ordinary handshake for this name (or none).
    Normal(Option<String>),
    /// Not a ClientHello.
    Malformed,
}

/// Reads records until rustls has a whole ClientHello (or gives up); returns the bytes
/// read (to put back) and what the hello asked for.
async fn read_hello(stream: &mut L4Stream) -> (Vec<u8>, Hello) {
    let mut buf = Vec::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    for _ in 0..MAX_HELLO_RECORDS {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).await.is_err() {
            return (buf, Hello::Malformed);
        }
        buf.extend_from_slice(&header);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != HANDSHAKE_RECORD || buf.len() + len > MAX_HELLO_BYTES {
            return (buf, Hello::Malformed);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        if stream.read_exact(&mut buf[start..]).await.is_err() {
            return (buf, Hello::Malformed);
        }
        let mut record = &buf[start - 5..];
        if acceptor.read_tls(&mut record).is_err() {
            return (buf, Hello::Malformed);
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let name = hello.server_name().map(str::to_ascii_lowercase);
                let acme = hello
                    .alpn()
                    .is_some_and(|mut p| p.any(|x| x == ACME_TLS_ALPN));
                return (
                    buf,
                    if acme {
                        Hello::Acme(name)
                    } else {
                        Hello::Normal(name)
                    },
                );
            }
            Ok(None) => continue,
            Err(_) => return (buf, Hello::Malformed),
        }
    }
    (buf, Hello::Malformed)
}

/// The error that ends a connection the inspector handled itself.
fn handled(why: &str) -> pingora::Result<()> {
    pingora::Error::e_explain(pingora::ErrorType::Custom("tls-hello"), why.to_string())
}

#[async_trait]
impl PreTlsProcess for HelloInspector {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let counts = self.counts(stream).cloned();
        if let Some(c) = &counts {
            c.started.fetch_add(1, Relaxed);
        }
        let count = |f: fn(&HandshakeCounts) -> &AtomicU64| {
            if let Some(c) = &counts {
                f(c).fetch_add(1, Relaxed);
            }
        };
        let (bytes, hello) =
            match tokio::time::timeout(DEFAULT_HELLO_TIMEOUT, read_hello(stream)).await {
                Ok(read) => read,
                Err(_) => {
                    count(|c| &c.malformed);
                    return handled("no TLS ClientHello in time");
                }
            };
        stream.rewind(&bytes);
        match hello {
            Hello::Malformed => {
                count(|c| &c.malformed);
                handled("not a TLS ClientHello")
            }
            Hello::Normal(name) => {
                let set = self.store.load();
                if set.unknown_name() == UnknownName::Refuse
                    && name.as_deref().and_then(|n| set.lookup(n)).is_none()
                {
                    count(|c| &c.refused);
                }
                // rustls refuses it the same way (the resolver answers nothing).
                Ok(())
            }
            Hello::Acme(_) => {
                count(|c| &c.acme);
                let acceptor = tokio_rustls::TlsAcceptor::from(self.challenge.clone());
                if let Ok(mut tls) = acceptor.accept(&mut *stream).await {
                    let _ = tls.shutdown().await;
                }
                // Validation connections carry no HTTP: close them here (pingora logs
                // this as a handshake error naming this reason).
                handled("acme-tls/1 validation answered (TLS-ALPN-01), not an error")
            }
        }
    }
}
