//! The OpenAPI 3 document of the admin API: `openapi.json` next to this file, embedded in
//! the binary and served at `GET /api/v1/openapi.json` without a token (it describes the
//! API and holds no state). `tests/openapi.rs` runs schemathesis against a live gate with it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Where the document is served.
pub(super) const PATH: &str = "/api/v1/openapi.json";

/// The document, as kept in the source tree.
pub(super) const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`.
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::PREFIX;

    fn document_json() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_is_openapi_3() {
        let doc = document_json();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    }

    /// Both ways: every route the router serves is documented, and the document names no
    /// path the router lacks. (Methods are checked against the live gate by tests/openapi.rs:
    /// each documented one must answer 401 without a token, undocumented ones 405.)
    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document_json();
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        let mut served: BTreeSet<String> = super::super::api_routes()
            .into_iter()
            .map(|(path, _)| format!("{PREFIX}{path}"))
            .collect();
        served.extend(["/healthz", "/metrics", PATH].map(String::from));
        assert_eq!(documented, served);
    }

    /// Every operation under the prefix needs the bearer token except the document itself;
    /// the public ones say so with an empty `security`.
    #[test]
    fn auth_is_declared_on_every_api_operation() {
        let doc = document_json();
        assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let public = op["security"] == serde_json::json!([]);
                let should_be_public = !path.starts_with(PREFIX) || path == PATH;
                assert_eq!(public, should_be_public, "{method} {path}: security");
                if !public {
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {path} documents no 401"
                    );
                }
            }
        }
    }

    /// Every `$ref` points at something the document defines.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &serde_json::Value, doc: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = r.strip_prefix('#').expect("a local reference");
                        assert!(doc.pointer(pointer).is_some(), "{r} is not defined");
                    }
                    map.values().for_each(|x| walk(x, doc));
                }
                serde_json::Value::Array(list) => list.iter().for_each(|x| walk(x, doc)),
                _ => {}
            }
        }
        let doc = document_json();
        walk(&doc, &doc);
    }
}
