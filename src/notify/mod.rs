//! Notifications: events from the bus, told to people through webhooks, Slack, Discord and
//! email.
//!
//! One dispatcher task follows the bus and hands each event a notifier wants to that
//! notifier's own bounded queue; one worker task per notifier delivers, with a timeout per
//! attempt and retries with doubling backoff. Nothing here can slow the controller or the
//! data plane: the bus never waits for a subscriber, a queue that is full drops its oldest
//! notification (counted), and a notifier that keeps failing gets one attempt per
//! notification until it answers again (so a dead endpoint does not hold a backlog).
//! Failures are counted (`sluice_notifications_total`) and reported as `notify_failed`
//! events, at most one per notifier per minute; those events are never notified.

mod format;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::broadcast::error::RecvError;

use crate::config::notify::{EmailConfig, NotifierConfig, NotifyTarget, SmtpTls};
use crate::events::{Event, EventBus, EventKind, NewEvent};
use crate::metrics::Metrics;

pub use format::{discord_body, slack_body, webhook_body, Notice, Severity};

/// Header with the event kind.
pub const EVENT_HEADER: &str = "x-sluice-event";
/// Header with the seconds since the epoch that the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-sluice-timestamp";
/// Header with `sha256=HEX`: HMAC-SHA256 over `TIMESTAMP.BODY` with the notifier's secret.
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Shortest time between two `notify_failed` events of one notifier.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What the notifiers are and where the dashboard is; swapped on reload.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The notifiers.
    pub notifiers: Vec<NotifierConfig>,
    /// The dashboard's address, for links.
    pub dashboard_url: String,
}

/// The settings the dispatcher follows.
pub type SharedSettings = Arc<ArcSwap<Settings>>;

/// `sha256=HEX` of HMAC-SHA256(secret, `timestamp.body`).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A bounded queue that drops its oldest item when full.
struct Queue {
    items: parking_lot::Mutex<VecDeque<Arc<Notice>>>,
    capacity: usize,
    wake: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    dropped: std::sync::atomic::AtomicU64,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            items: parking_lot::Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            capacity,
            wake: tokio::sync::Notify::new(),
            closed: Default::default(),
            dropped: Default::default(),
        }
    }

    /// Adds `n`; returns whether an older one was dropped for it.
    fn push(&self, n: Arc<Notice>) -> bool {
        let dropped = {
            let mut items = self.items.lock();
            let full = items.len() >= self.capacity;
            if full {
                items.pop_front();
            }
            items.push_back(n);
            full
        };
        if dropped {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.wake.notify_one();
        dropped
    }

    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// The next item; `None` once closed and empty.
    async fn pop(&self) -> Option<Arc<Notice>> {
        loop {
            if let Some(n) = self.items.lock().pop_front() {
                return Some(n);
            }
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            self.wake.notified().await;
        }
    }

    fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

/// How one notifier sends: everything an attempt needs, fixed when the notifier starts.
enum Sender {
    /// A JSON POST: the generic webhook (signed when it has a secret), Slack or Discord.
    Http {
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
        body: fn(&Notice) -> serde_json::Value,
    },
    /// SMTP.
    Email {
        transport: Box<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
        cfg: EmailConfig,
    },
}

fn smtp(cfg: &EmailConfig) -> Result<Sender, String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, Tokio1Executor};
    let builder = match cfg.tls {
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
            .map_err(|e| format!("smtp {}: {e}", cfg.host))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)
            .map_err(|e| format!("smtp {}: {e}", cfg.host))?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
    };
    let mut builder = builder.port(cfg.port);
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
    }
    Ok(Sender::Email {
        transport: Box::new(builder.build()),
        cfg: cfg.clone(),
    })
}

