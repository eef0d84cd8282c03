//! The data plane: pingora's `ProxyHttp` for the gate.
//!
//! Per request, in order: `request_filter` loads the routing table once (kept in the
//! context to the end), finds the service by Host and path, and chooses the arm (tester
//! header, sticky seed, weight); `upstream_peer` picks the arm's next upstream round robin
//! (the pool keeps connections alive); `fail_to_connect` moves on to the next upstream of
//! the same arm; `upstream_request_filter` adds the X-Forwarded-* headers (pingora strips
//! the hop-by-hop ones); `response_filter` hands a new client its sticky cookie; `logging`
//! records status class and latency in the arm's window and metrics. Nothing here locks,
//! waits on the control plane, or touches the network besides the proxied request itself.
//!
//! The canary shield: a request the weight sent to the canary, with a method the service's
//! shield covers (GET, HEAD, OPTIONS by default), that fails there before anything reached
//! the client (refused connect, timeout, reset, or a 5xx header) is recorded as a canary
//! failure and replayed once on stable; the client gets stable's answer. Requests a tester
//! forced onto the canary are never shielded: testers want to see the canary's answer.
//! Every canary failure pokes the controller so the judge looks at once.
//!
//! Submodules: `head` (framing, limits and the path's normal form, before routing),
//! `answers` (what the gate answers itself: ACME HTTP-01, redirects, plain errors),
//! `forwarding` (forwarding headers, trusted proxies, the tester guard, gRPC status, SNI),
//! `record` (the access log line and the failed-request evidence).

mod answers;
mod forwarding;
mod head;
mod record;

use answers::{discard_request_body, request_host, respond_plain};
use forwarding::{grpc_failure, host_of, tester_allowed};
use record::failed_request;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, Result};

use crate::access_log::AccessLog;
use crate::acme::challenges::Http01;
use crate::config::LatencyMeasure;
use crate::framing;
use crate::listeners::ListenerInfo;
use crate::metrics::Metrics;
use crate::request_id::{self, X_REQUEST_ID};
use crate::rollout::Wake;
use crate::routing::{Arm, RoutingTable, TableReader};
use crate::types::ArmRole;
use crate::types::StatusClass;
use crate::upstream::Protocol;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Streams one upstream HTTP/2 connection carries at once.
const UPSTREAM_H2_STREAMS: usize = 100;

/// Requests between header read and logging; a drain waits for it to reach zero.
#[derive(Clone, Default, Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }
}

/// Held by a request's context; dropping the context ends the request.
struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gate's `ProxyHttp` implementation.
pub struct GateProxy {
    table: TableReader,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    wake: Wake,
    listener: Arc<ListenerInfo>,
    http01: Arc<Http01>,
    access_log: Option<AccessLog>,
}

impl GateProxy {
    /// A proxy reading `table`, counting its requests in `in_flight`, poking `wake` after
    /// canary failures.
    pub fn new(
        table: TableReader,
        metrics: Arc<Metrics>,
        in_flight: InFlight,
        wake: Wake,
    ) -> GateProxy {
        GateProxy::on_listener(
            table,
            metrics,
            in_flight,
            wake,
            Arc::new(ListenerInfo {
                name: crate::config::tls::DEFAULT_LISTENER_NAME.into(),
                tls: false,
                redirect_to: None,
                https_port: None,
                http01: false,
                hsts: None,
                services: None,
                limits: Default::default(),
            }),
            Arc::default(),
            None,
        )
    }

    /// The same, for the listener `listener`, answering ACME HTTP-01 validation from
    /// `http01` on a listener that redirects to https, writing each request to `access_log`.
    pub fn on_listener(
        table: TableReader,
        metrics: Arc<Metrics>,
        in_flight: InFlight,
        wake: Wake,
        listener: Arc<ListenerInfo>,
        http01: Arc<Http01>,
        access_log: Option<AccessLog>,
    ) -> GateProxy {
        GateProxy {
            table,
            metrics,
            in_flight,
            wake,
            listener,
            http01,
            access_log,
        }
    }

