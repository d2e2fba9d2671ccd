#!/usr/bin/env bash
# Build InfluxDB 2.x `influxd` (OSS server, v2 API + Flux) from the Go module
# proxy, with its Flux library (libflux, Rust) built from crates.io, into a
# per-machine cache outside the repo. Idempotent: a cached, working binary is
# reused at once.
#
# Usage: build_influxdb.sh [OUT_DIR]
#   OUT_DIR            default: $BTC_CACHE_DIR/influxdb/<version>
#   BTC_CACHE_DIR      default: $HOME/.cache/btc-pipeline
#   INFLUXDB_VERSION   default: 2.7.12 (with or without a leading "v")
#   BUILD_JOBS         default: min(nproc, 2)
#
# The last line on stdout is the path of the influxd binary. Progress goes to
# stderr; the full build log is OUT_DIR/build.log.
#
# Needs: go (>= the version in influxdb's go.mod; /usr/local/go/bin is tried),
# cargo/rustup with a stable toolchain (~/.cargo/bin is tried), gcc,
# pkg-config, flock. Go module cache and cargo registry stay in their default
# places (~/go/pkg/mod, ~/.cargo/registry) so a rebuild is faster.
set -euo pipefail

VERSION="${INFLUXDB_VERSION:-2.7.12}"
VERSION="${VERSION#v}"
CACHE_ROOT="${BTC_CACHE_DIR:-$HOME/.cache/btc-pipeline}"
OUT_DIR="${1:-$CACHE_ROOT/influxdb/$VERSION}"
BIN="$OUT_DIR/influxd"
LOG="$OUT_DIR/build.log"
MOD="github.com/influxdata/influxdb/v2"

log() { printf '[influxdb] %s\n' "$*" >&2; }

# A cached binary that runs is the whole answer.
binary_ok() { [[ -x "$BIN" ]] && "$BIN" version >/dev/null 2>&1; }
if binary_ok; then
  echo "$BIN"
  exit 0
fi

export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
for tool in go cargo gcc pkg-config flock; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing tool: $tool"; exit 1; }
done

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
BIN="$OUT_DIR/influxd"
LOG="$OUT_DIR/build.log"

# One build per output dir at a time; a second caller waits, then reuses.
exec 9>"$OUT_DIR/.build.lock"
if ! flock -n 9; then
  log "another build of $VERSION is running; waiting for it…"
  flock 9
fi
if binary_ok; then
  echo "$BIN"
  exit 0
fi

if [[ -n "${BUILD_JOBS:-}" ]]; then
  JOBS="$BUILD_JOBS"
else
  JOBS=$(nproc 2>/dev/null || echo 2)
  if (( JOBS > 2 )); then JOBS=2; fi
fi

# Work dir: under the cache, not in the repo. Kept after a failure (for the
# log and so a retry reuses compiled Rust deps), removed after success.
WORK="$CACHE_ROOT/influxdb/.build-$VERSION"
mkdir -p "$WORK"
: >"$LOG"
STEP="setup"
TMP_BIN=""
on_exit() {
  local rc=$?
  [[ -n "$TMP_BIN" ]] && rm -f "$TMP_BIN"
  if (( rc != 0 )); then
    log "FAILED at step: $STEP (exit $rc)"
    log "full log: $LOG"
    log "last log lines:"
    tail -n 20 "$LOG" 2>/dev/null | sed 's/^/    /' >&2 || true
  fi
}
trap on_exit EXIT

run() { # run a command, all output to the build log
  { printf '\n$ %s\n' "$*"; } >>"$LOG"
  "$@" >>"$LOG" 2>&1
}

start=$(date +%s)
{
  echo "influxd $VERSION build started $(date -u +%FT%TZ) on $(uname -srm)"
  echo "go: $(go version)"
  echo "cargo: $(RUSTUP_TOOLCHAIN=stable cargo --version 2>&1)"
  echo "work dir: $WORK  jobs: $JOBS"
} >>"$LOG"

