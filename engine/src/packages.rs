//! Packages and expiry (DESIGN.md Part 2 "Packages and expiry"): a `[[package]]` is a
//! periodic fee with included voice seconds and data bytes; a client package moves
//! `assigned → active → (renewed …) → deactivated | closed`.
//!
//! This module holds the pure parts — period arithmetic in the rating time zone, and how
//! usage takes quota (earliest period end first) — and the core's package operations:
//! activation, renewal at period end (due renewals done once each, in order, also after a
//! restart), deactivation and closing. Every fee is a `package_fee` journal row whose
//! idempotency key names the package, its activation and the period, so a renewal can
//! never be charged twice; the package row, the fee, the balance and the event commit in
//! one transaction.

use chrono::{Datelike, LocalResult, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use rust_decimal::Decimal;

/// How long a package period lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `day` (1), `week` (7) or `"<N> days"`: N local calendar days, same local time.
    Days(u32),
    /// `month`: to the same day of the month (clamped to the month's last day, counted from
    /// the activation's day: Jan 31 → Feb 28/29 → Mar 31), same local time.
    Month,
}

/// Longest `"<N> days"` period.
pub const MAX_PERIOD_DAYS: u32 = 3660;

impl Period {
    /// Parses `day`, `week`, `month` or `"<N> days"`.
    pub fn parse(s: &str) -> Result<Period, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "day" => return Ok(Period::Days(1)),
            "week" => return Ok(Period::Days(7)),
            "month" => return Ok(Period::Month),
            _ => {}
        }
        let n = t
            .strip_suffix("days")
            .or_else(|| t.strip_suffix("day"))
            .map(str::trim)
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| format!("{s:?}: expected day, week, month or \"<N> days\""))?;
        if !(1..=MAX_PERIOD_DAYS).contains(&n) {
            return Err(format!("{s:?}: N must be 1..={MAX_PERIOD_DAYS}"));
        }
        Ok(Period::Days(n))
    }

    pub fn describe(&self) -> String {
        match self {
            Period::Days(1) => "day".into(),
            Period::Days(7) => "week".into(),
            Period::Days(n) => format!("{n} days"),
            Period::Month => "month".into(),
        }
    }
}

/// A `[[package]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub fee: Decimal,
    pub period: Period,
    pub voice_seconds: i64,
    pub data_bytes: i64,
}

/// The instant `n` periods after `anchor` (unix seconds), counted in `tz`'s local time from
/// the anchor's local date and time: `n` days / months are added to the anchor's local
/// date (months clamped to the month's last day), and the local time kept. A local time
/// that does not exist (a DST gap) moves forward to the first one that does; an ambiguous
/// one (the repeated hour) is the earlier. `None` beyond the calendar's range.
pub fn boundary(tz: &Tz, period: Period, anchor: i64, n: u32) -> Option<i64> {
    let local = tz.timestamp_opt(anchor, 0).single()?.naive_local();
    let date = match period {
        Period::Days(d) => local
            .date()
            .checked_add_days(chrono::Days::new(d as u64 * n as u64))?,
        Period::Month => local.date().checked_add_months(chrono::Months::new(n))?,
    };
    resolve_local(tz, date.and_time(local.time()))
}

/// A local date-time as an instant: the earlier of an ambiguous pair; a time in a gap moves
/// forward minute by minute to the first that exists (gaps are at most a few hours).
fn resolve_local(tz: &Tz, mut t: NaiveDateTime) -> Option<i64> {
    for _ in 0..(6 * 60) {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return Some(x.timestamp()),
            LocalResult::Ambiguous(a, b) => return Some(a.timestamp().min(b.timestamp())),
            LocalResult::None => t += chrono::Duration::minutes(1),
        }
    }
    None
}

/// Where a client package is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageStatus {
    Assigned,
    Active,
    Deactivated,
    Closed,
}

impl PackageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageStatus::Assigned => "assigned",
            PackageStatus::Active => "active",
            PackageStatus::Deactivated => "deactivated",
            PackageStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<PackageStatus> {
        Some(match s {
            "assigned" => PackageStatus::Assigned,
            "active" => PackageStatus::Active,
            "deactivated" => PackageStatus::Deactivated,
            "closed" => PackageStatus::Closed,
            _ => return None,
        })
    }
}

/// A package assigned to a client: its state as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPackage {
    pub id: i64,
    pub user_id: i64,
    /// The `[[package]]` name.
    pub package: String,
    pub status: PackageStatus,
    pub assigned_at: i64,
    /// Start of the first period of the current activation (the period arithmetic's
    /// origin); 0 before the first activation.
    pub anchor: i64,
    /// Periods since the anchor of the current period (0 = the activation's).
    pub period_no: u32,
    /// The current period `[start, end)` (unix seconds); 0 when never active.
    pub period_start: i64,
    pub period_end: i64,
    /// Quota left in the current period (0 unless active).
    pub voice_left: i64,
    pub data_left: i64,
    /// Periods that took a fee so far (activations, renewals): the fee of cycle `n` has
    /// the idempotency key `package:<id>:<n>`, so no period is ever charged twice.
    pub cycle: u32,
}

