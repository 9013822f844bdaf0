//! The per-scope view: what the sidecars of one scope (namespace, service, labels) receive,
//! built from the validated model, the connected sidecars (as endpoints) and the trust bundle.
//! This is the mesh.v1 encoder; nothing here knows which source a document came from.

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
pub const DIRECTIVE_NAME: &str = "reissue";

/// The port of a service announced only by its sidecars (no Service document): HTTP on 80.
const IMPLICIT_PORT: u16 = 80;

pub const TRUST_BUNDLE_NAME: &str = "trust-bundle";
pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";
pub const INBOUND_APP_CLUSTER: &str = "inbound|app";

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
            Body::Cluster(cluster(svc, &self.endpoints, port, proto, name))
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
            Body::RouteTable(service_route_table(self.inputs, svc, port, name))
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
            Body::TlsPolicy(tls_policy(p))
        }));
    }
    for p in inputs.mesh.authorization_policies_for(w) {
        let key = format!("{}/{}", p.namespace, p.name);
        snap.insert_resource(shared(ResourceType::AuthorizationPolicy, &key, &|| {
            Body::AuthorizationPolicy(authorization_policy(p))
        }));
    }
    for p in inputs.mesh.rate_limit_policies_for(w) {
        let key = format!("{}/{}", p.namespace, p.name);
        snap.insert_resource(shared(ResourceType::RateLimitPolicy, &key, &|| {
            Body::RateLimitPolicy(rate_limit_policy(p))
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
                    routes: routes_of(route),
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
                    domains: vec!["*".into()],
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
            route_table: "*".into(),
            ..Default::default()
        })
    }));
    snap
}

