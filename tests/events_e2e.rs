//! Issue 14 end to end: the provisioning events (DESIGN.md "Events (Provisioning API)",
//! seed 002) through the real `ratel serve` binary. Handlers are real: a small HTTP server
//! in this test (std `TcpListener` on 127.0.0.1:0, one thread per connection) records the
//! method, path, headers and body of every call and answers by a script the test controls;
//! a local `command` handler appends to a file in a temp dir. Changes are made through
//! the IBSng JSON-RPC over real HTTP, RADIUS over real UDP and CDR files dropped into the
//! spool; delivery state is read back with `report.getEvents` and `GET /metrics`.
//!
//! Every wait is bounded and polls for its condition (no fixed sleeps where a condition
//! can be awaited); retries are 1 s after a first failure, so waits are a few seconds.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{acct, client, d, send};
use rust_decimal::Decimal;
use serde_json::{json, Value};

// ---- the handler: a recording HTTP server ------------------------------------------------

/// One call a handler received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    /// (lower-cased name, value).
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("handler got a body that is not JSON ({e}): {}", self.body))
    }

    fn event_id(&self) -> i64 {
        self.json()["event_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no event_id in {}", self.body))
    }

    fn event(&self) -> String {
        self.json()["event"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// What the handler answers.
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// The handler's script: the request and how many requests came before it.
type Script = Arc<dyn Fn(&Req, usize) -> Answer + Send + Sync>;

/// A recording HTTP handler on 127.0.0.1.
struct Handler {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Handler {
    /// Listens on a free port of 127.0.0.1.
    fn start(script: impl Fn(&Req, usize) -> Answer + Send + Sync + 'static) -> Handler {
        Handler::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(script))
    }

    /// Always `200 {}`.
    fn ok() -> Handler {
        Handler::start(|_, _| answer(200, json!({})))
    }

    fn start_on(listener: TcpListener, script: Script) -> Handler {
        let addr = listener.local_addr().unwrap();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let r = reqs.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (r, script) = (r.clone(), script.clone());
                std::thread::spawn(move || serve_one(stream, &r, &script));
            }
        });
        Handler { addr, reqs }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    /// Polls (at most `secs`) until `cond` holds over the requests so far; returns them.
    fn wait(&self, secs: u64, what: &str, cond: impl Fn(&[Req]) -> bool) -> Vec<Req> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.requests();
            if cond(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "within {secs} s: {what}; the handler got {:?}",
                got.iter()
                    .map(|r| r.body.chars().take(160).collect::<String>())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads one HTTP/1.1 request, records it, answers per the script, closes.
fn serve_one(mut s: TcpStream, reqs: &Mutex<Vec<Req>>, script: &Script) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let req = Req {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        at: Instant::now(),
    };
    let n = {
        let mut r = reqs.lock().unwrap();
        r.push(req.clone());
        r.len() - 1
    };
    let a = script(&req, n);
    if !a.delay.is_zero() {
        std::thread::sleep(a.delay);
    }
    let resp = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        a.status,
        a.body.len(),
        a.body
    );
    let _ = s.write_all(resp.as_bytes());
}

// ---- the server under test ----------------------------------------------------------------

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
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
1,USA,0.0100,0,60,60\n";

