//! Issue 15 end to end: the JeraSoft VCS Management API dialect (seeds 000/001) over real
//! HTTP against the real `ratel serve` binary: the JSON-RPC 2.0 envelope and its errors,
//! `auth` and `SID` sessions (expiry, IP binding, `allow`), every method with its success
//! and its refusals (every missing or mistyped argument named), the seed's
//! `clients.editForm` example answered in the seed's shape, and `/admin/xdrs/download`
//! streamed as Parquet (read back with the parquet crate) and CSV (parsed here), checked
//! against the ledger opened read-only beside the server.
//!
//! Amounts are computed here from the config below, never read back from the code under
//! test: tariff `std` has one prefix, 1, at 0.0100/min with 60/60 increments, so an
//! answered call of `d` seconds costs `ceil(d / 60) * 0.01`. The rating zone is
//! Europe/Moscow (UTC+3 all year), so VCS times read 3 hours ahead of UTC and `c_dt` ends
//! in `+03` as in the seed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arrow_array::{Array, Decimal128Array, Int64Array, StringArray, UInt64Array};
use common::{col, http_request, HttpAnswer, Site};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[rating]
time_zone = "Europe/Moscow"
[cdr]
spool = "spool"
format = "generic"
[[admin]]
name = "system"
password = "sys"
[[admin]]
name = "clerk"
password = "cl"
allow = ["clients.list", "clients.editForm"]
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
[[charge_rule]]
name = "all"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[group]]
name = "Customers"
charge_rules = ["all"]
tariff = "std"
decimals = 4
rounding = "up"
[[group]]
name = "Wholesale"
charge_rules = ["all"]
tariff = "std"
decimals = 4
rounding = "up"
[[tariff]]
name = "std"
rates = "rates.csv"
[[hook]]
name = "crm"
events = ["clients.create"]
mode = "veto"
timeout_ms = 5000
command = ["sh", "-c", 'if grep -q VETO-ME; then echo "{\"allow\": false, \"reason\": \"blocked by the CRM\"}"; else echo "{\"allow\": true}"; fi']
"#;

const RATES: &str =
    "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n\
1,USA,0.0100,0,60,60\n";

fn site(extra: &str) -> Site {
    Site::new(&format!("{CONFIG}{extra}"), &[("rates.csv", RATES)])
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

// ---- the envelope -------------------------------------------------------------------------

/// POSTs `body` to `path` (`/jsonrpc/` or `/jsonrpc`); the JSON answer (always HTTP 200).
fn post_raw(api: SocketAddr, path: &str, body: &[u8]) -> Value {
    let a = http_request(
        None,
        api,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("application/json"));
    a.json()
}

/// One JSON-RPC 2.0 call; the whole answer, checked to be the VCS envelope.
fn call(api: SocketAddr, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 42});
    let v = post_raw(api, "/jsonrpc/", req.to_string().as_bytes());
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(v["id"], 42, "{v}");
    let r = v["result"]
        .as_object()
        .unwrap_or_else(|| panic!("{method}: no result in {v}"));
    let keys: Vec<&str> = r.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["code", "session_id", "messages", "return", "errors"],
        "{v}"
    );
    v
}

/// `params` with the session.
fn with_sid(sid: &str, params: Value) -> Value {
    let mut p = params;
    p.as_object_mut()
        .expect("params object")
        .insert("SID".into(), json!(sid));
    p
}

/// A call that must succeed: its `return` (the session stays the same).
fn ok(api: SocketAddr, sid: &str, method: &str, params: Value) -> Value {
    let v = call(api, method, with_sid(sid, params.clone()));
    let r = &v["result"];
    assert_eq!(r["code"], true, "{method} {params}: {v}");
    assert_eq!(r["errors"], json!([]), "{v}");
    assert_eq!(r["session_id"], sid, "{v}");
    r["return"].clone()
}

/// A call that must be refused: its errors (the return is null).
fn refused(api: SocketAddr, sid: &str, method: &str, params: Value) -> Vec<String> {
    let v = call(api, method, with_sid(sid, params.clone()));
    let r = &v["result"];
    assert_eq!(r["code"], false, "{method} {params}: {v}");
    assert_eq!(r["return"], Value::Null, "{v}");
    assert_eq!(r["messages"], json!([]), "{v}");
    let errors: Vec<String> = r["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors: {v}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(!errors.is_empty(), "{v}");
    errors
}

/// Asserts that one of `errors` contains `part`.
fn has(errors: &[String], part: &str) {
    assert!(
        errors.iter().any(|e| e.contains(part)),
        "{errors:?} should mention {part:?}"
    );
}

/// Logs in with `auth` (on `clients.list`); the session id.
fn login(api: SocketAddr, user: &str, pass: &str) -> String {
    let v = call(
        api,
        "clients.list",
        json!({"auth": {"login": user, "password": pass}, "limit": 1}),
    );
    assert_eq!(v["result"]["code"], true, "{v}");
    let sid = v["result"]["session_id"].as_str().unwrap().to_string();
    let token = sid.strip_prefix("1-").expect("the seed's 1- prefix");
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sid}"
    );
    sid
}

/// A JSON money value (a number with exact digits) as a Decimal.
fn money(v: &Value) -> Decimal {
    assert!(v.is_number(), "money is a JSON number: {v}");
    v.to_string().parse().unwrap()
}

// ---- 1. the seed's example ----------------------------------------------------------------

