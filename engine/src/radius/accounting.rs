//! RADIUS accounting state: open sessions, recently closed sessions and the retransmission
//! cache, and [`Accounting::apply`], which turns one verified Accounting-Request into its
//! ledger effects (a charge, a session upsert or close, an xDR). No I/O, no clock: the
//! arrival time is passed in, and the caller commits the effects before acknowledging.
//!
//! Hostile or broken NASes are expected: an update claiming more session time than
//! `[radius] max_session_secs`, a traffic jump no link carries, a cost that would overflow,
//! or a Start beyond a NAS's `max_sessions` (or beyond the unknown-user caps) is
//! acknowledged, counted, logged at most every 10 s, and charges nothing.
//!
//! A session belongs to the NAS the packet names, not to the client that sent it: behind a
//! RADIUS proxy one client relays many NASes ([`nas_identity`]). Sessions stored before
//! that rule (keyed by the client's name) keep rating: a lookup that misses under the new
//! key falls back to the old one when the stored session is the same NAS's and user's.

use std::collections::{HashMap, HashSet, VecDeque};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::batch::Subscribers;
use crate::catalog::Catalog;
use crate::radius::codec::{AcctRequest, StatusType};
use crate::rating::{SessionCharge, Usage};
use crate::xdr::{OwnedDetail, OwnedXdr};

/// How long a closed session's key is remembered (a late retransmitted Stop or Interim of
/// it then charges nothing).
pub const CLOSED_MEMORY_SECS: i64 = 24 * 3600;
/// Retransmission cache size (packets); older entries fall out first.
pub const SEEN_CAPACITY: usize = 1 << 20;
/// Acct-Interim-Interval (or a NAS's configured interval) used for stale detection is
/// clamped to this range: 0xFFFFFFFF must not make a session immortal.
pub const INTERIM_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 60..=86_400;
/// Most open sessions of one unknown User-Name.
pub const MAX_UNKNOWN_SESSIONS_PER_USER: u32 = 16;
/// Most open sessions of unknown User-Names in all.
pub const MAX_UNKNOWN_SESSIONS: usize = 10_000;
/// Anomalies are logged at most this often (seconds of the arrival clock).
const ANOMALY_LOG_SECS: i64 = 10;

/// An open internet session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The NAS part of the session's ledger key ([`NasIdentity::key`]).
    pub nas: String,
    pub session_id: String,
    pub username: String,
    /// The client the session bills to, fixed when it opened (a rename, or another client
    /// taking the User-Name later, never moves it). `None` in sessions stored before it
    /// existed until the core resolves them at load.
    #[serde(default)]
    pub user_id: Option<i64>,
    pub charge: SessionCharge,
    /// The user's credit when the session was first seen (the xDR's before_credit).
    pub credit_at_start: Decimal,
    pub nas_ip: String,
    pub framed_ip: String,
    pub calling_station: String,
    pub called_station: String,
    pub nas_port: Option<u32>,
    /// Arrival time of the last update (stale detection).
    pub last_arrival: i64,
    pub interim_interval: Option<u32>,
    /// The User-Name was no subscriber when the session opened (counts toward the
    /// unknown-user caps until it closes).
    #[serde(default)]
    pub unknown_user: bool,
    /// How xDRs and the API name the NAS ([`NasIdentity::ras_description`]); empty in
    /// sessions stored before it existed, which are shown by `nas`.
    #[serde(default)]
    pub ras_description: String,
    /// When the session reuses the Acct-Session-Id of a session that ended then (NAS
    /// clock): a late packet of that earlier session must not be rated on this one.
    #[serde(default)]
    pub reopened_after: Option<i64>,
}

impl Session {
    /// The NAS as xDRs and the API show it.
    pub fn ras(&self) -> &str {
        if self.ras_description.is_empty() {
            &self.nas
        } else {
            &self.ras_description
        }
    }
}

/// Key of a session: the NAS it belongs to and its Acct-Session-Id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The `[[nas]]` entry whose settings (max_sessions, interim interval) apply: the NAS
    /// the packet names when it is configured, else the client that sent it.
    pub entry: u16,
    /// The NAS part of the ledger key ([`NasIdentity::key`]).
    pub nas: String,
    pub session_id: String,
}

impl SessionKey {
    pub fn new(entry: u16, nas: impl Into<String>, session_id: impl Into<String>) -> Self {
        SessionKey {
            entry,
            nas: nas.into(),
            session_id: session_id.into(),
        }
    }
}

/// The NAS a packet belongs to (DESIGN.md "Behind a RADIUS proxy"): the one it names by
/// `NAS-IP-Address`, else `NAS-IPv6-Address`, else `NAS-Identifier`, else its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NasIdentity {
    /// See [`SessionKey::entry`].
    pub entry: u16,
    /// The ledger key: the client's `[[nas]]` name when the packet names no NAS or names
    /// the client itself (the direct setup: the key sessions always had), a configured
    /// `[[nas]]`'s name when it names one, else `<client name>/<NAS IP or identifier>`
    /// (names cannot hold `/`, so keys of different NASes never meet).
    pub key: String,
    /// Shown as `ras_description`: the configured name, else the NAS-Identifier, else the IP.
    pub ras_description: String,
    /// The NAS's IP: the one the packet names, a configured NAS's, or the source when the
    /// packet names no NAS; empty when a proxy relays an unconfigured NAS-Identifier only.
    pub nas_ip: String,
    /// The `[[nas]]` entry of the client that sent the packet (the NAS itself, or a proxy).
    pub client: u16,
    /// The client's name when it differs from `key`: sessions opened before the upgrade are
    /// stored under it.
    pub legacy_key: Option<String>,
    /// The `nas_ip` the code before the upgrade stored for this packet (NAS-IP-Address, else
    /// the source): how a session stored under `legacy_key` is told to be this NAS's.
    pub legacy_nas_ip: String,
}

/// Which NAS `req`, sent by client `client` from `src_ip`, belongs to. Pure: the catalog's
/// `[[nas]]` entries are the only lookup.
pub fn nas_identity(
    catalog: &Catalog,
    client: u16,
    src_ip: &str,
    req: &AcctRequest<'_>,
) -> NasIdentity {
    let me = &catalog.nas[client as usize];
    let legacy_nas_ip = req
        .nas_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| src_ip.to_string());
    let named_ip: Option<std::net::IpAddr> =
        req.nas_ip.map(Into::into).or(req.nas_ipv6.map(Into::into));
    let ident = text(req.nas_identifier);
    let configured = |entry: usize, nas_ip: String| NasIdentity {
        entry: entry as u16,
        key: catalog.nas[entry].name.clone(),
        ras_description: catalog.nas[entry].name.clone(),
        nas_ip,
        client,
        legacy_key: (entry != client as usize).then(|| me.name.clone()),
        legacy_nas_ip: legacy_nas_ip.clone(),
    };
    let relayed = |id: String, nas_ip: String, ras: String| NasIdentity {
        entry: client,
        key: format!("{}/{id}", me.name),
        ras_description: ras,
        nas_ip,
        client,
        legacy_key: Some(me.name.clone()),
        legacy_nas_ip: legacy_nas_ip.clone(),
    };
    match named_ip {
        Some(ip) if ip == me.ip || ip.to_string() == src_ip => {
            configured(client as usize, ip.to_string())
        }
        Some(ip) => match catalog.nas_by_ip(ip) {
            Some(e) => configured(e, ip.to_string()),
            None => relayed(
                ip.to_string(),
                ip.to_string(),
                if ident.is_empty() {
                    ip.to_string()
                } else {
                    ident.clone()
                },
            ),
        },
        None if ident.is_empty() || ident == me.name => {
            configured(client as usize, src_ip.to_string())
        }
        None => match catalog.nas.iter().position(|n| n.name == ident) {
            Some(e) => configured(e, catalog.nas[e].ip.to_string()),
            None => relayed(ident.clone(), String::new(), ident.clone()),
        },
    }
}

