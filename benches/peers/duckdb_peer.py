"""DuckDB peer for `ratel bench cdr`: on the same generated files, time
1. a plain CSV -> Parquet (zstd) copy of the CDR file,
2. a longest-prefix rating join with the same increments (no balances, no windows) that
   only sums the cost (what the issue's target names), and
3. the same join with its rated rows written the way ratel writes xDRs: one row per call
   (the CDR's fields, the matched prefix and its description, billed seconds, the cost
   as DECIMAL(38,10)), in (UTC day of logout, account, call) order, zstd Parquet,
and print one JSON line. Usage: duckdb_peer.py DIR (holding cdrs.csv and rates.csv)."""
import json
import os
import sys
import time

import duckdb

d = sys.argv[1]
con = duckdb.connect()
con.execute(f"SET threads TO {os.cpu_count()}")
out = os.path.join(d, "duckdb-copy.parquet")

t = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_csv('{d}/cdrs.csv', header=true)) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
copy_s = time.perf_counter() - t
rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]

con.execute(f"""CREATE TABLE rates AS SELECT prefix::VARCHAR AS prefix, description AS descr, price_per_minute::DECIMAL(18,6) AS ppm,
  connect_fee::DECIMAL(18,6) AS fee, first_increment AS f, next_increment AS n
  FROM read_csv('{d}/rates.csv', header=true, all_varchar=true, null_padding=true, delim=',') WHERE days IS NULL OR days = ''""")
# The longest prefix of the destination's digits: eight equi-joins, the longest match wins.
JOINS = "\n".join(f"  LEFT JOIN rates r{k} ON r{k}.prefix = left(c2.dst, {k})" for k in range(8, 0, -1))
DST = "c2 AS (SELECT *, CASE WHEN starts_with(digits, '00') THEN substr(digits, 3) ELSE digits END AS dst FROM c)"


def longest(col):
    return "coalesce(" + ", ".join(f"r{k}.{col}" for k in range(8, 0, -1)) + ")"


t = time.perf_counter()
total = con.execute(f"""
WITH c AS (
  SELECT call_id, account, duration_s::BIGINT AS dur, disposition,
         regexp_replace(callee, '[^0-9]', '', 'g') AS digits
  FROM read_csv('{d}/cdrs.csv', header=true, all_varchar=true)),
{DST},
m AS (
  SELECT c2.call_id, c2.dur, c2.disposition,
    {longest('ppm')} AS ppm, {longest('fee')} AS fee,
    {longest('f')}::BIGINT AS f, {longest('n')}::BIGINT AS n
  FROM c2
{JOINS}),
rated AS (
  SELECT CASE WHEN disposition = 'ANSWERED' AND dur > 0 AND ppm IS NOT NULL THEN
      fee + ppm * (CASE WHEN dur <= f THEN f ELSE f + ceil((dur - f) / n::DOUBLE)::BIGINT * n END) / 60
    ELSE 0 END AS cost
  FROM m)
SELECT count(*), sum(cost) FROM rated""").fetchone()
join_s = time.perf_counter() - t

# 3. The join written out. Still less than ratel does (no balances, no ledger, no
# exactly-once, 16 columns where an xDR has 37), but it writes every rated row.
xdr_out = os.path.join(d, "duckdb-xdr.parquet")
t = time.perf_counter()
con.execute(f"""COPY (
WITH c AS (
  SELECT call_id, account, caller, callee, start_time::TIMESTAMPTZ AS login,
         duration_s::BIGINT AS dur, disposition,
         regexp_replace(callee, '[^0-9]', '', 'g') AS digits
  FROM read_csv('{d}/cdrs.csv', header=true, all_varchar=true)),
{DST},
m AS (
  SELECT c2.*,
    {longest('prefix')} AS prefix,
    {longest('descr')} AS destination_name,
    {longest('ppm')} AS ppm, {longest('fee')} AS fee,
    {longest('f')}::BIGINT AS f, {longest('n')}::BIGINT AS n
  FROM c2
{JOINS}),
b AS (
  SELECT *, CASE WHEN disposition = 'ANSWERED' AND dur > 0 AND ppm IS NOT NULL THEN
      (CASE WHEN dur <= f THEN f ELSE f + ceil((dur - f) / n::DOUBLE)::BIGINT * n END) ELSE 0 END AS billed
  FROM m)
SELECT call_id, account, caller AS caller_id, callee AS called_number, login AS login_time,
  login + to_seconds(dur) AS logout_time, dur AS duration_seconds, billed AS billed_seconds,
  disposition AS terminate_cause, prefix AS destination, destination_name,
  (CASE WHEN billed > 0 THEN fee + ppm * billed / 60 ELSE 0 END)::DECIMAL(38,10) AS credit_used,
  CASE WHEN billed > 0 THEN 'OK' WHEN ppm IS NULL AND disposition = 'ANSWERED' AND dur > 0 THEN 'NO_RATE' ELSE 'UNANSWERED' END AS status,
  'VoIP' AS service_type, 'cdr:cdrs.csv:' || (row_number() OVER () + 1)::VARCHAR AS source,
  (login + to_seconds(dur))::DATE AS day
FROM b ORDER BY day, account, call_id
) TO '{xdr_out}' (FORMAT parquet, COMPRESSION zstd)""")
write_s = time.perf_counter() - t
written = con.execute(f"SELECT count(*) FROM read_parquet('{xdr_out}')").fetchone()[0]
print(json.dumps({"peer": "duckdb", "version": duckdb.__version__, "rows": rows,
                  "copy_seconds": round(copy_s, 3), "copy_rows_per_sec": round(rows / copy_s),
                  "join_seconds": round(join_s, 3), "join_rows_per_sec": round(rows / join_s),
                  "join_rated_rows": total[0],
                  "join_write_seconds": round(write_s, 3), "join_write_rows_per_sec": round(written / write_s),
                  "join_write_rows": written}))
