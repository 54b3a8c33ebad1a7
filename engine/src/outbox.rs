//! The xDR outbox flusher of `serve`: RADIUS xDRs wait in the ledger's outbox (committed
//! with the batch that made them) until they are written to Parquet. Writing a file is the
//! slow part (decode the rows, sort, build Arrow arrays, encode, fsync: 70 ms for 5k rows,
//! 250 ms for 15k); done on the core thread it stopped the RADIUS socket for that long
//! every other second and made the p99 of acknowledgements. Here a thread with its own
//! ledger connection reads the outbox, writes the files under their temp names, and hands
//! them to the core, which only commits them (the exactly-once handshake of every xDR file:
//! one short transaction records the files and deletes exactly those outbox rows, then the
//! files are renamed). The thread waits for the core's answer before it reads again, so it
//! never writes a row twice; an uncommitted temp file is deleted by the next open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::batch::BatchError;
use crate::ledger::{LedgerError, PendingFile};
use crate::xdr::{self, OwnedXdr, XdrBuilder};

/// Outbox rows per flush at most.
pub const FLUSH_ROWS: usize = 50_000;
/// How often the flusher looks at the outbox (sooner again after a full flush).
pub const PERIOD: Duration = Duration::from_secs(1);

/// Files written from the outbox, durable under their temp names, not yet committed.
#[derive(Debug)]
pub struct Prepared {
    pub files: Vec<PendingFile>,
    pub first: u64,
    pub last: u64,
    pub rows: usize,
}

impl Prepared {
    /// Deletes the temp files (their commit failed or never happened).
    pub fn discard(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(xdr::temp_path(&f.final_path));
        }
    }
}

/// Writes `rows` (outbox order) as one file per UTC day of logout, each in (username,
/// xdr_id) order as the CDR writer does, under temp names. `None` for no rows.
pub fn write_files(xdr_root: &Path, rows: &[OwnedXdr]) -> Result<Option<Prepared>, BatchError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(None);
    };
    let (first, last) = (first.xdr_id, last.xdr_id);
    let mut sorted: Vec<&OwnedXdr> = rows.iter().collect();
    sorted.sort_unstable_by(|a, b| a.username.cmp(&b.username).then(a.xdr_id.cmp(&b.xdr_id)));
    // Rows per day first, so each day's builder reserves what it holds.
    let mut per_day: Vec<(i64, usize)> = Vec::new();
    for x in &sorted {
        let day = xdr::day_of(x.logout_time);
        match per_day.iter_mut().find(|d| d.0 == day) {
            Some(d) => d.1 += 1,
            None => per_day.push((day, 1)),
        }
    }
    let mut by_day: Vec<(i64, XdrBuilder, i64, i64)> = per_day
        .iter()
        .map(|&(day, n)| (day, XdrBuilder::with_capacity(n), i64::MAX, i64::MIN))
        .collect();
    for x in sorted {
        let day = xdr::day_of(x.logout_time);
        let Some(b) = by_day.iter_mut().find(|b| b.0 == day) else {
            unreachable!("every day was counted above");
        };
        x.push_to(&mut b.1);
        b.2 = b.2.min(x.login_time);
        b.3 = b.3.max(x.logout_time);
    }
    let mut prepared = Prepared {
        files: Vec::with_capacity(by_day.len()),
        first,
        last,
        rows: rows.len(),
    };
    for (k, (day, b, lo, hi)) in by_day.into_iter().enumerate() {
        let path = xdr::partition_dir(xdr_root, day * 86_400)
            .join(format!("radius-{first:020}-{k:04}.parquet"));
        let written = b.finish().map_err(BatchError::from).and_then(|batch| {
            xdr::write_temp(&path, &batch).map_err(BatchError::from)?;
            Ok(batch.num_rows() as u64)
        });
        match written {
            Ok(n) => prepared.files.push(PendingFile {
                final_path: path,
                rows: n,
                min_login: lo,
                max_logout: hi,
            }),
            Err(e) => {
                prepared.discard();
                let _ = std::fs::remove_file(xdr::temp_path(&path));
                return Err(e);
            }
        }
    }
    Ok(Some(prepared))
}

