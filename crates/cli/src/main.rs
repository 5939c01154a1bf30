//! `evergreen`: drive the registry, trainer, server and monitor from a shell.
//!
//! Exit codes: 0 success, 1 a failed call (`error: CODE: message` on
//! stderr), 2 bad usage (clap) or a bad labels file (`feedback`), 3 `watch` fell behind compacted history.

mod commands;
mod feedback;
mod monitor;
mod monitor_output;
mod output;
mod phaseout;
mod serving;
mod status;
mod train;
mod up;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use evergreen_proto::v1::VersionStatus;
use tonic::{Code, Status};

#[derive(Parser)]
#[command(
    name = "evergreen",
    version,
    about = "Drive Evergreen (registry, trainer, server, monitor) from a shell"
)]
struct Cli {
    /// Registry gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "EVERGREEN_REGISTRY_URL",
        default_value = "http://127.0.0.1:7400",
        value_name = "URL"
    )]
    registry: String,

    /// Trainer gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "EVERGREEN_TRAINER_URL",
        default_value = "http://127.0.0.1:7401",
        value_name = "URL"
    )]
    trainer: String,

    /// Prediction server gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "EVERGREEN_SERVER_URL",
        default_value = "http://127.0.0.1:7402",
        value_name = "URL"
    )]
    server: String,

    /// Monitor gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "EVERGREEN_MONITOR_URL",
        default_value = "http://127.0.0.1:7403",
        value_name = "URL"
    )]
    monitor: String,

    /// Machine-readable output: one JSON value (per line for `watch`).
    #[arg(long, global = true)]
    json: bool,

    /// Who makes the change, recorded in the audit trail [default: $USER, else "cli"].
    #[arg(long, global = true, env = "EVERGREEN_ACTOR", value_name = "NAME")]
    actor: Option<String>,

    /// Bearer token sent with every call (daemons with auth need one).
    #[arg(
        long,
        global = true,
        env = "EVERGREEN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// File holding the bearer token (instead of --token).
    #[arg(long, global = true, env = "EVERGREEN_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// PEM CA bundle that signs the daemons' certificates, for https:// URLs
    /// [default: the system roots].
    #[arg(long, global = true, env = "EVERGREEN_CA", value_name = "PATH")]
    ca: Option<PathBuf>,

    /// PEM client certificate, for daemons that require mutual TLS.
    #[arg(long, global = true, env = "EVERGREEN_CERT", value_name = "PATH")]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, global = true, env = "EVERGREEN_KEY", value_name = "PATH")]
    key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, inspect and delete models.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Register, inspect, download and retire model versions.
    #[command(subcommand)]
    Versions(VersionsCmd),
    /// Move aliases (production, staging, ...) between versions.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Audit trail of one model, oldest first.
    History {
        name: String,
        /// Newest N entries only (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Train a model from a CSV and register it as a new version.
    Train(TrainArgs),
    /// Retrain a model with its current version's recipe on new data.
    Retrain {
        name: String,
        /// CSV file or s3://BUCKET/KEY, as for `train --data`.
        #[arg(long, value_name = "FILE|S3_URI")]
        data: String,
        /// Whose recipe to reuse (default production; else the latest version).
        #[arg(long, default_value = "")]
        alias: String,
        #[arg(long, value_name = "ALIAS")]
        promote_if_better: Option<String>,
        #[arg(long, value_name = "METRIC", default_value = "")]
        metric: String,
        #[arg(long, default_value_t = 0.0, value_name = "DELTA")]
        min_improvement: f64,
        #[arg(long)]
        detach: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List, inspect, follow and cancel training jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Score rows with a served model (MODEL is name, name@alias or name/N).
    Predict {
        model: String,
        /// A row of comma-separated values in feature order; empty = missing
        /// (repeatable).
        #[arg(long = "row", value_name = "V1,V2,...")]
        rows: Vec<String>,
        /// A CSV file with a header naming the features.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Columns of --file to leave out (e.g. the target) (repeatable).
        #[arg(long = "drop", value_name = "COL")]
        drop: Vec<String>,
        /// Request id to predict under (also picks the canary arm; default:
        /// generated). Printed either way: label the rows later with
        /// `evergreen feedback --request-id ID --row N`.
        #[arg(long, value_name = "ID", default_value = "")]
        request_id: String,
    },
    /// What the prediction server has loaded.
    Served,
    /// Move an alias back to its previous target (from the audit trail).
    Rollback {
        name: String,
        #[arg(long, default_value = "production")]
        alias: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Traffic policy of a model: canary weights and shadow version.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Drift, performance, service health, recent windows and signals of a
    /// version (default: the one behind `production`, else the latest).
    Health {
        name: String,
        #[arg(long, value_name = "V")]
        version: Option<u64>,
        #[arg(long, value_enum, default_value = "current")]
        window: monitor::WindowArg,
    },
    /// Retrain / rollback / retire signals the monitor raised, oldest first.
    Signals {
        /// Only this model's signals.
        name: Option<String>,
        /// Newest N only (0 = all).
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: u32,
        /// Then print new signals as they are raised, until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// A model's monitoring policy: thresholds, windows and allowed actions.
    #[command(subcommand)]
    Monitoring(MonitoringCmd),
    /// Send delayed labels (ground truth) of logged predictions to the
    /// monitor: one with --request-id, or a CSV with --file.
    Feedback(feedback::FeedbackArgs),
    /// Move a model's traffic from one version to another step by step
    /// (the registry runs the schedule, asking the monitor before each
    /// step), then deprecate the old one; or show, pause, resume, abort it.
    Phaseout(phaseout::PhaseoutArgs),
    /// Deprecate a version: still served, with a notice for its callers.
    ///
    /// Every response to the version carries the notice, the sunset time
    /// and the replacement. Same as `versions status REF deprecated`.
    Deprecate {
        name: String,
        version: u64,
        /// What callers see, e.g. "moving to version 4 on 2027-01-01".
        #[arg(long, value_name = "TEXT")]
        notice: String,
        /// When it stops being served (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        sunset: Option<evergreen_proto::Timestamp>,
        /// The version callers should move to.
        #[arg(long, value_name = "V")]
        replacement: Option<u64>,
    },
    /// Retire a version: the server stops serving it.
    ///
    /// Refused while an alias or the traffic policy still points at it
    /// (move them first). Then `evergreen archive` can archive it.
    Retire {
        name: String,
        version: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Archive a RETIRED version and print the archive URI (big artifacts
    /// may take a while).
    ///
    /// The registry sends its artifact, a manifest (record, lineage,
    /// metrics, audit and monitoring history, checksums) and, with
    /// --include-data, its training data to the archive target (S3 when
    /// [registry.archive.s3] has a bucket, else <data_dir>/archive). All is
    /// read back and verified before the version becomes ARCHIVED and its
    /// local copy is freed; a failure leaves it RETIRED. The call returns
    /// once the archive is verified.
    Archive {
        name: String,
        version: u64,
        /// Also archive the training data (when it is a local file that
        /// still matches the sha256 recorded at training).
        #[arg(long)]
        include_data: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Restore an ARCHIVED version: back as RETIRED (ACTIVE with
    /// --activate).
    ///
    /// The registry downloads the artifact from the archive, checks its
    /// sha256 against the manifest and the version record, and re-installs
    /// it; the version keeps its history and its archive URI.
    Restore {
        name: String,
        version: u64,
        /// Return as ACTIVE instead of RETIRED.
        #[arg(long)]
        activate: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start registry, trainer, server and monitor in this process.
    ///
    /// Embedded defaults: ports 7400-7403 on 127.0.0.1, state under
    /// ./.evergreen, no external service. Every daemon key works from
    /// --config and EVERGREEN_* (e.g. EVERGREEN_SERVER__LISTEN); the URLs
    /// between the daemons are wired to where they listen. Ctrl-C stops them
    /// all cleanly.
    Up(up::UpArgs),
    /// Play the demo against a fresh stack of its own (temp dir, free
    /// ports): a model's whole life, every step checked. Exit 0 when every
    /// step did what it should, else 1 with "demo: STEP: what went wrong".
    Demo,
    /// One table of the four daemons: up or down, version, address,
    /// uptime, and what each holds. Exit 1 when any is down.
    Status,
    /// Print registry events as they happen, until interrupted.
    Watch {
        /// Replay events after this revision first (default: from now on).
        #[arg(long, value_name = "REV")]
        from: Option<u64>,
        /// Only events of this model.
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// CSV file with a header row: a path on the trainer's machine (a local
    /// file is sent as an absolute path), or s3://BUCKET/KEY (the trainer
    /// downloads it; see [trainer.s3]).
    #[arg(long, value_name = "FILE|S3_URI")]
    data: String,
    /// Column to predict.
    #[arg(long, value_name = "COL")]
    target: String,
    /// Model to register the version under (created if new).
    #[arg(long, value_name = "NAME")]
    model: String,
    #[arg(long, value_enum, default_value = "random_forest")]
    algorithm: AlgorithmArg,
    /// Hyperparameter as KEY=VALUE; a comma list (max_depth=4,8,16) is a
    /// search space (repeatable).
    #[arg(long = "param", value_name = "K=V", value_parser = parse_kv)]
    params: Vec<(String, String)>,
    /// Cross-validation folds (0: none; 5 when searching).
    #[arg(long, default_value_t = 0, value_name = "K")]
    cv: u32,
    /// Seed for the split, folds, search and model (same seed + same data =
    /// same artifact).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out share of rows for the test metrics.
    #[arg(long, default_value_t = 0.3, value_name = "F")]
    test_fraction: f64,
    /// Use only these feature columns (repeatable; default: all but target).
    #[arg(long = "feature", value_name = "COL")]
    features: Vec<String>,
    /// Leave this column out (repeatable).
    #[arg(long = "exclude", value_name = "COL")]
    exclude: Vec<String>,
    /// Treat this column as categorical even if it looks numeric (repeatable).
    #[arg(long = "categorical", value_name = "COL")]
    categorical: Vec<String>,
    /// Sample --n-iter candidates instead of trying the whole grid.
    #[arg(long)]
    random_search: bool,
    #[arg(long, default_value_t = 10, value_name = "N")]
    n_iter: u32,
    /// Metric that picks the best candidate and gates promotion (default:
    /// accuracy, or r2 for regression).
    #[arg(long, value_name = "METRIC", default_value = "")]
    metric: String,
    /// Move this alias to the new version only if it beats the alias's
    /// current version on the same holdout (compare-and-set).
    #[arg(long, value_name = "ALIAS")]
    promote_if_better: Option<String>,
    /// Required improvement of --metric for --promote-if-better.
    #[arg(long, default_value_t = 0.0, value_name = "DELTA")]
    min_improvement: f64,
    /// Submit the job and return at once (follow it with `jobs watch`).
    #[arg(long)]
    detach: bool,
    #[arg(long, default_value = "")]
    reason: String,
    #[arg(long, default_value = "")]
    description: String,
    /// Tag the version with KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
    tags: Vec<(String, String)>,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum AlgorithmArg {
    DecisionTree,
    RandomForest,
    LogisticRegression,
    LinearRegression,
}

impl AlgorithmArg {
    fn name(self) -> &'static str {
        match self {
            AlgorithmArg::DecisionTree => "decision_tree",
            AlgorithmArg::RandomForest => "random_forest",
            AlgorithmArg::LogisticRegression => "logistic_regression",
            AlgorithmArg::LinearRegression => "linear_regression",
        }
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Split default traffic across versions and/or shadow one.
    Set {
        name: String,
        /// VERSION=WEIGHT, e.g. --weight 3=90 --weight 4=10 (repeatable).
        #[arg(long = "weight", value_name = "V=W", value_parser = parse_weight)]
        weights: Vec<(u64, u32)>,
        /// Version that scores a copy of each request, off the response path.
        #[arg(long, value_name = "VERSION", default_value_t = 0)]
        shadow: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove the policy: all default traffic to the served alias.
    Clear {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum MonitoringCmd {
    /// Show the effective policy.
    Get { name: String },
    /// Change the given fields of the policy (the rest stay as they are).
    Set {
        name: String,
        #[command(flatten)]
        edits: monitor::PolicyEdits,
    },
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Training jobs, newest first.
    List {
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job.
    Get { id: String },
    /// Follow a job's progress until it ends.
    Watch { id: String },
    /// Cancel a queued or running job (nothing is registered).
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Create a model.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Tag as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List every model.
    List,
    /// Show one model.
    Get { name: String },
    /// Change a model's description or tags.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Tag to set as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// Tag key to remove (repeatable).
        #[arg(long = "remove-tag", value_name = "KEY")]
        remove_tags: Vec<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete a model.
    Delete {
        name: String,
        /// Delete even if the model still has versions.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum VersionsCmd {
    /// Upload an artifact as the model's next version.
    Register(RegisterArgs),
    /// List the versions of a model.
    List { name: String },
    /// Show one version (REF is name@alias or name/N).
    Get {
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Two versions side by side: training metrics, and realized and
    /// estimated performance and drift over everything the monitor saw.
    Compare { name: String, v1: u64, v2: u64 },
    /// Download a version's artifact (REF is name@alias or name/N).
    Download {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// Change a version's status (REF is name@alias or name/N).
    Status {
        #[arg(value_name = "REF")]
        reference: String,
        status: StatusArg,
        /// Why; for `deprecated`, the notice callers of the version see.
        #[arg(long, default_value = "")]
        reason: String,
        /// With `deprecated`: when it stops being served (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        sunset: Option<evergreen_proto::Timestamp>,
        /// With `deprecated`: the version callers should move to.
        #[arg(long, value_name = "VERSION")]
        replacement: Option<u64>,
    },
    /// Delete a version (REF is name@alias or name/N).
    Delete {
        #[arg(value_name = "REF")]
        reference: String,
        /// Needed to delete an ARCHIVED version's record. Its archive (in
        /// S3 or the archive directory) is kept: remove it there if you mean
        /// to.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Args)]
pub struct RegisterArgs {
    /// Model name.
    pub name: String,
    /// Artifact file to upload.
    #[arg(long, value_name = "FILE")]
    pub artifact: PathBuf,
    /// Metric as KEY=NUMBER (repeatable).
    #[arg(long = "metric", value_name = "K=V", value_parser = parse_metric)]
    pub metrics: Vec<(String, f64)>,
    /// Training parameter as KEY=VALUE (repeatable).
    #[arg(long = "param", value_name = "K=V", value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    /// Tag as KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_kv)]
    pub tags: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Reject the upload unless the artifact has this sha256 (hex).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Point an alias at a version (compare-and-set with --expect).
    Set {
        name: String,
        alias: String,
        version: u64,
        /// Fail unless the alias currently points at this version (0: must not exist).
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove an alias.
    Delete {
        name: String,
        alias: String,
        /// Fail unless the alias currently points at this version.
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusArg {
    Active,
    Deprecated,
    Retired,
}

impl From<StatusArg> for VersionStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Active => VersionStatus::Active,
            StatusArg::Deprecated => VersionStatus::Deprecated,
            StatusArg::Retired => VersionStatus::Retired,
        }
    }
}

/// `KEY=VALUE` for `--tag` / `--param` (clap names the flag in its error).
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (e.g. team=search), got {s:?}")),
    }
}

/// `2026-12-31` (midnight UTC) or RFC 3339 for `--sunset`.
fn parse_time(s: &str) -> Result<evergreen_proto::Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        })
        .map_err(|_| {
            format!("expected RFC 3339 (2026-12-31T12:00:00Z) or a date (2026-12-31), got {s:?}")
        })?;
    Ok(evergreen_proto::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// `VERSION=WEIGHT` for `--weight`.
fn parse_weight(s: &str) -> Result<(u64, u32), String> {
    let shape = "expected VERSION=WEIGHT (e.g. 4=10)";
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{shape}, got {s:?}"))?;
    let v = v
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{shape}, got {s:?}: {v:?} is not a version number"))?;
    let w = w
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{shape}, got {s:?}: {w:?} is not a whole number"))?;
    Ok((v, w))
}

/// `KEY=NUMBER` for `--metric`.
fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let shape = "expected KEY=NUMBER (e.g. accuracy=0.93)";
    let (k, v) = parse_kv(s).map_err(|_| format!("{shape}, got {s:?}"))?;
    let v = v
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{shape}, got {s:?}: {v:?} is not a number"))?;
    Ok((k, v))
}

fn to_map<V>(pairs: Vec<(String, V)>) -> HashMap<String, V> {
    pairs.into_iter().collect()
}

/// The gRPC name of a status code, as in `error: NOT_FOUND: ...`.
pub fn code_name(code: Code) -> &'static str {
    evergreen_proto::codes::name(code)
}

/// Prints a failure to stderr: `error: CODE: message` for a gRPC status,
/// `error: message` for a local problem (unreadable file, ...).
fn report(err: &anyhow::Error) {
    match err.downcast_ref::<Status>() {
        Some(s) if s.message().is_empty() => eprintln!("error: {}", code_name(s.code())),
        // A transport failure (e.g. a TLS handshake refused) says why.
        Some(s) => match std::error::Error::source(s) {
            Some(cause) => eprintln!(
                "error: {}: {}: {}",
                code_name(s.code()),
                s.message(),
                commands::error_chain(cause)
            ),
            None => eprintln!("error: {}: {}", code_name(s.code()), s.message()),
        },
        None => eprintln!("error: {err:#}"),
    }
}

fn default_actor() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "cli".to_string())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let actor = cli.actor.unwrap_or_else(default_actor);
    let gate = |alias: Option<String>, metric: &str, min_improvement: f64| {
        alias.map(|alias| evergreen_proto::v1::Gate {
            alias,
            metric: metric.to_string(),
            min_improvement,
        })
    };
    match cli.command {
        Command::Up(args) => return Ok(up::up(args).await),
        Command::Demo => return Ok(up::demo().await),
        Command::Status => {
            let targets = vec![
                ("registry", cli.registry.clone()),
                ("trainer", cli.trainer.clone()),
                ("server", cli.server.clone()),
                ("monitor", cli.monitor.clone()),
            ];
            return Ok(status::run(targets, cli.json).await);
        }
        Command::Train(a) => {
            let mut t =
                train::TrainCtx::connect(&cli.trainer, commands::actor_value(&actor)?, cli.json)
                    .await?;
            let options = train::TrainOptions {
                gate: gate(a.promote_if_better, &a.metric, a.min_improvement),
                model: a.model,
                data: a.data,
                target: a.target,
                algorithm: a.algorithm.name().to_string(),
                params: a.params,
                cv: a.cv,
                seed: a.seed,
                test_fraction: a.test_fraction,
                features: a.features,
                exclude: a.exclude,
                categorical: a.categorical,
                random_search: a.random_search,
                n_iter: a.n_iter,
                metric: a.metric,
                reason: a.reason,
                description: a.description,
                tags: a.tags,
            };
            t.train(options, a.detach).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Retrain {
            name,
            data,
            alias,
            promote_if_better,
            metric,
            min_improvement,
            detach,
            reason,
        } => {
            let mut t =
                train::TrainCtx::connect(&cli.trainer, commands::actor_value(&actor)?, cli.json)
                    .await?;
            t.retrain(
                name,
                data,
                alias,
                reason,
                gate(promote_if_better, &metric, min_improvement),
                detach,
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Jobs(cmd) => {
            let mut t =
                train::TrainCtx::connect(&cli.trainer, commands::actor_value(&actor)?, cli.json)
                    .await?;
            match cmd {
                JobsCmd::List { model, limit } => t.list(model, limit).await?,
                JobsCmd::Get { id } => t.get(id).await?,
                JobsCmd::Watch { id } => t.watch(id).await?,
                JobsCmd::Cancel { id, reason } => t.cancel(id, reason).await?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Predict {
            model,
            rows,
            file,
            drop,
            request_id,
        } => {
            let mut all: Vec<evergreen_proto::v1::Row> =
                rows.iter().map(|r| serving::parse_row(r)).collect();
            if let Some(f) = file {
                all.extend(serving::read_csv_rows(&f, &drop)?);
            }
            let mut s = serving::ServeCtx::connect(&cli.server, cli.json).await?;
            s.predict(model, all, request_id).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Served => {
            let mut s = serving::ServeCtx::connect(&cli.server, cli.json).await?;
            s.served().await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Health {
            name,
            version,
            window,
        } => {
            let (version, resolved) = match version {
                Some(v) => (v, ""),
                None => {
                    commands::Ctx::connect(&cli.registry, &actor, cli.json)
                        .await?
                        .default_version(&name)
                        .await?
                }
            };
            let mut m = monitor::MonitorCtx::connect(&cli.monitor, cli.json).await?;
            m.health(name, version, resolved, window).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Signals { name, limit, watch } => {
            let mut m = monitor::MonitorCtx::connect(&cli.monitor, cli.json).await?;
            m.signals(name, limit, watch).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Feedback(args) => {
            // Bad labels are the caller's input: one line, exit 2, nothing sent.
            let labels = match args.labels() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            feedback::send(&cli.monitor, labels, cli.json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Phaseout(args) => {
            phaseout::PhaseoutCtx::connect(&cli.registry, &actor, cli.json)
                .await?
                .run(args)
                .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Monitoring(cmd) => {
            if let MonitoringCmd::Set { edits, .. } = &cmd {
                if edits.is_empty() {
                    // A usage error (exit 2), like clap's own.
                    Cli::command()
                        .error(
                            clap::error::ErrorKind::MissingRequiredArgument,
                            "monitoring set needs at least one field to change, e.g. --min-rows 200 (see `evergreen monitoring set --help`)",
                        )
                        .exit();
                }
            }
            let mut m = monitor::MonitorCtx::connect(&cli.monitor, cli.json).await?;
            match cmd {
                MonitoringCmd::Get { name } => m.get_policy(name).await?,
                MonitoringCmd::Set { name, edits } => m.set_policy(name, edits).await?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let mut ctx = commands::Ctx::connect(&cli.registry, &actor, cli.json).await?;
    match cli.command {
        Command::Models(cmd) => match cmd {
            ModelsCmd::Create {
                name,
                description,
                tags,
                reason,
            } => {
                ctx.create_model(name, description, to_map(tags), reason)
                    .await?
            }
            ModelsCmd::List => ctx.list_models().await?,
            ModelsCmd::Get { name } => ctx.get_model(name).await?,
            ModelsCmd::Update {
                name,
                description,
                tags,
                remove_tags,
                reason,
            } => {
                ctx.update_model(name, description, to_map(tags), remove_tags, reason)
                    .await?
            }
            ModelsCmd::Delete {
                name,
                force,
                reason,
            } => ctx.delete_model(name, force, reason).await?,
        },
        Command::Versions(cmd) => match cmd {
            VersionsCmd::Register(args) => ctx.register_version(args).await?,
            VersionsCmd::List { name } => ctx.list_versions(name).await?,
            VersionsCmd::Get { reference } => ctx.get_version(reference).await?,
            VersionsCmd::Download { reference, output } => ctx.download(reference, output).await?,
            VersionsCmd::Compare { name, v1, v2 } => {
                let mut m = monitor::MonitorCtx::connect(&cli.monitor, cli.json).await?;
                m.compare(&mut ctx, name, v1, v2).await?
            }
            VersionsCmd::Status {
                reference,
                status,
                reason,
                sunset,
                replacement,
            } => {
                ctx.set_status(
                    commands::version_ref(reference),
                    status.into(),
                    reason,
                    sunset,
                    replacement.unwrap_or(0),
                )
                .await?
            }
            VersionsCmd::Delete {
                reference,
                force,
                reason,
            } => ctx.delete_version(reference, force, reason).await?,
        },
        Command::Alias(cmd) => match cmd {
            AliasCmd::Set {
                name,
                alias,
                version,
                expect,
                reason,
            } => ctx.set_alias(name, alias, version, expect, reason).await?,
            AliasCmd::Delete {
                name,
                alias,
                expect,
                reason,
            } => ctx.delete_alias(name, alias, expect, reason).await?,
        },
        Command::History { name, limit } => ctx.history(name, limit).await?,
        Command::Deprecate {
            name,
            version,
            notice,
            sunset,
            replacement,
        } => {
            ctx.set_status(
                commands::numbered(name, version),
                VersionStatus::Deprecated,
                notice,
                sunset,
                replacement.unwrap_or(0),
            )
            .await?
        }
        Command::Retire {
            name,
            version,
            reason,
        } => {
            ctx.set_status(
                commands::numbered(name, version),
                VersionStatus::Retired,
                reason,
                None,
                0,
            )
            .await?
        }
        Command::Archive {
            name,
            version,
            include_data,
            reason,
        } => ctx.archive(name, version, include_data, reason).await?,
        Command::Restore {
            name,
            version,
            activate,
            reason,
        } => ctx.restore(name, version, activate, reason).await?,
        Command::Watch { from, model } => return ctx.watch(from, model).await,
        Command::Rollback {
            name,
            alias,
            reason,
        } => ctx.rollback(name, alias, reason).await?,
        Command::Policy(PolicyCmd::Set {
            name,
            weights,
            shadow,
            reason,
        }) => ctx.set_policy(name, weights, shadow, reason).await?,
        Command::Policy(PolicyCmd::Clear { name, reason }) => {
            ctx.set_policy(name, Vec::new(), 0, reason).await?
        }
        Command::Train(_)
        | Command::Retrain { .. }
        | Command::Jobs(_)
        | Command::Predict { .. }
        | Command::Served
        | Command::Health { .. }
        | Command::Signals { .. }
        | Command::Feedback(_)
        | Command::Phaseout(_)
        | Command::Monitoring(_)
        | Command::Up(_)
        | Command::Demo
        | Command::Status => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = evergreen_runtime::ClientConfig {
        ca: cli.ca.clone().unwrap_or_default(),
        cert: cli.cert.clone().unwrap_or_default(),
        key: cli.key.clone().unwrap_or_default(),
        token_file: cli.token_file.clone().unwrap_or_default(),
        token: cli.token.clone().unwrap_or_default(),
    };
    match evergreen_runtime::client::Client::new(&client, &evergreen_runtime::client::Keys::Flags) {
        Ok(c) => commands::set_client(c),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    // A client command needs one thread; `up` and `demo` run four daemons.
    let mut rt = match cli.command {
        Command::Up(_) | Command::Demo => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_cli_environment_variable_is_accepted_by_the_daemons() {
        // A user who exports EVERGREEN_ACTOR (or any variable the CLI reads)
        // must still be able to start a daemon from the same shell.
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.push(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut vars = Vec::new();
        walk(&<super::Cli as clap::CommandFactory>::command(), &mut vars);
        assert!(
            vars.iter().any(|v| v == "EVERGREEN_REGISTRY_URL"),
            "{vars:?}"
        );
        for var in vars {
            let key = var
                .strip_prefix("EVERGREEN_")
                .unwrap_or_else(|| panic!("{var}: CLI variables start with EVERGREEN_"))
                .to_lowercase();
            assert!(
                key.contains("__") || evergreen_runtime::config::TOP_LEVEL_KEYS.contains(&key.as_str()),
                "{var} is read by the CLI but a daemon would reject it: add `{key}` to evergreen_runtime::config::TOP_LEVEL_KEYS"
            );
        }
    }

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_pairs() {
        assert_eq!(
            parse_kv("team=search"),
            Ok(("team".into(), "search".into()))
        );
        assert_eq!(parse_kv("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_kv("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_kv("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_kv("=v").is_err());
    }

    #[test]
    fn metrics_are_numbers() {
        assert_eq!(parse_metric("accuracy=0.93"), Ok(("accuracy".into(), 0.93)));
        assert_eq!(parse_metric("loss=1e-3"), Ok(("loss".into(), 0.001)));
        let err = parse_metric("accuracy=high").unwrap_err();
        assert!(
            err.contains("KEY=NUMBER") && err.contains("not a number"),
            "{err}"
        );
        assert!(parse_metric("accuracy").unwrap_err().contains("KEY=NUMBER"));
    }

    #[test]
    fn bad_metric_names_the_flag() {
        let err = match Cli::try_parse_from([
            "evergreen",
            "versions",
            "register",
            "demo",
            "--artifact",
            "m.bin",
            "--metric",
            "acc",
        ]) {
            Ok(_) => panic!("a bad --metric must not parse"),
            Err(e) => e,
        };
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--metric"), "{err}");
    }

    #[test]
    fn code_names_are_screaming_snake_case() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        match Cli::try_parse_from(args) {
            Ok(_) => panic!("{args:?} must not parse"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_policy_overrides_are_usage_errors_naming_the_flag() {
        let base = ["evergreen", "monitoring", "set", "churn"];
        for (flag, value, expected) in [
            ("--test", "age", "expected FEATURE=TEST"),
            ("--test", "age=anova", "unknown test"),
            ("--threshold", "age", "expected FEATURE=NUMBER"),
            ("--threshold", "age=high", "expected FEATURE=NUMBER"),
            (
                "--cooldown",
                "ten minutes",
                "expected a duration like 30s, 10m",
            ),
            ("--retrain", "maybe", "--retrain"),
            ("--drift-share", "2", "between 0 and 1"),
        ] {
            let mut args = base.to_vec();
            args.extend([flag, value]);
            let err = parse_err(&args);
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(expected), "{text}");
        }
        // Nothing to change is refused before connecting (exit 2, in `run`).
        let cli = Cli::try_parse_from(base).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cli.command,
            Command::Monitoring(MonitoringCmd::Set { ref edits, .. }) if edits.is_empty()
        ));
    }

    #[test]
    fn policy_flags_parse() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "monitoring",
            "set",
            "churn",
            "--cooldown",
            "10m",
            "--retrain",
            "false",
            "--test",
            "age=ks",
            "--test",
            "plan=chi2",
            "--threshold",
            "age=0.01",
            "--monitor",
            "http://monitor:1",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.monitor, "http://monitor:1");
        let Command::Monitoring(MonitoringCmd::Set { name, edits }) = cli.command else {
            panic!("not monitoring set");
        };
        assert_eq!(name, "churn");
        assert_eq!(edits.cooldown, Some(600));
        assert_eq!(edits.retrain, Some(false));
        assert_eq!(edits.retire, None);
        assert_eq!(edits.tests.len(), 2);
        assert_eq!(edits.thresholds, vec![("age".to_string(), Some(0.01))]);
    }

    #[test]
    fn monitor_commands_parse() {
        let cli = Cli::try_parse_from(["evergreen", "versions", "compare", "churn", "2", "3"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cli.command,
            Command::Versions(VersionsCmd::Compare { v1: 2, v2: 3, .. })
        ));
        let cli =
            Cli::try_parse_from(["evergreen", "health", "churn", "--window", "long", "--json"])
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Health {
                version: None,
                window: monitor::WindowArg::Long,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["evergreen", "signals", "--watch", "--limit", "5"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cli.command,
            Command::Signals {
                name: None,
                limit: 5,
                watch: true
            }
        ));
        assert_eq!(
            parse_err(&["evergreen", "health", "churn", "--window", "week"]).exit_code(),
            2
        );
    }

    #[test]
    fn feedback_takes_one_label_or_a_file() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "feedback",
            "--request-id",
            "req-1",
            "--label",
            "1",
            "--row",
            "3",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Feedback(args) = cli.command else {
            panic!("not feedback");
        };
        let labels = args.labels().unwrap();
        assert_eq!(
            (
                labels[0].request_id.as_str(),
                labels[0].label.as_str(),
                labels[0].row
            ),
            ("req-1", "1", 3)
        );
        let cli = Cli::try_parse_from([
            "evergreen",
            "feedback",
            "--request-id",
            "r",
            "--value",
            "-2.5",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Feedback(args) = cli.command else {
            panic!("not feedback");
        };
        assert_eq!(args.labels().unwrap()[0].value, -2.5);
        assert!(matches!(
            Cli::try_parse_from(["evergreen", "feedback", "--file", "labels.csv", "--json"])
                .unwrap_or_else(|e| panic!("{e}"))
                .command,
            Command::Feedback(feedback::FeedbackArgs { file: Some(_), .. })
        ));
        for bad in [
            &["evergreen", "feedback"][..],
            &["evergreen", "feedback", "--request-id", "r"],
            &[
                "evergreen",
                "feedback",
                "--request-id",
                "r",
                "--label",
                "1",
                "--value",
                "2",
            ],
            &[
                "evergreen",
                "feedback",
                "--file",
                "l.csv",
                "--request-id",
                "r",
                "--label",
                "1",
            ],
            &["evergreen", "feedback", "--file", "l.csv", "--label", "1"],
            &["evergreen", "feedback", "--file", "l.csv", "--row", "1"],
            &[
                "evergreen",
                "feedback",
                "--request-id",
                "r",
                "--value",
                "inf",
            ],
        ] {
            assert_eq!(parse_err(bad).exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn phaseout_starts_or_acts_on_one() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "phaseout",
            "churn",
            "--from",
            "3",
            "--to",
            "4",
            "--steps",
            "10,25,50,100",
            "--every",
            "10m",
            "--retire-after",
            "1h",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Phaseout(a) = cli.command else {
            panic!("not phaseout");
        };
        assert!(a.action.is_none());
        assert_eq!(a.name.as_deref(), Some("churn"));
        assert_eq!((a.from, a.to), (Some(3), Some(4)));
        assert_eq!(a.steps, Some(phaseout::Steps(vec![10, 25, 50, 100])));
        assert_eq!((a.every, a.retire_after), (Some(600), Some(3600)));

        let cli = Cli::try_parse_from(["evergreen", "phaseout", "status", "churn", "--json"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Phaseout(phaseout::PhaseoutArgs {
                action: Some(phaseout::PhaseoutCmd::Status { ref name }),
                ..
            }) if name == "churn"
        ));
        for (verb, want) in [("pause", "Pause"), ("resume", "Resume"), ("abort", "Abort")] {
            let cli = Cli::try_parse_from(["evergreen", "phaseout", verb, "churn"])
                .unwrap_or_else(|e| panic!("{e}"));
            let Command::Phaseout(a) = cli.command else {
                panic!("not phaseout");
            };
            assert!(format!("{:?}", a.action).starts_with(&format!("Some({want} ")));
        }
        // Usage errors name the flag (exit 2).
        let base = ["evergreen", "phaseout", "churn", "--from", "3", "--to", "4"];
        for (extra, expected) in [
            (&["--steps", "10,x", "--every", "1m"][..], "--steps"),
            (&["--steps", "50,100", "--every", "0s"], "at least 1s"),
            (&["--steps", "50,100", "--every", "soon"], "--every"),
            (&["--steps", "50,100"], "--every"),
            (&["--every", "1m"], "--steps"),
        ] {
            let mut args = base.to_vec();
            args.extend(extra);
            let err = parse_err(&args);
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        assert_eq!(
            parse_err(&[
                "evergreen",
                "phaseout",
                "churn",
                "--steps",
                "100",
                "--every",
                "1s"
            ])
            .exit_code(),
            2,
            "--from and --to are required"
        );
    }

    #[test]
    fn lifecycle_commands_parse() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "deprecate",
            "churn",
            "3",
            "--notice",
            "use version 4",
            "--sunset",
            "2027-01-01",
            "--replacement",
            "4",
            "--json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.json);
        let Command::Deprecate {
            name,
            version,
            notice,
            sunset,
            replacement,
        } = cli.command
        else {
            panic!("not deprecate");
        };
        assert_eq!(
            (name.as_str(), version, notice.as_str()),
            ("churn", 3, "use version 4")
        );
        assert_eq!(sunset.map(|t| t.seconds), Some(1_798_761_600));
        assert_eq!(replacement, Some(4));
        assert!(matches!(
            Cli::try_parse_from(["evergreen", "retire", "churn", "3", "--reason", "old"])
                .unwrap_or_else(|e| panic!("{e}"))
                .command,
            Command::Retire { version: 3, ref reason, .. } if reason == "old"
        ));
        assert!(matches!(
            Cli::try_parse_from(["evergreen", "archive", "churn", "3", "--include-data"])
                .unwrap_or_else(|e| panic!("{e}"))
                .command,
            Command::Archive {
                version: 3,
                include_data: true,
                ..
            }
        ));
        assert!(matches!(
            Cli::try_parse_from(["evergreen", "restore", "churn", "3", "--activate"])
                .unwrap_or_else(|e| panic!("{e}"))
                .command,
            Command::Restore {
                version: 3,
                activate: true,
                ..
            }
        ));
        assert!(matches!(
            Cli::try_parse_from(["evergreen", "versions", "delete", "churn/3", "--force"])
                .unwrap_or_else(|e| panic!("{e}"))
                .command,
            Command::Versions(VersionsCmd::Delete { force: true, .. })
        ));
        for (bad, expected) in [
            (&["evergreen", "deprecate", "churn", "3"][..], "--notice"),
            (
                &[
                    "evergreen",
                    "deprecate",
                    "churn",
                    "3",
                    "--notice",
                    "n",
                    "--sunset",
                    "soon",
                ],
                "--sunset",
            ),
            (&["evergreen", "retire", "churn", "three"], "VERSION"),
        ] {
            let err = parse_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn predict_takes_a_request_id() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "predict",
            "bc",
            "--file",
            "rows.csv",
            "--request-id",
            "batch-7",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cli.command,
            Command::Predict { ref request_id, .. } if request_id == "batch-7"
        ));
    }

    #[tokio::test]
    async fn unreachable_monitor_names_the_url_flag_and_env() {
        let err = commands::connect("127.0.0.1:1", "monitor")
            .await
            .unwrap_err();
        let status = err.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), Code::Unavailable);
        let msg = status.message();
        assert!(
            msg.starts_with(
                "cannot reach the monitor at http://127.0.0.1:1 (set --monitor or EVERGREEN_MONITOR_URL)"
            ),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "evergreen",
            "alias",
            "set",
            "demo",
            "production",
            "3",
            "--expect",
            "0",
            "--json",
            "--registry",
            "http://127.0.0.1:1",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.json);
        assert_eq!(cli.registry, "http://127.0.0.1:1");
        assert!(matches!(
            cli.command,
            Command::Alias(AliasCmd::Set {
                expect: Some(0),
                version: 3,
                ..
            })
        ));
    }
}
