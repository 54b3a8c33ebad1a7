//! Batch rating of CDR files (`ratel rate`, and the spool of `ratel serve`).
//!
//! A three-stage pipeline with bounded channels between the stages:
//! 1. reader thread: reads the file in blocks and finds record boundaries (quote-aware);
//! 2. rating (this thread + rayon): parses and rates a block's records in parallel, then one
//!    ordered pass assigns xDR ids, detects duplicate call ids and moves each subscriber's
//!    credit in file order, building the Arrow batches;
//! 3. writer thread: encodes Parquet under temp names (fsynced), commits the batch to the
//!    ledger (one transaction), then renames the files.
//!
//! A file is identified by its content hash: a file rated to the end is not charged again;
//! a file whose rating was interrupted resumes after its last committed batch.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rust_decimal::Decimal;

use crate::account_index::AccountIndex;
use crate::catalog::{Catalog, CdrFormat, RateRow, Tariff};
use crate::cdr::Cdr;
use crate::csv::{scan_records_with, Dialect, RecordSpan};
use crate::domain::AccountKind;
use crate::ledger::{CdrBatchCommit, Ledger, LedgerError, Movement, PendingFile, UserRow};
use crate::rating::{CallRating, Status};
use crate::xdr::{self, RuleDetail, XdrBuilder, XdrRow};
use crate::{prefetch, prefetch_value};

/// Bytes read per block; a block is also the unit of one ledger commit.
pub const BLOCK_BYTES: usize = 32 << 20;
/// Bad-line reasons kept for the summary.
pub const BAD_SAMPLES: usize = 20;

/// Errors of a rating run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:1: {reason}")]
    Header { path: String, reason: String },
    #[error(
        "{path}: starts like {earlier} (rated to the end, {earlier_size} bytes) but differs \
         inside that rated part: refusing to charge its records again (a corrected copy of \
         a rated file? rate it with --force to take it as a new file; records already \
         rated stay duplicates)"
    )]
    ChangedCopy {
        path: String,
        earlier: String,
        earlier_size: u64,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Sink(#[from] xdr::SinkError),
}

/// Progress reports for a terminal progress bar or log lines.
pub trait Progress: Sync {
    fn file_started(&self, _path: &Path, _bytes: u64) {}
    fn advanced(&self, _bytes: u64) {}
    fn file_finished(&self, _path: &Path) {}
}

/// A progress sink that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Where the time of a run went.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub hash: Duration,
    pub parse_rate: Duration,
    pub build: Duration,
    pub parquet: Duration,
    pub ledger: Duration,
}

/// The outcome of rating one file.
#[derive(Debug, Clone, Default)]
pub struct FileSummary {
    pub path: String,
    pub file_hash: String,
    /// The file had been rated to the end before: nothing was charged.
    pub already_rated: bool,
    /// Line the run resumed at, when an earlier run was interrupted.
    pub resumed_at_line: Option<u64>,
    /// The file is a grown copy of this rated file: rated from where that one ended.
    pub continues: Option<String>,
    /// Where this run's bad lines were copied (`<data_dir>/rejects/<file>.rejects`).
    pub rejects: Option<String>,
    pub records: u64,
    pub xdrs: u64,
    pub ok: u64,
    pub unanswered: u64,
    pub no_rate: u64,
    pub unknown_user: u64,
    pub duplicates: u64,
    pub bad_lines: u64,
    pub bad_samples: Vec<String>,
    pub charged: Decimal,
    pub elapsed: Duration,
    pub times: StageTimes,
    /// The file is rated to its end (false: a [`BatchRater::block_budget`] stopped the run
    /// after its blocks were committed; the next call goes on from there).
    pub finished: bool,
}

impl FileSummary {
    /// Adds the counts of a later part of the same file (a budgeted run in several calls).
    pub fn absorb(&mut self, part: &FileSummary) {
        self.records += part.records;
        self.xdrs += part.xdrs;
        self.ok += part.ok;
        self.unanswered += part.unanswered;
        self.no_rate += part.no_rate;
        self.unknown_user += part.unknown_user;
        self.duplicates += part.duplicates;
        self.bad_lines += part.bad_lines;
        for b in &part.bad_samples {
            if self.bad_samples.len() < BAD_SAMPLES {
                self.bad_samples.push(b.clone());
            }
        }
        self.charged += part.charged;
        self.elapsed += part.elapsed;
        self.already_rated |= part.already_rated;
        if self.rejects.is_none() {
            self.rejects = part.rejects.clone();
        }
        self.finished = part.finished;
    }
}

/// A subscriber during a run.
pub struct UserState {
    pub user_id: i64,
    /// Empty for a subscriber created without a username (IBSng's addNewUsers).
    pub username: String,
    pub group: Option<usize>,
    pub group_name: String,
    pub credit: Decimal,
    /// Deleted: kept for its open sessions' charges, refused everything else.
    pub deleted: bool,
    /// Packages not closed (assigned, active, deactivated), by id.
    pub packages: Vec<crate::packages::ClientPackage>,
}

/// Which identifier of a CDR found its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The account field (a voip or radius account).
    Account,
    /// The caller number (a DN).
    Dn,
}

/// Subscribers by account and id, with their running credit. The single in-memory
/// authority for balances while a process owns the data dir.
///
/// Accounts (DESIGN.md Part 2, "The domain model"): `by_name` holds the radius accounts
/// (RADIUS User-Names; a client's username is its first), `by_voip` the CDR accountcodes,
/// `by_dn` phone numbers (digits only). A deleted client keeps its id entry (sessions it
/// had open are still charged) but none of its accounts.
pub struct Subscribers {
    pub(crate) by_name: HashMap<String, u32, ahash::RandomState>,
    by_voip: HashMap<String, u32, ahash::RandomState>,
    by_dn: HashMap<String, u32, ahash::RandomState>,
    by_id: HashMap<i64, u32, ahash::RandomState>,
    /// Earlier owners of identifiers that were taken off a client: per identifier,
    /// (kind, until, owner) in `until` order. A CDR that began before `until` bills that
    /// owner (a recycled phone number never bills the new owner for the old one's calls).
    prior: HashMap<String, Vec<(AccountKind, i64, u32)>, ahash::RandomState>,
    pub(crate) users: Vec<UserState>,
    /// Position of each user's name in username order (xDR files are written in that
    /// order); empty when stale, rebuilt by [`Subscribers::refresh_name_ranks`].
    name_rank: Vec<u32>,
    /// Voip and radius accounts laid out for lookups many at a time (`of_cdrs_at`), built
    /// by [`Subscribers::build_account_index`]; dropped by any change of the accounts.
    account_index: Option<Box<(AccountIndex, AccountIndex)>>,
    /// The earliest end of an active package period (`i64::MAX`: none): the core looks
    /// for due renewals only once it has passed.
    pub package_due: i64,
}

impl Subscribers {
    /// Subscribers from the ledger's rows; each username is a radius account.
    pub fn new(catalog: &Catalog, rows: Vec<UserRow>) -> Self {
        let mut s = Subscribers {
            by_name: HashMap::with_capacity_and_hasher(rows.len(), ahash::RandomState::new()),
            by_voip: HashMap::with_hasher(ahash::RandomState::new()),
            by_dn: HashMap::with_hasher(ahash::RandomState::new()),
            by_id: HashMap::with_capacity_and_hasher(rows.len(), ahash::RandomState::new()),
            prior: HashMap::with_hasher(ahash::RandomState::new()),
            users: Vec::with_capacity(rows.len()),
            name_rank: Vec::new(),
            account_index: None,
            package_due: i64::MAX,
        };
        for r in rows {
            s.add(catalog, r);
        }
        s
    }

    /// Subscribers and every account the ledger holds.
    pub fn load(catalog: &Catalog, ledger: &Ledger) -> Result<Self, crate::ledger::LedgerError> {
        let mut s = Subscribers::new(catalog, ledger.load_users()?);
        for (kind, ident, id) in ledger.load_accounts()? {
            s.add_account(id, kind, &ident);
        }
        for (kind, ident, id, until) in ledger.load_account_moves()? {
            s.record_move(kind, &ident, id, until);
        }
        for id in ledger.deleted_user_ids()? {
            if let Some(u) = s.get_mut(id) {
                u.deleted = true;
            }
        }
        for p in ledger.load_client_packages()? {
            s.put_package(p);
        }
        Ok(s)
    }

    /// Stores a client package's new state (a closed one is dropped) and keeps
    /// [`Subscribers::package_due`].
    pub fn put_package(&mut self, p: crate::packages::ClientPackage) {
        use crate::packages::PackageStatus;
        if p.status == PackageStatus::Active {
            self.package_due = self.package_due.min(p.period_end);
        }
        let Some(u) = self.get_mut(p.user_id) else {
            return;
        };
        let at = u.packages.iter().position(|x| x.id == p.id);
        match (at, p.status) {
            (Some(i), PackageStatus::Closed) => {
                u.packages.remove(i);
            }
            (Some(i), _) => u.packages[i] = p,
            (None, PackageStatus::Closed) => {}
            (None, _) => u.packages.push(p),
        }
    }

    /// Recomputes [`Subscribers::package_due`] (after renewals moved period ends).
    pub fn refresh_package_due(&mut self) {
        self.package_due = self
            .users
            .iter()
            .flat_map(|u| &u.packages)
            .filter(|p| p.status == crate::packages::PackageStatus::Active)
            .map(|p| p.period_end)
            .min()
            .unwrap_or(i64::MAX);
    }

    /// Adds (or replaces) a subscriber; its username becomes a radius account.
    pub fn add(&mut self, catalog: &Catalog, r: UserRow) {
        self.name_rank.clear();
        self.account_index = None;
        let state = UserState {
            user_id: r.user_id,
            group: catalog.group_index(&r.group_name),
            group_name: r.group_name,
            username: r.username.unwrap_or_default(),
            credit: r.credit,
            deleted: false,
            packages: Vec::new(),
        };
        let idx = match self.by_id.get(&r.user_id) {
            Some(&i) => {
                let mut old = std::mem::replace(&mut self.users[i as usize], state);
                self.users[i as usize].packages = std::mem::take(&mut old.packages);
                if self.by_name.get(&old.username) == Some(&i) {
                    self.by_name.remove(&old.username);
                }
                i
            }
            None => {
                self.users.push(state);
                (self.users.len() - 1) as u32
            }
        };
        self.by_id.insert(r.user_id, idx);
        let name = &self.users[idx as usize].username;
        if !name.is_empty() {
            self.by_name.insert(name.clone(), idx);
        }
    }

    fn map_of(&mut self, kind: AccountKind) -> &mut HashMap<String, u32, ahash::RandomState> {
        self.account_index = None;
        match kind {
            AccountKind::Radius => &mut self.by_name,
            AccountKind::Voip => &mut self.by_voip,
            AccountKind::Dn => &mut self.by_dn,
        }
    }

    /// Makes `ident` an account of the subscriber `user_id`.
    pub fn add_account(&mut self, user_id: i64, kind: AccountKind, ident: &str) {
        if let Some(&i) = self.by_id.get(&user_id) {
            self.map_of(kind).insert(ident.to_string(), i);
        }
    }

    /// Removes an account (only if it is `user_id`'s), remembering `user_id` as its owner
    /// until `at`.
    pub fn remove_account(&mut self, user_id: i64, kind: AccountKind, ident: &str, at: i64) {
        let Some(&i) = self.by_id.get(&user_id) else {
            return;
        };
        let map = self.map_of(kind);
        if map.get(ident) == Some(&i) {
            map.remove(ident);
            self.record_move(kind, ident, user_id, at);
        }
    }

    /// `user_id` owned `ident` (of `kind`) until `until`.
    pub fn record_move(&mut self, kind: AccountKind, ident: &str, user_id: i64, until: i64) {
        let Some(&i) = self.by_id.get(&user_id) else {
            return;
        };
        let v = self.prior.entry(ident.to_string()).or_default();
        v.push((kind, until, i));
        v.sort_by_key(|m| m.1);
    }

    /// The owner of `ident` (of `kind`) at `t`: an earlier owner whose ownership ended
    /// after `t`, else the current one.
    fn owner_at(&self, kind: AccountKind, ident: &str, t: i64) -> Option<u32> {
        if let Some(moves) = self.prior.get(ident) {
            if let Some(&(_, _, i)) = moves.iter().find(|m| m.0 == kind && t < m.1) {
                return Some(i);
            }
        }
        self.map(kind).get(ident).copied()
    }

