#!/usr/bin/env bash
# The physical ceiling of a durable accounting ack on this machine (../shared/tools/ceiling:
# drain the socket, verify, append 64 bytes per packet, one fdatasync per batch, answer),
# driven by the same `ratel bench radius` generator as ratel and FreeRADIUS. Started and
# stopped by pid; prints the generator's JSON line last. Not run by CI.
#   benches/peers/ceiling.sh [SESSIONS] [IN_FLIGHT] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SESSIONS="${1:-10000}"
IN_FLIGHT="${2:-64}"
SECONDS_="${3:-20}"
TOOL=../shared/tools/ceiling
WORK=${CEILING_DIR:-/tmp/ratel-ceiling}
mkdir -p "$WORK"
# The tool's folder is read-only (cargo writes a Cargo.lock): build a copy of it.
rm -rf "$WORK/src" && cp -r "$TOOL" "$WORK/src" && chmod -R u+w "$WORK/src"
CARGO_TARGET_DIR="$WORK/target" cargo build --release --quiet --manifest-path "$WORK/src/Cargo.toml"
rm -f "$WORK/acct.log"
"$WORK/target/release/ceiling" serve --port 18130 --variant a --log "$WORK/acct.log" > "$WORK/run.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 0.5
kill -0 $PID 2>/dev/null || { cat "$WORK/run.log" >&2; exit 1; }
R=${RATEL:-target/release/ratel}
[ -n "${RATEL:-}" ] || cargo build --release --quiet
"$R" bench radius --server 127.0.0.1:18130 --secret testing123 \
	--sessions "$SESSIONS" --in-flight "$IN_FLIGHT" --duration "$SECONDS_" --json