/// The seed's `clients.editForm` request, literally (no `jsonrpc` member), answered with
/// the seed's client object field for field.
#[test]
fn the_seed_example_is_answered_in_the_seed_shape() {
    let s = site("");
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");
    // Companies 2 and 3 (Main is 1), then clients 1..10, so the seed's client is 11 in
    // company 3.
    for name in ["Reseller B", "Mancy Telecom"] {
        ok(
            api,
            &sid,
            "companies.add",
            json!({"type": 10, "name": name, "id_companies": "", "prepaid": 1, "credit": "0.00"}),
        );
    }
    for i in 1..=10 {
        let c = ok(
            api,
            &sid,
            "clients.add",
            json!({"groups": "Wholesale", "name": format!("filler {i}")}),
        );
        assert_eq!(c["client"]["id"], i);
    }
    let before = chrono::Utc::now().timestamp();
    let added = call(
        api,
        "clients.add",
        json!({
            "SID": sid,
            "name": "Customer A",
            "groups": "Customers",
            "id_companies": 3,
            "credit": 100,
            "c_company": "Mancy",
            "c_email": "admin@example.net",
            "c_email_tech": "admin@example.net",
            "c_email_billing": "admin@example.net",
            "c_email_rates": "admin@example.net",
        }),
    );
    assert_eq!(added["result"]["code"], true, "{added}");
    assert_eq!(added["result"]["messages"], json!(["client 11 created"]));

    let seed_request = format!(
        r#"{{
  "method": "clients.editForm",
  "params": {{
    "id_clients": 11,
    "SID": "{sid}"
  }},
  "id": 1
}}"#
    );
    let v = post_raw(api, "/jsonrpc/", seed_request.as_bytes());
    // The seed's answer, with the fields its PHP dump shows (`id_companies`, `type`) in
    // their place and `id_currencies` as ISO 4217 (USD = 840; the seed's 27 is its own
    // table's id). `c_dt` is the creation time, checked below.
    let mut want = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "code": true,
            "session_id": sid,
            "messages": [],
            "return": {
                "client": {
                    "id": 11,
                    "id_companies": 3,
                    "type": 0,
                    "name": "Customer A",
                    "groups": "Customers",
                    "c_dt": "",
                    "status": "active",
                    "credit": 100,
                    "c_company": "Mancy",
                    "c_address": null,
                    "c_email": "admin@example.net",
                    "c_email_tech": "admin@example.net",
                    "c_email_billing": "admin@example.net",
                    "c_email_rates": "admin@example.net",
                    "id_currencies": 840
                }
            },
            "errors": []
        }
    });
    let client = &v["result"]["return"]["client"];
    let c_dt = client["c_dt"].as_str().unwrap_or_else(|| panic!("{v}"));
    // `2013-03-30 16:26:15+03`: Moscow time of the creation.
    assert_eq!(c_dt.len(), 22, "{c_dt}");
    assert!(c_dt.ends_with("+03"), "{c_dt}");
    let created = chrono::NaiveDateTime::parse_from_str(&c_dt[..19], "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp()
        - 3 * 3600;
    assert!(
        (before - 1..=chrono::Utc::now().timestamp()).contains(&created),
        "{c_dt}"
    );
    want["result"]["return"]["client"]["c_dt"] = json!(c_dt);
    assert_eq!(v, want);
    // Field for field in the seed's order, and the types the seed shows.
    let keys: Vec<&String> = client.as_object().unwrap().keys().collect();
    let want_keys: Vec<&String> = want["result"]["return"]["client"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, want_keys);
    assert_eq!(v.to_string().matches("\"credit\":100,").count(), 1, "{v}");
    // The same through `/jsonrpc` (no slash).
    let again = post_raw(api, "/jsonrpc", seed_request.as_bytes());
    assert_eq!(again, v);
}

// ---- 2. envelope, auth, sessions, allow --------------------------------------------------

#[test]
fn envelope_errors_auth_sessions_and_allow() {
    let s = site("");
    let (_server, _, api) = s.serve();
    // Malformed JSON, a batch, no method, params not an object, an unknown method:
    // JSON-RPC error objects.
    for (body, code, id) in [
        (&b"{\"method\": \"clients.list\""[..], -32700, Value::Null),
        (
            b"[{\"method\": \"clients.list\", \"id\": 1}]",
            -32600,
            Value::Null,
        ),
        (b"{\"jsonrpc\": \"2.0\", \"id\": 5}", -32600, json!(5)),
        (
            b"{\"jsonrpc\": \"2.0\", \"method\": \"clients.list\", \"params\": [1], \"id\": \"p\"}",
            -32602,
            json!("p"),
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"method\": \"clients.fly\", \"params\": {}, \"id\": 9}",
            -32601,
            json!(9),
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"method\": \"user.getUserInfo\", \"id\": 10}",
            -32601,
            json!(10),
        ),
    ] {
        let v = post_raw(api, "/jsonrpc/", body);
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v.get("result").is_none(), "{v}");
    }

    // No credentials, wrong ones, half of them: code false, no session.
    for (params, part) in [
        (json!({}), "auth: required"),
        (
            json!({"auth": {"login": "system", "password": "nope"}}),
            "wrong username or password",
        ),
        (
            json!({"auth": {"login": "ghost", "password": "sys"}}),
            "wrong username or password",
        ),
        (
            json!({"auth": {"login": "system"}}),
            "auth.password: required",
        ),
        (json!({"auth": "system:sys"}), "auth: expected"),
        (json!({"SID": "1-00"}), "invalid session"),
        (json!({"SID": 7}), "SID: expected a string"),
    ] {
        let v = call(api, "clients.list", params.clone());
        let r = &v["result"];
        assert_eq!(r["code"], false, "{params}: {v}");
        assert_eq!(r["session_id"], Value::Null, "{v}");
        assert_eq!(r["return"], Value::Null, "{v}");
        has(
            &r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            part,
        );
    }

    // A session: the SID answers on every call; the same session from another IP is
    // refused; a dead SID beside auth logs in again.
    let sid = login(api, "system", "sys");
    let r = ok(api, &sid, "clients.list", json!({}));
    assert_eq!(r, json!({"clients": [], "total": 0}));
    let other = http_request(
        Some("127.0.0.2".parse().unwrap()),
        api,
        "POST",
        "/jsonrpc/",
        &[("Content-Type", "application/json")],
        json!({"jsonrpc": "2.0", "method": "clients.list", "params": {"SID": sid}, "id": 1})
            .to_string()
            .as_bytes(),
    )
    .json();
    assert_eq!(other["result"]["code"], false, "{other}");
    assert_eq!(other["result"]["errors"], json!(["invalid session"]));
    let v = call(
        api,
        "clients.list",
        json!({"SID": "1-deadbeef", "auth": {"login": "system", "password": "sys"}}),
    );
    assert_eq!(v["result"]["code"], true, "{v}");
    let new_sid = v["result"]["session_id"].as_str().unwrap();
    assert!(new_sid.starts_with("1-") && new_sid != sid);
    // A valid SID wins over auth: no new session.
    let v = call(
        api,
        "clients.list",
        json!({"SID": sid, "auth": {"login": "system", "password": "sys"}}),
    );
    assert_eq!(v["result"]["session_id"], sid.as_str());

    // `allow`: the clerk may list and read clients, nothing else; the refusal names the
    // method.
    let clerk = login(api, "clerk", "cl");
    ok(api, &clerk, "clients.list", json!({}));
    for m in [
        "clients.add",
        "payments.add",
        "xdrs.list",
        "events.list",
        "companies.list",
    ] {
        let e = refused(api, &clerk, m, json!({}));
        assert_eq!(e, [format!("{m} is not in this admin's allow list")]);
    }
    // Arguments: every missing one named, and unknown ones.
    let e = refused(api, &sid, "clients.editForm", json!({}));
    assert_eq!(e, ["id_clients: required"]);
    let e = refused(
        api,
        &sid,
        "clients.editForm",
        json!({"id_clients": "x", "colour": 1}),
    );
    assert_eq!(
        e,
        [
            "id_clients: expected an integer",
            "colour: unknown argument"
        ]
    );
    let e = refused(api, &sid, "clients.editForm", json!({"id_clients": 99}));
    assert_eq!(e, ["User with id 99 does not exist"]);
}

