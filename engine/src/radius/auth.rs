//! RADIUS authorization (RFC 2865) as pure functions: decode and verify an Access-Request,
//! check its PAP or CHAP credentials, decide Accept or Reject for a subscriber, and build
//! the reply. No I/O and no clock: the time is an argument; the thin shell that owns the
//! socket and reads the ledger is [`crate::radius::auth_server`].
//!
//! BlastRADIUS (CVE-2024-3596): a Message-Authenticator (RFC 3579 §3.2, HMAC-MD5 over the
//! packet with its own value zeroed) is checked whenever a request carries one, is required
//! when the NAS entry says `require_message_authenticator` (the default), and is the first
//! attribute of every Access-Accept/Reject we send. Every `Proxy-State` of the request is
//! copied into the reply unmodified and in order (RFC 2865 §5.33).
//!
//! Replies are encoded here by hand rather than with radius-rs: the Message-Authenticator
//! has to be computed over the final packet with the Request Authenticator in place before
//! the Response Authenticator, which radius-rs does not do, and the hot path stays free of
//! per-attribute allocations. The end-to-end tests check every reply with radius-rs.

use std::net::Ipv4Addr;

use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::catalog::{ChargeRule, Group};
use crate::radius::codec::{hmac_md5, ATTR_MESSAGE_AUTHENTICATOR, ATTR_PROXY_STATE};

pub const CODE_ACCESS_REQUEST: u8 = 1;
pub const CODE_ACCESS_ACCEPT: u8 = 2;
pub const CODE_ACCESS_REJECT: u8 = 3;

pub const ATTR_USER_NAME: u8 = 1;
pub const ATTR_USER_PASSWORD: u8 = 2;
pub const ATTR_CHAP_PASSWORD: u8 = 3;
pub const ATTR_NAS_IP_ADDRESS: u8 = 4;
pub const ATTR_REPLY_MESSAGE: u8 = 18;
pub const ATTR_SESSION_TIMEOUT: u8 = 27;
pub const ATTR_CHAP_CHALLENGE: u8 = 60;
pub const ATTR_ACCT_INTERIM_INTERVAL: u8 = 85;

/// Value type of a dictionary attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    Text,
    Integer,
    IpAddr,
}

/// The attributes a `[[group]] reply` may name (RFC 2865 / RFC 2869 string, integer and
/// ipaddr attributes a server sends in an Access-Accept). Session-Timeout and
/// Acct-Interim-Interval are not here: ratel computes them.
pub const REPLY_DICTIONARY: &[(&str, u8, AttrType)] = &[
    ("Service-Type", 6, AttrType::Integer),
    ("Framed-Protocol", 7, AttrType::Integer),
    ("Framed-IP-Address", 8, AttrType::IpAddr),
    ("Framed-IP-Netmask", 9, AttrType::IpAddr),
    ("Framed-Routing", 10, AttrType::Integer),
    ("Filter-Id", 11, AttrType::Text),
    ("Framed-MTU", 12, AttrType::Integer),
    ("Framed-Compression", 13, AttrType::Integer),
    ("Login-IP-Host", 14, AttrType::IpAddr),
    ("Login-Service", 15, AttrType::Integer),
    ("Login-TCP-Port", 16, AttrType::Integer),
    ("Reply-Message", 18, AttrType::Text),
    ("Callback-Number", 19, AttrType::Text),
    ("Callback-Id", 20, AttrType::Text),
    ("Framed-Route", 22, AttrType::Text),
    ("Class", 25, AttrType::Text),
    ("Idle-Timeout", 28, AttrType::Integer),
    ("Termination-Action", 29, AttrType::Integer),
    ("Port-Limit", 62, AttrType::Integer),
    ("Framed-Pool", 88, AttrType::Text),
];

/// Encodes one `[[group]] reply` entry into (type, value bytes), or says why it cannot be.
pub fn encode_reply_attribute(
    name: &str,
    value: &crate::config::ReplyValue,
) -> Result<(u8, Vec<u8>), String> {
    use crate::config::ReplyValue;
    let Some(&(_, typ, kind)) = REPLY_DICTIONARY.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!(
            "{name:?} is not a reply attribute ratel knows (one of {})",
            REPLY_DICTIONARY
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    match (kind, value) {
        (AttrType::Text, ReplyValue::Text(s)) if !s.is_empty() && s.len() <= 253 => {
            Ok((typ, s.as_bytes().to_vec()))
        }
        (AttrType::Text, _) => Err(format!("{name}: a string of 1..=253 bytes expected")),
        (AttrType::Integer, ReplyValue::Integer(i)) => u32::try_from(*i)
            .map(|v| (typ, v.to_be_bytes().to_vec()))
            .map_err(|_| format!("{name}: {i} is outside 0..=4294967295")),
        (AttrType::Integer, _) => Err(format!("{name}: an integer expected")),
        (AttrType::IpAddr, ReplyValue::Text(s)) => s
            .parse::<Ipv4Addr>()
            .map(|ip| (typ, ip.octets().to_vec()))
            .map_err(|_| format!("{name}: {s:?} is not an IPv4 address")),
        (AttrType::IpAddr, _) => Err(format!("{name}: an IPv4 address string expected")),
    }
}

/// Why an Access-Request was dropped without an answer (RFC 2865 §3: silently discarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDropReason {
    Truncated,
    BadLength,
    NotAccessRequest(u8),
    BadAttribute,
    BadMessageAuthenticator,
    MissingMessageAuthenticator,
}

