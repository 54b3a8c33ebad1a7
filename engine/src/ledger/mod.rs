//! The ledger: subscribers, the credit journal, processed CDR files, rated batches and
//! sequences, in SQLite (WAL, `synchronous=FULL`, so a commit is on disk when it returns).
//!
//! Every credit movement is a journal row with a unique idempotency key; balances are
//! materialized in `users.credit` in the same transaction. Writes are batched: one
//! transaction per batch of records. The exactly-once handshake with the Parquet files is
//! described in ARCHITECTURE.md: xDR files are written and fsynced under a temp name before
//! the commit that records them, renamed after it, and [`Ledger::open`] finishes or removes
//! whatever a crash left in between.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use rust_decimal::Decimal;

use crate::xdr;

pub mod checkpoint;
mod clients;
pub mod events;
mod packages;
mod read;
pub use clients::{ClientBefore, RefundCommit};
pub use events::{EventStore, EventView, StoredEvent};
pub use packages::{package_json, package_json_with, PackageFee, PackageWrite};
pub use read::{
    run_sql, ClientRecord, JournalEntry, LedgerRead, Reader, RuleUsage, SqlAnswer, SqlError,
    SqlLimits,
};

/// Errors of the ledger boundary.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("data dir {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {path} is in use by another ratel process{pid}; while `ratel serve` runs, drop CDR files into its spool instead")]
    Locked { path: String, pid: String },
    #[error("ledger {path}: corrupt value {what}: {value:?}")]
    Corrupt {
        path: String,
        what: String,
        value: String,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("no user with id {0}")]
    NoSuchClient(i64),
    /// The COMMIT failed or a file rename after it did: the commit may have happened, so
    /// the temp files must stay (the next open renames those the ledger recorded and
    /// deletes the others). Callers delete temp files only on the other errors.
    #[error("{0} (at or after the commit: its xDR files are left for the next open to settle)")]
    AtCommit(Box<LedgerError>),
}

impl LedgerError {
    /// Whether the failed commit's temp files may be deleted (it certainly did not happen).
    pub fn before_commit(&self) -> bool {
        !matches!(self, LedgerError::AtCommit(_))
    }
}

/// Creates `dir` and missing parents readable by the owner only (0700 on Unix): the ledger
/// holds subscriber passwords and balances. An existing directory keeps its mode.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[allow(unused_mut)]
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    // Each new directory's entry durable, as every directory of the data dir.
    xdr::create_dir_durable_with(dir, b)
}

/// Creates an empty `path` with mode 0600 when it does not exist yet, so SQLite opens it
/// instead of creating it with the umask's mode (its -wal and -shm files copy that mode).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Holds the data dir's lock file for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the exclusive lock of a data dir (creating the dir), or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: data_dir.display().to_string(),
            source,
        };
        create_private_dir(data_dir).map_err(io)?;
        let path = data_dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| format!(" (pid {})", s.trim()))
                    .unwrap_or_default();
                return Err(LedgerError::Locked {
                    path: data_dir.display().to_string(),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        use std::io::Write;
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = write!(f, "{}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

/// A subscriber as the rating loop needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: i64,
    pub username: Option<String>,
    pub group_name: String,
    pub credit: Decimal,
}

/// A CDR file rated to the end: what a later, grown copy of it is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatedFile {
    pub file_hash: String,
    pub path: String,
    pub size: u64,
    /// Line number after the file's last record.
    pub next_line: u64,
}

/// Progress of a CDR file, keyed by its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProgress {
    pub file_hash: String,
    pub path: String,
    pub done: bool,
    pub next_offset: u64,
    pub next_line: u64,
    pub records: u64,
}

/// One subscriber's credit movement in a batch.
#[derive(Debug, Clone)]
pub struct Movement {
    pub user_id: i64,
    /// Signed: a charge is negative.
    pub amount: Decimal,
    /// The user's balance after this movement (and every earlier one).
    pub balance_after: Decimal,
}

/// An xDR file written under its temp name, to be recorded by a commit.
#[derive(Debug, Clone)]
pub struct PendingFile {
    pub final_path: PathBuf,
    pub rows: u64,
    pub min_login: i64,
    pub max_logout: i64,
}

/// Everything one CDR batch commits at once.
#[derive(Debug, Clone)]
pub struct CdrBatchCommit {
    pub file_hash: String,
    pub path: String,
    pub format: String,
    pub file_size: u64,
    /// Hash of the file's head (see [`crate::batch::FileIdentity`]): recognises a later
    /// copy of the same file that was changed inside the part already rated.
    pub head_hash: String,
    /// Byte offset and line after this batch.
    pub next_offset: u64,
    pub next_line: u64,
    pub done: bool,
    /// Fold the pending movements into balances with this commit: the rater sets it at a
    /// file's end unless its caller folds after several files
    /// ([`crate::batch::BatchRater::fold_each_file`]). Pending movements are folded every
    /// [`FOLD_EVERY_BATCHES`] batches regardless.
    pub fold: bool,
    pub records: u64,
    /// First xDR id of the batch and the next free id after it.
    pub first_xdr: u64,
    pub next_xdr: u64,
    pub movements: Vec<Movement>,
    /// Package quota the batch's calls took: (client package id, voice left, data left),
    /// in order (the last per package is its state).
    pub quota: Vec<crate::packages::QuotaChange>,
    /// 16-byte call-id keys of the rated records (for duplicate detection).
    pub call_keys: Vec<u8>,
    pub files: Vec<PendingFile>,
    pub now: i64,
}

/// The ledger store.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    xdr_root: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users(
  user_id INTEGER PRIMARY KEY,
  username TEXT UNIQUE,
  password TEXT,
  group_name TEXT NOT NULL,
  isp_name TEXT NOT NULL DEFAULT 'Main',
  credit TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  first_login INTEGER,
  period_start INTEGER,
  real_first_login INTEGER,
  status TEXT NOT NULL DEFAULT 'Package');
