//! The proxy's listeners and what each one is: plain or TLS, redirecting to https, sending
//! HSTS; the certificates the TLS ones serve (loaded from the config's files at start, on
//! reload, and when a file changes on disk); and their figures for `/metrics`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::config::tls::{ListenerConfig, TlsConfig, UnknownNamePolicy};
use crate::tls::{CertStore, Entry, HandshakeCounts, Source, UnknownName};

/// How often certificate files are checked for changes (default 2 s).
pub const DEFAULT_CERT_POLL: Duration = Duration::from_secs(2);

/// What the request path needs to know of the listener a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// It terminates TLS.
    pub tls: bool,
    /// Plain requests are redirected to this https port (ACME's HTTP-01 path excepted).
    pub redirect_to: Option<u16>,
    /// The https port a plain listener redirects the requests of services that say
    /// `redirect_https` to (the first TLS listener's); `None` on a TLS listener.
    pub https_port: Option<u16>,
    /// ACME's HTTP-01 path is answered here (a plain listener that redirects, or any plain
    /// listener when `tls.acme` is on).
    pub http01: bool,
    /// The `Strict-Transport-Security` value it adds, when it sends one.
    pub hsts: Option<String>,
    /// The services it serves (`None`: all).
    pub services: Option<std::collections::HashSet<String>>,
    /// Request target and header limits (`server.max_*`).
    pub limits: RequestLimits,
}

/// The limits a request head must keep to, checked before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The longest request target (414 beyond).
    pub max_uri_length: usize,
    /// The most header fields (431 beyond).
    pub max_headers: usize,
    /// The most bytes of header fields, names and values (431 beyond).
    pub max_header_size: usize,
    /// The longest wait between two reads of a body (408 beyond).
    pub client_body_timeout: std::time::Duration,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            max_uri_length: crate::config::DEFAULT_MAX_URI_LENGTH,
            max_headers: crate::config::DEFAULT_MAX_HEADERS,
            max_header_size: crate::config::DEFAULT_MAX_HEADER_SIZE,
            client_body_timeout: crate::config::DEFAULT_CLIENT_BODY_TIMEOUT,
        }
    }
}

impl ListenerInfo {
    /// Whether this listener serves the service `name`.
    #[inline]
    pub fn serves(&self, name: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(name))
    }
}

impl ListenerInfo {
    /// Every listener's info; `bound` holds each one's actual address (port 0 resolved), in
    /// config order.
    pub fn all(
        listeners: &[ListenerConfig],
        bound: &[std::net::SocketAddr],
        acme: bool,
        limits: RequestLimits,
    ) -> Vec<ListenerInfo> {
        let https_port = listeners
            .iter()
            .zip(bound)
            .find(|(l, _)| l.tls)
            .map(|(_, a)| a.port());
        listeners
            .iter()
            .map(|l| ListenerInfo {
                name: l.name.clone(),
                tls: l.tls,
                redirect_to: if l.redirect_https { https_port } else { None },
                https_port: if l.tls { None } else { https_port },
                http01: !l.tls && (l.redirect_https || acme),
                hsts: l.hsts.map(|d| format!("max-age={}", d.as_secs())),
                services: l.services.as_ref().map(|s| s.iter().cloned().collect()),
                limits,
            })
            .collect()
    }
}

/// The certificates of the TLS listeners: the store every handshake reads, the `[tls]`
/// section it was loaded from, and the files' modification times last seen.
#[derive(Debug)]
pub struct Certificates {
    store: Arc<CertStore>,
    config: ArcSwap<TlsConfig>,
    seen: parking_lot::Mutex<Vec<Option<SystemTime>>>,
}

fn policy(p: UnknownNamePolicy) -> UnknownName {
    match p {
        UnknownNamePolicy::Default => UnknownName::Default,
        UnknownNamePolicy::Refuse => UnknownName::Refuse,
    }
}

fn mtimes(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    cfg.certificates
        .iter()
        .flat_map(|c| [m(&c.cert), m(&c.key)])
        .collect()
}

