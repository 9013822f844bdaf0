//! The sidecar when things around it change: meshd goes away and comes back, a sidecar restarts
//! while meshd is away (`--state-dir`), certificates renew under load, SIGTERM drains. Real
//! processes on loopback; meshd sits behind a [`Gate`] so that a restarted meshd (new port) is
//! reachable at the address the sidecars were given.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::echo::EchoApp;
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::proxy::{Gate, Proxy, ProxyOptions};
use mesh_tests::wait;
use std::path::Path;
use std::time::Duration;

use mesh_tests::fixtures::{ID_A as A, ID_B as B};

async fn sidecar(
    meshd: &Meshd,
    gate: &Gate,
    dir: &Path,
    identity: &str,
    app: &EchoApp,
    args: &[&str],
) -> Proxy {
    Proxy::start(
        meshd,
        &dir.join(&app.id),
        identity,
        app.addr,
        &ProxyOptions {
            control_planes: vec![gate.url()],
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The value of a metric line (the first series whose text starts with `series`).
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn get_ok_n(a: &Proxy, n: usize) {
    let client = reqwest::Client::new();
    for i in 0..n {
        let r = a
            .outbound(&client, reqwest::Method::GET, "b", &format!("/n/{i}"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}\nA:\n{}", a.log());
    }
}

#[tokio::test]
async fn traffic_flows_without_meshd_and_the_sidecars_resync_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("meshd");
    let mut meshd = Meshd::start(&data, &MeshdOptions::default()).await.unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &[]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &[]).await;
    a.get_until("b", "/", 200).await;
    let (_, before) = a.admin("/metrics").await;
    let bundles_before = metric(
        &before,
        "mesh_proxy_config_resources_received_total{type=\"TrustBundle\"}",
    )
    .unwrap();

    // meshd gone: every request still works, on the last good configuration.
    gate.set_open(false);
    meshd.process.kill();
    get_ok_n(&a, 50).await;
    let metrics_down = wait::until(
        "A to notice meshd is gone",
        Duration::from_secs(30),
        || async {
            let (_, m) = a.admin("/metrics").await;
            (metric(&m, "mesh_proxy_control_plane_connected") == Some(0.0)).then_some(m)
        },
    )
    .await
    .unwrap();
    assert!(metrics_down.contains("mesh_proxy_control_plane_connected 0"));
    assert_eq!(
        a.admin("/ready").await.0,
        200,
        "a lost control plane never unreadies"
    );

    // meshd back (new port, same data): the sidecars reconnect and get only differences.
    let meshd2 = Meshd::start(&data, &MeshdOptions::default()).await.unwrap();
    gate.set_target(&meshd2.grpc_addr);
    gate.set_open(true);
    for p in [&a, &b] {
        wait::until(
            "the sidecar to reconnect",
            Duration::from_secs(90),
            || async {
                let (_, m) = p.admin("/metrics").await;
                (metric(&m, "mesh_proxy_control_plane_connected") == Some(1.0)).then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    }
    get_ok_n(&a, 10).await;
    let (_, after) = a.admin("/metrics").await;
    assert_eq!(
        metric(
            &after,
            "mesh_proxy_config_resources_received_total{type=\"TrustBundle\"}"
        ),
        Some(bundles_before),
        "the unchanged bundle was not sent again:\n{after}"
    );
    assert!(a.log().matches("discovery stream open").count() >= 2);
    let sidecars = meshd2.admin_get("/api/v1/sidecars").await;
    assert_eq!(
        sidecars["sidecars"].as_array().unwrap().len(),
        2,
        "{sidecars}"
    );
}

#[tokio::test]
async fn a_sidecar_restarted_with_state_dir_while_meshd_is_down_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let _b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &[]).await;
    let state = dir.path().join("a-state");
    let mut a = sidecar(
        &meshd,
        &gate,
        dir.path(),
        A,
        &app_a,
        &["--state-dir", state.to_str().unwrap()],
    )
    .await;
    a.get_until("b", "/", 200).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("key.der"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");

    gate.set_open(false);
    meshd.process.kill();
    a.restart().await.unwrap();
    a.wait_ready().await.unwrap();
    get_ok_n(&a, 20).await;
    assert!(a.log().contains("restored the certificate"), "{}", a.log());
}

#[tokio::test]
async fn certificates_renew_under_load_without_a_failed_request_or_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    // Ten-second certificates: renewed every ~5 s.
    let b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &["--cert-ttl", "10s"]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &["--cert-ttl", "10s"]).await;
    a.get_until("b", "/", 200).await;
    let serial = |p: &Proxy| {
        let p = p.admin_addr;
        async move {
            let body = reqwest::get(format!("http://{p}/certs"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["certificate"]["serial"].as_str().unwrap().to_string()
        }
    };
    let (a0, b0) = (serial(&a).await, serial(&b).await);
    let handshakes = |m: &str| {
        metric(
            m,
            "mesh_proxy_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}",
        )
    };
    let (_, m) = a.admin("/metrics").await;
    let connections_before = handshakes(&m);

    // Requests until both sidecars renewed (twice each, so that a renewal happens under
    // load on either side of the connection), every one of them answered by B.
    let traffic = mesh_tests::ring::Traffic::start(vec![(a.outbound_addr, "b".into())]);
    let serials = std::sync::Mutex::new((vec![a0], vec![b0]));
    let renewed = wait::until(
        "A and B to renew twice under load",
        Duration::from_secs(60),
        || async {
            let (sa, sb) = (serial(&a).await, serial(&b).await);
            let mut seen = serials.lock().unwrap();
            if seen.0.last() != Some(&sa) {
                seen.0.push(sa);
            }
            if seen.1.last() != Some(&sb) {
                seen.1.push(sb);
            }
            (seen.0.len() >= 3 && seen.1.len() >= 3).then_some(())
        },
    )
    .await;
    let serials = serials.into_inner().unwrap();
    assert!(
        renewed.is_ok(),
        "{renewed:?}: serials {serials:?}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    traffic.wait_more(10).await;
    let (ok, failed) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "failed during renewal ({ok} ok): {failed:?}"
    );
    let (_, m) = a.admin("/metrics").await;
    assert_eq!(
        handshakes(&m),
        connections_before,
        "the mesh connection A→B stayed open through the renewals"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let mut b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &[]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &[]).await;
    a.get_until("b", "/", 200).await;

    // The request is held at B's app until the test lets it go.
    app_b.hold(true);
    let before = app_b.requests();
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(
        a.outbound(&client, reqwest::Method::GET, "b", "/slow")
            .send(),
    );
    wait::until(
        "the request to reach B's app",
        Duration::from_secs(10),
        || async { (app_b.requests() > before).then_some(()) },
    )
    .await
    .unwrap();
    b.process.signal("TERM");
    // Draining: /ready says 503 at once (nothing new should be sent here) while the request
    // is still in flight.
    let (status, body) = wait::until(
        "B's /ready to turn 503 during the drain",
        Duration::from_secs(10),
        || async {
            let (status, body) = b.admin("/ready").await;
            (status == 503).then_some((status, body))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    assert!(body.contains("draining"), "{status} {body}");
    assert!(!in_flight.is_finished(), "the drain has not ended yet");
    assert!(b.process.try_exit().is_none(), "B still runs");
    app_b.hold(false);
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "the request in flight finished");
    let status = b.process.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}\n{}", b.log());
    assert!(b.log().contains("drained"), "{}", b.log());
    assert!(
        tokio::net::TcpStream::connect(b.inbound_addr)
            .await
            .is_err(),
        "no longer accepting"
    );
    b.process.kill();
}

/// `meshctl certs reissue` (after a key compromise): every sidecar gets a new certificate within
/// the window while a request loop runs; no request fails and the mesh connection stays open.
#[tokio::test]
async fn a_forced_reissue_during_a_request_loop_fails_nothing_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &[]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &[]).await;
    a.get_until("b", "/", 200).await;
    let serial = |p: &Proxy| {
        let p = p.admin_addr;
        async move {
            let v: serde_json::Value = reqwest::get(format!("http://{p}/certs"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["certificate"]["serial"].as_str().unwrap().to_string()
        }
    };
    let (a0, b0) = (serial(&a).await, serial(&b).await);
    let series = "mesh_proxy_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}";
    let (_, m) = a.admin("/metrics").await;
    let connections_before = metric(&m, series);

    // The request loop, counting every failure, until told to stop.
    let traffic = mesh_tests::ring::Traffic::start(vec![(a.outbound_addr, "b".into())]);
    traffic.wait_more(10).await;

    let mut cmd = meshd.meshctl();
    cmd.args(["certs", "reissue", "--all", "--window", "2s", "--wait"]);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || mesh_tests::process::run(cmd))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "reissue --wait: {stdout}{stderr}\nA:\n{}\nB:\n{}\nmeshd:\n{}",
        a.log(),
        b.log(),
        meshd.process.log()
    );
    assert!(
        stderr.contains("2/2 workloads hold a new certificate"),
        "{stderr}"
    );
    let renewed = wait::until(
        "both sidecars to hold new certificates",
        Duration::from_secs(30),
        || async { (serial(&a).await != a0 && serial(&b).await != b0).then_some(()) },
    )
    .await;
    assert!(
        renewed.is_ok(),
        "{renewed:?}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );

    let (ok, failed) = traffic.stop().await;
    assert!(ok > 50, "the loop ran ({ok} requests)");
    assert!(
        failed.is_empty(),
        "failed requests during the re-issue: {failed:?}"
    );
    let (_, m) = a.admin("/metrics").await;
    assert_eq!(
        metric(&m, series),
        connections_before,
        "the mesh connection A→B stayed open through the re-issue"
    );
    // The re-issue is audited.
    let audit = meshd.admin_get("/api/v1/audit?limit=50").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "certificate.reissue"),
        "{audit}"
    );
}

