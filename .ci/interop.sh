#!/usr/bin/env bash
# Interop: rate the fixture CDRs with the real binary, then read every Parquet file with
# pyarrow and DuckDB (readers we did not write) and check that DuckDB's
# sum(credit_used) group by username equals the credit the ledger took.
set -euo pipefail
PY="$1"
RATEL="$(realpath "$2")"
ROOT="$(pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
"$RATEL" users import "$ROOT/fixtures/demo/users.csv"
"$RATEL" rate --format asterisk "$ROOT/fixtures/cdr/asterisk/Master.csv"
"$RATEL" rate --format freeswitch "$ROOT/fixtures/cdr/freeswitch/Master.csv"
"$RATEL" rate --format generic "$ROOT/fixtures/cdr/generic/cdrs.csv"
"$PY" "$ROOT/.ci/interop.py" "$WORK/ratel-data"

# --- radclient (a RADIUS client we did not write) and curl (the IBSng walk-through) against
# --- a running `ratel serve`.
cat > "$WORK/srv.toml" <<CFG
[radius]
listen = "127.0.0.1:18813"
auth_listen = "127.0.0.1:18812"
[api]
listen = "127.0.0.1:11237"
[storage]
data_dir = "srv-data"
[cdr]
spool = "srv-data/spool"
[[admin]]
name = "system"
password = "sys"
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
[[charge_rule]]
name = "all"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "00:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[group]]
name = "sample-group"
charge_rules = ["all"]
CFG
printf 'username,password,group,credit\nalice,pw,sample-group,10\n' > "$WORK/srv-users.csv"
"$RATEL" users import --config "$WORK/srv.toml" "$WORK/srv-users.csv"
RATEL_LOG=warn "$RATEL" serve --config "$WORK/srv.toml" > "$WORK/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true; rm -rf "$WORK"' EXIT
API=http://127.0.0.1:11237/
rpc() { curl -s -X POST -H 'Content-Type: application/json' -d "$1" "$API"; }
for _ in $(seq 50); do rpc '{"method":"x"}' >/dev/null 2>&1 && break; sleep 0.2; done

acct() { # status session-time octets
  printf 'Acct-Status-Type = %s\nUser-Name = "alice"\nAcct-Session-Id = "rc-1"\nAcct-Session-Time = %s\nAcct-Input-Octets = %s\nEvent-Timestamp = %s\nNAS-IP-Address = 127.0.0.1\n' \
    "$1" "$2" "$3" "$((1793613600 + $2))" | radclient -q -r 3 -t 2 127.0.0.1:18813 acct testing123
}
acct Start 0 0
acct Interim-Update 600 1000000000
acct Interim-Update 600 1000000000   # a replay: charges nothing
acct Stop 1200 2000000000
echo "radclient: Start, Interim, replayed Interim, Stop acknowledged"

