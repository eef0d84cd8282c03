//! What the Docker side tells the controller: reports on a channel of their own, so that
//! `docker` needs nothing of `rollout` (the controller imports these, never the reverse).

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::types::UpstreamAddr;

/// Reports waiting for the controller before senders wait.
pub const REPORT_QUEUE: usize = 256;

/// One thing the release manager or discovery saw.
#[derive(Debug)]
pub enum Report {
    /// A deployment's containers started and passed their health gate: its new arm.
    Prepared {
        /// Deployment id.
        id: String,
        /// The new containers' addresses.
        upstreams: Vec<UpstreamAddr>,
        /// What was started (containers, image id), for the event.
        evidence: serde_json::Value,
    },
    /// A deployment's containers could not be started.
    PrepareFailed {
        /// Deployment id.
        id: String,
        /// Why.
        why: String,
    },
    /// Containers of the stable release were recreated and have new addresses.
    StableMoved {
        /// Service name.
        service: String,
        /// Each old address and the new one.
        moved: Vec<(UpstreamAddr, UpstreamAddr)>,
        /// What happened.
        why: String,
        /// The restored containers' snapshots.
        evidence: serde_json::Value,
    },
    /// Whether the stable release can still take traffic back (`None`) or is gone.
    ReleaseGone {
        /// Service name.
        service: String,
        /// Why it cannot, or `None` once it can again.
        why: Option<String>,
    },
    /// Containers found by their labels: a service's discovered upstreams now.
    Discovered(Found),
}

/// A report with its sender's name and where the controller answers.
#[derive(Debug)]
pub struct Envelope {
    /// What happened.
    pub report: Report,
    /// Who saw it (`docker`, `docker:discovery`), the actor of the event it causes.
    pub from: &'static str,
    /// The controller's answer: applied, or refused with why.
    pub answer: oneshot::Sender<Result<(), String>>,
}

/// Why a report did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum NotApplied {
    /// The controller has stopped (the gate is shutting down).
    #[error("the controller is not running")]
    Stopped,
    /// The controller refused it (the reason).
    #[error("{0}")]
    Refused(String),
}

/// The sending side, cheap to clone.
#[derive(Clone, Debug)]
pub struct Reporter(mpsc::Sender<Envelope>);

impl Reporter {
    /// A reporter and the receiver the controller reads.
    pub fn channel() -> (Reporter, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        (Reporter(tx), rx)
    }

    /// Sends `report` and waits for the controller's answer.
    pub async fn send(&self, report: Report, from: &'static str) -> Result<(), NotApplied> {
        let (answer, rx) = oneshot::channel();
        self.0
            .send(Envelope {
                report,
                from,
                answer,
            })
            .await
            .map_err(|_| NotApplied::Stopped)?;
        rx.await
            .map_err(|_| NotApplied::Stopped)?
            .map_err(NotApplied::Refused)
    }
}

/// A container discovery found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundContainer {
    /// Its name.
    pub name: String,
    /// Where the gate reaches it.
    #[serde(serialize_with = "spec_of")]
    pub upstream: UpstreamAddr,
}

fn spec_of<S: serde::Serializer>(u: &UpstreamAddr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&u.spec)
}

/// What discovery found for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Found {
    /// Service name.
    pub service: String,
    /// Stable containers.
    pub stable: Vec<FoundContainer>,
    /// Canary containers.
    pub canary: Vec<FoundContainer>,
    /// `sluice.hosts` (for a service the config does not have).
    pub hosts: Vec<String>,
    /// `sluice.path_prefix`.
    pub path_prefix: Option<String>,
    /// `sluice.weight`, percent.
    pub weight: Option<String>,
}

impl Found {
    /// Nothing found (the service's containers are all gone).
    pub fn is_empty(&self) -> bool {
        self.stable.is_empty() && self.canary.is_empty()
    }
}