    /// Records a failed canary attempt and moves the request to stable for its one replay.
    fn shield(&self, session: &Session, ctx: &mut RequestCtx, class: StatusClass) {
        let Some(table) = ctx.table.clone() else {
            return;
        };
        let service = &table.services[ctx.service];
        let canary = service.arm(ArmRole::Canary);
        let elapsed = ctx.attempt_started.elapsed();
        canary
            .stats
            .record_route(class, elapsed, &record::route(session, service));
        canary
            .stats
            .note_failed(failed_request(session, ctx, ctx.canary_status));
        canary.metrics.record(class, elapsed.as_secs_f64());
        canary.metrics.shielded();
        self.wake.poke();
        ctx.role = ArmRole::Stable;
        ctx.start = service.stable.start();
        ctx.attempt = 0;
        ctx.shield_ok = false;
        ctx.shielded = true;
        ctx.attempt_started = Instant::now();
    }
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    /// When its header was read.
    started: Instant,
    /// Its `X-Request-Id`.
    request_id: String,
    /// When the response header went to the client.
    first_byte: Option<Instant>,
    /// The upstream of the latest attempt.
    upstream: Option<std::net::SocketAddr>,
    /// A gRPC status that means the server failed (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS).
    grpc_failed: bool,
    /// The service's body limit (0: none) and the body bytes read so far.
    max_body: u64,
    body_read: u64,
    /// When the current arm's attempt began (the request start, or the shield's switch).
    attempt_started: Instant,
    /// The table this request routes by, loaded once.
    table: Option<Arc<RoutingTable>>,
    service: usize,
    role: ArmRole,
    /// Round-robin start and the current attempt within the arm.
    start: usize,
    attempt: usize,
    new_seed: Option<u64>,
    /// The canary failed this request may be replayed on stable.
    shield_ok: bool,
    /// It was (once is the limit).
    shielded: bool,
    /// A canary 5xx the response filter turned into an error, for the replay.
    canary_status: Option<u16>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn arm(&self) -> Option<&Arm> {
        self.table
            .as_ref()
            .map(|t| t.services[self.service].arm(self.role))
    }
}

