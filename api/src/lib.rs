//! The JSON-RPC API in the IBSng dialect (axum on tokio), started by `ratel serve`.
//!
//! `POST /` with `{"method": "handler.method", "params": {...}, "id": any}`; the answer is
//! always HTTP 200 with `{"id", "result", "error"}`, the error being `"CODE|message"` as
//! IBSng writes it. Reads go to the ledger through a read-only SQLite connection and to the
//! core's published live state; writes are commands executed by the serve core, which owns
//! the ledger and every balance. This crate owns the IBSng JSON shapes: engine types do not
//! carry IBSng names.

pub mod auth;
mod http;
mod metrics;
mod online;
pub mod report;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::{constant_time_eq, AuthType, LoginGuard, SessionError, Sessions};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ratel_engine::catalog::Catalog;
use ratel_engine::reload::CatalogCell;
use ratel_engine::serve::{ChangeType, Command, CommandError, Live};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

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

type RpcResult = Result<Value, RpcError>;

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    Admin,
    User { user_id: i64, username: String },
}

/// Shared state of the API.
pub struct ApiState {
    /// The running config (a reload replaces it: take one snapshot per use).
    pub(crate) catalog: Arc<CatalogCell>,
    live: Arc<Live>,
    commands: crossbeam_channel::Sender<Command>,
    pub(crate) db: Mutex<Connection>,
    pub(crate) xdr_root: PathBuf,
    sessions: Mutex<Sessions>,
    /// Lockout of failed logins per IP and per name.
    guard: Mutex<LoginGuard>,
    /// Requests executing at once (each holds a blocking worker thread).
    workers: Arc<tokio::sync::Semaphore>,
    /// Footers (with page index) of xDR files already read by reports.
    pub(crate) meta_cache:
        Mutex<HashMap<PathBuf, parquet::arrow::arrow_reader::ArrowReaderMetadata>>,
}

impl ApiState {
    /// Opens a read-only connection to the ledger (the core must have created it).
    pub fn new(
        cell: Arc<CatalogCell>,
        live: Arc<Live>,
        commands: crossbeam_channel::Sender<Command>,
    ) -> Result<Self, rusqlite::Error> {
        let catalog = cell.get();
        let path = catalog.data_dir.join("ledger.sqlite");
        let db = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        db.busy_timeout(Duration::from_secs(5))?;
        Ok(ApiState {
            xdr_root: catalog.data_dir.join("xdr"),
            live,
            commands,
            db: Mutex::new(db),
            sessions: Mutex::new(Sessions::new(
                Duration::from_secs(catalog.session_idle_secs),
                auth::SESSION_MAX_AGE,
                auth::MAX_SESSIONS,
            )),
            guard: Mutex::new(LoginGuard::default()),
            workers: Arc::new(tokio::sync::Semaphore::new(catalog.api_limits.max_requests)),
            meta_cache: Mutex::new(HashMap::new()),
            catalog: cell,
        })
    }
}

/// Serves the API on `listener` until `shutdown` resolves, within the limits of
/// `[api]` (connections, header and request deadlines; see `http.rs`).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.catalog.get().api_limits;
    let app = Router::new()
        .route("/", post(handle))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(metrics::health))
        .fallback(not_found)
        .with_state(state);
    http::serve(listener, app, limits, shutdown).await
}

async fn not_found() -> Response {
    answer(
        Value::Null,
        Err(RpcError::new(
            "METHOD_NOT_FOUND",
            "POST JSON-RPC requests to /",
        )),
    )
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

async fn handle(
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
        dispatch(&st2, peer.ip(), &method, &params)
    })
    .await
    .unwrap_or_else(|_| Err(RpcError::new("INTERNAL_ERROR", "the request failed")));
    metrics::record_call(&st, "ibsng", label, &r, started);
    answer(id, r)
}

/// An answer to a request that never reached a method (malformed, or the API stopping):
/// counted under the method label `invalid`.
fn rejected(st: &ApiState, started: Instant, id: Value, r: RpcResult) -> Response {
    metrics::record_call(st, "ibsng", "invalid", &r, started);
    answer(id, r)
}

const METHODS: &[&str] = &[
    "login.login",
    "user.getUserInfo",
    "user.addNewUsers",
    "user.updateUserAttrs",
    "user.changeCreditExtended",
    "user.renewUsers",
    "report.getConnections",
    "report.getOnlineUsers",
    "user.killUser",
];

