//! Compaction of a closed day's xDR files (compact.rs): rows kept exactly (same ids, same
//! money), written in (username, xdr_id) order in one file; the replaced files stay for
//! their grace period, then go; a crash at either side of the ledger commit is repaired by
//! `Ledger::open`; files written before newer columns existed merge with those columns
//! null/0.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Decimal128Array, Int64Array, StringArray, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ratel_engine::batch::{BatchRater, NoProgress};
use ratel_engine::catalog::{Catalog, CdrFormat};
use ratel_engine::compact::{self, GRACE_SECS};
use ratel_engine::ledger::{DataDirLock, Ledger};
use rust_decimal::Decimal;

mod common;
use common::{add_users, catalog};

/// (xdr_id, username, credit_used, package_seconds) of every row of one file, in file order.
fn rows_of(f: &Path) -> Vec<(u64, String, Decimal, i64)> {
    let mut out = Vec::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
        .unwrap()
        .build()
        .unwrap()
    {
        let b = b.unwrap();
        let c = |n: &str| b.column_by_name(n).unwrap().clone();
        let (id, u, cu, ps) = (
            c("xdr_id"),
            c("username"),
            c("credit_used"),
            c("package_seconds"),
        );
        let id = id.as_any().downcast_ref::<UInt64Array>().unwrap();
        let u = u.as_any().downcast_ref::<StringArray>().unwrap();
        let cu = cu.as_any().downcast_ref::<Decimal128Array>().unwrap();
        let ps = ps.as_any().downcast_ref::<Int64Array>().unwrap();
        for r in 0..b.num_rows() {
            out.push((
                id.value(r),
                u.value(r).to_string(),
                Decimal::from_i128_with_scale(cu.value(r), 10),
                ps.value(r),
            ));
        }
    }
    out
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The plan for one day (the choice among closed days is checked on its own).
fn plan_for(ledger: &Ledger, day: &str, now: i64) -> compact::Plan {
    let files = ledger
        .xdr_day_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.path.starts_with(&format!("{day}/")))
        .collect();
    let plan = compact::choose(files, now).expect("the day is a candidate");
    assert_eq!(plan.partition, day);
    plan
}

/// 2026-10-05 00:00 UTC: both days `rate_many_small_files` writes are closed.
fn both_days_closed() -> i64 {
    chrono::DateTime::parse_from_rfc3339("2026-10-05T00:00:00Z")
        .unwrap()
        .timestamp()
}

/// 2,000 calls by 9 users over two UTC days, rated in small blocks: many files per day.
fn rate_many_small_files(dir: &Path) -> (PathBuf, Catalog) {
    let data = dir.join("data");
    let cat = catalog(&data);
    let mut s = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    for i in 0..2000usize {
        let day = 1 + i % 2;
        s.push_str(&format!(
            "c{i},555,15551234567,2026-10-0{day}T{:02}:{:02}:00Z,{},ANSWERED,u{}\n",
            (i / 60) % 24,
            i % 60,
            1 + (i * 37) % 180,
            (i * 5) % 9
        ));
    }
    let cdrs = dir.join("cdrs.csv");
    std::fs::write(&cdrs, s).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 9);
    let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
    rater.block_bytes = 8 << 10;
    rater
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    (data, cat)
}

