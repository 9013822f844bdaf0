//! The admin API client: bearer token, JSON, and errors turned into one line with an exit code.

use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use std::path::Path;

/// What an error of meshd itself (HTTP 5xx) adds to its message.
pub const SERVER_ERROR_HINT: &str = "; see meshd's log, or run `meshctl check`";

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

    /// The admin API's address, e.g. `http://127.0.0.1:15000`.
    pub fn base(&self) -> &str {
        &self.base
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

    /// GET without the error handling: (HTTP status, JSON body or null). Fails only when meshd
    /// cannot be reached (`meshctl check` judges the status itself).
    pub async fn probe(&self, path: &str) -> Result<(u16, serde_json::Value), Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "cannot reach meshd at {}: {}; is it running? (--server / MESHCTL_SERVER)",
                self.base,
                mesh_client::root_cause(e)
            ),
        )
    }

    /// GET of a body that is not JSON (a document as YAML); errors as [`Client::get`]'s.
    pub async fn get_text(&self, path: &str) -> Result<String, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return response.text().await.map_err(|e| self.unreachable(&e));
        }
        // The error body is JSON: let the common path word it.
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
            .map(|v| v.to_string())
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, Failure> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, Failure> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        // meshd answers `{"error": "..."}`; anything else (a proxy's page, a plain-text
        // rejection) is shown by its first line, never dumped whole.
        let message = json["error"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                let first = text.lines().map(str::trim).find(|l| !l.is_empty())?;
                (!first.starts_with(['{', '<'])).then(|| format!("HTTP {status}: {first}"))
            })
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
        match status.as_u16() {
            404 if message == "no such endpoint" => Err(Failure::new(
                EXIT_FAILURE,
                format!(
                    "meshd at {} has no such endpoint (is it older than this meshctl?); upgrade meshd",
                    self.base
                ),
            )),
            404 => Err(Failure::not_found(message)),
            500..=599 => Err(Failure::new(
                EXIT_FAILURE,
                format!("{message}{SERVER_ERROR_HINT}"),
            )),
            _ => Err(Failure::new(EXIT_FAILURE, message)),
        }
    }
}

/// One path segment, percent-encoded (sidecar ids hold `/`, `:` and `@`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
pub fn without_os_error(text: &str) -> String {
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(
            segment("spiffe://cluster.local/ns/a@127.0.0.1:5"),
            "spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%40127.0.0.1%3A5"
        );
        assert_eq!(segment("web-1"), "web-1");
    }
}
