//! The artifact format: round trip, and every damaged input is a clear error.

use evergreen_model::artifact::{Estimator, Model, TrainingInfo};
use evergreen_model::pipeline::{Column, Impute, Pipeline};
use evergreen_model::profile::{FeatureProfile, PredictionProfile, Profile};
use evergreen_model::schema::{Schema, Target, Task, Value};
use evergreen_model::tree::{fit_forest, Control, ForestParams};
use evergreen_model::{ArtifactError, Prediction, Scratch};
use ndarray::Array2;
use proptest::prelude::*;

fn small_model() -> Model {
    let names = vec!["x".to_string(), "colour".to_string()];
    let n = 60;
    let cols = vec![
        Column::Numeric((0..n).map(|i| i as f64).collect()),
        Column::Categorical {
            codes: (0..n).map(|i| (i % 3) as u32).collect(),
            vocab: vec!["red".into(), "green".into(), "blue".into()],
        },
    ];
    let y: Vec<usize> = (0..n).map(|i| usize::from(i >= 30)).collect();
    let rows: Vec<usize> = (0..n).collect();
    let (pipeline, features) = Pipeline::fit(&names, &cols, &rows, Impute::Mean, false);
    let mut x = Array2::zeros((n, pipeline.width));
    for i in 0..n {
        let row = [cols[0].value(i), cols[1].value(i)];
        pipeline
            .transform_row(&features, &row, x.row_mut(i).into_slice().unwrap())
            .unwrap();
    }
    let params = ForestParams {
        n_trees: 3,
        ..ForestParams::default()
    };
    let forest = fit_forest(x.view(), &y, 2, &params, Control::default()).unwrap();
    Model {
        schema: Schema {
            features,
            target: Target {
                name: "y".into(),
                task: Task::Classification {
                    labels: vec!["no".into(), "yes".into()],
                },
            },
        },
        pipeline,
        estimator: Estimator::Forest(forest),
        profile: Profile {
            rows: n as u64,
            features: cols
                .iter()
                .map(|c| FeatureProfile::of_column(c, &rows, 10))
                .collect(),
            predictions: PredictionProfile::classification(&[0.2, 0.8, 0.9, 0.1], 2),
        },
        training: TrainingInfo {
            algorithm: "random_forest".into(),
            ..Default::default()
        },
    }
}

#[test]
fn round_trips_and_predicts_on_raw_rows() {
    let m = small_model();
    let bytes = m.to_bytes();
    assert_eq!(&bytes[..8], b"EVGMODEL");
    let back = Model::from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.to_bytes(), bytes, "encoding is deterministic");
    let mut s = Scratch::default();
    match back
        .predict(&[Value::Number(55.0), Value::Text("purple")], &mut s)
        .unwrap()
    {
        Prediction::Class {
            class,
            probabilities,
        } => {
            assert_eq!(class, 1);
            assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        }
        other => panic!("expected a class, got {other:?}"),
    }
}

