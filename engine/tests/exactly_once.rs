//! Exactly-once across interruptions: a CDR run stopped after some committed batches, then
//! run again, charges every record once and writes every xDR once; a crash between the
//! Parquet temp write and the ledger commit (or between the commit and the rename) is
//! repaired by `Ledger::open`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Decimal128Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ratel_engine::batch::{BatchRater, NoProgress};
use ratel_engine::catalog::{Catalog, CdrFormat};
use ratel_engine::domain::NewClient;
use ratel_engine::ledger::Ledger;
use rust_decimal::Decimal;

mod common;
use common::{add_users, catalog};

/// 3,000 calls to prefix 1 (USA, 60/60, 0.01/min) of 1..=180 s by 7 users. A call of d
/// seconds costs ceil(d/60) * 0.01 — computed here without the engine.
fn write_cdrs(path: &Path) -> (usize, Vec<Decimal>) {
    let (s, per_user) = cdr_text(0..3000);
    std::fs::write(path, s).unwrap();
    (3000, per_user)
}

/// Calls `calls` of the 3,000 above as a CSV file's text, with their cost per user.
fn cdr_text(calls: std::ops::Range<usize>) -> (String, Vec<Decimal>) {
    let mut s = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    let mut per_user = vec![Decimal::ZERO; 7];
    for i in calls {
        let d = 1 + (i * 37) % 180;
        let u = i % 7;
        s.push_str(&format!(
            "c{i},555,15551234567,2026-11-02T10:{:02}:00Z,{d},ANSWERED,u{u}\n",
            i % 60
        ));
        per_user[u] += Decimal::new(d.div_ceil(60) as i64, 2);
    }
    (s, per_user)
}

/// A data dir with subscribers u0..u6 (100 each) and the 3,000 calls of [`write_cdrs`]:
/// (the temp dir, to hold, the data dir, the catalog, the CDR file, its calls, their cost
/// per user, the ledger).
type Fixture = (
    tempfile::TempDir,
    PathBuf,
    Catalog,
    PathBuf,
    usize,
    Vec<Decimal>,
    Ledger,
);

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let cdrs = dir.path().join("cdrs.csv");
    let (rows, per_user) = write_cdrs(&cdrs);
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 7);
    (dir, data, cat, cdrs, rows, per_user, ledger)
}

/// The stored balances, in user order.
fn balances(l: &Ledger) -> Vec<Decimal> {
    l.load_users()
        .unwrap()
        .into_iter()
        .map(|u| u.credit)
        .collect()
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for p in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

/// (session_id, username, credit_used) of every xDR.
fn read_all(root: &Path) -> Vec<(String, String, Decimal)> {
    let mut out = Vec::new();
    for f in parquet_files(root) {
        assert!(
            f.extension().is_some_and(|e| e == "parquet"),
            "unexpected file {f:?}"
        );
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            let sid = b
                .column_by_name("session_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let user = b
                .column_by_name("username")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let cu = b
                .column_by_name("credit_used")
                .unwrap()
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .unwrap()
                .clone();
            for i in 0..b.num_rows() {
                out.push((
                    sid.value(i).to_string(),
                    user.value(i).to_string(),
                    Decimal::from_i128_with_scale(cu.value(i), 10),
                ));
            }
        }
    }
    out
}

#[test]
fn interrupted_run_resumes_and_charges_each_record_once() {
    let (_dir, data, cat, cdrs, rows, per_user, mut ledger) = fixture();

    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        rater.block_bytes = 8 << 10;
        rater.crash_after_batches = Some(3);
        assert!(rater
            .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
            .is_err());
    }
    let partial = read_all(ledger.xdr_root());
    assert!(
        !partial.is_empty() && partial.len() < rows,
        "{} xDRs after the crash",
        partial.len()
    );
    drop(ledger);

    // A new process: recovery, then the same file again.
    let mut ledger = Ledger::open(&data).unwrap();
    let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
    rater.block_bytes = 8 << 10;
    let s = rater
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert!(s.resumed_at_line.is_some());
    assert_eq!(s.records as usize + partial.len(), rows);
    assert_eq!(s.duplicates, 0);

    let all = read_all(ledger.xdr_root());
    assert_eq!(all.len(), rows);
    let ids: HashSet<&str> = all.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(ids.len(), rows, "an xDR appears twice");
    let credits = balances(&ledger);
    for u in 0..7 {
        assert_eq!(credits[u], Decimal::from(100) - per_user[u], "user u{u}");
        let used: Decimal = all
            .iter()
            .filter(|x| x.1 == format!("u{u}"))
            .map(|x| x.2)
            .sum();
        assert_eq!(used, per_user[u], "xDR sum of u{u}");
    }
}

