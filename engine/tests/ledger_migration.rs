//! A ledger written by the previous release ("schema version 1": the tables of issue 10/13
//! plus `cdr_files.head_hash` and `users.lock_reason`, `PRAGMA user_version` never set, so
//! 0) opens with this build and is migrated to schema version 3 (2: the domain; 3: closed-session ends): companies and accounts
//! derived from the users, journal kinds rewritten, balances and journal untouched, and the
//! new client writes work on it. A second open changes nothing; a ledger from a newer ratel
//! is refused.
//!
//! The old schema is a literal copy here (not the crate's constant): it pins the shape the
//! previous release left on disk. Every expectation is written out literally.

use std::path::{Path, PathBuf};

use ratel_engine::batch::{MatchedBy, Subscribers};
use ratel_engine::catalog::Catalog;
use ratel_engine::config::{ConfigSource, LoadedConfig};
use ratel_engine::domain::{Account, AccountKind, ClientChange, NewClient};
use ratel_engine::ledger::{AuthReader, DataDirLock, Ledger, LedgerError, UserRow};
use rusqlite::Connection;
use rust_decimal::Decimal;

/// The previous release's ledger, as its `SCHEMA` and `migrate` left it.
const OLD_SCHEMA: &str = "
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
CREATE INDEX IF NOT EXISTS journal_user ON journal(user_id);
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
ALTER TABLE cdr_files ADD COLUMN head_hash TEXT;
CREATE INDEX IF NOT EXISTS cdr_files_head ON cdr_files(head_hash);
ALTER TABLE users ADD COLUMN lock_reason TEXT;
";

/// What the previous release had written: alice (Main), bob (ResellerA, locked 'unpaid'),
/// a client created without credentials (addNewUsers); their initial credits, an operator
/// change ('api'), a RADIUS charge and a folded CDR block; an open session, a rated CDR
/// file, an xDR waiting in the outbox.
const OLD_DATA: &str = "
INSERT INTO users(user_id, username, password, group_name, isp_name, credit, created_at, lock_reason)
  VALUES (1, 'alice', 'pw1', 'g', 'Main', '12.50', 1700000001, NULL);
INSERT INTO users(user_id, username, password, group_name, isp_name, credit, created_at, lock_reason)
  VALUES (2, 'bob', 'pw2', 'g', 'ResellerA', '-0.75', 1700000002, 'unpaid');
INSERT INTO users(user_id, username, password, group_name, isp_name, credit, created_at, lock_reason)
  VALUES (3, NULL, NULL, 'g', 'Main', '5', 1700000003, NULL);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (1, 1, '20', '20', 'initial', 'initial:1', 'import u.csv', 1700000001);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (2, 2, '10', '10', 'initial', 'initial:2', '', 1700000002);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (3, 3, '5', '5', 'initial', 'initial:3', '', 1700000003);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (4, 2, '1.25', '11.25', 'api', 'api:4:2', 'top-up', 1700000100);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (5, 2, '-12.00', '-0.75', 'radius', 'radius:nas1:s1:600:10:20', '', 1700000200);
INSERT INTO journal(id, user_id, amount, balance_after, kind, idem_key, comment, created_at)
  VALUES (6, 1, '-7.50', '12.50', 'cdr', 'cdr:1-1:1', '', 1700000300);
INSERT INTO sessions(nas, session_id, state) VALUES ('nas1', 's2', '{\"old\":true}');
INSERT INTO cdr_files(file_hash, path, size, format, done, next_offset, next_line, records, updated_at, head_hash)
  VALUES ('ab12', 'spool/Master.csv', 100, 'asterisk', 1, 100, 3, 2, 1700000300, NULL);
