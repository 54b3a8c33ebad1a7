//! The JeraSoft VCS Management API dialect (seeds 000/001; DESIGN.md Part 2 "JeraSoft VCS
//! Management API dialect"): an adapter over the service layer.
//!
//! `POST /jsonrpc/` (and `/jsonrpc`) takes JSON-RPC 2.0 requests whose method is
//! `module.action` as the VCS web UI names it. Every well-formed request is answered
//! `{"jsonrpc": "2.0", "id": <echo>, "result": {"code", "session_id", "messages",
//! "return", "errors"}}`: a refusal (bad login, a missing or mistyped argument — all of
//! them named, an unknown id, a veto) is `code: false` with human `errors`; malformed JSON
//! (-32700), a request that is no request (-32600), params that are no object (-32602) and
//! unknown methods (-32601) are JSON-RPC `error` objects. Auth rides in params: `auth =
//! {login, password}` opens a session, `SID = "1-<token>"` continues one. File answers
//! (xDR downloads) are plain HTTP at `/admin/<module>/<action>` ([`files`]). No rule lives
//! here: arguments become service calls, results and errors become VCS shapes.

mod clients;
pub mod files;
mod money;
mod packages;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ratel_engine::catalog::Catalog;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::auth::AuthType;
use crate::service::{Caller, NotFound, Service, ServiceError};
use crate::{metrics, ApiState, MAX_BODY};

/// The JSON-RPC error codes of the envelope.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// The prefix of a `session_id` / `SID` (the seed's `1-dsglnqr4...`).
const SID_PREFIX: &str = "1-";

/// A method's handler: the call's context and its arguments in, the `return` value (and
/// success messages) or the refusal out.
type Handler = fn(&Ctx<'_>, &mut Args<'_>) -> Outcome;

/// Every method, as `module.action`.
const METHODS: &[(&str, Handler)] = &[
    ("clients.list", clients::list),
    ("clients.editForm", clients::edit_form),
    ("clients.add", clients::add),
    ("clients.edit", clients::edit),
    ("clients.delete", clients::delete),
    ("clients.archive", clients::archive),
    ("accounts.list", clients::accounts_list),
    ("accounts.add", clients::accounts_add),
    ("accounts.edit", clients::accounts_edit),
    ("accounts.delete", clients::accounts_delete),
    ("companies.list", clients::companies_list),
    ("companies.add", clients::companies_add),
    ("payments.add", money::payments_add),
    ("payments.list", money::payments_list),
    ("xdrs.list", money::xdrs_list),
    ("xdrs.cancel", money::xdrs_cancel),
    ("events.list", money::events_list),
    ("clients_packages.list", packages::list),
    ("clients_packages.assign", packages::assign),
    ("clients_packages.activate", packages::activate),
    ("clients_packages.deactivate", packages::deactivate),
    ("clients_packages.renew", packages::renew),
    ("clients_packages.close", packages::close),
];

/// Metric labels of the methods (bounded: anything else is `unknown`).
const METHOD_LABELS: &[&str] = &[
    "clients.list",
    "clients.editForm",
    "clients.add",
    "clients.edit",
    "clients.delete",
    "clients.archive",
    "accounts.list",
    "accounts.add",
    "accounts.edit",
    "accounts.delete",
    "companies.list",
    "companies.add",
    "payments.add",
    "payments.list",
    "xdrs.list",
    "xdrs.cancel",
    "events.list",
    "xdrs.download",
    "clients_packages.list",
    "clients_packages.assign",
    "clients_packages.activate",
    "clients_packages.deactivate",
    "clients_packages.renew",
    "clients_packages.close",
];

/// What a method answers when it succeeds.
pub(crate) struct Answer {
    ret: Value,
    messages: Vec<String>,
}

impl Answer {
    fn new(ret: Value) -> Self {
        Answer {
            ret,
            messages: Vec::new(),
        }
    }
    fn with_message(ret: Value, m: impl Into<String>) -> Self {
        Answer {
            ret,
            messages: vec![m.into()],
        }
    }
}

/// Why a call was refused (`code: false`): the human errors, and the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub label: &'static str,
    pub errors: Vec<String>,
}

