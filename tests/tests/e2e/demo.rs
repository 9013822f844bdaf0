//! `meshctl demo`, the real binary: it comes up, traffic through the sidecars succeeds and is
//! split between both backend versions, the dashboard and `meshctl status` see the mesh, and
//! Ctrl-C (SIGINT) exits 0, removes the data dir and leaves no meshd or mesh-proxy behind. On a
//! terminal (a pty, from Python's `pty`) its status is one line rewritten in place, and closing
//! the terminal (SIGHUP) cleans up the same way.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::process::{Process, binary, run};
use mesh_tests::wait;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bringing up meshd and three sidecars (debug builds, loaded machine), then traffic.
const UP_DEADLINE: Duration = Duration::from_secs(120);
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// The last live line's counts: (ok, failed, v1, v2).
fn last_counts(log: &str) -> Option<(u64, u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.starts_with("requests: "))?;
    let field = |name: &str| -> Option<u64> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next()?.parse().ok()
    };
    Some((field("ok")?, field("failed")?, field("v1")?, field("v2")?))
}

/// The value after `label` on its line of the banner.
fn banner(log: &str, label: &str) -> String {
    let line = log.lines().find(|l| l.contains(label)).unwrap();
    line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string()
}

/// Processes (other than zombies' empty command lines) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && (cmdline.contains("meshd") || cmdline.contains("mesh-proxy"))
        {
            found.push(format!("{}: {cmdline}", name.to_string_lossy()));
        }
    }
    found
}

