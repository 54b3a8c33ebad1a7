//! CDR readers for the three formats of DESIGN.md (generic, Asterisk cdr_csv, FreeSWITCH
//! cdr_csv): one CSV record in, one [`Cdr`] (or a reason it is bad) out. Pure: the time zone
//! is passed in, nothing is read from the clock.

use std::borrow::Cow;

use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;

use crate::catalog::CdrFormat;
use crate::csv::split_fields;

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

/// Column positions of a generic file, from its header.
#[derive(Debug, Clone, Copy)]
pub struct GenericColumns {
    call_id: usize,
    caller: usize,
    callee: usize,
    start_time: usize,
    duration_s: usize,
    disposition: usize,
    account: usize,
    max: usize,
}

impl GenericColumns {
    /// Reads the header line; names the missing column when one is absent.
    pub fn from_header(header: &[u8]) -> Result<Self, String> {
        let names: Vec<String> = split_fields(header)
            .map(|f| String::from_utf8_lossy(&f).trim().to_ascii_lowercase())
            .collect();
        let find = |n: &str| {
            names
                .iter()
                .position(|x| x == n)
                .ok_or_else(|| format!("header has no `{n}` column (expected call_id,caller,callee,start_time,duration_s,disposition,account)"))
        };
        let c = GenericColumns {
            call_id: find("call_id")?,
            caller: find("caller")?,
            callee: find("callee")?,
            start_time: find("start_time")?,
            duration_s: find("duration_s")?,
            disposition: find("disposition")?,
            account: find("account")?,
            max: 0,
        };
        let max = [
            c.call_id,
            c.caller,
            c.callee,
            c.start_time,
            c.duration_s,
            c.disposition,
            c.account,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        Ok(GenericColumns { max, ..c })
    }
}

/// How to read the records of one file.
#[derive(Debug, Clone, Copy)]
pub enum Reader {
    Generic(GenericColumns),
    Asterisk,
    Freeswitch,
}

impl Reader {
    /// Whether the format starts with a header line.
    pub fn has_header(format: CdrFormat) -> bool {
        format == CdrFormat::Generic
    }
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
    let t = s.trim();
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
    let (naive, rest) = parse_naive(s.trim().as_bytes()).ok_or_else(bad)?;
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
    let (naive, rest) = parse_naive(s.trim().as_bytes())
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

impl Reader {
    /// Parses one record. `Err` carries the reason (field and problem) for the bad-line
    /// report.
    pub fn parse<'a>(&self, rec: &'a [u8], line: u64, tz: &Tz) -> Result<Cdr<'a>, String> {
        self.parse_with(rec, line, tz, &mut Vec::new())
    }

    /// [`Reader::parse`] with a reusable field buffer (the hot path).
    pub fn parse_with<'a>(
        &self,
        rec: &'a [u8],
        line: u64,
        tz: &Tz,
        f: &mut Vec<Cow<'a, [u8]>>,
    ) -> Result<Cdr<'a>, String> {
        f.clear();
        f.extend(split_fields(rec));
        match self {
            Reader::Generic(c) => {
                if f.len() <= c.max {
                    return Err(format!(
                        "expected at least {} fields, found {}",
                        c.max + 1,
                        f.len()
                    ));
                }
                let take = |f: &mut Vec<Cow<'a, [u8]>>, i: usize| {
                    std::mem::replace(&mut f[i], Cow::Borrowed(&[]))
                };
                let call_id = text(take(f, c.call_id), "call_id")?;
                let account = text(take(f, c.account), "account")?;
                let caller = text(take(f, c.caller), "caller")?;
                let callee = text(take(f, c.callee), "callee")?;
                let start = parse_iso(&text(take(f, c.start_time), "start_time")?)
                    .map_err(|e| format!("start_time: {e}"))?;
                let duration_secs = int(&text(take(f, c.duration_s), "duration_s")?, "duration_s")?;
                let disposition = text(take(f, c.disposition), "disposition")?;
                if call_id.trim().is_empty() {
                    return Err("call_id: empty".into());
                }
                Ok(Cdr {
                    line,
                    call_id,
                    account,
                    caller,
                    callee,
                    start,
                    duration_secs,
                    answered: disposition.trim().eq_ignore_ascii_case("ANSWERED"),
                    disposition,
                })
            }
            Reader::Asterisk => {
                // accountcode(0), src, dst, dcontext, clid, channel, dstchannel, lastapp,
                // lastdata, start(9), answer, end, duration, billsec(13), disposition,
                // amaflags(15)[, uniqueid(16), userfield(17)[, peeraccount, linkedid,
                // sequence(20)]]. Only the fields read here must decode; the others (clid
                // above all) may hold any bytes.
                if f.len() < 16 {
                    return Err(format!("expected at least 16 fields, found {}", f.len()));
                }
                let n = f.len();
                let mut take = |i: usize, name: &str| {
                    text(std::mem::replace(&mut f[i], Cow::Borrowed(&[])), name)
                };
                let account = take(0, "accountcode")?;
                let caller = take(1, "src")?;
                let callee = take(2, "dst")?;
                let start_s = take(9, "start")?;
                let answer_s = take(10, "answer")?;
                let billsec = int(&take(13, "billsec")?, "billsec")?;
                let disposition = take(14, "disposition")?;
                let uniqueid = if n > 16 {
                    take(16, "uniqueid")?
                } else {
                    Cow::Borrowed("")
                };
                let sequence = if n > 20 {
                    take(20, "sequence")?
                } else {
                    Cow::Borrowed("")
                };
                let answered = disposition.trim().eq_ignore_ascii_case("ANSWERED");
                // The call's start is its answer time; an unanswered call has none.
                let start = if answer_s.trim().is_empty() {
                    parse_local(&start_s, tz).map_err(|e| format!("start: {e}"))?
                } else {
                    parse_local(&answer_s, tz).map_err(|e| format!("answer: {e}"))?
                };
                Ok(Cdr {
                    line,
                    call_id: asterisk_call_id(uniqueid.trim(), sequence.trim(), rec),
                    account,
                    caller,
                    callee,
                    start,
                    duration_secs: billsec,
                    answered,
                    disposition,
                })
            }
            Reader::Freeswitch => {
                // caller_id_name, caller_id_number(1), destination_number(2), context,
                // start_stamp(4), answer_stamp(5), end_stamp, duration, billsec(8),
                // hangup_cause(9), uuid(10), bleg_uuid, accountcode(12)[, read_codec,
                // write_codec]
                if f.len() < 13 {
                    return Err(format!("expected at least 13 fields, found {}", f.len()));
                }
                let mut take = |i: usize, name: &str| {
                    text(std::mem::replace(&mut f[i], Cow::Borrowed(&[])), name)
                };
                let caller = take(1, "caller_id_number")?;
                let callee = take(2, "destination_number")?;
                let start_s = take(4, "start_stamp")?;
                let answer_s = take(5, "answer_stamp")?;
                let billsec = int(&take(8, "billsec")?, "billsec")?;
                let disposition = take(9, "hangup_cause")?;
                let uuid = take(10, "uuid")?;
                let account = take(12, "accountcode")?;
                let start = if answer_s.trim().is_empty() {
                    parse_local(&start_s, tz).map_err(|e| format!("start_stamp: {e}"))?
                } else {
                    parse_local(&answer_s, tz).map_err(|e| format!("answer_stamp: {e}"))?
                };
                if uuid.trim().is_empty() {
                    return Err("uuid: empty".into());
                }
                Ok(Cdr {
                    line,
                    call_id: uuid,
                    account,
                    caller,
                    callee,
                    start,
                    duration_secs: billsec,
                    answered: billsec > 0,
                    disposition,
                })
            }
        }
    }
}

