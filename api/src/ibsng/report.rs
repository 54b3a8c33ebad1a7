//! IBSng `report.getConnections`: the seed's parameters (`conds` with time units, `from`/`to`
//! as numbers or strings, `sort_by`, `desc`) into a [`Query`], and the seed's row shape.

use ratel_engine::xdr::OwnedXdr;
use serde_json::{json, Map, Value};

use super::{fmt_time, id_list, invalid, money, rpc_error, str_param, RpcError, RpcResult};
use crate::report::{Filter, Order, Query, SortBy, MAX_PAGE};
use crate::service::{Caller, Service};

/// A time condition: a gregorian date-time in the rating zone, or N units before now.
fn time_cond(
    st: &Service,
    conds: &Map<String, Value>,
    key: &str,
    now: i64,
) -> Result<Option<i64>, RpcError> {
    let Some(v) = conds.get(key) else {
        return Ok(None);
    };
    if v.is_null() || v.as_str() == Some("") {
        return Ok(None);
    }
    let unit = conds
        .get(&format!("{key}_unit"))
        .and_then(Value::as_str)
        .unwrap_or("gregorian");
    let number = || -> Result<i64, RpcError> {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| (0..=100_000_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}: expected a number of {unit}")))
    };
    let secs = match unit {
        "gregorian" => {
            let s = v
                .as_str()
                .ok_or_else(|| invalid(format!("{key}: expected \"YYYY-MM-DD HH:MM:SS\"")))?
                .trim();
            let full = match s.len() {
                10 => format!("{s} 00:00:00"),
                16 => format!("{s}:00"),
                _ => s.to_string(),
            };
            ratel_engine::cdr::parse_local(&full, &st.catalog.get().tz)
                .map_err(|e| invalid(format!("{key}: {e}")))?
        }
        "minutes" => now - number()? * 60,
        "hours" => now - number()? * 3600,
        "days" => now - number()? * 86_400,
        "months" => now - number()? * 30 * 86_400,
        "years" => now - number()? * 365 * 86_400,
        "jalali" => {
            return Err(invalid(format!(
                "{key}_unit: jalali dates are not supported; use gregorian"
            )))
        }
        other => {
            return Err(invalid(format!(
                "{key}_unit: {other:?}: expected gregorian, years, months, days, hours or minutes"
            )))
        }
    };
    Ok(Some(secs))
}

fn opt_string(conds: &Map<String, Value>, key: &str) -> Result<Option<String>, RpcError> {
    match conds.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("conds.{key}: expected a string"))),
    }
}

fn build_filter(
    st: &Service,
    caller: &Caller,
    conds: &Map<String, Value>,
) -> Result<Filter, RpcError> {
    let now = chrono::Utc::now().timestamp();
    let mut f = Filter {
        username: opt_string(conds, "username")?,
        user_ids: if conds.contains_key("user_ids") {
            Some(id_list(conds, "user_ids")?)
        } else {
            None
        },
        login_from: time_cond(st, conds, "login_time_from", now)?,
        // IBSng: "if not specified, current date and time will be used".
        login_to: time_cond(st, conds, "login_time_to", now)?.or(Some(now)),
        logout_from: time_cond(st, conds, "logout_time_from", now)?,
        logout_to: time_cond(st, conds, "logout_time_to", now)?,
        service: opt_string(conds, "service")?,
        successful: match conds.get("successful") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s == "t" || s == "true" => Some(true),
            Some(Value::String(s)) if s == "f" || s == "false" => Some(false),
            Some(Value::String(s)) if s.is_empty() => None,
            Some(_) => return Err(invalid("conds.successful: expected t or f")),
        },
        ras_ip: opt_string(conds, "ras_ip")?,
        remote_ip: opt_string(conds, "remote_ip")?,
        caller_id: opt_string(conds, "caller_id")?,
    };
    // A client's rows are found by its user id (the service sets it), whatever name they
    // were made under; naming another user is refused.
    if let Caller::User { username, .. } = caller {
        if f.username.as_ref().is_some_and(|u| u != username) {
            return Err(RpcError::new(
                "ACCESS_DENIED",
                "a user may only read its own connections",
            ));
        }
        f.username = None;
    }
    Ok(f)
}

