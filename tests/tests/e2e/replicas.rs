//! Several meshd replicas on one PostgreSQL: four real sidecars spread over two replicas (each
//! knows both and fails over), a steady request loop between them that counts every failure.
//! A document applied on one replica reaches the sidecars of the other; a CA rotation started
//! on any replica is driven by the one holding the lease, gated on the sidecars of both; when
//! that replica dies mid-rotation, the other takes the lease and finishes it.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::meshd::Meshd;
use mesh_tests::postgres::TempPostgres;
use mesh_tests::proxy::{Proxy, issue_cert};
use mesh_tests::ring::{
    NAMES, Ring, RotationCas, identity, openssl_verify, pem_blocks, root_fingerprints,
};
use mesh_tests::wait;
use serde_json::Value;
use std::time::Duration;

/// How long a whole rotation may take in a test (debug build, loaded 2-core machine; a dead
/// replica's sidecars count until its heartbeat is 15 s old).
const ROTATION_DEADLINE: Duration = Duration::from_secs(180);

async fn two_replicas(dir: &std::path::Path) -> (TempPostgres, Ring) {
    let pg = TempPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ring = Ring::start_replicas(dir, &pg.url(), 2).await;
    (pg, ring)
}

/// The identities of the sidecars connected to `replica`.
async fn connected_to(replica: &Meshd) -> Vec<String> {
    replica.admin_get("/api/v1/sidecars").await["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["identity"].as_str().unwrap().to_string())
        .collect()
}

/// `POST /api/v1/ca/rotation` on `replica` (automatic, re-issues staggered over `window`).
async fn start_rotation(replica: &Meshd, window: &str) -> Value {
    post(replica, "", serde_json::json!({ "window": window }), 201).await
}

/// `POST /api/v1/ca/rotation{path}` on `replica` with `body`; the answer, which must have
/// `status`.
async fn post(replica: &Meshd, path: &str, body: Value, status: u16) -> Value {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/ca/rotation{path}",
            replica.admin_addr
        ))
        .bearer_auth(replica.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let got = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(got, status, "POST /api/v1/ca/rotation{path}: {body}");
    body
}

/// The replica that drives rotations (exactly one of `replicas` says so), waiting for the
/// lease to settle.
async fn leader<'a>(ring: &Ring, replicas: &[&'a Meshd]) -> &'a Meshd {
    wait::until(
        "exactly one replica to drive the rotation",
        ROTATION_DEADLINE,
        || async {
            let mut driving = Vec::new();
            for r in replicas {
                if r.admin_get("/api/v1/ca/rotation").await["driven_here"] == true {
                    driving.push(*r);
                }
            }
            (driving.len() == 1).then(|| driving[0])
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ring.logs()))
}

#[tokio::test]
async fn a_document_applied_on_one_replica_reaches_the_sidecars_of_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, ring) = two_replicas(dir.path()).await;
    let (a, b) = (&ring.meshd, &ring.others[0]);
    // Sidecar "b" started on replica b, and stays there.
    assert!(
        connected_to(b).await.contains(&identity("b")),
        "{:?}",
        connected_to(b).await
    );
    assert!(!connected_to(a).await.contains(&identity("b")));
    // Each replica lists its own sidecars, and says how many the other holds.
    let on_b = connected_to(b).await.len() as u64;
    let counted = wait::until("a to count b's sidecars", ROTATION_DEADLINE, || async {
        let listed = a.admin_get("/api/v1/sidecars").await;
        (listed["elsewhere"].as_u64() == Some(on_b)).then_some(())
    })
    .await;
    assert!(counted.is_ok(), "{}", ring.logs());
    let mut status = a.meshctl();
    status.args(["status"]);
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || mesh_tests::process::run(status))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{on_b} more sidecar(s) are connected to other meshd replicas"
        )),
        "{stderr}"
    );

    a.apply(&format!(
        r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: b-deny-a, namespace: default}}
spec:
  selector: {{matchLabels: {{app: b}}}}
  action: DENY
  rules: [{{from: [{{principals: ["{}"]}}]}}]
"#,
        identity("a")
    ))
    .await;
    // Sidecar b (on replica b) holds the policy, and enforces it.
    ring.proxies[1]
        .wait_config("sidecar b to hold the policy applied on replica a", |d| {
            Proxy::resources(d, "AuthorizationPolicy").len() == 1
        })
        .await;
    ring.proxies[0].get_until("b", "/", 403).await;
    ring.proxies[2].get_until("d", "/", 200).await;
    // Replica b serves the document too (its model was rebuilt from the store).
    let docs = b.admin_get("/api/v1/documents").await.to_string();
    assert!(docs.contains("b-deny-a"), "{docs}");
}

