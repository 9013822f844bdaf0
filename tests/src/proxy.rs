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
                // `meshctl token create` off the runtime's thread: a sidecar joining while a
                // request loop runs must not stall it.
                let mut create = meshd.meshctl();
                create.args(["token", "create", "--identity", identity, "--ttl", "10m"]);
                create.args(["--uses", "1"]);
                let (code, token, stderr) =
                    tokio::task::spawn_blocking(move || crate::process::run(create)).await?;
                anyhow::ensure!(code == Some(0), "token create failed: {stderr}");
                let file = dir.join("join-token");
                std::fs::write(&file, token.trim())?;
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

/// What one `openssl s_client` probe saw: enough to tell *why* a connection was refused (the
/// TLS alert the server sent, or no answer at all) from a success (the HTTP status).
#[derive(Debug, Clone)]
pub struct TlsProbe {
    /// The status of the HTTP answer, when one came back over the connection.
    pub http_status: Option<u16>,
    /// The TLS alert received from the server, by its RFC 8446 name (`protocol_version`,
    /// `handshake_failure`, `unknown_ca`, `certificate_required`, …; `alert_N` for others).
    pub alert: Option<String>,
    /// The negotiated protocol and cipher suite (`TLSv1.3`, `TLS_AES_128_GCM_SHA256`) when the
    /// handshake completed; `None` when it did not.
    pub negotiated: Option<(String, String)>,
    /// Bytes the server sent during the handshake (0: nothing came back at all, e.g. the
    /// connection was closed at once).
    pub handshake_bytes_read: Option<u64>,
    /// Everything openssl printed (stdout, then stderr).
    pub output: String,
}

impl TlsProbe {
    /// Asserts that the server refused the handshake with the TLS alert `alert` (its RFC 8446
    /// name); `what` says what was probed.
    pub fn assert_alert(&self, alert: &str, what: &str) {
        assert_eq!(self.alert.as_deref(), Some(alert), "{what}:\n{self}");
    }
}

impl std::fmt::Display for TlsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "http_status={:?} alert={:?} negotiated={:?} handshake_bytes_read={:?}\n{}",
            self.http_status, self.alert, self.negotiated, self.handshake_bytes_read, self.output
        )
    }
}

impl TlsProbe {
    /// An HTTP 200 came back: the handshake held and the request was served.
    pub fn ok(&self) -> bool {
        self.http_status == Some(200)
    }

    fn parse(output: String) -> Self {
        let http_status = output.find("HTTP/1.1 ").and_then(|i| {
            output[i + 9..]
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
        });
        let alert = output.find("alert number ").and_then(|i| {
            let n: u8 = output[i + 13..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some(alert_name(n))
        });
        // "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"; "New, (NONE), Cipher is (NONE)" when
        // the handshake did not complete.
        let negotiated = output.lines().find_map(|l| {
            let rest = l.strip_prefix("New, ")?;
            let (version, cipher) = rest.split_once(", Cipher is ")?;
            (cipher.trim() != "(NONE)")
                .then(|| (version.trim().to_string(), cipher.trim().to_string()))
        });
        let handshake_bytes_read = output.find("SSL handshake has read ").and_then(|i| {
            output[i + 23..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
        });
        Self {
            http_status,
            alert,
            negotiated,
            handshake_bytes_read,
            output,
        }
    }
}

/// The name of TLS alert `n` (RFC 8446 §6).
fn alert_name(n: u8) -> String {
    match n {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        other => return format!("alert_{other}"),
    }
    .to_string()
}

/// Whether `text` (s_client's stdout) holds a complete HTTP/1.1 response: headers, then a body
/// of its Content-Length (or the last chunk).
fn complete_http_response(text: &str) -> bool {
    let Some(start) = text.find("HTTP/1.1 ") else {
        return false;
    };
    let Some(head_len) = text[start..].find("\r\n\r\n") else {
        return false;
    };
    let head = text[start..start + head_len].to_ascii_lowercase();
    let body = &text[start + head_len + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.contains("0\r\n\r\n");
    }
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    length.is_some_and(|n| body.len() >= n)
}

/// How long one openssl probe may take before it counts as hung (an error, not a refusal).
const OPENSSL_DEADLINE: Duration = Duration::from_secs(20);

fn openssl_s_client_blocking(
    addr: &str,
    extra: &[&str],
    bundle: &Path,
) -> anyhow::Result<TlsProbe> {
    use std::io::{Read, Write};
    // One HTTP/1.1 request over the TLS connection: the answer shows the handshake held.
    // `-no_ign_eof`: the end of stdin ends the session, which we close once the answer is
    // complete (or openssl exits first: the server closed or sent an alert).
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-no_ign_eof"])
        .args(["-verify_return_error", "-alpn", "http/1.1"])
        .arg("-CAfile")
        .arg(bundle)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "openssl could not be started ({e}); install it: apt-get install openssl"
            )
        })?;
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        // openssl reads stdin only once the handshake is done; a refused handshake may close
        // the pipe first, hence no error check.
        let _ = s.write_all(b"GET /via-openssl HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
        let _ = s.flush();
    }
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let shared = buf.clone();
        let thread = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        (buf, thread)
    };
    let (stdout, out_thread) = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let (stderr, err_thread) = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let text = |buf: &std::sync::Mutex<Vec<u8>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    };
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => anyhow::bail!("waiting for openssl: {e}"),
        }
        if stdin.is_some() && complete_http_response(&text(&stdout)) {
            // The answer is in: end the session.
            stdin = None;
        }
        if start.elapsed() > OPENSSL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "openssl s_client to {addr} did not finish within {OPENSSL_DEADLINE:?}:\n{}{}",
                text(&stdout),
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stdin);
    let _ = out_thread.join();
    let _ = err_thread.join();
    Ok(TlsProbe::parse(format!(
        "{}{}",
        text(&stdout),
        text(&stderr)
    )))
}