fn dispatch(st: &ApiState, peer: IpAddr, method: &str, p: &Map<String, Value>) -> RpcResult {
    if !METHODS.contains(&method) {
        return Err(RpcError::new(
            "METHOD_NOT_FOUND",
            format!("no method {:?}", truncate(method)),
        ));
    }
    if method == "login.login" {
        return login(st, peer, p);
    }
    let caller = authenticate(st, peer, p)?;
    let admin_only = || match caller {
        Caller::Admin => Ok(()),
        Caller::User { .. } => Err(RpcError::new(
            "ACCESS_DENIED",
            "this method needs an ADMIN login",
        )),
    };
    match method {
        "user.getUserInfo" => user_info(st, &caller, p),
        "report.getConnections" => report::get_connections(st, &caller, p),
        "report.getOnlineUsers" => online::get_online_users(st, &caller, p),
        "user.killUser" => {
            admin_only()?;
            online::kill_user(st, p)
        }
        "user.addNewUsers" => {
            admin_only()?;
            add_new_users(st, p)
        }
        "user.updateUserAttrs" => {
            admin_only()?;
            update_user_attrs(st, p)
        }
        "user.changeCreditExtended" => {
            admin_only()?;
            change_credit(st, p)
        }
        "user.renewUsers" => {
            admin_only()?;
            renew(st, p)
        }
        _ => unreachable!("listed in METHODS"),
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

fn opt_str<'a>(p: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
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

/// Checks a name and password from `peer`, under the login guard: a locked-out IP or name
/// is refused before any compare, and a wrong password counts against both.
fn check_password(
    st: &ApiState,
    peer: IpAddr,
    t: AuthType,
    name: &str,
    pass: &str,
    now: Instant,
) -> Result<Caller, RpcError> {
    if let Err(left) = st
        .guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(peer, t, name, now)
    {
        return Err(RpcError::new(
            "AUTH_LOCKED",
            format!(
                "too many failed logins from this address or for this name; try again in {} s",
                left.as_secs().max(1)
            ),
        ));
    }
    let r = verify_password(st, t, name, pass);
    let mut guard = st.guard.lock().unwrap_or_else(|e| e.into_inner());
    match &r {
        Ok(_) => guard.succeeded(t, name),
        Err(e) if e.code == "ACCESS_DENIED" => guard.failed(peer, t, name, now),
        Err(_) => {}
    }
    r
}

/// Checks a name and password; returns the caller. An empty password never matches.
fn verify_password(st: &ApiState, t: AuthType, name: &str, pass: &str) -> Result<Caller, RpcError> {
    let denied = || RpcError::new("ACCESS_DENIED", "wrong username or password");
    if pass.is_empty() {
        return Err(denied());
    }
    match t {
        AuthType::Admin => {
            let mut ok = false;
            for a in &st.catalog.get().admins {
                // Every admin compared, in constant time: no early exit to time.
                ok |= constant_time_eq(a.name.as_bytes(), name.as_bytes())
                    & constant_time_eq(a.password.as_bytes(), pass.as_bytes());
            }
            if ok {
                Ok(Caller::Admin)
            } else {
                Err(denied())
            }
        }
        AuthType::NormalUser => {
            let db = st.db.lock().unwrap_or_else(|e| e.into_inner());
            let row: Option<(i64, Option<String>)> = db
                .query_row(
                    "SELECT user_id, password FROM users WHERE username = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            match row {
                Some((user_id, Some(pw))) if constant_time_eq(pw.as_bytes(), pass.as_bytes()) => {
                    Ok(Caller::User {
                        user_id,
                        username: name.to_string(),
                    })
                }
                _ => Err(denied()),
            }
        }
    }
}

pub(crate) fn db_err(e: rusqlite::Error) -> RpcError {
    tracing::error!(error = %e, "API ledger read failed");
    RpcError::new("INTERNAL_ERROR", "ledger read failed")
}

fn login(st: &ApiState, peer: IpAddr, p: &Map<String, Value>) -> RpcResult {
    let name = str_param(p, "login_auth_name")?;
    let pass = str_param(p, "login_auth_pass")?;
    let t = parse_auth_type(str_param(p, "login_auth_type")?)
        .ok_or_else(|| invalid("login_auth_type: expected ADMIN or NORMAL_USER"))?;
    let caller = check_password(st, peer, t, name, pass, Instant::now())?;
    if !p
        .get("create_session")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        return Ok(Value::Bool(true));
    }
    let token = auth::new_token().map_err(|e| {
        tracing::error!(error = %e, "the OS random source failed");
        RpcError::new(
            "INTERNAL_ERROR",
            "no session token could be made; try again",
        )
    })?;
    let user_id = match caller {
        Caller::User { user_id, .. } => Some(user_id),
        Caller::Admin => None,
    };
    st.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.clone(), t, name, user_id, peer, Instant::now());
    tracing::info!(user = %name, "API login");
    Ok(Value::String(token))
}

