//! `meshctl demo`: a whole mesh on this machine. meshd on SQLite in a temporary data dir, three
//! tiny demo apps served from this process (`frontend`, and `backend` in two versions), one
//! `mesh-proxy` per app, example documents (an 80/20 split, a retry, an authorization rule), a
//! gentle traffic loop with live counts. Ctrl-C or SIGTERM stops everything and removes the
//! data dir.
//!
//! Every child process joins one process group led by a small watchdog shell that holds a pipe
//! from this process: however meshctl ends (even SIGKILL), the pipe closes and the watchdog
//! sends SIGTERM, then SIGKILL, to the whole group. On a normal exit meshctl stops the children
//! itself first.

use crate::output;
use crate::{EXIT_FAILURE, EXIT_USAGE, Failure};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const NAMESPACE: &str = "default";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND_ID: &str = "spiffe://cluster.local/ns/default/sa/backend";
/// How long meshd and each sidecar may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// The longest status line written in place on a terminal.
const STATUS_WIDTH: usize = 79;
/// How long the children get after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The example documents: `backend` (both versions), one Service per version, the 80/20 split
/// with a retry, and only the frontend may call the backends.
const DOCUMENTS: &str = r#"apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: frontend, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: frontend}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: backend}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: backend-v1, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: backend, version: v1}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: backend-v2, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: http}]
  selector: {app: backend, version: v2}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: backend, namespace: default}
spec:
  parentRefs: [{name: backend}]
  rules:
    - backends:
        - {service: backend-v1, port: 80, weight: 80}
        - {service: backend-v2, port: 80, weight: 20}
      retries: {attempts: 2, retryOn: [5xx, reset]}
      timeout: 5s
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/default/sa/frontend"]}]}]
"#;

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(EXIT_FAILURE, message)
}

/// Runs the demo until SIGINT or SIGTERM; then stops everything and removes the data dir.
pub async fn run() -> Result<(), Failure> {
    let bins = binaries()?;
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    // The terminal closed: clean up as for Ctrl-C (the data dir holds the KEK, the tokens and
    // the sealed CA key).
    let mut sighup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let dir = std::env::temp_dir().join(format!(
        "meshctl-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    ));
    // Only this user may read it: it holds the admin token, join tokens and the CA key.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let mut demo = Demo {
        dir: dir.clone(),
        watchdog: None,
        children: Vec::new(),
    };
    let outcome = tokio::select! {
        r = demo.bring_up_and_run(&bins) => r,
        _ = sigint.recv() => Ok(()),
        _ = sigterm.recv() => Ok(()),
        _ = sighup.recv() => Ok(()),
    };
    if std::io::stdout().is_terminal() {
        // Off the status line, which has no line break of its own.
        say!();
    }
    note!("meshctl demo: stopping");
    demo.stop();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        note!("meshctl demo: cannot remove {}: {e}", dir.display());
    }
    outcome
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Failure> {
    tokio::signal::unix::signal(kind).map_err(|e| fail(format!("cannot handle signals: {e}")))
}

struct Binaries {
    meshd: PathBuf,
    proxy: PathBuf,
}

/// `meshd` and `mesh-proxy` next to this executable.
fn binaries() -> Result<Binaries, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| fail(format!("cannot find meshctl's own path: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let find = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Failure::new(
                EXIT_USAGE,
                format!(
                    "{name} is not next to meshctl (looked for {}); build them with cargo build --release --bins",
                    path.display()
                ),
            ))
        }
    };
    Ok(Binaries {
        meshd: find("meshd")?,
        proxy: find("mesh-proxy")?,
    })
}

struct Demo {
    dir: PathBuf,
    /// The process group's leader: kills the group when its stdin (our pipe) closes.
    watchdog: Option<Child>,
    children: Vec<(String, Child)>,
}

/// A started child's log file and its ready line's fields.
type Ready = BTreeMap<String, String>;

