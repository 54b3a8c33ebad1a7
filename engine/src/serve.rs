//! The `ratel serve` core: one thread that owns the ledger and runs the ordered hot path
//! receive a batch → decode and verify → rate → one ledger commit (one fsync) → acknowledge.
//!
//! WAL checkpoints run on a thread of their own (`ledger/checkpoint.rs`), never inside a
//! commit. The Accounting-Response to a packet is sent only after the commit that holds its
//! effects returned. If a commit fails (a full disk, say), nothing of the batch is
//! acknowledged, the in-memory state is reloaded from the ledger, and the NAS's
//! retransmissions are processed again once the ledger accepts writes. If the ledger refuses a batch for something in it
//! (a constraint: a replay rebuilding an idempotency key that exists), no single packet may
//! hold up the others: the batch is re-applied with the existing keys marked as charged, and
//! bisected if it still fails, until every packet is committed or is one the ledger refuses
//! on its own (poisoned: dropped, counted, logged). Between batches the same thread closes stale
//! sessions, flushes the xDR outbox to Parquet and rates files dropped into the CDR spool.

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{BatchError, BatchRater, NoProgress};
use crate::catalog::Catalog;
use crate::ledger::{DataDirLock, Ledger, LedgerError, RadiusCommit};
use crate::radius::accounting::{
    Accounting, Closed, Effects, Session, SessionKey, CLOSED_MEMORY_SECS,
};
use crate::radius::codec::{self, DecodeError};

/// How long the core waits for a first datagram before it looks at API commands and
/// housekeeping again: an operator's write on an idle server waits at most this long.
pub const IDLE_WAIT: Duration = Duration::from_millis(10);

/// Most packets in one group commit.
pub const MAX_BATCH: usize = 2048;
/// Bytes of a spool file rated between two RADIUS batches (~55k generic CDRs, ~0.2 s here):
/// the longest the socket waits while a big file is rated.
pub const SPOOL_BLOCK_BYTES: usize = 4 << 20;
/// Outbox rows written to one Parquet flush.
pub const OUTBOX_FLUSH_ROWS: usize = 50_000;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("radius.listen {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("api.listen: {0}")]
    Api(String),
    /// The acknowledger could not make committed batches durable (acks.rs).
    #[error("ledger: {0}")]
    Durability(String),
    #[error("ledger: open session {nas}/{session}: {message}")]
    Session {
        nas: String,
        session: String,
        message: String,
    },
}

/// An open session as the API shows it (IBSng's `internet_onlines`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSession {
    /// The session's User-Name.
    pub username: String,
    /// The client it bills to (`None`: no subscriber had that User-Name).
    pub user_id: Option<i64>,
    /// The NAS as shown (`ras_description`): its configured name, or the NAS-Identifier or
    /// IP of a NAS a proxy relays.
    pub nas: String,
    /// The NAS part of the session's ledger key (tells sessions of one proxy apart).
    pub nas_key: String,
    pub session_id: String,
    pub nas_ip: String,
    pub nas_port: Option<u32>,
    pub remote_ip: String,
    pub caller_id: String,
    pub login_time: i64,
    pub duration_secs: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Credit taken so far by this session.
    pub charged: rust_decimal::Decimal,
}

impl OnlineSession {
    fn of(s: &Session) -> Self {
        OnlineSession {
            username: s.username.clone(),
            user_id: s.user_id,
            nas: s.ras().to_string(),
            nas_key: s.nas.clone(),
            session_id: s.session_id.clone(),
            nas_ip: s.nas_ip.clone(),
            nas_port: s.nas_port,
            remote_ip: s.framed_ip.clone(),
            caller_id: s.calling_station.clone(),
            login_time: s.charge.login_time,
            duration_secs: s.charge.last_session_time,
            bytes_in: s.charge.last_octets_in,
            bytes_out: s.charge.last_octets_out,
            charged: s.charge.charged,
        }
    }
}

/// Key of [`Live::online`] for sessions of User-Names that are no subscriber.
pub const UNKNOWN_USER: i64 = 0;

/// State the core publishes for readers (the API): open sessions by the client they bill
/// to ([`UNKNOWN_USER`] for the others), refreshed after every commit.
#[derive(Debug, Default)]
pub struct Live {
    pub online: std::sync::RwLock<std::collections::HashMap<i64, Vec<OnlineSession>>>,
    /// Counters, histograms and the core's heartbeat (`/metrics`, `/health`; metrics.rs).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Operator-asked disconnects (`user.killUser`); set once the sender thread runs.
    pub disconnect: std::sync::OnceLock<crate::radius::disconnect::DisconnectHandle>,
}

impl Live {
    fn apply(&self, acct: &Accounting, fx: &Effects) {
        if fx.upserts.is_empty() && fx.closed.is_empty() {
            return;
        }
        let mut online = self.online.write().unwrap_or_else(|e| e.into_inner());
        // Every closed session has its xDR in the same effects: it names the user, and its
        // source (`radius:<key>`) the session's NAS key.
        for x in &fx.xdrs {
            let key = x.source.strip_prefix("radius:").unwrap_or(&x.source);
            let uid = x.user_id.unwrap_or(UNKNOWN_USER);
            if let Some(v) = online.get_mut(&uid) {
                v.retain(|o| !(o.nas_key == key && o.session_id == x.session_id));
                if v.is_empty() {
                    online.remove(&uid);
                }
            }
        }
        for k in &fx.upserts {
            if let Some(s) = acct.sessions.get(k) {
                let v = online.entry(s.user_id.unwrap_or(UNKNOWN_USER)).or_default();
                let o = OnlineSession::of(s);
                match v
                    .iter_mut()
                    .find(|x| x.nas_key == o.nas_key && x.session_id == o.session_id)
                {
                    Some(x) => *x = o,
                    None => v.push(o),
                }
            }
        }
    }

    fn rebuild(&self, acct: &Accounting) {
        let mut online = self.online.write().unwrap_or_else(|e| e.into_inner());
        online.clear();
        for s in acct.sessions.values() {
            online
                .entry(s.user_id.unwrap_or(UNKNOWN_USER))
                .or_default()
                .push(OnlineSession::of(s));
        }
    }
}

use crate::commands::{execute, EndSessions};
pub use crate::commands::{ChangeType, Command, CommandError};

/// What a server run did (returned at shutdown).
#[derive(Debug, Default, Clone)]
pub struct ServeSummary {
    pub counters: crate::radius::accounting::Counters,
    pub open_sessions: usize,
    pub spool_files: u64,
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Binds the accounting socket (large receive buffer: bursts must queue, not drop).
pub fn bind_udp(addr: &str) -> Result<UdpSocket, ServeError> {
    let err = |source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| err(std::io::Error::other("not an address:port")))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&sa.into()).map_err(err)?;
    Ok(sock.into())
}

