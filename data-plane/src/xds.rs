//! The discovery client (discovery.proto): one mTLS stream to one meshd, every type on it;
//! each response handled by the [`store`], then ACKed or NACKed by nonce. When the stream ends
//! the sidecar keeps serving its last good configuration and reconnects, with exponential
//! backoff and full jitter, to the next `--control-plane`, sending the versions it holds so that
//! only differences come back.

pub mod store;

use crate::backoff::Backoff;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use anyhow::Context;
use mesh_proto::ResourceType;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use mesh_proto::v1::{DiscoveryRequest, DiscoveryResponse, Node};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use store::Store;
use tokio::sync::mpsc;

pub struct XdsClient {
    pub control_planes: Vec<String>,
    pub node: Node,
    pub identity: Arc<Identity>,
    pub store: Arc<Store>,
    pub readiness: Arc<Readiness>,
    pub metrics: Metrics,
    pub state_dir: Option<PathBuf>,
    /// How often to report the negotiated TLS inventory while the stream is up.
    pub report_interval: std::time::Duration,
}

/// Aborts a task when dropped (the reporter lives as long as its stream).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the negotiated TLS inventory on the stream's connection every `interval`.
async fn report_loop(
    channel: tonic::transport::Channel,
    sidecar_id: String,
    metrics: Metrics,
    interval: std::time::Duration,
) {
    let mut client = DiscoveryClient::new(channel);
    loop {
        let tls = metrics
            .tls_inventory()
            .into_iter()
            .map(|(l, c)| mesh_proto::v1::NegotiatedTls {
                direction: l.direction.to_string(),
                version: l.version,
                cipher_suite: l.cipher_suite,
                group: l.group,
                open_connections: c.open,
                handshakes: c.handshakes,
            })
            .collect();
        let report = mesh_proto::v1::SidecarReport {
            sidecar_id: sidecar_id.clone(),
            tls,
        };
        if let Err(status) = client.report(report).await {
            tracing::debug!(code = ?status.code(), "TLS report: {}", status.message());
        }
        tokio::time::sleep(interval).await;
    }
}

/// How a stream ended.
enum Ended {
    /// It delivered at least one response: the next connect starts from the base delay.
    AfterResponses(String),
    Early(String),
}

// === impl XdsClient ===

impl XdsClient {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        self.identity.wait_for_cert().await;
        let mut backoff = Backoff::control_plane();
        let mut i = fastrand::usize(..self.control_planes.len());
        loop {
            let url = self.control_planes[i % self.control_planes.len()].clone();
            i += 1;
            let ended = self.stream(&url).await;
            self.metrics.control_plane_connected(false);
            let reason = match ended {
                Ended::AfterResponses(reason) => {
                    backoff.reset();
                    reason
                }
                Ended::Early(reason) => reason,
            };
            let delay = backoff.next_delay();
            tracing::warn!(%url, retry_in = ?delay, "discovery stream ended: {reason}");
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream(&self, url: &str) -> Ended {
        let channel = match mesh_client::channel(
            url,
            self.identity.anchors.clone(),
            self.identity.cert.clone(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return Ended::Early(e.to_string()),
        };
        let (tx, rx) = mpsc::channel(32);
        for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
            let first = DiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: ty.type_url().into(),
                initial_resource_versions: self.store.versions(ty),
                ..Default::default()
            };
            // The channel has room for all eight.
            let _ = tx.try_send(first);
        }
        let report_channel = channel.clone();
        let mut responses = match DiscoveryClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Ended::Early(format!("{:?}: {}", status.code(), status.message()));
            }
        };
        self.metrics.control_plane_connected(true);
        tracing::info!(%url, node = %self.node.id, "discovery stream open");
        let _reporter = AbortOnDrop(tokio::spawn(report_loop(
            report_channel,
            self.node.id.clone(),
            self.metrics.clone(),
            self.report_interval,
        )));
        let mut got_any = false;
        loop {
            let response = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return ended(got_any, "the server closed the stream".into()),
                Err(status) => {
                    return ended(
                        got_any,
                        format!("{:?}: {}", status.code(), status.message()),
                    );
                }
            };
            got_any = true;
            let answer = self.handle(&response);
            if tx.send(answer).await.is_err() {
                return ended(got_any, "the request stream closed".into());
            }
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle(&self, response: &DiscoveryResponse) -> DiscoveryRequest {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            return DiscoveryRequest::nack(
                response.type_url.clone(),
                response.nonce.clone(),
                format!("{}: unknown type URL", response.type_url),
            );
        };
        let errors = self
            .store
            .apply(ty, &response.resources, &response.removed_resources);
        self.metrics.config_update(
            ty,
            response.resources.len(),
            errors.is_empty(),
            self.store.count(ty),
        );
        self.save(ty);
        if errors.is_empty() {
            self.readiness.acked(ty);
            tracing::debug!(r#type = %ty, nonce = %response.nonce,
                resources = response.resources.len(), removed = response.removed_resources.len(), "ACK");
            DiscoveryRequest::ack(response.type_url.clone(), response.nonce.clone())
        } else {
            let message = errors.join("\n");
            tracing::warn!(r#type = %ty, nonce = %response.nonce, "NACK: {message}");
            DiscoveryRequest::nack(response.type_url.clone(), response.nonce.clone(), message)
        }
    }

    fn config_dir(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join("config"))
    }

    /// Writes the held resources of `ty` to the state directory.
    fn save(&self, ty: ResourceType) {
        let Some(dir) = self.config_dir() else {
            return;
        };
        let saved = DiscoveryResponse {
            type_url: ty.type_url().into(),
            resources: self.store.raw_of(ty),
            ..Default::default()
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            crate::identity::write_file(
                &dir.join(format!("{}.pb", ty.name())),
                &saved.encode_to_vec(),
                0o600,
            )
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %dir.display(), "cannot save the configuration: {e}");
        }
    }

    /// Loads the last good configuration from the state directory, before any stream: a
    /// sidecar restarted while meshd is down serves again. Each restored type counts as ACKed.
    pub fn restore(&self) -> anyhow::Result<usize> {
        let Some(dir) = self.config_dir() else {
            return Ok(0);
        };
        let mut restored = 0;
        for ty in ResourceType::ALL {
            let path = dir.join(format!("{}.pb", ty.name()));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| path.display().to_string()),
            };
            let saved = DiscoveryResponse::decode(bytes.as_slice())
                .with_context(|| path.display().to_string())?;
            let errors = self.store.apply(ty, &saved.resources, &[]);
            if !errors.is_empty() {
                tracing::warn!(r#type = %ty, "stored configuration partly rejected: {}", errors.join("; "));
            }
            self.readiness.acked(ty);
            restored += 1;
        }
        Ok(restored)
    }
}

fn ended(got_any: bool, reason: String) -> Ended {
    if got_any {
        Ended::AfterResponses(reason)
    } else {
        Ended::Early(reason)
    }
}
