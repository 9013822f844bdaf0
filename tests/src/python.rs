//! Python peers: scripts in `tests/py/` run with the machine's `python3`, and gRPC stubs
//! generated at test time from `proto/mesh/v1` with grpcio-tools, so that a client this project
//! did not write speaks to meshd. A missing interpreter or package fails the test with what to
//! install; it never skips it.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (the workspace directory).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of a script in `tests/py/`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/py").join(name)
}

/// Panics with an install hint unless `python3` can import every module of `modules`.
pub fn require(modules: &[&str]) {
    let imports = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("python3").args(["-c", &imports]).output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import {modules:?} (run tests/setup, or pip install the missing \
             packages): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed for this test and cannot start: {e}"),
    }
}

/// Generates the Python gRPC stubs of `proto/mesh/v1` into `dir` (as package `mesh.v1`).
pub fn grpc_stubs(dir: &Path) -> anyhow::Result<()> {
    require(&["grpc", "grpc_tools"]);
    let proto = repo_root().join("proto");
    let files: Vec<PathBuf> = std::fs::read_dir(proto.join("mesh/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .args(&files)
        .output()
        .context("running python3 -m grpc_tools.protoc")?;
    if !out.status.success() {
        bail!(
            "grpc_tools.protoc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `tests/py/<name>` with `args`; returns its stdout parsed as JSON (stderr in the error).
pub fn run_json(name: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("python3")
        .arg(script(name))
        .args(args)
        .output()
        .with_context(|| format!("starting python3 {name}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(stdout.trim()).with_context(|| format!("{name} printed no JSON: {stdout}"))
}
