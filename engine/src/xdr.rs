//! xDRs: the Arrow schema of DESIGN.md, a columnar builder fed one borrowed row at a time,
//! and our own Parquet file writer that makes a file durable before the ledger may refer to
//! it (write to a hidden temp name, fsync the file, its directory and `xdr/`; the rename to the
//! final name happens after the ledger commit — see [`crate::store`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{
    ArrayRef, Decimal128Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rust_decimal::Decimal;

/// Precision and scale of every money column.
pub const MONEY_PRECISION: u8 = 38;
pub const MONEY_SCALE: i8 = 10;
/// Rows per Parquet row group at most. A file is one block's xDRs of one day (a few hundred
/// thousand rows) or one outbox flush, so this keeps it to one row group: a one-user read
/// then opens one column chunk per column and file, and the page index does the rest.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Errors of the xDR sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("xDR file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("xDR file {path}: parquet: {message}")]
    Parquet { path: String, message: String },
    #[error("xDR batch: {0}")]
    Arrow(String),
}

/// One entry of `charge_rule_details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDetail<'a> {
    pub rule: &'a str,
    pub start_secs: i64,
    pub end_secs: i64,
    pub seconds: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub credit: Decimal,
}

/// One xDR, borrowing its strings.
#[derive(Debug, Clone, Default)]
pub struct XdrRow<'a> {
    pub xdr_id: u64,
    pub service_type: &'a str,
    pub status: &'a str,
    pub user_id: Option<i64>,
    pub username: &'a str,
    pub group_name: &'a str,
    pub login_time_secs: i64,
    pub logout_time_secs: i64,
    pub duration_seconds: i64,
    pub billed_seconds: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub session_id: &'a str,
    pub ras_description: &'a str,
    pub nas_ip: &'a str,
    pub unique_id_value: &'a str,
    pub remote_ip: &'a str,
    pub caller_id: &'a str,
    pub called_number: &'a str,
    pub terminate_cause: &'a str,
    pub destination: &'a str,
    pub destination_name: &'a str,
    pub credit_used: Decimal,
    pub before_credit: Decimal,
    pub after_credit: Decimal,
    pub source: &'a str,
    /// The account identifier that matched the subscriber (a radius or voip account, or a
    /// DN); `None` when no subscriber matched.
    pub account: Option<&'a str>,
    /// For a `REFUND` xDR, the xDR it cancels.
    pub refund_of: Option<u64>,
    /// Billed seconds of a call a package covered (free); 0 without a package.
    pub package_seconds: i64,
    /// Bytes of a session a package covered (free); 0 without a package.
    pub package_bytes: i64,
}

fn detail_fields() -> Fields {
    Fields::from(vec![
        Field::new("rule", DataType::Utf8, false),
        Field::new(
            "start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            "end",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seconds", DataType::Int64, false),
        Field::new("bytes_in", DataType::Int64, false),
        Field::new("bytes_out", DataType::Int64, false),
        Field::new(
            "credit",
            DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE),
            false,
        ),
    ])
}

/// The xDR Arrow schema (DESIGN.md, "xDR Parquet contract").
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let money = || DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE);
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("xdr_id", DataType::UInt64, false),
        s("service_type"),
        s("status"),
        Field::new("user_id", DataType::Int64, true),
        s("username"),
        s("group_name"),
        Field::new("login_time", ts(), false),
        Field::new("logout_time", ts(), false),
        Field::new("duration_seconds", DataType::Int64, false),
        Field::new("billed_seconds", DataType::Int64, false),
        Field::new("bytes_in", DataType::Int64, false),
        Field::new("bytes_out", DataType::Int64, false),
        s("session_id"),
        s("ras_description"),
        s("nas_ip"),
        s("unique_id_value"),
        s("remote_ip"),
        s("caller_id"),
        s("called_number"),
        s("terminate_cause"),
        s("destination"),
        s("destination_name"),
        Field::new("credit_used", money(), false),
        Field::new("before_credit", money(), false),
        Field::new("after_credit", money(), false),
        Field::new(
            "charge_rule_details",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(detail_fields()),
                true,
            ))),
            false,
        ),
        s("source"),
        Field::new("account", DataType::Utf8, true),
        Field::new("refund_of", DataType::UInt64, true),
        Field::new("package_seconds", DataType::Int64, false),
        Field::new("package_bytes", DataType::Int64, false),
    ]))
}

/// Largest magnitude of a Decimal128(38, 10) value: 38 digits.
const MONEY_I128_MAX: i128 = 10i128.pow(MONEY_PRECISION as u32) - 1;

/// A money value that does not fit where it has to go: a Decimal too large for
/// Decimal128(38, 10) (|value| >= 10^28), or a Decimal128 too large for a Decimal
/// (|value| >= 2^96 at scale 10, about 7.9e18). Never a panic: the caller reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("money value {0} is out of range")]
pub struct MoneyOutOfRange(pub String);

/// A Decimal as the i128 of a Decimal128(38, 10) (rounded half-even past 10 places), or
/// `None` when it needs more than 38 digits.
pub fn money_i128(d: Decimal) -> Option<i128> {
    let scale = d.scale();
    let v = if scale <= MONEY_SCALE as u32 {
        const POW10: [i128; 11] = [
            1,
            10,
            100,
            1_000,
            10_000,
            100_000,
            1_000_000,
            10_000_000,
            100_000_000,
            1_000_000_000,
            10_000_000_000,
        ];
        d.mantissa()
            .checked_mul(POW10[(MONEY_SCALE as u32 - scale) as usize])?
    } else {
        let mut r = d.round_dp(MONEY_SCALE as u32);
        r.rescale(MONEY_SCALE as u32);
        r.mantissa()
    };
    (v.abs() <= MONEY_I128_MAX).then_some(v)
}

/// The Decimal of a Decimal128(38, 10) value; an error when it is beyond a Decimal's 96-bit
/// mantissa (a file written by another tool, or damaged).
pub fn money_from_i128(v: i128) -> Result<Decimal, MoneyOutOfRange> {
    Decimal::try_from_i128_with_scale(v, MONEY_SCALE as u32)
        .map(|d| d.normalize())
        .map_err(|_| MoneyOutOfRange(format!("{v}e-{MONEY_SCALE}")))
}

/// Columnar builder of one xDR batch.
pub struct XdrBuilder {
    xdr_id: UInt64Builder,
    strings: Vec<StringBuilder>,
    user_id: Int64Builder,
    login: TimestampMicrosecondBuilder,
    logout: TimestampMicrosecondBuilder,
    ints: [Int64Builder; 4],
    money: [Decimal128Builder; 3],
    details: DetailColumns,
    source: StringBuilder,
    account: StringBuilder,
    refund_of: UInt64Builder,
    package: [Int64Builder; 2],
    rows: usize,
    /// The first money value that did not fit Decimal128(38, 10); `finish` refuses the batch.
    out_of_range: Option<Decimal>,
}

/// Indices into `XdrBuilder::strings`, in schema order.
const S_SERVICE: usize = 0;
const S_STATUS: usize = 1;
const S_USERNAME: usize = 2;
const S_GROUP: usize = 3;
const S_SESSION: usize = 4;
const N_STRINGS_BEFORE_TAIL: usize = 5;
const N_TAIL: usize = 9; // ras_description .. destination_name

