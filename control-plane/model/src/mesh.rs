//! The whole validated model, checked across documents and indexed for the xDS layer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::document::{Document, DocumentKey, Kind, Spec};
use super::error::{ModelError, ModelErrors, Report};
use super::resources::{
    AuthorizationPolicy, HttpRoute, Labels, ObjectRef, Protocol, RateLimitPolicy, RateLimitTarget,
    Selector, Service, ServicePort, Sidecar, TlsPolicy, labels_match,
};
use super::{DEFAULT_CLUSTER_DOMAIN, DEFAULT_ROOT_NAMESPACE, validate};

/// Settings of the model that come from meshd's configuration, not from documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshOptions {
    /// The DNS suffix of service host names: `<svc>.<ns>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Policies here apply to workloads of every namespace (Istio's root namespace).
    pub root_namespace: String,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

/// A workload as policies see it: its namespace and labels (from its registration or its pod).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
    /// The percentage rollouts (`namespace/name` of TlsPolicies with `rolloutPercent`) whose
    /// share includes this sidecar ([`Mesh::rollouts_for`]); a staged policy applies only there.
    pub rollouts: &'a BTreeSet<String>,
}

/// Every document of the mesh, valid as a set: each document passed its own checks, no
/// (kind, namespace, name) appears twice, every reference resolves (route backends and parents
/// to existing services and their HTTP ports, policy selectors to existing services, route-scoped
/// rate limits to existing routes and rules), and no two routes claim the same host name or the
/// same service port.
///
/// A `Mesh` is immutable; a change builds a new one ([`Mesh::with_document`],
/// [`Mesh::without`]), so a snapshot can be shared (`Arc<Mesh>`) while the next one is checked.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    options: MeshOptions,
    documents: BTreeMap<DocumentKey, Document>,
    services: BTreeMap<ObjectRef, Service>,
    routes: BTreeMap<ObjectRef, HttpRoute>,
    authorization_policies: BTreeMap<ObjectRef, AuthorizationPolicy>,
    rate_limit_policies: BTreeMap<ObjectRef, RateLimitPolicy>,
    tls_policies: BTreeMap<ObjectRef, TlsPolicy>,
    sidecars: BTreeMap<ObjectRef, Sidecar>,
    /// Host names listed by routes (exact or `*.` wildcards) → the route.
    hostnames: BTreeMap<String, ObjectRef>,
    /// Service → the routes attached by `parentRefs`, with the port (`None`: every port).
    service_routes: BTreeMap<ObjectRef, Vec<(Option<u16>, ObjectRef)>>,
}

// === impl Mesh ===

impl Mesh {
    /// Builds the model with [`MeshOptions::default`].
    pub fn build(docs: Vec<Document>) -> Result<Mesh, ModelErrors> {
        Self::build_with(MeshOptions::default(), docs)
    }

    /// Checks the set and builds the model, or returns every error found.
    pub fn build_with(options: MeshOptions, docs: Vec<Document>) -> Result<Mesh, ModelErrors> {
        let mut errors = ModelErrors::default();
        let mut documents = BTreeMap::new();
        for doc in docs {
            let key = doc.key();
            if documents.contains_key(&key) {
                errors.push(ModelError {
                    document: key.to_string(),
                    field: "metadata.name".into(),
                    message: format!(
                        "{key} is defined more than once; (kind, namespace, name) must be unique"
                    ),
                });
                continue;
            }
            documents.insert(key, doc);
        }

        let mut mesh = Mesh {
            options,
            ..Mesh::default()
        };
        for (key, doc) in &documents {
            let mut r = Report::new(key.to_string());
            let m = doc.metadata();
            let at = ObjectRef::new(&key.namespace, &key.name);
            match doc.spec() {
                Spec::Service(s) => {
                    if let Some(v) = validate::service(&mut r, m, s) {
                        mesh.services.insert(at, v);
                    }
                }
                Spec::HttpRoute(s) => {
                    if let Some(v) = validate::http_route(&mut r, m, s) {
                        mesh.routes.insert(at, v);
                    }
                }
                Spec::AuthorizationPolicy(s) => {
                    if let Some(v) = validate::authorization_policy(&mut r, m, s) {
                        mesh.authorization_policies.insert(at, v);
                    }
                }
                Spec::RateLimitPolicy(s) => {
                    if let Some(v) = validate::rate_limit_policy(&mut r, m, s) {
                        mesh.rate_limit_policies.insert(at, v);
                    }
                }
                Spec::TlsPolicy(s) => {
                    if let Some(v) = validate::tls_policy(&mut r, m, s) {
                        mesh.tls_policies.insert(at, v);
                    }
                }
                Spec::Sidecar(s) => {
                    if let Some(v) = validate::sidecar(&mut r, m, s) {
                        mesh.sidecars.insert(at, v);
                    }
                }
            }
            errors.extend(r.into_errors());
        }
        mesh.resolve_references(&mut errors);
        mesh.documents = documents;
        errors.into_result(mesh)
    }

