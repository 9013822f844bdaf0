//! Mesh documents: `get`, `describe`, `delete`, `diff`, `history`, `rollback` (and `apply`, in
//! [`crate::apply`]). A document is named `KIND/NAME` in namespace `-n NS` (default
//! `default`); meshd accepts a kind in any case, its plural, or with the group
//! (`httproute.mesh.meshd.dev`), so the names `apply` prints can be pasted back.
//!
//! An unknown kind is meshd's to find (it knows the kinds), and it is an error of the request,
//! exit 1, the same whether the kind was in a file or on the command line.

use crate::Failure;
use crate::admin::{Client, segment};
use crate::output::{self, Format, Table, ago, text, utc};
use mesh_admin_api::{
    Applied, DocumentList, DocumentOutcome, History, PlanResults, RevisionEntry, RollbackRequest,
    RolledBack, StoredDocument,
};
use serde_json::Value;

/// The namespace of a document that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `KIND/NAME`, as typed.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: String,
    pub name: String,
}

/// clap's parser for `KIND/NAME` (a bad one is a usage error, exit 2).
pub fn parse_target(text: &str) -> Result<Target, String> {
    match text.split_once('/') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Target {
                kind: kind.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!(
            "expected KIND/NAME, e.g. service/reviews or httproute/reviews, not {text:?}"
        )),
    }
}

use output::display_name;

/// The path of one document.
fn path(target: &Target, namespace: &str) -> String {
    format!(
        "/api/v1/documents/{}/{}/{}",
        segment(&target.kind),
        segment(namespace),
        segment(&target.name)
    )
}

/// `document Service shop/x not found` → with what to try next.
fn not_found_hint(f: Failure, target: &Target, namespace: &str) -> Failure {
    f.hint_if_not_found(|| {
        format!(
            "list them with `meshctl get {} -n {namespace}`",
            target.kind
        )
    })
}

// --- get ---------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The kind: service (svc), httproute (hr), authorizationpolicy (ap), ratelimitpolicy
    /// (rlp), tlspolicy (tlsp), sidecar, or `all`; or KIND/NAME.
    kind: String,
    /// One document's name.
    name: Option<String>,
}

pub async fn get(
    args: &GetArgs,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let (kind, name) = match (args.kind.split_once('/'), &args.name) {
        (Some((kind, name)), None) => (kind.to_string(), Some(name.to_string())),
        (Some(_), Some(_)) => {
            return Err(Failure::new(
                crate::EXIT_USAGE,
                "give KIND NAME or KIND/NAME, not both; e.g. `meshctl get service reviews`",
            ));
        }
        (None, name) => (args.kind.clone(), name.clone()),
    };
    if let Some(name) = name {
        let target = Target { kind, name };
        let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
        let doc: StoredDocument = api
            .fetch(&path(&target, ns))
            .await
            .map_err(|f| not_found_hint(f, &target, ns))?;
        return output::emit(format, &doc, |doc| {
            list_table(std::slice::from_ref(doc), false).print()
        });
    }
    let all = kind.eq_ignore_ascii_case("all");
    let mut query = Vec::new();
    if !all {
        query.push(format!("kind={}", segment(&kind)));
    }
    if let Some(ns) = namespace {
        query.push(format!("namespace={}", segment(ns)));
    }
    let list: DocumentList = api
        .fetch(&format!("/api/v1/documents?{}", query.join("&")))
        .await?;
    output::emit(format, &list, |list| {
        let docs = &list.documents;
        if docs.is_empty() {
            let place = namespace.map_or(String::new(), |ns| format!(" in namespace {ns}"));
            let what = if all {
                "documents".to_string()
            } else {
                kind.clone()
            };
            note!("no {what}{place}");
        } else {
            list_table(docs, all).print();
        }
    })
}

fn list_table(docs: &[StoredDocument], with_kind: bool) -> Table {
    let mut headers = vec!["NAMESPACE", "NAME", "SUMMARY", "REVISION", "UPDATED"];
    if with_kind {
        headers.insert(0, "KIND");
    }
    let mut table = Table::new(&headers);
    for d in docs {
        let spec = d.document.get("spec").unwrap_or(&Value::Null);
        let mut row = vec![
            text(&d.namespace),
            text(&d.name),
            summary(&d.kind, spec),
            text(&d.revision),
            ago(&d.updated_at),
        ];
        if with_kind {
            row.insert(0, text(&d.kind));
        }
        table.row(row);
    }
    table
}

