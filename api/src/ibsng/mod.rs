//! The IBSng JSON-RPC dialect (`POST /`): an adapter over the service layer. It reads the
//! seed's parameters, calls the service, and writes the seed's answers: always HTTP 200
//! with `{"id", "result", "error"}`, the error being `"CODE|message"` as IBSng writes it.
//! No rule lives here; engine types do not carry IBSng names.

mod online;
mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ratel_engine::catalog::Catalog;
use ratel_engine::commands::ChangeType;
use ratel_engine::domain::{Account, AccountKind, ClientChange, JournalKind, NewClient};
use ratel_engine::packages::{ClientPackage, PackageOp};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::auth::AuthType;
use crate::service::{Caller, ClientRef, NotFound, Service, ServiceError};
use crate::{metrics, ApiState, MAX_BODY};

/// An error answer: `CODE|message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: &'static str,
    pub message: String,
}

impl RpcError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    fn text(&self) -> String {
        format!("{}|{}", self.code, self.message)
    }
}

pub(crate) type RpcResult = Result<Value, RpcError>;

/// A service error in IBSng's form.
pub(crate) fn rpc_error(e: ServiceError) -> RpcError {
    let code = match &e {
        ServiceError::AccessDenied(_) => "ACCESS_DENIED",
        ServiceError::AuthLocked { .. } => "AUTH_LOCKED",
        ServiceError::NotFound { what, .. } => match what {
            NotFound::UserId => "USER_ID_NOT_FOUND",
            NotFound::Username => "NORMAL_USERNAME_DOESNT_EXISTS",
            NotFound::Group => "GROUP_NOT_FOUND",
            NotFound::Company => "ISP_NOT_FOUND",
            NotFound::Session => "NO_SUCH_SESSION",
            NotFound::Other => "NOT_FOUND",
        },
        ServiceError::Exists(m) if m.starts_with("username") => "NORMAL_USERNAME_EXISTS",
        ServiceError::Exists(m) if m.starts_with("company") => "ISP_NAME_EXISTS",
        ServiceError::Exists(_) => "ACCOUNT_EXISTS",
        ServiceError::Invalid(_) => "INVALID_PARAMS",
        ServiceError::NotReady(_) => "NOT_READY",
        ServiceError::Vetoed(_) => "ACTION_FORBIDDEN",
        ServiceError::Internal(_) => "INTERNAL_ERROR",
    };
    RpcError::new(code, e.message())
}

pub(crate) fn answer(id: Value, r: RpcResult) -> Response {
    let body = match r {
        Ok(v) => json!({"id": id, "result": v, "error": Value::Null}),
        Err(e) => json!({"id": id, "result": Value::Null, "error": e.text()}),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    answer(
        Value::Null,
        Err(RpcError::new(
            "METHOD_NOT_FOUND",
            "POST JSON-RPC requests to /",
        )),
    )
}

/// `POST /`.
pub(crate) async fn handle(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return rejected(
                &st,
                started,
                Value::Null,
                Err(RpcError::new(
                    "INVALID_REQUEST",
                    format!("request body larger than {MAX_BODY} bytes or unreadable"),
                )),
            )
        }
    };
    let req: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return rejected(
                &st,
                started,
                Value::Null,
                Err(RpcError::new("PARSE_ERROR", format!("malformed JSON: {e}"))),
            )
        }
    };
    let Value::Object(mut req) = req else {
        return rejected(
            &st,
            started,
            Value::Null,
            Err(RpcError::new(
                "INVALID_REQUEST",
                "the request must be a JSON object",
            )),
        );
    };
    let id = req.remove("id").unwrap_or(Value::Null);
    let method = match req.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return rejected(
                &st,
                started,
                id,
                Err(RpcError::new(
                    "INVALID_REQUEST",
                    "missing \"method\" string",
                )),
            )
        }
    };
    let params = match req.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return rejected(
                &st,
                started,
                id,
                Err(RpcError::new(
                    "INVALID_PARAMS",
                    "\"params\" must be an object",
                )),
            )
        }
    };
    // A bounded number of requests execute at once; the rest wait here (within the
    // request deadline) instead of piling up blocking threads.
    let Ok(worker) = st.workers.clone().acquire_owned().await else {
        return rejected(
            &st,
            started,
            id,
            Err(RpcError::new("INTERNAL_ERROR", "the API is shutting down")),
        );
    };
    let st2 = st.clone();
    let label = metrics::method_label(METHODS, &method);
    let r = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        dispatch(&st2.service, peer.ip(), &method, &params)
    })
    .await
    .unwrap_or_else(|_| Err(RpcError::new("INTERNAL_ERROR", "the request failed")));
    metrics::record_call(
        &st,
        "ibsng",
        label,
        r.as_ref().err().map(|e| e.code),
        started,
    );
    answer(id, r)
}

