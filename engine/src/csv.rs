//! The one CSV reader of ratel (CDR files, the users import, rate decks): record boundaries
//! and field splitting over byte buffers, RFC 4180 as real exporters break it.
//!
//! - A field that *starts* with `"` is quoted; inside it `""` is a quote. A quote anywhere
//!   else in a field is an ordinary character (`555"1000` is one field).
//! - CDR files ([`Dialect::CDR`]) hold one record per line: a quoted field still open at
//!   the end of its line ends the record there, flagged [`RecordError::UnterminatedQuote`],
//!   so a stray quote damages one line, never the rest of the file.
//! - Documents ([`Dialect::DOC`]: rate decks, the users import) may carry newlines inside
//!   quoted fields. A quoted field is then accepted across lines only when its closing quote
//!   is followed by a delimiter or the end of the line and it spans at most
//!   [`MAX_QUOTED_BYTES`]; otherwise it is an unterminated quote confined to its first line.
//! - CRLF and LF both end a line; a UTF-8 byte-order mark at the start of a file is
//!   dropped by [`strip_bom`]; a record longer than [`MAX_RECORD_BYTES`] is flagged
//!   [`RecordError::TooLong`] and never parsed.
//!
//! Hand-written because the hot path wants borrowed fields (`Cow`) without per-field
//! allocation, and because record boundaries must be found block by block.

use std::borrow::Cow;

/// The longest record ratel parses; a longer line is a bad line (no CDR is 1 MiB long).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest quoted field that may span lines in a document.
pub const MAX_QUOTED_BYTES: usize = 64 << 10;

/// The UTF-8 byte-order mark Excel and Windows tools put at the start of a file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Drops a UTF-8 byte-order mark from the start of a file's bytes.
pub fn strip_bom(buf: &[u8]) -> &[u8] {
    buf.strip_prefix(BOM).unwrap_or(buf)
}

/// How a file's records are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// Field delimiter (`,`, `;`, `\t`, `|`).
    pub delimiter: u8,
    /// Whether a quoted field may span lines.
    pub multiline: bool,
}

impl Dialect {
    /// CDR files: comma-separated, one record per line.
    pub const CDR: Dialect = Dialect {
        delimiter: b',',
        multiline: false,
    };
    /// Rate decks and the users import: comma-separated, quoted newlines allowed.
    pub const DOC: Dialect = Dialect {
        delimiter: b',',
        multiline: true,
    };
}

/// Why a record cannot be parsed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A quoted field has no closing quote on its line.
    UnterminatedQuote,
    /// The record is longer than [`MAX_RECORD_BYTES`].
    TooLong,
}

impl RecordError {
    /// The reason given in a bad-line report.
    pub fn reason(self) -> &'static str {
        match self {
            RecordError::UnterminatedQuote => {
                "unterminated quoted field (no closing quote on this line)"
            }
            RecordError::TooLong => "line longer than 1 MiB: not read",
        }
    }
}

/// One record found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte range in the buffer, without the line terminator.
    pub start: usize,
    pub end: usize,
    /// 1-based line number of the record's first line.
    pub line: u64,
    /// Set when the record cannot be parsed; its bytes must not be split into fields.
    pub error: Option<RecordError>,
}

/// Finds the complete records of a CDR buffer ([`Dialect::CDR`]); see [`scan_records_with`].
pub fn scan_records(
    buf: &[u8],
    first_line: u64,
    eof: bool,
    out: &mut Vec<RecordSpan>,
) -> (usize, u64) {
    scan_records_with(Dialect::CDR, buf, first_line, eof, out)
}

/// Finds the complete records of `buf`, starting at line number `first_line`. Returns the
/// number of bytes consumed and the line number after them (everything after is an
/// incomplete record, unless `eof`, in which case a final unterminated record is returned
/// too). Never looks further than [`MAX_QUOTED_BYTES`] past a line's end for a closing
/// quote, so a caller that feeds blocks grows a block by a bounded amount at most.
pub fn scan_records_with(
    d: Dialect,
    buf: &[u8],
    first_line: u64,
    eof: bool,
    out: &mut Vec<RecordSpan>,
) -> (usize, u64) {
    let mut pos = 0usize;
    let mut line = first_line;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let Some(rec) = scan_one(d, rest, eof) else {
            break;
        };
        let mut end = pos + rec.len;
        if end > pos && buf[end - 1] == b'\r' {
            end -= 1;
        }
        let error = if rec.len > MAX_RECORD_BYTES {
            Some(RecordError::TooLong)
        } else {
            rec.error
        };
        out.push(RecordSpan {
            start: pos,
            end,
            line,
            error,
        });
        pos += rec.consumed;
        line += rec.lines;
    }
    (pos, line)
}

