//! A scripted sidecar: a real mTLS discovery stream to a real meshd, driven step by step by a
//! test (subscribe, receive, ACK, NACK, reconnect with the versions it holds). Also the base of
//! the fleet simulator.

use crate::meshd::Meshd;
use mesh_ca::tls::{CertSlot, TrustAnchors};
use mesh_proto::v1::discovery_client::DiscoveryClient;
use mesh_proto::v1::{Credential, DiscoveryRequest, DiscoveryResponse, Node, credential};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;

/// How long a test waits for one response.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(20);

/// A workload's credentials: its certificate (with key) and the trust anchors.
#[derive(Clone)]
pub struct Credentials {
    pub identity: String,
    pub cert: Arc<CertSlot>,
    pub anchors: Arc<TrustAnchors>,
}

/// What a certificate request needs of a meshd (cheap to clone into tasks).
#[derive(Clone)]
pub struct Issuer {
    admin_addr: String,
    admin_token: String,
    bundle_pem: String,
    grpc_url: String,
}

impl Issuer {
    pub fn of(meshd: &Meshd) -> Self {
        Self {
            admin_addr: meshd.admin_addr.clone(),
            admin_token: meshd.admin_token(),
            bundle_pem: meshd.bundle_pem(),
            grpc_url: meshd.grpc_url(),
        }
    }
}

impl Credentials {
    /// Gets a certificate for `identity` from `meshd` with a fresh join token.
    pub async fn issue(meshd: &Meshd, identity: &str) -> anyhow::Result<Self> {
        Self::issue_from(&Issuer::of(meshd), identity).await
    }

    /// [`Credentials::issue`] from an [`Issuer`].
    pub async fn issue_from(meshd: &Issuer, identity: &str) -> anyhow::Result<Self> {
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{}/api/v1/tokens", meshd.admin_addr))
            .bearer_auth(&meshd.admin_token)
            .json(&serde_json::json!({ "identity": identity, "ttl": "5m", "uses": 1 }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = created["token"].as_str().unwrap_or_default().to_string();
        let bundle = mesh_ca::TrustBundle::from_pem(&meshd.bundle_pem)?;
        let anchors = TrustAnchors::new(&bundle)?;
        let channel =
            mesh_client::channel(&meshd.grpc_url, anchors.clone(), CertSlot::new(None)).await?;
        let id: mesh_ca::SpiffeId = identity.parse()?;
        let (response, key) = mesh_client::request_certificate(
            channel,
            &id,
            Duration::ZERO,
            Some(Credential {
                kind: Some(credential::Kind::JoinToken(token)),
            }),
            "",
        )
        .await?;
        let certified = mesh_ca::tls::certified_key(&response.cert_chain_pem, &key)?;
        Ok(Self {
            identity: identity.to_string(),
            cert: CertSlot::new(Some(certified)),
            anchors,
        })
    }
}

/// One discovery stream.
pub struct ScriptedSidecar {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    /// What this sidecar holds, by type URL and name → version (as a real sidecar would).
    pub holds: BTreeMap<String, BTreeMap<String, String>>,
    pub node: Node,
}

impl ScriptedSidecar {
    /// Opens a stream with `credentials` (with `with_cert == false`, without a client cert).
    /// `holds` is what the sidecar already holds (after a reconnect): the first request (the
    /// TrustBundle subscription) and later subscriptions send it as initial_resource_versions.
    pub async fn open(
        meshd: &Meshd,
        credentials: &Credentials,
        with_cert: bool,
        node: Node,
        holds: BTreeMap<String, BTreeMap<String, String>>,
    ) -> anyhow::Result<Self> {
        let creds = if with_cert {
            credentials.clone()
        } else {
            Credentials {
                cert: CertSlot::new(None),
                ..credentials.clone()
            }
        };
        Self::open_url(&meshd.grpc_url(), &creds, node, holds).await
    }

    /// [`open`](Self::open) by URL, presenting `credentials`' certificate.
    pub async fn open_url(
        grpc_url: &str,
        credentials: &Credentials,
        node: Node,
        holds: BTreeMap<String, BTreeMap<String, String>>,
    ) -> anyhow::Result<Self> {
        let channel = mesh_client::channel(
            grpc_url,
            credentials.anchors.clone(),
            credentials.cert.clone(),
        )
        .await?;
        let (tx, rx) = mpsc::channel(64);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let first_type = mesh_proto::TRUST_BUNDLE_TYPE_URL;
        tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: first_type.into(),
            initial_resource_versions: holds.get(first_type).cloned().unwrap_or_default(),
            ..Default::default()
        })
        .await?;
        let responses = DiscoveryClient::new(channel)
            .stream(outbound)
            .await?
            .into_inner();
        Ok(Self {
            requests: tx,
            responses,
            holds,
            node,
        })
    }