/// A resource the sidecar cannot build: a workload (here a scripted one, as a VM agent would)
/// registers service `b` with a DNS name as its inbound address; meshd passes it on as an
/// endpoint of b's Cluster, and mesh-proxy, which takes only IP:port endpoints, NACKs that
/// Cluster. The NACK text shows in meshd's admin API, A keeps its last good Cluster (the real
/// B) and no request fails; once the bad endpoint is gone, A is SYNCED again.
#[tokio::test]
async fn a_cluster_the_sidecar_cannot_build_is_nacked_and_traffic_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let _b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &["--id", "b-1"]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &["--id", "a-1"]).await;
    a.get_until("b", "/", 200).await;
    let traffic = mesh_tests::ring::Traffic::start(vec![(a.outbound_addr, "b".into())]);
    traffic.wait_more(10).await;

    let vm = mesh_tests::fixtures::b_vm_with_unbuildable_address(&meshd).await;
    let cluster_state = || async {
        let all = meshd.admin_get("/api/v1/sidecars").await;
        let a = mesh_tests::fixtures::items(&all, "sidecars")
            .iter()
            .find(|s| s["id"] == "a-1")
            .cloned()
            .unwrap_or_default();
        a["types"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type_url"] == mesh_proto::CLUSTER_TYPE_URL)
            .map(|t| {
                (
                    t["state"].as_str().unwrap_or("").to_string(),
                    t["nack"].clone(),
                )
            })
    };
    let nack = wait::until("A to NACK b's Cluster", Duration::from_secs(30), || async {
        match cluster_state().await {
            Some((state, nack)) if state == "NACKED" => Some(nack),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nA:\n{}", a.log()));
    let text = nack.as_str().unwrap_or_default();
    assert!(
        text.contains("b-vm.internal:15006") && text.contains("endpoint address"),
        "the NACK names the resource and why: {text}"
    );
    traffic.wait_more(30).await;

    // The bad endpoint leaves: the next Cluster is good, A ACKs it.
    drop(vm);
    wait::until("A SYNCED again", Duration::from_secs(30), || async {
        matches!(cluster_state().await, Some((s, _)) if s == "SYNCED").then_some(())
    })
    .await
    .unwrap();
    let (ok, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 40, "the loop ran ({ok} requests)");
}

/// Slowloris on a listener: a connection that writes a header line every 300 ms and never
/// finishes its head. Returns how long it stayed open (`None`: still open after 15 s).
async fn slowloris(addr: std::net::SocketAddr) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: b\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return Some(start.elapsed());
        }
    }
    None
}