CREATE TABLE IF NOT EXISTS journal(
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  amount TEXT NOT NULL,
  balance_after TEXT NOT NULL,
  kind TEXT NOT NULL,
  idem_key TEXT NOT NULL UNIQUE,
  comment TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cdr_files(
  file_hash TEXT PRIMARY KEY,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  format TEXT NOT NULL,
  done INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  next_line INTEGER NOT NULL,
  records INTEGER NOT NULL,
  updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
  batch_id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  first_xdr INTEGER NOT NULL,
  next_xdr INTEGER NOT NULL,
  call_keys BLOB NOT NULL,
  committed_at INTEGER NOT NULL,
  movements BLOB NOT NULL DEFAULT x'',
  applied INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS xdr_files(
  path TEXT PRIMARY KEY,
  batch_id INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  min_login INTEGER NOT NULL,
  max_logout INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seq(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions(
  nas TEXT NOT NULL,
  session_id TEXT NOT NULL,
  state TEXT NOT NULL,
  PRIMARY KEY(nas, session_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS radius_closed(
  nas TEXT NOT NULL,
  session_id TEXT NOT NULL,
  closed_at INTEGER NOT NULL,
  PRIMARY KEY(nas, session_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS radius_closed_at ON radius_closed(closed_at);
CREATE TABLE IF NOT EXISTS xdr_outbox(xdr_id INTEGER PRIMARY KEY, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rule_usage(
  user_id INTEGER NOT NULL,
  rule TEXT NOT NULL,
  credit TEXT NOT NULL,
  seconds INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  PRIMARY KEY(user_id, rule)) WITHOUT ROWID;
INSERT OR IGNORE INTO seq(name, value) VALUES ('xdr', 1);
";

/// Page cache of the writing connection, KiB (`RATEL_LEDGER_CACHE_KIB` overrides).
///
/// Not as big as the ledger, by measurement. Unpatched SQLite made every commit after a
/// B-tree page swap scan the whole cache (28% of the core thread at 64 RADIUS requests in
/// flight with 256 MiB, 5% with 16 MiB); the bundled SQLite is patched (vendor/README.md) and
/// that scan is gone, but 64 and 256 MiB still measured no better than 16 MiB at 64 in flight
/// (five alternating runs each, 100k subscribers, a 150 MB ledger): a page missing from the
/// cache is a 4 KiB read from the OS page cache.
pub const DEFAULT_CACHE_KIB: i64 = 16 * 1024;

/// `RATEL_LEDGER_CACHE_KIB` when it holds a size from 1 MiB to 16 GiB, else `default`.
fn cache_kib(default: i64) -> i64 {
    std::env::var("RATEL_LEDGER_CACHE_KIB")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|k| (1024..=16 * 1024 * 1024).contains(k))
        .unwrap_or(default)
}

/// Page cache of a batch run's connection (`ratel rate`), KiB, unless
/// `RATEL_LEDGER_CACHE_KIB` says otherwise. A run's fold rewrites the balance and adds a
/// journal row of every client it charged: ~25 MB of pages for 100k clients, which a
/// 16 MiB cache read (`pread`) and wrote back (`pwrite`) more than once — 79k and 49k
/// calls for the 2M-call month file, 38k and 25k with 64 MiB: the ledger's time −15%,
/// the run's kernel time −5% (four alternating pairs, 2026-12-04).
pub const BATCH_CACHE_KIB: i64 = 64 * 1024;

/// The ledger schema version this build writes (`PRAGMA user_version`). Each step of
/// [`migrate`] brings a ledger one version forward, in one transaction with the rest.
pub const SCHEMA_VERSION: i64 = 6;

/// Version 2 (issue 11, DESIGN.md Part 2 "The domain model"): companies, accounts, profile
/// fields, the client log, refunds; journal rows typed `payment` / `usage` / `package_fee` /
/// `refund` with the actor who made them; clients archived or deleted.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS companies(
  company_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  type INTEGER NOT NULL DEFAULT 10,
  prepaid INTEGER NOT NULL DEFAULT 1,
  credit TEXT NOT NULL DEFAULT '0',
  created_at INTEGER NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO companies(company_id, name) VALUES (1, 'Main');
INSERT OR IGNORE INTO companies(name) SELECT DISTINCT isp_name FROM users WHERE isp_name <> 'Main';
ALTER TABLE users ADD COLUMN company_id INTEGER NOT NULL DEFAULT 1;
UPDATE users SET company_id = coalesce((SELECT company_id FROM companies c WHERE c.name = users.isp_name), 1);
ALTER TABLE users ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
ALTER TABLE users ADD COLUMN deleted_username TEXT;
CREATE TABLE IF NOT EXISTS accounts(
  kind TEXT NOT NULL,
  ident TEXT NOT NULL,
  user_id INTEGER NOT NULL,
  created_at INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(kind, ident)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accounts_user ON accounts(user_id);
INSERT OR IGNORE INTO accounts(kind, ident, user_id, created_at)
  SELECT 'radius', username, user_id, created_at FROM users WHERE username IS NOT NULL;
CREATE TABLE IF NOT EXISTS profile(
  user_id INTEGER NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY(user_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_log(
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  at INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  comment TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS client_log_user ON client_log(user_id);
ALTER TABLE journal ADD COLUMN actor TEXT NOT NULL DEFAULT '';
UPDATE journal SET kind = 'payment' WHERE kind IN ('initial', 'api');
UPDATE journal SET kind = 'usage' WHERE kind IN ('cdr', 'radius');
CREATE INDEX IF NOT EXISTS journal_user_time ON journal(user_id, created_at);
CREATE TABLE IF NOT EXISTS refunds(
  xdr_id INTEGER PRIMARY KEY,
  refund_xdr_id INTEGER NOT NULL,
  user_id INTEGER NOT NULL,
  journal_id INTEGER NOT NULL);
";

/// Version 6: a CDR batch's call keys in a table of their own. In the batch's row (16 bytes
/// a call, 6.4 MB for a 32 MiB block) every later write of that row copied them again: the
/// fold's `applied = 1` rewrote each folded batch whole, ~32 MB for the month file in the
/// last commit and as much again through the checkpoint, and reading a batch's movements,
/// stored after them, walked their overflow pages. Batches committed before keep their keys
/// in `batches.call_keys`; both are read at open.
const SCHEMA_V6: &str = "
CREATE TABLE IF NOT EXISTS batch_keys(
  batch_id INTEGER PRIMARY KEY,
  call_keys BLOB NOT NULL);
";

/// Brings a ledger written by an earlier version up to [`SCHEMA_VERSION`], one version at a
/// time, in one transaction; a ledger from a newer ratel is refused (it may hold what this
/// build does not know how to keep).
fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(MigrateError::Newer(version));
    }
    // The base tables (version 1's); nothing is written before the version is checked.
    tx.execute_batch(SCHEMA)?;
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        let mut st = tx.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = st.query_map([], |r| r.get::<_, String>(0))?;
        for n in names {
            if n? == column {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if version < 1 {
        // Version 1: the ledger of issue 10/13 (before user_version was kept). Columns added
        // then are checked by name: a ledger may have either, both or none.
        if !has_column("cdr_files", "head_hash")? {
            // Files rated before have no head hash: a changed copy of one is rated as a new
            // file (its call ids still stop repeats of the records themselves).
            tx.execute_batch(
                "ALTER TABLE cdr_files ADD COLUMN head_hash TEXT;
                 CREATE INDEX IF NOT EXISTS cdr_files_head ON cdr_files(head_hash);",
            )?;
        }
        if !has_column("users", "lock_reason")? {
            // NULL is active, a reason string is locked.
            tx.execute_batch("ALTER TABLE users ADD COLUMN lock_reason TEXT;")?;
        }
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    if version < 3 {
        // When each remembered closed session ended by the NAS's clock: a Start after it
        // with the same Acct-Session-Id is a new session (NULL for older rows: unknown).
        tx.execute_batch("ALTER TABLE radius_closed ADD COLUMN ended INTEGER;")?;
    }
    if version < 4 {
        tx.execute_batch(events::SCHEMA_V4)?;
    }
    if version < 5 {
        tx.execute_batch(packages::SCHEMA_V5)?;
    }
    if version < 6 {
        tx.execute_batch(SCHEMA_V6)?;
    }
    // `xdr_trash` joined version 5 after the first ledgers of it were written.
    tx.execute_batch(packages::XDR_TRASH)?;
    // The batches not yet folded, found without reading every batch ever committed: every
    // CDR block's commit counts them and the fold reads them, and a full scan of `batches`
    // (one row per outbox flush, 2.6M in a month of `serve`, and each CDR batch's call
    // keys, which the scan reads through to reach `applied`) made a 500-call file take
    // 300 ms instead of 22. An index is no change of format: older builds ignore it.
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS batches_unapplied ON batches(batch_id) WHERE applied = 0;",
    )?;
    // Every journal lookup by client also bounds the time (`journal_user_time`, version 2):
    // `journal_user` on the client alone duplicated that index's prefix, one more B-tree
    // leaf written for every charge of every RADIUS commit. Dropped at each open (an older
    // build's base schema creates it again when it opens the ledger; it reads the same).
    tx.execute_batch("DROP INDEX IF EXISTS journal_user;")?;
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "ledger schema migrated"
        );
    }
    tx.commit()?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema version {0} was written by a newer ratel (this one knows up to {SCHEMA_VERSION}); run that version, or restore a backup")]
    Newer(i64),
}

/// The ledger `meta` key of the API token signing key (Tariscope JWTs): 32 random bytes,
/// hex, made once, so tokens survive a restart.
pub const TOKEN_KEY: &str = "api_token_key";
/// The ledger `meta` key of this installation's public id (16 hex digits, made once).
pub const INSTALLATION_ID: &str = "installation_id";

enum TokenKeyError {
    Sqlite(rusqlite::Error),
    Random(String),
}

fn ensure_token_key(conn: &Connection) -> Result<(), TokenKeyError> {
    let have: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [TOKEN_KEY], |r| {
            r.get(0)
        })
        .optional()
        .map_err(TokenKeyError::Sqlite)?;
    if have.is_none() {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| TokenKeyError::Random(e.to_string()))?;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
            params![TOKEN_KEY, hex],
        )
        .map_err(TokenKeyError::Sqlite)?;
    }
    // A stable, public id of this installation (Tariscope's `serial`).
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| TokenKeyError::Random(e.to_string()))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
        params![INSTALLATION_ID, hex],
    )
    .map_err(TokenKeyError::Sqlite)?;
    Ok(())
}

fn parse_dec(path: &Path, what: &str, s: &str) -> Result<Decimal, LedgerError> {
    s.parse().map_err(|_| LedgerError::Corrupt {
        path: path.display().to_string(),
        what: what.into(),
        value: s.into(),
    })
}

impl Ledger {
    /// Opens (creating) the ledger of a data dir and finishes what a crash interrupted.
    /// The caller must hold the dir's [`DataDirLock`].
    pub fn open(data_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = data_dir.join("ledger.sqlite");
        let xdr_root = data_dir.join("xdr");
        create_private_dir(data_dir)
            .and_then(|()| xdr::create_dir_durable(&xdr_root))
            .map_err(|source| LedgerError::Io {
                path: xdr_root.display().to_string(),
                source,
            })?;
        create_private_file(&path).map_err(|source| LedgerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let sq = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sq)?;
        stable_plans(&conn).map_err(sq)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sq)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sq)?;
        conn.pragma_update(None, "cache_size", -cache_kib(DEFAULT_CACHE_KIB))
            .map_err(sq)?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sq)?;
        migrate(&mut conn).map_err(|e| match e {
            MigrateError::Sqlite(source) => LedgerError::Sqlite {
                path: path.display().to_string(),
                source,
            },
            MigrateError::Newer(_) => LedgerError::Corrupt {
                path: path.display().to_string(),
                what: "PRAGMA user_version".into(),
                value: e.to_string(),
            },
        })?;
        ensure_token_key(&conn).map_err(|e| match e {
            TokenKeyError::Sqlite(source) => LedgerError::Sqlite {
                path: path.display().to_string(),
                source,
            },
            TokenKeyError::Random(m) => LedgerError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(m),
            },
        })?;
        let mut ledger = Ledger {
            conn,
            path,
            xdr_root,
        };
        ledger.recover_files()?;
        ledger.recover_trash()?;
        ledger.fold_pending(chrono::Utc::now().timestamp())?;
        Ok(ledger)
    }

    fn sq(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// WAL pages after which a commit checkpoints by itself (SQLite's default 1000); `serve`
    /// sets 0 and leaves checkpoints to its [`checkpoint`] thread.
    pub fn set_wal_autocheckpoint(&self, pages: u32) -> Result<(), LedgerError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", pages)
            .map_err(self.sq())
    }

    /// The ledger's write-ahead log (`ledger.sqlite-wal`).
    pub fn wal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Root of the xDR Parquet tree.
    pub fn xdr_root(&self) -> &Path {
        &self.xdr_root
    }

    /// Renames temp xDR files whose commit happened; deletes those whose commit did not.
    fn recover_files(&self) -> Result<(), LedgerError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| LedgerError::Io { path: p, source }
        };
        let Ok(parts) = std::fs::read_dir(&self.xdr_root) else {
            return Ok(());
        };
        for part in parts.flatten() {
            let dir = part.path();
            if !dir.is_dir() {
                continue;
            }
            let mut changed = false;
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                let p = entry.path();
                let Some(final_path) = xdr::final_of_temp(&p) else {
                    continue;
                };
                let rel = self.rel_path(&final_path);
                let committed: bool = self
                    .conn
                    .query_row(
                        "SELECT 1 FROM xdr_files WHERE path = ?1",
                        [&rel],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(self.sq())?
                    .is_some();
                if committed {
                    tracing::warn!(file = %final_path.display(), "recovery: finishing the rename of a committed xDR file");
                    std::fs::rename(&p, &final_path).map_err(io(&p))?;
                } else {
                    tracing::warn!(file = %p.display(), "recovery: removing an xDR file whose batch never committed");
                    std::fs::remove_file(&p).map_err(io(&p))?;
                }
                changed = true;
            }
            if changed {
                xdr::sync_dir(&dir).map_err(io(&dir))?;
            }
        }
        Ok(())
    }

    /// Path of an xDR file relative to the xdr root (as stored in the ledger).
    pub fn rel_path(&self, p: &Path) -> String {
        rel_to(&self.xdr_root, p)
    }

    /// All subscribers.
    pub fn load_users(&self) -> Result<Vec<UserRow>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT user_id, username, group_name, credit FROM users ORDER BY user_id")
            .map_err(self.sq())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for row in rows {
            let (user_id, username, group_name, credit) = row.map_err(self.sq())?;
            out.push(UserRow {
                user_id,
                username,
                group_name,
                credit: parse_dec(&self.path, "users.credit", &credit)?,
            });
        }
        Ok(out)
    }

    /// A subscriber by username.
    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, LedgerError> {
        self.conn
            .query_row(
                "SELECT user_id, username, group_name, credit FROM users WHERE username = ?1",
                [username],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sq())?
            .map(|(user_id, username, group_name, credit)| {
                Ok(UserRow {
                    user_id,
                    username,
                    group_name,
                    credit: parse_dec(&self.path, "users.credit", &credit)?,
                })
            })
            .transpose()
    }

    /// The progress record of a CDR file, by content hash.
    pub fn file_progress(&self, file_hash: &str) -> Result<Option<FileProgress>, LedgerError> {
        self.conn
            .query_row(
                "SELECT file_hash, path, done, next_offset, next_line, records FROM cdr_files WHERE file_hash = ?1",
                [file_hash],
                |r| {
                    Ok(FileProgress {
                        file_hash: r.get(0)?,
                        path: r.get(1)?,
                        done: r.get::<_, i64>(2)? != 0,
                        next_offset: r.get::<_, i64>(3)? as u64,
                        next_line: r.get::<_, i64>(4)? as u64,
                        records: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()
            .map_err(self.sq())
    }

    /// Files rated to the end that are shorter than `size` bytes: the candidates a file of
    /// that size may be a grown copy of.
    pub fn rated_files_shorter_than(&self, size: u64) -> Result<Vec<RatedFile>, LedgerError> {
        self.rated_files(
            "size < ?1 AND size > 0",
            &(size.min(i64::MAX as u64) as i64),
        )
    }

    /// A file rated to the end whose head hash is `head_hash`, if any (the longest).
    pub fn rated_file_with_head(&self, head_hash: &str) -> Result<Option<RatedFile>, LedgerError> {
        Ok(self
            .rated_files("head_hash = ?1", &head_hash)?
            .into_iter()
            .max_by_key(|f| f.size))
    }

    /// Files rated to the end that satisfy `cond` (one `?1` parameter).
    fn rated_files(
        &self,
        cond: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Vec<RatedFile>, LedgerError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT file_hash, path, size, next_line FROM cdr_files WHERE done = 1 AND {cond}"
            ))
            .map_err(self.sq())?;
        let rows = st
            .query_map([arg], |r| {
                Ok(RatedFile {
                    file_hash: r.get(0)?,
                    path: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    next_line: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// Gives this connection [`BATCH_CACHE_KIB`] of page cache (`RATEL_LEDGER_CACHE_KIB`
    /// overrides it as it does the default): for a process that rates files, not `serve`.
    pub fn use_batch_cache(&self) -> Result<(), LedgerError> {
        self.conn
            .pragma_update(None, "cache_size", -cache_kib(BATCH_CACHE_KIB))
            .map_err(self.sq())
    }

    /// Every call-id key ever rated into this data dir: `batch_keys` (version 6 on) and the
    /// keys of batches committed before it, in `batches.call_keys`.
    pub fn load_call_keys(&self) -> Result<crate::call_keys::CallKeys, LedgerError> {
        let mut set = crate::call_keys::CallKeys::new();
        for sql in [
            "SELECT call_keys FROM batch_keys",
            "SELECT call_keys FROM batches WHERE length(call_keys) > 0",
        ] {
            let mut st = self.conn.prepare(sql).map_err(self.sq())?;
            let mut rows = st.query([]).map_err(self.sq())?;
            while let Some(r) = rows.next().map_err(self.sq())? {
                let blob: Vec<u8> = r.get(0).map_err(self.sq())?;
                // A hint, as `HashSet::reserve` was not: without the memory the set
                // grows key by key.
                let _ = set.try_reserve(blob.len() / 16);
                for k in blob.chunks_exact(16) {
                    set.insert(u128::from_le_bytes(k.try_into().expect("16 bytes")));
                }
            }
        }
        Ok(set)
    }

    /// The next free xDR id.
    pub fn next_xdr_id(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT value FROM seq WHERE name = 'xdr'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(self.sq())
    }

    /// Commits one rated CDR batch: credit movements, materialized balances, the batch and
    /// its call keys, its xDR files, the file's progress and the xDR sequence — atomically.
    /// The files must already be durable under their temp names; they are renamed here
    /// after the commit.
    /// Returns whether the commit folded the pending movements into balances.
    pub fn commit_cdr_batch(&mut self, b: &CdrBatchCommit) -> Result<bool, LedgerError> {
        self.commit_cdr_batch_when(b, || Ok(()))
    }

    /// [`Ledger::commit_cdr_batch`] whose xDR files are still being written: the batch's
    /// rows (and a fold) are staged in the open transaction meanwhile, and `files_written`
    /// — which returns once every temp file is durable — is called right before the COMMIT.
    /// If it fails, nothing is committed (the transaction is rolled back) and its error is
    /// returned as it is. The ledger's work of a block (its call keys, the movements, a
    /// fold of every charged client's balance and journal row) thus overlaps the Parquet
    /// encoding instead of following it; the commit still comes after the files.
    pub fn commit_cdr_batch_when(
        &mut self,
        b: &CdrBatchCommit,
        files_written: impl FnOnce() -> Result<(), LedgerError>,
    ) -> Result<bool, LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        let folded;
        {
            tx.execute(
                "INSERT INTO batches(source, first_xdr, next_xdr, call_keys, committed_at, movements, applied)
                 VALUES (?1, ?2, ?3, x'', ?4, ?5, ?6)",
                params![
                    format!("cdr:{}", &b.file_hash[..16]),
                    b.first_xdr as i64,
                    b.next_xdr as i64,
                    b.now,
                    encode_movements(&b.movements),
                    b.movements.is_empty() as i64
                ],
            )
            .map_err(sq)?;
            let batch_id = tx.last_insert_rowid();
            // Apart from the batch's row, which the fold rewrites (`SCHEMA_V6`).
            if !b.call_keys.is_empty() {
                tx.execute(
                    "INSERT INTO batch_keys(batch_id, call_keys) VALUES (?1, ?2)",
                    params![batch_id, b.call_keys],
                )
                .map_err(sq)?;
            }
            for m in &b.movements {
                let before = m
                    .balance_after
                    .checked_sub(m.amount)
                    .unwrap_or(m.balance_after);
                events::record_crossing(&tx, m.user_id, before, m.balance_after, b.now)
                    .map_err(sq)?;
            }
            record_xdr_files(&tx, &self.xdr_root, batch_id, &b.files).map_err(sq)?;
            packages::store_quota(&tx, &b.quota).map_err(sq)?;
            tx.execute(
                "INSERT INTO cdr_files(file_hash, path, size, format, done, next_offset, next_line, records, updated_at, head_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(file_hash) DO UPDATE SET done = ?5, next_offset = ?6, next_line = ?7,
                   records = records + ?8, updated_at = ?9, head_hash = ?10",
                params![b.file_hash, b.path, b.file_size as i64, b.format, b.done as i64, b.next_offset as i64, b.next_line as i64, b.records as i64, b.now, b.head_hash],
            )
            .map_err(sq)?;
            tx.execute(
                "UPDATE seq SET value = ?1 WHERE name = 'xdr'",
                [b.next_xdr as i64],
            )
            .map_err(sq)?;
            let pending: i64 = tx
                .query_row("SELECT count(*) FROM batches WHERE applied = 0", [], |r| {
                    r.get(0)
                })
                .map_err(sq)?;
            folded = b.fold || pending >= FOLD_EVERY_BATCHES;
            if folded {
                fold_pending(&tx, b.now).map_err(sq)?;
            }
        }
        // Dropping `tx` on an error rolls it back.
        files_written()?;
        tx.commit()
            .map_err(|e| LedgerError::AtCommit(Box::new(sq(e))))?;
        publish_files(&b.files).map_err(|e| LedgerError::AtCommit(Box::new(e)))?;
        Ok(folded)
    }

    /// Whether committed CDR batches wait to be folded into balances.
    pub fn has_pending_batches(&self) -> Result<bool, LedgerError> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM batches WHERE applied = 0)",
                [],
                |r| r.get(0),
            )
            .map_err(self.sq())
    }

    /// Folds CDR batches' movements into journal rows and balances (see [`fold_pending`]).
    pub fn fold_pending(&mut self, now: i64) -> Result<(), LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        fold_pending(&tx, now).map_err(sq)?;
        tx.commit().map_err(sq)
    }

    /// Sum of journal movements per user (for conservation checks and reports).
    pub fn journal_sum(&self, user_id: i64, kind: Option<&str>) -> Result<Decimal, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT amount FROM journal WHERE user_id = ?1 AND (?2 IS NULL OR kind = ?2)")
            .map_err(self.sq())?;
        let rows = st
            .query_map(params![user_id, kind], |r| r.get::<_, String>(0))
            .map_err(self.sq())?;
        let mut sum = Decimal::ZERO;
        for r in rows {
            sum += parse_dec(&self.path, "journal.amount", &r.map_err(self.sq())?)?;
        }
        Ok(sum)
    }
}

