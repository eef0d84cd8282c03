//! The services resource: views with live per-arm stats, and the operator's direct
//! commands on one service (canary, weight, promote, rollback, resume, releases).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Actor;
use super::error::{ApiError, JsonBody, ServiceName};
use super::history::{store_failed, store_of};
use super::AdminState;
use crate::api::{
    ArmView, ArmsView, CanaryBody, EmptyBody, HostCertificate, ResumeBody, RollbackBody,
    ServiceView, WeightBody,
};
use crate::config::parse_upstreams;
use crate::rollout::{Applied, ControlError, JudgeStatus, Op};
use crate::routing::{Arm, RoutingTable, Service};
use crate::types::Weight;

pub(super) fn arm_view(arm: &Arm) -> ArmView {
    ArmView {
        upstreams: arm.upstreams.iter().map(|u| u.spec.clone()).collect(),
        down: arm
            .upstreams
            .iter()
            .zip(arm.down.iter())
            .filter(|(_, d)| **d)
            .map(|(u, _)| u.spec.clone())
            .collect(),
        panic: arm.panic(),
        stats: arm.stats.snapshot().summary(),
        consecutive_failures: arm.stats.consecutive_failures(),
        totals: crate::types::StatusClass::ALL
            .iter()
            .zip(arm.stats.totals())
            .map(|(c, n)| (c.label(), n))
            .collect(),
    }
}

/// What a service view is made of, read once per answer: the table, the judge's board and
/// the certificates.
pub(super) struct Views {
    /// The routing table read.
    pub table: Arc<RoutingTable>,
    board: Arc<HashMap<String, JudgeStatus>>,
    certs: Option<Arc<crate::tls::CertSet>>,
    acme: Option<Arc<BTreeMap<String, crate::acme::NameStatus>>>,
}

impl Views {
    /// Everything as it is now.
    pub fn of(state: &AdminState) -> Views {
        Views {
            table: state.control.table(),
            board: state.control.board(),
            certs: state.certificates.as_ref().map(|c| c.store().load()),
            acme: state.acme.as_ref().map(|b| b.load_full()),
        }
    }

    /// The API view of `s`.
    pub fn service(&self, s: &Service) -> ServiceView {
        ServiceView {
            name: s.name().to_string(),
            hosts: s.config.hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: s.config.path_prefix.clone(),
            state: s.state.as_str(),
            canary_weight: s.weight.percent(),
            generation: s.generation,
            table_version: self.table.version,
            arms: ArmsView {
                stable: arm_view(&s.stable),
                canary: s.canary.as_ref().map(arm_view),
            },
            judge: self.board.get(s.name()).cloned(),
            probes: self
                .board
                .get(s.name())
                .map(|b| b.probes.clone())
                .unwrap_or_default(),
            tls: self.certificates(s),
        }
    }

    /// The certificate each of `s`'s hosts gets.
    fn certificates(&self, s: &Service) -> Vec<HostCertificate> {
        let Some(set) = &self.certs else {
            return Vec::new();
        };
        s.config
            .hosts
            .iter()
            .map(|h| {
                let host = h.to_string();
                let found = set.lookup(&host);
                let fallback = match set.unknown_name() {
                    crate::tls::UnknownName::Default => set.default_entry(),
                    crate::tls::UnknownName::Refuse => None,
                };
                let (source, entry) = match (&found, fallback) {
                    (Some(e), _) => (
                        match e.source {
                            crate::tls::Source::Files { .. } => "file",
                            crate::tls::Source::Acme => "acme",
                        },
                        Some(e.clone()),
                    ),
                    (None, Some(d)) => ("default", Some(d)),
                    (None, None) => ("none", None),
                };
                HostCertificate {
                    covered_by: found
                        .as_ref()
                        .and_then(|e| e.loaded.covering_name(&host).map(str::to_string)),
                    issuer: entry.as_ref().map(|e| e.loaded.issuer.clone()),
                    not_after_ms: entry
                        .as_ref()
                        .map(|e| e.loaded.not_after.max(0) as u64 * 1000),
                    acme: self.acme.as_ref().and_then(|b| b.get(&host).cloned()),
                    source,
                    host,
                }
            })
            .collect()
    }
}

pub(super) async fn list_services(State(state): State<AdminState>) -> Response {
    let views = Views::of(&state);
    let services: Vec<_> = views
        .table
        .services
        .iter()
        .map(|s| views.service(s))
        .collect();
    axum::Json(json!({ "table_version": views.table.version, "services": services }))
        .into_response()
}

