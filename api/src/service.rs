//! The service layer every API dialect calls (DESIGN.md Part 2, "API architecture"): typed
//! requests and results, one error enum, authentication and the `allow` checks, reads
//! through the ledger's read trait and the core's published live state, and writes as
//! commands to the serve core (so every credit movement is ordered in one place). A
//! dialect translates its wire shapes into these calls and their results and errors back;
//! rules live here, once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratel_engine::commands::{
    ChangeType, Command, CommandError, ImportOutcome, ImportRow, RefundOutcome,
};
use ratel_engine::domain::{Account, ClientChange, Company, JournalKind, NewClient};
use ratel_engine::ledger::{
    ClientRecord, JournalEntry, LedgerError, LedgerRead, Reader, RuleUsage,
};
use ratel_engine::packages::{ClientPackage, PackageOp};
use ratel_engine::reload::CatalogCell;
use ratel_engine::serve::{Live, OnlineSession};
use rust_decimal::Decimal;

use crate::auth::{self, constant_time_eq, AuthType, LoginGuard, SessionError, Sessions};
use crate::report::Filter;

/// Why a call failed; each dialect writes it in its own error form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// Not logged in, wrong credentials, or not allowed to call this.
    AccessDenied(String),
    /// Too many failed logins from this address or for this name.
    AuthLocked { retry_secs: u64 },
    /// A user (by id), a username, a group, a company or a session that does not exist.
    NotFound { what: NotFound, message: String },
    /// A username, account or company name that is taken.
    Exists(String),
    /// A request the rules refuse (bad value, nothing to change, out of range).
    Invalid(String),
    /// A part of the engine that is not running (the Disconnect-Request sender).
    NotReady(String),
    /// A veto hook forbade the change (its reason).
    Vetoed(String),
    /// Something failed inside (logged); the caller may retry.
    Internal(String),
}

/// What was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    UserId,
    Username,
    Group,
    Company,
    Session,
    Other,
}

impl ServiceError {
    pub fn invalid(m: impl Into<String>) -> Self {
        ServiceError::Invalid(m.into())
    }
    pub fn denied(m: impl Into<String>) -> Self {
        ServiceError::AccessDenied(m.into())
    }
    pub fn user_not_found(id: i64) -> Self {
        ServiceError::NotFound {
            what: NotFound::UserId,
            message: format!("User with id {id} does not exist"),
        }
    }
    /// The human message, without a code.
    pub fn message(&self) -> String {
        match self {
            ServiceError::AccessDenied(m)
            | ServiceError::Exists(m)
            | ServiceError::Invalid(m)
            | ServiceError::NotReady(m)
            | ServiceError::Vetoed(m)
            | ServiceError::Internal(m) => m.clone(),
            ServiceError::NotFound { message, .. } => message.clone(),
            ServiceError::AuthLocked { retry_secs } => format!(
                "too many failed logins from this address or for this name; try again in {retry_secs} s"
            ),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin { name: String },
    User { user_id: i64, username: String },
}

impl Caller {
    /// The name journal rows and the client log record.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin { name } => name.clone(),
            Caller::User { username, .. } => format!("user:{username}"),
        }
    }
}

/// A client with everything the dialects show of it.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub record: ClientRecord,
    pub accounts: Vec<Account>,
    pub profile: Vec<(String, String)>,
    pub rule_usage: Vec<RuleUsage>,
    pub online: Vec<OnlineSession>,
    /// Packages not closed (assigned, active, deactivated), by id.
    pub packages: Vec<ClientPackage>,
}

/// How a call names a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRef {
    Id(i64),
    Username(String),
}

/// Usage of one service over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub count: u64,
    pub seconds: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost: Decimal,
}

/// A client's account over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub opening_balance: Decimal,
    pub closing_balance: Decimal,
    pub payments: Decimal,
    /// Usage charges (positive).
    pub charges: Decimal,
    pub package_fees: Decimal,
    pub refunds: Decimal,
    pub calls: Usage,
    pub internet: Usage,
}

/// Most xDRs one cancellation may refund (a larger range is cancelled in parts).
pub const MAX_REFUND_ROWS: usize = 1_000_000;
/// Most journal rows one history call returns.
pub const MAX_JOURNAL_ROWS: usize = 100_000;

/// The shared state of every dialect.
pub struct Service {
    /// The running config (a reload replaces it: take one snapshot per use).
    pub catalog: Arc<CatalogCell>,
    pub live: Arc<Live>,
    commands: crossbeam_channel::Sender<Command>,
    ledger: Mutex<Box<dyn LedgerRead>>,
    pub(crate) xdr_root: PathBuf,
    sessions: Mutex<Sessions>,
    /// Lockout of failed logins per IP and per name.
    guard: Mutex<LoginGuard>,
    /// Footers (with page index) of xDR files already read by reports.
    pub(crate) meta_cache:
        Mutex<HashMap<PathBuf, parquet::arrow::arrow_reader::ArrowReaderMetadata>>,
}

fn ledger_failed(e: LedgerError) -> ServiceError {
    tracing::error!(error = %e, "API ledger read failed");
    ServiceError::Internal("ledger read failed".into())
}

