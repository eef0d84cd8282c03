//! What the gate answers itself: ACME's HTTP-01 path, redirects to https, plain-text errors,
//! and the lingering read of a refused body.

use bytes::Bytes;
use http::header::HOST;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::GateProxy;
use crate::acme::challenges::HTTP01_PREFIX;
use crate::linger::{DEFAULT_LINGER_BYTES, DEFAULT_LINGER_TIME};
use crate::request_id::X_REQUEST_ID;

impl GateProxy {
    /// ACME's HTTP-01 path, answered from the challenge board (404 for an unknown token).
    /// Returns whether the request was one.
    pub(super) async fn http01(&self, session: &mut Session, id: &str) -> Result<bool> {
        let path = session.req_header().uri.path();
        if let Some(token) = path.strip_prefix(HTTP01_PREFIX) {
            let token = token.to_string();
            match self.http01.answer(&token) {
                Some(key_authorization) => {
                    let mut resp = ResponseHeader::build(200, Some(2))?;
                    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
                    resp.insert_header(http::header::CONTENT_LENGTH, key_authorization.len())?;
                    session.write_response_header(Box::new(resp), false).await?;
                    session
                        .write_response_body(Some(Bytes::from(key_authorization)), true)
                        .await?;
                }
                None => respond_plain(session, 404, "sluice: no such ACME challenge\n", id).await?,
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// A 308 to the same host and path over https, on `port`.
    pub(super) async fn redirect(
        &self,
        session: &mut Session,
        port: u16,
        id: &str,
    ) -> Result<bool> {
        let Some(host) = redirect_host(request_host(session)) else {
            respond_plain(
                session,
                400,
                "sluice: a redirect to https needs a valid Host\n",
                id,
            )
            .await?;
            return Ok(true);
        };
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let location = if port == 443 {
            format!("https://{host}{target}")
        } else {
            format!("https://{host}:{port}{target}")
        };
        let mut resp = ResponseHeader::build(308, Some(3))?;
        resp.insert_header(http::header::LOCATION, location)?;
        resp.insert_header(X_REQUEST_ID.clone(), id)?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }
}

/// The Host a request is for: the URI authority (HTTP/2, absolute form) or the Host header.
/// The host of a redirect target: the request's host without its port, when it is a name
/// or an address (anything else could inject into the `Location`).
pub(super) fn redirect_host(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`: the bracketed address, when it is one.
        let (ip, _) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        return host.get(..ip.len() + 2);
    }
    let name = host.split(':').next().unwrap_or("");
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(name)
}

pub(super) fn request_host(session: &Session) -> &str {
    let req = session.req_header();
    if let Some(host) = req.uri.host() {
        return host;
    }
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

pub(super) async fn respond_plain(
    session: &mut Session,
    status: u16,
    body: &'static str,
    id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(X_REQUEST_ID.clone(), id)?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// After an error answer on a connection that will close: reads and throws away what is
/// left of the request body (at most [`DEFAULT_LINGER_BYTES`] for [`DEFAULT_LINGER_TIME`]),
/// so the client, still uploading, reads the answer instead of a reset (see
/// [`crate::linger`]). HTTP/2 streams end on their own and need none of this.
pub(super) async fn discard_request_body(session: &mut Session) {
    if session.as_downstream().is_http2() || session.as_downstream_mut().is_body_done() {
        return;
    }
    let drain = async {
        let mut left = DEFAULT_LINGER_BYTES;
        while let Ok(Some(chunk)) = session.as_downstream_mut().read_request_body().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DEFAULT_LINGER_TIME, drain).await;
}