/// An answer to a request that never reached a method (malformed, or the API stopping):
/// counted under the method label `invalid`.
fn rejected(st: &ApiState, started: Instant, id: Value, r: RpcResult) -> Response {
    metrics::record_call(
        st,
        "ibsng",
        "invalid",
        r.as_ref().err().map(|e| e.code),
        started,
    );
    answer(id, r)
}

/// Every method, and whether a NORMAL_USER may call it (on its own data).
const METHOD_TABLE: &[(&str, bool)] = &[
    ("login.login", true),
    ("user.getUserInfo", true),
    ("user.addNewUsers", false),
    ("user.updateUserAttrs", false),
    ("user.changeCreditExtended", false),
    ("user.renewUsers", false),
    ("user.delUser", false),
    ("user.killUser", false),
    ("user.importUsers", false),
    ("user.cancelCharges", false),
    ("report.getConnections", true),
    ("report.getOnlineUsers", false),
    ("report.getCreditChanges", true),
    ("isp.getAllISPs", false),
    ("isp.addNewISP", false),
    ("isp.updateISP", false),
    ("report.getEvents", false),
    ("user.getPackages", true),
    ("user.assignPackage", false),
    ("user.activatePackage", false),
    ("user.deactivatePackage", false),
    ("user.renewPackage", false),
    ("user.closePackage", false),
];

const METHODS: &[&str] = &[
    "login.login",
    "user.getUserInfo",
    "user.addNewUsers",
    "user.updateUserAttrs",
    "user.changeCreditExtended",
    "user.renewUsers",
    "user.delUser",
    "user.killUser",
    "user.importUsers",
    "user.cancelCharges",
    "report.getConnections",
    "report.getOnlineUsers",
    "report.getCreditChanges",
    "isp.getAllISPs",
    "isp.addNewISP",
    "isp.updateISP",
    "report.getEvents",
    "user.getPackages",
    "user.assignPackage",
    "user.activatePackage",
    "user.deactivatePackage",
    "user.renewPackage",
    "user.closePackage",
];

fn dispatch(st: &Service, peer: IpAddr, method: &str, p: &Map<String, Value>) -> RpcResult {
    let Some(&(_, client_may)) = METHOD_TABLE.iter().find(|(m, _)| *m == method) else {
        return Err(RpcError::new(
            "METHOD_NOT_FOUND",
            format!("no method {:?}", truncate(method)),
        ));
    };
    if method == "login.login" {
        return login(st, peer, p);
    }
    let caller = authenticate(st, peer, p)?;
    st.allow(&caller, method, client_may).map_err(rpc_error)?;
    match method {
        "user.getUserInfo" => user_info(st, &caller, p),
        "report.getConnections" => report::get_connections(st, &caller, p),
        "report.getOnlineUsers" => online::get_online_users(st, p),
        "report.getCreditChanges" => credit_changes(st, &caller, p),
        "user.killUser" => online::kill_user(st, p),
        "user.addNewUsers" => add_new_users(st, &caller, p),
        "user.updateUserAttrs" => update_user_attrs(st, &caller, p),
        "user.changeCreditExtended" => change_credit(st, &caller, p),
        "user.renewUsers" => renew(st, &caller, p),
        "user.delUser" => del_user(st, &caller, p),
        "user.importUsers" => import_users(st, &caller, p),
        "user.cancelCharges" => cancel_charges(st, &caller, p),
        "isp.getAllISPs" => all_isps(st),
        "isp.addNewISP" => add_isp(st, p),
        "isp.updateISP" => update_isp(st, p),
        "report.getEvents" => events(st, p),
        "user.getPackages" => get_packages(st, caller.clone(), p),
        "user.assignPackage" => {
            let user_id = one_id(p, "user_id")?;
            let package = str_param(p, "package")?.to_string();
            package_op(st, &caller, PackageOp::Assign { user_id, package })
        }
        "user.activatePackage" => {
            let id = one_id(p, "id")?;
            let at = match opt_str(p, "start") {
                Some(t) => Some(
                    st.parse_time(t)
                        .map_err(|r| invalid(format!("start: {r}")))?,
                ),
                None => None,
            };
            package_op(st, &caller, PackageOp::Activate { id, at })
        }
        "user.deactivatePackage" => package_op(
            st,
            &caller,
            PackageOp::Deactivate {
                id: one_id(p, "id")?,
            },
        ),
        "user.renewPackage" => package_op(
            st,
            &caller,
            PackageOp::Renew {
                id: one_id(p, "id")?,
            },
        ),
        "user.closePackage" => package_op(
            st,
            &caller,
            PackageOp::Close {
                id: one_id(p, "id")?,
            },
        ),
        _ => unreachable!("listed in METHOD_TABLE"),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(crate) fn invalid(msg: impl Into<String>) -> RpcError {
    RpcError::new("INVALID_PARAMS", msg)
}

pub(crate) fn str_param<'a>(p: &'a Map<String, Value>, key: &str) -> Result<&'a str, RpcError> {
    match p.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("{key}: expected a string"))),
        None => Err(invalid(format!("{key}: missing"))),
    }
}

