//! Connection reports (the service layer's `connections`, IBSng `report.getConnections`,
//! and the refund search): xDRs from the Parquet tree plus those still in the ledger's
//! outbox, filtered, sorted and paginated. Dialects translate their parameters into a
//! [`Query`] and shape the rows themselves.
//!
//! Files are pruned by the time range the ledger recorded for each (`xdr_files`), row groups
//! by their `login_time`/`logout_time`/`username` statistics, and pages by the `username`
//! page index (files are written in username order, so one subscriber is a page or two per
//! row group); footers are cached. Rows stream through a [`Page`]: running totals and a
//! bounded top-k heap of the `to` first rows in the requested order, so memory does not
//! grow with the number of matches.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

use arrow_array::BooleanArray;
use arrow_array::{
    Array, Decimal128Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, UInt64Array,
};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter, RowSelection,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use parquet::schema::types::SchemaDescriptor;
use ratel_engine::xdr::{money_from_i128, OwnedDetail, OwnedXdr};
use rust_decimal::Decimal;

use crate::service::{Caller, Service, ServiceError, ServiceResult};

/// Most rows one page may return.
pub const MAX_PAGE: usize = 10_000;

/// The filter of one report.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub username: Option<String>,
    pub user_ids: Option<Vec<i64>>,
    /// Inclusive bounds, in seconds.
    pub login_from: Option<i64>,
    pub login_to: Option<i64>,
    pub logout_from: Option<i64>,
    pub logout_to: Option<i64>,
    pub service: Option<String>,
    pub successful: Option<bool>,
    pub ras_ip: Option<String>,
    pub remote_ip: Option<String>,
    pub caller_id: Option<String>,
}

/// One report request: which rows, in which order, which page `[from, to)`.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Filter,
    pub order: Order,
    pub from: usize,
    pub to: usize,
}

impl Service {
    /// A report page: totals over every matching row, and rows `from..to` in order. A
    /// client sees only its own rows (by user id, whatever name they were made under).
    pub fn connections(
        &self,
        caller: &Caller,
        q: &Query,
    ) -> ServiceResult<(Totals, Vec<OwnedXdr>)> {
        if q.to < q.from || q.to - q.from > MAX_PAGE {
            return Err(ServiceError::invalid(format!(
                "from/to: a page of at most {MAX_PAGE} rows"
            )));
        }
        let mut filter = q.filter.clone();
        if let Caller::User { user_id, .. } = caller {
            if filter
                .user_ids
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|i| i != user_id))
            {
                return Err(ServiceError::denied(
                    "a user may only read its own connections",
                ));
            }
            filter.user_ids = Some(vec![*user_id]);
        }
        let page = self.collect(&filter, q.order, q.to)?;
        Ok(page.finish(q.from))
    }

    /// Every matching row (up to `limit`; the caller checks whether there were more by
    /// asking one more than it accepts), in xDR id order.
    pub(crate) fn xdrs_matching(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> ServiceResult<Vec<OwnedXdr>> {
        let order = Order {
            sort_by: SortBy::ConnectionLogId,
            desc: false,
        };
        let page = self.collect(filter, order, limit)?;
        Ok(page.finish(0).1)
    }

    /// Files whose time range can hold a match, then the outbox, into one page.
    fn collect(&self, filter: &Filter, order: Order, keep: usize) -> ServiceResult<Page> {
        let lo = filter
            .login_from
            .max(filter.logout_from)
            .unwrap_or(i64::MIN);
        let hi = filter
            .login_to
            .min(filter.logout_to)
            .or(filter.login_to)
            .or(filter.logout_to)
            .unwrap_or(i64::MAX);
        let (files, outbox) = self.read(|l| l.xdr_sources(lo, hi))?;
        let overflow = |e: String| {
            tracing::error!(error = %e, "report totals");
            ServiceError::Internal("report totals out of range".into())
        };
        let mut page = read_files(self, &files, filter, order, keep)?;
        for o in &outbox {
            if let Ok(x) = serde_json::from_str::<OwnedXdr>(o) {
                if filter.matches(&x) {
                    page.push(x).map_err(overflow)?;
                }
            }
        }
        Ok(page)
    }
}

