//! `main()` of every daemon binary: layered config, tracing, bind, print
//! the address, run until SIGTERM/SIGINT. Exit codes: 0 clean stop, 1 a
//! runtime failure, 2 bad configuration (one line naming the key).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::{init_tracing, load_config, shutdown_signal, ConfigSources};

/// What the shell needs from a daemon's config table.
pub trait DaemonConfig: DeserializeOwned + serde::Serialize + Default + Send + 'static {
    fn listen(&self) -> SocketAddr;
    /// The shared keys (metrics, TLS, auth, limits, shutdown); implement
    /// with [`crate::shell_of!`].
    fn shell(&self) -> crate::Shell;
    /// Checks serde cannot make; errors name the key.
    fn validate(&self) -> anyhow::Result<()>;
}

/// The shutdown future handed to a daemon's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs daemon `name` (e.g. "evergreen-registry") whose config is the
/// `[section]` table. It prints "NAME listening on ADDR" on stdout once
/// bound (scripts and tests read the address from it).
pub fn daemon_main<C, F, Fut>(name: &str, section: &str, sources: ConfigSources, run: F) -> ExitCode
where
    C: DaemonConfig,
    F: FnOnce(C, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let log_env = sources.logging_env();
    if let Err(e) = crate::telemetry::LogFormat::from_env(&log_env) {
        eprintln!("{name}: {e:#}");
        return ExitCode::from(2);
    }
    init_tracing(&log_env);
    let config = match load_config::<C>(section, &sources)
        .and_then(|c| c.validate().map(|_| c))
        .and_then(|c| {
            crate::metrics::parse_listen(section, &c.shell().metrics_listen)?;
            Ok(c)
        })
        .and_then(|c| crate::auth::Security::prepare(&c.shell(), c.listen()).map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        // Handlers first: a signal from here on stops the daemon cleanly.
        let shutdown = Box::pin(shutdown_signal());
        let addr = config.listen();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        println!("{name} listening on {}", listener.local_addr()?);
        run(config, listener, shutdown).await
    });
    // Whatever is left (a blocking task mid-way) gets a moment, not forever:
    // run() has already drained the calls and flushed the state.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