    /// Deleted clients: every account of theirs leaves the lookups (one pass over the
    /// maps however many); their ids stay (open sessions are still charged).
    pub fn delete(&mut self, user_ids: &[i64], at: i64) {
        let gone: HashSet<u32> = user_ids
            .iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        if gone.is_empty() {
            return;
        }
        self.account_index = None;
        let mut moved: Vec<(AccountKind, String, u32)> = Vec::new();
        for (kind, map) in [
            (AccountKind::Radius, &mut self.by_name),
            (AccountKind::Voip, &mut self.by_voip),
            (AccountKind::Dn, &mut self.by_dn),
        ] {
            map.retain(|k, v| {
                if gone.contains(v) {
                    moved.push((kind, k.clone(), *v));
                    false
                } else {
                    true
                }
            });
        }
        for (kind, ident, i) in moved {
            let id = self.users[i as usize].user_id;
            self.record_move(kind, &ident, id, at);
        }
        for &i in &gone {
            self.users[i as usize].deleted = true;
        }
    }

    /// A subscriber that is not deleted, by id.
    pub fn live_mut(&mut self, user_id: i64) -> Option<&mut UserState> {
        self.get_mut(user_id).filter(|u| !u.deleted)
    }

    /// Looks every subscriber's group up again by name (after a config reload).
    pub fn regroup(&mut self, catalog: &Catalog) {
        for u in &mut self.users {
            u.group = catalog.group_index(&u.group_name);
        }
    }

    /// Moves a subscriber to another group.
    pub fn set_group(&mut self, catalog: &Catalog, user_id: i64, group: &str) {
        if let Some(u) = self.get_mut(user_id) {
            u.group_name = group.to_string();
            u.group = catalog.group_index(group);
        }
    }

    /// A subscriber by id.
    pub fn by_id(&self, user_id: i64) -> Option<&UserState> {
        self.by_id.get(&user_id).map(|&i| &self.users[i as usize])
    }

    /// A subscriber by id.
    pub fn get_mut(&mut self, user_id: i64) -> Option<&mut UserState> {
        self.by_id
            .get(&user_id)
            .map(|&i| &mut self.users[i as usize])
    }

    /// The map of one kind of account.
    fn map(&self, kind: AccountKind) -> &HashMap<String, u32, ahash::RandomState> {
        match kind {
            AccountKind::Radius => &self.by_name,
            AccountKind::Voip => &self.by_voip,
            AccountKind::Dn => &self.by_dn,
        }
    }

    /// The client owning an account, if any.
    pub fn owner_of(&self, kind: AccountKind, ident: &str) -> Option<i64> {
        self.map(kind)
            .get(ident)
            .map(|&i| self.users[i as usize].user_id)
    }

    /// The index of a subscriber by id.
    pub fn index_of(&self, user_id: i64) -> Option<u32> {
        self.by_id.get(&user_id).copied()
    }

    /// The subscriber a CDR bills to (DESIGN.md Part 2): its account field among voip,
    /// then radius accounts; else its caller number among DNs. With the identifier that
    /// matched.
    pub fn of_cdr(&self, account: &str, caller: &str) -> Option<(u32, MatchedBy)> {
        self.of_cdr_at(account, caller, i64::MAX)
    }

    /// [`Subscribers::of_cdr`] for a call that began at `start`: an identifier taken off a
    /// client bills that client for calls that began before (see `prior`).
    pub fn of_cdr_at(&self, account: &str, caller: &str, start: i64) -> Option<(u32, MatchedBy)> {
        let a = crate::csv::trim(account);
        if !a.is_empty() {
            if let Some(i) = self
                .owner_at(AccountKind::Voip, a, start)
                .or_else(|| self.owner_at(AccountKind::Radius, a, start))
            {
                return Some((i, MatchedBy::Account));
            }
        }
        self.of_dn_at(caller, start)
    }

    /// The caller-number half of [`Subscribers::of_cdr_at`].
    fn of_dn_at(&self, caller: &str, start: i64) -> Option<(u32, MatchedBy)> {
        if self.by_dn.is_empty() && self.prior.is_empty() {
            return None;
        }
        let dn = crate::domain::dn_key(caller)?;
        self.owner_at(AccountKind::Dn, dn.as_ref(), start)
            .map(|i| (i, MatchedBy::Dn))
    }

    /// Lays the voip and radius accounts out for [`Subscribers::of_cdrs_at`] (kept until
    /// the accounts change). A rater of big files asks for it: the build is a pass over
    /// every account (~4 ms per 100k accounts in `perf`).
    pub fn build_account_index(&mut self) {
        if self.account_index.is_none() {
            if let (Some(v), Some(r)) = (
                AccountIndex::new(&self.by_voip),
                AccountIndex::new(&self.by_name),
            ) {
                self.account_index = Some(Box::new((v, r)));
            }
        }
    }

    /// [`Subscribers::of_cdr_at`] of each `(account, caller, start)` into `out` (same
    /// length), the same answers. With the account index built, the accounts go through
    /// it together — all but those that ever changed hands (taken off a client, renamed,
    /// deleted: a key of `prior`), which `of_cdr_at` answers one by one; for any other
    /// account a map lookup is the whole of `owner_at`.
    pub(crate) fn of_cdrs_at(
        &self,
        calls: &[(&str, &str, i64)],
        out: &mut [Option<(u32, MatchedBy)>],
        scratch: &mut LookupScratch,
    ) {
        // A short `out` would leave calls unbilled: refuse it loudly.
        assert_eq!(calls.len(), out.len(), "one answer per call");
        let Some((voip, radius)) = self.account_index.as_deref() else {
            for (o, &(account, caller, start)) in out.iter_mut().zip(calls) {
                *o = self.of_cdr_at(account, caller, start);
            }
            return;
        };
        out.fill(None);
        // Voip accounts first, then radius accounts for the rest: `of_cdr_at`'s order.
        let (mut at, mut keys) = (
            Vec::with_capacity(calls.len()),
            Vec::with_capacity(calls.len()),
        );
        let mut one_by_one = Vec::new();
        for (i, &(account, _, _)) in calls.iter().enumerate() {
            let a = crate::csv::trim(account);
            if !self.prior.is_empty() && self.prior.contains_key(a) {
                one_by_one.push(i);
            } else if !a.is_empty() {
                at.push(i);
                keys.push(a);
            }
        }
        let mut found = vec![None; keys.len()];
        if !self.by_voip.is_empty() {
            voip.find_many(&keys, &mut found, &mut scratch.hashes);
        }
        let (mut rest_at, mut rest_keys) = (Vec::new(), Vec::new());
        for ((&i, &k), f) in at.iter().zip(&keys).zip(&found) {
            if f.is_none() {
                rest_at.push(i);
                rest_keys.push(k);
            }
        }
        let mut found_radius = vec![None; rest_keys.len()];
        radius.find_many(&rest_keys, &mut found_radius, &mut scratch.hashes);
        for (&i, f) in at.iter().zip(&found) {
            out[i] = f.map(|u| (u, MatchedBy::Account));
        }
        for (&i, f) in rest_at.iter().zip(&found_radius) {
            out[i] = f.map(|u| (u, MatchedBy::Account));
        }
        // Then the caller numbers of the rest; the accounts that changed hands whole.
        let mut changed = one_by_one.iter().copied().peekable();
        for (i, (o, &(account, caller, start))) in out.iter_mut().zip(calls).enumerate() {
            if changed.next_if_eq(&i).is_some() {
                *o = self.of_cdr_at(account, caller, start);
            } else if o.is_none() {
                *o = self.of_dn_at(caller, start);
            }
        }
    }

    /// Gives a subscriber a (new) username: the old one stops being a radius account of it
    /// (at `at`, for CDRs naming it).
    pub fn rename(&mut self, user_id: i64, username: &str, at: i64) {
        if let Some(&i) = self.by_id.get(&user_id) {
            self.name_rank.clear();
            self.account_index = None;
            let old = std::mem::replace(&mut self.users[i as usize].username, username.to_string());
            if self.by_name.get(&old) == Some(&i) && old != username {
                self.by_name.remove(&old);
                self.record_move(AccountKind::Radius, &old, user_id, at);
            }
            self.by_name.insert(username.to_string(), i);
        }
    }

    /// Ranks users by username, if a change made the ranks stale.
    pub fn refresh_name_ranks(&mut self) {
        if self.name_rank.len() == self.users.len() {
            return;
        }
        let mut idx: Vec<u32> = (0..self.users.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| {
            self.users[a as usize]
                .username
                .cmp(&self.users[b as usize].username)
        });
        // Equal names share a rank (an account name reused over time): ranks order rows
        // exactly as their names do.
        self.name_rank = vec![0; idx.len()];
        let mut rank = 0u32;
        for (k, &i) in idx.iter().enumerate() {
            if k > 0 && self.users[i as usize].username != self.users[idx[k - 1] as usize].username
            {
                rank += 1;
            }
            self.name_rank[i as usize] = rank;
        }
    }

    /// The running credit of a user (for tests and summaries).
    pub fn credit(&self, username: &str) -> Option<Decimal> {
        self.by_name
            .get(username)
            .map(|&i| self.users[i as usize].credit)
    }
}

/// What identifies a CDR file: its content hash, its head hash, and the hashes of its
/// first `n` bytes for each asked `n` (to recognise a grown copy of a rated file).
#[derive(Debug, Clone)]
pub struct FileIdentity {
    /// blake3 of the whole content, hex.
    pub hash: String,
    pub size: u64,
    /// blake3 of the file's first `head_lines` lines (at most 64 KiB), hex: a copy of the
    /// same growing file has the same head.
    pub head_hash: String,
    /// `(n, blake3 of the first n bytes)` for each asked `n` below `size`.
    pub prefixes: Vec<(u64, String)>,
    /// The first 64 KiB of the content (the header, the BOM).
    pub head: Vec<u8>,
}

/// Hashes a file once, snapshotting the hash at each of `boundaries` (any order).
pub fn identify_file(
    path: &Path,
    boundaries: &[u64],
    head_lines: usize,
) -> Result<FileIdentity, BatchError> {
    let io = |source| BatchError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = open_cdr(path, 0).map_err(io)?;
    let mut cuts: Vec<u64> = boundaries.to_vec();
    cuts.sort_unstable();
    cuts.dedup();
    let mut cuts = cuts.into_iter().peekable();
    let mut h = blake3::Hasher::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut prefixes = Vec::new();
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if head.len() < HEAD_BYTES {
            head.extend_from_slice(&chunk[..chunk.len().min(HEAD_BYTES - head.len())]);
        }
        while let Some(&cut) = cuts.peek() {
            if cut == 0 || cut < total {
                cuts.next();
                continue;
            }
            if cut > total + chunk.len() as u64 {
                break;
            }
            let k = (cut - total) as usize;
            h.update(&chunk[..k]);
            total += k as u64;
            chunk = &chunk[k..];
            prefixes.push((cut, h.finalize().to_hex().to_string()));
            cuts.next();
        }
        h.update(chunk);
        total += chunk.len() as u64;
    }
    prefixes.retain(|(n, _)| *n < total);
    let mut end = 0;
    for _ in 0..head_lines {
        match memchr::memchr(b'\n', &head[end..]) {
            Some(i) => end += i + 1,
            None => {
                end = head.len();
                break;
            }
        }
    }
    Ok(FileIdentity {
        hash: h.finalize().to_hex().to_string(),
        size: total,
        head_hash: blake3::hash(&head[..end]).to_hex().to_string(),
        prefixes,
        head,
    })
}

/// How a CDR file is stored: rotated PBX logs arrive as `Master.csv.1.gz` and the like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// By extension (`.gz`, `.zst`), else by the file's magic bytes.
    pub fn of(path: &Path) -> std::io::Result<Compression> {
        Compression::of_file(path, &mut std::fs::File::open(path)?)
    }

    /// [`Compression::of`] reading the magic bytes from `file` (left at its start).
    fn of_file(path: &Path, file: &mut std::fs::File) -> std::io::Result<Compression> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".gz") {
            return Ok(Compression::Gzip);
        }
        if name.ends_with(".zst") {
            return Ok(Compression::Zstd);
        }
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(match &magic[..n] {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
            _ => Compression::None,
        })
    }
}

