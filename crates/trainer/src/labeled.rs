//! Labeled rows added to a `Retrain`: checked against the current
//! version's schema, then appended to the base dataset as CSV lines in a new
//! file (`<data_dir>/retrain/<model>-<sha256 prefix>.csv`) that the job
//! trains on and the new version's lineage points at.
//!
//! Values follow the serving rules (`Pipeline::transform_row`): a numeric
//! feature takes a finite number, or text that parses as one; a categorical
//! feature takes text, or a number written in its shortest form; unset or
//! blank is missing. Every other column of the base file is left empty.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use evergreen_model::{FeatureKind, Schema, Task};
use sha2::{Digest, Sha256};

use crate::data;
use crate::error::TrainError;

/// Most labeled rows one `Retrain` accepts (checked by `Jobs::retrain`).
pub const MAX_ROWS: usize = 1_000_000;

/// One feature value as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Missing,
    Number(f64),
    Category(String),
}

/// A row to add: features (by position in the model's feature order, or by
/// name) and the answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabeledRow {
    pub values: Vec<Cell>,
    pub named: Vec<(String, Cell)>,
    /// Classification.
    pub label: String,
    /// Regression.
    pub value: f64,
}

/// Where the model's features and target sit in the base file's header.
#[derive(Debug)]
struct Layout {
    width: usize,
    features: Vec<usize>,
    target: usize,
}

fn layout(header: &[String], schema: &Schema, base: &Path) -> Result<Layout, TrainError> {
    let at = |name: &str, what: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            TrainError::InvalidArgument(format!(
                "dataset {} has no column {name:?} ({what}); labeled rows need the model's feature and target columns",
                base.display()
            ))
        })
    };
    Ok(Layout {
        width: header.len(),
        features: schema
            .features
            .iter()
            .map(|f| at(&f.name, "a feature of the model"))
            .collect::<Result<_, _>>()?,
        target: at(&schema.target.name, "the target")?,
    })
}

fn names(schema: &Schema) -> String {
    let f = &schema.features;
    match f.len() {
        0 => "none".into(),
        1..=8 => f
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        n => format!("{}..{}", f[0].name, f[n - 1].name),
    }
}

fn labels(schema: &Schema) -> String {
    match &schema.target.task {
        Task::Classification { labels } if labels.len() <= 10 => {
            format!(" (known: {})", labels.join(", "))
        }
        _ => String::new(),
    }
}

/// The CSV field for feature `f` of `schema`, or why the cell cannot be one.
fn field(kind: &FeatureKind, cell: &Cell) -> Result<String, String> {
    match (kind, cell) {
        (_, Cell::Missing) => Ok(String::new()),
        (_, Cell::Number(x)) if !x.is_finite() => Err(format!(
            "is {x}; expected a finite number or unset (missing)"
        )),
        (_, Cell::Number(x)) => Ok(format!("{x}")),
        (FeatureKind::Numeric, Cell::Category(s)) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(String::new());
            }
            match t.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(format!("{x}")),
                _ => Err(format!(
                    "is numeric; cannot use {s:?} (expected a finite number or unset)"
                )),
            }
        }
        (FeatureKind::Categorical { .. }, Cell::Category(s)) => Ok(s.clone()),
    }
}