/// A data dir with the config above plus `hooks` (TOML `[[hook]]` tables).
struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new(hooks: &str) -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ratel.toml"), format!("{CONFIG}\n{hooks}")).unwrap();
        std::fs::write(dir.path().join("rates.csv"), RATES).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        T { dir }
    }

    fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ratel serve`: (server, RADIUS address, API address).
    fn serve(&self) -> (common::Server, SocketAddr, SocketAddr) {
        common::serve_config(&self.config())
    }

    /// Drops a CDR file into the spool (written under a hidden name, then renamed) and
    /// waits (at most 15 s) until it was rated.
    fn drop_cdr(&self, name: &str, content: &str) {
        let tmp = self.path("spool").join(format!(".{name}.part"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.path("spool").join(name)).unwrap();
        let done = self.path("spool").join("done").join(name);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done.exists() {
            let failed = self.path("spool").join("failed").join(name);
            assert!(!failed.exists(), "CDR file {name} failed");
            assert!(
                Instant::now() < deadline,
                "CDR file {name} not rated within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `[[hook]]` table.
fn hook(name: &str, events: &str, target: &str, extra: &str) -> String {
    format!("[[hook]]\nname = \"{name}\"\nevents = {events}\n{target}\n{extra}\n")
}

fn url(u: &str) -> String {
    format!("url = \"{u}\"")
}

// ---- JSON-RPC --------------------------------------------------------------------------

/// Admin auth params merged with `extra`.
fn adm(extra: Value) -> Value {
    let mut p = json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys"});
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

/// A call that must fail: the whole error text (`CODE|message`).
fn err(api: SocketAddr, method: &str, params: Value) -> String {
    let (r, e) = common::rpc(api, method, params.clone());
    e.as_str()
        .unwrap_or_else(|| panic!("{method} {params} succeeded: {r}"))
        .to_string()
}

/// addNewUsers of one client: its id.
fn add_client(api: SocketAddr, group: &str, credit: &str) -> i64 {
    let r = ok(
        api,
        "user.addNewUsers",
        adm(json!({"count": 1, "group_name": group, "credit": credit, "credit_comment": "open"})),
    );
    r[0].as_i64().unwrap_or_else(|| panic!("ids: {r}"))
}

/// updateUserAttrs that must succeed.
fn update(api: SocketAddr, id: i64, attrs: Value, del: Value) {
    let r = ok(
        api,
        "user.updateUserAttrs",
        adm(json!({"user_id": id, "attrs": attrs, "to_del_attrs": del})),
    );
    assert_eq!(r, json!(""));
}

fn credentials(api: SocketAddr, id: i64, name: &str) {
    update(
        api,
        id,
        json!({"normal_user_spec": {"normal_username": name, "normal_password": "pw"}}),
        json!([]),
    );
}

fn change_credit(api: SocketAddr, id: i64, how: &str, credit: &str) {
    ok(
        api,
        "user.changeCreditExtended",
        adm(json!({"user_id": id, "credit": credit, "change_type": how, "credit_comment": "t"})),
    );
}

/// getUserInfo of one client.
fn info(api: SocketAddr, id: i64) -> Value {
    let r = ok(
        api,
        "user.getUserInfo",
        adm(json!({"user_id": id.to_string()})),
    );
    r[id.to_string()].clone()
}

fn money(v: &Value) -> Decimal {
    d(v.to_string().trim_matches('"'))
}

fn credit_of(api: SocketAddr, id: i64) -> Decimal {
    money(&info(api, id)["basic_info"]["credit"])
}

/// `report.getEvents` after `after` (every stored event, with its per-hook state).
fn events(api: SocketAddr, after: i64) -> Vec<Value> {
    let r = ok(
        api,
        "report.getEvents",
        adm(json!({"after": after, "limit": 1000})),
    );
    r.as_array()
        .unwrap_or_else(|| panic!("getEvents: {r}"))
        .clone()
}

/// The state of `hook` for one listed event (None: the hook does not take it).
fn state_of(e: &Value, hook: &str) -> Option<String> {
    e["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == hook)
        .map(|h| h["state"].as_str().unwrap().to_string())
}

/// Polls `report.getEvents` (at most `secs`) until every event after `after` that `hook`
/// takes is in `state`.
fn wait_state(api: SocketAddr, after: i64, hook: &str, state: &str, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let ev = events(api, after);
        if ev
            .iter()
            .all(|e| state_of(e, hook).is_none_or(|s| s == state))
        {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "events of hook {hook} not all {state} within {secs} s: {ev:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 15 s) until no event is pending for any hook.
///
/// Used between changes while a notify hook is delivering: a delivery thread's cursor
/// write between two reads of an API change makes that change fail with "database is
/// locked" (see `client_changes_do_not_fail_while_events_are_delivered`), so the tests of
/// other behaviour let deliveries finish first.
fn settle(api: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ev = events(api, 0);
        let pending = ev.iter().any(|e| {
            e["hooks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["state"] == "pending")
        });
        if !pending {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events still pending after 15 s: {ev:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` on the API listener: the body.
fn metrics(api: SocketAddr) -> String {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "GET /metrics: {out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of a sample line `name{labels}` in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A decimal string of an event body.
fn dec(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("a decimal string: {v}")))
}

// ---- 1. every event type with its body ---------------------------------------------------

