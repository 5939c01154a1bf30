#!/usr/bin/env bash
# Quick self-check of the Python baselines (no venv needed, seconds):
# byte-compiles every script with the machine's python3 and syntax-checks the
# shell scripts. Meant for CI's smoke mode of `just bench-compare`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
python="${PYTHON:-python3}"
n=0
for f in *.py; do
    # Compile to a throwaway file so the source tree gets no __pycache__.
    "$python" -c 'import py_compile, sys, tempfile, os
fd, out = tempfile.mkstemp(suffix=".pyc"); os.close(fd)
try:
    py_compile.compile(sys.argv[1], cfile=out, doraise=True)
finally:
    os.unlink(out)' "$f"
    n=$((n + 1))
done
for f in setup.sh check.sh; do
    bash -n "$f"
    n=$((n + 1))
done
if command -v luajit >/dev/null 2>&1; then
    luajit -bl wrk.lua >/dev/null
    n=$((n + 1))
fi
[ -s requirements.txt ] || { echo "check.sh: requirements.txt is missing or empty" >&2; exit 1; }
unpinned="$(grep -vE '^[[:space:]]*(#|$)' requirements.txt | grep -v '==' || true)"
[ -z "$unpinned" ] || { echo "check.sh: requirements.txt lines without an exact pin (==): $unpinned" >&2; exit 1; }
echo "bench/python/check.sh: $n files ok"