/// Everything one RADIUS batch commits at once.
#[derive(Debug, Default)]
pub struct RadiusCommit {
    /// (user_id, amount taken, balance after, idempotency key, the key's legacy form to
    /// check for too).
    pub charges: Vec<(i64, Decimal, Decimal, String, Option<String>)>,
    /// (nas, session id, packed state: `radius::state::pack`) of sessions still open.
    pub upserts: Vec<(String, String, Vec<u8>)>,
    /// (nas, session id, when it ended by the NAS's clock) of sessions closed.
    pub closed: Vec<(String, String, i64)>,
    /// (xdr id, xDR JSON) of closed sessions.
    pub xdrs: Vec<(u64, String)>,
    pub next_xdr: u64,
    pub now: i64,
    /// Forget closed-session keys older than this.
    pub forget_closed_before: i64,
    /// Charge-rule usage of closed sessions: (user id, rule, credit, seconds, bytes).
    pub rule_usage: Vec<(i64, String, Decimal, i64, i64)>,
    /// Users whose first session started in this batch: (user id, login time).
    pub first_logins: Vec<(i64, i64)>,
    /// Package quota the batch's updates took: (client package id, voice left, data
    /// left), in order.
    pub quota: Vec<crate::packages::QuotaChange>,
    /// Per user, the CDR amount committed but not yet folded (negative): the stored
    /// balance is the balance after less it, as the fold will add it.
    pub unfolded: std::collections::HashMap<i64, Decimal>,
    /// Commit without the WAL fsync: the caller fsyncs the WAL before it tells anyone.
    pub defer_fsync: bool,
}

