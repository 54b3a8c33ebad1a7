//! Compaction of a closed day's xDR files (issue 17, "Reports"): RADIUS outbox flushes and
//! CDR blocks leave many small files per UTC day; a report for one subscriber opens every
//! file of the days it spans. Once a day is closed, its files are merged into one file in
//! (username, xdr_id) order — the order every file already has, so the username page index
//! and bloom filter find one subscriber's rows in one place.
//!
//! The exactly-once handshake is the one new xDR files go through: the merged file is
//! written under its temp name and fsynced ([`merge`], off the core thread), then one
//! ledger transaction replaces the old files' rows by the new one and puts the old paths in
//! `xdr_trash` ([`crate::ledger::Ledger::commit_compaction`]), then the temp file is renamed.
//! A crash before the commit leaves a temp file the next open deletes; after it, one the
//! next open renames. The old files are deleted [`GRACE_SECS`] later, so a report or a
//! download that listed them just before the swap still reads them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::{
    new_null_array, Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::ledger::PendingFile;
use crate::xdr;

/// A closed day with at least this many files is compacted. Two: a month report for one
/// subscriber opens a compressor and a decompressor per column for every file it reads, so a
/// closed day is worth one file even when it was two (a late file for a compacted day
/// makes it two again: the day is rewritten, at most [`MAX_ROWS`] rows, off the core). A
/// day of one file is compacted too when that file has a CDR block's wide pages
/// ([`xdr::has_wide_pages`]: written while its day was open).
pub const MIN_FILES: usize = 2;
/// A day is compacted once it ended this long ago (late Stops land in their logout's day).
pub const CLOSED_AFTER_SECS: i64 = 3600;

/// Whether the UTC day `day` (days since 1970-01-01) is closed at `now` (unix seconds): it
/// ended [`CLOSED_AFTER_SECS`] ago or more.
pub fn is_closed(day: i64, now: i64) -> bool {
    day.saturating_add(1)
        .saturating_mul(86_400)
        .saturating_add(CLOSED_AFTER_SECS)
        <= now
}

/// Most rows one compaction merges (all held in memory when a file is out of order).
pub const MAX_ROWS: u64 = 2_000_000;
/// Most files one compaction merges. The streaming merge keeps every file open at once,
/// and an open Parquet reader holds a decompressor and page buffers per column (~1.5 MB
/// a file, measured): 4,096 small files took a merge to 6.3 GB. A day of more files is
/// compacted in parts, and the parts again.
pub const MAX_FILES: usize = 64;
/// Replaced files are deleted this long after the swap.
pub const GRACE_SECS: i64 = 600;
/// Rows per batch of the merged file.
const OUT_BATCH_ROWS: usize = 65_536;

/// One file of a day, as the ledger lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayFile {
    /// Relative to the xDR root.
    pub path: String,
    pub rows: u64,
    pub min_login: i64,
    pub max_logout: i64,
}

/// A day to compact: its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `date=YYYY-MM-DD`.
    pub partition: String,
    pub files: Vec<DayFile>,
}

/// Why a compaction failed (nothing changed; it is tried again later).
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{0}")]
    Write(#[from] xdr::SinkError),
    /// The server is stopping: the merge stopped before writing (nothing left behind).
    #[error("stopped: the server is shutting down")]
    Cancelled,
}

/// The day to compact among the ledger's files, if any: closed at `now`, with
/// [`MIN_FILES`] files or more that together hold [`MAX_ROWS`] rows at most, or one file
/// with a CDR block's wide pages ([`xdr::has_wide_pages`]) (the day with the most such
/// files). A day with more rows is compacted in parts: its smallest files
/// first, as many as fit (at most [`MAX_FILES`]); the parts are merged again while they fit
/// together, so even the busiest days (a RADIUS outbox flush a second) end up a few files.
pub fn choose(files: Vec<DayFile>, now: i64) -> Option<Plan> {
    choose_except(files, now, &[])
}

