//! xDR exports (VCS `/admin/xdrs/download`): the xDRs whose logout time is in a range,
//! optionally of one client, as a stream of Arrow batches in the current xDR schema —
//! file by file and batch by batch from the Parquet tree, then the outbox rows — encoded as
//! CSV ([`CsvEncoder`]) or Parquet ([`ParquetEncoder`]) onto any `Write` as they come.
//!
//! Memory is constant in the number of rows: a file is read a batch of [`BATCH_ROWS`] at a
//! time (the parquet reader fetches pages as it decodes them), each batch is filtered and
//! handed to the encoder at once, and the Parquet encoder ends a row group every
//! [`EXPORT_ROW_GROUP_ROWS`] rows or [`EXPORT_ROW_GROUP_BYTES`] of encoded data. The files
//! and the outbox come from one ledger snapshot ([`LedgerRead::xdr_sources`]), so a flush
//! committing meanwhile neither hides nor repeats a row.
//!
//! [`LedgerRead::xdr_sources`]: ratel_engine::ledger::LedgerRead::xdr_sources

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    new_null_array, Array, ArrayRef, BooleanArray, Decimal128Array, Int64Array, ListArray,
    RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use ratel_engine::xdr::{OwnedXdr, XdrBuilder};
use rust_decimal::Decimal;

use crate::report::Filter;
use crate::service::{Caller, ClientRef, Service, ServiceError, ServiceResult};

/// Files of an export opened when it is made; the rest are opened as it reaches them
/// (a compaction's replaced files stay readable for 10 minutes after it, see
/// `ratel_engine::xdr::open_listed`).
pub const MAX_OPEN_AT_START: usize = 256;
/// Rows decoded from a file (or built from the outbox) at a time.
pub const BATCH_ROWS: usize = 8192;
/// Rows of one row group of an exported Parquet file at most.
pub const EXPORT_ROW_GROUP_ROWS: usize = 65_536;
/// Encoded bytes an exported Parquet row group may buffer before it is written out.
pub const EXPORT_ROW_GROUP_BYTES: usize = 16 << 20;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The output failed (the HTTP client went away).
    #[error("output: {0}")]
    Sink(#[from] std::io::Error),
    /// An xDR file (or the outbox) could not be read or did not fit the schema.
    #[error("{path}: {message}")]
    Source { path: String, message: String },
}

/// Where exported batches go.
pub trait XdrSink {
    fn write(&mut self, batch: &RecordBatch) -> std::io::Result<()>;
    /// Ends the output (the Parquet footer, the last bytes).
    fn finish(&mut self) -> std::io::Result<()>;
}

/// An export ready to run: the sources of one ledger snapshot and the filter.
#[derive(Debug)]
pub struct XdrExport {
    /// The files of the snapshot, in ledger order; the first [`MAX_OPEN_AT_START`] opened.
    files: Vec<(PathBuf, Option<std::fs::File>)>,
    outbox: Vec<OwnedXdr>,
    /// Logout time bounds, seconds, inclusive.
    from: i64,
    to_incl: i64,
    user_id: Option<i64>,
    schema: SchemaRef,
}

