//! An immutable, versioned set of resources for one scope (the sidecars that see the same
//! configuration). Each resource's version is a hash of its content, so the same content has
//! the same version on every replica and after every restart.

use mesh_proto::ResourceType;
use mesh_proto::v1::Resource;
use mesh_proto::v1::resource::Body;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The resources of one scope, by type and name.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Shared: a service's Cluster is the same resource in every scope that holds it.
    by_type: BTreeMap<ResourceType, BTreeMap<String, Arc<Resource>>>,
    /// When the change that produced this snapshot happened (for push latency).
    pub changed_at: Instant,
    /// [`Snapshot::type_version`] of each type, computed once (every stream of the scope
    /// compares it on every push).
    versions: std::sync::OnceLock<BTreeMap<ResourceType, String>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Snapshot {
    pub fn new(changed_at: Instant) -> Self {
        Self {
            by_type: BTreeMap::new(),
            changed_at,
            versions: std::sync::OnceLock::new(),
        }
    }

    /// Adds a resource, computing its version. A later resource of the same type and name
    /// replaces the earlier one.
    pub fn insert(&mut self, body: Body) {
        self.insert_resource(Arc::new(versioned(body)));
    }

    /// Adds a resource made by [`versioned`] (shared between snapshots).
    pub fn insert_resource(&mut self, resource: Arc<Resource>) {
        let Some(ty) = resource.body.as_ref().map(Body::resource_type) else {
            return;
        };
        self.versions.take();
        self.by_type
            .entry(ty)
            .or_default()
            .insert(resource.name.clone(), resource);
    }

    /// The resources of one type (empty when there are none).
    pub fn resources(&self, ty: ResourceType) -> impl Iterator<Item = &Resource> {
        self.by_type
            .get(&ty)
            .into_iter()
            .flat_map(|m| m.values().map(|r| &**r))
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.by_type
            .get(&ty)
            .and_then(|m| m.get(name))
            .map(|r| &**r)
    }

    /// One version for all resources of a type (for status displays): a hash of the names and
    /// versions, or "" when there are none.
    pub fn type_version(&self, ty: ResourceType) -> &str {
        self.versions
            .get_or_init(|| {
                ResourceType::ALL
                    .into_iter()
                    .map(|t| (t, self.compute_type_version(t)))
                    .collect()
            })
            .get(&ty)
            .map_or("", String::as_str)
    }

    fn compute_type_version(&self, ty: ResourceType) -> String {
        let Some(resources) = self.by_type.get(&ty) else {
            return String::new();
        };
        let mut input = Vec::new();
        for (name, r) in resources {
            input.extend_from_slice(name.as_bytes());
            input.push(0);
            input.extend_from_slice(r.version.as_bytes());
            input.push(0);
        }
        short_hash(&input)
    }

    /// Every reference resolves (go-control-plane's `Consistent()`): each listener's route
    /// table and default cluster, and each route's backends, are resources of this snapshot. A
    /// sidecar would NACK what fails this, so it is never published.
    pub fn check_consistent(&self) -> Result<(), String> {
        let has = |ty: ResourceType, name: &str| self.get(ty, name).is_some();
        for r in self.resources(ResourceType::Listener) {
            let Some(Body::Listener(l)) = &r.body else {
                continue;
            };
            // "*": every route table of the scope (the outbound listener).
            let named = !l.route_table.is_empty() && l.route_table != mesh_proto::names::ANY;
            if named && !has(ResourceType::RouteTable, &l.route_table) {
                return Err(format!(
                    "listener {:?} names route table {:?}, which the scope does not hold",
                    l.name, l.route_table
                ));
            }
            if !l.default_cluster.is_empty() && !has(ResourceType::Cluster, &l.default_cluster) {
                return Err(format!(
                    "listener {:?} names default cluster {:?}, which the scope does not hold",
                    l.name, l.default_cluster
                ));
            }
        }
        for r in self.resources(ResourceType::RouteTable) {
            let Some(Body::RouteTable(t)) = &r.body else {
                continue;
            };
            for route in t.virtual_hosts.iter().flat_map(|h| &h.routes) {
                if let Some(b) = route
                    .backends
                    .iter()
                    .find(|b| !has(ResourceType::Cluster, &b.cluster))
                {
                    return Err(format!(
                        "route table {:?}, route {:?}: cluster {:?} is not in the scope",
                        t.name, route.name, b.cluster
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether both hold exactly the same resources (ignoring `changed_at`).
    pub fn same_content(&self, other: &Snapshot) -> bool {
        ResourceType::ALL
            .iter()
            .all(|t| self.type_version(*t) == other.type_version(*t))
    }
}

/// A resource with its name and version (the hash of its content).
pub fn versioned(body: Body) -> Resource {
    let mut resource = Resource {
        name: body.name().to_string(),
        version: String::new(),
        body: Some(body),
    };
    resource.version = version_of(&resource);
    resource
}

/// The version of a resource: the hash of its deterministic encoding with `version` empty.
pub fn version_of(resource: &Resource) -> String {
    let mut unversioned = resource.clone();
    unversioned.version.clear();
    short_hash(&unversioned.encode_to_vec())
}

fn short_hash(bytes: &[u8]) -> String {
    mesh_ca::hex(&mesh_ca::sha256(bytes)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::{Cluster, TlsPolicy};

    #[test]
    fn versions_follow_content_only() {
        let mut a = Snapshot::default();
        a.insert(Body::Cluster(Cluster {
            name: "c".into(),
            port: 80,
            ..Default::default()
        }));
        let mut b = Snapshot::default();
        b.insert(Body::Cluster(Cluster {
            name: "c".into(),
            port: 80,
            ..Default::default()
        }));
        assert!(a.same_content(&b));
        let va = a.get(ResourceType::Cluster, "c").unwrap().version.clone();
        assert_eq!(va.len(), 16);
        b.insert(Body::Cluster(Cluster {
            name: "c".into(),
            port: 81,
            ..Default::default()
        }));
        assert_ne!(b.get(ResourceType::Cluster, "c").unwrap().version, va);
        assert!(!a.same_content(&b));
        assert_eq!(a.type_version(ResourceType::TlsPolicy), "");
        a.insert(Body::TlsPolicy(TlsPolicy {
            name: "t".into(),
            ..Default::default()
        }));
        assert_ne!(a.type_version(ResourceType::TlsPolicy), "");
    }

    #[test]
    fn a_reference_that_does_not_resolve_is_inconsistent() {
        use mesh_proto::v1::{Listener, Route, RouteTable, VirtualHost, WeightedCluster};
        let mut snap = Snapshot::new(Instant::now());
        snap.insert(Body::Listener(Listener {
            name: "outbound".into(),
            route_table: "outbound".into(),
            ..Default::default()
        }));
        let err = snap.check_consistent().unwrap_err();
        assert!(err.contains("route table \"outbound\""), "{err}");
        snap.insert(Body::Listener(Listener {
            name: "outbound".into(),
            route_table: "*".into(),
            ..Default::default()
        }));
        assert_eq!(snap.check_consistent(), Ok(()), "* is every route table");
        snap.insert(Body::Listener(Listener {
            name: "outbound".into(),
            route_table: "outbound".into(),
            ..Default::default()
        }));
        snap.insert(Body::RouteTable(RouteTable {
            name: "outbound".into(),
            virtual_hosts: vec![VirtualHost {
                name: "b".into(),
                domains: vec!["b".into()],
                routes: vec![Route {
                    name: "all".into(),
                    backends: vec![WeightedCluster {
                        cluster: "b.default:80".into(),
                        weight: 100,
                    }],
                    ..Default::default()
                }],
            }],
        }));
        let err = snap.check_consistent().unwrap_err();
        assert!(err.contains("cluster \"b.default:80\""), "{err}");
        snap.insert(Body::Cluster(Cluster {
            name: "b.default:80".into(),
            ..Default::default()
        }));
        assert_eq!(snap.check_consistent(), Ok(()));
    }
}
