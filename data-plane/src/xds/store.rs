//! What the sidecar holds: every resource by type and name with its version (the last good one),
//! and the immutable [`Snapshot`] derived from them that the proxies read once per request or
//! connection.
//!
//! One handler per type (ztunnel's pattern): every resource of a response is converted on its
//! own, outside the lock; the valid ones and the removals are then applied under the lock in
//! one step, and a fresh snapshot is published. An invalid resource rejects only itself.

use crate::identity::Identity;
use crate::resources::{
    AuthorizationPolicy, Cluster, Direction, IdentityDirective, Listener, RateLimit, Reason,
    RouteTable, TlsSettings, TrustBundle, VirtualHost, check_envelope,
};
use mesh_proto::ResourceType;
use mesh_proto::v1::{self as pb, resource::Body};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

/// A converted resource.
#[derive(Debug, Clone)]
pub enum Converted {
    Listener(Arc<Listener>),
    RouteTable(Arc<RouteTable>),
    Cluster(Arc<Cluster>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    RateLimitPolicy(Arc<RateLimit>),
    TlsPolicy(Arc<TlsSettings>),
    TrustBundle(Arc<TrustBundle>),
    IdentityDirective(Arc<IdentityDirective>),
}

fn convert(body: &Body) -> Result<Converted, Reason> {
    Ok(match body {
        Body::Listener(l) => Converted::Listener(Arc::new(Listener::convert(l)?)),
        Body::RouteTable(t) => Converted::RouteTable(Arc::new(RouteTable::convert(t)?)),
        Body::Cluster(c) => Converted::Cluster(Arc::new(Cluster::convert(c)?)),
        Body::AuthorizationPolicy(p) => {
            Converted::AuthorizationPolicy(Arc::new(AuthorizationPolicy::convert(p)?))
        }
        Body::RateLimitPolicy(p) => Converted::RateLimitPolicy(Arc::new(RateLimit::convert(p)?)),
        Body::TlsPolicy(p) => Converted::TlsPolicy(Arc::new(TlsSettings::convert(p)?)),
        Body::TrustBundle(b) => Converted::TrustBundle(Arc::new(TrustBundle::convert(b)?)),
        Body::IdentityDirective(d) => {
            Converted::IdentityDirective(Arc::new(IdentityDirective::convert(d)?))
        }
    })
}

/// One held resource: the last good version of its name.
#[derive(Debug, Clone)]
pub struct Held {
    pub version: String,
    pub raw: pb::Resource,
    pub value: Converted,
}

/// The addresses that listeners with an empty address mean.
#[derive(Debug, Clone, Copy)]
pub struct OwnAddrs {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
}

/// Everything a request needs, immutable; replaced as a whole on every change.
pub struct Snapshot {
    pub inbound: Option<Arc<Listener>>,
    pub outbound: Option<Arc<Listener>>,
    pub route_tables: HashMap<String, Arc<RouteTable>>,
    /// Domain → (table, virtual host index), over every table except the inbound one: the
    /// outbound listener's "*" route table.
    hosts: HashMap<String, (Arc<RouteTable>, usize)>,
    any_host: Option<(Arc<RouteTable>, usize)>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub authorization: Vec<Arc<AuthorizationPolicy>>,
    pub rate_limits: Vec<Arc<RateLimit>>,
    pub tls: Arc<TlsSettings>,
    /// Changes whenever the TLS policy does: part of the upstream pool key, so that new
    /// connections use a new policy.
    pub tls_generation: u64,
    pub server_config: Option<Arc<rustls::ServerConfig>>,
}

impl Snapshot {
    /// The virtual host for `host` (lower case) on a listener with route table `table`.
    pub fn virtual_host(&self, table: &str, host: &str) -> Option<&VirtualHost> {
        if table == mesh_proto::names::ANY {
            let (t, i) = self.hosts.get(host).or(self.any_host.as_ref())?;
            return t.virtual_hosts.get(*i);
        }
        self.route_tables.get(table)?.virtual_host(host)
    }
}

/// The TLS policy version the server config was built for, its generation, and both.
struct TlsCache {
    version: String,
    generation: u64,
    settings: Arc<TlsSettings>,
    server_config: Option<Arc<rustls::ServerConfig>>,
}

struct Inner {
    held: BTreeMap<ResourceType, BTreeMap<String, Held>>,
    tls_cache: Option<TlsCache>,
    tls_generation: u64,
}

/// The TLS policy in effect, for open connections: when `generation` moves on, connections
/// set up under an older one get `grace` to finish (none: they are not forced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsEpoch {
    pub generation: u64,
    pub grace: Option<std::time::Duration>,
}

