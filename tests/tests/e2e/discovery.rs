//! The discovery protocol against a real meshd, with scripted sidecars on real mTLS streams:
//! scoping, deltas, ACK/NACK and sync state, reconnects, removals, restarts. SQLite and
//! PostgreSQL.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_proto::v1::Node;
use mesh_proto::{
    ALL_TYPE_URLS, AUTHORIZATION_POLICY_TYPE_URL as AUTHZ, CLUSTER_TYPE_URL as CLUSTER,
    ROUTE_TABLE_TYPE_URL as ROUTES,
};
use mesh_tests::fixtures::API_WITH_AUTHZ as SERVICES;
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::sidecar::{Credentials, ScriptedSidecar};
use std::time::Duration;

fn route(timeout: &str) -> String {
    format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{name: api-route, namespace: a}}\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n    - backends: [{{service: api, port: 80}}]\n      timeout: {timeout}\n"
    )
}

fn node(id: &str, namespace: &str, service: &str) -> Node {
    Node {
        id: id.into(),
        namespace: namespace.into(),
        service: service.into(),
        workload: format!("{service}-0"),
        inbound_address: format!("127.0.0.1:{}", 20000 + id.len()),
        proxy_version: "test".into(),
        ..Default::default()
    }
}

/// Opens a stream, subscribes to every type and ACKs each first response.
async fn connect(
    meshd: &Meshd,
    creds: &Credentials,
    node: Node,
    holds: Option<&ScriptedSidecar>,
) -> ScriptedSidecar {
    let held = holds.map(|old| old.holds.clone()).unwrap_or_default();
    let mut s = ScriptedSidecar::open(meshd, creds, true, node, held)
        .await
        .unwrap();
    s.subscribe_all().await.unwrap();
    s
}

/// Receives the first response of every type (in any order), ACKing each; returns them.
async fn first_responses(s: &mut ScriptedSidecar) -> Vec<mesh_proto::v1::DiscoveryResponse> {
    let mut out = Vec::new();
    while out.len() < ALL_TYPE_URLS.len() {
        let r = s.recv().await.unwrap();
        s.ack(&r).await.unwrap();
        out.push(r);
    }
    out
}

async fn sidecar_status(meshd: &Meshd, id: &str) -> serde_json::Value {
    let all = meshd.admin_get("/api/v1/sidecars").await;
    all["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_default()
}

async fn type_state(meshd: &Meshd, id: &str, type_url: &str) -> (String, Option<String>) {
    let s = sidecar_status(meshd, id).await;
    let t = s["types"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["type_url"] == type_url).cloned());
    match t {
        Some(t) => (
            t["state"].as_str().unwrap_or("").to_string(),
            t["nack"].as_str().map(str::to_string),
        ),
        None => (String::new(), None),
    }
}

async fn wait_state(meshd: &Meshd, id: &str, type_url: &str, want: &str) {
    mesh_tests::wait::until(
        &format!("{id} {type_url} {want}"),
        Duration::from_secs(20),
        || async { (type_state(meshd, id, type_url).await.0 == want).then_some(()) },
    )
    .await
    .unwrap();
}

