//! The read side of the ledger for the API's service layer: one trait ([`LedgerRead`]) with
//! typed answers, and its SQLite implementation over a read-only connection ([`Reader`]).
//! WAL readers see committed state only and never block the core's commits. No SQL lives
//! outside the ledger module: a ledger on another store implements this trait.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rust_decimal::Decimal;

use super::LedgerError;
use crate::domain::{Account, AccountKind, ClientStatus, Company, JournalKind};

/// A client as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub user_id: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub group: String,
    pub company_id: i64,
    pub company_name: String,
    pub credit: Decimal,
    pub created_at: i64,
    pub first_login: Option<i64>,
    pub real_first_login: Option<i64>,
    /// IBSng's `basic_info.status` (`Package`, `Recharged`).
    pub service_status: String,
    pub lock_reason: Option<String>,
    pub archived: bool,
}

impl ClientRecord {
    pub fn status(&self) -> ClientStatus {
        ClientStatus::of(self.lock_reason.as_deref(), self.archived)
    }
}

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: i64,
    pub user_id: i64,
    pub kind: JournalKind,
    /// Signed: a charge is negative.
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub comment: String,
    /// Who made it: the admin's name for payments, empty for usage.
    pub actor: String,
    pub at: i64,
}

/// Charge-rule usage of a client in its current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleUsage {
    pub rule: String,
    pub credit: Decimal,
    pub seconds: i64,
    pub bytes: i64,
}

/// Reads the service layer makes of the ledger. Deleted clients are never returned.
pub trait LedgerRead: Send {
    fn client(&self, user_id: i64) -> Result<Option<ClientRecord>, LedgerError>;
    fn client_by_username(&self, username: &str) -> Result<Option<ClientRecord>, LedgerError>;
    /// The client owning an account.
    fn client_of_account(&self, account: &Account) -> Result<Option<i64>, LedgerError>;
    fn accounts_of(&self, user_id: i64) -> Result<Vec<Account>, LedgerError>;
    fn profile_of(&self, user_id: i64) -> Result<Vec<(String, String)>, LedgerError>;
    fn rule_usage(&self, user_id: i64) -> Result<Vec<RuleUsage>, LedgerError>;
    /// Journal rows of a client with `from <= at < to`, of the given kinds (all when
    /// empty), oldest first, at most `limit`.
    fn journal(
        &self,
        user_id: i64,
        from: Option<i64>,
        to: Option<i64>,
        kinds: &[JournalKind],
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError>;
    fn companies(&self) -> Result<Vec<Company>, LedgerError>;
    /// xDR files (relative paths) whose rows may fall in `[lo, hi]` (login or logout).
    fn xdr_files_between(&self, lo: i64, hi: i64) -> Result<Vec<String>, LedgerError>;
    /// xDRs still in the outbox (JSON), oldest first.
    fn outbox_rows(&self) -> Result<Vec<String>, LedgerError>;
    /// [`LedgerRead::xdr_files_between`] and [`LedgerRead::outbox_rows`] from one snapshot:
    /// an outbox flush committing between two separate reads would hide its rows from both.
    fn xdr_sources(&self, lo: i64, hi: i64) -> Result<(Vec<String>, Vec<String>), LedgerError>;
    /// (xDRs in the outbox, xDR files) for `/metrics`.
    fn counts(&self) -> Result<(u64, u64), LedgerError>;
    /// The client whose profile field `key` is `value` (the lowest id when several).
    fn client_by_profile(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<ClientRecord>, LedgerError>;
    /// Clients of a group, by id, at most `limit`.
    fn clients_in_group(&self, group: &str, limit: usize)
        -> Result<Vec<ClientRecord>, LedgerError>;
    /// The last journal row of a client before `t` (its balance then).
    fn journal_before(&self, user_id: i64, t: i64) -> Result<Option<JournalEntry>, LedgerError>;
    /// A value of the ledger's `meta` table.
    fn meta(&self, key: &str) -> Result<Option<String>, LedgerError>;
    /// The ledger's schema version.
    fn schema_version(&self) -> Result<i64, LedgerError>;
    /// Runs one read-only statement (see [`SqlLimits`]): column names and rows.
    fn sql(&self, query: &str, limits: SqlLimits) -> Result<SqlAnswer, SqlError>;
    /// A client's packages (closed ones too when `closed`), by id.
    fn client_packages(
        &self,
        user_id: i64,
        closed: bool,
    ) -> Result<Vec<crate::packages::ClientPackage>, LedgerError>;
    /// One client package by id (closed ones too).
    fn client_package(
        &self,
        id: i64,
    ) -> Result<Option<crate::packages::ClientPackage>, LedgerError>;
    /// Provisioning events after `after` (at most `limit`), each with its delivery state
    /// for every notify hook that takes it.
    fn events(
        &self,
        after: i64,
        limit: usize,
        hooks: &[crate::events::Hook],
    ) -> Result<Vec<super::EventView>, LedgerError>;
}

/// Bounds of an operator's SQL statement.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub max_rows: usize,
    pub timeout: std::time::Duration,
}

/// What a statement answered: column names and rows (JSON values: integers, reals as
/// their text, text, blobs as hex, null).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlAnswer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// More rows matched than `max_rows`.
    pub truncated: bool,
}

