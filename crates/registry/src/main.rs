//! `evergreen-registry`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_registry::RegistryConfig;
use evergreen_runtime::{init_tracing, load_config, shutdown_signal, ConfigSources};

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
    /// Listen address [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./.evergreen/registry].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = ConfigSources::from_process(args.config)
        .flag("listen", args.listen)
        .flag("data_dir", args.data_dir.map(|p| p.display().to_string()));
    init_tracing(&sources.env);
    let config = match load_config::<RegistryConfig>("registry", &sources)
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("evergreen-registry: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evergreen-registry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        println!("evergreen-registry listening on {}", listener.local_addr()?);
        evergreen_registry::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evergreen-registry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
