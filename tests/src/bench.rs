//! The benchmark harness behind `cargo run --release -p mesh-tests --bin bench`: each
//! sub-benchmark measures against a baseline of the same run and returns figures; the binary
//! prints them as a table and writes `<target dir>/bench/results.json`. `smoke` runs each at a tiny
//! size so that the test suite keeps them from rotting.

use crate::fleet::{Event, Fleet, FleetOptions};
use crate::meshd::{Meshd, MeshdOptions};
use crate::sidecar::Credentials;
use std::path::Path;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    pub bench: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The goal, as text (e.g. "<= 100 ms"), and whether this run met it.
    pub goal: Option<String>,
    pub met: Option<bool>,
}

impl Figure {
    pub(crate) fn new(bench: &str, name: &str, value: f64, unit: &str) -> Self {
        Self {
            bench: bench.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            goal: None,
            met: None,
        }
    }

    pub(crate) fn goal(mut self, text: &str, met: bool) -> Self {
        self.goal = Some(text.into());
        self.met = Some(met);
        self
    }
}

/// Sizes of a run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub fleets: Vec<usize>,
    pub route_changes: usize,
    pub ca_window: Duration,
    pub idle_window: Duration,
    pub dataplane: crate::dataplane::Durations,
}

impl Sizes {
    pub fn smoke() -> Self {
        Self {
            fleets: vec![20],
            route_changes: 2,
            ca_window: Duration::from_millis(500),
            idle_window: Duration::from_millis(500),
            dataplane: crate::dataplane::Durations {
                warmup: Duration::from_millis(300),
                run: Duration::from_secs(1),
                rate: 200.0,
            },
        }
    }

    pub fn full() -> Self {
        Self {
            fleets: vec![1_000, 10_000],
            route_changes: 10,
            ca_window: Duration::from_secs(10),
            idle_window: Duration::from_secs(10),
            dataplane: crate::dataplane::Durations {
                warmup: Duration::from_secs(5),
                // `BENCH_DATAPLANE_SECS` shortens each measured run (e.g. on a shared machine).
                run: Duration::from_secs(
                    std::env::var("BENCH_DATAPLANE_SECS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(30),
                ),
                rate: 1000.0,
            },
        }
    }
}

/// Resident memory (KiB) and CPU seconds so far of a process, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// How many sockets a process holds open.
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A KiB field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The service every member of the push fleet calls (besides its own namespace's), and its
/// route, whose changes the benchmark times.
fn route(timeout_ms: u64) -> String {
    format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {{name: app-0, namespace: fleet-0}}\nspec:\n  ports: [{{name: http, port: 80, protocol: http}}]\n  selector: {{app: app-0}}\n---\napiVersion: mesh.meshd.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{name: app-0, namespace: fleet-0}}\nspec:\n  parentRefs: [{{name: app-0}}]\n  rules:\n    - backends: [{{service: app-0, port: 80}}]\n      timeout: {timeout_ms}ms\n"
    )
}

