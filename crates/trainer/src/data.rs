//! Loading a CSV into typed columns, with precise errors.
//!
//! Rules (documented in README.md):
//! - The first row is the header; names must be unique. A UTF-8 BOM is ignored.
//! - Missing values: empty, `NA`, `N/A`, `NaN`, `nan`, `null`, `NULL`, `?`.
//! - A feature column is numeric when its first non-missing value parses as
//!   a number, unless it is listed as categorical; a later value that does
//!   not parse is an error naming the line and column.
//! - The target is read as text for classification (labels) and as a
//!   number for regression; a missing target is an error.

use std::collections::HashMap;
use std::path::Path;

use evergreen_model::pipeline::{Column, MISSING_CODE};
use sha2::{Digest, Sha256};

use crate::error::TrainError;

const MISSING: &[&str] = &["", "NA", "N/A", "NaN", "nan", "null", "NULL", "?"];

pub(crate) fn is_missing(s: &str) -> bool {
    MISSING.contains(&s)
}

/// The target as loaded.
#[derive(Debug, Clone)]
pub enum TargetColumn {
    /// Class ids into `labels` (sorted numerically when every label is a
    /// number, else lexicographically).
    Classes {
        y: Vec<usize>,
        labels: Vec<String>,
    },
    Values(Vec<f64>),
}

