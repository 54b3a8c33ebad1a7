//! API authentication as plain values: one constant-time compare for passwords and tokens,
//! session tokens from the OS CSPRNG, the session table (idle and absolute expiry, a cap,
//! revocation) and the login guard (lockout per client IP and per login name).
//!
//! Time is an argument (`now: Instant`), never read here, so every rule is tested with a
//! fake clock; the HTTP handlers in `lib.rs` pass the real one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most API sessions held at once; a new login beyond it evicts the oldest session.
pub const MAX_SESSIONS: usize = 1024;
/// A session ends this long after its login, however active it is.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Failed logins (from one IP, or for one name) within [`LOGIN_WINDOW`] that lock it out.
pub const LOGIN_MAX_FAILURES: u32 = 10;
/// The window in which failed logins are counted.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// How long a locked IP or name is refused, correct password or not.
pub const LOGIN_LOCKOUT: Duration = Duration::from_secs(60);
/// Most IPs and most names the guard remembers each (memory bound under a spray of names).
const GUARD_MAX_KEYS: usize = 65_536;
/// Bytes of a login name the guard keys on.
const GUARD_NAME_BYTES: usize = 128;
/// Random bytes of a session token (256 bits), written as hex.
const TOKEN_BYTES: usize = 32;

/// Compares two byte strings in time that depends on their lengths only, never on where
/// they differ. Different lengths are never equal (the whole length difference is folded
/// into the result, not a truncation of it).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x);
    }
    std::hint::black_box(diff) == 0
}

/// A new session token: [`TOKEN_BYTES`] from the OS CSPRNG, hex-encoded (unbiased).
pub fn new_token() -> Result<String, getrandom::Error> {
    token_from(getrandom::fill)
}

fn token_from<E>(fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<String, E> {
    let mut b = [0u8; TOKEN_BYTES];
    fill(&mut b)?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    Ok(b.iter()
        .flat_map(|x| {
            [
                HEX[usize::from(x >> 4)] as char,
                HEX[usize::from(x & 15)] as char,
            ]
        })
        .collect())
}

/// How a caller authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    Admin,
    NormalUser,
}

/// An API login session.
#[derive(Debug, Clone)]
pub struct Session {
    pub auth_type: AuthType,
    pub name: String,
    /// The subscriber of a NORMAL_USER session.
    pub user_id: Option<i64>,
    pub ip: IpAddr,
    created: Instant,
    last_seen: Instant,
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Expired,
    Invalid,
}