/// Why a statement was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Refused(String),
    #[error("the statement ran longer than {0} s and was stopped")]
    Timeout(u64),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The SQLite [`LedgerRead`]: a read-only connection.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    /// Opens the ledger of a data dir read-only (the core must have created it).
    pub fn open(data_dir: &Path) -> Result<Reader, LedgerError> {
        let path = data_dir.join("ledger.sqlite");
        let sq = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        super::stable_plans(&conn).map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sq)?;
        Ok(Reader { conn, path })
    }

    fn sq(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn dec(&self, what: &str, s: &str) -> Result<Decimal, LedgerError> {
        super::parse_dec(&self.path, what, s)
    }

    fn client_where(
        &self,
        cond: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<ClientRecord>, LedgerError> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            String,
            i64,
            Option<String>,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            String,
            Option<String>,
            i64,
        );
        let row: Option<Row> = self
            .conn
            .prepare_cached(&format!(
                "SELECT u.user_id, u.username, u.password, u.group_name, u.company_id, c.name,
                        u.credit, u.created_at, u.first_login, u.real_first_login, u.status,
                        u.lock_reason, u.archived
                 FROM users u LEFT JOIN companies c ON c.company_id = u.company_id
                 WHERE u.deleted_at IS NULL AND {cond}"
            ))
            .map_err(self.sq())?
            .query_row([arg], |r| {
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
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                ))
            })
            .optional()
            .map_err(self.sq())?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(ClientRecord {
            user_id: r.0,
            username: r.1,
            password: r.2,
            group: r.3,
            company_id: r.4,
            company_name: r.5.unwrap_or_default(),
            credit: self.dec("users.credit", &r.6)?,
            created_at: r.7,
            first_login: r.8,
            real_first_login: r.9,
            service_status: r.10,
            lock_reason: r.11,
            archived: r.12 != 0,
        }))
    }
}

impl LedgerRead for Reader {
    fn client(&self, user_id: i64) -> Result<Option<ClientRecord>, LedgerError> {
        self.client_where("u.user_id = ?1", &user_id)
    }

    fn client_by_username(&self, username: &str) -> Result<Option<ClientRecord>, LedgerError> {
        self.client_where("u.username = ?1", &username)
    }

    fn client_of_account(&self, a: &Account) -> Result<Option<i64>, LedgerError> {
        self.conn
            .prepare_cached("SELECT user_id FROM accounts WHERE kind = ?1 AND ident = ?2")
            .map_err(self.sq())?
            .query_row(params![a.kind.as_str(), a.ident], |r| r.get(0))
            .optional()
            .map_err(self.sq())
    }

