//! Issue 12 end to end: packages and expiry through the real `ratel serve` binary — the
//! IBSng JSON-RPC over real HTTP, RADIUS accounting over real UDP, a CDR file dropped into
//! the spool, xDRs read back with the parquet crate, the ledger read with rusqlite after a
//! stop, and SIGKILLs in the middle of renewals.
//!
//! Renewals are driven by back-dated activations (no fake clock, no sleeping): a package
//! activated N periods ago is renewed N times at once, in order, exactly as a server that
//! was down for N periods renews it at start. Every expected period boundary is computed
//! here independently from the local calendar (chrono-tz), and every amount by hand from
//! the config below:
//! - group `flat`: one charge rule all day at 0.0200/min and 1.0000/GB, tariff `std`,
//!   4 decimals, rounding up;
//! - tariff `std`: prefix 1 at 0.0100/min, no connect fee, 60/60; prefix 44 at 0.0300/min,
//!   connect fee 0.0100, 30/6;
//! - packages: `daily` 1.00 a day with 60 voice seconds; `monthly` 10.00 a month with 150
//!   voice seconds and 1 GB; `weekly` 2.50 a week with 0.5 GB.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::{Decimal128Array, Int64Array, StringArray};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use common::{col, d, stop, Site, SECRET};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866, rfc2869};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TZ: &str = "Europe/Berlin";

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
auth_listen = ""
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[rating]
time_zone = "Europe/Berlin"
[cdr]
spool = "spool"
format = "generic"
[[admin]]
name = "system"
password = "sys"
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
require_message_authenticator = false
[[charge_rule]]
name = "flat"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "24:00"
price_per_minute = "0.0200"
price_per_gb = "1.0000"
[[group]]
name = "flat"
charge_rules = ["flat"]
tariff = "std"
decimals = 4
rounding = "up"
[[tariff]]
name = "std"
rates = "rates.csv"
[[package]]
name = "daily"
fee = "1.00"
period = "day"
voice_seconds = 60
[[package]]
name = "monthly"
fee = "10.00"
period = "month"
voice_seconds = 150
data_bytes = 1000000000
[[package]]
name = "weekly"
fee = "2.50"
period = "week"
data_bytes = 500000000
"#;

const RATES: &str =
    "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n\
1,USA,0.0100,0,60,60\n\
44,UK,0.0300,0.0100,30,6\n";

/// A data dir with the config above and its rate deck.
fn site() -> Site {
    Site::new(CONFIG, &[("rates.csv", RATES)])
}

// ---- JSON-RPC ---------------------------------------------------------------------------

