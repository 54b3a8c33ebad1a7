//! The authorization listener (`[radius] auth_listen`): a thread of its own with a UDP
//! socket of its own, spawned by `serve::run`, so Access-Requests never wait for the
//! accounting batch commit and never slow it down.
//!
//! Each datagram: the NAS by source IP (the same `[[nas]]` lookup as accounting; others are
//! dropped and counted) → [`auth::decode_access_request`] → the subscriber from the ledger
//! through a read-only connection ([`AuthReader`]: the committed credit, password and
//! group) and its open sessions from the core's published [`Live`] → [`auth::decide`] →
//! [`auth::write_reply`]. A Status-Server (RFC 5997, Message-Authenticator required) is
//! answered with an Access-Accept. The ledger is read rather than state the core publishes because
//! the committed row is the truth (an acknowledged interim is in it) and the core then has
//! nothing more to do per commit; the lookup is one indexed read.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, ChargeRule, Group, Nas};
use crate::ledger::{AuthReader, LedgerError};
use crate::radius::auth::{self, ClientStatus, Decision, Subscriber};
use crate::radius::codec::{self, DecodeError};
use crate::serve::Live;

/// Counts of the authorization listener.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Status-Server (RFC 5997) answered.
    pub status_server: AtomicU64,
    pub dropped_unknown_nas: AtomicU64,
    /// Malformed, wrong or missing Message-Authenticator: silently discarded.
    pub dropped_bad: AtomicU64,
    /// The ledger could not be read: not answered (the NAS retries).
    pub ledger_errors: AtomicU64,
}

/// What the authorization thread needs of the catalog (owned: the thread outlives no
/// borrow of the core's catalog).
pub struct AuthCatalog {
    pub tz: chrono_tz::Tz,
    pub nas: Vec<Nas>,
    pub groups: Vec<Group>,
    pub charge_rules: Vec<ChargeRule>,
}

impl AuthCatalog {
    pub fn of(c: &Catalog) -> Self {
        AuthCatalog {
            tz: c.tz,
            nas: c.nas.clone(),
            groups: c.groups.clone(),
            charge_rules: c.charge_rules.clone(),
        }
    }
}

/// Binds the authorization socket.
pub fn bind(addr: &str) -> std::io::Result<UdpSocket> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other("not an address:port"))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&sa.into())?;
    Ok(sock.into())
}

/// The authorization thread's view of the config, replaced when the core reloads it
/// (`kill -HUP`): each request reads the current one.
pub struct AuthConfig(std::sync::RwLock<Arc<AuthCatalog>>);

impl AuthConfig {
    pub fn new(c: &Catalog) -> Arc<AuthConfig> {
        Arc::new(AuthConfig(std::sync::RwLock::new(Arc::new(
            AuthCatalog::of(c),
        ))))
    }

    /// Takes the NASes, groups and charge rules of a reloaded config.
    pub fn set(&self, c: &Catalog) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(AuthCatalog::of(c));
    }

    fn get(&self) -> Arc<AuthCatalog> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts the authorization thread on `socket` (the ledger of `data_dir` read-only); it
/// stops at `shutdown`.
pub fn spawn(
    config: Arc<AuthConfig>,
    data_dir: &std::path::Path,
    socket: UdpSocket,
    live: Arc<Live>,
    shutdown: Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, Arc<AuthCounters>), LedgerError> {
    let reader = AuthReader::open(data_dir)?;
    let counters = Arc::new(AuthCounters::default());
    let c2 = counters.clone();
    let h = std::thread::Builder::new()
        .name("radius-auth".into())
        .spawn(move || serve_auth(&config, &reader, &socket, &live, &c2, &shutdown))
        .map_err(|source| LedgerError::Io {
            path: "radius-auth thread".into(),
            source,
        })?;
    Ok((h, counters))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn serve_auth(
    config: &AuthConfig,
    reader: &AuthReader,
    socket: &UdpSocket,
    live: &Live,
    counters: &AuthCounters,
    shutdown: &AtomicBool,
) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(4096);
    let mut last_log: Option<Instant> = None;
    let mut last_reason = "";
    while !shutdown.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        let cat = config.get();
        match answer(&cat, reader, live, &buf[..n], src, now_secs(), &mut out) {
            Ok(Some(answered)) => {
                let _ = socket.send_to(&out, src);
                let c = match answered {
                    Answered::Accept => &counters.accepted,
                    Answered::Reject => &counters.rejected,
                    Answered::Status => &counters.status_server,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(Dropped::UnknownNas) => {
                counters.dropped_unknown_nas.fetch_add(1, Ordering::Relaxed);
                last_reason = "unknown NAS";
            }
            Err(Dropped::Bad(r)) => {
                counters.dropped_bad.fetch_add(1, Ordering::Relaxed);
                last_reason = r.as_str();
            }
            Err(Dropped::Ledger(e)) => {
                counters.ledger_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "authorization: cannot read the ledger; request not answered");
            }
        }
        if !last_reason.is_empty()
            && last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                unknown_nas = counters.dropped_unknown_nas.load(Ordering::Relaxed),
                bad = counters.dropped_bad.load(Ordering::Relaxed),
                last_reason,
                last_source = %src,
                "dropped Access-Requests (logged at most every 10 s)"
            );
            last_log = Some(Instant::now());
            last_reason = "";
        }
    }
}

