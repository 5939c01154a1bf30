//! `evergreen up`: registry, trainer, server and monitor in this process on
//! embedded defaults (ports 7400-7403, state under ./.evergreen), until
//! Ctrl-C; with `--demo`, the demo plays against them first. And
//! `evergreen demo`: the same narrative against a fresh stack of its own
//! (temp dir, port 0), for scripts and CI.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use evergreen_cli::demo::{self, DemoError, Endpoints, Outcome};
use evergreen_cli::stack::{Stack, StackConfig, DAEMONS};

use crate::output::Table;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the daemons keep their state: DIR/registry (sled, artifacts,
    /// archive), DIR/trainer (jobs), DIR/monitor (windows, signals)
    /// [default: ./.evergreen, unless the config file or EVERGREEN_* set
    /// a daemon's data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file: its [registry], [trainer], [server] and [monitor]
    /// tables (any key a daemon takes), under EVERGREEN_* variables.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Once up, play the demo (a model's whole life) against the stack,
    /// then keep it running to explore.
    #[arg(long)]
    pub demo: bool,
    /// Log lines as `text` or `json` (one object per line) [default: text,
    /// or EVERGREEN_LOG_FORMAT, or the config file's log_format].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// The environment for tracing (the file's `log` / `log_format`, then
/// EVERGREEN_LOG*, then --log-format); the demo modes default to errors
/// only, since the narrative is the output. A bad format is an error.
fn log_env(
    file: Option<PathBuf>,
    log_format: Option<String>,
    quiet: bool,
) -> anyhow::Result<HashMap<String, String>> {
    let sources = evergreen_runtime::ConfigSources::from_process(file).log_format(log_format);
    let mut env = sources.logging_env();
    evergreen_runtime::telemetry::LogFormat::from_env(&env)?;
    if quiet {
        env.entry("EVERGREEN_LOG".into())
            .or_insert_with(|| "error".into());
    }
    Ok(env)
}

/// Channels to the stack, with the CLI's TLS settings and token (--ca,
/// --token, ...), which an `up` whose config turns TLS or auth on needs.
async fn endpoints(stack: &Stack) -> anyhow::Result<Endpoints> {
    let c = crate::commands::client();
    Ok(Endpoints {
        registry: c.connect("registry", &stack.url("registry")).await?,
        trainer: c.connect("trainer", &stack.url("trainer")).await?,
        server: c.connect("server", &stack.url("server")).await?,
        monitor: c.connect("monitor", &stack.url("monitor")).await?,
    })
}

/// What runs where, and how to reach it.
async fn print_stack(stack: &Stack) {
    println!(
        "evergreen {}: registry, trainer, server and monitor in this process (Ctrl-C stops them)\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut t = Table::new(&["DAEMON", "GRPC", "METRICS", "DATA"]);
    for d in DAEMONS {
        let metrics = match stack.metrics_addr(d).await {
            Some(a) => format!("http://{a}/metrics"),
            None if stack.config.metrics_listen(d).is_empty() => "off".into(),
            None => stack.config.metrics_listen(d).to_string(),
        };
        t.row(vec![
            d.to_string(),
            stack.addr(d).to_string(),
            metrics,
            stack
                .config
                .data_dir(d)
                .map_or("- (models come from the registry)".into(), |p| {
                    p.display().to_string()
                }),
        ]);
    }
    t.print();
    // The CLI's own defaults are 7400-7403; say how to reach anything else.
    let defaults = [
        ("registry", "http://127.0.0.1:7400"),
        ("trainer", "http://127.0.0.1:7401"),
        ("server", "http://127.0.0.1:7402"),
        ("monitor", "http://127.0.0.1:7403"),
    ];
    let exports: Vec<String> = defaults
        .iter()
        .filter(|(d, url)| stack.url(d) != *url)
        .map(|(d, _)| format!("EVERGREEN_{}_URL={}", d.to_uppercase(), stack.url(d)))
        .collect();
    println!();
    if !exports.is_empty() {
        println!("for the CLI in another shell: export {}", exports.join(" "));
    }
    println!(
        "try: evergreen status    grpcurl -plaintext {} list",
        stack.addr("registry")
    );
    let _ = std::io::stdout().flush();
}

async fn play(ep: Endpoints, opts: demo::Options) -> Result<Outcome, DemoError> {
    let mut out = std::io::stdout();
    demo::run(&ep, &opts, &mut out).await
}

/// `evergreen up`.
pub async fn up(args: UpArgs) -> ExitCode {
    let env = match log_env(args.config.clone(), args.log_format.clone(), args.demo) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    evergreen_runtime::init_tracing(&env);
    let process_env: HashMap<String, String> = std::env::vars().collect();
    let mut config = match StackConfig::load(args.config, &process_env, args.data_dir.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.demo {
        config.tune_for_demo();
    }
    let mut stack = match Stack::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = stack.ready(&crate::commands::client()).await {
        eprintln!("error: {e:#}");
        let _ = stack.stop().await;
        return ExitCode::FAILURE;
    }
    print_stack(&stack).await;

    let mut demo_task = None;
    if args.demo {
        let data = demo::write_dataset(&stack.config.trainer.data_dir.join("demo"));
        let ep = endpoints(&stack).await;
        match (data, ep) {
            (Ok(data), Ok(ep)) => {
                let opts = demo::Options {
                    data,
                    model: None,
                    progress: true,
                };
                demo_task = Some(tokio::spawn(play(ep, opts)));
            }
            (Err(e), _) => eprintln!("demo: dataset: cannot write the built-in dataset: {e}"),
            (_, Err(e)) => eprintln!("demo: connect: {e:#}"),
        }
    }
    let mut failed = args.demo && demo_task.is_none();

    let signal = evergreen_runtime::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            (daemon, result) = stack.exited() => {
                match result {
                    Err(e) => eprintln!("error: {e:#}"),
                    Ok(()) => eprintln!("error: the {daemon} stopped by itself"),
                }
                eprintln!("stopping the others");
                if let Some(t) = demo_task.take() {
                    t.abort();
                }
                let _ = stack.stop().await;
                return ExitCode::FAILURE;
            }
            done = async { demo_task.as_mut().expect("guarded").await }, if demo_task.is_some() => {
                demo_task = None;
                match done {
                    Ok(Ok(o)) => {
                        println!(
                            "\n==> The demo is done: {} steps in {:.1} s, every one did what it should.",
                            o.steps,
                            o.elapsed.as_secs_f64()
                        );
                        println!("The stack stays up. Explore it (grpcurl: https://github.com/fullstorydev/grpcurl):\n");
                        println!(
                            "{}",
                            demo::explore(
                                &o,
                                &stack.url("registry"),
                                &stack.url("trainer"),
                                &stack.url("server"),
                                &stack.url("monitor"),
                            )
                        );
                        println!("\nCtrl-C stops everything.");
                    }
                    Ok(Err(e)) => {
                        failed = true;
                        eprintln!("{e}");
                        eprintln!("the stack stays up to look into it (evergreen status, evergreen history MODEL); Ctrl-C stops it");
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("demo: the demo task failed: {e}");
                    }
                }
                let _ = std::io::stdout().flush();
            }
        }
    }
    if let Some(t) = demo_task.take() {
        t.abort();
    }
    eprintln!("stopping registry, trainer, server and monitor (Ctrl-C again to force)");
    let stopped = tokio::select! {
        r = stack.stop() => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("forced to stop");
            return ExitCode::from(130);
        }
    };
    match stopped {
        Ok(()) if !failed => {
            eprintln!("stopped");
            ExitCode::SUCCESS
        }
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `evergreen demo`: a fresh stack in a temp dir on port 0, the demo, and
/// the stack gone again. Exit 0 when every step did what it should.
pub async fn demo() -> ExitCode {
    match log_env(None, None, true) {
        Ok(env) => evergreen_runtime::init_tracing(&env),
        Err(e) => {
            eprintln!("demo: start: {e:#}");
            return ExitCode::from(2);
        }
    }
    let dir = match tempfile::Builder::new().prefix("evergreen-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: start: cannot create a temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = demo_in(dir.path()).await;
    match result {
        Ok(o) => {
            println!(
                "\n==> demo: every step succeeded ({} steps in {:.1} s)",
                o.steps,
                o.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo_in(dir: &Path) -> Result<Outcome, DemoError> {
    let fail = |step: &'static str| {
        move |e: anyhow::Error| DemoError {
            step,
            message: format!("{e:#}"),
        }
    };
    let mut config = StackConfig::ephemeral(dir);
    config.tune_for_demo();
    let mut stack = Stack::start(config).await.map_err(fail("start"))?;
    if let Err(e) = stack.ready(&crate::commands::client()).await {
        let _ = stack.stop().await;
        return Err(fail("start")(e));
    }
    println!(
        "evergreen demo: a fresh stack in {} — registry {}, trainer {}, server {}, monitor {}",
        dir.display(),
        stack.addr("registry"),
        stack.addr("trainer"),
        stack.addr("server"),
        stack.addr("monitor")
    );
    let result = async {
        let data = demo::write_dataset(&dir.join("data")).map_err(|e| fail("dataset")(e.into()))?;
        let ep = endpoints(&stack).await.map_err(fail("connect"))?;
        let opts = demo::Options {
            data,
            model: None,
            progress: true,
        };
        let mut out = std::io::stdout();
        tokio::select! {
            r = demo::run(&ep, &opts, &mut out) => r,
            (daemon, r) = stack.exited() => Err(DemoError {
                step: "stack",
                message: match r {
                    Err(e) => format!("{e:#}"),
                    Ok(()) => format!("the {daemon} stopped by itself"),
                },
            }),
            _ = evergreen_runtime::shutdown_signal() => Err(DemoError {
                step: "interrupted",
                message: "stopped by a signal".into(),
            }),
        }
    }
    .await;
    let stopped = stack.stop().await;
    let outcome = result?;
    stopped.map_err(fail("stop"))?;
    Ok(outcome)
}
