#!/usr/bin/env bash
# Runs moto's server (the local EC2/S3 cloud) on 127.0.0.1:${MOTO_PORT:-5000}
# in the foreground, installing it first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MOTO_ALLOW_NONEXISTENT_REGION=true
exec .venv/bin/moto_server -H 127.0.0.1 -p "${MOTO_PORT:-5000}"
