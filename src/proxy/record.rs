//! What a finished request leaves behind besides the stats: its access log line and, when it
//! failed, its place in the evidence of a cut-back.

use pingora::proxy::Session;

use super::answers::request_host;
use super::{GateProxy, RequestCtx};
use crate::access_log::Entry;
use crate::request_id;
use crate::stats::FailedRequest;

impl GateProxy {
    /// The access log line of a finished request.
    pub(super) fn entry(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        status: Option<u16>,
    ) -> Entry {
        let req = session.req_header();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let service = ctx.table.as_ref().map(|t| &t.services[ctx.service]);
        if ctx.request_id.is_empty() {
            ctx.request_id = request_id::generate(); // refused before routing
        }
        Entry {
            time_ms: crate::time::now_ms(),
            client: session
                .client_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            method: req.method.as_str().to_string(),
            host: request_host(session).to_string(),
            path: req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| req.uri.path().to_string()),
            protocol: if session.as_downstream().is_http2() {
                "HTTP/2"
            } else if req.version == http::Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            status: status.unwrap_or(0),
            bytes_in: session.as_downstream().body_bytes_read() as u64,
            bytes_out: session.as_downstream().body_bytes_sent() as u64,
            duration_ms: ms(ctx.started.elapsed()),
            ttfb_ms: ctx
                .first_byte
                .map(|at| ms(at.saturating_duration_since(ctx.started))),
            service: service.map(|s| s.name().to_string()),
            arm: service.map(|_| ctx.role.as_str()),
            upstream: ctx.upstream.map(|u| u.to_string()),
            shielded: ctx.shielded,
            request_id: std::mem::take(&mut ctx.request_id),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
        }
    }
}

/// A failed request as a cut-back's evidence keeps it.
pub(super) fn failed_request(
    session: &Session,
    ctx: &RequestCtx,
    status: Option<u16>,
) -> FailedRequest {
    let req = session.req_header();
    FailedRequest {
        request_id: ctx.request_id.clone(),
        request: format!("{} {}", req.method, req.uri.path()),
        status,
        at_ms: crate::time::now_ms(),
    }
}

/// The route of this request in `service` (for the judge's per-route windows).
pub(super) fn route<'a>(
    session: &'a Session,
    service: &'a crate::routing::Service,
) -> crate::routes::Route<'a> {
    let head = session.req_header();
    crate::routes::Route::of(
        head.method.as_str(),
        head.uri.path(),
        &service.config.routes,
    )
}
