//! `GET /api/v1/ca`: the CA at a glance, for `meshctl ca status`, `meshctl check` and the
//! dashboard: the trust domain, the signing certificate, every root of the trust bundle with its
//! validity, the leaf TTL policy and the rotation phase. Never a key.

use super::{AdminState, ApiError, ApiResult, Caller};
use crate::rotation::{Command, RotateError, StartRequest};
use crate::store::{AuditEntry, AuditOutcome};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use mesh_admin_api as api;
use mesh_ca::CertInfo;
use mesh_ca::rotation::Mode;
use std::time::Duration;

/// `GET /api/v1/ca`.
///
/// `rotation` is the latest CA rotation as `GET /api/v1/ca/rotation` shows it.
pub(super) async fn status(State(state): State<AdminState>) -> Json<api::CaStatus> {
    let signer = state.authority.signer();
    let bundle = state.authority.bundle();
    let signing = signer.signing_cert();
    let roots = bundle
        .roots()
        .iter()
        .map(|r| api::CaRoot {
            cert: ca_cert(r),
            // The root the signing certificate chains to (the signing certificate itself when
            // the CA is a root).
            active: r.fingerprint == signer.root().fingerprint,
        })
        .collect();
    let rotation = state.rotations.status().await;
    let policy = signer.policy();
    Json(api::CaStatus {
        trust_domain: signer.trust_domain().to_string(),
        signing: ca_cert(signing),
        roots,
        leaf_ttl_seconds: policy.default_ttl.as_secs(),
        max_leaf_ttl_seconds: policy.max_ttl.as_secs(),
        rotation_phase: rotation.phase.clone(),
        rotation,
    })
}

fn ca_cert(c: &CertInfo) -> api::CaCert {
    api::CaCert {
        fingerprint: c.fingerprint.clone(),
        serial_hex: c.serial_hex.clone(),
        subject: c.subject.clone(),
        issuer: c.issuer.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        self_signed: c.self_signed,
    }
}

pub(super) async fn rotate(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<api::RotateRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<api::RotationStatus>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let window = match req.window.as_deref() {
        None => Duration::from_secs(60),
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::bad_request(format!("window {w:?}: {e}")))?,
    };
    let import = match (req.import_cert_pem, req.import_key_pem) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "import_cert_pem and import_key_pem go together",
            ));
        }
    };
    let request = StartRequest {
        mode: if req.manual {
            Mode::Manual
        } else {
            Mode::Automatic
        },
        window,
        import,
    };
    let result = state.rotations.begin(request, &caller.name).await;
    audit(&state, &caller, "start", &result).await;
    Ok((StatusCode::CREATED, Json(result.map_err(rotate_error)?)))
}

/// `GET /api/v1/ca/rotation`: the latest rotation, its phase and progress.
pub(super) async fn rotation_status(State(state): State<AdminState>) -> Json<api::RotationStatus> {
    Json(state.rotations.status().await)
}

/// `POST /api/v1/ca/rotation/{pause|resume|rollback|next}`.
pub(super) async fn rotation_command(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(command): Path<String>,
) -> ApiResult<Json<api::RotationStatus>> {
    let Some(cmd) = Command::parse(&command) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rotation command {command:?}: pause, resume, rollback or next"),
        ));
    };
    let result = state.rotations.command(cmd).await;
    audit(&state, &caller, &command, &result).await;
    Ok(Json(result.map_err(rotate_error)?))
}

fn rotate_error(e: RotateError) -> ApiError {
    let status = match &e {
        RotateError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RotateError::Busy(_) | RotateError::Refused(_) | RotateError::Stale => StatusCode::CONFLICT,
        RotateError::NoRotation => StatusCode::NOT_FOUND,
        RotateError::Internal(_) => {
            tracing::error!(error = %e, "CA rotation");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    ApiError::new(status, e.to_string())
}

async fn audit(
    state: &AdminState,
    caller: &Caller,
    what: &str,
    result: &Result<api::RotationStatus, RotateError>,
) {
    let (outcome, detail) = match result {
        Ok(v) => (AuditOutcome::Ok, format!("{what}: phase {}", v.phase)),
        Err(e) => (AuditOutcome::Denied, format!("{what}: {e}")),
    };
    let entry = AuditEntry {
        actor: caller.name.clone(),
        action: "ca.rotation".into(),
        target: "ca".into(),
        outcome,
        detail,
    };
    if let Err(e) = state.store.audit(&entry).await {
        tracing::error!(error = %e, "writing the audit log");
    }
}
