//! The per-scope view: what the sidecars of one scope (namespace, service, labels) receive,
//! built from the validated model, the connected sidecars (as endpoints) and the trust bundle.
//! This is the mesh.v1 encoder; nothing here knows which source a document came from.

mod encode;

use super::snapshot::{Snapshot, versioned};
use crate::model::{self, Mesh, WorkloadRef};
use crate::reissue::Directive;
use mesh_proto::ResourceType;
use mesh_proto::v1::Resource;
use mesh_proto::v1::resource::Body;
use mesh_proto::v1::{self as pb};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// The sidecars that see the same configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub namespace: String,
    /// The service the sidecar serves (empty for a client-only workload).
    pub service: String,
    pub labels: BTreeMap<String, String>,
    /// The percentage rollouts the sidecar falls in ([`Mesh::rollouts_for`]); empty unless a
    /// staged TlsPolicy has a `rolloutPercent`, so staging multiplies scopes only while it runs.
    pub rollouts: BTreeSet<String>,
}

impl ScopeKey {
    /// The scope of a sidecar: its workload, and the rollouts its id's bucket falls in.
    pub fn of(
        mesh: &Mesh,
        sidecar_id: &str,
        namespace: &str,
        service: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            namespace: namespace.to_string(),
            service: service.to_string(),
            labels: labels.clone(),
            rollouts: mesh.rollouts_for(namespace, labels, model::rollout_bucket(sidecar_id)),
        }
    }

    fn workload(&self) -> WorkloadRef<'_> {
        WorkloadRef {
            namespace: &self.namespace,
            labels: &self.labels,
            rollouts: &self.rollouts,
        }
    }
}

/// A connected sidecar as an endpoint of its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEndpoint {
    pub namespace: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub address: String,
    pub identity: String,
}

/// Everything a view is built from.
pub struct Inputs<'a> {
    pub trust_domain: &'a str,
    pub mesh: &'a Mesh,
    pub bundle: &'a mesh_ca::TrustBundle,
    pub endpoints: &'a [LiveEndpoint],
    pub directives: &'a [Directive],
}

/// The name of the one IdentityDirective a sidecar holds.
pub use mesh_proto::names::DIRECTIVE as DIRECTIVE_NAME;

/// The port of a service announced only by its sidecars (no Service document): HTTP on 80.
const IMPLICIT_PORT: u16 = 80;

pub use mesh_proto::names::{
    INBOUND, INBOUND_APP_CLUSTER, OUTBOUND, TRUST_BUNDLE as TRUST_BUNDLE_NAME,
};

/// A service as the view sees it: from a document, or implicit from its sidecars.
struct ServiceView<'a> {
    namespace: &'a str,
    name: &'a str,
    ports: Vec<(u16, pb::Protocol)>,
    /// What the application speaks on each port (same order as `ports`).
    app_protocols: Vec<pb::AppProtocol>,
    doc: Option<&'a model::Service>,
}

/// The cluster / route table name of a service port: `reviews.shop:9080`.
pub fn service_port_name(name: &str, namespace: &str, port: u16) -> String {
    format!("{name}.{namespace}:{port}")
}

fn protocol(p: model::Protocol) -> pb::Protocol {
    match p {
        model::Protocol::Http => pb::Protocol::Http,
        model::Protocol::Tcp => pb::Protocol::Tcp,
    }
}

/// HTTP/1.1 is the wire's default (UNSPECIFIED), which keeps its clusters' encoding as it was.
fn app_protocol(p: model::AppProtocol) -> pb::AppProtocol {
    if p.is_http2() {
        pb::AppProtocol::Http2
    } else {
        pb::AppProtocol::Unspecified
    }
}

