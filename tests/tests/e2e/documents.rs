//! Mesh documents end to end, with real meshd and meshctl processes: apply / get / history /
//! rollback / delete through the admin API, a corpus of invalid documents that must store
//! nothing, revisions across a restart, `--config-dir`, and meshctl's lines and exit codes.
//! Every flow runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::corpus::{BASELINE, BASELINE_KEYS, invalid_corpus};
use mesh_tests::fixtures::{SHOP_ROUTE as ROUTE, SHOP_SERVICES as SERVICES};
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::process::run;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How long meshd may take to notice a file in `--config-dir` (it polls every second).
const CONFIG_DIR_DEADLINE: Duration = Duration::from_secs(30);

/// `Service shop/reviews` of the baseline, written differently (key order, flow style,
/// comments): the same document.
const REVIEWS_REFORMATTED: &str = r#"
# the same service as in the baseline
kind: Service
apiVersion: "mesh.meshd.dev/v1alpha1"
metadata: {namespace: shop, name: reviews}
spec:
  selector:
    app: reviews   # unchanged
  ports:
    - protocol: http
      name: http
      port: 9080
    - {port: 9090, name: admin, protocol: tcp}
"#;

/// `Service shop/reviews` with one more port.
const REVIEWS_V2: &str =
    mesh_tests::reviews_service_yaml!("    - {name: http2, port: 9081, protocol: http}\n");

/// `Service shop/reviews` with yet another port.
const REVIEWS_V3: &str =
    mesh_tests::reviews_service_yaml!("    - {name: http3, port: 9082, protocol: http}\n");

/// A rate limit, as a JSON file.
const RATE_LIMIT_JSON: &str = r#"{
  "apiVersion": "mesh.meshd.dev/v1alpha1",
  "kind": "RateLimitPolicy",
  "metadata": {"name": "reviews", "namespace": "shop"},
  "spec": {"requestsPerSecond": 100, "burst": 200}
}"#;

/// A route with a weight out of range.
const BAD_ROUTE: &str = r#"
apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  hostnames: [bad.example.com]
  rules: [{backends: [{service: reviews, port: 9080, weight: 101}]}]
"#;

// --- helpers -----------------------------------------------------------------------------

