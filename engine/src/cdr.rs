//! CDR readers for the three formats of DESIGN.md (generic, Asterisk cdr_csv, FreeSWITCH
//! cdr_csv): one CSV record in, one [`Cdr`] (or a reason it is bad) out. Pure: the time zone
//! is passed in, nothing is read from the clock.

use std::borrow::Cow;

use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;

use crate::csv::split_fields_with;
use crate::template::{Answered, Billable, Field, Template, TimeFormat};

/// One call detail record, borrowing from the file's buffer where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr<'a> {
    /// 1-based line number in the file.
    pub line: u64,
    /// The call id: the key of exactly-once rating (two records with one id are one call
    /// record seen twice).
    pub call_id: Cow<'a, str>,
    pub account: Cow<'a, str>,
    pub caller: Cow<'a, str>,
    pub callee: Cow<'a, str>,
    /// Call start (answer time where the format has one), unix seconds.
    pub start: i64,
    /// Billable seconds.
    pub duration_secs: i64,
    pub answered: bool,
    /// Disposition / hangup cause, as written.
    pub disposition: Cow<'a, str>,
}

fn text<'a>(f: Cow<'a, [u8]>, field: &str) -> Result<Cow<'a, str>, String> {
    match f {
        Cow::Borrowed(b) => std::str::from_utf8(b)
            .map(Cow::Borrowed)
            .map_err(|_| format!("{field}: not UTF-8")),
        Cow::Owned(v) => String::from_utf8(v)
            .map(Cow::Owned)
            .map_err(|_| format!("{field}: not UTF-8")),
    }
}

