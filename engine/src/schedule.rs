//! Week schedules: which item (charge rule, rate row) is in force at each local minute of
//! the week, and the exact splitting of a UTC interval at the schedule's edges.
//!
//! Windows are written in local time (`rating.time_zone`). Edges are converted to UTC per
//! local date, so a DST change day has a 23- or 25-hour day and a window edge that falls in
//! the spring-forward gap moves to the first instant after the gap.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// Minutes in a week.
pub const WEEK_MINUTES: u32 = 7 * 1440;

/// A window as written in config: days (0 = Monday) plus local start/end minutes of the day.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub days: Vec<u32>,
    pub start_min: u32,
    /// Exclusive; `<= start_min` wraps into the next day.
    pub end_min: u32,
}

/// One segment of the week, `[start, end)` minutes after Monday 00:00 local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment<T> {
    start: u32,
    end: u32,
    item: T,
}

/// The week cut into non-overlapping segments that together cover all of it.
#[derive(Debug, Clone)]
pub struct WeekSchedule<T> {
    segments: Vec<Segment<T>>,
}

/// Why a set of windows does not form a week schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Two windows claim the same minute.
    Overlap { minute: u32 },
    /// A minute no window claims.
    Gap { from: u32, to: u32 },
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleError::Overlap { minute } => {
                write!(f, "windows overlap at {}", fmt_week_minute(*minute))
            }
            ScheduleError::Gap { from, to } => write!(
                f,
                "the week is not covered from {} to {}",
                fmt_week_minute(*from),
                fmt_week_minute(*to)
            ),
        }
    }
}

/// `mon 08:00` for a minute of the week.
pub fn fmt_week_minute(m: u32) -> String {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let m = m % WEEK_MINUTES;
    format!(
        "{} {:02}:{:02}",
        DAYS[(m / 1440) as usize],
        (m % 1440) / 60,
        m % 60
    )
}

/// Parses `mon`..`sun` (case-insensitive) to 0..6.
pub fn parse_day(s: &str) -> Option<u32> {
    match s.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Some(0),
        "tue" | "tuesday" => Some(1),
        "wed" | "wednesday" => Some(2),
        "thu" | "thursday" => Some(3),
        "fri" | "friday" => Some(4),
        "sat" | "saturday" => Some(5),
        "sun" | "sunday" => Some(6),
        _ => None,
    }
}

/// Parses `HH:MM` (00:00..=24:00) to minutes of the day.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Expands a window spec into week segments `[start, end)`, splitting at the week's end.
fn spec_ranges(spec: &WindowSpec) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &d in &spec.days {
        let s = d * 1440 + spec.start_min;
        let e = if spec.end_min > spec.start_min {
            d * 1440 + spec.end_min
        } else {
            (d + 1) * 1440 + spec.end_min
        };
        if e > WEEK_MINUTES {
            out.push((s, WEEK_MINUTES));
            out.push((0, e - WEEK_MINUTES));
        } else {
            out.push((s, e));
        }
    }
    out
}

impl<T: Copy + PartialEq> WeekSchedule<T> {
    /// A schedule with one item all week.
    pub fn constant(item: T) -> Self {
        WeekSchedule {
            segments: vec![Segment {
                start: 0,
                end: WEEK_MINUTES,
                item,
            }],
        }
    }

    /// Builds a schedule from windows; `fallback` fills whatever the windows leave open
    /// (a rate deck's unwindowed row). Without a fallback the windows must cover the week.
    pub fn build(windows: &[(WindowSpec, T)], fallback: Option<T>) -> Result<Self, ScheduleError> {
        let mut ranges: Vec<(u32, u32, T)> = Vec::new();
        for (spec, item) in windows {
            for (s, e) in spec_ranges(spec) {
                if e > s {
                    ranges.push((s, e, *item));
                }
            }
        }
        ranges.sort_by_key(|r| r.0);
        let mut segments: Vec<Segment<T>> = Vec::new();
        let mut pos = 0u32;
        for (s, e, item) in ranges {
            if s < pos {
                return Err(ScheduleError::Overlap { minute: s });
            }
            if s > pos {
                match fallback {
                    Some(f) => push_merged(&mut segments, pos, s, f),
                    None => return Err(ScheduleError::Gap { from: pos, to: s }),
                }
            }
            push_merged(&mut segments, s, e, item);
            pos = e;
        }
        if pos < WEEK_MINUTES {
            match fallback {
                Some(f) => push_merged(&mut segments, pos, WEEK_MINUTES, f),
                None => {
                    return Err(ScheduleError::Gap {
                        from: pos,
                        to: WEEK_MINUTES,
                    })
                }
            }
        }
        Ok(WeekSchedule { segments })
    }

