#!/usr/bin/env bash
# Starts a throwaway registry and trainer (embedded defaults: sled + local
# artifacts in a temp dir, no external service) and walks a model through
# the lifecycle that exists so far, narrating each step. Exits 0 when every
# step did what it should.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${EVERGREEN_DEMO_DATA:-data/breast_cancer.csv}
[ -f "$DATA" ] || { echo "demo: dataset $DATA not found (set EVERGREEN_DEMO_DATA)"; exit 1; }

echo "==> building (release)"
cargo build --release --quiet -p evergreen-registry -p evergreen-trainer -p evergreen-cli
BIN=target/release
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# start NAME ARGS...: runs a daemon on port 0, waits for "listening on", and
# sets ADDR (no command substitution: PIDS must be updated in this shell).
start() {
  local name=$1; shift
  "$BIN/evergreen-$name" --listen 127.0.0.1:0 "$@" >"$DIR/$name.out" 2>"$DIR/$name.log" &
  PIDS+=($!)
  for _ in $(seq 100); do
    grep -q "listening on" "$DIR/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  ADDR=$(sed -n 's/.*listening on //p' "$DIR/$name.out")
  [ -n "$ADDR" ] || { echo "$name did not start:" >&2; cat "$DIR/$name.log" >&2; exit 1; }
}

start registry --data-dir "$DIR/registry"
REG=$ADDR
export EVERGREEN_REGISTRY_URL="http://$REG"
start trainer --data-dir "$DIR/trainer" --registry "$EVERGREEN_REGISTRY_URL"
TRN=$ADDR
export EVERGREEN_TRAINER_URL="http://$TRN"
start server --registry "$EVERGREEN_REGISTRY_URL"
SRV=$ADDR
export EVERGREEN_SERVER_URL="http://$SRV"

export EVERGREEN_ACTOR=demo
echo "==> registry at $REG, trainer at $TRN, server at $SRV (state in $DIR)"

step() { printf '\n==> %s\n' "$*"; }
eg() { printf '$ evergreen %s\n' "$*"; "$BIN/evergreen" "$@"; }

# A watcher, as the prediction server will be: it sees every change.
"$BIN/evergreen" watch --json --from 0 >"$DIR/watch.jsonl" 2>/dev/null &
PIDS+=($!)

step "Train a random forest on $DATA and promote it to production if it is the best so far"
eg train --data "$DATA" --target target --model cancer --seed 42 \
  --promote-if-better production --reason "first model"

step "Train a challenger: logistic regression, C searched with 5-fold CV, gated on F1 against production"
eg train --data "$DATA" --target target --model cancer --seed 42 \
  --algorithm logistic_regression --param C=0.1,1,10 --cv 5 \
  --promote-if-better production --metric f1_macro --json >"$DIR/challenger.json"
echo "registered version $(sed -n 's/.*"version":\([0-9]*\)}$/\1/p' "$DIR/challenger.json"): $(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' "$DIR/challenger.json")"

step "The same training request again (without the gate) gives a byte-identical artifact"
eg train --data "$DATA" --target target --model cancer --seed 42 \
  --algorithm logistic_regression --param C=0.1,1,10 --cv 5 --metric f1_macro --json >"$DIR/again.json"
SHA1=$(sed -n 's/.*"artifact_sha256":"\([0-9a-f]*\)".*/\1/p' "$DIR/challenger.json")
SHA2=$(sed -n 's/.*"artifact_sha256":"\([0-9a-f]*\)".*/\1/p' "$DIR/again.json")
echo "challenger sha256 $SHA1"
echo "again      sha256 $SHA2"
[ -n "$SHA1" ] && [ "$SHA1" = "$SHA2" ] || { echo "demo: artifacts differ"; exit 1; }

step "Retrain production's recipe on fresh data (what the monitor will ask for)"
eg retrain cancer --data "$DATA" --reason "scheduled refresh"

head -4 "$DATA" >"$DIR/rows.csv"
# served_by N: waits until the server answers with cancer/N.
served_by() {
  for _ in $(seq 100); do
    "$BIN/evergreen" predict cancer --file "$DIR/rows.csv" --drop target 2>/dev/null | grep -q "served by cancer/$1 " && return 0
    sleep 0.05
  done
  echo "demo: the server did not switch to cancer/$1"; exit 1
}

step "The prediction server serves production; score three rows of the CSV"
eg predict cancer --file "$DIR/rows.csv" --drop target

step "Promote the retrained version 4: the server hot-swaps it, no restart"
eg alias set cancer production 4 --expect 1 --reason "retrained on fresh data"
served_by 4 && echo "now served by cancer/4"

step "Roll production back to its previous target (found in the audit trail)"
eg rollback cancer --reason "demo rollback"
served_by 1 && echo "now served by cancer/1 again"

step "Canary: 90% of traffic to version 1, 10% to version 4; version 2 shadows every request"
eg policy set cancer --weight 1=90 --weight 4=10 --shadow 2 --reason "canary for version 4"
sleep 0.3
eg served
eg policy clear cancer --reason "canary done"

step "Deprecate version 1 with a sunset and a replacement: every caller sees the notice"
eg versions status cancer/1 deprecated --reason "replaced by the retrained model" --sunset 2027-01-01 --replacement 4 >/dev/null
sleep 0.3
eg predict cancer --file "$DIR/rows.csv" --drop target

step "What the registry holds"

eg versions list cancer
eg versions get cancer@production

step "A stale promotion (expects production at 3) is refused, naming the current target"
if eg alias set cancer production 2 --expect 3; then
  echo "demo: the stale promotion should have been refused"; exit 1
fi

step "Download production's artifact and check its sha256"
eg versions download cancer@production --output "$DIR/production.evgmodel"
PROD_SHA=$("$BIN/evergreen" versions get cancer@production --json | sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p')
echo "$PROD_SHA  $DIR/production.evgmodel" | sha256sum -c -

step "Deprecate version 3"
eg versions status cancer/3 deprecated --reason "duplicate of version 2"

step "Training jobs"
eg jobs list

step "The audit trail"
eg history cancer

step "The Watch stream a prediction server follows (one JSON object per event)"
sleep 0.3
cat "$DIR/watch.jsonl"
[ "$(wc -l <"$DIR/watch.jsonl")" -ge 6 ] || { echo "demo: the watcher missed events"; exit 1; }

printf '\n==> done: every step succeeded\n'
