//! Disconnect-Requests (RFC 5176) for prepaid control: when a committed charge or an
//! operator change leaves a client's credit at or below zero, each of its open sessions is
//! asked to end at the NAS it belongs to.
//!
//! The serve core never waits for a NAS: [`Disconnector::request`] hands a request to the
//! sender thread over a bounded channel with `try_send` (a full channel is counted and
//! logged, the request dropped). The sender thread ([`run_sender`]) owns its own UDP socket,
//! sends each request, retransmits it up to [`RETRANSMISSIONS`] times 1 s apart while no
//! Disconnect-ACK came (a NAK is retried too, as a new request: a NAS answers NAK for a
//! session it cannot find *yet*, or when busy), and logs and counts ACK / NAK (with its
//! Error-Cause) / timeout. Packet encoding and answer checking are pure functions.
//!
//! Where a request goes (DESIGN.md "Behind a RADIUS proxy"): to the session's NAS at its
//! `coa_port` when the NAS is a configured `[[nas]]`, else to the `coa_server` of the proxy
//! that relayed the session; a session with neither is counted as unroutable.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::radius::codec::hmac_md5;

pub const CODE_DISCONNECT_REQUEST: u8 = 40;
pub const CODE_DISCONNECT_ACK: u8 = 41;
pub const CODE_DISCONNECT_NAK: u8 = 42;
pub const ATTR_ERROR_CAUSE: u8 = 101;
/// Retransmissions after the first send (4 sends in all), 1 s apart.
pub const RETRANSMISSIONS: u32 = 3;
/// Requests waiting for the sender thread.
pub const QUEUE: usize = 4096;
/// Requests the sender has on the wire at once (one Identifier each).
const IN_FLIGHT: usize = 256;

/// One Disconnect-Request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectRequest {
    pub to: SocketAddr,
    pub secret: Vec<u8>,
    pub user_name: String,
    pub session_id: String,
    pub nas_ip: Option<Ipv4Addr>,
    /// The session's NAS (for logs).
    pub nas: String,
    /// Event-Timestamp: when the credit ran out (unix seconds).
    pub event_timestamp: u32,
}

/// Counts of the disconnect machinery (read by logs and tests).
#[derive(Debug, Default)]
pub struct DisconnectCounters {
    /// Series started (one per session per crossing).
    pub requested: AtomicU64,
    /// Dropped because the channel to the sender was full.
    pub queue_full: AtomicU64,
    /// Sessions with no NAS to send to (an unconfigured NAS behind a proxy without
    /// `coa_server`).
    pub unroutable: AtomicU64,
    pub sent: AtomicU64,
    pub retransmitted: AtomicU64,
    pub acked: AtomicU64,
    /// Series whose last answer was a NAK.
    pub naked: AtomicU64,
    /// Series with no answer at all.
    pub timed_out: AtomicU64,
}

/// Encodes a Disconnect-Request: User-Name, Acct-Session-Id, NAS-IP-Address when known,
/// Event-Timestamp, Message-Authenticator (HMAC-MD5 with the Request Authenticator
/// zeroed), then the Request Authenticator MD5(Code + Identifier + Length + 16 zero octets
/// + Attributes + Secret) (RFC 5176 §2.3, §3.5).
pub fn encode_request(r: &DisconnectRequest, identifier: u8) -> Vec<u8> {
    let mut p = vec![CODE_DISCONNECT_REQUEST, identifier, 0, 0];
    p.extend_from_slice(&[0u8; 16]);
    let push = |p: &mut Vec<u8>, t: u8, v: &[u8]| {
        p.push(t);
        p.push((v.len() + 2) as u8);
        p.extend_from_slice(v);
    };
    push(&mut p, 1, trunc(r.user_name.as_bytes()));
    push(&mut p, 44, trunc(r.session_id.as_bytes()));
    if let Some(ip) = r.nas_ip {
        push(&mut p, 4, &ip.octets());
    }
    push(&mut p, 55, &r.event_timestamp.to_be_bytes());
    let at = p.len() + 2;
    push(&mut p, 80, &[0u8; 16]);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let mac = hmac_md5(&r.secret, &[&p]);
    p[at..at + 16].copy_from_slice(&mac);
    let mut ctx = md5::Context::new();
    ctx.consume(&p);
    ctx.consume(&r.secret);
    let auth = ctx.compute().0;
    p[4..20].copy_from_slice(&auth);
    p
}