#[test]
fn recovery_finishes_renames_and_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let cdrs = dir.path().join("cdrs.csv");
    write_cdrs(&cdrs);
    let mut ledger = Ledger::open(&data).unwrap();
    ledger
        .add_clients(
            &[NewClient {
                username: Some("u0".into()),
                group: "g".into(),
                ..Default::default()
            }],
            "test",
            0,
        )
        .unwrap();
    BatchRater::new(&cat, &mut ledger)
        .unwrap()
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    let files = parquet_files(ledger.xdr_root());
    drop(ledger);
    // Crash after commit, before rename: the committed file is only under its temp name.
    let committed = files[0].clone();
    std::fs::rename(&committed, ratel_engine::xdr::temp_path(&committed)).unwrap();
    // Crash before commit: a temp file no batch recorded.
    let orphan = committed.with_file_name(".cdr-99999999999999999999-00000000.parquet.tmp");
    std::fs::write(&orphan, b"partial").unwrap();
    let ledger = Ledger::open(&data).unwrap();
    assert!(committed.exists(), "committed file was not renamed back");
    assert!(!orphan.exists(), "orphan temp file was not removed");
    assert_eq!(parquet_files(ledger.xdr_root()), files);
}

/// The calls of [`write_cdrs`] cut into files of `per_file` calls, with each file's cost
/// per user.
fn write_cdr_files(dir: &Path, per_file: usize) -> Vec<(PathBuf, Vec<Decimal>)> {
    let mut out = Vec::new();
    for (k, first) in (0..3000usize).step_by(per_file).enumerate() {
        let (s, per_user) = cdr_text(first..(first + per_file).min(3000));
        let path = dir.join(format!("part-{k:02}.csv"));
        std::fs::write(&path, s).unwrap();
        out.push((path, per_user));
    }
    out
}

#[test]
fn files_sharing_folds_charge_exactly_and_a_run_cut_before_its_last_fold_is_folded_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    // 12 files of 250 calls: one batch each.
    let files = write_cdr_files(dir.path(), 250);
    assert_eq!(files.len(), 12);
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 7);
    let expected = |upto: usize| -> Vec<Decimal> {
        (0..7)
            .map(|u| Decimal::from(100) - files[..upto].iter().map(|f| f.1[u]).sum::<Decimal>())
            .collect()
    };

    // Five files, as `ratel rate` rates them (no fold at each file's end), then the
    // process ends without its final fold (a crash).
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        rater.fold_each_file = false;
        for (f, _) in &files[..5] {
            let s = rater.rate_file(f, CdrFormat::Generic, &NoProgress).unwrap();
            assert_eq!(s.records, 250);
        }
    }
    // Fewer batches than a fold takes: nothing folded yet, the movements wait in the ledger.
    assert!(ledger.has_pending_batches().unwrap());
    assert_eq!(balances(&ledger), vec![Decimal::from(100); 7]);
    drop(ledger);
    let mut ledger = Ledger::open(&data).unwrap();
    assert!(!ledger.has_pending_batches().unwrap(), "open folds");
    assert_eq!(balances(&ledger), expected(5));

    // The other seven, with the fold every few batches and the caller's fold at the end.
    let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
    rater.fold_each_file = false;
    for (f, _) in &files[5..] {
        rater.rate_file(f, CdrFormat::Generic, &NoProgress).unwrap();
    }
    rater.fold_if_unfolded().unwrap();
    drop(rater);
    assert!(!ledger.has_pending_batches().unwrap());
    assert_eq!(balances(&ledger), expected(12));
    let (_, per_user) = write_cdrs(&dir.path().join("all.csv"));
    for (u, row) in ledger.load_users().unwrap().iter().enumerate() {
        assert_eq!(
            ledger.journal_sum(row.user_id, Some("usage")).unwrap(),
            -per_user[u],
            "journal of u{u}"
        );
    }
    let all = read_all(ledger.xdr_root());
    assert_eq!(all.len(), 3000);
    let ids: HashSet<&str> = all.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(ids.len(), 3000, "an xDR appears twice");
}

