//! The web dashboard: one HTML page, a script and a style sheet, embedded in the binary and
//! served by the admin listener (`/`, `/dashboard/app.js`, `/dashboard/style.css`).
//!
//! The page holds no data of its own: it reads the same admin API as the CLI, with the same
//! bearer token (kept in the tab's `sessionStorage`; `#token=...` in the address fills it),
//! follows `/api/v1/events` through an `EventSource` opened with a short-lived ticket, and
//! acts through the same endpoints, each after a confirmation.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::{AdminState, ApiError};

const INDEX: &str = include_str!("index.html");
const APP: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// No inline script or style, nothing from elsewhere, not framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn disabled() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the dashboard is disabled ([dashboard] enabled = false)",
    )
    .into_response()
}

/// `GET /` and `GET /dashboard`.
pub async fn index(State(state): State<AdminState>) -> Response {
    if !state.dashboard {
        return disabled();
    }
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{file}`.
pub async fn asset(State(state): State<AdminState>, Path(file): Path<String>) -> Response {
    if !state.dashboard {
        return disabled();
    }
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP),
        "style.css" => page("text/css; charset=utf-8", STYLE),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dashboard file '{file}'"),
        )
        .into_response(),
    }
}
