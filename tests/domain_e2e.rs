//! Issue 11 end to end: the billing domain (clients with radius/voip/dn accounts,
//! companies, lifecycle, the typed journal, charge cancellation, import while serving)
//! through the real `ratel serve` binary: RADIUS over real UDP (radius-rs packets), the
//! IBSng JSON-RPC over real HTTP, CDR files of the three built-in formats dropped into the
//! spool, xDRs read back from Parquet with the parquet crate, the ledger opened after a
//! graceful stop.
//!
//! Every expected amount is computed here by hand from the config below (the arithmetic is
//! in a comment beside it), never read back from the code under test:
//! - group `g`: charge rules "day" 08:00-24:00 at 0.0100/min and 0.5000/GB, "night"
//!   00:00-08:00 at 0.0050/min and 0.2500/GB; tariff `std`; 4 decimals, rounding up;
//! - group `g2`: one rule "flat" all day at 0.0200/min and 1.0000/GB; tariff `std`;
//! - tariff `std`: prefix 1 at 0.0100/min, no connect fee, 60/60 increments; prefix 44 at
//!   0.0300/min, connect fee 0.0100, 30/6 increments.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{
    Array, Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use chrono::{DateTime, TimeZone, Utc};
use common::{acct, client, col, d, send, unsafe_kill, SECRET};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866, rfc2869};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
auth_listen = "127.0.0.1:0"
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
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
name = "day"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "08:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[charge_rule]]
name = "night"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "08:00"
price_per_minute = "0.0050"
price_per_gb = "0.2500"
[[charge_rule]]
name = "flat"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "24:00"
price_per_minute = "0.0200"
price_per_gb = "1.0000"
[[group]]
name = "g"
charge_rules = ["night", "day"]
tariff = "std"
decimals = 4
rounding = "up"
[[group]]
name = "g2"
charge_rules = ["flat"]
tariff = "std"
decimals = 4
rounding = "up"
[[tariff]]
name = "std"
rates = "rates.csv"
"#;

const RATES: &str =
    "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n\
1,USA,0.0100,0,60,60\n\
44,UK,0.0300,0.0100,30,6\n";

const GENERIC_HEADER: &str = "call_id,caller,callee,start_time,duration_s,disposition,account\n";

