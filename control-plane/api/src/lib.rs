//! The contract between meshd's admin HTTP API and its clients (meshctl; the dashboard reads the
//! same JSON): every request and response body, as serde types. meshd's handlers answer with
//! these and meshctl reads them, so a field renamed on one side does not compile on the other.
//!
//! Serde only: no HTTP, database or gRPC crate in here. Times are unix seconds (`i64`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod events;
pub mod sidecars;
pub use sidecars::*;

/// Every error: `{"error": "..."}`, one line (a message about documents has one problem per
/// line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Every read (`GET`, `HEAD`), no change.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
}

// --- join tokens ---------------------------------------------------------------------------

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub identity: String,
    /// e.g. "10m"; default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
}

/// The answer to `POST /api/v1/tokens`: the secret is shown once and stored only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJoinToken {
    pub id: String,
    pub token: String,
    pub identity: String,
    pub expires_at: i64,
    pub uses: u32,
}

/// A stored join token, as listed (never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub identity: String,
    pub expires_at: i64,
    pub uses_remaining: u32,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<JoinToken>,
}

// --- audit ---------------------------------------------------------------------------------

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Ok,
    Denied,
    Error,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Grows with every entry; use it as `since_id` to page or tail.
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: AuditOutcome,
    pub detail: String,
}

/// `GET /api/v1/audit[?limit=&since_id=]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditRecord>,
}

// --- certificates --------------------------------------------------------------------------

/// What became of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertState {
    #[serde(rename = "in use")]
    InUse,
    #[serde(rename = "superseded")]
    Superseded,
    #[serde(rename = "untrusted")]
    Untrusted,
    #[serde(rename = "expired")]
    Expired,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::InUse => "in use",
            CertState::Superseded => "superseded",
            CertState::Untrusted => "untrusted",
            CertState::Expired => "expired",
        }
    }
}

/// One issued certificate. Hex values are lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub serial_hex: String,
    /// The SPIFFE ID in its URI SAN.
    pub identity: String,
    /// Fingerprint of the certificate of the CA that signed it.
    pub issuer_fingerprint: String,
    /// Validity, both ends inclusive.
    pub not_before: i64,
    pub not_after: i64,
    /// The sidecar it was issued to, when known.
    pub sidecar: Option<String>,
    /// When its holder renewed with it: from then on it is no longer in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<i64>,
    pub state: CertState,
}

/// `GET /api/v1/certificates[?identity=&valid_at=&expiring_within=&live=]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    pub certificates: Vec<Certificate>,
}

// --- the CA --------------------------------------------------------------------------------

/// A root of the trust bundle, as `GET /api/v1/ca/bundle` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRoot {
    pub fingerprint: String,
    pub subject: String,
    pub not_after: i64,
}

/// `GET /api/v1/ca/bundle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub pem: String,
    pub roots: Vec<BundleRoot>,
}

/// A CA certificate, as `GET /api/v1/ca` shows it (never a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCert {
    pub fingerprint: String,
    pub serial_hex: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub self_signed: bool,
}

/// A root of the trust bundle in `GET /api/v1/ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRoot {
    #[serde(flatten)]
    pub cert: CaCert,
    /// The root the signing certificate chains to.
    pub active: bool,
}

/// Counts by name, every name present (zeros included).
pub type Counts = BTreeMap<String, usize>;

/// `GET /api/v1/ca`: the CA at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaStatus {
    pub trust_domain: String,
    /// The certificate that signs workload certificates now.
    pub signing: CaCert,
    /// Every root of the trust bundle.
    pub roots: Vec<CaRoot>,
    pub leaf_ttl_seconds: u64,
    pub max_leaf_ttl_seconds: u64,
    /// `rotation.phase`.
    pub rotation_phase: String,
    /// The latest CA rotation, as `GET /api/v1/ca/rotation` shows it.
    pub rotation: RotationStatus,
}

/// How a CA rotation moves past its gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationMode {
    Automatic,
    Manual,
}

/// `POST /api/v1/ca/rotation`: starts a CA rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Wait for an operator (`POST /api/v1/ca/rotation/next`) at each gate.
    #[serde(default)]
    pub manual: bool,
    /// The stagger window of re-issues, e.g. "5m" (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The new CA to import (PEM chain, signing certificate first, and its PKCS#8 key);
    /// generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_key_pem: Option<String>,
}

