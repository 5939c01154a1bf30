"""The seed's serving stack: Flask + joblib + scikit-learn (issue #8, section 2).

Written the way a team would: the model (a joblib file from fit_forest.py,
path in env MODEL_PATH) is loaded once at import, and every request runs
scikit-learn's `predict` on the rows it was sent.

  POST /predict  {"rows": [[f0, ..., f19], ...]}  ->  200 {"predictions": [...]}
                 bad body -> 400 {"error": "..."}
  GET  /ping     -> 200 "ok"  (readiness)

Deployed under gunicorn with 2 sync workers, as the harness runs it:
  MODEL_PATH=model.joblib gunicorn -w 2 -b 127.0.0.1:PORT --chdir bench/python serve_app:app
"""

import os

import joblib
import numpy as np
from flask import Flask, jsonify, request

MODEL_PATH = os.environ.get("MODEL_PATH")
if not MODEL_PATH:
    raise RuntimeError("serve_app: set MODEL_PATH to the joblib model written by fit_forest.py")
model = joblib.load(MODEL_PATH)
n_features = model.n_features_in_

app = Flask(__name__)


@app.get("/ping")
def ping():
    return "ok"


@app.post("/predict")
def predict():
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
