//! Tracing set-up: human-readable logs filtered by `EVERGREEN_LOG`
//! (`tracing_subscriber::EnvFilter` syntax, default `info`).

use std::collections::HashMap;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (e.g. several daemons in
/// one test process) are no-ops.
pub fn init_tracing(env: &HashMap<String, String>) {
    let filter = env
        .get("EVERGREEN_LOG")
        .map(String::as_str)
        .unwrap_or("info");
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("EVERGREEN_LOG={filter:?} is not a valid filter ({e}); using `info`");
        EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