    /// Where the schedule's segments are in memory (to prefetch them; a hint only).
    pub fn first_segment(&self) -> *const u8 {
        self.segments.as_ptr().cast()
    }

    /// True when one item holds all week (no splitting ever needed).
    pub fn is_constant(&self) -> bool {
        self.segments.len() == 1
    }

    /// Every item of the schedule, in week order (with repeats).
    pub fn items(&self) -> impl Iterator<Item = T> + '_ {
        self.segments.iter().map(|s| s.item)
    }

    fn segment_index(&self, minute_of_week: u32) -> usize {
        // Segments are sorted and contiguous: find the last one starting at or before.
        self.segments
            .partition_point(|s| s.start <= minute_of_week)
            .saturating_sub(1)
    }

    /// The item in force at a UTC instant (unix seconds).
    pub fn at(&self, tz: &Tz, t: i64) -> T {
        if self.is_constant() {
            return self.segments[0].item;
        }
        let local = local_of(tz, t);
        let m = minute_of_week(&local);
        self.segments[self.segment_index(m)].item
    }

    /// Splits `[from, to)` (unix seconds) at the schedule's edges, calling `f(piece_start,
    /// piece_end, item)` for each piece in order; consecutive pieces of one item are merged.
    pub fn split(&self, tz: &Tz, from: i64, to: i64, mut f: impl FnMut(i64, i64, T)) {
        if to <= from {
            return;
        }
        if self.is_constant() {
            f(from, to, self.segments[0].item);
            return;
        }
        let mut t = from;
        let mut pending: Option<(i64, i64, T)> = None;
        // Each iteration advances at least one second; the bound is a guard, not a limit
        // reached in practice (a piece is at least a minute long except around DST gaps).
        let mut guard = 0u32;
        while t < to {
            guard += 1;
            let local = local_of(tz, t);
            let m = minute_of_week(&local);
            let idx = self.segment_index(m);
            let seg = self.segments[idx];
            let edge = self.next_edge_utc(tz, &local, seg.end, t);
            let end = edge.min(to).max(t + 1);
            match pending {
                Some((ps, _pe, pi)) if pi == seg.item => pending = Some((ps, end, pi)),
                Some(p) => {
                    f(p.0, p.1, p.2);
                    pending = Some((t, end, seg.item));
                }
                None => pending = Some((t, end, seg.item)),
            }
            t = end;
            if guard > 1_000_000 {
                break;
            }
        }
        if let Some(p) = pending {
            f(p.0, p.1, p.2);
        }
    }

    /// The UTC instant of the segment edge `edge_min` (minute of week, may equal the week's
    /// end) following local time `local`, which corresponds to the UTC instant `t`.
    fn next_edge_utc(&self, tz: &Tz, local: &NaiveDateTime, edge_min: u32, t: i64) -> i64 {
        let week_start =
            local.date() - Duration::days(local.weekday().num_days_from_monday() as i64);
        let naive = week_start.and_hms_opt(0, 0, 0).expect("midnight exists")
            + Duration::minutes(edge_min as i64);
        local_to_utc_after(tz, naive, t)
    }
}

fn push_merged<T: Copy + PartialEq>(segs: &mut Vec<Segment<T>>, start: u32, end: u32, item: T) {
    if let Some(last) = segs.last_mut() {
        if last.item == item && last.end == start {
            last.end = end;
            return;
        }
    }
    segs.push(Segment { start, end, item });
}

fn local_of(tz: &Tz, t: i64) -> NaiveDateTime {
    let utc = DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
    utc.with_timezone(tz).naive_local()
}

fn minute_of_week(local: &NaiveDateTime) -> u32 {
    local.weekday().num_days_from_monday() * 1440 + local.hour() * 60 + local.minute()
}

