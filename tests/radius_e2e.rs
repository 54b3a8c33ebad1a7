//! End-to-end RADIUS accounting: the real `ratel serve` binary on 127.0.0.1, driven over a
//! real UDP socket with packets built by radius-rs (a codec we did not write), answers
//! checked with radius-rs's response verification; credits read from the ledger and xDRs
//! from Parquet after a graceful stop; a `kill -9` between updates loses nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::rfc2866;
use rust_decimal::Decimal;

#[test]
fn session_is_charged_once_with_retransmissions_and_replays() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    let gb = 1_000_000_000u64;
    assert!(send(&c, addr, &acct(1, 1, "alice", "s1", 0, 0, 0, None)).is_some());
    let interim = acct(2, 3, "alice", "s1", 600, gb, 0, None);
    assert!(send(&c, addr, &interim).is_some());
    // The same datagram again (a retransmission): the same answer, no second charge.
    assert!(send(&c, addr, &interim).is_some());
    // A replay with a new identifier but the same counters: answered, charges nothing.
    assert!(send(&c, addr, &acct(3, 3, "alice", "s1", 600, gb, 0, None)).is_some());
    // Counters with gigawords: 2^32 + 10^9 octets in at the Stop.
    let stop_pkt = acct(4, 2, "alice", "s1", 1200, (1 << 32) + gb, 0, Some(1));
    assert!(send(&c, addr, &stop_pkt).is_some());
    // A late Stop of the closed session with a new identifier: acknowledged, not charged.
    assert!(send(
        &c,
        addr,
        &acct(5, 2, "alice", "s1", 1300, (1 << 32) + 2 * gb, 0, Some(1))
    )
    .is_some());
    // An unknown user: acknowledged, xDR UNKNOWN_USER, nothing charged.
    assert!(send(&c, addr, &acct(6, 1, "mallory", "s2", 0, 0, 0, None)).is_some());
    assert!(send(&c, addr, &acct(7, 2, "mallory", "s2", 60, gb, 0, Some(1))).is_some());
    // A packet signed with the wrong secret: dropped, no answer.
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, b"wrong", 8);
    rfc2866::add_acct_status_type(&mut p, 1);
    rfc2866::add_acct_session_id(&mut p, "s3");
    let bad = p.encode().unwrap();
    let q = client();
    q.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    assert!(
        send(&q, addr, &bad).is_none(),
        "a packet with a wrong authenticator was answered"
    );
    // Garbage: dropped, the service goes on.
    for g in [
        &b"\x04\x01\x00"[..],
        &[4u8, 9, 0, 30, 0, 0][..],
        &[0xffu8; 100][..],
    ] {
        q.send_to(g, addr).unwrap();
    }
    assert!(send(&c, addr, &acct(9, 1, "bob", "s4", 0, 0, 0, None)).is_some());
    stop(child);

    // Hand computation, "day" rule (0.01/min, 0.5/GB), decimals 4, up:
    // time 1200 s = 20 min * 0.01 = 0.2; traffic in = 2^32 + 10^9 = 5294967296 B
    // = 5.294967296 GB * 0.5 = 2.647483648 -> total 2.847483648 -> 2.8475.
    let credits = env.credits();
    assert_eq!(
        credits,
        vec![
            ("alice".to_string(), d("7.1525")),
            ("bob".to_string(), d("5"))
        ]
    );
    let x = xdrs(&env.data());
    assert_eq!(
        x,
        vec![
            (
                "alice".into(),
                "OK".into(),
                "s1".into(),
                1200,
                (1i64 << 32) + gb as i64,
                d("2.8475"),
                d("7.1525")
            ),
            (
                "mallory".into(),
                "UNKNOWN_USER".into(),
                "s2".into(),
                60,
                gb as i64,
                d("0"),
                d("0")
            ),
        ]
    );
}

