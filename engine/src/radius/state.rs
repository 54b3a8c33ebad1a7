//! An open session's state as the ledger stores it (`sessions.state`), rewritten with every
//! accounting update of the session.
//!
//! Stored packed: a version byte, then the fields in a fixed order, integers as LEB128
//! varints (zigzag for signed ones), strings length-prefixed, money as its exact mantissa
//! and scale (with the sign bit, so `-0` stays `-0`). About 130 bytes where the JSON it
//! replaces took about 730: the open-sessions table fits in the ledger's page cache four
//! times more often and every update serializes and rewrites a fifth of the bytes
//! (ARCHITECTURE.md, "Issue 17"). The key columns (`nas`, `session_id`) are not repeated.
//!
//! Ledgers written before hold JSON text in the same column; [`Stored::Json`] still loads
//! (SQLite keeps each value's own type, TEXT or BLOB, whatever the column's affinity), and
//! the next update of such a session stores it packed. A packed state of an unknown version,
//! cut short, with bytes left over or a value out of range is an error naming what is
//! wrong, never a panic or a guessed value.

use rust_decimal::Decimal;

use super::accounting::Session;
use crate::rating::{RuleUsage, SessionCharge};

/// The packed format this build writes. A change of fields is a new version; decoding
/// keeps every earlier one.
const VERSION: u8 = 1;

/// A session state as read from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written by builds before the packed format.
    Json(String),
    /// [`pack`]ed.
    Packed(Vec<u8>),
}

/// `s` packed (its `nas` and `session_id` are the row's key, not repeated).
pub fn pack(s: &Session) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(160));
    w.0.push(VERSION);
    w.str(&s.username);
    w.opt_i64(s.user_id);
    let c = &s.charge;
    w.i64(c.login_time);
    w.i64(c.last_session_time);
    w.u64(c.last_octets_in);
    w.u64(c.last_octets_out);
    w.i64(c.last_moment);
    w.money(c.time_numerator);
    w.money(c.traffic);
    w.money(c.charged);
    w.u64(c.rules.len() as u64);
    for r in &c.rules {
        w.u64(u64::from(r.rule));
        w.i64(r.start);
        w.i64(r.end);
        w.i64(r.seconds);
        w.u64(r.bytes_in);
        w.u64(r.bytes_out);
        w.money(r.time_numerator);
        w.money(r.traffic);
    }
    w.u64(c.package_bytes);
    w.money(s.credit_at_start);
    w.str(&s.nas_ip);
    w.str(&s.framed_ip);
    w.str(&s.calling_station);
    w.str(&s.called_station);
    w.opt_i64(s.nas_port.map(i64::from));
    w.i64(s.last_arrival);
    w.opt_i64(s.interim_interval.map(i64::from));
    w.0.push(u8::from(s.unknown_user));
    w.str(&s.ras_description);
    w.opt_i64(s.reopened_after);
    w.0
}

