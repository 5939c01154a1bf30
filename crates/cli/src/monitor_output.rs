//! Rendering of monitor objects (reports, signals, policies): pure functions
//! returning the text people read, and `serde_json` values for `--json`.

use std::collections::{BTreeSet, HashMap};

use evergreen_proto::v1::{
    DriftReport, FeatureDrift, Health, ModelVersion, Performance, Policy, Report, Signal,
    SignalKind, WindowKind, WindowSummary,
};
use serde_json::{json, Map, Value};

use crate::output::{rfc3339, short_number, short_time, status_name, Table};

/// Shown where a value is missing (a metric not measured, a version the
/// monitor has not seen).
pub const MISSING: &str = "—";

/// Window summaries shown by `health`, newest last.
const HISTORY_SHOWN: usize = 5;

/// The metrics the monitor measures, in the order people look for them.
const MONITORED: &[&str] = &["accuracy", "f1_macro", "roc_auc", "rmse", "mae", "r2"];

/// A number, or `—` when it is not one.
fn num(x: f64) -> String {
    if x.is_finite() {
        short_number(x)
    } else {
        MISSING.to_string()
    }
}

fn opt_num(x: Option<f64>) -> String {
    x.map_or(MISSING.to_string(), num)
}

/// `0.3` -> `30%`, `0.125` -> `12.5%`.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return MISSING.to_string();
    }
    let s = format!("{:.1}", share * 100.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `RETRAIN` for `SIGNAL_KIND_RETRAIN`.
pub fn signal_kind_name(kind: i32) -> String {
    match SignalKind::try_from(kind) {
        Ok(k) => k.short_name().to_string(),
        Err(_) => format!("UNKNOWN({kind})"),
    }
}

/// `CURRENT` for `WINDOW_KIND_CURRENT` (and for UNSPECIFIED, which means it).
pub fn window_kind_name(kind: i32) -> String {
    match WindowKind::try_from(kind) {
        Ok(WindowKind::Unspecified) => WindowKind::Current.short_name().to_string(),
        Ok(k) => k.short_name().to_string(),
        Err(_) => format!("UNKNOWN({kind})"),
    }
}

/// Keys of `maps` in the order people read them: monitored metrics first,
/// then the rest alphabetically.
fn metric_keys<'a>(maps: impl IntoIterator<Item = &'a HashMap<String, f64>>) -> Vec<String> {
    let all: BTreeSet<&str> = maps
        .into_iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let mut keys: Vec<String> = MONITORED
        .iter()
        .filter(|k| all.contains(*k))
        .map(|k| k.to_string())
        .collect();
    keys.extend(
        all.iter()
            .filter(|k| !MONITORED.contains(k))
            .map(|k| k.to_string()),
    );
    keys
}

/// The metric a policy judges: accuracy, or r2 for regression.
fn primary_metric(r: &Report) -> Option<&'static str> {
    let perfs = r
        .performance
        .iter()
        .chain(r.history.iter().filter_map(|w| w.performance.as_ref()));
    let has = |k: &str| {
        perfs.clone().any(|p| {
            p.training.contains_key(k) || p.realized.contains_key(k) || p.estimated.contains_key(k)
        })
    };
    ["accuracy", "r2"].into_iter().find(|k| has(k))
}

// ---------------------------------------------------------------- health ---

/// The header line of `health`: what, which window, how much, drifted or not.
pub fn report_header(r: &Report, resolved: &str) -> String {
    let mut line = format!("{}/{}", r.model, r.version);
    if !resolved.is_empty() {
        line.push_str(&format!(" ({resolved})"));
    }
    line.push_str(&format!("  window {}", window_kind_name(r.window)));
    if let Some(s) = &r.summary {
        if s.seq > 0 {
            line.push_str(&format!(" #{}", s.seq));
        }
    }
    let rows = r
        .drift
        .as_ref()
        .map(|d| d.rows)
        .or(r.summary.as_ref().map(|s| s.rows))
        .unwrap_or(0);
    line.push_str(&format!("  {rows} rows"));
    match &r.drift {
        Some(d) => {
            let drifted = d.features.iter().filter(|f| f.drifted).count();
            line.push_str(&format!(
                "  dataset drift: {} ({} drifted, {drifted}/{} features)",
                yes_no(d.dataset_drift),
                percent(d.drifted_share),
                d.features.len()
            ));
        }
        None => line.push_str("  dataset drift: no data yet"),
    }
    line
}

/// KS and χ² have a p-value; the distances do not.
fn p_value(f: &FeatureDrift) -> String {
    match f.test.as_str() {
        "ks" | "chi2" => num(f.p_value),
        _ => MISSING.to_string(),
    }
}

