//! The outbound listener: this workload's application → other services, in plain HTTP on
//! loopback. The Host (or `:authority`) picks a virtual host of the listener's route table
//! ("*": every route table held), the first matching route picks the backends, and the request
//! leaves over mesh mTLS (see [`crate::forward`]).

use crate::conn::{Expiry, Gate, Watched, guarded};
use crate::drain;
use crate::forward::{Direction, Forwarder};
use crate::http_util::{
    Body, LEGACY_APP_PROTOCOL, PEER_IDENTITY, ensure_traceparent, error_response, host_of,
};
use crate::metrics::Metrics;
use crate::resources::{Protocol, RequestView};
use crate::xds::store::{Snapshot, Store};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub struct Outbound {
    pub gate: Arc<Gate>,
    pub store: Arc<Store>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Metrics,
}

// === impl Outbound ===

impl Outbound {
    /// Accepts until the drain starts.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let Some(admitted) = self.gate.admit() else {
                            tracing::debug!("outbound connection closed: --max-connections reached");
                            continue;
                        };
                        let this = self.clone();
                        let drain = drain.clone();
                        tokio::spawn(async move {
                            this.connection(tcp, drain).await;
                            drop(admitted);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("outbound accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = drain.signaled() => return,
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, drain: drain::Watch) {
        let _ = tcp.set_nodelay(true);
        if let Some(l) = &self.store.snapshot().outbound
            && l.protocol == Protocol::Tcp
        {
            // Opaque TCP to a default cluster is not implemented on the outbound side yet:
            // close rather than pretend.
            tracing::warn!(listener = %l.name, "outbound TCP listeners are not supported; connection closed");
            return;
        }
        let activity = self.gate.activity();
        let limits = self.gate.limits;
        let this = self.clone();
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let guard = requests.begin();
            async move {
                let resp = this.handle(req).await;
                Ok::<_, Infallible>(resp.map(|b| guarded(b, guard)))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .max_header_list_size(crate::http_util::MAX_HEADER_LIST_SIZE);
        let io = Watched::new(tcp, activity.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("outbound connection: {e}");
                }
            }
            why = activity.expired(&limits) => {
                self.gate.timed_out(why);
                tracing::debug!("outbound connection closed: {why:?} timeout");
                if why == Expiry::Idle {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let snap = self.store.snapshot();
        let (resp, route, cluster) = self.route(&snap, req).await;
        self.metrics.request(
            "outbound",
            &route,
            resp.status().as_u16(),
            &cluster,
            start.elapsed(),
        );
        resp
    }

    async fn route(
        &self,
        snap: &Snapshot,
        mut req: Request<Incoming>,
    ) -> (Response<Body>, String, String) {
        if req.method() == http::Method::CONNECT {
            return (
                crate::upgrade::not_implemented("CONNECT tunnels are not supported"),
                String::new(),
                String::new(),
            );
        }
        let client_upgrade = crate::upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let Some(listener) = &snap.outbound else {
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no outbound listener (yet)",
                ),
                String::new(),
                String::new(),
            );
        };
        let Some(host) = host_of(&req) else {
            return (
                error_response(StatusCode::BAD_REQUEST, "the request has no Host"),
                String::new(),
                String::new(),
            );
        };
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        let Some(vh) = snap.virtual_host(&listener.route_table, &host) else {
            return (
                error_response(StatusCode::NOT_FOUND, &format!("no route for host {host}")),
                String::new(),
                String::new(),
            );
        };
        let Some(route) = vh.route(&view) else {
            return (
                error_response(
                    StatusCode::NOT_FOUND,
                    &format!("no route of {} matches the request", vh.name),
                ),
                String::new(),
                String::new(),
            );
        };
        let (mut parts, body) = req.into_parts();
        // The application cannot speak for the mesh: the receiving sidecar sets this header
        // from our certificate.
        parts.headers.remove(&PEER_IDENTITY);
        // Nor choose how the other side talks to its application.
        parts.headers.remove(&LEGACY_APP_PROTOCOL);
        ensure_traceparent(&mut parts.headers);
        if let Some(client) = client_upgrade {
            drop(body);
            let (resp, cluster) = self
                .forwarder
                .upgrade(snap, route, Direction::Outbound, &host, parts, client)
                .await;
            return (resp, route.name.clone(), cluster);
        }
        let (resp, cluster) = self
            .forwarder
            .forward(snap, route, Direction::Outbound, &host, parts, body)
            .await;
        (resp, route.name.clone(), cluster)
    }
}