/// One record at the start of a buffer.
struct Scanned {
    /// Bytes of the record, without its `\n`.
    len: usize,
    /// Bytes to skip to the next record.
    consumed: usize,
    /// Lines the record spans.
    lines: u64,
    error: Option<RecordError>,
}

/// The record at the start of `rest`, or `None` when more bytes are needed.
fn scan_one(d: Dialect, rest: &[u8], eof: bool) -> Option<Scanned> {
    let nl = memchr::memchr(b'\n', rest);
    let line_end = nl.unwrap_or(rest.len());
    // The record is exactly its first line (the common case, and the fallback for an
    // unterminated quote).
    let first_line = |error| {
        Some(Scanned {
            len: line_end,
            consumed: nl.map_or(rest.len(), |i| i + 1),
            lines: 1,
            error,
        })
    };
    if nl.is_none() && !eof {
        // The line is not complete yet, so neither is the record.
        return None;
    }
    if memchr::memchr(b'"', &rest[..line_end]).is_none() {
        return first_line(None);
    }
    // Quote-aware walk, field by field.
    let n = rest.len();
    let mut i = 0usize;
    loop {
        if rest.get(i) == Some(&b'"') {
            let open = i;
            let mut j = i + 1;
            // Where a closing quote may be: on this line (CDRs), or within the bound.
            let limit = if d.multiline {
                n.min(open + MAX_QUOTED_BYTES + 1)
            } else {
                line_end
            };
            loop {
                let Some(q) = memchr::memchr(b'"', &rest[j.min(limit)..limit]) else {
                    // No closing quote where one may be.
                    if !d.multiline || eof || limit < n {
                        return first_line(Some(RecordError::UnterminatedQuote));
                    }
                    return None;
                };
                let qp = j + q;
                let crossed = qp > line_end;
                if crossed && (!d.multiline || qp - open > MAX_QUOTED_BYTES) {
                    return first_line(Some(RecordError::UnterminatedQuote));
                }
                match rest.get(qp + 1) {
                    Some(b'"') => {
                        j = qp + 2;
                        continue;
                    }
                    None if !eof => return None,
                    None => return Some(whole(rest, n, n)),
                    Some(&c) if c == d.delimiter => {
                        i = qp + 2;
                        break;
                    }
                    Some(b'\n') => return Some(whole(rest, qp + 1, qp + 2)),
                    Some(b'\r') if rest.get(qp + 2) == Some(&b'\n') => {
                        return Some(whole(rest, qp + 2, qp + 3))
                    }
                    Some(_) if crossed => {
                        // A "closing" quote followed by text: this was never a quoted
                        // field spanning lines but a stray opening quote.
                        return first_line(Some(RecordError::UnterminatedQuote));
                    }
                    Some(_) => {
                        // Junk after a closing quote on the same line: read on to the
                        // next delimiter, as most CSV readers do.
                        i = qp + 1;
                        match next_delim_or_nl(d, rest, i) {
                            Some((k, true)) => i = k + 1,
                            Some((k, false)) => return Some(whole(rest, k, k + 1)),
                            None if eof => return Some(whole(rest, n, n)),
                            None => return None,
                        }
                        break;
                    }
                }
            }
        } else {
            match next_delim_or_nl(d, rest, i) {
                Some((k, true)) => i = k + 1,
                Some((k, false)) => return Some(whole(rest, k, k + 1)),
                None if eof => return Some(whole(rest, n, n)),
                // A document record past a quoted newline, not complete yet.
                None => return None,
            }
        }
    }
}

/// The next delimiter (`true`) or newline (`false`) at or after `i`.
fn next_delim_or_nl(d: Dialect, rest: &[u8], i: usize) -> Option<(usize, bool)> {
    memchr::memchr2(d.delimiter, b'\n', &rest[i..]).map(|k| (i + k, rest[i + k] != b'\n'))
}

/// A record of `len` bytes (its `\n`, if any, at `len`) ending `consumed` bytes in.
fn whole(rest: &[u8], len: usize, consumed: usize) -> Scanned {
    let len = len.min(rest.len());
    Scanned {
        len,
        consumed: consumed.min(rest.len()),
        lines: 1 + memchr::memchr_iter(b'\n', &rest[..len]).count() as u64,
        error: None,
    }
}

/// Iterator over the fields of one record.
pub struct Fields<'a> {
    rec: &'a [u8],
    pos: usize,
    delimiter: u8,
    done: bool,
}

