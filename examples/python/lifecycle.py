#!/usr/bin/env python3
"""A Python client of Evergreen that knows nothing but the contracts in proto/.

It generates its stubs at run time (grpcio-tools, into a temp dir; nothing
generated is kept) and walks one model through its life against running
daemons:

  1. create the model in the registry
  2. train a version on data/breast_cancer.csv through the trainer and
     follow the job to its end
  3. promote it: SetAlias production, compare-and-set (and see a stale
     compare-and-set refused)
  4. predict through the server's own Predictor API ...
  5. ... and through the Open Inference Protocol V2 (ModelInfer)
  6. send the true labels of those predictions to the monitor, then read its
     drift report (GetDrift) and performance report (GetReport)
  7. bad input: the status code and message a caller gets

Each step prints what it did and checks what came back; any surprise ends
the run with exit code 1 and an "example: FAILED: ..." line.

Usage (addresses default to EVERGREEN_*_URL, else the default ports):
  python lifecycle.py [--registry HOST:PORT] [--trainer HOST:PORT]
                      [--server HOST:PORT] [--monitor HOST:PORT]
                      [--model NAME] [--data CSV] [--proto DIR]
"""

import argparse
import csv
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
ACTOR = ("x-evergreen-actor", "python-example")  # who the audit trail names


class Surprise(Exception):
    """Something the example did not expect: the run fails."""


def check(cond, what):
    if not cond:
        raise Surprise(what)


def step(title):
    print(f"\n==> {title}", flush=True)


def say(text):
    print(f"    {text}", flush=True)


# --------------------------------------------------------------- stubs ---