/// One short line of what a document says, for `get`: a service's ports, a route's hosts and
/// backends.
fn summary(kind: &str, spec: &Value) -> String {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let out = match kind {
        "Service" => list(&spec["ports"])
            .iter()
            .map(|p| format!("{}/{}", text(&p["port"]), text(&p["protocol"])))
            .collect::<Vec<_>>()
            .join(","),
        "HTTPRoute" => {
            let hosts: Vec<String> = list(&spec["hostnames"]).iter().map(text).collect();
            let parents: Vec<String> = list(&spec["parentRefs"])
                .iter()
                .map(|p| text(&p["name"]))
                .collect();
            let backends: Vec<String> = list(&spec["rules"])
                .iter()
                .flat_map(|r| list(&r["backends"]))
                .map(|b| {
                    let weight = b["weight"]
                        .as_u64()
                        .map_or(String::new(), |w| format!(" {w}%"));
                    format!("{}:{}{weight}", text(&b["service"]), text(&b["port"]))
                })
                .collect();
            let from = if hosts.is_empty() { parents } else { hosts };
            format!("{} -> {}", from.join(","), backends.join(", "))
        }
        "AuthorizationPolicy" => text(&spec["action"]),
        "RateLimitPolicy" => match spec["requestsPerSecond"].as_f64() {
            Some(rps) => format!("{rps}/s"),
            None => String::new(),
        },
        "Sidecar" => spec["egress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        "TlsPolicy" => {
            let min = spec["minVersion"].as_str().unwrap_or_default();
            let max = spec["maxVersion"].as_str().unwrap_or_default();
            match (min, max) {
                ("", "") => String::new(),
                (min, "") => format!("{min}+"),
                (min, max) => format!("{min}..{max}"),
            }
        }
        _ => String::new(),
    };
    if out.is_empty() { "-".into() } else { out }
}

// --- describe ----------------------------------------------------------------------------

pub async fn describe(
    target: &Target,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let doc: StoredDocument = api
        .fetch(&path(target, ns))
        .await
        .map_err(|f| not_found_hint(f, target, ns))?;
    let history: History = api.fetch(&format!("{}/history", path(target, ns))).await?;
    // The table shows the body as meshd writes it (canonical YAML, fields in schema order).
    let yaml = match format {
        Format::Table => {
            api.get_text(&format!("{}?format=yaml", path(target, ns)))
                .await?
        }
        _ => String::new(),
    };
    let value = Described {
        doc,
        history: history.revisions,
    };
    output::emit(format, &value, |value| {
        let (doc, revisions) = (&value.doc, &value.history);
        let (kind, name) = (doc.kind.as_str(), doc.name.as_str());
        let last = revisions.last();
        say_part!(
            "{}",
            output::fields(&[
                ("Kind", text(&doc.kind)),
                ("Namespace", text(&doc.namespace)),
                ("Name", text(&doc.name)),
                ("Revision", text(&doc.revision)),
                (
                    "Created",
                    format!("{} ({})", utc(&doc.created_at), ago(&doc.created_at))
                ),
                (
                    "Updated",
                    format!(
                        "{} ({}) by {}",
                        utc(&doc.updated_at),
                        ago(&doc.updated_at),
                        last.map_or("-".into(), |r| text(&r.actor))
                    )
                ),
                (
                    "History",
                    format!(
                        "{} revision(s); `meshctl history {}/{name} -n {ns}`",
                        revisions.len(),
                        kind.to_ascii_lowercase()
                    )
                ),
            ])
        );
        say!("Document:");
        for line in yaml.lines() {
            say!("  {line}");
        }
    })
}

/// What `meshctl describe -o json` prints: the document and its history.
#[derive(serde::Serialize)]
struct Described {
    #[serde(flatten)]
    doc: StoredDocument,
    history: Vec<RevisionEntry>,
}

// --- delete ------------------------------------------------------------------------------

