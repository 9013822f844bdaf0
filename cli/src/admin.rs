//! The admin API client: bearer token, JSON, and errors turned into one line with an exit code.

use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use std::path::Path;

pub struct Client {
    base: String,
    token: String,
    /// Where the token came from, for the message when meshd refuses it.
    token_path: std::path::PathBuf,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token_file: Option<&Path>) -> Result<Self, Failure> {
        let path = token_file.unwrap_or(Path::new("meshd-data/admin-token"));
        let token = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                EXIT_USAGE,
                format!(
                    "cannot read the admin token from {}: {e}; pass --token-file or set MESHCTL_TOKEN_FILE",
                    path.display()
                ),
            )
        })?;
        Ok(Self {
            base: server.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            token_path: path.to_path_buf(),
            http: reqwest::Client::new(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, Failure> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| {
            Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "cannot reach meshd at {}: {}; is it running? (--server / MESHCTL_SERVER)",
                    self.base,
                    mesh_client::root_cause(&e)
                ),
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let message = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status.as_u16() == 401 {
            // meshd's own message tells an HTTP client which header to send; an operator needs
            // to know which token file was wrong.
            let reason = message.split(':').next().unwrap_or("refused");
            return Err(Failure::new(
                EXIT_FAILURE,
                format!(
                    "meshd refused the admin token from {} ({reason}); the token is in <data-dir>/admin-token on meshd's machine (--token-file / MESHCTL_TOKEN_FILE)",
                    self.token_path.display()
                ),
            ));
        }
        let code = match status.as_u16() {
            404 => EXIT_UNREACHABLE,
            400 | 409 | 422 => EXIT_FAILURE,
            401 | 403 => EXIT_FAILURE,
            _ => EXIT_FAILURE,
        };
        Err(Failure::new(code, message))
    }
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
pub fn without_os_error(text: &str) -> String {
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}
