//! `meshd`, the control plane: the mesh's certificate authority and configuration server.
//!
//! - [`config`]: flags and environment → one checked [`config::Config`].
//! - [`store`]: sqlx storage on SQLite (embedded default) or PostgreSQL.
//! - [`ca`]: the CA at run time (bootstrap, sealed key, signing).
//! - [`tls`]: meshd's TLS serving and the verified peer identity.
//! - [`identity`]: the `Identity` gRPC service and join tokens.
//! - [`kubernetes`]: ServiceAccount tokens checked with a TokenReview.
//! - [`admin`]: the admin HTTP API.
//! - [`dashboard`]: the web dashboard's embedded files, served beside the admin API.
//! - [`metrics`]: Prometheus metrics.
//! - [`model`]: operator documents → one validated [`model::Mesh`].
//! - [`rotation`]: the CA rotation driver (phases gated on the fleet, persisted).
//! - [`server`]: wiring and shutdown.

pub mod admin;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod identity;
pub mod kubernetes;
pub mod metrics;
/// The document model, a crate of its own (`mesh-model`: no network, no database).
pub use mesh_model as model;
pub mod reissue;
pub mod replicas;
pub mod rotation;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod xds;