/// Opens a CDR file at byte `offset` of its (decompressed) content. Every offset, size and
/// hash of a CDR file is of its decompressed content, so a file and its `.gz` are the same
/// file to the exactly-once handshake.
pub fn open_cdr(path: &Path, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = std::fs::File::open(path)?;
    let mut r: Box<dyn Read + Send> = match Compression::of_file(path, &mut file)? {
        Compression::None => {
            let mut f = file;
            f.seek(SeekFrom::Start(offset))?;
            return Ok(Box::new(f));
        }
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 20, file),
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    // A compressed stream cannot seek: read past the offset.
    let skipped = std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())?;
    if skipped < offset {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ends before byte {offset}"),
        ));
    }
    Ok(r)
}

/// The rejects file of a run: every bad line's raw bytes, then `# line N: reason`, so an
/// operator can fix the lines and rate the file again (its `# ` lines are skipped then).
/// Lines are only ever appended: a new file of a name already there (today's `Master.csv`
/// after yesterday's) adds its own after a `# rejects of …` line, and the earlier file's,
/// perhaps not fixed and rated yet, stay.
struct Rejects {
    path: PathBuf,
    /// This run starts at its file's beginning: its first lines are introduced by a
    /// `# rejects of …` line if the rejects file already holds some.
    fresh: bool,
    /// Names the file in that line: its path and the start of its content hash.
    source: String,
    /// The file's header line, written first in a new rejects file (a fixed rejects file is
    /// a valid CDR file).
    header: Option<Vec<u8>>,
    buf: Vec<u8>,
    written: u64,
}

impl Rejects {
    fn add(&mut self, line: u64, reason: &str, raw: &[u8]) {
        use std::io::Write;
        if raw.is_empty() {
            let _ = writeln!(self.buf, "# line {line}: {reason}");
        } else {
            self.buf.extend_from_slice(raw);
            let _ = write!(self.buf, "\n# line {line}: {}\n", reason.replace('\n', " "));
        }
        self.written += 1;
    }

    /// Appends the lines added since the last flush, durably: the block's commit that
    /// follows moves the file's progress past them, so a rejects line lost in a power cut
    /// would be a call no one sees again.
    fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if self.buf.is_empty() {
            return Ok(());
        }
        let dir = crate::xdr::dir_of(&self.path);
        crate::xdr::create_dir_durable(dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let new_file = f.metadata()?.len() == 0;
        if new_file {
            if let Some(h) = &self.header {
                f.write_all(h)?;
                f.write_all(b"\n")?;
            }
        } else if self.fresh {
            writeln!(f, "# rejects of {}", self.source.replace('\n', " "))?;
        }
        self.fresh = false;
        f.write_all(&self.buf)?;
        f.sync_data()?;
        if new_file {
            crate::xdr::sync_dir(dir)?;
        }
        self.buf.clear();
        Ok(())
    }
}

/// The block size that cuts `rest` bytes into as many blocks as `block_bytes` would, all of
/// one size: a short last block left its Parquet files too little time to hide the fold
/// of the file's charges, which the last commit stages while they are written (the month
/// file: 4.4 blocks of 32 MiB, the fold ~0.2 s beyond the last block's files on one core).
fn equal_blocks(rest: u64, block_bytes: usize) -> usize {
    let block = block_bytes.max(1) as u64;
    let blocks = rest.div_ceil(block).max(1);
    rest.div_ceil(blocks).clamp(1, block) as usize
}

/// Bytes of a file's start that its head hash may cover.
const HEAD_BYTES: usize = 64 << 10;

/// 128-bit key of a call id (XXH3-128: a fixed, specified algorithm, so keys stored in the
/// ledger stay valid across versions; 2^-64 collision odds at 10^10 calls).
pub fn call_key(call_id: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(call_id)
}

/// One block as the reader hands it over.
struct Block {
    buf: Vec<u8>,
    spans: Vec<RecordSpan>,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Offset and line after the last complete record of the block.
    next_offset: u64,
    next_line: u64,
    eof: bool,
}

/// A rated block, ready for Parquet and the ledger.
struct RatedBlock {
    /// One file per UTC day of logout: its batches in order, min login, max logout.
    batches: Vec<(PathBuf, Vec<arrow_array::RecordBatch>, i64, i64)>,
    movements: Vec<Movement>,
    /// Package quota the block's calls took: (client package id, voice left, data left).
    quota: Vec<crate::packages::QuotaChange>,
    call_keys: Vec<u8>,
    first_xdr: u64,
    next_xdr: u64,
    next_offset: u64,
    next_line: u64,
    done: bool,
    records: u64,
    bytes: u64,
}

// Not boxed: a box per record is an allocation on the hot path; the Vec of outcomes is
// per block and short-lived.
#[allow(clippy::large_enum_variant)]
enum Outcome<'a> {
    /// Line, reason, the record's bytes (for the rejects file).
    Bad(u64, String, &'a [u8]),
    Rated(RatedCdr<'a>),
    /// A `# …` note line of a rejects file being rated again.
    Note,
}

struct RatedCdr<'a> {
    cdr: Cdr<'a>,
    user: Option<u32>,
    matched: MatchedBy,
    key: u128,
    rating: CallRating,
    cost: Decimal,
    /// Set by the ordered pass; 0 for a duplicate (no xDR).
    xdr_id: u64,
    /// The subscriber's credit before this call (after it: `before - cost`).
    before: Decimal,
}

impl RatedCdr<'_> {
    fn status(&self) -> Status {
        if self.user.is_none() {
            Status::UnknownUser
        } else {
            self.rating.status
        }
    }
}

/// A rated record's place in its block's xDR files: the UTC day of its logout (its file),
/// its subscriber's name rank (`u32::MAX`: not a subscriber, compared by name) and xDR id.
struct Placed<'o, 'a> {
    day: i64,
    rank: u32,
    xdr_id: u64,
    r: &'o RatedCdr<'a>,
}

/// Most call keys reserved ahead for the rest of a file: 16M (a table of 32M slots of 16
/// bytes, 512 MB, which a file of that many calls needs anyway); past it the set grows as
/// it must.
const MAX_KEYS_RESERVED: u64 = 1 << 24;

/// An emptied outcome vector, its allocation kept, for records borrowing another block.
/// (A collect from a vector's own iterator into elements of the same layout reuses its
/// allocation; nothing is mapped, as it is empty.)
fn recycle_outcomes<'b>(mut v: Vec<Outcome<'_>>) -> Vec<Outcome<'b>> {
    v.clear();
    v.into_iter().map(|_| Outcome::Note).collect()
}

/// Writes rated records in (username, xdr_id) order so that a reader looking for one
/// subscriber prunes pages by the username page index (ARCHITECTURE.md), and a compaction
/// merges a day's files as sorted runs. Two subscribers compare by their precomputed name
/// rank (integer compares); an account that is not a subscriber (its name is the row's
/// username) by name. Day first: each day is one run of the order, so a day's builder is
/// filled in one go and the gather does not touch the records twice (a month-long block
/// spread every row over ~30 builders and read each record once to count its day).
fn xdr_order<'o, 'a>(subs: &Subscribers, outcomes: &'o [Outcome<'a>]) -> Vec<Placed<'o, 'a>> {
    use rayon::prelude::*;
    let mut order: Vec<Placed<'o, 'a>> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rated(r) if r.xdr_id != 0 => {
                let rank = r
                    .user
                    .and_then(|ui| subs.name_rank.get(ui as usize).copied())
                    .unwrap_or(u32::MAX);
                Some(Placed {
                    day: xdr::day_of(r.cdr.start + r.cdr.duration_secs),
                    rank,
                    xdr_id: r.xdr_id,
                    r,
                })
            }
            _ => None,
        })
        .collect();
    fn name<'x>(subs: &'x Subscribers, e: &'x Placed<'_, '_>) -> &'x str {
        match e.r.user {
            Some(ui) if e.rank != u32::MAX => subs.users[ui as usize].username.as_str(),
            _ => e.r.cdr.account.as_ref(),
        }
    }
    order.par_sort_unstable_by(|a, b| {
        a.day
            .cmp(&b.day)
            .then_with(|| {
                if a.rank != u32::MAX && b.rank != u32::MAX {
                    a.rank.cmp(&b.rank)
                } else {
                    name(subs, a).cmp(name(subs, b))
                }
            })
            .then(a.xdr_id.cmp(&b.xdr_id))
    });
    order
}

/// How far ahead of the record being built [`build_chunk`] prefetches, in four steps of
/// this many rows: the record itself; what it points to (its subscriber, its text in the
/// block); what those point to (the username, the tariff's prefix and rate row); the
/// prefix and description strings. Each step reads only pointers an earlier step has
/// brought in, so no prefetch waits on a miss itself (`perf annotate` of the build before:
/// the account's bytes, the username's pointer and the prefix entry were ~half of its
/// samples, one miss each).
const PREFETCH_STEP: usize = 4;

/// How far ahead of the record being charged the ordered pass prefetches its subscriber.
const ORDERED_PREFETCH: usize = 8;

/// The tariff a rated record was rated on (its subscriber's group's), if any.
fn tariff_of<'c>(catalog: &'c Catalog, user: Option<&UserState>) -> Option<&'c Tariff> {
    user.and_then(|u| u.group)
        .and_then(|g| catalog.groups[g].tariff)
        .map(|t| &catalog.tariffs[t])
}

/// The rate rows a rated record's xDR names: its pieces' and the one at its start.
fn rows_of<'c>(tf: &'c Tariff, r: &'c RatedCdr<'_>) -> impl Iterator<Item = &'c RateRow> {
    let pieces = r.rating.pieces.iter().map(|p| p.item);
    pieces
        .chain(r.rating.row_at_start)
        .filter_map(|row| tf.rows.get(row as usize))
}

/// Prefetches for the record `PREFETCH_STEP × k` rows ahead of the one being built (step
/// `k`, 4 down to 1); see [`PREFETCH_STEP`].
fn prefetch_ahead(catalog: &Catalog, subs: &Subscribers, r: &RatedCdr<'_>, k: usize) {
    let user = || r.user.map(|ui| &subs.users[ui as usize]);
    match k {
        4 => prefetch_value(r),
        3 => {
            if let Some(u) = user() {
                prefetch_value(u);
            }
            let c = &r.cdr;
            for f in [&c.call_id, &c.caller, &c.callee, &c.account, &c.disposition] {
                prefetch(f.as_ptr(), 1);
            }
            prefetch(r.rating.pieces.as_ptr().cast(), 1);
        }
        2 => {
            let u = user();
            if let Some(u) = u {
                prefetch(u.username.as_ptr(), u.username.len());
            }
            if let Some(tf) = tariff_of(catalog, u) {
                if let Some(p) = r.rating.prefix.and_then(|p| tf.prefixes.get(p as usize)) {
                    prefetch_value(p);
                }
                for row in rows_of(tf, r) {
                    prefetch_value(row);
                }
            }
        }
        _ => {
            if let Some(tf) = tariff_of(catalog, user()) {
                if let Some(p) = r.rating.prefix.and_then(|p| tf.prefixes.get(p as usize)) {
                    prefetch(p.prefix.as_ptr(), p.prefix.len());
                }
                for row in rows_of(tf, r) {
                    prefetch(row.description.as_ptr(), row.description.len());
                }
            }
        }
    }
}