    fn accounts_of(&self, user_id: i64) -> Result<Vec<Account>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT kind, ident FROM accounts WHERE user_id = ?1 ORDER BY created_at, kind, ident",
            )
            .map_err(self.sq())?;
        let rows = st
            .query_map([user_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, ident) = row.map_err(self.sq())?;
            if let Some(kind) = AccountKind::parse(&kind) {
                out.push(Account { kind, ident });
            }
        }
        Ok(out)
    }

    fn profile_of(&self, user_id: i64) -> Result<Vec<(String, String)>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value FROM profile WHERE user_id = ?1 ORDER BY key")
            .map_err(self.sq())?;
        let rows = st
            .query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    fn rule_usage(&self, user_id: i64) -> Result<Vec<RuleUsage>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT rule, credit, seconds, bytes FROM rule_usage WHERE user_id = ?1 ORDER BY rule",
            )
            .map_err(self.sq())?;
        let rows: Vec<(String, String, i64, i64)> = st
            .query_map([user_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(self.sq())?
            .collect::<Result<_, _>>()
            .map_err(self.sq())?;
        rows.into_iter()
            .map(|(rule, credit, seconds, bytes)| {
                Ok(RuleUsage {
                    rule,
                    credit: self.dec("rule_usage.credit", &credit)?,
                    seconds,
                    bytes,
                })
            })
            .collect()
    }

    fn journal(
        &self,
        user_id: i64,
        from: Option<i64>,
        to: Option<i64>,
        kinds: &[JournalKind],
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, kind, amount, balance_after, comment, actor, created_at FROM journal
                 WHERE user_id = ?1 AND created_at >= ?2 AND created_at < ?3
                 ORDER BY id LIMIT ?4",
            )
            .map_err(self.sq())?;
        let rows: Vec<(i64, String, String, String, String, String, i64)> = st
            .query_map(
                params![
                    user_id,
                    from.unwrap_or(i64::MIN),
                    to.unwrap_or(i64::MAX),
                    // Filtered by kind below: read enough rows for the limit.
                    if kinds.is_empty() {
                        limit as i64
                    } else {
                        i64::MAX
                    }
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .map_err(self.sq())?
            .collect::<Result<_, _>>()
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for (id, kind, amount, after, comment, actor, at) in rows {
            let kind = JournalKind::parse(&kind).ok_or_else(|| LedgerError::Corrupt {
                path: self.path.display().to_string(),
                what: "journal.kind".into(),
                value: kind.clone(),
            })?;
            if !kinds.is_empty() && !kinds.contains(&kind) {
                continue;
            }
            out.push(JournalEntry {
                id,
                user_id,
                kind,
                amount: self.dec("journal.amount", &amount)?,
                balance_after: self.dec("journal.balance_after", &after)?,
                comment,
                actor,
                at,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn companies(&self) -> Result<Vec<Company>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT company_id, name, type, prepaid, credit FROM companies ORDER BY company_id",
            )
            .map_err(self.sq())?;
        let rows: Vec<(i64, String, i64, i64, String)> = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(self.sq())?
            .collect::<Result<_, _>>()
            .map_err(self.sq())?;
        rows.into_iter()
            .map(|(id, name, kind, prepaid, credit)| {
                Ok(Company {
                    id,
                    name,
                    kind,
                    prepaid: prepaid != 0,
                    credit: self.dec("companies.credit", &credit)?,
                })
            })
            .collect()
    }

    fn xdr_files_between(&self, lo: i64, hi: i64) -> Result<Vec<String>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path FROM xdr_files WHERE max_logout >= ?1 AND min_login <= ?2 ORDER BY path",
            )
            .map_err(self.sq())?;
        let rows = st.query_map([lo, hi], |r| r.get(0)).map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    fn xdr_sources(&self, lo: i64, hi: i64) -> Result<(Vec<String>, Vec<String>), LedgerError> {
        // One read transaction: both reads see the same commit.
        let tx = self.conn.unchecked_transaction().map_err(self.sq())?;
        let files = self.xdr_files_between(lo, hi)?;
        let outbox = self.outbox_rows()?;
        tx.finish().map_err(self.sq())?;
        Ok((files, outbox))
    }

    fn outbox_rows(&self) -> Result<Vec<String>, LedgerError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT row FROM xdr_outbox ORDER BY xdr_id")
            .map_err(self.sq())?;
        let rows = st.query_map([], |r| r.get(0)).map_err(self.sq())?;
        rows.collect::<Result<_, _>>().map_err(self.sq())
    }

    fn client_by_profile(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<ClientRecord>, LedgerError> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT p.user_id FROM profile p JOIN users u ON u.user_id = p.user_id
                 WHERE p.key = ?1 AND p.value = ?2 AND u.deleted_at IS NULL
                 ORDER BY p.user_id LIMIT 1",
            )
            .map_err(self.sq())?
            .query_row(params![key, value], |r| r.get(0))
            .optional()
            .map_err(self.sq())?;
        match id {
            Some(id) => self.client(id),
            None => Ok(None),
        }
    }

    fn clients_in_group(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<ClientRecord>, LedgerError> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT user_id FROM users WHERE group_name = ?1 AND deleted_at IS NULL ORDER BY user_id LIMIT ?2",
            )
            .map_err(self.sq())?
            .query_map(params![group, limit as i64], |r| r.get(0))
            .map_err(self.sq())?
            .collect::<Result<_, _>>()
            .map_err(self.sq())?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.client(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn journal_before(&self, user_id: i64, t: i64) -> Result<Option<JournalEntry>, LedgerError> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM journal WHERE user_id = ?1 AND created_at < ?2 ORDER BY id DESC LIMIT 1",
            )
            .map_err(self.sq())?
            .query_row(params![user_id, t], |r| r.get(0))
            .optional()
            .map_err(self.sq())?;
        let Some(id) = id else { return Ok(None) };
        // The row itself, read like any other.
        let rows = self.journal(user_id, None, None, &[], usize::MAX)?;
        Ok(rows.into_iter().find(|j| j.id == id))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .map_err(self.sq())?
            .query_row([key], |r| r.get(0))
            .optional()
            .map_err(self.sq())
    }

    fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.sq())
    }

    fn sql(&self, query: &str, limits: SqlLimits) -> Result<SqlAnswer, SqlError> {
        run_sql(&self.path, query, limits)
    }

    fn client_packages(
        &self,
        user_id: i64,
        closed: bool,
    ) -> Result<Vec<crate::packages::ClientPackage>, LedgerError> {
        super::packages::of_client(&self.conn, user_id, closed).map_err(self.sq())
    }

    fn client_package(
        &self,
        id: i64,
    ) -> Result<Option<crate::packages::ClientPackage>, LedgerError> {
        super::packages::by_id(&self.conn, id).map_err(self.sq())
    }

    fn events(
        &self,
        after: i64,
        limit: usize,
        hooks: &[crate::events::Hook],
    ) -> Result<Vec<super::EventView>, LedgerError> {
        let wants: Vec<(String, super::events::Wants<'_>)> = hooks
            .iter()
            .filter(|h| h.mode == crate::events::Mode::Notify)
            .map(|h| {
                let f: super::events::Wants<'_> = Box::new(move |n: &str| h.wants(n));
                (h.name.clone(), f)
            })
            .collect();
        super::events::list(&self.conn, after, limit, &wants).map_err(self.sq())
    }

    fn counts(&self) -> Result<(u64, u64), LedgerError> {
        let count = |sql: &str| -> Result<u64, LedgerError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(self.sq())
        };
        Ok((
            count("SELECT COUNT(*) FROM xdr_outbox")?,
            count("SELECT COUNT(*) FROM xdr_files")?,
        ))
    }
}