/// What a block's variable-length columns took per row, to size the next block's builders
/// so that their buffers are not grown (each growth a copy of the column so far and fresh
/// pages). Spare capacity is reserved, not touched (Linux commits pages on first touch),
/// and goes with the batch until it is written; what one row may reserve is capped
/// ([`TextSizes::MAX_BYTES_PER_ROW`], [`TextSizes::MAX_DETAILS_PER_64`]): past it the
/// builders grow as they must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSizes {
    /// Bytes per row of each of [`XdrBuilder`]'s text columns, in its `strings` order.
    strings: [u32; N_STRINGS_BEFORE_TAIL + N_TAIL],
    source: u32,
    account: u32,
    /// Charge rule details per 64 rows, and bytes of their rule names per row.
    details_per_64: u32,
    rule: u32,
}

impl Default for TextSizes {
    /// What an xDR of a call or session takes at most in the usual case (ids, numbers, names).
    fn default() -> Self {
        TextSizes {
            strings: [16; N_STRINGS_BEFORE_TAIL + N_TAIL],
            source: 32,
            account: 16,
            details_per_64: 64,
            rule: 16,
        }
    }
}

impl TextSizes {
    /// Most bytes a row reserves in one text column.
    pub const MAX_BYTES_PER_ROW: u32 = 256;
    /// Most charge rule details 64 rows reserve (16 a row).
    pub const MAX_DETAILS_PER_64: u32 = 1024;

    /// The sizes `batches` (one block's xDR batches) took: per column, its bytes over all
    /// of them divided by their rows, an eighth more and a byte over, capped. Nothing
    /// changes when they hold no row.
    pub fn observe(&mut self, batches: &[&RecordBatch]) {
        let mut strings = [0usize; N_STRINGS_BEFORE_TAIL + N_TAIL];
        let (mut source, mut account, mut details, mut rule) = (0usize, 0usize, 0usize, 0usize);
        let mut rows = 0usize;
        // The bytes a (possibly sliced) string array's rows `from..to` hold.
        let span = |a: &StringArray, from: usize, to: usize| -> usize {
            let o = a.value_offsets();
            match (o.get(from), o.get(to)) {
                (Some(&f), Some(&t)) => usize::try_from(t - f).unwrap_or(0),
                _ => 0,
            }
        };
        let text = |b: &RecordBatch, name: &str| -> usize {
            b.column_by_name(name)
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
                .map_or(0, |a| span(a, 0, a.value_offsets().len().saturating_sub(1)))
        };
        for b in batches {
            rows += b.num_rows();
            for (total, name) in strings.iter_mut().zip(STRING_COLUMNS) {
                *total += text(b, name);
            }
            source += text(b, "source");
            account += text(b, "account");
            let list = b
                .column_by_name("charge_rule_details")
                .and_then(|c| c.as_any().downcast_ref::<ListArray>());
            if let Some(list) = list {
                let o = list.value_offsets();
                let at = |i: Option<&i32>| i.map_or(0, |&v| v.max(0) as usize);
                let (from, to) = (at(o.first()), at(o.last()));
                details += to.saturating_sub(from);
                rule += list
                    .values()
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .and_then(|st| st.column_by_name("rule"))
                    .and_then(|a| a.as_any().downcast_ref::<StringArray>())
                    .map_or(0, |a| span(a, from, to));
            }
        }
        if rows == 0 {
            return;
        }
        let per_row = |bytes: usize, cap: u32| -> u32 {
            let b = bytes.div_ceil(rows);
            u32::try_from(b.saturating_add(b / 8 + 1)).map_or(cap, |v| v.min(cap))
        };
        for (slot, bytes) in self.strings.iter_mut().zip(strings) {
            *slot = per_row(bytes, Self::MAX_BYTES_PER_ROW);
        }
        self.source = per_row(source, Self::MAX_BYTES_PER_ROW);
        self.account = per_row(account, Self::MAX_BYTES_PER_ROW);
        self.details_per_64 = per_row(details.saturating_mul(64), Self::MAX_DETAILS_PER_64);
        self.rule = per_row(rule, Self::MAX_BYTES_PER_ROW);
    }
}

/// [`XdrBuilder`]'s text columns, in its `strings` order.
const STRING_COLUMNS: [&str; N_STRINGS_BEFORE_TAIL + N_TAIL] = [
    "service_type",
    "status",
    "username",
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
];

