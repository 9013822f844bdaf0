//! The real `meshctl` binary against a real meshd (SQLite) and scripted sidecars on real mTLS
//! discovery streams: every command's table and JSON output, and bad input giving the
//! documented exit code (0 ok, 1 failure, 2 usage, 3 not found or unreachable) with a one-line
//! error.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_proto::v1::Node;
use mesh_proto::{ALL_TYPE_URLS, ROUTE_TABLE_TYPE_URL as ROUTES};
use mesh_tests::fixtures::{API_WITH_AUTHZ as MESH, SHOP, node, start_meshd as start};
use mesh_tests::meshd::{Meshd, MeshdOptions};
use mesh_tests::sidecar::{Credentials, ScriptedSidecar};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WEB: &str = "spiffe://cluster.local/ns/a/sa/web";
const NACK_TEXT: &str = "api.a:80: route \"x\": cannot build";

// --- helpers -----------------------------------------------------------------------------

/// (exit code, stdout, stderr) of one meshctl run.
type Outcome = (Option<i32>, String, String);

/// Runs `cmd` off the runtime's thread (the scripted sidecars' streams keep running).
async fn run(cmd: Command) -> Outcome {
    tokio::task::spawn_blocking(move || mesh_tests::process::run(cmd))
        .await
        .unwrap()
}

/// `meshctl ARGS` against `meshd`, in `cwd`.
async fn meshctl_in(meshd: &Meshd, cwd: &Path, args: &[&str]) -> Outcome {
    let mut cmd = meshd.meshctl();
    cmd.current_dir(cwd).args(args);
    run(cmd).await
}

async fn meshctl(meshd: &Meshd, args: &[&str]) -> Outcome {
    meshctl_in(meshd, &meshd.data_dir, args).await
}

/// `meshctl ARGS`, which must succeed: its stdout.
async fn ok(meshd: &Meshd, args: &[&str]) -> String {
    let (code, stdout, stderr) = meshctl(meshd, args).await;
    assert_eq!(code, Some(0), "meshctl {args:?}: {stderr}");
    stdout
}

/// `meshctl ARGS -o json`, which must succeed: its JSON.
async fn json(meshd: &Meshd, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let stdout = ok(meshd, &args).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("meshctl {args:?}: {e}: {stdout}"))
}

/// Asserts a failure: the exit code, and one line on stderr, `meshctl: ...`, no JSON, no
/// panic or backtrace.
fn assert_failure(what: &str, result: &(Option<i32>, String, String), code: i32) {
    mesh_tests::process::assert_cli_failure(what, result, code, true);
}

/// The table line that starts with `first` (its first column).
fn line<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no line for {first} in:\n{table}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Applies `yaml` with `meshctl apply -f`.
async fn apply(meshd: &Meshd, yaml: &str) -> String {
    let file = meshd
        .data_dir
        .join(format!("apply-{}.yaml", mesh_tests::unique()));
    std::fs::write(&file, yaml).unwrap();
    ok(meshd, &["apply", "-f", file.to_str().unwrap()]).await
}

/// A sidecar that subscribes to every type (and answers nothing yet).
async fn subscribe(meshd: &Meshd, creds: &Credentials, node: Node) -> ScriptedSidecar {
    ScriptedSidecar::open_all(meshd, creds, node).await.unwrap()
}

/// The sidecar `id` as `meshctl status -o json` shows it, once `ready` holds for it.
async fn wait_status(meshd: &Meshd, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Duration::from_secs(30);
    let start = std::time::Instant::now();
    loop {
        let all = json(meshd, &["status"]).await;
        let found = mesh_tests::fixtures::items(&all, "sidecars")
            .iter()
            .find(|s| s["id"] == id)
            .cloned();
        if let Some(s) = found.filter(|s| ready(s)) {
            return s;
        }
        assert!(
            start.elapsed() < deadline,
            "{id} never got there; last status: {all}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_types_in(state: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| {
        let types = s["types"].as_array().cloned().unwrap_or_default();
        types.len() == ALL_TYPE_URLS.len() && types.iter().all(|t| t["state"] == state)
    }
}

fn type_of<'a>(sidecar: &'a Value, type_url: &str) -> &'a Value {
    sidecar["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type_url"] == type_url)
        .unwrap_or_else(|| panic!("no {type_url} in {sidecar}"))
}

// --- status, config-dump, check with sidecars ----------------------------------------------