/// What the core holds when it starts answering (for the "ready" line of `serve`).
#[derive(Debug, Clone, Copy)]
pub struct CoreReady {
    /// Subscribers loaded from the ledger.
    pub subscribers: usize,
    /// Open RADIUS sessions recovered from the ledger.
    pub open_sessions: usize,
}

/// Runs the server until `shutdown` is set. `on_ready` runs once the ledger is open and
/// recovered (the API may read it); `on_core_ready` once the core has loaded subscribers
/// and sessions and answers RADIUS (datagrams that came earlier waited in the socket's
/// buffer). The caller takes the data dir's lock first (before it announces the server),
/// so no other process can slip in between. `auth_socket` is the bound `[radius] auth_listen`
/// (its thread is started here once the ledger exists).
#[allow(clippy::too_many_arguments)]
pub fn run(
    catalog: &Catalog,
    lock: DataDirLock,
    socket: UdpSocket,
    shutdown: Arc<AtomicBool>,
    live: Arc<Live>,
    commands: crossbeam_channel::Receiver<Command>,
    auth_socket: Option<UdpSocket>,
    reloader: Option<Reloader>,
    on_ready: impl FnOnce() -> Result<(), ServeError>,
    on_core_ready: impl FnOnce(CoreReady),
) -> Result<ServeSummary, ServeError> {
    let mut on_core_ready = Some(on_core_ready);
    let _lock = lock;
    let mut ledger = Ledger::open(&catalog.data_dir)?;
    // Checkpoints run on a thread of their own, never inside a commit (ledger/checkpoint.rs).
    ledger.set_wal_autocheckpoint(0)?;
    let _checkpointer = crate::ledger::checkpoint::spawn(&catalog.data_dir)?;
    // Big RADIUS batches leave their WAL fsync to the acknowledger thread, which answers
    // a batch once it is durable while the core goes on with the next (acks.rs).
    // `RATEL_INLINE_FSYNC=1`: every commit fsyncs and the core answers (to compare).
    let mut acks = if std::env::var_os("RATEL_INLINE_FSYNC").is_some() {
        None
    } else {
        let sock = socket.try_clone().map_err(|source| ServeError::Bind {
            addr: "RADIUS acknowledger socket".into(),
            source,
        })?;
        Some(
            crate::acks::Acknowledger::spawn(ledger.wal_path(), sock).map_err(|source| {
                ServeError::Bind {
                    addr: "RADIUS acknowledger thread".into(),
                    source,
                }
            })?,
        )
    };
    // RADIUS xDRs go from the outbox to Parquet on a thread of their own; the core only
    // commits the files it hands over (outbox.rs).
    let mut flusher = Some(crate::outbox::Flusher::spawn(
        &catalog.data_dir,
        ledger.xdr_root().to_path_buf(),
    )?);
    // The ledger exists and is recovered: readers (the API) may open it now.
    on_ready()?;
    // Prepaid control: the authorization listener and the Disconnect-Request sender, each
    // a thread of its own (radius/auth_server.rs, radius/disconnect.rs).
    let auth_config = crate::radius::auth_server::AuthConfig::new(catalog);
    let auth = match auth_socket {
        Some(sock) => Some(crate::radius::auth_server::spawn(
            auth_config.clone(),
            &catalog.data_dir,
            sock,
            live.clone(),
            shutdown.clone(),
        )?),
        None => None,
    };
    // Provisioning events: a delivery thread per notify hook, reading the ledger's outbox
    // (they stop with the shutdown flag; a hook added by a reload starts at the next start).
    let event_counters = Arc::new(crate::events::EventCounters::default());
    live.metrics.watch_events(event_counters.clone());
    let _deliveries = crate::events::spawn_delivery(
        catalog.data_dir.clone(),
        &catalog.hooks,
        shutdown.clone(),
        event_counters,
    );
    let (disconnect, disconnect_rx) = crate::radius::disconnect::Disconnector::new();
    let _ = live.disconnect.set(disconnect.handle());
    live.metrics.watch_disconnects(disconnect.counters.clone());
    if let Some((_, c)) = &auth {
        live.metrics.watch_auth(c.clone());
    }
    live.metrics.health().watch_socket(&socket);
    let disconnect_sender = {
        let any = if catalog.nas.iter().any(|n| n.ip.is_ipv6()) {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let sock = UdpSocket::bind(any).map_err(|source| ServeError::Bind {
            addr: format!("Disconnect-Request socket {any}"),
            source,
        })?;
        let (counters, stop) = (disconnect.counters.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("radius-disconnect".into())
            .spawn(move || {
                crate::radius::disconnect::run_sender(
                    sock,
                    disconnect_rx,
                    counters,
                    stop,
                    Duration::from_secs(1),
                )
            })
            .map_err(|source| ServeError::Bind {
                addr: "Disconnect-Request thread".into(),
                source,
            })?
    };
    // The running config: the caller's until a reload (`kill -HUP`) replaces it; each
    // generation rebuilds the core around the same socket, ledger and in-memory balances.
    let mut generation: Option<Arc<Catalog>> = None;
    let mut state: Option<crate::batch::RaterState> = None;
    let mut carried_counters = None;
    let process_started = chrono::Utc::now().timestamp();
    let (mut socket, mut drops, mut spool_files, mut disconnect) =
        (socket, DropLog::default(), 0u64, disconnect);
    let mut spool_current: Option<(PathBuf, crate::batch::FileSummary)> = None;
    let mut compactor = crate::compact::Compactor::default();
    loop {
        let catalog: &Catalog = generation.as_deref().unwrap_or(catalog);
        let mut rater = match state.take() {
            Some(st) => BatchRater::with_state(catalog, &mut ledger, st),
            None => BatchRater::new(catalog, &mut ledger)?,
        };
        // Spool files a block per call: RADIUS batches are answered between blocks.
        rater.block_bytes = SPOOL_BLOCK_BYTES;
        rater.block_budget = Some(1);
        rater.pause = Some({
            let (live, commands, stop) = (live.clone(), commands.clone(), shutdown.clone());
            let reload = reloader.as_ref().map(|r| r.requested.clone());
            Arc::new(move || {
                live.metrics.health().packets_waiting()
                    || !commands.is_empty()
                    || stop.load(Ordering::Relaxed)
                    || reload.as_ref().is_some_and(|r| r.load(Ordering::Relaxed))
            })
        });
        let mut acct = load_accounting(catalog, &rater)?;
        if let Some(c) = carried_counters.take() {
            acct.counters = c;
        }
        // Silence from before this process started is not the sessions' (also after a
        // reload, which reads the sessions from the ledger again).
        acct.restart_silences(process_started);
        tracing::info!(
            open_sessions = acct.sessions.len(),
            "recovered open sessions from the ledger"
        );
        live.rebuild(&acct);
        if let Some(f) = on_core_ready.take() {
            f(CoreReady {
                subscribers: rater.subscribers().users.len(),
                open_sessions: acct.sessions.len(),
            });
        }
        let mut core = Core {
            live: live.clone(),
            catalog,
            socket,
            buf: vec![0u8; 65_536],
            resp: Vec::with_capacity(4096),
            pending: Vec::with_capacity(MAX_BATCH),
            arena: Vec::new(),
            drops,
            spool_files,
            spool_current,
            last_flush: Instant::now(),
            disconnect,
            compactor,
            acks: acks.take(),
            answers: crate::acks::Answers::default(),
            fsynced: false,
        };
        // Housekeeping (spool, stale sessions, outbox) runs at once after a (re)start.
        let mut last_housekeeping = Instant::now() - Duration::from_secs(2);
        let mut next: Option<Arc<Catalog>> = None;
        while !shutdown.load(Ordering::Relaxed) {
            core.receive_batch(&mut rater, &mut acct)?;
            if core.spool_current.is_some() {
                // The next block of the spool file being rated.
                core.scan_spool(&mut rater)?;
            }
            if flusher.as_ref().is_some_and(|f| f.stopped()) {
                tracing::error!(
                    "the xDR outbox thread stopped; the core flushes the outbox itself from now on"
                );
                flusher = None;
            }
            if flusher.is_none() && core.last_flush.elapsed() >= Duration::from_secs(1) {
                if let Err(e) = core.flush_outbox(&mut rater) {
                    tracing::error!(error = %e, "xDR outbox flush failed; will retry");
                }
                core.last_flush = Instant::now();
            }
            if let Some(p) = flusher.as_ref().and_then(|f| f.take()) {
                let ok = core.commit_flush(&mut rater, p);
                if let Some(f) = &flusher {
                    f.answer(ok);
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                // Commands store balances as they are in memory: fold first (a no-op
                // unless a spool file is half rated). A failure stops serve: its next
                // start folds at open.
                rater.fold_if_unfolded()?;
                let (disconnect, live) = (&mut core.disconnect, &core.live);
                execute(catalog, &mut rater, cmd, &mut |id, why| match why {
                    EndSessions::CreditExhausted => {
                        disconnect.user_exhausted(catalog, live, id, now_secs())
                    }
                    EndSessions::Locked => disconnect.user_locked(catalog, live, id, now_secs()),
                });
            }
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                last_housekeeping = Instant::now();
                core.housekeeping(&mut rater, &mut acct)?;
            }
            core.drops.maybe_log();
            core.live
                .metrics
                .core_loop(&acct.counters, acct.sessions.len());
            if let Some(r) = &reloader {
                if r.requested.swap(false, Ordering::SeqCst) {
                    match try_reload(catalog, r, &mut rater, &acct) {
                        Ok(c) => {
                            next = Some(c);
                            break;
                        }
                        Err(e) => {
                            tracing::error!("config reload refused, the running config stays: {e}")
                        }
                    }
                }
            }
        }
        let Some(new) = next else {
            return stop_gracefully(core, rater, acct, flusher.take(), disconnect_sender, auth);
        };
        // Between batches: everything received is committed and answered. Carry the
        // socket, balances and counters over to the new config.
        carried_counters = Some(acct.counters.clone());
        state = Some(rater.into_state());
        Core {
            socket,
            drops,
            spool_files,
            spool_current,
            disconnect,
            compactor,
            acks,
            ..
        } = core;
        if let Some(r) = &reloader {
            (r.publish)(new.clone());
        }
        tracing::info!(config = %new.source_name, "config reloaded: new rates, rules, groups and NAS entries apply from now on");
        auth_config.set(&new);
        generation = Some(new);
    }
}

/// Asks the core to reload its config between batches (`kill -HUP`).
pub struct Reloader {
    /// Set by the signal handler; the core clears it.
    pub requested: Arc<AtomicBool>,
    /// Reads and validates the config file again (`Err`: the one-line reason).
    pub load: Box<dyn Fn() -> Result<Catalog, String> + Send>,
    /// Hands the new config to the rest of the process (the API).
    pub publish: Box<dyn Fn(Arc<Catalog>) + Send>,
}

/// Loads the new config, checks it can replace the running one with these open sessions,
/// and rewrites the stored sessions' charge-rule indices for it (one transaction). Nothing
/// changes when it fails.
fn try_reload(
    old: &Catalog,
    r: &Reloader,
    rater: &mut BatchRater<'_>,
    acct: &Accounting,
) -> Result<Arc<Catalog>, String> {
    let new = (r.load)()?;
    // The in-memory state goes on under the new config without the unfolded amounts.
    rater.fold_pending().map_err(|e| e.to_string())?;
    let sessions: Vec<&Session> = acct.sessions.values().collect();
    crate::reload::check(old, &new, &sessions).map_err(|e| e.to_string())?;
    let mut states = Vec::with_capacity(sessions.len());
    for s in sessions {
        let mut s = s.clone();
        crate::reload::remap(old, &new, &mut s);
        let state = crate::radius::state::pack(&s);
        states.push((s.nas.clone(), s.session_id.clone(), state));
    }
    rater
        .ledger
        .save_session_states(&states)
        .map_err(|e| e.to_string())?;
    for key in crate::reload::restart_only_changes(old, &new) {
        tracing::warn!(key, "changed in the config: takes effect at the next start");
    }
    Ok(Arc::new(new))
}

/// The end of `run`: flush, join the helper threads, report.
fn stop_gracefully(
    mut core: Core<'_>,
    mut rater: BatchRater<'_>,
    acct: Accounting,
    flusher: Option<crate::outbox::Flusher>,
    disconnect_sender: std::thread::JoinHandle<()>,
    auth: Option<(
        std::thread::JoinHandle<()>,
        Arc<crate::radius::auth_server::AuthCounters>,
    )>,
) -> Result<ServeSummary, ServeError> {
    // Graceful stop: every received packet has been committed above; its answer goes out
    // once the WAL is durable. Then flush the outbox so every xDR is in Parquet: what the
    // flusher thread has written first, then the rest here.
    if let Some(a) = core.acks.take() {
        a.finish().map_err(ServeError::Durability)?;
    }
    if let Some(f) = flusher {
        f.stop(|p| core.commit_flush(&mut rater, p));
    }
    while core.flush_outbox(&mut rater)? > 0 {}
    core.compactor.finish(rater.ledger, now_secs());
    if let Some((f, s)) = &core.spool_current {
        tracing::info!(file = %f.display(), records = s.records, "spool file rated in part; the next start goes on from its last committed block");
    }
    let dc = core.disconnect.counters.clone();
    drop(core.disconnect);
    let _ = disconnect_sender.join();
    if dc.requested.load(Ordering::Relaxed) > 0 {
        tracing::info!(
            requested = dc.requested.load(Ordering::Relaxed),
            acked = dc.acked.load(Ordering::Relaxed),
            naked = dc.naked.load(Ordering::Relaxed),
            timed_out = dc.timed_out.load(Ordering::Relaxed),
            unroutable = dc.unroutable.load(Ordering::Relaxed),
            queue_full = dc.queue_full.load(Ordering::Relaxed),
            "Disconnect-Requests (credit exhausted)"
        );
    }
    if let Some((h, c)) = auth {
        let _ = h.join();
        tracing::info!(
            accepted = c.accepted.load(Ordering::Relaxed),
            rejected = c.rejected.load(Ordering::Relaxed),
            dropped = c.dropped_bad.load(Ordering::Relaxed)
                + c.dropped_unknown_nas.load(Ordering::Relaxed),
            "authorization listener stopped"
        );
    }
    tracing::info!(
        received = acct.counters.received,
        acknowledged = acct.counters.acknowledged,
        open_sessions = acct.sessions.len(),
        "stopped: everything received was committed and answered, xDRs flushed"
    );
    Ok(ServeSummary {
        counters: acct.counters.clone(),
        open_sessions: acct.sessions.len(),
        spool_files: core.spool_files,
    })
}

/// Rebuilds the accounting state from the ledger.
fn load_accounting(catalog: &Catalog, rater: &BatchRater<'_>) -> Result<Accounting, ServeError> {
    let mut acct = Accounting::default();
    let nas_idx = |key: &str| catalog.nas_entry_of_key(key);
    for (nas, sid, state) in rater.ledger.load_sessions()? {
        let Some(i) = nas_idx(&nas) else {
            tracing::warn!(nas = %nas, session = %sid, "open session of a NAS no longer configured: left in the ledger");
            continue;
        };
        let mut s: Session = crate::radius::state::load(&nas, &sid, &state).map_err(|message| {
            ServeError::Session {
                nas: nas.clone(),
                session: sid.clone(),
                message,
            }
        })?;
        if s.user_id.is_none() && !s.unknown_user {
            // Stored before sessions kept their client: the User-Name's client now.
            s.user_id = rater
                .subscribers
                .by_name
                .get(s.username.as_str())
                .map(|&i| rater.subscribers.users[i as usize].user_id);
        }
        acct.sessions.insert(SessionKey::new(i, nas, sid), s);
    }
    for (nas, sid, at, ended) in rater.ledger.load_closed()? {
        if let Some(i) = nas_idx(&nas) {
            acct.closed
                .insert(SessionKey::new(i, nas, sid), Closed { at, ended });
        }
    }
    // A closed key with an open session is a reused session id: the open session is the
    // one that counts (the closed row goes when it closes).
    let sessions = &acct.sessions;
    acct.closed.retain(|k, _| !sessions.contains_key(k));
    acct.recount();
    Ok(acct)
}

/// Rate-limited reporting of dropped datagrams.
#[derive(Default)]
struct DropLog {
    since_log: u64,
    last_reason: &'static str,
    last_source: Option<SocketAddr>,
    last_log: Option<Instant>,
}

impl DropLog {
    fn record(&mut self, reason: &'static str, src: SocketAddr) {
        self.since_log += 1;
        self.last_reason = reason;
        self.last_source = Some(src);
    }
    fn maybe_log(&mut self) {
        if self.since_log == 0
            || self
                .last_log
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            dropped = self.since_log,
            last_reason = self.last_reason,
            last_source = %self.last_source.map(|s| s.to_string()).unwrap_or_default(),
            "dropped RADIUS datagrams (logged at most every 10 s)"
        );
        self.since_log = 0;
        self.last_log = Some(Instant::now());
    }
}

/// Packets from which a batch leaves its WAL fsync to the acknowledger (acks.rs). At 64
/// requests in flight batches stay under it; at 512 most are above.
const DEFER_FSYNC_FROM: usize = 128;

/// A packet accepted into the current batch, waiting for the commit.
struct Pending {
    nas: u16,
    ident: u8,
    auth: [u8; 16],
    to: SocketAddr,
    /// The datagram's bytes in [`Core::arena`] (to apply it again if the batch is isolated).
    bytes: Range<usize>,
}

/// A retransmission of a packet committed in an earlier batch, answered after this batch.
struct Retransmit {
    nas: u16,
    to: SocketAddr,
    /// The datagram's bytes in [`Core::arena`] (its reply copies its Proxy-States).
    bytes: Range<usize>,
}

/// What one attempt to commit a part of a refused batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Committed: acknowledge the part.
    Committed,
    /// Refused, and the attempt learned why (idempotency keys now known to exist): the
    /// same part again.
    Retry,
    /// Refused for something in it: split it (a single packet is poisoned).
    Refused,
    /// The ledger fails for everything (disk, I/O): stop, acknowledge nothing more.
    Fatal,
}