impl Demo {
    /// Starts `cmd` in the demo's process group, output to `<dir>/<name>.log`, and waits for a
    /// log line containing `ready_marker`; returns that line's `key=value` fields.
    async fn spawn(
        &mut self,
        name: &str,
        mut cmd: Command,
        ready_marker: &str,
    ) -> Result<Ready, Failure> {
        let pgid = self.group()?;
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| fail(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| fail(format!("cannot open {}: {e}", log.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(pgid)
            .spawn()
            .map_err(|e| fail(format!("cannot start {name}: {e}")))?;
        self.children.push((name.to_string(), child));
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().rev().find(|l| l.contains(ready_marker)) {
                return Ok(fields(line));
            }
            let exited = self
                .children
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(fail(format!(
                    "{name} exited with {status} while starting; see {}:\n{}",
                    log.display(),
                    last_lines(&text, 5)
                )));
            }
            if start.elapsed() > START_DEADLINE {
                return Err(fail(format!(
                    "{name} was not ready within {START_DEADLINE:?}; see {}",
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process group's id, starting its leader (the watchdog) on first use.
    fn group(&mut self) -> Result<i32, Failure> {
        if self.watchdog.is_none() {
            let child = Command::new("sh")
                .args([
                    "-c",
                    "trap '' INT TERM; read _ ; kill -TERM 0; sleep 3; kill -KILL 0",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| fail(format!("cannot start the watchdog shell: {e}")))?;
            self.watchdog = Some(child);
        }
        let pid = self.watchdog.as_ref().map(Child::id).unwrap_or_default();
        i32::try_from(pid).map_err(|_| fail("bad process id"))
    }

    async fn bring_up_and_run(&mut self, bins: &Binaries) -> Result<(), Failure> {
        // meshd on ephemeral ports.
        let mut cmd = Command::new(&bins.meshd);
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("MESHD_KEK");
        let ready = self.spawn("meshd", cmd, "meshd ready").await?;
        let (Some(grpc), Some(admin)) = (ready.get("grpc_addr"), ready.get("admin_addr")) else {
            return Err(fail("meshd's ready line has no grpc_addr / admin_addr"));
        };
        let (grpc, admin) = (grpc.clone(), admin.clone());
        let server = format!("http://{admin}");
        let token_file = self.dir.join("admin-token");
        let api = crate::admin::Client::new(&server, Some(&token_file))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;

        // The documents first: each sidecar is ready only once it holds its configuration.
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| fail(format!("cannot read {}: {e}", token_file.display())))?;
        let applied = http
            .post(format!("{server}/api/v1/documents"))
            .bearer_auth(token.trim())
            .header("content-type", "application/yaml")
            .body(DOCUMENTS)
            .send()
            .await
            .map_err(|e| fail(format!("cannot apply the demo documents: {e}")))?;
        if !applied.status().is_success() {
            let status = applied.status();
            let body = applied.text().await.unwrap_or_default();
            return Err(fail(format!(
                "meshd refused the demo documents ({status}): {body}"
            )));
        }

        // The apps, then their sidecars: backends first, so the frontend finds them.
        let stats = Arc::new(Stats::default());
        let v1 = App::start(Role::Backend("v1")).await?;
        let v2 = App::start(Role::Backend("v2")).await?;
        let frontend = App::start(Role::Frontend).await?;
        let sidecar = Sidecar {
            bins,
            grpc: &grpc,
            api: &api,
        };
        let p1 = sidecar
            .start(
                self,
                "backend-v1",
                BACKEND_ID,
                "backend",
                Some("v1"),
                v1.addr,
            )
            .await?;
        let p2 = sidecar
            .start(
                self,
                "backend-v2",
                BACKEND_ID,
                "backend",
                Some("v2"),
                v2.addr,
            )
            .await?;
        let pf = sidecar
            .start(
                self,
                "frontend",
                FRONTEND_ID,
                "frontend",
                None,
                frontend.addr,
            )
            .await?;
        for p in [&p1, &p2, &pf] {
            wait_ready(&http, p, START_DEADLINE).await?;
        }
        if let Some(outbound) = pf.get("outbound_addr") {
            frontend.set_upstream(outbound);
        }
        wait_for_endpoints(&http, &pf).await?;

        // The commands to try, with this meshctl's real path (it is seldom on $PATH after a
        // `cargo build`), and the environment that points any meshctl at the demo.
        let meshctl = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "meshctl".into());
        say!(
            "meshctl demo: a mesh is running (data dir {})",
            self.dir.display()
        );
        say!("  meshd:      grpc https://{grpc}, admin {server}");
        say!("  dashboard:  {server}/dashboard");
        say!("  admin token file: {}", token_file.display());
        say!(
            "  apps:       frontend -> backend (80% v1, 20% v2, retries; only frontend may call backend)"
        );
        say!("  logs:       {}/*.log", self.dir.display());
        say!("Point meshctl at it (in another terminal):");
        say!(
            "  export {}={} {}={}",
            crate::ENV_SERVER,
            shell_quote(&server),
            crate::ENV_TOKEN_FILE,
            shell_quote(&token_file.display().to_string())
        );
        say!("Try:");
        for c in [
            "status",
            "get all",
            "describe httproute/backend",
            "get authorizationpolicies -o yaml",
            "check",
        ] {
            say!("  {} {c}", shell_quote(&meshctl));
        }
        say!("Press Ctrl-C to stop everything.");

        // Gentle traffic: 5 requests/s to the frontend, which calls backend through its sidecar.
        let loop_stats = stats.clone();
        let url = format!("http://{}/", frontend.addr);
        let client = http.clone();
        let traffic = async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                loop_stats.record(client.get(&url).send().await).await;
            }
        };
        // On a terminal one status line, rewritten in place every second, so that the
        // instructions above stay on screen; elsewhere (a log, a pipe) a line every 2 s.
        let terminal = std::io::stdout().is_terminal();
        let report = async {
            let every = Duration::from_secs(if terminal { 1 } else { 2 });
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last = (Instant::now(), 0);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let total = stats.total();
                let rate = rate(total - last.1, now - last.0);
                last = (now, total);
                let line = stats.line(rate, now);
                if terminal {
                    // Back to column 0 and clear the line: ours, not outside text. Short
                    // enough not to wrap on an 80-column terminal (a wrapped line would not be
                    // cleared whole).
                    output::raw_stdout("\r\x1b[2K");
                    let line: String = line.chars().take(STATUS_WIDTH).collect();
                    say_part!("{line}");
                } else {
                    say!("{line}");
                }
            }
        };
        tokio::join!(traffic, report);
        Ok(())
    }

    /// SIGTERM to every child, SIGKILL after the grace period, then the watchdog.
    fn stop(&mut self) {
        for (_, child) in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let start = Instant::now();
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > STOP_GRACE => {
                        note!("meshctl demo: {name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // Closing its stdin makes it signal the (now empty) group and exit.
            drop(watchdog.stdin.take());
            let start = Instant::now();
            while matches!(watchdog.try_wait(), Ok(None)) && start.elapsed() < STOP_GRACE {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.children.is_empty() || self.watchdog.is_some() {
            self.stop();
            self.children.clear();
        }
    }
}

/// What starting a sidecar needs.
struct Sidecar<'a> {
    bins: &'a Binaries,
    grpc: &'a str,
    api: &'a crate::admin::Client,
}

impl Sidecar<'_> {
    async fn start(
        &self,
        demo: &mut Demo,
        name: &str,
        identity: &str,
        service: &str,
        version: Option<&str>,
        app: SocketAddr,
    ) -> Result<Ready, Failure> {
        let request = mesh_admin_api::CreateToken {
            identity: identity.into(),
            ttl: Some("10m".into()),
            uses: Some(1),
        };
        let created: mesh_admin_api::NewJoinToken =
            self.api.submit("/api/v1/tokens", &request).await?;
        let token = created.token.as_str();
        if token.is_empty() {
            return Err(fail("meshd's answer to a join-token request has no token"));
        }
        let token_file = demo.dir.join(format!("{name}.join-token"));
        std::fs::write(&token_file, token)
            .map_err(|e| fail(format!("cannot write {}: {e}", token_file.display())))?;
        let mut cmd = Command::new(&self.bins.proxy);
        cmd.arg("--control-plane")
            .arg(format!("https://{}", self.grpc))
            .arg("--ca-bundle")
            .arg(demo.dir.join("ca-bundle.pem"))
            .arg("--join-token-file")
            .arg(&token_file)
            .args(["--namespace", NAMESPACE, "--service", service])
            .args(["--id", name])
            .args(["--app-addr", &app.to_string()])
            .args(["--inbound-addr", "127.0.0.1:0"])
            .args(["--outbound-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--drain-grace", "1s"])
            .env("RUST_LOG", "info");
        if let Some(version) = version {
            cmd.args(["--label", &format!("version={version}")]);
        }
        demo.spawn(name, cmd, "mesh-proxy ready").await
    }
}

/// `key=value` fields of a log line.
fn fields(line: &str) -> Ready {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn wait_ready(
    http: &reqwest::Client,
    proxy: &Ready,
    deadline: Duration,
) -> Result<(), Failure> {
    let admin = proxy.get("admin_addr").cloned().unwrap_or_default();
    let start = Instant::now();
    loop {
        let ok = http
            .get(format!("http://{admin}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if start.elapsed() > deadline {
            return Err(fail(format!(
                "the sidecar with admin address {admin} was not ready within {deadline:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the frontend's sidecar knows endpoints of both backend versions.
async fn wait_for_endpoints(http: &reqwest::Client, frontend: &Ready) -> Result<(), Failure> {
    let admin = frontend.get("admin_addr").cloned().unwrap_or_default();
    let start = Instant::now();
    loop {
        let dump: Value = match http.get(format!("http://{admin}/config_dump")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let clusters = dump["resources"]["Cluster"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has = |name: &str| {
            clusters.iter().any(|c| {
                c["name"] == name
                    && c["resource"]["endpoints"]
                        .as_array()
                        .is_some_and(|e| !e.is_empty())
            })
        };
        if has("backend-v1.default:80") && has("backend-v2.default:80") {
            return Ok(());
        }
        if start.elapsed() > START_DEADLINE {
            return Err(fail(
                "the frontend's sidecar did not learn the backends' endpoints in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    v1: AtomicU64,
    v2: AtomicU64,
    /// The latest failure: when, and its first line.
    last_error: std::sync::Mutex<Option<(Instant, String)>>,
}

/// Requests per second over an interval.
fn rate(requests: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        requests as f64 / secs
    } else {
        0.0
    }
}

/// A word a POSIX shell reads back as `text`: as it is when that is safe, else in single
/// quotes.
fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+=,@%".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

impl Stats {
    async fn record(&self, response: Result<reqwest::Response, reqwest::Error>) {
        let outcome = match response {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.map_err(|e| e.to_string()),
            Ok(r) => {
                let status = r.status();
                Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(body) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                match body["version"].as_str() {
                    Some("v1") => self.v1.fetch_add(1, Ordering::Relaxed),
                    Some("v2") => self.v2.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    let first = e.lines().next().unwrap_or_default().to_string();
                    *last = Some((Instant::now(), first));
                }
            }
        }
    }

    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// `requests: ok=120 failed=1 v1=97 v2=23 rate=5.0/s last failure 12s ago: 503 ...`.
    fn line(&self, rate: f64, now: Instant) -> String {
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        render(
            [
                self.ok.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
                self.v1.load(Ordering::Relaxed),
                self.v2.load(Ordering::Relaxed),
            ],
            rate,
            last.map(|(at, e)| (now.saturating_duration_since(at), e)),
        )
    }
}

/// The status line: counts `[ok, failed, v1, v2]`, the rate, and how long ago the last
/// failure was (with its text cut to fit one line).
fn render(counts: [u64; 4], rate: f64, last_failure: Option<(Duration, String)>) -> String {
    let [ok, failed, v1, v2] = counts;
    let mut line = format!("requests: ok={ok} failed={failed} v1={v1} v2={v2} rate={rate:.1}/s");
    match last_failure {
        None => line.push_str(" no failure"),
        Some((ago, error)) => {
            let error: String = error.chars().take(60).collect();
            line.push_str(&format!(
                " last failure {} ago: {error}",
                output::short_duration(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX))
            ));
        }
    }
    line
}

#[derive(Clone, Copy)]
enum Role {
    Frontend,
    Backend(&'static str),
}

/// A demo app served from this process: a tiny HTTP/1.1 server on `127.0.0.1:0`.
struct App {
    addr: SocketAddr,
    /// The frontend's sidecar outbound address, once known.
    upstream: Arc<OnceLock<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(role: Role) -> Result<Self, Failure> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail(format!("cannot listen on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| fail(format!("cannot listen on 127.0.0.1: {e}")))?;
        let upstream = Arc::new(OnceLock::<String>::new());
        let shared = upstream.clone();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (upstream, http) = (shared.clone(), http.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, role, &upstream, &http).await;
                });
            }
        });
        Ok(Self {
            addr,
            upstream,
            task,
        })
    }

    fn set_upstream(&self, outbound: &str) {
        let _ = self.upstream.set(outbound.to_string());
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection: requests with headers (a body is read and ignored), keep-alive.
async fn serve(
    tcp: TcpStream,
    role: Role,
    upstream: &OnceLock<String>,
    http: &reqwest::Client,
) -> std::io::Result<()> {
    let (read, mut write) = tcp.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = BTreeMap::<String, String>::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut body = vec![0; n.min(1 << 20)];
            reader.read_exact(&mut body).await?;
        }
        let (status, body) = match role {
            Role::Backend(version) => (
                200,
                json!({
                    "service": "backend",
                    "version": version,
                    "path": path,
                    "caller": headers.get("x-mesh-peer-identity"),
                })
                .to_string(),
            ),
            Role::Frontend => call_backend(upstream, http).await,
        };
        let close = headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let reason = if status == 200 { "OK" } else { "Error" };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// The frontend's work: GET http://backend/ through its sidecar, and return what came back.
async fn call_backend(upstream: &OnceLock<String>, http: &reqwest::Client) -> (u16, String) {
    let Some(outbound) = upstream.get() else {
        return (
            503,
            json!({"error": "the sidecar is not up yet"}).to_string(),
        );
    };
    match http
        .get(format!("http://{outbound}/"))
        .header("host", "backend")
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (
            502,
            json!({"error": format!("calling backend: {}", mesh_client::root_cause(&e))})
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_has_the_rate_and_the_last_failure() {
        assert_eq!(
            render([120, 0, 97, 23], 4.96, None),
            "requests: ok=120 failed=0 v1=97 v2=23 rate=5.0/s no failure"
        );
        let line = render(
            [120, 2, 97, 23],
            5.0,
            Some((
                Duration::from_secs(75),
                format!("502 Bad Gateway: {}", "x".repeat(200)),
            )),
        );
        assert!(
            line.starts_with(
                "requests: ok=120 failed=2 v1=97 v2=23 rate=5.0/s last failure 1m15s ago: 502 Bad"
            ),
            "{line}"
        );
        assert!(line.len() < 160, "{line}");
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn printed_paths_are_shell_words() {
        assert_eq!(shell_quote("/tmp/a/admin-token"), "/tmp/a/admin-token");
        assert_eq!(shell_quote("http://127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(shell_quote("/home/me/my dir/x"), "'/home/me/my dir/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
