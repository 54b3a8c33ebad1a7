//! Crash consistency: `ratel serve` is killed with SIGKILL at random (seeded) moments while
//! RADIUS sessions and spooled CDR files (every other one gzip'd) stream in, and restarted
//! each time; the generator retransmits whatever was not acknowledged (and replays some
//! acknowledged packets). Meanwhile an operator cancels charges (`user.cancelCharges`) of
//! some clients over ranges of logout times; a cancellation whose answer a kill swallowed is
//! retried after the restart (it is idempotent). At the end every subscriber's credit must
//! have moved by exactly the independently computed cost of its sessions and calls less
//! what was refunded, every xDR must appear exactly once in readable Parquet, every REFUND
//! xDR must mirror one original (refunded at most once), Σ credit_used per user over all
//! xDRs must equal what the ledger took, and no temp file may remain.
//!
//! Balance events: the subscribers' credits are set well below what they will use, and a
//! cashier pays (`user.changeCreditExtended` ADD) the debt of clients below zero now and
//! then, so balances cross zero both ways all along the run (refunds bring some back too;
//! payments a kill cut may or may not have committed: the journal says, and the money checks
//! count them). A notify `[[hook]]` on the balance events points at an HTTP handler run here
//! that answers 500 now and then (forcing retries), so kills land between the commits that
//! raise events and their deliveries. At the end every balance event of the ledger must have
//! been acknowledged by the handler at least once, delivered in `event_id` order (repeats
//! allowed), carry the ledger's body, and the crossings must be exactly those the journal and
//! the xDRs show, in order, per client.
//!
//! `RATEL_CRASH_SEED` replays a run; `RATEL_CRASH_KILLS` (default 20) sets the number of kills.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::Decimal;

/// splitmix64, seeded.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const USERS: usize = 5;
const SESSIONS: usize = 40;
const STEPS: u32 = 4; // Start, 2 interims, Stop

/// One planned packet.
struct Planned {
    bytes: Vec<u8>,
    acked: bool,
}

/// Exact cost of a session that ended with `secs` and `octets` in the "day" rule
/// (0.01/min, 0.5/GB), rounded up to 4 decimals — computed here, not by the engine.
fn session_cost(secs: u32, octets: u64) -> Decimal {
    let time = Decimal::new(1, 2) * Decimal::from(secs) / Decimal::from(60);
    let traffic = Decimal::new(5, 1) * Decimal::from_i128_with_scale(octets as i128, 9);
    (time + traffic).round_dp_with_strategy(4, rust_decimal::RoundingStrategy::AwayFromZero)
}

/// Every other spool file arrives gzip'd (compressed by the system's gzip, not by ratel).
fn spool_name(n: usize) -> String {
    if !n.is_multiple_of(2) {
        format!("f{n}.csv.gz")
    } else {
        format!("f{n}.csv")
    }
}

fn spool_bytes(n: usize, text: &str) -> Vec<u8> {
    if n.is_multiple_of(2) {
        return text.as_bytes().to_vec();
    }
    use std::io::Write;
    let mut gz = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gz.stdin.take().unwrap();
    let text = text.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&text).unwrap());
    let out = gz.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn send_wait(sock: &UdpSocket, to: std::net::SocketAddr, p: &[u8]) -> bool {
    let _ = sock.send_to(p, to);
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 20 && buf[1] == p[1] && buf[0] == 5 => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// One xDR as read back from Parquet.
#[derive(Debug)]
struct Row {
    id: u64,
    username: String,
    session_id: String,
    status: String,
    /// Seconds since the epoch.
    logout: i64,
    credit_used: Decimal,
    before_credit: Decimal,
    after_credit: Decimal,
    account: Option<String>,
    refund_of: Option<u64>,
}

fn parquet_xdrs(data: &Path) -> Vec<Row> {
    use arrow_array::{
        Array, Decimal128Array, StringArray, TimestampMicrosecondArray, UInt64Array,
    };
    let mut out = Vec::new();
    let Ok(parts) = std::fs::read_dir(data.join("xdr")) else {
        return out;
    };
    for p in parts {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            assert!(
                f.extension().is_some_and(|e| e == "parquet"),
                "leftover file {f:?}"
            );
            let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in r {
                let b = b.unwrap();
                let id = col::<UInt64Array>(&b, "xdr_id");
                let u = col::<StringArray>(&b, "username");
                let s = col::<StringArray>(&b, "session_id");
                let st = col::<StringArray>(&b, "status");
                let out_t = col::<TimestampMicrosecondArray>(&b, "logout_time");
                let c = col::<Decimal128Array>(&b, "credit_used");
                let bc = col::<Decimal128Array>(&b, "before_credit");
                let ac = col::<Decimal128Array>(&b, "after_credit");
                let acc = col::<StringArray>(&b, "account");
                let rf = col::<UInt64Array>(&b, "refund_of");
                for i in 0..b.num_rows() {
                    out.push(Row {
                        id: id.value(i),
                        username: u.value(i).to_string(),
                        session_id: s.value(i).to_string(),
                        status: st.value(i).to_string(),
                        logout: out_t.value(i).div_euclid(1_000_000),
                        credit_used: Decimal::from_i128_with_scale(c.value(i), 10),
                        before_credit: Decimal::from_i128_with_scale(bc.value(i), 10),
                        after_credit: Decimal::from_i128_with_scale(ac.value(i), 10),
                        account: (!acc.is_null(i)).then(|| acc.value(i).to_string()),
                        refund_of: (!rf.is_null(i)).then(|| rf.value(i)),
                    });
                }
            }
        }
    }
    out
}

/// One cancellation: a client and a range `[from, to)` of logout times, in seconds after
/// [`t0`].
#[derive(Debug, Clone)]
struct Cancel {
    user: String,
    user_id: i64,
    from: i64,
    to: i64,
}

/// What the API answered to one cancellation.
#[derive(Debug)]
struct Answer {
    cancel: Cancel,
    refunded: u64,
    amount: Decimal,
    credit: Decimal,
    journal_id: Option<i64>,
}