pub(crate) fn opt_str<'a>(p: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str)
}

/// A decimal from a JSON number (exact digits, read from its text) or a string.
pub(crate) fn decimal_param(p: &Map<String, Value>, key: &str) -> Result<Decimal, RpcError> {
    let text = match p.get(key) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(invalid(format!("{key}: expected a number"))),
        None => return Err(invalid(format!("{key}: missing"))),
    };
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| {
            invalid(format!(
                "{key}: {:?} is not a decimal number",
                truncate(&text)
            ))
        })
}

/// A money amount: a decimal within the credit range (|amount| <= 10^15, at most 10
/// decimal places; see [`ratel_engine::users::check_credit`]).
pub(crate) fn credit_param(p: &Map<String, Value>, key: &str) -> Result<Decimal, RpcError> {
    ratel_engine::users::check_credit(decimal_param(p, key)?)
        .map_err(|reason| invalid(format!("{key}: {reason}")))
}

/// `"12"`, `"12,13,15"`, `12` or `[12, 13]`; an id given twice counts once (first place
/// kept), so `"3,3,3"` is user 3 once.
pub(crate) fn id_list(p: &Map<String, Value>, key: &str) -> Result<Vec<i64>, RpcError> {
    let bad = || {
        invalid(format!(
            "{key}: expected a user id or a comma-separated list of ids"
        ))
    };
    let ids: Vec<i64> = match p.get(key) {
        Some(Value::Number(n)) => vec![n.as_i64().ok_or_else(bad)?],
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().parse::<i64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if ids.is_empty() || ids.len() > 10_000 {
        return Err(bad());
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    Ok(ids.into_iter().filter(|id| seen.insert(*id)).collect())
}

fn parse_auth_type(s: &str) -> Option<AuthType> {
    match s {
        "ADMIN" => Some(AuthType::Admin),
        "NORMAL_USER" => Some(AuthType::NormalUser),
        _ => None,
    }
}

/// A decimal as a JSON number with exactly its digits.
pub(crate) fn money(d: Decimal) -> Value {
    let text = d.normalize().to_string();
    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
}

/// `YYYY-MM-DD HH:MM:SS` in the rating time zone.
pub(crate) fn fmt_time(catalog: &Catalog, secs: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .map(|t| {
            t.with_timezone(&catalog.tz)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A `YYYY-MM-DD[ HH:MM[:SS]]` time in the rating zone, or ISO-8601 with an offset.
fn time_param(st: &Service, p: &Map<String, Value>, key: &str) -> Result<Option<i64>, RpcError> {
    let s = match p.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(invalid(format!("{key}: expected \"YYYY-MM-DD HH:MM:SS\""))),
    };
    st.parse_time(s)
        .map(Some)
        .map_err(|e| invalid(format!("{key}: {e}")))
}

fn login(st: &Service, peer: IpAddr, p: &Map<String, Value>) -> RpcResult {
    let name = str_param(p, "login_auth_name")?;
    let pass = str_param(p, "login_auth_pass")?;
    let t = parse_auth_type(str_param(p, "login_auth_type")?)
        .ok_or_else(|| invalid("login_auth_type: expected ADMIN or NORMAL_USER"))?;
    let caller = st.login(peer, t, name, pass).map_err(rpc_error)?;
    if !p
        .get("create_session")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        return Ok(Value::Bool(true));
    }
    let token = st.open_session(&caller, t, name, peer).map_err(rpc_error)?;
    Ok(Value::String(token))
}

fn authenticate(st: &Service, peer: IpAddr, p: &Map<String, Value>) -> Result<Caller, RpcError> {
    let denied = |m: &str| RpcError::new("ACCESS_DENIED", m.to_string());
    let t = opt_str(p, "auth_type")
        .and_then(parse_auth_type)
        .ok_or_else(|| denied("auth_type must be ADMIN or NORMAL_USER"))?;
    let name = opt_str(p, "auth_name").ok_or_else(|| denied("auth_name missing"))?;
    if let Some(token) = opt_str(p, "auth_session") {
        return st.session_caller(token, t, name, peer).map_err(rpc_error);
    }
    let pass =
        opt_str(p, "auth_pass").ok_or_else(|| denied("auth_session or auth_pass required"))?;
    st.login(peer, t, name, pass).map_err(rpc_error)
}

fn add_new_users(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let count = p
        .get("count")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| invalid("count: expected a positive number"))?;
    let group = str_param(p, "group_name")?.to_string();
    let credit = credit_param(p, "credit")?;
    let comment = opt_str(p, "credit_comment").unwrap_or("").to_string();
    let company = opt_str(p, "isp_name")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if count == 0 || count > ratel_engine::commands::MAX_NEW_USERS as u64 {
        return Err(invalid(format!(
            "count must be 1..={}",
            ratel_engine::commands::MAX_NEW_USERS
        )));
    }
    let clients = (0..count)
        .map(|_| NewClient {
            group: group.clone(),
            company: company.clone(),
            credit,
            comment: comment.clone(),
            ..Default::default()
        })
        .collect();
    let ids = st.create_clients(caller, clients).map_err(rpc_error)?;
    Ok(json!(ids))
}

/// Longest lock reason accepted (characters).
const MAX_LOCK_REASON: usize = 255;

/// A flag as IBSng clients send them: a bool, `"1"`/`"0"`, `"t"`/`"f"`, `"true"`/`"false"`.
fn flag(v: &Value, key: &str) -> Result<bool, RpcError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_i64().unwrap_or(0) != 0),
        Value::String(s) => match s.trim() {
            "1" | "t" | "true" | "yes" => Ok(true),
            "0" | "f" | "false" | "no" | "" => Ok(false),
            _ => Err(invalid(format!("{key}: expected a flag (1/0, t/f)"))),
        },
        _ => Err(invalid(format!("{key}: expected a flag (1/0, t/f)"))),
    }
}

