//! The runtime catalog: the validated, compiled form of a config.
//!
//! Built once at start ([`Catalog::build`]); rating only reads it. Prefixes are compiled into
//! a digit trie (100k prefixes load in a fraction of a second), charge rules and rate rows
//! into [`WeekSchedule`]s whose week coverage is checked here, so a bad config fails at start
//! naming the file, key and reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::config::{ConfigError, LoadedConfig};
use crate::schedule::{parse_day, parse_hhmm, WeekSchedule, WindowSpec};

/// How a record's cost is rounded to the group's decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Up,
    Down,
    HalfUp,
    HalfEven,
}

impl Rounding {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "up" => Some(Rounding::Up),
            "down" => Some(Rounding::Down),
            "half_up" => Some(Rounding::HalfUp),
            "half_even" => Some(Rounding::HalfEven),
            _ => None,
        }
    }

    /// Rounds a (non-negative) cost to `decimals` places.
    pub fn apply(self, v: Decimal, decimals: u32) -> Decimal {
        let strategy = match self {
            Rounding::Up => RoundingStrategy::AwayFromZero,
            Rounding::Down => RoundingStrategy::ToZero,
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
        };
        v.round_dp_with_strategy(decimals, strategy)
    }
}

/// An internet charge rule.
#[derive(Debug, Clone)]
pub struct ChargeRule {
    pub id: u32,
    pub name: String,
    pub price_per_minute: Decimal,
    pub price_per_gb: Decimal,
}

/// A subscriber group.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: u32,
    pub name: String,
    /// Which charge rule (index into `Catalog::charge_rules`) is in force when.
    pub rules: Option<WeekSchedule<u32>>,
    /// Index into `Catalog::tariffs`.
    pub tariff: Option<usize>,
    pub decimals: u32,
    pub rounding: Rounding,
    /// `max_sessions`: most open sessions of one subscriber (None = unlimited).
    pub max_sessions: Option<u32>,
    /// `max_session_secs`: the largest Session-Timeout of an Access-Accept.
    pub max_session_secs: u32,
    /// `reply`: attributes (type, value) added to every Access-Accept, in name order.
    pub reply: Vec<(u8, Vec<u8>)>,
}

impl Group {
    /// The one rounding of a record's exact cost.
    pub fn round(&self, exact: Decimal) -> Decimal {
        self.rounding.apply(exact, self.decimals)
    }
}

/// One row of a rate deck.
#[derive(Debug, Clone)]
pub struct RateRow {
    pub description: String,
    pub price_per_minute: Decimal,
    pub connect_fee: Decimal,
    pub first_increment: u32,
    pub next_increment: u32,
}

/// All rows of one prefix, as a week schedule of row indices.
#[derive(Debug, Clone)]
pub struct PrefixRates {
    pub prefix: String,
    pub schedule: WeekSchedule<u32>,
}

/// A VoIP rate deck.
#[derive(Debug, Clone)]
pub struct Tariff {
    pub name: String,
    pub rows: Vec<RateRow>,
    pub prefixes: Vec<PrefixRates>,
    pub trie: PrefixTrie,
}

impl Tariff {
    /// Longest prefix of `digits` in the deck.
    pub fn lookup(&self, digits: &[u8]) -> Option<&PrefixRates> {
        self.trie
            .longest_match(digits)
            .map(|i| &self.prefixes[i as usize])
    }
}

/// A digit trie mapping prefixes to values; the longest match wins.
#[derive(Debug, Clone, Default)]
pub struct PrefixTrie {
    /// `children[node][digit]`, 0 = none (node 0 is the root, never a child).
    children: Vec<[u32; 10]>,
    values: Vec<u32>,
}

const NO_VALUE: u32 = u32::MAX;

impl PrefixTrie {
    pub fn new() -> Self {
        PrefixTrie {
            children: vec![[0; 10]],
            values: vec![NO_VALUE],
        }
    }

    /// Inserts `prefix` (ASCII digits); returns the previous value if the prefix was there.
    pub fn insert(&mut self, prefix: &[u8], value: u32) -> Option<u32> {
        let mut node = 0usize;
        for &c in prefix {
            let d = (c - b'0') as usize;
            let next = self.children[node][d];
            node = if next == 0 {
                self.children.push([0; 10]);
                self.values.push(NO_VALUE);
                let n = (self.children.len() - 1) as u32;
                self.children[node][d] = n;
                n as usize
            } else {
                next as usize
            };
        }
        let old = std::mem::replace(&mut self.values[node], value);
        (old != NO_VALUE).then_some(old)
    }

    /// The value of the longest prefix of `digits` present, if any.
    pub fn longest_match(&self, digits: &[u8]) -> Option<u32> {
        let mut s = PrefixSearch::new(self, digits);
        while s.step() {}
        s.result()
    }
}

/// One longest-prefix search of [`PrefixTrie::longest_match_many`].
pub struct PrefixSearch<'a> {
    trie: &'a PrefixTrie,
    digits: &'a [u8],
    node: u32,
    pos: usize,
    best: u32,
    /// `values[node]` is still to be read (it was prefetched when the search stepped).
    unread: bool,
    live: bool,
}

impl<'a> PrefixSearch<'a> {
    pub fn new(trie: &'a PrefixTrie, digits: &'a [u8]) -> Self {
        PrefixSearch {
            trie,
            digits,
            node: 0,
            pos: 0,
            best: trie.values[0],
            unread: false,
            live: true,
        }
    }

    /// The value of the longest prefix found, once [`PrefixTrie::longest_match_many`] ran.
    pub fn result(&self) -> Option<u32> {
        (self.best != NO_VALUE).then_some(self.best)
    }

