//! End-to-end tests of the operations endpoints on the real binary: `GET /metrics` scraped
//! and parsed after an exact RADIUS / CDR spool / API workload (every counter checked), and
//! `GET /health` answering 503 with a reason while the serve core is stalled with work
//! waiting (the test-only `RATEL_TEST_STALL_CORE_MS` hook), then 200 again.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One HTTP/1.1 GET over a fresh connection: (status, Content-Type, body).
fn http_get(api: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// `GET /metrics` parsed: sample (`name{labels}`) → value text. Checks the exposition's
/// shape on the way: every sample is `ratel_*` and has a `# TYPE` line.
fn scrape(api: SocketAddr) -> HashMap<String, String> {
    let (status, ctype, body) = http_get(api, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let mut typed = Vec::new();
    let mut out = HashMap::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            typed.push(t.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (sample, value) = line.rsplit_once(' ').unwrap();
        assert!(sample.starts_with("ratel_"), "{line}");
        let name = sample.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| name == t
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(t))),
            "{line}: no # TYPE"
        );
        out.insert(sample.to_string(), value.to_string());
    }
    out
}

fn value(m: &HashMap<String, String>, sample: &str) -> String {
    m.get(sample)
        .cloned()
        .unwrap_or_else(|| panic!("{sample} missing from /metrics: {m:#?}"))
}

/// Scrapes until `sample` reads `want` (at most 30 s).
fn wait_metric(api: SocketAddr, sample: &str, want: &str) -> HashMap<String, String> {
    for _ in 0..300 {
        let m = scrape(api);
        if m.get(sample).map(String::as_str) == Some(want) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{sample} did not reach {want} within 30 s: {:#?}",
        scrape(api)
    );
}

/// Drops a generic CDR file into the spool (temp name, old mtime, rename).
fn spool_file(spool: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(spool).unwrap();
    let tmp = spool.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(5))
        .unwrap();
    std::fs::rename(&tmp, spool.join(name)).unwrap();
}

