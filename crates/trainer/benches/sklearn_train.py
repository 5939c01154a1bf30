"""scikit-learn baseline for benches/train.rs: same file, 70/30 stratified split,
random_state=42, best of N. Prints one JSON object per model."""
import json, sys, time
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier
from sklearn.ensemble import RandomForestClassifier

path, runs = sys.argv[1], int(sys.argv[2])
df = pd.read_csv(path)
X, y = df.drop(columns=["target"]).values, df["target"].values
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=42, stratify=y)
for name, make in [("tree", lambda: DecisionTreeClassifier(max_depth=10, random_state=42)),
                   ("forest", lambda: RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=42))]:
    best = None
    for _ in range(runs):
        m = make(); t = time.perf_counter(); m.fit(Xtr, ytr); d = time.perf_counter() - t
        best = d if best is None else min(best, d)
    print(json.dumps({"model": name, "fit_s": best, "accuracy": m.score(Xte, yte)}), flush=True)