/// A data dir with the config above; no clients yet.
struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ratel.toml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("rates.csv"), RATES).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        T { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("ratel.toml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn serve(&self) -> Srv {
        Srv::start(&self.config())
    }

    /// Drops `content` into the spool as `sub/name` (sub "" = the spool itself): written
    /// under a hidden name, then renamed, so serve never sees half a file.
    fn drop_cdr(&self, sub: &str, name: &str, content: &str) {
        let dir = if sub.is_empty() {
            self.spool()
        } else {
            self.spool().join(sub)
        };
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    /// Waits (at most 10 s) until `n` files were moved to `spool/done/`; none may fail.
    fn wait_spool_done(&self, n: usize) {
        let done = self.spool().join("done");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = std::fs::read_dir(&done)
                .map(|d| d.flatten().count())
                .unwrap_or(0);
            let failed: Vec<String> = std::fs::read_dir(self.spool().join("failed"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            assert!(failed.is_empty(), "spool files failed: {failed:?}");
            if got >= n {
                assert_eq!(got, n, "files in spool/done");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} spool files rated within 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A running `ratel serve` with the addresses it printed; killed on drop.
struct Srv {
    child: Option<Child>,
    radius: SocketAddr,
    auth: SocketAddr,
    api: SocketAddr,
    /// `serve`'s `ready:` line (the core loaded its state and answers RADIUS).
    ready: String,
}

impl Srv {
    fn start(config: &Path) -> Srv {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_ratel"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RATEL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut radius, mut auth) = (None, None);
        let addr = |rest: &str| -> SocketAddr {
            rest.split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .parse()
                .unwrap()
        };
        let api = loop {
            let line = lines.next().expect("serve printed its addresses").unwrap();
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("RADIUS accounting on udp://") {
                radius = Some(addr(rest));
            }
            if let Some(rest) = line.strip_prefix("RADIUS authorization on udp://") {
                auth = Some(addr(rest));
            }
            if let Some(rest) = line.strip_prefix("JSON-RPC API on http://") {
                break addr(rest);
            }
        };
        let ready = loop {
            let line = lines.next().expect("serve printed its ready line").unwrap();
            if line.trim().starts_with("ready:") {
                break line.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Srv {
            child: Some(child),
            radius: radius.expect("accounting address printed"),
            auth: auth.expect("authorization address printed"),
            api,
            ready,
        }
    }

    /// SIGTERM; a graceful stop flushes everything and exits 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id() as i32, 15);
        let status = child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- JSON-RPC ---------------------------------------------------------------------------

/// Admin auth params merged with `extra`.
fn adm(extra: Value) -> Value {
    let mut p = json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys"});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

/// A NORMAL_USER's auth params merged with `extra`.
fn as_user(name: &str, pass: &str, extra: Value) -> Value {
    let mut p = json!({"auth_type": "NORMAL_USER", "auth_name": name, "auth_pass": pass});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

/// A call that must succeed: its result.
fn ok(api: SocketAddr, method: &str, params: Value) -> Value {
    let (r, e) = common::rpc(api, method, params.clone());
    assert_eq!(e, Value::Null, "{method} {params}: {e}");
    r
}

/// A call that must fail: its error code (the part before `|`) and the whole error.
fn err(api: SocketAddr, method: &str, params: Value) -> (String, String) {
    let (r, e) = common::rpc(api, method, params.clone());
    let text = e
        .as_str()
        .unwrap_or_else(|| panic!("{method} {params} succeeded: {r}"))
        .to_string();
    (text.split('|').next().unwrap().to_string(), text)
}

/// A JSON money value (a number with exact digits) as a Decimal.
fn money(v: &Value) -> Decimal {
    let t = v.to_string();
    d(t.trim_matches('"'))
}

/// A client made the IBSng way: addNewUsers, then its username and password.
fn new_client(
    api: SocketAddr,
    username: &str,
    password: &str,
    group: &str,
    credit: &str,
    comment: &str,
) -> i64 {
    let r = ok(
        api,
        "user.addNewUsers",
        adm(json!({"count": 1, "group_name": group, "credit": credit, "credit_comment": comment})),
    );
    let id = r[0].as_i64().unwrap_or_else(|| panic!("ids: {r}"));
    let r = ok(
        api,
        "user.updateUserAttrs",
        adm(json!({"user_id": id, "attrs": {"normal_user_spec":
            {"normal_username": username, "normal_password": password}}})),
    );
    assert_eq!(r, json!(""));
    id
}

/// updateUserAttrs with `attrs` (and `to_del_attrs`): must succeed.
fn update(api: SocketAddr, id: i64, attrs: Value, del: Value) {
    let r = ok(
        api,
        "user.updateUserAttrs",
        adm(json!({"user_id": id, "attrs": attrs, "to_del_attrs": del})),
    );
    assert_eq!(r, json!(""));
}

/// updateUserAttrs that must be refused: the error code.
fn update_refused(api: SocketAddr, id: i64, attrs: Value, del: Value) -> String {
    err(
        api,
        "user.updateUserAttrs",
        adm(json!({"user_id": id, "attrs": attrs, "to_del_attrs": del})),
    )
    .0
}

/// getUserInfo of one client by id.
fn info(api: SocketAddr, id: i64) -> Value {
    let r = ok(
        api,
        "user.getUserInfo",
        adm(json!({"user_id": id.to_string()})),
    );
    r[id.to_string()].clone()
}

fn credit_of(api: SocketAddr, id: i64) -> Decimal {
    money(&info(api, id)["basic_info"]["credit"])
}

/// The client's accounts as getUserInfo lists them, sorted.
fn accounts_of(api: SocketAddr, id: i64) -> Vec<String> {
    let i = info(api, id);
    let mut a: Vec<String> = i["attrs"]["accounts"]
        .as_array()
        .unwrap_or_else(|| panic!("accounts: {i}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// ---- RADIUS -----------------------------------------------------------------------------

static NEXT_ID: AtomicU8 = AtomicU8::new(1);

fn next_id() -> u8 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// 2026-11-02 (a Monday) at `h:m` UTC, plus `day` days.
fn at(day: i64, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, m, 0).unwrap() + chrono::Duration::days(day)
}

/// An Accounting-Request of a session that logged in at `login`: Event-Timestamp
/// `login + secs`.
#[allow(clippy::too_many_arguments)]
fn acct_at(
    status: u32,
    user: &str,
    sid: &str,
    login: DateTime<Utc>,
    secs: u32,
    octets_in: u64,
    octets_out: u64,
) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, next_id());
    rfc2866::add_acct_status_type(&mut p, status);
    rfc2865::add_user_name(&mut p, user);
    rfc2866::add_acct_session_id(&mut p, sid);
    rfc2866::add_acct_session_time(&mut p, secs);
    rfc2866::add_acct_input_octets(&mut p, octets_in as u32);
    rfc2869::add_acct_input_gigawords(&mut p, (octets_in >> 32) as u32);
    rfc2866::add_acct_output_octets(&mut p, octets_out as u32);
    rfc2869::add_acct_output_gigawords(&mut p, (octets_out >> 32) as u32);
    rfc2869::add_event_timestamp(&mut p, &(login + chrono::Duration::seconds(secs as i64)));
    if status == 2 {
        rfc2866::add_acct_terminate_cause(&mut p, 1);
    }
    p.encode().unwrap()
}

/// A whole session: Start at `login`, Stop after `secs` with `bytes_in` octets in.
fn session(
    c: &UdpSocket,
    radius: SocketAddr,
    user: &str,
    sid: &str,
    login: DateTime<Utc>,
    secs: u32,
    bytes_in: u64,
) {
    let start = acct_at(1, user, sid, login, 0, 0, 0);
    assert!(send(c, radius, &start).is_some(), "Start {sid} answered");
    let stop = acct_at(2, user, sid, login, secs, bytes_in, 0);
    assert!(send(c, radius, &stop).is_some(), "Stop {sid} answered");
}

/// An Access-Request with PAP; the reply's code (2 Accept, 3 Reject), its authenticator
/// checked with radius-rs.
fn access(c: &UdpSocket, auth: SocketAddr, user: &str, pw: &str) -> u8 {
    let mut p = Packet::new_with_identifier(Code::AccessRequest, SECRET, next_id());
    rfc2865::add_user_name(&mut p, user);
    rfc2865::add_user_password(&mut p, pw.as_bytes()).unwrap();
    let req = p.encode().unwrap();
    c.send_to(&req, auth).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = c.recv_from(&mut buf).expect("an Access-Accept or -Reject");
    assert_eq!(buf[1], req[1], "identifier echoed");
    assert!(
        Packet::is_authentic_response(&buf[..n], &req, SECRET),
        "response authenticator"
    );
    buf[0]
}

const ACCEPT: u8 = 2;
const REJECT: u8 = 3;

// ---- xDRs -------------------------------------------------------------------------------

/// The columns of one xDR these tests look at.
#[derive(Debug, Clone, PartialEq)]
struct X {
    xdr_id: u64,
    service: String,
    status: String,
    user_id: Option<i64>,
    username: String,
    account: Option<String>,
    refund_of: Option<u64>,
    session_id: String,
    called: String,
    credit_used: Decimal,
    logout: i64,
}

impl X {
    /// What identifies the record in these tests: the session id of a RADIUS session, the
    /// (unique) called number of a call.
    fn key(&self) -> &str {
        if self.service == "Internet" {
            &self.session_id
        } else {
            &self.called
        }
    }
}

/// Every xDR in the Parquet tree (complete files only), in xdr_id order.
fn read_xdrs(data: &Path) -> Vec<X> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(data.join("xdr")) else {
        return out;
    };
    for day in days.flatten() {
        let Ok(files) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for f in files.flatten() {
            let f = f.path();
            if f.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ids = col::<UInt64Array>(&b, "xdr_id");
                let service = col::<StringArray>(&b, "service_type");
                let status = col::<StringArray>(&b, "status");
                let user_id = col::<Int64Array>(&b, "user_id");
                let username = col::<StringArray>(&b, "username");
                let account = col::<StringArray>(&b, "account");
                let refund_of = col::<UInt64Array>(&b, "refund_of");
                let sid = col::<StringArray>(&b, "session_id");
                let called = col::<StringArray>(&b, "called_number");
                let cu = col::<Decimal128Array>(&b, "credit_used");
                let logout = col::<TimestampMicrosecondArray>(&b, "logout_time");
                for r in 0..b.num_rows() {
                    out.push(X {
                        xdr_id: ids.value(r),
                        service: service.value(r).into(),
                        status: status.value(r).into(),
                        user_id: (!user_id.is_null(r)).then(|| user_id.value(r)),
                        username: username.value(r).into(),
                        account: (!account.is_null(r)).then(|| account.value(r).to_string()),
                        refund_of: (!refund_of.is_null(r)).then(|| refund_of.value(r)),
                        session_id: sid.value(r).into(),
                        called: called.value(r).into(),
                        credit_used: Decimal::from_i128_with_scale(cu.value(r), 10).normalize(),
                        logout: logout.value(r) / 1_000_000,
                    });
                }
            }
        }
    }
    out.sort_by_key(|x| x.xdr_id);
    out
}

fn ledger(t: &T) -> ratel_engine::ledger::Ledger {
    ratel_engine::ledger::Ledger::open(&t.data()).unwrap()
}

/// A client's credit in the ledger (serve stopped).
fn ledger_credit(t: &T, id: i64) -> Decimal {
    ledger(t)
        .load_users()
        .unwrap()
        .into_iter()
        .find(|u| u.user_id == id)
        .unwrap_or_else(|| panic!("user {id} in the ledger"))
        .credit
}

/// Waits (at most 10 s) until `n` xDRs of `user_id` are in Parquet (the outbox is flushed
/// every second). The tests that cancel charges or read reports call it first, so that they
/// do not depend on the race between a reader and the outbox flush (see
/// `cancelling_while_the_outbox_flushes_misses_nothing`).
fn wait_in_parquet(t: &T, user_id: i64, n: usize) -> Vec<X> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let x = read_xdrs(&t.data());
        let got = x.iter().filter(|r| r.user_id == Some(user_id)).count();
        if got >= n {
            assert_eq!(got, n, "xDRs of user {user_id}: {x:?}");
            return x;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} xDRs of user {user_id} in Parquet after 10 s: {x:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (key, user_id, account, status, credit_used) as written out in a test.
type WantRow<'a> = (&'a str, Option<i64>, Option<&'a str>, &'a str, &'a str);
/// (key, user_id, account, status, credit_used) as read back.
type GotRow = (String, Option<i64>, Option<String>, String, Decimal);
/// (session_id, user_id, username, account, status, credit_used).
type SessionRow = (String, Option<i64>, String, Option<String>, String, Decimal);

/// The subscriber and open-session counts of a `ready:` line.
fn ready_counts(line: &str) -> (u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |after: &str| -> u64 {
        let i = words.iter().position(|w| *w == after).unwrap();
        words[i - 1].parse().unwrap()
    };
    (n("subscribers"), n("open"))
}

#[test]
fn serve_says_when_its_core_answers_and_what_it_loaded() {
    let t = T::new();
    let srv = t.serve();
    assert_eq!(ready_counts(&srv.ready), (0, 0), "{}", srv.ready);
    assert!(srv.ready.ends_with("answering RADIUS"), "{}", srv.ready);
    let api = srv.api;
    new_client(api, "alice", "apw", "g", "100", "");
    new_client(api, "bob", "bpw", "g", "50", "");
    new_client(api, "carol", "cpw", "g", "50", "");
    // Two sessions opened, one of them closed again: one stays open across the restart.
    let c = client();
    assert!(send(&c, srv.radius, &acct(1, 1, "alice", "s1", 0, 0, 0, None)).is_some());
    assert!(send(&c, srv.radius, &acct(2, 1, "bob", "s2", 0, 0, 0, None)).is_some());
    assert!(send(&c, srv.radius, &acct(3, 2, "bob", "s2", 60, 10, 0, Some(1))).is_some());
    srv.stop();
    let srv = t.serve();
    assert_eq!(ready_counts(&srv.ready), (3, 1), "{}", srv.ready);
    srv.stop();
}

// ---- 1. one client, many accounts, one balance ------------------------------------------

/// One client with two radius accounts, a voip account and two DNs (added in different
/// written forms), charged by RADIUS sessions on both radius accounts and by CDR files of
/// all three formats matched by accountcode, by radius name in the account field and by
/// caller number (written differently again); one CDR matches nobody. One balance.
#[test]
fn one_client_with_many_accounts_has_one_balance() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;

    let alice = new_client(api, "alice", "apw", "g", "100", "opening");
    // Accounts added in three calls, the DNs in two different written forms.
    update(
        api,
        alice,
        json!({"accounts": "radius:alice2;voip:1001"}),
        json!([]),
    );
    update(
        api,
        alice,
        json!({"accounts": "dn:+1 (917) 375-0980"}),
        json!([]),
    );
    update(
        api,
        alice,
        json!({"accounts": "dn:0044 20 7946 0000"}),
        json!([]),
    );
    assert_eq!(
        accounts_of(api, alice),
        sorted(&[
            "radius:alice",
            "radius:alice2",
            "voip:1001",
            "dn:19173750980",
            "dn:442079460000"
        ])
    );
    // Another client beside her: nothing of hers may land there.
    let bob = new_client(api, "bob", "bpw", "g", "50", "");
    update(api, bob, json!({"accounts": "voip:2002"}), json!([]));

    // RADIUS on both radius accounts (t0 = Monday 10:00 UTC, "day": 0.01/min, 0.5/GB).
    let c = client();
    let gb = 1_000_000_000u64;
    assert!(send(&c, srv.radius, &acct(1, 1, "alice", "s1", 0, 0, 0, None)).is_some());
    assert!(send(&c, srv.radius, &acct(2, 3, "alice", "s1", 600, gb, 0, None)).is_some());
    assert!(send(
        &c,
        srv.radius,
        &acct(3, 2, "alice", "s1", 1200, 2 * gb, gb / 2, Some(1))
    )
    .is_some());
    assert!(send(&c, srv.radius, &acct(4, 1, "alice2", "s2", 0, 0, 0, None)).is_some());
    assert!(send(
        &c,
        srv.radius,
        &acct(5, 3, "alice2", "s2", 300, 100_000_000, 0, None)
    )
    .is_some());
    assert!(send(
        &c,
        srv.radius,
        &acct(6, 2, "alice2", "s2", 900, 300_000_000, 123_456_789, Some(1))
    )
    .is_some());
    // s1: 20 min * 0.01 = 0.20; (2 + 0.5) GB * 0.5 = 1.25 -> 1.45.
    // s2: 15 min * 0.01 = 0.15; 0.423456789 GB * 0.5 = 0.2117283945 -> 0.3617283945 -> up
    //     0.3618.
    // 100 - 1.45 - 0.3618 = 98.1882
    assert_eq!(credit_of(api, alice), d("98.1882"));

    // CDRs, dropped only now that every account exists.
    t.drop_cdr(
        "",
        "calls.csv",
        &format!(
            "{GENERIC_HEADER}\
             g-voip,5550001,15551230001,2026-11-02T11:00:00Z,61,ANSWERED,1001\n\
             g-name,5550002,15551230002,2026-11-02T11:05:00Z,200,ANSWERED,alice\n\
             g-dn1,0019173750980,442071230003,2026-11-02T11:10:00Z,45,ANSWERED,\n\
             g-unknown,5559999,15551230004,2026-11-02T11:20:00Z,30,ANSWERED,nobody\n\
             g-bob,5552222,15551230005,2026-11-02T11:30:00Z,100,ANSWERED,2002\n"
        ),
    );
    t.drop_cdr(
        "asterisk",
        "Master.csv",
        concat!(
            r#""alice2","5551000","15551230006","from-internal","""Alice"" <5551000>","SIP/100-0001","SIP/trunk-0002","Dial","SIP/trunk/15551230006","2026-11-02 12:00:00","2026-11-02 12:00:00","2026-11-02 12:00:30",30,30,"ANSWERED","DOCUMENTATION","1762084800.1","""#,
            "\n",
            r#""","+44 20 7946 0000","442079461111","from-pstn","""UK"" <442079460000>","SIP/trunk-0003","SIP/100-0004","Dial","SIP/100","2026-11-02 12:10:00","2026-11-02 12:10:00","2026-11-02 12:11:40",100,100,"ANSWERED","DOCUMENTATION","1762085400.2","""#,
            "\n",
        ),
    );
    t.drop_cdr(
        "freeswitch",
        "Master.csv",
        concat!(
            r#""Alice","1001","+15551230007","default","2026-11-02 13:00:00","2026-11-02 13:00:05","2026-11-02 13:03:05","185","180","NORMAL_CLEARING","f-voip-0001","","1001","PCMU","PCMU""#,
            "\n",
            r#""Alice UK","442079460000","15551230008","default","2026-11-02 13:10:00","2026-11-02 13:10:00","2026-11-02 13:11:30","90","90","NORMAL_CLEARING","f-dn2-0002","","","PCMU","PCMU""#,
            "\n",
            r#""Alice US","+19173750980","15551230009","default","2026-11-02 13:20:00","2026-11-02 13:20:00","2026-11-02 13:20:59","59","59","NORMAL_CLEARING","f-dn1-0003","","pbx-trunk-7","PCMU","PCMU""#,
            "\n",
        ),
    );
    t.wait_spool_done(3);

    // VoIP (prefix 1: 0.01/min 60/60; prefix 44: 0.03/min + 0.01, 30/6):
    //   g-voip  61 s -> 120 s = 0.02           a-radius 30 s -> 60 s = 0.01
    //   g-name 200 s -> 240 s = 0.04           a-dn2   100 s (44) -> 30 + 12*6 = 102 s
    //   g-dn1   45 s (44) -> 30 + 3*6 = 48 s           = 0.051 + 0.01 = 0.061
    //           = 0.024 + 0.01 = 0.034         f-voip 180 s = 0.03
    //   g-bob  100 s -> 120 s = 0.02 (bob)     f-dn2   90 s -> 120 s = 0.02
    //                                          f-dn1   59 s -> 60 s = 0.01
    // alice VoIP: 0.02 + 0.04 + 0.034 + 0.01 + 0.061 + 0.03 + 0.02 + 0.01 = 0.225
    // alice: 100 - 1.45 - 0.3618 - 0.225 = 97.9632; bob: 50 - 0.02 = 49.98.
    assert_eq!(credit_of(api, alice), d("97.9632"));
    assert_eq!(credit_of(api, bob), d("49.98"));
    srv.stop();

    assert_eq!(ledger_credit(&t, alice), d("97.9632"));
    assert_eq!(ledger_credit(&t, bob), d("49.98"));
    assert_eq!(
        ledger(&t).journal_sum(alice, None).unwrap(),
        d("97.9632"),
        "alice's journal sums to her balance"
    );

    // key -> (user, account, status, credit_used)
    let want: Vec<WantRow> = vec![
        ("s1", Some(alice), Some("alice"), "OK", "1.45"),
        ("s2", Some(alice), Some("alice2"), "OK", "0.3618"),
        ("15551230001", Some(alice), Some("1001"), "OK", "0.02"),
        ("15551230002", Some(alice), Some("alice"), "OK", "0.04"),
        (
            "442071230003",
            Some(alice),
            Some("19173750980"),
            "OK",
            "0.034",
        ),
        ("15551230004", None, None, "UNKNOWN_USER", "0"),
        ("15551230005", Some(bob), Some("2002"), "OK", "0.02"),
        ("15551230006", Some(alice), Some("alice2"), "OK", "0.01"),
        (
            "442079461111",
            Some(alice),
            Some("442079460000"),
            "OK",
            "0.061",
        ),
        ("+15551230007", Some(alice), Some("1001"), "OK", "0.03"),
        (
            "15551230008",
            Some(alice),
            Some("442079460000"),
            "OK",
            "0.02",
        ),
        (
            "15551230009",
            Some(alice),
            Some("19173750980"),
            "OK",
            "0.01",
        ),
    ];
    let x = read_xdrs(&t.data());
    let mut got: Vec<GotRow> = x
        .iter()
        .map(|x| {
            (
                x.key().to_string(),
                x.user_id,
                x.account.clone(),
                x.status.clone(),
                x.credit_used,
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<GotRow> = want
        .into_iter()
        .map(|(k, u, a, s, c)| (k.to_string(), u, a.map(str::to_string), s.to_string(), d(c)))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "every xDR: user, account, status, credit_used");
    for r in &x {
        let name = match r.user_id {
            Some(id) if id == alice => "alice",
            Some(id) if id == bob => "bob",
            _ => "nobody",
        };
        assert_eq!(r.username, name, "username of {}", r.key());
    }
    // One balance: what her xDRs took is what her credit lost.
    let used: Decimal = x
        .iter()
        .filter(|r| r.user_id == Some(alice))
        .map(|r| r.credit_used)
        .sum();
    assert_eq!(used, d("100") - d("97.9632"));
    assert_eq!(used, d("2.0368"));
}

// ---- 2. lifecycle -----------------------------------------------------------------------

#[test]
fn client_lifecycle_and_refusals() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let c = client();
    let carol = new_client(api, "carol", "cpw", "g", "20", "");
    let dave = new_client(api, "dave", "dpw", "g", "3", "");
    update(
        api,
        dave,
        json!({"accounts": "dn:+1 (212) 555-0100"}),
        json!([]),
    );
    let status = |api: SocketAddr, id: i64| info(api, id)["basic_info"]["client_status"].clone();
    assert_eq!(status(api, carol), "active");
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), ACCEPT);

    // Lock: refused authorization, usage still charged.
    update(api, carol, json!({"lock": "unpaid invoice"}), json!([]));
    let i = info(api, carol);
    assert_eq!(i["basic_info"]["client_status"], "locked");
    assert_eq!(i["attrs"]["lock"], "unpaid invoice");
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), REJECT);
    // c0: 300 s in "day" = 5 min * 0.01 = 0.05.
    session(&c, srv.radius, "carol", "c0", at(0, 10, 0), 300, 0);
    assert_eq!(credit_of(api, carol), d("19.95"));
    update(api, carol, json!({}), json!(["lock"]));
    let i = info(api, carol);
    assert_eq!(i["basic_info"]["client_status"], "active");
    assert!(i["attrs"].get("lock").is_none(), "{i}");
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), ACCEPT);

    // Archive and back.
    update(api, carol, json!({"archived": "1"}), json!([]));
    assert_eq!(status(api, carol), "archived");
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), REJECT);
    update(api, carol, json!({"archived": "0"}), json!([]));
    assert_eq!(status(api, carol), "active");
    update(api, carol, json!({"archived": "1"}), json!([]));
    update(api, carol, json!({}), json!(["archived"]));
    assert_eq!(status(api, carol), "active");
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), ACCEPT);

    // c1 in group g: 600 s = 10 min * 0.01 = 0.10.
    session(&c, srv.radius, "carol", "c1", at(0, 10, 0), 600, 0);
    // Another group: its prices apply from now on.
    update(api, carol, json!({"group_name": "g2"}), json!([]));
    assert_eq!(info(api, carol)["basic_info"]["group_name"], "g2");
    // c2 in g2 ("flat" 0.02/min): 600 s = 10 min * 0.02 = 0.20.
    session(&c, srv.radius, "carol", "c2", at(0, 10, 0), 600, 0);
    // 20 - 0.05 - 0.10 - 0.20 = 19.65
    assert_eq!(credit_of(api, carol), d("19.65"));

    // Another company.
    let isp = ok(
        api,
        "isp.addNewISP",
        adm(json!({"isp_name": "ResellerX", "isp_type": 10, "prepaid": true})),
    )
    .as_i64()
    .expect("company id");
    assert_ne!(isp, 1, "Main is company 1");
    let all = ok(api, "isp.getAllISPs", adm(json!({})));
    let names: Vec<(i64, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["isp_id"].as_i64().unwrap(),
                c["isp_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(names.contains(&(1, "Main".into())), "{all}");
    assert!(names.contains(&(isp, "ResellerX".into())), "{all}");
    assert_eq!(info(api, carol)["basic_info"]["isp_name"], "Main");
    update(api, carol, json!({"isp_name": "ResellerX"}), json!([]));
    let i = info(api, carol);
    assert_eq!(i["basic_info"]["isp_name"], "ResellerX");
    assert_eq!(i["basic_info"]["isp_id"], isp);

    // Profile fields: set, then cleared.
    update(
        api,
        carol,
        json!({"email": "carol@example.com", "name": "Carol C.", "custom.vat": "DE123"}),
        json!([]),
    );
    let i = info(api, carol);
    assert_eq!(i["attrs"]["email"], "carol@example.com");
    assert_eq!(i["attrs"]["name"], "Carol C.");
    assert_eq!(i["attrs"]["custom.vat"], "DE123");
    update(api, carol, json!({}), json!(["email", "custom.vat"]));
    let i = info(api, carol);
    let unset = |v: Option<&Value>| v.is_none_or(Value::is_null);
    assert!(unset(i["attrs"].get("email")), "{i}");
    assert!(unset(i["attrs"].get("custom.vat")), "{i}");
    assert_eq!(i["attrs"]["name"], "Carol C.");

    // Refusals, each applied as a whole or not at all.
    assert_eq!(
        update_refused(
            api,
            carol,
            json!({"email": "x@example.com", "group_name": "nope"}),
            json!([])
        ),
        "GROUP_NOT_FOUND"
    );
    assert_eq!(
        update_refused(
            api,
            carol,
            json!({"email": "x@example.com", "isp_name": "NoSuchCo"}),
            json!([])
        ),
        "ISP_NOT_FOUND"
    );
    // Dave's DN written another way.
    assert_eq!(
        update_refused(
            api,
            carol,
            json!({"email": "x@example.com", "accounts": "dn:001-212-555-0100"}),
            json!([])
        ),
        "ACCOUNT_EXISTS"
    );
    assert_eq!(
        update_refused(
            api,
            carol,
            json!({"normal_user_spec": {"normal_username": "dave", "normal_password": "x"}}),
            json!([])
        ),
        "NORMAL_USERNAME_EXISTS"
    );
    let i = info(api, carol);
    assert!(
        unset(i["attrs"].get("email")),
        "a refused change applied: {i}"
    );
    assert_eq!(i["basic_info"]["group_name"], "g2");
    assert_eq!(i["basic_info"]["isp_name"], "ResellerX");
    assert_eq!(accounts_of(api, carol), sorted(&["radius:carol"]));
    assert_eq!(
        accounts_of(api, dave),
        sorted(&["radius:dave", "dn:12125550100"])
    );

    // Rename: the old name stops charging.
    update(
        api,
        carol,
        json!({"normal_user_spec": {"normal_username": "carla", "normal_password": "cpw2"}}),
        json!([]),
    );
    let (code, _) = err(
        api,
        "user.getUserInfo",
        adm(json!({"normal_username": "carol"})),
    );
    assert_eq!(code, "NORMAL_USERNAME_DOESNT_EXISTS");
    let r = ok(
        api,
        "user.getUserInfo",
        adm(json!({"normal_username": "carla"})),
    );
    assert_eq!(r[carol.to_string()]["attrs"]["normal_username"], "carla");
    assert_eq!(accounts_of(api, carol), sorted(&["radius:carla"]));
    assert_eq!(access(&c, srv.auth, "carol", "cpw"), REJECT);
    assert_eq!(access(&c, srv.auth, "carla", "cpw2"), ACCEPT);
    // c3 on the old name: UNKNOWN_USER, her balance untouched.
    session(&c, srv.radius, "carol", "c3", at(0, 10, 0), 600, 0);
    assert_eq!(credit_of(api, carol), d("19.65"));
    // c4 on the new name, group g2: 300 s = 5 min * 0.02 = 0.10 -> 19.55.
    session(&c, srv.radius, "carla", "c4", at(0, 10, 0), 300, 0);
    assert_eq!(credit_of(api, carol), d("19.55"));

    // A client may not change itself through updateUserAttrs.
    let (code, _) = err(
        api,
        "user.updateUserAttrs",
        as_user(
            "carla",
            "cpw2",
            json!({"user_id": carol, "attrs": {"email": "me@example.com"}}),
        ),
    );
    assert_eq!(code, "ACCESS_DENIED");

    // Delete, twice.
    let r = ok(
        api,
        "user.delUser",
        adm(json!({"user_id": dave, "delete_comment": "moved away"})),
    );
    assert_eq!(r, json!(true));
    let (code, _) = err(
        api,
        "user.delUser",
        adm(json!({"user_id": dave, "delete_comment": "again"})),
    );
    assert_eq!(code, "USER_ID_NOT_FOUND");
    let (code, _) = err(
        api,
        "user.getUserInfo",
        adm(json!({"user_id": dave.to_string()})),
    );
    assert_eq!(code, "USER_ID_NOT_FOUND");
    // Its username and DN are free again.
    let dave2 = new_client(api, "dave", "d2pw", "g", "1", "");
    assert_ne!(dave2, dave);
    update(
        api,
        carol,
        json!({"accounts": "dn:+1 212 555 0100"}),
        json!([]),
    );
    assert_eq!(
        accounts_of(api, carol),
        sorted(&["radius:carla", "dn:12125550100"])
    );
    srv.stop();

    // After a restart the ledger agrees: the old name still matches nobody.
    let srv = t.serve();
    let api = srv.api;
    session(&c, srv.radius, "carol", "c5", at(0, 10, 0), 60, 0);
    assert_eq!(credit_of(api, carol), d("19.55"));
    assert_eq!(
        accounts_of(api, carol),
        sorted(&["radius:carla", "dn:12125550100"])
    );
    assert_eq!(status(api, carol), "active");
    assert_eq!(info(api, carol)["basic_info"]["isp_name"], "ResellerX");
    let (code, _) = err(
        api,
        "user.getUserInfo",
        adm(json!({"user_id": dave.to_string()})),
    );
    assert_eq!(code, "USER_ID_NOT_FOUND");
    srv.stop();

    assert_eq!(ledger_credit(&t, carol), d("19.55"));
    // The deleted client's journal stays.
    assert_eq!(
        ledger(&t).journal_sum(dave, Some("payment")).unwrap(),
        d("3")
    );
    let x = read_xdrs(&t.data());
    let mut got: Vec<SessionRow> = x
        .iter()
        .map(|x| {
            (
                x.session_id.clone(),
                x.user_id,
                x.username.clone(),
                x.account.clone(),
                x.status.clone(),
                x.credit_used,
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let s = |v: &str| v.to_string();
    assert_eq!(
        got,
        vec![
            (
                s("c0"),
                Some(carol),
                s("carol"),
                Some(s("carol")),
                s("OK"),
                d("0.05")
            ),
            (
                s("c1"),
                Some(carol),
                s("carol"),
                Some(s("carol")),
                s("OK"),
                d("0.1")
            ),
            (
                s("c2"),
                Some(carol),
                s("carol"),
                Some(s("carol")),
                s("OK"),
                d("0.2")
            ),
            (s("c3"), None, s("carol"), None, s("UNKNOWN_USER"), d("0")),
            (
                s("c4"),
                Some(carol),
                s("carla"),
                Some(s("carla")),
                s("OK"),
                d("0.1")
            ),
            (s("c5"), None, s("carol"), None, s("UNKNOWN_USER"), d("0")),
        ]
    );
}

// ---- 3. money history -------------------------------------------------------------------

#[test]
fn credit_changes_show_the_money_history() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let c = client();
    let erin = new_client(api, "erin", "epw", "g", "10", "welcome");
    let frank = new_client(api, "frank", "fpw", "g", "1", "");
    let r = ok(
        api,
        "user.changeCreditExtended",
        adm(
            json!({"user_id": erin, "credit": "5.5", "change_type": "ADD", "credit_comment": "top-up"}),
        ),
    );
    assert_eq!(r.as_array().unwrap().len(), 1);
    let i = info(api, erin);
    assert_eq!(i["basic_info"]["status"], "Recharged");
    assert_eq!(money(&i["basic_info"]["credit"]), d("15.5"));
    // e1: Monday 10:00, 1200 s in "day" = 20 min * 0.01 = 0.20.
    session(&c, srv.radius, "erin", "e1", at(0, 10, 0), 1200, 0);
    // e2: Monday 20:00, 600 s = 0.10 and 1 GB in * 0.5 = 0.50 -> 0.60.
    session(
        &c,
        srv.radius,
        "erin",
        "e2",
        at(0, 20, 0),
        600,
        1_000_000_000,
    );
    // 15.5 - 0.2 - 0.6 = 14.7
    assert_eq!(credit_of(api, erin), d("14.7"));
    wait_in_parquet(&t, erin, 2);
    // Cancel e2 (logout Monday 20:10).
    let r = ok(
        api,
        "user.cancelCharges",
        adm(
            json!({"user_id": erin, "from": "2026-11-02 19:00:00", "to": "2026-11-03 00:00:00", "comment": "goodwill"}),
        ),
    );
    assert_eq!(r["refunded"], 1, "{r}");
    assert_eq!(money(&r["amount"]), d("0.6"));
    // 14.7 + 0.6 = 15.3
    assert_eq!(money(&r["credit"]), d("15.3"));
    assert_eq!(credit_of(api, erin), d("15.3"));

    let changes = |extra: Value| {
        let mut p = json!({"user_id": erin});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = ok(api, "report.getCreditChanges", adm(p));
        let rows = r["report"].as_array().unwrap().clone();
        assert_eq!(r["total_rows"], rows.len(), "{r}");
        rows
    };
    let rows = changes(json!({}));
    // In id order; each row's balance_after is the one before plus its amount.
    let mut balance = Decimal::ZERO;
    let mut last_id = 0;
    for r in &rows {
        let id = r["id"].as_i64().unwrap();
        assert!(id > last_id, "ids increase: {rows:?}");
        last_id = id;
        assert_eq!(r["user_id"], erin);
        balance += money(&r["amount"]);
        assert_eq!(
            money(&r["balance_after"]),
            balance,
            "running balance at {r}"
        );
        let time = r["change_time"].as_str().unwrap();
        assert_eq!(time.len(), 19, "YYYY-MM-DD HH:MM:SS: {time}");
    }
    assert_eq!(
        money(&rows.last().unwrap()["balance_after"]),
        d("15.3"),
        "the last row's balance is the credit"
    );
    let of = |kind: &str| -> Vec<&Value> { rows.iter().filter(|r| r["kind"] == kind).collect() };
    let pay = of("payment");
    assert_eq!(pay.len(), 2, "{rows:?}");
    assert_eq!(
        (
            money(&pay[0]["amount"]),
            money(&pay[0]["balance_after"]),
            pay[0]["comment"].as_str().unwrap(),
            pay[0]["admin"].as_str().unwrap()
        ),
        (d("10"), d("10"), "welcome", "system")
    );
    assert_eq!(
        (
            money(&pay[1]["amount"]),
            money(&pay[1]["balance_after"]),
            pay[1]["comment"].as_str().unwrap(),
            pay[1]["admin"].as_str().unwrap()
        ),
        (d("5.5"), d("15.5"), "top-up", "system")
    );
    let usage = of("usage");
    assert!(!usage.is_empty(), "{rows:?}");
    assert!(usage.iter().all(|r| money(&r["amount"]) <= Decimal::ZERO));
    // -0.2 - 0.6
    assert_eq!(
        usage.iter().map(|r| money(&r["amount"])).sum::<Decimal>(),
        d("-0.8")
    );
    let refunds = of("refund");
    assert_eq!(refunds.len(), 1, "{rows:?}");
    assert_eq!(money(&refunds[0]["amount"]), d("0.6"));
    assert_eq!(money(&refunds[0]["balance_after"]), d("15.3"));
    assert_eq!(refunds[0]["comment"], "goodwill");
    assert_eq!(refunds[0]["admin"], "system");
    assert_eq!(
        refunds[0]["id"], r["journal_id"],
        "cancelCharges names its journal row"
    );
    assert_eq!(rows.len(), pay.len() + usage.len() + refunds.len());

    // The kinds filter.
    let p = changes(json!({"kinds": ["payment"]}));
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|r| r["kind"] == "payment"));
    let p = changes(json!({"kinds": ["refund"]}));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["kind"], "refund");
    let p = changes(json!({"kinds": ["usage", "refund"]}));
    assert_eq!(p.len(), usage.len() + 1);
    // -0.8 + 0.6
    assert_eq!(
        p.iter().map(|r| money(&r["amount"])).sum::<Decimal>(),
        d("-0.2")
    );
    assert!(changes(json!({"kinds": ["package_fee"]})).is_empty());
    let (code, _) = err(
        api,
        "report.getCreditChanges",
        adm(json!({"user_id": erin, "kinds": ["bonus"]})),
    );
    assert_eq!(code, "INVALID_PARAMS");
    // Time ranges (change_time is when the movement was booked: now).
    assert!(changes(json!({"to": "2000-01-01 00:00:00"})).is_empty());
    assert_eq!(
        changes(json!({"from": "2000-01-01 00:00:00", "to": "2100-01-01T00:00:00Z"})).len(),
        rows.len()
    );

    // A client reads its own history, and nobody else's.
    let r = ok(
        api,
        "report.getCreditChanges",
        as_user("erin", "epw", json!({"user_id": erin})),
    );
    assert_eq!(r["total_rows"], rows.len());
    let (code, _) = err(
        api,
        "report.getCreditChanges",
        as_user("erin", "epw", json!({"user_id": frank})),
    );
    assert_eq!(code, "ACCESS_DENIED");
    srv.stop();
    let l = ledger(&t);
    assert_eq!(l.journal_sum(erin, None).unwrap(), d("15.3"));
    assert_eq!(l.journal_sum(erin, Some("refund")).unwrap(), d("0.6"));
}