async fn protocol(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let mut meshd = Meshd::start(dir.path(), &options).await.unwrap();
    meshd.apply(SERVICES).await;

    let web_creds = Credentials::issue(&meshd, "spiffe://cluster.local/ns/a/sa/web")
        .await
        .unwrap();
    let api_creds = Credentials::issue(&meshd, "spiffe://cluster.local/ns/a/sa/api")
        .await
        .unwrap();

    // No client certificate: refused.
    let mut anonymous = ScriptedSidecar::open(
        &meshd,
        &web_creds,
        false,
        node("anon", "a", "web"),
        Default::default(),
    )
    .await;
    match &mut anonymous {
        Ok(s) => assert_eq!(s.recv_status().await.code(), tonic::Code::Unauthenticated),
        Err(e) => assert!(
            format!("{e:#}").contains("Unauthenticated") || format!("{e:#}").contains("mTLS"),
            "{e:#}"
        ),
    }

    // First responses hold the scoped resources; the web workload gets no policy of api.
    let mut web = connect(&meshd, &web_creds, node("web-1", "a", "web"), None).await;
    let web_first = first_responses(&mut web).await;
    let mut api = connect(&meshd, &api_creds, node("api-1", "a", "api"), None).await;
    let api_first = first_responses(&mut api).await;
    let names = |rs: &[mesh_proto::v1::DiscoveryResponse], ty: &str| -> Vec<String> {
        rs.iter()
            .filter(|r| r.type_url == ty)
            .flat_map(|r| r.resources.iter().map(|x| x.name.clone()))
            .collect()
    };
    assert_eq!(names(&api_first, AUTHZ), vec!["a/api-policy".to_string()]);
    assert!(
        names(&web_first, AUTHZ).is_empty(),
        "web is not selected by api-policy"
    );
    let bundle = web_first
        .iter()
        .flat_map(|r| &r.resources)
        .find_map(|r| match &r.body {
            Some(mesh_proto::v1::resource::Body::TrustBundle(b)) => Some(b.clone()),
            _ => None,
        })
        .expect("a trust bundle");
    assert_eq!(bundle.trust_domain, "cluster.local");
    assert_eq!(bundle.roots.len(), 1);
    assert!(
        names(&web_first, ROUTES).contains(&"api.a:80".to_string()),
        "{:?}",
        names(&web_first, ROUTES)
    );
    // The api sidecar became an endpoint: web hears of it.
    let c = web.recv_type(CLUSTER).await.unwrap();
    assert!(c.resources.iter().any(|r| r.name == "api.a:80"), "{c:?}");
    web.ack(&c).await.unwrap();
    // ACK → SYNCED.
    wait_state(&meshd, "web-1", ROUTES, "SYNCED").await;
    wait_state(&meshd, "web-1", CLUSTER, "SYNCED").await;

    // A change to the policy reaches only the sidecar it selects …
    meshd
        .apply(&SERVICES.replace("namespaces: [a]", "namespaces: [a, b]"))
        .await;
    let r = api.recv_type(AUTHZ).await.unwrap();
    assert_eq!(r.resources.len(), 1);
    api.ack(&r).await.unwrap();
    // … and a change to one route sends only that route table (web gets it next, not the policy).
    meshd.apply(&route("2s")).await;
    let r = web.recv().await.unwrap();
    assert_eq!(
        r.type_url, ROUTES,
        "web's next response is the route change, nothing else came first"
    );
    assert_eq!(
        r.resources
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>(),
        vec!["api.a:80"]
    );
    assert!(r.removed_resources.is_empty());

    // NACK: NACKED with the error text in the admin API, until a later good version is ACKed.
    web.nack(&r, "api.a:80: route \"x\": cannot build")
        .await
        .unwrap();
    wait_state(&meshd, "web-1", ROUTES, "NACKED").await;
    let (_, text) = type_state(&meshd, "web-1", ROUTES).await;
    assert_eq!(text.as_deref(), Some("api.a:80: route \"x\": cannot build"));
    let r2 = api.recv_type(ROUTES).await.unwrap();
    api.ack(&r2).await.unwrap();
    meshd.apply(&route("3s")).await;
    let fixed = web.recv_type(ROUTES).await.unwrap();
    assert_eq!(
        fixed.resources.len(),
        1,
        "the NACKed route table is sent again"
    );
    assert_eq!(
        type_state(&meshd, "web-1", ROUTES).await.0,
        "NACKED",
        "still NACKED before the ACK"
    );
    web.ack(&fixed).await.unwrap();
    wait_state(&meshd, "web-1", ROUTES, "SYNCED").await;
    let r3 = api.recv_type(ROUTES).await.unwrap();
    api.ack(&r3).await.unwrap();

    // Deletion → removed_resources.
    let deleted = reqwest::Client::new()
        .delete(format!(
            "http://{}/api/v1/documents/AuthorizationPolicy/a/api-policy",
            meshd.admin_addr
        ))
        .bearer_auth(meshd.admin_token())
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let removed = api.recv_type(AUTHZ).await.unwrap();
    assert_eq!(removed.removed_resources, vec!["a/api-policy".to_string()]);
    assert!(removed.resources.is_empty());
    api.ack(&removed).await.unwrap();

    // Reconnect with the versions held: every first response is empty.
    let mut web2 = connect(&meshd, &web_creds, node("web-1", "a", "web"), Some(&web)).await;
    drop(web);
    for r in first_responses(&mut web2).await {
        assert!(
            r.resources.is_empty() && r.removed_resources.is_empty(),
            "resent after reconnect: {r:?}"
        );
    }

    // Restart meshd on the same data: the sidecars reconnect without a full resend.
    let status = meshd.process.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success());
    meshd = Meshd::start(dir.path(), &options).await.unwrap();
    let mut web3 = connect(&meshd, &web_creds, node("web-1", "a", "web"), Some(&web2)).await;
    drop(web2);
    let mut resent = Vec::new();
    for r in first_responses(&mut web3).await {
        resent.extend(
            r.resources
                .iter()
                .map(|x| format!("{}/{}", r.type_url, x.name)),
        );
        resent.extend(
            r.removed_resources
                .iter()
                .map(|x| format!("removed {}/{}", r.type_url, x)),
        );
    }
    // Only what depends on live endpoints may differ (api's sidecar has not reconnected yet).
    assert!(
        resent.iter().all(|x| x.starts_with(CLUSTER)),
        "resent after restart: {resent:?}"
    );
    assert!(resent.len() <= 1, "{resent:?}");
}