    /// The model with `doc` added, or replacing the document with the same key, if the whole
    /// set stays valid. The admin API checks an apply with this before it stores anything.
    pub fn with_document(&self, doc: Document) -> Result<Mesh, ModelErrors> {
        self.with_documents(vec![doc])
    }

    /// As [`Mesh::with_document`], for several documents applied together (one file); a
    /// document given twice here is an error.
    pub fn with_documents(&self, docs: Vec<Document>) -> Result<Mesh, ModelErrors> {
        let mut kept = self.documents.clone();
        for doc in &docs {
            kept.remove(&doc.key());
        }
        let mut set: Vec<Document> = kept.into_values().collect();
        set.extend(docs);
        Self::build_with(self.options.clone(), set)
    }

    /// The model without one document, if the rest stays valid (a Service that a route still
    /// sends to cannot go). Removing a document that is not there changes nothing.
    pub fn without(&self, kind: Kind, namespace: &str, name: &str) -> Result<Mesh, ModelErrors> {
        let key = DocumentKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        if !self.documents.contains_key(&key) {
            return Ok(self.clone());
        }
        let rest = self
            .documents
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, d)| d.clone())
            .collect();
        Self::build_with(self.options.clone(), rest)
    }

    // --- cross-document checks -----------------------------------------------------------

    /// Checks every reference between documents and builds the host and service indexes.
    /// Conflicts are reported on the later document in (namespace, name) order, naming the
    /// earlier one, so the result does not depend on the order documents arrived in.
    fn resolve_references(&mut self, errors: &mut ModelErrors) {
        let mut hostnames: BTreeMap<String, ObjectRef> = BTreeMap::new();
        let mut service_routes: BTreeMap<ObjectRef, Vec<(Option<u16>, ObjectRef)>> =
            BTreeMap::new();

        for route in self.routes.values() {
            let mut r = Report::new(doc_label(Kind::HttpRoute, &route.key()));
            for (i, h) in route.hostnames.iter().enumerate() {
                match hostnames.get(h) {
                    Some(other) => r.error(
                        format!("spec.hostnames[{i}]"),
                        format!("{h:?} is already served by HTTPRoute {other}"),
                    ),
                    None => {
                        hostnames.insert(h.clone(), route.key());
                    }
                }
            }
            for (i, p) in route.parents.iter().enumerate() {
                let f = format!("spec.parentRefs[{i}]");
                let Some(svc) = self.services.get(&p.service) else {
                    r.error(
                        format!("{f}.name"),
                        format!("Service {} does not exist", p.service),
                    );
                    continue;
                };
                match p.port {
                    Some(port) => check_http_port(&mut r, &format!("{f}.port"), svc, port),
                    None if !svc.ports.iter().any(|sp| sp.protocol == Protocol::Http) => r.error(
                        format!("{f}.name"),
                        format!("Service {} has no http port to route", p.service),
                    ),
                    None => {}
                }
                let attached = service_routes.entry(p.service.clone()).or_default();
                let overlap = attached.iter().find(|(port, other)| {
                    *other != route.key() && (port.is_none() || p.port.is_none() || *port == p.port)
                });
                if let Some((_, other)) = overlap {
                    r.error(
                        f,
                        format!(
                            "Service {}{} is already routed by HTTPRoute {other}",
                            p.service,
                            p.port.map(|p| format!(" port {p}")).unwrap_or_default()
                        ),
                    );
                } else {
                    attached.push((p.port, route.key()));
                }
            }
            for (i, rule) in route.rules.iter().enumerate() {
                for (j, b) in rule.backends.iter().enumerate() {
                    let f = format!("spec.rules[{i}].backends[{j}]");
                    match self.services.get(&b.service) {
                        None => r.error(
                            format!("{f}.service"),
                            format!("Service {} does not exist", b.service),
                        ),
                        Some(svc) => check_http_port(&mut r, &format!("{f}.port"), svc, b.port),
                    }
                }
            }
            errors.extend(r.into_errors());
        }

        let selector_service = |r: &mut Report, ns: &str, selector: &Selector| {
            if let Selector::Service(name) = selector {
                let at = ObjectRef::new(ns, name);
                if !self.services.contains_key(&at) {
                    r.error(
                        "spec.selector.service",
                        format!("Service {at} does not exist"),
                    );
                }
            }
        };
        for p in self.authorization_policies.values() {
            let mut r = Report::new(doc_label(
                Kind::AuthorizationPolicy,
                &ObjectRef::new(&p.namespace, &p.name),
            ));
            selector_service(&mut r, &p.namespace, &p.selector);
            errors.extend(r.into_errors());
        }
        for p in self.tls_policies.values() {
            let mut r = Report::new(doc_label(
                Kind::TlsPolicy,
                &ObjectRef::new(&p.namespace, &p.name),
            ));
            selector_service(&mut r, &p.namespace, &p.selector);
            errors.extend(r.into_errors());
        }
        for p in self.sidecars.values() {
            let mut r = Report::new(doc_label(
                Kind::Sidecar,
                &ObjectRef::new(&p.namespace, &p.name),
            ));
            selector_service(&mut r, &p.namespace, &p.selector);
            errors.extend(r.into_errors());
        }
        for p in self.rate_limit_policies.values() {
            let mut r = Report::new(doc_label(
                Kind::RateLimitPolicy,
                &ObjectRef::new(&p.namespace, &p.name),
            ));
            selector_service(&mut r, &p.namespace, &p.selector);
            if let RateLimitTarget::Route { route, rule } = &p.target {
                match self.routes.get(route) {
                    None => r.error("spec.route", format!("HTTPRoute {route} does not exist")),
                    Some(rt) => {
                        if let Some(rule) = rule
                            && rt.rule_named(rule).is_none()
                        {
                            r.error(
                                "spec.rule",
                                format!("HTTPRoute {route} has no rule named {rule:?}"),
                            );
                        }
                    }
                }
            }
            errors.extend(r.into_errors());
        }

        self.hostnames = hostnames;
        self.service_routes = service_routes;
    }

    // --- read access ---------------------------------------------------------------------

    pub fn options(&self) -> &MeshOptions {
        &self.options
    }

    /// The documents, in (kind, namespace, name) order.
    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.documents.values()
    }

    pub fn document(&self, key: &DocumentKey) -> Option<&Document> {
        self.documents.get(key)
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// In (namespace, name) order, as are the other lists.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&ObjectRef::new(namespace, name))
    }

    pub fn routes(&self) -> impl Iterator<Item = &HttpRoute> {
        self.routes.values()
    }

    pub fn route(&self, namespace: &str, name: &str) -> Option<&HttpRoute> {
        self.routes.get(&ObjectRef::new(namespace, name))
    }

    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authorization_policies.values()
    }

    pub fn rate_limit_policies(&self) -> impl Iterator<Item = &RateLimitPolicy> {
        self.rate_limit_policies.values()
    }

    pub fn tls_policies(&self) -> impl Iterator<Item = &TlsPolicy> {
        self.tls_policies.values()
    }

    /// Every host name of a service (see [`Service::hostnames`]) in this mesh's cluster domain.
    pub fn service_hostnames(&self, service: &Service) -> Vec<String> {
        service.hostnames(&self.options.cluster_domain)
    }

    // --- host names ----------------------------------------------------------------------

    /// The service that a Host / `:authority` names, as Kubernetes DNS resolves it for a client
    /// in `client_namespace`: `b` (the client's namespace), `b.ns`, `b.ns.svc`,
    /// `b.ns.svc.<cluster domain>`, each optionally with `:port` and a trailing dot, any case.
    ///
    /// The port: with `:port`, the service's port of that number (and `None` overall if the
    /// service has no such port); without, the service's only port if it has exactly one,
    /// else `None` (the caller knows the port from the listener the request came in on).
    pub fn resolve_host(
        &self,
        host: &str,
        client_namespace: &str,
    ) -> Option<(&Service, Option<&ServicePort>)> {
        let (name, port) = split_host_port(host)?;
        let at = self.service_ref(&name, client_namespace)?;
        let svc = self.services.get(&at)?;
        match port {
            Some(p) => svc.port(p).map(|sp| (svc, Some(sp))),
            None => Some((svc, (svc.ports.len() == 1).then(|| &svc.ports[0]))),
        }
    }

    fn service_ref(&self, host: &str, client_namespace: &str) -> Option<ObjectRef> {
        let labels: Vec<&str> = host.split('.').collect();
        match labels.as_slice() {
            [name] => Some(ObjectRef::new(client_namespace, *name)),
            [name, ns] | [name, ns, "svc"] => Some(ObjectRef::new(*ns, *name)),
            [name, ns, "svc", rest @ ..] if rest.join(".") == self.options.cluster_domain => {
                Some(ObjectRef::new(*ns, *name))
            }
            _ => None,
        }
    }

    /// The route that lists this host name (port ignored): an exact entry first, then the
    /// most specific `*.` wildcard.
    pub fn route_for_hostname(&self, host: &str) -> Option<&HttpRoute> {
        let (name, _) = split_host_port(host)?;
        if let Some(at) = self.hostnames.get(&name) {
            return self.routes.get(at);
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(at) = self.hostnames.get(&format!("*.{parent}")) {
                return self.routes.get(at);
            }
            rest = parent;
        }
        None
    }

    /// The route attached to a service port through `parentRefs` (one attached to every port
    /// of the service, or to this one).
    pub fn route_for_service(&self, service: &ObjectRef, port: Option<u16>) -> Option<&HttpRoute> {
        let attached = self.service_routes.get(service)?;
        attached
            .iter()
            .find(|(p, _)| p.is_none() || (port.is_some() && *p == port))
            .and_then(|(_, at)| self.routes.get(at))
    }

    /// The route for a request's host: by the route's own host names first, then through the
    /// service the host resolves to.
    pub fn route_for_host(&self, host: &str, client_namespace: &str) -> Option<&HttpRoute> {
        self.route_for_hostname(host).or_else(|| {
            let (svc, port) = self.resolve_host(host, client_namespace)?;
            self.route_for_service(&svc.key(), port.map(|p| p.port))
        })
    }

    // --- workloads and policies ----------------------------------------------------------

    /// Whether a policy of `policy_namespace` with `selector` applies to a workload: the
    /// workload is in the policy's namespace (or the policy is in the root namespace), and the
    /// selector matches (no selector: all; `matchLabels`: all labels equal; `service`: the
    /// service's selector matches the workload).
    pub fn selects(&self, policy_namespace: &str, selector: &Selector, w: WorkloadRef<'_>) -> bool {
        let in_scope =
            policy_namespace == w.namespace || policy_namespace == self.options.root_namespace;
        in_scope
            && match selector {
                Selector::All => true,
                Selector::MatchLabels(l) => labels_match(l, w.labels),
                Selector::Service(name) => self
                    .service(policy_namespace, name)
                    .is_some_and(|s| s.selects(w.namespace, w.labels)),
            }
    }

    /// The services a workload serves (their selector matches it).
    pub fn services_of<'a>(&'a self, w: WorkloadRef<'a>) -> impl Iterator<Item = &'a Service> {
        self.services
            .values()
            .filter(move |s| s.selects(w.namespace, w.labels))
    }

    /// Every AuthorizationPolicy that applies to the workload; the sidecar enforces them all.
    pub fn authorization_policies_for(&self, w: WorkloadRef<'_>) -> Vec<&AuthorizationPolicy> {
        self.authorization_policies
            .values()
            .filter(|p| self.selects(&p.namespace, &p.selector, w))
            .collect()
    }

    /// Every RateLimitPolicy that applies to the workload.
    pub fn rate_limit_policies_for(&self, w: WorkloadRef<'_>) -> Vec<&RateLimitPolicy> {
        self.rate_limit_policies
            .values()
            .filter(|p| self.selects(&p.namespace, &p.selector, w))
            .collect()
    }

    /// The one TlsPolicy in effect for a workload (a sidecar holds at most one), or `None` for
    /// the defaults. Of the policies that select it, the most specific wins:
    ///
    /// 1. a policy with a selector over one without (a staged rollout beats the default);
    /// 2. more selector labels over fewer (`service:` counts the service's selector labels);
    /// 3. a percentage rollout over a policy for all (a policy with `rolloutPercent` applies
    ///    only to the sidecars in its share, [`WorkloadRef::rollouts`]);
    /// 4. the workload's own namespace over the root namespace;
    /// 5. then the smallest (namespace, name), so that the choice is stable.
    pub fn tls_policy_for(&self, w: WorkloadRef<'_>) -> Option<&TlsPolicy> {
        self.tls_policies
            .values()
            .filter(|p| self.selects(&p.namespace, &p.selector, w))
            .filter(|p| p.rollout_percent.is_none() || w.rollouts.contains(&p.key()))
            .max_by_key(|p| {
                let (has_selector, labels) = self.specificity(&p.namespace, &p.selector);
                (
                    has_selector,
                    labels,
                    p.rollout_percent.is_some(),
                    p.namespace == w.namespace,
                    Reverse((&p.namespace, &p.name)),
                )
            })
    }

    /// The one Sidecar in effect for a workload, or `None` (it reaches every service). The
    /// most specific wins, as for [`Mesh::tls_policy_for`]: a selector over none, more labels
    /// over fewer, the workload's namespace over the root namespace, then name order.
    pub fn sidecar_for(&self, w: WorkloadRef<'_>) -> Option<&Sidecar> {
        self.sidecars
            .values()
            .filter(|p| self.selects(&p.namespace, &p.selector, w))
            .max_by_key(|p| {
                let (has_selector, labels) = self.specificity(&p.namespace, &p.selector);
                (
                    has_selector,
                    labels,
                    p.namespace == w.namespace,
                    Reverse((&p.namespace, &p.name)),
                )
            })
    }

    /// How specific a selector is: (has one, how many labels it matches on; `service:` counts
    /// the service's selector labels).
    fn specificity(&self, namespace: &str, selector: &Selector) -> (bool, usize) {
        match selector {
            Selector::All => (false, 0),
            Selector::MatchLabels(l) => (true, l.len()),
            Selector::Service(name) => (
                true,
                self.service(namespace, name)
                    .map_or(0, |s| s.selector.len()),
            ),
        }
    }

    /// The percentage rollouts that include a sidecar with rollout bucket `bucket`
    /// ([`rollout_bucket`](super::rollout_bucket)): the TlsPolicies with `rolloutPercent`
    /// above it that select the workload. Empty when no rollout is staged.
    pub fn rollouts_for(&self, namespace: &str, labels: &Labels, bucket: u8) -> BTreeSet<String> {
        let none = BTreeSet::new();
        let w = WorkloadRef {
            namespace,
            labels,
            rollouts: &none,
        };
        self.tls_policies
            .values()
            .filter(|p| p.rollout_percent.is_some_and(|pct| bucket < pct))
            .filter(|p| self.selects(&p.namespace, &p.selector, w))
            .map(TlsPolicy::key)
            .collect()
    }
}

