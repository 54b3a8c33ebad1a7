//! End-to-end: runs the real `ratel` binary on the fixture CDR files of each format, then
//! reads the Parquet xDRs back with the parquet crate's reader and the ledger with SQLite,
//! and checks every cost against a hand-computed table (see the comments beside each row).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::{
    Array, Decimal128Array, Int64Array, ListArray, StringArray, StructArray,
    TimestampMicrosecondArray, UInt64Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::Decimal;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A temp dir with a config using the demo rate deck and groups (UTC).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"
[storage]
data_dir = "data"
[rating]
time_zone = "UTC"
[[group]]
name = "sample-group"
tariff = "std"
decimals = 4
rounding = "up"
[[group]]
name = "wholesale"
tariff = "std"
decimals = 2
rounding = "half_even"
[[tariff]]
name = "std"
rates = "{}"
"#,
            root().join("fixtures/demo/rates/std.csv").display()
        );
        std::fs::write(dir.path().join("ratel.toml"), cfg).unwrap();
        let env = Env { dir };
        let out = env.ratel(&[
            "users",
            "import",
            "--config",
            &env.config(),
            &root().join("fixtures/demo/users.csv").display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ratel(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ratel"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// `ratel rate --config … --format FORMAT FILES…`, however it ends.
    fn rate_files(&self, format: &str, files: &[&Path]) -> std::process::Output {
        let config = self.config();
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let mut args = vec!["rate", "--config", &config, "--format", format];
        args.extend(files.iter().map(String::as_str));
        self.ratel(&args)
    }

    fn rate(&self, format: &str, file: &str) -> String {
        let out = self.rate_files(format, &[&root().join(file)]);
        assert!(
            out.status.success(),
            "rate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Subscriber credits as the ledger holds them.
    fn credits(&self) -> BTreeMap<String, Decimal> {
        let ledger = ratel_engine::ledger::Ledger::open(&self.data()).unwrap();
        ledger
            .load_users()
            .unwrap()
            .into_iter()
            .map(|u| (u.username.unwrap(), u.credit))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Xdr {
    xdr_id: u64,
    status: String,
    username: String,
    session_id: String,
    login: i64,
    logout: i64,
    billed: i64,
    credit_used: Decimal,
    before: Decimal,
    after: Decimal,
    destination: String,
    details: Vec<(String, i64, Decimal)>,
    date_dir: String,
}

fn money(a: &Decimal128Array, i: usize) -> Decimal {
    assert_eq!((a.precision(), a.scale()), (38, 10));
    Decimal::from_i128_with_scale(a.value(i), 10).normalize()
}

/// Every xDR under `data/xdr`, read with the parquet crate's reader.
fn read_xdrs(data: &Path) -> Vec<Xdr> {
    let mut out = Vec::new();
    for part in std::fs::read_dir(data.join("xdr")).unwrap() {
        let part = part.unwrap().path();
        for f in std::fs::read_dir(&part).unwrap() {
            let f = f.unwrap().path();
            assert!(
                f.extension().is_some_and(|e| e == "parquet"),
                "stray file {f:?}"
            );
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let b = batch.unwrap();
                let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
                let s = |n: &str| {
                    col(n)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .clone()
                };
                let i = |n: &str| {
                    col(n)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone()
                };
                let m = |n: &str| {
                    col(n)
                        .as_any()
                        .downcast_ref::<Decimal128Array>()
                        .unwrap()
                        .clone()
                };
                let t = |n: &str| {
                    col(n)
                        .as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .unwrap()
                        .clone()
                };
                let ids = col("xdr_id")
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .unwrap()
                    .clone();
                let details = col("charge_rule_details")
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .unwrap()
                    .clone();
                let (status, user, sid, dest) = (
                    s("status"),
                    s("username"),
                    s("session_id"),
                    s("destination"),
                );
                let (login, logout, billed) =
                    (t("login_time"), t("logout_time"), i("billed_seconds"));
                let (cu, bc, ac) = (m("credit_used"), m("before_credit"), m("after_credit"));
                for r in 0..b.num_rows() {
                    let dl = details.value(r);
                    let st = dl.as_any().downcast_ref::<StructArray>().unwrap();
                    let rule = st.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    let secs = st.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
                    let cr = st
                        .column(6)
                        .as_any()
                        .downcast_ref::<Decimal128Array>()
                        .unwrap();
                    out.push(Xdr {
                        xdr_id: ids.value(r),
                        status: status.value(r).into(),
                        username: user.value(r).into(),
                        session_id: sid.value(r).into(),
                        login: login.value(r) / 1_000_000,
                        logout: logout.value(r) / 1_000_000,
                        billed: billed.value(r),
                        credit_used: money(&cu, r),
                        before: money(&bc, r),
                        after: money(&ac, r),
                        destination: dest.value(r).into(),
                        details: (0..st.len())
                            .map(|k| (rule.value(k).to_string(), secs.value(k), money(cr, k)))
                            .collect(),
                        date_dir: part.file_name().unwrap().to_string_lossy().into(),
                    });
                }
            }
        }
    }
    out.sort_by_key(|x| x.xdr_id);
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` to unix seconds, computed here independently of the engine.
fn ts(s: &str) -> i64 {
    {
        let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
        let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
        // days_from_civil (Howard Hinnant)
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        days * 86400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
    }
}

#[test]
fn asterisk_file_rates_exactly_once() {
    let env = Env::new();
    let out = env.rate("asterisk", "fixtures/cdr/asterisk/Master.csv");
    assert!(
        out.contains("11 records read, 9 rated into xDRs, charged 3.1058"),
        "{out}"
    );
    assert!(
        out.contains("OK 6, unanswered 1, NO_RATE 1, UNKNOWN_USER 1, duplicate 1, bad lines 1"),
        "{out}"
    );
    assert!(
        out.contains(
            "Master.csv:9: billsec: \"abc\" is not a non-negative whole number of seconds"
        ),
        "{out}"
    );

    let xdrs = read_xdrs(&env.data());
    // (session id, status, user, billed s, credit_used, before, after)
    let want: &[(&str, &str, &str, i64, &str, &str, &str)] = &[
        // 61 s to 1 (USA, 60/60, 0.01/min): 120 s -> 0.02
        ("1762077600.1", "OK", "1001", 120, "0.02", "100", "99.98"),
        // 65 s to 4420 (London, 1/1, 0.015/min): 0.01625 -> up to 4 dp 0.0163
        (
            "1762077900.2",
            "OK",
            "1001",
            65,
            "0.0163",
            "99.98",
            "99.9637",
        ),
        // 17:30-18:30 Monday to 49: 30 min peak 0.06 + 30 min 0.03 + peak fee 0.05 = 2.75
        (
            "1762104600.3",
            "OK",
            "1001",
            3600,
            "2.75",
            "99.9637",
            "97.2137",
        ),
        // 31 s to 44 (30/6, 0.02/min, fee 0.01): 36 s -> 0.01 + 0.012 = 0.022
        ("1762081200.4", "OK", "1002", 36, "0.022", "50.5", "50.478"),
        (
            "1762081800.5",
            "UNANSWERED",
            "1002",
            0,
            "0",
            "50.478",
            "50.478",
        ),
        // 100 s to 4915 (30/6, 0.15/min): 102 s -> 0.255 -> wholesale half_even 2 dp 0.26
        ("1762084800.6", "OK", "1003", 102, "0.26", "10", "9.74"),
        ("1762086600.7", "UNKNOWN_USER", "9999", 0, "0", "0", "0"),
        (
            "1762088400.8",
            "NO_RATE",
            "1001",
            0,
            "0",
            "97.2137",
            "97.2137",
        ),
        // 45 s to 9821 (1/1, 0.05/min): 0.0375
        (
            "1762127970.11",
            "OK",
            "1002",
            45,
            "0.0375",
            "50.478",
            "50.4405",
        ),
    ];
    assert_eq!(xdrs.len(), want.len(), "{xdrs:#?}");
    for (x, w) in xdrs.iter().zip(want) {
        // Records without a `sequence` column: uniqueid + ':' + a hash of the record.
        let (uniqueid, hash) = x.session_id.split_once(':').unwrap();
        assert_eq!(hash.len(), 16, "{}", x.session_id);
        let got = (
            uniqueid,
            x.status.as_str(),
            x.username.as_str(),
            x.billed,
            x.credit_used,
            x.before,
            x.after,
        );
        assert_eq!(got, (w.0, w.1, w.2, w.3, d(w.4), d(w.5), d(w.6)));
    }
    // ids unique and increasing
    assert!(xdrs.windows(2).all(|w| w[0].xdr_id < w[1].xdr_id));
    // the call across the window edge is split into two pieces
    let edge = &xdrs[2];
    assert_eq!(edge.login, ts("2026-11-02T17:30:00Z"));
    assert_eq!(edge.logout, ts("2026-11-02T18:30:00Z"));
    assert_eq!(edge.destination, "49");
    assert_eq!(
        edge.details,
        vec![
            ("Germany peak".into(), 1800, d("1.85")),
            ("Germany".into(), 1800, d("0.9"))
        ]
    );
    // a call ending after midnight lands in the next day's partition
    assert_eq!(xdrs[8].date_dir, "date=2026-11-03");
    assert_eq!(xdrs[0].date_dir, "date=2026-11-02");

    let credits = env.credits();
    assert_eq!(credits["1001"], d("97.2137"));
    assert_eq!(credits["1002"], d("50.4405"));
    assert_eq!(credits["1003"], d("9.74"));
    assert_eq!(credits["sample-user"], d("0"));

    // Conservation: per user, the sum of credit_used equals what the ledger took.
    let start: BTreeMap<&str, Decimal> = [
        ("1001", d("100")),
        ("1002", d("50.5")),
        ("1003", d("10")),
        ("sample-user", d("0")),
    ]
    .into();
    for (u, c0) in &start {
        let used: Decimal = xdrs
            .iter()
            .filter(|x| x.username == *u && x.status != "UNKNOWN_USER")
            .map(|x| x.credit_used)
            .sum();
        assert_eq!(*c0 - used, credits[*u], "user {u}");
    }

    // Again: nothing charged, no new files.
    let files_before = count_files(&env.data().join("xdr"));
    let out = env.rate("asterisk", "fixtures/cdr/asterisk/Master.csv");
    assert!(out.contains("already rated"), "{out}");
    assert_eq!(count_files(&env.data().join("xdr")), files_before);
    assert_eq!(env.credits(), credits);

    // A copy that only grew (a blank line appended) is that file, continued: nothing new.
    let grown = env.dir.path().join("grown.csv");
    let text = std::fs::read_to_string(root().join("fixtures/cdr/asterisk/Master.csv")).unwrap();
    std::fs::write(&grown, format!("{text}\n")).unwrap();
    let out = env.rate("asterisk", &grown.display().to_string());
    assert!(out.contains("a grown copy of"), "{out}");
    assert!(out.contains("0 records read"), "{out}");
    assert_eq!(env.credits(), credits);

    // The same calls in another file (other name, other bytes: CRLF) are duplicates.
    let copy = env.dir.path().join("copy.csv");
    std::fs::write(&copy, text.replace('\n', "\r\n")).unwrap();
    let out = env.rate_files("asterisk", &[&copy]);
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.contains("11 records read, 0 rated into xDRs, charged 0"),
        "{out}"
    );
    assert!(out.contains("duplicate 10"), "{out}");
    assert_eq!(env.credits(), credits);
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|p| std::fs::read_dir(p.unwrap().path()).unwrap().count())
        .sum()
}

#[test]
fn freeswitch_and_generic_files() {
    let env = Env::new();
    let out = env.rate("freeswitch", "fixtures/cdr/freeswitch/Master.csv");
    assert!(
        out.contains("4 records read, 4 rated into xDRs, charged 0.0718"),
        "{out}"
    );
    let out = env.rate("generic", "fixtures/cdr/generic/cdrs.csv");
    assert!(
        out.contains("6 records read, 5 rated into xDRs, charged 0.224"),
        "{out}"
    );
    assert!(
        out.contains("cdrs.csv:6: start_time: \"not-a-time\" is not an ISO-8601 time"),
        "{out}"
    );
    let got: Vec<(String, String, Decimal)> = read_xdrs(&env.data())
        .into_iter()
        .map(|x| (x.session_id, x.status, x.credit_used))
        .collect();
    let want: Vec<(&str, &str, &str)> = vec![
        // FreeSWITCH: 60 s to +1: 0.01
        ("f1a0c6a2-0001-4c1e-9d3a-000000000001", "OK", "0.01"),
        // 7 s to 4420 (1/1, 0.015): 0.00175 -> up 0.0018
        ("f1a0c6a2-0002-4c1e-9d3a-000000000002", "OK", "0.0018"),
        ("f1a0c6a2-0003-4c1e-9d3a-000000000003", "UNANSWERED", "0"),
        // Saturday 90 s to 49 off-peak (60/60, 0.03): 120 s -> 0.06 (wholesale, 2 dp)
        ("f1a0c6a2-0004-4c1e-9d3a-000000000004", "OK", "0.06"),
        // generic: 1 s to +1 (60/60): 0.01
        ("g-1", "OK", "0.01"),
        // 37 s to 0044 77... (30/6): 42 s -> 0.01 + 0.014 = 0.024
        ("g-2", "OK", "0.024"),
        // Wednesday 17:59, 120 s to 49: 60 s peak 0.06 + 60 s off-peak 0.03 + fee 0.05 = 0.14
        ("g-3", "OK", "0.14"),
        ("g-4", "UNANSWERED", "0"),
        // 61 s to 9821 (1/1, 0.05): 0.0508333 -> wholesale half_even 2 dp 0.05
        ("g-6", "OK", "0.05"),
    ];
    let want: Vec<(String, String, Decimal)> = want
        .into_iter()
        .map(|(a, b, c)| (a.into(), b.into(), d(c)))
        .collect();
    assert_eq!(got, want);
    let credits = env.credits();
    // 1001: 0.01 + 0.01; 1002: 0.0018 + 0.024; 1003: 0.06 + 0.05; sample-user: 0.14 into negative
    assert_eq!(credits["1001"], d("99.98"));
    assert_eq!(credits["1002"], d("50.4742"));
    assert_eq!(credits["1003"], d("9.89"));
    assert_eq!(credits["sample-user"], d("-0.14"));
}

#[test]
fn bad_config_and_bad_input_give_one_line_errors() {
    let env = Env::new();
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[rating]\ntime_zone = \"Mars/Base\"\n").unwrap();
    let out = env.ratel(&["rate", "--config", &bad.display().to_string(), "x.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        format!(
            "ratel: {}: rating.time_zone: \"Mars/Base\" is not an IANA time zone",
            bad.display()
        )
    );

    let out = env.rate_files("generic", &[Path::new("missing.csv")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("ratel: missing.csv: No such file"), "{err}");
    assert_eq!(err.lines().count(), 1);

    let hdr = env.dir.path().join("nohdr.csv");
    std::fs::write(&hdr, "a,b,c\n").unwrap();
    let out = env.rate_files("generic", &[&hdr]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("nohdr.csv:1: header has no `call_id` column"),
        "{err}"
    );
}

#[test]
fn data_dir_lock_refuses_a_second_process() {
    let env = Env::new();
    let _held = ratel_engine::ledger::DataDirLock::acquire(&env.data()).unwrap();
    let out = env.rate_files(
        "asterisk",
        &[&root().join("fixtures/cdr/asterisk/Master.csv")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is in use by another ratel process"), "{err}");
}

/// `ratel rate` of many files folds their movements once, after the last file — and when a
/// file fails, before it reports the failure: the stored balances are right without
/// waiting for the next `Ledger::open` (which folds too).
#[test]
fn a_run_of_many_files_folds_what_it_rated_before_reporting_a_failed_file() {
    let env = Env::new();
    let missing = env.dir.path().join("missing.csv");
    let out = env.rate_files(
        "asterisk",
        &[&root().join("fixtures/cdr/asterisk/Master.csv"), &missing],
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("charged 3.1058"), "{stdout}");
    // Read as stored, without `Ledger::open`.
    let c = rusqlite::Connection::open_with_flags(
        env.data().join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let pending: i64 = c
        .query_row("SELECT count(*) FROM batches WHERE applied = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(pending, 0, "the rated file's movements wait unfolded");
    let stored: BTreeMap<String, Decimal> = c
        .prepare("SELECT username, credit FROM users")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (u, credit) = r.unwrap();
            (u, d(&credit))
        })
        .collect();
    // The same balances as `asterisk_file_rates_exactly_once` finds after that file alone.
    assert_eq!(stored["1001"], d("97.2137"));
    assert_eq!(stored["1002"], d("50.4405"));
    assert_eq!(stored["1003"], d("9.74"));
}