/// Builds the xDR batches (one per UTC day of logout) of a run of rated records.
fn build_chunk(
    catalog: &Catalog,
    subs: &Subscribers,
    file_name: &str,
    sizes: &xdr::TextSizes,
    chunk: &[Placed<'_, '_>],
) -> Result<Vec<(i64, arrow_array::RecordBatch, i64, i64)>, BatchError> {
    // The chunk is in day order: one builder per run of a day, reserving what it holds.
    let mut out: Vec<(i64, arrow_array::RecordBatch, i64, i64)> = Vec::new();
    let mut source = String::new();
    let mut details: Vec<RuleDetail<'_>> = Vec::new();
    let mut current: Option<(i64, XdrBuilder, i64, i64)> = None;
    for (i, p) in chunk.iter().enumerate() {
        for k in 1..=4 {
            if let Some(ahead) = chunk.get(i + PREFETCH_STEP * k) {
                prefetch_ahead(catalog, subs, ahead.r, k);
            }
        }
        let r = p.r;
        if current.as_ref().is_none_or(|c| c.0 != p.day) {
            if let Some((day, b, lo, hi)) = current.take() {
                out.push((day, b.finish()?, lo, hi));
            }
            let n = chunk[i..].iter().take_while(|q| q.day == p.day).count();
            current = Some((p.day, XdrBuilder::with_sizes(n, sizes), i64::MAX, i64::MIN));
        }
        let user = r.user.map(|ui| &subs.users[ui as usize]);
        let tariff = tariff_of(catalog, user);
        let (dest, dest_name) = match (tariff, r.rating.prefix, r.rating.row_at_start) {
            (Some(tf), Some(p), Some(row)) => (
                tf.prefixes[p as usize].prefix.as_str(),
                tf.rows[row as usize].description.as_str(),
            ),
            _ => ("", ""),
        };
        details.clear();
        if let (Some(tf), Some(row0)) = (tariff, r.rating.row_at_start) {
            for (i, p) in r.rating.pieces.iter().enumerate() {
                // The connect fee belongs to the first piece, so the details sum to the cost.
                let fee = if i == 0 {
                    tf.rows[row0 as usize].connect_fee
                } else {
                    Decimal::ZERO
                };
                details.push(RuleDetail {
                    rule: tf.rows[p.item as usize].description.as_str(),
                    start_secs: p.start,
                    end_secs: p.end,
                    seconds: p.end - p.start,
                    bytes_in: 0,
                    bytes_out: 0,
                    credit: p.credit + fee,
                });
            }
        }
        use std::fmt::Write;
        source.clear();
        let _ = write!(source, "cdr:{}:{}", file_name, r.cdr.line);
        let call_id: &str = r.cdr.call_id.as_ref();
        let logout = r.cdr.start + r.cdr.duration_secs;
        let account = match (user, r.matched) {
            (None, _) => None,
            (Some(_), MatchedBy::Account) => {
                Some(std::borrow::Cow::Borrowed(crate::csv::trim(&r.cdr.account)))
            }
            (Some(_), MatchedBy::Dn) => crate::domain::dn_key(&r.cdr.caller),
        };
        let row = XdrRow {
            xdr_id: r.xdr_id,
            service_type: "VoIP",
            status: r.status().as_str(),
            user_id: user.map(|u| u.user_id),
            username: user
                .map(|u| u.username.as_str())
                .unwrap_or(r.cdr.account.as_ref()),
            group_name: user.map(|u| u.group_name.as_str()).unwrap_or(""),
            login_time_secs: r.cdr.start,
            logout_time_secs: logout,
            duration_seconds: r.cdr.duration_secs,
            billed_seconds: r.rating.billed_secs,
            bytes_in: 0,
            bytes_out: 0,
            session_id: call_id,
            ras_description: "",
            nas_ip: "",
            unique_id_value: call_id,
            remote_ip: "",
            caller_id: r.cdr.caller.as_ref(),
            called_number: r.cdr.callee.as_ref(),
            terminate_cause: r.cdr.disposition.as_ref(),
            destination: dest,
            destination_name: dest_name,
            credit_used: r.cost,
            before_credit: r.before,
            after_credit: r.before - r.cost,
            source: &source,
            account: account.as_deref(),
            refund_of: None,
            package_seconds: r.rating.package_secs,
            package_bytes: 0,
        };
        let Some(b) = current.as_mut() else {
            unreachable!("a builder for the row's day was made above");
        };
        b.1.push(&row, &details);
        b.2 = b.2.min(r.cdr.start);
        b.3 = b.3.max(logout);
    }
    if let Some((day, b, lo, hi)) = current {
        out.push((day, b.finish()?, lo, hi));
    }
    Ok(out)
}

/// The in-memory state of a [`BatchRater`], between two catalogs.
pub struct RaterState {
    subscribers: Subscribers,
    call_keys: crate::call_keys::CallKeys,
    next_xdr: u64,
}

/// A batch rater over one ledger.
pub struct BatchRater<'a> {
    pub(crate) catalog: &'a Catalog,
    pub(crate) ledger: &'a mut Ledger,
    pub(crate) subscribers: Subscribers,
    call_keys: crate::call_keys::CallKeys,
    pub(crate) next_xdr: u64,
    /// Bytes per block (one ledger commit each); [`BLOCK_BYTES`] unless a test shrinks it.
    pub block_bytes: usize,
    /// Rate a file that starts like a rated one but differs inside its rated part as a new
    /// file instead of refusing it (`ratel rate --force`).
    pub force: bool,
    /// Test seam simulating a crash: stop with an error after this many committed batches.
    #[doc(hidden)]
    pub crash_after_batches: Option<u64>,
    /// Blocks one [`BatchRater::rate_file`] call rates at most (`serve`: 1, so RADIUS is
    /// answered between blocks); `None`: the whole file. A call stopped by it has
    /// committed and folded every block it rated (the ledger equals memory), and returns
    /// `finished: false`; calling again goes on from the recorded offset.
    pub block_budget: Option<usize>,
    /// With a budget: stop at the budget only when this says someone waits (RADIUS
    /// datagrams, API commands); `None`: always. An idle `serve` rates a file in one call.
    #[allow(clippy::type_complexity)]
    pub pause: Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The identity of the file a budgeted call stopped in, with its length and mtime: the
    /// next call does not hash the whole file again.
    id_cache: Option<(PathBuf, FileStamp, FileIdentity)>,
    /// Per client id, the sum of the CDR movements committed but not yet folded into the
    /// stored balance (negative: charges). A RADIUS commit stores its balance less these
    /// (`balance_to_store`); the fold adds them to the stored balance.
    pub(crate) unfolded: Unfolded,
    /// A failed run could not reload its state from the ledger: memory may be ahead of it.
    pub stale: bool,
    /// Fold a file's movements into balances and journal rows when the file is done (the
    /// default). `false` (`ratel rate` of many files): files share folds, every
    /// [`crate::ledger::FOLD_EVERY_BATCHES`] batches, and the caller folds after the last
    /// file ([`BatchRater::fold_if_unfolded`]; a crash before that is folded by the next
    /// `Ledger::open`). A fold writes a journal row and the balance of every client the
    /// files charged, each on a random B-tree page: a 500-call file wrote ~1,150 WAL pages.
    pub fold_each_file: bool,
}

/// Client id to the CDR amounts committed but not folded.
pub(crate) type Unfolded = HashMap<i64, Decimal, ahash::RandomState>;

/// What tells a file on disk from another at the same path: length, mtime and (Unix) the
/// device, inode and ctime (a copy with `cp -p`/`rsync -a` keeps length and mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    mtime: std::time::SystemTime,
    #[cfg(unix)]
    node: (u64, u64, i64, i64),
}

fn file_stamp(m: &std::fs::Metadata) -> Option<FileStamp> {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Some(FileStamp {
        len: m.len(),
        mtime: m.modified().ok()?,
        #[cfg(unix)]
        node: (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()),
    })
}

/// The rated files at whose sizes a file's prefixes are hashed: a grown copy of a rated
/// file (Asterisk appends to Master.csv) starts with that file's bytes, so every shorter
/// one. A compressed file's size says nothing of its content's: then every rated file.
fn prefix_candidates(
    ledger: &Ledger,
    compression: Compression,
    meta: &std::fs::Metadata,
) -> Result<Vec<crate::ledger::RatedFile>, LedgerError> {
    let size = match compression {
        Compression::None => meta.len(),
        _ => u64::MAX,
    };
    ledger.rated_files_shorter_than(size)
}

/// The lines of a file's head that tell a copy of it: its first record, and the header
/// before it when the format has one.
fn head_lines(template: &crate::template::Template) -> usize {
    if template.header {
        2
    } else {
        1
    }
}

/// A file's identity hashed ahead on a thread of its own: `ratel rate` hashes its first file
/// while the rater loads the clients from the ledger ([`identify_ahead`],
/// [`BatchRater::use_identity`]).
pub struct IdentityAhead(std::thread::JoinHandle<Option<(PathBuf, FileStamp, FileIdentity)>>);

/// Starts hashing `path` as [`BatchRater::rate_file`] would (against the same rated files'
/// sizes), on a thread. `None` when it cannot start: `rate_file` then hashes the file
/// itself, and reports what is wrong with it.
pub fn identify_ahead(
    catalog: &Catalog,
    ledger: &Ledger,
    path: &Path,
    format: CdrFormat,
) -> Option<IdentityAhead> {
    // As `rate_file` takes them: the stamp and the rated files' sizes from one look at the
    // file, before the hash.
    let compression = Compression::of(path).ok()?;
    let meta = std::fs::metadata(path).ok()?;
    let stamp = file_stamp(&meta)?;
    let cuts: Vec<u64> = prefix_candidates(ledger, compression, &meta)
        .ok()?
        .iter()
        .map(|c| c.size)
        .collect();
    let head_lines = head_lines(catalog.template(format));
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("hash-ahead".into())
        .spawn(move || {
            let id = identify_file(&path, &cuts, head_lines).ok()?;
            Some((path, stamp, id))
        })
        .ok()
        .map(IdentityAhead)
}

impl<'a> BatchRater<'a> {
    /// Hands [`BatchRater::rate_file`] a file's identity hashed ahead: used if that call is
    /// for the same path and the file's stamp (length, mtime, inode, ctime) is unchanged,
    /// else the file is hashed again. Nothing may be rated in between (the identity holds
    /// the rated files' sizes at the time).
    pub fn use_identity(&mut self, ahead: IdentityAhead) {
        if let Ok(Some(id)) = ahead.0.join() {
            self.id_cache = Some(id);
        }
    }

    /// Loads subscribers, seen call ids and the xDR sequence from the ledger.
    pub fn new(catalog: &'a Catalog, ledger: &'a mut Ledger) -> Result<Self, BatchError> {
        let subscribers = Subscribers::load(catalog, ledger)?;
        let call_keys = ledger.load_call_keys()?;
        let next_xdr = ledger.next_xdr_id()?;
        Ok(BatchRater {
            catalog,
            ledger,
            subscribers,
            call_keys,
            next_xdr,
            block_bytes: BLOCK_BYTES,
            force: false,
            crash_after_batches: None,
            block_budget: None,
            pause: None,
            id_cache: None,
            unfolded: Unfolded::default(),
            stale: false,
            fold_each_file: true,
        })
    }

    pub fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    /// What this rater holds in memory (balances, seen call ids, the xDR sequence), to go
    /// on with another catalog (a config reload) without reading it all from the ledger.
    pub fn into_state(self) -> RaterState {
        RaterState {
            subscribers: self.subscribers,
            call_keys: self.call_keys,
            next_xdr: self.next_xdr,
        }
    }

    /// A rater over `catalog` that goes on from `state`: groups are looked up again by
    /// name in the new catalog.
    pub fn with_state(catalog: &'a Catalog, ledger: &'a mut Ledger, state: RaterState) -> Self {
        let mut subscribers = state.subscribers;
        subscribers.regroup(catalog);
        BatchRater {
            catalog,
            ledger,
            subscribers,
            call_keys: state.call_keys,
            next_xdr: state.next_xdr,
            block_bytes: BLOCK_BYTES,
            force: false,
            crash_after_batches: None,
            block_budget: None,
            pause: None,
            id_cache: None,
            unfolded: Unfolded::default(),
            stale: false,
            fold_each_file: true,
        }
    }