fn admin(extra: serde_json::Value) -> serde_json::Value {
    let mut p = json!({"auth_type": "ADMIN", "auth_name": "system", "auth_pass": "sys"});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[test]
fn metrics_count_an_exact_radius_cdr_and_api_workload() {
    let env = Env::new_with_users(3, "100");
    let (server, radius, api) = env.serve_all();

    // RADIUS: Start, Interim, the Interim again (a retransmission), Stop; a forged
    // packet and one from an address that is no configured NAS.
    let c = client();
    let start = acct(1, 1, "user0", "s1", 0, 0, 0, None);
    let interim = acct(2, 3, "user0", "s1", 300, 1000, 2000, None);
    let stop_req = acct(3, 2, "user0", "s1", 600, 4000, 8000, Some(1));
    for req in [&start, &interim, &interim, &stop_req] {
        assert!(send(&c, radius, req).is_some(), "unanswered");
    }
    // A packet of the NAS with a wrong Request Authenticator: dropped.
    let mut forged = acct(4, 3, "user0", "s1", 400, 0, 0, None);
    forged[4] ^= 0xff;
    c.send_to(&forged, radius).unwrap();
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger
        .send_to(&acct(9, 1, "user1", "s9", 0, 0, 0, None), radius)
        .unwrap();

    // A spool file: 3 rated calls, an unanswered one, an unknown account, a callee
    // without a rate, a call id given twice and a broken line.
    let body = "call_id,caller,callee,start_time,duration_s,disposition,account\n\
        c1,555,15551234567,2026-11-02T10:00:00Z,60,ANSWERED,user0\n\
        c2,555,15551234567,2026-11-02T10:00:00Z,30,ANSWERED,user1\n\
        c3,555,15551234567,2026-11-02T10:00:00Z,90,ANSWERED,user2\n\
        c4,555,15551234567,2026-11-02T10:00:00Z,0,NO ANSWER,user0\n\
        c5,555,15551234567,2026-11-02T10:00:00Z,30,ANSWERED,nobody\n\
        c6,555,4930123456,2026-11-02T10:00:00Z,30,ANSWERED,user1\n\
        c1,555,15551234567,2026-11-02T10:00:00Z,60,ANSWERED,user0\n\
        broken line without fields\n";
    spool_file(&env.dir.path().join("spool"), "calls.csv", body);

    // API: a login, a user read, a read of a user that does not exist, an unknown method.
    let (r, e) = rpc(
        api,
        "login.login",
        json!({"auth_type": "ANONYMOUS", "login_auth_name": "system", "login_auth_pass": "sys", "login_auth_type": "ADMIN", "create_session": true}),
    );
    assert!(e.is_null() && r.is_string(), "{e}");
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        admin(json!({"normal_username": "user0"})),
    );
    assert!(e.is_null(), "{e}");
    let (_, e) = rpc(
        api,
        "user.getUserInfo",
        admin(json!({"normal_username": "ghost"})),
    );
    assert!(
        e.as_str()
            .unwrap()
            .starts_with("NORMAL_USERNAME_DOESNT_EXISTS|"),
        "{e}"
    );
    let (status, v) = http_post(api, b"{not json");
    assert_eq!(status, 200);
    assert!(
        v["error"].as_str().unwrap().starts_with("PARSE_ERROR|"),
        "{v}"
    );
    let (_, e) = rpc(api, "user.nope", admin(json!({})));
    assert!(e.as_str().unwrap().starts_with("METHOD_NOT_FOUND|"), "{e}");

    // Everything lands: the stranger's datagram counted, the spool file rated, the
    // session's xDR flushed from the outbox.
    wait_metric(api, "ratel_radius_datagrams_received_total", "6");
    wait_metric(api, "ratel_cdr_files_total{result=\"done\"}", "1");
    let m = wait_metric(api, "ratel_xdrs_written_total{source=\"radius\"}", "1");

    let want = [
        ("ratel_radius_datagrams_received_total", "6"),
        ("ratel_radius_packets_total{type=\"accounting_request\",outcome=\"accepted\"}", "3"),
        ("ratel_radius_packets_total{type=\"accounting_request\",outcome=\"retransmission\"}", "1"),
        ("ratel_radius_packets_total{type=\"status_server\",outcome=\"accepted\"}", "0"),
        ("ratel_radius_dropped_total{reason=\"unknown_nas\"}", "1"),
        ("ratel_radius_dropped_total{reason=\"bad_authenticator\"}", "1"),
        ("ratel_radius_dropped_total{reason=\"malformed\"}", "0"),
        ("ratel_radius_dropped_total{reason=\"poisoned\"}", "0"),
        ("ratel_radius_acks_total", "4"),
        ("ratel_radius_sessions_open", "0"),
        ("ratel_radius_sessions_total{event=\"opened\"}", "1"),
        ("ratel_radius_sessions_total{event=\"closed\"}", "1"),
        ("ratel_radius_sessions_total{event=\"stale\"}", "0"),
        ("ratel_xdrs_written_total{source=\"radius\"}", "1"),
        ("ratel_xdrs_written_total{source=\"cdr\"}", "6"),
        ("ratel_xdr_files", "2"),
        ("ratel_xdr_outbox_depth", "0"),
        ("ratel_cdr_records_total{status=\"ok\"}", "3"),
        ("ratel_cdr_records_total{status=\"unanswered\"}", "1"),
        ("ratel_cdr_records_total{status=\"no_rate\"}", "1"),
        ("ratel_cdr_records_total{status=\"unknown_user\"}", "1"),
        ("ratel_cdr_records_total{status=\"duplicate\"}", "1"),
        ("ratel_cdr_records_total{status=\"bad_line\"}", "1"),
        ("ratel_cdr_files_total{result=\"failed\"}", "0"),
        ("ratel_core_command_queue_depth", "0"),
        (
            "ratel_api_requests_total{dialect=\"ibsng\",method=\"invalid\",result=\"PARSE_ERROR\"}",
            "1",
        ),
        // Three packets applied (the retransmission is not); at least one commit each
        // batch, so the histograms hold exactly these packets.
        ("ratel_radius_batch_packets_sum", "3.0"),
        ("ratel_api_requests_total{dialect=\"ibsng\",method=\"login.login\",result=\"ok\"}", "1"),
        ("ratel_api_requests_total{dialect=\"ibsng\",method=\"user.getUserInfo\",result=\"ok\"}", "1"),
        ("ratel_api_requests_total{dialect=\"ibsng\",method=\"user.getUserInfo\",result=\"NORMAL_USERNAME_DOESNT_EXISTS\"}", "1"),
        ("ratel_api_requests_total{dialect=\"ibsng\",method=\"unknown\",result=\"METHOD_NOT_FOUND\"}", "1"),
        ("ratel_api_request_duration_seconds_count{dialect=\"ibsng\",method=\"user.getUserInfo\"}", "2"),
        ("ratel_api_request_duration_seconds_bucket{dialect=\"ibsng\",method=\"user.getUserInfo\",le=\"+Inf\"}", "2"),
    ];
    for (sample, v) in want {
        assert_eq!(value(&m, sample), v, "{sample}");
    }
    // Each packet was committed in a batch of its own (each waited for its answer).
    assert_eq!(value(&m, "ratel_radius_batch_packets_count"), "3");
    assert_eq!(
        value(&m, "ratel_radius_batch_packets_bucket{le=\"1\"}"),
        "3"
    );
    // Every committed batch was timed; the stale-session housekeeping and outbox flush
    // commit too, so the commit histogram counts at least the three batches.
    let commits: u64 = value(&m, "ratel_ledger_commit_duration_seconds_count")
        .parse()
        .unwrap();
    assert!(commits >= 3, "{commits}");
    assert_eq!(
        value(
            &m,
            "ratel_ledger_commit_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        commits.to_string()
    );
    // The disconnect sender runs in every serve: its families are there, all zero.
    assert_eq!(
        value(&m, "ratel_radius_disconnects_total{result=\"requested\"}"),
        "0"
    );
    // /metrics and /health are no API calls and need no login.
    assert!(!m.keys().any(|k| k.contains("method=\"metrics\"")));
    stop(server);
}

#[test]
fn health_is_503_while_the_core_is_stalled_with_work_waiting() {
    let env = Env::new();
    // Test-only hook: the core sleeps 4 s at the end of every loop.
    let (server, _radius, api) = env.serve_all_env(&[("RATEL_TEST_STALL_CORE_MS", "4000")]);
    // Nothing waits: healthy although the core sleeps.
    let (status, _, body) = http_get(api, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Wait for a fresh heartbeat (the core just began a sleep: the age fell after having
    // grown past 1 s), then queue a command: it waits for the rest of that sleep.
    let mut slept = false;
    for _ in 0..1000 {
        let m = scrape(api);
        let age: u64 = value(&m, "ratel_core_loop_age_milliseconds")
            .parse()
            .unwrap();
        if age >= 1000 {
            slept = true;
        } else if slept && age < 500 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(slept, "the core never stalled");
    let credit = std::thread::spawn(move || {
        rpc(
            api,
            "user.changeCreditExtended",
            admin(
                json!({"user_id": "1", "credit": "2.5", "change_type": "ADD", "credit_comment": "t"}),
            ),
        )
    });
    let mut reason = None;
    for _ in 0..400 {
        let (status, _, body) = http_get(api, "/health");
        if status == 503 {
            reason = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let reason = reason.expect("/health never answered 503 while a command waited");
    assert!(
        reason.starts_with("core loop has not finished a batch for ")
            && reason.contains("1 API commands queued"),
        "{reason}"
    );
    let (_, e) = credit.join().unwrap();
    assert!(e.is_null(), "{e}");
    // The command ran: nothing waits any more, healthy again (bounded wait).
    let mut healthy = false;
    for _ in 0..400 {
        let (status, _, body) = http_get(api, "/health");
        if status == 200 {
            assert_eq!(body, "ok\n");
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(healthy, "/health stayed 503 after the core caught up");
    stop(server);
}
