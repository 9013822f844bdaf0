//! The admin HTTP API (axum): the one API that meshctl and the dashboard use. Everything but
//! `/healthz` and the dashboard's static files needs a bearer token; refusals are audited.
//! Errors are JSON `{"error": "..."}` with a status that fits (400, 401, 403, 404, 409, 413,
//! 415, 503); a message about documents has one problem per line. Mesh documents: see
//! [`documents`]; connected sidecars and their config: [`sidecars`]; the CA at a glance
//! (`GET /api/v1/ca`): [`ca`]; the live feed and the aggregates the dashboard draws:
//! [`events`], [`stats`].
//!
//! Two tokens, two roles ([`Role`]): the admin token (`<data-dir>/admin-token`) may do
//! everything; the viewer token (`<data-dir>/viewer-token`) may read (`GET`, `HEAD`) every
//! endpoint and nothing else: any other method is 403 and audited as denied. The role is
//! enforced here, in the authentication middleware, so the dashboard's read-only view is not
//! the only thing that stands between a viewer and a change.

use crate::ca::Authority;
use crate::metrics::Metrics;
use crate::source::ApplyError;
use crate::store::{AuditEntry, AuditOutcome, Store, StoreError};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mesh_admin_api as api;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

mod ca;
mod debug_json;
pub mod documents;
pub mod events;
mod reissue;
mod sidecars;
pub mod stats;
mod tls;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub authority: Authority,
    pub metrics: Metrics,
    pub documents: crate::source::Documents,
    /// The fleet, read-only.
    pub xds: crate::xds::FleetView,
    /// The re-issue directives in force (orders put new ones in force).
    pub directives: crate::reissue::Directives,
    pub rotations: crate::rotation::Rotations,
    /// The admin bearer token (from `<data-dir>/admin-token`).
    pub admin_token: Arc<str>,
    /// The read-only bearer token (from `<data-dir>/viewer-token`).
    pub viewer_token: Arc<str>,
    /// Becomes `true` at shutdown: ends the live event streams, which would otherwise hold
    /// the graceful shutdown open until its grace period ran out.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// An API error: a status and a one-line message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = if e.is_not_found() {
            StatusCode::NOT_FOUND
        } else if e.is_conflict() {
            StatusCode::CONFLICT
        } else {
            tracing::error!(error = %e, "store error in the admin API");
            StatusCode::SERVICE_UNAVAILABLE
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::identity::JoinTokenError> for ApiError {
    fn from(e: crate::identity::JoinTokenError) -> Self {
        match e {
            crate::identity::JoinTokenError::Store(e) => e.into(),
            e @ crate::identity::JoinTokenError::Generate(_) => {
                tracing::error!(error = %e, "in the admin API");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        let status = match &e {
            ApplyError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApplyError::NotFound(_) => StatusCode::NOT_FOUND,
            ApplyError::Conflict(_) => StatusCode::CONFLICT,
            ApplyError::Store { .. } => {
                tracing::error!(error = %e, "store error in the admin API");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Self::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The largest request body the admin API reads (a larger one gets 413); meshctl checks it
/// before sending.
pub const MAX_BODY: usize = mesh_model::text::MAX_BODY;

/// The router, with authentication on everything but `/healthz` and the dashboard's static
/// files (which hold no data: the page asks for a token and sends it with every API call).
pub fn router(state: AdminState) -> Router {
    let live = events::Live::start(state.clone());
    let api = Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/stats", get(stats::get))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/ca", get(ca::status))
        .route("/api/v1/ca/bundle", get(ca_bundle))
        .route(
            "/api/v1/ca/rotation",
            post(ca::rotate).get(ca::rotation_status),
        )
        .route("/api/v1/ca/rotation/{command}", post(ca::rotation_command))
        .route("/api/v1/certificates", get(list_certificates))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/reissue", post(reissue::create).get(reissue::list))
        .route("/api/v1/tls", get(tls::inventory))
        .route("/api/v1/sidecars", get(sidecars::list))
        .route("/api/v1/sidecars/{id}", get(sidecars::one))
        .route("/api/v1/sidecars/{id}/config", get(sidecars::config))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/documents",
            post(documents::apply).get(documents::list),
        )
        .route(
            "/api/v1/documents/{kind}/{namespace}/{name}",
            get(documents::get).delete(documents::delete),
        )
        .route(
            "/api/v1/documents/{kind}/{namespace}/{name}/history",
            get(documents::history),
        )
        .route(
            "/api/v1/documents/{kind}/{namespace}/{name}/rollback",
            post(documents::rollback),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::Extension(live))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::dashboard::router())
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// Who made an authenticated call (recorded in the audit log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// What a token may do.
pub use mesh_admin_api::Role;

/// The role of a presented token, if it is one of ours. Both comparisons always run, in
/// constant time, so the answer's timing tells nothing of either token.
fn role_of(state: &AdminState, presented: &str) -> Option<Role> {
    let admin = token_eq(presented, &state.admin_token);
    let viewer = token_eq(presented, &state.viewer_token);
    if admin {
        Some(Role::Admin)
    } else if viewer {
        Some(Role::Viewer)
    } else {
        None
    }
}

/// An empty token (an empty token file) never matches.
fn token_eq(presented: &str, ours: &str) -> bool {
    !ours.is_empty() && constant_time_eq(presented.as_bytes(), ours.as_bytes())
}

async fn authenticate(
    State(state): State<AdminState>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let role = presented.and_then(|t| role_of(&state, t));
    let action = format!("admin.{}", request.method().as_str().to_lowercase());
    let target = request.uri().path().to_string();
    let audit_denied = |actor: &str, detail: &str| AuditEntry {
        actor: actor.into(),
        action: action.clone(),
        target: target.clone(),
        outcome: AuditOutcome::Denied,
        detail: detail.into(),
    };
    let Some(role) = role else {
        let reason = if presented.is_some() {
            "wrong bearer token"
        } else {
            "no bearer token"
        };
        if let Err(e) = state.store.audit(&audit_denied("anonymous", reason)).await {
            tracing::error!(error = %e, "writing the audit log");
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("{reason}: send `Authorization: Bearer <token>` (the admin token is in <data-dir>/admin-token)"),
        )
        .into_response();
    };
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if role == Role::Viewer && !read {
        let detail = "the viewer token is read-only";
        if let Err(e) = state.store.audit(&audit_denied("viewer", detail)).await {
            tracing::error!(error = %e, "writing the audit log");
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{detail}: {} {target} needs the admin token",
                request.method()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Caller {
        name: role.as_str().into(),
        role,
    });
    next.run(request).await
}

/// `GET /api/v1/whoami`: the caller's role, so that a client (the dashboard) shows only what
/// it may do. The API enforces the role either way.
async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> Json<api::WhoAmI> {
    Json(api::WhoAmI {
        name: caller.name,
        role: caller.role,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(state): State<AdminState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(api::Health {
                status: "ok".into(),
            }),
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable: {e}"),
        )
        .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn create_token(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<api::CreateToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<api::NewJoinToken>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let identity: mesh_ca::SpiffeId = req
        .identity
        .parse()
        .map_err(|e| ApiError::bad_request(format!("identity: {e}")))?;
    let trust_domain = state.authority.signer().trust_domain().clone();
    if identity.trust_domain() != &trust_domain {
        return Err(ApiError::bad_request(format!(
            "identity: trust domain {} is not this mesh's ({trust_domain})",
            identity.trust_domain()
        )));
    }
    let ttl = match req.ttl.as_deref() {
        None => Duration::from_secs(600),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| ApiError::bad_request(format!("ttl {text:?}: {e}")))?,
    };
    if ttl.is_zero() || ttl > Duration::from_secs(30 * 24 * 3600) {
        return Err(ApiError::bad_request("ttl: must be between 1s and 30 days"));
    }
    let uses = req.uses.unwrap_or(1);
    if !(1..=10_000).contains(&uses) {
        return Err(ApiError::bad_request("uses: must be 1..=10000"));
    }
    let token =
        crate::identity::create_join_token(&state.store, &identity, ttl, uses, &caller.name)
            .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

async fn list_tokens(State(state): State<AdminState>) -> ApiResult<Json<api::TokenList>> {
    let tokens = state
        .store
        .list_join_tokens()
        .await?
        .into_iter()
        .map(|t| api::JoinToken {
            id: t.id,
            identity: t.identity,
            expires_at: t.expires_at,
            uses_remaining: t.uses_remaining,
            created_by: t.created_by,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            last_used_at: t.last_used_at,
        })
        .collect();
    Ok(Json(api::TokenList { tokens }))
}

async fn revoke_token(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.revoke_join_token(&id).await?;
    state
        .store
        .audit(&AuditEntry {
            actor: caller.name,
            action: "join_token.revoke".into(),
            target: id,
            outcome: AuditOutcome::Ok,
            detail: String::new(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ca_bundle(State(state): State<AdminState>) -> Json<api::Bundle> {
    let bundle = state.authority.bundle();
    let roots = bundle
        .roots()
        .iter()
        .map(|r| api::BundleRoot {
            fingerprint: r.fingerprint.clone(),
            subject: r.subject.clone(),
            not_after: r.not_after,
        })
        .collect();
    Json(api::Bundle {
        pem: bundle.to_pem(),
        roots,
    })
}

#[derive(Debug, Deserialize)]
struct CertQuery {
    identity: Option<String>,
    /// Only certificates valid at this unix time.
    valid_at: Option<i64>,
    /// Only certificates valid now that expire within this long (`10m`, or seconds); for
    /// `meshctl certs --expiring 10m`.
    expiring_within: Option<String>,
    /// Only certificates in use now (`state` "in use").
    #[serde(default)]
    live: bool,
}

/// What became of an issued certificate, as `state` in `/api/v1/certificates`.
fn certificate_state(
    cert: &crate::store::IssuedCert,
    now: i64,
    trusted: &std::collections::HashSet<String>,
) -> api::CertState {
    if cert.not_after < now {
        api::CertState::Expired
    } else if cert.superseded_at.is_some() {
        api::CertState::Superseded
    } else if !trusted.contains(&cert.issuer_fingerprint.to_ascii_lowercase()) {
        api::CertState::Untrusted
    } else {
        api::CertState::InUse
    }
}

async fn list_certificates(
    State(state): State<AdminState>,
    Query(q): Query<CertQuery>,
) -> ApiResult<Json<api::CertificateList>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (valid_at, until) = match q.expiring_within.as_deref() {
        None => (q.valid_at.or(q.live.then_some(now)), None),
        Some(within) => {
            let within = parse_duration(within)
                .map_err(|e| ApiError::bad_request(format!("expiring_within {within:?}: {e}")))?;
            let until = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
            (Some(q.valid_at.unwrap_or(now)), Some(until))
        }
    };
    let trusted = state.authority.trusted_issuers();
    let certificates = state
        .store
        .list_certificates(valid_at, q.identity.as_deref())
        .await?
        .into_iter()
        .filter(|c| until.is_none_or(|until| c.not_after <= until))
        .map(|c| (certificate_state(&c, now, &trusted), c))
        .filter(|(s, _)| !q.live || *s == api::CertState::InUse)
        .map(|(state, c)| api::Certificate {
            serial_hex: c.serial_hex,
            identity: c.identity,
            issuer_fingerprint: c.issuer_fingerprint,
            not_before: c.not_before,
            not_after: c.not_after,
            sidecar: c.sidecar,
            superseded_at: c.superseded_at,
            state,
        })
        .collect();
    Ok(Json(api::CertificateList { certificates }))
}

/// A duration as humantime (`10m`, `1h 30m`) or plain seconds (`600`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
    since_id: Option<i64>,
}

async fn list_audit(
    State(state): State<AdminState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<api::AuditList>> {
    let entries = state
        .store
        .list_audit(q.limit.unwrap_or(100).min(1000), q.since_id)
        .await?
        .into_iter()
        .map(audit_record)
        .collect();
    Ok(Json(api::AuditList { entries }))
}

/// A stored audit entry as the API shows it.
pub fn audit_record(r: crate::store::AuditRecord) -> api::AuditRecord {
    api::AuditRecord {
        id: r.id,
        at: r.at,
        actor: r.actor,
        action: r.action,
        target: r.target,
        outcome: match r.outcome {
            AuditOutcome::Ok => api::AuditOutcome::Ok,
            AuditOutcome::Denied => api::AuditOutcome::Denied,
            AuditOutcome::Error => api::AuditOutcome::Error,
        },
        detail: r.detail,
    }
}