/// Sessions expire after `[api] session_idle_secs` unused.
#[test]
fn sessions_expire() {
    let s = site("");
    let cfg = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("[api]\n", "[api]\nsession_idle_secs = 1\n");
    std::fs::write(s.config(), cfg).unwrap();
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");
    ok(api, &sid, "clients.list", json!({}));
    std::thread::sleep(Duration::from_millis(1300));
    let e = refused(api, &sid, "clients.list", json!({}));
    assert_eq!(e, ["session expired; log in again"]);
}

// ---- 3. clients, accounts, companies -------------------------------------------------------

#[test]
fn clients_accounts_and_companies() {
    let s = site("");
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");

    // companies.*
    let c = ok(
        api,
        &sid,
        "companies.add",
        json!({"name": "Mancy", "prepaid": "0", "credit": "12.50"}),
    );
    assert_eq!(
        c,
        json!({"company": {"id": 2, "name": "Mancy", "type": 10, "prepaid": false, "credit": 12.5}})
    );
    let list = ok(api, &sid, "companies.list", json!({}));
    assert_eq!(list["companies"][0]["name"], "Main");
    assert_eq!(list["companies"][1]["id"], 2);
    has(
        &refused(api, &sid, "companies.add", json!({"name": "Mancy"})),
        "exists",
    );
    let e = refused(
        api,
        &sid,
        "companies.add",
        json!({"id_companies": 2, "prepaid": "maybe", "credit": "x"}),
    );
    assert_eq!(
        e,
        [
            "name: required",
            "id_companies: companies under a company other than the main one (1) are not supported; leave it empty",
            "prepaid: expected true or false (1 or 0)",
            "credit: \"x\" is not a decimal number",
        ]
    );

    // clients.add: every refusal, then three clients.
    let e = refused(
        api,
        &sid,
        "clients.add",
        json!({"username": "x", "type": 10, "credit": "1e99"}),
    );
    assert_eq!(
        e,
        [
            "type: only 0 (customer)",
            "groups: required",
            "password: required with username",
            "credit: 1e99 is outside the credit range -10^15..=10^15",
        ]
    );
    has(
        &refused(api, &sid, "clients.add", json!({"groups": "Gold"})),
        "Group Gold not found",
    );
    has(
        &refused(
            api,
            &sid,
            "clients.add",
            json!({"groups": "Customers", "id_companies": 9}),
        ),
        "id_companies: no company 9",
    );
    // A veto hook forbids: its reason is the error.
    let e = refused(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "name": "VETO-ME"}),
    );
    assert_eq!(e, ["forbidden by hook crm: blocked by the CRM"]);
    let alice = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "name": "Alice Smith", "username": "alice", "password": "pw1", "credit": "10.25", "c_email": "alice@example.net", "id_companies": 2}),
    );
    let alice = alice["client"]["id"].as_i64().unwrap();
    let bob = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Wholesale", "username": "bob", "password": "pw2"}),
    )["client"]["id"]
        .as_i64()
        .unwrap();
    let carol = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Wholesale", "name": "Carol"}),
    )["client"]["id"]
        .as_i64()
        .unwrap();
    has(
        &refused(
            api,
            &sid,
            "clients.add",
            json!({"groups": "Customers", "username": "alice", "password": "x"}),
        ),
        "exists",
    );
    let a = &ok(api, &sid, "clients.editForm", json!({"id_clients": alice}))["client"];
    assert_eq!(a["name"], "Alice Smith");
    assert_eq!(a["id_companies"], 2);
    assert_eq!(money(&a["credit"]), d("10.25"));
    assert_eq!(a["c_email"], "alice@example.net");
    // The name defaults to the username.
    assert_eq!(
        ok(api, &sid, "clients.editForm", json!({"id_clients": bob}))["client"]["name"],
        "bob"
    );

    // clients.list: filters and pages.
    let names = |r: &Value| -> Vec<String> {
        r["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ok(api, &sid, "clients.list", json!({}));
    assert_eq!(
        (all["total"].clone(), names(&all)),
        (
            json!(3),
            vec!["Alice Smith".to_string(), "bob".into(), "Carol".into()]
        )
    );
    let r = ok(api, &sid, "clients.list", json!({"name": "AR"}));
    assert_eq!(names(&r), ["Carol"]);
    let r = ok(api, &sid, "clients.list", json!({"id_companies": 2}));
    assert_eq!(names(&r), ["Alice Smith"]);
    let r = ok(api, &sid, "clients.list", json!({"offset": 1, "limit": 1}));
    assert_eq!(
        (r["total"].clone(), names(&r)),
        (json!(3), vec!["bob".to_string()])
    );
    let e = refused(
        api,
        &sid,
        "clients.list",
        json!({"status": "gone", "limit": 5000, "offset": "x"}),
    );
    assert_eq!(
        e,
        [
            "status: active, locked or archived",
            "offset: expected an integer",
            "limit: 0 to 1000"
        ]
    );

    // clients.edit: fields, null clears, status, refusals.
    let e = ok(
        api,
        &sid,
        "clients.edit",
        json!({"id_clients": alice, "c_email": null, "c_address": "1 Main St", "status": "locked", "lock_reason": "unpaid", "groups": "Wholesale"}),
    );
    let c = &e["client"];
    assert_eq!(
        (
            c["c_email"].clone(),
            c["c_address"].clone(),
            c["status"].clone(),
            c["groups"].clone()
        ),
        (
            Value::Null,
            json!("1 Main St"),
            json!("locked"),
            json!("Wholesale")
        )
    );
    assert_eq!(
        names(&ok(api, &sid, "clients.list", json!({"status": "locked"}))),
        ["Alice Smith"]
    );
    assert_eq!(
        ok(
            api,
            &sid,
            "clients.edit",
            json!({"id_clients": alice, "status": "active"})
        )["client"]["status"],
        "active"
    );
    let e = refused(
        api,
        &sid,
        "clients.edit",
        json!({"id_clients": alice, "credit": 5, "lock_reason": "x"}),
    );
    assert_eq!(
        e,
        [
            "lock_reason: only with status locked",
            "credit: the balance changes through payments.add"
        ]
    );
    has(
        &refused(api, &sid, "clients.edit", json!({"id_clients": alice})),
        "nothing to change",
    );
    has(
        &refused(
            api,
            &sid,
            "clients.edit",
            json!({"id_clients": alice, "groups": "Gold"}),
        ),
        "Group Gold not found",
    );
    has(
        &refused(
            api,
            &sid,
            "clients.edit",
            json!({"id_clients": 77, "name": "x"}),
        ),
        "does not exist",
    );

    // clients.archive, clients.delete.
    assert_eq!(
        ok(api, &sid, "clients.archive", json!({"id_clients": carol}))["client"]["status"],
        "archived"
    );
    assert_eq!(
        names(&ok(
            api,
            &sid,
            "clients.list",
            json!({"status": "archived"})
        )),
        ["Carol"]
    );
    has(
        &refused(api, &sid, "clients.archive", json!({"id_clients": 77})),
        "does not exist",
    );
    assert_eq!(
        refused(api, &sid, "clients.delete", json!({"id_clients": []})),
        ["id_clients: expected an id or a list of ids (at most 10000)"]
    );
    let d = call(
        api,
        "clients.delete",
        json!({"SID": sid, "id_clients": [carol], "notes": "gone"}),
    );
    assert_eq!(d["result"]["return"], json!({"deleted": [carol]}));
    assert_eq!(d["result"]["messages"], json!(["1 client(s) deleted"]));
    has(
        &refused(api, &sid, "clients.editForm", json!({"id_clients": carol})),
        "does not exist",
    );
    assert_eq!(ok(api, &sid, "clients.list", json!({}))["total"], 2);
    has(
        &refused(api, &sid, "clients.delete", json!({"id_clients": carol})),
        "does not exist",
    );

    // accounts.*
    let kinds = |r: &Value| -> Vec<(String, String, bool)> {
        r["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["kind"].as_str().unwrap().into(),
                    a["name"].as_str().unwrap().into(),
                    a["primary"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let l = ok(api, &sid, "accounts.list", json!({"id_clients": alice}));
    assert_eq!(
        kinds(&l),
        [("radius".to_string(), "alice".to_string(), true)]
    );
    assert_eq!(l["accounts"][0]["id_clients"], alice);
    ok(
        api,
        &sid,
        "accounts.add",
        json!({"id_clients": alice, "kind": "voip", "name": "1001"}),
    );
    let l = ok(
        api,
        &sid,
        "accounts.add",
        json!({"id_clients": alice, "kind": "dn", "name": "+1 (917) 375-0980"}),
    );
    assert!(
        kinds(&l).contains(&("dn".to_string(), "19173750980".to_string(), false)),
        "{l}"
    );
    assert_eq!(kinds(&l).len(), 3, "{l}");
    let e = refused(api, &sid, "accounts.add", json!({}));
    assert_eq!(
        e,
        ["id_clients: required", "kind: required", "name: required"]
    );
    let e = refused(
        api,
        &sid,
        "accounts.add",
        json!({"id_clients": alice, "kind": "sip", "name": "x"}),
    );
    assert_eq!(e, ["kind: radius, voip or dn"]);
    has(
        &refused(
            api,
            &sid,
            "accounts.add",
            json!({"id_clients": alice, "kind": "dn", "name": "abc"}),
        ),
        "name: dn \"abc\"",
    );
    has(
        &refused(
            api,
            &sid,
            "accounts.add",
            json!({"id_clients": bob, "kind": "voip", "name": "1001"}),
        ),
        "exists already",
    );
    has(
        &refused(
            api,
            &sid,
            "accounts.add",
            json!({"id_clients": bob, "kind": "voip", "name": "2002", "password": "x"}),
        ),
        "password: only radius accounts",
    );
    // A password through a radius account is the client's password: bob logs in with it
    // (IBSng NORMAL_USER login, the same service).
    ok(
        api,
        &sid,
        "accounts.add",
        json!({"id_clients": bob, "kind": "radius", "name": "bob-2", "password": "new-pw"}),
    );
    let (r, e) = common::rpc(
        api,
        "login.login",
        json!({"login_auth_name": "bob", "login_auth_pass": "new-pw", "login_auth_type": "NORMAL_USER", "create_session": false}),
    );
    assert_eq!((r, e), (json!(true), Value::Null));
    // Renames: a voip account, then the username's radius account (the client's username).
    let l = ok(
        api,
        &sid,
        "accounts.edit",
        json!({"id_clients": alice, "kind": "voip", "name": "1001", "new_name": "1002"}),
    );
    assert!(
        kinds(&l).contains(&("voip".into(), "1002".into(), false)),
        "{l}"
    );
    let l = ok(
        api,
        &sid,
        "accounts.edit",
        json!({"id_clients": alice, "kind": "radius", "name": "alice", "new_name": "alice2"}),
    );
    assert!(
        kinds(&l).contains(&("radius".into(), "alice2".into(), true)),
        "{l}"
    );
    let (r, _) = common::rpc(
        api,
        "login.login",
        json!({"login_auth_name": "alice2", "login_auth_pass": "pw1", "login_auth_type": "NORMAL_USER", "create_session": false}),
    );
    assert_eq!(r, json!(true), "the password is kept");
    has(
        &refused(
            api,
            &sid,
            "accounts.edit",
            json!({"id_clients": alice, "kind": "voip", "name": "1002"}),
        ),
        "new_name: required (or password)",
    );
    has(
        &refused(
            api,
            &sid,
            "accounts.edit",
            json!({"id_clients": alice, "kind": "voip", "name": "7777", "new_name": "1"}),
        ),
        "not an account of client",
    );
    // accounts.delete; the username's account cannot go.
    let l = ok(
        api,
        &sid,
        "accounts.delete",
        json!({"id_clients": alice, "kind": "voip", "name": "1002"}),
    );
    assert!(!kinds(&l).iter().any(|k| k.0 == "voip"), "{l}");
    has(
        &refused(
            api,
            &sid,
            "accounts.delete",
            json!({"id_clients": alice, "kind": "radius", "name": "alice2"}),
        ),
        "is the client's username",
    );
    has(
        &refused(
            api,
            &sid,
            "accounts.delete",
            json!({"id_clients": alice, "kind": "voip", "name": "1002"}),
        ),
        "not an account of client",
    );
    has(
        &refused(api, &sid, "accounts.list", json!({"id_clients": 404})),
        "does not exist",
    );
}

// ---- 4. money, xDRs, events, downloads ----------------------------------------------------

/// One generic CDR: (call id, account, start, seconds, answered).
type Call = (
    String,
    &'static str,
    chrono::DateTime<chrono::Utc>,
    i64,
    bool,
);

/// `ceil(d / 60) * 0.01`: prefix 1, 60/60, 0.0100/min.
fn cost(c: &Call) -> Decimal {
    if !c.4 || c.3 == 0 {
        return Decimal::ZERO;
    }
    Decimal::new((c.3 + 59) / 60, 2)
}

fn calls() -> Vec<Call> {
    use chrono::TimeZone;
    let day = |d: u32, h: u32, m: u32| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
    let mut v = Vec::new();
    for i in 0..12u32 {
        v.push((
            format!("a2-{i}"),
            "1001",
            day(2, 10, i * 4),
            30 + 17 * i as i64,
            true,
        ));
    }
    for i in 0..6u32 {
        v.push((
            format!("a3-{i}"),
            "1001",
            day(3, 9, i * 5),
            61 + 40 * i as i64,
            true,
        ));
    }
    for i in 0..8u32 {
        v.push((
            format!("b2-{i}"),
            "bob",
            day(2, 14, i * 3),
            45 * (i as i64 + 1),
            true,
        ));
    }
    v.push(("a2-unanswered".into(), "1001", day(2, 11, 0), 0, false));
    v.push(("nobody".into(), "9999", day(2, 12, 0), 120, true));
    v
}

fn cdr_file(calls: &[Call]) -> String {
    let mut f = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    for (id, acc, start, secs, answered) in calls {
        f.push_str(&format!(
            "{id},100,15551234567,{},{secs},{},{acc}\n",
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            if *answered { "ANSWERED" } else { "NO ANSWER" }
        ));
    }
    f
}

/// What the ledger took from each client (usage and refunds), by user id, and the xDR
/// rows its files hold.
fn ledger_view(s: &Site) -> (std::collections::BTreeMap<i64, Decimal>, i64) {
    let l = s.ledger_ro();
    let mut taken = std::collections::BTreeMap::new();
    let mut st = l
        .prepare("SELECT user_id, amount FROM journal WHERE kind IN ('usage', 'refund')")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    for r in rows {
        let (u, a) = r.unwrap();
        *taken.entry(u).or_insert(Decimal::ZERO) -= d(&a);
    }
    let files: i64 = l
        .query_row("SELECT coalesce(sum(rows), 0) FROM xdr_files", [], |r| {
            r.get(0)
        })
        .unwrap();
    (taken, files)
}

/// `/admin/xdrs/download` with `query` (GET) or `body` (POST, form).
fn download(api: SocketAddr, method: &str, query: &str, body: &str) -> HttpAnswer {
    let path = format!("/admin/xdrs/download?{query}");
    let headers: &[(&str, &str)] = if method == "POST" {
        &[("Content-Type", "application/x-www-form-urlencoded")]
    } else {
        &[]
    };
    http_request(None, api, method, &path, headers, body.as_bytes())
}

/// An xDR as the download checks read it: (xdr_id, user_id, status, credit_used).
type Row = (u64, Option<i64>, String, Decimal);

/// The rows of a downloaded Parquet file: (xdr_id, user_id, status, credit_used), and the
/// column names.
fn read_parquet(bytes: &[u8]) -> (Vec<Row>, Vec<String>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let r =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(tmp.path()).unwrap()).unwrap();
    let names = r
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut out = Vec::new();
    for b in r.build().unwrap() {
        let b = b.unwrap();
        let (ids, users, status, credit) = (
            col::<UInt64Array>(&b, "xdr_id"),
            col::<Int64Array>(&b, "user_id"),
            col::<StringArray>(&b, "status"),
            col::<Decimal128Array>(&b, "credit_used"),
        );
        for i in 0..b.num_rows() {
            out.push((
                ids.value(i),
                (!users.is_null(i)).then(|| users.value(i)),
                status.value(i).to_string(),
                Decimal::from_i128_with_scale(credit.value(i), 10).normalize(),
            ));
        }
    }
    (out, names)
}

/// RFC 4180, written here: quoted fields with doubled quotes, CRLF lines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut quoted = false;
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        if quoted {
            match c {
                '"' if it.peek() == Some(&'"') => {
                    field.push('"');
                    it.next();
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\r' => assert_eq!(it.peek(), Some(&'\n'), "a bare CR"),
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                _ => field.push(c),
            }
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "the file ends with a line end"
    );
    rows
}

/// The rows of a downloaded CSV file, as `read_parquet`.
fn read_csv(bytes: &[u8]) -> (Vec<Row>, Vec<String>) {
    let rows = parse_csv(std::str::from_utf8(bytes).unwrap());
    let header = rows[0].clone();
    let at = |n: &str| header.iter().position(|h| h == n).unwrap();
    let (id, user, status, credit) = (at("xdr_id"), at("user_id"), at("status"), at("credit_used"));
    let out = rows[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), header.len(), "{r:?}");
            (
                r[id].parse().unwrap(),
                (!r[user].is_empty()).then(|| r[user].parse().unwrap()),
                r[status].clone(),
                d(&r[credit]),
            )
        })
        .collect();
    (out, header)
}