#[test]
fn kill_9_loses_no_acknowledged_update() {
    let env = Env::new();
    let (mut child, addr) = env.serve();
    let c = client();
    let gb = 1_000_000_000u64;
    assert!(send(&c, addr, &acct(1, 1, "alice", "k1", 0, 0, 0, None)).is_some());
    assert!(send(&c, addr, &acct(2, 3, "alice", "k1", 600, gb, 0, None)).is_some());
    // Acknowledged: it must survive SIGKILL.
    child.kill9();
    let (child, addr) = env.serve();
    // The retransmitted interim after the restart charges nothing; the Stop finishes it.
    assert!(send(&c, addr, &acct(2, 3, "alice", "k1", 600, gb, 0, None)).is_some());
    assert!(send(
        &c,
        addr,
        &acct(3, 2, "alice", "k1", 1200, 2 * gb, 0, Some(1))
    )
    .is_some());
    stop(child);
    // 20 min * 0.01 = 0.2; 2 GB * 0.5 = 1.0 -> 1.2 taken once.
    assert_eq!(env.credits()[0], ("alice".to_string(), d("8.8")));
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].5, d("1.2"));
}

#[test]
fn accounting_on_closes_the_nas_sessions() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    assert!(send(&c, addr, &acct(1, 1, "alice", "a1", 0, 0, 0, None)).is_some());
    assert!(send(&c, addr, &acct(2, 3, "alice", "a1", 300, 0, 0, None)).is_some());
    assert!(send(&c, addr, &acct(3, 1, "bob", "b1", 0, 0, 0, None)).is_some());
    let mut on = Packet::new_with_identifier(Code::AccountingRequest, SECRET, 4);
    rfc2866::add_acct_status_type(&mut on, rfc2866::ACCT_STATUS_TYPE_ACCOUNTING_ON);
    assert!(send(&c, addr, &on.encode().unwrap()).is_some());
    stop(child);
    // alice: 5 min * 0.01 = 0.05 at her last update; bob: nothing used.
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 2);
    assert_eq!((x[0].2.as_str(), x[0].3, x[0].5), ("a1", 300, d("0.05")));
    assert_eq!((x[1].2.as_str(), x[1].3, x[1].5), ("b1", 0, d("0")));
    assert_eq!(env.credits()[0].1, d("9.95"));
}

#[test]
fn spool_files_are_rated_by_serve_and_rate_refuses_meanwhile() {
    let env = Env::new();
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (child, _addr) = env.serve();
    // While serve holds the data dir, `ratel rate` refuses.
    let f = env.dir.path().join("calls.csv");
    std::fs::write(&f, "call_id,caller,callee,start_time,duration_s,disposition,account\nx1,1,15551234567,2026-11-02T10:00:00Z,60,ANSWERED,alice\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["rate", "--config", &env.config(), &f.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another ratel process"));
    // Dropped into the spool instead: rated and moved to done/.
    std::fs::write(spool.join(".calls.tmp"), std::fs::read(&f).unwrap()).unwrap();
    std::fs::rename(spool.join(".calls.tmp"), spool.join("calls.csv")).unwrap();
    let done = spool.join("done/calls.csv");
    for _ in 0..100 {
        if done.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(done.exists(), "spool file not moved to done/");
    stop(child);
    let x = xdrs(&env.data());
    // group g has no tariff: the call is rated NO_RATE at cost 0, written, never dropped.
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].1.as_str(), x[0].2.as_str()), ("NO_RATE", "x1"));
}

/// Whether any CDR xDR file exists under the data dir (rating of a spool file has begun).
fn cdr_files_exist(data: &std::path::Path) -> bool {
    let Ok(parts) = std::fs::read_dir(data.join("xdr")) else {
        return false;
    };
    parts.flatten().any(|p| {
        std::fs::read_dir(p.path()).is_ok_and(|fs| {
            fs.flatten().any(|f| {
                let n = f.file_name();
                let n = n.to_string_lossy();
                n.starts_with("cdr-") || n.starts_with(".cdr-")
            })
        })
    })
}

/// A generic CDR file of `rows` calls (`c<i>`, 60 s each, prefix 1) spread over `users`
/// subscribers `user<i>`: ~70 bytes a call.
fn calls_csv(rows: usize, users: usize) -> String {
    use std::fmt::Write;
    let mut csv = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    for i in 0..rows {
        writeln!(
            csv,
            "c{i},1,15551234567,2026-11-02T1{}:{:02}:{:02}Z,60,ANSWERED,user{}",
            i % 8,
            (i / 60) % 60,
            i % 60,
            i % users
        )
        .unwrap();
    }
    csv
}

