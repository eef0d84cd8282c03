//! The ACME manager: a background task that keeps a valid certificate for every name that
//! asks for one. At start it serves what it stored before; then it orders certificates for
//! names that have none, renews each `renew_before` its expiry (with jitter, so many names
//! do not renew in one burst), and retries failures with a doubling backoff, or after the
//! server's `Retry-After`. It never stops serving: a failed order leaves the certificate
//! it had in place. It reports on its own channel; the gate turns reports into events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::challenges::{alpn_certificate, Http01};
use super::http::AcmeHttp;
use super::storage::Storage;
use crate::tls::{from_pem, CertStore};

/// Let's Encrypt's production directory (the default).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Renew this long before expiry (default 30 days).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// The first retry after a failure (default 1 minute); it doubles on each failure.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(60);
/// The longest wait between retries (default 6 hours).
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// How long one order may take to become ready or to deliver its certificate.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// Names are looked at again at least this often (default 1 hour).
pub const RECHECK: Duration = Duration::from_secs(3600);

/// The challenge a name is validated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Challenge {
    /// A token on the plain listener (port 80).
    Http01,
    /// A certificate on the TLS listener (port 443), ALPN `acme-tls/1`.
    TlsAlpn01,
}

impl Challenge {
    /// `http-01` or `tls-alpn-01`.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// What the manager is told to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ACME directory URL (default [`LETS_ENCRYPT`]).
    pub directory: String,
    /// Contact URLs for the account (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// Where the account and certificates are kept.
    pub dir: PathBuf,
    /// Extra roots to trust for the ACME server (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The challenge type.
    pub challenge: Challenge,
    /// Renew this long before expiry (default [`DEFAULT_RENEW_BEFORE`]).
    pub renew_before: Duration,
    /// First retry delay (default [`DEFAULT_RETRY_MIN`]).
    pub retry_min: Duration,
    /// Longest retry delay (default [`DEFAULT_RETRY_MAX`]).
    pub retry_max: Duration,
    /// The names to keep certificates for (exact names; no wildcards).
    pub names: Vec<String>,
}

/// What happened to a name's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A stored certificate was put back in service at start.
    Restored {
        /// The name.
        name: String,
        /// Its expiry, epoch seconds.
        not_after: i64,
    },
    /// A certificate was issued (or renewed).
    Issued {
        /// The name.
        name: String,
        /// Its expiry, epoch seconds.
        not_after: i64,
        /// Who issued it.
        issuer: String,
        /// Its serial (hex).
        serial: String,
        /// A renewal of a certificate it had.
        renewal: bool,
        /// The challenge used.
        challenge: Challenge,
        /// How long the order took, ms.
        took_ms: u64,
    },
    /// An order failed; the certificate it had (if any) keeps serving.
    Failed {
        /// The name.
        name: String,
        /// Why, in the server's words where it gave them.
        error: String,
        /// The ACME problem type, when the server sent one.
        problem: Option<String>,
        /// Failures in a row.
        attempt: u32,
        /// When it tries again.
        retry_in: Duration,
    },
}

/// Why the manager cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The directory cannot be created.
    #[error("tls.acme.dir {dir}: {why}")]
    Storage {
        /// The directory.
        dir: String,
        /// Why.
        why: String,
    },
    /// The HTTP client cannot be built.
    #[error(transparent)]
    Http(#[from] super::http::HttpError),
}

/// How a name's certificate stands, as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NameStatus {
    /// Orders placed for it by this run.
    pub orders: u32,
    /// Failed orders in a row.
    pub failures: u32,
    /// The latest failure.
    pub last_error: Option<String>,
    /// When the next order is due (epoch ms).
    pub next_order_ms: Option<u64>,
}

/// Every ACME name's status, swapped whole by the manager.
pub type AcmeBoard = Arc<arc_swap::ArcSwap<std::collections::BTreeMap<String, NameStatus>>>;

/// What the manager keeps per name.
#[derive(Debug, Default)]
struct NameState {
    orders: u32,
    last_error: Option<String>,
    failures: u32,
    /// No attempt before this (a backoff).
    not_before: Option<Instant>,
    /// Renewal jitter, drawn once.
    jitter: Duration,
}

/// The manager (see the module doc).
pub struct Manager {
    settings: Settings,
    storage: Storage,
    http: AcmeHttp,
    certs: Arc<CertStore>,
    http01: Arc<Http01>,
    reports: mpsc::UnboundedSender<Report>,
    account: Option<Account>,
    names: HashMap<String, NameState>,
    board: AcmeBoard,
}

fn now_epoch() -> i64 {
    (crate::time::now_ms() / 1000) as i64
}

