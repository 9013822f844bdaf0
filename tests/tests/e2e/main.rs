//! The end-to-end tests: one test binary (so the whole tree is linked once, not once per file),
//! one module per subject. Run one subject with a filter on the module path, e.g.
//! `cargo nextest run -p mesh-tests -E 'test(/^sidecar_basic::/)'`. Support code shared between
//! subjects lives in the `mesh_tests` library (`tests/src/`).

mod bench_smoke;
mod dashboard;
mod demo;
mod discovery;
mod documents;
mod identity;
mod meshctl;
mod meshd_bootstrap;
mod replicas;
mod rotation;
mod sidecar_basic;
mod sidecar_policy;
mod sidecar_resilience;
mod store;