/// [`choose`], passing over a day whose files are exactly those of a plan in `failed` (its
/// merge failed: tried again once the day's files change, or after a restart, not every
/// [`CHECK_EVERY`] while other days wait).
pub fn choose_except(files: Vec<DayFile>, now: i64, failed: &[Plan]) -> Option<Plan> {
    let mut days: std::collections::BTreeMap<String, Vec<DayFile>> = Default::default();
    for f in files {
        let Some((part, _)) = f.path.split_once('/') else {
            continue;
        };
        days.entry(part.to_string()).or_default().push(f);
    }
    days.into_iter()
        .filter(|(part, _)| {
            part.strip_prefix("date=")
                .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .is_some_and(|start| is_closed(xdr::day_of(start.and_utc().timestamp()), now))
        })
        .filter_map(|(partition, mut files)| {
            files.sort_by(|a, b| (a.rows, &a.path).cmp(&(b.rows, &b.path)));
            let mut rows = 0u64;
            let fit = files
                .iter()
                .take_while(|f| {
                    rows = rows.saturating_add(f.rows);
                    rows <= MAX_ROWS
                })
                .count()
                .min(MAX_FILES);
            files.truncate(fit);
            files.sort_by(|a, b| a.path.cmp(&b.path));
            // One file is rewritten too when it has a CDR block's wide pages: the merge
            // gives it the small pages one-user reads want.
            let rewrite =
                files.len() >= MIN_FILES || files.iter().any(|f| xdr::has_wide_pages(&f.path));
            rewrite.then_some(Plan { partition, files })
        })
        .filter(|plan| !failed.contains(plan))
        .max_by_key(|plan| plan.files.len())
}

/// A batch of an older file in today's schema: columns by name, a column the file lacks
/// (added since) null, or 0 for the non-null counters.
fn conform(b: &RecordBatch, schema: &arrow_schema::SchemaRef) -> Result<RecordBatch, String> {
    let n = b.num_rows();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match b.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Err(format!(
                "column {} is {} where xDRs have {}",
                f.name(),
                c.data_type(),
                f.data_type()
            )),
            None if f.is_nullable() => Ok(new_null_array(f.data_type(), n)),
            None => Ok(Arc::new(Int64Array::from(vec![0i64; n])) as ArrayRef),
        })
        .collect::<Result<_, String>>()?;
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}

/// Reads the plan's files, merges their rows in (username, xdr_id) order and writes them
/// to the merged file under its temp name (fsynced). Returns the file to commit.
pub fn merge(xdr_root: &Path, plan: &Plan) -> Result<PendingFile, CompactError> {
    merge_unless(xdr_root, plan, &AtomicBool::new(false))
}

/// [`merge`], giving up with [`CompactError::Cancelled`] once `stop` is set — checked
/// every output batch, so a stopping server waits at most for one batch, and no temp file
/// is left in the tree.
///
/// The files are streamed through a k-way merge (each is in (username, xdr_id) order
/// already): what is held is a batch per file and one output batch, not the day. A file
/// found out of that order (written by an older version) sends the day through
/// [`merge_in_memory`] instead.
pub fn merge_unless(
    xdr_root: &Path,
    plan: &Plan,
    stop: &AtomicBool,
) -> Result<PendingFile, CompactError> {
    let sizes = (input_batch_rows(plan.files.len()), OUT_BATCH_ROWS);
    match merge_streaming(xdr_root, plan, stop, sizes) {
        Err(Streaming::NotSorted(path)) => {
            tracing::info!(day = %plan.partition, file = %path, "an xDR file not in (username, xdr_id) order: this day is merged in memory");
            merge_in_memory(xdr_root, plan, stop)
        }
        Err(Streaming::Failed(e)) => Err(e),
        Ok(merged) => Ok(merged),
    }
}

/// Why a streaming merge stopped.
enum Streaming {
    /// A file's rows are not in (username, xdr_id) order (nothing was left behind).
    NotSorted(String),
    Failed(CompactError),
}

impl From<CompactError> for Streaming {
    fn from(e: CompactError) -> Self {
        Streaming::Failed(e)
    }
}

/// Rows a streaming merge reads ahead over all its files (a batch per file).
const HELD_ROWS: usize = 512 * 1024;
/// Fewest rows read per batch of a file: [`MAX_FILES`] files of them are [`HELD_ROWS`].
const MIN_BATCH_ROWS: usize = HELD_ROWS / MAX_FILES;

/// Rows read per batch of each of `files` files: [`HELD_ROWS`] over the files, between
/// [`MIN_BATCH_ROWS`] (at [`MAX_FILES`] files) and 65,536 — so the batches a merge holds
/// stay within [`HELD_ROWS`] rows however many files it reads.
fn input_batch_rows(files: usize) -> usize {
    (HELD_ROWS / files.max(1)).clamp(MIN_BATCH_ROWS, OUT_BATCH_ROWS)
}