impl AuthDropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthDropReason::Truncated => "truncated",
            AuthDropReason::BadLength => "bad length",
            AuthDropReason::NotAccessRequest(_) => "not an Access-Request",
            AuthDropReason::BadAttribute => "malformed attribute",
            AuthDropReason::BadMessageAuthenticator => "wrong Message-Authenticator",
            AuthDropReason::MissingMessageAuthenticator => {
                "no Message-Authenticator (required for this NAS)"
            }
        }
    }
}

/// The credentials an Access-Request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// The hidden User-Password (RFC 2865 §5.2).
    Pap(&'a [u8]),
    /// CHAP-Password (ident + 16-octet response) and the challenge (CHAP-Challenge, else
    /// the Request Authenticator).
    Chap {
        ident: u8,
        response: &'a [u8],
        challenge: &'a [u8],
    },
    None,
}

/// A decoded, verified Access-Request borrowing the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// The exact `Length` bytes of the packet (the reply copies its Proxy-States).
    pub packet: &'a [u8],
    pub identifier: u8,
    pub authenticator: &'a [u8; 16],
    pub user_name: &'a [u8],
    pub credentials: Credentials<'a>,
    pub nas_ip: Option<Ipv4Addr>,
    pub message_authenticator: bool,
}

/// The attributes of a framed packet as (type, value, offset of the value), in order.
fn attributes(pkt: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8], usize), AuthDropReason>> {
    let mut pos = 20;
    std::iter::from_fn(move || {
        if pos >= pkt.len() {
            return None;
        }
        if pos + 2 > pkt.len() {
            pos = pkt.len();
            return Some(Err(AuthDropReason::BadAttribute));
        }
        let alen = pkt[pos + 1] as usize;
        if alen < 2 || pos + alen > pkt.len() {
            pos = pkt.len();
            return Some(Err(AuthDropReason::BadAttribute));
        }
        let (typ, at) = (pkt[pos], pos + 2);
        pos += alen;
        Some(Ok((typ, &pkt[at..pos], at)))
    })
}

