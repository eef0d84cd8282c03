//! `[[notify]]` and `[dashboard]`: who is told about which events, and where the dashboard
//! lives (for the links in the messages).

use std::fmt;
use std::time::Duration;

use crate::events::EventKind;

/// Between the first attempt and the last.
pub const DEFAULT_NOTIFY_RETRIES: u32 = 3;
/// One delivery attempt.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Before the first retry; doubles each time.
pub const DEFAULT_NOTIFY_BACKOFF: Duration = Duration::from_secs(1);
/// Notifications waiting per notifier; beyond it the oldest are dropped (counted).
pub const DEFAULT_NOTIFY_QUEUE: usize = 256;

/// What a notifier hears when it does not say: what someone should act on.
pub const DEFAULT_NOTIFY_EVENTS: [EventKind; 11] = [
    EventKind::RolledBack,
    EventKind::Breach,
    EventKind::DeploymentFailed,
    EventKind::DeploymentSucceeded,
    EventKind::DeploymentAborted,
    EventKind::DeploymentStalled,
    EventKind::RollbackRefused,
    EventKind::ProbeFailed,
    EventKind::ReleaseMissing,
    EventKind::CertificateFailed,
    EventKind::AnalysisInconclusive,
];

/// A secret value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No TLS (a relay on the same host or network only).
    None,
}

/// An email notifier's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// SMTP server host.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// Connection protection.
    pub tls: SmtpTls,
    /// Login, when the server wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Secret>,
    /// Sender mailbox (`Name <addr>` or `addr`).
    pub from: String,
    /// Recipient mailboxes.
    pub to: Vec<String>,
}

/// Where a notifier delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyTarget {
    /// JSON POST, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// Endpoint.
        url: String,
        /// HMAC key.
        secret: Option<Secret>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Endpoint.
        url: Secret,
    },
    /// A Discord webhook.
    Discord {
        /// Endpoint.
        url: Secret,
    },
    /// Email over SMTP.
    Email(EmailConfig),
}

impl NotifyTarget {
    /// `webhook`, `slack`, `discord` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifyTarget::Webhook { .. } => "webhook",
            NotifyTarget::Slack { .. } => "slack",
            NotifyTarget::Discord { .. } => "discord",
            NotifyTarget::Email(_) => "email",
        }
    }
}

/// One validated `[[notify]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    /// Unique name (metrics label, events).
    pub name: String,
    /// Where it goes.
    pub target: NotifyTarget,
    /// Which events.
    pub events: Vec<EventKind>,
    /// Which services; empty: all (and events about no service).
    pub services: Vec<String>,
    /// One attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Before the first retry; doubles.
    pub backoff: Duration,
    /// Notifications waiting.
    pub queue: usize,
}

impl NotifierConfig {
    /// Whether this notifier wants `kind` about `service`.
    pub fn wants(&self, kind: EventKind, service: Option<&str>) -> bool {
        self.events.contains(&kind)
            && (self.services.is_empty()
                || service.is_some_and(|s| self.services.iter().any(|x| x == s)))
    }
}

/// `[dashboard]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardConfig {
    /// Served on the admin listener at `/`.
    pub enabled: bool,
    /// Its public address, for links in notifications.
    pub url: String,
    /// Whether `url` was configured (otherwise the gate fills in its admin address).
    pub url_given: bool,
}
