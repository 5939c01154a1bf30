"""Fit the forest the seed's serving stack serves, and save it with joblib.

Used by `just bench-compare` (issue #8, section 2) before starting gunicorn
with serve_app.py: RandomForestClassifier(n_estimators=N_TREES, n_jobs=-1,
max_features="sqrt", bootstrap=True, random_state=0) fitted on every row of
TRAIN.csv (features = every column but `target`), written with joblib.dump
to OUT. The fitted model is then used single-threaded for prediction
(n_jobs reset to 1 before saving, as one would for a per-request web handler;
with n_jobs=-1 each single-row predict would spin up a thread pool).

Prints exactly one JSON object on stdout:
  {"tool": "scikit-learn", "version": ..., "out": OUT, "n_trees": ...,
   "n_features": ..., "n_train": ..., "fit_seconds": ..., "bytes": ...}
"""

import argparse
import json
import os
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training CSV with a `target` column")
    p.add_argument("--out", required=True, help="where to write the joblib model")
    p.add_argument("--n-trees", type=int, default=100, help="forest size (default 100)")
    a = p.parse_args()

    import joblib
    import pandas as pd
    import sklearn
    from sklearn.ensemble import RandomForestClassifier

    df = pd.read_csv(a.train)
    if "target" not in df.columns:
        sys.exit(f"fit_forest.py: {a.train} has no `target` column (columns: {list(df.columns)})")
    x = df.drop(columns=["target"]).to_numpy()
    y = df["target"].to_numpy()

    model = RandomForestClassifier(n_estimators=a.n_trees, n_jobs=-1, max_features="sqrt",
                                   bootstrap=True, random_state=0)
    t0 = time.perf_counter()
    model.fit(x, y)
    dt = time.perf_counter() - t0
    model.set_params(n_jobs=1)
    joblib.dump(model, a.out)
    print(f"fit_forest.py: {a.n_trees} trees on {len(y)} rows in {dt:.2f} s -> {a.out}",
          file=sys.stderr)
    print(json.dumps({
        "tool": "scikit-learn",
        "version": sklearn.__version__,
        "out": os.path.abspath(a.out),
        "n_trees": a.n_trees,
        "n_features": int(x.shape[1]),
        "n_train": int(len(y)),
        "fit_seconds": dt,
        "bytes": os.path.getsize(a.out),
    }))


if __name__ == "__main__":
    main()
