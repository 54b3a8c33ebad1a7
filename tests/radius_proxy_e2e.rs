//! End-to-end RADIUS behind a proxy (issue 21): the real `ratel serve` on 127.0.0.1, its one
//! configured client (`ras1`, 127.0.0.1) playing the proxy that relays several NASes, driven
//! over a real UDP socket with packets built by radius-rs (a codec we did not write). Replies
//! are checked with radius-rs (Response Authenticator, Proxy-States read back), credits from
//! the ledger, xDRs from Parquet, live sessions and reports from the JSON-RPC API.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866, rfc2869};
use ratel_engine::radius::codec::hmac_md5;
use serde_json::{json, Value};

const GB: u64 = 1_000_000_000;

/// An Accounting-Request the proxy relays from the NAS at `nas_ip`, carrying `states` as
/// Proxy-State attributes (a proxy appends its own; a chain, several).
#[allow(clippy::too_many_arguments)]
fn relayed(
    id: u8,
    nas_ip: &str,
    status: u32,
    user: &str,
    sid: &str,
    secs: u32,
    octets_in: u64,
    states: &[&[u8]],
) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, id);
    rfc2866::add_acct_status_type(&mut p, status);
    if !user.is_empty() {
        rfc2865::add_user_name(&mut p, user);
        rfc2866::add_acct_session_id(&mut p, sid);
        rfc2866::add_acct_session_time(&mut p, secs);
        rfc2866::add_acct_input_octets(&mut p, octets_in as u32);
        rfc2869::add_acct_input_gigawords(&mut p, (octets_in >> 32) as u32);
    }
    rfc2869::add_event_timestamp(&mut p, &(t0() + chrono::Duration::seconds(secs as i64)));
    rfc2865::add_nas_ip_address(&mut p, &nas_ip.parse::<Ipv4Addr>().unwrap());
    for st in states {
        rfc2865::add_proxy_state(&mut p, st);
    }
    p.encode().unwrap()
}

/// Sends `req` and returns the Proxy-States of the verified reply (radius-rs checks the
/// Response Authenticator against the request, so the echoed attributes are covered by it).
fn send_states(c: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<Vec<u8>> {
    let resp = send(c, to, req).expect("an Accounting-Response");
    rfc2865::lookup_all_proxy_state(&Packet::decode(&resp, SECRET).unwrap())
}

/// Sends `req` and asserts the reply echoes exactly `states`, in order.
fn acked(c: &UdpSocket, to: SocketAddr, req: &[u8], states: &[&[u8]]) {
    let want: Vec<Vec<u8>> = states.iter().map(|s| s.to_vec()).collect();
    assert_eq!(send_states(c, to, req), want);
}

/// A Status-Server (RFC 5997) with a Message-Authenticator (or without, when `sign` is
/// false): random Request Authenticator, HMAC-MD5 over the packet with the MAC zeroed.
fn status_server(id: u8, sign: bool) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::StatusServer, SECRET, id);
    rfc2865::add_nas_identifier(&mut p, "fr-proxy");
    if sign {
        rfc2869::add_message_authenticator(&mut p, &[0u8; 16]);
    }
    let mut b = p.encode().unwrap();
    if sign {
        let at = b.len() - 16;
        let mac = hmac_md5(SECRET, &[&b]);
        b[at..].copy_from_slice(&mac);
    }
    b
}

fn login(api: SocketAddr) -> Value {
    let (r, e) = rpc(
        api,
        "login.login",
        json!({"auth_remoteaddr": "127.0.0.1", "auth_type": "ANONYMOUS", "auth_name": "ANONYMOUS", "auth_pass": "ANONYMOUS",
               "login_auth_name": "system", "login_auth_pass": "sys", "create_session": true, "login_auth_type": "ADMIN"}),
    );
    assert_eq!(e, Value::Null, "login: {e}");
    r
}

fn admin_call(api: SocketAddr, s: &Value, method: &str, extra: Value) -> Value {
    let mut p = json!({"auth_remoteaddr": "127.0.0.1", "auth_type": "ADMIN", "auth_name": "system", "auth_session": s});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (r, e) = rpc(api, method, p);
    assert_eq!(e, Value::Null, "{method}: {e}");
    r
}