#[test]
fn a_closed_day_is_merged_in_order_and_the_old_files_go_after_their_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _cat) = rate_many_small_files(dir.path());
    let _lock = DataDirLock::acquire(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    let day = data.join("xdr").join("date=2026-10-01");
    let before_files = files_in(&day);
    assert!(before_files.len() >= compact::MIN_FILES, "{before_files:?}");
    let mut before: Vec<_> = before_files.iter().flat_map(|f| rows_of(f)).collect();
    let now = both_days_closed();
    // Not closed yet an hour before its end + CLOSED_AFTER: nothing to do.
    let early = chrono::DateTime::parse_from_rfc3339("2026-10-02T00:30:00Z")
        .unwrap()
        .timestamp();
    assert!(compact::choose(ledger.xdr_day_files().unwrap(), early).is_none());
    let plan = plan_for(&ledger, "date=2026-10-01", now);
    let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
    ledger
        .commit_compaction(&plan.files, &merged, now + GRACE_SECS)
        .unwrap();
    // One new file with every row, in (username, xdr_id) order; the old files still there.
    let new_file = merged.final_path.clone();
    let after = rows_of(&new_file);
    let mut sorted = before.clone();
    sorted.sort_by(|a, b| (a.1.as_str(), a.0).cmp(&(b.1.as_str(), b.0)));
    assert_eq!(after.len(), sorted.len());
    assert!(
        after == sorted,
        "rows kept exactly, in (username, xdr_id) order"
    );
    before.sort();
    let mut again = after.clone();
    again.sort();
    assert!(again == before);
    let listed: Vec<String> = ledger
        .xdr_day_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.path.starts_with("date=2026-10-01/"))
        .map(|f| f.path)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    // The tree holds the new file only (a glob never sees the day twice); a reader that
    // listed an old file before the swap still opens it, from the trash.
    assert_eq!(files_in(&day), vec![new_file.clone()]);
    for f in &before_files {
        assert!(ratel_engine::xdr::open_listed(f).is_ok(), "{f:?}");
    }
    // The other day is still many files (it is compacted in a later step).
    assert!(files_in(&data.join("xdr").join("date=2026-10-02")).len() >= compact::MIN_FILES);
    // Grace: nothing deleted a second early, everything at its end.
    assert_eq!(ledger.empty_xdr_trash(now + GRACE_SECS - 1).unwrap(), 0);
    assert_eq!(
        ledger.empty_xdr_trash(now + GRACE_SECS).unwrap(),
        before_files.len()
    );
    assert_eq!(files_in(&day), vec![new_file]);
    assert!(ratel_engine::xdr::open_listed(&before_files[0]).is_err());
    // The compacted day is no longer a candidate; the other one is.
    let next = compact::choose(ledger.xdr_day_files().unwrap(), now).unwrap();
    assert_eq!(next.partition, "date=2026-10-02");
}

/// A crash after the merge but before the commit leaves a temp file that the next open
/// removes (the old files stay the day's); a crash after the commit but before the rename
/// leaves one that the next open renames.
#[test]
fn a_crash_on_either_side_of_the_commit_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _cat) = rate_many_small_files(dir.path());
    let now = both_days_closed();
    let day = data.join("xdr").join("date=2026-10-01");
    let n_before = files_in(&day).len();
    {
        let _lock = DataDirLock::acquire(&data).unwrap();
        let ledger = Ledger::open(&data).unwrap();
        let plan = plan_for(&ledger, "date=2026-10-01", now);
        let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
        assert!(ratel_engine::xdr::temp_path(&merged.final_path).exists());
        // Crash: no commit.
    }
    {
        let _lock = DataDirLock::acquire(&data).unwrap();
        let ledger = Ledger::open(&data).unwrap();
        assert_eq!(
            files_in(&day).len(),
            n_before,
            "the uncommitted merge removed"
        );
        assert!(files_in(&day).iter().all(|f| !f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with('.')));
        let _ = ledger;
    }
    // Commit, then "crash" before the rename: put the file back under its temp name.
    let final_path = {
        let _lock = DataDirLock::acquire(&data).unwrap();
        let mut ledger = Ledger::open(&data).unwrap();
        let plan = plan_for(&ledger, "date=2026-10-01", now);
        let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
        ledger
            .commit_compaction(&plan.files, &merged, now + GRACE_SECS)
            .unwrap();
        std::fs::rename(
            &merged.final_path,
            ratel_engine::xdr::temp_path(&merged.final_path),
        )
        .unwrap();
        // ... and the old files back in the tree, as before the move to the trash.
        for f in &plan.files {
            let p = ledger.xdr_root().join(&f.path);
            std::fs::rename(ratel_engine::xdr::trash_path(&p).unwrap(), &p).unwrap();
        }
        assert_eq!(
            files_in(&day).len(),
            n_before + 1,
            "the old files and the temp one"
        );
        merged.final_path
    };
    let _lock = DataDirLock::acquire(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    assert!(final_path.exists(), "renamed at open");
    assert_eq!(
        files_in(&day),
        vec![final_path.clone()],
        "the old files moved at open"
    );
    assert_eq!(ledger.empty_xdr_trash(now + GRACE_SECS).unwrap(), n_before);
    assert_eq!(files_in(&day), vec![final_path]);
}

