//! Issue 16 end to end: the Tariscope API dialect (`/api/...`, seed 004) over real HTTP
//! against the real `ratel serve` binary: JWT tokens (bound to the caller's IP, 6 hours,
//! signed with the ledger's key; expired and forged tokens are made here by hand with a
//! SHA-256/HMAC written in this file), the 22 methods in JSON and in XML, the error
//! statuses, RADIUS over real UDP for `subscriber.list.node`, a generic CDR file dropped
//! into the spool for the DN billing and `accounts.*`.
//!
//! Every expectation is written here literally; amounts are computed by hand from the
//! config below (the arithmetic is in a comment beside each):
//! - group `g`: charge rules "night" 00:00-08:00 and "day" 08:00-24:00, tariff `std`,
//!   4 decimals, rounding up; group `g2`: rule "flat", no tariff, 2 decimals;
//! - tariff `std`: prefix 1 USA 0.0100/min, no fee, 60/60; prefix 44 UK 0.0300/min, fee
//!   0.0100, 30/6; prefix 7 "RU night" 0.0100/min, fee 0.0200, 22:00-06:00 every day and
//!   "RU day" 0.0400/min, no fee, 06:00-22:00 every day (time zone UTC).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::{acct, client, d, send, serve_config, stop, Server};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
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
[[admin]]
name = "limited"
password = "lim"
allow = ["subscriber.*", "tariscope.version"]
[[admin]]
name = "reader"
password = "rd"
allow = ["sql"]
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
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
[[charge_rule]]
name = "flat"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "24:00"
price_per_minute = "0.0200"
price_per_gb = "1.0000"
[[group]]
name = "g"
charge_rules = ["night", "day"]
tariff = "std"
decimals = 4
rounding = "up"
[[group]]
name = "g2"
charge_rules = ["flat"]
decimals = 2
rounding = "half_up"
[[tariff]]
name = "std"
rates = "rates.csv"
"#;

const RATES: &str = "prefix,description,price_per_minute,connect_fee,first_increment,next_increment,days,start,end\n\
1,USA,0.0100,0,60,60\n\
44,UK,0.0300,0.0100,30,6\n\
7,RU night,0.0100,0.0200,60,60,mon;tue;wed;thu;fri;sat;sun,22:00,06:00\n\
7,RU day,0.0400,0,60,60,mon;tue;wed;thu;fri;sat;sun,06:00,22:00\n";

const GENERIC_HEADER: &str = "call_id,caller,callee,start_time,duration_s,disposition,account\n";

/// The seed's 28 subscriber fields, spelled as the seed spells them.
const SEED_FIELDS: [&str; 28] = [
    "id",
    "fullname",
    "street",
    "House",
    "Flat",
    "email",
    "description",
    "authcode",
    "ispublic",
    "abonenttype",
    "code",
    "zipcode",
    "personalcode",
    "contractid",
    "information",
    "privilegeinfo",
    "area",
    "contractdate",
    "building",
    "floornumber",
    "accountId",
    "gender",
    "birthday",
    "bankaccount",
    "bankmfo",
    "taxcode",
    "deliverytype",
    "privilegediscount",
];

// ---- the data dir and the server ----------------------------------------------------------