#[tokio::test]
async fn a_rotation_started_on_any_replica_completes_on_both_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, ring) = two_replicas(dir.path()).await;
    let replicas: Vec<&Meshd> = ring.replicas().collect();
    for (i, r) in replicas.iter().enumerate() {
        assert!(
            !connected_to(r).await.is_empty(),
            "replica {i} holds sidecars"
        );
    }
    let old_roots = root_fingerprints(&ring.meshd.admin_get("/api/v1/ca").await);
    let driver = leader(&ring, &replicas).await;
    // Started on the replica that does not drive it.
    let follower = *replicas
        .iter()
        .find(|r| r.admin_addr != driver.admin_addr)
        .unwrap();
    let before = ring.ca_subjects().await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let handshakes_before = ring.handshakes().await;
    let started = start_rotation(follower, "6s").await;
    assert_eq!(started["phase"], "prepare", "{started}");
    let new_root = started["new_root"].as_str().unwrap().to_string();
    let cas = RotationCas::new_root(&before, &ring.ca_subjects().await.1);

    // Each replica reports the rotation done: they agree.
    for r in &replicas {
        let done = ring
            .wait_rotation_on(r, "the rotation to be done", ROTATION_DEADLINE, |s| {
                s["phase"] == "done"
            })
            .await;
        assert_eq!(done["new_root"], new_root.as_str(), "{done}");
    }
    // The sidecars of both replicas made new handshakes with each other in every phase.
    ring.wait_handshakes(
        "handshakes of every phase",
        &handshakes_before,
        ROTATION_DEADLINE,
        |h| cas.prepare_seen(h) && cas.switch_seen(h) && cas.finalize_seen(h),
    )
    .await;
    traffic.finish(100, String::new).await;

    // Both replicas' bundles (API and file) hold only the new root.
    for r in &replicas {
        wait::until(
            "every replica's bundle to hold only the new root",
            ROTATION_DEADLINE,
            || async {
                (root_fingerprints(&r.admin_get("/api/v1/ca").await) == [new_root.clone()])
                    .then_some(())
            },
        )
        .await
        .unwrap();
        assert_eq!(pem_blocks(&r.bundle_pem()).len(), 1);
    }
    assert_ne!(old_roots, std::slice::from_ref(&new_root));
    assert_eq!(ring.meshd.bundle_pem(), ring.others[0].bundle_pem());
    // Each replica serves TLS under the new root and signs with the new CA: `meshctl cert
    // issue` against it checks its certificate with the new bundle only.
    for (i, r) in replicas.iter().enumerate() {
        let dir = ring.dir.join(format!("checker-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, _) = issue_cert(r, &identity("checker"), &dir).await;
        let (ok, text) = openssl_verify(&r.data_dir.join("ca-bundle.pem"), &cert);
        assert!(ok, "replica {i} signed under the new root: {text}");
    }
    // The leader's audit shows the phases once, from the one driver.
    let audit = ring.meshd.admin_get("/api/v1/audit?limit=200").await;
    let phases: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ca.rotation" && e["actor"] == "system")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases.iter().filter(|d| **d == "phase done").count(),
        1,
        "{phases:?}"
    );
}

#[tokio::test]
async fn the_other_replica_finishes_a_rotation_when_its_driver_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut ring) = two_replicas(dir.path()).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let driver_addr = {
        let replicas: Vec<&Meshd> = ring.replicas().collect();
        leader(&ring, &replicas).await.admin_addr.clone()
    };
    let before = ring.ca_subjects().await;
    let handshakes_before = ring.handshakes().await;
    // A long window: the switch phase lasts long enough to lose its driver in the middle.
    let started = start_rotation(&ring.meshd, "20s").await;
    let new_root = started["new_root"].as_str().unwrap().to_string();
    let cas = RotationCas::new_root(&before, &ring.ca_subjects().await.1);
    // Mid-rotation: the new CA signs, sidecars are re-issuing.
    ring.wait_rotation("the switch phase", ROTATION_DEADLINE, |s| {
        s["phase"] == "switch"
    })
    .await;
    let (dead, survivor) = if ring.meshd.admin_addr == driver_addr {
        ring.meshd.process.kill();
        (0, &ring.others[0])
    } else {
        ring.others[0].process.kill();
        (1, &ring.meshd)
    };
    let done = ring
        .wait_rotation_on(
            survivor,
            "the surviving replica to drive the rotation to its end",
            ROTATION_DEADLINE,
            |s| s["phase"] == "done" && s["driven_here"] == true,
        )
        .await;
    assert_eq!(done["new_root"], new_root.as_str(), "{done}");
    assert_eq!(
        root_fingerprints(&survivor.admin_get("/api/v1/ca").await),
        [new_root]
    );
    // The survivor took the lease and moved the machine on itself.
    let log = survivor.process.log();
    assert!(
        log.contains("this replica drives CA rotations now")
            && log.contains("CA rotation moved on"),
        "{log}"
    );
    // Every sidecar now talks to the survivor.
    wait::until(
        "every sidecar to be connected to the surviving replica",
        ROTATION_DEADLINE,
        || async { (connected_to(survivor).await.len() == NAMES.len()).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e} (replica {dead} died)\n{}", ring.logs()));
    ring.wait_handshakes(
        "handshakes of every phase, across the driver's death",
        &handshakes_before,
        ROTATION_DEADLINE,
        |h| cas.prepare_seen(h) && cas.switch_seen(h) && cas.finalize_seen(h),
    )
    .await;
    traffic.finish(100, String::new).await;
}

