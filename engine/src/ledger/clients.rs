//! Client lifecycle writes: create, change, delete, credit, renew; companies; refunds.
//! Each is one transaction, checked as a whole before anything changes; the core calls
//! them (DESIGN.md Part 2: writes reach the ledger only as commands to the serve core).

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension, Transaction};
use rust_decimal::Decimal;

use super::events::{self, Extra};
use super::{Ledger, LedgerError};
use crate::domain::{Account, AccountKind, ClientChange, NewClient, MAIN_COMPANY};
use crate::xdr::OwnedXdr;

/// What a client was before a change (the core decides on disconnects from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBefore {
    pub username: Option<String>,
    pub lock_reason: Option<String>,
    pub archived: bool,
}

/// One cancellation of usage charges, as the core commits it.
#[derive(Debug, Clone)]
pub struct RefundCommit {
    pub user_id: i64,
    /// Credit given back (the sum of the refunded charges, > 0).
    pub amount: Decimal,
    pub balance_after: Decimal,
    /// The `REFUND` xDRs, ids assigned, each with `refund_of` set.
    pub rows: Vec<OwnedXdr>,
    pub next_xdr: u64,
    pub actor: String,
    pub comment: String,
    pub now: i64,
}

fn rejected(m: impl Into<String>) -> LedgerError {
    LedgerError::Rejected(m.into())
}

/// The user id owning `account`, if any.
fn account_owner(tx: &Transaction<'_>, a: &Account) -> rusqlite::Result<Option<i64>> {
    // Cached: an import asks this for every account of every client.
    tx.prepare_cached("SELECT user_id FROM accounts WHERE kind = ?1 AND ident = ?2")?
        .query_row(params![a.kind.as_str(), a.ident], |r| r.get(0))
        .optional()
}

impl Ledger {
    /// Runs `f` in one write transaction; commits when it returns `Ok`.
    pub(super) fn write<T>(
        &mut self,
        f: impl FnOnce(
            &Transaction<'_>,
            &dyn Fn(rusqlite::Error) -> LedgerError,
        ) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let path = self.path.display().to_string();
        let sq = move |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let out = f(&tx, &sq)?;
        tx.commit().map_err(&sq)?;
        Ok(out)
    }