fn doc_label(kind: Kind, at: &ObjectRef) -> String {
    format!("{kind} {at}")
}

fn check_http_port(r: &mut Report, field: &str, svc: &Service, port: u16) {
    match svc.port(port) {
        None => {
            let have: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
            r.error(
                field,
                format!(
                    "Service {} has no port {port} (it has {})",
                    svc.key(),
                    have.join(", ")
                ),
            );
        }
        Some(p) if p.protocol != Protocol::Http => r.error(
            field,
            format!(
                "port {port} of Service {} is tcp; an HTTPRoute can only use http ports",
                svc.key()
            ),
        ),
        Some(_) => {}
    }
}

/// `host[:port]`, lower-cased, without a trailing dot. `None` for an IP literal in brackets,
/// an empty host or a bad port.
fn split_host_port(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim();
    if host.starts_with('[') {
        return None;
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (host, None),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    (!name.is_empty()).then_some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splitting() {
        assert_eq!(
            split_host_port("Reviews.Shop:9080"),
            Some(("reviews.shop".into(), Some(9080)))
        );
        assert_eq!(split_host_port("reviews."), Some(("reviews".into(), None)));
        assert_eq!(split_host_port("[::1]:80"), None);
        assert_eq!(split_host_port("reviews:x"), None);
        assert_eq!(split_host_port("reviews:0"), None);
        assert_eq!(split_host_port(":80"), None);
    }
}