/// The running flusher thread, as the core sees it.
pub struct Flusher {
    ready: Receiver<Prepared>,
    answer: Sender<bool>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the flusher of the ledger in `data_dir` (opened and recovered already).
    pub fn spawn(data_dir: &Path, xdr_root: PathBuf) -> Result<Flusher, LedgerError> {
        let path = data_dir.join("ledger.sqlite");
        let sq = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        crate::ledger::stable_plans(&conn).map_err(sq)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(sq)?;
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let (answer, answer_rx) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("xdr-outbox".into())
            .spawn(move || run(conn, &path, &xdr_root, &flag, ready_tx, answer_rx))
            .map_err(|source| LedgerError::Io {
                path: data_dir.display().to_string(),
                source,
            })?;
        Ok(Flusher {
            ready,
            answer,
            stop,
            handle: Some(handle),
        })
    }

    /// Files the thread has written and waits to have committed, if any (never blocks).
    pub fn take(&self) -> Option<Prepared> {
        self.ready.try_recv().ok()
    }

    /// The thread has ended (it panicked: it only ends on its own when told to stop).
    pub fn stopped(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Tells the thread how the commit of what [`Flusher::take`] gave went.
    pub fn answer(&self, committed: bool) {
        let _ = self.answer.send(committed);
    }

    /// Stops the thread; what it hands over meanwhile goes to `commit` (which answers
    /// nothing itself: this does). The caller then flushes the rest on its own thread.
    pub fn stop(mut self, mut commit: impl FnMut(Prepared) -> bool) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(h) = self.handle.take() else {
            return;
        };
        loop {
            match self.ready.recv_timeout(Duration::from_millis(20)) {
                Ok(p) => {
                    let ok = commit(p);
                    let _ = self.answer.send(ok);
                }
                Err(RecvTimeoutError::Timeout) if !h.is_finished() => {}
                Err(_) => break,
            }
        }
        let _ = h.join();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Its pending hand-over (if any) is dropped with the channel; the thread sees the
        // answer channel closed and stops. Its temp files go at the next open.
        if let Some(h) = self.handle.take() {
            let (tx, _) = crossbeam_channel::bounded(0);
            self.answer = tx;
            let _ = h.join();
        }
    }
}

