//! Before routing: the request head's framing (refused or made unambiguous), its limits, and
//! the normal form of its path, which is what is routed and forwarded.

use pingora::proxy::Session;
use pingora::Result;

use super::answers::respond_plain;
use super::{GateProxy, RequestCtx};
use crate::framing;

impl GateProxy {
    /// Checks the head; `true` when it was answered (refused) here.
    pub(super) async fn check_head(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // Framing first: nothing ambiguous is routed, answered or forwarded.
        let req = session.req_header();
        let has_authority = req.uri.authority().is_some();
        let checked =
            framing::check_request(req.version, req.raw_path(), has_authority, &req.headers);
        match checked {
            Err(refusal) => {
                // What follows a request framed this way cannot be trusted: close after.
                session.set_keepalive(None);
                respond_plain(session, refusal.status, refusal.body, &ctx.request_id).await?;
                return Ok(true);
            }
            Ok(one_length) => {
                let fix =
                    one_length.then(|| framing::content_length(&session.req_header().headers));
                let dropped = framing::underscored(&session.req_header().headers);
                let req = session.req_header_mut();
                if let Some(Ok(Some(n))) = fix {
                    req.insert_header(http::header::CONTENT_LENGTH, n)?;
                }
                for name in dropped {
                    req.remove_header(&name);
                }
            }
        }
        // Limits of the head: 414 for the target, 431 for the fields, and the connection closed.
        let req = session.req_header();
        let limits = &self.listener.limits;
        let too_big = if req.raw_path().len() > limits.max_uri_length {
            Some((414, "sluice: request target too long\n"))
        } else if req.headers.len() > limits.max_headers
            || req
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>()
                > limits.max_header_size
        {
            Some((431, "sluice: request header fields too large\n"))
        } else {
            None
        };
        if let Some((status, body)) = too_big {
            session.set_keepalive(None);
            respond_plain(session, status, body, &ctx.request_id).await?;
            return Ok(true);
        }
        // Route and forward the normal form of the path (dot segments, duplicate slashes and
        // encoded unreserved characters are not a way around a path prefix).
        let normal = match framing::normalise_path(session.req_header().uri.path()) {
            Ok(normal) => normal,
            Err(framing::BadEscape) => {
                session.set_keepalive(None);
                respond_plain(
                    session,
                    400,
                    "sluice: malformed percent-encoding in path\n",
                    &ctx.request_id,
                )
                .await?;
                return Ok(true);
            }
        };
        if let Some(path) = normal {
            let uri = &session.req_header().uri;
            let target = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = target.parse().ok();
            match http::Uri::from_parts(parts) {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => {
                    session.set_keepalive(None);
                    respond_plain(session, 400, "sluice: malformed path\n", &ctx.request_id)
                        .await?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