fn command_error(e: CommandError) -> ServiceError {
    match e {
        CommandError::GroupNotFound(g) => ServiceError::NotFound {
            what: NotFound::Group,
            message: format!("Group {} not found", g.chars().take(64).collect::<String>()),
        },
        CommandError::Exists(m) => ServiceError::Exists(m),
        CommandError::UserNotFound(id) => ServiceError::user_not_found(id),
        CommandError::NotFound(m) if m.starts_with("no company") => ServiceError::NotFound {
            what: NotFound::Company,
            message: m,
        },
        CommandError::NotFound(m) => ServiceError::NotFound {
            what: NotFound::Other,
            message: m,
        },
        CommandError::Invalid(m) => ServiceError::Invalid(m),
        CommandError::Ledger(m) => {
            tracing::error!(error = %m, "API command failed");
            ServiceError::Internal("the ledger refused the change".into())
        }
    }
}

impl Service {
    /// Opens a read-only ledger reader (the core must have created the ledger).
    pub fn new(
        cell: Arc<CatalogCell>,
        live: Arc<Live>,
        commands: crossbeam_channel::Sender<Command>,
    ) -> Result<Self, LedgerError> {
        let catalog = cell.get();
        let reader = Reader::open(&catalog.data_dir)?;
        Ok(Service {
            xdr_root: catalog.data_dir.join("xdr"),
            live,
            commands,
            ledger: Mutex::new(Box::new(reader)),
            sessions: Mutex::new(Sessions::new(
                Duration::from_secs(catalog.session_idle_secs),
                auth::SESSION_MAX_AGE,
                auth::MAX_SESSIONS,
            )),
            guard: Mutex::new(LoginGuard::default()),
            meta_cache: Mutex::new(HashMap::new()),
            catalog: cell,
        })
    }

