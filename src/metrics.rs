//! The Prometheus registry and Sluice's metric families.
//!
//! Families (the contract in DESIGN.md): `sluice_requests_total{service,arm,code_class}`,
//! `sluice_request_duration_seconds{service,arm}`, `sluice_canary_weight{service}`,
//! `sluice_rollbacks_total{service,trigger}`, `sluice_routing_table_version`, plus
//! `sluice_upstream_connect_failures_total{service,arm}`. The request path never looks a
//! label up: the routing table carries an [`ArmMetrics`] with the handles resolved when the
//! table was built.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::types::StatusClass;

/// Bucket bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All of Sluice's metric families in one registry (one per gate, not global, so tests can
/// run several gates in one process).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_failures: IntCounterVec,
    shielded: IntCounterVec,
    canary_weight: GaugeVec,
    rollbacks: IntCounterVec,
    table_version: IntGauge,
    unrouted: IntCounter,
    /// Access log lines a full queue dropped.
    pub access_log_dropped: IntCounter,
    /// Admin API requests refused for a missing or wrong token.
    pub admin_auth_failures: IntCounter,
    /// Client connections refused, by listener and the limit they met.
    pub connections_refused: IntCounterVec,
    /// Client connections open, by listener.
    pub connections_open: prometheus::IntGaugeVec,
    /// History store gauges and counters.
    pub store: StoreMetrics,
    probe_results: IntCounterVec,
    probe_duration: HistogramVec,
    upstream_healthy: prometheus::IntGaugeVec,
    notifications: IntCounterVec,
}

/// The history store's health: `sluice_store_up`, `sluice_store_pending_bytes`,
/// `sluice_store_written_total`, `sluice_store_dropped_total`, `sluice_store_write_errors_total`.
pub struct StoreMetrics {
    /// 1 when the last database write succeeded.
    pub up: IntGauge,
    pending_bytes: IntGauge,
    written: IntCounter,
    dropped: IntCounter,
    write_errors: IntCounter,
}

impl StoreMetrics {
    /// Copies a spool's figures into the families (counters advance by the difference).
    pub fn observe(&self, pending_bytes: u64, written: u64, dropped: u64, write_errors: u64) {
        self.pending_bytes.set(pending_bytes as i64);
        for (c, now) in [
            (&self.written, written),
            (&self.dropped, dropped),
            (&self.write_errors, write_errors),
        ] {
            let seen = c.get();
            if now > seen {
                c.inc_by(now - seen);
            }
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Pre-resolved handles for one arm of one service.
#[derive(Clone)]
pub struct ArmMetrics {
    by_class: [IntCounter; 6],
    duration: Histogram,
    connect_failures: IntCounter,
    shielded: IntCounter,
}

impl std::fmt::Debug for ArmMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArmMetrics")
    }
}

impl ArmMetrics {
    /// Counts one finished request.
    #[inline]
    pub fn record(&self, class: StatusClass, seconds: f64) {
        self.by_class[class.index()].inc();
        self.duration.observe(seconds);
    }

    /// Counts one failed connect attempt to an upstream of this arm.
    pub fn connect_failed(&self) {
        self.connect_failures.inc();
    }

