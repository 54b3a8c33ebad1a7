//! The commit stage of the serve core's pipeline: a thread with a ledger connection of its
//! own commits a sealed RADIUS batch (one transaction, one WAL fsync), publishes what it
//! changed in `Live` (open sessions: the API and the authorization thread read them), then
//! sends the batch's Accounting-Responses, while the core thread receives, verifies and
//! applies the next batch.
//!
//! One batch is in flight at a time (SQLite has one writer anyway): the core seals batch
//! N + 1 only after batch N came back, so commits, and the credit movements in them, stay
//! in the order the core applied them. A response leaves only after its own commit
//! returned; a batch whose commit failed is answered by no one here (the core decides).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::ledger::{Ledger, LedgerError, RadiusCommit};

use super::{Live, LiveChanges, ServeError};

/// A batch ready to commit: its ledger writes and its encoded responses.
#[derive(Default)]
pub(super) struct Sealed {
    pub commit: RadiusCommit,
    /// Accounting-Responses, back to back.
    pub replies: Vec<u8>,
    /// (end of the response in `replies`, where it goes), in packet order.
    pub reply_to: Vec<(usize, SocketAddr)>,
    /// What the commit changes in [`Live`]: published before the responses leave, so a
    /// NAS that got an answer finds the session in the open-session counts and the API.
    pub live: LiveChanges,
}

/// What the committer did with a [`Sealed`] batch (handed back, buffers and all).
pub(super) struct Committed {
    pub sealed: Sealed,
    /// `Ok`: durable, published in [`Live`], and every response sent.
    pub result: Result<(), LedgerError>,
}

/// The commit thread (stopped and joined when dropped).
pub(super) struct Committer {
    jobs: Option<Sender<Sealed>>,
    done: Receiver<Committed>,
    handle: Option<JoinHandle<()>>,
}

impl Committer {
    /// Opens a second connection to the ledger of `data_dir` (already opened and recovered
    /// by the core) and starts the thread; responses leave through a clone of `socket`.
    pub fn spawn(
        data_dir: &Path,
        socket: &UdpSocket,
        live: Arc<Live>,
    ) -> Result<Committer, ServeError> {
        let mut ledger = Ledger::open(data_dir)?;
        ledger.set_wal_autocheckpoint(0)?;
        let bind_err = |source| ServeError::Bind {
            addr: "RADIUS commit thread".into(),
            source,
        };
        let socket = socket.try_clone().map_err(bind_err)?;
        let (jobs, job_rx) = crossbeam_channel::bounded::<Sealed>(1);
        let (done_tx, done) = crossbeam_channel::bounded::<Committed>(1);
        let handle = std::thread::Builder::new()
            .name("radius-commit".into())
            .spawn(move || {
                for mut sealed in job_rx {
                    let started = live.metrics.commit_started();
                    let result = ledger.commit_radius(&sealed.commit);
                    live.metrics.commit_finished(started);
                    if result.is_ok() {
                        live.publish(std::mem::take(&mut sealed.live));
                        let mut at = 0;
                        for &(end, to) in &sealed.reply_to {
                            let _ = socket.send_to(&sealed.replies[at..end], to);
                            at = end;
                        }
                    }
                    if done_tx.send(Committed { sealed, result }).is_err() {
                        break;
                    }
                }
            })
            .map_err(bind_err)?;
        Ok(Committer {
            jobs: Some(jobs),
            done,
            handle: Some(handle),
        })
    }

    /// Hands a batch to the thread (the previous one must have been [`Committer::wait`]ed for).
    pub fn submit(&self, sealed: Sealed) -> Result<(), ServeError> {
        let sent = self.jobs.as_ref().map(|j| j.send(sealed).is_ok());
        if sent == Some(true) {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// Waits for the batch in flight.
    pub fn wait(&self) -> Result<Committed, ServeError> {
        self.done.recv().map_err(|_| gone())
    }
}

fn gone() -> ServeError {
    ServeError::Ledger(LedgerError::Io {
        path: "RADIUS commit thread".into(),
        source: std::io::Error::other("the commit thread stopped"),
    })
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