impl Service {
    /// An export of the xDRs whose logout time is in `[from, to)` (of client `user_id`
    /// when given; a client exports only its own). Everything that can be refused is
    /// refused here, before a byte is sent; the sources are fixed now.
    pub fn export_xdrs(
        &self,
        caller: &Caller,
        user_id: Option<i64>,
        from: i64,
        to: i64,
    ) -> ServiceResult<XdrExport> {
        if to <= from {
            return Err(ServiceError::invalid(
                "the range is empty: to must be after from",
            ));
        }
        let user_id = match caller {
            Caller::User { user_id: me, .. } => {
                if user_id.is_some_and(|u| u != *me) {
                    return Err(ServiceError::denied("a user may only read its own xDRs"));
                }
                Some(*me)
            }
            Caller::Admin { .. } => user_id,
        };
        if let Some(id) = user_id {
            self.client(caller, &ClientRef::Id(id))?;
        }
        let to_incl = to - 1;
        let (files, outbox) = self.read(|l| l.xdr_sources(from, to_incl))?;
        let filter = Filter {
            user_ids: user_id.map(|u| vec![u]),
            logout_from: Some(from),
            logout_to: Some(to_incl),
            ..Default::default()
        };
        let outbox = outbox
            .iter()
            .filter_map(|o| serde_json::from_str::<OwnedXdr>(o).ok())
            .filter(|x| filter.matches(x))
            .collect();
        // The listed files are opened now (up to a bound), so a compaction replacing one
        // during a long download cannot take it away: an open file outlives its deletion.
        let mut listed = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let path = self.xdr_root.join(f);
            let file = if i < MAX_OPEN_AT_START {
                Some(ratel_engine::xdr::open_listed(&path).map_err(|e| {
                    tracing::error!(file = %path.display(), error = %e, "export: cannot open a listed xDR file");
                    ServiceError::Internal("an xDR file could not be read".into())
                })?)
            } else {
                None
            };
            listed.push((path, file));
        }
        Ok(XdrExport {
            files: listed,
            outbox,
            from,
            to_incl,
            user_id,
            schema: ratel_engine::xdr::schema(),
        })
    }
}

impl XdrExport {
    /// The schema every exported batch has (the current xDR schema).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Writes every matching row into `sink` and finishes it; the number of rows.
    pub fn run(mut self, sink: &mut dyn XdrSink) -> Result<u64, ExportError> {
        let mut rows = 0u64;
        let files = std::mem::take(&mut self.files);
        for (path, file) in files {
            rows += self.read_file(&path, file, sink)?;
        }
        for chunk in self.outbox.chunks(BATCH_ROWS) {
            let mut b = XdrBuilder::with_capacity(chunk.len());
            for x in chunk {
                x.push_to(&mut b);
            }
            let batch = b.finish().map_err(|e| ExportError::Source {
                path: "xdr_outbox".into(),
                message: e.to_string(),
            })?;
            let batch = conform(&batch, &self.schema).map_err(|message| ExportError::Source {
                path: "xdr_outbox".into(),
                message,
            })?;
            rows += batch.num_rows() as u64;
            sink.write(&batch)?;
        }
        sink.finish()?;
        Ok(rows)
    }

