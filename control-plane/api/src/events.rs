//! `GET /api/v1/events`: the live feed the dashboard follows (server-sent events), each event's
//! data one of these as JSON.

use crate::{Counts, Role, Sidecar};
use serde::{Deserialize, Serialize};

/// `hello`: the first event of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    /// How often the feed ticks.
    pub interval_seconds: f64,
    /// Unix seconds, fractional.
    pub at: f64,
}

/// `sidecars`: what changed in the fleet since the last tick, or "fetch the list again".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SidecarsEvent {
    /// Too much changed (or nothing is known of what the watcher holds): fetch the list again.
    Resync { resync: bool, changed: u64 },
    /// The sidecars that changed or came, and the ids of those that left.
    Delta {
        upserted: Vec<Sidecar>,
        removed: Vec<String>,
    },
}

/// One NACK in force, in a [`FleetSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub id: String,
    pub type_url: String,
    pub nack: Option<String>,
}

/// `summary`: the fleet's counts and (a few of) the NACKs in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub total: usize,
    pub counts: Counts,
    pub nacks: Vec<Nack>,
    /// Every NACKed (sidecar, type), listed or not.
    pub nacked_types: usize,
    /// When it was sent, unix seconds, fractional (absent where it is compared with the previous one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<f64>,
}
