//! Rating: the arithmetic of DESIGN.md as pure functions — no I/O, no clock, no floats.
//!
//! VoIP: [`rate_call`] turns (tariff, callee, start, billable seconds) into an exact cost and
//! its pieces per rate window. Internet: [`SessionCharge`] accumulates a RADIUS session's
//! exact cost update by update; the ledger takes `round(cost_now) - round(cost_before)` at
//! each update, so the total taken is `round(total)` however many interims there were.
//!
//! Exactness: time charges are kept as the exact numerator `Σ price_per_minute × seconds`
//! and divided by 60 once, when the cost is read; traffic charges are exact decimal shifts
//! (`price_per_gb × bytes / 10^9`). The group's rounding is applied once per record.
//!
//! Hostile numbers: every step is checked arithmetic. A value that would overflow makes
//! the update a [`RatingError`] (the caller logs an anomaly and charges nothing), never a
//! panic or a wrap; a traffic jump no link could carry is flagged and charged nothing.

use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::catalog::{ChargeRule, Group, Tariff};

/// Outcome of rating one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    NoRate,
    UnknownUser,
    Unanswered,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NoRate => "NO_RATE",
            Status::UnknownUser => "UNKNOWN_USER",
            Status::Unanswered => "UNANSWERED",
        }
    }
}

/// A rated piece of a call or session: `[start, end)` under one rate row or charge rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub start: i64,
    pub end: i64,
    /// Rate row index (VoIP) or charge rule index (Internet).
    pub item: u32,
    /// Exact (unrounded) cost of this piece.
    pub credit: Decimal,
}

/// The rating of one VoIP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRating {
    pub status: Status,
    /// Index of the matched prefix in the tariff.
    pub prefix: Option<u32>,
    /// Row in force at the call's start (its description names the destination).
    pub row_at_start: Option<u32>,
    pub billed_secs: i64,
    /// Billed seconds a package covered (the first ones of the billed interval).
    pub package_secs: i64,
    /// Exact cost before the group's rounding.
    pub cost_exact: Decimal,
    /// `Σ price_per_minute × seconds` of the priced pieces (the time cost × 60, exact).
    pub time_numerator: Decimal,
    /// Inline for the usual one piece: a heap allocation per call was 1.5M allocations
    /// (and a pointer the xDR build chased) in a 2M-call file.
    pub pieces: Pieces,
}

/// The pieces of a call: one in the usual case (no rate period boundary crossed, no
/// package), kept inline.
pub type Pieces = smallvec::SmallVec<[Piece; 1]>;

impl CallRating {
    /// A rating at cost 0 with no pieces.
    pub fn zero(status: Status) -> CallRating {
        CallRating {
            status,
            prefix: None,
            row_at_start: None,
            billed_secs: 0,
            package_secs: 0,
            cost_exact: Decimal::ZERO,
            time_numerator: Decimal::ZERO,
            pieces: Pieces::new(),
        }
    }
}

const SIXTY: Decimal = Decimal::from_parts(60, 0, 0, false, 0);

/// Largest traffic growth (in + out, bytes) one update may report; more is an anomaly.
pub const MAX_UPDATE_BYTES: u64 = 1_000_000_000_000_000;
/// Fastest link a session is taken to run on: 100 Gbit/s, in bytes per second.
pub const MAX_LINK_BYTES_PER_SEC: u64 = 12_500_000_000;
/// Seconds of slack added to an update's elapsed session time for the link bound (clock
/// skew, counters sampled a little after the session time).
pub const LINK_SLACK_SECS: u64 = 300;

/// Why an update could not be rated. Nothing is charged for it and the session's state is
/// left as it was; the caller logs it as an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("arithmetic overflow while rating (absurd counters, prices or balance)")]
    Overflow,
}

/// Largest traffic growth an update covering `secs` more seconds of session may report.
pub fn max_traffic_growth(secs: u64) -> u64 {
    secs.saturating_add(LINK_SLACK_SECS)
        .saturating_mul(MAX_LINK_BYTES_PER_SEC)
        .min(MAX_UPDATE_BYTES)
}

/// The callee reduced to its digits, with a leading international `00` dropped.
pub fn destination_digits(callee: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend(callee.bytes().filter(u8::is_ascii_digit));
    if out.starts_with(b"00") {
        out.drain(..2);
    }
}

/// Billed seconds for `d` billable seconds with increments `first` / `next` (saturating at
/// `i64::MAX` rather than wrapping for absurd `d`).
pub fn billed_seconds(d: i64, first: u32, next: u32) -> i64 {
    let (first, next) = (first as i64, next.max(1) as i64);
    if d <= 0 {
        0
    } else if d <= first {
        first
    } else {
        // ceil((d - first) / next) without the `+ next - 1` that could overflow.
        let steps = (d - first - 1) / next + 1;
        steps.saturating_mul(next).saturating_add(first)
    }
}

/// Rates a call already known to belong to a known user. `answered` false or `d == 0` gives
/// `UNANSWERED` at cost 0; no matching prefix gives `NO_RATE` at cost 0. A call whose cost
/// cannot be computed (an end past the end of time, an overflowing cost — impossible with
/// the catalog's price bound and the CDR reader's duration bound) is `NO_RATE` at cost 0
/// rather than a panic.
pub fn rate_call(
    tariff: &Tariff,
    tz: &Tz,
    callee: &str,
    start: i64,
    d: i64,
    answered: bool,
    scratch: &mut Vec<u8>,
) -> CallRating {
    rate_call_with_package(tariff, tz, callee, start, d, answered, 0, scratch)
}

/// [`rate_call`] for a subscriber whose packages can cover `free_secs` billed seconds
/// (DESIGN.md "Packages and expiry"): the billed seconds (increments of the row in force
/// at the start, as without a package) are free from the start of the billed interval up
/// to `free_secs`; the rest is priced as usual, split at window edges; the connect fee is
/// always charged. The covered part is a piece of credit 0 and `package_secs` says how
/// long it is.
#[allow(clippy::too_many_arguments)]
pub fn rate_call_with_package(
    tariff: &Tariff,
    tz: &Tz,
    callee: &str,
    start: i64,
    d: i64,
    answered: bool,
    free_secs: i64,
    scratch: &mut Vec<u8>,
) -> CallRating {
    rate_call_with_lookup(tariff, tz, start, d, answered, free_secs, || {
        destination_digits(callee, scratch);
        tariff.trie.longest_match(scratch)
    })
}

/// Whether a call with a tariff is priced (answered, some seconds long): the only calls
/// whose destination's prefix [`rate_call_with_lookup`] asks for; the others are
/// `UNANSWERED` at cost 0.
pub fn is_priced(answered: bool, d: i64) -> bool {
    answered && d > 0
}