// ---- 4. refunds over a range, twice -----------------------------------------------------

#[test]
fn cancelling_charges_twice_refunds_once() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let c = client();
    let gus = new_client(api, "gus", "gpw", "g", "50", "");
    // All in "day" (0.01/min): r1 Mon 10:00-10:10 = 0.10; r2 Mon 12:00-12:20 = 0.20;
    // r3 Tue 09:00-09:05 = 0.05.
    session(&c, srv.radius, "gus", "r1", at(0, 10, 0), 600, 0);
    session(&c, srv.radius, "gus", "r2", at(0, 12, 0), 1200, 0);
    session(&c, srv.radius, "gus", "r3", at(1, 9, 0), 300, 0);
    // Calls (prefix 1, 60/60): c1 Mon 11:00, 61 s -> 120 s = 0.02 (ends 11:01:01);
    // c2 Tue 10:00, 30 s -> 60 s = 0.01.
    t.drop_cdr(
        "",
        "gus.csv",
        &format!(
            "{GENERIC_HEADER}\
             c1,5550101,15551230101,2026-11-02T11:00:00Z,61,ANSWERED,gus\n\
             c2,5550102,15551230102,2026-11-03T10:00:00Z,30,ANSWERED,gus\n"
        ),
    );
    t.wait_spool_done(1);
    // 50 - (0.10 + 0.20 + 0.05 + 0.02 + 0.01) = 50 - 0.38 = 49.62
    assert_eq!(credit_of(api, gus), d("49.62"));
    wait_in_parquet(&t, gus, 5);

    let (code, _) = err(
        api,
        "user.cancelCharges",
        adm(json!({"user_id": gus, "from": "2026-11-03 00:00:00", "to": "2026-11-02 00:00:00"})),
    );
    assert_eq!(code, "INVALID_PARAMS", "an empty range");
    // [Mon 10:10, Tue 09:05): r1 (logout exactly at `from`), c1, r2; not r3 (logout exactly
    // at `to`), not c2. 0.10 + 0.02 + 0.20 = 0.32; 49.62 + 0.32 = 49.94.
    let range = json!({"user_id": gus, "from": "2026-11-02 10:10:00", "to": "2026-11-03T09:05:00Z", "comment": "outage"});
    let r = ok(api, "user.cancelCharges", adm(range.clone()));
    assert_eq!(r["refunded"], 3, "{r}");
    assert_eq!(money(&r["amount"]), d("0.32"));
    assert_eq!(money(&r["credit"]), d("49.94"));
    assert!(r["journal_id"].as_i64().is_some(), "{r}");
    // Again: nothing more.
    let r = ok(api, "user.cancelCharges", adm(range));
    assert_eq!(r["refunded"], 0, "{r}");
    assert_eq!(money(&r["amount"]), d("0"));
    assert_eq!(money(&r["credit"]), d("49.94"));
    assert!(r["journal_id"].is_null(), "{r}");
    assert_eq!(credit_of(api, gus), d("49.94"));
    // A range overlapping the first: only r3 is new. 49.94 + 0.05 = 49.99.
    let r = ok(
        api,
        "user.cancelCharges",
        adm(
            json!({"user_id": gus, "from": "2026-11-02 00:00:00", "to": "2026-11-03 09:30:00", "comment": "more"}),
        ),
    );
    assert_eq!(r["refunded"], 1, "{r}");
    assert_eq!(money(&r["amount"]), d("0.05"));
    assert_eq!(money(&r["credit"]), d("49.99"));
    let refunds = ok(
        api,
        "report.getCreditChanges",
        adm(json!({"user_id": gus, "kinds": ["refund"]})),
    );
    assert_eq!(refunds["total_rows"], 2, "{refunds}");

    // After the outbox flush the REFUND xDRs are in Parquet.
    let x = wait_in_parquet(&t, gus, 9);
    // getConnections shows the REFUND rows with refund_of and account.
    let rep = ok(
        api,
        "report.getConnections",
        adm(json!({"conds": {"user_ids": gus.to_string()}, "from": 0, "to": 100})),
    );
    let rows = rep["report"].as_array().unwrap();
    assert_eq!(rows.len(), 9, "5 charges and 4 refunds: {rep}");
    let refund_rows: Vec<&Value> = rows.iter().filter(|r| r["status"] == "REFUND").collect();
    assert_eq!(refund_rows.len(), 4, "{rep}");
    for r in &refund_rows {
        assert!(r["refund_of"].as_u64().is_some(), "{r}");
        assert_eq!(r["account"], "gus", "{r}");
    }
    assert!(rows
        .iter()
        .filter(|r| r["status"] != "REFUND")
        .all(|r| r["refund_of"].is_null() && r["account"] == "gus"));

    let mine: Vec<&X> = x.iter().filter(|r| r.user_id == Some(gus)).collect();
    assert_eq!(mine.len(), 9, "{x:?}");
    let originals: Vec<&X> = mine.iter().copied().filter(|r| r.status == "OK").collect();
    let refunds: Vec<&X> = mine
        .iter()
        .copied()
        .filter(|r| r.status == "REFUND")
        .collect();
    assert_eq!(originals.len(), 5);
    assert_eq!(refunds.len(), 4);
    let mut refunded_keys: Vec<&str> = Vec::new();
    for r in &refunds {
        let of = r.refund_of.expect("refund_of set");
        let o = originals
            .iter()
            .find(|o| o.xdr_id == of)
            .unwrap_or_else(|| panic!("refund_of {of} names an original"));
        assert_eq!(r.credit_used, -o.credit_used, "{r:?}");
        assert_eq!(r.account, o.account);
        assert_eq!(r.account.as_deref(), Some("gus"));
        assert_eq!(r.logout, o.logout);
        assert!(r.xdr_id > o.xdr_id);
        refunded_keys.push(o.key());
    }
    refunded_keys.sort();
    assert_eq!(
        refunded_keys,
        vec!["15551230101", "r1", "r2", "r3"],
        "each refunded once"
    );
    assert!(originals.iter().all(|o| o.refund_of.is_none()));
    // Σ credit_used (originals + refunds) is what the ledger took: 0.38 - 0.37 = 0.01.
    let used: Decimal = mine.iter().map(|r| r.credit_used).sum();
    assert_eq!(used, d("0.01"));
    let took = ok(
        api,
        "report.getCreditChanges",
        adm(json!({"user_id": gus, "kinds": ["usage", "refund"]})),
    );
    let journal: Decimal = took["report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| money(&r["amount"]))
        .sum();
    assert_eq!(journal, -used);
    srv.stop();
    let l = ledger(&t);
    let ledger_took =
        l.journal_sum(gus, Some("usage")).unwrap() + l.journal_sum(gus, Some("refund")).unwrap();
    assert_eq!(ledger_took, -used);
    assert_eq!(ledger_credit(&t, gus), d("49.99"));
    // Nothing was written twice across the stop.
    let x = read_xdrs(&t.data());
    let mut ids: Vec<u64> = x.iter().map(|r| r.xdr_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), x.len());
    assert_eq!(x.iter().filter(|r| r.user_id == Some(gus)).count(), 9);
}