/// A block of 40,000 calls over five days (some crossing midnight), seven subscribers and
/// two accounts that are not subscribers, interleaved: each day's file holds exactly the
/// calls that ended that UTC day, in (username, xdr_id) order, across the runs the block is
/// built in (two or more: a run is at most half the block on two cores, at least 16,384
/// rows) — the order a one-user report prunes by.
#[test]
fn a_block_spanning_days_writes_each_day_in_username_then_xdr_order() {
    use arrow_array::{TimestampMicrosecondArray, UInt64Array};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let mut csv = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    // Expected rows per day of logout (0 = 2026-11-02), computed without the engine.
    let mut per_day = [0usize; 6];
    let calls = 40_000;
    for i in 0..calls {
        let day = i % 5;
        let d = 1 + (i * 37) % 180;
        let (h, m) = if i % 11 == 0 {
            (23, 59)
        } else {
            ((i / 7) % 23, i % 60)
        };
        let account = match i % 9 {
            7 => "x-stranger".to_string(),
            8 => "a-stranger".to_string(),
            u => format!("u{u}"),
        };
        csv.push_str(&format!(
            "c{i},555,15551234567,2026-11-{:02}T{h:02}:{m:02}:00Z,{d},ANSWERED,{account}\n",
            2 + day
        ));
        per_day[day + usize::from(h == 23 && m == 59 && d >= 60)] += 1;
    }
    let cdrs = dir.path().join("days.csv");
    std::fs::write(&cdrs, csv).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 7);
    let s = BatchRater::new(&cat, &mut ledger)
        .unwrap()
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert_eq!(s.xdrs as usize, calls);

    let mut rows_by_day: std::collections::BTreeMap<i64, usize> = Default::default();
    for f in parquet_files(ledger.xdr_root()) {
        let mut keys: Vec<(String, u64)> = Vec::new();
        let mut days: HashSet<i64> = HashSet::new();
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let names = col("username");
            let names = names.as_any().downcast_ref::<StringArray>().unwrap();
            let ids = col("xdr_id");
            let ids = ids.as_any().downcast_ref::<UInt64Array>().unwrap();
            let out = col("logout_time");
            let out = out
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                keys.push((names.value(i).to_string(), ids.value(i)));
                days.insert(out.value(i).div_euclid(86_400_000_000));
            }
        }
        assert_eq!(days.len(), 1, "{f:?} holds rows of days {days:?}");
        *rows_by_day.entry(*days.iter().next().unwrap()).or_default() += keys.len();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "{f:?}: rows not in (username, xdr_id) order"
        );
        assert!(keys.iter().any(|k| k.0 == "a-stranger") && keys.iter().any(|k| k.0 == "u3"));
    }
    assert_eq!(rows_by_day.values().copied().collect::<Vec<_>>(), per_day);
}

/// The ledger stages a block's rows (and the fold at the file's end) while its Parquet
/// files are written, and commits only once they are: when a file cannot be written (here
/// the day's directory is a plain file), nothing of the block is committed — no batch, no
/// movement, no journal row, no file progress — and the same file rated again once the
/// obstacle is gone charges every call once.
#[test]
fn a_block_whose_files_fail_commits_nothing_and_is_rated_again_whole() {
    let (_dir, data, cat, cdrs, rows, per_user, mut ledger) = fixture();
    let blocker = ledger.xdr_root().join("date=2026-11-02");
    std::fs::write(&blocker, b"not a directory").unwrap();
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        let e = rater
            .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
            .unwrap_err();
        assert!(
            matches!(e, ratel_engine::batch::BatchError::Sink(_)),
            "the Parquet error is reported as it is: {e:?}"
        );
    }
    assert!(!ledger.has_pending_batches().unwrap());
    assert_eq!(balances(&ledger), vec![Decimal::from(100); 7]);
    for u in ledger.load_users().unwrap() {
        assert_eq!(
            ledger.journal_sum(u.user_id, Some("usage")).unwrap(),
            Decimal::ZERO
        );
    }
    assert_eq!(ledger.next_xdr_id().unwrap(), 1, "no xDR id was taken");

    std::fs::remove_file(&blocker).unwrap();
    drop(ledger);
    let mut ledger = Ledger::open(&data).unwrap();
    let s = BatchRater::new(&cat, &mut ledger)
        .unwrap()
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert_eq!((s.records as usize, s.duplicates), (rows, 0));
    assert!(
        s.resumed_at_line.is_none(),
        "nothing of the first try was recorded"
    );
    let expected: Vec<Decimal> = per_user.iter().map(|c| Decimal::from(100) - c).collect();
    assert_eq!(balances(&ledger), expected);
    let all = read_all(ledger.xdr_root());
    assert_eq!(all.len(), rows);
    assert_eq!(
        all.iter()
            .map(|x| x.0.as_str())
            .collect::<HashSet<_>>()
            .len(),
        rows
    );
}