/// [`rate_call_with_package`] with the destination's longest prefix in `tariff` given by
/// `prefix` (called only for an answered call of some seconds): the batch rater looks up
/// many calls' prefixes together ([`crate::catalog::PrefixTrie::longest_match_many`]).
pub fn rate_call_with_lookup(
    tariff: &Tariff,
    tz: &Tz,
    start: i64,
    d: i64,
    answered: bool,
    free_secs: i64,
    prefix: impl FnOnce() -> Option<u32>,
) -> CallRating {
    let zero = CallRating::zero;
    if !is_priced(answered, d) {
        return zero(Status::Unanswered);
    }
    let Some(pidx) = prefix() else {
        return zero(Status::NoRate);
    };
    let pr = &tariff.prefixes[pidx as usize];
    let row0 = pr.schedule.at(tz, start);
    let r0 = &tariff.rows[row0 as usize];
    let billed = billed_seconds(d, r0.first_increment, r0.next_increment);
    let Some(end) = start.checked_add(billed) else {
        return zero(Status::NoRate);
    };
    let covered = free_secs.clamp(0, billed);
    let mut numerator = Some(Decimal::ZERO);
    let mut pieces = Pieces::new();
    if covered > 0 {
        pieces.push(Piece {
            start,
            end: start + covered,
            item: row0,
            credit: Decimal::ZERO,
        });
    }
    let priced_from = pieces.len();
    if covered < billed {
        pr.schedule.split(tz, start + covered, end, |a, b, row| {
            let part = tariff.rows[row as usize]
                .price_per_minute
                .checked_mul(Decimal::from(b - a));
            numerator = numerator.zip(part).and_then(|(n, p)| n.checked_add(p));
            // `credit` holds the numerator until the division below.
            pieces.push(Piece {
                start: a,
                end: b,
                item: row,
                credit: part.unwrap_or_default(),
            });
        });
    }
    // Decimal division is the expensive step: one for the whole call, one per extra piece.
    let Some(time_numerator) = numerator else {
        return zero(Status::NoRate);
    };
    let time_cost = time_numerator / SIXTY;
    if pieces.len() == 1 && priced_from == 0 {
        pieces[0].credit = time_cost;
    } else {
        for p in &mut pieces[priced_from..] {
            p.credit /= SIXTY;
        }
    }
    let Some(cost_exact) = r0.connect_fee.checked_add(time_cost) else {
        return zero(Status::NoRate);
    };
    CallRating {
        status: Status::Ok,
        prefix: Some(pidx),
        row_at_start: Some(row0),
        billed_secs: billed,
        package_secs: covered,
        cost_exact,
        time_numerator,
        pieces,
    }
}

/// One accounting update of an internet session, as rating sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The update's moment (Event-Timestamp, else arrival), unix seconds.
    pub moment: i64,
    /// Acct-Session-Time.
    pub session_time: i64,
    /// Octets with gigawords folded in.
    pub octets_in: u64,
    pub octets_out: u64,
}

/// Per charge rule usage of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleUsage {
    pub rule: u32,
    pub start: i64,
    pub end: i64,
    pub seconds: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Exact time numerator (price × seconds) of this rule.
    pub time_numerator: Decimal,
    /// Exact traffic cost under this rule.
    pub traffic: Decimal,
}

impl RuleUsage {
    /// Exact credit of this rule's usage.
    pub fn credit(&self) -> Decimal {
        self.time_numerator / SIXTY + self.traffic
    }
}

/// What an update did to a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateCharge {
    /// Credit to take now: `round(cost_now) - round(cost_before)`.
    pub delta: Decimal,
    /// Session time went backwards (nothing charged for time).
    pub time_backwards: bool,
    /// An octet counter went backwards (nothing charged for that counter).
    pub octets_backwards: bool,
    /// The traffic growth exceeded [`max_traffic_growth`]: nothing charged for traffic, and
    /// the octet counters stay at the previous update's.
    pub traffic_anomaly: bool,
    /// Bytes of this update's traffic a package covered (not priced).
    pub package_bytes: u64,
}

/// The rating state of one internet session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionCharge {
    /// Fixed by the first update seen: its moment minus its session time.
    pub login_time: i64,
    pub last_session_time: i64,
    pub last_octets_in: u64,
    pub last_octets_out: u64,
    pub last_moment: i64,
    /// `Σ price_per_minute × seconds` over all pieces so far.
    pub time_numerator: Decimal,
    /// Exact traffic cost so far.
    pub traffic: Decimal,
    /// What the ledger has taken so far (= round(cost) at the last update).
    pub charged: Decimal,
    pub rules: Vec<RuleUsage>,
    /// Bytes packages covered so far (sessions stored before packages existed: 0).
    #[serde(default)]
    pub package_bytes: u64,
}

impl SessionCharge {
    /// A new session from the first update seen of it; nothing is charged until
    /// [`SessionCharge::apply`] is called with that same update.
    pub fn new(first: &Usage) -> Self {
        SessionCharge {
            login_time: first.moment - first.session_time.max(0),
            last_session_time: 0,
            last_octets_in: 0,
            last_octets_out: 0,
            last_moment: first.moment,
            time_numerator: Decimal::ZERO,
            traffic: Decimal::ZERO,
            charged: Decimal::ZERO,
            rules: Vec::new(),
            package_bytes: 0,
        }
    }

    /// Records an update's counters without charging anything (they only move forward; an
    /// absurd traffic jump is not recorded). Says what was odd about the update.
    pub fn observe(&mut self, u: &Usage) -> UpdateCharge {
        let mut out = UpdateCharge::default();
        self.traffic_growth(u, &mut out);
        out.time_backwards = u.session_time < self.last_session_time;
        self.advance_counters(u, &out);
        out
    }

    /// Counters only move forward; octets not past an absurd jump.
    fn advance_counters(&mut self, u: &Usage, out: &UpdateCharge) {
        self.last_session_time = self.last_session_time.max(u.session_time);
        if !out.traffic_anomaly {
            self.last_octets_in = self.last_octets_in.max(u.octets_in);
            self.last_octets_out = self.last_octets_out.max(u.octets_out);
        }
        self.last_moment = self.last_moment.max(u.moment);
    }