#[test]
fn damaged_artifacts_are_named_errors() {
    let bytes = small_model().to_bytes();
    let err = |b: &[u8]| Model::from_bytes(b).unwrap_err();

    assert!(matches!(err(b""), ArtifactError::BadMagic));
    assert!(matches!(
        err(b"{\"not\": \"a model\"}"),
        ArtifactError::BadMagic
    ));
    assert!(matches!(
        err(&bytes[..20]),
        ArtifactError::Truncated {
            what: "the header",
            ..
        }
    ));
    let e = err(&bytes[..bytes.len() - 7]);
    assert!(
        matches!(
            e,
            ArtifactError::Truncated {
                what: "the body",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");

    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    let e = err(&flipped);
    assert!(matches!(e, ArtifactError::Checksum { .. }), "{e}");

    let mut newer = bytes.clone();
    newer[8..10].copy_from_slice(&2u16.to_le_bytes());
    let e = err(&newer);
    assert!(e.to_string().contains("format version 2 is newer"), "{e}");

    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(err(&longer), ArtifactError::Corrupt(_)));
}

/// Re-signs a mutated body, so the checks behind the checksum are reached.
fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let len = (bytes.len() - 52) as u64;
    bytes[12..20].copy_from_slice(&len.to_le_bytes());
    let digest = Sha256::digest(&bytes[52..]);
    bytes[20..52].copy_from_slice(&digest);
    bytes
}

#[test]
fn a_well_signed_but_inconsistent_model_is_rejected() {
    let mut m = small_model();
    if let Estimator::Forest(f) = &mut m.estimator {
        // A node pointing back to the root would loop forever when predicting.
        let i = f.trees[0]
            .nodes
            .iter()
            .position(|n| n.feature != u32::MAX)
            .unwrap();
        f.trees[0].nodes[i].left = 0;
    }
    let e = Model::from_bytes(&m.to_bytes()).unwrap_err();
    assert!(e.to_string().contains("invalid feature or child"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Arbitrary corruption of a re-signed body never panics: it decodes to a
    /// valid model (which then predicts without panicking) or is an error.
    #[test]
    fn corrupt_bodies_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                  cut in any::<usize>()) {
        let mut bytes = small_model().to_bytes();
        for (at, v) in edits {
            let i = 52 + at % (bytes.len() - 52);
            bytes[i] = v;
        }
        let keep = 52 + cut % (bytes.len() - 52 + 1);
        bytes.truncate(keep);
        if let Ok(m) = Model::from_bytes(&resign(bytes)) {
            let row = vec![Value::Number(1.0); m.schema.features.len()];
            let _ = m.predict(&row, &mut Scratch::default());
        }
    }
}

// --- Fuzzing (issue #9) ---------------------------------------------------
//
// proptest-driven fuzz targets on the stable toolchain: whatever the bytes,
// `Model::from_bytes` returns a model or an `ArtifactError` — never a panic,
// a hang or an abort — and a model it accepts predicts any row without
// panicking. `cargo test` runs a bounded number of cases (seconds); a long
// run raises it:
//
//     EVERGREEN_FUZZ_CASES=1000000 cargo test --release -p evergreen-model fuzz_
//
// (`just fuzz` runs every target so.)

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

/// A raw value as a request could carry it: any number (NaN, ±inf
/// included), text, or missing.
fn arb_value() -> impl Strategy<Value = (u8, f64, String)> {
    (0u8..3, any::<f64>(), "[a-z]{0,6}")
}

fn as_value((kind, x, s): &(u8, f64, String)) -> Value<'_> {
    match kind {
        0 => Value::Number(*x),
        1 => Value::Text(s),
        _ => Value::Missing,
    }
}

/// Predicts `rows` with `m`; every outcome but a panic is fine.
fn predict_all(m: &Model, rows: &[Vec<(u8, f64, String)>]) {
    let mut s = Scratch::default();
    for r in rows {
        let row: Vec<Value> = r.iter().map(as_value).collect();
        let _ = m.predict(&row, &mut s);
    }
}

/// A header for `body`: magic, format version 1, length and sha256 right.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut bytes = small_model().to_bytes()[..52].to_vec();
    bytes.extend_from_slice(body);
    resign(bytes)
}

proptest! {
    #![proptest_config(fuzz_config(3000))]

    /// Any bytes at all, bare or behind the magic and a format version.
    #[test]
    fn fuzz_artifact_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                     version in any::<u16>(), prefixed in any::<bool>()) {
        let input = if prefixed {
            let mut b = b"EVGMODEL".to_vec();
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&bytes);
            b
        } else {
            bytes
        };
        let _ = Model::from_bytes(&input);
    }

    /// A well-signed header over an arbitrary body: reaches the body decoder
    /// and the consistency checks behind the checksum.
    #[test]
    fn fuzz_artifact_signed_arbitrary_body(body in proptest::collection::vec(any::<u8>(), 0..2000),
                                           rows in proptest::collection::vec(
                                               proptest::collection::vec(arb_value(), 0..4), 0..3)) {
        if let Ok(m) = Model::from_bytes(&signed(&body)) {
            predict_all(&m, &rows);
        }
    }

    /// A real model's body with bytes overwritten, inserted or cut, re-signed;
    /// whatever decodes predicts arbitrary rows (any width, NaN, text).
    #[test]
    fn fuzz_artifact_mutated_model(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12),
                                   rows in proptest::collection::vec(
                                       proptest::collection::vec(arb_value(), 0..4), 1..4)) {
        let mut bytes = small_model().to_bytes();
        for (at, v, op) in edits {
            let i = 52 + at % (bytes.len() - 52);
            match op {
                0 => bytes[i] = v,
                1 => bytes.insert(i, v),
                _ if bytes.len() > 53 => { bytes.remove(i); }
                _ => {}
            }
        }
        match Model::from_bytes(&resign(bytes)) {
            Ok(m) => predict_all(&m, &rows),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
