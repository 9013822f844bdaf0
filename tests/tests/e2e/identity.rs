//! The identity service end to end, with real meshd and meshctl processes and the real openssl:
//! join tokens, renewal over mTLS, refusals. Runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::process::run;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn openssl(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    mesh_tests::process::output_text(cmd)
}

fn issue(meshd: &Meshd, token: &str, out: &Path) -> (Option<i32>, String) {
    let mut cmd = meshd.meshctl();
    cmd.args([
        "cert",
        "issue",
        "--token",
        token,
        "--control-plane",
        &meshd.grpc_url(),
    ])
    .arg("--ca-bundle")
    .arg(meshd.data_dir.join("ca-bundle.pem"))
    .arg("--out")
    .arg(out);
    let (code, _, stderr) = run(cmd);
    (code, stderr)
}

fn san_of(cert: &Path) -> Vec<String> {
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(ok, "{text}");
    text.lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

async fn identity_flow(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &options)
        .await
        .unwrap();
    let certs = dir.path().join("web");

    // A single-use token gets one certificate for exactly its identity.
    let token = meshd.join_token(WEB, "10m", 1);
    let (code, stderr) = issue(&meshd, &token, &certs);
    assert_eq!(code, Some(0), "{stderr}");
    let cert = certs.join("cert.pem");
    let bundle = certs.join("bundle.pem");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "openssl verify: {text}");
    assert_eq!(san_of(&cert), vec![format!("URI:{WEB}")]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key is private");

    // Its second use is refused, vaguely, and audited with the precise reason.
    let (code, stderr) = issue(&meshd, &token, &dir.path().join("again"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("credential refused"), "{stderr}");
    assert!(
        !dir.path().join("again/key.pem").exists(),
        "nothing written on refusal"
    );

    // An expired token is refused.
    let short = meshd.join_token(WEB, "1s", 5);
    let expires = std::time::Instant::now() + Duration::from_millis(2100);
    mesh_tests::wait::until("the token to expire", Duration::from_secs(10), || async {
        (std::time::Instant::now() > expires).then_some(())
    })
    .await
    .unwrap();
    let (code, stderr) = issue(&meshd, &short, &dir.path().join("late"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("credential refused"), "{stderr}");

    // Renewal with the current certificate works: a new serial for the same identity.
    let before = std::fs::read_to_string(&cert).unwrap();
    let mut cmd = meshd.meshctl();
    cmd.args([
        "cert",
        "renew",
        "--control-plane",
        &meshd.grpc_url(),
        "--dir",
    ])
    .arg(&certs);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, Some(0), "renew: {stderr}");
    let after = std::fs::read_to_string(&cert).unwrap();
    assert_ne!(before, after, "a new certificate");
    assert_eq!(san_of(&cert), vec![format!("URI:{WEB}")]);

    // Over that same mTLS identity, a CSR for someone else is PermissionDenied.
    let mut cmd = meshd.meshctl();
    cmd.args([
        "cert",
        "renew",
        "--control-plane",
        &meshd.grpc_url(),
        "--dir",
    ])
    .arg(&certs)
    .args(["--identity", "spiffe://cluster.local/ns/default/sa/admin"]);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        after,
        "nothing replaced"
    );

    // The audit log holds the issues and the refusals.
    let audit = meshd.admin_get("/api/v1/audit?limit=100").await;
    let entries = audit["entries"].as_array().unwrap();
    let signs: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "certificate.sign")
        .collect();
    assert!(signs.iter().any(|e| e["outcome"] == "ok"), "{audit}");
    assert!(
        signs
            .iter()
            .any(|e| e["detail"] == "join token has no uses left"),
        "{audit}"
    );
    assert!(
        signs.iter().any(|e| e["detail"] == "expired join token"),
        "{audit}"
    );
    assert!(
        signs
            .iter()
            .any(|e| e["outcome"] == "denied" && e["detail"].as_str().unwrap().contains("proved")),
        "{audit}"
    );

    // Issued certificates are listed by the admin API.
    let certs_json = meshd
        .admin_get(&format!("/api/v1/certificates?identity={WEB}"))
        .await;
    assert_eq!(
        certs_json["certificates"].as_array().unwrap().len(),
        2,
        "{certs_json}"
    );
}

mesh_tests::on_both_stores!(identity_flow: sqlite_join_tokens_renewal_and_refusals, postgres_join_tokens_renewal_and_refusals);

