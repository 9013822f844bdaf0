//! The sidecar end to end, with real processes on loopback: meshd, mesh-proxy sidecars and echo
//! apps. A calls B through both sidecars over mesh mTLS; B's app learns A's verified identity;
//! B's inbound port refuses anything but a mesh client certificate (checked with the real
//! openssl); gRPC stays HTTP/2 end to end; a TCP service is passed through after mTLS and
//! authorization; readiness waits for the certificate and the first ACKs; bad flags exit 64.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::echo::EchoApp;
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::process::{binary, run};
use mesh_tests::proxy::{
    Gate, Proxy, ProxyOptions, issue_cert, openssl_s_client, raw_exchange, tls_alert_record,
};
use std::process::Command;
use std::time::Duration;

use mesh_tests::fixtures::{ID_A as A, ID_B as B};

async fn call_until_ok(proxy: &Proxy, host: &str) -> serde_json::Value {
    proxy.get_until(host, "/hello", 200).await
}

#[tokio::test]
async fn a_calls_b_through_both_sidecars_and_b_sees_a_verified_identity() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app_a = EchoApp::start("a").await.unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();

    // Every way a Kubernetes client could name the service works, without any route.
    let echo = call_until_ok(&a, "b").await;
    assert_eq!(echo["id"], "b", "{echo}");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-mesh-peer-identity"], A, "{echo}");
    let traceparent = echo["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "a W3C traceparent was added: {echo}"
    );
    for host in [
        "b.default",
        "b.default.svc.cluster.local",
        "b:80",
        "b.default:80",
    ] {
        let echo = call_until_ok(&a, host).await;
        assert_eq!(echo["id"], "b", "{host}: {echo}");
    }

    // A forged identity header from A's app does not survive: B's app sees A's real one.
    let client = reqwest::Client::new();
    let forged = a
        .outbound(&client, reqwest::Method::POST, "b", "/forged?x=1")
        .header(
            "x-mesh-peer-identity",
            "spiffe://cluster.local/ns/default/sa/admin",
        )
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    let echo: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(echo["headers"]["x-mesh-peer-identity"], A, "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/forged?x=1");
    assert_eq!(echo["body"], "payload");
    assert_eq!(
        echo["headers"]["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "a valid traceparent is propagated"
    );

    // A host the mesh does not know is a 404 from the sidecar, not a hang.
    let unknown = a
        .outbound(&client, reqwest::Method::GET, "nobody", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Both sidecars count what they did.
    let (_, metrics) = b.admin("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "direction=\"inbound\",route=\"default\",status=\"200\",peer=\"{A}\""
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_proxy_control_plane_connected 1"),
        "{metrics}"
    );
    let (_, metrics) = a.admin("/metrics").await;
    assert!(metrics.contains("direction=\"outbound\""), "{metrics}");
    assert!(
        metrics.contains("mesh_proxy_certificate_expiry_seconds"),
        "{metrics}"
    );
    assert_eq!(app_a.requests(), 0, "nothing went to A's own app");

    // meshd shows both sidecars SYNCED.
    let sidecars = meshd.admin_get("/api/v1/sidecars").await;
    let all = sidecars["sidecars"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{sidecars}");
}

#[tokio::test]
async fn the_inbound_port_accepts_only_mesh_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let inbound = b.inbound_addr.to_string();
    let bundle = meshd.data_dir.join("ca-bundle.pem");

    // Plain HTTP is refused: the connection closes without an HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{inbound}/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // What comes back is one TLS alert: the listener speaks only TLS.
    let answer = raw_exchange(b.inbound_addr, b"GET / HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        tls_alert_record(&answer).as_deref(),
        Some("decode_error"),
        "plain HTTP is answered with one TLS alert: {answer:?}"
    );

    // No client certificate: the server ends the handshake with certificate_required.
    let probe = openssl_s_client(&inbound, &[], &bundle).await.unwrap();
    probe.assert_alert("certificate_required", "no client certificate");
    assert_eq!(probe.http_status, None, "{probe}");

    // A leaf from another CA, with a plausible SPIFFE ID: refused as an unknown CA.
    let rogue = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue).unwrap();
    let openssl = |args: &[&str]| mesh_tests::process::openssl(&rogue, args);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        &[
            &["req", "-x509", "-nodes", "-days", "1"][..],
            &ec,
            &[
                "-subj",
                "/CN=rogue CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-subj",
                "/CN=rogue",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        rogue.join("leaf.ext"),
        format!("basicConstraints=critical,CA:FALSE\nsubjectAltName=URI:{A}\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let (key, cert) = (rogue.join("key.pem"), rogue.join("cert.pem"));
    let probe = openssl_s_client(
        &inbound,
        &mesh_tests::proxy::client_cert_args(&cert, &key),
        &bundle,
    )
    .await
    .unwrap();
    probe.assert_alert("unknown_ca", "a certificate from another CA");
    assert_eq!(probe.http_status, None, "{probe}");

    // A mesh certificate from meshctl: accepted, and B's app sees that identity.
    let client_id = "spiffe://cluster.local/ns/default/sa/ops";
    let (cert, key) = issue_cert(&meshd, client_id, &dir.path().join("ops")).await;
    let probe = openssl_s_client(
        &inbound,
        &mesh_tests::proxy::client_cert_args(&cert, &key),
        &bundle,
    )
    .await
    .unwrap();
    assert!(
        probe.ok(),
        "a mesh certificate was refused:\n{probe}\nproxy log:\n{}",
        b.log()
    );
    assert!(probe.output.contains(client_id), "{probe}");
    assert!(probe.output.contains("/via-openssl"), "{probe}");

    let (_, metrics) = b.admin("/metrics").await;
    assert!(
        metrics.contains("mesh_proxy_tls_handshakes_total{direction=\"inbound\",result=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn ready_waits_for_the_certificate_and_the_first_acks() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app = EchoApp::start("b").await.unwrap();
    // meshd is unreachable through the closed gate.
    let gate = Gate::start(&meshd.grpc_addr, false).await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app.addr,
        &ProxyOptions {
            control_planes: vec![gate.url()],
            no_wait_ready: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Listening, alive, but not ready: no certificate, nothing ACKed; inbound is closed.
    assert_eq!(b.admin("/live").await.0, 200);
    for _ in 0..5 {
        let (status, body) = b.admin("/ready").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("certificate"), "{body}");
        assert!(body.contains("Listener"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, certs) = b.admin("/certs").await;
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert!(certs["certificate"].is_null(), "{certs}");
    let mut wait_ready = Command::new(binary("mesh-proxy"));
    wait_ready.args([
        "wait-ready",
        "--admin-addr",
        &b.admin_addr.to_string(),
        "--timeout",
        "1s",
    ]);
    let (code, _, stderr) = run(wait_ready);
    assert_eq!(
        code,
        Some(1),
        "wait-ready gives up when not ready: {stderr}"
    );

    // meshd reachable: certificate, then every type ACKed, then ready.
    gate.set_open(true);
    b.wait_ready().await.unwrap();
    let mut wait_ready = Command::new(binary("mesh-proxy"));
    wait_ready.args([
        "wait-ready",
        "--admin-addr",
        &b.admin_addr.to_string(),
        "--timeout",
        "10s",
    ]);
    let (code, _, stderr) = run(wait_ready);
    assert_eq!(code, Some(0), "{stderr}");

    let (_, certs) = b.admin("/certs").await;
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["certificate"]["spiffe_id"], B, "{certs}");
    assert!(
        certs["certificate"]["expires_in_seconds"].as_i64().unwrap() > 0,
        "{certs}"
    );
    assert!(!certs.to_string().contains("PRIVATE KEY"), "never the key");
    let (_, dump) = b.admin("/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let listeners = dump["resources"]["Listener"].as_array().unwrap();
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"inbound") && names.contains(&"outbound"),
        "{dump}"
    );
    assert!(
        listeners
            .iter()
            .all(|l| !l["version"].as_str().unwrap().is_empty()),
        "{dump}"
    );
    assert_eq!(
        dump["resources"]["TrustBundle"].as_array().unwrap().len(),
        1,
        "{dump}"
    );

    // SIGTERM: a clean exit.
    let mut process = b.process;
    let status = process.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_configuration_exits_64_with_one_line_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, "not a bundle").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "--control-plane is required"),
        (
            vec!["--control-plane".into(), "http://x:1".into()],
            "must look like https://host:port",
        ),
        (
            vec![
                "--control-plane".into(),
                "https://127.0.0.1:1".into(),
                "--ca-bundle".into(),
                bundle.to_str().unwrap().into(),
            ],
            "--ca-bundle",
        ),
        (
            vec!["--worker-threads".into(), "many".into()],
            "invalid value",
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = Command::new(binary("mesh-proxy"));
        cmd.args(&args).args(["--admin-addr", "127.0.0.1:0"]);
        let (code, stdout, stderr) = run(cmd);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stdout.is_empty());
    }
}

#[tokio::test]
async fn a_tcp_service_gets_mtls_and_connection_authorization_then_bytes_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    meshd
        .apply(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: b, namespace: default}
spec:
  ports: [{name: tcp, port: 80, protocol: tcp}]
  selector: {app: b}
"#,
        )
        .await;
    let app_b = EchoApp::start("b").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    b.wait_config("a TCP inbound listener", |d| {
        Proxy::resources(d, "Listener")
            .iter()
            .any(|l| l["name"] == "inbound" && l["resource"]["protocol"] == "PROTOCOL_TCP")
    })
    .await;
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let ops = "spiffe://cluster.local/ns/default/sa/ops";
    let (cert, key) = issue_cert(&meshd, ops, &dir.path().join("ops")).await;
    let args = [
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let inbound = b.inbound_addr.to_string();

    // The bytes reach the app as they were sent: no identity header is added on TCP.
    let probe = openssl_s_client(&inbound, &args, &bundle).await.unwrap();
    assert!(probe.ok(), "{probe}\n{}", b.log());
    assert!(!probe.output.contains("x-mesh-peer-identity"), "{probe}");
    let probe = openssl_s_client(&inbound, &[], &bundle).await.unwrap();
    probe.assert_alert("certificate_required", "still mesh mTLS only");

    // A DENY on the caller's identity closes its connections.
    meshd
        .apply(&format!(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-ops, namespace: default}}
spec:
  selector: {{matchLabels: {{app: b}}}}
  action: DENY
  rules: [{{from: [{{principals: ["{ops}"]}}]}}]
"#
        ))
        .await;
    b.wait_config("the DENY policy", |d| {
        !Proxy::resources(d, "AuthorizationPolicy").is_empty()
    })
    .await;
    // The same probe as above: the handshake completes (the caller is a valid mesh peer), then
    // the connection is closed without a byte of the app's answer and without an alert.
    let before = app_b.requests();
    let probe = openssl_s_client(&inbound, &args, &bundle).await.unwrap();
    assert!(
        probe.negotiated.is_some(),
        "the handshake itself succeeds: {probe}"
    );
    assert_eq!(probe.alert, None, "{probe}");
    assert_eq!(probe.http_status, None, "no answer from the app: {probe}");
    assert_eq!(app_b.requests(), before, "nothing reached the app");
}