fn drift_row(f: &FeatureDrift) -> Vec<String> {
    vec![
        f.feature.clone(),
        f.test.clone(),
        num(f.statistic),
        num(f.threshold),
        p_value(f),
        yes_no(f.drifted).to_string(),
    ]
}

/// `FEATURE TEST STATISTIC THRESHOLD P-VALUE DRIFTED`, one row per feature,
/// then the `prediction` row and the per-class `p(LABEL)` rows.
pub fn drift_table(d: &DriftReport) -> String {
    let mut t = Table::new(&[
        "FEATURE",
        "TEST",
        "STATISTIC",
        "THRESHOLD",
        "P-VALUE",
        "DRIFTED",
    ]);
    for f in &d.features {
        t.row(drift_row(f));
    }
    if let Some(p) = &d.prediction {
        let mut row = drift_row(p);
        if row[0].is_empty() {
            row[0] = "prediction".to_string();
        }
        t.row(row);
    }
    for p in &d.probabilities {
        t.row(drift_row(p));
    }
    t.lines().join("\n")
}

/// Training vs realized vs estimated, for each metric measured (or, before
/// anything is, the training metrics the monitor will measure).
pub fn performance_block(p: &Performance) -> String {
    let training: HashMap<String, f64> = p
        .training
        .iter()
        .filter(|(k, _)| {
            MONITORED.contains(&k.as_str())
                || p.realized.contains_key(*k)
                || p.estimated.contains_key(*k)
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    // CBPE's estimate on the training holdout, the baseline of "estimated".
    let baseline = !p.estimated_reference.is_empty();
    let mut header = vec!["METRIC", "TRAINING", "REALIZED", "ESTIMATED"];
    if baseline {
        header.push("ESTIMATED AT TRAINING");
    }
    let mut t = Table::new(&header);
    for k in metric_keys([&training, &p.realized, &p.estimated]) {
        let mut row = vec![
            k.clone(),
            opt_num(p.training.get(&k).copied()),
            opt_num(p.realized.get(&k).copied()),
            opt_num(p.estimated.get(&k).copied()),
        ];
        if baseline {
            row.push(opt_num(p.estimated_reference.get(&k).copied()));
        }
        t.row(row);
    }
    let mut lines = t.lines();
    lines.push(format!("labeled rows: {}", p.labeled));
    lines.join("\n")
}

/// `health: 1200 requests, error rate 0.5% (6 errors), latency p50 1.2 ms
/// p99 8 ms, 0 dropped`.
pub fn health_line(h: &Health) -> String {
    format!(
        "health: {} requests, error rate {} ({} errors), latency p50 {} ms p99 {} ms, {} dropped",
        h.requests,
        percent(h.error_rate),
        h.errors,
        num(h.latency_p50_ms),
        num(h.latency_p99_ms),
        h.dropped
    )
}

/// The last closed windows: seq, rows, drifted share, the primary metric
/// realized / estimated, why it breached.
pub fn history_table(history: &[WindowSummary], metric: Option<&str>) -> String {
    let metric = metric.unwrap_or("accuracy");
    let realized = format!("{} REALIZED", metric.to_uppercase());
    let estimated = format!("{} ESTIMATED", metric.to_uppercase());
    let mut t = Table::new(&[
        "WINDOW", "END", "ROWS", "DRIFTED", &realized, &estimated, "BREACHES",
    ]);
    let skip = history.len().saturating_sub(HISTORY_SHOWN);
    for w in &history[skip..] {
        let perf = w.performance.as_ref();
        let get =
            |m: Option<&HashMap<String, f64>>| opt_num(m.and_then(|m| m.get(metric)).copied());
        t.row(vec![
            format!("#{}", w.seq),
            short_time(w.end.as_ref()),
            w.rows.to_string(),
            percent(w.drifted_share),
            get(perf.map(|p| &p.realized)),
            get(perf.map(|p| &p.estimated)),
            if w.breaches.is_empty() {
                MISSING.to_string()
            } else {
                w.breaches.join("; ")
            },
        ]);
    }
    t.lines().join("\n")
}

/// What became of a signal: the action taken, or why it failed.
fn outcome(s: &Signal) -> String {
    match (s.action.is_empty(), s.error.is_empty()) {
        (_, false) if s.action.is_empty() => format!("failed: {}", s.error),
        (_, false) => format!("{} (failed: {})", s.action, s.error),
        (false, true) => s.action.clone(),
        (true, true) => MISSING.to_string(),
    }
}

/// `ID TIME KIND MODEL VERSION REASON ACTION` (MODEL only when `with_model`).
pub fn signals_table(signals: &[Signal], with_model: bool) -> String {
    let mut header = vec!["ID", "TIME", "KIND"];
    if with_model {
        header.push("MODEL");
    }
    header.extend(["VERSION", "REASON", "ACTION"]);
    let mut t = Table::new(&header);
    for s in signals {
        let mut row = vec![
            s.id.to_string(),
            short_time(s.time.as_ref()),
            signal_kind_name(s.kind),
        ];
        if with_model {
            row.push(s.model.clone());
        }
        row.extend([s.version.to_string(), s.reason.clone(), outcome(s)]);
        t.row(row);
    }
    t.lines().join("\n")
}

/// One line per signal, for `signals --watch`.
pub fn signal_line(s: &Signal) -> String {
    format!(
        "{:>6}  {}  {:<8} {}/{}: {} -> {}",
        s.id,
        short_time(s.time.as_ref()),
        signal_kind_name(s.kind),
        s.model,
        s.version,
        s.reason,
        outcome(s)
    )
}

/// The whole `health` text. `resolved` says how the version was picked
/// (`production`, `latest`), empty when given.
pub fn render_report(r: &Report, resolved: &str) -> String {
    let mut out = vec![report_header(r, resolved)];
    if let Some(d) = &r.drift {
        out.push(String::new());
        out.push(drift_table(d));
    }
    out.push(String::new());
    out.push(performance_block(
        &r.performance.clone().unwrap_or_default(),
    ));
    out.push(String::new());
    out.push(health_line(&r.health.unwrap_or_default()));
    if !r.history.is_empty() {
        out.push(String::new());
        out.push(format!(
            "last windows ({} of {}):",
            r.history.len().min(HISTORY_SHOWN),
            r.history.len()
        ));
        out.push(history_table(&r.history, primary_metric(r)));
    }
    out.push(String::new());
    if r.signals.is_empty() {
        out.push("signals: none".to_string());
    } else {
        out.push("signals:".to_string());
        out.push(signals_table(&r.signals, false));
    }
    if r.feedback_unknown > 0 || r.feedback_expired > 0 {
        out.push(format!(
            "feedback that matched nothing (all models): {} unknown, {} expired",
            r.feedback_unknown, r.feedback_expired
        ));
    }
    out.join("\n")
}

// --------------------------------------------------------------- compare ---

/// What `versions compare` shows of one version: the registry's record and,
/// when the monitor has seen it, its long-window report.
pub struct Compared {
    pub version: ModelVersion,
    pub report: Option<Report>,
}

fn perf_of(c: &Compared) -> Option<&Performance> {
    c.report.as_ref().and_then(|r| r.performance.as_ref())
}

fn drifted_share_of(c: &Compared) -> Option<f64> {
    let r = c.report.as_ref()?;
    r.drift
        .as_ref()
        .map(|d| d.drifted_share)
        .or(r.summary.as_ref().map(|s| s.drifted_share))
}

/// Fold-by-fold cross-validation scores are noise in a side-by-side view.
fn compared_metric(k: &str) -> bool {
    !(k.starts_with("cv_") && k.contains("_fold"))
}

/// `b - a` with its sign, when both exist.
fn diff(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
            let d = b - a;
            if d == 0.0 {
                "0".to_string()
            } else if d > 0.0 {
                format!("+{}", short_number(d))
            } else {
                short_number(d)
            }
        }
        _ => String::new(),
    }
}

