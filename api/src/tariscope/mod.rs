//! The Tariscope API dialect (`/api/...`, seed 004; DESIGN.md Part 2 "Tariscope API
//! dialect"): an adapter over the service layer. `POST /api/auth` gives a JWT bound to the
//! caller's IP for 6 hours; every other call sends it as a Bearer token. JSON by default,
//! XML when the path ends in `/xml`. Paths work with and without a trailing slash; dots of
//! the method name are path segments (`subscriber.list.department` is
//! `/api/subscriber/list/department`). Errors are `{"error": "<reason>"}` with 400, 401,
//! 403, 404, 409 or 500. No rule lives here.

pub mod token;
pub mod xml;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ratel_engine::domain::{Account, AccountKind, ClientChange, JournalKind, NewClient};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::auth::AuthType;
use crate::ibsng::money;
use crate::service::{Caller, ClientView, Service, ServiceError};
use crate::{metrics, ApiState, MAX_BODY};

/// The methods, as `allow` patterns name them.
pub const METHODS: &[&str] = &[
    "auth",
    "subscriber.get",
    "subscriber.list.department",
    "subscriber.list.node",
    "subscriber.update",
    "subscriber.create",
    "subscriber.dnadd",
    "accounts.summary",
    "accounts.charges",
    "accounts.payment",
    "accounts.payments",
    "tariffs.plans",
    "tariffs.details",
    "tariffs.time",
    "services.list",
    "tariscope.version",
    "tariscope.database",
    "tariscope.build",
    "tariscope.serial",
    "tariscope.edition",
    "tariscope.summary",
    "sql",
];

/// The subscriber fields of `subscriber.get`, in the seed's order and spelling. `id` and
/// `accountId` are the client's user id; the others are profile fields.
pub const SUBSCRIBER_FIELDS: [&str; 28] = [
    "id",
    "fullname",
    "street",
    "House",
    "Flat",
    "email",
    "description",
    "authcode",
    "ispublic",
    "abonenttype",
    "code",
    "zipcode",
    "personalcode",
    "contractid",
    "information",
    "privilegeinfo",
    "area",
    "contractdate",
    "building",
    "floornumber",
    "accountId",
    "gender",
    "birthday",
    "bankaccount",
    "bankmfo",
    "taxcode",
    "deliverytype",
    "privilegediscount",
];

/// Most subscribers one list returns.
const MAX_LIST: usize = 10_000;
/// Most tariff rows one `tariffs.details` / `tariffs.time` answer holds.
const MAX_TARIFF_ROWS: usize = 10_000;

/// An answer or an error: status and body.
type Answer = Result<Value, (StatusCode, String)>;

fn bad(m: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, m.into())
}

/// A service error as Tariscope answers it.
fn status_of(e: ServiceError) -> (StatusCode, String) {
    let code = match &e {
        ServiceError::AccessDenied(_) => StatusCode::FORBIDDEN,
        ServiceError::AuthLocked { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
        ServiceError::Exists(_) => StatusCode::CONFLICT,
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Vetoed(_) => StatusCode::FORBIDDEN,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.message())
}

fn respond(status: StatusCode, body: Value, xml_form: bool) -> Response {
    if xml_form {
        (
            status,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            xml::to_xml("response", &body),
        )
            .into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Percent-decoding of a query component (`+` is a space).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(uri: &Uri) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.insert(percent_decode(k), Value::String(percent_decode(v)));
        }
    }
    m
}