/// A random cancellation: a narrow range over the calls (logouts 1..=120 s after t0) or
/// over the sessions (logouts on whole minutes 1..=30 after t0) of a random client.
fn random_cancel(rng: &mut Rng, user_ids: &BTreeMap<String, i64>) -> Cancel {
    let user = format!("user{}", rng.below(USERS as u64));
    let (from, to) = if rng.below(2) == 0 {
        let from = rng.below(100) as i64;
        (from, from + 1 + rng.below(40) as i64)
    } else {
        let from = 60 * (1 + rng.below(30) as i64);
        (from, from + 60 * (1 + rng.below(5) as i64))
    };
    Cancel {
        user_id: user_ids[&user],
        user,
        from,
        to,
    }
}

fn iso(offset: i64) -> String {
    (t0() + chrono::Duration::seconds(offset))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A money value of a JSON answer (a number with every digit, or a string).
fn money(v: &serde_json::Value) -> Decimal {
    let text = v.to_string();
    text.trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("money {v}: {e}"))
}

/// Why a cancellation got no answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lost {
    /// No connection: it never reached a server.
    Refused,
    /// The server died with the call in flight: it may or may not have committed.
    Cut,
}

/// Sends a `user.cancelCharges` request; returns the connection its answer will come on.
fn send_cancel(api: SocketAddr, c: &Cancel, note: &str) -> Result<TcpStream, Lost> {
    use std::io::Write;
    let body = serde_json::json!({
        "method": "user.cancelCharges",
        "id": 1,
        "params": {
            "auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys",
            "user_id": c.user_id, "from": iso(c.from), "to": iso(c.to), "comment": note,
        },
    })
    .to_string();
    let mut s =
        TcpStream::connect_timeout(&api, Duration::from_millis(500)).map_err(|_| Lost::Refused)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|_| Lost::Cut)?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).map_err(|_| Lost::Cut)?;
    Ok(s)
}

/// `user.cancelCharges` against a server that may die under it: the answer, or why there
/// was none.
fn try_cancel(api: SocketAddr, c: &Cancel, note: &str) -> Result<Answer, Lost> {
    use std::io::Read;
    let mut s = send_cancel(api, c, note)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|_| Lost::Cut)?;
    let text = String::from_utf8(resp).map_err(|_| Lost::Cut)?;
    let (head, json) = text.split_once("\r\n\r\n").ok_or(Lost::Cut)?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| Lost::Cut)?;
    assert_eq!(
        head.split_whitespace().nth(1),
        Some("200"),
        "cancelCharges {c:?}: {text}"
    );
    assert!(v["error"].is_null(), "cancelCharges {c:?}: {v}");
    let r = &v["result"];
    Ok(Answer {
        cancel: c.clone(),
        refunded: r["refunded"]
            .as_u64()
            .unwrap_or_else(|| panic!("refunded: {v}")),
        amount: money(&r["amount"]),
        credit: money(&r["credit"]),
        journal_id: r["journal_id"].as_i64(),
    })
}

/// What the operator did during one run of the server.
#[derive(Default)]
struct Shift {
    answers: Vec<Answer>,
    /// Reached the server, answer lost (the call may have committed).
    cut: Vec<Cancel>,
    /// The calls that got no answer: to retry after the restart.
    retry: Vec<Cancel>,
    /// Connections of abandoned calls, whose answers are never read: held until the kill.
    held: Vec<TcpStream>,
}

/// One planned cancellation: after a pause, either waiting for its answer or abandoning it
/// (an operator whose client timed out: the server may well commit it before the kill).
struct Todo {
    pause_ms: u64,
    cancel: Cancel,
    abandon: bool,
}

/// The operator, on a thread of its own while RADIUS and CDRs stream in: each
/// cancellation after its pause, until one gets no answer (the server was killed).
fn operator(api: SocketAddr, todo: Vec<Todo>, note: String) -> std::thread::JoinHandle<Shift> {
    std::thread::spawn(move || {
        let mut shift = Shift::default();
        for t in todo {
            std::thread::sleep(Duration::from_millis(t.pause_ms));
            let c = t.cancel;
            if t.abandon {
                match send_cancel(api, &c, &note) {
                    Ok(conn) => {
                        shift.held.push(conn);
                        shift.cut.push(c.clone());
                        shift.retry.push(c);
                        continue;
                    }
                    Err(lost) => {
                        if lost == Lost::Cut {
                            shift.cut.push(c.clone());
                        }
                        shift.retry.push(c);
                        break;
                    }
                }
            }
            match try_cancel(api, &c, &note) {
                Ok(a) => shift.answers.push(a),
                Err(lost) => {
                    if lost == Lost::Cut {
                        shift.cut.push(c.clone());
                    }
                    shift.retry.push(c);
                    break;
                }
            }
        }
        shift
    })
}

/// One payment (`user.changeCreditExtended` ADD) of a small amount; its comment names it.
#[derive(Debug, Clone)]
struct Pay {
    user: String,
    user_id: i64,
    amount: Decimal,
    note: String,
}

/// One JSON-RPC call against a server that may die under it: the answer, or why there was
/// none.
fn raw_rpc(
    api: SocketAddr,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, Lost> {
    use std::io::{Read, Write};
    let body = serde_json::json!({"method": method, "id": 1, "params": params}).to_string();
    let mut s =
        TcpStream::connect_timeout(&api, Duration::from_millis(500)).map_err(|_| Lost::Refused)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|_| Lost::Cut)?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).map_err(|_| Lost::Cut)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|_| Lost::Cut)?;
    let text = String::from_utf8(resp).map_err(|_| Lost::Cut)?;
    let (head, json) = text.split_once("\r\n\r\n").ok_or(Lost::Cut)?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| Lost::Cut)?;
    assert_eq!(
        head.split_whitespace().nth(1),
        Some("200"),
        "{method}: {text}"
    );
    assert!(v["error"].is_null(), "{method} {params}: {v}");
    Ok(v["result"].clone())
}

fn admin(mut params: serde_json::Value) -> serde_json::Value {
    let p = params.as_object_mut().unwrap();
    p.insert("auth_type".into(), "ADMIN".into());
    p.insert("auth_name".into(), "system".into());
    p.insert("auth_pass".into(), "sys".into());
    params
}

