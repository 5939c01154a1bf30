//! `evergreen`: drive the registry from a shell.
//!
//! Exit codes: 0 success, 1 a failed call (`error: CODE: message` on
//! stderr), 2 bad usage (clap), 3 `watch` fell behind compacted history.

mod commands;
mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use evergreen_proto::v1::VersionStatus;
use tonic::{Code, Status};

#[derive(Parser)]
#[command(
    name = "evergreen",
    version,
    about = "Drive the Evergreen model registry from a shell"
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

    /// Machine-readable output: one JSON value (per line for `watch`).
    #[arg(long, global = true)]
    json: bool,

    /// Who makes the change, recorded in the audit trail [default: $USER, else "cli"].
    #[arg(long, global = true, env = "EVERGREEN_ACTOR", value_name = "NAME")]
    actor: Option<String>,

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
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete a version (REF is name@alias or name/N).
    Delete {
        #[arg(value_name = "REF")]
        reference: String,
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
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Prints a failure to stderr: `error: CODE: message` for a gRPC status,
/// `error: message` for a local problem (unreadable file, ...).
fn report(err: &anyhow::Error) {
    match err.downcast_ref::<Status>() {
        Some(s) if s.message().is_empty() => eprintln!("error: {}", code_name(s.code())),
        Some(s) => eprintln!("error: {}: {}", code_name(s.code()), s.message()),
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
            VersionsCmd::Status {
                reference,
                status,
                reason,
            } => ctx.set_status(reference, status.into(), reason).await?,
            VersionsCmd::Delete { reference, reason } => {
                ctx.delete_version(reference, reason).await?
            }
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
        Command::Watch { from, model } => return ctx.watch(from, model).await,
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
