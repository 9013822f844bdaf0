//! The first credentials a sidecar reads: a join token file, or a Kubernetes ServiceAccount
//! token, each with the identity it names (claimed, not proven: meshd proves it).

use anyhow::{Context, bail};
use mesh_ca::SpiffeId;

/// The identity a Kubernetes ServiceAccount token (a JWT) is for, from its claims: the
/// `kubernetes.io` claim's namespace and service account, or a `sub` of
/// `system:serviceaccount:<ns>:<sa>`. Unverified here: meshd verifies the token (TokenReview)
/// and checks the certificate request against what Kubernetes says.
pub fn k8s_token_identity(
    path: &std::path::Path,
    trust_domain: &mesh_ca::TrustDomain,
) -> anyhow::Result<(String, SpiffeId)> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --k8s-token-file {}", path.display()))?;
    let token = text.trim().to_string();
    let what = || format!("--k8s-token-file {}", path.display());
    let payload = token
        .split('.')
        .nth(1)
        .filter(|_| token.split('.').count() == 3)
        .with_context(|| format!("{}: not a JWT (header.payload.signature)", what()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .with_context(|| format!("{}: the payload is not base64url", what()))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: the payload is not JSON", what()))?;
    let k8s = &claims["kubernetes.io"];
    let (ns, sa) = match (
        k8s["namespace"].as_str(),
        k8s["serviceaccount"]["name"].as_str(),
    ) {
        (Some(ns), Some(sa)) => (ns.to_string(), sa.to_string()),
        _ => {
            let sub = claims["sub"].as_str().unwrap_or_default();
            match mesh_ca::spiffe::service_account_of(sub) {
                Some((ns, sa)) => (ns.to_string(), sa.to_string()),
                None => bail!(
                    "{}: not a ServiceAccount token (no kubernetes.io claim, sub {sub:?})",
                    what()
                ),
            }
        }
    };
    let id = SpiffeId::new(trust_domain.clone(), &ns, &sa)
        .with_context(|| format!("{}: service account {ns}/{sa}", what()))?;
    Ok((token, id))
}

/// The identity named by a join token file (`--join-token-file`).
pub fn token_identity(path: &std::path::Path) -> anyhow::Result<(String, SpiffeId)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --join-token-file {}", path.display()))?;
    let (_, identity) = mesh_ca::join_token::parse(&text)
        .with_context(|| format!("--join-token-file {}", path.display()))?;
    Ok((text.trim().to_string(), identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: &serde_json::Value) -> String {
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#.into()),
            b64(claims.to_string())
        )
    }

    fn identity_of(token: &str) -> anyhow::Result<SpiffeId> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{token}\n"))?;
        k8s_token_identity(&path, &"cluster.local".parse()?).map(|(_, id)| id)
    }

    #[test]
    fn a_serviceaccount_token_names_its_identity_and_anything_else_is_refused_clearly() {
        let claims = serde_json::json!({
            "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "reviews"}}
        });
        assert_eq!(
            identity_of(&jwt(&claims)).unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
        let sub = serde_json::json!({"sub": "system:serviceaccount:shop:cart"});
        assert_eq!(
            identity_of(&jwt(&sub)).unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        for (token, want) in [
            ("not-a-jwt".to_string(), "not a JWT"),
            ("a.b!c.d".to_string(), "not base64url"),
            ("a.bm90IGpzb24.d".to_string(), "not JSON"),
            (
                jwt(&serde_json::json!({"sub": "system:node:worker-1"})),
                "not a ServiceAccount token",
            ),
            (
                jwt(&serde_json::json!({"sub": "system:serviceaccount:Bad NS:x"})),
                "service account Bad NS/x",
            ),
        ] {
            let e = format!("{:#}", identity_of(&token).unwrap_err());
            assert!(
                e.contains(want) && e.contains("--k8s-token-file"),
                "{token}: {e}"
            );
        }
    }
}
