//! `/api/v1/sidecars`: the connected sidecars with their sync state and certificate expiry
//! (`meshctl status`, the dashboard), and what one sidecar's scope holds (`meshctl config-dump`).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/sidecars[?offset=&limit=&q=&state=&namespace=]` | connected sidecars: [`crate::xds::SidecarStatus`] plus `state` and `cert_expires_at`; with the fleet's counts |
//! | `GET /api/v1/sidecars/{id}` | one of them |
//! | `GET /api/v1/sidecars/{id}/config` | the resources of its scope, bodies as JSON, and its sync state per type |
//!
//! The list is filtered and paged here, not in the client, so a dashboard of thousands of
//! sidecars moves one page at a time: `q` is a case-insensitive substring of the id, identity,
//! namespace, service or workload; `state` one of [`SidecarState`]; `namespace` exact. Without
//! `limit` every match is listed (what meshctl reads); with it at most [`MAX_LIMIT`]. Every
//! answer carries `total` (connected), `matched` (after the filters), `offset`, and `counts`
//! (connected sidecars by state, before the filters), counted server-side, and `elsewhere`: how
//! many sidecars the other live replicas hold (this list is this replica's).

use super::debug_json::debug_to_json;
use super::events::Live;
use super::{AdminState, ApiError, ApiResult};
use crate::xds::SidecarStatus;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use mesh_admin_api as api;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The most sidecars one page of the list holds.
pub const MAX_LIMIT: usize = 1000;

/// A sidecar's sync state as a whole: the worst of its types.
pub use mesh_admin_api::SidecarState;

/// The state of `sidecar` as a whole.
pub fn state_of(sidecar: &SidecarStatus) -> SidecarState {
    SidecarState::of(&sidecar.types)
}

/// The fleet's sidecars by state (every state present, zeros included).
pub fn counts(sidecars: &[SidecarStatus]) -> api::Counts {
    let mut counts: api::Counts = SidecarState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for s in sidecars {
        *counts.entry(state_of(s).as_str().to_string()).or_default() += 1;
    }
    counts
}

/// The certificate a sidecar holds, as the store knows it: the newest in use for its
/// identity. The serial is the one identifier of a certificate that meshctl and the dashboard
/// show (`meshctl certs` lists the same serials).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldCert {
    pub serial_hex: String,
    pub not_after: i64,
}

/// A sidecar as the API shows it: its status, `state`, `cert_serial` and `cert_expires_at`.
pub fn sidecar_view(s: &SidecarStatus, held: &HashMap<String, HeldCert>) -> api::Sidecar {
    let cert = held.get(&s.identity);
    api::Sidecar {
        status: s.clone(),
        state: state_of(s),
        cert_serial: cert.map(|c| c.serial_hex.clone()),
        cert_expires_at: cert.map(|c| c.not_after),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    q: Option<String>,
    state: Option<String>,
    namespace: Option<String>,
}

/// `GET /api/v1/sidecars`.
///
/// `cert_expires_at` (unix seconds, or null) is the expiry of the newest live certificate issued
/// to the sidecar's identity (for a page, as read at most a few seconds ago: see
/// [`Live::expiry`]). The store does not know which of an identity's certificates a
/// given stream presented (it keys certificates by serial, the stream knows a fingerprint), so
/// for several sidecars of one identity this is the latest of them; for the usual one sidecar
/// per identity, it is its own. Sync state comes from memory, so a store that cannot answer
/// leaves `cert_expires_at` null rather than failing the list.
pub(super) async fn list(
    State(state): State<AdminState>,
    axum::Extension(live): axum::Extension<Live>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<api::SidecarList>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wanted_state = match query.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(SidecarState::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state {text:?}: expected one of SYNCED, STALE, NACKED, CONNECTING"
            ))
        })?),
    };
    if query.limit == Some(0) || query.limit.is_some_and(|l| l > MAX_LIMIT) {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1..={MAX_LIMIT}"
        )));
    }
    let needle = query
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let sidecars = state.xds.sidecars();
    let counts = counts(&sidecars);
    let total = sidecars.len();
    let matched: Vec<&SidecarStatus> = sidecars
        .iter()
        .filter(|s| wanted_state.is_none_or(|w| state_of(s) == w))
        .filter(|s| {
            query
                .namespace
                .as_deref()
                .is_none_or(|ns| s.namespace == ns)
        })
        .filter(|s| needle.as_deref().is_none_or(|n| matches_text(s, n)))
        .collect();
    let offset = query.offset.unwrap_or(0);
    let page: Vec<&SidecarStatus> = matched
        .iter()
        .skip(offset)
        .take(query.limit.unwrap_or(usize::MAX))
        .copied()
        .collect();
    // A page (the dashboard) takes the shared, briefly cached expiry; the whole list (meshctl)
    // reads the store now.
    let expiry = if page.is_empty() {
        Arc::default()
    } else if query.limit.is_some() {
        live.expiry(page.iter().map(|s| s.identity.as_str())).await
    } else {
        Arc::new(expiry_or_empty(&state).await)
    };
    let list = page.iter().map(|s| sidecar_view(s, &expiry)).collect();
    // This list is this replica's; say how many more the other replicas hold.
    let elsewhere = match state.store.backend() {
        crate::store::Backend::Sqlite => 0,
        _ => {
            let alive_since =
                crate::replicas::alive_since(time::OffsetDateTime::now_utc().unix_timestamp());
            state
                .store
                .connected_elsewhere(state.xds.replica(), alive_since)
                .await?
        }
    };
    Ok(Json(api::SidecarList {
        sidecars: list,
        elsewhere,
        total,
        matched: matched.len(),
        offset,
        limit: query.limit,
        counts,
    }))
}