/// (event, changes) expected of one event; `changes` None = JSON null.
type Want = (&'static str, Option<Value>);

/// Every client and account event fires once per change with the documented body, and
/// the balance events fire exactly on crossings of zero (RADIUS usage, SET, payments);
/// the HTTP handler receives them all in event_id order, POSTed as JSON with the event
/// id as Idempotency-Key; report.getEvents agrees and shows them delivered.
#[test]
fn every_event_fires_with_the_documented_body() {
    let h = Handler::ok();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*", "accounts.*"]"#,
        &url(&h.url("/crm")),
        "timeout_ms = 2000",
    ));
    let (srv, radius, api) = t.serve();
    let started = chrono::Utc::now();

    // Credit 1 in group g; the client has no username yet (IBSng's addNewUsers). Each
    // change waits for the deliveries of the one before (see `settle`).
    let a = add_client(api, "g", "1");
    settle(api);
    credentials(api, a, "alice");
    settle(api);
    for (attrs, del) in [
        (json!({"group_name": "g2"}), json!([])),
        (json!({"email": "a@example.com"}), json!([])),
        (json!({"email": "b@example.com"}), json!([])),
        (json!({"accounts": "voip:1001"}), json!([])),
        (json!({}), json!(["account:voip:1001"])),
        (json!({"archived": "1"}), json!([])),
        (json!({}), json!(["archived"])),
    ] {
        update(api, a, attrs, del);
        settle(api);
    }

    // RADIUS in g2 ("flat" 0.02/min): an Interim at 20 min takes 0.40 (1 -> 0.60: stays
    // positive, no event); one at 60 min takes 0.80 more (0.60 -> -0.20: a crossing).
    let c = client();
    assert!(send(&c, radius, &acct(1, 1, "alice", "r1", 0, 0, 0, None)).is_some());
    assert!(send(&c, radius, &acct(2, 3, "alice", "r1", 1200, 0, 0, None)).is_some());
    assert_eq!(credit_of(api, a), d("0.6"));
    settle(api);
    assert!(send(&c, radius, &acct(3, 3, "alice", "r1", 3600, 0, 0, None)).is_some());
    assert_eq!(credit_of(api, a), d("-0.2"));
    settle(api);
    assert!(send(&c, radius, &acct(4, 2, "alice", "r1", 3600, 0, 0, Some(1))).is_some());
    assert_eq!(credit_of(api, a), d("-0.2"));
    settle(api);
    // Payments: -0.20 + 0.10 = -0.10 stays negative; + 0.10 = 0 crosses back (>= 0);
    // + 1.5 = 1.5 from 0 is no crossing; SET 0 from 1.5 crosses (<= 0); + 2 from 0 is not
    // a crossing either.
    for (how, amount) in [
        ("ADD", "0.1"),
        ("ADD", "0.1"),
        ("ADD", "1.5"),
        ("SET", "0"),
        ("ADD", "2"),
    ] {
        change_credit(api, a, how, amount);
        settle(api);
    }
    assert_eq!(credit_of(api, a), d("2"));
    ok(
        api,
        "user.delUser",
        adm(json!({"user_id": a, "delete_comment": "bye"})),
    );

    let want: Vec<Want> = vec![
        ("clients.create", None),
        ("clients.update", Some(json!({"username": [null, "alice"]}))),
        ("accounts.update", None),
        ("clients.update", Some(json!({"group": ["g", "g2"]}))),
        (
            "clients.custom_fields_update",
            Some(json!({"email": [null, "a@example.com"]})),
        ),
        (
            "clients.custom_fields_update",
            Some(json!({"email": ["a@example.com", "b@example.com"]})),
        ),
        ("accounts.create", None),
        ("accounts.delete", None),
        ("clients.update", Some(json!({"archived": [false, true]}))),
        ("clients.archive", None),
        ("clients.update", Some(json!({"archived": [true, false]}))),
        ("clients.balance_nonpositive", None),
        ("clients.balance_nonnegative", None),
        ("clients.balance_nonpositive", None),
        ("clients.delete", None),
    ];

    // The ledger's list: exactly these, in this order, all of client a.
    let listed = events(api, 0);
    let names: Vec<&str> = listed
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        want.iter().map(|w| w.0).collect::<Vec<_>>(),
        "getEvents: {listed:?}"
    );
    let ids: Vec<i64> = listed
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for e in &listed {
        assert_eq!(e["user_id"], a, "{e}");
        assert_eq!(e["body"]["event_id"], e["event_id"], "{e}");
    }

    // The handler gets each once, in order.
    let got = h.wait(20, "15 events delivered", |r| r.len() >= want.len());
    assert_eq!(
        got.len(),
        want.len(),
        "one call per event (all answered 200)"
    );
    let mut prev = 0;
    for (i, (r, (name, changes))) in got.iter().zip(&want).enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/crm");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let b = r.json();
        let id = r.event_id();
        assert!(id > prev, "event ids increase: {id} after {prev}");
        prev = id;
        assert_eq!(id, ids[i], "delivered in event_id order");
        assert_eq!(
            r.header("idempotency-key"),
            Some(id.to_string().as_str()),
            "Idempotency-Key of event {id}"
        );
        assert_eq!(b["event"], *name, "{b}");
        assert_eq!(
            b, listed[i]["body"],
            "the handler got what the ledger lists"
        );
        // The documented keys, no others.
        let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["account", "balance", "changes", "client", "event", "event_id", "package", "time"],
            "{b}"
        );
        let time = chrono::DateTime::parse_from_rfc3339(b["time"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("time {}: {e}", b["time"]));
        assert!(b["time"].as_str().unwrap().ends_with('Z'), "UTC: {b}");
        assert!(
            time >= started - chrono::Duration::seconds(5)
                && time <= chrono::Utc::now() + chrono::Duration::seconds(5),
            "time {time} is now"
        );
        assert_eq!(b["client"]["id_clients"], a, "{b}");
        assert_eq!(b["package"], Value::Null, "{b}");
        assert_eq!(b["changes"], changes.clone().unwrap_or(Value::Null), "{b}");
        if !name.starts_with("accounts.") {
            assert_eq!(b["account"], Value::Null, "{b}");
        }
        if !name.starts_with("clients.balance_") {
            assert_eq!(b["balance"], Value::Null, "{b}");
        }
    }
    let body = |i: usize| got[i].json();

    // The client object: the state the change left.
    let c0 = &body(0)["client"];
    assert_eq!(c0["username"], Value::Null, "{c0}");
    assert_eq!(c0["group"], "g");
    assert_eq!(c0["status"], "active");
    assert_eq!(c0["accounts"], json!([]));
    assert_eq!(dec(&c0["balance"]), d("1"));
    assert_eq!(c0["id_companies"], 1);
    assert_eq!(c0["company"], "Main");
    assert_eq!(body(1)["client"]["username"], "alice");
    assert_eq!(body(1)["client"]["accounts"], json!(["radius:alice"]));
    assert_eq!(
        body(2)["account"],
        json!({"kind": "radius", "ident": "alice"})
    );
    assert_eq!(body(3)["client"]["group"], "g2");
    assert_eq!(body(4)["client"]["profile"]["email"], "a@example.com");
    assert_eq!(body(5)["client"]["profile"]["email"], "b@example.com");
    assert_eq!(body(6)["account"], json!({"kind": "voip", "ident": "1001"}));
    let mut acc: Vec<String> =
        serde_json::from_value(body(6)["client"]["accounts"].clone()).unwrap();
    acc.sort();
    assert_eq!(acc, ["radius:alice", "voip:1001"]);
    assert_eq!(body(7)["account"], json!({"kind": "voip", "ident": "1001"}));
    assert_eq!(body(7)["client"]["accounts"], json!(["radius:alice"]));
    assert_eq!(body(8)["client"]["status"], "archived");
    assert_eq!(body(9)["client"]["status"], "archived");
    assert_eq!(body(10)["client"]["status"], "active");
    // Crossings: RADIUS 0.60 -> -0.20; payment -0.10 -> 0; SET 1.5 -> 0.
    let crossing = |i: usize| {
        let b = &body(i)["balance"];
        (dec(&b["before"]), dec(&b["after"]))
    };
    assert_eq!(crossing(11), (d("0.6"), d("-0.2")));
    assert_eq!(crossing(12), (d("-0.1"), d("0")));
    assert_eq!(crossing(13), (d("1.5"), d("0")));
    for i in 11..14 {
        assert_eq!(body(i)["account"], Value::Null);
        assert_eq!(body(i)["changes"], Value::Null);
    }
    let last = &body(14)["client"];
    assert_eq!(last["status"], "deleted", "{last}");
    assert_eq!(last["username"], "alice", "{last}");
    assert_eq!(last["accounts"], json!([]), "{last}");

    // report.getEvents shows them all delivered to crm.
    let ev = wait_state(api, 0, "crm", "delivered", 10);
    assert_eq!(ev.len(), want.len());
    for e in &ev {
        assert_eq!(state_of(e, "crm").as_deref(), Some("delivered"), "{e}");
    }
    drop(srv);
}