impl ClientPackage {
    /// Active, with its current period covering `at`.
    pub fn covers(&self, at: i64) -> bool {
        self.status == PackageStatus::Active && self.period_start <= at && at < self.period_end
    }

    /// Quota left at `at` (nothing when the period does not cover it).
    pub fn has_quota_at(&self, at: i64) -> bool {
        self.covers(at) && (self.voice_left > 0 || self.data_left > 0)
    }
}

/// Quota left after usage took some: (client package id, voice left, data left).
pub type QuotaChange = (i64, i64, i64);

/// One kind of quota a package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    Voice,
    Data,
}

impl Quota {
    fn get(self, p: &ClientPackage) -> i64 {
        match self {
            Quota::Voice => p.voice_left,
            Quota::Data => p.data_left,
        }
    }

    fn left(self, p: &mut ClientPackage) -> &mut i64 {
        match self {
            Quota::Voice => &mut p.voice_left,
            Quota::Data => &mut p.data_left,
        }
    }
}

/// What the packages covering `at` hold of one quota.
fn available(pkgs: &[ClientPackage], at: i64, q: Quota) -> u64 {
    pkgs.iter()
        .filter(|p| p.covers(at))
        .map(|p| q.get(p))
        .fold(0u64, |a, n| a.saturating_add(n.max(0) as u64))
}

/// Takes `want` of one quota (at most what is available) from the packages covering `at`,
/// in the order usage takes them — the period that ends first, then the older package;
/// records each package's new quota in `changed` and returns what was taken.
fn take(
    pkgs: &mut [ClientPackage],
    at: i64,
    want: u64,
    q: Quota,
    changed: &mut Vec<QuotaChange>,
) -> u64 {
    let mut order: Vec<usize> = (0..pkgs.len())
        .filter(|&i| pkgs[i].covers(at) && q.get(&pkgs[i]) > 0)
        .collect();
    order.sort_by_key(|&i| (pkgs[i].period_end, pkgs[i].id));
    let mut taken = 0u64;
    for i in order {
        if taken >= want {
            break;
        }
        let p = &mut pkgs[i];
        let left = q.left(p);
        let t = (*left as u64).min(want - taken);
        *left -= t as i64;
        taken += t;
        changed.push((p.id, p.voice_left, p.data_left));
    }
    taken
}

/// Voice seconds the packages can cover for a call starting at `at`.
pub fn voice_available(pkgs: &[ClientPackage], at: i64) -> i64 {
    available(pkgs, at, Quota::Voice).min(i64::MAX as u64) as i64
}

/// Data bytes the packages can cover for an update at `at`.
pub fn data_available(pkgs: &[ClientPackage], at: i64) -> u64 {
    available(pkgs, at, Quota::Data)
}

/// Takes `want` voice seconds (at most what is available) for a call starting at `at`.
pub fn take_voice(
    pkgs: &mut [ClientPackage],
    at: i64,
    want: i64,
    changed: &mut Vec<QuotaChange>,
) -> i64 {
    take(pkgs, at, want.max(0) as u64, Quota::Voice, changed) as i64
}

/// Takes `want` data bytes (at most what is available) for an update at `at`.
pub fn take_data(
    pkgs: &mut [ClientPackage],
    at: i64,
    want: u64,
    changed: &mut Vec<QuotaChange>,
) -> u64 {
    take(pkgs, at, want, Quota::Data, changed)
}

/// The end of the earliest active period (IBSng's `nearest_exp_date`).
pub fn nearest_expiry(pkgs: &[ClientPackage]) -> Option<i64> {
    pkgs.iter()
        .filter(|p| p.status == PackageStatus::Active)
        .map(|p| p.period_end)
        .min()
}

/// `YYYY-MM-DD HH:MM:SS` of an instant in `tz` (package periods in logs and comments).
pub fn local_time(tz: &Tz, t: i64) -> String {
    tz.timestamp_opt(t, 0)
        .single()
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Days in the month of a local date (for tests and reports).
pub fn days_in_month(year: i32, month: u32) -> u32 {
    let first = chrono::NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .expect("in range");
    (next - first).num_days() as u32 + first.day0()
}

// ---- The core's package operations ----------------------------------------------------

use crate::batch::BatchRater;
use crate::catalog::Catalog;
use crate::commands::{CommandError, EndSessions};
use crate::ledger::{PackageFee, PackageWrite};

/// Who renews packages at period end (the actor of those journal rows and events).
pub const SYSTEM_ACTOR: &str = "system";

/// Furthest back an activation may be dated.
pub const MAX_BACKDATE_SECS: i64 = 366 * 86_400;

/// Most due renewals one transaction commits (the core goes back to RADIUS in between).
pub const RENEWALS_PER_COMMIT: usize = 2_000;

/// A package operation asked of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageOp {
    /// Assigns a `[[package]]` to a client (nothing charged yet).
    Assign {
        user_id: i64,
        package: String,
    },
    /// Activates an assigned or deactivated package: the fee is taken (refused when the
    /// credit is less), the quota granted, the first period starts at `at` (default now;
    /// an earlier `at` dates the activation back, and the renewals since are done at once).
    Activate {
        id: i64,
        at: Option<i64>,
    },
    Deactivate {
        id: i64,
    },
    /// Renews a package now: a new period from now, the fee taken, the quota reset.
    Renew {
        id: i64,
    },
    Close {
        id: i64,
    },
    /// Renews every active or deactivated package of these clients now (IBSng
    /// renewUsers), all or none: one client short of a fee renews nothing (a retry after
    /// the refusal must not charge the others twice).
    RenewClients {
        user_ids: Vec<i64>,
    },
}

