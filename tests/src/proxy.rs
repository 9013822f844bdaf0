//! A real `mesh-proxy` process next to a test's echo app: its own join token (from
//! `meshctl token create`), meshd's CA bundle, ephemeral ports read from its ready line. Also a
//! [`Gate`], a TCP forwarder a test can open and close, to make meshd unreachable on demand.

use crate::meshd::Meshd;
use crate::process::{Process, binary};
use crate::wait;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a sidecar may take to become ready in a test (debug build, loaded machine).
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Options for [`Proxy::start`].
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// `--control-plane` URLs; meshd's own when empty.
    pub control_planes: Vec<String>,
    /// Wait until `/ready` answers 200 (the default for most tests).
    pub no_wait_ready: bool,
    /// More flags.
    pub args: Vec<String>,
    /// `--service`; the identity's service account when `None`.
    pub service: Option<String>,
    /// The sidecar's log filter (default: `MESH_TEST_PROXY_LOG`, or info with mesh_proxy at
    /// debug).
    pub log: Option<String>,
    /// Bootstrap with this Kubernetes ServiceAccount token (`--k8s-token-file`) instead of a
    /// join token.
    pub k8s_token: Option<String>,
    /// `--ca-bundle`; meshd's `ca-bundle.pem` when `None`.
    pub ca_bundle: Option<PathBuf>,
}

pub struct Proxy {
    pub process: Process,
    /// The command line, for [`Proxy::restart`].
    args: Vec<std::ffi::OsString>,
    pub identity: String,
    pub dir: PathBuf,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// The addresses in mesh-proxy's "mesh-proxy listening" log line, once it is there.
fn ready_addrs(log: &str) -> Option<Addrs> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("mesh-proxy listening"))?;
    let field = |name: &str| -> Option<SocketAddr> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..].split_whitespace().next()?.parse().ok()
    };
    Some((
        field("inbound_addr")?,
        field("outbound_addr")?,
        field("admin_addr")?,
    ))
}

type Addrs = (SocketAddr, SocketAddr, SocketAddr);

/// Starts mesh-proxy with `args` and waits for its ready line.
async fn spawn(
    dir: &Path,
    args: &[std::ffi::OsString],
    log: Option<&str>,
) -> anyhow::Result<(Process, Addrs)> {
    let mut cmd = Command::new(binary("mesh-proxy"));
    // MESH_TEST_PROXY_LOG overrides the sidecars' log filter when debugging a test.
    let filter = log.map(str::to_string).unwrap_or_else(|| {
        std::env::var("MESH_TEST_PROXY_LOG").unwrap_or_else(|_| "info,mesh_proxy=debug".into())
    });
    cmd.args(args).env("RUST_LOG", filter);
    let log = dir.join(format!("mesh-proxy-{}.log", crate::unique()));
    let mut process = Process::spawn("mesh-proxy", cmd, log)?;
    let addrs = wait::until("mesh-proxy to listen", READY_DEADLINE, || {
        let ready = ready_addrs(&process.log());
        let exited = process.try_exit();
        async move {
            match (exited, ready) {
                (Some(status), _) => Some(Err(anyhow::anyhow!("mesh-proxy exited with {status}"))),
                (None, Some(addrs)) => Some(Ok(addrs)),
                (None, None) => None,
            }
        }
    })
    .await
    .and_then(|r| r)
    .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", process.log()))?;
    Ok((process, addrs))
}