impl Manager {
    /// A manager for `settings`, answering challenges through `certs` (TLS-ALPN-01) and
    /// `http01`, reporting on `reports`.
    pub fn new(
        settings: Settings,
        certs: Arc<CertStore>,
        http01: Arc<Http01>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<Manager, AcmeError> {
        let storage = Storage::open(&settings.dir).map_err(|e| AcmeError::Storage {
            dir: settings.dir.display().to_string(),
            why: e.to_string(),
        })?;
        let http = AcmeHttp::new(settings.ca_file.as_deref())?;
        let spread = settings.renew_before / 10;
        let names = settings
            .names
            .iter()
            .map(|n| {
                let jitter = Duration::from_millis(fastrand::u64(0..=spread.as_millis() as u64));
                (
                    n.clone(),
                    NameState {
                        jitter,
                        ..NameState::default()
                    },
                )
            })
            .collect();
        Ok(Manager {
            settings,
            storage,
            http,
            certs,
            http01,
            reports,
            account: None,
            names,
            board: AcmeBoard::default(),
        })
    }

    /// The status board (for the admin API), kept up to date by [`Manager::run`].
    pub fn board(&self) -> AcmeBoard {
        self.board.clone()
    }

    fn publish_board(&self) {
        let now = Instant::now();
        let wall = crate::time::now_ms();
        let board = self
            .names
            .iter()
            .map(|(name, s)| {
                let due = self.due(name, s, now);
                let next = wall + due.saturating_duration_since(now).as_millis() as u64;
                (
                    name.clone(),
                    NameStatus {
                        orders: s.orders,
                        failures: s.failures,
                        last_error: s.last_error.clone(),
                        next_order_ms: Some(next),
                    },
                )
            })
            .collect();
        self.board.store(Arc::new(board));
    }

    /// Puts the stored certificates that are still valid back in service (at start, before
    /// the listeners take handshakes: a restart needs no new order).
    pub fn restore(&self) {
        let now = now_epoch();
        for name in &self.settings.names {
            let Ok(Some((chain, key))) = self.storage.cert(name) else {
                continue;
            };
            let (c, k) = self.storage.cert_paths(name);
            match from_pem(
                chain.as_bytes(),
                key.as_bytes(),
                &c.display().to_string(),
                &k.display().to_string(),
                now,
            ) {
                Ok(loaded) if loaded.covers(name) => {
                    let not_after = loaded.not_after;
                    self.certs.put_acme(name, loaded);
                    self.report(Report::Restored {
                        name: name.clone(),
                        not_after,
                    });
                }
                Ok(_) => {
                    tracing::warn!(%name, "stored certificate does not cover its name; ordering a new one")
                }
                Err(e) => {
                    tracing::warn!(%name, error = %e, "stored certificate unusable; ordering a new one")
                }
            }
        }
    }

    fn report(&self, r: Report) {
        // Nobody listening (the gate is stopping) is not an error.
        let _ = self.reports.send(r);
    }

    /// When `name` needs its next order: now, at its renewal time, or after its backoff.
    fn due(&self, name: &str, state: &NameState, now: Instant) -> Instant {
        let renew_at = match self.certs.load().lookup(name) {
            // A certificate from a file covers it: look again later (the file may change).
            Some(e)
                if e.loaded.covers(name)
                    && matches!(e.source, crate::tls::Source::Files { .. }) =>
            {
                now + RECHECK
            }
            Some(e) if e.loaded.covers(name) => {
                let left = e.loaded.not_after - now_epoch();
                let before = self.settings.renew_before + state.jitter;
                let wait = Duration::from_secs(left.max(0) as u64).saturating_sub(before);
                now + wait
            }
            _ => now,
        };
        match state.not_before {
            Some(t) if t > renew_at => t,
            _ => renew_at,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.publish_board();
            let now = Instant::now();
            let mut next = now + RECHECK;
            let names: Vec<String> = self.names.keys().cloned().collect();
            for name in names {
                let due = match self.names.get(&name) {
                    Some(s) => self.due(&name, s, now),
                    None => continue,
                };
                if due <= now {
                    tokio::select! {
                        () = self.attempt(&name) => {}
                        _ = shutdown.changed() => return,
                    }
                    if let Some(s) = self.names.get(&name) {
                        next = next.min(self.due(&name, s, Instant::now()));
                    }
                    self.publish_board();
                } else {
                    next = next.min(due);
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// One order for `name`, with its outcome recorded.
    async fn attempt(&mut self, name: &str) {
        let started = Instant::now();
        let renewal = self.certs.load().acme(name).is_some();
        let result = self.order(name).await;
        let Some(state) = self.names.get_mut(name) else {
            return;
        };
        state.orders += 1;
        match result {
            Ok(loaded) => {
                state.failures = 0;
                state.last_error = None;
                state.not_before = None;
                let report = Report::Issued {
                    name: name.to_string(),
                    not_after: loaded.not_after,
                    issuer: loaded.issuer.clone(),
                    serial: loaded.serial.clone(),
                    renewal,
                    challenge: self.settings.challenge,
                    took_ms: started.elapsed().as_millis() as u64,
                };
                self.certs.put_acme(name, loaded);
                self.report(report);
            }
            Err(failure) => {
                state.failures += 1;
                let backoff = self
                    .settings
                    .retry_min
                    .saturating_mul(1 << (state.failures - 1).min(20))
                    .min(self.settings.retry_max);
                let retry_in = self.http.take_retry_after().unwrap_or(backoff);
                state.not_before = Some(Instant::now() + retry_in);
                state.last_error = Some(failure.error.clone());
                let attempt = state.failures;
                tracing::warn!(%name, error = %failure.error, ?retry_in, "certificate order failed");
                self.report(Report::Failed {
                    name: name.to_string(),
                    error: failure.error,
                    problem: failure.problem,
                    attempt,
                    retry_in,
                });
            }
        }
    }

    async fn account(&mut self) -> Result<Account, Failure> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let stored = self.storage.account().map_err(Failure::io)?;
        let account = match stored.and_then(|s| serde_json::from_str::<AccountCredentials>(&s).ok())
        {
            Some(creds) => builder().from_credentials(creds).await?,
            None => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await?;
                let json =
                    serde_json::to_string(&creds).map_err(|e| Failure::other(e.to_string()))?;
                self.storage.save_account(&json).map_err(Failure::io)?;
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders, validates, finalises and stores a certificate for `name`.
    async fn order(&mut self, name: &str) -> Result<crate::tls::Loaded, Failure> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let kind = match self.settings.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut tokens = Vec::new();
        let validated = async {
            // The authorizations borrow the order: look at them in a scope of their own.
            {
                let mut authorizations = order.authorizations();
                while let Some(a) = authorizations.next().await {
                    let mut a = a?;
                    if a.status != AuthorizationStatus::Pending {
                        continue;
                    }
                    let mut ch = a.challenge(kind.clone()).ok_or_else(|| {
                        Failure::other(format!(
                            "the server offers no {} challenge for {name}",
                            self.settings.challenge.as_str()
                        ))
                    })?;
                    let ka = ch.key_authorization();
                    match kind {
                        ChallengeType::TlsAlpn01 => {
                            let cert = alpn_certificate(name, ka.digest().as_ref())
                                .map_err(|e| Failure::other(e.to_string()))?;
                            self.certs.set_challenge(name, Some(cert));
                        }
                        _ => {
                            self.http01.insert(&ch.token, ka.as_str());
                            tokens.push(ch.token.clone());
                        }
                    }
                    ch.set_ready().await?;
                }
            }
            let policy = RetryPolicy::new().timeout(ORDER_TIMEOUT);
            let status = order.poll_ready(&policy).await?;
            if status != OrderStatus::Ready {
                return Err(Failure::other(format!("the order ended {status:?}")));
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&policy).await?;
            Ok::<_, Failure>((chain, key))
        }
        .await;
        // Whatever happened, stop answering this order's challenges.
        for t in &tokens {
            self.http01.remove(t);
        }
        if kind == ChallengeType::TlsAlpn01 {
            self.certs.set_challenge(name, None);
        }
        let (chain, key) = validated?;
        self.storage
            .save_cert(name, &chain, &key)
            .map_err(Failure::io)?;
        let (c, k) = self.storage.cert_paths(name);
        from_pem(
            chain.as_bytes(),
            key.as_bytes(),
            &c.display().to_string(),
            &k.display().to_string(),
            now_epoch(),
        )
        .map_err(|e| Failure::other(format!("the issued certificate is unusable: {e}")))
    }
}

/// A failed order, as reported.
#[derive(Debug)]
struct Failure {
    error: String,
    problem: Option<String>,
}

impl Failure {
    fn other(error: String) -> Failure {
        Failure {
            error,
            problem: None,
        }
    }

    fn io(e: std::io::Error) -> Failure {
        Failure::other(format!("tls.acme.dir: {e}"))
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Failure {
        match e {
            instant_acme::Error::Api(p) => {
                let detail = p.detail.clone().unwrap_or_default();
                let sub: Vec<String> = p
                    .subproblems
                    .iter()
                    .filter_map(|s| s.detail.clone())
                    .collect();
                Failure {
                    error: if sub.is_empty() {
                        detail
                    } else {
                        format!("{detail} ({})", sub.join("; "))
                    },
                    problem: p.r#type.clone(),
                }
            }
            other => Failure::other(other.to_string()),
        }
    }
}