fn int(s: &str, field: &str) -> Result<i64, String> {
    let t = crate::csv::trim(s);
    t.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| format!("{field}: {t:?} is not a non-negative whole number of seconds"))
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.frac]` into a naive date-time and the rest of the input.
fn parse_naive(s: &[u8]) -> Option<(NaiveDateTime, &[u8])> {
    if s.len() < 19
        || s[4] != b'-'
        || s[7] != b'-'
        || !(s[10] == b'T' || s[10] == b' ' || s[10] == b't')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let y = digits(&s[0..4])? as i32;
    let mo = digits(&s[5..7])?;
    let d = digits(&s[8..10])?;
    let h = digits(&s[11..13])?;
    let mi = digits(&s[14..16])?;
    let se = digits(&s[17..19])?;
    let mut rest = &s[19..];
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &rest[1 + n..];
    }
    let dt = NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_opt(h, mi, se)?;
    Some((dt, rest))
}

/// ISO-8601 with `Z` or an offset (`+02:00`, `+0200`), to unix seconds.
pub fn parse_iso(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an ISO-8601 time with Z or an offset");
    let (naive, rest) = parse_naive(crate::csv::trim(s).as_bytes()).ok_or_else(bad)?;
    let base = naive.and_utc().timestamp();
    match rest {
        b"Z" | b"z" => Ok(base),
        [sign @ (b'+' | b'-'), h1, h2, rest @ ..] => {
            let mins = match rest {
                [b':', m1, m2] | [m1, m2] => digits(&[*m1, *m2]).ok_or_else(bad)?,
                [] => 0,
                _ => return Err(bad()),
            };
            let hours = digits(&[*h1, *h2]).ok_or_else(bad)?;
            if hours > 23 || mins > 59 {
                return Err(bad());
            }
            let off = (hours * 3600 + mins * 60) as i64;
            Ok(if *sign == b'+' {
                base - off
            } else {
                base + off
            })
        }
        _ => Err(bad()),
    }
}

/// `YYYY-MM-DD HH:MM:SS` local time in `tz`, to unix seconds. An ambiguous time (the
/// repeated hour of a DST change) is read as the first of the two instants; a time inside a
/// spring-forward gap, which a correct clock never shows, as the instant after the gap.
pub fn parse_local(s: &str, tz: &Tz) -> Result<i64, String> {
    let (naive, rest) = parse_naive(crate::csv::trim(s).as_bytes())
        .filter(|(_, r)| r.is_empty())
        .ok_or_else(|| format!("{s:?} is not a YYYY-MM-DD HH:MM:SS time"))?;
    let _ = rest;
    if *tz == Tz::UTC {
        return Ok(naive.and_utc().timestamp());
    }
    // The first instant showing that wall time: the earlier of an ambiguous pair, the end
    // of a spring-forward gap.
    Ok(crate::schedule::local_to_utc_after(tz, naive, i64::MIN))
}

/// A [`Template`] resolved for one file: parses its records.
#[derive(Debug, Clone)]
pub struct Reader {
    t: Template,
}

impl Reader {
    /// A reader of a template whose columns are all indices (see [`Template::reader`]).
    pub(crate) fn new(t: Template) -> Reader {
        Reader { t }
    }

    /// A built-in format without a header (`asterisk`, `freeswitch`).
    pub fn builtin(name: &str) -> Option<Reader> {
        Template::builtin(name)
            .filter(|t| !t.header)
            .map(Reader::new)
    }

    /// The built-in `generic` format with the given header line.
    pub fn generic(header: &[u8]) -> Result<Reader, String> {
        Template::builtin("generic")
            .expect("built in")
            .reader(Some(header))
    }

    pub fn template(&self) -> &Template {
        &self.t
    }

    /// Parses one record. `Err` carries the reason (field and problem) for the bad-line
    /// report.
    pub fn parse<'a>(&self, rec: &'a [u8], line: u64, tz: &Tz) -> Result<Cdr<'a>, String> {
        self.parse_with(rec, line, tz, &mut Vec::new())
    }

    /// [`Reader::parse`] with a reusable field buffer (the hot path). Only the columns the
    /// template reads must decode; the others may hold any bytes.
    pub fn parse_with<'a>(
        &self,
        rec: &'a [u8],
        line: u64,
        tz: &Tz,
        f: &mut Vec<Cow<'a, [u8]>>,
    ) -> Result<Cdr<'a>, String> {
        let t = &self.t;
        f.clear();
        f.extend(split_fields_with(rec, t.delimiter));
        if f.len() < t.min_fields {
            return Err(format!(
                "expected at least {} fields, found {}",
                t.min_fields,
                f.len()
            ));
        }
        let get = |fl: &Field| -> Result<Cow<'a, str>, String> {
            match f.get(fl.idx()) {
                Some(v) => text(v.clone(), &fl.label),
                None => Ok(Cow::Borrowed("")),
            }
        };
        let mut ids: [Cow<'a, str>; 4] = Default::default();
        for (slot, fl) in ids.iter_mut().zip(&t.call_id) {
            *slot = get(fl)?;
        }
        let account = get(&t.account)?;
        let caller = match &t.caller {
            Some(fl) => get(fl)?,
            None => Cow::Borrowed(""),
        };
        let callee = get(&t.callee)?;
        let start_s = get(&t.start)?;
        let fallback_s = match &t.start_fallback {
            Some(fl) => Some((get(fl)?, fl)),
            None => None,
        };
        let billable_s = match &t.billable {
            Billable::Billsec(fl) | Billable::Duration(fl) | Billable::End(fl) => (get(fl)?, fl),
        };
        let answered_s = match &t.answered {
            Answered::Equals(fl, v) => Some((get(fl)?, v)),
            Answered::BillablePositive => None,
        };
        let disposition = match &t.disposition {
            Some(fl) => get(fl)?,
            None => Cow::Borrowed(""),
        };
        // The call's start (its answer time where the format has one; an unanswered call
        // has none, so the fallback).
        let (start_v, start_field) = match fallback_s {
            Some((fb, fl)) if start_s.trim().is_empty() => (fb, fl),
            _ => (start_s, &t.start),
        };
        let start =
            parse_time(&t.time, &start_v, tz).map_err(|e| format!("{}: {e}", start_field.label))?;
        let duration_secs = match &t.billable {
            Billable::Billsec(_) | Billable::Duration(_) => {
                int(&billable_s.0, &billable_s.1.label)?
            }
            Billable::End(fl) => {
                let end = parse_time(&t.time, &billable_s.0, tz)
                    .map_err(|e| format!("{}: {e}", fl.label))?;
                end.checked_sub(start)
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| format!("{}: before the call's start", fl.label))?
            }
        };
        let answered = match answered_s {
            Some((v, want)) => v.trim().eq_ignore_ascii_case(want),
            None => duration_secs > 0,
        };
        let call_id = call_id(t, &mut ids, rec)?;
        Ok(Cdr {
            line,
            call_id,
            account,
            caller,
            callee,
            start,
            duration_secs,
            answered,
            disposition,
        })
    }
}

/// The call id of a record (DESIGN.md "CDR file formats"): one column as written; several
/// columns joined with `:` when all are there (Asterisk's `uniqueid:sequence`), the ones
/// that are there and `:` and a hash of the whole record when some are missing
/// (`uniqueid:<hash>`), `h:<hash>` when the first (the call's own id) is missing. So the
/// legs of one Asterisk call (sharing a uniqueid) are separate records, and only a repeat
/// of the same record — in any copy of the file — gets the same id. The hash is XXH3 over the record's bytes (a fixed
/// algorithm: ids stay stable across versions).
fn call_id<'a>(
    t: &Template,
    ids: &mut [Cow<'a, str>; 4],
    rec: &[u8],
) -> Result<Cow<'a, str>, String> {
    let n = t.call_id.len().min(ids.len());
    let hash128 = || Cow::Owned(format!("h:{:032x}", xxhash_rust::xxh3::xxh3_128(rec)));
    if n == 1 {
        return if !ids[0].trim().is_empty() {
            Ok(std::mem::take(&mut ids[0]))
        } else if t.call_id_required {
            Err(format!("{}: empty", t.call_id[0].label))
        } else {
            Ok(hash128())
        };
    }
    let present = ids[..n].iter().filter(|s| !s.trim().is_empty()).count();
    // The first column is the call's own id: without it, only the record hash is left.
    if n == 0 || ids[0].trim().is_empty() {
        return if t.call_id_required && n > 0 {
            Err(format!("{}: empty", t.call_id[0].label))
        } else {
            Ok(hash128())
        };
    }
    let mut id = String::new();
    for s in ids[..n].iter().filter(|s| !s.trim().is_empty()) {
        if !id.is_empty() {
            id.push(':');
        }
        id.push_str(s.trim());
    }
    if present < n {
        use std::fmt::Write;
        let _ = write!(id, ":{:016x}", xxhash_rust::xxh3::xxh3_64(rec));
    }
    Ok(Cow::Owned(id))
}

/// A time as the template writes it, to unix seconds.
fn parse_time(fmt: &TimeFormat, s: &str, tz: &Tz) -> Result<i64, String> {
    match fmt {
        TimeFormat::Iso => parse_iso(s),
        TimeFormat::Local => parse_local(s, tz),
        TimeFormat::Unix => {
            let t = crate::csv::trim(s);
            let whole = t.split_once('.').map_or(t, |(w, _)| w);
            whole
                .parse::<i64>()
                .ok()
                .filter(|v| (0..=253_402_300_799).contains(v))
                .ok_or_else(|| format!("{t:?} is not a unix time in seconds"))
        }
        TimeFormat::Strftime { pattern, offset } => {
            let t = s.trim();
            let bad = || format!("{t:?} does not match {pattern:?}");
            if *offset {
                chrono::DateTime::parse_from_str(t, pattern)
                    .map(|d| d.timestamp())
                    .map_err(|_| bad())
            } else {
                let naive = NaiveDateTime::parse_from_str(t, pattern).map_err(|_| bad())?;
                if *tz == Tz::UTC {
                    return Ok(naive.and_utc().timestamp());
                }
                Ok(crate::schedule::local_to_utc_after(tz, naive, i64::MIN))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn iso_times() {
        assert_eq!(
            parse_iso("2026-11-02T17:30:00Z"),
            Ok(utc("2026-11-02T17:30:00Z"))
        );
        assert_eq!(
            parse_iso("2026-11-02T19:30:00+02:00"),
            Ok(utc("2026-11-02T17:30:00Z"))
        );
        assert_eq!(
            parse_iso("2026-11-02 12:30:00.250-0500"),
            Ok(utc("2026-11-02T17:30:00Z"))
        );
        assert!(parse_iso("2026-11-02T17:30:00").is_err());
        assert!(parse_iso("2026-13-02T17:30:00Z").is_err());
        assert!(parse_iso("yesterday").is_err());
    }

    #[test]
    fn local_times_in_zone() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            parse_local("2026-07-01 12:00:00", &tz),
            Ok(utc("2026-07-01T10:00:00Z"))
        );
        // Ambiguous 02:30 on the autumn change day: the first (CEST) instant.
        assert_eq!(
            parse_local("2026-10-25 02:30:00", &tz),
            Ok(utc("2026-10-25T00:30:00Z"))
        );
        // Inside the spring gap: the instant after it.
        assert_eq!(
            parse_local("2026-03-29 02:30:00", &tz),
            Ok(utc("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn asterisk_record() {
        let tz: Tz = "UTC".parse().unwrap();
        let rec = br#""1001","5551000","4420712345","from-internal","""Alice"" <5551000>","SIP/100-1","SIP/trunk-2","Dial","SIP/trunk/4420712345","2026-11-02 17:29:50","2026-11-02 17:30:00","2026-11-02 17:31:05",75,65,"ANSWERED","DOCUMENTATION","1762104590.1","""#;
        let c = Reader::builtin("asterisk")
            .unwrap()
            .parse(rec, 3, &tz)
            .unwrap();
        assert_eq!(c.account, "1001");
        assert_eq!(c.callee, "4420712345");
        assert_eq!(c.start, utc("2026-11-02T17:30:00Z"));
        assert_eq!(c.duration_secs, 65);
        assert!(c.answered);
        assert!(c.call_id.starts_with("1762104590.1:"), "{}", c.call_id);
        let bad = br#""1001","1","2","c","x","a","b","Dial","d","2026-11-02 17:29:50","","2026-11-02 17:31:05",75,-3,"NO ANSWER","DOCUMENTATION""#;
        assert_eq!(
            Reader::builtin("asterisk")
                .unwrap()
                .parse(bad, 4, &tz)
                .unwrap_err(),
            "billsec: \"-3\" is not a non-negative whole number of seconds"
        );
    }

    #[test]
    fn freeswitch_record() {
        let tz: Tz = "UTC".parse().unwrap();
        let rec = br#""Bob","5552000","0049301234567","default","2026-11-02 08:00:00","2026-11-02 08:00:05","2026-11-02 08:01:05","65","60","NORMAL_CLEARING","a1b2","","1002","PCMU","PCMU""#;
        let c = Reader::builtin("freeswitch")
            .unwrap()
            .parse(rec, 1, &tz)
            .unwrap();
        assert_eq!(c.account, "1002");
        assert_eq!(c.start, utc("2026-11-02T08:00:05Z"));
        assert_eq!(c.duration_secs, 60);
        assert!(c.answered);
        assert_eq!(c.call_id, "a1b2");
    }

    #[test]
    fn generic_header_and_record() {
        let tz: Tz = "UTC".parse().unwrap();
        let r = Reader::generic(
            b"call_id,caller,callee,start_time,duration_s,disposition,account,extra",
        )
        .unwrap();
        let c = r
            .parse(
                b"c1,555,+4420712345,2026-11-02T17:30:00Z,65,ANSWERED,1001,x",
                2,
                &tz,
            )
            .unwrap();
        assert_eq!(c.callee, "+4420712345");
        assert_eq!(c.duration_secs, 65);
        assert_eq!(
            r.parse(b"c1,555,+44", 3, &tz).unwrap_err(),
            "expected at least 7 fields, found 3"
        );
        assert_eq!(
            Reader::generic(b"call_id,caller").unwrap_err(),
            "header has no `callee` column (expected call_id,caller,callee,start_time,duration_s,disposition,account)"
        );
    }
}
