//! Join tokens: how a workload outside Kubernetes proves its identity the first time.
//!
//! A token reads `mjt_<id>_<secret>_<identity>`: `id` is public (listing, revoking), `secret`
//! is 256 random bits, and `identity` (base64url) tells the bearer which SPIFFE ID to put in its
//! CSR. The control plane stores only the SHA-256 of the whole token and trusts only its stored
//! identity; the embedded one is a hint for the client.

use crate::spiffe::SpiffeId;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const PREFIX: &str = "mjt_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("join token is not in the mjt_<id>_<secret>_<identity> form")]
    Format,
    #[error("join token names an invalid identity: {0}")]
    Identity(String),
    #[error("the system random number generator failed")]
    Random,
}

/// A newly made token. `token` is the secret: show it once, store only `hash`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub hash: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("token", &"[secret]")
            .finish()
    }
}

/// Makes a token for `identity`.
pub fn generate(identity: &SpiffeId) -> Result<NewToken, JoinTokenError> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| JoinTokenError::Random)?;
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| JoinTokenError::Random)?;
    let id = crate::hex(&id);
    let token = format!(
        "{PREFIX}{id}_{}_{}",
        crate::hex(&secret),
        URL_SAFE_NO_PAD.encode(identity.to_string())
    );
    Ok(NewToken {
        hash: hash(&token),
        id,
        token,
    })
}

/// The stored form: lowercase hex SHA-256 of the token (surrounding whitespace ignored).
pub fn hash(token: &str) -> String {
    crate::hex(&crate::sha256(token.trim().as_bytes()))
}

/// The public id and the identity a token says it is for (unverified: a hint for the client).
pub fn parse(token: &str) -> Result<(String, SpiffeId), JoinTokenError> {
    let rest = token
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(JoinTokenError::Format)?;
    let mut parts = rest.splitn(3, '_');
    let (Some(id), Some(secret), Some(identity)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(JoinTokenError::Format);
    };
    if id.len() != 12 || secret.len() != 64 {
        return Err(JoinTokenError::Format);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(identity)
        .map_err(|_| JoinTokenError::Format)?;
    let text = String::from_utf8(bytes).map_err(|_| JoinTokenError::Format)?;
    let identity = text
        .parse()
        .map_err(|e: crate::SpiffeIdError| JoinTokenError::Identity(e.to_string()))?;
    Ok((id.to_string(), identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_identity_and_hashes_stably() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/app".parse().unwrap();
        let t = generate(&id).unwrap();
        assert!(t.token.starts_with("mjt_"));
        assert_eq!(parse(&t.token).unwrap(), (t.id.clone(), id.clone()));
        assert_eq!(hash(&format!(" {}\n", t.token)), t.hash);
        assert_ne!(generate(&id).unwrap().hash, t.hash, "random");
        assert!(
            !format!("{t:?}").contains(&t.token[20..40]),
            "Debug hides the secret"
        );
        assert_eq!(parse("hello"), Err(JoinTokenError::Format));
        assert_eq!(parse(&t.token[..30]), Err(JoinTokenError::Format));
    }
}
