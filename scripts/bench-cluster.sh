#!/usr/bin/env bash
# Benchmark (not a test) of distributed runs, two parts, all on loopback:
#  1. What reporting costs a worker: s3:PutObject 1 KiB against the canned
#     nginx endpoint (profiles/bench-s3-put.toml), a standalone `cloudswarm
#     run` and a `cloudswarm worker` under `cloudswarm run --master`, each
#     pinned to core 0 (nginx and the master on core 1), in turns; prints the
#     ratio of the medians (target >= 0.97).
#  2. What keeping workers costs a master: N simulated workers
#     (bench/flood.py: heartbeats every second, a realistic stats report
#     every 3 s) against cloudswarm's master (`serve --master`) and against a
#     stock Locust master, each pinned to core 0 (the simulator on core 1),
#     N = 50, 200, 500; prints each master's CPU % and how many workers it
#     still counts alive (target: cloudswarm <= 1/10 of Locust's CPU, all 500).
#   BENCH_SECONDS=15 BENCH_ROUNDS=3 FLOOD_SECONDS=40 FLOOD_N="50 200 500" scripts/bench-cluster.sh
#   BENCH_BIN=DIR scripts/bench-cluster.sh      (prebuilt DIR/cloudswarm)
#   BENCH_ONLY=flood|worker scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-3}
CONC=${BENCH_USERS:-32}
FLOOD_SECS=${FLOOD_SECONDS:-40}
FLOOD_N=${FLOOD_N:-"50 200 500"}
scripts/setup.sh bench
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --quiet --bin cloudswarm
  BIN=${CARGO_TARGET_DIR:-target}/release
fi
[ -x "$BIN/cloudswarm" ] || { echo "bench: $BIN/cloudswarm is not an executable" >&2; exit 2; }
echo "bench: binaries from $BIN"
VENV=${CLOUDSWARM_VENV:-$PWD/.venv}
W=$(mktemp -d /tmp/cloudswarm-bench-cluster.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" ${CANNED_PID:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

# CPU seconds (user + system) a process has used.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

worker_part() {
  . scripts/lib/canned-s3.sh
  canned_s3_start "$W"
  local url=$CANNED_URL
  standalone() {
    taskset -c 0 "$BIN/cloudswarm" run -f profiles/bench-s3-put.toml -u "$CONC" -r 100000 -t "${SECS}s" \
      --s3-endpoint "$url" --state-dir "$W/state" --status-every 0 --json "$W/alone.json" --keep-resources \
      >/dev/null 2>"$W/alone.err" || { cat "$W/alone.err" >&2; exit 1; }
    python3 -c "import json; d=json.load(open('$W/alone.json')); t=d['total']; assert t['num_failures']==0, t; print(round(t['num_requests']/d['duration_s'],1))"
  }
  under_master() {
    local mport; mport=$(free_port)
    taskset -c 1 "$BIN/cloudswarm" run --master --expect-workers 1 --master-bind-port "$mport" \
      -f profiles/bench-s3-put.toml -u "$CONC" -r 100000 -t "${SECS}s" --status-every 0 \
      --json "$W/master.json" --keep-resources >/dev/null 2>"$W/master.err" &
    local m=$!
    wait_port "$mport"
    taskset -c 0 "$BIN/cloudswarm" worker --master-port "$mport" --s3-endpoint "$url" \
      --state-dir "$W/wstate" >/dev/null 2>"$W/worker.err" &
    local w=$!
    wait $m || { cat "$W/master.err" >&2; exit 1; }
    wait $w || true
    python3 -c "import json; d=json.load(open('$W/master.json')); t=d['total']; assert t['num_failures']==0, t; print(round(t['num_requests']/d['duration_s'],1))"
  }
  local alone=() worker=()
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then alone+=("$(standalone)"); worker+=("$(under_master)")
    else worker+=("$(under_master)"); alone+=("$(standalone)"); fi
    echo "round $r: standalone ${alone[-1]} req/s, worker under a master ${worker[-1]} req/s"
  done
  local a w
  a=$(median "${alone[@]}"); w=$(median "${worker[@]}")
  echo "worker/standalone: $(python3 -c "print(round($w / $a, 3))")x (medians $w / $a req/s over $ROUNDS rounds; target >= 0.97)"
  kill "$CANNED_PID" 2>/dev/null || true; wait "$CANNED_PID" 2>/dev/null || true; CANNED_PID=
}

# One master against N simulated workers: CPU % over the flood's second
# half, and how many workers it still counts alive at the end.
flood_one() { # kind N
  local kind=$1 n=$2 mport wport pid
  mport=$(free_port); wport=$(free_port)
  if [ "$kind" = cloudswarm ]; then
    taskset -c 0 "$BIN/cloudswarm" serve --master --master-bind-port "$mport" --bind "127.0.0.1:$wport" \
      --state-dir "$W/state" >/dev/null 2>"$W/m.err" &
  else
    (cd "$W" && exec taskset -c 0 "$VENV/bin/locust" -f "$OLDPWD/bench/locustfile.py" --master \
      --master-bind-host 127.0.0.1 --master-bind-port "$mport" --web-host 127.0.0.1 --web-port "$wport" \
      >/dev/null 2>"$W/m.err") &
  fi
  pid=$!
  PIDS+=("$pid")
  wait_port "$wport" && wait_port "$mport" || { cat "$W/m.err" >&2; exit 1; }
  taskset -c 1 "$VENV/bin/python" bench/flood.py --port "$mport" --workers "$n" --seconds "$FLOOD_SECS" \
    >"$W/flood.json" &
  local f=$!
  sleep "$(python3 -c "print($FLOOD_SECS / 2)")"
  local c0 t0 c1 t1
  c0=$(cpu_s "$pid"); t0=$(date +%s.%N)
  sleep "$(python3 -c "print($FLOOD_SECS / 2 - 3)")"
  c1=$(cpu_s "$pid"); t1=$(date +%s.%N)
  local alive
  if [ "$kind" = cloudswarm ]; then
    alive=$(curl -s "http://127.0.0.1:$wport/workers" | python3 -c "import json,sys; print(sum(1 for w in json.load(sys.stdin) if not w['missing']))")
  else
    alive=$(curl -s "http://127.0.0.1:$wport/stats/requests" | python3 -c "import json,sys; print(sum(1 for w in json.load(sys.stdin)['workers'] if w['state'] != 'missing'))")
  fi
  wait $f
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  echo "$(python3 -c "print(round(($c1 - $c0) / ($t1 - $t0) * 100, 1))") $alive"
}

flood_part() {
  for n in $FLOOD_N; do
    read -r cs_cpu cs_alive <<<"$(flood_one cloudswarm "$n")"
    read -r lo_cpu lo_alive <<<"$(flood_one locust "$n")"
    echo "N=$n workers: cloudswarm master ${cs_cpu}% CPU, $cs_alive/$n alive; Locust master ${lo_cpu}% CPU, $lo_alive/$n alive;" \
      "cloudswarm/Locust CPU = $(python3 -c "print(round($cs_cpu / max($lo_cpu, 0.1), 3))")"
  done
}

case "${BENCH_ONLY:-}" in
  flood) flood_part ;;
  worker) worker_part ;;
  *) worker_part; flood_part ;;
esac