/// B's application for the gRPC test: `mesh.v1.Identity/Sign`, answering with the caller's
/// identity header and echoing the CSR field.
struct GrpcEcho;

#[tonic::async_trait]
impl mesh_proto::v1::identity_server::Identity for GrpcEcho {
    async fn sign(
        &self,
        request: tonic::Request<mesh_proto::v1::SignRequest>,
    ) -> Result<tonic::Response<mesh_proto::v1::SignResponse>, tonic::Status> {
        let peer = request
            .metadata()
            .get("x-mesh-peer-identity")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if request.into_inner().csr_pem == "fail" {
            return Err(tonic::Status::failed_precondition("asked to fail"));
        }
        Ok(tonic::Response::new(mesh_proto::v1::SignResponse {
            cert_chain_pem: peer,
            trust_bundle_pem: "echo".into(),
            expires_at_unix: 42,
        }))
    }
}

#[tokio::test]
async fn grpc_stays_http2_end_to_end_with_its_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    // B's app speaks gRPC: its Service port says so (the caller's version never decides).
    meshd
        .apply(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: b, namespace: default}
spec:
  ports: [{name: grpc, port: 80, protocol: http, appProtocol: grpc}]
  selector: {app: b}
"#,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_app = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh_proto::v1::identity_server::IdentityServer::new(
                GrpcEcho,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let app_a = EchoApp::start("a").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        grpc_app,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    b.wait_config("B's app cluster to speak HTTP/2", |d| {
        Proxy::resources(d, "Cluster").iter().any(|c| {
            c["name"] == "inbound|app" && c["resource"]["app_protocol"] == "APP_PROTOCOL_HTTP2"
        })
    })
    .await;
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    a.wait_config("A to know B's endpoint", |d| {
        Proxy::resources(d, "Cluster").iter().any(|c| {
            c["name"] == "b.default:80"
                && c["resource"]["endpoints"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
        })
    })
    .await;

    // A gRPC client (HTTP/2 with prior knowledge) to A's outbound, addressed to `b`.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.outbound_addr))
        .unwrap()
        .origin("http://b:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = mesh_proto::v1::identity_client::IdentityClient::new(channel);
    let answer = client
        .sign(mesh_proto::v1::SignRequest {
            csr_pem: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", a.log()))
        .into_inner();
    assert_eq!(answer.cert_chain_pem, A, "B's app sees A's identity");
    assert_eq!(answer.expires_at_unix, 42);
    // A gRPC error travels in the trailers: it arrives intact.
    let status = client
        .sign(mesh_proto::v1::SignRequest {
            csr_pem: "fail".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "asked to fail");
}

/// `--k8s-token-file`: the sidecar proves itself with a projected ServiceAccount token, meshd
/// asks the Kubernetes API (TokenReview, for the audience `meshd`, with its own token) and
/// grants the identity Kubernetes names. The API server is a stand-in
/// (`mesh_tests::kube_api`): none can be installed here.
#[tokio::test]
async fn a_kubernetes_serviceaccount_token_gets_the_identity_kubernetes_vouches_for() {
    use mesh_tests::kube_api::{FakeKubeApi, service_account_jwt};
    let dir = tempfile::tempdir().unwrap();
    let b_token = service_account_jwt("default", "b", "1");
    // Claims say "b", Kubernetes says "c": the claims must not win.
    let forged = service_account_jwt("default", "b", "2");
    let api = FakeKubeApi::start(&[(&b_token, "default", "b"), (&forged, "default", "c")])
        .await
        .unwrap();
    let meshd_token = dir.path().join("meshd-sa-token");
    std::fs::write(&meshd_token, "meshd-own-token").unwrap();
    let meshd = Meshd::start(
        &dir.path().join("meshd"),
        &MeshdOptions {
            args: vec![
                "--k8s-api-server".into(),
                api.url.clone(),
                "--k8s-token-file".into(),
                meshd_token.display().to_string(),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let _b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions {
            k8s_token: Some(b_token.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let seen = a.get_until("b", "/", 200).await;
    assert_eq!(seen["headers"]["x-mesh-peer-identity"], A, "{seen}");
    let certs = meshd
        .admin_get(
            "/api/v1/certificates?identity=spiffe%3A%2F%2Fcluster.local%2Fns%2Fdefault%2Fsa%2Fb",
        )
        .await;
    assert_eq!(
        certs["certificates"].as_array().unwrap().len(),
        1,
        "{certs}"
    );
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0].bearer, "meshd-own-token");
    assert_eq!(reviews[0].body["spec"]["token"], b_token.as_str());
    assert_eq!(reviews[0].body["spec"]["audiences"][0], "meshd");

    // An unknown token, and a token Kubernetes ties to another account: no certificate.
    for (name, token, why) in [
        (
            "unknown",
            service_account_jwt("default", "b", "3"),
            "invalid bearer token",
        ),
        (
            "forged",
            forged.clone(),
            "but the caller proved spiffe://cluster.local/ns/default/sa/c",
        ),
    ] {
        let p = Proxy::start(
            &meshd,
            &dir.path().join(name),
            B,
            app_b.addr,
            &ProxyOptions {
                k8s_token: Some(token),
                no_wait_ready: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let refused = mesh_tests::wait::until(
            "the sidecar to report the refusal",
            Duration::from_secs(30),
            || async {
                let log = p.log();
                log.contains("no certificate yet").then_some(log)
            },
        )
        .await
        .unwrap();
        assert_eq!(p.admin("/ready").await.0, 503, "{name}: {refused}");
        let audit = meshd.admin_get("/api/v1/audit?limit=100").await;
        assert!(
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["outcome"] == "denied"
                    && e["detail"].as_str().unwrap_or("").contains(why)),
            "{name}: the audit log says why ({why}): {audit}"
        );
    }
    let certs = meshd.admin_get("/api/v1/certificates").await;
    assert!(
        !certs.to_string().contains("/sa/c\""),
        "no certificate for the account Kubernetes named: {certs}"
    );
}

/// mesh-proxy says "ready" only once it is (after its certificate and every first
/// configuration; before, "listening"), a `--control-plane` that is not meshd's gRPC port or a
/// `--ca-bundle` without meshd's root gets a hint naming the flag, and `meshctl status SIDECAR`
/// shows where the sidecar's admin endpoint is.
#[tokio::test]
async fn mesh_proxy_says_ready_only_when_it_is_and_hints_at_the_wrong_flag() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let other = Meshd::start(&dir.path().join("other"), &MeshdOptions::default())
        .await
        .unwrap();
    let app = EchoApp::start("a").await.unwrap();
    let not_ready = |options: ProxyOptions, name: &'static str| {
        let (meshd, dir, app) = (&meshd, dir.path().join(name), app.addr);
        async move {
            let options = ProxyOptions {
                no_wait_ready: true,
                ..options
            };
            Proxy::start(meshd, &dir, A, app, &options).await.unwrap()
        }
    };
    let cases = [
        (
            ProxyOptions {
                control_planes: vec![format!("https://{}", meshd.admin_addr)],
                ..Default::default()
            },
            "admin-port",
            "hint: that port does not speak TLS: --control-plane must be meshd's gRPC address",
        ),
        (
            ProxyOptions {
                ca_bundle: Some(other.data_dir.join("ca-bundle.pem")),
                ..Default::default()
            },
            "wrong-bundle",
            "hint: meshd's certificate does not chain to the trust bundle given (--ca-bundle)",
        ),
    ];
    for (options, name, hint) in cases {
        let proxy = not_ready(options, name).await;
        mesh_tests::wait::until(name, Duration::from_secs(30), || async {
            proxy.process.log().contains(hint).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", proxy.process.log()));
        let log = proxy.process.log();
        assert!(!log.contains("mesh-proxy ready"), "{name}: {log}");
        assert_eq!(proxy.admin("/ready").await.0, 503, "{name}");
    }

    let good = Proxy::start(
        &meshd,
        &dir.path().join("good"),
        A,
        app.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let log = mesh_tests::wait::until("the ready line", Duration::from_secs(10), || async {
        let log = good.process.log();
        log.contains("mesh-proxy ready").then_some(log)
    })
    .await
    .unwrap();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle}: {log}"))
    };
    assert!(
        at("mesh-proxy listening") < at("certificate installed"),
        "{log}"
    );
    assert!(
        at("certificate installed") < at("mesh-proxy ready"),
        "{log}"
    );

    let sidecars = meshd.admin_get("/api/v1/sidecars").await;
    let me = mesh_tests::fixtures::items(&sidecars, "sidecars")
        .iter()
        .find(|s| s["identity"] == A && s["admin_address"] == good.admin_addr.to_string())
        .unwrap_or_else(|| panic!("{sidecars}"))
        .clone();
    let mut cmd = meshd.meshctl();
    cmd.args(["status", me["id"].as_str().unwrap()]);
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Admin") && l.trim_end().ends_with(&good.admin_addr.to_string())),
        "{stdout}"
    );
}

/// Callers that are not a mesh-proxy, speaking HTTP/2 to an HTTP/1.1 app: real Envoy with a
/// mesh certificate straight to B's inbound, and curl with HTTP/2 prior knowledge on A's
/// outbound listener. B's app gets HTTP/1.1 (its Service port's `appProtocol`, default http),
/// whatever a caller sends in `x-mesh-app-protocol`, and sees the Envoy workload's identity.
#[tokio::test]
async fn http2_callers_that_are_not_mesh_proxies_reach_an_http1_app() {
    use mesh_tests::peers::{Envoy, curl};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app_a = EchoApp::start("a").await.unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();

    let envoy_id = "spiffe://cluster.local/ns/default/sa/envoy";
    let envoy = Envoy::mesh_client(&meshd, &dir.path().join("envoy"), envoy_id, b.inbound_addr)
        .await
        .unwrap();
    let url = format!("http://{}/from-envoy", envoy.listen);
    let answer = mesh_tests::wait::until(
        "Envoy to answer through B's inbound",
        Duration::from_secs(60),
        || async {
            let out = curl(&[
                "-H",
                "x-mesh-app-protocol: h2",
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .await;
            out.stdout.ends_with("\n200").then_some(out)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nenvoy log:\n{}\nB's log:\n{}",
            envoy.process.log(),
            b.log()
        )
    });
    let body = answer.stdout.trim_end_matches("\n200");
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["id"], "b", "{echo}");
    assert_eq!(echo["path"], "/from-envoy");
    assert_eq!(
        echo["headers"]["x-mesh-peer-identity"], envoy_id,
        "B's app sees the Envoy workload's verified identity: {echo}"
    );
    assert!(
        echo["headers"].get("x-mesh-app-protocol").is_none(),
        "the header never reaches the app: {echo}"
    );

    // curl speaking h2c (prior knowledge) to A's outbound listener, addressed to `b`.
    a.get_until("b", "/", 200).await;
    let connect_to = format!("b:80:{}:{}", a.outbound_addr.ip(), a.outbound_addr.port());
    let out = curl(&[
        "--http2-prior-knowledge",
        "--connect-to",
        &connect_to,
        "-H",
        "x-mesh-app-protocol: h2",
        "-w",
        "\n%{http_code} %{http_version}",
        "http://b/h2c",
    ])
    .await;
    assert!(out.stdout.ends_with("\n200 2"), "{out}\n{}", b.log());
    let body = out.stdout.rsplit_once('\n').unwrap().0;
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["id"], "b", "{echo}");
    assert_eq!(echo["path"], "/h2c");
    assert_eq!(echo["headers"]["x-mesh-peer-identity"], A, "{echo}");
    assert!(
        echo["headers"].get("x-mesh-app-protocol").is_none(),
        "{echo}"
    );
}

/// Issue 12 item 14, with raw sockets on A's outbound listener: a malformed chunked body is the
/// client's fault (400 from A, not an "upstream reset" 502), and a transfer coding the sidecar
/// cannot carry across the HTTP/2 hop is refused with 501, never silently dropped.
#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_foreign_transfer_codings_501() {
    use mesh_tests::peers::{raw_exchange, status_of};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app_a = EchoApp::start("a").await.unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let _b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    a.get_until("b", "/", 200).await;
    let head = "POST /chunked HTTP/1.1\r\nHost: b\r\nConnection: close\r\n";
    let send = |te: &str, body: &str| {
        let request = format!("{head}Transfer-Encoding: {te}\r\n\r\n{body}");
        async move { raw_exchange(a.outbound_addr, request.as_bytes(), Duration::from_secs(30)).await }
    };

    // Well-formed: the body arrives whole.
    let ok = send("chunked", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    assert!(ok.contains("\"body\":\"hello world\""), "{ok}");

    for (what, body) in [
        ("a bare LF in the framing", "5\nhello\r\n0\r\n\r\n"),
        ("a size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("a chunk longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        (
            "a size that overflows",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let answer = send("chunked", body).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
        assert!(
            answer.contains("malformed request body"),
            "{what}: says why: {answer}"
        );
    }

    // curl's `--http2` on plain HTTP offers `Upgrade: h2c`: declined, answered in HTTP/1.1.
    let connect_to = format!("b:80:{}:{}", a.outbound_addr.ip(), a.outbound_addr.port());
    let out = mesh_tests::peers::curl(&[
        "--http2",
        "--connect-to",
        &connect_to,
        "-w",
        "\n%{http_code} %{http_version}",
        "http://b/h2c-offer",
    ])
    .await;
    assert!(out.stdout.ends_with("\n200 1.1"), "{out}");

    let before = app_b.requests();
    let answer = send("gzip, chunked", "5\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&answer), 501, "{answer}");
    assert!(answer.contains("gzip"), "{answer}");
    assert_eq!(app_b.requests(), before, "nothing reached B's app");
}

/// Issue 12 item 3: an absolute-form request (`GET http://b/ HTTP/1.1`, as an HTTP proxy
/// client sends it; curl `-x`) is routed by the URL's authority, not by a conflicting `Host`;
/// on the inbound side an HTTP/2 `:authority` wins over a `host` header (Python `h2`). The app
/// sees the one host that was routed.
#[tokio::test]
async fn the_request_target_authority_wins_over_a_conflicting_host() {
    use mesh_tests::peers::{PY_H2_REQUEST, curl, python, raw_exchange, status_of};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let app_a = EchoApp::start("a").await.unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    a.get_until("b", "/", 200).await;

    // Raw socket: absolute form with a Host naming something else.
    let answer = raw_exchange(
        a.outbound_addr,
        b"GET http://b/absolute?q=1 HTTP/1.1\r\nHost: nobody\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["id"], "b", "{echo}");
    assert_eq!(echo["path"], "/absolute?q=1", "{echo}");
    assert_eq!(
        echo["headers"]["host"], "b",
        "the conflicting Host was replaced: {echo}"
    );

    // curl through A's outbound as its HTTP proxy.
    let proxy = format!("http://{}", a.outbound_addr);
    let out = curl(&["-x", &proxy, "http://b.default/via-proxy"]).await;
    assert!(out.ok(), "{out}");
    let echo: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(echo["id"], "b", "{echo}");
    assert_eq!(echo["path"], "/via-proxy");
    assert_eq!(echo["headers"]["host"], "b.default", "{echo}");

    // Inbound: HTTP/2 with `:authority: b` and a `host: evil.example` header.
    let (cert, key) = mesh_tests::proxy::issue_cert(
        &meshd,
        "spiffe://cluster.local/ns/default/sa/ops",
        &dir.path().join("ops"),
    )
    .await;
    let args = vec![
        b.inbound_addr.ip().to_string(),
        b.inbound_addr.port().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        meshd.data_dir.join("ca-bundle.pem").display().to_string(),
        "/h2-authority".into(),
        ":authority=b".into(),
        "host=evil.example".into(),
    ];
    let out = python(&["h2"], PY_H2_REQUEST, &args, Duration::from_secs(60)).await;
    assert!(out.ok(), "{out}\nB:\n{}", b.log());
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    let echo: serde_json::Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["headers"]["host"], "b", "{echo}");
}

/// Issue 12 item 4: a real WebSocket client (Python `websockets`) through A's outbound reaches
/// a real WebSocket server behind B: the upgrade is carried end to end (on an HTTP/1.1
/// connection of its own between the sidecars), messages flow both ways, and B's server sees
/// A's verified identity. A `CONNECT` tunnel is refused with 501, not turned into a request.
#[tokio::test]
async fn websocket_upgrades_pass_through_both_sidecars() {
    use mesh_tests::peers::{PY_WS_CLIENT, python, raw_exchange, status_of, websocket_server};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let (_server, ws_app) = websocket_server(dir.path()).await.unwrap();
    let app_a = EchoApp::start("a").await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        ws_app,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    let a = Proxy::start(
        &meshd,
        &dir.path().join("a"),
        A,
        app_a.addr,
        &ProxyOptions::default(),
    )
    .await
    .unwrap();
    a.wait_config("A to know B's endpoint", |d| {
        Proxy::resources(d, "Cluster").iter().any(|c| {
            c["name"] == "b.default:80"
                && c["resource"]["endpoints"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
        })
    })
    .await;

    let args: Vec<String> = [
        a.outbound_addr.ip().to_string(),
        a.outbound_addr.port().to_string(),
        "b".into(),
        "/chat".into(),
        "hello".into(),
        "world".into(),
    ]
    .into();
    let out = python(
        &["websockets"],
        PY_WS_CLIENT,
        &args,
        Duration::from_secs(60),
    )
    .await;
    assert!(out.ok(), "{out}\nA:\n{}\nB:\n{}", a.log(), b.log());
    let answers: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        answers,
        serde_json::json!([format!("{A}|hello"), format!("{A}|world")]),
        "messages both ways, and the server saw A's identity"
    );

    let answer = raw_exchange(
        a.outbound_addr,
        b"CONNECT b:80 HTTP/1.1\r\nHost: b:80\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&answer), 501, "{answer}");
}

/// Fail closed: until a sidecar is ready (a certificate, and every type's first response
/// ACKed), its inbound port closes every connection before a byte of TLS, so that nothing is
/// served without its policies. Seen from openssl, first with no certificate at all, then with
/// a certificate but a Cluster it cannot build (NACKed, so not ACKed); each time the same probe
/// is served once the sidecar is ready.
#[tokio::test]
async fn the_inbound_port_refuses_every_connection_until_the_sidecar_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let (cert, key) = issue_cert(
        &meshd,
        "spiffe://cluster.local/ns/default/sa/ops",
        &dir.path().join("ops"),
    )
    .await;
    let args = [
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let refused = |probe: &mesh_tests::proxy::TlsProbe| {
        probe.handshake_bytes_read == Some(0)
            && probe.alert.is_none()
            && probe.http_status.is_none()
    };

    // No certificate yet: meshd is behind a closed gate.
    let app_b = EchoApp::start("b").await.unwrap();
    let gate = Gate::start(&meshd.grpc_addr, false).await.unwrap();
    let b = Proxy::start(
        &meshd,
        &dir.path().join("b"),
        B,
        app_b.addr,
        &ProxyOptions {
            control_planes: vec![gate.url()],
            no_wait_ready: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = b.admin("/ready").await;
    assert!(
        status == 503 && body.contains("certificate"),
        "{status} {body}"
    );
    let probe = openssl_s_client(&b.inbound_addr.to_string(), &args, &bundle)
        .await
        .unwrap();
    assert!(refused(&probe), "closed without a byte: {probe}");
    assert_eq!(app_b.requests(), 0, "nothing reached the app");
    // The control: ready, the same probe is served.
    gate.set_open(true);
    b.wait_ready().await.unwrap();
    let probe = openssl_s_client(&b.inbound_addr.to_string(), &args, &bundle)
        .await
        .unwrap();
    assert!(probe.ok(), "served once ready: {probe}");

    // A certificate, but no first ACK: a workload registered b with an address the sidecar
    // cannot build an endpoint of, so a new sidecar NACKs the Cluster and stays unready.
    let vm = mesh_tests::fixtures::b_vm_with_unbuildable_address(&meshd).await;
    let app_c = EchoApp::start("c").await.unwrap();
    let c = Proxy::start(
        &meshd,
        &dir.path().join("c"),
        "spiffe://cluster.local/ns/default/sa/c",
        app_c.addr,
        &ProxyOptions {
            no_wait_ready: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let waiting = mesh_tests::wait::until(
        "c to hold a certificate and NACK the Cluster",
        Duration::from_secs(60),
        || async {
            let (status, body) = c.admin("/ready").await;
            (status == 503 && !body.contains("certificate") && body.contains("Cluster"))
                .then_some(body)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let (_, certs) = c.admin("/certs").await;
    assert!(
        certs.contains("spiffe_id"),
        "c holds a certificate: {certs}"
    );
    let probe = openssl_s_client(&c.inbound_addr.to_string(), &args, &bundle)
        .await
        .unwrap();
    assert!(
        refused(&probe),
        "closed without a byte while {waiting}: {probe}"
    );
    assert_eq!(app_c.requests(), 0, "nothing reached the app");
    // The control: the bad endpoint leaves, the Cluster is ACKed, the same probe is served.
    drop(vm);
    c.wait_ready().await.unwrap();
    let probe = openssl_s_client(&c.inbound_addr.to_string(), &args, &bundle)
        .await
        .unwrap();
    assert!(probe.ok(), "served once ready: {probe}\n{}", c.log());
}