/// (session_id, username, ras_description, nas_ip, credit_used) of each xDR, sorted.
fn xdr_nases(data: &std::path::Path) -> Vec<(String, String, String, String, String)> {
    use arrow_array::{Decimal128Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out = Vec::new();
    for p in std::fs::read_dir(data.join("xdr")).unwrap() {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            let f = std::fs::File::open(f.unwrap().path()).unwrap();
            for b in ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap()
            {
                let b = b.unwrap();
                let s = |n| col::<StringArray>(&b, n);
                let (sid, user, ras, ip) = (
                    s("session_id"),
                    s("username"),
                    s("ras_description"),
                    s("nas_ip"),
                );
                let cu = col::<Decimal128Array>(&b, "credit_used");
                for r in 0..b.num_rows() {
                    out.push((
                        sid.value(r).into(),
                        user.value(r).into(),
                        ras.value(r).into(),
                        ip.value(r).into(),
                        rust_decimal::Decimal::from_i128_with_scale(cu.value(r), 10)
                            .normalize()
                            .to_string(),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

/// Issue 21 items 1, 2, 3, 4, 5, 7: two NASes behind one proxy with the same
/// Acct-Session-Id, Proxy-States echoed, both kinds of proxy retransmission, an
/// Accounting-On from one NAS, Status-Server; exact credits, the real NAS in the live
/// sessions, the report and the xDRs.
#[test]
fn two_nases_behind_a_proxy_are_charged_apart() {
    let env = Env::new();
    let (child, addr, api) = env.serve_all();
    let c = client();
    let (a, b) = ("10.0.0.1", "10.0.0.2");

    // Status-Server: answered (Accounting-Response, same Identifier, a Message-Authenticator
    // over the reply with the request's authenticator), no session, no ledger write.
    let ss = status_server(200, true);
    let resp = send(&c, addr, &ss).expect("Status-Server answered");
    assert_eq!(resp.len(), 38, "Message-Authenticator only");
    assert_eq!(resp[20..22], [80, 18]);
    let mut zeroed = resp.clone();
    zeroed[4..20].copy_from_slice(&ss[4..20]);
    zeroed[22..38].fill(0);
    assert_eq!(resp[22..38], hmac_md5(SECRET, &[&zeroed]));
    // Without a Message-Authenticator it is dropped (RFC 5997 §3).
    let q = client();
    q.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    assert!(send(&q, addr, &status_server(201, false)).is_none());

    // Proxy-States: several, binary, one 253 bytes long, echoed in order.
    let long = [0xEEu8; 253];
    let states: [&[u8]; 3] = [b"\x00\x01\x02", b"freeradius-42", &long];
    acked(
        &c,
        addr,
        &relayed(1, a, 1, "alice", "1", 0, 0, &states),
        &states,
    );
    acked(
        &c,
        addr,
        &relayed(2, b, 1, "bob", "1", 0, 0, &[b"b"]),
        &[b"b"],
    );
    // NAS A: 10 min + 1 GB = 0.1 + 0.5.
    let interim = relayed(3, a, 3, "alice", "1", 600, GB, &[b"p3"]);
    acked(&c, addr, &interim, &[b"p3"]);
    // Retransmission within the proxy's window: the same datagram, answered, not charged.
    acked(&c, addr, &interim, &[b"p3"]);
    // After the proxy marked us zombie: a new Identifier and Proxy-State, same counters.
    acked(
        &c,
        addr,
        &relayed(4, a, 3, "alice", "1", 600, GB, &[b"p4"]),
        &[b"p4"],
    );
    // NAS B's session "1" is its own: 10 min = 0.1.
    acked(&c, addr, &relayed(5, b, 3, "bob", "1", 600, 0, &[]), &[]);

    // Live sessions show the real NAS.
    let s = login(api);
    let info = |user: &str| {
        let r = admin_call(
            api,
            &s,
            "user.getUserInfo",
            json!({"normal_username": user}),
        );
        r.as_object().unwrap().values().next().unwrap().clone()
    };
    let onl = info("bob")["internet_onlines"].clone();
    assert_eq!((onl[0][0].clone(), onl[0][1].clone()), (json!(b), json!(b)));
    assert_eq!(info("alice")["basic_info"]["credit"].to_string(), "9.4");

    // Accounting-On from NAS A closes alice's session only.
    acked(
        &c,
        addr,
        &relayed(6, a, 7, "", "", 700, 0, &[b"on"]),
        &[b"on"],
    );
    assert_eq!(info("alice")["internet_onlines"], json!([]));
    assert_eq!(info("bob")["internet_onlines"].as_array().unwrap().len(), 1);
    // A late interim of the closed session: acknowledged, nothing charged.
    acked(&c, addr, &relayed(7, a, 3, "alice", "1", 900, GB, &[]), &[]);
    // NAS B goes on: 20 min, then a 30 min Stop (its retransmission with a new Identifier).
    acked(&c, addr, &relayed(8, b, 3, "bob", "1", 1200, 0, &[]), &[]);
    acked(&c, addr, &relayed(9, b, 2, "bob", "1", 1800, 0, &[]), &[]);
    acked(&c, addr, &relayed(10, b, 2, "bob", "1", 1800, 0, &[]), &[]);
    // report.getConnections names the real NAS.
    let r = admin_call(
        api,
        &s,
        "report.getConnections",
        json!({"conds": {"username": "bob"}, "from": 0, "to": 5}),
    );
    assert_eq!(r["total_rows"], 1);
    assert_eq!(r["report"][0]["ras_description"], b);
    assert_eq!(r["report"][0]["credit_used"].to_string(), "0.3");
    stop(child);

    // Hand computation (day rule: 0.01/min, 0.5/GB, 4 decimals, up): alice 10 − 0.6,
    // bob 5 − 30 min × 0.01 = 4.7. Charged once each despite the retransmissions.
    assert_eq!(
        env.sorted_credits(),
        vec![("alice".into(), d("9.4")), ("bob".into(), d("4.7"))]
    );
    assert_eq!(
        xdr_nases(&env.data()),
        vec![
            ("1".into(), "alice".into(), a.into(), a.into(), "0.6".into()),
            ("1".into(), "bob".into(), b.into(), b.into(), "0.3".into()),
        ]
    );
}

/// Issue 21 item 2, migration: a session opened by the code before issue 21 is stored
/// under the proxy's name (and its charges under `radius:ras1:...` keys). After the
/// upgrade it keeps rating under that key for its NAS: a replayed interim charges nothing,
/// later ones charge the difference, the Stop closes it, a late Stop charges nothing; a
/// second NAS's session with the same Acct-Session-Id is a session of its own.
#[test]
fn open_sessions_under_the_old_key_keep_rating_after_the_upgrade() {
    let env = Env::new();
    let (child, addr) = env.serve();
    let c = client();
    let a = "10.0.0.1";
    acked(&c, addr, &relayed(1, a, 1, "alice", "m1", 0, 0, &[]), &[]);
    acked(&c, addr, &relayed(2, a, 3, "alice", "m1", 600, 0, &[]), &[]);
    stop(child);

    // Rewrite the ledger into what the old code left: the session under the client's
    // name, with the old state shape (no ras_description), and its charge's key.
    {
        let db = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
        // Stored packed now; the old code stored JSON text.
        let state: Vec<u8> = db
            .query_row(
                "SELECT state FROM sessions WHERE nas = 'ras1/10.0.0.1' AND session_id = 'm1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let session = ratel_engine::radius::state::unpack("ras1/10.0.0.1", "m1", &state).unwrap();
        let mut v: Value = serde_json::to_value(&session).unwrap();
        assert_eq!(v["nas_ip"], a);
        v["nas"] = json!("ras1");
        v.as_object_mut().unwrap().remove("ras_description");
        db.execute(
            "UPDATE sessions SET nas = 'ras1', state = ?1",
            [v.to_string()],
        )
        .unwrap();
        let n = db
            .execute(
                "UPDATE journal SET idem_key = 'radius:ras1:m1:600:0:0' WHERE idem_key LIKE 'radius:ras1/10.0.0.1:m1@%:600:0:0'",
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    let (child, addr) = env.serve();
    // NAS B reuses "m1": its own session, not alice's.
    acked(
        &c,
        addr,
        &relayed(3, "10.0.0.2", 1, "bob", "m1", 0, 0, &[]),
        &[],
    );
    // NAS A's replayed interim (new Identifier): already charged under the old key.
    acked(&c, addr, &relayed(4, a, 3, "alice", "m1", 600, 0, &[]), &[]);
    acked(
        &c,
        addr,
        &relayed(5, a, 3, "alice", "m1", 1200, 0, &[]),
        &[],
    );
    acked(
        &c,
        addr,
        &relayed(6, a, 2, "alice", "m1", 1800, 0, &[]),
        &[],
    );
    acked(
        &c,
        addr,
        &relayed(7, a, 2, "alice", "m1", 2400, 0, &[]),
        &[],
    );
    acked(
        &c,
        addr,
        &relayed(8, "10.0.0.2", 2, "bob", "m1", 600, 0, &[]),
        &[],
    );
    stop(child);

    // alice: 30 min = 0.3 in all (0.1 before the upgrade); bob 10 min = 0.1.
    assert_eq!(
        env.sorted_credits(),
        vec![("alice".into(), d("9.7")), ("bob".into(), d("4.9"))]
    );
    assert_eq!(
        xdr_nases(&env.data()),
        vec![
            (
                "m1".into(),
                "alice".into(),
                "ras1".into(),
                a.into(),
                "0.3".into()
            ),
            (
                "m1".into(),
                "bob".into(),
                "10.0.0.2".into(),
                "10.0.0.2".into(),
                "0.1".into()
            ),
        ]
    );
    let db = rusqlite::Connection::open(env.data().join("ledger.sqlite")).unwrap();
    let open: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(open, 0);
}