/// Sends `req` and waits for its verified answer, skipping answers to earlier requests
/// (a retransmission of a slow request is answered twice); None after the read timeout.
fn send_skipping_stale(
    sock: &std::net::UdpSocket,
    to: std::net::SocketAddr,
    req: &[u8],
) -> Option<Vec<u8>> {
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let resp = &buf[..n];
        if resp[1] == req[1] && Packet::is_authentic_response(resp, req, SECRET) {
            assert_eq!(resp[0], 5, "Accounting-Response code");
            return Some(resp.to_vec());
        }
    }
}

/// Sessions `s<k>` (Start, then Stop at 60 s; one request in flight, each retransmitted
/// until answered) of `user<k % users>`, from `*k` on, until `until()`; counts the
/// answers that came while `during()` held.
fn sessions_until(
    c: &std::net::UdpSocket,
    addr: std::net::SocketAddr,
    users: usize,
    k: &mut usize,
    mut until: impl FnMut() -> bool,
    mut during: impl FnMut() -> bool,
) -> usize {
    let mut answered_during = 0;
    let started = std::time::Instant::now();
    while !until() && started.elapsed() < Duration::from_secs(240) {
        let (user, sid) = (format!("user{}", *k % users), format!("s{k}"));
        for (status, secs) in [(1u32, 0u32), (2, 60)] {
            let id = (2 * *k + status as usize) as u8;
            let req = acct(id, status, &user, &sid, secs, 0, 0, None);
            let mut tries = 0;
            while send_skipping_stale(c, addr, &req).is_none() {
                tries += 1;
                assert!(tries < 40, "session {sid} not answered");
            }
            if during() {
                answered_during += 1;
            }
        }
        *k += 1;
    }
    answered_during
}

/// After everything settled: one xDR per call of the file and per session, none twice,
/// and every credit equal to 1000 less that subscriber's xDRs (0.01 each).
fn assert_each_charged_once(env: &Env, rows: usize, sessions: usize) {
    let x = xdrs(&env.data());
    let ids: std::collections::HashSet<&str> = x.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(ids.len(), x.len(), "an xDR written twice");
    assert_eq!(x.len(), rows + sessions, "one xDR per call and per session");
    let mut used: std::collections::HashMap<&str, Decimal> = Default::default();
    for r in &x {
        assert_eq!(r.5, d("0.01"), "{r:?}");
        *used.entry(r.0.as_str()).or_default() += r.5;
    }
    for (name, credit) in env.credits() {
        let u = used.get(name.as_str()).copied().unwrap_or_default();
        assert_eq!(credit, d("1000") - u, "{name}");
    }
}

