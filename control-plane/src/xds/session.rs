//! One sidecar's discovery stream (and its periodic report): the identity from its client
//! certificate, the scope from its `Node`, then requests and snapshots fed to the I/O-free
//! [`StreamState`] until the stream ends, is replaced, or meshd shuts down.

use super::fleet::{NegotiatedTls, SidecarStatus};
use super::snapshot::Snapshot;
use super::stream::StreamState;
use super::view::ScopeKey;
use super::{Xds, now};
use crate::tls::PeerInfo;
use mesh_ca::SpiffeId;
use mesh_proto::v1::discovery_server::Discovery;
use mesh_proto::v1::{DiscoveryRequest, DiscoveryResponse, ReportResponse, SidecarReport};
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most TLS lines a report may hold.
const MAX_REPORT_LINES: usize = 256;

/// A stream's responses on their way to tonic. Boxed in the channel: the channel allocates its
/// slots in blocks of 32, and a `Result<DiscoveryResponse, Status>` is large (tonic's `Status`
/// carries a header map), which cost every stream ~2.7 KiB for an almost always empty queue.
pub struct Outbox(tokio::sync::mpsc::Sender<Box<Result<DiscoveryResponse, Status>>>);

impl Outbox {
    async fn send(&self, item: Result<DiscoveryResponse, Status>) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }
}

/// The receiving end of an [`Outbox`], as tonic's response stream.
pub struct Responses(
    tokio_stream::wrappers::ReceiverStream<Box<Result<DiscoveryResponse, Status>>>,
);

impl tokio_stream::Stream for Responses {
    type Item = Result<DiscoveryResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|b| *b))
    }
}

// === impl Xds (session) ===