impl Refusal {
    fn args(errors: Vec<String>) -> Self {
        Refusal {
            label: "invalid_params",
            errors,
        }
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        let label = match &e {
            ServiceError::AccessDenied(_) => "access_denied",
            ServiceError::AuthLocked { .. } => "auth_locked",
            ServiceError::NotFound { .. } => "not_found",
            ServiceError::Exists(_) => "exists",
            ServiceError::Invalid(_) => "invalid",
            ServiceError::NotReady(_) => "not_ready",
            ServiceError::Vetoed(_) => "vetoed",
            ServiceError::Internal(_) => "internal",
        };
        Refusal {
            label,
            errors: vec![e.message()],
        }
    }
}

pub(crate) type Outcome = Result<Answer, Refusal>;

/// One call's context: the service, the caller, and one config snapshot.
pub(crate) struct Ctx<'a> {
    st: &'a Service,
    caller: Caller,
    cat: Arc<Catalog>,
}

// ---- the envelope -------------------------------------------------------------------------

/// A JSON-RPC error object (the request never reached a method).
fn rpc_error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message.into()},
    })
}

/// The VCS answer to a request that reached a method.
fn envelope(id: Value, session: Option<&str>, out: Outcome) -> Value {
    let sid = session.map(|t| Value::String(format!("{SID_PREFIX}{t}")));
    let (code, ret, messages, errors) = match out {
        Ok(a) => (true, a.ret, a.messages, Vec::new()),
        Err(r) => (false, Value::Null, Vec::new(), r.errors),
    };
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "code": code,
            "session_id": sid.unwrap_or(Value::Null),
            "messages": messages,
            "return": ret,
            "errors": errors,
        },
    })
}

fn respond(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A parsed request: id, method, params.
#[derive(Debug)]
struct Request {
    id: Value,
    method: String,
    params: Map<String, Value>,
}

/// The request in `bytes`, or the JSON-RPC error answer.
fn parse_request(bytes: &[u8]) -> Result<Request, (Value, i64, String)> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| (Value::Null, PARSE_ERROR, format!("parse error: {e}")))?;
    let mut req = match v {
        Value::Object(m) => m,
        Value::Array(_) => {
            return Err((
                Value::Null,
                INVALID_REQUEST,
                "invalid request: batches are not supported; send one request per call".into(),
            ))
        }
        _ => {
            return Err((
                Value::Null,
                INVALID_REQUEST,
                "invalid request: expected a JSON object".into(),
            ))
        }
    };
    let id = match req.remove("id") {
        None => Value::Null,
        Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => id,
        Some(_) => {
            return Err((
                Value::Null,
                INVALID_REQUEST,
                "invalid request: id must be a string, a number or null".into(),
            ))
        }
    };
    // The seed's own example request has no "jsonrpc" member: absent is accepted.
    match req.get("jsonrpc") {
        None => {}
        Some(Value::String(v)) if v == "2.0" => {}
        Some(_) => {
            return Err((
                id,
                INVALID_REQUEST,
                "invalid request: jsonrpc must be \"2.0\"".into(),
            ))
        }
    }
    let method = match req.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Err((
                id,
                INVALID_REQUEST,
                "invalid request: method must be a string".into(),
            ))
        }
    };
    let params = match req.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err((
                id,
                INVALID_PARAMS,
                "invalid params: params must be an object of named arguments".into(),
            ))
        }
    };
    Ok(Request { id, method, params })
}

