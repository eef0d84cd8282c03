//! The live event stream: SSE or WebSocket, filtered by service and kind, resumable from a
//! sequence number.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::header;
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::AdminState;
use crate::events::{Event, EventBus, EventKind};

/// Which events a live stream wants.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    services: Vec<String>,
    kinds: Vec<EventKind>,
    since: Option<u64>,
}

impl EventFilter {
    /// From the query string; unknown parameters and kinds are refused.
    pub fn parse(query: &HashMap<String, String>) -> Result<EventFilter, ApiError> {
        let mut f = EventFilter::default();
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        for (key, value) in query {
            match key.as_str() {
                "service" => f.services = list(value),
                "kind" => {
                    for k in list(value) {
                        let kind = EventKind::parse(&k).ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "kind: unknown event kind '{k}' (known: {})",
                                EventKind::ALL.map(EventKind::as_str).join(", ")
                            ))
                        })?;
                        f.kinds.push(kind);
                    }
                }
                "since" => {
                    f.since = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "since: '{value}' is not an event sequence number"
                        ))
                    })?)
                }
                // Browsers' EventSource cannot send headers; a ticket rides in the query
                // (checked by `require_token`).
                "ticket" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown filter '{other}' (use service, kind, since, ticket)"
                    )))
                }
            }
        }
        Ok(f)
    }

    /// Whether an event passes.
    pub fn accepts(&self, e: &Event) -> bool {
        (self.services.is_empty()
            || e.service
                .as_ref()
                .is_some_and(|s| self.services.contains(s)))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

/// The live feed: recent events after `since`, then everything new; `Err(n)` when the
/// subscriber fell `n` events behind.
pub(super) fn feed(
    bus: &EventBus,
    filter: EventFilter,
) -> impl futures_util::Stream<Item = Result<Arc<Event>, u64>> + Send + 'static {
    let rx = bus.subscribe();
    let backlog = filter
        .since
        .map(|after| bus.recent_after(after))
        .unwrap_or_default();
    let last = backlog.last().map(|e| e.seq).unwrap_or(0);
    let backlog = futures_util::stream::iter(
        backlog
            .into_iter()
            .filter({
                let f = filter.clone();
                move |e| f.accepts(e)
            })
            .map(Ok),
    );
    let live = futures_util::stream::unfold((rx, filter, last), |(mut rx, f, last)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq <= last || !f.accepts(&e) => continue,
                Ok(e) => return Some((Ok(e), (rx, f, last))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    return Some((Err(n), (rx, f, last)))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    futures_util::StreamExt::chain(backlog, live)
}

pub(super) async fn events(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let filter = EventFilter::parse(&query)?;
    let (mut parts, _) = req.into_parts();
    let wants_ws = parts
        .headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if wants_ws {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::bad_request(format!("websocket: {}", e.body_text())))?;
        let stream = feed(&state.bus, filter);
        return Ok(ws.on_upgrade(move |socket| stream_to_socket(socket, stream)));
    }
    let stream = feed(&state.bus, filter);
    let sse_stream = futures_util::StreamExt::map(stream, |item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(e) => sse::Event::default()
                .event(e.kind.as_str())
                .id(e.seq.to_string())
                .json_data(&*e)
                .unwrap_or_else(|_| sse::Event::default().comment("unserialisable event")),
            Err(missed) => sse::Event::default()
                .event("lagged")
                .data(json!({ "missed": missed }).to_string()),
        })
    });
    Ok(Sse::new(sse_stream)
        .keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

pub(super) async fn stream_to_socket(
    mut socket: WebSocket,
    stream: impl futures_util::Stream<Item = Result<Arc<Event>, u64>> + Send + 'static,
) {
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            item = futures_util::StreamExt::next(&mut stream) => {
                let Some(item) = item else { break };
                let text = match item {
                    Ok(e) => serde_json::to_string(&*e).unwrap_or_default(),
                    Err(missed) => json!({ "kind": "lagged", "missed": missed }).to_string(),
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
}
