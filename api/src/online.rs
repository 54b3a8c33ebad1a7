//! `report.getOnlineUsers` (admin only): every open RADIUS session, from the core's
//! published live state (no ledger read), sorted by username then login time. Optional
//! `conds.username` keeps one user's sessions. Each row is an object with IBSng's online
//! column names (`ras_description`, `login_time`, `in_bytes`, ...) plus `username`.
//!
//! `user.killUser` (admin only, IBSng's name): a Disconnect-Request (RFC 5176) for the open
//! session(s) with `session_id` (optionally of `username`), queued to the core's sender
//! thread; the NAS's ACK/NAK is logged and counted (`ratel_radius_disconnects_total`).

use serde_json::{json, Map, Value};

use crate::{fmt_time, opt_str, str_param, ApiState, Caller, RpcError, RpcResult};

pub(crate) fn get_online_users(
    st: &ApiState,
    caller: &Caller,
    p: &Map<String, Value>,
) -> RpcResult {
    if !matches!(caller, Caller::Admin) {
        return Err(RpcError::new(
            "ACCESS_DENIED",
            "this method needs an ADMIN login",
        ));
    }
    let only = p
        .get("conds")
        .and_then(Value::as_object)
        .and_then(|c| opt_str(c, "username"));
    let cat = st.catalog.get();
    let online = st.live.online.read().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = online
        .keys()
        .filter(|u| only.is_none_or(|o| o == u.as_str()))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let mut sessions: Vec<_> = online[name].iter().collect();
        sessions.sort_by(|a, b| {
            a.login_time
                .cmp(&b.login_time)
                .then(a.session_id.cmp(&b.session_id))
        });
        for o in sessions {
            rows.push(json!({
                "username": name,
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
            }));
        }
    }
    Ok(json!({"total": rows.len(), "internet_onlines": rows, "voip_onlines": []}))
}

pub(crate) fn kill_user(st: &ApiState, p: &Map<String, Value>) -> RpcResult {
    let session_id = str_param(p, "session_id")?;
    let only = opt_str(p, "username");
    let Some(handle) = st.live.disconnect.get() else {
        return Err(RpcError::new(
            "NOT_READY",
            "the Disconnect-Request sender is not running",
        ));
    };
    let cat = st.catalog.get();
    let now = chrono::Utc::now().timestamp();
    let targets: Vec<(String, ratel_engine::serve::OnlineSession)> = {
        let online = st.live.online.read().unwrap_or_else(|e| e.into_inner());
        online
            .iter()
            .filter(|(u, _)| only.is_none_or(|o| o == u.as_str()))
            .flat_map(|(u, v)| {
                v.iter()
                    .filter(|o| o.session_id == session_id)
                    .map(move |o| (u.clone(), o.clone()))
            })
            .collect()
    };
    if targets.is_empty() {
        return Err(RpcError::new(
            "NO_SUCH_SESSION",
            format!("no open session {session_id:?}"),
        ));
    }
    let mut sent = Vec::new();
    for (user, o) in &targets {
        let to = handle
            .session(&cat, user, o, now)
            .map_err(|e| RpcError::new("DISCONNECT_FAILED", e))?;
        sent.push(json!({
            "username": user,
            "ras_description": o.nas,
            "unique_id": o.session_id,
            "sent_to": to.to_string(),
        }));
    }
    Ok(json!(sent))
}
