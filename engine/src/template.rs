//! CDR import templates (`[[cdr_format]]`): which column holds the account, the callee, the
//! start, the billable seconds, whether the call was answered and its call id, in a file of
//! a given delimiter, with or without a header. The built-in `generic`, `asterisk` and
//! `freeswitch` formats are templates of the same mechanism ([`Template::builtin`]).
//!
//! A [`Template`] is validated once at config load (indices, names against a declared
//! `columns` list, the time format); a file with a header resolves its named columns when it
//! is opened ([`Template::reader`]), and the resulting [`crate::cdr::Reader`] parses records.

use serde::Deserialize;

/// `[[cdr_format]]` as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrFormatConfig {
    /// Name used by `ratel rate --format NAME`, `[cdr] format` and the spool.
    pub name: String,
    /// Field delimiter: one character (`,` `;` `\t` `|` …). Default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// The first line names the columns (columns may then be given by name).
    #[serde(default)]
    pub header: bool,
    /// Names of the columns of a file without a header (so they can be used by name).
    #[serde(default)]
    pub columns: Vec<String>,
    /// `iso8601` (Z or an offset), `unix` (seconds), or a strftime pattern such as
    /// `%Y/%m/%d %H:%M`, read in `rating.time_zone` unless it has `%z`. Default: `YYYY-MM-DD
    /// HH:MM:SS` local time.
    #[serde(default)]
    pub time_format: Option<String>,
    /// The subscriber's account (matched against usernames).
    pub account: ColumnRef,
    /// The calling number (optional).
    #[serde(default)]
    pub caller: Option<ColumnRef>,
    /// The called number.
    pub callee: ColumnRef,
    /// The call's start: one column, or `{ answer = …, fallback = … }` (fallback when the
    /// answer column is empty).
    pub start: StartRef,
    /// Billable seconds (one of billsec, duration, end).
    #[serde(default)]
    pub billsec: Option<ColumnRef>,
    /// Seconds of the call, billed as they are.
    #[serde(default)]
    pub duration: Option<ColumnRef>,
    /// The call's end time: billable seconds = end − start.
    #[serde(default)]
    pub end: Option<ColumnRef>,
    /// `{ column = …, equals = "ANSWERED" }`, or `"billsec > 0"` (the default).
    #[serde(default)]
    pub answered: Option<AnsweredRef>,
    /// Column(s) joined into the call id; empty columns → a hash of the record.
    #[serde(default)]
    pub call_id: Option<CallIdRef>,
    /// Spool files whose name matches this glob (`*` and `?`) are read with this format.
    #[serde(default)]
    pub files: Option<String>,
}

fn default_delimiter() -> String {
    ",".into()
}

/// A column by 0-based index or by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    Index(i64),
    Name(String),
}

/// The start column, optionally with a fallback.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StartRef {
    One(ColumnRef),
    WithFallback {
        answer: ColumnRef,
        fallback: ColumnRef,
    },
}

/// How to tell an answered call.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AnsweredRef {
    Rule(String),
    Equals { column: ColumnRef, equals: String },
}

/// One or more call-id columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CallIdRef {
    One(ColumnRef),
    Many(Vec<ColumnRef>),
}

/// A column of a compiled template: an index, or a name resolved against a file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Col {
    At(usize),
    Named(String),
}

/// A column and the name it is reported by in bad-line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub col: Col,
    pub label: String,
}

impl Field {
    fn at(i: usize, label: &str) -> Field {
        Field {
            col: Col::At(i),
            label: label.into(),
        }
    }
    fn named(n: &str) -> Field {
        Field {
            col: Col::Named(n.into()),
            label: n.into(),
        }
    }
    /// The resolved index (panics on an unresolved name: [`Template::reader`] resolves all).
    pub fn idx(&self) -> usize {
        match self.col {
            Col::At(i) => i,
            Col::Named(_) => unreachable!("columns are resolved before parsing"),
        }
    }
}

/// How times are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeFormat {
    /// ISO-8601 with `Z` or an offset.
    Iso,
    /// `YYYY-MM-DD HH:MM:SS` in `rating.time_zone`.
    Local,
    /// Unix seconds.
    Unix,
    /// A strftime pattern; `offset` when it carries `%z` (else read in the zone).
    Strftime { pattern: String, offset: bool },
}

/// Where the billable seconds come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billable {
    Billsec(Field),
    Duration(Field),
    End(Field),
}