fn cluster(
    svc: &ServiceView<'_>,
    by_namespace: &HashMap<&str, Vec<&LiveEndpoint>>,
    port: u16,
    proto: pb::Protocol,
    name: &str,
) -> pb::Cluster {
    let mut endpoints: Vec<pb::Endpoint> = by_namespace
        .get(svc.namespace)
        .into_iter()
        .flatten()
        .filter(|e| serves(svc, e) && !e.address.is_empty())
        .map(|e| pb::Endpoint {
            address: e.address.clone(),
            identity: e.identity.clone(),
            labels: e.labels.clone(),
            weight: 1,
            health: pb::EndpointHealth::Healthy as i32,
        })
        .collect();
    let mut c = pb::Cluster {
        name: name.to_string(),
        service: svc.name.to_string(),
        namespace: svc.namespace.to_string(),
        port: u32::from(port),
        protocol: proto as i32,
        lb_policy: pb::cluster::LbPolicy::RoundRobin as i32,
        upstream_tls: pb::cluster::UpstreamTls::Mutual as i32,
        app_protocol: svc
            .ports
            .iter()
            .position(|p| p.0 == port)
            .and_then(|i| svc.app_protocols.get(i))
            .copied()
            .unwrap_or(pb::AppProtocol::Unspecified) as i32,
        connect_timeout_ms: 5000,
        ..Default::default()
    };
    if let Some(doc) = svc.doc {
        endpoints.extend(doc.endpoints.iter().map(|e| {
            pb::Endpoint {
                address: e.address.to_string(),
                identity: e
                    .identity
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                labels: e.labels.clone(),
                weight: e.weight,
                health: pb::EndpointHealth::Healthy as i32,
            }
        }));
        c.lb_policy = match doc.lb_policy {
            model::LbPolicy::RoundRobin => pb::cluster::LbPolicy::RoundRobin,
            model::LbPolicy::LeastRequest => pb::cluster::LbPolicy::LeastRequestP2c,
        } as i32;
        c.upstream_tls = match doc.upstream_tls {
            model::UpstreamTls::Mutual => pb::cluster::UpstreamTls::Mutual,
            model::UpstreamTls::Disabled => pb::cluster::UpstreamTls::Disabled,
        } as i32;
        c.connect_timeout_ms = doc.connect_timeout.as_millis() as u64;
        c.circuit_breaker = doc.circuit_breaker.as_ref().map(|b| pb::CircuitBreaker {
            max_connections: b.max_connections.unwrap_or(0),
            max_pending_requests: b.max_pending_requests.unwrap_or(0),
            max_requests: b.max_requests.unwrap_or(0),
        });
        c.outlier_detection = doc
            .outlier_detection
            .as_ref()
            .map(|o| pb::OutlierDetection {
                consecutive_5xx: o.consecutive_5xx,
                interval_ms: o.interval.as_millis() as u64,
                base_ejection_ms: o.base_ejection_time.as_millis() as u64,
                max_ejection_percent: o.max_ejection_percent,
            });
        c.expected_identities = doc.identities.iter().map(|i| i.to_string()).collect();
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    c.endpoints = endpoints;
    c
}

fn service_route_table(
    inputs: &Inputs<'_>,
    svc: &ServiceView<'_>,
    port: u16,
    name: &str,
) -> pb::RouteTable {
    let mut domains = Vec::new();
    let hostnames = match svc.doc {
        Some(doc) => inputs.mesh.service_hostnames(doc),
        None => vec![
            format!(
                "{}.{}.svc.{}",
                svc.name,
                svc.namespace,
                inputs.mesh.options().cluster_domain
            ),
            format!("{}.{}.svc", svc.name, svc.namespace),
            format!("{}.{}", svc.name, svc.namespace),
            svc.name.to_string(),
        ],
    };
    let default_port = svc.ports.len() == 1 || port == 80;
    for h in hostnames {
        domains.push(format!("{h}:{port}"));
        if default_port {
            domains.push(h);
        }
    }
    let routes = svc
        .doc
        .and_then(|d| inputs.mesh.route_for_service(&d.key(), Some(port)))
        .map(routes_of)
        .unwrap_or_else(|| {
            vec![pb::Route {
                name: "default".into(),
                r#match: Some(pb::RouteMatch {
                    path: Some(pb::route_match::Path::Prefix("/".into())),
                    ..Default::default()
                }),
                backends: vec![pb::WeightedCluster {
                    cluster: name.to_string(),
                    weight: 100,
                }],
                ..Default::default()
            }]
        });
    pb::RouteTable {
        name: name.to_string(),
        virtual_hosts: vec![pb::VirtualHost {
            name: name.to_string(),
            domains,
            routes,
        }],
    }
}

fn routes_of(route: &model::HttpRoute) -> Vec<pb::Route> {
    let mut out = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        // `<ns>/<route>#<rule>`: a RateLimitPolicy names `<ns>/<route>` (every rule) or the
        // whole name (one rule); a rule with several matches becomes `…#<rule>~<j>`.
        let rule_name = format!(
            "{}/{}#{}",
            route.namespace,
            route.name,
            rule.name.clone().unwrap_or_else(|| i.to_string())
        );
        let backends: Vec<pb::WeightedCluster> = rule
            .backends
            .iter()
            .map(|b| pb::WeightedCluster {
                cluster: service_port_name(&b.service.name, &b.service.namespace, b.port),
                weight: b.weight,
            })
            .collect();
        let retry = rule.retry.as_ref().map(|r| pb::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout_ms: r.per_try_timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
            retry_on: r.retry_on.iter().map(|o| o.as_str().to_string()).collect(),
        });
        let timeout_ms = rule.timeout.map(|d| d.as_millis() as u64).unwrap_or(0);
        let matches: Vec<Option<pb::RouteMatch>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches.iter().map(|m| Some(route_match(m))).collect()
        };
        for (j, m) in matches.into_iter().enumerate() {
            out.push(pb::Route {
                name: if j == 0 {
                    rule_name.clone()
                } else {
                    format!("{rule_name}~{j}")
                },
                r#match: Some(m.unwrap_or_else(|| pb::RouteMatch {
                    path: Some(pb::route_match::Path::Prefix("/".into())),
                    ..Default::default()
                })),
                backends: backends.clone(),
                retry: retry.clone(),
                timeout_ms,
            });
        }
    }
    out
}