/// `user.changeCreditExtended` ADD: the journal id of the payment. A payment is not
/// idempotent: one without an answer is not retried (it may or may not have committed).
fn try_pay(api: SocketAddr, p: &Pay) -> Result<i64, Lost> {
    let r = raw_rpc(
        api,
        "user.changeCreditExtended",
        admin(serde_json::json!({
            "user_id": p.user_id, "credit": p.amount.to_string(), "change_type": "ADD",
            "credit_comment": p.note,
        })),
    )?;
    let ids = r
        .as_array()
        .unwrap_or_else(|| panic!("changeCreditExtended {p:?}: {r}"));
    assert_eq!(ids.len(), 1, "changeCreditExtended {p:?}: {r}");
    Ok(ids[0].as_i64().unwrap())
}

/// A client's credit as `user.getUserInfo` shows it.
fn try_credit(api: SocketAddr, user_id: i64) -> Result<Decimal, Lost> {
    let r = raw_rpc(
        api,
        "user.getUserInfo",
        admin(serde_json::json!({"user_id": user_id})),
    )?;
    Ok(money(&r[user_id.to_string()]["basic_info"]["credit"]))
}

/// What the cashier did during one run of the server: payments answered (with their
/// journal ids) and those a kill cut (reached the server, answer lost).
#[derive(Default)]
struct Till {
    answered: Vec<(Pay, i64)>,
    cut: Vec<Pay>,
}

/// The cashier, on a thread of its own: after each pause, looks at a client's credit and
/// pays, when it is below zero, its debt and a few cents more (a balance_nonnegative event;
/// the client's next charges take it below zero again), otherwise a few cents — until a
/// call gets no answer (the server was killed).
fn cashier(
    api: SocketAddr,
    todo: Vec<(u64, String, i64, String)>,
    seed: u64,
) -> std::thread::JoinHandle<Till> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut till = Till::default();
        for (pause_ms, user, user_id, note) in todo {
            std::thread::sleep(Duration::from_millis(pause_ms));
            let Ok(credit) = try_credit(api, user_id) else {
                break;
            };
            let cents = Decimal::new(1 + rng.below(30) as i64, 2);
            let amount = if credit < Decimal::ZERO {
                -credit + cents
            } else {
                cents
            };
            let p = Pay {
                user,
                user_id,
                amount,
                note,
            };
            match try_pay(api, &p) {
                Ok(id) => till.answered.push((p, id)),
                Err(Lost::Cut) => {
                    till.cut.push(p);
                    break;
                }
                Err(Lost::Refused) => break,
            }
        }
        till
    })
}

/// One request the event handler received, in arrival order.
#[derive(Debug, Clone)]
struct Receipt {
    /// The `Idempotency-Key` header.
    key: Option<i64>,
    body: serde_json::Value,
    /// What the handler answered.
    status: u16,
}

/// Reads one HTTP request (head and a `Content-Length` body); `None` if the peer died
/// before sending it whole (a kill mid-request).
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[end..end + len].to_vec()))
}

/// The hook's HTTP handler: records every whole request (body and `Idempotency-Key`) and
/// answers 200, or 500 about one time in five (never twice running for one event, so the
/// delivery thread's backoff stays at 1 s), after a short random pause (so kills also land
/// while a POST is in flight).
fn event_handler(seed: u64) -> (SocketAddr, Arc<Mutex<Vec<Receipt>>>) {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Receipt>>> = Arc::default();
    let out = log.clone();
    std::thread::spawn(move || {
        let mut rng = Rng(seed ^ 0x5EED_0FE7_E7E7);
        let mut failed_last: Option<i64> = None;
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let Some((head, body)) = read_request(&mut s) else {
                continue;
            };
            let key = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("idempotency-key")
                    .then(|| v.trim().parse::<i64>().ok())?
            });
            let body: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let status = if rng.below(5) == 0 && failed_last != key {
                failed_last = key;
                500
            } else {
                failed_last = None;
                200
            };
            std::thread::sleep(Duration::from_millis(rng.below(20)));
            // Recorded before answering: a 200 the server never reads still counts as a
            // receipt (at least once).
            out.lock().unwrap().push(Receipt { key, body, status });
            let reason = if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            };
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    });
    (addr, log)
}

/// One movement of a client's balance, from its evidence (a journal row or a CDR batch).
#[derive(Debug, Clone)]
struct Step {
    before: Decimal,
    after: Decimal,
    /// Where it comes from (shown when the replay fails).
    #[allow(dead_code)]
    what: String,
}

/// The balance event a movement from `before` to `after` raises (DESIGN.md "Events": from
/// above zero to zero or below, from below zero to zero or above), computed here, not by
/// the engine.
fn crossing(before: Decimal, after: Decimal) -> Option<&'static str> {
    if before > Decimal::ZERO && after <= Decimal::ZERO {
        Some("clients.balance_nonpositive")
    } else if before < Decimal::ZERO && after >= Decimal::ZERO {
        Some("clients.balance_nonnegative")
    } else {
        None
    }
}

/// One balance event of the ledger: (event_id, name, before, after).
type BalanceEvent = (i64, String, Decimal, Decimal);

