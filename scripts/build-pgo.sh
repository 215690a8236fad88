#!/usr/bin/env bash
# Profile-guided, post-link-optimised release build of cloudswarm and of the
# benchmark's bare SDK loop (both get the same treatment, so the benchmark
# compares like with like). Four steps:
#   1. an instrumented release build (-Cprofile-generate) into $PGO_DIR/gen;
#   2. training on loopback only: bench-s3-put against a canned S3 endpoint
#      (nginx), burn-in.toml against moto (the EC2 paths), and the bare loop;
#      llvm-profdata merges the profiles;
#   3. the release build that uses them (-Cprofile-use), linked with its
#      relocations kept, into $PGO_DIR/use;
#   4. BOLT: the binaries of step 3 are instrumented, trained again the same
#      way, and laid out anew by where they spend their time (hot code
#      together, cold code split off), into $PGO_DIR/out.
# About 1.5 hours from nothing on 2 cores. Needs llvm-profdata and llvm-bolt of
# rustc's LLVM version (Debian bookworm-security has llvm-22 and bolt-22 for
# rustc 1.95; the script installs them with apt-get when it can). Without
# BOLT it stops after step 3 and says so.
#   scripts/build-pgo.sh                  PGO_DIR defaults to target/pgo
#   BENCH_BIN=target/pgo/out scripts/bench.sh
#   CLOUDSWARM_BIN=target/pgo/out/cloudswarm scripts/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PGO_DIR=$(realpath -m "${PGO_DIR:-target/pgo}")
VENV=${CLOUDSWARM_VENV:-$PWD/.venv}
scripts/setup.sh bench

MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
# tool_for NAME DEBIAN-PACKAGE: rustup's copy, else NAME-$MAJOR (installed
# from Debian when it has it), else an older one that still reads rustc's
# formats (llvm-profdata 19 and later read LLVM 22's raw profiles).
tool_for() {
  local name=$1 pkg=$2 cand
  cand="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/$name"
  [ -x "$cand" ] && { echo "$cand"; return; }
  if ! command -v "$name-$MAJOR" >/dev/null && apt-cache show "$pkg-$MAJOR" >/dev/null 2>&1; then
    echo "build-pgo: apt-get install $pkg-$MAJOR (for $name)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg-$MAJOR" >/dev/null
  fi
  for cand in $(seq -f "$name-%g" "$MAJOR" -1 19); do
    command -v "$cand" && return
  done
  true
}
PROFDATA=$(tool_for llvm-profdata llvm)
[ -n "$PROFDATA" ] || { echo "build-pgo: no llvm-profdata of LLVM 19..$MAJOR: install rustup's llvm-tools or Debian's llvm-$MAJOR" >&2; exit 2; }
BOLT=$(tool_for llvm-bolt bolt)
MERGE_FDATA=${BOLT:+$(dirname "$(readlink -f "$BOLT")")/merge-fdata}
echo "build-pgo: $PROFDATA and ${BOLT:-no llvm-bolt} for rustc's LLVM $MAJOR"

# Stale profiles from an earlier build would mix into this one.
rm -rf "$PGO_DIR/data" "$PGO_DIR/merged.profdata" "$PGO_DIR/bolt" "$PGO_DIR/out"
mkdir -p "$PGO_DIR/data"
# --target keeps RUSTFLAGS off build scripts and proc macros (they neither
# need the profile nor should write into it).
HOST=$(rustc -vV | sed -n 's/^host: //p')
# One binary at a time: the instrumented fat-LTO link of each needs ~12 GB,
# and two at once thrash a 24 GB machine. The example first, then both: the
# second call finds the example built and links only cloudswarm, and both
# calls build the dependencies with the same features (an example brings in
# the dev-dependencies' features; `--bin` alone would rebuild them all).
build() { # TARGET-DIR RUSTFLAGS
  local t
  for t in "" "--bin cloudswarm"; do
    # shellcheck disable=SC2086 # t is two words or none on purpose
    RUSTFLAGS="$2" CARGO_TARGET_DIR="$1" cargo build --release --locked --quiet --target "$HOST" $t --example sdk_put_loop
  done
}
echo "build-pgo: 1/4 instrumented build into $PGO_DIR/gen"
build "$PGO_DIR/gen" "-Cprofile-generate=$PGO_DIR/data"

