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
//! `RATEL_CRASH_SEED` replays a run; `RATEL_CRASH_KILLS` (default 20) sets the number of kills.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
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
    let env = Env::new_with_users(USERS, "1000");
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
        drop(server);
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
    // initial credit, and doing it again refunds nothing.
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
        Decimal::from(1000),
        "{}: credit after cancelling every charge (seed {seed}): {all:?}",
        everything.user
    );
    let again = try_cancel(api, &everything, "everything again").expect("answered");
    assert_eq!(
        (again.refunded, again.amount, again.journal_id, again.credit),
        (0, Decimal::ZERO, None, Decimal::from(1000)),
        "a repeated cancellation must refund nothing (seed {seed})"
    );
    answers.push(all);
    answers.push(again);
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
    // Credit moved by exactly the independent expectation less what was refunded, and
    // equals the sums of credit_used over all xDRs (originals and refunds).
    let credits: BTreeMap<String, Decimal> = env.credits().into_iter().collect();
    assert_eq!(credits.len(), USERS, "subscribers: {credits:?}");
    let ledger = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
    for (user, want) in &expected {
        let taken = Decimal::from(1000) - credits[user];
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
}
