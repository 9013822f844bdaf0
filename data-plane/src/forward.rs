//! Sending one routed request upstream: backend cluster by weight, endpoint by the cluster's
//! load balancer, retries (with a buffered body), per-try and whole-request deadlines, circuit
//! breaking and outlier bookkeeping. Both directions use it: inbound sends to the local
//! application, outbound to other sidecars.

use crate::http_util::{Body, boxed, error_response, is_idempotent, strip_hop_by_hop};
use crate::metrics::Metrics;
use crate::resources::{Cluster, Protocol, RetryPolicy, Route, UpstreamTls};
use crate::upstream::{UpstreamError, Upstreams};
use crate::xds::store::Snapshot;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The largest request body kept in memory so that it can be sent again on a retry. A larger
/// (or unknown-length, streaming) body is sent once, without retries.
pub const MAX_RETRY_BUFFER: u64 = 64 * 1024;

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// To the local application at this address, in the version its cluster says it speaks
    /// (the Service port's `appProtocol`; HTTP/1.1 by default), whatever the caller spoke.
    Inbound { app: SocketAddr },
    /// To the chosen cluster's endpoints.
    Outbound,
}

pub struct Forwarder {
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
}

enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<ClientBody>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Buffered(b) => Some(crate::http_util::full(b.clone())),
            Self::Streaming(b) => b.take().map(boxed),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }
}

/// The client's request body, noting why it failed when it does (a malformed chunked framing,
/// a body cut short): the request then gets a 400 naming it, not the 502 of an upstream reset.
struct ClientBody {
    inner: Incoming,
    failed: Arc<std::sync::OnceLock<String>>,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &r {
            let _ = self.failed.set(crate::error_chain(e));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn bad_body(why: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("malformed request body: {why}"),
    )
}

/// Decrements a counter when dropped.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one try ended with.
enum Try {
    Response(Response<Body>),
    Failed(UpstreamError),
    TimedOut,
}

// === impl Forwarder ===

impl Forwarder {
    /// Sends the request along `route`; returns the response and the cluster it went to.
    pub async fn forward(
        &self,
        snap: &Snapshot,
        route: &Route,
        direction: Direction,
        authority: &str,
        parts: Parts,
        body: Incoming,
    ) -> (Response<Body>, String) {
        let start = Instant::now();
        let deadline = route.timeout.map(|t| start + t);
        let work = self.forward_inner(snap, route, direction, authority, parts, body, deadline);
        match deadline {
            None => work.await,
            Some(d) => match tokio::time::timeout_at(d.into(), work).await {
                Ok(r) => r,
                Err(_) => (
                    error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout"),
                    String::new(),
                ),
            },
        }
    }