/// The session stored under (`nas`, `session_id`).
pub fn load(nas: &str, session_id: &str, stored: &Stored) -> Result<Session, String> {
    match stored {
        Stored::Json(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
        Stored::Packed(bytes) => unpack(nas, session_id, bytes),
    }
}

/// The session [`pack`] wrote into `bytes`, under the key (`nas`, `session_id`).
pub fn unpack(nas: &str, session_id: &str, bytes: &[u8]) -> Result<Session, String> {
    let mut r = Reader { b: bytes, at: 0 };
    let version = r.byte("version")?;
    // Versions are counted from 1 up, one per change of the format: a first byte far beyond
    // this build's (a `{` of JSON stored as a BLOB) or 0 is no version at all.
    if version > VERSION && version <= 16 {
        return Err(format!(
            "packed session state of version {version}; this build reads version {VERSION} \
             (a ledger written by a newer ratel?)"
        ));
    }
    if version != VERSION {
        return Err(format!(
            "packed session state starts with {version:#04x}, no version of the format"
        ));
    }
    let username = r.str("username")?;
    let user_id = r.opt_i64("user_id")?;
    let login_time = r.i64("login_time")?;
    let last_session_time = r.i64("last_session_time")?;
    let last_octets_in = r.u64("last_octets_in")?;
    let last_octets_out = r.u64("last_octets_out")?;
    let last_moment = r.i64("last_moment")?;
    let time_numerator = r.money("time_numerator")?;
    let traffic = r.money("traffic")?;
    let charged = r.money("charged")?;
    let n = r.u64("rules")?;
    // Each rule takes at least 10 bytes: a count beyond what is left is corrupt (and never
    // a huge allocation).
    if n > (bytes.len() - r.at) as u64 / 10 {
        return Err(format!(
            "{n} charge rules in the {} bytes left of the packed state",
            bytes.len() - r.at
        ));
    }
    let mut rules = Vec::with_capacity(n as usize);
    for _ in 0..n {
        rules.push(RuleUsage {
            rule: r.u32("rule")?,
            start: r.i64("rule start")?,
            end: r.i64("rule end")?,
            seconds: r.i64("rule seconds")?,
            bytes_in: r.u64("rule bytes_in")?,
            bytes_out: r.u64("rule bytes_out")?,
            time_numerator: r.money("rule time_numerator")?,
            traffic: r.money("rule traffic")?,
        });
    }
    let package_bytes = r.u64("package_bytes")?;
    let credit_at_start = r.money("credit_at_start")?;
    let nas_ip = r.str("nas_ip")?;
    let framed_ip = r.str("framed_ip")?;
    let calling_station = r.str("calling_station")?;
    let called_station = r.str("called_station")?;
    let nas_port = r.opt_u32("nas_port")?;
    let last_arrival = r.i64("last_arrival")?;
    let interim_interval = r.opt_u32("interim_interval")?;
    let unknown_user = match r.byte("unknown_user")? {
        0 => false,
        1 => true,
        v => return Err(format!("unknown_user: {v} is not 0 or 1")),
    };
    let ras_description = r.str("ras_description")?;
    let reopened_after = r.opt_i64("reopened_after")?;
    if r.at != bytes.len() {
        return Err(format!(
            "{} bytes left over after the packed session state",
            bytes.len() - r.at
        ));
    }
    Ok(Session {
        nas: nas.to_string(),
        session_id: session_id.to_string(),
        username,
        user_id,
        charge: SessionCharge {
            login_time,
            last_session_time,
            last_octets_in,
            last_octets_out,
            last_moment,
            time_numerator,
            traffic,
            charged,
            rules,
            package_bytes,
        },
        credit_at_start,
        nas_ip,
        framed_ip,
        calling_station,
        called_station,
        nas_port,
        last_arrival,
        interim_interval,
        unknown_user,
        ras_description,
        reopened_after,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u128) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(low);
                return;
            }
            self.0.push(low | 0x80);
        }
    }
    fn u64(&mut self, v: u64) {
        self.varint(u128::from(v));
    }
    fn i64(&mut self, v: i64) {
        // zigzag: small magnitudes of either sign take few bytes
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                self.i64(v);
            }
        }
    }
    fn str(&mut self, v: &str) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
    }
    /// The 96-bit magnitude, then the scale with the sign in its high bit.
    fn money(&mut self, v: Decimal) {
        self.varint(v.mantissa().unsigned_abs());
        self.0
            .push(v.scale() as u8 | if v.is_sign_negative() { 0x80 } else { 0 });
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let v = *self
            .b
            .get(self.at)
            .ok_or_else(|| format!("{what}: the packed session state ends at byte {}", self.at))?;
        self.at += 1;
        Ok(v)
    }
    fn varint(&mut self, what: &str) -> Result<u128, String> {
        let mut v: u128 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte(what)?;
            let bits = u128::from(b & 0x7f);
            // The 19th byte holds the top 2 bits of 128 and ends the number.
            if shift == 126 && (bits > 0b11 || b & 0x80 != 0) {
                return Err(format!("{what}: varint beyond 128 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        u64::try_from(self.varint(what)?).map_err(|_| format!("{what}: beyond 64 bits"))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        u32::try_from(self.u64(what)?).map_err(|_| format!("{what}: beyond 32 bits"))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        let z = self.u64(what)?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }
    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.byte(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("{what}: option tag {v}")),
        }
    }
    fn opt_i64(&mut self, what: &str) -> Result<Option<i64>, String> {
        Ok(if self.flag(what)? {
            Some(self.i64(what)?)
        } else {
            None
        })
    }
    fn opt_u32(&mut self, what: &str) -> Result<Option<u32>, String> {
        self.opt_i64(what)?
            .map(|v| u32::try_from(v).map_err(|_| format!("{what}: {v} is out of range")))
            .transpose()
    }
    fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("{what}: {n} bytes past the end of the packed state"))?;
        let s = std::str::from_utf8(&self.b[self.at..end])
            .map_err(|e| format!("{what}: not UTF-8 ({e})"))?
            .to_string();
        self.at = end;
        Ok(s)
    }
    fn money(&mut self, what: &str) -> Result<Decimal, String> {
        let magnitude = self.varint(what)?;
        let flags = self.byte(what)?;
        let scale = u32::from(flags & 0x7f);
        let mut d = i128::try_from(magnitude)
            .ok()
            .and_then(|m| Decimal::try_from_i128_with_scale(m, scale).ok())
            .ok_or_else(|| format!("{what}: {magnitude} at scale {scale} is no decimal"))?;
        d.set_sign_negative(flags & 0x80 != 0);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn negative_zero() -> Decimal {
        let mut z = dec("0.00");
        z.set_sign_negative(true);
        z
    }

    fn session() -> Session {
        Session {
            nas: "ras1/10.0.0.1".into(),
            session_id: "m1".into(),
            username: "ali\u{e7}e".into(),
            user_id: Some(i64::MAX),
            charge: SessionCharge {
                login_time: -1,
                last_session_time: 86_400 * 400,
                last_octets_in: u64::MAX,
                last_octets_out: 0,
                last_moment: i64::MIN,
                time_numerator: dec("1.8000"),
                traffic: dec("0.0000000000000000000000000001"),
                charged: dec("-79228162514264337593543950335"),
                rules: vec![
                    RuleUsage {
                        rule: u32::MAX,
                        start: 1_796_379_262,
                        end: 1_796_379_442,
                        seconds: 180,
                        bytes_in: 18_000_000,
                        bytes_out: 4_500_000,
                        time_numerator: Decimal::MAX,
                        traffic: negative_zero(),
                    },
                    RuleUsage {
                        rule: 0,
                        start: 0,
                        end: 0,
                        seconds: 0,
                        bytes_in: 0,
                        bytes_out: 0,
                        time_numerator: Decimal::MIN,
                        traffic: dec("12.5"),
                    },
                ],
                package_bytes: 7,
            },
            credit_at_start: dec("1000"),
            nas_ip: "10.0.0.1".into(),
            framed_ip: "100.64.0.9".into(),
            calling_station: "00-11-22-33-44-55".into(),
            called_station: String::new(),
            nas_port: Some(u32::MAX),
            last_arrival: 1_796_379_264,
            interim_interval: Some(0),
            unknown_user: true,
            ras_description: "ras1 (10.0.0.1)".into(),
            reopened_after: Some(-5),
        }
    }

    /// Every amount with its exact bits (scale and sign included: `1.8000 == 1.8` and
    /// `-0 == 0` for `PartialEq`).
    fn money_bits(s: &Session) -> Vec<[u8; 16]> {
        let c = &s.charge;
        let mut v = vec![
            c.time_numerator.serialize(),
            c.traffic.serialize(),
            c.charged.serialize(),
            s.credit_at_start.serialize(),
        ];
        for r in &c.rules {
            v.push(r.time_numerator.serialize());
            v.push(r.traffic.serialize());
        }
        v
    }

    #[test]
    fn every_field_comes_back_exactly() {
        let s = session();
        let packed = pack(&s);
        let back = unpack(&s.nas, &s.session_id, &packed).unwrap();
        assert_eq!(back, s);
        assert_eq!(money_bits(&back), money_bits(&s));
        assert!(back.charge.rules[0].traffic.is_sign_negative());
        assert_eq!(back.charge.time_numerator.to_string(), "1.8000");

        let mut empty = s.clone();
        empty.user_id = None;
        empty.charge.rules.clear();
        empty.nas_port = None;
        empty.interim_interval = None;
        empty.reopened_after = None;
        empty.username.clear();
        empty.unknown_user = false;
        let back = unpack(&s.nas, &s.session_id, &pack(&empty)).unwrap();
        assert_eq!(back, empty);
    }

    #[test]
    fn a_typical_state_is_a_fifth_of_its_json() {
        let mut s = session();
        s.charge.rules.truncate(1);
        s.charge.rules[0].time_numerator = dec("1.8000");
        s.charge.rules[0].traffic = dec("0.0112500000000");
        s.charge.charged = dec("0.0413");
        s.charge.last_octets_in = 18_000_000;
        s.user_id = Some(10_001);
        let json = serde_json::to_string(&s).unwrap();
        let packed = pack(&s);
        assert!(
            packed.len() * 4 < json.len(),
            "packed {} bytes, JSON {}",
            packed.len(),
            json.len()
        );
    }

    #[test]
    fn json_of_earlier_builds_still_loads() {
        let s = session();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(load("x", "y", &Stored::Json(json)).unwrap(), s);
        assert_eq!(
            load(&s.nas, &s.session_id, &Stored::Packed(pack(&s))).unwrap(),
            s
        );
    }

    #[test]
    fn damaged_states_are_errors_not_panics() {
        let s = session();
        let packed = pack(&s);
        // Cut anywhere: refused.
        for n in 0..packed.len() {
            assert!(unpack("n", "s", &packed[..n]).is_err(), "cut at {n}");
        }
        // A byte more: refused.
        let mut longer = packed.clone();
        longer.push(0);
        assert!(unpack("n", "s", &longer).unwrap_err().contains("left over"));
        // Another version: refused, naming it.
        let mut v2 = packed.clone();
        v2[0] = 2;
        assert!(unpack("n", "s", &v2).unwrap_err().contains("version 2"));
        // Not a version at all (JSON stored as a BLOB starts with `{`; a zero byte).
        for first in [b'{', 0] {
            let mut b = packed.clone();
            b[0] = first;
            let e = unpack("n", "s", &b).unwrap_err();
            assert!(e.contains("no version of the format"), "{e}");
        }
        // Every single byte flipped: decodes to something or is refused, never panics.
        for i in 0..packed.len() {
            for bit in 0..8 {
                let mut b = packed.clone();
                b[i] ^= 1 << bit;
                let _ = unpack("n", "s", &b);
            }
        }
        // A varint that never ends, a huge rule count, a string past the end, a scale
        // beyond 28.
        let mut endless = vec![VERSION, 0x05];
        endless.extend(std::iter::repeat_n(0xff, 40));
        assert!(unpack("n", "s", &endless).is_err());
        let mut w = Writer(vec![VERSION]);
        w.str("u");
        w.opt_i64(None);
        for _ in 0..5 {
            w.i64(0);
        }
        for _ in 0..3 {
            w.money(Decimal::ZERO);
        }
        let mut rules = Writer(w.0.clone());
        rules.u64(u64::MAX);
        assert!(unpack("n", "s", &rules.0)
            .unwrap_err()
            .contains("charge rules"));
        let mut scale = Writer(w.0.clone());
        scale.0.truncate(scale.0.len() - 1);
        scale.0.push(29);
        assert!(unpack("n", "s", &scale.0).unwrap_err().contains("scale 29"));
        let mut long = Writer(vec![VERSION]);
        long.u64(1 << 40);
        assert!(unpack("n", "s", &long.0)
            .unwrap_err()
            .contains("past the end"));
    }
}