/// `/api/...` (any method).
pub(crate) async fn handle(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    http_method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut segs: Vec<&str> = uri
        .path()
        .strip_prefix("/api")
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let xml_form = segs.last() == Some(&"xml");
    if xml_form {
        segs.pop();
    }
    let name = segs.join(".");
    let label = metrics::method_label(METHODS, &name);
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let e = bad(format!(
                "request body larger than {MAX_BODY} bytes or unreadable"
            ));
            return finish(&st, label, started, Err(e), xml_form);
        }
    };
    let mut params = query_params(&uri);
    if !bytes.is_empty() {
        let parsed = if xml_form {
            xml::from_xml(&bytes).map_err(bad)
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(bad("the body must be a JSON object")),
                Err(e) => Err(bad(format!("malformed JSON: {e}"))),
            }
        };
        match parsed {
            Ok(m) => params.extend(m),
            Err(e) => return finish(&st, label, started, Err(e), xml_form),
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let Ok(worker) = st.workers.clone().acquire_owned().await else {
        let e = (
            StatusCode::SERVICE_UNAVAILABLE,
            "the API is shutting down".into(),
        );
        return finish(&st, label, started, Err(e), xml_form);
    };
    let st2 = st.clone();
    let r = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        let now = chrono::Utc::now().timestamp();
        dispatch(
            &st2.service,
            peer,
            &http_method,
            &name,
            bearer.as_deref(),
            &params,
            now,
        )
    })
    .await
    .unwrap_or_else(|_| {
        Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request failed".into(),
        ))
    });
    finish(&st, label, started, r, xml_form)
}

fn finish(
    st: &ApiState,
    label: &'static str,
    started: Instant,
    r: Answer,
    xml_form: bool,
) -> Response {
    let code = match &r {
        Ok(_) => None,
        Err((s, _)) => Some(match s.as_u16() {
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            409 => "409",
            429 => "429",
            503 => "503",
            _ => "500",
        }),
    };
    metrics::record_call(st, "tariscope", label, code, started);
    match r {
        Ok(v) => respond(StatusCode::OK, v, xml_form),
        Err((s, m)) => respond(s, json!({ "error": m }), xml_form),
    }
}

/// The signing key of tokens (the ledger's).
fn token_key(st: &Service) -> Result<Vec<u8>, (StatusCode, String)> {
    st.meta(ratel_engine::ledger::TOKEN_KEY)
        .map_err(status_of)?
        .map(String::into_bytes)
        .ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no token key in the ledger".into(),
            )
        })
}

