//! A small RFC 4180 reader over byte buffers: record boundaries (quote-aware, so a quoted
//! field may hold a newline) and field splitting with doubled-quote unescaping.
//!
//! Hand-written because the hot path wants borrowed fields (`Cow`) without per-field
//! allocation, and because record boundaries must be found block by block.

use std::borrow::Cow;

/// One record found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte range in the buffer, without the line terminator.
    pub start: usize,
    pub end: usize,
    /// 1-based line number of the record's first line.
    pub line: u64,
}

/// Finds the complete records of `buf`, starting at line number `first_line`. Returns the
/// records and the number of bytes consumed (everything after is an incomplete record,
/// unless `eof`, in which case a final unterminated record is returned too).
pub fn scan_records(
    buf: &[u8],
    first_line: u64,
    eof: bool,
    out: &mut Vec<RecordSpan>,
) -> (usize, u64) {
    let mut pos = 0usize;
    let mut line = first_line;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let nl = memchr::memchr(b'\n', rest);
        let simple_end = nl.unwrap_or(rest.len());
        let (rec_len, consumed, lines) = if memchr::memchr(b'"', &rest[..simple_end]).is_none() {
            match nl {
                Some(i) => (i, i + 1, 1),
                None if eof => (rest.len(), rest.len(), 1),
                None => break,
            }
        } else {
            // Quote-aware scan: newlines inside quotes belong to the record.
            let mut in_q = false;
            let mut lines = 1u64;
            let mut found = None;
            for (i, &b) in rest.iter().enumerate() {
                match b {
                    b'"' => in_q = !in_q,
                    b'\n' if in_q => lines += 1,
                    b'\n' => {
                        found = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match found {
                Some(i) => (i, i + 1, lines),
                None if eof => (rest.len(), rest.len(), lines),
                None => break,
            }
        };
        let mut end = pos + rec_len;
        if end > pos && buf[end - 1] == b'\r' {
            end -= 1;
        }
        out.push(RecordSpan {
            start: pos,
            end,
            line,
        });
        pos += consumed;
        line += lines;
    }
    (pos, line)
}

/// Iterator over the fields of one record.
pub struct Fields<'a> {
    rec: &'a [u8],
    pos: usize,
    done: bool,
}

/// Splits a record into fields; quoted fields are unquoted (`""` → `"`).
pub fn split_fields(rec: &[u8]) -> Fields<'_> {
    Fields {
        rec,
        pos: 0,
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
                        // Unterminated quote: take the rest as the field.
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
                        // Skip to the next comma (anything between the quote and it is junk
                        // we tolerate, as most CSV readers do).
                        match memchr::memchr(b',', &rest[qpos + 1..]) {
                            Some(c) => self.pos += qpos + 1 + c + 1,
                            None => self.done = true,
                        }
                        return Some(field);
                    }
                }
            }
        }
        match memchr::memchr(b',', rest) {
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
        ];
        for (input, want) in cases {
            assert_eq!(fields(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn scan_handles_quoted_newlines_crlf_and_partial_tail() {
        let buf = b"a,b\r\n\"x\ny\",z\nlast,partial";
        let mut out = Vec::new();
        let (consumed, next_line) = scan_records(buf, 1, false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&buf[out[0].start..out[0].end], b"a,b");
        assert_eq!(&buf[out[1].start..out[1].end], b"\"x\ny\",z");
        assert_eq!(out[1].line, 2);
        assert_eq!(next_line, 4);
        assert_eq!(&buf[consumed..], b"last,partial");
        out.clear();
        let (consumed, _) = scan_records(&buf[consumed..], next_line, true, &mut out);
        assert_eq!(consumed, 12);
        assert_eq!(out[0].line, 4);
    }
}
