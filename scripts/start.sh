#!/usr/bin/env bash
# The main job: starts the local cloud (moto on 127.0.0.1:${MOTO_PORT:-5000})
# unless something already listens there, then runs a swarm against it until
# Ctrl-C (or RUN_TIME), printing status lines and the summary.
#   PROFILE=profiles/storage.toml USERS=20 RATE=5 RUN_TIME=2m scripts/start.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${MOTO_PORT:-5000}
scripts/setup.sh
cargo build --quiet
if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "start: moto on 127.0.0.1:$PORT"
  MOTO_ALLOW_NONEXISTENT_REGION=true .venv/bin/moto_server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
  MOTO_PID=$!
  trap 'kill $MOTO_PID 2>/dev/null' EXIT
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
fi
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
args=(run -f "${PROFILE:-profiles/burn-in.toml}" -u "${USERS:-10}" -r "${RATE:-2}"
      --ec2-endpoint "http://127.0.0.1:$PORT" --s3-endpoint "http://127.0.0.1:$PORT" --region us-east-1)
[ -n "${RUN_TIME:-}" ] && args+=(-t "$RUN_TIME")
./target/debug/cloudswarm "${args[@]}" "$@"