    /// One step: reads the node reached last step (prefetched then) and goes one digit
    /// deeper (a non-digit or a missing child ends the search), prefetching the node it
    /// reaches. False once the search is over.
    #[inline]
    fn step(&mut self) -> bool {
        let t = self.trie;
        if self.unread {
            let v = t.values[self.node as usize];
            if v != NO_VALUE {
                self.best = v;
            }
            self.unread = false;
        }
        let next = match self.digits.get(self.pos) {
            Some(c) if c.wrapping_sub(b'0') <= 9 => {
                t.children[self.node as usize][c.wrapping_sub(b'0') as usize]
            }
            _ => 0,
        };
        if next == 0 {
            self.live = false;
            return false;
        }
        self.node = next;
        self.pos += 1;
        self.unread = true;
        // A node's ten children are 40 bytes: maybe across two cache lines.
        let row: *const u8 = t.children[next as usize].as_ptr().cast();
        crate::prefetch(row, 1);
        crate::prefetch(row.wrapping_add(36), 1);
        crate::prefetch_value(&t.values[next as usize]);
        true
    }
}

impl PrefixTrie {
    /// [`PrefixTrie::longest_match`] of many searches at once (each in its own trie): the
    /// searches advance one digit each in turn, and each reads a node a round after it
    /// asked the CPU for it, so the cache misses of a deep trie (50k prefixes: the lower
    /// levels are not in cache) overlap instead of following one another. Same results as
    /// `longest_match` one by one.
    pub fn longest_match_many(searches: &mut [PrefixSearch<'_>]) {
        let mut live = searches.iter().filter(|s| s.live).count();
        while live > 0 {
            for s in searches.iter_mut().filter(|s| s.live) {
                if !s.step() {
                    live -= 1;
                }
            }
        }
    }
}

/// A RADIUS client.
#[derive(Debug, Clone)]
pub struct Nas {
    pub name: String,
    pub ip: IpAddr,
    pub secret: Vec<u8>,
    pub interim_interval_secs: Option<u64>,
    /// Most sessions of this NAS open at once (`[[nas]] max_sessions`); for a proxy, of all
    /// the NASes it relays together.
    pub max_sessions: usize,
    /// Where Disconnect/CoA-Requests for the NASes this client relays go (`coa_server`).
    pub coa_server: Option<std::net::SocketAddr>,
    /// Access-Requests must carry a Message-Authenticator.
    pub require_message_authenticator: bool,
    /// UDP port of the NAS's RFC 5176 server (Disconnect-Requests).
    pub coa_port: u16,
}

/// An API administrator.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
    pub password: String,
    /// Method patterns this admin may call (`*`, `module.*` or a method name).
    pub allow: Vec<String>,
}

impl Admin {
    /// Whether `method` (as the calling dialect names it) is within `allow`.
    pub fn may_call(&self, method: &str) -> bool {
        self.allow.iter().any(|p| {
            p == "*"
                || p == method
                || p.strip_suffix(".*").is_some_and(|m| {
                    method
                        .strip_prefix(m)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
        })
    }
}

/// A CDR file format: a built-in one, or the `[[cdr_format]]` template at this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdrFormat {
    Generic,
    Asterisk,
    Freeswitch,
    Template(u16),
}

/// The format of the template at index `i` of [`Catalog::cdr_formats`].
fn format_at(i: usize) -> CdrFormat {
    match i {
        0 => CdrFormat::Generic,
        1 => CdrFormat::Asterisk,
        2 => CdrFormat::Freeswitch,
        i => CdrFormat::Template(i as u16),
    }
}

/// The validated runtime catalog.
#[derive(Debug)]
pub struct Catalog {
    pub source_name: String,
    pub tz: Tz,
    pub radius_listen: String,
    /// `[radius] auth_listen`: the authorization listener (None = off).
    pub auth_listen: Option<String>,
    pub api_listen: String,
    pub data_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_format: CdrFormat,
    /// The built-in formats (generic, asterisk, freeswitch) then `[[cdr_format]]`s.
    pub cdr_formats: Vec<crate::template::Template>,
    /// `[cdr] max_call_secs`: a CDR with more billable seconds is a bad line.
    pub max_call_secs: i64,
    pub stale_timeout_secs: u64,
    pub commit_wait_ms: u64,
    /// `[radius] max_session_secs`: a RADIUS update claiming a longer Acct-Session-Time is
    /// an anomaly, acknowledged but not rated.
    pub max_session_secs: i64,
    pub session_idle_secs: u64,
    /// Timeouts and caps of the API's HTTP server.
    pub api_limits: crate::config::ApiLimits,
    pub admins: Vec<Admin>,
    /// `[[hook]]`s: provisioning event handlers.
    pub hooks: Vec<crate::events::Hook>,
    pub nas: Vec<Nas>,
    pub charge_rules: Vec<ChargeRule>,
    pub groups: Vec<Group>,
    pub tariffs: Vec<Tariff>,
    /// `[[package]]`s (DESIGN.md Part 2 "Packages and expiry").
    pub packages: Vec<crate::packages::Package>,
    group_by_name: HashMap<String, usize>,
}

/// Largest price (per minute, per GB, connect fee) a config or rate deck may set. With
/// session and call durations bounded too, every cost the core computes stays far inside
/// `Decimal`'s range (about 7.9e28), so rating arithmetic cannot overflow.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// Why a price is out of range, if it is (negative, or above [`MAX_PRICE`]).
fn price_out_of_range(text: &str, d: Decimal) -> Option<String> {
    if d.is_sign_negative() {
        Some(format!("{text:?} is negative"))
    } else if d > MAX_PRICE {
        Some(format!("{text:?} is more than {MAX_PRICE}"))
    } else {
        None
    }
}

fn parse_money(file: &str, key: &str, s: &str) -> Result<Decimal, ConfigError> {
    let d: Decimal = s.trim().parse().map_err(|_| ConfigError::Invalid {
        file: file.into(),
        key: key.into(),
        reason: format!("{s:?} is not a decimal number"),
    })?;
    if let Some(reason) = price_out_of_range(s, d) {
        return Err(ConfigError::Invalid {
            file: file.into(),
            key: key.into(),
            reason,
        });
    }
    Ok(d)
}

fn window(
    file: &str,
    key: &str,
    days: &[&str],
    start: &str,
    end: &str,
) -> Result<WindowSpec, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        file: file.into(),
        key: key.into(),
        reason,
    };
    if days.is_empty() {
        return Err(invalid("days is empty".into()));
    }
    let mut ds = Vec::new();
    for d in days {
        let v = parse_day(d).ok_or_else(|| invalid(format!("{d:?} is not a day (mon..sun)")))?;
        if ds.contains(&v) {
            return Err(invalid(format!("day {d:?} listed twice")));
        }
        ds.push(v);
    }
    let start_min =
        parse_hhmm(start).ok_or_else(|| invalid(format!("start {start:?} is not HH:MM")))?;
    let end_min = parse_hhmm(end).ok_or_else(|| invalid(format!("end {end:?} is not HH:MM")))?;
    if start_min == 24 * 60 {
        return Err(invalid("start 24:00 is not a time of day".into()));
    }
    Ok(WindowSpec {
        days: ds,
        start_min,
        end_min,
    })
}

