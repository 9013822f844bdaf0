//! The web dashboard and the API it stands on, against a real meshd (SQLite) with scripted
//! sidecars on real mTLS discovery streams: first at the HTTP level (the viewer role, the
//! paged sidecar list, the live event stream, the aggregates, the embedded files), then in a
//! real headless Chromium (Debian's `chromium` + `chromium-driver`, see
//! `mesh_tests::browser`): log in, sidecars appear live, a NACK appears, the CA's rotation
//! phase shows, the viewer token cannot change anything, no console errors, screenshots in
//! `<target>/test-output/`.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_proto::v1::Node;
use mesh_proto::{ALL_TYPE_URLS, ROUTE_TABLE_TYPE_URL as ROUTES};
use mesh_tests::browser::{self, Browser};
use mesh_tests::fixtures::{API_WITH_TLS_POLICY as MESH, node, start_meshd as start};
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::sidecar::{Credentials, ScriptedSidecar};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WEB: &str = "spiffe://cluster.local/ns/a/sa/web";
const API: &str = "spiffe://cluster.local/ns/a/sa/api";
const NACK_TEXT: &str = "api.a:80: route \"x\": cannot build <script>alert(1)</script>";

// --- helpers -----------------------------------------------------------------------------

fn viewer_token(meshd: &Meshd) -> String {
    std::fs::read_to_string(meshd.data_dir.join("viewer-token"))
        .unwrap()
        .trim()
        .to_string()
}

fn url(meshd: &Meshd, path: &str) -> String {
    format!("http://{}{path}", meshd.admin_addr)
}

/// A request body: (content type, text).
type Body<'a> = (&'a str, String);

/// A request with `token` (none when empty): (status, JSON body or null).
async fn call(
    meshd: &Meshd,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Body<'_>>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url(meshd, path));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(meshd: &Meshd, path: &str, token: &str) -> (StatusCode, Value) {
    call(meshd, reqwest::Method::GET, path, token, None).await
}

/// Applies `yaml` with the admin token.
async fn apply(meshd: &Meshd, yaml: &str) {
    let (status, body) = call(
        meshd,
        reqwest::Method::POST,
        "/api/v1/documents",
        &meshd.admin_token(),
        Some(("application/yaml", yaml.to_string())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A sidecar subscribed to every type that has ACKed the first response of each.
async fn synced(meshd: &Meshd, creds: &Credentials, node: Node) -> ScriptedSidecar {
    let mut s = ScriptedSidecar::open_all(meshd, creds, node).await.unwrap();
    for _ in 0..ALL_TYPE_URLS.len() {
        let r = s.recv().await.unwrap();
        s.ack(&r).await.unwrap();
    }
    s
}

/// From now on the sidecar ACKs whatever comes, as a live one would; it stays connected until
/// the task is aborted.
fn ack_forever(mut s: ScriptedSidecar) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match s.recv().await {
                Ok(r) => {
                    if s.ack(&r).await.is_err() {
                        return;
                    }
                }
                // Quiet for a while: still connected.
                Err(e) if e.to_string().starts_with("no response within") => continue,
                Err(_) => return,
            }
        }
    })
}

/// Pushes a change to the route and NACKs the RouteTable that comes with `NACK_TEXT`.
async fn nack_a_route_change(meshd: &Meshd, sidecar: &mut ScriptedSidecar) {
    apply(meshd, &MESH.replace("timeout: 1s", "timeout: 2s")).await;
    let r = sidecar.recv_type(ROUTES).await.unwrap();
    sidecar.nack(&r, NACK_TEXT).await.unwrap();
}

/// The server-sent events of `GET /api/v1/events`, read as they come.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(meshd: &Meshd, token: &str) -> Self {
        let response = reqwest::Client::new()
            .get(url(meshd, "/api/v1/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event: (name, data as JSON).
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data.join("\n"))
                    .unwrap_or_else(|e| panic!("event {name}: {e}: {data:?}"));
                return (name, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("no event within 20 s")
                .unwrap()
                .expect("the event stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one named `name` satisfies `ok`; returns its data and every event
    /// read meanwhile (that one included).
    async fn until(
        &mut self,
        name: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<(String, Value)>) {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let (n, data) = self.next().await;
            seen.push((n.clone(), data.clone()));
            if n == name && ok(&data) {
                return (data, seen);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {name} event as expected in 30 s; saw: {seen:?}"
            );
        }
    }
}

fn upserted<'a>(delta: &'a Value, id: &str) -> Option<&'a Value> {
    delta["upserted"].as_array()?.iter().find(|s| s["id"] == id)
}