impl Sender {
    /// The sender for `cfg`. Attempts are bounded by the worker's timeout, not here.
    fn new(cfg: &NotifierConfig) -> Result<Sender, String> {
        let (url, secret, body): (&str, Option<&str>, fn(&Notice) -> serde_json::Value) =
            match &cfg.target {
                NotifyTarget::Email(e) => return smtp(e),
                NotifyTarget::Webhook { url, secret } => {
                    (url, secret.as_ref().map(|s| s.0.as_str()), webhook_body)
                }
                NotifyTarget::Slack { url } => (&url.0, None, slack_body),
                NotifyTarget::Discord { url } => (&url.0, None, discord_body),
            };
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Sender::Http {
            client,
            url: url.to_string(),
            secret: secret.map(str::to_string),
            body,
        })
    }

    /// One attempt. `Err((message, wait))`: what went wrong, and how long the receiver asked
    /// us to wait (`Retry-After`), if it did.
    async fn send(&self, n: &Notice) -> Result<(), (String, Option<Duration>)> {
        match self {
            Sender::Http {
                client,
                url,
                secret,
                body,
            } => {
                let body = serde_json::to_vec(&body(n)).unwrap_or_default();
                let mut req = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(EVENT_HEADER, n.kind.as_str());
                if let Some(secret) = secret {
                    let ts = crate::time::now_ms() / 1000;
                    req = req
                        .header(TIMESTAMP_HEADER, ts.to_string())
                        .header(SIGNATURE_HEADER, sign(secret, ts, &body));
                }
                let resp = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| (describe(&e), None))?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_BACKOFF));
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                Err((format!("HTTP {status}: {}", text.trim()), wait))
            }
            Sender::Email { transport, cfg } => {
                use lettre::AsyncTransport;
                let message = email(cfg, n).map_err(|m| (m, None))?;
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|err| (format!("smtp {}:{}: {err}", cfg.host, cfg.port), None))
            }
        }
    }
}