/// Progress of a rotation's current phase, in sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// The latest CA rotation (`GET /api/v1/ca/rotation`, and the answer to its commands): only
/// `phase` (`idle`) and `driven_here` when there never was one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// `idle`, `prepare`, `switch`, `finalize`, `done`, `rolling-back`, `rolled-back`.
    pub phase: String,
    /// Whether this replica drives rotations (holds the lease).
    pub driven_here: bool,
    #[serde(flatten)]
    pub rotation: Option<Rotation>,
}

impl RotationStatus {
    pub const IDLE: &str = "idle";

    /// Done, rolled back, or never started: nothing moves any more.
    pub fn is_over(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "rolled-back" | "idle")
    }
}

/// A rotation's details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// Grows with every rotation.
    pub generation: u64,
    pub mode: RotationMode,
    pub paused: bool,
    /// Fingerprints of the old and the new root, and signing certificate.
    pub old_root: String,
    pub new_root: String,
    pub old_signer: String,
    pub new_signer: String,
    pub window_secs: u64,
    pub phase_started_at: i64,
    pub reissue_before: i64,
    /// What the current phase waits for (empty once over).
    pub waiting_for: String,
    /// The current phase's progress (null once over).
    pub progress: Option<Progress>,
    /// A few sidecars not done with the current phase.
    pub stragglers: Vec<String>,
    /// Live certificates of the CA being retired that no newer one superseded.
    pub retiring_certificates_in_use: u64,
    pub started_by: String,
    pub started_at: i64,
}

// --- TLS -----------------------------------------------------------------------------------

/// Whom a TlsPolicy selects, as `GET /api/v1/tls` shows it (`null` is every sidecar of its
/// namespace, or of the mesh for the root namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TlsSelector {
    /// One service's workloads: `{"service": "reviews"}`.
    Service { service: String },
    /// Workloads with these labels.
    MatchLabels(BTreeMap<String, String>),
}

/// One TlsPolicy, its settings and whom it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPolicyStatus {
    pub namespace: String,
    pub name: String,
    pub selector: Option<TlsSelector>,
    pub min_version: String,
    pub max_version: String,
    pub cipher_suites: Vec<String>,
    pub key_exchange_groups: Vec<String>,
    /// `STRICT` or `PERMISSIVE`.
    pub inbound_mode: String,
    pub drain_grace_period_secs: u64,
    /// The stage of a percentage rollout, if it is one.
    pub rollout_percent: Option<u8>,
    /// The connected sidecars it is in effect on.
    pub covers: usize,
    /// Of those, the ones that ACKed everything sent to them.
    pub acked: usize,
    /// The sidecars its selector picks before its share is applied…
    pub selected: usize,
    /// …and their rollout buckets, ascending (a stage of P % covers those below P).
    pub selected_buckets: Vec<u8>,
}

/// A change pushed through an interim policy that accepts the old and new settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsBridge {
    pub waiting_sidecars: usize,
    pub for_secs: u64,
}

/// What the fleet negotiates, summed over the sidecars' latest reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiatedSum {
    pub direction: String,
    pub version: String,
    pub cipher_suite: String,
    pub group: String,
    pub open_connections: u64,
    pub handshakes: u64,
    /// How many sidecars reported this line.
    pub sidecars: u64,
}

/// `GET /api/v1/tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInventory {
    pub policies: Vec<TlsPolicyStatus>,
    pub bridge: Option<TlsBridge>,
    /// Connected sidecars.
    pub sidecars: usize,
    /// Of those, the ones that reported what they negotiate.
    pub reporting: usize,
    pub negotiated: Vec<NegotiatedSum>,
}

// --- forced re-issue -----------------------------------------------------------------------

/// `POST /api/v1/reissue`: exactly one of `all`, `namespace`, `workload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReissueRequest {
    #[serde(default)]
    pub all: bool,
    pub namespace: Option<String>,
    /// `namespace/service`.
    pub workload: Option<String>,
    /// The stagger window, e.g. "30s" (default 1m).
    pub window: Option<String>,
    pub reason: Option<String>,
}

/// Which workloads a re-issue directive is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReissueTarget {
    All,
    Namespace(String),
    /// A service's workloads.
    Workload {
        namespace: String,
        service: String,
    },
}

impl ReissueTarget {
    /// Whether the workloads of `service` in `namespace` are targeted.
    pub fn matches(&self, namespace: &str, service: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(ns) => ns == namespace,
            Self::Workload {
                namespace: ns,
                service: svc,
            } => ns == namespace && svc == service,
        }
    }
}

