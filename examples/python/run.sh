#!/usr/bin/env bash
# Runs the grpcurl calls of examples/README.md (check_readme.py) and then the
# Python example (lifecycle.py) against a throwaway stack: builds the four
# daemons if needed (debug profile, as `cargo test --workspace` leaves them),
# starts them on free ports with temp data dirs, runs both in their own venv
# (pinned requirements.txt, created once and reused), and always stops the
# daemons. Exits non-zero when either found a surprise.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
PYTHON=${PYTHON:-python3}

# --- the venv: recreated when requirements.txt changes ----------------------
VENV=$TARGET/py-example-venv
REQ=examples/python/requirements.txt
if ! cmp -s "$REQ" "$VENV/requirements.txt" 2>/dev/null; then
  echo "==> creating $VENV from $REQ"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi

# --- the daemons -------------------------------------------------------------
echo "==> building the daemons (debug)"
cargo build --quiet --bins -p evergreen-registry -p evergreen-trainer -p evergreen-server \
  -p evergreen-monitor
BIN=$TARGET/debug
DIR=$(mktemp -d "${TMPDIR:-/tmp}/evergreen-pyexample.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# No Prometheus listener: the default metrics ports are fixed and may be taken.
export EVERGREEN_REGISTRY__METRICS_LISTEN="" EVERGREEN_TRAINER__METRICS_LISTEN=""
export EVERGREEN_SERVER__METRICS_LISTEN="" EVERGREEN_MONITOR__METRICS_LISTEN=""
# The registry asks the monitor only during phase-outs, which this run has none of.
export EVERGREEN_REGISTRY__MONITOR_URL=""

# start NAME ARGS...: runs evergreen-NAME on port 0 and sets ADDR from its
# "NAME listening on ADDR" line (no command substitution: PIDS must be
# updated in this shell).
start() {
  local name=$1; shift
  "$BIN/evergreen-$name" --listen 127.0.0.1:0 "$@" >"$DIR/$name.out" 2>"$DIR/$name.log" &
  PIDS+=($!)
  ADDR=
  for _ in $(seq 300); do
    ADDR=$(sed -n 's/.* listening on //p' "$DIR/$name.out" 2>/dev/null) || true
    [ -n "$ADDR" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$ADDR" ] || { echo "evergreen-$name did not start:" >&2; cat "$DIR/$name.log" >&2; exit 1; }
}

start registry --data-dir "$DIR/registry"
REG=$ADDR
start trainer --data-dir "$DIR/trainer" --registry "http://$REG"
TRN=$ADDR
start monitor --data-dir "$DIR/monitor" --registry "http://$REG" --trainer "http://$TRN"
MON=$ADDR
start server --registry "http://$REG" --monitor "http://$MON"
SRV=$ADDR
echo "==> registry $REG, trainer $TRN, server $SRV, monitor $MON (state in $DIR)"

# --- the client ----------------------------------------------------------------
STARTED=$SECONDS
status=0
# First the README's grpcurl walkthrough (it assumes a fresh stack: job-000001,
# version 1), then the client's own walk.
echo "==> the grpcurl calls of examples/README.md"
"$VENV/bin/python" examples/python/check_readme.py --run "$REG" "$TRN" "$SRV" "$MON" || status=$?
if [ "$status" -eq 0 ]; then
  "$VENV/bin/python" examples/python/lifecycle.py \
    --registry "$REG" --trainer "$TRN" --server "$SRV" --monitor "$MON" || status=$?
fi
if [ "$status" -ne 0 ]; then
  for d in registry trainer monitor server; do
    echo "--- evergreen-$d log (last 20 lines)" >&2
    tail -20 "$DIR/$d.log" >&2 || true
  done
fi
echo "==> client finished in $((SECONDS - STARTED)) s, whole run $SECONDS s"
exit "$status"