/// How a refused batch of `n` packets was committed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Isolation {
    committed: Vec<Range<usize>>,
    poisoned: Vec<usize>,
    /// Not committed (a fatal failure, or the attempt budget ran out): not acknowledged.
    unfinished: Vec<Range<usize>>,
}

/// Commits packets `0..n` in order and in as few parts as the ledger allows: a refused part
/// is tried again when the attempt learned something, else split in halves; a refused
/// single packet is poisoned. At most `4n + 8` attempts.
fn bisect(n: usize, mut attempt: impl FnMut(Range<usize>) -> Attempt) -> Isolation {
    let mut out = Isolation::default();
    // A stack of parts, the next one on top: order is kept.
    let mut todo: Vec<Range<usize>> = Vec::new();
    if n > 0 {
        todo.push(0..n);
    }
    let mut budget = 4 * n + 8;
    while let Some(r) = todo.pop() {
        let verdict = if budget == 0 {
            Attempt::Fatal
        } else {
            budget -= 1;
            attempt(r.clone())
        };
        match verdict {
            Attempt::Committed => out.committed.push(r),
            Attempt::Retry => todo.push(r),
            Attempt::Refused if r.len() <= 1 => out.poisoned.push(r.start),
            Attempt::Refused => {
                let mid = r.start + r.len() / 2;
                todo.push(mid..r.end);
                todo.push(r.start..mid);
            }
            Attempt::Fatal => {
                out.unfinished.push(r);
                out.unfinished.extend(todo.drain(..).rev());
            }
        }
    }
    out
}

