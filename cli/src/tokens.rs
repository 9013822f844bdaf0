//! `meshctl token create|list|revoke`: join tokens, how workloads outside Kubernetes get their
//! first certificate. meshd stores only a hash; the token is shown once, at creation.

use crate::Failure;
use crate::admin::{Client, segment};
use crate::output::{self, Format, Table, ago, expires, text, utc};
use mesh_admin_api::{CreateToken, JoinToken, NewJoinToken, TokenList};
use serde_json::json;

pub async fn create(
    identity: &str,
    ttl: &str,
    uses: u32,
    format: Format,
    api: Client,
) -> Result<(), Failure> {
    let body = CreateToken {
        identity: identity.into(),
        ttl: Some(ttl.into()),
        uses: Some(uses),
    };
    let created: NewJoinToken = api.submit("/api/v1/tokens", &body).await?;
    output::emit(format, &created, |created| {
        // The token alone on stdout, so that `TOKEN=$(meshctl token create ...)` works.
        say!("{}", created.token);
        note!(
            "token {} for {identity} ({uses} use(s), expires {}); it is shown only once",
            text(&created.id),
            expires(&created.expires_at),
        );
    })
}

/// `active`, `expired`, `used up` or `revoked`.
fn state(token: &JoinToken) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at <= output::now() {
        "expired"
    } else if token.uses_remaining == 0 {
        "used up"
    } else {
        "active"
    }
}

pub async fn list(format: Format, api: Client) -> Result<(), Failure> {
    let tokens: TokenList = api.fetch("/api/v1/tokens").await?;
    output::emit(format, &tokens, |t| {
        let list = &t.tokens;
        if list.is_empty() {
            note!("no join tokens; create one with `meshctl token create --identity ...`");
            return;
        }
        let mut table = Table::new(&[
            "ID",
            "IDENTITY",
            "STATE",
            "USES LEFT",
            "EXPIRES",
            "CREATED",
            "LAST USED",
        ]);
        for token in list {
            table.row(vec![
                text(&token.id),
                text(&token.identity),
                state(token).into(),
                text(&token.uses_remaining),
                if state(token) == "active" {
                    expires(&token.expires_at)
                } else {
                    utc(&token.expires_at)
                },
                format!("{} by {}", ago(&token.created_at), text(&token.created_by)),
                ago(&token.last_used_at),
            ]);
        }
        table.print();
    })
}

pub async fn revoke(id: &str, format: Format, api: Client) -> Result<(), Failure> {
    api.delete(&format!("/api/v1/tokens/{}", segment(id)))
        .await
        .map_err(|f| f.hint_if_not_found(|| "list them with `meshctl token list`".into()))?;
    let value = json!({ "id": id, "revoked": true });
    output::emit(format, &value, |_| say!("token {id} revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: i64, uses_remaining: u32, revoked_at: Option<i64>) -> JoinToken {
        JoinToken {
            id: "t".into(),
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            expires_at,
            uses_remaining,
            created_by: "admin".into(),
            created_at: 1,
            revoked_at,
            last_used_at: None,
        }
    }

    #[test]
    fn token_states() {
        let future = output::now() + 600;
        assert_eq!(state(&token(future, 1, None)), "active");
        assert_eq!(state(&token(future, 0, None)), "used up");
        assert_eq!(state(&token(1, 1, None)), "expired");
        assert_eq!(state(&token(future, 1, Some(5))), "revoked");
    }
}