    /// Rates one file with exactly-once semantics.
    pub fn rate_file(
        &mut self,
        path: &Path,
        format: CdrFormat,
        progress: &dyn Progress,
    ) -> Result<FileSummary, BatchError> {
        let started = Instant::now();
        let io = |source| BatchError::Io {
            path: path.display().to_string(),
            source,
        };
        let t0 = Instant::now();
        let compression = Compression::of(path).map_err(io)?;
        let meta = std::fs::metadata(path).map_err(io)?;
        let candidates = prefix_candidates(self.ledger, compression, &meta)?;
        let cuts: Vec<u64> = candidates.iter().map(|c| c.size).collect();
        let template = self.catalog.template(format);
        let head_lines = head_lines(template);
        // A file a budgeted call stopped in, or hashed ahead, unchanged since: its identity
        // is known.
        let stamp = file_stamp(&meta);
        let cached = match (self.id_cache.take(), &stamp) {
            (Some((p, was, id)), Some(now)) if p == path && was == *now => Some(id),
            _ => None,
        };
        let id = match cached {
            Some(id) => id,
            None => identify_file(path, &cuts, head_lines)?,
        };
        let (file_hash, size) = (id.hash.clone(), id.size);
        let mut summary = FileSummary {
            path: path.display().to_string(),
            file_hash: file_hash.clone(),
            ..Default::default()
        };
        summary.times.hash = t0.elapsed();
        let prior = self.ledger.file_progress(&file_hash)?;
        if let Some(p) = &prior {
            if p.done {
                summary.already_rated = true;
                summary.finished = true;
                summary.elapsed = started.elapsed();
                tracing::info!(file = %path.display(), first_rated_as = %p.path, "already rated (same content hash): nothing charged");
                return Ok(summary);
            }
        }
        let head = &id.head;
        let bom = if head.starts_with(crate::csv::BOM) {
            crate::csv::BOM.len()
        } else {
            0
        };
        // A header names the columns; read it from the file's start.
        let mut header_line = None;
        let header_err = |reason| BatchError::Header {
            path: path.display().to_string(),
            reason,
        };
        let (reader, header_end) = if template.header {
            let end = memchr::memchr(b'\n', head)
                .map(|i| i + 1)
                .unwrap_or(head.len());
            let line = head[bom..end]
                .strip_suffix(b"\n")
                .unwrap_or(&head[bom..end]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            header_line = Some(line.to_vec());
            (template.reader(Some(line)).map_err(header_err)?, end as u64)
        } else {
            (template.reader(None).map_err(header_err)?, bom as u64)
        };
        let is_rejects = path.extension().is_some_and(|e| e == "rejects");
        let dialect = Dialect {
            delimiter: template.delimiter,
            multiline: false,
        };
        let format_name = template.name.clone();
        let first_line = if template.header { 2 } else { 1 };
        // The longest rated file this one extends.
        let grown_from = if prior.is_none() {
            id.prefixes
                .iter()
                .filter_map(|(n, h)| {
                    candidates
                        .iter()
                        .find(|c| c.size == *n && c.file_hash == *h)
                })
                .max_by_key(|c| c.size)
        } else {
            None
        };
        let (start_offset, start_line) = match (&prior, grown_from) {
            (Some(p), _) => {
                summary.resumed_at_line = Some(p.next_line);
                tracing::info!(file = %path.display(), line = p.next_line, "resuming an interrupted run after its last committed batch");
                (p.next_offset, p.next_line)
            }
            (None, Some(c)) => {
                let (off, line) =
                    continuation_point(path, c, header_end, first_line).map_err(io)?;
                summary.continues = Some(c.path.clone());
                summary.resumed_at_line = Some(line);
                tracing::info!(file = %path.display(), grown_from = %c.path, line, "a grown copy of a rated file: rating from where that one ended");
                (off, line)
            }
            (None, None) => {
                if !self.force && !is_rejects {
                    if let Some(c) = self.ledger.rated_file_with_head(&id.head_hash)? {
                        return Err(BatchError::ChangedCopy {
                            path: path.display().to_string(),
                            earlier: c.path,
                            earlier_size: c.size,
                        });
                    }
                }
                (header_end, first_line)
            }
        };
        let from_start = prior.is_none() && summary.continues.is_none();
        let file = open_cdr(path, start_offset).map_err(io)?;
        progress.file_started(path, size);
        progress.advanced(start_offset);

        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path_str = path.display().to_string();
        let mut rejects = Rejects {
            path: self
                .catalog
                .data_dir
                .join("rejects")
                .join(format!("{file_name}.rejects")),
            fresh: from_start,
            source: format!(
                "{} (content hash {})",
                path.display(),
                file_hash.get(..16).unwrap_or(&file_hash)
            ),
            header: header_line,
            buf: Vec::new(),
            written: 0,
        };
        let catalog = self.catalog;
        let xdr_root = self.ledger.xdr_root().to_path_buf();
        // Hand-overs without a queue: the reader reads block N+1 while block N is rated,
        // and the rater builds N+1 while N is written, then each waits for the other. A
        // queued block more on either side overlapped nothing more on two cores and held
        // ~130 MB more at the peak (ARCHITECTURE.md, "Memory of a batch run").
        let (block_tx, block_rx) = crossbeam_channel::bounded::<Result<Block, std::io::Error>>(0);
        let (rated_tx, rated_rx) = crossbeam_channel::bounded::<RatedBlock>(0);

        let ledger = &mut *self.ledger;
        self.subscribers.refresh_name_ranks();
        // Whole files (`ratel rate`) look accounts up through the index; `serve` rates a
        // block per call between RADIUS batches, where the index's build (a pass over every
        // account: ~4 ms per 100k, so tens of ms at 1M) would stall RADIUS.
        if self.block_budget.is_none() {
            self.subscribers.build_account_index();
        }
        let subscribers = &mut self.subscribers;
        let call_keys = &mut self.call_keys;
        let next_xdr = &mut self.next_xdr;
        let summary_ref = &mut summary;
        let unfolded = std::mem::take(&mut self.unfolded);
        let unfolded_back = &mut self.unfolded;
        // A compressed file is decompressed from its start at every call: rated in one.
        let budget = self
            .block_budget
            .filter(|_| compression == Compression::None);
        let pause = self.pause.clone();
        let head_hash = id.head_hash.clone();
        let mut stopped_early = false;
        let stopped_ref = &mut stopped_early;
        let result: Result<(), BatchError> = std::thread::scope(|scope| {
            // Stage 1: read blocks.
            let block_bytes = match (budget, compression) {
                (None, Compression::None) => {
                    equal_blocks(size.saturating_sub(start_offset), self.block_bytes)
                }
                _ => self.block_bytes.max(1),
            };
            let crash_after = self.crash_after_batches;
            let fold_each_file = self.fold_each_file;
            scope.spawn(move || {
                read_blocks(
                    file,
                    dialect,
                    start_offset,
                    start_line,
                    block_bytes,
                    block_tx,
                )
            });
            // Stage 3: Parquet + ledger.
            let fhash = file_hash.clone();
            let pstr = path_str.clone();
            let writer = scope.spawn(move || {
                // The map comes back whatever happens: it says what the ledger holds.
                let mut unfolded = unfolded;
                let run = || -> Result<(Duration, Duration), BatchError> {
                    let (mut pq, mut lg) = (Duration::ZERO, Duration::ZERO);
                    for (committed, rb) in rated_rx.into_iter().enumerate() {
                        if crash_after == Some(committed as u64) {
                            return Err(BatchError::Io {
                                path: pstr.clone(),
                                source: std::io::Error::other("simulated crash"),
                            });
                        }
                        // What the ledger records of the files is known before they are
                        // written: their paths, rows and time ranges.
                        let files: Vec<PendingFile> = rb
                            .batches
                            .iter()
                            .map(|(final_path, batches, min_login, max_logout)| PendingFile {
                                final_path: final_path.clone(),
                                rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
                                min_login: *min_login,
                                max_logout: *max_logout,
                            })
                            .collect();
                        let commit = CdrBatchCommit {
                            file_hash: fhash.clone(),
                            path: pstr.clone(),
                            format: format_name.clone(),
                            file_size: size,
                            head_hash: head_hash.clone(),
                            next_offset: rb.next_offset,
                            next_line: rb.next_line,
                            done: rb.done,
                            // At a file's end only, not at a pause between blocks:
                            // RADIUS commits in between store balances without the
                            // unfolded amounts (`unfolded`).
                            fold: rb.done && fold_each_file,
                            records: rb.records,
                            first_xdr: rb.first_xdr,
                            next_xdr: rb.next_xdr,
                            movements: rb.movements,
                            quota: rb.quota,
                            call_keys: rb.call_keys,
                            files,
                            now: chrono::Utc::now().timestamp(),
                        };
                        // The files are written (one at a time, its columns encoded in
                        // parallel, each fsynced while the next is encoded) on a thread of
                        // their own while this one stages the ledger's rows; the COMMIT
                        // waits for them, durable.
                        let t = Instant::now();
                        let pq_before = pq;
                        let mut sink_error: Option<BatchError> = None;
                        let committed = std::thread::scope(|s| {
                            // The batches move to the thread, which frees each file's
                            // once it is encoded.
                            let batches = rb.batches;
                            let parquet = s.spawn(move || -> Result<Duration, BatchError> {
                                let t = Instant::now();
                                xdr::write_temp_files(
                                    batches.into_iter().map(|(p, b, _, _)| (p, b)),
                                )?;
                                Ok(t.elapsed())
                            });
                            ledger.commit_cdr_batch_when(&commit, || {
                                match parquet.join().expect("the Parquet writer does not panic") {
                                    Ok(d) => {
                                        pq += d;
                                        Ok(())
                                    }
                                    Err(e) => {
                                        let msg = e.to_string();
                                        sink_error = Some(e);
                                        Err(LedgerError::Rejected(msg))
                                    }
                                }
                            })
                        });
                        match committed {
                            // Every pending movement is in the stored balances now.
                            Ok(true) => unfolded.clear(),
                            Ok(false) => {
                                for m in &commit.movements {
                                    *unfolded.entry(m.user_id).or_default() += m.amount;
                                }
                            }
                            Err(e) => {
                                // Files the ledger may have recorded stay for the next open.
                                if e.before_commit() {
                                    for f in &commit.files {
                                        let _ = std::fs::remove_file(xdr::temp_path(&f.final_path));
                                    }
                                }
                                return Err(sink_error.unwrap_or_else(|| e.into()));
                            }
                        }
                        // The ledger's time is what it added beyond the files' writing.
                        lg += t.elapsed().saturating_sub(pq - pq_before);
                        progress.advanced(rb.bytes);
                    }
                    Ok((pq, lg))
                };
                let r = run();
                (r, unfolded)
            });
            // Stage 2: rate, in this thread.
            let stage2 = || -> Result<(), BatchError> {
                let threads = rayon::current_num_threads().max(1);
                let mut blocks = 0usize;
                // A block's movement of each subscriber it charged, by subscriber index
                // (reset after each block from `moved`): a hash map's lookup per call,
                // and its growth to ~100k entries per block, cost more.
                const NO_MOVEMENT: u32 = u32::MAX;
                let mut movement_of: Vec<u32> = vec![NO_MOVEMENT; subscribers.users.len()];
                let mut moved: Vec<u32> = Vec::new();
                let mut text_sizes = xdr::TextSizes::default();
                // The outcomes' memory, kept from one block to the next (~360 bytes a call,
                // ~150 MB a 32 MiB block): a fresh vector each block was faulted in again.
                let mut spare_outcomes: Vec<Outcome<'static>> = Vec::new();
                for block in block_rx {
                    let block = block.map_err(|source| BatchError::Io {
                        path: path_str.clone(),
                        source,
                    })?;
                    let t = Instant::now();
                    let subs = &*subscribers;
                    // Each task parses and rates a run of records straight into its place
                    // (collecting per-task vectors copied every outcome once more).
                    let mut outcomes: Vec<Outcome<'_>> =
                        recycle_outcomes(std::mem::take(&mut spare_outcomes));
                    outcomes.resize_with(block.spans.len(), || Outcome::Note);
                    outcomes
                        .par_chunks_mut(RATE_CHUNK)
                        .zip(block.spans.par_chunks(RATE_CHUNK))
                        .with_min_len(2048 / RATE_CHUNK)
                        .for_each_init(
                            || (Vec::new(), RateScratch::default()),
                            |(fields, scratch), (out, spans)| {
                                let parsed = spans
                                    .iter()
                                    .map(|span| {
                                        parse_one(
                                            &reader, catalog, is_rejects, &block.buf, span, fields,
                                        )
                                    })
                                    .collect();
                                rate_chunk(catalog, subs, parsed, scratch, out);
                            },
                        );
                    summary_ref.times.parse_rate += t.elapsed();
                    let t = Instant::now();
                    // The ordered pass: duplicates, xDR ids and each subscriber's credit, in
                    // file order.
                    let first_xdr = *next_xdr;
                    let mut movements: Vec<Movement> = Vec::new();
                    let mut keys = Vec::with_capacity(outcomes.len() * 16);
                    let mut notes = 0u64;
                    let mut quota: Vec<crate::packages::QuotaChange> = Vec::new();
                    let mut scratch = Vec::new();
                    if blocks == 0 && budget.is_none() {
                        // Room for the first block's keys at once (after it, for the rest of
                        // the file, below): grown key by key, the set doubled ~14 times on
                        // the way, each table fresh pages.
                        let _ = call_keys.try_reserve(outcomes.len());
                    }
                    for i in 0..outcomes.len() {
                        // The subscribers come in file order, at random in memory: ask for
                        // the one a few records ahead while this one is charged (its
                        // balance was a cache miss on nearly every record, ~half of this
                        // loop's time).
                        if let Some(Outcome::Rated(ahead)) = outcomes.get(i + ORDERED_PREFETCH) {
                            call_keys.prefetch(ahead.key);
                            if let Some(u) =
                                ahead.user.and_then(|ui| subscribers.users.get(ui as usize))
                            {
                                prefetch_value(u);
                            }
                            if let Some(slot) =
                                ahead.user.and_then(|ui| movement_of.get(ui as usize))
                            {
                                prefetch_value(slot);
                            }
                        }
                        let r = match &mut outcomes[i] {
                            Outcome::Bad(line, reason, raw) => {
                                summary_ref.bad_lines += 1;
                                let msg = format!("{}:{line}: {reason}", path_str);
                                tracing::debug!("bad line {msg}");
                                if summary_ref.bad_samples.len() < BAD_SAMPLES {
                                    summary_ref.bad_samples.push(msg);
                                }
                                rejects.add(*line, reason, raw);
                                continue;
                            }
                            Outcome::Note => {
                                notes += 1;
                                continue;
                            }
                            Outcome::Rated(r) => r,
                        };
                        if !call_keys.insert(r.key) {
                            summary_ref.duplicates += 1;
                            continue;
                        }
                        keys.extend_from_slice(&r.key.to_le_bytes());
                        r.xdr_id = *next_xdr;
                        *next_xdr += 1;
                        match r.status() {
                            Status::Ok => summary_ref.ok += 1,
                            Status::Unanswered => summary_ref.unanswered += 1,
                            Status::NoRate => summary_ref.no_rate += 1,
                            Status::UnknownUser => summary_ref.unknown_user += 1,
                        }
                        if let Some(ui) = r.user {
                            let u = &mut subscribers.users[ui as usize];
                            if r.rating.status == Status::Ok && !u.packages.is_empty() {
                                cover_by_packages(catalog, u, r, &mut quota, &mut scratch);
                            }
                            // By value: `u.credit -= cost` then reading it back stalled
                            // on store forwarding (the 16-byte read of a Decimal written
                            // in pieces), half of this loop's samples.
                            let after = u.credit - r.cost;
                            r.before = std::mem::replace(&mut u.credit, after);
                            if !r.cost.is_zero() {
                                let slot = &mut movement_of[ui as usize];
                                if *slot == NO_MOVEMENT {
                                    *slot = movements.len() as u32;
                                    moved.push(ui);
                                    movements.push(Movement {
                                        user_id: u.user_id,
                                        amount: Decimal::ZERO,
                                        balance_after: Decimal::ZERO,
                                    });
                                }
                                let m = &mut movements[*slot as usize];
                                m.amount -= r.cost;
                                m.balance_after = u.credit;
                            }
                        }
                        summary_ref.charged += r.cost;
                    }
                    for ui in moved.drain(..) {
                        movement_of[ui as usize] = NO_MOVEMENT;
                    }
                    rejects.flush().map_err(|source| BatchError::Io {
                        path: rejects.path.display().to_string(),
                        source,
                    })?;
                    let records = outcomes.len() as u64 - notes;
                    summary_ref.records += records;
                    summary_ref.xdrs += *next_xdr - first_xdr;
                    if blocks == 0 && budget.is_none() {
                        // The set of call keys grows with the file, doubling (each time a
                        // table twice the size, rehashed, in fresh pages): sized once, after
                        // the first block, for the rest of the file at that block's bytes
                        // a record.
                        // New keys only: bad lines and repeats add none.
                        let read = block.next_offset - block.offset;
                        let new_keys = (keys.len() / 16) as u64;
                        if read > 0 && !block.eof {
                            let rest = size.saturating_sub(block.next_offset);
                            let expected = rest.saturating_mul(new_keys) / read;
                            // A hint: if the memory is not there, the set grows as before.
                            let _ = call_keys.try_reserve(expected.min(MAX_KEYS_RESERVED) as usize);
                        }
                    }
                    // Arrow batches, built in parallel runs of the sorted order; one file
                    // per day, its runs in order.
                    let subs = &*subscribers;
                    let order = xdr_order(subs, &outcomes);
                    let chunk = order.len().div_ceil(threads).max(16 * 1024);
                    let built: Vec<Vec<(i64, arrow_array::RecordBatch, i64, i64)>> = order
                        .par_chunks(chunk)
                        .map(|c| build_chunk(catalog, subs, &file_name, &text_sizes, c))
                        .collect::<Result<_, _>>()?;
                    drop(order);
                    spare_outcomes = recycle_outcomes(outcomes);
                    // The next block's builders are sized by this one's text.
                    text_sizes.observe(
                        &built
                            .iter()
                            .flatten()
                            .map(|(_, b, _, _)| b)
                            .collect::<Vec<_>>(),
                    );
                    let mut by_day: Vec<(i64, Vec<arrow_array::RecordBatch>, i64, i64)> =
                        Vec::new();
                    for (day, batch, min_login, max_logout) in built.into_iter().flatten() {
                        match by_day.iter_mut().find(|d| d.0 == day) {
                            Some(d) => {
                                d.1.push(batch);
                                d.2 = d.2.min(min_login);
                                d.3 = d.3.max(max_logout);
                            }
                            None => by_day.push((day, vec![batch], min_login, max_logout)),
                        }
                    }
                    // A day still open gets wide pages (compaction rewrites its files once
                    // it closes); a closed day's file, small ones (it may stay alone).
                    let now = chrono::Utc::now().timestamp();
                    let batches = by_day
                        .into_iter()
                        .enumerate()
                        .map(|(k, (day, b, lo, hi))| {
                            let dir = xdr::partition_dir(&xdr_root, day * 86_400);
                            let end = if crate::compact::is_closed(day, now) {
                                ".parquet"
                            } else {
                                xdr::WIDE_PAGES_SUFFIX
                            };
                            (
                                dir.join(format!("cdr-{first_xdr:020}-{k:04}{end}")),
                                b,
                                lo,
                                hi,
                            )
                        })
                        .collect();
                    summary_ref.times.build += t.elapsed();
                    blocks += 1;
                    let out_of_budget = !block.eof
                        && budget.is_some_and(|b| blocks >= b)
                        && pause.as_ref().is_none_or(|p| p());
                    let rb = RatedBlock {
                        batches,
                        movements,
                        quota,
                        call_keys: keys,
                        first_xdr,
                        next_xdr: *next_xdr,
                        next_offset: block.next_offset,
                        next_line: block.next_line,
                        done: block.eof,
                        records,
                        bytes: block.next_offset - block.offset,
                    };
                    if rated_tx.send(rb).is_err() {
                        // The writer stopped on an error; it reports it.
                        break;
                    }
                    if out_of_budget {
                        // The reader sees the channel closed and stops; what it read ahead
                        // is read again by the next call, from the committed offset.
                        *stopped_ref = true;
                        break;
                    }
                }
                drop(rated_tx);
                Ok(())
            };
            let r2 = stage2();
            let (rw, unfolded) = writer.join().expect("writer thread does not panic");
            *unfolded_back = unfolded;
            r2?;
            let (pq, lg) = rw?;
            summary_ref.times.parquet = pq;
            summary_ref.times.ledger = lg;
            Ok(())
        });
        progress.file_finished(path);
        if rejects.written > 0 {
            tracing::warn!(file = %path.display(), bad = rejects.written, rejects = %rejects.path.display(), "bad lines copied to the rejects file");
            summary.rejects = Some(rejects.path.display().to_string());
        }
        if let Err(e) = result {
            // The in-memory state may be ahead of the ledger: reload it before any reuse.
            if let Err(r) = self.reload() {
                // Balances in memory may hold charges the ledger does not: nothing may
                // commit from this state (`serve` stops; its next start reloads).
                self.stale = true;
                return Err(r);
            }
            return Err(e);
        }
        summary.elapsed = started.elapsed();
        summary.finished = !stopped_early;
        if stopped_early {
            if let Some(stamp) = stamp {
                self.id_cache = Some((path.to_path_buf(), stamp, id));
            }
            tracing::debug!(file = %path.display(), records = summary.records, charged = %summary.charged, "part of a file rated; the rest at the next call");
            return Ok(summary);
        }
        tracing::info!(
            file = %path.display(), records = summary.records, xdrs = summary.xdrs, charged = %summary.charged,
            bad = summary.bad_lines, duplicates = summary.duplicates, secs = summary.elapsed.as_secs_f64(),
            "file rated"
        );
        Ok(summary)
    }

    /// Folds the committed CDR movements into the stored balances (before anything that
    /// stores a balance without knowing of them: payments, fees, refunds).
    pub fn fold_pending(&mut self) -> Result<(), BatchError> {
        if self.ledger.has_pending_batches()? {
            self.ledger.fold_pending(chrono::Utc::now().timestamp())?;
        }
        self.unfolded.clear();
        Ok(())
    }

    /// [`BatchRater::fold_pending`] when CDR movements wait unfolded (cheap otherwise).
    pub fn fold_if_unfolded(&mut self) -> Result<(), BatchError> {
        if self.unfolded.is_empty() {
            return Ok(());
        }
        self.fold_pending()
    }

    /// The CDR amount committed but not yet folded for `user_id`, if any: a commit stores
    /// the balance less it (the fold adds it).
    pub fn unfolded_of(&self, user_id: i64) -> Option<Decimal> {
        self.unfolded.get(&user_id).copied()
    }

    /// Reloads the in-memory state from the ledger (after a failed batch).
    pub(crate) fn reload(&mut self) -> Result<(), BatchError> {
        // Batches committed before the failure hold movements not yet folded.
        self.fold_pending()?;
        self.subscribers = Subscribers::load(self.catalog, self.ledger)?;
        self.call_keys = self.ledger.load_call_keys()?;
        self.next_xdr = self.ledger.next_xdr_id()?;
        self.stale = false;
        Ok(())
    }
}

/// Where a grown copy of the rated file `c` resumes: after `c`'s last byte when that ended a
/// line; else at the start of `c`'s unfinished last line (it may have been copied half
/// written: rated again in full, and if it was complete its call id makes it a duplicate).
fn continuation_point(
    path: &Path,
    c: &crate::ledger::RatedFile,
    header_end: u64,
    first_line: u64,
) -> std::io::Result<(u64, u64)> {
    let from = c
        .size
        .saturating_sub(crate::csv::MAX_RECORD_BYTES as u64)
        .max(header_end);
    let mut tail = Vec::new();
    open_cdr(path, from)?
        .take(c.size - from)
        .read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') || tail.is_empty() {
        return Ok((c.size, c.next_line));
    }
    let line = c.next_line.saturating_sub(1).max(first_line);
    Ok(match memchr::memrchr(b'\n', &tail) {
        Some(i) => (from + i as u64 + 1, line),
        None => (from, line),
    })
}