fn dispatch(
    st: &Service,
    peer: SocketAddr,
    http_method: &Method,
    name: &str,
    bearer: Option<&str>,
    p: &Map<String, Value>,
    now: i64,
) -> Answer {
    if !METHODS.contains(&name) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no method {:?}", name.chars().take(64).collect::<String>()),
        ));
    }
    let ip = peer.ip().to_string();
    if name == "auth" {
        if http_method != Method::POST {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "POST /api/auth".into()));
        }
        let user = str_p(p, "username")?;
        let pass = str_p(p, "password")?;
        st.login(peer.ip(), AuthType::Admin, user, pass)
            .map_err(|e| match e {
                ServiceError::AccessDenied(m) => (StatusCode::UNAUTHORIZED, m),
                other => status_of(other),
            })?;
        let token = token::issue(&token_key(st)?, user, &ip, now)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        tracing::info!(user = %user, "Tariscope API token issued");
        return Ok(json!({ "token": token }));
    }
    let unauthorized = |m: &str| (StatusCode::UNAUTHORIZED, m.to_string());
    let token = bearer.ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
    let claims =
        token::verify(&token_key(st)?, token, &ip, now).map_err(|e| unauthorized(e.reason()))?;
    // An API user removed from the config since the token was issued is refused.
    if !st.catalog.get().admins.iter().any(|a| a.name == claims.sub) {
        return Err(unauthorized("the token's user no longer exists"));
    }
    let caller = Caller::Admin { name: claims.sub };
    st.allow(&caller, name, false).map_err(status_of)?;
    let svc = |r: Result<Value, ServiceError>| r.map_err(status_of);
    match name {
        "subscriber.get" => {
            let v = if let Some(id) = opt_id(p, "id")? {
                st.client(&caller, &crate::service::ClientRef::Id(id))
            } else if let Some(email) = opt_str_p(p, "email") {
                st.client_by_email(&caller, email)
            } else {
                return Err(bad("id or email: one is required"));
            };
            svc(v.map(|c| subscriber_json(&c)))
        }
        "subscriber.list.department" => {
            let group = str_p(p, "id")?;
            svc(st
                .clients_in_group(group, MAX_LIST)
                .map(|l| Value::Array(l.iter().map(subscriber_json).collect())))
        }
        "subscriber.list.node" => {
            let nas = str_p(p, "id")?;
            svc(st
                .clients_on_nas(nas)
                .map(|l| Value::Array(l.iter().map(subscriber_json).collect())))
        }
        "subscriber.update" => {
            let id = id_p(p, "id")?;
            let mut change = ClientChange::default();
            for (k, v) in p {
                match k.as_str() {
                    "id" | "accountId" => {}
                    "department" | "group" => change.group = Some(text_of(k, v)?),
                    key if SUBSCRIBER_FIELDS.contains(&key) => {
                        let value = match v {
                            Value::Null => None,
                            other => Some(text_of(k, other)?),
                        };
                        if let Some(val) = &value {
                            ratel_engine::domain::check_profile(key, val).map_err(bad)?;
                        }
                        change.profile.push((key.to_string(), value));
                    }
                    other => {
                        return Err(bad(format!(
                            "{other:?} is not a subscriber field ({})",
                            SUBSCRIBER_FIELDS.join(", ")
                        )))
                    }
                }
            }
            svc(st
                .update_client(&caller, id, change)
                .and_then(|()| st.client(&caller, &crate::service::ClientRef::Id(id)))
                .map(|c| subscriber_json(&c)))
        }
        "subscriber.create" => {
            let group = opt_str_p(p, "department")
                .or_else(|| opt_str_p(p, "group"))
                .ok_or_else(|| {
                    bad("department: missing (the group, i.e. tariff plan, of the subscriber)")
                })?
                .to_string();
            let mut c = NewClient {
                group,
                username: opt_str_p(p, "username").map(str::to_string),
                password: opt_str_p(p, "password").map(str::to_string),
                company: opt_str_p(p, "company").map(str::to_string),
                comment: "tariscope subscriber.create".into(),
                ..Default::default()
            };
            if c.username.is_some() != c.password.is_some() {
                return Err(bad("username and password: both or neither"));
            }
            if let Some(v) = p.get("credit") {
                c.credit = decimal_of("credit", v)?;
            }
            for (k, v) in p {
                match k.as_str() {
                    "id" | "accountId" | "department" | "group" | "username" | "password"
                    | "company" | "credit" => {}
                    key if SUBSCRIBER_FIELDS.contains(&key) => {
                        if !v.is_null() {
                            let val = text_of(k, v)?;
                            ratel_engine::domain::check_profile(key, &val).map_err(bad)?;
                            c.profile.push((key.to_string(), val));
                        }
                    }
                    other => {
                        return Err(bad(format!(
                            "{other:?} is not a subscriber field ({})",
                            SUBSCRIBER_FIELDS.join(", ")
                        )))
                    }
                }
            }
            let ids = st.create_clients(&caller, vec![c]).map_err(status_of)?;
            svc(st
                .client(&caller, &crate::service::ClientRef::Id(ids[0]))
                .map(|c| subscriber_json(&c)))
        }
        "subscriber.dnadd" => {
            let id = id_p(p, "id")?;
            let dn = str_p(p, "dn")?;
            let account = Account::new(AccountKind::Dn, dn).map_err(bad)?;
            let ident = account.ident.clone();
            let change = ClientChange {
                add_accounts: vec![account],
                ..Default::default()
            };
            svc(st
                .update_client(&caller, id, change)
                .map(|()| json!({"id": id, "dn": ident})))
        }
        "accounts.summary" => {
            let id = id_p(p, "id")?;
            let (from, to) = period(st, p)?;
            let s = st.summary(&caller, id, from, to).map_err(status_of)?;
            Ok(json!({
                "id": id,
                "from": iso(from),
                "to": iso(to),
                "opening_balance": money(s.opening_balance),
                "closing_balance": money(s.closing_balance),
                "payments": money(s.payments),
                "charges": money(s.charges),
                "package_fees": money(s.package_fees),
                "refunds": money(s.refunds),
                "calls": {
                    "count": s.calls.count,
                    "seconds": s.calls.seconds,
                    "cost": money(s.calls.cost),
                },
                "internet": {
                    "sessions": s.internet.count,
                    "seconds": s.internet.seconds,
                    "bytes_in": s.internet.bytes_in,
                    "bytes_out": s.internet.bytes_out,
                    "cost": money(s.internet.cost),
                },
            }))
        }
        "accounts.charges" => {
            let id = id_p(p, "id")?;
            let (from, to) = period(st, p)?;
            let comment = opt_str_p(p, "comment")
                .unwrap_or("tariscope accounts.charges")
                .to_string();
            let out = st
                .cancel_charges(&caller, id, from, to, comment)
                .map_err(status_of)?;
            Ok(json!({
                "id": id,
                "cancelled": out.refunded,
                "amount": money(out.amount),
                "balance": money(out.balance),
            }))
        }
        "accounts.payment" => {
            let id = id_p(p, "id")?;
            let amount = decimal_of(
                "amount",
                p.get("amount").ok_or_else(|| bad("amount: missing"))?,
            )?;
            if amount <= Decimal::ZERO {
                return Err(bad("amount: a payment is more than 0"));
            }
            let comment = opt_str_p(p, "comment").unwrap_or("").to_string();
            let ids = st
                .change_credit(
                    &caller,
                    vec![id],
                    amount,
                    ratel_engine::commands::ChangeType::Add,
                    comment,
                )
                .map_err(status_of)?;
            let c = st
                .client(&caller, &crate::service::ClientRef::Id(id))
                .map_err(status_of)?;
            Ok(json!({
                "id": id,
                "payment_id": ids.first(),
                "amount": money(amount),
                "balance": money(c.record.credit),
            }))
        }
        "accounts.payments" => {
            let id = id_p(p, "id")?;
            let (from, to) = period(st, p)?;
            let rows = st
                .journal(&caller, id, Some(from), Some(to), &[JournalKind::Payment])
                .map_err(status_of)?;
            Ok(json!({
                "id": id,
                "payments": rows.iter().map(|j| json!({
                    "id": j.id,
                    "date": iso(j.at),
                    "amount": money(j.amount),
                    "balance_after": money(j.balance_after),
                    "comment": j.comment,
                    "admin": j.actor,
                })).collect::<Vec<_>>(),
            }))
        }
        "tariffs.plans" => {
            let cat = st.catalog.get();
            Ok(Value::Array(
                cat.groups
                    .iter()
                    .map(|g| {
                        json!({
                            "id": g.id,
                            "name": g.name,
                            "tariff": g.tariff.map(|t| cat.tariffs[t].name.clone()),
                            "decimals": g.decimals,
                        })
                    })
                    .collect(),
            ))
        }
        "tariffs.details" => {
            let cat = st.catalog.get();
            match opt_str_p(p, "id") {
                None => Ok(Value::Array(
                    cat.tariffs
                        .iter()
                        .map(|t| json!({"name": t.name, "rows": t.rows.len(), "prefixes": t.prefixes.len()}))
                        .collect(),
                )),
                Some(id) => {
                    let t = tariff_of(&cat, id)?;
                    let mut prefixes: Vec<Value> = Vec::new();
                    for pr in t.prefixes.iter().take(MAX_TARIFF_ROWS) {
                        prefixes.push(json!({"prefix": pr.prefix}));
                    }
                    Ok(json!({
                        "name": t.name,
                        "rates": t.rows.iter().map(|r| json!({
                            "description": r.description,
                            "price_per_minute": money(r.price_per_minute),
                            "connect_fee": money(r.connect_fee),
                            "first_increment": r.first_increment,
                            "next_increment": r.next_increment,
                        })).collect::<Vec<_>>(),
                        "prefixes": t.prefixes.len(),
                    }))
                }
            }
        }
        "tariffs.time" => {
            let cat = st.catalog.get();
            let id = str_p(p, "id")?;
            let t = tariff_of(&cat, id)?;
            let hour = opt_id(p, "hour")?
                .filter(|h| (0..24).contains(h))
                .ok_or_else(|| bad("hour: 0 to 23"))?;
            let at = hour_today(&cat.tz, hour as u32, now);
            let only = opt_str_p(p, "prefix");
            let mut rows = Vec::new();
            for pr in &t.prefixes {
                if only.is_some_and(|o| o != pr.prefix) {
                    continue;
                }
                if rows.len() >= MAX_TARIFF_ROWS {
                    break;
                }
                let r = &t.rows[pr.schedule.at(&cat.tz, at) as usize];
                rows.push(json!({
                    "prefix": pr.prefix,
                    "description": r.description,
                    "price_per_minute": money(r.price_per_minute),
                    "connect_fee": money(r.connect_fee),
                }));
            }
            Ok(json!({"name": t.name, "hour": hour, "rates": rows}))
        }
        "services.list" => {
            let cat = st.catalog.get();
            Ok(Value::Array(
                cat.charge_rules
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "name": r.name,
                            "type": "internet",
                            "price_per_minute": money(r.price_per_minute),
                            "price_per_gb": money(r.price_per_gb),
                        })
                    })
                    .chain(
                        cat.tariffs
                            .iter()
                            .map(|t| json!({"id": Value::Null, "name": t.name, "type": "voice"})),
                    )
                    .collect(),
            ))
        }
        "tariscope.version" => Ok(json!({"version": env!("CARGO_PKG_VERSION")})),
        "tariscope.database" => svc(st.schema_version().map(|v| json!({"database": v}))),
        "tariscope.build" => Ok(json!({"build": build_date()})),
        "tariscope.serial" => svc(st
            .meta(ratel_engine::ledger::INSTALLATION_ID)
            .map(|s| json!({"serial": s}))),
        "tariscope.edition" => Ok(json!({"edition": "ratel"})),
        "tariscope.summary" => {
            let cat = st.catalog.get();
            let online = st.online().len();
            svc(st.schema_version().and_then(|db| {
                let serial = st.meta(ratel_engine::ledger::INSTALLATION_ID)?;
                Ok(json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "database": db,
                    "build": build_date(),
                    "serial": serial,
                    "edition": "ratel",
                    "groups": cat.groups.len(),
                    "tariffs": cat.tariffs.len(),
                    "nas": cat.nas.len(),
                    "online_sessions": online,
                }))
            }))
        }
        "sql" => {
            if http_method != Method::POST {
                return Err((StatusCode::METHOD_NOT_ALLOWED, "POST /api/sql".into()));
            }
            let q = str_p(p, "query")?;
            svc(st.sql(q).map(|a| {
                json!({
                    "columns": a.columns,
                    "rows": a.rows,
                    "truncated": a.truncated,
                })
            }))
        }
        _ => Err((StatusCode::NOT_FOUND, format!("no method {name:?}"))),
    }
}

