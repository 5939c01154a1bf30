#!/usr/bin/env bash
# Starts a throwaway registry (embedded defaults: sled + local artifacts in a
# temp dir, no external service) and walks a model through the lifecycle that
# exists so far, narrating each step. Exits 0 when every step did what it
# should.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building (release)"
cargo build --release --quiet -p evergreen-registry -p evergreen-cli
BIN=target/release
DIR=$(mktemp -d)
REG_PID=
WATCH_PID=
cleanup() {
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

"$BIN/evergreen-registry" --listen 127.0.0.1:0 --data-dir "$DIR/registry" >"$DIR/registry.out" 2>"$DIR/registry.log" &
REG_PID=$!
for _ in $(seq 100); do
  grep -q "listening on" "$DIR/registry.out" 2>/dev/null && break
  sleep 0.1
done
ADDR=$(sed -n 's/.*listening on //p' "$DIR/registry.out")
[ -n "$ADDR" ] || { echo "registry did not start:"; cat "$DIR/registry.log"; exit 1; }
export EVERGREEN_REGISTRY_URL="http://$ADDR"
export EVERGREEN_ACTOR=demo
echo "==> registry up at $ADDR (data in $DIR/registry)"

step() { printf '\n==> %s\n' "$*"; }
eg() { printf '$ evergreen %s\n' "$*"; "$BIN/evergreen" "$@"; }

# A watcher, as the prediction server will be: it sees every change.
"$BIN/evergreen" watch --json --from 0 >"$DIR/watch.jsonl" 2>/dev/null &
WATCH_PID=$!

head -c 20000 /dev/urandom >"$DIR/model-v1.bin"
head -c 30000 /dev/urandom >"$DIR/model-v2.bin"

step "Create a model"
eg models create wine --description "wine cultivar classifier" --tag team=demo

step "Register two versions (artifacts are streamed; the registry computes sha256)"
eg versions register wine --artifact "$DIR/model-v1.bin" --metric accuracy=0.91 --param max_depth=6
eg versions register wine --artifact "$DIR/model-v2.bin" --metric accuracy=0.94 --param max_depth=8

step "Promote version 1 to production (compare-and-set: the alias must not exist yet)"
eg alias set wine production 1 --expect 0 --reason "first release"

step "Promote version 2, but only if production is still at 1"
eg alias set wine production 2 --expect 1 --reason "better accuracy"

step "A stale promotion (expects production at 1) is refused, naming the current target"
if eg alias set wine production 1 --expect 1; then
  echo "demo: the stale promotion should have been refused"; exit 1
fi

step "Deprecate version 1"
eg versions status wine/1 deprecated --reason "superseded by version 2"

step "What the registry holds"
eg versions list wine
eg versions get wine@production

step "Download production's artifact and check it byte for byte"
eg versions download wine@production --output "$DIR/downloaded.bin"
cmp "$DIR/model-v2.bin" "$DIR/downloaded.bin" && echo "identical to model-v2.bin"

step "The audit trail"
eg history wine

step "The Watch stream a prediction server follows (one JSON object per event)"
sleep 0.3
cat "$DIR/watch.jsonl"
[ "$(wc -l <"$DIR/watch.jsonl")" -ge 6 ] || { echo "demo: the watcher missed events"; exit 1; }

printf '\n==> done: every step succeeded\n'