/// Fills `out` (one field per header column) with row `i`.
fn encode(
    i: usize,
    row: &LabeledRow,
    schema: &Schema,
    layout: &Layout,
    version: &str,
    out: &mut Vec<String>,
) -> Result<(), TrainError> {
    let bad = |msg: String| TrainError::InvalidArgument(format!("rows[{i}]: {msg}"));
    out.clear();
    out.resize(layout.width, String::new());
    let n = schema.features.len();
    if !row.values.is_empty() && !row.named.is_empty() {
        return Err(bad(
            "features has both values and named; expected one of them".into(),
        ));
    }
    // Positional rows are whole, as Predict requires: a short one is more
    // likely misaligned than missing its tail (missing values are unset
    // cells, or `named` rows).
    if !row.values.is_empty() && row.values.len() != n {
        return Err(bad(format!(
            "{} feature values; {version} has {n} features ({}), in that order",
            row.values.len(),
            names(schema)
        )));
    }
    let mut put = |j: usize, cell: &Cell| -> Result<(), TrainError> {
        let f = &schema.features[j];
        out[layout.features[j]] = field(&f.kind, cell)
            .map_err(|why| bad(format!("feature {:?} (values[{j}]) {why}", f.name)))?;
        Ok(())
    };
    for (j, cell) in row.values.iter().enumerate() {
        put(j, cell)?;
    }
    for (name, cell) in &row.named {
        let j = schema.feature_index(name).ok_or_else(|| {
            bad(format!(
                "unknown feature {name:?}; {version} has {n} features ({})",
                names(schema)
            ))
        })?;
        put(j, cell)?;
    }
    out[layout.target] = match &schema.target.task {
        Task::Classification { .. } => {
            let label = row.label.trim();
            if label.is_empty() || data::is_missing(label) {
                return Err(bad(format!(
                    "label {:?} is empty or reads as missing; {version} is a classifier of {:?}, expected a class label{}",
                    row.label,
                    schema.target.name,
                    labels(schema)
                )));
            }
            row.label.clone()
        }
        Task::Regression => {
            if !row.value.is_finite() {
                return Err(bad(format!(
                    "value is {}; {version} is a regressor of {:?}, expected a finite number",
                    row.value, schema.target.name
                )));
            }
            format!("{}", row.value)
        }
    };
    Ok(())
}

