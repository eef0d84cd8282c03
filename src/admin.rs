//! The admin API: an axum router on the admin listener.
//!
//! Endpoints (JSON; every `/api` route needs `Authorization: Bearer TOKEN` when a token is
//! configured, compared in constant time):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | `{"status":"ok"}`; 503 `draining` during shutdown (no auth) |
//! | GET | `/metrics` | Prometheus text format (no auth) |
//! | GET | `/api/v1/services` | every service with live per-arm stats |
//! | GET | `/api/v1/services/{name}` | one service |
//! | PUT | `/api/v1/services/{name}/canary` | `{"upstreams": [...], "weight": N}` sets a new canary |
//! | POST | `/api/v1/services/{name}/weight` | `{"weight": N}` |
//! | POST | `/api/v1/services/{name}/promote` | the canary becomes stable |
//! | POST | `/api/v1/services/{name}/rollback` | `{"reason": "..."}` cuts the canary to 0 and holds it |
//! | POST | `/api/v1/services/{name}/resume` | `{"weight": N}` lifts a rolled-back hold |
//! | POST | `/api/v1/reload` | re-reads the config file; an invalid file is refused (422) |
//! | GET | `/api/v1/events` | live events: WebSocket when asked to upgrade, else SSE; `?service=a,b&kind=breach,rolled_back&since=SEQ` |
//! | POST | `/api/v1/services/{name}/deployments` | starts a deployment (`canary`, `blue_green`, `rolling`) of upstreams or an image: `201 {"id"}` |
//! | GET | `/api/v1/services/{name}/releases` | a container service's releases: live, and every one in history with its snapshots |
//! | DELETE | `/api/v1/services/{name}/canary` | removes a held or idle canary |
//! | POST | `/api/v1/deployments/{id}/pause\|resume\|abort\|promote` | controls a running deployment |
//! | GET/POST | `/api/v1/freeze`, `POST /api/v1/unfreeze` | freezes (refuses new deployments) for one service or all |
//! | GET | `/api/v1/history` | stored events, newest first: `?service=&kind=a,b&deployment=&since=&until=&limit=&cursor=` |
//! | GET | `/api/v1/deployments` | deployments, newest first: `?service=&limit=&cursor=` |
//! | GET | `/api/v1/deployments/{id}` | one deployment with its events, probe results and health trend |
//! | GET | `/api/v1/deployments/{id}/trend` | the trend alone; `?format=text` for a plain-text table |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with 400 (bad body), 401,
//! 404 (unknown service or route), 405, 409 (state conflict), 413 (body over 64 KiB),
//! 415, 422 (invalid config on reload) or 503. A refused request changes nothing.

use crate::time::parse_time;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::config::parse_upstreams;
use crate::events::{Event, EventBus, EventKind};
use crate::metrics::Metrics;
use crate::rollout::{Applied, ControlError, ControlHandle, DeploySource, JudgeStatus, Op};
use crate::routing::{Arm, RoutingTable, Service};
use crate::stats::StatsSummary;
use crate::types::Weight;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Header the CLI sends to say who is asking; recorded as the event's actor.
pub const ACTOR_HEADER: &str = "x-sluice-actor";

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Commands to the controller; also the table to read.
    pub control: ControlHandle,
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The bearer token (swapped on reload); `None` disables auth (loopback only).
    pub token: Arc<ArcSwapOption<String>>,
    /// Set when the gate drains; `/healthz` then answers 503.
    pub draining: Arc<AtomicBool>,
    /// The event bus (for the live stream).
    pub bus: EventBus,
    /// History, when kept.
    pub history: Option<crate::store::History>,
    /// Releases of services run as containers, when any.
    pub releases: Option<crate::docker::release::ReleaseBoard>,
    /// Short-lived tickets for browsers' event streams.
    pub tickets: Tickets,
    /// Serve the dashboard at `/`.
    pub dashboard: bool,
}

