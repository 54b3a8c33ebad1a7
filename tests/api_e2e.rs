//! End-to-end JSON-RPC: the seed document's IBSng walk-through against the real `ratel
//! serve` over real HTTP, with values checked after real RADIUS sessions; authorization and
//! hostile input.

mod common;

use common::*;
use serde_json::{json, Value};

fn login(api: std::net::SocketAddr, name: &str, pass: &str, t: &str) -> Value {
    let (r, e) = rpc(
        api,
        "login.login",
        json!({"auth_remoteaddr": "127.0.0.1", "auth_type": "ANONYMOUS", "auth_name": "ANONYMOUS", "auth_pass": "ANONYMOUS",
               "login_auth_name": name, "login_auth_pass": pass, "create_session": true, "login_auth_type": t}),
    );
    assert_eq!(e, Value::Null, "login: {e}");
    r
}

/// Admin auth params merged with `extra`.
fn admin(session: &Value, extra: Value) -> Value {
    let mut p = json!({"auth_remoteaddr": "127.0.0.1", "auth_type": "ADMIN", "auth_name": "system", "auth_session": session});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

#[test]
fn ibsng_walkthrough_with_real_sessions() {
    let env = Env::new();
    let (child, radius, api) = env.serve_all();
    let s = login(api, "system", "sys", "ADMIN");
    assert!(s.as_str().is_some_and(|t| t.len() >= 8));

    // The user does not exist yet.
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        admin(&s, json!({"normal_username": "sample-user"})),
    );
    assert_eq!(
        e,
        "NORMAL_USERNAME_DOESNT_EXISTS|User with Internet username sample-user does not exists"
    );
    // Create it (users alice=1 and bob=2 exist from the import).
    let (r, e) = rpc(
        api,
        "user.addNewUsers",
        admin(
            &s,
            json!({"count": 1, "isp_name": "Main", "group_name": "g", "credit": 0, "credit_comment": ""}),
        ),
    );
    assert_eq!(e, Value::Null);
    assert_eq!(r, json!([3]));
    let (_, e) = rpc(
        api,
        "user.addNewUsers",
        admin(
            &s,
            json!({"count": 1, "isp_name": "Main", "group_name": "nope", "credit": 0}),
        ),
    );
    assert_eq!(e, "GROUP_NOT_FOUND|Group nope not found");
    let (r, e) = rpc(
        api,
        "user.updateUserAttrs",
        admin(
            &s,
            json!({"user_id": "3", "attrs": {"normal_user_spec": {"normal_username": "sample-user", "normal_password": "passw00rd"}}, "to_del_attrs": []}),
        ),
    );
    assert_eq!((r, e), (json!(""), Value::Null));
    let (_, e) = rpc(
        api,
        "user.updateUserAttrs",
        admin(
            &s,
            json!({"user_id": "2", "attrs": {"normal_user_spec": {"normal_username": "sample-user", "normal_password": "x"}}, "to_del_attrs": []}),
        ),
    );
    assert!(
        e.as_str().unwrap().starts_with("NORMAL_USERNAME_EXISTS|"),
        "{e}"
    );

    // Credit: ADD 100.10, SET, MULTIPLY, several users at once; exact digits back.
    let (r, e) = rpc(
        api,
        "user.changeCreditExtended",
        admin(
            &s,
            json!({"user_id": "3", "credit": 100.10, "change_type": "ADD", "credit_comment": ""}),
        ),
    );
    assert_eq!(e, Value::Null);
    assert_eq!(r.as_array().unwrap().len(), 1);
    let info = |user: &str| {
        let (r, e) = rpc(
            api,
            "user.getUserInfo",
            admin(&s, json!({"normal_username": user})),
        );
        assert_eq!(e, Value::Null, "{e}");
        r
    };
    assert_eq!(
        info("sample-user")["3"]["basic_info"]["credit"].to_string(),
        "100.1"
    );
    rpc(
        api,
        "user.changeCreditExtended",
        admin(
            &s,
            json!({"user_id": "3", "credit": "0.3", "change_type": "MULTIPLY"}),
        ),
    );
    assert_eq!(
        info("sample-user")["3"]["basic_info"]["credit"].to_string(),
        "30.03"
    );
    let (r, _) = rpc(
        api,
        "user.changeCreditExtended",
        admin(
            &s,
            json!({"user_id": "1,2", "credit": 20, "change_type": "SET"}),
        ),
    );
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(info("alice")["1"]["basic_info"]["credit"].to_string(), "20");
    let (_, e) = rpc(
        api,
        "user.changeCreditExtended",
        admin(
            &s,
            json!({"user_id": "99", "credit": 1, "change_type": "ADD"}),
        ),
    );
    assert!(e.as_str().unwrap().starts_with("USER_ID_NOT_FOUND|"), "{e}");

    // A real RADIUS session of alice: 20 min and 2 GB in the day rule (0.01/min, 0.5/GB)
    // = 0.2 + 1.0 = 1.2; then an open session with one interim of 5 min = 0.05.
    let c = client();
    let gb = 1_000_000_000u64;
    assert!(send(&c, radius, &acct(1, 1, "alice", "w1", 0, 0, 0, None)).is_some());
    assert!(send(
        &c,
        radius,
        &acct(2, 2, "alice", "w1", 1200, 2 * gb, 0, Some(1))
    )
    .is_some());
    assert!(send(&c, radius, &acct(3, 1, "alice", "w2", 0, 0, 0, None)).is_some());
    assert!(send(&c, radius, &acct(4, 3, "alice", "w2", 300, 0, 0, None)).is_some());
    let a = info("alice");
    let a = &a["1"];
    assert_eq!(a["basic_info"]["credit"].to_string(), "18.75");
    assert_eq!(a["online_status"], true);
    assert_eq!(a["internet_onlines"].as_array().unwrap().len(), 1);
    assert_eq!(a["internet_onlines"][0][1], "ras1");
    assert_eq!(
        a["attrs"]["charge_rule_usage"],
        json!([[1, "day", "1.2", "1200", "2000000000"]])
    );
    assert_eq!(a["attrs"]["first_login"], "2026-11-02 10:00:00");

    // report.getConnections: the closed session (the outbox or Parquet, whichever holds it).
    let report = |extra: Value| {
        let (r, e) = rpc(api, "report.getConnections", admin(&s, extra));
        assert_eq!(e, Value::Null, "{e}");
        r
    };
    let r = report(
        json!({"conds": {"username": "alice", "login_time_from": "2026-11-02 09:00:00", "login_time_from_unit": "gregorian"}, "from": 0, "to": 5, "sort_by": "login_time", "desc": false}),
    );
    assert_eq!(r["total_rows"], 1);
    assert_eq!(r["total_credit"].to_string(), "1.2");
    assert_eq!(r["total_in_bytes"], 2 * gb);
    let row = &r["report"][0];
    assert_eq!(row["credit_used"].to_string(), "1.2");
    assert_eq!(row["before_credit"].to_string(), "20");
    assert_eq!(row["duration_seconds"], 1200);
    assert_eq!(row["login_time_formatted"], "2026-11-02 10:00:00");
    assert_eq!(row["logout_time_formatted"], "2026-11-02 10:20:00");
    assert_eq!(row["ras_description"], "ras1");
    assert_eq!(row["service_type"], "Internet");
    assert_eq!(row["successful"], "t");
    assert_eq!(row["charge_rule_details"][0][0], "day");
    // After the outbox flush (every second) the same answer comes from Parquet.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r2 = report(json!({"conds": {"username": "alice"}, "from": 0, "to": 5}));
    assert_eq!(r2["report"], r["report"]);
    assert!(std::fs::read_dir(env.data().join("xdr")).unwrap().count() >= 1);
    // A range that excludes it.
    let r3 = report(
        json!({"conds": {"username": "alice", "login_time_from": "2026-11-03", "login_time_from_unit": "gregorian"}}),
    );
    assert_eq!(r3["total_rows"], 0);

    // Renew resets the service period.
    let (r, e) = rpc(
        api,
        "user.renewUsers",
        admin(&s, json!({"user_id": "1", "comment": ""})),
    );
    assert_eq!((r, e), (json!(true), Value::Null));
    let a = info("alice");
    assert_eq!(a["1"]["attrs"]["charge_rule_usage"], json!([]));
    assert!(a["1"]["attrs"].get("first_login").is_none());

    // A NORMAL_USER sees itself only.
    let u = login(api, "alice", "pw", "NORMAL_USER");
    let me = |method: &str, extra: Value| {
        let mut p = json!({"auth_type": "NORMAL_USER", "auth_name": "alice", "auth_session": u});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rpc(api, method, p)
    };
    let (r, e) = me("user.getUserInfo", json!({"normal_username": "alice"}));
    assert_eq!(e, Value::Null);
    assert!(
        r["1"]["attrs"].get("normal_password").is_none(),
        "password shown to a user"
    );
    let (_, e) = me("user.getUserInfo", json!({"normal_username": "bob"}));
    assert!(e.as_str().unwrap().starts_with("ACCESS_DENIED|"));
    let (_, e) = me(
        "report.getConnections",
        json!({"conds": {"username": "bob"}}),
    );
    assert!(e.as_str().unwrap().starts_with("ACCESS_DENIED|"));
    let (r, e) = me("report.getConnections", json!({}));
    assert_eq!(e, Value::Null);
    assert_eq!(r["total_rows"], 1);
    let (_, e) = me(
        "user.addNewUsers",
        json!({"count": 1, "group_name": "g", "credit": 1}),
    );
    assert!(e.as_str().unwrap().starts_with("ACCESS_DENIED|"));
    // A session used under another name, a made-up session, a wrong password.
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_session": u, "normal_username": "alice"}),
    );
    assert!(e.as_str().unwrap().starts_with("ACCESS_DENIED|"));
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_session": "nope", "normal_username": "alice"}),
    );
    assert!(e.as_str().unwrap().starts_with("ACCESS_DENIED|"));
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "wrong", "normal_username": "alice"}),
    );
    assert_eq!(e, "ACCESS_DENIED|wrong username or password");
    stop(child);
}