/// Rates a call again with the quota its subscriber's packages hold at its start (the
/// ordered pass: quota is taken in file order), taking what the package covers.
fn cover_by_packages(
    catalog: &Catalog,
    u: &mut UserState,
    r: &mut RatedCdr<'_>,
    quota: &mut Vec<crate::packages::QuotaChange>,
    scratch: &mut Vec<u8>,
) {
    let free = crate::packages::voice_available(&u.packages, r.cdr.start);
    if free <= 0 {
        return;
    }
    let Some(g) = u.group.map(|g| &catalog.groups[g]) else {
        return;
    };
    let Some(t) = g.tariff else {
        return;
    };
    let rated = crate::rating::rate_call_with_package(
        &catalog.tariffs[t],
        &catalog.tz,
        &r.cdr.callee,
        r.cdr.start,
        r.cdr.duration_secs,
        r.cdr.answered,
        free,
        scratch,
    );
    if rated.status != Status::Ok {
        return;
    }
    let taken =
        crate::packages::take_voice(&mut u.packages, r.cdr.start, rated.package_secs, quota);
    debug_assert_eq!(taken, rated.package_secs);
    r.cost = g.round(rated.cost_exact);
    r.rating = rated;
}

/// Records parsed and rated together by [`rate_chunk`] (one task of the parallel map).
const RATE_CHUNK: usize = 64;