/// A spool file of several blocks is rated a block at a time, and RADIUS accounting is
/// answered between the blocks: acknowledgements arrive after the file's first xDRs are
/// written and before it is moved to done/ (before, the socket was not read until the
/// whole file was rated, so none could). Payments made over the API meanwhile land
/// between blocks too. Every call, session and payment counts once: credits equal what
/// the test computes from what it sent.
#[test]
fn radius_is_answered_while_a_big_spool_file_is_rated() {
    let users = 50;
    let env = Env::new_with_users(users, "1000");
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // ~18 MiB: five blocks of serve's 4 MiB, four chances to answer between them.
    let rows = 300_000usize;
    let (child, addr, api) = env.serve_all();
    std::fs::write(spool.join(".calls.tmp"), calls_csv(rows, users)).unwrap();
    std::fs::rename(spool.join(".calls.tmp"), spool.join("calls.csv")).unwrap();
    let (waiting, done) = (spool.join("calls.csv"), spool.join("done/calls.csv"));
    let c = client();
    let mut k = 0;
    // A payment of 1.00 to user0 (client id 1) at every fourth answer while the file is
    // half rated: it must not take the file's unfolded charges a second time.
    let (mut answers, mut paid) = (0, 0i64);
    let during = sessions_until(
        &c,
        addr,
        users,
        &mut k,
        || done.exists(),
        || {
            let now = waiting.exists() && cdr_files_exist(&env.data());
            answers += 1;
            if now && answers % 4 == 0 {
                let (_, e) = rpc(
                    api,
                    "user.changeCreditExtended",
                    serde_json::json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys",
                        "user_id": "1", "credit": "1.00", "change_type": "ADD", "credit_comment": "during"}),
                );
                assert!(e.is_null(), "{e}");
                paid += 1;
            }
            now
        },
    );
    assert!(done.exists(), "spool file not rated in time");
    assert!(
        during >= 2,
        "only {during} RADIUS answers while the spool file was being rated"
    );
    stop(child);
    // Exactly: 6,000 calls per subscriber plus its sessions, 0.01 each.
    let x = xdrs(&env.data());
    let sessions_of = |u: usize| (0..k).filter(|s| s % users == u).count();
    assert!(paid > 0, "no payment made while the file was half rated");
    for (name, credit) in env.credits() {
        let u: usize = name.trim_start_matches("user").parse().unwrap();
        let n = rows / users + sessions_of(u);
        let topped = if u == 0 {
            Decimal::from(paid)
        } else {
            Decimal::ZERO
        };
        assert_eq!(
            credit,
            d("1000") + topped - d("0.01") * Decimal::from(n),
            "{name}"
        );
    }
    assert_eq!(x.len(), rows + k);
}

/// SIGKILL while a spool file is rated in parts between RADIUS batches: after the
/// restart the file goes on from its last committed block, and no call, session or
/// balance is lost or counted twice (the RADIUS commits between blocks wrote balances
/// while part of the file was rated).
#[test]
fn kill_9_while_a_spool_file_is_rated_between_radius_batches() {
    let users = 50;
    let env = Env::new_with_users(users, "1000");
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let rows = 300_000usize;
    let (mut child, addr) = env.serve();
    std::fs::write(spool.join(".calls.tmp"), calls_csv(rows, users)).unwrap();
    std::fs::rename(spool.join(".calls.tmp"), spool.join("calls.csv")).unwrap();
    let (waiting, done) = (spool.join("calls.csv"), spool.join("done/calls.csv"));
    let c = client();
    let mut k = 0;
    // Until the file is part rated and sessions were answered meanwhile, then kill.
    sessions_until(
        &c,
        addr,
        users,
        &mut k,
        {
            let mut passes = 0;
            let data = env.data();
            let done = done.clone();
            move || {
                passes += 1;
                (passes > 3 && cdr_files_exist(&data)) || done.exists()
            }
        },
        || false,
    );
    let part_rated = waiting.exists();
    child.kill9();
    assert!(part_rated, "the file was rated to its end before the kill");
    let (child, addr) = env.serve();
    sessions_until(&c, addr, users, &mut k, || done.exists(), || false);
    assert!(
        done.exists(),
        "spool file not rated in time after the restart"
    );
    stop(child);
    assert_each_charged_once(&env, rows, k);
}

/// An Accounting-Request like [`acct`], with its Event-Timestamp given explicitly.
#[allow(clippy::too_many_arguments)]
fn acct_at(
    id: u8,
    status: u32,
    user: &str,
    sid: &str,
    secs: u32,
    octets_in: u64,
    event: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    use radius::core::{rfc2865, rfc2869};
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, id);
    rfc2866::add_acct_status_type(&mut p, status);
    rfc2865::add_user_name(&mut p, user);
    rfc2866::add_acct_session_id(&mut p, sid);
    rfc2866::add_acct_session_time(&mut p, secs);
    rfc2866::add_acct_input_octets(&mut p, octets_in as u32);
    rfc2869::add_acct_input_gigawords(&mut p, (octets_in >> 32) as u32);
    rfc2866::add_acct_output_octets(&mut p, 0);
    rfc2869::add_event_timestamp(&mut p, &event);
    p.encode().unwrap()
}

