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
