#!/usr/bin/env bash
# Benchmark (not a test): s3:PutObject 1 KiB, wait 0, against a canned S3
# endpoint (nginx on loopback answering every request at once), for
#   cloudswarm (profiles/bench-s3-put.toml), a bare aws-sdk-s3 loop
#   (examples/sdk_put_loop.rs) with cloudswarm's client settings ("tuned",
#   the peer of the 0.95x target) and with the SDK's defaults, and Locust +
#   boto3 (bench/locustfile.py), each pinned to one core (nginx on the
#   other), in one run; prints the ratios. Then cloudswarm and the tuned loop
#   run at once on the same core, which cancels the machine's noise.
# Then hatches many mostly idle users (profiles/bench-many-users.toml) and
# prints the peak RSS. Then the dashboard: GET /stats/requests latency while
# its engine runs bench-s3-put at full speed (target p99 < 50 ms), next to
# the same client's latency against nginx in the same run.
#   BENCH_SECONDS=15 BENCH_ROUNDS=5 BENCH_USERS=32 MANY_USERS=100000 scripts/bench.sh
#   BENCH_ONLY=dashboard scripts/bench.sh      (the dashboard part alone)
#   MANY_USERS=0 BENCH_NO_DASHBOARD=1 scripts/bench.sh   (the put comparison alone)
#   BENCH_PGO=1 scripts/bench.sh     (first scripts/build-pgo.sh: both binaries
#                                     profile-guided and BOLT-laid-out, ~1.5 h)
#   BENCH_BIN=DIR scripts/bench.sh   (prebuilt DIR/cloudswarm, DIR/examples/sdk_put_loop)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-5}
CONC=${BENCH_USERS:-32}
MANY=${MANY_USERS:-100000}
for v in "BENCH_SECONDS=$SECS" "BENCH_ROUNDS=$ROUNDS" "BENCH_USERS=$CONC" "MANY_USERS=$MANY"; do
  case ${v#*=} in
    ''|*[!0-9]*) echo "bench: ${v%%=*} must be a whole number, not '${v#*=}'" >&2; exit 2 ;;
  esac
done
[ "$ROUNDS" -gt 0 ] && [ "$CONC" -gt 0 ] && [ "$SECS" -gt 0 ] || { echo "bench: BENCH_SECONDS, BENCH_ROUNDS and BENCH_USERS must be above 0" >&2; exit 2; }
scripts/setup.sh bench
if [ -n "${BENCH_PGO:-}" ] && [ -z "${BENCH_BIN:-}" ]; then
  scripts/build-pgo.sh
  BENCH_BIN=$(realpath -m "${PGO_DIR:-target/pgo}")/out
  # Without llvm-bolt the profile-guided binaries are the result.
  [ -x "$BENCH_BIN/cloudswarm" ] || BENCH_BIN=$(dirname "$BENCH_BIN")/use/$(rustc -vV | sed -n 's/^host: //p')/release
fi
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --quiet --bin cloudswarm --example sdk_put_loop
  BIN=${CARGO_TARGET_DIR:-target}/release
fi
for b in "$BIN/cloudswarm" "$BIN/examples/sdk_put_loop"; do
  [ -x "$b" ] || { echo "bench: $b is not an executable" >&2; exit 2; }
done
echo "bench: binaries from $BIN"
VENV=${CLOUDSWARM_VENV:-$PWD/.venv}

W=$(mktemp -d /tmp/cloudswarm-bench.XXXXXX)
. scripts/lib/canned-s3.sh
trap 'if [ -n "${CANNED_PID:-}" ]; then kill $CANNED_PID; wait $CANNED_PID; fi 2>/dev/null; rm -rf "$W"' EXIT
canned_s3_start "$W"
PORT=$CANNED_PORT URL=$CANNED_URL

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

# The dashboard under load: a keep-alive client polls /stats/requests (as the
# page does, but back to back) while the engine saturates the canned endpoint.
dashboard_bench() {
  local dport
  dport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/cloudswarm" serve --bind "127.0.0.1:$dport" --s3-endpoint "$URL" --state-dir "$W/state" >/dev/null 2>"$W/serve.err" &
  local spid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$dport") 2>/dev/null && break; sleep 0.1; done
  python3 - "$dport" "$PORT" "$CONC" <<'PY' || { cat "$W/serve.err"; kill $spid; exit 1; }
import http.client, json, sys, time
dport, nport, users = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def lat(port, path, n):
    c = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t = time.perf_counter(); c.request("GET", path); r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99) - 1], out[-1]