// ---- 5. import while serve runs ---------------------------------------------------------

/// A copy of the config whose `[api] listen` is the address serve got, for the CLI.
fn config_for_cli(t: &T, api: SocketAddr) -> PathBuf {
    let text = std::fs::read_to_string(t.config()).unwrap().replace(
        "[api]\nlisten = \"127.0.0.1:0\"",
        &format!("[api]\nlisten = \"{api}\""),
    );
    let p = t.dir.path().join("cli.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn import(cfg: &Path, csv: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["users", "import", "--config"])
        .arg(cfg)
        .arg(csv)
        .output()
        .unwrap()
}

#[test]
fn users_import_while_serving() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let holder = new_client(api, "holder", "hpw", "g", "5", "");
    update(
        api,
        holder,
        json!({"accounts": "dn:+1 212 555 0199"}),
        json!([]),
    );
    ok(api, "isp.addNewISP", adm(json!({"isp_name": "ResellerY"})));
    let cfg = config_for_cli(&t, api);
    let csv = t.dir.path().join("import.csv");
    std::fs::write(
        &csv,
        "username,password,group,credit,company,accounts,email\n\
         imp1,pw1,g,12.5,Main,voip:3001;dn:+1 (646) 555-0101,imp1@example.com\n\
         imp2,pw2,g,7,ResellerY,,imp2@example.com\n\
         imp3,pw3,g,1,,dn:0012125550199,\n\
         holder,x,g,1,,,\n",
    )
    .unwrap();
    let out = import(&cfg, &csv);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("2 subscribers created, 1 existed already, 1 bad lines"),
        "{stdout}\n{stderr}"
    );
    // Line 4 (imp3) names holder's DN in yet another form.
    let bad: Vec<&str> = stderr.lines().filter(|l| l.contains("bad line")).collect();
    assert_eq!(bad.len(), 1, "{stderr}");
    assert!(
        bad[0].contains("import.csv:4: accounts:") && bad[0].contains("dn:12125550199"),
        "{stderr}"
    );

    let by_name = |name: &str| -> (i64, Value) {
        let r = ok(
            api,
            "user.getUserInfo",
            adm(json!({"normal_username": name})),
        );
        let (id, v) = r.as_object().unwrap().iter().next().unwrap();
        (id.parse().unwrap(), v.clone())
    };
    let (imp1, i) = by_name("imp1");
    assert_eq!(money(&i["basic_info"]["credit"]), d("12.5"));
    assert_eq!(i["basic_info"]["isp_name"], "Main");
    assert_eq!(i["attrs"]["email"], "imp1@example.com");
    assert_eq!(
        accounts_of(api, imp1),
        sorted(&["radius:imp1", "voip:3001", "dn:16465550101"])
    );
    let (imp2, i) = by_name("imp2");
    assert_eq!(money(&i["basic_info"]["credit"]), d("7"));
    assert_eq!(i["basic_info"]["isp_name"], "ResellerY");
    assert_eq!(i["attrs"]["email"], "imp2@example.com");
    assert_eq!(accounts_of(api, imp2), sorted(&["radius:imp2"]));
    let (code, _) = err(
        api,
        "user.getUserInfo",
        adm(json!({"normal_username": "imp3"})),
    );
    assert_eq!(code, "NORMAL_USERNAME_DOESNT_EXISTS");
    // The existing client is left as it was.
    assert_eq!(credit_of(api, holder), d("5"));
    assert_eq!(
        accounts_of(api, holder),
        sorted(&["radius:holder", "dn:12125550199"])
    );
    // The initial credit is a payment row.
    let j = ok(
        api,
        "report.getCreditChanges",
        adm(json!({"user_id": imp1})),
    );
    assert_eq!(j["total_rows"], 1, "{j}");
    assert_eq!(j["report"][0]["kind"], "payment");
    assert_eq!(money(&j["report"][0]["amount"]), d("12.5"));

    // The imported accounts charge at once: by caller DN 90 s -> 120 s = 0.02, by
    // accountcode 30 s -> 60 s = 0.01; a RADIUS session of imp2: 600 s = 0.10.
    t.drop_cdr(
        "",
        "imp.csv",
        &format!(
            "{GENERIC_HEADER}\
             i-dn,+1 646 555 0101,15551230201,2026-11-02T11:00:00Z,90,ANSWERED,\n\
             i-voip,5550000,15551230202,2026-11-02T11:10:00Z,30,ANSWERED,3001\n"
        ),
    );
    let c = client();
    session(&c, srv.radius, "imp2", "i1", at(0, 10, 0), 600, 0);
    t.wait_spool_done(1);
    // 12.5 - 0.02 - 0.01 = 12.47; 7 - 0.10 = 6.9
    assert_eq!(credit_of(api, imp1), d("12.47"));
    assert_eq!(credit_of(api, imp2), d("6.9"));
    // Importing the same file again creates nothing more.
    let out = import(&cfg, &csv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0 subscribers created, 3 existed already, 1 bad lines"),
        "{stdout}"
    );
    srv.stop();
    assert_eq!(ledger_credit(&t, imp1), d("12.47"));
    let x = read_xdrs(&t.data());
    let accounts: Vec<(String, Option<i64>, Option<String>)> = x
        .iter()
        .map(|r| (r.key().to_string(), r.user_id, r.account.clone()))
        .collect();
    assert!(
        accounts.contains(&("15551230201".into(), Some(imp1), Some("16465550101".into()))),
        "{accounts:?}"
    );
    assert!(
        accounts.contains(&("15551230202".into(), Some(imp1), Some("3001".into()))),
        "{accounts:?}"
    );
    assert!(
        accounts.contains(&("i1".into(), Some(imp2), Some("imp2".into()))),
        "{accounts:?}"
    );
}

