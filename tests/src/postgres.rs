//! A throwaway PostgreSQL server per test: real PostgreSQL, on a free loopback port, in a
//! temporary directory, gone when the [`TempPostgres`] is dropped.
//!
//! One server per test keeps tests independent and the cleanup simple (startup is well under
//! a second or two: `initdb` with `--no-sync`, `fsync=off`). Cleanup happens twice over:
//! `Drop` stops the server and removes its directory; and a small watchdog shell, started with
//! each server, does the same if the test process dies without running `Drop` (abort, SIGKILL,
//! a timeout in CI): it blocks reading a pipe from the test process and acts when the pipe
//! closes, which the kernel does for a dead process.
//!
//! Needs the PostgreSQL *server* binaries (`initdb`, `pg_ctl`): found on `PATH`, then in
//! `/usr/lib/postgresql/<version>/bin` (Debian/Ubuntu). `initdb` refuses to run as root, so
//! when the tests run as root (CI containers) the directory is handed to the `postgres` system
//! user and the binaries run through `runuser -u postgres --`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The message when the server binaries are missing. Tests fail with it; they never skip.
pub const NOT_FOUND: &str = "PostgreSQL server binaries not found (initdb/pg_ctl); install them \
     with `apt-get install -y postgresql` or put them on PATH";

/// The database [`TempPostgres::url`] points at.
pub const DATABASE: &str = "mesh";
/// The superuser, with `trust` authentication (loopback, test only).
const SUPERUSER: &str = "postgres";
/// How long the server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How many free ports to try if another process takes ours between probing and binding.
const PORT_ATTEMPTS: usize = 5;

/// Runs in the watchdog: waits for EOF on stdin (the test process is gone), then stops the
/// server and removes its directory. It retries a few times because the test may have died in
/// the middle of `initdb` or `pg_ctl start`, which go on writing for a moment; once the
/// directory is gone they cannot recreate it. Arguments: data dir, base dir, pg_ctl command.
const WATCHDOG_SCRIPT: &str = r#"
data="$1"; base="$2"; shift 2
while read -r _line; do :; done
for _try in 1 2 3 4 5 6 7 8 9 10; do
    "$@" -D "$data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$base" 2>/dev/null
    [ -e "$base" ] || exit 0
    sleep 1
done
"#;

/// A running, private PostgreSQL server with one empty database, [`DATABASE`].
pub struct TempPostgres {
    bins: PgBins,
    /// `runuser -u postgres --` when running as root, else empty.
    run_as: Vec<String>,
    /// Removed last, on drop.
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    port: u16,
    started: bool,
    watchdog: Option<Child>,
}

#[derive(Clone, Debug)]
struct PgBins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl std::fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish()
    }
}

// === impl TempPostgres ===