/// Client changes keep succeeding while a notify hook is delivering events. The delivery
/// thread writes its cursor to the ledger after each delivered event; an API change whose
/// transaction read the ledger before that write must still commit (not fail with
/// "database is locked").
#[test]
fn client_changes_do_not_fail_while_events_are_delivered() {
    let h = Handler::ok();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*", "accounts.*"]"#,
        &url(&h.url("/crm")),
        "",
    ));
    let (srv, _, api) = t.serve();
    let a = add_client(api, "g", "5");
    let mut failed = Vec::new();
    for i in 0..150 {
        let (_, e) = common::rpc(
            api,
            "user.updateUserAttrs",
            adm(
                json!({"user_id": a, "attrs": {"custom.n": i.to_string(), "accounts": format!("voip:{}", 5000 + i)}}),
            ),
        );
        if e != Value::Null {
            failed.push(format!("change {i}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 150 changes failed while events were delivered: {failed:?}",
        failed.len()
    );
    // 1 + 150 * 2 events, all delivered.
    h.wait(60, "301 events", |r| r.len() >= 301);
    drop(srv);
}

/// A client created with accounts (`user.importUsers` while serving: a username and a
/// voip account) raises clients.create and then accounts.create for each account, the
/// username first.
#[test]
fn a_new_client_raises_accounts_create_for_each_account() {
    let h = Handler::ok();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*", "accounts.*"]"#,
        &url(&h.url("/crm")),
        "",
    ));
    let (srv, _, api) = t.serve();
    let r = ok(
        api,
        "user.importUsers",
        adm(json!({"file": "new.csv", "csv":
            "username,password,group,credit,accounts,email\nzed,pw,g,1.25,voip:7001,z@example.com\n"})),
    );
    assert_eq!(r["bad"], json!([]), "{r}");
    let id = r["created"][0][1].as_i64().unwrap_or_else(|| panic!("{r}"));
    let got = h.wait(10, "3 events", |r| r.len() >= 3);
    let listed = events(api, 0);
    assert_eq!(got.len(), 3);
    assert_eq!(listed.len(), 3);
    let names: Vec<String> = got.iter().map(Req::event).collect();
    assert_eq!(
        names,
        ["clients.create", "accounts.create", "accounts.create"]
    );
    let b: Vec<Value> = got.iter().map(Req::json).collect();
    assert_eq!(b[1]["account"], json!({"kind": "radius", "ident": "zed"}));
    assert_eq!(b[2]["account"], json!({"kind": "voip", "ident": "7001"}));
    for (i, e) in b.iter().enumerate() {
        assert_eq!(e["event_id"], listed[i]["event_id"]);
        assert_eq!(e["client"]["id_clients"], id);
        assert_eq!(e["client"]["username"], "zed");
        assert_eq!(e["client"]["profile"]["email"], "z@example.com");
        assert_eq!(dec(&e["client"]["balance"]), d("1.25"));
        let mut acc: Vec<String> = serde_json::from_value(e["client"]["accounts"].clone()).unwrap();
        acc.sort();
        assert_eq!(acc, ["radius:zed", "voip:7001"], "{e}");
        assert_eq!(e["changes"], Value::Null);
        assert_eq!(e["balance"], Value::Null);
    }
    assert_eq!(b[0]["account"], Value::Null);
    drop(srv);
}

// ---- 1b. balance crossings of RADIUS and CDR batches -----------------------------------------