/// What [`rate_chunk`] keeps between chunks.
#[derive(Default)]
struct RateScratch {
    digits: Vec<u8>,
    one: Vec<u8>,
    lookup: LookupScratch,
}

/// Scratch of [`Subscribers::of_cdrs_at`].
#[derive(Default)]
pub(crate) struct LookupScratch {
    hashes: Vec<u64>,
}

/// A record that is not rated.
enum Unrated<'a> {
    /// Line, reason, the record's bytes.
    Bad(u64, String, &'a [u8]),
    /// A `# …` note line of a rejects file.
    Note,
}

impl<'a> From<Unrated<'a>> for Outcome<'a> {
    fn from(u: Unrated<'a>) -> Self {
        match u {
            Unrated::Bad(line, reason, rec) => Outcome::Bad(line, reason, rec),
            Unrated::Note => Outcome::Note,
        }
    }
}

/// A record parsed, or what it is when it cannot be rated (a bad line, a note).
fn parse_one<'a>(
    reader: &crate::cdr::Reader,
    catalog: &Catalog,
    is_rejects: bool,
    buf: &'a [u8],
    span: &RecordSpan,
    fields: &mut Vec<std::borrow::Cow<'a, [u8]>>,
) -> Result<Cdr<'a>, Unrated<'a>> {
    let rec = &buf[span.start..span.end];
    if let Some(e) = span.error {
        return Err(Unrated::Bad(span.line, e.reason().to_string(), rec));
    }
    if is_rejects && rec.starts_with(b"# ") {
        return Err(Unrated::Note);
    }
    match reader.parse_with(rec, span.line, &catalog.tz, fields) {
        Err(reason) => Err(Unrated::Bad(span.line, reason, rec)),
        Ok(cdr) if cdr.duration_secs > catalog.max_call_secs => Err(Unrated::Bad(
            span.line,
            format!(
                "billable seconds: {} is more than [cdr] max_call_secs = {}",
                cdr.duration_secs, catalog.max_call_secs
            ),
            rec,
        )),
        Ok(cdr) => Ok(cdr),
    }
}

/// Rates a run of parsed records, each as [`rate_found`] alone would, with the lookups that
/// miss the cache done together: the destinations' longest prefixes in one interleaved
/// walk of the tries ([`PrefixTrie::longest_match_many`]), then the prefix entries, their
/// schedules and the rate rows asked for ahead of their use. With 50k prefixes these were
/// a chain of 4–6 dependent cache misses per call, ~70% of the rating's own time.
fn rate_chunk<'a>(
    catalog: &Catalog,
    subs: &Subscribers,
    parsed: Vec<Result<Cdr<'a>, Unrated<'a>>>,
    scratch: &mut RateScratch,
    out: &mut [Outcome<'a>],
) {
    use crate::catalog::{PrefixSearch, PrefixTrie};
    // Who each call is, and the digits of those the rating will look a prefix up for (a
    // subscriber whose group has a tariff, an answered call of some seconds: the cases
    // `rate_call_with_lookup` calls its lookup in).
    scratch.digits.clear();
    let calls: Vec<(&str, &str, i64)> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|cdr| (cdr.account.as_ref(), cdr.caller.as_ref(), cdr.start))
        .collect();
    let mut of_calls = vec![None; calls.len()];
    subs.of_cdrs_at(&calls, &mut of_calls, &mut scratch.lookup);
    // Their subscribers, all asked for before the first is read (its group names the
    // tariff: one cache miss after another, 4% of `ratel rate`, without this).
    for &(ui, _) in of_calls.iter().flatten() {
        if let Some(u) = subs.users.get(ui as usize) {
            prefetch_value(u);
        }
    }
    let mut of_calls = of_calls.into_iter();
    let mut found: Vec<Option<(u32, MatchedBy)>> = Vec::with_capacity(parsed.len());
    let mut wanted: Vec<(usize, &Tariff, usize)> = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.iter().enumerate() {
        let Ok(cdr) = p else {
            found.push(None);
            continue;
        };
        let f = of_calls
            .next()
            .expect("one lookup per parsed record (collected from the same list)");
        let user = f.map(|(ui, _)| &subs.users[ui as usize]);
        if let Some(tf) = tariff_of(catalog, user) {
            if crate::rating::is_priced(cdr.answered, cdr.duration_secs) {
                crate::rating::destination_digits(&cdr.callee, &mut scratch.one);
                let from = scratch.digits.len();
                scratch.digits.extend_from_slice(&scratch.one);
                wanted.push((i, tf, from));
            }
        }
        found.push(f);
    }
    let mut prefix: Vec<Option<Option<u32>>> = vec![None; parsed.len()];
    {
        let ends = wanted
            .iter()
            .skip(1)
            .map(|w| w.2)
            .chain(std::iter::once(scratch.digits.len()));
        let mut searches: Vec<PrefixSearch<'_>> = wanted
            .iter()
            .zip(ends)
            .map(|(&(_, tf, from), to)| PrefixSearch::new(&tf.trie, &scratch.digits[from..to]))
            .collect();
        PrefixTrie::longest_match_many(&mut searches);
        for (&(i, _, _), s) in wanted.iter().zip(&searches) {
            prefix[i] = Some(s.result());
        }
    }
    // The prefix entries, then their schedules, then the rows in force at the start
    // (where the schedule has one row: no time-zone arithmetic twice).
    let entries = || {
        wanted.iter().filter_map(|&(i, tf, _)| {
            prefix[i]
                .flatten()
                .and_then(|p| tf.prefixes.get(p as usize))
                .map(|pr| (tf, pr))
        })
    };
    for (_, pr) in entries() {
        prefetch_value(pr);
    }
    for (_, pr) in entries() {
        prefetch(pr.schedule.first_segment(), 1);
    }
    for (tf, pr) in entries() {
        if pr.schedule.is_constant() {
            let row = pr.schedule.at(&catalog.tz, 0);
            if let Some(r) = tf.rows.get(row as usize) {
                prefetch_value(r);
            }
        }
    }
    let one = &mut scratch.one;
    for (slot, ((p, f), pidx)) in out
        .iter_mut()
        .zip(parsed.into_iter().zip(found).zip(prefix))
    {
        *slot = match p {
            Err(u) => u.into(),
            Ok(cdr) => Outcome::Rated(rate_found(catalog, subs, cdr, f, |tf, callee| {
                // Looked up above in every case the rating asks (a lookup here only if
                // that ever changes: the result is the same).
                pidx.unwrap_or_else(|| {
                    crate::rating::destination_digits(callee, one);
                    tf.trie.longest_match(one)
                })
            })),
        };
    }
}

/// Rates a call whose subscriber (if any) is `found`; `lookup` gives the longest prefix of
/// the callee in a tariff (asked only for an answered call of some seconds).
fn rate_found<'a>(
    catalog: &Catalog,
    subs: &Subscribers,
    cdr: Cdr<'a>,
    found: Option<(u32, MatchedBy)>,
    lookup: impl FnOnce(&Tariff, &str) -> Option<u32>,
) -> RatedCdr<'a> {
    let key = call_key(cdr.call_id.as_bytes());
    let (user, matched) = match found {
        Some((u, m)) => (Some(u), m),
        None => (None, MatchedBy::Account),
    };
    let zero = CallRating::zero;
    let (rating, cost) = match user {
        None => (zero(Status::UnknownUser), Decimal::ZERO),
        Some(ui) => {
            let u = &subs.users[ui as usize];
            match u.group.map(|g| &catalog.groups[g]) {
                Some(g) => match g.tariff {
                    Some(t) => {
                        let tf = &catalog.tariffs[t];
                        let r = crate::rating::rate_call_with_lookup(
                            tf,
                            &catalog.tz,
                            cdr.start,
                            cdr.duration_secs,
                            cdr.answered,
                            0,
                            || lookup(tf, &cdr.callee),
                        );
                        let cost = if r.status == Status::Ok {
                            g.round(r.cost_exact)
                        } else {
                            Decimal::ZERO
                        };
                        (r, cost)
                    }
                    None if !cdr.answered || cdr.duration_secs == 0 => {
                        (zero(Status::Unanswered), Decimal::ZERO)
                    }
                    None => (zero(Status::NoRate), Decimal::ZERO),
                },
                None if !cdr.answered || cdr.duration_secs == 0 => {
                    (zero(Status::Unanswered), Decimal::ZERO)
                }
                None => (zero(Status::NoRate), Decimal::ZERO),
            }
        }
    };
    RatedCdr {
        cdr,
        user,
        matched,
        key,
        rating,
        cost,
        xdr_id: 0,
        before: Decimal::ZERO,
    }
}

/// Reads past the end of an over-long line whose first `had` bytes were read: returns the
/// bytes of the line including its `\n`, the bytes read after it, and whether the file ended.
fn skip_line(file: &mut dyn Read, had: u64) -> std::io::Result<(u64, Vec<u8>, bool)> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut skipped = had;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((skipped, Vec::new(), true));
        }
        if let Some(i) = memchr::memchr(b'\n', &chunk[..n]) {
            return Ok((skipped + i as u64 + 1, chunk[i + 1..n].to_vec(), false));
        }
        skipped += n as u64;
    }
}

/// A reader that can look one byte ahead, to tell whether it is at its end.
struct LookAhead<R> {
    inner: R,
    next: Option<u8>,
}

impl<R: Read> LookAhead<R> {
    /// Whether nothing is left to read (a byte read to know it is kept for the next read).
    fn at_end(&mut self) -> std::io::Result<bool> {
        if self.next.is_some() {
            return Ok(false);
        }
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(0) => return Ok(true),
                Ok(_) => {
                    self.next = Some(one[0]);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Read for LookAhead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.next.take(), buf.first_mut()) {
            (Some(b), Some(first)) => {
                *first = b;
                Ok(1)
            }
            (next, _) => {
                self.next = next;
                self.inner.read(buf)
            }
        }
    }
}

