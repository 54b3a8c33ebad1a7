#!/usr/bin/env bash
# FreeRADIUS 3.2 peer: accounting with the detail module only, on 127.0.0.1:18140, driven
# by the same `ratel bench radius` generator. Not run by CI. Needs root for apt.
# Note: the detail module does not fsync per request, so its acknowledgements are not
# durable the way ratel's are.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v freeradius >/dev/null || apt-get install -y -q freeradius >/dev/null
service freeradius stop >/dev/null 2>&1 || true
FR=${FR_DIR:-/tmp/ratel-freeradius}
rm -rf "$FR" && cp -a /etc/freeradius/3.0 "$FR"
rm -f "$FR"/sites-enabled/inner-tunnel "$FR"/mods-enabled/{eap,mschap,ntlm_auth,chap,pap,digest}
cat > "$FR/sites-enabled/default" <<'CONF'
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
	detail
}
}
CONF
printf 'client localhost {\n\tipaddr = 127.0.0.1\n\tsecret = testing123\n}\n' > "$FR/clients.conf"
sed -i "s|^\s*logdir = .*|logdir = $FR/log|; s|^\s*radacctdir = .*|radacctdir = $FR/radacct|; s|^\s*run_dir = .*|run_dir = $FR/run|; s/^\tuser = freerad/#&/; s/^\tgroup = freerad/#&/" "$FR/radiusd.conf"
mkdir -p "$FR/log" "$FR/radacct" "$FR/run"
freeradius -d "$FR" -f -lstdout > "$FR/run.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 2
cargo build --release --quiet
target/release/ratel bench radius --server 127.0.0.1:18140 --secret testing123 --sessions 10000 --in-flight 512 --duration 20 --json
target/release/ratel bench radius --sessions 10000 --in-flight 512 --duration 20 --json
