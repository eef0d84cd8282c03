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

/// Wrong tokens one source address may send within [`AUTH_WINDOW`] before it is refused
/// with 429 for the rest of the window.
pub const MAX_AUTH_FAILURES: u32 = 10;
/// The window failed attempts are counted in.
pub const AUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The address an admin request came from (axum's connect info over the lingering listener).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl<'a>
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'a, crate::linger::LingeringListener>,
    > for ClientAddr
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'a, crate::linger::LingeringListener>,
    ) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Failed authentications per source address (the admin path only: a mutex is fine here).
#[derive(Debug, Default)]
pub struct AuthFailures(
    parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
);

impl AuthFailures {
    /// How long `ip` stays refused, if it is.
    fn blocked(&self, ip: std::net::IpAddr) -> Option<std::time::Duration> {
        let map = self.0.lock();
        let (n, since) = map.get(&ip)?;
        let left = AUTH_WINDOW.saturating_sub(since.elapsed());
        (*n >= MAX_AUTH_FAILURES && !left.is_zero()).then_some(left)
    }

    /// Counts one failure of `ip` (old windows are forgotten as the table grows).
    fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.0.lock();
        if map.len() >= 10_000 {
            map.retain(|_, (_, since)| since.elapsed() < AUTH_WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= AUTH_WINDOW {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }
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
        let source = req
            .extensions()
            .get::<axum::extract::ConnectInfo<ClientAddr>>()
            .map(|c| c.0 .0.ip());
        if let Some(left) = source.and_then(|ip| state.auth_failures.blocked(ip)) {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many wrong tokens from this address; try again later",
            )
            .into_response();
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(left.as_secs().max(1)),
            );
            return resp;
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())));
        if !ok {
            state.metrics.admin_auth_failures.inc();
            if let Some(ip) = source {
                state.auth_failures.failed(ip);
            }
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

/// Who is asking and from where, as history records it: `api@ADDRESS`, or
/// `api:<name>@ADDRESS` with the CLI's (or dashboard's) actor header.
pub(crate) struct Actor(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Actor, Self::Rejection> {
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<ClientAddr>>()
            .map(|c| c.0 .0.ip());
        let who = actor(&parts.headers);
        Ok(Actor(match source {
            Some(ip) => format!("{who}@{ip}"),
            None => who,
        }))
    }
}

/// Who is asking: `api`, or `api:<name>` from the CLI's actor header.
fn actor(headers: &HeaderMap) -> String {
    match headers.get(ACTOR_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) => {
            let clean: String = v
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '@')
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
