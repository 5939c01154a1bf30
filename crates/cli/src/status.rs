//! `evergreen status`: one table of the four daemons — up or down, build
//! version, address, uptime and what each holds (`evergreen.v1.Status`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use evergreen_proto::v1::status_client::StatusClient;
use evergreen_proto::v1::{DaemonStatus, GetStatusRequest};
use serde_json::{json, Map, Value};

use crate::output::{self, emit_json, Table};

/// How long one daemon gets to answer (connect + call).
const TIMEOUT: Duration = Duration::from_secs(5);

/// One daemon as `status` found it.
pub struct Found {
    pub daemon: &'static str,
    pub url: String,
    pub answer: Result<DaemonStatus, String>,
}

/// Asks one daemon for its status: the error is one line (unreachable,
/// timed out, or the call's status).
async fn ask(daemon: &'static str, url: String) -> Found {
    let call = async {
        let channel = crate::commands::connect(&url, daemon)
            .await
            .map_err(|e| match e.downcast_ref::<tonic::Status>() {
                Some(s) => s.message().to_string(),
                None => format!("{e:#}"),
            })?;
        StatusClient::new(channel)
            .get_status(GetStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{}: {}", crate::code_name(s.code()), s.message()))
    };
    let answer = match tokio::time::timeout(TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from the {daemon} at {url} within {} s",
            TIMEOUT.as_secs()
        )),
    };
    Found {
        daemon,
        url,
        answer,
    }
}

/// Asks every daemon at once, in the order given.
pub async fn gather(targets: Vec<(&'static str, String)>) -> Vec<Found> {
    futures::future::join_all(targets.into_iter().map(|(d, u)| ask(d, u))).await
}

fn started(s: &DaemonStatus) -> Option<SystemTime> {
    let t = s.started_at.as_ref()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
}

/// `42s`, `3m12s`, `2h05m`, `4d03h`.
pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn uptime_of(s: &DaemonStatus) -> Option<Duration> {
    started(s).map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
}

pub fn to_json(found: &[Found]) -> Value {
    Value::Array(
        found
            .iter()
            .map(|f| match &f.answer {
                Ok(s) => {
                    let holds: Map<String, Value> = s
                        .holdings
                        .iter()
                        .map(|h| (h.key.clone(), Value::from(h.value.clone())))
                        .collect();
                    json!({
                        "daemon": f.daemon,
                        "up": true,
                        "address": f.url,
                        "name": s.name,
                        "version": s.version,
                        "started_at": output::rfc3339(s.started_at.as_ref()),
                        "uptime_seconds": uptime_of(s).map(|d| d.as_secs()),
                        "holds": holds,
                    })
                }
                Err(e) => json!({
                    "daemon": f.daemon,
                    "up": false,
                    "address": f.url,
                    "error": e,
                }),
            })
            .collect(),
    )
}

pub fn table(found: &[Found]) -> Table {
    let mut t = Table::new(&["DAEMON", "STATE", "VERSION", "ADDRESS", "UPTIME", "HOLDS"]);
    for f in found {
        match &f.answer {
            Ok(s) => {
                let holds = s
                    .holdings
                    .iter()
                    .map(|h| format!("{} {}", h.key, h.value))
                    .collect::<Vec<_>>()
                    .join(", ");
                t.row(vec![
                    f.daemon.to_string(),
                    "up".into(),
                    s.version.clone(),
                    f.url.clone(),
                    uptime_of(s).map_or("-".into(), uptime),
                    holds,
                ]);
            }
            Err(e) => t.row(vec![
                f.daemon.to_string(),
                "down".into(),
                "-".into(),
                f.url.clone(),
                "-".into(),
                e.clone(),
            ]),
        }
    }
    t
}

/// Prints the table (or JSON); exit 1 when any daemon is down.
pub async fn run(targets: Vec<(&'static str, String)>, json: bool) -> ExitCode {
    let found = gather(targets).await;
    if json {
        emit_json(&to_json(&found));
    } else {
        table(&found).print();
    }
    let down: Vec<&str> = found
        .iter()
        .filter(|f| f.answer.is_err())
        .map(|f| f.daemon)
        .collect();
    if down.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} of {} daemons down: {}",
            down.len(),
            found.len(),
            down.join(", ")
        );
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_short_and_readable() {
        assert_eq!(uptime(Duration::from_secs(0)), "0s");
        assert_eq!(uptime(Duration::from_secs(59)), "59s");
        assert_eq!(uptime(Duration::from_secs(192)), "3m12s");
        assert_eq!(uptime(Duration::from_secs(2 * 3600 + 5 * 60 + 9)), "2h05m");
        assert_eq!(uptime(Duration::from_secs(4 * 86_400 + 3 * 3600)), "4d03h");
    }
}
