//! `evergreen feedback`: delayed ground truth for logged predictions, sent
//! to the monitor by (request id, row).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args};
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{Feedback, RecordFeedbackRequest, RecordFeedbackResponse};
use serde_json::json;
use tonic::Status;

use crate::output::{emit, emit_json};

/// Labels per RecordFeedback call.
pub const BATCH: usize = 1000;

/// What a labels file must hold, for error messages.
const EXPECTED: &str =
    "expected a header with `request_id` and `label` (or `value`) columns, and optionally `row`";

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["request_id", "file"])))]
#[command(group(ArgGroup::new("truth").args(["label", "value"])))]
pub struct FeedbackArgs {
    /// The request id the server answered with (`evergreen predict` prints it).
    #[arg(long, value_name = "ID", requires = "truth")]
    pub request_id: Option<String>,
    /// The true class (classifiers).
    #[arg(long, value_name = "LABEL", conflicts_with = "file")]
    pub label: Option<String>,
    /// The true value (regression).
    #[arg(long, value_name = "X", conflicts_with = "file", allow_hyphen_values = true, value_parser = parse_finite)]
    pub value: Option<f64>,
    /// The row within the request: its index in `predict`'s ROW column
    /// [default: 0, the only row of a single-row request].
    #[arg(long, value_name = "N", conflicts_with = "file")]
    pub row: Option<u32>,
    /// A CSV of labels: a header with `request_id` and `label` (or `value`)
    /// columns, and optionally `row`; sent in batches of 1000.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

fn parse_finite(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("expected a finite number, got {s:?}"))
}

/// A problem with the labels the user gave, found before anything is sent
/// (exit 2).
#[derive(Debug, PartialEq)]
pub struct BadLabels(pub String);

impl fmt::Display for BadLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadLabels {}

impl FeedbackArgs {
    /// The labels to send: the one given by flags, or the file's.
    pub fn labels(&self) -> Result<Vec<Feedback>, BadLabels> {
        match (&self.file, &self.request_id) {
            (Some(path), _) => read_labels(path),
            (None, Some(id)) => {
                if id.trim().is_empty() {
                    return Err(BadLabels(
                        "--request-id is empty: expected the request id the server answered with"
                            .into(),
                    ));
                }
                Ok(vec![Feedback {
                    request_id: id.clone(),
                    label: self.label.clone().unwrap_or_default(),
                    value: self.value.unwrap_or_default(),
                    row: self.row.unwrap_or(0),
                }])
            }
            (None, None) => unreachable!("clap requires --request-id or --file"),
        }
    }
}

/// Reads a labels file (see [`parse_labels`]).
pub fn read_labels(path: &Path) -> Result<Vec<Feedback>, BadLabels> {
    let file = std::fs::File::open(path)
        .map_err(|e| BadLabels(format!("cannot read {}: {e}", path.display())))?;
    parse_labels(&path.display().to_string(), file).map_err(BadLabels)
}

/// Parses a labels CSV: a header naming `request_id` and `label` and/or
/// `value` (any order, other columns ignored), optionally `row` (empty =
/// 0). Errors name `name`, the line and the column.
pub fn parse_labels(name: &str, input: impl Read) -> Result<Vec<Feedback>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input);
    let header = reader
        .headers()
        .map_err(|e| format!("{name}: {}", csv_error(&e)))?
        .clone();
    if header.iter().all(str::is_empty) {
        return Err(format!("{name} is empty; {EXPECTED}"));
    }
    let column = |c: &str| header.iter().position(|h| h == c);
    let found = || {
        header
            .iter()
            .map(|h| format!("`{h}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let id_col = column("request_id").ok_or_else(|| {
        format!(
            "{name}: no `request_id` column; {EXPECTED} (found {})",
            found()
        )
    })?;
    let (label_col, value_col) = (column("label"), column("value"));
    if label_col.is_none() && value_col.is_none() {
        return Err(format!(
            "{name}: no `label` or `value` column; {EXPECTED} (found {})",
            found()
        ));
    }
    let row_col = column("row");

    let mut labels = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("{name}: {}", csv_error(&e)))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = |col: &str| format!("{name} line {line}: column {col}");
        if record.iter().all(str::is_empty) {
            continue;
        }
        let request_id = record[id_col].to_string();
        if request_id.is_empty() {
            return Err(format!(
                "{}: empty; expected the request id the server answered with",
                at("request_id")
            ));
        }
        let row = match row_col.map(|c| &record[c]) {
            None | Some("") => 0,
            Some(s) => s.parse::<u32>().map_err(|_| {
                format!(
                    "{}: {s:?} is not a row index (a whole number from 0)",
                    at("row")
                )
            })?,
        };
        let label = label_col.map_or("", |c| &record[c]).to_string();
        let value = match value_col.map(|c| &record[c]) {
            None | Some("") => None,
            Some(s) => Some(
                parse_finite(s)
                    .map_err(|_| format!("{}: {s:?} is not a finite number", at("value")))?,
            ),
        };
        if label.is_empty() && value.is_none() {
            let cols = match (label_col, value_col) {
                (Some(_), Some(_)) => "label and value are",
                (Some(_), None) => "label is",
                _ => "value is",
            };
            return Err(format!(
                "{name} line {line}: {cols} empty; expected the true class or value"
            ));
        }
        labels.push(Feedback {
            request_id,
            label,
            value: value.unwrap_or_default(),
            row,
        });
    }
    if labels.is_empty() {
        return Err(format!("{name} has a header but no labels"));
    }
    Ok(labels)
}

