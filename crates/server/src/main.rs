//! `evergreen-server`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_runtime::{init_tracing, load_config, shutdown_signal, ConfigSources};
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
    /// Listen address [default: 127.0.0.1:7402].
    #[arg(long)]
    listen: Option<SocketAddr>,
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
        .flag("listen", args.listen)
        .flag("registry_url", args.registry)
        .flag("monitor_url", args.monitor);
    init_tracing(&sources.env);
    let config = match load_config::<ServerConfig>("server", &sources)
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("evergreen-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evergreen-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        println!("evergreen-server listening on {}", listener.local_addr()?);
        evergreen_server::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evergreen-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
