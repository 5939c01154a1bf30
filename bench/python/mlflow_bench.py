"""MLflow model-registry baseline for `just bench-compare` (issue #8, section 4).

Starts its own MLflow tracking server
  mlflow server --backend-store-uri sqlite:///TMP/mlflow.db
                --default-artifact-root TMP/artifacts
                --host 127.0.0.1 --port FREE_PORT --workers WORKERS
in a fresh temp dir, with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (MLflow 3's
job runner, ~7 idle huey consumer processes for its GenAI jobs, plays no part
in the registry API; off so it does not compete for the CPU or memory), waits
until GET /health answers and WARMUP untimed get_registered_model calls have
been served (default 20), then ONE sequential MlflowClient (tracking and registry URI = that server) measures, in order:
  register  N x create_model_version(NAME, source=<local artifact dir of a run>, run_id=RUN)
  get       N x get_model_version(NAME, v)            for v = 1..N
  set_alias N x set_registered_model_alias(NAME, "production", v) for v = 1..N
Untimed setup: create_registered_model(NAME), the warm-up, and one run (create_run) whose
local artifact directory holds the versions' source (MLflow 3 accepts a local
path as a version source only inside the artifact dir of the run given as
run_id). Each call is timed with time.perf_counter(); ops/s = N / the sum of
that kind's call times. The server is stopped (SIGTERM to its process group,
then SIGKILL after 10 s) always, also on error or Ctrl-C, and the temp dir removed.

Prints exactly one JSON object on stdout:
  {"tool": "mlflow", "version": ..., "n": N, "workers": ...,
   "register_ops_s": ..., "get_ops_s": ..., "set_alias_ops_s": ...,
   "register_p50_ms": ..., "register_p99_ms": ..., "get_p50_ms": ..., "get_p99_ms": ...,
   "set_alias_p50_ms": ..., "set_alias_p99_ms": ..., "startup_seconds": ...}
Logs (and, on failure, the tail of the server's log) go to stderr.
"""

import argparse
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def log(msg):
    print(f"mlflow_bench.py: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def wait_ready(proc, url, log_path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before answering"
                               f"\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"mlflow server did not answer {url}/health within {timeout:.0f} s"
                       f"\n{tail(log_path)}")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "--- mlflow server log (tail) ---\n" + "".join(f.readlines()[-n:])
    except OSError:
        return ""


def stop(proc):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log("server did not stop within 10 s of SIGTERM; sending SIGKILL")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def timed(fn, n):
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def summary(prefix, secs):
    return {
        f"{prefix}_ops_s": len(secs) / sum(secs),
        f"{prefix}_p50_ms": percentile(secs, 50) * 1e3,
        f"{prefix}_p99_ms": percentile(secs, 99) * 1e3,
    }


def measure(url, n, warmup):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    name = "bench-model"
    client.create_registered_model(name)
    for _ in range(warmup):
        client.get_registered_model(name)
    run = client.create_run(client.create_experiment("bench"))
    run_id = run.info.run_id
    art = run.info.artifact_uri
    if art.startswith("file://"):
        art = art[len("file://"):]
    source = os.path.join(art, "model")
    os.makedirs(source, exist_ok=True)
    log(f"registering {n} versions of {name} from {source}")

    def register(_i):
        mv = client.create_model_version(name, source, run_id=run_id)
        if mv.status != "READY":
            raise RuntimeError(f"version {mv.version} is {mv.status}, expected READY")

    def get(i):
        mv = client.get_model_version(name, str(i + 1))
        if mv.version != str(i + 1) and int(mv.version) != i + 1:
            raise RuntimeError(f"asked for version {i + 1}, got {mv.version}")

    def set_alias(i):
        client.set_registered_model_alias(name, "production", str(i + 1))

    reg = timed(register, n)
    got = timed(get, n)
    ali = timed(set_alias, n)
    final = client.get_model_version_by_alias(name, "production")
    if int(final.version) != n:
        raise RuntimeError(f"alias production is on version {final.version}, expected {n}")
    out = {}
    out.update(summary("register", reg))
    out.update(summary("get", got))
    out.update(summary("set_alias", ali))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="operations of each kind")
    p.add_argument("--workers", type=int, default=2, help="mlflow server workers (default 2)")
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed get_registered_model calls before measuring (default 20)")
    a = p.parse_args()
    if a.n < 1:
        p.error("--n must be >= 1")

    import mlflow

    # Quiet the client's per-version "Waiting up to 300 seconds ..." INFO lines.
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    # SIGTERM (e.g. from the harness) unwinds through `finally` like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = tempfile.mkdtemp(prefix="mlflow-bench-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(tmp, "server.log")
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [mlflow_bin if os.path.exists(mlflow_bin) else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
           "--default-artifact-root", os.path.join(tmp, "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(a.workers)]
    log(" ".join(cmd))
    proc = None
    try:
        with open(log_path, "wb") as lf:
            t0 = time.perf_counter()
            env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
            proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, cwd=tmp, start_new_session=True)
        wait_ready(proc, url, log_path)
        startup = time.perf_counter() - t0
        log(f"server ready at {url} after {startup:.1f} s")
        try:
            res = measure(url, a.n, a.warmup)
        except Exception:
            log(tail(log_path))
            raise
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    log(f"register {res['register_ops_s']:.1f}/s, get {res['get_ops_s']:.1f}/s, "
        f"set alias {res['set_alias_ops_s']:.1f}/s")
    out = {"tool": "mlflow", "version": mlflow.__version__, "n": a.n, "workers": a.workers}
    out.update(res)
    out["startup_seconds"] = startup
    print(json.dumps(out))


if __name__ == "__main__":
    main()