enum Dropped {
    UnknownNas,
    Bad(auth::AuthDropReason),
    Ledger(LedgerError),
}

/// What was answered.
enum Answered {
    Accept,
    Reject,
    Status,
}

/// Writes the reply to one datagram into `out`; what it is, when there is one.
fn answer(
    cat: &AuthCatalog,
    reader: &AuthReader,
    live: &Live,
    datagram: &[u8],
    src: SocketAddr,
    now: i64,
    out: &mut Vec<u8>,
) -> Result<Option<Answered>, Dropped> {
    let nas = cat
        .nas
        .iter()
        .find(|n| n.ip == src.ip())
        .ok_or(Dropped::UnknownNas)?;
    if datagram.first() == Some(&codec::CODE_STATUS_SERVER) {
        // RFC 5997 on the authorization port: "alive?", answered with an Access-Accept.
        codec::decode_status_server(datagram, &nas.secret).map_err(|e| {
            Dropped::Bad(match e {
                DecodeError::MissingMessageAuthenticator => {
                    auth::AuthDropReason::MissingMessageAuthenticator
                }
                DecodeError::BadMessageAuthenticator => {
                    auth::AuthDropReason::BadMessageAuthenticator
                }
                DecodeError::Truncated => auth::AuthDropReason::Truncated,
                DecodeError::BadLength => auth::AuthDropReason::BadLength,
                _ => auth::AuthDropReason::BadAttribute,
            })
        })?;
        auth::write_status_reply(out, datagram, &nas.secret);
        return Ok(Some(Answered::Status));
    }
    let req = auth::decode_access_request(datagram, &nas.secret, nas.require_message_authenticator)
        .map_err(Dropped::Bad)?;
    let username = String::from_utf8_lossy(req.user_name);
    let row = if username.is_empty() {
        None
    } else {
        reader.user(&username).map_err(Dropped::Ledger)?
    };
    // Sessions of the client, whichever of its radius accounts opened them.
    let open_sessions = row.as_ref().map_or(0, |u| {
        let online = live.online.read().unwrap_or_else(|e| e.into_inner());
        online.get(&u.user_id).map_or(0, Vec::len)
    });
    let sub = row.as_ref().map(|u| Subscriber {
        password: u.password.as_deref(),
        credit: u.credit,
        quota_left: u.quota_left,
        group: cat.groups.iter().find(|g| g.name == u.group_name),
        // Locked and archived clients are refused (DESIGN.md "RADIUS authorization").
        status: if u.archived {
            ClientStatus::Archived
        } else if u.lock_reason.is_some() {
            ClientStatus::Locked
        } else {
            ClientStatus::Active
        },
        open_sessions,
    });
    let interim = nas
        .interim_interval_secs
        .unwrap_or(300)
        .min(u32::MAX as u64) as u32;
    let decision = auth::decide(
        &req,
        &nas.secret,
        sub.as_ref(),
        &cat.charge_rules,
        &cat.tz,
        interim,
        now,
    );
    if let Decision::Reject(r) = decision {
        tracing::debug!(user = %username, nas = %nas.name, reason = r.message(), "Access-Reject");
    }
    auth::write_reply(out, &req, &decision, &nas.secret);
    Ok(Some(match decision {
        Decision::Accept { .. } => Answered::Accept,
        Decision::Reject(_) => Answered::Reject,
    }))
}