/// Sends every packet at once (they share a group commit when they can), then collects
/// the answers: whether each request got a verified Accounting-Response.
fn burst(sock: &std::net::UdpSocket, to: std::net::SocketAddr, reqs: &[Vec<u8>]) -> Vec<bool> {
    for r in reqs {
        sock.send_to(r, to).unwrap();
    }
    let mut answered = vec![false; reqs.len()];
    let mut buf = [0u8; 4096];
    // At most one receive per request, each bounded by the socket's read timeout.
    for _ in 0..reqs.len() {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        for (i, r) in reqs.iter().enumerate() {
            if buf[1] == r[1] && Packet::is_authentic_response(&buf[..n], r, SECRET) {
                answered[i] = true;
            }
        }
    }
    answered
}

/// Adds `lines` to the `[[nas]]` entry of the env's config.
fn configure_nas(env: &Env, lines: &str) {
    let path = env.config();
    let cfg = std::fs::read_to_string(&path).unwrap();
    let cfg = cfg.replace(
        "secret = \"testing123\"\n",
        &format!("secret = \"testing123\"\n{lines}\n"),
    );
    std::fs::write(&path, cfg).unwrap();
}

/// Journal sum of each user's RADIUS charges (negative: credit taken).
fn radius_journal(env: &Env) -> Vec<(String, Decimal)> {
    let l = ratel_engine::ledger::Ledger::open(&env.data()).unwrap();
    l.load_users()
        .unwrap()
        .into_iter()
        .map(|u| {
            (
                u.username.unwrap(),
                l.journal_sum(u.user_id, Some("usage")).unwrap(),
            )
        })
        .collect()
}

/// Issue 10 item 4: a replayed Interim/Stop of a session the closed-session memory has
/// forgotten (older than 24 h) rebuilds a journal idempotency key that exists already. It
/// must be acknowledged and charge nothing, and it must not stop the packets that share its
/// group commit from being acknowledged.
#[test]
fn replay_older_than_the_closed_memory_is_acknowledged_and_charges_nothing() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    let gb = 1_000_000_000u64;
    let interim = acct(2, 3, "alice", "s1", 600, gb, 0, None);
    let stop_pkt = acct(3, 2, "alice", "s1", 1200, 2 * gb, 0, Some(1));
    assert!(send(&c, addr, &acct(1, 1, "alice", "s1", 0, 0, 0, None)).is_some());
    assert!(send(&c, addr, &interim).is_some());
    assert!(send(&c, addr, &stop_pkt).is_some());
    stop(child);
    // More than a day later the closed-session memory no longer holds s1.
    {
        let db = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
        assert_eq!(db.execute("DELETE FROM radius_closed", []).unwrap(), 1);
    }
    let (child, addr) = env.serve();
    // A proxy replays the old Interim and Stop with new identifiers, in one burst with
    // packets of other sessions.
    let replays = [
        acct(10, 3, "alice", "s1", 600, gb, 0, None),
        acct(11, 1, "bob", "b1", 0, 0, 0, None),
        acct(12, 2, "alice", "s1", 1200, 2 * gb, 0, Some(1)),
        acct(13, 3, "bob", "b1", 60, 0, 0, None),
    ];
    assert_eq!(
        burst(&c, addr, &replays),
        vec![true; 4],
        "every packet answered"
    );
    // Each again (retransmissions) and once more with yet other identifiers.
    assert_eq!(burst(&c, addr, &replays), vec![true; 4]);
    assert!(send(&c, addr, &acct(14, 3, "alice", "s1", 600, gb, 0, None)).is_some());
    assert!(send(&c, addr, &acct(15, 2, "bob", "b1", 120, 0, 0, Some(1))).is_some());
    stop(child);
    // alice: 20 min * 0.01 + 2 GB * 0.5 = 1.2, once. bob: 2 min * 0.01 = 0.02.
    assert_eq!(
        env.credits(),
        vec![
            ("alice".to_string(), d("8.8")),
            ("bob".to_string(), d("4.98"))
        ]
    );
    assert_eq!(
        radius_journal(&env),
        vec![
            ("alice".to_string(), d("-1.2")),
            ("bob".to_string(), d("-0.02"))
        ]
    );
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!((x[0].2.as_str(), x[0].5), ("b1", d("0.02")));
    assert_eq!((x[1].2.as_str(), x[1].5), ("s1", d("1.2")));
}

