//! Stored history: paged event queries that read their own writes (spooled records first).

use crate::time::parse_time;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::AdminState;
use crate::events::EventKind;

pub(super) fn store_of(state: &AdminState) -> Result<Arc<crate::store::Store>, ApiError> {
    let Some(history) = &state.history else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "history_disabled",
            "history is not kept by this gate ([store] enabled = false)",
        ));
    };
    history.store.load_full().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            format!(
                "the history database is unreachable; new records wait in the spool ({} bytes)",
                history.spool.pending_bytes()
            ),
        )
    })
}

/// The records `keep` selects among those still in the spool (none when history is off or
/// the spool cannot be read).
pub(super) fn pending_records(
    state: &AdminState,
    keep: impl Fn(&crate::store::Record) -> bool,
) -> Vec<crate::store::Record> {
    let Some(h) = &state.history else {
        return Vec::new();
    };
    h.spool.pending(keep).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "spool unreadable; answering from the database alone");
        Vec::new()
    })
}

pub(super) fn store_failed(state: &AdminState, e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "history query failed");
    let pending = state
        .history
        .as_ref()
        .map(|h| h.spool.pending_bytes())
        .unwrap_or(0);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history_unavailable",
        format!(
            "the history database did not answer; new records wait in the spool ({pending} bytes)"
        ),
    )
}

pub(super) fn query_limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=crate::store::query::MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit: '{value}' must be a number from 1 to {}",
            crate::store::query::MAX_LIMIT
        ))),
    }
}

pub(super) fn query_cursor(value: &str) -> Result<crate::store::query::Cursor, ApiError> {
    crate::store::query::Cursor::decode(value).ok_or_else(|| {
        ApiError::bad_request(format!(
            "cursor: '{value}' is not a cursor from a previous page"
        ))
    })
}

pub(super) async fn history(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let now = crate::time::now_ms();
    let mut f = crate::store::query::HistoryFilter::default();
    for (key, value) in &query {
        match key.as_str() {
            "service" => f.service = Some(value.clone()),
            "deployment" => f.deployment = Some(value.clone()),
            "kind" => {
                for k in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    if EventKind::parse(k).is_none() {
                        return Err(ApiError::bad_request(format!(
                            "kind: unknown event kind '{k}' (known: {})",
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        )));
                    }
                    f.kinds.push(k.to_string());
                }
            }
            "since" | "until" => {
                let t = parse_time(value, now).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{key}: '{value}' is not a time (epoch ms, 2026-11-22T04:00:00Z, or -1h)"
                    ))
                })?;
                if key == "since" {
                    f.since_ms = Some(t);
                } else {
                    f.until_ms = Some(t);
                }
            }
            "limit" => f.limit = query_limit(value)?,
            "cursor" => f.cursor = Some(query_cursor(value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown filter '{other}' (use service, kind, deployment, since, until, limit, cursor)"
                )))
            }
        }
    }
    // The spool first, then the database: see `deployment` for why this order reads every
    // event already published.
    let pending: Vec<crate::store::EventRow> = pending_records(&state, |r| match r {
        crate::store::Record::Event(e) => f.accepts(e),
        _ => false,
    })
    .into_iter()
    .filter_map(|r| match r {
        crate::store::Record::Event(e) => Some(e),
        _ => None,
    })
    .collect();
    let store = store_of(&state)?;
    let page = store
        .history(&f)
        .await
        .map_err(|e| store_failed(&state, e))?;
    let page = f.merge_page(page, &pending);
    let items: Vec<_> = page.items.iter().map(|e| e.to_json()).collect();
    Ok(axum::Json(json!({ "items": items, "next": page.next })).into_response())
}