impl Filter {
    pub fn matches(&self, x: &OwnedXdr) -> bool {
        self.username.as_ref().is_none_or(|u| &x.username == u)
            && self
                .user_ids
                .as_ref()
                .is_none_or(|ids| x.user_id.is_some_and(|id| ids.contains(&id)))
            && self.login_from.is_none_or(|t| x.login_time >= t)
            && self.login_to.is_none_or(|t| x.login_time <= t)
            && self.logout_from.is_none_or(|t| x.logout_time >= t)
            && self.logout_to.is_none_or(|t| x.logout_time <= t)
            && self
                .service
                .as_ref()
                .is_none_or(|s| x.service_type.eq_ignore_ascii_case(s))
            && self.successful.is_none_or(|ok| (x.status == "OK") == ok)
            && self.ras_ip.as_ref().is_none_or(|ip| &x.nas_ip == ip)
            && self.remote_ip.as_ref().is_none_or(|ip| &x.remote_ip == ip)
            && self.caller_id.as_ref().is_none_or(|c| &x.caller_id == c)
    }
}

/// The column a report is sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    LoginTime,
    LogoutTime,
    CreditUsed,
    DurationSeconds,
    ConnectionLogId,
}

impl SortBy {
    pub fn parse(s: &str) -> Option<SortBy> {
        Some(match s {
            "login_time" => SortBy::LoginTime,
            "logout_time" => SortBy::LogoutTime,
            "credit_used" => SortBy::CreditUsed,
            "duration_seconds" => SortBy::DurationSeconds,
            "connection_log_id" => SortBy::ConnectionLogId,
            _ => return None,
        })
    }

    fn key(self, x: &OwnedXdr) -> Decimal {
        match self {
            SortBy::LoginTime => Decimal::from(x.login_time),
            SortBy::LogoutTime => Decimal::from(x.logout_time),
            SortBy::CreditUsed => x.credit_used,
            SortBy::DurationSeconds => Decimal::from(x.duration_seconds),
            SortBy::ConnectionLogId => Decimal::from(x.xdr_id),
        }
    }
}

/// The order of a report's rows: by (key, xdr_id), ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub sort_by: SortBy,
    pub desc: bool,
}

/// A row with its sort key; `Ord` is the report's order (the first row is the least).
#[derive(Debug)]
struct Ranked {
    key: Decimal,
    desc: bool,
    x: OwnedXdr,
    /// Index of the file the row came from when only its summary columns were read
    /// ([`read_files`] fetches the rest for the kept rows); `None` when the row is whole.
    file: Option<usize>,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        let o = (self.key, self.x.xdr_id).cmp(&(other.key, other.x.xdr_id));
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Totals over every matching row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub rows: u64,
    pub credit: Decimal,
    pub duration: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// One report page being collected: totals of all rows, and the `keep` first rows in the
/// report's order (a max-heap whose top is the worst kept row). Memory is O(keep) however
/// many rows match.
#[derive(Debug)]
struct Page {
    order: Order,
    keep: usize,
    heap: BinaryHeap<Ranked>,
    totals: Totals,
}

impl Page {
    fn new(order: Order, keep: usize) -> Self {
        Page {
            order,
            keep,
            heap: BinaryHeap::with_capacity(keep.min(MAX_PAGE) + 1),
            totals: Totals::default(),
        }
    }

    /// Counts a matching row and keeps it when it is among the `keep` first.
    fn push(&mut self, x: OwnedXdr) -> Result<(), String> {
        self.push_from(x, None)
    }

    /// [`Page::push`] for a row of which only the summary columns were read, from file
    /// `file` (`None`: the row is whole).
    fn push_from(&mut self, x: OwnedXdr, file: Option<usize>) -> Result<(), String> {
        let t = &mut self.totals;
        t.rows += 1;
        t.credit = t
            .credit
            .checked_add(x.credit_used)
            .ok_or("total credit overflows")?;
        t.duration = t.duration.saturating_add(x.duration_seconds);
        t.bytes_in = t.bytes_in.saturating_add(x.bytes_in);
        t.bytes_out = t.bytes_out.saturating_add(x.bytes_out);
        let r = Ranked {
            key: self.order.sort_by.key(&x),
            desc: self.order.desc,
            x,
            file,
        };
        self.keep_ranked(r);
        Ok(())
    }

