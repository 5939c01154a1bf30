"""The seed's serving stack: Flask + joblib + scikit-learn (issue #8, section 2).

Written the way a team would: the model (a joblib file from fit_forest.py,
path in env MODEL_PATH) is loaded once at import, and every request runs
scikit-learn's `predict` on the rows it was sent.

  POST /predict  {"rows": [[f0, ..., f19], ...]}  ->  200 {"predictions": [...]}
                 bad body -> 400 {"error": "..."}
  GET  /ping     -> 200 "ok"  (readiness)

Several models (the memory comparison, section 6): env MODEL_PATHS =
"NAME=PATH,NAME=PATH,..." loads each file once per worker, and
`POST /predict/NAME` predicts with that one (unknown NAME -> 404);
`POST /predict` uses the first. MODEL_PATH alone is one model named "model".

Deployed under gunicorn with 2 sync workers, as the harness runs it:
  MODEL_PATH=model.joblib gunicorn -w 2 -b 127.0.0.1:PORT --chdir bench/python serve_app:app
"""

import os

import joblib
import numpy as np
from flask import Flask, jsonify, request


def _load_models():
    paths = os.environ.get("MODEL_PATHS", "").strip()
    if paths:
        models = {}
        for entry in paths.split(","):
            name, sep, path = entry.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise RuntimeError(f"serve_app: MODEL_PATHS entry {entry!r}: expected NAME=PATH")
            models[name.strip()] = joblib.load(path.strip())
        return models
    path = os.environ.get("MODEL_PATH")
    if not path:
        raise RuntimeError("serve_app: set MODEL_PATH to the joblib model written by "
                           "fit_forest.py (or MODEL_PATHS=NAME=PATH,... for several)")
    return {"model": joblib.load(path)}


models = _load_models()
model = next(iter(models.values()))

app = Flask(__name__)


@app.get("/ping")
def ping():
    return "ok"


@app.post("/predict")
def predict():
    return _predict(model)


@app.post("/predict/<name>")
def predict_named(name):
    m = models.get(name)
    if m is None:
        return jsonify(error=f"unknown model {name!r}: expected one of {sorted(models)}"), 404
    return _predict(m)


def _predict(model):
    n_features = model.n_features_in_
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "rows" not in body:
        return jsonify(error='expected a JSON body {"rows": [[f0, ..., fN], ...]}'), 400
    try:
        x = np.asarray(body["rows"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        return jsonify(error=f"rows must be a list of lists of numbers: {e}"), 400
    if x.ndim != 2 or x.shape[1] != n_features:
        return jsonify(error=f"rows must be a 2-D list with {n_features} numbers per row, "
                             f"got shape {list(x.shape)}"), 400
    return jsonify(predictions=model.predict(x).tolist())
