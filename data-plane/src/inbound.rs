//! The inbound listener: other sidecars → this workload's application.
//!
//! Per connection: nothing before readiness (fail closed); mesh mTLS (STRICT), or mTLS and
//! plaintext told apart by the first byte (PERMISSIVE), or plaintext (DISABLED); the peer's
//! SPIFFE ID from its verified certificate. Per HTTP request: route, authorization, rate limit,
//! then the application gets the request with `x-mesh-peer-identity` set to the verified ID
//! (anything the caller sent under that name is removed first).

use crate::conn::{Activity, Expiry, Gate, Watched, guarded};
use crate::drain;
use crate::forward::{Direction, Forwarder};
use crate::http_util::{
    Body, LEGACY_APP_PROTOCOL, MAX_HEADER_LIST_SIZE, PEER_IDENTITY, ensure_traceparent,
    error_response, host_of, response_header_list_size,
};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::resources::{
    AuthzRequest, Listener, Protocol, RateLimitScope, RequestView, TlsMode, authorize,
};
use crate::xds::store::{Snapshot, Store};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_ca::SpiffeId;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// How long a client gets to finish its TLS handshake (or send its first byte).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Inbound {
    pub gate: Arc<Gate>,
    pub store: Arc<Store>,
    pub readiness: Arc<Readiness>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Metrics,
    pub app_addr: SocketAddr,
}

/// The verified caller of one connection.
#[derive(Clone)]
struct Peer {
    id: Option<SpiffeId>,
    header: Option<HeaderValue>,
    label: Arc<str>,
}

// === impl Inbound ===