fn ids(page: &Value) -> Vec<String> {
    page["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

// --- the viewer role ----------------------------------------------------------------------

#[tokio::test]
async fn the_viewer_token_reads_everything_and_changes_nothing() {
    let (_dir, meshd) = start().await;
    let admin = meshd.admin_token();
    let viewer = viewer_token(&meshd);

    // Written on first start like the admin token: private, random, not the admin's.
    let path = meshd.data_dir.join("viewer-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "viewer-token mode {mode:o}");
    }
    assert_eq!(viewer.len(), 64, "{viewer}");
    assert!(viewer.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(viewer, admin);

    // Who is who.
    let (status, me) = get(&meshd, "/api/v1/whoami", &viewer).await;
    assert_eq!((status, &me["role"]), (StatusCode::OK, &json!("viewer")));
    let (_, me) = get(&meshd, "/api/v1/whoami", &admin).await;
    assert_eq!(me["role"], "admin");
    for (token, why) in [("", "no bearer token"), ("nope", "wrong bearer token")] {
        let (status, body) = get(&meshd, "/api/v1/whoami", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().starts_with(why), "{body}");
    }

    // Every read.
    apply(&meshd, MESH).await;
    for path in [
        "/api/v1/sidecars",
        "/api/v1/ca",
        "/api/v1/ca/bundle",
        "/api/v1/documents",
        "/api/v1/documents/Service/a/api",
        "/api/v1/documents/Service/a/api/history",
        "/api/v1/tokens",
        "/api/v1/certificates",
        "/api/v1/audit",
        "/api/v1/stats",
    ] {
        let (status, body) = get(&meshd, path, &viewer).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    }
    let metrics = reqwest::Client::new()
        .get(url(&meshd, "/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);

    // No write: 403 with a reason, whatever the endpoint; nothing changed.
    let (_, before) = get(&meshd, "/api/v1/documents/HTTPRoute/a/api-route", &admin).await;
    let changed = MESH.replace("timeout: 1s", "timeout: 9s");
    let writes: Vec<(reqwest::Method, &str, Option<Body>)> = vec![
        (
            reqwest::Method::POST,
            "/api/v1/documents",
            Some(("application/yaml", changed.clone())),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/documents?dryRun=true",
            Some(("application/yaml", changed.clone())),
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/documents/HTTPRoute/a/api-route",
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/documents/HTTPRoute/a/api-route/rollback",
            Some(("application/json", r#"{"revision": 1}"#.into())),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(("application/json", json!({ "identity": WEB }).to_string())),
        ),
        (reqwest::Method::DELETE, "/api/v1/tokens/whatever", None),
        (reqwest::Method::PUT, "/api/v1/documents", None),
        (
            reqwest::Method::POST,
            "/api/v1/ca/rotation",
            Some(("application/json", "{}".into())),
        ),
        (reqwest::Method::POST, "/api/v1/ca/rotation/rollback", None),
    ];
    let refused = writes.len();
    for (method, path, body) in writes {
        let what = format!("{method} {path}");
        let (status, answer) = call(&meshd, method, path, &viewer, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.starts_with("the viewer token is read-only") && message.contains("admin token"),
            "{what}: {message}"
        );
    }
    let (_, route) = get(&meshd, "/api/v1/documents/HTTPRoute/a/api-route", &admin).await;
    assert_eq!(route, before, "unchanged");
    assert_eq!(route["document"]["spec"]["rules"][0]["timeout"], "1s");
    let (_, tokens) = get(&meshd, "/api/v1/tokens", &admin).await;
    assert_eq!(tokens["tokens"], json!([]), "no join token was created");

    // Each refusal is in the audit log, as the viewer's, denied.
    let (_, audit) = get(&meshd, "/api/v1/audit?limit=100", &admin).await;
    let denied: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "viewer" && e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), refused, "{audit}");
    assert!(
        denied
            .iter()
            .any(|e| e["action"] == "admin.post" && e["target"] == "/api/v1/documents"),
        "{audit}"
    );
    assert!(
        denied
            .iter()
            .any(|e| e["action"] == "admin.delete" && e["target"] == "/api/v1/tokens/whatever"),
        "{audit}"
    );

    // meshctl with the viewer token: reads work, a change fails with one clear line.
    let mut cmd = meshd.meshctl();
    cmd.env("MESHCTL_TOKEN_FILE", &path)
        .args(["get", "services", "-o", "json"]);
    let (code, stdout, stderr) = mesh_tests::process::run(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"api\""), "{stdout}");
    let file = meshd.data_dir.join("changed.yaml");
    std::fs::write(&file, &changed).unwrap();
    let mut cmd = meshd.meshctl();
    cmd.env("MESHCTL_TOKEN_FILE", &path)
        .args(["apply", "-f", file.to_str().unwrap()]);
    let result = mesh_tests::process::run(cmd);
    mesh_tests::process::assert_cli_failure("apply with the viewer token", &result, 1, true);
    assert!(result.2.contains("read-only"), "{}", result.2);

    // The admin still can; and the same viewer token after a restart.
    apply(&meshd, &changed).await;
    let data_dir = meshd.data_dir.clone();
    drop(meshd);
    let meshd = Meshd::start(&data_dir, &MeshdOptions::default())
        .await
        .unwrap();
    assert_eq!(
        viewer_token(&meshd),
        viewer,
        "the viewer token survives a restart"
    );
    let (status, _) = get(&meshd, "/api/v1/whoami", &viewer).await;
    assert_eq!(status, StatusCode::OK);
}

// --- the paged list -------------------------------------------------------------------------

#[tokio::test]
async fn the_sidecar_list_is_paged_filtered_and_counted_server_side() {
    let (_dir, meshd) = start().await;
    apply(&meshd, MESH).await;
    let token = viewer_token(&meshd);
    let web = Credentials::issue(&meshd, WEB).await.unwrap();
    let api = Credentials::issue(&meshd, API).await.unwrap();

    // Seven sidecars: two of `api`, five of `web`; web-3 NACKs, web-4 never ACKs.
    let mut tasks = Vec::new();
    for i in 0..2 {
        tasks.push(ack_forever(
            synced(&meshd, &api, node(&format!("api-{i}"), "api")).await,
        ));
    }
    for i in 0..3 {
        tasks.push(ack_forever(
            synced(&meshd, &web, node(&format!("web-{i}"), "web")).await,
        ));
    }
    let mut nacker = synced(&meshd, &web, node("web-3", "web")).await;
    let mut lazy =
        ScriptedSidecar::open(&meshd, &web, true, node("web-4", "web"), Default::default())
            .await
            .unwrap();
    for ty in &ALL_TYPE_URLS[1..] {
        lazy.subscribe(ty).await.unwrap();
    }
    nack_a_route_change(&meshd, &mut nacker).await;
    tasks.push(ack_forever(nacker));

    // Counted over the fleet, whatever the page.
    let counts =
        mesh_tests::wait::until("the fleet to settle", Duration::from_secs(30), || async {
            let (_, page) = get(&meshd, "/api/v1/sidecars?limit=1", &token).await;
            let c = &page["counts"];
            (c["SYNCED"] == 5 && c["NACKED"] == 1 && c["STALE"] == 1).then_some(page)
        })
        .await
        .unwrap();
    assert_eq!(counts["total"], 7);
    assert_eq!(counts["matched"], 7);
    assert_eq!(counts["counts"]["CONNECTING"], 0);
    assert_eq!(ids(&counts), ["api-0"]);

    // Pages, in id order.
    let mut seen = Vec::new();
    for offset in [0, 3, 6] {
        let (status, page) = get(
            &meshd,
            &format!("/api/v1/sidecars?offset={offset}&limit=3"),
            &token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["offset"], offset);
        assert_eq!(page["limit"], 3);
        assert_eq!(page["matched"], 7);
        seen.extend(ids(&page));
    }
    assert_eq!(
        seen,
        [
            "api-0", "api-1", "web-0", "web-1", "web-2", "web-3", "web-4"
        ]
    );
    let (_, past) = get(&meshd, "/api/v1/sidecars?offset=50&limit=10", &token).await;
    assert_eq!((ids(&past).len(), &past["matched"]), (0, &json!(7)));

    // Filters: text (any case, over id, identity, service…), state, namespace.
    let (_, page) = get(&meshd, "/api/v1/sidecars?q=SA/API&limit=50", &token).await;
    assert_eq!(ids(&page), ["api-0", "api-1"]);
    assert_eq!(page["total"], 7, "total is the fleet");
    let (_, page) = get(&meshd, "/api/v1/sidecars?q=web&state=synced", &token).await;
    assert_eq!(ids(&page), ["web-0", "web-1", "web-2"]);
    let (_, page) = get(&meshd, "/api/v1/sidecars?state=NACKED", &token).await;
    assert_eq!(ids(&page), ["web-3"]);
    let nacked = &page["sidecars"][0];
    assert_eq!(nacked["state"], "NACKED");
    let route = mesh_tests::fixtures::items(nacked, "types")
        .iter()
        .find(|t| t["type_url"] == ROUTES)
        .unwrap();
    assert_eq!(route["nack"], NACK_TEXT);
    let (_, page) = get(&meshd, "/api/v1/sidecars?state=stale", &token).await;
    assert_eq!(ids(&page), ["web-4"]);
    let (_, page) = get(&meshd, "/api/v1/sidecars?namespace=b", &token).await;
    assert_eq!((ids(&page).len(), &page["total"]), (0, &json!(7)));

    // Bad parameters are 400 with the reason.
    for (query, needle) in [
        ("state=happy", "state \"happy\""),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("offset=-1", "offset"),
        ("page=2", "page"),
    ] {
        let (status, body) = get(&meshd, &format!("/api/v1/sidecars?{query}"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }

    // Without paging parameters: every sidecar (what meshctl reads), with expiry and state.
    let (_, all) = get(&meshd, "/api/v1/sidecars", &token).await;
    assert_eq!(ids(&all).len(), 7);
    for s in all["sidecars"].as_array().unwrap() {
        assert!(s["cert_expires_at"].as_i64().is_some(), "{s}");
        assert!(s["state"].is_string(), "{s}");
    }
    let mut cmd = meshd.meshctl();
    cmd.args(["status", "-o", "json"]);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || mesh_tests::process::run(cmd))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["sidecars"].as_array().unwrap().len(), 7);

    // One sidecar by id; an unknown one is 404.
    let (status, one) = get(&meshd, "/api/v1/sidecars/web-3", &token).await;
    assert_eq!((status, &one["state"]), (StatusCode::OK, &json!("NACKED")));
    assert_eq!(one["identity"], WEB);
    let (status, body) = get(&meshd, "/api/v1/sidecars/nobody", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    for t in tasks {
        t.abort();
    }
    drop(lazy);
}

// --- the live feed and the aggregates --------------------------------------------------------

#[tokio::test]
async fn the_event_stream_sends_summaries_and_only_what_changed() {
    let (_dir, mut meshd) = start().await;
    apply(&meshd, MESH).await;

    // A token is needed, as everywhere.
    let (status, _) = get(&meshd, "/api/v1/events", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut events = Events::open(&meshd, &viewer_token(&meshd)).await;
    let (name, hello) = events.next().await;
    assert_eq!((name.as_str(), &hello["role"]), ("hello", &json!("viewer")));
    let (name, summary) = events.next().await;
    assert_eq!(name, "summary");
    assert_eq!(summary["total"], 0);
    assert_eq!(summary["counts"]["SYNCED"], 0);
    assert_eq!(summary["nacks"], json!([]));

    // The first tick of the first watcher: fetch your page again (the hub did not watch the
    // fleet before), then ticks.
    let (name, first) = events.next().await;
    assert_eq!(
        (name.as_str(), &first["resync"]),
        ("sidecars", &json!(true))
    );
    events.until("stats", |_| true).await;

    // A sidecar connects and syncs: it comes as a change, then the summary counts it.
    let creds = Credentials::issue(&meshd, WEB).await.unwrap();
    let mut web = synced(&meshd, &creds, node("web-1", "web")).await;
    let (delta, _) = events
        .until("sidecars", |d| {
            upserted(d, "web-1").is_some_and(|s| s["state"] == "SYNCED")
        })
        .await;
    let s = upserted(&delta, "web-1").unwrap();
    assert_eq!(s["identity"], WEB);
    assert_eq!(s["types"].as_array().unwrap().len(), ALL_TYPE_URLS.len());
    assert!(s["cert_expires_at"].as_i64().is_some(), "{s}");
    let (summary, _) = events
        .until("summary", |s| s["counts"]["SYNCED"] == 1)
        .await;
    assert_eq!(summary["total"], 1);

    // A quiet fleet: ticks go on (stats), no sidecar is sent again.
    let mut ticks = 0;
    while ticks < 3 {
        let (name, data) = events.next().await;
        match name.as_str() {
            "stats" => ticks += 1,
            "sidecars" => panic!("a sidecar that did not change was sent: {data}"),
            _ => {}
        }
    }

    // A NACK: the sidecar's change carries it, the summary lists it.
    nack_a_route_change(&meshd, &mut web).await;
    let (delta, _) = events
        .until("sidecars", |d| {
            upserted(d, "web-1").is_some_and(|s| s["state"] == "NACKED")
        })
        .await;
    let s = upserted(&delta, "web-1").unwrap();
    assert!(
        s.to_string()
            .contains(&serde_json::to_string(NACK_TEXT).unwrap()),
        "{s}"
    );
    let (summary, _) = events
        .until("summary", |s| s["counts"]["NACKED"] == 1)
        .await;
    assert_eq!(
        summary["nacks"],
        json!([{ "id": "web-1", "type_url": ROUTES, "nack": NACK_TEXT }])
    );
    assert_eq!(summary["nacked_types"], 1);

    // The aggregates: counts, push latency from the histogram, rates and their history.
    let (status, stats) = get(&meshd, "/api/v1/stats", &meshd.admin_token()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["sidecars"]["total"], 1);
    assert_eq!(stats["sidecars"]["counts"]["NACKED"], 1);
    // An ACKed push (not the answer to a subscription) gives the latency histogram a sample;
    // the stats are sampled once a second.
    apply(&meshd, &MESH.replace("timeout: 1s", "timeout: 3s")).await;
    let fixed = web.recv_type(ROUTES).await.unwrap();
    web.ack(&fixed).await.unwrap();
    let stats = mesh_tests::wait::until("a push latency sample", Duration::from_secs(20), || {
        let meshd = &meshd;
        async move {
            let (_, stats) = get(meshd, "/api/v1/stats", &meshd.admin_token()).await;
            (stats["push_latency"]["since_start"]["count"].as_f64() >= Some(1.0)).then_some(stats)
        }
    })
    .await
    .unwrap();
    let latency = &stats["push_latency"];
    assert!(
        latency["since_start"]["count"].as_f64().unwrap() >= 1.0,
        "{stats}"
    );
    assert!(latency["p50_seconds"].as_f64().unwrap() > 0.0, "{stats}");
    assert!(latency["p99_seconds"].as_f64().unwrap() >= latency["p50_seconds"].as_f64().unwrap());
    assert!(stats["rates"]["pushes_per_second"].is_number(), "{stats}");
    let series = stats["series"].as_array().unwrap();
    assert!(series.len() >= 2, "one point a second: {stats}");
    assert!(
        series
            .iter()
            .any(|p| p["pushes_per_second"].as_f64().unwrap() > 0.0),
        "the pushes show in the chart's history: {stats}"
    );
    let (tick, _) = events.until("stats", |_| true).await;
    assert!(tick["rates"]["pushes_per_second"].is_number(), "{tick}");
    assert!(tick["point"]["t"].is_number(), "{tick}");

    // The sidecar leaves: its id comes as removed.
    drop(web);
    let (delta, _) = events
        .until("sidecars", |d| {
            d["removed"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("web-1")))
        })
        .await;
    assert_eq!(delta["upserted"], json!([]));
    events.until("summary", |s| s["total"] == 0).await;

    // An open stream does not hold meshd's shutdown to its grace period: it ends at once.
    let started = Instant::now();
    let status = meshd.process.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < meshd::server::DRAIN_GRACE,
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(!meshd.process.log().contains("grace period over"));
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.response.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the event stream ended with meshd");
}

// --- the embedded files ---------------------------------------------------------------------

#[tokio::test]
async fn the_dashboard_is_embedded_and_locked_down() {
    let (_dir, meshd) = start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The page and its files need no token (they hold no data); each has its type and a
    // strict policy: nothing from elsewhere, no inline script, no framing.
    let mut total = 0;
    for (path, content_type) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let response = client.get(url(&meshd, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        total += body.len();
        // No CDN, no web font, no other origin: the only URL is the SVG namespace.
        let outside: Vec<&str> = body
            .match_indices("http")
            .map(|(i, _)| &body[i..(i + 40).min(body.len())])
            .filter(|u| !u.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(outside.is_empty(), "{path} refers elsewhere: {outside:?}");
        if path == "/dashboard" {
            assert!(body.contains(r#"<script src="/dashboard/app.js" defer></script>"#));
            assert!(!body.contains("<script>"), "no inline script");
        }
    }
    assert!(total < 100_000, "small: {total} bytes");

    // `/` and `/dashboard/` lead to it; anything else under it is the API's 404.
    for path in ["/", "/dashboard/"] {
        let response = client.get(url(&meshd, path)).send().await.unwrap();
        assert!(response.status().is_redirection(), "{path}");
        assert_eq!(response.headers()["location"], "/dashboard");
    }
    let (status, body) = get(&meshd, "/dashboard/nothing.js", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

// --- in a real browser ----------------------------------------------------------------------

/// Signs in on the login form with `token`.
async fn sign_in(browser: &Browser, token: &str) {
    browser.sign_in(token).await.unwrap();
}

/// Asserts that the console has no error since the last call (logging what it has).
async fn assert_no_console_errors(browser: &Browser, when: &str) {
    let entries = browser.console().await.unwrap();
    for e in &entries {
        eprintln!("console {}: {}", e.level, e.message);
    }
    let errors: Vec<_> = entries.iter().filter(|e| e.level == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors {when}: {errors:?}");
}

/// The row of sidecar `id` in the list, once its text satisfies `ok`; its text.
async fn row(browser: &Browser, id: &str, ok: impl Fn(&str) -> bool) -> String {
    browser
        .wait_text(
            &format!("the row of {id}"),
            &format!("#sidecar-rows tr[data-id=\"{id}\"]"),
            ok,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn in_chromium_the_admin_sees_sidecars_live_a_nack_and_the_rotation_phase() {
    let (_dir, meshd) = start().await;
    apply(&meshd, MESH).await;
    let browser = Browser::start(1280, 900).await.unwrap();
    let dashboard = url(&meshd, "/dashboard");
    browser.goto(&dashboard).await.unwrap();

    // A wrong token is refused on the form (its 401 is the one console error we expect).
    browser
        .wait_text("the login form", "#view-login h1", |t| t == "meshd")
        .await
        .unwrap();
    sign_in(&browser, "not-a-token").await;
    browser
        .wait_text("the refusal", "#login-error", |t| {
            t == "That token was not accepted."
        })
        .await
        .unwrap();
    let entries = browser.console().await.unwrap();
    assert!(
        entries
            .iter()
            .filter(|e| e.level == "SEVERE")
            .all(|e| e.message.contains("/api/v1/whoami") && e.message.contains("401")),
        "{entries:?}"
    );

    // The admin token: the fleet view, live, empty.
    sign_in(&browser, &meshd.admin_token()).await;
    browser
        .wait_text("the role", "#role", |t| t == "admin")
        .await
        .unwrap();
    browser
        .wait_text("the live feed", "#conn", |t| t == "live")
        .await
        .unwrap();
    browser
        .wait_text("an empty fleet", "#sidecars-empty", |t| {
            t == "No sidecar is connected."
        })
        .await
        .unwrap();
    let apply_nav = browser.find("#nav-apply").await.unwrap().unwrap();
    assert!(
        browser.is_displayed(&apply_nav).await.unwrap(),
        "the admin may apply"
    );
    // Whatever follows happens without a reload: this survives only in this page's life.
    browser
        .execute("window.__sameLoad = 42; return true;", vec![])
        .await
        .unwrap();
    // The token is in this tab's session storage, never in the URL or a cookie.
    let (href, cookie) = {
        let v = browser
            .execute("return [location.href, document.cookie];", vec![])
            .await
            .unwrap();
        (
            v[0].as_str().unwrap().to_string(),
            v[1].as_str().unwrap().to_string(),
        )
    };
    assert!(
        !href.contains(&meshd.admin_token()) && cookie.is_empty(),
        "{href} {cookie}"
    );

    // Sidecars connect: they appear, synced, with their certificate's expiry.
    let web = Credentials::issue(&meshd, WEB).await.unwrap();
    let mut web1 = synced(&meshd, &web, node("web-1", "web")).await;
    let text = row(&browser, "web-1", |t| {
        t.contains("SYNCED (8/8)") && (t.contains("in 59m") || t.contains("in 1h"))
    })
    .await;
    assert!(text.contains(WEB) && text.contains("web.a"), "{text}");
    assert!(
        text.contains("in 59m") || text.contains("in 1h"),
        "cert expiry: {text}"
    );
    assert!(text.contains("ago"), "last seen: {text}");
    let api = Credentials::issue(&meshd, API).await.unwrap();
    let api1 = ack_forever(synced(&meshd, &api, node("api-1", "api")).await);
    row(&browser, "api-1", |t| t.contains("SYNCED")).await;
    browser
        .wait_text("the count", "#count-total", |t| t == "2")
        .await
        .unwrap();

    // A NACK: the row says so with the sidecar's text (as text, never as markup), the NACK
    // list too, and the counts follow.
    nack_a_route_change(&meshd, &mut web1).await;
    let text = row(&browser, "web-1", |t| t.contains("NACKED RouteTable")).await;
    assert!(text.contains(NACK_TEXT), "{text}");
    let nacks = browser
        .wait_text("the NACK list", "#nacks li", |t| t.contains(NACK_TEXT))
        .await
        .unwrap();
    assert!(nacks.starts_with("web-1 rejected RouteTable: "), "{nacks}");
    browser
        .wait_text("the NACKed count", "#count-NACKED", |t| t == "1")
        .await
        .unwrap();
    browser
        .wait_text("the synced count", "#count-SYNCED", |t| t == "1")
        .await
        .unwrap();
    assert!(
        browser.find("#nacks script").await.unwrap().is_none(),
        "markup stayed text"
    );
    let web1 = ack_forever(web1);

    // The charts have drawn the pushes and their latency.
    browser
        .wait_script(
            "the latency chart",
            "return document.querySelectorAll('#chart-latency path').length > 0;",
        )
        .await
        .unwrap();
    browser
        .wait_text("the latency", "#latency-now", |t| t.contains("ms"))
        .await
        .unwrap();
    let same: Value = browser
        .execute("return window.__sameLoad;", vec![])
        .await
        .unwrap();
    assert_eq!(same, 42, "everything above came without a reload");

    // The list filters server-side.
    let filter = browser.find("#filter-q").await.unwrap().unwrap();
    browser.type_text(&filter, "sa/api").await.unwrap();
    browser
        .wait_text("the filtered page", "#page-info", |t| {
            t == "1–1 of 1 (2 connected)"
        })
        .await
        .unwrap();
    browser.clear(&filter).await.unwrap();
    browser.type_text(&filter, " ").await.unwrap();
    browser
        .wait_text("the whole list", "#page-info", |t| t == "1–2 of 2")
        .await
        .unwrap();

    let out = browser::output_dir();
    browser
        .screenshot(&out.join("dashboard.png"))
        .await
        .unwrap();

    // One sidecar's page: its types with the NACK, and its config dump.
    let link = browser
        .find("#sidecar-rows tr[data-id=\"web-1\"] a")
        .await
        .unwrap()
        .unwrap();
    browser.click(&link).await.unwrap();
    browser
        .wait_text("the sidecar's page", "#sc-id", |t| t == "web-1")
        .await
        .unwrap();
    let routes = browser
        .wait_text(
            "its RouteTable",
            "#sc-types tr[data-type=\"RouteTable\"]",
            |t| t.contains("NACKED"),
        )
        .await
        .unwrap();
    assert!(routes.contains(NACK_TEXT), "{routes}");
    let cluster = browser
        .find("#sc-config details[data-type=\"Cluster\"]")
        .await
        .unwrap()
        .unwrap();
    browser
        .click(
            &browser
                .find("#sc-config details[data-type=\"Cluster\"] summary")
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    let dump = browser.text(&cluster).await.unwrap();
    assert!(dump.contains("api.a:80"), "{dump}");
    browser
        .screenshot(&out.join("dashboard-sidecar.png"))
        .await
        .unwrap();

    // The CA: the rotation phase /api/v1/ca reports, the roots, the TLS policy.
    let (_, ca) = get(&meshd, "/api/v1/ca", &meshd.admin_token()).await;
    // The phase is the API's (`idle` until a rotation starts); whatever it says is shown.
    let phase = ca["rotation_phase"].as_str().unwrap().to_string();
    assert!(!phase.is_empty(), "{ca}");
    browser.goto(&format!("{dashboard}#/ca")).await.unwrap();
    browser
        .wait_text("the rotation phase", "#ca-phase", |t| {
            t.eq_ignore_ascii_case(&phase)
        })
        .await
        .unwrap();
    let root = ca["roots"][0]["fingerprint"].as_str().unwrap();
    browser
        .wait_text("the root", "#ca-roots tbody tr", |t| t.contains(root))
        .await
        .unwrap();
    browser
        .wait_text("the TLS policy", "#tls-policies", |t| {
            t.contains("a/modern") && t.contains("1.3 – 1.3")
        })
        .await
        .unwrap();
    // A rotation, in manual mode so that it waits at prepare's gate: its phase and progress
    // appear on the page without a reload.
    let (status, started) = call(
        &meshd,
        reqwest::Method::POST,
        "/api/v1/ca/rotation",
        &meshd.admin_token(),
        Some(("application/json", json!({ "manual": true }).to_string())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    browser
        .wait_text("the rotation phase", "#ca-phase", |t| {
            t.eq_ignore_ascii_case("prepare")
        })
        .await
        .unwrap();
    let progress = browser
        .wait_text("the rotation's progress", "#ca-progress-text", |t| {
            t.contains("sidecars done with prepare")
        })
        .await
        .unwrap();
    let (_, now) = get(&meshd, "/api/v1/ca/rotation", &meshd.admin_token()).await;
    assert!(
        progress.contains(&format!("/{} sidecars", now["progress"]["total"])),
        "{progress} vs {now}"
    );
    browser
        .wait_text("the new root in the bundle", "#ca-roots tbody", |t| {
            t.contains(started["new_root"].as_str().unwrap())
        })
        .await
        .unwrap();
    browser
        .screenshot(&out.join("dashboard-ca.png"))
        .await
        .unwrap();

    // A phone: the same fleet, nothing wider than the screen.
    browser.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("{dashboard}#/")).await.unwrap();
    row(&browser, "api-1", |t| t.contains("SYNCED")).await;
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, true, "no sideways scrolling on a phone");
    browser
        .screenshot(&out.join("dashboard-phone.png"))
        .await
        .unwrap();

    assert_no_console_errors(&browser, "after the admin's session").await;
    let png = std::fs::read(out.join("dashboard.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    browser.close().await;
    web1.abort();
    api1.abort();
}

#[tokio::test]
async fn in_chromium_the_viewer_sees_the_fleet_and_cannot_change_it() {
    let (_dir, meshd) = start().await;
    apply(&meshd, MESH).await;
    let creds = Credentials::issue(&meshd, WEB).await.unwrap();
    let web1 = ack_forever(synced(&meshd, &creds, node("web-1", "web")).await);

    let browser = Browser::start(1280, 900).await.unwrap();
    let dashboard = url(&meshd, "/dashboard");
    browser.goto(&dashboard).await.unwrap();
    sign_in(&browser, &viewer_token(&meshd)).await;
    browser
        .wait_text("the role", "#role", |t| t.contains("viewer"))
        .await
        .unwrap();
    row(&browser, "web-1", |t| t.contains("SYNCED")).await;

    // Nothing to change with: no Apply in the menu, and its page says why.
    let nav = browser.find("#nav-apply").await.unwrap().unwrap();
    assert!(
        !browser.is_displayed(&nav).await.unwrap(),
        "no Apply for a viewer"
    );
    browser.goto(&format!("{dashboard}#/apply")).await.unwrap();
    browser
        .wait_text("the read-only notice", "#apply-readonly", |t| {
            t.contains("read-only viewer token")
        })
        .await
        .unwrap();
    let panel = browser.find("#apply-panel").await.unwrap().unwrap();
    assert!(!browser.is_displayed(&panel).await.unwrap());

    // And the API refuses the token the page holds, whatever a client sends with it.
    let held = browser
        .execute("return sessionStorage.getItem('meshd.token');", vec![])
        .await
        .unwrap();
    let held = held.as_str().unwrap();
    assert_eq!(held, viewer_token(&meshd));
    let (status, body) = call(
        &meshd,
        reqwest::Method::POST,
        "/api/v1/documents",
        held,
        Some((
            "application/yaml",
            MESH.replace("timeout: 1s", "timeout: 5s"),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, route) = get(
        &meshd,
        "/api/v1/documents/HTTPRoute/a/api-route",
        &meshd.admin_token(),
    )
    .await;
    assert_eq!(
        route["document"]["spec"]["rules"][0]["timeout"], "1s",
        "unchanged: {route}"
    );

    // It reads everything else: a sidecar's page, the CA.
    browser
        .goto(&format!("{dashboard}#/sidecar/{}", "web-1"))
        .await
        .unwrap();
    browser
        .wait_text(
            "the sidecar's types",
            "#sc-types tr[data-type=\"Cluster\"]",
            |t| t.contains("SYNCED"),
        )
        .await
        .unwrap();
    let (_, ca) = get(&meshd, "/api/v1/ca", held).await;
    let phase = ca["rotation_phase"].as_str().unwrap().to_string();
    browser.goto(&format!("{dashboard}#/ca")).await.unwrap();
    browser
        .wait_text("the rotation phase", "#ca-phase", |t| {
            !phase.is_empty() && t.eq_ignore_ascii_case(&phase)
        })
        .await
        .unwrap();
    browser
        .screenshot(&browser::output_dir().join("dashboard-viewer.png"))
        .await
        .unwrap();

    // Signing out forgets the token.
    browser.goto(&dashboard).await.unwrap();
    browser
        .wait_text("the role", "#role", |t| t.contains("viewer"))
        .await
        .unwrap();
    let out = browser.find("#logout").await.unwrap().unwrap();
    browser.click(&out).await.unwrap();
    browser
        .wait_text("the login form", "#view-login h1", |t| t == "meshd")
        .await
        .unwrap();
    let held = browser
        .execute("return sessionStorage.getItem('meshd.token');", vec![])
        .await
        .unwrap();
    assert_eq!(held, Value::Null);

    assert_no_console_errors(&browser, "in the viewer's session").await;
    browser.close().await;
    web1.abort();
}

#[tokio::test]
async fn in_chromium_a_fleet_of_hundreds_is_paged_and_the_feed_stays_small() {
    const SIZE: usize = 250;
    let (_dir, meshd) = start().await;
    let mut events = Events::open(&meshd, &viewer_token(&meshd)).await;
    events.until("stats", |_| true).await;
    let browser = Browser::start(1280, 900).await.unwrap();
    browser.goto(&url(&meshd, "/dashboard")).await.unwrap();
    sign_in(&browser, &meshd.admin_token()).await;
    browser
        .wait_text("the live feed", "#conn", |t| t == "live")
        .await
        .unwrap();

    let mut fleet = mesh_tests::fleet::Fleet::start(
        &meshd,
        &mesh_tests::fleet::FleetOptions {
            size: SIZE,
            services: 10,
            services_per_namespace: 10,
            watch_route_table: String::new(),
            connect_concurrency: 32,
            reissue_concurrency: None,
        },
    )
    .await
    .unwrap();
    fleet
        .collect(SIZE, Duration::from_secs(120), |e| {
            matches!(e, mesh_tests::fleet::Event::Synced { .. })
        })
        .await
        .unwrap();

    // The feed: counts, and changes in bounded batches, never the fleet whole.
    let (summary, seen) = events
        .until("summary", |s| s["counts"]["SYNCED"] == SIZE)
        .await;
    assert_eq!(summary["total"], SIZE);
    for (name, data) in &seen {
        if name == "sidecars" {
            let n = data["upserted"].as_array().map_or(0, Vec::len);
            assert!(n <= 200, "a sidecars event of {n}");
            assert!(data.to_string().len() < 1 << 20, "an event of a megabyte");
        }
    }

    // The page: 50 rows of 250, paged by the server.
    browser
        .wait_text("the count", "#count-total", |t| t == SIZE.to_string())
        .await
        .unwrap();
    browser
        .wait_text("the first page", "#page-info", |t| t == "1–50 of 250")
        .await
        .unwrap();
    assert_eq!(
        browser.find_all("#sidecar-rows tr").await.unwrap().len(),
        50
    );
    let next = browser.find("#page-next").await.unwrap().unwrap();
    browser.click(&next).await.unwrap();
    browser
        .wait_text("the second page", "#page-info", |t| t == "51–100 of 250")
        .await
        .unwrap();
    let (_, page) = get(
        &meshd,
        "/api/v1/sidecars?offset=50&limit=50",
        &meshd.admin_token(),
    )
    .await;
    let first = page["sidecars"][0]["id"].as_str().unwrap().to_string();
    let shown = browser
        .execute(
            "return document.querySelector('#sidecar-rows tr').dataset.id;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, first.as_str());
    browser
        .screenshot(&browser::output_dir().join("dashboard-fleet.png"))
        .await
        .unwrap();

    // A filter that matches nothing says so.
    let state = browser
        .find("#filter-state option[value=\"NACKED\"]")
        .await
        .unwrap()
        .unwrap();
    browser.click(&state).await.unwrap();
    browser
        .wait_text("no match", "#sidecars-empty", |t| {
            t == "No sidecar matches."
        })
        .await
        .unwrap();

    assert_no_console_errors(&browser, "with a fleet of hundreds").await;
    browser.close().await;
    drop(fleet);
}
