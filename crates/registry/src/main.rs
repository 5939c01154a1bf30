//! `evergreen-registry`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_registry::RegistryConfig;
use evergreen_runtime::ConfigSources;

#[derive(Parser)]
#[command(
    name = "evergreen-registry",
    version,
    about = "Evergreen's model registry daemon"
)]
struct Args {
    /// TOML config file (the `[registry]` table is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log lines as text (default) or one JSON object per line
    /// [env: EVERGREEN_LOG_FORMAT].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Listen address [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve without auth on a non-loopback `listen` address (refused
    /// otherwise; sets `insecure = true`).
    #[arg(long)]
    insecure: bool,
    /// Data directory [default: ./.evergreen/registry].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = ConfigSources::from_process(args.config)
        .log_format(args.log_format)
        .flag("listen", args.listen)
        .flag("insecure", args.insecure.then_some(true))
        .flag("data_dir", args.data_dir.map(|p| p.display().to_string()));
    evergreen_runtime::daemon_main::<RegistryConfig, _, _>(
        "evergreen-registry",
        "registry",
        sources,
        evergreen_registry::run,
    )
}
