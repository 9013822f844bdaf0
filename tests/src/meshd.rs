//! A real `meshd` process on loopback with ephemeral ports and its own data directory.

use crate::process::{Process, binary};
use crate::wait;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long meshd may take to come up in a test (a debug build on a loaded 2-core machine).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// Options for [`Meshd::start`].
#[derive(Debug, Clone, Default)]
pub struct MeshdOptions {
    /// `--database-url`; SQLite in the data directory when `None`.
    pub database_url: Option<String>,
    /// More flags.
    pub args: Vec<String>,
}

pub struct Meshd {
    pub process: Process,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub admin_addr: String,
}

/// The addresses in meshd's "meshd ready" log line, once it is there.
fn ready_addrs(log: &str) -> Option<(String, String)> {
    let line = log.lines().rev().find(|l| l.contains("meshd ready"))?;
    let field = |name: &str| {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..].split_whitespace().next().map(str::to_string)
    };
    Some((field("grpc_addr")?, field("admin_addr")?))
}

impl Meshd {
    /// Starts meshd on `data_dir` (created if missing) and waits until it is ready.
    pub async fn start(data_dir: &Path, options: &MeshdOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        // Port 0: meshd binds ephemeral ports and logs them (no pick-then-bind race).
        let mut cmd = Command::new(binary("meshd"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("MESHD_KEK");
        if let Some(url) = &options.database_url {
            cmd.args(["--database-url", url]);
        }
        cmd.args(&options.args);
        let log = data_dir.join(format!("meshd-{}.log", crate::unique()));
        let mut process = Process::spawn("meshd", cmd, log)?;
        let (grpc_addr, admin_addr) = wait::until("meshd to be ready", START_DEADLINE, || {
            let ready = ready_addrs(&process.log());
            let exited = process.try_exit();
            async move {
                match (exited, ready) {
                    (Some(status), _) => Some(Err(anyhow::anyhow!("meshd exited with {status}"))),
                    (None, Some(addrs)) => Some(Ok(addrs)),
                    (None, None) => None,
                }
            }
        })
        .await
        .and_then(|r| r)
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", process.log()))?;
        Ok(Self {
            process,
            data_dir: data_dir.to_path_buf(),
            grpc_addr,
            admin_addr,
        })
    }

    /// The trust bundle meshd wrote.
    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca-bundle.pem")).unwrap_or_default()
    }

    /// The admin token meshd wrote.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Meshd {
    /// A `meshctl` command pointed at this meshd (server and admin token set).
    pub fn meshctl(&self) -> Command {
        let mut cmd = Command::new(binary("meshctl"));
        cmd.env("MESHCTL_SERVER", format!("http://{}", self.admin_addr))
            .env("MESHCTL_TOKEN_FILE", self.data_dir.join("admin-token"));
        cmd
    }

    /// `https://<grpc addr>`, for `--control-plane`.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Creates a join token with `meshctl token create`, returning the token.
    pub fn join_token(&self, identity: &str, ttl: &str, uses: u32) -> String {
        let mut cmd = self.meshctl();
        cmd.args(["token", "create", "--identity", identity, "--ttl", ttl])
            .args(["--uses", &uses.to_string()]);
        let (code, stdout, stderr) = crate::process::run(cmd);
        assert_eq!(code, Some(0), "token create failed: {stderr}");
        stdout.trim().to_string()
    }
}

impl Meshd {
    /// GET on the admin API with the admin token; the JSON body (panics on a non-2xx answer).
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.admin_get_text(path).await)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET on the admin API with the admin token; panics unless it answers 2xx.
    pub async fn admin_get_text(&self, path: &str) -> String {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin_addr))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Meshd {
    /// Applies mesh documents (YAML) through the admin API.
    pub async fn try_apply(&self, yaml: &str) -> anyhow::Result<()> {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/v1/documents", self.admin_addr))
            .bearer_auth(self.admin_token())
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "apply: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// [`try_apply`](Self::try_apply), panicking on a refusal (for tests).
    pub async fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml).await {
            panic!("{e:#}");
        }
    }
}
