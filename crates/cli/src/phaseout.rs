//! `evergreen phaseout`: start a gradual phase-out (a schedule the registry
//! runs), show its progress, pause, resume or abort it.

use crate::commands::Channel;
use clap::{Args, Subcommand};
use evergreen_proto::metadata;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    GetPhaseoutRequest, Phaseout, PhaseoutAction, PhaseoutState, StartPhaseoutRequest,
    UpdatePhaseoutRequest,
};
use serde_json::{json, Value};
use tonic::metadata::AsciiMetadataValue;
use tonic::Request;

use crate::commands::{actor_value, connect};
use crate::monitor::parse_duration;
use crate::output::{emit_json, print_fields, rfc3339, short_time, Table};

/// `phaseout NAME --from V --to W --steps ... --every ...` starts one;
/// `phaseout status|pause|resume|abort NAME` acts on it.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PhaseoutArgs {
    #[command(subcommand)]
    pub action: Option<PhaseoutCmd>,
    /// Model whose traffic moves.
    #[arg(required = true)]
    pub name: Option<String>,
    /// The version to phase out.
    #[arg(long, value_name = "V", required = true)]
    pub from: Option<u64>,
    /// The version that takes over its traffic (must be ACTIVE).
    #[arg(long, value_name = "W", required = true)]
    pub to: Option<u64>,
    /// Percent of the traffic on --to at each step, strictly increasing,
    /// ending at 100.
    #[arg(long, value_name = "P1,P2,...", value_parser = parse_steps, required = true)]
    pub steps: Option<Steps>,
    /// Time between steps: 30s, 10m, 1h30m (at least 1s). Before each step
    /// after the first the monitor is asked whether --to is healthy.
    #[arg(long, value_name = "DURATION", value_parser = parse_every, required = true)]
    pub every: Option<u64>,
    /// Retire --from this long after the last step (default: only
    /// deprecate it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retire_after: Option<u64>,
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// The `--steps` list.
#[derive(Clone, Debug, PartialEq)]
pub struct Steps(pub Vec<u32>);

