//! Provisioning events under load (DESIGN.md "Events"): the outbox is the ledger's `events`
//! table, so 10,000 events queued for a handler that is down must not grow `ratel serve`'s
//! memory; once the handler is up, every one of them is delivered, one at a time, in
//! `event_id` order.
//!
//! The events: 1,000 clients created in one `user.addNewUsers` call (`clients.create` each),
//! then 9 × 1,000 balance events from `user.changeCreditExtended` SET on those 1,000 clients,
//! alternately -1 (`clients.balance_nonpositive`) and 1 (`clients.balance_nonnegative`) —
//! no new client after the first 1,000, so what serve holds for its clients does not grow
//! between the two measures of its RSS.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// serve's resident set size in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn admin(mut params: serde_json::Value) -> serde_json::Value {
    let p = params.as_object_mut().unwrap();
    p.insert("auth_type".into(), "ADMIN".into());
    p.insert("auth_name".into(), "system".into());
    p.insert("auth_pass".into(), "sys".into());
    params
}

fn call(api: SocketAddr, method: &str, params: serde_json::Value) -> serde_json::Value {
    let (r, e) = rpc(api, method, admin(params));
    assert!(e.is_null(), "{method}: {e}");
    r
}

/// Reads one HTTP request (head and a `Content-Length` body); `None` if the peer closed
/// before sending it whole.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
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

/// One POST the handler received: the `Idempotency-Key`, the body's `event_id` and
/// `event`, and when.
#[derive(Debug, Clone)]
struct Receipt {
    key: Option<i64>,
    event_id: Option<i64>,
    event: String,
    at: Instant,
}

