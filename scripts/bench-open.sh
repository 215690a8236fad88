#!/usr/bin/env bash
# Benchmark (not a test) of the open workload: s3:PutObject 1 KiB against the
# canned nginx endpoint (scripts/lib/canned-s3.sh), cloudswarm pinned to core 0
# and nginx to core 1, in one run:
#  1. arrivals at 1,000/s, 2,000/s, ... (--find-max, 8 s a step; the first
#     steps warm the pool and the shared bucket up): the 5,000/s step's
#     achieved rate against its target (target: within 1%, nothing dropped),
#     and the highest rate one core sustains with < 0.1% of arrivals dropped
#     (where the search stops: the generator saturated);
#  2. the closed loop on the same core (profiles/bench-s3-put.toml, 32 users,
#     wait 0): its req/s, the figure the open rate is compared with.
#   BENCH_BIN=DIR scripts/bench-open.sh   (prebuilt DIR/cloudswarm)
#   OPEN_START=1000/s OPEN_STEP=1000/s OPEN_HOLD=8s OPEN_POOL=64 OPEN_CHECK=5000 scripts/bench-open.sh
set -euo pipefail
cd "$(dirname "$0")/.."
START=${OPEN_START:-1000/s}
STEP=${OPEN_STEP:-1000/s}
HOLD=${OPEN_HOLD:-8s}
# A pool a little above what the rate needs at the endpoint's latency: a
# much larger one opens hundreds of connections once latency wobbles, which
# costs the one core more than the requests.
POOL=${OPEN_POOL:-64}
CHECK=${OPEN_CHECK:-5000}
scripts/setup.sh bench
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --quiet --bin cloudswarm
  BIN=${CARGO_TARGET_DIR:-target}/release
fi
[ -x "$BIN/cloudswarm" ] || { echo "bench: $BIN/cloudswarm is not an executable" >&2; exit 2; }
echo "bench: binaries from $BIN"
W=$(mktemp -d /tmp/cloudswarm-bench-open.XXXXXX)
. scripts/lib/canned-s3.sh
trap 'if [ -n "${CANNED_PID:-}" ]; then kill $CANNED_PID; wait $CANNED_PID; fi 2>/dev/null; rm -rf "$W"' EXIT
canned_s3_start "$W"
URL=$CANNED_URL
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

echo "== open workload: --find-max $START:$STEP:$HOLD, pool $POOL users, one core"
taskset -c 0 "$BIN/cloudswarm" run -f profiles/bench-open-put.toml -u "$POOL" -r 100000 \
  --find-max "$START:$STEP:$HOLD" -t 10m --s3-endpoint "$URL" --state-dir "$W/state" \
  --status-every 0 --json "$W/open.json" --keep-resources --max-inflight 100000 >"$W/open.out" 2>"$W/open.err" \
  || { tail -20 "$W/open.err"; exit 1; }
grep '^find-max' "$W/open.err" || true
echo "== closed loop: profiles/bench-s3-put.toml, 32 users, wait 0, 15 s, one core"
taskset -c 0 "$BIN/cloudswarm" run -f profiles/bench-s3-put.toml -u 32 -r 100000 -t 15s \
  --s3-endpoint "$URL" --state-dir "$W/state" --status-every 0 --json "$W/closed.json" --keep-resources \
  >/dev/null 2>"$W/closed.err" || { tail -20 "$W/closed.err"; exit 1; }
python3 - "$W/open.json" "$W/closed.json" "$CHECK" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); c = json.load(open(sys.argv[2])); check = float(sys.argv[3])
cap = o["capacity"]
at = [s for s in cap["steps"] if abs(s["rate"] - check) < 1e-6]
first = at[0] if at else cap["steps"][-1]
closed = c["total"]["num_requests"] / c["duration_s"]
print("== results (s3:PutObject 1 KiB, nginx canned endpoint, one core)")
print(f"step at {first['rate']:.0f}/s: achieved {first['achieved_rate']:.1f}/s "
      f"({(first['achieved_rate'] / first['rate'] - 1) * 100:+.2f}%, target within 1%), "
      f"{first['dropped']} dropped, {first['requests']} requests, p99 {first['p99_ms']:.2f} ms")
held = [s for s in cap["steps"] if s["held"]]
mx = cap["max_rate"]
print(f"highest arrival rate with < 0.1% dropped: {mx:.0f}/s" if mx else "no step held",
      f"(stopped by {cap['stopped_by']}: {cap['reason']})")
print(f"closed loop, 32 users, wait 0: {closed:.0f} req/s; open max / closed = "
      + (f"{mx / closed:.2f}x" if mx else "n/a"))
PY
