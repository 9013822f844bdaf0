//! `meshd`, the control plane: the mesh's certificate authority and configuration server.
//!
//! - [`config`]: flags and environment → one checked [`config::Config`].
//! - [`store`]: sqlx storage on SQLite (embedded default) or PostgreSQL.
//! - [`ca`]: the CA at run time (bootstrap, sealed key, signing).
//! - [`server`]: wiring and shutdown.

pub mod ca;
pub mod config;
pub mod server;
pub mod store;
pub mod telemetry;
