#!/usr/bin/env bash
# Installs what cloudswarm's local cloud and tests need, skipping what is there:
#   scripts/setup.sh            moto (PyPI moto[server]) and locust into the project venv .venv, nginx,
#                               openssl, chromium, chromium-driver and prometheus (Debian), s3s-fs
#                               (crates.io) into .tools
#   scripts/setup.sh bench      also boto3 (PyPI) for the benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLOUDSWARM_VENV:-$PWD/.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating venv $VENV"
  python3 -m venv "$VENV"
fi
pip_need() { # pip_need MODULE SPEC...
  local mod=$1; shift
  "$VENV/bin/python" -c "import $mod" 2>/dev/null || {
    echo "setup: pip install $*"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$@"
  }
}
pip_need moto 'moto[server]'
[ -x "$VENV/bin/moto_server" ] || "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]'
# The cluster tests run a stock Locust master and Locust workers next to
# cloudswarm's (the version locust-protocol.md was checked against).
pip_need locust 'locust==2.47.0'

apt_need() { # apt_need COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$cmd" ] && return 0
  echo "setup: apt-get install $*"
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The tests put nginx in front of moto (Eucalyptus-style /services/* paths).
apt_need nginx nginx
apt_need openssl openssl
# The dashboard's browser tests drive headless Chromium through chromedriver.
apt_need chromium chromium
apt_need chromedriver chromium-driver
# The metrics test scrapes cloudswarm with a real Prometheus.
apt_need prometheus prometheus

# An S3 server that checks SigV4 signatures, for the wrong-credentials tests.
TOOLS=${CLOUDSWARM_TOOLS:-$PWD/.tools}
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  echo "setup: cargo install s3s-fs (S3 server with signature checks) into $TOOLS"
  cargo install --quiet --locked --root "$TOOLS" s3s-fs@0.14.1 --features binary
fi

for extra in "$@"; do
  case "$extra" in
    bench)
      pip_need boto3 boto3
      ;;
    *) echo "setup: unknown extra '$extra'" >&2; exit 2 ;;
  esac
done
