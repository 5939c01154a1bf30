//! Fuzzing CSV ingest (issue #9): whatever the bytes and the column
//! selection, `data::parse` returns a consistent dataset or a short error
//! naming the file — never a panic or a hang. `cargo test` runs a bounded
//! number of cases (seconds); a long run raises it:
//!
//!     EVERGREEN_FUZZ_CASES=1000000 cargo test --release -p evergreen-trainer fuzz_
//!
//! (`just fuzz` runs every fuzz target so.)

use std::path::Path;

use evergreen_model::pipeline::{Column, MISSING_CODE};
use evergreen_trainer::data::{parse, Dataset, Selection, TargetColumn};
use proptest::prelude::*;

/// The case count of a fuzz target: `default`, or `EVERGREEN_FUZZ_CASES`.
fn fuzz_config(default: u32) -> ProptestConfig {
    let cases = std::env::var("EVERGREEN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const PATH: &str = "data.csv";

/// Longest error message a bad file may produce (a gRPC status must carry it).
const MAX_MESSAGE: usize = 1000;

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("target".to_string()),
        Just(" target ".to_string()),
        Just(String::new()),
        Just("\"q,uoted\"".to_string()),
        "[a-z]{1,3}",
    ]
}

/// A cell as files carry them: numbers of every kind, missing markers,
/// text, quotes, stray bytes, very long values.
fn cell() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<f64>().prop_map(|x| x.to_string().into_bytes()),
        (-5i64..5).prop_map(|x| x.to_string().into_bytes()),
        prop::sample::select(vec![
            "",
            "NA",
            "N/A",
            "NaN",
            "nan",
            "null",
            "?",
            "inf",
            "-inf",
            "1e999",
            " 3 ",
            "x",
            "yes",
            "\"a,b\"",
            "\"unterminated",
            "\"\"",
            "a\"b",
            "\r",
            "\u{feff}1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"caf\xe9".to_vec()),
        (1usize..5000).prop_map(|n| vec![b'z'; n]),
        proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

/// A CSV-like file and its header: an optional BOM, a header, rows mostly
/// of the header's width (some ragged), any line endings.
fn csv() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
    (any::<bool>(), proptest::collection::vec(names(), 1..6)).prop_flat_map(|(bom, header)| {
        let w = header.len();
        let row = prop_oneof![
            6 => proptest::collection::vec(cell(), w..=w),
            1 => proptest::collection::vec(cell(), 0..8),
        ];
        (
            Just(bom),
            Just(header),
            proptest::collection::vec(row, 0..25),
            prop::sample::select(vec!["\n", "\r\n", "\r"]),
        )
            .prop_map(|(bom, header, rows, eol)| {
                let mut out = Vec::new();
                if bom {
                    out.extend_from_slice(b"\xEF\xBB\xBF");
                }
                out.extend_from_slice(header.join(",").as_bytes());
                for r in rows {
                    out.extend_from_slice(eol.as_bytes());
                    out.extend_from_slice(&r.join(&b","[..]));
                }
                (out, header)
            })
    })
}

/// A selection; its target is a header column most of the time.
fn selection() -> impl Strategy<Value = (Option<usize>, Selection)> {
    (
        prop_oneof![3 => any::<usize>().prop_map(Some), 1 => Just(None)],
        names(),
        any::<bool>(),
        proptest::collection::vec(names(), 0..3),
        proptest::collection::vec(names(), 0..2),
        proptest::collection::vec(names(), 0..2),
    )
        .prop_map(
            |(pick, target, classification, features, exclude, categorical)| {
                (
                    pick,
                    Selection {
                        target,
                        classification,
                        features,
                        exclude,
                        categorical,
                    },
                )
            },
        )
}

/// What a loaded dataset promises the training code.
fn consistent(d: &Dataset) -> Result<(), TestCaseError> {
    let n = d.rows();
    prop_assert!(n > 0);
    prop_assert_eq!(d.names.len(), d.columns.len());
    prop_assert!(!d.names.is_empty());
    prop_assert!(!d.names.contains(&d.target_name));
    for c in &d.columns {
        match c {
            Column::Numeric(v) => {
                prop_assert_eq!(v.len(), n);
                prop_assert!(v.iter().all(|x| x.is_finite() || x.is_nan()));
            }
            Column::Categorical { codes, vocab } => {
                prop_assert_eq!(codes.len(), n);
                prop_assert!(codes
                    .iter()
                    .all(|&c| c == MISSING_CODE || (c as usize) < vocab.len()));
            }
        }
    }
    match &d.target {
        TargetColumn::Classes { y, labels } => {
            prop_assert!(labels.len() >= 2);
            prop_assert!(y.iter().all(|&c| c < labels.len()));
        }
        TargetColumn::Values(v) => prop_assert!(v.iter().all(|x| x.is_finite())),
    }
    Ok(())
}

fn check(bytes: &[u8], sel: &Selection) -> Result<(), TestCaseError> {
    match parse(Path::new(PATH), bytes, sel) {
        Ok(d) => consistent(&d),
        Err(e) => {
            let m = e.to_string();
            prop_assert!(!m.is_empty());
            prop_assert!(
                m.len() <= MAX_MESSAGE,
                "a {}-byte message: {}...",
                m.len(),
                m.chars().take(200).collect::<String>()
            );
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config(3000))]

    /// CSV-shaped input with every kind of defect.
    #[test]
    fn fuzz_csv_structured((bytes, header) in csv(), (pick, mut sel) in selection()) {
        if let Some(i) = pick {
            sel.target = header[i % header.len()].trim().to_string();
        }
        check(&bytes, &sel)?;
    }

    /// Any bytes at all, with a plausible selection.
    #[test]
    fn fuzz_csv_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                classification in any::<bool>()) {
        let sel = Selection { target: "target".into(), classification, ..Default::default() };
        check(&bytes, &sel)?;
        let mut with_header = b"a,b,target\n".to_vec();
        with_header.extend_from_slice(&bytes);
        check(&with_header, &sel)?;
    }
}

/// A huge cell in a numeric column: the error quotes the start of it only.
#[test]
fn fuzz_regression_a_huge_unparsable_cell_gives_a_short_message() {
    let mut csv = b"a,target\n1,0\n".to_vec();
    csv.extend_from_slice(&vec![b'z'; 100_000]);
    csv.extend_from_slice(b",1\n");
    let sel = Selection {
        target: "target".into(),
        classification: true,
        ..Default::default()
    };
    let m = parse(Path::new(PATH), &csv, &sel).unwrap_err().to_string();
    assert!(
        m.starts_with("data.csv line 3: column a: cannot parse \"zzz"),
        "{m:.100}"
    );
    assert!(m.len() <= MAX_MESSAGE, "a {}-byte message", m.len());
}
