//! The monitor through real gRPC: the server's prediction log arrives, and
//! drift is measured per feature against the version's reference profile.

use std::time::{Duration, Instant};

use evergreen_e2e::Sandbox;
use evergreen_proto::v1::{
    train_event, value, DriftReport, GetDriftRequest, PredictRequest, Row, SetAliasRequest,
    TrainRequest, Value,
};
use tonic::Code;

/// Rows of a toy problem: a, b uniform-ish in [0, 10), colour of three.
fn rows(from: u64, n: u64, shift_a: f64) -> Vec<(f64, f64, &'static str)> {
    (from..from + n)
        .map(|i| {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let a = (h % 10_000) as f64 / 1000.0 + shift_a;
            let b = ((h >> 20) % 10_000) as f64 / 1000.0;
            (a, b, ["red", "green", "blue"][((h >> 40) % 3) as usize])
        })
        .collect()
}

fn to_row(r: &(f64, f64, &str)) -> Row {
    let num = |x: f64| Value {
        kind: Some(value::Kind::Number(x)),
    };
    Row {
        values: vec![
            num(r.0),
            num(r.1),
            Value {
                kind: Some(value::Kind::Category(r.2.to_string())),
            },
        ],
        named: Default::default(),
    }
}

async fn report_with(sb: &Sandbox, rows: u64) -> DriftReport {
    let mut m = sb.monitor().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = m
            .get_drift(GetDriftRequest {
                model: "toy".into(),
                version: 1,
            })
            .await
        {
            let r = r.into_inner();
            if r.rows >= rows {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never saw {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn drifted(r: &DriftReport) -> Vec<&str> {
    r.features
        .iter()
        .filter(|f| f.drifted)
        .map(|f| f.feature.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prediction_logs_reach_the_monitor_and_drift_is_measured_per_feature() {
    // One window for the whole test: drift is measured on everything sent.
    let sb = Sandbox::builder()
        .trainer()
        .monitor_with(|c| c.window_rows = 1_000_000)
        .server(|_| {})
        .start()
        .await;
    // Train on 2000 rows (1400 in the reference profile → distance tests).
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b,colour,target\n");
    for r in rows(0, 2000, 0.0) {
        csv.push_str(&format!(
            "{},{},{},{}\n",
            r.0,
            r.1,
            r.2,
            u8::from(r.0 + r.1 > 10.0)
        ));
    }
    let path = dir.path().join("toy.csv");
    std::fs::write(&path, csv).unwrap();
    let mut t = sb.trainer().await;
    let mut s = t
        .train(TrainRequest {
            model: "toy".into(),
            dataset_uri: path.display().to_string(),
            target: "target".into(),
            algorithm: "decision_tree".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(train_event::Kind::Done(j)) = ev.kind {
            assert_eq!(j.version, 1);
        }
    }
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: "toy".into(),
            alias: "production".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut m = sb.monitor().await;
    let e = m
        .get_drift(GetDriftRequest {
            model: "toy".into(),
            version: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no traffic yet: {e:?}");
    let e = m
        .get_drift(GetDriftRequest {
            model: "toy".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let p = sb.predictor().await;
    let send = |batch: Vec<Row>| {
        let mut p = p.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match p
                    .predict(PredictRequest {
                        model: "toy".into(),
                        rows: batch.clone(),
                        request_id: String::new(),
                    })
                    .await
                {
                    Ok(_) => return,
                    Err(e) => assert!(Instant::now() < deadline, "{e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Traffic like the training data: nothing drifts.
    let normal: Vec<Row> = rows(10_000, 2000, 0.0).iter().map(to_row).collect();
    for chunk in normal.chunks(100) {
        send(chunk.to_vec()).await;
    }
    let r = report_with(&sb, 2000).await;
    assert_eq!(r.features.len(), 3);
    assert!(drifted(&r).is_empty(), "{:?}", r.features);
    assert!(!r.dataset_drift);
    let a = &r.features[0];
    assert_eq!(
        (a.feature.as_str(), a.test.as_str(), a.count),
        ("a", "wasserstein", 2000)
    );
    assert_eq!(r.features[2].test, "jensen_shannon");
    let pd = r.prediction.clone().expect("prediction drift");
    assert_eq!((pd.feature.as_str(), pd.count), ("prediction", 2000));
    assert_eq!(pd.test, "chi2", "600 holdout answers: χ²");
    assert!(!pd.drifted, "answers like the holdout's: {pd:?}");

    // Now a shifts by +3: a drifts, b and colour do not.
    let shifted: Vec<Row> = rows(20_000, 2000, 3.0).iter().map(to_row).collect();
    for chunk in shifted.chunks(100) {
        send(chunk.to_vec()).await;
    }
    let r = report_with(&sb, 4000).await;
    assert_eq!(drifted(&r), ["a"], "{:?}", r.features);
    assert!(
        r.features[0].statistic > 0.2 && r.features[0].psi > 0.1,
        "{:?}",
        r.features[0]
    );
    assert!(!r.dataset_drift, "1 of 3 features is under the 0.5 share");
    let pd = r.prediction.clone().expect("prediction drift");
    assert!(
        pd.drifted && pd.p_value < 0.05,
        "a larger `a` means more class 1 answers: {pd:?}"
    );
}