impl Ledger {
    /// Commits one RADIUS batch: one fsync for all the packets in it, or none with
    /// [`RadiusCommit::defer_fsync`] (`synchronous=NORMAL` for this transaction only: the
    /// commit is atomic and in the WAL, durable once the caller has fsynced the WAL file,
    /// [`Ledger::wal_path`], which `serve`'s acknowledger does before it sends the batch's
    /// answers, `acks.rs`). Every other commit keeps its fsync (`synchronous=FULL`), which
    /// makes the WAL durable up to it, deferred commits before it included.
    pub fn commit_radius(&mut self, b: &RadiusCommit) -> Result<(), LedgerError> {
        if !b.defer_fsync {
            return self.commit_radius_tx(b);
        }
        self.set_synchronous("PRAGMA synchronous = NORMAL")?;
        let committed = self.commit_radius_tx(b);
        // Back to FULL whatever happened: no other commit may go without its fsync.
        let restored = self.set_synchronous("PRAGMA synchronous = FULL");
        committed.and(restored)
    }

    fn set_synchronous(&self, pragma: &str) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(pragma)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(self.sq())
    }

    fn commit_radius_tx(&mut self, b: &RadiusCommit) -> Result<(), LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        {
            let mut jr = tx
                .prepare_cached("INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, created_at) VALUES (?1, ?2, ?3, 'usage', ?4, ?5)")
                .map_err(sq)?;
            let mut up = tx
                .prepare_cached("UPDATE users SET credit = ?2 WHERE user_id = ?1")
                .map_err(sq)?;
            // A journal row per charge; one balance write per user per batch (the last).
            let mut last: std::collections::HashMap<i64, Decimal> =
                std::collections::HashMap::new();
            let mut legacy = tx
                .prepare_cached("SELECT 1 FROM journal WHERE idem_key = ?1")
                .map_err(sq)?;
            for (user_id, amount, after, key, legacy_key) in &b.charges {
                // A replay of an update charged under the key's older form: refused like a
                // key that exists (the core marks it charged and applies the batch again).
                if let Some(old) = legacy_key {
                    if legacy.exists([old]).map_err(sq)? {
                        return Err(LedgerError::Rejected(format!(
                            "charge {key} was taken before as {old}"
                        )));
                    }
                }
                jr.execute(params![
                    user_id,
                    (-*amount).to_string(),
                    after.to_string(),
                    key,
                    b.now
                ])
                .map_err(sq)?;
                // A crossing of zero by this charge, in order, in this very commit.
                let before = after.checked_add(*amount).unwrap_or(*after);
                events::record_crossing(&tx, *user_id, before, *after, b.now).map_err(sq)?;
                last.insert(*user_id, *after);
            }
            for (user_id, after) in last {
                let stored = match b.unfolded.get(&user_id) {
                    Some(a) => after.checked_sub(*a).ok_or_else(|| {
                        LedgerError::Rejected(format!(
                            "balance of user {user_id} out of range with the unfolded CDR amount {a}"
                        ))
                    })?,
                    None => after,
                };
                up.execute(params![user_id, stored.to_string()])
                    .map_err(sq)?;
            }
            // Closes first, then the sessions still open: a session id closed and opened
            // again in one batch (a NAS that reuses its ids: the old session's Stop, then
            // the new one's Start) is an open session after it. The other way round, the
            // new session's row was deleted, and after a restart its updates were taken
            // for late ones of the closed session and ignored. (`upserts` holds only
            // sessions open at the end of the batch.)
            let mut del = tx
                .prepare_cached("DELETE FROM sessions WHERE nas = ?1 AND session_id = ?2")
                .map_err(sq)?;
            let mut cl = tx
                .prepare_cached("INSERT OR REPLACE INTO radius_closed(nas, session_id, closed_at, ended) VALUES (?1, ?2, ?3, ?4)")
                .map_err(sq)?;
            for (nas, sid, ended) in &b.closed {
                del.execute(params![nas, sid]).map_err(sq)?;
                cl.execute(params![nas, sid, b.now, ended]).map_err(sq)?;
            }
            let mut ss = tx
                .prepare_cached("INSERT INTO sessions(nas, session_id, state) VALUES (?1, ?2, ?3) ON CONFLICT(nas, session_id) DO UPDATE SET state = ?3")
                .map_err(sq)?;
            for (nas, sid, state) in &b.upserts {
                ss.execute(params![nas, sid, state]).map_err(sq)?;
            }
            let mut ob = tx
                .prepare_cached("INSERT INTO xdr_outbox(xdr_id, row) VALUES (?1, ?2)")
                .map_err(sq)?;
            for (id, row) in &b.xdrs {
                ob.execute(params![*id as i64, row]).map_err(sq)?;
            }
            if !b.xdrs.is_empty() {
                tx.prepare_cached("UPDATE seq SET value = ?1 WHERE name = 'xdr'")
                    .and_then(|mut st| st.execute([b.next_xdr as i64]))
                    .map_err(sq)?;
            }
            // Summed per (user, rule) within the batch first: one read and write each.
            let mut usage: std::collections::BTreeMap<(i64, &str), (Decimal, i64, i64)> =
                std::collections::BTreeMap::new();
            for (user_id, rule, credit, secs, bytes) in &b.rule_usage {
                let e = usage
                    .entry((*user_id, rule.as_str()))
                    .or_insert((Decimal::ZERO, 0, 0));
                // Statistics: saturate rather than wrap (or panic) on absurd input.
                e.0 = e.0.checked_add(*credit).unwrap_or(Decimal::MAX);
                e.1 = e.1.saturating_add(*secs);
                e.2 = e.2.saturating_add(*bytes);
            }
            for ((user_id, rule), (credit, secs, bytes)) in &usage {
                let old: Option<(String, i64, i64)> = tx
                    .prepare_cached("SELECT credit, seconds, bytes FROM rule_usage WHERE user_id = ?1 AND rule = ?2")
                    .and_then(|mut st| {
                        st.query_row(params![user_id, rule], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()
                    })
                    .map_err(sq)?;
                let (c0, s0, b0) = match old {
                    Some((c, s, b)) => (c.parse::<Decimal>().unwrap_or_default(), s, b),
                    None => (Decimal::ZERO, 0, 0),
                };
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO rule_usage(user_id, rule, credit, seconds, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| st.execute(params![
                        user_id,
                        rule,
                        c0.checked_add(*credit).unwrap_or(Decimal::MAX).to_string(),
                        s0.saturating_add(*secs),
                        b0.saturating_add(*bytes)
                    ]))
                .map_err(sq)?;
            }
            packages::store_quota(&tx, &b.quota).map_err(sq)?;
            let mut fl = tx
                .prepare_cached("UPDATE users SET first_login = ?2, real_first_login = coalesce(real_first_login, ?2) WHERE user_id = ?1 AND first_login IS NULL")
                .map_err(sq)?;
            let mut done = std::collections::HashSet::new();
            for (user_id, at) in &b.first_logins {
                if !done.insert(*user_id) {
                    continue;
                }
                fl.execute(params![user_id, at]).map_err(sq)?;
            }
            if b.forget_closed_before > 0 {
                tx.prepare_cached("DELETE FROM radius_closed WHERE closed_at < ?1")
                    .and_then(|mut st| st.execute([b.forget_closed_before]))
                    .map_err(sq)?;
            }
        }
        tx.commit().map_err(sq)
    }

    /// Which of `keys` have a journal row already, under the key or under its legacy form
    /// (a replayed RADIUS update rebuilds the idempotency key of a charge taken before: it
    /// must charge nothing). Returns the keys (not their legacy forms) found.
    pub fn existing_journal_keys<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, Option<&'k str>)>,
    ) -> Result<HashSet<String>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM journal WHERE idem_key = ?1")
            .map_err(self.sq())?;
        let mut found = HashSet::new();
        for (k, legacy) in keys {
            let mut exists = st.exists([k]).map_err(self.sq())?;
            if let (false, Some(old)) = (exists, legacy) {
                exists = st.exists([old]).map_err(self.sq())?;
            }
            if exists {
                found.insert(k.to_string());
            }
        }
        Ok(found)
    }

    /// Rewrites the stored state of open sessions (a config reload remapped them), in one
    /// transaction: (nas, session id, packed state).
    pub fn save_session_states(
        &mut self,
        states: &[(String, String, Vec<u8>)],
    ) -> Result<(), LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        {
            let mut st = tx
                .prepare_cached("UPDATE sessions SET state = ?3 WHERE nas = ?1 AND session_id = ?2")
                .map_err(sq)?;
            for (nas, sid, state) in states {
                st.execute(params![nas, sid, state]).map_err(sq)?;
            }
        }
        tx.commit().map_err(sq)
    }

    /// Open sessions: (nas, session id, stored state: packed, or JSON from earlier builds).
    pub fn load_sessions(
        &self,
    ) -> Result<Vec<(String, String, crate::radius::state::Stored)>, LedgerError> {
        use crate::radius::state::Stored;
        use rusqlite::types::{FromSqlError, ValueRef};
        let mut st = self
            .conn
            .prepare("SELECT nas, session_id, state FROM sessions")
            .map_err(self.sq())?;
        let rows = st
            .query_map([], |r| {
                // JSON text from builds before the packed state, a BLOB since.
                let state = match r.get_ref(2)? {
                    ValueRef::Blob(b) => Stored::Packed(b.to_vec()),
                    ValueRef::Text(t) => Stored::Json(
                        std::str::from_utf8(t)
                            .map_err(|e| {
                                rusqlite::Error::FromSqlConversionFailure(
                                    2,
                                    rusqlite::types::Type::Text,
                                    Box::new(e),
                                )
                            })?
                            .to_string(),
                    ),
                    v => {
                        return Err(rusqlite::Error::FromSqlConversionFailure(
                            2,
                            v.data_type(),
                            Box::new(FromSqlError::InvalidType),
                        ))
                    }
                };
                Ok((r.get(0)?, r.get(1)?, state))
            })
            .map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// Recently closed sessions: (nas, session id, closed at, ended by the NAS's clock).
    #[allow(clippy::type_complexity)]
    pub fn load_closed(&self) -> Result<Vec<(String, String, i64, Option<i64>)>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT nas, session_id, closed_at, ended FROM radius_closed")
            .map_err(self.sq())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// Up to `limit` xDRs waiting in the outbox, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<xdr::OwnedXdr>, LedgerError> {
        read_outbox(&self.conn, &self.path, limit)
    }

    /// Records flushed outbox xDRs: their files (already durable under temp names) replace
    /// the outbox rows up to `max_xdr_id`, in one commit; then the files are renamed.
    pub fn commit_outbox_flush(
        &mut self,
        files: &[PendingFile],
        first_xdr: u64,
        max_xdr_id: u64,
        now: i64,
    ) -> Result<(), LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        {
            tx.execute(
                "INSERT INTO batches(source, first_xdr, next_xdr, call_keys, committed_at) VALUES ('radius', ?1, ?2, x'', ?3)",
                params![first_xdr as i64, max_xdr_id as i64 + 1, now],
            )
            .map_err(sq)?;
            let batch_id = tx.last_insert_rowid();
            record_xdr_files(&tx, &self.xdr_root, batch_id, files).map_err(sq)?;
            // Exactly the rows written to the files: a flush prepared off the core from an
            // older snapshot must not delete rows it did not write.
            let gone = tx
                .execute(
                    "DELETE FROM xdr_outbox WHERE xdr_id BETWEEN ?1 AND ?2",
                    [first_xdr as i64, max_xdr_id as i64],
                )
                .map_err(sq)?;
            let written: u64 = files.iter().map(|f| f.rows).sum();
            if gone as u64 != written {
                return Err(LedgerError::Rejected(format!(
                    "outbox flush of xDRs {first_xdr}..={max_xdr_id} wrote {written} rows but the outbox holds {gone} there; not committed"
                )));
            }
        }
        tx.commit()
            .map_err(|e| LedgerError::AtCommit(Box::new(sq(e))))?;
        publish_files(files).map_err(|e| LedgerError::AtCommit(Box::new(e)))
    }
}