#[tokio::test]
async fn the_demo_comes_up_serves_traffic_and_ctrl_c_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("meshctl"));
    cmd.arg("demo")
        .env_remove("MESHCTL_SERVER")
        .env_remove("MESHCTL_TOKEN_FILE");
    let mut demo = Process::spawn("meshctl demo", cmd, out.path().join("demo.log")).unwrap();

    let counts = wait::until(
        "the demo's traffic: ok > 10, failed 0, both versions",
        UP_DEADLINE,
        || {
            let log = demo.log();
            let exited = demo.try_exit();
            async move {
                if let Some(status) = exited {
                    return Some(Err(format!("meshctl demo exited with {status}")));
                }
                let (ok, failed, v1, v2) = last_counts(&log)?;
                if failed > 0 {
                    return Some(Err(format!("failed requests: {failed}")));
                }
                (ok > 10 && v1 > 0 && v2 > 0).then_some(Ok((ok, v1, v2)))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", demo.log()));
    let (ok, v1, v2) = counts.unwrap_or_else(|e| panic!("{e}; log:\n{}", demo.log()));
    assert_eq!(ok, v1 + v2, "every answer names its version");
    assert!(v1 > v2, "80/20 split favours v1: v1={v1} v2={v2}");

    let log = demo.log();
    let dashboard = banner(&log, "dashboard:");
    let token_file = PathBuf::from(banner(&log, "admin token file:"));
    let data_dir = PathBuf::from(banner(&log, "(data dir "));
    assert!(dashboard.ends_with("/dashboard"), "{log}");
    assert!(data_dir.is_dir(), "{log}");
    assert!(token_file.starts_with(&data_dir), "{log}");
    let server = dashboard.trim_end_matches("/dashboard").to_string();
    // Only its user may read the data dir (tokens, the KEK, the sealed CA key).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&data_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{} is {mode:o}", data_dir.display());
    // The environment for any meshctl, and the commands with this meshctl's real path.
    let export = format!(
        "  export MESHCTL_SERVER={server} MESHCTL_TOKEN_FILE={}\n",
        token_file.display()
    );
    assert!(log.contains(&export), "{log}");
    let meshctl = binary("meshctl");
    assert!(meshctl.is_absolute());
    for c in ["status", "get all", "check"] {
        assert!(
            log.contains(&format!("\n  {} {c}\n", meshctl.display())),
            "{c}: {log}"
        );
    }

    // The dashboard answers, and in Chromium the demo's three sidecars appear, SYNCED.
    let page = reqwest::get(&dashboard).await.unwrap();
    assert_eq!(page.status(), 200, "{dashboard}");
    let browser = mesh_tests::browser::Browser::start(1280, 800)
        .await
        .unwrap();
    browser.goto(&dashboard).await.unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    browser.sign_in(token.trim()).await.unwrap();
    let fleet = browser
        .wait_text("the demo's sidecars, synced", "#sidecar-rows", |t| {
            ["frontend", "backend-v1", "backend-v2"]
                .iter()
                .all(|n| t.contains(n))
                && t.matches("SYNCED").count() >= 3
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.log()));
    assert!(!fleet.contains("NACKED"), "{fleet}");
    browser
        .screenshot(&mesh_tests::browser::output_dir().join("demo-dashboard.png"))
        .await
        .unwrap();
    browser.close().await;

    // `meshctl status` with the printed environment: the three sidecars.
    let mut status = Command::new(binary("meshctl"));
    status
        .env("MESHCTL_SERVER", &server)
        .env("MESHCTL_TOKEN_FILE", &token_file)
        .current_dir(out.path())
        .args(["status", "-o", "json"]);
    let (code, stdout, stderr) = run(status);
    assert_eq!(code, Some(0), "meshctl status: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sidecars = json["sidecars"]
        .as_array()
        .or_else(|| json.as_array())
        .unwrap_or_else(|| panic!("no sidecar list in {json}"));
    assert_eq!(sidecars.len(), 3, "{json}");
    for name in ["frontend", "backend-v1", "backend-v2"] {
        assert!(stdout.contains(&format!("\"{name}\"")), "{name}: {stdout}");
    }
    let mut table = Command::new(binary("meshctl"));
    table
        .args(["--server", &server, "--token-file"])
        .arg(&token_file)
        .arg("status");
    let (code, stdout, stderr) = run(table);
    assert_eq!(code, Some(0), "meshctl status: {stderr}");
    for name in ["frontend", "backend-v1", "backend-v2"] {
        assert!(stdout.contains(name), "{name}: {stdout}");
    }

    // The children are running now, so the scan below means something.
    assert!(
        !processes_mentioning(&data_dir.to_string_lossy()).is_empty(),
        "the scan finds the demo's processes while it runs"
    );

    // Ctrl-C: exit 0, nothing left.
    demo.signal("INT");
    let exit = demo.wait(EXIT_DEADLINE).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", demo.log());
    assert!(
        !Path::new(&data_dir).exists(),
        "{} is left behind",
        data_dir.display()
    );
    let left = wait::until("the demo's processes to be gone", EXIT_DEADLINE, || {
        let left = processes_mentioning(&data_dir.to_string_lossy());
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(
        left.is_ok(),
        "left running: {:?}; log:\n{}",
        processes_mentioning(&data_dir.to_string_lossy()),
        demo.log()
    );
}

/// Runs `meshctl demo` on a pseudo-terminal (Python's `pty`) until it has rewritten its status
/// line `updates` times, then closes the terminal (the kernel sends SIGHUP) and waits for the
/// demo to exit. Returns (everything it wrote to the terminal, its exit code).
const PTY_DRIVER: &str = r#"
import json, os, pty, select, sys, time
exe, updates, up, down = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
pid, fd = pty.fork()
if pid == 0:
    os.execv(exe, [exe, "demo"])
out = b""
deadline = time.time() + up
while time.time() < deadline and out.count(b"\r\x1b[2Krequests: ") < updates:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
os.close(fd)
code = None
deadline = time.time() + down
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        break
    time.sleep(0.1)
print(json.dumps({"output": out.decode("utf-8", "replace"), "exit": code}))
"#;

#[tokio::test]
async fn on_a_terminal_the_status_is_one_line_and_closing_it_cleans_up() {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PTY_DRIVER)
        .arg(binary("meshctl"))
        .arg("4")
        .arg(UP_DEADLINE.as_secs().to_string())
        .arg(EXIT_DEADLINE.as_secs().to_string())
        .env_remove("MESHCTL_SERVER")
        .env_remove("MESHCTL_TOKEN_FILE");
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert_eq!(
        code,
        Some(0),
        "python3 with its pty module is needed (apt-get install python3): {stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let output = result["output"].as_str().unwrap();

    // The banner once, then status updates in place: each starts with "back to column 0,
    // clear the line", none ends the line, so the instructions stay on screen.
    assert_eq!(output.matches("Try:").count(), 1, "{output:?}");
    let first = output
        .find("\r\u{1b}[2Krequests: ")
        .unwrap_or_else(|| panic!("no status line rewritten in place: {output:?}"));
    let updates = &output[first..];
    let stopping = updates
        .find("meshctl demo: stopping")
        .unwrap_or(updates.len());
    let live = &updates[..stopping];
    assert!(live.matches("\r\u{1b}[2K").count() >= 4, "{live:?}");
    assert!(
        !live.trim_end().contains('\n'),
        "a status update ended its line: {live:?}"
    );
    for update in live.split("\r\u{1b}[2K").filter(|u| !u.trim().is_empty()) {
        let update = update.trim_end();
        assert!(update.starts_with("requests: ok="), "{update:?}");
        assert!(update.contains(" rate="), "{update:?}");
        assert!(update.contains("/s no failure"), "{update:?}");
        assert!(
            update.chars().count() <= 79,
            "wider than a terminal: {update:?}"
        );
    }

    // Closing the terminal stopped it like Ctrl-C: exit 0, the data dir removed, no process
    // left.
    assert_eq!(result["exit"], 0, "{output:?}");
    let data_dir = banner(output, "(data dir ");
    assert!(data_dir.starts_with('/'), "{output:?}");
    assert!(
        !Path::new(&data_dir).exists(),
        "{data_dir} is left behind after SIGHUP"
    );
    let left = wait::until("the demo's processes to be gone", EXIT_DEADLINE, || {
        let left = processes_mentioning(&data_dir);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(
        left.is_ok(),
        "left running after SIGHUP: {:?}",
        processes_mentioning(&data_dir)
    );
}