/// `versions compare`: one row per figure, one column per version, and the
/// difference (second minus first).
pub fn render_compare(a: &Compared, b: &Compared) -> String {
    let head_a = format!("{}/{}", a.version.model, a.version.version);
    let head_b = format!("{}/{}", b.version.model, b.version.version);
    let mut t = Table::new(&["", &head_a, &head_b, "DIFF"]);
    let text_row = |t: &mut Table, label: &str, f: &dyn Fn(&Compared) -> String| {
        t.row(vec![label.to_string(), f(a), f(b), String::new()]);
    };
    let num_row = |t: &mut Table, label: String, f: &dyn Fn(&Compared) -> Option<f64>| {
        let (x, y) = (f(a), f(b));
        t.row(vec![label, opt_num(x), opt_num(y), diff(x, y)]);
    };
    text_row(&mut t, "status", &|c| status_name(c.version.status));
    text_row(&mut t, "aliases", &|c| c.version.aliases.join(","));
    text_row(&mut t, "created", &|c| {
        short_time(c.version.created_at.as_ref())
    });

    let training: Vec<HashMap<String, f64>> = [a, b]
        .iter()
        .map(|c| {
            c.version
                .metrics
                .iter()
                .filter(|(k, _)| compared_metric(k))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        })
        .collect();
    for k in metric_keys(&training) {
        num_row(&mut t, format!("training {k}"), &|c| {
            c.version.metrics.get(&k).copied()
        });
    }

    let monitored: Vec<&HashMap<String, f64>> = [a, b]
        .iter()
        .filter_map(|c| perf_of(c))
        .flat_map(|p| [&p.realized, &p.estimated])
        .collect();
    let keys = metric_keys(monitored);
    for k in &keys {
        num_row(&mut t, format!("realized {k}"), &|c| {
            perf_of(c).and_then(|p| p.realized.get(k)).copied()
        });
    }
    for k in &keys {
        num_row(&mut t, format!("estimated {k}"), &|c| {
            perf_of(c).and_then(|p| p.estimated.get(k)).copied()
        });
    }
    t.row(vec![
        "drifted share".to_string(),
        drifted_share_of(a).map_or(MISSING.to_string(), percent),
        drifted_share_of(b).map_or(MISSING.to_string(), percent),
        String::new(),
    ]);
    let count_row = |t: &mut Table, label: &str, f: &dyn Fn(&Report) -> u64| {
        let cell = |c: &Compared| {
            c.report
                .as_ref()
                .map_or(MISSING.to_string(), |r| f(r).to_string())
        };
        t.row(vec![label.to_string(), cell(a), cell(b), String::new()]);
    };
    count_row(&mut t, "rows seen", &|r| {
        r.drift
            .as_ref()
            .map(|d| d.rows)
            .or(r.summary.as_ref().map(|s| s.rows))
            .unwrap_or(0)
    });
    count_row(&mut t, "labeled rows", &|r| {
        r.performance.as_ref().map_or(0, |p| p.labeled)
    });
    let mut lines = t.lines();
    for c in [a, b] {
        if c.report.is_none() {
            lines.push(format!(
                "{}/{}: not seen by the monitor",
                c.version.model, c.version.version
            ));
        }
    }
    lines.join("\n")
}