/// `POST /jsonrpc/` and `/jsonrpc`.
pub(crate) async fn handle(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let error = |id: Value, code: i64, m: String, label: &'static str| {
        metrics::record_call(&st, "vcs", "invalid", Some(label), started);
        respond(rpc_error(id, code, m))
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            Value::Null,
            INVALID_REQUEST,
            format!("invalid request: body larger than {MAX_BODY} bytes or unreadable"),
            "invalid_request",
        );
    };
    let req = match parse_request(&bytes) {
        Ok(r) => r,
        Err((id, code, m)) => {
            let label = match code {
                PARSE_ERROR => "parse_error",
                INVALID_PARAMS => "invalid_params",
                _ => "invalid_request",
            };
            return error(id, code, m, label);
        }
    };
    let Some(&(_, handler)) = METHODS.iter().find(|(m, _)| *m == req.method) else {
        let m = format!(
            "method not found: {:?}",
            req.method.chars().take(64).collect::<String>()
        );
        return error(req.id, METHOD_NOT_FOUND, m, "method_not_found");
    };
    let Ok(worker) = st.workers.clone().acquire_owned().await else {
        return error(
            req.id,
            INTERNAL_ERROR,
            "the API is shutting down".into(),
            "internal",
        );
    };
    let label = metrics::method_label(METHOD_LABELS, &req.method);
    let st2 = st.clone();
    let Request { id, method, params } = req;
    let done = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        call(&st2.service, peer.ip(), &method, handler, &params)
    })
    .await;
    let (session, out) = match done {
        Ok(r) => r,
        Err(_) => (
            None,
            Err(Refusal {
                label: "internal",
                errors: vec!["the request failed".into()],
            }),
        ),
    };
    metrics::record_call(
        &st,
        "vcs",
        label,
        out.as_ref().err().map(|r| r.label),
        started,
    );
    respond(envelope(id, session.as_deref(), out))
}

/// Authenticates, checks `allow`, runs the method. Answers the session token (for
/// `session_id`) beside the outcome.
fn call(
    st: &Service,
    peer: IpAddr,
    method: &str,
    handler: Handler,
    params: &Map<String, Value>,
) -> (Option<String>, Outcome) {
    let (token, caller) = match authenticate(st, peer, params) {
        Ok(t) => t,
        Err(r) => return (None, Err(r)),
    };
    if let Err(e) = st.allow(&caller, method, false) {
        return (Some(token), Err(e.into()));
    }
    let ctx = Ctx {
        st,
        caller,
        cat: st.catalog.get(),
    };
    let mut args = Args::new(params);
    (Some(token), handler(&ctx, &mut args))
}

/// The caller and its session token: `SID` when it names a live session, else `auth`
/// (which opens a new session); a dead `SID` with `auth` beside it logs in again, as the
/// seed's client library does.
pub(crate) fn authenticate(
    st: &Service,
    peer: IpAddr,
    p: &Map<String, Value>,
) -> Result<(String, Caller), Refusal> {
    let sid = match p.get("SID") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
        Some(_) => return Err(Refusal::args(vec!["SID: expected a string".into()])),
    };
    let auth = match p.get("auth") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => {
            return Err(Refusal::args(vec![
                "auth: expected {\"login\": ..., \"password\": ...}".into(),
            ]))
        }
    };
    let mut sid_refusal = None;
    if let Some(sid) = sid {
        let token = sid.strip_prefix(SID_PREFIX).unwrap_or(sid);
        match st.session_admin(token, peer) {
            Ok(caller) => return Ok((token.to_string(), caller)),
            Err(e) => sid_refusal = Some(e),
        }
    }
    let Some(a) = auth else {
        return Err(match sid_refusal {
            Some(e) => e.into(),
            None => Refusal {
                label: "access_denied",
                errors: vec!["auth: required ({\"login\": ..., \"password\": ...}), or SID".into()],
            },
        });
    };
    let mut errors = Vec::new();
    let mut field = |k: &str| match a.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            errors.push(format!("auth.{k}: required"));
            None
        }
        Some(_) => {
            errors.push(format!("auth.{k}: expected a string"));
            None
        }
    };
    let (login, password) = (field("login"), field("password"));
    let (Some(login), Some(password)) = (login, password) else {
        return Err(Refusal::args(errors));
    };
    let caller = st.login(peer, AuthType::Admin, login, password)?;
    let token = st.open_session(&caller, AuthType::Admin, login, peer)?;
    Ok((token, caller))
}

// ---- arguments ----------------------------------------------------------------------------

/// Names every method takes beside its own.
const AUTH_ARGS: [&str; 2] = ["auth", "SID"];

/// The arguments of one call. Each getter notes a missing or mistyped argument instead of
/// stopping at it, so one answer names them all (the seed: "the system will let you know
/// if you are missing any of the arguments"); [`Args::check`] then refuses the call with
/// every error, and with every argument the method does not take.
pub(crate) struct Args<'a> {
    p: &'a Map<String, Value>,
    errors: Vec<String>,
    known: Vec<&'static str>,
}

impl<'a> Args<'a> {
    pub(crate) fn new(p: &'a Map<String, Value>) -> Self {
        Args {
            p,
            errors: Vec::new(),
            known: AUTH_ARGS.to_vec(),
        }
    }