/// A line naming a company that does not exist is a bad line like any other: reported with
/// its line number, the other lines created.
#[test]
fn users_import_reports_an_unknown_company_as_a_bad_line() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let cfg = config_for_cli(&t, api);
    let csv = t.dir.path().join("companies.csv");
    std::fs::write(
        &csv,
        "username,password,group,credit,company\n\
         ok1,pw,g,1,Main\n\
         bad1,pw,g,1,NoSuchCo\n\
         ok2,pw,g,2,\n",
    )
    .unwrap();
    let out = import(&cfg, &csv);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("2 subscribers created, 0 existed already, 1 bad lines"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("companies.csv:3:") && stderr.contains("NoSuchCo"),
        "{stderr}"
    );
    for name in ["ok1", "ok2"] {
        ok(
            api,
            "user.getUserInfo",
            adm(json!({"normal_username": name})),
        );
    }
    srv.stop();
}

/// A cancellation refunds every charge in its range even while the outbox is being flushed
/// to Parquet: a session closed just before the call is refunded by that call, so the next
/// call over the same range refunds nothing. A large Parquet tree (50,000 calls of another
/// client in the same days) makes one cancellation take long enough for the 1 s outbox
/// flush to land inside it.
#[test]
fn cancelling_while_the_outbox_flushes_misses_nothing() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let c = client();
    let u = new_client(api, "quinn", "qpw", "g", "1000", "");
    new_client(api, "bulk", "bpw", "g", "1000000", "");
    let mut csv = String::from(GENERIC_HEADER);
    for k in 0..50_000 {
        csv.push_str(&format!(
            "b{k},5550000,1555{k:07},2026-11-02T1{}:{:02}:00Z,30,ANSWERED,bulk\n",
            k % 10,
            k % 60
        ));
    }
    t.drop_cdr("", "bulk.csv", &csv);
    t.wait_spool_done(1);
    let range = json!({"user_id": u, "from": "2026-11-01 00:00:00", "to": "2026-11-04 00:00:00"});
    // Each round: a session of quinn closes (its xDR waits in the outbox, flushed within
    // 1 s), then one cancellation over the whole range must refund exactly that session.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < deadline {
        rounds += 1;
        // 60 s in "day" = 0.01.
        session(
            &c,
            srv.radius,
            "quinn",
            &format!("q{rounds}"),
            at(0, 10, 0),
            60,
            0,
        );
        let r = ok(api, "user.cancelCharges", adm(range.clone()));
        assert_eq!(
            r["refunded"], 1,
            "round {rounds}: the session just closed was not refunded: {r}"
        );
        assert_eq!(money(&r["credit"]), d("1000"), "round {rounds}");
    }
    let r = ok(api, "user.cancelCharges", adm(range));
    assert_eq!(r["refunded"], 0, "{r}");
    srv.stop();
}

/// `ratel users import` while serve runs on a config whose `[api] listen` has port 0: the
/// CLI says "pass --api http://HOST:PORT/", so `--api` must be accepted and used.
#[test]
fn users_import_accepts_the_api_option_it_asks_for() {
    let t = T::new();
    let srv = t.serve();
    let api = srv.api;
    let csv = t.dir.path().join("one.csv");
    std::fs::write(&csv, "username,password,group,credit\nzoe,zpw,g,3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["users", "import", "--config"])
        .arg(t.config())
        .arg(&csv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass --api http://HOST:PORT/"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["users", "import", "--config"])
        .arg(t.config())
        .arg("--api")
        .arg(format!("http://{api}/"))
        .arg(&csv)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ok(
        api,
        "user.getUserInfo",
        adm(json!({"normal_username": "zoe"})),
    );
    let (_, v) = r.as_object().unwrap().iter().next().unwrap();
    assert_eq!(money(&v["basic_info"]["credit"]), d("3"));
    srv.stop();
}