    /// [`open`](Self::open) with a client certificate, then [`subscribe_all`](Self::subscribe_all).
    pub async fn open_all(meshd: &Meshd, creds: &Credentials, node: Node) -> anyhow::Result<Self> {
        let mut s = Self::open(meshd, creds, true, node, BTreeMap::new()).await?;
        s.subscribe_all().await?;
        Ok(s)
    }

    /// Subscribes to every type but the TrustBundle (which the first request subscribed to);
    /// answers nothing yet.
    pub async fn subscribe_all(&mut self) -> anyhow::Result<()> {
        for ty in &mesh_proto::ALL_TYPE_URLS[1..] {
            self.subscribe(ty).await?;
        }
        Ok(())
    }

    /// Subscribes (wildcard) to `type_url`, sending the versions held for it.
    pub async fn subscribe(&mut self, type_url: &str) -> anyhow::Result<()> {
        let initial = self.holds.get(type_url).cloned().unwrap_or_default();
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await
    }

    pub async fn send(&mut self, request: DiscoveryRequest) -> anyhow::Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| anyhow::anyhow!("stream closed"))
    }

    /// The next response, within [`RESPONSE_DEADLINE`]; applies it to `holds`.
    pub async fn recv(&mut self) -> anyhow::Result<DiscoveryResponse> {
        let next = tokio::time::timeout(RESPONSE_DEADLINE, self.responses.message())
            .await
            .map_err(|_| anyhow::anyhow!("no response within {RESPONSE_DEADLINE:?}"))??;
        let response = next.ok_or_else(|| anyhow::anyhow!("the server ended the stream"))?;
        let held = self.holds.entry(response.type_url.clone()).or_default();
        for r in &response.resources {
            held.insert(r.name.clone(), r.version.clone());
        }
        for name in &response.removed_resources {
            held.remove(name);
        }
        Ok(response)
    }

    /// The status the server ended the stream with (waits for it).
    pub async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(RESPONSE_DEADLINE, self.responses.message()).await {
            Ok(Err(status)) => status,
            Ok(Ok(Some(r))) => {
                tonic::Status::unknown(format!("unexpected response {}", r.type_url))
            }
            Ok(Ok(None)) => tonic::Status::ok("ended"),
            Err(_) => tonic::Status::deadline_exceeded("no status within the deadline"),
        }
    }

    pub async fn ack(&mut self, response: &DiscoveryResponse) -> anyhow::Result<()> {
        self.send(DiscoveryRequest::ack(
            response.type_url.clone(),
            response.nonce.clone(),
        ))
        .await
    }

    pub async fn nack(
        &mut self,
        response: &DiscoveryResponse,
        message: &str,
    ) -> anyhow::Result<()> {
        self.send(DiscoveryRequest::nack(
            response.type_url.clone(),
            response.nonce.clone(),
            message,
        ))
        .await
    }

    /// Receives until a response of `type_url` arrives, ACKing the others; returns it.
    pub async fn recv_type(&mut self, type_url: &str) -> anyhow::Result<DiscoveryResponse> {
        loop {
            let r = self.recv().await?;
            if r.type_url == type_url {
                return Ok(r);
            }
            self.ack(&r).await?;
        }
    }
}