    /// The value of `k`; `None` when absent or null.
    fn raw(&mut self, k: &'static str) -> Option<&'a Value> {
        self.known.push(k);
        self.p.get(k).filter(|v| !v.is_null())
    }

    fn bad(&mut self, k: &str, why: impl std::fmt::Display) {
        self.errors.push(format!("{k}: {why}"));
    }

    fn required<T>(&mut self, k: &'static str, v: Option<T>) -> Option<T> {
        if v.is_none() && !self.errors.iter().any(|e| e.starts_with(&format!("{k}: "))) {
            self.errors.push(format!("{k}: required"));
        }
        v
    }

    /// Notes an error found after the arguments were read (e.g. a range).
    pub(crate) fn refuse(&mut self, k: &str, why: impl std::fmt::Display) {
        self.bad(k, why);
    }

    /// Refuses the call when any argument was missing or mistyped, or not one of the
    /// method's.
    pub(crate) fn check(&mut self) -> Result<(), Refusal> {
        let mut unknown: Vec<&String> = self
            .p
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for k in unknown {
            let k: String = k.chars().take(64).collect();
            self.errors.push(format!("{k}: unknown argument"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Refusal::args(std::mem::take(&mut self.errors)))
        }
    }

    /// An integer (a JSON integer or its decimal text, as web forms send it).
    pub(crate) fn int(&mut self, k: &'static str) -> Option<i64> {
        let v = self.raw(k)?;
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            self.bad(k, "expected an integer");
        }
        n
    }

    pub(crate) fn req_int(&mut self, k: &'static str) -> Option<i64> {
        let v = self.int(k);
        self.required(k, v)
    }

    /// A count (offset, limit): an integer from 0 to `max`; `default` when absent.
    pub(crate) fn count(&mut self, k: &'static str, default: usize, max: usize) -> usize {
        match self.int(k) {
            None => default,
            Some(n) if n >= 0 && (n as u64) <= max as u64 => n as usize,
            Some(_) => {
                self.bad(k, format!("0 to {max}"));
                default
            }
        }
    }

    /// One id or several (`[1, 2]`, `"1,2"`); each once.
    pub(crate) fn req_ids(&mut self, k: &'static str) -> Option<Vec<i64>> {
        let v = self.raw(k);
        let ids: Option<Vec<i64>> = match v {
            None => None,
            Some(Value::Number(n)) => n.as_i64().map(|i| vec![i]),
            Some(Value::String(s)) => s
                .split(',')
                .map(|x| x.trim().parse::<i64>().ok())
                .collect::<Option<Vec<_>>>(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .collect::<Option<Vec<_>>>(),
            Some(_) => None,
        };
        if v.is_some() {
            match &ids {
                Some(list) if !list.is_empty() && list.len() <= 10_000 => {}
                _ => {
                    self.bad(k, "expected an id or a list of ids (at most 10000)");
                    return None;
                }
            }
        }
        let ids = self.required(k, ids)?;
        let mut seen = std::collections::HashSet::new();
        Some(ids.into_iter().filter(|i| seen.insert(*i)).collect())
    }

    /// A string as given (empty included); `None` when absent or null.
    pub(crate) fn text(&mut self, k: &'static str) -> Option<String> {
        match self.raw(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.bad(k, "expected a string");
                None
            }
        }
    }

    /// A non-empty string (trimmed).
    pub(crate) fn req_text(&mut self, k: &'static str) -> Option<String> {
        let v = self.text(k).map(|s| s.trim().to_string());
        let v = v.filter(|s| !s.is_empty());
        self.required(k, v)
    }

    /// A profile-like field: `Some(None)` when given as null (clears it), `Some(Some(s))`
    /// when given, `None` when absent.
    pub(crate) fn nullable_text(&mut self, k: &'static str) -> Option<Option<String>> {
        self.known.push(k);
        match self.p.get(k)? {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            Value::Number(n) => Some(Some(n.to_string())),
            _ => {
                self.bad(k, "expected a string or null");
                None
            }
        }
    }

    /// A flag: `true`/`false`, `1`/`0` (numbers or text).
    pub(crate) fn flag(&mut self, k: &'static str) -> Option<bool> {
        let v = self.raw(k)?;
        let b = match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_i64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            Value::String(s) => match s.trim() {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                "" => return None,
                _ => None,
            },
            _ => None,
        };
        if b.is_none() {
            self.bad(k, "expected true or false (1 or 0)");
        }
        b
    }