pub struct Store {
    inner: Mutex<Inner>,
    snapshot: RwLock<Arc<Snapshot>>,
    tls_epoch: tokio::sync::watch::Sender<TlsEpoch>,
    own: OwnAddrs,
    identity: Arc<Identity>,
    /// The bundle trusted before any TrustBundle resource (from --ca-bundle / Sign).
    initial_bundle: mesh_ca::TrustBundle,
}

// === impl Store ===

impl Store {
    pub fn new(
        own: OwnAddrs,
        identity: Arc<Identity>,
        initial_bundle: mesh_ca::TrustBundle,
    ) -> Arc<Self> {
        let store = Self {
            inner: Mutex::new(Inner {
                held: BTreeMap::new(),
                tls_cache: None,
                tls_generation: 0,
            }),
            snapshot: RwLock::new(Arc::new(Snapshot {
                inbound: None,
                outbound: None,
                route_tables: HashMap::new(),
                hosts: HashMap::new(),
                any_host: None,
                clusters: HashMap::new(),
                authorization: Vec::new(),
                rate_limits: Vec::new(),
                tls: Arc::new(TlsSettings::default()),
                tls_generation: 0,
                server_config: None,
            })),
            tls_epoch: tokio::sync::watch::Sender::new(TlsEpoch {
                generation: 0,
                grace: None,
            }),
            own,
            identity,
            initial_bundle,
        };
        {
            let mut inner = store.inner.lock().unwrap_or_else(|p| p.into_inner());
            let snap = store.build(&mut inner);
            store.publish(snap);
        }
        Arc::new(store)
    }

    fn publish(&self, snap: Snapshot) {
        let epoch = TlsEpoch {
            generation: snap.tls_generation,
            grace: snap.tls.drain_grace,
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        self.tls_epoch.send_if_modified(|e| {
            let changed = *e != epoch;
            *e = epoch;
            changed
        });
    }

    /// Follows TLS policy changes (see [`TlsEpoch`]).
    pub fn tls_epochs(&self) -> tokio::sync::watch::Receiver<TlsEpoch> {
        self.tls_epoch.subscribe()
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Name → version of every held resource of `ty` (for `initial_resource_versions`).
    pub fn versions(&self, ty: ResourceType) -> BTreeMap<String, String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .held
            .get(&ty)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every held resource, by type (for `/config_dump` and the state directory).
    pub fn held(&self) -> BTreeMap<ResourceType, BTreeMap<String, Held>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .clone()
    }

    /// The held resources of one type, as received (for the state directory).
    pub fn raw_of(&self, ty: ResourceType) -> Vec<pb::Resource> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .held
            .get(&ty)
            .map(|m| m.values().map(|h| h.raw.clone()).collect())
            .unwrap_or_default()
    }