/// The oldest `limit` outbox xDRs in id order, through any connection to the ledger at
/// `path` (the core's, or the outbox flusher's own).
pub fn read_outbox(
    conn: &rusqlite::Connection,
    path: &Path,
    limit: usize,
) -> Result<Vec<xdr::OwnedXdr>, LedgerError> {
    let sq = |source| LedgerError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let mut st = conn
        .prepare_cached("SELECT row FROM xdr_outbox ORDER BY xdr_id LIMIT ?1")
        .map_err(sq)?;
    let rows = st
        .query_map([limit as i64], |r| r.get::<_, String>(0))
        .map_err(sq)?;
    let mut out = Vec::new();
    for r in rows {
        let text = r.map_err(sq)?;
        out.push(
            serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt {
                path: path.display().to_string(),
                what: format!("xdr_outbox row ({e})"),
                value: text.chars().take(80).collect(),
            })?,
        );
    }
    Ok(out)
}

/// Plans that do not depend on bound values (SQLite's QPSG). Without it SQLite marks a
/// cached statement whose plan looked at a bound value (an ORDER BY or LIMIT next to a
/// parameter, a LIKE) expired at every new binding and parses it again at its next step:
/// `perf` of `ratel users import` showed a quarter of the time in `sqlite3Reprepare`.
pub(crate) fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// Unfolded CDR batches after which a commit folds them.
pub const FOLD_EVERY_BATCHES: i64 = 8;