fn services<'a>(inputs: &Inputs<'a>) -> Vec<ServiceView<'a>> {
    let mut out: Vec<ServiceView<'a>> = inputs
        .mesh
        .services()
        .map(|s| ServiceView {
            namespace: &s.namespace,
            name: &s.name,
            ports: s
                .ports
                .iter()
                .map(|p| (p.port, protocol(p.protocol)))
                .collect(),
            app_protocols: s
                .ports
                .iter()
                .map(|p| app_protocol(p.app_protocol))
                .collect(),
            doc: Some(s),
        })
        .collect();
    let mut seen: HashSet<(&str, &str)> = out.iter().map(|s| (s.namespace, s.name)).collect();
    for e in inputs.endpoints {
        if e.service.is_empty() || !seen.insert((&e.namespace, &e.service)) {
            continue;
        }
        out.push(ServiceView {
            namespace: &e.namespace,
            name: &e.service,
            ports: vec![(IMPLICIT_PORT, pb::Protocol::Http)],
            app_protocols: vec![pb::AppProtocol::Unspecified],
            doc: None,
        });
    }
    out
}

/// Whether a live sidecar is an endpoint of `svc`: it announced the service by name, or the
/// service's selector matches its labels.
fn serves(svc: &ServiceView<'_>, e: &LiveEndpoint) -> bool {
    (e.namespace == svc.namespace && e.service == svc.name)
        || svc.doc.is_some_and(|d| d.selects(&e.namespace, &e.labels))
}

/// The TrustBundle resource every sidecar holds.
pub fn trust_bundle(trust_domain: &str, bundle: &mesh_ca::TrustBundle) -> Body {
    Body::TrustBundle(pb::TrustBundle {
        name: TRUST_BUNDLE_NAME.into(),
        trust_domain: trust_domain.to_string(),
        roots: bundle
            .roots()
            .iter()
            .map(|r| pb::TrustRoot {
                pem: r.to_pem(),
                sha256_fingerprint: r.fingerprint.clone(),
                not_after_unix: r.not_after,
            })
            .collect(),
    })
}

/// Everything one push builds its scopes' views from: the inputs, indexed once, and the
/// resources that do not depend on the scope (each service port's Cluster and RouteTable),
/// built and versioned once however many scopes hold them.
pub struct Prepared<'a> {
    inputs: &'a Inputs<'a>,
    services: Vec<ServiceView<'a>>,
    /// Cluster name (`name.namespace:port`) → (index in `services`, port, protocol).
    ports: HashMap<String, (usize, u16, pb::Protocol)>,
    /// Live endpoints by namespace (a service selects endpoints of its own namespace only).
    endpoints: HashMap<&'a str, Vec<&'a LiveEndpoint>>,
    built: RefCell<HashMap<(ResourceType, String), Arc<Resource>>>,
}

impl<'a> Prepared<'a> {
    pub fn new(inputs: &'a Inputs<'a>) -> Self {
        let services = services(inputs);
        let mut ports = HashMap::new();
        for (i, svc) in services.iter().enumerate() {
            for (port, proto) in &svc.ports {
                ports.insert(
                    service_port_name(svc.name, svc.namespace, *port),
                    (i, *port, *proto),
                );
            }
        }
        let mut endpoints: HashMap<&str, Vec<&LiveEndpoint>> = HashMap::new();
        for e in inputs.endpoints {
            endpoints.entry(e.namespace.as_str()).or_default().push(e);
        }
        Self {
            inputs,
            services,
            ports,
            endpoints,
            built: RefCell::new(HashMap::new()),
        }
    }

    /// The Cluster of one service port into `snap`.
    fn insert_cluster(&self, snap: &mut Snapshot, name: &str) {
        let Some(&(i, port, proto)) = self.ports.get(name) else {
            return;
        };
        let svc = &self.services[i];
        snap.insert_resource(self.memo(ResourceType::Cluster, name, || {
            Body::Cluster(encode::cluster(svc, &self.endpoints, port, proto, name))
        }));
    }

