#!/usr/bin/env bash
# The main job: starts the local cloud (moto on 127.0.0.1:${MOTO_PORT:-5000})
# unless something already listens there, then serves the dashboard against it
# on http://127.0.0.1:${PORT:-8089}/ until Ctrl-C (which stops the swarm and
# cleans up). Extra arguments go to `cloudswarm serve`.
#   HEADLESS=1 PROFILE=profiles/storage.toml USERS=20 RATE=5 RUN_TIME=2m scripts/start.sh
#   runs one swarm without the dashboard instead, printing status lines and the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_PORT=${MOTO_PORT:-5000}
scripts/setup.sh
# Built with the examples, so the dev-dependencies' features are unified in
# as in the test command's build: after one, the other compiles only cloudswarm.
cargo build --quiet --bin cloudswarm --examples
BIN=${CARGO_TARGET_DIR:-target}/debug/cloudswarm
if ! (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; then
  echo "start: moto on 127.0.0.1:$MOTO_PORT"
  MOTO_ALLOW_NONEXISTENT_REGION=true "${CLOUDSWARM_VENV:-.venv}/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
  MOTO_PID=$!
  trap 'kill $MOTO_PID 2>/dev/null' EXIT
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.1; done
fi
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
target=(--ec2-endpoint "http://127.0.0.1:$MOTO_PORT" --s3-endpoint "http://127.0.0.1:$MOTO_PORT" --region us-east-1)
if [ -n "${HEADLESS:-}" ]; then
  args=(run -f "${PROFILE:-profiles/burn-in.toml}" -u "${USERS:-10}" -r "${RATE:-2}" "${target[@]}")
  [ -n "${RUN_TIME:-}" ] && args+=(-t "$RUN_TIME")
  "$BIN" "${args[@]}" "$@"
else
  "$BIN" serve --bind "127.0.0.1:${PORT:-8089}" "${target[@]}" "$@"
fi
