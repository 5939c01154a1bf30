//! `evergreen-trainer`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_runtime::ConfigSources;
use evergreen_trainer::TrainerConfig;

#[derive(Parser)]
#[command(
    name = "evergreen-trainer",
    version,
    about = "Evergreen's trainer daemon"
)]
struct Args {
    /// TOML config file (the `[trainer]` table is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log lines as text (default) or one JSON object per line
    /// [env: EVERGREEN_LOG_FORMAT].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Listen address [default: 127.0.0.1:7401].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve without auth on a non-loopback `listen` address (refused
    /// otherwise; sets `insecure = true`).
    #[arg(long)]
    insecure: bool,
    /// Data directory for job records [default: ./.evergreen/trainer].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Registry URL [default: http://127.0.0.1:7400].
    #[arg(long)]
    registry: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = ConfigSources::from_process(args.config)
        .log_format(args.log_format)
        .flag("listen", args.listen)
        .flag("insecure", args.insecure.then_some(true))
        .flag("data_dir", args.data_dir.map(|p| p.display().to_string()))
        .flag("registry_url", args.registry);
    evergreen_runtime::daemon_main::<TrainerConfig, _, _>(
        "evergreen-trainer",
        "trainer",
        sources,
        evergreen_trainer::run,
    )
}
