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