/// One input of the streaming merge: a file read batch by batch.
struct Run {
    path: String,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    /// Its current batch's place in the merge's batch list.
    slot: usize,
    users: StringArray,
    ids: UInt64Array,
    row: usize,
}

impl Run {
    fn key(&self) -> (&str, u64) {
        (self.users.value(self.row), self.ids.value(self.row))
    }

    /// The next non-empty batch of the file (conformed), with its key columns; `None` at
    /// the end.
    fn next_batch(
        &mut self,
        schema: &arrow_schema::SchemaRef,
    ) -> Result<Option<(RecordBatch, StringArray, UInt64Array)>, CompactError> {
        let read_err = |message: String| CompactError::Read {
            path: self.path.clone(),
            message,
        };
        for b in self.reader.by_ref() {
            let b = conform(&b.map_err(|e| read_err(e.to_string()))?, schema).map_err(read_err)?;
            if b.num_rows() == 0 {
                continue;
            }
            let (u, id) = key_columns(&b);
            return Ok(Some((b, u, id)));
        }
        Ok(None)
    }
}

/// A file of a plan, opened to be read `batch_rows` rows at a time; its path for errors.
fn open_input(
    xdr_root: &Path,
    f: &DayFile,
    batch_rows: usize,
) -> Result<
    (
        String,
        parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    ),
    CompactError,
