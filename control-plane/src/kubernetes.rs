//! Kubernetes ServiceAccount tokens as a first credential: meshd asks the API server who the
//! token belongs to (a TokenReview, for meshd's audience) and grants the identity
//! `spiffe://<td>/ns/<namespace>/sa/<service account>` of the answer, never anything the token
//! or the request claims by itself.

use crate::config::KubernetesConfig;
use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use std::time::Duration;

/// How long a TokenReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks tokens with the API server. Cheap to clone.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server said no: the caller's fault.
    #[error("Kubernetes refused the token: {0}")]
    Refused(String),
    /// The API server could not be asked.
    #[error("the Kubernetes API server did not answer the TokenReview: {0}")]
    Unavailable(String),
}

impl TokenReviewer {
    pub fn new(config: &KubernetesConfig) -> anyhow::Result<Self> {
        let mut kube_config = match &config.api_server {
            Some(url) => kube::Config::new(
                url.parse()
                    .with_context(|| format!("--k8s-api-server {url:?}"))?,
            ),
            None => kube::Config::incluster()
                .context("reading the in-cluster Kubernetes configuration")?,
        };
        if let Some(path) = &config.token_file {
            kube_config.auth_info.token_file = Some(path.display().to_string());
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading --k8s-ca-file {}", path.display()))?;
            let roots = mesh_ca::cert::certs_from_pem(&pem)
                .with_context(|| format!("--k8s-ca-file {}", path.display()))?;
            kube_config.root_cert = Some(roots);
        }
        kube_config.read_timeout = Some(REVIEW_TIMEOUT);
        let client =
            kube::Client::try_from(kube_config).context("building the Kubernetes API client")?;
        Ok(Self {
            client,
            audience: config.audience.clone(),
        })
    }

    /// The (namespace, service account) a token belongs to, as the API server says.
    pub async fn review(&self, token: &str) -> Result<(String, String), ReviewError> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = tokio::time::timeout(
            REVIEW_TIMEOUT,
            api.create(&kube::api::PostParams::default(), &request),
        )
        .await
        .map_err(|_| ReviewError::Unavailable(format!("no answer within {REVIEW_TIMEOUT:?}")))?
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = answer
            .status
            .ok_or_else(|| ReviewError::Unavailable("the TokenReview has no status".into()))?;
        if status.authenticated != Some(true) {
            return Err(ReviewError::Refused(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if let Some(audiences) = &status.audiences
            && !audiences.contains(&self.audience)
        {
            return Err(ReviewError::Refused(format!(
                "the token is for {audiences:?}, not for {:?}",
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        match mesh_ca::spiffe::service_account_of(&username) {
            Some((ns, sa)) => Ok((ns.to_string(), sa.to_string())),
            None => Err(ReviewError::Refused(format!(
                "{username:?} is not a ServiceAccount"
            ))),
        }
    }
}