/// The build date, `YYYY-MM-DD` (from `build.rs`).
fn build_date() -> &'static str {
    env!("RATEL_BUILD_DATE")
}

fn tariff_of<'c>(
    cat: &'c ratel_engine::catalog::Catalog,
    id: &str,
) -> Result<&'c ratel_engine::catalog::Tariff, (StatusCode, String)> {
    // By tariff name, or by the group (plan) id or name whose tariff it is.
    if let Some(t) = cat.tariffs.iter().find(|t| t.name == id) {
        return Ok(t);
    }
    let group = cat
        .groups
        .iter()
        .find(|g| g.name == id || g.id.to_string() == id);
    group
        .and_then(|g| g.tariff)
        .map(|t| &cat.tariffs[t])
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no tariff {:?}", id.chars().take(64).collect::<String>()),
            )
        })
}

/// `hour`:00 of today (in the rating zone).
fn hour_today<Z: chrono::TimeZone>(tz: &Z, hour: u32, now: i64) -> i64 {
    let today = chrono::DateTime::<chrono::Utc>::from_timestamp(now, 0)
        .unwrap_or_default()
        .with_timezone(tz)
        .date_naive();
    let naive = today.and_hms_opt(hour, 0, 0).unwrap_or_default();
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp())
        // An hour a DST gap skips: its first minute after the gap.
        .unwrap_or(now)
}