/// A data dir with the config above; no clients.
struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ratel.toml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("rates.csv"), RATES).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        T { dir }
    }

    fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// `ratel serve`: (server, RADIUS accounting address, API address).
    fn serve(&self) -> (Server, SocketAddr, SocketAddr) {
        serve_config(&self.config())
    }

    /// Drops a CDR file into the spool (written under a hidden name, then renamed).
    fn drop_cdr(&self, name: &str, content: &str) {
        let tmp = self.spool().join(format!(".{name}.part"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.spool().join(name)).unwrap();
    }

    /// Waits (at most 10 s) until `n` spool files are in `spool/done/`; none may fail.
    fn wait_spool_done(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = |sub: &str| {
                std::fs::read_dir(self.spool().join(sub))
                    .map(|d| d.flatten().count())
                    .unwrap_or(0)
            };
            assert_eq!(count("failed"), 0, "spool files failed");
            let got = count("done");
            if got >= n {
                assert_eq!(got, n, "files in spool/done");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} spool files rated within 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ledger opened read-only beside the running server.
    fn ledger_ro(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_with_flags(
            self.data().join("ledger.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    /// The token signing key: the hex string in the ledger's `meta` table.
    fn token_key(&self) -> Vec<u8> {
        let v: String = self
            .ledger_ro()
            .query_row(
                "SELECT value FROM meta WHERE key = 'api_token_key'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        v.into_bytes()
    }

    /// Waits (at most 10 s) until `user_id` has `n` usage journal rows and no xDR waits in
    /// the outbox (so the xDRs are in Parquet before anything reads or cancels them).
    fn wait_charged(&self, user_id: i64, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.ledger_ro();
            let usage: i64 = l
                .query_row(
                    "SELECT count(*) FROM journal WHERE user_id = ?1 AND kind = 'usage'",
                    [user_id],
                    |r| r.get(0),
                )
                .unwrap();
            let outbox: i64 = l
                .query_row("SELECT count(*) FROM xdr_outbox", [], |r| r.get(0))
                .unwrap();
            if usage >= n && outbox == 0 {
                assert_eq!(usage, n, "usage journal rows of {user_id}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after 10 s: {usage} usage rows of {user_id}, {outbox} xDRs in the outbox"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---- HTTP ---------------------------------------------------------------------------------

/// An HTTP answer: status, content type, body.
#[derive(Debug)]
struct Resp {
    status: u16,
    ctype: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn xml(&self) -> El {
        assert!(
            self.ctype.starts_with("application/xml"),
            "content type {:?} of {:?}",
            self.ctype,
            self.body
        );
        parse_xml(&self.body)
    }
}

/// One HTTP/1.1 request over a fresh connection (from the local address `from` when
/// given, e.g. 127.0.0.2: another client IP).
fn request(
    from: Option<IpAddr>,
    api: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> Resp {
    let mut s: std::net::TcpStream = match from {
        None => std::net::TcpStream::connect(api).unwrap(),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            sock.connect(&api.into()).unwrap();
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Resp {
        status,
        ctype: header("content-type").unwrap_or_default(),
        body: String::from_utf8(body).unwrap(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// GET `path` with a Bearer token: (status, JSON answer).
fn get(api: SocketAddr, token: &str, path: &str) -> (u16, Value) {
    let r = request(None, api, "GET", path, Some(&bearer(token)), "", b"");
    assert!(r.ctype.starts_with("application/json"), "{path}: {r:?}");
    (r.status, r.json())
}

/// POST a JSON body to `path` with a Bearer token: (status, JSON answer).
fn post(api: SocketAddr, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = request(
        None,
        api,
        "POST",
        path,
        Some(&bearer(token)),
        "application/json",
        body.to_string().as_bytes(),
    );
    assert!(r.ctype.starts_with("application/json"), "{path}: {r:?}");
    (r.status, r.json())
}

/// GET that must answer 200: the answer.
fn get_ok(api: SocketAddr, token: &str, path: &str) -> Value {
    let (s, v) = get(api, token, path);
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// POST that must answer 200: the answer.
fn post_ok(api: SocketAddr, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = post(api, token, path, body.clone());
    assert_eq!(s, 200, "POST {path} {body}: {v}");
    v
}

/// An error answer: `status` and `{"error": <reason containing `part`>}` (nothing else).
fn assert_error(got: (u16, Value), status: u16, part: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let obj = v.as_object().unwrap_or_else(|| panic!("an object: {v}"));
    assert_eq!(obj.len(), 1, "only \"error\": {v}");
    let reason = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error reason: {v}"));
    assert!(!reason.is_empty(), "{v}");
    assert!(
        reason.to_lowercase().contains(&part.to_lowercase()),
        "{reason:?} should mention {part:?}"
    );
}

/// `POST /api/auth`: the token.
fn login(api: SocketAddr, user: &str, pass: &str) -> String {
    login_from(None, api, user, pass)
}

fn login_from(from: Option<IpAddr>, api: SocketAddr, user: &str, pass: &str) -> String {
    let r = request(
        from,
        api,
        "POST",
        "/api/auth",
        None,
        "application/json",
        json!({"username": user, "password": pass})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "only the token: {v}");
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token: {v}"))
        .to_string()
}

/// A JSON money value (a number with exact digits) as a Decimal.
fn money(v: &Value) -> Decimal {
    let t = v.to_string();
    t.trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("money: {v}"))
}

/// `t` (Unix seconds) as ISO-8601 UTC.
fn iso(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

// ---- JWT by hand: base64url, SHA-256, HMAC ------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| B64.iter().position(|&x| x == c).expect("base64url") as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for i in 0..8 {
            h[i] = h[i].wrapping_add(v[i]);
        }
    }
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[4 * i..4 * i + 4].copy_from_slice(&h[i].to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An HS256 JWT of `claims` signed with `key`.
fn jwt(key: &[u8], claims: &Value) -> String {
    let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let sig = hmac_sha256(key, format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64url(&sig))
}

/// The payload of a JWT.
fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {token}");
    serde_json::from_slice(&b64url_decode(parts[1])).unwrap()
}

/// The hand-made crypto against published vectors (FIPS 180-2, RFC 4231 case 2) and
/// base64url against RFC 4648 (without padding).
#[test]
fn the_hand_made_jwt_primitives_match_published_vectors() {
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(&sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // RFC 4231 case 6: a key longer than the block.
    assert_eq!(
        hex(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    for (plain, enc) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(plain.as_bytes()), enc);
        assert_eq!(b64url_decode(enc), plain.as_bytes());
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    assert_eq!(b64url_decode("-_8"), vec![0xfb, 0xff]);
}

// ---- a minimal XML reader -----------------------------------------------------------------

/// An element: name, attributes, child elements, text (entities undone).
#[derive(Debug, Clone)]
struct El {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<El>,
    text: String,
}

impl El {
    fn child(&self, name: &str) -> &El {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("<{name}> in <{}>: {self:?}", self.name))
    }

    fn nil(&self) -> bool {
        self.attrs.iter().any(|(k, v)| k == "nil" && v == "true")
    }

    /// The text of child `name`; None when it is `nil="true"`.
    fn get(&self, name: &str) -> Option<String> {
        let c = self.child(name);
        if c.nil() {
            assert!(c.children.is_empty() && c.text.is_empty(), "{c:?}");
            None
        } else {
            Some(c.text.clone())
        }
    }

    fn items(&self) -> Vec<&El> {
        assert!(self.children.iter().all(|c| c.name == "item"), "{self:?}");
        self.children.iter().collect()
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').expect("entity end") + i;
        let ent = &rest[i + 1..end];
        match ent {
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "amp" => out.push('&'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            e if e.starts_with("#x") => {
                out.push(char::from_u32(u32::from_str_radix(&e[2..], 16).unwrap()).unwrap())
            }
            e if e.starts_with('#') => out.push(char::from_u32(e[1..].parse().unwrap()).unwrap()),
            e => panic!("unknown entity &{e};"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses a document (an optional `<?xml ...?>` declaration, then one root element).
fn parse_xml(doc: &str) -> El {
    let mut s = doc.trim_start();
    if s.starts_with("<?xml") {
        s = s[s.find("?>").expect("declaration end") + 2..].trim_start();
    }
    let (el, rest) = parse_el(s);
    assert!(rest.trim().is_empty(), "trailing {rest:?}");
    el
}

fn parse_el(s: &str) -> (El, &str) {
    assert!(s.starts_with('<'), "an element at {s:?}");
    let close = s.find('>').expect("tag end");
    let tag = &s[1..close];
    let empty = tag.ends_with('/');
    let tag = tag.trim_end_matches('/');
    let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
    let name = tag[..name_end].to_string();
    let mut attrs = Vec::new();
    let mut a = tag[name_end..].trim();
    while !a.is_empty() {
        let eq = a.find('=').expect("attribute =");
        let key = a[..eq].trim().to_string();
        let q = a[eq + 1..].trim_start();
        let quote = q.chars().next().unwrap();
        let vend = q[1..].find(quote).expect("attribute value end") + 1;
        attrs.push((key, unescape(&q[1..vend])));
        a = q[vend + 1..].trim_start();
    }
    let mut el = El {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    };
    let mut rest = &s[close + 1..];
    if empty {
        return (el, rest);
    }
    loop {
        let lt = rest.find('<').expect("content end");
        el.text.push_str(&unescape(&rest[..lt]));
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("</") {
            let gt = after.find('>').unwrap();
            assert_eq!(after[..gt].trim(), el.name, "end tag");
            rest = &after[gt + 1..];
            break;
        }
        let (child, r) = parse_el(rest);
        el.children.push(child);
        rest = r;
    }
    if !el.children.is_empty() {
        assert!(el.text.trim().is_empty(), "mixed content in {el:?}");
        el.text.clear();
    }
    (el, rest)
}

/// `request` with an XML body.
fn xml_req(api: SocketAddr, token: Option<&str>, method: &str, path: &str, body: &str) -> Resp {
    let auth = token.map(bearer);
    request(
        None,
        api,
        method,
        path,
        auth.as_deref(),
        "application/xml",
        body.as_bytes(),
    )
}

// ---- helpers over the methods -------------------------------------------------------------

/// The expected subscriber: every seed field null but `id`/`accountId` and `set`.
fn subscriber(id: i64, set: Value) -> Value {
    let mut m = serde_json::Map::new();
    for f in SEED_FIELDS {
        m.insert(f.to_string(), Value::Null);
    }
    m.insert("id".into(), json!(id));
    m.insert("accountId".into(), json!(id));
    for (k, v) in set.as_object().unwrap() {
        assert!(m.contains_key(k), "{k} is a seed field");
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// The subscriber ids in a list answer.
fn ids(list: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|s| {
            assert_eq!(s.as_object().unwrap().len(), 28, "28 fields: {s}");
            s["id"].as_i64().unwrap()
        })
        .collect();
    v.sort_unstable();
    v
}

// ---- 1. tokens ----------------------------------------------------------------------------

/// `POST /api/auth` gives an HS256 JWT {sub, ip, iat, exp = iat + 6 h} signed with the
/// ledger's key; it works from its IP only; missing, forged, expired, other-IP and
/// removed-user tokens are 401; a bad login is 401; a method outside `allow` is 403; an
/// unknown method 404; a token made here by hand with the key is accepted.
#[test]
fn tokens_are_signed_bound_to_one_ip_and_expire() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();

    // Bad logins.
    for body in [
        json!({"username": "system", "password": "wrong"}),
        json!({"username": "nobody", "password": "sys"}),
    ] {
        let r = request(
            None,
            api,
            "POST",
            "/api/auth",
            None,
            "application/json",
            body.to_string().as_bytes(),
        );
        assert_error((r.status, r.json()), 401, "wrong username or password");
    }
    let r = request(
        None,
        api,
        "POST",
        "/api/auth/",
        None,
        "application/json",
        br#"{"username": "system"}"#,
    );
    assert_error((r.status, r.json()), 400, "password");

    let before = now();
    let token = login(api, "system", "sys");
    let after = now();
    // The token's shape: an HS256 JWT {sub, ip, iat, exp}, 6 hours.
    let parts: Vec<&str> = token.split('.').collect();
    let head: Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(head["alg"], "HS256", "{head}");
    let c = jwt_claims(&token);
    assert_eq!(c["sub"], "system");
    assert_eq!(c["ip"], "127.0.0.1");
    let iat = c["iat"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&iat),
        "iat {iat} in {before}..{after}"
    );
    assert_eq!(c["exp"].as_i64().unwrap() - iat, 6 * 3600);
    // Signed with the ledger's key (the bytes of its hex text): our HMAC gives the same.
    let key = t.token_key();
    assert_eq!(key.len(), 64, "32 random bytes as hex");
    assert!(key.iter().all(u8::is_ascii_hexdigit));
    let sig = hmac_sha256(&key, format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert_eq!(
        b64url(&sig),
        parts[2],
        "the signature is HMAC-SHA256 with the key"
    );

    // The token works for a GET, with and without a trailing slash.
    for path in ["/api/tariscope/version", "/api/tariscope/version/"] {
        assert_eq!(get_ok(api, &token, path), json!({"version": "0.1.0"}));
    }
    // Without a token, or without "Bearer".
    let r = request(None, api, "GET", "/api/tariscope/version", None, "", b"");
    assert_error((r.status, r.json()), 401, "Bearer");
    let r = request(
        None,
        api,
        "GET",
        "/api/tariscope/version",
        Some(&token),
        "",
        b"",
    );
    assert_error((r.status, r.json()), 401, "Bearer");

    // From another IP: refused; a token issued there works there and not here.
    let other = ip("127.0.0.2");
    let r = request(
        other,
        api,
        "GET",
        "/api/tariscope/version",
        Some(&bearer(&token)),
        "",
        b"",
    );
    assert_error((r.status, r.json()), 401, "another IP");
    let token2 = login_from(other, api, "system", "sys");
    assert_eq!(jwt_claims(&token2)["ip"], "127.0.0.2");
    let r = request(
        other,
        api,
        "GET",
        "/api/tariscope/edition",
        Some(&bearer(&token2)),
        "",
        b"",
    );
    assert_eq!((r.status, r.json()), (200, json!({"edition": "ratel"})));
    assert_error(
        get(api, &token2, "/api/tariscope/edition"),
        401,
        "another IP",
    );

    // Forged: the payload changed (another user, a later expiry, another IP) under the
    // old signature; the signature of another key; alg "none"; garbage.
    let limited = login(api, "limited", "lim");
    let lp: Vec<&str> = limited.split('.').collect();
    let mut claims = jwt_claims(&limited);
    claims["sub"] = json!("system");
    let forged = format!(
        "{}.{}.{}",
        lp[0],
        b64url(claims.to_string().as_bytes()),
        lp[2]
    );
    assert_error(
        get(api, &forged, "/api/tariscope/serial"),
        401,
        "invalid token",
    );
    let mut claims = jwt_claims(&token);
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 86_400);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_error(
        get(api, &forged, "/api/tariscope/version"),
        401,
        "invalid token",
    );
    let mut claims = jwt_claims(&token);
    claims["ip"] = json!("127.0.0.2");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    );
    let r = request(
        other,
        api,
        "GET",
        "/api/tariscope/version",
        Some(&bearer(&forged)),
        "",
        b"",
    );
    assert_error((r.status, r.json()), 401, "invalid token");
    let wrong_key = jwt(
        b"0000000000000000000000000000000000000000000000000000000000000000",
        &jwt_claims(&token),
    );
    assert_error(
        get(api, &wrong_key, "/api/tariscope/version"),
        401,
        "invalid token",
    );
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert_error(
        get(api, &none, "/api/tariscope/version"),
        401,
        "invalid token",
    );
    assert_error(
        get(api, "not.a.token", "/api/tariscope/version"),
        401,
        "invalid token",
    );

    // Made here with the ledger's key: valid (exp ahead) is accepted; expired is 401.
    let n = now();
    let valid = jwt(
        &key,
        &json!({"sub": "system", "ip": "127.0.0.1", "iat": n, "exp": n + 600}),
    );
    assert_eq!(
        get_ok(api, &valid, "/api/tariscope/database"),
        json!({"database": ratel_engine::ledger::SCHEMA_VERSION})
    );
    let expired = jwt(
        &key,
        &json!({"sub": "system", "ip": "127.0.0.1", "iat": n - 7 * 3600, "exp": n - 3600}),
    );
    assert_error(get(api, &expired, "/api/tariscope/version"), 401, "expired");
    let just_expired = jwt(
        &key,
        &json!({"sub": "system", "ip": "127.0.0.1", "iat": n - 6 * 3600 - 1, "exp": n - 1}),
    );
    assert_error(
        get(api, &just_expired, "/api/tariscope/version"),
        401,
        "expired",
    );
    // Validly signed for a user that is not (or no longer) in the config.
    let ghost = jwt(
        &key,
        &json!({"sub": "ghost", "ip": "127.0.0.1", "iat": n, "exp": n + 600}),
    );
    assert_error(
        get(api, &ghost, "/api/tariscope/version"),
        401,
        "no longer exists",
    );

    // allow = ["subscriber.*", "tariscope.version"].
    assert_eq!(
        get_ok(api, &limited, "/api/tariscope/version"),
        json!({"version": "0.1.0"})
    );
    assert_error(
        get(api, &limited, "/api/subscriber/get?id=999999"),
        404,
        "999999",
    );
    for path in [
        "/api/tariscope/serial",
        "/api/tariffs/plans",
        "/api/accounts/summary?id=1&from=2026-01-01&to=2026-02-01",
    ] {
        assert_error(get(api, &limited, path), 403, "allow");
    }
    assert_error(
        post(api, &limited, "/api/sql", json!({"query": "SELECT 1"})),
        403,
        "allow",
    );
    assert_error(
        post(
            api,
            &limited,
            "/api/accounts/payment",
            json!({"id": 1, "amount": "5"}),
        ),
        403,
        "allow",
    );

    // Unknown methods: 404.
    assert_error(
        get(api, &token, "/api/subscriber/delete?id=1"),
        404,
        "no method",
    );
    assert_error(get(api, &token, "/api/tariscope"), 404, "no method");
    stop(srv);
}

// ---- 2. subscribers -----------------------------------------------------------------------

/// subscriber.create / get (by id and email, with and without a trailing slash) / update
/// (a field cleared with null) / list.department / list.node (a RADIUS session open on
/// the NAS), with the seed's 28 fields and the error statuses.
#[test]
fn subscribers_are_created_read_updated_and_listed() {
    let t = T::new();
    let (srv, radius, api) = t.serve();
    let tok = login(api, "system", "sys");

    let ivan = post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({
            "department": "g",
            "fullname": "Ivan Petrenko",
            "email": "ivan@example.com",
            "street": "Khreshchatyk",
            "House": "12a",
            "Flat": "7",
            "gender": "m",
            "username": "ivan",
            "password": "ipw",
            "credit": "10",
        }),
    );
    let id = ivan["id"].as_i64().unwrap_or_else(|| panic!("id: {ivan}"));
    let want = subscriber(
        id,
        json!({"fullname": "Ivan Petrenko", "email": "ivan@example.com",
               "street": "Khreshchatyk", "House": "12a", "Flat": "7", "gender": "m"}),
    );
    assert_eq!(ivan, want);
    // Exactly the seed's 28 keys, spelled as the seed spells them.
    let mut keys: Vec<&str> = ivan
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut seed = SEED_FIELDS.to_vec();
    keys.sort_unstable();
    seed.sort_unstable();
    assert_eq!(keys, seed);

    // A second subscriber, in g2, without credentials.
    let olena_v = post_ok(
        api,
        &tok,
        "/api/subscriber/create/",
        json!({"department": "g2", "fullname": "Olena Kovalenko", "email": "olena@example.com",
               "zipcode": 1001, "ispublic": true}),
    );
    let olena = olena_v["id"].as_i64().unwrap();
    assert_ne!(olena, id);
    assert_eq!(
        olena_v,
        subscriber(
            olena,
            json!({"fullname": "Olena Kovalenko", "email": "olena@example.com",
                   "zipcode": "1001", "ispublic": "true"})
        )
    );

    // get by id and by email, with and without the trailing slash (the seed's form).
    for path in [
        format!("/api/subscriber/get?id={id}"),
        format!("/api/subscriber/get/?id={id}"),
        "/api/subscriber/get?email=ivan@example.com".to_string(),
        "/api/subscriber/get/?email=ivan%40example.com".to_string(),
    ] {
        assert_eq!(get_ok(api, &tok, &path), want, "{path}");
    }

    // update: fields changed, one cleared with null, one set.
    let updated = post_ok(
        api,
        &tok,
        "/api/subscriber/update",
        json!({"id": id, "fullname": "Ivan P. Petrenko", "Flat": null, "zipcode": "01001",
               "contractdate": "2026-01-15"}),
    );
    let want = subscriber(
        id,
        json!({"fullname": "Ivan P. Petrenko", "email": "ivan@example.com",
               "street": "Khreshchatyk", "House": "12a", "zipcode": "01001",
               "contractdate": "2026-01-15", "gender": "m"}),
    );
    assert_eq!(updated, want);
    assert_eq!(
        get_ok(api, &tok, &format!("/api/subscriber/get/?id={id}")),
        want
    );
    // The id may also come in the query string.
    let updated = post_ok(
        api,
        &tok,
        &format!("/api/subscriber/update/?id={id}"),
        json!({"description": "VIP"}),
    );
    let mut want2 = want.clone();
    want2["description"] = json!("VIP");
    assert_eq!(updated, want2);
    assert_eq!(
        get_ok(api, &tok, "/api/subscriber/get?email=ivan@example.com"),
        want2
    );

    // list.department: each group its own subscribers.
    assert_eq!(
        ids(&get_ok(api, &tok, "/api/subscriber/list/department?id=g")),
        vec![id]
    );
    assert_eq!(
        ids(&get_ok(api, &tok, "/api/subscriber/list/department/?id=g2")),
        vec![olena]
    );
    let list = get_ok(api, &tok, "/api/subscriber/list/department?id=g");
    assert_eq!(list, json!([want2]));

    // list.node: nobody online yet; a RADIUS Start for ivan on ras1 lists him there only.
    assert_eq!(
        get_ok(api, &tok, "/api/subscriber/list/node?id=ras1"),
        json!([])
    );
    let c = client();
    assert!(
        send(&c, radius, &acct(1, 1, "ivan", "sess-1", 0, 0, 0, None)).is_some(),
        "Start answered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = get_ok(api, &tok, "/api/subscriber/list/node/?id=ras1");
        if !l.as_array().unwrap().is_empty() {
            assert_eq!(l, json!([want2]), "only ivan is online on ras1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ivan not online on ras1 after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_ok(api, &tok, "/api/subscriber/list/node?id=ras2"),
        json!([])
    );

    // Errors.
    assert_error(
        get(api, &tok, "/api/subscriber/get?id=999999"),
        404,
        "999999",
    );
    assert_error(
        get(api, &tok, "/api/subscriber/get/?email=nobody@example.com"),
        404,
        "nobody@example.com",
    );
    assert_error(get(api, &tok, "/api/subscriber/get"), 400, "id or email");
    assert_error(get(api, &tok, "/api/subscriber/get?id=abc"), 400, "id");
    assert_error(
        get(api, &tok, "/api/subscriber/list/department?id=nope"),
        404,
        "nope",
    );
    assert_error(get(api, &tok, "/api/subscriber/list/department"), 400, "id");
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/update",
            json!({"id": 999999, "fullname": "x"}),
        ),
        404,
        "999999",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/update",
            json!({"id": id, "nickname": "x"}),
        ),
        400,
        "nickname",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/create",
            json!({"fullname": "No Group"}),
        ),
        400,
        "department",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/create",
            json!({"department": "nope", "fullname": "x"}),
        ),
        404,
        "nope",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/create",
            json!({"department": "g", "username": "solo"}),
        ),
        400,
        "both or neither",
    );
    // A taken username: 409.
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/create",
            json!({"department": "g", "username": "ivan", "password": "x"}),
        ),
        409,
        "ivan",
    );
    // Malformed JSON body: 400.
    let r = request(
        None,
        api,
        "POST",
        "/api/subscriber/update",
        Some(&bearer(&tok)),
        "application/json",
        b"{not json",
    );
    assert_error((r.status, r.json()), 400, "JSON");
    // The refusals changed nothing.
    assert_eq!(
        get_ok(api, &tok, &format!("/api/subscriber/get?id={id}")),
        want2
    );
    assert_eq!(
        ids(&get_ok(api, &tok, "/api/subscriber/list/department?id=g")),
        vec![id]
    );
    stop(srv);
}

// ---- 3. DNs, calls and the account --------------------------------------------------------

/// A DN added in one written form bills the subscriber for a CDR whose caller number is
/// written in another; accounts.summary shows the call and the balances; a payment and a
/// cancellation of the period's charges move the balance; a taken DN is 409.
#[test]
fn a_dn_bills_its_subscriber_and_the_account_shows_it() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let tok = login(api, "system", "sys");

    let ivan = post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "Ivan", "credit": "10"}),
    )["id"]
        .as_i64()
        .unwrap();
    let olena = post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "Olena", "credit": "3"}),
    )["id"]
        .as_i64()
        .unwrap();
    // The period starts after both creations (their credit is the opening balance).
    let from = now() + 1;
    let to = from + 86_400;

    assert_eq!(
        post_ok(
            api,
            &tok,
            "/api/subscriber/dnadd",
            json!({"id": ivan, "dn": "+1 (917) 375-0980"})
        ),
        json!({"id": ivan, "dn": "19173750980"})
    );
    // The same number written otherwise, for another subscriber: taken.
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/dnadd",
            json!({"id": olena, "dn": "001-917-375-0980"}),
        ),
        409,
        "",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/dnadd",
            json!({"id": olena, "dn": "abc"}),
        ),
        400,
        "dn",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/subscriber/dnadd",
            json!({"id": 999999, "dn": "380441234567"}),
        ),
        404,
        "999999",
    );
    assert_error(
        post(api, &tok, "/api/subscriber/dnadd", json!({"id": olena})),
        400,
        "dn",
    );

    // Wait until the period has begun, then a call from that DN (written "00...") at its
    // start, and a call of nobody's.
    while now() < from {
        std::thread::sleep(Duration::from_millis(50));
    }
    t.drop_cdr(
        "calls.csv",
        &format!(
            "{GENERIC_HEADER}\
             ts-ivan,0019173750980,442071230003,{start},45,ANSWERED,\n\
             ts-nobody,5559999,15551230004,{start},30,ANSWERED,nobody\n",
            start = iso(from)
        ),
    );
    t.wait_spool_done(1);
    t.wait_charged(ivan, 1);

    // Prefix 44: 45 s -> 30 + ceil(15 / 6) * 6 = 48 s billed; 48/60 * 0.03 = 0.024 + fee
    // 0.01 = 0.034 (4 decimals, up: 0.034). Ivan: 10 - 0.034 = 9.966.
    let period = format!("from={}&to={}", iso(from), iso(to));
    let s = get_ok(
        api,
        &tok,
        &format!("/api/accounts/summary?id={ivan}&{period}"),
    );
    let m = |k: &str| money(&s[k]);
    assert_eq!(s["id"], json!(ivan));
    assert_eq!(s["from"], json!(iso(from)));
    assert_eq!(s["to"], json!(iso(to)));
    assert_eq!(m("opening_balance"), d("10"), "{s}");
    assert_eq!(m("closing_balance"), d("9.966"), "{s}");
    assert_eq!(m("payments"), d("0"), "{s}");
    assert_eq!(m("charges"), d("0.034"), "{s}");
    assert_eq!(m("refunds"), d("0"), "{s}");
    assert_eq!(s["calls"]["count"], json!(1), "{s}");
    assert_eq!(s["calls"]["seconds"], json!(48), "{s}");
    assert_eq!(money(&s["calls"]["cost"]), d("0.034"), "{s}");
    assert_eq!(s["internet"]["sessions"], json!(0), "{s}");
    assert_eq!(s["internet"]["seconds"], json!(0), "{s}");
    assert_eq!(s["internet"]["bytes_in"], json!(0), "{s}");
    assert_eq!(s["internet"]["bytes_out"], json!(0), "{s}");
    assert_eq!(money(&s["internet"]["cost"]), d("0"), "{s}");
    // Olena: not charged.
    let so = get_ok(
        api,
        &tok,
        &format!("/api/accounts/summary/?id={olena}&{period}"),
    );
    assert_eq!(money(&so["opening_balance"]), d("3"), "{so}");
    assert_eq!(money(&so["closing_balance"]), d("3"), "{so}");
    assert_eq!(so["calls"]["count"], json!(0), "{so}");
    // A period before any of it: the creation credit only.
    let early = format!("from={}&to={}", iso(from - 86_400 * 400), iso(from));
    let se = get_ok(
        api,
        &tok,
        &format!("/api/accounts/summary?id={ivan}&{early}"),
    );
    assert_eq!(money(&se["opening_balance"]), d("0"), "{se}");
    assert_eq!(money(&se["payments"]), d("10"), "{se}");
    assert_eq!(money(&se["closing_balance"]), d("10"), "{se}");
    assert_eq!(se["calls"]["count"], json!(0), "{se}");

    // A payment: 9.966 + 5 = 14.966.
    let p = post_ok(
        api,
        &tok,
        "/api/accounts/payment",
        json!({"id": ivan, "amount": "5", "comment": "cash desk 3"}),
    );
    assert_eq!(p["id"], json!(ivan), "{p}");
    assert_eq!(money(&p["amount"]), d("5"), "{p}");
    assert_eq!(money(&p["balance"]), d("14.966"), "{p}");
    let payment_id = p["payment_id"].as_i64().unwrap_or_else(|| panic!("{p}"));
    let ps = get_ok(
        api,
        &tok,
        &format!("/api/accounts/payments?id={ivan}&{period}"),
    );
    assert_eq!(ps["id"], json!(ivan), "{ps}");
    let rows = ps["payments"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ps}");
    assert_eq!(rows[0]["id"], json!(payment_id), "{ps}");
    assert_eq!(money(&rows[0]["amount"]), d("5"), "{ps}");
    assert_eq!(money(&rows[0]["balance_after"]), d("14.966"), "{ps}");
    assert_eq!(rows[0]["comment"], "cash desk 3", "{ps}");
    assert_eq!(rows[0]["admin"], "system", "{ps}");
    let date = rows[0]["date"].as_str().unwrap();
    assert!(
        date >= iso(from).as_str() && date < iso(to).as_str(),
        "{ps}"
    );
    // Over a wide period: the creation credit too.
    let wide = format!("from={}&to={}", iso(from - 86_400 * 400), iso(to));
    let pw = get_ok(
        api,
        &tok,
        &format!("/api/accounts/payments/?id={ivan}&{wide}"),
    );
    let amounts: Vec<Decimal> = pw["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| money(&r["amount"]))
        .collect();
    assert_eq!(amounts, vec![d("10"), d("5")], "{pw}");
    for bad in [json!("0"), json!("-1"), json!("abc")] {
        assert_error(
            post(
                api,
                &tok,
                "/api/accounts/payment",
                json!({"id": ivan, "amount": bad}),
            ),
            400,
            "amount",
        );
    }
    assert_error(
        post(
            api,
            &tok,
            "/api/accounts/payment",
            json!({"id": 999999, "amount": "1"}),
        ),
        404,
        "999999",
    );

    // Cancel the period's charges: the call's 0.034 back; 14.966 + 0.034 = 15.
    let body = json!({"id": ivan, "from": iso(from), "to": iso(to)});
    let c = post_ok(api, &tok, "/api/accounts/charges", body.clone());
    assert_eq!(c["id"], json!(ivan), "{c}");
    assert_eq!(c["cancelled"], json!(1), "{c}");
    assert_eq!(money(&c["amount"]), d("0.034"), "{c}");
    assert_eq!(money(&c["balance"]), d("15"), "{c}");
    // Again: nothing left to cancel.
    let c = post_ok(api, &tok, "/api/accounts/charges/", body);
    assert_eq!(c["cancelled"], json!(0), "{c}");
    assert_eq!(money(&c["amount"]), d("0"), "{c}");
    assert_eq!(money(&c["balance"]), d("15"), "{c}");
    // The summary after: 10 + 5 - 0.034 + 0.034 = 15.
    let s = get_ok(
        api,
        &tok,
        &format!("/api/accounts/summary?id={ivan}&{period}"),
    );
    assert_eq!(money(&s["opening_balance"]), d("10"), "{s}");
    assert_eq!(money(&s["payments"]), d("5"), "{s}");
    assert_eq!(money(&s["charges"]), d("0.034"), "{s}");
    assert_eq!(money(&s["refunds"]), d("0.034"), "{s}");
    assert_eq!(money(&s["closing_balance"]), d("15"), "{s}");
    assert_eq!(s["calls"]["count"], json!(1), "{s}");
    assert_eq!(money(&s["calls"]["cost"]), d("0.034"), "{s}");
    // The subscriber's account through another method agrees (ledger).
    let credit: String = t
        .ledger_ro()
        .query_row("SELECT credit FROM users WHERE user_id = ?1", [ivan], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(d(&credit), d("15"));

    // Errors of the account methods.
    assert_error(
        get(
            api,
            &tok,
            &format!("/api/accounts/summary?id=999999&{period}"),
        ),
        404,
        "999999",
    );
    assert_error(
        get(api, &tok, &format!("/api/accounts/summary?id={ivan}")),
        400,
        "from",
    );
    assert_error(
        get(
            api,
            &tok,
            &format!("/api/accounts/summary?id={ivan}&from=yesterday&to=2026-12-31"),
        ),
        400,
        "from",
    );
    assert_error(
        get(
            api,
            &tok,
            &format!(
                "/api/accounts/summary?id={ivan}&from={}&to={}",
                iso(to),
                iso(from)
            ),
        ),
        400,
        "after",
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/accounts/charges",
            json!({"id": 999999, "from": iso(from), "to": iso(to)}),
        ),
        404,
        "999999",
    );
    stop(srv);
}