impl Certificates {
    /// Loads `cfg`'s files into a new store.
    pub fn load(cfg: &TlsConfig) -> Result<Certificates, String> {
        let certs = Certificates {
            store: Arc::new(CertStore::new(policy(cfg.unknown_name))),
            config: ArcSwap::from_pointee(cfg.clone()),
            seen: parking_lot::Mutex::new(Vec::new()),
        };
        certs.apply(cfg)?;
        Ok(certs)
    }

    /// Says which of `hosts` no certificate covers (they get the default certificate, or a
    /// refused handshake): a warning at start, since a file may be added later.
    pub fn warn_uncovered(&self, hosts: &[String]) {
        let set = self.store.load();
        for h in hosts {
            if set.lookup(h).is_none() {
                tracing::warn!(host = %h, "no certificate covers this service host: TLS clients get the default certificate or a refusal");
            }
        }
    }

    /// The store the TLS listeners' resolver reads.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Loads `cfg`'s files and swaps them in (start, reload). On an error nothing changes:
    /// the certificates serving stay.
    pub fn apply(&self, cfg: &TlsConfig) -> Result<(), String> {
        let now = crate::time::now_ms() as i64 / 1000;
        let seen = mtimes(cfg);
        let mut entries = Vec::with_capacity(cfg.certificates.len());
        for (i, c) in cfg.certificates.iter().enumerate() {
            let loaded = crate::tls::load_files(&c.cert, &c.key, now)
                .map_err(|e| format!("tls.certificates[{i}]: {e}"))?;
            let left = loaded.seconds_left(now);
            if left < crate::tls::DEFAULT_EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(
                    file = %c.cert.display(),
                    names = ?loaded.names,
                    days_left = left / 86_400,
                    "tls.certificates[{i}] expires within 7 days"
                );
            }
            entries.push(Entry {
                loaded,
                source: Source::Files {
                    cert: c.cert.display().to_string(),
                    key: c.key.display().to_string(),
                },
            });
        }
        self.store
            .set_files(entries, cfg.default.clone(), policy(cfg.unknown_name));
        self.config.store(Arc::new(cfg.clone()));
        *self.seen.lock() = seen;
        Ok(())
    }

    /// Reloads the files if any of them changed since they were loaded; returns whether it
    /// did. A file caught half-written fails to load and is tried again at the next look.
    pub fn refresh(&self) -> Result<bool, String> {
        let cfg = self.config.load_full();
        if mtimes(&cfg) == *self.seen.lock() {
            return Ok(false);
        }
        self.apply(&cfg).map(|()| true)
    }

    /// Looks at the files every `interval` until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tick.tick().await;
            match self.refresh() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!("certificate files changed: reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "changed certificate files do not load; the previous ones keep serving");
                        last_error = Some(e);
                    }
                }
            }
        }
    }
}

/// `sluice_tls_handshakes_total{listener,result}` and
/// `sluice_tls_certificate_expiry_timestamp_seconds{name}`, read at each scrape.
pub struct TlsMetrics {
    /// Each TLS listener's name and counts.
    pub listeners: Vec<(String, Arc<HandshakeCounts>)>,
    /// The certificates served.
    pub certificates: Arc<Certificates>,
    descs: Vec<Desc>,
}

const HANDSHAKES: &str = "sluice_tls_handshakes_total";
const EXPIRY: &str = "sluice_tls_certificate_expiry_timestamp_seconds";