fn invalid(m: impl Into<String>) -> CommandError {
    CommandError::Invalid(m.into())
}

fn ledger_err(e: crate::ledger::LedgerError) -> CommandError {
    match e {
        crate::ledger::LedgerError::Rejected(m) => CommandError::Invalid(m),
        other => CommandError::Ledger(other.to_string()),
    }
}

/// The open package `id` as the core holds it.
fn find(rater: &BatchRater<'_>, id: i64) -> Result<ClientPackage, CommandError> {
    let not_found = || CommandError::NotFound(format!("no open client package with id {id}"));
    let stored = rater
        .ledger
        .client_package(id)
        .map_err(ledger_err)?
        .ok_or_else(not_found)?;
    rater
        .subscribers
        .by_id(stored.user_id)
        .and_then(|u| u.packages.iter().find(|p| p.id == id).cloned())
        .ok_or_else(not_found)
}

/// A package starting a period run at `anchor`: period 0, quota full.
fn started(
    catalog: &Catalog,
    pkg: &Package,
    mut p: ClientPackage,
    anchor: i64,
) -> Result<ClientPackage, CommandError> {
    let end = boundary(&catalog.tz, pkg.period, anchor, 1)
        .ok_or_else(|| invalid("the period's end is beyond the calendar"))?;
    p.status = PackageStatus::Active;
    p.anchor = anchor;
    p.period_no = 0;
    p.period_start = anchor;
    p.period_end = end;
    p.voice_left = pkg.voice_seconds;
    p.data_left = pkg.data_bytes;
    p.cycle += 1;
    Ok(p)
}

/// The fee of a period of `p` (already in its new period) against `credit`.
fn fee_of(
    catalog: &Catalog,
    pkg: &Package,
    p: &ClientPackage,
    credit: Decimal,
) -> Option<PackageFee> {
    (!pkg.fee.is_zero()).then(|| PackageFee {
        amount: pkg.fee,
        balance_after: credit - pkg.fee,
        idem_key: format!("package:{}:{}", p.id, p.cycle),
        comment: format!(
            "{} {} → {}",
            pkg.name,
            local_time(&catalog.tz, p.period_start),
            local_time(&catalog.tz, p.period_end)
        ),
    })
}

fn short_of(u_credit: Decimal, pkg: &Package) -> CommandError {
    invalid(format!(
        "credit {u_credit} is less than the fee {} of package {:?}",
        pkg.fee, pkg.name
    ))
}

