//! `/api/v1/documents`: apply (and dry-run), list, get, delete, history and rollback of mesh
//! documents. Changes go through [`crate::source::Documents`], which validates each one against
//! the whole model before anything is stored; the store writes the revision and audit rows.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/documents[?dryRun=true]` | apply YAML (`application/yaml`, multi-document) or JSON (`application/json`: a document or an array of them) as one set |
//! | `GET /api/v1/documents[?kind=&namespace=]` | the stored documents, and the store's revision |
//! | `GET /api/v1/documents/{kind}/{namespace}/{name}[?format=yaml]` | one document with its revision |
//! | `DELETE /api/v1/documents/{kind}/{namespace}/{name}` | delete, if nothing refers to it |
//! | `GET /api/v1/documents/{kind}/{namespace}/{name}/history` | every revision, oldest first |
//! | `POST /api/v1/documents/{kind}/{namespace}/{name}/rollback` | `{"revision": N}`: re-apply that body |
//!
//! `{kind}` in a path is the kind as written in documents (`HTTPRoute`), in any case, or its
//! plural (`httproutes`), optionally with the group (`httproute.mesh.meshd.dev`), so that the
//! names `meshctl apply` prints work, or its short name as kubectl has them (`svc`, `hr`, `ap`,
//! `rlp`, `tlsp`).

use super::{AdminState, ApiError, ApiResult, Caller};
use crate::model::{Document, DocumentKey, Kind};
use crate::source::{Applied, Outcome, Planned};
use crate::store::Revision;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mesh_admin_api as api;
use serde::Deserialize;
use serde_json::Value;

/// The API group of mesh documents (`mesh.meshd.dev/v1alpha1` without the version).
pub const GROUP: &str = "mesh.meshd.dev";

/// The response header carrying a document's revision when the body is YAML.
pub const REVISION_HEADER: &str = "x-meshd-revision";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ApplyQuery {
    /// Validate and report what would change, store nothing.
    #[serde(default, alias = "dry_run")]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    kind: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    /// `json` (default) or `yaml`.
    format: Option<String>,
}

/// `POST /api/v1/documents[?dryRun=true]`.
pub(super) async fn apply(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(body_error)?;
    let docs = parse_body(&headers, &body)?;
    if query.dry_run {
        let planned = state.documents.plan(docs).await?;
        let results = planned.iter().map(planned_view).collect();
        let plan = api::PlanResults {
            dry_run: true,
            results,
        };
        return Ok(Json(plan).into_response());
    }
    let applied = state.documents.apply(docs, &caller.name).await?;
    let results = applied.iter().map(applied_view).collect();
    Ok(Json(api::ApplyResults { results }).into_response())
}

/// `GET /api/v1/documents[?kind=&namespace=]`.
pub(super) async fn list(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<api::DocumentList>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind = query.kind.as_deref().map(parse_kind).transpose()?;
    let store = state.documents.store();
    // The revision first: a document changed meanwhile shows a revision above it, never the
    // reverse, so a client that follows "changes after revision N" misses nothing.
    let revision = store.current_revision().await?;
    let docs = store
        .list_documents(kind.map(Kind::as_str), query.namespace.as_deref())
        .await?;
    let documents = docs.iter().map(stored_view).collect();
    Ok(Json(api::DocumentList {
        documents,
        revision,
    }))
}

/// `GET /api/v1/documents/{kind}/{namespace}/{name}[?format=yaml]`.
pub(super) async fn get(
    State(state): State<AdminState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind = parse_kind(&kind)?;
    let yaml = match query.format.as_deref() {
        None | Some("json") => false,
        Some("yaml") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: expected json or yaml"
            )));
        }
    };
    let doc = state
        .documents
        .store()
        .get_document(kind.as_str(), &namespace, &name)
        .await?;
    if !yaml {
        return Ok(Json(stored_view(&doc)).into_response());
    }
    let text = Document::parse_json(&doc.body)
        .map(|d| d.to_yaml())
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored body does not parse: {e}"),
            )
        })?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        text,
    )
        .into_response();
    response
        .headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(doc.revision));
    Ok(response)
}

