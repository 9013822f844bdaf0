//! A real headless Chromium for the dashboard's tests, driven through Debian's `chromedriver`
//! over the W3C WebDriver protocol: JSON over HTTP, spoken here with reqwest (a WebDriver crate
//! would add a second HTTP stack for the dozen calls a test needs).
//!
//! Each [`Browser`] has its own chromedriver on a free loopback port and its own fresh profile
//! directory; dropping it ends the session, chromedriver, and any Chromium process of that
//! profile, so a failed test leaves nothing running. The browser's console is recorded
//! (`goog:loggingPrefs`) and read with [`Browser::console`].

use crate::process::Process;
use crate::wait;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The W3C key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver and the browser may take to start (debug builds share 2 cores).
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a test waits for something to appear on the page.
pub const UI_DEADLINE: Duration = Duration::from_secs(30);

/// Where tests write what a person may want to look at afterwards (screenshots):
/// `$MESH_TEST_OUTPUT`, else `<target dir>/test-output`. Created if missing.
pub fn output_dir() -> PathBuf {
    let dir = std::env::var_os("MESH_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-output"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The cargo target directory of this test binary (`…/target/debug/deps/x` → `…/target`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `$name` from the environment, else the first of `candidates` that exists or is on PATH.
fn find_program(env: &str, candidates: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in candidates {
        let direct = Path::new(name);
        if direct.is_absolute() && direct.is_file() {
            return Ok(direct.to_path_buf());
        }
        for dir in std::env::split_paths(&path) {
            let full = dir.join(name);
            if full.is_file() {
                return Ok(full);
            }
        }
    }
    bail!(
        "{} not found (set {env}); install it with `apt-get install -y chromium chromium-driver` (.ci/run does)",
        candidates.join(" or ")
    )
}

/// One chromedriver process on a loopback port.
struct Driver {
    process: Process,
    url: String,
}

impl Driver {
    /// chromedriver cannot bind port 0 and tell us the port, so: take a free port, start it
    /// there, and try another port should that one have been taken meanwhile.
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let program = find_program(
            "CHROMEDRIVER",
            &["chromedriver", "/usr/lib/chromium/chromedriver"],
        )?;
        let mut last = String::new();
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut cmd = Command::new(&program);
            cmd.arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .arg("--log-level=WARNING");
            let log = dir.join(format!("chromedriver-{attempt}.log"));
            let mut process = Process::spawn("chromedriver", cmd, log)?;
            let url = format!("http://127.0.0.1:{port}");
            let client = reqwest::Client::new();
            let ready = wait::until("chromedriver to be ready", START_DEADLINE, || {
                let exited = process.try_exit();
                let status = client.get(format!("{url}/status")).send();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(anyhow::anyhow!("chromedriver exited with {status}")));
                    }
                    let body: Value = status.await.ok()?.json().await.ok()?;
                    body["value"]["ready"].as_bool().filter(|r| *r).map(Ok)
                }
            })
            .await
            .and_then(|r| r);
            match ready {
                Ok(_) => return Ok(Self { process, url }),
                Err(e) => last = format!("{e}; log:\n{}", process.log()),
            }
        }
        bail!("chromedriver did not start: {last}")
    }
}

/// A WebDriver error, with the protocol's error code (`no such element`, …).
#[derive(Debug)]
pub struct WebDriverError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "webdriver: {}: {}", self.code, self.message)
    }
}

impl std::error::Error for WebDriverError {}

/// An element on the page (a WebDriver element reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(pub String);