pub async fn delete(
    target: &Target,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let deleted = api
        .delete(&path(target, ns))
        .await
        .map_err(|f| not_found_hint(f, target, ns))?;
    let deleted: Applied = api.read(&path(target, ns), deleted)?;
    output::emit(format, &deleted, |d| {
        let kind = &d.key.kind;
        let revision = format!("revision {}", text(&d.revision));
        say!(
            "{}",
            output::outcome(kind, &target.name, "deleted", Some(&revision))
        );
    })
}

// --- history and rollback ----------------------------------------------------------------

pub async fn history(
    target: &Target,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let history: History = api
        .fetch(&format!("{}/history", path(target, ns)))
        .await
        .map_err(|f| not_found_hint(f, target, ns))?;
    output::emit(format, &history, |h| {
        let mut table = Table::new(&["REVISION", "OP", "ACTOR", "AT", "AGE"]);
        for r in &h.revisions {
            table.row(vec![
                text(&r.revision),
                text(&r.op),
                text(&r.actor),
                utc(&r.at),
                ago(&r.at),
            ]);
        }
        table.print();
    })
}

pub async fn rollback(
    target: &Target,
    revision: i64,
    namespace: Option<&str>,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
    let applied: RolledBack = api
        .submit(
            &format!("{}/rollback", path(target, ns)),
            &RollbackRequest { revision },
        )
        .await
        .map_err(|f| {
            f.hint_if_not_found(|| {
                format!(
                    "see the revisions with `meshctl history {}/{} -n {ns}`",
                    target.kind, target.name
                )
            })
        })?;
    output::emit(format, &applied, |a| {
        let a = &a.applied;
        let kind = &a.key.kind;
        let (outcome, note) = match a.outcome {
            DocumentOutcome::Unchanged => (
                "unchanged",
                format!("it already is as at revision {revision}"),
            ),
            other => (
                other.as_str(),
                format!(
                    "rolled back to revision {revision}, now revision {}",
                    text(&a.revision)
                ),
            ),
        };
        say!(
            "{}",
            output::outcome(kind, &target.name, outcome, Some(&note))
        );
    })
}

// --- diff --------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A file, a directory (its *.yaml, *.yml and *.json files) or `-` for standard input;
    /// repeat for more.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    files: Vec<String>,
}

/// What `apply -f` would change: meshd validates the documents as a set and compares each with
/// what it stores (a dry run; nothing is written).
pub async fn diff(
    args: &DiffArgs,
    format: Format,
    api: Result<Client, Failure>,
) -> Result<(), Failure> {
    let (docs, origins) = crate::apply::read_documents(&args.files)?;
    let planned: PlanResults =
        crate::apply::send(api?, "/api/v1/documents?dryRun=true", docs, &origins).await?;
    output::emit(format, &planned, |p| {
        let results = &p.results;
        let mut unchanged = 0;
        for r in results {
            let name = display_name(&r.key.kind, &r.key.name);
            match (r.outcome, r.diff.as_deref()) {
                (DocumentOutcome::Unchanged, _) | (_, None) => unchanged += 1,
                (outcome, Some(diff)) => {
                    say!(
                        "{name} ({}, namespace {})",
                        outcome.as_str(),
                        text(&r.key.namespace)
                    );
                    say_part!("{diff}");
                    if !diff.ends_with('\n') {
                        say!();
                    }
                }
            }
        }
        if unchanged == results.len() {
            note!("no changes: meshd already holds these {unchanged} document(s)");
        } else if unchanged > 0 {
            note!("{unchanged} other document(s) unchanged");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_are_kind_slash_name() {
        let t = parse_target("service/reviews").unwrap();
        assert_eq!((t.kind.as_str(), t.name.as_str()), ("service", "reviews"));
        for bad in ["service", "/x", "service/", "a/b/c"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn summaries_say_what_a_document_does() {
        let route = json!({
            "hostnames": ["reviews.example.com"],
            "rules": [{"backends": [
                {"service": "reviews", "port": 9080, "weight": 90},
                {"service": "ratings", "port": 8080, "weight": 10}
            ]}]
        });
        assert_eq!(
            summary("HTTPRoute", &route),
            "reviews.example.com -> reviews:9080 90%, ratings:8080 10%"
        );
        let svc =
            json!({"ports": [{"port": 80, "protocol": "http"}, {"port": 9090, "protocol": "tcp"}]});
        assert_eq!(summary("Service", &svc), "80/http,9090/tcp");
        assert_eq!(summary("Gadget", &svc), "-");
    }
}
