//! Golden tests of view building over small meshes: which resources each scope holds, with no
//! process and no network.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use super::*;
use crate::model::Document;
use crate::reissue::ReissueTarget;

/// web and api in `a` (api's route splits 90/10 to api and db.b), db in `b`, auth in `shared`,
/// mail (TCP) in `a`, and a root Sidecar: every workload reaches its own namespace and
/// shared/auth.
const MESH: &str = r#"
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: web}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: a}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: api}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: mail, namespace: a}
spec:
  ports: [{name: smtp, port: 25, protocol: tcp}]
  selector: {app: mail}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: b}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: db}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: auth, namespace: shared}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: auth}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-split, namespace: a}
spec:
  parentRefs: [{name: api}]
  rules:
    - backends:
        - {service: api, port: 80, weight: 90}
        - {service: db, namespace: b, port: 80, weight: 10}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: mesh-system}
spec:
  egress: ["./*", "shared/auth"]
"#;

fn endpoint(namespace: &str, service: &str, address: &str) -> LiveEndpoint {
    LiveEndpoint {
        namespace: namespace.into(),
        service: service.into(),
        labels: BTreeMap::from([("app".to_string(), service.to_string())]),
        address: address.into(),
        identity: format!("spiffe://cluster.local/ns/{namespace}/sa/{service}"),
    }
}

fn scope(mesh: &Mesh, namespace: &str, service: &str) -> ScopeKey {
    let labels = BTreeMap::from([("app".to_string(), service.to_string())]);
    ScopeKey::of(mesh, &format!("{service}-1"), namespace, service, &labels)
}

/// The snapshot of `namespace/service` over `mesh` with `endpoints` and `directives`.
fn build_for(
    mesh: &Mesh,
    endpoints: &[LiveEndpoint],
    directives: &[Directive],
    namespace: &str,
    service: &str,
) -> Snapshot {
    let bundle = mesh_ca::CertificateAuthority::generate_root(&mesh_ca::CaOptions::new(
        "cluster.local".parse().unwrap(),
    ))
    .unwrap()
    .bundle();
    let inputs = Inputs {
        trust_domain: "cluster.local",
        mesh,
        bundle: &bundle,
        endpoints,
        directives,
    };
    let snap = build(
        &Prepared::new(&inputs),
        &scope(mesh, namespace, service),
        Instant::now(),
    );
    assert_eq!(snap.check_consistent(), Ok(()), "{namespace}/{service}");
    snap
}

fn names(snap: &Snapshot, ty: ResourceType) -> Vec<String> {
    snap.resources(ty).map(|r| r.name.clone()).collect()
}

fn mesh() -> Mesh {
    Mesh::build(Document::parse_yaml(MESH).unwrap()).unwrap()
}

#[test]
fn a_sidecar_egress_limits_a_scope_to_what_it_reaches_and_the_clusters_its_routes_split_to() {
    let mesh = mesh();
    let snap = build_for(&mesh, &[], &[], "a", "web");
    // Its own namespace and shared/auth; db.b only as the cluster api's route splits to, not
    // with a route of its own.
    assert_eq!(
        names(&snap, ResourceType::Cluster),
        [
            "api.a:80",
            "auth.shared:80",
            "db.b:80",
            "inbound|app",
            "mail.a:25",
            "web.a:80"
        ]
    );
    assert_eq!(
        names(&snap, ResourceType::RouteTable),
        ["api.a:80", "auth.shared:80", "inbound", "web.a:80"]
    );
    let Some(Body::RouteTable(api)) = &snap.get(ResourceType::RouteTable, "api.a:80").unwrap().body
    else {
        panic!("a route table");
    };
    let split: Vec<(String, u32)> = api.virtual_hosts[0].routes[0]
        .backends
        .iter()
        .map(|b| (b.cluster.clone(), b.weight))
        .collect();
    assert_eq!(
        split,
        [("api.a:80".to_string(), 90), ("db.b:80".to_string(), 10)]
    );
    // A workload of another namespace reaches its own and shared/auth only.
    let db = build_for(&mesh, &[], &[], "b", "db");
    assert_eq!(
        names(&db, ResourceType::Cluster),
        ["auth.shared:80", "db.b:80", "inbound|app"]
    );
}