/// A `services.list` entry: (id, name, type, price per minute, price per GB).
type Service = (Value, String, String, Option<Decimal>, Option<Decimal>);

// ---- 4. tariffs, services, system ---------------------------------------------------------

/// tariffs.plans / details / time (the row in force at an hour), services.list, and the
/// tariscope.* methods; the serial (and a token) survive a restart.
#[test]
fn tariffs_services_and_system_information() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let tok = login(api, "system", "sys");

    assert_eq!(
        get_ok(api, &tok, "/api/tariffs/plans"),
        json!([
            {"id": 1, "name": "g", "tariff": "std", "decimals": 4},
            {"id": 2, "name": "g2", "tariff": null, "decimals": 2},
        ])
    );

    // details: all tariffs, then one by tariff name, group name or group id.
    assert_eq!(
        get_ok(api, &tok, "/api/tariffs/details"),
        json!([{"name": "std", "rows": 4, "prefixes": 3}])
    );
    for id in ["std", "g", "1"] {
        let v = get_ok(api, &tok, &format!("/api/tariffs/details/?id={id}"));
        assert_eq!(v["name"], "std", "{v}");
        assert_eq!(v["prefixes"], json!(3), "{v}");
        let rates: Vec<(String, Decimal, Decimal, i64, i64)> = v["rates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r.as_object().unwrap().len(), 5, "{r}");
                (
                    r["description"].as_str().unwrap().to_string(),
                    money(&r["price_per_minute"]),
                    money(&r["connect_fee"]),
                    r["first_increment"].as_i64().unwrap(),
                    r["next_increment"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rates,
            vec![
                ("USA".into(), d("0.01"), d("0"), 60, 60),
                ("UK".into(), d("0.03"), d("0.01"), 30, 6),
                ("RU night".into(), d("0.01"), d("0.02"), 60, 60),
                ("RU day".into(), d("0.04"), d("0"), 60, 60),
            ],
            "details of {id}"
        );
    }
    assert_error(get(api, &tok, "/api/tariffs/details?id=g2"), 404, "g2");
    assert_error(get(api, &tok, "/api/tariffs/details?id=nope"), 404, "nope");

    // time: prefix 7 is "RU night" 22:00-06:00 and "RU day" 06:00-22:00 (UTC).
    let at_hour = |hour: u32, extra: &str| -> Vec<(String, String, Decimal, Decimal)> {
        let v = get_ok(
            api,
            &tok,
            &format!("/api/tariffs/time?id=std&hour={hour}{extra}"),
        );
        assert_eq!(v["name"], "std", "{v}");
        assert_eq!(v["hour"], json!(hour), "{v}");
        v["rates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["prefix"].as_str().unwrap().to_string(),
                    r["description"].as_str().unwrap().to_string(),
                    money(&r["price_per_minute"]),
                    money(&r["connect_fee"]),
                )
            })
            .collect()
    };
    let night = (
        "7".to_string(),
        "RU night".to_string(),
        d("0.01"),
        d("0.02"),
    );
    let day = ("7".to_string(), "RU day".to_string(), d("0.04"), d("0"));
    let fixed = vec![
        ("1".to_string(), "USA".to_string(), d("0.01"), d("0")),
        ("44".to_string(), "UK".to_string(), d("0.03"), d("0.01")),
    ];
    for (hour, want) in [
        (0, &night),
        (5, &night),
        (6, &day),
        (12, &day),
        (21, &day),
        (22, &night),
        (23, &night),
    ] {
        let mut all = fixed.clone();
        all.push(want.clone());
        assert_eq!(at_hour(hour, ""), all, "hour {hour}");
        assert_eq!(
            at_hour(hour, "&prefix=7"),
            vec![want.clone()],
            "hour {hour}"
        );
    }
    // By group too.
    let v = get_ok(api, &tok, "/api/tariffs/time/?id=g&hour=23&prefix=7");
    assert_eq!(v["rates"][0]["description"], "RU night", "{v}");
    assert_error(
        get(api, &tok, "/api/tariffs/time?id=std&hour=24"),
        400,
        "hour",
    );
    assert_error(get(api, &tok, "/api/tariffs/time?id=std"), 400, "hour");
    assert_error(
        get(api, &tok, "/api/tariffs/time?id=nope&hour=1"),
        404,
        "nope",
    );

    // services.list: the charge rules (internet), then the tariffs (voice).
    let v = get_ok(api, &tok, "/api/services/list");
    let services: Vec<Service> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let opt = |k: &str| s.get(k).filter(|x| !x.is_null()).map(money);
            (
                s["id"].clone(),
                s["name"].as_str().unwrap().to_string(),
                s["type"].as_str().unwrap().to_string(),
                opt("price_per_minute"),
                opt("price_per_gb"),
            )
        })
        .collect();
    assert_eq!(
        services,
        vec![
            (
                json!(1),
                "day".into(),
                "internet".into(),
                Some(d("0.01")),
                Some(d("0.5"))
            ),
            (
                json!(2),
                "night".into(),
                "internet".into(),
                Some(d("0.005")),
                Some(d("0.25"))
            ),
            (
                json!(3),
                "flat".into(),
                "internet".into(),
                Some(d("0.02")),
                Some(d("1"))
            ),
            (Value::Null, "std".into(), "voice".into(), None, None),
        ],
        "{v}"
    );

    // tariscope.*
    assert_eq!(
        get_ok(api, &tok, "/api/tariscope/version"),
        json!({"version": "0.1.0"})
    );
    assert_eq!(
        get_ok(api, &tok, "/api/tariscope/database/"),
        json!({"database": ratel_engine::ledger::SCHEMA_VERSION})
    );
    assert_eq!(
        get_ok(api, &tok, "/api/tariscope/edition"),
        json!({"edition": "ratel"})
    );
    let build = get_ok(api, &tok, "/api/tariscope/build")["build"]
        .as_str()
        .unwrap()
        .to_string();
    let b = build.as_bytes();
    assert!(
        b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit()),
        "build {build:?} is YYYY-MM-DD"
    );
    assert!(
        chrono::NaiveDate::parse_from_str(&build, "%Y-%m-%d").is_ok(),
        "{build}"
    );
    let serial = get_ok(api, &tok, "/api/tariscope/serial")["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        serial.len() == 16 && serial.bytes().all(|c| c.is_ascii_hexdigit()),
        "serial {serial:?}: 16 hex digits"
    );
    let summary = get_ok(api, &tok, "/api/tariscope/summary");
    assert_eq!(
        summary,
        json!({
            "version": "0.1.0",
            "database": ratel_engine::ledger::SCHEMA_VERSION,
            "build": build,
            "serial": serial,
            "edition": "ratel",
            "groups": 2,
            "tariffs": 1,
            "nas": 1,
            "online_sessions": 0,
        })
    );

    // A restart: the same serial, and the token still works (the key is the ledger's).
    stop(srv);
    let (srv, _radius, api) = t.serve();
    assert_eq!(
        get_ok(api, &tok, "/api/tariscope/serial"),
        json!({"serial": serial})
    );
    let tok2 = login(api, "system", "sys");
    assert_eq!(
        get_ok(api, &tok2, "/api/tariscope/serial/"),
        json!({"serial": serial})
    );
    stop(srv);
}