W=$(mktemp -d /tmp/cloudswarm-pgo.XXXXXX)
MOTO=
trap 'for p in ${CANNED_PID:-} $MOTO; do kill $p; wait $p; done 2>/dev/null; rm -rf "$W"' EXIT
. scripts/lib/canned-s3.sh
canned_s3_start "$W"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOTO_ALLOW_NONEXISTENT_REGION=true "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$W/moto.log" 2>&1 &
MOTO=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
run() { # NAME COMMAND...
  local name=$1; shift
  "$@" >"$W/$name.out" 2>"$W/$name.err" || { echo "build-pgo: training run $name failed:" >&2; tail -5 "$W/$name.err" >&2; exit 1; }
}
train() { # CLOUDSWARM SDK_PUT_LOOP: the same work for every profile
  run s3-put taskset -c 0 "$1" run -f profiles/bench-s3-put.toml -u 32 -r 100000 -t 15s \
    --s3-endpoint "$CANNED_URL" --state-dir "$W/state" --status-every 0 --keep-resources
  run burn-in taskset -c 0 "$1" run -f profiles/burn-in.toml -u 20 -r 20 -t 20s \
    --ec2-endpoint "http://127.0.0.1:$MOTO_PORT" --s3-endpoint "http://127.0.0.1:$MOTO_PORT" \
    --state-dir "$W/state" --status-every 0
  run loop-tuned taskset -c 0 "$2" "$CANNED_URL" 32 15 tuned
  run loop-defaults taskset -c 0 "$2" "$CANNED_URL" 32 5 defaults
}

echo "build-pgo: 2/4 training (loopback only) and merging the profiles"
train "$PGO_DIR/gen/$HOST/release/cloudswarm" "$PGO_DIR/gen/$HOST/release/examples/sdk_put_loop"
ls "$PGO_DIR"/data/*.profraw >/dev/null 2>&1 || { echo "build-pgo: the training wrote no profiles" >&2; exit 1; }
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR"/data/*.profraw \
  || { echo "build-pgo: $PROFDATA cannot read rustc's profiles (LLVM $MAJOR): use llvm-profdata-$MAJOR" >&2; exit 2; }

echo "build-pgo: 3/4 optimised build into $PGO_DIR/use"
build "$PGO_DIR/use" "-Cprofile-use=$PGO_DIR/merged.profdata -Clink-arg=-Wl,--emit-relocs"
USE=$PGO_DIR/use/$HOST/release
if [ -z "$BOLT" ]; then
  echo "build-pgo: no llvm-bolt: done without step 4: $USE/cloudswarm (and examples/sdk_put_loop)"
  echo "  benchmark: BENCH_BIN=$USE scripts/bench.sh"
  exit 0
fi

echo "build-pgo: 4/4 BOLT into $PGO_DIR/out"
mkdir -p "$PGO_DIR/bolt" "$PGO_DIR/out/examples"
for b in cloudswarm examples/sdk_put_loop; do
  n=$(basename "$b")
  "$BOLT" "$USE/$b" -instrument -instrumentation-file="$PGO_DIR/bolt/$n.fdata" \
    -instrumentation-file-append-pid -o "$PGO_DIR/bolt/$n.inst" >"$W/bolt-$n.log" 2>&1 \
    || { cat "$W/bolt-$n.log" >&2; exit 1; }
done
train "$PGO_DIR/bolt/cloudswarm.inst" "$PGO_DIR/bolt/sdk_put_loop.inst"
for b in cloudswarm examples/sdk_put_loop; do
  n=$(basename "$b")
  "$MERGE_FDATA" "$PGO_DIR"/bolt/"$n".fdata.* >"$PGO_DIR/bolt/$n.fdata" 2>"$W/merge-$n.log" \
    || { cat "$W/merge-$n.log" >&2; exit 1; }
  "$BOLT" "$USE/$b" -o "$PGO_DIR/out/$b" -data="$PGO_DIR/bolt/$n.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=all -use-gnu-stack -dyno-stats >"$W/bolt-$n.log" 2>&1 \
    || { cat "$W/bolt-$n.log" >&2; exit 1; }
done
echo "build-pgo: done: $PGO_DIR/out/cloudswarm (and examples/sdk_put_loop)"
echo "  benchmark: BENCH_BIN=$PGO_DIR/out scripts/bench.sh"
