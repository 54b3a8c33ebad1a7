//! Issue 13 end to end, over real UDP against the real `ratel serve`: RADIUS authorization
//! (PAP and CHAP, every Reject reason, Session-Timeout across a charge-rule edge,
//! Message-Authenticator required / absent / wrong) and the Disconnect-Request a test NAS
//! receives when an Interim takes a subscriber's credit to zero or an operator locks it.
//!
//! Requests are built with radius-rs; every reply is checked independently of ratel's code:
//! the Response Authenticator with radius-rs, the Message-Authenticator with an HMAC-MD5
//! written here over the md5 crate, attribute values with radius-rs lookups.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{acct, send, SECRET};
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866, rfc2869, rfc3576};

/// HMAC-MD5 (RFC 2104), written out for the checks.
fn hmac_md5(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = md5::compute([&ipad[..], msg].concat()).0;
    md5::compute([&opad[..], &inner[..]].concat()).0
}

/// Offset of the value of the first attribute `typ` in a packet.
fn attr_offset(p: &[u8], typ: u8) -> Option<usize> {
    let mut pos = 20;
    while pos + 2 <= p.len() {
        if p[pos] == typ {
            return Some(pos + 2);
        }
        pos += p[pos + 1].max(2) as usize;
    }
    None
}

#[derive(Clone, Copy)]
enum Cred<'a> {
    Pap(&'a str),
    /// Password, and a CHAP-Challenge attribute (else the Request Authenticator is the
    /// challenge).
    Chap(&'a str, Option<&'a [u8]>),
}

#[derive(Clone, Copy, PartialEq)]
enum Ma {
    Good,
    Absent,
    Wrong,
}

/// An Access-Request built with radius-rs; the Message-Authenticator (RFC 3579 §3.2) is
/// computed here over the encoded packet.
fn access_request(id: u8, user: &str, cred: Cred, ma: Ma, secret: &[u8]) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::AccessRequest, secret, id);
    rfc2865::add_user_name(&mut p, user);
    match cred {
        Cred::Pap(pw) => rfc2865::add_user_password(&mut p, pw.as_bytes()).unwrap(),
        Cred::Chap(pw, challenge) => {
            let chap_id = 0x5a;
            let ch: Vec<u8> = match challenge {
                Some(c) => {
                    rfc2865::add_chap_challenge(&mut p, c);
                    c.to_vec()
                }
                None => p.get_authenticator().clone(),
            };
            let resp = md5::compute([&[chap_id][..], pw.as_bytes(), &ch].concat()).0;
            rfc2865::add_chap_password(&mut p, &[&[chap_id][..], &resp].concat());
        }
    }
    rfc2866::add_acct_session_id(&mut p, "ignored");
    rfc2865::add_proxy_state(&mut p, b"proxy-state-1");
    if ma != Ma::Absent {
        rfc2869::add_message_authenticator(&mut p, &[0u8; 16]);
    }
    let mut b = p.encode().unwrap();
    if let Some(at) = attr_offset(&b, 80) {
        let mac = hmac_md5(secret, &b);
        b[at..at + 16].copy_from_slice(&mac);
        if ma == Ma::Wrong {
            b[at] ^= 0xff;
        }
    }
    b
}

/// What a verified reply says.
#[derive(Debug, PartialEq)]
struct Reply {
    accept: bool,
    reply_message: Option<String>,
    session_timeout: Option<u32>,
    interim: Option<u32>,
    framed_pool: Option<String>,
    filter_id: Option<String>,
}