/// The move of the replaced files to the trash failed after the commit (they are still in
/// the tree, beside the merged file): the next `empty_xdr_trash` moves them, so a glob over
/// the tree does not count the day twice — not until a restart, and not forever once their
/// trash rows are forgotten after the grace.
#[test]
fn replaced_files_a_failed_move_left_in_the_tree_are_moved_by_the_next_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _cat) = rate_many_small_files(dir.path());
    let now = both_days_closed();
    let day = data.join("xdr").join("date=2026-10-01");
    let _lock = DataDirLock::acquire(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    let plan = plan_for(&ledger, "date=2026-10-01", now);
    let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
    ledger
        .commit_compaction(&plan.files, &merged, now + GRACE_SECS)
        .unwrap();
    // As if the move had failed: the old files back in the tree.
    for f in &plan.files {
        let p = ledger.xdr_root().join(&f.path);
        std::fs::rename(ratel_engine::xdr::trash_path(&p).unwrap(), &p).unwrap();
    }
    assert_eq!(files_in(&day).len(), plan.files.len() + 1);
    // A sweep within the grace deletes nothing but moves them out of the tree.
    assert_eq!(ledger.empty_xdr_trash(now + 1).unwrap(), 0);
    assert_eq!(files_in(&day), vec![merged.final_path.clone()]);
    for f in &plan.files {
        assert!(ratel_engine::xdr::open_listed(&ledger.xdr_root().join(&f.path)).is_ok());
    }
    assert_eq!(
        ledger.empty_xdr_trash(now + GRACE_SECS).unwrap(),
        plan.files.len()
    );
    assert_eq!(files_in(&day), vec![merged.final_path]);
}

/// A file that reads fewer rows than the ledger recorded for it is not merged: the swap
/// would drop the missing rows with the file.
#[test]
fn a_file_that_reads_short_is_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _cat) = rate_many_small_files(dir.path());
    let now = both_days_closed();
    let _lock = DataDirLock::acquire(&data).unwrap();
    let ledger = Ledger::open(&data).unwrap();
    let mut plan = plan_for(&ledger, "date=2026-10-01", now);
    plan.files[0].rows += 1;
    let e = compact::merge(ledger.xdr_root(), &plan).unwrap_err();
    assert!(e.to_string().contains("rows"), "{e}");
    // Nothing left behind in the tree.
    let day = data.join("xdr").join("date=2026-10-01");
    assert!(files_in(&day).iter().all(|f| !f
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with('.')));
}

/// A day whose merge failed is passed over while its files are unchanged (not merged again
/// every minute, keeping the other days waiting), and chosen again once they change.
#[test]
fn a_failed_day_is_passed_over_until_its_files_change() {
    let f = |path: &str| compact::DayFile {
        path: path.into(),
        rows: 1,
        min_login: 0,
        max_logout: 0,
    };
    let day = |d: &str, n: usize| -> Vec<compact::DayFile> {
        (0..n)
            .map(|i| f(&format!("date={d}/f{i}.parquet")))
            .collect()
    };
    let now = both_days_closed();
    let mut files = day("2026-10-01", 9);
    files.extend(day("2026-10-02", 8));
    let bad = compact::choose(files.clone(), now).unwrap();
    assert_eq!(bad.partition, "date=2026-10-01");
    let next = compact::choose_except(files.clone(), now, std::slice::from_ref(&bad)).unwrap();
    assert_eq!(next.partition, "date=2026-10-02");
    files.push(f("date=2026-10-01/late.parquet"));
    let again = compact::choose_except(files, now, &[bad]).unwrap();
    assert_eq!(again.partition, "date=2026-10-01");
}