    pub fn count(&self, ty: ResourceType) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.held.get(&ty).map(BTreeMap::len).unwrap_or(0)
    }

    /// Applies one response of type `ty`: removals, then every valid resource. Returns the
    /// NACK lines (`<name>: <reason>`) of the rejected ones; empty means ACK.
    pub fn apply(
        &self,
        ty: ResourceType,
        resources: &[pb::Resource],
        removed: &[String],
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut converted = Vec::with_capacity(resources.len());
        for r in resources {
            match check_envelope(ty, r).and_then(convert) {
                Ok(value) => converted.push(Held {
                    version: r.version.clone(),
                    raw: r.clone(),
                    value,
                }),
                Err(reason) => errors.push(format!("{}: {reason}", r.name)),
            }
        }

        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = inner.held.get(&ty).cloned().unwrap_or_default();
        let map = inner.held.entry(ty).or_default();
        for name in removed {
            map.remove(name);
        }
        for h in converted {
            let name = h.raw.name.clone();
            match self.fits(map, &name, &h.value) {
                Ok(()) => {
                    map.insert(name, h);
                }
                Err(reason) => errors.push(format!("{name}: {reason}")),
            }
        }

        // The trust bundle is applied to the verifiers here, under the lock, so that it and
        // the held set never disagree; if the union does not build, the new bundles are
        // rejected and the previous set stays.
        if ty == ResourceType::TrustBundle {
            let changed: Vec<String> = resources
                .iter()
                .map(|r| r.name.clone())
                .filter(|n| map.contains_key(n))
                .collect();
            if let Err(reason) = self.apply_bundles(map) {
                for n in &changed {
                    errors.push(format!("{n}: {reason}"));
                    match before.get(n) {
                        Some(old) => {
                            map.insert(n.clone(), old.clone());
                        }
                        None => {
                            map.remove(n);
                        }
                    }
                }
                let _ = self.apply_bundles(map);
            }
        }
        if ty == ResourceType::IdentityDirective {
            for h in map.values() {
                if let Converted::IdentityDirective(d) = &h.value {
                    self.identity.apply_directive(d);
                }
            }
        }

        let snap = self.build(&mut inner);
        self.publish(snap);
        errors
    }

    /// Rules between resources of one type that a resource alone cannot check.
    fn fits(
        &self,
        map: &BTreeMap<String, Held>,
        name: &str,
        value: &Converted,
    ) -> Result<(), Reason> {
        let others = || map.iter().filter(move |(n, _)| n.as_str() != name);
        match value {
            Converted::Listener(l) => {
                let own = match l.direction {
                    Direction::Inbound => self.own.inbound,
                    Direction::Outbound => self.own.outbound,
                };
                let addr = l.address.unwrap_or(own);
                if addr != own {
                    return Err(format!(
                        "address {addr} is not this sidecar's {} address {own}; this sidecar \
                         serves only its configured listener addresses",
                        if l.direction == Direction::Inbound {
                            "inbound"
                        } else {
                            "outbound"
                        }
                    ));
                }
                for (other, h) in others() {
                    if let Converted::Listener(o) = &h.value {
                        let o_addr = o.address.unwrap_or(match o.direction {
                            Direction::Inbound => self.own.inbound,
                            Direction::Outbound => self.own.outbound,
                        });
                        if o_addr == addr {
                            return Err(format!("listener {other:?} already uses address {addr}"));
                        }
                    }
                }
                Ok(())
            }
            Converted::TlsPolicy(_) => match others().next() {
                Some((other, _)) => Err(format!("a second TlsPolicy ({other:?} is held)")),
                None => Ok(()),
            },
            Converted::IdentityDirective(_) => match others().next() {
                Some((other, _)) => Err(format!("a second IdentityDirective ({other:?} is held)")),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn apply_bundles(&self, map: &BTreeMap<String, Held>) -> Result<(), Reason> {
        let mut merged = mesh_ca::TrustBundle::default();
        for h in map.values() {
            if let Converted::TrustBundle(b) = &h.value {
                for root in b.bundle.roots() {
                    merged.add(root.clone()).map_err(|e| e.to_string())?;
                }
            }
        }
        if merged.roots().is_empty() {
            // Every bundle was removed: fall back to what we started with rather than trust
            // nothing at all.
            merged = self.initial_bundle.clone();
        } else {
            self.identity.bundle_applied();
        }
        self.identity
            .anchors
            .replace(&merged)
            .map_err(|e| e.to_string())?;
        self.identity.persist_bundle(&merged.to_pem());
        Ok(())
    }

    fn build(&self, inner: &mut Inner) -> Snapshot {
        let of = |ty| inner.held.get(&ty).into_iter().flat_map(|m| m.values());
        let mut inbound = None;
        let mut outbound = None;
        for h in of(ResourceType::Listener) {
            if let Converted::Listener(l) = &h.value {
                match l.direction {
                    Direction::Inbound => inbound = Some(l.clone()),
                    Direction::Outbound => outbound = Some(l.clone()),
                }
            }
        }
        let mut route_tables = HashMap::new();
        for h in of(ResourceType::RouteTable) {
            if let Converted::RouteTable(t) = &h.value {
                route_tables.insert(t.name.clone(), t.clone());
            }
        }
        // The outbound "*" index: tables with host names of their own (`<ns>/<route>`) win
        // over a service's own table on the same domain; ties go by name, so the result does
        // not depend on arrival order.
        let inbound_table = inbound
            .as_ref()
            .map(|l: &Arc<Listener>| l.route_table.clone());
        let mut tables: Vec<&Arc<RouteTable>> = route_tables
            .values()
            .filter(|t| Some(&t.name) != inbound_table.as_ref())
            .collect();
        tables.sort_by_key(|t| (!t.name.contains('/'), t.name.clone()));
        let mut hosts = HashMap::new();
        let mut any_host = None;
        for t in tables {
            for (i, vh) in t.virtual_hosts.iter().enumerate() {
                for d in &vh.domains {
                    if d == mesh_proto::names::ANY {
                        any_host.get_or_insert_with(|| (t.clone(), i));
                    } else {
                        hosts.entry(d.clone()).or_insert_with(|| (t.clone(), i));
                    }
                }
            }
        }
        let mut clusters = HashMap::new();
        for h in of(ResourceType::Cluster) {
            if let Converted::Cluster(c) = &h.value {
                clusters.insert(c.name.clone(), c.clone());
            }
        }
        let authorization = of(ResourceType::AuthorizationPolicy)
            .filter_map(|h| match &h.value {
                Converted::AuthorizationPolicy(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let rate_limits = of(ResourceType::RateLimitPolicy)
            .filter_map(|h| match &h.value {
                Converted::RateLimitPolicy(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let tls_held = of(ResourceType::TlsPolicy).find_map(|h| match &h.value {
            Converted::TlsPolicy(p) => Some((h.version.clone(), p.clone())),
            _ => None,
        });
        let tls_version = tls_held.as_ref().map(|t| t.0.clone()).unwrap_or_default();

        // The server config changes only with the TLS policy; certificate and bundle changes
        // reach it through the shared slots.
        let (tls, tls_generation, server_config) = match &inner.tls_cache {
            Some(c) if c.version == tls_version && c.server_config.is_some() => {
                (c.settings.clone(), c.generation, c.server_config.clone())
            }
            _ => {
                let tls = tls_held.map(|t| t.1).unwrap_or_default();
                let config = match crate::tls::server_config(
                    &tls,
                    self.identity.cert.clone(),
                    self.identity.anchors.clone(),
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!("inbound TLS configuration: {e}");
                        None
                    }
                };
                inner.tls_generation += 1;
                let generation = inner.tls_generation;
                inner.tls_cache = Some(TlsCache {
                    version: tls_version,
                    generation,
                    settings: tls.clone(),
                    server_config: config.clone(),
                });
                (tls, generation, config)
            }
        };
        Snapshot {
            inbound,
            outbound,
            route_tables,
            hosts,
            any_host,
            clusters,
            authorization,
            rate_limits,
            tls,
            tls_generation,
            server_config,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::{Identity, IdentityOptions};
    use mesh_proto::v1::{self as pb, resource::Body};

    fn store() -> Arc<Store> {
        let td = mesh_ca::TrustDomain::new("cluster.local").unwrap();
        let ca =
            mesh_ca::CertificateAuthority::generate_root(&mesh_ca::CaOptions::new(td)).unwrap();
        let id: mesh_ca::SpiffeId = "spiffe://cluster.local/ns/a/sa/web".parse().unwrap();
        let identity = Identity::new(
            id,
            &ca.bundle(),
            IdentityOptions {
                control_planes: vec!["https://127.0.0.1:1".into()],
                bootstrap: None,
                ttl: std::time::Duration::ZERO,
                state_dir: None,
                sidecar_id: "test".into(),
            },
        )
        .unwrap();
        Store::new(
            OwnAddrs {
                inbound: "127.0.0.1:15006".parse().unwrap(),
                outbound: "127.0.0.1:15001".parse().unwrap(),
            },
            identity,
            ca.bundle(),
        )
    }

    fn resource(body: Body, version: &str) -> pb::Resource {
        pb::Resource {
            name: body.name().to_string(),
            version: version.into(),
            body: Some(body),
        }
    }

    fn cluster(name: &str, identity: &str) -> Body {
        Body::Cluster(pb::Cluster {
            name: name.into(),
            protocol: pb::Protocol::Http as i32,
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:9000".into(),
                identity: identity.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    const B: &str = "spiffe://cluster.local/ns/a/sa/b";

    #[test]
    fn a_bad_resource_rejects_only_itself_and_its_last_good_version_stays() {
        let s = store();
        assert!(
            s.apply(
                ResourceType::Cluster,
                &[resource(cluster("b.a:80", B), "v1")],
                &[]
            )
            .is_empty()
        );
        let errors = s.apply(
            ResourceType::Cluster,
            &[
                resource(cluster("b.a:80", ""), "v2"),
                resource(cluster("c.a:80", B), "v1"),
            ],
            &[],
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("b.a:80: endpoint 127.0.0.1:9000 has no identity"),
            "{errors:?}"
        );
        let versions = s.versions(ResourceType::Cluster);
        assert_eq!(versions["b.a:80"], "v1", "the last good version stays");
        assert_eq!(versions["c.a:80"], "v1", "the valid one is applied");
        assert!(s.snapshot().clusters.contains_key("c.a:80"));

        // A removal in a NACKed response is applied too.
        let errors = s.apply(
            ResourceType::Cluster,
            &[resource(cluster("d.a:80", "not an id"), "v1")],
            &["c.a:80".into()],
        );
        assert_eq!(errors.len(), 1);
        assert!(!s.versions(ResourceType::Cluster).contains_key("c.a:80"));
    }

    #[test]
    fn envelope_errors_name_the_resource() {
        let s = store();
        let mut wrong_name = resource(cluster("x", B), "v1");
        wrong_name.name = "y".into();
        let wrong_type = resource(cluster("z", B), "v1");
        let errors = s.apply(ResourceType::Listener, &[wrong_type], &[]);
        assert_eq!(errors, vec!["z: a Cluster in a response of type Listener"]);
        let errors = s.apply(ResourceType::Cluster, &[wrong_name], &[]);
        assert_eq!(
            errors,
            vec!["y: the body's name \"x\" differs from the resource name"]
        );
    }

    #[test]
    fn only_one_tls_policy_and_only_own_listener_addresses() {
        let s = store();
        let tls = |name: &str| {
            Body::TlsPolicy(pb::TlsPolicy {
                name: name.into(),
                inbound_mode: pb::TlsMode::Permissive as i32,
                ..Default::default()
            })
        };
        assert!(
            s.apply(ResourceType::TlsPolicy, &[resource(tls("one"), "v1")], &[])
                .is_empty()
        );
        let generation = s.snapshot().tls_generation;
        let errors = s.apply(ResourceType::TlsPolicy, &[resource(tls("two"), "v1")], &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("a second TlsPolicy"));
        assert_eq!(
            s.snapshot().tls.inbound_mode,
            crate::resources::TlsMode::Permissive
        );
        assert_eq!(s.snapshot().tls_generation, generation, "unchanged policy");

        let listener = |name: &str, address: &str| {
            Body::Listener(pb::Listener {
                name: name.into(),
                address: address.into(),
                direction: pb::listener::Direction::Inbound as i32,
                protocol: pb::Protocol::Http as i32,
                route_table: "inbound".into(),
                ..Default::default()
            })
        };
        let errors = s.apply(
            ResourceType::Listener,
            &[
                resource(listener("inbound", ""), "v1"),
                resource(listener("other", "127.0.0.1:15006"), "v1"),
                resource(listener("far", "10.0.0.1:80"), "v1"),
            ],
            &[],
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(s.snapshot().inbound.is_some());
    }

    #[test]
    fn outbound_hosts_search_every_table_but_the_inbound_one() {
        let s = store();
        let table = |name: &str, domains: &[&str], cluster: &str| {
            Body::RouteTable(pb::RouteTable {
                name: name.into(),
                virtual_hosts: vec![pb::VirtualHost {
                    name: name.into(),
                    domains: domains.iter().map(|d| d.to_string()).collect(),
                    routes: vec![pb::Route {
                        name: format!("{name}-route"),
                        backends: vec![pb::WeightedCluster {
                            cluster: cluster.into(),
                            weight: 1,
                        }],
                        ..Default::default()
                    }],
                }],
            })
        };
        s.apply(
            ResourceType::Listener,
            &[resource(
                Body::Listener(pb::Listener {
                    name: "inbound".into(),
                    direction: pb::listener::Direction::Inbound as i32,
                    protocol: pb::Protocol::Http as i32,
                    route_table: "inbound".into(),
                    ..Default::default()
                }),
                "v1",
            )],
            &[],
        );
        let errors = s.apply(
            ResourceType::RouteTable,
            &[
                resource(table("inbound", &["*"], "inbound|app"), "v1"),
                resource(table("b.a:80", &["b", "b.a", "B.A:80"], "b.a:80"), "v1"),
                resource(table("a/b-route", &["b.a"], "b-v2.a:80"), "v1"),
            ],
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let snap = s.snapshot();
        let first = |host: &str| {
            snap.virtual_host("*", host)
                .map(|vh| vh.routes[0].backends[0].0.clone())
        };
        assert_eq!(first("b").as_deref(), Some("b.a:80"));
        assert_eq!(first("b.a:80").as_deref(), Some("b.a:80"), "lower-cased");
        assert_eq!(
            first("b.a").as_deref(),
            Some("b-v2.a:80"),
            "a route's own host names win"
        );
        assert_eq!(
            first("elsewhere"),
            None,
            "the inbound \"*\" is not searched"
        );
        assert!(snap.virtual_host("inbound", "anything").is_some());
    }
}