fn iso(t: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A subscriber in the seed's 28 fields (profile fields null when unset).
fn subscriber_json(v: &ClientView) -> Value {
    let mut m = Map::new();
    for f in SUBSCRIBER_FIELDS {
        let value = match f {
            "id" | "accountId" => json!(v.record.user_id),
            key => v
                .profile
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, x)| json!(x))
                .unwrap_or(Value::Null),
        };
        m.insert(f.to_string(), value);
    }
    Value::Object(m)
}

fn opt_str_p<'a>(p: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    p.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn str_p<'a>(p: &'a Map<String, Value>, key: &str) -> Result<&'a str, (StatusCode, String)> {
    match p.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(bad(format!("{key}: missing"))),
        Some(_) => Err(bad(format!("{key}: expected a string"))),
    }
}

fn text_of(key: &str, v: &Value) -> Result<String, (StatusCode, String)> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(bad(format!("{key}: expected a string"))),
    }
}

fn opt_id(p: &Map<String, Value>, key: &str) -> Result<Option<i64>, (StatusCode, String)> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Some)
            .ok_or_else(|| bad(format!("{key}: expected an integer"))),
    }
}

fn id_p(p: &Map<String, Value>, key: &str) -> Result<i64, (StatusCode, String)> {
    opt_id(p, key)?.ok_or_else(|| bad(format!("{key}: missing")))
}

