//! Section 2, serving: single-row predictions/s and p50/p99 at concurrency
//! 1, 8 and 32 for the same 100-tree forest — the seed's stack (gunicorn +
//! Flask + joblib + scikit-learn, loaded by wrk) vs `evergreen-server` (its
//! own Predict and the V2 ModelInfer, loaded by a closed-loop tonic
//! generator in this process), next to an empty unary RPC (the floor).

use std::time::Duration;

use serde_json::json;

use crate::ctx::Ctx;
use crate::report::{Better, Row, Section};
use crate::stack::{self, Gunicorn, Kind, LoadStats, Probe, Registry, Server};
use crate::stats::median;

const LEVELS: [usize; 3] = [1, 8, 32];

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let split = ctx.split(stack::DATASET, stack::limit(ctx))?;
    let probe = Probe::read(&split.test)?;
    let forest = stack::forest(ctx, 42).await?;
    let mut reg = Registry::start(ctx, "serve").await?;
    let v = reg.register("bench", &forest.bytes).await?;
    reg.promote("bench", v).await?;
    let server = Server::start(ctx, &reg.url)?;
    server.wait_loaded(1).await?;

    let baseline = match &ctx.python {
        Some(py) => {
            let (path, fit) = stack::joblib_forest(ctx, py)?;
            let g = tokio::task::block_in_place(|| {
                Gunicorn::start(py, &[("bench".to_string(), path)])
            })?;
            Some((py, g, fit))
        }
        None => None,
    };

    let rounds = if ctx.smoke { 1 } else { 3 };
    let warmup = Duration::from_millis(if ctx.smoke { 100 } else { 500 });
    // Per level: per kind ("wrk", "empty", "predict", "v2"), one LoadStats per round.
    let mut samples: Vec<(usize, Vec<(&str, LoadStats)>)> = Vec::new();
    for c in LEVELS {
        eprintln!("  concurrency {c}: {rounds} round(s)");
        let chans = stack::channels(&server.addr, c.min(4)).await?;
        let mut s = Vec::new();
        for _ in 0..rounds {
            if let Some((py, g, _)) = &baseline {
                let v = tokio::task::block_in_place(|| {
                    stack::wrk(py, &g.url("/predict"), c, ctx.secs, &probe)
                })?;
                s.push(("wrk", stack::wrk_stats(&v)?));
            }
            for (name, kind) in [
                ("empty", Kind::Empty),
                ("predict", Kind::Predict),
                ("v2", Kind::V2),
            ] {
                let st = stack::load(&chans, c, warmup, ctx.secs, kind, &probe, "bench").await;
                s.push((name, st));
            }
        }
        samples.push((c, s));
    }
    drop(server);
    let fit = baseline.as_ref().map(|(_, _, fit)| fit.clone());
    drop(baseline);

    let med = |c: usize, kind: &str, f: fn(&LoadStats) -> f64| -> Option<f64> {
        let xs: Vec<f64> = samples
            .iter()
            .filter(|(l, _)| *l == c)
            .flat_map(|(_, s)| s.iter().filter(|(k, _)| *k == kind).map(|(_, st)| f(st)))
            .collect();
        (!xs.is_empty()).then(|| median(&xs))
    };
    let rps = |s: &LoadStats| s.rps;
    let p50 = |s: &LoadStats| s.p50_ms;
    let p99 = |s: &LoadStats| s.p99_ms;

    let mut rows = Vec::new();
    for c in LEVELS {
        let mut r = Row::new(
            &format!("Predict predictions/s, c={c}"),
            "req/s",
            Better::Higher,
        )
        .figures(med(c, "wrk", rps), med(c, "predict", rps));
        if c == 32 {
            r = r.at_least(100.0);
        }
        rows.push(r);
    }
    for c in LEVELS {
        rows.push(
            Row::new(
                &format!("V2 ModelInfer predictions/s, c={c}"),
                "req/s",
                Better::Higher,
            )
            .figures(med(c, "wrk", rps), med(c, "v2", rps)),
        );
    }
    for c in LEVELS {
        rows.push(
            Row::new(&format!("Predict p50, c={c}"), "ms", Better::Lower)
                .figures(med(c, "wrk", p50), med(c, "predict", p50)),
        );
        let empty_p99 = med(c, "empty", p99);
        let mut r = Row::new(&format!("Predict p99, c={c}"), "ms", Better::Lower)
            .figures(med(c, "wrk", p99), med(c, "predict", p99));
        if c == 32 {
            let floor = empty_p99.unwrap_or(f64::NAN);
            r = r.goal(
                &format!(
                    "≤ 1.5× the empty RPC's p99 ({} ms)",
                    crate::report::fmt_num(floor)
                ),
                |r| r.evergreen.is_some_and(|e| e <= 1.5 * floor),
            );
        }
        rows.push(r);
        rows.push(
            Row::new(&format!("V2 ModelInfer p99, c={c}"), "ms", Better::Lower)
                .figures(med(c, "wrk", p99), med(c, "v2", p99)),
        );
    }
    for c in LEVELS {
        rows.push(
            Row::new(
                &format!("empty RPC (floor) calls/s, c={c}"),
                "req/s",
                Better::Higher,
            )
            .figures(None, med(c, "empty", rps)),
        );
        rows.push(
            Row::new(
                &format!("empty RPC (floor) p99, c={c}"),
                "ms",
                Better::Lower,
            )
            .figures(None, med(c, "empty", p99)),
        );
    }
    let errors = |kind: &str| -> u64 {
        samples
            .iter()
            .flat_map(|(_, s)| {
                s.iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, st)| st.errors)
            })
            .sum()
    };
    let ev_errors = errors("predict") + errors("v2") + errors("empty");
    rows.push(
        Row::new("failed requests (all loads)", "count", Better::Lower).figures(
            ctx.python.as_ref().map(|_| errors("wrk") as f64),
            Some(ev_errors as f64),
        ),
    );

    let trees = stack::n_trees(ctx);
    let mut notes = vec![format!(
        "Model: a {trees}-tree random forest (gini, max_features sqrt, bootstrap, unlimited \
         depth) on {} training rows of {} (the harness's 70/30 split), 20 features; Evergreen's \
         trained by the trainer library (which itself holds out its default test fraction), \
         {:.1} MiB artifact; the baseline's by scikit-learn's RandomForestClassifier \
         (fit_forest.py, n_jobs=1 when serving). Every request carries the same row (the test \
         file's first).",
        split.n_train,
        stack::DATASET,
        forest.bytes.len() as f64 / (1u64 << 20) as f64,
    )];
    if ctx.python.is_none() {
        notes.push(
            "Baselines not run (--no-baselines): the seed's stack's figures and ratios are \
             missing."
                .into(),
        );
    }
    if ev_errors > 0 {
        notes.push(format!(
            "{ev_errors} Evergreen request(s) failed during the loads: the figures are suspect."
        ));
    }
    Ok(Section {
        id: "serve".into(),
        title: "Serving".into(),
        baseline: "the seed's stack: Flask 3.1 + joblib + scikit-learn 1.9 forest under \
                   gunicorn (2 sync workers), bench/python/serve_app.py"
            .into(),
        method: format!(
            "Single-row requests, closed loop, at concurrency 1, 8 and 32. Seed's stack: HTTP/1.1 \
             JSON POST /predict loaded by wrk (bench/python/wrk.lua; one wrk thread per core, at \
             most one per connection; -c N keep-alive connections). Evergreen: the release \
             evergreen-server binary (child process, model from an in-process registry) over \
             gRPC, loaded by a Rust tonic generator in bench-compare (N concurrent callers over \
             min(N, 4) HTTP/2 connections, TCP_NODELAY): evergreen.v1 Predictor/Predict, \
             inference V2 ModelInfer (one FP64 [1, 20] tensor), and the empty-RPC floor \
             grpc.health.v1 Health/Check. Each round runs wrk, empty, Predict, V2 in turn (A B A \
             B …), {rounds} round(s) of {:.1} s per level ({} ms warm-up discarded for gRPC; wrk \
             whole seconds); figures are medians over rounds. The load generator (wrk or the \
             gRPC generator) shares the machine's {} cores with the server it loads. Latency \
             is the client's, per request.",
            ctx.secs.as_secs_f64(),
            warmup.as_millis(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
        ),
        rows,
        notes,
        raw: json!({
            "n_trees": trees,
            "n_train": split.n_train,
            "artifact_bytes": forest.bytes.len(),
            "evergreen_train_secs": forest.train_secs,
            "baseline_fit": fit,
            "rounds": rounds,
            "secs": ctx.secs.as_secs_f64(),
            "samples": samples.iter().map(|(c, s)| json!({
                "concurrency": c,
                "runs": s.iter().map(|(k, st)| json!({"kind": k, "stats": st})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    })
}