fn route_match(m: &model::RouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path: m.path.as_ref().map(|p| match p {
            model::PathMatch::Exact(s) => pb::route_match::Path::Exact(s.clone()),
            model::PathMatch::Prefix(s) => pb::route_match::Path::Prefix(s.clone()),
            model::PathMatch::Regex(r) => pb::route_match::Path::Regex(r.as_str().to_string()),
        }),
        headers: m
            .headers
            .iter()
            .map(|h| pb::HeaderMatch {
                name: h.name.clone(),
                r#match: Some(match &h.condition {
                    model::HeaderCondition::Exact(v) => pb::header_match::Match::Exact(v.clone()),
                    model::HeaderCondition::Regex(r) => {
                        pb::header_match::Match::Regex(r.as_str().to_string())
                    }
                    model::HeaderCondition::Present(p) => pb::header_match::Match::Present(*p),
                }),
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}

fn selector(s: &model::Selector) -> Option<pb::WorkloadSelector> {
    match s {
        model::Selector::All => None,
        model::Selector::MatchLabels(l) => Some(pb::WorkloadSelector {
            match_labels: l.clone(),
        }),
        model::Selector::Service(name) => Some(pb::WorkloadSelector {
            match_labels: BTreeMap::from([("service".to_string(), name.clone())]),
        }),
    }
}

fn authorization_policy(p: &model::AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        namespace: p.namespace.clone(),
        selector: selector(&p.selector),
        action: match p.action {
            model::Action::Allow => pb::authorization_policy::Action::Allow,
            model::Action::Deny => pb::authorization_policy::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb::AuthorizationRule {
                from: r
                    .from
                    .iter()
                    .map(|s| pb::Source {
                        principals: s.principals.iter().map(|x| x.to_string()).collect(),
                        namespaces: s.namespaces.clone(),
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|o| pb::Operation {
                        paths: o.paths.iter().map(|x| x.to_string()).collect(),
                        methods: o.methods.clone(),
                        ports: o.ports.iter().map(|x| u32::from(*x)).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn rate_limit_policy(p: &model::RateLimitPolicy) -> pb::RateLimitPolicy {
    let (scope, route) = match &p.target {
        model::RateLimitTarget::Workload => {
            (pb::rate_limit_policy::Scope::PerWorkload, String::new())
        }
        model::RateLimitTarget::Route { route, rule } => (
            pb::rate_limit_policy::Scope::PerRoute,
            // The wire route name: the rule's route name as the view writes it.
            match rule {
                Some(rule) => format!("{}/{}#{rule}", route.namespace, route.name),
                None => format!("{}/{}", route.namespace, route.name),
            },
        ),
    };
    pb::RateLimitPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        namespace: p.namespace.clone(),
        selector: selector(&p.selector),
        requests_per_second: p.requests_per_second,
        burst: p.burst,
        scope: scope as i32,
        route,
    }
}

fn tls_policy(p: &model::TlsPolicy) -> pb::TlsPolicy {
    let version = |v: model::TlsVersion| match v {
        model::TlsVersion::Tls12 => pb::TlsVersion::Tls12,
        model::TlsVersion::Tls13 => pb::TlsVersion::Tls13,
    } as i32;
    pb::TlsPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        min_version: version(p.min_version),
        max_version: version(p.max_version),
        cipher_suites: p
            .cipher_suites
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        key_exchange_groups: p
            .key_exchange_groups
            .iter()
            .map(|g| g.name().to_string())
            .collect(),
        inbound_mode: match p.inbound_mode {
            model::TlsMode::Strict => pb::TlsMode::Strict,
            model::TlsMode::Permissive => pb::TlsMode::Permissive,
            model::TlsMode::Disabled => pb::TlsMode::Disabled,
        } as i32,
        drain_grace_period_ms: p.drain_grace_period.as_millis() as u64,
    }
}
