//! What several end-to-end test modules start from: the YAML documents they apply, a meshd on
//! SQLite in a temporary directory, the `Node` of a scripted sidecar, and a flow run once on
//! SQLite and once on PostgreSQL ([`on_both_stores!`](crate::on_both_stores)).

use crate::meshd::{Meshd, MeshdOptions};
use crate::postgres::TempPostgres;
use mesh_proto::v1::Node;

/// A mesh document as text: a newline, `apiVersion`, `kind`, `metadata: {name, namespace}` and
/// `spec:`, then `$spec` (a string literal starting with a newline, indented by two spaces).
#[macro_export]
macro_rules! yaml_doc {
    ($kind:literal, $ns:literal, $name:literal, $spec:literal) => {
        concat!(
            "\napiVersion: mesh.meshd.dev/v1alpha1\nkind: ",
            $kind,
            "\nmetadata: {name: ",
            $name,
            ", namespace: ",
            $ns,
            "}\nspec:",
            $spec
        )
    };
}

/// `Service $ns/$name` as text: http on port 80, selector `app: $name`.
#[macro_export]
macro_rules! http_service_yaml {
    ($ns:literal, $name:literal) => {
        concat!(
            "\napiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: ",
            $name,
            ", namespace: ",
            $ns,
            "}\nspec:\n  ports: [{name: http, port: 80, protocol: http}]\n  selector: {app: ",
            $name,
            "}\n"
        )
    };
}

/// `HTTPRoute a/api-route` (parent `api`) as text, with one rule: `backends: $rule` (and
/// whatever lines `$rule` goes on with).
#[macro_export]
macro_rules! api_route_yaml {
    ($rule:literal) => {
        concat!(
            "\napiVersion: mesh.meshd.dev/v1alpha1\nkind: HTTPRoute\n",
            "metadata: {name: api-route, namespace: a}\nspec:\n  parentRefs: [{name: api}]\n",
            "  rules:\n    - backends: ",
            $rule,
            "\n"
        )
    };
}

/// `Service shop/reviews` as text: ports `http` 9080 and `admin` 9090 (tcp), then the port
/// lines `$more`.
#[macro_export]
macro_rules! reviews_service_yaml {
    ($more:literal) => {
        concat!(
            "\napiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\n",
            "metadata: {name: reviews, namespace: shop}\nspec:\n  ports:\n",
            "    - {name: http, port: 9080, protocol: http}\n",
            "    - {name: admin, port: 9090, protocol: tcp}\n",
            $more,
            "  selector: {app: reviews}\n"
        )
    };
}

/// `Service a/api` (http on 80) and `HTTPRoute a/api-route` to it with a 1 s timeout.
macro_rules! api_yaml {
    () => {
        concat!(
            http_service_yaml!("a", "api"),
            "---",
            api_route_yaml!("[{service: api, port: 80}]\n      timeout: 1s")
        )
    };
}

/// `Service shop/reviews` (http 9080, tcp 9090) and `Service shop/ratings` (http 8080).
macro_rules! shop_services_yaml {
    () => {
        concat!(
            reviews_service_yaml!(""),
            "---",
            yaml_doc!(
                "Service",
                "shop",
                "ratings",
                r#"
  ports: [{name: http, port: 8080, protocol: http}]
  selector: {app: ratings}
"#
            )
        )
    };
}

/// `HTTPRoute shop/reviews`: host `reviews.example.com`, 90 % to reviews, 10 % to ratings.
macro_rules! shop_route_yaml {
    () => {
        yaml_doc!(
            "HTTPRoute",
            "shop",
            "reviews",
            r#"
  hostnames: [reviews.example.com]
  rules:
    - backends:
        - {service: reviews, port: 9080, weight: 90}
        - {service: ratings, port: 8080, weight: 10}
"#
        )
    };
}

/// `Service a/api`, `HTTPRoute a/api-route` (timeout 1s) and `AuthorizationPolicy
/// a/api-policy` allowing namespace `a`.
pub const API_WITH_AUTHZ: &str = concat!(
    api_yaml!(),
    "---",
    yaml_doc!(
        "AuthorizationPolicy",
        "a",
        "api-policy",
        r#"
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{namespaces: [a]}]}]
"#
    )
);