/// The session table: idle expiry, absolute expiry, at most `cap` sessions.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<String, Session>,
    idle: Duration,
    max_age: Duration,
    cap: usize,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration, cap: usize) -> Self {
        Sessions {
            map: HashMap::new(),
            idle,
            max_age,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) >= self.idle
            || now.saturating_duration_since(s.created) >= self.max_age
    }

    /// Adds a session; expired ones are dropped first, then the oldest while at the cap.
    pub fn insert(
        &mut self,
        token: String,
        auth_type: AuthType,
        name: &str,
        user_id: Option<i64>,
        ip: IpAddr,
        now: Instant,
    ) {
        if self.map.len() >= self.cap {
            let (idle, max_age) = (self.idle, self.max_age);
            self.map.retain(|_, s| {
                now.saturating_duration_since(s.last_seen) < idle
                    && now.saturating_duration_since(s.created) < max_age
            });
        }
        while self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(t, _)| t.clone());
            match oldest {
                Some(t) => self.map.remove(&t),
                None => break,
            };
        }
        self.map.insert(
            token,
            Session {
                auth_type,
                name: name.to_string(),
                user_id,
                ip,
                created: now,
                last_seen: now,
            },
        );
    }

    /// The session of `token` when it is alive and was made for this type, name and IP
    /// (its idle clock restarts); an expired one is removed.
    pub fn check(
        &mut self,
        token: &str,
        auth_type: AuthType,
        name: &str,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Session, SessionError> {
        self.check_with(token, auth_type, Some(name), ip, now)
    }

    /// [`Sessions::check`] for a dialect that sends the token alone (VCS `SID`): the
    /// session's own name is the caller; type, IP and expiry are checked the same way.
    pub fn check_token(
        &mut self,
        token: &str,
        auth_type: AuthType,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Session, SessionError> {
        self.check_with(token, auth_type, None, ip, now)
    }

    fn check_with(
        &mut self,
        token: &str,
        auth_type: AuthType,
        name: Option<&str>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Session, SessionError> {
        let Some(s) = self.map.get(token) else {
            return Err(SessionError::Invalid);
        };
        if self.expired(s, now) {
            self.map.remove(token);
            return Err(SessionError::Expired);
        }
        let s = self.map.get_mut(token).ok_or(SessionError::Invalid)?;
        if s.auth_type != auth_type
            || name.is_some_and(|n| !constant_time_eq(s.name.as_bytes(), n.as_bytes()))
            || s.ip != ip
        {
            return Err(SessionError::Invalid);
        }
        s.last_seen = now;
        Ok(s.clone())
    }

    /// Ends every session of subscriber `user_id` (its password or name changed).
    pub fn revoke_user(&mut self, user_id: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.user_id != Some(user_id));
        before - self.map.len()
    }
}

/// Failed logins of one IP or one name.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Strikes {
    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|t| now < *t)
            .map(|t| t.saturating_duration_since(now))
    }

    fn live(&self, now: Instant) -> bool {
        self.locked(now).is_some()
            || now.saturating_duration_since(self.window_start) < LOGIN_WINDOW
    }

    fn strike(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= LOGIN_WINDOW {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= LOGIN_MAX_FAILURES {
            self.locked_until = Some(now + LOGIN_LOCKOUT);
            self.window_start = now;
            self.failures = 0;
        }
    }
}

/// Lockout of login attempts: [`LOGIN_MAX_FAILURES`] failures within [`LOGIN_WINDOW`] from
/// one IP, or for one name from anywhere, refuse that IP or name for [`LOGIN_LOCKOUT`].
/// (A name lock also refuses its owner; that is the price of stopping a distributed guess.)
#[derive(Debug, Default)]
pub struct LoginGuard {
    by_ip: HashMap<IpAddr, Strikes>,
    by_name: HashMap<(AuthType, String), Strikes>,
}

fn name_key(t: AuthType, name: &str) -> (AuthType, String) {
    let mut end = name.len().min(GUARD_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    (t, name[..end].to_string())
}

fn strike<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Strikes>, key: K, now: Instant) {
    if map.len() >= GUARD_MAX_KEYS && !map.contains_key(&key) {
        map.retain(|_, s| s.live(now));
        if map.len() >= GUARD_MAX_KEYS {
            // Still full within one window: keep the locks, forget the counts.
            map.retain(|_, s| s.locked(now).is_some());
        }
    }
    map.entry(key)
        .or_insert(Strikes {
            window_start: now,
            failures: 0,
            locked_until: None,
        })
        .strike(now);
}

