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