fn authenticate(st: &ApiState, peer: IpAddr, p: &Map<String, Value>) -> Result<Caller, RpcError> {
    let denied = |m: &str| RpcError::new("ACCESS_DENIED", m.to_string());
    let t = opt_str(p, "auth_type")
        .and_then(parse_auth_type)
        .ok_or_else(|| denied("auth_type must be ADMIN or NORMAL_USER"))?;
    let name = opt_str(p, "auth_name").ok_or_else(|| denied("auth_name missing"))?;
    if let Some(token) = opt_str(p, "auth_session") {
        let checked = st.sessions.lock().unwrap_or_else(|e| e.into_inner()).check(
            token,
            t,
            name,
            peer,
            Instant::now(),
        );
        let session = match checked {
            Ok(s) => s,
            Err(SessionError::Expired) => return Err(denied("session expired; log in again")),
            Err(SessionError::Invalid) => return Err(denied("invalid session")),
        };
        return match t {
            AuthType::Admin => Ok(Caller::Admin),
            AuthType::NormalUser => {
                let db = st.db.lock().unwrap_or_else(|e| e.into_inner());
                let id: Option<i64> = db
                    .query_row(
                        "SELECT user_id FROM users WHERE username = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                id.filter(|id| session.user_id == Some(*id))
                    .map(|user_id| Caller::User {
                        user_id,
                        username: name.to_string(),
                    })
                    .ok_or_else(|| denied("invalid session"))
            }
        };
    }
    let pass =
        opt_str(p, "auth_pass").ok_or_else(|| denied("auth_session or auth_pass required"))?;
    check_password(st, peer, t, name, pass, Instant::now())
}

/// Sends a command to the core and waits for its answer.
fn command<T>(
    st: &ApiState,
    make: impl FnOnce(crossbeam_channel::Sender<Result<T, CommandError>>) -> Command,
) -> Result<T, RpcError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    st.commands
        .send_timeout(make(tx), Duration::from_secs(10))
        .map_err(|_| RpcError::new("INTERNAL_ERROR", "the engine is not accepting commands"))?;
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| RpcError::new("INTERNAL_ERROR", "the engine did not answer"))?;
    r.map_err(|e| match e {
        CommandError::GroupNotFound(g) => RpcError::new(
            "GROUP_NOT_FOUND",
            format!("Group {} not found", truncate(&g)),
        ),
        CommandError::UsernameExists(m) => RpcError::new("NORMAL_USERNAME_EXISTS", m),
        CommandError::UserNotFound(id) => RpcError::new(
            "USER_ID_NOT_FOUND",
            format!("User with id {id} does not exist"),
        ),
        CommandError::Invalid(m) => invalid(m),
        CommandError::Ledger(m) => {
            tracing::error!(error = %m, "API command failed");
            RpcError::new("INTERNAL_ERROR", "the ledger refused the change")
        }
    })
}

fn add_new_users(st: &ApiState, p: &Map<String, Value>) -> RpcResult {
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
    let count = u32::try_from(count).map_err(|_| invalid("count: too large"))?;
    let ids = command(st, |reply| Command::AddUsers {
        count,
        group,
        credit,
        comment,
        reply,
    })?;
    Ok(json!(ids))
}

fn valid_username(u: &str) -> Result<(), RpcError> {
    if u.is_empty() || u.len() > 128 || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            "normal_username: 1 to 128 characters, no spaces or control characters",
        ));
    }
    Ok(())
}

/// Longest lock reason accepted (characters).
const MAX_LOCK_REASON: usize = 255;

/// What updateUserAttrs asks of the `lock` attribute.
enum LockChange {
    Keep,
    Lock(String),
    Unlock,
}

