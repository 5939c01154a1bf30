#!/usr/bin/env bash
# Prepare the Python baselines' environment for `just bench-compare` (issue #8).
#
#   bench/python/setup.sh [VENV_DIR]
#
# - creates the venv VENV_DIR (default: ${CARGO_TARGET_DIR:-<repo>/target}/bench-venv)
#   with the machine's python3 (the pins are for CPython 3.11);
# - installs requirements.txt into it, only when requirements.txt changed since
#   the last successful install (its sha256 is kept in VENV_DIR/.requirements.sha256);
# - makes sure `wrk` (the HTTP load generator) is on PATH: installs the Debian
#   package `wrk` when missing and running as root, else fails naming it;
# - prints the venv's python path as its LAST line on stdout.
#
# Idempotent: a second run with nothing changed only checks and prints.
# Progress goes to stderr so the last stdout line is always the python path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
req="$here/requirements.txt"
venv="${1:-${CARGO_TARGET_DIR:-$repo/target}/bench-venv}"
python="${PYTHON:-python3}"

log() { echo "bench/python/setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$req" ] || die "missing $req"
command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (need CPython 3.11 to create the baselines' venv)"

want="$(sha256sum "$req" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"

if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" >&2 || die "'$python -m venv $venv' failed (Debian: apt-get install python3-venv)"
fi

have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
    log "installing $req into $venv (this takes a few minutes the first time)"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 \
        || die "pip install -r $req failed (see above)"
    echo "$want" > "$stamp"
else
    log "requirements unchanged (sha256 $want); venv up to date"
fi

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        log "installing wrk (apt-get install -y wrk)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq wrk >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } \
            || die "apt-get install -y wrk failed"
    else
        die "wrk (the HTTP load generator) is not on PATH; install the Debian/Ubuntu package 'wrk' (apt-get install wrk) and rerun"
    fi
fi
command -v wrk >/dev/null 2>&1 || die "wrk still not on PATH after installing the 'wrk' package"

echo "$venv/bin/python"