/// How an answered call is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    Equals(Field, String),
    BillablePositive,
}

/// A compiled CDR layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub delimiter: u8,
    pub header: bool,
    pub time: TimeFormat,
    pub account: Field,
    pub caller: Option<Field>,
    pub callee: Field,
    pub start: Field,
    pub start_fallback: Option<Field>,
    pub billable: Billable,
    pub answered: Answered,
    /// Written to the xDR's `terminate_cause`.
    pub disposition: Option<Field>,
    /// Joined with `:` into the call id; a missing or empty column → a record hash.
    pub call_id: Vec<Field>,
    /// An empty call id is a bad line (`call_id: empty`) instead of a record hash.
    pub call_id_required: bool,
    /// Fewest fields a record must have (reported as `expected at least N fields`).
    pub min_fields: usize,
    /// Spool file-name glob.
    pub files: Option<String>,
}

/// Names of the built-in formats.
pub const BUILTIN: [&str; 3] = ["generic", "asterisk", "freeswitch"];

impl Template {
    /// The built-in formats of DESIGN.md "CDR file formats".
    pub fn builtin(name: &str) -> Option<Template> {
        Some(match name {
            "generic" => Template {
                name: name.into(),
                delimiter: b',',
                header: true,
                time: TimeFormat::Iso,
                account: Field::named("account"),
                caller: Some(Field::named("caller")),
                callee: Field::named("callee"),
                start: Field::named("start_time"),
                start_fallback: None,
                billable: Billable::Billsec(Field::named("duration_s")),
                answered: Answered::Equals(Field::named("disposition"), "ANSWERED".into()),
                disposition: Some(Field::named("disposition")),
                call_id: vec![Field::named("call_id")],
                call_id_required: true,
                min_fields: 0,
                files: None,
            },
            // accountcode(0), src, dst, dcontext, clid, channel, dstchannel, lastapp,
            // lastdata, start(9), answer, end, duration, billsec(13), disposition,
            // amaflags(15)[, uniqueid(16), userfield[, peeraccount, linkedid, sequence(20)]]
            "asterisk" => Template {
                name: name.into(),
                delimiter: b',',
                header: false,
                time: TimeFormat::Local,
                account: Field::at(0, "accountcode"),
                caller: Some(Field::at(1, "src")),
                callee: Field::at(2, "dst"),
                start: Field::at(10, "answer"),
                start_fallback: Some(Field::at(9, "start")),
                billable: Billable::Billsec(Field::at(13, "billsec")),
                answered: Answered::Equals(Field::at(14, "disposition"), "ANSWERED".into()),
                disposition: Some(Field::at(14, "disposition")),
                call_id: vec![Field::at(16, "uniqueid"), Field::at(20, "sequence")],
                call_id_required: false,
                min_fields: 16,
                files: None,
            },
            // caller_id_name, caller_id_number(1), destination_number(2), context,
            // start_stamp(4), answer_stamp(5), end_stamp, duration, billsec(8),
            // hangup_cause(9), uuid(10), bleg_uuid, accountcode(12)[, codecs]
            "freeswitch" => Template {
                name: name.into(),
                delimiter: b',',
                header: false,
                time: TimeFormat::Local,
                account: Field::at(12, "accountcode"),
                caller: Some(Field::at(1, "caller_id_number")),
                callee: Field::at(2, "destination_number"),
                start: Field::at(5, "answer_stamp"),
                start_fallback: Some(Field::at(4, "start_stamp")),
                billable: Billable::Billsec(Field::at(8, "billsec")),
                answered: Answered::BillablePositive,
                disposition: Some(Field::at(9, "hangup_cause")),
                call_id: vec![Field::at(10, "uuid")],
                call_id_required: true,
                min_fields: 13,
                files: None,
            },
            _ => return None,
        })
    }