    /// Counts one failed canary request replayed on stable.
    pub fn shielded(&self) {
        self.shielded.inc();
    }
}

// Start-up only: the names and labels are constants of this file, so a failure is a
// programming error the unit tests catch before any traffic.
#[allow(clippy::expect_used)]
fn build<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<T, prometheus::Error>,
) -> T {
    // The names and labels are constants of this file: a failure here is a programming
    // error caught by the unit tests, at start-up.
    let metric = metric.expect("metric definition is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric is registered once");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_requests_total",
                    "Requests finished, by service, arm and status class (none: no response).",
                ),
                &["service", "arm", "code_class"],
            ),
        );
        let duration = build(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_request_duration_seconds",
                    "Time from request start to the last byte of the response, by service and arm.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["service", "arm"],
            ),
        );
        let connect_failures = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_upstream_connect_failures_total",
                    "Failed connection attempts to upstreams, by service and arm.",
                ),
                &["service", "arm"],
            ),
        );
        let shielded = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_shielded_requests_total",
                    "Canary requests that failed and were replayed on stable (the client saw stable's answer).",
                ),
                &["service"],
            ),
        );
        let canary_weight = build(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "sluice_canary_weight",
                    "Share of new clients sent to the canary, in percent.",
                ),
                &["service"],
            ),
        );
        let rollbacks = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_rollbacks_total",
                    "Canary cut-backs, by service and what triggered them.",
                ),
                &["service", "trigger"],
            ),
        );
        let table_version = build(
            &registry,
            IntGauge::new(
                "sluice_routing_table_version",
                "Version of the routing table currently serving.",
            ),
        );
        let unrouted = build(
            &registry,
            IntCounter::new(
                "sluice_unrouted_requests_total",
                "Requests no service matched (answered 404 by the gate).",
            ),
        );
        let access_log_dropped = build(
            &registry,
            IntCounter::new(
                "sluice_access_log_dropped_total",
                "Access log lines dropped because the writer was behind (never waited for).",
            ),
        );
        let admin_auth_failures = build(
            &registry,
            IntCounter::new(
                "sluice_admin_auth_failures_total",
                "Admin API requests refused for a missing or wrong token.",
            ),
        );
        let connections_refused = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_connections_refused_total",
                    "Client connections refused, by listener and reason (max_connections, listener_max_connections, max_connections_per_ip, proxy_header).",
                ),
                &["listener", "reason"],
            ),
        );
        let connections_open = build(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "sluice_connections_open",
                    "Client connections open now, by listener.",
                ),
                &["listener"],
            ),
        );
        let store = StoreMetrics {
            up: build(
                &registry,
                IntGauge::new(
                    "sluice_store_up",
                    "1 when the history database accepted the last write, 0 while records wait in the spool.",
                ),
            ),
            pending_bytes: build(
                &registry,
                IntGauge::new(
                    "sluice_store_pending_bytes",
                    "Bytes of history records in the spool not yet written to the database.",
                ),
            ),
            written: build(
                &registry,
                IntCounter::new(
                    "sluice_store_written_total",
                    "History records written to the database.",
                ),
            ),
            dropped: build(
                &registry,
                IntCounter::new(
                    "sluice_store_dropped_total",
                    "History records dropped because the spool was full.",
                ),
            ),
            write_errors: build(
                &registry,
                IntCounter::new(
                    "sluice_store_write_errors_total",
                    "Failed history database writes (each retried).",
                ),
            ),
        };
        let probe_results = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_probe_results_total",
                    "Active probe results, by service, probe and result (success, failure, timeout, error).",
                ),
                &["service", "probe", "result"],
            ),
        );
        let probe_duration = build(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_probe_duration_seconds",
                    "How long active probes took, by service and probe.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["service", "probe"],
            ),
        );
        let upstream_healthy = build(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "sluice_upstream_healthy",
                    "1 when an upstream passes its probes (or has none yet), 0 when they fail.",
                ),
                &["service", "arm", "upstream"],
            ),
        );
        let notifications = build(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "sluice_notifications_total",
                    "Notifications by notifier and result (sent, retried, failed, dropped).",
                ),
                &["notifier", "result"],
            ),
        );
        Metrics {
            notifications,
            probe_results,
            probe_duration,
            upstream_healthy,
            store,
            unrouted,
            access_log_dropped,
            admin_auth_failures,
            connections_refused,
            connections_open,
            registry,
            requests,
            duration,
            connect_failures,
            shielded,
            canary_weight,
            rollbacks,
            table_version,
        }
    }

    /// Counts `n` notification outcomes: `sent`, `retried`, `failed` (gave up) or `dropped`
    /// (its queue was full, or it fell behind the bus).
    pub fn notifications(&self, notifier: &str, result: &str, n: u64) {
        self.notifications
            .with_label_values(&[notifier, result])
            .inc_by(n);
    }

    /// Resolves the handles of one arm.
    pub fn arm(&self, service: &str, arm: &str) -> ArmMetrics {
        ArmMetrics {
            by_class: StatusClass::ALL
                .map(|c| self.requests.with_label_values(&[service, arm, c.label()])),
            duration: self.duration.with_label_values(&[service, arm]),
            connect_failures: self.connect_failures.with_label_values(&[service, arm]),
            shielded: self.shielded.with_label_values(&[service]),
        }
    }

    /// The canary weight gauge of a service.
    pub fn canary_weight(&self, service: &str) -> Gauge {
        self.canary_weight.with_label_values(&[service])
    }

    /// Counts a rollback.
    pub fn rollback(&self, service: &str, trigger: &str) {
        self.rollbacks.with_label_values(&[service, trigger]).inc();
    }

    /// Sets the routing table version gauge.
    pub fn set_table_version(&self, version: u64) {
        self.table_version.set(version as i64);
    }

    /// Counts one probe result.
    pub fn probe_result(&self, service: &str, probe: &str, result: &str, seconds: f64) {
        self.probe_results
            .with_label_values(&[service, probe, result])
            .inc();
        self.probe_duration
            .with_label_values(&[service, probe])
            .observe(seconds);
    }

    /// Sets an upstream's health gauge.
    pub fn upstream_healthy(&self, service: &str, arm: &str, upstream: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[service, arm, upstream])
            .set(i64::from(healthy));
    }

    /// Counts a request no service matched.
    pub fn unrouted(&self) {
        self.unrouted.inc();
    }

    /// Drops every series of a service that left the config.
    pub fn forget_service(&self, service: &str) {
        for arm in ["stable", "canary"] {
            for c in StatusClass::ALL {
                let _ = self
                    .requests
                    .remove_label_values(&[service, arm, c.label()]);
            }
            let _ = self.duration.remove_label_values(&[service, arm]);
            let _ = self.connect_failures.remove_label_values(&[service, arm]);
        }
        let _ = self.canary_weight.remove_label_values(&[service]);
        let _ = self.shielded.remove_label_values(&[service]);
    }

    /// The registry, for families other modules add.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds a collector read at each scrape (families computed from live state).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "metric collector not registered");
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_labels() {
        let m = Metrics::new();
        let arm = m.arm("web", "canary");
        arm.record(StatusClass::ServerError, 0.012);
        m.canary_weight("web").set(12.5);
        m.rollback("web", "judge");
        m.set_table_version(7);
        let text = m.render();
        assert!(text
            .contains(r#"sluice_requests_total{arm="canary",code_class="5xx",service="web"} 1"#));
        assert!(text.contains(r#"sluice_canary_weight{service="web"} 12.5"#));
        assert!(text.contains(r#"sluice_rollbacks_total{service="web",trigger="judge"} 1"#));
        assert!(text.contains("sluice_routing_table_version 7"));
        assert!(text.contains("sluice_request_duration_seconds_bucket"));
        m.forget_service("web");
        assert!(!m.render().contains(r#"service="web",code_class"#));
    }
}
