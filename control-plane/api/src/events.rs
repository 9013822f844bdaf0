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

// --- `GET /api/v1/stats` and the `stats` event ----------------------------------------------

/// Rates over the last `window_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub window_seconds: f64,
    pub pushes_per_second: f64,
    pub nacks_per_second: f64,
    pub certificates_per_second: f64,
}

/// Push latency since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinceStart {
    pub count: f64,
    pub mean_seconds: Option<f64>,
}

/// Push latency over the last `window_seconds` (quantiles null without a new observation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushLatency {
    pub window_seconds: f64,
    pub count: f64,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub since_start: SinceStart,
}

/// One point of the charts: rates since the sample before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartPoint {
    /// Unix seconds, fractional.
    pub t: f64,
    pub pushes_per_second: f64,
    pub nacks_per_second: f64,
    pub certificates_per_second: f64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// `stats`: rates and latency now, and the newest chart point (all null before a sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentStats {
    pub rates: Option<Rates>,
    pub push_latency: Option<PushLatency>,
    pub point: Option<ChartPoint>,
}

/// The fleet's size and counts by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCounts {
    pub total: usize,
    pub counts: Counts,
}

/// `GET /api/v1/stats`: rates and latency now, the chart's history, and the fleet's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub rates: Option<Rates>,
    pub push_latency: Option<PushLatency>,
    /// Oldest first.
    pub series: Vec<ChartPoint>,
    pub sidecars: FleetCounts,
    pub interval_seconds: f64,
    pub at: f64,
}
