#!/usr/bin/env bash
# RADIUS accounting by requests in flight: `ratel serve`, FreeRADIUS 3.2 + detail and the
# durable-ack ceiling (../shared/tools/ceiling), driven by the same `ratel bench radius`
# generator, the three servers back to back at each point (same run, same machine).
# Writes benches/results/radius-sweep.csv and, with plot.py, radius-sweep.png.
# Not run by CI (minutes of load). Needs root for apt (FreeRADIUS).
#   benches/peers/sweep.sh [SECONDS] [IN_FLIGHT_LIST] [USERS]   (RATEL=binary to skip the build)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-8}"
POINTS="${2:-1,8,64,512}"
USERS="${3:-100000}"
SESSIONS=20000
OUT="${RATEL_RESULTS:-benches/results}"
WORK="${RATEL_BENCH_DIR:-/tmp/ratel-sweep}"
VENV="${RATEL_BENCH_VENV:-$HOME/.cache/ratel-bench-venv}"
mkdir -p "$OUT" "$WORK"
CSV="$OUT/radius-sweep.csv"
rm -f "$CSV"
R=${RATEL:-$PWD/target/release/ratel}
[ -n "${RATEL:-}" ] || cargo build --release --quiet
command -v freeradius >/dev/null || apt-get install -y -q freeradius >/dev/null

# Peers, started once and stopped by pid.
FR_SERVE_ONLY=1 FR_DIR="$WORK/freeradius" benches/peers/freeradius.sh detail > "$WORK/freeradius.out" 2>&1 &
FR=$!
CEIL=""
TOOL=../shared/tools/ceiling
if [ -d "$TOOL" ]; then
	rm -rf "$WORK/ceiling-src" && cp -r "$TOOL" "$WORK/ceiling-src" && chmod -R u+w "$WORK/ceiling-src"
	CARGO_TARGET_DIR="$WORK/ceiling-target" cargo build --release --quiet --manifest-path "$WORK/ceiling-src/Cargo.toml"
	rm -f "$WORK/acct.log"
	"$WORK/ceiling-target/release/ceiling" serve --port 18130 --variant a --log "$WORK/acct.log" --max-secs 3600 > "$WORK/ceiling.out" 2>&1 &
	CEIL=$!
fi
trap 'kill $FR ${CEIL} 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q ready "$WORK/freeradius.out" && break; sleep 0.2; done
grep -q ready "$WORK/freeradius.out" || { cat "$WORK/freeradius.out" >&2; exit 1; }

common=(--users "$USERS" --sessions "$SESSIONS" --duration "$SECS" --csv "$CSV")
for f in ${POINTS//,/ }; do
	"$R" bench radius "${common[@]}" --in-flight "$f" --dir "$WORK/ratel" | tail -3
	"$R" bench radius "${common[@]}" --in-flight "$f" --server 127.0.0.1:18140 --secret testing123 --label "FreeRADIUS+detail" | tail -2
	if [ -n "$CEIL" ]; then
		"$R" bench radius "${common[@]}" --in-flight "$f" --server 127.0.0.1:18130 --secret testing123 --label ceiling | tail -2
	fi
done
cat "$CSV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check matplotlib
"$VENV/bin/python" benches/peers/plot.py "$CSV" "$OUT/radius-sweep.png"
