#!/usr/bin/env bash
# Issue 21: a REAL FreeRADIUS 3.2 (the Debian package) as the RADIUS proxy in front of
# `ratel serve`, configured as docs/freeradius-proxy.md says (home_server + pool + realm,
# Status-Server checks, the detail writer + reader that buffers accounting through an
# outage). radclient plays two NASes behind the proxy that reuse one Acct-Session-Id,
# retransmits, replays, an Accounting-On from one NAS, an outage of ratel longer than the
# proxy's response window, and a Status-Server straight to ratel; then the exact credits,
# the live sessions and the report are checked through ratel's JSON-RPC API, and the ledger
# with python's sqlite3 after ratel stopped. Last, FreeRADIUS checks the configuration
# blocks of docs/freeradius-proxy.md as they stand (`freeradius -C`).
#   .ci/freeradius_proxy.sh [path/to/ratel]
# Every wait is bounded; every process started here is killed on exit.
set -euo pipefail
RATEL="$(realpath "${1:-target/debug/ratel}")"
ROOT="$(pwd)"
if ! command -v freeradius >/dev/null 2>&1 || ! command -v radclient >/dev/null 2>&1; then
	(apt-get install -y -q freeradius freeradius-utils ||
		(apt-get update -q && apt-get install -y -q freeradius freeradius-utils)) >/dev/null