    /// Validates a `[[cdr_format]]`; `Err((key, reason))` names the offending key.
    pub fn compile(c: &CdrFormatConfig) -> Result<Template, (String, String)> {
        let err = |key: &str, reason: String| (key.to_string(), reason);
        if c.name.trim().is_empty() || BUILTIN.contains(&c.name.as_str()) {
            return Err(err(
                "name",
                format!("{:?}: empty or the name of a built-in format", c.name),
            ));
        }
        let delimiter = match c.delimiter.as_bytes() {
            [b] if *b != b'"' && *b != b'\n' && *b != b'\r' && b.is_ascii() => *b,
            _ if c.delimiter == "\\t" => b'\t',
            _ => {
                return Err(err(
                    "delimiter",
                    format!(
                        "{:?} is not one ASCII character other than a quote or newline",
                        c.delimiter
                    ),
                ))
            }
        };
        let col = |key: &str, r: &ColumnRef| -> Result<Field, (String, String)> {
            match r {
                ColumnRef::Index(i) if (0..=4096).contains(i) => Ok(Field {
                    col: Col::At(*i as usize),
                    label: match c.columns.get(*i as usize) {
                        Some(n) => n.clone(),
                        None => key.to_string(),
                    },
                }),
                ColumnRef::Index(i) => {
                    Err(err(key, format!("{i} is not a column index (0..=4096)")))
                }
                ColumnRef::Name(n) => {
                    if let Some(i) = c.columns.iter().position(|x| x.eq_ignore_ascii_case(n)) {
                        Ok(Field::at(i, n))
                    } else if c.header {
                        Ok(Field::named(n))
                    } else if c.columns.is_empty() {
                        Err(err(
                            key,
                            format!(
                                "{n:?}: a column name needs `header = true` or a `columns` list"
                            ),
                        ))
                    } else {
                        Err(err(key, format!("no column named {n:?} in `columns`")))
                    }
                }
            }
        };
        let (start, start_fallback) = match &c.start {
            StartRef::One(r) => (col("start", r)?, None),
            StartRef::WithFallback { answer, fallback } => (
                col("start.answer", answer)?,
                Some(col("start.fallback", fallback)?),
            ),
        };
        let billable = match (&c.billsec, &c.duration, &c.end) {
            (Some(r), None, None) => Billable::Billsec(col("billsec", r)?),
            (None, Some(r), None) => Billable::Duration(col("duration", r)?),
            (None, None, Some(r)) => Billable::End(col("end", r)?),
            _ => {
                return Err(err(
                    "billsec",
                    "give exactly one of billsec, duration, end".into(),
                ))
            }
        };
        let (answered, disposition) = match &c.answered {
            None => (Answered::BillablePositive, None),
            Some(AnsweredRef::Rule(r)) if r.replace(' ', "") == "billsec>0" => {
                (Answered::BillablePositive, None)
            }
            Some(AnsweredRef::Rule(r)) => {
                return Err(err(
                    "answered",
                    format!("{r:?}: expected \"billsec > 0\" or {{ column = …, equals = \"…\" }}"),
                ))
            }
            Some(AnsweredRef::Equals { column, equals }) => {
                let f = col("answered.column", column)?;
                (Answered::Equals(f.clone(), equals.clone()), Some(f))
            }
        };
        if matches!(&c.call_id, Some(CallIdRef::Many(v)) if v.len() > 4) {
            return Err(err("call_id", "at most 4 columns".into()));
        }
        let call_id = match &c.call_id {
            None => Vec::new(),
            Some(CallIdRef::One(r)) => vec![col("call_id", r)?],
            Some(CallIdRef::Many(rs)) => rs
                .iter()
                .enumerate()
                .map(|(i, r)| col(&format!("call_id[{i}]"), r))
                .collect::<Result<_, _>>()?,
        };
        let time = match c.time_format.as_deref() {
            None => TimeFormat::Local,
            Some("iso8601") => TimeFormat::Iso,
            Some("unix") => TimeFormat::Unix,
            Some(p) => {
                use chrono::format::{Item, StrftimeItems};
                if StrftimeItems::new(p).any(|i| matches!(i, Item::Error)) {
                    return Err(err(
                        "time_format",
                        format!("{p:?} is not a strftime pattern"),
                    ));
                }
                TimeFormat::Strftime {
                    pattern: p.to_string(),
                    offset: p.contains("%z") || p.contains("%:z") || p.contains("%#z"),
                }
            }
        };
        let mut t = Template {
            name: c.name.clone(),
            delimiter,
            header: c.header,
            time,
            account: col("account", &c.account)?,
            caller: c.caller.as_ref().map(|r| col("caller", r)).transpose()?,
            callee: col("callee", &c.callee)?,
            start,
            start_fallback,
            billable,
            answered,
            disposition,
            call_id,
            call_id_required: false,
            min_fields: 0,
            files: c.files.clone(),
        };
        t.min_fields = t.required_max().map_or(0, |m| m + 1);
        Ok(t)
    }