    /// Growth of (in, out) since the previous update. A counter that went backwards grows by
    /// 0; a total growth beyond [`max_traffic_growth`] of the session time this update
    /// covers is an anomaly and grows by nothing.
    fn traffic_growth(&self, u: &Usage, out: &mut UpdateCharge) -> (u64, u64) {
        let din = u.octets_in.checked_sub(self.last_octets_in);
        let dout = u.octets_out.checked_sub(self.last_octets_out);
        out.octets_backwards = din.is_none() || dout.is_none();
        let (din, dout) = (din.unwrap_or(0), dout.unwrap_or(0));
        let secs = u.session_time.saturating_sub(self.last_session_time).max(0) as u64;
        if din.saturating_add(dout) > max_traffic_growth(secs) {
            out.traffic_anomaly = true;
            return (0, 0);
        }
        (din, dout)
    }

    /// Exact cost so far.
    pub fn cost_exact(&self) -> Decimal {
        self.checked_cost().unwrap_or(Decimal::MAX)
    }

    fn checked_cost(&self) -> Option<Decimal> {
        self.time_numerator
            .checked_div(SIXTY)?
            .checked_add(self.traffic)
    }

    fn rule_mut(&mut self, rule: u32, at: i64) -> &mut RuleUsage {
        let pos = match self.rules.iter().position(|r| r.rule == rule) {
            Some(p) => p,
            None => {
                self.rules.push(RuleUsage {
                    rule,
                    start: at,
                    end: at,
                    seconds: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    time_numerator: Decimal::ZERO,
                    traffic: Decimal::ZERO,
                });
                self.rules.len() - 1
            }
        };
        &mut self.rules[pos]
    }

    /// Applies one update: charges the time since the previous update split at rule edges,
    /// and the traffic growth at the rule in force at the update's moment. On an error the
    /// session is left exactly as it was.
    pub fn apply(
        &mut self,
        group: &Group,
        rules: &[ChargeRule],
        tz: &Tz,
        u: &Usage,
    ) -> Result<UpdateCharge, RatingError> {
        let (next, out) = self.rate(group, rules, tz, u, 0)?;
        *self = next;
        Ok(out)
    }

    /// The session's state after update `u`, and what it charges; `self` is not touched, so
    /// the caller may still decide not to take the update (a charge already in the ledger).
    /// Up to `free_bytes` of the update's traffic growth is covered by the subscriber's
    /// packages (`UpdateCharge::package_bytes` says how much; the rest is priced at the
    /// rule in force); the bytes still count in the session's usage.
    pub fn rate(
        &self,
        group: &Group,
        rules: &[ChargeRule],
        tz: &Tz,
        u: &Usage,
        free_bytes: u64,
    ) -> Result<(SessionCharge, UpdateCharge), RatingError> {
        const OVERFLOW: RatingError = RatingError::Overflow;
        let mut out = UpdateCharge::default();
        let mut next = self.clone();
        let (din, dout) = self.traffic_growth(u, &mut out);
        let Some(schedule) = &group.rules else {
            // A group without charge rules is not charged for internet use.
            out.time_backwards = u.session_time < self.last_session_time;
            next.advance_counters(u, &out);
            return Ok((next, out));
        };
        if u.session_time < self.last_session_time {
            out.time_backwards = true;
        } else if u.session_time > self.last_session_time {
            let from = self
                .login_time
                .checked_add(self.last_session_time)
                .ok_or(OVERFLOW)?;
            let to = self
                .login_time
                .checked_add(u.session_time)
                .ok_or(OVERFLOW)?;
            let mut parts: Vec<(i64, i64, u32)> = Vec::with_capacity(2);
            schedule.split(tz, from, to, |a, b, r| parts.push((a, b, r)));
            for (a, b, r) in parts {
                let part = rules[r as usize]
                    .price_per_minute
                    .checked_mul(Decimal::from(b - a))
                    .ok_or(OVERFLOW)?;
                next.time_numerator = next.time_numerator.checked_add(part).ok_or(OVERFLOW)?;
                let ru = next.rule_mut(r, a);
                ru.seconds = ru.seconds.checked_add(b - a).ok_or(OVERFLOW)?;
                ru.end = ru.end.max(b);
                ru.start = ru.start.min(a);
                ru.time_numerator = ru.time_numerator.checked_add(part).ok_or(OVERFLOW)?;
            }
        }
        if din > 0 || dout > 0 {
            let r = schedule.at(tz, u.moment);
            let grown = din.saturating_add(dout);
            let covered = free_bytes.min(grown);
            out.package_bytes = covered;
            next.package_bytes = next.package_bytes.saturating_add(covered);
            let bytes = (grown - covered) as i128;
            // price_per_gb × bytes / 10^9: an exact decimal shift.
            let gb = Decimal::try_from_i128_with_scale(bytes, 9).map_err(|_| OVERFLOW)?;
            let traffic = rules[r as usize]
                .price_per_gb
                .checked_mul(gb)
                .ok_or(OVERFLOW)?;
            next.traffic = next.traffic.checked_add(traffic).ok_or(OVERFLOW)?;
            let ru = next.rule_mut(r, u.moment);
            ru.bytes_in = ru.bytes_in.checked_add(din).ok_or(OVERFLOW)?;
            ru.bytes_out = ru.bytes_out.checked_add(dout).ok_or(OVERFLOW)?;
            ru.traffic = ru.traffic.checked_add(traffic).ok_or(OVERFLOW)?;
            ru.end = ru.end.max(u.moment);
        }
        next.advance_counters(u, &out);
        let now = group.round(next.checked_cost().ok_or(OVERFLOW)?);
        out.delta = now.checked_sub(self.charged).ok_or(OVERFLOW)?;
        next.charged = now;
        Ok((next, out))
    }
}