#[test]
fn hostile_requests_get_json_errors() {
    let env = Env::new();
    let (child, _radius, api) = env.serve_all();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "PARSE_ERROR|"),
        (b"[1,2]".to_vec(), "INVALID_REQUEST|"),
        (br#"{"params": {}}"#.to_vec(), "INVALID_REQUEST|"),
        (br#"{"method": "user.nope", "params": {}}"#.to_vec(), "METHOD_NOT_FOUND|"),
        (br#"{"method": "user.getUserInfo", "params": 5}"#.to_vec(), "INVALID_PARAMS|"),
        (br#"{"method": "user.getUserInfo", "params": {}}"#.to_vec(), "ACCESS_DENIED|"),
        (format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), "PARSE_ERROR|"),
        (vec![b' '; 2 << 20], "INVALID_REQUEST|"),
        (br#"{"method": "user.changeCreditExtended", "params": {"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "user_id": "1", "credit": "abc", "change_type": "ADD"}}"#.to_vec(), "INVALID_PARAMS|credit"),
        (br#"{"method": "user.changeCreditExtended", "params": {"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "user_id": "1; DROP TABLE users", "credit": 1, "change_type": "ADD"}}"#.to_vec(), "INVALID_PARAMS|user_id"),
        (br#"{"method": "user.getUserInfo", "params": {"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "normal_username": "x' OR '1'='1"}}"#.to_vec(), "NORMAL_USERNAME_DOESNT_EXISTS|"),
        ("{\"method\": \"user.updateUserAttrs\", \"params\": {\"auth_type\": \"ADMIN\", \"auth_name\": \"system\", \"auth_pass\": \"sys\", \"user_id\": \"1\", \"attrs\": {\"normal_user_spec\": {\"normal_username\": \"a\\u0000b\", \"normal_password\": \"p\"}}}}".as_bytes().to_vec(), "INVALID_PARAMS|normal_username"),
    ];
    for (body, want) in cases {
        let (status, v) = http_post(api, &body);
        assert_eq!(
            status,
            200,
            "body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let err = v["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with(want),
            "body {:?}: got {v}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    // Unicode usernames are stored and found as given.
    let (_, e) = rpc(
        api,
        "user.updateUserAttrs",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "user_id": "2", "attrs": {"normal_user_spec": {"normal_username": "bób-ŝ", "normal_password": "p"}}}),
    );
    assert_eq!(e, Value::Null);
    let (r, e) = rpc(
        api,
        "user.getUserInfo",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "normal_username": "bób-ŝ"}),
    );
    assert_eq!(e, Value::Null);
    assert_eq!(r["2"]["user_repr"], "bób-ŝ");
    assert_eq!(r["2"]["basic_info"]["credit"].to_string(), "5");
    stop(child);
}

/// A file big enough for many Parquet pages per column, users interleaved at random: every
/// one-user report (which prunes by the username page index) returns exactly that user's
/// calls with the cost computed here, and the file is in (username, xdr_id) order.
#[test]
fn one_user_reports_over_many_pages() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let users = 60;
    let env = Env::new_with_users(users, "1000");
    // Independent expectations: prefix 1 at 0.01/min, 60/60, no connect fee.
    let mut expect: Vec<(usize, rust_decimal::Decimal)> = vec![(0, d("0")); users];
    // Each call's cost, by call id: a report row must come back whole (the report reads
    // the summary columns of every row, then the rest of the kept rows only).
    let mut per_call: std::collections::HashMap<String, rust_decimal::Decimal> = Default::default();
    let mut csv =
        String::from("call_id,caller,callee,start_time,duration_s,disposition,account,trunk\n");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let rows = 3 * ratel_engine::xdr::PAGE_ROWS * 2;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x % users as u64) as usize;
        let dur = (x >> 8) % 600;
        let (h, m) = ((i / 60) % 24, i % 60);
        csv.push_str(&format!(
            "c-{i},5550000,15551230000,2026-11-02T{h:02}:{m:02}:00Z,{dur},ANSWERED,user{u},t1\n"
        ));
        let cost = rust_decimal::Decimal::from(dur.div_ceil(60)) * d("0.01");
        expect[u].0 += 1;
        expect[u].1 += cost;
        per_call.insert(format!("c-{i}"), cost);
    }
    let cdrs = env.dir.path().join("cdrs.csv");
    std::fs::write(&cdrs, csv).unwrap();
    env.ratel_ok(&[
        "rate",
        "--format",
        "generic",
        "--config",
        &env.config(),
        &cdrs.display().to_string(),
    ]);

    // Row order in the file(s), read back by the parquet crate without the page index.
    let mut files = 0;
    for day in std::fs::read_dir(env.data().join("xdr")).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            files += 1;
            let mut keys: Vec<(String, u64)> = Vec::new();
            let r = ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(f.unwrap().path()).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for b in r {
                let b = b.unwrap();
                let names = col::<arrow_array::StringArray>(&b, "username");
                let ids = col::<arrow_array::UInt64Array>(&b, "xdr_id");
                for i in 0..b.num_rows() {
                    keys.push((names.value(i).to_string(), ids.value(i)));
                }
            }
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "rows in (username, xdr_id) order"
            );
        }
    }
    assert!(files >= 1);

    let (server, api) = {
        let (s, _, a) = env.serve_all();
        (s, a)
    };
    let s = login(api, "system", "sys", "ADMIN");
    for (u, (rows, credit)) in expect.iter().enumerate() {
        let (r, e) = rpc(
            api,
            "report.getConnections",
            admin(
                &s,
                json!({"conds": {"username": format!("user{u}")}, "from": 0, "to": 10000}),
            ),
        );
        assert_eq!(e, Value::Null, "{e}");
        assert_eq!(r["total_rows"], *rows, "rows of user{u}");
        assert_eq!(
            d(r["total_credit"].to_string().trim_matches('"')),
            *credit,
            "credit of user{u}"
        );
        assert_eq!(r["report"].as_array().unwrap().len(), *rows);
        for row in r["report"].as_array().unwrap() {
            assert_eq!(row["username"], format!("user{u}"));
            let call = row["unique_id_value"].as_str().unwrap();
            let cost = d(row["credit_used"].to_string().trim_matches('"'));
            assert_eq!(cost, per_call[call], "cost of {call}");
            // Columns outside the summary pass are there too.
            assert!(
                row["details"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(["called_number", "15551230000"])),
                "{row}"
            );
            let details = row["charge_rule_details"].as_array().unwrap();
            let parts: rust_decimal::Decimal =
                details.iter().map(|p| d(p[3].as_str().unwrap())).sum();
            assert_eq!(parts, cost, "charge_rule_details of {call}: {row}");
            assert!(!row["before_credit"].is_null(), "{row}");
        }
    }
    // A short page in login order, newest first: the same rows as the whole list's head.
    let newest_first = |from: usize, to: usize| {
        let (r, e) = rpc(
            api,
            "report.getConnections",
            admin(
                &s,
                json!({"conds": {"username": "user7"}, "from": from, "to": to,
                       "sort_by": "login_time", "desc": true}),
            ),
        );
        assert_eq!(e, Value::Null, "{e}");
        r
    };
    let (all, head) = (newest_first(0, 10000), newest_first(2, 7));
    assert_eq!(head["total_rows"], all["total_rows"]);
    assert_eq!(
        head["report"].as_array().unwrap()[..],
        all["report"].as_array().unwrap()[2..7]
    );
    // A name between two users' pages, and one after the last: nothing.
    for name in ["user1a", "zzz"] {
        let (r, e) = rpc(
            api,
            "report.getConnections",
            admin(
                &s,
                json!({"conds": {"username": name}, "from": 0, "to": 10}),
            ),
        );
        assert_eq!(e, Value::Null, "{e}");
        assert_eq!(r["total_rows"], 0, "{name}");
    }
    stop(server);
}