impl TempPostgres {
    /// Creates, starts and waits for a new server; every call gives an independent one.
    pub async fn start() -> Result<Self> {
        let pg = tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .context("temporary PostgreSQL: start task failed")??;
        pg.wait_ready().await?;
        pg.create_database(DATABASE).await?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/mesh`.
    pub fn url(&self) -> String {
        self.database_url(DATABASE)
    }

    /// The URL of another database on this server (see [`TempPostgres::create_database`]).
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database on this server and returns its URL. `name` is an SQL
    /// identifier made of lowercase ASCII letters, digits and `_`.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            bail!("invalid test database name {name:?}: use [a-z0-9_]");
        }
        let mut conn = PgConnection::connect(&self.database_url("postgres"))
            .await
            .with_context(|| format!("connecting to temporary PostgreSQL on port {}", self.port))?;
        // The name was checked above: an identifier, nothing to inject.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        conn.close().await.ok();
        Ok(self.database_url(name))
    }

    fn start_blocking() -> Result<Self> {
        let bins = find_binaries().ok_or_else(|| anyhow!(NOT_FOUND))?;
        let root = running_as_root()?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-pg-")
            .tempdir()
            .context("creating a temporary directory for PostgreSQL")?;
        let run_as = if root {
            // initdb refuses root: hand the directory to the `postgres` user and run as it.
            run(Command::new("chown")
                .arg(format!("{SUPERUSER}:"))
                .arg(dir.path()))
            .context("giving the temporary directory to the `postgres` user (running as root)")?;
            vec![
                "runuser".to_owned(),
                "-u".to_owned(),
                SUPERUSER.to_owned(),
                "--".to_owned(),
            ]
        } else {
            Vec::new()
        };
        let data_dir = dir.path().join("data");
        let mut pg = Self {
            bins,
            run_as,
            data_dir,
            dir: Some(dir),
            port: 0,
            started: false,
            watchdog: None,
        };
        // From here on, `Drop` cleans up whatever happens, and the watchdog if we die.
        pg.watchdog = Some(pg.spawn_watchdog()?);
        pg.initdb()?;
        pg.start_server()?;
        Ok(pg)
    }

    fn base_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// A command for a PostgreSQL binary, run as the `postgres` user when we are root.
    fn pg_command(&self, program: &Path) -> Command {
        match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.pg_command(&self.bins.initdb);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        run(&mut cmd).with_context(|| format!("initdb {}", self.data_dir.display()))
    }

    fn spawn_watchdog(&self) -> Result<Child> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("mesh-pg-watchdog")
            .arg(&self.data_dir)
            .arg(self.base_dir())
            .args(&self.run_as)
            .arg(&self.bins.pg_ctl)
            // Our end of this pipe is close-on-exec, so only this process holds it: the
            // watchdog reads EOF exactly when we are gone (or drop it).
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().context("starting the PostgreSQL watchdog (sh)")
    }

    fn start_server(&mut self) -> Result<()> {
        let log = self.base_dir().join("postgres.log");
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 \
                 -c shared_buffers=16MB",
                self.base_dir().display()
            );
            let mut cmd = self.pg_command(&self.bins.pg_ctl);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", &START_DEADLINE.as_secs().to_string()])
                .arg("-o")
                .arg(options)
                .arg("start");
            match run(&mut cmd) {
                Ok(()) => {
                    self.port = port;
                    self.started = true;
                    return Ok(());
                }
                Err(e) => {
                    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                    let port_taken = log_text.contains("could not bind")
                        || log_text.contains("Address already in use");
                    let err = e.context(format!(
                        "pg_ctl start on port {port}; server log:\n{}",
                        tail(&log_text, 30)
                    ));
                    if !port_taken {
                        return Err(err);
                    }
                    // Make the next attempt's log readable on its own.
                    std::fs::write(&log, "").ok();
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port found")))
    }

    /// `pg_ctl -w` already waited for the server; this also proves that the TCP listener takes
    /// connections, polling until a deadline.
    async fn wait_ready(&self) -> Result<()> {
        let url = self.database_url("postgres");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match PgConnection::connect(&url).await {
                Ok(conn) => {
                    conn.close().await.ok();
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "temporary PostgreSQL on port {} did not accept connections within {:?}",
                            self.port, START_DEADLINE
                        )
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.kill().ok();
            watchdog.wait().ok();
        }
        if self.started {
            let mut cmd = self.pg_command(&self.bins.pg_ctl);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "stop"]);
            if let Err(e) = run(&mut cmd) {
                eprintln!(
                    "warning: stopping temporary PostgreSQL on port {}: {e:#}",
                    self.port
                );
            }
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: removing temporary PostgreSQL directory: {e}");
        }
    }
}

/// `initdb` and `pg_ctl` from the same directory: `PATH` first, then the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_binaries() -> Option<PgBins> {
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let major = name
                        .split('.')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    (major, e.path().join("bin"))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));

    from_path
        .into_iter()
        .chain(versioned.into_iter().map(|(_, dir)| dir))
        .find_map(|dir| {
            let bins = PgBins {
                initdb: dir.join("initdb"),
                pg_ctl: dir.join("pg_ctl"),
            };
            (is_executable(&bins.initdb) && is_executable(&bins.pg_ctl)).then_some(bins)
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn running_as_root() -> Result<bool> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u` to find out whether the tests run as root")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A port that was free a moment ago (the OS picks it; we release it for the server).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs a command to completion; an error carries its exit status and output.
fn run(cmd: &mut Command) -> Result<()> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if status.success() {
        return Ok(());
    }
    bail!(
        "{cmd:?} failed ({status}):\n{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
