#!/usr/bin/env bash
# Starts a throwaway registry, trainer, prediction server and monitor
# (embedded defaults: sled + local artifacts in a temp dir, no external
# service) and walks a model through its lifecycle, narrating each step —
# up to the closed loop: drifted traffic with labels makes the monitor
# retrain, and the gate promotes the new version; and at the end of a
# version's life: retire, archive (to the registry's local archive dir) and
# restore, byte for byte. Exits 0 when every step did what it should,
# non-zero with a "demo: ..." line when one did not.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${EVERGREEN_DEMO_DATA:-data/breast_cancer.csv}
[ -f "$DATA" ] || { echo "demo: dataset $DATA not found (set EVERGREEN_DEMO_DATA)"; exit 1; }

echo "==> building (release)"
cargo build --release --quiet -p evergreen-registry -p evergreen-trainer -p evergreen-server \
  -p evergreen-monitor -p evergreen-cli
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
# Small tumbling windows (50 rows) so that the demo's traffic closes a few;
# env variables use `__` between levels (`[monitor] window_rows`).
EVERGREEN_MONITOR__WINDOW_ROWS=50 start monitor --data-dir "$DIR/monitor" \
  --registry "$EVERGREEN_REGISTRY_URL" --trainer "$EVERGREEN_TRAINER_URL"
MON=$ADDR
export EVERGREEN_MONITOR_URL="http://$MON"
start server --registry "$EVERGREEN_REGISTRY_URL" --monitor "$EVERGREEN_MONITOR_URL"
SRV=$ADDR
export EVERGREEN_SERVER_URL="http://$SRV"

export EVERGREEN_ACTOR=demo
echo "==> registry at $REG, trainer at $TRN, server at $SRV, monitor at $MON (state in $DIR)"

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "demo: $*" >&2; exit 1; }
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

# ---------------------------------------------------------------- monitor ---
# Request files of 50 rows each (one tumbling window) from $DATA: "ref"
# windows take every third row from the first, so they look like the
# training data; "drift" windows every third row from the second (cycling
# through the file), with every feature ×1.5. Labels are the target column,
# keyed by (request id, row).
# window_file KIND K: writes $DIR/KIND-K.csv and $DIR/KIND-K.labels.csv.
window_file() {
  local kind=$1 k=$2 off=0 scale=1
  [ "$kind" = drift ] && off=1 scale=1.5
  awk -F, -v OFS=, -v off="$off" -v scale="$scale" -v k="$k" '
    NR == 1 { header = $0; next }
    { row[n++] = $0 }
    END {
      if (n < 150) exit 1
      print header
      for (j = 0; j < 50; j++) {
        $0 = row[(off + 3 * (k * 50 + j)) % n]
        if (scale != 1) for (i = 1; i < NF; i++) $i = $i * scale
        print
      }
    }' "$DATA" >"$DIR/$kind-$k.csv" || fail "$DATA has too few rows (150 needed) for the monitor chapter"
  awk -F, -v id="$kind-$k" 'NR == 1 { print "request_id,row,label"; next } { print id "," NR - 2 "," $NF }' \
    "$DIR/$kind-$k.csv" >"$DIR/$kind-$k.labels.csv"
}
# logged V: rows of cancer/V the monitor has counted (0 before the first).
logged() {
  "$BIN/evergreen" health cancer --version "$1" --window long 2>/dev/null |
    sed -n '1s/.*  \([0-9][0-9]*\) rows.*/\1/p' | grep . || echo 0
}
# traffic KIND K: scores window KIND-K in one request (id KIND-K), waits
# until the monitor has logged its rows, then sends their labels.
traffic() {
  local id=$1-$2 version before
  window_file "$1" "$2"
  printf '$ evergreen predict cancer --file %s.csv --drop target --request-id %s\n' "$id" "$id"
  "$BIN/evergreen" predict cancer --file "$DIR/$id.csv" --drop target --request-id "$id" >"$DIR/$id.out" ||
    fail "predict $id failed"
  version=$(sed -n "s|^served by cancer/\([0-9]*\) (request $id)\$|\1|p" "$DIR/$id.out")
  [ -n "$version" ] || fail "predict $id: no 'served by' line with the request id: $(tail -1 "$DIR/$id.out")"
  echo "50 rows served by cancer/$version (request $id)"
  before=${LOGGED[$version]:-0}
  for _ in $(seq 200); do
    [ "$(logged "$version")" -ge $((before + 50)) ] && break
    sleep 0.05
  done
  LOGGED[$version]=$(logged "$version")
  [ "${LOGGED[$version]}" -ge $((before + 50)) ] || fail "the monitor did not receive the log of $id"
  printf '$ evergreen feedback --file %s.labels.csv\n' "$id"
  "$BIN/evergreen" feedback --file "$DIR/$id.labels.csv" | tee "$DIR/$id.feedback"
  grep -q "^matched 50, unknown 0, expired 0, invalid 0\$" "$DIR/$id.feedback" ||
    fail "the monitor did not match all 50 labels of $id"
}
declare -A LOGGED
retrain_signal() {
  case "$("$BIN/evergreen" signals cancer --json)" in *'"kind":"RETRAIN"'*) return 0 ;; esac
  return 1
}
production() { "$BIN/evergreen" versions get cancer@production | sed -n 's/^version: *//p'; }

