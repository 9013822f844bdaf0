//! The discovery server: per-scope snapshots, one delta stream per sidecar, and the status of
//! every (sidecar, type) for `meshctl status` and the dashboard.

pub mod snapshot;
pub mod stream;