    /// Runs `f` on the ledger reader.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&dyn LedgerRead) -> Result<T, LedgerError>,
    ) -> ServiceResult<T> {
        let l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        f(l.as_ref()).map_err(ledger_failed)
    }

    /// Depth of the command queue (for `/metrics`).
    pub fn commands_waiting(&self) -> usize {
        self.commands.len()
    }

    /// Sends a command to the core and waits for its answer.
    fn command<T>(
        &self,
        make: impl FnOnce(crossbeam_channel::Sender<Result<T, CommandError>>) -> Command,
    ) -> ServiceResult<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send_timeout(make(tx), Duration::from_secs(10))
            .map_err(|_| ServiceError::Internal("the engine is not accepting commands".into()))?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| ServiceError::Internal("the engine did not answer".into()))?
            .map_err(command_error)
    }

    // ---- authentication and permissions -------------------------------------------------

    /// Checks a name and password from `peer`, under the login guard: a locked-out IP or
    /// name is refused before any compare, and a wrong password counts against both.
    pub fn login(
        &self,
        peer: IpAddr,
        t: AuthType,
        name: &str,
        pass: &str,
    ) -> ServiceResult<Caller> {
        let now = Instant::now();
        if let Err(left) = self
            .guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(peer, t, name, now)
        {
            return Err(ServiceError::AuthLocked {
                retry_secs: left.as_secs().max(1),
            });
        }
        let r = self.verify_password(t, name, pass);
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Ok(_) => guard.succeeded(t, name),
            Err(ServiceError::AccessDenied(_)) => guard.failed(peer, t, name, now),
            Err(_) => {}
        }
        r
    }

    /// Checks a name and password; an empty password never matches. A client logs in with
    /// its username; locked, archived and deleted clients cannot.
    fn verify_password(&self, t: AuthType, name: &str, pass: &str) -> ServiceResult<Caller> {
        let denied = || ServiceError::denied("wrong username or password");
        if pass.is_empty() {
            return Err(denied());
        }
        match t {
            AuthType::Admin => {
                let mut ok = false;
                for a in &self.catalog.get().admins {
                    // Every admin compared, in constant time: no early exit to time.
                    ok |= constant_time_eq(a.name.as_bytes(), name.as_bytes())
                        & constant_time_eq(a.password.as_bytes(), pass.as_bytes());
                }
                if ok {
                    Ok(Caller::Admin {
                        name: name.to_string(),
                    })
                } else {
                    Err(denied())
                }
            }
            AuthType::NormalUser => {
                let c = self.read(|l| l.client_by_username(name))?;
                match c {
                    Some(c)
                        if c.password
                            .as_deref()
                            .is_some_and(|pw| constant_time_eq(pw.as_bytes(), pass.as_bytes())) =>
                    {
                        Ok(Caller::User {
                            user_id: c.user_id,
                            username: name.to_string(),
                        })
                    }
                    _ => Err(denied()),
                }
            }
        }
    }

    /// A new API session for a caller that just logged in: its token.
    pub fn open_session(
        &self,
        caller: &Caller,
        t: AuthType,
        name: &str,
        peer: IpAddr,
    ) -> ServiceResult<String> {
        let token = auth::new_token().map_err(|e| {
            tracing::error!(error = %e, "the OS random source failed");
            ServiceError::Internal("no session token could be made; try again".into())
        })?;
        let user_id = match caller {
            Caller::User { user_id, .. } => Some(*user_id),
            Caller::Admin { .. } => None,
        };
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), t, name, user_id, peer, Instant::now());
        tracing::info!(user = %name, "API login");
        Ok(token)
    }

    /// The caller of a session token. A client's session is bound to its user id: a
    /// rename (or another client taking the name) ends it.
    pub fn session_caller(
        &self,
        token: &str,
        t: AuthType,
        name: &str,
        peer: IpAddr,
    ) -> ServiceResult<Caller> {
        let checked = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(token, t, name, peer, Instant::now());
        let session = match checked {
            Ok(s) => s,
            Err(SessionError::Expired) => {
                return Err(ServiceError::denied("session expired; log in again"))
            }
            Err(SessionError::Invalid) => return Err(ServiceError::denied("invalid session")),
        };
        match t {
            AuthType::Admin => Ok(Caller::Admin {
                name: name.to_string(),
            }),
            AuthType::NormalUser => {
                let c = self.read(|l| l.client_by_username(name))?;
                c.filter(|c| session.user_id == Some(c.user_id))
                    .map(|c| Caller::User {
                        user_id: c.user_id,
                        username: name.to_string(),
                    })
                    .ok_or_else(|| ServiceError::denied("invalid session"))
            }
        }
    }

    /// The admin of a session token sent alone (VCS `SID`: no name beside it). The session
    /// must be an admin's, alive, and used from the IP it was opened from; an admin removed
    /// from the config since is refused.
    pub fn session_admin(&self, token: &str, peer: IpAddr) -> ServiceResult<Caller> {
        let checked = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_token(token, AuthType::Admin, peer, Instant::now());
        let session = match checked {
            Ok(s) => s,
            Err(SessionError::Expired) => {
                return Err(ServiceError::denied("session expired; log in again"))
            }
            Err(SessionError::Invalid) => return Err(ServiceError::denied("invalid session")),
        };
        if !self
            .catalog
            .get()
            .admins
            .iter()
            .any(|a| a.name == session.name)
        {
            return Err(ServiceError::denied("the session's admin no longer exists"));
        }
        Ok(Caller::Admin { name: session.name })
    }

    /// Whether `caller` may call `method` (named as the calling dialect names it): an
    /// admin within its `allow` patterns, a client only where the dialect lets clients in
    /// (`client_may`).
    pub fn allow(&self, caller: &Caller, method: &str, client_may: bool) -> ServiceResult<()> {
        match caller {
            Caller::Admin { name } => {
                let cat = self.catalog.get();
                let ok = cat
                    .admins
                    .iter()
                    .find(|a| &a.name == name)
                    .is_some_and(|a| a.may_call(method));
                if ok {
                    Ok(())
                } else {
                    Err(ServiceError::denied(format!(
                        "{method} is not in this admin's allow list"
                    )))
                }
            }
            Caller::User { .. } if client_may => Ok(()),
            Caller::User { .. } => Err(ServiceError::denied("this method needs an ADMIN login")),
        }
    }

    // ---- clients ------------------------------------------------------------------------

    /// One client as its owner or an admin sees it. A client asking for anyone else is
    /// refused the same way whether that one exists or not.
    pub fn client(&self, caller: &Caller, r: &ClientRef) -> ServiceResult<ClientView> {
        if let Caller::User { user_id, username } = caller {
            let mine = match r {
                ClientRef::Id(id) => id == user_id,
                ClientRef::Username(n) => n == username,
            };
            if !mine {
                return Err(ServiceError::denied(
                    "a user may only read its own information",
                ));
            }
        }
        let record = match r {
            ClientRef::Id(id) => self
                .read(|l| l.client(*id))?
                .ok_or_else(|| ServiceError::user_not_found(*id))?,
            ClientRef::Username(n) => {
                self.read(|l| l.client_by_username(n))?
                    .ok_or_else(|| ServiceError::NotFound {
                        what: NotFound::Username,
                        message: format!(
                            "User with Internet username {} does not exists",
                            n.chars().take(64).collect::<String>()
                        ),
                    })?
            }
        };
        if let Caller::User { user_id, .. } = caller {
            if *user_id != record.user_id {
                return Err(ServiceError::denied(
                    "a user may only read its own information",
                ));
            }
        }
        let id = record.user_id;
        let (accounts, profile, rule_usage, packages) = self.read(|l| {
            Ok((
                l.accounts_of(id)?,
                l.profile_of(id)?,
                l.rule_usage(id)?,
                l.client_packages(id, false)?,
            ))
        })?;
        let online = self
            .live
            .online
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default();
        Ok(ClientView {
            record,
            accounts,
            profile,
            rule_usage,
            online,
            packages,
        })
    }

    /// The client an account belongs to.
    pub fn client_of_account(&self, a: &Account) -> ServiceResult<Option<i64>> {
        self.read(|l| l.client_of_account(a))
    }

    pub fn create_clients(
        &self,
        caller: &Caller,
        mut clients: Vec<NewClient>,
    ) -> ServiceResult<Vec<i64>> {
        if self.has_veto_hooks() {
            for c in &mut clients {
                self.veto_new(c)?;
            }
        }
        let actor = caller.actor();
        self.command(|reply| Command::AddClients {
            clients,
            actor,
            reply,
        })
    }

    /// Changes one client as a whole. New credentials end the client's API sessions.
    pub fn update_client(
        &self,
        caller: &Caller,
        user_id: i64,
        mut change: ClientChange,
    ) -> ServiceResult<()> {
        if self.has_veto_hooks() {
            let current = self.client(
                &Caller::Admin {
                    name: String::new(),
                },
                &ClientRef::Id(user_id),
            )?;
            let client = client_json(&current);
            let changes = change_json(&change);
            let mut names = vec!["clients.update"];
            if change.archived == Some(true) {
                names.push("clients.archive");
            }
            if !change.profile.is_empty() {
                names.push("clients.custom_fields_update");
            }
            if !change.add_accounts.is_empty() {
                names.push("accounts.create");
            }
            if !change.remove_accounts.is_empty() {
                names.push("accounts.delete");
            }
            for name in names {
                for data in self.veto(name, client.clone(), Some(changes.clone()))? {
                    apply_change(&mut change, &data)?;
                }
            }
        }
        let new_credentials = change.credentials.is_some();
        let actor = caller.actor();
        self.command(|reply| Command::UpdateClient {
            user_id,
            change,
            actor,
            reply,
        })?;
        if new_credentials {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .revoke_user(user_id);
        }
        Ok(())
    }

    /// Deletes clients: they vanish from every lookup; their history stays.
    pub fn delete_clients(
        &self,
        caller: &Caller,
        user_ids: Vec<i64>,
        comment: String,
    ) -> ServiceResult<()> {
        if self.has_veto_hooks() {
            for id in &user_ids {
                let current = self.client(
                    &Caller::Admin {
                        name: String::new(),
                    },
                    &ClientRef::Id(*id),
                )?;
                self.veto("clients.delete", client_json(&current), None)?;
            }
        }
        let actor = caller.actor();
        let ids = user_ids.clone();
        self.command(|reply| Command::DeleteClients {
            user_ids,
            comment,
            actor,
            reply,
        })?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            s.revoke_user(id);
        }
        Ok(())
    }

    /// Changes credits (`payment` journal rows); returns the journal ids.
    pub fn change_credit(
        &self,
        caller: &Caller,
        user_ids: Vec<i64>,
        credit: Decimal,
        change_type: ChangeType,
        comment: String,
    ) -> ServiceResult<Vec<i64>> {
        ratel_engine::users::check_credit(credit)
            .map_err(|r| ServiceError::invalid(format!("credit: {r}")))?;
        let actor = caller.actor();
        self.command(|reply| Command::ChangeCredit {
            user_ids,
            credit,
            change_type,
            comment,
            actor,
            reply,
        })
    }

    /// IBSng renewUsers: every package of each user is renewed now (its fee taken; refused
    /// for a user whose credit does not cover the fees), then the service period restarts.
    pub fn renew(&self, caller: &Caller, user_ids: Vec<i64>, comment: String) -> ServiceResult<()> {
        let actor = caller.actor();
        // Asked first for every client; the core then renews the packages of all of them
        // or none, in the step that restarts their service period.
        self.package_allowed(
            caller,
            &PackageOp::RenewClients {
                user_ids: user_ids.clone(),
            },
        )?;
        self.command(|reply| Command::Renew {
            user_ids,
            comment,
            actor,
            reply,
        })
    }

    /// A part of a bulk import (see `ratel_engine::users::parse_import`).
    pub fn import(
        &self,
        caller: &Caller,
        mut rows: Vec<ImportRow>,
    ) -> ServiceResult<ImportOutcome> {
        // Veto hooks are asked about every line, as about any new client; a line they
        // forbid is a refused line, not a failed import.
        let mut vetoed = Vec::new();
        if self.has_veto_hooks() {
            rows.retain_mut(|r| match self.veto_new(&mut r.client) {
                Ok(()) => true,
                Err(e) => {
                    vetoed.push((r.line, format!("line: {}", e.message())));
                    false
                }
            });
        }
        let actor = caller.actor();
        let mut out = if rows.is_empty() {
            ImportOutcome::default()
        } else {
            self.command(|reply| Command::ImportClients { rows, actor, reply })?
        };
        out.refused.extend(vetoed);
        out.refused.sort_by_key(|(line, _)| *line);
        Ok(out)
    }

    // ---- companies ----------------------------------------------------------------------

    pub fn companies(&self) -> ServiceResult<Vec<Company>> {
        self.read(|l| l.companies())
    }

    pub fn add_company(
        &self,
        name: String,
        kind: i64,
        prepaid: bool,
        credit: Decimal,
    ) -> ServiceResult<i64> {
        if name.trim().is_empty()
            || name.chars().count() > 128
            || name.chars().any(char::is_control)
        {
            return Err(ServiceError::invalid(
                "company name: 1 to 128 characters, no control characters",
            ));
        }
        self.command(|reply| Command::AddCompany {
            name,
            kind,
            prepaid,
            credit,
            reply,
        })
    }

    pub fn update_company(
        &self,
        id: i64,
        name: Option<String>,
        kind: Option<i64>,
        prepaid: Option<bool>,
        credit: Option<Decimal>,
    ) -> ServiceResult<()> {
        self.command(|reply| Command::UpdateCompany {
            id,
            name,
            kind,
            prepaid,
            credit,
            reply,
        })
    }

    // ---- money history and refunds ------------------------------------------------------

    /// A client's journal rows over `[from, to)` of the given kinds (all when empty).
    pub fn journal(
        &self,
        caller: &Caller,
        user_id: i64,
        from: Option<i64>,
        to: Option<i64>,
        kinds: &[JournalKind],
    ) -> ServiceResult<Vec<JournalEntry>> {
        if let Caller::User { user_id: me, .. } = caller {
            if *me != user_id {
                return Err(ServiceError::denied("a user may only read its own history"));
            }
        }
        if self.read(|l| l.client(user_id))?.is_none() {
            return Err(ServiceError::user_not_found(user_id));
        }
        self.read(|l| l.journal(user_id, from, to, kinds, MAX_JOURNAL_ROWS))
    }

    /// Cancels a client's usage charges whose xDR logout time is in `[from, to)` and that
    /// were not refunded before (DESIGN.md "Charge cancellation"); idempotent.
    pub fn cancel_charges(
        &self,
        caller: &Caller,
        user_id: i64,
        from: i64,
        to: i64,
        comment: String,
    ) -> ServiceResult<RefundOutcome> {
        if to <= from {
            return Err(ServiceError::invalid(
                "the range is empty: to must be after from",
            ));
        }
        if self.read(|l| l.client(user_id))?.is_none() {
            return Err(ServiceError::user_not_found(user_id));
        }
        let filter = Filter {
            user_ids: Some(vec![user_id]),
            logout_from: Some(from),
            logout_to: Some(to - 1),
            ..Default::default()
        };
        let mut candidates = self.xdrs_matching(&filter, MAX_REFUND_ROWS + 1)?;
        candidates.retain(|x| {
            x.refund_of.is_none() && x.status != "REFUND" && x.credit_used > Decimal::ZERO
        });
        if candidates.len() > MAX_REFUND_ROWS {
            return Err(ServiceError::invalid(format!(
                "more than {MAX_REFUND_ROWS} charges in that range; cancel it in parts"
            )));
        }
        let actor = caller.actor();
        let out = self.command(|reply| Command::CancelCharges {
            user_id,
            candidates,
            comment,
            actor,
            reply,
        })?;
        if out.refunded > 0 {
            tracing::info!(user_id, refunded = out.refunded, amount = %out.amount, "charges cancelled");
        }
        Ok(out)
    }

    // ---- packages ---------------------------------------------------------------------

    /// A client's packages (closed ones too when `closed`), by id.
    pub fn client_packages(&self, user_id: i64, closed: bool) -> ServiceResult<Vec<ClientPackage>> {
        if self.read(|l| l.client(user_id))?.is_none() {
            return Err(ServiceError::user_not_found(user_id));
        }
        self.read(|l| l.client_packages(user_id, closed))
    }

    /// One client package by id (closed ones too).
    pub fn client_package(&self, id: i64) -> ServiceResult<ClientPackage> {
        self.read(|l| l.client_package(id))?
            .ok_or_else(|| ServiceError::NotFound {
                what: NotFound::Other,
                message: format!("no client package with id {id}"),
            })
    }

    /// Assigns, activates, renews, deactivates or closes client packages (DESIGN.md Part 2
    /// "Packages and expiry"); veto hooks taking `clients_packages.<action>` are asked
    /// first. Answers the packages as the operation left them.
    pub fn packages(&self, caller: &Caller, op: PackageOp) -> ServiceResult<Vec<ClientPackage>> {
        self.package_allowed(caller, &op)?;
        let actor = caller.actor();
        self.command(|reply| Command::Package { op, actor, reply })
    }

    /// Whether `caller` may run `op` on its client(s), veto hooks asked.
    fn package_allowed(&self, caller: &Caller, op: &PackageOp) -> ServiceResult<()> {
        if let PackageOp::RenewClients { user_ids } = op {
            for &user_id in user_ids {
                self.package_allowed_for(caller, "clients_packages.renew", user_id, None)?;
            }
            return Ok(());
        }
        let (event, user_id, package) = match op {
            PackageOp::Assign { user_id, package } => {
                let cat = self.catalog.get();
                if cat.package(package).is_none() {
                    let names: Vec<&str> = cat.packages.iter().map(|p| p.name.as_str()).collect();
                    return Err(ServiceError::invalid(format!(
                        "package: {package:?} is not a package of the config (there are: {})",
                        names.join(", ")
                    )));
                }
                let p = serde_json::json!({"id_clients_packages": null, "id_clients": user_id, "package": package, "status": "assigned"});
                ("clients_packages.assign", *user_id, Some(p))
            }
            PackageOp::RenewClients { .. } => unreachable!("handled above"),
            PackageOp::Activate { id, .. }
            | PackageOp::Deactivate { id }
            | PackageOp::Renew { id }
            | PackageOp::Close { id } => {
                let p = self.client_package(*id)?;
                let event = match op {
                    PackageOp::Activate { .. } => "clients_packages.activate",
                    PackageOp::Deactivate { .. } => "clients_packages.deactivate",
                    PackageOp::Renew { .. } => "clients_packages.renew",
                    _ => "clients_packages.close",
                };
                (
                    event,
                    p.user_id,
                    Some(ratel_engine::ledger::package_json(&p)),
                )
            }
        };
        self.package_allowed_for(caller, event, user_id, package)
    }

    fn package_allowed_for(
        &self,
        caller: &Caller,
        event: &str,
        user_id: i64,
        package: Option<serde_json::Value>,
    ) -> ServiceResult<()> {
        let current = self.client(caller, &ClientRef::Id(user_id))?;
        let hooks_want = {
            let cat = self.catalog.get();
            cat.hooks
                .iter()
                .any(|h| h.mode == ratel_engine::events::Mode::Veto && h.wants(event))
        };
        if hooks_want {
            self.veto_with(event, client_json(&current), None, package)?;
        }
        Ok(())
    }

    // ---- online sessions ----------------------------------------------------------------

    /// Every open RADIUS session (each carries its User-Name and client).
    pub fn online(&self) -> Vec<OnlineSession> {
        let online = self.live.online.read().unwrap_or_else(|e| e.into_inner());
        online.values().flatten().cloned().collect()
    }

    /// Disconnect-Requests for the open session(s) `session_id` (optionally of one
    /// User-Name): where each was sent.
    pub fn disconnect(
        &self,
        session_id: &str,
        username: Option<&str>,
    ) -> ServiceResult<Vec<(OnlineSession, std::net::SocketAddr)>> {
        let Some(handle) = self.live.disconnect.get() else {
            return Err(ServiceError::NotReady(
                "the Disconnect-Request sender is not running".into(),
            ));
        };
        let targets: Vec<OnlineSession> = self
            .online()
            .into_iter()
            .filter(|o| o.session_id == session_id && username.is_none_or(|u| u == o.username))
            .collect();
        if targets.is_empty() {
            return Err(ServiceError::NotFound {
                what: NotFound::Session,
                message: format!("no open session {session_id:?}"),
            });
        }
        let cat = self.catalog.get();
        let now = chrono::Utc::now().timestamp();
        let mut sent = Vec::new();
        for o in targets {
            let to = handle
                .session(&cat, &o.username, &o, now)
                .map_err(ServiceError::NotReady)?;
            sent.push((o, to));
        }
        Ok(sent)
    }

    // ---- provisioning events ------------------------------------------------------------

    fn has_veto_hooks(&self) -> bool {
        self.catalog
            .get()
            .hooks
            .iter()
            .any(|h| h.mode == ratel_engine::events::Mode::Veto)
    }

    /// Asks every veto hook taking `event` (DESIGN.md "Events": `event_id` null, called
    /// before the change commits). A refusal, a non-2xx answer, a timeout or an answer
    /// that is not `{"allow": true, ...}` forbids the change with the hook's reason; the
    /// `data` objects of the hooks that allowed it are returned, in hook order, to rewrite
    /// the proposed values.
    fn veto(
        &self,
        event: &str,
        client: serde_json::Value,
        changes: Option<serde_json::Value>,
    ) -> ServiceResult<Vec<serde_json::Map<String, serde_json::Value>>> {
        self.veto_with(event, client, changes, None)
    }

    /// [`Service::veto`] with the package the change is about.
    fn veto_with(
        &self,
        event: &str,
        client: serde_json::Value,
        changes: Option<serde_json::Value>,
        package: Option<serde_json::Value>,
    ) -> ServiceResult<Vec<serde_json::Map<String, serde_json::Value>>> {
        let cat = self.catalog.get();
        let hooks: Vec<&ratel_engine::events::Hook> = cat
            .hooks
            .iter()
            .filter(|h| h.mode == ratel_engine::events::Mode::Veto && h.wants(event))
            .collect();
        if hooks.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::json!({
            "event_id": null,
            "event": event,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "client": client,
            "account": null,
            "package": package,
            "changes": changes,
            "balance": null,
        })
        .to_string();
        let mut rewrites = Vec::new();
        for h in hooks {
            let forbid = |why: String| {
                tracing::info!(hook = %h.name, event, reason = %why, "a veto hook forbade the change");
                ServiceError::Vetoed(format!("forbidden by hook {}: {why}", h.name))
            };
            let reply = ratel_engine::events::call(h, &body, None).map_err(forbid)?;
            if !reply.ok() {
                return Err(forbid(format!("the handler answered {}", reply.status)));
            }
            let v: serde_json::Value = serde_json::from_str(reply.body.trim())
                .map_err(|_| forbid("the handler's answer is not JSON".into()))?;
            if v.get("allow").and_then(serde_json::Value::as_bool) != Some(true) {
                let reason: String = v
                    .get("reason")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("no reason given")
                    .chars()
                    .take(512)
                    .collect();
                return Err(forbid(reason));
            }
            if let Some(serde_json::Value::Object(d)) = v.get("data") {
                rewrites.push(d.clone());
            }
        }
        Ok(rewrites)
    }

    /// Asks the veto hooks about a proposed new client; applies their rewrites.
    fn veto_new(&self, c: &mut NewClient) -> ServiceResult<()> {
        let proposed = serde_json::json!({
            "id_clients": null,
            "username": c.username,
            "group": c.group,
            "company": c.company,
            "balance": c.credit.to_string(),
            "status": "active",
            "accounts": c.accounts.iter().map(Account::label).collect::<Vec<_>>(),
            "profile": c.profile.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        for data in self.veto("clients.create", proposed, None)? {
            apply_new(c, &data)?;
        }
        Ok(())
    }

    /// Provisioning events after `after`, with their delivery state per notify hook.
    pub fn events(
        &self,
        after: i64,
        limit: usize,
    ) -> ServiceResult<Vec<ratel_engine::ledger::EventView>> {
        let cat = self.catalog.get();
        self.read(|l| l.events(after, limit.min(10_000), &cat.hooks))
    }

    // ---- lookups, summaries, operator SQL ----------------------------------------------

    /// The client whose profile `email` is `email`.
    pub fn client_by_email(&self, caller: &Caller, email: &str) -> ServiceResult<ClientView> {
        let c = self
            .read(|l| l.client_by_profile("email", email))?
            .ok_or_else(|| ServiceError::NotFound {
                what: NotFound::Other,
                message: format!(
                    "no subscriber with email {:?}",
                    email.chars().take(64).collect::<String>()
                ),
            })?;
        self.client(caller, &ClientRef::Id(c.user_id))
    }

    /// Clients of a group (a tariff plan), at most `limit`, with their profiles.
    pub fn clients_in_group(&self, group: &str, limit: usize) -> ServiceResult<Vec<ClientView>> {
        let cat = self.catalog.get();
        if cat.group_index(group).is_none() {
            return Err(ServiceError::NotFound {
                what: NotFound::Group,
                message: format!(
                    "Group {} not found",
                    group.chars().take(64).collect::<String>()
                ),
            });
        }
        let records = self.read(|l| l.clients_in_group(group, limit))?;
        let admin = Caller::Admin {
            name: String::new(),
        };
        records
            .into_iter()
            .map(|r| self.client(&admin, &ClientRef::Id(r.user_id)))
            .collect()
    }

    /// Clients with a session open on the NAS `nas` (its configured name, or the
    /// NAS-Identifier / IP of a NAS behind a proxy), by id.
    pub fn clients_on_nas(&self, nas: &str) -> ServiceResult<Vec<ClientView>> {
        let mut ids: Vec<i64> = self
            .online()
            .into_iter()
            .filter(|o| o.nas == nas || o.nas_key == nas)
            .filter_map(|o| o.user_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let admin = Caller::Admin {
            name: String::new(),
        };
        ids.into_iter()
            .map(|id| self.client(&admin, &ClientRef::Id(id)))
            .collect()
    }

    /// A client's account over `[from, to)`: balances, journal sums, usage.
    pub fn summary(
        &self,
        caller: &Caller,
        user_id: i64,
        from: i64,
        to: i64,
    ) -> ServiceResult<Summary> {
        if to <= from {
            return Err(ServiceError::invalid(
                "the period is empty: to must be after from",
            ));
        }
        let rows = self.journal(caller, user_id, Some(from), Some(to), &[])?;
        let opening = self
            .read(|l| l.journal_before(user_id, from))?
            .map(|j| j.balance_after)
            .unwrap_or(Decimal::ZERO);
        let mut s = Summary {
            opening_balance: opening,
            closing_balance: rows.last().map(|j| j.balance_after).unwrap_or(opening),
            ..Default::default()
        };
        for j in &rows {
            match j.kind {
                JournalKind::Payment => s.payments += j.amount,
                JournalKind::Usage => s.charges -= j.amount,
                JournalKind::PackageFee => s.package_fees -= j.amount,
                JournalKind::Refund => s.refunds += j.amount,
            }
        }
        let filter = Filter {
            user_ids: Some(vec![user_id]),
            logout_from: Some(from),
            logout_to: Some(to - 1),
            ..Default::default()
        };
        for x in self.xdrs_matching(&filter, MAX_REFUND_ROWS)? {
            if x.status == "REFUND" {
                continue;
            }
            let u = if x.service_type == "VoIP" {
                &mut s.calls
            } else {
                &mut s.internet
            };
            u.count += 1;
            u.seconds += x.billed_seconds.max(0) as u64;
            u.bytes_in += x.bytes_in.max(0) as u64;
            u.bytes_out += x.bytes_out.max(0) as u64;
            u.cost += x.credit_used;
        }
        Ok(s)
    }

    /// One read-only statement over the ledger (10,000 rows, 5 s).
    pub fn sql(&self, query: &str) -> ServiceResult<ratel_engine::ledger::SqlAnswer> {
        let limits = ratel_engine::ledger::SqlLimits {
            max_rows: 10_000,
            timeout: Duration::from_secs(5),
        };
        // On its own connection, without the shared reader's lock: a slow statement must not
        // hold up other calls.
        let path = self.catalog.get().data_dir.join("ledger.sqlite");
        ratel_engine::ledger::run_sql(&path, query, limits).map_err(|e| match e {
            ratel_engine::ledger::SqlError::Ledger(e) => ledger_failed(e),
            other => ServiceError::Invalid(other.to_string()),
        })
    }

    /// A time as the dialects accept it: ISO-8601 with `Z` or an offset, or
    /// `YYYY-MM-DD[ HH:MM[:SS]]` (a `T` separator too) in `rating.time_zone`.
    pub fn parse_time(&self, s: &str) -> Result<i64, String> {
        let s = s.trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(t.timestamp());
        }
        let full = match s.len() {
            10 => format!("{s} 00:00:00"),
            16 => format!("{s}:00"),
            _ => s.replace('T', " "),
        };
        ratel_engine::cdr::parse_local(&full, &self.catalog.get().tz).map_err(|e| e.to_string())
    }

    /// A value of the ledger's `meta` table (the token key, the installation id).
    pub fn meta(&self, key: &str) -> ServiceResult<Option<String>> {
        self.read(|l| l.meta(key))
    }

    pub fn schema_version(&self) -> ServiceResult<i64> {
        self.read(|l| l.schema_version())
    }
}

/// A client as veto hooks see it (the shape of the events' `client`).
fn client_json(v: &ClientView) -> serde_json::Value {
    let c = &v.record;
    serde_json::json!({
        "id_clients": c.user_id,
        "username": c.username,
        "group": c.group,
        "id_companies": c.company_id,
        "company": c.company_name,
        "balance": c.credit.to_string(),
        "status": c.status().as_str(),
        "lock_reason": c.lock_reason,
        "created": c.created_at,
        "accounts": v.accounts.iter().map(Account::label).collect::<Vec<_>>(),
        "profile": v.profile.iter().map(|(k, x)| (k.clone(), serde_json::Value::String(x.clone()))).collect::<serde_json::Map<String, serde_json::Value>>(),
    })
}

/// A proposed change as veto hooks see it: field → new value.
fn change_json(c: &ClientChange) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some((u, _)) = &c.credentials {
        m.insert("username".into(), serde_json::json!(u));
    }
    if let Some(g) = &c.group {
        m.insert("group".into(), serde_json::json!(g));
    }
    if let Some(co) = &c.company {
        m.insert("company".into(), serde_json::json!(co));
    }
    if let Some(l) = &c.lock {
        m.insert("lock_reason".into(), serde_json::json!(l));
    }
    if let Some(a) = c.archived {
        m.insert("archived".into(), serde_json::json!(a));
    }
    for (k, v) in &c.profile {
        m.insert(k.clone(), serde_json::json!(v));
    }
    if !c.add_accounts.is_empty() {
        m.insert(
            "add_accounts".into(),
            serde_json::json!(c
                .add_accounts
                .iter()
                .map(Account::label)
                .collect::<Vec<_>>()),
        );
    }
    if !c.remove_accounts.is_empty() {
        m.insert(
            "remove_accounts".into(),
            serde_json::json!(c
                .remove_accounts
                .iter()
                .map(Account::label)
                .collect::<Vec<_>>()),
        );
    }
    serde_json::Value::Object(m)
}

