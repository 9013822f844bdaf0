//! The contract between meshd's admin HTTP API and its clients (meshctl; the dashboard reads the
//! same JSON): every request and response body, as serde types. meshd's handlers answer with
//! these and meshctl reads them, so a field renamed on one side does not compile on the other.
//!
//! Serde only: no HTTP, database or gRPC crate in here. Times are unix seconds (`i64`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    pub rotation: serde_json::Value,
}
