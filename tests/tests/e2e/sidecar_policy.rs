//! Policies pushed from meshd and enforced by real sidecars on loopback: authorization
//! (DENY/ALLOW), local rate limits, retries hiding a flaky app (never a POST once sent),
//! request timeouts, an 80/20 traffic split, outlier ejection.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::echo::EchoApp;
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::proxy::{Proxy, ProxyOptions, issue_cert, openssl_s_client};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::fixtures::{ID_A as A, ID_B as B, ID_C as C};

/// An echo app and its sidecar for `identity`, serving `service`.
async fn workload(
    meshd: &Meshd,
    dir: &Path,
    identity: &str,
    service: &str,
    app_id: &str,
) -> (EchoApp, Proxy) {
    let app = EchoApp::start(app_id).await.unwrap();
    let proxy = Proxy::start(
        meshd,
        &dir.join(app_id),
        identity,
        app.addr,
        &ProxyOptions {
            service: Some(service.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (app, proxy)
}

async fn meshd(dir: &Path) -> Meshd {
    Meshd::start(&dir.join("meshd"), &MeshdOptions::default())
        .await
        .unwrap()
}

async fn get(proxy: &Proxy, client: &reqwest::Client, host: &str, path: &str) -> reqwest::Response {
    proxy
        .outbound(client, reqwest::Method::GET, host, path)
        .send()
        .await
        .unwrap()
}

fn service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80, protocol: http}}]\n  selector: {{app: {name}}}\n{extra}---\n"
    )
}

#[tokio::test]
async fn authorization_denies_with_403_and_allows_the_named_caller() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    let (_app_b, _b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    let (_app_c, c) = workload(&meshd, dir.path(), C, "c", "c").await;
    a.get_until("b", "/x", 200).await;
    c.get_until("b", "/x", 200).await;

    meshd
        .apply(&format!(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: b-allow-a, namespace: default}}
spec:
  selector: {{matchLabels: {{app: b}}}}
  action: ALLOW
  rules: [{{from: [{{principals: ["{A}"]}}]}}]
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: b-deny-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: b}}}}
  action: DENY
  rules: [{{to: [{{paths: ["/admin/*"]}}]}}]
"#
        ))
        .await;

    // C is not allowed any more; A is, except where DENY matches.
    c.get_until("b", "/x", 403).await;
    let client = reqwest::Client::new();
    let denied = get(&c, &client, "b", "/x").await;
    assert_eq!(denied.status(), 403);
    assert!(denied.text().await.unwrap().contains("RBAC: access denied"));
    let echo: serde_json::Value = get(&a, &client, "b", "/x").await.json().await.unwrap();
    assert_eq!(echo["headers"]["x-mesh-peer-identity"], A, "{echo}");
    assert_eq!(get(&a, &client, "b", "/admin/users").await.status(), 403);
    assert_eq!(get(&a, &client, "b", "/adminx").await.status(), 200);
}

#[tokio::test]
async fn a_rate_limit_answers_429_beyond_the_burst() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    let (_app_b, b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.get_until("b", "/", 200).await;

    meshd
        .apply(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: b-limit, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  requestsPerSecond: 1
  burst: 3
"#,
        )
        .await;
    b.wait_config("B to hold the rate limit", |d| {
        !Proxy::resources(d, "RateLimitPolicy").is_empty()
    })
    .await;

    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = get(&a, &client, "b", "/").await;
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        &statuses[..3],
        &[200, 200, 200],
        "the burst passes: {statuses:?}"
    );
    assert!(statuses[3..].contains(&429), "then 429: {statuses:?}");
    assert_eq!(retry_after.unwrap(), "1");
}