impl TargetColumn {
    pub fn len(&self) -> usize {
        match self {
            TargetColumn::Classes { y, .. } => y.len(),
            TargetColumn::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded dataset: the selected feature columns and the target.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub sha256: String,
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub target_name: String,
    pub target: TargetColumn,
}

impl Dataset {
    pub fn rows(&self) -> usize {
        self.target.len()
    }
}

/// Which columns to load and how.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub target: String,
    pub classification: bool,
    /// Empty: every column but the target and `exclude`.
    pub features: Vec<String>,
    pub exclude: Vec<String>,
    pub categorical: Vec<String>,
}

/// Reads just the header, to check the request before queueing a job.
pub fn read_header(path: &Path) -> Result<Vec<String>, TrainError> {
    use std::io::{BufRead, BufReader};
    let file = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    let mut line = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(|e| TrainError::data(path, format!("cannot read: {e}")))?;
    // The BOM first, as `parse` does: a file of just a BOM is empty.
    let line = strip_bom(&line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(empty(path));
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line);
    let mut rec = csv::ByteRecord::new();
    rdr.read_byte_record(&mut rec)
        .map_err(|e| TrainError::data(path, format!("line 1: {e}")))?;
    header_names(path, &rec)
}

pub fn open_error(path: &Path, e: std::io::Error) -> TrainError {
    if e.kind() == std::io::ErrorKind::NotFound {
        TrainError::NotFound(format!("dataset {} does not exist", path.display()))
    } else {
        TrainError::data(path, format!("cannot open: {e}"))
    }
}

fn empty(path: &Path) -> TrainError {
    TrainError::data(
        path,
        "the file is empty; expected a header row and data rows",
    )
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

fn header_names(path: &Path, rec: &csv::ByteRecord) -> Result<Vec<String>, TrainError> {
    let mut names = Vec::with_capacity(rec.len());
    // A set, not `names.contains`: a header of a million columns must not
    // take 10^12 comparisons.
    let mut seen = std::collections::HashSet::with_capacity(rec.len());
    for (i, f) in rec.iter().enumerate() {
        let name = std::str::from_utf8(f)
            .map_err(|_| {
                TrainError::data(
                    path,
                    format!("line 1: column {}: header is not valid UTF-8", i + 1),
                )
            })?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(TrainError::data(
                path,
                format!("line 1: column {} has an empty name", i + 1),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(TrainError::data(
                path,
                format!("line 1: column name {} appears twice", quoted(&name)),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Checks a selection against a header; returns the indices of the feature
/// columns and of the target.
pub fn resolve(
    path: &Path,
    header: &[String],
    sel: &Selection,
) -> Result<(Vec<usize>, usize), TrainError> {
    let find = |what: &str, name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            TrainError::InvalidArgument(format!(
                "{what} column {} is not in {} (columns: {})",
                quoted(name),
                path.display(),
                column_list(header)
            ))
        })
    };
    let target = find("target", &sel.target)?;
    for e in &sel.exclude {
        find("excluded", e)?;
    }
    let features: Vec<usize> = if sel.features.is_empty() {
        (0..header.len())
            .filter(|&i| i != target && !sel.exclude.contains(&header[i]))
            .collect()
    } else {
        let mut v = Vec::new();
        for f in &sel.features {
            let i = find("feature", f)?;
            if i == target {
                return Err(TrainError::InvalidArgument(format!(
                    "column {} is the target; it cannot also be a feature",
                    quoted(f)
                )));
            }
            if !sel.exclude.contains(f) && !v.contains(&i) {
                v.push(i);
            }
        }
        v
    };
    for c in &sel.categorical {
        let i = find("categorical", c)?;
        if !features.contains(&i) {
            return Err(TrainError::InvalidArgument(format!(
                "categorical column {} is not one of the features",
                quoted(c)
            )));
        }
    }
    if features.is_empty() {
        return Err(TrainError::InvalidArgument(
            "no feature columns left: expected at least one column besides the target".into(),
        ));
    }
    Ok((features, target))
}

/// A value from the file or the request, quoted for a message: its first
/// 60 characters at most (a cell or a name can be megabytes long, and a
/// message must fit in a gRPC status).
fn quoted(s: &str) -> String {
    match s.char_indices().nth(60) {
        None => format!("{s:?}"),
        Some((at, _)) => format!("{:?}... ({} bytes)", &s[..at], s.len()),
    }
}

/// A column name for a message, unquoted, clipped like [`quoted`].
fn clip(s: &str) -> String {
    match s.char_indices().nth(60) {
        None => s.to_string(),
        Some((at, _)) => format!("{}... ({} bytes)", &s[..at], s.len()),
    }
}

/// The header's names for an error message: all of them when they are
/// few and short, else the first ones and how many more (a message must
/// stay short enough for a gRPC status, whatever the file).
fn column_list(header: &[String]) -> String {
    const MAX_CHARS: usize = 400;
    let mut out = String::new();
    for (i, name) in header.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        if out.len() + sep.len() + name.len() > MAX_CHARS {
            return format!("{out}{sep}... and {} more", header.len() - i);
        }
        out.push_str(sep);
        out.push_str(name);
    }
    out
}

enum Builder {
    /// Type not known yet: only missing values so far.
    Undecided {
        missing: usize,
        categorical: bool,
    },
    Numeric(Vec<f64>),
    Categorical {
        codes: Vec<u32>,
        index: HashMap<String, u32>,
        vocab: Vec<String>,
    },
}

impl Builder {
    fn push_categorical(
        codes: &mut Vec<u32>,
        index: &mut HashMap<String, u32>,
        vocab: &mut Vec<String>,
        s: &str,
    ) {
        let code = match index.get(s) {
            Some(c) => *c,
            None => {
                let c = vocab.len() as u32;
                index.insert(s.to_string(), c);
                vocab.push(s.to_string());
                c
            }
        };
        codes.push(code);
    }

    fn push(&mut self, s: &str) -> Result<(), String> {
        let missing = is_missing(s);
        match self {
            Builder::Undecided { missing: n, .. } if missing => *n += 1,
            Builder::Undecided {
                missing: n,
                categorical,
            } => {
                let n = *n;
                *self = if !*categorical && s.parse::<f64>().is_ok() {
                    Builder::Numeric(vec![f64::NAN; n])
                } else {
                    Builder::Categorical {
                        codes: vec![MISSING_CODE; n],
                        index: HashMap::new(),
                        vocab: Vec::new(),
                    }
                };
                return self.push(s);
            }
            Builder::Numeric(v) if missing => v.push(f64::NAN),
            Builder::Numeric(v) => match s.parse::<f64>() {
                Ok(x) if x.is_finite() => v.push(x),
                Ok(_) => return Err(format!("{} is not a finite number", quoted(s))),
                Err(_) => return Err(format!("cannot parse {} as a number", quoted(s))),
            },
            Builder::Categorical { codes, .. } if missing => codes.push(MISSING_CODE),
            Builder::Categorical {
                codes,
                index,
                vocab,
            } => Self::push_categorical(codes, index, vocab, s),
        }
        Ok(())
    }

    fn finish(self) -> Column {
        match self {
            Builder::Undecided { missing, .. } => Column::Numeric(vec![f64::NAN; missing]),
            Builder::Numeric(v) => Column::Numeric(v),
            Builder::Categorical { codes, vocab, .. } => Column::Categorical { codes, vocab },
        }
    }
}

/// Loads `bytes` (the file at `path`) with `sel`.
pub fn parse(path: &Path, bytes: &[u8], sel: &Selection) -> Result<Dataset, TrainError> {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let body = strip_bom(bytes);
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(empty(path));
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(body);
    let mut rec = csv::ByteRecord::new();
    rdr.read_byte_record(&mut rec)
        .map_err(|e| TrainError::data(path, format!("line 1: {e}")))?;
    let header = header_names(path, &rec)?;
    let (features, target_at) = resolve(path, &header, sel)?;
    let mut builders: Vec<Builder> = features
        .iter()
        .map(|&i| Builder::Undecided {
            missing: 0,
            categorical: sel.categorical.contains(&header[i]),
        })
        .collect();
    let mut target_text: Vec<u32> = Vec::new();
    let mut target_index: HashMap<String, u32> = HashMap::new();
    let mut target_vocab: Vec<String> = Vec::new();
    let mut target_values: Vec<f64> = Vec::new();
    let width = header.len();
    loop {
        let more = rdr.read_byte_record(&mut rec).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            TrainError::data(path, format!("line {line}: {e}"))
        })?;
        if !more {
            break;
        }
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() == 1 && rec[0].iter().all(|b| b.is_ascii_whitespace()) {
            continue; // blank line
        }
        if rec.len() != width {
            return Err(TrainError::data(
                path,
                format!(
                    "line {line}: expected {width} fields (as in the header), found {}",
                    rec.len()
                ),
            ));
        }
        let field = |i: usize| -> Result<&str, TrainError> {
            std::str::from_utf8(&rec[i]).map(str::trim).map_err(|_| {
                TrainError::data(
                    path,
                    format!(
                        "line {line}: column {}: value is not valid UTF-8",
                        clip(&header[i])
                    ),
                )
            })
        };
        for (b, &i) in builders.iter_mut().zip(&features) {
            b.push(field(i)?).map_err(|m| {
                TrainError::data(
                    path,
                    format!("line {line}: column {}: {m}", clip(&header[i])),
                )
            })?;
        }
        let t = field(target_at)?;
        if is_missing(t) {
            return Err(TrainError::data(
                path,
                format!(
                    "line {line}: column {}: the target is missing (every row needs one)",
                    clip(&header[target_at])
                ),
            ));
        }
        if sel.classification {
            Builder::push_categorical(&mut target_text, &mut target_index, &mut target_vocab, t);
        } else {
            match t.parse::<f64>() {
                Ok(x) if x.is_finite() => target_values.push(x),
                _ => {
                    return Err(TrainError::data(
                        path,
                        format!(
                            "line {line}: column {}: cannot parse {} as a number (regression needs a numeric target)",
                            clip(&header[target_at]),
                            quoted(t)
                        ),
                    ))
                }
            }
        }
    }
    let target = if sel.classification {
        let (y, labels) = sorted_labels(target_text, target_vocab);
        if labels.len() < 2 && !y.is_empty() {
            return Err(TrainError::data(
                path,
                format!(
                    "column {}: the target has a single class ({}); classification needs at least two",
                    clip(&header[target_at]),
                    quoted(&labels[0])
                ),
            ));
        }
        TargetColumn::Classes { y, labels }
    } else {
        TargetColumn::Values(target_values)
    };
    if target.is_empty() {
        return Err(TrainError::data(path, "no data rows after the header"));
    }
    Ok(Dataset {
        sha256,
        names: features.iter().map(|&i| header[i].clone()).collect(),
        columns: builders.into_iter().map(Builder::finish).collect(),
        target_name: header[target_at].clone(),
        target,
    })
}

/// Re-indexes labels in sorted order (numeric when all are numbers).
fn sorted_labels(codes: Vec<u32>, vocab: Vec<String>) -> (Vec<usize>, Vec<String>) {
    let mut order: Vec<usize> = (0..vocab.len()).collect();
    let numeric: Option<Vec<f64>> = vocab.iter().map(|s| s.parse::<f64>().ok()).collect();
    match &numeric {
        Some(n) => order.sort_by(|a, b| n[*a].total_cmp(&n[*b])),
        None => order.sort_by(|a, b| vocab[*a].cmp(&vocab[*b])),
    }
    let mut rank = vec![0usize; vocab.len()];
    for (r, &o) in order.iter().enumerate() {
        rank[o] = r;
    }
    let y = codes.into_iter().map(|c| rank[c as usize]).collect();
    let labels = order.into_iter().map(|o| vocab[o].clone()).collect();
    (y, labels)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path, sel: &Selection) -> Result<Dataset, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| open_error(path, e))?;
    parse(path, &bytes, sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(target: &str) -> Selection {
        Selection {
            target: target.into(),
            classification: true,
            ..Default::default()
        }
    }

    fn err(csv: &str, s: &Selection) -> String {
        parse(Path::new("data.csv"), csv.as_bytes(), s)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_million_columns_are_read_quickly_and_named_briefly() {
        let mut csv = (0..1_000_000)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        csv.push_str(",target\n");
        let started = std::time::Instant::now();
        let e = err(&csv, &sel("label"));
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
        assert!(
            e.contains("target column \"label\" is not in data.csv (columns: c0, c1,"),
            "{e}"
        );
        assert!(e.ends_with("... and 999919 more)"), "{e}");
        assert!(e.len() < 600, "{}", e.len());
    }

    #[test]
    fn loads_numeric_categorical_and_missing() {
        let csv = "\u{feff}a,b,c,y\n1,red,,yes\nNA,blue,2,no\n3.5,,4,yes\n";
        let d = parse(Path::new("d.csv"), csv.as_bytes(), &sel("y")).unwrap();
        assert_eq!(d.names, ["a", "b", "c"]);
        match &d.columns[0] {
            Column::Numeric(v) => assert!(v[0] == 1.0 && v[1].is_nan() && v[2] == 3.5),
            other => panic!("{other:?}"),
        }
        match &d.columns[1] {
            Column::Categorical { codes, vocab } => {
                assert_eq!(vocab, &["red", "blue"]);
                assert_eq!(codes[2], MISSING_CODE);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&d.columns[2], Column::Numeric(v) if v[0].is_nan() && v[1] == 2.0));
        match &d.target {
            TargetColumn::Classes { y, labels } => {
                assert_eq!(labels, &["no", "yes"]);
                assert_eq!(y, &[1, 0, 1]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.sha256.len(), 64);
    }

    #[test]
    fn bad_data_is_reported_with_line_and_column() {
        let s = sel("y");
        let e = err("f1,f7,y\n1,2,0\n1,abc,1\n", &s);
        assert_eq!(
            e,
            "data.csv line 3: column f7: cannot parse \"abc\" as a number"
        );
        assert!(err("", &s).contains("the file is empty"));
        assert!(err("f1,y\n", &s).contains("no data rows"));
        assert!(err("f1,y\n1,0\n2,0\n", &s).contains("single class (\"0\")"));
        let e = err("f1,f2,y\n1,2,0\n1,1\n", &s);
        assert!(
            e.contains("line 3: expected 3 fields (as in the header), found 2"),
            "{e}"
        );
        let e = err("f1,y\n1,0\n2,\n", &s);
        assert!(e.contains("line 3: column y: the target is missing"), "{e}");
        let e = err("f1,y\n1,0\n", &sel("label"));
        assert!(
            e.contains("target column \"label\" is not in data.csv (columns: f1, y)"),
            "{e}"
        );
        let e = err("f1,f1,y\n1,2,0\n", &s);
        assert!(e.contains("appears twice"), "{e}");
        let e = parse(Path::new("data.csv"), b"f1,y\n\xff,0\n", &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2: column f1: value is not valid UTF-8"),
            "{e}"
        );
        let reg = Selection {
            classification: false,
            ..sel("y")
        };
        assert!(err("f1,y\n1,high\n", &reg).contains("cannot parse \"high\" as a number"));
        assert!(err("f1,y\n1,inf\n", &reg).contains("cannot parse"));
        let e = err(
            "f1,y\n1,0\n2,1\n",
            &Selection {
                categorical: vec!["zz".into()],
                ..sel("y")
            },
        );
        assert!(e.contains("categorical column \"zz\""), "{e}");
    }

    #[test]
    fn numeric_labels_sort_numerically_and_selection_applies() {
        let csv = "a,b,y\n1,9,10\n2,8,2\n3,7,10\n";
        let s = Selection {
            exclude: vec!["b".into()],
            ..sel("y")
        };
        let d = parse(Path::new("d.csv"), csv.as_bytes(), &s).unwrap();
        assert_eq!(d.names, ["a"]);
        match d.target {
            TargetColumn::Classes { y, labels } => {
                assert_eq!(labels, ["2", "10"]);
                assert_eq!(y, [1, 0, 1]);
            }
            other => panic!("{other:?}"),
        }
        let s = Selection {
            categorical: vec!["a".into()],
            ..sel("y")
        };
        let d = parse(Path::new("d.csv"), csv.as_bytes(), &s).unwrap();
        assert!(
            matches!(&d.columns[0], Column::Categorical { vocab, .. } if vocab == &["1", "2", "3"])
        );
    }
}