/// Decodes an Access-Request datagram and verifies its Message-Authenticator against
/// `secret` (required when `require_message_authenticator`). Its Request Authenticator is
/// random, so without a Message-Authenticator nothing but the password proves the sender.
pub fn decode_access_request<'a>(
    datagram: &'a [u8],
    secret: &[u8],
    require_message_authenticator: bool,
) -> Result<AccessRequest<'a>, AuthDropReason> {
    if datagram.len() < 20 {
        return Err(AuthDropReason::Truncated);
    }
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if !(20..=4096).contains(&len) {
        return Err(AuthDropReason::BadLength);
    }
    let pkt = datagram.get(..len).ok_or(AuthDropReason::Truncated)?;
    if pkt[0] != CODE_ACCESS_REQUEST {
        return Err(AuthDropReason::NotAccessRequest(pkt[0]));
    }
    let authenticator: &[u8; 16] = pkt[4..20].try_into().expect("16 bytes");
    let (mut user_name, mut pap, mut chap, mut challenge, mut nas_ip) =
        (&pkt[..0], None::<&[u8]>, None::<&[u8]>, None::<&[u8]>, None);
    let mut msg_auth = None;
    for a in attributes(pkt) {
        let (typ, v, at) = a?;
        match typ {
            ATTR_USER_NAME => user_name = v,
            ATTR_USER_PASSWORD => pap = Some(v),
            ATTR_CHAP_PASSWORD => chap = Some(v),
            ATTR_CHAP_CHALLENGE => challenge = Some(v),
            ATTR_NAS_IP_ADDRESS => {
                nas_ip = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
            }
            ATTR_MESSAGE_AUTHENTICATOR => {
                if v.len() != 16 || msg_auth.is_some() {
                    return Err(AuthDropReason::BadMessageAuthenticator);
                }
                msg_auth = Some(at);
            }
            _ => {}
        }
    }
    match msg_auth {
        Some(at) => {
            let mac = hmac_md5(secret, &[&pkt[..at], &[0u8; 16], &pkt[at + 16..]]);
            if !constant_time_eq(&mac, &pkt[at..at + 16]) {
                return Err(AuthDropReason::BadMessageAuthenticator);
            }
        }
        None if require_message_authenticator => {
            return Err(AuthDropReason::MissingMessageAuthenticator)
        }
        None => {}
    }
    let credentials = match (pap, chap) {
        (Some(p), None) => Credentials::Pap(p),
        (None, Some(c)) if c.len() == 17 => Credentials::Chap {
            ident: c[0],
            response: &c[1..],
            challenge: challenge.unwrap_or(authenticator),
        },
        _ => Credentials::None,
    };
    Ok(AccessRequest {
        packet: pkt,
        identifier: pkt[1],
        authenticator,
        user_name,
        credentials,
        nas_ip,
        message_authenticator: msg_auth.is_some(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reveals a hidden User-Password (RFC 2865 §5.2): 16..=128 octets, a multiple of 16;
/// `c(i) = p(i) xor MD5(secret + c(i-1))` with `c(0)` the Request Authenticator. Trailing
/// NUL padding is removed. None when the length is not a valid hidden length.
pub fn reveal_pap_password(
    hidden: &[u8],
    secret: &[u8],
    authenticator: &[u8; 16],
) -> Option<Vec<u8>> {
    if hidden.is_empty() || hidden.len() > 128 || !hidden.len().is_multiple_of(16) {
        return None;
    }
    let mut out = Vec::with_capacity(hidden.len());
    let mut prev: &[u8] = authenticator;
    for chunk in hidden.chunks(16) {
        let mut ctx = md5::Context::new();
        ctx.consume(secret);
        ctx.consume(prev);
        let b = ctx.compute().0;
        out.extend(chunk.iter().zip(b).map(|(c, k)| c ^ k));
        prev = chunk;
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    Some(out)
}

/// Whether the request's credentials prove `password`.
pub fn credentials_match(
    creds: &Credentials<'_>,
    password: &[u8],
    secret: &[u8],
    authenticator: &[u8; 16],
) -> bool {
    match *creds {
        Credentials::Pap(hidden) => reveal_pap_password(hidden, secret, authenticator)
            .is_some_and(|p| constant_time_eq(&p, password)),
        Credentials::Chap {
            ident,
            response,
            challenge,
        } => {
            let mut ctx = md5::Context::new();
            ctx.consume([ident]);
            ctx.consume(password);
            ctx.consume(challenge);
            constant_time_eq(&ctx.compute().0, response)
        }
        Credentials::None => false,
    }
}

/// A client's status (DESIGN.md Part 2 "The domain model"): `Locked` is read from the
/// ledger's `users.lock_reason`; `Archived` comes with another issue. Both are refused
/// as [`RejectReason::NotActive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStatus {
    Active,
    Locked,
    Archived,
}

/// What the authorization needs to know of the subscriber a User-Name names.
#[derive(Debug, Clone)]
pub struct Subscriber<'a> {
    pub password: Option<&'a str>,
    /// The committed credit.
    pub credit: Decimal,
    /// The subscriber's group (None: its group is not configured).
    pub group: Option<&'a Group>,
    pub status: ClientStatus,
    /// Sessions of this subscriber open now (the core's published `Live`).
    pub open_sessions: usize,
    /// An active package holds quota now: a reason to accept at zero credit.
    pub quota_left: bool,
}

/// Why an Access-Request is rejected (the Reply-Message says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    UnknownUser,
    WrongPassword,
    /// Neither User-Password nor a well-formed CHAP-Password.
    NoCredentials,
    NotActive,
    /// The subscriber's group is not in the config.
    NoGroup,
    /// Credit <= 0 (packages and their quota do not exist yet), or too little credit for
    /// one second at the price in force.
    NoCredit,
    TooManySessions,
}

impl RejectReason {
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::UnknownUser => "unknown user",
            RejectReason::WrongPassword => "wrong password",
            RejectReason::NoCredentials => "no User-Password or CHAP-Password",
            RejectReason::NotActive => "client not active",
            RejectReason::NoGroup => "the client's group is not configured",
            RejectReason::NoCredit => "no credit",
            RejectReason::TooManySessions => "too many sessions",
        }
    }
}

/// The answer to an Access-Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'g> {
    Accept {
        session_timeout_secs: u32,
        interim_interval_secs: u32,
        /// The group's `reply` attributes.
        reply: &'g [(u8, Vec<u8>)],
    },
    Reject(RejectReason),
}