/// `DELETE /api/v1/documents/{kind}/{namespace}/{name}`.
pub(super) async fn delete(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<api::Applied>> {
    let kind = parse_kind(&kind)?;
    let deleted = state
        .documents
        .delete(kind, &namespace, &name, &caller.name)
        .await?;
    Ok(Json(api::Applied {
        key: key_view(&deleted.key),
        revision: deleted.revision,
        outcome: api::DocumentOutcome::Deleted,
    }))
}

/// `GET /api/v1/documents/{kind}/{namespace}/{name}/history`.
pub(super) async fn history(
    State(state): State<AdminState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<api::History>> {
    let kind = parse_kind(&kind)?;
    let revisions = state.documents.history(kind, &namespace, &name).await?;
    let key = DocumentKey {
        kind,
        namespace,
        name,
    };
    Ok(Json(api::History {
        key: key_view(&key),
        revisions: revisions.iter().map(revision_view).collect(),
    }))
}

/// `POST /api/v1/documents/{kind}/{namespace}/{name}/rollback` with `{"revision": N}`.
pub(super) async fn rollback(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    body: Result<Json<api::RollbackRequest>, JsonRejection>,
) -> ApiResult<Json<api::RolledBack>> {
    let kind = parse_kind(&kind)?;
    let Json(request) = body.map_err(|e| {
        let status = e.status();
        let message = format!("{}; send {{\"revision\": N}}", e.body_text());
        ApiError::new(status, message)
    })?;
    let applied = state
        .documents
        .rollback(kind, &namespace, &name, request.revision, &caller.name)
        .await?;
    Ok(Json(api::RolledBack {
        applied: applied_view(&applied),
        rolled_back_to: request.revision,
    }))
}

// --- request parsing ---------------------------------------------------------------------

/// A body that could not be read: too large (413), or broken.
fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} MiB; apply the documents in several requests",
                super::MAX_BODY >> 20
            ),
        )
    } else {
        ApiError::new(e.status(), e.body_text())
    }
}

/// The documents of a body, YAML or JSON by its Content-Type.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Vec<Document>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let yaml = match content_type.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => true,
        "application/json" => false,
        t if t.ends_with("+json") => false,
        other => {
            let shown = if other.is_empty() { "(none)" } else { other };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {shown}: send application/yaml (one or more documents) or \
                     application/json (a document or an array of documents)"
                ),
            ));
        }
    };
    let text = mesh_model::text::utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the body is {e}")))?;
    let docs = if yaml {
        Document::parse_yaml(text)
    } else {
        Document::parse_json_set(text)
    };
    docs.map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The kind named in a path or a `kind=` parameter: as in documents, any case, plural, or
/// with the group.
fn parse_kind(text: &str) -> ApiResult<Kind> {
    let lower = text.to_ascii_lowercase();
    let bare = lower
        .strip_suffix(&format!(".{GROUP}"))
        .unwrap_or(lower.as_str());
    Kind::ALL
        .into_iter()
        .find(|k| {
            let singular = k.as_str().to_ascii_lowercase();
            bare == singular || bare == plural(&singular) || k.short_name() == Some(bare)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown kind {text:?}; known kinds: {}",
                Kind::ALL.map(Kind::as_str).join(", ")
            ))
        })
}

fn plural(singular: &str) -> String {
    match singular.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{singular}s"),
    }
}

// --- response bodies ---------------------------------------------------------------------

fn key_view(key: &DocumentKey) -> api::DocumentKey {
    api::DocumentKey {
        kind: key.kind.as_str().into(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn outcome_view(outcome: Outcome) -> api::DocumentOutcome {
    match outcome {
        Outcome::Created => api::DocumentOutcome::Created,
        Outcome::Configured => api::DocumentOutcome::Configured,
        Outcome::Unchanged => api::DocumentOutcome::Unchanged,
    }
}

fn applied_view(a: &Applied) -> api::Applied {
    api::Applied {
        key: key_view(&a.key),
        revision: a.revision,
        outcome: outcome_view(a.outcome),
    }
}

fn planned_view(p: &Planned) -> api::Planned {
    api::Planned {
        key: key_view(&p.key),
        revision: p.revision,
        outcome: outcome_view(p.outcome),
        diff: p.diff.clone(),
    }
}

/// A stored body is canonical JSON written by meshd; should one not parse, it is shown as a
/// string rather than failing the whole list.
fn body_value(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
}

fn stored_view(d: &crate::store::Document) -> api::StoredDocument {
    api::StoredDocument {
        kind: d.kind.clone(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        revision: d.revision,
        created_at: d.created_at,
        updated_at: d.updated_at,
        document: body_value(&d.body),
    }
}

fn revision_view(r: &Revision) -> api::RevisionEntry {
    api::RevisionEntry {
        revision: r.revision,
        op: r.op.as_str().into(),
        actor: r.actor.clone(),
        at: r.at,
        document: r.body.as_deref().map(body_value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_in_paths_are_forgiving_but_not_vague() {
        for (text, kind) in [
            ("HTTPRoute", Kind::HttpRoute),
            ("httproute", Kind::HttpRoute),
            ("httproutes", Kind::HttpRoute),
            ("httproute.mesh.meshd.dev", Kind::HttpRoute),
            ("services", Kind::Service),
            ("tlspolicies", Kind::TlsPolicy),
            ("AuthorizationPolicy", Kind::AuthorizationPolicy),
            ("svc", Kind::Service),
            ("hr", Kind::HttpRoute),
            ("ap", Kind::AuthorizationPolicy),
            ("rlp", Kind::RateLimitPolicy),
            ("TLSP", Kind::TlsPolicy),
        ] {
            assert_eq!(parse_kind(text).unwrap(), kind, "{text}");
        }
        let e = parse_kind("gadget").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("known kinds: Service, HTTPRoute"),
            "{}",
            e.message
        );
    }
}