/// IBSng's updateUserAttrs over the service's one client change: `attrs` may hold
/// `normal_user_spec` (username and password), `lock` (a reason), `group_name`,
/// `isp_name` (the company), `archived`, `accounts` (`kind:id;…` added), profile fields
/// and `custom.<key>`; `to_del_attrs` may name `lock`, `archived`, profile fields and
/// `account:<kind>:<id>`. Everything is checked, then applied as a whole.
fn update_user_attrs(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let ids = id_list(p, "user_id")?;
    let [user_id] = ids[..] else {
        return Err(invalid("user_id: exactly one user"));
    };
    let mut change = ClientChange::default();
    let empty = Map::new();
    let attrs = match p.get("attrs") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => return Err(invalid("attrs: expected an object")),
    };
    for (k, v) in attrs {
        match k.as_str() {
            "normal_user_spec" => {
                let spec = v
                    .as_object()
                    .ok_or_else(|| invalid("attrs.normal_user_spec: expected an object"))?;
                let username = str_param(spec, "normal_username")?.to_string();
                let password = str_param(spec, "normal_password")?.to_string();
                ratel_engine::domain::check_username(&username)
                    .map_err(|r| invalid(format!("normal_username: {r}")))?;
                if password.is_empty() {
                    return Err(invalid("normal_password: must not be empty"));
                }
                change.credentials = Some((username, password));
            }
            "lock" => {
                let reason = match v {
                    Value::String(r) if r.chars().count() > MAX_LOCK_REASON => {
                        return Err(invalid(format!(
                            "attrs.lock: a reason of at most {MAX_LOCK_REASON} characters"
                        )))
                    }
                    Value::String(r) if r.trim().is_empty() => "locked".to_string(),
                    Value::String(r) => r.clone(),
                    _ => return Err(invalid("attrs.lock: expected a reason string")),
                };
                change.lock = Some(Some(reason));
            }
            "group_name" => {
                change.group = Some(
                    v.as_str()
                        .ok_or_else(|| invalid("attrs.group_name: expected a string"))?
                        .to_string(),
                )
            }
            "isp_name" => {
                change.company = Some(
                    v.as_str()
                        .ok_or_else(|| invalid("attrs.isp_name: expected a string"))?
                        .to_string(),
                )
            }
            "archived" => change.archived = Some(flag(v, "attrs.archived")?),
            "accounts" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| invalid("attrs.accounts: expected \"kind:id;kind:id\""))?;
                change.add_accounts =
                    Account::parse_list(s).map_err(|r| invalid(format!("attrs.accounts: {r}")))?;
            }
            key => {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(invalid(format!("attrs.{key}: expected a string"))),
                };
                ratel_engine::domain::check_profile(key, &value)
                    .map_err(|r| invalid(format!("attrs: {r}")))?;
                change.profile.push((key.to_string(), Some(value)));
            }
        }
    }
    match p.get("to_del_attrs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for n in names {
                let name = n
                    .as_str()
                    .ok_or_else(|| invalid("to_del_attrs: expected attribute names"))?;
                match name {
                    "lock" => {
                        if matches!(change.lock, Some(Some(_))) {
                            return Err(invalid(
                                "lock: in attrs and in to_del_attrs at once; lock or unlock",
                            ));
                        }
                        change.lock = Some(None);
                    }
                    "archived" => change.archived = Some(false),
                    _ => {
                        if let Some(rest) = name.strip_prefix("account:") {
                            let (kind, ident) = rest.split_once(':').ok_or_else(|| {
                                invalid(format!(
                                    "to_del_attrs: {name:?}: expected account:<kind>:<id>"
                                ))
                            })?;
                            let kind = AccountKind::parse(kind).ok_or_else(|| {
                                invalid(format!(
                                    "to_del_attrs: {name:?}: kind is radius, voip or dn"
                                ))
                            })?;
                            change.remove_accounts.push(
                                Account::new(kind, ident)
                                    .map_err(|r| invalid(format!("to_del_attrs: {r}")))?,
                            );
                        } else {
                            ratel_engine::domain::check_profile(name, "").map_err(|_| {
                                invalid(format!(
                                    "to_del_attrs: {:?} is not lock, archived, a profile field or account:<kind>:<id>",
                                    truncate(name)
                                ))
                            })?;
                            change.profile.push((name.to_string(), None));
                        }
                    }
                }
            }
        }
        Some(_) => return Err(invalid("to_del_attrs: expected a list of attribute names")),
    }
    if change.is_empty() {
        return Err(invalid(
            "attrs: nothing to change (normal_user_spec, lock, group_name, isp_name, archived, accounts, profile fields; or to_del_attrs)",
        ));
    }
    st.update_client(caller, user_id, change)
        .map_err(rpc_error)?;
    Ok(Value::String(String::new()))
}

