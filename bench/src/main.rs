//! `bench-compare`: Evergreen next to the tools a team would otherwise
//! pick, in one run on one machine, written to BENCHMARKS.md and
//! bench/results.json. Run it with `just bench-compare` (which builds the
//! release binaries first); `--smoke` is a seconds-long run that keeps the
//! harness from rotting.

mod baseline;
mod ctx;
mod drift;
mod memory;
mod promote;
mod registry;
mod report;
mod serve;
mod stack;
mod stats;
mod train;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::baseline::Python;
use crate::ctx::Ctx;
use crate::report::{Report, Section};

/// The sections, in the order they run and print.
const SECTIONS: &[&str] = &["train", "serve", "promote", "registry", "drift", "memory"];

#[derive(Parser)]
#[command(
    name = "bench-compare",
    about = "Evergreen side by side with its baselines"
)]
struct Args {
    /// Tiny sizes and short loads: checks the harness works, figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Run only these sections (comma-separated): train, serve, promote,
    /// registry, drift, memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the Python baselines (no virtualenv, no wrk): Evergreen's side only.
    #[arg(long)]
    no_baselines: bool,
    /// Seconds per load measurement [default: 5, smoke 0.5].
    #[arg(long)]
    secs: Option<f64>,
    /// Where the data sets are [default: ../shared/data from the repo root;
    /// bench/smoke-data with --smoke].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the report here instead of the repository root (BENCHMARKS.md
    /// and bench/results.json under it).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem} RAM, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn commit(root: &std::path::Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `--data`, else the full sets in ../shared/data, or for a smoke run the
/// slices committed in bench/smoke-data (CI has no ../shared).
fn data_dir(args: &Args, root: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = match &args.data {
        Some(d) => d.clone(),
        None if args.smoke => root.join("bench/smoke-data"),
        None => root.join("../shared/data"),
    };
    anyhow::ensure!(
        dir.join("synth_100000.csv").is_file(),
        "no synth_100000.csv in {}: pass --data DIR (the shared data sets: ../shared/data)",
        dir.display()
    );
    Ok(dir)
}

async fn run_section(id: &str, ctx: &Ctx) -> anyhow::Result<Section> {
    match id {
        "train" => train::run(ctx).await,
        "serve" => serve::run(ctx).await,
        "promote" => promote::run(ctx).await,
        "registry" => registry::run(ctx).await,
        "drift" => drift::run(ctx).await,
        "memory" => memory::run(ctx).await,
        other => unreachable!("section {other} was checked against SECTIONS"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = root();
    for s in &args.only {
        anyhow::ensure!(
            SECTIONS.contains(&s.as_str()),
            "unknown section {s:?}: expected one of {}",
            SECTIONS.join(", ")
        );
    }
    let python = if args.no_baselines {
        None
    } else {
        Some(Python::setup(&root)?)
    };
    let work = tempfile::tempdir()?;
    let ctx = Ctx {
        data: data_dir(&args, &root)?,
        bins: std::env::current_exe()?.parent().unwrap().to_path_buf(),
        work: work.path().to_path_buf(),
        python,
        smoke: args.smoke,
        secs: Duration::from_secs_f64(args.secs.unwrap_or(if args.smoke { 0.5 } else { 5.0 })),
    };
    let mut report = Report {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: std::iter::once("bench-compare".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        commit: commit(&root),
        machine: machine(),
        smoke: args.smoke,
        sections: Vec::new(),
        failed: Vec::new(),
    };
    for id in SECTIONS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == *s))
    {
        eprintln!("== {id}");
        match run_section(id, &ctx).await {
            Ok(s) => {
                eprintln!("{}", Report::section_text(&s));
                report.sections.push(s);
            }
            Err(e) => {
                eprintln!("{id} failed: {e:#}");
                report.failed.push((id.to_string(), format!("{e:#}")));
            }
        }
    }
    let out = args.out.clone().unwrap_or(root.clone());
    std::fs::create_dir_all(out.join("bench"))?;
    let analysis = std::fs::read_to_string(root.join("bench/ANALYSIS.md")).unwrap_or_default();
    report.write(&out, &analysis)?;
    eprintln!(
        "wrote {} and {}",
        out.join("BENCHMARKS.md").display(),
        out.join("bench/results.json").display()
    );
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} section(s) failed: {}",
        report.failed.len(),
        report
            .failed
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
