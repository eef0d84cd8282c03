//! The controller's command protocol: what operators and the gate may ask ([`Op`]), the
//! handle that sends it and reads the published state, and why a command is refused.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

pub use super::ops::ReloadReport;
pub use super::watch::{Board, SharedBoard};

use super::{deploy, plan};
use crate::config::ConfigError;
use crate::events::Event;
use crate::routing::{RoutingTable, TableReader};
use crate::types::{UpstreamAddr, Weight};

/// Commands that may wait for the controller before senders wait in turn.
pub const COMMAND_QUEUE: usize = 256;

/// A change someone asks for.
#[derive(Debug)]
pub enum Op {
    /// Set (replace) the canary upstreams; `weight` defaults to 0.
    SetCanary {
        /// Service name.
        service: String,
        /// New canary upstreams (already parsed and resolved).
        upstreams: Vec<UpstreamAddr>,
        /// Weight to start with.
        weight: Option<Weight>,
        /// A version label for history (e.g. "v2").
        label: Option<String>,
    },
    /// Change the canary weight.
    SetWeight {
        /// Service name.
        service: String,
        /// New weight.
        weight: Weight,
    },
    /// Make the canary the new stable.
    Promote {
        /// Service name.
        service: String,
    },
    /// Cut the canary back to 0 and hold it there.
    Rollback {
        /// Service name.
        service: String,
        /// Why, in the operator's words.
        reason: String,
    },
    /// Lift a rolled-back hold.
    Resume {
        /// Service name.
        service: String,
        /// Weight to resume at (default: the weight it had).
        weight: Option<Weight>,
    },
    /// Re-read the config file and apply it.
    Reload,
    /// Remove a held or idle canary.
    ClearCanary {
        /// Service name.
        service: String,
    },
    /// Start a deployment.
    Deploy {
        /// Service name.
        service: String,
        /// Strategy and settings.
        spec: plan::Spec,
        /// The new version: its upstreams, or an image to run.
        source: DeploySource,
        /// Version label.
        label: Option<String>,
        /// How long a phase may wait for what it needs (none: forever).
        deadline: Option<plan::Deadline>,
    },
    /// Pause, resume, abort or promote a deployment.
    Deployment {
        /// Deployment id.
        id: String,
        /// What to do.
        control: deploy::Control,
    },
    /// Freeze (with a reason) or unfreeze (`None`) deployments of a service or all.
    Freeze {
        /// One service, or all.
        service: Option<String>,
        /// Why; `None` lifts the freeze.
        reason: Option<String>,
    },
}

/// Where a deployment's new version comes from.
#[derive(Debug, Clone)]
pub enum DeploySource {
    /// Upstreams that already run.
    Upstreams(Vec<UpstreamAddr>),
    /// An image Sluice runs as containers (`[services.docker]`).
    Image(String),
}

/// A command: what, who asked, and where to send the answer.
#[derive(Debug)]
pub struct Command {
    /// The change.
    pub op: Op,
    /// Who asked (`api`, `api:cli:alice`, `signal:SIGHUP`, ...).
    pub actor: String,
    /// The answer.
    pub reply: oneshot::Sender<Result<Applied, ControlError>>,
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The table version now serving.
    pub table_version: u64,
    /// The event it produced.
    pub event: Arc<Event>,
    /// For a reload: what changed.
    pub reload: Option<ReloadReport>,
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such service.
    #[error("no service named '{0}'")]
    NotFound(String),
    /// The service's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The new config file is invalid; the old table keeps serving.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The controller has stopped (the gate is shutting down).
    #[error("the controller is not running")]
    Unavailable,
}

/// The sending side, cheap to clone: admin API handlers and signal handlers hold one.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) table: TableReader,
    pub(super) board: SharedBoard,
    pub(super) deployments: Arc<ArcSwap<HashMap<String, deploy::DeploymentView>>>,
    pub(super) freezes: Arc<ArcSwap<deploy::Freezes>>,
}

impl ControlHandle {
    /// The freezes in force (`{"all": ..., "services": {...}}`).
    pub fn freezes(&self) -> Arc<deploy::Freezes> {
        self.freezes.load_full()
    }

    /// The table serving now.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The judge's status board.
    pub fn board(&self) -> Arc<Board> {
        self.board.load_full()
    }

    /// A live (running, paused or recently finished) deployment.
    pub fn deployment(&self, id: &str) -> Option<deploy::DeploymentView> {
        self.deployments.load().get(id).cloned()
    }

    /// Every live deployment.
    pub fn deployments(&self) -> Arc<HashMap<String, deploy::DeploymentView>> {
        self.deployments.load_full()
    }

    /// Sends a command and waits for its answer.
    pub async fn send(&self, op: Op, actor: impl Into<String>) -> Result<Applied, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                op,
                actor: actor.into(),
                reply,
            })
            .await
            .map_err(|_| ControlError::Unavailable)?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }
}

pub(super) fn service_name(op: &Op) -> Option<&str> {
    match op {
        Op::SetCanary { service, .. }
        | Op::SetWeight { service, .. }
        | Op::Promote { service }
        | Op::Rollback { service, .. }
        | Op::Resume { service, .. }
        | Op::ClearCanary { service } => Some(service),
        _ => None,
    }
}