impl XdrBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        Self::with_sizes(rows, &TextSizes::default())
    }

    /// A builder for `rows` rows whose text takes about `sizes`.
    pub fn with_sizes(rows: usize, sizes: &TextSizes) -> Self {
        let bytes = |per_row: u32| rows.saturating_mul(per_row as usize);
        let money = || {
            Decimal128Builder::with_capacity(rows)
                .with_precision_and_scale(MONEY_PRECISION, MONEY_SCALE)
                .expect("valid precision")
        };
        let ts = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        XdrBuilder {
            xdr_id: UInt64Builder::with_capacity(rows),
            strings: sizes
                .strings
                .iter()
                .map(|&n| StringBuilder::with_capacity(rows, bytes(n)))
                .collect(),
            user_id: Int64Builder::with_capacity(rows),
            login: ts(),
            logout: ts(),
            ints: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            money: std::array::from_fn(|_| money()),
            details: DetailColumns::with_capacity(
                rows.saturating_mul(sizes.details_per_64 as usize)
                    .div_ceil(64),
                rows,
                bytes(sizes.rule),
            ),
            source: StringBuilder::with_capacity(rows, bytes(sizes.source)),
            account: StringBuilder::with_capacity(rows, bytes(sizes.account)),
            refund_of: UInt64Builder::with_capacity(rows),
            package: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            rows: 0,
            out_of_range: None,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one xDR with its charge rule details.
    pub fn push(&mut self, r: &XdrRow<'_>, details: &[RuleDetail<'_>]) {
        self.xdr_id.append_value(r.xdr_id);
        self.strings[S_SERVICE].append_value(r.service_type);
        self.strings[S_STATUS].append_value(r.status);
        self.user_id.append_option(r.user_id);
        self.strings[S_USERNAME].append_value(r.username);
        self.strings[S_GROUP].append_value(r.group_name);
        self.login.append_value(r.login_time_secs * 1_000_000);
        self.logout.append_value(r.logout_time_secs * 1_000_000);
        for (b, v) in self.ints.iter_mut().zip([
            r.duration_seconds,
            r.billed_seconds,
            r.bytes_in,
            r.bytes_out,
        ]) {
            b.append_value(v);
        }
        self.strings[S_SESSION].append_value(r.session_id);
        let tail = [
            r.ras_description,
            r.nas_ip,
            r.unique_id_value,
            r.remote_ip,
            r.caller_id,
            r.called_number,
            r.terminate_cause,
            r.destination,
            r.destination_name,
        ];
        for (i, v) in tail.iter().enumerate() {
            self.strings[N_STRINGS_BEFORE_TAIL + i].append_value(v);
        }
        let money = [r.credit_used, r.before_credit, r.after_credit].map(|v| self.money_or_flag(v));
        for (b, v) in self.money.iter_mut().zip(money) {
            b.append_value(v);
        }
        for d in details {
            let credit = self.money_or_flag(d.credit);
            self.details.push(d, credit);
        }
        self.details.offsets.push(self.details.len() as i32);
        self.source.append_value(r.source);
        self.account.append_option(r.account);
        self.refund_of.append_option(r.refund_of);
        self.package[0].append_value(r.package_seconds);
        self.package[1].append_value(r.package_bytes);
        self.rows += 1;
    }

    /// `v` as a Decimal128 value; one that does not fit is remembered (and written as 0 until
    /// `finish` refuses the whole batch), so a bad amount is an error, never a panic or a
    /// silently wrapped number.
    fn money_or_flag(&mut self, v: Decimal) -> i128 {
        money_i128(v).unwrap_or_else(|| {
            self.out_of_range.get_or_insert(v);
            0
        })
    }

    /// Finishes the batch.
    pub fn finish(mut self) -> Result<RecordBatch, SinkError> {
        if let Some(v) = self.out_of_range {
            return Err(SinkError::Arrow(
                MoneyOutOfRange(v.to_string()).to_string() + " for Decimal128(38, 10)",
            ));
        }
        let mut s = std::mem::take(&mut self.strings);
        let mut col = |i: usize| -> ArrayRef { Arc::new(s[i].finish()) };
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.xdr_id.finish()),
            col(S_SERVICE),
            col(S_STATUS),
            Arc::new(self.user_id.finish()),
            col(S_USERNAME),
            col(S_GROUP),
            Arc::new(self.login.finish()),
            Arc::new(self.logout.finish()),
        ];
        for b in self.ints.iter_mut() {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(col(S_SESSION));
        for i in 0..N_TAIL {
            cols.push(col(N_STRINGS_BEFORE_TAIL + i));
        }
        for b in self.money.iter_mut() {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(self.details.finish()?);
        cols.push(Arc::new(self.source.finish()));
        cols.push(Arc::new(self.account.finish()));
        cols.push(Arc::new(self.refund_of.finish()));
        for b in self.package.iter_mut() {
            cols.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(schema(), cols).map_err(|e| SinkError::Arrow(e.to_string()))
    }
}

/// The `charge_rule_details` column, kept as plain vectors while rows are appended (much
/// cheaper than arrow's dynamic struct builder) and assembled into List<Struct> at the end.
struct DetailColumns {
    rule: StringBuilder,
    start: Vec<i64>,
    end: Vec<i64>,
    seconds: Vec<i64>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    credit: Vec<i128>,
    offsets: Vec<i32>,
}

impl DetailColumns {
    /// Room for `details` details over `rows` rows, with `rule_bytes` bytes of rule names
    /// in all.
    fn with_capacity(details: usize, rows: usize, rule_bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        DetailColumns {
            rule: StringBuilder::with_capacity(details, rule_bytes),
            start: Vec::with_capacity(details),
            end: Vec::with_capacity(details),
            seconds: Vec::with_capacity(details),
            bytes_in: Vec::with_capacity(details),
            bytes_out: Vec::with_capacity(details),
            credit: Vec::with_capacity(details),
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.start.len()
    }

    fn push(&mut self, d: &RuleDetail<'_>, credit: i128) {
        self.rule.append_value(d.rule);
        self.start.push(d.start_secs * 1_000_000);
        self.end.push(d.end_secs * 1_000_000);
        self.seconds.push(d.seconds);
        self.bytes_in.push(d.bytes_in);
        self.bytes_out.push(d.bytes_out);
        self.credit.push(credit);
    }

    fn finish(mut self) -> Result<ArrayRef, SinkError> {
        let arrow = |e: arrow_schema::ArrowError| SinkError::Arrow(e.to_string());
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let ints = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        let credit = Decimal128Array::from(self.credit)
            .with_precision_and_scale(MONEY_PRECISION, MONEY_SCALE)
            .map_err(arrow)?;
        let children: Vec<ArrayRef> = vec![
            Arc::new(self.rule.finish()),
            ts(self.start),
            ts(self.end),
            ints(self.seconds),
            ints(self.bytes_in),
            ints(self.bytes_out),
            Arc::new(credit),
        ];
        let st = StructArray::try_new(detail_fields(), children, None).map_err(arrow)?;
        let list = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(detail_fields()), true)),
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Arc::new(st),
            None,
        )
        .map_err(arrow)?;
        Ok(Arc::new(list))
    }
}

/// Rows per data page at most (the page index then narrows a one-user read to a few pages).
pub const PAGE_ROWS: usize = 1024;

/// Rows per data page of a CDR block's files for a UTC day that is still open (not yet
/// closed for compaction: [`crate::compact::is_closed`]). Compaction rewrites them with
/// [`PAGE_ROWS`] pages once the day is closed, even a file alone on its day (see
/// [`has_wide_pages`]), so wide pages cost nothing more there: the open day's files are
/// rewritten anyway when the day has two or more. A quarter of the pages cuts the Parquet
/// encoding's fixed costs per page (zstd's entropy tables, page headers, levels): encoding a
/// 64k-row file 21.8 → 18.5 ms; `ratel rate` of a day's 2M calls, its Parquet stage −17–20%
/// (BENCHMARKS.md). Reading one user's rows from such a file costs 2.3x, until its day is
/// compacted. A closed day's file (a backlog rated late) gets [`PAGE_ROWS`] pages at once:
/// it may stay alone on its day, and rewriting it later would cost far more than its wide
/// pages saved. (The parquet crate checks a page's rows every 1024 values written: both
/// sizes are multiples.)
pub const WIDE_PAGE_ROWS: usize = 4096;

/// How the name of a file with [`WIDE_PAGE_ROWS`] pages ends.
pub const WIDE_PAGES_SUFFIX: &str = "-wide.parquet";

/// Whether the xDR file at `path` (a path or a ledger-relative name) has
/// [`WIDE_PAGE_ROWS`] pages: its name says so, and [`write_temp_files`] takes the page size
/// from it.
pub fn has_wide_pages(path: &str) -> bool {
    path.ends_with(WIDE_PAGES_SUFFIX)
}

/// Index of the leaf column `name` (its dotted path) in a file's Parquet schema.
pub fn leaf_column(schema: &parquet::schema::types::SchemaDescriptor, name: &str) -> Option<usize> {
    schema
        .columns()
        .iter()
        .position(|c| c.path().string() == name)
}

/// The page size a file named `path` is written with.
fn page_rows_of(path: &Path) -> usize {
    match path.to_str() {
        Some(p) if has_wide_pages(p) => WIDE_PAGE_ROWS,
        _ => PAGE_ROWS,
    }
}

/// Largest dictionary page of a column chunk; past it the chunk's later pages are plain.
pub const DICTIONARY_PAGE_BYTES: usize = 16 * 1024;

/// Columns whose values repeat within a file (everything else is plain).
const DICTIONARY_COLUMNS: &[&str] = &[
    "service_type",
    "status",
    "group_name",
    "duration_seconds",
    "billed_seconds",
    "bytes_in",
    "bytes_out",
    "ras_description",
    "nas_ip",
    "remote_ip",
    "terminate_cause",
    "destination",
    "destination_name",
    "charge_rule_details.list.item.rule",
    "charge_rule_details.list.item.seconds",
    "charge_rule_details.list.item.bytes_in",
    "charge_rule_details.list.item.bytes_out",
    "refund_of",
    "package_seconds",
    "package_bytes",
];

