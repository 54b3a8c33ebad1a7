#!/usr/bin/env bash
# FreeRADIUS 3.2 peer for `ratel bench radius`: accounting on 127.0.0.1:18140 with either
# the detail module (MODE=detail) or rlm_sql on SQLite (MODE=sqlite, the stock schema and
# queries, the stock SQLite settings: rollback journal, synchronous=FULL). Started and
# stopped by pid; prints the generator's JSON line last. Not run by CI. Needs root for apt.
#   benches/peers/freeradius.sh detail|sqlite [SESSIONS] [IN_FLIGHT] [SECONDS]
# With FR_SERVE_ONLY=1 it only starts the server and waits (stop it by its pid).
# Note: the detail module does not fsync per request, so its acknowledgements are not
# durable the way ratel's are; rlm_sql/SQLite commits (and fsyncs) every statement.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE="${1:?detail or sqlite}"
SESSIONS="${2:-10000}"
IN_FLIGHT="${3:-512}"
SECONDS_="${4:-20}"
command -v freeradius >/dev/null || apt-get install -y -q freeradius >/dev/null
service freeradius stop >/dev/null 2>&1 || true
FR=${FR_DIR:-/tmp/ratel-freeradius-$MODE}
rm -rf "$FR" && cp -a /etc/freeradius/3.0 "$FR"
rm -f "$FR"/sites-enabled/inner-tunnel "$FR"/mods-enabled/{eap,mschap,ntlm_auth,chap,pap,digest}
case "$MODE" in
detail) ACCT=detail ;;
sqlite)
	ACCT=sql
	sed -e 's/driver = "rlm_sql_null"/driver = "rlm_sql_sqlite"/' \
		-e "s|filename = \"/tmp/freeradius.db\"|filename = \"$FR/radacct.db\"|" \
		"$FR/mods-available/sql" > "$FR/mods-enabled/sql"
	;;
*) echo "mode must be detail or sqlite" >&2; exit 2 ;;
esac
cat > "$FR/sites-enabled/default" <<CONF
server default {
listen {
	type = acct
	ipaddr = 127.0.0.1
	port = 18140
}
authorize {
	preprocess
}
preacct {
	preprocess
	acct_unique
}
accounting {
	$ACCT
}
}
CONF
printf 'client localhost {\n\tipaddr = 127.0.0.1\n\tsecret = testing123\n}\n' > "$FR/clients.conf"
sed -i "s|^\s*logdir = .*|logdir = $FR/log|; s|^\s*radacctdir = .*|radacctdir = $FR/radacct|; s|^\s*run_dir = .*|run_dir = $FR/run|; s/^\tuser = freerad/#&/; s/^\tgroup = freerad/#&/" "$FR/radiusd.conf"
mkdir -p "$FR/log" "$FR/radacct" "$FR/run"
freeradius -d "$FR" -f -lstdout > "$FR/run.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	grep -q "Ready to process requests" "$FR/run.log" && break
	kill -0 $PID 2>/dev/null || { cat "$FR/run.log" >&2; exit 1; }
	sleep 0.2
done
if [ -n "${FR_SERVE_ONLY:-}" ]; then
	# Only serve (benches/peers/sweep.sh drives it): until this script is killed.
	echo "FreeRADIUS ($MODE) ready on 127.0.0.1:18140"
	wait $PID
	exit 0
fi
R=${RATEL:-target/release/ratel}
[ -n "${RATEL:-}" ] || cargo build --release --quiet
"$R" bench radius --server 127.0.0.1:18140 --secret testing123 \
	--sessions "$SESSIONS" --in-flight "$IN_FLIGHT" --duration "$SECONDS_" --json
if [ "$MODE" = sqlite ]; then
	echo "radacct rows: $(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from radacct').fetchone()[0])" "$FR/radacct.db")"
fi