/// A meshd for a simulated fleet of `n` sidecars shaped like a real mesh of that size (not
/// every sidecar calling every service): `n / 10` services of 10 replicas each, in namespaces
/// of 10 services; each workload reaches its own namespace and the one shared service `app-0`
/// (a mesh-wide Sidecar document).
async fn fleet_mesh(
    work: &Path,
    bench: &str,
    n: usize,
    reissue_concurrency: Option<usize>,
) -> anyhow::Result<(Meshd, FleetOptions)> {
    let meshd = Meshd::start(&work.join(bench), &MeshdOptions::default()).await?;
    meshd.try_apply(&route(1000)).await?;
    meshd
        .try_apply(
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Sidecar\nmetadata: {name: default, namespace: mesh-system}\nspec:\n  egress: [\"./*\", \"fleet-0/app-0\"]\n",
        )
        .await?;
    let options = FleetOptions {
        size: n,
        services: (n / 10).max(1),
        services_per_namespace: 10,
        watch_route_table: "app-0.fleet-0:80".into(),
        connect_concurrency: 64,
        reissue_concurrency,
    };
    Ok((meshd, options))
}

/// Control-plane push at fleet scale: cold connect+sync, route change → last ACK, meshd RSS
/// per sidecar, reconnect storm, idle meshd with the fleet.
pub async fn push(work: &Path, n: usize, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let bench = format!("push-{n}");
    let (meshd, options) = fleet_mesh(work, &bench, n, None).await?;
    let pid = meshd.process.pid();
    let rss_before = rss_kib(pid);
    let mut out = Vec::new();
    let deadline = Duration::from_secs(60 + (n as u64) / 20);
    let t0 = Instant::now();
    let mut fleet = Fleet::start(&meshd, &options).await?;
    let started = Instant::now();
    fleet
        .collect(n, deadline, |e| matches!(e, Event::Synced { .. }))
        .await?;
    let cold = started.elapsed().as_secs_f64();
    out.push(Figure::new(
        &bench,
        "cold connect + sync (all streams)",
        cold,
        "s",
    ));
    out.push(Figure::new(
        &bench,
        "certificates issued for the fleet",
        t0.elapsed().as_secs_f64() - cold,
        "s",
    ));

    // Let the endpoint churn of the connect phase settle (debounce max is 1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after = rss_kib(pid);
    let per = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    out.push(Figure::new(
        &bench,
        "meshd RSS with the fleet",
        rss_after as f64 / 1024.0,
        "MiB",
    ));
    out.push(
        Figure::new(&bench, "meshd RSS per connected sidecar", per, "KiB")
            .goal("<= 64 KiB", per <= 64.0),
    );
    out.push(Figure::new(
        &bench,
        "meshd sockets with the fleet",
        sockets(pid) as f64,
        "sockets",
    ));

    let mut latencies = Vec::new();
    for i in 0..sizes.route_changes {
        // Isolated changes, as an operator makes them: a change within the debounce window of
        // the previous push is coalesced with it by design (see xds::DEBOUNCE_QUIET).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = Instant::now();
        meshd.try_apply(&route(2000 + i as u64)).await?;
        let times = fleet
            .collect(n, deadline, |e| matches!(e, Event::Changed { .. }))
            .await?;
        let last = times.iter().max().copied().unwrap_or(t);
        latencies.push(last.duration_since(t).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = percentile(&latencies, 99.0);
    let goal_ms = if n <= 1_000 { 100.0 } else { 1_000.0 };
    out.push(Figure::new(
        &bench,
        "route change -> last ACK p50",
        percentile(&latencies, 50.0),
        "ms",
    ));
    out.push(
        Figure::new(&bench, "route change -> last ACK p99", p99, "ms")
            .goal(&format!("<= {goal_ms} ms"), p99 <= goal_ms),
    );

    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(sizes.idle_window).await;
    let idle_cpu = (cpu_seconds(pid) - cpu0) / sizes.idle_window.as_secs_f64();
    out.push(Figure::new(
        &bench,
        "meshd idle CPU with the fleet",
        idle_cpu * 100.0,
        "% of a core",
    ));

    let t = Instant::now();
    fleet.drop_all_streams();
    fleet
        .collect(n, deadline, |e| matches!(e, Event::Synced { .. }))
        .await?;
    out.push(Figure::new(
        &bench,
        "reconnect storm until all SYNCED",
        t.elapsed().as_secs_f64(),
        "s",
    ));
    // The dropped streams' connections must be gone, not held beside the new ones.
    let settled = Instant::now();
    while sockets(pid) > n + 64 && settled.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.push(Figure::new(
        &bench,
        "meshd sockets after the storm",
        sockets(pid) as f64,
        "sockets",
    ));
    out.push(Figure::new(
        &bench,
        "meshd RSS per sidecar after the storm",
        (rss_kib(pid).saturating_sub(rss_before)) as f64 / n as f64,
        "KiB",
    ));
    drop(fleet);
    Ok(out)
}

/// CA throughput over gRPC (renewals over mTLS with concurrent clients, each one recorded in the
/// store and audited), p99 at half of the peak rate, beside the raw P-256 sign+verify rate.
pub async fn ca(work: &Path, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let meshd = Meshd::start(&work.join("ca"), &MeshdOptions::default()).await?;
    let identity: mesh_ca::SpiffeId = "spiffe://cluster.local/ns/bench/sa/ca".parse()?;
    let creds = Credentials::issue(&meshd, &identity.to_string()).await?;
    let clients = 16;
    let mut channels = Vec::new();
    for _ in 0..clients {
        channels.push(
            mesh_client::channel(&meshd.grpc_url(), creds.anchors.clone(), creds.cert.clone())
                .await?,
        );
    }
    // One CSR made up front and sent again and again: the load generator shares the machine's
    // two cores with meshd, so it must not spend them on key generation (a real fleet makes its
    // keys on its own machines).
    let (csr_pem, _key) =
        mesh_ca::csr::generate_key_and_csr(&identity).map_err(anyhow::Error::msg)?;
    let sign = move |ch: tonic::transport::Channel| {
        let csr_pem = csr_pem.clone();
        async move {
            let request = mesh_proto::v1::SignRequest {
                csr_pem,
                requested_ttl_seconds: 0,
                credential: None,
                sidecar_id: String::new(),
            };
            mesh_proto::v1::identity_client::IdentityClient::new(ch)
                .sign(request)
                .await
                .map(|_| ())
        }
    };

    // Peak: every client back to back.
    let end = Instant::now() + sizes.ca_window;
    let mut tasks = Vec::new();
    for ch in &channels {
        let (ch, sign) = (ch.clone(), sign.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                if sign(ch.clone()).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    let peak = total as f64 / start.elapsed().as_secs_f64();

    // Half of the peak at a constant rate, latency of each request from its scheduled start
    // (so a stall counts against the requests that should have gone out meanwhile).
    let rate = (peak / 2.0).max(1.0);
    let count = ((rate * sizes.ca_window.as_secs_f64()) as usize).max(10);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let begin = Instant::now();
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let scheduled = begin + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (ch, sign) = (channels[i % clients].clone(), sign.clone());
        handles.push(tokio::spawn(async move {
            let ok = sign(ch).await.is_ok();
            (ok, scheduled.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for h in handles {
        match h.await {
            Ok((true, ms)) => lat.push(ms),
            _ => failed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let raw =
        tokio::task::spawn_blocking(|| mesh_ca::raw_p256_sign_verify_rate(Duration::from_secs(2)))
            .await?;
    let ratio = peak / raw;
    Ok(vec![
        Figure::new(
            "ca",
            "Identity.Sign over gRPC, 16 clients (peak)",
            peak,
            "certs/s",
        ),
        Figure::new(
            "ca",
            "p99 latency at half of peak",
            percentile(&lat, 99.0),
            "ms",
        ),
        Figure::new(
            "ca",
            "failed requests at half of peak",
            failed as f64,
            "requests",
        ),
        Figure::new("ca", "raw P-256 sign+verify, same machine", raw, "ops/s"),
        Figure::new("ca", "gRPC CA / raw sign+verify", ratio, "ratio").goal(">= 0.5", ratio >= 0.5),
    ])
}

/// A CA rotation over a simulated fleet of `n` sidecars: every one re-issues its certificate
/// over gRPC when the switch directive arrives (window 0: all at once, the CA's worst case),
/// timed beside the raw signing rate of the same machine.
pub async fn reissue(work: &Path, n: usize) -> anyhow::Result<Vec<Figure>> {
    let bench = format!("reissue-{n}");
    let (meshd, options) = fleet_mesh(work, &bench, n, Some(64)).await?;
    let deadline = Duration::from_secs(60 + (n as u64) / 20);
    let mut fleet = Fleet::start(&meshd, &options).await?;
    fleet
        .collect(n, deadline, |e| matches!(e, Event::Synced { .. }))
        .await?;
    let client = reqwest::Client::new();
    let admin = format!("http://{}", meshd.admin_addr);
    let t0 = Instant::now();
    client
        .post(format!("{admin}/api/v1/ca/rotation"))
        .bearer_auth(meshd.admin_token())
        .json(&serde_json::json!({ "window": "0s" }))
        .send()
        .await?
        .error_for_status()?;
    let times = fleet
        .collect(n, deadline, |e| matches!(e, Event::Reissued { .. }))
        .await?;
    let last = times.iter().max().copied().unwrap_or(t0);
    let reissued = last.duration_since(t0).as_secs_f64();
    let done = crate::wait::until("the rotation to finish", deadline, || async {
        let r: serde_json::Value = client
            .get(format!("{admin}/api/v1/ca/rotation"))
            .bearer_auth(meshd.admin_token())
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (r["phase"] == "done").then_some(())
    })
    .await;
    done?;
    let total = t0.elapsed().as_secs_f64();
    let raw =
        tokio::task::spawn_blocking(|| mesh_ca::raw_p256_sign_verify_rate(Duration::from_secs(2)))
            .await?;
    let rate = n as f64 / reissued;
    Ok(vec![
        Figure::new(
            &bench,
            "rotation start → every sidecar re-issued",
            reissued,
            "s",
        ),
        Figure::new(&bench, "re-issue rate", rate, "certs/s"),
        Figure::new(&bench, "raw P-256 sign+verify, same machine", raw, "ops/s"),
        Figure::new(
            &bench,
            "re-issue rate / raw sign+verify",
            rate / raw,
            "ratio",
        ),
        Figure::new(&bench, "rotation start → done (old root gone)", total, "s"),
    ])
}

/// An idle meshd with no sidecar: RSS and CPU.
pub async fn idle(work: &Path, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let meshd = Meshd::start(&work.join("idle"), &MeshdOptions::default()).await?;
    let pid = meshd.process.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(sizes.idle_window).await;
    let cpu = (cpu_seconds(pid) - cpu0) / sizes.idle_window.as_secs_f64();
    Ok(vec![
        Figure::new(
            "idle",
            "meshd RSS, 0 sidecars",
            rss_kib(pid) as f64 / 1024.0,
            "MiB",
        ),
        Figure::new("idle", "meshd CPU, 0 sidecars", cpu * 100.0, "% of a core"),
    ])
}

/// Prints figures as an aligned table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::new();
    let w = figures
        .iter()
        .map(|f| f.bench.len() + f.name.len() + 3)
        .max()
        .unwrap_or(10);
    for f in figures {
        let label = format!("{} | {}", f.bench, f.name);
        let goal = match (&f.goal, f.met) {
            (Some(g), Some(true)) => format!("  goal {g}: met"),
            (Some(g), Some(false)) => format!("  goal {g}: MISSED"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{label:<w$}  {:>12.2} {}{goal}\n",
            f.value, f.unit
        ));
    }
    out
}

/// Where the `bench` binary at `exe` writes by default: `bench/` beside the profile directory it
/// is in (`<target>/release/bench` writes to `<target>/bench/`). A binary outside a Cargo target
/// directory writes to `./bench-results`.
pub fn default_out(exe: &Path) -> std::path::PathBuf {
    let profile_dir = exe.parent();
    // `debug`, `release`, or a custom profile's directory (Cargo tags its target directory).
    let in_target = profile_dir.is_some_and(|p| {
        p.file_name()
            .is_some_and(|n| n == "debug" || n == "release")
            || p.parent().is_some_and(|t| t.join("CACHEDIR.TAG").is_file())
    });
    match profile_dir.and_then(|p| p.parent()) {
        Some(target) if in_target => target.join("bench"),
        _ => std::path::PathBuf::from("bench-results"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn results_go_under_the_target_directory_of_the_run() {
        assert_eq!(
            default_out(std::path::Path::new("/var/tmp/other-target/release/bench")),
            PathBuf::from("/var/tmp/other-target/bench")
        );
        assert_eq!(
            default_out(std::path::Path::new("/x/target/debug/bench")),
            PathBuf::from("/x/target/bench")
        );
        assert_eq!(
            default_out(std::path::Path::new("/usr/local/bin/bench")),
            PathBuf::from("bench-results")
        );
    }
}
