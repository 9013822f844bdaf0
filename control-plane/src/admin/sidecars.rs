//! `/api/v1/sidecars`: the connected sidecars with their sync state and certificate expiry
//! (`meshctl status`), and what one sidecar's scope holds (`meshctl config-dump`).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/sidecars` | every connected sidecar: [`crate::xds::SidecarStatus`] plus `cert_expires_at` |
//! | `GET /api/v1/sidecars/{id}/config` | the resources of its scope, bodies as JSON, and its sync state per type |

use super::debug_json::debug_to_json;
use super::{AdminState, ApiError, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

/// `GET /api/v1/sidecars`.
///
/// `cert_expires_at` (unix seconds, or null) is the expiry of the newest live certificate issued
/// to the sidecar's identity. The store does not know which of an identity's certificates a
/// given stream presented (it keys certificates by serial, the stream knows a fingerprint), so
/// for several sidecars of one identity this is the latest of them; for the usual one sidecar
/// per identity, it is its own. Sync state comes from memory, so a store that cannot answer
/// leaves `cert_expires_at` null rather than failing the list.
pub(super) async fn list(State(state): State<AdminState>) -> Response {
    let sidecars = state.xds.sidecars();
    let expiry = match newest_expiry_by_identity(&state).await {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!(error = %e, "reading certificates for the sidecar list");
            HashMap::new()
        }
    };
    let list: Vec<Value> = sidecars
        .iter()
        .map(|s| {
            let mut v = json!(s);
            v["cert_expires_at"] = json!(expiry.get(&s.identity));
            v
        })
        .collect();
    Json(json!({ "sidecars": list })).into_response()
}

async fn newest_expiry_by_identity(
    state: &AdminState,
) -> Result<HashMap<String, i64>, crate::store::StoreError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut newest = HashMap::new();
    for cert in state.store.list_certificates(Some(now), None).await? {
        let entry = newest.entry(cert.identity).or_insert(cert.not_after);
        *entry = (*entry).max(cert.not_after);
    }
    Ok(newest)
}

/// `GET /api/v1/sidecars/{id}/config`: the resources meshd holds for the sidecar's scope (what
/// it runs once SYNCED), by type URL, each `{name, version, body}` with the body as JSON (see
/// [`super::debug_json`]); and `types`, the sidecar's sync state per type.
pub(super) async fn config(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no connected sidecar {id:?}"),
        )
    };
    let snapshot = state.xds.config_of(&id).ok_or_else(not_found)?;
    let types = state
        .xds
        .sidecars()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.types)
        .unwrap_or_default();
    let mut resources = serde_json::Map::new();
    for ty in mesh_proto::ResourceType::ALL {
        let list: Vec<Value> = snapshot
            .resources(ty)
            .map(|r| {
                let body = match &r.body {
                    // The variant is the type, already the key: its message alone.
                    Some(body) => body_json(body),
                    None => Value::Null,
                };
                json!({ "name": r.name, "version": r.version, "body": body })
            })
            .collect();
        resources.insert(ty.type_url().to_string(), json!(list));
    }
    Ok(Json(json!({ "id": id, "resources": resources, "types": types })).into_response())
}

/// A resource body as JSON: `Cluster(Cluster {..})` → the message's fields. Should the `Debug`
/// text ever fall outside what [`debug_to_json`] reads, the text itself is shown.
fn body_json(body: &mesh_proto::v1::resource::Body) -> Value {
    match debug_to_json(body) {
        Some(Value::Object(map)) if map.len() == 1 => map
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Null),
        Some(other) => other,
        None => Value::String(format!("{body:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::v1::resource::Body;
    use mesh_proto::v1::{TrustBundle, TrustRoot};

    #[test]
    fn a_body_is_its_message_as_json() {
        let body = Body::TrustBundle(TrustBundle {
            name: "cluster.local".into(),
            roots: vec![TrustRoot {
                pem: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let v = body_json(&body);
        assert_eq!(v["name"], "cluster.local");
        assert!(
            v["roots"][0]["pem"]
                .as_str()
                .unwrap_or_default()
                .starts_with("-----BEGIN CERTIFICATE-----\n"),
            "{v}"
        );
    }
}
