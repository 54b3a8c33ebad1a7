"""Interop: the JeraSoft VCS dialect walked through with examples/vcsapi.py (stdlib only)
against a running `ratel serve`, then the whole xDR range downloaded as Parquet and as CSV
and read by pyarrow, DuckDB and Python's csv module (readers we did not write): the row
count equals what the ledger's files hold and sum(credit_used) — in total and per client —
equals what the ledger took. serve's RSS is sampled during each download and printed.

usage: vcs_interop.py API_URL DATA_DIR SERVE_PID EXAMPLES_DIR FROM TO
"""

import calendar
import csv
import decimal
import os
import sqlite3
import sys
import tempfile
import threading
import time

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

URL, DATA, PID, EXAMPLES, FROM, TO = sys.argv[1:7]
sys.path.insert(0, EXAMPLES)
import vcsapi  # noqa: E402

D = decimal.Decimal
SEED_KEYS = ["id", "id_companies", "type", "name", "groups", "c_dt", "status", "credit",
             "c_company", "c_address", "c_email", "c_email_tech", "c_email_billing",
             "c_email_rates", "id_currencies"]


def ledger():
    return sqlite3.connect(f"file:{DATA}/ledger.sqlite?mode=ro", uri=True)


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---- the walk-through, as the seed's vcsapi is used ------------------------------------------
api = vcsapi.VcsApi(URL, "system", "sys")
r = api.clients.list({"limit": 3})
assert r.code and r.errors == [] and api.sid.startswith("1-"), r
n_clients = ledger().execute("select count(*) from users where deleted_at is null").fetchone()[0]
assert r.data["total"] == n_clients, (r.data["total"], n_clients)
cid = r.data["clients"][0]["id"]
c = api.clients.editForm({"id_clients": cid})
assert c.code and c.messages == [] and list(c.data["client"]) == SEED_KEYS, c
assert c.data["client"]["id_currencies"] == 840 and c.data["client"]["type"] == 0, c
print(f"clients.editForm {cid}: {c.data['client']}")
bad = api.clients.editForm({})
assert not bad.code and bad.errors == ["id_clients: required"] and bad.data is None, bad
credit0 = c.data["client"]["credit"]
p = api.payments.add({"id_clients": cid, "amount": D("12.34"), "notes": "interop"})
assert p.code and p.data["credit"] == credit0 + D("12.34"), p
last = api.payments.list({"id_clients": cid}).data["payments"][-1]
assert (last["type"], last["amount"], last["notes"], last["admin"]) == ("payment", D("12.34"), "interop", "system"), last
x = api.xdrs.list({"id_clients": cid, "from": FROM, "to": TO, "limit": 5})
assert x.code and len(x.data["xdrs"]) == min(5, x.data["total"]), x
print(f"xdrs.list {cid}: {x.data['total']} xDRs, credit_used {x.data['credit_used']}")
day = {"id_clients": cid, "from": "2026-11-02 00:00:00", "to": "2026-11-03 00:00:00", "notes": "interop"}
cancel = api.xdrs.cancel(day)
assert cancel.code and cancel.data["cancelled"] > 0, cancel
again = api.xdrs.cancel(day)
assert again.code and again.data["cancelled"] == 0 and again.data["amount"] == 0, again
print(f"xdrs.cancel {cid}: {cancel.data['cancelled']} charges, {cancel.data['amount']} back")
ev = api.events.list({"limit": 3})
assert ev.code and ev.data["events"], ev
seed_style = vcsapi.Api("127.0.0.1", "system", "wrong", int(URL.rsplit(":", 1)[1].strip("/")))
wrong = seed_style.clients.list({})
assert not wrong.code and wrong.errors == ["wrong username or password"], wrong

# ---- downloads: the REFUND xDRs reach Parquet first ------------------------------------------
deadline = time.monotonic() + 15
while ledger().execute("select count(*) from xdr_outbox").fetchone()[0]:
    assert time.monotonic() < deadline, "the outbox was not flushed within 15 s"
    time.sleep(0.2)
