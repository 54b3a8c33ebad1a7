//! Client packages in the ledger (DESIGN.md Part 2 "Packages and expiry"): the package
//! rows, their fees as `package_fee` journal rows, and the quota usage took. A package
//! operation (assign, activate, renew, deactivate, close) is one transaction with its fee,
//! the balance, the client log and its event; quota is written in the transaction of the
//! RADIUS or CDR batch whose usage took it.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::events::{self, Extra};
use super::{Ledger, LedgerError};
use crate::packages::{ClientPackage, PackageStatus, QuotaChange};

/// Version 5 of the schema: client packages; xDR files replaced by a compaction, to be
/// deleted after a grace period (`compact.rs`).
pub(super) const SCHEMA_V5: &str = "
CREATE TABLE IF NOT EXISTS client_packages(
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  package TEXT NOT NULL,
  status TEXT NOT NULL,
  assigned_at INTEGER NOT NULL,
  anchor INTEGER NOT NULL DEFAULT 0,
  period_no INTEGER NOT NULL DEFAULT 0,
  period_start INTEGER NOT NULL DEFAULT 0,
  period_end INTEGER NOT NULL DEFAULT 0,
  voice_left INTEGER NOT NULL DEFAULT 0,
  data_left INTEGER NOT NULL DEFAULT 0,
  cycle INTEGER NOT NULL DEFAULT 0,
  changed_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS client_packages_user ON client_packages(user_id);
";

/// Files replaced by a compaction, deleted after their grace (`compact.rs`).
pub(super) const XDR_TRASH: &str = "
CREATE TABLE IF NOT EXISTS xdr_trash(
  path TEXT PRIMARY KEY,
  delete_after INTEGER NOT NULL) WITHOUT ROWID;
";

const COLUMNS: &str = "id, user_id, package, status, assigned_at, anchor, period_no, \
                       period_start, period_end, voice_left, data_left, cycle";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientPackage> {
    let status: String = r.get(3)?;
    Ok(ClientPackage {
        id: r.get(0)?,
        user_id: r.get(1)?,
        package: r.get(2)?,
        status: PackageStatus::parse(&status).unwrap_or(PackageStatus::Closed),
        assigned_at: r.get(4)?,
        anchor: r.get(5)?,
        period_no: r.get::<_, i64>(6)?.clamp(0, u32::MAX as i64) as u32,
        period_start: r.get(7)?,
        period_end: r.get(8)?,
        voice_left: r.get(9)?,
        data_left: r.get(10)?,
        cycle: r.get::<_, i64>(11)?.clamp(0, u32::MAX as i64) as u32,
    })
}

/// A fee taken by a package operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFee {
    /// The fee (> 0), taken from the credit.
    pub amount: Decimal,
    pub balance_after: Decimal,
    /// `package:<id>:<cycle>`: one fee per fee-taking cycle of the package, ever.
    pub idem_key: String,
    pub comment: String,
}

/// One package operation, as the core commits it.
#[derive(Debug, Clone)]
pub struct PackageWrite {
    /// The package as the operation leaves it; `id` 0 assigns a new one.
    pub package: ClientPackage,
    /// `clients_packages.assign|activate|renew|deactivate|close`.
    pub event: &'static str,
    pub fee: Option<PackageFee>,
    pub actor: String,
    /// For the client log.
    pub comment: String,
}

/// Writes the quota usage took (the last state per package wins).
pub(super) fn store_quota(tx: &Transaction<'_>, quota: &[QuotaChange]) -> rusqlite::Result<()> {
    if quota.is_empty() {
        return Ok(());
    }
    let mut last: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
    for (id, voice, data) in quota {
        last.insert(*id, (*voice, *data));
    }
    let mut st = tx.prepare_cached(
        "UPDATE client_packages SET voice_left = ?2, data_left = ?3 WHERE id = ?1 AND status = 'active'",
    )?;
    for (id, (voice, data)) in last {
        st.execute(params![id, voice, data])?;
    }
    Ok(())
}

/// A client package as events show it (times RFC 3339 UTC).
pub fn package_json(p: &ClientPackage) -> Value {
    package_json_with(p, |s| {
        chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    })
}

/// A client package with its times written by `time` (a dialect's format); a time never
/// set is null.
pub fn package_json_with(p: &ClientPackage, time: impl Fn(i64) -> String) -> Value {
    let t = |s: i64| (s != 0).then(|| time(s));
    json!({
        "id_clients_packages": p.id,
        "id_clients": p.user_id,
        "package": p.package,
        "status": p.status.as_str(),
        "period_start": t(p.period_start),
        "period_end": t(p.period_end),
        "voice_seconds_left": p.voice_left,
        "data_bytes_left": p.data_left,
    })
}