/// An HTTP handler on `listener` that records every request and answers 200.
fn handler(listener: TcpListener) -> Arc<Mutex<Vec<Receipt>>> {
    use std::io::Write;
    let log: Arc<Mutex<Vec<Receipt>>> = Arc::default();
    let out = log.clone();
    std::thread::spawn(move || {
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
            out.lock().unwrap().push(Receipt {
                key,
                event_id: body["event_id"].as_i64(),
                event: body["event"].as_str().unwrap_or("").to_string(),
                at: Instant::now(),
            });
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    log
}

/// A counter of `ratel_events` (`GET /metrics`) by its `result` label.
fn event_counter(api: SocketAddr, result: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let label = format!("{{result=\"{result}\"}}");
    text.lines()
        .filter(|l| l.starts_with("ratel_events") && l.contains(&label))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("no ratel_events {result} in /metrics: {text}"))
}

/// The events table of the ledger (read beside the running server): (event_id, name).
fn ledger_events(env: &Env) -> Vec<(i64, String)> {
    let ledger = rusqlite::Connection::open_with_flags(
        env.data().join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let events = ledger
        .prepare("SELECT event_id, name FROM events ORDER BY event_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    events
}

#[test]
fn ten_thousand_events_queued_for_a_dead_handler_stay_in_the_ledger_then_arrive_in_order() {
    let started = Instant::now();
    let env = Env::new();
    // A free port for the handler, closed for now (nothing listens: connection refused).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = std::fs::read_to_string(env.config()).unwrap();
    cfg.push_str(&format!(
        "[[hook]]\nname = \"crm\"\nevents = [\"clients.*\"]\nurl = \"http://127.0.0.1:{port}/events\"\n\
         mode = \"notify\"\ntimeout_ms = 200\nmax_attempts = 0\n"
    ));
    std::fs::write(env.config(), cfg).unwrap();
    let (server, _radius, api) = env.serve_all();
    let pid = server.pid();
    let rss_start = rss_kib(pid);

    // The first 1,000: clients created.
    let t = Instant::now();
    let ids: Vec<i64> = call(
        api,
        "user.addNewUsers",
        serde_json::json!({"count": 1000, "group_name": "g", "credit": "1"}),
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_i64().unwrap())
    .collect();
    assert_eq!(ids.len(), 1000);
    let rss_1k = rss_kib(pid);
    // 9,000 more: every one of those clients crosses zero 9 times (-1, 1, -1, …).
    for round in 0..9 {
        let credit = if round % 2 == 0 { "-1" } else { "1" };
        let r = call(
            api,
            "user.changeCreditExtended",
            serde_json::json!({"user_id": ids, "credit": credit, "change_type": "SET"}),
        );
        assert_eq!(r.as_array().map(Vec::len), Some(1000), "round {round}: {r}");
    }
    let queued_in = t.elapsed();
    let rss_10k = rss_kib(pid);
    // The hook's events (clients.*; the import's accounts.create are not its).
    let mut stored = ledger_events(&env);
    stored.retain(|(_, n)| n.starts_with("clients."));
    let body_bytes: i64 = rusqlite::Connection::open_with_flags(
        env.data().join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row(
        "SELECT coalesce(sum(length(body)), 0) FROM events",
        [],
        |r| r.get(0),
    )
    .unwrap();
    let creates = stored.iter().filter(|(_, n)| n == "clients.create").count();
    let balance = stored
        .iter()
        .filter(|(_, n)| n.starts_with("clients.balance_"))
        .count();
    assert_eq!(
        (creates, balance),
        (1000 + 2, 9000),
        "events: creates (2 imported), balance"
    );
    println!(
        "events load: {} events for the hook ({} KiB of bodies) queued in {:.1} s with the handler down; serve RSS {} KiB at start, \
         {} KiB after the first 1,000, {} KiB after 10,000 (+{} KiB)",
        stored.len(),
        body_bytes / 1024,
        queued_in.as_secs_f64(),
        rss_start,
        rss_1k,
        rss_10k,
        rss_10k as i64 - rss_1k as i64
    );
    // The outbox is in the ledger, not in memory: 9,000 more events (and their journal
    // rows) grow serve by far less than a generous 64 MiB (its ledger page cache may take a
    // few MiB of the grown tables).
    assert!(
        rss_10k < rss_1k + 64 * 1024,
        "serve grew from {rss_1k} KiB to {rss_10k} KiB with 9,000 more events queued"
    );
    // Nothing was delivered: the handler is down.
    let listed = call(
        api,
        "report.getEvents",
        serde_json::json!({"after": 0, "limit": 5}),
    );
    for e in listed.as_array().unwrap() {
        if e["event"].as_str().unwrap().starts_with("clients.") {
            assert_eq!(e["hooks"][0]["state"], "pending", "{e}");
        }
    }

    // The delivery thread keeps trying (and failing: connection refused), backing off 1 s,
    // then 2 s, …: let it fail twice before the handler comes up on its port; its backoff
    // then decides when it tries again (at most 4 s later).
    let t = Instant::now();
    while event_counter(api, "failed_attempt") < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the delivery thread does not retry"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = event_counter(api, "failed_attempt");
    assert_eq!(event_counter(api, "delivered"), 0);
    let up = Instant::now();
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e) => {
                assert!(up.elapsed() < Duration::from_secs(5), "rebind {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let receipts = handler(listener);
    let all: Vec<i64> = stored.iter().map(|(id, _)| *id).collect();
    let last = *all.last().unwrap();
    let deadline = up + Duration::from_secs(180);
    loop {
        let done = receipts
            .lock()
            .unwrap()
            .last()
            .is_some_and(|r| r.key == Some(last));
        if done {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let receipts = receipts.lock().unwrap().clone();
    // serve records a delivery after the handler's answer: let it record the last one.
    let t = Instant::now();
    let mut delivered = event_counter(api, "delivered");
    while delivered < receipts.len() as u64 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        delivered = event_counter(api, "delivered");
    }
    let rss_after = rss_kib(pid);
    let (first, end) = (
        receipts.first().map(|r| r.at),
        receipts.last().map(|r| r.at),
    );
    let rate = match (first, end) {
        (Some(a), Some(b)) if receipts.len() > 1 => {
            (receipts.len() - 1) as f64 / (b - a).as_secs_f64().max(1e-3)
        }
        _ => 0.0,
    };
    println!(
        "events load: handler up after {failed} failed attempts; first POST {:.1} s later (backoff), \
         {} POSTs in {:.1} s ({rate:.0}/s, {delivered} counted delivered); serve RSS {rss_after} KiB \
         after delivery; test {:.1} s",
        first.map(|f| (f - up).as_secs_f64()).unwrap_or(-1.0),
        receipts.len(),
        end.map(|e| (e - up).as_secs_f64()).unwrap_or(-1.0),
        started.elapsed().as_secs_f64()
    );
    // In order, each once (the handler answered 200 every time and serve lived on), each
    // with its id as Idempotency-Key and in the body, each the ledger's event.
    let got: Vec<i64> = receipts.iter().map(|r| r.key.unwrap()).collect();
    let mut seen = HashSet::new();
    let repeats = got.iter().filter(|k| !seen.insert(**k)).count();
    assert_eq!(repeats, 0, "events sent twice though acknowledged");
    for (r, (id, name)) in receipts.iter().zip(&stored) {
        assert_eq!(
            (r.key, r.event_id, r.event.as_str()),
            (Some(*id), Some(*id), name.as_str()),
            "deliveries out of order or not the ledger's events"
        );
    }
    assert_eq!(
        got.len(),
        all.len(),
        "{} of {} events delivered within 180 s of the handler coming up ({rate:.0}/s)",
        got.len(),
        all.len()
    );
    // The API agrees: nothing pending.
    let mut after = 0i64;
    loop {
        let list = call(
            api,
            "report.getEvents",
            serde_json::json!({"after": after, "limit": 1000}),
        );
        let list = list.as_array().unwrap();
        let Some(e) = list.last() else { break };
        after = e["event_id"].as_i64().unwrap();
        for e in list {
            if e["event"].as_str().unwrap().starts_with("clients.") {
                assert_eq!(e["hooks"][0]["state"], "delivered", "{e}");
            }
        }
    }
    stop(server);
}
