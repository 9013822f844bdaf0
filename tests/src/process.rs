//! The workspace's binaries as child processes: found (and brought up to date) once per test
//! process, their output captured to a log file, killed when the handle is dropped.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries for this build profile (`target/debug`):
/// test executables live in `target/<profile>/deps/`, the bench binary in `target/<profile>/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else if dir.as_os_str().is_empty() {
        PathBuf::from("target/debug")
    } else {
        dir
    }
}

/// Builds the workspace's binaries once per test process, so a test never runs a stale one
/// (a no-op when they are fresh). Returns the error text of the build if it failed.
fn ensure_built() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = bin_dir();
            let target_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "--offline", "--bins", "--manifest-path"])
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", &target_dir);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            match cmd.output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
}

/// The path of the workspace binary `name` (`meshd`, `mesh-proxy`, `meshctl`), up to date.
pub fn binary(name: &str) -> PathBuf {
    if let Err(e) = ensure_built() {
        panic!("building the workspace binaries failed:\n{e}");
    }
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A running child process whose stdout+stderr go to a log file. Killed on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with its output sent to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited (and with what), without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. "TERM", "INT", "KILL") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGTERM, then waits up to `deadline` for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM");
        self.wait(deadline)
    }

    /// Waits up to `deadline` for the process to exit.
    pub fn wait(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} did not exit within {deadline:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion, returning (exit code, stdout, stderr).
pub fn run(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("running a command");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command to completion: whether it succeeded, and its stdout then its stderr as one
/// text. Panics (naming the program) when it cannot be started.
pub fn output_text(mut cmd: Command) -> (bool, String) {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a command that must succeed; panics with what it said when it fails.
pub fn run_ok(cmd: Command) {
    let what = format!("{cmd:?}");
    let (ok, text) = output_text(cmd);
    assert!(ok, "{what}: {text}");
}

/// `openssl ARGS` in `dir`, which must succeed (panics with what openssl said).
pub fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    run_ok(cmd);
}

/// `openssl req` arguments for a new, unencrypted P-256 key.
pub const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A P-256 root CA made by the real openssl in `dir`: `key` and `cert` (file names or paths),
/// valid for `days`, with subject `subject`.
pub fn openssl_root_ca(dir: &Path, key: &str, cert: &str, days: &str, subject: &str) {
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &NEW_P256_KEY[..],
            &[
                "-keyout", key, "-out", cert, "-days", days, "-subj", subject,
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
}

/// Asserts that a CLI run (as returned by [`run`]) failed with `code` and said why the way an
/// operator should read it: `meshctl: …` lines, no raw JSON, no panic or backtrace. With
/// `one_line`, exactly one line.
pub fn assert_cli_failure(
    what: &str,
    result: &(Option<i32>, String, String),
    code: i32,
    one_line: bool,
) {
    let (got, stdout, stderr) = result;
    assert_eq!(
        *got,
        Some(code),
        "{what}: stdout {stdout:?}, stderr {stderr:?}"
    );
    assert!(!stderr.is_empty(), "{what}: no message");
    if one_line {
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    }
    for line in stderr.lines() {
        assert!(line.starts_with("meshctl: "), "{what}: {stderr}");
    }
    for bad in ["{\"", "panicked", "backtrace", "RUST_BACKTRACE", "Error {"] {
        assert!(!stderr.contains(bad), "{what}: {stderr}");
    }
}

/// Asserts how a CLI run given `-f missing.yaml` (a file that does not exist) failed: exit 2,
/// one line, as the shell says it.
pub fn assert_missing_file(result: &(Option<i32>, String, String)) {
    assert_cli_failure("missing file", result, 2, true);
    assert_eq!(
        result.2,
        "meshctl: -f missing.yaml: No such file or directory\n"
    );
}
