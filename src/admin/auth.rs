//! Who may call the API: bearer tokens compared in constant time, short-lived stream
//! tickets for browsers, and the actor named in history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AdminState;
use crate::api::ACTOR_HEADER;

/// How long a stream ticket can be used to open `/api/v1/events`.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at most; the oldest go first.
pub(super) const MAX_TICKETS: usize = 1024;

/// Stream tickets: a browser's `EventSource` and `WebSocket` cannot send an
/// `Authorization` header, so an authenticated `POST /api/v1/tickets` gives it a random
/// ticket to put in the query string instead, valid for [`TICKET_TTL`] and only for the
/// event stream.
#[derive(Clone, Default)]
pub struct Tickets(Arc<parking_lot::Mutex<HashMap<String, std::time::Instant>>>);

impl Tickets {
    /// A new ticket.
    pub fn issue(&self) -> std::io::Result<String> {
        use std::io::Read;
        let mut raw = [0u8; 24];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let ticket = hex::encode(raw);
        let now = std::time::Instant::now();
        let mut map = self.0.lock();
        map.retain(|_, at| now.duration_since(*at) < TICKET_TTL);
        if map.len() >= MAX_TICKETS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(ticket.clone(), now);
        Ok(ticket)
    }

    /// Whether `ticket` was issued and is still valid (compared in constant time).
    pub fn valid(&self, ticket: &str) -> bool {
        let now = std::time::Instant::now();
        self.0.lock().iter().any(|(k, at)| {
            now.duration_since(*at) < TICKET_TTL
                && bool::from(k.as_bytes().ct_eq(ticket.as_bytes()))
        })
    }
}

pub(super) async fn issue_ticket(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let ticket = state.tickets.issue().map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_randomness",
            format!("cannot make a ticket: {e}"),
        )
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "ticket": ticket,
            "expires_in_ms": TICKET_TTL.as_millis() as u64,
            "use": "GET /api/v1/events?ticket=TICKET (EventSource or WebSocket)",
        })),
    )
        .into_response())
}

/// The `ticket` query parameter, on the event stream only.
pub(super) fn stream_ticket(req: &Request) -> Option<&str> {
    if req.method() != axum::http::Method::GET || !req.uri().path().ends_with("/events") {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
}

pub(super) async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = state.token.load().as_deref() {
        if stream_ticket(&req).is_some_and(|t| state.tickets.valid(t)) {
            return next.run(req).await;
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer TOKEN)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Who is asking: `api`, or `api:<name>` from the CLI's actor header.
pub(super) fn actor(headers: &HeaderMap) -> String {
    match headers.get(ACTOR_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) => {
            let clean: String = v
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            if clean.is_empty() {
                "api".into()
            } else {
                format!("api:{clean}")
            }
        }
        None => "api".into(),
    }
}