/// The error and its causes in one line (reqwest's top-level message alone says little).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The email for a notice.
fn email(cfg: &EmailConfig, n: &Notice) -> Result<lettre::Message, String> {
    let mut b = lettre::Message::builder()
        .from(cfg.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(n.subject())
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in &cfg.to {
        b = b.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    b.body(n.text()).map_err(|e| e.to_string())
}

/// A notifier's worker: its queue, and what it has not reported yet.
struct Worker {
    cfg: NotifierConfig,
    queue: Arc<Queue>,
}

/// Delivers one notifier's queue until it is closed and empty.
async fn deliver(cfg: NotifierConfig, queue: Arc<Queue>, bus: EventBus, metrics: Arc<Metrics>) {
    let sender = match Sender::new(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(notifier = %cfg.name, error = %e, "notifier cannot start");
            report(&bus, &cfg, 0, 0, &e);
            return;
        }
    };
    // After a notification fails all its attempts, the next ones get one attempt each
    // until one goes through.
    let mut failing = false;
    let mut unreported_failed = 0u64;
    let mut last_report: Option<tokio::time::Instant> = None;
    while let Some(n) = queue.pop().await {
        let attempts = if failing { 1 } else { cfg.retries + 1 };
        let mut delay = cfg.backoff;
        let mut error = String::new();
        let mut sent = false;
        for attempt in 1..=attempts {
            let outcome = tokio::time::timeout(cfg.timeout, sender.send(&n)).await;
            match outcome {
                Ok(Ok(())) => {
                    sent = true;
                    break;
                }
                Ok(Err((e, wait))) => {
                    error = e;
                    if let Some(w) = wait {
                        delay = delay.max(w);
                    }
                }
                Err(_) => error = format!("no answer within {:?}", cfg.timeout),
            }
            if attempt < attempts {
                metrics.notifications(&cfg.name, "retried", 1);
                tracing::debug!(notifier = %cfg.name, attempt, error = %error, "notification failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
        if sent {
            metrics.notifications(&cfg.name, "sent", 1);
            failing = false;
            continue;
        }
        failing = true;
        unreported_failed += 1;
        metrics.notifications(&cfg.name, "failed", 1);
        tracing::warn!(notifier = %cfg.name, kind = n.kind.as_str(), error = %error, "notification not delivered");
        let due = last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if due {
            report(&bus, &cfg, unreported_failed, queue.take_dropped(), &error);
            unreported_failed = 0;
            last_report = Some(tokio::time::Instant::now());
        }
    }
}

/// Publishes a `notify_failed` event.
fn report(bus: &EventBus, cfg: &NotifierConfig, failed: u64, dropped: u64, error: &str) {
    bus.publish(NewEvent::new(EventKind::NotifyFailed, format!("notify:{}", cfg.name), format!(
            "{} notifier '{}' could not deliver {failed} notification(s) ({dropped} dropped from a full queue): {error}",
            cfg.target.kind(),
            cfg.name
        )).evidence(json!({
            "notifier": cfg.name,
            "kind": cfg.target.kind(),
            "failed": failed,
            "dropped": dropped,
            "error": error,
            "retries": cfg.retries,
            "timeout_ms": cfg.timeout.as_millis() as u64,
        })));
}

/// Follows the bus and feeds every notifier's queue, until the bus closes. Picks up new
/// settings (a reload) at the next event: the old workers finish their queues and stop.
pub async fn run(settings: SharedSettings, bus: EventBus, metrics: Arc<Metrics>) {
    let mut rx = bus.subscribe();
    let mut current: Option<Arc<Settings>> = None;
    let mut workers: Vec<Worker> = Vec::new();
    loop {
        let event: Arc<Event> = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "notifications fell behind the event bus");
                for w in &workers {
                    metrics.notifications(&w.cfg.name, "dropped", missed);
                }
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let now = settings.load_full();
        if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &now)) {
            for w in workers.drain(..) {
                w.queue.close();
            }
            for cfg in &now.notifiers {
                let queue = Arc::new(Queue::new(cfg.queue));
                tokio::spawn(deliver(
                    cfg.clone(),
                    queue.clone(),
                    bus.clone(),
                    metrics.clone(),
                ));
                workers.push(Worker {
                    cfg: cfg.clone(),
                    queue,
                });
            }
            current = Some(now.clone());
        }
        // Never about notifications themselves: a failing notifier would feed itself.
        if event.kind == EventKind::NotifyFailed {
            continue;
        }
        let mut notice: Option<Arc<Notice>> = None;
        for w in &workers {
            if !w.cfg.wants(event.kind, event.service.as_deref()) {
                continue;
            }
            let n = notice
                .get_or_insert_with(|| Arc::new(Notice::new(&event, &now.dashboard_url)))
                .clone();
            if w.queue.push(n) {
                metrics.notifications(&w.cfg.name, "dropped", 1);
            }
        }
    }
    for w in workers {
        w.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let a = sign("0123456789abcdef", 1_700_000_000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, sign("0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(a, sign("0123456789abcdef", 1_700_000_000, b"{ }"));
        assert_ne!(a, sign("0123456789abcdeF", 1_700_000_000, b"{}"));
        // RFC 4231 test case 2, with the message split as we feed it.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest() {
        let e = Arc::new(Event {
            seq: 1,
            at_ms: 0,
            kind: EventKind::Breach,
            service: None,
            deployment: None,
            actor: "t".into(),
            message: "m".into(),
            table: None,
            evidence: serde_json::Value::Null,
        });
        let q = Queue::new(2);
        let mk = |seq| {
            let mut ev = (*e).clone();
            ev.seq = seq;
            Arc::new(Notice::new(&Arc::new(ev), "http://x/"))
        };
        assert!(!q.push(mk(1)));
        assert!(!q.push(mk(2)));
        assert!(q.push(mk(3)));
        assert_eq!(q.pop().await.unwrap().seq, 2);
        assert_eq!(q.pop().await.unwrap().seq, 3);
        q.close();
        assert!(q.pop().await.is_none());
        assert_eq!(q.take_dropped(), 1);
    }
}
