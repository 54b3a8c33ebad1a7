//! The WAL checkpointer of `serve` and `ratel rate`: a thread with a connection of its own
//! copies committed WAL frames into the database file, so the core's commits (and a CDR
//! block's) never do.
//!
//! With SQLite's automatic checkpoint the commit that pushed the WAL past 1000 pages copied
//! them into the database and fsynced it before returning: every acknowledgement of that
//! batch (and of the packets queued behind it) waited for it. Here the core's connection has
//! `wal_autocheckpoint = 0` ([`super::Ledger::set_wal_autocheckpoint`]) and this thread runs a
//! PASSIVE checkpoint every [`PERIOD`] (it never blocks a writer). A passive checkpoint cannot
//! rewind the WAL while commits keep appending to it, so once the WAL holds more than
//! [`RESTART_FRAMES`] it runs a RESTART checkpoint: that one takes the writer lock, but only
//! for the frames the last passive pass left (a few ms), and the next commit writes the WAL
//! from its start again, overwriting blocks of the file instead of growing it.
//!
//! While commits keep appending, a passive pass never reaches the end of the WAL, and SQLite
//! fsyncs the database file only in a checkpoint that does: so every page the passive passes
//! copied stayed dirty in the OS page cache until the RESTART's fsync, which wrote a second
//! of them (10-35 ms here) while holding the writer lock, and the core's next commit waited
//! (p99.9 of the acks 57 ms at 64 in flight). After each passive pass this thread starts the
//! write-back of the database file itself (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
//! neither waits for it nor flushes the disk cache), so the RESTART's fsync finds little left.
//!
//! Checkpoints do not make anything durable: a commit is durable when its own WAL fsync
//! returns (`synchronous=FULL`); a checkpoint only moves committed pages.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::LedgerError;

/// How often the checkpointer looks at the WAL.
pub const PERIOD: Duration = Duration::from_millis(50);
/// WAL size (frames, 4 KiB pages) past which the WAL is rewound (RESTART).
pub const RESTART_FRAMES: i64 = 16_384;

/// The running checkpointer; stopped and joined when dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            // Wakes it from its wait now rather than at the end of the period (`ratel rate`
            // drops it as it exits).
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// Starts the checkpointer of the ledger in `data_dir` (which [`super::Ledger::open`] opened
/// and recovered).
pub fn spawn(data_dir: &Path) -> Result<Checkpointer, LedgerError> {
    let path = data_dir.join("ledger.sqlite");
    let sq = |source| LedgerError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(&path).map_err(sq)?;
    // Only for starting the write-back of pages the checkpoints copied.
    let db = std::fs::File::open(&path).map_err(|source| LedgerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sq)?;
    // A RESTART waits this long for readers and the writer, then is tried again later.
    conn.busy_timeout(Duration::from_millis(100)).map_err(sq)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("ledger-checkpoint".into())
        .spawn(move || run(conn, &db, &flag))
        .map_err(|source| LedgerError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Checkpointer {
        stop,
        handle: Some(handle),
    })
}

fn run(conn: Connection, db: &std::fs::File, stop: &AtomicBool) {
    let checkpoint = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    };
    let mut failing = false;
    loop {
        // Unparked early by the drop (a spurious wake only checkpoints sooner).
        std::thread::park_timeout(PERIOD);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let result = checkpoint("PASSIVE").and_then(|(busy, log, done)| {
            if done > 0 {
                start_writeback(db);
            }
            if busy == 0 && log >= RESTART_FRAMES && done >= log - 256 {
                checkpoint("RESTART").map(|_| ())
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => failing = false,
            // Busy (a reader or the writer held on past the timeout): next period.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "WAL checkpoint failed; will retry");
                }
                failing = true;
            }
        }
    }
}

/// Starts writing the database file's dirty pages to disk without waiting for them (the
/// durability of a checkpoint is still SQLite's own fsync; this only makes it short).
#[cfg(target_os = "linux")]
fn start_writeback(db: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor this thread owns; no memory is passed.
    let rc = unsafe { libc::sync_file_range(db.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range on the ledger failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_db: &std::fs::File) {}