/// A browser console entry.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    /// `SEVERE` (errors), `WARNING`, `INFO`, …
    pub level: String,
    pub message: String,
}

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: Driver,
    profile: tempfile::TempDir,
    closed: bool,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, at `width`×`height`.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let profile = tempfile::Builder::new()
            .prefix("meshd-chromium-")
            .tempdir()?;
        let driver = Driver::start(profile.path()).await?;
        let chromium = find_program(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let user_data = profile.path().join("profile");
        let args = vec![
            "--headless".to_string(),
            // Tests run as root in a container: Chromium's sandbox needs user namespaces.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--password-store=basic".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", user_data.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chromium, "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "timeouts": { "script": 30000, "pageLoad": 60000, "implicit": 0 },
                }
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()?;
        let response: Value = http
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .context("POST /session")?
            .json()
            .await?;
        let Some(id) = response["value"]["sessionId"].as_str() else {
            bail!(
                "chromedriver refused the session: {response}; log:\n{}",
                driver.process.log()
            );
        };
        Ok(Self {
            session: format!("{}/session/{id}", driver.url),
            http,
            driver,
            profile,
            closed: false,
        })
    }

    /// One WebDriver command: the `value` of the answer, or its error.
    pub async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let transport = |e: reqwest::Error| WebDriverError {
            code: "transport".into(),
            message: format!("{method} {path}: {e}"),
        };
        let response = request.send().await.map_err(transport)?;
        let ok = response.status().is_success();
        let body: Value = response.json().await.map_err(transport)?;
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            return Ok(value);
        }
        Err(WebDriverError {
            code: value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string(),
            message: format!(
                "{method} {path}: {}",
                value["message"].as_str().unwrap_or_default()
            ),
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, WebDriverError> {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, WebDriverError> {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), WebDriverError> {
        self.post("/url", json!({ "url": url })).await.map(|_| ())
    }

    pub async fn refresh(&self) -> Result<(), WebDriverError> {
        self.post("/refresh", json!({})).await.map(|_| ())
    }

    /// The first element matching the CSS selector, if any.
    pub async fn find(&self, css: &str) -> Result<Option<Element>, WebDriverError> {
        match self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await
        {
            Ok(v) => Ok(v[ELEMENT_KEY].as_str().map(|id| Element(id.to_string()))),
            Err(e) if e.code == "no such element" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every element matching the CSS selector.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, WebDriverError> {
        let v = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rendered text of an element (what a person sees; empty when hidden).
    pub async fn text(&self, element: &Element) -> Result<String, WebDriverError> {
        let v = self.get(&format!("/element/{}/text", element.0)).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    pub async fn is_displayed(&self, element: &Element) -> Result<bool, WebDriverError> {
        let v = self
            .get(&format!("/element/{}/displayed", element.0))
            .await?;
        Ok(v.as_bool().unwrap_or(false))
    }

    pub async fn click(&self, element: &Element) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await
            .map(|_| ())
    }

    /// Types `text` into an element.
    pub async fn type_text(&self, element: &Element, text: &str) -> Result<(), WebDriverError> {
        self.post(
            &format!("/element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await
        .map(|_| ())
    }

    pub async fn clear(&self, element: &Element) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await
            .map(|_| ())
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WebDriverError> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Resizes the window (the viewport follows).
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<(), WebDriverError> {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await
            .map(|_| ())
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine;
        let v = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The console entries since the last call (chromedriver hands each out once).
    pub async fn console(&self) -> Result<Vec<ConsoleEntry>, WebDriverError> {
        let body = json!({ "type": "browser" });
        let v = match self.post("/se/log", body.clone()).await {
            Ok(v) => v,
            Err(e) if e.code == "unknown command" || e.code == "unknown method" => {
                self.post("/log", body).await?
            }
            Err(e) => return Err(e),
        };
        Ok(v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| ConsoleEntry {
                        level: e["level"].as_str().unwrap_or_default().to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching `css` whose text satisfies `ok`, waiting up to
    /// [`UI_DEADLINE`]; its text. (An element replaced while being read is read again.)
    pub async fn wait_text(
        &self,
        what: &str,
        css: &str,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let started = std::time::Instant::now();
        let mut last = String::from("(no such element)");
        loop {
            for element in self.find_all(css).await.unwrap_or_default() {
                let Ok(text) = self.text(&element).await else {
                    continue;
                };
                if ok(&text) {
                    return Ok(text);
                }
                last = text;
            }
            if started.elapsed() > UI_DEADLINE {
                bail!(
                    "timed out after {UI_DEADLINE:?} waiting for {what} ({css:?}); last text seen: {last:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `script` (a function body) returns `true`.
    pub async fn wait_script(&self, what: &str, script: &str) -> anyhow::Result<()> {
        wait::until(what, UI_DEADLINE, || async {
            matches!(self.execute(script, vec![]).await, Ok(Value::Bool(true))).then_some(())
        })
        .await
    }

    /// Signs in on the dashboard's login form with `token`.
    pub async fn sign_in(&self, token: &str) -> anyhow::Result<()> {
        let input = self
            .find("#login-token")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no login form"))?;
        self.clear(&input).await?;
        self.type_text(&input, token).await?;
        let submit = self
            .find("#login-submit")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no sign-in button"))?;
        self.click(&submit).await?;
        Ok(())
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.command(reqwest::Method::DELETE, "", None).await;
        self.closed = true;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            // No runtime to await on here: a plain HTTP/1.1 DELETE of the session.
            delete_session_blocking(&self.session);
        }
        self.driver.process.kill();
        kill_leftovers(self.profile.path());
    }
}

fn delete_session_blocking(session_url: &str) {
    let Some(rest) = session_url.strip_prefix("http://") else {
        return;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
}

/// Kills, by pid, any process still running with our profile directory on its command line
/// (Chromium's helpers, should chromedriver have died before it could end them).
fn kill_leftovers(profile: &Path) {
    let needle = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
