//! Section 6, memory: resident memory of each server with 1 and 10 models
//! loaded — the seed's stack (gunicorn master + 2 workers, summed) vs the
//! `evergreen-server` process.

use std::path::PathBuf;
use std::time::Duration;

use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::PredictRequest;
use serde_json::json;

use crate::baseline::Python;
use crate::ctx::Ctx;
use crate::report::{Better, Row, Section};
use crate::stack::{self, Gunicorn, Kind, Probe, Registry, Server};

/// 100 MB (decimal), in MiB.
const GOAL_MIB: f64 = 100e6 / (1u64 << 20) as f64;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("bench{i}")).collect()
}

/// Evergreen: a fresh server per count, each model `benchK@production`;
/// warm-up load on the first, one Predict on each, then VmRSS.
async fn evergreen(ctx: &Ctx, probe: &Probe, counts: &[usize]) -> anyhow::Result<Vec<(f64, f64)>> {
    let forest = stack::forest(ctx, 42).await?;
    let mut reg = Registry::start(ctx, "memory").await?;
    let mut registered = 0;
    let mut out = Vec::new();
    for &n in counts {
        for name in &names(n)[registered..] {
            let v = reg.register(name, &forest.bytes).await?;
            reg.promote(name, v).await?;
        }
        registered = n;
        let server = Server::start(ctx, &reg.url)?;
        server.wait_loaded(n).await?;
        let chans = stack::channels(&server.addr, 4).await?;
        let warm = Duration::from_millis(if ctx.smoke { 200 } else { 1000 });
        let st = stack::load(
            &chans,
            8,
            Duration::ZERO,
            warm,
            Kind::Predict,
            probe,
            "bench1",
        )
        .await;
        anyhow::ensure!(st.errors == 0, "{} Predict calls failed", st.errors);
        let mut p = PredictorClient::new(chans[0].clone());
        for name in names(n) {
            p.predict(PredictRequest {
                model: name,
                rows: vec![probe.row()],
                request_id: String::new(),
            })
            .await?;
        }
        out.push((stack::rss_mib(server.pid())?, stack::pss_mib(server.pid())?));
    }
    Ok(out)
}

/// The seed's stack: gunicorn with the joblib forest under n names
/// (MODEL_PATH for one, MODEL_PATHS for several), 1 s of wrk on the first,
/// then the VmRSS sum over master + workers.
fn baseline(
    ctx: &Ctx,
    py: &Python,
    probe: &Probe,
    counts: &[usize],
) -> anyhow::Result<Vec<(f64, f64)>> {
    let (path, _) = stack::joblib_forest(ctx, py)?;
    let mut out = Vec::new();
    for &n in counts {
        let models: Vec<(String, PathBuf)> =
            names(n).into_iter().map(|m| (m, path.clone())).collect();
        let g = Gunicorn::start(py, &models)?;
        let route = if n == 1 {
            "/predict".to_string()
        } else {
            "/predict/bench1".to_string()
        };
        let v = stack::wrk(py, &g.url(&route), 8, Duration::from_secs(1), probe)?;
        let st = stack::wrk_stats(&v)?;
        anyhow::ensure!(
            st.errors == 0 && st.requests > 0,
            "the seed's stack failed {} of {} warm-up requests",
            st.errors,
            st.requests
        );
        let (mib, procs) = stack::tree_rss_mib(g.pid())?;
        anyhow::ensure!(
            procs == 3,
            "gunicorn runs {procs} processes; expected master + 2 workers"
        );
        out.push((mib, stack::tree_pss_mib(g.pid())?));
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let split = ctx.split(stack::DATASET, stack::limit(ctx))?;
    let probe = Probe::read(&split.test)?;
    let counts = [1, 10];
    let ev = evergreen(ctx, &probe, &counts).await?;
    let base = match &ctx.python {
        Some(py) => Some(tokio::task::block_in_place(|| {
            baseline(ctx, py, &probe, &counts)
        })?),
        None => None,
    };
    let b = |i: usize| base.as_ref().map(|v| v[i].0);
    let bp = |i: usize| base.as_ref().map(|v| v[i].1);
    let artifact = stack::forest(ctx, 42).await?.bytes.len();
    let rows = vec![
        Row::new("resident memory (RSS), 1 model", "MiB", Better::Lower)
            .figures(b(0), Some(ev[0].0)),
        Row::new("resident memory (RSS), 10 models", "MiB", Better::Lower)
            .figures(b(1), Some(ev[1].0))
            .goal("≤ 100 MB (95.4 MiB)", |r| {
                r.evergreen.is_some_and(|e| e <= GOAL_MIB)
            }),
        Row::new("RSS per extra model", "MiB", Better::Lower).figures(
            b(1).zip(b(0)).map(|(t, o)| (t - o) / 9.0),
            Some((ev[1].0 - ev[0].0) / 9.0),
        ),
        Row::new("proportional set size (PSS), 1 model", "MiB", Better::Lower)
            .figures(bp(0), Some(ev[0].1)),
        Row::new(
            "proportional set size (PSS), 10 models",
            "MiB",
            Better::Lower,
        )
        .figures(bp(1), Some(ev[1].1)),
    ];
    let mut notes = Vec::new();
    if ctx.python.is_none() {
        notes.push(
            "Baselines not run (--no-baselines): the seed's stack's figures are missing.".into(),
        );
    }
    Ok(Section {
        id: "memory".into(),
        title: "Memory".into(),
        baseline: "the seed's stack: gunicorn (master + 2 sync workers) + Flask + joblib + \
                   scikit-learn, bench/python/serve_app.py"
            .into(),
        method: format!(
            "VmRSS from /proc/PID/status after the models are loaded and the server has served: \
             for evergreen-server its one process (release binary, a fresh process per count, \
             models from an in-process registry, waited for until ListServed shows every model; \
             then {} s of Predict at 8 callers and one Predict per model); for the seed's stack \
             the SUM over the gunicorn master and its 2 workers (each worker loads every model, \
             as gunicorn without --preload does; 1 s of wrk at 8 connections first). 10 models = \
             the SAME {}-tree forest registered under 10 model names on both sides (Evergreen \
             loads each model's production version separately; the baseline joblib.loads the \
             file once per name per worker, MODEL_PATHS). Artifact: {:.1} MiB. The RSS sum counts \
             pages the gunicorn processes share (Python, numpy and scikit-learn libraries) once \
             per process; the PSS rows (/proc/PID/smaps_rollup, shared pages divided among their \
             users) do not, and are the fairer figure for a multi-process server.",
            if ctx.smoke { 0.2 } else { 1.0 },
            stack::n_trees(ctx),
            artifact as f64 / (1u64 << 20) as f64,
        ),
        rows,
        notes,
        raw: json!({
            "counts": counts,
            "evergreen_rss_pss_mib": ev,
            "baseline_rss_pss_mib": base,
            "artifact_bytes": artifact,
        }),
    })
}
