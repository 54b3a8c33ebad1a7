"""Reads ratel's xDRs with pyarrow and DuckDB and checks them against the ledger."""
import decimal
import glob
import sqlite3
import sys

import duckdb
import pyarrow.parquet as pq

data = sys.argv[1]
files = sorted(glob.glob(f"{data}/xdr/date=*/*.parquet"))
assert files, "no xDR files"
assert not glob.glob(f"{data}/xdr/**/*.tmp", recursive=True), "temp files left behind"

rows = 0
for f in files:
    t = pq.read_table(f)
    rows += t.num_rows
    for col in ("credit_used", "before_credit", "after_credit"):
        typ = t.schema.field(col).type
        assert str(typ) == "decimal128(38, 10)", f"{f}: {col} is {typ}"
    assert str(t.schema.field("login_time").type) == "timestamp[us, tz=UTC]"
print(f"pyarrow read {len(files)} files, {rows} xDRs")

con = duckdb.connect()
ids = con.execute(f"select count(*), count(distinct xdr_id) from read_parquet('{data}/xdr/*/*.parquet')").fetchone()
assert ids[0] == rows and ids[1] == rows, f"duckdb rows {ids} vs pyarrow {rows}: an xDR appears twice"
used = dict(
    con.execute(
        f"select username, sum(credit_used) from read_parquet('{data}/xdr/*/*.parquet') "
        "where status <> 'UNKNOWN_USER' group by username"
    ).fetchall()
)

db = sqlite3.connect(f"{data}/ledger.sqlite")
taken = {}
for user, amount in db.execute(
    "select u.username, j.amount from journal j join users u using (user_id) where j.kind <> 'payment'"
):
    taken[user] = taken.get(user, decimal.Decimal(0)) - decimal.Decimal(amount)
for user, credit in db.execute("select username, credit from users"):
    # Payments (the initial credit among them) minus what usage and refunds took.
    paid = sum(
        (decimal.Decimal(a) for (a,) in db.execute(
            "select amount from journal j join users u using (user_id) where u.username = ? and kind = 'payment'", (user,)
        )),
        decimal.Decimal(0),
    )
    assert paid - taken.get(user, 0) == decimal.Decimal(credit), f"{user}: balance != journal"

for user in set(used) | set(taken):
    u = decimal.Decimal(used.get(user, 0))
    t = taken.get(user, decimal.Decimal(0))
    assert u == t, f"{user}: DuckDB sum(credit_used) {u} != ledger {t}"
    print(f"  {user}: xDRs {u} == ledger {t}")
print("interop OK: pyarrow and DuckDB read every file; sums equal the ledger")