/// The admin API of one meshd, with its token; answers are (status, JSON body).
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(meshd: &Meshd) -> Self {
        Self {
            base: format!("http://{}", meshd.admin_addr),
            token: meshd.admin_token(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {text}"));
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn get_text(&self, path: &str) -> (u16, String, Option<String>) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, response.text().await.unwrap(), content_type)
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn post_body(&self, path: &str, content_type: &str, body: String) -> (u16, Value) {
        self.post_bytes(path, content_type, body.into_bytes()).await
    }

    async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    async fn apply(&self, yaml: &str) -> (u16, Value) {
        self.post_body("/api/v1/documents", "application/yaml", yaml.to_string())
            .await
    }

    async fn dry_run(&self, yaml: &str) -> (u16, Value) {
        self.post_body(
            "/api/v1/documents?dryRun=true",
            "application/yaml",
            yaml.to_string(),
        )
        .await
    }

    /// Every stored document and the store's revision.
    async fn list(&self) -> Value {
        let (status, body) = self.get("/api/v1/documents").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn revision(&self) -> i64 {
        self.list().await["revision"].as_i64().unwrap()
    }
}

/// (kind, name, outcome) of each result of an apply, in order.
fn outcomes(body: &Value) -> Vec<(String, String, String)> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {body}"))
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triples(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// The revision of the one result of an apply.
fn only_revision(body: &Value) -> i64 {
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{body}");
    results[0]["revision"].as_i64().unwrap()
}

/// (kind, namespace, name) of every listed document.
fn keys(list: &Value) -> Vec<(String, String, String)> {
    list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["namespace"].as_str().unwrap().to_string(),
                d["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Writes a file the way a deployment tool should: a hidden temporary file, then a rename, so
/// that meshd never reads half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs `meshctl apply` with `args` in `cwd`: (exit code, stdout, stderr).
fn meshctl_apply(meshd: &Meshd, cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = meshd.meshctl();
    cmd.current_dir(cwd).arg("apply").args(args);
    run(cmd)
}

/// Asserts a meshctl failure: the exit code, and stderr as `meshctl: ...` lines, no JSON, no
/// panic or backtrace.
fn assert_failure(what: &str, result: &(Option<i32>, String, String), code: i32) {
    mesh_tests::process::assert_cli_failure(what, result, code, false);
}

async fn start(dir: &Path, options: &MeshdOptions) -> Meshd {
    Meshd::start(dir, options).await.unwrap()
}

// --- apply, get, history, rollback, delete --------------------------------------------------

async fn lifecycle(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let meshd = start(&dir.path().join("meshd"), &options).await;
    let api = Api::new(&meshd);

    // Apply: every document created, in the order given.
    let (status, body) = api.apply(BASELINE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[
            ("Service", "reviews", "created"),
            ("Service", "ratings", "created"),
            ("HTTPRoute", "reviews", "created"),
        ])
    );

    // Get returns it, with its revision, as JSON or YAML.
    let (status, got) = api.get("/api/v1/documents/Service/shop/reviews").await;
    assert_eq!(status, 200, "{got}");
    let r1 = got["revision"].as_i64().unwrap();
    assert_eq!(
        got["document"]["spec"]["ports"][0],
        json!({"name": "http", "port": 9080, "protocol": "http"})
    );
    assert_eq!(got["document"]["metadata"]["namespace"], "shop");
    let v1_document = got["document"].clone();
    let (status, yaml, content_type) = api
        .get_text("/api/v1/documents/service/shop/reviews?format=yaml")
        .await;
    assert_eq!(status, 200, "{yaml}");
    assert_eq!(content_type.as_deref(), Some("application/yaml"));
    assert!(yaml.contains("kind: Service\n"), "{yaml}");
    assert!(yaml.contains("port: 9080"), "{yaml}");

    // An identical re-apply, however it is written, changes nothing: no new revision.
    let before = api.revision().await;
    let (status, body) = api.apply(REVIEWS_REFORMATTED).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "unchanged")])
    );
    assert_eq!(only_revision(&body), r1);
    let (status, body) = api.post_json("/api/v1/documents", &got["document"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "unchanged")]),
        "as JSON too"
    );
    assert_eq!(
        api.revision().await,
        before,
        "no revision for an unchanged apply"
    );

    // A dry run says what would change, with a diff, and stores nothing.
    let (status, body) = api.dry_run(REVIEWS_V2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "configured")])
    );
    let diff = body["results"][0]["diff"].as_str().unwrap();
    assert!(
        diff.starts_with(&format!(
            "--- Service shop/reviews (revision {r1})\n+++ Service shop/reviews (applied)\n@@ "
        )),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with('+') && l.contains("port: 9081")),
        "{diff}"
    );
    assert!(
        !diff
            .lines()
            .any(|l| l.starts_with('-') && !l.starts_with("---")),
        "only additions: {diff}"
    );
    let (_, body) = api.dry_run(ROUTE).await;
    assert_eq!(
        outcomes(&body),
        triples(&[("HTTPRoute", "reviews", "unchanged")])
    );
    assert!(body["results"][0]["diff"].is_null(), "{body}");
    let (_, body) = api.dry_run(RATE_LIMIT_JSON).await;
    assert_eq!(
        outcomes(&body),
        triples(&[("RateLimitPolicy", "reviews", "created")])
    );
    assert_eq!(api.revision().await, before, "a dry run stores nothing");
    let (_, got) = api.get("/api/v1/documents/Service/shop/reviews").await;
    assert_eq!(got["revision"].as_i64().unwrap(), r1);

    // A change is configured under the next revision.
    let (status, body) = api.apply(REVIEWS_V2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "configured")])
    );
    let r2 = only_revision(&body);
    assert_eq!(r2, before + 1);

    // History lists both.
    let (status, history) = api
        .get("/api/v1/documents/Service/shop/reviews/history")
        .await;
    assert_eq!(status, 200, "{history}");
    let revisions = history["revisions"].as_array().unwrap();
    let summary: Vec<(i64, &str, &str)> = revisions
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["op"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(r1, "create", "admin"), (r2, "update", "admin")]
    );
    assert_eq!(revisions[0]["document"], v1_document);

    // Rollback to r1 restores that body under a new revision; a second time changes nothing.
    let (status, body) = api
        .post_json(
            "/api/v1/documents/Service/shop/reviews/rollback",
            &json!({ "revision": r1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "configured", "{body}");
    let r3 = body["revision"].as_i64().unwrap();
    assert_eq!(r3, r2 + 1);
    let (_, got) = api.get("/api/v1/documents/Service/shop/reviews").await;
    assert_eq!(got["revision"].as_i64().unwrap(), r3);
    assert_eq!(got["document"], v1_document, "the body of revision {r1}");
    let (status, body) = api
        .post_json(
            "/api/v1/documents/Service/shop/reviews/rollback",
            &json!({ "revision": r1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "unchanged", "{body}");
    assert_eq!(body["revision"].as_i64().unwrap(), r3);
    let (status, body) = api
        .post_json(
            "/api/v1/documents/Service/shop/reviews/rollback",
            &json!({ "revision": 999_999 }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no revision 999999"),
        "{body}"
    );

    // A service that a route still uses cannot be deleted; the message names the route.
    let (status, body) = api.delete("/api/v1/documents/Service/shop/ratings").await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("cannot delete Service shop/ratings"),
        "{error}"
    );
    assert!(error.contains("HTTPRoute shop/reviews"), "{error}");
    let (status, _) = api.get("/api/v1/documents/Service/shop/ratings").await;
    assert_eq!(status, 200, "still there");

    // Delete the route: then it is gone (404), and its history shows the delete.
    let (status, body) = api
        .delete("/api/v1/documents/httproutes/shop/reviews")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "deleted");
    let deleted_at = body["revision"].as_i64().unwrap();
    let (status, body) = api.get("/api/v1/documents/HTTPRoute/shop/reviews").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (status, body) = api.delete("/api/v1/documents/HTTPRoute/shop/reviews").await;
    assert_eq!(status, 404, "deleting twice: {body}");
    let (_, history) = api
        .get("/api/v1/documents/HTTPRoute/shop/reviews/history")
        .await;
    let ops: Vec<&str> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "delete"]);
    // Rolling back to the delete is refused clearly.
    let (status, body) = api
        .post_json(
            "/api/v1/documents/HTTPRoute/shop/reviews/rollback",
            &json!({ "revision": deleted_at }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is its deletion"),
        "{body}"
    );

    // Paths with an unknown kind name the known kinds; lists filter by kind and namespace.
    let (status, body) = api.get("/api/v1/documents/Gadget/shop/x").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(
            "known kinds: Service, HTTPRoute, AuthorizationPolicy, RateLimitPolicy, TlsPolicy"
        ),
        "{body}"
    );
    let (status, body) = api.get("/api/v1/documents?kind=Gadget").await;
    assert_eq!(status, 400, "{body}");
    let (_, body) = api
        .get("/api/v1/documents?kind=Service&namespace=shop")
        .await;
    assert_eq!(keys(&body).len(), 2, "{body}");
    let (_, body) = api.get("/api/v1/documents?namespace=elsewhere").await;
    assert_eq!(keys(&body).len(), 0, "{body}");

    // A body over 1 MiB is refused with 413.
    let huge = format!("# {}\n{ROUTE}", "x".repeat(1 << 20));
    let (status, body) = api
        .post_body("/api/v1/documents", "application/yaml", huge)
        .await;
    assert_eq!(status, 413, "{body}");
    // And one in an unknown format with 415.
    let (status, body) = api
        .post_body("/api/v1/documents", "text/plain", ROUTE.to_string())
        .await;
    assert_eq!(status, 415, "{body}");

    // meshctl apply -f FILE prints kubectl's lines.
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("mesh")).unwrap();
    std::fs::write(work.join("route.yaml"), ROUTE).unwrap();
    let (code, stdout, stderr) = meshctl_apply(&meshd, &work, &["-f", "route.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "httproute/reviews created\n");

    // ... and -f DIR applies its YAML and JSON files (by name) as one set.
    std::fs::write(work.join("mesh/a-services.yaml"), SERVICES).unwrap();
    std::fs::write(work.join("mesh/b-route.yml"), ROUTE).unwrap();
    std::fs::write(work.join("mesh/c-rate-limit.json"), RATE_LIMIT_JSON).unwrap();
    std::fs::write(work.join("mesh/notes.txt"), "not a document").unwrap();
    let (code, stdout, stderr) = meshctl_apply(&meshd, &work, &["-f", "mesh"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "service/reviews unchanged\n\
         service/ratings unchanged\n\
         httproute/reviews unchanged\n\
         ratelimitpolicy/reviews created\n"
    );

    // ... and -f - reads standard input; --dry-run stores nothing.
    let mut cmd = meshd.meshctl();
    cmd.current_dir(&work)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(REVIEWS_V3.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "service/reviews configured\n"
    );
    std::fs::write(work.join("v2.yaml"), REVIEWS_V2).unwrap();
    let before = api.revision().await;
    let (code, stdout, stderr) = meshctl_apply(&meshd, &work, &["--dry-run", "-f", "v2.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "service/reviews configured (dry run)\n");
    assert_eq!(api.revision().await, before);

    // The store audited every change, once.
    let (_, audit) = api.get("/api/v1/audit?limit=1000").await;
    let applies = mesh_tests::fixtures::count(&audit, "entries", "action", "document.apply");
    // 3 (baseline) + v2 + rollback + route again + rate limit + v3.
    assert_eq!(applies, 8, "{audit}");
}

mesh_tests::on_both_stores!(lifecycle: sqlite_apply_get_history_rollback_delete, postgres_apply_get_history_rollback_delete);

// --- invalid documents ------------------------------------------------------------------------

async fn invalid_documents_store_nothing(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let meshd = start(dir.path(), &options).await;
    let api = Api::new(&meshd);
    let (status, body) = api.apply(BASELINE).await;
    assert_eq!(status, 200, "{body}");
    let before = api.list().await;
    let expected: Vec<(String, String, String)> = BASELINE_KEYS
        .iter()
        .map(|(k, ns, n)| (k.to_string(), ns.to_string(), n.to_string()))
        .collect();
    assert_eq!(keys(&before), expected);

    let corpus = invalid_corpus();
    assert!(corpus.len() >= 30, "only {} cases", corpus.len());
    let mut failures = Vec::new();
    for case in &corpus {
        for dry_run in [false, true] {
            let (status, body) = if dry_run {
                api.dry_run(case.yaml).await
            } else {
                api.apply(case.yaml).await
            };
            let error = body["error"].as_str().unwrap_or_default();
            if status != 400 || !error.contains(case.expect) {
                failures.push(format!(
                    "{} (dry run: {dry_run}): expected 400 with `{}`, got {status}: {error}",
                    case.what, case.expect
                ));
            }
        }
    }
    // JSON bodies are checked the same way.
    let json_cases: [(&str, &str); 4] = [
        (
            r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": }"#,
            "document #1: invalid JSON:",
        ),
        (
            r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "RateLimitPolicy",
                "metadata": {"name": "rl", "namespace": "shop"}, "spec": {"requestPerSecond": 5}}"#,
            "RateLimitPolicy shop/rl: spec.requestPerSecond: unknown field `requestPerSecond`",
        ),
        (
            r#"[{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "RateLimitPolicy",
                 "metadata": {"name": "rl", "namespace": "shop"}, "spec": {"requestsPerSecond": 5}},
                {"apiVersion": "mesh.meshd.dev/v1alpha1", "spec": {}}]"#,
            "document #2: kind: is required",
        ),
        ("[]", "input: contains no document"),
    ];
    for (text, expect) in json_cases {
        let (status, body) = api
            .post_body("/api/v1/documents", "application/json", text.to_string())
            .await;
        let error = body["error"].as_str().unwrap_or_default();
        if status != 400 || !error.contains(expect) {
            failures.push(format!(
                "JSON {text}: expected 400 with `{expect}`, got {status}: {error}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing of it was stored: the same documents, the same revisions, the same store revision.
    let after = api.list().await;
    assert_eq!(after, before);
}

mesh_tests::on_both_stores!(invalid_documents_store_nothing: sqlite_invalid_documents_are_refused_by_field_and_store_nothing, postgres_invalid_documents_are_refused_by_field_and_store_nothing);

// --- restart ----------------------------------------------------------------------------------

async fn restart_keeps_documents_and_revisions(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &options).await;
    let api = Api::new(&first);
    assert_eq!(api.apply(BASELINE).await.0, 200);
    assert_eq!(api.apply(REVIEWS_V2).await.0, 200);
    let before = api.list().await;
    let highest = before["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["revision"].as_i64().unwrap())
        .max()
        .unwrap();
    assert_eq!(before["revision"].as_i64().unwrap(), highest);
    let status = first.process.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}");

    let second = start(dir.path(), &options).await;
    let api = Api::new(&second);
    assert_eq!(
        api.list().await,
        before,
        "the same documents after a restart"
    );
    let (status, body) = api.apply(REVIEWS_V2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "unchanged")])
    );
    let (status, body) = api.apply(REVIEWS_V3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcomes(&body),
        triples(&[("Service", "reviews", "configured")])
    );
    assert!(
        only_revision(&body) > highest,
        "revisions continue upward: {body} after {highest}"
    );
    let (_, history) = api
        .get("/api/v1/documents/Service/shop/reviews/history")
        .await;
    assert_eq!(
        history["revisions"].as_array().unwrap().len(),
        3,
        "{history}"
    );
}

mesh_tests::on_both_stores!(restart_keeps_documents_and_revisions: sqlite_a_restart_keeps_documents_and_revisions_continue, postgres_a_restart_keeps_documents_and_revisions_continue);

// --- --config-dir -----------------------------------------------------------------------------

async fn config_dir(mut options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    write_atomically(&conf.join("services.yaml"), SERVICES);
    options.args.push("--config-dir".into());
    options.args.push(conf.display().to_string());
    let meshd = start(&dir.path().join("meshd"), &options).await;
    let api = Api::new(&meshd);

    // The files there at start are applied, by the actor `config-dir`.
    let wait_for = |path: &'static str| {
        let api = &api;
        async move {
            mesh_tests::wait::until(path, CONFIG_DIR_DEADLINE, || async move {
                let (status, body) = api.get(path).await;
                (status == 200).then_some(body)
            })
            .await
            .unwrap()
        }
    };
    wait_for("/api/v1/documents/Service/shop/ratings").await;
    let (_, history) = api
        .get("/api/v1/documents/Service/shop/reviews/history")
        .await;
    assert_eq!(history["revisions"][0]["actor"], "config-dir", "{history}");

    // A file dropped in later is applied.
    write_atomically(&conf.join("route.yaml"), ROUTE);
    wait_for("/api/v1/documents/HTTPRoute/shop/reviews").await;
    let before = api.list().await;

    // An invalid file leaves the model unchanged, and the log names the file and the field.
    let bad = conf.join("bad.yaml");
    write_atomically(&bad, BAD_ROUTE);
    let bad_lines = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&bad.display().to_string())
                    && l.contains("HTTPRoute shop/bad: spec.rules[0].backends[0].weight")
            })
            .count()
    };
    mesh_tests::wait::until("the log to name bad.yaml", CONFIG_DIR_DEADLINE, || {
        let n = bad_lines(&meshd.process.log());
        async move { (n >= 1).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(api.list().await, before, "nothing applied");

    // While it is there, a valid change in another file is held back too (the whole set is
    // skipped): the log names bad.yaml once more when the directory is read again.
    write_atomically(&conf.join("services.yaml"), &SERVICES.replace(
        "    - {name: admin, port: 9090, protocol: tcp}\n",
        "    - {name: admin, port: 9090, protocol: tcp}\n    - {name: http2, port: 9081, protocol: http}\n",
    ));
    mesh_tests::wait::until(
        "the log to name bad.yaml again",
        CONFIG_DIR_DEADLINE,
        || {
            let n = bad_lines(&meshd.process.log());
            async move { (n >= 2).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(api.list().await, before, "the whole set is skipped");
    assert!(
        meshd
            .process
            .log()
            .contains("the last good configuration stays in effect")
    );

    // Without the bad file, the held-back change is applied.
    std::fs::remove_file(&bad).unwrap();
    mesh_tests::wait::until("the held-back change", CONFIG_DIR_DEADLINE, || async {
        let (_, body) = api.get("/api/v1/documents/Service/shop/reviews").await;
        (body["document"]["spec"]["ports"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await
    .unwrap();
    let (status, _) = api.get("/api/v1/documents/HTTPRoute/shop/bad").await;
    assert_eq!(status, 404, "the bad route was never stored");

    // Removing a file deletes nothing: after route.yaml is gone and another change was read,
    // the route is still there.
    std::fs::remove_file(conf.join("route.yaml")).unwrap();
    write_atomically(&conf.join("services.yaml"), SERVICES);
    mesh_tests::wait::until("the next change", CONFIG_DIR_DEADLINE, || async {
        let (_, body) = api.get("/api/v1/documents/Service/shop/reviews").await;
        (body["document"]["spec"]["ports"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await
    .unwrap();
    let (status, _) = api.get("/api/v1/documents/HTTPRoute/shop/reviews").await;
    assert_eq!(status, 200, "a removed file deletes nothing");
}

mesh_tests::on_both_stores!(config_dir: sqlite_config_dir_applies_files_and_skips_an_invalid_set, postgres_config_dir_applies_files_and_skips_an_invalid_set);

// --- meshctl errors ---------------------------------------------------------------------------

async fn meshctl_errors(options: MeshdOptions) {
    let dir = tempfile::tempdir().unwrap();
    let meshd = start(&dir.path().join("meshd"), &options).await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // An unknown kind: exit 1, one line that names the known kinds.
    std::fs::write(
        work.join("gadget.yaml"),
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Gadget\nmetadata: {name: x}\nspec: {}\n",
    )
    .unwrap();
    let result = meshctl_apply(&meshd, &work, &["-f", "gadget.yaml"]);
    assert_failure("unknown kind", &result, 1);
    assert_eq!(result.2.lines().count(), 1, "{}", result.2);
    assert!(
        result
            .2
            .contains("Gadget default/x: kind: unknown kind \"Gadget\"; known kinds: Service"),
        "{}",
        result.2
    );

    // A missing file: exit 2, as the shell says it.
    let result = meshctl_apply(&meshd, &work, &["-f", "missing.yaml"]);
    mesh_tests::process::assert_missing_file(&result);

    // Invalid YAML: exit 1, one line with the file and the position.
    std::fs::write(
        work.join("broken.yaml"),
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: web\nspec: {}\n",
    )
    .unwrap();
    let result = meshctl_apply(&meshd, &work, &["-f", "broken.yaml"]);
    assert_failure("invalid YAML", &result, 1);
    assert_eq!(result.2.lines().count(), 1, "{}", result.2);
    assert!(
        result
            .2
            .starts_with("meshctl: -f broken.yaml: invalid YAML: "),
        "{}",
        result.2
    );
    assert!(result.2.contains("line 4"), "{}", result.2);

    // Several mistakes: one line each, and nothing applied (the valid service neither).
    std::fs::write(
        work.join("mistakes.yaml"),
        format!(
            "{SERVICES}---\n{}",
            BAD_ROUTE.replace("hostnames: [bad.example.com]", "hostnames: [\"Bad Host\"]")
        ),
    )
    .unwrap();
    let result = meshctl_apply(&meshd, &work, &["-f", "mistakes.yaml"]);
    assert_failure("invalid documents", &result, 1);
    let lines: Vec<&str> = result.2.lines().collect();
    assert_eq!(lines.len(), 2, "{}", result.2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("HTTPRoute shop/bad: spec.hostnames[0]")),
        "{}",
        result.2
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .contains("HTTPRoute shop/bad: spec.rules[0].backends[0].weight: must be 0..=100")),
        "{}",
        result.2
    );
    // A document without a kind is named by its file.
    std::fs::write(
        work.join("nameless.yaml"),
        format!("{SERVICES}---\nspec: {{}}\n"),
    )
    .unwrap();
    let result = meshctl_apply(&meshd, &work, &["-f", "nameless.yaml"]);
    assert_failure("unnamed document", &result, 1);
    assert!(
        result
            .2
            .contains("nameless.yaml document #3: kind: is required"),
        "{}",
        result.2
    );
    let api = Api::new(&meshd);
    assert!(keys(&api.list().await).is_empty(), "nothing was stored");

    // A wrong token: exit 1, and the message says which token file was refused.
    std::fs::write(work.join("services.yaml"), SERVICES).unwrap();
    let wrong = work.join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let mut cmd = meshd.meshctl();
    cmd.current_dir(&work)
        .env("MESHCTL_TOKEN_FILE", &wrong)
        .args(["apply", "-f", "services.yaml"]);
    let result = run(cmd);
    assert_failure("wrong token", &result, 1);
    assert_eq!(result.2.lines().count(), 1, "{}", result.2);
    assert!(result.2.contains("token"), "{}", result.2);
    assert!(
        result.2.contains(&wrong.display().to_string()),
        "{}",
        result.2
    );

    // meshd not running: exit 3.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut cmd = meshd.meshctl();
    cmd.current_dir(&work)
        .env("MESHCTL_SERVER", format!("http://{closed}"))
        .args(["apply", "-f", "services.yaml"]);
    let result = run(cmd);
    assert_failure("server down", &result, 3);
    assert_eq!(result.2.lines().count(), 1, "{}", result.2);
    assert!(result.2.contains("cannot reach meshd"), "{}", result.2);

    // And the same file applies when all is well.
    let (code, stdout, stderr) = meshctl_apply(&meshd, &work, &["-f", "services.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "service/reviews created\nservice/ratings created\n");
}

mesh_tests::on_both_stores!(meshctl_errors: sqlite_meshctl_apply_errors_are_one_line_with_an_exit_code, postgres_meshctl_apply_errors_are_one_line_with_an_exit_code);

// --- strict input: duplicate keys, huge values, aliases, control characters, UTF-8 ----------

/// A valid document on one line.
const REVIEWS_JSON_BODY: &str = r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"name": "http", "port": 80, "protocol": "http"}]}}"#;

/// A rate limit of 0 requests per second, then 50 for the same key.
const DUPLICATE_KEY_JSON: &str = r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "RateLimitPolicy",
  "metadata": {"name": "rl", "namespace": "shop"},
  "spec": {"requestsPerSecond": 0, "requestsPerSecond": 50}}"#;

/// "Billion laughs": ten levels of anchors, each alias expanding the one before ten times.
fn alias_bomb() -> String {
    let mut yaml = String::from(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: bomb}\nspec:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    yaml
}

/// Input that serde would take or report vaguely, through the admin API and meshctl: a repeated
/// JSON key is refused with its path (not "the last one wins"), a 0.9 MiB value is quoted
/// short with its length, an alias bomb is called one, a NUL and a byte that is not UTF-8 are
/// reported where they are.
#[tokio::test]
async fn strict_input_is_refused_precisely_by_the_api_and_meshctl() {
    let dir = tempfile::tempdir().unwrap();
    let meshd = start(&dir.path().join("meshd"), &MeshdOptions::default()).await;
    let api = Api::new(&meshd);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (status, body) = api.apply(BASELINE).await;
    assert_eq!(status, 200, "{body}");
    let before = api.list().await;
    let mut failures = Vec::new();
    let mut expect_400 = |what: &str, (status, body): (u16, Value), expect: &[&str]| {
        let error = body["error"].as_str().unwrap_or_default().to_string();
        if status != 400 || !expect.iter().all(|e| error.contains(e)) {
            failures.push(format!(
                "{what}: expected 400 with {expect:?}, got {status}: {error}"
            ));
        }
        error
    };

    // Duplicate keys in JSON: refused with the key's path, alone and in an array.
    let dup = "RateLimitPolicy shop/rl: spec.requestsPerSecond: duplicate key at line 3";
    for dry_run in ["", "?dryRun=true"] {
        let path = format!("/api/v1/documents{dry_run}");
        let result = api
            .post_body(&path, "application/json", DUPLICATE_KEY_JSON.into())
            .await;
        expect_400("duplicate key", result, &[dup]);
        let array = format!("[{REVIEWS_JSON_BODY}, {DUPLICATE_KEY_JSON}]");
        let result = api.post_body(&path, "application/json", array).await;
        expect_400("duplicate key in an array", result, &[dup]);
    }
    let result = api
        .post_body(
            "/api/v1/documents",
            "application/json",
            r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "Service", "kind": "Service"}"#
                .into(),
        )
        .await;
    expect_400(
        "duplicate top-level key",
        result,
        &["Service (document #1): kind: duplicate key"],
    );

    // A 0.9 MiB label value: the error quotes 100 characters and says how long it was.
    let huge = "v".repeat(943_718);
    let yaml = format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\n  labels: {{tier: {huge}}}\nspec:\n  ports: [{{name: http, port: 80, protocol: http}}]\n"
    );
    let error = expect_400(
        "huge label value",
        api.apply(&yaml).await,
        &[
            "Service default/web: metadata.labels.tier: label value",
            "(943718 characters)",
        ],
    );
    assert!(error.len() < 1000, "a {} byte error", error.len());
    let huge_kind = format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: {huge}\nmetadata: {{name: web}}\nspec: {{}}\n"
    );
    let error = expect_400(
        "huge kind",
        api.apply(&huge_kind).await,
        &["(943718 characters)"],
    );
    assert!(error.len() < 1000, "a {} byte error", error.len());

    // An alias bomb is named as one.
    expect_400(
        "alias bomb",
        api.apply(&alias_bomb()).await,
        &["document #1: invalid YAML: too many aliases", "anchors"],
    );

    // A raw NUL on line 4 is reported on line 4.
    let nul = "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata:\n  name: we\u{0}b\nspec: {}\n";
    expect_400(
        "raw NUL",
        api.apply(nul).await,
        &["invalid YAML: character U+0000 at line 4 column 11"],
    );

    // A byte that is not UTF-8: where it is.
    let mut bytes =
        b"apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: \"w".to_vec();
    bytes.extend([0xff]);
    bytes.extend(b"\"}\nspec: {}\n");
    let result = api
        .post_bytes("/api/v1/documents", "application/yaml", bytes.clone())
        .await;
    expect_400(
        "not UTF-8",
        result,
        &["not UTF-8: byte 0xFF at line 3 column 20 (byte 69)"],
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing of it was stored: the rate limit is not 50 (nor 0).
    assert_eq!(api.list().await, before);

    // meshctl, on the same input: one line each, exit 1, with the file.
    let files: [(&str, Vec<u8>, &[&str]); 6] = [
        (
            "dup.json",
            DUPLICATE_KEY_JSON.into(),
            &["-f dup.json: invalid JSON: spec.requestsPerSecond: duplicate key at line 3"],
        ),
        (
            "huge.yaml",
            yaml.clone().into_bytes(),
            &["metadata.labels.tier: label value", "(943718 characters)"],
        ),
        (
            "bomb.yaml",
            alias_bomb().into_bytes(),
            &["-f bomb.yaml: invalid YAML: too many aliases"],
        ),
        (
            "nul.yaml",
            nul.into(),
            &["-f nul.yaml: invalid YAML: character U+0000 at line 4 column 11"],
        ),
        (
            "latin1.yaml",
            bytes,
            &["-f latin1.yaml: not UTF-8: byte 0xFF at line 3 column 20 (byte 69)"],
        ),
        (
            "dup-in-array.json",
            format!("[{REVIEWS_JSON_BODY},\n{DUPLICATE_KEY_JSON}]").into(),
            &[
                "-f dup-in-array.json: invalid JSON: [1].spec.requestsPerSecond: duplicate key at line 4",
            ],
        ),
    ];
    for (file, content, expect) in files {
        std::fs::write(work.join(file), content).unwrap();
        for command in ["apply", "diff"] {
            let mut cmd = meshd.meshctl();
            cmd.current_dir(&work).args([command, "-f", file]);
            let result = run(cmd);
            assert_failure(&format!("meshctl {command} -f {file}"), &result, 1);
            assert_eq!(result.2.lines().count(), 1, "{}", result.2);
            assert!(result.2.len() < 1000, "a {} byte error", result.2.len());
            for e in expect {
                assert!(
                    result.2.contains(e),
                    "{command} {file}: {e:?} not in {}",
                    result.2
                );
            }
        }
    }
    assert_eq!(api.list().await, before);
}