/// Columns written without statistics (see [`writer_properties`]).
pub const NO_STATISTICS_COLUMNS: &[&str] = &[
    "session_id",
    "unique_id_value",
    "caller_id",
    "called_number",
    "source",
    "account",
    "destination",
    "destination_name",
    "credit_used",
    "before_credit",
    "after_credit",
    "charge_rule_details.list.item.rule",
    "charge_rule_details.list.item.start",
    "charge_rule_details.list.item.end",
    "charge_rule_details.list.item.seconds",
    "charge_rule_details.list.item.bytes_in",
    "charge_rule_details.list.item.bytes_out",
    "charge_rule_details.list.item.credit",
];

/// Parquet settings, every knob explicit: `page_rows` rows per data page at most
/// ([`PAGE_ROWS`], or [`WIDE_PAGE_ROWS`] for a CDR block's files).
pub fn writer_properties(expected_rows: usize, page_rows: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("zstd level 1"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Rows are in username order: small pages let a one-user read skip the rest.
        .set_data_page_row_count_limit(page_rows)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // A one-user read decodes every column chunk's dictionary page whole, whatever rows
        // it selects: dictionaries only where values repeat (names, addresses, causes,
        // small counters), each bounded, so a read costs a few small pages per column.
        // Unique or near-unique columns (ids, times, balances) are plain; zstd packs them.
        .set_dictionary_enabled(false)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES);
    // A nested column's path from its dotted name.
    let path = |col: &str| ColumnPath::new(col.split('.').map(String::from).collect());
    for col in DICTIONARY_COLUMNS {
        b = b.set_column_dictionary_enabled(path(col), true);
    }
    // No min/max on free text that is near-unique and unordered in a file (call ids, phone
    // numbers, sources): nothing prunes by them, and each value cost a byte compare
    // against the chunk's min and max (~3% of `ratel rate`'s CPU). Nor on the money
    // columns and the charge rule details: a Decimal128 min/max is a 16-byte signed
    // compare per value (`compare_greater_byte_array_decimals`), and no reader prunes
    // files by an amount or a detail (reports prune by username and times; exports by
    // logout_time): −2–4% of `ratel rate`'s user time.
    for col in NO_STATISTICS_COLUMNS {
        b = b.set_column_statistics_enabled(path(col), EnabledStatistics::None);
    }
    b
        // Statistics where reports prune: time ranges and users.
        .set_column_statistics_enabled(ColumnPath::from("login_time"), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from("logout_time"), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from("username"), EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(ColumnPath::from("username"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("username"), 0.01)
        .set_column_bloom_filter_max_ndv(
            ColumnPath::from("username"),
            expected_rows.clamp(1024, ROW_GROUP_ROWS) as u64,
        )
        .set_created_by(format!("ratel {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The hidden temp name a file is written under before it is committed.
pub fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("xdr.parquet");
    final_path.with_file_name(format!(".{name}.tmp"))
}

/// The final name of a temp file, if `p` is one.
pub fn final_of_temp(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_str()?;
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    Some(p.with_file_name(inner))
}

/// Where a file replaced by a compaction waits out its grace period:
/// `<data>/xdr-trash/<partition>/<name>` for `<data>/xdr/<partition>/<name>` (outside the
/// tree readers glob, so they never see a day twice).
pub fn trash_path(final_path: &Path) -> Option<PathBuf> {
    let name = final_path.file_name()?;
    let part = final_path.parent()?;
    let data = part.parent()?.parent()?;
    Some(data.join("xdr-trash").join(part.file_name()?).join(name))
}

/// Opens an xDR file a reader listed from the ledger: under its name, else under its temp
/// name (committed, not yet renamed), else in the compaction trash (replaced since it was
/// listed: its rows are the same, and the reader's listing did not include the new file).
pub fn open_listed(path: &Path) -> std::io::Result<File> {
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    match File::open(path) {
        Err(e) if not_found(&e) => {}
        r => return r,
    }
    match File::open(temp_path(path)) {
        Err(e) if not_found(&e) => {}
        r => return r,
    }
    if let Some(t) = trash_path(path) {
        match File::open(t) {
            Err(e) if not_found(&e) => {}
            r => return r,
        }
    }
    // Renamed between the two tries above.
    File::open(path)
}

/// Fsyncs a directory so a created or renamed entry in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, each new one durable: the directory holding it
/// fsynced once it is created. A file fsynced in a new directory (a day's first xDR file)
/// is otherwise lost with the directory in a power cut, while the ledger says it exists.
/// An existing `dir` costs one `stat`.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    create_dir_durable_with(dir, std::fs::DirBuilder::new())
}

/// [`create_dir_durable`] with `builder`'s options (a mode) for every directory it creates.
pub fn create_dir_durable_with(
    dir: &Path,
    mut builder: std::fs::DirBuilder,
) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // The missing directories, deepest first.
    let mut missing = vec![dir];
    while let Some(p) = missing.last().and_then(|d| d.parent()) {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
    }
    builder.recursive(true).create(dir)?;
    // Each new one's entry, outermost first.
    for m in missing.into_iter().rev() {
        sync_dir(dir_of(m))?;
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare name).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `a`, its text arrays (nested ones too) holding an allocation for their values even when
/// every value is empty: `None` when it already does.
///
/// A text array of only empty strings or nulls, as the kernels that build one (`take`,
/// `interleave`) or a Parquet reader leave it, has a values buffer of no capacity, whose
/// pointer is a dangling address in the first page of memory. The Parquet writer compares
/// every value (statistics' min and max, the dictionary's interner) with a `memcmp` of 0
/// bytes at that address, and glibc's AVX-512 `memcmp` makes a masked load there even for 0
/// bytes: from an unmapped page, each one a microcode assist of ~200 ns. A day of CDRs has
/// three such columns (`ras_description`, `nas_ip`, `remote_ip`; a RADIUS day has its own):
/// writing one of them for 2M rows took 0.43 s, with a 64-byte allocation 0.03 s
/// (BENCHMARKS.md). Compaction and exports write such arrays; the batch build reserves text
/// for every column and never did.
pub fn addressable_text(a: &ArrayRef) -> Option<ArrayRef> {
    use arrow_array::Array;
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_any().downcast_ref::<StringArray>()?;
            if s.is_empty() || !s.values().is_empty() || s.values().capacity() > 0 {
                return None;
            }
            let values = arrow_buffer::Buffer::from_vec(Vec::<u8>::with_capacity(64));
            let fixed = StringArray::try_new(s.offsets().clone(), values, s.nulls().cloned());
            fixed.ok().map(|f| Arc::new(f) as ArrayRef)
        }
        DataType::List(field) => {
            let l = a.as_any().downcast_ref::<ListArray>()?;
            let values = addressable_text(l.values())?;
            let fixed = ListArray::try_new(
                field.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            );
            fixed.ok().map(|f| Arc::new(f) as ArrayRef)
        }
        DataType::Struct(fields) => {
            let st = a.as_any().downcast_ref::<StructArray>()?;
            let columns = addressable_columns(st.columns())?;
            let fixed = StructArray::try_new(fields.clone(), columns, st.nulls().cloned());
            fixed.ok().map(|f| Arc::new(f) as ArrayRef)
        }
        _ => None,
    }
}

/// `columns` with [`addressable_text`] applied (the others shared): `None` when no column
/// needs it.
fn addressable_columns(columns: &[ArrayRef]) -> Option<Vec<ArrayRef>> {
    let fixed: Vec<Option<ArrayRef>> = columns.iter().map(addressable_text).collect();
    if fixed.iter().all(Option::is_none) {
        return None;
    }
    let columns = fixed
        .into_iter()
        .zip(columns)
        .map(|(f, c)| f.unwrap_or_else(|| c.clone()))
        .collect();
    Some(columns)
}

/// `b` with [`addressable_text`] applied to its columns (the same batch, shared, when no
/// column needs it).
pub fn with_addressable_text(b: &RecordBatch) -> RecordBatch {
    match addressable_columns(b.columns()) {
        Some(columns) => RecordBatch::try_new(b.schema(), columns).unwrap_or_else(|_| b.clone()),
        None => b.clone(),
    }
}

/// Writes `batch` durably under the temp name of `final_path` (file, directory and `xdr/` fsynced)
/// and returns the temp path. The caller renames it once the ledger has committed.
pub fn write_temp(final_path: &Path, batch: &RecordBatch) -> Result<PathBuf, SinkError> {
    write_temp_batches(final_path, std::slice::from_ref(batch), PAGE_ROWS)
}

/// Writes `batches` (one schema, in order) as one file durably under the temp name of
/// `final_path`. Row groups hold up to [`ROW_GROUP_ROWS`] rows, data pages up to
/// `page_rows`; the columns of each batch are encoded in parallel (rayon).
pub fn write_temp_batches(
    final_path: &Path,
    batches: &[RecordBatch],
    page_rows: usize,
) -> Result<PathBuf, SinkError> {
    // A batch's clone shares its columns.
    write_unsynced(final_path, batches.to_vec(), page_rows)?.sync()
}

/// Writes `batches` under the temp name of `final_path`, each batch dropped once it is
/// encoded (its columns freed if no one else holds them).
fn write_unsynced(
    final_path: &Path,
    batches: Vec<RecordBatch>,
    page_rows: usize,
) -> Result<Unsynced, SinkError> {
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => self::schema(),
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut w = TempWriter::create(final_path, schema, rows, page_rows)?;
    for b in batches {
        if let Err(e) = w.write(&b) {
            w.abandon();
            return Err(e);
        }
    }
    w.finish_unsynced()
}

/// An xDR file written whole under its temp name, not yet fsynced: not to be committed to
/// the ledger before [`Unsynced::sync`] returned.
#[must_use = "a file is durable only once synced"]
pub(crate) struct Unsynced {
    tmp: PathBuf,
    dir: PathBuf,
    file: File,
}

impl Unsynced {
    /// Fsyncs the file, then its directory and the one above; returns the temp path. On failure the temp
    /// file is removed.
    pub(crate) fn sync(self) -> Result<PathBuf, SinkError> {
        // And the directory above: the file's day directory may be new, created by this
        // writer or by another one (the RADIUS outbox and a CDR block write into the same
        // day); its entry in `xdr/` must be on disk before the ledger names the file. An
        // unchanged directory's fsync costs next to nothing.
        let synced = self
            .file
            .sync_all()
            .and_then(|()| sync_dir(&self.dir))
            .and_then(|()| sync_dir(dir_of(&self.dir)));
        drop(self.file);
        match synced {
            Ok(()) => Ok(self.tmp),
            Err(source) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(SinkError::Io {
                    path: self.tmp.display().to_string(),
                    source,
                })
            }
        }
    }
}