/// A veto hook's `data` value as a string field.
fn data_text(k: &str, v: &serde_json::Value) -> ServiceResult<Option<String>> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(ServiceError::Vetoed(format!(
            "a veto hook's data.{k} is not a string"
        ))),
    }
}

/// Rewrites a proposed new client with a veto hook's `data`: `group`, `company` and
/// profile fields (the editable fields).
fn apply_new(
    c: &mut NewClient,
    data: &serde_json::Map<String, serde_json::Value>,
) -> ServiceResult<()> {
    for (k, v) in data {
        let text = data_text(k, v)?;
        match k.as_str() {
            "group" => c.group = text.unwrap_or_default(),
            "company" => c.company = text,
            key if ratel_engine::domain::check_profile(key, "").is_ok() => {
                c.profile.retain(|(x, _)| x != key);
                if let Some(t) = text {
                    c.profile.push((key.to_string(), t));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Rewrites a proposed change with a veto hook's `data` (see [`apply_new`]).
fn apply_change(
    c: &mut ClientChange,
    data: &serde_json::Map<String, serde_json::Value>,
) -> ServiceResult<()> {
    for (k, v) in data {
        let text = data_text(k, v)?;
        match k.as_str() {
            "group" => c.group = text,
            "company" => c.company = text,
            key if ratel_engine::domain::check_profile(key, "").is_ok() => {
                c.profile.retain(|(x, _)| x != key);
                c.profile.push((key.to_string(), text));
            }
            _ => {}
        }
    }
    Ok(())
}