/// Issue 10 items 6 and 7: an Acct-Session-Time beyond `[radius] max_session_secs` and a
/// traffic jump no link could carry (all-ones gigawords) are acknowledged, logged and not
/// rated; the session goes on from its last sane update.
#[test]
fn absurd_session_time_and_octets_are_acknowledged_but_not_rated() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    let gb = 1_000_000_000u64;
    let at = |s: i64| t0() + chrono::Duration::seconds(s);
    assert!(send(&c, addr, &acct_at(1, 1, "alice", "x1", 0, 0, at(0))).is_some());
    // 2^32 - 1 seconds (136 years) of session time.
    assert!(send(
        &c,
        addr,
        &acct_at(2, 3, "alice", "x1", u32::MAX, 0, at(300))
    )
    .is_some());
    // 2^64 - 1 octets in after 600 s.
    assert!(send(
        &c,
        addr,
        &acct_at(3, 3, "alice", "x1", 600, u64::MAX, at(600))
    )
    .is_some());
    assert!(send(&c, addr, &acct_at(4, 2, "alice", "x1", 1200, gb, at(1200))).is_some());
    stop(child);
    // 20 min * 0.01 = 0.2; 1 GB * 0.5 = 0.5.
    assert_eq!(env.credits()[0], ("alice".to_string(), d("9.3")));
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].3, x[0].4, x[0].5), (1200, gb as i64, d("0.7")));
}

/// Issue 10 item 10: Starts beyond a NAS's `max_sessions` are acknowledged but not
/// tracked (their Stops charge nothing while the NAS is at its cap).
#[test]
fn sessions_beyond_the_nas_cap_are_acknowledged_but_not_tracked() {
    let env = Env::new();
    configure_nas(&env, "max_sessions = 3");
    let (child, addr) = env.serve();
    let c = client();
    for i in 1..=5u8 {
        let sid = format!("a{i}");
        assert!(send(&c, addr, &acct(i, 1, "alice", &sid, 0, 0, 0, None)).is_some());
    }
    // Stops of the capped sessions first, while the NAS still holds three open sessions.
    for i in [4u8, 5, 1, 2, 3] {
        let sid = format!("a{i}");
        let p = acct(10 + i, 2, "alice", &sid, 60, 0, 0, Some(1));
        assert!(send(&c, addr, &p).is_some(), "Stop of {sid} answered");
    }
    stop(child);
    // Three sessions of 1 min at 0.01/min.
    assert_eq!(env.credits()[0], ("alice".to_string(), d("9.97")));
    let x = xdrs(&env.data());
    let sids: Vec<&str> = x.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(sids, vec!["a1", "a2", "a3"]);
}

/// Issue 10 item 10: at most 16 open UNKNOWN_USER sessions per username; more Starts are
/// acknowledged and not tracked.
#[test]
fn unknown_user_sessions_are_capped_per_username() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    for i in 0..20u8 {
        let sid = format!("m{i:02}");
        assert!(send(&c, addr, &acct(i, 1, "mallory", &sid, 0, 0, 0, None)).is_some());
    }
    for i in (16..20u8).chain(0..16) {
        let sid = format!("m{i:02}");
        let p = acct(100 + i, 2, "mallory", &sid, 60, 0, 0, Some(1));
        assert!(send(&c, addr, &p).is_some(), "Stop of {sid} answered");
    }
    stop(child);
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 16, "{x:?}");
    assert!(x
        .iter()
        .all(|x| x.1 == "UNKNOWN_USER" && x.2.as_str() < "m16"));
}