/// One movement: user id (i64 LE), amount and balance after (rust_decimal's 16-byte form).
const MOVEMENT_BYTES: usize = 8 + 16 + 16;

fn encode_movements(ms: &[Movement]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ms.len() * MOVEMENT_BYTES);
    for m in ms {
        out.extend_from_slice(&m.user_id.to_le_bytes());
        out.extend_from_slice(&m.amount.serialize());
        out.extend_from_slice(&m.balance_after.serialize());
    }
    out
}

fn decode_movements(b: &[u8]) -> impl Iterator<Item = (i64, Decimal, Decimal)> + '_ {
    b.chunks_exact(MOVEMENT_BYTES).map(|c| {
        let id = i64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        let amount = Decimal::deserialize(c[8..24].try_into().expect("16 bytes"));
        let after = Decimal::deserialize(c[24..40].try_into().expect("16 bytes"));
        (id, amount, after)
    })
}

/// Folds the movements of unapplied CDR batches, in commit order, into one journal row per
/// subscriber (idempotency key `cdr:<batch range>:<user>`) and the materialized balances.
///
/// A CDR block commit stores its credit movements compactly in its batch row (one write,
/// however many subscribers it touched); folding turns them into journal rows and
/// `users.credit` every few batches, at the end of a file, and at open. The sum of a user's
/// amounts is added to the stored balance (read here): `serve` answers RADIUS between
/// blocks of a spool file and its commits store balances without the CDR movements not
/// yet folded (`BatchRater::unfolded`), so the stored balance plus the pending amounts is
/// the balance whatever was committed in between. (Alone, as in `ratel rate`, that equals
/// the last movement's balance.)
fn fold_pending(tx: &rusqlite::Transaction<'_>, now: i64) -> Result<(), rusqlite::Error> {
    let started = std::time::Instant::now();
    let mut st =
        tx.prepare("SELECT batch_id, movements FROM batches WHERE applied = 0 ORDER BY batch_id")?;
    let rows: Vec<(i64, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(());
    }
    let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
    let bad = |id: i64, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("users.credit of user {id}: {what}").into(),
        )
    };
    // Each user's sum over the batches, then in user order (the journal's rows and the
    // balances' pages in key order). A BTreeMap of the ~500k movements of the month file's
    // five blocks cost as much as the statements below: its inserts, then freeing its nodes.
    let movements = rows.iter().map(|(_, b)| b.len() / MOVEMENT_BYTES).max();
    let mut sums: std::collections::HashMap<i64, Decimal, ahash::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(
            movements.unwrap_or(0),
            ahash::RandomState::new(),
        );
    for (_, blob) in &rows {
        for (id, amount, _) in decode_movements(blob) {
            let sum = sums.entry(id).or_default();
            *sum = sum
                .checked_add(amount)
                .ok_or_else(|| bad(id, "CDR charges out of range"))?;
        }
    }
    let mut per_user: Vec<(i64, Decimal)> = sums.into_iter().collect();
    per_user.sort_unstable_by_key(|&(id, _)| id);
    let mut jr = tx.prepare_cached(
        "INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, created_at) VALUES (?1, ?2, ?3, 'usage', ?4, ?5)",
    )?;
    let mut up = tx.prepare_cached("UPDATE users SET credit = ?2 WHERE user_id = ?1")?;
    let mut get = tx.prepare_cached("SELECT credit FROM users WHERE user_id = ?1")?;
    let subscribers = per_user.len();
    let (mut amount_s, mut after_s, mut key) = (String::new(), String::new(), String::new());
    for (id, amount) in per_user {
        let stored: Decimal = get.query_row([id], |r| {
            r.get_ref(0)?
                .as_str()?
                .parse()
                .map_err(|_| bad(id, "not a decimal"))
        })?;
        let after = stored
            .checked_add(amount)
            .ok_or_else(|| bad(id, "out of range after the CDR charges"))?;
        use std::fmt::Write as _;
        amount_s.clear();
        after_s.clear();
        key.clear();
        let _ = write!(amount_s, "{amount}");
        let _ = write!(after_s, "{after}");
        let _ = write!(key, "cdr:{first}-{last}:{id}");
        jr.execute(params![id, amount_s, after_s, key, now])?;
        up.execute(params![id, after_s])?;
    }
    tx.execute(
        "UPDATE batches SET applied = 1, movements = x'' WHERE applied = 0 AND batch_id BETWEEN ?1 AND ?2",
        params![first, last],
    )?;
    tracing::debug!(
        batches = rows.len(),
        first,
        last,
        subscribers,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "CDR batches folded into the journal and balances (not yet committed)"
    );
    Ok(())
}

