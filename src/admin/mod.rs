//! The admin API: an axum router on the admin listener.
//!
//! Endpoints (JSON; every `/api` route needs `Authorization: Bearer TOKEN` when a token is
//! configured, compared in constant time):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | `{"status":"ok"}`; 503 `draining` during shutdown (no auth) |
//! | GET | `/metrics` | Prometheus text format (no auth) |
//! | GET | `/api/v1/openapi.json` | the OpenAPI 3 document of all of these (`openapi.json` here; no auth) |
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
//! | GET | `/api/v1/certificates` | the certificates served (name, source, issuer, serial, expiry) and the ACME status per name |
//! | GET | `/api/v1/history` | stored events, newest first: `?service=&kind=a,b&deployment=&since=&until=&limit=&cursor=` |
//! | GET | `/api/v1/deployments` | deployments, newest first: `?service=&limit=&cursor=` |
//! | GET | `/api/v1/deployments/{id}` | one deployment with its events, probe results and health trend |
//! | GET | `/api/v1/deployments/{id}/trend` | the trend alone; `?format=text` for a plain-text table |
//! | GET | `/api/v1/deployments/{id}/report` | what happened (timeline, breach, failed requests, figures, who acted); `?format=markdown` for the post-mortem draft |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with 400 (bad body), 401,
//! 404 (unknown service or route), 405, 409 (state conflict), 413 (body over 64 KiB),
//! 415, 422 (invalid config on reload), 429 (too many wrong tokens) or 503. A refused
//! request changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::rollout::{ControlHandle, Op};

mod auth;
mod certificates;
pub mod dashboard;
mod deployments;
mod error;
mod history;
mod openapi;
mod report;
mod services;
mod stream;

/// For the fuzz target `admin_bodies`: `bytes` read as the body of every admin API command
/// (as the API reads it, with and without a JSON Content-Type), and a deployment's body
/// turned into its plan as `POST /services/{name}/deployments` does. Each answer: `Ok` or
/// the status the API would refuse it with. Never panics.
#[doc(hidden)]
pub fn check_bodies(bytes: &[u8]) -> Vec<Result<(), u16>> {
    use crate::api::{CanaryBody, DeployBody, FreezeBody, ResumeBody, RollbackBody, WeightBody};
    fn one<T: serde::de::DeserializeOwned>(bytes: &[u8], json: Option<bool>) -> Result<T, u16> {
        error::parse_json::<T>(bytes, json).map_err(|e| e.into_response().status().as_u16())
    }
    let mut out = Vec::new();
    for json in [None, Some(true), Some(false)] {
        out.push(one::<EmptyBody>(bytes, json).map(drop));
        out.push(one::<CanaryBody>(bytes, json).map(drop));
        out.push(one::<WeightBody>(bytes, json).map(drop));
        out.push(one::<RollbackBody>(bytes, json).map(drop));
        out.push(one::<ResumeBody>(bytes, json).map(drop));
        out.push(one::<FreezeBody>(bytes, json).map(drop));
        let deploy = one::<DeployBody>(bytes, json);
        out.push(deploy.as_ref().map(drop).map_err(|s| *s));
        if let Ok(body) = deploy {
            for (stable, min_requests) in [(1, 20), (3, 1)] {
                let plan = deployments::deploy_spec(&body, stable, min_requests)
                    .map_err(|e| e.into_response().status().as_u16());
                out.push(plan.map(drop));
            }
            let deadline = deployments::deploy_deadline(&body)
                .map_err(|e| e.into_response().status().as_u16());
            out.push(deadline.map(drop));
        }
    }
    out
}

use crate::api::{EmptyBody, MAX_BODY};
use auth::{issue_ticket, require_token, Actor, Tickets};
pub use auth::{AUTH_WINDOW, MAX_AUTH_FAILURES};
use deployments::{
    control_deployment, deployment, deployment_report, deployment_trend, deployments, freeze,
    freezes, start_deployment, unfreeze,
};
pub use error::ApiError;
use error::JsonBody;
use history::history;
use services::{
    clear_canary, list_services, promote, resume, rollback, service_releases, set_canary,
    set_weight, show_service,
};
use stream::events;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Commands to the controller; also the table to read.
    pub control: ControlHandle,
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The bearer token (swapped on reload); `None` disables auth (loopback only).
    pub token: Arc<ArcSwapOption<String>>,
    /// Wrong tokens per source address (rate limit).
    pub auth_failures: Arc<auth::AuthFailures>,
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
    /// The TLS listeners' certificates, when any listener speaks TLS.
    pub certificates: Option<Arc<crate::listeners::Certificates>>,
    /// The ACME manager's status per name, when `tls.acme` is on.
    pub acme: Option<crate::acme::manager::AcmeBoard>,
}

/// Every route under [`crate::api::PREFIX`] that needs the token, with its handlers. The
/// router is built from this list, and the unit test of `openapi` checks the document
/// against it.
pub(crate) fn api_routes() -> Vec<(&'static str, MethodRouter<AdminState>)> {
    vec![
        ("/services", get(list_services)),
        ("/services/{name}", get(show_service)),
        (
            "/services/{name}/canary",
            put(set_canary).delete(clear_canary),
        ),
        ("/services/{name}/deployments", post(start_deployment)),
        ("/services/{name}/releases", get(service_releases)),
        ("/deployments/{id}/{action}", post(control_deployment)),
        ("/freeze", get(freezes).post(freeze)),
        ("/unfreeze", post(unfreeze)),
        ("/services/{name}/weight", post(set_weight)),
        ("/services/{name}/promote", post(promote)),
        ("/services/{name}/rollback", post(rollback)),
        ("/services/{name}/resume", post(resume)),
        ("/reload", post(reload)),
        ("/events", get(events)),
        ("/tickets", post(issue_ticket)),
        ("/history", get(history)),
        ("/certificates", get(certificates::certificates)),
        ("/deployments", get(deployments)),
        ("/deployments/{id}", get(deployment)),
        ("/deployments/{id}/trend", get(deployment_trend)),
        ("/deployments/{id}/report", get(deployment_report)),
    ]
}

/// Builds the router.
pub fn router(state: AdminState) -> Router {
    let api = api_routes()
        .into_iter()
        .fold(Router::new(), |api, (path, handler)| {
            api.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // Public, like /healthz: the document holds no state, and tools fetch it first.
        .route(openapi::PATH, get(openapi::document))
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
    let app = router(state).into_make_service_with_connect_info::<auth::ClientAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server stopped");
    }
}

pub(super) async fn healthz(State(state): State<AdminState>) -> Response {
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

pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

pub(super) async fn reload(
    State(state): State<AdminState>,
    Actor(who): Actor,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    let done = state.control.send(Op::Reload, who).await?;
    Ok(axum::Json(json!({
        "table_version": done.table_version,
        "report": done.reload,
        "event": done.event,
    }))
    .into_response())
}