impl Xds {
    async fn run_stream(
        self,
        peer: PeerInfo,
        identity: SpiffeId,
        mut requests: Streaming<DiscoveryRequest>,
        tx: Outbox,
    ) {
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {
                let _ = tx
                    .send(Err(Status::invalid_argument("no first request within 30s")))
                    .await;
                return;
            }
        };
        let Some(node) = first.node.clone() else {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "the first request must carry node",
                )))
                .await;
            return;
        };
        if !node.namespace.is_empty() && node.namespace != identity.namespace() {
            let _ = tx
                .send(Err(Status::permission_denied(format!(
                    "node namespace {:?} contradicts the certificate's identity {identity}",
                    node.namespace
                ))))
                .await;
            return;
        }
        let id = if node.id.is_empty() {
            format!("{identity}@{}", peer.remote)
        } else {
            node.id.clone()
        };
        let mut labels = node.labels.clone();
        if !node.service.is_empty() {
            labels
                .entry("app".into())
                .or_insert_with(|| node.service.clone());
        }
        let scope = ScopeKey::of(
            &self.mesh(),
            &id,
            identity.namespace(),
            &node.service,
            &labels,
        );
        let status = SidecarStatus {
            id: id.clone(),
            identity: identity.to_string(),
            namespace: identity.namespace().to_string(),
            service: node.service.clone(),
            workload: node.workload.clone(),
            inbound_address: node.inbound_address.clone(),
            admin_address: node.admin_address.clone(),
            proxy_version: node.proxy_version.clone(),
            labels,
            rollout_bucket: crate::model::rollout_bucket(&id),
            remote: peer.remote.to_string(),
            control_plane: self.replica().to_string(),
            connected_at: now(),
            last_seen: now(),
            types: Vec::new(),
            tls: Vec::new(),
        };
        tracing::info!(sidecar = %id, %identity, remote = %peer.remote, "sidecar connected");
        // Registered first, so that the scope's first snapshot already has this sidecar as an
        // endpoint of its own service.
        let registered = self.inner.fleet.register(status, scope.clone());
        self.mark_changed();
        let (generation, replaced, mut rescoped) = (
            registered.generation,
            registered.replaced,
            registered.rescoped,
        );
        let fleet = &self.inner.fleet;
        let mut snapshots = self.scope(&scope);
        let mut state = StreamState::new(self.inner.control_plane.clone());
        let mut shutdown = self.inner.shutdown.clone();

        let mut next = Some(first);
        let end: Result<(), Status> = loop {
            if let Some(request) = next.take() {
                let snapshot = snapshots.borrow().clone();
                match state.on_request(&request, &snapshot) {
                    Ok(outcome) => {
                        for (_, latency) in &outcome.acked {
                            self.inner.metrics.push_latency(latency.as_secs_f64());
                        }
                        for (ty, error) in &outcome.nacked {
                            tracing::warn!(sidecar = %id, type_url = ty.type_url(), %error, "NACK");
                            self.inner.metrics.nacked(ty.type_url());
                        }
                        if !self.send_all(&tx, outcome.responses).await {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(Status::invalid_argument(e.0)),
                }
                fleet.update_status(&id, generation, &state);
                continue;
            }
            tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(request)) => next = Some(request),
                    Ok(None) => break Ok(()),
                    Err(status) => {
                        tracing::debug!(error = %status, "stream ended");
                        break Ok(());
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break Err(Status::unavailable("scope closed"));
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if !self.push(&tx, &mut state, &snapshot).await {
                        break Ok(());
                    }
                    fleet.update_status(&id, generation, &state);
                }
                changed = rescoped.changed() => {
                    if changed.is_err() {
                        break Err(Status::aborted("replaced by a newer stream from the same sidecar"));
                    }
                    let key = rescoped.borrow_and_update().clone();
                    snapshots = self.scope(&key);
                    let snapshot = snapshots.borrow_and_update().clone();
                    if !self.push(&tx, &mut state, &snapshot).await {
                        break Ok(());
                    }
                    fleet.update_status(&id, generation, &state);
                }
                _ = replaced.notified() => break Err(Status::aborted("replaced by a newer stream from the same sidecar")),
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break Err(Status::unavailable("meshd is shutting down; reconnect to any replica")),
            }
        };
        if let Err(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        if fleet.deregister(&id, generation) {
            self.mark_changed();
        }
        tracing::info!(sidecar = %id, "sidecar disconnected");
    }

    /// Sends the sidecar what `snapshot` changes for it; false when the stream is gone.
    async fn push(&self, tx: &Outbox, state: &mut StreamState, snapshot: &Snapshot) -> bool {
        let _permit = self.inner.permits.acquire().await;
        let responses = state.on_snapshot(snapshot);
        self.send_all(tx, responses).await
    }

    async fn send_all(&self, tx: &Outbox, responses: Vec<DiscoveryResponse>) -> bool {
        for response in responses {
            self.inner.metrics.pushed(&response.type_url);
            if tx.send(Ok(response)).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[tonic::async_trait]
impl Discovery for Xds {
    type StreamStream = Responses;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let Some((peer, identity)) = peer.and_then(|p| p.identity.clone().map(|id| (p, id))) else {
            self.inner
                .metrics
                .refusal("discovery_without_client_certificate");
            return Err(Status::unauthenticated(
                "the discovery stream needs a mesh client certificate (mTLS)",
            ));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(
            self.clone()
                .run_stream(peer, identity, request.into_inner(), Outbox(tx)),
        );
        Ok(Response::new(Responses(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        request: Request<SidecarReport>,
    ) -> Result<Response<ReportResponse>, Status> {
        let identity = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| Status::unauthenticated("a report needs a mesh client certificate"))?;
        let report = request.into_inner();
        if report.tls.len() > MAX_REPORT_LINES {
            return Err(Status::invalid_argument(format!(
                "a report holds at most {MAX_REPORT_LINES} TLS lines"
            )));
        }
        let tls = report
            .tls
            .into_iter()
            .map(|t| NegotiatedTls {
                direction: t.direction,
                version: t.version,
                cipher_suite: t.cipher_suite,
                group: t.group,
                open_connections: t.open_connections,
                handshakes: t.handshakes,
            })
            .collect();
        if !self
            .inner
            .fleet
            .set_tls(&report.sidecar_id, &identity.to_string(), tls)
        {
            return Err(Status::not_found(format!(
                "no discovery stream of {identity} with sidecar id {:?} on this replica",
                report.sidecar_id
            )));
        }
        Ok(Response::new(ReportResponse {}))
    }
}