impl Catalog {
    /// Validates a loaded config into a catalog.
    pub fn build(lc: &LoadedConfig) -> Result<Catalog, ConfigError> {
        let file = lc.source.display_name();
        let c = &lc.config;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            file: file.clone(),
            key: key.into(),
            reason,
        };
        let tz: Tz = c.rating.time_zone.parse().map_err(|_| {
            invalid(
                "rating.time_zone",
                format!("{:?} is not an IANA time zone", c.rating.time_zone),
            )
        })?;
        if !(1..=31 * 86_400).contains(&c.cdr.max_call_secs) {
            return Err(invalid(
                "cdr.max_call_secs",
                format!("{} is outside 1..=2678400 (31 days)", c.cdr.max_call_secs),
            ));
        }
        if !(1..=u32::MAX as u64).contains(&c.radius.max_session_secs) {
            return Err(invalid(
                "radius.max_session_secs",
                format!(
                    "{} is outside 1..={} (Acct-Session-Time is 32 bits)",
                    c.radius.max_session_secs,
                    u32::MAX
                ),
            ));
        }
        let mut cdr_formats: Vec<crate::template::Template> = crate::template::BUILTIN
            .iter()
            .map(|n| crate::template::Template::builtin(n).expect("built in"))
            .collect();
        for (i, f) in c.cdr_format.iter().enumerate() {
            let t = crate::template::Template::compile(f).map_err(|(key, reason)| {
                ConfigError::Invalid {
                    file: match lc.line_of("cdr_format", i) {
                        Some(l) => format!("{file}:{l}"),
                        None => file.clone(),
                    },
                    key: format!("cdr_format[{i}] ({}).{key}", f.name),
                    reason,
                }
            })?;
            if cdr_formats.iter().any(|x| x.name == t.name) {
                return Err(invalid(
                    &format!("cdr_format[{i}].name"),
                    format!("{:?} is defined twice", t.name),
                ));
            }
            cdr_formats.push(t);
        }
        let names = || {
            cdr_formats
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let spool_format = match cdr_formats.iter().position(|t| t.name == c.cdr.format) {
            Some(i) => format_at(i),
            None => {
                return Err(invalid(
                    "cdr.format",
                    format!("{:?}: expected one of {}", c.cdr.format, names()),
                ))
            }
        };
        for (key, addr) in [
            ("radius.listen", &c.radius.listen),
            ("radius.auth_listen", &c.radius.auth_listen),
            ("api.listen", &c.api.listen),
        ] {
            // An empty auth_listen turns authorization off.
            let off = key == "radius.auth_listen" && addr.is_empty();
            if !off && addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(key, format!("{addr:?} is not an address:port")));
            }
        }

        let mut hooks: Vec<crate::events::Hook> = Vec::new();
        for (i, h) in c.hook.iter().enumerate() {
            let hook =
                crate::events::Hook::build(h, i).map_err(|(key, reason)| invalid(&key, reason))?;
            if hooks.iter().any(|x| x.name == hook.name) {
                return Err(invalid(
                    &format!("hook[{i}].name"),
                    format!("{:?} is used twice", hook.name),
                ));
            }
            hooks.push(hook);
        }
        let mut packages: Vec<crate::packages::Package> = Vec::new();
        for (i, p) in c.package.iter().enumerate() {
            let at = |key: &str| match lc.line_of("package", i) {
                Some(l) => (format!("{file}:{l}"), format!("package[{i}].{key}")),
                None => (file.clone(), format!("package[{i}].{key}")),
            };
            let bad = |key: &str, reason: String| {
                let (file, key) = at(key);
                ConfigError::Invalid { file, key, reason }
            };
            if p.name.trim().is_empty() || p.name.len() > 64 {
                return Err(bad("name", "must be 1 to 64 characters".into()));
            }
            if packages.iter().any(|x| x.name == p.name) {
                return Err(bad("name", format!("{:?} is defined twice", p.name)));
            }
            let (f, k) = at("fee");
            let fee = parse_money(&f, &k, &p.fee)?;
            let period = crate::packages::Period::parse(&p.period).map_err(|r| bad("period", r))?;
            if p.voice_seconds < 0 {
                return Err(bad(
                    "voice_seconds",
                    format!("{} is negative", p.voice_seconds),
                ));
            }
            if p.data_bytes < 0 {
                return Err(bad("data_bytes", format!("{} is negative", p.data_bytes)));
            }
            packages.push(crate::packages::Package {
                name: p.name.clone(),
                fee,
                period,
                voice_seconds: p.voice_seconds,
                data_bytes: p.data_bytes,
            });
        }
        let mut admins = Vec::new();
        for (i, a) in c.admin.iter().enumerate() {
            if a.name.is_empty() || a.password.is_empty() {
                return Err(invalid(
                    &format!("admin[{i}]"),
                    "name and password must not be empty".into(),
                ));
            }
            let allow = a.allow.clone().unwrap_or_else(|| vec!["*".into()]);
            for p in &allow {
                let body = p.strip_suffix(".*").unwrap_or(p);
                if p.is_empty()
                    || (p != "*" && (body.is_empty() || body.contains('*')))
                    || p.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(invalid(
                        &format!("admin[{i}].allow"),
                        format!("{p:?}: expected \"*\", a method name or \"module.*\""),
                    ));
                }
            }
            admins.push(Admin {
                name: a.name.clone(),
                password: a.password.clone(),
                allow,
            });
        }

        let mut nas = Vec::new();
        for (i, n) in c.nas.iter().enumerate() {
            let key = format!("nas[{i}] ({})", n.name);
            let ip: IpAddr = n.ip.parse().map_err(|_| {
                invalid(
                    &format!("{key}.ip"),
                    format!("{:?} is not an IP address", n.ip),
                )
            })?;
            if n.secret.is_empty() {
                return Err(invalid(&format!("{key}.secret"), "empty secret".into()));
            }
            if nas.iter().any(|x: &Nas| x.ip == ip) {
                return Err(invalid(
                    &format!("{key}.ip"),
                    format!("{ip} is configured twice"),
                ));
            }
            // Sessions, closed-session memory and the ledger key sessions by NAS name.
            if nas.iter().any(|x: &Nas| x.name == n.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("{:?} is configured twice", n.name),
                ));
            }
            if n.name.is_empty() {
                return Err(invalid(&format!("{key}.name"), "empty name".into()));
            }
            // `<name>/<NAS>` is the session key of a NAS this client relays.
            if n.name.contains('/') {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("{:?} contains '/'", n.name),
                ));
            }
            let coa_server = match &n.coa_server {
                None => None,
                Some(a) => Some(
                    a.parse::<std::net::SocketAddr>()
                        .ok()
                        .filter(|sa| sa.port() != 0)
                        .ok_or_else(|| {
                            invalid(
                                &format!("{key}.coa_server"),
                                format!(
                                    "{a:?} is not an ip:port address (e.g. \"127.0.0.1:3799\")"
                                ),
                            )
                        })?,
                ),
            };
            if !(1..=10_000_000).contains(&n.max_sessions) {
                return Err(invalid(
                    &format!("{key}.max_sessions"),
                    format!("{} is outside 1..=10000000", n.max_sessions),
                ));
            }
            nas.push(Nas {
                name: n.name.clone(),
                ip,
                secret: n.secret.as_bytes().to_vec(),
                interim_interval_secs: n.interim_interval_secs,
                max_sessions: n.max_sessions as usize,
                coa_server,
                require_message_authenticator: n.require_message_authenticator,
                coa_port: n.coa_port,
            });
        }

        let mut charge_rules = Vec::new();
        let mut rule_windows = Vec::new();
        for (i, r) in c.charge_rule.iter().enumerate() {
            let key = format!("charge_rule[{i}] ({})", r.name);
            if charge_rules.iter().any(|x: &ChargeRule| x.name == r.name) {
                return Err(invalid(&key, "duplicate charge rule name".into()));
            }
            let days: Vec<&str> = r.days.iter().map(String::as_str).collect();
            rule_windows.push(window(&file, &key, &days, &r.start, &r.end)?);
            charge_rules.push(ChargeRule {
                id: i as u32 + 1,
                name: r.name.clone(),
                price_per_minute: parse_money(
                    &file,
                    &format!("{key}.price_per_minute"),
                    &r.price_per_minute,
                )?,
                price_per_gb: parse_money(&file, &format!("{key}.price_per_gb"), &r.price_per_gb)?,
            });
        }

        let mut tariffs = Vec::new();
        for (i, t) in c.tariff.iter().enumerate() {
            let key = format!("tariff[{i}] ({})", t.name);
            if tariffs.iter().any(|x: &Tariff| x.name == t.name) {
                return Err(invalid(&key, "duplicate tariff name".into()));
            }
            let (deck_name, text) = lc.read_rates(&t.rates)?;
            tariffs.push(load_rate_deck(&t.name, &deck_name, &text)?);
        }

        let mut groups = Vec::new();
        let mut group_by_name = HashMap::new();
        for (i, g) in c.group.iter().enumerate() {
            let key = format!("group[{i}] ({})", g.name);
            if group_by_name.contains_key(&g.name) {
                return Err(invalid(&key, "duplicate group name".into()));
            }
            let rounding = Rounding::parse(&g.rounding).ok_or_else(|| {
                invalid(
                    &format!("{key}.rounding"),
                    format!("{:?}: expected up, down, half_up or half_even", g.rounding),
                )
            })?;
            if g.decimals > 10 {
                return Err(invalid(
                    &format!("{key}.decimals"),
                    format!("{} is more than 10", g.decimals),
                ));
            }
            let rules = if g.charge_rules.is_empty() {
                None
            } else {
                let mut ws = Vec::new();
                for name in &g.charge_rules {
                    let idx = charge_rules
                        .iter()
                        .position(|r| &r.name == name)
                        .ok_or_else(|| {
                            invalid(
                                &format!("{key}.charge_rules"),
                                format!("no charge rule named {name:?}"),
                            )
                        })?;
                    ws.push((rule_windows[idx].clone(), idx as u32));
                }
                Some(
                    WeekSchedule::build(&ws, None)
                        .map_err(|e| invalid(&format!("{key}.charge_rules"), e.to_string()))?,
                )
            };
            let tariff = match &g.tariff {
                None => None,
                Some(name) => Some(tariffs.iter().position(|t| &t.name == name).ok_or_else(
                    || {
                        invalid(
                            &format!("{key}.tariff"),
                            format!("no tariff named {name:?}"),
                        )
                    },
                )?),
            };
            if !(1..=31 * 86_400).contains(&g.max_session_secs) {
                return Err(invalid(
                    &format!("{key}.max_session_secs"),
                    format!("{} is outside 1..=2678400 (31 days)", g.max_session_secs),
                ));
            }
            let mut reply = Vec::with_capacity(g.reply.len());
            for (name, v) in &g.reply {
                reply.push(
                    crate::radius::auth::encode_reply_attribute(name, v)
                        .map_err(|e| invalid(&format!("{key}.reply"), e))?,
                );
            }
            // Room for ratel's own attributes and Proxy-States in a 4096-octet reply.
            let reply_octets: usize = reply.iter().map(|(_, v)| v.len() + 2).sum();
            if reply_octets > 2048 {
                return Err(invalid(
                    &format!("{key}.reply"),
                    format!("{reply_octets} octets of attributes; at most 2048 fit a reply"),
                ));
            }
            group_by_name.insert(g.name.clone(), groups.len());
            groups.push(Group {
                id: i as u32 + 1,
                name: g.name.clone(),
                rules,
                tariff,
                decimals: g.decimals,
                rounding,
                max_sessions: g.max_sessions,
                max_session_secs: g.max_session_secs as u32,
                reply,
            });
        }

        Ok(Catalog {
            source_name: file.clone(),
            tz,
            radius_listen: c.radius.listen.clone(),
            auth_listen: (!c.radius.auth_listen.is_empty()).then(|| c.radius.auth_listen.clone()),
            api_listen: c.api.listen.clone(),
            data_dir: lc.resolve(&c.storage.data_dir),
            spool_dir: lc.resolve(&c.cdr.spool),
            spool_format,
            cdr_formats,
            max_call_secs: c.cdr.max_call_secs,
            stale_timeout_secs: c.radius.stale_timeout_secs,
            commit_wait_ms: c.radius.commit_wait_ms.clamp(1, 50),
            max_session_secs: c.radius.max_session_secs as i64,
            session_idle_secs: c.api.session_idle_secs,
            api_limits: c.api.limits(),
            admins,
            hooks,
            nas,
            charge_rules,
            groups,
            tariffs,
            packages,
            group_by_name,
        })
    }

    /// A CDR format by name: built-in or `[[cdr_format]]`.
    pub fn cdr_format(&self, name: &str) -> Option<CdrFormat> {
        self.cdr_formats
            .iter()
            .position(|t| t.name == name)
            .map(format_at)
    }

    /// The template of a format.
    pub fn template(&self, f: CdrFormat) -> &crate::template::Template {
        let i = match f {
            CdrFormat::Generic => 0,
            CdrFormat::Asterisk => 1,
            CdrFormat::Freeswitch => 2,
            CdrFormat::Template(i) => i as usize,
        };
        &self.cdr_formats[i]
    }

    /// The format of a spool file: the spool subdirectory named after a format, else the
    /// first template whose `files` glob matches the name, else `[cdr] format`.
    pub fn spool_format_of(&self, path: &std::path::Path) -> CdrFormat {
        let parent = path
            .parent()
            .filter(|p| *p != self.spool_dir)
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        if let Some(f) = parent.and_then(|n| self.cdr_format(n)) {
            return f;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        self.cdr_formats
            .iter()
            .position(|t| {
                t.files
                    .as_deref()
                    .is_some_and(|g| crate::template::glob_match(g, name))
            })
            .map(format_at)
            .unwrap_or(self.spool_format)
    }

    /// Index of a group by name.
    /// A `[[package]]` by name.
    pub fn package(&self, name: &str) -> Option<&crate::packages::Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.group_by_name.get(name).copied()
    }

    /// The `[[nas]]` entry of a session's NAS key: a NAS name, or `<client>/<NAS>` for a
    /// NAS a proxy relays (its client's entry).
    pub fn nas_entry_of_key(&self, key: &str) -> Option<u16> {
        let name = |n: &str| self.nas.iter().position(|x| x.name == n);
        name(key)
            .or_else(|| name(key.split_once('/')?.0))
            .map(|i| i as u16)
    }

    /// The NAS configured for a source IP.
    pub fn nas_by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.nas.iter().position(|n| n.ip == ip)
    }
}

