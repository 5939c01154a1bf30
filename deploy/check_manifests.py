#!/usr/bin/env python3
"""Checks a rendered overlay (kubectl kustomize output) for what schema
validation and checkov cannot see: that the manifests and evergreen.toml
agree with each other and with the daemons.

  check_manifests.py RENDERED.yaml --tokens DIR [--bins DIR --work DIR]

Static checks (always), for each daemon workload:
  - it runs /usr/local/bin/evergreen-<daemon> --config <file from the
    evergreen-config ConfigMap mount>;
  - its [<daemon>] table listens on a non-loopback address whose ports are
    the container's `grpc` and `metrics` ports, and a non-loopback listen has
    auth or `insecure = true` (else the daemon refuses to start);
  - probes: native gRPC on the gRPC port when TLS is off, HTTP /healthz and
    /readyz on the metrics port when TLS is on (kubelet gRPC probes cannot
    do TLS);
  - every file the table names (TLS, tokens, CA) lies in a read-only Secret
    mount, and every token file is one that deploy/gen-tokens.sh writes
    (--tokens: its output directory); data_dir is on a writable volume (the
    root filesystem is read-only);
  - every *_url names a Service of the render whose port leads to the target
    daemon's gRPC port, with https:// exactly when the target has TLS, a
    client certificate when the target requires one, and a token when the
    target checks tokens;
  - enableServiceLinks is false (Service env vars such as
    EVERGREEN_REGISTRY_SERVICE_HOST would be read as config keys);
  - terminationGracePeriodSeconds exceeds shutdown_grace_seconds, and the
    server keeps accepting calls for shutdown_delay_ms after SIGTERM.
Daemon check (--bins): each daemon binary is started on the overlay's
evergreen.toml, changed only where a laptop differs from the cluster: every
mounted path moved under --work (Secret mounts filled with a generated
CA/certificate and the gen-tokens.sh files), listen addresses on
127.0.0.1:0, and every S3 table pointed at a local S3-compatible server
(moto, on 127.0.0.1, with its buckets created) with static test keys, since
the registry opens its S3 artifact store at start-up. It must start
("... listening on ...") and exit 0 on SIGTERM.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import tomli_w
import yaml

DAEMONS = ("registry", "trainer", "server", "monitor")
# Config keys holding a file path, per daemon table.
FILE_KEYS = [
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "client_ca"),
    ("auth", "tokens_file"),
    ("client", "ca"),
    ("client", "cert"),
    ("client", "key"),
    ("client", "token_file"),
]
URL_KEYS = {
    "registry": ["monitor_url"],
    "trainer": ["registry_url"],
    "server": ["registry_url", "monitor_url"],
    "monitor": ["registry_url", "trainer_url"],
}
# Defaults of the daemons' config (crates/*/src/config.rs) for URL keys.
URL_DEFAULTS = {
    ("registry", "monitor_url"): "http://127.0.0.1:7403",
    ("trainer", "registry_url"): "http://127.0.0.1:7400",
    ("server", "registry_url"): "http://127.0.0.1:7400",
    ("server", "monitor_url"): "",
    ("monitor", "registry_url"): "http://127.0.0.1:7400",
    ("monitor", "trainer_url"): "http://127.0.0.1:7401",
}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def port_of(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def get(table: dict, *keys, default=""):
    for k in keys:
        if not isinstance(table, dict) or k not in table:
            return default
        table = table[k]
    return table


class Workload:
    def __init__(self, doc: dict):
        self.doc = doc
        self.kind = doc["kind"]
        self.name = doc["metadata"]["name"]
        self.daemon = doc["spec"]["template"]["metadata"]["labels"].get(
            "app.kubernetes.io/component", ""
        )
        self.pod = doc["spec"]["template"]["spec"]
        self.labels = doc["spec"]["template"]["metadata"]["labels"]
        self.container = self.pod["containers"][0]
        self.volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for t in doc["spec"].get("volumeClaimTemplates", []):
            self.volumes[t["metadata"]["name"]] = {"persistentVolumeClaim": {}}
        self.ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}

    def where(self) -> str:
        return f"{self.kind}/{self.name}"

    def mount_of(self, path: str):
        """(volumeMount, volume) holding `path`, the deepest mount first."""
        best = None
        for m in self.container.get("volumeMounts", []):
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]["mountPath"]):
                    best = (m, self.volumes.get(m["name"], {}))
        return best


def load(rendered: Path):
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    config_maps = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("evergreen-config")
    ]
    if len(config_maps) != 1:
        sys.exit(f"{rendered}: expected one evergreen-config ConfigMap, found {len(config_maps)}")
    cm = config_maps[0]
    toml_text = cm["data"]["evergreen.toml"]
    workloads = [Workload(d) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    services = [d for d in docs if d["kind"] == "Service"]
    return cm, toml_text, tomllib.loads(toml_text), workloads, services


def check_static(cm, config, workloads, services, token_names: set[str]) -> None:
    by_daemon = {w.daemon: w for w in workloads}
    missing = [d for d in DAEMONS if d not in by_daemon]
    if missing:
        fail(f"no workload for daemon(s) {missing} (label app.kubernetes.io/component)")
    for d in DAEMONS:
        if d not in config:
            fail(f"evergreen.toml has no [{d}] table")
    if errors:
        return

    for d, w in by_daemon.items():
        t = config[d]
        at = f"{w.where()} ([{d}])"
        c = w.container
        # Command and config file.
        if c.get("command") != [f"/usr/local/bin/evergreen-{d}"]:
            fail(f"{at}: command {c.get('command')} is not [/usr/local/bin/evergreen-{d}]")
        args = c.get("args", [])
        if "--config" not in args or args.index("--config") + 1 >= len(args):
            fail(f"{at}: args {args} lack --config FILE")
        else:
            cfg = args[args.index("--config") + 1]
            m = w.mount_of(cfg)
            if not m or m[1].get("configMap", {}).get("name") != cm["metadata"]["name"]:
                fail(f"{at}: --config {cfg} is not in a mount of ConfigMap {cm['metadata']['name']}")
            elif Path(cfg).name not in cm["data"]:
                fail(f"{at}: --config {cfg}: the ConfigMap has no key {Path(cfg).name}")
        if w.pod.get("enableServiceLinks") is not False:
            fail(
                f"{at}: enableServiceLinks must be false: Kubernetes would set "
                "EVERGREEN_<SERVICE>_SERVICE_HOST/_PORT, which the daemon reads as unknown config keys"
            )
        # Shutdown: the kubelet kills at terminationGracePeriodSeconds; the
        # daemon must have drained before (shutdown_delay_ms counts within
        # shutdown_grace_seconds). The load-balanced server must keep
        # accepting calls while its endpoint removal propagates.
        grace = t.get("shutdown_grace_seconds", 20)
        if w.pod.get("terminationGracePeriodSeconds", 30) <= grace:
            fail(f"{at}: terminationGracePeriodSeconds must exceed shutdown_grace_seconds ({grace})")
        if d == "server" and t.get("shutdown_delay_ms", 0) < 1000:
            fail(f"{at}: server.shutdown_delay_ms should be >= 1000: new calls still arrive for a moment "
                 "after the pod leaves the Service's endpoints")
        # Listen addresses and ports.
        listen, metrics = t.get("listen", ""), t.get("metrics_listen", "")
        if not listen or not metrics:
            fail(f"{at}: listen and metrics_listen must be set (the defaults are loopback)")
            continue
        host, port = port_of(listen)
        mhost, mport = port_of(metrics)
        if is_loopback(host) or is_loopback(mhost):
            fail(f"{at}: listen {listen} / metrics_listen {metrics} on loopback: unreachable from other pods")
        if w.ports.get("grpc") != port:
            fail(f"{at}: listen port {port} is not the container port `grpc` ({w.ports.get('grpc')})")
        if w.ports.get("metrics") != mport:
            fail(f"{at}: metrics_listen port {mport} is not the container port `metrics` ({w.ports.get('metrics')})")
        auth_on = bool(get(t, "auth", "tokens_file") or get(t, "auth", "tokens"))
        if not auth_on and not t.get("insecure", False):
            fail(f"{at}: listens on {listen} without auth and without insecure = true: the daemon would refuse")
        # Probes.
        tls_on = bool(get(t, "tls", "cert"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if not p:
                fail(f"{at}: no {probe}")
                continue
            if tls_on:
                h = p.get("httpGet")
                want = "/readyz" if probe == "readinessProbe" else "/healthz"
                if not h or h.get("port") not in ("metrics", mport) or h.get("path") != want:
                    fail(f"{at}: {probe} must be httpGet {want} on the metrics port when gRPC has TLS")
            elif p.get("grpc", {}).get("port") != port and not (
                p.get("httpGet", {}).get("port") in ("metrics", mport)
            ):
                fail(f"{at}: {probe} must be a gRPC probe of port {port} (or HTTP on the metrics port)")
        # Files.
        for section, key in FILE_KEYS:
            path = get(t, section, key)
            if not path:
                continue
            m = w.mount_of(path)
            if not m or "secret" not in m[1]:
                fail(f"{at}: {d}.{section}.{key} = {path} is not in a Secret mount")
                continue
            if not m[0].get("readOnly"):
                fail(f"{at}: the mount holding {path} should be readOnly")
            if m[1]["secret"]["secretName"] == "evergreen-tokens" and Path(path).name not in token_names:
                fail(
                    f"{at}: {d}.{section}.{key} = {path}: deploy/gen-tokens.sh writes no "
                    f"{Path(path).name} (it writes {sorted(token_names)})"
                )
        if d != "server":
            data_dir = t.get("data_dir", "")
            m = w.mount_of(data_dir) if data_dir else None
            if not m or m[0].get("readOnly") or not (
                "emptyDir" in m[1] or "persistentVolumeClaim" in m[1]
            ):
                fail(f"{at}: data_dir {data_dir!r} is not on a writable volume (the root filesystem is read-only)")
        # URLs to the other daemons.
        for key in URL_KEYS[d]:
            url = t.get(key, URL_DEFAULTS[(d, key)])
            if not url:
                continue
            target = key.removesuffix("_url")
            u = urlparse(url)
            svc = next((s for s in services if s["metadata"]["name"] == u.hostname), None)
            if svc is None:
                fail(f"{at}: {d}.{key} = {url}: no Service named {u.hostname}")
                continue
            sport = next((p for p in svc["spec"]["ports"] if p["port"] == u.port), None)
            tw = by_daemon[target]
            if (
                sport is None
                or svc["spec"].get("selector", {}).get("app.kubernetes.io/component") != target
                or tw.ports.get(sport["targetPort"], sport["targetPort"]) != port_of(config[target]["listen"])[1]
            ):
                fail(f"{at}: {d}.{key} = {url} does not lead to the {target}'s gRPC port")
            tt = config[target]
            if (u.scheme == "https") != bool(get(tt, "tls", "cert")):
                fail(f"{at}: {d}.{key} = {url}: the {target} {'has' if get(tt, 'tls', 'cert') else 'has no'} TLS")
            if get(tt, "tls", "client_ca") and not get(t, "client", "cert"):
                fail(f"{at}: the {target} requires a client certificate but {d}.client.cert is empty")
            if get(tt, "tls", "cert") and not get(t, "client", "ca"):
                fail(f"{at}: {d}.client.ca is empty: the {target}'s certificate cannot be verified")
            target_auth = get(tt, "auth", "tokens_file") or get(tt, "auth", "tokens")
            if target_auth and not (get(t, "client", "token_file") or get(t, "client", "token")):
                fail(f"{at}: the {target} checks tokens but {d} has no client.token_file")


def make_tls(dir: Path) -> None:
    """A CA and a certificate it signs, as cert-manager names them."""
    dir.mkdir(parents=True, exist_ok=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(dir / "ca.key"), "-out", str(dir / "ca.crt"), "-days", "2", "-subj", "/CN=check-ca")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(dir / "tls.key"), "-out", str(dir / "tls.csr"), "-subj", "/CN=evergreen")
    ext = dir / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    ssl("x509", "-req", "-in", str(dir / "tls.csr"), "-CA", str(dir / "ca.crt"), "-CAkey", str(dir / "ca.key"),
        "-CAcreateserial", "-out", str(dir / "tls.crt"), "-days", "2", "-extfile", str(ext))


class LocalS3:
    """moto's S3 server on 127.0.0.1 (from this virtualenv): no daemon
    started by the check ever reaches AWS or an instance metadata service."""

    def __enter__(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        exe = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1).read()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    sys.exit("check_manifests: the local S3 server (moto_server) did not start")
                time.sleep(0.2)

    def bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=5).read()

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def localize(value, mounts: list[tuple[str, Path]], s3: LocalS3, key: str = ""):
    """The config with mounted paths moved, listen addresses on loopback, S3
    tables on the local server."""
    if isinstance(value, dict):
        out = {k: localize(v, mounts, s3, k) for k, v in value.items()}
        if key == "s3":
            out.update(endpoint=s3.url, path_style=True, access_key_id="test", secret_access_key="test")
            if out.get("bucket"):
                s3.bucket(out["bucket"])
        return out
    if isinstance(value, str):
        if key in ("listen", "metrics_listen") and value:
            return "127.0.0.1:0"
        for mp, dst in mounts:
            if value == mp or value.startswith(mp + "/"):
                return str(dst) + value[len(mp):]
    return value


def run_daemons(config: dict, workloads, bins: Path, work: Path, tokens: Path) -> None:
    tls_fixture = work / "fixtures" / "tls"
    make_tls(tls_fixture)
    secrets = {"evergreen-tls": tls_fixture, "evergreen-tokens": tokens / "secret"}
    with LocalS3() as s3:
        for w in workloads:
            run_daemon(config, w, bins, work / w.daemon, secrets, s3)


def run_daemon(config: dict, w: Workload, bins: Path, root: Path, secrets: dict, s3: LocalS3) -> None:
    shutil.rmtree(root, ignore_errors=True)
    mounts: list[tuple[str, Path]] = []
    config_dirs = []
    for m in sorted(w.container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        mp = m["mountPath"].rstrip("/")
        dst = root / mp.lstrip("/")
        vol = w.volumes.get(m["name"], {})
        if "secret" in vol:
            src = secrets.get(vol["secret"]["secretName"])
            if src is None:
                fail(f"{w.where()}: no fixture for Secret {vol['secret']['secretName']}")
                return
            shutil.copytree(src, dst)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                config_dirs.append(dst)
        mounts.append((mp, dst))
    local = localize(config, mounts, s3)
    for d in config_dirs:
        (d / "evergreen.toml").write_bytes(tomli_w.dumps(local).encode())
    args = [localize(a, mounts, s3) for a in w.container.get("args", [])]
    # The pod's literal env (EVERGREEN_LOG, ...), never this shell's
    # EVERGREEN_* or AWS_* variables; no instance metadata lookups.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVERGREEN_", "AWS_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for e in w.container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    exe = bins / Path(w.container["command"][0]).name
    name = exe.name
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    started = False
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if f"{name} listening on" in line:
            started = True
            break
    if not started:
        proc.kill()
        _, err = proc.communicate()
        fail(f"{w.where()}: {name} did not start on the overlay's evergreen.toml "
             f"(exit {proc.returncode}): {err.strip()[-3000:]}")
        return
    # Let it finish starting (the daemons install their SIGTERM handler
    # after printing the address), then stop it.
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed after 30 s"
    if rc == 0:
        print(f"  {name}: started on the config ({line.strip()}); exit 0 after SIGTERM")
    else:
        _, err = proc.communicate()
        fail(f"{w.where()}: {name} started but exited {rc} after SIGTERM (expected 0): {err.strip()[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--tokens", type=Path, required=True, help="output directory of deploy/gen-tokens.sh")
    ap.add_argument("--bins", type=Path, help="directory with the evergreen-* daemon binaries")
    ap.add_argument("--work", type=Path, help="scratch directory for --bins")
    a = ap.parse_args()
    cm, toml_text, config, workloads, services = load(a.rendered)
    token_names = {p.name for p in (a.tokens / "secret").iterdir()}
    check_static(cm, config, workloads, services, token_names)
    if not errors and a.bins:
        run_daemons(config, workloads, a.bins, a.work, a.tokens)
    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        sys.exit(1)
    print(f"  {a.rendered.name}: {len(workloads)} workloads consistent with evergreen.toml")


if __name__ == "__main__":
    main()
