//! `GET /api/v1/ca`: the CA at a glance, for `meshctl ca status`, `meshctl check` and the
//! dashboard: the trust domain, the signing certificate, every root of the trust bundle with its
//! validity, the leaf TTL policy and the rotation phase. Never a key.

use super::AdminState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mesh_ca::CertInfo;
use serde_json::{Value, json};

/// `GET /api/v1/ca`.
///
/// `rotation_phase` comes from the store; should the store not answer, it is null and
/// `store_error` says why (the rest is in memory and still worth showing).
pub(super) async fn status(State(state): State<AdminState>) -> Response {
    let signer = state.authority.signer();
    let bundle = state.authority.bundle();
    let signing = signer.signing_cert();
    let roots: Vec<Value> = bundle
        .roots()
        .iter()
        .map(|r| {
            let mut v = cert_json(r);
            // The root the signing certificate chains to (the signing certificate itself when
            // the CA is a root).
            v["active"] = json!(r.fingerprint == signer.root().fingerprint);
            v
        })
        .collect();
    let (phase, store_error) = match state.store.load_ca_state().await {
        Ok(Some(record)) => (Some(record.rotation_phase), None),
        Ok(None) => (None, Some("no CA state stored".to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "reading the CA state for the admin API");
            (None, Some(e.to_string()))
        }
    };
    let policy = signer.policy();
    let mut body = json!({
        "trust_domain": signer.trust_domain().to_string(),
        "signing": cert_json(signing),
        "roots": roots,
        "leaf_ttl_seconds": policy.default_ttl.as_secs(),
        "max_leaf_ttl_seconds": policy.max_ttl.as_secs(),
        "rotation_phase": phase,
    });
    if let Some(e) = store_error {
        body["store_error"] = json!(e);
    }
    Json(body).into_response()
}

fn cert_json(c: &CertInfo) -> Value {
    json!({
        "fingerprint": c.fingerprint,
        "serial_hex": c.serial_hex,
        "subject": c.subject,
        "issuer": c.issuer,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "self_signed": c.self_signed,
    })
}
