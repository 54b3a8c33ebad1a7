//! End-to-end: CDR import templates (`[[cdr_format]]`), rejects files, compressed files and
//! the spool's format routing, through the real binary, on the fixtures of
//! `fixtures/cdr/templates/` (written by its `generate.py`). Prefix 1 costs 0.0100/min with
//! 60/60 increments; users user0..user2 start with 10. Charges are computed by hand beside
//! each assertion.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{counts, users, Env};

const TEMPLATES: &str = r#"
[[cdr_format]]
name = "pbx2"
delimiter = ";"
columns = ["clid", "src", "dst", "dcontext", "channel", "dstchannel", "lastapp", "lastdata",
           "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
           "accountcode", "uniqueid"]
account = "accountcode"
caller = "src"
callee = 2
start = { answer = "answer", fallback = "start" }
billsec = 12
answered = { column = "disposition", equals = "ANSWERED" }
call_id = ["uniqueid"]
files = "pbx2*.csv"

[[cdr_format]]
name = "fs_custom"
header = true
account = "accountcode"
callee = "destination_number"
start = { answer = "answer_stamp", fallback = "start_stamp" }
billsec = "billsec"
answered = "billsec > 0"
call_id = "uuid"

[[cdr_format]]
name = "carrier"
delimiter = "\t"
time_format = "%Y/%m/%d %H:%M"
account = 2
callee = 3
start = 0
end = 1
"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cdr/templates")
        .join(name)
}