/// Whether `needle` (lower case) is in the sidecar's id, identity, namespace, service or
/// workload.
fn matches_text(s: &SidecarStatus, needle: &str) -> bool {
    [&s.id, &s.identity, &s.namespace, &s.service, &s.workload]
        .iter()
        .any(|field| field.to_lowercase().contains(needle))
}

/// `GET /api/v1/sidecars/{id}`.
pub(super) async fn one(
    State(state): State<AdminState>,
    axum::Extension(live): axum::Extension<Live>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Sidecar>> {
    let sidecar = state
        .xds
        .sidecars()
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| not_connected(&id))?;
    let expiry = live
        .expiry(std::iter::once(sidecar.identity.as_str()))
        .await;
    Ok(Json(sidecar_view(&sidecar, &expiry)))
}

fn not_connected(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no connected sidecar {id:?}"),
    )
}

/// [`newest_expiry_by_identity`], or nothing (logged) when the store does not answer.
pub(super) async fn expiry_or_empty(state: &AdminState) -> HashMap<String, HeldCert> {
    match newest_expiry_by_identity(state).await {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!(error = %e, "reading certificates for the sidecar list");
            HashMap::new()
        }
    }
}

async fn newest_expiry_by_identity(
    state: &AdminState,
) -> Result<HashMap<String, HeldCert>, crate::store::StoreError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut newest: HashMap<String, HeldCert> = HashMap::new();
    for cert in state.store.list_certificates(Some(now), None).await? {
        if cert.superseded_at.is_some() {
            continue;
        }
        let held = HeldCert {
            serial_hex: cert.serial_hex,
            not_after: cert.not_after,
        };
        match newest.get_mut(&cert.identity) {
            Some(n) if n.not_after >= held.not_after => {}
            Some(n) => *n = held,
            None => {
                newest.insert(cert.identity, held);
            }
        }
    }
    Ok(newest)
}

/// `GET /api/v1/sidecars/{id}/config`: the resources meshd holds for the sidecar's scope (what
/// it runs once SYNCED), by type URL, each `{name, version, body}` with the body as JSON (see
/// [`super::debug_json`]); and `types`, the sidecar's sync state per type.
pub(super) async fn config(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::SidecarConfig>> {
    let snapshot = state.xds.config_of(&id).ok_or_else(|| not_connected(&id))?;
    let types = state
        .xds
        .sidecars()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.types)
        .unwrap_or_default();
    let mut resources = BTreeMap::new();
    for ty in mesh_proto::ResourceType::ALL {
        let list = snapshot
            .resources(ty)
            .map(|r| {
                let body = match &r.body {
                    // The variant is the type, already the key: its message alone.
                    Some(body) => body_json(body),
                    None => Value::Null,
                };
                api::ConfigResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    body,
                }
            })
            .collect();
        resources.insert(ty.type_url().to_string(), list);
    }
    Ok(Json(api::SidecarConfig {
        id,
        resources,
        types,
    }))
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