/// One journal movement produced by an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub user_id: i64,
    /// Positive amount taken from the credit.
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub idem_key: String,
    /// The key this charge had before keys carried the session's start
    /// (`radius:<nas>:<session>:<time>:<in>:<out>`), set on the first charge of a session
    /// the charging packet itself opened: a replay of an update charged under that form must
    /// still be recognised (the ledger refuses the batch when it exists).
    pub legacy_key: Option<String>,
}

/// A session the closed-session memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// When it was closed (arrival clock): it is forgotten [`CLOSED_MEMORY_SECS`] later.
    pub at: i64,
    /// When it ended by the NAS's clock (login + last Acct-Session-Time); `None` for
    /// sessions closed before this was kept.
    pub ended: Option<i64>,
}

/// Seconds after a closed session's end before a Start with its Acct-Session-Id is taken
/// for a new session (a NAS that counts session ids from 1 again after a reboot), not a
/// late packet of the old one.
pub const SESSION_ID_REUSE_MARGIN_SECS: i64 = 2;

/// What one request (or a stale/NAS-wide close) changes, to be committed atomically.
#[derive(Debug, Default)]
pub struct Effects {
    pub charges: Vec<Charge>,
    /// Sessions whose new state must be stored.
    pub upserts: Vec<SessionKey>,
    /// Sessions closed (removed from the open table, remembered as closed).
    pub closed: Vec<SessionKey>,
    /// xDRs of closed sessions.
    pub xdrs: Vec<OwnedXdr>,
    /// Charge-rule usage of closed sessions: (user id, rule, credit, seconds, bytes).
    pub rule_usage: Vec<(i64, String, Decimal, i64, i64)>,
    /// Sessions of known users opened: (user id, login time).
    pub first_logins: Vec<(i64, i64)>,
    /// Package quota the updates took: (client package id, voice left, data left).
    pub quota: Vec<crate::packages::QuotaChange>,
    /// Users whose package data quota ran out in this batch (prepaid control: at credit
    /// <= 0 that ends their sessions).
    pub quota_exhausted: Vec<i64>,
}

/// Counters for logs and the API.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub received: u64,
    pub acknowledged: u64,
    pub retransmissions: u64,
    pub dropped_unknown_nas: u64,
    pub dropped_malformed: u64,
    pub dropped_bad_auth: u64,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub stale_closed: u64,
    pub counters_backwards: u64,
    pub late_updates_ignored: u64,
    /// Updates with an Acct-Session-Time beyond `[radius] max_session_secs` (not rated).
    pub session_time_anomalies: u64,
    /// Updates whose traffic growth no link carries (their traffic not charged).
    pub traffic_anomalies: u64,
    /// Updates whose cost or the balance it moves would overflow (not charged).
    pub overflow_anomalies: u64,
    /// Updates whose charge was in the ledger already (a replay older than the
    /// closed-session memory): acknowledged, not charged again.
    pub already_charged: u64,
    /// Starts beyond a NAS's `max_sessions` or the unknown-user caps: not tracked.
    pub sessions_capped: u64,
    /// Packets whose effects the ledger refused on their own: dropped, not acknowledged.
    pub poisoned: u64,
    /// Status-Server requests (RFC 5997) answered.
    pub status_server: u64,
}

/// Rate-limited reporting of anomalies (clocked by arrival times, not read from a clock).
#[derive(Debug, Default)]
struct AnomalyLog {
    since_log: u64,
    last_log_at: Option<i64>,
}

impl AnomalyLog {
    fn note(&mut self, now: i64, kind: &'static str, nas: &str, session: &str) {
        self.since_log += 1;
        if self
            .last_log_at
            .is_some_and(|t| now >= t && now - t < ANOMALY_LOG_SECS)
        {
            return;
        }
        tracing::warn!(
            anomalies = self.since_log,
            last_kind = kind,
            last_nas = %nas,
            last_session = %session,
            "RADIUS anomalies: acknowledged, nothing charged for them (logged at most every 10 s)"
        );
        self.since_log = 0;
        self.last_log_at = Some(now);
    }
}

/// The accounting state of `ratel serve`.
#[derive(Debug, Default)]
pub struct Accounting {
    pub sessions: HashMap<SessionKey, Session, ahash::RandomState>,
    pub closed: HashMap<SessionKey, Closed, ahash::RandomState>,
    /// Recently seen requests; `true` marks one the ledger refused (poisoned).
    /// (ahash, keyed per process: SipHash was 3% of the core at 64 requests in flight.)
    seen: HashMap<(u16, u8, [u8; 16]), bool, ahash::RandomState>,
    seen_order: VecDeque<(u16, u8, [u8; 16])>,
    pub counters: Counters,
    /// Open sessions per NAS index.
    open_per_nas: HashMap<u16, usize, ahash::RandomState>,
    /// Open sessions per unknown User-Name, and their total.
    unknown_per_user: HashMap<String, u32, ahash::RandomState>,
    unknown_total: usize,
    /// When set, charges are checked against it: an idempotency key in the set is already
    /// in the ledger (or charged earlier in this run) and charges nothing. The serve core
    /// sets it only while it re-applies a batch whose commit hit an existing key.
    pub charged_keys: Option<HashSet<String>>,
    log: AnomalyLog,
}

/// RFC 2866 Acct-Terminate-Cause names.
pub fn terminate_cause_name(c: Option<u32>) -> String {
    const NAMES: [&str; 23] = [
        "",
        "User-Request",
        "Lost-Carrier",
        "Lost-Service",
        "Idle-Timeout",
        "Session-Timeout",
        "Admin-Reset",
        "Admin-Reboot",
        "Port-Error",
        "NAS-Error",
        "NAS-Request",
        "NAS-Reboot",
        "Port-Unneeded",
        "Port-Preempted",
        "Port-Suspended",
        "Service-Unavailable",
        "Callback",
        "User-Error",
        "Host-Request",
        "Supplicant-Restart",
        "Reauthentication-Failure",
        "Port-Reinitialized",
        "Port-Administratively-Disabled",
    ];
    match c {
        None => String::new(),
        Some(v) => NAMES
            .get(v as usize)
            .map(|s| s.to_string())
            .unwrap_or_else(|| v.to_string()),
    }
}