/// A NAS that counts Acct-Session-Ids from 1 again after a reboot (within the 24 h
/// closed-session memory, across a restart of ratel): the new session with an old id is
/// charged in full, even where its counters equal the old session's; a late Stop of the old
/// session still charges nothing.
#[test]
fn a_session_id_reused_after_a_nas_reboot_is_charged() {
    use radius::core::{rfc2865, rfc2869};
    let at = |id: u8, status: u32, begins: chrono::DateTime<chrono::Utc>, secs: u32| {
        let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, id);
        rfc2866::add_acct_status_type(&mut p, status);
        rfc2865::add_user_name(&mut p, "alice");
        rfc2866::add_acct_session_id(&mut p, "1");
        rfc2866::add_acct_session_time(&mut p, secs);
        rfc2869::add_event_timestamp(&mut p, &(begins + chrono::Duration::seconds(secs as i64)));
        p.encode().unwrap()
    };
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    let first = t0();
    assert!(send(&c, addr, &at(1, 1, first, 0)).is_some());
    assert!(send(&c, addr, &at(2, 3, first, 600)).is_some());
    assert!(send(&c, addr, &at(3, 2, first, 1200)).is_some());
    stop(child);
    // ratel restarts; the NAS reboots and numbers its sessions from 1 again.
    let (child, addr) = env.serve();
    let second = t0() + chrono::Duration::hours(2);
    assert!(send(&c, addr, &at(10, 1, second, 0)).is_some());
    // The same Acct-Session-Time as a charged update of the old session.
    assert!(send(&c, addr, &at(11, 3, second, 600)).is_some());
    assert!(send(&c, addr, &at(12, 2, second, 1800)).is_some());
    // A late Stop of the first session (new Identifier): nothing.
    assert!(send(&c, addr, &at(13, 2, first, 1200)).is_some());
    stop(child);
    // Day rule 0.01/min: 20 min + 30 min = 0.5 from 10.
    assert_eq!(env.credits()[0], ("alice".to_string(), d("9.5")));
    let x = xdrs(&env.data());
    let mut charged: Vec<Decimal> = x.iter().filter(|r| r.0 == "alice").map(|r| r.5).collect();
    charged.sort();
    assert_eq!(charged, vec![d("0.2"), d("0.3")], "{x:?}");
}

/// Big batches leave their WAL fsync to the acknowledger thread (engine/src/acks.rs): a
/// burst of 300 Starts and then 300 Stops, sent at once the way a busy proxy forwards
/// them, makes batches of 128 packets or more. Every packet is answered (the unanswered
/// sent again, as a NAS does), every session is charged exactly once, and the metrics
/// show that the acknowledger answered some batches.
#[test]
fn a_burst_is_answered_after_the_acknowledgers_fsync_and_charged_once() {
    let env = Env::new();
    let (child, addr, api) = env.serve_all();
    let c = client();
    let n = 300usize;
    for status in [1u32, 2] {
        let reqs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let (secs, cause) = if status == 1 {
                    (0, None)
                } else {
                    (60, Some(1))
                };
                acct(
                    i as u8,
                    status,
                    "alice",
                    &format!("b{i}"),
                    secs,
                    0,
                    0,
                    cause,
                )
            })
            .collect();
        let mut answered = vec![false; n];
        for _round in 0..10 {
            let todo: Vec<usize> = (0..n).filter(|&i| !answered[i]).collect();
            if todo.is_empty() {
                break;
            }
            let batch: Vec<Vec<u8>> = todo.iter().map(|&i| reqs[i].clone()).collect();
            for (k, ok) in burst(&c, addr, &batch).into_iter().enumerate() {
                answered[todo[k]] |= ok;
            }
        }
        assert!(answered.iter().all(|a| *a), "status {status}: unanswered");
    }
    let text = {
        let a = http_request(None, api, "GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&a.body).into_owned()
    };
    let deferred: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ratel_radius_deferred_fsync_batches_total "))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("ratel_radius_deferred_fsync_batches "))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no deferred-fsync counter in:\n{text}"));
    assert!(deferred >= 1.0, "no batch went through the acknowledger");
    stop(child);
    // 60 s at 0.0100/min = 0.0100 per session, rounded up to 4 decimals: 3.0000 in all.
    assert_eq!(env.credits()[0], ("alice".to_string(), d("7")));
    assert_eq!(radius_journal(&env)[0], ("alice".to_string(), d("-3")));
    let x = xdrs(&env.data());
    assert_eq!(x.len(), n);
    assert!(x.iter().all(|r| r.5 == d("0.01")));
    let ids: std::collections::HashSet<&String> = x.iter().map(|r| &r.2).collect();
    assert_eq!(ids.len(), n, "one xDR per session");
}