/// The `-cert FILE -key FILE` arguments of [`openssl_s_client`]: present this client
/// certificate.
pub fn client_cert_args<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 4] {
    let text = |p: &'a Path| {
        p.to_str()
            .unwrap_or_else(|| panic!("not UTF-8: {}", p.display()))
    };
    ["-cert", text(cert), "-key", text(key)]
}

/// `openssl s_client` to `addr` (verifying the server against `bundle`, with `extra` flags such
/// as `-cert`/`-key`), sending one HTTP/1.1 request; returns what it saw. An error means the
/// probe itself failed (openssl missing or hung), never that the server refused. It runs off
/// the test's runtime thread, so that an echo app on that runtime can answer meanwhile.
pub async fn openssl_s_client(
    addr: &str,
    extra: &[&str],
    bundle: &Path,
) -> anyhow::Result<TlsProbe> {
    let (addr, bundle) = (addr.to_string(), bundle.to_path_buf());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        openssl_s_client_blocking(&addr, &extra, &bundle)
    })
    .await
    .map_err(|e| anyhow::anyhow!("openssl task: {e}"))?
}

/// Connects to `addr`, sends `bytes`, and reads until the server closes the connection (at
/// most 10 s): everything it sent back. An error when the connection cannot be made or stays
/// open: a refusal that closes at once is an `Ok` of what little came back.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    // The server may close before reading it all: a failed write is part of the answer.
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // A reset after the server's last bytes is a close too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(anyhow::anyhow!("read from {addr}: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| anyhow::anyhow!("{addr} kept the connection open for 10 s"))??;
    Ok(answer)
}

/// The TLS alert in `record` when it is exactly one alert record (content type 21), by name.
pub fn tls_alert_record(record: &[u8]) -> Option<String> {
    match record {
        [21, 3, _, 0, 2, _level, description] => Some(alert_name(*description)),
        _ => None,
    }
}

/// A mesh certificate for `identity` from `meshctl cert issue` (a fresh join token), written to
/// `dir`; returns the paths of cert.pem and key.pem. The commands run off the runtime's thread,
/// so that a request loop on the same runtime keeps running meanwhile.
pub async fn issue_cert(meshd: &Meshd, identity: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let mut token = meshd.meshctl();
    token.args([
        "token",
        "create",
        "--identity",
        identity,
        "--ttl",
        "10m",
        "--uses",
        "1",
    ]);
    let mut cmd = meshd.meshctl();
    cmd.args(["cert", "issue", "--control-plane"])
        .arg(meshd.grpc_url())
        .arg("--ca-bundle")
        .arg(meshd.data_dir.join("ca-bundle.pem"))
        .arg("--out")
        .arg(dir);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        let (code, stdout, stderr) = crate::process::run(token);
        if code != Some(0) {
            return (code, stdout, format!("token create: {stderr}"));
        }
        cmd.args(["--token", stdout.trim()]);
        crate::process::run(cmd)
    })
    .await
    .unwrap_or_else(|e| (None, String::new(), format!("meshctl task: {e}")));
    assert_eq!(code, Some(0), "meshctl cert issue: {stderr}");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reads_the_alert_the_status_and_the_negotiated_suite() {
        let refused = TlsProbe::parse(
            "CONNECTED(00000003)\n---\nno peer certificate available\n---\nSSL handshake has \
             read 7 bytes and written 313 bytes\n---\nNew, (NONE), Cipher is (NONE)\n\
             40E7:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert protocol \
             version:../ssl/record/rec_layer_s3.c:1605:SSL alert number 70\n"
                .into(),
        );
        assert_eq!(refused.alert.as_deref(), Some("protocol_version"));
        assert_eq!(refused.negotiated, None);
        assert_eq!(refused.handshake_bytes_read, Some(7));
        assert!(!refused.ok());
        let served = TlsProbe::parse(
            "SSL handshake has read 1200 bytes\nNew, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256\n\
             HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                .into(),
        );
        assert!(served.ok());
        assert_eq!(served.alert, None);
        assert_eq!(
            served.negotiated,
            Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into()))
        );
        assert!(complete_http_response(
            "x\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        ));
        assert!(!complete_http_response(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}"
        ));
    }
}