/// A JSON-RPC call from the client address `from`; returns (result, error).
fn rpc_from(from: &str, api: std::net::SocketAddr, method: &str, params: Value) -> (Value, Value) {
    let body = json!({"method": method, "params": params, "id": 7}).to_string();
    let (status, v) = http_post_from(from.parse().unwrap(), api, body.as_bytes());
    assert_eq!(status, 200, "HTTP status for {method}");
    (v["result"].clone(), v["error"].clone())
}

fn login_params(name: &str, pass: &str, t: &str) -> Value {
    json!({"auth_type": "ANONYMOUS", "auth_name": "ANONYMOUS", "auth_pass": "ANONYMOUS",
           "login_auth_name": name, "login_auth_pass": pass, "login_auth_type": t})
}

/// A user id given several times is changed once, and the journal still sums to each
/// balance (read from the ledger after serve stopped).
#[test]
fn repeated_user_ids_move_credit_once() {
    let env = Env::new();
    let (child, _radius, api) = env.serve_all();
    let s = login(api, "system", "sys", "ADMIN");
    for (ids, credit, how) in [
        ("1,1,1", "5", "ADD"),
        ("2, 2", "7", "SET"),
        ("1,2,1", "2", "MULTIPLY"),
    ] {
        let (r, e) = rpc(
            api,
            "user.changeCreditExtended",
            admin(
                &s,
                json!({"user_id": ids, "credit": credit, "change_type": how}),
            ),
        );
        assert_eq!(e, Value::Null, "{ids} {how}: {e}");
        let distinct: std::collections::HashSet<&str> = ids.split(',').map(str::trim).collect();
        assert_eq!(r.as_array().unwrap().len(), distinct.len(), "{ids}: {r}");
    }
    let (r, e) = rpc(
        api,
        "user.changeCreditExtended",
        admin(
            &s,
            json!({"user_id": [1, 1], "credit": 1, "change_type": "ADD"}),
        ),
    );
    assert_eq!(e, Value::Null);
    assert_eq!(r.as_array().unwrap().len(), 1);
    stop(child);
    // alice: (10 + 5) * 2 + 1 = 31; bob: 7 * 2 = 14.
    let ledger = ratel_engine::ledger::Ledger::open(&env.data()).unwrap();
    let users = ledger.load_users().unwrap();
    let want = [("alice", d("31")), ("bob", d("14"))];
    for (name, credit) in want {
        let u = users
            .iter()
            .find(|u| u.username.as_deref() == Some(name))
            .unwrap();
        assert_eq!(u.credit, credit, "{name}");
        assert_eq!(
            ledger.journal_sum(u.user_id, None).unwrap(),
            u.credit,
            "journal of {name}"
        );
    }
}

