//! `evergreen-server`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_runtime::ConfigSources;
use evergreen_server::ServerConfig;

#[derive(Parser)]
#[command(
    name = "evergreen-server",
    version,
    about = "Evergreen's prediction server"
)]
struct Args {
    /// TOML config file (the `[server]` table is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log lines as text (default) or one JSON object per line
    /// [env: EVERGREEN_LOG_FORMAT].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Listen address [default: 127.0.0.1:7402].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve without auth on a non-loopback `listen` address (refused
    /// otherwise; sets `insecure = true`).
    #[arg(long)]
    insecure: bool,
    /// Registry URL [default: http://127.0.0.1:7400].
    #[arg(long)]
    registry: Option<String>,
    /// Monitor URL for the prediction log [default: none].
    #[arg(long)]
    monitor: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = ConfigSources::from_process(args.config)
        .log_format(args.log_format)
        .flag("listen", args.listen)
        .flag("insecure", args.insecure.then_some(true))
        .flag("registry_url", args.registry)
        .flag("monitor_url", args.monitor);
    evergreen_runtime::daemon_main::<ServerConfig, _, _>(
        "evergreen-server",
        "server",
        sources,
        evergreen_server::run,
    )
}
