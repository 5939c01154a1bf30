//! `evergreen predict` and `evergreen served`: talk to the prediction server.

use std::path::Path;

use crate::commands::Channel;
use anyhow::{anyhow, Context};
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::{
    value, ListServedRequest, PredictRequest, PredictResponse, Row, Value as PbValue, VersionStatus,
};
use serde_json::{json, Value};

use crate::output::{self, emit, emit_json, Table};

pub struct ServeCtx {
    client: PredictorClient<Channel>,
    json: bool,
}

/// One CSV-ish cell: empty = missing, a number, or a category.
fn cell(s: &str) -> PbValue {
    let s = s.trim();
    PbValue {
        kind: if s.is_empty() {
            None
        } else if let Ok(x) = s.parse::<f64>() {
            Some(value::Kind::Number(x))
        } else {
            Some(value::Kind::Category(s.to_string()))
        },
    }
}

/// `--row 1.2,red,,3`: values by position.
pub fn parse_row(s: &str) -> Row {
    Row {
        values: s.split(',').map(cell).collect(),
        named: Default::default(),
    }
}

/// A CSV file with a header: rows by feature name, minus `drop` columns.
pub fn read_csv_rows(path: &Path, drop: &[String]) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| anyhow!("{} is empty; expected a header row", path.display()))?
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(anyhow!(
                "{} line {}: expected {} fields (as in the header), found {}",
                path.display(),
                i + 2,
                header.len(),
                cells.len()
            ));
        }
        let named = header
            .iter()
            .zip(cells)
            .filter(|(h, _)| !drop.contains(h))
            .map(|(h, c)| (h.clone(), cell(c)))
            .collect();
        rows.push(Row {
            values: Vec::new(),
            named,
        });
    }
    Ok(rows)
}

fn response_json(r: &PredictResponse) -> Value {
    json!({
        "model": r.model,
        "version": r.version,
        "request_id": r.request_id,
        "labels": r.labels,
        "predictions": r.predictions.iter().map(|p| if r.labels.is_empty() {
            json!({"value": p.value})
        } else {
            json!({"label": p.label, "probabilities": p.probabilities})
        }).collect::<Vec<_>>(),
        "deprecation": r.deprecation.as_ref().map(|d| json!({
            "notice": d.notice,
            "sunset_at": output::rfc3339(d.sunset_at.as_ref()),
            "replacement_version": d.replacement_version,
            "message": d.message,
        })),
    })
}

impl ServeCtx {
    pub async fn connect(url: &str, json: bool) -> anyhow::Result<Self> {
        let channel = crate::commands::connect(url, "server").await?;
        Ok(ServeCtx {
            client: PredictorClient::new(channel),
            json,
        })
    }

    pub async fn predict(
        &mut self,
        model: String,
        rows: Vec<Row>,
        request_id: String,
    ) -> anyhow::Result<()> {
        let r = self
            .client
            .predict(PredictRequest {
                model,
                rows,
                request_id,
            })
            .await?
            .into_inner();
        if let Some(d) = &r.deprecation {
            eprintln!("warning: {}", d.message);
        }
        if self.json {
            emit_json(&response_json(&r));
            return Ok(());
        }
        if r.labels.is_empty() {
            let mut t = Table::new(&["ROW", "VALUE"]);
            for (i, p) in r.predictions.iter().enumerate() {
                t.row(vec![i.to_string(), format!("{:.6}", p.value)]);
            }
            t.print();
        } else {
            let mut header = vec!["ROW".to_string(), "LABEL".to_string()];
            header.extend(r.labels.iter().map(|l| format!("P({l})")));
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = Table::new(&header);
            for (i, p) in r.predictions.iter().enumerate() {
                let mut row = vec![i.to_string(), p.label.clone()];
                row.extend(p.probabilities.iter().map(|x| format!("{x:.4}")));
                t.row(row);
            }
            t.print();
        }
        emit(format!(
            "served by {}/{} (request {})",
            r.model, r.version, r.request_id
        ));
        Ok(())
    }

    pub async fn served(&mut self) -> anyhow::Result<()> {
        let r = self
            .client
            .list_served(ListServedRequest {})
            .await?
            .into_inner();
        if self.json {
            emit_json(&json!({
                "ready": r.ready,
                "revision": r.revision,
                "models": r.models.iter().map(|m| json!({
                    "model": m.model,
                    "policy": m.policy.as_ref().map(output::policy_json),
                    "versions": m.versions.iter().map(|v| json!({
                        "version": v.version,
                        "aliases": v.aliases,
                        "status": output::status_name(v.status),
                        "sha256": v.sha256,
                        "loaded_at": output::rfc3339(v.loaded_at.as_ref()),
                        "predictions": v.predictions,
                    })).collect::<Vec<_>>(),
                    "failures": m.failures.iter().map(|f| json!({"version": f.version, "error": f.error})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "log": r.log.as_ref().map(|l| json!({"sent": l.sent, "dropped": l.dropped, "queued": l.queued})),
            }));
            return Ok(());
        }
        emit(format!(
            "{} at registry revision {}",
            if r.ready {
                "ready"
            } else {
                "NOT READY (loading)"
            },
            r.revision
        ));
        let mut t = Table::new(&[
            "MODEL",
            "VERSION",
            "ALIASES",
            "STATUS",
            "PREDICTIONS",
            "LOADED",
            "POLICY",
        ]);
        for m in &r.models {
            if m.versions.is_empty() {
                t.row(vec![
                    m.model.clone(),
                    "-".into(),
                    String::new(),
                    "nothing served".into(),
                    String::new(),
                    String::new(),
                    output::policy_text(&m.policy),
                ]);
            }
            for v in &m.versions {
                let status = VersionStatus::try_from(v.status)
                    .map_or("?".to_string(), |s| s.short_name().to_string());
                t.row(vec![
                    m.model.clone(),
                    v.version.to_string(),
                    v.aliases.join(","),
                    status,
                    v.predictions.to_string(),
                    output::rfc3339(v.loaded_at.as_ref()).unwrap_or_default(),
                    output::policy_text(&m.policy),
                ]);
            }
        }
        t.print();
        for m in &r.models {
            for f in &m.failures {
                emit(format!(
                    "load failure: {}/{}: {}",
                    m.model, f.version, f.error
                ));
            }
        }
        if let Some(l) = &r.log {
            emit(format!(
                "prediction log: {} sent, {} dropped, {} queued",
                l.sent, l.dropped, l.queued
            ));
        }
        Ok(())
    }
}