/// Checks every row against `schema` and the base file's `header`, without
/// writing anything. `version` names the model version in messages.
pub fn check(
    rows: &[LabeledRow],
    schema: &Schema,
    header: &[String],
    base: &Path,
    version: &str,
) -> Result<(), TrainError> {
    let layout = layout(header, schema, base)?;
    let mut buf = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        encode(i, row, schema, &layout, version, &mut buf)?;
    }
    Ok(())
}

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `base` (unchanged) followed by one line per row into `dir`
/// (created if needed) as `<model>-<first 12 hex of its sha256>.csv`, and
/// returns its path and whether the file is new (the same content may have
/// been written before). Call `check` first: a row that does not encode here is
/// an error too, but only after the base was copied (the partial file is
/// removed).
pub fn write(
    rows: &[LabeledRow],
    schema: &Schema,
    header: &[String],
    base: &Path,
    dir: &Path,
    model: &str,
    version: &str,
) -> Result<(PathBuf, bool), TrainError> {
    let layout = layout(header, schema, base)?;
    let io = |what: &str, e: std::io::Error| {
        TrainError::Internal(format!("retrain data in {}: {what}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{model}-"))
        .suffix(".csv.tmp")
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a file", e))?;
    let sha = {
        let mut out = Hashing {
            inner: BufWriter::new(tmp.as_file()),
            hash: Sha256::new(),
        };
        let mut src = File::open(base).map_err(|e| data::open_error(base, e))?;
        let copied =
            std::io::copy(&mut src, &mut out).map_err(|e| io("cannot copy the base", e))?;
        if copied > 0 {
            let mut last = [0u8];
            src.seek(SeekFrom::End(-1))
                .and_then(|_| src.read_exact(&mut last))
                .map_err(|e| io("cannot read the base", e))?;
            if last[0] != b'\n' {
                out.write_all(b"\n").map_err(|e| io("cannot write", e))?;
            }
        }
        let mut csv = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(&mut out);
        let mut buf = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            encode(i, row, schema, &layout, version, &mut buf)?;
            csv.write_record(&buf)
                .map_err(|e| io("cannot write", e.into()))?;
        }
        csv.flush().map_err(|e| io("cannot write", e))?;
        drop(csv);
        out.flush().map_err(|e| io("cannot write", e))?;
        hex::encode(out.hash.finalize())
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| io("cannot write", e))?;
    let path = dir.join(format!("{model}-{}.csv", &sha[..12]));
    let fresh = !path.exists();
    tmp.persist(&path)
        .map_err(|e| io("cannot rename the file", e.error))?;
    Ok((path, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use evergreen_model::schema::{Feature, Target};

    fn schema(task: Task) -> Schema {
        Schema {
            features: vec![
                Feature {
                    name: "size".into(),
                    kind: FeatureKind::Numeric,
                },
                Feature {
                    name: "colour".into(),
                    kind: FeatureKind::Categorical {
                        categories: vec!["blue".into(), "red".into()],
                    },
                },
            ],
            target: Target {
                name: "y".into(),
                task,
            },
        }
    }

    fn classes() -> Task {
        Task::Classification {
            labels: vec!["no".into(), "yes".into()],
        }
    }

    fn header() -> Vec<String> {
        ["id", "colour", "y", "size"].map(String::from).to_vec()
    }

    fn row(values: Vec<Cell>, label: &str) -> LabeledRow {
        LabeledRow {
            values,
            label: label.into(),
            ..Default::default()
        }
    }

    fn err(rows: &[LabeledRow], s: &Schema) -> String {
        check(rows, s, &header(), Path::new("b.csv"), "m/1")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn appends_rows_in_header_order_quoting_what_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("b.csv");
        std::fs::write(&base, "id,colour,y,size\n1,red,no,2.5").unwrap();
        let rows = vec![
            row(
                vec![
                    Cell::Number(0.1),
                    Cell::Category("dark, \"deep\" red".into()),
                ],
                "yes",
            ),
            row(vec![Cell::Missing, Cell::Number(3.0)], "no"),
            row(vec![Cell::Category(" 1e3 ".into()), Cell::Missing], "no"),
            LabeledRow {
                named: vec![("colour".into(), Cell::Category("blue".into()))],
                label: "yes".into(),
                ..Default::default()
            },
        ];
        let s = schema(classes());
        check(&rows, &s, &header(), &base, "m/1").unwrap();
        let out = dir.path().join("retrain");
        let (p, fresh) = write(&rows, &s, &header(), &base, &out, "m", "m/1").unwrap();
        assert!(fresh);
        let body = std::fs::read(&p).unwrap();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "id,colour,y,size\n1,red,no,2.5\n\
             ,\"dark, \"\"deep\"\" red\",yes,0.1\n\
             ,3,no,\n\
             ,,no,1000\n\
             ,blue,yes,\n"
        );
        let sha = hex::encode(Sha256::digest(&body));
        assert_eq!(p, out.join(format!("m-{}.csv", &sha[..12])));
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "no temp file left"
        );
        let again = write(&rows, &s, &header(), &base, &out, "m", "m/1").unwrap();
        assert_eq!(again, (p, false), "same content, same file");
    }

    #[test]
    fn bad_rows_name_the_row_and_what_was_expected() {
        let s = schema(classes());
        let ok = row(vec![Cell::Number(1.0), Cell::Missing], "yes");
        let too_many = row(vec![Cell::Number(1.0); 3], "yes");
        assert_eq!(
            err(&[ok.clone(), too_many], &s),
            "rows[1]: 3 feature values; m/1 has 2 features (size, colour), in that order"
        );
        let e = err(&[ok.clone(), ok.clone(), row(vec![], "")], &s);
        assert!(e.starts_with("rows[2]: label \"\" is empty"), "{e}");
        assert!(e.contains("expected a class label (known: no, yes)"), "{e}");
        let e = err(
            &[row(
                vec![Cell::Category("big".into()), Cell::Missing],
                "yes",
            )],
            &s,
        );
        assert!(
            e.starts_with("rows[0]: feature \"size\" (values[0]) is numeric"),
            "{e}"
        );
        let e = err(
            &[row(vec![Cell::Number(f64::INFINITY), Cell::Missing], "yes")],
            &s,
        );
        assert!(e.contains("is inf; expected a finite number"), "{e}");
        let short = row(vec![Cell::Number(1.0)], "yes");
        assert_eq!(
            err(&[short], &s),
            "rows[0]: 1 feature values; m/1 has 2 features (size, colour), in that order"
        );
        let e = err(
            &[row(vec![Cell::Number(f64::INFINITY), Cell::Missing], "yes")],
            &s,
        );
        assert!(e.contains("is inf; expected a finite number"), "{e}");
        let unknown = LabeledRow {
            named: vec![("weight".into(), Cell::Number(1.0))],
            label: "yes".into(),
            ..Default::default()
        };
        assert!(err(&[unknown], &s).starts_with("rows[0]: unknown feature \"weight\""));
        let reg = schema(Task::Regression);
        let nan = LabeledRow {
            value: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            err(&[nan], &reg),
            "rows[0]: value is NaN; m/1 is a regressor of \"y\", expected a finite number"
        );
        let e = check(
            &[ok],
            &s,
            &["size".to_string(), "y".to_string()],
            Path::new("b.csv"),
            "m/1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("b.csv has no column \"colour\""), "{e}");
    }
}