    /// Every column a record must have (call-id columns are optional).
    fn required(&self) -> Vec<&Field> {
        let mut v = vec![&self.account, &self.callee, &self.start];
        v.extend(self.caller.iter());
        v.extend(self.start_fallback.iter());
        v.push(match &self.billable {
            Billable::Billsec(f) | Billable::Duration(f) | Billable::End(f) => f,
        });
        if let Answered::Equals(f, _) = &self.answered {
            v.push(f);
        }
        v.extend(self.disposition.iter());
        v
    }

    fn required_max(&self) -> Option<usize> {
        self.required()
            .into_iter()
            .filter_map(|f| match f.col {
                Col::At(i) => Some(i),
                Col::Named(_) => None,
            })
            .max()
    }

    /// A reader for one file: named columns resolved against its header line (when the
    /// template has one). `Err` is the reason, for `file:1: reason`.
    pub fn reader(&self, header: Option<&[u8]>) -> Result<crate::cdr::Reader, String> {
        let mut t = self.clone();
        if t.header {
            let names: Vec<String> =
                crate::csv::split_fields_with(header.unwrap_or(b""), t.delimiter)
                    .map(|f| String::from_utf8_lossy(&f).trim().to_ascii_lowercase())
                    .collect();
            let builtin = BUILTIN.contains(&t.name.as_str());
            let resolve = |f: &mut Field| -> Result<(), String> {
                if let Col::Named(n) = &f.col {
                    let i = names.iter().position(|x| x.eq_ignore_ascii_case(n)).ok_or_else(|| {
                        if builtin {
                            format!("header has no `{n}` column (expected call_id,caller,callee,start_time,duration_s,disposition,account)")
                        } else {
                            format!("header has no `{n}` column (format {})", self.name)
                        }
                    })?;
                    f.col = Col::At(i);
                }
                Ok(())
            };
            // In the order a reader of the generic header expects them named.
            for f in t.call_id.iter_mut() {
                resolve(f)?;
            }
            if let Some(f) = t.caller.as_mut() {
                resolve(f)?;
            }
            resolve(&mut t.callee)?;
            resolve(&mut t.start)?;
            if let Some(f) = t.start_fallback.as_mut() {
                resolve(f)?;
            }
            match &mut t.billable {
                Billable::Billsec(f) | Billable::Duration(f) | Billable::End(f) => resolve(f)?,
            }
            if let Answered::Equals(f, _) = &mut t.answered {
                resolve(f)?;
            }
            if let Some(f) = t.disposition.as_mut() {
                resolve(f)?;
            }
            resolve(&mut t.account)?;
            let all_max = t
                .required()
                .into_iter()
                .chain(t.call_id.iter())
                .map(|f| f.idx())
                .max()
                .unwrap_or(0);
            // A header file's records carry every column the header names.
            t.min_fields = t.min_fields.max(all_max + 1);
        }
        Ok(crate::cdr::Reader::new(t))
    }
}

/// Whether `name` matches the glob `pat` (`*` any run, `?` one character).
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> CdrFormatConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn compile_errors_name_the_key() {
        let base = "name = \"x\"\naccount = 0\ncallee = 1\nstart = 2\nbillsec = 3\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "delimiter = \";;\"\n",
                "delimiter",
                "not one ASCII character",
            ),
            (
                "caller = \"src\"\n",
                "caller",
                "needs `header = true` or a `columns` list",
            ),
            (
                "columns = [\"a\"]\ncaller = \"src\"\n",
                "caller",
                "no column named \"src\"",
            ),
            ("caller = -1\n", "caller", "not a column index"),
            ("duration = 4\n", "billsec", "exactly one of"),
            (
                "answered = \"yes\"\n",
                "answered",
                "expected \"billsec > 0\"",
            ),
            (
                "time_format = \"%Y-%Q\"\n",
                "time_format",
                "not a strftime pattern",
            ),
        ];
        for (extra, key, reason) in cases {
            let e = Template::compile(&cfg(&format!("{base}{extra}"))).unwrap_err();
            assert_eq!(e.0, *key, "{extra}");
            assert!(e.1.contains(reason), "{extra}: {}", e.1);
        }
        let t = Template::compile(&cfg(base)).unwrap();
        assert_eq!(t.min_fields, 4);
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*.csv", "a.csv", true),
            ("*.csv", "a.csv.gz", false),
            ("pbx2-*.csv*", "pbx2-1.csv.gz", true),
            ("?.csv", "ab.csv", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} {n}");
        }
    }
}