    fn keep_ranked(&mut self, r: Ranked) {
        if self.keep == 0 {
            return;
        }
        if self.heap.len() >= self.keep {
            match self.heap.peek() {
                Some(worst) if r < *worst => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push(r);
    }

    /// Adds another page's rows and totals (pages of the same order).
    fn merge(&mut self, other: Page) -> Result<(), String> {
        let t = &mut self.totals;
        t.rows += other.totals.rows;
        t.credit = t
            .credit
            .checked_add(other.totals.credit)
            .ok_or("total credit overflows")?;
        t.duration = t.duration.saturating_add(other.totals.duration);
        t.bytes_in = t.bytes_in.saturating_add(other.totals.bytes_in);
        t.bytes_out = t.bytes_out.saturating_add(other.totals.bytes_out);
        for r in other.heap {
            self.keep_ranked(r);
        }
        Ok(())
    }

    /// The totals, and the kept rows in order from position `from`.
    fn finish(self, from: usize) -> (Totals, Vec<OwnedXdr>) {
        let rows = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .skip(from)
            .map(|r| r.x)
            .collect();
        (self.totals, rows)
    }
}

/// Most files whose footers (with page index) stay cached; files never change once visible.
const META_CACHE_FILES: usize = 16_384;

/// Footer and page index of a visible xDR file, cached.
fn file_metadata(
    st: &Service,
    path: &Path,
    file: &std::fs::File,
) -> parquet::errors::Result<ArrowReaderMetadata> {
    if let Some(m) = st
        .meta_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
    {
        return Ok(m.clone());
    }
    let m = ArrowReaderMetadata::load(
        file,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
    )?;
    let mut cache = st.meta_cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= META_CACHE_FILES {
        cache.clear();
    }
    cache.insert(path.to_path_buf(), m.clone());
    Ok(m)
}

/// Index of the leaf column `name` in a file's Parquet schema.
fn leaf(schema: &SchemaDescriptor, name: &str) -> Option<usize> {
    ratel_engine::xdr::leaf_column(schema, name)
}

/// Row groups of a file that may hold matches (login/logout/username statistics).
fn candidate_row_groups(meta: &ParquetMetaData, f: &Filter) -> Vec<usize> {
    let schema = meta.file_metadata().schema_descr();
    let (user_col, login_col, logout_col) = (
        leaf(schema, "username"),
        leaf(schema, "login_time"),
        leaf(schema, "logout_time"),
    );
    let mut out = Vec::new();
    for i in 0..meta.num_row_groups() {
        let rg = meta.row_group(i);
        let int_range = |c: Option<usize>| -> Option<(i64, i64)> {
            match rg.column(c?).statistics()? {
                Statistics::Int64(s) => {
                    Some((*s.min_opt()? / 1_000_000, *s.max_opt()? / 1_000_000))
                }
                _ => None,
            }
        };
        if let Some((lo, hi)) = int_range(login_col) {
            if f.login_from.is_some_and(|t| hi < t) || f.login_to.is_some_and(|t| lo > t) {
                continue;
            }
        }
        if let Some((lo, hi)) = int_range(logout_col) {
            if f.logout_from.is_some_and(|t| hi < t) || f.logout_to.is_some_and(|t| lo > t) {
                continue;
            }
        }
        if let (Some(u), Some(c)) = (&f.username, user_col) {
            if let Some(Statistics::ByteArray(s)) = rg.column(c).statistics() {
                if let (Some(min), Some(max)) = (s.min_opt(), s.max_opt()) {
                    if u.as_bytes() < min.data() || u.as_bytes() > max.data() {
                        continue;
                    }
                }
            }
        }
        out.push(i);
    }
    out
}

/// The rows of `groups` whose `username` pages may hold `user` (rows are written in
/// username order, so this is usually one or two pages per row group). Public for the
/// criterion bench of one-user reads (`benches/hot_paths.rs`).
pub fn username_pages(
    meta: &ParquetMetaData,
    groups: &[usize],
    user: &str,
) -> Option<RowSelection> {
    let col = leaf(meta.file_metadata().schema_descr(), "username")?;
    let pi = meta.page_index()?;
    let mut ranges = Vec::new();
    let mut base = 0usize;
    for &g in groups {
        let rows = meta.row_group(g).num_rows() as usize;
        match (pi.column_index(g, col)?, pi.offset_index(g, col)?) {
            (ColumnIndexMetaData::BYTE_ARRAY(idx), off)
                if idx.num_pages() as usize == off.page_locations().len() =>
            {
                let locs = off.page_locations();
                let mut last_end = 0usize;
                for (i, loc) in locs.iter().enumerate() {
                    if let (Some(min), Some(max)) = (idx.min_value(i), idx.max_value(i)) {
                        if user.as_bytes() < min || user.as_bytes() > max {
                            continue;
                        }
                    }
                    // Clamped and in order, so a damaged offset index cannot select rows
                    // outside the group or out of order.
                    let row = |r: i64| (r.max(0) as usize).min(rows);
                    let start = row(loc.first_row_index).max(last_end);
                    let end = locs.get(i + 1).map_or(rows, |l| row(l.first_row_index));
                    if start < end {
                        ranges.push(base + start..base + end);
                        last_end = end;
                    }
                }
            }
            _ => ranges.push(base..base + rows),
        }
        base += rows;
    }
    Some(RowSelection::from_consecutive_ranges(
        ranges.into_iter(),
        base,
    ))
}

/// Columns a report row needs before it is known to be kept: the filter's, the totals' and
/// the sort key's. The other columns are read only for the kept rows.
fn summary_columns(f: &Filter) -> Vec<&'static str> {
    let mut c = vec![
        "xdr_id",
        "username",
        "login_time",
        "logout_time",
        "duration_seconds",
        "bytes_in",
        "bytes_out",
        "credit_used",
    ];
    let optional = [
        (f.user_ids.is_some(), "user_id"),
        (f.service.is_some(), "service_type"),
        (f.successful.is_some(), "status"),
        (f.ras_ip.is_some(), "nas_ip"),
        (f.remote_ip.is_some(), "remote_ip"),
        (f.caller_id.is_some(), "caller_id"),
    ];
    c.extend(optional.iter().filter(|(on, _)| *on).map(|(_, n)| *n));
    c
}

/// Reads the matching rows of `files` into a page of `order` keeping `keep` rows, a few
/// files at a time in parallel (one reader per core; files are independent and each read
/// is mostly decompression), each reader with its own page, merged at the end.
///
/// A report page is read in two passes: every matching row's summary columns
/// ([`summary_columns`]) for the totals and the order, then the whole of the kept rows,
/// from the few files they are in. A month of one subscriber spans thirty files or more and
/// each column chunk read costs a codec and a page decompressed, so reading a third of the
/// columns of every file and all of them from two or three is the cheaper path.
fn read_files(
    st: &Service,
    files: &[String],
    filter: &Filter,
    order: Order,
    keep: usize,
) -> Result<Page, ServiceError> {
    let fail = |f: &String, e: parquet::errors::ParquetError| {
        tracing::error!(file = %f, error = %e, "report: cannot read xDR file");
        ServiceError::Internal("an xDR file could not be read".into())
    };
    let two_pass = keep <= MAX_PAGE;
    let summary = two_pass.then(|| summary_columns(filter));
    let parts = in_parallel(
        files.len(),
        |out: &mut Page, i| {
            let file = two_pass.then_some(i);
            let columns = summary.as_deref();
            read_matching(
                st,
                &st.xdr_root.join(&files[i]),
                filter,
                columns,
                None,
                &mut |x| out.push_from(x, file),
            )
            .map_err(|e| fail(&files[i], e))
        },
        || Page::new(order, keep),
    )?;
    let mut page = Page::new(order, keep);
    for p in parts {
        page.merge(p).map_err(|e| {
            tracing::error!(error = %e, "report totals");
            ServiceError::Internal("report totals out of range".into())
        })?;
    }
    if !two_pass {
        return Ok(page);
    }
    // The kept rows whole: by file, the ids to fetch.
    let mut wanted: std::collections::BTreeMap<usize, std::collections::HashSet<u64>> =
        Default::default();
    for r in page.heap.iter() {
        if let Some(i) = r.file {
            wanted.entry(i).or_default().insert(r.x.xdr_id);
        }
    }
    let wanted: Vec<(usize, std::collections::HashSet<u64>)> = wanted.into_iter().collect();
    let fetched = in_parallel(
        wanted.len(),
        |out: &mut std::collections::HashMap<u64, OwnedXdr>, k| {
            let (i, ids) = &wanted[k];
            read_matching(
                st,
                &st.xdr_root.join(&files[*i]),
                filter,
                None,
                Some(ids),
                &mut |x| {
                    out.insert(x.xdr_id, x);
                    Ok(())
                },
            )
            .map_err(|e| fail(&files[*i], e))
        },
        Default::default,
    )?;
    let mut whole: std::collections::HashMap<u64, OwnedXdr> = Default::default();
    for part in fetched {
        whole.extend(part);
    }
    let mut rows = std::mem::take(&mut page.heap).into_vec();
    for r in rows.iter_mut().filter(|r| r.file.is_some()) {
        // Files never change once listed (a compaction's replaced files stay readable for
        // its grace period), so the second pass finds every row the first one kept.
        let Some(x) = whole.remove(&r.x.xdr_id) else {
            tracing::error!(
                xdr_id = r.x.xdr_id,
                "report: a kept row was not found again"
            );
            return Err(ServiceError::Internal(
                "an xDR file changed while read".into(),
            ));
        };
        r.x = x;
        r.file = None;
    }
    page.heap = BinaryHeap::from(rows);
    Ok(page)
}

/// Runs `work(acc, i)` for every `i` in `0..n` on one thread per core (at most `n`), each
/// thread with its own accumulator from `init`; the accumulators, or the first error.
fn in_parallel<A: Send>(
    n: usize,
    work: impl Fn(&mut A, usize) -> Result<(), ServiceError> + Sync,
    init: impl Fn() -> A + Sync,
) -> Result<Vec<A>, ServiceError> {
    // Asked once: `available_parallelism` reads the cgroup files (open, read, close) on
    // every call, twice per report otherwise.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let workers =
        (*CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))).min(n);
    if workers <= 1 {
        let mut acc = init();
        for i in 0..n {
            work(&mut acc, i)?;
        }
        return Ok(vec![acc]);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut acc = init();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        work(&mut acc, i)?;
                    }
                    Ok(acc)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ServiceError::Internal("an xDR reader failed".into())))
            })
            .collect()
    })
}

