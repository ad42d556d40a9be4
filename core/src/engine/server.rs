//! A server connection: HTTP/1.1 requests and the WebSocket upgrade on one port, with
//! JSON-RPC over both, composed from the `http`, `ws`, `auth` and `rpc` layers.

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::{ConnEvent, Endpoint, HandlerResult, Input, Now, Outgoing, Output, Stall, Transmit};
use crate::auth::{AuthError, Credentials, Principal, token_param};
use crate::http::body::{BodyError, BodyReader};
use crate::http::head::{HeadBuffer, RequestHead};
use crate::http::response::write_response;
use crate::metrics::{ErrorKind, PROMETHEUS_CONTENT_TYPE};
use crate::rpc::hooks::{ConnectionClosed, ConnectionOpened};
use crate::rpc::router::{ConnectionId, Transport, Work};
use crate::rpc::session::{CallId, RpcSession, SessionOutput};
use crate::service::{MonitoringAccess, Service};
use crate::ws::transmit::TransmitQueue;
use crate::ws::{self, CloseCode, Event, HandshakeError, Message, MessageKind, handshake};

/// Output queued beyond this stops input (the peer is not reading its responses).
const READ_HIGH_WATER: usize = 1 << 20;
/// Notifications wait in the outbox (bounded, with its slow-consumer policy) while this much
/// is queued for the transport.
const NOTIFY_HIGH_WATER: usize = 256 * 1024;

#[derive(Debug)]
struct HttpMeta {
    keep_alive: bool,
    allow_origin: Option<String>,
    head_only: bool,
}

enum Phase {
    /// Reading a request head; `started` once its first byte arrived.
    Head { head: HeadBuffer, started: bool },
    /// Reading the body of a JSON-RPC POST.
    Body { body: BodyReader, meta: HttpMeta, identity: (Option<Arc<str>>, Arc<Principal>) },
    /// Waiting for async calls of a POST to finish.
    HttpCall { meta: HttpMeta },
    /// Upgraded: JSON-RPC over WebSocket.
    WebSocket(Box<ws::Connection>),
    /// The last response is queued: write it, half-close, read until end of file.
    Draining,
    /// Done.
    Closed,
}

/// One accepted connection of a [`Service`], as a sans-IO [`Endpoint`]: HTTP requests and
/// the WebSocket upgrade on one port, JSON-RPC over both.
///
/// Drive it as the [module docs](super) describe: [`handle`](Endpoint::handle) each input
/// (bytes, end of file, a due timer, a finished handler, a wake-up, shutdown), then drain
/// [`poll_output`](Endpoint::poll_output) until it says to wait. Its outputs come in this
/// order: lifecycle events ([`ConnEvent::Upgraded`], [`ConnEvent::Closed`]), handler work to
/// spawn, bytes to transmit, half-close, finished. Everything that depends on time uses the
/// `now` given with the call: the monotonic clock for timers, the wall clock for token
/// expiry.
///
/// End of file: a peer that half-closes after its requests still gets every answer (HTTP
/// and WebSocket alike) before the connection ends, within the close timeout; a broken
/// transport ([`Input::Broken`]) ends it at once. A peer that takes no bytes for the longer
/// of the pong and close timeouts while output waits is dropped.
pub struct ServerConnection {
    service: Arc<Service>,
    id: ConnectionId,
    /// The TCP peer, when the adapter knows it.
    peer: Option<SocketAddr>,
    /// The client of the current request: the peer, or what trusted proxies forwarded.
    client: Option<IpAddr>,
    admitted: bool,
    phase: Phase,
    tx: TransmitQueue,
    session: Option<RpcSession>,
    spawns: VecDeque<(CallId, Work)>,
    events: VecDeque<ConnEvent>,
    /// The time of the latest input or output call: every entry point sets it first.
    now: Now,
    deadline: Option<Instant>,
    shutting_down: bool,
    /// The peer half-closed: answer what is pending, then close.
    peer_eof: bool,
    /// A WebSocket peer half-closed: end it once its answers are written, or at this
    /// deadline.
    eof_deadline: Option<Instant>,
    waker: Option<Waker>,
    /// `Transmit` was offered in this drain.
    offered: bool,
    /// `ShutdownWrite` was given.
    write_shut: bool,
    stall: Stall,
    /// An upgraded WebSocket the closed hook has not been told about yet.
    opened: Option<Opened>,
}

/// Who an upgraded WebSocket belongs to, for its closed hook.
struct Opened {
    origin: Option<Arc<str>>,
    principal: Arc<Principal>,
    at: Instant,
}