check() { "$PY" -c "import json,sys; v=json.load(sys.stdin); $1" ; }
AUTH='"auth_remoteaddr": "127.0.0.1", "auth_type": "ADMIN", "auth_name": "system"'
S=$(rpc '{"params": {"auth_remoteaddr": "127.0.0.1", "auth_type": "ANONYMOUS", "auth_name": "ANONYMOUS", "auth_pass": "ANONYMOUS", "login_auth_name": "system", "login_auth_pass": "sys", "create_session": true, "login_auth_type": "ADMIN"}, "method": "login.login"}' | check 'print(v["result"])')
# 20 min * 0.01 + 2 GB * 0.5 = 1.2 taken from 10
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"normal_username\": \"alice\"}, \"method\": \"user.getUserInfo\"}" \
  | check 'c=v["result"]["1"]["basic_info"]["credit"]; assert str(c)=="8.8", c; print("credit after radclient session:", c)'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"normal_username\": \"sample-user\"}, \"method\": \"user.getUserInfo\"}" \
  | check 'assert v["error"].startswith("NORMAL_USERNAME_DOESNT_EXISTS|"), v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"count\": 1, \"isp_name\": \"Main\", \"group_name\": \"sample-group\", \"credit\": 0, \"credit_comment\": \"\"}, \"method\": \"user.addNewUsers\"}" \
  | check 'assert v["result"]==[2], v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"user_id\": \"2\", \"attrs\": {\"normal_user_spec\": {\"normal_username\": \"sample-user\", \"normal_password\": \"passw00rd\"}}, \"to_del_attrs\": []}, \"method\": \"user.updateUserAttrs\"}" \
  | check 'assert v["result"]=="" and v["error"] is None, v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"user_id\": \"2\", \"credit\": 100, \"change_type\": \"ADD\", \"credit_comment\": \"\"}, \"method\": \"user.changeCreditExtended\"}" \
  | check 'assert len(v["result"])==1, v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"user_id\": \"2\", \"comment\": \"\"}, \"method\": \"user.renewUsers\"}" \
  | check 'assert v["result"] is True, v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"normal_username\": \"sample-user\"}, \"method\": \"user.getUserInfo\"}" \
  | check 'u=v["result"]["2"]; assert str(u["basic_info"]["credit"])=="100" and u["user_repr"]=="sample-user", v'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"conds\": {\"username\": \"alice\", \"login_time_from\": \"2026-11-02 09:00:00\", \"login_time_from_unit\": \"gregorian\"}, \"from\": 0, \"to\": 5, \"sort_by\": \"login_time\", \"desc\": false}, \"method\": \"report.getConnections\"}" \
  | check 'r=v["result"]; assert r["total_rows"]==1 and str(r["report"][0]["credit_used"])=="1.2", v; print("getConnections:", r["report"][0]["login_time_formatted"], r["report"][0]["credit_used"])'

# --- radclient authorization (RFC 2865), PAP and CHAP, with a Message-Authenticator (the
# --- NAS entry requires one by default); radclient checks the reply's authenticators.
auth() { # user password pap|chap -> radclient's report of the reply
  local pw="User-Password"
  [ "$3" = chap ] && pw="CHAP-Password"
  printf 'User-Name = "%s"\n%s = "%s"\nNAS-IP-Address = 127.0.0.1\nMessage-Authenticator = 0x00\n' "$1" "$pw" "$2" \
    | radclient -x -r 3 -t 2 127.0.0.1:18812 auth testing123 2>&1 || true
}
expect_auth() { # user password pap|chap expected-code expected-attribute-line
  local out
  out=$(auth "$1" "$2" "$3")
  if ! grep -q "Received $4" <<<"$out" || ! grep -qF "$5" <<<"$out"; then
    echo "radclient $3 $1: expected $4 with '$5', got:"; echo "$out"; exit 1
  fi
}
# alice has 8.8 left at 0.01/min: 8.8 * 60 / 0.01 = 52800 s.
expect_auth alice pw pap Access-Accept 'Session-Timeout = 52800'
expect_auth alice pw chap Access-Accept 'Session-Timeout = 52800'
expect_auth alice wrong pap Access-Reject 'Reply-Message = "wrong password"'
expect_auth alice wrong chap Access-Reject 'Reply-Message = "wrong password"'
expect_auth nobody pw chap Access-Reject 'Reply-Message = "unknown user"'
rpc "{\"params\": {$AUTH, \"auth_session\": \"$S\", \"user_id\": \"1\", \"credit\": 0, \"change_type\": \"SET\", \"credit_comment\": \"\"}, \"method\": \"user.changeCreditExtended\"}" \
  | check 'assert len(v["result"])==1, v'
expect_auth alice pw pap Access-Reject 'Reply-Message = "no credit"'
expect_auth alice pw chap Access-Reject 'Reply-Message = "no credit"'
echo "radclient: PAP and CHAP Access-Accept / Access-Reject as expected"
kill -TERM $SERVE
wait $SERVE
echo "interop OK: radclient and the curl walk-through against ratel serve"