/// Splits a comma-separated record into fields; quoted fields are unquoted (`""` → `"`).
pub fn split_fields(rec: &[u8]) -> Fields<'_> {
    split_fields_with(rec, b',')
}

/// Splits a record on `delimiter`; quoted fields are unquoted (`""` → `"`).
pub fn split_fields_with(rec: &[u8], delimiter: u8) -> Fields<'_> {
    Fields {
        rec,
        pos: 0,
        delimiter,
        done: false,
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = &self.rec[self.pos..];
        if rest.first() == Some(&b'"') {
            // Quoted field.
            let mut i = 1;
            let mut owned: Option<Vec<u8>> = None;
            let mut seg_start = 1;
            loop {
                match memchr::memchr(b'"', &rest[i..]) {
                    None => {
                        // Unterminated quote: take the rest as the field (the scanner
                        // flags such a record; this keeps the splitter total).
                        let tail = &rest[seg_start..];
                        self.done = true;
                        return Some(match owned {
                            Some(mut o) => {
                                o.extend_from_slice(tail);
                                Cow::Owned(o)
                            }
                            None => Cow::Borrowed(tail),
                        });
                    }
                    Some(q) => {
                        let qpos = i + q;
                        if rest.get(qpos + 1) == Some(&b'"') {
                            let o = owned.get_or_insert_with(Vec::new);
                            o.extend_from_slice(&rest[seg_start..=qpos]);
                            i = qpos + 2;
                            seg_start = i;
                            continue;
                        }
                        let field = match owned {
                            Some(mut o) => {
                                o.extend_from_slice(&rest[seg_start..qpos]);
                                Cow::Owned(o)
                            }
                            None => Cow::Borrowed(&rest[seg_start..qpos]),
                        };
                        // Skip to the next delimiter (anything between the quote and it is
                        // junk we tolerate, as most CSV readers do).
                        match memchr::memchr(self.delimiter, &rest[qpos + 1..]) {
                            Some(c) => self.pos += qpos + 1 + c + 1,
                            None => self.done = true,
                        }
                        return Some(field);
                    }
                }
            }
        }
        match memchr::memchr(self.delimiter, rest) {
            Some(c) => {
                self.pos += c + 1;
                Some(Cow::Borrowed(&rest[..c]))
            }
            None => {
                self.done = true;
                Some(Cow::Borrowed(rest))
            }
        }
    }
}