fn trunc(v: &[u8]) -> &[u8] {
    &v[..v.len().min(253)]
}

/// A verified answer to a Disconnect-Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ack,
    /// With its Error-Cause, when it carried one.
    Nak(Option<u32>),
}

/// Checks a datagram as the answer to `request` (the bytes we sent): code ACK/NAK, same
/// Identifier, Response Authenticator MD5(Code + Identifier + Length + Request
/// Authenticator + Attributes + Secret). None for anything else.
pub fn check_answer(datagram: &[u8], request: &[u8], secret: &[u8]) -> Option<Answer> {
    if datagram.len() < 20 || request.len() < 20 || datagram[1] != request[1] {
        return None;
    }
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let pkt = datagram.get(..len).filter(|_| len >= 20)?;
    let mut ctx = md5::Context::new();
    ctx.consume(&pkt[..4]);
    ctx.consume(&request[4..20]);
    ctx.consume(&pkt[20..]);
    ctx.consume(secret);
    if ctx.compute().0 != pkt[4..20] {
        return None;
    }
    let mut cause = None;
    let mut pos = 20;
    while pos + 2 <= pkt.len() {
        let alen = pkt[pos + 1] as usize;
        if alen < 2 || pos + alen > pkt.len() {
            return None;
        }
        if pkt[pos] == ATTR_ERROR_CAUSE && alen == 6 {
            cause = Some(u32::from_be_bytes(
                pkt[pos + 2..pos + 6].try_into().expect("4 bytes"),
            ));
        }
        pos += alen;
    }
    match pkt[0] {
        CODE_DISCONNECT_ACK => Some(Answer::Ack),
        CODE_DISCONNECT_NAK => Some(Answer::Nak(cause)),
        _ => None,
    }
}

/// Where a Disconnect-Request for a session of NAS key `nas_key` goes, and with which
/// secret: a configured `[[nas]]` at its `coa_port`; a NAS relayed by a proxy
/// (`<proxy>/<NAS>`) through the proxy's `coa_server`.
pub fn route(catalog: &Catalog, nas_key: &str) -> Option<(SocketAddr, Vec<u8>)> {
    if let Some(n) = catalog.nas.iter().find(|n| n.name == nas_key) {
        return Some((SocketAddr::new(n.ip, n.coa_port), n.secret.clone()));
    }
    let proxy = nas_key.split_once('/')?.0;
    let n = catalog.nas.iter().find(|n| n.name == proxy)?;
    Some((n.coa_server?, n.secret.clone()))
}

/// The request for one open session of `username`, routed by [`route`] (`None`: no NAS to
/// send it to).
fn request(
    catalog: &Catalog,
    username: &str,
    nas_key: String,
    session_id: String,
    nas_ip: &str,
    now: i64,
) -> Option<DisconnectRequest> {
    let (to, secret) = route(catalog, &nas_key)?;
    Some(DisconnectRequest {
        to,
        secret,
        user_name: username.to_string(),
        session_id,
        nas_ip: nas_ip.parse().ok(),
        nas: nas_key,
        event_timestamp: now.clamp(0, u32::MAX as i64) as u32,
    })
}

/// A handle for operator-asked disconnects (`user.killUser`, `ratel disconnect`): the same
/// queue and sender thread as the core's, reachable from the API through `Live`.
#[derive(Debug, Clone)]
pub struct DisconnectHandle {
    tx: crossbeam_channel::Sender<DisconnectRequest>,
    counters: Arc<DisconnectCounters>,
}