/// "Re-issue your certificate": forced re-issue (after a key compromise) or a CA rotation.
/// Stored (as JSON) before it is put in force, pushed as an IdentityDirective, shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Never reused.
    pub generation: u64,
    pub target: ReissueTarget,
    /// Re-issue before this instant; each sidecar picks a moment in the window.
    pub reissue_before: i64,
    /// A certificate whose notBefore is at or after this already satisfies the directive.
    pub issued_before: i64,
    pub reason: String,
}

/// A directive and how far the connected sidecars it concerns are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReissueProgress {
    pub directive: Directive,
    /// Connected sidecars it concerns.
    pub total: usize,
    /// Of those, the ones that hold a certificate that satisfies it.
    pub done: usize,
    /// A few of the others.
    pub stragglers: Vec<String>,
}

/// `GET /api/v1/reissue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReissueList {
    pub directives: Vec<ReissueProgress>,
}

// --- documents -----------------------------------------------------------------------------

/// Which document: its kind (`HTTPRoute`), namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What a change did to one document (kubectl's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentOutcome {
    /// It did not exist: stored under a new revision.
    Created,
    /// It existed with another body: stored under a new revision.
    Configured,
    /// It existed with exactly this body: nothing written.
    Unchanged,
    Deleted,
}

impl DocumentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

/// One document of `POST /api/v1/documents`, after it was stored (also the answer to a
/// delete, `outcome` `deleted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    #[serde(flatten)]
    pub key: DocumentKey,
    /// The document's revision now.
    pub revision: i64,
    pub outcome: DocumentOutcome,
}

/// `POST /api/v1/documents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResults {
    pub results: Vec<Applied>,
}

/// One document of a dry run: what an apply would do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    #[serde(flatten)]
    pub key: DocumentKey,
    /// The revision stored now (null when it would be created).
    pub revision: Option<i64>,
    pub outcome: DocumentOutcome,
    /// A unified diff of the canonical YAML, stored → applied (null when unchanged).
    pub diff: Option<String>,
}

/// `POST /api/v1/documents?dryRun=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResults {
    pub dry_run: bool,
    pub results: Vec<Planned>,
}

/// A stored document, its body as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDocument {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The revision of its last change.
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The document (`apiVersion`, `kind`, `metadata`, `spec`).
    pub document: serde_json::Value,
}

/// `GET /api/v1/documents[?kind=&namespace=]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentList {
    pub documents: Vec<StoredDocument>,
    /// The store's revision when the list was read.
    pub revision: i64,
}

/// One revision of a document's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionEntry {
    pub revision: i64,
    /// `apply`, `delete`, `rollback`.
    pub op: String,
    pub actor: String,
    pub at: i64,
    /// The document after the change; null for a delete.
    pub document: Option<serde_json::Value>,
}

/// `GET /api/v1/documents/{kind}/{namespace}/{name}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(flatten)]
    pub key: DocumentKey,
    pub revisions: Vec<RevisionEntry>,
}

/// `POST /api/v1/documents/{kind}/{namespace}/{name}/rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub revision: i64,
}

/// The answer to a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    #[serde(flatten)]
    pub applied: Applied,
    pub rolled_back_to: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_idle_rotation_is_its_phase_alone_and_reads_back() {
        let idle = RotationStatus {
            phase: RotationStatus::IDLE.into(),
            driven_here: true,
            rotation: None,
        };
        let v = serde_json::to_value(&idle).unwrap();
        assert_eq!(v, json!({"phase": "idle", "driven_here": true}));
        assert_eq!(serde_json::from_value::<RotationStatus>(v).unwrap(), idle);
    }

    #[test]
    fn a_sidecar_is_its_status_with_state_and_certificate_side_by_side() {
        let v = json!({
            "id": "web-1", "identity": "spiffe://cluster.local/ns/a/sa/web", "namespace": "a",
            "service": "web", "workload": "web-1", "inbound_address": "127.0.0.1:1",
            "admin_address": "127.0.0.1:2", "proxy_version": "0.1.0", "labels": {"app": "web"},
            "rollout_bucket": 7, "remote": "127.0.0.1:3", "control_plane": "r1",
            "connected_at": 1, "last_seen": 2,
            "types": [{"type_url": "type.mesh.v1/Cluster", "state": "NACKED", "sent_version": "v",
                       "acked_version": "", "last_nonce": "n", "nack": "bad"}],
            "tls": [], "state": "NACKED", "cert_serial": null, "cert_expires_at": null,
        });
        let s: Sidecar = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.state, SidecarState::of(&s.status.types));
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }
}
