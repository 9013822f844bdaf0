//! Forced re-issue (after a key compromise, say): `POST /api/v1/reissue` tells the sidecars of
//! the whole fleet, a namespace or one workload to get a new certificate within a window;
//! `GET /api/v1/reissue` shows each directive's progress.

use super::{AdminState, ApiError, ApiResult, Caller};
use crate::reissue::{Directive, ReissueTarget};
use crate::store::{AuditEntry, AuditOutcome};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use mesh_admin_api as api;
use std::time::Duration;

fn target(req: &api::ReissueRequest) -> ApiResult<ReissueTarget> {
    match (req.all, &req.namespace, &req.workload) {
        (true, None, None) => Ok(ReissueTarget::All),
        (false, Some(ns), None) if !ns.is_empty() => Ok(ReissueTarget::Namespace(ns.clone())),
        (false, None, Some(w)) => match w.split_once('/') {
            Some((ns, svc)) if !ns.is_empty() && !svc.is_empty() => Ok(ReissueTarget::Workload {
                namespace: ns.into(),
                service: svc.into(),
            }),
            _ => Err(ApiError::bad_request(format!(
                "workload {w:?}: expected namespace/service"
            ))),
        },
        _ => Err(ApiError::bad_request(
            "say which certificates: exactly one of all, namespace or workload",
        )),
    }
}

pub async fn create(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<api::ReissueRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<api::ReissueProgress>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let target = target(&req)?;
    let window = match req.window.as_deref() {
        None => Duration::from_secs(60),
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::bad_request(format!("window {w:?}: {e}")))?,
    };
    if window > Duration::from_secs(24 * 3600) {
        return Err(ApiError::bad_request("window: at most 24h"));
    }
    let backdate = state.authority.signer().policy().backdate;
    let reason = req.reason.unwrap_or_else(|| "operator request".into());
    let directive = crate::reissue::order(
        &state.store,
        &state.directives,
        target,
        window,
        backdate,
        &reason,
    )
    .await?;
    state
        .store
        .audit(&AuditEntry {
            actor: caller.name,
            action: "certificate.reissue".into(),
            target: format!("{:?}", directive.target),
            outcome: AuditOutcome::Ok,
            detail: format!(
                "generation {}, window {window:?}: {reason}",
                directive.generation
            ),
        })
        .await?;
    let progress = progress(&state, &directive).await?;
    Ok((StatusCode::CREATED, Json(progress)))
}

pub async fn list(State(state): State<AdminState>) -> ApiResult<Json<api::ReissueList>> {
    let mut directives = Vec::new();
    for d in state.xds.directives() {
        directives.push(progress(&state, &d).await?);
    }
    Ok(Json(api::ReissueList { directives }))
}

/// A directive with the connected sidecars it concerns and how many of them hold a certificate
/// that satisfies it (by identity: a live certificate whose notBefore is recent enough).
async fn progress(state: &AdminState, d: &Directive) -> ApiResult<api::ReissueProgress> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sidecars: Vec<_> = state
        .xds
        .sidecars()
        .into_iter()
        .filter(|s| d.target.matches(&s.namespace, &s.service))
        .collect();
    let mut done = 0;
    let mut stragglers = Vec::new();
    for s in &sidecars {
        let certs = state
            .store
            .list_certificates(Some(now), Some(&s.identity))
            .await?;
        if certs.iter().any(|c| c.not_before >= d.issued_before) {
            done += 1;
        } else if stragglers.len() < 10 {
            stragglers.push(s.id.clone());
        }
    }
    Ok(api::ReissueProgress {
        directive: d.clone(),
        total: sidecars.len(),
        done,
        stragglers,
    })
}