#[async_trait]
impl ProxyHttp for GateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let now = Instant::now();
        RequestCtx {
            started: now,
            request_id: String::new(),
            first_byte: None,
            upstream: None,
            grpc_failed: false,
            max_body: 0,
            body_read: 0,
            attempt_started: now,
            table: None,
            service: 0,
            role: ArmRole::Stable,
            start: 0,
            attempt: 0,
            new_seed: None,
            shield_ok: false,
            shielded: false,
            canary_status: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pipelined requests (several in one write) are answered in order (RFC 9112 9.3.2),
        // not dropped with the connection after the first.
        if let pingora::protocols::http::ServerSession::H1(h1) = session.as_downstream_mut() {
            h1.set_pipelining_enabled(true);
        }
        // A body's reads may pause at most this long each (the head has its own deadline).
        session.set_read_timeout(Some(self.listener.limits.client_body_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = request_id::of(
            session
                .req_header()
                .headers
                .get(&X_REQUEST_ID)
                .map(HeaderValue::as_bytes),
        );
        if self.check_head(session, ctx).await? {
            return Ok(true);
        }
        if self.listener.http01 && self.http01(session, &ctx.request_id).await? {
            return Ok(true);
        }
        if let Some(port) = self.listener.redirect_to {
            return self.redirect(session, port, &ctx.request_id).await;
        }
        let table = self.table.load_full();
        let path = session.req_header().uri.path();
        let routed = table
            .route(request_host(session), path)
            .filter(|&i| self.listener.serves(table.services[i].name()));
        let Some(index) = routed else {
            self.metrics.unrouted();
            respond_plain(
                session,
                404,
                "sluice: no service matches this host and path\n",
                &ctx.request_id,
            )
            .await?;
            return Ok(true);
        };
        let service = &table.services[index];
        if service.config.redirect_https {
            if let Some(port) = self.listener.https_port {
                return self.redirect(session, port, &ctx.request_id).await;
            }
        }
        let headers = &session.req_header().headers;
        let forced = table
            .options
            .override_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| ArmRole::parse(v.as_bytes()))
            .filter(|_| tester_allowed(session, &table.options));
        let seed = if forced.is_none() && service.splits() {
            table.options.sticky_seed(headers)
        } else {
            None
        };
        let choice = service.choose_arm(forced, seed, table.options.sticky);
        // An arm can be empty while its containers come and go (discovery): say so.
        if service.arm(choice.role).serving() == 0 {
            respond_plain(
                session,
                503,
                "sluice: this service has no upstream to send the request to\n",
                &ctx.request_id,
            )
            .await?;
            return Ok(true);
        }
        // A body announced larger than the service takes: 413 before any of it is read.
        let max_body = service.config.max_body_size;
        let announced = framing::content_length(&session.req_header().headers)
            .ok()
            .flatten();
        if max_body > 0 && announced.is_some_and(|n| n > max_body) {
            session.set_keepalive(None);
            respond_plain(
                session,
                413,
                "sluice: request body too large\n",
                &ctx.request_id,
            )
            .await?;
            discard_request_body(session).await;
            return Ok(true);
        }
        ctx.max_body = max_body;
        ctx.shield_ok = choice.role == ArmRole::Canary
            && forced.is_none()
            && service.config.shield.covers(&session.req_header().method);
        ctx.role = choice.role;
        ctx.new_seed = choice.new_seed;
        ctx.start = service.arm(choice.role).start();
        ctx.service = index;
        ctx.table = Some(table);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A chunked body that grows past the limit: 413 (whatever was forwarded is cut).
        if let Some(b) = body {
            ctx.body_read += b.len() as u64;
            if ctx.max_body > 0 && ctx.body_read > ctx.max_body {
                return Error::e_explain(pingora::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(table) = ctx.table.as_ref() else {
            return Error::e_explain(pingora::InternalError, "request was not routed");
        };
        let service = &table.services[ctx.service];
        let arm = service.arm(ctx.role);
        if arm.serving() == 0 {
            // Only reachable when a replay on stable finds stable empty.
            return Error::e_explain(pingora::ConnectNoRoute, "the arm has no upstream");
        }
        let upstream = arm.upstream(ctx.start, ctx.attempt);
        ctx.upstream = Some(upstream.addr);
        let opts = &service.config.upstream;
        let sni = match (&opts.sni, opts.tls) {
            (_, false) => String::new(),
            (Some(name), true) => name.clone(),
            (None, true) => host_of(&upstream.spec).to_string(),
        };
        let mut peer = HttpPeer::new(upstream.addr, opts.tls, sni);
        if opts.protocol != Protocol::H1 {
            peer.options.alpn = pingora::protocols::ALPN::H2;
            peer.options.max_h2_streams = UPSTREAM_H2_STREAMS;
        }
        if opts.tls {
            peer.options.verify_cert = opts.verify;
            peer.options.verify_hostname = opts.verify;
            if let Some(ca) = &opts.ca {
                peer.options.ca = Some(ca.certs());
                peer.group_key = ca.fingerprint();
            }
        }
        peer.options.connection_timeout = Some(service.config.connect_timeout);
        // An upgraded connection (WebSocket) may stay quiet far longer than a request.
        peer.options.read_timeout = Some(if session.is_upgrade_req() {
            service.config.websocket_idle_timeout
        } else {
            service.config.read_timeout
        });
        peer.options.idle_timeout = Some(table.options.idle_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(arm) = ctx.arm() else {
            return e;
        };
        arm.metrics.connect_failed();
        if ctx.shield_ok {
            self.shield(session, ctx, StatusClass::NoResponse);
            e.set_retry(true);
            return e;
        }
        let upstreams = arm.serving();
        ctx.attempt += 1;
        // Try each upstream of the arm once; a connect error never reached the app, so
        // this is safe for any method.
        if ctx.attempt < upstreams {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        // A pooled connection the upstream had closed is the pool's race, not the canary's
        // failure: retry it the ordinary way (pingora's default policy).
        // (`ReusedOnly` means "retry if the connection was a reused one": decide it first;
        // asking an undecided retry panics.)
        let mut retry = e.retry;
        retry.decide_reuse(client_reused);
        let stale_pooled = client_reused && ctx.canary_status.is_none() && retry.retry();
        if ctx.shield_ok && replayable && !stale_pooled {
            let class = match ctx.canary_status {
                Some(_) => StatusClass::ServerError,
                None => StatusClass::NoResponse,
            };
            self.shield(session, ctx, class);
            ctx.canary_status = None;
            e.set_retry(true);
            return e;
        }
        // Stable failed an idempotent request before answering (an instance killed or
        // restarting): the next upstream of the arm gets it, once each, as nginx's
        // `proxy_next_upstream error timeout` does. Not for the canary: its failures are
        // the judge's evidence.
        if replayable && !stale_pooled && ctx.role == ArmRole::Stable {
            let serving = ctx.arm().map(|a| a.serving()).unwrap_or(0);
            ctx.attempt += 1;
            e.set_retry(ctx.attempt < serving);
            return e;
        }
        if !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A shielded replay is expected, counted in sluice_shielded_requests_total and
        // visible in the canary's window; a warning per request would flood the log.
        ctx.shielded
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request.insert_header(X_REQUEST_ID.clone(), ctx.request_id.as_str())?;
        self.forwarding_headers(session, upstream_request, ctx)?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if ctx.shield_ok && status >= 500 {
            // Nothing has reached the client yet: abandon this answer and let
            // error_while_proxy replay the request on stable.
            ctx.canary_status = Some(status);
            let mut e = Error::explain(
                pingora::HTTPStatus(status),
                "canary answered 5xx; replaying on stable",
            );
            e.set_retry(true);
            return Err(e);
        }
        match framing::response_fix(status, &upstream_response.headers) {
            Ok(fix) => {
                if fix.drop_upgrade {
                    upstream_response.remove_header(&http::header::UPGRADE);
                }
                if let Some(n) = fix.content_length {
                    upstream_response.insert_header(http::header::CONTENT_LENGTH, n)?;
                }
            }
            Err(framing::Ambiguous) => {
                let mut e = Error::explain(
                    pingora::InvalidHTTPHeader,
                    "upstream answered with conflicting Content-Length values",
                );
                e.esource = ErrorSource::Upstream;
                return Err(e);
            }
        }
        if status == 101 {
            return Ok(());
        }
        // A gRPC answer with nothing but headers carries its status there.
        if let Some(code) = upstream_response.headers.get(&GRPC_STATUS) {
            ctx.grpc_failed = grpc_failure(code.as_bytes());
        }
        // Hop-by-hop fields of the upstream connection must not reach the client; pingora
        // writes the client's own Connection header.
        let nominated: Vec<HeaderName> = upstream_response
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| n != CONNECTION)
            .collect();
        for name in nominated {
            upstream_response.remove_header(&name);
        }
        upstream_response.remove_header(&KEEP_ALIVE);
        upstream_response.remove_header(&PROXY_CONNECTION);
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // gRPC fails with HTTP 200 and its status in the trailers.
        if let Some(code) = trailers.get(&GRPC_STATUS) {
            ctx.grpc_failed = grpc_failure(code.as_bytes());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.first_byte = Some(Instant::now());
        upstream_response.insert_header(X_REQUEST_ID.clone(), ctx.request_id.as_str())?;
        if let (Some(seed), Some(table)) = (ctx.new_seed, ctx.table.as_ref()) {
            let mut cookie = table.options.set_cookie(seed);
            if self.listener.tls {
                cookie.push_str("; Secure");
            }
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if let Some(hsts) = &self.listener.hsts {
            upstream_response
                .insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.as_str())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> pingora::proxy::FailToProxy {
        // pingora's own choice of status (502 upstream, 400 client, 500 internal, 0 when
        // the client is gone), answered the same way; then a lingering close.
        let code = match e.etype() {
            pingora::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    pingora::WriteError | pingora::ReadError | pingora::ConnectionClosed => 0,
                    // A body that stalled past server.client_body_timeout.
                    pingora::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, "error answer not delivered");
            } else if code != 408 {
                discard_request_body(session).await;
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that went away is not the gate's problem; upstream errors are logged.
        matches!(error.esource(), ErrorSource::Downstream)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let response = session.response_written();
        let status = response.map(|r| r.status.as_u16());
        if let Some(arm) = ctx.arm() {
            let class = if ctx.grpc_failed {
                StatusClass::ServerError
            } else {
                StatusClass::of(status)
            };
            // An upgrade (WebSocket) or an event stream lasts as long as it is used: its
            // latency is the time to its response header, never its length.
            let streaming = status == Some(101)
                || response
                    .and_then(|r| r.headers.get(http::header::CONTENT_TYPE))
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let first_byte_only = streaming
                || ctx.table.as_ref().is_some_and(|t| {
                    t.services[ctx.service].config.latency == LatencyMeasure::FirstByte
                });
            let latency = match ctx.first_byte {
                Some(at) if first_byte_only => at.saturating_duration_since(ctx.attempt_started),
                _ => ctx.attempt_started.elapsed(),
            };
            if let Some(t) = &ctx.table {
                let route = record::route(session, &t.services[ctx.service]);
                arm.stats.record_route(class, latency, &route);
            }
            arm.metrics.record(class, latency.as_secs_f64());
            if class.is_failure() {
                arm.stats.note_failed(failed_request(session, ctx, status));
                if ctx.role == ArmRole::Canary {
                    self.wake.poke();
                }
            }
        }
        if let Some(log) = &self.access_log {
            log.log(self.entry(session, ctx, status));
        }
    }
}
