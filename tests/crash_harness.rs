//! Crash consistency: `ratel serve` is killed with SIGKILL at random (seeded) moments while
//! RADIUS sessions and spooled CDR files (every other one gzip'd) stream in, and restarted
//! each time; the generator retransmits whatever was not acknowledged (and replays some
//! acknowledged packets). At the end every subscriber's credit must have moved by exactly
//! the independently computed cost of its sessions and calls, every xDR must appear exactly
//! once in readable Parquet, and no temp file may remain.
//!
//! `RATEL_CRASH_SEED` replays a run; `RATEL_CRASH_KILLS` (default 20) sets the number of kills.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::UdpSocket;
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

fn parquet_xdrs(data: &Path) -> Vec<(u64, String, String, Decimal)> {
    use arrow_array::{Decimal128Array, StringArray, UInt64Array};
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
                let c = col::<Decimal128Array>(&b, "credit_used");
                for i in 0..b.num_rows() {
                    out.push((
                        id.value(i),
                        u.value(i).to_string(),
                        s.value(i).to_string(),
                        Decimal::from_i128_with_scale(c.value(i), 10),
                    ));
                }
            }
        }
    }
    out
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
    for k in 0..kills {
        let (server, radius) = env.serve();
        // Retransmit everything not acknowledged yet (a NAS would), and replay a few
        // acknowledged packets (duplicates must charge nothing).
        let pid = server.pid();
        let delay = 20 + rng.below(150);
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
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay + 50) {
            let i = if rng.below(10) == 0 && next > 0 {
                sequence[rng.below(next as u64) as usize]
            } else if next < sequence.len() {
                sequence[next]
            } else {
                break;
            };
            let first_unacked = sequence.iter().position(|&j| !plan[j].acked);
            let i = match first_unacked {
                Some(p) if p < next => sequence[p],
                _ => i,
            };
            if send_wait(&sock, radius, &plan[i].bytes) {
                plan[i].acked = true;
                if next < sequence.len() && sequence[next] == i {
                    next += 1;
                }
            } else {
                break;
            }
        }
        killer.join().unwrap();
        drop(server);
    }
    // Final run: everything left, all spool files, then a graceful stop.
    let (server, radius) = env.serve();
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
    stop(server);

    // Every xDR once, in readable Parquet.
    let xdrs = parquet_xdrs(&env.data());
    let ids: HashSet<u64> = xdrs.iter().map(|x| x.0).collect();
    assert_eq!(ids.len(), xdrs.len(), "an xDR id appears twice");
    let sessions: HashSet<&str> = xdrs.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(
        sessions.len(),
        xdrs.len(),
        "a session or call was written twice"
    );
    assert_eq!(xdrs.len(), SESSIONS + cdr_files.len() * 300);
    // Credit moved by exactly the independent expectation, and equals the xDR sums.
    let credits: BTreeMap<String, Decimal> = env.credits().into_iter().collect();
    assert_eq!(credits.len(), USERS, "subscribers: {credits:?}");
    for (user, want) in &expected {
        let taken = Decimal::from(1000) - credits[user];
        let used: Decimal = xdrs.iter().filter(|x| &x.1 == user).map(|x| x.3).sum();
        assert_eq!(
            taken, *want,
            "{user}: ledger took {taken}, expected {want} (seed {seed})"
        );
        assert_eq!(
            used, *want,
            "{user}: xDRs sum {used}, expected {want} (seed {seed})"
        );
    }
}
