//! Support code for the end-to-end tests: real parts started on loopback for one test each.

pub mod bench;
pub mod browser;
pub mod canned;
pub mod corpus;
pub mod dataplane;
pub mod echo;
pub mod fixtures;
pub mod fleet;
pub mod kube_api;
pub mod meshd;
pub mod peers;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod python;
pub mod ring;
pub mod sidecar;
pub mod wait;

/// A string unique within this test process (for file names).
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
