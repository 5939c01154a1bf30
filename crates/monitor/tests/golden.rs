//! Drift statistics from binned counts against exact values on the raw
//! samples (scipy), from golden/synth_drift.json (made by
//! golden/make_golden.py from the shared synth_100000 sets).

use evergreen_model::profile::NumericProfile;
use evergreen_monitor::drift::{self, NumericWindow, Test};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/golden/synth_drift.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn binned_statistics_match_exact_ones_and_verdicts_match_the_data() {
    let g = golden();
    let features = g["features"].as_object().unwrap();
    assert_eq!(features.len(), 20);
    let mut worst_ks: f64 = 0.0;
    let mut worst_w: f64 = 0.0;
    for (name, f) in features {
        let edges = f64s(&f["edges"]);
        let rc = u64s(&f["reference_counts"]);
        let reference = NumericProfile {
            count: f["reference_rows"].as_u64().unwrap(),
            missing: 0,
            mean: 0.0,
            std: f["reference_std"].as_f64().unwrap(),
            min: edges[0],
            max: *edges.last().unwrap(),
            edges: edges.clone(),
            counts: rc.clone(),
            sums: f64s(&f["reference_sums"]),
        };
        let index: usize = name.trim_start_matches('f').parse().unwrap();
        for set in ["current", "drifted"] {
            let s = &f[set];
            let window = NumericWindow {
                counts: u64s(&s["counts"]),
                sums: f64s(&s["sums"]),
                missing: 0,
                min: s["min"].as_f64().unwrap(),
                max: s["max"].as_f64().unwrap(),
            };
            let psi = drift::psi(&rc, &window.counts);
            assert!(
                (psi - s["psi"].as_f64().unwrap()).abs() < 1e-9,
                "{name}/{set}: psi {psi}"
            );
            let (d, _) = drift::ks(&rc, &window.counts);
            let dk = (d - s["ks_exact"].as_f64().unwrap()).abs();
            let verdict = drift::numeric_drift(&reference, &window);
            assert_eq!(
                verdict.test,
                Test::Wasserstein,
                "100k reference rows: normed Wasserstein"
            );
            let dw = (verdict.statistic - s["wasserstein_normed_exact"].as_f64().unwrap()).abs();
            assert!(dk < 0.01, "{name}/{set}: KS {d} vs exact {}", s["ks_exact"]);
            assert!(
                dw < 0.01,
                "{name}/{set}: W {} vs exact {}",
                verdict.statistic,
                s["wasserstein_normed_exact"]
            );
            worst_ks = worst_ks.max(dk);
            worst_w = worst_w.max(dw);
            let should_drift = set == "drifted" && index < 10;
            assert_eq!(verdict.drifted, should_drift, "{name}/{set}: {verdict:?}");
        }
    }
    eprintln!("largest difference from exact: KS {worst_ks:.5}, normed Wasserstein {worst_w:.5}");
}
