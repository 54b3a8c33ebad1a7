//! Online backup and restore of a data dir (`ratel backup DEST`, `ratel restore SRC`).
//!
//! A backup runs beside a live `serve` without its data-dir lock: the ledger is read through
//! a read-only connection and copied with SQLite's online-backup API in one step (one read
//! transaction, so the copy is the ledger as of one commit), and only then are the xDR
//! files that the *copy's* `xdr_files` table names copied. xDR files never change once
//! named, and a file is recorded before it is renamed to its final name (ARCHITECTURE.md,
//! invariant 4), so every file the copy names exists, under its final or its temp name:
//! the set is the state of one instant. `manifest.json`, written last, lists every file
//! with its size and sha256; a directory without it is an incomplete backup.
//!
//! A restore checks every sha256 before it touches the target, refuses a non-empty data dir
//! unless forced, holds the data-dir lock, copies the xDR tree and then the ledger, and
//! opens the result as a ledger to prove it sound.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::{DataDirLock, Ledger, LedgerError};
use crate::xdr;

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The ledger's file name, in a data dir and in a backup alike.
const LEDGER_FILE: &str = "ledger.sqlite";
/// The xDR tree's directory name, in a data dir and in a backup alike.
const XDR_DIR: &str = "xdr";

/// Errors of backup and restore; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sq(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> BackupError {
    BackupError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// `manifest.json`: what a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// When the backup was taken (RFC 3339, UTC).
    pub created: String,
    /// The ledger copy first, then the xDR files, paths relative to the backup directory.
    pub files: Vec<ManifestFile>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the backup directory, `/`-separated (`xdr/date=2026-11-02/x.parquet`).
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What a restore put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub files: usize,
    pub bytes: u64,
    pub users: usize,
}

/// Creates a directory readable by its owner only (it will hold passwords).
fn create_private_dir(dir: &Path, recursive: bool) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(recursive);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Copies `from` to the new file `to` (mode 0600), fsynced; returns its size and sha256.
fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String), BackupError> {
    let mut src = File::open(from).map_err(io(from))?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut dst = o.open(to).map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io(to))?;
        bytes += n as u64;
    }
    dst.sync_all().map_err(io(to))?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// Size and sha256 of a file.
fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A manifest or `xdr_files` path as a relative path that stays inside its root.
fn safe_rel(root: &Path, rel: &str) -> Result<PathBuf, BackupError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid(
            &root.join(rel),
            "not a plain relative path inside the backup",
        ));
    }
    Ok(p.to_path_buf())
}

/// Fsyncs every directory in `dirs` (deduplicated).
fn sync_dirs(mut dirs: Vec<PathBuf>) -> Result<(), BackupError> {
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        xdr::sync_dir(d).map_err(io(d))?;
    }
    Ok(())
}

/// Copies the ledger of `data_dir` into `dest_ledger` with SQLite's online-backup API and
/// returns the xDR paths (relative to the xDR root) that the copy records.
fn copy_ledger(data_dir: &Path, dest_ledger: &Path) -> Result<Vec<String>, BackupError> {
    let src_path = data_dir.join(LEDGER_FILE);
    if !src_path.is_file() {
        return Err(invalid(&src_path, "no ledger here: nothing to back up"));
    }
    let src = Connection::open_with_flags(
        &src_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq(&src_path))?;
    src.busy_timeout(Duration::from_secs(5))
        .map_err(sq(&src_path))?;
    // Created 0600 before SQLite opens it (it would use the umask): it holds passwords.
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(dest_ledger).map_err(io(dest_ledger))?;
    let mut dst = Connection::open(dest_ledger).map_err(sq(dest_ledger))?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sq(dest_ledger))?;
        // All pages in one step: one read transaction, so the copy is one commit's state
        // (stepping in pieces restarts whenever `serve` commits in between). Busy/Locked
        // (a checkpoint holding a lock) is retried, bounded.
        let mut tries = 0;
        loop {
            match b.step(-1).map_err(sq(&src_path))? {
                rusqlite::backup::StepResult::Done => break,
                _ if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                _ => return Err(invalid(&src_path, "the ledger stayed busy for 5 s")),
            }
        }
    }
    drop(src);
    // One self-contained file (no -wal beside it); `Ledger::open` turns WAL on again.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sq(dest_ledger))?;
    let paths = {
        let mut st = dst
            .prepare("SELECT path FROM xdr_files ORDER BY path")
            .map_err(sq(dest_ledger))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sq(dest_ledger))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sq(dest_ledger))?
    };
    dst.close().map_err(|(_, e)| sq(dest_ledger)(e))?;
    File::open(dest_ledger)
        .and_then(|f| f.sync_all())
        .map_err(io(dest_ledger))?;
    Ok(paths)
}