impl Ledger {
    /// Every xDR file the ledger references (for compaction).
    pub fn xdr_day_files(&self) -> Result<Vec<crate::compact::DayFile>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT path, rows, min_login, max_logout FROM xdr_files ORDER BY path")
            .map_err(self.sq())?;
        let rows = st
            .query_map([], |r| {
                Ok(crate::compact::DayFile {
                    path: r.get(0)?,
                    rows: r.get::<_, i64>(1)?.max(0) as u64,
                    min_login: r.get(2)?,
                    max_logout: r.get(3)?,
                })
            })
            .map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// Replaces a compacted day's files by the merged one (under its temp name, durable) in
    /// one transaction — the old paths go to `xdr_trash`, deleted after `delete_after` —
    /// then renames the merged file and moves the old ones to the trash. Refused, changing
    /// nothing and removing the merged temp file, when a planned file is no longer
    /// referenced. An error after the commit leaves the committed merged file where it is
    /// (under its temp name if the rename failed: readers and `ratel backup` open it there,
    /// the next open renames it) and old files still in the tree are moved by the next
    /// [`Ledger::empty_xdr_trash`]: the merged file must never be removed once committed.
    pub fn commit_compaction(
        &mut self,
        old: &[crate::compact::DayFile],
        merged: &PendingFile,
        delete_after: i64,
    ) -> Result<(), LedgerError> {
        let path = self.path.display().to_string();
        let sq = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let merged_rel = rel_to(&self.xdr_root, &merged.final_path);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq)?;
        let staged = (|| {
            for f in old {
                if f.path == merged_rel {
                    // The merged file would replace itself (and then go to the trash).
                    return Err(LedgerError::Rejected(format!(
                        "compaction: {} is one of the files it replaces",
                        f.path
                    )));
                }
                let n = tx
                    .execute("DELETE FROM xdr_files WHERE path = ?1", [&f.path])
                    .map_err(sq)?;
                if n != 1 {
                    return Err(LedgerError::Rejected(format!(
                        "compaction: {} is no longer an xDR file of the ledger",
                        f.path
                    )));
                }
                tx.execute(
                    "INSERT OR REPLACE INTO xdr_trash(path, delete_after) VALUES (?1, ?2)",
                    params![f.path, delete_after],
                )
                .map_err(sq)?;
            }
            record_xdr_files(&tx, &self.xdr_root, 0, std::slice::from_ref(merged)).map_err(sq)
        })();
        if let Err(e) = staged {
            drop(tx);
            let _ = std::fs::remove_file(xdr::temp_path(&merged.final_path));
            return Err(e);
        }
        // A failed COMMIT may still have committed: the temp file is left to the next open,
        // which renames or removes it by what the ledger holds.
        tx.commit().map_err(sq)?;
        publish_files(std::slice::from_ref(merged))?;
        self.move_to_trash(old.iter().map(|f| f.path.as_str()))
    }

    /// Moves replaced files out of the xDR tree into the trash (a reader that listed them
    /// still finds them there, see [`xdr::open_listed`]); one already moved is skipped.
    fn move_to_trash<'p>(&self, rel: impl Iterator<Item = &'p str>) -> Result<(), LedgerError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| LedgerError::Io { path: p, source }
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        let moved = || -> Result<(), LedgerError> {
            for r in rel {
                let from = self.xdr_root.join(r);
                let Some(to) = xdr::trash_path(&from) else {
                    continue;
                };
                if !from.exists() {
                    continue;
                }
                let dir = to
                    .parent()
                    .expect("a trash path has a directory")
                    .to_path_buf();
                xdr::create_dir_durable(&dir).map_err(io(&dir))?;
                std::fs::rename(&from, &to).map_err(io(&from))?;
                for d in [from.parent().map(Path::to_path_buf), Some(dir)]
                    .into_iter()
                    .flatten()
                {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
            Ok(())
        };
        let result = moved();
        // The moves made before a failed one are made durable too: once moved, a file is
        // not seen by the next recovery (it is no longer in the tree).
        for d in dirs {
            xdr::sync_dir(&d).map_err(io(&d))?;
        }
        result
    }

    /// Finishes what a crash interrupted after a compaction committed: replaced files still
    /// in the tree go to the trash.
    fn recover_trash(&self) -> Result<(), LedgerError> {
        let paths: Vec<String> = {
            let mut st = self
                .conn
                .prepare(
                    "SELECT path FROM xdr_trash WHERE path NOT IN (SELECT path FROM xdr_files)",
                )
                .map_err(self.sq())?;
            let rows = st.query_map([], |r| r.get(0)).map_err(self.sq())?;
            rows.collect::<Result<_, _>>().map_err(self.sq())?
        };
        self.move_to_trash(paths.iter().map(String::as_str))
    }

    /// Deletes the replaced xDR files whose grace period ended by `now`, then forgets them.
    /// Returns how many.
    pub fn empty_xdr_trash(&mut self, now: i64) -> Result<usize, LedgerError> {
        // Replaced files a failed move left in the tree go first (else a glob over the tree
        // would count their rows twice, and once forgotten below they would stay there).
        self.recover_trash()?;
        let due: Vec<String> = {
            let mut st = self
                .conn
                .prepare("SELECT path FROM xdr_trash WHERE delete_after <= ?1")
                .map_err(self.sq())?;
            let rows = st.query_map([now], |r| r.get(0)).map_err(self.sq())?;
            rows.collect::<Result<_, _>>().map_err(self.sq())?
        };
        // The files first, their directories fsynced, then the rows: a row forgotten while
        // its file's removal is not on disk yet could leave, after a power cut, a file that
        // nothing removes any more.
        let mut removed: Vec<&String> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut failed = None;
        for p in &due {
            let file =
                xdr::trash_path(&self.xdr_root.join(p)).unwrap_or_else(|| self.xdr_root.join(p));
            // Gone already (an earlier removal whose run stopped before its fsync): its
            // directory is fsynced all the same before the row goes.
            let removed_now = match std::fs::remove_file(&file) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(source) => {
                    failed = Some(LedgerError::Io {
                        path: file.display().to_string(),
                        source,
                    });
                    break;
                }
            };
            if let Some(d) = file.parent().filter(|d| removed_now || d.is_dir()) {
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
            }
            removed.push(p);
        }
        for d in &dirs {
            xdr::sync_dir(d).map_err(|source| LedgerError::Io {
                path: d.display().to_string(),
                source,
            })?;
        }
        for p in &removed {
            self.conn
                .execute("DELETE FROM xdr_trash WHERE path = ?1", [p])
                .map_err(self.sq())?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(due.len()),
        }
    }
}