fi
WORK="$(mktemp -d)"
SERVE_PID=""
FR_PID=""
cleanup() {
	for p in $FR_PID $SERVE_PID; do
		kill -CONT "$p" 2>/dev/null || true
		kill "$p" 2>/dev/null || true
	done
	for p in $FR_PID $SERVE_PID; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	echo "--- ratel serve (last lines)" >&2
	tail -n 40 "$WORK/serve.log" >&2 || true
	echo "--- freeradius (last lines)" >&2
	tail -n 120 "$WORK/fr.log" >&2 || true
	exit 1
}
cd "$WORK"
free_udp_port() {
	python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
FR_ACCT=$(free_udp_port)
FR_AUTH=$(free_udp_port)
FR_COA=$(free_udp_port)
NAS_SECRET=nas-secret     # NAS (radclient) <-> FreeRADIUS
RATEL_SECRET=ratel-secret # FreeRADIUS <-> ratel

# --- ratel: the proxy (127.0.0.1) is its one client.
cat >ratel.toml <<CFG
[radius]
listen = "127.0.0.1:0"
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[cdr]
spool = "data/spool"
[[admin]]
name = "system"
password = "sys"
[[nas]]
name = "fr-proxy"
ip = "127.0.0.1"
secret = "$RATEL_SECRET"
coa_server = "127.0.0.1:$FR_COA"
[[charge_rule]]
name = "all"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "00:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[group]]
name = "g"
charge_rules = ["all"]
decimals = 4
rounding = "up"
CFG
printf 'username,password,group,credit\nalice,pw,g,10\nbob,pw,g,10\ncarol,pw,g,10\n' >users.csv
"$RATEL" users import --config ratel.toml users.csv >/dev/null
RATEL_LOG=info "$RATEL" serve --config ratel.toml >serve.out 2>serve.log &
SERVE_PID=$!
RATEL_ADDR=""
API=""
for _ in $(seq 100); do
	RATEL_ADDR=$(sed -n 's|.*RADIUS accounting on udp://\([0-9.:]*\).*|\1|p' serve.out | head -n1)
	API=$(sed -n 's|.*JSON-RPC API on \(http://[0-9.:]*/\).*|\1|p' serve.out | head -n1)
	[ -n "$RATEL_ADDR" ] && [ -n "$API" ] && break
	kill -0 "$SERVE_PID" 2>/dev/null || fail "ratel serve exited"
	sleep 0.1
done
[ -n "$RATEL_ADDR" ] && [ -n "$API" ] || fail "ratel serve did not print its addresses"
RATEL_PORT=${RATEL_ADDR##*:}
echo "ratel serve: radius $RATEL_ADDR, api $API"

# --- FreeRADIUS: a generated raddb from the Debian one, the proxy of docs/freeradius-proxy.md.
FR="$WORK/raddb"
cp -a /etc/freeradius/3.0 "$FR"
# Only the modules this proxy uses: `always` (ok, fail, ...) and the detail writer below.
find "$FR/sites-enabled" "$FR/mods-enabled" -mindepth 1 ! -name always -delete
sed -i "s|^\s*logdir = .*|logdir = $WORK/frlog|; s|^\s*run_dir = .*|run_dir = $WORK/frrun|; s/^\tuser = freerad/#&/; s/^\tgroup = freerad/#&/" "$FR/radiusd.conf"
mkdir -p "$WORK/frlog/radacct/ratel" "$WORK/frrun"
cat >"$FR/clients.conf" <<CONF
client nas {
	ipaddr = 127.0.0.1
	secret = $NAS_SECRET
}
CONF
cat >"$FR/proxy.conf" <<CONF
proxy server {
	default_fallback = no
}
home_server ratel-acct {
	type = acct
	ipaddr = 127.0.0.1
	port = $RATEL_PORT
	secret = $RATEL_SECRET
	response_window = 3
	zombie_period = 10
	status_check = status-server
	check_interval = 6
	check_timeout = 4
	num_answers_to_alive = 1
}
home_server ratel-auth {
	type = auth
	ipaddr = 127.0.0.1
	port = 1
	secret = $RATEL_SECRET
	response_window = 5
	status_check = status-server
	check_interval = 30
	check_timeout = 4
}
home_server_pool ratel-acct-pool {
	type = fail-over
	home_server = ratel-acct
	virtual_server = ratel-acct-buffer
}
home_server_pool ratel-auth-pool {
	type = fail-over
	home_server = ratel-auth
}
realm ratel {
	acct_pool = ratel-acct-pool
	auth_pool = ratel-auth-pool
	nostrip
}
CONF
cat >"$FR/mods-enabled/ratel_detail" <<'CONF'
detail ratel_detail {
	filename = ${radacctdir}/ratel/detail-%Y%m%d:%H
	escape_filenames = no
	permissions = 0600
	header = "%t"
	locking = yes
}
CONF
cat >"$FR/sites-enabled/ratel-proxy" <<CONF
server default {
	listen {
		type = acct
		ipaddr = 127.0.0.1
		port = $FR_ACCT
	}
	listen {
		type = auth
		ipaddr = 127.0.0.1
		port = $FR_AUTH
	}
	authorize {
		update control {
			&Proxy-To-Realm := "ratel"
		}
	}
	authenticate {
	}
	preacct {
		update control {
			&Proxy-To-Realm := "ratel"
		}
	}
	accounting {
		ok
	}
}
server ratel-acct-buffer {
	pre-proxy {
	}
	post-proxy {
		Post-Proxy-Type Fail-Accounting {
			ratel_detail
		}
	}
	listen {
		type = detail
		filename = "\${radacctdir}/ratel/detail-*:*"
		load_factor = 10
		poll_interval = 1
		retry_interval = 2
	}
	accounting {
		update control {
			&Proxy-To-Realm := "ratel"
		}
	}
}
server ratel-coa {
	listen {
		type = coa
		ipaddr = 127.0.0.1
		port = $FR_COA
	}
	recv-coa {
		update control {
			&Packet-DST-IP-Address := &NAS-IP-Address
		}
		ok
	}
	send-coa {
		ok
	}
}
CONF
freeradius -X -d "$FR" >"$WORK/fr.log" 2>&1 &
FR_PID=$!
for _ in $(seq 100); do
	grep -q "Ready to process requests" "$WORK/fr.log" && break
	kill -0 "$FR_PID" 2>/dev/null || fail "freeradius exited at start"
	sleep 0.2
done
grep -q "Ready to process requests" "$WORK/fr.log" || fail "freeradius not ready in 20 s"
echo "freeradius $(freeradius -v | sed -n 's/.*Version \([0-9.]*\).*/\1/p' | head -n1): proxy on 127.0.0.1:$FR_ACCT -> ratel $RATEL_ADDR"

T0=1793613600 # 2026-11-02 10:00:00 UTC
# acct NAS-IP STATUS USER SESSION SECS OCTETS [RADCLIENT ARGS...]: one Accounting-Request
# from a NAS behind the proxy, sent to FreeRADIUS; fails unless FreeRADIUS answered.
acct() {
	local nas=$1 status=$2 user=$3 sid=$4 secs=$5 octets=$6
	shift 6
	printf 'Acct-Status-Type = %s\nUser-Name = "%s"\nAcct-Session-Id = "%s"\nAcct-Session-Time = %s\nAcct-Input-Octets = %s\nEvent-Timestamp = %s\nNAS-IP-Address = %s\n' \
		"$status" "$user" "$sid" "$secs" "$octets" "$((T0 + secs))" "$nas" |
		timeout 60 radclient -q -r 3 -t 3 "$@" "127.0.0.1:$FR_ACCT" acct "$NAS_SECRET" ||
		fail "no Accounting-Response through the proxy: $status $user $sid $secs from $nas"
}
A=10.1.0.1
B=10.1.0.2

# Status-Server straight to ratel's accounting port (RFC 5997, Message-Authenticator).
printf 'Message-Authenticator = 0x00\nNAS-Identifier = "ci"\n' |
	timeout 30 radclient -q -r 2 -t 3 "$RATEL_ADDR" status "$RATEL_SECRET" ||
	fail "ratel did not answer Status-Server"
echo "Status-Server: ratel answered"

# Two NASes, one Acct-Session-Id "1", two users.
acct $A Start alice 1 0 0
acct $B Start bob 1 0 0
acct $A Interim-Update alice 1 600 1000000000 # 10 min + 1 GB = 0.6
acct $B Interim-Update bob 1 600 0            # 0.1
acct $A Interim-Update alice 1 600 1000000000 # replayed: a new packet, same counters: 0
echo "two NASes behind the proxy: Starts, Interims and a replay answered"

# An outage longer than the proxy's response_window: ratel stopped (SIGSTOP) while the
# NAS sends an Interim and retransmits it (radclient -r). FreeRADIUS relays the copies,
# times out, writes the packet to its detail file and answers the NAS; its detail reader
# sends it again (a new Identifier) until ratel is back. ratel then reads the queued copies
# and the replay: charged once (0.1).
kill -STOP "$SERVE_PID"
acct $B Interim-Update bob 1 1200 0 -r 5
kill -CONT "$SERVE_PID"
grep -q "Post-Proxy-Type Fail-Accounting = ok" "$WORK/fr.log" || fail "the outage did not go through the detail file"
for _ in $(seq 120); do
	[ -z "$(ls -A "$WORK/frlog/radacct/ratel")" ] && break
	sleep 0.5
done
[ -z "$(ls -A "$WORK/frlog/radacct/ratel")" ] || fail "the detail reader did not deliver the buffered packet in 60 s"
grep -q "Read packet from .*/radacct/ratel/detail.work" "$WORK/fr.log" || fail "the detail reader read nothing"
echo "outage: FreeRADIUS buffered to its detail file, answered the NAS, replayed to ratel"

# Accounting-On from NAS A closes alice's session only.
acct $A Accounting-On "" "" 700 0
# NAS A after its reboot: a new session; NAS B goes on and stops (the Stop twice).
acct $A Start carol 2 0 0
acct $A Interim-Update carol 2 300 0 # 0.05
acct $B Stop bob 1 1800 0            # 1800 s in all: 0.3
acct $B Stop bob 1 1800 0
echo "Accounting-On from one NAS, a new session after it, a Stop and its replay answered"

# FreeRADIUS logs each reply it got from ratel: every one carries its Proxy-State back.
python3 - "$WORK/fr.log" "$RATEL_PORT" <<'PY' || fail "Proxy-State not echoed to FreeRADIUS"
import re, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
got = [i for i, l in enumerate(lines) if re.search(r"Received Accounting-Response Id \d+ from 127\.0\.0\.1:%s " % sys.argv[2], l)]
assert len(got) >= 8, len(got)
bare = [lines[i] for i in got if "Proxy-State = 0x" not in lines[i + 1]]
assert not bare, bare
print("Proxy-State: echoed in all %d replies FreeRADIUS logged" % len(got))
PY

# --- The API: exact credits, the live sessions and the report name the real NAS.
rpc() { curl -s -m 10 -X POST -H 'Content-Type: application/json' -d "$1" "$API"; }
check() { python3 -c "import json,sys; v=json.load(sys.stdin); $1" || fail "API check: $1"; }
S=$(rpc '{"params": {"auth_remoteaddr": "127.0.0.1", "auth_type": "ANONYMOUS", "auth_name": "ANONYMOUS", "auth_pass": "ANONYMOUS", "login_auth_name": "system", "login_auth_pass": "sys", "create_session": true, "login_auth_type": "ADMIN"}, "method": "login.login"}' | check 'print(v["result"])')
AUTH="\"auth_remoteaddr\": \"127.0.0.1\", \"auth_type\": \"ADMIN\", \"auth_name\": \"system\", \"auth_session\": \"$S\""
info() { rpc "{\"params\": {$AUTH, \"normal_username\": \"$1\"}, \"method\": \"user.getUserInfo\"}"; }
# 10 - (0.1 + 0.5) ; 10 - 0.3 ; 10 - 0.05
info alice | check 'u=list(v["result"].values())[0]; assert str(u["basic_info"]["credit"])=="9.4" and u["internet_onlines"]==[], v'
info bob | check 'u=list(v["result"].values())[0]; assert str(u["basic_info"]["credit"])=="9.7" and u["internet_onlines"]==[], v'
info carol | check 'u=list(v["result"].values())[0]; o=u["internet_onlines"]; assert str(u["basic_info"]["credit"])=="9.95", v; assert len(o)==1 and o[0][0]=="10.1.0.1" and o[0][1]=="10.1.0.1", o'
for u in alice:10.1.0.1:0.6 bob:10.1.0.2:0.3; do
	IFS=: read -r name nas used <<<"$u"
	rpc "{\"params\": {$AUTH, \"conds\": {\"username\": \"$name\"}, \"from\": 0, \"to\": 5}, \"method\": \"report.getConnections\"}" |
		check "r=v['result']; assert r['total_rows']==1, v; x=r['report'][0]; assert x['ras_description']=='$nas' and str(x['credit_used'])=='$used', x"
done
echo "API: credits alice 9.4, bob 9.7, carol 9.95; live session and report show the NAS, not the proxy"

# --- Stop ratel (graceful, bounded) and read the ledger.
kill -TERM "$SERVE_PID"
for _ in $(seq 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVE_PID" 2>/dev/null && fail "ratel serve did not stop in 10 s"
wait "$SERVE_PID" || fail "ratel serve exited non-zero"
SERVE_PID=""
python3 - "$WORK/data/ledger.sqlite" <<'PY' || fail "ledger check"
import sqlite3, sys
from decimal import Decimal
db = sqlite3.connect(sys.argv[1])
credits = {u: Decimal(c).normalize() for u, c in db.execute("select username, credit from users")}
assert credits == {"alice": Decimal("9.4"), "bob": Decimal("9.7"), "carol": Decimal("9.95")}, credits
sessions = sorted(db.execute("select nas, session_id from sessions"))
assert sessions == [("fr-proxy/10.1.0.1", "2")], sessions
taken = {}
for u, a in db.execute("select u.username, j.amount from journal j join users u using(user_id) where j.kind = 'usage'"):
    taken[u] = taken.get(u, Decimal(0)) - Decimal(a)
assert {u: v.normalize() for u, v in taken.items()} == {"alice": Decimal("0.6"), "bob": Decimal("0.3"), "carol": Decimal("0.05")}, taken
print("ledger: credits, journal and the open session (keyed by the NAS behind the proxy) exact")
PY
# The configuration docs/freeradius-proxy.md shows parses as it stands (ports moved).
DOC="$WORK/docraddb"
cp -a /etc/freeradius/3.0 "$DOC"
find "$DOC/sites-enabled" "$DOC/mods-enabled" -mindepth 1 ! -name always -delete
sed -i "s|^\s*logdir = .*|logdir = $WORK/frlog|; s|^\s*run_dir = .*|run_dir = $WORK/frrun|; s/^\tuser = freerad/#&/; s/^\tgroup = freerad/#&/" "$DOC/radiusd.conf"
python3 - "$ROOT/docs/freeradius-proxy.md" "$DOC" <<'PY' || fail "docs/freeradius-proxy.md: config blocks not found"
import re, sys
doc = open(sys.argv[1]).read()
blocks = [b for lang, b in re.findall(r"```(\w*)\n(.*?)```", doc, re.S) if lang != "toml"]
clients, proxy, detail, site = blocks[:4]
for port, moved in (("1813", "28113"), ("1812", "28112"), ("3799", "28799")):
    site = site.replace("port = " + port, "port = " + moved)
d = sys.argv[2]
open(d + "/clients.conf", "w").write(clients)
open(d + "/proxy.conf", "w").write(proxy)
open(d + "/mods-enabled/ratel_detail", "w").write(detail)
open(d + "/sites-enabled/ratel-proxy", "w").write(site)
PY
timeout 30 freeradius -C -X -d "$DOC" >"$WORK/doccheck.log" 2>&1 || { tail -n 20 "$WORK/doccheck.log" >&2; fail "docs/freeradius-proxy.md: FreeRADIUS rejects the configuration"; }
echo "docs/freeradius-proxy.md: FreeRADIUS accepts the configuration"
echo "freeradius proxy OK"