/// Stage 1: reads `file` from `offset` in blocks cut at record boundaries.
fn read_blocks(
    file: Box<dyn Read + Send>,
    dialect: Dialect,
    mut offset: u64,
    mut line: u64,
    block_bytes: usize,
    tx: crossbeam_channel::Sender<Result<Block, std::io::Error>>,
) {
    let mut file = LookAhead {
        inner: file,
        next: None,
    };
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = std::mem::take(&mut carry);
        // Fill the block (short reads happen) into reserved, not zeroed, memory: zeroing
        // the whole block first was 17% of `ratel rate` on files of a few hundred calls.
        buf.reserve(block_bytes);
        // A block filled to the byte may end the file (a file of exactly a block, or of
        // blocks of one size: `equal_blocks`): a byte more tells, else the next block
        // would be an empty one with a commit of its own.
        let eof = match (&mut file)
            .take(block_bytes as u64)
            .read_to_end(&mut buf)
            .and_then(|n| {
                if n < block_bytes {
                    Ok(true)
                } else {
                    file.at_end()
                }
            }) {
            Ok(eof) => eof,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let filled = buf.len();
        let mut spans = Vec::with_capacity(filled / 64);
        let (consumed, next_line) = scan_records_with(dialect, &buf, line, eof, &mut spans);
        if consumed == 0 && !eof {
            if buf.len() <= crate::csv::MAX_RECORD_BYTES + crate::csv::MAX_QUOTED_BYTES {
                // One record longer than a block: grow the block and read on.
                carry = buf;
                carry.reserve(block_bytes);
                continue;
            }
            // A line longer than any record: skip it to its end without holding it, and
            // report it as one bad line.
            let (skipped, rest, at_eof) = match skip_line(&mut file, buf.len() as u64) {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            carry = rest;
            let block = Block {
                buf: Vec::new(),
                spans: vec![RecordSpan {
                    start: 0,
                    end: 0,
                    line,
                    error: Some(crate::csv::RecordError::TooLong),
                }],
                offset,
                next_offset: offset + skipped,
                next_line: line + 1,
                eof: at_eof && carry.is_empty(),
            };
            offset = block.next_offset;
            line += 1;
            let last = block.eof;
            if tx.send(Ok(block)).is_err() || last {
                return;
            }
            continue;
        }
        carry = buf[consumed..].to_vec();
        // Skip blank lines (a trailing newline at the end of a file, say).
        spans.retain(|s| s.end > s.start || s.error.is_some());
        let block = Block {
            next_offset: offset + consumed as u64,
            next_line,
            offset,
            buf,
            spans,
            eof: eof && carry.is_empty(),
        };
        offset = block.next_offset;
        line = next_line;
        let last = block.eof;
        if tx.send(Ok(block)).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, LoadedConfig};

    /// As many blocks as the block size would cut, of one size (the last one takes what is
    /// left, at most that size).
    #[test]
    fn a_file_is_cut_into_blocks_of_one_size() {
        // The month file: 147,334,646 bytes after a 64-byte header, 32 MiB blocks: 4.4
        // blocks become 5 of 29,466,917 (4 × 29,466,917 = 117,867,668 < 147,334,582 ≤ 5 ×).
        assert_eq!(equal_blocks(147_334_646 - 64, 32 << 20), 29_466_917);
        // Exactly two blocks' worth stays two blocks.
        assert_eq!(equal_blocks(64 << 20, 32 << 20), 32 << 20);
        // A byte more: three blocks of a third each (rounded up).
        assert_eq!(equal_blocks((64 << 20) + 1, 32 << 20), 22_369_622);
        // Smaller than a block: one block of the whole.
        assert_eq!(equal_blocks(1000, 32 << 20), 1000);
        // Nothing left, or a zero size: never a zero-byte block.
        assert_eq!(equal_blocks(0, 32 << 20), 1);
        assert_eq!(equal_blocks(1000, 0), 1);
    }

    /// The blocks `read_blocks` cuts `data` into, `block_bytes` at a time.
    fn blocks_of(data: &[u8], block_bytes: usize) -> Vec<Block> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let dialect = Dialect {
            delimiter: b',',
            multiline: false,
        };
        let file: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(data.to_vec()));
        read_blocks(file, dialect, 0, 1, block_bytes, tx);
        rx.iter().map(|b| b.unwrap()).collect()
    }

    /// A file of exactly whole blocks ends with its last block, not with an empty one (which
    /// was a commit of its own, and carried the file's fold out of the last block's shadow).
    #[test]
    fn a_file_of_whole_blocks_ends_with_its_last_block() {
        // Four records of 10 bytes.
        let data = b"r0,1,2,34\nr1,1,2,34\nr2,1,2,34\nr3,1,2,34\n";
        for (block_bytes, blocks) in [(40, 1), (20, 2), (10, 4), (13, 4), (64, 1)] {
            let got = blocks_of(data, block_bytes);
            assert_eq!(got.len(), blocks, "{block_bytes}-byte blocks");
            let eof: Vec<bool> = got.iter().map(|b| b.eof).collect();
            let mut want = vec![false; blocks];
            want[blocks - 1] = true;
            assert_eq!(eof, want, "{block_bytes}-byte blocks");
            let records: Vec<usize> = got.iter().map(|b| b.spans.len()).collect();
            assert!(records.iter().all(|&n| n > 0), "{block_bytes}: {records:?}");
            assert_eq!(records.iter().sum::<usize>(), 4, "{block_bytes}");
            assert_eq!(got.last().unwrap().next_offset, data.len() as u64);
        }
    }

    /// The byte read ahead comes back first, then the rest.
    #[test]
    fn a_look_ahead_reader_gives_back_the_byte_it_looked_at() {
        let mut r = LookAhead {
            inner: std::io::Cursor::new(b"ab".to_vec()),
            next: None,
        };
        assert!(!r.at_end().unwrap());
        assert!(!r.at_end().unwrap(), "asking again reads nothing more");
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"ab");
        assert!(r.at_end().unwrap());
    }

    /// A catalog of one group, `g`, without a tariff.
    fn one_group_catalog() -> Catalog {
        let cfg = "[[group]]\nname = \"g\"\n";
        Catalog::build(&LoadedConfig::from_str(cfg, ConfigSource::BuiltinDemo, ".".into()).unwrap())
            .unwrap()
    }

    /// A recycled identifier: calls that began before it was taken off its first owner
    /// bill that owner, later ones the new owner; an identifier never moved bills its
    /// owner whenever the call was (history loaded after accounts were created).
    #[test]
    fn cdrs_bill_the_owner_of_the_identifier_at_their_start() {
        let catalog = one_group_catalog();
        let row = |id: i64, name: &str| UserRow {
            user_id: id,
            username: Some(name.into()),
            group_name: "g".into(),
            credit: Decimal::ZERO,
        };
        let mut s = Subscribers::new(
            &catalog,
            vec![row(1, "old"), row(2, "new"), row(3, "other")],
        );
        s.add_account(1, AccountKind::Dn, "19173750980");
        s.add_account(1, AccountKind::Voip, "1001");
        s.add_account(3, AccountKind::Dn, "442079460000");
        let t = 1_800_000_000;
        // The DN moves from 1 to 2 at t; the voip account is dropped at t.
        s.remove_account(1, AccountKind::Dn, "19173750980", t);
        s.add_account(2, AccountKind::Dn, "19173750980");
        s.remove_account(1, AccountKind::Voip, "1001", t);
        let who = |s: &Subscribers, acc: &str, caller: &str, at: i64| {
            s.of_cdr_at(acc, caller, at)
                .map(|(i, _)| s.users[i as usize].user_id)
        };
        assert_eq!(who(&s, "", "+19173750980", t - 10), Some(1));
        assert_eq!(who(&s, "", "0019173750980", t), Some(2));
        assert_eq!(who(&s, "", "19173750980", t + 10), Some(2));
        assert_eq!(who(&s, "1001", "", t - 1), Some(1));
        assert_eq!(who(&s, "1001", "", t + 1), None);
        // Never moved: any time.
        assert_eq!(who(&s, "", "442079460000", 0), Some(3));
        // A rename moves the radius account name the same way.
        s.rename(3, "other2", t);
        assert_eq!(who(&s, "other", "", t - 1), Some(3));
        assert_eq!(who(&s, "other", "", t + 1), None);
        assert_eq!(who(&s, "other2", "", 0), Some(3));
        // A deleted client's identifiers bill it for calls before the deletion.
        s.delete(&[3], t + 100);
        assert_eq!(who(&s, "", "442079460000", t + 99), Some(3));
        assert_eq!(who(&s, "", "442079460000", t + 100), None);
    }

    /// The outcome vector goes from one block to the next with its memory: emptied, its
    /// allocation (pointer and capacity) unchanged. (That rests on std's in-place collect,
    /// an optimization it does not promise: if a toolchain drops it, this fails and the
    /// recycling needs another way, as each block would fault its outcomes in again.)
    #[test]
    fn outcome_vectors_are_recycled_with_their_memory() {
        let mut v: Vec<Outcome<'_>> = Vec::with_capacity(1000);
        v.resize_with(700, || Outcome::Note);
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        let w: Vec<Outcome<'static>> = recycle_outcomes(v);
        assert!(w.is_empty());
        assert_eq!((w.as_ptr() as usize, w.capacity()), (ptr, cap));
    }

    /// The lookups many at a time (`of_cdrs_at`, through the account index) answer what
    /// `of_cdr_at` answers one by one: voip before radius accounts, trimmed accounts,
    /// DNs for the rest, unknown names; after accounts change (the index is dropped and
    /// rebuilt) and once an identifier changed hands (the index is not used).
    #[test]
    fn lookups_together_match_lookups_one_by_one() {
        let catalog = one_group_catalog();
        let rows = (1..=500)
            .map(|id| UserRow {
                user_id: id,
                username: (id % 50 != 0).then(|| format!("user{id}")),
                group_name: "g".into(),
                credit: Decimal::ZERO,
            })
            .collect();
        let mut s = Subscribers::new(&catalog, rows);
        for id in (1..=500).step_by(3) {
            s.add_account(id, AccountKind::Voip, &format!("{}", 1000 + id));
            s.add_account(id, AccountKind::Dn, &format!("1917375{id:04}"));
        }
        // A voip account named like another client's username: voip wins.
        s.add_account(7, AccountKind::Voip, "user8");
        let mut next = crate::xorshift(0x2545_F491_4F6C_DD1D);
        let mut queries: Vec<(String, String, i64)> = Vec::new();
        for _ in 0..3000 {
            let account = match next() % 6 {
                0 => format!("user{}", next() % 600),
                1 => format!("{}", 1000 + next() % 600),
                2 => format!("  user{} ", next() % 600),
                3 => String::new(),
                4 => "user8".into(),
                _ => format!("x{}", next() % 10),
            };
            let caller = match next() % 3 {
                0 => format!("+1917375{:04}", next() % 600),
                1 => format!("001917375{:04}", next() % 600),
                _ => "anonymous".into(),
            };
            queries.push((account, caller, 1_800_000_000 + (next() % 1000) as i64));
        }
        // Around the rename below: the old and the new name, before and after it.
        for t in [1_800_000_499, 1_800_000_500, 1_800_000_501] {
            for name in ["user4", "user4b", " user4 "] {
                queries.push((name.into(), String::new(), t));
            }
        }
        let check = |s: &Subscribers, what: &str| {
            let calls: Vec<(&str, &str, i64)> = queries
                .iter()
                .map(|(a, c, t)| (a.as_str(), c.as_str(), *t))
                .collect();
            for chunk in calls.chunks(64) {
                let mut out = vec![Some((u32::MAX, MatchedBy::Dn)); chunk.len()];
                s.of_cdrs_at(chunk, &mut out, &mut LookupScratch::default());
                for (&(a, c, t), o) in chunk.iter().zip(&out) {
                    assert_eq!(*o, s.of_cdr_at(a, c, t), "{what}: {a:?} {c:?}");
                }
            }
        };
        check(&s, "no index");
        s.build_account_index();
        assert!(s.account_index.is_some());
        check(&s, "index");
        s.add_account(2, AccountKind::Voip, "1599");
        assert!(s.account_index.is_none(), "a new account drops the index");
        s.build_account_index();
        check(&s, "rebuilt after a new account");
        s.rename(4, "user4b", 1_800_000_500);
        assert!(s.account_index.is_none(), "a rename drops the index");
        s.build_account_index();
        assert!(!s.prior.is_empty());
        check(&s, "an identifier changed hands");
        // Before the rename "user4" is client 4's; after it nobody's, "user4b" is.
        let who = |s: &Subscribers, a: &str, t: i64| {
            let mut out = [None];
            s.of_cdrs_at(&[(a, "", t)], &mut out, &mut LookupScratch::default());
            out[0].map(|(i, _)| s.users[i as usize].user_id)
        };
        assert_eq!(who(&s, "user4", 1_800_000_499), Some(4));
        assert_eq!(who(&s, "user4", 1_800_000_500), None);
        assert_eq!(who(&s, "user4b", 1_800_000_499), Some(4));
        assert_eq!(who(&s, "user5", 1_800_000_499), Some(5));
        s.remove_account(1, AccountKind::Voip, "1001", 1_800_000_600);
        assert!(
            s.account_index.is_none(),
            "a removed account drops the index"
        );
        s.build_account_index();
        check(&s, "an account removed");
        s.add(
            &catalog,
            UserRow {
                user_id: 10,
                username: Some("user10x".into()),
                group_name: "g".into(),
                credit: Decimal::ZERO,
            },
        );
        assert!(
            s.account_index.is_none(),
            "a replaced client drops the index"
        );
        s.build_account_index();
        check(&s, "a client replaced");
        s.delete(&[13], 1_800_000_700);
        assert!(s.account_index.is_none(), "a deletion drops the index");
        s.build_account_index();
        check(&s, "a client deleted");
    }
}