/// Decides an Access-Request: the checks in DESIGN.md's order (unknown user, wrong
/// password, not active, no credit, too many sessions), then the Session-Timeout the
/// credit buys from `now` under the group's charge rules ([`crate::rating::session_timeout_secs`]);
/// 0 seconds is a rejection for no credit.
#[allow(clippy::too_many_arguments)]
pub fn decide<'g>(
    req: &AccessRequest<'_>,
    secret: &[u8],
    user: Option<&Subscriber<'g>>,
    rules: &[ChargeRule],
    tz: &Tz,
    interim_interval_secs: u32,
    now: i64,
) -> Decision<'g> {
    let Some(user) = user else {
        return Decision::Reject(RejectReason::UnknownUser);
    };
    if req.credentials == Credentials::None {
        return Decision::Reject(RejectReason::NoCredentials);
    }
    let password = user.password.unwrap_or("");
    if user.password.is_none()
        || !credentials_match(
            &req.credentials,
            password.as_bytes(),
            secret,
            req.authenticator,
        )
    {
        return Decision::Reject(RejectReason::WrongPassword);
    }
    if user.status != ClientStatus::Active {
        return Decision::Reject(RejectReason::NotActive);
    }
    let Some(group) = user.group else {
        return Decision::Reject(RejectReason::NoGroup);
    };
    if user.credit <= Decimal::ZERO && !user.quota_left {
        return Decision::Reject(RejectReason::NoCredit);
    }
    if group
        .max_sessions
        .is_some_and(|m| user.open_sessions >= m as usize)
    {
        return Decision::Reject(RejectReason::TooManySessions);
    }
    // At zero credit with package quota left, the session may last while time costs
    // nothing: the smallest positive credit buys exactly the free seconds from now.
    let credit = if user.credit <= Decimal::ZERO {
        Decimal::new(1, 28)
    } else {
        user.credit
    };
    let s =
        crate::rating::session_timeout_secs(group, rules, tz, now, credit, group.max_session_secs);
    if s == 0 {
        return Decision::Reject(RejectReason::NoCredit);
    }
    Decision::Accept {
        session_timeout_secs: s,
        interim_interval_secs,
        reply: &group.reply,
    }
}

fn push_attr(out: &mut Vec<u8>, typ: u8, v: &[u8]) {
    out.push(typ);
    out.push((v.len() + 2) as u8);
    out.extend_from_slice(v);
}

/// Writes into `out` (cleared first) the Access-Accept or Access-Reject for `req`: the
/// Message-Authenticator first, Reply-Message (reject) or Session-Timeout,
/// Acct-Interim-Interval and the group's reply attributes (accept), every Proxy-State of
/// the request in order; then the Message-Authenticator (HMAC-MD5 with the Request
/// Authenticator in place, RFC 3579 §3.2) and the Response Authenticator
/// MD5(Code + Identifier + Length + Request Authenticator + attributes + secret).
pub fn write_reply(
    out: &mut Vec<u8>,
    req: &AccessRequest<'_>,
    decision: &Decision<'_>,
    secret: &[u8],
) {
    let code = match decision {
        Decision::Accept { .. } => CODE_ACCESS_ACCEPT,
        Decision::Reject(_) => CODE_ACCESS_REJECT,
    };
    write_packet(out, req, code, secret, |out| match decision {
        Decision::Accept {
            session_timeout_secs,
            interim_interval_secs,
            reply,
        } => {
            push_attr(
                out,
                ATTR_SESSION_TIMEOUT,
                &session_timeout_secs.to_be_bytes(),
            );
            push_attr(
                out,
                ATTR_ACCT_INTERIM_INTERVAL,
                &interim_interval_secs.to_be_bytes(),
            );
            for (t, v) in reply.iter() {
                push_attr(out, *t, v);
            }
        }
        Decision::Reject(r) => push_attr(out, ATTR_REPLY_MESSAGE, r.message().as_bytes()),
    });
}

/// Writes into `out` the Access-Accept answering a Status-Server (RFC 5997 §3) received on
/// the authorization port: Message-Authenticator and the request's Proxy-States. `request`
/// must have passed `codec::decode_status_server` (framed, Message-Authenticator valid).
pub fn write_status_reply(out: &mut Vec<u8>, request: &[u8], secret: &[u8]) {
    let len = (u16::from_be_bytes([request[2], request[3]]) as usize).min(request.len());
    let pkt = &request[..len];
    let req = AccessRequest {
        packet: pkt,
        identifier: pkt[1],
        authenticator: pkt[4..20].try_into().expect("16 bytes"),
        user_name: &[],
        credentials: Credentials::None,
        nas_ip: None,
        message_authenticator: true,
    };
    write_packet(out, &req, CODE_ACCESS_ACCEPT, secret, |_| {});
}