fn adm(extra: Value) -> Value {
    let mut p = json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys"});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

fn ok(api: SocketAddr, method: &str, params: Value) -> Value {
    let (r, e) = common::rpc(api, method, adm(params.clone()));
    assert_eq!(e, Value::Null, "{method} {params}: {e}");
    r
}

fn refused(api: SocketAddr, method: &str, params: Value) -> String {
    let (r, e) = common::rpc(api, method, adm(params.clone()));
    e.as_str()
        .unwrap_or_else(|| panic!("{method} {params} succeeded: {r}"))
        .to_string()
}

fn money(v: &Value) -> Decimal {
    d(v.to_string().trim_matches('"'))
}

fn new_client(api: SocketAddr, username: &str, credit: &str) -> i64 {
    let r = ok(
        api,
        "user.addNewUsers",
        json!({"count": 1, "group_name": "flat", "credit": credit, "credit_comment": "start"}),
    );
    let id = r[0].as_i64().unwrap();
    ok(
        api,
        "user.updateUserAttrs",
        json!({"user_id": id, "attrs": {"normal_user_spec":
            {"normal_username": username, "normal_password": "pw"}}}),
    );
    id
}

fn credit(api: SocketAddr, id: i64) -> Decimal {
    let r = ok(api, "user.getUserInfo", json!({"user_id": id}));
    money(&r[id.to_string()]["basic_info"]["credit"])
}

fn packages(api: SocketAddr, id: i64) -> Vec<Value> {
    ok(
        api,
        "user.getPackages",
        json!({"user_id": id, "include_closed": true}),
    )
    .as_array()
    .unwrap()
    .clone()
}

/// Assigns `package` to client `id`; its client package id.
fn assign(api: SocketAddr, id: i64, package: &str) -> i64 {
    let r = ok(
        api,
        "user.assignPackage",
        json!({"user_id": id, "package": package}),
    );
    assert_eq!(r[0]["status"], "assigned", "{r}");
    r[0]["id_clients_packages"].as_i64().unwrap()
}

/// The `package_fee` journal rows of a client: (amount, comment).
fn fees(api: SocketAddr, id: i64) -> Vec<(Decimal, String)> {
    let r = ok(
        api,
        "report.getCreditChanges",
        json!({"user_id": id, "kinds": ["package_fee"]}),
    );
    r["report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["kind"], "package_fee");
            (
                money(&j["amount"]),
                j["comment"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---- the calendar oracle ----------------------------------------------------------------

fn tz() -> Tz {
    TZ.parse().unwrap()
}

/// A local date-time in the rating time zone as an instant (noon is never in a DST gap).
fn local(t: NaiveDateTime) -> DateTime<Utc> {
    tz().from_local_datetime(&t)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

fn fmt_local(t: DateTime<Utc>) -> String {
    t.with_timezone(&tz())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn last_day(y: i32, m: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(y, m, 1).unwrap();
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1).unwrap()
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1).unwrap()
    };
    (next - first).num_days() as u32
}

/// Period boundaries of a daily package anchored at local noon of `day`: day + k, noon.
fn daily_boundary(day: NaiveDate, k: u32) -> DateTime<Utc> {
    local(
        (day + chrono::Days::new(k as u64))
            .and_hms_opt(12, 0, 0)
            .unwrap(),
    )
}

/// Period boundaries of a monthly package anchored at local noon of `day`: k months
/// later, the day clamped to the month's last.
fn monthly_boundary(day: NaiveDate, k: u32) -> DateTime<Utc> {
    let m0 = day.month0() + k;
    let (y, m) = (day.year() + (m0 / 12) as i32, m0 % 12 + 1);
    let dd = day.day().min(last_day(y, m));
    local(
        NaiveDate::from_ymd_opt(y, m, dd)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap(),
    )
}

/// The comment of the fee of period `[a, b)` of `name`.
fn period_comment(name: &str, a: DateTime<Utc>, b: DateTime<Utc>) -> String {
    format!("{name} {} → {}", fmt_local(a), fmt_local(b))
}

fn today_local() -> NaiveDate {
    Utc::now().with_timezone(&tz()).date_naive()
}

/// Events of a name (from report.getEvents).
fn events_named(api: SocketAddr, name: &str) -> Vec<Value> {
    let r = ok(api, "report.getEvents", json!({"after": 0, "limit": 1000}));
    r.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == name)
        .cloned()
        .collect()
}

// ---- tests ------------------------------------------------------------------------------

/// A daily package activated 30 days back: the activation fee, then one renewal per day
/// boundary in order until the credit no longer covers the fee, then deactivated (no fee,
/// no quota). A restart renews nothing again.
#[test]
fn a_month_of_daily_renewals_until_the_credit_runs_out() {
    let t = site();
    let (srv, _, api) = t.serve();
    let id = new_client(api, "dora", "20.00");
    let pid = assign(api, id, "daily");
    let day0 = today_local() - chrono::Days::new(30);
    let anchor = daily_boundary(day0, 0);
    let r = ok(
        api,
        "user.activatePackage",
        json!({"id": pid, "start": anchor.to_rfc3339()}),
    );
    // The activation answer shows the package after its catch-up: credit 20 buys the
    // activation and 19 renewals; the 20th boundary finds 0.00 < 1.00.
    assert_eq!(r[0]["status"], "deactivated", "{r}");
    assert_eq!(r[0]["voice_seconds_left"], 0);
    let fees = fees(api, id);
    assert_eq!(fees.len(), 20, "{fees:?}");
    for (k, (amount, comment)) in fees.iter().enumerate() {
        assert_eq!(*amount, d("-1.00"));
        let (a, b) = (
            daily_boundary(day0, k as u32),
            daily_boundary(day0, k as u32 + 1),
        );
        assert_eq!(*comment, period_comment("daily", a, b), "fee {k}");
    }
    assert_eq!(credit(api, id), d("0.00"));
    let info = ok(api, "user.getUserInfo", json!({"user_id": id}));
    assert_eq!(info[id.to_string()]["basic_info"]["nearest_exp_date"], "");
    assert!(info[id.to_string()]["attrs"].get("packages").is_none());
    // Events: one assign, one activation, 19 renewals, one deactivation, and the balance
    // reaching zero once.
    for (name, n) in [
        ("clients_packages.assign", 1),
        ("clients_packages.activate", 1),
        ("clients_packages.renew", 19),
        ("clients_packages.deactivate", 1),
        ("clients.balance_nonpositive", 1),
    ] {
        assert_eq!(events_named(api, name).len(), n, "{name}");
    }
    let deact = &events_named(api, "clients_packages.deactivate")[0];
    assert_eq!(deact["body"]["package"]["status"], "deactivated");
    assert_eq!(deact["body"]["package"]["id_clients_packages"], pid);
    stop(srv);
    // A restart: the deactivated package stays so; nothing is charged again.
    let (srv, _, api) = t.serve();
    assert_eq!(fees_count(api, id), 20);
    assert_eq!(credit(api, id), d("0.00"));
    // Refused with a clear error at 0.00; a payment, then the activation is accepted.
    let e = refused(api, "user.activatePackage", json!({"id": pid}));
    assert!(e.contains("less than the fee"), "{e}");
    ok(
        api,
        "user.changeCreditExtended",
        json!({"user_id": id, "credit": 5, "change_type": "ADD", "credit_comment": "top-up"}),
    );
    let r = ok(api, "user.activatePackage", json!({"id": pid}));
    assert_eq!(r[0]["status"], "active");
    assert_eq!(r[0]["voice_seconds_left"], 60);
    assert_eq!(credit(api, id), d("4.00"));
    stop(srv);
    // The ledger agrees: fee rows sum to what the credit lost to packages.
    let db = t.ledger_ro();
    let (n, keys): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT idem_key) FROM journal WHERE kind = 'package_fee' AND user_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, keys), (21, 21));
}

