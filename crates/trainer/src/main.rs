//! `evergreen-trainer`: parse config, bind, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evergreen_runtime::{init_tracing, load_config, shutdown_signal, ConfigSources};
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
    /// Listen address [default: 127.0.0.1:7401].
    #[arg(long)]
    listen: Option<SocketAddr>,
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
        .flag("listen", args.listen)
        .flag("data_dir", args.data_dir.map(|p| p.display().to_string()))
        .flag("registry_url", args.registry);
    init_tracing(&sources.env);
    let config = match load_config::<TrainerConfig>("trainer", &sources)
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("evergreen-trainer: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evergreen-trainer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        println!("evergreen-trainer listening on {}", listener.local_addr()?);
        evergreen_trainer::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evergreen-trainer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