> {
    let path = xdr_root.join(&f.path);
    let read_err = |message: String| CompactError::Read {
        path: path.display().to_string(),
        message,
    };
    // Under its temp name still if the rename after its commit failed.
    let file = xdr::open_listed(&path).map_err(|e| read_err(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(batch_rows).build())
        .map_err(|e| read_err(e.to_string()))?;
    Ok((path.display().to_string(), reader))
}

/// The (username, xdr_id) columns of a conformed batch.
fn key_columns(b: &RecordBatch) -> (StringArray, UInt64Array) {
    let u = b
        .column_by_name("username")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .cloned()
        .expect("conformed to the schema");
    let id = b
        .column_by_name("xdr_id")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .cloned()
        .expect("conformed to the schema");
    (u, id)
}

/// The streaming merge alone with small batches — `batch_rows` read per file, `out_rows`
/// per output batch — so a test with a few thousand rows crosses the batch boundaries a
/// day of millions does. `Ok(None)`: a file was out of order (nothing left behind).
#[doc(hidden)]
pub fn merge_streaming_in(
    xdr_root: &Path,
    plan: &Plan,
    batch_rows: usize,
    out_rows: usize,
) -> Result<Option<PendingFile>, CompactError> {
    let sizes = (batch_rows.max(1), out_rows.max(1));
    match merge_streaming(xdr_root, plan, &AtomicBool::new(false), sizes) {
        Ok(m) => Ok(Some(m)),
        Err(Streaming::NotSorted(_)) => Ok(None),
        Err(Streaming::Failed(e)) => Err(e),
    }
}

fn merge_streaming(
    xdr_root: &Path,
    plan: &Plan,
    stop: &AtomicBool,
    (batch_rows, out_rows): (usize, usize),
) -> Result<PendingFile, Streaming> {
    let schema = xdr::schema();
    let mut slots: Vec<RecordBatch> = Vec::new();
    let mut runs: Vec<Run> = Vec::with_capacity(plan.files.len());
    for f in &plan.files {
        let (path, reader) = open_input(xdr_root, f, batch_rows)?;
        let mut run = Run {
            path,
            reader,
            slot: 0,
            users: StringArray::from(Vec::<&str>::new()),
            ids: UInt64Array::from(Vec::<u64>::new()),
            row: 0,
        };
        if let Some((b, u, id)) = run.next_batch(&schema)? {
            run.slot = slots.len();
            slots.push(b);
            (run.users, run.ids) = (u, id);
            runs.push(run);
        }
    }
    // A min-heap of runs by their current key (ties by run: deterministic).
    let less = |runs: &[Run], a: usize, b: usize| (runs[a].key(), a) < (runs[b].key(), b);
    let sift_down = |runs: &[Run], heap: &mut [usize], mut i: usize| loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < heap.len() && less(runs, heap[l], heap[m]) {
            m = l;
        }
        if r < heap.len() && less(runs, heap[r], heap[m]) {
            m = r;
        }
        if m == i {
            break;
        }
        heap.swap(i, m);
        i = m;
    };
    let mut heap: Vec<usize> = (0..runs.len()).collect();
    for i in (0..heap.len() / 2).rev() {
        sift_down(&runs, &mut heap, i);
    }
    let expected: u64 = plan.files.iter().map(|f| f.rows).sum();
    let dir = xdr_root.join(&plan.partition);
    let merging = dir.join("compact-merging.parquet");
    let mut out =
        xdr::TempWriter::create(&merging, schema.clone(), expected as usize, xdr::PAGE_ROWS)
            .map_err(CompactError::from)?;
    let mut pending: Vec<(usize, usize)> = Vec::with_capacity(out_rows);
    let (mut rows, mut lo, mut hi) = (0u64, u64::MAX, 0u64);
    let result = (|| -> Result<(), Streaming> {
        while let Some(&top) = heap.first() {
            let run = &mut runs[top];
            let id = run.ids.value(run.row);
            (lo, hi) = (lo.min(id), hi.max(id));
            pending.push((run.slot, run.row));
            rows += 1;
            if run.row + 1 < run.users.len() {
                run.row += 1;
                let prev = (run.users.value(run.row - 1), run.ids.value(run.row - 1));
                if prev >= run.key() {
                    return Err(Streaming::NotSorted(run.path.clone()));
                }
            } else {
                match run.next_batch(&schema)? {
                    Some((b, u, id)) => {
                        let last = (run.users.value(run.row), run.ids.value(run.row));
                        if last >= (u.value(0), id.value(0)) {
                            return Err(Streaming::NotSorted(run.path.clone()));
                        }
                        run.slot = slots.len();
                        slots.push(b);
                        (run.users, run.ids, run.row) = (u, id, 0);
                    }
                    None => {
                        let last = heap.pop().expect("not empty");
                        if !heap.is_empty() {
                            heap[0] = last;
                        }
                    }
                }
            }
            sift_down(&runs, &mut heap, 0);
            if pending.len() == out_rows || heap.is_empty() {
                if stop.load(Ordering::Relaxed) {
                    return Err(CompactError::Cancelled.into());
                }
                let refs: Vec<&RecordBatch> = slots.iter().collect();
                let b = arrow_select::interleave::interleave_record_batch(&refs, &pending)
                    .map_err(|e| CompactError::Read {
                        path: plan.partition.clone(),
                        message: e.to_string(),
                    })?;
                out.write(&b).map_err(CompactError::from)?;
                pending.clear();
                // Keep only the batches the runs are still reading.
                let live: Vec<RecordBatch> = runs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, r)| {
                        let b = slots[r.slot].clone();
                        r.slot = i;
                        b
                    })
                    .collect();
                slots = live;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        out.abandon();
        return Err(e);
    }
    // Every row the ledger recorded, no more, no less: a file that reads short (or long)
    // is not merged (its rows would be lost, or counted twice, with the swap).
    if rows != expected {
        out.abandon();
        return Err(CompactError::Read {
            path: plan.partition.clone(),
            message: format!("the files hold {rows} rows where the ledger recorded {expected}"),
        }
        .into());
    }
    let tmp = out.finish().map_err(CompactError::from)?;
    let final_path = dir.join(format!("compact-{lo:020}-{hi:020}-{rows}.parquet"));
    let io = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        CompactError::Write(xdr::SinkError::Io {
            path: tmp.display().to_string(),
            source: e,
        })
    };
    std::fs::rename(&tmp, xdr::temp_path(&final_path)).map_err(io)?;
    xdr::sync_dir(&dir).map_err(|e| {
        let _ = std::fs::remove_file(xdr::temp_path(&final_path));
        CompactError::Write(xdr::SinkError::Io {
            path: dir.display().to_string(),
            source: e,
        })
    })?;
    Ok(PendingFile {
        final_path,
        rows,
        min_login: plan.files.iter().map(|f| f.min_login).min().unwrap_or(0),
        max_logout: plan.files.iter().map(|f| f.max_logout).max().unwrap_or(0),
    })
}

