//! The deployments resource: starting, controlling and reading deployments (events, probe
//! results, trend), and freezes.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Actor;
use super::error::{ApiError, JsonBody, PathParams, ServiceName};
use super::history::{pending_records, query_cursor, query_limit, store_failed, store_of};
use super::AdminState;
use crate::api::{DeployBody, FreezeBody, DEFAULT_BAKE};
use crate::config::parse_upstreams;
use crate::rollout::{ControlError, DeploySource, Op};

pub(super) async fn deployments(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (mut service, mut limit, mut cursor) = (None, 0, None);
    for (key, value) in &query {
        match key.as_str() {
            "service" => service = Some(value.clone()),
            "limit" => limit = query_limit(value)?,
            "cursor" => cursor = Some(query_cursor(value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown filter '{other}' (use service, limit, cursor)"
                )))
            }
        }
    }
    let store = store_of(&state)?;
    let page = store
        .deployments(service.as_deref(), limit, cursor.as_ref())
        .await
        .map_err(|e| store_failed(&state, e))?;
    let items: Vec<_> = page.items.iter().map(|d| d.to_json()).collect();
    Ok(axum::Json(json!({ "items": items, "next": page.next })).into_response())
}

pub(super) fn trend_json(trend: &crate::store::query::Trend) -> serde_json::Value {
    json!({
        "deployment": trend.deployment.to_json(),
        "arms": trend.arms,
        "decisions": trend.decisions.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
    })
}

pub(super) fn no_deployment(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no deployment with id '{id}'"),
    )
}

/// A deployment's live view, stored row, events (newest first), probe results and trend.
struct Gathered {
    live: Option<crate::rollout::deploy::DeploymentView>,
    row: Option<crate::store::records::DeploymentRow>,
    events: Vec<crate::store::records::EventRow>,
    probes: Vec<crate::store::records::ProbeRow>,
    trend: Option<crate::store::query::Trend>,
}

async fn gather(state: &AdminState, id: &str) -> Result<Gathered, ApiError> {
    let id = id.to_string();
    // Read in this order so the answer holds everything already written: the live view
    // first (the controller records every event before its view shows the change), then
    // what the spool still holds, then the database (a record the writer commits in between
    // is in the database by the time it is queried).
    let live = state.control.deployment(&id);
    let pending = crate::store::query::Pending::of(
        &id,
        pending_records(state, |r| match r {
            crate::store::Record::Event(e) => e.deployment_id.as_deref() == Some(&id),
            crate::store::Record::Probe(p) => p.deployment_id.as_deref() == Some(&id),
            crate::store::Record::Deployment(d) => d.id == id,
            _ => false,
        }),
    );
    let store = match store_of(state) {
        Ok(s) => Some(s),
        // History unavailable: the live view and the spool still answer.
        Err(_) if live.is_some() || !pending.is_empty() => None,
        Err(e) => return Err(e),
    };
    let mut trend = None;
    let (mut events, mut probes) = (Vec::new(), Vec::new());
    if let Some(store) = store {
        trend = store.trend(&id).await.map_err(|e| store_failed(state, e))?;
        if trend.is_some() {
            let filter = crate::store::query::HistoryFilter {
                deployment: Some(id.clone()),
                limit: crate::store::query::MAX_LIMIT,
                ..Default::default()
            };
            events = store
                .history(&filter)
                .await
                .map_err(|e| store_failed(state, e))?
                .items;
            probes = store
                .probe_results(&id, PROBE_RESULTS_SHOWN as u32)
                .await
                .map_err(|e| store_failed(state, e))?;
        }
    }
    let events = pending.events_newest_first(events);
    let probes = pending.probes_newest_first(probes, PROBE_RESULTS_SHOWN);
    if let Some(t) = &mut trend {
        pending.update_trend(t);
    }
    let row = trend
        .as_ref()
        .map(|t| t.deployment.clone())
        .or_else(|| pending.deployment.clone());
    if live.is_none() && row.is_none() {
        return Err(no_deployment(&id));
    }
    Ok(Gathered {
        live,
        row,
        events,
        probes,
        trend,
    })
}

