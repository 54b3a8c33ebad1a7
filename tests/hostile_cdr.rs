//! End-to-end: the hostile-CSV corpus of `fixtures/cdr/hostile/` (written by its
//! `generate.py`) through the real `ratel rate`, with the exact counts and credits each file
//! must give. Every call goes to prefix 1 (0.0100/min, 60/60): 60 s costs 0.0100, 61 s
//! 0.0200; users user0..user2 start with 10.

mod common;

use std::path::PathBuf;

use common::{counts, d, users, Env};

fn corpus(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cdr/hostile")
        .join(name)
        .display()
        .to_string()
}

/// `ratel rate --format F FILE` (plus `extra` flags): (exit ok, stdout, stderr).
fn rate(env: &Env, format: &str, file: &str, extra: &[&str]) -> (bool, String, String) {
    let config = env.config();
    let mut args = vec!["rate", "--config", &config, "--format", format];
    args.extend_from_slice(extra);
    args.push(file);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rate_ok(env: &Env, format: &str, file: &str) -> String {
    let (ok, out, err) = rate(env, format, file, &[]);
    assert!(ok, "rate {file}: {err}");
    out
}

#[test]
fn a_stray_quote_inside_a_field_is_an_ordinary_character() {
    let env = Env::new_with_users(3, "10");
    let out = rate_ok(&env, "generic", &corpus("stray_quote.csv"));
    assert_eq!(counts(&out), [1000, 0, 0, 0, 0, 0], "{out}");
    assert!(out.contains("charged 10.0000"), "{out}");
    // 334, 333 and 333 calls of 0.0100.
    assert_eq!(env.sorted_credits(), users(["6.66", "6.67", "6.67"]));
}

#[test]
fn an_unterminated_quote_costs_one_line() {
    let env = Env::new_with_users(3, "10");
    let out = rate_ok(&env, "generic", &corpus("unterminated_quote.csv"));
    assert_eq!(counts(&out), [99, 0, 0, 0, 0, 1], "{out}");
    assert!(
        out.contains("unterminated_quote.csv:52: unterminated quoted field"),
        "{out}"
    );
    // Call 50 (user2) is the bad one: user0 34 calls, user1 33, user2 32.
    assert_eq!(env.sorted_credits(), users(["9.66", "9.67", "9.68"]));
}

#[test]
fn bom_crlf_nul_bytes_and_absurd_durations() {
    // (file, counts, credits of user0..2, a bad-line report it must print)
    let cases: &[(&str, [u64; 6], [&str; 3], &str)] = &[
        ("bom_crlf.csv", [10, 0, 0, 0, 0, 0], ["9.96", "9.97", "9.97"], ""),
        // c1's caller holds a NUL (rated); c3's duration does (bad).
        (
            "nul_bytes.csv",
            [4, 0, 0, 0, 0, 1],
            ["9.99", "9.98", "9.99"],
            "nul_bytes.csv:5: duration_s",
        ),
        (
            "huge_duration.csv",
            [3, 0, 0, 0, 0, 2],
            ["9.99", "9.99", "9.99"],
            "huge_duration.csv:3: billable seconds: 9223372036854775807 is more than [cdr] max_call_secs = 86400",
        ),
    ];
    for (file, want, credit, report) in cases {
        let env = Env::new_with_users(3, "10");
        let out = rate_ok(&env, "generic", &corpus(file));
        assert_eq!(counts(&out), *want, "{file}: {out}");
        assert!(out.contains(report), "{file}: {out}");
        assert_eq!(env.sorted_credits(), users(*credit), "{file}");
        // Every xDR in a complete Parquet file, under the call's own date.
        assert_eq!(common::xdrs(&env.data()).len() as u64, want[0], "{file}");
        for dir in std::fs::read_dir(env.data().join("xdr")).unwrap() {
            assert_eq!(
                dir.unwrap().file_name().to_string_lossy(),
                "date=2026-11-02"
            );
        }
    }
}

#[test]
fn over_long_lines_are_one_bad_line_each() {
    let env = Env::new_with_users(3, "10");
    let call = |i: usize, caller: &str| {
        format!(
            "c{i},{caller},1555{i:04},2026-11-02T10:00:00Z,60,ANSWERED,user{}\n",
            i % 3
        )
    };
    let mut f = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    f.push_str(&call(0, "1"));
    // 10 MB inside a block, then 70 MB (longer than two blocks: skipped without holding
    // it).
    f.push_str(&call(1, &"x".repeat(10 << 20)));
    f.push_str(&call(2, "1"));
    f.push_str(&call(3, &"y".repeat(70 << 20)));
    f.push_str(&call(4, "1"));
    let path = env.dir.path().join("long.csv");
    std::fs::write(&path, f).unwrap();
    let out = rate_ok(&env, "generic", &path.display().to_string());
    assert_eq!(counts(&out), [3, 0, 0, 0, 0, 2], "{out}");
    assert!(out.contains("long.csv:3: line longer than 1 MiB"), "{out}");
    assert!(out.contains("long.csv:5: line longer than 1 MiB"), "{out}");
    assert_eq!(env.sorted_credits(), users(["9.99", "9.99", "9.99"]));
}

#[test]
fn a_growing_master_csv_is_charged_once() {
    let env = Env::new_with_users(3, "10");
    // Three calls, then a copy with two more: only those two are charged.
    let out = rate_ok(&env, "asterisk", &corpus("Master.csv.1"));
    assert_eq!(counts(&out), [3, 0, 0, 0, 0, 0], "{out}");
    let out = rate_ok(&env, "asterisk", &corpus("Master.csv.2"));
    assert_eq!(counts(&out), [2, 0, 0, 0, 0, 0], "{out}");
    assert!(out.contains("a grown copy of"), "{out}");
    assert!(out.contains("rated from line 4 on"), "{out}");
    let out = rate_ok(&env, "asterisk", &corpus("Master.csv.2"));
    assert!(out.contains("already rated"), "{out}");
    assert_eq!(env.sorted_credits(), users(["9.98", "9.98", "9.99"]));

    // A copy edited inside the rated part is refused, and charges nothing...
    let (ok, _, err) = rate(&env, "asterisk", &corpus("Master.csv.changed"), &[]);
    assert!(!ok);
    assert!(err.contains("differs inside that rated part"), "{err}");
    assert_eq!(env.sorted_credits(), users(["9.98", "9.98", "9.99"]));
    // ...unless forced: then only the edited record (61 s, 0.0200) is new.
    let (ok, out, err) = rate(
        &env,
        "asterisk",
        &corpus("Master.csv.changed"),
        &["--force"],
    );
    assert!(ok, "{err}");
    assert_eq!(counts(&out), [1, 0, 0, 0, 4, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.98", "9.96", "9.99"]));

    // Copied while line 6 was being written: the half line is bad...
    let out = rate_ok(&env, "asterisk", &corpus("Master.csv.cut"));
    assert_eq!(counts(&out), [0, 0, 0, 0, 0, 1], "{out}");
    assert!(out.contains("rated from line 6 on"), "{out}");
    // ...and the next copy rates it in full, from its start.
    let out = rate_ok(&env, "asterisk", &corpus("Master.csv.3"));
    assert!(out.contains("rated from line 6 on"), "{out}");
    assert_eq!(counts(&out), [2, 0, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.97", "9.96", "9.98"]));
}

#[test]
fn call_legs_sharing_a_uniqueid_and_latin1_caller_names() {
    let env = Env::new_with_users(3, "10");
    let out = rate_ok(&env, "asterisk", &corpus("legs_latin1.csv"));
    // Leg 1 unanswered, leg 2 answered (61 s): both records, neither a duplicate.
    assert_eq!(counts(&out), [2, 1, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.99", "10", "9.98"]));
}

#[test]
fn rate_decks_and_user_lists_from_excel() {
    // BOM, CRLF and a description with a quoted newline.
    let env = Env::with(
        "\u{feff}username,password,group,credit\r\nuser0,pw,g,10\r\n",
        true,
    );
    std::fs::write(
        env.dir.path().join("rates.csv"),
        "\u{feff}prefix,description,price_per_minute,connect_fee,first_increment,next_increment\r\n\"1\",\"USA\r\n(all)\",0.0100,0,60,60\r\n",
    )
    .unwrap();
    let call = env.dir.path().join("c.csv");
    std::fs::write(
        &call,
        "call_id,caller,callee,start_time,duration_s,disposition,account\nc1,1,1555,2026-11-02T10:00:00Z,61,ANSWERED,user0\n",
    )
    .unwrap();
    let out = rate_ok(&env, "generic", &call.display().to_string());
    assert_eq!(counts(&out), [1, 0, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), vec![("user0".to_string(), d("9.98"))]);
}