    /// An HTTP/1.1 upgrade along `route`, on a connection of its own (see
    /// [`crate::upgrade`]); no retries.
    pub async fn upgrade(
        &self,
        snap: &Snapshot,
        route: &Route,
        direction: Direction,
        authority: &str,
        parts: Parts,
        client: hyper::upgrade::OnUpgrade,
    ) -> (Response<Body>, String) {
        use crate::upgrade::{forward, not_implemented};
        let cluster_name = route.pick_backend().to_string();
        let Some(cluster) = snap
            .clusters
            .get(&cluster_name)
            .filter(|c| c.protocol == Protocol::Http)
        else {
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cluster {cluster_name} is not known (yet)"),
                ),
                cluster_name,
            );
        };
        let plain_to = |addr: SocketAddr| async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))
        };
        let h2_app = || {
            not_implemented(
                "the upstream speaks HTTP/2 (its appProtocol): an HTTP/1.1 upgrade cannot reach it",
            )
        };
        let connect_error = |e: String| {
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream connect error ({}): {e}", cluster.name),
            )
        };
        let result = match direction {
            Direction::Inbound { app } => {
                if cluster.app_http2 {
                    return (h2_app(), cluster_name);
                }
                match plain_to(app).await {
                    Ok(tcp) => forward(tcp, &parts, authority, client, ()).await,
                    Err(e) => return (connect_error(e), cluster_name),
                }
            }
            Direction::Outbound => {
                let Some(i) = cluster.pick(&[], Instant::now()) else {
                    return (
                        error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("no healthy endpoints in cluster {}", cluster.name),
                        ),
                        cluster_name,
                    );
                };
                let endpoint = &cluster.endpoints[i];
                match cluster.upstream_tls {
                    UpstreamTls::Mutual => {
                        match self
                            .upstreams
                            .connect_upgrade(snap, cluster, endpoint)
                            .await
                        {
                            Ok((tls, open)) => forward(tls, &parts, authority, client, open).await,
                            Err(e) => return (connect_error(e.to_string()), cluster_name),
                        }
                    }
                    UpstreamTls::Disabled if cluster.app_http2 => return (h2_app(), cluster_name),
                    UpstreamTls::Disabled => match plain_to(endpoint.address).await {
                        Ok(tcp) => forward(tcp, &parts, authority, client, ()).await,
                        Err(e) => return (connect_error(e), cluster_name),
                    },
                }
            }
        };
        match result {
            Ok(resp) => (resp, cluster_name),
            Err(e) => (
                error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("upgrade failed ({}): {e}", cluster.name),
                ),
                cluster_name,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_inner(
        &self,
        snap: &Snapshot,
        route: &Route,
        direction: Direction,
        authority: &str,
        mut parts: Parts,
        body: Incoming,
        deadline: Option<Instant>,
    ) -> (Response<Body>, String) {
        let cluster_name = route.pick_backend().to_string();
        let Some(cluster) = snap
            .clusters
            .get(&cluster_name)
            .filter(|c| c.protocol == Protocol::Http)
        else {
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cluster {cluster_name} is not known (yet)"),
                ),
                cluster_name,
            );
        };
        if let Some(cb) = &cluster.circuit_breaker
            && cb.max_requests > 0
            && cluster.in_flight.load(Ordering::Relaxed) >= cb.max_requests as usize
        {
            self.metrics.overflow(&cluster.name);
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cluster {} is over its max_requests limit", cluster.name),
                ),
                cluster_name,
            );
        }
        let _cluster_load = InFlight::new(&cluster.in_flight);

        if let Some(coding) = crate::http_util::foreign_transfer_coding(&parts.headers) {
            return (
                error_response(
                    StatusCode::NOT_IMPLEMENTED,
                    &format!(
                        "transfer coding {coding:?} is not supported (only chunked); send it as \
                         Content-Encoding instead"
                    ),
                ),
                cluster_name,
            );
        }
        let failed = Arc::new(std::sync::OnceLock::new());
        let body = ClientBody {
            inner: body,
            failed: failed.clone(),
        };
        let retry = route.retry.clone().unwrap_or_default();
        let mut body = if retry.attempts > 0 {
            match buffer(body).await {
                Ok(b) => b,
                Err(why) => return (bad_body(&why), cluster_name),
            }
        } else {
            ReqBody::Streaming(Some(body))
        };
        let idempotent = is_idempotent(&parts.method);
        strip_hop_by_hop(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());

        let mut tried = Vec::new();
        let mut attempt = 0u32;
        loop {
            let Some(req_body) = body.take() else {
                return (
                    error_response(StatusCode::BAD_GATEWAY, "the request body was already sent"),
                    cluster_name,
                );
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return (
                    error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout"),
                    cluster_name,
                );
            }
            let outcome = match direction {
                Direction::Inbound { app } => {
                    let h2 = cluster.app_http2;
                    let req = plain_request(&parts, authority, app, &path, req_body, h2);
                    if h2 {
                        self.try_once(retry.per_try_timeout, self.upstreams.send_plain(req, h2))
                            .await
                    } else {
                        // HTTP/1.1 to the app: pooled and capped (--max-app-connections).
                        self.try_once(retry.per_try_timeout, self.upstreams.send_app(app, req))
                            .await
                    }
                }
                Direction::Outbound => {
                    let Some(i) = cluster.pick(&tried, now) else {
                        return (
                            error_response(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &format!("no healthy endpoints in cluster {}", cluster.name),
                            ),
                            cluster_name,
                        );
                    };
                    tried.push(i);
                    let endpoint = &cluster.endpoints[i];
                    let _load = InFlight::new(&endpoint.in_flight);
                    let outcome = match cluster.upstream_tls {
                        UpstreamTls::Mutual => {
                            let req = mesh_request(&parts, authority, &path, req_body);
                            let send = self.upstreams.send_mesh(snap, cluster, endpoint, req);
                            self.try_once(retry.per_try_timeout, send).await
                        }
                        UpstreamTls::Disabled => {
                            let h2 = cluster.app_http2;
                            let req = plain_request(
                                &parts,
                                authority,
                                endpoint.address,
                                &path,
                                req_body,
                                h2,
                            );
                            self.try_once(retry.per_try_timeout, self.upstreams.send_plain(req, h2))
                                .await
                        }
                    };
                    let failed = match &outcome {
                        Try::Response(r) => Some(r.status().is_server_error()),
                        // The endpoint was never tried: nothing to learn about its health.
                        Try::Failed(UpstreamError::Overflow(_)) => {
                            self.metrics.overflow(&cluster.name);
                            None
                        }
                        Try::Failed(UpstreamError::HeadersTooLarge { .. }) => {
                            self.metrics.header_list_too_large("outbound");
                            None
                        }
                        Try::Failed(_) | Try::TimedOut => Some(true),
                    };
                    if let Some(failed) = failed
                        && cluster.record(i, failed, Instant::now())
                    {
                        self.metrics.outlier_ejection(&cluster.name);
                    }
                    outcome
                }
            };

            let try_left = attempt < retry.attempts && body.replayable();
            if try_left && retries(&retry, &outcome, idempotent) {
                attempt += 1;
                self.metrics.retry(&cluster.name);
                tracing::debug!(cluster = %cluster.name, attempt, "retrying");
                continue;
            }
            // The client's own body broke the exchange: its fault, said as such.
            if let (Try::Failed(_), Some(why)) = (&outcome, failed.get()) {
                return (bad_body(why), cluster_name);
            }
            return (respond(outcome, cluster), cluster_name);
        }
    }
}

