"""Evidently drift-report baseline for `just bench-compare` (issue #8, section 5).

Measures Evidently 0.7's DataDriftPreset with its defaults (per-column test
chosen by Evidently: for 100k numerical rows that is the normed Wasserstein
distance, drifted when >= 0.1) over every column except `target`.

Timing: both CSVs are read with pandas and `target` dropped BEFORE timing
starts, so CSV loading is NOT inside the figures. Each of the N runs times
  Report([DataDriftPreset()], include_tests=True).run(current, reference)
with time.perf_counter(); reading the results out of the snapshot
(`snapshot.dict()`) is outside the timing. `include_tests=True` makes
Evidently attach its own per-column verdict (the "Value Drift for column X"
test FAILs exactly when its stat test reports drift); the drift computation
is the same as with include_tests=False, which only leaves the verdicts out.

Per column, from the last run's snapshot dict: `score` is the ValueDrift
metric's value, `method` and `threshold` its resolved config, `drifted` the
status of its test (FAIL = drifted). For "Wasserstein distance (normed)" the
verdict is cross-checked against Evidently's rule score >= threshold.

Prints exactly one JSON object on stdout:
  {"tool": "evidently", "version": ..., "seconds": [each run],
   "n_reference": ..., "n_current": ..., "columns": [...],
   "drifted": {"f0": true, ...}, "method": {"f0": "Wasserstein distance (normed)", ...},
   "threshold": {"f0": 0.1, ...}, "score": {"f0": ..., ...},
   "drifted_count": ..., "dataset_drift": true|false}
"""

import argparse
import json
import sys
import time


def log(msg):
    print(f"evidently_drift.py: {msg}", file=sys.stderr, flush=True)


def load(path):
    import pandas as pd

    df = pd.read_csv(path)
    return df.drop(columns=["target"]) if "target" in df.columns else df


def per_column(snapshot_dict):
    """Per-column score/method/threshold/verdict out of a Snapshot.dict().

    The dict is {"metrics": [...], "tests": [...]}; each ValueDrift metric is
    {"id", "config": {"type": "evidently:metric_v2:ValueDrift", "column",
    "method", "threshold"}, "value": score}; its test is {"id": "drift",
    "metric_config": {"metric_id": <the metric's id>}, "status": "FAIL"|"SUCCESS"}.
    """
    cols = {}
    by_id = {}
    count = None
    for m in snapshot_dict["metrics"]:
        kind = m["config"]["type"]
        if kind == "evidently:metric_v2:ValueDrift":
            c = m["config"]["column"]
            cols[c] = {"score": float(m["value"]), "method": m["config"]["method"],
                       "threshold": m["config"]["threshold"], "drifted": None}
            by_id[m["id"]] = c
        elif kind == "evidently:metric_v2:DriftedColumnsCount":
            count = m
    for t in snapshot_dict["tests"]:
        c = by_id.get(t["metric_config"]["metric_id"])
        if c is not None and t["id"] == "drift":
            cols[c]["drifted"] = t["status"] == "FAIL"
    missing = [c for c, r in cols.items() if r["drifted"] is None]
    if missing:
        sys.exit(f"evidently_drift.py: no drift test result for columns {missing} in the snapshot")
    for c, r in cols.items():
        if r["method"] == "Wasserstein distance (normed)":
            rule = r["score"] >= r["threshold"]
            if rule != r["drifted"]:
                sys.exit(f"evidently_drift.py: column {c}: test says drifted={r['drifted']} "
                         f"but score {r['score']} vs threshold {r['threshold']} says {rule}")
    return cols, count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="reference CSV (a `target` column is ignored)")
    p.add_argument("--current", required=True, help="current CSV with the same columns")
    p.add_argument("--runs", type=int, default=1, help="number of timed reports (default 1)")
    a = p.parse_args()
    if a.runs < 1:
        p.error("--runs must be >= 1")

    import evidently
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref = load(a.reference)
    cur = load(a.current)
    if list(ref.columns) != list(cur.columns):
        sys.exit(f"evidently_drift.py: columns differ: {a.reference} has {list(ref.columns)}, "
                 f"{a.current} has {list(cur.columns)}")

    seconds = []
    snapshot = None
    for i in range(a.runs):
        t0 = time.perf_counter()
        snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
        dt = time.perf_counter() - t0
        seconds.append(dt)
        log(f"run {i + 1}/{a.runs}: {dt:.3f} s")

    cols, count = per_column(snapshot.dict())
    order = [c for c in ref.columns if c in cols]
    drifted = [c for c in order if cols[c]["drifted"]]
    log(f"drifted columns: {drifted or 'none'}")
    share = count["value"]["share"] if count else len(drifted) / max(len(order), 1)
    drift_share = count["config"].get("drift_share", 0.5) if count else 0.5
    print(json.dumps({
        "tool": "evidently",
        "version": evidently.__version__,
        "seconds": seconds,
        "n_reference": int(len(ref)),
        "n_current": int(len(cur)),
        "columns": order,
        "drifted": {c: cols[c]["drifted"] for c in order},
        "method": {c: cols[c]["method"] for c in order},
        "threshold": {c: cols[c]["threshold"] for c in order},
        "score": {c: cols[c]["score"] for c in order},
        "drifted_count": len(drifted),
        "dataset_drift": bool(share >= drift_share),
    }))


if __name__ == "__main__":
    main()