/// How long a stream ticket can be used to open `/api/v1/events`.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at most; the oldest go first.
const MAX_TICKETS: usize = 1024;

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

/// An API error: status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    paths: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            paths: Vec::new(),
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if !self.paths.is_empty() {
            body["error"]["paths"] = json!(self.paths);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ControlError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ControlError::Invalid(_) => Self::bad_request(e.to_string()),
            ControlError::Config(ref c) => ApiError {
                paths: c.paths(),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_config",
                    e.to_string(),
                )
            },
            ControlError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

/// A JSON body: empty means `{}`; unknown fields, wrong types and oversize bodies are
/// refused with a message naming the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            if json_type == Some(false) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the request body must be JSON (Content-Type: application/json)",
                ));
            }
            &bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    ApiError::bad_request(format!("invalid JSON body: {}", e.inner()))
                } else {
                    ApiError::bad_request(format!("invalid JSON body at '{path}': {}", e.inner()))
                }
            })
    }
}

/// A service name from the path.
pub struct ServiceName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ServiceName {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(name) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
        Ok(ServiceName(name))
    }
}

/// One arm as the API shows it.
#[derive(Debug, Serialize)]
pub struct ArmView {
    /// Upstreams as given.
    pub upstreams: Vec<String>,
    /// Upstreams their probes took out.
    pub down: Vec<String>,
    /// Every upstream is down and the arm sends to them anyway.
    pub panic: bool,
    /// The live window.
    pub stats: StatsSummary,
    /// Failures in a row up to the latest request.
    pub consecutive_failures: u32,
    /// Requests since the arm was created, by status class (`1xx`..`5xx`, `none`): rates
    /// between two reads.
    pub totals: std::collections::BTreeMap<&'static str, u64>,
}

/// Both arms.
#[derive(Debug, Serialize)]
pub struct ArmsView {
    /// The production arm.
    pub stable: ArmView,
    /// The trial arm, or null.
    pub canary: Option<ArmView>,
}

/// A service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// Host patterns (empty: catch-all).
    pub hosts: Vec<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// `stable`, `canary` or `rolled_back`.
    pub state: &'static str,
    /// Canary weight in percent.
    pub canary_weight: f64,
    /// Canary generation (bumped by each new canary).
    pub generation: u64,
    /// The routing table version this view was read from.
    pub table_version: u64,
    /// Per-arm upstreams and stats.
    pub arms: ArmsView,
    /// The judge's latest verdict on the canary and the last decision about this service.
    pub judge: Option<JudgeStatus>,
    /// Every probe on every upstream: health, counts and latest results.
    pub probes: Vec<crate::rollout::probing::ProbeView>,
}

fn arm_view(arm: &Arm) -> ArmView {
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

/// The API view of a service in a table, with the judge's status from `board`.
pub fn service_view(
    table: &RoutingTable,
    board: &HashMap<String, JudgeStatus>,
    s: &Service,
) -> ServiceView {
    ServiceView {
        name: s.name().to_string(),
        hosts: s.config.hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: s.config.path_prefix.clone(),
        state: s.state.as_str(),
        canary_weight: s.weight.percent(),
        generation: s.generation,
        table_version: table.version,
        arms: ArmsView {
            stable: arm_view(&s.stable),
            canary: s.canary.as_ref().map(arm_view),
        },
        judge: board.get(s.name()).cloned(),
        probes: board
            .get(s.name())
            .map(|b| b.probes.clone())
            .unwrap_or_default(),
    }
}

/// Builds the router.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/services", get(list_services))
        .route("/services/{name}", get(show_service))
        .route(
            "/services/{name}/canary",
            put(set_canary).delete(clear_canary),
        )
        .route("/services/{name}/deployments", post(start_deployment))
        .route("/services/{name}/releases", get(service_releases))
        .route("/deployments/{id}/{action}", post(control_deployment))
        .route("/freeze", get(freezes).post(freeze))
        .route("/unfreeze", post(unfreeze))
        .route("/services/{name}/weight", post(set_weight))
        .route("/services/{name}/promote", post(promote))
        .route("/services/{name}/rollback", post(rollback))
        .route("/services/{name}/resume", post(resume))
        .route("/reload", post(reload))
        .route("/events", get(events))
        .route("/tickets", post(issue_ticket))
        .route("/history", get(history))
        .route("/deployments", get(deployments))
        .route("/deployments/{id}", get(deployment))
        .route("/deployments/{id}/trend", get(deployment_trend))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard", get(crate::dashboard::index))
        .route("/dashboard/{file}", get(crate::dashboard::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the router on `listener` until `stop` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    state: AdminState,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener cannot be registered");
            return;
        }
    };
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    // Lingering close: a client refused mid-upload (413) still reads its answer.
    let listener = crate::linger::LingeringListener(listener);
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server stopped");
    }
}