pub(super) async fn deployment(
    State(state): State<AdminState>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let Gathered {
        live,
        row,
        events,
        probes,
        trend,
    } = gather(&state, &id).await?;
    let state_name = live
        .as_ref()
        .map(|v| v.state.to_string())
        .or_else(|| row.as_ref().map(|r| r.outcome.clone()));
    let mut answer = json!({
        "state": state_name,
        "live": live,
        "events": events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        "probe_results": probes,
    });
    if let Some(row) = &row {
        answer["deployment"] = row.to_json();
    }
    if let Some(t) = &trend {
        answer["trend"] = trend_json(t);
    }
    Ok(axum::Json(answer).into_response())
}

/// Whether `?format=` asks for `other` rather than json (the default); any other
/// parameter or value is a 400 naming it.
fn format_param(query: &HashMap<String, String>, other: &str) -> Result<bool, ApiError> {
    if let Some(k) = query.keys().find(|k| k.as_str() != "format") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter '{k}' (use format)"
        )));
    }
    match query.get("format").map(String::as_str) {
        None | Some("json") => Ok(false),
        Some(f) if f == other => Ok(true),
        Some(f) => Err(ApiError::bad_request(format!(
            "format: '{f}' is not json or {other}"
        ))),
    }
}

/// Probe results a deployment view shows, newest first.
pub(super) const PROBE_RESULTS_SHOWN: usize = 200;

pub(super) async fn deployment_trend(
    State(state): State<AdminState>,
    PathParams(id): PathParams<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let text = format_param(&query, "text")?;
    let store = store_of(&state)?;
    let trend = store
        .trend(&id)
        .await
        .map_err(|e| store_failed(&state, e))?
        .ok_or_else(|| no_deployment(&id))?;
    if text {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            trend.render(),
        )
            .into_response());
    }
    Ok(axum::Json(trend_json(&trend)).into_response())
}

pub(super) fn duration_field(
    name: &str,
    value: Option<&str>,
    default: &str,
) -> Result<std::time::Duration, ApiError> {
    crate::time::parse_duration(value.unwrap_or(default))
        .map_err(|m| ApiError::bad_request(format!("{name}: {m}")))
}