pub(super) async fn show_service(
    State(state): State<AdminState>,
    ServiceName(name): ServiceName,
) -> Result<Response, ApiError> {
    let views = Views::of(&state);
    let service = views
        .table
        .service(&name)
        .ok_or_else(|| ControlError::NotFound(name.clone()))?;
    Ok(axum::Json(views.service(service)).into_response())
}

/// The answer to a change: the new table version, the event, the service as it is now.
pub(super) fn applied(state: &AdminState, name: &str, applied: Applied) -> Response {
    let views = Views::of(state);
    let service = views.table.service(name).map(|s| views.service(s));
    axum::Json(json!({
        "table_version": applied.table_version,
        "event": applied.event,
        "service": service,
    }))
    .into_response()
}

/// Sends an operator's command about service `name` and answers with what it did.
pub(super) async fn command(
    state: &AdminState,
    who: &str,
    name: &str,
    op: Op,
) -> Result<Response, ApiError> {
    let done = state.control.send(op, who.to_string()).await?;
    Ok(applied(state, name, done))
}

pub(super) fn weight(value: f64) -> Result<Weight, ApiError> {
    Weight::from_percent(value).map_err(|m| ApiError::bad_request(format!("weight: {m}")))
}

pub(super) async fn set_canary(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<CanaryBody>,
) -> Result<Response, ApiError> {
    let weight = body.weight.map(weight).transpose()?;
    let label = body
        .label
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    if label
        .as_ref()
        .is_some_and(|l| l.len() > 128 || l.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "label: at most 128 characters, no control characters",
        ));
    }
    if body.upstreams.is_empty() {
        return Err(ApiError::bad_request(
            "upstreams: at least one upstream is required",
        ));
    }
    if body.upstreams.len() > 256 {
        return Err(ApiError::bad_request("upstreams: at most 256 upstreams"));
    }
    // Names resolve here, once, off the async workers.
    let list = body.upstreams;
    let upstreams = tokio::task::spawn_blocking(move || parse_upstreams(&list))
        .await
        .map_err(|_| ApiError::bad_request("upstreams: could not be resolved"))?
        .map_err(|errors| {
            let (j, m) = &errors[0];
            ApiError::bad_request(format!("upstreams[{j}]: {m}"))
        })?;
    command(
        &state,
        &who,
        &name,
        Op::SetCanary {
            service: name.clone(),
            upstreams,
            weight,
            label,
        },
    )
    .await
}

pub(super) async fn set_weight(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<WeightBody>,
) -> Result<Response, ApiError> {
    let weight = weight(body.weight)?;
    command(
        &state,
        &who,
        &name,
        Op::SetWeight {
            service: name.clone(),
            weight,
        },
    )
    .await
}

pub(super) async fn promote(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    command(
        &state,
        &who,
        &name,
        Op::Promote {
            service: name.clone(),
        },
    )
    .await
}

pub(super) async fn rollback(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, ApiError> {
    if body.reason.len() > 1024 {
        return Err(ApiError::bad_request("reason: at most 1024 characters"));
    }
    command(
        &state,
        &who,
        &name,
        Op::Rollback {
            service: name.clone(),
            reason: body.reason,
        },
    )
    .await
}

pub(super) async fn resume(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<ResumeBody>,
) -> Result<Response, ApiError> {
    let weight = body.weight.map(weight).transpose()?;
    command(
        &state,
        &who,
        &name,
        Op::Resume {
            service: name.clone(),
            weight,
        },
    )
    .await
}

pub(super) async fn service_releases(
    State(state): State<AdminState>,
    ServiceName(name): ServiceName,
) -> Result<Response, ApiError> {
    let table = state.control.table();
    let service = table
        .service(&name)
        .ok_or_else(|| ControlError::NotFound(name.clone()))?;
    if service.config.docker.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("'{name}' has no [services.docker] section: it has no releases"),
        ));
    }
    let live = state
        .releases
        .as_ref()
        .map(|b| b.load().get(&name).cloned().unwrap_or_default())
        .unwrap_or_default();
    // History keeps every release, retired ones included, with their snapshots.
    let stored = match store_of(&state) {
        Ok(store) => store
            .releases(&name, 50)
            .await
            .map_err(|e| store_failed(&state, e))?
            .iter()
            .map(|r| r.to_json())
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    Ok(axum::Json(json!({ "service": name, "releases": live, "history": stored })).into_response())
}

pub(super) async fn clear_canary(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
) -> Result<Response, ApiError> {
    command(
        &state,
        &who,
        &name,
        Op::ClearCanary {
            service: name.clone(),
        },
    )
    .await
}
