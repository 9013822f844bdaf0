//! `meshctl ca rotate`: start a CA rotation, steer it (pause, resume, rollback, next), and
//! follow its progress (`--wait`): a progress bar on a terminal, one plain line per change
//! otherwise.

use crate::admin::Client;
use crate::output::{self, Format};
use crate::{EXIT_FAILURE, EXIT_USAGE, Failure};
use mesh_admin_api::{RotateRequest, RotationStatus};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RotateArgs {
    /// Rotate to this CA certificate (PEM: the signing certificate first, then its chain up to
    /// the root) instead of a generated root. With an offline root, this is the new
    /// intermediate and the root stays.
    #[arg(long, value_name = "FILE", requires = "import_key")]
    import_cert: Option<std::path::PathBuf>,
    /// The PKCS#8 PEM key of --import-cert.
    #[arg(long, value_name = "FILE", requires = "import_cert")]
    import_key: Option<std::path::PathBuf>,
    /// Wait for `meshctl ca rotate next` at each gate instead of moving on automatically.
    #[arg(long)]
    manual: bool,
    /// Sidecars re-issue their certificates at random moments within this window.
    #[arg(long, default_value = "1m")]
    window: String,
    /// Block until the rotation is finished (exit 0) or stops short (non-zero, with why),
    /// showing progress.
    #[arg(long)]
    wait: bool,
    #[command(subcommand)]
    pub action: Option<RotateAction>,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum RotateAction {
    /// Stop the rotation where it is (it never moves on while paused).
    #[command(after_help = "Example:\n  meshctl ca rotate pause")]
    Pause,
    /// Continue a paused rotation.
    #[command(after_help = "Example:\n  meshctl ca rotate resume")]
    Resume,
    /// Go back to the old CA (allowed until finalize); sidecars re-issue from the old CA.
    #[command(after_help = "Example:\n  meshctl ca rotate rollback")]
    Rollback,
    /// Manual mode: move to the next phase (refused while the fleet has not met the gate).
    #[command(after_help = "Example:\n  meshctl ca rotate next")]
    Next,
    /// The rotation's phase, progress and what it waits for.
    #[command(
        after_help = "Examples:\n  meshctl ca rotate status\n  meshctl ca rotate status --wait"
    )]
    Status {
        /// Follow it until it is finished.
        #[arg(long)]
        wait: bool,
    },
}

/// `meshctl ca rotate …`.
pub async fn run(args: &RotateArgs, format: Format, api: Client) -> Result<(), Failure> {
    let (status, wait) = match args.action {
        Some(RotateAction::Status { wait }) => (api.fetch("/api/v1/ca/rotation").await?, wait),
        Some(action) => {
            let command = match action {
                RotateAction::Pause => "pause",
                RotateAction::Resume => "resume",
                RotateAction::Rollback => "rollback",
                RotateAction::Next => "next",
                RotateAction::Status { .. } => unreachable!("handled above"),
            };
            let path = format!("/api/v1/ca/rotation/{command}");
            (api.submit(&path, &json!({})).await?, false)
        }
        None => {
            let window = humantime::parse_duration(&args.window).map_err(|e| {
                Failure::new(
                    EXIT_USAGE,
                    format!("--window {:?}: {e}; e.g. --window 5m", args.window),
                )
            })?;
            let mut body = RotateRequest {
                manual: args.manual,
                window: Some(humantime::format_duration(window).to_string()),
                ..RotateRequest::default()
            };
            if let (Some(cert), Some(key)) = (&args.import_cert, &args.import_key) {
                body.import_cert_pem = Some(read(cert, "--import-cert")?);
                body.import_key_pem = Some(read(key, "--import-key")?);
            }
            (api.submit("/api/v1/ca/rotation", &body).await?, args.wait)
        }
    };
    if !wait {
        return output::emit(format, &status, |s| say!("{}", summary(s)));
    }
    let last = follow(&api, status).await?;
    output::emit(format, &last, |_| {})?;
    match last.phase.as_str() {
        "done" => Ok(()),
        RotationStatus::IDLE => Err(Failure::new(EXIT_FAILURE, "meshd reported no rotation")),
        phase => Err(Failure::new(
            EXIT_FAILURE,
            format!("the rotation ended {phase}, not done: the old CA is still the one in use"),
        )),
    }
}

fn read(path: &std::path::Path, flag: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!(
                "{flag} {}: {}",
                path.display(),
                crate::admin::without_os_error(&e.to_string())
            ),
        )
    })
}

/// One line: phase, progress, what it waits for.
pub fn summary(s: &RotationStatus) -> String {
    let phase = &s.phase;
    let Some(r) = s
        .rotation
        .as_ref()
        .filter(|_| phase != RotationStatus::IDLE)
    else {
        return RotationStatus::IDLE.into();
    };
    let mut line = format!("rotation {}: {phase}", r.generation);
    if r.paused {
        line.push_str(" (paused)");
    }
    if let Some(p) = r.progress {
        line.push_str(&format!(", {}/{} sidecars", p.done, p.total));
    }
    if !r.waiting_for.is_empty() {
        line.push_str(&format!(" — waiting: {}", r.waiting_for));
    }
    line
}

/// Polls until the rotation is terminal or paused; returns the last status. Fails when meshd
/// stops answering for good or the rotation makes no progress for a long time.
async fn follow(api: &Client, mut status: RotationStatus) -> Result<RotationStatus, Failure> {
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut last_change = Instant::now();
    let window = Duration::from_secs(status.rotation.as_ref().map_or(60, |r| r.window_secs));
    let stall = window + Duration::from_secs(600);
    loop {
        let line = summary(&status);
        if terminal {
            let bar = bar(&status);
            // The control sequence is ours (back to column 0, clear the line); the text is
            // escaped.
            output::raw_stderr("\r\x1b[2K");
            note_part!("{bar} {line}");
            let _ = std::io::stderr().flush();
        } else if line != last_line {
            note!("{line}");
        }
        if line != last_line {
            last_line = line;
            last_change = Instant::now();
        }
        if status.is_over() {
            if terminal {
                note!();
            }
            return Ok(status);
        }
        if status.rotation.as_ref().is_some_and(|r| r.paused) {
            if terminal {
                note!();
            }
            return Err(Failure::new(
                EXIT_FAILURE,
                "the rotation is paused: `meshctl ca rotate resume` to continue",
            ));
        }
        if last_change.elapsed() > stall {
            return Err(Failure::new(
                EXIT_FAILURE,
                format!(
                    "no progress for {}: {last_line}",
                    humantime::format_duration(stall)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = api.fetch("/api/v1/ca/rotation").await?;
    }
}

/// `[####------] prepare`: the phase's progress as a bar.
fn bar(s: &RotationStatus) -> String {
    const WIDTH: u64 = 20;
    let progress = s.rotation.as_ref().and_then(|r| r.progress);
    let done = progress.map_or(0, |p| p.done as u64);
    let total = progress.map_or(0, |p| p.total as u64);
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}