/// Whether the ledger refused a commit for its content (a constraint, a value it cannot
/// store) rather than for the disk or the database as a whole.
fn refused_for_content(e: &LedgerError) -> bool {
    use rusqlite::{Error, ErrorCode};
    match e {
        LedgerError::Sqlite { source, .. } => match source {
            Error::SqliteFailure(f, _) => matches!(
                f.code,
                ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
            ),
            Error::ToSqlConversionFailure(_) | Error::InvalidParameterName(_) => true,
            _ => false,
        },
        LedgerError::Rejected(_) => true,
        _ => false,
    }
}

struct Core<'c> {
    catalog: &'c Catalog,
    live: Arc<Live>,
    socket: UdpSocket,
    buf: Vec<u8>,
    /// The reply being sent.
    resp: Vec<u8>,
    pending: Vec<Pending>,
    /// The bytes of the batch's pending datagrams.
    arena: Vec<u8>,
    drops: DropLog,
    spool_files: u64,
    /// When the core last flushed the outbox itself (only without the flusher thread).
    last_flush: Instant,
    /// The spool file being rated a block at a time, with what its earlier blocks did.
    spool_current: Option<(PathBuf, crate::batch::FileSummary)>,
    /// Hands Disconnect-Requests to the sender thread (never blocks).
    disconnect: crate::radius::disconnect::Disconnector,
    /// Merges closed days' xDR files (carried across config generations).
    compactor: crate::compact::Compactor,
    /// Fsyncs the WAL and then sends the answers of committed batches (acks.rs); `None`:
    /// each commit fsyncs and the core answers.
    acks: Option<crate::acks::Acknowledger>,
    /// The current batch's answers, for `acks`.
    answers: crate::acks::Answers,
    /// Whether a commit with its own fsync succeeded in this batch (everything committed
    /// before is durable: its answers go out at once).
    fsynced: bool,
}

