//! `cargo run --release -p mesh-tests --bin bench -- all|smoke|dataplane|push|ca|reissue|idle`
//!
//! Runs the benchmarks of BENCHMARKS.md, prints a table and writes `results.json` into `bench/`
//! of the target directory the run uses (`target/bench/`, or `$CARGO_TARGET_DIR/bench/`), or
//! into `--out`: never into the checkout it was compiled in, which may be another one.

use clap::{Parser, Subcommand};
use mesh_tests::bench::{self, Figure, Sizes};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "meshd benchmarks: each figure beside its baseline of the same run",
    after_help = "Examples:\n  cargo run --release -p mesh-tests --bin bench -- all\n  cargo run --release -p mesh-tests --bin bench -- smoke\n  cargo run --release -p mesh-tests --bin bench -- push --sidecars 1000"
)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Where results.json goes (default: `bench/` in the target directory this binary was
    /// built in, e.g. `target/bench`).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum What {
    /// Every benchmark at full size.
    All,
    /// Every benchmark at a tiny size, in seconds (the test suite runs this).
    Smoke,
    /// Control-plane push with a simulated fleet.
    Push {
        #[arg(long, default_value_t = 1000)]
        sidecars: usize,
    },
    /// CA throughput over gRPC beside the raw signing rate.
    Ca,
    /// A CA rotation re-issuing the certificates of a simulated fleet.
    Reissue {
        #[arg(long, default_value_t = 1000)]
        sidecars: usize,
    },
    /// Idle footprint.
    Idle,
    /// Data plane: direct vs two mesh-proxies vs two Envoys, same load, same run.
    Dataplane,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let (sizes, fleets) = match &args.what {
        What::Smoke => (Sizes::smoke(), Sizes::smoke().fleets),
        What::Push { sidecars } | What::Reissue { sidecars } => (Sizes::full(), vec![*sidecars]),
        _ => (Sizes::full(), Sizes::full().fleets),
    };
    let mut figures: Vec<Figure> = Vec::new();
    let all = matches!(args.what, What::All | What::Smoke);
    if all || matches!(args.what, What::Dataplane) {
        figures.extend(mesh_tests::dataplane::run(work.path(), sizes.dataplane).await?);
    }
    if all || matches!(args.what, What::Idle) {
        figures.extend(bench::idle(work.path(), &sizes).await?);
    }
    if all || matches!(args.what, What::Ca) {
        figures.extend(bench::ca(work.path(), &sizes).await?);
    }
    if all || matches!(args.what, What::Push { .. }) {
        for n in fleets.clone() {
            figures.extend(bench::push(work.path(), n, &sizes).await?);
        }
    }
    if all || matches!(args.what, What::Reissue { .. }) {
        // In `all`, the smallest fleet only: 10,000 is `reissue --sidecars 10000` (see
        // BENCHMARKS.md for why the 10,000-stream fleet is slow to connect today).
        if let Some(n) = fleets.iter().min() {
            figures.extend(bench::reissue(work.path(), *n).await?);
        }
    }
    print!("{}", bench::table(&figures));
    let out = match &args.out {
        Some(out) => out.clone(),
        None => bench::default_out(&std::env::current_exe()?),
    };
    std::fs::create_dir_all(&out)?;
    let report = serde_json::json!({
        "date": time::OffsetDateTime::now_utc().unix_timestamp(),
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "figures": figures,
    });
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