/// Whether the client's crossing events (in `event_id` order) are exactly the zero
/// crossings of its movements: the journal's movements (`journal`, in id order) and the CDR
/// batches' (`cdr`, in batch order) interleave in some order that chains (each movement
/// starts where the one before it ended, from 0) and whose crossings, in order, are the
/// events. An error says what does not fit.
fn replay(journal: &[Step], cdr: &[Step], events: &[BalanceEvent]) -> Result<(), String> {
    let prefix = |v: &[Step]| -> (Vec<Decimal>, Vec<usize>) {
        let (mut sum, mut k) = (vec![Decimal::ZERO], vec![0usize]);
        for s in v {
            sum.push(sum[sum.len() - 1] + (s.after - s.before));
            k.push(k[k.len() - 1] + crossing(s.before, s.after).is_some() as usize);
        }
        (sum, k)
    };
    let ((js, jk), (cs, ck)) = (prefix(journal), prefix(cdr));
    let (nj, nc) = (journal.len(), cdr.len());
    if jk[nj] + ck[nc] != events.len() {
        return Err(format!(
            "{} crossings in the journal and the CDR batches, {} balance events",
            jk[nj] + ck[nc],
            events.len()
        ));
    }
    let fits = |s: &Step, balance: Decimal, k: usize| -> bool {
        s.before == balance
            && match crossing(s.before, s.after) {
                None => true,
                Some(name) => events
                    .get(k)
                    .is_some_and(|(_, n, b, a)| n == name && *b == s.before && *a == s.after),
            }
    };
    let mut reach = vec![vec![false; nc + 1]; nj + 1];
    reach[0][0] = true;
    for i in 0..=nj {
        for j in 0..=nc {
            if !reach[i][j] {
                continue;
            }
            let (balance, k) = (js[i] + cs[j], jk[i] + ck[j]);
            if i < nj && fits(&journal[i], balance, k) {
                reach[i + 1][j] = true;
            }
            if j < nc && fits(&cdr[j], balance, k) {
                reach[i][j + 1] = true;
            }
        }
    }
    if reach[nj][nc] {
        Ok(())
    } else {
        let (i, j) = (0..=nj)
            .flat_map(|i| (0..=nc).map(move |j| (i, j)))
            .filter(|&(i, j)| reach[i][j])
            .max_by_key(|&(i, j)| i + j)
            .unwrap();
        Err(format!(
            "no order of the movements chains and crosses zero as the events say; got as far as \
             {i} journal and {j} CDR movements (balance {}, {} events matched): next journal {:?}, \
             next CDR {:?}, next event {:?}",
            js[i] + cs[j],
            jk[i] + ck[j],
            journal.get(i),
            cdr.get(j),
            events.get(jk[i] + ck[j])
        ))
    }
}