/// A page bound: a number, or a number sent as a string.
fn index_param(p: &Map<String, Value>, key: &str) -> Result<Option<usize>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(|n| Some(n.min(usize::MAX as u64) as usize))
            .ok_or_else(|| invalid(format!("{key}: expected a row index"))),
    }
}

pub(crate) fn get_connections(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let empty = Map::new();
    let conds = match p.get("conds") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => return Err(invalid("conds: expected an object")),
    };
    let filter = build_filter(st, caller, conds)?;
    let from = index_param(p, "from")?.unwrap_or(0);
    let to = index_param(p, "to")?.unwrap_or(from.saturating_add(50));
    if to < from || to - from > MAX_PAGE {
        return Err(invalid(format!(
            "from/to: a page of at most {MAX_PAGE} rows"
        )));
    }
    let sort_by = match p.get("sort_by") {
        None | Some(Value::Null) => SortBy::LoginTime,
        Some(_) => SortBy::parse(str_param(p, "sort_by")?).ok_or_else(|| {
            invalid("sort_by: expected login_time, logout_time, credit_used, duration_seconds or connection_log_id")
        })?,
    };
    let desc = match p.get("desc") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "t" | "true" | "1"),
        Some(v) => v.as_i64().is_some_and(|n| n != 0),
    };
    let q = Query {
        filter,
        order: Order { sort_by, desc },
        from,
        to,
    };
    let (totals, rows) = st.connections(caller, &q).map_err(rpc_error)?;
    let rows: Vec<Value> = rows.iter().map(|x| row_json(st, x)).collect();
    Ok(json!({
        "total_rows": totals.rows,
        "total_credit": money(totals.credit),
        "total_duration": totals.duration,
        "total_in_bytes": totals.bytes_in,
        "total_out_bytes": totals.bytes_out,
        "report": rows,
    }))
}

fn row_json(st: &Service, x: &OwnedXdr) -> Value {
    let cat = &*st.catalog.get();
    let group_id = cat
        .group_index(&x.group_name)
        .map(|g| cat.groups[g].id)
        .unwrap_or(0);
    let details: Vec<Value> = x
        .details
        .iter()
        .map(|d| {
            // The seed's order: [rule, start, end, credit, bytes_in, seconds, bytes_out]
            // (positions 4 and 6 are the piece's bytes in and out).
            json!([
                d.rule,
                fmt_time(cat, d.start),
                fmt_time(cat, d.end),
                d.credit.normalize().to_string(),
                d.bytes_in.to_string(),
                d.seconds.to_string(),
                d.bytes_out.to_string()
            ])
        })
        .collect();
    let internet = x.service_type == "Internet";
    let mut kv = vec![json!(["terminate_cause", x.terminate_cause])];
    if internet {
        kv.push(json!(["nas_port", x.unique_id_value]));
        kv.push(json!(["station_ip", x.caller_id]));
        kv.push(json!(["ippool_assigned_ip", x.remote_ip]));
    } else {
        kv.push(json!(["called_number", x.called_number]));
        kv.push(json!(["prefix", x.destination]));
        kv.push(json!(["destination", x.destination_name]));
        kv.push(json!(["status", x.status]));
    }
    kv.push(json!(["session_id", x.session_id]));
    json!({
        "connection_log_id": x.xdr_id,
        "user_id": x.user_id,
        "username": x.username,
        "group_name": x.group_name,
        "group_id": group_id,
        "service_type": x.service_type,
        "sub_service_name": "Master",
        "sub_service_charging": "",
        "sub_service_qos": "",
        "login_time_formatted": fmt_time(cat, x.login_time),
        "logout_time_formatted": fmt_time(cat, x.logout_time),
        "duration_seconds": x.duration_seconds,
        "bytes_in": x.bytes_in.to_string(),
        "bytes_out": x.bytes_out.to_string(),
        "credit_used": money(x.credit_used),
        "before_credit": money(x.before_credit),
        "successful": if x.status == "OK" { "t" } else { "f" },
        "status": x.status,
        "account": x.account,
        "refund_of": x.refund_of,
        "ras_description": x.ras_description,
        "remote_ip": x.remote_ip,
        "caller_id": x.caller_id,
        "unique_id": if internet { "nas_port" } else { "call_id" },
        "unique_id_value": x.unique_id_value,
        "retry_count": 0,
        "charge_rule_details": details,
        "details": kv,
    })
}