fn fees_count(api: SocketAddr, id: i64) -> usize {
    fees(api, id).len()
}

/// A monthly package activated on the 31st of a month: its periods end on the 31st or the
/// month's last day (Jan 31 → Feb 28 → Mar 31), each renewal charged once, in order; the
/// current period is the one holding now and `nearest_exp_date` is its end.
#[test]
fn monthly_periods_clamp_to_month_ends() {
    let t = site();
    let (srv, _, api) = t.serve();
    let id = new_client(api, "mona", "1000");
    let pid = assign(api, id, "monthly");
    // The latest 31st at least two days back (there is one within 366 days).
    let mut day0 = today_local() - chrono::Days::new(2);
    while day0.day() != 31 {
        day0 = day0.pred_opt().unwrap();
    }
    let now = Utc::now();
    let renewals = (1..)
        .take_while(|k| monthly_boundary(day0, *k) <= now)
        .count() as u32;
    let r = ok(
        api,
        "user.activatePackage",
        json!({"id": pid, "start": fmt_local(monthly_boundary(day0, 0))}),
    );
    assert_eq!(r[0]["status"], "active", "{r}");
    let fees = fees(api, id);
    assert_eq!(fees.len() as u32, 1 + renewals, "{fees:?}");
    for (k, (amount, comment)) in fees.iter().enumerate() {
        assert_eq!(*amount, d("-10.00"));
        let (a, b) = (
            monthly_boundary(day0, k as u32),
            monthly_boundary(day0, k as u32 + 1),
        );
        assert_eq!(*comment, period_comment("monthly", a, b), "fee {k}");
        // The clamp: a period ends on the 31st or on its month's last day.
        let end = b.with_timezone(&tz());
        assert_eq!(end.day(), 31u32.min(last_day(end.year(), end.month())));
    }
    let end = monthly_boundary(day0, renewals + 1);
    let p = &packages(api, id)[0];
    assert_eq!(
        p["period_start"],
        fmt_local(monthly_boundary(day0, renewals))
    );
    assert_eq!(p["period_end"], fmt_local(end));
    assert_eq!(
        (
            p["voice_seconds_left"].as_i64(),
            p["data_bytes_left"].as_i64()
        ),
        (Some(150), Some(1_000_000_000))
    );
    let info = ok(api, "user.getUserInfo", json!({"user_id": id}));
    let info = &info[id.to_string()];
    assert_eq!(info["basic_info"]["nearest_exp_date"], fmt_local(end));
    assert_eq!(
        info["attrs"]["packages"][0]["id_clients_packages"], pid,
        "{info}"
    );
    assert_eq!(
        credit(api, id),
        d("1000") - Decimal::from(10 * (1 + renewals))
    );
    stop(srv);
}