/// A day holding more than MAX_ROWS rows (a busy server: a RADIUS outbox flush a second)
/// is compacted in parts, smallest files first, and the parts again while they fit: it does
/// not stay tens of thousands of files for ever.
#[test]
fn a_day_beyond_max_rows_is_compacted_in_parts() {
    let now = both_days_closed();
    let per = compact::MAX_ROWS / 1000;
    let mut files: Vec<compact::DayFile> = (0..3000)
        .map(|i| compact::DayFile {
            path: format!("date=2026-10-01/radius-{i:06}.parquet"),
            rows: per,
            min_login: 0,
            max_logout: 0,
        })
        .collect();
    let mut rounds = 0;
    while let Some(plan) = compact::choose(files.clone(), now) {
        rounds += 1;
        assert!(plan.files.iter().map(|f| f.rows).sum::<u64>() <= compact::MAX_ROWS);
        assert!(plan.files.len() >= compact::MIN_FILES);
        let rows = plan.files.iter().map(|f| f.rows).sum();
        files.retain(|f| !plan.files.contains(f));
        files.push(compact::DayFile {
            path: format!("date=2026-10-01/compact-{rounds}.parquet"),
            rows,
            min_login: 0,
            max_logout: 0,
        });
        assert!(rounds < 100);
    }
    // 3 × MAX_ROWS rows: three full parts, none of which fits beside another.
    assert!(
        files.len() as u64 <= (3000 * per).div_ceil(compact::MAX_ROWS) + 1,
        "{} files left",
        files.len()
    );
    assert_eq!(
        files.iter().map(|f| f.rows).sum::<u64>(),
        3000 * per,
        "every row in some file"
    );
}

/// `compact_closed_days` (what `ratel bench api` runs on a month of history): a closed day
/// of two files — two CDR files rated one after the other — becomes one file with the same
/// rows; a day of one file (rated after its day closed: small pages already) and a day not
/// yet closed are left as they are; a second pass finds nothing to do.
#[test]
fn every_closed_day_of_two_files_or_more_becomes_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 3);
    // Day 1 in two files, day 2 in one, day 4 (not closed at `now`) in two.
    let header = "call_id,caller,callee,start_time,duration_s,disposition,account\n";
    let file = |name: &str, prefix: &str, days: &[u32]| {
        let mut s = String::from(header);
        for (i, d) in days.iter().enumerate() {
            s.push_str(&format!(
                "{prefix}{i},555,15551234567,2026-10-0{d}T10:{:02}:00Z,{},ANSWERED,u{}\n",
                i % 60,
                30 + i,
                i % 3
            ));
        }
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let a = file("a.csv", "a", &[1, 1, 1, 2, 2, 4]);
    let b = file("b.csv", "b", &[1, 1, 4]);
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        for f in [&a, &b] {
            rater.rate_file(f, CdrFormat::Generic, &NoProgress).unwrap();
        }
    }
    let day = |d: u32| data.join("xdr").join(format!("date=2026-10-0{d}"));
    assert_eq!(files_in(&day(1)).len(), 2);
    assert_eq!(files_in(&day(2)).len(), 1);
    assert_eq!(files_in(&day(4)).len(), 2);
    let mut before: Vec<_> = files_in(&day(1)).iter().flat_map(|f| rows_of(f)).collect();
    let day2 = files_in(&day(2));
    // 2026-10-04 ends at 10-05 00:00; closed an hour later.
    let now = chrono::DateTime::parse_from_rfc3339("2026-10-05T00:30:00Z")
        .unwrap()
        .timestamp();
    assert_eq!(compact::compact_closed_days(&mut ledger, now).unwrap(), 1);
    ledger.empty_xdr_trash(now + GRACE_SECS).unwrap();
    let merged = files_in(&day(1));
    assert_eq!(merged.len(), 1, "{merged:?}");
    let mut after = rows_of(&merged[0]);
    assert_eq!(after.len(), 5);
    assert!(
        after
            .windows(2)
            .all(|w| (w[0].1.as_str(), w[0].0) < (w[1].1.as_str(), w[1].0)),
        "(username, xdr_id) order: {after:?}"
    );
    before.sort();
    after.sort();
    assert_eq!(after, before);
    assert_eq!(files_in(&day(2)), day2);
    assert_eq!(files_in(&day(4)).len(), 2);
    assert_eq!(compact::compact_closed_days(&mut ledger, now).unwrap(), 0);
}

