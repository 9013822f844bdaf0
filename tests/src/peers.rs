//! Peers this project did not write, for the data-plane tests: curl, Python scripts (`h2`,
//! `websockets`), Envoy with a mesh certificate, and raw sockets. A missing tool fails the test
//! with a message naming what to install; nothing is skipped.

use crate::meshd::Meshd;
use crate::process::Process;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a tool printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` under `timeout` (a test never hangs on an outside tool), off the test's
/// runtime thread so that apps on that runtime keep answering. Panics when the program cannot
/// be started at all, naming it.
pub async fn run(program: &str, args: Vec<String>, limit: Duration) -> Output {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout")
            .arg(limit.as_secs().max(1).to_string())
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (under timeout): {e}"));
        let out = Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // `timeout` answers 127 when the program is not installed.
        assert!(
            out.code != Some(127),
            "{program} is not installed (needed by this test): {}",
            out.stderr
        );
        out
    })
    .await
    .unwrap_or_else(|e| panic!("tool task: {e}"))
}

/// curl with these arguments (`-sS` added), within 60 s.
pub async fn curl(args: &[&str]) -> Output {
    let mut all = vec!["-sS".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run("curl", all, Duration::from_secs(60)).await
}

/// Runs a Python 3 script (`python3 -c`) with arguments, within `limit`. The modules it needs
/// are checked first: a missing one fails the test with the `pip install` that fixes it.
pub async fn python(modules: &[&str], script: &str, args: &[String], limit: Duration) -> Output {
    for m in modules {
        let check = run(
            "python3",
            vec!["-c".into(), format!("import {m}")],
            Duration::from_secs(30),
        )
        .await;
        assert!(
            check.ok(),
            "the Python module {m} is missing (pip install {m}): {}",
            check.stderr
        );
    }
    let mut all = vec!["-c".to_string(), script.to_string()];
    all.extend(args.iter().cloned());
    run("python3", all, limit).await
}

/// Envoy as a mesh client: a plain HTTP listener on loopback whose every request goes over
/// mTLS + HTTP/2 (ALPN h2) to `upstream` (a sidecar's inbound listener), presenting a
/// certificate meshd issued for `identity`.
pub struct Envoy {
    pub process: Process,
    pub listen: SocketAddr,
}

impl Envoy {
    pub fn mesh_client(
        meshd: &Meshd,
        dir: &Path,
        identity: &str,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        use crate::dataplane::{envoy_binary, envoy_config, free_port, start_envoy, tls_socket};
        let envoy = envoy_binary()?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = crate::proxy::issue_cert(meshd, identity, &dir.join("cert"));
        let bundle = meshd.data_dir.join("ca-bundle.pem");
        let port = free_port()?;
        anyhow::ensure!(
            upstream.ip().is_loopback() && upstream.is_ipv4(),
            "Envoy's test config dials 127.0.0.1, not {upstream}"
        );
        let config = envoy_config(
            port,
            upstream.port(),
            None,
            Some(tls_socket("UpstreamTlsContext", &cert, &key, &bundle, "")),
        );
        let process = start_envoy(&envoy, dir, "envoy-client", &config)?;
        Ok(Self {
            process,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

/// Writes `request` to `addr` as it is, then reads until the peer closes or `limit` passes;
/// returns what came back (lossy UTF-8).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    if s.write_all(request).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status code of the first HTTP/1.1 response in `text` (0 when there is none).
pub fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The value of counter/gauge lines of `name` with all of `labels` in `/metrics` text, summed.
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n == name || n == format!("{name}_total"))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