/// Runs one package operation on the core; answers the packages as it left them.
pub fn operate(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    op: PackageOp,
    actor: &str,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) -> Result<Vec<ClientPackage>, CommandError> {
    let config_pkg = |name: &str| {
        catalog
            .package(name)
            .cloned()
            .ok_or_else(|| invalid(format!("package {name:?} is not in the config")))
    };
    let live_credit = |rater: &mut BatchRater<'_>, user_id: i64| {
        rater
            .subscribers
            .live_mut(user_id)
            .map(|u| u.credit)
            .ok_or(CommandError::UserNotFound(user_id))
    };
    let mut writes: Vec<PackageWrite> = Vec::new();
    let write = |package, event, fee, comment: String| PackageWrite {
        package,
        event,
        fee,
        actor: actor.to_string(),
        comment,
    };
    match op {
        PackageOp::Assign { user_id, package } => {
            let pkg = config_pkg(&package)?;
            live_credit(rater, user_id)?;
            let p = ClientPackage {
                id: 0,
                user_id,
                package: pkg.name.clone(),
                status: PackageStatus::Assigned,
                assigned_at: now,
                anchor: 0,
                period_no: 0,
                period_start: 0,
                period_end: 0,
                voice_left: 0,
                data_left: 0,
                cycle: 0,
            };
            writes.push(write(p, "clients_packages.assign", None, pkg.name.clone()));
        }
        PackageOp::Activate { id, at } => {
            let p = find(rater, id)?;
            if !matches!(
                p.status,
                PackageStatus::Assigned | PackageStatus::Deactivated
            ) {
                return Err(invalid(format!(
                    "client package {id} is {}: only an assigned or deactivated package can be activated",
                    p.status.as_str()
                )));
            }
            let pkg = config_pkg(&p.package)?;
            let credit = live_credit(rater, p.user_id)?;
            let anchor = at.unwrap_or(now);
            if anchor > now + 60 {
                return Err(invalid("start: must not be in the future"));
            }
            if anchor < now - MAX_BACKDATE_SECS {
                return Err(invalid("start: at most 366 days back"));
            }
            if credit < pkg.fee {
                return Err(short_of(credit, &pkg));
            }
            let p = started(catalog, &pkg, p, anchor)?;
            let fee = fee_of(catalog, &pkg, &p, credit);
            writes.push(write(p, "clients_packages.activate", fee, pkg.name.clone()));
        }
        PackageOp::Renew { id } => {
            let p = find(rater, id)?;
            if !matches!(p.status, PackageStatus::Active | PackageStatus::Deactivated) {
                return Err(invalid(format!(
                    "client package {id} is {}: activate it first",
                    p.status.as_str()
                )));
            }
            let pkg = config_pkg(&p.package)?;
            let credit = live_credit(rater, p.user_id)?;
            if credit < pkg.fee {
                return Err(short_of(credit, &pkg));
            }
            let p = started(catalog, &pkg, p, now)?;
            let fee = fee_of(catalog, &pkg, &p, credit);
            writes.push(write(
                p,
                "clients_packages.renew",
                fee,
                format!("{} renewed now", pkg.name),
            ));
        }
        PackageOp::RenewClients { mut user_ids } => {
            user_ids.sort_unstable();
            user_ids.dedup();
            for user_id in user_ids {
                let mut credit = live_credit(rater, user_id)?;
                let pkgs: Vec<ClientPackage> = rater
                    .subscribers
                    .by_id(user_id)
                    .map(|u| u.packages.clone())
                    .unwrap_or_default();
                for p in pkgs.into_iter().filter(|p| {
                    matches!(p.status, PackageStatus::Active | PackageStatus::Deactivated)
                }) {
                    let pkg = config_pkg(&p.package)?;
                    if credit < pkg.fee {
                        return Err(invalid(format!(
                            "client {user_id}: credit {credit} is less than the fee {} of package {:?}",
                            pkg.fee, pkg.name
                        )));
                    }
                    let p = started(catalog, &pkg, p, now)?;
                    let fee = fee_of(catalog, &pkg, &p, credit);
                    credit -= pkg.fee;
                    writes.push(write(
                        p,
                        "clients_packages.renew",
                        fee,
                        format!("{} renewed now", pkg.name),
                    ));
                }
            }
        }
        PackageOp::Deactivate { id } => {
            let mut p = find(rater, id)?;
            if p.status != PackageStatus::Active {
                return Err(invalid(format!(
                    "client package {id} is {}: only an active package can be deactivated",
                    p.status.as_str()
                )));
            }
            p.status = PackageStatus::Deactivated;
            p.voice_left = 0;
            p.data_left = 0;
            let name = p.package.clone();
            writes.push(write(p, "clients_packages.deactivate", None, name));
        }
        PackageOp::Close { id } => {
            let mut p = find(rater, id)?;
            p.status = PackageStatus::Closed;
            p.voice_left = 0;
            p.data_left = 0;
            let name = p.package.clone();
            writes.push(write(p, "clients_packages.close", None, name));
        }
    }
    let out = commit(rater, writes, now, end_sessions).map_err(ledger_err)?;
    // A back-dated activation: the periods since are renewed (or the package deactivated)
    // at once, in order (bounded like housekeeping's: renewals of other clients still due
    // are left to it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    if let Err(e) = renew_due_until(catalog, rater, now, end_sessions, Some(deadline)) {
        tracing::error!(error = %e, "package renewals failed; will retry");
    }
    let ids: Vec<i64> = out.iter().map(|p| p.id).collect();
    let mut now_state = Vec::with_capacity(ids.len());
    for (id, p) in ids.into_iter().zip(out) {
        let cur = rater
            .subscribers
            .by_id(p.user_id)
            .and_then(|u| u.packages.iter().find(|x| x.id == id).cloned())
            .unwrap_or(p);
        now_state.push(cur);
    }
    Ok(now_state)
}

/// Commits package writes and applies them to the in-memory state; returns the packages
/// as written (with their ids).
fn commit(
    rater: &mut BatchRater<'_>,
    writes: Vec<PackageWrite>,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) -> Result<Vec<ClientPackage>, crate::ledger::LedgerError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let ids = rater.ledger.commit_packages(&writes, now)?;
    let mut out = Vec::with_capacity(writes.len());
    // Per client touched: (credit before, an active package held data quota before — also
    // one whose period just ended: the renewal that deactivates it runs after its end).
    let mut before: Vec<(i64, Decimal, bool)> = Vec::new();
    for (w, id) in writes.into_iter().zip(ids) {
        let mut p = w.package;
        p.id = id;
        if let Some(u) = rater.subscribers.get_mut(p.user_id) {
            if !before.iter().any(|b| b.0 == p.user_id) {
                let had_data = u
                    .packages
                    .iter()
                    .any(|x| x.status == PackageStatus::Active && x.data_left > 0);
                before.push((p.user_id, u.credit, had_data));
            }
            if let Some(fee) = &w.fee {
                u.credit = fee.balance_after;
            }
        }
        rater.subscribers.put_package(p.clone());
        out.push(p);
    }
    rater.subscribers.refresh_package_due();
    // Prepaid control: a client left at credit <= 0 with no data quota covering now, whose
    // credit these fees took from above zero or whose quota these operations took away
    // (deactivated, closed, renewed into a period without data), has its sessions ended:
    // no later charge would cross zero from above.
    for (user_id, credit_before, had_quota) in before {
        let Some(u) = rater.subscribers.by_id(user_id) else {
            continue;
        };
        let has_quota = data_available(&u.packages, now) > 0;
        let crossed = credit_before > Decimal::ZERO && u.credit <= Decimal::ZERO;
        let lost_quota = had_quota && u.credit <= Decimal::ZERO;
        if !has_quota && (crossed || lost_quota) {
            end_sessions(user_id, EndSessions::CreditExhausted);
        }
    }
    Ok(out)
}