/// How long until the peer closes `s` (`None`: still open after `limit`).
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Issue 12 item 11: header-read timeout, idle timeout and a connection limit on both
/// listeners, after the TLS handshake too, with raw sockets and Python's `h2`, and counted.
#[tokio::test]
async fn slow_silent_and_idle_clients_are_closed_and_each_listener_is_bounded() {
    use mesh_tests::peers::{PY_INBOUND_TIMEOUTS, metric, python};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let limits = [
        "--header-read-timeout",
        "2s",
        "--idle-timeout",
        "4s",
        "--max-connections",
        "40",
    ];
    let b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &limits).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &limits).await;
    a.get_until("b", "/", 200).await;

    // 30 slowloris connections to the outbound listener: all closed at the header timeout.
    let lorises: Vec<_> = (0..30)
        .map(|_| tokio::spawn(slowloris(a.outbound_addr)))
        .collect();
    for l in lorises {
        let open = l.await.unwrap();
        assert!(
            open.is_some_and(|d| d >= Duration::from_millis(1500) && d < Duration::from_secs(8)),
            "a slowloris connection stayed open {open:?}"
        );
    }

    // The limit: 40 silent connections fill the listener; the 41st is closed at once; once the
    // silent ones timed out, the listener serves again.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(
            tokio::net::TcpStream::connect(a.outbound_addr)
                .await
                .unwrap(),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(a.outbound_addr)
        .await
        .unwrap();
    let refused = closed_within(&mut extra, Duration::from_millis(1500)).await;
    assert!(refused.is_some(), "the 41st connection was not refused");
    for s in &mut silent {
        let open = closed_within(s, Duration::from_secs(10)).await;
        assert!(open.is_some(), "a silent connection stayed open");
    }
    a.get_until("b", "/after-limit", 200).await;

    // Idle: a finished keep-alive request, then nothing: closed after the idle timeout.
    let mut s = tokio::net::TcpStream::connect(a.outbound_addr)
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /idle HTTP/1.1\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }
    let idle = closed_within(&mut s, Duration::from_secs(15)).await;
    assert!(
        idle.is_some_and(|d| d >= Duration::from_secs(3) && d < Duration::from_secs(9)),
        "an idle outbound connection stayed open {idle:?}"
    );

    // The inbound listener with a mesh certificate, after the TLS handshake: silent, partial
    // headers, HTTP/2 without its preface, HTTP/2 without a request, an idle HTTP/2 connection.
    let (cert, key) = mesh_tests::proxy::issue_cert(
        &meshd,
        "spiffe://cluster.local/ns/default/sa/ops",
        &dir.path().join("ops"),
    )
    .await;
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let cases = [
        "silent-tls",
        "partial-h1",
        "h2-no-preface",
        "h2-no-request",
        "h2-idle",
    ];
    let mut args = vec![
        b.inbound_addr.ip().to_string(),
        b.inbound_addr.port().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        bundle.display().to_string(),
    ];
    args.extend(cases.iter().map(|c| c.to_string()));
    let out = python(
        &["h2"],
        PY_INBOUND_TIMEOUTS,
        &args,
        Duration::from_secs(120),
    )
    .await;
    assert!(out.ok(), "{out}\nB:\n{}", b.log());
    let seen: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    for case in cases {
        let (low, high) = if case == "h2-idle" {
            (3.0, 9.0)
        } else {
            (0.5, 6.0)
        };
        let secs = seen[case].as_f64();
        assert!(
            secs.is_some_and(|s| s >= low && s < high),
            "{case}: the inbound connection stayed open {secs:?}s (wanted {low}..{high}): {seen}"
        );
    }

    // The inbound listener is bounded before any TLS: 40 silent TCP connections fill it, the
    // next is closed at once.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(
            tokio::net::TcpStream::connect(b.inbound_addr)
                .await
                .unwrap(),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(b.inbound_addr)
        .await
        .unwrap();
    let refused = closed_within(&mut extra, Duration::from_millis(1500)).await;
    assert!(
        refused.is_some(),
        "the 41st inbound connection was not refused"
    );
    drop(silent);

    // Every one of them was counted.
    let (_, metrics) = a.admin("/metrics").await;
    let out_timeouts = |kind: &str| {
        metric(
            &metrics,
            "mesh_proxy_connection_timeouts",
            &["direction=\"outbound\"", &format!("kind=\"{kind}\"")],
        )
    };
    assert!(out_timeouts("header_read") >= 70.0, "{metrics}");
    assert!(out_timeouts("idle") >= 1.0, "{metrics}");
    assert!(
        metric(
            &metrics,
            "mesh_proxy_connections_refused",
            &["direction=\"outbound\""]
        ) >= 1.0,
        "{metrics}"
    );
    let (_, metrics) = b.admin("/metrics").await;
    let in_timeouts = |kind: &str| {
        metric(
            &metrics,
            "mesh_proxy_connection_timeouts",
            &["direction=\"inbound\"", &format!("kind=\"{kind}\"")],
        )
    };
    assert!(in_timeouts("header_read") >= 4.0, "{metrics}");
    assert!(
        metric(
            &metrics,
            "mesh_proxy_connections_refused",
            &["direction=\"inbound\""]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(in_timeouts("idle") >= 1.0, "{metrics}");
}

/// Sends one HTTP/1.1 request on a raw socket to `addr` and reads its response head and
/// body (`connection: close`); returns the raw text.
async fn raw_request(addr: std::net::SocketAddr, head: &str) -> String {
    mesh_tests::peers::raw_exchange(addr, head.as_bytes(), Duration::from_secs(30)).await
}

/// Issue 12 item 13: request headers larger than the next hop accepts are a 431 from A, and
/// the shared A→B HTTP/2 connection carries on: a request in flight on it finishes, later
/// ones reuse it (no new handshake).
#[tokio::test]
async fn oversized_request_headers_are_431_at_a_and_the_shared_connection_survives() {
    use mesh_tests::peers::{metric, status_of};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let (app_a, app_b) = (
        EchoApp::start("a").await.unwrap(),
        EchoApp::start("b").await.unwrap(),
    );
    let _b = sidecar(&meshd, &gate, dir.path(), B, &app_b, &[]).await;
    let a = sidecar(&meshd, &gate, dir.path(), A, &app_a, &[]).await;
    a.get_until("b", "/", 200).await;
    let handshakes = |m: &str| {
        metric(
            m,
            "mesh_proxy_tls_handshakes",
            &["direction=\"outbound\"", "result=\"ok\""],
        )
    };
    let (_, metrics) = a.admin("/metrics").await;
    let before = handshakes(&metrics);
    assert_eq!(before, 1.0, "{metrics}");

    // A slow request in flight on the shared connection meanwhile.
    app_b.set_delay(Duration::from_secs(3));
    let addr = a.outbound_addr;
    let slow = tokio::spawn(async move {
        raw_request(
            addr,
            "GET /slow HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    wait::until(
        "the slow request to reach B's app",
        Duration::from_secs(20),
        || async { (app_b.requests() >= 2).then_some(()) },
    )
    .await
    .unwrap();

    let one_big = format!(
        "GET /big HTTP/1.1\r\nHost: b\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let many: String = (0..60)
        .map(|i| format!("X-Many-{i}: {}\r\n", "y".repeat(1024)))
        .collect();
    let many = format!("GET /many HTTP/1.1\r\nHost: b\r\n{many}Connection: close\r\n\r\n");
    for (what, request) in [
        ("one 64 KiB header", &one_big),
        ("60 headers of 1 KiB", &many),
    ] {
        let answer = raw_request(a.outbound_addr, request).await;
        assert_eq!(status_of(&answer), 431, "{what}: {answer:.300}");
        assert!(
            answer.to_ascii_lowercase().contains("x-mesh-proxy-error"),
            "{what}: A's own answer: {answer:.300}"
        );
    }
    let slow = slow.await.unwrap();
    assert_eq!(
        status_of(&slow),
        200,
        "the request in flight finished: {slow:.300}"
    );
    app_b.set_delay(Duration::ZERO);

    // Headers within the limit (40 KiB, more than HTTP/2's common 16 KiB) go through.
    let fine: String = (0..40)
        .map(|i| format!("X-Fine-{i}: {}\r\n", "z".repeat(1000)))
        .collect();
    let answer = raw_request(
        a.outbound_addr,
        &format!("GET /fine HTTP/1.1\r\nHost: b\r\n{fine}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer:.300}");
    assert!(answer.contains("x-fine-39"), "B's app got them all");
    get_ok_n(&a, 3).await;
    let (_, metrics) = a.admin("/metrics").await;
    assert_eq!(
        handshakes(&metrics),
        before,
        "still the one A→B connection: {metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mesh_proxy_header_list_too_large",
            &["direction=\"outbound\""]
        ) >= 2.0,
        "{metrics}"
    );
}

/// Issue 12 item 12: 3 peers × 200 concurrent HTTP/2 streams (Python `h2`) into B's inbound
/// reach an HTTP/1.1 app over at most `--max-app-connections` connections, queued rather than
/// one connection each; beyond `--app-queue-timeout` a request is a 503; after the burst the
/// idle app connections are closed.
#[tokio::test]
async fn inbound_http2_streams_share_a_capped_pool_of_app_connections() {
    use mesh_tests::peers::{PY_H2_MANY, metric, python};
    let dir = tempfile::tempdir().unwrap();
    let meshd = Meshd::start(&dir.path().join("meshd"), &MeshdOptions::default())
        .await
        .unwrap();
    let gate = Gate::start(&meshd.grpc_addr, true).await.unwrap();
    let app_b = EchoApp::start("b").await.unwrap();
    let b = sidecar(
        &meshd,
        &gate,
        dir.path(),
        B,
        &app_b,
        &[
            "--max-app-connections",
            "16",
            "--app-queue-timeout",
            "8s",
            "--idle-timeout",
            "3s",
        ],
    )
    .await;
    let (cert, key) = mesh_tests::proxy::issue_cert(
        &meshd,
        "spiffe://cluster.local/ns/default/sa/ops",
        &dir.path().join("ops"),
    )
    .await;
    let many = |conns: usize, streams: usize| {
        vec![
            b.inbound_addr.ip().to_string(),
            b.inbound_addr.port().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            meshd.data_dir.join("ca-bundle.pem").display().to_string(),
            conns.to_string(),
            streams.to_string(),
            "/burst".into(),
        ]
    };

    app_b.set_delay(Duration::from_millis(30));
    let out = python(&["h2"], PY_H2_MANY, &many(3, 200), Duration::from_secs(180)).await;
    assert!(out.ok(), "{out}\nB:\n{}", b.log());
    let counts: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(counts["200"], 600, "every stream answered: {counts}");
    assert!(
        app_b.peak_connections() <= 16,
        "the app saw {} connections at once",
        app_b.peak_connections()
    );
    assert_eq!(app_b.requests(), 600);

    // The same burst again reuses what the first one took: memory does not keep growing.
    let rss = || mesh_tests::bench::proc_status_kib(b.process.pid(), "VmRSS:");
    let after_one = rss();
    let out = python(&["h2"], PY_H2_MANY, &many(3, 200), Duration::from_secs(180)).await;
    assert!(out.ok(), "{out}");
    let counts: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(counts["200"], 600, "{counts}");
    assert!(app_b.peak_connections() <= 16);
    let after_two = rss();
    assert!(
        after_two <= after_one + 4 * 1024,
        "RSS grew from {after_one} KiB to {after_two} KiB over a second identical burst"
    );

    // Beyond the queue's patience: 16 slow requests hold every connection, the 17th is a 503.
    app_b.set_delay(Duration::from_secs(10));
    let out = python(&["h2"], PY_H2_MANY, &many(1, 17), Duration::from_secs(120)).await;
    assert!(out.ok(), "{out}");
    let counts: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(counts["200"], 16, "{counts}");
    assert_eq!(counts["503"], 1, "{counts}");
    assert!(app_b.peak_connections() <= 16);
    app_b.set_delay(Duration::ZERO);

    // The burst's connections do not stay: idle ones are closed.
    wait::until(
        "the idle app connections to close",
        Duration::from_secs(30),
        || async { (app_b.open_connections() == 0).then_some(()) },
    )
    .await
    .unwrap();
    let (_, metrics) = b.admin("/metrics").await;
    assert_eq!(
        metric(&metrics, "mesh_proxy_app_connections", &[]),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "mesh_proxy_app_queue_overflows", &[]) >= 1.0,
        "{metrics}"
    );
}