impl Opened {
    /// What the connection hooks hear when this WebSocket ends at `now` with `end`.
    fn closed<'a>(
        &'a self,
        connection: ConnectionId,
        client: Option<IpAddr>,
        now: Instant,
        end: &'a ws::Closed,
    ) -> ConnectionClosed<'a> {
        ConnectionClosed {
            connection,
            origin: self.origin.as_deref(),
            principal: &self.principal,
            client,
            code: end.code,
            reason: &end.reason,
            clean: end.clean,
            initiator: end.initiator,
            duration: now.saturating_duration_since(self.at),
        }
    }
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Head { .. } => "head",
            Phase::Body { .. } => "body",
            Phase::HttpCall { .. } => "http-call",
            Phase::WebSocket(_) => "websocket",
            Phase::Draining => "draining",
            Phase::Closed => "closed",
        };
        f.debug_struct("ServerConnection")
            .field("id", &self.id)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// Accepts a new transport connection at `now` whose peer address is unknown (a stream
    /// the application accepted itself): it is never a loopback client for the monitoring
    /// policy, and has no address for per-address rate limits. Adapters that accept TCP use
    /// [`with_peer`](Self::with_peer).
    pub fn new(service: Arc<Service>, now: Now) -> Self {
        Self::with_peer(service, now, None)
    }

    /// Accepts a new transport connection from `peer` at `now`. Beyond the service's
    /// connection limit it answers 503 and closes.
    ///
    /// The peer address decides who the client is (unless it is a trusted proxy that names
    /// another): the key of per-address rate limits, whether the monitoring policy sees a
    /// loopback client, and what refusals are logged with.
    pub fn with_peer(service: Arc<Service>, now: Now, peer: Option<SocketAddr>) -> Self {
        let (id, admitted) = service.admit();
        let handshake_timeout = service.config().ws.handshake_timeout;
        let mut conn = Self {
            service,
            id,
            peer,
            client: peer.map(|p| p.ip().to_canonical()),
            admitted,
            phase: Phase::Head { head: HeadBuffer::new(), started: false },
            tx: TransmitQueue::default(),
            session: None,
            spawns: VecDeque::new(),
            events: VecDeque::new(),
            now,
            deadline: handshake_timeout.map(|t| crate::later(now.mono, t)),
            shutting_down: false,
            peer_eof: false,
            eof_deadline: None,
            waker: None,
            offered: false,
            write_shut: false,
            stall: Stall::default(),
            opened: None,
        };
        if !admitted {
            log::warn!(
                target: "wsrpc::http",
                "refused conn={id} peer={} status=503 reason=\"connection limit reached\"",
                Shown(peer)
            );
            let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
            conn.respond(
                503,
                &[("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8")],
                b"server busy\n",
                meta,
            );
        }
        conn
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Whether it was upgraded to a WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket(_))
    }

    /// Handler calls running for this connection.
    pub fn pending_calls(&self) -> usize {
        self.session.as_ref().map_or(0, RpcSession::pending_calls)
    }

    // ---- input ---------------------------------------------------------------------------

    fn read(&mut self, data: &[u8]) -> usize {
        // A peer that does not read its responses (WebSocket or pipelined HTTP) is held at
        // the high-water mark, and nothing is read while an HTTP call runs.
        if data.is_empty() || !self.wants_read() {
            return 0;
        }
        let now = self.now;
        let used = match &mut self.phase {
            Phase::Head { .. } => self.read_head(now, data),
            Phase::Body { .. } => self.read_body(now, data),
            Phase::HttpCall { .. } => 0,
            Phase::WebSocket(ws) => {
                let n = ws.handle_input(now.mono, data);
                // Each message is answered before the next is read, so back-pressure
                // (`wants_read`) sees the answers queued so far.
                self.pump();
                n
            }
            Phase::Draining | Phase::Closed => data.len(),
        };
        self.service.metrics().bytes_received(used as u64);
        used
    }

    /// The peer half-closed. A peer that half-closes after its request still gets the
    /// response (then the connection closes).
    fn eof(&mut self) {
        self.peer_eof = true;
        match &mut self.phase {
            Phase::WebSocket(_) => {
                // Its answers go out first; `poll_output` ends the WebSocket once they have.
                let close = self.service.config().ws.close_timeout;
                self.eof_deadline = Some(crate::later(self.now.mono, close));
            }
            // The response is on its way; `respond` will not keep the connection alive.
            Phase::HttpCall { .. } => {}
            Phase::Head { .. } | Phase::Body { .. } | Phase::Draining => {
                // A request (or upgrade) cut off half way is a fault; a keep-alive connection
                // closed between requests is not.
                if matches!(self.phase, Phase::Head { started: true, .. } | Phase::Body { .. }) {
                    self.service.metrics().record_error(ErrorKind::Handshake);
                }
                if self.tx.is_empty() {
                    self.finish();
                } else {
                    self.phase = Phase::Draining;
                }
            }
            Phase::Closed => {}
        }
    }

    /// The transport failed: nothing more can be written or read.
    fn broken(&mut self) {
        self.peer_eof = true;
        self.tx.clear();
        match &mut self.phase {
            Phase::WebSocket(ws) => {
                ws.handle_eof(self.now.mono);
                self.pump();
                self.finish();
            }
            Phase::Closed => {}
            _ => self.finish(),
        }
    }

    fn timeout(&mut self) {
        let now = self.now;
        if self.deadline.is_some_and(|d| d <= now.mono) {
            self.deadline = None;
            match &self.phase {
                Phase::Head { started: true, .. } | Phase::Body { .. } => {
                    log::debug!(target: "wsrpc::http", "request timeout conn={}", self.id);
                    let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
                    self.respond_error(408, "request timed out", meta);
                }
                Phase::Head { started: false, .. } | Phase::Draining => self.finish(),
                _ => {}
            }
        }
        if self.pending_output() > 0
            && self
                .stall
                .deadline(super::stall_limit(&self.service.config().ws))
                .is_some_and(|d| d <= now.mono)
        {
            log::debug!(target: "wsrpc::http", "peer stopped reading; dropping conn={}", self.id);
            return self.broken();
        }
        if self.eof_deadline.is_some_and(|d| d <= now.mono) {
            self.eof_deadline = None;
            if let Phase::WebSocket(ws) = &mut self.phase {
                ws.handle_eof(now.mono);
            }
        }
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.handle_timeout(now.mono);
        }
    }

    /// Reports the output of handler work from [`Output::Spawn`].
    fn complete(&mut self, call: CallId, result: HandlerResult) {
        let now = self.now;
        let Some(session) = self.session.as_mut() else { return };
        session.complete(call, result, now.mono);
        if matches!(&self.phase, Phase::HttpCall { .. }) && session.pending_calls() == 0 {
            let Phase::HttpCall { meta } = std::mem::replace(&mut self.phase, Phase::Closed) else {
                unreachable!("matched above")
            };
            self.answer_http(meta);
        }
    }

    /// Starts a graceful shutdown: no new requests; in-flight calls are answered, then
    /// WebSocket peers get close 1001 and HTTP connections close after their response.
    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        if let Phase::Head { .. } = &self.phase {
            self.phase = Phase::Draining;
            self.deadline =
                Some(crate::later(self.now.mono, self.service.config().ws.close_timeout));
        }
    }

    // ---- output --------------------------------------------------------------------------

    fn pending_output(&self) -> usize {
        let ws = match &self.phase {
            Phase::WebSocket(ws) => ws.transmit_len(),
            _ => 0,
        };
        self.tx.len() + ws
    }

    fn wants_shutdown_write(&self) -> bool {
        match &self.phase {
            Phase::Draining => self.tx.is_empty(),
            Phase::WebSocket(ws) => self.tx.is_empty() && ws.wants_shutdown_write(),
            _ => false,
        }
    }

    fn is_finished(&self) -> bool {
        match &self.phase {
            Phase::Closed => true,
            Phase::WebSocket(ws) => ws.is_finished(),
            _ => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ws = match &self.phase {
            Phase::WebSocket(ws) => ws.poll_timeout(),
            _ => None,
        };
        let stall = self.stall.deadline(super::stall_limit(&self.service.config().ws));
        [self.deadline, ws, self.eof_deadline, stall].into_iter().flatten().min()
    }

    // ---- internals -----------------------------------------------------------------------

    fn finish(&mut self) {
        self.phase = Phase::Closed;
        self.deadline = None;
        self.tx.clear();
        if let Some(mut s) = self.session.take() {
            s.shutdown();
        }
    }

    fn read_head(&mut self, now: Now, data: &[u8]) -> usize {
        let limits = self.service.config().ws.head_limits;
        let Phase::Head { head, started } = &mut self.phase else {
            unreachable!("called in the head phase")
        };
        if !*started {
            *started = true;
            self.deadline =
                self.service.config().ws.handshake_timeout.map(|t| crate::later(now.mono, t));
        }
        let meta = || HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
        match head.push(data, limits.max_size).and_then(|done| match done {
            None => head.check_request_prefix().map(|()| None),
            some => Ok(some),
        }) {
            Ok(None) => data.len(),
            Err(e) => {
                self.respond_error(e.status(), &e.to_string(), meta());
                data.len()
            }
            Ok(Some(used)) => {
                let raw = head.take();
                match RequestHead::parse(raw, limits) {
                    Ok(request) => self.route(now, request),
                    Err(e) => self.respond_error(e.status(), &e.to_string(), meta()),
                }
                used
            }
        }
    }

    fn read_body(&mut self, now: Now, data: &[u8]) -> usize {
        let Phase::Body { body, .. } = &mut self.phase else {
            unreachable!("called in the body phase")
        };
        match body.push(data) {
            Ok((used, false)) => used,
            Ok((used, true)) => {
                let Phase::Body { body, meta, identity } =
                    std::mem::replace(&mut self.phase, Phase::Closed)
                else {
                    unreachable!("matched above")
                };
                self.call_over_http(now, &body.into_body(), meta, identity);
                used
            }
            Err(e) => {
                let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
                // The shared budget is spent: a limit (503 is not counted by its status).
                if e == BodyError::BudgetExhausted {
                    self.service.metrics().record_error(ErrorKind::LimitExceeded);
                }
                let retry: Vec<_> =
                    e.retry_after().map(|s| ("Retry-After", s)).into_iter().collect();
                self.respond_error_with(e.status(), &e.to_string(), &retry, meta);
                data.len()
            }
        }
    }

    /// What the request presents, at the wall-clock time of `now` (a token's `exp` is a
    /// date: it must be checked against the wall clock, which keeps going while a laptop
    /// sleeps, not the monotonic one).
    fn credentials<'r>(&self, request: &'r RequestHead, now: Now) -> Credentials<'r> {
        Credentials {
            authorization: request.headers.get_str("authorization"),
            query_token: token_param(request.target()),
            unix_now: now.wall.as_secs(),
        }
    }

    fn route(&mut self, now: Now, request: RequestHead) {
        self.service.metrics().http_request_received();
        let proxies = &self.service.config().limits.trusted_proxies;
        self.client = self.peer.map(|peer| {
            proxies.client_address(peer.ip(), request.headers.get_all(proxies.header().name()))
        });
        // One origin per request (RFC 6454 §7); two could slip a foreign one past the policy.
        if request.headers.count("origin") > 1 {
            let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
            return self.respond_error(403, "more than one Origin header", meta);
        }
        if request.headers.has_token("upgrade", "websocket") {
            return self.upgrade(now, request);
        }
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0, else 400.
        let hosts = request.headers.count("host");
        if hosts > 1 || (hosts == 0 && request.version >= 1) {
            let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
            return self.respond_error(400, "exactly one Host header is required", meta);
        }
        let config = self.service.config();
        let origin = request.headers.get_str("origin");
        let connection_close = request.headers.has_token("connection", "close");
        let keep_alive = !self.shutting_down
            && if request.version >= 1 {
                !connection_close
            } else {
                request.headers.has_token("connection", "keep-alive")
            };
        let meta = HttpMeta {
            keep_alive,
            allow_origin: config.auth.origin.allowed_origin_header(origin).map(str::to_owned),
            head_only: request.method() == "HEAD",
        };
        if let Err(e) = config.auth.origin.check(origin) {
            self.service.metrics().record_error(ErrorKind::Auth);
            // Readable by the refused page, so a client stops retrying (see `refusal_origin_header`).
            let allow_origin = config.auth.origin.refusal_origin_header(origin).map(str::to_owned);
            return self.respond_auth_error(&e, HttpMeta { allow_origin, ..meta });
        }
        let path = request.path();
        let method = request.method();
        let has_body = request.headers.get("content-length").is_some_and(|v| v != b"0")
            || request.headers.get("transfer-encoding").is_some();
        // Only `POST /` reads a body; every other answer closes after a request that has one,
        // or the body would be taken for the next request.
        let keep_alive = meta.keep_alive;
        let meta = HttpMeta { keep_alive: keep_alive && !has_body, ..meta };
        if method == "OPTIONS" {
            return self.preflight(&request, meta);
        }
        let monitoring = config.http.monitoring;
        if monitoring != MonitoringAccess::Off
            && (path == config.http.health_path || path == config.http.metrics_path)
        {
            if !matches!(method, "GET" | "HEAD") {
                return self.respond_error_allow(405, "GET, HEAD", meta);
            }
            if has_body {
                return self.respond_error(400, "unexpected body", meta);
            }
            let require_auth = config.auth.require_auth;
            // Credentials matter only where they open the details.
            let authenticated = match (monitoring, require_auth) {
                (MonitoringAccess::Restricted, true) => crate::auth::principal_for(
                    config.auth.authenticator.as_deref(),
                    true,
                    &self.credentials(&request, now),
                )
                .map(|p| p.authenticated),
                _ => Ok(false),
            };
            let allowed = monitoring.allows(
                self.client,
                authenticated.as_ref().is_ok_and(|a| *a),
                require_auth,
            );
            if path == config.http.health_path {
                let health = self.service.health(now.mono);
                // The bare status is for anyone (load balancers); the details are not.
                let body = match allowed {
                    true => serde_json::to_vec(&health),
                    false => serde_json::to_vec(&serde_json::json!({ "status": health.status })),
                };
                // 503 while the broker that topics go through is down.
                let status = health.http_status();
                let body = body.unwrap_or_default();
                return self.respond(status, &[("Content-Type", "application/json")], &body, meta);
            }
            if !allowed {
                return match authenticated {
                    Err(e) => self.respond_auth_error(&e, meta),
                    Ok(_) if require_auth => {
                        self.respond_error(403, "metrics are for authenticated clients", meta)
                    }
                    Ok(_) => self.respond_error(403, "metrics are for loopback clients", meta),
                };
            }
            let body = self.service.snapshot(now.mono).to_prometheus();
            return self.respond(
                200,
                &[("Content-Type", PROMETHEUS_CONTENT_TYPE)],
                body.as_bytes(),
                meta,
            );
        }
        if let Some(route) = crate::http::routes::find(&config.http.routes, path) {
            if !matches!(method, "GET" | "HEAD") {
                return self.respond_error_allow(405, "GET, HEAD", meta);
            }
            let (body, content_type) = (route.body.clone(), route.content_type.clone());
            return self.respond(200, &[("Content-Type", &content_type)], &body, meta);
        }
        if path != config.http.rpc_path {
            return self.respond_error(404, "not found", meta);
        }
        match method {
            "POST" => {}
            "GET" | "HEAD" => {
                // A browser cannot see why an upgrade was refused; this GET of the same URL
                // tells it readably: 401 for bad credentials, 426 when the upgrade would pass.
                let creds = self.credentials(&request, now);
                if let Err(e) = crate::auth::principal_for(
                    config.auth.authenticator.as_deref(),
                    config.auth.require_auth,
                    &creds,
                ) {
                    // Counted as an auth error by its status, in `respond_error_with`.
                    return self.respond_auth_error(&e, HttpMeta { keep_alive: false, ..meta });
                }
                return self.respond_error_with(
                    426,
                    "use a WebSocket upgrade or POST a JSON-RPC request",
                    &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
            _ => {
                return self.respond_error_allow(
                    405,
                    "GET, POST, OPTIONS",
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
        }
        let meta = HttpMeta { head_only: false, keep_alive, ..meta };
        let content_type = request.headers.get_str("content-type").unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json")
            && !media.eq_ignore_ascii_case("application/json-rpc")
        {
            return self.respond_error(
                415,
                "Content-Type must be application/json",
                HttpMeta { keep_alive: false, ..meta },
            );
        }
        let max = config.rpc.max_request_size;
        let te = request.headers.get_str("transfer-encoding");
        let cl = request.headers.get_str("content-length");
        let body = match (te, cl, request.headers.count("content-length")) {
            // Both framings, or several Transfer-Encoding lines: a smuggling attempt (400).
            (Some(_), _, _) if cl.is_some() || request.headers.count("transfer-encoding") > 1 => {
                return self.respond_error(
                    400,
                    "ambiguous framing: Transfer-Encoding with Content-Length, or repeated",
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
            (Some(te), _, _) => {
                let codings: Vec<&str> = te.split(',').map(str::trim).collect();
                let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
                match codings.split_last() {
                    Some((last, [])) if chunked(last) => Ok(BodyReader::chunked(max)),
                    // RFC 9112 §6.3: chunked must be the final coding, and only once (400).
                    Some((last, rest)) if !chunked(last) || rest.iter().any(chunked) => {
                        return self.respond_error(
                            400,
                            "Transfer-Encoding must end in chunked, once",
                            HttpMeta { keep_alive: false, ..meta },
                        );
                    }
                    // A coding before chunked that is not implemented (RFC 9112 §6.1: 501).
                    _ => {
                        return self.respond_error(
                            501,
                            "unsupported Transfer-Encoding (only chunked)",
                            HttpMeta { keep_alive: false, ..meta },
                        );
                    }
                }
            }
            (None, Some(cl), 1) => match cl.parse::<usize>() {
                Ok(len) if cl.bytes().all(|b| b.is_ascii_digit()) => {
                    BodyReader::with_length(len, max)
                }
                _ => {
                    return self.respond_error(
                        400,
                        "invalid Content-Length",
                        HttpMeta { keep_alive: false, ..meta },
                    );
                }
            },
            (None, Some(_), _) => {
                return self.respond_error(
                    400,
                    "conflicting Content-Length",
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
            (None, None, _) => {
                return self.respond_error(
                    411,
                    "Content-Length required",
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
        };
        let body = match body {
            // Bodies share the budget of unfinished WebSocket messages.
            Ok(b) => b.charged_to(self.service.ws_config().assembly_budget.as_ref()),
            Err(e) => {
                return self.respond_error(
                    e.status(),
                    &e.to_string(),
                    HttpMeta { keep_alive: false, ..meta },
                );
            }
        };
        let creds = self.credentials(&request, now);
        let principal = match crate::auth::principal_for(
            config.auth.authenticator.as_deref(),
            config.auth.require_auth,
            &creds,
        ) {
            Ok(p) => p,
            Err(e) => {
                self.service.metrics().record_error(ErrorKind::Auth);
                return self.respond_auth_error(&e, HttpMeta { keep_alive: false, ..meta });
            }
        };
        // Never a 1xx to an HTTP/1.0 client, whose expectation is ignored (RFC 9110 §10.1.1).
        if request.version >= 1
            && request
                .headers
                .get_str("expect")
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            self.tx.push_with(|b| b.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"));
        }
        let identity = (origin.map(Arc::from), Arc::new(principal));
        if body.is_complete() {
            return self.call_over_http(now, &body.into_body(), meta, identity);
        }
        self.phase = Phase::Body { body, meta, identity };
    }

    fn upgrade(&mut self, now: Now, request: RequestHead) {
        let config = self.service.config();
        let origin = request.headers.get_str("origin");
        let creds = self.credentials(&request, now);
        let principal = match config.auth.admit(origin, &creds) {
            Ok(p) => p,
            Err(e) => {
                self.service.metrics().record_error(ErrorKind::Auth);
                let meta = HttpMeta { keep_alive: false, allow_origin: None, head_only: false };
                return self.respond_auth_error(&e, meta);
            }
        };
        let origin: Option<Arc<str>> = origin.map(Arc::from);
        let upgrade = match handshake::validate_upgrade(request) {
            Ok(u) => u,
            Err(e) => return self.reject_upgrade(&e),
        };
        let protocol = upgrade.select_protocol(&config.ws.subprotocols);
        // permessage-deflate: accepted or declined here, never a reason to refuse.
        let deflate =
            ws::deflate::accept(config.ws.compression.as_ref(), upgrade.offered_extensions());
        let ext = deflate.as_ref().map(|d| ("Sec-WebSocket-Extensions", d.header.as_str()));
        self.tx.push_with(|b| handshake::write_accept(b, upgrade.key(), protocol, ext.as_slice()));
        let ws = ws::Connection::accepted_with(
            self.service.ws_config().clone(),
            now.mono,
            deflate.map(|d| d.params),
        );
        let principal = Arc::new(principal);
        let mut session = RpcSession::new(
            self.service.clone(),
            self.id,
            origin.clone(),
            principal.clone(),
            Transport::WebSocket,
            now.mono,
        );
        session.set_client_address(self.client);
        if let Some(w) = &self.waker {
            session.register_waker(w);
        }
        let path = upgrade.request.path().to_owned();
        self.service.connection_opened(&ConnectionOpened {
            connection: self.id,
            origin: origin.as_deref(),
            principal: &principal,
            client: self.client,
            path: &path,
            protocol,
            now: now.mono,
        });
        self.opened =
            Some(Opened { origin: origin.clone(), principal: principal.clone(), at: now.mono });
        self.events.push_back(ConnEvent::Upgraded {
            principal,
            origin,
            path,
            protocol: protocol.map(str::to_owned),
        });
        self.session = Some(session);
        self.deadline = None;
        self.phase = Phase::WebSocket(Box::new(ws));
    }

    fn reject_upgrade(&mut self, e: &HandshakeError) {
        self.service.metrics().record_error(ErrorKind::Handshake);
        log::info!(
            target: "wsrpc::ws",
            "refused upgrade conn={} peer={} client={} status={} reason=\"{e}\"",
            self.id,
            Shown(self.peer),
            Shown(self.client),
            e.status()
        );
        self.tx.push_with(|b| handshake::write_reject(b, e));
        self.drain();
    }

    fn call_over_http(
        &mut self,
        now: Now,
        body: &[u8],
        meta: HttpMeta,
        identity: (Option<Arc<str>>, Arc<Principal>),
    ) {
        let service = self.service.clone();
        let id = self.id;
        let session = self.session.get_or_insert_with(|| {
            RpcSession::new(
                service,
                id,
                None,
                Arc::new(Principal::anonymous()),
                Transport::Http,
                now.mono,
            )
        });
        session.set_identity(identity.0, identity.1);
        session.set_client_address(self.client);
        session.handle_message(now.mono, body);
        if session.pending_calls() > 0 {
            self.collect_spawns();
            self.phase = Phase::HttpCall { meta };
            return;
        }
        self.answer_http(meta);
    }

    fn collect_spawns(&mut self) {
        // Only spawns are queued while calls are pending; responses come at completion.
        let Some(session) = self.session.as_mut() else { return };
        let mut rest = VecDeque::new();
        while let Some(o) = session.poll_output() {
            match o {
                SessionOutput::Spawn(c, f) => self.spawns.push_back((c, f)),
                other => rest.push_back(other),
            }
        }
        debug_assert!(rest.is_empty(), "a POST answers once all its calls are done");
    }

    fn answer_http(&mut self, mut meta: HttpMeta) {
        let mut body = None;
        if let Some(session) = self.session.as_mut() {
            while let Some(o) = session.poll_output() {
                match o {
                    SessionOutput::Message(m) => body = Some(m),
                    SessionOutput::Spawn(c, f) => self.spawns.push_back((c, f)),
                    SessionOutput::Close(..) => meta.keep_alive = false,
                    SessionOutput::Notification(_) => {}
                }
            }
        }
        match body {
            Some(b) => self.respond(200, &[("Content-Type", "application/json")], &b, meta),
            None => self.respond(204, &[], b"", meta),
        }
    }

    fn preflight(&mut self, request: &RequestHead, meta: HttpMeta) {
        let mut headers = vec![
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", "Content-Type, Authorization"),
            ("Access-Control-Max-Age", "600"),
        ];
        // Chrome's Private Network Access: a public page may reach this loopback server only
        // when the origin is allowed and the server says so.
        if meta.allow_origin.is_some()
            && request
                .headers
                .get_str("access-control-request-private-network")
                .is_some_and(|v| v == "true")
        {
            headers.push(("Access-Control-Allow-Private-Network", "true"));
        }
        self.respond(204, &headers, b"", meta);
    }

    fn respond_auth_error(&mut self, e: &AuthError, meta: HttpMeta) {
        let status = e.status();
        let challenge = e.www_authenticate();
        let extra: Vec<(&str, &str)> =
            challenge.map(|c| ("WWW-Authenticate", c)).into_iter().collect();
        self.respond_error_with(
            status,
            &e.to_string(),
            &extra,
            HttpMeta { keep_alive: false, ..meta },
        );
    }

    fn respond_error(&mut self, status: u16, message: &str, meta: HttpMeta) {
        self.respond_error_with(status, message, &[], meta);
    }

    fn respond_error_allow(&mut self, status: u16, allow: &str, meta: HttpMeta) {
        self.respond_error_with(status, "method not allowed", &[("Allow", allow)], meta);
    }

    fn respond_error_with(
        &mut self,
        status: u16,
        message: &str,
        extra: &[(&str, &str)],
        meta: HttpMeta,
    ) {
        if let Some(kind) = ErrorKind::from_http_status(status) {
            self.service.metrics().record_error(kind);
        }
        // Credentials and origins are the auth layer's refusals; the rest are HTTP's.
        let target = if matches!(status, 401 | 403) { "wsrpc::auth" } else { "wsrpc::http" };
        log::info!(
            target: target,
            "refused conn={} peer={} client={} status={status} reason=\"{message}\"",
            self.id,
            Shown(self.peer),
            Shown(self.client)
        );
        let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
        headers.extend_from_slice(extra);
        let body = format!("{message}\n");
        self.respond(status, &headers, body.as_bytes(), meta);
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], meta: HttpMeta) {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(o) = meta.allow_origin.as_deref() {
            all.push(("Access-Control-Allow-Origin", o));
            all.push(("Vary", "Origin"));
        }
        let keep_alive = meta.keep_alive && !self.shutting_down && !self.peer_eof;
        self.tx.push_with(|b| write_response(b, status, &all, body, keep_alive, meta.head_only));
        if keep_alive {
            self.phase = Phase::Head { head: HeadBuffer::new(), started: false };
            self.deadline =
                Some(crate::later(self.now.mono, self.service.config().http.keep_alive_timeout));
        } else {
            self.drain();
        }
    }

    fn drain(&mut self) {
        self.phase = Phase::Draining;
        self.deadline = Some(crate::later(self.now.mono, self.service.config().ws.close_timeout));
        if let Some(mut s) = self.session.take() {
            s.shutdown();
        }
    }

    /// Moves WebSocket messages into the session and the session's output onto the wire,
    /// at `self.now`; ends a half-closed WebSocket once its answers are written.
    fn pump(&mut self) {
        let now = self.now.mono;
        let Phase::WebSocket(ws) = &mut self.phase else { return };
        let Some(session) = self.session.as_mut() else { return };
        while let Some(event) = ws.poll_event() {
            match event {
                Event::Message(m) if m.kind == MessageKind::Text => {
                    session.handle_message(now, &m.data)
                }
                Event::Message(_) => {
                    self.service.metrics().record_error(ErrorKind::Protocol);
                    let _ = ws.close(
                        now,
                        CloseCode::UNSUPPORTED_DATA,
                        "binary messages are not accepted",
                    );
                }
                Event::Closed(closed) => {
                    // Protocol violations, and peers that vanish mid-stream or stop answering,
                    // are faults worth counting; a clean close is not.
                    if closed.error.is_some() {
                        // The shared budget for unfinished messages was exhausted: a limit,
                        // not the peer's protocol violation.
                        let kind = if matches!(
                            closed.error,
                            Some(ws::Error::Protocol(ws::ProtocolError::BudgetExhausted))
                        ) {
                            ErrorKind::LimitExceeded
                        } else {
                            ErrorKind::Protocol
                        };
                        self.service.metrics().record_error(kind);
                    }
                    if let Some(o) = self.opened.take() {
                        self.service.connection_closed(&o.closed(
                            self.id,
                            self.client,
                            now,
                            &closed,
                        ));
                    }
                    self.events.push_back(ConnEvent::Closed {
                        code: closed.code,
                        reason: closed.reason,
                        clean: closed.clean,
                        initiator: closed.initiator,
                    });
                }
                Event::Connected(_) => {}
            }
        }
        loop {
            let notifications = ws.transmit_len() < NOTIFY_HIGH_WATER;
            let Some(output) = session.poll_output_with(notifications) else { break };
            match output {
                SessionOutput::Message(data) => {
                    let _ = ws.send(now, Message { kind: MessageKind::Text, data });
                }
                SessionOutput::Notification(frame) => {
                    let _ = ws.send_shared(now, &frame);
                }
                SessionOutput::Spawn(call, work) => self.spawns.push_back((call, work)),
                SessionOutput::Close(code, why) => {
                    let _ = ws.close(now, code, why);
                }
            }
        }
        if self.shutting_down && session.pending_calls() == 0 && ws.is_open() {
            let _ = ws.close(now, CloseCode::GOING_AWAY, "server shutting down");
        }
        // A half-closed peer: its answers are written and no call is left to answer.
        if self.eof_deadline.is_some()
            && session.pending_calls() == 0
            && ws.transmit_len() == 0
            && self.tx.is_empty()
        {
            self.eof_deadline = None;
            ws.handle_eof(now);
            // The end of the WebSocket is an event to report.
            return self.pump();
        }
        if ws.is_finished() {
            session.shutdown();
        }
    }
}

impl Outgoing for ServerConnection {
    fn slices<'s>(&'s mut self, dst: &mut [IoSlice<'s>]) -> usize {
        let n = self.tx.slices(dst);
        match &mut self.phase {
            Phase::WebSocket(ws) if n < dst.len() => n + ws.poll_transmit_vectored(&mut dst[n..]),
            _ => n,
        }
    }

    fn front(&mut self) -> &[u8] {
        if !self.tx.is_empty() {
            return self.tx.front().unwrap_or(&[]);
        }
        match &mut self.phase {
            Phase::WebSocket(ws) => ws.poll_transmit().unwrap_or(&[]),
            _ => &[],
        }
    }

    fn pending(&self) -> usize {
        self.pending_output()
    }

    fn advance(&mut self, mut n: usize, now: Instant) {
        self.service.metrics().bytes_sent(n as u64);
        if n > 0 {
            self.offered = false;
        }
        let own = n.min(self.tx.len());
        self.tx.advance(own);
        n -= own;
        if n > 0 {
            if let Phase::WebSocket(ws) = &mut self.phase {
                ws.advance_transmit(n);
            }
        }
        if own + n > 0 {
            self.stall.progress(now, self.pending_output() > 0);
        }
        if self.peer_eof && self.tx.is_empty() && matches!(self.phase, Phase::Draining) {
            self.finish();
        }
    }
}

impl Endpoint for ServerConnection {
    fn handle(&mut self, now: Now, input: Input<'_>) -> usize {
        self.now = now;
        self.offered = false;
        match input {
            Input::Bytes(data) => return self.read(data),
            Input::Eof => self.eof(),
            Input::Broken => self.broken(),
            Input::Timeout => self.timeout(),
            Input::Completed(call, result) => self.complete(call, result),
            Input::Shutdown => self.begin_shutdown(),
            // Notifications are moved onto the wire by `poll_output`, stamped with its `now`.
            Input::Wakeup | Input::Connected(_) | Input::ConnectFailed(..) => {}
        }
        0
    }

    fn poll_output(&mut self, now: Now) -> Output<'_> {
        self.now = now;
        self.pump();
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        if let Some((call, work)) = self.spawns.pop_front() {
            return Output::Spawn(call, work);
        }
        if self.pending_output() > 0 {
            self.stall.waiting(now.mono);
            if !std::mem::replace(&mut self.offered, true) {
                return Output::Transmit(Transmit { out: self, now: now.mono });
            }
        } else {
            self.stall.clear();
        }
        if self.wants_shutdown_write() && !std::mem::replace(&mut self.write_shut, true) {
            return Output::ShutdownWrite;
        }
        // A drain ends here: the next call starts another, which offers `Transmit` again.
        self.offered = false;
        if self.is_finished() {
            return Output::Finished;
        }
        Output::Wait(self.next_deadline())
    }

    fn wants_read(&self) -> bool {
        if self.peer_eof {
            return false;
        }
        match &self.phase {
            Phase::HttpCall { .. } => false,
            Phase::WebSocket(ws) => ws.transmit_len() <= READ_HIGH_WATER,
            Phase::Head { .. } | Phase::Body { .. } => self.tx.len() <= READ_HIGH_WATER,
            Phase::Draining | Phase::Closed => true,
        }
    }

    fn set_waker(&mut self, waker: &Waker) {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        if let Some(s) = &self.session {
            s.register_waker(waker);
        }
        self.waker = Some(waker.clone());
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        // Dropped by its adapter before the WebSocket ended (a runtime going away): the hook
        // still hears of the end, as the abnormal closure it is.
        if let Some(o) = self.opened.take() {
            let end = ws::Closed {
                code: CloseCode::ABNORMAL,
                reason: "connection dropped".into(),
                initiator: ws::Initiator::Local,
                clean: false,
                error: None,
            };
            self.service.connection_closed(&o.closed(self.id, self.client, self.now.mono, &end));
        }
        if self.admitted {
            self.service.release();
        }
    }
}

/// An optional value in a log line: the value, or `-`.
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