/// `s.trim()`, without decoding characters when `s` starts and ends with a visible ASCII
/// character (nearly every CDR field): `str::trim` walks UTF-8 code points from both ends,
/// 2–4% of `ratel rate`'s CPU. Same result: a visible ASCII character is not whitespace.
#[inline]
pub fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(f), Some(l)) if f.is_ascii_graphic() && l.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(s: &str) -> Vec<String> {
        split_fields(s.as_bytes())
            .map(|f| String::from_utf8(f.into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn split_table() {
        let cases: &[(&str, &[&str])] = &[
            ("a,b,c", &["a", "b", "c"]),
            ("a,,c,", &["a", "", "c", ""]),
            ("", &[""]),
            ("\"x,y\",z", &["x,y", "z"]),
            ("\"say \"\"hi\"\"\",2", &["say \"hi\"", "2"]),
            ("\"a\nb\",c", &["a\nb", "c"]),
            ("\"unterminated,x", &["unterminated,x"]),
            ("\"\"", &[""]),
            ("555\"1000,x", &["555\"1000", "x"]),
            ("a\"b\"c,\"d\"", &["a\"b\"c", "d"]),
        ];
        for (input, want) in cases {
            assert_eq!(fields(input), *want, "input {input:?}");
        }
        let semi: Vec<_> = split_fields_with(b"a;\"b;c\";d", b';').collect();
        assert_eq!(semi, [&b"a"[..], b"b;c", b"d"]);
    }

    /// (dialect, input) → the records as (text, line, error); every case is at eof.
    fn records(d: Dialect, input: &str) -> Vec<(String, u64, Option<RecordError>)> {
        let mut out = Vec::new();
        let (consumed, _) = scan_records_with(d, input.as_bytes(), 1, true, &mut out);
        assert_eq!(consumed, input.len(), "eof consumes everything: {input:?}");
        out.iter()
            .map(|s| (input[s.start..s.end].to_string(), s.line, s.error))
            .collect()
    }

    #[test]
    fn scan_table() {
        use RecordError::UnterminatedQuote as U;
        type Case<'a> = (Dialect, &'a str, &'a [(&'a str, u64, Option<RecordError>)]);
        let cases: &[Case] = &[
            // A quote inside an unquoted field is ordinary.
            (
                Dialect::CDR,
                "c1,555\"1000,x\nc2,b,y\nc3,c,z\n",
                &[
                    ("c1,555\"1000,x", 1, None),
                    ("c2,b,y", 2, None),
                    ("c3,c,z", 3, None),
                ],
            ),
            // An unterminated quote damages its own line only.
            (
                Dialect::CDR,
                "c1,\"555,x\nc2,\"b\",y\nc3,c,z",
                &[
                    ("c1,\"555,x", 1, Some(U)),
                    ("c2,\"b\",y", 2, None),
                    ("c3,c,z", 3, None),
                ],
            ),
            // CDRs hold one record per line, even when a quote spans the newline.
            (
                Dialect::CDR,
                "\"a\nb\",c\nd",
                &[("\"a", 1, Some(U)), ("b\",c", 2, None), ("d", 3, None)],
            ),
            // Documents accept a quoted newline that closes properly...
            (
                Dialect::DOC,
                "p,\"Mobile\r\nline\",1\r\nq,x,2\r\n",
                &[("p,\"Mobile\r\nline\",1", 1, None), ("q,x,2", 3, None)],
            ),
            // ...but a stray opening quote never swallows the next lines.
            (
                Dialect::DOC,
                "p,\"Mobile,1\nq,\"x\",2\nr,y,3\n",
                &[
                    ("p,\"Mobile,1", 1, Some(U)),
                    ("q,\"x\",2", 2, None),
                    ("r,y,3", 3, None),
                ],
            ),
            (
                Dialect::DOC,
                "p,\"open,1\nq,x,2\n",
                &[("p,\"open,1", 1, Some(U)), ("q,x,2", 2, None)],
            ),
            // Junk after a closing quote on the same line is tolerated.
            (
                Dialect::CDR,
                "\"a\"b,c\nd",
                &[("\"a\"b,c", 1, None), ("d", 2, None)],
            ),
            (Dialect::CDR, "a,\"\"\"\"\n", &[("a,\"\"\"\"", 1, None)]),
            (Dialect::CDR, "\r\n", &[("", 1, None)]),
        ];
        for (d, input, want) in cases {
            let got = records(*d, input);
            let want: Vec<_> = want
                .iter()
                .map(|(s, l, e)| (s.to_string(), *l, *e))
                .collect();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn scan_handles_crlf_and_partial_tail() {
        let buf = b"a,b\r\n\"x\"\"y\",z\nlast,partial";
        let mut out = Vec::new();
        let (consumed, next_line) = scan_records(buf, 1, false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&buf[out[0].start..out[0].end], b"a,b");
        assert_eq!(&buf[out[1].start..out[1].end], b"\"x\"\"y\",z");
        assert_eq!(out[1].line, 2);
        assert_eq!(next_line, 3);
        assert_eq!(&buf[consumed..], b"last,partial");
        out.clear();
        let (consumed, _) = scan_records(&buf[consumed..], next_line, true, &mut out);
        assert_eq!(consumed, 12);
        assert_eq!(out[0].line, 3);
    }

    #[test]
    fn a_document_quote_waits_for_more_bytes_but_only_so_far() {
        // Not at eof: an open quote that may still close waits for more input.
        let mut out = Vec::new();
        let (consumed, _) = scan_records_with(Dialect::DOC, b"a,\"open\nmore", 1, false, &mut out);
        assert_eq!((consumed, out.len()), (0, 0));
        // Past the bound it is an unterminated quote on its first line.
        let mut big = b"a,\"open\n".to_vec();
        big.resize(MAX_QUOTED_BYTES + 100, b'x');
        let (consumed, _) = scan_records_with(Dialect::DOC, &big, 1, false, &mut out);
        assert_eq!(consumed, 8);
        assert_eq!(out[0].error, Some(RecordError::UnterminatedQuote));
    }

    #[test]
    fn long_lines_are_flagged() {
        let mut buf = vec![b'x'; MAX_RECORD_BYTES + 1];
        buf.extend_from_slice(b"\nok\n");
        let mut out = Vec::new();
        scan_records(&buf, 1, true, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].error, Some(RecordError::TooLong));
        assert_eq!((out[1].line, out[1].error), (2, None));
    }

    #[test]
    fn trim_equals_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "ab",
            "\u{a0}x\u{a0}",
            "x\u{2003}",
            "\tq",
            "é",
            " é ",
            "a b",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn bom() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBFa,b"), b"a,b");
        assert_eq!(strip_bom(b"a,b"), b"a,b");
    }
}