/// Largest value a statement may build (SQLITE_LIMIT_LENGTH).
const MAX_SQL_VALUE: i32 = 1 << 20;
/// Answers stop (truncated) once their text passes this.
const MAX_SQL_ANSWER: usize = 16 << 20;

/// One operator statement on its own read-only connection: an authorizer allows reads
/// only (no writes, ATTACH, PRAGMA, transactions or schema changes; `meta` is unreadable,
/// subscriber passwords read as NULL), a progress handler stops it at the time limit, no
/// value may exceed 1 MiB, at most `max_rows` rows and about 16 MiB of answer are kept.
pub fn run_sql(path: &Path, query: &str, limits: SqlLimits) -> Result<SqlAnswer, SqlError> {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let sq = |source| {
        SqlError::Ledger(LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        })
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(sq)?;
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let note = refused.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
        // `meta` holds the API token signing key: an `sql` user reading it could sign
        // tokens of any user. Subscriber passwords read as NULL.
        AuthAction::Read { table_name, .. } if table_name.eq_ignore_ascii_case("meta") => {
            let mut n = note.lock().unwrap_or_else(|e| e.into_inner());
            n.get_or_insert_with(|| "the meta table is not readable".to_string());
            Authorization::Deny
        }
        AuthAction::Read {
            table_name,
            column_name,
        } if table_name.eq_ignore_ascii_case("users")
            && (column_name.eq_ignore_ascii_case("password")) =>
        {
            Authorization::Ignore
        }
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => Authorization::Allow,
        other => {
            let mut n = note.lock().unwrap_or_else(|e| e.into_inner());
            n.get_or_insert_with(|| {
                format!("only reading statements are allowed ({other:?} refused)")
            });
            Authorization::Deny
        }
    }))
    .map_err(sq)?;
    // No value (a blob or string an expression builds) beyond 1 MiB: a statement cannot
    // allocate its way past the row cap.
    let _ = conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_SQL_VALUE);
    let started = std::time::Instant::now();
    let timeout = limits.timeout;
    conn.progress_handler(10_000, Some(move || started.elapsed() > timeout))
        .map_err(sq)?;
    let map_err = |e: rusqlite::Error| -> SqlError {
        if let Some(r) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return SqlError::Refused(r);
        }
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                SqlError::Timeout(timeout.as_secs())
            }
            rusqlite::Error::SqliteFailure(_, Some(m)) => SqlError::Refused(m.clone()),
            rusqlite::Error::MultipleStatement => {
                SqlError::Refused("one statement at a time".into())
            }
            _ => SqlError::Refused(e.to_string()),
        }
    };
    let mut st = conn.prepare(query).map_err(map_err)?;
    if !st.readonly() {
        return Err(SqlError::Refused(
            "only reading statements are allowed".into(),
        ));
    }
    let columns: Vec<String> = st.column_names().map(|c| c.to_string()).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut q = st.query([]).map_err(map_err)?;
    let mut bytes = 0usize;
    while let Some(r) = q.next().map_err(map_err)? {
        if rows.len() >= limits.max_rows || bytes > MAX_SQL_ANSWER {
            truncated = true;
            break;
        }
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            use rusqlite::types::ValueRef;
            row.push(match r.get_ref(i).map_err(map_err)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(v) => serde_json::Value::from(v),
                ValueRef::Real(v) => serde_json::Value::String(v.to_string()),
                ValueRef::Text(t) => {
                    serde_json::Value::String(String::from_utf8_lossy(t).into_owned())
                }
                ValueRef::Blob(b) => {
                    serde_json::Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
                }
            });
        }
        bytes += row
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.len() + 2,
                _ => 8,
            })
            .sum::<usize>();
        rows.push(row);
    }
    Ok(SqlAnswer {
        columns,
        rows,
        truncated,
    })
}
