//! `/api/v1/sidecars`: the connected sidecars, their sync state per type, and what one
//! sidecar's scope holds.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Sync state of one (sidecar, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    Synced,
    Stale,
    Nacked,
}

/// What the server knows of one type on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    pub type_url: String,
    pub state: SyncState,
    /// The type version of the newest response sent (a hash of names and versions).
    pub sent_version: String,
    /// The type version of the newest response ACKed.
    pub acked_version: String,
    pub last_nonce: String,
    /// The error text of the latest NACK, while the type is NACKED.
    pub nack: Option<String>,
}

/// One line of a sidecar's TLS report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiatedTls {
    pub direction: String,
    pub version: String,
    pub cipher_suite: String,
    pub group: String,
    pub open_connections: u64,
    pub handshakes: u64,
}

/// One connected sidecar, as its stream knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarStatus {
    pub id: String,
    pub identity: String,
    pub namespace: String,
    pub service: String,
    pub workload: String,
    pub inbound_address: String,
    /// Where its admin endpoint listens (`/ready`, `/metrics`), as it says.
    pub admin_address: String,
    pub proxy_version: String,
    pub labels: BTreeMap<String, String>,
    /// Its place in percentage rollouts (0–99): a rollout of P % includes it when this is below P.
    pub rollout_bucket: u8,
    pub remote: String,
    /// The meshd replica the stream is on.
    pub control_plane: String,
    pub connected_at: i64,
    pub last_seen: i64,
    pub types: Vec<TypeStatus>,
    /// What its TLS connections negotiated, from its latest report.
    pub tls: Vec<NegotiatedTls>,
}

/// A sidecar's sync state as a whole: the worst of its types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SidecarState {
    /// Every type ACKed at its newest version.
    Synced,
    /// Something sent (or about to be) and not ACKed yet.
    Stale,
    /// A type's newest response was rejected; its NACK text is in `types`.
    Nacked,
    /// Connected, not subscribed to anything yet.
    Connecting,
}

impl SidecarState {
    pub const ALL: [SidecarState; 4] = [
        SidecarState::Synced,
        SidecarState::Stale,
        SidecarState::Nacked,
        SidecarState::Connecting,
    ];

    /// The worst state of `types` (none: connecting).
    pub fn of(types: &[TypeStatus]) -> Self {
        if types.is_empty() {
            SidecarState::Connecting
        } else if types.iter().any(|t| t.state == SyncState::Nacked) {
            SidecarState::Nacked
        } else if types.iter().any(|t| t.state != SyncState::Synced) {
            SidecarState::Stale
        } else {
            SidecarState::Synced
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SidecarState::Synced => "SYNCED",
            SidecarState::Stale => "STALE",
            SidecarState::Nacked => "NACKED",
            SidecarState::Connecting => "CONNECTING",
        }
    }

    /// Case-insensitive, surrounding blanks ignored.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

/// A sidecar as the API shows it (`GET /api/v1/sidecars/{id}`, an entry of the list): its
/// status, its state as a whole and the certificate its identity holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    #[serde(flatten)]
    pub status: SidecarStatus,
    pub state: SidecarState,
    /// The serial of the newest certificate in use for its identity.
    pub cert_serial: Option<String>,
    pub cert_expires_at: Option<i64>,
}

/// `GET /api/v1/sidecars[?offset=&limit=&q=&state=&namespace=]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarList {
    pub sidecars: Vec<Sidecar>,
    /// How many sidecars the other live replicas hold (this list is this replica's).
    pub elsewhere: u64,
    /// Connected here.
    pub total: usize,
    /// After the filters.
    pub matched: usize,
    pub offset: usize,
    pub limit: Option<usize>,
    /// Connected sidecars by state (every state, zeros included), before the filters.
    pub counts: super::Counts,
}

/// One resource of a sidecar's scope, its body as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigResource {
    pub name: String,
    pub version: String,
    pub body: serde_json::Value,
}

/// `GET /api/v1/sidecars/{id}/config`: the resources by type URL, and its sync state per type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarConfig {
    pub id: String,
    pub resources: BTreeMap<String, Vec<ConfigResource>>,
    pub types: Vec<TypeStatus>,
}