step "Move production to version 4, the replacement of the deprecated version 1"
eg alias set cancer production 4 --expect 1 --reason "version 1 is deprecated"
served_by 4 && echo "now served by cancer/4"
sleep 0.5 # the probes' own log records reach the monitor first
LOGGED[4]=$(logged 4)

step "The monitor: a policy for cancer (every window judged; 3 breached windows in a row retrain)"
echo "(rollback stays on, but only for a promotion that was never healthy: version 4 is healthy"
echo " first, so when the data drifts the cure is retraining on the labels, not an older version)"
eg monitoring set cancer --min-rows 50 --min-labels 30 --consecutive 3 --max-metric-drop 0.1 \
  --cooldown 1m


step "Traffic like the training data, labeled after the fact: three healthy windows"
for k in 0 1 2; do traffic ref "$k"; done
eg health cancer --window last
echo "(the first window may also hold the earlier chapters' test rows, three rows sent again and again:"
echo " one odd window is not a trend — the policy acts on 3 breached windows in a row)"
[ "$("$BIN/evergreen" signals cancer --json)" = "[]" ] || fail "the monitor raised a signal on healthy traffic"
eg signals cancer

step "Drifted traffic (every feature ×1.5), labeled: the model loses accuracy, and the monitor acts"
RETRAINED=
for k in 0 1 2 3 4 5; do
  traffic drift "$k"
  if retrain_signal; then RETRAINED=yes; break; fi
done
for _ in $(seq 100); do
  [ -n "$RETRAINED" ] && break
  retrain_signal && RETRAINED=yes && break
  sleep 0.1
done
[ -n "$RETRAINED" ] || fail "no RETRAIN signal after the drifted windows (see: evergreen health cancer --window last)"
eg health cancer --version 4 --window last

step "The RETRAIN signal: the trainer retrains version 4's recipe with the labeled rows, gated on production"
eg signals cancer
NEW=
for _ in $(seq 600); do
  NEW=$(production)
  [ -n "$NEW" ] && [ "$NEW" != 4 ] && break
  sleep 0.1
done
[ -n "$NEW" ] && [ "$NEW" != 4 ] || fail "the gate did not promote the retrained version (see: evergreen jobs list)"
echo "the gate promoted cancer/$NEW to production:"
eg history cancer --limit 1
served_by "$NEW" && echo "the server now serves cancer/$NEW"

step "More drifted traffic, now answered by cancer/$NEW: version 4 and version $NEW side by side"
traffic drift $((k + 1))
eg versions compare cancer 4 "$NEW"
echo "(training metrics come from different holdouts: version $NEW's includes labeled drifted rows)"

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

# ------------------------------------------------------ retire and archive ---
step "Retire and archive version 1: deprecated above, replaced by 4, and no alias or weight points at it now"
eg versions download cancer/1 --output "$DIR/v1-before.evgmodel"
eg retire cancer 1 --reason "superseded by version 4 before its sunset"
eg archive cancer 1 --include-data --reason "kept for audits"
# The demo's registry archives to its local archive dir (<data_dir>/archive;
# [registry.archive.s3] with a bucket would send it to S3 instead).
ARCHIVE="$DIR/registry/archive/cancer/1"
[ -f "$ARCHIVE/manifest.json" ] && [ -f "$ARCHIVE/artifact.evgm" ] || fail "the archive is not in $ARCHIVE"
echo "manifest: $ARCHIVE/manifest.json"
echo "its artifact checksum line and the archived file's sha256:"
grep -m1 '"sha256": "' "$ARCHIVE/manifest.json"
(cd "$ARCHIVE" && sha256sum artifact.evgm)
echo "(an ARCHIVED version's artifact is no longer in the registry:)"
if eg versions download cancer/1 --output "$DIR/v1-gone.evgmodel"; then
  fail "an ARCHIVED version should not be downloadable"
fi

step "Restore version 1 from the archive: verified against the manifest, back as RETIRED"
eg restore cancer 1 --reason "an audit asks for it"
eg versions download cancer/1 --output "$DIR/v1-after.evgmodel"
BEFORE=$(sha256sum <"$DIR/v1-before.evgmodel" | cut -d' ' -f1)
AFTER=$(sha256sum <"$DIR/v1-after.evgmodel" | cut -d' ' -f1)
echo "sha256 before archive: $BEFORE"
echo "sha256 after restore:  $AFTER"
[ "$BEFORE" = "$AFTER" ] || fail "the restored artifact differs from the archived one"
echo "the bytes match"
eg history cancer --limit 3

printf '\n==> done: every step succeeded\n'