/// Sum of credit_used per user id.
fn per_user(rows: &[Row]) -> std::collections::BTreeMap<i64, Decimal> {
    let mut m = std::collections::BTreeMap::new();
    for (_, u, _, c) in rows {
        if let Some(u) = u {
            *m.entry(*u).or_insert(Decimal::ZERO) += *c;
        }
    }
    m
}

#[test]
fn payments_xdrs_events_and_downloads() {
    let s = site("");
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");
    let alice = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "username": "alice", "password": "pw", "credit": 50}),
    )["client"]["id"]
        .as_i64()
        .unwrap();
    let bob = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "username": "bob", "password": "pw", "credit": 20}),
    )["client"]["id"]
        .as_i64()
        .unwrap();
    ok(
        api,
        &sid,
        "accounts.add",
        json!({"id_clients": alice, "kind": "voip", "name": "1001"}),
    );

    // payments.add / payments.list
    let p = ok(
        api,
        &sid,
        "payments.add",
        json!({"id_clients": alice, "amount": 25.5, "notes": "cash"}),
    );
    assert_eq!(p["payment"]["type"], "payment");
    assert_eq!(money(&p["payment"]["amount"]), d("25.5"));
    assert_eq!(money(&p["credit"]), d("75.5"));
    let pay_id = p["payment"]["id"].as_i64().unwrap();
    let e = refused(
        api,
        &sid,
        "payments.add",
        json!({"id_clients": "alice", "notes": 5}),
    );
    assert_eq!(e, ["id_clients: expected an integer", "amount: required"]);
    assert_eq!(
        refused(
            api,
            &sid,
            "payments.add",
            json!({"id_clients": alice, "amount": 0})
        ),
        ["amount: a payment is more than 0"]
    );
    assert_eq!(
        refused(
            api,
            &sid,
            "payments.add",
            json!({"id_clients": alice, "amount": "1.5e3x"})
        ),
        ["amount: \"1.5e3x\" is not a decimal number"]
    );
    has(
        &refused(
            api,
            &sid,
            "payments.add",
            json!({"id_clients": 999, "amount": 1}),
        ),
        "does not exist",
    );
    let l = ok(api, &sid, "payments.list", json!({"id_clients": alice}));
    let pays = l["payments"].as_array().unwrap();
    // The opening credit (a payment row) and the cash payment.
    assert_eq!(pays.len(), 2, "{l}");
    let last = &pays[1];
    assert_eq!(
        (
            last["id"].as_i64(),
            last["type"].as_str(),
            last["notes"].as_str(),
            last["admin"].as_str()
        ),
        (Some(pay_id), Some("payment"), Some("cash"), Some("system"))
    );
    assert_eq!(money(&last["balance_after"]), d("75.5"));
    let t = last["time"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{t}"
    );
    assert_eq!(
        ok(
            api,
            &sid,
            "payments.list",
            json!({"id_clients": alice, "from": "2026-01-01 00:00:00", "to": "2026-01-02 00:00:00"})
        ),
        json!({"payments": []})
    );
    let e = refused(
        api,
        &sid,
        "payments.list",
        json!({"id_clients": alice, "from": "yesterday", "to": 5}),
    );
    assert_eq!(e.len(), 2, "{e:?}");
    has(&e, "from: ");
    has(&e, "to: expected \"YYYY-MM-DD HH:MM:SS\"");

    // Rate the CDRs (the spool), then xdrs.list.
    let calls = calls();
    s.drop_cdr("cdrs.csv", &cdr_file(&calls));
    s.wait_spool_done(1);
    let of = |acc: &str, day: u32| -> Vec<&Call> {
        calls
            .iter()
            .filter(|c| {
                c.1 == acc && chrono::Datelike::day(&(c.2 + chrono::Duration::seconds(c.3))) == day
            })
            .collect()
    };
    let sum = |cs: &[&Call]| cs.iter().map(|c| cost(c)).sum::<Decimal>();
    let alice_2 = of("1001", 2);
    // Moscow: [2026-11-02 03:00, 2026-11-03 03:00) local is the UTC day 2026-11-02.
    let day2 = json!({"from": "2026-11-02 03:00:00", "to": "2026-11-03 03:00:00"});
    let mut q = day2.clone();
    q["id_clients"] = json!(alice);
    let r = ok(api, &sid, "xdrs.list", q.clone());
    assert_eq!(r["total"], alice_2.len(), "{r}");
    assert_eq!(money(&r["credit_used"]), sum(&alice_2));
    let first = &r["xdrs"][0];
    assert_eq!(first["user_id"], alice);
    assert_eq!(first["account"], "1001");
    assert_eq!(first["service_type"], "VoIP");
    // 10:00 UTC is 13:00 in Moscow; logout = start + 30 s.
    assert_eq!(first["login_time"], "2026-11-02 13:00:00");
    assert_eq!(first["logout_time"], "2026-11-02 13:00:30");
    assert_eq!(money(&first["credit_used"]), d("0.01"));
    let ids: Vec<u64> = r["xdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["xdr_id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in xDR id order: {ids:?}"
    );
    // Pages.
    q["offset"] = json!(3);
    q["limit"] = json!(2);
    let page = ok(api, &sid, "xdrs.list", q.clone());
    let page_ids: Vec<u64> = page["xdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["xdr_id"].as_u64().unwrap())
        .collect();
    assert_eq!(page_ids, ids[3..5]);
    assert_eq!(page["total"], alice_2.len());
    // Every client: the unknown account's xDR too (user_id null).
    let everyone = ok(api, &sid, "xdrs.list", day2.clone());
    assert_eq!(
        everyone["total"],
        calls
            .iter()
            .filter(|c| chrono::Datelike::day(&c.2) == 2)
            .count()
    );
    let e = refused(
        api,
        &sid,
        "xdrs.list",
        json!({"from": "2026-11-03 00:00:00", "to": "2026-11-02 00:00:00", "limit": 10001}),
    );
    assert_eq!(e, ["to: must be after from", "limit: 0 to 10000"]);
    assert_eq!(
        refused(api, &sid, "xdrs.list", json!({"id_clients": alice})),
        ["from: required", "to: required"]
    );
    has(
        &refused(
            api,
            &sid,
            "xdrs.list",
            json!({"id_clients": 999, "from": "2026-11-02 00:00:00", "to": "2026-11-03 00:00:00"}),
        ),
        "does not exist",
    );

    // xdrs.cancel: alice's charges of the UTC day 2026-11-02 (ISO-8601 accepted too).
    let cancel = json!({"id_clients": alice, "from": "2026-11-02T00:00:00Z", "to": "2026-11-03T00:00:00Z", "notes": "goodwill"});
    let c = ok(api, &sid, "xdrs.cancel", cancel.clone());
    let charged: Vec<&&Call> = alice_2.iter().filter(|c| cost(c) > Decimal::ZERO).collect();
    assert_eq!(c["cancelled"], charged.len());
    assert_eq!(money(&c["amount"]), sum(&alice_2));
    let again = ok(api, &sid, "xdrs.cancel", cancel);
    assert_eq!(
        (
            again["cancelled"].clone(),
            money(&again["amount"]),
            again["id_journal"].clone()
        ),
        (json!(0), Decimal::ZERO, Value::Null)
    );
    assert_eq!(
        refused(api, &sid, "xdrs.cancel", json!({"id_clients": alice})),
        ["from: required", "to: required"]
    );
    has(
        &refused(
            api,
            &sid,
            "xdrs.cancel",
            json!({"id_clients": 999, "from": "2026-11-02 00:00:00", "to": "2026-11-03 00:00:00"}),
        ),
        "does not exist",
    );
    // The refund is in payments.list (not usage).
    let l = ok(api, &sid, "payments.list", json!({"id_clients": alice}));
    let refund = l["payments"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (refund["type"].as_str(), refund["notes"].as_str()),
        (Some("refund"), Some("goodwill"))
    );
    assert_eq!(money(&refund["amount"]), sum(&alice_2));

    // events.list: the clients' creation, their accounts, the payment's crossing...
    let ev = ok(api, &sid, "events.list", json!({}));
    let names: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[..3],
        ["clients.create", "accounts.create", "clients.create"],
        "{ev}"
    );
    assert!(names.contains(&"accounts.create"));
    assert_eq!(ev["events"][0]["id_clients"], alice);
    assert_eq!(ev["events"][0]["body"]["event"], "clients.create");
    let after = ok(api, &sid, "events.list", json!({"after": 1, "limit": 1}));
    assert_eq!(after["events"].as_array().unwrap().len(), 1);
    assert_eq!(after["events"][0]["event_id"], 2);
    assert_eq!(
        refused(api, &sid, "events.list", json!({"limit": -1})),
        ["limit: 0 to 10000"]
    );

    // ---- downloads: the REFUND xDRs reach Parquet first, so the files hold everything.
    s.wait_outbox_empty();
    let (taken, file_rows) = ledger_view(&s);
    assert_eq!(
        file_rows as usize,
        calls.len() + charged.len(),
        "xDRs + REFUND xDRs"
    );
    let range = "from=2026-11-01%2000:00:00&to=2026-11-05%2000:00:00";
    let schema: Vec<String> = ratel_engine::xdr::schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let pq = download(
        api,
        "GET",
        &format!("login=system&password=sys&{range}&format=parquet"),
        "",
    );
    assert_eq!(pq.status, 200, "{:?}", String::from_utf8_lossy(&pq.body));
    assert!(pq.chunked, "streamed with chunked transfer");
    assert_eq!(
        pq.header("content-type"),
        Some("application/vnd.apache.parquet")
    );
    assert_eq!(
        pq.header("content-disposition"),
        Some("attachment; filename=\"xdrs_20261101T000000_20261105T000000.parquet\"")
    );
    let (rows, names) = read_parquet(&pq.body);
    assert_eq!(names, schema, "columns as the xDR Parquet schema");
    assert_eq!(rows.len() as i64, file_rows);
    assert_eq!(
        per_user(&rows),
        taken,
        "sum(credit_used) per client == the ledger"
    );
    assert_eq!(taken[&bob], sum(&of("bob", 2)));
    let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "each xDR once");
    assert_eq!(
        rows.iter().filter(|r| r.2 == "REFUND").count(),
        charged.len()
    );

    // CSV (the default format), by POST with the session as a form field.
    let csv = download(api, "POST", "", &format!("SID={sid}&{range}"));
    assert_eq!(csv.status, 200);
    assert!(csv.chunked);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(csv
        .header("content-disposition")
        .unwrap()
        .ends_with(".csv\""));
    let (csv_rows, header) = read_csv(&csv.body);
    assert_eq!(header, schema);
    let mut a = rows.clone();
    let mut b = csv_rows.clone();
    a.sort_by_key(|r| r.0);
    b.sort_by_key(|r| r.0);
    assert_eq!(a, b, "CSV and Parquet hold the same rows");

    // One client, one day (VCS times), JSON body with `auth`.
    let one = http_request(
        None,
        api,
        "POST",
        "/admin/xdrs/download",
        &[("Content-Type", "application/json")],
        json!({"auth": {"login": "system", "password": "sys"}, "id_clients": bob, "from": "2026-11-02 03:00:00", "to": "2026-11-03 03:00:00", "format": "parquet"}).to_string().as_bytes(),
    );
    assert_eq!(one.status, 200);
    assert_eq!(
        one.header("content-disposition"),
        Some(
            format!(
                "attachment; filename=\"xdrs_20261102T030000_20261103T030000_client{bob}.parquet\""
            )
            .as_str()
        )
    );
    let (bob_rows, _) = read_parquet(&one.body);
    assert_eq!(bob_rows.len(), of("bob", 2).len());
    assert!(bob_rows.iter().all(|r| r.1 == Some(bob)));
    assert_eq!(per_user(&bob_rows)[&bob], taken[&bob]);
    // The path with a trailing slash too.
    let slash = http_request(
        None,
        api,
        "GET",
        &format!("/admin/xdrs/download/?SID={sid}&id_clients={bob}&{range}"),
        &[],
        b"",
    );
    assert_eq!(slash.status, 200);
    assert_eq!(read_csv(&slash.body).0.len(), bob_rows.len());
    // An empty range is a header only.
    let empty = download(
        api,
        "GET",
        "login=system&password=sys&from=2025-01-01%2000:00:00&to=2025-01-02%2000:00:00",
        "",
    );
    assert_eq!(empty.status, 200);
    assert_eq!(
        parse_csv(std::str::from_utf8(&empty.body).unwrap()),
        vec![schema.clone()]
    );

    // Refusals, before any byte of a file: JSON with a status.
    let clerk = login(api, "clerk", "cl");
    for (method, query, status, part) in [
        ("GET", range.to_string(), 401, "auth: required"),
        (
            "GET",
            format!("login=system&password=bad&{range}"),
            401,
            "wrong username or password",
        ),
        (
            "GET",
            format!("SID={clerk}&{range}"),
            403,
            "xdrs.download is not in this admin's allow list",
        ),
        ("GET", format!("SID={sid}"), 400, "from: required"),
        (
            "GET",
            format!("SID={sid}&{range}&format=xlsx"),
            400,
            "format: csv or parquet",
        ),
        (
            "GET",
            format!("SID={sid}&from=2026-11-05%2000:00:00&to=2026-11-01%2000:00:00"),
            400,
            "to: must be after from",
        ),
        (
            "GET",
            format!("SID={sid}&{range}&id_clients=999"),
            404,
            "does not exist",
        ),
        (
            "GET",
            format!("SID={sid}&{range}&colour=red"),
            400,
            "colour: unknown argument",
        ),
        ("DELETE", format!("SID={sid}&{range}"), 405, "GET or POST"),
    ] {
        let a = download(api, method, &query, "");
        assert_eq!(
            a.status,
            status,
            "{query}: {:?}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("content-type"), Some("application/json"));
        let v = a.json();
        assert_eq!(v["code"], false);
        let errors: Vec<String> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().into())
            .collect();
        has(&errors, part);
    }
    let a = http_request(
        None,
        api,
        "GET",
        &format!("/admin/invoices/download?SID={sid}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 404);
    has(
        &[a.json()["errors"][0].as_str().unwrap().to_string()],
        "no file at /admin/invoices/download",
    );
}

/// A download far larger than the channel and the CSV buffer streams to the end while
/// the server answers other calls; a client that goes away mid-download frees its slot.
#[test]
fn downloads_stream_and_stop_when_the_client_goes() {
    let s = site("");
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");
    ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "username": "alice", "password": "pw", "credit": 5000}),
    );
    let mut f = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    let n = 60_000;
    for i in 0..n {
        f.push_str(&format!(
            "c{i},100,15551234567,2026-11-02T{:02}:{:02}:{:02}Z,{},ANSWERED,alice\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            1 + i % 200
        ));
    }
    s.drop_cdr("big.csv", &f);
    s.wait_spool_done(1);
    s.wait_outbox_empty();
    let range = "from=2026-11-02%2000:00:00&to=2026-11-04%2000:00:00";
    // MAX_DOWNLOADS clients that read the head and stop reading (a small receive window,
    // so the server cannot push the file into socket buffers): their downloads hold the
    // slots, and one more is refused meanwhile.
    let mut held = Vec::new();
    for _ in 0..ratel_api::vcs::files::MAX_DOWNLOADS {
        use std::io::{Read, Write};
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&api.into()).unwrap();
        let mut sock: std::net::TcpStream = sock.into();
        write!(
            sock,
            "GET /admin/xdrs/download?SID={sid}&{range} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let got = sock.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..got]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(sock);
    }
    let busy = download(api, "GET", &format!("SID={sid}&{range}"), "");
    assert_eq!(
        busy.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&busy.body)
    );
    has(
        &[busy.json()["errors"][0].as_str().unwrap().to_string()],
        "downloads are running",
    );
    // The clients hang up: their downloads stop and free the slots within a bounded time.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let csv = loop {
        let a = download(api, "GET", &format!("SID={sid}&{range}"), "");
        if a.status == 200 {
            break a;
        }
        assert_eq!(a.status, 503, "{:?}", String::from_utf8_lossy(&a.body));
        assert!(
            Instant::now() < deadline,
            "abandoned downloads still hold their slots"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (rows, _) = read_csv(&csv.body);
    assert_eq!(rows.len(), n);
    let (taken, _) = ledger_view(&s);
    assert_eq!(per_user(&rows), taken);
    assert!(
        csv.body.len() > 4 << 20,
        "{} bytes: larger than the buffers",
        csv.body.len()
    );
}