/// The Session-Timeout of an Access-Accept: the largest whole `s <= cap_secs` such that the
/// time charge of `[now, now + s)` under the group's charge rules (exact, split at window
/// edges, no rounding) does not exceed `credit`. A group without charge rules, or free
/// time, gives `cap_secs`; credit <= 0 gives 0.
///
/// Works on the exact numerator: the credit buys `credit × 60` of `Σ price_per_minute ×
/// seconds`; in a piece at price `p` the budget `N` buys `floor(N / p)` seconds (the
/// quotient is corrected to the exact integer by multiplying back, so Decimal's division
/// rounding cannot lose or gain a second).
pub fn session_timeout_secs(
    group: &Group,
    rules: &[ChargeRule],
    tz: &Tz,
    now: i64,
    credit: Decimal,
    cap_secs: u32,
) -> u32 {
    if credit <= Decimal::ZERO {
        return 0;
    }
    let Some(schedule) = &group.rules else {
        return cap_secs;
    };
    let Some(mut budget) = credit.checked_mul(SIXTY) else {
        return cap_secs;
    };
    let mut secs: i64 = 0;
    let mut done = false;
    schedule.split(tz, now, now + cap_secs as i64, |a, b, r| {
        if done {
            return;
        }
        let price = rules[r as usize].price_per_minute;
        let len = b - a;
        let whole = Decimal::from(len).checked_mul(price);
        match whole {
            Some(cost) if cost <= budget => {
                budget -= cost;
                secs += len;
            }
            _ => {
                // price > 0 here (a zero price costs 0 <= budget).
                let mut k = (budget / price).floor();
                while k > Decimal::ZERO && k * price > budget {
                    k -= Decimal::ONE;
                }
                while (k + Decimal::ONE) * price <= budget {
                    k += Decimal::ONE;
                }
                secs += i64::try_from(k).unwrap_or(0).min(len);
                done = true;
            }
        }
    });
    secs.clamp(0, cap_secs as i64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{load_rate_deck, Catalog, Rounding};
    use crate::config::{ConfigSource, LoadedConfig};
    use proptest::prelude::*;
    use rust_decimal_macros_free::d;

    /// `d("1.25")`: a Decimal literal for tables.
    mod rust_decimal_macros_free {
        pub fn d(s: &str) -> rust_decimal::Decimal {
            s.parse().unwrap()
        }
    }

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    const DECK: &str = "prefix,description,price_per_minute,connect_fee,first_increment,next_increment,days,start,end
1,USA,0.0100,0,60,60
44,UK,0.0200,0.0100,30,6
4420,London,0.0150,0,1,1
49,DE offpeak,0.0300,0.0010,60,60
49,DE peak,0.0600,0.0500,60,60,mon;tue;wed;thu;fri,08:00,18:00
7,RU night,0.0100,0.0200,60,60,mon;tue;wed;thu;fri;sat;sun,22:00,06:00
7,RU day,0.0400,0,60,60,mon;tue;wed;thu;fri;sat;sun,06:00,22:00
3,Wknd,0.0100,0,1,1,sat;sun,00:00,00:00
3,Weekday,0.0200,0,1,1
";

    fn deck() -> Tariff {
        load_rate_deck("t", "t.csv", DECK).unwrap()
    }

    /// (callee, start UTC, d, answered, want status, want billed, want exact cost)
    /// Every expectation below is computed by hand in the comment beside it.
    #[test]
    fn voip_table() {
        let t = deck();
        let utc: Tz = "UTC".parse().unwrap();
        // 2026-11-02 is a Monday.
        let cases: &[(&str, &str, i64, bool, Status, i64, &str)] = &[
            // 60/60: 61 s -> 120 s at 0.01/min = 0.02
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                61,
                true,
                Status::Ok,
                120,
                "0.02",
            ),
            // exactly one increment: 60 s -> 0.01
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                60,
                true,
                Status::Ok,
                60,
                "0.01",
            ),
            // 30/6: 31 s -> 36 s; 0.01 fee + 0.02*36/60 = 0.01 + 0.012 = 0.022
            (
                "447700900123",
                "2026-11-02T10:00:00Z",
                31,
                true,
                Status::Ok,
                36,
                "0.022",
            ),
            // 30/6: 5 s -> 30 s; 0.01 + 0.02*30/60 = 0.02
            (
                "447700900123",
                "2026-11-02T10:00:00Z",
                5,
                true,
                Status::Ok,
                30,
                "0.020",
            ),
            // 1/1 on the longer prefix 4420: 65 s * 0.015/60 = 0.01625
            (
                "+44 20 7123 4567",
                "2026-11-02T10:00:00Z",
                65,
                true,
                Status::Ok,
                65,
                "0.01625",
            ),
            // 00 prefix dropped: 0044 20... is 4420...
            (
                "00442071234567",
                "2026-11-02T10:00:00Z",
                65,
                true,
                Status::Ok,
                65,
                "0.01625",
            ),
            // window edge: 17:30-18:30 Monday, DE: 30 min peak 0.06 + 30 min offpeak 0.03
            // + peak connect fee 0.05 = 0.05 + 1.8 + 0.9 = 2.75
            (
                "4930123456",
                "2026-11-02T17:30:00Z",
                3600,
                true,
                Status::Ok,
                3600,
                "2.75",
            ),
            // crossing midnight Friday -> Saturday on prefix 3: 23:59:00-00:01:00:
            // 60 s weekday 0.02 + 60 s weekend 0.01 -> (1.2 + 0.6)/60 = 0.03
            (
                "3312345",
                "2026-11-06T23:59:00Z",
                120,
                true,
                Status::Ok,
                120,
                "0.03",
            ),
            // wrapping night window (22:00-06:00) crossing midnight, start 21:30 Monday:
            // 30 min day 0.04 + 60 min night 0.01, fee of the day row (0) = 1.2 + 0.6 = 1.8
            (
                "74951234567",
                "2026-11-02T21:30:00Z",
                5400,
                true,
                Status::Ok,
                5400,
                "1.8",
            ),
            // start inside the night window: connect fee 0.02 + 10 min * 0.01 = 0.12
            (
                "74951234567",
                "2026-11-03T02:00:00Z",
                600,
                true,
                Status::Ok,
                600,
                "0.12",
            ),
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                61,
                false,
                Status::Unanswered,
                0,
                "0",
            ),
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                0,
                true,
                Status::Unanswered,
                0,
                "0",
            ),
            (
                "8612345",
                "2026-11-02T10:00:00Z",
                61,
                true,
                Status::NoRate,
                0,
                "0",
            ),
            ("", "2026-11-02T10:00:00Z", 61, true, Status::NoRate, 0, "0"),
        ];
        let mut scratch = Vec::new();
        for (callee, start, dur, ans, status, billed, cost) in cases {
            let r = rate_call(&t, &utc, callee, ts(start), *dur, *ans, &mut scratch);
            assert_eq!(
                (r.status, r.billed_secs, r.cost_exact),
                (*status, *billed, d(cost)),
                "{callee} {start} {dur}"
            );
            if r.status == Status::Ok {
                let sum: Decimal = r.pieces.iter().map(|p| p.credit).sum();
                let fee = t.rows[r.row_at_start.unwrap() as usize].connect_fee;
                assert_eq!(sum + fee, r.cost_exact);
            }
        }
    }

    #[test]
    fn window_split_pieces() {
        let t = deck();
        let utc: Tz = "UTC".parse().unwrap();
        let r = rate_call(
            &t,
            &utc,
            "4930123456",
            ts("2026-11-02T17:30:00Z"),
            3600,
            true,
            &mut Vec::new(),
        );
        let pieces: Vec<(i64, &str, Decimal)> = r
            .pieces
            .iter()
            .map(|p| {
                (
                    p.end - p.start,
                    t.rows[p.item as usize].description.as_str(),
                    p.credit,
                )
            })
            .collect();
        assert_eq!(
            pieces,
            vec![(1800, "DE peak", d("1.8")), (1800, "DE offpeak", d("0.9"))]
        );
    }

    #[test]
    fn dst_day_in_local_zone() {
        // Europe/Berlin, 2026-03-29 (Sunday) loses 02:00-03:00. Prefix 7: night window
        // 22:00-06:00 local. A call from 01:00 CET (00:00Z) to 07:00 CEST (05:00Z) is five
        // real hours: 4 h of night (01:00-06:00 local, minus the lost hour) at 0.01 and
        // 1 h of day (06:00-07:00) at 0.04, plus the night row's connect fee 0.02:
        // 0.02 + 240*0.01 + 60*0.04 = 0.02 + 2.4 + 2.4 = 4.82
        let t = deck();
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let r = rate_call(
            &t,
            &tz,
            "74951234567",
            ts("2026-03-29T00:00:00Z"),
            5 * 3600,
            true,
            &mut Vec::new(),
        );
        assert_eq!(r.cost_exact, d("4.82"));
        assert_eq!(
            r.pieces.iter().map(|p| p.end - p.start).collect::<Vec<_>>(),
            vec![4 * 3600, 3600]
        );
    }

    #[test]
    fn increments() {
        for (d_, first, next, want) in [
            (1, 60, 60, 60),
            (60, 60, 60, 60),
            (61, 60, 60, 120),
            (31, 30, 6, 36),
            (36, 30, 6, 36),
            (37, 30, 6, 42),
            (1, 1, 1, 1),
            (59, 1, 1, 59),
            (0, 60, 60, 0),
            (5, 0, 10, 10),
            // Absurd durations saturate instead of wrapping.
            (i64::MAX, 0, 7, i64::MAX),
            (i64::MAX, 60, 1, i64::MAX),
        ] {
            assert_eq!(billed_seconds(d_, first, next), want, "{d_} {first}/{next}");
        }
    }

    #[test]
    fn rounding_methods() {
        let cases = [
            ("0.00001", 4, Rounding::Up, "0.0001"),
            ("0.00019", 4, Rounding::Down, "0.0001"),
            ("0.00015", 4, Rounding::HalfUp, "0.0002"),
            ("0.00025", 4, Rounding::HalfEven, "0.0002"),
            ("0.00035", 4, Rounding::HalfEven, "0.0004"),
            ("1.005", 2, Rounding::HalfEven, "1.00"),
            ("0.0162500", 4, Rounding::Up, "0.0163"),
        ];
        for (v, dp, r, want) in cases {
            assert_eq!(r.apply(d(v), dp), d(want), "{v} {dp} {r:?}");
        }
    }

    const CFG: &str = r#"