fn change_credit(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let user_ids = id_list(p, "user_id")?;
    let credit = credit_param(p, "credit")?;
    let change_type = match str_param(p, "change_type")? {
        "ADD" => ChangeType::Add,
        "SET" => ChangeType::Set,
        "MULTIPLY" => ChangeType::Multiply,
        other => {
            return Err(invalid(format!(
                "change_type: {:?}: expected ADD, SET or MULTIPLY",
                truncate(other)
            )))
        }
    };
    let comment = opt_str(p, "credit_comment").unwrap_or("").to_string();
    let ids = st
        .change_credit(caller, user_ids, credit, change_type, comment)
        .map_err(rpc_error)?;
    Ok(json!(ids))
}

/// One id (`12` or `"12"`).
fn one_id(p: &Map<String, Value>, key: &str) -> Result<i64, RpcError> {
    match id_list(p, key)?.as_slice() {
        [id] => Ok(*id),
        _ => Err(invalid(format!("{key}: expected one id"))),
    }
}

/// A client package as this dialect shows it (times as IBSng writes them).
fn package_json(cat: &Catalog, p: &ClientPackage) -> Value {
    ratel_engine::ledger::package_json_with(p, |t| fmt_time(cat, t))
}

/// Extension: a user's packages (`include_closed` for the closed ones too).
fn get_packages(st: &Service, caller: Caller, p: &Map<String, Value>) -> RpcResult {
    let user_id = one_id(p, "user_id")?;
    // A NORMAL_USER reads its own only (the service refuses others).
    st.client(&caller, &ClientRef::Id(user_id))
        .map_err(rpc_error)?;
    let closed = p
        .get("include_closed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cat = st.catalog.get();
    let pkgs = st.client_packages(user_id, closed).map_err(rpc_error)?;
    Ok(Value::Array(
        pkgs.iter().map(|x| package_json(&cat, x)).collect(),
    ))
}

/// Extensions: package operations; answers the packages as the operation left them.
fn package_op(st: &Service, caller: &Caller, op: PackageOp) -> RpcResult {
    let cat = st.catalog.get();
    let pkgs = st.packages(caller, op).map_err(rpc_error)?;
    Ok(Value::Array(
        pkgs.iter().map(|x| package_json(&cat, x)).collect(),
    ))
}

fn renew(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let user_ids = id_list(p, "user_id")?;
    let comment = opt_str(p, "comment").unwrap_or("").to_string();
    st.renew(caller, user_ids, comment).map_err(rpc_error)?;
    Ok(Value::Bool(true))
}

fn del_user(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let user_ids = id_list(p, "user_id")?;
    let comment = opt_str(p, "delete_comment").unwrap_or("").to_string();
    st.delete_clients(caller, user_ids, comment)
        .map_err(rpc_error)?;
    Ok(Value::Bool(true))
}

/// `ratel users import` while `serve` runs: a part of the file (header first) and the file
/// line of its header; answers each line's fate.
fn import_users(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let name = opt_str(p, "file").unwrap_or("import.csv").to_string();
    let first_line = p.get("first_line").and_then(Value::as_u64).unwrap_or(1);
    let csv = str_param(p, "csv")?;
    let (rows, bad) = ratel_engine::users::parse_import(&name, csv.as_bytes(), first_line)
        .map_err(|e| invalid(e.to_string()))?;
    let out = st.import(caller, rows).map_err(rpc_error)?;
    let mut refused: Vec<String> = bad;
    refused.extend(
        out.refused
            .iter()
            .map(|(line, reason)| format!("{name}:{line}: {reason}")),
    );
    Ok(json!({
        "created": out.created.iter().map(|(line, id)| json!([line, id])).collect::<Vec<_>>(),
        "existing": out.existing,
        "bad": refused,
    }))
}

/// ratel's extension: the client's journal rows over `[from, to)` (`YYYY-MM-DD HH:MM:SS`
/// in the rating zone, or ISO-8601), optionally of `kinds` (`payment`, `usage`,
/// `package_fee`, `refund`).
fn credit_changes(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let ids = id_list(p, "user_id")?;
    let [user_id] = ids[..] else {
        return Err(invalid("user_id: exactly one user"));
    };
    let from = time_param(st, p, "from")?;
    let to = time_param(st, p, "to")?;
    let kinds: Vec<JournalKind> = match p.get("kinds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|k| {
                k.as_str()
                    .and_then(JournalKind::parse)
                    .ok_or_else(|| invalid("kinds: expected payment, usage, package_fee or refund"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("kinds: expected a list")),
    };
    let rows = st
        .journal(caller, user_id, from, to, &kinds)
        .map_err(rpc_error)?;
    let cat = st.catalog.get();
    let out: Vec<Value> = rows
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "user_id": j.user_id,
                "kind": j.kind.as_str(),
                "change_time": fmt_time(&cat, j.at),
                "amount": money(j.amount),
                "balance_after": money(j.balance_after),
                "comment": j.comment,
                "admin": j.actor,
            })
        })
        .collect();
    Ok(json!({"total_rows": out.len(), "report": out}))
}