fn decimal_of(key: &str, v: &Value) -> Result<Decimal, (StatusCode, String)> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err(bad(format!("{key}: expected a decimal number"))),
    };
    let d: Decimal = text
        .parse()
        .map_err(|_| bad(format!("{key}: {text:?} is not a decimal number")))?;
    ratel_engine::users::check_credit(d).map_err(|r| bad(format!("{key}: {r}")))
}

/// A time: ISO-8601 with `Z` or an offset, or `YYYY-MM-DD[ HH:MM[:SS]]` in the rating zone.
fn time_of(st: &Service, key: &str, s: &str) -> Result<i64, (StatusCode, String)> {
    st.parse_time(s)
        .map_err(|e| bad(format!("{key}: {e} (ISO-8601, e.g. 2026-11-01T00:00:00Z)")))
}

/// `from` and `to` of a period (`[from, to)`).
fn period(st: &Service, p: &Map<String, Value>) -> Result<(i64, i64), (StatusCode, String)> {
    let from = time_of(st, "from", str_p(p, "from")?)?;
    let to = time_of(st, "to", str_p(p, "to")?)?;
    if to <= from {
        return Err(bad("to: must be after from"));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_fields_are_28_and_profile_fields() {
        assert_eq!(SUBSCRIBER_FIELDS.len(), 28);
        for f in SUBSCRIBER_FIELDS {
            if f != "id" && f != "accountId" {
                assert!(ratel_engine::domain::check_profile(f, "x").is_ok(), "{f}");
            }
        }
    }

    #[test]
    fn query_strings_are_decoded() {
        let uri: Uri = "/api/subscriber/get/?email=a%40b.c&x=1+2&bad=%zz&t=%4"
            .parse()
            .unwrap();
        let p = query_params(&uri);
        assert_eq!(p["email"], "a@b.c");
        assert_eq!(p["x"], "1 2");
        assert_eq!(p["bad"], "%zz");
        assert_eq!(p["t"], "%4");
    }
}