/// The retry decision: whether a try that ended in `outcome` is made again under the route's
/// `retry` policy, given whether the method is idempotent (a try is left). A request that may
/// have reached the upstream is retried only when it is idempotent; one that surely did not
/// (connect failure) always may be.
fn retries(retry: &RetryPolicy, outcome: &Try, idempotent: bool) -> bool {
    match outcome {
        Try::Response(r) => idempotent && retry.retry_status(r.status()),
        // Nothing reached the upstream: safe for any method.
        Try::Failed(UpstreamError::Connect(_)) => retry.on_connect_failure || retry.on_5xx,
        Try::Failed(UpstreamError::Reset(_)) => idempotent && (retry.on_reset || retry.on_5xx),
        // Retrying into a full cluster only adds load.
        Try::Failed(UpstreamError::Overflow(_)) => false,
        // Every endpoint would refuse them the same.
        Try::Failed(UpstreamError::HeadersTooLarge { .. }) => false,
        Try::TimedOut => idempotent,
    }
}

impl Forwarder {
    async fn try_once(
        &self,
        per_try: Option<Duration>,
        send: impl Future<Output = Result<Response<Body>, UpstreamError>>,
    ) -> Try {
        let result = match per_try {
            None => send.await,
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => return Try::TimedOut,
            },
        };
        match result {
            Ok(r) => Try::Response(r),
            Err(e) => Try::Failed(e),
        }
    }
}

fn respond(outcome: Try, cluster: &Cluster) -> Response<Body> {
    match outcome {
        Try::Response(r) => {
            if let Some(coding) = crate::http_util::foreign_transfer_coding(r.headers()) {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "the upstream answered with transfer coding {coding:?}, which cannot be \
                         forwarded (only chunked)"
                    ),
                );
            }
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // Our own connection to the client decides its version, not the upstream's.
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, boxed(body))
        }
        Try::Failed(UpstreamError::Connect(e)) => {
            tracing::debug!(cluster = %cluster.name, "upstream connect failure: {e}");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream connect error ({}): {e}", cluster.name),
            )
        }
        Try::Failed(UpstreamError::Reset(e)) => {
            tracing::debug!(cluster = %cluster.name, "upstream reset: {e}");
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("upstream reset ({}): {e}", cluster.name),
            )
        }
        Try::Failed(UpstreamError::Overflow(e)) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &e)
        }
        Try::Failed(e @ UpstreamError::HeadersTooLarge { .. }) => {
            error_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &e.to_string())
        }
        Try::TimedOut => error_response(StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout"),
    }
}