/// The merge with every row in memory, sorted at once: for a day with a file out of
/// (username, xdr_id) order. Gives up like [`merge_unless`].
fn merge_in_memory(
    xdr_root: &Path,
    plan: &Plan,
    stop: &AtomicBool,
) -> Result<PendingFile, CompactError> {
    let schema = xdr::schema();
    let mut batches: Vec<RecordBatch> = Vec::new();
    for f in &plan.files {
        if stop.load(Ordering::Relaxed) {
            return Err(CompactError::Cancelled);
        }
        let (path, reader) = open_input(xdr_root, f, OUT_BATCH_ROWS)?;
        let read_err = |message: String| CompactError::Read {
            path: path.clone(),
            message,
        };
        for b in reader {
            let b = b.map_err(|e| read_err(e.to_string()))?;
            batches.push(conform(&b, &schema).map_err(read_err)?);
        }
    }
    // The merge order: (username, xdr_id) across every batch.
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut keys: Vec<(&str, u64)> = Vec::new();
    let cols: Vec<(StringArray, UInt64Array)> = batches.iter().map(key_columns).collect();
    for (bi, (u, id)) in cols.iter().enumerate() {
        for r in 0..u.len() {
            order.push((bi, r));
            keys.push((u.value(r), id.value(r)));
        }
    }
    // Every row the ledger recorded, no more, no less: a file that reads short (or long)
    // is not merged (its rows would be lost, or counted twice, with the swap).
    let recorded: u64 = plan.files.iter().map(|f| f.rows).sum();
    if order.len() as u64 != recorded {
        return Err(CompactError::Read {
            path: plan.partition.clone(),
            message: format!(
                "the files hold {} rows where the ledger recorded {recorded}",
                order.len()
            ),
        });
    }
    let mut perm: Vec<usize> = (0..order.len()).collect();
    perm.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut out = Vec::with_capacity(perm.len().div_ceil(OUT_BATCH_ROWS));
    for chunk in perm.chunks(OUT_BATCH_ROWS) {
        let idx: Vec<(usize, usize)> = chunk.iter().map(|&i| order[i]).collect();
        let b = arrow_select::interleave::interleave_record_batch(&refs, &idx).map_err(|e| {
            CompactError::Read {
                path: plan.partition.clone(),
                message: e.to_string(),
            }
        })?;
        out.push(b);
    }
    let (lo, hi) = (
        keys.iter().map(|k| k.1).min().unwrap_or(0),
        keys.iter().map(|k| k.1).max().unwrap_or(0),
    );
    let final_path: PathBuf = xdr_root
        .join(&plan.partition)
        .join(format!("compact-{lo:020}-{hi:020}-{}.parquet", order.len()));
    if stop.load(Ordering::Relaxed) {
        return Err(CompactError::Cancelled);
    }
    if let Err(e) = xdr::write_temp_batches(&final_path, &out, xdr::PAGE_ROWS) {
        let _ = std::fs::remove_file(xdr::temp_path(&final_path));
        return Err(e.into());
    }
    Ok(PendingFile {
        final_path,
        rows: order.len() as u64,
        min_login: plan.files.iter().map(|f| f.min_login).min().unwrap_or(0),
        max_logout: plan.files.iter().map(|f| f.max_logout).max().unwrap_or(0),
    })
}

/// Compacts every closed day now, one after the other, on the calling thread (a data dir
/// nobody serves: `ratel bench api` builds a month of history this way, the state `serve`
/// reaches on its own a minute per day later). Returns the days compacted.
pub fn compact_closed_days(
    ledger: &mut crate::ledger::Ledger,
    now: i64,
) -> Result<usize, CompactError> {
    let mut done = 0;
    let mut failed: Vec<Plan> = Vec::new();
    loop {
        let files = ledger.xdr_day_files().map_err(|e| CompactError::Read {
            path: ledger.xdr_root().display().to_string(),
            message: e.to_string(),
        })?;
        let Some(plan) = choose_except(files, now, &failed) else {
            return Ok(done);
        };
        let merged = merge(ledger.xdr_root(), &plan)?;
        if let Err(e) = swap_in(ledger, &plan, &merged, now) {
            tracing::warn!(day = %plan.partition, error = %e, "compaction failed");
            failed.push(plan);
            continue;
        }
        done += 1;
    }
}