INSERT INTO batches(batch_id, source, first_xdr, next_xdr, call_keys, committed_at, movements, applied)
  VALUES (1, 'cdr:ab12', 1, 3, x'000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 1700000300, x'', 1);
INSERT INTO xdr_outbox(xdr_id, row) VALUES (3, '{\"opaque\":1}');
UPDATE seq SET value = 4 WHERE name = 'xdr';
";

const NOW: i64 = 1_800_000_000;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// `<tmp>/data` holding the previous release's ledger.
fn old_ledger(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let c = Connection::open(data.join("ledger.sqlite")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(OLD_SCHEMA).unwrap();
    c.execute_batch(OLD_DATA).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 0, "the previous release never set user_version");
    data
}

fn catalog(tmp: &Path, data: &Path) -> Catalog {
    let cfg = format!(
        "[storage]\ndata_dir = {:?}\n[[group]]\nname = \"g\"\ncharge_rules = [\"all\"]\n[[charge_rule]]\nname = \"all\"\ndays = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"]\nstart = \"00:00\"\nend = \"24:00\"\nprice_per_minute = \"0\"\nprice_per_gb = \"0\"\n",
        data.display().to_string()
    );
    let lc = LoadedConfig::from_str(
        &cfg,
        ConfigSource::File(tmp.join("t.toml")),
        tmp.to_path_buf(),
    )
    .unwrap();
    Catalog::build(&lc).unwrap()
}

fn reader(data: &Path) -> Connection {
    Connection::open(data.join("ledger.sqlite")).unwrap()
}

fn version(c: &Connection) -> i64 {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn strings(c: &Connection, sql: &str) -> Vec<String> {
    let mut st = c.prepare(sql).unwrap();
    let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Every row of every table, as text, in a stable order.
fn dump(c: &Connection) -> Vec<String> {
    let tables = strings(
        c,
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
    );
    let mut out = Vec::new();
    for t in tables {
        out.push(format!("table {t}"));
        let mut st = c.prepare(&format!("SELECT * FROM {t}")).unwrap();
        let n = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                let mut s = String::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    s.push_str(&format!("{v:?}|"));
                }
                Ok(s)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.extend(rows);
    }
    out.push(format!("user_version {}", version(c)));
    out
}

type JournalRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
);