/// The balance events of a RADIUS batch and a CDR batch (real UDP, a real spool file):
/// (radius client id, cdr client id, events in order).
fn usage_crossings() -> (i64, i64, Vec<Value>) {
    let h = Handler::ok();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*", "accounts.*"]"#,
        &url(&h.url("/bal")),
        "",
    ));
    let (srv, radius, api) = t.serve();
    // RADIUS in g ("day" 0.01/min): 0.10 -> 0.05 (no event), then -> 0 (a crossing).
    let r = add_client(api, "g", "0.1");
    settle(api);
    credentials(api, r, "rad");
    settle(api);
    let c = client();
    assert!(send(&c, radius, &acct(1, 1, "rad", "s1", 0, 0, 0, None)).is_some());
    assert!(send(&c, radius, &acct(2, 3, "rad", "s1", 300, 0, 0, None)).is_some());
    assert_eq!(credit_of(api, r), d("0.05"));
    assert!(send(&c, radius, &acct(3, 3, "rad", "s1", 600, 0, 0, None)).is_some());
    assert_eq!(credit_of(api, r), d("0"));
    settle(api);
    // CDR files for a voip account: prefix 1 at 0.01/min, 60/60. 100 s -> 120 s = 0.02
    // (0.03 -> 0.01, no event); then 61 s -> 120 s = 0.02 (0.01 -> -0.01, a crossing).
    let v = add_client(api, "g", "0.03");
    settle(api);
    update(api, v, json!({"accounts": "voip:2002"}), json!([]));
    settle(api);
    let header = "call_id,caller,callee,start_time,duration_s,disposition,account\n";
    t.drop_cdr(
        "calls1.csv",
        &format!("{header}c1,5552222,15551230001,2026-11-02T11:30:00Z,100,ANSWERED,2002\n"),
    );
    let wait_credit = |want: Decimal| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while credit_of(api, v) != want {
            assert!(Instant::now() < deadline, "CDR charges not applied: {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_credit(d("0.01"));
    settle(api);
    t.drop_cdr(
        "calls2.csv",
        &format!("{header}c2,5552222,15551230002,2026-11-02T11:40:00Z,61,ANSWERED,2002\n"),
    );
    wait_credit(d("-0.01"));
    settle(api);
    let bal: Vec<Value> = h
        .requests()
        .iter()
        .map(Req::json)
        .filter(|b| b["event"].as_str().unwrap().starts_with("clients.balance_"))
        .collect();
    assert_eq!(
        bal.len(),
        2,
        "one event per crossing, none for the other movements: {bal:?}"
    );
    drop(srv);
    (r, v, bal)
}

/// RADIUS usage and a CDR batch each raise `clients.balance_nonpositive` exactly when
/// they take the balance from > 0 to <= 0, with before/after; movements staying on one
/// side raise nothing.
#[test]
fn usage_raises_balance_events_on_crossings_only() {
    let (r, v, got) = usage_crossings();
    assert_eq!(got[0]["event"], "clients.balance_nonpositive");
    assert_eq!(got[0]["client"]["id_clients"], r);
    assert_eq!(dec(&got[0]["balance"]["before"]), d("0.05"));
    assert_eq!(dec(&got[0]["balance"]["after"]), d("0"));
    assert_eq!(got[1]["event"], "clients.balance_nonpositive");
    assert_eq!(got[1]["client"]["id_clients"], v);
    assert_eq!(dec(&got[1]["balance"]["before"]), d("0.01"));
    assert_eq!(dec(&got[1]["balance"]["after"]), d("-0.01"));
}

/// The `client` of a balance event is the state the change left: its `balance` is the
/// event's `balance.after` (as for a payment crossing).
#[test]
fn a_usage_balance_event_carries_the_client_balance_after() {
    let (_, _, got) = usage_crossings();
    let wrong: Vec<String> = got
        .iter()
        .filter(|b| dec(&b["client"]["balance"]) != dec(&b["balance"]["after"]))
        .map(|b| {
            format!(
                "event {} of client {}: client.balance {} but balance.after {}",
                b["event_id"],
                b["client"]["id_clients"],
                b["client"]["balance"],
                b["balance"]["after"]
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---- 2. retries: same key, in order ------------------------------------------------------

/// A handler answering 500 and then 200 gets the event again after the 1 s backoff with
/// the same Idempotency-Key, and the next event only after that.
#[test]
fn a_failed_delivery_is_retried_with_the_same_key_before_the_next_event() {
    let h = Handler::start(|_, n| {
        if n == 0 {
            answer(500, json!({"error": "try later"}))
        } else {
            answer(200, json!({}))
        }
    });
    let t = T::new(&hook(
        "crm",
        r#"["clients.*", "accounts.*"]"#,
        &url(&h.url("/x")),
        "",
    ));
    let (srv, _, api) = t.serve();
    let a = add_client(api, "g", "5");
    update(api, a, json!({"email": "a@example.com"}), json!([]));
    update(api, a, json!({"group_name": "g2"}), json!([]));
    let got = h.wait(15, "4 calls", |r| r.len() >= 4);
    let keys: Vec<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    let ids: Vec<i64> = got.iter().map(Req::event_id).collect();
    let names: Vec<String> = got.iter().map(Req::event).collect();
    assert_eq!(
        names,
        [
            "clients.create",
            "clients.create",
            "clients.custom_fields_update",
            "clients.update"
        ],
        "the failed event again, then the next ones"
    );
    assert_eq!(ids[0], ids[1], "the same event twice");
    assert_eq!(keys[0], keys[1], "the same Idempotency-Key");
    assert_eq!(keys[0], ids[0].to_string());
    assert!(ids[1] < ids[2] && ids[2] < ids[3], "{ids:?}");
    assert_eq!(got[0].body, got[1].body, "the same body");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "the retry waited the 1 s backoff: {gap:?}"
    );
    assert!(
        got[2].at >= got[1].at,
        "the next event only after the retry"
    );
    let ev = wait_state(api, 0, "crm", "delivered", 10);
    assert_eq!(ev.len(), 3);
    // The delivered event is not sent again.
    update(api, a, json!({"email": "b@example.com"}), json!([]));
    let got = h.wait(10, "5 calls", |r| r.len() >= 5);
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].event(), "clients.custom_fields_update");
    let m = metrics(api);
    assert!(
        sample(&m, "ratel_events_total{result=\"failed_attempt\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    drop(srv);
}

// ---- 3. max_attempts: dead, and the hook moves on ------------------------------------------

/// With max_attempts = 2, an event its handler keeps refusing is tried twice, becomes
/// `dead` in report.getEvents and the hook moves on to the next one; a hook whose handler
/// always answers 500 makes every event dead, each after exactly 2 attempts, in order;
/// /metrics counts them.
#[test]
fn an_event_is_dead_after_max_attempts_and_the_hook_moves_on() {
    // "picky" refuses clients.create only; "broken" refuses everything.
    let picky = Handler::start(|r, _| {
        if r.event() == "clients.create" {
            answer(500, json!({}))
        } else {
            answer(200, json!({}))
        }
    });
    let broken = Handler::start(|_, _| answer(500, json!({"error": "down"})));
    let t = T::new(&format!(
        "{}{}",
        hook(
            "picky",
            r#"["clients.*"]"#,
            &url(&picky.url("/p")),
            "max_attempts = 2"
        ),
        hook(
            "broken",
            r#"["clients.*"]"#,
            &url(&broken.url("/b")),
            "max_attempts = 2"
        ),
    ));
    let (srv, _, api) = t.serve();
    let a = add_client(api, "g", "5");
    update(api, a, json!({"email": "a@example.com"}), json!([]));
    let ev = events(api, 0);
    let (e1, e2) = (
        ev[0]["event_id"].as_i64().unwrap(),
        ev[1]["event_id"].as_i64().unwrap(),
    );

    let got = picky.wait(15, "picky: e1 twice, then e2", |r| r.len() >= 3);
    let ids: Vec<i64> = got.iter().map(Req::event_id).collect();
    assert_eq!(ids, [e1, e1, e2]);
    let got = broken.wait(15, "broken: e1 twice, e2 twice", |r| r.len() >= 4);
    let ids: Vec<i64> = got.iter().map(Req::event_id).collect();
    assert_eq!(ids, [e1, e1, e2, e2]);

    // getEvents: the states per hook.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ev = loop {
        let ev = events(api, 0);
        let states: Vec<(Option<String>, Option<String>)> = ev
            .iter()
            .map(|e| (state_of(e, "picky"), state_of(e, "broken")))
            .collect();
        let want = vec![
            (Some("dead".to_string()), Some("dead".to_string())),
            (Some("delivered".to_string()), Some("dead".to_string())),
        ];
        if states == want {
            break ev;
        }
        assert!(Instant::now() < deadline, "states {states:?}: {ev:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err_of = |e: &Value, hook: &str| {
        e["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hook"] == hook)
            .unwrap()["error"]
            .clone()
    };
    assert!(
        err_of(&ev[0], "picky")
            .as_str()
            .is_some_and(|s| s.contains("500")),
        "the dead event's error: {}",
        ev[0]
    );
    assert_eq!(err_of(&ev[1], "picky"), Value::Null);

    // Nothing is tried again: a third event reaches picky, e1 stays at 2 attempts.
    update(api, a, json!({"email": "b@example.com"}), json!([]));
    let got = picky.wait(10, "picky: e3", |r| r.len() >= 4);
    let ids: Vec<i64> = got.iter().map(Req::event_id).collect();
    assert_eq!(ids.iter().filter(|&&i| i == e1).count(), 2, "{ids:?}");
    assert!(ids[3] > e2);

    // /metrics: 3 dead (picky e1, broken e1, e2), at least 2 delivered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(api);
        let dead = sample(&m, "ratel_events_total{result=\"dead\"}");
        let delivered = sample(&m, "ratel_events_total{result=\"delivered\"}");
        let failed = sample(&m, "ratel_events_total{result=\"failed_attempt\"}");
        if dead >= Some(3.0) && delivered >= Some(2.0) {
            assert!(failed >= Some(6.0), "failed attempts: {m}");
            break;
        }
        assert!(Instant::now() < deadline, "metrics: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(srv);
}

// ---- 4. a local command handler ------------------------------------------------------------

/// `(event_id from RATEL_EVENT_ID, body)` of each call a command handler logged.
fn command_log(path: &std::path::Path) -> Vec<(i64, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2 && c[1].starts_with("id=") && !c[1][3..].is_empty())
        .map(|c| {
            (
                c[1][3..].trim().parse().unwrap(),
                serde_json::from_str(c[0]).unwrap_or_else(|e| panic!("{e}: {}", c[0])),
            )
        })
        .collect()
}

/// A `command` handler gets each event's JSON on stdin and its id in RATEL_EVENT_ID;
/// exit 0 is done, another exit status is retried.
#[test]
fn a_command_handler_receives_the_events() {
    let t = T::new("");
    let log = t.path("events.log");
    let log2 = t.path("flaky.log");
    let mark = t.path("failed-once");
    let cmd = |script: String| {
        format!(
            "command = {}",
            serde_json::to_string(&["/bin/sh", "-c", &script]).unwrap()
        )
    };
    let hooks = format!(
        "{}{}",
        hook(
            "local",
            r#"["clients.*", "accounts.*"]"#,
            &cmd(format!(
                "cat >> '{l}'; echo >> '{l}'; echo \"id=$RATEL_EVENT_ID\" >> '{l}'",
                l = log.display()
            )),
            "timeout_ms = 5000"
        ),
        hook(
            "flaky",
            r#"["clients.*", "accounts.*"]"#,
            &cmd(format!(
                "if [ ! -e '{m}' ]; then : > '{m}'; cat > /dev/null; exit 3; fi; \
                 cat >> '{l}'; echo >> '{l}'; echo \"id=$RATEL_EVENT_ID\" >> '{l}'",
                m = mark.display(),
                l = log2.display()
            )),
            "timeout_ms = 5000"
        ),
    );
    std::fs::write(t.path("ratel.toml"), format!("{CONFIG}\n{hooks}")).unwrap();
    let (srv, _, api) = t.serve();
    let a = add_client(api, "g", "5");
    settle(api);
    credentials(api, a, "cmduser");
    let listed = events(api, 0);
    let ids: Vec<i64> = listed
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{listed:?}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let (got, got2) = loop {
        let (g1, g2) = (command_log(&log), command_log(&log2));
        if g1.len() >= 3 && g2.len() >= 3 {
            break (g1, g2);
        }
        assert!(
            Instant::now() < deadline,
            "command handlers: {:?} / {:?}",
            std::fs::read_to_string(&log),
            std::fs::read_to_string(&log2)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(mark.exists(), "the flaky handler failed once");
    for g in [&got, &got2] {
        assert_eq!(g.len(), 3, "each event once: {g:?}");
        for (i, (id, body)) in g.iter().enumerate() {
            assert_eq!(*id, ids[i], "RATEL_EVENT_ID, in order");
            assert_eq!(body["event_id"], *id);
            assert_eq!(*body, listed[i]["body"]);
        }
        let names: Vec<&str> = g
            .iter()
            .map(|(_, b)| b["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["clients.create", "clients.update", "accounts.update"]
        );
        assert_eq!(g[0].1["client"]["id_clients"], a);
    }
    wait_state(api, 0, "local", "delivered", 10);
    wait_state(api, 0, "flaky", "delivered", 10);
    drop(srv);
}

// ---- 5. veto hooks --------------------------------------------------------------------------

/// Veto hooks are asked before the change commits: a refusal (with its reason), a non-2xx
/// answer or a timeout forbids it (ACTION_FORBIDDEN, nothing changes, no event); an
/// allowing answer's `data` rewrites the proposed group or profile fields.
#[test]
fn veto_hooks_forbid_or_rewrite_changes() {
    // The create gate: 0 allows, 1 allows rewriting the group, 2 forbids.
    let create_mode = Arc::new(AtomicU8::new(1));
    let m = create_mode.clone();
    let create_gate = Handler::start(move |_, _| match m.load(Ordering::SeqCst) {
        0 => answer(200, json!({"allow": true})),
        1 => answer(200, json!({"allow": true, "data": {"group": "g2"}})),
        _ => answer(
            200,
            json!({"allow": false, "reason": "quota of new clients reached"}),
        ),
    });
    let update_gate =
        Handler::start(|_, _| answer(200, json!({"allow": true, "data": {"email": "x@y"}})));
    let slow_gate = Handler::start(|_, _| Answer {
        status: 200,
        body: json!({"allow": true}).to_string(),
        delay: Duration::from_secs(3),
    });
    let failing_gate = Handler::start(|_, _| answer(503, json!({"allow": true})));
    let notify = Handler::ok();
    let hooks = [
        hook(
            "gate-create",
            r#"["clients.create"]"#,
            &url(&create_gate.url("/create")),
            "mode = \"veto\"\ntimeout_ms = 5000",
        ),
        hook(
            "gate-update",
            r#"["clients.update"]"#,
            &url(&update_gate.url("/update")),
            "mode = \"veto\"\ntimeout_ms = 5000",
        ),
        hook(
            "gate-archive",
            r#"["clients.archive"]"#,
            &url(&slow_gate.url("/archive")),
            "mode = \"veto\"\ntimeout_ms = 300",
        ),
        hook(
            "gate-delete",
            r#"["clients.delete"]"#,
            &url(&failing_gate.url("/delete")),
            "mode = \"veto\"\ntimeout_ms = 5000",
        ),
        hook(
            "crm",
            r#"["clients.*", "accounts.*"]"#,
            &url(&notify.url("/crm")),
            "",
        ),
    ]
    .concat();
    let t = T::new(&hooks);
    let (srv, _, api) = t.serve();

    // Allowed, the group rewritten.
    let a = add_client(api, "g", "5");
    assert_eq!(info(api, a)["basic_info"]["group_name"], "g2");
    let asked = create_gate.requests();
    assert_eq!(asked.len(), 1);
    let b = asked[0].json();
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].header("content-type"), Some("application/json"));
    assert_eq!(b["event"], "clients.create");
    assert_eq!(
        b["event_id"],
        Value::Null,
        "a veto call has no event id: {b}"
    );
    assert!(
        asked[0].header("idempotency-key").is_none(),
        "{:?}",
        asked[0]
    );
    assert_eq!(b["client"]["group"], "g", "the proposed client: {b}");
    assert_eq!(dec(&b["client"]["balance"]), d("5"));
    assert_eq!(b["balance"], Value::Null);
    let listed = events(api, 0);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["body"]["client"]["group"], "g2", "{listed:?}");
    settle(api);

    // Forbidden with the hook's reason: nothing created, no event.
    create_mode.store(2, Ordering::SeqCst);
    let e = err(
        api,
        "user.addNewUsers",
        adm(json!({"count": 1, "group_name": "g", "credit": "5"})),
    );
    assert!(e.starts_with("ACTION_FORBIDDEN|"), "{e}");
    assert!(e.contains("quota of new clients reached"), "{e}");
    let e = err(
        api,
        "user.getUserInfo",
        adm(json!({"user_id": (a + 1).to_string()})),
    );
    assert!(e.starts_with("USER_ID_NOT_FOUND|"), "{e}");
    assert_eq!(events(api, 0).len(), 1, "no event for a forbidden change");
    create_mode.store(0, Ordering::SeqCst);

    // Allowed, the proposed profile rewritten.
    update(api, a, json!({"email": "a@b"}), json!([]));
    assert_eq!(info(api, a)["attrs"]["email"], "x@y");
    settle(api);
    let asked = update_gate.requests();
    assert_eq!(asked.len(), 1);
    let b = asked[0].json();
    assert_eq!(b["event"], "clients.update");
    assert_eq!(b["event_id"], Value::Null);
    assert_eq!(b["client"]["id_clients"], a);
    assert_eq!(b["changes"]["email"], "a@b", "the proposed change: {b}");
    let listed = events(api, 0);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1]["event"], "clients.custom_fields_update");
    assert_eq!(
        listed[1]["body"]["changes"],
        json!({"email": [null, "x@y"]})
    );

    // A veto hook timing out forbids.
    let t0 = Instant::now();
    let e = err(
        api,
        "user.updateUserAttrs",
        adm(json!({"user_id": a, "attrs": {"archived": "1"}})),
    );
    let took = t0.elapsed();
    assert!(e.starts_with("ACTION_FORBIDDEN|"), "{e}");
    assert!(
        took < Duration::from_millis(2500),
        "the timeout (300 ms) ended the wait, not the handler: {took:?}"
    );
    assert_eq!(slow_gate.requests().len(), 1);
    assert_eq!(slow_gate.requests()[0].event(), "clients.archive");
    assert_eq!(info(api, a)["basic_info"]["client_status"], "active");

    // A non-2xx answer forbids (even with "allow": true in its body).
    let e = err(
        api,
        "user.delUser",
        adm(json!({"user_id": a, "delete_comment": "x"})),
    );
    assert!(e.starts_with("ACTION_FORBIDDEN|"), "{e}");
    assert!(e.contains("503"), "{e}");
    assert_eq!(failing_gate.requests()[0].event(), "clients.delete");
    assert_eq!(info(api, a)["basic_info"]["user_id"], a, "still there");

    // Only the allowed changes raised events, and only those were delivered.
    let listed = events(api, 0);
    let names: Vec<&str> = listed
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clients.create", "clients.custom_fields_update"]);
    let got = notify.wait(10, "2 notify calls", |r| r.len() >= 2);
    assert_eq!(got.len(), 2);
    let ev = wait_state(api, 0, "crm", "delivered", 10);
    for e in &ev {
        assert_eq!(
            state_of(e, "gate-update"),
            None,
            "veto hooks have no delivery state"
        );
    }
    drop(srv);
}

/// A veto hook forbidding clients.create forbids every way of creating a client: a
/// `user.importUsers` while serving creates nothing (the line or the call is refused) and
/// raises no event.
#[test]
fn a_veto_hook_forbids_clients_created_by_an_import() {
    let gate = Handler::start(|_, _| answer(200, json!({"allow": false, "reason": "closed"})));
    let t = T::new(&hook(
        "gate-create",
        r#"["clients.create"]"#,
        &url(&gate.url("/create")),
        "mode = \"veto\"\ntimeout_ms = 5000",
    ));
    let (srv, _, api) = t.serve();
    let e = err(
        api,
        "user.addNewUsers",
        adm(json!({"count": 1, "group_name": "g", "credit": "5"})),
    );
    assert!(e.starts_with("ACTION_FORBIDDEN|"), "{e}");
    let (r, e) = common::rpc(
        api,
        "user.importUsers",
        adm(json!({"file": "new.csv", "csv": "username,password,group,credit\nzed,pw,g,1\n"})),
    );
    let created = r["created"].as_array().map(Vec::len).unwrap_or(0);
    let found = common::rpc(
        api,
        "user.getUserInfo",
        adm(json!({"normal_username": "zed"})),
    );
    let ev = events(api, 0);
    assert!(
        created == 0 && found.1 != Value::Null && ev.is_empty(),
        "the import created a client the veto hook forbids: answer {r} / {e}; \
         getUserInfo zed: {}; events {ev:?}; the hook was asked {} times",
        found.0,
        gate.requests().len()
    );
    drop(srv);
}

// ---- 6. a handler that is down ---------------------------------------------------------------

/// A free port of 127.0.0.1 (nothing listens on it once this returns).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Raises `n` client events for a new client: its creation and `n - 1` profile changes.
fn raise(api: SocketAddr, n: usize, tag: &str) {
    let a = add_client(api, "g", "5");
    for i in 1..n {
        update(api, a, json!({"custom.n": format!("{tag}{i}")}), json!([]));
    }
}

/// Waits for `n` events delivered; asserts they are exactly the ledger's events, each
/// once, in event_id order.
fn assert_all_in_order(h: &Handler, api: SocketAddr, n: usize) {
    let got = h.wait(30, &format!("{n} events after the handler came up"), |r| {
        r.iter().map(Req::event_id).collect::<HashSet<_>>().len() >= n
    });
    let ids: Vec<i64> = got.iter().map(Req::event_id).collect();
    let listed: Vec<i64> = events(api, 0)
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed.len(), n);
    assert_eq!(ids, listed, "each event once, in event_id order");
    for r in &got {
        assert_eq!(
            r.header("idempotency-key"),
            Some(r.event_id().to_string().as_str())
        );
    }
    wait_state(api, 0, "crm", "delivered", 10);
}