impl TlsMetrics {
    /// A collector over `listeners` and `certificates`.
    pub fn new(
        listeners: Vec<(String, Arc<HandshakeCounts>)>,
        certificates: Arc<Certificates>,
    ) -> TlsMetrics {
        let descs = [
            (
                HANDSHAKES,
                "TLS handshakes by listener and result (started, ok, refused, malformed, acme)",
                vec!["listener".to_string(), "result".to_string()],
            ),
            (
                EXPIRY,
                "When each served certificate expires (Unix seconds), by name",
                vec!["name".to_string()],
            ),
        ]
        .into_iter()
        .filter_map(|(n, h, l)| Desc::new(n.into(), h.into(), l, Default::default()).ok())
        .collect();
        TlsMetrics {
            listeners,
            certificates,
            descs,
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

impl Collector for TlsMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut handshakes = MetricFamily::default();
        handshakes.set_name(HANDSHAKES.into());
        handshakes.set_help(
            self.descs
                .first()
                .map(|d| d.help.clone())
                .unwrap_or_default(),
        );
        handshakes.set_field_type(MetricType::COUNTER);
        for (name, c) in &self.listeners {
            for (result, n) in [
                ("started", &c.started),
                ("ok", &c.ok),
                ("refused", &c.refused),
                ("malformed", &c.malformed),
                ("acme", &c.acme),
            ] {
                let mut counter = Counter::default();
                counter.set_value(n.load(Relaxed) as f64);
                let mut m = Metric::default();
                m.set_label(labels(&[("listener", name), ("result", result)]));
                m.set_counter(counter);
                handshakes.mut_metric().push(m);
            }
        }
        let mut expiry = MetricFamily::default();
        expiry.set_name(EXPIRY.into());
        expiry.set_help(
            self.descs
                .get(1)
                .map(|d| d.help.clone())
                .unwrap_or_default(),
        );
        expiry.set_field_type(MetricType::GAUGE);
        let set = self.certificates.store().load();
        let mut seen = std::collections::BTreeMap::new();
        for e in set.entries() {
            for n in &e.loaded.names {
                seen.entry(n.clone()).or_insert(e.loaded.not_after);
            }
        }
        for (name, not_after) in seen {
            let mut g = Gauge::default();
            g.set_value(not_after as f64);
            let mut m = Metric::default();
            m.set_label(labels(&[("name", &name)]));
            m.set_gauge(g);
            expiry.mut_metric().push(m);
        }
        vec![handshakes, expiry]
    }
}

/// The ACME manager's settings for `[acme]`.
pub fn acme_settings(cfg: &crate::config::tls::AcmeConfig) -> crate::acme::manager::Settings {
    use crate::acme::manager::{Settings, DEFAULT_RETRY_MAX};
    Settings {
        directory: cfg.directory.clone(),
        contact: cfg.email.iter().map(|e| format!("mailto:{e}")).collect(),
        dir: cfg.dir.clone(),
        ca_file: cfg.ca_file.clone(),
        challenge: cfg.challenge,
        renew_before: cfg.renew_before,
        retry_min: cfg.retry_min,
        retry_max: DEFAULT_RETRY_MAX.max(cfg.retry_min),
        names: cfg.names.clone(),
    }
}

/// Turns the ACME manager's reports into events (`certificate_issued`,
/// `certificate_failed`; a certificate restored at start is logged) until the manager stops.
pub async fn report_certificates(
    mut reports: tokio::sync::mpsc::UnboundedReceiver<crate::acme::manager::Report>,
    bus: crate::events::EventBus,
) {
    use crate::acme::manager::Report;
    use crate::events::{EventKind, NewEvent};
    use serde_json::json;
    while let Some(report) = reports.recv().await {
        match report {
            Report::Restored { name, not_after } => {
                tracing::info!(%name, not_after, "stored ACME certificate serving");
            }
            Report::Issued {
                name,
                not_after,
                issuer,
                serial,
                renewal,
                challenge,
                took_ms,
            } => {
                bus.publish(
                    NewEvent::new(
                        EventKind::CertificateIssued,
                        "acme",
                        format!(
                            "certificate for {name} {} by {issuer} ({}, {took_ms} ms), valid until {}",
                            if renewal { "renewed" } else { "issued" },
                            challenge.as_str(),
                            crate::time::format_time(not_after.max(0) as u64 * 1000)
                        ),
                    )
                    .evidence(json!({
                        "name": name,
                        "issuer": issuer,
                        "serial": serial,
                        "not_after_ms": not_after.max(0) as u64 * 1000,
                        "renewal": renewal,
                        "challenge": challenge,
                        "took_ms": took_ms,
                    })),
                );
            }
            Report::Failed {
                name,
                error,
                problem,
                attempt,
                retry_in,
            } => {
                bus.publish(
                    NewEvent::new(
                        EventKind::CertificateFailed,
                        "acme",
                        format!(
                            "certificate order for {name} failed (attempt {attempt}, next in {}): {error}",
                            crate::time::format_duration(retry_in)
                        ),
                    )
                    .evidence(json!({
                        "name": name,
                        "error": error,
                        "problem": problem,
                        "attempt": attempt,
                        "retry_in_ms": retry_in.as_millis() as u64,
                    })),
                );
            }
        }
    }
}