/// Copies one committed xDR file: under its final name, or under its temp name when the
/// copy was taken between the commit that recorded it and its rename (bounded retries: the
/// rename follows the commit at once), or from the compaction trash when a compaction
/// replaced it since the copy was taken (it waits there for its grace period).
fn copy_xdr(src_final: &Path, to: &Path) -> Result<(u64, String), BackupError> {
    let src_temp = xdr::temp_path(src_final);
    let src_trash = xdr::trash_path(src_final).unwrap_or_else(|| src_final.to_path_buf());
    for _ in 0..200 {
        for from in [src_final, src_temp.as_path(), src_trash.as_path()] {
            match copy_hashed(from, to) {
                Ok(r) => return Ok(r),
                Err(BackupError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !to.exists() => {}
                Err(e) => return Err(e),
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(invalid(
        src_final,
        "recorded in the ledger but missing from the xDR tree",
    ))
}

/// Backs up `data_dir` into the new directory `dest`; `created` is the manifest's time
/// (RFC 3339). Safe while `serve` runs on the data dir.
pub fn backup(data_dir: &Path, dest: &Path, created: &str) -> Result<Manifest, BackupError> {
    let parent = crate::xdr::dir_of(dest);
    crate::xdr::create_dir_durable(parent).map_err(io(parent))?;
    match create_private_dir(dest, false) {
        // Its entry durable: a backup reported done must survive a power cut.
        Ok(()) => crate::xdr::sync_dir(parent).map_err(io(parent))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(invalid(
                dest,
                "already exists; a backup goes into a new directory",
            ))
        }
        Err(e) => return Err(io(dest)(e)),
    }
    let dest_ledger = dest.join(LEDGER_FILE);
    let xdr_paths = copy_ledger(data_dir, &dest_ledger)?;
    let (bytes, sha256) = hash_file(&dest_ledger)?;
    let mut files = vec![ManifestFile {
        path: LEDGER_FILE.into(),
        bytes,
        sha256,
    }];
    let src_root = data_dir.join(XDR_DIR);
    let dst_root = dest.join(XDR_DIR);
    let mut dirs = vec![dest.to_path_buf()];
    for rel in &xdr_paths {
        let relp = safe_rel(&src_root, rel)?;
        let to = dst_root.join(&relp);
        let parent = to.parent().expect("a file path has a parent");
        if !dirs.iter().any(|d| d == parent) {
            create_private_dir(parent, true).map_err(io(parent))?;
            dirs.push(parent.to_path_buf());
        }
        let (bytes, sha256) = copy_xdr(&src_root.join(&relp), &to)?;
        files.push(ManifestFile {
            path: format!("{XDR_DIR}/{}", rel.replace('\\', "/")),
            bytes,
            sha256,
        });
    }
    if xdr_paths.is_empty() {
        create_private_dir(&dst_root, true).map_err(io(&dst_root))?;
    }
    dirs.push(dst_root);
    sync_dirs(dirs)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created: created.into(),
        files,
    };
    // Written last, under a temp name: a backup directory without a manifest is incomplete.
    let tmp = dest.join(format!(".{MANIFEST}.tmp"));
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    let path = dest.join(MANIFEST);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    xdr::sync_dir(dest).map_err(io(dest))?;
    Ok(manifest)
}

/// Reads `src/manifest.json` and checks every file's size and sha256 against it.
pub fn verify(src: &Path) -> Result<Manifest, BackupError> {
    let path = src.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(&path, "missing: not a ratel backup, or an incomplete one")
        } else {
            io(&path)(e)
        }
    })?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| invalid(&path, e.to_string()))?;
    if m.version != MANIFEST_VERSION {
        return Err(invalid(
            &path,
            format!(
                "manifest version {} (this ratel reads {MANIFEST_VERSION})",
                m.version
            ),
        ));
    }
    if !m.files.iter().any(|f| f.path == LEDGER_FILE) {
        return Err(invalid(&path, format!("lists no {LEDGER_FILE}")));
    }
    for f in &m.files {
        let p = src.join(safe_rel(src, &f.path)?);
        let (bytes, sha256) = hash_file(&p)?;
        if sha256 != f.sha256 || bytes != f.bytes {
            return Err(invalid(
                &p,
                format!(
                    "sha256 {sha256} ({bytes} bytes) does not match the manifest's {} ({} bytes)",
                    f.sha256, f.bytes
                ),
            ));
        }
    }
    Ok(m)
}

