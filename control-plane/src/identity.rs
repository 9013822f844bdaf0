//! The `Identity` gRPC service: a workload proves who it is (a join token, or its current mesh
//! certificate on the TLS connection), sends a CSR for exactly that identity, and gets a
//! short-lived certificate. Every issue and every refusal is audited.

use crate::ca::{Authority, SignError};
use crate::store::{
    AuditEntry, AuditOutcome, ConsumeOutcome, IssueRecord, IssuedCert, JoinTokenRecord, Store,
};
use crate::tls::PeerInfo;
use mesh_ca::SpiffeId;
use mesh_proto::v1::credential::Kind as CredentialKind;
use mesh_proto::v1::identity_server::Identity;
use mesh_proto::v1::{SignRequest, SignResponse};
use std::time::Duration;
use tonic::{Request, Response, Status};

pub use mesh_admin_api::NewJoinToken;

/// Why a join token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("generating a join token: {0}")]
    Generate(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Creates a join token for `identity`, valid for `ttl` and `uses` uses.
pub async fn create_join_token(
    store: &Store,
    identity: &SpiffeId,
    ttl: Duration,
    uses: u32,
    actor: &str,
) -> Result<NewJoinToken, JoinTokenError> {
    let new = mesh_ca::join_token::generate(identity)
        .map_err(|e| JoinTokenError::Generate(e.to_string()))?;
    let expires_at = now() + ttl.as_secs() as i64;
    store
        .create_join_token(&JoinTokenRecord {
            id: new.id.clone(),
            token_hash: new.hash.clone(),
            identity: identity.to_string(),
            expires_at,
            uses_remaining: uses,
            created_by: actor.to_string(),
        })
        .await?;
    store
        .audit(&AuditEntry {
            actor: actor.to_string(),
            action: "join_token.create".into(),
            target: new.id.clone(),
            outcome: AuditOutcome::Ok,
            detail: format!("identity {identity}, {uses} use(s), expires at {expires_at}"),
        })
        .await?;
    Ok(NewJoinToken {
        id: new.id,
        token: new.token,
        identity: identity.to_string(),
        expires_at,
        uses,
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The gRPC service.
#[derive(Clone)]
pub struct IdentityService {
    authority: Authority,
    store: Store,
    metrics: crate::metrics::Metrics,
    /// Checks Kubernetes ServiceAccount tokens, when meshd knows an API server.
    kubernetes: Option<crate::kubernetes::TokenReviewer>,
    recorder: Recorder,
}

/// Group commit: each signature queues its records (certificate, superseded mark, audit row)
/// and waits; one task writes whatever has queued in one transaction. Concurrent signatures
/// then share a commit instead of taking SQLite's write lock three times each (see
/// BENCHMARKS.md, "CA over gRPC").
#[derive(Clone)]
struct Recorder {
    queue: tokio::sync::mpsc::Sender<(
        IssueRecord,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    )>,
}

/// At most this many signatures share a transaction.
const GROUP_COMMIT_MAX: usize = 256;

impl Recorder {
    fn start(store: Store) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut batch: Vec<(
                IssueRecord,
                tokio::sync::oneshot::Sender<Result<(), String>>,
            )> = Vec::new();
            while rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
                let records: Vec<IssueRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
                match store.record_issues(&records).await {
                    Ok(()) => {
                        for (_, done) in batch.drain(..) {
                            let _ = done.send(Ok(()));
                        }
                    }
                    // One bad record must not fail the others: then one at a time.
                    Err(_) if batch.len() > 1 => {
                        for (r, done) in batch.drain(..) {
                            let result = store
                                .record_issues(std::slice::from_ref(&r))
                                .await
                                .map_err(|e| e.to_string());
                            let _ = done.send(result);
                        }
                    }
                    Err(e) => {
                        for (_, done) in batch.drain(..) {
                            let _ = done.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    async fn record(&self, record: IssueRecord) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queue
            .send((record, done))
            .await
            .map_err(|_| "the certificate recorder stopped".to_string())?;
        wait.await
            .map_err(|_| "the certificate recorder stopped".to_string())?
    }
}

impl IdentityService {
    pub fn new(
        authority: Authority,
        store: Store,
        metrics: crate::metrics::Metrics,
        kubernetes: Option<crate::kubernetes::TokenReviewer>,
    ) -> Self {
        Self {
            recorder: Recorder::start(store.clone()),
            authority,
            store,
            metrics,
            kubernetes,
        }
    }

    /// Establishes who the caller is. Err carries the status for the caller (vague) and the
    /// reason for the log and audit (precise).
    async fn prove(
        &self,
        request: &SignRequest,
        peer: Option<&PeerInfo>,
    ) -> Result<(SpiffeId, String), (Status, String)> {
        let vague = || Status::unauthenticated("credential refused");
        match request.credential.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(CredentialKind::JoinToken(token)) => {
                let outcome = self
                    .store
                    .consume_join_token(&mesh_ca::join_token::hash(token), now())
                    .await
                    .map_err(|e| (Status::unavailable("store unavailable"), e.to_string()))?;
                match outcome {
                    ConsumeOutcome::Accepted { id, identity } => {
                        let id_parsed = identity.parse().map_err(|e| {
                            (vague(), format!("join token {id}: stored identity {e}"))
                        })?;
                        Ok((id_parsed, format!("join-token:{id}")))
                    }
                    ConsumeOutcome::Unknown => Err((vague(), "unknown join token".into())),
                    ConsumeOutcome::Expired => Err((vague(), "expired join token".into())),
                    ConsumeOutcome::UsedUp => Err((vague(), "join token has no uses left".into())),
                    ConsumeOutcome::Revoked => Err((vague(), "revoked join token".into())),
                }
            }
            Some(CredentialKind::KubernetesServiceAccountToken(token)) => {
                let Some(reviewer) = &self.kubernetes else {
                    return Err((
                        Status::unauthenticated(
                            "Kubernetes ServiceAccount tokens are not accepted by this meshd (no Kubernetes API configured: --k8s-api-server); use a join token",
                        ),
                        "kubernetes token without a configured TokenReview".into(),
                    ));
                };
                match reviewer.review(token).await {
                    Ok((ns, sa)) => {
                        let id = SpiffeId::new(self.authority.trust_domain().clone(), &ns, &sa)
                            .map_err(|e| {
                                (
                                    vague(),
                                    format!("kubernetes service account {ns}/{sa}: {e}"),
                                )
                            })?;
                        Ok((id, format!("k8s:{ns}/{sa}")))
                    }
                    Err(e @ crate::kubernetes::ReviewError::Refused(_)) => {
                        Err((vague(), e.to_string()))
                    }
                    Err(e @ crate::kubernetes::ReviewError::Unavailable(_)) => Err((
                        Status::unavailable("cannot check the token right now"),
                        e.to_string(),
                    )),
                }
            }
            None => match peer.and_then(|p| p.identity.clone()) {
                Some(id) => Ok((id.clone(), format!("mtls:{id}"))),
                None => Err((
                    Status::unauthenticated(
                        "no credential: send a join token, or renew over a connection that presents your current mesh certificate",
                    ),
                    "no credential and no client certificate".into(),
                )),
            },
        }
    }

    async fn audit(&self, actor: &str, target: &str, outcome: AuditOutcome, detail: String) {
        let entry = AuditEntry {
            actor: actor.to_string(),
            action: "certificate.sign".into(),
            target: target.to_string(),
            outcome,
            detail,
        };
        if let Err(e) = self.store.audit(&entry).await {
            tracing::error!(error = %e, "writing the audit log");
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let remote = peer
            .as_ref()
            .map(|p| p.remote.to_string())
            .unwrap_or_default();
        let request = request.into_inner();

        let (proven, actor) = match self.prove(&request, peer.as_ref()).await {
            Ok(v) => v,
            Err((status, reason)) => {
                tracing::warn!(%remote, %reason, "certificate request refused");
                self.metrics.refusal("unauthenticated");
                self.audit(&remote, "", AuditOutcome::Denied, reason).await;
                return Err(status);
            }
        };

        let ttl = Duration::from_secs(request.requested_ttl_seconds);
        let issued = match self.authority.sign(&request.csr_pem, &proven, ttl) {
            Ok(issued) => issued,
            Err(e) => {
                let (status, reason) = match &e {
                    SignError::Csr(csr) if csr.asks_for_more() => (
                        Status::permission_denied(e.to_string()),
                        "permission_denied",
                    ),
                    SignError::Csr(_) => (Status::invalid_argument(e.to_string()), "invalid_csr"),
                    SignError::Ca(_) => (
                        Status::unavailable("the CA cannot sign right now"),
                        "ca_unavailable",
                    ),
                };
                tracing::warn!(%remote, identity = %proven, error = %e, "certificate request refused");
                self.metrics.refusal(reason);
                self.audit(
                    &actor,
                    &proven.to_string(),
                    AuditOutcome::Denied,
                    e.to_string(),
                )
                .await;
                return Err(status);
            }
        };

        let record = IssuedCert {
            serial_hex: issued.leaf.serial_hex.clone(),
            identity: proven.to_string(),
            issuer_fingerprint: issued.issuer_fingerprint.clone(),
            not_before: issued.leaf.not_before,
            not_after: issued.leaf.not_after,
            // A label, bounded like a DNS name; an oversized one is dropped, not stored.
            sidecar: (!request.sidecar_id.is_empty() && request.sidecar_id.len() <= 253)
                .then(|| request.sidecar_id.clone()),
            superseded_at: None,
        };
        // A renewal over mTLS: the certificate presented is no longer used by its holder.
        let renewed_with = if request.credential.is_none() {
            peer.as_ref().and_then(|p| p.cert_serial.clone())
        } else {
            None
        };
        let recorded = self
            .recorder
            .record(IssueRecord {
                cert: record.clone(),
                renewed_with,
                audit: AuditEntry {
                    actor: actor.clone(),
                    action: "certificate.sign".into(),
                    target: proven.to_string(),
                    outcome: AuditOutcome::Ok,
                    detail: format!("serial {} until {}", record.serial_hex, record.not_after),
                },
            })
            .await;
        if let Err(e) = recorded {
            // An unrecorded certificate would be invisible to CA rotation: do not hand it out.
            tracing::error!(error = %e, "recording an issued certificate");
            return Err(Status::unavailable(
                "the store cannot record the certificate right now",
            ));
        }
        self.metrics.certificate_issued();
        tracing::info!(identity = %proven, serial = %record.serial_hex, via = %actor, "certificate issued");
        Ok(Response::new(SignResponse {
            cert_chain_pem: issued.chain_pem,
            trust_bundle_pem: self.authority.bundle().to_pem(),
            expires_at_unix: issued.leaf.not_after,
        }))
    }
}

/// The `Identity` gRPC service with the refusals made before the handler runs audited too: a
/// request that does not decode (mesh-proto's codec answers it `INVALID_ARGUMENT`,
/// [`mesh_proto::codec::UNDECODABLE`]) never reaches [`Identity::sign`], but a caller
/// sending garbage is worth a line in the audit log like any other refusal.
#[derive(Clone)]
pub struct AuditedIdentity {
    inner: mesh_proto::v1::identity_server::IdentityServer<IdentityService>,
    service: IdentityService,
}

impl AuditedIdentity {
    pub fn new(service: IdentityService) -> Self {
        Self {
            inner: mesh_proto::v1::identity_server::IdentityServer::new(service.clone()),
            service,
        }
    }
}

impl tonic::server::NamedService for AuditedIdentity {
    const NAME: &'static str = <mesh_proto::v1::identity_server::IdentityServer<
        IdentityService,
    > as tonic::server::NamedService>::NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for AuditedIdentity
where
    mesh_proto::v1::identity_server::IdentityServer<IdentityService>: tonic::codegen::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    <mesh_proto::v1::identity_server::IdentityServer<IdentityService> as tonic::codegen::Service<
        http::Request<B>,
    >>::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let remote = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.remote.to_string())
            .unwrap_or_default();
        let service = self.service.clone();
        let response = tonic::codegen::Service::call(&mut self.inner, request);
        Box::pin(async move {
            let response = response.await?;
            let status = tonic::Status::from_header_map(response.headers());
            if let Some(status) = status.filter(|s| {
                s.code() == tonic::Code::InvalidArgument
                    && s.message().starts_with(mesh_proto::codec::UNDECODABLE)
            }) {
                tracing::warn!(%remote, reason = %status.message(), "certificate request refused");
                service.metrics.refusal("undecodable_request");
                service
                    .audit(
                        &remote,
                        "",
                        AuditOutcome::Denied,
                        status.message().to_string(),
                    )
                    .await;
            }
            Ok(response)
        })
    }
}