/// The matching rows of one file into `sink`: only `columns` when given (the others stay
/// empty), only the rows whose id is in `ids` when given.
fn read_matching(
    st: &Service,
    path: &Path,
    f: &Filter,
    columns: Option<&[&str]>,
    ids: Option<&std::collections::HashSet<u64>>,
    sink: &mut dyn FnMut(OwnedXdr) -> Result<(), String>,
) -> parquet::errors::Result<()> {
    // A file whose commit the snapshot saw may still be under its temp name (the rename
    // follows the commit); its content is complete either way.
    let file = ratel_engine::xdr::open_listed(path)?;
    let meta = file_metadata(st, path, &file)?;
    let groups = candidate_row_groups(meta.metadata(), f);
    if groups.is_empty() {
        return Ok(());
    }
    let selection = f
        .username
        .as_deref()
        .and_then(|u| username_pages(meta.metadata(), &groups, u));
    if selection.as_ref().is_some_and(|s| !s.selects_any()) {
        return Ok(());
    }
    let mut builder =
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta).with_row_groups(groups);
    if let Some(sel) = selection {
        builder = builder.with_row_selection(sel);
    }
    if let Some(names) = columns {
        let schema = builder.parquet_schema();
        let leaves: Vec<usize> = names.iter().filter_map(|n| leaf(schema, n)).collect();
        let mask = ProjectionMask::leaves(schema, leaves);
        builder = builder.with_projection(mask);
    }
    // Cheap columns first, the others only for rows that pass: the user, then the ids.
    let mut predicates: Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>> = Vec::new();
    if let Some(user) = f.username.clone() {
        let schema = builder.parquet_schema();
        if let Some(col) = leaf(schema, "username") {
            let mask = ProjectionMask::leaves(schema, [col]);
            predicates.push(Box::new(ArrowPredicateFn::new(
                mask,
                move |batch: RecordBatch| {
                    let names = batch.column(0).as_any().downcast_ref::<StringArray>();
                    Ok(BooleanArray::from_iter(
                        (0..batch.num_rows())
                            .map(|i| Some(names.is_some_and(|a| a.value(i) == user))),
                    ))
                },
            )));
        }
    }
    if let Some(ids) = ids {
        let schema = builder.parquet_schema();
        if let Some(col) = leaf(schema, "xdr_id") {
            let mask = ProjectionMask::leaves(schema, [col]);
            let ids = ids.clone();
            predicates.push(Box::new(ArrowPredicateFn::new(
                mask,
                move |batch: RecordBatch| {
                    let a = batch.column(0).as_any().downcast_ref::<UInt64Array>();
                    Ok(BooleanArray::from_iter((0..batch.num_rows()).map(|i| {
                        Some(a.is_some_and(|a| ids.contains(&a.value(i))))
                    })))
                },
            )));
        }
    }
    if !predicates.is_empty() {
        builder = builder.with_row_filter(RowFilter::new(predicates));
    }
    let reader = builder.build()?;
    for batch in reader {
        let b = batch.map_err(|e| parquet::errors::ParquetError::General(e.to_string()))?;
        extract(&b, f, ids, sink).map_err(parquet::errors::ParquetError::General)?;
    }
    Ok(())
}