impl DisconnectHandle {
    /// Queues a Disconnect-Request for one open session (never blocks). `Err` says why it
    /// cannot be sent: no route to its NAS, or the queue is full.
    pub fn session(
        &self,
        catalog: &Catalog,
        username: &str,
        o: &crate::serve::OnlineSession,
        now: i64,
    ) -> Result<std::net::SocketAddr, String> {
        let Some(r) = request(
            catalog,
            username,
            o.nas_key.clone(),
            o.session_id.clone(),
            &o.nas_ip,
            now,
        ) else {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "no NAS to send it to: {} is behind a proxy without coa_server",
                o.nas
            ));
        };
        let to = r.to;
        self.counters.requested.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(r).is_err() {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err("the Disconnect-Request queue is full: try again".into());
        }
        Ok(to)
    }
}

/// The core's handle: builds requests for a user's open sessions and hands them to the
/// sender thread without blocking.
pub struct Disconnector {
    tx: crossbeam_channel::Sender<DisconnectRequest>,
    pub counters: Arc<DisconnectCounters>,
    last_full_log: Option<Instant>,
}

impl Disconnector {
    /// A handle and the receiving end for [`run_sender`].
    pub fn new() -> (Disconnector, crossbeam_channel::Receiver<DisconnectRequest>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        (
            Disconnector {
                tx,
                counters: Arc::new(DisconnectCounters::default()),
                last_full_log: None,
            },
            rx,
        )
    }