# ---------------------------------------------------------------- 1. fetch
STEP="fetch module source"
log "fetching module source ($MOD@v$VERSION)…"
json="$WORK/influxdb-mod.json"
echo "\$ go mod download -json $MOD@v$VERSION" >>"$LOG"
rc=0; go mod download -json "$MOD@v$VERSION" >"$json" 2>>"$LOG" || rc=$?
cat "$json" >>"$LOG"
(( rc == 0 )) || exit "$rc"
SRC_MOD=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$json")
INFO=$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p' "$json")
[[ -d "$SRC_MOD" ]] || { echo "no module dir in: $(cat "$json")" >>"$LOG"; exit 1; }
FLUX_VERSION=$(awk '$1=="github.com/influxdata/flux" && $2 ~ /^v/ {print $2; exit}' "$SRC_MOD/go.mod")
[[ -n "$FLUX_VERSION" ]] || { echo "flux version not found in go.mod" >>"$LOG"; exit 1; }
go mod download -json "github.com/influxdata/flux@$FLUX_VERSION" >"$WORK/flux-mod.json" 2>>"$LOG"
FLUX_MOD=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$WORK/flux-mod.json")
[[ -d "$FLUX_MOD/libflux" ]] || { echo "no libflux in $FLUX_MOD" >>"$LOG"; exit 1; }
BUILD_DATE=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$INFO" 2>/dev/null || true)
echo "influxdb src: $SRC_MOD  flux: $FLUX_VERSION ($FLUX_MOD)  date: ${BUILD_DATE:-?}" >>"$LOG"

# Writable copies (module cache is read-only). The Rust target dir is kept
# across failed attempts so a retry does not recompile crates.
rm -rf "$WORK/src" "$WORK/flux" "$WORK/prefix"
cp -r "$SRC_MOD" "$WORK/src"
mkdir -p "$WORK/flux"
# libflux's build.rs reads ../../stdlib, so keep the module layout.
cp -r "$FLUX_MOD/libflux" "$FLUX_MOD/stdlib" "$WORK/flux/"
chmod -R u+w "$WORK/src" "$WORK/flux"

# ---------------------------------------------------------------- 2. libflux
STEP="build libflux (Rust)"
log "building libflux $FLUX_VERSION (Rust, several minutes)…"
LF="$WORK/flux/libflux"
# rust-toolchain.toml pins an old toolchain: use stable instead.
rm -f "$LF/rust-toolchain.toml"
# The `strict` feature turns new compiler warnings into errors: drop it.
sed -i 's/^default = \[\(.*\)"strict", *\(.*\)\]/default = [\1\2]/' "$LF/flux/Cargo.toml"
grep -q '"strict"' <(grep '^default' "$LF/flux/Cargo.toml") && { echo "could not drop strict feature" >>"$LOG"; exit 1; }
(
  cd "$LF"
  export RUSTUP_TOOLCHAIN=stable CARGO_TARGET_DIR="$WORK/cargo-target"
  run cargo build --release --locked -j "$JOBS" -p flux --lib
)
LIBA="$WORK/cargo-target/release/libflux.a"
[[ -f "$LIBA" ]] || { echo "libflux.a not produced" >>"$LOG"; exit 1; }

# Private prefix with only the static lib, plus a flux.pc for cgo's
# `#cgo pkg-config: flux`. The lib name carries a content hash (as
# influxdata's pkg-config wrapper does) so Go's build cache never links a
# stale libflux.
LIBHASH=$(sha256sum "$LIBA" | cut -c1-12)
P="$WORK/prefix"
mkdir -p "$P/lib/pkgconfig" "$P/include/influxdata"
cp "$LIBA" "$P/lib/libflux-$LIBHASH.a"
cp "$LF/include/influxdata/flux.h" "$P/include/influxdata/"
cat >"$P/lib/pkgconfig/flux.pc" <<EOF
prefix=$P
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: flux
Description: Flux language library (libflux, static)
Version: ${FLUX_VERSION#v}
Cflags: -I\${includedir}
Libs: -L\${libdir} -lflux-$LIBHASH -ldl -lpthread -lm
EOF
cat "$P/lib/pkgconfig/flux.pc" >>"$LOG"

# ---------------------------------------------------------------- 3. influxd
STEP="build influxd (Go)"
log "building influxd (Go)…"
TMP_BIN="$OUT_DIR/.influxd.tmp.$$"
(
  cd "$WORK/src"
  export CGO_ENABLED=1 PKG_CONFIG=pkg-config PKG_CONFIG_PATH="$P/lib/pkgconfig"
  unset GOFLAGS
  # Same tags as upstream's GNUmakefile, minus `assets` (no UI).
  run go build -p "$JOBS" -trimpath \
    -tags sqlite_foreign_keys,sqlite_json \
    -ldflags "-s -w -X main.version=v$VERSION -X main.commit=modproxy -X main.date=${BUILD_DATE:-unknown}" \
    -o "$TMP_BIN" ./cmd/influxd
)

STEP="check built binary"
run "$TMP_BIN" version
mv -f "$TMP_BIN" "$BIN"
TMP_BIN=""

STEP="clean up"
rm -rf "$WORK"
echo "build finished in $(( $(date +%s) - start ))s; binary $(du -h "$BIN" | cut -f1)" >>"$LOG"
log "done in $(( $(date +%s) - start ))s: $BIN"
echo "$BIN"