/// Keeps a small body in memory for retries; a large or streaming one is passed through. An
/// error is the client's body failing (malformed, or cut short).
async fn buffer(body: ClientBody) -> Result<ReqBody, String> {
    if body.is_end_stream() {
        return Ok(ReqBody::Buffered(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(n) if n <= MAX_RETRY_BUFFER => match body.collect().await {
            Ok(collected) => Ok(ReqBody::Buffered(collected.to_bytes())),
            Err(e) => Err(crate::error_chain(&e)),
        },
        _ => Ok(ReqBody::Streaming(Some(body))),
    }
}

/// An HTTP/2 request for the mesh hop: absolute URI (`:authority` is the original host),
/// no `Host` header.
fn mesh_request(parts: &Parts, authority: &str, path: &str, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().remove(http::header::HOST);
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
    req
}

/// A plain request to `addr`: HTTP/1.1 keeping the original `Host`, or HTTP/2 (where
/// `:authority` is `addr`, and a `Host` that differs from it is not allowed).
fn plain_request(
    parts: &Parts,
    authority: &str,
    addr: SocketAddr,
    path: &str,
    body: Body,
    h2: bool,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(http::header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        if let Ok(host) = http::HeaderValue::from_str(authority) {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Try {
        Try::Response(
            Response::builder()
                .status(code)
                .body(crate::http_util::empty())
                .unwrap_or_default(),
        )
    }

    #[test]
    fn the_retry_decision_table() {
        let none = RetryPolicy::default();
        let on_5xx = RetryPolicy {
            on_5xx: true,
            ..Default::default()
        };
        let gateway = RetryPolicy {
            on_gateway_error: true,
            ..Default::default()
        };
        let connect = RetryPolicy {
            on_connect_failure: true,
            ..Default::default()
        };
        let reset = RetryPolicy {
            on_reset: true,
            ..Default::default()
        };
        let connect_failed = || Try::Failed(UpstreamError::Connect("refused".into()));
        let was_reset = || Try::Failed(UpstreamError::Reset("reset".into()));
        // (policy, outcome, idempotent, retried)
        let cases: Vec<(&str, &RetryPolicy, Try, bool, bool)> = vec![
            ("2xx is never retried", &on_5xx, status(200), true, false),
            ("4xx is never retried", &on_5xx, status(404), true, false),
            ("5xx with on_5xx", &on_5xx, status(503), true, true),
            ("5xx of a POST", &on_5xx, status(503), false, false),
            ("5xx without a policy", &none, status(503), true, false),
            ("502 with gateway-error", &gateway, status(502), true, true),
            ("504 with gateway-error", &gateway, status(504), true, true),
            (
                "500 is no gateway error",
                &gateway,
                status(500),
                true,
                false,
            ),
            (
                "connect failure, POST too",
                &connect,
                connect_failed(),
                false,
                true,
            ),
            (
                "connect failure under on_5xx",
                &on_5xx,
                connect_failed(),
                false,
                true,
            ),
            (
                "connect failure, no policy",
                &none,
                connect_failed(),
                true,
                false,
            ),
            ("reset with on_reset", &reset, was_reset(), true, true),
            ("reset of a POST", &reset, was_reset(), false, false),
            ("reset under on_5xx", &on_5xx, was_reset(), true, true),
            ("timeout of a GET", &none, Try::TimedOut, true, true),
            ("timeout of a POST", &on_5xx, Try::TimedOut, false, false),
            (
                "overflow: a full cluster",
                &on_5xx,
                Try::Failed(UpstreamError::Overflow("full".into())),
                true,
                false,
            ),
            (
                "headers every endpoint refuses",
                &on_5xx,
                Try::Failed(UpstreamError::HeadersTooLarge {
                    size: 70_000,
                    limit: 61_440,
                }),
                true,
                false,
            ),
        ];
        for (what, policy, outcome, idempotent, want) in cases {
            assert_eq!(retries(policy, &outcome, idempotent), want, "{what}");
        }
    }
}