fn journal(c: &Connection) -> Vec<JournalRow> {
    let mut st = c
        .prepare("SELECT id, user_id, amount, balance_after, kind, idem_key, comment, created_at, actor FROM journal ORDER BY id")
        .unwrap();
    let rows = st
        .query_map([], |r| {
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
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn accounts(c: &Connection) -> Vec<(String, String, i64)> {
    let mut st = c
        .prepare("SELECT kind, ident, user_id FROM accounts ORDER BY user_id, kind, ident")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[allow(clippy::too_many_arguments)]
fn j(
    id: i64,
    user: i64,
    amount: &str,
    after: &str,
    kind: &str,
    key: &str,
    comment: &str,
    at: i64,
) -> JournalRow {
    (
        id,
        user,
        amount.into(),
        after.into(),
        kind.into(),
        key.into(),
        comment.into(),
        at,
        String::new(),
    )
}

/// The old journal, kinds rewritten, nothing else changed.
fn migrated_journal() -> Vec<JournalRow> {
    vec![
        j(
            1,
            1,
            "20",
            "20",
            "payment",
            "initial:1",
            "import u.csv",
            1700000001,
        ),
        j(2, 2, "10", "10", "payment", "initial:2", "", 1700000002),
        j(3, 3, "5", "5", "payment", "initial:3", "", 1700000003),
        j(
            4, 2, "1.25", "11.25", "payment", "api:4:2", "top-up", 1700000100,
        ),
        j(
            5,
            2,
            "-12.00",
            "-0.75",
            "usage",
            "radius:nas1:s1:600:10:20",
            "",
            1700000200,
        ),
        j(6, 1, "-7.50", "12.50", "usage", "cdr:1-1:1", "", 1700000300),
    ]
}

fn old_users() -> Vec<UserRow> {
    vec![
        UserRow {
            user_id: 1,
            username: Some("alice".into()),
            group_name: "g".into(),
            credit: dec("12.50"),
        },
        UserRow {
            user_id: 2,
            username: Some("bob".into()),
            group_name: "g".into(),
            credit: dec("-0.75"),
        },
        UserRow {
            user_id: 3,
            username: None,
            group_name: "g".into(),
            credit: dec("5"),
        },
    ]
}

/// Everything the migration must have produced, read with a separate connection.
fn check_migrated(data: &Path) {
    let c = reader(data);
    assert_eq!(version(&c), ratel_engine::ledger::SCHEMA_VERSION);
    assert_eq!(version(&c), 6);
    // Version 6: CDR call keys apart from their batches, empty after a migration (the old
    // batch rows keep theirs).
    let n: i64 = c
        .query_row("SELECT count(*) FROM batch_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // The journal is found by client through (user_id, created_at) only: the index on
    // user_id alone, which the old ledger had, is dropped (one B-tree less per charge).
    assert_eq!(
        strings(
            &c,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'journal' AND sql IS NOT NULL ORDER BY name"
        ),
        ["journal_user_time"]
    );
    // Version 5: client packages, empty after a migration.
    let n: i64 = c
        .query_row("SELECT count(*) FROM client_packages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // Version 3: closed sessions remember when they ended (unknown for older rows).
    let ended: Vec<Option<i64>> = c
        .prepare("SELECT ended FROM radius_closed")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(ended.iter().all(Option::is_none), "{ended:?}");

    // Companies: Main is 1, ResellerA was created from bob's isp_name.
    let mut st = c
        .prepare(
            "SELECT company_id, name, type, prepaid, credit FROM companies ORDER BY company_id",
        )
        .unwrap();
    let companies: Vec<(i64, String, i64, i64, String)> = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        companies,
        vec![
            (1, "Main".to_string(), 10, 1, "0".to_string()),
            (2, "ResellerA".to_string(), 10, 1, "0".to_string()),
        ]
    );

    // Users: company ids, new columns at their defaults, old columns untouched.
    let mut st = c
        .prepare("SELECT user_id, username, password, isp_name, company_id, credit, created_at, lock_reason, archived, deleted_at, deleted_username, status FROM users ORDER BY user_id")
        .unwrap();
    #[allow(clippy::type_complexity)]
    let users: Vec<(
        i64,
        Option<String>,
        Option<String>,
        String,
        i64,
        String,
        i64,
        Option<String>,
        i64,
        Option<i64>,
        Option<String>,
        String,
    )> = st
        .query_map([], |r| {
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
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        users,
        vec![
            (
                1,
                s("alice"),
                s("pw1"),
                "Main".into(),
                1,
                "12.50".into(),
                1700000001,
                None,
                0,
                None,
                None,
                "Package".into()
            ),
            (
                2,
                s("bob"),
                s("pw2"),
                "ResellerA".into(),
                2,
                "-0.75".into(),
                1700000002,
                s("unpaid"),
                0,
                None,
                None,
                "Package".into()
            ),
            (
                3,
                None,
                None,
                "Main".into(),
                1,
                "5".into(),
                1700000003,
                None,
                0,
                None,
                None,
                "Package".into()
            ),
        ]
    );

    // One radius account per username, created when the user was; none for user 3.
    let mut st = c
        .prepare("SELECT kind, ident, user_id, created_at FROM accounts ORDER BY user_id")
        .unwrap();
    let accts: Vec<(String, String, i64, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        accts,
        vec![
            ("radius".into(), "alice".into(), 1, 1700000001),
            ("radius".into(), "bob".into(), 2, 1700000002),
        ]
    );

    // Journal: kinds rewritten, amounts, keys, comments and times kept, actor ''.
    assert_eq!(journal(&c), migrated_journal());
    assert_eq!(
        strings(&c, "SELECT DISTINCT kind FROM journal ORDER BY kind"),
        ["payment", "usage"]
    );

    // New tables exist and are empty.
    for t in ["profile", "client_log", "refunds"] {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{t}");
    }

    // What the migration does not concern is left alone.
    assert_eq!(
        strings(
            &c,
            "SELECT nas || '/' || session_id || '/' || state FROM sessions"
        ),
        ["nas1/s2/{\"old\":true}"]
    );
    assert_eq!(
        strings(&c, "SELECT xdr_id || ':' || row FROM xdr_outbox"),
        ["3:{\"opaque\":1}"]
    );
    let (head, done): (Option<String>, i64) = c
        .query_row(
            "SELECT head_hash, done FROM cdr_files WHERE file_hash = 'ab12'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((head, done), (None, 1));
    let seq: i64 = c
        .query_row("SELECT value FROM seq WHERE name = 'xdr'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seq, 4);
}

#[test]
fn a_version_1_ledger_is_migrated_to_version_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = old_ledger(tmp.path());
    let catalog = catalog(tmp.path(), &data);

    let lock = DataDirLock::acquire(&data).unwrap();
    let ledger = Ledger::open(&data).unwrap();
    check_migrated(&data);
    // The two calls the old ledger rated stay known (their keys in the batch's row; a
    // version-6 ledger keeps new ones in `batch_keys`).
    let keys = ledger.load_call_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&u128::from_le_bytes(std::array::from_fn(|i| i as u8))));
    assert!(keys.contains(&u128::from_le_bytes(std::array::from_fn(|i| 16 + i as u8))));

    // Through the public API: balances unchanged, journal sums per kind.
    assert_eq!(ledger.load_users().unwrap(), old_users());
    assert_eq!(ledger.journal_sum(1, None).unwrap(), dec("12.50"));
    assert_eq!(ledger.journal_sum(2, None).unwrap(), dec("-0.75"));
    assert_eq!(ledger.journal_sum(3, None).unwrap(), dec("5"));
    assert_eq!(
        ledger.journal_sum(2, Some("payment")).unwrap(),
        dec("11.25")
    );
    assert_eq!(ledger.journal_sum(2, Some("usage")).unwrap(), dec("-12.00"));
    assert_eq!(ledger.journal_sum(1, Some("usage")).unwrap(), dec("-7.50"));
    for old_kind in ["initial", "api", "radius", "cdr"] {
        assert_eq!(
            ledger.journal_sum(1, Some(old_kind)).unwrap(),
            Decimal::ZERO
        );
        assert_eq!(
            ledger.journal_sum(2, Some(old_kind)).unwrap(),
            Decimal::ZERO
        );
    }
    // A replayed RADIUS update still finds its charge by idempotency key.
    let found = ledger
        .existing_journal_keys([
            ("radius:nas1:s1:600:10:20", None),
            ("radius:nas1:s1:660:10:20", None),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(found.contains("radius:nas1:s1:600:10:20"));
    // A key of the newer form (with the session's start) whose charge the old ledger holds
    // under the older form is found through it.
    let found = ledger
        .existing_journal_keys([
            (
                "radius:nas1:s1@1700000000:600:10:20",
                Some("radius:nas1:s1:600:10:20"),
            ),
            (
                "radius:nas1:s1@1700000000:660:10:20",
                Some("radius:nas1:s1:660:10:20"),
            ),
        ])
        .unwrap();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["radius:nas1:s1@1700000000:600:10:20".to_string()]
    );
    assert_eq!(
        ledger.load_sessions().unwrap(),
        vec![(
            "nas1".to_string(),
            "s2".to_string(),
            // Text as the old build stored it: read back as JSON, not as a packed state.
            ratel_engine::radius::state::Stored::Json("{\"old\":true}".to_string())
        )]
    );
    assert_eq!(ledger.next_xdr_id().unwrap(), 4);
    let mut accts = ledger.load_accounts().unwrap();
    accts.sort();
    assert_eq!(
        accts,
        vec![
            (AccountKind::Radius, "alice".to_string(), 1),
            (AccountKind::Radius, "bob".to_string(), 2),
        ]
    );

    // Rating finds every client by its username as a radius account.
    let subs = Subscribers::load(&catalog, &ledger).unwrap();
    assert_eq!(subs.owner_of(AccountKind::Radius, "alice"), Some(1));
    assert_eq!(subs.owner_of(AccountKind::Radius, "bob"), Some(2));
    assert_eq!(subs.owner_of(AccountKind::Radius, ""), None);
    assert_eq!(subs.owner_of(AccountKind::Voip, "alice"), None);
    assert_eq!(subs.credit("alice"), Some(dec("12.50")));
    assert_eq!(subs.credit("bob"), Some(dec("-0.75")));
    let (alice, bob) = (subs.index_of(1).unwrap(), subs.index_of(2).unwrap());
    assert_ne!(alice, bob);
    assert!(
        subs.index_of(3).is_some(),
        "the nameless client is a subscriber"
    );
    assert_eq!(
        subs.of_cdr("alice", "555"),
        Some((alice, MatchedBy::Account))
    );
    assert_eq!(subs.of_cdr(" bob ", ""), Some((bob, MatchedBy::Account)));
    assert_eq!(subs.of_cdr("carol", "555"), None);

    // RADIUS authorization reads the migrated ledger: bob is still locked.
    let auth = AuthReader::open(&data).unwrap();
    let a = auth.user("alice").unwrap().unwrap();
    assert_eq!((a.user_id, a.lock_reason, a.archived), (1, None, false));
    assert_eq!(a.credit, dec("12.50"));
    let b = auth.user("bob").unwrap().unwrap();
    assert_eq!(
        (b.user_id, b.lock_reason.as_deref(), b.archived),
        (2, Some("unpaid"), false)
    );
    assert!(auth.user("carol").unwrap().is_none());
    drop(auth);

    // A second open is a no-op.
    let before = dump(&reader(&data));
    drop(ledger);
    drop(lock);
    let lock = DataDirLock::acquire(&data).unwrap();
    let mut ledger = Ledger::open(&data).unwrap();
    assert_eq!(dump(&reader(&data)), before);
    check_migrated(&data);
    assert_eq!(ledger.load_users().unwrap(), old_users());

    // New writes on the migrated ledger.
    let dn = Account::new(AccountKind::Dn, "+1 (917) 375-0980").unwrap();
    assert_eq!(dn.ident, "19173750980");
    let voip = Account::new(AccountKind::Voip, "1001").unwrap();
    let carol = NewClient {
        username: Some("carol".into()),
        password: Some("pw3".into()),
        group: "g".into(),
        company: Some("ResellerA".into()),
        credit: dec("3.30"),
        comment: "new".into(),
        accounts: vec![voip.clone(), dn.clone()],
        profile: vec![("email".into(), "carol@example.com".into())],
    };
    assert_eq!(ledger.add_clients(&[carol], "admin", NOW).unwrap(), vec![4]);
    let c = reader(&data);
    assert_eq!(
        accounts(&c),
        vec![
            ("radius".into(), "alice".into(), 1),
            ("radius".into(), "bob".into(), 2),
            ("dn".into(), "19173750980".into(), 4),
            ("radius".into(), "carol".into(), 4),
            ("voip".into(), "1001".into(), 4),
        ]
    );
    let (company_id, isp): (i64, String) = c
        .query_row(
            "SELECT company_id, isp_name FROM users WHERE user_id = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((company_id, isp.as_str()), (2, "ResellerA"));
    let mut expected_journal = migrated_journal();
    expected_journal.push((
        7,
        4,
        "3.30".into(),
        "3.30".into(),
        "payment".into(),
        "initial:4".into(),
        "new".into(),
        NOW,
        "admin".into(),
    ));
    assert_eq!(journal(&c), expected_journal);

    // The same DN, written another way, on another client: refused, nothing written.
    let dave = NewClient {
        username: Some("dave".into()),
        password: Some("pw4".into()),
        group: "g".into(),
        credit: dec("1"),
        accounts: vec![Account::new(AccountKind::Dn, "0019173750980").unwrap()],
        ..Default::default()
    };
    match ledger.add_clients(std::slice::from_ref(&dave), "admin", NOW) {
        Err(LedgerError::Rejected(m)) => {
            assert!(m.contains("exists already"), "{m}");
            assert!(m.contains("dn:19173750980"), "{m}");
        }
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(ids) => panic!("a duplicate DN was accepted: {ids:?}"),
    }
    let change = ClientChange {
        add_accounts: vec![dn.clone()],
        ..Default::default()
    };
    match ledger.update_client(1, &change, "admin", NOW) {
        Err(LedgerError::Rejected(m)) => assert!(m.contains("exists already"), "{m}"),
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(b) => panic!("a duplicate DN was accepted: {b:?}"),
    }
    // An old username is taken for new clients too.
    let bob2 = NewClient {
        username: Some("bob".into()),
        password: Some("x".into()),
        group: "g".into(),
        ..Default::default()
    };
    match ledger.add_clients(&[bob2], "admin", NOW) {
        Err(LedgerError::Rejected(m)) => assert!(m.contains("exists already"), "{m}"),
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(ids) => panic!("a duplicate username was accepted: {ids:?}"),
    }
    let n: i64 = c
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(journal(&c), expected_journal);

    // Renaming alice: the old name stops being an account.
    let before = ledger
        .update_client(
            1,
            &ClientChange {
                credentials: Some(("alice2".into(), "pw9".into())),
                ..Default::default()
            },
            "admin",
            NOW,
        )
        .unwrap();
    assert_eq!(before.username.as_deref(), Some("alice"));
    assert_eq!(before.lock_reason, None);
    // The nameless client of addNewUsers gets credentials: its first radius account.
    let before = ledger
        .update_client(
            3,
            &ClientChange {
                credentials: Some(("nina".into(), "pw5".into())),
                ..Default::default()
            },
            "admin",
            NOW,
        )
        .unwrap();
    assert_eq!(before.username, None);
    assert_eq!(
        accounts(&c),
        vec![
            ("radius".into(), "alice2".into(), 1),
            ("radius".into(), "bob".into(), 2),
            ("radius".into(), "nina".into(), 3),
            ("dn".into(), "19173750980".into(), 4),
            ("radius".into(), "carol".into(), 4),
            ("voip".into(), "1001".into(), 4),
        ]
    );
    assert_eq!(
        strings(&c, "SELECT password FROM users WHERE user_id = 1"),
        ["pw9"]
    );
    let subs = Subscribers::load(&catalog, &ledger).unwrap();
    assert_eq!(subs.owner_of(AccountKind::Radius, "alice"), None);
    assert_eq!(subs.owner_of(AccountKind::Radius, "alice2"), Some(1));
    assert_eq!(subs.owner_of(AccountKind::Radius, "nina"), Some(3));
    assert_eq!(subs.owner_of(AccountKind::Voip, "1001"), Some(4));
    assert_eq!(subs.owner_of(AccountKind::Dn, "19173750980"), Some(4));
    let carol_ix = subs.index_of(4).unwrap();
    assert_eq!(
        subs.of_cdr("1001", ""),
        Some((carol_ix, MatchedBy::Account))
    );
    assert_eq!(
        subs.of_cdr("carol", ""),
        Some((carol_ix, MatchedBy::Account))
    );
    assert_eq!(
        subs.of_cdr("", "+1 917 375 0980"),
        Some((carol_ix, MatchedBy::Dn))
    );
    assert_eq!(subs.of_cdr("alice", "555"), None);

    // Deleting bob and carol: usernames and accounts freed, journal kept.
    assert_eq!(
        ledger
            .delete_clients(&[2, 4], "gone", "admin", NOW)
            .unwrap(),
        vec![Some("bob".to_string()), Some("carol".to_string())]
    );
    assert_eq!(ledger.journal_sum(2, None).unwrap(), dec("-0.75"));
    assert_eq!(ledger.journal_sum(4, None).unwrap(), dec("3.30"));
    assert_eq!(journal(&c), expected_journal);
    assert_eq!(
        accounts(&c),
        vec![
            ("radius".into(), "alice2".into(), 1),
            ("radius".into(), "nina".into(), 3),
        ]
    );
    let mut st = c
        .prepare("SELECT user_id, username, deleted_username, deleted_at, credit FROM users WHERE user_id IN (2, 4) ORDER BY user_id")
        .unwrap();
    #[allow(clippy::type_complexity)]
    let deleted: Vec<(i64, Option<String>, Option<String>, Option<i64>, String)> = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        deleted,
        vec![
            (2, None, Some("bob".into()), Some(NOW), "-0.75".into()),
            (4, None, Some("carol".into()), Some(NOW), "3.30".into()),
        ]
    );
    drop(st);
    let subs = Subscribers::load(&catalog, &ledger).unwrap();
    assert_eq!(subs.owner_of(AccountKind::Radius, "bob"), None);
    assert_eq!(subs.owner_of(AccountKind::Voip, "1001"), None);
    assert_eq!(subs.owner_of(AccountKind::Dn, "19173750980"), None);
    assert_eq!(subs.of_cdr("1001", "19173750980"), None);
    assert!(
        subs.index_of(2).is_some(),
        "a deleted client keeps its id entry"
    );
    assert!(matches!(
        ledger.update_client(2, &ClientChange::default(), "admin", NOW),
        Err(LedgerError::NoSuchClient(2))
    ));

    // The freed username and DN can be given again.
    let bob3 = NewClient {
        username: Some("bob".into()),
        password: Some("pw6".into()),
        group: "g".into(),
        credit: dec("2"),
        ..Default::default()
    };
    assert_eq!(
        ledger.add_clients(&[bob3, dave], "admin", NOW).unwrap(),
        vec![5, 6]
    );
    assert_eq!(
        accounts(&c),
        vec![
            ("radius".into(), "alice2".into(), 1),
            ("radius".into(), "nina".into(), 3),
            ("radius".into(), "bob".into(), 5),
            ("dn".into(), "19173750980".into(), 6),
            ("radius".into(), "dave".into(), 6),
        ]
    );
    assert_eq!(ledger.journal_sum(2, None).unwrap(), dec("-0.75"));
    assert_eq!(ledger.journal_sum(5, None).unwrap(), dec("2"));
    assert_eq!(
        strings(&c, "SELECT action FROM client_log ORDER BY id"),
        ["create", "update", "update", "delete", "delete", "create", "create"]
    );
    drop(c);

    // Still the current version after the writes and another open.
    drop(ledger);
    drop(lock);
    let _lock = DataDirLock::acquire(&data).unwrap();
    let ledger = Ledger::open(&data).unwrap();
    assert_eq!(version(&reader(&data)), 6);
    assert_eq!(ledger.load_users().unwrap().len(), 6);
}

#[test]
fn a_ledger_from_a_newer_ratel_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = old_ledger(tmp.path());
    reader(&data)
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let _lock = DataDirLock::acquire(&data).unwrap();
    let err = match Ledger::open(&data) {
        Ok(_) => panic!("a version 99 ledger was opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("newer ratel"), "{err}");
    assert!(err.contains("99"), "{err}");
    // Nothing was migrated.
    let c = reader(&data);
    assert_eq!(version(&c), 99);
    let companies: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('companies', 'accounts')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(companies, 0);
    assert_eq!(
        strings(&c, "SELECT DISTINCT kind FROM journal ORDER BY kind"),
        ["api", "cdr", "initial", "radius"]
    );
}

/// A newer ledger whose shape this build does not know: refused with the "newer ratel"
/// message, and left as it was (the base schema is applied only after the version check,
/// in the migration's transaction).
#[test]
fn a_newer_ledger_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let c = Connection::open(data.join("ledger.sqlite")).unwrap();
        c.execute_batch(
            "CREATE TABLE seq(name TEXT PRIMARY KEY, next_id INTEGER NOT NULL);
             INSERT INTO seq(name, next_id) VALUES ('xdr', 7);
             PRAGMA user_version = 99;",
        )
        .unwrap();
    }
    let _lock = DataDirLock::acquire(&data).unwrap();
    let err = match Ledger::open(&data) {
        Ok(_) => panic!("a version 99 ledger was opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("newer ratel"), "{err}");
    let c = reader(&data);
    assert_eq!(version(&c), 99);
    assert_eq!(
        strings(
            &c,
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ),
        ["seq"]
    );
}

/// Every CDR block's commit counts the batches not yet folded and the fold reads them: on a
/// ledger of months (a batch row per outbox flush, millions) that must not read the table.
#[test]
fn unfolded_batches_are_found_through_an_index_on_new_and_migrated_ledgers() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    drop(Ledger::open(&fresh).unwrap());
    let migrated = old_ledger(tmp.path());
    drop(Ledger::open(&migrated).unwrap());
    for data in [&fresh, &migrated] {
        let c = reader(data);
        for q in [
            "SELECT count(*) FROM batches WHERE applied = 0",
            "SELECT batch_id, movements FROM batches WHERE applied = 0 ORDER BY batch_id",
            "SELECT EXISTS(SELECT 1 FROM batches WHERE applied = 0)",
        ] {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            let plan: Vec<String> = st
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter().any(|d| d.contains("batches_unapplied")),
                "{data:?}: {q} plans {plan:?}"
            );
        }
    }
}