/// `Service a/api`, `HTTPRoute a/api-route` (timeout 1s) and `TlsPolicy a/modern` (TLS 1.3).
pub const API_WITH_TLS_POLICY: &str = concat!(
    api_yaml!(),
    "---",
    yaml_doc!(
        "TlsPolicy",
        "a",
        "modern",
        r#"
  minVersion: "1.3"
"#
    )
);

/// The shop's two services (`shop/reviews`, `shop/ratings`).
pub const SHOP_SERVICES: &str = shop_services_yaml!();

/// The shop's weighted route (`HTTPRoute shop/reviews`).
pub const SHOP_ROUTE: &str = shop_route_yaml!();

/// [`SHOP_SERVICES`] and [`SHOP_ROUTE`] in one text.
pub const SHOP: &str = concat!(shop_services_yaml!(), "---", shop_route_yaml!());

/// A meshd on SQLite in a fresh temporary directory (kept as long as the `TempDir` lives).
pub async fn start_meshd() -> (tempfile::TempDir, Meshd) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (dir, meshd)
}

/// The `Node` a scripted sidecar of `service` in namespace `a` sends (workload `<service>-0`).
pub fn node(id: &str, service: &str) -> Node {
    Node {
        id: id.into(),
        namespace: "a".into(),
        service: service.into(),
        workload: format!("{service}-0"),
        inbound_address: "127.0.0.1:20001".into(),
        proxy_version: "test".into(),
        ..Default::default()
    }
}

/// A temporary PostgreSQL and the options of a meshd that stores in it (keep the first as long
/// as meshd runs).
pub async fn postgres_options() -> (TempPostgres, MeshdOptions) {
    let pg = TempPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let options = MeshdOptions {
        database_url: Some(pg.url()),
        ..MeshdOptions::default()
    };
    (pg, options)
}

/// Two tests of one flow, `async fn flow(MeshdOptions)`: `$sqlite` runs it on SQLite (the
/// default options), `$postgres` on a temporary PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($flow:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $flow($crate::meshd::MeshdOptions::default()).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let (_pg, options) = $crate::fixtures::postgres_options().await;
            $flow(options).await;
        }
    };
}

/// The array `list` of a JSON answer (`body["entries"]`, `body["sidecars"]`, …); panics,
/// showing the answer, when it has none.
pub fn items<'a>(body: &'a serde_json::Value, list: &str) -> &'a [serde_json::Value] {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no array {list:?} in {body}"))
}

/// How many items of the array `list` of `body` have `field` equal to `value` (e.g. audit
/// entries whose `action` is `ca.rotation`).
pub fn count(body: &serde_json::Value, list: &str, field: &str, value: &str) -> usize {
    items(body, list)
        .iter()
        .filter(|e| e[field] == value)
        .count()
}

/// The SPIFFE IDs of workloads `a`, `b` and `c` in namespace `default`.
pub const ID_A: &str = "spiffe://cluster.local/ns/default/sa/a";
pub const ID_B: &str = "spiffe://cluster.local/ns/default/sa/b";
pub const ID_C: &str = "spiffe://cluster.local/ns/default/sa/c";

/// A scripted workload `b-vm` of service `default/b` (identity [`ID_B`]) registered with an
/// address no sidecar can build an endpoint of (`b-vm.internal:15006`): a sidecar that reaches
/// `b` NACKs its Cluster while this stream stays open.
pub async fn b_vm_with_unbuildable_address(meshd: &Meshd) -> crate::sidecar::ScriptedSidecar {
    let creds = crate::sidecar::Credentials::issue(meshd, ID_B)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let node = Node {
        id: "b-vm".into(),
        namespace: "default".into(),
        service: "b".into(),
        inbound_address: "b-vm.internal:15006".into(),
        ..Default::default()
    };
    crate::sidecar::ScriptedSidecar::open(meshd, &creds, true, node, Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The string fields `a` and `b` of every item of the array `list` of `body`, in order; panics,
/// showing the item, when one is missing.
pub fn string_pairs(
    body: &serde_json::Value,
    list: &str,
    a: &str,
    b: &str,
) -> Vec<(String, String)> {
    let text = |item: &serde_json::Value, field: &str| {
        item[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field:?} in {item}"))
            .to_string()
    };
    items(body, list)
        .iter()
        .map(|item| (text(item, a), text(item, b)))
        .collect()
}