/// Events raised while the handler is down wait in the ledger (pending) and all arrive,
/// in order, once it is up.
#[test]
fn events_raised_while_the_handler_is_down_all_arrive_in_order() {
    let addr = free_port();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*"]"#,
        &url(&format!("http://{addr}/late")),
        "timeout_ms = 1000",
    ));
    let (srv, _, api) = t.serve();
    raise(api, 20, "v");
    let ev = events(api, 0);
    assert_eq!(ev.len(), 20);
    assert!(
        ev.iter()
            .all(|e| state_of(e, "crm").as_deref() == Some("pending")),
        "{ev:?}"
    );
    let h = Handler::start_on(
        TcpListener::bind(addr).unwrap(),
        Arc::new(|_, _| answer(200, json!({}))),
    );
    assert_all_in_order(&h, api, 20);
    drop(srv);
}

/// A kill -9 of serve while events wait for a handler that is down loses none of them:
/// after the restart, they and the new ones all arrive, in order.
#[test]
fn pending_events_survive_a_crash() {
    let addr = free_port();
    let t = T::new(&hook(
        "crm",
        r#"["clients.*"]"#,
        &url(&format!("http://{addr}/late")),
        "timeout_ms = 1000",
    ));
    let (mut srv, _, api) = t.serve();
    raise(api, 6, "a");
    srv.kill9();
    let (srv, _, api) = t.serve();
    raise(api, 4, "b");
    let h = Handler::start_on(
        TcpListener::bind(addr).unwrap(),
        Arc::new(|_, _| answer(200, json!({}))),
    );
    assert_all_in_order(&h, api, 10);
    drop(srv);
}