// ---- 5. sql -------------------------------------------------------------------------------

/// `POST /api/sql`: one read-only statement; writes, ATTACH, PRAGMA and two statements are
/// refused (and change nothing); a statement running past 5 s is stopped; more than
/// 10,000 rows are cut with truncated = true.
#[test]
fn sql_reads_only_within_limits() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let tok = login(api, "system", "sys");
    for name in ["A", "B", "C"] {
        post_ok(
            api,
            &tok,
            "/api/subscriber/create",
            json!({"department": "g", "fullname": name}),
        );
    }

    let count = json!({"query": "SELECT count(*) AS n FROM users"});
    assert_eq!(
        post_ok(api, &tok, "/api/sql", count.clone()),
        json!({"columns": ["n"], "rows": [[3]], "truncated": false})
    );
    let v = post_ok(
        api,
        &tok,
        "/api/sql/",
        json!({"query": "SELECT key, value FROM profile WHERE key = 'fullname' ORDER BY value"}),
    );
    assert_eq!(
        v,
        json!({"columns": ["key", "value"],
               "rows": [["fullname", "A"], ["fullname", "B"], ["fullname", "C"]],
               "truncated": false})
    );
    let v = post_ok(
        api,
        &tok,
        "/api/sql",
        json!({"query": "SELECT 1 AS i, 2.5 AS r, 'x' AS t, NULL AS z, x'00ff' AS b"}),
    );
    assert_eq!(v["columns"], json!(["i", "r", "t", "z", "b"]), "{v}");
    assert_eq!(v["rows"][0][0], json!(1), "{v}");
    assert_eq!(v["rows"][0][2], json!("x"), "{v}");
    assert_eq!(v["rows"][0][3], Value::Null, "{v}");

    // Refused: writes, ATTACH, PRAGMA, two statements; none of them did anything.
    let attached = t.dir.path().join("attached.sqlite");
    for q in [
        "DELETE FROM users".to_string(),
        "UPDATE users SET credit = '1000000'".to_string(),
        "INSERT INTO meta(key, value) VALUES ('x', 'y')".to_string(),
        "DROP TABLE journal".to_string(),
        format!("ATTACH DATABASE '{}' AS x", attached.display()),
        "PRAGMA writable_schema=1".to_string(),
        "SELECT 1; SELECT 2".to_string(),
        "SELECT 1; DELETE FROM users".to_string(),
        "BEGIN IMMEDIATE".to_string(),
    ] {
        let (s, v) = post(api, &tok, "/api/sql", json!({"query": q}));
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{q}: {v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 1, "{q}: {v}");
    }
    assert!(!attached.exists(), "ATTACH created {attached:?}");
    assert_eq!(
        post_ok(api, &tok, "/api/sql", count.clone()),
        json!({"columns": ["n"], "rows": [[3]], "truncated": false})
    );
    assert_error(post(api, &tok, "/api/sql", json!({})), 400, "query");
    assert_error(
        post(api, &tok, "/api/sql", json!({"query": "SELEKT 1"})),
        400,
        "",
    );
    // sql is a POST.
    assert_eq!(get(api, &tok, "/api/sql?query=SELECT%201").0, 405);

    // Runs ~forever: stopped at about 5 s with 400.
    let started = Instant::now();
    let (s, v) = post(
        api,
        &tok,
        "/api/sql",
        json!({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"}),
    );
    let took = started.elapsed();
    assert_eq!(s, 400, "{v}");
    let e = v["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(e.contains("stopped") || e.contains("longer"), "{v}");
    assert!(
        took < Duration::from_secs(15),
        "stopped only after {took:?}"
    );
    // The API still answers afterwards.
    assert_eq!(
        post_ok(api, &tok, "/api/sql", count),
        json!({"columns": ["n"], "rows": [[3]], "truncated": false})
    );

    // 20,000 rows: the first 10,000, truncated.
    let v = post_ok(
        api,
        &tok,
        "/api/sql",
        json!({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000) SELECT x FROM c"}),
    );
    assert_eq!(v["columns"], json!(["x"]));
    assert_eq!(v["truncated"], json!(true));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10_000);
    assert_eq!(rows[0], json!([1]));
    assert_eq!(rows[9_999], json!([10_000]));
    // Exactly 10,000 is not truncated.
    let v = post_ok(
        api,
        &tok,
        "/api/sql",
        json!({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 10000) SELECT x FROM c"}),
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 10_000);
    assert_eq!(v["truncated"], json!(false));
    stop(srv);
}

/// The token signing key lives in the ledger's `meta` table, which `sql` reads: an API
/// user allowed `sql` only ("reader") reads it and signs a token for "system", whose
/// `allow` is everything, and moves money. The key must not be readable through `sql`.
#[test]
fn sql_cannot_read_the_token_signing_key() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let reader = login(api, "reader", "rd");
    assert_error(get(api, &reader, "/api/tariscope/version"), 403, "allow");
    let (s, v) = post(
        api,
        &reader,
        "/api/sql",
        json!({"query": "SELECT value FROM meta WHERE key = 'api_token_key'"}),
    );
    if let Some(key) = v["rows"][0][0].as_str() {
        // What the reader can do with it: a token of "system", and a payment.
        let n = now();
        let minted = jwt(
            key.as_bytes(),
            &json!({"sub": "system", "ip": "127.0.0.1", "iat": n, "exp": n + 600}),
        );
        let id = post(
            api,
            &minted,
            "/api/subscriber/create",
            json!({"department": "g", "fullname": "Mallory"}),
        );
        panic!(
            "an sql-only user read the signing key ({s}: {v}); with a token it signed itself \
             it called subscriber.create: {id:?}"
        );
    }
    assert_eq!(s, 400, "{v}");
    stop(srv);
}

// ---- 6. XML -------------------------------------------------------------------------------

/// `/xml` after the method path: XML requests (a root element with flat children) and
/// answers (`<response>`, arrays as `<item>`, null as `nil="true"`), errors included.
#[test]
fn xml_form_of_every_method_family() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();

    // auth/xml.
    let r = xml_req(
        api,
        None,
        "POST",
        "/api/auth/xml",
        "<?xml version=\"1.0\"?><request><username>system</username><password>sys</password></request>",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    assert_eq!(x.name, "response");
    let tok = x.get("token").unwrap();
    assert_eq!(jwt_claims(&tok)["sub"], "system");
    // A wrong password: 401 in XML.
    let r = xml_req(
        api,
        None,
        "POST",
        "/api/auth/xml/",
        "<request><username>system</username><password>nope</password></request>",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let x = r.xml();
    assert_eq!(x.name, "response");
    assert_eq!(x.children.len(), 1, "{x:?}");
    assert_eq!(x.get("error").unwrap(), "wrong username or password");
    // A malformed XML body: 400 in XML.
    let r = xml_req(
        api,
        None,
        "POST",
        "/api/auth/xml",
        "<request><username>system</request>",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.xml().get("error").unwrap().contains("XML"), "{r:?}");

    // subscriber/create/xml with escapes both ways.
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/subscriber/create/xml",
        "<request><department>g</department><fullname>Taras &amp; Sons &lt;TS&gt;</fullname>\
         <email>taras@example.com</email><House>5</House><Flat/><zipcode nil=\"true\"/>\
         <credit>2.5</credit></request>",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    assert_eq!(x.name, "response");
    // The seed's 28 fields, each once (their order: see
    // `xml_subscriber_fields_come_in_the_seed_order`).
    let mut names: Vec<&str> = x.children.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let mut seed = SEED_FIELDS.to_vec();
    seed.sort_unstable();
    assert_eq!(names, seed, "the seed's fields");
    let id: i64 = x.get("id").unwrap().parse().unwrap();
    assert_eq!(x.get("accountId").unwrap(), id.to_string());
    assert_eq!(x.get("fullname").unwrap(), "Taras & Sons <TS>");
    assert!(
        r.body
            .contains("<fullname>Taras &amp; Sons &lt;TS&gt;</fullname>"),
        "{}",
        r.body
    );
    assert_eq!(x.get("email").unwrap(), "taras@example.com");
    assert_eq!(x.get("House").unwrap(), "5");
    assert_eq!(x.get("street"), None);
    assert_eq!(x.get("zipcode"), None);
    assert!(r.body.contains("<street nil=\"true\"/>"), "{}", r.body);

    // subscriber/get/xml/?id= (the seed's form) and without the trailing slash.
    for path in [
        format!("/api/subscriber/get/xml/?id={id}"),
        format!("/api/subscriber/get/xml?id={id}"),
        "/api/subscriber/get/xml/?email=taras@example.com".to_string(),
    ] {
        let r = xml_req(api, Some(&tok), "GET", &path, "");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let g = r.xml();
        assert_eq!(g.get("id").unwrap(), id.to_string(), "{path}");
        assert_eq!(g.get("fullname").unwrap(), "Taras & Sons <TS>", "{path}");
        assert_eq!(g.children.len(), 28, "{path}");
    }
    // The same subscriber in JSON.
    assert_eq!(
        get_ok(api, &tok, &format!("/api/subscriber/get?id={id}")),
        subscriber(
            id,
            json!({"fullname": "Taras & Sons <TS>", "email": "taras@example.com", "House": "5",
                   "Flat": ""})
        )
    );

    // subscriber/update/xml with an XML body: one set, one cleared.
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/subscriber/update/xml",
        &format!(
            "<request><id>{id}</id><street>Shevchenka</street><House nil=\"true\"/>\
             <description>x &lt; y</description></request>"
        ),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    assert_eq!(x.get("street").unwrap(), "Shevchenka");
    assert_eq!(x.get("House"), None);
    assert_eq!(x.get("description").unwrap(), "x < y");
    let g = xml_req(
        api,
        Some(&tok),
        "GET",
        &format!("/api/subscriber/get/xml/?id={id}"),
        "",
    )
    .xml();
    assert_eq!(g.get("street").unwrap(), "Shevchenka");
    assert_eq!(g.get("House"), None);

    // subscriber/list/department/xml: an array of <item>s.
    let r = xml_req(
        api,
        Some(&tok),
        "GET",
        "/api/subscriber/list/department/xml/?id=g",
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    let items = x.items();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].get("id").unwrap(), id.to_string());

    // accounts/summary/xml: nested objects.
    let from = iso(now() - 3600);
    let to = iso(now() + 3600);
    let r = xml_req(
        api,
        Some(&tok),
        "GET",
        &format!("/api/accounts/summary/xml/?id={id}&from={from}&to={to}"),
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    assert_eq!(x.get("id").unwrap(), id.to_string());
    assert_eq!(x.get("from").unwrap(), from);
    assert_eq!(d(&x.get("opening_balance").unwrap()), d("0"));
    assert_eq!(d(&x.get("payments").unwrap()), d("2.5"));
    assert_eq!(d(&x.get("closing_balance").unwrap()), d("2.5"));
    assert_eq!(x.child("calls").get("count").unwrap(), "0");
    assert_eq!(x.child("internet").get("sessions").unwrap(), "0");
    // accounts/payment/xml: an XML body.
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/accounts/payment/xml",
        &format!("<request><id>{id}</id><amount>1.25</amount></request>"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d(&r.xml().get("balance").unwrap()), d("3.75"));

    // tariscope/version/xml and a list: tariffs/plans/xml.
    let r = xml_req(api, Some(&tok), "GET", "/api/tariscope/version/xml", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.xml().get("version").unwrap(), "0.1.0");
    let r = xml_req(api, Some(&tok), "GET", "/api/tariffs/plans/xml/", "");
    let x = r.xml();
    let plans = x.items();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].get("name").unwrap(), "g");
    assert_eq!(plans[0].get("tariff").unwrap(), "std");
    assert_eq!(plans[1].get("name").unwrap(), "g2");
    assert_eq!(plans[1].get("tariff"), None);

    // sql/xml: the query in an XML body (with an escaped "<"), rows of items.
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/sql/xml",
        "<request><query>SELECT count(*) AS n FROM users WHERE user_id &lt; 1000000</query></request>",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    let cols: Vec<String> = x
        .child("columns")
        .items()
        .iter()
        .map(|i| i.text.clone())
        .collect();
    assert_eq!(cols, vec!["n"]);
    let rows = x.child("rows").items();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].items()[0].text, "1");
    assert_eq!(x.get("truncated").unwrap(), "false");
    // A refused statement: 400 in XML.
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/sql/xml",
        "<request><query>DELETE FROM users</query></request>",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.xml().get("error").unwrap().is_empty());

    // Errors in XML: 404 (unknown id, unknown method), 401 (no token), 403 (allow), 409.
    let r = xml_req(
        api,
        Some(&tok),
        "GET",
        "/api/subscriber/get/xml/?id=999999",
        "",
    );
    assert_eq!(r.status, 404, "{r:?}");
    let x = r.xml();
    assert_eq!(x.name, "response");
    assert!(x.get("error").unwrap().contains("999999"), "{r:?}");
    let r = xml_req(api, Some(&tok), "GET", "/api/nothing/here/xml", "");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.xml().get("error").unwrap().contains("no method"), "{r:?}");
    let r = xml_req(api, None, "GET", "/api/tariscope/version/xml", "");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.xml().get("error").unwrap().contains("Bearer"), "{r:?}");
    let limited = login(api, "limited", "lim");
    let r = xml_req(api, Some(&limited), "GET", "/api/tariscope/serial/xml", "");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.xml().get("error").unwrap().contains("allow"), "{r:?}");
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/subscriber/dnadd/xml",
        &format!("<request><id>{id}</id><dn>380441234567</dn></request>"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.xml().get("dn").unwrap(), "380441234567");
    let other = post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "Other"}),
    )["id"]
        .as_i64()
        .unwrap();
    let r = xml_req(
        api,
        Some(&tok),
        "POST",
        "/api/subscriber/dnadd/xml",
        &format!("<request><id>{other}</id><dn>+380 44 123 4567</dn></request>"),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert!(!r.xml().get("error").unwrap().is_empty());
    stop(srv);
}

