#!/usr/bin/env bash
# Runs every check and test: installs what the tests need (moto into the
# project venv), then cargo fmt, clippy and the unit and integration tests
# (which start their own moto servers on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MOTO_SERVER=${CLOUDSWARM_VENV:-$PWD/.venv}/bin/moto_server
export S3S_FS=${CLOUDSWARM_TOOLS:-$PWD/.tools}/bin/s3s-fs
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets --no-fail-fast