/// Rows per data page of the `username` column, page by page, read from the offset index
/// by the parquet crate's reader.
fn username_page_rows(f: &Path) -> Vec<usize> {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use parquet::file::metadata::PageIndexPolicy;
    let meta = ArrowReaderMetadata::load(
        &std::fs::File::open(f).unwrap(),
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
    )
    .unwrap();
    let meta = meta.metadata();
    let col =
        ratel_engine::xdr::leaf_column(meta.file_metadata().schema_descr(), "username").unwrap();
    let mut out = Vec::new();
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let pi = meta.page_index().unwrap();
        let locs = pi.offset_index(g, col).unwrap().page_locations();
        for (i, l) in locs.iter().enumerate() {
            let end = locs.get(i + 1).map_or(rg.num_rows(), |n| n.first_row_index);
            out.push((end - l.first_row_index) as usize);
        }
    }
    out
}

/// A CDR block's file for a day still open has wide pages (fewer pages to encode while
/// rating); once the day is closed, compaction rewrites it, alone on its day, into the
/// small pages one-user reads want, with the same rows, and then leaves it. A file of a
/// day already closed when it was rated gets small pages at once and is left alone.
#[test]
fn a_cdr_block_file_has_wide_pages_until_its_day_is_compacted() {
    use ratel_engine::xdr::{PAGE_ROWS, WIDE_PAGE_ROWS};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 7);
    // Today (UTC), still open; and a day closed long ago, in another file.
    let today = chrono::Utc::now().date_naive();
    let rows = WIDE_PAGE_ROWS + 904;
    let calls = |prefix: &str, date: chrono::NaiveDate, n: usize| {
        let mut s =
            String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
        for i in 0..n {
            s.push_str(&format!(
                "{prefix}{i},555,15551234567,{date}T{:02}:{:02}:{:02}Z,{},ANSWERED,u{}\n",
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60,
                1 + i % 200,
                i % 7
            ));
        }
        s
    };
    let old_day = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    let old = dir.path().join("old.csv");
    std::fs::write(&old, calls("o", old_day, rows)).unwrap();
    BatchRater::new(&cat, &mut ledger)
        .unwrap()
        .rate_file(&old, CdrFormat::Generic, &NoProgress)
        .unwrap();
    let old_dir = data.join("xdr").join("date=2026-10-01");
    let old_files = files_in(&old_dir);
    assert_eq!(old_files.len(), 1, "{old_files:?}");
    let name = old_files[0].file_name().unwrap().to_str().unwrap();
    assert!(!ratel_engine::xdr::has_wide_pages(name), "{name}");
    assert_eq!(
        username_page_rows(&old_files[0]),
        vec![1024, 1024, 1024, 1024, 904]
    );
    std::fs::write(dir.path().join("cdrs.csv"), calls("w", today, rows)).unwrap();
    let cdrs = dir.path().join("cdrs.csv");
    BatchRater::new(&cat, &mut ledger)
        .unwrap()
        .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
        .unwrap();
    let day = data.join("xdr").join(format!("date={today}"));
    let written = files_in(&day);
    assert_eq!(written.len(), 1, "{written:?}");
    let name = written[0].file_name().unwrap().to_str().unwrap();
    assert!(ratel_engine::xdr::has_wide_pages(name), "{name}");
    assert_eq!(username_page_rows(&written[0]), vec![WIDE_PAGE_ROWS, 904]);
    let before = rows_of(&written[0]);
    assert_eq!(before.len(), rows);

    // Not before the day is closed (an hour after its end); then only that day.
    let end = (today + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let now = end + compact::CLOSED_AFTER_SECS;
    assert_eq!(
        compact::compact_closed_days(&mut ledger, now - 1).unwrap(),
        0
    );
    assert_eq!(compact::compact_closed_days(&mut ledger, now).unwrap(), 1);
    ledger.empty_xdr_trash(now + GRACE_SECS).unwrap();
    let merged = files_in(&day);
    assert_eq!(merged.len(), 1, "{merged:?}");
    let name = merged[0].file_name().unwrap().to_str().unwrap();
    assert!(!ratel_engine::xdr::has_wide_pages(name), "{name}");
    let pages = username_page_rows(&merged[0]);
    assert_eq!(pages.iter().sum::<usize>(), rows);
    assert!(pages.iter().all(|&p| p <= PAGE_ROWS), "{pages:?}");
    assert_eq!(pages.len(), rows.div_ceil(PAGE_ROWS), "{pages:?}");
    assert_eq!(
        rows_of(&merged[0]),
        before,
        "the same rows, in the same order"
    );
    // Small pages already: nothing more to do for that day; the old day's lone file is
    // where it was.
    assert_eq!(compact::compact_closed_days(&mut ledger, now).unwrap(), 0);
    assert_eq!(files_in(&old_dir), old_files);
}