/// `SUBSCRIBER_FIELDS` (api/src/tariscope/mod.rs) is "in the seed's order", and the XML
/// form is read by position by some clients: the elements of a subscriber (and the keys of
/// the JSON object) should come in the seed's order, `id, fullname, street, House, Flat,
/// ...`.
#[test]
fn xml_subscriber_fields_come_in_the_seed_order() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let tok = login(api, "system", "sys");
    let id = post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "Ordered"}),
    )["id"]
        .as_i64()
        .unwrap();
    let r = xml_req(
        api,
        Some(&tok),
        "GET",
        &format!("/api/subscriber/get/xml/?id={id}"),
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.xml();
    let names: Vec<&str> = x.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        SEED_FIELDS.to_vec(),
        "XML elements in the seed's order"
    );
    // The JSON answer's keys, as written on the wire.
    let r = request(
        None,
        api,
        "GET",
        &format!("/api/subscriber/get?id={id}"),
        Some(&bearer(&tok)),
        "",
        b"",
    );
    let mut at: Vec<(usize, &str)> = SEED_FIELDS
        .iter()
        .map(|f| (r.body.find(&format!("\"{f}\":")).unwrap(), *f))
        .collect();
    at.sort_unstable();
    let keys: Vec<&str> = at.iter().map(|(_, f)| *f).collect();
    assert_eq!(keys, SEED_FIELDS.to_vec(), "JSON keys in the seed's order");
    stop(srv);
}