    /// Money: a JSON number (its exact digits) or decimal text, within the credit range.
    pub(crate) fn money(&mut self, k: &'static str) -> Option<Decimal> {
        let v = self.raw(k)?;
        let text = match v {
            Value::Number(n) => n.to_string(),
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim().to_string(),
            _ => {
                self.bad(k, "expected a number");
                return None;
            }
        };
        let d = text
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text));
        match d {
            Ok(d) => match ratel_engine::users::check_credit(d) {
                Ok(d) => Some(d),
                Err(why) => {
                    self.bad(k, why);
                    None
                }
            },
            Err(_) => {
                let t: String = text.chars().take(64).collect();
                // A number, only too large or too fine for a Decimal.
                let numeric = t.bytes().any(|b| b.is_ascii_digit())
                    && t.bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
                if numeric {
                    self.bad(k, format!("{t} is outside the credit range -10^15..=10^15"));
                } else {
                    self.bad(k, format!("{t:?} is not a decimal number"));
                }
                None
            }
        }
    }

    pub(crate) fn req_money(&mut self, k: &'static str) -> Option<Decimal> {
        let v = self.money(k);
        self.required(k, v)
    }

    /// A time: `"YYYY-MM-DD HH:MM:SS"` in `rating.time_zone`, or ISO-8601 with an offset.
    pub(crate) fn time(&mut self, st: &Service, k: &'static str) -> Option<i64> {
        let v = self.raw(k)?;
        let Value::String(s) = v else {
            self.bad(k, "expected \"YYYY-MM-DD HH:MM:SS\"");
            return None;
        };
        if s.trim().is_empty() {
            return None;
        }
        match st.parse_time(s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.bad(
                    k,
                    format!("{e} (\"YYYY-MM-DD HH:MM:SS\" in the rating time zone, or ISO-8601)"),
                );
                None
            }
        }
    }

    pub(crate) fn req_time(&mut self, st: &Service, k: &'static str) -> Option<i64> {
        let v = self.time(st, k);
        self.required(k, v)
    }
}

/// Parses `body` as a VCS request and reads its params with every typed getter (the work
/// a request does before it reaches the service); the number of argument errors. Driven by
/// the fuzz target `vcs_request` and the seeded mutation test below: no input may panic.
#[doc(hidden)]
pub fn exercise_request(body: &[u8]) -> usize {
    let Ok(r) = parse_request(body) else {
        return 0;
    };
    let mut a = Args::new(&r.params);
    let _ = a.req_int("id_clients");
    let _ = a.req_ids("ids");
    let _ = a.req_money("amount");
    let _ = a.money("credit");
    let _ = a.flag("prepaid");
    let _ = a.req_text("name");
    let _ = a.nullable_text("c_email");
    let _ = a.count("offset", 0, 1 << 40);
    let _ = a.count("limit", 100, 1000);
    match a.check() {
        Ok(()) => 0,
        Err(r) => r.errors.len(),
    }
}

// ---- shapes -------------------------------------------------------------------------------

/// A decimal as a JSON number with exactly its digits (the seed's `"credit": 100`).
pub(crate) fn money(d: Decimal) -> Value {
    crate::ibsng::money(d)
}

/// `YYYY-MM-DD HH:MM:SS` in the rating time zone.
pub(crate) fn fmt_time(cat: &Catalog, secs: i64) -> String {
    crate::ibsng::fmt_time(cat, secs)
}

/// `YYYY-MM-DD HH:MM:SS+HH` in the rating time zone (the seed's `c_dt`,
/// `2013-03-30 16:26:15+03`); `+HH:MM` for a zone off by a part of an hour.
pub(crate) fn fmt_time_offset(cat: &Catalog, secs: i64) -> String {
    use chrono::Offset;
    let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0) else {
        return String::new();
    };
    let local = t.with_timezone(&cat.tz);
    let off = local.offset().fix().local_minus_utc();
    let sign = if off < 0 { '-' } else { '+' };
    let (h, m) = (off.abs() / 3600, off.abs() % 3600 / 60);
    let zone = if m == 0 {
        format!("{sign}{h:02}")
    } else {
        format!("{sign}{h:02}:{m:02}")
    };
    format!("{}{zone}", local.format("%Y-%m-%d %H:%M:%S"))
}