mesh_tests::on_both_stores!(protocol: sqlite_discovery_protocol, postgres_discovery_protocol);

/// Receives and ACKs until the sidecar holds exactly `want` of `type_url`.
async fn hold_exactly(s: &mut ScriptedSidecar, type_url: &str, want: &[&str]) {
    let held = |s: &ScriptedSidecar| -> Vec<String> {
        s.holds
            .get(type_url)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        while held(s) != want {
            let r = s.recv().await?;
            s.ack(&r).await?;
        }
        anyhow::Ok(())
    })
    .await;
    assert!(
        matches!(reached, Ok(Ok(()))),
        "{type_url}: want {want:?}, holds {:?} ({reached:?})",
        held(s)
    );
}

const SCOPED: &str = concat!(
    mesh_tests::http_service_yaml!("a", "api"),
    "---",
    mesh_tests::http_service_yaml!("b", "db"),
    "---",
    mesh_tests::http_service_yaml!("shared", "auth"),
    "---",
    mesh_tests::api_route_yaml!(
        "[{service: api, port: 80, weight: 90}, {service: db, namespace: b, port: 80, weight: 10}]"
    )
);

fn sidecar_doc(egress: &str) -> String {
    format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Sidecar\nmetadata: {{name: default, namespace: a}}\nspec:\n  egress: {egress}\n"
    )
}

#[tokio::test]
async fn a_sidecar_document_limits_a_workload_to_the_services_it_reaches() {
    let (_dir, meshd) = mesh_tests::fixtures::start_meshd().await;
    meshd
        .apply(&format!("{SCOPED}---\n{}", sidecar_doc("[\"./*\"]")))
        .await;
    let creds = Credentials::issue(&meshd, "spiffe://cluster.local/ns/a/sa/web")
        .await
        .unwrap();
    let mut web = connect(&meshd, &creds, node("web-1", "a", "web"), None).await;

    // Its own namespace: api, and its own service (announced by its registration); db only as
    // the cluster api's route splits to, not as a route of its own; never auth.
    hold_exactly(
        &mut web,
        CLUSTER,
        &["api.a:80", "db.b:80", "inbound|app", "web.a:80"],
    )
    .await;
    hold_exactly(&mut web, ROUTES, &["api.a:80", "inbound", "web.a:80"]).await;

    // The egress names the shared auth service too: it arrives, nothing else changes.
    meshd
        .apply(&sidecar_doc("[\"./*\", \"shared/auth\"]"))
        .await;
    hold_exactly(
        &mut web,
        CLUSTER,
        &[
            "api.a:80",
            "auth.shared:80",
            "db.b:80",
            "inbound|app",
            "web.a:80",
        ],
    )
    .await;
    hold_exactly(
        &mut web,
        ROUTES,
        &["api.a:80", "auth.shared:80", "inbound", "web.a:80"],
    )
    .await;

    // Without a Sidecar document, every service of the mesh.
    let mut delete = meshd.meshctl();
    delete.args(["delete", "sidecar/default", "-n", "a"]);
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || mesh_tests::process::run(delete))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    hold_exactly(
        &mut web,
        ROUTES,
        &[
            "api.a:80",
            "auth.shared:80",
            "db.b:80",
            "inbound",
            "web.a:80",
        ],
    )
    .await;
    wait_state(&meshd, "web-1", ROUTES, "SYNCED").await;

    // A bad egress is refused with the entry named, and nothing changes.
    let refused = meshd
        .try_apply(&sidecar_doc("[\"shop\"]"))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("spec.egress[0]")
            && format!("{refused:#}").contains("expected NAMESPACE/SERVICE"),
        "{refused:#}"
    );
    // Every snapshot of those scopes passed the consistency check (a failed one is not
    // published: the pushes above would have been missing).
    let metrics = meshd.admin_get_text("/metrics").await;
    assert!(
        metrics.contains("meshd_inconsistent_snapshots_total 0"),
        "{metrics}"
    );
}