/// Writes several files like [`write_temp_batches`], one after the other, each with the page
/// size its name says ([`has_wide_pages`]), and returns when every one is durable. Each
/// file's fsyncs (its own, its directory's and `xdr/`'s) run on a thread of their own while the next
/// file is encoded: the encoding does not wait on the disk (~3 ms a file here, ~8 files a
/// CDR block; more on slower disks). Each batch is dropped once it is encoded: a block's
/// Arrow columns are freed file by file while the next block is built, instead of all at
/// the block's end. On an error every thread is joined and the first error
/// returned: a file whose write or fsync failed is removed, the others stay under their
/// temp names for the caller, which knows them (a failed CDR block removes them all).
pub fn write_temp_files<P: AsRef<Path>>(
    files: impl IntoIterator<Item = (P, Vec<RecordBatch>)>,
) -> Result<Vec<PathBuf>, SinkError> {
    std::thread::scope(|s| {
        let mut syncing = Vec::new();
        let mut done = Vec::new();
        let mut failed = None;
        for (final_path, batches) in files {
            let final_path = final_path.as_ref();
            match write_unsynced(final_path, batches, page_rows_of(final_path)) {
                Ok(u) => {
                    // Without a thread (the OS refused one), the fsync here.
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    let spawned = std::thread::Builder::new()
                        .name("xdr-fsync".into())
                        .spawn_scoped(s, move || {
                            let u: Unsynced = match rx.recv() {
                                Ok(u) => u,
                                Err(_) => return None,
                            };
                            Some(u.sync())
                        });
                    match spawned {
                        Ok(h) => {
                            tx.send(u).expect("the fsync thread waits for its file");
                            syncing.push(h);
                        }
                        Err(_) => match u.sync() {
                            Ok(p) => done.push(p),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        },
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        for h in syncing {
            match h.join().expect("an fsync does not panic") {
                Some(Ok(p)) => done.push(p),
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                }
                None => {}
            }
        }
        match failed {
            None => Ok(done),
            Some(e) => Err(e),
        }
    })
}

/// An xDR file written batch by batch under the temp name of its final path: what it holds
/// in memory is the open row group's encoded pages and the batch being written, not the
/// file's rows (a compaction streams a day through it).
pub struct TempWriter {
    tmp: PathBuf,
    dir: PathBuf,
    schema: SchemaRef,
    writer: parquet::file::writer::SerializedFileWriter<BufWriter<File>>,
    factory: parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    /// The open row group's column writers (empty when none is open) and its rows so far.
    columns: Vec<ArrowColumnWriter>,
    /// Parquet leaf columns of each of the schema's fields, in order.
    leaves: Vec<usize>,
    groups: usize,
    in_group: usize,
}

impl TempWriter {
    /// Creates the temp file of `final_path` (and its directory). `expected_rows` sizes the
    /// username bloom filter; `page_rows` is the most rows of a data page.
    pub fn create(
        final_path: &Path,
        schema: SchemaRef,
        expected_rows: usize,
        page_rows: usize,
    ) -> Result<Self, SinkError> {
        let tmp = temp_path(final_path);
        let dir = final_path
            .parent()
            .expect("xdr files live in a directory")
            .to_path_buf();
        let io = |source| SinkError::Io {
            path: tmp.display().to_string(),
            source,
        };
        // A new day's directory is made durable with the file (its entry in `xdr/` fsynced
        // where the file is: [`Unsynced::sync`]), not here on the encoder's path.
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = File::create(&tmp).map_err(io)?;
        // ArrowWriter sets up the Parquet schema and the embedded Arrow schema; its
        // lower-level halves then let each column be encoded on its own thread.
        let (writer, factory) = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema.clone(),
            Some(writer_properties(expected_rows, page_rows)),
        )
        .and_then(|w| w.into_serialized_writer())
        .map_err(|e| parquet_err(&tmp, e))?;
        // Each field's leaves, from the Parquet schema the writer derived.
        let descr = writer.schema_descr();
        let mut leaves = vec![0usize; schema.fields().len()];
        for i in 0..descr.num_columns() {
            if let Some(n) = leaves.get_mut(descr.get_column_root_idx(i)) {
                *n += 1;
            }
        }
        Ok(TempWriter {
            tmp,
            dir,
            schema,
            writer,
            factory,
            columns: Vec::new(),
            leaves,
            groups: 0,
            in_group: 0,
        })
    }

    /// Appends `batch`'s rows (row groups close at [`ROW_GROUP_ROWS`]).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let mut off = 0;
        while off < batch.num_rows() {
            if self.columns.is_empty() {
                self.columns = self
                    .factory
                    .create_column_writers(self.groups)
                    .map_err(|e| parquet_err(&self.tmp, e))?;
                self.in_group = 0;
            }
            let n = (batch.num_rows() - off).min(ROW_GROUP_ROWS - self.in_group);
            self.write_slice(&batch.slice(off, n))?;
            off += n;
            self.in_group += n;
            if self.in_group == ROW_GROUP_ROWS {
                self.close_group()?;
            }
        }
        Ok(())
    }

    /// Encodes `b`'s columns in parallel. Each field's leaves (its values with their
    /// definition and repetition levels, and the indices of its non-null values: ~10 bytes
    /// a row each) are computed by the task that encodes them, so a thread holds one
    /// field's at a time, not every column's at once.
    fn write_slice(&mut self, b: &RecordBatch) -> Result<(), SinkError> {
        use rayon::prelude::*;
        let fields = self.schema.fields();
        let mut groups = Vec::with_capacity(fields.len());
        let mut rest: &mut [ArrowColumnWriter] = &mut self.columns;
        for ((field, col), &n) in fields.iter().zip(b.columns()).zip(&self.leaves) {
            if n > rest.len() {
                break;
            }
            let (writers, tail) = std::mem::take(&mut rest).split_at_mut(n);
            groups.push((field, col, writers));
            rest = tail;
        }
        if groups.len() != fields.len() || !rest.is_empty() || b.num_columns() != fields.len() {
            return Err(SinkError::Arrow(format!(
                "{}: the batch's columns do not match the file's schema",
                self.tmp.display()
            )));
        }
        groups
            .into_par_iter()
            .try_for_each(|(field, col, writers)| {
                let fixed = addressable_text(col);
                let leaves = compute_leaves(field, fixed.as_ref().unwrap_or(col))?;
                if leaves.len() != writers.len() {
                    return Err(parquet::errors::ParquetError::General(format!(
                        "column {}: {} leaves, {} writers",
                        field.name(),
                        leaves.len(),
                        writers.len()
                    )));
                }
                writers
                    .iter_mut()
                    .zip(leaves)
                    .try_for_each(|(w, l)| w.write(&l))
            })
            .map_err(|e| parquet_err(&self.tmp, e))
    }

    fn close_group(&mut self) -> Result<(), SinkError> {
        use rayon::prelude::*;
        let chunks: Vec<ArrowColumnChunk> = std::mem::take(&mut self.columns)
            .into_par_iter()
            .map(|w| w.close())
            .collect::<parquet::errors::Result<_>>()
            .map_err(|e| parquet_err(&self.tmp, e))?;
        let mut rg = self
            .writer
            .next_row_group()
            .map_err(|e| parquet_err(&self.tmp, e))?;
        for c in chunks {
            c.append_to_row_group(&mut rg)
                .map_err(|e| parquet_err(&self.tmp, e))?;
        }
        rg.close().map_err(|e| parquet_err(&self.tmp, e))?;
        self.groups += 1;
        Ok(())
    }

    /// Closes the file and makes it durable (file, directory and `xdr/` fsynced); returns the temp
    /// path. The caller renames it once the ledger has committed.
    pub fn finish(self) -> Result<PathBuf, SinkError> {
        self.finish_unsynced()?.sync()
    }

    /// Closes the file, written whole but not yet durable: [`Unsynced::sync`] makes it so
    /// (on another thread, while the next file is encoded: [`write_temp_files`]).
    pub(crate) fn finish_unsynced(mut self) -> Result<Unsynced, SinkError> {
        match self.finish_inner() {
            Ok(file) => Ok(Unsynced {
                tmp: std::mem::take(&mut self.tmp),
                dir: std::mem::take(&mut self.dir),
                file,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    /// The footer written and flushed; returns a handle on the file to fsync.
    fn finish_inner(&mut self) -> Result<File, SinkError> {
        if !self.columns.is_empty() {
            self.close_group()?;
        }
        let io = |source| SinkError::Io {
            path: self.tmp.display().to_string(),
            source,
        };
        // The footer; flushed through the buffer to the file.
        self.writer
            .finish()
            .map_err(|e| parquet_err(&self.tmp, e))?;
        self.writer.inner_mut().flush().map_err(io)?;
        self.writer.inner_mut().get_ref().try_clone().map_err(io)
    }

    /// Gives the file up: removes the temp file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn parquet_err(tmp: &Path, e: parquet::errors::ParquetError) -> SinkError {
    SinkError::Parquet {
        path: tmp.display().to_string(),
        message: e.to_string(),
    }
}

/// `xdr/date=YYYY-MM-DD` for a UTC unix time.
pub fn partition_dir(xdr_root: &Path, logout_secs: i64) -> PathBuf {
    let date = chrono::DateTime::<chrono::Utc>::from_timestamp(logout_secs, 0)
        .unwrap_or_default()
        .date_naive();
    xdr_root.join(format!("date={date}"))
}

/// The UTC day number (days since 1970-01-01) of a unix time.
pub fn day_of(secs: i64) -> i64 {
    secs.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trip() {
        for s in [
            "0",
            "1.5",
            "-2.0001",
            "123456789012345678.0123456789",
            "0.00000000005",
        ] {
            let d: Decimal = s.parse().unwrap();
            let back = money_from_i128(money_i128(d).unwrap()).unwrap();
            assert_eq!(back, d.round_dp(10).normalize(), "{s}");
        }
        assert_eq!(money_i128("1.5".parse().unwrap()), Some(15_000_000_000));
    }

    /// Values beyond either type are errors, not panics or wrapped numbers.
    #[test]
    fn money_out_of_range() {
        // Decimal -> Decimal128(38, 10): at most 28 integer digits.
        let too_big: Decimal = "-79000000000000000000000000000".parse().unwrap();
        assert_eq!(money_i128(too_big), None);
        assert_eq!(money_i128(Decimal::MAX), None);
        let edge: Decimal = "9999999999999999999999999999".parse().unwrap();
        assert_eq!(
            money_i128(edge),
            Some(99_999_999_999_999_999_999_999_999_990_000_000_000)
        );
        // Decimal128(38, 10) -> Decimal: at most a 96-bit mantissa (credits >= ~7.9e18).
        for v in [
            1i128 << 96,
            -(1i128 << 96),
            80_000_000_000_000_000_000_000_000_000,
            i128::MAX,
        ] {
            assert!(money_from_i128(v).is_err(), "{v}");
        }
        assert!(money_from_i128((1i128 << 96) - 1).is_ok());
        // A builder holding such a value refuses the batch instead of writing it.
        let mut b = XdrBuilder::with_capacity(1);
        let row = XdrRow {
            credit_used: too_big,
            ..XdrRow::default()
        };
        b.push(&row, &[]);
        assert!(b.finish().is_err());
    }

    /// A minute under `rule` at 0.15.
    fn minute_of(rule: &str) -> RuleDetail<'_> {
        RuleDetail {
            rule,
            start_secs: 0,
            end_secs: 60,
            seconds: 60,
            bytes_in: 0,
            bytes_out: 0,
            credit: Decimal::new(15, 2),
        }
    }

    /// `n` rows of known text (the username `user`) and two details each, built with `sizes`.
    fn rows_of(n: u64, user: &str, sizes: &TextSizes) -> RecordBatch {
        let mut b = XdrBuilder::with_sizes(n as usize, sizes);
        let d = minute_of("peak!");
        for i in 0..n {
            let row = XdrRow {
                xdr_id: i,
                username: user,
                session_id: "0123456789ab",
                source: "cdr:f.csv:1234567890",
                account: (i % 2 == 0).then_some("acc"),
                ..XdrRow::default()
            };
            b.push(&row, &[d.clone(), d.clone()]);
        }
        b.finish().unwrap()
    }

    #[test]
    fn text_sizes_follow_what_a_block_took() {
        let batch = rows_of(10, "abcd", &TextSizes::default());
        let mut sizes = TextSizes::default();
        sizes.observe(&[&batch]);
        // Per row: the bytes over 10 rows rounded up, an eighth more (rounded down), one more.
        let col = |s: &TextSizes, name: &str| {
            s.strings[STRING_COLUMNS.iter().position(|c| *c == name).unwrap()]
        };
        let user = |s: &TextSizes| col(s, "username");
        assert_eq!(user(&sizes), 4 + 1); // 40 bytes
        assert_eq!(col(&sizes, "session_id"), 12 + 1 + 1); // 120 bytes
        assert_eq!(col(&sizes, "nas_ip"), 1); // empty
        assert_eq!(sizes.source, 20 + 2 + 1); // 200 bytes
        assert_eq!(sizes.account, 2 + 1); // 5 x "acc": 15 bytes, 1.5 a row
        assert_eq!(sizes.details_per_64, 128 + 16 + 1); // 20 details over 10 rows
        assert_eq!(sizes.rule, 10 + 1 + 1); // 20 x "peak!"

        // Nothing to learn from: unchanged.
        let before = sizes;
        sizes.observe(&[]);
        sizes.observe(&[&batch.slice(0, 0)]);
        assert_eq!(sizes, before);

        // A block's batches count together: one long name among 11 rows is 140 bytes over
        // 11 rows (13 a row), not the 100 of its own one-row batch.
        let long = rows_of(1, &"x".repeat(100), &TextSizes::default());
        let mut together = TextSizes::default();
        together.observe(&[&batch, &long]);
        assert_eq!(user(&together), 13 + 1 + 1);
        // And what a row may reserve is capped.
        let huge = rows_of(1, &"x".repeat(100_000), &TextSizes::default());
        let mut capped = TextSizes::default();
        capped.observe(&[&huge]);
        assert_eq!(user(&capped), TextSizes::MAX_BYTES_PER_ROW);
        // A slice counts its own rows only: row 1 has no account, two details.
        let mut one = TextSizes::default();
        one.observe(&[&batch.slice(1, 1)]);
        assert_eq!(user(&one), 4 + 1);
        assert_eq!(one.account, 1);
        assert_eq!(one.details_per_64, 128 + 16 + 1);
        assert_eq!(one.rule, 10 + 1 + 1);

        // The sizes only reserve: builders too small (they grow) or sized by what they saw
        // build the same batch.
        let none = TextSizes {
            strings: [0; N_STRINGS_BEFORE_TAIL + N_TAIL],
            source: 0,
            account: 0,
            details_per_64: 0,
            rule: 0,
        };
        assert_eq!(rows_of(10, "abcd", &none), batch);
        assert_eq!(rows_of(10, "abcd", &sizes), batch);
    }

    /// A text column of only empty values, as `interleave` (compaction) or a Parquet reader
    /// (exports) leaves it, points at no memory; the writer gets it with an allocation of
    /// its own (the values unchanged), nested ones too, and leaves other columns alone.
    #[test]
    fn empty_text_columns_get_memory_of_their_own() {
        use arrow_array::Array;
        let mut b = XdrBuilder::with_capacity(8);
        let blank = minute_of("");
        for i in 0..8u64 {
            let row = XdrRow {
                xdr_id: i,
                username: "alice",
                ..XdrRow::default()
            };
            b.push(&row, std::slice::from_ref(&blank));
        }
        let built = b.finish().unwrap();
        let idx: Vec<(usize, usize)> = (0..8).rev().map(|i| (0, i)).collect();
        let merged = arrow_select::interleave::interleave_record_batch(&[&built], &idx).unwrap();
        let text = |b: &RecordBatch, name: &str| -> StringArray {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let rule = |b: &RecordBatch| -> StringArray {
            let list = b.column_by_name("charge_rule_details").unwrap();
            let list = list.as_any().downcast_ref::<ListArray>().unwrap();
            let st = list
                .values()
                .as_any()
                .downcast_ref::<StructArray>()
                .unwrap();
            st.column_by_name("rule")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        // What the kernel leaves: no capacity, top level and nested.
        assert_eq!(text(&merged, "nas_ip").values().capacity(), 0);
        assert_eq!(text(&merged, "remote_ip").values().capacity(), 0);
        assert_eq!(rule(&merged).values().capacity(), 0);

        let fixed = with_addressable_text(&merged);
        assert!(text(&fixed, "nas_ip").values().capacity() > 0);
        assert!(text(&fixed, "remote_ip").values().capacity() > 0);
        assert!(rule(&fixed).values().capacity() > 0);
        assert_eq!(fixed, merged);
        let user = fixed.column_by_name("username").unwrap();
        assert!(Arc::ptr_eq(
            user,
            merged.column_by_name("username").unwrap()
        ));
        assert!(addressable_text(user).is_none());
        // Nothing to do: the same columns.
        let again = with_addressable_text(&fixed);
        for (a, b) in again.columns().iter().zip(fixed.columns()) {
            assert!(Arc::ptr_eq(a, b));
        }

        // Written and read back (the parquet crate's reader): the same rows.
        let dir = tempfile::tempdir().unwrap();
        let tmp = write_temp(&dir.path().join("x.parquet"), &merged).unwrap();
        let back: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                File::open(&tmp).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].columns(), merged.columns());
        assert_eq!(text(&back[0], "nas_ip").value(3), "");
        assert_eq!(rule(&back[0]).value(7), "");
        assert_eq!(text(&back[0], "username").value(0), "alice");
        let ids = back[0]
            .column_by_name("xdr_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::UInt64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(ids, vec![7, 6, 5, 4, 3, 2, 1, 0]);
    }

    /// New directories are made with their parents (the mode given to every one of them);
    /// an existing one is left as it is; a file in the way fails the call.
    #[test]
    fn directories_are_created_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("xdr/date=2026-11-02");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        std::fs::write(deep.join("keep"), b"x").unwrap();
        create_dir_durable(&deep).unwrap();
        assert!(deep.join("keep").exists(), "an existing directory is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let mut b = std::fs::DirBuilder::new();
            b.mode(0o700);
            let private = dir.path().join("a/b/c");
            create_dir_durable_with(&private, b).unwrap();
            for d in ["a", "a/b", "a/b/c"] {
                let mode = std::fs::metadata(dir.path().join(d))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o700, "{d}");
            }
        }
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"not a directory").unwrap();
        assert!(create_dir_durable(&blocked.join("date=2026-11-03")).is_err());
    }

    /// Files written together: each under its temp name, whole (read back by the parquet
    /// crate's reader), with the page size its name says. A file that cannot be created
    /// fails the call with its own path; the files before it were still made durable.
    #[test]
    fn files_written_together_are_whole_under_their_temp_names() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<RecordBatch> = (0..3)
            .map(|k| rows_of(1500 + 800 * k, &format!("u{k}"), &TextSizes::default()))
            .collect();
        // The last one named as a CDR block's file of an open day.
        let paths: Vec<PathBuf> = ["cdr-0.parquet", "cdr-1.parquet", "cdr-2-wide.parquet"]
            .iter()
            .enumerate()
            .map(|(k, n)| dir.path().join(format!("date=2026-11-0{k}/{n}")))
            .collect();
        let files = paths
            .iter()
            .zip(&batches)
            .map(|(p, b)| (p, vec![b.clone()]));
        let written = write_temp_files(files).unwrap();
        assert_eq!(
            written,
            paths.iter().map(|p| temp_path(p)).collect::<Vec<_>>()
        );
        for (k, t) in written.iter().enumerate() {
            let r = ParquetRecordBatchReaderBuilder::try_new_with_options(
                File::open(t).unwrap(),
                parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                    .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
            )
            .unwrap();
            let pages = r
                .metadata()
                .page_index()
                .and_then(|pi| pi.offset_index(0, 0))
                .map(|o| o.page_locations().len());
            // 1500 and 2300 rows at 1024 a page, 3100 at 4096.
            assert_eq!(pages, Some([2, 3, 1][k]), "{t:?}");
            let back: Vec<RecordBatch> = r.build().unwrap().map(|b| b.unwrap()).collect();
            assert_eq!(arrow_select_concat(&back), batches[k], "{t:?}");
        }

        // The second file's directory is a file: that file fails, by its name.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let bad = [
            dir.path().join("date=2026-11-05/cdr-5.parquet"),
            blocked.join("cdr-6.parquet"),
            dir.path().join("date=2026-11-07/cdr-7.parquet"),
        ];
        let files = bad.iter().zip(&batches).map(|(p, b)| (p, vec![b.clone()]));
        let e = write_temp_files(files).unwrap_err().to_string();
        assert!(e.contains("blocked"), "{e}");
        assert!(
            temp_path(&bad[0]).exists(),
            "the first file was written and synced"
        );
        assert!(
            !temp_path(&bad[2]).exists(),
            "nothing written after the failure"
        );
    }

    /// One batch from `parts` (the reader may split a file's rows).
    fn arrow_select_concat(parts: &[RecordBatch]) -> RecordBatch {
        arrow_select::concat::concat_batches(&parts[0].schema(), parts).unwrap()
    }

    #[test]
    fn temp_names() {
        let f = Path::new("/d/xdr/date=2026-11-02/part-1.parquet");
        let t = temp_path(f);
        assert_eq!(t, Path::new("/d/xdr/date=2026-11-02/.part-1.parquet.tmp"));
        assert_eq!(final_of_temp(&t).unwrap(), f);
        assert_eq!(final_of_temp(f), None);
    }
}