/// ratel's extension: cancel a client's charges over `[from, to)`.
fn cancel_charges(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let ids = id_list(p, "user_id")?;
    let [user_id] = ids[..] else {
        return Err(invalid("user_id: exactly one user"));
    };
    let from = time_param(st, p, "from")?.ok_or_else(|| invalid("from: missing"))?;
    let to = time_param(st, p, "to")?.ok_or_else(|| invalid("to: missing"))?;
    let comment = opt_str(p, "comment").unwrap_or("").to_string();
    let out = st
        .cancel_charges(caller, user_id, from, to, comment)
        .map_err(rpc_error)?;
    Ok(json!({
        "refunded": out.refunded,
        "amount": money(out.amount),
        "credit": money(out.balance),
        "journal_id": out.journal_id,
    }))
}

/// ratel's extension: provisioning events after `after` (an event id; default 0), at most
/// `limit` (default 100), each with its delivery state per hook.
fn events(st: &Service, p: &Map<String, Value>) -> RpcResult {
    let num = |k: &str, d: i64| -> Result<i64, RpcError> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| *n >= 0)
                .ok_or_else(|| invalid(format!("{k}: expected a number"))),
        }
    };
    let list = st
        .events(num("after", 0)?, num("limit", 100)? as usize)
        .map_err(rpc_error)?;
    Ok(json!(list
        .iter()
        .map(|e| json!({
            "event_id": e.event.id,
            "event": e.event.name,
            "user_id": e.event.user_id,
            "body": serde_json::from_str::<Value>(&e.event.body).unwrap_or(Value::Null),
            "hooks": e.hooks.iter().map(|(h, state, err)| json!({"hook": h, "state": state, "error": err})).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>()))
}

fn all_isps(st: &Service) -> RpcResult {
    let list = st.companies().map_err(rpc_error)?;
    Ok(json!(list
        .iter()
        .map(|c| json!({
            "isp_id": c.id,
            "isp_name": c.name,
            "isp_type": c.kind,
            "prepaid": c.prepaid,
            "isp_credit": money(c.credit),
        }))
        .collect::<Vec<_>>()))
}

fn add_isp(st: &Service, p: &Map<String, Value>) -> RpcResult {
    let name = str_param(p, "isp_name")?.trim().to_string();
    let kind = p.get("isp_type").and_then(Value::as_i64).unwrap_or(10);
    let prepaid = match p.get("prepaid") {
        None | Some(Value::Null) => true,
        Some(v) => flag(v, "prepaid")?,
    };
    let credit = if p.contains_key("isp_credit") {
        credit_param(p, "isp_credit")?
    } else {
        Decimal::ZERO
    };
    let id = st
        .add_company(name, kind, prepaid, credit)
        .map_err(rpc_error)?;
    Ok(json!(id))
}

fn update_isp(st: &Service, p: &Map<String, Value>) -> RpcResult {
    let id = p
        .get("isp_id")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| invalid("isp_id: expected a company id"))?;
    let name = opt_str(p, "isp_name").map(|s| s.trim().to_string());
    let kind = p.get("isp_type").and_then(Value::as_i64);
    let prepaid = p.get("prepaid").map(|v| flag(v, "prepaid")).transpose()?;
    let credit = if p.contains_key("isp_credit") {
        Some(credit_param(p, "isp_credit")?)
    } else {
        None
    };
    st.update_company(id, name, kind, prepaid, credit)
        .map_err(rpc_error)?;
    Ok(Value::Bool(true))
}

fn user_info(st: &Service, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    let refs: Vec<ClientRef> = if let Some(name) = opt_str(p, "normal_username") {
        vec![ClientRef::Username(name.to_string())]
    } else if p.contains_key("user_id") {
        id_list(p, "user_id")?
            .into_iter()
            .map(ClientRef::Id)
            .collect()
    } else {
        return Err(invalid("normal_username or user_id required"));
    };
    let cat = st.catalog.get();
    let mut out = Map::new();
    for r in &refs {
        let v = st.client(caller, r).map_err(rpc_error)?;
        out.insert(v.record.user_id.to_string(), info_json(&cat, caller, &v));
    }
    Ok(Value::Object(out))
}

fn info_json(cat: &Catalog, caller: &Caller, v: &crate::service::ClientView) -> Value {
    let c = &v.record;
    let group_id = cat
        .group_index(&c.group)
        .map(|g| cat.groups[g].id)
        .unwrap_or(0);
    let username = c.username.clone().unwrap_or_default();
    let charge_rule_usage: Vec<Value> = v
        .rule_usage
        .iter()
        .map(|u| {
            let id = cat
                .charge_rules
                .iter()
                .find(|r| r.name == u.rule)
                .map(|r| r.id)
                .unwrap_or(0);
            json!([
                id,
                u.rule,
                u.credit.normalize().to_string(),
                u.seconds.to_string(),
                u.bytes.to_string()
            ])
        })
        .collect();
    let internet_onlines: Vec<Value> = v
        .online
        .iter()
        .map(|o| {
            json!([
                o.nas_ip,
                o.nas,
                o.nas_port.map(|p| p.to_string()).unwrap_or_default(),
                fmt_time(cat, o.login_time),
                o.remote_ip,
                0,
                o.charged.normalize().to_string(),
                "",
                o.caller_id,
                o.bytes_in.to_string(),
                o.bytes_out.to_string(),
                o.duration_secs.to_string(),
                "0",
                "Master",
                o.session_id,
                "",
                "",
                "",
                true
            ])
        })
        .collect();
    let mut attrs = Map::new();
    attrs.insert("normal_username".into(), json!(username));
    if matches!(caller, Caller::Admin { .. }) {
        attrs.insert(
            "normal_password".into(),
            json!(c.password.clone().unwrap_or_default()),
        );
    }
    if let Some(t) = c.real_first_login {
        attrs.insert("real_first_login".into(), json!(fmt_time(cat, t)));
    }
    if let Some(t) = c.first_login {
        attrs.insert("first_login".into(), json!(fmt_time(cat, t)));
    }
    attrs.insert("charge_rule_usage".into(), Value::Array(charge_rule_usage));
    // As IBSng shows it: the `lock` attribute, with its reason, only while locked.
    if let Some(reason) = &c.lock_reason {
        attrs.insert("lock".into(), json!(reason));
    }
    if c.archived {
        attrs.insert("archived".into(), json!("1"));
    }
    attrs.insert(
        "accounts".into(),
        json!(v.accounts.iter().map(Account::label).collect::<Vec<_>>()),
    );
    for (k, val) in &v.profile {
        attrs.insert(k.clone(), json!(val));
    }
    // Packages with quota left in their current period (DESIGN.md "Packages and expiry").
    let now = chrono::Utc::now().timestamp();
    let with_quota: Vec<Value> = v
        .packages
        .iter()
        .filter(|p| p.has_quota_at(now))
        .map(|p| package_json(cat, p))
        .collect();
    if !with_quota.is_empty() {
        attrs.insert("packages".into(), Value::Array(with_quota));
    }
    json!({
        "online_status": !v.online.is_empty(),
        "basic_info": {
            "status": c.service_status,
            "client_status": c.status().as_str(),
            "group_name": c.group,
            "isp_name": c.company_name,
            "creation_date": fmt_time(cat, c.created_at),
            "recharge_deposit": 0,
            "user_id": c.user_id,
            "nearest_exp_date": ratel_engine::packages::nearest_expiry(&v.packages)
                .map(|t| fmt_time(cat, t))
                .unwrap_or_default(),
            "credit": money(c.credit),
            "deposit": 0,
            "isp_id": c.company_id,
            "group_id": group_id,
        },
        "user_repr": username,
        "attrs": attrs,
        "voip_onlines": [],
        "internet_onlines": internet_onlines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Money crosses the API as JSON numbers with every digit: this needs serde_json's
    /// `arbitrary_precision` (docs/dependencies.md); without it these go through f64
    /// (`1000000000000000.0`, `123456789012345.02`, `1e-10`).
    #[test]
    fn money_keeps_every_digit() {
        for t in [
            "999999999999999.9999999999",
            "123456789012345.0123456789",
            "0.0000000001",
            "100.1",
        ] {
            let d: Decimal = t.parse().unwrap();
            assert_eq!(money(d).to_string(), t);
            let mut p = Map::new();
            p.insert("credit".into(), serde_json::from_str(t).unwrap());
            assert_eq!(decimal_param(&p, "credit").unwrap(), d);
        }
    }
}