#[tokio::test]
async fn the_admin_api_refuses_calls_without_the_token_and_audits_them() {
    let (_dir, meshd) = mesh_tests::fixtures::start_meshd().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/tokens", meshd.admin_addr);
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("wrong bearer token"),
        "{body}"
    );
    let health = client
        .get(format!("http://{}/healthz", meshd.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "healthz needs no token");

    // A bad token request names the field.
    let bad = client
        .post(&url)
        .bearer_auth(meshd.admin_token())
        .json(&serde_json::json!({ "identity": "spiffe://elsewhere/ns/a/sa/b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("identity:"),
        "{body}"
    );

    let audit = meshd.admin_get("/api/v1/audit").await;
    let denied = mesh_tests::fixtures::count(&audit, "entries", "outcome", "denied");
    assert_eq!(denied, 2, "{audit}");
}

/// A CSR made by the real `openssl req` for `identity`, with extra `-subj`/`-addext` arguments.
fn openssl_csr(dir: &Path, name: &str, subject: &str, sans: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let (ok, text) = openssl(
        &[
            &["req", "-new"],
            &mesh_tests::process::NEW_P256_KEY[..],
            &[
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
            ],
            &[
                "-subj",
                subject,
                "-addext",
                &format!("subjectAltName={sans}"),
            ],
        ]
        .concat(),
    );
    assert!(ok, "openssl req: {text}");
    (
        csr.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

/// Python grpcio (stubs generated now from proto/mesh/v1, TLS checked by grpc-core, which
/// refuses a server that selects no ALPN protocol) gets a certificate with a join token and
/// opens `Discovery.Stream` with it; the status codes are those identity.proto specifies.
#[tokio::test]
async fn a_python_grpcio_client_signs_and_opens_a_discovery_stream() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    mesh_tests::python::grpc_stubs(&stubs).unwrap();
    let token = meshd.join_token(WEB, "10m", 5);
    let (good_csr, good_key) = openssl_csr(dir.path(), "good", "/", &format!("URI:{WEB}"));
    // The subject is ignored: a CN naming someone else is no refusal (and not in the cert).
    let (cn_csr, _) = openssl_csr(dir.path(), "cn", "/CN=admin", &format!("URI:{WEB}"));
    // A DNS SAN beside the SPIFFE ID asks for more than was proven.
    let (dns_csr, _) = openssl_csr(
        dir.path(),
        "dns",
        "/",
        &format!("URI:{WEB},DNS:evil.example"),
    );
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let addr = meshd.grpc_addr.trim_start_matches("https://").to_string();
    let out = tokio::task::spawn_blocking(move || {
        mesh_tests::python::run_json(
            "grpc_identity_discovery.py",
            &[
                stubs.to_str().unwrap(),
                &addr,
                bundle.to_str().unwrap(),
                &token,
                &good_csr,
                &good_key,
                &cn_csr,
                &dns_csr,
            ],
        )
    })
    .await
    .unwrap()
    .unwrap();

    assert_eq!(out["good"]["code"], "OK", "{out}");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, out["good"]["chain"].as_str().unwrap()).unwrap();
    assert_eq!(san_of(&chain), vec![format!("URI:{WEB}")]);

    assert_eq!(out["common_name"]["code"], "OK", "{out}");
    let cn_chain = dir.path().join("cn-chain.pem");
    std::fs::write(&cn_chain, out["common_name"]["chain"].as_str().unwrap()).unwrap();
    let (ok, subject) = openssl(&[
        "x509",
        "-in",
        cn_chain.to_str().unwrap(),
        "-noout",
        "-subject",
    ]);
    assert!(ok && !subject.contains("admin"), "{subject}");

    assert_eq!(out["dns_san"]["code"], "PERMISSION_DENIED", "{out}");
    assert!(
        out["dns_san"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "the refusal names what was refused: {out}"
    );
    assert_eq!(out["not_utf8"]["code"], "INVALID_ARGUMENT", "{out}");
    assert!(
        out["not_utf8"]["message"]
            .as_str()
            .unwrap()
            .contains("SignRequest"),
        "{out}"
    );

    assert_eq!(out["discovery"]["code"], "OK", "{out}");
    assert_eq!(
        out["discovery"]["type_url"], "type.mesh.v1/TrustBundle",
        "{out}"
    );
    assert!(
        !out["discovery"]["nonce"].as_str().unwrap().is_empty(),
        "{out}"
    );

    // Every refusal is audited, the undecodable request too.
    let audit = meshd.admin_get("/api/v1/audit?limit=100").await;
    let denied: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "certificate.sign" && e["outcome"] == "denied")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        denied.iter().any(|d| d.contains("evil.example")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|d| d.contains("undecodable request")),
        "{denied:?}"
    );
}

/// `meshctl certs -o json`'s serials and states (`--all` for every recorded one).
fn listed_certs(meshd: &Meshd, all: bool) -> Vec<(String, String)> {
    let mut cmd = meshd.meshctl();
    cmd.args(["certs", "-o", "json"]);
    if all {
        cmd.arg("--all");
    }
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut out = mesh_tests::fixtures::string_pairs(&v, "certificates", "serial_hex", "state");
    out.sort();
    out
}

/// The serial of the certificate in `dir/cert.pem`, lower-case hex as meshd lists it.
fn serial_of(cert: &Path) -> String {
    let (ok, text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    assert!(ok, "{text}");
    text.trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// After a CA rotation, a certificate its holder renewed from the new CA is no longer counted
/// as live: `meshctl certs`, `meshctl check` and `meshd_certificates_live` count only the
/// certificate in use (`--all` shows the old one as superseded), by the same serial openssl
/// reads from the files.
#[tokio::test]
async fn after_a_rotation_only_certificates_in_use_count_as_live() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let certs = dir.path().join("web");
    let token = meshd.join_token(WEB, "10m", 1);
    let (code, stderr) = issue(&meshd, &token, &certs);
    assert_eq!(code, Some(0), "{stderr}");
    let old_serial = serial_of(&certs.join("cert.pem"));
    assert_eq!(
        listed_certs(&meshd, false),
        [(old_serial.clone(), "in use".into())]
    );

    let meshctl = |args: &[&str]| {
        let mut cmd = meshd.meshctl();
        cmd.args(args);
        let (code, stdout, stderr) = run(cmd);
        assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
        stdout
    };
    let wait_gate = |phase: &'static str| {
        let meshd = &meshd;
        async move {
            mesh_tests::wait::until(phase, Duration::from_secs(60), || async {
                let r = meshd.admin_get("/api/v1/ca/rotation").await;
                (r["phase"] == phase
                    && r["waiting_for"]
                        .as_str()
                        .is_some_and(|w| w.contains("rotate next")))
                .then_some(())
            })
            .await
            .unwrap();
        }
    };
    meshctl(&["ca", "rotate", "--manual", "--window", "1s"]);
    wait_gate("prepare").await;
    meshctl(&["ca", "rotate", "next"]);
    // The holder renews from the new CA, trusting the bundle of both roots.
    std::fs::write(certs.join("bundle.pem"), meshctl(&["ca", "bundle"])).unwrap();
    let mut cmd = meshd.meshctl();
    cmd.args([
        "cert",
        "renew",
        "--control-plane",
        &meshd.grpc_url(),
        "--dir",
    ])
    .arg(&certs);
    let (code, _, stderr) = run(cmd);
    assert_eq!(code, Some(0), "renew: {stderr}");
    let new_serial = serial_of(&certs.join("cert.pem"));
    assert_ne!(new_serial, old_serial);
    wait_gate("switch").await;
    meshctl(&["ca", "rotate", "next"]);
    wait_gate("finalize").await;
    meshctl(&["ca", "rotate", "next"]);
    let ca = meshd.admin_get("/api/v1/ca").await;
    assert_eq!(ca["rotation"]["phase"], "done", "{ca}");
    let new_root = ca["roots"][0]["fingerprint"].as_str().unwrap().to_string();

    assert_eq!(
        listed_certs(&meshd, false),
        [(new_serial.clone(), "in use".into())]
    );
    let mut all = listed_certs(&meshd, true);
    all.retain(|(s, _)| *s == old_serial);
    assert_eq!(all, [(old_serial.clone(), "superseded".into())]);

    let mut cmd = meshd.meshctl();
    cmd.arg("check");
    let (_, stdout, stderr) = run(cmd);
    assert!(
        stdout.contains("1 live certificate(s) for 1 identities"),
        "{stdout}{stderr}"
    );

    let live = mesh_tests::wait::until("the live count", Duration::from_secs(30), || async {
        let m = meshd.admin_get_text("/metrics").await;
        let lines: Vec<String> = m
            .lines()
            .filter(|l| l.starts_with("meshd_certificates_live{"))
            .map(str::to_string)
            .collect();
        (lines.len() == 1 && lines[0].contains(&new_root)).then_some(lines)
    })
    .await
    .unwrap();
    assert!(live[0].ends_with(" 1"), "{live:?}");
}