/// Amounts outside |x| <= 10^15 (10 decimals) are RPC errors, never a panic of the core; the
/// server keeps answering, stops cleanly and starts again on the same data.
#[test]
fn money_out_of_range_is_an_rpc_error() {
    let env = Env::new();
    let (child, _radius, api) = env.serve_all();
    let s = login(api, "system", "sys", "ADMIN");
    let change = |ids: &str, credit: Value, how: &str| {
        rpc(
            api,
            "user.changeCreditExtended",
            admin(
                &s,
                json!({"user_id": ids, "credit": credit, "change_type": how}),
            ),
        )
        .1
    };
    // Bad amounts.
    for (credit, how) in [
        (json!("-7.9e28"), "SET"),
        (json!("-79000000000000000000000000000"), "SET"),
        (json!(8e18), "SET"),
        (json!("1000000000000000.0000000001"), "ADD"),
        (json!("1000000000000001"), "ADD"),
        (json!("0.00000000001"), "SET"),
        (json!("1e16"), "MULTIPLY"),
    ] {
        let e = change("1", credit.clone(), how);
        assert!(
            e.as_str()
                .is_some_and(|e| e.starts_with("INVALID_PARAMS|credit")),
            "{how} {credit}: {e}"
        );
    }
    // Good amounts whose result would leave the range.
    assert_eq!(change("1", json!("1000000000000000"), "SET"), Value::Null);
    assert_eq!(change("2", json!("-1000000000000000"), "SET"), Value::Null);
    for (ids, credit, how) in [
        ("1", json!("0.0000000001"), "ADD"),
        ("2", json!("-1"), "ADD"),
        ("1", json!("2"), "MULTIPLY"),
        ("2", json!("0.00000000015"), "MULTIPLY"),
    ] {
        let e = change(ids, credit.clone(), how);
        assert!(
            e.as_str()
                .is_some_and(|e| e.starts_with("INVALID_PARAMS|credit")),
            "{ids} {how} {credit}: {e}"
        );
    }
    let (_, e) = rpc(
        api,
        "user.addNewUsers",
        admin(
            &s,
            json!({"count": 1, "group_name": "g", "credit": "10000000000000000"}),
        ),
    );
    assert!(
        e.as_str()
            .is_some_and(|e| e.starts_with("INVALID_PARAMS|credit")),
        "{e}"
    );
    let credit_of = |api, s: &Value, name: &str| {
        let (r, e) = rpc(
            api,
            "user.getUserInfo",
            admin(s, json!({"normal_username": name})),
        );
        assert_eq!(e, Value::Null, "{e}");
        r.as_object().unwrap().values().next().unwrap()["basic_info"]["credit"].to_string()
    };
    assert_eq!(credit_of(api, &s, "alice"), "1000000000000000");
    assert_eq!(credit_of(api, &s, "bob"), "-1000000000000000");
    stop(child);
    let (child, _radius, api) = env.serve_all();
    let s = login(api, "system", "sys", "ADMIN");
    assert_eq!(credit_of(api, &s, "alice"), "1000000000000000");
    stop(child);
}