/// Converts a local wall-clock time to the first UTC instant strictly after `after` that
/// shows it; a time inside a spring-forward gap maps to the end of the gap.
pub fn local_to_utc_after(tz: &Tz, naive: NaiveDateTime, after: i64) -> i64 {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => dt.timestamp(),
        LocalResult::Ambiguous(a, b) => {
            if a.timestamp() > after {
                a.timestamp()
            } else {
                b.timestamp()
            }
        }
        LocalResult::None => {
            // In the gap: the first valid local minute after it is the transition instant.
            let mut probe = naive;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                if let LocalResult::Single(dt) | LocalResult::Ambiguous(dt, _) =
                    tz.from_local_datetime(&probe)
                {
                    // The first valid local minute after the gap is the gap's end, which
                    // is the transition instant itself.
                    return dt.timestamp();
                }
            }
            naive.and_utc().timestamp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(days: &[u32], start: &str, end: &str) -> WindowSpec {
        WindowSpec {
            days: days.to_vec(),
            start_min: parse_hhmm(start).unwrap(),
            end_min: parse_hhmm(end).unwrap(),
        }
    }

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    const ALL: [u32; 7] = [0, 1, 2, 3, 4, 5, 6];

    #[test]
    fn coverage_errors_name_the_minute() {
        let gap = WeekSchedule::build(&[(spec(&ALL, "08:00", "24:00"), 1u8)], None).unwrap_err();
        assert_eq!(
            gap.to_string(),
            "the week is not covered from mon 00:00 to mon 08:00"
        );
        let overlap = WeekSchedule::build(
            &[
                (spec(&ALL, "00:00", "09:00"), 1u8),
                (spec(&ALL, "08:00", "00:00"), 2u8),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(overlap, ScheduleError::Overlap { minute: 8 * 60 });
    }

    #[test]
    fn wrapping_window_covers_past_midnight_and_week_end() {
        let s = WeekSchedule::build(
            &[
                (spec(&ALL, "22:00", "06:00"), 1u8),
                (spec(&ALL, "06:00", "22:00"), 2u8),
            ],
            None,
        )
        .unwrap();
        let tz: Tz = "UTC".parse().unwrap();
        // 2026-11-01 is a Sunday: 23:00 sunday and 05:00 monday are both in window 1.
        assert_eq!(s.at(&tz, ts("2026-11-01T23:00:00Z")), 1);
        assert_eq!(s.at(&tz, ts("2026-11-02T05:59:59Z")), 1);
        assert_eq!(s.at(&tz, ts("2026-11-02T06:00:00Z")), 2);
    }

    #[test]
    fn split_at_edges_and_merge_same_item() {
        let s = WeekSchedule::build(
            &[
                (spec(&ALL, "00:00", "18:00"), 1u8),
                (spec(&ALL, "18:00", "24:00"), 2u8),
            ],
            None,
        )
        .unwrap();
        let tz: Tz = "UTC".parse().unwrap();
        let mut pieces = Vec::new();
        s.split(
            &tz,
            ts("2026-11-02T17:30:00Z"),
            ts("2026-11-03T00:30:00Z"),
            |a, b, i| pieces.push((b - a, i)),
        );
        assert_eq!(pieces, vec![(1800, 1), (6 * 3600, 2), (1800, 1)]);
    }

    #[test]
    fn dst_edges_follow_local_time() {
        // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (a 23-hour day);
        // 2026-10-25 03:00 CEST -> 02:00 CET (a 25-hour day).
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let s = WeekSchedule::build(
            &[
                (spec(&ALL, "00:00", "08:00"), 1u8),
                (spec(&ALL, "08:00", "24:00"), 2u8),
            ],
            None,
        )
        .unwrap();
        let mut pieces = Vec::new();
        // Local midnight to local midnight on the spring day: 8 h night exists as 7 h.
        s.split(
            &tz,
            ts("2026-03-28T23:00:00Z"),
            ts("2026-03-29T22:00:00Z"),
            |a, b, i| pieces.push((b - a, i)),
        );
        assert_eq!(pieces, vec![(7 * 3600, 1), (16 * 3600, 2)]);
        pieces.clear();
        s.split(
            &tz,
            ts("2026-10-24T22:00:00Z"),
            ts("2026-10-25T23:00:00Z"),
            |a, b, i| pieces.push((b - a, i)),
        );
        assert_eq!(pieces, vec![(9 * 3600, 1), (16 * 3600, 2)]);
        // A window edge inside the gap (02:30 does not exist) moves to the gap's end.
        let g = WeekSchedule::build(
            &[
                (spec(&ALL, "02:30", "12:00"), 1u8),
                (spec(&ALL, "12:00", "02:30"), 2u8),
            ],
            None,
        )
        .unwrap();
        pieces.clear();
        // 00:00 CET (23:00Z) to 04:00 CEST (02:00Z): rule 2 until 03:00 CEST = 01:00Z.
        g.split(
            &tz,
            ts("2026-03-28T23:00:00Z"),
            ts("2026-03-29T02:00:00Z"),
            |a, b, i| pieces.push((b - a, i)),
        );
        assert_eq!(pieces, vec![(2 * 3600, 2), (3600, 1)]);
    }
}