/// All events through `report.getEvents`: (event_id, name, per-hook states).
fn api_events(api: SocketAddr) -> Vec<(i64, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let (r, e) = rpc(
            api,
            "report.getEvents",
            serde_json::json!({
                "auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys",
                "after": after, "limit": 500,
            }),
        );
        assert!(e.is_null(), "report.getEvents: {e}");
        let list = r
            .as_array()
            .unwrap_or_else(|| panic!("report.getEvents: {r}"));
        if list.is_empty() {
            return out;
        }
        for v in list {
            let id = v["event_id"].as_i64().unwrap();
            let states = v["hooks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["state"].as_str().unwrap().to_string())
                .collect();
            out.push((id, v["event"].as_str().unwrap().to_string(), states));
            after = id;
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_charges_nothing_twice() {
    let seed: u64 = std::env::var("RATEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123);
    let kills: usize = std::env::var("RATEL_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("crash harness: seed {seed}, {kills} kills (replay with RATEL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();

    // The plan: SESSIONS sessions of STEPS packets, interleaved.
    let mut plan: Vec<Planned> = Vec::new();
    let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut order: Vec<(usize, u32)> = Vec::new();
    for s in 0..SESSIONS {
        let user = format!("user{}", s % USERS);
        let final_secs = 60 * (1 + rng.below(30) as u32);
        let final_octets = rng.below(3_000_000_000);
        *expected.entry(user.clone()).or_default() += session_cost(final_secs, final_octets);
        for step in 0..STEPS {
            let (status, secs, oct) = match step {
                0 => (1, 0, 0),
                s if s + 1 == STEPS => (2, final_secs, final_octets),
                s => (
                    3,
                    final_secs * s / STEPS,
                    final_octets / STEPS as u64 * s as u64,
                ),
            };
            // Identifiers must differ for different packets of one NAS in flight; the
            // authenticator differs anyway, the identifier cycles.
            let id = (plan.len() % 256) as u8;
            plan.push(Planned {
                bytes: acct(
                    id,
                    status,
                    &user,
                    &format!("crash-{s}"),
                    secs,
                    oct,
                    0,
                    if status == 2 { Some(1) } else { None },
                ),
                acked: false,
            });
            order.push((s, step));
        }
    }
    // Packets go out session-step by session-step, sessions interleaved.
    let mut sequence: Vec<usize> = Vec::new();
    for step in 0..STEPS {
        for s in 0..SESSIONS {
            sequence.push(s * STEPS as usize + step as usize);
        }
    }
    // CDR files for the spool: calls to prefix 1 (0.01/min, 60/60) of 1..=120 s.
    let mut cdr_files: Vec<String> = Vec::new();
    for f in 0..6 {
        let mut text =
            String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
        for i in 0..300 {
            let d = 1 + rng.below(120);
            let user = format!("user{}", rng.below(USERS as u64));
            *expected.entry(user.clone()).or_default() += Decimal::new(d.div_ceil(60) as i64, 2);
            text.push_str(&format!(
                "f{f}-c{i},555,15551234567,2026-11-02T10:00:00Z,{d},ANSWERED,{user}\n"
            ));
        }
        cdr_files.push(text);
    }

    // Credits well below what the clients will use (10% … 50% of it); payments of small
    // amounts during the run and refunds bring them back above zero now and then: balance
    // events both ways, all along the run.
    let initial: BTreeMap<String, Decimal> = expected
        .iter()
        .enumerate()
        .map(|(i, (user, cost))| {
            let credit = (*cost * Decimal::new(10 + 10 * i as i64, 2)).round_dp(2);
            (user.clone(), credit)
        })
        .collect();
    assert_eq!(initial.len(), USERS);
    let mut users_csv = String::from("username,password,group,credit\n");
    for (user, credit) in &initial {
        users_csv.push_str(&format!("{user},pw,g,{credit}\n"));
    }
    let env = Env::with(&users_csv, true);
    // The hook: balance events to the handler run here.
    let (handler, receipts) = event_handler(seed);
    let mut cfg = std::fs::read_to_string(env.config()).unwrap();
    cfg.push_str(&format!(
        "[[hook]]\nname = \"crm\"\nevents = [\"clients.balance_nonpositive\", \"clients.balance_nonnegative\"]\n\
         url = \"http://{handler}/ratel/events\"\nmode = \"notify\"\ntimeout_ms = 2000\nmax_attempts = 0\n"
    ));
    std::fs::write(env.config(), cfg).unwrap();
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let user_ids: BTreeMap<String, i64> = ratel_engine::ledger::Ledger::open(&env.data())
        .unwrap()
        .load_users()
        .unwrap()
        .into_iter()
        .map(|u| (u.username.unwrap(), u.user_id))
        .collect();
    assert_eq!(user_ids.len(), USERS);
    for (user, credit) in env.credits() {
        assert_eq!(credit, initial[&user], "{user}: initial credit");
    }

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut next = 0usize;
    let mut dropped_files = 0usize;
    // Cancellations: every one that reached a server, the answers, and the one that got no
    // answer (retried first thing after the restart).
    let mut issued: Vec<Cancel> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut pending: Vec<Cancel> = Vec::new();
    let (mut cut, mut retried) = (0usize, 0usize);
    // Payments: answered (with their journal ids), and cut by a kill.
    let mut paid_answered: Vec<(Pay, i64)> = Vec::new();
    let mut paid_cut: Vec<Pay> = Vec::new();
    for k in 0..kills {
        let (server, radius, api) = env.serve_all();
        // Retransmit everything not acknowledged yet (a NAS would), and replay a few
        // acknowledged packets (duplicates must charge nothing).
        let pid = server.pid();
        // Mostly short lives (killed during start-up, recovery or the first batches), one
        // in three long enough to rate spool files and close sessions (which refunds need).
        let delay = if rng.below(3) == 0 {
            200 + rng.below(800)
        } else {
            20 + rng.below(150)
        };
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        if dropped_files < cdr_files.len() && k % 3 == 0 {
            let tmp = spool.join(format!(".f{dropped_files}.tmp"));
            std::fs::write(&tmp, spool_bytes(dropped_files, &cdr_files[dropped_files])).unwrap();
            // Old enough for the spool scan at once (it skips files modified within 1 s).
            let f = std::fs::File::options().write(true).open(&tmp).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(5))
                .unwrap();
            std::fs::rename(&tmp, spool.join(spool_name(dropped_files))).unwrap();
            dropped_files += 1;
        }
        // The operator: the unanswered cancellations at once, then up to 3 new ones at
        // random moments (some right before the kill, some cut by it, some abandoned).
        let mut todo: Vec<Todo> = Vec::new();
        for c in pending.drain(..) {
            retried += 1;
            todo.push(Todo {
                pause_ms: 0,
                cancel: c,
                abandon: false,
            });
        }
        let mut at: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(delay)).collect();
        at.sort();
        let mut prev = 0;
        for t in at {
            todo.push(Todo {
                pause_ms: t - prev,
                cancel: random_cancel(&mut rng, &user_ids),
                abandon: rng.below(2) == 0,
            });
            prev = t;
        }
        let shift = operator(api, todo, format!("crash run {k}"));
        // The cashier: up to 4 payments at random moments.
        let mut at: Vec<u64> = (0..rng.below(5)).map(|_| rng.below(delay)).collect();
        at.sort();
        let mut prev = 0;
        let mut pays = Vec::new();
        for (n, t) in at.into_iter().enumerate() {
            let user = format!("user{}", rng.below(USERS as u64));
            pays.push((
                t - prev,
                user.clone(),
                user_ids[&user],
                format!("pay {k}.{n}"),
            ));
            prev = t;
        }
        let till = cashier(api, pays, rng.next());
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay + 50) {
            let i = if rng.below(10) == 0 && next > 0 {
                sequence[rng.below(next as u64) as usize]
            } else if next < sequence.len() {
                sequence[next]
            } else {
                // Everything sent: only a replay now and then until the kill.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let first_unacked = sequence.iter().position(|&j| !plan[j].acked);
            let i = match first_unacked {
                Some(p) if p < next => sequence[p],
                _ => i,
            };
            // No answer (busy, or killed): retransmit until this life is over, as a NAS would.
            if send_wait(&sock, radius, &plan[i].bytes) {
                plan[i].acked = true;
                if next < sequence.len() && sequence[next] == i {
                    next += 1;
                }
                // Paced: the sessions open and close over several lives of the server.
                std::thread::sleep(Duration::from_millis(rng.below(8)));
            }
        }
        killer.join().unwrap();
        let shift = shift.join().unwrap();
        cut += shift.cut.len();
        for c in shift.answers.iter().map(|a| &a.cancel).chain(&shift.cut) {
            issued.push(c.clone());
        }
        answers.extend(shift.answers);
        pending = shift.retry;
        drop(shift.held);
        let till = till.join().unwrap();
        paid_answered.extend(till.answered);
        paid_cut.extend(till.cut);
        drop(server);
    }
    // The payments the ledger holds (no payment is made from here on): each answered one
    // once, as answered; besides them only payments a kill cut, each at most once.
    let mut paid: BTreeMap<String, Decimal> = user_ids
        .keys()
        .map(|u| (u.clone(), Decimal::ZERO))
        .collect();
    {
        let ledger = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
        let rows: Vec<(i64, i64, String, String)> = ledger
            .prepare(
                "SELECT id, user_id, amount, comment FROM journal \
                 WHERE kind = 'payment' AND idem_key NOT LIKE 'initial:%' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut notes = HashSet::new();
        for (id, user_id, amount, note) in &rows {
            assert!(
                notes.insert(note.clone()),
                "payment {note:?} twice in the journal"
            );
            let amount: Decimal = amount.parse().unwrap();
            let p = match paid_answered.iter().find(|(p, _)| &p.note == note) {
                Some((p, journal)) => {
                    assert_eq!(journal, id, "{p:?}: answered journal id");
                    p
                }
                None => paid_cut
                    .iter()
                    .find(|p| &p.note == note)
                    .unwrap_or_else(|| {
                        panic!("journal payment {id} {note:?}: never made (seed {seed})")
                    }),
            };
            assert_eq!(
                (p.user_id, p.amount),
                (*user_id, amount),
                "journal payment {id} of {p:?}"
            );
            *paid.get_mut(&p.user).unwrap() += amount;
        }
        for (p, _) in &paid_answered {
            assert!(
                notes.contains(&p.note),
                "answered {p:?} not in the journal (seed {seed})"
            );
        }
        println!(
            "crash harness: {} payments in the journal: {} answered, {} of {} cut by a kill committed",
            rows.len(),
            paid_answered.len(),
            rows.len() - paid_answered.len(),
            paid_cut.len()
        );
    }
    // Final run: the unanswered cancellations, everything left, all spool files, then a graceful
    // stop.
    let (server, radius, api) = env.serve_all();
    for c in pending.drain(..) {
        retried += 1;
        issued.push(c.clone());
        answers.push(try_cancel(api, &c, "final retry").expect("cancellation answered"));
    }
    while dropped_files < cdr_files.len() {
        std::fs::write(
            spool.join(spool_name(dropped_files)),
            spool_bytes(dropped_files, &cdr_files[dropped_files]),
        )
        .unwrap();
        dropped_files += 1;
    }
    for &i in &sequence {
        for _ in 0..20 {
            if send_wait(&sock, radius, &plan[i].bytes) {
                plan[i].acked = true;
                break;
            }
        }
        assert!(plan[i].acked, "packet {i} never acknowledged");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&spool).unwrap().flatten().any(|e| {
        e.path()
            .extension()
            .is_some_and(|x| x == "csv" || x == "gz")
    }) {
        assert!(Instant::now() < deadline, "spool not drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything is rated: cancelling all of one client's charges gives back exactly its
    // initial credit and payments, and doing it again refunds nothing (a client below zero
    // comes back above it: a balance_nonnegative event).
    let user = format!("user{}", rng.below(USERS as u64));
    let everything = Cancel {
        user_id: user_ids[&user],
        user,
        from: -86_400,
        to: 86_400,
    };
    issued.push(everything.clone());
    let all = try_cancel(api, &everything, "everything").expect("answered");
    assert_eq!(
        all.credit,
        initial[&everything.user] + paid[&everything.user],
        "{}: credit after cancelling every charge (seed {seed}): {all:?}",
        everything.user
    );
    let again = try_cancel(api, &everything, "everything again").expect("answered");
    assert_eq!(
        (again.refunded, again.amount, again.journal_id, again.credit),
        (
            0,
            Decimal::ZERO,
            None,
            initial[&everything.user] + paid[&everything.user]
        ),
        "a repeated cancellation must refund nothing (seed {seed})"
    );
    answers.push(all);
    answers.push(again);
    // Delivery catches up (bounded): no balance event pending for the hook any more. A 500
    // costs the delivery thread a 1 s backoff, and the handler never fails one event twice
    // running.
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(60);
    loop {
        let listed = api_events(api);
        let pending: Vec<i64> = listed
            .iter()
            .filter(|(_, _, states)| states.iter().any(|s| s == "pending"))
            .map(|(id, _, _)| *id)
            .collect();
        for (id, name, states) in &listed {
            let balance = name.starts_with("clients.balance_");
            assert_eq!(
                states.len(),
                balance as usize,
                "event {id} {name}: hook states {states:?} (the hook takes balance events only)"
            );
            assert!(
                states.iter().all(|s| s == "pending" || s == "delivered"),
                "event {id} {name}: {states:?} (max_attempts = 0: never dead)"
            );
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events still pending after 60 s: {pending:?} (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let delivery_wait = waited.elapsed();
    stop(server);
    println!(
        "crash harness: {} cancellations reached the server, {} answered, {cut} cut by a kill, {retried} retried",
        issued.len(),
        answers.len()
    );

    // Every xDR once, in readable Parquet.
    let xdrs = parquet_xdrs(&env.data());
    let ids: HashSet<u64> = xdrs.iter().map(|x| x.id).collect();
    assert_eq!(ids.len(), xdrs.len(), "an xDR id appears twice");
    let (refunds, originals): (Vec<&Row>, Vec<&Row>) =
        xdrs.iter().partition(|x| x.status == "REFUND");
    let sessions: HashSet<&str> = originals.iter().map(|x| x.session_id.as_str()).collect();
    assert_eq!(
        sessions.len(),
        originals.len(),
        "a session or call was written twice"
    );
    assert_eq!(originals.len(), SESSIONS + cdr_files.len() * 300);
    let by_id: std::collections::HashMap<u64, &Row> =
        originals.iter().map(|x| (x.id, *x)).collect();
    // Every REFUND xDR mirrors one original of its client, in the range of a cancellation
    // of that client; no original is refunded twice.
    let mut refunded: std::collections::HashMap<u64, &Row> = Default::default();
    for x in &originals {
        assert_eq!(x.refund_of, None, "refund_of on a usage xDR {x:?}");
    }
    for r in &refunds {
        let of = r
            .refund_of
            .unwrap_or_else(|| panic!("REFUND without refund_of: {r:?}"));
        let orig = by_id
            .get(&of)
            .unwrap_or_else(|| panic!("REFUND {r:?} of an xDR not in Parquet (seed {seed})"));
        assert!(
            refunded.insert(of, r).is_none(),
            "xDR {of} refunded twice (seed {seed})"
        );
        assert_eq!(
            r.credit_used, -orig.credit_used,
            "REFUND {r:?} of {orig:?} (seed {seed})"
        );
        assert!(
            orig.credit_used > Decimal::ZERO,
            "refund of a free xDR {orig:?}"
        );
        assert_eq!(
            (&r.username, &r.session_id, &r.account, r.logout),
            (&orig.username, &orig.session_id, &orig.account, orig.logout),
            "REFUND {r:?} of {orig:?}"
        );
        let t = orig.logout - t0().timestamp();
        assert!(
            issued
                .iter()
                .any(|c| c.user == orig.username && c.from <= t && t < c.to),
            "{orig:?} refunded, but no cancellation of {} covers its logout (seed {seed})",
            orig.username
        );
    }
    // Credit moved by exactly the independent expectation less what was refunded (and the
    // payments), and equals the sums of credit_used over all xDRs (originals and refunds).
    let credits: BTreeMap<String, Decimal> = env.credits().into_iter().collect();
    assert_eq!(credits.len(), USERS, "subscribers: {credits:?}");
    let ledger = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
    for (user, want) in &expected {
        let taken = initial[user] + paid[user] - credits[user];
        let charged: Decimal = originals
            .iter()
            .filter(|x| &x.username == user)
            .map(|x| x.credit_used)
            .sum();
        let given_back: Decimal = refunded
            .keys()
            .map(|id| by_id[id])
            .filter(|x| &x.username == user)
            .map(|x| x.credit_used)
            .sum();
        let used: Decimal = xdrs
            .iter()
            .filter(|x| &x.username == user)
            .map(|x| x.credit_used)
            .sum();
        assert_eq!(
            charged, *want,
            "{user}: usage xDRs sum {charged}, expected {want} (seed {seed})"
        );
        assert_eq!(
            taken,
            *want - given_back,
            "{user}: ledger took {taken}, expected {want} - refunded {given_back} (seed {seed})"
        );
        assert_eq!(
            used, taken,
            "{user}: xDRs sum {used} (refunds included), ledger took {taken} (seed {seed})"
        );
        // The refund journal rows give back exactly what the REFUND xDRs say.
        let journal: Decimal = ledger
            .prepare("SELECT amount FROM journal WHERE kind = 'refund' AND user_id = ?1")
            .unwrap()
            .query_map([user_ids[user]], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|a| a.unwrap().parse::<Decimal>().unwrap())
            .sum();
        assert_eq!(
            journal, given_back,
            "{user}: refund journal rows {journal}, refunded xDRs {given_back} (seed {seed})"
        );
        println!("  {user}: charged {charged}, refunded {given_back}, ledger took {taken}");
    }
    // The ledger's refund records are exactly the REFUND xDRs.
    let recorded: BTreeMap<u64, (u64, i64)> = ledger
        .prepare("SELECT xdr_id, refund_xdr_id, journal_id FROM refunds")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let in_parquet: BTreeMap<u64, u64> = refunded.iter().map(|(o, r)| (*o, r.id)).collect();
    assert_eq!(
        recorded
            .iter()
            .map(|(o, (r, _))| (*o, *r))
            .collect::<BTreeMap<_, _>>(),
        in_parquet,
        "the ledger's refunds vs the REFUND xDRs in Parquet (seed {seed})"
    );
    // One refund journal row per committed cancellation: each answered one, plus at most
    // one per call a kill cut (committed, answer lost).
    let journal_rows: usize = ledger
        .query_row(
            "SELECT count(*) FROM journal WHERE kind = 'refund'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize;
    let answered: HashSet<i64> = answers.iter().filter_map(|a| a.journal_id).collect();
    assert_eq!(
        answered.len(),
        answers.iter().filter(|a| a.journal_id.is_some()).count(),
        "two answers name one journal row"
    );
    assert!(
        journal_rows >= answered.len() && journal_rows - answered.len() <= cut,
        "{journal_rows} refund journal rows, {} answered, {cut} cut (seed {seed})",
        answered.len()
    );
    println!(
        "crash harness: {} xDRs refunded by {journal_rows} cancellations, {} of them committed with the answer lost",
        refunds.len(),
        journal_rows - answered.len()
    );
    // Each answer matches its journal row and the refunds it recorded.
    for a in &answers {
        let Some(j) = a.journal_id else {
            assert_eq!((a.refunded, a.amount), (0, Decimal::ZERO), "{a:?}");
            continue;
        };
        let (uid, amount): (i64, String) = ledger
            .query_row(
                "SELECT user_id, amount FROM journal WHERE id = ?1 AND kind = 'refund'",
                [j],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("journal row of {a:?}: {e}"));
        assert_eq!(uid, a.cancel.user_id, "{a:?}");
        assert_eq!(amount.parse::<Decimal>().unwrap(), a.amount, "{a:?}");
        let mine: Vec<u64> = recorded
            .iter()
            .filter(|(_, (_, jj))| *jj == j)
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(mine.len() as u64, a.refunded, "{a:?}");
        let sum: Decimal = mine.iter().map(|o| by_id[o].credit_used).sum();
        assert_eq!(sum, a.amount, "{a:?}");
        for o in mine {
            let x = by_id[&o];
            let t = x.logout - t0().timestamp();
            assert!(
                x.username == a.cancel.user && a.cancel.from <= t && t < a.cancel.to,
                "{x:?} refunded by {a:?} (seed {seed})"
            );
        }
    }

    // Events. The ledger's balance events (its outbox), after the graceful stop.
    let mut stored: Vec<(i64, String, i64, serde_json::Value)> = ledger
        .prepare("SELECT event_id, name, user_id, body FROM events ORDER BY event_id")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .unwrap()
        .map(|r| {
            let (id, name, user, body) = r.unwrap();
            (id, name, user, serde_json::from_str(&body).unwrap())
        })
        .collect();
    stored.retain(|(_, name, _, _)| name.starts_with("clients.balance_"));
    let mut per_user: BTreeMap<i64, Vec<BalanceEvent>> = BTreeMap::new();
    for (id, name, user, body) in &stored {
        assert_eq!(&body["event"], name, "event {id}: {body}");
        assert_eq!(body["client"]["id_clients"], *user, "event {id}: {body}");
        let b = &body["balance"];
        let (before, after) = (money(&b["before"]), money(&b["after"]));
        // The client in the body is as this movement left it.
        assert_eq!(
            money(&body["client"]["balance"]),
            after,
            "event {id}: client.balance vs balance.after: {body} (seed {seed})"
        );
        // Each is a true crossing of zero.
        assert_eq!(
            crossing(before, after),
            Some(name.as_str()),
            "event {id}: {body} is not a crossing (seed {seed})"
        );
        per_user
            .entry(*user)
            .or_default()
            .push((*id, name.clone(), before, after));
    }
    // The handler's log: each receipt names its event in the header and in the body, and
    // carries exactly the ledger's body (with its event_id).
    let receipts = receipts.lock().unwrap().clone();
    let bodies: BTreeMap<i64, &serde_json::Value> =
        stored.iter().map(|(id, _, _, b)| (*id, b)).collect();
    for r in &receipts {
        let key = r.key.unwrap_or_else(|| panic!("no Idempotency-Key: {r:?}"));
        assert_eq!(r.body["event_id"], key, "Idempotency-Key vs body: {r:?}");
        let mut body = r.body.clone();
        body.as_object_mut().unwrap().remove("event_id");
        let want = bodies.get(&key).unwrap_or_else(|| {
            panic!("received event {key}, not a balance event of the ledger: {r:?} (seed {seed})")
        });
        assert_eq!(&&body, want, "event {key}: received body vs the ledger's");
    }
    // (1) Every balance event was acknowledged by the handler at least once; (2) delivery in
    // order: when an event first arrives, every earlier balance event has been acknowledged
    // (so first arrivals ascend); repeats are allowed (at least once).
    let ids: Vec<i64> = stored.iter().map(|(id, ..)| *id).collect();
    let mut acked: HashSet<i64> = HashSet::new();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut first_arrivals: Vec<i64> = Vec::new();
    for (n, r) in receipts.iter().enumerate() {
        let key = r.key.unwrap();
        if seen.insert(key) {
            first_arrivals.push(key);
            let missing: Vec<&i64> = ids
                .iter()
                .filter(|id| **id < key && !acked.contains(id))
                .collect();
            assert!(
                missing.is_empty(),
                "receipt {n}: event {key} arrived before events {missing:?} were acknowledged (seed {seed})"
            );
        }
        if r.status == 200 {
            acked.insert(key);
        }
    }
    assert!(
        first_arrivals.windows(2).all(|w| w[0] < w[1]),
        "first arrivals out of order: {first_arrivals:?} (seed {seed})"
    );
    let lost: Vec<&i64> = ids.iter().filter(|id| !acked.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "balance events never acknowledged by the handler: {lost:?} (seed {seed})"
    );
    // (3) The crossings are exact: per client, the events are the zero crossings of its
    // movements in order — journal rows (the initial credit, each payment, each RADIUS
    // charge, each refund; CDR usage rows fold several batches and are replaced by the batches
    // themselves, rebuilt from their xDRs: one movement per client per batch).
    let mut journal: BTreeMap<i64, Vec<Step>> = BTreeMap::new();
    let rows: Vec<(i64, i64, String, String, String, String)> = ledger
        .prepare(
            "SELECT id, user_id, amount, balance_after, kind, idem_key FROM journal ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, user, amount, after, kind, key) in rows {
        if kind == "usage" && key.starts_with("cdr:") {
            continue;
        }
        let (amount, after): (Decimal, Decimal) = (amount.parse().unwrap(), after.parse().unwrap());
        journal.entry(user).or_default().push(Step {
            before: after - amount,
            after,
            what: format!("journal {id} {kind} {key}"),
        });
    }
    let batches: Vec<(i64, u64, u64)> = ledger
        .prepare("SELECT batch_id, first_xdr, next_xdr FROM batches WHERE source LIKE 'cdr:%' ORDER BY batch_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut calls: Vec<&Row> = originals
        .iter()
        .copied()
        .filter(|x| !x.session_id.starts_with("crash-"))
        .collect();
    calls.sort_by_key(|x| x.id);
    let mut cdr: BTreeMap<i64, Vec<Step>> = BTreeMap::new();
    let mut in_batches = 0usize;
    for (batch, first, next) in &batches {
        let mut moves: BTreeMap<i64, Step> = BTreeMap::new();
        for x in calls.iter().filter(|x| (*first..*next).contains(&x.id)) {
            in_batches += 1;
            if x.credit_used.is_zero() {
                continue;
            }
            assert_eq!(
                x.before_credit - x.credit_used,
                x.after_credit,
                "call xDR {x:?}"
            );
            let user = user_ids[&x.username];
            let m = moves.entry(user).or_insert_with(|| Step {
                before: x.before_credit,
                after: x.before_credit,
                what: format!("CDR batch {batch}"),
            });
            // In file order each call starts where the one before ended.
            assert_eq!(m.after, x.before_credit, "call xDR {x:?} in batch {batch}");
            m.after = x.after_credit;
        }
        for (user, m) in moves {
            cdr.entry(user).or_default().push(m);
        }
    }
    assert_eq!(in_batches, calls.len(), "every call xDR in one CDR batch");
    let mut crossings = (0usize, 0usize);
    for (user, id) in &user_ids {
        let events = per_user.remove(id).unwrap_or_default();
        let (j, c) = (
            journal.remove(id).unwrap_or_default(),
            cdr.remove(id).unwrap_or_default(),
        );
        if let Err(e) = replay(&j, &c, &events) {
            panic!("{user}: {e} (seed {seed})\njournal: {j:#?}\nCDR: {c:#?}\nevents: {events:#?}");
        }
        for (_, name, ..) in &events {
            if name.ends_with("nonpositive") {
                crossings.0 += 1;
            } else {
                crossings.1 += 1;
            }
        }
        println!(
            "  {user}: initial {}, paid {}, final {}, events {:?}",
            initial[user],
            paid[user],
            credits[user],
            events
                .iter()
                .map(|(id, n, b, a)| format!(
                    "{id} {} {b}->{a}",
                    n.trim_start_matches("clients.balance_")
                ))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        per_user.is_empty(),
        "events of unknown clients: {per_user:?}"
    );
    let repeats = receipts.len() - seen.len();
    // Sent again although the handler had answered 200: the server died (or timed out)
    // between the handler's answer and recording the delivery.
    let mut ok: HashSet<i64> = HashSet::new();
    let mut again_after_200 = 0usize;
    for r in &receipts {
        let key = r.key.unwrap();
        again_after_200 += ok.contains(&key) as usize;
        if r.status == 200 {
            ok.insert(key);
        }
    }
    println!(
        "crash harness: {} balance events ({} nonpositive, {} nonnegative), {} receipts ({} answered 500, {} repeats, {again_after_200} sent again after a 200), delivery caught up {:.1} s after the last change; run {:.1} s",
        ids.len(),
        crossings.0,
        crossings.1,
        receipts.len(),
        receipts.iter().filter(|r| r.status != 200).count(),
        repeats,
        delivery_wait.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        crossings.0 > 0,
        "no balance_nonpositive event: the credits are too large (seed {seed})"
    );
}