def generate_stubs(proto_dir, out_dir):
    """Runs protoc (bundled with grpcio-tools, well-known types included)
    over every contract and makes the generated modules importable."""
    files = []
    for sub in ("evergreen/v1", "inference"):
        d = os.path.join(proto_dir, sub)
        files += [os.path.join(sub, f) for f in sorted(os.listdir(d)) if f.endswith(".proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files],
        check=True, cwd=proto_dir,
    )
    sys.path.insert(0, out_dir)
    return files


# ------------------------------------------------------------- helpers ---


def address(flag, env, default_port):
    """HOST:PORT from the flag, else EVERGREEN_<X>_URL (http:// stripped)."""
    value = flag or os.environ.get(env) or f"127.0.0.1:{default_port}"
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
    return value.rstrip("/")


def expect_error(code, call, *args, **kwargs):
    """Makes a call that must fail with `code`; returns the RpcError."""
    import grpc

    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        check(e.code() == code,
              f"expected {code.name}, got {e.code().name}: {e.details()}")
        return e
    raise Surprise(f"the call succeeded; expected {code.name}")


def load_rows(path, target):
    """The CSV as (feature names, rows of floats, target labels)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        t = header.index(target)
        rows, labels = [], []
        for line in reader:
            labels.append(line[t])
            rows.append([float(v) for i, v in enumerate(line) if i != t])
    return [h for i, h in enumerate(header) if i != t], rows, labels


def wait_until(what, probe, timeout=30.0, every=0.1):
    """Polls `probe()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Surprise(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- walk ---


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry")
    ap.add_argument("--trainer")
    ap.add_argument("--server")
    ap.add_argument("--monitor")
    ap.add_argument("--model", default="py-cancer", help="model name (default py-cancer)")
    ap.add_argument("--data", default=os.path.join(REPO, "data", "breast_cancer.csv"),
                    help="training CSV; must be readable by the trainer at this path")
    ap.add_argument("--proto", default=os.path.join(REPO, "proto"), help="the contracts")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="evergreen-stubs-") as out:
        files = generate_stubs(args.proto, out)
        print(f"generated Python stubs for {len(files)} proto files in {out}")
        import grpc

        try:
            walk(args)
        except Surprise as e:
            print(f"\nexample: FAILED: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as e:  # a call that should have worked did not
            print(f"\nexample: FAILED: unexpected {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print("\n==> done: every step did what it should")
    return 0


def walk(args):
    import grpc
    from evergreen.v1 import (
        monitor_pb2, monitor_pb2_grpc, predictor_pb2, predictor_pb2_grpc,
        registry_pb2, registry_pb2_grpc, trainer_pb2, trainer_pb2_grpc,
    )
    from inference import open_inference_pb2 as v2, open_inference_pb2_grpc as v2_grpc

    addr = {
        "registry": address(args.registry, "EVERGREEN_REGISTRY_URL", 7400),
        "trainer": address(args.trainer, "EVERGREEN_TRAINER_URL", 7401),
        "server": address(args.server, "EVERGREEN_SERVER_URL", 7402),
        "monitor": address(args.monitor, "EVERGREEN_MONITOR_URL", 7403),
    }
    ch = {k: grpc.insecure_channel(a) for k, a in addr.items()}
    for k, c in ch.items():
        try:
            grpc.channel_ready_future(c).result(timeout=10)
        except grpc.FutureTimeoutError:
            raise Surprise(f"cannot reach the {k} at {addr[k]}")
    registry = registry_pb2_grpc.RegistryStub(ch["registry"])
    trainer = trainer_pb2_grpc.TrainerStub(ch["trainer"])
    predictor = predictor_pb2_grpc.PredictorStub(ch["server"])
    inference = v2_grpc.GRPCInferenceServiceStub(ch["server"])
    monitor = monitor_pb2_grpc.MonitorStub(ch["monitor"])
    meta = [ACTOR]

    def state_name(s):
        return trainer_pb2.JobState.Name(s).removeprefix("JOB_STATE_")

    model = args.model
    print("connected: " + ", ".join(f"{k} {a}" for k, a in addr.items()))

    # ------------------------------------------------------------------ 1
    step(f"Registry.CreateModel {model}")
    try:
        m = registry.CreateModel(
            registry_pb2.CreateModelRequest(
                name=model, description="breast cancer, from the Python example",
                tags={"owner": "python-example"}, reason="python example"),
            metadata=meta)
        say(f"created {m.name} (latest version {m.latest_version})")
        check(m.name == model and m.latest_version == 0, f"unexpected new model: {m}")
    except grpc.RpcError as e:
        # Against a stack that already ran this example: carry on with it.
        check(e.code() == grpc.StatusCode.ALREADY_EXISTS, f"CreateModel: {e.code().name}: {e.details()}")
        m = registry.GetModel(registry_pb2.GetModelRequest(name=model))
        say(f"{model} already exists (latest version {m.latest_version}): using it")
    previous_production = m.aliases.get("production", 0)

    # ------------------------------------------------------------------ 2
    data = os.path.abspath(args.data)
    step(f"Trainer.SubmitJob: random forest on {os.path.relpath(data, REPO)}, target column 'target'")
    job = trainer.SubmitJob(
        trainer_pb2.TrainRequest(
            model=model, dataset_uri=data, target="target", algorithm="random_forest",
            params={"n_trees": "50", "max_depth": "4,8"},  # two candidates: 3-fold CV picks one
            cv_folds=3, seed=42, reason="python example", tags={"source": "python-example"}),
        metadata=meta)
    say(f"job {job.id}: {state_name(job.state)}")
    check(job.id and job.state in (trainer_pb2.JOB_STATE_QUEUED, trainer_pb2.JOB_STATE_RUNNING),
          f"a new job should be QUEUED or RUNNING, got {state_name(job.state)}")

    step(f"Trainer.WatchJob {job.id}: follow it to the end")
    last_stage, done = None, None
    for ev in trainer.WatchJob(trainer_pb2.GetJobRequest(id=job.id)):
        if ev.HasField("progress"):
            p = ev.progress
            if p.stage != last_stage:
                last_stage = p.stage
                say(f"{p.percent:5.1f}%  {trainer_pb2.Stage.Name(p.stage).removeprefix('STAGE_'):11} {p.message}")
        else:
            done = ev.done
    check(done is not None, "WatchJob ended without the finished job")
    check(done.state == trainer_pb2.JOB_STATE_SUCCEEDED,
          f"job {done.id} ended {state_name(done.state)}: {done.error_code} {done.error}")
    version = done.version
    say(f"SUCCEEDED: registered {model}/{version}; cross-validation chose max_depth={done.params['max_depth']}")
    say("holdout metrics: " + ", ".join(f"{k} {done.metrics[k]:.3f}"
                                        for k in ("accuracy", "f1_macro", "roc_auc", "cv_accuracy_mean")))
    check(version > 0, "the finished job names no version")
    check(done.metrics["accuracy"] > 0.85, f"holdout accuracy {done.metrics['accuracy']:.3f} is implausibly low")

    job = trainer.GetJob(trainer_pb2.GetJobRequest(id=job.id))
    check(job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.version == version,
          f"GetJob disagrees with WatchJob: {state_name(job.state)} version {job.version}")

    step(f"Registry.GetVersion {model}/{version}: what the trainer registered")
    v = registry.GetVersion(registry_pb2.GetVersionRequest(
        ref=registry_pb2.VersionRef(model=model, version=version)))
    features = [f.name for f in v.schema.features]
    labels = list(v.schema.target.categories)
    say(f"status {registry_pb2.VersionStatus.Name(v.status).removeprefix('VERSION_STATUS_')}, artifact sha256 {v.artifact.sha256[:16]}..., "
        f"{v.artifact.size_bytes} bytes")
    say(f"schema: {len(features)} features ({features[0]!r} ... {features[-1]!r}), "
        f"target {v.schema.target.name!r} with classes {labels}")
    say(f"lineage: dataset {v.lineage.dataset_uri} (sha256 {v.lineage.dataset_sha256[:16]}...), "
        f"producer {v.lineage.producer}")
    csv_features, rows, truth = load_rows(data, "target")
    check(v.status == registry_pb2.VERSION_STATUS_ACTIVE, "a new version should be ACTIVE")
    check(v.artifact.sha256 == job.artifact_sha256, "registry and trainer disagree on the artifact sha256")
    check(features == csv_features, "the schema's feature order is not the CSV's")
    check(sorted(labels) == ["0", "1"], f"expected classes 0 and 1, got {labels}")

    # ------------------------------------------------------------------ 3
    step(f"Registry.SetAlias production -> {version}, compare-and-set "
         f"(expected_version {previous_production}: {'must not exist yet' if previous_production == 0 else 'its current target'})")
    a = registry.SetAlias(
        registry_pb2.SetAliasRequest(model=model, alias="production", version=version,
                                     expected_version=previous_production,
                                     reason="promoted by the python example"),
        metadata=meta)
    say(f"{a.model}@{a.alias} = {a.version} at registry revision {a.revision}")
    check(a.version == version, f"alias points at {a.version}, not {version}")

    step("The same compare-and-set again is stale: the alias moved since")
    e = expect_error(grpc.StatusCode.FAILED_PRECONDITION, registry.SetAlias,
                     registry_pb2.SetAliasRequest(model=model, alias="production", version=version,
                                                  expected_version=previous_production, reason="stale"),
                     metadata=meta)
    say(f"{e.code().name}: {e.details()}")

    # ------------------------------------------------------------------ 4
    step(f"Predictor.ListServed: wait until the server follows the registry to {model}/{version}")

    def served():
        r = predictor.ListServed(predictor_pb2.ListServedRequest())
        for sm in r.models:
            if sm.model == model:
                for sv in sm.versions:
                    if sv.version == version and "production" in sv.aliases:
                        return r
        return None

    r = wait_until(f"the server to load {model}/{version}", served)
    say(f"served at registry revision {r.revision}, ready={r.ready}")

    # 40 rows spread over the CSV (its rows are not shuffled: the first ones
    # are mostly class 0), so the traffic looks like the training data.
    n = 40
    picked = list(range(0, len(rows), len(rows) // n))[:n]
    rows = [rows[i] for i in picked]
    truth = [truth[i] for i in picked]
    step(f"Predictor.Predict {model} ({n} rows of the CSV, positional in the schema's feature order)")
    req_id = f"py-example-{int(time.time() * 1000)}"
    pr = predictor.Predict(predictor_pb2.PredictRequest(
        model=model, request_id=req_id,
        rows=[predictor_pb2.Row(values=[predictor_pb2.Value(number=x) for x in row]) for row in rows[:n]]))
    got = [p.label for p in pr.predictions]
    right = sum(g == t for g, t in zip(got, truth[:n]))
    say(f"served by {pr.model}/{pr.version} (request {pr.request_id}); labels in probability order {list(pr.labels)}")
    say(f"row 0: label {got[0]}, probabilities {[round(p, 3) for p in pr.predictions[0].probabilities]}")
    say(f"{right}/{n} agree with the CSV's target column")
    check(pr.version == version and pr.request_id == req_id, f"answered by {pr.model}/{pr.version} as {pr.request_id}")
    check(len(got) == n, f"{len(got)} predictions for {n} rows")
    sums = [sum(p.probabilities) for p in pr.predictions]
    check(all(math.isclose(s, 1.0, abs_tol=1e-6) for s in sums), f"probabilities do not sum to 1: {sums}")
    check(right >= 0.85 * n, f"only {right}/{n} rows right on training data")

    step("Predictor.Predict one row by feature name (Row.named)")
    one = predictor.Predict(predictor_pb2.PredictRequest(
        model=f"{model}@production",
        rows=[predictor_pb2.Row(named={f: predictor_pb2.Value(number=x) for f, x in zip(features, rows[0])})]))
    say(f"label {one.predictions[0].label} (request {one.request_id})")
    check(one.predictions[0].label == got[0], "named and positional rows disagree")

    # ------------------------------------------------------------------ 5
    step("Open Inference Protocol V2 on the same port: ServerReady, ModelReady, ModelMetadata")
    check(inference.ServerLive(v2.ServerLiveRequest()).live, "ServerLive says not live")
    check(inference.ServerReady(v2.ServerReadyRequest()).ready, "ServerReady says not ready")
    check(inference.ModelReady(v2.ModelReadyRequest(name=model)).ready, f"ModelReady {model}: not ready")
    md = inference.ModelMetadata(v2.ModelMetadataRequest(name=model))
    for t in md.inputs:
        say(f"input  {t.name} {t.datatype} {list(t.shape)}")
    for t in md.outputs:
        say(f"output {t.name} {t.datatype} {list(t.shape)}")
    check(len(md.inputs) == 1 and list(md.inputs[0].shape) == [-1, len(features)],
          f"expected one [-1, {len(features)}] input")

    k = 5
    step(f"GRPCInferenceService.ModelInfer: the first {k} of those rows as one FP64 [{k}, {len(features)}] tensor")
    inp = md.inputs[0]
    res = inference.ModelInfer(v2.ModelInferRequest(
        model_name=model, id=f"{req_id}-v2",
        inputs=[v2.ModelInferRequest.InferInputTensor(
            name=inp.name, datatype="FP64", shape=[k, len(features)],
            contents=v2.InferTensorContents(fp64_contents=[x for row in rows[:k] for x in row]))]))
    outs = {t.name: (t, raw) for t, raw in zip(res.outputs, res.raw_output_contents)}
    check("predict" in outs, f"no 'predict' output in {[t.name for t in res.outputs]}")
    t, raw = outs["predict"]
    check(t.datatype == "INT64" and list(t.shape) == [k], f"predict is {t.datatype} {list(t.shape)}")
    v2_labels = [str(x) for x in struct.unpack(f"<{k}q", raw)]  # little-endian int64
    t, raw = outs["probabilities"]
    probs = struct.unpack(f"<{k * len(labels)}d", raw)
    say(f"model {res.model_name} version {res.model_version}: predict {v2_labels}")
    say(f"probabilities of row 0: {[round(p, 3) for p in probs[:len(labels)]]}")
    check(v2_labels == got[:k], f"V2 says {v2_labels}, Predict said {got[:k]}")
    check(res.model_version == str(version), f"answered by version {res.model_version}")

    # ------------------------------------------------------------------ 6
    step(f"Monitor: wait for the server's prediction log of request {req_id} ({n} rows)")

    def logged():
        try:
            rep = monitor.GetReport(monitor_pb2.GetReportRequest(
                model=model, version=version, window=monitor_pb2.WINDOW_KIND_LONG))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # nothing logged yet
                return None
            raise
        return rep if rep.health.requests >= n + 1 + k else None

    rep = wait_until("the monitor to receive the prediction log", logged)
    say(f"the monitor has logged {rep.health.requests} rows of {model}/{version}")

    step(f"Monitor.RecordFeedback: the true labels of request {req_id}, keyed by (request id, row)")
    fb = monitor.RecordFeedback(monitor_pb2.RecordFeedbackRequest(feedback=[
        monitor_pb2.Feedback(request_id=req_id, row=i, label=truth[i]) for i in range(n)]
        + [monitor_pb2.Feedback(request_id="no-such-request", row=0, label="1")]))
    say(f"matched {fb.matched}, unknown {fb.unknown}, expired {fb.expired}, invalid {fb.invalid}")
    check((fb.matched, fb.unknown, fb.expired, fb.invalid) == (n, 1, 0, 0),
          f"expected {n} matched and the made-up request id unknown")

    step(f"Monitor.GetDrift {model}/{version}: the current window against the training profile")
    d = monitor.GetDrift(monitor_pb2.GetDriftRequest(model=model, version=version))
    say(f"{d.rows} rows; dataset drift {d.dataset_drift} ({d.drifted_share:.0%} of features drifted)")
    def line(f):
        # KS and chi2 judge by p-value (threshold = significance level);
        # the other tests compare the statistic itself with the threshold.
        p = f" p-value {f.p_value:.3f}" if f.test in ("ks", "chi2") else ""
        return (f"  {f.feature:24} {f.test:5} statistic {f.statistic:7.3f}{p} "
                f"threshold {f.threshold:g}: {'DRIFTED' if f.drifted else 'ok'}")

    for f in sorted(d.features, key=lambda f: (not f.drifted, -f.statistic))[:4]:
        say(line(f))
    say(line(d.prediction))
    check(d.model == model and d.version == version, "the report is about another version")
    check(len(d.features) == len(features), f"{len(d.features)} features in the drift report, expected {len(features)}")
    check(d.rows >= n + 1 + k, f"{d.rows} rows in the current window, expected at least {n + 1 + k}")

    step(f"Monitor.GetReport {model}/{version} (window LONG): performance and health")
    rep = monitor.GetReport(monitor_pb2.GetReportRequest(
        model=model, version=version, window=monitor_pb2.WINDOW_KIND_LONG))
    perf = rep.performance
    say(f"labeled rows {perf.labeled}")
    say("realized:  " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(perf.realized.items())))
    say("estimated: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(perf.estimated.items())) + " (CBPE, no labels needed)")
    say("training:  " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(perf.training.items()) if k in perf.realized))
    say(f"health: {rep.health.requests} requests, {rep.health.errors} errors, "
        f"p50 {rep.health.latency_p50_ms:.2f} ms, p99 {rep.health.latency_p99_ms:.2f} ms")
    check(perf.labeled == n, f"{perf.labeled} labeled rows, expected {n}")
    check(math.isclose(perf.realized["accuracy"], right / n, abs_tol=1e-9),
          f"realized accuracy {perf.realized['accuracy']} is not the {right}/{n} this client counted")

    # ------------------------------------------------------------------ 7
    step(f"Bad input: Predict with {len(features) - 1} features instead of {len(features)}")
    e = expect_error(grpc.StatusCode.INVALID_ARGUMENT, predictor.Predict, predictor_pb2.PredictRequest(
        model=model, rows=[predictor_pb2.Row(values=[predictor_pb2.Value(number=x) for x in rows[0][:-1]])]))
    say(f"{e.code().name}: {e.details()}")

    step(f"Bad input: ModelInfer with shape [1, {len(features) - 1}]")
    e = expect_error(grpc.StatusCode.INVALID_ARGUMENT, inference.ModelInfer, v2.ModelInferRequest(
        model_name=model, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP64", shape=[1, len(features) - 1],
            contents=v2.InferTensorContents(fp64_contents=rows[0][:-1]))]))
    say(f"{e.code().name}: {e.details()}")

    step("Bad input: Predict on a model that does not exist")
    e = expect_error(grpc.StatusCode.NOT_FOUND, predictor.Predict, predictor_pb2.PredictRequest(
        model="no-such-model", rows=[predictor_pb2.Row(values=[predictor_pb2.Value(number=1.0)])]))
    say(f"{e.code().name}: {e.details()}")

    step("Bad input: a training job on a target column the CSV does not have")
    try:
        bad = trainer.SubmitJob(trainer_pb2.TrainRequest(model=model, dataset_uri=data, target="diagnosis"),
                                metadata=meta)
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"expected INVALID_ARGUMENT, got {e.code().name}")
        say(f"refused at submission: {e.code().name}: {e.details()}")
    else:
        # Checked when the job loads the data: the job fails, naming the
        # problem, and WatchJob ends with that status.
        e = expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                         lambda: list(trainer.WatchJob(trainer_pb2.GetJobRequest(id=bad.id))))
        say(f"WatchJob ended with {e.code().name}: {e.details()}")
        bad = trainer.GetJob(trainer_pb2.GetJobRequest(id=bad.id))
        check(bad.state == trainer_pb2.JOB_STATE_FAILED and bad.error_code == "INVALID_ARGUMENT",
              f"job {bad.id}: {state_name(bad.state)} {bad.error_code}")
        say(f"job {bad.id} FAILED: {bad.error_code}: {bad.error}")

    step("The server still answers after all that")
    again = predictor.Predict(predictor_pb2.PredictRequest(
        model=model, rows=[predictor_pb2.Row(values=[predictor_pb2.Value(number=x) for x in rows[0]])]))
    say(f"label {again.predictions[0].label} from {again.model}/{again.version}")
    check(again.predictions[0].label == got[0], "a different answer for the same row")


if __name__ == "__main__":
    sys.exit(main())
