#!/usr/bin/env bash
# Runs every check and test: installs what the tests need (moto into the
# project venv, Chromium, nginx), then cargo fmt, clippy, the unit and
# integration tests (which start their own moto servers, dashboards and
# browsers on free loopback ports), and the CloudFormation checks.
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
echo "== CloudFormation: cfn-lint, Eucalyptus resource types, bootstrap render test"
scripts/check-cloudformation.sh
