//! The configuration model: where operator documents become one validated [`Mesh`].
//!
//! Three stages are kept apart (see `shared/DESIGN.md`): sources (files, admin API, later
//! Kubernetes) hand in text or JSON; this module turns it into typed [`Document`]s and then into
//! one [`Mesh`]; the xDS layer reads the `Mesh` and builds per-sidecar views. Nothing here knows
//! which source or which encoder it serves.
//!
//! - [`spec`]: the document shapes as operators write them (serde, camelCase keys,
//!   `deny_unknown_fields`). They are also the API payload and, later, the CRD schema.
//! - [`Document`]: one document that passed every per-document check. The only way to get one
//!   is through validation ([`Document::parse_yaml`], [`Document::parse_json`],
//!   [`Document::new`]), so the rest of the program never sees an unvalidated resource.
//! - [`Mesh`]: the whole set, checked across documents (references resolve, no duplicates, no
//!   two routes claim the same host) and converted into internal types ([`Service`],
//!   [`HttpRoute`], ...) with strong types: `Duration`, `SocketAddr`, `SpiffeId`, compiled
//!   regexes, and defaults filled in.
//!
//! Errors name the document and the field path, one per line, all at once:
//! `HTTPRoute default/reviews: spec.rules[0].backends[1].weight: must be 0..=100`.

mod document;
mod error;
mod mesh;
mod names;
mod resources;
pub mod spec;
pub mod text;
mod validate;

pub use document::{Document, DocumentKey, Kind, Metadata, Spec};
pub use error::{ModelError, ModelErrors};
pub use mesh::{Mesh, MeshOptions, WorkloadRef};
pub use resources::{
    Action, AppProtocol, AuthorizationPolicy, AuthzRule, Backend, CipherSuite, CircuitBreaker,
    Endpoint, HeaderCondition, HeaderMatch, HttpRoute, IdentityMatch, KeyExchangeGroup, LbPolicy,
    ObjectRef, Operation, OutlierDetection, ParentRef, PathMatch, PathPattern, Pattern, Principal,
    Protocol, RateLimitPolicy, RateLimitScope, RateLimitTarget, RetryOn, RetryPolicy, RouteMatch,
    RouteRule, Selector, Service, ServicePort, Sidecar, SidecarEgress, Source, TlsMode, TlsPolicy,
    TlsVersion, UpstreamTls, rollout_bucket,
};

/// The `apiVersion` of every mesh document.
pub const API_VERSION: &str = "mesh.meshd.dev/v1alpha1";

/// The namespace of a document whose `metadata.namespace` is not set (as in Kubernetes).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The DNS suffix of service host names (`<svc>.<ns>.svc.<cluster domain>`), as in Kubernetes.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Policies in this namespace with no selector apply to the whole mesh (Istio's root namespace).
pub const DEFAULT_ROOT_NAMESPACE: &str = "mesh-system";

#[cfg(test)]
mod tests;
