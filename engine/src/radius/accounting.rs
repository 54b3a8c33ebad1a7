//! RADIUS accounting state: open sessions, recently closed sessions and the retransmission
//! cache, and [`Accounting::apply`], which turns one verified Accounting-Request into its
//! ledger effects (a charge, a session upsert or close, an xDR). No I/O, no clock: the
//! arrival time is passed in, and the caller commits the effects before acknowledging.

use std::collections::{HashMap, VecDeque};

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

/// An open internet session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub nas: String,
    pub session_id: String,
    pub username: String,
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
}

/// Key of a session: (NAS index, Acct-Session-Id).
pub type SessionKey = (u16, String);

/// One journal movement produced by an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub user_id: i64,
    /// Positive amount taken from the credit.
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub idem_key: String,
}

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
}

/// The accounting state of `ratel serve`.
#[derive(Debug, Default)]
pub struct Accounting {
    pub sessions: HashMap<SessionKey, Session>,
    pub closed: HashMap<SessionKey, i64>,
    seen: HashMap<(u16, u8, [u8; 16]), ()>,
    seen_order: VecDeque<(u16, u8, [u8; 16])>,
    pub counters: Counters,
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
        self.seen.insert(key, ());
        self.seen_order.push_back(key);
        false
    }

    /// Forgets a request recorded by [`Accounting::is_retransmission`] (its batch failed to
    /// commit, so a retransmission must be processed again).
    pub fn forget_seen(&mut self, nas: u16, ident: u8, auth: &[u8; 16]) {
        self.seen.remove(&(nas, ident, *auth));
    }

    /// Applies one verified request from NAS `nas_idx` arriving at `now` (unix seconds).
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
        let nas_name = catalog.nas[nas_idx as usize].name.clone();
        match req.status_type() {
            StatusType::AccountingOn | StatusType::AccountingOff => {
                let keys: Vec<SessionKey> = self
                    .sessions
                    .keys()
                    .filter(|k| k.0 == nas_idx)
                    .cloned()
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
        let key: SessionKey = (nas_idx, text(req.session_id));
        if self.closed.contains_key(&key) {
            // A late Interim/Stop (or a replayed Start) of a session already closed.
            self.counters.late_updates_ignored += 1;
            return;
        }
        let moment = match req.event_timestamp {
            Some(t) => t as i64,
            None => now - req.delay_time as i64,
        };
        let usage = Usage {
            moment,
            session_time: req.session_time.unwrap_or(0) as i64,
            octets_in: req.octets_in(),
            octets_out: req.octets_out(),
        };
        let username = text(req.user_name);
        if !self.sessions.contains_key(&key) {
            let user = subs.by_name.get(username.as_str()).copied();
            let credit_at_start = user
                .map(|u| subs.users[u as usize].credit)
                .unwrap_or_default();
            if let Some(u) = user {
                fx.first_logins.push((
                    subs.users[u as usize].user_id,
                    usage.moment - usage.session_time,
                ));
            }
            self.sessions.insert(
                key.clone(),
                Session {
                    nas: nas_name.clone(),
                    session_id: key.1.clone(),
                    username: username.clone(),
                    charge: SessionCharge::new(&usage),
                    credit_at_start,
                    nas_ip: req
                        .nas_ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| src_ip.to_string()),
                    framed_ip: String::new(),
                    calling_station: String::new(),
                    called_station: String::new(),
                    nas_port: None,
                    last_arrival: now,
                    interim_interval: None,
                },
            );
            self.counters.sessions_opened += 1;
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
        if let Some(ui) = subs.by_name.get(s.username.as_str()).copied() {
            let u = &mut subs.users[ui as usize];
            if let Some(group) = u.group.map(|g| &catalog.groups[g]) {
                let out = s
                    .charge
                    .apply(group, &catalog.charge_rules, &catalog.tz, &usage);
                if out.time_backwards || out.octets_backwards {
                    self.counters.counters_backwards += 1;
                    tracing::warn!(nas = %s.nas, session = %s.session_id, "counters went backwards: nothing charged for them");
                }
                if !out.delta.is_zero() {
                    // Always charged, even into negative credit: the service was used.
                    u.credit -= out.delta;
                    fx.charges.push(Charge {
                        user_id: u.user_id,
                        amount: out.delta,
                        balance_after: u.credit,
                        idem_key: format!(
                            "radius:{}:{}:{}:{}:{}",
                            s.nas,
                            s.session_id,
                            usage.session_time,
                            usage.octets_in,
                            usage.octets_out
                        ),
                    });
                }
            }
        } else {
            // Unknown user: no charge, but keep the counters so the xDR shows the usage.
            s.charge.observe(&usage);
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
        self.closed.insert(key.clone(), now);
        self.counters.sessions_closed += 1;
        let user = subs
            .by_name
            .get(s.username.as_str())
            .map(|&u| &subs.users[u as usize]);
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
                    (r.bytes_in + r.bytes_out).min(i64::MAX as u64) as i64,
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
            username: s.username.clone(),
            group_name: user.map(|u| u.group_name.clone()).unwrap_or_default(),
            login_time: c.login_time,
            logout_time: c.login_time + c.last_session_time,
            duration_seconds: c.last_session_time,
            billed_seconds: c.last_session_time,
            bytes_in: c.last_octets_in.min(i64::MAX as u64) as i64,
            bytes_out: c.last_octets_out.min(i64::MAX as u64) as i64,
            session_id: s.session_id.clone(),
            ras_description: s.nas.clone(),
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
                    catalog.stale_timeout_secs as i64
                } else {
                    let interval = s
                        .interim_interval
                        .map(|i| i as u64)
                        .or(catalog.nas[k.0 as usize].interim_interval_secs);
                    interval.map(|i| 3 * i as i64).unwrap_or(3600)
                };
                now - s.last_arrival > timeout
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(nas = %catalog.nas[k.0 as usize].name, session = %k.1, "closing a stale session at its last update");
            self.counters.stale_closed += 1;
            self.close(catalog, subs, next_xdr, &k, "Stale-Session", now, fx);
        }
        self.closed.retain(|_, at| now - *at < CLOSED_MEMORY_SECS);
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