fn env() -> Env {
    let env = Env::new_with_users(3, "10");
    let cfg = env.dir.path().join("ratel.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(TEMPLATES);
    std::fs::write(&cfg, text).unwrap();
    env
}

fn rate(env: &Env, format: &str, file: &Path) -> String {
    let out = env.ratel_ok(&[
        "rate",
        "--config",
        &env.config(),
        "--format",
        format,
        &file.display().to_string(),
    ]);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_cdr_custom_layout_through_a_template() {
    let env = env();
    let out = rate(&env, "pbx2", &fixture("pbx2.csv"));
    // user0 60 s = 0.01; user1 61 s → 120 = 0.02; user2 unanswered, then 121 s → 180 = 0.03.
    assert_eq!(counts(&out), [3, 1, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.99", "9.98", "9.97"]));
    // The Latin-1 caller name sits in `clid`, which ratel does not read.
    let xdrs = common::xdrs(&env.data());
    assert!(xdrs.iter().any(|x| x.2 == "u1"), "{xdrs:?}");
}

#[test]
fn a_freeswitch_template_with_a_header() {
    let env = env();
    let out = rate(&env, "fs_custom", &fixture("fs_custom.csv"));
    // user0 30 s → 60 = 0.01; user1 unanswered; user2 600 s = 0.10.
    assert_eq!(counts(&out), [2, 1, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.99", "10", "9.90"]));
}

#[test]
fn slash_dates_end_times_rejects_and_their_correction() {
    let env = env();
    let out = rate(&env, "carrier", &fixture("carrier.tsv"));
    // user0 8:00-8:03 = 180 s = 0.03; user1 0 s unanswered; line 3 bad; user2 23:59-0:01
    // = 120 s = 0.02 (its xDR under the logout date).
    assert_eq!(counts(&out), [2, 1, 0, 0, 0, 1], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.97", "10", "9.98"]));
    assert!(
        out.contains(r#"carrier.tsv:3: end: "not a time" does not match "%Y/%m/%d %H:%M""#),
        "{out}"
    );
    let dates: Vec<String> = std::fs::read_dir(env.data().join("xdr"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dates.contains(&"date=2026-11-03".to_string()), "{dates:?}");

    // The bad line, raw, then the reason.
    let rejects = env.data().join("rejects/carrier.tsv.rejects");
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(
        text,
        "2026/11/2 8:20\tnot a time\tuser2\t15551230022\n# line 3: end: \"not a time\" does not match \"%Y/%m/%d %H:%M\"\n"
    );
    assert!(out.contains("carrier.tsv.rejects"), "{out}");
    // Fixed and rated: charged once (8:20-8:21 = 60 s = 0.01), its note line skipped.
    let fixed = env.dir.path().join("carrier.tsv.rejects");
    std::fs::write(&fixed, text.replace("not a time", "2026/11/2 8:21")).unwrap();
    let out = rate(&env, "carrier", &fixed);
    assert_eq!(counts(&out), [1, 0, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.97", "10", "9.97"]));
    let out = rate(&env, "carrier", &fixed);
    assert!(out.contains("already rated"), "{out}");
}

/// Operators drop a file of the same name every day (`Master.csv`): a new file's rejects are
/// added after the earlier file's, which may not be fixed and rated yet, never over them.
#[test]
fn a_new_file_of_the_same_name_keeps_the_earlier_files_rejects() {
    let env = env();
    let out = rate(&env, "carrier", &fixture("carrier.tsv"));
    assert_eq!(counts(&out), [2, 1, 0, 0, 0, 1], "{out}");
    let rejects = env.data().join("rejects/carrier.tsv.rejects");
    let first_text = std::fs::read_to_string(&rejects).unwrap();

    let next_dir = env.dir.path().join("next");
    std::fs::create_dir_all(&next_dir).unwrap();
    let next = next_dir.join("carrier.tsv");
    std::fs::write(
        &next,
        "2026/11/4 9:00\t2026/11/4 9:01\tuser0\t15551230030\n2026/11/4 9:10\tbroken\tuser1\t15551230031\n",
    )
    .unwrap();
    let out = rate(&env, "carrier", &next);
    // user0 60 s = 0.01; line 2 bad.
    assert_eq!(counts(&out), [1, 0, 0, 0, 0, 1], "{out}");
    assert!(out.contains("carrier.tsv.rejects"), "{out}");
    // The content hash the summary prints when the file comes again.
    let again = rate(&env, "carrier", &next);
    let hash = again
        .split("content hash ")
        .nth(1)
        .and_then(|t| t.get(..16))
        .unwrap_or_else(|| panic!("{again}"));
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        format!(
            "{first_text}# rejects of {} (content hash {hash})\n2026/11/4 9:10\tbroken\tuser1\t15551230031\n# line 2: end: \"broken\" does not match \"%Y/%m/%d %H:%M\"\n",
            next.display()
        )
    );
    // Both fixed in the one file and rated: each call charged once, the notes skipped.
    let fixed = env.dir.path().join("carrier.tsv.rejects");
    let text = std::fs::read_to_string(&rejects).unwrap();
    std::fs::write(
        &fixed,
        text.replace("not a time", "2026/11/2 8:21")
            .replace("broken", "2026/11/4 9:12"),
    )
    .unwrap();
    let out = rate(&env, "carrier", &fixed);
    // user2 60 s = 0.01, user1 120 s = 0.02.
    assert_eq!(counts(&out), [2, 0, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.96", "9.98", "9.97"]));
}

#[test]
fn compressed_files_are_the_same_file_as_their_content() {
    let env = env();
    let out = rate(&env, "asterisk", &fixture("Master.csv.1.gz"));
    // Four 60 s calls: user0 twice.
    assert_eq!(counts(&out), [4, 0, 0, 0, 0, 0], "{out}");
    assert_eq!(env.sorted_credits(), users(["9.98", "9.99", "9.99"]));
    let out = rate(&env, "asterisk", &fixture("Master.csv.1.zst"));
    assert!(out.contains("already rated"), "zst: {out}");
    // And plain: the content hash is the decompressed content's.
    let plain = env.dir.path().join("Master.csv.1");
    let mut data = Vec::new();
    use std::io::Read;
    flate2_free_gunzip(&fixture("Master.csv.1.gz"))
        .read_to_end(&mut data)
        .unwrap();
    std::fs::write(&plain, &data).unwrap();
    let out = rate(&env, "asterisk", &plain);
    assert!(out.contains("already rated"), "{out}");
    assert_eq!(env.sorted_credits(), users(["9.98", "9.99", "9.99"]));
}

/// The test decompresses with the system's gzip, not with ratel's reader.
fn flate2_free_gunzip(p: &Path) -> std::io::Cursor<Vec<u8>> {
    let out = std::process::Command::new("gzip")
        .args(["-dc", &p.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::io::Cursor::new(out.stdout)
}

#[test]
fn the_spool_picks_the_format_by_subdirectory_and_glob() {
    let env = env();
    let spool = env.dir.path().join("spool");
    for d in ["fs_custom", "asterisk"] {
        std::fs::create_dir_all(spool.join(d)).unwrap();
    }
    std::fs::copy(fixture("pbx2.csv"), spool.join("pbx2-day1.csv")).unwrap();
    std::fs::copy(fixture("fs_custom.csv"), spool.join("fs_custom/a.csv")).unwrap();
    std::fs::copy(
        fixture("Master.csv.1.gz"),
        spool.join("asterisk/Master.csv.1.gz"),
    )
    .unwrap();
    let (server, _) = env.serve();
    let done = spool.join("done");
    let t = Instant::now();
    loop {
        let n = std::fs::read_dir(&done).map(|d| d.count()).unwrap_or(0);
        if n == 3 || t.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    common::stop(server);
    let failed: Vec<_> = std::fs::read_dir(spool.join("failed"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(failed.is_empty(), "{failed:?}");
    // pbx2: 0.01 / 0.02 / 0.03; fs_custom: 0.01 / 0 / 0.10; Master.csv.1.gz: 0.02 / 0.01 /
    // 0.01.
    assert_eq!(env.sorted_credits(), users(["9.96", "9.97", "9.86"]));
}

#[test]
fn a_bad_template_is_refused_at_load_with_its_line_and_key() {
    let env = Env::new_with_users(1, "10");
    let cfg = env.dir.path().join("ratel.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    let line = text.lines().count() + 2;
    text.push_str("\n[[cdr_format]]\nname = \"bad\"\ncolumns = [\"a\", \"b\"]\naccount = \"acct\"\ncallee = 1\nstart = 0\nbillsec = 1\n");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["rate", "--config", &env.config(), "x.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "ratel.toml:{line}: cdr_format[0] (bad).account: no column named \"acct\" in `columns`"
        )),
        "{err}"
    );
}