/// The choice among closed days: a lone file is rewritten only when it has wide pages
/// (RADIUS outbox files, a closed day's CDR files and compacted files are left alone).
#[test]
fn a_lone_file_is_compacted_only_when_it_has_wide_pages() {
    let day_file = |path: &str| compact::DayFile {
        path: path.to_string(),
        rows: 10,
        min_login: 0,
        max_logout: 0,
    };
    let now = both_days_closed();
    for lone in [
        "date=2026-10-01/radius-00000000000000000001-0000.parquet",
        "date=2026-10-01/cdr-00000000000000000001-0000.parquet",
        "date=2026-10-01/compact-00000000000000000001-00000000000000000009-10.parquet",
    ] {
        assert_eq!(compact::choose(vec![day_file(lone)], now), None, "{lone}");
    }
    let wide = "date=2026-10-01/cdr-00000000000000000001-0000-wide.parquet";
    let plan = compact::choose(vec![day_file(wide)], now).expect("a wide file is rewritten");
    assert_eq!(plan.files, vec![day_file(wide)]);
    // Not before its day is closed: 2026-10-02 00:00 UTC + an hour.
    let closes = chrono::DateTime::parse_from_rfc3339("2026-10-02T01:00:00Z")
        .unwrap()
        .timestamp();
    assert_eq!(compact::choose(vec![day_file(wide)], closes - 1), None);
    assert!(compact::choose(vec![day_file(wide)], closes).is_some());
    // The rule the rater names its files by is the same one.
    let day = ratel_engine::xdr::day_of(closes - 3600 - 1);
    assert!(!compact::is_closed(day, closes - 1));
    assert!(compact::is_closed(day, closes));
}

/// A graceful stop while a merge runs (`Compactor::finish` right after the tick that
/// started it): the merge either gave up before writing or finished and was committed —
/// the day's directory holds only the files the ledger lists, every row once, and no temp
/// file (before, the merge was abandoned and its temp file stayed in the tree until the
/// next open).
#[test]
fn a_graceful_stop_leaves_no_merge_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _cat) = rate_many_small_files(dir.path());
    let now = both_days_closed();
    let _lock = DataDirLock::acquire(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    let mut before: Vec<_> = ["date=2026-10-01", "date=2026-10-02"]
        .iter()
        .flat_map(|d| files_in(&data.join("xdr").join(d)))
        .flat_map(|f| rows_of(&f))
        .collect();
    // Told to stop before it starts: it gives up, nothing written.
    let plan = plan_for(&ledger, "date=2026-10-01", now);
    let stop = std::sync::atomic::AtomicBool::new(true);
    let e = compact::merge_unless(ledger.xdr_root(), &plan, &stop).unwrap_err();
    assert!(matches!(e, compact::CompactError::Cancelled), "{e}");
    let mut c = compact::Compactor::default();
    c.tick(&mut ledger, now);
    c.finish(&mut ledger, now);
    let listed: HashSet<PathBuf> = ledger
        .xdr_day_files()
        .unwrap()
        .into_iter()
        .map(|f| ledger.xdr_root().join(f.path))
        .collect();
    let mut after = Vec::new();
    for d in ["date=2026-10-01", "date=2026-10-02"] {
        for f in files_in(&data.join("xdr").join(d)) {
            assert!(
                listed.contains(&f),
                "{f:?} in the tree but not in the ledger"
            );
            after.extend(rows_of(&f));
        }
    }
    before.sort();
    after.sort();
    assert_eq!(after, before);
}