#[tokio::test]
async fn retries_hide_a_flaky_app_but_not_for_a_post_and_a_slow_app_gets_504() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    meshd
        .apply(
            &(service("b", "")
                + r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: b-route, namespace: default}
spec:
  parentRefs: [{name: b}]
  rules:
    - backends: [{service: b, port: 80}]
      retries: {attempts: 2, retryOn: ["5xx"]}
      timeout: 1s
"#),
        )
        .await;
    let (app_b, _b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.get_until("b", "/", 200).await;
    a.wait_config("A to hold the route with retries", |d| {
        Proxy::resources(d, "RouteTable").iter().any(|t| {
            t["name"] == "b.default:80"
                && t["resource"]["virtual_hosts"][0]["routes"][0]["retry"]["attempts"] == 2
        })
    })
    .await;
    let client = reqwest::Client::new();

    // Two failures, then success: the caller sees only the success.
    let before = app_b.requests();
    app_b.fail_next(2);
    let r = get(&a, &client, "b", "/flaky").await;
    assert_eq!(r.status(), 200);
    assert_eq!(app_b.requests() - before, 3, "two retries");

    // A POST reached the app: it is not sent again.
    let before = app_b.requests();
    app_b.fail_next(1);
    let r = a
        .outbound(&client, reqwest::Method::POST, "b", "/order")
        .body("one order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        app_b.requests() - before,
        1,
        "a POST is never retried once sent"
    );

    // More failures than retries: the last answer comes through.
    let before = app_b.requests();
    app_b.fail_next(5);
    assert_eq!(get(&a, &client, "b", "/down").await.status(), 503);
    assert_eq!(app_b.requests() - before, 3);
    app_b.fail_next(0);

    // Slower than the route's timeout: 504 from the sidecar, on time.
    app_b.set_delay(Duration::from_secs(3));
    let start = Instant::now();
    let r = get(&a, &client, "b", "/slow").await;
    let took = start.elapsed();
    assert_eq!(r.status(), 504);
    assert!(took < Duration::from_millis(2500), "{took:?}");
    app_b.set_delay(Duration::ZERO);
    assert_eq!(get(&a, &client, "b", "/fast").await.status(), 200);

    let (_, metrics) = a.admin("/metrics").await;
    assert!(
        metrics.contains("mesh_proxy_retries_total{cluster=\"b.default:80\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_80_20_split_lands_within_5_percent_over_1000_requests() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    meshd
        .apply(
            &(service("b", "")
                + &service("v1", "")
                + &service("v2", "")
                + r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: b-split, namespace: default}
spec:
  parentRefs: [{name: b}]
  rules:
    - backends:
        - {service: v1, port: 80, weight: 80}
        - {service: v2, port: 80, weight: 20}
"#),
        )
        .await;
    let (_v1, _p1) = workload(
        &meshd,
        dir.path(),
        "spiffe://cluster.local/ns/default/sa/v1",
        "v1",
        "v1",
    )
    .await;
    let (_v2, _p2) = workload(
        &meshd,
        dir.path(),
        "spiffe://cluster.local/ns/default/sa/v2",
        "v2",
        "v2",
    )
    .await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.wait_config("A to know both versions' endpoints", |d| {
        let clusters = Proxy::resources(d, "Cluster");
        ["v1.default:80", "v2.default:80"].iter().all(|name| {
            clusters.iter().any(|c| {
                c["name"] == *name
                    && c["resource"]["endpoints"]
                        .as_array()
                        .is_some_and(|e| !e.is_empty())
            })
        })
    })
    .await;
    a.get_until("b", "/", 200).await;

    let client = reqwest::Client::new();
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..1000 {
        let r = get(&a, &client, "b", "/split").await;
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        *counts
            .entry(echo["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 1000, "{counts:?}");
    assert!((750..=850).contains(&v1), "80/20 within ±5%: {counts:?}");
}

/// The value of the first metric series that starts with `series` (0 when absent).
async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let (_, metrics) = proxy.admin("/metrics").await;
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The echo app that answered (its id), and the status.
async fn who(proxy: &Proxy, client: &reqwest::Client, path: &str) -> (u16, String) {
    let r = get(proxy, client, "b", path).await;
    let status = r.status().as_u16();
    let echo: serde_json::Value = r.json().await.unwrap_or_default();
    (status, echo["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_sent_traffic_then_ejected_then_readmitted() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    meshd.apply(&service(
            "b",
            "  outlierDetection: {consecutive5xx: 2, baseEjectionTime: 5s, maxEjectionPercent: 50}\n",
        ),
    )
    .await;
    let b1 = "spiffe://cluster.local/ns/default/sa/b1";
    let b2 = "spiffe://cluster.local/ns/default/sa/b2";
    let (good, _p1) = workload(&meshd, dir.path(), b1, "b", "good").await;
    let (bad, _p2) = workload(&meshd, dir.path(), b2, "b", "bad").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.wait_config("A to know both endpoints of b", |d| {
        Proxy::resources(d, "Cluster").iter().any(|c| {
            c["name"] == "b.default:80"
                && c["resource"]["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.len() == 2)
        })
    })
    .await;
    a.get_until("b", "/", 200).await;
    let client = reqwest::Client::new();
    const EJECTIONS: &str = "mesh_proxy_outlier_ejections_total{cluster=\"b.default:80\"}";

    // Healthy, both endpoints are sent traffic (round robin).
    let (good0, bad0) = (good.requests(), bad.requests());
    for _ in 0..4 {
        assert_eq!(who(&a, &client, "/both").await.0, 200);
    }
    assert!(
        good.requests() > good0 && bad.requests() > bad0,
        "both endpoints serve: good {} bad {}",
        good.requests() - good0,
        bad.requests() - bad0
    );
    assert_eq!(metric(&a, EJECTIONS).await, 0.0, "nothing ejected yet");

    // The bad endpoint starts failing: it is still sent requests (and fails them) until A
    // ejects it, which the metric shows.
    bad.fail_next(u64::MAX);
    let bad_before = bad.requests();
    let failures = std::sync::atomic::AtomicU32::new(0);
    let ejected = mesh_tests::wait::until(
        "A to eject the failing endpoint",
        Duration::from_secs(30),
        || async {
            if who(&a, &client, "/failing").await.0 == 503 {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (metric(&a, EJECTIONS).await == 1.0).then_some(())
        },
    )
    .await;
    let failures = failures.into_inner();
    assert!(ejected.is_ok(), "{ejected:?}\nA:\n{}", a.log());
    assert!(
        bad.requests() - bad_before >= 2 && failures >= 2,
        "the bad endpoint was sent the 2 requests it failed before its ejection \
         (it got {}, callers saw {failures} failures)",
        bad.requests() - bad_before
    );

    // Ejected: every request goes to the good endpoint, none to the bad one.
    let (bad_before, good_before) = (bad.requests(), good.requests());
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            who(&a, &client, "/ejected").await,
            (200, "good".to_string())
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the check ran within the ejection time"
    );
    assert_eq!(
        bad.requests(),
        bad_before,
        "the ejected endpoint got no traffic"
    );
    assert_eq!(good.requests() - good_before, 10);

    // Healed, and the ejection time over: the endpoint is readmitted and serves again.
    bad.fail_next(0);
    let readmitted = mesh_tests::wait::until(
        "the endpoint to be readmitted",
        Duration::from_secs(30),
        || async { (who(&a, &client, "/back").await == (200, "bad".to_string())).then_some(()) },
    )
    .await;
    assert!(readmitted.is_ok(), "{readmitted:?}");
    assert_eq!(metric(&a, EJECTIONS).await, 1.0, "ejected once");
}

#[tokio::test]
async fn a_per_route_rate_limit_covers_only_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    meshd
        .apply(
            &(service("b", "")
                + r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: b-route, namespace: default}
spec:
  parentRefs: [{name: b}]
  rules:
    - name: api
      matches: [{path: {prefix: /api/}}]
      backends: [{service: b, port: 80}]
    - backends: [{service: b, port: 80}]
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: b-api-limit, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  requestsPerSecond: 1
  burst: 2
  scope: route
  route: b-route
  rule: api
"#),
        )
        .await;
    let (_app_b, b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    b.wait_config("B to hold the per-route limit", |d| {
        !Proxy::resources(d, "RateLimitPolicy").is_empty()
    })
    .await;
    a.get_until("b", "/other", 200).await;

    let client = reqwest::Client::new();
    let mut api = Vec::new();
    for _ in 0..4 {
        api.push(get(&a, &client, "b", "/api/items").await.status().as_u16());
    }
    assert_eq!(&api[..2], &[200, 200], "{api:?}");
    assert!(api[2..].contains(&429), "{api:?}");
    for _ in 0..5 {
        assert_eq!(get(&a, &client, "b", "/other").await.status(), 200);
    }
}

#[tokio::test]
async fn a_tls_policy_change_applies_to_new_handshakes_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    let (_app_b, b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.get_until("b", "/", 200).await;
    let (cert, key) = issue_cert(
        &meshd,
        "spiffe://cluster.local/ns/default/sa/ops",
        &dir.path().join("ops"),
    )
    .await;
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let inbound = b.inbound_addr.to_string();
    let with_cert = |version: &'static str| {
        [
            "-cert".to_string(),
            cert.to_str().unwrap().to_string(),
            "-key".to_string(),
            key.to_str().unwrap().to_string(),
            version.to_string(),
        ]
    };
    let s_client = |args: [String; 5]| {
        let (inbound, bundle) = (inbound.clone(), bundle.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            openssl_s_client(&inbound, &args, &bundle).await.unwrap()
        }
    };
    let probe = s_client(with_cert("-tls1_2")).await;
    assert!(probe.ok(), "TLS 1.2 is allowed by default:\n{probe}");
    assert_eq!(
        probe.negotiated.as_ref().map(|n| n.0.as_str()),
        Some("TLSv1.2"),
        "{probe}"
    );

    let (_, metrics) = a.admin("/metrics").await;
    let handshakes = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(
                    "mesh_proxy_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let handshakes_before = handshakes(&metrics);
    // A request loop that counts every failure (and every answer not from b), until stopped.
    let steady = mesh_tests::ring::Traffic::start(vec![(a.outbound_addr, "b".into())]);
    steady.wait_more(10).await;
    meshd
        .apply(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: TlsPolicy
metadata: {name: tls13, namespace: default}
spec:
  minVersion: "1.3"
  cipherSuites: [TLS13_AES_128_GCM_SHA256]
  drainGracePeriod: 1s
"#,
        )
        .await;
    for p in [&a, &b] {
        p.wait_config("the TLS policy", |d| {
            !Proxy::resources(d, "TlsPolicy").is_empty()
        })
        .await;
    }
    // A's pooled connection was made under the old policy: the loop moves to a new one.
    mesh_tests::wait::until(
        "A to open a connection under the new policy",
        Duration::from_secs(30),
        || async {
            let (_, m) = a.admin("/metrics").await;
            (handshakes(&m) > handshakes_before).then_some(())
        },
    )
    .await
    .unwrap();
    steady.wait_more(20).await;
    let (ok, failed) = steady.stop().await;
    assert!(
        failed.is_empty(),
        "no request failed while the policy changed ({ok} ok): {failed:?}"
    );

    let probe = s_client(with_cert("-tls1_2")).await;
    probe.assert_alert("protocol_version", "TLS 1.2 is refused now");
    let probe = s_client(with_cert("-tls1_3")).await;
    assert!(probe.ok(), "{probe}");
    assert_eq!(
        probe.negotiated,
        Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
        "{probe}"
    );
    // Exactly one new connection replaced the old one.
    let (_, metrics) = a.admin("/metrics").await;
    assert_eq!(handshakes(&metrics), handshakes_before + 1, "{metrics}");
}

#[tokio::test]
async fn permissive_mode_accepts_plaintext_callers_without_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    let (_app_b, b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    let client = reqwest::Client::new();
    let plain = |path: &'static str| {
        client
            .get(format!("http://{}{path}", b.inbound_addr))
            .header("x-mesh-peer-identity", A)
            .timeout(Duration::from_secs(10))
            .send()
    };
    assert!(plain("/").await.is_err(), "STRICT by default");

    meshd
        .apply(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: TlsPolicy
metadata: {name: migrate, namespace: default}
spec:
  inboundMode: PERMISSIVE
"#,
        )
        .await;
    b.wait_config("B to be PERMISSIVE", |d| {
        !Proxy::resources(d, "TlsPolicy").is_empty()
    })
    .await;
    let r = plain("/open").await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert!(
        echo["headers"].get("x-mesh-peer-identity").is_none(),
        "a plaintext caller has no identity, and a forged one is removed: {echo}"
    );
    // Mesh callers still arrive over mTLS with their identity.
    let echo = a.get_until("b", "/mesh", 200).await;
    assert_eq!(echo["headers"]["x-mesh-peer-identity"], A, "{echo}");

    // An ALLOW policy that names principals never matches a plaintext caller.
    meshd
        .apply(&format!(
            r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: b-allow-a, namespace: default}}
spec:
  selector: {{matchLabels: {{app: b}}}}
  action: ALLOW
  rules: [{{from: [{{principals: ["{A}"]}}]}}]
"#
        ))
        .await;
    b.wait_config("B to hold the ALLOW policy", |d| {
        Proxy::resources(d, "AuthorizationPolicy").len() == 1
    })
    .await;
    assert_eq!(plain("/open").await.unwrap().status(), 403);
    assert_eq!(a.get_until("b", "/mesh", 200).await["id"], "b");
}

#[tokio::test]
async fn a_circuit_breaker_fails_fast_beyond_max_requests() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = meshd(dir.path()).await;
    meshd
        .apply(&service("b", "  circuitBreaker: {maxRequests: 1}\n"))
        .await;
    let (app_b, _b) = workload(&meshd, dir.path(), B, "b", "b").await;
    let (_app_a, a) = workload(&meshd, dir.path(), A, "a", "a").await;
    a.get_until("b", "/", 200).await;

    // The first request is held at the app for as long as the test needs.
    app_b.hold(true);
    let client = reqwest::Client::new();
    let before = app_b.requests();
    let slow = tokio::spawn(
        a.outbound(&client, reqwest::Method::GET, "b", "/slow")
            .send(),
    );
    mesh_tests::wait::until(
        "the first request to be in flight",
        Duration::from_secs(10),
        || async { (app_b.requests() > before).then_some(()) },
    )
    .await
    .unwrap();
    // Failed fast: the answer comes while the first request is still held, and the second
    // never reached the app.
    let second = get(&a, &client, "b", "/second").await;
    assert_eq!(second.status(), 503);
    assert!(!slow.is_finished(), "the first request is still in flight");
    assert_eq!(app_b.requests(), before + 1, "the second reached nothing");
    app_b.hold(false);
    assert!(
        second.headers()["x-mesh-proxy-error"]
            .to_str()
            .unwrap()
            .contains("max_requests"),
        "{:?}",
        second.headers()
    );
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let (_, metrics) = a.admin("/metrics").await;
    assert!(
        metrics.contains("mesh_proxy_circuit_breaker_overflows_total{cluster=\"b.default:80\"} 1"),
        "{metrics}"
    );
}