#[test]
fn a_service_without_a_document_is_http_on_port_80_from_its_sidecars() {
    let mesh = mesh();
    let endpoints = [
        endpoint("a", "cache", "10.0.0.7:15006"),
        endpoint("a", "api", "10.0.0.8:15006"),
    ];
    let snap = build_for(&mesh, &endpoints, &[], "a", "web");
    let Some(Body::Cluster(cache)) = &snap.get(ResourceType::Cluster, "cache.a:80").unwrap().body
    else {
        panic!(
            "an implicit cluster: {:?}",
            names(&snap, ResourceType::Cluster)
        );
    };
    assert_eq!(cache.protocol, pb::Protocol::Http as i32);
    let addresses: Vec<&str> = cache.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["10.0.0.7:15006"]);
    // The documented service keeps its own endpoints; the implicit one is routed too.
    let Some(Body::Cluster(api)) = &snap.get(ResourceType::Cluster, "api.a:80").unwrap().body
    else {
        panic!("api's cluster");
    };
    assert_eq!(api.endpoints.len(), 1);
    assert!(names(&snap, ResourceType::RouteTable).contains(&"cache.a:80".to_string()));
}

#[test]
fn the_sidecars_own_listener_follows_its_service_protocol() {
    let mesh = mesh();
    let listener =
        |snap: &Snapshot, name: &str| match &snap.get(ResourceType::Listener, name).unwrap().body {
            Some(Body::Listener(l)) => l.clone(),
            _ => panic!("listener {name}"),
        };
    // HTTP: the inbound listener routes through the "inbound" table to the app.
    let web = build_for(&mesh, &[], &[], "a", "web");
    let inbound = listener(&web, INBOUND);
    assert_eq!(inbound.route_table, INBOUND);
    assert!(inbound.default_cluster.is_empty());
    assert_eq!(listener(&web, OUTBOUND).route_table, "*");
    // TCP: straight to the app's cluster, no route table.
    let mail = build_for(&mesh, &[], &[], "a", "mail");
    let inbound = listener(&mail, INBOUND);
    assert!(inbound.route_table.is_empty());
    assert_eq!(inbound.default_cluster, INBOUND_APP_CLUSTER);
    assert!(!names(&mail, ResourceType::RouteTable).contains(&INBOUND.to_string()));
    // A client-only workload (no service): no inbound side at all.
    let client = build_for(&mesh, &[], &[], "a", "");
    assert_eq!(names(&client, ResourceType::Listener), [OUTBOUND]);
    assert!(!names(&client, ResourceType::Cluster).contains(&INBOUND_APP_CLUSTER.to_string()));
}

#[test]
fn a_scope_holds_the_newest_directive_that_concerns_it_and_the_trust_bundle() {
    let mesh = mesh();
    let directive = |generation, target| Directive {
        generation,
        target,
        reissue_before: 100,
        issued_before: 50,
        reason: format!("d{generation}"),
    };
    let directives = [
        directive(1, ReissueTarget::All),
        directive(2, ReissueTarget::Namespace("a".into())),
        directive(
            3,
            ReissueTarget::Workload {
                namespace: "b".into(),
                service: "db".into(),
            },
        ),
    ];
    let reason = |snap: &Snapshot| match &snap
        .get(ResourceType::IdentityDirective, DIRECTIVE_NAME)
        .and_then(|r| r.body.clone())
    {
        Some(Body::IdentityDirective(d)) => d.reason.clone(),
        _ => panic!("a directive"),
    };
    assert_eq!(
        reason(&build_for(&mesh, &[], &directives, "a", "web")),
        "d2"
    );
    assert_eq!(reason(&build_for(&mesh, &[], &directives, "b", "db")), "d3");
    assert_eq!(
        reason(&build_for(&mesh, &[], &directives, "shared", "auth")),
        "d1"
    );
    let snap = build_for(&mesh, &[], &[], "a", "web");
    assert_eq!(names(&snap, ResourceType::TrustBundle), [TRUST_BUNDLE_NAME]);
    assert!(names(&snap, ResourceType::IdentityDirective).is_empty());
}