#[derive(Subcommand, Debug)]
pub enum PhaseoutCmd {
    /// Progress: state, weights, next step, each step's health check.
    Status { name: String },
    /// Hold the phase-out at its current step.
    Pause {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Continue a paused phase-out (the next step is due --every later).
    Resume {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop it and send all traffic back to --from (on a finished one:
    /// cancel the pending retirement).
    Abort {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `10,25,50,100` for `--steps` (the registry checks the order and range).
pub fn parse_steps(s: &str) -> Result<Steps, String> {
    let shape = format!("expected percentages like 10,25,50,100, got {s:?}");
    if s.trim().is_empty() {
        return Err(shape);
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("{shape}: {:?} is not a whole number", p.trim()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Steps)
}

/// `--every`: a duration of at least one second.
pub fn parse_every(s: &str) -> Result<u64, String> {
    match parse_duration(s)? {
        0 => Err(format!("expected at least 1s between steps, got {s:?}")),
        n => Ok(n),
    }
}

/// `5400` -> `1h30m`.
pub fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= n {
            out.push_str(&format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    out
}

pub struct PhaseoutCtx {
    client: RegistryClient<Channel>,
    actor: AsciiMetadataValue,
    json: bool,
}

impl PhaseoutCtx {
    pub async fn connect(url: &str, actor: &str, json: bool) -> anyhow::Result<Self> {
        let actor = actor_value(actor)?;
        Ok(Self {
            client: RegistryClient::new(connect(url, "registry").await?),
            actor,
            json,
        })
    }

    fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert(metadata::ACTOR, self.actor.clone());
        r
    }

    pub async fn run(&mut self, args: PhaseoutArgs) -> anyhow::Result<()> {
        let (name, action, reason) = match args.action {
            Some(PhaseoutCmd::Status { name }) => {
                let p = self
                    .client
                    .get_phaseout(self.req(GetPhaseoutRequest { model: name }))
                    .await?
                    .into_inner();
                self.show(&p);
                return Ok(());
            }
            Some(PhaseoutCmd::Pause { name, reason }) => (name, PhaseoutAction::Pause, reason),
            Some(PhaseoutCmd::Resume { name, reason }) => (name, PhaseoutAction::Resume, reason),
            Some(PhaseoutCmd::Abort { name, reason }) => (name, PhaseoutAction::Abort, reason),
            None => {
                // clap requires these without a subcommand.
                let request = StartPhaseoutRequest {
                    model: args.name.unwrap_or_default(),
                    from_version: args.from.unwrap_or_default(),
                    to_version: args.to.unwrap_or_default(),
                    steps: args.steps.map(|s| s.0).unwrap_or_default(),
                    every_seconds: args.every.unwrap_or_default(),
                    retire_after_seconds: args.retire_after.unwrap_or(0),
                    reason: args.reason,
                };
                let p = self
                    .client
                    .start_phaseout(self.req(request))
                    .await?
                    .into_inner();
                self.show(&p);
                return Ok(());
            }
        };
        let p = self
            .client
            .update_phaseout(self.req(UpdatePhaseoutRequest {
                model: name,
                action: action as i32,
                reason,
            }))
            .await?
            .into_inner();
        self.show(&p);
        Ok(())
    }

    fn show(&self, p: &Phaseout) {
        if self.json {
            emit_json(&phaseout_json(p));
        } else {
            print_phaseout(p);
        }
    }
}

/// Percent of the traffic on the new version now.
fn current_weight(p: &Phaseout) -> u32 {
    match p.state() {
        PhaseoutState::Halted | PhaseoutState::Aborted | PhaseoutState::Unspecified => 0,
        _ if p.step == 0 => 0,
        _ => p.steps.get(p.step as usize - 1).copied().unwrap_or(0),
    }
}

pub fn phaseout_json(p: &Phaseout) -> Value {
    json!({
        "model": p.model,
        "from_version": p.from_version,
        "to_version": p.to_version,
        "state": p.state().short_name(),
        "step": p.step,
        "steps": p.steps,
        "weight": current_weight(p),
        "every_seconds": p.every_seconds,
        "next_step_at": rfc3339(p.next_step_at.as_ref()),
        "started_at": rfc3339(p.started_at.as_ref()),
        "started_by": p.started_by,
        "updated_at": rfc3339(p.updated_at.as_ref()),
        "retire_after_seconds": p.retire_after_seconds,
        "retire_at": rfc3339(p.retire_at.as_ref()),
        "retired_at": rfc3339(p.retired_at.as_ref()),
        "reason": p.reason,
        "evidence": p.evidence,
        "waiting": p.waiting,
        "history": p.history.iter().map(|e| json!({
            "time": rfc3339(e.time.as_ref()),
            "step": e.step,
            "weight": e.weight,
            "health": e.health,
        })).collect::<Vec<_>>(),
    })
}

pub fn print_phaseout(p: &Phaseout) {
    let w = current_weight(p);
    let steps: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
    let mut fields = vec![
        ("model", p.model.clone()),
        (
            "phase-out",
            format!(
                "{} -> {} ({})",
                p.from_version,
                p.to_version,
                p.state().short_name()
            ),
        ),
        (
            "traffic",
            format!(
                "{w}% on {}, {}% on {} (step {}/{})",
                p.to_version,
                100 - w,
                p.from_version,
                p.step,
                p.steps.len()
            ),
        ),
        (
            "steps",
            format!(
                "{} every {}",
                steps.join(","),
                human_duration(p.every_seconds)
            ),
        ),
    ];
    if let Some(t) = rfc3339(p.next_step_at.as_ref()) {
        fields.push(("next step", t));
    }
    fields.push((
        "started",
        format!(
            "{} by {}",
            rfc3339(p.started_at.as_ref()).unwrap_or_default(),
            p.started_by
        ),
    ));
    if p.retire_after_seconds > 0 {
        let when = match (
            rfc3339(p.retired_at.as_ref()),
            rfc3339(p.retire_at.as_ref()),
        ) {
            (Some(done), _) => format!("retired at {done}"),
            (None, Some(at)) => format!("at {at}"),
            (None, None) if p.state() == PhaseoutState::Done => "cancelled".to_string(),
            (None, None) => "after the last step".to_string(),
        };
        fields.push((
            "retire",
            format!(
                "{}/{} {} after the last step: {when}",
                p.model,
                p.from_version,
                human_duration(p.retire_after_seconds)
            ),
        ));
    }
    if !p.waiting.is_empty() {
        fields.push(("waiting", p.waiting.clone()));
    }
    if !p.reason.is_empty() {
        fields.push(("reason", p.reason.clone()));
    }
    for e in &p.evidence {
        fields.push(("evidence", e.clone()));
    }
    print_fields(&fields);
    if !p.history.is_empty() {
        crate::output::emit("");
        let mut t = Table::new(&["TIME", "STEP", "WEIGHT", "HEALTH"]);
        for e in &p.history {
            t.row(vec![
                short_time(e.time.as_ref()),
                if e.step == 0 {
                    "-".to_string()
                } else {
                    format!("{}/{}", e.step, p.steps.len())
                },
                format!("{}%", e.weight),
                e.health.clone(),
            ]);
        }
        t.print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_durations_parse() {
        assert_eq!(
            parse_steps("10,25,50,100"),
            Ok(Steps(vec![10, 25, 50, 100]))
        );
        assert_eq!(parse_steps(" 50 , 100"), Ok(Steps(vec![50, 100])));
        for bad in ["", "10,,100", "10;100", "-5,100", "1.5,100"] {
            let err = parse_steps(bad).unwrap_err();
            assert!(
                err.contains("expected percentages like 10,25,50,100"),
                "{bad}: {err}"
            );
        }
        assert_eq!(parse_every("10m"), Ok(600));
        assert_eq!(parse_every("1s"), Ok(1));
        assert!(parse_every("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_every("soon")
            .unwrap_err()
            .contains("expected a duration"));
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(5_400), "1h30m");
        assert_eq!(human_duration(90_061), "1d1h1m1s");
    }

    #[test]
    fn history_shows_weights_and_health() {
        let p = Phaseout {
            model: "m".into(),
            from_version: 1,
            to_version: 2,
            steps: vec![50, 100],
            step: 1,
            state: PhaseoutState::Halted as i32,
            evidence: vec!["realized accuracy 0.1".into()],
            ..Default::default()
        };
        let j = phaseout_json(&p);
        assert_eq!(j["state"], "HALTED");
        assert_eq!(j["weight"], 0, "a halted phase-out sends nothing to --to");
        assert_eq!(j["evidence"][0], "realized accuracy 0.1");
    }
}
