//! The CLI's share of the hostile-input table (issue #9; the daemons' is
//! `tests/e2e/hostile.rs`): the real `evergreen` binary given bad
//! arguments, bad files and bad configuration. Each row asserts the exact
//! exit code (0 ok, 1 a failed call, 2 bad usage, a bad file or bad
//! configuration) and a fragment of stderr naming what was wrong and what
//! was expected; after each row the stack still serves (a prediction) and
//! nothing stored changed, and a refused `up` created no data directory.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use evergreen_e2e::hostile::{wine_in_production, Table};
use evergreen_e2e::Sandbox;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

const WINE_ROW: &str = "14.23,1.71,2.43,15.6,127,2.8,3.06,0.28,2.29,5.64,1.04,3.92,1065";

struct Case {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    stderr: &'static str,
}

fn case(what: &'static str, args: &[&str], code: i32, stderr: &'static str) -> Case {
    Case {
        what,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        code,
        stderr,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_command_lines_get_the_right_exit_code_and_change_nothing() {
    let sb = Sandbox::builder()
        .trainer()
        .server(|c| c.max_batch_rows = 50)
        .start()
        .await;
    wine_in_production(&sb).await;
    let mut table = Table::new(&sb).await;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ragged = write(dir, "ragged.csv", b"alcohol,malic_acid\n1,2\n3\n");
    let mut latin1 = b"a,target\n1,0\n2,1\n".to_vec();
    latin1.extend_from_slice(b"caf\xe9,0\n");
    let latin1 = write(dir, "latin1.csv", &latin1);
    let labels = write(dir, "labels.csv", b"id,truth\nr1,0\n");
    let garbage = write(dir, "garbage.evgm", b"not a model");
    let data_dir = dir.join("never-created");
    let data_dir_s = data_dir.display().to_string();
    let config = |name: &str, toml: &str| {
        let mut t = String::new();
        for d in ["registry", "trainer", "server", "monitor"] {
            t.push_str(&format!(
                "[{d}]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n"
            ));
        }
        t.push_str(toml);
        write(dir, name, t.as_bytes())
    };
    let unknown_key = config("unknown.toml", "[server.log]\nflush_msec = 5\n");
    let zero_rows = config("zero.toml", "");
    let wrong_type = config("type.toml", "");
    let malformed = write(dir, "malformed.toml", b"[registry\nlisten = ");
    // Keys already present in `config` are overridden here by appending
    // tables would repeat them; write these two whole.
    std::fs::write(
        &zero_rows,
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\nmax_batch_rows = 0\n",
    )
    .unwrap();
    std::fs::write(
        &wrong_type,
        "[registry]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\ninline_artifact_bytes = \"lots\"\n",
    )
    .unwrap();
    let up = |cfg: &str| -> Vec<String> {
        vec![
            "up".into(),
            "--config".into(),
            cfg.into(),
            "--data-dir".into(),
            data_dir_s.clone(),
        ]
    };

    let mut cases = vec![
        // --- calls refused by a daemon: exit 1, "error: CODE: message" ---
        case(
            "path-like model name",
            &["models", "create", "../x"],
            1,
            "INVALID_ARGUMENT: invalid model name \"../x\"",
        ),
        case(
            "alias to an unknown version",
            &["alias", "set", "wine", "production", "99"],
            1,
            "NOT_FOUND: version 99 of model \"wine\" not found",
        ),
        case(
            "predict: wrong number of values",
            &["predict", "wine", "--row", "1,2"],
            1,
            "INVALID_ARGUMENT: row 0: expected 13 values",
        ),
        case(
            "predict: unknown version",
            &["predict", "wine/9", "--row", WINE_ROW],
            1,
            "NOT_FOUND: version 9 of model \"wine\" not found",
        ),
        case(
            "train: ragged CSV",
            &[
                "train", "--model", "csv", "--data", &ragged, "--target", "malic_acid",
            ],
            1,
            "INVALID_ARGUMENT",
        ),
        case(
            "train: a value that is not UTF-8",
            &["train", "--model", "csv", "--data", &latin1, "--target", "target"],
            1,
            "line 4: column a: value is not valid UTF-8",
        ),
        case(
            "register: an artifact that is no model, wrong checksum",
            &[
                "versions", "register", "wine", "--artifact", &garbage, "--sha256", &"0".repeat(64),
            ],
            1,
            "INVALID_ARGUMENT: checksum mismatch",
        ),
        case(
            "registry unreachable",
            &["--registry", "http://127.0.0.1:1", "models", "list"],
            1,
            "UNAVAILABLE",
        ),
        // --- refused before any call: exit 2 ---
        case(
            "register: a NaN metric",
            &["versions", "register", "wine", "--artifact", &garbage, "--metric", "auc=NaN"],
            1,
            "INVALID_ARGUMENT: metric \"auc\" is NaN: metrics must be finite numbers",
        ),
        case(
            "feedback: an infinite value",
            &["feedback", "--request-id", "r1", "--value", "inf"],
            2,
            "expected a finite number, got \"inf\"",
        ),
        case(
            "feedback: a labels file without the columns",
            &["feedback", "--file", &labels],
            2,
            "request_id",
        ),
        case(
            "predict: a ragged rows file",
            &["predict", "wine", "--file", &ragged],
            1,
            "ragged.csv line 3: expected 2 fields (as in the header), found 1",
        ),
        case(
            "an unknown command",
            &["deploy", "wine"],
            2,
            "unrecognized subcommand 'deploy'",
        ),
        case(
            "a registry URL that is not one",
            &["--registry", "not a url", "models", "list"],
            1,
            "invalid --registry \"http://not a url\": invalid URI",
        ),
        // --- bad configuration: `up` exits 2 before it creates anything ---
        Case {
            args: up(&unknown_key),
            ..case("config: an unknown key", &[], 2, "server.log.flush_msec")
        },
        Case {
            args: up(&zero_rows),
            ..case(
                "config: max_batch_rows = 0",
                &[],
                2,
                "invalid server.max_batch_rows = 0: expected at least 1",
            )
        },
        Case {
            args: up(&wrong_type),
            ..case(
                "config: a string for a number",
                &[],
                2,
                "registry.inline_artifact_bytes",
            )
        },
        Case {
            args: up(&malformed),
            ..case(
                "config: malformed TOML",
                &[],
                2,
                "malformed.toml: TOML parse error at line 1, column 10; unclosed table, expected `]`",
            )
        },
        Case {
            args: up(&dir.join("missing.toml").display().to_string()),
            ..case("config: a missing file", &[], 2, "missing.toml")
        },
        Case {
            args: up(&config("env.toml", "")),
            env: vec![("EVERGREEN_TRAINER__MAX_CONCURRENT_JOBS", "lots".into())],
            ..case(
                "config: a bad value in the environment",
                &[],
                2,
                "trainer.max_concurrent_jobs",
            )
        },
    ];
    assert!(cases.len() >= 20);
    let (sb, data_dir) = (&sb, &data_dir);
    for c in cases.drain(..) {
        table
            .row(c.what, async move {
                let mut cmd = Command::new(BIN);
                cmd.args(&c.args)
                    .env("EVERGREEN_REGISTRY_URL", sb.registry_url())
                    .env("EVERGREEN_TRAINER_URL", sb.trainer_url())
                    .env("EVERGREEN_SERVER_URL", sb.server_url())
                    .env("EVERGREEN_MONITOR_URL", "http://127.0.0.1:1")
                    .env_remove("EVERGREEN_LOG")
                    .envs(c.env.iter().map(|(k, v)| (*k, v)));
                let out = tokio::time::timeout(
                    Duration::from_secs(60),
                    tokio::task::spawn_blocking(move || cmd.output().unwrap()),
                )
                .await
                .unwrap_or_else(|_| panic!("{}: did not exit within 60 s", c.what))
                .unwrap();
                let code = out.status.code().unwrap_or(-1);
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                eprintln!("{} | exit {code} | {}", c.what, stderr.trim());
                let mut failures = Vec::new();
                if code != c.code || !stderr.contains(c.stderr) {
                    failures.push(format!(
                        "{}: expected exit {} with {:?}, got {code}: {stderr}",
                        c.what, c.code, c.stderr
                    ));
                }
                // Bad configuration: one clear line (clap's usage errors are clap's).
                if c.args.first().is_some_and(|a| a == "up") && stderr.trim().lines().count() != 1 {
                    failures.push(format!("{}: not one line: {stderr}", c.what));
                }
                if data_dir.exists() {
                    failures.push(format!("{}: created {}", c.what, data_dir.display()));
                }
                failures
            })
            .await;
    }
    table.finish();
}