/// Sends `req` and checks the reply: identifier, Response Authenticator (radius-rs),
/// Message-Authenticator (first attribute, HMAC-MD5 with the Request Authenticator in
/// place), the Proxy-State echoed. None when no reply came.
fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8], secret: &[u8]) -> Option<Reply> {
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 4096];
    let n = match sock.recv_from(&mut buf) {
        Ok((n, _)) => n,
        Err(_) => return None,
    };
    let r = &buf[..n];
    assert!(
        r[0] == 2 || r[0] == 3,
        "Access-Accept or -Reject, got {}",
        r[0]
    );
    assert_eq!(r[1], req[1], "identifier echoed");
    assert!(
        Packet::is_authentic_response(r, req, secret),
        "Response Authenticator"
    );
    assert_eq!(r[20..22], [80, 18], "Message-Authenticator first");
    let mut z = r.to_vec();
    z[4..20].copy_from_slice(&req[4..20]);
    z[22..38].fill(0);
    assert_eq!(r[22..38], hmac_md5(secret, &z), "Message-Authenticator");
    let p = Packet::decode(r, secret).unwrap();
    assert_eq!(
        rfc2865::lookup_proxy_state(&p),
        Some(b"proxy-state-1".to_vec()),
        "Proxy-State echoed"
    );
    Some(Reply {
        accept: r[0] == 2,
        reply_message: rfc2865::lookup_reply_message(&p).map(|v| v.unwrap()),
        session_timeout: rfc2865::lookup_session_timeout(&p).map(|v| v.unwrap()),
        interim: rfc2869::lookup_acct_interim_interval(&p).map(|v| v.unwrap()),
        framed_pool: rfc2869::lookup_framed_pool(&p).map(|v| v.unwrap()),
        filter_id: rfc2865::lookup_filter_id(&p).map(|v| v.unwrap()),
    })
}

