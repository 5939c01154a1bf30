"""Golden values for the monitor's drift tests (crates/monitor/tests/golden.rs).

For each feature of ../shared/data/synth_100000.csv (reference) against
synth_100000_current.csv (no drift) and synth_100000_drifted.csv (f0..f9
drift), it writes:
- the reference's quantile edges and the binned counts and per-bin sums of
  both sides,
  following evergreen_model::profile (100 bins; edges = sorted[i*(n-1)//100],
  deduplicated; underflow / interior / overflow bins as in `bin_index`),
- the exact statistics on the raw samples (scipy): KS D and the Wasserstein
  distance normed by the reference std (numpy std, ddof=0),
- PSI from the counts by the textbook formula (epsilon 1e-4 for empty bins).

Run (scipy, numpy, pandas):  python make_golden.py ../../../../shared/data > synth_drift.json
"""
import json
import sys

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, wasserstein_distance

BINS = 100
EPS = 1e-4


def edges_of(values):
    s = np.sort(values)
    n = len(s)
    e = [float(s[i * (n - 1) // BINS]) for i in range(BINS + 1)]
    out = []
    for x in e:
        if not out or out[-1] != x:
            out.append(x)
    if len(out) == 1:
        out.append(out[0])
    return out


def bins_of(edges, values):
    """Per-bin counts and sums of values (bin_index's rule)."""
    e = np.array(edges)
    m = len(e)
    # 1 + number of edges[1:] <= x, capped at m - 2; then under/overflow.
    idx = 1 + np.minimum(np.searchsorted(e[1:], values, side="right"), m - 2)
    idx = np.where(values < e[0], 0, idx)
    idx = np.where(values > e[-1], m, idx)
    counts = np.bincount(idx, minlength=m + 1)
    sums = np.bincount(idx, weights=values, minlength=m + 1)
    return [int(x) for x in counts], [float(x) for x in sums]


def psi(r, c):
    r = np.array(r, dtype=float) / sum(r)
    c = np.array(c, dtype=float) / sum(c)
    r[r == 0] = EPS
    c[c == 0] = EPS
    return float(np.sum((c - r) * np.log(c / r)))


def main(data_dir):
    ref = pd.read_csv(f"{data_dir}/synth_100000.csv")
    sets = {
        "current": pd.read_csv(f"{data_dir}/synth_100000_current.csv"),
        "drifted": pd.read_csv(f"{data_dir}/synth_100000_drifted.csv"),
    }
    out = {"bins": BINS, "features": {}}
    for f in [c for c in ref.columns if c != "target"]:
        r = ref[f].to_numpy(dtype=float)
        e = edges_of(r)
        rc, rs = bins_of(e, r)
        feat = {
            "edges": e,
            "reference_counts": rc,
            "reference_sums": rs,
            "reference_std": float(np.std(r)),
            "reference_rows": len(r),
        }
        for name, df in sets.items():
            x = df[f].to_numpy(dtype=float)
            cc, cs = bins_of(e, x)
            feat[name] = {
                "counts": cc,
                "sums": cs,
                "min": float(x.min()),
                "max": float(x.max()),
                "ks_exact": float(ks_2samp(r, x).statistic),
                "wasserstein_normed_exact": float(wasserstein_distance(r, x) / np.std(r)),
                "psi": psi(rc, cc),
            }
        out["features"][f] = feat
    json.dump(out, sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main(sys.argv[1])
