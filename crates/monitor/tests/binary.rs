//! The real `evergreen-monitor` binary: start-up refusals and a clean stop.
//! (This test also makes `cargo test --workspace` build the binary, which
//! the CLI's multi-process tests run.)

use std::path::Path;

#[test]
fn refuses_bad_config_in_one_line_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    evergreen_e2e::process::check_start_and_stop(
        Path::new(env!("CARGO_BIN_EXE_evergreen-monitor")),
        "monitor",
        &[(
            "EVERGREEN_MONITOR__DATA_DIR".into(),
            dir.path().display().to_string(),
        )],
    );
}