c = http.client.HTTPConnection("127.0.0.1", dport)
c.request("POST", "/swarm", f"user_count={users}&spawn_rate=10000&profile=bench-s3-put",
          {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); body = r.read(); assert r.status == 200, body
time.sleep(5)
d50, d99, dmax = lat(dport, "/stats/requests", 2000)
n50, n99, nmax = lat(nport, "/", 2000)
c.request("GET", "/stats/requests"); s = json.loads(c.getresponse().read())
print(f"dashboard under load ({s['total_rps']:.0f} req/s, {s['user_count']} users): GET /stats/requests "
      f"p50 {d50:.2f} ms, p99 {d99:.2f} ms, max {dmax:.2f} ms (target p99 < 50 ms)")
print(f"same client against nginx /: p50 {n50:.2f} ms, p99 {n99:.2f} ms; dashboard/nginx p99 = {d99/n99:.1f}x")
PY
  kill $spid 2>/dev/null; wait $spid 2>/dev/null || true
}
if [ "${BENCH_ONLY:-}" = dashboard ]; then
  echo "== dashboard latency under load"
  dashboard_bench
  exit 0
fi

# The three peers take turns, ROUNDS times each, so the machine's noise hits
# them alike; the medians are compared.
cs_round() { # [tag]: names its files, so two can run at once
  local tag=${1:-cs}
  taskset -c 0 "$BIN/cloudswarm" run -f profiles/bench-s3-put.toml -u "$CONC" -r 100000 -t "${SECS}s" \
    --s3-endpoint "$URL" --state-dir "$W/state" --status-every 0 --json "$W/$tag.json" --keep-resources >/dev/null 2>"$W/$tag.err" \
    || { cat "$W/$tag.err" >&2; exit 1; }
  python3 -c "import json; d=json.load(open('$W/$tag.json')); t=d['total']; assert t['num_failures']==0, t; print(round(t['num_requests']/d['duration_s'],1))"
}
locust_round() {
  (cd "$W" && taskset -c 0 "$VENV/bin/locust" -f "$OLDPWD/bench/locustfile.py" --headless -u "$CONC" -r "$CONC" \
    -t "${SECS}s" --host "$URL" --csv "$W/locust" --only-summary >/dev/null 2>"$W/locust.err") || { tail -20 "$W/locust.err"; exit 1; }
  python3 -c "
import csv
for r in csv.DictReader(open('$W/locust_stats.csv')):
    if r['Name'] == 'Aggregated':
        assert r['Failure Count'] == '0', r
        print(round(float(r['Requests/s']), 1))"
}
sdk_round() {
  taskset -c 0 "$BIN/examples/sdk_put_loop" "$URL" "$CONC" "$SECS" "$1" | sed -n 's/.*failures=0 .*rps=\([0-9.]*\).*/\1/p'
}
CS_ALL=(); SDK_ALL=(); SDKD_ALL=(); LOCUST_ALL=(); PAIR_ALL=()
for r in $(seq "$ROUNDS"); do
  # cloudswarm and the tuned loop run back to back, in turns first, so each
  # round gives a ratio of two neighbours in time (the paired figure).
  if [ $((r % 2)) = 1 ]; then
    CS_ALL+=("$(cs_round)"); SDK_ALL+=("$(sdk_round tuned)")
  else
    SDK_ALL+=("$(sdk_round tuned)"); CS_ALL+=("$(cs_round)")
  fi
  SDKD_ALL+=("$(sdk_round defaults)")
  LOCUST_ALL+=("$(locust_round)")
  [ -n "${CS_ALL[-1]}" ] && [ -n "${SDK_ALL[-1]}" ] || { echo "round $r failed (a peer reported no rate)"; exit 1; }
  PAIR_ALL+=("$(python3 -c "print(round(${CS_ALL[-1]} / ${SDK_ALL[-1]}, 3))")")
  echo "round $r: cloudswarm ${CS_ALL[-1]} req/s, bare SDK tuned ${SDK_ALL[-1]} req/s (ratio ${PAIR_ALL[-1]})," \
    "bare SDK defaults ${SDKD_ALL[-1]} req/s, locust ${LOCUST_ALL[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