/// `attrs.lock` (a reason string; empty: "locked") and `to_del_attrs: ["lock"]`.
fn lock_change(p: &Map<String, Value>) -> Result<LockChange, RpcError> {
    let lock = match p.get("attrs").and_then(|a| a.get("lock")) {
        None => None,
        Some(Value::String(r)) if r.chars().count() > MAX_LOCK_REASON => {
            return Err(invalid(format!(
                "attrs.lock: a reason of at most {MAX_LOCK_REASON} characters"
            )))
        }
        Some(Value::String(r)) if r.trim().is_empty() => Some("locked".to_string()),
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => return Err(invalid("attrs.lock: expected a reason string")),
    };
    let unlock = match p.get("to_del_attrs") {
        None | Some(Value::Null) => false,
        Some(Value::Array(names)) => {
            let mut unlock = false;
            for n in names {
                match n.as_str() {
                    Some(name) => unlock |= name == "lock",
                    None => return Err(invalid("to_del_attrs: expected attribute names")),
                }
            }
            unlock
        }
        Some(_) => return Err(invalid("to_del_attrs: expected a list of attribute names")),
    };
    Ok(match (lock, unlock) {
        (Some(_), true) => {
            return Err(invalid(
                "lock: in attrs and in to_del_attrs at once; lock or unlock",
            ))
        }
        (Some(reason), false) => LockChange::Lock(reason),
        (None, true) => LockChange::Unlock,
        (None, false) => LockChange::Keep,
    })
}

/// IBSng's updateUserAttrs: `attrs.normal_user_spec` sets the username and password,
/// `attrs.lock` locks the user (its open sessions are disconnected), `to_del_attrs:
/// ["lock"]` unlocks it. Everything is checked before anything changes.
fn update_user_attrs(st: &ApiState, p: &Map<String, Value>) -> RpcResult {
    let ids = id_list(p, "user_id")?;
    let [user_id] = ids[..] else {
        return Err(invalid("user_id: exactly one user"));
    };
    let lock = lock_change(p)?;
    let spec = p
        .get("attrs")
        .and_then(|a| a.get("normal_user_spec"))
        .and_then(Value::as_object);
    let credentials = match spec {
        Some(spec) => {
            let username = str_param(spec, "normal_username")?.to_string();
            let password = str_param(spec, "normal_password")?.to_string();
            valid_username(&username)?;
            if password.is_empty() {
                return Err(invalid("normal_password: must not be empty"));
            }
            Some((username, password))
        }
        None if matches!(lock, LockChange::Keep) => {
            return Err(invalid(
                "attrs.normal_user_spec: missing (or attrs.lock, to_del_attrs: [\"lock\"])",
            ))
        }
        None => None,
    };
    if let Some((username, password)) = credentials {
        command(st, |reply| Command::SetCredentials {
            user_id,
            username,
            password,
            reply,
        })?;
        // Sessions made with the old credentials end.
        st.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoke_user(user_id);
    }
    let reason = match lock {
        LockChange::Keep => return Ok(Value::String(String::new())),
        LockChange::Lock(reason) => Some(reason),
        LockChange::Unlock => None,
    };
    command(st, |reply| Command::SetLock {
        user_id,
        reason,
        reply,
    })?;
    Ok(Value::String(String::new()))
}

fn change_credit(st: &ApiState, p: &Map<String, Value>) -> RpcResult {
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
    let ids = command(st, |reply| Command::ChangeCredit {
        user_ids,
        credit,
        change_type,
        comment,
        reply,
    })?;
    Ok(json!(ids))
}

