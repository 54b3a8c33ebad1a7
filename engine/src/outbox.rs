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

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

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
        match self.ready.try_recv() {
            Ok(p) => Some(p),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
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