fn reject(msg: &str) -> Reply {
    Reply {
        accept: false,
        reply_message: Some(msg.into()),
        session_timeout: None,
        interim: None,
        framed_pool: None,
        filter_id: None,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hhmm(t: i64) -> String {
    let m = t.rem_euclid(86_400) / 60;
    format!("{:02}:{:02}", m / 60, m % 60)
}

const LONG_PW: &str = "a-password-of-forty-characters-0123456789";

/// A data dir with users and a config whose charge rules change price at `edge` (UTC,
/// minute-aligned): "pre" 0.0060/min for the 12 h before it, "post" 0.0120/min for the
/// 12 h after. Disconnect-Requests for ras1 go to `coa_port`.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(edge: i64, coa_port: u16) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"
[radius]
listen = "127.0.0.1:0"
auth_listen = "127.0.0.1:0"
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[cdr]
spool = "spool"
format = "generic"
[[admin]]
name = "system"
password = "sys"
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
coa_port = {coa_port}
interim_interval_secs = 120
[[nas]]
name = "ras2"
ip = "127.0.0.2"
secret = "other-secret"
require_message_authenticator = false
[[charge_rule]]
name = "pre"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "{pre_start}"
end = "{edge}"
price_per_minute = "0.0060"
price_per_gb = "0.5"
[[charge_rule]]
name = "post"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "{edge}"
end = "{pre_start}"
price_per_minute = "0.0120"
price_per_gb = "0.5"
[[group]]
name = "g"
charge_rules = ["pre", "post"]
max_sessions = 1
reply = {{ "Framed-Pool" = "pool1", "Filter-Id" = "100M" }}
"#,
            pre_start = hhmm(edge - 12 * 3600),
            edge = hhmm(edge),
        );
        std::fs::write(dir.path().join("ratel.toml"), cfg).unwrap();
        std::fs::write(
            dir.path().join("users.csv"),
            format!(
                "username,password,group,credit\nalice,alice-pw,g,1\nbob,bob-pw,g,0\n\
                 dave,dave-pw,g,-2\nerin,erin-pw,g,5\ncarol,carol-pw,g,0.01\nlong,{LONG_PW},g,3\n"
            ),
        )
        .unwrap();
        let env = Env { dir };
        let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
            .args(["users", "import", "--config", &env.config()])
            .arg(env.dir.path().join("users.csv"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    /// Starts `ratel serve`: the child, the accounting, authorization and API addresses.
    fn serve(&self) -> (Server, SocketAddr, SocketAddr, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ratel"))
            .args(["serve", "--config", &self.config()])
            .env("RATEL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut acct, mut auth, mut api) = (None, None, None);
        for _ in 0..50 {
            let line = lines.next().expect("serve printed its addresses").unwrap();
            let word = |l: &str| l.split_whitespace().next().unwrap().parse().unwrap();
            if let Some(rest) = line.trim().strip_prefix("RADIUS accounting on udp://") {
                acct = Some(word(rest));
            }
            if let Some(rest) = line.trim().strip_prefix("RADIUS authorization on udp://") {
                auth = Some(word(rest));
            }
            if let Some(rest) = line.trim().strip_prefix("JSON-RPC API on http://") {
                api = Some(rest.trim_end_matches('/').parse().unwrap());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        (
            Server(child),
            acct.expect("accounting address"),
            auth.expect("authorization address printed"),
            api.expect("API address"),
        )
    }
}

/// A running `ratel serve`, killed on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client_at(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(3000)))
        .unwrap();
    s
}

/// Every decision over the wire, PAP and CHAP, and the Message-Authenticator rules.
#[test]
fn access_requests_accept_and_reject_for_each_reason() {
    // The price edge 10..11 minutes from now: a credit of 1 lasts across it.
    let edge = (now() / 60 + 11) * 60;
    let coa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let env = Env::new(edge, coa.local_addr().unwrap().port());
    let (_server, acct_addr, auth, _api) = env.serve();
    let c = client_at("127.0.0.1");

    // erin has one open session: max_sessions = 1.
    let a = common::client();
    assert!(send(&a, acct_addr, &acct(1, 1, "erin", "e-1", 0, 0, 0, None)).is_some());

    let chal: &[u8] = b"0123456789abcdef";
    let cases: Vec<(&str, Cred, Reply)> = vec![
        ("nobody", Cred::Pap("x"), reject("unknown user")),
        ("nobody", Cred::Chap("x", None), reject("unknown user")),
        ("alice", Cred::Pap("wrong"), reject("wrong password")),
        ("alice", Cred::Chap("wrong", None), reject("wrong password")),
        (
            "alice",
            Cred::Chap("wrong", Some(chal)),
            reject("wrong password"),
        ),
        ("bob", Cred::Pap("bob-pw"), reject("no credit")),
        ("bob", Cred::Chap("bob-pw", None), reject("no credit")),
        ("dave", Cred::Pap("dave-pw"), reject("no credit")),
        ("erin", Cred::Pap("erin-pw"), reject("too many sessions")),
        (
            "erin",
            Cred::Chap("erin-pw", Some(chal)),
            reject("too many sessions"),
        ),
    ];
    for (i, (user, cred, want)) in cases.into_iter().enumerate() {
        let req = access_request(i as u8, user, cred, Ma::Good, SECRET);
        assert_eq!(ask(&c, auth, &req, SECRET), Some(want), "case {i}: {user}");
    }

    // Accepts: Session-Timeout by hand. From t (the server's second) to the edge, d = edge
    // - t seconds at 0.006/min; the rest of credit 1 (60 in price × seconds units) at
    // 0.012/min: s = d + floor((60 - 0.006 d) / 0.012), in thousandths: (60000 - 6 d) / 12.
    let accepts: Vec<(&str, Cred, i64)> = vec![
        ("alice", Cred::Pap("alice-pw"), 60_000),
        ("alice", Cred::Chap("alice-pw", None), 60_000),
        ("alice", Cred::Chap("alice-pw", Some(chal)), 60_000),
        // Credit 3: (180000 - 6 d) / 12; a 40-character password is three PAP blocks.
        ("long", Cred::Pap(LONG_PW), 180_000),
        ("long", Cred::Chap(LONG_PW, None), 180_000),
    ];
    for (i, (user, cred, budget_milli)) in accepts.into_iter().enumerate() {
        let req = access_request(100 + i as u8, user, cred, Ma::Good, SECRET);
        let before = now();
        let r = ask(&c, auth, &req, SECRET).expect("a reply");
        let after = now();
        let want: Vec<u32> = (before..=after)
            .map(|t| {
                let d = edge - t;
                assert!(d > 0 && 6 * d <= budget_milli);
                (d + (budget_milli - 6 * d) / 12) as u32
            })
            .collect();
        assert!(r.accept, "case {i}: {r:?}");
        let st = r.session_timeout.unwrap();
        assert!(
            want.contains(&st),
            "case {i}: Session-Timeout {st}, want one of {want:?}"
        );
        assert_eq!(r.interim, Some(120), "interim_interval_secs of ras1");
        assert_eq!(r.framed_pool.as_deref(), Some("pool1"));
        assert_eq!(r.filter_id.as_deref(), Some("100M"));
        assert_eq!(r.reply_message, None);
    }

    // Message-Authenticator: ras1 requires it (absent or wrong: silently dropped); ras2
    // does not (absent: answered; wrong: dropped); its replies carry one all the same.
    let good = |id| access_request(id, "alice", Cred::Pap("alice-pw"), Ma::Good, SECRET);
    assert!(ask(&c, auth, &good(200), SECRET).unwrap().accept);
    let c_short = client_at("127.0.0.1");
    c_short
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    for ma in [Ma::Absent, Ma::Wrong] {
        let req = access_request(201, "alice", Cred::Pap("alice-pw"), ma, SECRET);
        assert_eq!(ask(&c_short, auth, &req, SECRET), None);
    }
    let c2 = client_at("127.0.0.2");
    let s2 = b"other-secret";
    let req = access_request(202, "alice", Cred::Pap("alice-pw"), Ma::Absent, s2);
    let r = ask(&c2, auth, &req, s2).unwrap();
    assert!(r.accept);
    assert_eq!(r.interim, Some(300), "default interim interval");
    let req = access_request(203, "alice", Cred::Chap("wrong", None), Ma::Absent, s2);
    assert_eq!(ask(&c2, auth, &req, s2), Some(reject("wrong password")));
    c2.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let req = access_request(204, "alice", Cred::Pap("alice-pw"), Ma::Wrong, s2);
    assert_eq!(ask(&c2, auth, &req, s2), None);
    // A request signed with ras1's secret from ras2's address fails its HMAC.
    let req = access_request(205, "alice", Cred::Pap("alice-pw"), Ma::Good, SECRET);
    assert_eq!(ask(&c2, auth, &req, s2), None);
    // Status-Server (RFC 5997) on the authorization port: an Access-Accept, no attributes
    // but the Message-Authenticator and the Proxy-State.
    let mut p = Packet::new_with_identifier(Code::StatusServer, SECRET, 210);
    rfc2865::add_proxy_state(&mut p, b"proxy-state-1");
    rfc2869::add_message_authenticator(&mut p, &[0u8; 16]);
    let mut b = p.encode().unwrap();
    let at = attr_offset(&b, 80).unwrap();
    let mac = hmac_md5(SECRET, &b);
    b[at..at + 16].copy_from_slice(&mac);
    let alive = Reply {
        accept: true,
        reply_message: None,
        session_timeout: None,
        interim: None,
        framed_pool: None,
        filter_id: None,
    };
    assert_eq!(ask(&c, auth, &b, SECRET), Some(alive));
    // An address that is no NAS gets nothing.
    let c3 = client_at("127.0.0.3");
    c3.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert_eq!(ask(&c3, auth, &good(206), SECRET), None);
}

/// An Interim that takes carol's credit (0.01) below zero makes ratel send a
/// Disconnect-Request to ras1's coa_port; the test NAS checks it, answers NAK
/// (Resources-Unavailable), gets the retry as a new request, answers ACK, and then hears
/// nothing more (one series per crossing, even after another charging Interim).
#[test]
fn interim_to_zero_credit_sends_disconnect_nak_then_ack() {
    let nas = UdpSocket::bind("127.0.0.1:0").unwrap();
    nas.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let env = Env::new((now() / 60 + 11) * 60, nas.local_addr().unwrap().port());
    let (_server, acct_addr, _auth, api) = env.serve();
    let a = common::client();
    assert!(send(&a, acct_addr, &acct(1, 1, "carol", "c-1", 0, 0, 0, None)).is_some());
    assert!(send(&a, acct_addr, &acct(2, 1, "alice", "a-1", 0, 0, 0, None)).is_some());
    // 600 s at 0.006/min or more: at least 0.06 > 0.01.
    assert!(send(&a, acct_addr, &acct(3, 3, "carol", "c-1", 600, 0, 0, None)).is_some());
    // alice's Interim leaves her credit positive: no request for her.
    assert!(send(&a, acct_addr, &acct(4, 3, "alice", "a-1", 60, 0, 0, None)).is_some());

    let mut buf = [0u8; 4096];
    let mut authenticators = Vec::new();
    for (k, code) in [(0, Code::DisconnectNAK), (1, Code::DisconnectACK)] {
        let (n, from) = nas.recv_from(&mut buf).expect("a Disconnect-Request");
        let r = buf[..n].to_vec();
        assert_eq!(r[0], 40, "Disconnect-Request");
        assert!(
            Packet::is_authentic_request(&r, SECRET),
            "Request Authenticator (RFC 5176 §2.3)"
        );
        let at = attr_offset(&r, 80).expect("Message-Authenticator");
        let mut z = r.clone();
        z[4..20].fill(0);
        z[at..at + 16].fill(0);
        assert_eq!(
            r[at..at + 16],
            hmac_md5(SECRET, &z),
            "Message-Authenticator"
        );
        let p = Packet::decode(&r, SECRET).unwrap();
        assert_eq!(rfc2865::lookup_user_name(&p).unwrap().unwrap(), "carol");
        assert_eq!(rfc2866::lookup_acct_session_id(&p).unwrap().unwrap(), "c-1");
        assert_eq!(
            rfc2865::lookup_nas_ip_address(&p).unwrap().unwrap(),
            "127.0.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        let ts = rfc2869::lookup_event_timestamp(&p)
            .unwrap()
            .unwrap()
            .timestamp();
        assert!((now() - 60..=now()).contains(&ts), "Event-Timestamp {ts}");
        authenticators.push(r[4..20].to_vec());
        let mut answer = p.make_response_packet(code);
        if k == 0 {
            rfc3576::add_error_cause(&mut answer, 506);
        }
        nas.send_to(&answer.encode().unwrap(), from).unwrap();
    }
    assert_ne!(
        authenticators[0], authenticators[1],
        "the retry after a NAK is a new request"
    );
    // Another Interim charges carol again (still below zero): no new series.
    assert!(send(&a, acct_addr, &acct(5, 3, "carol", "c-1", 900, 0, 0, None)).is_some());
    nas.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    assert!(
        nas.recv_from(&mut buf).is_err(),
        "nothing after the ACK: one series per crossing"
    );
    let credits = env_credit(&env, "carol");
    assert!(credits < rust_decimal::Decimal::ZERO, "{credits}");

    // An operator SET of alice's credit to 0 disconnects her open session a-1.
    let (res, err) = common::rpc(
        api,
        "user.changeCreditExtended",
        serde_json::json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys",
            "auth_remoteaddr": "127.0.0.1", "user_id": "1", "credit": 0, "change_type": "SET",
            "credit_comment": "prepaid test"}),
    );
    assert!(err.is_null(), "{err} {res}");
    nas.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, from) = nas
        .recv_from(&mut buf)
        .expect("a Disconnect-Request for alice");
    let r = buf[..n].to_vec();
    assert!(Packet::is_authentic_request(&r, SECRET));
    let p = Packet::decode(&r, SECRET).unwrap();
    assert_eq!(rfc2865::lookup_user_name(&p).unwrap().unwrap(), "alice");
    assert_eq!(rfc2866::lookup_acct_session_id(&p).unwrap().unwrap(), "a-1");
    let answer = p.make_response_packet(Code::DisconnectACK);
    nas.send_to(&answer.encode().unwrap(), from).unwrap();
}

fn env_credit(env: &Env, user: &str) -> rust_decimal::Decimal {
    let c = rusqlite::Connection::open_with_flags(
        env.dir.path().join("data/ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let s: String = c
        .query_row(
            "SELECT credit FROM users WHERE username = ?1",
            [user],
            |r| r.get(0),
        )
        .unwrap();
    s.parse().unwrap()
}

/// The price per minute in thousandths at unix time `t` under [`Env`]'s rules: "pre"
/// (6) for the 12 h before the time of day of `edge`, "post" (12) for the 12 h after.
fn milli_per_minute(edge: i64, t: i64) -> i64 {
    if (t - (edge - 12 * 3600)).rem_euclid(86_400) < 43_200 {
        6
    } else {
        12
    }
}

/// A counter sample of `GET /metrics`, e.g. `ratel_radius_disconnects_total{result="acked"}`.
fn metric(api: SocketAddr, sample: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{sample} missing from /metrics: {resp}"))
        .trim()
        .parse()
        .unwrap()
}

/// An operator locks alice with `user.updateUserAttrs` (`attrs.lock`): the test NAS gets a
/// Disconnect-Request for her open session and ACKs it; a new Access-Request is rejected
/// as not active; her session's Interim and Stop are still charged, to the digit;
/// `user.getUserInfo` shows `attrs.lock` with the reason while she is locked; a new reason
/// for a locked client sends nothing again; `to_del_attrs: ["lock"]` unlocks her and the
/// next Access-Request is accepted, its Session-Timeout bought by the credit left.
#[test]
fn a_locked_client_is_rejected_and_disconnected() {
    use serde_json::{json, Value};
    let nas = UdpSocket::bind("127.0.0.1:0").unwrap();
    nas.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let edge = (now() / 60 + 11) * 60;
    let env = Env::new(edge, nas.local_addr().unwrap().port());
    let (_server, acct_addr, auth, api) = env.serve();
    let c = client_at("127.0.0.1");
    let pap = |id| access_request(id, "alice", Cred::Pap("alice-pw"), Ma::Good, SECRET);
    let r = ask(&c, auth, &pap(1), SECRET).expect("a reply");
    assert!(r.accept && r.reply_message.is_none(), "{r:?}");

    // alice (user 1, credit 1) opens a-1 at t0 = 10:00:00 UTC.
    let a = common::client();
    assert!(send(&a, acct_addr, &acct(1, 1, "alice", "a-1", 0, 0, 0, None)).is_some());

    let rpc = |method: &str, extra: Value| {
        let mut p = json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys",
            "auth_remoteaddr": "127.0.0.1"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        common::rpc(api, method, p)
    };
    let update = |extra: Value| {
        let mut p = json!({"user_id": "1", "to_del_attrs": []});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rpc("user.updateUserAttrs", p)
    };
    let info = || {
        let (res, err) = rpc("user.getUserInfo", json!({"normal_username": "alice"}));
        assert!(err.is_null(), "{err}");
        res["1"].clone()
    };
    let requested = || metric(api, "ratel_radius_disconnects_total{result=\"requested\"}");
    let before = info();
    assert!(before["attrs"].get("lock").is_none(), "{before}");
    assert_eq!(requested(), 0);

    // Lock with an empty reason: shown as "locked".
    assert_eq!(
        update(json!({"attrs": {"lock": ""}})),
        (json!(""), Value::Null)
    );
    let (request, from) = {
        let mut buf = [0u8; 4096];
        let (n, from) = nas.recv_from(&mut buf).expect("a Disconnect-Request");
        let r = buf[..n].to_vec();
        assert_eq!(r[0], 40, "Disconnect-Request");
        assert!(
            Packet::is_authentic_request(&r, SECRET),
            "Request Authenticator (RFC 5176 §2.3)"
        );
        let at = attr_offset(&r, 80).expect("Message-Authenticator");
        let mut z = r.clone();
        z[4..20].fill(0);
        z[at..at + 16].fill(0);
        assert_eq!(
            r[at..at + 16],
            hmac_md5(SECRET, &z),
            "Message-Authenticator"
        );
        (r, from)
    };
    let p = Packet::decode(&request, SECRET).unwrap();
    assert_eq!(rfc2865::lookup_user_name(&p).unwrap().unwrap(), "alice");
    assert_eq!(rfc2866::lookup_acct_session_id(&p).unwrap().unwrap(), "a-1");
    assert_eq!(
        rfc2865::lookup_nas_ip_address(&p).unwrap().unwrap(),
        "127.0.0.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    let answer = p.make_response_packet(Code::DisconnectACK);
    nas.send_to(&answer.encode().unwrap(), from).unwrap();
    // The sender matches the ACK (bounded wait for its thread).
    let acked = || metric(api, "ratel_radius_disconnects_total{result=\"acked\"}");
    for _ in 0..100 {
        if acked() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(acked(), 1, "the ACK is matched to its request");
    assert_eq!(requested(), 1);

    let locked = info();
    assert_eq!(locked["attrs"]["lock"], "locked", "{locked}");
    // Everything else as before.
    assert_eq!(locked["basic_info"]["client_status"], "locked");
    assert_eq!(before["basic_info"]["client_status"], "active");
    let mut without = locked.clone();
    without["attrs"].as_object_mut().unwrap().remove("lock");
    without["basic_info"]["client_status"] = json!("active");
    assert_eq!(without["basic_info"], before["basic_info"]);
    assert_eq!(without["attrs"], before["attrs"]);

    // A new reason for a locked client: shown, and no second series.
    assert_eq!(
        update(json!({"attrs": {"lock": "unpaid invoice"}})),
        (json!(""), Value::Null)
    );
    assert_eq!(info()["attrs"]["lock"], "unpaid invoice");
    assert_eq!(requested(), 1, "one series per lock");

    // Refused while locked, whatever the credentials' form.
    let not_active = Some(reject("client not active"));
    assert_eq!(ask(&c, auth, &pap(2), SECRET), not_active);
    let chap = access_request(3, "alice", Cred::Chap("alice-pw", None), Ma::Good, SECRET);
    assert_eq!(ask(&c, auth, &chap, SECRET), not_active);
    // A wrong password is still a wrong password.
    let wrong = access_request(4, "alice", Cred::Pap("nope"), Ma::Good, SECRET);
    assert_eq!(
        ask(&c, auth, &wrong, SECRET),
        Some(reject("wrong password"))
    );

    // Usage of a locked client is charged: the Interim (minute 10:00), then the Stop the
    // NAS sends after the disconnect (Admin-Reset; minute 10:01).
    let t0 = common::t0().timestamp();
    let (m1, m2) = (milli_per_minute(edge, t0), milli_per_minute(edge, t0 + 60));
    assert!(send(&a, acct_addr, &acct(2, 3, "alice", "a-1", 60, 0, 0, None)).is_some());
    let credit = |milli: i64| rust_decimal::Decimal::new(milli, 3);
    assert_eq!(env_credit(&env, "alice"), credit(1000 - m1));
    assert!(send(
        &a,
        acct_addr,
        &acct(3, 2, "alice", "a-1", 120, 0, 0, Some(6))
    )
    .is_some());
    let left = 1000 - m1 - m2;
    assert_eq!(env_credit(&env, "alice"), credit(left));
    assert_eq!(
        info()["basic_info"]["credit"],
        serde_json::from_str::<Value>(&credit(left).normalize().to_string()).unwrap()
    );

    // Wrong uses of the attribute are refused and change nothing.
    let cases = [
        (
            json!({"attrs": {"lock": "x"}, "to_del_attrs": ["lock"]}),
            "INVALID_PARAMS|lock: in attrs and in to_del_attrs at once; lock or unlock",
        ),
        (
            json!({"attrs": {"lock": 5}}),
            "INVALID_PARAMS|attrs.lock: expected a reason string",
        ),
        (
            json!({"attrs": {"lock": "x".repeat(256)}}),
            "INVALID_PARAMS|attrs.lock: a reason of at most 255 characters",
        ),
        (
            json!({"user_id": "99", "attrs": {"lock": "x"}}),
            "USER_ID_NOT_FOUND|User with id 99 does not exist",
        ),
    ];
    for (params, want) in cases {
        let (res, err) = update(params.clone());
        assert_eq!((res, err), (Value::Null, json!(want)), "{params}");
    }
    assert_eq!(info()["attrs"]["lock"], "unpaid invoice");

    // Unlock: the attribute is gone and alice is accepted again, for what her credit buys
    // from now to the price edge (0.006/min) and after it (0.012/min).
    assert_eq!(
        update(json!({"attrs": {}, "to_del_attrs": ["lock"]})),
        (json!(""), Value::Null)
    );
    let unlocked = info();
    assert_eq!(unlocked["attrs"].get("lock"), None, "{unlocked}");
    let budget = left * 60;
    let before_ask = now();
    let r = ask(&c, auth, &pap(5), SECRET).expect("a reply");
    let after_ask = now();
    assert!(r.accept && r.reply_message.is_none(), "{r:?}");
    let want: Vec<u32> = (before_ask..=after_ask)
        .map(|t| {
            let d = edge - t;
            assert!(d > 0 && 6 * d <= budget);
            (d + (budget - 6 * d) / 12) as u32
        })
        .collect();
    let st = r.session_timeout.unwrap();
    assert!(
        want.contains(&st),
        "Session-Timeout {st}, want one of {want:?}"
    );
    assert_eq!(requested(), 1, "an unlock sends nothing");
}