#[tokio::test]
async fn status_config_dump_and_check_follow_the_sidecars() {
    let (_dir, meshd) = start().await;
    apply(&meshd, MESH).await;

    // No sidecar yet: an empty list, said on stderr, exit 0.
    let (code, stdout, stderr) = meshctl(&meshd, &["status"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr, "no sidecars connected\n");
    assert_eq!(
        json(&meshd, &["status"]).await["sidecars"],
        serde_json::json!([])
    );

    // A sidecar that ACKs everything: SYNCED, with its certificate's expiry.
    let creds = Credentials::issue(&meshd, WEB).await.unwrap();
    let mut web = subscribe(&meshd, &creds, node("web-1", "web")).await;
    for _ in 0..ALL_TYPE_URLS.len() {
        let r = web.recv().await.unwrap();
        web.ack(&r).await.unwrap();
    }
    let status = wait_status(&meshd, "web-1", all_types_in("SYNCED")).await;
    assert_eq!(status["identity"], WEB);
    assert_eq!(status["service"], "web");
    let replica = status["control_plane"].as_str().unwrap().to_string();
    assert!(!replica.is_empty());
    let expires = status["cert_expires_at"].as_i64().unwrap();
    assert!(
        (now() + 3000..=now() + 3700).contains(&expires),
        "the default 1h certificate: {status}"
    );

    let table = ok(&meshd, &["status"]).await;
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "IDENTITY",
        "SERVICE",
        "REPLICA",
        "SYNC",
        "CERT EXPIRES",
        "LAST SEEN",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = line(&table, "web-1");
    for cell in [WEB, " web ", replica.as_str(), "SYNCED (8/8)", " ago"] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    assert!(
        row.contains(" in 59m ") || row.contains(" in 1h "),
        "the certificate's expiry: {row:?}"
    );
    // -n filters by namespace.
    let (code, stdout, stderr) = meshctl(&meshd, &["status", "-n", "other"]).await;
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert_eq!(stderr, "no sidecars connected in namespace other\n");

    // One sidecar, type by type.
    let detail = ok(&meshd, &["status", "web-1"]).await;
    assert!(detail.contains(&format!("Identity:   {WEB}")), "{detail}");
    // Its place in percentage rollouts (`meshctl tls set --stage`), as the API says.
    let bucket = json(&meshd, &["status", "web-1"]).await["rollout_bucket"].clone();
    assert!(
        bucket.as_u64().is_some_and(|b| b < 100)
            && detail.contains(&format!("Rollout:    bucket {bucket}\n")),
        "{detail}"
    );
    let routes = line(&detail, "RouteTable");
    let sent = type_of(&status, ROUTES)["sent_version"].as_str().unwrap();
    assert!(routes.contains("SYNCED"), "{detail}");
    assert_eq!(routes.matches(sent).count(), 2, "sent = acked: {routes}");
    assert_eq!(json(&meshd, &["status", "web-1"]).await["id"], "web-1");

    // The config dump: what the sidecar holds, by type, with versions; bodies as JSON.
    let (code, dump, stderr) = meshctl(&meshd, &["config-dump", "web-1"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let cluster = line(&dump, "Cluster");
    assert!(
        cluster.contains("api.a:80") && cluster.contains("SYNCED"),
        "{dump}"
    );
    assert!(line(&dump, "TrustBundle").contains("SYNCED"), "{dump}");
    assert!(stderr.contains("-o yaml"), "{stderr}");
    let dump = json(&meshd, &["config-dump", "web-1"]).await;
    let clusters = dump["resources"]["type.mesh.v1/Cluster"]
        .as_array()
        .unwrap();
    let api = clusters.iter().find(|c| c["name"] == "api.a:80").unwrap();
    assert_eq!(api["body"]["name"], "api.a:80");
    assert_eq!(
        api["body"]["protocol"], "Http",
        "enum values by name: {api}"
    );
    assert_eq!(api["body"]["port"], 80);
    let bundle = &dump["resources"]["type.mesh.v1/TrustBundle"][0]["body"];
    assert!(
        bundle["roots"][0]["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"),
        "{bundle}"
    );
    let yaml = ok(&meshd, &["config-dump", "web-1", "-o", "yaml"]).await;
    assert!(yaml.contains("protocol: Http"), "{yaml}");

    // All is well: check says so, line by line, exit 0.
    let report = ok(&meshd, &["check"]).await;
    for want in [
        "OK    control plane: meshd answers at http://",
        "OK    store: the store answers",
        "OK    CA: valid until ",
        "OK    sidecars: 1 sidecar(s), all in sync",
        "OK    certificates: ",
    ] {
        assert!(report.contains(want), "{want:?} not in:\n{report}");
    }
    assert_eq!(json(&meshd, &["check"]).await["ok"], true);

    // A NACK: NACKED with its text in status, and check fails naming the sidecar.
    apply(&meshd, &MESH.replace("timeout: 1s", "timeout: 2s")).await;
    let r = web.recv_type(ROUTES).await.unwrap();
    web.nack(&r, NACK_TEXT).await.unwrap();
    let status = wait_status(&meshd, "web-1", |s| {
        s["types"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["state"] == "NACKED"))
    })
    .await;
    assert_eq!(type_of(&status, ROUTES)["nack"], NACK_TEXT);
    let table = ok(&meshd, &["status"]).await;
    assert!(
        line(&table, "web-1").contains("NACKED RouteTable"),
        "{table}"
    );
    let nack_row = line(&table, "SIDECAR");
    assert!(nack_row.contains("NACK"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web-1") && l.contains("RouteTable") && l.contains(NACK_TEXT)),
        "the NACK text under the table:\n{table}"
    );

    let result = meshctl(&meshd, &["check"]).await;
    assert_failure("check with a NACK", &result, 1);
    assert_eq!(result.2, "meshctl: 1 problem found\n");
    let fail = line(&result.1, "FAIL");
    assert!(
        fail.contains(&format!(
            "sidecars: web-1 rejected RouteTable (NACK): {NACK_TEXT}"
        )),
        "{fail}"
    );
    assert!(fail.contains("meshctl status web-1"), "what to do: {fail}");

    // A sidecar that never ACKs: STALE in two polls 2 s apart is a problem too. (web-1 from
    // now on ACKs whatever comes, as a live sidecar would: its RouteTable stays NACKED until
    // a RouteTable sent after the NACK is ACKed.)
    let web_acks = tokio::spawn(async move {
        while let Ok(r) = web.recv().await {
            if web.ack(&r).await.is_err() {
                break;
            }
        }
    });
    let _lazy = subscribe(&meshd, &creds, node("lazy-1", "web")).await;
    wait_status(&meshd, "lazy-1", all_types_in("STALE")).await;
    let mut cmd = meshd.meshctl();
    cmd.args(["check", "-o", "json"]);
    let (code, stdout, _) = run(cmd).await;
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    let failures: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failures.len(), 2, "{report}");
    assert!(
        failures
            .iter()
            .any(|m| m.starts_with("lazy-1 has not ACKed") && m.contains("(STALE)")),
        "{report}"
    );
    assert!(
        failures
            .iter()
            .any(|m| m.starts_with("web-1 rejected RouteTable")),
        "{report}"
    );

    web_acks.abort();

    // Unknown sidecar: exit 3.
    let result = meshctl(&meshd, &["config-dump", "nobody"]).await;
    assert_failure("unknown sidecar", &result, 3);
    assert!(
        result.2.contains("no connected sidecar \"nobody\""),
        "{}",
        result.2
    );
    assert!(result.2.contains("meshctl status"), "{}", result.2);
    let result = meshctl(&meshd, &["status", "nobody"]).await;
    assert_failure("unknown sidecar in status", &result, 3);

    // A sidecar that sends no id is named `<identity>@<address>`: `/`, `:` and `@` in the id
    // reach the API intact.
    let _unnamed = subscribe(&meshd, &creds, node("", "web")).await;
    let all = json(&meshd, &["status"]).await;
    let id = all["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .find(|id| id.starts_with(&format!("{WEB}@127.0.0.1:")))
        .unwrap_or_else(|| panic!("no unnamed sidecar in {all}"))
        .to_string();
    let dump = json(&meshd, &["config-dump", &id]).await;
    assert_eq!(dump["id"], id.as_str());
    let table = ok(&meshd, &["config-dump", &id]).await;
    line(&table, "TrustBundle");
    assert_eq!(json(&meshd, &["status", &id]).await["identity"], WEB);
}

// --- documents ------------------------------------------------------------------------------

#[tokio::test]
async fn documents_get_describe_diff_history_rollback_delete() {
    let (dir, meshd) = start().await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    apply(&meshd, SHOP).await;

    // get KIND: every namespace, with a summary of each.
    let table = ok(&meshd, &["get", "services"]).await;
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAMESPACE", "NAME", "SUMMARY", "REVISION", "UPDATED"]
    );
    let reviews = table.lines().find(|l| l.contains("reviews")).unwrap();
    assert!(reviews.starts_with("shop "), "{table}");
    assert!(reviews.contains("9080/http,9090/tcp"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    let list = json(&meshd, &["get", "service", "-n", "shop"]).await;
    let names: Vec<&str> = list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ratings", "reviews"]);
    assert_eq!(
        list["documents"][1]["document"]["spec"]["ports"][0]["port"],
        9080
    );
    let (code, stdout, stderr) = meshctl(&meshd, &["get", "services", "-n", "nowhere"]).await;
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert_eq!(stderr, "no services in namespace nowhere\n");

    // get all: a KIND column.
    let table = ok(&meshd, &["get", "all"]).await;
    let route = line(&table, "HTTPRoute");
    assert!(
        route.contains("reviews.example.com -> reviews:9080 90%, ratings:8080 10%"),
        "{table}"
    );

    // get KIND NAME and KIND/NAME: one document, as YAML too.
    let one = json(&meshd, &["get", "httproute/reviews", "-n", "shop"]).await;
    assert_eq!(one["kind"], "HTTPRoute");
    let first_revision = one["revision"].as_i64().unwrap();
    let yaml = ok(
        &meshd,
        &["get", "httproute", "reviews", "-n", "shop", "-o", "yaml"],
    )
    .await;
    assert!(yaml.contains("kind: HTTPRoute\n"), "{yaml}");
    assert!(yaml.contains("- reviews.example.com\n"), "{yaml}");

    // diff: what apply would change, nothing stored.
    let v2 = SHOP
        .replace("weight: 90", "weight: 80")
        .replace("weight: 10}", "weight: 20}");
    std::fs::write(work.join("v2.yaml"), &v2).unwrap();
    let (code, diff, stderr) = meshctl_in(&meshd, &work, &["diff", "-f", "v2.yaml"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        diff.starts_with("httproute/reviews (configured, namespace shop)\n"),
        "{diff}"
    );
    assert!(
        diff.contains("-      weight: 90\n+      weight: 80\n"),
        "{diff}"
    );
    assert_eq!(stderr, "2 other document(s) unchanged\n");
    let planned = {
        let mut cmd = meshd.meshctl();
        cmd.current_dir(&work)
            .args(["diff", "-f", "v2.yaml", "-o", "json"]);
        let (code, stdout, stderr) = run(cmd).await;
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    assert_eq!(planned["dry_run"], true);
    assert_eq!(planned["results"][2]["outcome"], "configured");
    let unchanged = json(&meshd, &["get", "httproute/reviews", "-n", "shop"]).await;
    assert_eq!(unchanged["revision"], first_revision, "diff stored nothing");
    std::fs::write(work.join("same.yaml"), SHOP).unwrap();
    let (code, stdout, stderr) = meshctl_in(&meshd, &work, &["diff", "-f", "same.yaml"]).await;
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert_eq!(
        stderr,
        "no changes: meshd already holds these 3 document(s)\n"
    );

    // Apply it; history lists both revisions; describe shows the latest.
    let (code, stdout, stderr) = meshctl_in(&meshd, &work, &["apply", "-f", "v2.yaml"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("httproute/reviews configured"), "{stdout}");
    let history = ok(&meshd, &["history", "httproute/reviews", "-n", "shop"]).await;
    let rows: Vec<&str> = history.lines().collect();
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["REVISION", "OP", "ACTOR", "AT", "AGE"]
    );
    assert_eq!(rows.len(), 3, "{history}");
    assert!(
        rows[1].starts_with(&format!("{first_revision} ")),
        "{history}"
    );
    assert!(
        rows[1].contains(" create ") && rows[1].contains(" admin "),
        "{history}"
    );
    assert!(rows[2].contains(" update "), "{history}");
    let second_revision = json(&meshd, &["history", "httproute/reviews", "-n", "shop"]).await
        ["revisions"][1]["revision"]
        .as_i64()
        .unwrap();

    let describe = ok(&meshd, &["describe", "httproute/reviews", "-n", "shop"]).await;
    for want in [
        "Kind:       HTTPRoute",
        "Namespace:  shop",
        &format!("Revision:   {second_revision}"),
        "History:    2 revision(s); `meshctl history httproute/reviews -n shop`",
        "Document:\n  apiVersion: mesh.meshd.dev/v1alpha1\n  kind: HTTPRoute",
        "weight: 80",
    ] {
        assert!(describe.contains(want), "{want:?} not in:\n{describe}");
    }
    let described = json(&meshd, &["describe", "httproute/reviews", "-n", "shop"]).await;
    assert_eq!(described["history"].as_array().unwrap().len(), 2);
    assert_eq!(described["revision"], second_revision);

    // Rollback to the first revision: the 90/10 split is back, as a new revision.
    let out = ok(
        &meshd,
        &[
            "rollback",
            "httproute/reviews",
            "-n",
            "shop",
            "--to-revision",
            &first_revision.to_string(),
        ],
    )
    .await;
    assert!(
        out.starts_with(&format!(
            "httproute/reviews configured (rolled back to revision {first_revision}, now revision "
        )),
        "{out}"
    );
    let now_doc = json(&meshd, &["get", "httproute/reviews", "-n", "shop"]).await;
    assert_eq!(
        now_doc["document"]["spec"]["rules"][0]["backends"][0]["weight"],
        90
    );
    let again = json(
        &meshd,
        &[
            "rollback",
            "httproute/reviews",
            "-n",
            "shop",
            "--to-revision",
            &first_revision.to_string(),
        ],
    )
    .await;
    assert_eq!(again["outcome"], "unchanged");
    assert_eq!(again["rolled_back_to"], first_revision);

    // Rollback to a revision that does not exist: exit 3, and where to look.
    let result = meshctl(
        &meshd,
        &[
            "rollback",
            "httproute/reviews",
            "-n",
            "shop",
            "--to-revision",
            "999",
        ],
    )
    .await;
    assert_failure("rollback to a missing revision", &result, 3);
    assert!(result.2.contains("999"), "{}", result.2);
    assert!(
        result
            .2
            .contains("meshctl history httproute/reviews -n shop"),
        "{}",
        result.2
    );

    // Delete: refused while referenced (exit 1; meshd's message has one line per referring
    // document, each a `meshctl: ` line), then the route first; gone → exit 3.
    let (code, _, stderr) = meshctl(&meshd, &["delete", "service/ratings", "-n", "shop"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "meshctl: cannot delete Service shop/ratings: it is still referenced; change or delete \
         these first:\nmeshctl: HTTPRoute shop/reviews: spec.rules[0].backends[1].service: \
         Service shop/ratings does not exist\n"
    );
    let out = ok(&meshd, &["delete", "httproute/reviews", "-n", "shop"]).await;
    assert!(
        out.starts_with("httproute/reviews deleted (revision "),
        "{out}"
    );
    let deleted = json(&meshd, &["delete", "service/ratings", "-n", "shop"]).await;
    assert_eq!(deleted["outcome"], "deleted");
    assert_eq!(deleted["name"], "ratings");
    let result = meshctl(&meshd, &["describe", "service/ratings", "-n", "shop"]).await;
    assert_failure("describe of a deleted document", &result, 3);
    assert!(
        result
            .2
            .contains("not found; list them with `meshctl get service -n shop`"),
        "{}",
        result.2
    );
    let result = meshctl(&meshd, &["get", "service", "ratings"]).await;
    assert_failure("get in the default namespace", &result, 3);
    assert!(result.2.contains("default/ratings"), "{}", result.2);
}

// --- certificates, tokens, CA ----------------------------------------------------------------

#[tokio::test]
async fn certs_tokens_ca_status_and_an_unrenewed_certificate() {
    let (dir, meshd) = start().await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // ca status: trust domain, signing certificate, roots with expiry; JSON has fingerprints.
    let ca = json(&meshd, &["ca", "status"]).await;
    assert_eq!(ca["trust_domain"], "cluster.local");
    assert_eq!(ca["rotation_phase"], "idle");
    let root = &ca["roots"][0];
    let fingerprint = root["fingerprint"].as_str().unwrap();
    assert_eq!(root["active"], true);
    assert!(root["not_after"].as_i64().unwrap() > now() + 365 * 86_400);
    assert_eq!(ca["signing"]["fingerprint"], fingerprint, "a root CA signs");
    assert_eq!(ca["leaf_ttl_seconds"], 3600);
    let table = ok(&meshd, &["ca", "status"]).await;
    for want in [
        "Trust domain:   cluster.local",
        "Rotation:       idle",
        &format!("  fingerprint:  {fingerprint}"),
        "Leaf TTL:       1h (max 1h)",
    ] {
        assert!(table.contains(want), "{want:?} not in:\n{table}");
    }
    let root_row = line(&table, "O=meshd,");
    assert!(
        root_row.contains(fingerprint) && root_row.contains(" in 36") && root_row.ends_with("yes"),
        "{table}"
    );
    let bundle = ok(&meshd, &["ca", "bundle"]).await;
    assert_eq!(bundle, meshd.bundle_pem());

    // token create | list | revoke.
    let token = ok(
        &meshd,
        &[
            "token",
            "create",
            "--identity",
            WEB,
            "--ttl",
            "10m",
            "--uses",
            "2",
        ],
    )
    .await;
    assert!(
        token.starts_with("mjt_"),
        "only the token on stdout: {token}"
    );
    let created = json(
        &meshd,
        &[
            "token",
            "create",
            "--identity",
            "spiffe://cluster.local/ns/a/sa/db",
        ],
    )
    .await;
    let db_id = created["id"].as_str().unwrap().to_string();
    assert!(created["token"].as_str().unwrap().starts_with("mjt_"));
    let table = ok(&meshd, &["token", "list"]).await;
    let row = line(&table, &db_id);
    assert!(
        row.contains("spiffe://cluster.local/ns/a/sa/db")
            && row.contains(" active ")
            && row.contains(" in "),
        "{table}"
    );
    assert_eq!(
        ok(&meshd, &["token", "revoke", &db_id]).await,
        format!("token {db_id} revoked\n")
    );
    let tokens = json(&meshd, &["token", "list"]).await;
    let db = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == db_id.as_str())
        .unwrap();
    assert!(db["revoked_at"].is_i64(), "{tokens}");
    assert!(line(&ok(&meshd, &["token", "list"]).await, &db_id).contains(" revoked "));
    let result = meshctl(&meshd, &["token", "revoke", "nosuchtoken"]).await;
    assert_failure("revoke an unknown token", &result, 3);
    assert!(result.2.contains("meshctl token list"), "{}", result.2);

    // A certificate: listed by certs, with its expiry.
    let out = work.join("web");
    let (code, _, stderr) = meshctl(
        &meshd,
        &[
            "cert",
            "issue",
            "--token",
            token.trim(),
            "--control-plane",
            &meshd.grpc_url(),
            "--ca-bundle",
            meshd.data_dir.join("ca-bundle.pem").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let certs = json(&meshd, &["certs"]).await;
    let list = certs["certificates"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{certs}");
    let serial = list[0]["serial_hex"].as_str().unwrap().to_string();
    assert_eq!(list[0]["identity"], WEB);
    let table = ok(&meshd, &["certs"]).await;
    let row = line(&table, &serial);
    assert!(
        row.contains(WEB) && (row.contains(" in 59m ") || row.contains(" in 1h ")),
        "{table}"
    );
    assert!(row.contains(&fingerprint[..16]), "the issuer: {table}");
    // Not expiring within 10 minutes.
    let (code, stdout, stderr) = meshctl(&meshd, &["certs", "--expiring", "10m"]).await;
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert_eq!(stderr, "no certificate expires within 10m\n");
    assert_eq!(
        json(&meshd, &["certs", "--expiring", "10m"]).await["certificates"],
        serde_json::json!([])
    );

    // check: all well.
    let report = ok(&meshd, &["check"]).await;
    assert!(
        report.contains(
            "OK    certificates: 1 live certificate(s) for 1 identities, none near expiry"
        ),
        "{report}"
    );

    // A certificate of 2 minutes that nobody renews: --expiring lists it, check fails on it.
    let api_id = "spiffe://cluster.local/ns/a/sa/api";
    let token = ok(&meshd, &["token", "create", "--identity", api_id]).await;
    let (code, _, stderr) = meshctl(
        &meshd,
        &[
            "cert",
            "issue",
            "--token",
            token.trim(),
            "--control-plane",
            &meshd.grpc_url(),
            "--ca-bundle",
            meshd.data_dir.join("ca-bundle.pem").to_str().unwrap(),
            "--out",
            work.join("api").to_str().unwrap(),
            "--ttl",
            "2m",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let expiring = json(&meshd, &["certs", "--expiring", "10m"]).await;
    let list = expiring["certificates"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{expiring}");
    assert_eq!(list[0]["identity"], api_id);
    let table = ok(&meshd, &["certs", "--expiring", "10m"]).await;
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains(api_id) && !table.contains(WEB), "{table}");
    let result = meshctl(&meshd, &["check"]).await;
    assert_failure("check with a certificate near expiry", &result, 1);
    let fail = line(&result.1, "FAIL");
    assert!(
        fail.contains(&format!("certificates: the newest certificate of {api_id}"))
            && fail.contains("no newer one was issued")
            && fail.contains("meshctl cert renew"),
        "{fail}"
    );
}

/// A CA that expires within 30 days: `ca status` shows it, `check` warns (and still passes).
#[tokio::test]
async fn check_warns_when_the_ca_expires_within_30_days() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    // A P-256 root CA valid for 10 days, made by the real openssl.
    mesh_tests::process::openssl_root_ca(
        dir.path(),
        key.to_str().unwrap(),
        cert.to_str().unwrap(),
        "10",
        "/O=meshd test/CN=short-lived root",
    );
    let options = MeshdOptions {
        args: vec![
            "--ca-cert".into(),
            cert.display().to_string(),
            "--ca-key".into(),
            key.display().to_string(),
        ],
        ..Default::default()
    };
    let meshd = Meshd::start(&dir.path().join("meshd"), &options)
        .await
        .unwrap();

    let table = ok(&meshd, &["ca", "status"]).await;
    let root = line(&table, "O=meshd");
    assert!(
        root.contains(" in 9d") || root.contains(" in 10d"),
        "{table}"
    );
    let report = ok(&meshd, &["check"]).await;
    let warn = line(&report, "WARN");
    assert!(
        warn.contains("CA: the CA's ")
            && warn.contains("short-lived root expires ")
            && (warn.contains("(in 9d") || warn.contains("(in 10d"))
            && warn.contains("rotate the CA before then"),
        "{report}"
    );
    let findings = json(&meshd, &["check"]).await;
    assert_eq!(findings["ok"], true, "a warning is not a failure");
    assert!(
        findings["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["level"] == "warn" && f["check"] == "CA"),
        "{findings}"
    );
}

// --- bad input, help, completion, dashboard ---------------------------------------------------

#[tokio::test]
async fn bad_input_gives_the_documented_exit_code_and_one_line() {
    let (dir, meshd) = start().await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    apply(&meshd, SHOP).await;

    // Unknown kind: exit 1 (meshd knows the kinds), one line naming the known ones.
    for args in [
        &["get", "gadgets"][..],
        &["describe", "gadget/x"],
        &["history", "gadget/x"],
        &["delete", "gadget/x"],
    ] {
        let result = meshctl(&meshd, args).await;
        assert_failure(&format!("unknown kind: {args:?}"), &result, 1);
        assert!(
            result.2.contains("unknown kind \"gadget") && result.2.contains("known kinds: Service"),
            "{}",
            result.2
        );
    }

    // Missing file: exit 2, as the shell says it.
    let result = meshctl_in(&meshd, &work, &["diff", "-f", "missing.yaml"]).await;
    mesh_tests::process::assert_missing_file(&result);

    // Invalid YAML: exit 1, with the file and the position.
    std::fs::write(
        work.join("broken.yaml"),
        "kind: Service\nmetadata: {name: web\nspec: {}\n",
    )
    .unwrap();
    let result = meshctl_in(&meshd, &work, &["diff", "-f", "broken.yaml"]).await;
    assert_failure("invalid YAML", &result, 1);
    assert!(
        result
            .2
            .starts_with("meshctl: -f broken.yaml: invalid YAML: "),
        "{}",
        result.2
    );
    assert!(result.2.contains("line "), "{}", result.2);

    // Usage errors: exit 2 (clap's usage message).
    for args in [
        &["describe", "service"][..],
        &["rollback", "service/reviews"],
        &["status", "-o", "xml"],
        &["nosuchcommand"],
        &["completion", "tcsh"],
    ] {
        let (code, stdout, stderr) = meshctl(&meshd, args).await;
        assert_eq!(code, Some(2), "{args:?}: {stdout} {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = meshctl(&meshd, &["describe", "service"]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("expected KIND/NAME, e.g. service/reviews"),
        "{stderr}"
    );
    let result = meshctl(&meshd, &["certs", "--expiring", "soon"]).await;
    assert_failure("a bad duration", &result, 2);
    assert!(result.2.contains("--expiring \"soon\""), "{}", result.2);

    // Wrong token: exit 1, naming the token file.
    let wrong = work.join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    for args in [&["status"][..], &["get", "services"], &["check"]] {
        let mut cmd = meshd.meshctl();
        cmd.env("MESHCTL_TOKEN_FILE", &wrong).args(args);
        let result = run(cmd).await;
        if args == ["check"] {
            // check reports it as a finding, then says how many problems.
            assert_eq!(result.0, Some(1), "{result:?}");
            assert!(
                line(&result.1, "FAIL").contains("admin API: meshd refused the admin token from"),
                "{}",
                result.1
            );
            assert_eq!(result.2, "meshctl: 1 problem found\n");
            continue;
        }
        assert_failure(&format!("wrong token: {args:?}"), &result, 1);
        assert!(
            result.2.contains(&wrong.display().to_string()),
            "{}",
            result.2
        );
    }
    // A token file that does not exist: usage, exit 2.
    let mut cmd = meshd.meshctl();
    cmd.env("MESHCTL_TOKEN_FILE", work.join("nope"))
        .args(["status"]);
    let result = run(cmd).await;
    assert_failure("missing token file", &result, 2);
    assert!(result.2.contains("MESHCTL_TOKEN_FILE"), "{}", result.2);

    // Not found: exit 3.
    let result = meshctl(&meshd, &["config-dump", "ghost-1"]).await;
    assert_failure("unknown sidecar", &result, 3);
    let result = meshctl(
        &meshd,
        &[
            "rollback",
            "service/reviews",
            "-n",
            "shop",
            "--to-revision",
            "12345",
        ],
    )
    .await;
    assert_failure("missing revision", &result, 3);
    let result = meshctl(&meshd, &["history", "service/ghost", "-n", "shop"]).await;
    assert_failure("history of nothing", &result, 3);

    // Server down: exit 3, for every command that needs it (check too).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for args in [
        &["status"][..],
        &["get", "services"],
        &["config-dump", "web-1"],
        &["ca", "status"],
        &["certs"],
        &["token", "list"],
    ] {
        let mut cmd = meshd.meshctl();
        cmd.env("MESHCTL_SERVER", format!("http://{closed}"))
            .args(args);
        let result = run(cmd).await;
        assert_failure(&format!("server down: {args:?}"), &result, 3);
        assert!(result.2.contains("cannot reach meshd"), "{}", result.2);
    }
    let mut cmd = meshd.meshctl();
    cmd.env("MESHCTL_SERVER", format!("http://{closed}"))
        .arg("check");
    let (code, stdout, stderr) = run(cmd).await;
    assert_eq!(code, Some(3), "{stdout} {stderr}");
    assert!(
        line(&stdout, "FAIL").contains("control plane: cannot reach meshd"),
        "{stdout}"
    );
    assert_eq!(stderr, "meshctl: meshd cannot be reached\n");
}

#[tokio::test]
async fn help_completion_and_dashboard() {
    let (_dir, meshd) = start().await;

    // Every command's help has an example (checked for all in meshctl's unit tests; here a few
    // through the real binary), and the top-level help the exit codes.
    let help = ok(&meshd, &["--help"]).await;
    assert!(
        help.contains("Exit codes:\n  0  ok\n  1  failure"),
        "{help}"
    );
    for cmd in ["status", "get", "check", "config-dump", "rollback"] {
        let help = ok(&meshd, &[cmd, "--help"]).await;
        assert!(help.contains("Example"), "{cmd}: {help}");
        assert!(help.contains("--output"), "{cmd}: {help}");
    }
    let help = ok(&meshd, &["token", "revoke", "--help"]).await;
    assert!(help.contains("meshctl token revoke"), "{help}");

    // Completion scripts name the commands.
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef meshctl"),
        ("fish", "complete -c meshctl"),
    ] {
        let script = ok(&meshd, &["completion", shell]).await;
        assert!(script.contains(marker), "{shell}");
        assert!(script.contains("config-dump"), "{shell}");
    }

    // The dashboard's URL, on the admin address; no browser without a terminal.
    let out = ok(&meshd, &["dashboard"]).await;
    assert_eq!(out, format!("http://{}/dashboard\n", meshd.admin_addr));
    let url = json(&meshd, &["dashboard"]).await;
    assert_eq!(url["url"], format!("http://{}/dashboard", meshd.admin_addr));
}

// --- outside text, other servers, sizes -------------------------------------------------------

/// No raw control byte on the terminal: (ESC, NUL, BEL and CR are shown escaped).
fn assert_escaped(what: &str, text: &str) {
    for raw in ['\u{1b}', '\0', '\u{7}', '\r'] {
        assert!(!text.contains(raw), "{what}: a raw {raw:?} in {text:?}");
    }
}

/// A name, a NACK and a server's error with ESC sequences and NUL in them are printed escaped
/// by every output path (error lines, tables, `check`).
#[tokio::test]
async fn outside_text_is_printed_escaped() {
    let (dir, meshd) = start().await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // A document name with ESC and NUL: meshd's error echoes it; meshctl escapes it.
    std::fs::write(
        work.join("evil.json"),
        r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "web\u001b[2J\u001b[31m\u0000x"}, "spec": {}}"#,
    )
    .unwrap();
    let result = meshctl_in(&meshd, &work, &["apply", "-f", "evil.json"]).await;
    assert_failure("an evil name", &result, 1);
    assert_escaped("apply", &result.2);
    assert!(
        result
            .2
            .contains(r"Service default/web\x1b[2J\x1b[31m\0x: metadata.name: "),
        "{}",
        result.2
    );

    // A sidecar's NACK text with control bytes: escaped in status (table and one sidecar) and
    // in check.
    apply(&meshd, MESH).await;
    let creds = Credentials::issue(&meshd, WEB).await.unwrap();
    let mut web = subscribe(&meshd, &creds, node("web-1", "web")).await;
    for _ in 0..ALL_TYPE_URLS.len() {
        let r = web.recv().await.unwrap();
        web.ack(&r).await.unwrap();
    }
    wait_status(&meshd, "web-1", all_types_in("SYNCED")).await;
    apply(&meshd, &MESH.replace("timeout: 1s", "timeout: 2s")).await;
    let r = web.recv_type(ROUTES).await.unwrap();
    web.nack(&r, "bad \u{1b}[2J\u{7}route\0\r!").await.unwrap();
    wait_status(&meshd, "web-1", |s| {
        s["types"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["state"] == "NACKED"))
    })
    .await;
    let shown = r"bad \x1b[2J\x07route\0";
    for args in [&["status"][..], &["status", "web-1"]] {
        let (code, stdout, stderr) = meshctl(&meshd, args).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_escaped(&format!("{args:?}"), &stdout);
        assert!(stdout.contains(shown), "{args:?}: {stdout}");
    }
    let (code, stdout, _) = meshctl(&meshd, &["check"]).await;
    assert_eq!(code, Some(1));
    assert_escaped("check", &stdout);
    assert!(stdout.contains(shown), "{stdout}");
    // JSON carries it as JSON does (\u001b), never raw.
    let (_, stdout, _) = meshctl(&meshd, &["status", "-o", "yaml"]).await;
    assert_escaped("status -o yaml", &stdout);

    // A server's error message with control bytes.
    let evil = mesh_tests::canned::CannedHttp::start(
        "500 Internal Server Error",
        "application/json",
        br#"{"error": "store down \u001b]0;owned\u0007\u0000 now"}"#,
        true,
    );
    let mut cmd = meshd.meshctl();
    cmd.env("MESHCTL_SERVER", evil.url()).arg("status");
    let result = run(cmd).await;
    assert_failure("an evil server error", &result, 1);
    assert_escaped("server error", &result.2);
    assert!(
        result.2.contains(r"store down \x1b]0;owned\x07\0 now"),
        "{}",
        result.2
    );
}

/// `--server` without a scheme is a usage error with the URL to give; a server that answers
/// but is not meshd is named as such, with its URL.
#[tokio::test]
async fn a_server_that_is_not_meshd_is_named() {
    let (_dir, meshd) = start().await;
    for (how, value) in [("flag", "127.0.0.1:15000"), ("env", "localhost:15000")] {
        let mut cmd = meshd.meshctl();
        if how == "flag" {
            cmd.args(["--server", value, "status"]);
        } else {
            cmd.env("MESHCTL_SERVER", value).arg("status");
        }
        let (code, stdout, stderr) = run(cmd).await;
        assert_eq!(code, Some(2), "{how}: {stdout} {stderr}");
        assert!(
            stderr.contains(&format!("e.g. http://{value}")),
            "{how}: {stderr}"
        );
        assert!(!stderr.contains("cannot reach"), "{stderr}");
    }

    // A web server's 404 page, and a 200 that is HTML: not meshd, with the URL.
    let page = b"<!DOCTYPE html>\n<html><head><title>Error response</title></head>\n<body>404</body></html>\n";
    for (status, what) in [("404 File not found", "404"), ("200 OK", "200")] {
        let other = mesh_tests::canned::CannedHttp::start(status, "text/html", page, true);
        for args in [&["status"][..], &["get", "services"], &["token", "list"]] {
            let mut cmd = meshd.meshctl();
            cmd.env("MESHCTL_SERVER", other.url()).args(args);
            let result = run(cmd).await;
            assert_failure(&format!("{what}: {args:?}"), &result, 1);
            assert!(
                result.2.contains(&format!(
                    "the server at {} is not meshd's admin API: {}/api/v1/",
                    other.url(),
                    other.url()
                )),
                "{}",
                result.2
            );
            assert!(result.2.contains(&format!("HTTP {what}")), "{}", result.2);
        }
    }
}

/// A 20 MiB apply is refused before it is sent (exit 1, the sizes), never "cannot reach
/// meshd": against meshd, and 10 times against a server that answers 413 and closes the
/// connection mid-body (the race that made most runs say "Broken pipe").
#[tokio::test]
async fn a_too_large_apply_is_a_failure_not_an_unreachable_meshd() {
    let (dir, meshd) = start().await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let big = |mib: usize| {
        format!(
            r#"{{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "Service",
                "metadata": {{"name": "big", "annotations": {{"x": "{}"}}}},
                "spec": {{"ports": [{{"name": "http", "port": 80, "protocol": "http"}}]}}}}"#,
            "a".repeat(mib)
        )
    };
    std::fs::write(work.join("big.json"), big(20 << 20)).unwrap();
    for command in ["apply", "diff"] {
        let result = meshctl_in(&meshd, &work, &[command, "-f", "big.json"]).await;
        assert_failure(&format!("{command} of 20 MiB"), &result, 1);
        assert!(
            result
                .2
                .contains("the request is 20.0 MiB and meshd accepts at most 1 MiB"),
            "{}",
            result.2
        );
    }
    let (_, stdout, _) = meshctl(&meshd, &["get", "services"]).await;
    assert!(!stdout.contains("big"), "{stdout}");

    // A server that answers 413 as soon as it has the head and closes with the body unread
    // (before the check, 17 of 20 runs here said "cannot reach meshd ... Broken pipe"; 10 runs
    // would all have passed with a chance of 0.15^10): the size is refused before anything is
    // sent, every time.
    let refusing = mesh_tests::canned::CannedHttp::start(
        "413 Payload Too Large",
        "application/json",
        br#"{"error": "the request body is larger than 1 MiB"}"#,
        false,
    );
    for _ in 0..10 {
        let mut cmd = meshd.meshctl();
        cmd.current_dir(&work)
            .env("MESHCTL_SERVER", refusing.url())
            .args(["apply", "-f", "big.json"]);
        let result = run(cmd).await;
        assert_failure("413 and close", &result, 1);
        assert!(result.2.contains("the request is 20.0 MiB"), "{}", result.2);
        assert!(!result.2.contains("cannot reach"), "{}", result.2);
    }
}

/// kubectl's habits: short kind names, RFC 3339 times in YAML, one wording for what happened
/// to a document, `--expiring` alone, and `get --help` naming every kind.
#[tokio::test]
async fn short_names_rfc3339_times_and_one_wording() {
    let (_dir, meshd) = start().await;
    // One wording: created, unchanged, configured, deleted, as `kind/name outcome`.
    assert_eq!(
        apply(&meshd, SHOP).await,
        "service/reviews created\nservice/ratings created\nhttproute/reviews created\n"
    );
    assert!(
        apply(&meshd, SHOP)
            .await
            .starts_with("service/reviews unchanged\n")
    );
    let changed = apply(
        &meshd,
        &SHOP
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20"),
    )
    .await;
    assert!(
        changed.ends_with("httproute/reviews configured\n"),
        "{changed}"
    );
    let out = ok(&meshd, &["tls", "set", "--min-version", "1.3"]).await;
    assert_eq!(out, "tlspolicy/mesh-tls created\n");

    // Short names, as kubectl has them, wherever a kind is named.
    for (short, name, ns) in [
        ("svc", "reviews", "shop"),
        ("hr", "reviews", "shop"),
        ("tlsp", "mesh-tls", "mesh-system"),
    ] {
        let list = ok(&meshd, &["get", short, "-n", ns]).await;
        assert!(
            list.lines().any(|l| l.starts_with(ns) && l.contains(name)),
            "{short}: {list}"
        );
        let one = json(&meshd, &["get", &format!("{short}/{name}"), "-n", ns]).await;
        assert_eq!(one["name"], name, "{short}");
        ok(&meshd, &["describe", &format!("{short}/{name}"), "-n", ns]).await;
        ok(&meshd, &["history", &format!("{short}/{name}"), "-n", ns]).await;
    }
    for short in ["ap", "rlp"] {
        let (code, _, stderr) = meshctl(&meshd, &["get", short]).await;
        assert_eq!(code, Some(0), "{short}: {stderr}");
    }
    let out = ok(&meshd, &["delete", "hr/reviews", "-n", "shop"]).await;
    assert!(
        out.starts_with("httproute/reviews deleted (revision "),
        "{out}"
    );

    // -o yaml: times in RFC 3339 (JSON keeps the API's unix seconds).
    let rfc3339 = |v: &str| {
        let b = v.as_bytes();
        v.len() == 20
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'Z'
            && v[..4].parse::<u32>().is_ok()
    };
    let yaml = ok(
        &meshd,
        &["get", "svc", "reviews", "-n", "shop", "-o", "yaml"],
    )
    .await;
    for key in ["created_at", "updated_at"] {
        let value = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {yaml}"));
        assert!(rfc3339(value.trim_matches('\'')), "{key}: {value}");
    }
    let history = ok(
        &meshd,
        &["history", "svc/reviews", "-n", "shop", "-o", "yaml"],
    )
    .await;
    let at = history
        .lines()
        .find_map(|l| l.trim().trim_start_matches("- ").strip_prefix("at: "))
        .unwrap_or_else(|| panic!("no at in {history}"));
    assert!(rfc3339(at.trim_matches('\'')), "{at}");
    let ca = ok(&meshd, &["ca", "status", "-o", "yaml"]).await;
    assert!(
        !ca.lines()
            .any(|l| l.trim().starts_with("not_after: ") && l.trim()[11..].parse::<i64>().is_ok()),
        "{ca}"
    );
    let doc = json(&meshd, &["get", "svc", "reviews", "-n", "shop"]).await;
    assert!(doc["created_at"].is_i64(), "{doc}");

    // `--expiring` alone: the default window.
    let (code, stdout, stderr) = meshctl(&meshd, &["certs", "--expiring"]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert_eq!(
        json(&meshd, &["certs", "--expiring"]).await,
        json(&meshd, &["certs", "--expiring", "10m"]).await
    );

    // `get --help` names every kind, sidecar too, with the short names.
    let help = ok(&meshd, &["get", "--help"]).await;
    for kind in [
        "service (svc)",
        "httproute (hr)",
        "authorizationpolicy (ap)",
        "ratelimitpolicy (rlp)",
        "tlspolicy (tlsp)",
        "sidecar",
    ] {
        assert!(help.contains(kind), "{kind} not in {help}");
    }
}

/// A sidecar that ACKs every response in the background, except while `hold` is set: then it
/// keeps the latest response of each type, and ACKs those once `hold` is cleared.
fn ack_unless_held(
    mut s: ScriptedSidecar,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut unacked = std::collections::BTreeMap::new();
        loop {
            tokio::select! {
                r = s.recv() => match r {
                    Ok(r) => { unacked.insert(r.type_url.clone(), r); }
                    Err(_) => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if !hold.load(Ordering::SeqCst) {
                for (_, r) in std::mem::take(&mut unacked) {
                    if s.ack(&r).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// `meshctl tls set` says how many sidecars a policy covers (and why a stage covers none),
/// `tls status` shows it per policy with how many ACKed, and `tls set --wait` waits for the
/// ACKs (a failure, exit 1, when a covered sidecar does not ACK in time).
#[tokio::test]
async fn tls_stages_say_whom_they_cover_and_wait_for_acks() {
    let (_dir, meshd) = start().await;
    apply(&meshd, MESH).await;
    let creds = Credentials::issue(&meshd, WEB).await.unwrap();
    // Three sidecars whose rollout buckets are all at least 5.
    let ids: Vec<String> = (0..)
        .map(|i| format!("web-{i}"))
        .filter(|id| meshd::model::rollout_bucket(id) >= 5)
        .take(3)
        .collect();
    let mut buckets: Vec<u8> = ids
        .iter()
        .map(|id| meshd::model::rollout_bucket(id))
        .collect();
    buckets.sort_unstable();
    let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut acking = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let s = subscribe(&meshd, &creds, node(id, "web")).await;
        // The last one can be held (it then ACKs nothing).
        let hold = if i == 2 {
            hold.clone()
        } else {
            Default::default()
        };
        acking.push(ack_unless_held(s, hold));
        wait_status(&meshd, id, all_types_in("SYNCED")).await;
    }
    hold.store(true, std::sync::atomic::Ordering::SeqCst);

    // A stage below every bucket covers none, and says so with the buckets.
    let stage = format!("{}%", buckets[0]);
    let (code, stdout, stderr) = meshctl(
        &meshd,
        &["tls", "set", "--min-version", "1.3", "--stage", &stage],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "tlspolicy/mesh-tls-stage created\n");
    let shown: Vec<String> = buckets.iter().map(u8::to_string).collect();
    assert!(
        stderr.contains(&format!(
            "tlspolicy/mesh-tls-stage covers no sidecar: a {stage} stage takes the sidecars whose rollout bucket is below {}, and the 3 it selects have buckets {}",
            buckets[0],
            shown.join(", ")
        )),
        "{stderr}"
    );
    let status = ok(&meshd, &["tls", "status"]).await;
    let header = line(&status, "POLICY");
    assert!(header.ends_with("COVERS   ACKED"), "{status}");
    assert!(
        line(&status, "mesh-system/mesh-tls-stage").ends_with("0        0"),
        "{status}"
    );
    assert!(
        status.contains("tlspolicy/mesh-tls-stage covers no sidecar"),
        "{status}"
    );
    let inv = json(&meshd, &["tls", "status"]).await;
    assert_eq!(inv["policies"][0]["covers"], 0, "{inv}");

    // The whole fleet: it covers three; the held one does not ACK, so --wait fails in time.
    let (code, stdout, stderr) = meshctl(
        &meshd,
        &["tls", "set", "--stage", "100%", "--wait", "--timeout", "3s"],
    )
    .await;
    assert_eq!(code, Some(1), "{stdout} {stderr}");
    assert!(
        stderr.contains("tlspolicy/mesh-tls-stage covers 3 of 3 sidecar(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "meshctl: only 2 of the 3 sidecar(s) TlsPolicy mesh-system/mesh-tls-stage covers ACKed it within 3s"
        ),
        "{stderr}"
    );
    let status = ok(&meshd, &["tls", "status"]).await;
    assert!(
        line(&status, "mesh-system/mesh-tls-stage").ends_with("3        2"),
        "{status}"
    );

    // Once it ACKs too, --wait returns when all three have.
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, stdout, stderr) =
        meshctl(&meshd, &["tls", "set", "--min-version", "1.3", "--wait"]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("tlspolicy/mesh-tls created"), "{stdout}");
    assert!(
        stderr.ends_with("3 of 3 covered sidecar(s) ACKed\n"),
        "{stderr}"
    );
}
