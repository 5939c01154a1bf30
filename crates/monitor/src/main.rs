//! `evergreen-monitor`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_monitor::MonitorConfig;
use evergreen_runtime::{init_tracing, load_config, shutdown_signal, ConfigSources};

#[derive(Parser)]
#[command(name = "evergreen-monitor", version, about = "Evergreen's monitor")]
struct Args {
    /// TOML config file (the `[monitor]` table is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:7403].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Registry URL [default: http://127.0.0.1:7400].
    #[arg(long)]
    registry: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = ConfigSources::from_process(args.config)
        .flag("listen", args.listen)
        .flag("registry_url", args.registry);
    init_tracing(&sources.env);
    let config = match load_config::<MonitorConfig>("monitor", &sources)
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("evergreen-monitor: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evergreen-monitor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        println!("evergreen-monitor listening on {}", listener.local_addr()?);
        evergreen_monitor::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evergreen-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