/// An owned xDR detail, for xDRs that wait in the ledger's outbox (RADIUS sessions).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedDetail {
    pub rule: String,
    pub start: i64,
    pub end: i64,
    pub seconds: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub credit: Decimal,
}

/// An owned xDR (the outbox form; serialized as JSON in the ledger until flushed).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct OwnedXdr {
    pub xdr_id: u64,
    pub service_type: String,
    pub status: String,
    pub user_id: Option<i64>,
    pub username: String,
    pub group_name: String,
    pub login_time: i64,
    pub logout_time: i64,
    pub duration_seconds: i64,
    pub billed_seconds: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub session_id: String,
    pub ras_description: String,
    pub nas_ip: String,
    pub unique_id_value: String,
    pub remote_ip: String,
    pub caller_id: String,
    pub called_number: String,
    pub terminate_cause: String,
    pub destination: String,
    pub destination_name: String,
    pub credit_used: Decimal,
    pub before_credit: Decimal,
    pub after_credit: Decimal,
    pub details: Vec<OwnedDetail>,
    pub source: String,
    /// See [`XdrRow::account`] (absent in rows written before it existed).
    #[serde(default)]
    pub account: Option<String>,
    /// See [`XdrRow::refund_of`].
    #[serde(default)]
    pub refund_of: Option<u64>,
    /// See [`XdrRow::package_seconds`].
    #[serde(default)]
    pub package_seconds: i64,
    /// See [`XdrRow::package_bytes`].
    #[serde(default)]
    pub package_bytes: i64,
}

