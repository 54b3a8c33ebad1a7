//! The events outbox (DESIGN.md Part 2 "Events"): an event is a row written in the same
//! transaction as the change that raised it; each notify hook has a cursor (the last
//! event it took) and a list of events it gave up on (`dead`). [`EventStore`] is the
//! delivery threads' own connection.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::LedgerError;

/// Version 4 of the schema: the events outbox and delivery state, and the earlier owners
/// of identifiers taken off a client (`account_moves`: a CDR bills the owner at its start).
pub(super) const SCHEMA_V4: &str = "
CREATE TABLE IF NOT EXISTS events(
  event_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  user_id INTEGER,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hook_cursor(
  hook TEXT PRIMARY KEY,
  event_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS account_moves(
  kind TEXT NOT NULL,
  ident TEXT NOT NULL,
  user_id INTEGER NOT NULL,
  until INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS account_moves_ident ON account_moves(kind, ident);
CREATE TABLE IF NOT EXISTS event_dead(
  hook TEXT NOT NULL,
  event_id INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  error TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY(hook, event_id)) WITHOUT ROWID;
";

/// username, deleted username, group, company id, company, credit, lock reason, archived,
/// created, deleted.
type ClientRow = (
    Option<String>,
    Option<String>,
    String,
    i64,
    Option<String>,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

/// Which events a hook takes, by name.
pub type Wants<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// A client as events carry it: id, names, group, company, credit, status, accounts,
/// profile fields. Read inside the transaction that raised the event (so it is the state
/// the change left).
pub(super) fn client_json(tx: &Transaction<'_>, user_id: i64) -> rusqlite::Result<Value> {
    // Cached: every event of every client of an import asks this.
    let row: Option<ClientRow> = tx
        .prepare_cached(
            "SELECT u.username, u.deleted_username, u.group_name, u.company_id, c.name, u.credit,
                    u.lock_reason, u.archived, u.created_at, u.deleted_at
             FROM users u LEFT JOIN companies c ON c.company_id = u.company_id
             WHERE u.user_id = ?1",
        )?
        .query_row([user_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })
        .optional()?;
    let Some((
        username,
        deleted_username,
        group,
        company_id,
        company,
        credit,
        lock,
        archived,
        created,
        deleted,
    )) = row
    else {
        return Ok(json!({ "id_clients": user_id }));
    };
    let status = if deleted.is_some() {
        "deleted"
    } else if archived != 0 {
        "archived"
    } else if lock.is_some() {
        "locked"
    } else {
        "active"
    };
    let mut accounts = Vec::new();
    {
        let mut st = tx.prepare_cached(
            "SELECT kind, ident FROM accounts WHERE user_id = ?1 ORDER BY created_at, kind, ident",
        )?;
        let rows = st.query_map([user_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for r in rows {
            let (k, i) = r?;
            accounts.push(format!("{k}:{i}"));
        }
    }
    let mut profile = serde_json::Map::new();
    {
        let mut st =
            tx.prepare_cached("SELECT key, value FROM profile WHERE user_id = ?1 ORDER BY key")?;
        let rows = st.query_map([user_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for r in rows {
            let (k, v) = r?;
            profile.insert(k, Value::String(v));
        }
    }
    Ok(json!({
        "id_clients": user_id,
        "username": username.or(deleted_username),
        "group": group,
        "id_companies": company_id,
        "company": company,
        "balance": credit,
        "status": status,
        "lock_reason": lock,
        "created": created,
        "accounts": accounts,
        "profile": profile,
    }))
}

/// What raised an event besides its client.
#[derive(Debug, Default)]
pub(super) struct Extra {
    pub account: Option<Value>,
    pub changes: Option<Value>,
    pub balance: Option<(Decimal, Decimal)>,
    pub package: Option<Value>,
}

/// Writes one event in the transaction `tx` (the change's own).
pub(super) fn record(
    tx: &Transaction<'_>,
    name: &str,
    user_id: i64,
    now: i64,
    extra: Extra,
) -> rusqlite::Result<()> {
    let mut client = client_json(tx, user_id)?;
    // A balance event carries the client as that movement left it (a batch may move the
    // stored balance again before it commits).
    if let (Some((_, after)), Some(obj)) = (extra.balance, client.as_object_mut()) {
        obj.insert("balance".into(), Value::String(after.to_string()));
    }
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp(now, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let body = json!({
        "event": name,
        "time": time,
        "client": client,
        "account": extra.account,
        "package": extra.package,
        "changes": extra.changes,
        "balance": extra.balance.map(|(b, a)| json!({"before": b.to_string(), "after": a.to_string()})),
    });
    tx.prepare_cached(
        "INSERT INTO events(name, user_id, body, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![name, user_id, body.to_string(), now])?;
    Ok(())
}

/// The crossing a movement from `before` to `after` makes, if any.
pub fn crossing(before: Decimal, after: Decimal) -> Option<&'static str> {
    if before > Decimal::ZERO && after <= Decimal::ZERO {
        Some("clients.balance_nonpositive")
    } else if before < Decimal::ZERO && after >= Decimal::ZERO {
        Some("clients.balance_nonnegative")
    } else {
        None
    }
}

/// Writes the balance event of a movement, if it crosses.
pub(super) fn record_crossing(
    tx: &Transaction<'_>,
    user_id: i64,
    before: Decimal,
    after: Decimal,
    now: i64,
) -> rusqlite::Result<()> {
    if let Some(name) = crossing(before, after) {
        record(
            tx,
            name,
            user_id,
            now,
            Extra {
                balance: Some((before, after)),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub name: String,
    pub user_id: Option<i64>,
    /// The JSON body with its `event_id`.
    pub body: String,
    pub created_at: i64,
}

fn with_id(id: i64, body: &str) -> String {
    // `{"event": ...}` → `{"event_id": id, "event": ...}`.
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"event_id\":{id}}}"),
        Some(rest) => format!("{{\"event_id\":{id},{rest}"),
        None => body.to_string(),
    }
}

/// The delivery threads' connection to the ledger.
pub struct EventStore {
    conn: Connection,
    path: PathBuf,
}

impl EventStore {
    pub fn open(data_dir: &Path) -> Result<EventStore, LedgerError> {
        let path = data_dir.join("ledger.sqlite");
        let sq = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(sq)?;
        super::stable_plans(&conn).map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sq)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sq)?;
        Ok(EventStore { conn, path })
    }

    fn sq(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The next event after `hook`'s cursor that it `wants`; events it does not want are
    /// stepped over (the cursor moves past them).
    pub fn next_for(
        &mut self,
        hook: &str,
        wants: impl Fn(&str) -> bool,
    ) -> Result<Option<StoredEvent>, LedgerError> {
        loop {
            let cursor: i64 = self
                .conn
                .query_row(
                    "SELECT event_id FROM hook_cursor WHERE hook = ?1",
                    [hook],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sq())?
                .unwrap_or(0);
            let batch: Vec<StoredEvent> = self
                .conn
                .prepare_cached(
                    "SELECT event_id, name, user_id, body, created_at FROM events WHERE event_id > ?1 ORDER BY event_id LIMIT 256",
                )
                .map_err(self.sq())?
                .query_map([cursor], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        user_id: r.get(2)?,
                        body: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })
                .map_err(self.sq())?
                .collect::<Result<_, _>>()
                .map_err(self.sq())?;
            let Some(last) = batch.last().map(|e| e.id) else {
                return Ok(None);
            };
            for mut e in batch {
                if wants(&e.name) {
                    // Step the cursor over the events before it that the hook does not want.
                    if e.id > cursor + 1 {
                        self.set_cursor(hook, e.id - 1)?;
                    }
                    e.body = with_id(e.id, &e.body);
                    return Ok(Some(e));
                }
            }
            self.set_cursor(hook, last)?;
        }
    }

    fn set_cursor(&self, hook: &str, id: i64) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO hook_cursor(hook, event_id) VALUES (?1, ?2)
                 ON CONFLICT(hook) DO UPDATE SET event_id = max(event_id, ?2)",
                params![hook, id],
            )
            .map_err(self.sq())?;
        Ok(())
    }

    /// `hook` delivered event `id`.
    pub fn delivered(&mut self, hook: &str, id: i64) -> Result<(), LedgerError> {
        self.set_cursor(hook, id)
    }

    /// `hook` gave up on event `id` after `attempts`: recorded, and the hook moves on.
    pub fn dead(
        &mut self,
        hook: &str,
        id: i64,
        attempts: u32,
        error: &str,
    ) -> Result<(), LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| LedgerError::Sqlite {
                path: self.path.display().to_string(),
                source,
            })?;
        let now = chrono::Utc::now().timestamp();
        tx.execute(
            "INSERT OR REPLACE INTO event_dead(hook, event_id, attempts, error, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hook, id, attempts, error, now],
        )
        .map_err(|source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })?;
        tx.execute(
            "INSERT INTO hook_cursor(hook, event_id) VALUES (?1, ?2)
             ON CONFLICT(hook) DO UPDATE SET event_id = max(event_id, ?2)",
            params![hook, id],
        )
        .map_err(|source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })?;
        tx.commit().map_err(|source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// One event as the API lists it: its delivery state per hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub event: StoredEvent,
    /// (hook, `delivered` | `pending` | `dead`, error of a dead one).
    pub hooks: Vec<(String, String, Option<String>)>,
}

/// Events after `after` (at most `limit`), with the state of each for `hooks` (a hook that
/// does not take an event is not listed for it).
pub(super) fn list(
    conn: &Connection,
    after: i64,
    limit: usize,
    hooks: &[(String, Wants<'_>)],
) -> rusqlite::Result<Vec<EventView>> {
    let events: Vec<StoredEvent> = conn
        .prepare_cached(
            "SELECT event_id, name, user_id, body, created_at FROM events WHERE event_id > ?1 ORDER BY event_id LIMIT ?2",
        )?
        .query_map(params![after, limit as i64], |r| {
            Ok(StoredEvent {
                id: r.get(0)?,
                name: r.get(1)?,
                user_id: r.get(2)?,
                body: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(events.len());
    for mut e in events {
        let mut states = Vec::new();
        for (hook, wants) in hooks {
            if !wants(&e.name) {
                continue;
            }
            let dead: Option<String> = conn
                .prepare_cached("SELECT error FROM event_dead WHERE hook = ?1 AND event_id = ?2")?
                .query_row(params![hook, e.id], |r| r.get(0))
                .optional()?;
            let cursor: i64 = conn
                .prepare_cached("SELECT event_id FROM hook_cursor WHERE hook = ?1")?
                .query_row([hook], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let state = match (&dead, e.id <= cursor) {
                (Some(_), _) => "dead",
                (None, true) => "delivered",
                (None, false) => "pending",
            };
            states.push((hook.clone(), state.to_string(), dead));
        }
        e.body = with_id(e.id, &e.body);
        out.push(EventView {
            event: e,
            hooks: states,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(
            crossing(d("1.5"), d("-0.2")),
            Some("clients.balance_nonpositive")
        );
        assert_eq!(
            crossing(d("1.5"), d("0")),
            Some("clients.balance_nonpositive")
        );
        assert_eq!(crossing(d("0"), d("-1")), None);
        assert_eq!(
            crossing(d("-1"), d("0")),
            Some("clients.balance_nonnegative")
        );
        assert_eq!(crossing(d("0"), d("5")), None);
        assert_eq!(crossing(d("-1"), d("-0.5")), None);
        assert_eq!(
            with_id(7, "{\"event\":\"x\"}"),
            "{\"event_id\":7,\"event\":\"x\"}"
        );
    }
}