/// Restores the backup in `src` into `data_dir`. Refuses a data dir holding anything but
/// its lock file unless `force` (which replaces its ledger and xDR tree; spool and rejects
/// stay). Fails while another process (`serve`) holds the data dir.
pub fn restore(src: &Path, data_dir: &Path, force: bool) -> Result<RestoreSummary, BackupError> {
    let manifest = verify(src)?;
    let _lock = DataDirLock::acquire(data_dir).map_err(|e| match e {
        LedgerError::Locked { pid, .. } => invalid(
            data_dir,
            format!("in use by a running ratel{pid}: stop `serve` before restoring"),
        ),
        e => e.into(),
    })?;
    let mut entries = Vec::new();
    for e in std::fs::read_dir(data_dir).map_err(io(data_dir))? {
        let name = e.map_err(io(data_dir))?.file_name();
        if name != "LOCK" {
            entries.push(name);
        }
    }
    if !entries.is_empty() {
        if !force {
            return Err(invalid(
                data_dir,
                "the data dir is not empty; restore refuses to overwrite it without --force",
            ));
        }
        // The WAL first: a `-wal` left without its database (a crash in between) would
        // be replayed into the next ledger created there.
        for name in ["ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite"] {
            let p = data_dir.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        let x = data_dir.join(XDR_DIR);
        if x.exists() {
            std::fs::remove_dir_all(&x).map_err(io(&x))?;
        }
    }
    // The xDR tree first, the ledger last: an interrupted restore leaves no ledger behind.
    let mut dirs = vec![data_dir.to_path_buf(), data_dir.join(XDR_DIR)];
    create_private_dir(&data_dir.join(XDR_DIR), true).map_err(io(data_dir))?;
    let mut bytes = 0u64;
    let copy_checked = |f: &ManifestFile, to: &Path| -> Result<u64, BackupError> {
        let from = src.join(safe_rel(src, &f.path)?);
        let (n, sha256) = copy_hashed(&from, to)?;
        if sha256 != f.sha256 {
            return Err(invalid(&from, "changed while it was being restored"));
        }
        Ok(n)
    };
    for f in manifest.files.iter().filter(|f| f.path != LEDGER_FILE) {
        let to = data_dir.join(safe_rel(src, &f.path)?);
        let parent = to.parent().expect("a file path has a parent");
        if !dirs.iter().any(|d| d == parent) {
            create_private_dir(parent, true).map_err(io(parent))?;
            dirs.push(parent.to_path_buf());
        }
        bytes += copy_checked(f, &to)?;
    }
    let ledger_file = manifest
        .files
        .iter()
        .find(|f| f.path == LEDGER_FILE)
        .expect("verify checked it is listed");
    let tmp = data_dir.join(format!(".{LEDGER_FILE}.restore.tmp"));
    let _ = std::fs::remove_file(&tmp);
    bytes += copy_checked(ledger_file, &tmp)?;
    let ledger_path = data_dir.join(LEDGER_FILE);
    std::fs::rename(&tmp, &ledger_path).map_err(io(&ledger_path))?;
    sync_dirs(dirs)?;
    let ledger = Ledger::open(data_dir)?;
    let users = ledger.load_users()?.len();
    Ok(RestoreSummary {
        files: manifest.files.len(),
        bytes,
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_backup() {
        let root = Path::new("/b");
        for bad in ["", "../x", "/etc/passwd", "xdr/../../x", "./x"] {
            assert!(safe_rel(root, bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            safe_rel(root, "xdr/date=2026-11-02/a.parquet").unwrap(),
            Path::new("xdr/date=2026-11-02/a.parquet")
        );
    }

    /// A data dir whose ledger records `names` as xDR files of 2026-11-02.
    fn data_dir_recording(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        drop(Ledger::open(d.path()).unwrap());
        let db = Connection::open(d.path().join(LEDGER_FILE)).unwrap();
        for n in names {
            db.execute(
                "INSERT INTO xdr_files(path, batch_id, rows, min_login, max_logout) VALUES (?1, 1, 1, 0, 0)",
                [format!("date=2026-11-02/{n}")],
            )
            .unwrap();
        }
        std::fs::create_dir_all(d.path().join("xdr/date=2026-11-02")).unwrap();
        d
    }

    #[test]
    fn a_file_committed_but_not_yet_renamed_is_copied_from_its_temp_name() {
        let d = data_dir_recording(&["a.parquet", "b.parquet"]);
        let part = d.path().join("xdr/date=2026-11-02");
        std::fs::write(part.join("a.parquet"), b"final").unwrap();
        std::fs::write(xdr::temp_path(&part.join("b.parquet")), b"temp").unwrap();
        // Neither recorded nor final: not part of the backup.
        std::fs::write(part.join("c.parquet"), b"stray").unwrap();
        let dest = d.path().join("b1");
        let m = backup(d.path(), &dest, "2026-11-02T00:00:00Z").unwrap();
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ledger.sqlite",
                "xdr/date=2026-11-02/a.parquet",
                "xdr/date=2026-11-02/b.parquet"
            ]
        );
        let b = std::fs::read(dest.join("xdr/date=2026-11-02/b.parquet")).unwrap();
        assert_eq!(b, b"temp");
        assert_eq!(verify(&dest).unwrap(), m);
    }

    /// A compaction that swaps a day after the ledger was copied moves the files the copy
    /// names to the trash: they are copied from there.
    #[test]
    fn a_file_replaced_by_a_compaction_since_the_copy_is_copied_from_the_trash() {
        let d = data_dir_recording(&["a.parquet"]);
        let trash = d.path().join("xdr-trash/date=2026-11-02");
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::write(trash.join("a.parquet"), b"replaced").unwrap();
        let dest = d.path().join("b1");
        let m = backup(d.path(), &dest, "2026-11-02T00:00:00Z").unwrap();
        assert_eq!(m.files.len(), 2);
        let b = std::fs::read(dest.join("xdr/date=2026-11-02/a.parquet")).unwrap();
        assert_eq!(b, b"replaced");
    }

    #[test]
    fn a_recorded_file_that_is_missing_fails_the_backup_naming_it() {
        let d = data_dir_recording(&["gone.parquet"]);
        let e = backup(d.path(), &d.path().join("b1"), "t").unwrap_err();
        assert!(
            e.to_string().contains("date=2026-11-02/gone.parquet"),
            "{e}"
        );
    }

    #[test]
    fn sha256_of_known_input() {
        // FIPS 180-2 test vector "abc".
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9c b410ff61f20015ad"
                    .replace(' ', "")
            )
        );
    }
}
