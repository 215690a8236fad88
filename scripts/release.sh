#!/usr/bin/env bash
# Builds the release tarball dist/cloudswarm-<version>-linux-x86_64.tar.gz and its .sha256.
# One top directory cloudswarm-<version>/ holding bin/cloudswarm, static/, profiles/*.toml,
# grafana/ (dashboards, provisioning, prometheus.yml) and cloudformation/ (the template and
# bootstrap.sh, which the stack's instances run from the tarball).
#   scripts/release.sh                                   cargo build --release --locked, then package
#   CLOUDSWARM_BIN=/path/to/cloudswarm scripts/release.sh   package that binary, no build
# CLOUDSWARM_VERSION overrides the version (default: Cargo.toml's), CLOUDSWARM_DIST the output
# directory (default dist/). The tarball is reproducible (sorted, root-owned, fixed mtime:
# SOURCE_DATE_EPOCH, else the last commit's time).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${CLOUDSWARM_VERSION:-$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)}
[[ $VERSION =~ ^[0-9A-Za-z._+-]+$ ]] || { echo "release: bad version '$VERSION'" >&2; exit 2; }
DIST=${CLOUDSWARM_DIST:-$PWD/dist}
NAME=cloudswarm-$VERSION-linux-x86_64.tar.gz

if [ -n "${CLOUDSWARM_BIN:-}" ]; then
  BIN=$CLOUDSWARM_BIN
else
  echo "release: cargo build --release --locked" >&2
  cargo build --release --locked --bin cloudswarm
  BIN=${CARGO_TARGET_DIR:-target}/release/cloudswarm
fi
[ -x "$BIN" ] || { echo "release: $BIN is not an executable" >&2; exit 2; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
TOP=$STAGE/cloudswarm-$VERSION
mkdir -p "$TOP/bin" "$TOP/profiles" "$TOP/cloudformation" "$DIST"
cp "$BIN" "$TOP/bin/cloudswarm"
cp -R static "$TOP/static"
cp profiles/*.toml "$TOP/profiles/"
[ ! -d grafana ] || cp -R grafana "$TOP/grafana"
cp cloudformation/bootstrap.sh cloudformation/*.json "$TOP/cloudformation/"
for f in grafana/dashboards/cloudswarm.json grafana/provisioning/datasources/prometheus.yml \
  grafana/provisioning/dashboards/cloudswarm.yml grafana/prometheus.yml; do
  [ -f "$TOP/$f" ] || echo "release: warning: $f is missing from the release" >&2
done
chmod -R u=rwX,go=rX "$TOP"
chmod 0755 "$TOP/bin/cloudswarm" "$TOP/cloudformation/bootstrap.sh"

EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
  -C "$STAGE" -cf - "cloudswarm-$VERSION" | gzip -n -9 >"$DIST/$NAME.part"
mv -f "$DIST/$NAME.part" "$DIST/$NAME"
(cd "$DIST" && sha256sum "$NAME" >"$NAME.sha256")
echo "$DIST/$NAME"
