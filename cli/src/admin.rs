//! The admin API client: bearer token, JSON, and errors turned into one line with an exit code.

use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use mesh_model::text::MAX_BODY;
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

    /// GET of one of the admin API's answers, as its type ([`mesh_admin_api`]).
    pub async fn fetch<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let value = self.get(path).await?;
        self.read(path, value)
    }

    /// POST of a request, its answer as its type.
    pub async fn submit<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Failure> {
        let body = serde_json::to_value(body)
            .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing the request: {e}")))?;
        let value = self.post(path, &body).await?;
        self.read(path, value)
    }

    /// An answer as its type, or a one-line failure naming the endpoint and the field.
    pub fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        value: serde_json::Value,
    ) -> Result<T, Failure> {
        serde_json::from_value(value).map_err(|e| {
            let path = path.split('?').next().unwrap_or(path);
            Failure::new(
                EXIT_FAILURE,
                format!(
                    "meshd at {} answered {path} with JSON this meshctl does not read ({e}); \
                     are meshd and meshctl the same version?",
                    self.base
                ),
            )
        })
    }

    /// POST of a JSON body. A body larger than meshd's admin API accepts
    /// ([`MAX_BODY`](mesh_model::text::MAX_BODY)) is refused here, before anything is
    /// sent: meshd would answer 413 and close the connection while the body is still being
    /// written, which the sender sees as a broken pipe, not as the answer.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Failure> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Failure::new(EXIT_FAILURE, format!("writing the request: {e}")))?;
        if bytes.len() > MAX_BODY {
            return Err(too_large(bytes.len()));
        }
        let size = bytes.len();
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        self.send(request).await.map_err(|f| {
            // Should a meshd with a smaller limit close the connection mid-body, say what
            // happened rather than "cannot reach meshd" (it was reached, and it answered).
            if f.code == EXIT_UNREACHABLE
                && size > SMALL_BODY
                && BROKEN.iter().any(|b| f.message.contains(b))
            {
                Failure::new(
                    EXIT_FAILURE,
                    format!(
                        "meshd at {} closed the connection while a {} request was being sent: \
                         probably larger than it accepts; apply the documents in several smaller \
                         sets",
                        self.base,
                        human_size(size)
                    ),
                )
            } else {
                f
            }
        })
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

    /// A server answered, but not as meshd's admin API does.
    fn not_meshd(&self, url: &str, status: reqwest::StatusCode, text: &str) -> Failure {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| format!(": {}", mesh_model::text::clip(l)))
            .unwrap_or_default();
        Failure::new(
            EXIT_FAILURE,
            format!(
                "the server at {} is not meshd's admin API: {url} answered HTTP {status} without \
                 meshd's JSON{first}; check --server / MESHCTL_SERVER (meshd's --admin-addr)",
                self.base
            ),
        )
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
        let url = response.url().to_string();
        let text = response.text().await.unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            // meshd answers JSON on every API path (or nothing, 204): anything else is
            // another server.
            if text.trim().is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return json.ok_or_else(|| self.not_meshd(&url, status, &text));
        }
        // meshd answers `{"error": "..."}`; anything else (another server's page, a proxy's
        // plain-text rejection) is not meshd speaking, and is shown by its first line, never
        // dumped whole.
        let Some(message) = json
            .and_then(|j| serde_json::from_value::<mesh_admin_api::ErrorBody>(j).ok())
            .map(|e| e.error)
        else {
            return Err(self.not_meshd(&url, status, &text));
        };
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

/// A body this size or smaller is written before meshd can answer it.
const SMALL_BODY: usize = 64 << 10;
/// What the operating system says when the peer closed the connection mid-write.
const BROKEN: [&str; 2] = ["Broken pipe", "Connection reset"];

fn too_large(size: usize) -> Failure {
    Failure::new(
        EXIT_FAILURE,
        format!(
            "the request is {} and meshd accepts at most {} per request: apply the documents in \
             several smaller sets (one -f file or directory at a time)",
            human_size(size),
            human_size(MAX_BODY)
        ),
    )
}

/// `20.0 MiB`, `1 MiB`, `512 KiB`, `300 bytes`.
fn human_size(bytes: usize) -> String {
    let mib = 1usize << 20;
    match bytes {
        b if b >= mib && b % mib == 0 => format!("{} MiB", b / mib),
        b if b >= mib => format!("{:.1} MiB", b as f64 / mib as f64),
        b if b >= 1024 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

/// `--server`: an http or https URL (a bare `host:port` is a usage error with a hint).
pub fn parse_server(text: &str) -> Result<String, String> {
    let hint = || {
        format!(
            "{text:?} is not a URL: give the scheme too, e.g. http://{}",
            text.trim_start_matches("//")
        )
    };
    let url = reqwest::Url::parse(text).map_err(|_| hint())?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(text.to_string()),
        "http" | "https" => Err(format!("{text:?} has no host, e.g. http://127.0.0.1:15000")),
        // `localhost:15000` parses as scheme `localhost`.
        _ if !text.contains("://") => Err(hint()),
        other => Err(format!(
            "{text:?}: the scheme must be http or https, not {other}"
        )),
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
    fn servers_are_urls() {
        assert!(parse_server("http://127.0.0.1:15000").is_ok());
        assert!(parse_server("https://meshd.example:15000/").is_ok());
        for bare in ["127.0.0.1:15000", "localhost:15000", "meshd"] {
            let e = parse_server(bare).unwrap_err();
            assert!(e.contains(&format!("e.g. http://{bare}")), "{e}");
        }
        assert!(
            parse_server("ftp://x")
                .unwrap_err()
                .contains("http or https")
        );
        assert_eq!(human_size(20 << 20), "20 MiB");
        assert_eq!(human_size(3 << 19), "1.5 MiB");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(
            segment("spiffe://cluster.local/ns/a@127.0.0.1:5"),
            "spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%40127.0.0.1%3A5"
        );
        assert_eq!(segment("web-1"), "web-1");
    }
}
