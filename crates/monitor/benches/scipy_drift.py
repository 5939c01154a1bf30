"""scipy baseline for benches/drift.rs: PSI + KS + Wasserstein computed directly
on the raw arrays for every feature, as a data scientist would. Prints JSON."""
import json, sys, time
import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, wasserstein_distance

ref = pd.read_csv(sys.argv[1])
out = {}
for name in sys.argv[2:]:
    cur = pd.read_csv(name)
    t = time.perf_counter()
    drifted = []
    for f in [c for c in ref.columns if c != "target"]:
        r, c = ref[f].to_numpy(float), cur[f].to_numpy(float)
        edges = np.quantile(r, np.linspace(0, 1, 11))
        rc = np.histogram(r, edges)[0] / len(r) + 1e-4
        cc = np.histogram(np.clip(c, edges[0], edges[-1]), edges)[0] / len(c) + 1e-4
        psi = float(np.sum((cc - rc) * np.log(cc / rc)))
        ks = ks_2samp(r, c)
        w = wasserstein_distance(r, c) / np.std(r)
        if w >= 0.1:
            drifted.append(f)
    out[name] = {"seconds": time.perf_counter() - t, "drifted": drifted}
print(json.dumps(out))