/// The call id of an Asterisk record (DESIGN.md "CDR file formats"): `uniqueid:sequence`
/// when the line has both (the `newcdrcolumns` layout), else `uniqueid:` + a hash of the
/// whole record, else `h:` + the hash alone. The legs of one call share a uniqueid and are
/// separate records; only a repeat of the same record gets the same id, in any copy of the
/// file. The hash is XXH3 over the record's bytes (a fixed algorithm: ids stay stable
/// across versions).
fn asterisk_call_id<'a>(uniqueid: &str, sequence: &str, rec: &[u8]) -> Cow<'a, str> {
    Cow::Owned(match (uniqueid.is_empty(), sequence.is_empty()) {
        (false, false) => format!("{uniqueid}:{sequence}"),
        (false, true) => format!("{uniqueid}:{:016x}", xxhash_rust::xxh3::xxh3_64(rec)),
        (true, _) => format!("h:{:032x}", xxhash_rust::xxh3::xxh3_128(rec)),
    })
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
        let c = Reader::Asterisk.parse(rec, 3, &tz).unwrap();
        assert_eq!(c.account, "1001");
        assert_eq!(c.callee, "4420712345");
        assert_eq!(c.start, utc("2026-11-02T17:30:00Z"));
        assert_eq!(c.duration_secs, 65);
        assert!(c.answered);
        assert!(c.call_id.starts_with("1762104590.1:"), "{}", c.call_id);
        let bad = br#""1001","1","2","c","x","a","b","Dial","d","2026-11-02 17:29:50","","2026-11-02 17:31:05",75,-3,"NO ANSWER","DOCUMENTATION""#;
        assert_eq!(
            Reader::Asterisk.parse(bad, 4, &tz).unwrap_err(),
            "billsec: \"-3\" is not a non-negative whole number of seconds"
        );
    }

    #[test]
    fn freeswitch_record() {
        let tz: Tz = "UTC".parse().unwrap();
        let rec = br#""Bob","5552000","0049301234567","default","2026-11-02 08:00:00","2026-11-02 08:00:05","2026-11-02 08:01:05","65","60","NORMAL_CLEARING","a1b2","","1002","PCMU","PCMU""#;
        let c = Reader::Freeswitch.parse(rec, 1, &tz).unwrap();
        assert_eq!(c.account, "1002");
        assert_eq!(c.start, utc("2026-11-02T08:00:05Z"));
        assert_eq!(c.duration_secs, 60);
        assert!(c.answered);
        assert_eq!(c.call_id, "a1b2");
    }

    #[test]
    fn generic_header_and_record() {
        let tz: Tz = "UTC".parse().unwrap();
        let cols = GenericColumns::from_header(
            b"call_id,caller,callee,start_time,duration_s,disposition,account,extra",
        )
        .unwrap();
        let r = Reader::Generic(cols);
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
            GenericColumns::from_header(b"call_id,caller").unwrap_err(),
            "header has no `callee` column (expected call_id,caller,callee,start_time,duration_s,disposition,account)"
        );
    }
}