/// Usage takes quota first: voice CDRs in file order (free from the start of the billed
/// interval, the rest priced, a call before the period not covered), internet traffic per
/// update (exhausted mid-session); renewUsers renews the package now (fee, quota back).
#[test]
fn usage_takes_package_quota_first() {
    let t = site();
    let (srv, radius, api) = t.serve();
    let id = new_client(api, "quinn", "100");
    let pid = assign(api, id, "monthly");
    let now = Utc::now().timestamp();
    let start = Utc.timestamp_opt(now - 7200, 0).unwrap();
    ok(
        api,
        "user.activatePackage",
        json!({"id": pid, "start": start.to_rfc3339()}),
    );
    assert_eq!(credit(api, id), d("90.00"));
    // CDRs, in this order:
    // - before the period: USA 60 s → 60 billed, not covered: 0.01;
    // - USA 61 s → 120 billed, all covered (150 left → 30): 0;
    // - USA 90 s → 120 billed, 30 covered, 90 priced: 0.015;
    // - UK 31 s → 36 billed, no quota left: 0.01 + 36 × 0.03/60 = 0.028.
    let iso = |off: i64| Utc.timestamp_opt(now + off, 0).unwrap().to_rfc3339();
    let cdrs = format!(
        "call_id,caller,callee,start_time,duration_s,disposition,account\n\
         q0,5550000,15551230000,{},60,ANSWERED,quinn\n\
         q1,5550001,15551230001,{},61,ANSWERED,quinn\n\
         q2,5550002,15551230002,{},90,ANSWERED,quinn\n\
         q3,5550003,447700900123,{},31,ANSWERED,quinn\n",
        iso(-3 * 3600),
        iso(-3600),
        iso(-3500),
        iso(-3400)
    );
    t.drop_cdr("q.csv", &cdrs);
    t.wait_spool_done(1);
    assert_eq!(credit(api, id), d("90.00") - d("0.053"));
    // RADIUS, a session of the same client: Interim at 60 s with 600 MB, Stop at 120 s
    // with 1.5 GB. Interim: 60 s × 0.02/min = 0.02, 600 MB covered → 0.02. Stop: 0.02 more
    // for time; of 900 MB more, 400 MB covered (1 GB in all), 500 MB × 1.0/GB = 0.5 → 0.52.
    let sock = client();
    let at = Utc.timestamp_opt(now, 0).unwrap();
    for (i, (status, secs, out)) in [
        (1u32, 0u32, 0u64),
        (3, 60, 600_000_000),
        (2, 120, 1_500_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        let p = acct_at(i as u8 + 1, status, "quinn", "s-1", secs, out, at);
        assert!(send(&sock, radius, &p), "update {i} acknowledged");
    }
    assert_eq!(credit(api, id), d("90.00") - d("0.053") - d("0.54"));
    let p = &packages(api, id)[0];
    assert_eq!(
        (
            p["voice_seconds_left"].as_i64(),
            p["data_bytes_left"].as_i64()
        ),
        (Some(0), Some(0)),
        "{p}"
    );
    // No quota left: not listed by getUserInfo.
    let info = ok(api, "user.getUserInfo", json!({"user_id": id}));
    assert!(info[id.to_string()]["attrs"].get("packages").is_none());
    // renewUsers renews the package now: 10.00 taken, the quota back, a new period.
    ok(
        api,
        "user.renewUsers",
        json!({"user_id": id, "comment": "new month"}),
    );
    assert_eq!(
        credit(api, id),
        d("90.00") - d("0.053") - d("0.54") - d("10.00")
    );
    let p = &packages(api, id)[0];
    assert_eq!(
        (
            p["voice_seconds_left"].as_i64(),
            p["data_bytes_left"].as_i64()
        ),
        (Some(150), Some(1_000_000_000))
    );
    // A second session: 200 MB, all covered; 60 s of time 0.02.
    let at2 = Utc.timestamp_opt(Utc::now().timestamp() + 5, 0).unwrap();
    for (i, (status, secs, out)) in [(1u32, 0u32, 0u64), (2, 60, 200_000_000)]
        .into_iter()
        .enumerate()
    {
        let p = acct_at(i as u8 + 10, status, "quinn", "s-2", secs, out, at2);
        assert!(send(&sock, radius, &p));
    }
    let left = d("90.00") - d("0.053") - d("0.54") - d("10.00") - d("0.02");
    assert_eq!(credit(api, id), left);
    let p = &packages(api, id)[0];
    assert_eq!(p["data_bytes_left"].as_i64(), Some(800_000_000));
    stop(srv);
    // The xDRs say what the package covered, and their credit_used sums to the usage.
    let rows = package_columns(&t.data());
    let want: &[(&str, i64, i64, &str)] = &[
        ("q0", 0, 0, "0.01"),
        ("q1", 120, 0, "0"),
        ("q2", 30, 0, "0.015"),
        ("q3", 0, 0, "0.028"),
        ("s-1", 0, 1_000_000_000, "0.54"),
        ("s-2", 0, 200_000_000, "0.02"),
    ];
    let got: Vec<(String, i64, i64, Decimal)> = rows.into_iter().collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((sid, secs, bytes, cost), w) in got.iter().zip(want) {
        assert_eq!(
            (sid.as_str(), *secs, *bytes, *cost),
            (w.0, w.1, w.2, d(w.3))
        );
    }
    // The journal: usage + fees + payments = the credit.
    let db = t.ledger_ro();
    let sum: String = db
        .query_row(
            "SELECT group_concat(amount, ' ') FROM journal WHERE user_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let total: Decimal = sum.split(' ').map(d).sum();
    assert_eq!(total, left);
}

/// Clear refusals for operations the package's state does not allow.
#[test]
fn package_operations_refused_with_reasons() {
    let t = site();
    let (srv, _, api) = t.serve();
    let id = new_client(api, "rita", "5.00");
    let e = refused(
        api,
        "user.assignPackage",
        json!({"user_id": id, "package": "gold"}),
    );
    assert!(e.contains("not a package of the config"), "{e}");
    let e = refused(
        api,
        "user.assignPackage",
        json!({"user_id": 999, "package": "daily"}),
    );
    assert!(e.contains("999"), "{e}");
    let pid = assign(api, id, "monthly");
    let e = refused(api, "user.activatePackage", json!({"id": pid}));
    assert!(e.contains("credit 5.00 is less than the fee 10.00"), "{e}");
    let e = refused(api, "user.deactivatePackage", json!({"id": pid}));
    assert!(e.contains("only an active package"), "{e}");
    let wk = assign(api, id, "weekly");
    let future = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let e = refused(
        api,
        "user.activatePackage",
        json!({"id": wk, "start": future}),
    );
    assert!(e.contains("future"), "{e}");
    let e = refused(
        api,
        "user.activatePackage",
        json!({"id": wk, "start": "2020-01-01 00:00:00"}),
    );
    assert!(e.contains("366 days"), "{e}");
    let r = ok(api, "user.activatePackage", json!({"id": wk}));
    assert_eq!(r[0]["status"], "active");
    let e = refused(api, "user.activatePackage", json!({"id": wk}));
    assert!(e.contains("is active"), "{e}");
    assert_eq!(credit(api, id), d("2.50"));
    // renewUsers is all or none: 2.50 does not cover the weekly fee twice... it does once.
    ok(api, "user.renewUsers", json!({"user_id": id}));
    assert_eq!(credit(api, id), d("0.00"));
    let e = refused(api, "user.renewUsers", json!({"user_id": id}));
    assert!(e.contains("less than the fee"), "{e}");
    let r = ok(api, "user.deactivatePackage", json!({"id": wk}));
    assert_eq!(r[0]["status"], "deactivated");
    let r = ok(api, "user.closePackage", json!({"id": wk}));
    assert_eq!(r[0]["status"], "closed");
    let e = refused(api, "user.activatePackage", json!({"id": wk}));
    assert!(e.contains("no open client package"), "{e}");
    let e = refused(api, "user.closePackage", json!({"id": 4242}));
    assert!(e.contains("4242"), "{e}");
    // The closed one is listed only with include_closed.
    let open = ok(api, "user.getPackages", json!({"user_id": id}));
    assert_eq!(open.as_array().unwrap().len(), 1);
    assert_eq!(packages(api, id).len(), 2);
    stop(srv);
}

/// SIGKILLs while back-dated activations renew: after every restart the renewals a kill
/// interrupted are done once, and in the end each package has exactly one fee per period
/// of an unbroken chain from its anchor, and the credit lost exactly those fees.
#[test]
fn kill9_during_renewals_never_charges_a_fee_twice() {
    const N: usize = 40;
    let t = site();
    let (mut srv, _, mut api) = t.serve();
    let ids: Vec<i64> = (0..N)
        .map(|i| new_client(api, &format!("k{i}"), "100"))
        .collect();
    let pids: Vec<i64> = ids.iter().map(|&id| assign(api, id, "daily")).collect();
    let day0 = today_local() - chrono::Days::new(20);
    let anchor = daily_boundary(day0, 0).to_rfc3339();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    for round in 0..10 {
        // Activate what is still assigned while a kill comes at a random moment.
        let pending: Vec<(i64, i64)> = ids
            .iter()
            .zip(&pids)
            .filter(|(id, _)| packages(api, **id)[0]["status"] == "assigned")
            .map(|(a, b)| (*a, *b))
            .collect();
        if pending.is_empty() {
            break;
        }
        let pid_srv = srv.pid() as i32;
        let delay = 10 + next(150);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            common::unsafe_kill(pid_srv, 9);
        });
        for (_, pid) in &pending {
            let body = json!({"method": "user.activatePackage",
                "params": adm(json!({"id": pid, "start": anchor})), "id": 1})
            .to_string();
            // The server may die under us: any answer, or none.
            if std::panic::catch_unwind(|| common::http_post(api, body.as_bytes())).is_err() {
                break;
            }
        }
        killer.join().unwrap();
        srv.kill9();
        let (s, _, a) = t.serve();
        srv = s;
        api = a;
        eprintln!(
            "round {round}: {} activations pending before the kill",
            pending.len()
        );
    }
    // Whatever is left, activated without a kill.
    for (id, pid) in ids.iter().zip(&pids) {
        if packages(api, *id)[0]["status"] == "assigned" {
            ok(
                api,
                "user.activatePackage",
                json!({"id": pid, "start": anchor}),
            );
        }
    }
    let now = Utc::now();
    let expected = (0..)
        .take_while(|k| daily_boundary(day0, *k) <= now)
        .count();
    // A restart renews what a kill interrupted at its first housekeeping.
    wait_for(
        || ids.iter().all(|&id| fees_count(api, id) == expected),
        "every client's renewals",
    );
    for &id in &ids {
        let fees = fees(api, id);
        // One fee per period, the periods an unbroken chain from the anchor to now.
        assert_eq!(fees.len(), expected, "client {id}: {fees:?}");
        for (k, (amount, comment)) in fees.iter().enumerate() {
            assert_eq!(*amount, d("-1.00"));
            assert_eq!(
                *comment,
                period_comment(
                    "daily",
                    daily_boundary(day0, k as u32),
                    daily_boundary(day0, k as u32 + 1)
                )
            );
        }
        assert_eq!(credit(api, id), d("100") - Decimal::from(expected as i64));
        let p = &packages(api, id)[0];
        assert_eq!(p["status"], "active");
        assert_eq!(
            p["period_end"],
            fmt_local(daily_boundary(day0, expected as u32))
        );
    }
    stop(srv);
}