    /// A handle for operator-asked disconnects on the same queue.
    pub fn handle(&self) -> DisconnectHandle {
        DisconnectHandle {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }

    /// One series for each open session of client `user_id` (as the core published them
    /// in `live`): its credit just went from above zero to zero or below.
    pub fn user_exhausted(
        &mut self,
        catalog: &Catalog,
        live: &crate::serve::Live,
        user_id: i64,
        now: i64,
    ) {
        self.user_sessions(catalog, live, user_id, now, "credit exhausted");
    }

    /// One series for each open session of client `user_id`: an operator just locked,
    /// archived or deleted it (whatever its credit).
    pub fn user_locked(
        &mut self,
        catalog: &Catalog,
        live: &crate::serve::Live,
        user_id: i64,
        now: i64,
    ) {
        self.user_sessions(catalog, live, user_id, now, "client locked");
    }

    /// A series for each open session of client `user_id` in `live` (whichever of its
    /// radius accounts opened it); `why` is for the logs.
    fn user_sessions(
        &mut self,
        catalog: &Catalog,
        live: &crate::serve::Live,
        user_id: i64,
        now: i64,
        why: &str,
    ) {
        let sessions: Vec<(String, String, String, String)> = {
            let online = live.online.read().unwrap_or_else(|e| e.into_inner());
            online
                .get(&user_id)
                .map(|v| {
                    v.iter()
                        .map(|o| {
                            (
                                o.username.clone(),
                                o.nas_key.clone(),
                                o.session_id.clone(),
                                o.nas_ip.clone(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for (username, nas_key, session_id, nas_ip) in sessions {
            let Some(r) = request(catalog, &username, nas_key, session_id, &nas_ip, now) else {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(user = %username, reason = why, "no NAS to send a Disconnect-Request to (a NAS behind a proxy without coa_server)");
                continue;
            };
            self.counters.requested.fetch_add(1, Ordering::Relaxed);
            if self.tx.try_send(r).is_err() {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_full_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    self.last_full_log = Some(Instant::now());
                    tracing::warn!(queued = QUEUE, dropped = self.counters.queue_full.load(Ordering::Relaxed), "Disconnect-Request queue full: request dropped (logged at most every 10 s)");
                }
            }
        }
    }
}

/// A request on the wire.
struct Flight {
    req: DisconnectRequest,
    bytes: Vec<u8>,
    /// Sends so far.
    sends: u32,
    next_at: Instant,
    last: Option<Answer>,
}

/// The sender thread: sends what arrives on `rx`, retransmits, matches answers; returns
/// when `rx` is closed and nothing is in flight, or at `shutdown`. `interval` is 1 s in
/// production (tests pass the same).
pub fn run_sender(
    socket: UdpSocket,
    rx: crossbeam_channel::Receiver<DisconnectRequest>,
    counters: Arc<DisconnectCounters>,
    shutdown: Arc<AtomicBool>,
    interval: Duration,
) {
    let mut flights: Vec<Option<Flight>> = (0..IN_FLIGHT).map(|_| None).collect();
    let mut next_id: usize = 0;
    let mut open = true;
    let mut buf = [0u8; 4096];
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    while !shutdown.load(Ordering::Relaxed) {
        // Take new requests while identifiers are free.
        while open && flights.iter().any(Option::is_none) {
            match rx.try_recv() {
                Ok(req) => {
                    let mut id = next_id;
                    while flights[id].is_some() {
                        id = (id + 1) % IN_FLIGHT;
                    }
                    next_id = (id + 1) % IN_FLIGHT;
                    let bytes = encode_request(&req, id as u8);
                    flights[id] = Some(Flight {
                        req,
                        bytes,
                        sends: 0,
                        next_at: Instant::now(),
                        last: None,
                    });
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && flights.iter().all(Option::is_none) {
            return;
        }
        // Send what is due; end series that ran out of sends.
        let now = Instant::now();
        for id in 0..IN_FLIGHT {
            let Some(f) = flights[id].as_mut() else {
                continue;
            };
            if f.next_at > now {
                continue;
            }
            if f.sends > RETRANSMISSIONS {
                finish(&counters, f);
                flights[id] = None;
                continue;
            }
            let mut at = id;
            if f.sends > 0 {
                counters.retransmitted.fetch_add(1, Ordering::Relaxed);
                // After a NAK: a new request under a new Identifier (a NAS answers a
                // repeated packet from its cache).
                if f.last.is_some() {
                    if let Some(free) = (1..IN_FLIGHT)
                        .map(|k| (id + k) % IN_FLIGHT)
                        .find(|&k| flights[k].is_none())
                    {
                        let mut moved = flights[id].take().expect("in flight");
                        moved.bytes = encode_request(&moved.req, free as u8);
                        flights[free] = Some(moved);
                        at = free;
                    }
                }
            }
            let f = flights[at].as_mut().expect("in flight");
            let _ = socket.send_to(&f.bytes, f.req.to);
            counters.sent.fetch_add(1, Ordering::Relaxed);
            f.sends += 1;
            f.next_at = now + interval;
        }
        // Answers.
        if let Ok((n, src)) = socket.recv_from(&mut buf) {
            let id = buf.get(1).copied().unwrap_or(0) as usize;
            if let Some(f) = flights[id].as_mut().filter(|f| f.req.to == src) {
                match check_answer(&buf[..n], &f.bytes, &f.req.secret) {
                    Some(Answer::Ack) => {
                        f.last = Some(Answer::Ack);
                        finish(&counters, f);
                        flights[id] = None;
                    }
                    Some(nak @ Answer::Nak(cause)) => {
                        tracing::info!(user = %f.req.user_name, session = %f.req.session_id, nas = %f.req.nas, error_cause = ?cause, sends = f.sends, "Disconnect-NAK");
                        f.last = Some(nak);
                    }
                    None => {}
                }
            }
        }
    }
}

/// Logs and counts the end of a series.
fn finish(counters: &DisconnectCounters, f: &Flight) {
    match f.last {
        Some(Answer::Ack) => {
            counters.acked.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = %f.req.user_name, session = %f.req.session_id, nas = %f.req.nas, to = %f.req.to, sends = f.sends, "Disconnect-ACK: session disconnected (credit exhausted)");
        }
        Some(Answer::Nak(cause)) => {
            counters.naked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(user = %f.req.user_name, session = %f.req.session_id, nas = %f.req.nas, to = %f.req.to, error_cause = ?cause, sends = f.sends, "Disconnect-NAK after every retry: session NOT disconnected");
        }
        None => {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(user = %f.req.user_name, session = %f.req.session_id, nas = %f.req.nas, to = %f.req.to, sends = f.sends, "Disconnect-Request unanswered: session NOT disconnected");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> DisconnectRequest {
        DisconnectRequest {
            to: "127.0.0.1:3799".parse().unwrap(),
            secret: b"s3cret".to_vec(),
            user_name: "alice".into(),
            session_id: "sess-1".into(),
            nas_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
            nas: "ras1".into(),
            event_timestamp: 1_700_000_000,
        }
    }

    /// The request checked against a hand computation of RFC 5176 §2.3 / §3.5.
    #[test]
    fn request_bytes() {
        let p = encode_request(&req(), 9);
        let mut attrs = vec![1u8, 7];
        attrs.extend_from_slice(b"alice");
        attrs.extend_from_slice(&[44, 8]);
        attrs.extend_from_slice(b"sess-1");
        attrs.extend_from_slice(&[4, 6, 10, 0, 0, 1]);
        attrs.extend_from_slice(&[55, 6]);
        attrs.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        attrs.extend_from_slice(&[80, 18]);
        attrs.extend_from_slice(&[0; 16]);
        let len = 20 + attrs.len();
        let mut want = vec![40u8, 9, 0, len as u8];
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&attrs);
        let mac = hmac_md5(b"s3cret", &[&want]);
        want[len - 16..].copy_from_slice(&mac);
        let ra = md5::compute([&want[..], b"s3cret"].concat()).0;
        want[4..20].copy_from_slice(&ra);
        assert_eq!(p, want);
        let mut no_ip = req();
        no_ip.nas_ip = None;
        assert!(!encode_request(&no_ip, 1).windows(2).any(|w| w == [4, 6]));
    }

    /// A configured NAS gets its requests at its coa_port; a NAS a proxy relays
    /// (`<proxy>/<NAS>`) through the proxy's coa_server, with the proxy's secret; without
    /// one, nowhere.
    #[test]
    fn routes() {
        let cfg = r#"
[[nas]]
name = "ras1"
ip = "10.0.0.1"
secret = "s1"
coa_port = 1700
[[nas]]
name = "proxy"
ip = "10.0.0.2"
secret = "s2"
coa_server = "127.0.0.1:3799"
[[nas]]
name = "bare"
ip = "10.0.0.3"
secret = "s3"
"#;
        let c = Catalog::build(
            &crate::config::LoadedConfig::from_str(
                cfg,
                crate::config::ConfigSource::BuiltinDemo,
                ".".into(),
            )
            .unwrap(),
        )
        .unwrap();
        type Want<'a> = Option<(&'a str, &'a [u8])>;
        let cases: Vec<(&str, Want)> = vec![
            ("ras1", Some(("10.0.0.1:1700", b"s1"))),
            ("proxy", Some(("10.0.0.2:3799", b"s2"))),
            ("bare", Some(("10.0.0.3:3799", b"s3"))),
            ("proxy/10.9.9.9", Some(("127.0.0.1:3799", b"s2"))),
            ("proxy/bras-7", Some(("127.0.0.1:3799", b"s2"))),
            ("bare/10.9.9.9", None),
            ("gone", None),
        ];
        for (key, want) in cases {
            let want = want.map(|(a, s)| (a.parse::<SocketAddr>().unwrap(), s.to_vec()));
            assert_eq!(route(&c, key), want, "{key}");
        }
    }

    #[test]
    fn answers_are_verified() {
        let sent = encode_request(&req(), 3);
        let answer = |code: u8, ident: u8, attrs: &[u8], secret: &[u8]| {
            let mut a = vec![code, ident, 0, (20 + attrs.len()) as u8];
            a.extend_from_slice(&sent[4..20]);
            a.extend_from_slice(attrs);
            let ra = md5::compute([&a[..], secret].concat()).0;
            a[4..20].copy_from_slice(&ra);
            a
        };
        let cause = [101u8, 6, 0, 0, 1, 247]; // 503 Session Context Not Found
        let cases: Vec<(Vec<u8>, Option<Answer>)> = vec![
            (answer(41, 3, &[], b"s3cret"), Some(Answer::Ack)),
            (
                answer(42, 3, &cause, b"s3cret"),
                Some(Answer::Nak(Some(503))),
            ),
            (answer(42, 3, &[], b"s3cret"), Some(Answer::Nak(None))),
            (answer(41, 4, &[], b"s3cret"), None),
            (answer(41, 3, &[], b"other"), None),
            (answer(2, 3, &[], b"s3cret"), None),
            (vec![41, 3, 0], None),
        ];
        for (i, (a, want)) in cases.into_iter().enumerate() {
            assert_eq!(check_answer(&a, &sent, b"s3cret"), want, "case {i}");
        }
    }
}