/// csv's errors, phrased like the rest of the CLI's.
fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "line {}: expected {expected_len} fields (as in the header), found {len}",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        csv::ErrorKind::Utf8 { pos, .. } => format!(
            "line {}: invalid UTF-8",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        _ => e.to_string(),
    }
}

/// Totals over every batch.
#[derive(Default, Debug, PartialEq)]
pub struct Outcome {
    pub sent: u64,
    pub batches: u64,
    pub matched: u64,
    pub unknown: u64,
    pub expired: u64,
    pub invalid: u64,
}

impl Outcome {
    fn add(&mut self, n: usize, r: &RecordFeedbackResponse) {
        self.sent += n as u64;
        self.batches += 1;
        self.matched += r.matched;
        self.unknown += r.unknown;
        self.expired += r.expired;
        self.invalid += r.invalid;
    }
}

/// Sends `labels` in batches of [`BATCH`] and prints the totals. A batch
/// that fails stops the rest; the error says how many were recorded.
pub async fn send(monitor_url: &str, labels: Vec<Feedback>, json: bool) -> anyhow::Result<()> {
    let channel = crate::commands::connect(monitor_url, "monitor").await?;
    let mut client = MonitorClient::new(channel);
    let total = labels.len();
    let mut o = Outcome::default();
    for (k, chunk) in labels.chunks(BATCH).enumerate() {
        let req = RecordFeedbackRequest {
            feedback: chunk.to_vec(),
        };
        match client.record_feedback(req).await {
            Ok(r) => o.add(chunk.len(), &r.into_inner()),
            Err(s) if total > BATCH => {
                return Err(Status::new(
                    s.code(),
                    format!(
                        "{} (batch {} of {}; {} of {total} labels were recorded before it)",
                        s.message(),
                        k + 1,
                        total.div_ceil(BATCH),
                        o.sent
                    ),
                )
                .into())
            }
            Err(s) => return Err(s.into()),
        }
    }
    if json {
        emit_json(&json!({
            "sent": o.sent,
            "batches": o.batches,
            "matched": o.matched,
            "unknown": o.unknown,
            "expired": o.expired,
            "invalid": o.invalid,
        }));
    } else {
        emit(format!(
            "matched {}, unknown {}, expired {}, invalid {}",
            o.matched, o.unknown, o.expired, o.invalid
        ));
        if o.unknown > 0 {
            eprintln!(
                "note: unknown = no logged prediction with that request id and row (not logged yet, not sampled, or a wrong --row)"
            );
        }
        if o.invalid > 0 {
            eprintln!("note: invalid = a label the model does not know, or a value for a classifier (or a label for a regression)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Feedback>, String> {
        parse_labels("labels.csv", text.as_bytes())
    }

    fn fb(id: &str, label: &str, value: f64, row: u32) -> Feedback {
        Feedback {
            request_id: id.into(),
            label: label.into(),
            value,
            row,
        }
    }

    #[test]
    fn labels_with_rows_in_any_column_order() {
        let got =
            parse("row,label,request_id,extra\n0,1,req-a,x\n2,0,req-a,y\n,1,req-b,z\n").unwrap();
        assert_eq!(
            got,
            vec![
                fb("req-a", "1", 0.0, 0),
                fb("req-a", "0", 0.0, 2),
                fb("req-b", "1", 0.0, 0),
            ]
        );
    }

    #[test]
    fn values_quotes_spaces_bom_and_blank_lines() {
        let got = parse("\u{feff}request_id , value\n r1 , -2.5 \n\n\"r,2\",1e3\n").unwrap();
        assert_eq!(got, vec![fb("r1", "", -2.5, 0), fb("r,2", "", 1000.0, 0)]);
        // Both columns: each row may use either (the monitor picks by model).
        let got = parse("request_id,label,value\na,yes,\nb,,3\n").unwrap();
        assert_eq!(got, vec![fb("a", "yes", 0.0, 0), fb("b", "", 3.0, 0)]);
    }

    #[test]
    fn a_missing_column_names_the_file_and_the_expected_columns() {
        let err = parse("id,label\nx,1\n").unwrap_err();
        assert!(
            err.starts_with("labels.csv: no `request_id` column;")
                && err.contains("`label` (or `value`)")
                && err.contains("found `id`, `label`"),
            "{err}"
        );
        let err = parse("request_id,target\nx,1\n").unwrap_err();
        assert!(
            err.starts_with("labels.csv: no `label` or `value` column;")
                && err.contains("found `request_id`, `target`"),
            "{err}"
        );
        assert!(parse("").unwrap_err().contains("labels.csv is empty"));
        assert!(parse("request_id,label\n")
            .unwrap_err()
            .contains("labels.csv has a header but no labels"));
    }

    #[test]
    fn bad_cells_name_the_line_and_column() {
        let cases = [
            (
                "request_id,label\n,1\n",
                "labels.csv line 2: column request_id: empty",
            ),
            (
                "request_id,label,row\na,1,0\nb,1,-1\n",
                "labels.csv line 3: column row: \"-1\" is not a row index",
            ),
            (
                "request_id,value\na,abc\n",
                "labels.csv line 2: column value: \"abc\" is not a finite number",
            ),
            (
                "request_id,value\na,NaN\n",
                "labels.csv line 2: column value: \"NaN\" is not a finite number",
            ),
            (
                "request_id,label\na,\n",
                "labels.csv line 2: label is empty",
            ),
            (
                "request_id,label\na,1\nb,1,extra\n",
                "labels.csv: line 3: expected 2 fields (as in the header), found 3",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = read_labels(Path::new("/nonexistent/labels.csv")).unwrap_err();
        assert!(
            err.0.starts_with("cannot read /nonexistent/labels.csv"),
            "{err}"
        );
    }
}