/// A reply to `req`: `code`, the Message-Authenticator first, `body`'s attributes, the
/// request's Proxy-States; then both authenticators.
fn write_packet(
    out: &mut Vec<u8>,
    req: &AccessRequest<'_>,
    code: u8,
    secret: &[u8],
    body: impl FnOnce(&mut Vec<u8>),
) {
    out.clear();
    out.extend_from_slice(&[code, req.identifier, 0, 0]);
    out.extend_from_slice(req.authenticator);
    push_attr(out, ATTR_MESSAGE_AUTHENTICATOR, &[0u8; 16]);
    body(out);
    // A request that decoded has well-formed attributes.
    for (typ, v, _) in attributes(req.packet).map_while(Result::ok) {
        if typ == ATTR_PROXY_STATE && out.len() + v.len() + 2 <= 4096 {
            push_attr(out, ATTR_PROXY_STATE, v);
        }
    }
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let mac = hmac_md5(secret, &[out]);
    out[22..38].copy_from_slice(&mac);
    let mut ctx = md5::Context::new();
    ctx.consume(&out[..]);
    ctx.consume(secret);
    let auth = ctx.compute().0;
    out[4..20].copy_from_slice(&auth);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::config::{ConfigSource, LoadedConfig, ReplyValue};

    const SECRET: &[u8] = b"s3cret";

    /// A hand-made Access-Request: `attrs` in order; a Message-Authenticator (attribute 80
    /// with any 16-byte value) is filled in with the HMAC when `sign` is set.
    fn request(auth: [u8; 16], attrs: &[(u8, Vec<u8>)], sign: bool) -> Vec<u8> {
        let mut p = vec![1u8, 42, 0, 0];
        p.extend_from_slice(&auth);
        let mut at = None;
        for (t, v) in attrs {
            if *t == 80 {
                at = Some(p.len() + 2);
            }
            p.push(*t);
            p.push(v.len() as u8 + 2);
            p.extend_from_slice(v);
        }
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        if let (Some(at), true) = (at, sign) {
            p[at..at + 16].fill(0);
            let mac = hmac_md5(SECRET, &[&p]);
            p[at..at + 16].copy_from_slice(&mac);
        }
        p
    }

    /// RFC 2865 §5.2 hiding, written out independently of `reveal_pap_password`.
    fn hide(password: &[u8], auth: &[u8; 16]) -> Vec<u8> {
        let mut p = password.to_vec();
        while p.is_empty() || !p.len().is_multiple_of(16) {
            p.push(0);
        }
        let mut out = Vec::new();
        let mut prev = auth.to_vec();
        for chunk in p.chunks(16) {
            let b = md5::compute([SECRET, &prev[..]].concat()).0;
            let c: Vec<u8> = chunk.iter().zip(b).map(|(x, y)| x ^ y).collect();
            out.extend_from_slice(&c);
            prev = c;
        }
        out
    }

    #[test]
    fn pap_passwords_of_every_length_reveal() {
        let auth = [9u8; 16];
        for n in [1usize, 15, 16, 17, 31, 32, 100, 128] {
            let pw: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let hidden = hide(&pw, &auth);
            assert_eq!(
                reveal_pap_password(&hidden, SECRET, &auth),
                Some(pw.clone()),
                "len {n}"
            );
            assert!(credentials_match(
                &Credentials::Pap(&hidden),
                &pw,
                SECRET,
                &auth
            ));
            assert!(!credentials_match(
                &Credentials::Pap(&hidden),
                b"other",
                SECRET,
                &auth
            ));
        }
        assert_eq!(reveal_pap_password(&[0u8; 15], SECRET, &auth), None);
        assert_eq!(reveal_pap_password(&[0u8; 144], SECRET, &auth), None);
        assert_eq!(reveal_pap_password(&[], SECRET, &auth), None);
    }

    #[test]
    fn chap_uses_the_challenge_attribute_else_the_authenticator() {
        let auth = [3u8; 16];
        let resp = |id: u8, pw: &[u8], ch: &[u8]| md5::compute([&[id][..], pw, ch].concat()).0;
        // Challenge from the Request Authenticator.
        let r = resp(7, b"pw", &auth);
        let p = request(
            auth,
            &[(1, b"alice".to_vec()), (3, [&[7u8][..], &r].concat())],
            false,
        );
        let req = decode_access_request(&p, SECRET, false).unwrap();
        assert!(credentials_match(
            &req.credentials,
            b"pw",
            SECRET,
            req.authenticator
        ));
        assert!(!credentials_match(
            &req.credentials,
            b"px",
            SECRET,
            req.authenticator
        ));
        // Challenge from CHAP-Challenge.
        let ch = b"0123456789abcdef0123".to_vec();
        let r = resp(8, b"pw", &ch);
        let p = request(
            auth,
            &[
                (1, b"alice".to_vec()),
                (60, ch),
                (3, [&[8u8][..], &r].concat()),
            ],
            false,
        );
        let req = decode_access_request(&p, SECRET, false).unwrap();
        assert!(credentials_match(
            &req.credentials,
            b"pw",
            SECRET,
            req.authenticator
        ));
        // A malformed CHAP-Password is no credentials.
        let p = request(auth, &[(1, b"alice".to_vec()), (3, vec![1, 2, 3])], false);
        let req = decode_access_request(&p, SECRET, false).unwrap();
        assert_eq!(req.credentials, Credentials::None);
    }

    #[test]
    fn message_authenticator_checked_and_required() {
        let auth = [5u8; 16];
        let base = vec![(1u8, b"alice".to_vec()), (2, hide(b"pw", &auth))];
        let signed = request(auth, &[&base[..], &[(80, vec![0; 16])]].concat(), true);
        let unsigned = request(auth, &base, false);
        let mut wrong = signed.clone();
        let n = wrong.len();
        wrong[n - 1] ^= 1;
        let short_ma = request(auth, &[&base[..], &[(80, vec![0; 15])]].concat(), false);
        let cases: Vec<(&[u8], bool, Result<bool, AuthDropReason>)> = vec![
            (&signed, true, Ok(true)),
            (&signed, false, Ok(true)),
            (&unsigned, false, Ok(false)),
            (
                &unsigned,
                true,
                Err(AuthDropReason::MissingMessageAuthenticator),
            ),
            (&wrong, false, Err(AuthDropReason::BadMessageAuthenticator)),
            (&wrong, true, Err(AuthDropReason::BadMessageAuthenticator)),
            (
                &short_ma,
                false,
                Err(AuthDropReason::BadMessageAuthenticator),
            ),
        ];
        for (i, (p, require, want)) in cases.into_iter().enumerate() {
            let got = decode_access_request(p, SECRET, require).map(|r| r.message_authenticator);
            assert_eq!(got, want, "case {i}");
        }
        // Another secret fails the HMAC.
        assert_eq!(
            decode_access_request(&signed, b"other", true),
            Err(AuthDropReason::BadMessageAuthenticator)
        );
    }

    #[test]
    fn hostile_datagrams_are_dropped() {
        let auth = [1u8; 16];
        let good = request(auth, &[(1, b"a".to_vec())], false);
        let mut acct = good.clone();
        acct[0] = 4;
        let mut long = good.clone();
        long[2..4].copy_from_slice(&5000u16.to_be_bytes());
        let mut bad_attr = good.clone();
        bad_attr[21] = 0;
        let cases: Vec<(&[u8], AuthDropReason)> = vec![
            (&good[..10], AuthDropReason::Truncated),
            (&good[..good.len() - 1], AuthDropReason::Truncated),
            (&acct, AuthDropReason::NotAccessRequest(4)),
            (&long, AuthDropReason::BadLength),
            (&bad_attr, AuthDropReason::BadAttribute),
        ];
        for (p, want) in cases {
            assert_eq!(decode_access_request(p, SECRET, false), Err(want));
        }
    }

    const CFG: &str = r#"
[[charge_rule]]
name = "day"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "08:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0"
[[charge_rule]]
name = "night"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "08:00"
price_per_minute = "0.0050"
price_per_gb = "0"
[[charge_rule]]
name = "free"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "24:00"
price_per_minute = "0"
price_per_gb = "1.0"
[[group]]
name = "g"
charge_rules = ["night", "day"]
max_sessions = 1
max_session_secs = 3600
reply = { "Framed-Pool" = "pool1", "Idle-Timeout" = 600 }
[[group]]
name = "data"
charge_rules = ["free"]
max_session_secs = 7200
"#;

    fn catalog() -> Catalog {
        Catalog::build(&LoadedConfig::from_str(CFG, ConfigSource::BuiltinDemo, ".".into()).unwrap())
            .unwrap()
    }

    /// Each reason in DESIGN.md's order, then an accept; the Session-Timeout from 07:50
    /// UTC with credit 0.06: 600 s of night cost 0.05, the remaining 0.01 buys 60 s of
    /// day: 660 s (hand-computed).
    #[test]
    fn decisions_table() {
        let c = catalog();
        let g = &c.groups[0];
        let auth = [2u8; 16];
        let pap = |pw: &[u8]| request(auth, &[(1, b"u".to_vec()), (2, hide(pw, &auth))], false);
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-02T07:50:00Z")
            .unwrap()
            .timestamp();
        let user = |credit: &str, open: usize, status: ClientStatus| Subscriber {
            password: Some("pw"),
            credit: credit.parse().unwrap(),
            quota_left: false,
            group: Some(g),
            status,
            open_sessions: open,
        };
        let none_creds = request(auth, &[(1, b"u".to_vec())], false);
        let cases: Vec<(Vec<u8>, Option<Subscriber>, Decision)> = vec![
            (
                pap(b"pw"),
                None,
                Decision::Reject(RejectReason::UnknownUser),
            ),
            (
                pap(b"px"),
                Some(user("1", 0, ClientStatus::Active)),
                Decision::Reject(RejectReason::WrongPassword),
            ),
            (
                none_creds,
                Some(user("1", 0, ClientStatus::Active)),
                Decision::Reject(RejectReason::NoCredentials),
            ),
            (
                pap(b"pw"),
                Some(user("1", 0, ClientStatus::Locked)),
                Decision::Reject(RejectReason::NotActive),
            ),
            (
                pap(b"pw"),
                Some(user("1", 0, ClientStatus::Archived)),
                Decision::Reject(RejectReason::NotActive),
            ),
            (
                pap(b"pw"),
                Some(Subscriber {
                    group: None,
                    ..user("1", 0, ClientStatus::Active)
                }),
                Decision::Reject(RejectReason::NoGroup),
            ),
            (
                pap(b"pw"),
                Some(user("0", 0, ClientStatus::Active)),
                Decision::Reject(RejectReason::NoCredit),
            ),
            (
                pap(b"pw"),
                Some(user("-3", 0, ClientStatus::Active)),
                Decision::Reject(RejectReason::NoCredit),
            ),
            // 0.00008 * 60 / 0.005 = 0.96 s: less than one second.
            (
                pap(b"pw"),
                Some(user("0.00008", 0, ClientStatus::Active)),
                Decision::Reject(RejectReason::NoCredit),
            ),
            (
                pap(b"pw"),
                Some(user("1", 1, ClientStatus::Active)),
                Decision::Reject(RejectReason::TooManySessions),
            ),
            (
                pap(b"pw"),
                Some(user("0.06", 0, ClientStatus::Active)),
                Decision::Accept {
                    session_timeout_secs: 660,
                    interim_interval_secs: 300,
                    reply: &g.reply,
                },
            ),
            // Capped at max_session_secs.
            (
                pap(b"pw"),
                Some(user("100", 0, ClientStatus::Active)),
                Decision::Accept {
                    session_timeout_secs: 3600,
                    interim_interval_secs: 300,
                    reply: &g.reply,
                },
            ),
        ];
        for (i, (p, u, want)) in cases.into_iter().enumerate() {
            let req = decode_access_request(&p, SECRET, false).unwrap();
            let got = decide(&req, SECRET, u.as_ref(), &c.charge_rules, &c.tz, 300, now);
            assert_eq!(got, want, "case {i}");
        }
        assert_eq!(
            g.reply,
            // Name order: Framed-Pool, Idle-Timeout.
            vec![(88, b"pool1".to_vec()), (28, 600u32.to_be_bytes().to_vec())]
        );
    }

    /// Package quota left is a reason to accept at zero credit (DESIGN.md "RADIUS
    /// authorization"): the session may last while time costs nothing — the group's cap
    /// when time is free, a rejection when time is priced; no quota, no accept.
    #[test]
    fn quota_left_accepts_at_zero_credit_while_time_is_free() {
        let c = catalog();
        let (g, data) = (&c.groups[0], &c.groups[1]);
        let auth = [3u8; 16];
        let req = request(auth, &[(1, b"u".to_vec()), (2, hide(b"pw", &auth))], false);
        let req = decode_access_request(&req, SECRET, false).unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-02T12:00:00Z")
            .unwrap()
            .timestamp();
        let user = |credit: &str, quota_left: bool, group| Subscriber {
            password: Some("pw"),
            credit: credit.parse().unwrap(),
            quota_left,
            group: Some(group),
            status: ClientStatus::Active,
            open_sessions: 0,
        };
        let cases = [
            (user("0", true, data), Some(7200)),
            (user("-2.5", true, data), Some(7200)),
            (user("0", false, data), None),
            (user("0", true, g), None),
            (user("0.01", true, g), Some(60)),
        ];
        for (i, (u, want)) in cases.into_iter().enumerate() {
            let got = decide(&req, SECRET, Some(&u), &c.charge_rules, &c.tz, 300, now);
            let want = match want {
                Some(s) => Decision::Accept {
                    session_timeout_secs: s,
                    interim_interval_secs: 300,
                    reply: &u.group.unwrap().reply,
                },
                None => Decision::Reject(RejectReason::NoCredit),
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    /// The reply checked against a hand computation: attributes in order (Message-
    /// Authenticator first, Proxy-States last), the HMAC over the reply with the Request
    /// Authenticator, the Response Authenticator over all of it.
    #[test]
    fn reply_bytes() {
        let auth = [4u8; 16];
        let p = request(
            auth,
            &[
                (33, b"st1".to_vec()),
                (1, b"u".to_vec()),
                (33, b"\x00st2".to_vec()),
            ],
            false,
        );
        let req = decode_access_request(&p, SECRET, false).unwrap();
        let reply_attrs = vec![(88u8, b"pool".to_vec())];
        for decision in [
            Decision::Reject(RejectReason::NoCredit),
            Decision::Accept {
                session_timeout_secs: 660,
                interim_interval_secs: 300,
                reply: &reply_attrs,
            },
        ] {
            let mut attrs: Vec<u8> = vec![80, 18];
            attrs.extend_from_slice(&[0; 16]);
            let code = match decision {
                Decision::Reject(_) => {
                    attrs.extend_from_slice(&[18, 11]);
                    attrs.extend_from_slice(b"no credit");
                    3u8
                }
                Decision::Accept { .. } => {
                    attrs.extend_from_slice(&[27, 6, 0, 0, 2, 148, 85, 6, 0, 0, 1, 44]);
                    attrs.extend_from_slice(&[88, 6]);
                    attrs.extend_from_slice(b"pool");
                    2u8
                }
            };
            attrs.extend_from_slice(&[33, 5]);
            attrs.extend_from_slice(b"st1");
            attrs.extend_from_slice(&[33, 6, 0]);
            attrs.extend_from_slice(b"st2");
            let len = (20 + attrs.len()) as u16;
            let mut want = vec![code, 42];
            want.extend_from_slice(&len.to_be_bytes());
            want.extend_from_slice(&auth);
            want.extend_from_slice(&attrs);
            let mac = hmac_md5(SECRET, &[&want]);
            want[22..38].copy_from_slice(&mac);
            let ra = md5::compute([&want[..], SECRET].concat()).0;
            want[4..20].copy_from_slice(&ra);
            let mut out = Vec::new();
            write_reply(&mut out, &req, &decision, SECRET);
            assert_eq!(out, want, "{decision:?}");
        }
    }

    /// The config keys of authorization: defaults, and bad values naming file, key, reason.
    #[test]
    fn config_keys() {
        let build = |extra: &str| {
            Catalog::build(
                &LoadedConfig::from_str(
                    &format!("{CFG}{extra}"),
                    ConfigSource::File("t.toml".into()),
                    ".".into(),
                )
                .unwrap(),
            )
        };
        let nas = "[[nas]]\nname = \"n\"\nip = \"10.0.0.1\"\nsecret = \"s\"\n";
        let c = build(nas).unwrap();
        assert_eq!(c.auth_listen, None, "absent auth_listen: off");
        assert!(c.nas[0].require_message_authenticator);
        assert_eq!(c.nas[0].coa_port, 3799);
        assert_eq!(c.groups[0].max_session_secs, 3600);
        let c = build(&format!(
            "{nas}require_message_authenticator = false\ncoa_port = 1700\n[[group]]\nname = \"h\"\n[radius]\nauth_listen = \"127.0.0.1:1812\"\n"
        ))
        .unwrap();
        assert_eq!(c.auth_listen.as_deref(), Some("127.0.0.1:1812"));
        assert!(!c.nas[0].require_message_authenticator);
        assert_eq!(c.nas[0].coa_port, 1700);
        let h = c.groups.last().unwrap();
        assert_eq!(h.name, "h");
        assert_eq!(
            (h.max_sessions, h.max_session_secs, h.reply.len()),
            (None, 86_400, 0)
        );
        let cases = [
            (
                "[radius]\nauth_listen = \"x\"\n",
                "t.toml: radius.auth_listen: \"x\" is not an address:port",
            ),
            (
                "[[group]]\nname = \"h\"\nreply = { \"Idle-Timeout\" = \"ten\" }\n",
                "t.toml: group[2] (h).reply: Idle-Timeout: an integer expected",
            ),
            (
                "[[group]]\nname = \"h\"\nmax_session_secs = 0\n",
                "t.toml: group[2] (h).max_session_secs: 0 is outside 1..=2678400 (31 days)",
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(build(extra).unwrap_err().to_string(), want);
        }
        let e = build("[[group]]\nname = \"h\"\nreply = { \"Framed-Poool\" = \"p\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "t.toml: group[2] (h).reply: \"Framed-Poool\" is not a reply attribute ratel knows"
            ),
            "{e}"
        );
    }

    #[test]
    fn reply_dictionary_values() {
        let t = |s: &str| ReplyValue::Text(s.into());
        type Case<'a> = (&'a str, ReplyValue, Result<(u8, Vec<u8>), &'a str>);
        let cases: Vec<Case> = vec![
            ("Filter-Id", t("100M"), Ok((11, b"100M".to_vec()))),
            (
                "Framed-IP-Address",
                t("10.1.2.3"),
                Ok((8, vec![10, 1, 2, 3])),
            ),
            (
                "Idle-Timeout",
                ReplyValue::Integer(600),
                Ok((28, vec![0, 0, 2, 88])),
            ),
            (
                "Idle-Timeout",
                t("600"),
                Err("Idle-Timeout: an integer expected"),
            ),
            (
                "Idle-Timeout",
                ReplyValue::Integer(-1),
                Err("Idle-Timeout: -1 is outside 0..=4294967295"),
            ),
            (
                "Framed-IP-Address",
                t("x"),
                Err("Framed-IP-Address: \"x\" is not an IPv4 address"),
            ),
            (
                "Filter-Id",
                t(""),
                Err("Filter-Id: a string of 1..=253 bytes expected"),
            ),
        ];
        for (name, v, want) in cases {
            assert_eq!(
                encode_reply_attribute(name, &v),
                want.map_err(String::from),
                "{name}"
            );
        }
        let e = encode_reply_attribute("Session-Timeout", &ReplyValue::Integer(5)).unwrap_err();
        assert!(
            e.starts_with("\"Session-Timeout\" is not a reply attribute ratel knows"),
            "{e}"
        );
    }
}