async fn issue_ticket(State(state): State<AdminState>) -> Result<Response, ApiError> {
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
fn stream_ticket(req: &Request) -> Option<&str> {
    if req.method() != axum::http::Method::GET || !req.uri().path().ends_with("/events") {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
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
fn actor(headers: &HeaderMap) -> String {
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

async fn healthz(State(state): State<AdminState>) -> Response {
    let version = state.control.table().version;
    if state.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "draining", "table_version": version })),
        )
            .into_response()
    } else {
        axum::Json(json!({ "status": "ok", "table_version": version })).into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn list_services(State(state): State<AdminState>) -> Response {
    let table = state.control.table();
    let board = state.control.board();
    let services: Vec<_> = table
        .services
        .iter()
        .map(|s| service_view(&table, &board, s))
        .collect();
    axum::Json(json!({ "table_version": table.version, "services": services })).into_response()
}

async fn show_service(
    State(state): State<AdminState>,
    ServiceName(name): ServiceName,
) -> Result<Response, ApiError> {
    let table = state.control.table();
    let service = table
        .service(&name)
        .ok_or_else(|| ControlError::NotFound(name.clone()))?;
    let board = state.control.board();
    Ok(axum::Json(service_view(&table, &board, service)).into_response())
}

/// The answer to a change: the new table version, the event, the service as it is now.
fn applied(state: &AdminState, name: &str, applied: Applied) -> Response {
    let table = state.control.table();
    let board = state.control.board();
    let service = table.service(name).map(|s| service_view(&table, &board, s));
    axum::Json(json!({
        "table_version": applied.table_version,
        "event": applied.event,
        "service": service,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    upstreams: Vec<String>,
    #[serde(default)]
    weight: Option<f64>,
    /// A version label kept in history ("v2", a commit, an image tag).
    #[serde(default)]
    label: Option<String>,
}

fn weight(value: f64) -> Result<Weight, ApiError> {
    Weight::from_percent(value).map_err(|m| ApiError::bad_request(format!("weight: {m}")))
}

async fn set_canary(
    State(state): State<AdminState>,
    headers: HeaderMap,
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
    let done = state
        .control
        .send(
            Op::SetCanary {
                service: name.clone(),
                upstreams,
                weight,
                label,
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: f64,
}

async fn set_weight(
    State(state): State<AdminState>,
    headers: HeaderMap,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<WeightBody>,
) -> Result<Response, ApiError> {
    let weight = weight(body.weight)?;
    let done = state
        .control
        .send(
            Op::SetWeight {
                service: name.clone(),
                weight,
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn promote(
    State(state): State<AdminState>,
    headers: HeaderMap,
    ServiceName(name): ServiceName,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    let done = state
        .control
        .send(
            Op::Promote {
                service: name.clone(),
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    reason: String,
}

async fn rollback(
    State(state): State<AdminState>,
    headers: HeaderMap,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, ApiError> {
    if body.reason.len() > 1024 {
        return Err(ApiError::bad_request("reason: at most 1024 characters"));
    }
    let done = state
        .control
        .send(
            Op::Rollback {
                service: name.clone(),
                reason: body.reason,
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    #[serde(default)]
    weight: Option<f64>,
}

async fn resume(
    State(state): State<AdminState>,
    headers: HeaderMap,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<ResumeBody>,
) -> Result<Response, ApiError> {
    let weight = body.weight.map(weight).transpose()?;
    let done = state
        .control
        .send(
            Op::Resume {
                service: name.clone(),
                weight,
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

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
fn feed(
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

async fn events(
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

async fn stream_to_socket(
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

fn store_of(state: &AdminState) -> Result<Arc<crate::store::Store>, ApiError> {
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
fn pending_records(
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

fn store_failed(state: &AdminState, e: crate::store::StoreError) -> ApiError {
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

fn query_limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=crate::store::query::MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit: '{value}' must be a number from 1 to {}",
            crate::store::query::MAX_LIMIT
        ))),
    }
}

fn query_cursor(value: &str) -> Result<crate::store::query::Cursor, ApiError> {
    crate::store::query::Cursor::decode(value).ok_or_else(|| {
        ApiError::bad_request(format!(
            "cursor: '{value}' is not a cursor from a previous page"
        ))
    })
}

async fn history(
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

async fn deployments(
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

fn trend_json(trend: &crate::store::query::Trend) -> serde_json::Value {
    json!({
        "deployment": trend.deployment.to_json(),
        "arms": trend.arms,
        "decisions": trend.decisions.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
    })
}

fn no_deployment(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no deployment with id '{id}'"),
    )
}

async fn deployment(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    // Read in this order so the answer holds everything already written: the live view
    // first (the controller records every event before its view shows the change), then
    // what the spool still holds, then the database (a record the writer commits in between
    // is in the database by the time it is queried).
    let live = state.control.deployment(&id);
    let pending = crate::store::query::Pending::of(
        &id,
        pending_records(&state, |r| match r {
            crate::store::Record::Event(e) => e.deployment_id.as_deref() == Some(&id),
            crate::store::Record::Probe(p) => p.deployment_id.as_deref() == Some(&id),
            crate::store::Record::Deployment(d) => d.id == id,
            _ => false,
        }),
    );
    let store = match store_of(&state) {
        Ok(s) => Some(s),
        // History unavailable: the live view and the spool still answer.
        Err(_) if live.is_some() || !pending.is_empty() => None,
        Err(e) => return Err(e),
    };
    let mut trend = None;
    let (mut events, mut probes) = (Vec::new(), Vec::new());
    if let Some(store) = store {
        trend = store
            .trend(&id)
            .await
            .map_err(|e| store_failed(&state, e))?;
        if trend.is_some() {
            let filter = crate::store::query::HistoryFilter {
                deployment: Some(id.clone()),
                limit: crate::store::query::MAX_LIMIT,
                ..Default::default()
            };
            events = store
                .history(&filter)
                .await
                .map_err(|e| store_failed(&state, e))?
                .items;
            probes = store
                .probe_results(&id, PROBE_RESULTS_SHOWN as u32)
                .await
                .map_err(|e| store_failed(&state, e))?;
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

/// Probe results a deployment view shows, newest first.
const PROBE_RESULTS_SHOWN: usize = 200;

async fn deployment_trend(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let text = match query.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: '{other}' is not json or text"
            )))
        }
    };
    if let Some(k) = query.keys().find(|k| k.as_str() != "format") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter '{k}' (use format)"
        )));
    }
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

async fn service_releases(
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

async fn clear_canary(
    State(state): State<AdminState>,
    headers: HeaderMap,
    ServiceName(name): ServiceName,
) -> Result<Response, ApiError> {
    let done = state
        .control
        .send(
            Op::ClearCanary {
                service: name.clone(),
            },
            actor(&headers),
        )
        .await?;
    Ok(applied(&state, &name, done))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StepBody {
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    bake: Option<String>,
    #[serde(default)]
    min_samples: Option<u64>,
    #[serde(default)]
    pause: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    strategy: String,
    #[serde(default)]
    upstreams: Vec<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    steps: Option<Vec<StepBody>>,
    #[serde(default)]
    soft_rollback: Option<String>,
    #[serde(default)]
    verify_for: Option<String>,
    #[serde(default)]
    keep_blue_for: Option<String>,
    #[serde(default)]
    auto_switch: Option<bool>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    max_unavailable: Option<usize>,
    #[serde(default)]
    pause_between: Option<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
    #[serde(default)]
    health_wait: Option<String>,
}

/// Step bake time when a step names none.
pub const DEFAULT_BAKE: &str = "30s";

fn duration_field(
    name: &str,
    value: Option<&str>,
    default: &str,
) -> Result<std::time::Duration, ApiError> {
    crate::time::parse_duration(value.unwrap_or(default))
        .map_err(|m| ApiError::bad_request(format!("{name}: {m}")))
}

fn deploy_spec(
    b: &DeployBody,
    stable_instances: usize,
    min_requests: u64,
) -> Result<crate::rollout::plan::Spec, ApiError> {
    use crate::rollout::plan::{SoftRollback, Spec, Step};
    let only = |field: &str, present: bool, strategy: &str| {
        if present {
            Err(ApiError::bad_request(format!(
                "{field}: only applies to the {strategy} strategy"
            )))
        } else {
            Ok(())
        }
    };
    match b.strategy.as_str() {
        "canary" => {
            only("verify_for", b.verify_for.is_some(), "blue_green")?;
            only("keep_blue_for", b.keep_blue_for.is_some(), "blue_green")?;
            only("batch_size", b.batch_size.is_some(), "rolling")?;
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
        "blue_green" => {
            only("steps", b.steps.is_some(), "canary")?;
            only("batch_size", b.batch_size.is_some(), "rolling")?;
            Ok(Spec::BlueGreen {
                verify_for: duration_field("verify_for", b.verify_for.as_deref(), "1m")?,
                keep_blue_for: duration_field("keep_blue_for", b.keep_blue_for.as_deref(), "10m")?,
                auto_switch: b.auto_switch.unwrap_or(true),
            })
        }
        "rolling" => {
            only("steps", b.steps.is_some(), "canary")?;
            only("verify_for", b.verify_for.is_some(), "blue_green")?;
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

async fn start_deployment(
    State(state): State<AdminState>,
    headers: HeaderMap,
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
            crate::config::docker::check_image(image)
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
            },
            actor(&headers),
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

async fn control_deployment(
    State(state): State<AdminState>,
    headers: HeaderMap,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
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
            actor(&headers),
        )
        .await?;
    Ok(axum::Json(json!({
        "table_version": done.table_version,
        "event": done.event,
        "deployment": state.control.deployment(&id),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeBody {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn freeze(
    State(state): State<AdminState>,
    headers: HeaderMap,
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
            actor(&headers),
        )
        .await?;
    Ok(axum::Json(json!({ "event": done.event })).into_response())
}

async fn unfreeze(
    State(state): State<AdminState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<FreezeBody>,
) -> Result<Response, ApiError> {
    let done = state
        .control
        .send(
            Op::Freeze {
                service: body.service,
                reason: None,
            },
            actor(&headers),
        )
        .await?;
    Ok(axum::Json(json!({ "event": done.event })).into_response())
}

async fn freezes(State(state): State<AdminState>) -> Response {
    axum::Json(state.control.freezes()).into_response()
}

async fn reload(
    State(state): State<AdminState>,
    headers: HeaderMap,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    let done = state.control.send(Op::Reload, actor(&headers)).await?;
    Ok(axum::Json(json!({
        "table_version": done.table_version,
        "report": done.reload,
        "event": done.event,
    }))
    .into_response())
}
