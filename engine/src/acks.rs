//! The acknowledger of `serve`: it makes RADIUS batches durable and then answers them, so
//! the core never waits for a disk flush.
//!
//! The core commits a big batch (128 packets or more, `serve.rs`) without the WAL fsync
//! ([`crate::ledger::RadiusCommit::defer_fsync`]: the transaction is atomic and in the WAL,
//! in the OS page cache), hands the batch's Accounting-Responses to this thread, and goes
//! on receiving and applying the next batch; a smaller batch fsyncs in its commit.
//! This thread takes every batch handed over so far, fsyncs the WAL file once
//! (`fdatasync`: it covers every frame written before it started, so every one of those
//! commits), and only then sends their answers. An answer therefore still means the
//! packet's effects are on disk, as before; what changed is that the flush of batch N runs
//! while the core applies batch N+1, and one flush covers every batch committed while the
//! previous one ran (group commit across batches). At 512 requests in flight that is
//! 1.13–1.33x the acks/s of an fsync in every commit (ARCHITECTURE.md).
//!
//! A power loss before the flush returns loses only commits nobody was told about (SQLite's
//! `synchronous=NORMAL` guarantee: the WAL is never corrupt, its last commits may be
//! missing); the NAS sends those packets again and they are applied again. The
//! checkpointer fsyncs the WAL before it copies frames into the database, so the database
//! file never holds a commit the WAL lost.
//!
//! A failed flush is not retried: after an `fsync` error Linux may have dropped the dirty
//! pages it could not write, so a second `fsync` can succeed without them. This thread
//! drops the answers it holds (never sent, so the NAS retransmits) and the core stops
//! `serve` with the error; the next start recovers the ledger from what is on disk.

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// Answered batches that may wait for the flush at once; the core blocks beyond that (the
/// disk sets the pace).
pub const QUEUE_BATCHES: usize = 8;

/// The answers of one committed batch: datagrams in one buffer.
#[derive(Debug, Default)]
pub struct Answers {
    bytes: Vec<u8>,
    sends: Vec<(SocketAddr, Range<usize>)>,
}