    /// The Cluster and, for HTTP, the RouteTable of one service port into `snap`; returns the
    /// clusters its routes send to.
    fn insert_service_port(&self, snap: &mut Snapshot, name: &str) -> Vec<String> {
        self.insert_cluster(snap, name);
        let Some(&(i, port, proto)) = self.ports.get(name) else {
            return Vec::new();
        };
        let svc = &self.services[i];
        if proto != pb::Protocol::Http {
            return Vec::new();
        }
        let table = self.memo(ResourceType::RouteTable, name, || {
            Body::RouteTable(encode::service_route_table(self.inputs, svc, port, name))
        });
        let backends = match &table.body {
            Some(Body::RouteTable(t)) => backend_clusters(&t.virtual_hosts),
            _ => Vec::new(),
        };
        snap.insert_resource(table);
        backends
    }

    fn memo(&self, ty: ResourceType, name: &str, make: impl FnOnce() -> Body) -> Arc<Resource> {
        self.built
            .borrow_mut()
            .entry((ty, name.to_string()))
            .or_insert_with(|| Arc::new(versioned(make())))
            .clone()
    }
}

/// The clusters the routes of these virtual hosts send to.
fn backend_clusters(hosts: &[pb::VirtualHost]) -> Vec<String> {
    hosts
        .iter()
        .flat_map(|h| &h.routes)
        .flat_map(|r| &r.backends)
        .map(|b| b.cluster.clone())
        .collect()
}