pub fn compare_json(a: &Compared, b: &Compared) -> Value {
    let one = |c: &Compared| {
        json!({
            "version": c.version.version,
            "status": status_name(c.version.status),
            "aliases": c.version.aliases,
            "training": number_map(&c.version.metrics),
            "monitor": c.report.as_ref().map(|r| json!({
                "realized": r.performance.as_ref().map(|p| number_map(&p.realized)),
                "estimated": r.performance.as_ref().map(|p| number_map(&p.estimated)),
                "labeled": r.performance.as_ref().map(|p| p.labeled),
                "drifted_share": drifted_share_of(c),
                "rows": r.drift.as_ref().map(|d| d.rows),
            })),
        })
    };
    json!({
        "model": a.version.model,
        "versions": [one(a), one(b)],
    })
}

// ---------------------------------------------------------------- policy ---

/// `value` or, when 0 / unset (= the monitor's default), what the default is.
fn or_default(is_set: bool, value: String, default: &str) -> String {
    if is_set {
        value
    } else {
        format!("default ({default})")
    }
}

fn opt_bool(b: Option<bool>, default: &str) -> String {
    or_default(b.is_some(), b.unwrap_or_default().to_string(), default)
}

/// `600` -> `10m`, `90` -> `1m30s`, `3600` -> `1h`.
pub fn format_duration(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// `k=v, k=v`, sorted.
fn overrides<V: ToString>(map: &HashMap<String, V>) -> String {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|x, y| x.0.cmp(y.0));
    entries
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The effective policy as `key  value` lines; 0 / unset fields say which
/// default applies (the defaults documented in monitor.proto).
pub fn render_policy(p: &Policy) -> String {
    let mut t = Table::new(&["KEY", "VALUE"]);
    let rows: Vec<(&str, String)> = vec![
        ("model", p.model.clone()),
        (
            "min rows",
            or_default(p.min_rows > 0, p.min_rows.to_string(), "100"),
        ),
        (
            "min labels",
            or_default(p.min_labels > 0, p.min_labels.to_string(), "50"),
        ),
        (
            "drift share",
            or_default(p.drift_share > 0.0, num(p.drift_share), "monitor config"),
        ),
        ("drift breaches", opt_bool(p.drift_breaches, "true")),
        (
            "max metric drop",
            or_default(p.max_metric_drop > 0.0, num(p.max_metric_drop), "0.05"),
        ),
        (
            "consecutive",
            or_default(p.consecutive > 0, p.consecutive.to_string(), "2"),
        ),
        (
            "cooldown",
            or_default(
                p.cooldown_seconds > 0,
                format_duration(p.cooldown_seconds),
                "10m",
            ),
        ),
        ("retrain", opt_bool(p.retrain, "true")),
        ("rollback", opt_bool(p.rollback, "true")),
        ("retire", opt_bool(p.retire, "false")),
        (
            "alias",
            or_default(!p.alias.is_empty(), p.alias.clone(), "production"),
        ),
        (
            "rollback margin",
            or_default(p.rollback_margin > 0.0, num(p.rollback_margin), "0.05"),
        ),
        (
            "min improvement",
            or_default(p.min_improvement > 0.0, num(p.min_improvement), "0"),
        ),
        ("tests", overrides(&p.tests)),
        (
            "thresholds",
            overrides(
                &p.thresholds
                    .iter()
                    .map(|(k, v)| (k.clone(), num(*v)))
                    .collect(),
            ),
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    t.lines().join("\n")
}

pub fn policy_json(p: &Policy) -> Value {
    let positive = |x: f64| (x > 0.0).then_some(x);
    json!({
        "model": p.model,
        "min_rows": (p.min_rows > 0).then_some(p.min_rows),
        "min_labels": (p.min_labels > 0).then_some(p.min_labels),
        "drift_share": positive(p.drift_share),
        "max_metric_drop": positive(p.max_metric_drop),
        "drift_breaches": p.drift_breaches,
        "consecutive": (p.consecutive > 0).then_some(p.consecutive),
        "cooldown_seconds": (p.cooldown_seconds > 0).then_some(p.cooldown_seconds),
        "retrain": p.retrain,
        "rollback": p.rollback,
        "retire": p.retire,
        "alias": (!p.alias.is_empty()).then_some(&p.alias),
        "rollback_margin": positive(p.rollback_margin),
        "min_improvement": positive(p.min_improvement),
        "tests": Value::Object(p.tests.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<Map<_, _>>()),
        "thresholds": number_map(&p.thresholds),
    })
}

// ------------------------------------------------------------------ json ---

fn number_map(map: &HashMap<String, f64>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

fn feature_drift_json(f: &FeatureDrift) -> Value {
    json!({
        "feature": f.feature,
        "test": f.test,
        "statistic": f.statistic,
        "threshold": f.threshold,
        "p_value": matches!(f.test.as_str(), "ks" | "chi2").then_some(f.p_value),
        "drifted": f.drifted,
        "psi": f.psi,
        "count": f.count,
        "missing": f.missing,
    })
}

pub fn drift_json(d: &DriftReport) -> Value {
    json!({
        "model": d.model,
        "version": d.version,
        "rows": d.rows,
        "dataset_drift": d.dataset_drift,
        "drifted_share": d.drifted_share,
        "features": d.features.iter().map(feature_drift_json).collect::<Vec<_>>(),
        "prediction": d.prediction.as_ref().map(feature_drift_json),
        "probabilities": d.probabilities.iter().map(feature_drift_json).collect::<Vec<_>>(),
    })
}

fn performance_json(p: &Performance) -> Value {
    json!({
        "labeled": p.labeled,
        "training": number_map(&p.training),
        "realized": number_map(&p.realized),
        "estimated": number_map(&p.estimated),
        "estimated_reference": number_map(&p.estimated_reference),
    })
}

fn health_json(h: &Health) -> Value {
    json!({
        "requests": h.requests,
        "errors": h.errors,
        "error_rate": h.error_rate,
        "latency_p50_ms": h.latency_p50_ms,
        "latency_p99_ms": h.latency_p99_ms,
        "dropped": h.dropped,
    })
}

fn window_json(w: &WindowSummary) -> Value {
    json!({
        "seq": w.seq,
        "start": rfc3339(w.start.as_ref()),
        "end": rfc3339(w.end.as_ref()),
        "rows": w.rows,
        "drifted_share": w.drifted_share,
        "dataset_drift": w.dataset_drift,
        "drifted_features": w.drifted_features,
        "prediction_drift": w.prediction_drift,
        "performance": w.performance.as_ref().map(performance_json),
        "health": w.health.as_ref().map(health_json),
        "breaches": w.breaches,
    })
}

pub fn signal_json(s: &Signal) -> Value {
    json!({
        "id": s.id,
        "kind": signal_kind_name(s.kind),
        "model": s.model,
        "version": s.version,
        "time": rfc3339(s.time.as_ref()),
        "reason": s.reason,
        "evidence": s.evidence,
        "windows": s.windows,
        "action": s.action,
        "error": s.error,
        "target_version": (s.target_version > 0).then_some(s.target_version),
    })
}

pub fn report_json(r: &Report) -> Value {
    json!({
        "model": r.model,
        "version": r.version,
        "window": window_kind_name(r.window),
        "drift": r.drift.as_ref().map(drift_json),
        "performance": r.performance.as_ref().map(performance_json),
        "health": r.health.as_ref().map(health_json),
        "summary": r.summary.as_ref().map(window_json),
        "history": r.history.iter().map(window_json).collect::<Vec<_>>(),
        "signals": r.signals.iter().map(signal_json).collect::<Vec<_>>(),
        "feedback_unknown": r.feedback_unknown,
        "feedback_expired": r.feedback_expired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn feature(
        name: &str,
        test: &str,
        statistic: f64,
        threshold: f64,
        drifted: bool,
    ) -> FeatureDrift {
        FeatureDrift {
            feature: name.into(),
            test: test.into(),
            statistic,
            threshold,
            p_value: if test == "ks" { 0.0123 } else { 0.0 },
            drifted,
            ..Default::default()
        }
    }

    fn signal(id: u64, kind: SignalKind, action: &str, error: &str) -> Signal {
        Signal {
            id,
            kind: kind as i32,
            model: "churn".into(),
            version: 3,
            time: Some(evergreen_proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            reason: "accuracy fell 0.08 below training for 2 windows".into(),
            action: action.into(),
            error: error.into(),
            ..Default::default()
        }
    }

    fn report() -> Report {
        Report {
            model: "churn".into(),
            version: 3,
            window: WindowKind::Current as i32,
            drift: Some(DriftReport {
                model: "churn".into(),
                version: 3,
                features: vec![
                    feature("age", "ks", 0.31, 0.05, true),
                    feature("plan", "chi2", 1.5, 0.05, false),
                    feature("income", "wasserstein", 0.02, 0.1, false),
                ],
                dataset_drift: false,
                rows: 1234,
                drifted_share: 1.0 / 3.0,
                prediction: Some(feature("prediction", "psi", 0.25, 0.2, true)),
                probabilities: vec![feature("p(yes)", "wasserstein", 0.07, 0.1, false)],
            }),
            performance: Some(Performance {
                labeled: 80,
                realized: metrics(&[("accuracy", 0.87)]),
                estimated: metrics(&[("accuracy", 0.9), ("roc_auc", 0.93)]),
                training: metrics(&[("accuracy", 0.95), ("roc_auc", 0.97), ("log_loss", 0.2)]),
                ..Default::default()
            }),
            health: Some(Health {
                requests: 1300,
                errors: 13,
                error_rate: 0.01,
                latency_p50_ms: 1.25,
                latency_p99_ms: 8.0,
                dropped: 2,
            }),
            summary: Some(WindowSummary {
                seq: 12,
                rows: 1234,
                ..Default::default()
            }),
            history: (1..=7)
                .map(|seq| WindowSummary {
                    seq,
                    rows: 1000 + seq,
                    drifted_share: 0.5,
                    performance: Some(Performance {
                        realized: if seq == 7 {
                            metrics(&[("accuracy", 0.81)])
                        } else {
                            HashMap::new()
                        },
                        estimated: metrics(&[("accuracy", 0.88)]),
                        ..Default::default()
                    }),
                    breaches: if seq == 7 {
                        vec!["accuracy 0.81 < 0.90".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })
                .collect(),
            signals: vec![signal(4, SignalKind::Retrain, "trainer job job-000004", "")],
            ..Default::default()
        }
    }

    /// The table line that starts with `first`, split into cells.
    fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
        text.lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first() == Some(&first))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
    }

    #[test]
    fn header_names_version_window_rows_and_drift() {
        let h = report_header(&report(), "production");
        assert_eq!(
            h,
            "churn/3 (production)  window CURRENT #12  1234 rows  dataset drift: no (33.3% drifted, 1/3 features)"
        );
        let mut r = report();
        r.drift.as_mut().unwrap().dataset_drift = true;
        assert!(report_header(&r, "").contains("dataset drift: yes"));
        r.drift = None;
        assert!(report_header(&r, "").ends_with("dataset drift: no data yet"));
    }

    #[test]
    fn drift_table_has_every_feature_and_the_prediction() {
        let t = drift_table(report().drift.as_ref().unwrap());
        assert!(t.starts_with("FEATURE"), "{t}");
        assert!(t.lines().next().unwrap().contains("P-VALUE"));
        assert_eq!(
            row(&t, "age"),
            ["age", "ks", "0.31", "0.05", "0.0123", "yes"]
        );
        assert_eq!(row(&t, "plan"), ["plan", "chi2", "1.5", "0.05", "0", "no"]);
        // Distances have no p-value.
        assert_eq!(
            row(&t, "income"),
            ["income", "wasserstein", "0.02", "0.1", "—", "no"]
        );
        assert_eq!(
            row(&t, "prediction"),
            ["prediction", "psi", "0.25", "0.2", "—", "yes"]
        );
        assert_eq!(
            row(&t, "p(yes)"),
            ["p(yes)", "wasserstein", "0.07", "0.1", "—", "no"]
        );
        assert_eq!(t.lines().count(), 1 + 3 + 1 + 1, "{t}");
    }

    #[test]
    fn performance_shows_missing_metrics_as_dashes() {
        let p = report().performance.unwrap();
        let t = performance_block(&p);
        assert_eq!(row(&t, "accuracy"), ["accuracy", "0.95", "0.87", "0.9"]);
        assert_eq!(row(&t, "roc_auc"), ["roc_auc", "0.97", "—", "0.93"]);
        // Training-only metrics the monitor does not measure stay out.
        assert!(!t.contains("log_loss"), "{t}");
        assert!(t.ends_with("labeled rows: 80"), "{t}");
        // Before anything is measured: training figures, dashes elsewhere.
        let t = performance_block(&Performance {
            training: metrics(&[("r2", 0.8), ("train_rows", 100.0)]),
            ..Default::default()
        });
        assert_eq!(row(&t, "r2"), ["r2", "0.8", "—", "—"]);
        assert!(!t.contains("train_rows"));
        // CBPE's baseline gets its own column when the monitor sends it.
        let mut p = report().performance.unwrap();
        p.estimated_reference = metrics(&[("accuracy", 0.93)]);
        let t = performance_block(&p);
        assert!(
            t.lines().next().unwrap().ends_with("ESTIMATED AT TRAINING"),
            "{t}"
        );
        assert_eq!(
            row(&t, "accuracy"),
            ["accuracy", "0.95", "0.87", "0.9", "0.93"]
        );
        assert_eq!(row(&t, "roc_auc"), ["roc_auc", "0.97", "—", "0.93", "—"]);
    }

    #[test]
    fn health_line_has_rates_and_latencies() {
        assert_eq!(
            health_line(&report().health.unwrap()),
            "health: 1300 requests, error rate 1% (13 errors), latency p50 1.25 ms p99 8 ms, 2 dropped"
        );
    }

    #[test]
    fn history_shows_the_last_windows_with_the_primary_metric() {
        let r = report();
        let t = history_table(&r.history, primary_metric(&r));
        let header = t.lines().next().unwrap();
        assert!(header.contains("ACCURACY REALIZED") && header.contains("ACCURACY ESTIMATED"));
        assert_eq!(t.lines().count(), 1 + 5, "{t}");
        assert!(!t.contains("#2 "), "oldest windows are left out:\n{t}");
        assert_eq!(
            row(&t, "#7"),
            ["#7", "1007", "50%", "0.81", "0.88", "accuracy 0.81 < 0.90"]
        );
        assert_eq!(row(&t, "#3"), ["#3", "1003", "50%", "—", "0.88", "—"]);
    }

    #[test]
    fn signals_show_kind_and_action_or_error() {
        let signals = vec![
            signal(4, SignalKind::Retrain, "trainer job job-000004", ""),
            signal(5, SignalKind::Rollback, "", "alias moved meanwhile"),
        ];
        let t = signals_table(&signals, true);
        assert!(t.lines().next().unwrap().contains("MODEL"));
        let r4 = row(&t, "4");
        assert_eq!(r4[2], "RETRAIN");
        assert_eq!(r4[3], "churn");
        assert_eq!(r4[6], "trainer job job-000004");
        assert_eq!(row(&t, "5")[6], "failed: alias moved meanwhile");
        assert!(!signals_table(&signals, false).contains("MODEL"));
        let line = signal_line(&signals[1]);
        assert!(
            line.contains("ROLLBACK") && line.contains("churn/3"),
            "{line}"
        );
        assert!(line.ends_with("-> failed: alias moved meanwhile"), "{line}");
        assert_eq!(signal_json(&signals[0])["kind"], "RETRAIN");
    }

    #[test]
    fn whole_report_renders_every_block() {
        let text = render_report(&report(), "production");
        for part in [
            "churn/3 (production)",
            "FEATURE",
            "METRIC",
            "health: 1300 requests",
            "last windows (5 of 7):",
            "signals:",
            "trainer job job-000004",
        ] {
            assert!(text.contains(part), "{part:?} missing from\n{text}");
        }
        let empty = render_report(
            &Report {
                model: "m".into(),
                version: 1,
                ..Default::default()
            },
            "",
        );
        assert!(empty.contains("dataset drift: no data yet"), "{empty}");
        assert!(empty.contains("signals: none"), "{empty}");
    }

    #[test]
    fn report_json_has_short_names_and_nulls() {
        let j = report_json(&report());
        assert_eq!(j["window"], "CURRENT");
        assert_eq!(j["drift"]["features"][0]["p_value"], 0.0123);
        assert_eq!(j["drift"]["features"][2]["p_value"], Value::Null);
        assert_eq!(j["drift"]["prediction"]["drifted"], true);
        assert_eq!(j["performance"]["realized"]["accuracy"], 0.87);
        assert_eq!(j["history"].as_array().unwrap().len(), 7);
        assert_eq!(j["signals"][0]["kind"], "RETRAIN");
        assert_eq!(window_kind_name(WindowKind::Unspecified as i32), "CURRENT");
    }

    #[test]
    fn compare_puts_versions_side_by_side() {
        let version = |v: u64, acc: f64| ModelVersion {
            model: "churn".into(),
            version: v,
            metrics: metrics(&[("accuracy", acc), ("cv_accuracy_fold1", 0.9)]),
            ..Default::default()
        };
        let a = Compared {
            version: version(2, 0.9),
            report: Some(report()),
        };
        let b = Compared {
            version: version(3, 0.95),
            report: None,
        };
        let t = render_compare(&a, &b);
        assert!(t.lines().next().unwrap().contains("churn/2") && t.contains("churn/3"));
        assert_eq!(
            row(&t, "training accuracy"),
            ["training accuracy", "0.9", "0.95", "+0.05"]
        );
        // The version the monitor has not seen shows dashes, not an error.
        assert_eq!(
            row(&t, "realized accuracy"),
            ["realized accuracy", "0.87", "—"]
        );
        assert_eq!(
            row(&t, "estimated roc_auc"),
            ["estimated roc_auc", "0.93", "—"]
        );
        assert_eq!(row(&t, "drifted share"), ["drifted share", "33.3%", "—"]);
        assert_eq!(row(&t, "labeled rows"), ["labeled rows", "80", "—"]);
        assert!(t.ends_with("churn/3: not seen by the monitor"), "{t}");
        assert!(!t.contains("fold1"), "{t}");
        let j = compare_json(&a, &b);
        assert_eq!(j["versions"][1]["monitor"], Value::Null);
        assert_eq!(j["versions"][0]["monitor"]["realized"]["accuracy"], 0.87);
    }

    #[test]
    fn policy_shows_values_and_defaults() {
        let p = Policy {
            model: "churn".into(),
            min_rows: 500,
            cooldown_seconds: 90,
            retire: Some(true),
            rollback: Some(false),
            tests: [("age".to_string(), "ks".to_string())].into(),
            thresholds: [("age".to_string(), 0.01)].into(),
            ..Default::default()
        };
        let t = render_policy(&p);
        assert_eq!(row(&t, "min rows"), ["min rows", "500"]);
        assert_eq!(row(&t, "min labels"), ["min labels", "default (50)"]);
        assert_eq!(row(&t, "cooldown"), ["cooldown", "1m30s"]);
        assert_eq!(row(&t, "retire"), ["retire", "true"]);
        assert_eq!(row(&t, "rollback"), ["rollback", "false"]);
        assert_eq!(row(&t, "retrain"), ["retrain", "default (true)"]);
        assert_eq!(row(&t, "alias"), ["alias", "default (production)"]);
        assert_eq!(row(&t, "tests"), ["tests", "age=ks"]);
        assert_eq!(row(&t, "thresholds"), ["thresholds", "age=0.01"]);
        let j = policy_json(&p);
        assert_eq!(j["min_rows"], 500);
        assert_eq!(j["min_labels"], Value::Null);
        assert_eq!(j["retire"], true);
        assert_eq!(j["tests"]["age"], "ks");
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(num(f64::NAN), "—");
        assert_eq!(format_duration(600), "10m");
        assert_eq!(format_duration(3_630), "1h30s");
        assert_eq!(format_duration(0), "0s");
    }
}