/// Renews every package whose period ended by `now`, in period-end order, each once
/// (several times for one whose activation was dated back): the fee taken when the credit
/// covers it, else the package deactivated (no fee, no quota). At most
/// [`RENEWALS_PER_COMMIT`] per transaction; runs until nothing is due. Returns how many.
pub fn renew_due(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) -> Result<usize, crate::ledger::LedgerError> {
    renew_due_until(catalog, rater, now, end_sessions, None)
}

/// [`renew_due`] that starts no new transaction once `deadline` has passed (the serve
/// core's housekeeping: RADIUS is not read while renewals run, so a mass of renewals due
/// at one moment is done a few transactions per second, the core answering in between;
/// what is left is still due and done at the next call, in the same order).
pub fn renew_due_until(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
    deadline: Option<std::time::Instant>,
) -> Result<usize, crate::ledger::LedgerError> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    let mut done = 0usize;
    while rater.subscribers.package_due <= now {
        if done > 0 && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let mut heap: BinaryHeap<Reverse<(i64, i64)>> = BinaryHeap::new();
        let mut state: HashMap<i64, (ClientPackage, bool)> = HashMap::new();
        let mut credit: HashMap<i64, Decimal> = HashMap::new();
        for u in &rater.subscribers.users {
            for p in &u.packages {
                if p.status == PackageStatus::Active && p.period_end <= now {
                    heap.push(Reverse((p.period_end, p.id)));
                    state.insert(p.id, (p.clone(), u.deleted));
                    credit.insert(u.user_id, u.credit);
                }
            }
        }
        if heap.is_empty() {
            rater.subscribers.refresh_package_due();
            break;
        }
        let mut writes: Vec<PackageWrite> = Vec::new();
        while let Some(Reverse((_, id))) = heap.pop() {
            if writes.len() >= RENEWALS_PER_COMMIT {
                break;
            }
            let (p, deleted) = state
                .get(&id)
                .cloned()
                .expect("queued packages have a state");
            let balance = credit[&p.user_id];
            let mut next = p.clone();
            let pkg = catalog.package(&p.package);
            // The next period, counted from the anchor while the configured period (and time
            // zone) is the one the current period was counted in; after a reload changed it,
            // from the current period's end (counting the new period from the old anchor
            // would land in the past and renew, fee by fee, up to now).
            let next_period = pkg.and_then(|k| {
                let tz = &catalog.tz;
                if boundary(tz, k.period, p.anchor, p.period_no + 1) == Some(p.period_end) {
                    boundary(tz, k.period, p.anchor, p.period_no + 2)
                        .map(|e| (p.anchor, p.period_no + 1, e))
                } else {
                    boundary(tz, k.period, p.period_end, 1).map(|e| (p.period_end, 0, e))
                }
            });
            let w = match (pkg, next_period) {
                _ if deleted => {
                    next.status = PackageStatus::Closed;
                    next.voice_left = 0;
                    next.data_left = 0;
                    PackageWrite {
                        package: next.clone(),
                        event: "clients_packages.close",
                        fee: None,
                        actor: SYSTEM_ACTOR.into(),
                        comment: "the client was deleted".into(),
                    }
                }
                (Some(k), Some((anchor, period_no, end))) if balance >= k.fee => {
                    next.anchor = anchor;
                    next.period_no = period_no;
                    next.period_start = p.period_end;
                    next.period_end = end;
                    next.voice_left = k.voice_seconds;
                    next.data_left = k.data_bytes;
                    next.cycle += 1;
                    let fee = fee_of(catalog, k, &next, balance);
                    credit.insert(p.user_id, balance - k.fee);
                    PackageWrite {
                        package: next.clone(),
                        event: "clients_packages.renew",
                        fee,
                        actor: SYSTEM_ACTOR.into(),
                        comment: format!("{} renewed at period end", k.name),
                    }
                }
                (k, _) => {
                    next.status = PackageStatus::Deactivated;
                    next.voice_left = 0;
                    next.data_left = 0;
                    let why = match k {
                        None => format!("{} is no longer in the config", p.package),
                        Some(k) => format!(
                            "renewal at {}: credit {balance} is less than the fee {}",
                            local_time(&catalog.tz, p.period_end),
                            k.fee
                        ),
                    };
                    tracing::info!(client = p.user_id, package = %p.package, id = p.id, reason = %why, "package deactivated");
                    PackageWrite {
                        package: next.clone(),
                        event: "clients_packages.deactivate",
                        fee: None,
                        actor: SYSTEM_ACTOR.into(),
                        comment: why,
                    }
                }
            };
            writes.push(w);
            if next.status == PackageStatus::Active && next.period_end <= now {
                heap.push(Reverse((next.period_end, id)));
            }
            state.insert(id, (next, deleted));
        }
        let n = writes.len();
        commit(rater, writes, now, end_sessions)?;
        done += n;
        tracing::info!(
            renewals = n,
            "package periods ended: renewed or deactivated"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(tz: &Tz, s: &str) -> i64 {
        let n = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        tz.from_local_datetime(&n).earliest().unwrap().timestamp()
    }

    #[test]
    fn periods_parse() {
        assert_eq!(Period::parse("day"), Ok(Period::Days(1)));
        assert_eq!(Period::parse("week"), Ok(Period::Days(7)));
        assert_eq!(Period::parse("Month"), Ok(Period::Month));
        assert_eq!(Period::parse("30 days"), Ok(Period::Days(30)));
        assert_eq!(Period::parse("1 day"), Ok(Period::Days(1)));
        assert!(Period::parse("0 days").is_err());
        assert!(Period::parse("fortnight").is_err());
        assert!(Period::parse("-3 days").is_err());
        assert!(Period::parse("99999 days").is_err());
    }

    /// Month ends clamp from the anchor's day: Jan 31 → Feb 28 → Mar 31 → Apr 30; in a
    /// leap year Feb 29.
    #[test]
    fn month_ends_clamp_from_the_anchor() {
        let tz: Tz = "UTC".parse().unwrap();
        let a = ts(&tz, "2026-01-31 10:00:00");
        let want = [
            "2026-01-31 10:00:00",
            "2026-02-28 10:00:00",
            "2026-03-31 10:00:00",
            "2026-04-30 10:00:00",
            "2026-05-31 10:00:00",
            "2026-06-30 10:00:00",
            "2027-01-31 10:00:00",
        ];
        for (n, w) in [0u32, 1, 2, 3, 4, 5, 12].iter().zip(want) {
            assert_eq!(
                boundary(&tz, Period::Month, a, *n),
                Some(ts(&tz, w)),
                "n={n}"
            );
        }
        let leap = ts(&tz, "2028-01-30 00:00:00");
        assert_eq!(
            boundary(&tz, Period::Month, leap, 1),
            Some(ts(&tz, "2028-02-29 00:00:00"))
        );
        assert_eq!(
            boundary(&tz, Period::Month, leap, 2),
            Some(ts(&tz, "2028-03-30 00:00:00"))
        );
        assert_eq!(days_in_month(2028, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
    }

    /// Days are local calendar days: across the spring-forward night a day is 23 hours,
    /// across the fall-back night 25; a local time inside the gap moves forward.
    #[test]
    fn days_follow_local_time_across_dst() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 02:00 → 03:00 local (CET → CEST).
        let a = ts(&tz, "2026-03-28 12:00:00");
        let b = boundary(&tz, Period::Days(1), a, 1).unwrap();
        assert_eq!(b - a, 23 * 3600);
        assert_eq!(local_time(&tz, b), "2026-03-29 12:00:00");
        // 2026-10-25 03:00 → 02:00 local (CEST → CET).
        let a = ts(&tz, "2026-10-24 12:00:00");
        assert_eq!(boundary(&tz, Period::Days(1), a, 1).unwrap() - a, 25 * 3600);
        // An anchor at 02:30 the day before the gap: the next day's 02:30 does not exist;
        // the boundary is 03:00 CEST.
        let a = ts(&tz, "2026-03-28 02:30:00");
        let b = boundary(&tz, Period::Days(1), a, 1).unwrap();
        assert_eq!(local_time(&tz, b), "2026-03-29 03:00:00");
        // The repeated hour: the earlier 02:30 (CEST).
        let a = ts(&tz, "2026-10-24 02:30:00");
        let b = boundary(&tz, Period::Days(1), a, 1).unwrap();
        assert_eq!(local_time(&tz, b), "2026-10-25 02:30:00");
        assert_eq!(b - a, 24 * 3600);
        // A week is 7 local days whatever the offset did.
        let a = ts(&tz, "2026-03-25 00:00:00");
        assert_eq!(
            local_time(&tz, boundary(&tz, Period::Days(7), a, 1).unwrap()),
            "2026-04-01 00:00:00"
        );
    }

    fn pkg(id: i64, start: i64, end: i64, voice: i64, data: i64) -> ClientPackage {
        ClientPackage {
            id,
            user_id: 1,
            package: format!("p{id}"),
            status: PackageStatus::Active,
            assigned_at: 0,
            anchor: start,
            period_no: 0,
            period_start: start,
            period_end: end,
            voice_left: voice,
            data_left: data,
            cycle: 1,
        }
    }

    /// The period that ends first is used first; a take spanning two packages empties the
    /// first; packages whose period does not cover the moment are not touched.
    #[test]
    fn quota_is_taken_earliest_end_first() {
        let mut pkgs = vec![
            pkg(1, 0, 2000, 100, 5_000),
            pkg(2, 0, 1000, 30, 1_000),
            pkg(3, 1500, 3000, 1000, 1000),
        ];
        let mut ch = Vec::new();
        assert_eq!(voice_available(&pkgs, 500), 130);
        assert_eq!(take_voice(&mut pkgs, 500, 50, &mut ch), 50);
        assert_eq!((pkgs[1].voice_left, pkgs[0].voice_left), (0, 80));
        assert_eq!(ch, vec![(2, 0, 1_000), (1, 80, 5_000)]);
        ch.clear();
        assert_eq!(take_voice(&mut pkgs, 500, 500, &mut ch), 80);
        assert_eq!(take_voice(&mut pkgs, 500, 10, &mut ch), 0);
        assert_eq!(pkgs[2].voice_left, 1000, "not covering t=500");
        // Data at t=1200: package 2's period is over, 1 and 3 do not both cover it.
        assert_eq!(data_available(&pkgs, 1200), 5_000);
        ch.clear();
        assert_eq!(take_data(&mut pkgs, 1200, 7_000, &mut ch), 5_000);
        assert_eq!(ch, vec![(1, 0, 0)]);
        assert_eq!(data_available(&pkgs, 1600), 1000);
        assert_eq!(nearest_expiry(&pkgs), Some(1000));
        pkgs[1].status = PackageStatus::Deactivated;
        assert_eq!(nearest_expiry(&pkgs), Some(2000));
    }
}

/// The core's package operations against a real ledger (reviewer's findings).
#[cfg(test)]
mod core_tests {
    use super::*;
    use crate::config::{ConfigSource, LoadedConfig};
    use crate::domain::NewClient;
    use crate::ledger::Ledger;

    fn catalog(data: &std::path::Path, period: &str) -> Catalog {
        let toml = format!(
            "[storage]\ndata_dir = {:?}\n[rating]\ntime_zone = \"UTC\"\n[[group]]\nname = \"g\"\n\
             [[package]]\nname = \"p\"\nfee = \"1\"\nperiod = \"{period}\"\nvoice_seconds = 60\ndata_bytes = 100\n\
             [[package]]\nname = \"voice\"\nfee = \"1\"\nperiod = \"month\"\nvoice_seconds = 60\n",
            data.display().to_string()
        );
        Catalog::build(
            &LoadedConfig::from_str(&toml, ConfigSource::File("t.toml".into()), ".".into())
                .unwrap(),
        )
        .unwrap()
    }

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    fn client(ledger: &mut Ledger, name: &str, credit: &str, now: i64) -> i64 {
        ledger
            .add_clients(
                &[NewClient {
                    username: Some(name.into()),
                    group: "g".into(),
                    credit: credit.parse().unwrap(),
                    ..Default::default()
                }],
                "test",
                now,
            )
            .unwrap()[0]
    }

    fn op(
        catalog: &Catalog,
        rater: &mut BatchRater<'_>,
        op: PackageOp,
        now: i64,
        ended: &mut Vec<i64>,
    ) -> Vec<ClientPackage> {
        operate(catalog, rater, op, "admin", now, &mut |id, _| {
            ended.push(id)
        })
        .unwrap()
    }

    /// Assigns `package` to `user`: the new client package id.
    fn assign(
        catalog: &Catalog,
        rater: &mut BatchRater<'_>,
        user: i64,
        package: &str,
        now: i64,
        ended: &mut Vec<i64>,
    ) -> i64 {
        let a = PackageOp::Assign {
            user_id: user,
            package: package.into(),
        };
        op(catalog, rater, a, now, ended)[0].id
    }

    /// Activates client package `id` now.
    fn activate(
        catalog: &Catalog,
        rater: &mut BatchRater<'_>,
        id: i64,
        now: i64,
        ended: &mut Vec<i64>,
    ) -> Vec<ClientPackage> {
        op(
            catalog,
            rater,
            PackageOp::Activate { id, at: None },
            now,
            ended,
        )
    }

    fn fees(ledger: &Ledger, user: i64) -> Decimal {
        -ledger.journal_sum(user, Some("package_fee")).unwrap()
    }

    /// A config reload that changes a package's period (month → day) renews the package
    /// once at its period end, into a period of the new length — never one fee for each
    /// "day since the anchor" that the old month periods had already covered.
    #[test]
    fn a_period_changed_by_a_reload_renews_once_from_the_period_end() {
        let dir = tempfile::tempdir().unwrap();
        let (monthly, daily) = (catalog(dir.path(), "month"), catalog(dir.path(), "day"));
        let t0 = utc("2026-01-01T00:00:00Z");
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let u = client(&mut ledger, "ann", "500", t0);
        let mut rater = BatchRater::new(&monthly, &mut ledger).unwrap();
        let mut ended = Vec::new();
        let pid = assign(&monthly, &mut rater, u, "p", t0, &mut ended);
        activate(&monthly, &mut rater, pid, t0, &mut ended);
        // Two month ends pass: Feb 1 and Mar 1.
        let n = renew_due(
            &monthly,
            &mut rater,
            utc("2026-03-12T00:00:00Z"),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(fees(rater.ledger, u), Decimal::from(3));
        // The config now says "day"; the month [Mar 1, Apr 1) ends.
        let now = utc("2026-04-01T01:00:00Z");
        let n = renew_due(&daily, &mut rater, now, &mut |_, _| {}).unwrap();
        assert_eq!(n, 1, "one renewal: the period that ended");
        assert_eq!(fees(rater.ledger, u), Decimal::from(4));
        let p = rater.ledger.client_package(pid).unwrap().unwrap();
        assert_eq!(
            (p.status, p.period_start, p.period_end),
            (
                PackageStatus::Active,
                utc("2026-04-01T00:00:00Z"),
                utc("2026-04-02T00:00:00Z")
            )
        );
        // ... and from there on day by day.
        let n = renew_due(
            &daily,
            &mut rater,
            utc("2026-04-03T00:30:00Z"),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(n, 2);
        let p = rater.ledger.client_package(pid).unwrap().unwrap();
        assert_eq!(p.period_end, utc("2026-04-04T00:00:00Z"));
        assert_eq!(fees(rater.ledger, u), Decimal::from(6));
    }

    /// A client at zero credit surfing on package data gets its sessions ended when the
    /// package stops covering (deactivated at period end for want of credit, or by an
    /// operator): nothing else would ever end them, as no charge crosses zero from above.
    #[test]
    fn losing_the_last_data_quota_at_zero_credit_ends_the_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path(), "day");
        let t0 = utc("2026-01-01T00:00:00Z");
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = client(&mut ledger, "ann", "1", t0);
        let b = client(&mut ledger, "bob", "1", t0);
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        let mut ended = Vec::new();
        let pa = assign(&cat, &mut rater, a, "p", t0, &mut ended);
        let pb = assign(&cat, &mut rater, b, "p", t0, &mut ended);
        activate(&cat, &mut rater, pa, t0, &mut ended);
        activate(&cat, &mut rater, pb, t0, &mut ended);
        // The fee took each credit from 1 to 0, but the data quota is left: sessions go on.
        assert!(ended.is_empty(), "{ended:?}");
        // The operator deactivates bob's package: no quota, no credit.
        op(
            &cat,
            &mut rater,
            PackageOp::Deactivate { id: pb },
            t0 + 10,
            &mut ended,
        );
        assert_eq!(ended, vec![b]);
        ended.clear();
        // Ann's period ends; credit 0 < fee 1: deactivated, and her sessions end.
        renew_due(&cat, &mut rater, t0 + 86_400 + 5, &mut |id, _| {
            ended.push(id)
        })
        .unwrap();
        assert_eq!(ended, vec![a]);
    }

    /// renewUsers for several clients renews all or none: one client short of its fee
    /// leaves the others uncharged (a retry after the refusal must not charge them twice);
    /// a client named twice is renewed once.
    #[test]
    fn renewing_several_clients_is_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path(), "month");
        let t0 = utc("2026-01-01T00:00:00Z");
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = client(&mut ledger, "ann", "5", t0);
        let b = client(&mut ledger, "bob", "1", t0);
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        let mut ended = Vec::new();
        for u in [a, b] {
            let id = assign(&cat, &mut rater, u, "p", t0, &mut ended);
            activate(&cat, &mut rater, id, t0, &mut ended);
        }
        // Bob has 0 left: the renewal of both is refused, ann is not charged.
        let r = operate(
            &cat,
            &mut rater,
            PackageOp::RenewClients {
                user_ids: vec![a, b],
            },
            "admin",
            t0 + 60,
            &mut |_, _| {},
        );
        assert!(matches!(r, Err(CommandError::Invalid(_))), "{r:?}");
        assert_eq!(
            (fees(rater.ledger, a), fees(rater.ledger, b)),
            (Decimal::ONE, Decimal::ONE)
        );
        // Ann named twice: one renewal, one fee.
        op(
            &cat,
            &mut rater,
            PackageOp::RenewClients {
                user_ids: vec![a, a],
            },
            t0 + 120,
            &mut ended,
        );
        assert_eq!(fees(rater.ledger, a), Decimal::from(2));
    }

    /// Authorization at zero credit needs *data* quota: a voice-only package does not pay
    /// for internet traffic, so a client with no credit and only voice seconds left is
    /// refused (it would otherwise surf into negative credit with nothing to end it).
    #[test]
    fn only_data_quota_is_quota_left_for_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path(), "month");
        let now = chrono::Utc::now().timestamp();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let v = client(&mut ledger, "vic", "1", now);
        let d = client(&mut ledger, "dan", "1", now);
        let mut rater = BatchRater::new(&cat, &mut ledger).unwrap();
        let mut ended = Vec::new();
        let pv = assign(&cat, &mut rater, v, "voice", now, &mut ended);
        let pd = assign(&cat, &mut rater, d, "p", now, &mut ended);
        activate(&cat, &mut rater, pv, now, &mut ended);
        activate(&cat, &mut rater, pd, now, &mut ended);
        let auth = crate::ledger::AuthReader::open(dir.path()).unwrap();
        let vic = auth.user("vic").unwrap().unwrap();
        let dan = auth.user("dan").unwrap().unwrap();
        assert_eq!((vic.credit, vic.quota_left), (Decimal::ZERO, false));
        assert_eq!((dan.credit, dan.quota_left), (Decimal::ZERO, true));
    }
}
