//! End-to-end: `kill -HUP` reloads the config of a running `ratel serve` between batches.
//! A session open across the reload keeps what it was charged and is rated at the new
//! price from then on; the API sees the new groups; a config that cannot replace the
//! running one (here: it drops the charge rule the open session uses) is refused with one
//! log line and the running config stays.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Waits (at most 20 s) for a log line containing `needle`.
fn wait_log(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no log line with {needle:?} within 20 s");
}

fn hup(server: &Server) {
    let st = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn sighup_reloads_prices_and_groups_and_refuses_a_config_that_cannot_replace_it() {
    let env = Env::new();
    let cfg_path = env.dir.path().join("ratel.toml");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let (server, radius, api, log) = env.serve_logged();
    let sock = client();
    // 60 s in the day rule at 0.0100/min.
    assert!(send(&sock, radius, &acct(1, 1, "alice", "s1", 0, 0, 0, None)).is_some());
    assert!(send(&sock, radius, &acct(2, 3, "alice", "s1", 60, 0, 0, None)).is_some());

    // The day rule's price doubles and a group appears.
    let doubled = original.replacen(
        "price_per_minute = \"0.0100\"",
        "price_per_minute = \"0.0200\"",
        1,
    ) + "[[group]]\nname = \"g2\"\ncharge_rules = [\"night\", \"day\"]\n";
    assert_ne!(doubled, original);
    std::fs::write(&cfg_path, &doubled).unwrap();
    hup(&server);
    wait_log(&log, "config reloaded");
    let (s, e) = rpc(
        api,
        "login.login",
        json!({"login_auth_name": "system", "login_auth_pass": "sys", "login_auth_type": "ADMIN"}),
    );
    assert_eq!(e, serde_json::Value::Null);
    let (r, e) = rpc(
        api,
        "user.addNewUsers",
        json!({"auth_type": "ADMIN", "auth_name": "system", "auth_session": s,
               "count": 1, "isp_name": "Main", "group_name": "g2", "credit": 0}),
    );
    assert_eq!(e, serde_json::Value::Null, "the API sees the new group");
    assert_eq!(r.as_array().map(|a| a.len()), Some(1));
    // The next 60 s of the open session at the new price: 0.0200.
    assert!(send(&sock, radius, &acct(3, 3, "alice", "s1", 120, 0, 0, None)).is_some());

    // A config without the `day` rule the open session used is refused; the running one
    // (0.0200/min) stays.
    let without_day = doubled
        .replace("name = \"day\"", "name = \"daytime\"")
        .replace(
            "charge_rules = [\"night\", \"day\"]",
            "charge_rules = [\"night\", \"daytime\"]",
        );
    std::fs::write(&cfg_path, &without_day).unwrap();
    hup(&server);
    let line = wait_log(&log, "config reload refused");
    assert!(
        line.contains("charge_rule: \\\"day\\\" is used by open session")
            || line.contains("charge_rule: \"day\" is used by open session"),
        "{line}"
    );
    assert!(send(
        &sock,
        radius,
        &acct(4, 2, "alice", "s1", 180, 0, 0, Some(1))
    )
    .is_some());

    stop(server);
    // 0.0100 + 0.0200 + 0.0200, exact.
    let ledger = ratel_engine::ledger::Ledger::open(&env.data()).unwrap();
    let alice = ledger
        .load_users()
        .unwrap()
        .into_iter()
        .find(|u| u.username.as_deref() == Some("alice"))
        .unwrap();
    assert_eq!(alice.credit, d("9.95"));
    let x: Vec<_> = xdrs(&env.data())
        .into_iter()
        .filter(|x| x.0 == "alice")
        .collect();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].5, d("0.05"));
}