CS_RPS=$(median "${CS_ALL[@]}")
SDK_RPS=$(median "${SDK_ALL[@]}")
SDKD_RPS=$(median "${SDKD_ALL[@]}")
LOCUST_RPS=$(median "${LOCUST_ALL[@]}")
PAIR=$(median "${PAIR_ALL[@]}")
PAIR_RANGE="$(printf '%s\n' "${PAIR_ALL[@]}" | sort -n | head -1)-$(printf '%s\n' "${PAIR_ALL[@]}" | sort -n | tail -1)"
[ -n "$CS_RPS" ] && [ -n "$SDK_RPS" ] && [ -n "$SDKD_RPS" ] && [ -n "$LOCUST_RPS" ] || { echo "a round failed"; exit 1; }

# The steadiest figure: cloudswarm and the tuned loop at the same time on the
# same core, so whatever else the machine does slows both alike.
DUEL_ALL=()
for r in $(seq "$ROUNDS"); do
  cs_round duel >"$W/duel.cs" &
  a=$!
  sdk_round tuned >"$W/duel.sdk" &
  b=$!
  wait $a
  wait $b
  [ -s "$W/duel.cs" ] && [ -s "$W/duel.sdk" ] || { echo "same-core round $r failed (a peer reported no rate)"; exit 1; }
  DUEL_ALL+=("$(python3 -c "print(round($(cat "$W/duel.cs") / $(cat "$W/duel.sdk"), 3))")")
  echo "same-core round $r: cloudswarm $(cat "$W/duel.cs") req/s, bare SDK tuned $(cat "$W/duel.sdk") req/s, ratio ${DUEL_ALL[-1]}"
done
DUEL=$(median "${DUEL_ALL[@]}")

if [ "$MANY" -gt 0 ]; then
  echo "== $MANY users, wait 5-10 s, both cores"
  "$BIN/cloudswarm" run -f profiles/bench-many-users.toml -u "$MANY" -r 20000 -t 30s \
    --s3-endpoint "$URL" --state-dir "$W/state" --status-every 5 --json "$W/many.json" --keep-resources \
    >/dev/null 2>"$W/many.err" &
  CSPID=$!
  PEAK=0
  while kill -0 $CSPID 2>/dev/null; do
    HWM=$(awk '/VmHWM/ {print $2}' /proc/$CSPID/status 2>/dev/null || echo 0)
    [ -n "$HWM" ] && [ "$HWM" -gt "$PEAK" ] && PEAK=$HWM
    sleep 0.5
  done
  wait $CSPID || { cat "$W/many.err"; exit 1; }
  MANY_USERS_REACHED=$(python3 -c "import json; print(json.load(open('$W/many.json'))['users'])")
  MANY_RPS=$(python3 -c "import json; d=json.load(open('$W/many.json')); print(round(d['total']['num_requests']/d['duration_s'],1), d['total']['num_failures'])")
  grep -E '^\[' "$W/many.err" | tail -3
fi
echo
echo "== results (s3:PutObject 1 KiB, wait 0, $CONC users, ${SECS}s, one core each, median of $ROUNDS; nginx canned endpoint)"
printf "%-28s %10s\n" "peer" "req/s"
printf "%-28s %10s\n" "cloudswarm" "$CS_RPS"
printf "%-28s %10s\n" "bare SDK loop, tuned" "$SDK_RPS"
printf "%-28s %10s\n" "bare SDK loop, defaults" "$SDKD_RPS"
printf "%-28s %10s\n" "locust + boto3" "$LOCUST_RPS"
python3 -c "
cs, sdk, sdkd, lo = float('$CS_RPS'), float('$SDK_RPS'), float('$SDKD_RPS'), float('$LOCUST_RPS')
print(f'cloudswarm / locust+boto3       = {cs/lo:.1f}x (target >= 15x)')
print(f'cloudswarm / bare SDK, tuned    = {cs/sdk:.2f}x (medians; target >= 0.95x)')
print(f'cloudswarm / bare SDK, tuned, paired = {float(\"$PAIR\"):.3f}x (median of $ROUNDS rounds, range $PAIR_RANGE)')
print(f'cloudswarm / bare SDK, defaults = {cs/sdkd:.2f}x')
print(f'cloudswarm / bare SDK, tuned, sharing one core = {float(\"$DUEL\"):.2f}x (median of $ROUNDS)')"
[ "$MANY" -gt 0 ] && echo "many users: $MANY_USERS_REACHED users alive, peak RSS $((PEAK / 1024)) MiB (target <= 1024 MiB); rps, failures: $MANY_RPS"
[ -n "${BENCH_NO_DASHBOARD:-}" ] && exit 0
echo
echo "== dashboard latency under load"
dashboard_bench
