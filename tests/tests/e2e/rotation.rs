//! CA rotation across a live fleet: meshd, four real sidecars in a ring and a steady request
//! loop between them that counts every failure. `openssl` checks, from outside, what chain each
//! sidecar serves once the rotation is over.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::process::{NEW_P256_KEY, openssl, openssl_root_ca};
use mesh_tests::proxy::{client_cert_args, issue_cert, openssl_s_client};
use mesh_tests::ring::{
    NAMES, Ring, RotationCas, openssl_verify, pem_blocks, root_fingerprints, show_handshakes, total,
};
use std::time::Duration;

/// How long a whole rotation may take in a test (debug build, loaded 2-core machine).
const ROTATION_DEADLINE: Duration = Duration::from_secs(120);

/// `meshctl ca rotate ARGS` off the runtime thread: (exit code, stdout, stderr).
async fn meshctl(ring: &Ring, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = ring.meshd.meshctl();
    cmd.args(args);
    tokio::task::spawn_blocking(move || mesh_tests::process::run(cmd))
        .await
        .unwrap()
}

/// Checks, with openssl as the client, that every sidecar's inbound port serves a chain that
/// verifies against `trusted` only, and whose leaf does not verify against `not_trusted`.
async fn every_sidecar_serves_a_chain_of(ring: &Ring, trusted: &str, not_trusted: &str) {
    let dir = ring.dir.join(format!("openssl-{}", mesh_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let (trusted_file, other_file) = (dir.join("trusted.pem"), dir.join("other.pem"));
    std::fs::write(&trusted_file, trusted).unwrap();
    std::fs::write(&other_file, not_trusted).unwrap();
    // A client certificate of the mesh as it is now (the inbound port requires one).
    let (cert, key) = issue_cert(
        &ring.meshd,
        "spiffe://cluster.local/ns/default/sa/checker",
        &dir,
    )
    .await;
    for (name, p) in NAMES.iter().zip(&ring.proxies) {
        let probe = openssl_s_client(
            &p.inbound_addr.to_string(),
            &[&["-showcerts"][..], &client_cert_args(&cert, &key)].concat(),
            &trusted_file,
        )
        .await
        .unwrap();
        assert!(probe.ok(), "openssl s_client to sidecar {name}:\n{probe}");
        let out = probe.output;
        let chain = pem_blocks(&out);
        assert!(!chain.is_empty(), "no certificate shown by {name}:\n{out}");
        let leaf = dir.join(format!("{name}-leaf.pem"));
        std::fs::write(&leaf, &chain[0]).unwrap();
        let (verified, text) = openssl_verify(&trusted_file, &leaf);
        assert!(
            verified,
            "{name}'s certificate against the trusted root: {text}"
        );
        let (verified, text) = openssl_verify(&other_file, &leaf);
        assert!(
            !verified,
            "{name}'s certificate must not verify against the other root: {text}"
        );
    }
}

#[tokio::test]
async fn a_full_automatic_rotation_fails_no_request_and_leaves_only_the_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::start(dir.path(), &[], &[]).await;
    let old_bundle = ring.meshd.bundle_pem();
    let old_root = root_fingerprints(&ring.meshd.admin_get("/api/v1/ca").await);
    assert_eq!(old_root.len(), 1);

    let before = ring.ca_subjects().await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let handshakes_before = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(
        &ring,
        &["ca", "rotate", "--window", "6s", "--wait", "-o", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", ring.logs());
    for phase in ["switch", "done"] {
        assert!(
            stderr.contains(&format!(": {phase}")),
            "progress shows {phase}: {stderr}"
        );
    }
    let last: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(last["phase"], "done", "{last}");
    // New sidecar-to-sidecar handshakes all along (each sidecar reconnects every few requests):
    // old certificates under both roots (prepare), old and new holders with each other both
    // ways (switch), then new certificates under the new root alone (finalize and after).
    let (_, roots_after) = ring.ca_subjects().await;
    let all_roots: Vec<String> = before.1.iter().chain(&roots_after).cloned().collect();
    let cas = RotationCas::new_root(&before, &all_roots);
    let seen = ring
        .wait_handshakes(
            "handshakes of every phase",
            &handshakes_before,
            ROTATION_DEADLINE,
            |h| cas.prepare_seen(h) && cas.switch_seen(h) && cas.finalize_seen(h),
        )
        .await;
    eprintln!(
        "handshakes during the rotation:\n{}",
        show_handshakes(&total(&seen))
    );
    traffic.finish(100, String::new).await;

    // The bundle holds only the new root, and meshd's bundle file says so too.
    let ca = ring.meshd.admin_get("/api/v1/ca").await;
    let roots = root_fingerprints(&ca);
    assert_eq!(roots, vec![last["new_root"].as_str().unwrap().to_string()]);
    assert_ne!(roots, old_root);
    let new_bundle = ring.meshd.bundle_pem();
    assert_eq!(pem_blocks(&new_bundle).len(), 1);
    every_sidecar_serves_a_chain_of(&ring, &new_bundle, &old_bundle).await;

    // Metrics and audit show it.
    let metrics = ring.meshd.admin_get_text("/metrics").await;
    assert!(
        metrics.contains("meshd_ca_rotation_phase{phase=\"done\"} 1"),
        "{metrics}"
    );
    let audit = ring.meshd.admin_get("/api/v1/audit?limit=100").await;
    let rotation_entries = mesh_tests::fixtures::count(&audit, "entries", "action", "ca.rotation");
    assert!(rotation_entries >= 4, "start and three phases: {audit}");
}

#[tokio::test]
async fn a_rollback_during_switch_returns_to_the_old_ca_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::start(dir.path(), &[], &[]).await;
    let old_bundle = ring.meshd.bundle_pem();
    let before = ring.ca_subjects().await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;

    let at_prepare = ring.handshakes().await;
    let (code, stdout, stderr) =
        meshctl(&ring, &["ca", "rotate", "--manual", "--window", "8s"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    ring.wait_rotation("prepare's gate", ROTATION_DEADLINE, |r| {
        r["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("rotate next"))
    })
    .await;
    let cas = RotationCas::new_root(&before, &ring.ca_subjects().await.1);
    ring.wait_handshakes(
        "prepare: old certificates under both roots",
        &at_prepare,
        ROTATION_DEADLINE,
        |h| cas.prepare_seen(h),
    )
    .await;
    let at_switch = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(&ring, &["ca", "rotate", "next"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("switch"), "{stdout}");
    // Some sidecars re-issue from the new CA, and meet the others both ways…
    let during = ring
        .wait_rotation("a first re-issue", ROTATION_DEADLINE, |r| {
            r["progress"]["done"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    let new_bundle_roots = during["new_root"].as_str().unwrap().to_string();
    ring.wait_handshakes(
        "switch: old and new certificates meet both ways",
        &at_switch,
        ROTATION_DEADLINE,
        |h| cas.switch_seen(h),
    )
    .await;
    // …then the operator changes their mind.
    let at_rollback = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(&ring, &["ca", "rotate", "rollback"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rolling-back"), "{stdout}");
    ring.wait_rotation("rolling back's gate", ROTATION_DEADLINE, |r| {
        r["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("rotate next"))
    })
    .await;
    // Rolling back: every sidecar is on an old certificate again, both roots still trusted.
    ring.wait_handshakes(
        "rolling back: old certificates under both roots",
        &at_rollback,
        ROTATION_DEADLINE,
        |h| cas.prepare_seen(h),
    )
    .await;
    let at_rolled_back = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(&ring, &["ca", "rotate", "next"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rolled-back"), "{stdout}");
    ring.wait_handshakes(
        "rolled back: old certificates under the old root alone",
        &at_rolled_back,
        ROTATION_DEADLINE,
        |h| cas.rolled_back_seen(h),
    )
    .await;
    // A rotation that is over cannot be steered any more.
    let (code, _, stderr) = meshctl(&ring, &["ca", "rotate", "rollback"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("rolled-back"), "{stderr}");

    traffic.finish(100, String::new).await;
    let ca = ring.meshd.admin_get("/api/v1/ca").await;
    let roots = root_fingerprints(&ca);
    assert_eq!(roots.len(), 1);
    assert_ne!(roots[0], new_bundle_roots, "the new root left the bundle");
    assert_eq!(ring.meshd.bundle_pem(), old_bundle);
    // Every sidecar serves a certificate of the old CA again; a checker cert of the new CA
    // is no longer possible, so the "other" bundle is one made up for the check.
    let other = mesh_ca::CertificateAuthority::generate_root(&mesh_ca::CaOptions::new(
        "cluster.local".parse().unwrap(),
    ))
    .unwrap()
    .bundle()
    .to_pem();
    every_sidecar_serves_a_chain_of(&ring, &old_bundle, &other).await;
}

/// Waits until the manual rotation is `phase` and its gate is met, then moves it on with
/// `meshctl ca rotate next`; returns the new phase.
async fn next_when_ready(ring: &Ring, phase: &str) -> String {
    ring.wait_rotation(&format!("{phase}'s gate"), ROTATION_DEADLINE, |r| {
        r["phase"] == phase
            && r["waiting_for"]
                .as_str()
                .is_some_and(|w| w.contains("rotate next"))
    })
    .await;
    let (code, stdout, stderr) = meshctl(ring, &["ca", "rotate", "next", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v["phase"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn meshd_restarted_in_every_phase_resumes_the_rotation_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = Ring::start(dir.path(), &[], &[]).await;
    let old_bundle = ring.meshd.bundle_pem();
    let before = ring.ca_subjects().await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;

    let mut at_phase = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(
        &ring,
        &["ca", "rotate", "--manual", "--window", "8s", "-o", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let started: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(started["phase"], "prepare");
    let cas = RotationCas::new_root(&before, &ring.ca_subjects().await.1);
    let mut newcomer_traffic = None;

    // Killed in each phase, right after it began: the phase survives and completes, and the
    // sidecars make new handshakes with each other in it (what the phase is for).
    for (phase, then) in [
        ("prepare", "switch"),
        ("switch", "finalize"),
        ("finalize", "done"),
    ] {
        ring.restart_meshd().await;
        let r = ring.rotation().await;
        assert_eq!(r["phase"], phase, "after the restart: {r}");
        assert_eq!(r["generation"], started["generation"]);
        assert_eq!(r["new_root"], started["new_root"]);
        if phase == "switch" {
            // A newcomer joins mid-switch: its first certificate comes from the new CA, and it
            // serves (as one more endpoint of b) and calls c while the others move over.
            let e = ring.add_newcomer("e", "b").await;
            let newcomer = &ring.proxies[e];
            let (_, certs) = newcomer.admin("/certs").await;
            assert!(certs.contains(&cas.new), "e's first certificate: {certs}");
            newcomer_traffic = Some(mesh_tests::ring::Traffic::start(vec![(
                newcomer.outbound_addr,
                "c".into(),
            )]));
            let before: Vec<_> = (0..=e).map(|_| Default::default()).collect();
            ring.wait_handshakes(
                "the newcomer handshakes both ways on its new certificate",
                &before,
                ROTATION_DEADLINE,
                |h| {
                    ["inbound", "outbound"].iter().all(|d| {
                        h[e].keys().any(|k| {
                            k.direction == *d && k.local_issuer == cas.new && k.trusted.len() == 2
                        })
                    })
                },
            )
            .await;
        }
        let ring_only = NAMES.len();
        let seen: &dyn Fn(&[mesh_tests::ring::Handshakes]) -> bool = match phase {
            "prepare" => &|h| cas.prepare_seen(h),
            // (each sidecar of the ring: the newcomer may have met only new holders)
            "switch" => &|h| cas.switch_seen(&h[..ring_only]),
            _ => &|h| cas.finalize_seen(h),
        };
        ring.wait_handshakes(
            &format!("new handshakes in {phase}"),
            &at_phase,
            ROTATION_DEADLINE,
            seen,
        )
        .await;
        at_phase = ring.handshakes().await;
        assert_eq!(next_when_ready(&ring, phase).await, then);
    }

    traffic.finish(100, || ring.logs()).await;
    newcomer_traffic
        .expect("the newcomer's loop")
        .finish(20, || ring.logs())
        .await;
    let ca = ring.meshd.admin_get("/api/v1/ca").await;
    assert_eq!(
        root_fingerprints(&ca),
        vec![started["new_root"].as_str().unwrap().to_string()]
    );
    every_sidecar_serves_a_chain_of(&ring, &ring.meshd.bundle_pem(), &old_bundle).await;
}

/// The inventory's kinds of connection that are open now: (direction, version, suite, group).
async fn open_kinds(ring: &Ring) -> Vec<(String, String, String, String)> {
    let inv = ring.meshd.admin_get("/api/v1/tls").await;
    inv["negotiated"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["open_connections"].as_u64().unwrap_or(0) > 0)
        .map(|n| {
            let f = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (f("direction"), f("version"), f("cipher_suite"), f("group"))
        })
        .collect()
}

/// Waits until every open connection in the inventory satisfies `ok`, both directions present.
async fn wait_inventory(ring: &Ring, what: &str, ok: impl Fn(&str, &str, &str) -> bool) {
    let last = std::sync::Mutex::new(Vec::new());
    let found = mesh_tests::wait::until(what, ROTATION_DEADLINE, || async {
        let kinds = open_kinds(ring).await;
        let good = !kinds.is_empty()
            && kinds.iter().any(|k| k.0 == "inbound")
            && kinds.iter().any(|k| k.0 == "outbound")
            && kinds.iter().all(|(_, v, s, g)| ok(v, s, g));
        *last.lock().unwrap() = kinds;
        good.then_some(())
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(found.is_ok(), "{what}: inventory {last:?}\n{}", ring.logs());
}

#[tokio::test]
async fn tls_rollouts_to_tls13_one_suite_and_mlkem_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::start(dir.path(), &[], &["--report-interval", "500ms"]).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    const SUITE: &str = "TLS13_CHACHA20_POLY1305_SHA256";
    let bundle = ring.dir.join("meshd/ca-bundle.pem");
    let (cert, key) = issue_cert(
        &ring.meshd,
        "spiffe://cluster.local/ns/default/sa/checker",
        &ring.dir,
    )
    .await;
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let inbound = ring.proxies[1].inbound_addr.to_string();
    let tls12 = ["-tls1_2", "-cert", cert, "-key", key];
    // The control: before the change, the very probe that must be refused later is served.
    let probe = openssl_s_client(&inbound, &tls12, &bundle).await.unwrap();
    assert!(probe.ok(), "TLS 1.2 is accepted by default:\n{probe}");

    // TLS 1.3 only, one cipher suite; connections of the old policy drain within 2 s.
    let (code, stdout, stderr) = meshctl(
        &ring,
        &[
            "tls",
            "set",
            "--min-version",
            "1.3",
            "--ciphers",
            SUITE,
            "--drain-grace",
            "2s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    wait_inventory(&ring, "only TLS 1.3 with one suite", |v, s, _| {
        v == "TLSv1_3" && s == SUITE
    })
    .await;
    let probe = openssl_s_client(&inbound, &tls12, &bundle).await.unwrap();
    probe.assert_alert("protocol_version", "TLS 1.2 must be refused");
    let probe = openssl_s_client(
        &inbound,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256",
            "-cert",
            cert,
            "-key",
            key,
        ],
        &bundle,
    )
    .await
    .unwrap();
    assert!(
        probe.ok(),
        "TLS 1.3 with the one suite is accepted:\n{probe}"
    );
    assert_eq!(
        probe.negotiated,
        Some(("TLSv1.3".into(), "TLS_CHACHA20_POLY1305_SHA256".into())),
        "{probe}"
    );
    let probe = openssl_s_client(
        &inbound,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
            "-cert",
            cert,
            "-key",
            key,
        ],
        &bundle,
    )
    .await
    .unwrap();
    probe.assert_alert("handshake_failure", "another TLS 1.3 suite is refused");
    let (code, stdout, _) = meshctl(&ring, &["tls", "status"]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(SUITE) && stdout.contains("4 of 4 sidecars"),
        "{stdout}"
    );

    // The post-quantum hybrid key exchange fleet-wide, then back to the classic one.
    let (code, stdout, stderr) =
        meshctl(&ring, &["tls", "set", "--groups", "X25519MLKEM768"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    wait_inventory(&ring, "every connection on X25519MLKEM768", |v, s, g| {
        v == "TLSv1_3" && s == SUITE && g == "X25519MLKEM768"
    })
    .await;
    // Back, applied as a plain document (as a config directory or GitOps would): nothing in
    // common with X25519MLKEM768 alone, so meshd bridges it (both groups until every sidecar
    // ACKed them, then X25519 alone); a one-step change would fail handshakes between sidecars
    // on either side of it.
    let doc = ring.dir.join("mesh-tls.yaml");
    std::fs::write(
        &doc,
        format!(
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: TlsPolicy\nmetadata:\n  name: mesh-tls\n  \
             namespace: mesh-system\nspec:\n  minVersion: \"1.3\"\n  cipherSuites: [{SUITE}]\n  \
             keyExchangeGroups: [X25519]\n  drainGracePeriod: 2s\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = meshctl(&ring, &["apply", "-f", doc.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    wait_inventory(&ring, "every connection back on X25519", |_, _, g| {
        g == "X25519"
    })
    .await;

    let metrics = ring.meshd.admin_get_text("/metrics").await;
    assert!(
        metrics.contains("meshd_tls_policy_bridges_total 1\n")
            && metrics.contains("meshd_tls_policy_bridging_sidecars 0\n"),
        "exactly one change went through an interim policy, and it is over:\n{metrics}"
    );
    assert!(
        ring.logs()
            .contains("every sidecar runs the interim policy; pushing the change"),
        "meshd released the bridge once every sidecar ACKed:\n{}",
        ring.logs()
    );

    traffic.finish(100, || ring.logs()).await;
}

/// The TlsPolicy meshd holds for the sidecar serving `inbound` once that sidecar ACKed it (its
/// name), or "" when it has none (the defaults).
async fn acked_tls_policy(ring: &Ring, inbound: &str) -> Option<String> {
    let sidecars = ring.meshd.admin_get("/api/v1/sidecars").await;
    let s = sidecars["sidecars"]
        .as_array()?
        .iter()
        .find(|s| s["inbound_address"] == inbound)?;
    let id = s["id"].as_str()?;
    let config = ring
        .meshd
        .admin_get(&format!("/api/v1/sidecars/{id}/config"))
        .await;
    let url = mesh_proto::TLS_POLICY_TYPE_URL;
    let Some(policy) = config["resources"][url].as_array()?.first() else {
        return Some(String::new());
    };
    let synced = config["types"]
        .as_array()?
        .iter()
        .any(|t| t["type_url"] == url && t["state"] == "SYNCED");
    synced.then(|| policy["name"].as_str().unwrap_or("?").to_string())
}

#[tokio::test]
async fn a_tls_change_staged_on_a_share_of_the_fleet_then_everywhere_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::start(dir.path(), &[], &["--report-interval", "500ms"]).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    const SUITE: &str = "TLS13_AES_256_GCM_SHA384";

    // A share that takes some sidecars and not others: just above the second-lowest bucket.
    let sidecars = ring.meshd.admin_get("/api/v1/sidecars").await;
    let mut buckets: Vec<(u64, String)> = sidecars["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let bucket = s["rollout_bucket"].as_u64().unwrap();
            (bucket, s["inbound_address"].as_str().unwrap().to_string())
        })
        .collect();
    buckets.sort();
    assert_eq!(buckets.len(), 4, "{sidecars}");
    let percent = buckets[1].0 + 1;
    let (inside, outside): (Vec<_>, Vec<_>) = buckets.iter().partition(|(b, _)| *b < percent);
    assert!(
        inside.len() >= 2 && !outside.is_empty(),
        "the ring's buckets {buckets:?} cannot be split"
    );

    let (code, stdout, stderr) = meshctl(
        &ring,
        &[
            "tls",
            "set",
            "--min-version",
            "1.3",
            "--ciphers",
            SUITE,
            "--stage",
            &format!("{percent}%"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("tlspolicy/mesh-tls-stage"), "{stdout}");
    let staged = std::sync::Mutex::new(Vec::new());
    let held = mesh_tests::wait::until(
        "the stage reaches its share only",
        ROTATION_DEADLINE,
        || async {
            let mut now = Vec::new();
            for (_, inbound) in &buckets {
                now.push(acked_tls_policy(&ring, inbound).await);
            }
            let want: Vec<Option<String>> = buckets
                .iter()
                .map(|(b, _)| {
                    Some(if *b < percent {
                        "mesh-system/mesh-tls-stage".to_string()
                    } else {
                        String::new()
                    })
                })
                .collect();
            let done = now == want;
            *staged.lock().unwrap() = now;
            done.then_some(())
        },
    )
    .await;
    assert!(
        held.is_ok(),
        "{:?}\n{}",
        staged.lock().unwrap(),
        ring.logs()
    );

    // Seen from outside: a staged sidecar refuses TLS 1.2, one outside the share still takes it.
    let bundle = ring.dir.join("meshd/ca-bundle.pem");
    let (cert, key) = issue_cert(
        &ring.meshd,
        "spiffe://cluster.local/ns/default/sa/checker",
        &ring.dir,
    )
    .await;
    let tls12 = [
        "-tls1_2",
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let probe = openssl_s_client(&inside[0].1, &tls12, &bundle)
        .await
        .unwrap();
    probe.assert_alert("protocol_version", "a sidecar in the stage refuses TLS 1.2");
    let probe = openssl_s_client(&outside[0].1, &tls12, &bundle)
        .await
        .unwrap();
    assert!(
        probe.ok(),
        "a sidecar outside the stage still accepts TLS 1.2:\n{probe}"
    );
    let (code, stdout, _) = meshctl(&ring, &["tls", "status"]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&format!("{percent}%")) && stdout.contains("mesh-system/mesh-tls-stage"),
        "{stdout}"
    );

    // Then the rest of the fleet: the stage has served its purpose and goes.
    let (code, stdout, stderr) = meshctl(
        &ring,
        &[
            "tls",
            "set",
            "--min-version",
            "1.3",
            "--ciphers",
            SUITE,
            "--drain-grace",
            "2s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("tlspolicy/mesh-tls-stage deleted (now mesh-wide)"),
        "{stdout}"
    );
    wait_inventory(
        &ring,
        "every sidecar on TLS 1.3 with the one suite",
        |v, s, _| v == "TLSv1_3" && s == SUITE,
    )
    .await;
    let probe = openssl_s_client(&outside[0].1, &tls12, &bundle)
        .await
        .unwrap();
    probe.assert_alert(
        "protocol_version",
        "once mesh-wide, TLS 1.2 is refused everywhere",
    );

    traffic.finish(100, || ring.logs()).await;
}

/// One-minute certificates: every sidecar renews at least twice under a steady loop, and no
/// request fails. (A longer soak: the same with a larger renewal count, by hand.)
#[tokio::test]
async fn one_minute_certificates_renew_under_load_and_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Ring::start(dir.path(), &["--cert-ttl", "1m"], &[]).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let counts = std::sync::Mutex::new(Vec::new());
    let renewed = mesh_tests::wait::until(
        "every sidecar to renew twice",
        Duration::from_secs(150),
        || async {
            let now = ring.issued_counts().await;
            let done = now.iter().all(|n| *n >= 3);
            *counts.lock().unwrap() = now;
            done.then_some(())
        },
    )
    .await;
    let counts = counts.into_inner().unwrap();
    assert!(
        renewed.is_ok(),
        "{renewed:?}: certificates per sidecar {counts:?}\n{}",
        ring.logs()
    );
    traffic.finish(500, || ring.logs()).await;
}

/// An intermediate CA `name` signed by the offline root in `dir`; returns (chain, key) files
/// (the chain: the intermediate, then the root).
fn intermediate(dir: &std::path::Path, name: &str) -> (String, String) {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            &["req"],
            &NEW_P256_KEY[..],
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
            &["-subj", &format!("/O=corp/CN={name}")],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ],
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap(),
        std::fs::read_to_string(dir.join("root.pem")).unwrap()
    );
    std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
    (
        dir.join(format!("{name}-chain.pem")).display().to_string(),
        dir.join(format!("{name}.key")).display().to_string(),
    )
}

/// An offline root signs the intermediate meshd uses; rotating to a new intermediate of the
/// same root is the same machine with the bundle unchanged, and no request fails.
#[tokio::test]
async fn rotating_the_intermediate_of_an_offline_root_keeps_the_bundle_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    openssl_root_ca(
        &pki,
        "root.key",
        "root.pem",
        "30",
        "/O=corp/CN=offline root",
    );
    let (chain1, key1) = intermediate(&pki, "intermediate-1");
    let (chain2, key2) = intermediate(&pki, "intermediate-2");
    let ring = Ring::start(dir.path(), &["--ca-cert", &chain1, "--ca-key", &key1], &[]).await;
    let bundle_before = ring.meshd.bundle_pem();
    assert_eq!(pem_blocks(&bundle_before).len(), 1, "only the offline root");

    // Without an import, meshd cannot make a successor: it does not hold the root's key.
    let (code, _, stderr) = meshctl(&ring, &["ca", "rotate"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--import-cert"), "{stderr}");

    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let (old_signing, roots) = ring.ca_subjects().await;
    let handshakes_before = ring.handshakes().await;
    let (code, stdout, stderr) = meshctl(
        &ring,
        &[
            "ca",
            "rotate",
            "--import-cert",
            &chain2,
            "--import-key",
            &key2,
            "--window",
            "6s",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", ring.logs());
    // Holders of intermediate-1 and intermediate-2 certificates met each other both ways, then
    // intermediate-2 holders alone, the one root trusted throughout.
    let cas = RotationCas {
        old: old_signing,
        new: ring.ca_subjects().await.0,
        old_roots: roots.clone(),
        new_roots: roots,
    };
    assert!(cas.new.contains("intermediate-2"), "{cas:?}");
    ring.wait_handshakes(
        "handshakes across the intermediates",
        &handshakes_before,
        ROTATION_DEADLINE,
        |h| cas.switch_seen(h) && cas.finalize_seen(h),
    )
    .await;
    traffic.finish(100, String::new).await;
    assert_eq!(ring.meshd.bundle_pem(), bundle_before, "the root stays");
    let ca = ring.meshd.admin_get("/api/v1/ca").await;
    assert!(
        ca["signing"]["subject"]
            .as_str()
            .unwrap()
            .contains("intermediate-2"),
        "{ca}"
    );
    // Each sidecar now serves leaf + intermediate-2, which verifies up to the offline root.
    let (cert, key) = issue_cert(
        &ring.meshd,
        "spiffe://cluster.local/ns/default/sa/checker",
        &dir.path().join("checker"),
    )
    .await;
    let root = pki.join("root.pem");
    for (name, p) in NAMES.iter().zip(&ring.proxies) {
        let probe = openssl_s_client(
            &p.inbound_addr.to_string(),
            &[
                "-showcerts",
                "-cert",
                cert.to_str().unwrap(),
                // The checker's leaf is signed by intermediate-2 too: send it along.
                "-cert_chain",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ],
            &root,
        )
        .await
        .unwrap();
        assert!(probe.ok(), "sidecar {name}:\n{probe}");
        let out = probe.output;
        assert!(
            out.contains("CN=intermediate-2") || out.contains("CN = intermediate-2"),
            "{name}: {out}"
        );
        assert!(!out.contains("intermediate-1"), "{name}: {out}");
    }
}

/// A forced re-issue is stored before it is put in force: a meshd restarted within its window
/// still holds it (and tells sidecars that reconnect), and every sidecar re-issues.
#[tokio::test]
async fn a_forced_reissue_survives_a_meshd_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = Ring::start(dir.path(), &[], &[]).await;
    let traffic = ring.traffic();
    traffic.wait_more(20).await;
    let before = ring.issued_counts().await;
    let (code, stdout, stderr) = meshctl(
        &ring,
        &["certs", "reissue", "--all", "--window", "10s", "-o", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let ordered: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let generation = ordered["directive"]["generation"].clone();
    assert!(generation.is_u64(), "{ordered}");

    ring.restart_meshd().await;
    let list = ring.meshd.admin_get("/api/v1/reissue").await;
    assert!(
        list["directives"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["directive"]["generation"] == generation),
        "the restarted meshd still holds directive {generation}: {list}"
    );
    ring.wait_every_sidecar_reissued(&before, ROTATION_DEADLINE)
        .await;
    traffic.finish(50, || ring.logs()).await;
}