    /// The ids of deleted clients.
    pub fn deleted_user_ids(&self) -> Result<Vec<i64>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT user_id FROM users WHERE deleted_at IS NOT NULL")
            .map_err(self.sq())?;
        let rows = st.query_map([], |r| r.get(0)).map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    /// Identifiers taken off clients: (kind, identifier, the client, until when).
    pub fn load_account_moves(&self) -> Result<Vec<(AccountKind, String, i64, i64)>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT kind, ident, user_id, until FROM account_moves ORDER BY until")
            .map_err(self.sq())?;
        let rows: Vec<(String, String, i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(self.sq())?
            .collect::<Result<_, _>>()
            .map_err(self.sq())?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, i, u, t)| AccountKind::parse(&k).map(|k| (k, i, u, t)))
            .collect())
    }

    /// Every account of every client that is not deleted: (kind, identifier, user id).
    pub fn load_accounts(&self) -> Result<Vec<(AccountKind, String, i64)>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT kind, ident, user_id FROM accounts")
            .map_err(self.sq())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, ident, id) = row.map_err(self.sq())?;
            let kind = AccountKind::parse(&kind).ok_or_else(|| LedgerError::Corrupt {
                path: self.path.display().to_string(),
                what: "accounts.kind".into(),
                value: kind.clone(),
            })?;
            out.push((kind, ident, id));
        }
        Ok(out)
    }

    /// Creates clients in one transaction (all or none), each with an initial-credit
    /// `payment` journal row, its accounts (the username is the first radius account) and
    /// profile fields. An identifier taken already, by another client or earlier in the
    /// same call, fails the whole call and names it. Returns the new ids.
    pub fn add_clients(
        &mut self,
        clients: &[NewClient],
        actor: &str,
        now: i64,
    ) -> Result<Vec<i64>, LedgerError> {
        self.write(|tx, sq| {
            let mut ids = Vec::with_capacity(clients.len());
            let mut ins = tx
                .prepare_cached("INSERT INTO users(username, password, group_name, isp_name, company_id, credit, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(sq)?;
            let mut jr = tx
                .prepare_cached("INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, comment, created_at, actor) VALUES (?1, ?2, ?2, 'payment', ?3, ?4, ?5, ?6)")
                .map_err(sq)?;
            let mut acc = tx
                .prepare_cached("INSERT INTO accounts(kind, ident, user_id, created_at) VALUES (?1, ?2, ?3, ?4)")
                .map_err(sq)?;
            let mut prof = tx
                .prepare_cached("INSERT OR REPLACE INTO profile(user_id, key, value) VALUES (?1, ?2, ?3)")
                .map_err(sq)?;
            for c in clients {
                let (company_id, company_name) = company_of(tx, c.company.as_deref(), sq)?;
                let mut accounts: Vec<Account> = Vec::new();
                if let Some(name) = &c.username {
                    let taken = tx
                        .prepare_cached("SELECT 1 FROM users WHERE username = ?1")
                        .and_then(|mut st| st.exists([name]))
                        .map_err(sq)?;
                    if taken {
                        return Err(rejected(format!("username {name:?} exists already")));
                    }
                    accounts.push(Account {
                        kind: AccountKind::Radius,
                        ident: name.clone(),
                    });
                }
                accounts.extend(c.accounts.iter().cloned());
                for a in &accounts {
                    if let Some(owner) = account_owner(tx, a).map_err(sq)? {
                        return Err(rejected(format!(
                            "account {} exists already (client {owner})",
                            a.label()
                        )));
                    }
                }
                ins.execute(params![
                    c.username,
                    c.password,
                    c.group,
                    company_name,
                    company_id,
                    c.credit.to_string(),
                    now
                ])
                .map_err(sq)?;
                let id = tx.last_insert_rowid();
                jr.execute(params![
                    id,
                    c.credit.to_string(),
                    format!("initial:{id}"),
                    c.comment,
                    now,
                    actor
                ])
                .map_err(sq)?;
                for a in &accounts {
                    if account_owner(tx, a).map_err(sq)?.is_some() {
                        return Err(rejected(format!(
                            "account {} is given twice",
                            a.label()
                        )));
                    }
                    acc.execute(params![a.kind.as_str(), a.ident, id, now])
                        .map_err(sq)?;
                }
                for (k, v) in &c.profile {
                    prof.execute(params![id, k, v]).map_err(sq)?;
                }
                log(tx, id, now, actor, "create", &c.comment).map_err(sq)?;
                events::record(tx, "clients.create", id, now, Extra::default()).map_err(sq)?;
                for a in &accounts {
                    events::record(tx, "accounts.create", id, now, account_extra(a)).map_err(sq)?;
                }
                ids.push(id);
            }
            Ok(ids)
        })
    }

    /// Applies a change to one client as a whole (the group must have been checked against
    /// the config by the caller). Returns what the client was before.
    pub fn update_client(
        &mut self,
        user_id: i64,
        change: &ClientChange,
        actor: &str,
        now: i64,
    ) -> Result<ClientBefore, LedgerError> {
        self.write(|tx, sq| {
            let before: Option<ClientBefore> = tx
                .query_row(
                    "SELECT username, lock_reason, archived FROM users WHERE user_id = ?1 AND deleted_at IS NULL",
                    [user_id],
                    |r| {
                        Ok(ClientBefore {
                            username: r.get(0)?,
                            lock_reason: r.get(1)?,
                            archived: r.get::<_, i64>(2)? != 0,
                        })
                    },
                )
                .optional()
                .map_err(sq)?;
            let before = before.ok_or(LedgerError::NoSuchClient(user_id))?;
            let mut what: Vec<String> = Vec::new();
            // Accounts this change really added (not ones the client had already).
            let mut added: Vec<Account> = Vec::new();
            // [old, new] of every field the change touches, for the events.
            let mut changes = serde_json::Map::new();
            let mut profile_changes = serde_json::Map::new();
            let (old_group, old_company): (String, Option<String>) = tx
                .query_row(
                    "SELECT u.group_name, c.name FROM users u LEFT JOIN companies c ON c.company_id = u.company_id WHERE u.user_id = ?1",
                    [user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sq)?;
            for (k, v) in &change.profile {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT value FROM profile WHERE user_id = ?1 AND key = ?2",
                        params![user_id, k],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sq)?;
                profile_changes.insert(k.clone(), serde_json::json!([old, v]));
            }
            if let Some((u, _)) = &change.credentials {
                changes.insert("username".into(), serde_json::json!([before.username, u]));
            }
            if let Some(g) = &change.group {
                changes.insert("group".into(), serde_json::json!([old_group, g]));
            }
            if let Some(c) = &change.company {
                changes.insert("company".into(), serde_json::json!([old_company, c]));
            }
            if let Some(l) = &change.lock {
                changes.insert("lock_reason".into(), serde_json::json!([before.lock_reason, l]));
            }
            if let Some(a) = change.archived {
                changes.insert("archived".into(), serde_json::json!([before.archived, a]));
            }
            for a in &change.remove_accounts {
                if a.kind == AccountKind::Radius && before.username.as_deref() == Some(&a.ident) {
                    return Err(rejected(format!(
                        "account {} is the client's username: change the username instead",
                        a.label()
                    )));
                }
                let n = tx
                    .execute(
                        "DELETE FROM accounts WHERE kind = ?1 AND ident = ?2 AND user_id = ?3",
                        params![a.kind.as_str(), a.ident, user_id],
                    )
                    .map_err(sq)?;
                if n > 0 {
                    record_move(tx, a.kind.as_str(), &a.ident, user_id, now).map_err(sq)?;
                }
                if n == 0 {
                    return Err(rejected(format!(
                        "account {} is not an account of client {user_id}",
                        a.label()
                    )));
                }
                what.push(format!("-{}", a.label()));
            }
            if let Some((username, password)) = &change.credentials {
                let taken: Option<i64> = tx
                    .query_row(
                        "SELECT user_id FROM users WHERE username = ?1",
                        [username],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sq)?;
                let radius = Account {
                    kind: AccountKind::Radius,
                    ident: username.clone(),
                };
                let owner = account_owner(tx, &radius).map_err(sq)?;
                if taken.is_some_and(|id| id != user_id) || owner.is_some_and(|id| id != user_id)
                {
                    return Err(rejected(format!("username {username:?} exists already")));
                }
                if let Some(old) = before.username.as_ref().filter(|o| *o != username) {
                    let n = tx
                        .execute(
                            "DELETE FROM accounts WHERE kind = 'radius' AND ident = ?1 AND user_id = ?2",
                            params![old, user_id],
                        )
                        .map_err(sq)?;
                    if n > 0 {
                        record_move(tx, "radius", old, user_id, now).map_err(sq)?;
                    }
                }
                tx.execute(
                    "INSERT OR IGNORE INTO accounts(kind, ident, user_id, created_at) VALUES ('radius', ?1, ?2, ?3)",
                    params![username, user_id, now],
                )
                .map_err(sq)?;
                tx.execute(
                    "UPDATE users SET username = ?2, password = ?3 WHERE user_id = ?1",
                    params![user_id, username, password],
                )
                .map_err(sq)?;
                what.push(format!("username {username}"));
            }
            for a in &change.add_accounts {
                match account_owner(tx, a).map_err(sq)? {
                    Some(id) if id == user_id => {}
                    Some(owner) => {
                        return Err(rejected(format!(
                            "account {} exists already (client {owner})",
                            a.label()
                        )))
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO accounts(kind, ident, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                            params![a.kind.as_str(), a.ident, user_id, now],
                        )
                        .map_err(sq)?;
                        what.push(format!("+{}", a.label()));
                        added.push(a.clone());
                    }
                }
            }
            if let Some(group) = &change.group {
                tx.execute(
                    "UPDATE users SET group_name = ?2 WHERE user_id = ?1",
                    params![user_id, group],
                )
                .map_err(sq)?;
                what.push(format!("group {group}"));
            }
            if let Some(company) = &change.company {
                let (id, name) = company_of(tx, Some(company), sq)?;
                tx.execute(
                    "UPDATE users SET company_id = ?2, isp_name = ?3 WHERE user_id = ?1",
                    params![user_id, id, name],
                )
                .map_err(sq)?;
                what.push(format!("company {name}"));
            }
            if let Some(lock) = &change.lock {
                tx.execute(
                    "UPDATE users SET lock_reason = ?2 WHERE user_id = ?1",
                    params![user_id, lock],
                )
                .map_err(sq)?;
                what.push(match lock {
                    Some(r) => format!("locked: {r}"),
                    None => "unlocked".into(),
                });
            }
            if let Some(archived) = change.archived {
                tx.execute(
                    "UPDATE users SET archived = ?2 WHERE user_id = ?1",
                    params![user_id, archived as i64],
                )
                .map_err(sq)?;
                what.push(if archived { "archived" } else { "restored" }.into());
            }
            for (k, v) in &change.profile {
                match v {
                    Some(v) => tx.execute(
                        "INSERT OR REPLACE INTO profile(user_id, key, value) VALUES (?1, ?2, ?3)",
                        params![user_id, k, v],
                    ),
                    None => tx.execute(
                        "DELETE FROM profile WHERE user_id = ?1 AND key = ?2",
                        params![user_id, k],
                    ),
                }
                .map_err(sq)?;
                what.push(format!("profile {k}"));
            }
            log(tx, user_id, now, actor, "update", &what.join(", ")).map_err(sq)?;
            if !changes.is_empty() {
                let archive = change.archived == Some(true) && !before.archived;
                events::record(
                    tx,
                    "clients.update",
                    user_id,
                    now,
                    Extra {
                        changes: Some(serde_json::Value::Object(changes.clone())),
                        ..Default::default()
                    },
                )
                .map_err(sq)?;
                if archive {
                    events::record(tx, "clients.archive", user_id, now, Extra::default())
                        .map_err(sq)?;
                }
            }
            if !profile_changes.is_empty() {
                events::record(
                    tx,
                    "clients.custom_fields_update",
                    user_id,
                    now,
                    Extra {
                        changes: Some(serde_json::Value::Object(profile_changes)),
                        ..Default::default()
                    },
                )
                .map_err(sq)?;
            }
            for a in &added {
                events::record(tx, "accounts.create", user_id, now, account_extra(a))
                    .map_err(sq)?;
            }
            if let Some((u, _)) = change
                .credentials
                .as_ref()
                .filter(|(u, _)| before.username.as_deref() != Some(u.as_str()))
            {
                let a = Account {
                    kind: AccountKind::Radius,
                    ident: u.clone(),
                };
                events::record(tx, "accounts.update", user_id, now, account_extra(&a)).map_err(sq)?;
            }
            for a in &change.remove_accounts {
                events::record(tx, "accounts.delete", user_id, now, account_extra(a)).map_err(sq)?;
            }
            Ok(before)
        })
    }

    /// Locks a client with `reason`, or unlocks it (`None`). Returns the reason it had.
    pub fn set_lock(
        &mut self,
        user_id: i64,
        reason: Option<&str>,
    ) -> Result<Option<String>, LedgerError> {
        let change = ClientChange {
            lock: Some(reason.map(str::to_string)),
            ..Default::default()
        };
        Ok(self.update_client(user_id, &change, "", 0)?.lock_reason)
    }

    /// Deletes clients: they leave every lookup (username and accounts freed), their
    /// ledger rows and xDRs stay. Returns each one's username before.
    pub fn delete_clients(
        &mut self,
        user_ids: &[i64],
        comment: &str,
        actor: &str,
        now: i64,
    ) -> Result<Vec<Option<String>>, LedgerError> {
        self.write(|tx, sq| {
            let mut out = Vec::with_capacity(user_ids.len());
            for &id in user_ids {
                let name: Option<Option<String>> = tx
                    .query_row(
                        "SELECT username FROM users WHERE user_id = ?1 AND deleted_at IS NULL",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sq)?;
                let Some(name) = name else {
                    return Err(LedgerError::NoSuchClient(id));
                };
                tx.execute(
                    "UPDATE users SET deleted_at = ?2, deleted_username = username, username = NULL WHERE user_id = ?1",
                    params![id, now],
                )
                .map_err(sq)?;
                tx.execute(
                    "INSERT INTO account_moves(kind, ident, user_id, until) SELECT kind, ident, user_id, ?2 FROM accounts WHERE user_id = ?1",
                    params![id, now],
                )
                .map_err(sq)?;
                tx.execute("DELETE FROM accounts WHERE user_id = ?1", [id])
                    .map_err(sq)?;
                log(tx, id, now, actor, "delete", comment).map_err(sq)?;
                events::record(tx, "clients.delete", id, now, Extra::default()).map_err(sq)?;
                out.push(name);
            }
            Ok(out)
        })
    }

    /// Records operator credit changes (`payment` rows): one journal row per user with the
    /// balance after, and the new balances, in one transaction; `recharged` marks the
    /// users' status `Recharged` (IBSng's ADD). Returns the journal ids.
    pub fn change_credit(
        &mut self,
        changes: &[(i64, Decimal, Decimal)],
        comment: &str,
        actor: &str,
        recharged: bool,
        now: i64,
    ) -> Result<Vec<i64>, LedgerError> {
        self.write(|tx, sq| {
            let mut ids = Vec::with_capacity(changes.len());
            let next: i64 = tx
                .query_row("SELECT coalesce(max(id), 0) + 1 FROM journal", [], |r| {
                    r.get(0)
                })
                .map_err(sq)?;
            let mut jr = tx
                .prepare_cached("INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, comment, created_at, actor) VALUES (?1, ?2, ?3, 'payment', ?4, ?5, ?6, ?7)")
                .map_err(sq)?;
            let mut up = tx
                .prepare_cached("UPDATE users SET credit = ?2, status = CASE WHEN ?3 THEN 'Recharged' ELSE status END WHERE user_id = ?1")
                .map_err(sq)?;
            for (i, (user_id, amount, after)) in changes.iter().enumerate() {
                jr.execute(params![
                    user_id,
                    amount.to_string(),
                    after.to_string(),
                    format!("payment:{}:{user_id}", next + i as i64),
                    comment,
                    now,
                    actor
                ])
                .map_err(sq)?;
                ids.push(tx.last_insert_rowid());
                up.execute(params![user_id, after.to_string(), recharged])
                    .map_err(sq)?;
                let before = after.checked_sub(*amount).unwrap_or(*after);
                events::record_crossing(tx, *user_id, before, *after, now).map_err(sq)?;
            }
            Ok(ids)
        })
    }

    /// Starts a new service period for users (IBSng's renewUsers): first login and
    /// charge-rule usage are reset; the comment goes to each client's log.
    pub fn renew(
        &mut self,
        user_ids: &[i64],
        comment: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), LedgerError> {
        self.write(|tx, sq| {
            for id in user_ids {
                tx.execute("UPDATE users SET first_login = NULL, period_start = ?2, status = 'Package' WHERE user_id = ?1", params![id, now]).map_err(sq)?;
                tx.execute("DELETE FROM rule_usage WHERE user_id = ?1", [id])
                    .map_err(sq)?;
                log(tx, *id, now, actor, "renew", comment).map_err(sq)?;
            }
            Ok(())
        })
    }

    /// The id of the company named `name`.
    pub fn company_id(&self, name: &str) -> Result<Option<i64>, LedgerError> {
        self.conn
            .query_row(
                "SELECT company_id FROM companies WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sq())
    }

    /// Creates a company; its name must be new.
    pub fn add_company(
        &mut self,
        name: &str,
        kind: i64,
        prepaid: bool,
        credit: Decimal,
        now: i64,
    ) -> Result<i64, LedgerError> {
        self.write(|tx, sq| {
            let taken = tx
                .query_row("SELECT 1 FROM companies WHERE name = ?1", [name], |_| Ok(()))
                .optional()
                .map_err(sq)?
                .is_some();
            if taken {
                return Err(rejected(format!("company {name:?} exists already")));
            }
            tx.execute(
                "INSERT INTO companies(name, type, prepaid, credit, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, kind, prepaid as i64, credit.to_string(), now],
            )
            .map_err(sq)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Changes a company (`None` fields are left alone); a new name must be free. Clients
    /// keep pointing at it by id.
    pub fn update_company(
        &mut self,
        id: i64,
        name: Option<&str>,
        kind: Option<i64>,
        prepaid: Option<bool>,
        credit: Option<Decimal>,
    ) -> Result<(), LedgerError> {
        self.write(|tx, sq| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM companies WHERE company_id = ?1",
                    [id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(sq)?
                .is_some();
            if !exists {
                return Err(rejected(format!("no company with id {id}")));
            }
            if let Some(name) = name {
                let other: Option<i64> = tx
                    .query_row(
                        "SELECT company_id FROM companies WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sq)?;
                if other.is_some_and(|o| o != id) {
                    return Err(rejected(format!("company {name:?} exists already")));
                }
                tx.execute(
                    "UPDATE companies SET name = ?2 WHERE company_id = ?1",
                    params![id, name],
                )
                .map_err(sq)?;
                tx.execute(
                    "UPDATE users SET isp_name = ?2 WHERE company_id = ?1",
                    params![id, name],
                )
                .map_err(sq)?;
            }
            if let Some(k) = kind {
                tx.execute(
                    "UPDATE companies SET type = ?2 WHERE company_id = ?1",
                    params![id, k],
                )
                .map_err(sq)?;
            }
            if let Some(p) = prepaid {
                tx.execute(
                    "UPDATE companies SET prepaid = ?2 WHERE company_id = ?1",
                    params![id, p as i64],
                )
                .map_err(sq)?;
            }
            if let Some(c) = credit {
                tx.execute(
                    "UPDATE companies SET credit = ?2 WHERE company_id = ?1",
                    params![id, c.to_string()],
                )
                .map_err(sq)?;
            }
            Ok(())
        })
    }

    /// Which of `xdr_ids` were refunded already.
    pub fn refunded_among(&self, xdr_ids: &[u64]) -> Result<HashSet<u64>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM refunds WHERE xdr_id = ?1")
            .map_err(self.sq())?;
        let mut out = HashSet::new();
        for &id in xdr_ids {
            if st.exists([id as i64]).map_err(self.sq())? {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Commits a cancellation: one `refund` journal row (idempotency key `refund:<first
    /// refund xDR id>`), the new balance, a `refunds` row per cancelled xDR (its primary key
    /// refuses a second refund of it), and the REFUND xDRs into the outbox. Returns the
    /// journal id.
    pub fn commit_refund(&mut self, r: &RefundCommit) -> Result<i64, LedgerError> {
        let path = self.path.display().to_string();
        self.write(|tx, sq| {
            let first = r.rows.first().map(|x| x.xdr_id).unwrap_or(0);
            tx.execute(
                "INSERT INTO journal(user_id, amount, balance_after, kind, idem_key, comment, created_at, actor) VALUES (?1, ?2, ?3, 'refund', ?4, ?5, ?6, ?7)",
                params![r.user_id, r.amount.to_string(), r.balance_after.to_string(), format!("refund:{first}"), r.comment, r.now, r.actor],
            )
            .map_err(sq)?;
            let journal_id = tx.last_insert_rowid();
            tx.execute(
                "UPDATE users SET credit = ?2 WHERE user_id = ?1",
                params![r.user_id, r.balance_after.to_string()],
            )
            .map_err(sq)?;
            let before = r.balance_after.checked_sub(r.amount).unwrap_or(r.balance_after);
            events::record_crossing(tx, r.user_id, before, r.balance_after, r.now).map_err(sq)?;
            let mut rf = tx
                .prepare_cached("INSERT INTO refunds(xdr_id, refund_xdr_id, user_id, journal_id) VALUES (?1, ?2, ?3, ?4)")
                .map_err(sq)?;
            let mut ob = tx
                .prepare_cached("INSERT INTO xdr_outbox(xdr_id, row) VALUES (?1, ?2)")
                .map_err(sq)?;
            for x in &r.rows {
                let Some(orig) = x.refund_of else {
                    return Err(LedgerError::Corrupt {
                        path: path.clone(),
                        what: "refund xDR without refund_of".into(),
                        value: x.xdr_id.to_string(),
                    });
                };
                rf.execute(params![orig as i64, x.xdr_id as i64, r.user_id, journal_id])
                    .map_err(sq)?;
                let json = serde_json::to_string(x).map_err(|e| LedgerError::Corrupt {
                    path: path.clone(),
                    what: "refund xDR".into(),
                    value: e.to_string(),
                })?;
                ob.execute(params![x.xdr_id as i64, json]).map_err(sq)?;
            }
            tx.execute(
                "UPDATE seq SET value = ?1 WHERE name = 'xdr'",
                [r.next_xdr as i64],
            )
            .map_err(sq)?;
            Ok(journal_id)
        })
    }
}

/// A company by name (`None`: the default company), as (id, name).
fn company_of(
    tx: &Transaction<'_>,
    name: Option<&str>,
    sq: &dyn Fn(rusqlite::Error) -> LedgerError,
) -> Result<(i64, String), LedgerError> {
    let row: Option<(i64, String)> = match name {
        None => tx
            .prepare_cached("SELECT company_id, name FROM companies WHERE company_id = ?1")
            .and_then(|mut st| {
                st.query_row([MAIN_COMPANY], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            }),
        Some(n) => tx
            .prepare_cached("SELECT company_id, name FROM companies WHERE name = ?1")
            .and_then(|mut st| st.query_row([n], |r| Ok((r.get(0)?, r.get(1)?))).optional()),
    }
    .map_err(sq)?;
    row.ok_or_else(|| match name {
        Some(n) => rejected(format!("no company named {n:?}")),
        None => rejected("the default company (id 1) is missing"),
    })
}

/// `user_id` owned `ident` until `until` (CDRs that began before still bill it).
fn record_move(
    tx: &Transaction<'_>,
    kind: &str,
    ident: &str,
    user_id: i64,
    until: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO account_moves(kind, ident, user_id, until) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![kind, ident, user_id, until])?;
    Ok(())
}

fn account_extra(a: &Account) -> Extra {
    Extra {
        account: Some(serde_json::json!({"kind": a.kind.as_str(), "ident": a.ident})),
        ..Default::default()
    }
}

pub(super) fn log(
    tx: &Transaction<'_>,
    user_id: i64,
    at: i64,
    actor: &str,
    action: &str,
    comment: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO client_log(user_id, at, actor, action, comment) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![user_id, at, actor, action, comment])?;
    Ok(())
}