// ---- RADIUS and xDR helpers -------------------------------------------------------------

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// An Accounting-Request whose Event-Timestamp is `at + secs`.
fn acct_at(
    ident: u8,
    status: u32,
    user: &str,
    sid: &str,
    secs: u32,
    octets_out: u64,
    at: DateTime<Utc>,
) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, ident);
    rfc2866::add_acct_status_type(&mut p, status);
    rfc2865::add_user_name(&mut p, user);
    rfc2866::add_acct_session_id(&mut p, sid);
    rfc2866::add_acct_session_time(&mut p, secs);
    rfc2866::add_acct_input_octets(&mut p, 0);
    rfc2866::add_acct_output_octets(&mut p, octets_out as u32);
    rfc2869::add_acct_output_gigawords(&mut p, (octets_out >> 32) as u32);
    rfc2869::add_event_timestamp(&mut p, &(at + chrono::Duration::seconds(secs as i64)));
    p.encode().unwrap()
}

/// Sends and waits for a verified Accounting-Response.
fn send(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> bool {
    common::send(sock, to, req).is_some()
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (session id, package_seconds, package_bytes, credit_used) of every xDR, by session id.
fn package_columns(data: &Path) -> Vec<(String, i64, i64, Decimal)> {
    let mut out = Vec::new();
    for p in std::fs::read_dir(data.join("xdr")).unwrap() {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let sid = col::<StringArray>(&b, "session_id");
                let ps = col::<Int64Array>(&b, "package_seconds");
                let pb = col::<Int64Array>(&b, "package_bytes");
                let cu = col::<Decimal128Array>(&b, "credit_used");
                for r in 0..b.num_rows() {
                    out.push((
                        sid.value(r).to_string(),
                        ps.value(r),
                        pb.value(r),
                        Decimal::from_i128_with_scale(cu.value(r), 10).normalize(),
                    ));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