/// An XML answer as the JSON it was written from, every scalar as text (XML has no
/// types): what lets one assertion compare the two forms of any method.
fn el_value(e: &El) -> Value {
    if e.nil() {
        return Value::Null;
    }
    if e.children.is_empty() {
        return Value::String(e.text.clone());
    }
    if e.children.iter().all(|c| c.name == "item") {
        return Value::Array(e.children.iter().map(el_value).collect());
    }
    Value::Object(
        e.children
            .iter()
            .map(|c| (c.name.clone(), el_value(c)))
            .collect(),
    )
}

/// A JSON answer with every scalar as text and empty containers as empty text.
fn texts(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::String(s) => Value::String(s.clone()),
        Value::Array(a) if a.is_empty() => Value::String(String::new()),
        Value::Object(m) if m.is_empty() => Value::String(String::new()),
        Value::Array(a) => Value::Array(a.iter().map(texts).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), texts(x))).collect()),
        other => Value::String(other.to_string()),
    }
}

/// Every method of the dialect in both forms: each read method answers the same in JSON
/// and XML (status and content, field order included), and each write method works in
/// XML as it does in JSON.
#[test]
fn every_method_answers_the_same_in_json_and_xml() {
    let t = T::new();
    let (server, radius, api) = t.serve();
    let token = login(api, "system", "sys");
    // A subscriber with a username (online over RADIUS), a DN, a payment and a call.
    let created = post_ok(
        api,
        &token,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "Ann", "email": "ann@example.com",
               "username": "ann", "password": "pw", "credit": "10"}),
    );
    let id = created["id"].as_i64().unwrap();
    post_ok(
        api,
        &token,
        "/api/subscriber/dnadd",
        json!({"id": id, "dn": "+44 20 7946 0000"}),
    );
    let c = client();
    assert!(send(&c, radius, &acct(1, 1, "ann", "x-1", 0, 0, 0, None)).is_some());
    t.drop_cdr(
        "c1.csv",
        &format!(
            "{GENERIC_HEADER}k1,00442079460000,442071230003,2026-11-02T10:00:00Z,90,ANSWERED,\n"
        ),
    );
    t.wait_spool_done(1);
    t.wait_charged(id, 1);
    let period = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    let reads = [
        format!("subscriber/get?id={id}"),
        "subscriber/get?email=ann%40example.com".to_string(),
        "subscriber/list/department?id=g".to_string(),
        "subscriber/list/node?id=ras1".to_string(),
        format!("accounts/summary?id={id}&{period}"),
        format!("accounts/payments?id={id}&{period}"),
        "tariffs/plans".to_string(),
        "tariffs/details".to_string(),
        "tariffs/details?id=std".to_string(),
        "tariffs/time?id=std&hour=23".to_string(),
        "services/list".to_string(),
        "tariscope/version".to_string(),
        "tariscope/database".to_string(),
        "tariscope/build".to_string(),
        "tariscope/serial".to_string(),
        "tariscope/edition".to_string(),
        "tariscope/summary".to_string(),
    ];
    for path in &reads {
        let (status, body) = get(api, &token, &format!("/api/{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        let (method, query) = path.split_once('?').unwrap_or((path, ""));
        let xml_path = if query.is_empty() {
            format!("/api/{method}/xml")
        } else {
            format!("/api/{method}/xml/?{query}")
        };
        let r = xml_req(api, Some(&token), "GET", &xml_path, "");
        assert_eq!(r.status, 200, "{xml_path}: {}", r.body);
        let x = el_value(&r.xml());
        assert_eq!(x, texts(&body), "{path}: XML {} vs JSON {body}", r.body);
        // Field order too (serialized answers list fields as the JSON does).
        if let (Value::Object(a), Value::Object(b)) = (&x, &texts(&body)) {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{path}"
            );
        }
    }
    // The write methods in XML: update, payment, charges, sql, dnadd, create.
    let r = xml_req(
        api,
        Some(&token),
        "POST",
        "/api/subscriber/update/xml",
        &format!("<request><id>{id}</id><street>Main St</street></request>"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.xml().get("street").as_deref(), Some("Main St"));
    let r = xml_req(
        api,
        Some(&token),
        "POST",
        "/api/accounts/payment/xml",
        &format!("<request><id>{id}</id><amount>2.5</amount></request>"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = xml_req(
        api,
        Some(&token),
        "POST",
        "/api/accounts/charges/xml",
        &format!("<request><id>{id}</id><from>2026-11-01T00:00:00Z</from><to>2026-12-01T00:00:00Z</to></request>"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.xml().get("cancelled").as_deref(), Some("1"), "{}", r.body);
    // UK: 30 s first increment then 6 s: 90 s billed, 0.03/min + 0.01 fee = 0.055; back.
    assert_eq!(
        r.xml().get("amount").as_deref(),
        Some("0.055"),
        "{}",
        r.body
    );
    // Journal sums are by booking time (now), usage by record time (November).
    let (_, after) = get(
        api,
        &token,
        &format!("/api/accounts/summary?id={id}&from=2026-11-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
    );
    assert_eq!(money(&after["refunds"]), Decimal::new(55, 3), "{after}");
    assert_eq!(
        money(&after["calls"]["cost"]),
        Decimal::new(55, 3),
        "{after}"
    );
    let r = xml_req(
        api,
        Some(&token),
        "POST",
        "/api/sql/xml",
        "<request><query>select count(*) as n from users</query></request>",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(server);
}

/// A statement cannot allocate its way past the limits: no value beyond 1 MiB (the
/// statement fails), and passwords read as NULL.
#[test]
fn sql_values_are_bounded_and_passwords_hidden() {
    let t = T::new();
    let (srv, _radius, api) = t.serve();
    let tok = login(api, "system", "sys");
    post_ok(
        api,
        &tok,
        "/api/subscriber/create",
        json!({"department": "g", "fullname": "A", "username": "a", "password": "secret"}),
    );
    assert_error(
        post(
            api,
            &tok,
            "/api/sql",
            json!({"query": "SELECT hex(zeroblob(5000000))"}),
        ),
        400,
        "too big",
    );
    assert_eq!(
        post_ok(
            api,
            &tok,
            "/api/sql",
            json!({"query": "SELECT username, password FROM users"})
        ),
        json!({"columns": ["username", "password"], "rows": [["a", null]], "truncated": false})
    );
    drop(srv);
}
