//! The bundled SQLite gathers the frames of one WAL write into a buffer and writes them
//! with one `pwrite` per 31 frames, instead of two per frame (vendor/README.md). Frames
//! must reach the file exactly as before: every committed transaction readable through a
//! second connection and after a crash (the files copied while the writer is open, never
//! checkpointed), where opening rebuilds the WAL index from the frames and stops at the
//! first frame whose checksum does not chain.
//!
//! One test in this file: it counts the process's write system calls (`syscw` of
//! `/proc/self/io`), which another test running in parallel would disturb.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection};

mod rng;
use rng::Rng;

type Model = BTreeMap<i64, Vec<u8>>;

fn write_syscalls() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("syscw in /proc/self/io")
}

fn check(c: &Connection, model: &Model, when: &str) {
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{when}: integrity_check");
    let mut st = c.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    let got: Model = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), model.len(), "{when}: row count");
    assert!(got == *model, "{when}: rows differ from the model");
}

/// The database and its WAL as a crash leaves them: copied while the writer holds them,
/// without the shared-memory index (the next open rebuilds it from the WAL's frames).
fn crash_copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal =
        |p: &Path| p.with_file_name(format!("{}-wal", p.file_name().unwrap().to_string_lossy()));
    std::fs::copy(wal(from), wal(to)).unwrap();
}

#[test]
fn wal_frames_are_written_together_and_read_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let c = Connection::open(&path).unwrap();
    // No automatic checkpoint: every commit of the run stays in the WAL, which is what the
    // copies below read back.
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();

    // One commit of 100 new pages (3,000-byte rows, one per 4 KiB page), all of them in
    // the cache until the commit.
    let mut model = Model::new();
    let before = write_syscalls();
    c.execute_batch("BEGIN").unwrap();
    for k in 0..100i64 {
        let v = vec![k as u8; 3000];
        c.execute("INSERT INTO t(k, v) VALUES (?1, ?2)", params![k, v])
            .unwrap();
        model.insert(k, v);
    }
    c.execute_batch("COMMIT").unwrap();
    let writes = write_syscalls() - before;
    // Two per frame before (header, page): over 200. Gathered: 101+ frames in 31-frame
    // writes, and the few writes of SQLite's own around them.
    assert!(
        writes <= 12,
        "{writes} write system calls for one commit of about 100 pages"
    );

    // Transactions of every size, rows updated, deleted and added at random keys. A small
    // cache makes big transactions spill dirty pages into the WAL before their commit (one
    // frame per write) and write some of them again (frames overwritten in place,
    // checksums recomputed at the commit).
    c.execute_batch("PRAGMA cache_size=-256").unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for tx in 0..120 {
        let mut pending = model.clone();
        c.execute_batch("BEGIN").unwrap();
        let ops = [1, 2, 5, 30, 200][tx % 5] + rng.below(20);
        for _ in 0..ops {
            let k = rng.below(3_000) as i64;
            if rng.below(6) == 0 {
                c.execute("DELETE FROM t WHERE k = ?1", [k]).unwrap();
                pending.remove(&k);
            } else {
                let v: Vec<u8> = (0..100 + rng.below(2_500))
                    .map(|_| rng.next() as u8)
                    .collect();
                c.execute(
                    "INSERT OR REPLACE INTO t(k, v) VALUES (?1, ?2)",
                    params![k, v],
                )
                .unwrap();
                pending.insert(k, v);
            }
        }
        if tx % 7 == 6 {
            c.execute_batch("ROLLBACK").unwrap();
        } else {
            c.execute_batch("COMMIT").unwrap();
            model = pending;
        }
        if tx % 40 == 39 {
            check(&c, &model, &format!("the writer after transaction {tx}"));
            let reader = Connection::open(&path).unwrap();
            check(&reader, &model, &format!("a second connection after {tx}"));
            let copy = dir.path().join(format!("crash-{tx}.sqlite"));
            crash_copy(&path, &copy);
            let reopened = Connection::open(&copy).unwrap();
            check(&reopened, &model, &format!("a crash copy after {tx}"));
        }
    }
    let frames: i64 = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap();
    assert!(frames > 2_000, "the WAL held {frames} frames only");
    check(&c, &model, "the writer after a checkpoint");
}