/// The streaming merge (compact.rs): a day's CDR files hold subscribers and accounts that
/// are not subscribers, interleaved by name ("a…" before the users, "u4x" between them,
/// "zz…" after), thousands of rows each. Each file is written in (username, xdr_id) order
/// — names compared as the merge compares them — and the merge keeps every row, in that
/// order, also with batches small enough that every input is read in many and the output
/// written in many (the boundaries a day of millions of rows crosses). A file out of that
/// order (as an older version wrote unknown accounts: last) is found, and the day merged in
/// memory instead, to the same result.
#[test]
fn the_streaming_merge_keeps_every_row_in_order_and_an_unsorted_file_is_merged_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cat = catalog(&data);
    let mut ledger = Ledger::open(&data).unwrap();
    add_users(&mut ledger, 9);
    let accounts = [
        "u0",
        "u1",
        "a_unknown",
        "u4",
        "u4x",
        "u7",
        "zz_unknown",
        "u8",
    ];
    let mut s = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    for i in 0..9000usize {
        s.push_str(&format!(
            "c{i},555,15551234567,2026-10-01T{:02}:{:02}:{:02}Z,{},ANSWERED,{}\n",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            1 + (i * 37) % 180,
            accounts[(i * 5) % accounts.len()]
        ));
    }
    let cdrs = dir.path().join("cdrs.csv");
    std::fs::write(&cdrs, s).unwrap();
    {
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        rater.block_bytes = 200 << 10;
        rater
            .rate_file(&cdrs, CdrFormat::Generic, &NoProgress)
            .unwrap();
    }
    let day = data.join("xdr").join("date=2026-10-01");
    let files = files_in(&day);
    assert!(files.len() >= 3, "{files:?}");
    let in_order = |rows: &[(u64, String, Decimal, i64)]| {
        rows.windows(2)
            .all(|w| (w[0].1.as_str(), w[0].0) < (w[1].1.as_str(), w[1].0))
    };
    let mut before = Vec::new();
    for f in &files {
        let rows = rows_of(f);
        assert!(rows.len() > 1024, "{f:?}: {} rows", rows.len());
        assert!(in_order(&rows), "{f:?} in (username, xdr_id) order");
        before.extend(rows);
    }
    assert_eq!(before.len(), 9000);
    let mut expected = before.clone();
    expected.sort_by(|a, b| (a.1.as_str(), a.0).cmp(&(b.1.as_str(), b.0)));
    let now = both_days_closed();
    let plan = plan_for(&ledger, "date=2026-10-01", now);
    assert_eq!(plan.files.len(), files.len());
    let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
    assert_eq!(merged.rows, 9000);
    let tmp = ratel_engine::xdr::temp_path(&merged.final_path);
    assert!(rows_of(&tmp) == expected, "every row once, in order");
    // Only the merged file's temp beside the inputs (the streaming name was renamed).
    let mut left = files.clone();
    left.push(tmp.clone());
    left.sort();
    assert_eq!(files_in(&day), left);
    std::fs::remove_file(&tmp).unwrap();
    for (batch_rows, out_rows) in [(1, 50), (97, 1000), (1024, 333)] {
        let m = compact::merge_streaming_in(ledger.xdr_root(), &plan, batch_rows, out_rows)
            .unwrap()
            .expect("every file is in order");
        let tmp = ratel_engine::xdr::temp_path(&m.final_path);
        assert!(
            rows_of(&tmp) == expected,
            "every row once, in order, in batches of {batch_rows} / {out_rows}"
        );
        std::fs::remove_file(&tmp).unwrap();
    }

    // One input rewritten in reverse (same rows, same path): not a sorted run.
    let victim = &files[1];
    let batches: Vec<_> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(victim).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    let rev = UInt64Array::from_iter_values((0..all.num_rows() as u64).rev());
    let reversed = arrow_select::take::take_record_batch(&all, &rev).unwrap();
    let t = ratel_engine::xdr::write_temp(victim, &reversed).unwrap();
    std::fs::rename(t, victim).unwrap();
    assert!(!in_order(&rows_of(victim)));
    assert!(
        compact::merge_streaming_in(ledger.xdr_root(), &plan, 97, 1000)
            .unwrap()
            .is_none(),
        "a file out of order is found"
    );
    assert_eq!(files_in(&day), files, "the streaming attempt removed");
    let merged = compact::merge(ledger.xdr_root(), &plan).unwrap();
    let tmp = ratel_engine::xdr::temp_path(&merged.final_path);
    assert!(
        rows_of(&tmp) == expected,
        "the in-memory merge: the same rows, in order"
    );
    let mut left = files.clone();
    left.push(tmp);
    left.sort();
    assert_eq!(
        files_in(&day),
        left,
        "nothing of the streaming attempt left"
    );
}
