//! A stand-in for the Kubernetes API server's TokenReview endpoint. No Kubernetes API server
//! can be installed on the test machines, so this is the one mock of the suite: meshd talks to
//! it with its real Kubernetes client, exactly as it would to `kubernetes.default.svc`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One TokenReview received: meshd's bearer token and the request body.
#[derive(Debug, Clone)]
pub struct Review {
    pub bearer: String,
    pub body: Value,
}

#[derive(Clone)]
struct Shared {
    /// token → (namespace, service account)
    tokens: Arc<HashMap<String, (String, String)>>,
    reviews: Arc<Mutex<Vec<Review>>>,
}

pub struct FakeKubeApi {
    pub url: String,
    reviews: Arc<Mutex<Vec<Review>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    /// Serves TokenReviews on 127.0.0.1:0: a token of `tokens` is authenticated as its
    /// ServiceAccount (for the audiences asked), any other is not.
    pub async fn start(tokens: &[(&str, &str, &str)]) -> anyhow::Result<Self> {
        let shared = Shared {
            tokens: Arc::new(
                tokens
                    .iter()
                    .map(|(t, ns, sa)| (t.to_string(), (ns.to_string(), sa.to_string())))
                    .collect(),
            ),
            reviews: Arc::default(),
        };
        let reviews = shared.reviews.clone();
        let app = axum::Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                axum::routing::post(review),
            )
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, reviews, task })
    }

    /// Every review received so far.
    pub fn reviews(&self) -> Vec<Review> {
        self.reviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn review(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    s.reviews
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Review {
            bearer,
            body: body.clone(),
        });
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let audiences = body["spec"]["audiences"].clone();
    let status = match s.tokens.get(token) {
        Some((ns, sa)) => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
            },
            "audiences": audiences,
        }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    Json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": { "creationTimestamp": null },
        "spec": body["spec"],
        "status": status,
    }))
}

/// A JWT-shaped ServiceAccount token whose claims name `namespace`/`service_account` (the
/// signature is not checked by the sidecar, only by the API server, here the fake's table).
pub fn service_account_jwt(namespace: &str, service_account: &str, nonce: &str) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = json!({ "alg": "RS256", "kid": "test" });
    let claims = json!({
        "aud": ["meshd"],
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": { "name": service_account, "uid": nonce },
        },
    });
    format!("{}.{}.{}", b64(&header), b64(&claims), b64(&json!(nonce)))
}