fn run(
    conn: rusqlite::Connection,
    path: &Path,
    xdr_root: &Path,
    stop: &AtomicBool,
    ready: Sender<Prepared>,
    answer: Receiver<bool>,
) {
    let mut failing = false;
    let mut wait = PERIOD;
    'outer: while !stop.load(Ordering::Relaxed) {
        // Sleep in short steps so a stop is seen at once.
        let mut slept = Duration::ZERO;
        while slept < wait {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let step = Duration::from_millis(20).min(wait - slept);
            std::thread::sleep(step);
            slept += step;
        }
        wait = PERIOD;
        let prepared = crate::ledger::read_outbox(&conn, path, FLUSH_ROWS)
            .map_err(BatchError::from)
            .and_then(|rows| write_files(xdr_root, &rows));
        let p = match prepared {
            Ok(Some(p)) => {
                failing = false;
                p
            }
            Ok(None) => continue,
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "xDR outbox flush failed; will retry");
                }
                failing = true;
                continue;
            }
        };
        let full = p.rows == FLUSH_ROWS;
        if let Err(back) = ready.send(p) {
            back.into_inner().discard();
            break;
        }
        // Wait for the core's commit before reading the outbox again.
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(true) => {
                    if full {
                        wait = Duration::ZERO;
                    }
                    break;
                }
                // Not committed: the core deleted the temp files; read again next period.
                Ok(false) => break,
                // The core answers after its current batch (or, stopping, in `stop`).
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break 'outer,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, RadiusCommit};
    use std::time::Instant;

    fn xdr(id: u64, user: &str, logout: i64) -> (u64, String) {
        let x = OwnedXdr {
            xdr_id: id,
            service_type: "Internet".into(),
            status: "OK".into(),
            username: user.into(),
            login_time: logout - 60,
            logout_time: logout,
            duration_seconds: 60,
            ..Default::default()
        };
        (id, serde_json::to_string(&x).unwrap())
    }

    fn outbox_ids(l: &Ledger) -> Vec<u64> {
        l.outbox(1000).unwrap().iter().map(|x| x.xdr_id).collect()
    }

    fn parquet_ids(path: &Path) -> Vec<u64> {
        use arrow_array::cast::AsArray;
        let f = std::fs::File::open(path).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let mut ids = Vec::new();
        for b in r {
            let b = b.unwrap();
            let col = b.column_by_name("xdr_id").unwrap();
            ids.extend(
                col.as_primitive::<arrow_array::types::UInt64Type>()
                    .values(),
            );
        }
        ids
    }

    /// The thread writes what the outbox held when it read (two days, two files, rows in
    /// (username, xdr_id) order); the core commits exactly those rows, so an xDR that
    /// arrived after the read stays in the outbox for the next flush.
    #[test]
    fn the_thread_writes_the_outbox_and_the_core_commits_exactly_those_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let day = 1_764_633_600; // 2025-12-02 00:00 UTC
        l.commit_radius(&RadiusCommit {
            xdrs: vec![
                xdr(1, "bob", day + 100),
                xdr(2, "alice", day + 200),
                xdr(3, "carol", day + 86_400 + 5),
            ],
            next_xdr: 4,
            now: day,
            ..Default::default()
        })
        .unwrap();
        let f = Flusher::spawn(dir.path(), l.xdr_root().to_path_buf()).unwrap();
        let t = Instant::now();
        let p = loop {
            if let Some(p) = f.take() {
                break p;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "nothing handed over");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!((p.first, p.last, p.rows, p.files.len()), (1, 3, 3, 2));
        // Committed by the core after the thread read: not in these files.
        l.commit_radius(&RadiusCommit {
            xdrs: vec![xdr(4, "dave", day + 300)],
            next_xdr: 5,
            now: day,
            ..Default::default()
        })
        .unwrap();
        l.commit_outbox_flush(&p.files, p.first, p.last, day)
            .unwrap();
        f.answer(true);
        assert_eq!(outbox_ids(&l), vec![4]);
        let first = &p.files[0].final_path;
        assert!(first.exists() && !xdr::temp_path(first).exists());
        assert_eq!(parquet_ids(first), vec![2, 1], "alice before bob");
        assert_eq!(parquet_ids(&p.files[1].final_path), vec![3]);
        // The stop hands over the rest (xDR 4) or leaves it to the caller; nothing twice.
        let mut handed = Vec::new();
        f.stop(|p| {
            l.commit_outbox_flush(&p.files, p.first, p.last, day)
                .unwrap();
            handed.push((p.first, p.last));
            true
        });
        let left = outbox_ids(&l);
        assert!(
            (handed == vec![(4, 4)] && left.is_empty()) || (handed.is_empty() && left == vec![4]),
            "handed {handed:?}, left {left:?}"
        );
    }

    /// A hand-over whose rows are not all in the outbox (flushed meanwhile) is refused and
    /// changes nothing.
    #[test]
    fn a_flush_of_rows_the_outbox_no_longer_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let day = 1_764_633_600;
        l.commit_radius(&RadiusCommit {
            xdrs: vec![xdr(1, "a", day + 1), xdr(2, "b", day + 2)],
            next_xdr: 3,
            now: day,
            ..Default::default()
        })
        .unwrap();
        let rows = l.outbox(10).unwrap();
        let a = write_files(l.xdr_root(), &rows).unwrap().unwrap();
        let b = write_files(l.xdr_root(), &rows[1..]).unwrap().unwrap();
        l.commit_outbox_flush(&a.files, a.first, a.last, day)
            .unwrap();
        // `b` names xDR 2, committed with `a` already.
        let err = l
            .commit_outbox_flush(&b.files, b.first, b.last, day)
            .unwrap_err();
        assert!(err.to_string().contains("not committed"), "{err}");
        b.discard();
        assert!(outbox_ids(&l).is_empty());
    }
}