/// The currency of amounts: ISO 4217 code. ratel has no `[rating] currency` yet, so this
/// is DESIGN.md's default.
pub(crate) fn currency_code(_cat: &Catalog) -> &'static str {
    "USD"
}

/// ISO 4217 numeric codes of common currencies (VCS `id_currencies`).
const CURRENCIES: &[(&str, u16)] = &[
    ("AED", 784),
    ("AUD", 36),
    ("BGN", 975),
    ("BRL", 986),
    ("BYN", 933),
    ("CAD", 124),
    ("CHF", 756),
    ("CNY", 156),
    ("CZK", 203),
    ("DKK", 208),
    ("EGP", 818),
    ("EUR", 978),
    ("GBP", 826),
    ("GEL", 981),
    ("HKD", 344),
    ("HUF", 348),
    ("IDR", 360),
    ("ILS", 376),
    ("INR", 356),
    ("IRR", 364),
    ("JPY", 392),
    ("KRW", 410),
    ("KZT", 398),
    ("MXN", 484),
    ("NGN", 566),
    ("NOK", 578),
    ("NZD", 554),
    ("PLN", 985),
    ("RON", 946),
    ("RUB", 643),
    ("SAR", 682),
    ("SEK", 752),
    ("SGD", 702),
    ("TRY", 949),
    ("UAH", 980),
    ("USD", 840),
    ("ZAR", 710),
];