/// Client packages of one client (closed ones too when `closed`), by id.
pub(super) fn of_client(
    conn: &Connection,
    user_id: i64,
    closed: bool,
) -> rusqlite::Result<Vec<ClientPackage>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM client_packages WHERE user_id = ?1 AND (?2 OR status <> 'closed') ORDER BY id"
    ))?;
    let rows = st.query_map(params![user_id, closed], row)?;
    rows.collect()
}

/// One client package by id.
pub(super) fn by_id(conn: &Connection, id: i64) -> rusqlite::Result<Option<ClientPackage>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM client_packages WHERE id = ?1"),
        [id],
        row,
    )
    .optional()
}

impl Ledger {
    /// Every client package not closed (the core's in-memory state).
    pub fn load_client_packages(&self) -> Result<Vec<ClientPackage>, LedgerError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM client_packages WHERE status <> 'closed' ORDER BY id"
            ))
            .map_err(self.sq())?;
        let rows = st.query_map([], row).map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// One client package by id (closed ones too).
    pub fn client_package(&self, id: i64) -> Result<Option<ClientPackage>, LedgerError> {
        by_id(&self.conn, id).map_err(self.sq())
    }

    /// Commits package operations in one transaction, in order: each package row, its fee
    /// (a `package_fee` journal row and the balance), the client log and the event.
    /// Returns the package ids (new ones for assignments). A fee whose key exists already
    /// refuses the whole write: a renewal is never charged twice.
    pub fn commit_packages(
        &mut self,
        ops: &[PackageWrite],
        now: i64,
    ) -> Result<Vec<i64>, LedgerError> {
        self.write(|tx, sq| {
            let mut ids = Vec::with_capacity(ops.len());
            for op in ops {
                let p = &op.package;
                let id = if p.id == 0 {
                    tx.execute(
                        "INSERT INTO client_packages(user_id, package, status, assigned_at, anchor, period_no, period_start, period_end, voice_left, data_left, cycle, changed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        params![p.user_id, p.package, p.status.as_str(), p.assigned_at, p.anchor, p.period_no, p.period_start, p.period_end, p.voice_left, p.data_left, p.cycle, now],
                    )
                    .map_err(sq)?;
                    tx.last_insert_rowid()
                } else {
                    let n = tx
                        .execute(
                            "UPDATE client_packages SET status = ?2, anchor = ?3, period_no = ?4, period_start = ?5, period_end = ?6, voice_left = ?7, data_left = ?8, cycle = ?9, changed_at = ?10
                             WHERE id = ?1 AND status <> 'closed'",
                            params![p.id, p.status.as_str(), p.anchor, p.period_no, p.period_start, p.period_end, p.voice_left, p.data_left, p.cycle, now],
                        )
                        .map_err(sq)?;
                    if n == 0 {
                        return Err(LedgerError::Rejected(format!(
                            "no open client package with id {}",
                            p.id
                        )));
                    }
                    p.id
                };
                ids.push(id);
                let mut balance = None;
                if let Some(fee) = &op.fee {
                    let exists: bool = tx
                        .prepare_cached("SELECT 1 FROM journal WHERE idem_key = ?1")
                        .map_err(sq)?
                        .exists([&fee.idem_key])
                        .map_err(sq)?;
                    if exists {
                        return Err(LedgerError::Rejected(format!(
                            "package fee {} was taken already",
                            fee.idem_key
                        )));
                    }
                    tx.prepare_cached(
                        "INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, comment, created_at, actor) VALUES (?1, ?2, ?3, 'package_fee', ?4, ?5, ?6, ?7)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        p.user_id,
                        (-fee.amount).to_string(),
                        fee.balance_after.to_string(),
                        fee.idem_key,
                        fee.comment,
                        now,
                        op.actor
                    ])
                    .map_err(sq)?;
                    tx.prepare_cached("UPDATE users SET credit = ?2 WHERE user_id = ?1")
                        .map_err(sq)?
                        .execute(params![p.user_id, fee.balance_after.to_string()])
                        .map_err(sq)?;
                    let before = fee.balance_after.checked_add(fee.amount).unwrap_or_default();
                    balance = Some((before, fee.balance_after));
                }
                let action = op.event.trim_start_matches("clients_packages.");
                super::clients::log(tx, p.user_id, now, &op.actor, &format!("package.{action}"), &op.comment)
                    .map_err(sq)?;
                let stored = by_id(tx, id).map_err(sq)?.unwrap_or_else(|| p.clone());
                events::record(
                    tx,
                    op.event,
                    p.user_id,
                    now,
                    Extra {
                        package: Some(package_json(&stored)),
                        ..Default::default()
                    },
                )
                .map_err(sq)?;
                if let Some((before, after)) = balance {
                    events::record_crossing(tx, p.user_id, before, after, now).map_err(sq)?;
                }
            }
            Ok(ids)
        })
    }
}
