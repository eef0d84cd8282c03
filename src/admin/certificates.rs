//! The certificates resource: what the TLS listeners serve, by name, and how each ACME name
//! stands (orders this run, failures, last error, next order).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;

/// `GET /api/v1/certificates`.
pub(super) async fn certificates(State(state): State<AdminState>) -> Response {
    let mut list = Vec::new();
    if let Some(certs) = &state.certificates {
        let set = certs.store().load();
        for e in set.entries() {
            let source = match &e.source {
                crate::tls::Source::Files { cert, key } => {
                    json!({ "kind": "file", "cert": cert, "key": key })
                }
                crate::tls::Source::Acme => json!({ "kind": "acme" }),
            };
            for name in &e.loaded.names {
                list.push(json!({
                    "name": name,
                    "source": source["kind"],
                    "files": if source["kind"] == "file" { source.clone() } else { serde_json::Value::Null },
                    "issuer": e.loaded.issuer,
                    "serial": e.loaded.serial,
                    "not_before_ms": e.loaded.not_before.max(0) as u64 * 1000,
                    "not_after_ms": e.loaded.not_after.max(0) as u64 * 1000,
                }));
            }
        }
    }
    let acme = state
        .acme
        .as_ref()
        .map(|b| json!(&**b.load()))
        .unwrap_or(serde_json::Value::Null);
    axum::Json(json!({ "certificates": list, "acme": acme })).into_response()
}