impl Answers {
    /// Adds the datagram `reply` for `to`.
    pub fn push(&mut self, reply: &[u8], to: SocketAddr) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(reply);
        self.sends.push((to, at..self.bytes.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Sends them now (the caller knows they are durable).
    pub fn send_on(&self, socket: &UdpSocket) {
        for (to, r) in &self.sends {
            let _ = socket.send_to(&self.bytes[r.clone()], to);
        }
    }
}

/// The running acknowledger. Dropping it (or [`Acknowledger::finish`]) flushes and answers
/// what it holds, then joins the thread.
pub struct Acknowledger {
    tx: Option<Sender<Answers>>,
    handle: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl Acknowledger {
    /// Starts the thread: it fsyncs `wal` (the ledger's WAL file) and answers on `socket`.
    pub fn spawn(wal: PathBuf, socket: UdpSocket) -> std::io::Result<Acknowledger> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
        let failed = Arc::new(Mutex::new(None));
        let f = failed.clone();
        let handle = std::thread::Builder::new()
            .name("radius-acks".into())
            .spawn(move || run(&wal, &socket, &rx, &f))?;
        Ok(Acknowledger {
            tx: Some(tx),
            handle: Some(handle),
            failed,
        })
    }

    /// Hands over a committed batch's answers: sent once the WAL is durable. Blocks while
    /// [`QUEUE_BATCHES`] batches wait. Returns the flush error once one happened (the
    /// answers are then dropped).
    pub fn send(&self, answers: Answers) -> Result<(), String> {
        self.check()?;
        if answers.is_empty() {
            return Ok(());
        }
        if let Some(tx) = &self.tx {
            // The thread only ends after a failed flush (recorded first) or at `finish`.
            if tx.send(answers).is_err() {
                return self.check();
            }
        }
        Ok(())
    }

    /// The error of a failed flush, if one happened.
    pub fn check(&self) -> Result<(), String> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Flushes and answers everything handed over, then stops the thread.
    pub fn finish(mut self) -> Result<(), String> {
        self.stop();
        self.check()
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Acknowledger {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(wal: &Path, socket: &UdpSocket, rx: &Receiver<Answers>, failed: &Mutex<Option<String>>) {
    let mut file: Option<(std::fs::File, u64)> = None;
    let mut group: Vec<Answers> = Vec::with_capacity(QUEUE_BATCHES);
    while let Ok(first) = rx.recv() {
        group.push(first);
        // Every batch committed before this flush starts is covered by it.
        group.extend(rx.try_iter().take(QUEUE_BATCHES));
        if let Err(e) = flush(wal, &mut file) {
            let msg = format!("fsync of {}: {e}", wal.display());
            let answers: usize = group.iter().map(Answers::len).sum();
            tracing::error!(error = %msg, answers, "the ledger's WAL could not be made durable: these packets are NOT acknowledged (the NAS will retransmit) and serve stops");
            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
            return;
        }
        for a in group.drain(..) {
            a.send_on(socket);
        }
    }
}

/// `fdatasync` of the WAL file. The file is opened once and again only if the path names
/// another file now (SQLite keeps the WAL while any connection is open; the check is one
/// `stat`).
fn flush(wal: &Path, file: &mut Option<(std::fs::File, u64)>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(wal)?.ino();
    if file.as_ref().is_none_or(|(_, i)| *i != ino) {
        let f = std::fs::File::open(wal)?;
        let i = f.metadata()?.ino();
        *file = Some((f, i));
    }
    match file {
        Some((f, _)) => f.sync_data(),
        None => unreachable!("opened above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let nas = UdpSocket::bind("127.0.0.1:0").unwrap();
        nas.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        (server, nas)
    }

    fn answers(to: SocketAddr, tags: &[u8]) -> Answers {
        let mut a = Answers::default();
        for t in tags {
            a.push(&[*t; 20], to);
        }
        a
    }

    fn received(nas: &UdpSocket) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = nas.recv(&mut buf) {
            assert_eq!(n, 20);
            got.push(buf[0]);
        }
        got
    }

    #[test]
    fn every_batch_handed_over_is_answered_in_order_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("ledger.sqlite-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let (server, nas) = pair();
        let to = nas.local_addr().unwrap();
        let acks = Acknowledger::spawn(wal, server).unwrap();
        for batch in [&[1u8, 2, 3][..], &[4], &[], &[5, 6]] {
            acks.send(answers(to, batch)).unwrap();
        }
        acks.finish().unwrap();
        assert_eq!(received(&nas), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn nothing_is_answered_when_the_wal_cannot_be_flushed_and_the_error_stays() {
        let dir = tempfile::tempdir().unwrap();
        // No WAL file: the flush fails (as an fsync error would).
        let wal = dir.path().join("ledger.sqlite-wal");
        let (server, nas) = pair();
        let to = nas.local_addr().unwrap();
        let acks = Acknowledger::spawn(wal.clone(), server).unwrap();
        acks.send(answers(to, &[1, 2])).unwrap();
        assert!(
            received(&nas).is_empty(),
            "an answer went out without a flush"
        );
        // The failure is reported to the core from then on, and later answers are refused.
        let err = loop {
            if let Err(e) = acks.check() {
                break e;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            err.contains("fsync") && err.contains("ledger.sqlite-wal"),
            "{err}"
        );
        std::fs::write(&wal, b"frames").unwrap();
        assert!(acks.send(answers(to, &[3])).is_err());
        assert!(acks.finish().is_err());
        assert!(received(&nas).is_empty());
    }

    #[test]
    fn a_wal_replaced_under_the_same_name_is_the_one_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("ledger.sqlite-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let mut file = None;
        flush(&wal, &mut file).unwrap();
        let first = file.as_ref().map(|(_, i)| *i).unwrap();
        // The old file stays (under another name), so the new one is another inode.
        std::fs::rename(&wal, dir.path().join("old-wal")).unwrap();
        std::fs::write(&wal, b"new frames").unwrap();
        flush(&wal, &mut file).unwrap();
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(&wal).unwrap().ino();
        assert_ne!(first, now);
        assert_eq!(file.as_ref().map(|(_, i)| *i), Some(now));
    }
}
