"""scikit-learn training baseline for `just bench-compare` (issue #8, section 1).

Measures the wall-clock time of `fit` only: both CSVs are loaded with pandas
and split into X (every column but `target`) and y (`target`) BEFORE any
timing starts, so CSV parsing is outside the figures. Each of the N runs builds
a fresh estimator and times `estimator.fit(X_train, y_train)` with
time.perf_counter(). Accuracy is that of the last run's model on TEST.csv
(sklearn.metrics.accuracy_score on `predict`); it is outside the timing.

Models (scikit-learn defaults otherwise, random_state=0 so runs are comparable):
  tree   = DecisionTreeClassifier(max_depth=MAX_DEPTH)                        (default 10)
  forest = RandomForestClassifier(n_estimators=N_TREES, n_jobs=-1,
                                  max_features="sqrt", bootstrap=True,
                                  max_depth=MAX_DEPTH if given, else unlimited)

Prints exactly one JSON object on stdout:
  {"tool": "scikit-learn", "version": ..., "model": "tree"|"forest",
   "fit_seconds": [each run], "accuracy": ..., "n_train": ..., "n_test": ...,
   "params": {...}}
Logs go to stderr.
"""

import argparse
import json
import sys
import time


def log(msg):
    print(f"train.py: {msg}", file=sys.stderr, flush=True)


def load(path):
    import pandas as pd

    df = pd.read_csv(path)
    if "target" not in df.columns:
        sys.exit(f"train.py: {path} has no `target` column (columns: {list(df.columns)})")
    return df.drop(columns=["target"]).to_numpy(), df["target"].to_numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training CSV with a `target` column")
    p.add_argument("--test", required=True, help="test CSV with the same columns")
    p.add_argument("--model", required=True, choices=["tree", "forest"])
    p.add_argument("--runs", type=int, default=1, help="number of timed fits (default 1)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="tree: default 10; forest: default unlimited (scikit-learn's default)")
    p.add_argument("--n-trees", type=int, default=100, help="forest size (default 100)")
    a = p.parse_args()
    if a.runs < 1:
        p.error("--runs must be >= 1")

    import sklearn
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    x_train, y_train = load(a.train)
    x_test, y_test = load(a.test)
    if x_train.shape[1] != x_test.shape[1]:
        sys.exit(f"train.py: {a.train} has {x_train.shape[1]} features but {a.test} has {x_test.shape[1]}")

    if a.model == "tree":
        depth = 10 if a.max_depth is None else a.max_depth
        params = {"max_depth": depth, "random_state": 0}
        make = lambda: DecisionTreeClassifier(**params)  # noqa: E731
    else:
        params = {"n_estimators": a.n_trees, "n_jobs": -1, "max_features": "sqrt",
                  "bootstrap": True, "max_depth": a.max_depth, "random_state": 0}
        make = lambda: RandomForestClassifier(**params)  # noqa: E731

    fit_seconds = []
    model = None
    for i in range(a.runs):
        model = make()
        t0 = time.perf_counter()
        model.fit(x_train, y_train)
        dt = time.perf_counter() - t0
        fit_seconds.append(dt)
        log(f"run {i + 1}/{a.runs}: {a.model} fit {dt:.3f} s")

    accuracy = float(accuracy_score(y_test, model.predict(x_test)))
    log(f"accuracy {accuracy:.4f} on {len(y_test)} test rows")
    print(json.dumps({
        "tool": "scikit-learn",
        "version": sklearn.__version__,
        "model": a.model,
        "fit_seconds": fit_seconds,
        "accuracy": accuracy,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "params": params,
    }))


if __name__ == "__main__":
    main()