[[charge_rule]]
name = "day"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "08:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[charge_rule]]
name = "night"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "08:00"
price_per_minute = "0.0050"
price_per_gb = "0.2500"
[[group]]
name = "g"
charge_rules = ["night","day"]
decimals = 4
rounding = "up"
"#;

    fn catalog() -> Catalog {
        Catalog::build(&LoadedConfig::from_str(CFG, ConfigSource::BuiltinDemo, ".".into()).unwrap())
            .unwrap()
    }

    fn run(c: &Catalog, updates: &[Usage]) -> (Decimal, SessionCharge) {
        let g = &c.groups[0];
        let mut s = SessionCharge::new(&updates[0]);
        let mut total = Decimal::ZERO;
        for u in updates {
            total += s.apply(g, &c.charge_rules, &c.tz, u).unwrap().delta;
        }
        (total, s)
    }

    #[test]
    fn internet_session_split_at_rule_edge_with_gigawords() {
        let c = catalog();
        let login = ts("2026-11-02T07:30:00Z");
        // Start at 07:30, Stop at 08:30 with 2^32 + 10^9 octets in, 10^9 out.
        // Time: 30 min night 0.005 + 30 min day 0.01 = 0.15 + 0.3 = 0.45.
        // Traffic at the Stop's moment (day, 0.5/GB): (4294967296 + 2e9) B = 6.294967296 GB
        // * 0.5 = 3.147483648. Total 3.597483648 -> up to 4 dp = 3.5975.
        let u = [
            Usage {
                moment: login,
                session_time: 0,
                octets_in: 0,
                octets_out: 0,
            },
            Usage {
                moment: login + 3600,
                session_time: 3600,
                octets_in: (1u64 << 32) + 1_000_000_000,
                octets_out: 1_000_000_000,
            },
        ];
        let (total, s) = run(&c, &u);
        assert_eq!(s.cost_exact(), d("3.597483648"));
        assert_eq!(total, d("3.5975"));
        let rules: Vec<(u32, i64)> = s.rules.iter().map(|r| (r.rule, r.seconds)).collect();
        assert_eq!(rules, vec![(1, 1800), (0, 1800)]);
    }

    #[test]
    fn internet_counters_backwards_charge_nothing() {
        let c = catalog();
        let t0 = ts("2026-11-02T10:00:00Z");
        let u = [
            Usage {
                moment: t0,
                session_time: 0,
                octets_in: 0,
                octets_out: 0,
            },
            Usage {
                moment: t0 + 600,
                session_time: 600,
                octets_in: 2_000_000_000,
                octets_out: 0,
            },
            // replayed / reset counters: time and octets go backwards
            Usage {
                moment: t0 + 700,
                session_time: 300,
                octets_in: 1_000_000_000,
                octets_out: 0,
            },
            Usage {
                moment: t0 + 1200,
                session_time: 1200,
                octets_in: 2_000_000_000,
                octets_out: 0,
            },
        ];
        // 20 min day = 0.2; 2 GB at 0.5 = 1.0; total 1.2
        let (total, _) = run(&c, &u);
        assert_eq!(total, d("1.2"));
    }

    #[test]
    fn missing_start_creates_session_from_interim() {
        let c = catalog();
        let t0 = ts("2026-11-02T10:00:00Z");
        // First packet is an interim 600 s in: login is t0, 10 min day = 0.1.
        let (total, s) = run(
            &c,
            &[Usage {
                moment: t0 + 600,
                session_time: 600,
                octets_in: 0,
                octets_out: 0,
            }],
        );
        assert_eq!(s.login_time, t0);
        assert_eq!(total, d("0.1"));
    }

    /// Issue 10 item 7: absurd gigawords (2^64 - 1 octets) gave a 6.9e9 charge. A jump
    /// beyond what a 100 Gbit/s link carries in the update's time (or beyond 10^15 bytes)
    /// is an anomaly: its traffic charges nothing and the counters stay put, so the next
    /// sane update is charged from the last sane one.
    #[test]
    fn absurd_traffic_growth_is_an_anomaly() {
        let c = catalog();
        let g = &c.groups[0];
        let t0 = ts("2026-11-02T10:00:00Z");
        let at = |secs: i64, o_in: u64, o_out: u64| Usage {
            moment: t0 + secs,
            session_time: secs,
            octets_in: o_in,
            octets_out: o_out,
        };
        let mut s = SessionCharge::new(&at(0, 0, 0));
        // (update, anomaly?, credit taken) — day rule: 0.01/min, 0.5/GB, up to 4 dp.
        let cases: &[(Usage, bool, &str)] = &[
            // 10 min of time (0.1); 2^64 - 1 octets in: anomaly, no traffic charge.
            (at(600, u64::MAX, 0), true, "0.1"),
            // Gigawords in both directions: u64::MAX + u64::MAX must not wrap into a charge.
            (at(900, u64::MAX, u64::MAX), true, "0.05"),
            // 2 GB since the last sane update (0): 1.0, plus 5 min 0.05.
            (at(1200, 1_000_000_000, 1_000_000_000), false, "1.05"),
            // Just above the link bound for 60 s: (60 + 300) s * 12.5e9 B/s + 1 byte.
            (
                at(1260, 1_000_000_000 + 4_500_000_000_001, 1_000_000_000),
                true,
                "0.01",
            ),
            // Exactly at the bound: charged (4.5e12 B = 4500 GB * 0.5 = 2250) + 1 min 0.01.
            (
                at(1320, 1_000_000_000 + 4_500_000_000_000, 1_000_000_000),
                false,
                "2250.01",
            ),
        ];
        for (u, anomaly, want) in cases {
            let before = (s.last_octets_in, s.last_octets_out);
            let out = s.apply(g, &c.charge_rules, &c.tz, u).unwrap();
            assert_eq!(
                (out.traffic_anomaly, out.delta),
                (*anomaly, d(want)),
                "{u:?}"
            );
            if *anomaly {
                assert_eq!((s.last_octets_in, s.last_octets_out), before);
            }
        }
        // Unknown users' sessions only observe counters: the same bound applies.
        let mut s = SessionCharge::new(&at(0, 0, 0));
        assert!(s.observe(&at(60, u64::MAX, 0)).traffic_anomaly);
        assert_eq!(s.last_octets_in, 0);
        assert!(!s.observe(&at(120, 1000, 0)).traffic_anomaly);
        assert_eq!(s.last_octets_in, 1000);
    }

    /// Issue 10 item 5: a price or cost beyond Decimal's range is an error (the caller logs
    /// an anomaly), never a panic; the session is left as it was.
    #[test]
    fn overflowing_cost_is_an_error_not_a_panic() {
        let mut c = catalog();
        for r in &mut c.charge_rules {
            r.price_per_minute = Decimal::MAX;
            r.price_per_gb = Decimal::MAX;
        }
        let t0 = ts("2026-11-02T10:00:00Z");
        let mut s = SessionCharge::new(&Usage {
            moment: t0,
            session_time: 0,
            octets_in: 0,
            octets_out: 0,
        });
        let before = s.clone();
        let u = Usage {
            moment: t0 + 600,
            session_time: 600,
            octets_in: 0,
            octets_out: 0,
        };
        assert_eq!(
            s.apply(&c.groups[0], &c.charge_rules, &c.tz, &u),
            Err(RatingError::Overflow)
        );
        assert_eq!(s, before);
        // VoIP: an overflowing price or an end past i64::MAX gives NO_RATE at cost 0.
        let mut t = deck();
        for r in &mut t.rows {
            r.price_per_minute = Decimal::MAX;
        }
        let utc: Tz = "UTC".parse().unwrap();
        let r = rate_call(&t, &utc, "15551234567", t0, 3600, true, &mut Vec::new());
        assert_eq!((r.status, r.cost_exact), (Status::NoRate, Decimal::ZERO));
        let r = rate_call(
            &deck(),
            &utc,
            "15551234567",
            t0,
            i64::MAX,
            true,
            &mut Vec::new(),
        );
        assert_eq!((r.status, r.cost_exact), (Status::NoRate, Decimal::ZERO));
    }

    /// Voice with a package (DESIGN.md "Packages and expiry"): the first `free` billed
    /// seconds cost nothing, the rest is priced as without a package, the connect fee is
    /// always charged. Every expectation computed by hand beside it.
    #[test]
    fn voice_package_table() {
        let t = deck();
        let utc: Tz = "UTC".parse().unwrap();
        // (callee, start, d, free, want billed, want covered, want exact cost)
        let cases: &[(&str, &str, i64, i64, i64, i64, &str)] = &[
            // USA 0.01/min 60/60: 61 s → 120 billed; 30 free → 90 s priced = 0.015.
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                61,
                30,
                120,
                30,
                "0.015",
            ),
            // More quota than the call: all 120 s covered, cost 0.
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                61,
                200,
                120,
                120,
                "0",
            ),
            // Quota exhausted mid-call: 1 s left of 60 → 119 s priced = 0.01983333…
            (
                "15551234567",
                "2026-11-02T10:00:00Z",
                61,
                1,
                120,
                1,
                "0.0198333333333333333333333333",
            ),
            // UK 0.02/min, fee 0.01, 30/6: 31 s → 36 billed, all covered: the fee stays.
            (
                "447700900123",
                "2026-11-02T10:00:00Z",
                31,
                36,
                36,
                36,
                "0.01",
            ),
            // DE Monday 17:58, 300 s, peak at the start (fee 0.05, 60/60) → 300 billed.
            // Without a package: 0.05 + 120 s × 0.06/60 + 180 s × 0.03/60 = 0.26.
            ("4930123", "2026-11-02T17:58:00Z", 300, 0, 300, 0, "0.26"),
            // 60 s free: [17:58,17:59) covered; 60 s peak 0.06 + 180 s offpeak 0.09
            // + fee 0.05 = 0.20 (= 0.26 − the covered 60 s at 0.06).
            ("4930123", "2026-11-02T17:58:00Z", 300, 60, 300, 60, "0.20"),
            // 150 s free: the quota ends past the window edge, at 18:00:30; 150 s offpeak
            // = 0.075, + fee 0.05 = 0.125.
            (
                "4930123",
                "2026-11-02T17:58:00Z",
                300,
                150,
                300,
                150,
                "0.125",
            ),
        ];
        for (callee, start, dur, free, billed, covered, cost) in cases {
            let r = rate_call_with_package(
                &t,
                &utc,
                callee,
                ts(start),
                *dur,
                true,
                *free,
                &mut Vec::new(),
            );
            assert_eq!(r.status, Status::Ok, "{callee} {start} {free}");
            assert_eq!(
                (r.billed_secs, r.package_secs),
                (*billed, *covered),
                "{callee} {start} {free}"
            );
            assert_eq!(r.cost_exact, d(cost), "{callee} {start} {free}");
            // The pieces (covered first, at 0) cover the billed interval and sum to the time cost.
            let secs: i64 = r.pieces.iter().map(|p| p.end - p.start).sum();
            assert_eq!(secs, *billed);
            assert_eq!(r.pieces[0].start, ts(start));
        }
        // No quota: the same as rate_call.
        let a = rate_call(
            &t,
            &utc,
            "4930123",
            ts("2026-11-02T17:58:00Z"),
            300,
            true,
            &mut Vec::new(),
        );
        let b = rate_call_with_package(
            &t,
            &utc,
            "4930123",
            ts("2026-11-02T17:58:00Z"),
            300,
            true,
            0,
            &mut Vec::new(),
        );
        assert_eq!(a, b);
        // Unanswered and unrated calls take no quota.
        let r = rate_call_with_package(
            &t,
            &utc,
            "15551234567",
            ts("2026-11-02T10:00:00Z"),
            0,
            true,
            100,
            &mut Vec::new(),
        );
        assert_eq!((r.status, r.package_secs), (Status::Unanswered, 0));
        let r = rate_call_with_package(
            &t,
            &utc,
            "999",
            ts("2026-11-02T10:00:00Z"),
            60,
            true,
            100,
            &mut Vec::new(),
        );
        assert_eq!((r.status, r.package_secs), (Status::NoRate, 0));
    }

    /// Internet with a package: an update's traffic is free up to the bytes left, the rest
    /// priced at the rule in force; time is priced as usual.
    #[test]
    fn internet_package_bytes() {
        let c = catalog();
        let g = &c.groups[0];
        let t0 = ts("2026-11-02T10:00:00Z");
        let u0 = Usage {
            moment: t0,
            session_time: 0,
            octets_in: 0,
            octets_out: 0,
        };
        let mut s = SessionCharge::new(&u0);
        s.apply(g, &c.charge_rules, &c.tz, &u0).unwrap();
        // 60 s, 3 GB; 1 GB free: time 0.01, traffic 2 GB × 0.5 = 1.0 → 1.01.
        let u1 = Usage {
            moment: t0 + 60,
            session_time: 60,
            octets_in: 1_000_000_000,
            octets_out: 2_000_000_000,
        };
        let (next, out) = s
            .rate(g, &c.charge_rules, &c.tz, &u1, 1_000_000_000)
            .unwrap();
        assert_eq!((out.delta, out.package_bytes), (d("1.01"), 1_000_000_000));
        s = next;
        // Quota exhausted mid-update: 0.25 GB left of a 0.5 GB growth at 08:00+ → 0.25 GB ×
        // 0.5 = 0.125 + 60 s × 0.01/60 = 0.01 → 0.135.
        let u2 = Usage {
            moment: t0 + 120,
            session_time: 120,
            octets_in: 1_500_000_000,
            octets_out: 2_000_000_000,
        };
        let (next, out) = s.rate(g, &c.charge_rules, &c.tz, &u2, 250_000_000).unwrap();
        assert_eq!((out.delta, out.package_bytes), (d("0.135"), 250_000_000));
        assert_eq!(next.package_bytes, 1_250_000_000);
        // The bytes still count in the session's usage.
        assert_eq!(
            next.rules
                .iter()
                .map(|r| r.bytes_in + r.bytes_out)
                .sum::<u64>(),
            3_500_000_000
        );
        // Without a package the same updates cost 1.51 + 0.26 = 1.77; with it 1.145: the
        // difference is exactly the 1.25 GB covered × 0.5.
        let (plain, _) = run(&c, &[u0, u1, u2]);
        assert_eq!(plain - (d("1.01") + d("0.135")), d("0.625"));
    }

    proptest! {
        /// The package-covered part plus the priced part equals the record without a
        /// package: same billed seconds, and the time numerator without a package is the
        /// one with it plus the covered seconds priced one by one at the row in force.
        #[test]
        fn package_part_plus_priced_part_is_the_whole(
            start_off in 0i64..86_400*7,
            dur in 1i64..7_200,
            free in 0i64..8_000,
            callee in prop::sample::select(vec!["15551234", "4420711", "4470012", "493012", "7495", "33"]),
        ) {
            let t = deck();
            let tz: Tz = "Europe/Berlin".parse().unwrap();
            let start = ts("2026-03-23T00:00:00Z") + start_off;
            let whole = rate_call(&t, &tz, callee, start, dur, true, &mut Vec::new());
            let with = rate_call_with_package(&t, &tz, callee, start, dur, true, free, &mut Vec::new());
            prop_assert_eq!(whole.billed_secs, with.billed_secs);
            prop_assert_eq!(with.package_secs, free.min(whole.billed_secs));
            let mut digits = Vec::new();
            destination_digits(callee, &mut digits);
            let pr = &t.prefixes[t.trie.longest_match(&digits).unwrap() as usize];
            let covered: Decimal = (start..start + with.package_secs)
                .map(|s| t.rows[pr.schedule.at(&tz, s) as usize].price_per_minute)
                .sum();
            prop_assert_eq!(whole.time_numerator, with.time_numerator + covered);
            let fee = t.rows[whole.row_at_start.unwrap() as usize].connect_fee;
            prop_assert_eq!(with.cost_exact, fee + with.time_numerator / Decimal::from(60));
            prop_assert!(with.cost_exact <= whole.cost_exact);
        }

        /// Charging interim by interim takes exactly what one Stop with the final counters
        /// takes (time split across rule edges; traffic priced at one rule).
        #[test]
        fn interims_equal_one_shot(start_off in 0i64..86_400*7, steps in proptest::collection::vec((1i64..5000, 0u64..3_000_000_000), 1..30)) {
            let c = catalog();
            let login = ts("2026-11-02T00:00:00Z") + start_off;
            let mut updates = vec![Usage { moment: login, session_time: 0, octets_in: 0, octets_out: 0 }];
            let (mut t, mut o) = (0i64, 0u64);
            for (dt, dout) in &steps {
                t += dt;
                o += dout;
                updates.push(Usage { moment: login + t, session_time: t, octets_in: 0, octets_out: o });
            }
            let (interim_total, s) = run(&c, &updates);
            let time_only: Vec<Usage> = vec![updates[0], Usage { octets_out: 0, ..*updates.last().unwrap() }];
            let (_, one) = run(&c, &time_only);
            // Same time numerator exactly; the total taken is the rounding of the exact sum.
            prop_assert_eq!(s.time_numerator, one.time_numerator);
            prop_assert_eq!(interim_total, c.groups[0].round(s.cost_exact()));
        }

        /// Cost never falls as a call gets longer.
        #[test]
        fn call_cost_monotone(start_off in 0i64..86_400*7, d1 in 1i64..20_000, extra in 0i64..5_000, callee in prop::sample::select(vec!["15551234", "4420711", "4470012", "493012", "7495", "33"])) {
            let t = deck();
            let tz: Tz = "Europe/Berlin".parse().unwrap();
            let start = ts("2026-03-23T00:00:00Z") + start_off;
            let a = rate_call(&t, &tz, callee, start, d1, true, &mut Vec::new());
            let b = rate_call(&t, &tz, callee, start, d1 + extra, true, &mut Vec::new());
            prop_assert!(b.cost_exact >= a.cost_exact);
        }

        /// Cost never falls as octets grow (within what a link carries in a minute).
        #[test]
        fn session_cost_monotone_in_octets(o1 in 0u64..2_000_000_000_000, extra in 0u64..2_000_000_000_000) {
            let c = catalog();
            let t0 = ts("2026-11-02T10:00:00Z");
            let mk = |o| [Usage { moment: t0, session_time: 0, octets_in: 0, octets_out: 0 }, Usage { moment: t0 + 60, session_time: 60, octets_in: o, octets_out: 0 }];
            let (a, _) = run(&c, &mk(o1));
            let (b, _) = run(&c, &mk(o1 + extra));
            prop_assert!(b >= a);
        }

        /// Any counters a packet can carry: never a panic or a wrap, never a negative
        /// charge, and a traffic jump beyond the bound charges nothing for traffic.
        #[test]
        fn arbitrary_counters_never_panic(updates in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()), 1..8)) {
            let c = catalog();
            let g = &c.groups[0];
            let first = Usage { moment: updates[0].3 as i64, session_time: 0, octets_in: 0, octets_out: 0 };
            let mut s = SessionCharge::new(&first);
            for (t, i, o, m) in updates {
                let u = Usage { moment: m as i64, session_time: t as i64, octets_in: i, octets_out: o };
                let before = s.clone();
                match s.apply(g, &c.charge_rules, &c.tz, &u) {
                    Ok(out) => {
                        prop_assert!(out.delta >= Decimal::ZERO);
                        if out.traffic_anomaly {
                            prop_assert_eq!((s.last_octets_in, s.last_octets_out), (before.last_octets_in, before.last_octets_out));
                            prop_assert_eq!(s.traffic, before.traffic);
                        }
                        prop_assert!(s.last_octets_in.saturating_sub(before.last_octets_in).saturating_add(s.last_octets_out.saturating_sub(before.last_octets_out)) <= MAX_UPDATE_BYTES);
                    }
                    Err(_) => prop_assert_eq!(&s, &before),
                }
            }
        }
    }
}