# serve compacts every closed day of 2+ files into one (compact.rs) — here the 3 days the
# bench rated in blocks. A merge holds its day's rows in memory (~300 MB for these 333k-row
# days): wait for it, so the RSS sampled below is the download's, not the merge's.
def days_to_compact():
    closed_before = time.time() - 86400 - 3600
    days = {}
    for (path,) in ledger().execute("select path from xdr_files"):
        d = path.split("/", 1)[0]
        days[d] = days.get(d, 0) + 1
    return [d for d, n in days.items() if n > 1 and
            calendar.timegm(time.strptime(d[5:], "%Y-%m-%d")) < closed_before]


waited = time.monotonic()
deadline = waited + 180
while days_to_compact():
    assert time.monotonic() < deadline, f"closed days not compacted within 180 s: {days_to_compact()}"
    time.sleep(0.5)
print(f"closed days compacted ({time.monotonic() - waited:.1f} s waited)")
db = ledger()
ledger_rows = db.execute("select sum(rows) from xdr_files").fetchone()[0]
taken = {}
for user, amount in db.execute("select user_id, amount from journal where kind in ('usage', 'refund')"):
    taken[user] = taken.get(user, D(0)) - D(amount)
taken = {u: t for u, t in taken.items() if t != 0}
total_taken = sum(taken.values(), D(0))
file_columns = pq.read_schema(
    next(os.path.join(d, f) for d, _, fs in os.walk(f"{DATA}/xdr") for f in fs if f.endswith(".parquet"))
).names
work = tempfile.mkdtemp()
baseline = rss_kib()
figures = {}
for fmt in ("parquet", "csv"):
    path = f"{work}/xdrs.{fmt}"
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    started = time.monotonic()
    headers = api.download("xdrs/download", {"from": FROM, "to": TO, "format": fmt}, path)
    secs = time.monotonic() - started
    stop.set()
    t.join()
    assert headers.get("Transfer-Encoding") == "chunked", headers
    assert headers["Content-Disposition"].startswith("attachment; filename="), headers
    figures[fmt] = (os.path.getsize(path), secs, peak[0])
    print(f"download {fmt}: {os.path.getsize(path) / 2**20:.1f} MiB in {secs:.1f} s; "
          f"serve RSS {baseline / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB")

con = duckdb.connect()
# Parquet, by pyarrow and DuckDB.
t = pq.read_table(f"{work}/xdrs.parquet")
assert t.schema.names == file_columns, (t.schema.names, file_columns)
assert t.num_rows == ledger_rows, (t.num_rows, ledger_rows)
assert pc.sum(t["credit_used"]).as_py() == total_taken, (pc.sum(t["credit_used"]).as_py(), total_taken)
n, s = con.execute(f"select count(*), sum(credit_used) from read_parquet('{work}/xdrs.parquet')").fetchone()
assert (n, s) == (ledger_rows, total_taken), (n, s, ledger_rows, total_taken)
per_user = dict(con.execute(
    f"select user_id, sum(credit_used) from read_parquet('{work}/xdrs.parquet') "
    "where user_id is not null group by 1 having sum(credit_used) <> 0").fetchall())
assert per_user == taken, "per-client sums differ from the ledger"
del t
# CSV, by DuckDB (money read as DECIMAL, not as floats) and by Python's csv module.
n, s = con.execute(
    f"select count(*), sum(credit_used) from read_csv('{work}/xdrs.csv', header = true, "
    "types = {'credit_used': 'DECIMAL(38,10)', 'user_id': 'BIGINT'})").fetchone()
assert (n, s) == (ledger_rows, total_taken), (n, s, ledger_rows, total_taken)
with open(f"{work}/xdrs.csv", newline="") as f:
    rows = csv.reader(f)
    header = next(rows)
    assert header == file_columns, header
    i = header.index("credit_used")
    count, total = 0, D(0)
    for row in rows:
        count += 1
        total += D(row[i])
assert (count, total) == (ledger_rows, total_taken), (count, total)
print(f"downloads OK: {ledger_rows} xDRs, sum(credit_used) {total_taken} == the ledger "
      f"(pyarrow, DuckDB, csv), {len(taken)} clients each equal")
for fmt, (size, secs, peak) in figures.items():
    grew = (peak - baseline) / 1024
    assert grew < 256, f"{fmt}: serve's RSS grew {grew:.0f} MiB during the download"
for f in os.listdir(work):
    os.remove(f"{work}/{f}")
os.rmdir(work)