/// Builds the snapshot of one scope.
pub fn build(prepared: &Prepared<'_>, scope: &ScopeKey, changed_at: Instant) -> Snapshot {
    let inputs = prepared.inputs;
    let mut snap = Snapshot::new(changed_at);
    let w = scope.workload();

    // The same resources for every scope that holds them: built and versioned once a push.
    let shared = |ty, name: &str, make: &dyn Fn() -> Body| prepared.memo(ty, name, make);
    snap.insert_resource(shared(
        ResourceType::TrustBundle,
        TRUST_BUNDLE_NAME,
        &|| trust_bundle(inputs.trust_domain, inputs.bundle),
    ));
    if let Some(p) = inputs.mesh.tls_policy_for(w) {
        snap.insert_resource(shared(ResourceType::TlsPolicy, &p.key(), &|| {
            Body::TlsPolicy(encode::tls_policy(p))
        }));
    }
    for p in inputs.mesh.authorization_policies_for(w) {
        let key = format!("{}/{}", p.namespace, p.name);
        snap.insert_resource(shared(ResourceType::AuthorizationPolicy, &key, &|| {
            Body::AuthorizationPolicy(encode::authorization_policy(p))
        }));
    }
    for p in inputs.mesh.rate_limit_policies_for(w) {
        let key = format!("{}/{}", p.namespace, p.name);
        snap.insert_resource(shared(ResourceType::RateLimitPolicy, &key, &|| {
            Body::RateLimitPolicy(encode::rate_limit_policy(p))
        }));
    }

    // The services the workload reaches (its Sidecar's egress; all without one) and its own,
    // then the clusters their routes send to (a route of a reached service may split traffic
    // to services the workload does not name: it gets their clusters, not their routes).
    let sidecar = inputs.mesh.sidecar_for(w);
    let reaches = |namespace: &str, name: &str| {
        (namespace == scope.namespace && name == scope.service)
            || sidecar.is_none_or(|s| s.reaches(&scope.namespace, namespace, name))
    };
    let mut backends: Vec<String> = Vec::new();
    for svc in prepared
        .services
        .iter()
        .filter(|s| reaches(s.namespace, s.name))
    {
        for (port, _) in &svc.ports {
            let name = service_port_name(svc.name, svc.namespace, *port);
            backends.extend(prepared.insert_service_port(&mut snap, &name));
        }
    }
    for route in inputs.mesh.routes().filter(|r| !r.hostnames.is_empty()) {
        let reached = route
            .rules
            .iter()
            .flat_map(|r| &r.backends)
            .any(|b| reaches(&b.service.namespace, &b.service.name));
        if !reached {
            continue;
        }
        // The same for every scope that reaches it: built once a push.
        let name = format!("{}/{}", route.namespace, route.name);
        let table = prepared.memo(ResourceType::RouteTable, &name, || {
            Body::RouteTable(pb::RouteTable {
                name: name.clone(),
                virtual_hosts: vec![pb::VirtualHost {
                    name: name.clone(),
                    domains: route.hostnames.clone(),
                    routes: encode::routes_of(route),
                }],
            })
        });
        if let Some(Body::RouteTable(t)) = &table.body {
            backends.extend(backend_clusters(&t.virtual_hosts));
        }
        snap.insert_resource(table);
    }
    for name in &backends {
        prepared.insert_cluster(&mut snap, name);
    }

    // The workload's own side: inbound listener → local application, and the outbound
    // listener that routes by Host across every route table above.
    let own = prepared
        .services
        .iter()
        .find(|s| s.namespace == scope.namespace && s.name == scope.service);
    let own_protocol = own
        .and_then(|s| s.ports.first().map(|p| p.1))
        .unwrap_or(pb::Protocol::Http);
    // What the application speaks comes from its own Service port, never from the caller.
    let own_app_protocol = own
        .and_then(|s| s.app_protocols.first().copied())
        .unwrap_or(pb::AppProtocol::Unspecified);
    if !scope.service.is_empty() {
        snap.insert(Body::Cluster(pb::Cluster {
            name: INBOUND_APP_CLUSTER.into(),
            service: scope.service.clone(),
            namespace: scope.namespace.clone(),
            protocol: own_protocol as i32,
            upstream_tls: pb::cluster::UpstreamTls::Disabled as i32,
            app_protocol: own_app_protocol as i32,
            ..Default::default()
        }));
        if own_protocol == pb::Protocol::Http {
            snap.insert(Body::RouteTable(pb::RouteTable {
                name: INBOUND.into(),
                virtual_hosts: vec![pb::VirtualHost {
                    name: INBOUND.into(),
                    domains: vec![mesh_proto::names::ANY.into()],
                    routes: vec![pb::Route {
                        name: "default".into(),
                        r#match: Some(pb::RouteMatch {
                            path: Some(pb::route_match::Path::Prefix("/".into())),
                            ..Default::default()
                        }),
                        backends: vec![pb::WeightedCluster {
                            cluster: INBOUND_APP_CLUSTER.into(),
                            weight: 100,
                        }],
                        ..Default::default()
                    }],
                }],
            }));
        }
        snap.insert(Body::Listener(pb::Listener {
            name: INBOUND.into(),
            address: String::new(),
            direction: pb::listener::Direction::Inbound as i32,
            protocol: own_protocol as i32,
            route_table: if own_protocol == pb::Protocol::Http {
                INBOUND.into()
            } else {
                String::new()
            },
            default_cluster: if own_protocol == pb::Protocol::Tcp {
                INBOUND_APP_CLUSTER.into()
            } else {
                String::new()
            },
            tls_mode: pb::TlsMode::Unspecified as i32,
        }));
    }
    // The newest directive that concerns this scope (a sidecar holds at most one).
    if let Some(d) = inputs
        .directives
        .iter()
        .filter(|d| d.target.matches(&scope.namespace, &scope.service))
        .max_by_key(|d| d.generation)
    {
        snap.insert(Body::IdentityDirective(pb::IdentityDirective {
            name: DIRECTIVE_NAME.into(),
            reissue_before_unix: d.reissue_before,
            reason: d.reason.clone(),
            generation: d.generation,
            issued_before_unix: d.issued_before,
        }));
    }
    snap.insert_resource(prepared.memo(ResourceType::Listener, OUTBOUND, || {
        Body::Listener(pb::Listener {
            name: OUTBOUND.into(),
            address: String::new(),
            direction: pb::listener::Direction::Outbound as i32,
            protocol: pb::Protocol::Http as i32,
            route_table: mesh_proto::names::ANY.into(),
            ..Default::default()
        })
    }));
    snap
}

#[cfg(test)]
mod tests;