/// `a - b` when Decimal holds it exactly: an overflow, or a result Decimal would round
/// (beyond 28 significant digits, losing money silently), is `None`.
fn exact_sub(a: Decimal, b: Decimal) -> Option<Decimal> {
    let r = a.checked_sub(b)?;
    // An exact difference keeps the larger scale of its operands; a rounded one loses it.
    (r.scale() >= a.scale().max(b.scale())).then_some(r)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Accounting {
    /// Whether this (NAS, Identifier, authenticator) was seen recently; records it if not.
    pub fn is_retransmission(&mut self, nas: u16, ident: u8, auth: &[u8; 16]) -> bool {
        let key = (nas, ident, *auth);
        if self.seen.contains_key(&key) {
            self.counters.retransmissions += 1;
            return true;
        }
        if self.seen_order.len() >= SEEN_CAPACITY {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key, false);
        self.seen_order.push_back(key);
        false
    }

    /// Forgets a request recorded by [`Accounting::is_retransmission`] (its batch failed to
    /// commit, so a retransmission must be processed again).
    pub fn forget_seen(&mut self, nas: u16, ident: u8, auth: &[u8; 16]) {
        self.seen.remove(&(nas, ident, *auth));
    }

    /// Marks a seen request as poisoned: the ledger refused its effects on their own, so
    /// its retransmissions are dropped (never acknowledged, never applied again).
    pub fn mark_poisoned(&mut self, nas: u16, ident: u8, auth: &[u8; 16]) {
        if let Some(p) = self.seen.get_mut(&(nas, ident, *auth)) {
            *p = true;
        }
    }

    /// Whether a seen request was poisoned.
    pub fn is_poisoned(&self, nas: u16, ident: u8, auth: &[u8; 16]) -> bool {
        self.seen
            .get(&(nas, ident, *auth))
            .copied()
            .unwrap_or(false)
    }

    /// Rebuilds the per-NAS and unknown-user session counts from `sessions` (after the
    /// sessions were loaded from the ledger).
    pub fn recount(&mut self) {
        self.open_per_nas.clear();
        self.unknown_per_user.clear();
        self.unknown_total = 0;
        for (k, s) in &self.sessions {
            *self.open_per_nas.entry(k.entry).or_default() += 1;
            if s.unknown_user {
                *self.unknown_per_user.entry(s.username.clone()).or_default() += 1;
                self.unknown_total += 1;
            }
        }
    }

    /// Open sessions of `[[nas]]` entry `nas` (with the NASes relayed by it).
    pub fn open_sessions_of_nas(&self, nas: u16) -> usize {
        self.open_per_nas.get(&nas).copied().unwrap_or(0)
    }

    fn count_open(&mut self, key: &SessionKey, s: &Session) {
        *self.open_per_nas.entry(key.entry).or_default() += 1;
        if s.unknown_user {
            *self.unknown_per_user.entry(s.username.clone()).or_default() += 1;
            self.unknown_total += 1;
        }
    }

    fn count_closed(&mut self, key: &SessionKey, s: &Session) {
        if let Some(n) = self.open_per_nas.get_mut(&key.entry) {
            *n = n.saturating_sub(1);
        }
        if s.unknown_user {
            self.unknown_total = self.unknown_total.saturating_sub(1);
            if let Some(n) = self.unknown_per_user.get_mut(&s.username) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.unknown_per_user.remove(&s.username);
                }
            }
        }
    }

    /// Why a new session may not be tracked, if it may not.
    fn cap_reached(
        &self,
        catalog: &Catalog,
        nas_idx: u16,
        unknown: Option<&str>,
    ) -> Option<&'static str> {
        if self.open_sessions_of_nas(nas_idx) >= catalog.nas[nas_idx as usize].max_sessions {
            return Some("Start beyond the NAS's max_sessions: not tracked");
        }
        let user = unknown?;
        if self.unknown_total >= MAX_UNKNOWN_SESSIONS {
            return Some(
                "Start of an unknown user beyond the unknown-user session cap: not tracked",
            );
        }
        if self.unknown_per_user.get(user).copied().unwrap_or(0) >= MAX_UNKNOWN_SESSIONS_PER_USER {
            return Some("Start beyond 16 open sessions of one unknown user: not tracked");
        }
        None
    }

    /// The key of `req`'s session: under `id`'s key, or under the old key (the client's
    /// name) when the session was stored there before the upgrade and is this NAS's and
    /// user's. A closed session is found under the old key only by a non-Start update (a
    /// late Stop or Interim): a new session of another NAS must not be taken for it.
    fn session_key(&self, id: &NasIdentity, req: &AcctRequest<'_>) -> SessionKey {
        let key = SessionKey::new(id.entry, id.key.clone(), text(req.session_id));
        let Some(old) = &id.legacy_key else {
            return key;
        };
        if self.sessions.contains_key(&key) || self.closed.contains_key(&key) {
            return key;
        }
        let old = SessionKey::new(id.client, old.clone(), key.session_id.clone());
        let same_nas_and_user = |s: &Session| {
            s.nas_ip == id.legacy_nas_ip
                && (req.user_name.is_empty() || s.username.as_bytes() == req.user_name)
        };
        if self.sessions.get(&old).is_some_and(same_nas_and_user) {
            return old;
        }
        if req.status_type() != StatusType::Start && self.closed.contains_key(&old) {
            return old;
        }
        key
    }

    /// Applies one verified request from client `nas_idx` (the `[[nas]]` entry it came
    /// from, a NAS or a proxy) arriving at `now` (unix seconds).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        catalog: &Catalog,
        subs: &mut Subscribers,
        next_xdr: &mut u64,
        nas_idx: u16,
        src_ip: &str,
        req: &AcctRequest<'_>,
        now: i64,
        fx: &mut Effects,
    ) {
        let id = nas_identity(catalog, nas_idx, src_ip, req);
        let nas_name = id.ras_description.clone();
        match req.status_type() {
            StatusType::AccountingOn | StatusType::AccountingOff => {
                // Only the sessions of the NAS the packet names: under its key, and those
                // stored under the old key whose NAS the packet names by its IP.
                let legacy = id
                    .legacy_key
                    .as_ref()
                    .filter(|_| req.nas_ip.is_some() && !id.legacy_nas_ip.is_empty());
                let keys: Vec<SessionKey> = self
                    .sessions
                    .iter()
                    .filter(|(k, s)| {
                        k.nas == id.key
                            || legacy
                                .is_some_and(|old| k.nas == *old && s.nas_ip == id.legacy_nas_ip)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                if !keys.is_empty() {
                    tracing::info!(nas = %nas_name, sessions = keys.len(), "Accounting-On/Off: closing every open session of the NAS");
                }
                for k in keys {
                    self.close(catalog, subs, next_xdr, &k, "NAS-Reboot", now, fx);
                }
                return;
            }
            StatusType::Other(v) => {
                tracing::debug!(nas = %nas_name, status = v, "ignoring an Acct-Status-Type we do not rate");
                return;
            }
            _ => {}
        }
        let key = self.session_key(&id, req);
        let session_time = req.session_time.unwrap_or(0) as i64;
        let mut reopened_after: Option<i64> = None;
        if let Some(c) = self.closed.get(&key) {
            // A session that began after the closed one ended is a new one: the NAS reuses
            // the Acct-Session-Id (counting from 1 again after a reboot). Only a Start, or
            // an update the NAS timestamped, can say so: an untimestamped late Stop of the
            // old session must never be charged again.
            // Acct-Delay-Time is taken off even from a timestamp (a NAS that stamps a
            // retransmission anew): the earlier the begin, the surer a late packet stays late.
            let begins = match (req.status_type(), req.event_timestamp) {
                (_, Some(t)) => Some(t as i64 - req.delay_time as i64 - session_time),
                (StatusType::Start, None) => Some(now - req.delay_time as i64),
                _ => None,
            };
            let reused = c
                .ended
                .zip(begins)
                .is_some_and(|(end, begins)| begins > end + SESSION_ID_REUSE_MARGIN_SECS);
            if !reused {
                // A late Interim/Stop (or a replayed Start) of a session already closed.
                self.counters.late_updates_ignored += 1;
                return;
            }
            tracing::info!(nas = %nas_name, session = %key.session_id, "a session id used again after its session ended: a new session");
            reopened_after = self.closed.remove(&key).and_then(|c| c.ended);
        }
        // A packet of the earlier session whose id this one reuses (a late Stop arriving
        // after the new Start): it began before that session ended.
        // Or one that claims to have begun before this session did.
        if let Some((end, login)) = self
            .sessions
            .get(&key)
            .and_then(|s| s.reopened_after.map(|e| (e, s.charge.login_time)))
        {
            let begins = match req.event_timestamp {
                Some(t) => t as i64 - req.delay_time as i64 - session_time,
                None => now - req.delay_time as i64 - session_time,
            };
            if begins <= end + SESSION_ID_REUSE_MARGIN_SECS
                || begins < login - SESSION_ID_REUSE_MARGIN_SECS
            {
                self.counters.late_updates_ignored += 1;
                return;
            }
        }
        if session_time > catalog.max_session_secs {
            self.counters.session_time_anomalies += 1;
            self.log.note(
                now,
                "Acct-Session-Time beyond [radius] max_session_secs: not rated",
                &nas_name,
                &key.session_id,
            );
            return;
        }
        let moment = match req.event_timestamp {
            Some(t) => t as i64,
            None => now - req.delay_time as i64,
        };
        let usage = Usage {
            moment,
            session_time,
            octets_in: req.octets_in(),
            octets_out: req.octets_out(),
        };
        let username = text(req.user_name);
        let mut created = false;
        if !self.sessions.contains_key(&key) {
            let user = subs.by_name.get(username.as_str()).copied();
            let unknown = user.is_none().then_some(username.as_str());
            if let Some(why) = self.cap_reached(catalog, key.entry, unknown) {
                self.counters.sessions_capped += 1;
                self.log.note(now, why, &nas_name, &key.session_id);
                return;
            }
            let credit_at_start = user
                .map(|u| subs.users[u as usize].credit)
                .unwrap_or_default();
            if let Some(u) = user {
                fx.first_logins.push((
                    subs.users[u as usize].user_id,
                    usage.moment - usage.session_time,
                ));
            }
            let s = Session {
                nas: key.nas.clone(),
                session_id: key.session_id.clone(),
                username: username.clone(),
                user_id: user.map(|u| subs.users[u as usize].user_id),
                charge: SessionCharge::new(&usage),
                credit_at_start,
                nas_ip: id.nas_ip.clone(),
                framed_ip: String::new(),
                calling_station: String::new(),
                called_station: String::new(),
                nas_port: None,
                last_arrival: now,
                interim_interval: None,
                unknown_user: user.is_none(),
                ras_description: id.ras_description.clone(),
                reopened_after,
            };
            self.count_open(&key, &s);
            self.sessions.insert(key.clone(), s);
            self.counters.sessions_opened += 1;
            created = true;
        }
        let s = self.sessions.get_mut(&key).expect("inserted above");
        s.last_arrival = now;
        if let Some(ip) = req.framed_ip {
            s.framed_ip = ip.to_string();
        }
        if !req.calling_station.is_empty() {
            s.calling_station = text(req.calling_station);
        }
        if !req.called_station.is_empty() {
            s.called_station = text(req.called_station);
        }
        if req.nas_port.is_some() {
            s.nas_port = req.nas_port;
        }
        if req.interim_interval.is_some() {
            s.interim_interval = req.interim_interval;
        }
        // An update whose charge the ledger holds already, on a session this very update
        // opened: a replay of a session closed and forgotten. Not tracked at all.
        let mut replay_of_forgotten = false;
        if let Some(ui) = s.user_id.and_then(|id| subs.index_of(id)) {
            let u = &mut subs.users[ui as usize];
            if let Some(group) = u.group.map(|g| &catalog.groups[g]) {
                let free = if u.packages.is_empty() {
                    0
                } else {
                    crate::packages::data_available(&u.packages, usage.moment)
                };
                // What the packages covered is taken when the update is (not for a
                // replay charged already).
                let take = |u: &mut crate::batch::UserState, covered: u64, fx: &mut Effects| {
                    if covered == 0 {
                        return;
                    }
                    crate::packages::take_data(
                        &mut u.packages,
                        usage.moment,
                        covered,
                        &mut fx.quota,
                    );
                    if crate::packages::data_available(&u.packages, usage.moment) == 0 {
                        fx.quota_exhausted.push(u.user_id);
                    }
                };
                match s
                    .charge
                    .rate(group, &catalog.charge_rules, &catalog.tz, &usage, free)
                {
                    Err(e) => {
                        self.counters.overflow_anomalies += 1;
                        self.log
                            .note(now, "cost overflows: not rated", &s.nas, &s.session_id);
                        tracing::debug!(error = %e, nas = %s.nas, session = %s.session_id, "update not rated");
                    }
                    Ok((next, out)) => {
                        if out.time_backwards || out.octets_backwards {
                            self.counters.counters_backwards += 1;
                            self.log.note(
                                now,
                                "counters went backwards: nothing charged for them",
                                &s.nas,
                                &s.session_id,
                            );
                        }
                        if out.traffic_anomaly {
                            self.counters.traffic_anomalies += 1;
                            self.log.note(
                                now,
                                "traffic growth beyond what a link carries: traffic not charged",
                                &s.nas,
                                &s.session_id,
                            );
                        }
                        if out.delta.is_zero() {
                            s.charge = next;
                            take(u, out.package_bytes, fx);
                        } else {
                            // The key names the update: its session (by NAS, id and,
                            // when the NAS timestamps its packets, when it began: a
                            // reused session id is another session) and its counters.
                            // The same packet rebuilds the same key.
                            let legacy = format!(
                                "radius:{}:{}:{}:{}:{}",
                                s.nas,
                                s.session_id,
                                usage.session_time,
                                usage.octets_in,
                                usage.octets_out
                            );
                            let (idem_key, legacy_key) = match req.event_timestamp {
                                Some(_) => (
                                    format!(
                                        "radius:{}:{}@{}:{}:{}:{}",
                                        s.nas,
                                        s.session_id,
                                        usage.moment - usage.session_time,
                                        usage.session_time,
                                        usage.octets_in,
                                        usage.octets_out
                                    ),
                                    created.then_some(legacy),
                                ),
                                None => (legacy, None),
                            };
                            // Always charged, even into negative credit: the service was used.
                            // Exact or not at all: Decimal rounds a result beyond 28
                            // digits, which would lose money silently.
                            let after = exact_sub(u.credit, out.delta);
                            if self
                                .charged_keys
                                .as_ref()
                                .is_some_and(|k| k.contains(&idem_key))
                            {
                                self.counters.already_charged += 1;
                                self.log.note(now, "update charged already (a replay older than the closed-session memory): not charged again", &s.nas, &s.session_id);
                                replay_of_forgotten = created;
                            } else if let Some(after) = after {
                                if let Some(k) = self.charged_keys.as_mut() {
                                    k.insert(idem_key.clone());
                                }
                                u.credit = after;
                                s.charge = next;
                                take(u, out.package_bytes, fx);
                                fx.charges.push(Charge {
                                    user_id: u.user_id,
                                    amount: out.delta,
                                    balance_after: after,
                                    idem_key,
                                    legacy_key,
                                });
                            } else {
                                self.counters.overflow_anomalies += 1;
                                self.log.note(
                                    now,
                                    "balance overflows: not charged",
                                    &s.nas,
                                    &s.session_id,
                                );
                            }
                        }
                    }
                }
            }
        } else {
            // Unknown user: no charge, but keep the counters so the xDR shows the usage.
            let out = s.charge.observe(&usage);
            if out.traffic_anomaly {
                self.counters.traffic_anomalies += 1;
                self.log.note(
                    now,
                    "traffic growth beyond what a link carries: not recorded",
                    &s.nas,
                    &s.session_id,
                );
            }
        }
        if replay_of_forgotten {
            if let Some(s) = self.sessions.remove(&key) {
                self.count_closed(&key, &s);
                fx.first_logins.pop();
            }
            self.counters.sessions_opened -= 1;
            return;
        }
        if req.status_type() == StatusType::Stop {
            self.close(
                catalog,
                subs,
                next_xdr,
                &key,
                &terminate_cause_name(req.terminate_cause),
                now,
                fx,
            );
        } else {
            fx.upserts.push(key);
        }
    }

    /// Closes a session at its last known update and writes its xDR.
    #[allow(clippy::too_many_arguments)]
    pub fn close(
        &mut self,
        catalog: &Catalog,
        subs: &Subscribers,
        next_xdr: &mut u64,
        key: &SessionKey,
        cause: &str,
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(s) = self.sessions.remove(key) else {
            return;
        };
        self.count_closed(key, &s);
        self.closed.insert(
            key.clone(),
            Closed {
                at: now,
                ended: Some(
                    s.charge
                        .login_time
                        .saturating_add(s.charge.last_session_time),
                ),
            },
        );
        self.counters.sessions_closed += 1;
        let user = s
            .user_id
            .and_then(|id| subs.index_of(id))
            .map(|u| &subs.users[u as usize]);
        let c = &s.charge;
        let details = c
            .rules
            .iter()
            .map(|r| OwnedDetail {
                rule: catalog
                    .charge_rules
                    .get(r.rule as usize)
                    .map(|x| x.name.clone())
                    .unwrap_or_default(),
                start: r.start,
                end: r.end,
                seconds: r.seconds,
                bytes_in: r.bytes_in as i64,
                bytes_out: r.bytes_out as i64,
                credit: r.credit(),
            })
            .collect();
        if let Some(u) = user {
            for r in &c.rules {
                fx.rule_usage.push((
                    u.user_id,
                    catalog
                        .charge_rules
                        .get(r.rule as usize)
                        .map(|x| x.name.clone())
                        .unwrap_or_default(),
                    r.credit(),
                    r.seconds,
                    r.bytes_in.saturating_add(r.bytes_out).min(i64::MAX as u64) as i64,
                ));
            }
        }
        let xdr_id = *next_xdr;
        *next_xdr += 1;
        fx.xdrs.push(OwnedXdr {
            xdr_id,
            service_type: "Internet".into(),
            status: if user.is_some() { "OK" } else { "UNKNOWN_USER" }.into(),
            user_id: user.map(|u| u.user_id),
            // The client's name (reports key on it, and on user_id); the User-Name that
            // opened the session is the xDR's `account`.
            username: user
                .map(|u| u.username.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or(&s.username)
                .to_string(),
            group_name: user.map(|u| u.group_name.clone()).unwrap_or_default(),
            login_time: c.login_time,
            logout_time: c.login_time.saturating_add(c.last_session_time),
            duration_seconds: c.last_session_time,
            billed_seconds: c.last_session_time,
            bytes_in: c.last_octets_in.min(i64::MAX as u64) as i64,
            bytes_out: c.last_octets_out.min(i64::MAX as u64) as i64,
            session_id: s.session_id.clone(),
            ras_description: s.ras().to_string(),
            nas_ip: s.nas_ip.clone(),
            unique_id_value: s.nas_port.map(|p| p.to_string()).unwrap_or_default(),
            remote_ip: s.framed_ip.clone(),
            caller_id: s.calling_station.clone(),
            called_number: s.called_station.clone(),
            terminate_cause: cause.to_string(),
            destination: String::new(),
            destination_name: String::new(),
            credit_used: c.charged,
            before_credit: if user.is_some() {
                s.credit_at_start
            } else {
                Decimal::ZERO
            },
            after_credit: user.map(|u| u.credit).unwrap_or_default(),
            details,
            source: format!("radius:{}", s.nas),
            account: user.map(|_| s.username.clone()),
            refund_of: None,
            package_seconds: 0,
            package_bytes: c.package_bytes.min(i64::MAX as u64) as i64,
        });
        fx.closed.push(key.clone());
    }

    /// Closes sessions silent for longer than their timeout; forgets old closed keys.
    pub fn close_stale(
        &mut self,
        catalog: &Catalog,
        subs: &Subscribers,
        next_xdr: &mut u64,
        now: i64,
        fx: &mut Effects,
    ) {
        let stale: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(k, s)| {
                let timeout = if catalog.stale_timeout_secs > 0 {
                    i64::try_from(catalog.stale_timeout_secs).unwrap_or(i64::MAX)
                } else {
                    let interval = s
                        .interim_interval
                        .map(u64::from)
                        .or(catalog.nas[k.entry as usize].interim_interval_secs)
                        .map(|i| {
                            i.clamp(*INTERIM_INTERVAL_SECS.start(), *INTERIM_INTERVAL_SECS.end())
                        });
                    interval.map(|i| 3 * i as i64).unwrap_or(3600)
                };
                now.saturating_sub(s.last_arrival) > timeout
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(nas = %k.nas, session = %k.session_id, "closing a stale session at its last update");
            self.counters.stale_closed += 1;
            self.close(catalog, subs, next_xdr, &k, "Stale-Session", now, fx);
        }
        self.closed.retain(|_, c| now - c.at < CLOSED_MEMORY_SECS);
    }

    /// At a start of `serve`: every open session's silence counts from `now`. While nobody
    /// answered, the NASes (or the proxy in front of ratel, from its detail file) kept
    /// their accounting and send it once ratel answers again; a session closed as stale at
    /// once, for a silence that was ratel's, would take those Interims and its Stop for
    /// late updates and ignore them — its usage since the last update before the outage
    /// never charged. A session that is really gone closes one timeout later, at its last
    /// update as before (its end and charge do not depend on when it is closed).
    pub fn restart_silences(&mut self, now: i64) {
        for s in self.sessions.values_mut() {
            s.last_arrival = s.last_arrival.max(now);
        }
    }

    /// Live (not yet closed) charge of a user's open sessions, and their count.
    pub fn open_sessions_of<'a>(
        &'a self,
        username: &'a str,
    ) -> impl Iterator<Item = &'a Session> + 'a {
        self.sessions
            .values()
            .filter(move |s| s.username == username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, LoadedConfig};
    use crate::ledger::UserRow;

    const CFG: &str = r#"
[radius]
max_session_secs = 86400
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "s"
max_sessions = 4
[[charge_rule]]
name = "all"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "00:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[group]]
name = "g"
charge_rules = ["all"]
"#;

    /// 2026-11-02 10:00:00 UTC.
    const T0: i64 = 1_793_613_600;

    struct World {
        catalog: Catalog,
        subs: Subscribers,
        acct: Accounting,
        next_xdr: u64,
    }

    impl World {
        fn new(credit: Decimal) -> World {
            let catalog = Catalog::build(
                &LoadedConfig::from_str(CFG, ConfigSource::BuiltinDemo, ".".into()).unwrap(),
            )
            .unwrap();
            let subs = Subscribers::new(
                &catalog,
                vec![UserRow {
                    user_id: 1,
                    username: Some("alice".into()),
                    group_name: "g".into(),
                    credit,
                }],
            );
            World {
                catalog,
                subs,
                acct: Accounting::default(),
                next_xdr: 1,
            }
        }

        /// Applies an update of `user`'s session `sid` at T0 + `secs` (arrival = moment).
        fn update(
            &mut self,
            status: u32,
            user: &str,
            sid: &str,
            secs: u32,
            octets_in: u64,
        ) -> Effects {
            let req = AcctRequest {
                status: Some(match status {
                    1 => StatusType::Start,
                    2 => StatusType::Stop,
                    _ => StatusType::InterimUpdate,
                }),
                user_name: user.as_bytes(),
                session_id: sid.as_bytes(),
                session_time: Some(secs),
                input_octets: octets_in as u32,
                input_gigawords: (octets_in >> 32) as u32,
                event_timestamp: Some((T0 + secs as i64) as u32),
                ..Default::default()
            };
            let mut fx = Effects::default();
            let now = T0 + secs as i64;
            self.acct.apply(
                &self.catalog,
                &mut self.subs,
                &mut self.next_xdr,
                0,
                "127.0.0.1",
                &req,
                now,
                &mut fx,
            );
            fx
        }

        fn credit(&self) -> Decimal {
            self.subs.users[0].credit
        }
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// Issue 10 item 5: a balance so far below zero that taking a charge overflows Decimal
    /// is an anomaly (counted, nothing charged), never a panic or a wrap.
    #[test]
    fn a_charge_that_overflows_the_balance_is_an_anomaly() {
        let mut w = World::new(Decimal::MIN);
        w.update(1, "alice", "s1", 0, 0);
        // 0.1 off -79228162514264337593543950335 needs 29 digits: Decimal would round it away.
        let fx = w.update(3, "alice", "s1", 600, 0);
        assert!(fx.charges.is_empty());
        assert_eq!(w.credit(), Decimal::MIN);
        // 100 min = 1.00 overflows outright.
        let fx = w.update(3, "alice", "s1", 6000, 0);
        assert!(fx.charges.is_empty());
        assert_eq!(w.credit(), Decimal::MIN);
        assert_eq!(w.acct.counters.overflow_anomalies, 2);
        // The session was not advanced: a later update still charges the whole time once
        // the balance can take it.
        w.subs.users[0].credit = Decimal::ZERO;
        let fx = w.update(2, "alice", "s1", 7200, 0);
        assert_eq!(fx.charges.len(), 1);
        assert_eq!(fx.charges[0].amount, d("1.2"));
        assert_eq!(fx.xdrs[0].credit_used, d("1.2"));
        assert_eq!(w.credit(), d("-1.2"));
    }

    /// Issue 10 items 6 and 7: Acct-Session-Time beyond max_session_secs is not rated, and
    /// all-ones gigawords charge no traffic.
    #[test]
    fn absurd_updates_are_not_rated() {
        let mut w = World::new(d("10"));
        w.update(1, "alice", "s1", 0, 0);
        let fx = w.update(3, "alice", "s1", u32::MAX, 0);
        assert!(fx.charges.is_empty() && fx.upserts.is_empty());
        assert_eq!(w.acct.counters.session_time_anomalies, 1);
        let fx = w.update(3, "alice", "s1", 600, u64::MAX);
        assert_eq!(fx.charges.len(), 1);
        assert_eq!(fx.charges[0].amount, d("0.1"), "time only");
        assert_eq!(w.acct.counters.traffic_anomalies, 1);
        let s = &w.acct.sessions[&SessionKey::new(0, "ras1", "s1")];
        assert_eq!(s.charge.last_octets_in, 0);
    }

    /// Issue 10 item 7: Acct-Interim-Interval 0xFFFFFFFF must not make a session immortal:
    /// staleness uses at most 3 × 24 h.
    #[test]
    fn huge_interim_interval_is_clamped_for_stale_expiry() {
        let mut w = World::new(d("10"));
        let req = AcctRequest {
            status: Some(StatusType::Start),
            user_name: b"alice",
            session_id: b"s1",
            session_time: Some(0),
            interim_interval: Some(u32::MAX),
            event_timestamp: Some(T0 as u32),
            ..Default::default()
        };
        let mut fx = Effects::default();
        w.acct.apply(
            &w.catalog,
            &mut w.subs,
            &mut w.next_xdr,
            0,
            "127.0.0.1",
            &req,
            T0,
            &mut fx,
        );
        let mut fx = Effects::default();
        w.acct.close_stale(
            &w.catalog,
            &w.subs,
            &mut w.next_xdr,
            T0 + 3 * 86_400,
            &mut fx,
        );
        assert!(fx.closed.is_empty(), "not stale yet at exactly 3 days");
        w.acct.close_stale(
            &w.catalog,
            &w.subs,
            &mut w.next_xdr,
            T0 + 3 * 86_400 + 1,
            &mut fx,
        );
        assert_eq!(fx.closed.len(), 1);
        assert!(w.acct.sessions.is_empty());
    }

    /// ratel down for two hours (past the 1 h stale timeout): at the restart the open
    /// session is not closed as stale for ratel's own silence, and the Interim and Stop the
    /// NAS kept meanwhile charge the whole session. Without the restart's clock the session
    /// closed at its Start, charging nothing, and both were ignored as late.
    #[test]
    fn a_restart_does_not_close_sessions_for_its_own_silence() {
        let restart = T0 + 7200;
        let run = |restarted: bool| -> (Decimal, usize) {
            let mut w = World::new(d("10"));
            w.update(1, "alice", "s1", 0, 0);
            if restarted {
                w.acct.restart_silences(restart);
            }
            let mut fx = Effects::default();
            w.acct
                .close_stale(&w.catalog, &w.subs, &mut w.next_xdr, restart, &mut fx);
            let stale = fx.closed.len();
            w.update(3, "alice", "s1", 1800, 0);
            w.update(2, "alice", "s1", 3600, 0);
            (w.credit(), stale)
        };
        // 60 minutes at 0.01.
        assert_eq!(run(true), (d("9.4"), 0));
        assert_eq!(run(false), (d("10"), 1));

        // A session really gone still closes, one timeout after the restart, at its last
        // update.
        let mut w = World::new(d("10"));
        w.update(1, "alice", "s1", 0, 0);
        w.update(3, "alice", "s1", 600, 0);
        w.acct.restart_silences(restart);
        let mut fx = Effects::default();
        w.acct.close_stale(
            &w.catalog,
            &w.subs,
            &mut w.next_xdr,
            restart + 3600,
            &mut fx,
        );
        assert!(fx.closed.is_empty());
        w.acct.close_stale(
            &w.catalog,
            &w.subs,
            &mut w.next_xdr,
            restart + 3601,
            &mut fx,
        );
        assert_eq!(fx.closed.len(), 1);
        assert_eq!(fx.xdrs[0].credit_used, d("0.1"));
        assert_eq!(fx.xdrs[0].logout_time, T0 + 600);
        assert_eq!(w.credit(), d("9.9"));
    }

    /// Issue 10 item 4: with the ledger's keys marked as charged, a replay of a forgotten
    /// session opens nothing and charges nothing; an update of an open session whose key
    /// exists charges nothing and leaves the session as it was.
    #[test]
    fn already_charged_updates_charge_nothing() {
        let mut w = World::new(d("10"));
        // The keys as the ledger reports them (found as such or under their legacy form).
        w.acct.charged_keys = Some(
            [
                format!("radius:ras1:old@{T0}:600:0:0"),
                format!("radius:ras1:s1@{T0}:1200:0:0"),
            ]
            .into_iter()
            .collect(),
        );
        let fx = w.update(3, "alice", "old", 600, 0);
        assert!(fx.charges.is_empty() && fx.upserts.is_empty() && fx.first_logins.is_empty());
        assert!(w.acct.sessions.is_empty());
        assert_eq!(w.acct.open_sessions_of_nas(0), 0);
        w.update(1, "alice", "s1", 0, 0);
        let fx = w.update(3, "alice", "s1", 600, 0);
        assert_eq!(fx.charges[0].amount, d("0.1"));
        let fx = w.update(3, "alice", "s1", 1200, 0);
        assert!(fx.charges.is_empty());
        assert_eq!(w.credit(), d("9.9"));
        let fx = w.update(2, "alice", "s1", 1800, 0);
        // The Stop charges from the last update taken: 600 s → 1800 s.
        assert_eq!(fx.charges[0].amount, d("0.2"));
        assert_eq!(fx.xdrs[0].credit_used, d("0.3"));
        assert_eq!(w.credit(), d("9.7"));
        assert_eq!(w.acct.counters.already_charged, 2);
    }

    /// Issue 10 item 10: a NAS's open sessions are capped; unknown users are capped per
    /// username; the counts follow closes and a recount from loaded sessions.
    #[test]
    fn open_sessions_are_capped() {
        let mut w = World::new(d("10"));
        for i in 0..6 {
            w.update(1, "alice", &format!("a{i}"), 0, 0);
        }
        assert_eq!(w.acct.sessions.len(), 4);
        assert_eq!(w.acct.counters.sessions_capped, 2);
        let fx = w.update(2, "alice", "a0", 60, 0);
        assert_eq!(fx.xdrs.len(), 1);
        assert_eq!(w.acct.open_sessions_of_nas(0), 3);
        w.acct.recount();
        assert_eq!(w.acct.open_sessions_of_nas(0), 3);

        let mut w = World::new(d("10"));
        w.catalog.nas[0].max_sessions = 1000;
        for i in 0..20 {
            w.update(1, "mallory", &format!("m{i}"), 0, 0);
        }
        w.update(1, "eve", "e0", 0, 0);
        assert_eq!(
            w.acct.sessions.len(),
            MAX_UNKNOWN_SESSIONS_PER_USER as usize + 1
        );
        w.update(2, "mallory", "m0", 60, 0);
        w.update(1, "mallory", "m19", 0, 0);
        assert_eq!(
            w.acct.sessions.len(),
            MAX_UNKNOWN_SESSIONS_PER_USER as usize + 1
        );
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(0, "ras1", "m19")));
    }

    /// A proxy (`ras1`, 127.0.0.1) and a NAS configured in its own right (`bras5`).
    fn proxy_world() -> World {
        let cfg = format!("{CFG}[[nas]]\nname = \"bras5\"\nip = \"10.0.0.5\"\nsecret = \"t\"\n")
            .replace("max_sessions = 4", "max_sessions = 100");
        let catalog = Catalog::build(
            &LoadedConfig::from_str(&cfg, ConfigSource::BuiltinDemo, ".".into()).unwrap(),
        )
        .unwrap();
        let user = |id: i64, name: &str| UserRow {
            user_id: id,
            username: Some(name.into()),
            group_name: "g".into(),
            credit: d("10"),
        };
        let subs = Subscribers::new(&catalog, vec![user(1, "alice"), user(2, "bob")]);
        World {
            catalog,
            subs,
            acct: Accounting::default(),
            next_xdr: 1,
        }
    }

    /// An update relayed by the proxy from the NAS at `nas_ip` (none: the packet names no
    /// NAS), at T0 + `secs`.
    fn relayed(
        w: &mut World,
        nas_ip: Option<&str>,
        status: StatusType,
        user: &str,
        sid: &str,
        secs: u32,
    ) -> Effects {
        let req = AcctRequest {
            status: Some(status),
            user_name: user.as_bytes(),
            session_id: sid.as_bytes(),
            session_time: Some(secs),
            event_timestamp: Some((T0 + secs as i64) as u32),
            nas_ip: nas_ip.map(|i| i.parse().unwrap()),
            ..Default::default()
        };
        let mut fx = Effects::default();
        w.acct.apply(
            &w.catalog,
            &mut w.subs,
            &mut w.next_xdr,
            0,
            "127.0.0.1",
            &req,
            T0 + secs as i64,
            &mut fx,
        );
        fx
    }

    fn credits(w: &World) -> (Decimal, Decimal) {
        (w.subs.users[0].credit, w.subs.users[1].credit)
    }

    /// Issue 21 item 2: the NAS a packet belongs to, from what the packet names, in the
    /// DESIGN order; keys of the direct setup stay the client's name.
    #[test]
    fn nas_identity_follows_what_the_packet_names() {
        let w = proxy_world();
        // (NAS-IP-Address, NAS-IPv6-Address, NAS-Identifier) →
        // (entry, key, ras_description, nas_ip, legacy key, legacy nas_ip)
        type Want = (
            u16,
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            &'static str,
        );
        type Named = (Option<&'static str>, Option<&'static str>, &'static str);
        let cases: &[(Named, Want)] = &[
            (
                (None, None, ""),
                (0, "ras1", "ras1", "127.0.0.1", None, "127.0.0.1"),
            ),
            (
                (Some("127.0.0.1"), None, "x"),
                (0, "ras1", "ras1", "127.0.0.1", None, "127.0.0.1"),
            ),
            (
                (None, None, "ras1"),
                (0, "ras1", "ras1", "127.0.0.1", None, "127.0.0.1"),
            ),
            (
                (Some("10.0.0.5"), None, ""),
                (1, "bras5", "bras5", "10.0.0.5", Some("ras1"), "10.0.0.5"),
            ),
            (
                (None, None, "bras5"),
                (1, "bras5", "bras5", "10.0.0.5", Some("ras1"), "127.0.0.1"),
            ),
            (
                (Some("10.9.9.9"), None, ""),
                (
                    0,
                    "ras1/10.9.9.9",
                    "10.9.9.9",
                    "10.9.9.9",
                    Some("ras1"),
                    "10.9.9.9",
                ),
            ),
            (
                (Some("10.9.9.9"), Some("2001:db8::9"), "north"),
                (
                    0,
                    "ras1/10.9.9.9",
                    "north",
                    "10.9.9.9",
                    Some("ras1"),
                    "10.9.9.9",
                ),
            ),
            (
                (None, Some("2001:db8::9"), "north"),
                (
                    0,
                    "ras1/2001:db8::9",
                    "north",
                    "2001:db8::9",
                    Some("ras1"),
                    "127.0.0.1",
                ),
            ),
            (
                (None, Some("2001:db8::9"), ""),
                (
                    0,
                    "ras1/2001:db8::9",
                    "2001:db8::9",
                    "2001:db8::9",
                    Some("ras1"),
                    "127.0.0.1",
                ),
            ),
            (
                (None, None, "south"),
                (0, "ras1/south", "south", "", Some("ras1"), "127.0.0.1"),
            ),
        ];
        for ((ip4, ip6, ident), want) in cases {
            let req = AcctRequest {
                nas_ip: ip4.map(|i| i.parse().unwrap()),
                nas_ipv6: ip6.map(|i| i.parse().unwrap()),
                nas_identifier: ident.as_bytes(),
                ..Default::default()
            };
            let id = nas_identity(&w.catalog, 0, "127.0.0.1", &req);
            let got = (
                id.entry,
                id.key.as_str(),
                id.ras_description.as_str(),
                id.nas_ip.as_str(),
                id.legacy_key.as_deref(),
                id.legacy_nas_ip.as_str(),
            );
            assert_eq!(got, *want, "{ip4:?} {ip6:?} {ident:?}");
            assert_eq!(id.client, 0);
        }
    }

    /// Issue 21 items 2, 3, 4: two NASes behind one proxy reuse an Acct-Session-Id: two
    /// sessions, each charged; an Accounting-On from one closes only its sessions; the xDR
    /// names the real NAS.
    #[test]
    fn nases_behind_one_proxy_keep_their_sessions_apart() {
        use StatusType::*;
        let mut w = proxy_world();
        let (a, b) = (Some("10.0.0.1"), Some("10.0.0.2"));
        relayed(&mut w, a, Start, "alice", "1", 0);
        relayed(&mut w, b, Start, "bob", "1", 0);
        relayed(&mut w, a, InterimUpdate, "alice", "1", 600);
        let fx = relayed(&mut w, b, InterimUpdate, "bob", "1", 600);
        assert_eq!(
            fx.charges[0].idem_key,
            format!("radius:ras1/10.0.0.2:1@{T0}:600:0:0")
        );
        assert_eq!(credits(&w), (d("9.9"), d("9.9")));
        assert_eq!(w.acct.sessions.len(), 2);
        assert_eq!(
            w.acct.open_sessions_of_nas(0),
            2,
            "both count toward the proxy's cap"
        );
        // The configured NAS behind the proxy: its own key and entry.
        relayed(&mut w, Some("10.0.0.5"), Start, "alice", "1", 0);
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(1, "bras5", "1")));

        let fx = relayed(&mut w, a, AccountingOn, "", "", 900);
        assert_eq!(fx.closed, vec![SessionKey::new(0, "ras1/10.0.0.1", "1")]);
        let x = &fx.xdrs[0];
        assert_eq!(
            (
                x.username.as_str(),
                x.ras_description.as_str(),
                x.nas_ip.as_str()
            ),
            ("alice", "10.0.0.1", "10.0.0.1")
        );
        assert_eq!(
            (x.terminate_cause.as_str(), x.credit_used),
            ("NAS-Reboot", d("0.1"))
        );
        assert_eq!(x.source, "radius:ras1/10.0.0.1");
        assert_eq!(
            w.acct.sessions.len(),
            2,
            "bob's session and bras5's stay open"
        );
        relayed(&mut w, b, InterimUpdate, "bob", "1", 1200);
        assert_eq!(credits(&w), (d("9.9"), d("9.8")));
        // Accounting-Off from the proxy itself (naming no NAS) closes none of them.
        let fx = relayed(&mut w, None, AccountingOff, "", "", 1300);
        assert!(fx.closed.is_empty());
    }

    /// Issue 21 item 2, migration: sessions stored under the old key (the proxy's name,
    /// with the old code's nas_ip) keep rating under that key after the upgrade, for their
    /// own NAS and user only; a late Stop finds the old closed key; a Start of another NAS
    /// with the same Acct-Session-Id does not; an Accounting-On closes the old sessions of
    /// the NAS it names only.
    #[test]
    fn sessions_stored_under_the_old_key_keep_rating() {
        use StatusType::*;
        let mut w = proxy_world();
        // What the code before issue 21 stored for a relayed packet: key = the client's
        // name, nas_ip = the packet's NAS-IP-Address.
        for (sid, user, nas_ip) in [
            ("1", "alice", "10.0.0.1"),
            ("2", "alice", "10.0.0.1"),
            ("3", "bob", "10.0.0.4"),
        ] {
            relayed(&mut w, None, Start, user, sid, 0);
            let s = w
                .acct
                .sessions
                .get_mut(&SessionKey::new(0, "ras1", sid))
                .unwrap();
            s.nas_ip = nas_ip.into();
            s.ras_description.clear();
        }
        let (a, b) = (Some("10.0.0.1"), Some("10.0.0.2"));
        // Another NAS's session "1" is not the old session "1" of NAS A.
        relayed(&mut w, b, InterimUpdate, "bob", "1", 600);
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(0, "ras1/10.0.0.2", "1")));
        let fx = relayed(&mut w, a, InterimUpdate, "alice", "1", 600);
        assert_eq!(
            fx.charges[0].idem_key,
            format!("radius:ras1:1@{T0}:600:0:0"),
            "the old NAS key"
        );
        let fx = relayed(&mut w, a, Stop, "alice", "1", 1200);
        assert_eq!(fx.closed, vec![SessionKey::new(0, "ras1", "1")]);
        assert_eq!(
            (fx.xdrs[0].credit_used, fx.xdrs[0].ras_description.as_str()),
            (d("0.2"), "ras1")
        );
        assert_eq!(credits(&w), (d("9.8"), d("9.9")));
        // A late Stop of it: the old closed key, nothing charged.
        let fx = relayed(&mut w, a, Stop, "alice", "1", 1300);
        assert!(fx.charges.is_empty() && fx.closed.is_empty());
        assert_eq!(w.acct.counters.late_updates_ignored, 1);
        // A Start of NAS C with session id "1" is a new session, not that closed one.
        relayed(&mut w, Some("10.0.0.3"), Start, "bob", "1", 0);
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(0, "ras1/10.0.0.3", "1")));
        // Accounting-On from NAS A closes its old session "2", not NAS D's old "3".
        let fx = relayed(&mut w, a, AccountingOn, "", "", 1400);
        assert_eq!(fx.closed, vec![SessionKey::new(0, "ras1", "2")]);
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(0, "ras1", "3")));
    }

    /// A NAS that counts Acct-Session-Ids from 1 again (after a reboot) within the
    /// closed-session memory: the new session with an old id is charged, with keys of its
    /// own; late packets of the old session still charge nothing, timestamped or not.
    #[test]
    fn a_reused_session_id_is_a_new_session() {
        let mut w = World::new(d("10"));
        let at = |w: &mut World, status: u32, secs: u32, begins: i64, ts: bool, now: i64| {
            let req = AcctRequest {
                status: Some(match status {
                    1 => StatusType::Start,
                    2 => StatusType::Stop,
                    _ => StatusType::InterimUpdate,
                }),
                user_name: b"alice",
                session_id: b"1",
                session_time: Some(secs),
                event_timestamp: ts.then_some((begins + secs as i64) as u32),
                ..Default::default()
            };
            let mut fx = Effects::default();
            w.acct.apply(
                &w.catalog,
                &mut w.subs,
                &mut w.next_xdr,
                0,
                "127.0.0.1",
                &req,
                now,
                &mut fx,
            );
            fx
        };
        // Session "1" from T0, 10 minutes: 0.1.
        at(&mut w, 1, 0, T0, true, T0);
        let fx = at(&mut w, 2, 600, T0, true, T0 + 600);
        assert_eq!(fx.charges.len(), 1);
        let old_key = fx.charges[0].idem_key.clone();
        assert_eq!(old_key, format!("radius:ras1:1@{T0}:600:0:0"));
        assert_eq!(w.credit(), d("9.9"));
        // The NAS reboots and starts session "1" again an hour later: a new session.
        let t1 = T0 + 3600;
        at(&mut w, 1, 0, t1, true, t1);
        assert!(w
            .acct
            .sessions
            .contains_key(&SessionKey::new(0, "ras1", "1")));
        // The old session's Stop, retransmitted late, now that "1" is open again: it began
        // before the old one ended, so it is not rated on the new session (timestamped or
        // not).
        let late = w.acct.counters.late_updates_ignored;
        assert!(at(&mut w, 2, 1500, T0, true, t1 + 5).charges.is_empty());
        assert!(at(&mut w, 2, 1500, T0, false, t1 + 5).charges.is_empty());
        assert_eq!(w.acct.counters.late_updates_ignored, late + 2);
        assert_eq!(w.credit(), d("9.9"));
        // Same counters as the old session's charge: another key, charged.
        let fx = at(&mut w, 3, 600, t1, true, t1 + 600);
        assert_eq!(fx.charges.len(), 1);
        assert_eq!(
            fx.charges[0].idem_key,
            format!("radius:ras1:1@{t1}:600:0:0")
        );
        assert_ne!(fx.charges[0].idem_key, old_key);
        assert_eq!(
            fx.charges[0].legacy_key, None,
            "the session was opened by its Start"
        );
        let fx = at(&mut w, 2, 1200, t1, true, t1 + 1200);
        assert_eq!(fx.closed.len(), 1);
        assert_eq!(w.credit(), d("9.7"));
        // Late packets of the first session: a timestamped Stop, an untimestamped Stop
        // (its arrival says nothing of when it began), a replayed Start: nothing.
        let late = w.acct.counters.late_updates_ignored;
        assert!(at(&mut w, 2, 600, T0, true, t1 + 2000).charges.is_empty());
        assert!(at(&mut w, 2, 600, T0, false, t1 + 2000).charges.is_empty());
        assert!(at(&mut w, 1, 0, t1, true, t1 + 2000).charges.is_empty());
        assert_eq!(w.acct.counters.late_updates_ignored, late + 3);
        assert!(w.acct.sessions.is_empty());
        assert_eq!(w.credit(), d("9.7"));
        // A session opened by an update (its Start lost) carries the legacy key too.
        let t2 = T0 + 7200;
        let fx = at(&mut w, 3, 300, t2, true, t2 + 300);
        assert_eq!(
            fx.charges[0].idem_key,
            format!("radius:ras1:1@{t2}:300:0:0")
        );
        assert_eq!(
            fx.charges[0].legacy_key.as_deref(),
            Some("radius:ras1:1:300:0:0")
        );
    }
}
