//! What the upstream is told and whom the gate believes: forwarding headers (replaced unless
//! from a trusted proxy), the client's address behind trusted proxies, the tester guard, the
//! gRPC statuses that are failures, the default SNI.

use http::header::{HeaderName, HeaderValue, HOST};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::Session;
use pingora::Result;

use super::{GateProxy, RequestCtx};
use crate::trust;
use subtle::ConstantTimeEq;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The tester's token header (`routing.override_token`).
pub static X_SLUICE_TOKEN: HeaderName = HeaderName::from_static("x-sluice-token");

impl GateProxy {
    /// The forwarding headers of `upstream_request`, and the tester's headers kept back.
    pub(super) fn forwarding_headers(
        &self,
        session: &Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let options = ctx.table.as_ref().map(|t| &*t.options);
        let trusted_proxies = options.map_or(&[][..], |o| &o.trusted_proxies[..]);
        let peer = session
            .client_addr()
            .and_then(PeerAddr::as_inet)
            .map(|a| a.ip());
        // A trusted proxy's forwarding headers are extended; anyone else's are replaced.
        let trusted = peer.is_some_and(|ip| trust::any_contains(trusted_proxies, ip));
        if !trusted {
            upstream_request.remove_header(&FORWARDED);
            upstream_request.remove_header(&X_REAL_IP);
        }
        if let Some(ip) = peer {
            let prior = upstream_request
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            let value = match prior {
                Some(prior) if trusted => format!("{prior}, {ip}"),
                _ => ip.to_string(),
            };
            upstream_request.insert_header(X_FORWARDED_FOR.clone(), value)?;
        }
        if !(trusted && upstream_request.headers.contains_key(&X_FORWARDED_PROTO)) {
            let proto = if self.listener.tls { "https" } else { "http" };
            upstream_request
                .insert_header(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto))?;
        }
        if !(trusted && upstream_request.headers.contains_key(&X_FORWARDED_HOST)) {
            match session.req_header().headers.get(HOST).cloned() {
                Some(host) => upstream_request.insert_header(X_FORWARDED_HOST.clone(), host)?,
                None => {
                    upstream_request.remove_header(&X_FORWARDED_HOST);
                }
            }
        }
        // The tester header and its token stay here unless asked for.
        if let Some(o) = options.filter(|o| !o.forward_override) {
            if let Some(h) = &o.override_header {
                upstream_request.remove_header(h);
            }
            upstream_request.remove_header(&X_SLUICE_TOKEN);
        }
        Ok(())
    }
}

/// Whether a `grpc-status` is a failure of the server (as opposed to the caller's: NOT_FOUND,
/// INVALID_ARGUMENT, PERMISSION_DENIED... are the app working as designed).
pub(super) fn grpc_failure(code: &[u8]) -> bool {
    // UNKNOWN 2, DEADLINE_EXCEEDED 4, INTERNAL 13, UNAVAILABLE 14, DATA_LOSS 15.
    matches!(code, b"2" | b"4" | b"13" | b"14" | b"15")
}

/// The client's address: the peer, or behind trusted proxies the last address in
/// `X-Forwarded-For` that is not one of them.
pub(super) fn client_ip(session: &Session, trusted: &[trust::Cidr]) -> Option<std::net::IpAddr> {
    let peer = session.client_addr().and_then(PeerAddr::as_inet)?.ip();
    if !trust::any_contains(trusted, peer) {
        return Some(peer);
    }
    let headers = &session.req_header().headers;
    let mut last = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for part in value.to_str().unwrap_or("").rsplit(',') {
            match part.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if trust::any_contains(trusted, ip) => last = ip,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(last),
            }
        }
    }
    Some(last)
}

/// Whether this request's tester header counts: from `routing.override_from`, or with the
/// token in `x-sluice-token` (compared in constant time).
pub(super) fn tester_allowed(session: &Session, options: &crate::routing::RoutingOptions) -> bool {
    let from = client_ip(session, &options.trusted_proxies)
        .is_some_and(|ip| trust::any_contains(&options.override_from, ip));
    from || options.override_token.as_ref().is_some_and(|token| {
        session
            .req_header()
            .headers
            .get(&X_SLUICE_TOKEN)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(token.as_bytes())))
    })
}

/// The host of an upstream as written (`api.internal:443` → `api.internal`, `[::1]:443` →
/// `::1`), the default SNI.
pub(super) fn host_of(spec: &str) -> &str {
    let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