impl Core<'_> {
    /// Receives up to [`MAX_BATCH`] datagrams (the first waits up to [`IDLE_WAIT`], the rest are
    /// what is already queued, for at most `commit_wait_ms`), applies them, commits once
    /// and answers them.
    fn receive_batch(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
    ) -> Result<(), ServeError> {
        if let Some(a) = &self.acks {
            a.check().map_err(ServeError::Durability)?;
        }
        let mut fx = Effects::default();
        let mut retransmits: Vec<Retransmit> = Vec::new();
        self.fsynced = false;
        self.pending.clear();
        self.arena.clear();
        let _ = self.socket.set_read_timeout(Some(IDLE_WAIT));
        let mut deadline: Option<Instant> = None;
        let now = now_secs();
        loop {
            if self.pending.len() + retransmits.len() >= MAX_BATCH {
                break;
            }
            let (n, src) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    break
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RADIUS receive failed");
                    break;
                }
            };
            if deadline.is_none() {
                // From the second datagram on, drain what is queued and commit as soon as
                // the socket is empty (or `commit_wait_ms` passed): waiting for more only
                // delays every acknowledgement of the batch.
                let wait = Duration::from_millis(self.catalog.commit_wait_ms);
                deadline = Some(Instant::now() + wait);
                let _ = self.socket.set_nonblocking(true);
            } else if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Keep this datagram, then commit.
                    self.accept(rater, acct, n, src, now, &mut fx, &mut retransmits);
                    break;
                }
            }
            self.accept(rater, acct, n, src, now, &mut fx, &mut retransmits);
        }
        if deadline.is_some() {
            let _ = self.socket.set_nonblocking(false);
        }
        if self.pending.is_empty() && retransmits.is_empty() && fx.xdrs.is_empty() {
            return Ok(());
        }
        let mut committed = true;
        // A big batch (the socket keeps filling) leaves its fsync to the acknowledger and
        // the core goes on; a small one fsyncs in its commit and is answered at once: a
        // hand-over's wake-up would only lengthen each round trip (ARCHITECTURE.md).
        let defer_fsync = self.acks.is_some() && self.pending.len() >= DEFER_FSYNC_FROM;
        if !self.pending.is_empty() || !fx.closed.is_empty() {
            committed = match self.commit(rater, acct, &fx, now, defer_fsync) {
                Ok(()) => true,
                Err(e) if refused_for_content(&e) => {
                    tracing::warn!(error = %e, packets = self.pending.len(), "ledger refused the batch for something in it: applying its packets again to commit all but the one at fault");
                    self.isolate(rater, acct, &fx, now)?;
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, packets = self.pending.len(), "ledger commit failed: NOT acknowledging this batch; the NAS will retransmit");
                    for p in &self.pending {
                        acct.forget_seen(p.nas, p.ident, &p.auth);
                    }
                    self.reload(rater, acct)?;
                    std::thread::sleep(Duration::from_millis(200));
                    return Ok(());
                }
            };
        }
        if committed {
            self.acknowledge(acct, 0..self.pending.len());
            self.live.metrics.batch_committed(self.pending.len());
        }
        // Retransmissions of packets committed earlier get the same answer again (with
        // their own Proxy-States).
        for r in retransmits {
            let secret = &self.catalog.nas[r.nas as usize].secret;
            codec::write_response(&mut self.resp, &self.arena[r.bytes], secret);
            self.answer(r.to);
            self.live.metrics.retransmit_answered();
        }
        if let Some(a) = &self.acks {
            let answers = std::mem::take(&mut self.answers);
            if self.fsynced {
                answers.send_on(&self.socket);
            } else {
                // Deferred, or nothing committed (answers to retransmissions only): the
                // acknowledger's next flush covers every commit before it.
                a.send(answers).map_err(ServeError::Durability)?;
            }
        }
        Ok(())
    }

    /// Sends `self.resp` to `to` now, or hands it to the acknowledger, which sends it once
    /// the WAL is durable (an answer to a retransmission too: its original's commit may
    /// still be in the batch being flushed).
    fn answer(&mut self, to: SocketAddr) {
        match &self.acks {
            Some(_) => self.answers.push(&self.resp, to),
            None => {
                let _ = self.socket.send_to(&self.resp, to);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
        n: usize,
        src: SocketAddr,
        now: i64,
        fx: &mut Effects,
        retransmits: &mut Vec<Retransmit>,
    ) {
        acct.counters.received += 1;
        let Some(nas) = self.catalog.nas_by_ip(src.ip()) else {
            acct.counters.dropped_unknown_nas += 1;
            self.drops.record("unknown NAS", src);
            return;
        };
        let secret = &self.catalog.nas[nas].secret;
        if self.buf[..n].first() == Some(&codec::CODE_STATUS_SERVER) {
            self.status_server(acct, n, src, nas);
            return;
        }
        let req = match codec::decode(&self.buf[..n], secret) {
            Ok(r) => r,
            Err(e) => {
                match e {
                    DecodeError::BadAuthenticator | DecodeError::BadMessageAuthenticator => {
                        acct.counters.dropped_bad_auth += 1
                    }
                    _ => acct.counters.dropped_malformed += 1,
                }
                self.drops.record(e.as_str(), src);
                return;
            }
        };
        let nas = nas as u16;
        if acct.is_retransmission(nas, req.identifier, &req.authenticator) {
            if acct.is_poisoned(nas, req.identifier, &req.authenticator) {
                // The ledger refused it on its own before: never acknowledged.
                acct.counters.poisoned += 1;
                self.drops.record("poisoned (refused by the ledger)", src);
                return;
            }
            // Within this batch the original is answered after the commit; from an earlier
            // batch it was committed already.
            if !self
                .pending
                .iter()
                .any(|p| p.nas == nas && p.ident == req.identifier && p.auth == req.authenticator)
            {
                let at = self.arena.len();
                self.arena.extend_from_slice(&self.buf[..n]);
                retransmits.push(Retransmit {
                    nas,
                    to: src,
                    bytes: at..self.arena.len(),
                });
            }
            return;
        }
        let src_ip = src.ip().to_string();
        acct.apply(
            self.catalog,
            &mut rater.subscribers,
            &mut rater.next_xdr,
            nas,
            &src_ip,
            &req,
            now,
            fx,
        );
        let at = self.arena.len();
        self.arena.extend_from_slice(&self.buf[..n]);
        self.pending.push(Pending {
            nas,
            ident: req.identifier,
            auth: req.authenticator,
            to: src,
            bytes: at..self.arena.len(),
        });
    }

    /// Answers a Status-Server (RFC 5997) from client `nas` at once: it asks whether we
    /// are alive, so it needs no commit, creates no session and writes nothing. Without a
    /// valid Message-Authenticator it is dropped and counted.
    fn status_server(&mut self, acct: &mut Accounting, n: usize, src: SocketAddr, nas: usize) {
        let secret = &self.catalog.nas[nas].secret;
        if let Err(e) = codec::decode_status_server(&self.buf[..n], secret) {
            match e {
                DecodeError::BadMessageAuthenticator | DecodeError::MissingMessageAuthenticator => {
                    acct.counters.dropped_bad_auth += 1
                }
                _ => acct.counters.dropped_malformed += 1,
            }
            self.drops.record(e.as_str(), src);
            return;
        }
        codec::write_response(&mut self.resp, &self.buf[..n], secret);
        let _ = self.socket.send_to(&self.resp, src);
        acct.counters.status_server += 1;
    }

    /// Sends the Accounting-Responses of pending packets `range` (committed), each with the
    /// Proxy-States of its request.
    fn acknowledge(&mut self, acct: &mut Accounting, range: Range<usize>) {
        for i in range.clone() {
            let p = &self.pending[i];
            let secret = &self.catalog.nas[p.nas as usize].secret;
            codec::write_response(&mut self.resp, &self.arena[p.bytes.clone()], secret);
            let to = p.to;
            self.answer(to);
        }
        acct.counters.acknowledged += range.len() as u64;
    }

    /// A batch the ledger refused for its content (`first` holds its effects). Memory is
    /// reloaded from the ledger and the packets applied again, the charges whose keys the
    /// ledger holds already marked as charged (a replay of a forgotten session charges
    /// nothing and is acknowledged); parts that still fail are bisected, a single packet
    /// that fails alone is poisoned. Committed parts are acknowledged.
    fn isolate(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
        first: &Effects,
        now: i64,
    ) -> Result<(), ServeError> {
        let mut known = rater.ledger.existing_journal_keys(
            first
                .charges
                .iter()
                .map(|c| (c.idem_key.as_str(), c.legacy_key.as_deref())),
        )?;
        self.reload(rater, acct)?;
        let mut fatal: Option<ServeError> = None;
        let result = bisect(self.pending.len(), |range| {
            let mut fx = Effects::default();
            acct.charged_keys = Some(known.clone());
            for i in range {
                self.reapply(rater, acct, i, now, &mut fx);
            }
            acct.charged_keys = None;
            let Err(e) = self.commit(rater, acct, &fx, now, false) else {
                return Attempt::Committed;
            };
            let existing = rater.ledger.existing_journal_keys(
                fx.charges
                    .iter()
                    .map(|c| (c.idem_key.as_str(), c.legacy_key.as_deref())),
            );
            if let Err(e) = self.reload(rater, acct) {
                fatal = Some(e);
                return Attempt::Fatal;
            }
            if !refused_for_content(&e) {
                tracing::error!(error = %e, "ledger commit failed: NOT acknowledging the rest of this batch; the NAS will retransmit");
                return Attempt::Fatal;
            }
            let before = known.len();
            known.extend(existing.unwrap_or_default());
            if known.len() > before {
                Attempt::Retry
            } else {
                tracing::debug!(error = %e, "part of a refused batch refused again: splitting it");
                Attempt::Refused
            }
        });
        for r in result.committed {
            self.acknowledge(acct, r);
        }
        for i in result.poisoned {
            let p = &self.pending[i];
            acct.mark_poisoned(p.nas, p.ident, &p.auth);
            acct.counters.poisoned += 1;
            tracing::error!(nas = %self.catalog.nas[p.nas as usize].name, source = %p.to, identifier = p.ident, "the ledger refuses this packet's effects on their own: dropped, not acknowledged, its retransmissions dropped");
        }
        if !result.unfinished.is_empty() {
            for r in result.unfinished {
                for p in &self.pending[r] {
                    acct.forget_seen(p.nas, p.ident, &p.auth);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Applies pending packet `i` again (it was decoded and verified when it arrived).
    fn reapply(
        &self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
        i: usize,
        now: i64,
        fx: &mut Effects,
    ) {
        let p = &self.pending[i];
        let secret = &self.catalog.nas[p.nas as usize].secret;
        let Ok(req) = codec::decode(&self.arena[p.bytes.clone()], secret) else {
            return;
        };
        acct.apply(
            self.catalog,
            &mut rater.subscribers,
            &mut rater.next_xdr,
            p.nas,
            &p.to.ip().to_string(),
            &req,
            now,
            fx,
        );
    }

    /// One ledger transaction for the effects of a batch; with `defer_fsync`, without its
    /// fsync (the acknowledger's flush makes it durable before its answers go out).
    fn commit(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &Accounting,
        fx: &Effects,
        now: i64,
        defer_fsync: bool,
    ) -> Result<(), LedgerError> {
        let mut c = RadiusCommit {
            now,
            next_xdr: rater.next_xdr,
            forget_closed_before: now - CLOSED_MEMORY_SECS,
            ..Default::default()
        };
        for ch in &fx.charges {
            // The stored balance leaves out the CDR amounts of a spool file not yet folded
            // (the fold adds them); journal rows and events use the real balance.
            if let Some(a) = rater.unfolded_of(ch.user_id) {
                c.unfolded.insert(ch.user_id, a);
            }
            c.charges.push((
                ch.user_id,
                ch.amount,
                ch.balance_after,
                ch.idem_key.clone(),
                ch.legacy_key.clone(),
            ));
        }
        let mut seen: std::collections::HashSet<&SessionKey, ahash::RandomState> =
            Default::default();
        for k in fx.upserts.iter().rev() {
            if !seen.insert(k) {
                continue;
            }
            if let Some(s) = acct.sessions.get(k) {
                c.upserts.push((
                    s.nas.clone(),
                    s.session_id.clone(),
                    crate::radius::state::pack(s),
                ));
            }
        }
        for k in &fx.closed {
            // A key opened again in this batch has left `closed`: its new session keeps
            // the old one's end.
            let ended = acct
                .closed
                .get(k)
                .and_then(|c| c.ended)
                .or_else(|| acct.sessions.get(k).and_then(|s| s.reopened_after))
                .unwrap_or(now);
            c.closed.push((k.nas.clone(), k.session_id.clone(), ended));
        }
        for x in &fx.xdrs {
            c.xdrs
                .push((x.xdr_id, serde_json::to_string(x).expect("xdr serializes")));
        }
        c.rule_usage = fx.rule_usage.clone();
        c.first_logins = fx.first_logins.clone();
        c.quota = fx.quota.clone();
        c.defer_fsync = defer_fsync;
        let started = self.live.metrics.commit_started();
        let committed = rater.ledger.commit_radius(&c);
        self.live.metrics.commit_finished(started);
        committed?;
        self.fsynced |= !c.defer_fsync;
        if c.defer_fsync {
            self.live.metrics.batch_fsync_deferred();
        }
        self.live.apply(acct, fx);
        self.disconnect_exhausted(&rater.subscribers, fx, now);
        Ok(())
    }

    /// Prepaid control after a commit: each user whose credit these charges took from
    /// above zero to zero or below, with no package data quota left, and each user at zero
    /// credit or below whose quota these updates used up, gets a Disconnect-Request series
    /// for every session still open (one series per session per crossing; the sender
    /// thread does the waiting).
    fn disconnect_exhausted(&mut self, subs: &crate::batch::Subscribers, fx: &Effects, now: i64) {
        let zero = rust_decimal::Decimal::ZERO;
        let mut users: Vec<i64> = Vec::new();
        let no_quota = |id: i64| {
            subs.by_id(id)
                .is_none_or(|u| crate::packages::data_available(&u.packages, now) == 0)
        };
        for ch in &fx.charges {
            let before = ch.balance_after.checked_add(ch.amount).unwrap_or(zero);
            if before > zero
                && ch.balance_after <= zero
                && !users.contains(&ch.user_id)
                && no_quota(ch.user_id)
            {
                users.push(ch.user_id);
            }
        }
        for &id in &fx.quota_exhausted {
            let broke = subs.by_id(id).is_some_and(|u| u.credit <= zero);
            if broke && !users.contains(&id) && no_quota(id) {
                users.push(id);
            }
        }
        for id in users {
            self.disconnect
                .user_exhausted(self.catalog, &self.live, id, now);
        }
    }

    /// After a failed commit: the ledger is the truth, rebuild memory from it.
    fn reload(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
    ) -> Result<(), ServeError> {
        rater.reload()?;
        let fresh = load_accounting(self.catalog, rater)?;
        acct.sessions = fresh.sessions;
        acct.closed = fresh.closed;
        acct.recount();
        self.live.rebuild(acct);
        Ok(())
    }

    fn housekeeping(
        &mut self,
        rater: &mut BatchRater<'_>,
        acct: &mut Accounting,
    ) -> Result<(), ServeError> {
        let now = now_secs();
        let mut fx = Effects::default();
        acct.close_stale(
            self.catalog,
            &rater.subscribers,
            &mut rater.next_xdr,
            now,
            &mut fx,
        );
        if !fx.closed.is_empty() {
            if let Err(e) = self.commit(rater, acct, &fx, now, false) {
                tracing::error!(error = %e, "ledger commit of stale sessions failed; will retry");
                self.reload(rater, acct)?;
            }
        }
        if now >= rater.subscribers.package_due {
            // Fees store balances as they are in memory: fold first.
            rater.fold_if_unfolded()?;
            let (disconnect, live, catalog) = (&mut self.disconnect, &self.live, self.catalog);
            // At most ~half a second of renewal transactions per housekeeping: RADIUS is
            // not read meanwhile (the rest is done at the next one, in order).
            let deadline = Instant::now() + Duration::from_millis(500);
            let r = crate::packages::renew_due_until(
                catalog,
                rater,
                now,
                &mut |id, why| match why {
                    EndSessions::CreditExhausted => {
                        disconnect.user_exhausted(catalog, live, id, now)
                    }
                    EndSessions::Locked => disconnect.user_locked(catalog, live, id, now),
                },
                Some(deadline),
            );
            if let Err(e) = r {
                tracing::error!(error = %e, "package renewals failed; will retry");
                self.reload(rater, acct)?;
            }
        }
        self.compactor.tick(rater.ledger, now);
        if self.spool_current.is_none() {
            // (A file in hand goes on a block per loop, between RADIUS batches.)
            self.scan_spool(rater)?;
        }
        Ok(())
    }

    /// Commits outbox xDR files written under temp names (by the flusher thread, or by
    /// [`Core::flush_outbox`]) and renames them; on failure deletes them. True if committed.
    fn commit_flush(&mut self, rater: &mut BatchRater<'_>, p: crate::outbox::Prepared) -> bool {
        match rater
            .ledger
            .commit_outbox_flush(&p.files, p.first, p.last, now_secs())
        {
            Ok(()) => {
                tracing::debug!(
                    rows = p.rows,
                    files = p.files.len(),
                    "xDR outbox flushed to Parquet"
                );
                self.live.metrics.outbox_flushed(p.rows);
                true
            }
            Err(e) => {
                if e.before_commit() {
                    p.discard();
                }
                tracing::error!(error = %e, "xDR outbox flush failed; will retry");
                false
            }
        }
    }

    /// Writes waiting outbox xDRs to Parquet on this thread (at a graceful stop, after the
    /// flusher thread stopped), commits, renames. Returns the rows flushed.
    fn flush_outbox(&mut self, rater: &mut BatchRater<'_>) -> Result<usize, ServeError> {
        let rows = rater.ledger.outbox(crate::outbox::FLUSH_ROWS)?;
        let Some(p) = crate::outbox::write_files(rater.ledger.xdr_root(), &rows)? else {
            return Ok(0);
        };
        let n = p.rows;
        if !self.commit_flush(rater, p) {
            return Err(ServeError::Batch(BatchError::Io {
                path: rater.ledger.xdr_root().display().to_string(),
                source: std::io::Error::other("xDR outbox flush not committed"),
            }));
        }
        Ok(n)
    }

    /// Rates CDR files dropped into the spool, a block per call ([`SPOOL_BLOCK_BYTES`]):
    /// the file in hand first, else the first waiting one; moves each to `done/` or
    /// `failed/` once rated to its end.
    fn scan_spool(&mut self, rater: &mut BatchRater<'_>) -> Result<(), ServeError> {
        let spool = self.catalog.spool_dir.clone();
        let (f, mut so_far) = match self.spool_current.take() {
            Some((f, s)) if f.exists() => (f, s),
            _ => match self.next_spool_file() {
                Some(f) => (f, crate::batch::FileSummary::default()),
                None => return Ok(()),
            },
        };
        let format = self.catalog.spool_format_of(&f);
        match rater.rate_file(&f, format, &NoProgress) {
            Ok(s) if !s.finished => {
                so_far.absorb(&s);
                self.spool_current = Some((f, so_far));
            }
            Ok(s) => {
                so_far.absorb(&s);
                let s = so_far;
                self.spool_files += 1;
                tracing::info!(file = %f.display(), records = s.records, xdrs = s.xdrs, charged = %s.charged, bad_lines = s.bad_lines, already_rated = s.already_rated, secs = s.elapsed.as_secs_f64(), "spool file rated");
                self.live.metrics.cdr_file_rated(&s);
                move_into(&f, &spool.join("done"), None);
                self.spool_current = self
                    .next_spool_file()
                    .map(|f| (f, crate::batch::FileSummary::default()));
            }
            Err(e) => {
                self.spool_files += 1;
                tracing::error!(file = %f.display(), error = %e, records_before = so_far.records, "spool file failed");
                move_into(&f, &spool.join("failed"), Some(&e.to_string()));
                self.live.metrics.cdr_file_failed();
                if rater.stale {
                    // Memory may hold charges the ledger does not: stop before any commit.
                    return Err(ServeError::Batch(e));
                }
                self.spool_current = self
                    .next_spool_file()
                    .map(|f| (f, crate::batch::FileSummary::default()));
            }
        }
        Ok(())
    }

    /// The first complete file waiting in the spool (or its per-format subdirectories).
    fn next_spool_file(&self) -> Option<PathBuf> {
        let spool = &self.catalog.spool_dir;
        let entries = std::fs::read_dir(spool).ok()?;
        // The spool itself, and a subdirectory per format (`spool/<format name>/`).
        let mut entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
        let subdirs: Vec<PathBuf> = self
            .catalog
            .cdr_formats
            .iter()
            .map(|t| spool.join(&t.name))
            .filter(|d| d.is_dir())
            .collect();
        for d in subdirs {
            if let Ok(more) = std::fs::read_dir(d) {
                entries.extend(more.flatten());
            }
        }
        entries
            .into_iter()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && !name.ends_with(".tmp") && !name.ends_with(".err")
            })
            .filter(|p| {
                // A file still being written is left for the next scan.
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .map(|m| m.elapsed().unwrap_or_default() >= Duration::from_secs(1))
                    .unwrap_or(false)
            })
            .min()
    }
}

/// Moves `file` into `dir` (created), writing `<name>.err` beside it when given an error.
fn move_into(file: &Path, dir: &Path, err: Option<&str>) {
    let _ = std::fs::create_dir_all(dir);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = dir.join(&name);
    let mut k = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{k}"));
        k += 1;
    }
    if let Err(e) = std::fs::rename(file, &target) {
        tracing::error!(file = %file.display(), error = %e, "cannot move spool file");
        return;
    }
    if let Some(msg) = err {
        let _ = std::fs::write(
            target.with_file_name(format!(
                "{}.err",
                target.file_name().unwrap_or_default().to_string_lossy()
            )),
            format!("{msg}\n"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 item 4: no single packet fails a batch. With poison packets (the ledger
    /// refuses any part holding one) among the others, every other packet is committed, in
    /// order, in parts holding no poison; each poison packet is isolated; attempts stay
    /// within the bound.
    #[test]
    fn bisect_commits_everything_but_the_poison() {
        let cases: Vec<(usize, Vec<usize>)> = vec![
            (0, vec![]),
            (7, vec![]),
            (1, vec![0]),
            (40, vec![5, 17]),
            (2048, vec![0, 1, 1000, 2047]),
            (64, (0..64).collect()),
        ];
        for (n, poison) in cases {
            let mut attempts = 0;
            let out = bisect(n, |r| {
                attempts += 1;
                if poison.iter().any(|p| r.contains(p)) {
                    Attempt::Refused
                } else {
                    Attempt::Committed
                }
            });
            assert_eq!(out.poisoned, poison, "n = {n}");
            let committed: Vec<usize> = out.committed.iter().cloned().flatten().collect();
            let want: Vec<usize> = (0..n).filter(|i| !poison.contains(i)).collect();
            assert_eq!(committed, want, "n = {n}: committed in order");
            assert!(out.unfinished.is_empty());
            assert!(attempts <= 4 * n + 8, "n = {n}: {attempts} attempts");
        }
    }

    /// A part is tried again when the attempt learned something (existing keys); a fatal
    /// failure leaves the rest unacknowledged; a closure that never settles is cut off by
    /// the attempt budget.
    #[test]
    fn bisect_retries_and_stops() {
        let mut calls = Vec::new();
        let out = bisect(10, |r| {
            calls.push(r);
            if calls.len() == 1 {
                Attempt::Retry
            } else {
                Attempt::Committed
            }
        });
        assert_eq!(calls, vec![0..10, 0..10]);
        assert_eq!(out.committed, vec![0..10]);

        let out = bisect(8, |r| match (r.start, r.end) {
            (0, 8) => Attempt::Refused,
            (0, _) => Attempt::Committed,
            _ => Attempt::Fatal,
        });
        assert_eq!(out.committed, vec![0..4]);
        assert_eq!(out.unfinished, vec![4..8]);

        let mut n = 0;
        let out = bisect(3, |_| {
            n += 1;
            Attempt::Retry
        });
        assert_eq!(out.unfinished, vec![0..3]);
        assert_eq!(n, 4 * 3 + 8);
    }
}