/// The matching rows of one record batch (only those in `wanted` when given) into `out`; an
/// error for a money value beyond a Decimal (a damaged or foreign file), never a panic.
fn extract(
    b: &RecordBatch,
    f: &Filter,
    wanted: Option<&std::collections::HashSet<u64>>,
    out: &mut dyn FnMut(OwnedXdr) -> Result<(), String>,
) -> Result<(), String> {
    let s = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .cloned()
    };
    let i = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .cloned()
    };
    let t = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .cloned()
    };
    let m = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| c.as_any().downcast_ref::<Decimal128Array>())
            .cloned()
    };
    let (Some(username), Some(login), Some(logout)) =
        (s("username"), t("login_time"), t("logout_time"))
    else {
        return Ok(());
    };
    let ids = b
        .column_by_name("xdr_id")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .cloned();
    // Columns added later (absent in older files: null).
    let account = s("account");
    let refund_of = b
        .column_by_name("refund_of")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .cloned();
    let int = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .cloned()
    };
    let (package_seconds, package_bytes) = (int("package_seconds"), int("package_bytes"));
    let details = b
        .column_by_name("charge_rule_details")
        .and_then(|c| c.as_any().downcast_ref::<ListArray>())
        .cloned();
    let strs: Vec<Option<StringArray>> = [
        "service_type",
        "status",
        "group_name",
        "session_id",
        "ras_description",
        "nas_ip",
        "unique_id_value",
        "remote_ip",
        "caller_id",
        "called_number",
        "terminate_cause",
        "destination",
        "destination_name",
        "source",
    ]
    .iter()
    .map(|n| s(n))
    .collect();
    let ints: Vec<Option<Int64Array>> = [
        "user_id",
        "duration_seconds",
        "billed_seconds",
        "bytes_in",
        "bytes_out",
    ]
    .iter()
    .map(|n| i(n))
    .collect();
    let moneys: Vec<Option<Decimal128Array>> = ["credit_used", "before_credit", "after_credit"]
        .iter()
        .map(|n| m(n))
        .collect();
    let gs = |k: usize, r: usize| {
        strs[k]
            .as_ref()
            .map(|a| a.value(r).to_string())
            .unwrap_or_default()
    };
    let gi = |k: usize, r: usize| ints[k].as_ref().map(|a| a.value(r)).unwrap_or(0);
    let gm = |k: usize, r: usize| -> Result<Decimal, String> {
        moneys[k]
            .as_ref()
            .map(|a| money_from_i128(a.value(r)))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    };
    for r in 0..b.num_rows() {
        // Cheap checks first, on the columns at hand.
        if f.username.as_ref().is_some_and(|u| username.value(r) != u) {
            continue;
        }
        let mut x = OwnedXdr {
            xdr_id: ids.as_ref().map(|a| a.value(r)).unwrap_or(0),
            service_type: gs(0, r),
            status: gs(1, r),
            user_id: ints[0]
                .as_ref()
                .and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
            username: username.value(r).to_string(),
            group_name: gs(2, r),
            login_time: login.value(r) / 1_000_000,
            logout_time: logout.value(r) / 1_000_000,
            duration_seconds: gi(1, r),
            billed_seconds: gi(2, r),
            bytes_in: gi(3, r),
            bytes_out: gi(4, r),
            session_id: gs(3, r),
            ras_description: gs(4, r),
            nas_ip: gs(5, r),
            unique_id_value: gs(6, r),
            remote_ip: gs(7, r),
            caller_id: gs(8, r),
            called_number: gs(9, r),
            terminate_cause: gs(10, r),
            destination: gs(11, r),
            destination_name: gs(12, r),
            credit_used: gm(0, r)?,
            before_credit: gm(1, r)?,
            after_credit: gm(2, r)?,
            details: Vec::new(),
            source: gs(13, r),
            account: account
                .as_ref()
                .and_then(|a| (!a.is_null(r)).then(|| a.value(r).to_string())),
            refund_of: refund_of
                .as_ref()
                .and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
            package_seconds: package_seconds.as_ref().map_or(0, |a| a.value(r)),
            package_bytes: package_bytes.as_ref().map_or(0, |a| a.value(r)),
        };
        if !f.matches(&x) || wanted.is_some_and(|w| !w.contains(&x.xdr_id)) {
            continue;
        }
        if let Some(l) = &details {
            let v = l.value(r);
            if let Some(st) = v.as_any().downcast_ref::<StructArray>() {
                let col_s = st.column(0).as_any().downcast_ref::<StringArray>();
                let col_t = |k: usize| {
                    st.column(k)
                        .as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                };
                let col_i = |k: usize| st.column(k).as_any().downcast_ref::<Int64Array>();
                let col_m = st.column(6).as_any().downcast_ref::<Decimal128Array>();
                if let (
                    Some(rule),
                    Some(start),
                    Some(end),
                    Some(secs),
                    Some(bi),
                    Some(bo),
                    Some(cr),
                ) = (
                    col_s,
                    col_t(1),
                    col_t(2),
                    col_i(3),
                    col_i(4),
                    col_i(5),
                    col_m,
                ) {
                    for k in 0..st.len() {
                        x.details.push(OwnedDetail {
                            rule: rule.value(k).to_string(),
                            start: start.value(k) / 1_000_000,
                            end: end.value(k) / 1_000_000,
                            seconds: secs.value(k),
                            bytes_in: bi.value(k),
                            bytes_out: bo.value(k),
                            credit: money_from_i128(cr.value(k)).map_err(|e| e.to_string())?,
                        });
                    }
                }
            }
        }
        out(x)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic, bounded, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// The reference: every row in memory, sorted by (key, xdr_id), reversed for desc —
    /// what `get_connections` did before it streamed.
    fn naive(rows: &[OwnedXdr], order: Order, from: usize, to: usize) -> (Totals, Vec<u64>) {
        let mut all = rows.to_vec();
        all.sort_by_key(|x| (order.sort_by.key(x), x.xdr_id));
        if order.desc {
            all.reverse();
        }
        let totals = Totals {
            rows: all.len() as u64,
            credit: all.iter().map(|x| x.credit_used).sum(),
            duration: all.iter().map(|x| x.duration_seconds).sum(),
            bytes_in: all.iter().map(|x| x.bytes_in).sum(),
            bytes_out: all.iter().map(|x| x.bytes_out).sum(),
        };
        let ids = all
            .iter()
            .skip(from)
            .take(to - from)
            .map(|x| x.xdr_id)
            .collect();
        (totals, ids)
    }

    #[test]
    fn streamed_page_equals_a_full_sort() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sorts = [
            SortBy::LoginTime,
            SortBy::LogoutTime,
            SortBy::CreditUsed,
            SortBy::DurationSeconds,
            SortBy::ConnectionLogId,
        ];
        for case in 0..400 {
            // Sizes around the page bounds: empty, smaller than the page, far larger.
            let n = match case % 4 {
                0 => rng.below(4),
                1 => rng.below(40),
                _ => rng.below(1500),
            } as usize;
            // Unique ids in random order; few distinct keys, so ties are common.
            let mut ids: Vec<u64> = (1..=n as u64).map(|i| i * 3 + rng.below(3)).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let spread = 1 + rng.below(50) as i64;
            let rows: Vec<OwnedXdr> = ids
                .iter()
                .map(|&xdr_id| OwnedXdr {
                    xdr_id,
                    login_time: 1_700_000_000 + rng.below(spread as u64) as i64,
                    logout_time: 1_700_000_000 + rng.below(spread as u64) as i64,
                    duration_seconds: rng.below(spread as u64) as i64,
                    bytes_in: rng.below(1 << 40) as i64,
                    bytes_out: rng.below(1 << 40) as i64,
                    credit_used: Decimal::new(rng.below(spread as u64 * 7) as i64 - 20, 4),
                    ..OwnedXdr::default()
                })
                .collect();
            let order = Order {
                sort_by: sorts[rng.below(5) as usize],
                desc: rng.below(2) == 1,
            };
            let from = rng.below(n as u64 + 10) as usize;
            let to = from + rng.below(60) as usize;
            // Rows split over 1..4 readers, merged, as `read_files` does.
            let readers = 1 + rng.below(4) as usize;
            let mut parts: Vec<Page> = (0..readers).map(|_| Page::new(order, to)).collect();
            for x in &rows {
                let k = rng.below(readers as u64) as usize;
                parts[k].push(x.clone()).unwrap();
            }
            let mut page = Page::new(order, to);
            for p in parts {
                assert!(p.heap.len() <= to, "a reader kept more than the page");
                page.merge(p).unwrap();
            }
            assert!(page.heap.len() <= to);
            let (totals, got) = page.finish(from);
            let got: Vec<u64> = got.iter().map(|x| x.xdr_id).collect();
            let (want_totals, want) = naive(&rows, order, from, to);
            assert_eq!(totals, want_totals, "case {case}: {order:?} n={n}");
            assert_eq!(
                got, want,
                "case {case}: {order:?} n={n} from={from} to={to}"
            );
        }
    }

    #[test]
    fn totals_overflow_is_an_error() {
        let order = Order {
            sort_by: SortBy::LoginTime,
            desc: false,
        };
        let mut page = Page::new(order, 1);
        let big = OwnedXdr {
            credit_used: Decimal::MAX,
            ..OwnedXdr::default()
        };
        page.push(big.clone()).unwrap();
        assert!(page.push(big).is_err());
    }

    /// The page index written with the xDR writer's settings prunes a one-user read to the
    /// pages that can hold the user (guards the parquet page-index API across upgrades).
    #[test]
    fn username_page_index_prunes() {
        use parquet::arrow::ArrowWriter;
        use ratel_engine::xdr::{writer_properties, PAGE_ROWS};
        let rows = 5 * PAGE_ROWS;
        let names: Vec<String> = (0..rows).map(|i| format!("user{:05}", i / 10)).collect();
        let col: arrow_array::ArrayRef = std::sync::Arc::new(StringArray::from(names));
        let batch = RecordBatch::try_from_iter([("username", col)]).unwrap();
        let path = std::env::temp_dir().join(format!(
            "ratel-page-index-{}-{:?}.parquet",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(
            file,
            batch.schema(),
            Some(writer_properties(rows, PAGE_ROWS)),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let meta = ArrowReaderMetadata::load(
            &std::fs::File::open(&path).unwrap(),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let meta = meta.metadata();
        let groups: Vec<usize> = (0..meta.num_row_groups()).collect();
        // One user's 10 rows: at most the two pages around them, never the whole file.
        let middle = format!("user{:05}", rows / 20);
        let sel = username_pages(meta, &groups, &middle).expect("page index present");
        let selected = sel.row_count();
        assert!(
            (10..=2 * PAGE_ROWS).contains(&selected) && selected < rows,
            "{selected} of {rows}"
        );
        // Beyond every page's max: nothing to read.
        let sel = username_pages(meta, &groups, "zzz").expect("page index present");
        assert!(!sel.selects_any());
    }
}