impl LoginGuard {
    /// `Err(time left)` while `ip` or `name` is locked out.
    pub fn check(&self, ip: IpAddr, t: AuthType, name: &str, now: Instant) -> Result<(), Duration> {
        let ip_lock = self.by_ip.get(&ip).and_then(|s| s.locked(now));
        let name_lock = self
            .by_name
            .get(&name_key(t, name))
            .and_then(|s| s.locked(now));
        match ip_lock.max(name_lock) {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }

    /// Counts a wrong password.
    pub fn failed(&mut self, ip: IpAddr, t: AuthType, name: &str, now: Instant) {
        strike(&mut self.by_ip, ip, now);
        strike(&mut self.by_name, name_key(t, name), now);
    }

    /// A correct password clears the name's count (not the IP's: one good account must not
    /// reset an IP that guesses others).
    pub fn succeeded(&mut self, t: AuthType, name: &str) {
        let k = name_key(t, name);
        if self
            .by_name
            .get(&k)
            .is_some_and(|s| s.locked_until.is_none())
        {
            self.by_name.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_table() {
        let nul256 = [b"sys".as_slice(), &[0u8; 256]].concat();
        let nul512 = [b"sys".as_slice(), &[0u8; 512]].concat();
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"sys", b"sys", true),
            (b"", b"", true),
            (b"sys", b"syz", false),
            (b"sys", b"sy", false),
            (b"sys", b"", false),
            (b"", b"\0", false),
            (b"sys", &nul256, false),
            (&nul256, b"sys", false),
            (b"sys", &nul512, false),
            (&nul256, &nul256, true),
            (b"sys\0", b"sys", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(constant_time_eq(a, b), *want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn tokens_are_128_bits_or_more_of_unbiased_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert!(a.len() * 4 >= 128, "{a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        // Every byte maps to exactly two hex digits: no modulo bias.
        let t = token_from(|b: &mut [u8]| {
            b.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i * 8) as u8);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(t.starts_with("0008101820"), "{t}");
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        // A failing CSPRNG is an error, never a fixed token.
        assert_eq!(
            token_from(|_: &mut [u8]| Err("no entropy")),
            Err("no entropy")
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sessions_expire_idle_and_absolute_and_are_capped() {
        let t0 = Instant::now();
        let h = Duration::from_secs(3600);
        let mut s = Sessions::new(h, 12 * h, 3);
        let a = ip("10.0.0.1");
        s.insert("t1".into(), AuthType::Admin, "system", None, a, t0);
        // Used every 30 minutes: idle never reached, but the absolute age is.
        let mut now = t0;
        for _ in 0..23 {
            now += h / 2;
            assert!(s.check("t1", AuthType::Admin, "system", a, now).is_ok());
        }
        now += h / 2;
        assert_eq!(
            s.check("t1", AuthType::Admin, "system", a, now)
                .unwrap_err(),
            SessionError::Expired
        );
        // Idle expiry.
        s.insert("t2".into(), AuthType::Admin, "system", None, a, now);
        assert_eq!(
            s.check("t2", AuthType::Admin, "system", a, now + h)
                .unwrap_err(),
            SessionError::Expired
        );
        // Bound to type, name and IP.
        s.insert("t3".into(), AuthType::NormalUser, "alice", Some(1), a, now);
        for (t, n, i) in [
            (AuthType::Admin, "alice", a),
            (AuthType::NormalUser, "bob", a),
            (AuthType::NormalUser, "alice", ip("10.0.0.2")),
        ] {
            assert_eq!(
                s.check("t3", t, n, i, now).unwrap_err(),
                SessionError::Invalid
            );
        }
        // The cap evicts the oldest.
        for (k, tok) in ["t4", "t5", "t6"].iter().enumerate() {
            s.insert(
                (*tok).into(),
                AuthType::Admin,
                "system",
                None,
                a,
                now + Duration::from_secs(k as u64 + 1),
            );
        }
        assert_eq!(s.len(), 3);
        assert!(s
            .check("t3", AuthType::NormalUser, "alice", a, now)
            .is_err());
        assert!(s.check("t6", AuthType::Admin, "system", a, now).is_ok());
        // The default cap holds.
        let mut big = Sessions::new(h, 12 * h, MAX_SESSIONS);
        for i in 0..MAX_SESSIONS + 50 {
            big.insert(
                format!("x{i}"),
                AuthType::Admin,
                "system",
                None,
                a,
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(big.len(), MAX_SESSIONS);
        assert!(big.check("x0", AuthType::Admin, "system", a, t0).is_err());
    }

    /// A token sent alone (VCS `SID`) names its session's caller; type, IP and expiry are
    /// checked as for a named token.
    #[test]
    fn a_token_alone_is_checked_like_a_named_one() {
        let t0 = Instant::now();
        let h = Duration::from_secs(3600);
        let mut s = Sessions::new(h, 12 * h, 8);
        let a = ip("10.0.0.1");
        s.insert("t1".into(), AuthType::Admin, "system", None, a, t0);
        let got = s.check_token("t1", AuthType::Admin, a, t0).unwrap();
        assert_eq!(got.name, "system");
        for (tok, t, i) in [
            ("t1", AuthType::NormalUser, a),
            ("t1", AuthType::Admin, ip("10.0.0.2")),
            ("nope", AuthType::Admin, a),
        ] {
            assert_eq!(
                s.check_token(tok, t, i, t0).unwrap_err(),
                SessionError::Invalid
            );
        }
        assert_eq!(
            s.check_token("t1", AuthType::Admin, a, t0 + h).unwrap_err(),
            SessionError::Expired
        );
        assert_eq!(
            s.check_token("t1", AuthType::Admin, a, t0).unwrap_err(),
            SessionError::Invalid,
            "an expired session is gone"
        );
    }

    #[test]
    fn password_change_revokes_the_users_sessions() {
        let t0 = Instant::now();
        let h = Duration::from_secs(3600);
        let mut s = Sessions::new(h, 12 * h, 10);
        let a = ip("10.0.0.1");
        s.insert("u1".into(), AuthType::NormalUser, "alice", Some(1), a, t0);
        s.insert("u2".into(), AuthType::NormalUser, "alice", Some(1), a, t0);
        s.insert("b".into(), AuthType::NormalUser, "bob", Some(2), a, t0);
        s.insert("adm".into(), AuthType::Admin, "system", None, a, t0);
        assert_eq!(s.revoke_user(1), 2);
        assert!(s.check("u1", AuthType::NormalUser, "alice", a, t0).is_err());
        assert!(s.check("b", AuthType::NormalUser, "bob", a, t0).is_ok());
        assert!(s.check("adm", AuthType::Admin, "system", a, t0).is_ok());
    }

    #[test]
    fn lockout_per_ip_and_per_name_with_a_fake_clock() {
        let t0 = Instant::now();
        let mut g = LoginGuard::default();
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        let s = Duration::from_secs(1);
        // Nine failures: still allowed.
        for i in 0..LOGIN_MAX_FAILURES - 1 {
            assert!(g.check(a, AuthType::Admin, "system", t0 + s * i).is_ok());
            g.failed(a, AuthType::Admin, "system", t0 + s * i);
        }
        assert!(g.check(a, AuthType::Admin, "system", t0 + s * 9).is_ok());
        g.failed(a, AuthType::Admin, "system", t0 + s * 9);
        // The tenth locks the IP (any name) and the name (any IP) for a minute.
        let now = t0 + s * 10;
        assert!(g.check(a, AuthType::NormalUser, "alice", now).is_err());
        assert!(g.check(b, AuthType::Admin, "system", now).is_err());
        assert!(g.check(b, AuthType::NormalUser, "alice", now).is_ok());
        let left = g.check(a, AuthType::Admin, "system", now).unwrap_err();
        assert!(
            left <= LOGIN_LOCKOUT && left > LOGIN_LOCKOUT - s * 2,
            "{left:?}"
        );
        assert!(g
            .check(a, AuthType::Admin, "system", t0 + s * 9 + LOGIN_LOCKOUT)
            .is_ok());
        // Failures spread over more than the window never lock.
        for i in 0..3 * LOGIN_MAX_FAILURES {
            let t = t0 + LOGIN_WINDOW * 3 + (LOGIN_WINDOW / (LOGIN_MAX_FAILURES - 2)) * i;
            assert!(g.check(c, AuthType::Admin, "x", t).is_ok(), "{i}");
            g.failed(c, AuthType::Admin, "x", t);
        }
        // Many names from one IP: the IP locks; a spray of names stays bounded.
        let d = ip("10.0.0.4");
        for i in 0..(GUARD_MAX_KEYS + 10) {
            g.failed(d, AuthType::NormalUser, &format!("n{i}"), t0);
        }
        assert!(g.check(d, AuthType::NormalUser, "fresh", t0).is_err());
        assert!(g.by_name.len() <= GUARD_MAX_KEYS);
        // A correct password clears its name's count.
        let e = ip("10.0.0.5");
        for _ in 0..LOGIN_MAX_FAILURES - 1 {
            g.failed(e, AuthType::NormalUser, "bob", t0);
        }
        g.succeeded(AuthType::NormalUser, "bob");
        g.failed(ip("10.0.0.6"), AuthType::NormalUser, "bob", t0);
        assert!(g
            .check(ip("10.0.0.7"), AuthType::NormalUser, "bob", t0)
            .is_ok());
    }
}