    fn read_file(
        &self,
        path: &Path,
        file: Option<std::fs::File>,
        sink: &mut dyn XdrSink,
    ) -> Result<u64, ExportError> {
        let source = |e: &dyn std::fmt::Display| ExportError::Source {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let file = match file {
            Some(f) => f,
            None => ratel_engine::xdr::open_listed(path).map_err(|e| source(&e))?,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| source(&e))?
            .with_batch_size(BATCH_ROWS);
        let groups = self.row_groups(builder.metadata());
        if groups.is_empty() {
            return Ok(0);
        }
        let reader = builder
            .with_row_groups(groups)
            .build()
            .map_err(|e| source(&e))?;
        let mut rows = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| source(&e))?;
            let Some(batch) = self.select(&batch).map_err(|e| source(&e))? else {
                continue;
            };
            let batch = conform(&batch, &self.schema).map_err(|e| source(&e))?;
            rows += batch.num_rows() as u64;
            sink.write(&batch)?;
        }
        Ok(rows)
    }

    /// Row groups whose `logout_time` statistics may hold the range (all without them).
    fn row_groups(&self, meta: &parquet::file::metadata::ParquetMetaData) -> Vec<usize> {
        let col = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == "logout_time");
        (0..meta.num_row_groups())
            .filter(|&i| {
                let stats = col.and_then(|c| meta.row_group(i).column(c).statistics());
                match stats {
                    Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                        (Some(lo), Some(hi)) => {
                            hi.div_euclid(1_000_000) >= self.from
                                && lo.div_euclid(1_000_000) <= self.to_incl
                        }
                        _ => true,
                    },
                    _ => true,
                }
            })
            .collect()
    }

    /// The rows of `b` in the range (and of the client); `None` when there are none.
    fn select(&self, b: &RecordBatch) -> Result<Option<RecordBatch>, String> {
        let logout = b
            .column_by_name("logout_time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or("no logout_time column")?;
        let users = match self.user_id {
            Some(_) => Some(
                b.column_by_name("user_id")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .ok_or("no user_id column")?,
            ),
            None => None,
        };
        let mask: BooleanArray = (0..b.num_rows())
            .map(|r| {
                let t = logout.value(r).div_euclid(1_000_000);
                let user_ok = match (users, self.user_id) {
                    (Some(u), Some(id)) => !u.is_null(r) && u.value(r) == id,
                    _ => true,
                };
                Some(t >= self.from && t <= self.to_incl && user_ok)
            })
            .collect();
        match mask.true_count() {
            0 => Ok(None),
            n if n == b.num_rows() => Ok(Some(b.clone())),
            _ => arrow_select::filter::filter_record_batch(b, &mask)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }
}

/// `b` with exactly the columns of `schema`, in its order: a column a file predates (e.g.
/// `refund_of`, the package columns) is null where the schema allows it, else zero / empty.
pub fn conform(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let n = b.num_rows();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match b.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => {
                return Err(format!(
                    "column {} is {} here, {} in the xDR schema",
                    f.name(),
                    c.data_type(),
                    f.data_type()
                ))
            }
            None => default_column(f, n)?,
        };
        cols.push(col);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}

fn default_column(f: &Field, n: usize) -> Result<ArrayRef, String> {
    if f.is_nullable() {
        return Ok(new_null_array(f.data_type(), n));
    }
    Ok(match f.data_type() {
        DataType::Int64 => Arc::new(Int64Array::from(vec![0; n])),
        DataType::UInt64 => Arc::new(UInt64Array::from(vec![0; n])),
        DataType::Utf8 => Arc::new(StringArray::from(vec![""; n])),
        DataType::Decimal128(p, s) => Arc::new(
            Decimal128Array::from(vec![0i128; n])
                .with_precision_and_scale(*p, *s)
                .map_err(|e| e.to_string())?,
        ),
        other => {
            return Err(format!(
                "column {} ({other}) is missing and has no default",
                f.name()
            ))
        }
    })
}

// ---- CSV ----------------------------------------------------------------------------------

/// Bytes of CSV text gathered before they are written out.
const CSV_FLUSH_BYTES: usize = 256 << 10;

/// CSV (RFC 4180, `\r\n`): a header of the schema's column names, then one line per xDR.
/// Integers as digits, money with its exact digits, times ISO-8601 UTC
/// (`2026-11-02T10:00:00Z`), nulls empty, `charge_rule_details` as a JSON array.
pub struct CsvEncoder<W: Write> {
    w: W,
    schema: SchemaRef,
    header: bool,
    buf: String,
}

impl<W: Write> CsvEncoder<W> {
    /// Fails when a column's type has no CSV form here.
    pub fn new(w: W, schema: SchemaRef) -> Result<Self, String> {
        for f in schema.fields() {
            check_type(f.name(), f.data_type())?;
        }
        Ok(CsvEncoder {
            w,
            schema,
            header: false,
            buf: String::with_capacity(CSV_FLUSH_BYTES + 4096),
        })
    }

    fn write_header(&mut self) {
        let names: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| csv_field(f.name()))
            .collect();
        self.buf.push_str(&names.join(","));
        self.buf.push_str("\r\n");
        self.header = true;
    }

    fn spill(&mut self) -> std::io::Result<()> {
        self.w.write_all(self.buf.as_bytes())?;
        self.buf.clear();
        Ok(())
    }
}