/// Splits one CSV line of a rate deck (no quoting needed for these fields, but quoted
/// descriptions are accepted).
fn deck_fields(line: &str) -> Vec<String> {
    crate::csv::split_fields(line.as_bytes())
        .map(|f| String::from_utf8_lossy(&f).into_owned())
        .collect()
}

/// Parses and compiles a rate deck.
pub fn load_rate_deck(tariff: &str, file: &str, text: &str) -> Result<Tariff, ConfigError> {
    let invalid = |line: usize, field: &str, reason: String| ConfigError::Invalid {
        file: format!("{file}:{line}"),
        key: field.into(),
        reason,
    };
    // One CSV reader for every input: BOM dropped, CRLF accepted, quoted newlines kept.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut spans = Vec::new();
    crate::csv::scan_records_with(
        crate::csv::Dialect::DOC,
        text.as_bytes(),
        1,
        true,
        &mut spans,
    );
    if let Some(sp) = spans.iter().find(|sp| sp.error.is_some()) {
        let reason = sp.error.map(|e| e.reason()).unwrap_or_default();
        return Err(invalid(sp.line as usize, "row", reason.into()));
    }
    // (0-based line, record): records start on line boundaries, so slicing is safe.
    let mut lines = spans
        .iter()
        .map(|sp| (sp.line as usize - 1, &text[sp.start..sp.end]));
    let header = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((n, l)) => break (n + 1, l),
            None => return Err(invalid(1, "header", "the rate deck is empty".into())),
        }
    };
    let cols = deck_fields(header.1);
    let expected = [
        "prefix",
        "description",
        "price_per_minute",
        "connect_fee",
        "first_increment",
        "next_increment",
    ];
    if cols.len() < 6
        || cols[..6]
            .iter()
            .map(|s| s.trim())
            .ne(expected.iter().copied())
    {
        return Err(invalid(
            header.0,
            "header",
            format!("expected {}[,days,start,end]", expected.join(",")),
        ));
    }

    let mut rows: Vec<RateRow> = Vec::new();
    // Per prefix: (windowed rows, the unwindowed row, first line seen).
    type PrefixRows = (Vec<(WindowSpec, u32)>, Option<u32>, usize);
    let mut by_prefix: HashMap<String, PrefixRows> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, line) in lines {
        let ln = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f = deck_fields(line);
        if f.len() != 6 && f.len() != 9 {
            return Err(invalid(
                ln,
                "row",
                format!("expected 6 or 9 fields, found {}", f.len()),
            ));
        }
        let prefix = f[0].trim().trim_start_matches('+').to_string();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                ln,
                "prefix",
                format!("{:?} is not a digit string", f[0]),
            ));
        }
        let money = |i: usize, name: &str| -> Result<Decimal, ConfigError> {
            let d: Decimal = f[i]
                .trim()
                .parse()
                .map_err(|_| invalid(ln, name, format!("{:?} is not a decimal number", f[i])))?;
            if let Some(reason) = price_out_of_range(&f[i], d) {
                return Err(invalid(ln, name, reason));
            }
            Ok(d)
        };
        let int = |i: usize, name: &str, min: u32| -> Result<u32, ConfigError> {
            let v: u32 = f[i].trim().parse().map_err(|_| {
                invalid(
                    ln,
                    name,
                    format!("{:?} is not a whole number of seconds", f[i]),
                )
            })?;
            if v < min {
                return Err(invalid(ln, name, format!("{v} is less than {min}")));
            }
            Ok(v)
        };
        let row = RateRow {
            description: f[1].trim().to_string(),
            price_per_minute: money(2, "price_per_minute")?,
            connect_fee: money(3, "connect_fee")?,
            first_increment: int(4, "first_increment", 0)?,
            next_increment: int(5, "next_increment", 1)?,
        };
        let idx = rows.len() as u32;
        rows.push(row);
        let entry = by_prefix.entry(prefix.clone()).or_insert_with(|| {
            order.push(prefix.clone());
            (Vec::new(), None, ln)
        });
        if f.len() == 9
            && !(f[6].trim().is_empty() && f[7].trim().is_empty() && f[8].trim().is_empty())
        {
            let days: Vec<&str> = f[6]
                .split(';')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect();
            let w = window(
                &format!("{file}:{ln}"),
                "days/start/end",
                &days,
                &f[7],
                &f[8],
            )?;
            entry.0.push((w, idx));
        } else if entry.1.is_some() {
            return Err(invalid(
                ln,
                "prefix",
                format!("prefix {prefix} has two rows without a time window"),
            ));
        } else {
            entry.1 = Some(idx);
        }
    }

    let mut trie = PrefixTrie::new();
    let mut prefixes = Vec::with_capacity(order.len());
    for prefix in order {
        let (windows, fallback, first_line) = by_prefix.remove(&prefix).expect("prefix recorded");
        let schedule = if windows.is_empty() {
            WeekSchedule::constant(fallback.expect("a prefix has at least one row"))
        } else {
            WeekSchedule::build(&windows, fallback).map_err(|e| {
                invalid(
                    first_line,
                    "prefix",
                    format!("rows of prefix {prefix}: {e}"),
                )
            })?
        };
        trie.insert(prefix.as_bytes(), prefixes.len() as u32);
        prefixes.push(PrefixRates { prefix, schedule });
    }
    tracing::debug!(tariff, prefixes = prefixes.len(), "rate deck loaded");
    Ok(Tariff {
        name: tariff.to_string(),
        rows,
        prefixes,
        trie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn build(toml: &str) -> Result<Catalog, ConfigError> {
        let lc = LoadedConfig::from_str(toml, ConfigSource::File("t.toml".into()), ".".into())?;
        Catalog::build(&lc)
    }

    /// `[[package]]` errors name the file, line and key; the demo's package builds.
    #[test]
    fn package_config_errors() {
        let c = Catalog::build(&LoadedConfig::demo()).unwrap();
        let p = c.package("home-50").unwrap();
        assert_eq!(
            (p.fee, p.period, p.voice_seconds, p.data_bytes),
            (
                "10.00".parse().unwrap(),
                crate::packages::Period::Month,
                6000,
                50_000_000_000
            )
        );
        let pkg = |body: &str| format!("[[package]]\nname = \"p\"\n{body}\n");
        let cases = [
            (pkg("fee = \"1\"\nperiod = \"fortnight\""), "t.toml:1: package[0].period: \"fortnight\": expected day, week, month or \"<N> days\""),
            (pkg("fee = \"-1\"\nperiod = \"day\""), "t.toml:1: package[0].fee: \"-1\" is negative"),
            (pkg("fee = \"1.x\"\nperiod = \"day\""), "t.toml:1: package[0].fee: \"1.x\" is not a decimal number"),
            (pkg("fee = \"1\"\nperiod = \"0 days\""), "t.toml:1: package[0].period: \"0 days\": N must be 1..=3660"),
            (pkg("fee = \"1\"\nperiod = \"day\"\nvoice_seconds = -5"), "t.toml:1: package[0].voice_seconds: -5 is negative"),
            (format!("{}{}", pkg("fee = \"1\"\nperiod = \"day\""), pkg("fee = \"2\"\nperiod = \"week\"")), "t.toml:5: package[1].name: \"p\" is defined twice"),
        ];
        for (toml, want) in cases {
            assert_eq!(build(&toml).unwrap_err().to_string(), want, "{toml}");
        }
    }

    #[test]
    fn demo_config_builds() {
        let c = Catalog::build(&LoadedConfig::demo()).unwrap();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.tariffs[0].prefixes.len(), 7);
    }

    #[test]
    fn trie_longest_match() {
        let mut t = PrefixTrie::new();
        t.insert(b"1", 0);
        t.insert(b"44", 1);
        t.insert(b"4420", 2);
        assert_eq!(t.longest_match(b"442071234567"), Some(2));
        assert_eq!(t.longest_match(b"4419"), Some(1));
        assert_eq!(t.longest_match(b"4"), None);
        assert_eq!(t.longest_match(b"7"), None);
        assert_eq!(t.insert(b"44", 5), Some(1));
    }

    /// Random overlapping prefixes (digits 0–3, 1–7 long, some inserted twice, the empty
    /// prefix last): every lookup equals the longest inserted prefix found by comparing
    /// each one, with the value inserted last for it.
    #[test]
    fn trie_matches_a_search_of_every_prefix() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let digits = |n: u64, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| b'0' + ((n >> (2 * i)) & 3) as u8)
                .collect()
        };
        let mut t = PrefixTrie::new();
        let mut inserted: std::collections::HashMap<Vec<u8>, u32> = Default::default();
        for v in 0..3000u32 {
            let n = next();
            let p = digits(n, 1 + (n >> 40) as usize % 7);
            assert_eq!(t.insert(&p, v), inserted.insert(p, v));
        }
        for round in 0..2 {
            for _ in 0..5000 {
                let n = next();
                let q = digits(n, (n >> 40) as usize % 10);
                let want = inserted
                    .iter()
                    .filter(|(p, _)| q.starts_with(p))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, v)| *v);
                assert_eq!(t.longest_match(&q), want, "round {round}, {q:?}");
            }
            if round == 0 {
                assert_eq!(t.insert(b"", 7777), None);
                inserted.insert(Vec::new(), 7777);
            }
        }
    }

    /// Searches run together (two tries, queries interleaved between them, of every length
    /// up to 12 with non-digits and the empty query among them) find what a search of every
    /// inserted prefix finds, and what `longest_match` finds one by one.
    #[test]
    fn searches_together_match_searches_one_by_one() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let mut tries = [PrefixTrie::new(), PrefixTrie::new()];
        let mut inserted: [std::collections::HashMap<Vec<u8>, u32>; 2] = Default::default();
        for v in 0..4000u32 {
            let n = next();
            let k = (n & 1) as usize;
            let len = 1 + (n >> 8) as usize % 8;
            let p: Vec<u8> = (0..len)
                .map(|i| b'0' + ((n >> (16 + 3 * i)) % 5) as u8)
                .collect();
            tries[k].insert(&p, v);
            inserted[k].insert(p, v);
        }
        // The empty prefix (a deck's catch-all) in one of the two.
        tries[1].insert(b"", 9999);
        inserted[1].insert(Vec::new(), 9999);
        for round in 0..40 {
            let queries: Vec<(usize, Vec<u8>)> = (0..1 + round * 7)
                .map(|_| {
                    let n = next();
                    let len = (n >> 8) as usize % 13;
                    let q = (0..len)
                        .map(|i| match (n >> (16 + 3 * i)) % 7 {
                            6 => b'#', // not a digit: the search stops there
                            d => b'0' + d as u8,
                        })
                        .collect();
                    ((n & 1) as usize, q)
                })
                .collect();
            let mut searches: Vec<PrefixSearch<'_>> = queries
                .iter()
                .map(|(k, q)| PrefixSearch::new(&tries[*k], q))
                .collect();
            PrefixTrie::longest_match_many(&mut searches);
            for ((k, q), s) in queries.iter().zip(&searches) {
                let digits = q.iter().take_while(|c| c.is_ascii_digit()).count();
                let want = inserted[*k]
                    .iter()
                    .filter(|(p, _)| q[..digits].starts_with(p))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, v)| *v);
                assert_eq!(s.result(), want, "round {round}, trie {k}, {q:?}");
                assert_eq!(tries[*k].longest_match(q), want);
            }
        }
        // No searches at all.
        PrefixTrie::longest_match_many(&mut []);
    }

    /// Each bad config gives one error naming the file, the key and the reason.
    #[test]
    fn bad_configs_name_file_key_and_reason() {
        let rule = "[[charge_rule]]\nname='d'\ndays=['mon','tue','wed','thu','fri','sat','sun']\nstart='08:00'\nend='24:00'\nprice_per_minute='0.01'\nprice_per_gb='0.5'\n";
        let cases: &[(String, &str)] = &[
            ("[rating]\ntime_zone='Mars/Base'".into(), "t.toml: rating.time_zone: \"Mars/Base\" is not an IANA time zone"),
            ("[cdr]\nformat='csv'".into(), "t.toml: cdr.format: \"csv\": expected one of generic, asterisk, freeswitch"),
            ("[storage]\ndatadir='x'".into(), "t.toml:2: unknown field `datadir`, expected `data_dir`"),
            (format!("{rule}[[group]]\nname='g'\ncharge_rules=['d']"), "t.toml: group[0] (g).charge_rules: the week is not covered from mon 00:00 to mon 08:00"),
            (format!("{rule}[[group]]\nname='g'\ncharge_rules=['x']"), "t.toml: group[0] (g).charge_rules: no charge rule named \"x\""),
            (rule.replace("0.01", "abc"), "t.toml: charge_rule[0] (d).price_per_minute: \"abc\" is not a decimal number"),
            (rule.replace("'sun'", "'sunn'"), "t.toml: charge_rule[0] (d): \"sunn\" is not a day (mon..sun)"),
            (rule.replace("24:00", "25:00"), "t.toml: charge_rule[0] (d): end \"25:00\" is not HH:MM"),
            ("[[group]]\nname='g'\nrounding='ceil'".into(), "t.toml: group[0] (g).rounding: \"ceil\": expected up, down, half_up or half_even"),
            ("[[nas]]\nname='n'\nip='1.2.3'\nsecret='s'".into(), "t.toml: nas[0] (n).ip: \"1.2.3\" is not an IP address"),
            ("[[tariff]]\nname='t'\nrates='/nonexistent/x.csv'".into(), "/nonexistent/x.csv: cannot read"),
        ];
        for (toml, want) in cases {
            let err = build(toml).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "config {toml:?}\n got: {err}\nwant: {want}"
            );
            assert!(!err.contains('\n'), "multi-line error: {err}");
        }
    }

    /// Issue 10 items 4, 5, 6, 10: two NASes with one name (or one IP) would share sessions;
    /// prices are bounded to 0..=MAX_PRICE so rating cannot overflow; the RADIUS bounds are
    /// range-checked. Each error names the file, the key and the reason.
    #[test]
    fn nas_radius_and_price_bounds_name_file_key_and_reason() {
        let rule = "[[charge_rule]]\nname='d'\ndays=['mon','tue','wed','thu','fri','sat','sun']\nstart='08:00'\nend='24:00'\nprice_per_minute='0.01'\nprice_per_gb='0.5'\n";
        let nas = "[[nas]]\nname='n'\nip='10.0.0.1'\nsecret='s'\n";
        let cases: &[(String, &str)] = &[
            (nas.to_string() + "[[nas]]\nname='n'\nip='10.0.0.2'\nsecret='s'", "t.toml: nas[1] (n).name: \"n\" is configured twice"),
            (nas.to_string() + "[[nas]]\nname='m'\nip='10.0.0.1'\nsecret='s'", "t.toml: nas[1] (m).ip: 10.0.0.1 is configured twice"),
            (nas.to_string() + "max_sessions=0", "t.toml: nas[0] (n).max_sessions: 0 is outside 1..=10000000"),
            (nas.to_string() + "coa_server='proxy:3799'", "t.toml: nas[0] (n).coa_server: \"proxy:3799\" is not an ip:port address (e.g. \"127.0.0.1:3799\")"),
            (nas.to_string() + "coa_server='127.0.0.1'", "t.toml: nas[0] (n).coa_server: \"127.0.0.1\" is not an ip:port address (e.g. \"127.0.0.1:3799\")"),
            (nas.to_string() + "coa_server='127.0.0.1:0'", "t.toml: nas[0] (n).coa_server: \"127.0.0.1:0\" is not an ip:port address (e.g. \"127.0.0.1:3799\")"),
            ("[[nas]]\nname='a/b'\nip='10.0.0.1'\nsecret='s'".into(), "t.toml: nas[0] (a/b).name: \"a/b\" contains '/'"),
            ("[radius]\nmax_session_secs=4294967296".into(), "t.toml: radius.max_session_secs: 4294967296 is outside 1..=4294967295 (Acct-Session-Time is 32 bits)"),
            (rule.replace("0.5", "1000000000.01"), "t.toml: charge_rule[0] (d).price_per_gb: \"1000000000.01\" is more than 1000000000"),
            (rule.replace("0.01", "-0.01"), "t.toml: charge_rule[0] (d).price_per_minute: \"-0.01\" is negative"),
        ];
        for (toml, want) in cases {
            let err = build(toml).unwrap_err().to_string();
            assert_eq!(&err, want, "config {toml:?}");
        }
        let h = "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n";
        let decks: &[(String, &str)] = &[
            (
                format!("{h}1,US,2000000000,0,60,60\n"),
                "d.csv:2: price_per_minute: \"2000000000\" is more than 1000000000",
            ),
            (
                format!("{h}1,US,0.1,99999999999999999999,60,60\n"),
                "d.csv:2: connect_fee: \"99999999999999999999\" is more than 1000000000",
            ),
        ];
        for (text, want) in decks {
            let err = load_rate_deck("t", "d.csv", text).unwrap_err().to_string();
            assert_eq!(&err, want, "deck {text:?}");
        }
        let ok = build(&format!(
            "{nas}max_sessions=3\n[radius]\nmax_session_secs=60\n{}",
            rule.replace("0.5", "1000000000")
        ))
        .unwrap();
        assert_eq!((ok.nas[0].max_sessions, ok.max_session_secs), (3, 60));
        let proxy = build(&format!("{nas}coa_server='127.0.0.1:3799'\n")).unwrap();
        assert_eq!(
            proxy.nas[0].coa_server,
            Some("127.0.0.1:3799".parse().unwrap())
        );
        assert_eq!(build(nas).unwrap().nas[0].coa_server, None);
        assert_eq!(ok.charge_rules[0].price_per_gb, MAX_PRICE);
        let defaults = build(nas).unwrap();
        assert_eq!(
            (defaults.nas[0].max_sessions, defaults.max_session_secs),
            (100_000, 2_678_400)
        );
    }

    #[test]
    fn rate_deck_errors_name_line_and_field() {
        let h = "prefix,description,price_per_minute,connect_fee,first_increment,next_increment,days,start,end\n";
        let cases: &[(String, &str)] = &[
            (format!("{h}1,US,x,0,60,60\n"), "d.csv:2: price_per_minute: \"x\" is not a decimal number"),
            (format!("{h}1,US,0.1,0,60,0\n"), "d.csv:2: next_increment: 0 is less than 1"),
            (format!("{h}1a,US,0.1,0,60,60\n"), "d.csv:2: prefix: \"1a\" is not a digit string"),
            (format!("{h}1,US,0.1,0,60,60\n1,US2,0.1,0,60,60\n"), "d.csv:3: prefix: prefix 1 has two rows without a time window"),
            (format!("{h}1,US,0.1,0,60,60,mon,08:00,18:00\n"), "d.csv:2: prefix: rows of prefix 1: the week is not covered from mon 00:00 to mon 08:00"),
            (format!("{h}1,US,0.1,0,60,60\n1,p,0.1,0,60,60,mon,08:00,18:00\n1,q,0.1,0,60,60,mon,17:00,19:00\n"), "d.csv:2: prefix: rows of prefix 1: windows overlap at mon 17:00"),
            ("prefix,desc\n".into(), "d.csv:1: header: expected prefix,description"),
        ];
        for (text, want) in cases {
            let err = load_rate_deck("t", "d.csv", text).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "deck {text:?}\n got: {err}\nwant: {want}"
            );
        }
    }

    #[test]
    fn hundred_thousand_prefixes_compile() {
        let mut s = String::from(
            "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n",
        );
        for i in 0..100_000u32 {
            s.push_str(&format!(
                "{},d{i},0.0{},0,60,60\n",
                1_000_000 + i * 7,
                i % 10
            ));
        }
        let t = load_rate_deck("big", "big.csv", &s).unwrap();
        assert_eq!(t.prefixes.len(), 100_000);
        assert_eq!(t.lookup(b"10000074444").unwrap().prefix, "1000007");
    }
}