impl OwnedXdr {
    /// Appends this xDR to a builder.
    pub fn push_to(&self, b: &mut XdrBuilder) {
        let details: Vec<RuleDetail<'_>> = self
            .details
            .iter()
            .map(|d| RuleDetail {
                rule: &d.rule,
                start_secs: d.start,
                end_secs: d.end,
                seconds: d.seconds,
                bytes_in: d.bytes_in,
                bytes_out: d.bytes_out,
                credit: d.credit,
            })
            .collect();
        b.push(
            &XdrRow {
                xdr_id: self.xdr_id,
                service_type: &self.service_type,
                status: &self.status,
                user_id: self.user_id,
                username: &self.username,
                group_name: &self.group_name,
                login_time_secs: self.login_time,
                logout_time_secs: self.logout_time,
                duration_seconds: self.duration_seconds,
                billed_seconds: self.billed_seconds,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                session_id: &self.session_id,
                ras_description: &self.ras_description,
                nas_ip: &self.nas_ip,
                unique_id_value: &self.unique_id_value,
                remote_ip: &self.remote_ip,
                caller_id: &self.caller_id,
                called_number: &self.called_number,
                terminate_cause: &self.terminate_cause,
                destination: &self.destination,
                destination_name: &self.destination_name,
                credit_used: self.credit_used,
                before_credit: self.before_credit,
                after_credit: self.after_credit,
                source: &self.source,
                account: self.account.as_deref(),
                refund_of: self.refund_of,
                package_seconds: self.package_seconds,
                package_bytes: self.package_bytes,
            },
            &details,
        );
    }
}
