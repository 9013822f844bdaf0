//! The benchmark command at smoke size, so that it cannot rot: it runs every sub-benchmark,
//! prints the table and writes results.json with a positive figure for each measurement.
//! (The figures' values are not judged here: timing goals belong in BENCHMARKS.md.)

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_tests::process::{binary, run};
use std::process::Command;

#[test]
fn bench_smoke_runs_every_benchmark_and_writes_results() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("bench"));
    cmd.args(["smoke", "--out"]).arg(out.path());
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, Some(0), "bench smoke failed:\n{stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let figures = json["figures"].as_array().unwrap();
    let benches: std::collections::BTreeSet<&str> = figures
        .iter()
        .map(|f| f["bench"].as_str().unwrap())
        .collect();
    assert_eq!(
        benches,
        ["ca", "dataplane", "idle", "push-20", "reissue-20"]
            .into_iter()
            .collect()
    );
    for name in [
        "Identity.Sign over gRPC, 16 clients (peak)",
        "raw P-256 sign+verify, same machine",
        "cold connect + sync (all streams)",
        "route change -> last ACK p99",
        "reconnect storm until all SYNCED",
        "meshd RSS, 0 sidecars",
        "rotation start → every sidecar re-issued",
        "re-issue rate",
        "direct: throughput at saturation",
        "mesh-proxy ×2 (1 thread): throughput at saturation",
        "mesh-proxy ×2 (2 threads): throughput at saturation",
        "Envoy ×2 (concurrency 1): throughput at saturation",
        "Envoy ×2 (concurrency 2): throughput at saturation",
        "mesh-proxy ×2 (1 thread): peak RSS (larger of the two)",
        "Envoy ×2 (concurrency 2): CPU per 1,000 requests",
        "added p99: mesh-proxy ×2 (1 thread) / Envoy ×2 (concurrency 1)",
        "added p99: mesh-proxy ×2 (2 threads) / Envoy ×2 (concurrency 2)",
    ] {
        let f = figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(f["value"].as_f64().unwrap() > 0.0, "{name}: {f}");
    }
    let failed = figures
        .iter()
        .find(|f| f["name"] == "failed requests at half of peak")
        .unwrap();
    assert_eq!(
        failed["value"].as_f64().unwrap(),
        0.0,
        "no CA request failed"
    );
    // Every data-plane path served every request of the load (each has a timeout).
    for path in [
        "direct",
        "mesh-proxy ×2 (1 thread)",
        "mesh-proxy ×2 (2 threads)",
        "Envoy ×2 (concurrency 1)",
        "Envoy ×2 (concurrency 2)",
    ] {
        let name = format!("{path}: failed requests");
        let f = figures
            .iter()
            .find(|f| f["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f["value"].as_f64().unwrap(), 0.0, "{name}: {f}");
    }
    assert!(stdout.contains("route change -> last ACK p99"), "{stdout}");
}