/// Sessions end when the user's credentials change; empty passwords are refused; ten wrong
/// passwords lock the client IP and the name out (AUTH_LOCKED, even with the right
/// password), while another IP still logs in to another name.
#[test]
fn login_lockout_and_session_revocation() {
    let env = Env::new();
    let (child, _radius, api) = env.serve_all();
    let s = login(api, "system", "sys", "ADMIN");
    let u = login(api, "alice", "pw", "NORMAL_USER");
    let me = |token: &Value| {
        rpc(
            api,
            "user.getUserInfo",
            json!({"auth_type": "NORMAL_USER", "auth_name": "alice", "auth_session": token, "normal_username": "alice"}),
        )
        .1
    };
    assert_eq!(me(&u), Value::Null);
    let set_pw = |pw: &str| {
        rpc(
            api,
            "user.updateUserAttrs",
            admin(
                &s,
                json!({"user_id": "1", "attrs": {"normal_user_spec": {"normal_username": "alice", "normal_password": pw}}}),
            ),
        )
        .1
    };
    let e = set_pw("");
    assert!(
        e.as_str()
            .is_some_and(|e| e.starts_with("INVALID_PARAMS|normal_password")),
        "{e}"
    );
    assert_eq!(me(&u), Value::Null, "a refused change keeps the session");
    assert_eq!(set_pw("new-pw"), Value::Null);
    assert_eq!(me(&u), "ACCESS_DENIED|invalid session");
    let u2 = login(api, "alice", "new-pw", "NORMAL_USER");
    assert_eq!(me(&u2), Value::Null);
    // An empty password never logs in.
    let (_, e) = rpc(api, "login.login", login_params("alice", "", "NORMAL_USER"));
    assert_eq!(e, "ACCESS_DENIED|wrong username or password");

    // Nine wrong passwords for "system" from 127.0.0.1: with the empty one above, ten from
    // this IP.
    for i in 0..9 {
        let (_, e) = rpc(
            api,
            "login.login",
            login_params("system", &format!("guess{i}"), "ADMIN"),
        );
        assert_eq!(e, "ACCESS_DENIED|wrong username or password", "attempt {i}");
    }
    // The IP is locked: the right password, any name, auth_pass on any method.
    let locked = |e: &Value| e.as_str().is_some_and(|e| e.starts_with("AUTH_LOCKED|"));
    let (_, e) = rpc(api, "login.login", login_params("system", "sys", "ADMIN"));
    assert!(locked(&e), "{e}");
    let (_, e) = rpc(api, "login.login", login_params("bob", "pw", "NORMAL_USER"));
    assert!(locked(&e), "{e}");
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys", "normal_username": "bob"}),
    );
    assert!(locked(&e), "{e}");
    // A session made before the lockout still works.
    assert_eq!(me(&u2), Value::Null);
    // A tenth wrong password for "system", from a third IP, locks the name.
    let (_, e) = rpc_from(
        "127.0.0.3",
        api,
        "login.login",
        login_params("system", "guess9", "ADMIN"),
    );
    assert_eq!(e, "ACCESS_DENIED|wrong username or password");
    // Another client IP logs in to another name...
    let (r, e) = rpc_from(
        "127.0.0.2",
        api,
        "login.login",
        login_params("bob", "pw", "NORMAL_USER"),
    );
    assert_eq!(e, Value::Null, "{e}");
    assert!(r.as_str().is_some_and(|t| t.len() >= 32), "{r}");
    // ...but not to the name that was guessed at, until the lockout ends.
    let (_, e) = rpc_from(
        "127.0.0.2",
        api,
        "login.login",
        login_params("system", "sys", "ADMIN"),
    );
    assert!(locked(&e), "{e}");
    stop(child);
}