impl Proxy {
    /// Starts a sidecar for `identity` (`spiffe://<td>/ns/<ns>/sa/<sa>`) in front of `app`,
    /// with files in `dir` (created).
    pub async fn start(
        meshd: &Meshd,
        dir: &Path,
        identity: &str,
        app: SocketAddr,
        options: &ProxyOptions,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let id: mesh_ca::SpiffeId = identity.parse()?;
        let mut cmd = Command::new(binary("mesh-proxy"));
        match &options.k8s_token {
            Some(token) => {
                let file = dir.join("k8s-token");
                std::fs::write(&file, token)?;
                cmd.arg("--k8s-token-file").arg(file);
            }
            None => {
                let file = dir.join("join-token");
                std::fs::write(&file, meshd.join_token(identity, "10m", 1))?;
                cmd.arg("--join-token-file").arg(file);
            }
        }
        let urls = if options.control_planes.is_empty() {
            vec![meshd.grpc_url()]
        } else {
            options.control_planes.clone()
        };
        for url in urls {
            cmd.args(["--control-plane", &url]);
        }
        cmd.arg("--ca-bundle")
            .arg(
                options
                    .ca_bundle
                    .clone()
                    .unwrap_or_else(|| meshd.data_dir.join("ca-bundle.pem")),
            )
            .args(["--namespace", id.namespace()])
            .args([
                "--service",
                options.service.as_deref().unwrap_or(id.service_account()),
            ])
            .args(["--app-addr", &app.to_string()])
            .args(["--inbound-addr", "127.0.0.1:0"])
            .args(["--outbound-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(&options.args);
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let (process, (inbound_addr, outbound_addr, admin_addr)) =
            spawn(dir, &args, options.log.as_deref()).await?;
        let proxy = Self {
            process,
            args,
            identity: identity.to_string(),
            dir: dir.to_path_buf(),
            inbound_addr,
            outbound_addr,
            admin_addr,
        };
        if !options.no_wait_ready {
            proxy.wait_ready().await?;
        }
        Ok(proxy)
    }

    /// Kills the process (SIGKILL) and starts it again with the same command line (new
    /// ephemeral ports; the join token is used up, so only a `--state-dir` brings it back).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let (process, (inbound_addr, outbound_addr, admin_addr)) =
            spawn(&self.dir, &self.args, None).await?;
        self.process = process;
        self.inbound_addr = inbound_addr;
        self.outbound_addr = outbound_addr;
        self.admin_addr = admin_addr;
        Ok(())
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait::until("mesh-proxy /ready to be 200", READY_DEADLINE, || async {
            (self.admin("/ready").await.0 == 200).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.process.log()))
    }

    /// GET on the admin listener: (status, body); status 0 when it does not answer.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin_addr);
        match reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// A request builder through this sidecar's outbound listener, addressed to `host`.
    pub fn outbound(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, format!("http://{}{path}", self.outbound_addr))
            .header("host", host)
            .timeout(Duration::from_secs(20))
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A TCP forwarder on `127.0.0.1:0` to `target`: while closed, it accepts and at once drops
/// every connection (a control plane that is down); open, it forwards bytes both ways.
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(target: &str, open: bool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let flag = Arc::new(AtomicBool::new(open));
        let shared_target = Arc::new(std::sync::Mutex::new(target.to_string()));
        let (state, target) = (flag.clone(), shared_target.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !state.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            open: flag,
            target: shared_target,
            task,
        })
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    /// Where new connections go (a restarted meshd listens on a new port).
    pub fn set_target(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target.to_string();
    }

    /// `https://<gate addr>`, for `--control-plane`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Waits until this sidecar's `/config_dump` satisfies `check`; returns the dump.
    pub async fn wait_config(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = wait::until(what, READY_DEADLINE, || async {
            let (status, body) = self.admin("/config_dump").await;
            let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && check(&dump)).then_some(dump)
        })
        .await;
        match found {
            Ok(dump) => dump,
            Err(e) => {
                let (_, body) = self.admin("/config_dump").await;
                panic!("{e}; config:\n{body}\nlog:\n{}", self.log())
            }
        }
    }

    /// The resources of one type in `/config_dump` (each with name, version, resource).
    pub fn resources<'a>(dump: &'a serde_json::Value, ty: &str) -> Vec<&'a serde_json::Value> {
        dump["resources"][ty]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }
}

impl Proxy {
    /// GETs `path` on `host` through the outbound listener until the answer has `status`
    /// (meshd's push has arrived); returns the body as JSON (Null when not JSON).
    pub async fn get_until(&self, host: &str, path: &str, status: u16) -> serde_json::Value {
        let client = reqwest::Client::new();
        let found = wait::until(
            &format!("GET {host}{path} to answer {status} through the sidecar"),
            READY_DEADLINE,
            || async {
                let r = self
                    .outbound(&client, reqwest::Method::GET, host, path)
                    .send()
                    .await
                    .ok()?;
                if r.status().as_u16() != status {
                    return None;
                }
                let text = r.text().await.ok()?;
                Some(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
            },
        )
        .await;
        found.unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()))
    }
}

fn openssl_s_client_blocking(addr: &str, extra: &[&str], bundle: &Path) -> (bool, String) {
    // One HTTP/1.1 request over the TLS connection: the answer shows the handshake held.
    // `timeout`: a test must never hang on an outside tool. `-no_ign_eof`: the end of stdin
    // ends the session.
    let child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", addr, "-no_ign_eof"])
        .args(["-verify_return_error", "-alpn", "http/1.1"])
        .arg("-CAfile")
        .arg(bundle)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("openssl could not be started: {e}")),
    };
    {
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin
                .write_all(b"GET /via-openssl HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            // Keep stdin open briefly so the answer can arrive before s_client sees EOF.
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    let Ok(out) = child.wait_with_output() else {
        return (false, "openssl did not finish".into());
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.contains("HTTP/1.1 200"), text)
}

/// `openssl s_client` to `addr` (verifying the server against `bundle`, with `extra` flags such
/// as `-cert`/`-key`), sending one HTTP/1.1 request; returns whether a 200 came back, and
/// everything openssl printed. It runs off the test's runtime thread, so that an echo app on
/// that runtime can answer meanwhile.
pub async fn openssl_s_client(addr: &str, extra: &[&str], bundle: &Path) -> (bool, String) {
    let (addr, bundle) = (addr.to_string(), bundle.to_path_buf());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        openssl_s_client_blocking(&addr, &extra, &bundle)
    })
    .await
    .unwrap_or_else(|e| (false, format!("openssl task: {e}")))
}

/// A mesh certificate for `identity` from `meshctl cert issue` (a fresh join token), written to
/// `dir`; returns the paths of cert.pem and key.pem.
pub fn issue_cert(meshd: &Meshd, identity: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let token = meshd.join_token(identity, "10m", 1);
    let mut cmd = meshd.meshctl();
    cmd.args(["cert", "issue", "--token", &token, "--control-plane"])
        .arg(meshd.grpc_url())
        .arg("--ca-bundle")
        .arg(meshd.data_dir.join("ca-bundle.pem"))
        .arg("--out")
        .arg(dir);
    let (code, _, stderr) = crate::process::run(cmd);
    assert_eq!(code, Some(0), "meshctl cert issue: {stderr}");
    (dir.join("cert.pem"), dir.join("key.pem"))
}