#[cfg(test)]
mod session_timeout_tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::config::{ConfigSource, LoadedConfig};

    const CFG: &str = r#"
[[charge_rule]]
name = "day"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "08:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0.5"
[[charge_rule]]
name = "night"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "08:00"
price_per_minute = "0.0050"
price_per_gb = "0.25"
[[charge_rule]]
name = "free"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "00:00"
price_per_minute = "0"
price_per_gb = "0"
[[group]]
name = "g"
charge_rules = ["night", "day"]
[[group]]
name = "free"
charge_rules = ["free"]
[[group]]
name = "none"
"#;

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    /// (group, now, credit, cap, want): every want computed by hand beside it. Night
    /// (00:00-08:00) costs 0.005/min = 1/12000 per s, day 0.01/min = 1/6000 per s.
    #[test]
    fn session_timeout_table() {
        let c = Catalog::build(
            &LoadedConfig::from_str(CFG, ConfigSource::BuiltinDemo, ".".into()).unwrap(),
        )
        .unwrap();
        let cases: Vec<(usize, &str, &str, u32, u32)> = vec![
            // 07:50, 0.06: 600 s night = 0.05, the remaining 0.01 buys 60 s of day.
            (0, "2026-11-02T07:50:00Z", "0.06", 86_400, 660),
            // 07:50, 0.0505: 600 s night = 0.05, 0.0005 * 6000 = 3 s of day.
            (0, "2026-11-02T07:50:00Z", "0.0505", 86_400, 603),
            // 07:50, 0.0301: 0.0301 * 12000 = 361.2 -> 361 s, all night.
            (0, "2026-11-02T07:50:00Z", "0.0301", 86_400, 361),
            // 07:50, exactly 0.05: the whole 600 s of night, nothing after.
            (0, "2026-11-02T07:50:00Z", "0.05", 86_400, 600),
            // 23:59:30, 0.01: 30 s day = 0.005, then 0.005 * 12000 = 60 s night.
            (0, "2026-11-02T23:59:30Z", "0.01", 86_400, 90),
            // 10:00, 1.00: day until 24:00 = 14 h = 8.4 > 1 -> 6000 s.
            (0, "2026-11-02T10:00:00Z", "1", 86_400, 6000),
            // 10:00, 100: a whole day costs 9.6 (16 h * 0.6 + 8 h * 0.3): capped.
            (0, "2026-11-02T10:00:00Z", "100", 86_400, 86_400),
            // Cap below what the credit buys.
            (0, "2026-11-02T07:50:00Z", "0.06", 300, 300),
            // Less than one second of night (1/12000 = 0.0000833...).
            (0, "2026-11-02T07:50:00Z", "0.00008", 86_400, 0),
            // Exactly one second of day: 0.01 / 60 is not a finite decimal, so 0.0001667
            // buys 1 s (0.0001666...) and 0.0001666 buys 0.
            (0, "2026-11-02T10:00:00Z", "0.0001667", 86_400, 1),
            (0, "2026-11-02T10:00:00Z", "0.0001666", 86_400, 0),
            (0, "2026-11-02T10:00:00Z", "0", 86_400, 0),
            (0, "2026-11-02T10:00:00Z", "-1", 86_400, 0),
            // Free time, and a group without charge rules: the cap.
            (1, "2026-11-02T10:00:00Z", "0.01", 7200, 7200),
            (2, "2026-11-02T10:00:00Z", "0.01", 86_400, 86_400),
        ];
        for (i, (g, now, credit, cap, want)) in cases.into_iter().enumerate() {
            let got = session_timeout_secs(
                &c.groups[g],
                &c.charge_rules,
                &c.tz,
                ts(now),
                credit.parse().unwrap(),
                cap,
            );
            assert_eq!(got, want, "case {i}: {now} credit {credit}");
        }
    }
}