// ---- clients_packages.* -------------------------------------------------------------------

/// Every `clients_packages.*` method over the VCS envelope, each going through the same
/// service call as the IBSng extensions: assign, activate (the fee taken, in
/// `payments.list` as `package_fee`), deactivate, renew (the fee again), close, list; and
/// each refusal named in `errors`.
#[test]
fn clients_packages_lifecycle_and_refusals() {
    let s = site(
        "[[package]]\nname = \"home-50\"\nfee = \"10.00\"\nperiod = \"month\"\nvoice_seconds = 6000\ndata_bytes = 50000000000\n",
    );
    let (_server, _, api) = s.serve();
    let sid = login(api, "system", "sys");
    let c = ok(
        api,
        &sid,
        "clients.add",
        json!({"groups": "Customers", "name": "Pat", "credit": 25}),
    );
    let id = c["client"]["id"].as_i64().unwrap();
    // Missing arguments are named.
    let e = refused(api, &sid, "clients_packages.assign", json!({}));
    has(&e, "id_clients: required");
    has(&e, "package: required");
    has(
        &refused(api, &sid, "clients_packages.activate", json!({})),
        "id_clients_packages: required",
    );
    has(
        &refused(
            api,
            &sid,
            "clients_packages.assign",
            json!({"id_clients": id, "package": "gold"}),
        ),
        "not a package of the config",
    );
    let r = ok(
        api,
        &sid,
        "clients_packages.assign",
        json!({"id_clients": id, "package": "home-50"}),
    );
    assert_eq!(r["client_package"]["status"], "assigned", "{r}");
    assert_eq!(r["client_package"]["period_end"], Value::Null);
    let pid = r["client_package"]["id_clients_packages"].as_i64().unwrap();
    let r = ok(
        api,
        &sid,
        "clients_packages.activate",
        json!({"id_clients_packages": pid}),
    );
    let p = &r["client_package"];
    assert_eq!(p["status"], "active", "{r}");
    assert_eq!(p["voice_seconds_left"], 6000);
    assert_eq!(p["data_bytes_left"], 50_000_000_000i64);
    // Times as this dialect writes them.
    let end = p["period_end"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(end, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{end}"
    );
    has(
        &refused(
            api,
            &sid,
            "clients_packages.activate",
            json!({"id_clients_packages": pid}),
        ),
        "is active",
    );
    let r = ok(
        api,
        &sid,
        "clients_packages.deactivate",
        json!({"id_clients_packages": pid}),
    );
    assert_eq!(r["client_package"]["status"], "deactivated");
    assert_eq!(r["client_package"]["voice_seconds_left"], 0);
    let r = ok(
        api,
        &sid,
        "clients_packages.renew",
        json!({"id_clients_packages": pid}),
    );
    assert_eq!(r["client_package"]["status"], "active");
    // 25 - 10 - 10 = 5: a third fee is refused with the amounts.
    has(
        &refused(
            api,
            &sid,
            "clients_packages.renew",
            json!({"id_clients_packages": pid}),
        ),
        "credit 5.00 is less than the fee 10.00",
    );
    let pays = ok(api, &sid, "payments.list", json!({"id_clients": id}));
    let fees: Vec<Decimal> = pays["payments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["type"] == "package_fee")
        .map(|j| money(&j["amount"]))
        .collect();
    assert_eq!(fees, vec![d("-10.00"), d("-10.00")]);
    let r = ok(
        api,
        &sid,
        "clients_packages.close",
        json!({"id_clients_packages": pid}),
    );
    assert_eq!(r["client_package"]["status"], "closed");
    has(
        &refused(
            api,
            &sid,
            "clients_packages.close",
            json!({"id_clients_packages": pid}),
        ),
        "no open client package",
    );
    let l = ok(
        api,
        &sid,
        "clients_packages.list",
        json!({"id_clients": id}),
    );
    assert_eq!(l["clients_packages"], json!([]));
    let l = ok(
        api,
        &sid,
        "clients_packages.list",
        json!({"id_clients": id, "closed": true}),
    );
    assert_eq!(l["clients_packages"][0]["id_clients_packages"], pid);
    has(
        &refused(
            api,
            &sid,
            "clients_packages.list",
            json!({"id_clients": 999}),
        ),
        "999",
    );
    // An API user without the methods in its allow list is refused by name.
    let clerk = login(api, "clerk", "cl");
    has(
        &refused(
            api,
            &clerk,
            "clients_packages.assign",
            json!({"id_clients": id, "package": "home-50"}),
        ),
        "clients_packages.assign",
    );
}