fn renew(st: &ApiState, p: &Map<String, Value>) -> RpcResult {
    let user_ids = id_list(p, "user_id")?;
    command(st, |reply| Command::Renew { user_ids, reply })?;
    Ok(Value::Bool(true))
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

fn user_info(st: &ApiState, caller: &Caller, p: &Map<String, Value>) -> RpcResult {
    type Row = (
        i64,
        Option<String>,
        Option<String>,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
    );
    let cols = "user_id, username, password, group_name, isp_name, credit, created_at, first_login, real_first_login, status, lock_reason";
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
        ))
    };
    // A NORMAL_USER asking for anyone else gets the same answer whether that user exists
    // or not: user names are not to be learned here.
    if let Caller::User {
        user_id: me,
        username: my_name,
    } = caller
    {
        let other = match opt_str(p, "normal_username") {
            Some(name) => name != my_name,
            None if p.contains_key("user_id") => id_list(p, "user_id")? != [*me],
            None => false,
        };
        if other {
            return Err(RpcError::new(
                "ACCESS_DENIED",
                "a user may only read its own information",
            ));
        }
    }
    let (row, usage) = {
        let db = st.db.lock().unwrap_or_else(|e| e.into_inner());
        let row: Option<Row> = if let Some(name) = opt_str(p, "normal_username") {
            let r = db
                .query_row(
                    &format!("SELECT {cols} FROM users WHERE username = ?1"),
                    [name],
                    map,
                )
                .optional()
                .map_err(db_err)?;
            if r.is_none() {
                return Err(RpcError::new(
                    "NORMAL_USERNAME_DOESNT_EXISTS",
                    format!(
                        "User with Internet username {} does not exists",
                        truncate(name)
                    ),
                ));
            }
            r
        } else if p.contains_key("user_id") {
            let ids = id_list(p, "user_id")?;
            let r = db
                .query_row(
                    &format!("SELECT {cols} FROM users WHERE user_id = ?1"),
                    [ids[0]],
                    map,
                )
                .optional()
                .map_err(db_err)?;
            if r.is_none() {
                return Err(RpcError::new(
                    "USER_ID_NOT_FOUND",
                    format!("User with id {} does not exist", ids[0]),
                ));
            }
            r
        } else {
            return Err(invalid("normal_username or user_id required"));
        };
        let row = row.expect("checked above");
        let mut st2 = db.prepare("SELECT rule, credit, seconds, bytes FROM rule_usage WHERE user_id = ?1 ORDER BY rule").map_err(db_err)?;
        let usage: Vec<(String, String, i64, i64)> = st2
            .query_map([row.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        (row, usage)
    };
    let (
        user_id,
        username,
        password,
        group_name,
        isp_name,
        credit,
        created_at,
        first_login,
        real_first_login,
        status,
        lock_reason,
    ) = row;
    if let Caller::User { user_id: me, .. } = caller {
        if *me != user_id {
            return Err(RpcError::new(
                "ACCESS_DENIED",
                "a user may only read its own information",
            ));
        }
    }
    let cat = &*st.catalog.get();
    let credit: Decimal = credit.parse().unwrap_or_default();
    let group_id = cat
        .group_index(&group_name)
        .map(|g| cat.groups[g].id)
        .unwrap_or(0);
    let username = username.unwrap_or_default();
    let online: Vec<ratel_engine::serve::OnlineSession> = st
        .live
        .online
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&username)
        .cloned()
        .unwrap_or_default();
    let charge_rule_usage: Vec<Value> = usage
        .iter()
        .map(|(rule, credit, secs, bytes)| {
            let id = cat
                .charge_rules
                .iter()
                .find(|r| &r.name == rule)
                .map(|r| r.id)
                .unwrap_or(0);
            let credit = credit
                .parse::<Decimal>()
                .map(|d| d.normalize().to_string())
                .unwrap_or_else(|_| credit.clone());
            json!([id, rule, credit, secs.to_string(), bytes.to_string()])
        })
        .collect();
    let internet_onlines: Vec<Value> = online
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
    if matches!(caller, Caller::Admin) {
        attrs.insert(
            "normal_password".into(),
            json!(password.unwrap_or_default()),
        );
    }
    if let Some(t) = real_first_login {
        attrs.insert("real_first_login".into(), json!(fmt_time(cat, t)));
    }
    if let Some(t) = first_login {
        attrs.insert("first_login".into(), json!(fmt_time(cat, t)));
    }
    attrs.insert("charge_rule_usage".into(), Value::Array(charge_rule_usage));
    // As IBSng shows it: the `lock` attribute, with its reason, only while locked.
    if let Some(reason) = lock_reason {
        attrs.insert("lock".into(), json!(reason));
    }
    let info = json!({
        "online_status": !online.is_empty(),
        "basic_info": {
            "status": status,
            "group_name": group_name,
            "isp_name": isp_name,
            "creation_date": fmt_time(cat, created_at),
            "recharge_deposit": 0,
            "user_id": user_id,
            "nearest_exp_date": "",
            "credit": money(credit),
            "deposit": 0,
            "isp_id": 0,
            "group_id": group_id,
        },
        "user_repr": username,
        "attrs": attrs,
        "voip_onlines": [],
        "internet_onlines": internet_onlines,
    });
    let mut out = Map::new();
    out.insert(user_id.to_string(), info);
    Ok(Value::Object(out))
}

/// Starts the API on its own thread with a small tokio runtime; it stops when `shutdown` is
/// set. `listener` is bound by the caller (so it can print the address first).
pub fn spawn(
    listener: std::net::TcpListener,
    catalog: Arc<CatalogCell>,
    live: Arc<Live>,
    commands: crossbeam_channel::Sender<Command>,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let state = Arc::new(ApiState::new(catalog, live, commands).map_err(std::io::Error::other)?);
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "API runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "API listener failed");
                        return;
                    }
                };
                let stop = async move {
                    while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                if let Err(e) = run(listener, state, stop).await {
                    tracing::error!(error = %e, "API server failed");
                }
            });
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