impl Inbound {
    /// Accepts until the drain starts.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        let Some(admitted) = self.gate.admit() else {
                            tracing::debug!(%remote, "inbound connection closed: --max-connections reached");
                            continue;
                        };
                        let this = self.clone();
                        let drain = drain.clone();
                        tokio::spawn(async move {
                            this.connection(tcp, remote, drain).await;
                            drop(admitted);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("inbound accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = drain.signaled() => return,
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, remote: SocketAddr, drain: drain::Watch) {
        if !self.readiness.is_ready() {
            tracing::debug!(%remote, "inbound connection closed: not ready");
            return;
        }
        let activity = self.gate.activity();
        // The handshake is part of the time a client gets to send its first request head.
        let handshake_timeout = HANDSHAKE_TIMEOUT.min(self.gate.limits.header_read_timeout);
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = tcp.set_nodelay(true);
        let snap = self.store.snapshot();
        let Some(listener) = snap.inbound.clone() else {
            tracing::debug!(%remote, "inbound connection closed: no inbound listener");
            return;
        };
        let mode = listener.tls_mode.unwrap_or(snap.tls.inbound_mode);
        let tls = match mode {
            TlsMode::Strict => true,
            TlsMode::Disabled => false,
            TlsMode::Permissive => {
                let mut first = [0u8; 1];
                match tokio::time::timeout(handshake_timeout, tcp.peek(&mut first)).await {
                    // 0x16: a TLS handshake record.
                    Ok(Ok(1)) => first[0] == 0x16,
                    Ok(_) => return,
                    Err(_) => {
                        self.gate.timed_out(Expiry::HeaderRead);
                        return;
                    }
                }
            }
        };
        if !tls {
            let peer = Peer {
                id: None,
                header: None,
                label: Arc::from(""),
            };
            return self
                .serve_io(tcp, peer, listener, port, drain, activity)
                .await;
        }
        let Some(config) = snap.server_config.clone() else {
            tracing::warn!(%remote, "inbound connection closed: no TLS configuration");
            return;
        };
        drop(snap);
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
        let stream = match tokio::time::timeout(handshake_timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.handshake("inbound", false);
                tracing::debug!(%remote, "inbound TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                self.metrics.handshake("inbound", false);
                self.gate.timed_out(Expiry::HeaderRead);
                tracing::debug!(%remote, "inbound TLS handshake timed out");
                return;
            }
        };
        self.metrics.handshake("inbound", true);
        let _open = self.metrics.negotiated("inbound", stream.get_ref().1);
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(mesh_ca::tls::spiffe_id_of);
        let peer = Peer {
            header: id
                .as_ref()
                .and_then(|id| HeaderValue::from_str(&id.to_string()).ok()),
            label: Arc::from(id.as_ref().map(|i| i.to_string()).unwrap_or_default()),
            id,
        };
        self.serve_io(stream, peer, listener, port, drain, activity)
            .await;
    }

    async fn serve_io<IO>(
        self: Arc<Self>,
        io: IO,
        peer: Peer,
        listener: Arc<Listener>,
        port: u16,
        drain: drain::Watch,
        activity: Arc<Activity>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if listener.protocol == Protocol::Tcp {
            return self.tcp(io, peer, port).await;
        }
        let peer_label = peer.label.clone();
        let this = self.clone();
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let peer = peer.clone();
            let guard = requests.begin();
            async move {
                let resp = this.handle(req, &peer, port).await;
                Ok::<_, Infallible>(resp.map(|b| guarded(b, guard)))
            }
        });
        // The TLS policy this connection was set up under: when a newer one arrives, the
        // connection gets the new policy's grace period, then is closed gracefully (GOAWAY, or
        // `connection: close` after the current HTTP/1.1 response).
        let mut epochs = self.store.tls_epochs();
        let generation = epochs.borrow_and_update().generation;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .max_header_list_size(crate::http_util::MAX_HEADER_LIST_SIZE);
        let limits = self.gate.limits;
        let io = Watched::new(io, activity.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut following = true;
        // After an idle close starts: the client gets this long to go before it is cut off.
        let mut hard_stop: Option<tokio::time::Instant> = None;
        loop {
            let expiry = deadline.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("inbound connection: {e}");
                    }
                    return;
                }
                why = activity.expired(&limits), if !closing => {
                    self.gate.timed_out(why);
                    tracing::debug!(peer = %peer_label, "inbound connection closed: {why:?} timeout");
                    if why == Expiry::HeaderRead {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    hard_stop = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                _ = tokio::time::sleep_until(hard_stop.unwrap_or_else(tokio::time::Instant::now)), if hard_stop.is_some() => {
                    return;
                }
                _ = drain.signaled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                changed = epochs.changed(), if following && !closing && deadline.is_none() => {
                    // An error means the store is gone (the process is exiting).
                    following = changed.is_ok();
                    let epoch = *epochs.borrow_and_update();
                    if following
                        && epoch.generation != generation
                        && let Some(grace) = epoch.grace
                    {
                        deadline = Some(tokio::time::Instant::now() + grace);
                    }
                }
                _ = tokio::time::sleep_until(expiry), if !closing && deadline.is_some() => {
                    tracing::debug!("closing a connection of a previous TLS policy");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: &Peer, port: u16) -> Response<Body> {
        let start = Instant::now();
        let snap = self.store.snapshot();
        let (resp, route) = self.route(&snap, req, peer, port).await;
        self.metrics.request(
            "inbound",
            &route,
            resp.status().as_u16(),
            &peer.label,
            start.elapsed(),
        );
        resp
    }

    async fn route(
        &self,
        snap: &Snapshot,
        mut req: Request<Incoming>,
        peer: &Peer,
        port: u16,
    ) -> (Response<Body>, String) {
        if req.method() == http::Method::CONNECT {
            return (
                crate::upgrade::not_implemented("CONNECT tunnels are not supported"),
                String::new(),
            );
        }
        let client_upgrade = crate::upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let Some(listener) = &snap.inbound else {
            return (
                error_response(StatusCode::SERVICE_UNAVAILABLE, "no inbound listener"),
                String::new(),
            );
        };
        let host = host_of(&req).unwrap_or_default();
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        let Some(route) = snap
            .virtual_host(&listener.route_table, &host)
            .and_then(|vh| vh.route(&view))
        else {
            return (
                error_response(StatusCode::NOT_FOUND, "no inbound route matches"),
                String::new(),
            );
        };
        let authz = AuthzRequest {
            peer: peer.id.as_ref(),
            port,
            path: Some(req.uri().path()),
            method: Some(req.method().as_str()),
        };
        if let Err(why) = authorize(snap.authorization.iter().map(|p| &**p), &authz) {
            tracing::debug!(peer = %peer.label, path = %req.uri().path(), "403: {why}");
            return (
                error_response(
                    StatusCode::FORBIDDEN,
                    &format!("RBAC: access denied ({why})"),
                ),
                route.name.clone(),
            );
        }
        // A PER_ROUTE limit names a route of the service's own route tables (an HTTPRoute
        // rule, `<ns>/<route>#<rule>`): the route the caller's sidecar chose for this request.
        // Find it the same way, by host and match, among the tables held.
        let service_route = if snap
            .rate_limits
            .iter()
            .any(|l| matches!(l.scope, RateLimitScope::Route(_)))
        {
            snap.virtual_host(mesh_proto::names::ANY, &host)
                .and_then(|vh| vh.route(&view))
                .map(|r| r.name.as_str())
        } else {
            None
        };
        let now = Instant::now();
        for limit in snap.rate_limits.iter().filter(|l| {
            l.applies_to(Some(&route.name))
                || (matches!(l.scope, RateLimitScope::Route(_)) && l.applies_to(service_route))
        }) {
            if let Err(wait) = limit.try_acquire(now) {
                let mut r = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("rate limited by {}", limit.name),
                );
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                return (r, route.name.clone());
            }
        }
        let (mut parts, body) = req.into_parts();
        // The version toward the application is its cluster's (the Service port's
        // `appProtocol`): nothing a caller sends chooses it. An older sidecar's header is
        // dropped here, before the application.
        parts.headers.remove(&LEGACY_APP_PROTOCOL);
        parts.headers.remove(&PEER_IDENTITY);
        if let Some(v) = &peer.header {
            parts.headers.insert(PEER_IDENTITY, v.clone());
        }
        ensure_traceparent(&mut parts.headers);
        let over_http2 = parts.version == http::Version::HTTP_2;
        if let Some(client) = client_upgrade {
            let direction = Direction::Inbound { app: self.app_addr };
            let (resp, _) = self
                .forwarder
                .upgrade(snap, route, direction, &host, parts, client)
                .await;
            return (resp, route.name.clone());
        }
        let (resp, _) = self
            .forwarder
            .forward(
                snap,
                route,
                Direction::Inbound { app: self.app_addr },
                &host,
                parts,
                body,
            )
            .await;
        // Headers the caller's HTTP/2 side would refuse would cost it the whole connection.
        let size = response_header_list_size(resp.headers());
        if over_http2 && size > MAX_HEADER_LIST_SIZE as usize {
            self.metrics.header_list_too_large("inbound");
            let why = format!(
                "the application's response headers are {size} bytes; the mesh accepts at \
                 most {MAX_HEADER_LIST_SIZE}"
            );
            return (
                error_response(StatusCode::BAD_GATEWAY, &why),
                route.name.clone(),
            );
        }
        (resp, route.name.clone())
    }

    /// A TCP listener: identity-based authorization per connection, then bytes both ways to
    /// the application.
    async fn tcp<IO>(&self, mut io: IO, peer: Peer, port: u16)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let snap = self.store.snapshot();
        let authz = AuthzRequest {
            peer: peer.id.as_ref(),
            port,
            path: None,
            method: None,
        };
        if let Err(why) = authorize(snap.authorization.iter().map(|p| &**p), &authz) {
            tracing::debug!(peer = %peer.label, "TCP connection denied: {why}");
            return;
        }
        drop(snap);
        let mut app = match TcpStream::connect(self.app_addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(app = %self.app_addr, "inbound TCP: application unreachable: {e}");
                return;
            }
        };
        let _ = tokio::io::copy_bidirectional(&mut io, &mut app).await;
    }
}