/// Call keys live in `batch_keys` from ledger version 6 on, apart from the batch rows the
/// fold rewrites; a ledger written before keeps them in `batches.call_keys`. Keys of both
/// stop repeats: a file holding 10 calls rated before (in a version-5 layout) and 10 new
/// ones charges the new ones only.
#[test]
fn call_keys_of_both_layouts_stop_repeats() {
    let (_dir, data, cat, cdrs, rows, per_user, mut ledger) = fixture();
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        rater.block_bytes = 8 << 10;
        let s = rater
            .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
            .unwrap();
        assert_eq!((s.records as usize, s.duplicates), (rows, 0));
    }
    drop(ledger);
    let db = data.join("ledger.sqlite");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let (batches, inline, keyed, keys): (i64, i64, i64, i64) = c
            .query_row(
                "SELECT (SELECT count(*) FROM batches WHERE source LIKE 'cdr:%'),
                        (SELECT coalesce(sum(length(call_keys)), 0) FROM batches),
                        (SELECT count(*) FROM batch_keys),
                        (SELECT sum(length(call_keys)) FROM batch_keys)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert!(batches > 1, "8 KiB blocks: several batches, {batches}");
        assert_eq!((inline, keyed, keys), (0, batches, 16 * rows as i64));
        // The same ledger as version 5 wrote it: each batch's keys in its row.
        c.execute_batch(
            "UPDATE batches SET call_keys = coalesce(
               (SELECT call_keys FROM batch_keys k WHERE k.batch_id = batches.batch_id), x'');
             DROP TABLE batch_keys;
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let mut ledger = Ledger::open(&data).unwrap();
    assert_eq!(ledger.load_call_keys().unwrap().len(), rows);
    let again = cdrs.with_file_name("again.csv");
    let (text, _) = cdr_text(rows - 10..rows);
    let (new_text, new_cost) = cdr_text(rows..rows + 10);
    let new_lines = new_text.split_once('\n').unwrap().1;
    std::fs::write(&again, format!("{text}{new_lines}")).unwrap();
    let before = balances(&ledger);
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        let s = rater
            .rate_file(&again, CdrFormat::Generic, &NoProgress)
            .unwrap();
        assert_eq!((s.records, s.duplicates, s.xdrs), (20, 10, 10));
        assert_eq!(s.charged, new_cost.iter().sum::<Decimal>());
    }
    let after = balances(&ledger);
    for u in 0..7 {
        assert_eq!(after[u], before[u] - new_cost[u], "user u{u}");
        assert_eq!(before[u], Decimal::from(100) - per_user[u], "user u{u}");
    }
    // Keys of the migrated rows and of the new batch, read back at the next open.
    drop(ledger);
    let ledger = Ledger::open(&data).unwrap();
    assert_eq!(ledger.load_call_keys().unwrap().len(), rows + 10);
}

/// A file hashed ahead (`ratel rate` hashes its first file while the clients load) is rated
/// under its content's hash; one that changed after it was hashed ahead is hashed again:
/// its recorded hash is that of what was rated, and a later run of the same content is
/// refused as already rated. (The first half checks the result, not that the identity
/// ahead was used: nothing outside the rater tells, but the time it took.)
#[test]
fn a_file_hashed_ahead_is_hashed_again_when_it_changed() {
    use ratel_engine::batch::identify_ahead;
    let (_dir, _data, cat, cdrs, rows, per_user, mut ledger) = fixture();
    let blake = |p: &Path| {
        blake3::hash(&std::fs::read(p).unwrap())
            .to_hex()
            .to_string()
    };

    // Unchanged: rated under the hash of its content.
    let ahead = identify_ahead(&cat, &ledger, &cdrs, CdrFormat::Generic).unwrap();
    let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
    rater.use_identity(ahead);
    let s = rater
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert_eq!(s.file_hash, blake(&cdrs));
    assert_eq!((s.records as usize, s.duplicates), (rows, 0));
    assert_eq!(s.charged, per_user.iter().sum::<Decimal>());
    drop(rater);

    // Changed after the hash ahead: 10 calls appended (a PBX appending to its file).
    let grown = cdrs.with_file_name("grown.csv");
    let (first, _) = cdr_text(5000..5010);
    std::fs::write(&grown, &first).unwrap();
    let ahead = identify_ahead(&cat, &ledger, &grown, CdrFormat::Generic).unwrap();
    let (more, more_cost) = cdr_text(5010..5020);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&grown)
        .unwrap();
    std::io::Write::write_all(&mut f, more.split_once('\n').unwrap().1.as_bytes()).unwrap();
    drop(f);
    let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
    rater.use_identity(ahead);
    let s = rater
        .rate_file(&grown, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert_eq!(s.file_hash, blake(&grown), "the hash of what was rated");
    assert_eq!((s.records, s.duplicates), (20, 0));
    let (_, first_cost) = cdr_text(5000..5010);
    assert_eq!(
        s.charged,
        first_cost.iter().chain(&more_cost).sum::<Decimal>()
    );
    // The same content again: known by that hash, nothing charged.
    let again = rater
        .rate_file(&grown, CdrFormat::Generic, &NoProgress)
        .unwrap();
    assert!(again.already_rated);
}