fn check_type(name: &str, t: &DataType) -> Result<(), String> {
    match t {
        DataType::UInt64
        | DataType::Int64
        | DataType::Utf8
        | DataType::Timestamp(TimeUnit::Microsecond, _)
        | DataType::Decimal128(_, _) => Ok(()),
        DataType::List(item) => match item.data_type() {
            DataType::Struct(fields) => {
                for f in fields {
                    check_type(&format!("{name}.{}", f.name()), f.data_type())?;
                }
                Ok(())
            }
            other => Err(format!("column {name}: a list of {other} has no CSV form")),
        },
        other => Err(format!("column {name}: {other} has no CSV form")),
    }
}

/// One column of a batch, downcast once (a list of structs: its children, downcast once).
enum Col<'a> {
    U64(&'a UInt64Array),
    I64(&'a Int64Array),
    Str(&'a StringArray),
    Ts(&'a TimestampMicrosecondArray),
    Dec(&'a Decimal128Array, u32),
    List(ListCol<'a>),
}

/// A `List<Struct>` column: the list's offsets and the struct's fields.
struct ListCol<'a> {
    list: &'a ListArray,
    /// The field names, as JSON strings with their quotes.
    names: Vec<String>,
    fields: Vec<Col<'a>>,
}

impl<'a> Col<'a> {
    fn of(a: &'a ArrayRef) -> std::io::Result<Col<'a>> {
        let unsupported =
            || std::io::Error::other(format!("a {} column has no CSV form", a.data_type()));
        let any = a.as_any();
        let col = match a.data_type() {
            DataType::UInt64 => any.downcast_ref().map(Col::U64),
            DataType::Int64 => any.downcast_ref().map(Col::I64),
            DataType::Utf8 => any.downcast_ref().map(Col::Str),
            DataType::Timestamp(TimeUnit::Microsecond, _) => any.downcast_ref().map(Col::Ts),
            DataType::Decimal128(_, s) => any
                .downcast_ref()
                .map(|d| Col::Dec(d, u32::try_from(*s).unwrap_or(0))),
            DataType::List(_) => {
                let list: &ListArray = any.downcast_ref().ok_or_else(unsupported)?;
                let st = list
                    .values()
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or_else(unsupported)?;
                let names = st
                    .fields()
                    .iter()
                    .map(|f| serde_json::Value::String(f.name().clone()).to_string())
                    .collect();
                let fields = st.columns().iter().map(Col::of).collect::<Result<_, _>>()?;
                Some(Col::List(ListCol {
                    list,
                    names,
                    fields,
                }))
            }
            _ => None,
        };
        col.ok_or_else(unsupported)
    }

    fn is_null(&self, r: usize) -> bool {
        match self {
            Col::U64(a) => a.is_null(r),
            Col::I64(a) => a.is_null(r),
            Col::Str(a) => a.is_null(r),
            Col::Ts(a) => a.is_null(r),
            Col::Dec(a, _) => a.is_null(r),
            Col::List(l) => l.list.is_null(r),
        }
    }

    /// Writes the value at `r` (not null) as a CSV field: digits, times and money need no
    /// quotes; strings and lists are quoted when they must be.
    fn csv(&self, r: usize, out: &mut String, scratch: &mut String) {
        match self {
            Col::Str(a) => push_csv_field(a.value(r), out),
            Col::List(l) => {
                scratch.clear();
                l.json(r, scratch);
                push_csv_field(scratch, out);
            }
            other => other.plain(r, out),
        }
    }

    /// A number, time or money value as text.
    fn plain(&self, r: usize, out: &mut String) {
        match self {
            Col::U64(a) => {
                let _ = write!(out, "{}", a.value(r));
            }
            Col::I64(a) => {
                let _ = write!(out, "{}", a.value(r));
            }
            Col::Str(a) => out.push_str(a.value(r)),
            Col::Ts(a) => push_iso_micros(a.value(r), out),
            Col::Dec(a, s) => push_decimal(a.value(r), *s, out),
            Col::List(l) => l.json(r, out),
        }
    }

    /// The value at `r` as JSON (money as exact numbers, times as ISO-8601 strings).
    fn json(&self, r: usize, out: &mut String) {
        if self.is_null(r) {
            out.push_str("null");
            return;
        }
        match self {
            Col::U64(_) | Col::I64(_) | Col::Dec(..) | Col::List(_) => self.plain(r, out),
            Col::Str(a) => out.push_str(&serde_json::Value::String(a.value(r).into()).to_string()),
            Col::Ts(a) => {
                out.push('"');
                push_iso_micros(a.value(r), out);
                out.push('"');
            }
        }
    }
}

impl ListCol<'_> {
    /// Row `r` as a JSON array of objects.
    fn json(&self, r: usize, out: &mut String) {
        let offsets = self.list.value_offsets();
        let (start, end) = (offsets[r].max(0) as usize, offsets[r + 1].max(0) as usize);
        out.push('[');
        for i in start..end {
            if i > start {
                out.push(',');
            }
            out.push('{');
            for (k, (name, c)) in self.names.iter().zip(&self.fields).enumerate() {
                if k > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push(':');
                c.json(i, out);
            }
            out.push('}');
        }
        out.push(']');
    }
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A microsecond UTC time as ISO-8601 (`2026-11-02T10:00:00Z`; a fraction only when
/// there is one).
fn push_iso_micros(us: i64, out: &mut String) {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        let _ = write!(out, "{us}");
        return;
    }
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if frac != 0 {
        let _ = write!(out, ".{frac:06}");
    }
    out.push('Z');
}

/// A Decimal128 value with its exact digits (trailing zeros dropped).
fn push_decimal(v: i128, scale: u32, out: &mut String) {
    match Decimal::try_from_i128_with_scale(v, scale) {
        Ok(d) => {
            let _ = write!(out, "{}", d.normalize());
        }
        // Beyond a Decimal (a foreign file): the digits by hand.
        Err(_) => {
            let digits = v.unsigned_abs().to_string();
            let scale = scale as usize;
            if v < 0 {
                out.push('-');
            }
            if scale == 0 {
                out.push_str(&digits);
            } else if digits.len() > scale {
                let (i, f) = digits.split_at(digits.len() - scale);
                let _ = write!(out, "{i}.{f}");
            } else {
                let _ = write!(out, "0.{digits:0>scale$}");
            }
        }
    }
}

#[cfg(test)]
fn decimal_text(v: i128, scale: u32) -> String {
    let mut s = String::new();
    push_decimal(v, scale, &mut s);
    s
}

/// A CSV field: quoted when it holds a comma, a quote, a line break or edge spaces.
fn csv_field(s: &str) -> String {
    let mut out = String::new();
    push_csv_field(s, &mut out);
    out
}

fn push_csv_field(s: &str, out: &mut String) {
    let needs = s.contains([',', '"', '\r', '\n']) || s.starts_with(' ') || s.ends_with(' ');
    if needs {
        out.push('"');
        for c in s.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(s);
    }
}

impl<W: Write> XdrSink for CsvEncoder<W> {
    fn write(&mut self, b: &RecordBatch) -> std::io::Result<()> {
        if !self.header {
            self.write_header();
        }
        let cols: Vec<Col<'_>> = b.columns().iter().map(Col::of).collect::<Result<_, _>>()?;
        let mut scratch = String::new();
        for r in 0..b.num_rows() {
            for (k, c) in cols.iter().enumerate() {
                if k > 0 {
                    self.buf.push(',');
                }
                if !c.is_null(r) {
                    c.csv(r, &mut self.buf, &mut scratch);
                }
            }
            self.buf.push_str("\r\n");
            if self.buf.len() >= CSV_FLUSH_BYTES {
                self.spill()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if !self.header {
            self.write_header();
        }
        self.spill()?;
        self.w.flush()
    }
}

// ---- Parquet ------------------------------------------------------------------------------

/// Columns of an exported file that carry row-group statistics (min/max): the ids and
/// times readers filter on.
const EXPORT_STATISTICS_COLUMNS: [&str; 4] = ["xdr_id", "user_id", "login_time", "logout_time"];

/// The settings of an exported Parquet file, every knob explicit: zstd, row groups of
/// [`EXPORT_ROW_GROUP_ROWS`] (so the writer's buffer stays small), statistics on
/// [`EXPORT_STATISTICS_COLUMNS`] only. With chunk statistics on every column the writer's
/// memory grew by about 25 MiB per million rows (measured over a 10M-xDR data dir:
/// statistics are kept until the footer), so a download would grow with its rows; with
/// them on these columns only it stays flat.
pub fn export_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("zstd level 1"),
        ))
        .set_max_row_group_row_count(Some(EXPORT_ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(ratel_engine::xdr::PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_dictionary_enabled(true)
        .set_created_by(format!("ratel {} export", env!("CARGO_PKG_VERSION")));
    for c in EXPORT_STATISTICS_COLUMNS {
        b = b.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::Chunk);
    }
    b.build()
}

/// Parquet: row groups written out as they fill, the footer at the end. Readable by
/// pyarrow and DuckDB with the xDR schema (Decimal128(38, 10) money, UTC timestamps).
pub struct ParquetEncoder<W: Write + Send> {
    w: Option<ArrowWriter<W>>,
    /// The underlying writer once the footer is written.
    done: Option<W>,
}

impl<W: Write + Send> ParquetEncoder<W> {
    pub fn new(w: W, schema: SchemaRef) -> Result<Self, String> {
        let w = ArrowWriter::try_new(w, schema, Some(export_properties()))
            .map_err(|e| e.to_string())?;
        Ok(ParquetEncoder {
            w: Some(w),
            done: None,
        })
    }

    /// The output, after [`XdrSink::finish`].
    pub fn into_inner(self) -> Option<W> {
        self.done
    }
}

fn pq_io(e: parquet::errors::ParquetError) -> std::io::Error {
    match e {
        parquet::errors::ParquetError::External(inner) => std::io::Error::other(inner),
        other => std::io::Error::other(other.to_string()),
    }
}

impl<W: Write + Send> XdrSink for ParquetEncoder<W> {
    fn write(&mut self, b: &RecordBatch) -> std::io::Result<()> {
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the Parquet output is finished"))?;
        // Text columns of only empty values, as read, would cost the writer ~200 ns a value.
        w.write(&ratel_engine::xdr::with_addressable_text(b))
            .map_err(pq_io)?;
        if w.memory_size() >= EXPORT_ROW_GROUP_BYTES {
            w.flush().map_err(pq_io)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.w.take() {
            let mut inner = w.into_inner().map_err(pq_io)?;
            inner.flush()?;
            self.done = Some(inner);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratel_engine::xdr::OwnedDetail;

    fn xdr(id: u64, user: Option<i64>, logout: i64, credit: &str) -> OwnedXdr {
        OwnedXdr {
            xdr_id: id,
            service_type: "VoIP".into(),
            status: "OK".into(),
            user_id: user,
            username: "a,b \"q\"".into(),
            login_time: logout - 60,
            logout_time: logout,
            credit_used: credit.parse().unwrap(),
            details: vec![OwnedDetail {
                rule: "day".into(),
                start: logout - 60,
                end: logout,
                seconds: 60,
                bytes_in: 1,
                bytes_out: 2,
                credit: credit.parse().unwrap(),
            }],
            ..OwnedXdr::default()
        }
    }

    fn batch(rows: &[OwnedXdr]) -> RecordBatch {
        let mut b = XdrBuilder::with_capacity(rows.len());
        for x in rows {
            x.push_to(&mut b);
        }
        b.finish().unwrap()
    }

    #[test]
    fn csv_has_the_schema_columns_and_exact_values() {
        let schema = ratel_engine::xdr::schema();
        let mut enc = CsvEncoder::new(Vec::new(), schema.clone()).unwrap();
        enc.write(&batch(&[xdr(7, Some(3), 1_793_613_600, "0.0123")]))
            .unwrap();
        enc.finish().unwrap();
        let text = String::from_utf8(enc.w).unwrap();
        let mut lines = text.split("\r\n");
        let header = lines.next().unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(header, names.join(","));
        let line = lines.next().unwrap();
        assert!(line.starts_with("7,VoIP,OK,3,\"a,b \"\"q\"\"\","), "{line}");
        assert!(line.contains(",2026-11-02T10:00:00Z,"), "{line}");
        assert!(line.contains(",0.0123,0,0,"), "{line}");
        assert!(
            line.contains(r#""[{""rule"":""day"",""start"":""2026-11-02T09:59:00Z"",""end"":""2026-11-02T10:00:00Z"",""seconds"":60,""bytes_in"":1,""bytes_out"":2,""credit"":0.0123}]""#),
            "{line}"
        );
        // account and refund_of are null: empty fields.
        assert_eq!(lines.next(), Some(""));
    }

    #[test]
    fn an_empty_export_is_a_header_or_a_valid_empty_file() {
        let schema = ratel_engine::xdr::schema();
        let mut csv = CsvEncoder::new(Vec::new(), schema.clone()).unwrap();
        csv.finish().unwrap();
        assert_eq!(String::from_utf8(csv.w).unwrap().matches("\r\n").count(), 1);
        let mut pq = ParquetEncoder::new(Vec::new(), schema.clone()).unwrap();
        pq.finish().unwrap();
        let bytes = axum::body::Bytes::from(pq.into_inner().unwrap());
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 0);
        assert_eq!(r.schema().fields().len(), schema.fields().len());
    }

    #[test]
    fn parquet_round_trips_and_keeps_row_groups_small() {
        let schema = ratel_engine::xdr::schema();
        let rows: Vec<OwnedXdr> = (0..(EXPORT_ROW_GROUP_ROWS as u64 + 10))
            .map(|i| xdr(i + 1, Some(1), 1_793_613_600 + i as i64, "0.0001"))
            .collect();
        let mut pq = ParquetEncoder::new(Vec::new(), schema).unwrap();
        for c in rows.chunks(BATCH_ROWS) {
            pq.write(&batch(c)).unwrap();
        }
        pq.finish().unwrap();
        let bytes = axum::body::Bytes::from(pq.into_inner().unwrap());
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(r.metadata().num_row_groups(), 2);
        let mut n = 0;
        let mut sum = Decimal::ZERO;
        for b in r.build().unwrap() {
            let b = b.unwrap();
            let c = b
                .column_by_name("credit_used")
                .unwrap()
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .unwrap()
                .clone();
            for i in 0..b.num_rows() {
                sum += ratel_engine::xdr::money_from_i128(c.value(i)).unwrap();
            }
            n += b.num_rows();
        }
        assert_eq!(n, rows.len());
        assert_eq!(sum, Decimal::new(rows.len() as i64, 4));
    }

    #[test]
    fn older_files_get_the_new_columns() {
        let schema = ratel_engine::xdr::schema();
        let full = batch(&[xdr(1, None, 1_793_613_600, "1")]);
        // A file written before `refund_of` and the last columns existed.
        let keep: Vec<usize> = (0..full.num_columns())
            .filter(|&i| {
                !matches!(
                    full.schema().field(i).name().as_str(),
                    "refund_of" | "account" | "package_seconds" | "package_bytes"
                )
            })
            .collect();
        let old = full.project(&keep).unwrap();
        let b = conform(&old, &schema).unwrap();
        assert_eq!(b.schema(), schema);
        assert!(b.column_by_name("refund_of").unwrap().is_null(0));
        // A column of another type is refused, not mixed in.
        let mut cols = full.columns().to_vec();
        let i = full.schema().index_of("xdr_id").unwrap();
        cols[i] = Arc::new(Int64Array::from(vec![1]));
        let fields: Vec<Field> = full
            .schema()
            .fields()
            .iter()
            .enumerate()
            .map(|(k, f)| {
                if k == i {
                    Field::new("xdr_id", DataType::Int64, false)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        let odd = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols).unwrap();
        assert!(conform(&odd, &schema).unwrap_err().contains("xdr_id"));
    }

    /// A file of the snapshot (still under its temp name: committed, not yet renamed) and
    /// the outbox rows, filtered by logout range and client, into one output.
    #[test]
    fn files_and_outbox_rows_are_filtered_into_one_output() {
        let t = 1_793_613_600;
        let dir = std::env::temp_dir().join(format!(
            "ratel-export-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let final_path = dir.join("date=2026-11-02").join("x.parquet");
        let rows = [
            xdr(1, Some(1), t, "0.01"),
            xdr(2, Some(2), t + 10, "0.02"),
            xdr(3, Some(1), t + 100_000, "0.04"),
            xdr(4, None, t + 20, "0"),
        ];
        ratel_engine::xdr::write_temp(&final_path, &batch(&rows)).unwrap();
        let export = |user_id: Option<i64>| XdrExport {
            files: vec![(final_path.clone(), None)],
            outbox: vec![xdr(5, Some(1), t + 5, "0.08")],
            from: t,
            to_incl: t + 49,
            user_id,
            schema: ratel_engine::xdr::schema(),
        };
        let ids = |user_id: Option<i64>| -> Vec<String> {
            let mut csv = CsvEncoder::new(Vec::new(), ratel_engine::xdr::schema()).unwrap();
            let n = export(user_id).run(&mut csv).unwrap();
            let text = String::from_utf8(csv.w).unwrap();
            let ids: Vec<String> = text
                .split("\r\n")
                .skip(1)
                .filter(|l| !l.is_empty())
                .map(|l| l.split(',').next().unwrap().to_string())
                .collect();
            assert_eq!(n as usize, ids.len());
            ids
        };
        // (Outbox rows are chosen when the export is made, by the same filter.)
        assert_eq!(ids(Some(1)), ["1", "5"]);
        assert_eq!(ids(None), ["1", "2", "4", "5"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The hand-written ISO-8601 of a time equals chrono's, across eras, leap days and
    /// fractions.
    #[test]
    fn times_are_iso_8601_as_chrono_writes_them() {
        let mut t: i64 = -62_135_596_800_000_000; // 0001-01-01
        let mut step: i64 = 1;
        while t < 253_402_300_799_000_000 {
            let mut got = String::new();
            push_iso_micros(t, &mut got);
            let c = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t).unwrap();
            let want = if t.rem_euclid(1_000_000) == 0 {
                c.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                c.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            };
            assert_eq!(got, want, "{t}");
            t = t.saturating_add(step);
            step = step.saturating_mul(3) / 2 + 7_919;
        }
        // Every day of 1900..2100, at a second that moves through the day.
        for day in -25_567i64..47_482 {
            let secs = day * 86_400 + (day * 7_919).rem_euclid(86_400);
            let mut got = String::new();
            push_iso_micros(secs * 1_000_000, &mut got);
            let c = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0).unwrap();
            assert_eq!(got, c.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "{secs}");
        }
    }

    #[test]
    fn decimals_beyond_rust_decimal_keep_their_digits() {
        assert_eq!(decimal_text(12_300_000_000, 10), "1.23");
        assert_eq!(decimal_text(i128::MAX, 10).len(), 40);
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(
            decimal_text(-(1i128 << 100), 10),
            "-126765060022822940149.6703205376"
        );
    }
}