/// Commits a merged file in place of the plan's files (their deletion due after
/// [`GRACE_SECS`]) and says so in the log.
fn swap_in(
    ledger: &mut crate::ledger::Ledger,
    plan: &Plan,
    merged: &PendingFile,
    now: i64,
) -> Result<(), crate::ledger::LedgerError> {
    ledger.commit_compaction(&plan.files, merged, now + GRACE_SECS)?;
    tracing::info!(day = %plan.partition, files = plan.files.len(), rows = merged.rows, file = %merged.final_path.display(), "xDR files of a closed day compacted into one");
    Ok(())
}

/// Drives compaction from the serve core's housekeeping: looks for a day to compact every
/// [`CHECK_EVERY`], merges it on a thread of its own (the core goes on), commits the swap
/// on the core when the merge is done, and deletes replaced files after their grace.
#[derive(Default)]
pub struct Compactor {
    job: Option<Job>,
    last_check: Option<std::time::Instant>,
    /// Plans whose merge failed (a damaged or unreadable file): not tried again as they are.
    failed: Vec<Plan>,
}

/// A merge running on its thread.
struct Job {
    plan: Plan,
    handle: std::thread::JoinHandle<Result<PendingFile, CompactError>>,
    /// Set at a graceful stop: the merge gives up before its write.
    stop: Arc<AtomicBool>,
}

/// How often the core looks for a day to compact.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Compactor {
    /// One step; never blocks on a merge.
    pub fn tick(&mut self, ledger: &mut crate::ledger::Ledger, now: i64) {
        if let Err(e) = ledger.empty_xdr_trash(now) {
            tracing::warn!(error = %e, "deleting replaced xDR files failed; will retry");
        }
        if let Some(job) = &self.job {
            if !job.handle.is_finished() {
                return;
            }
            let job = self.job.take().expect("checked above");
            self.settle(ledger, job, now);
        }
        if self.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return;
        }
        self.last_check = Some(std::time::Instant::now());
        let files = match ledger.xdr_day_files() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "listing xDR files for compaction failed");
                return;
            }
        };
        let Some(plan) = choose_except(files, now, &self.failed) else {
            return;
        };
        let (root, p) = (ledger.xdr_root().to_path_buf(), plan.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        match std::thread::Builder::new()
            .name("xdr-compact".into())
            .spawn(move || merge_unless(&root, &p, &flag))
        {
            Ok(handle) => self.job = Some(Job { plan, handle, stop }),
            Err(e) => tracing::warn!(error = %e, "cannot start the compaction thread"),
        }
    }

    /// Commits a finished merge, or records why it failed.
    fn settle(&mut self, ledger: &mut crate::ledger::Ledger, job: Job, now: i64) {
        let Job { plan, handle, .. } = job;
        match handle.join() {
            Ok(Ok(merged)) => {
                match swap_in(ledger, &plan, &merged, now) {
                    Ok(()) => {
                        // More days may wait: look again at once.
                        self.last_check = None;
                    }
                    Err(e) => {
                        // Not the place to remove the merged file: the error may have
                        // come after the commit (commit_compaction removes it when
                        // nothing was committed).
                        tracing::warn!(day = %plan.partition, error = %e, "compaction failed; will retry");
                    }
                }
            }
            Ok(Err(CompactError::Cancelled)) => {
                tracing::info!(day = %plan.partition, "compaction stopped with the server; the day is compacted after the next start");
            }
            Ok(Err(e)) => {
                tracing::warn!(day = %plan.partition, error = %e, "compaction failed; the day is tried again once its files change");
                self.remember_failed(plan);
            }
            Err(_) => {
                tracing::error!(day = %plan.partition, "compaction thread panicked");
                self.remember_failed(plan);
            }
        }
    }

    fn remember_failed(&mut self, plan: Plan) {
        // Bounded: a plan per day at most, the oldest forgotten first.
        self.failed.retain(|p| p.partition != plan.partition);
        if self.failed.len() >= 1024 {
            self.failed.remove(0);
        }
        self.failed.push(plan);
    }

    /// At a graceful stop: a merge still running is told to stop and waited for (it gives
    /// up before its write, or finishes the write in progress); a merge that finished is
    /// committed. Nothing is left in the tree: a temp file there means a crash, which the
    /// next open repairs.
    pub fn finish(&mut self, ledger: &mut crate::ledger::Ledger, now: i64) {
        if let Some(job) = self.job.take() {
            job.stop.store(true, Ordering::Relaxed);
            self.settle(ledger, job, now);
        }
    }
}