/// `p` relative to the xDR root, as `xdr_files.path` stores it.
fn rel_to(xdr_root: &Path, p: &Path) -> String {
    p.strip_prefix(xdr_root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Records a batch's xDR files (still under their temp names) in the commit's transaction.
fn record_xdr_files(
    tx: &rusqlite::Transaction<'_>,
    xdr_root: &Path,
    batch_id: i64,
    files: &[PendingFile],
) -> Result<(), rusqlite::Error> {
    let mut xf = tx.prepare_cached("INSERT INTO xdr_files(path, batch_id, rows, min_login, max_logout) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for f in files {
        xf.execute(params![
            rel_to(xdr_root, &f.final_path),
            batch_id,
            f.rows as i64,
            f.min_login,
            f.max_logout
        ])?;
    }
    Ok(())
}

/// Renames committed temp files to their final names and fsyncs their directories.
pub fn publish_files(files: &[PendingFile]) -> Result<(), LedgerError> {
    let mut dirs: Vec<&Path> = Vec::new();
    for f in files {
        let tmp = xdr::temp_path(&f.final_path);
        std::fs::rename(&tmp, &f.final_path).map_err(|source| LedgerError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
        if let Some(d) = f.final_path.parent() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for d in dirs {
        xdr::sync_dir(d).map_err(|source| LedgerError::Io {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// What RADIUS authorization reads of a subscriber (see [`AuthReader`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: i64,
    pub password: Option<String>,
    pub group_name: String,
    /// The committed credit.
    pub credit: Decimal,
    /// Why the client is locked (`None`: it is not).
    pub lock_reason: Option<String>,
    /// The client is archived (refused like a locked one).
    pub archived: bool,
    /// An active package of the client holds data quota now (voice seconds do not pay for
    /// an internet session).
    pub quota_left: bool,
}

/// A read-only connection to the ledger for the authorization thread: it reads the
/// committed state (WAL readers never block the core's commits, nor see a commit half
/// done), so the credit an Access-Request is judged by includes every acknowledged update.
pub struct AuthReader {
    conn: Connection,
    path: PathBuf,
}

impl AuthReader {
    /// Opens the ledger of a data dir read-only (the serve core must have created it).
    pub fn open(data_dir: &Path) -> Result<AuthReader, LedgerError> {
        let path = data_dir.join("ledger.sqlite");
        let sq = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        stable_plans(&conn).map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(sq)?;
        Ok(AuthReader { conn, path })
    }

    /// The client one of whose radius accounts is `username` (deleted clients have none).
    pub fn user(&self, username: &str) -> Result<Option<AuthUser>, LedgerError> {
        let sq = |source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        };
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT u.user_id, u.password, u.group_name, u.credit, u.lock_reason, u.archived,
                   EXISTS(SELECT 1 FROM client_packages p WHERE p.user_id = u.user_id
                     AND p.status = 'active' AND p.data_left > 0
                     AND p.period_start <= CAST(strftime('%s', 'now') AS INTEGER)
                     AND p.period_end > CAST(strftime('%s', 'now') AS INTEGER))
                 FROM accounts a JOIN users u ON u.user_id = a.user_id
                 WHERE a.kind = 'radius' AND a.ident = ?1 AND u.deleted_at IS NULL",
            )
            .map_err(sq)?;
        let row = st
            .query_row([username], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)? != 0,
                    r.get::<_, i64>(6)? != 0,
                ))
            })
            .optional()
            .map_err(sq)?;
        row.map(
            |(user_id, password, group_name, credit, lock_reason, archived, quota_left)| {
                Ok(AuthUser {
                    user_id,
                    password,
                    group_name,
                    credit: parse_dec(&self.path, "users.credit", &credit)?,
                    lock_reason,
                    archived,
                    quota_left,
                })
            },
        )
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session id closed and opened again in one batch (a NAS that numbers its sessions
    /// anew: the old session's Stop, then the new one's Start, read together) is an open
    /// session after the commit, and the old one's end stays on record; a session closed in
    /// the batch that nothing opened again has no row left.
    #[test]
    fn a_session_closed_and_opened_again_in_one_batch_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let row = |sid: &str, state: u8| ("nas1".to_string(), sid.to_string(), vec![state]);
        ledger
            .commit_radius(&RadiusCommit {
                upserts: vec![row("x", 1), row("y", 1)],
                now: 100,
                ..Default::default()
            })
            .unwrap();
        ledger
            .commit_radius(&RadiusCommit {
                closed: vec![
                    ("nas1".to_string(), "x".to_string(), 500),
                    ("nas1".to_string(), "y".to_string(), 400),
                ],
                upserts: vec![row("x", 2)],
                now: 600,
                ..Default::default()
            })
            .unwrap();
        let open = ledger.load_sessions().unwrap();
        assert_eq!(
            open,
            vec![(
                "nas1".to_string(),
                "x".to_string(),
                crate::radius::state::Stored::Packed(vec![2])
            )]
        );
        let mut closed = ledger.load_closed().unwrap();
        closed.sort();
        assert_eq!(
            closed,
            vec![
                ("nas1".to_string(), "x".to_string(), 600, Some(500)),
                ("nas1".to_string(), "y".to_string(), 600, Some(400)),
            ]
        );
    }

    /// A ledger written before the client status existed (its `users` table has no
    /// `lock_reason`) opens: the column is added, every client is active, and locking,
    /// unlocking and the authorization reader work on it.
    #[test]
    fn a_ledger_from_before_lock_reason_opens_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join("ledger.sqlite")).unwrap();
            old.execute_batch(
                "CREATE TABLE users(
                   user_id INTEGER PRIMARY KEY,
                   username TEXT UNIQUE,
                   password TEXT,
                   group_name TEXT NOT NULL,
                   isp_name TEXT NOT NULL DEFAULT 'Main',
                   credit TEXT NOT NULL,
                   created_at INTEGER NOT NULL,
                   first_login INTEGER,
                   period_start INTEGER,
                   real_first_login INTEGER,
                   status TEXT NOT NULL DEFAULT 'Package');
                 INSERT INTO users(user_id, username, password, group_name, credit, created_at)
                   VALUES (7, 'alice', 'pw', 'g', '1.5', 1700000000);",
            )
            .unwrap();
        }
        let mut l = Ledger::open(dir.path()).unwrap();
        let users = l.load_users().unwrap();
        assert_eq!(
            users,
            vec![UserRow {
                user_id: 7,
                username: Some("alice".into()),
                group_name: "g".into(),
                credit: "1.5".parse().unwrap(),
            }]
        );
        let reader = AuthReader::open(dir.path()).unwrap();
        let auth = |r: &AuthReader| r.user("alice").unwrap().unwrap().lock_reason;
        assert_eq!(auth(&reader), None);
        assert_eq!(l.set_lock(7, Some("unpaid")).unwrap(), None);
        assert_eq!(auth(&reader), Some("unpaid".into()));
        assert_eq!(l.set_lock(7, Some("fraud")).unwrap(), Some("unpaid".into()));
        assert_eq!(l.set_lock(7, None).unwrap(), Some("fraud".into()));
        assert_eq!(auth(&reader), None);
        assert!(matches!(
            l.set_lock(8, Some("x")),
            Err(LedgerError::NoSuchClient(8))
        ));
        // A second open finds the column there and leaves the data alone.
        l.set_lock(7, Some("again")).unwrap();
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.load_users().unwrap().len(), 1);
        assert_eq!(auth(&reader), Some("again".into()));
    }

    /// `serve` leaves RADIUS commits' WAL fsync to its acknowledger: only those commits go
    /// without it; the connection is back at FULL after each, committed or refused.
    #[test]
    fn a_deferred_radius_commit_leaves_every_other_commit_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        l.conn
            .execute(
                "INSERT INTO users(user_id, username, password, group_name, credit, created_at)
                 VALUES (7, 'alice', 'pw', 'g', '10', 0)",
                [],
            )
            .unwrap();
        let synchronous = |l: &Ledger| -> i64 {
            l.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&l), 2, "FULL");
        let charge = |key: &str, legacy: Option<&str>| RadiusCommit {
            charges: vec![(
                7,
                "1.25".parse().unwrap(),
                "8.75".parse().unwrap(),
                key.into(),
                legacy.map(Into::into),
            )],
            defer_fsync: true,
            ..Default::default()
        };
        l.commit_radius(&charge("k1", None)).unwrap();
        assert_eq!(synchronous(&l), 2);
        // Refused (the key's older form was charged): rolled back, and FULL again.
        assert!(matches!(
            l.commit_radius(&charge("k2", Some("k1"))),
            Err(LedgerError::Rejected(_))
        ));
        assert_eq!(synchronous(&l), 2);
        // The first charge only, as the movement it is.
        assert_eq!(
            l.journal_sum(7, Some("usage")).unwrap(),
            "-1.25".parse::<Decimal>().unwrap()
        );
        assert!(l.wal_path().ends_with("ledger.sqlite-wal"));
        assert!(l.wal_path().exists());
    }
}