/// A NORMAL_USER gets the same answer for a user that does not exist as for one that is not
/// its own, so it cannot learn which usernames exist.
#[test]
fn normal_user_cannot_probe_usernames() {
    let env = Env::new();
    let (child, _radius, api) = env.serve_all();
    let u = login(api, "alice", "pw", "NORMAL_USER");
    let me = |method: &str, extra: Value| {
        let mut p = json!({"auth_type": "NORMAL_USER", "auth_name": "alice", "auth_session": u});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rpc(api, method, p)
    };
    for (method, existing, missing) in [
        (
            "user.getUserInfo",
            json!({"normal_username": "bob"}),
            json!({"normal_username": "nobody"}),
        ),
        (
            "user.getUserInfo",
            json!({"user_id": "2"}),
            json!({"user_id": "99"}),
        ),
        (
            "report.getConnections",
            json!({"conds": {"username": "bob"}}),
            json!({"conds": {"username": "nobody"}}),
        ),
        (
            "report.getConnections",
            json!({"conds": {"user_ids": "2"}}),
            json!({"conds": {"user_ids": "99"}}),
        ),
    ] {
        let a = me(method, existing.clone());
        let b = me(method, missing.clone());
        assert_eq!(a, b, "{method}: {existing} vs {missing}");
    }
    // Its own record by id still works.
    let (r, e) = me("user.getUserInfo", json!({"user_id": "1"}));
    assert_eq!(e, Value::Null);
    assert_eq!(r["1"]["user_repr"], "alice");
    stop(child);
}