#[tokio::test]
async fn a_manual_rotation_is_steered_from_either_replica_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, ring) = two_replicas(dir.path()).await;
    let (a, b) = (&ring.meshd, &ring.others[0]);
    let old_bundle = a.bundle_pem();
    let before = ring.ca_subjects().await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let at_prepare = ring.handshakes().await;
    let gate_met = |phase: &'static str| {
        move |s: &Value| {
            s["phase"] == phase
                && s["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.contains("rotate next"))
        }
    };

    // Started on b; each command goes to the other replica than the one before.
    let started = post(
        b,
        "",
        serde_json::json!({ "manual": true, "window": "6s" }),
        201,
    )
    .await;
    assert_eq!(started["phase"], "prepare", "{started}");
    let cas = RotationCas::new_root(&before, &ring.ca_subjects().await.1);
    // A second start, on a, sees the rotation b started.
    let busy = post(a, "", serde_json::json!({ "window": "3s" }), 409).await;
    assert!(busy.to_string().contains("already under way"), "{busy}");
    ring.wait_rotation_on(
        a,
        "prepare's gate, seen on a",
        ROTATION_DEADLINE,
        gate_met("prepare"),
    )
    .await;
    let paused = post(a, "/pause", serde_json::json!({}), 200).await;
    assert_eq!(paused["paused"], true, "{paused}");
    // Paused, as b sees it: `next` is refused there.
    ring.wait_rotation_on(b, "b to see the pause", ROTATION_DEADLINE, |s| {
        s["paused"] == true
    })
    .await;
    post(b, "/next", serde_json::json!({}), 409).await;
    post(b, "/resume", serde_json::json!({}), 200).await;
    ring.wait_handshakes(
        "prepare: old certificates under both roots",
        &at_prepare,
        ROTATION_DEADLINE,
        |h| cas.prepare_seen(h),
    )
    .await;
    let at_switch = ring.handshakes().await;
    let switched = post(a, "/next", serde_json::json!({}), 200).await;
    assert_eq!(switched["phase"], "switch", "{switched}");
    ring.wait_rotation_on(b, "a first re-issue, seen on b", ROTATION_DEADLINE, |s| {
        s["phase"] == "switch" && s["progress"]["done"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    ring.wait_handshakes(
        "switch: old and new certificates meet both ways",
        &at_switch,
        ROTATION_DEADLINE,
        |h| cas.switch_seen(h),
    )
    .await;
    let back = post(b, "/rollback", serde_json::json!({}), 200).await;
    assert_eq!(back["phase"], "rolling-back", "{back}");
    ring.wait_rotation_on(
        a,
        "rolling back's gate, seen on a",
        ROTATION_DEADLINE,
        gate_met("rolling-back"),
    )
    .await;
    let at_rolled_back = ring.handshakes().await;
    let over = post(a, "/next", serde_json::json!({}), 200).await;
    assert_eq!(over["phase"], "rolled-back", "{over}");

    for r in [a, b] {
        ring.wait_rotation_on(
            r,
            "the rotation to be rolled back",
            ROTATION_DEADLINE,
            |s| s["phase"] == "rolled-back",
        )
        .await;
        wait::until(
            "every replica's bundle to hold only the old root again",
            ROTATION_DEADLINE,
            || async { (r.bundle_pem() == old_bundle).then_some(()) },
        )
        .await
        .unwrap();
    }
    ring.wait_handshakes(
        "rolled back: old certificates under the old root alone",
        &at_rolled_back,
        ROTATION_DEADLINE,
        |h| cas.rolled_back_seen(h),
    )
    .await;
    traffic.finish(100, String::new).await;
}

/// A forced re-issue (after a key compromise) ordered on one replica reaches the sidecars of
/// every replica: the directive is stored, and the other replica puts it in force.
#[tokio::test]
async fn a_forced_reissue_ordered_on_one_replica_reaches_the_sidecars_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, ring) = two_replicas(dir.path()).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let before = ring.issued_counts().await;

    let other = &ring.others[0];
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/reissue", other.admin_addr))
        .bearer_auth(other.admin_token())
        .json(&serde_json::json!({ "all": true, "window": "2s", "reason": "key compromise drill" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    // Both replicas hold the directive, and every sidecar, wherever it is connected, obeys.
    for replica in ring.replicas() {
        let held = wait::until(
            "the directive on every replica",
            ROTATION_DEADLINE,
            || async {
                let list = replica.admin_get("/api/v1/reissue").await;
                (list["directives"].as_array().is_some_and(|d| !d.is_empty())).then_some(())
            },
        )
        .await;
        assert!(held.is_ok(), "{}", ring.logs());
    }
    ring.wait_every_sidecar_reissued(&before, ROTATION_DEADLINE)
        .await;
    let homes: Vec<Vec<String>> = {
        let mut v = Vec::new();
        for replica in ring.replicas() {
            v.push(connected_to(replica).await);
        }
        v
    };
    assert!(
        homes.iter().all(|h| !h.is_empty()),
        "the sidecars are spread over both replicas: {homes:?}"
    );
    traffic.finish(100, || ring.logs()).await;
}