pub(super) fn deploy_spec(
    b: &DeployBody,
    stable_instances: usize,
    min_requests: u64,
) -> Result<crate::rollout::plan::Spec, ApiError> {
    use crate::rollout::plan::{SoftRollback, Spec, Step};
    // Each setting belongs to one strategy; another strategy's is refused, never ignored.
    let owners = [
        ("steps", b.steps.is_some(), "canary"),
        ("soft_rollback", b.soft_rollback.is_some(), "canary"),
        ("verify_for", b.verify_for.is_some(), "blue_green"),
        ("keep_blue_for", b.keep_blue_for.is_some(), "blue_green"),
        ("auto_switch", b.auto_switch.is_some(), "blue_green"),
        ("batch_size", b.batch_size.is_some(), "rolling"),
        ("max_unavailable", b.max_unavailable.is_some(), "rolling"),
        ("pause_between", b.pause_between.is_some(), "rolling"),
        ("drain_timeout", b.drain_timeout.is_some(), "rolling"),
        ("health_wait", b.health_wait.is_some(), "rolling"),
    ];
    if ["canary", "blue_green", "rolling"].contains(&b.strategy.as_str()) {
        if let Some((field, _, owner)) = owners
            .iter()
            .find(|(_, present, owner)| *present && *owner != b.strategy)
        {
            return Err(ApiError::bad_request(format!(
                "{field}: only applies to the {owner} strategy"
            )));
        }
    }
    match b.strategy.as_str() {
        "canary" => {
            let steps = b.steps.as_ref().filter(|s| !s.is_empty()).ok_or_else(|| {
                ApiError::bad_request("steps: a canary deployment needs at least one step")
            })?;
            let mut out = Vec::new();
            let mut last = crate::types::Weight::ZERO;
            for (i, st) in steps.iter().enumerate() {
                let pause = st.pause.unwrap_or(false);
                let w = match st.weight {
                    Some(p) => crate::types::Weight::from_percent(p)
                        .map_err(|m| ApiError::bad_request(format!("steps[{i}].weight: {m}")))?,
                    None if pause => last,
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "steps[{i}].weight: required"
                        )))
                    }
                };
                last = w;
                out.push(Step {
                    weight: w,
                    bake: duration_field(
                        &format!("steps[{i}].bake"),
                        st.bake.as_deref(),
                        if pause { "0s" } else { DEFAULT_BAKE },
                    )?,
                    min_samples: st
                        .min_samples
                        .unwrap_or(if pause { 0 } else { min_requests }),
                    pause,
                });
            }
            let soft_rollback = match b.soft_rollback.as_deref() {
                None | Some("instant") => SoftRollback::Instant,
                Some("step_back") => SoftRollback::StepBack,
                Some(o) => {
                    return Err(ApiError::bad_request(format!(
                        "soft_rollback: '{o}' is not instant or step_back"
                    )))
                }
            };
            Ok(Spec::Canary {
                steps: out,
                soft_rollback,
            })
        }
        "blue_green" => Ok(Spec::BlueGreen {
            verify_for: duration_field("verify_for", b.verify_for.as_deref(), "1m")?,
            keep_blue_for: duration_field("keep_blue_for", b.keep_blue_for.as_deref(), "10m")?,
            auto_switch: b.auto_switch.unwrap_or(true),
        }),
        "rolling" => {
            let batch_size = b.batch_size.unwrap_or(1);
            if batch_size == 0 {
                return Err(ApiError::bad_request("batch_size: must be at least 1"));
            }
            let max_unavailable = b.max_unavailable.unwrap_or(batch_size);
            if batch_size > max_unavailable {
                return Err(ApiError::bad_request(format!(
                    "batch_size: {batch_size} is more than max_unavailable ({max_unavailable})"
                )));
            }
            Ok(Spec::Rolling {
                instances: stable_instances,
                batch_size,
                max_unavailable,
                pause_between: duration_field("pause_between", b.pause_between.as_deref(), "0s")?,
                drain_timeout: duration_field("drain_timeout", b.drain_timeout.as_deref(), "30s")?,
                health_wait: duration_field("health_wait", b.health_wait.as_deref(), "10s")?,
            })
        }
        other => Err(ApiError::bad_request(format!(
            "strategy: '{other}' is not canary, blue_green or rolling"
        ))),
    }
}

/// The progress deadline a deployment asks for: `progress_deadline` (default 30m, `0s`
/// for none) and what to do then.
pub(super) fn deploy_deadline(
    b: &DeployBody,
) -> Result<Option<crate::rollout::plan::Deadline>, ApiError> {
    use crate::rollout::plan::{Deadline, OnDeadline, DEFAULT_PROGRESS_DEADLINE};
    let after = match b.progress_deadline.as_deref() {
        None => DEFAULT_PROGRESS_DEADLINE,
        Some(v) => duration_field("progress_deadline", Some(v), "")?,
    };
    let on = match b.on_deadline.as_deref() {
        None => OnDeadline::Pause,
        Some(v) => OnDeadline::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "on_deadline: '{v}' is not pause, rollback or promote_if_probes_healthy"
            ))
        })?,
    };
    if after.is_zero() {
        if b.on_deadline.is_some() {
            return Err(ApiError::bad_request(
                "on_deadline: progress_deadline is 0s (no deadline), so nothing would use it",
            ));
        }
        return Ok(None);
    }
    Ok(Some(Deadline { after, on }))
}