/// The ISO 4217 numeric code of a currency code (any case), if it is in the table.
pub(crate) fn currency_numeric(code: &str) -> Option<u16> {
    let code = code.trim().to_ascii_uppercase();
    CURRENCIES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// An argument [`Args::check`] passed (so it is present); a refusal otherwise, never a
/// panic.
pub(crate) fn got<T>(v: Option<T>, k: &str) -> Result<T, Refusal> {
    v.ok_or_else(|| Refusal::args(vec![format!("{k}: required")]))
}

/// A not-found for a company id.
fn no_company(id: i64) -> Refusal {
    ServiceError::NotFound {
        what: NotFound::Company,
        message: format!("id_companies: no company {id}"),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn envelope_errors_are_jsonrpc_errors() {
        for (body, code) in [
            (&b"{not json"[..], PARSE_ERROR),
            (b"", PARSE_ERROR),
            (b"[{\"method\": \"clients.list\"}]", INVALID_REQUEST),
            (b"\"clients.list\"", INVALID_REQUEST),
            (b"{\"id\": 1}", INVALID_REQUEST),
            (b"{\"method\": 5, \"id\": 1}", INVALID_REQUEST),
            (b"{\"method\": \"x\", \"id\": {}}", INVALID_REQUEST),
            (
                b"{\"jsonrpc\": \"1.0\", \"method\": \"x\"}",
                INVALID_REQUEST,
            ),
            (b"{\"method\": \"x\", \"params\": [1]}", INVALID_PARAMS),
        ] {
            let got = parse_request(body).unwrap_err();
            assert_eq!(got.1, code, "{}", String::from_utf8_lossy(body));
        }
        let r = parse_request(
            br#"{"method": "clients.editForm", "params": {"id_clients": 11}, "id": "a"}"#,
        )
        .unwrap();
        assert_eq!((r.id, r.method.as_str()), (json!("a"), "clients.editForm"));
        assert_eq!(r.params["id_clients"], 11);
    }

    #[test]
    fn every_bad_argument_is_named_at_once() {
        let p = args(json!({
            "id_clients": "eleven",
            "amount": "1e400x",
            "offset": -1,
            "flag": "maybe",
            "typo": 1,
            "SID": "x",
        }));
        let mut a = Args::new(&p);
        assert_eq!(a.req_int("id_clients"), None);
        assert_eq!(a.req_money("amount"), None);
        assert_eq!(a.count("offset", 0, 10), 0);
        assert_eq!(a.flag("flag"), None);
        assert_eq!(a.req_text("notes"), None);
        let errors = a.check().unwrap_err().errors;
        assert_eq!(
            errors,
            [
                "id_clients: expected an integer",
                "amount: \"1e400x\" is not a decimal number",
                "offset: 0 to 10",
                "flag: expected true or false (1 or 0)",
                "notes: required",
                "typo: unknown argument",
            ]
        );
    }

    #[test]
    fn arguments_as_web_forms_send_them() {
        let p = args(json!({
            "id_clients": "11",
            "ids": "3,3,4",
            "amount": 100.10,
            "prepaid": "1",
            "name": 7,
        }));
        let mut a = Args::new(&p);
        assert_eq!(a.req_int("id_clients"), Some(11));
        assert_eq!(a.req_ids("ids"), Some(vec![3, 4]));
        assert_eq!(a.req_money("amount"), Some("100.10".parse().unwrap()));
        assert_eq!(a.flag("prepaid"), Some(true));
        assert_eq!(a.text("name").as_deref(), Some("7"));
        assert!(a.check().is_ok());
    }

    /// Seeded mutations of well-formed requests (byte flips, JSON punctuation, cuts,
    /// repeats): parsing and reading arguments never panic (the fuzz target's inputs, on
    /// stable).
    #[test]
    fn mutated_requests_never_panic() {
        let seeds: [&[u8]; 4] = [
            br#"{"jsonrpc": "2.0", "method": "clients.editForm", "params": {"id_clients": 11, "SID": "1-ab"}, "id": 1}"#,
            br#"{"method": "payments.add", "params": {"id_clients": "3", "amount": 99999999999999.9999999999, "notes": "x"}, "id": "q"}"#,
            br#"{"jsonrpc": "2.0", "method": "clients.list", "params": {"ids": [1, "2", 3], "offset": 18446744073709551615, "limit": -1, "prepaid": "1", "c_email": null, "auth": {"login": "a", "password": "b"}}, "id": null}"#,
            br#"{"jsonrpc": "2.0", "method": "clients.add", "params": {"name": "\u0000\ud800", "credit": "1e-30", "amount": 1e999}, "id": 5}"#,
        ];
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        const PUNCT: &[u8] = b"{}[]\":,-.0e9\\ u";
        for round in 0..20_000 {
            let mut b = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next(4) {
                let at = next(b.len() + 1);
                match next(5) {
                    0 if at < b.len() => b[at] ^= 1 << next(8),
                    1 => b.insert(at, PUNCT[next(PUNCT.len())]),
                    2 => b.truncate(at),
                    3 if at < b.len() => {
                        let end = (at + next(16)).min(b.len());
                        let piece = b[at..end].to_vec();
                        b.splice(at..at, piece);
                    }
                    _ => {
                        if at < b.len() {
                            b.remove(at);
                        }
                    }
                }
            }
            let _ = exercise_request(&b);
        }
        // The seeds themselves: valid, with their argument errors counted.
        // ids, amount and name are missing.
        assert_eq!(exercise_request(seeds[0]), 3);
    }

    #[test]
    fn currencies_are_iso_4217_numeric() {
        assert_eq!(currency_numeric("USD"), Some(840));
        assert_eq!(currency_numeric("eur"), Some(978));
        assert_eq!(currency_numeric("UAH"), Some(980));
        assert_eq!(currency_numeric("XXX"), None);
        let mut codes: Vec<&str> = CURRENCIES.iter().map(|(c, _)| *c).collect();
        codes.dedup();
        assert_eq!(codes.len(), CURRENCIES.len(), "sorted and unique");
    }

    #[test]
    fn the_envelope_has_the_seed_shape() {
        let v = envelope(
            json!(1),
            Some("abc"),
            Ok(Answer::new(json!({"client": {}}))),
        );
        let keys: Vec<&String> = v["result"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["code", "session_id", "messages", "return", "errors"]);
        assert_eq!(v["result"]["session_id"], "1-abc");
        assert_eq!(v["jsonrpc"], "2.0");
        let v = envelope(
            json!("x"),
            None,
            Err(Refusal::args(vec!["id_clients: required".into()])),
        );
        assert_eq!(v["result"]["code"], false);
        assert_eq!(v["result"]["session_id"], Value::Null);
        assert_eq!(v["result"]["errors"], json!(["id_clients: required"]));
    }
}
