//! `report.getOnlineUsers` (admin only): every open RADIUS session, from the core's
//! published live state (no ledger read), sorted by username then login time. Optional
//! `conds.username` keeps one user's sessions. Each row is an object with IBSng's online
//! column names (`ras_description`, `login_time`, `in_bytes`, ...) plus `username`.
//!
//! `user.killUser` (admin only, IBSng's name): a Disconnect-Request (RFC 5176) for the open
//! session(s) with `session_id` (optionally of `username`), queued to the core's sender
//! thread; the NAS's ACK/NAK is logged and counted (`ratel_radius_disconnects_total`).

use serde_json::{json, Map, Value};

use super::{fmt_time, opt_str, rpc_error, str_param, RpcResult};
use crate::service::Service;

pub(crate) fn get_online_users(st: &Service, p: &Map<String, Value>) -> RpcResult {
    let only = p
        .get("conds")
        .and_then(Value::as_object)
        .and_then(|c| opt_str(c, "username"));
    let cat = st.catalog.get();
    let mut sessions: Vec<_> = st
        .online()
        .into_iter()
        .filter(|o| only.is_none_or(|u| u == o.username))
        .collect();
    sessions.sort_by(|a, b| {
        a.username
            .cmp(&b.username)
            .then(a.login_time.cmp(&b.login_time))
            .then(a.session_id.cmp(&b.session_id))
    });
    let rows: Vec<Value> = sessions
        .iter()
        .map(|o| {
            json!({
                "username": o.username,
                "user_id": o.user_id,
                "ras_description": o.nas,
                "ras_ip": o.nas_ip,
                "port": o.nas_port.map(|p| p.to_string()).unwrap_or_default(),
                "unique_id": o.session_id,
                "login_time": fmt_time(&cat, o.login_time),
                "remote_ip": o.remote_ip,
                "caller_id": o.caller_id,
                "duration_secs": o.duration_secs,
                "in_bytes": o.bytes_in,
                "out_bytes": o.bytes_out,
                "credit_used": o.charged.normalize().to_string(),
            })
        })
        .collect();
    Ok(json!({"total": rows.len(), "internet_onlines": rows, "voip_onlines": []}))
}

pub(crate) fn kill_user(st: &Service, p: &Map<String, Value>) -> RpcResult {
    let session_id = str_param(p, "session_id")?;
    let only = opt_str(p, "username");
    let sent = st.disconnect(session_id, only).map_err(rpc_error)?;
    Ok(json!(sent
        .iter()
        .map(|(o, to)| json!({
            "username": o.username,
            "ras_description": o.nas,
            "unique_id": o.session_id,
            "sent_to": to.to_string(),
        }))
        .collect::<Vec<_>>()))
}