pub(super) async fn start_deployment(
    State(state): State<AdminState>,
    Actor(who): Actor,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<DeployBody>,
) -> Result<Response, ApiError> {
    let table = state.control.table();
    let service = table
        .service(&name)
        .ok_or_else(|| ControlError::NotFound(name.clone()))?;
    let spec = deploy_spec(
        &body,
        service.stable.upstreams.len(),
        service.config.cutback.min_requests,
    )?;
    let deadline = deploy_deadline(&body)?;
    let label = body
        .label
        .clone()
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
    let source = match (&body.image, body.upstreams.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "image: give either upstreams (running versions) or an image (containers Sluice runs), not both",
            ))
        }
        (Some(image), true) => {
            crate::config::validate::docker::check_image(image)
                .map_err(|m| ApiError::bad_request(format!("image: {m}")))?;
            DeploySource::Image(image.clone())
        }
        (None, true) => {
            return Err(ApiError::bad_request(
                "upstreams: give the new version's upstreams, or an image for a service with [services.docker]",
            ))
        }
        (None, false) => {
            if body.upstreams.len() > 256 {
                return Err(ApiError::bad_request("upstreams: 1 to 256 upstreams"));
            }
            let list = body.upstreams.clone();
            let upstreams = tokio::task::spawn_blocking(move || parse_upstreams(&list))
                .await
                .map_err(|_| ApiError::bad_request("upstreams: could not be resolved"))?
                .map_err(|errors| {
                    let (j, m) = &errors[0];
                    ApiError::bad_request(format!("upstreams[{j}]: {m}"))
                })?;
            DeploySource::Upstreams(upstreams)
        }
    };
    let done = state
        .control
        .send(
            Op::Deploy {
                service: name.clone(),
                spec,
                source,
                label,
                deadline,
            },
            who,
        )
        .await?;
    let id = done.event.deployment.clone().unwrap_or_default();
    let view = state.control.deployment(&id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/deployments/{id}"))],
        axum::Json(json!({ "id": id, "deployment": view, "event": done.event })),
    )
        .into_response())
}

pub(super) async fn control_deployment(
    State(state): State<AdminState>,
    Actor(who): Actor,
    PathParams((id, action)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    use crate::rollout::deploy::Control;
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        "promote" => Control::Promote,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action '{action}' (use pause, resume, abort, promote)"),
            ))
        }
    };
    let done = state
        .control
        .send(
            Op::Deployment {
                id: id.clone(),
                control,
            },
            who,
        )
        .await
        .map_err(|e| match e {
            // The controller's not-found is worded for services.
            ControlError::NotFound(_) => no_deployment(&id),
            e => e.into(),
        })?;
    Ok(axum::Json(json!({
        "table_version": done.table_version,
        "event": done.event,
        "deployment": state.control.deployment(&id),
    }))
    .into_response())
}

pub(super) async fn freeze(
    State(state): State<AdminState>,
    Actor(who): Actor,
    JsonBody(body): JsonBody<FreezeBody>,
) -> Result<Response, ApiError> {
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("reason: say why deployments are frozen"))?;
    if reason.len() > 1024 {
        return Err(ApiError::bad_request("reason: at most 1024 characters"));
    }
    let done = state
        .control
        .send(
            Op::Freeze {
                service: body.service,
                reason: Some(reason),
            },
            who,
        )
        .await?;
    Ok(axum::Json(json!({ "event": done.event })).into_response())
}

pub(super) async fn unfreeze(
    State(state): State<AdminState>,
    Actor(who): Actor,
    JsonBody(body): JsonBody<FreezeBody>,
) -> Result<Response, ApiError> {
    let done = state
        .control
        .send(
            Op::Freeze {
                service: body.service,
                reason: None,
            },
            who,
        )
        .await?;
    Ok(axum::Json(json!({ "event": done.event })).into_response())
}

pub(super) async fn freezes(State(state): State<AdminState>) -> Response {
    axum::Json(&*state.control.freezes()).into_response()
}

/// `GET /deployments/{id}/report`: what happened, from the stored evidence (JSON with a
/// `markdown` draft; `?format=markdown` for the draft alone).
pub(super) async fn deployment_report(
    State(state): State<AdminState>,
    PathParams(id): PathParams<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let markdown = format_param(&query, "markdown")?;
    let g = gather(&state, &id).await?;
    let row = g.row.as_ref().map(|r| r.to_json()).unwrap_or_default();
    let live = g
        .live
        .as_ref()
        .map(|l| serde_json::to_value(l).unwrap_or_default());
    let events: Vec<serde_json::Value> = g.events.iter().map(|e| e.to_json()).collect();
    let report = super::report::report(&id, &row, live.as_ref(), &events);
    if markdown {
        let text = report["markdown"].as_str().unwrap_or_default().to_string();
        return Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            text,
        )
            .into_response());
    }
    Ok(axum::Json(report).into_response())
}