/// The data dir is created 0700 and the ledger 0600 (it holds subscriber passwords).
#[cfg(unix)]
#[test]
fn data_dir_and_ledger_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.data()), 0o700);
    assert_eq!(mode(&env.data().join("ledger.sqlite")), 0o600);
    let (child, _radius, api) = env.serve_all();
    login(api, "system", "sys", "ADMIN");
    for f in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
        let p = env.data().join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    stop(child);
}

/// Slowloris: 400 connections that send half a header and wait. The server (run with only
/// 384 file descriptors) closes each after the header timeout, keeps answering a normal
/// request, and answers a request whose body never completes with REQUEST_TIMEOUT.
#[test]
fn half_open_connections_do_not_starve_the_api() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.config()).unwrap().replace(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        "[api]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 500\nrequest_timeout_ms = 1500\n",
    );
    std::fs::write(env.config(), cfg).unwrap();
    let (child, _radius, api) = env.serve_all_nofile(384);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle = Vec::new();
    for _ in 0..400 {
        // Past the connection cap a client waits in the backlog; a connect may time out.
        if let Ok(mut c) = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(5)) {
            let _ = c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Ty");
            idle.push(c);
        }
        assert!(
            Instant::now() < deadline,
            "opening connections took too long"
        );
    }
    assert!(idle.len() >= 300, "only {} connections opened", idle.len());
    // A normal request on a new connection is answered.
    let (r, e) = rpc(api, "login.login", login_params("system", "sys", "ADMIN"));
    assert_eq!(e, Value::Null, "{e}");
    assert!(r.as_str().is_some());
    // Every half-open connection is closed by the server (EOF or reset), none left hanging.
    for (i, c) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection {i} still open at the deadline");
        c.set_read_timeout(Some(left.min(Duration::from_secs(10))))
            .unwrap();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "connection {i} was not closed by the server");
    }
    drop(idle);
    // A body that never completes: the request deadline answers it.
    let mut c = std::net::TcpStream::connect(api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"method\"")
        .unwrap();
    let mut resp = Vec::new();
    let _ = c.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.contains("REQUEST_TIMEOUT|"), "{text}");
    stop(child);
}
