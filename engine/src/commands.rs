//! Writes asked of the core (by the API's service layer, and by `ratel users import`): the
//! core owns the ledger and the balances, so every credit movement, from RADIUS, CDRs or an
//! operator, is ordered in one place. [`execute`] runs one command against a
//! [`BatchRater`] (the ledger and the in-memory subscribers) — on the serve core's thread
//! while `serve` runs, or directly by a CLI command that holds the data dir.

use rust_decimal::Decimal;

use crate::batch::BatchRater;
use crate::catalog::Catalog;
use crate::domain::{check_profile, check_username, ClientChange, NewClient};
use crate::ledger::{LedgerError, RefundCommit};
use crate::serve::now_secs;
use crate::xdr::OwnedXdr;

/// How a credit change applies (IBSng's changeCreditExtended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Add,
    Set,
    Multiply,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    GroupNotFound(String),
    /// A username, account or company name that is taken.
    Exists(String),
    UserNotFound(i64),
    /// Something else named that does not exist (a company, an account of the client).
    NotFound(String),
    Invalid(String),
    Ledger(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::GroupNotFound(g) => write!(f, "group {g:?} not found"),
            CommandError::Exists(m) | CommandError::NotFound(m) | CommandError::Invalid(m) => {
                f.write_str(m)
            }
            CommandError::UserNotFound(id) => write!(f, "no user with id {id}"),
            CommandError::Ledger(m) => write!(f, "ledger: {m}"),
        }
    }
}

type Reply<T> = crossbeam_channel::Sender<Result<T, CommandError>>;

/// One line of a bulk import.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// Where it came from (file line), for the answer.
    pub line: u64,
    pub client: NewClient,
}

/// What an import did with each line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    pub created: Vec<(u64, i64)>,
    /// Lines whose username exists already (skipped: a re-import is harmless).
    pub existing: Vec<u64>,
    /// Lines refused, with the field and reason.
    pub refused: Vec<(u64, String)>,
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    /// xDRs refunded now (0 when every one was refunded before).
    pub refunded: usize,
    pub amount: Decimal,
    pub journal_id: Option<i64>,
    pub balance: Decimal,
}

/// Commands to the core. Each carries who asks (`actor`, for the journal and the client
/// log) and where the answer goes.
pub enum Command {
    /// Creates clients, all or none.
    AddClients {
        clients: Vec<NewClient>,
        actor: String,
        reply: Reply<Vec<i64>>,
    },
    /// Creates what it can of a bulk import; each line answered.
    ImportClients {
        rows: Vec<ImportRow>,
        actor: String,
        reply: Reply<ImportOutcome>,
    },
    /// Changes one client as a whole. Locking or archiving it disconnects its open
    /// sessions; its usage is still charged.
    UpdateClient {
        user_id: i64,
        change: ClientChange,
        actor: String,
        reply: Reply<()>,
    },
    /// Deletes clients (history stays); their open sessions are disconnected.
    DeleteClients {
        user_ids: Vec<i64>,
        comment: String,
        actor: String,
        reply: Reply<()>,
    },
    ChangeCredit {
        user_ids: Vec<i64>,
        credit: Decimal,
        change_type: ChangeType,
        comment: String,
        actor: String,
        reply: Reply<Vec<i64>>,
    },
    Renew {
        user_ids: Vec<i64>,
        comment: String,
        actor: String,
        reply: Reply<()>,
    },
    AddCompany {
        name: String,
        kind: i64,
        prepaid: bool,
        credit: Decimal,
        reply: Reply<i64>,
    },
    UpdateCompany {
        id: i64,
        name: Option<String>,
        kind: Option<i64>,
        prepaid: Option<bool>,
        credit: Option<Decimal>,
        reply: Reply<()>,
    },
    /// Refunds the usage charges among `candidates` (the client's xDRs the service found
    /// in the asked range) that were not refunded before (DESIGN.md "Charge cancellation").
    CancelCharges {
        user_id: i64,
        candidates: Vec<OwnedXdr>,
        comment: String,
        actor: String,
        reply: Reply<RefundOutcome>,
    },
    /// Assigns, activates, renews, deactivates or closes client packages (DESIGN.md Part 2
    /// "Packages and expiry").
    Package {
        op: crate::packages::PackageOp,
        actor: String,
        reply: PackageReply,
    },
}

/// A package operation's answer: the packages as it left them.
pub type PackageReply = Reply<Vec<crate::packages::ClientPackage>>;

/// Why the core asks for a client's open sessions to end (Disconnect-Requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSessions {
    /// The credit went from above zero to zero or below.
    CreditExhausted,
    /// The client was locked, archived or deleted.
    Locked,
}

/// Most clients one call may create.
pub const MAX_NEW_USERS: usize = 10_000;
/// Most lines one import command carries (the CLI sends a file in parts).
pub const MAX_IMPORT_ROWS: usize = 10_000;

fn ledger_err(e: LedgerError) -> CommandError {
    match e {
        LedgerError::NoSuchClient(id) => CommandError::UserNotFound(id),
        LedgerError::Rejected(m) if m.contains("exists already") || m.contains("given twice") => {
            CommandError::Exists(m)
        }
        LedgerError::Rejected(m)
            if m.starts_with("no company") || m.contains("is not an account") =>
        {
            CommandError::NotFound(m)
        }
        LedgerError::Rejected(m) => CommandError::Invalid(m),
        other => CommandError::Ledger(other.to_string()),
    }
}

/// The checks every new client goes through (the service checks shapes first; these hold
/// for every path into the core).
fn check_new(catalog: &Catalog, c: &NewClient) -> Result<(), CommandError> {
    if catalog.group_index(&c.group).is_none() {
        return Err(CommandError::GroupNotFound(c.group.clone()));
    }
    if let Some(u) = &c.username {
        check_username(u).map_err(CommandError::Invalid)?;
    }
    if c.password.as_deref() == Some("") {
        return Err(CommandError::Invalid("password: must not be empty".into()));
    }
    crate::users::check_credit(c.credit)
        .map_err(|r| CommandError::Invalid(format!("credit: {r}")))?;
    for (k, v) in &c.profile {
        check_profile(k, v).map_err(CommandError::Invalid)?;
    }
    Ok(())
}

/// Executes one command; `end_sessions` asks for Disconnect-Requests for every open session
/// of a client.
pub fn execute(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    cmd: Command,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) {
    let now = now_secs();
    match cmd {
        Command::AddClients {
            clients,
            actor,
            reply,
        } => {
            let _ = reply.send(add_clients(catalog, rater, &clients, &actor, now));
        }
        Command::ImportClients { rows, actor, reply } => {
            let _ = reply.send(import(catalog, rater, rows, &actor, now));
        }
        Command::UpdateClient {
            user_id,
            change,
            actor,
            reply,
        } => {
            let r = update_client(catalog, rater, user_id, &change, &actor, now, end_sessions);
            let _ = reply.send(r);
        }
        Command::DeleteClients {
            user_ids,
            comment,
            actor,
            reply,
        } => {
            let r = (|| {
                rater
                    .ledger
                    .delete_clients(&user_ids, &comment, &actor, now)
                    .map_err(ledger_err)?;
                rater.subscribers.delete(&user_ids, now);
                for id in &user_ids {
                    end_sessions(*id, EndSessions::Locked);
                }
                Ok(())
            })();
            let _ = reply.send(r);
        }
        Command::ChangeCredit {
            user_ids,
            credit,
            change_type,
            comment,
            actor,
            reply,
        } => {
            let r = change_credit(
                rater,
                &user_ids,
                credit,
                change_type,
                &comment,
                &actor,
                now,
                end_sessions,
            );
            let _ = reply.send(r);
        }
        Command::Renew {
            user_ids,
            comment,
            actor,
            reply,
        } => {
            let r = (|| {
                for id in &user_ids {
                    if rater.subscribers.live_mut(*id).is_none() {
                        return Err(CommandError::UserNotFound(*id));
                    }
                }
                // Every package of these clients renewed now (IBSng renewUsers), all or
                // none, in this same core step: a refusal renews nothing, so a retry never
                // takes a fee twice.
                crate::packages::operate(
                    catalog,
                    rater,
                    crate::packages::PackageOp::RenewClients {
                        user_ids: user_ids.clone(),
                    },
                    &actor,
                    now,
                    end_sessions,
                )?;
                rater
                    .ledger
                    .renew(&user_ids, &comment, &actor, now)
                    .map_err(ledger_err)
            })();
            let _ = reply.send(r);
        }
        Command::AddCompany {
            name,
            kind,
            prepaid,
            credit,
            reply,
        } => {
            let r = (|| {
                crate::users::check_credit(credit)
                    .map_err(|r| CommandError::Invalid(format!("credit: {r}")))?;
                rater
                    .ledger
                    .add_company(&name, kind, prepaid, credit, now)
                    .map_err(ledger_err)
            })();
            let _ = reply.send(r);
        }
        Command::UpdateCompany {
            id,
            name,
            kind,
            prepaid,
            credit,
            reply,
        } => {
            let r = (|| {
                if let Some(c) = credit {
                    crate::users::check_credit(c)
                        .map_err(|r| CommandError::Invalid(format!("credit: {r}")))?;
                }
                rater
                    .ledger
                    .update_company(id, name.as_deref(), kind, prepaid, credit)
                    .map_err(ledger_err)
            })();
            let _ = reply.send(r);
        }
        Command::CancelCharges {
            user_id,
            candidates,
            comment,
            actor,
            reply,
        } => {
            let r = cancel_charges(rater, user_id, candidates, &comment, &actor, now);
            let _ = reply.send(r);
        }
        Command::Package { op, actor, reply } => {
            let r = crate::packages::operate(catalog, rater, op, &actor, now, end_sessions);
            let _ = reply.send(r);
        }
    }
}

fn add_clients(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    clients: &[NewClient],
    actor: &str,
    now: i64,
) -> Result<Vec<i64>, CommandError> {
    if clients.is_empty() || clients.len() > MAX_NEW_USERS {
        return Err(CommandError::Invalid(format!(
            "count must be 1..={MAX_NEW_USERS}"
        )));
    }
    for c in clients {
        check_new(catalog, c)?;
    }
    let ids = rater
        .ledger
        .add_clients(clients, actor, now)
        .map_err(ledger_err)?;
    for (id, c) in ids.iter().zip(clients) {
        remember(catalog, rater, *id, c);
    }
    Ok(ids)
}

/// Puts a client the ledger just created into the in-memory subscribers.
fn remember(catalog: &Catalog, rater: &mut BatchRater<'_>, id: i64, c: &NewClient) {
    rater.subscribers.add(
        catalog,
        crate::ledger::UserRow {
            user_id: id,
            username: c.username.clone(),
            group_name: c.group.clone(),
            credit: c.credit,
        },
    );
    for a in &c.accounts {
        rater.subscribers.add_account(id, a.kind, &a.ident);
    }
}

fn import(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    rows: Vec<ImportRow>,
    actor: &str,
    now: i64,
) -> Result<ImportOutcome, CommandError> {
    if rows.len() > MAX_IMPORT_ROWS {
        return Err(CommandError::Invalid(format!(
            "at most {MAX_IMPORT_ROWS} lines per import command"
        )));
    }
    let mut out = ImportOutcome::default();
    let mut good: Vec<ImportRow> = Vec::new();
    let mut taken: std::collections::HashSet<(crate::domain::AccountKind, String)> =
        Default::default();
    'rows: for r in rows {
        if let Err(e) = check_new(catalog, &r.client) {
            let field = match &e {
                CommandError::GroupNotFound(_) => "group",
                _ => "line",
            };
            out.refused.push((r.line, format!("{field}: {e}")));
            continue;
        }
        if let Some(company) = &r.client.company {
            match rater.ledger.company_id(company) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    out.refused
                        .push((r.line, format!("company: no company named {company:?}")));
                    continue;
                }
                Err(e) => return Err(ledger_err(e)),
            }
        }
        let mut accounts = r.client.accounts.clone();
        if let Some(name) = &r.client.username {
            if let Some(&i) = rater.subscribers.by_name.get(name) {
                if rater.subscribers.users[i as usize].username == *name {
                    out.existing.push(r.line);
                    continue;
                }
            }
            accounts.push(crate::domain::Account {
                kind: crate::domain::AccountKind::Radius,
                ident: name.clone(),
            });
        }
        for a in &accounts {
            if let Some(owner) = rater.subscribers.owner_of(a.kind, &a.ident) {
                out.refused.push((
                    r.line,
                    format!("accounts: {} exists already (client {owner})", a.label()),
                ));
                continue 'rows;
            }
            if !taken.insert((a.kind, a.ident.clone())) {
                out.refused.push((
                    r.line,
                    format!("accounts: {} is on an earlier line too", a.label()),
                ));
                continue 'rows;
            }
        }
        good.push(r);
    }
    if good.is_empty() {
        return Ok(out);
    }
    let clients: Vec<NewClient> = good.iter().map(|r| r.client.clone()).collect();
    let ids = rater
        .ledger
        .add_clients(&clients, actor, now)
        .map_err(ledger_err)?;
    for ((id, c), r) in ids.iter().zip(&clients).zip(&good) {
        remember(catalog, rater, *id, c);
        out.created.push((r.line, *id));
    }
    Ok(out)
}

fn update_client(
    catalog: &Catalog,
    rater: &mut BatchRater<'_>,
    user_id: i64,
    change: &ClientChange,
    actor: &str,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) -> Result<(), CommandError> {
    if change.is_empty() {
        return Err(CommandError::Invalid("nothing to change".into()));
    }
    if let Some(g) = &change.group {
        if catalog.group_index(g).is_none() {
            return Err(CommandError::GroupNotFound(g.clone()));
        }
    }
    if let Some((u, p)) = &change.credentials {
        check_username(u).map_err(CommandError::Invalid)?;
        if p.is_empty() {
            return Err(CommandError::Invalid("password: must not be empty".into()));
        }
    }
    for (k, v) in &change.profile {
        check_profile(k, v.as_deref().unwrap_or("")).map_err(CommandError::Invalid)?;
    }
    let before = rater
        .ledger
        .update_client(user_id, change, actor, now)
        .map_err(ledger_err)?;
    let subs = &mut rater.subscribers;
    for a in &change.remove_accounts {
        subs.remove_account(user_id, a.kind, &a.ident, now);
    }
    if let Some((u, _)) = &change.credentials {
        subs.rename(user_id, u, now);
    }
    for a in &change.add_accounts {
        subs.add_account(user_id, a.kind, &a.ident);
    }
    if let Some(g) = &change.group {
        subs.set_group(catalog, user_id, g);
    }
    // Prepaid control: a client that just stopped being active loses its open sessions
    // (a new lock reason for a locked client sends nothing again).
    let was_active = before.lock_reason.is_none() && !before.archived;
    let locks = matches!(change.lock, Some(Some(_))) || change.archived == Some(true);
    if was_active && locks {
        end_sessions(user_id, EndSessions::Locked);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn change_credit(
    rater: &mut BatchRater<'_>,
    user_ids: &[i64],
    credit: Decimal,
    change_type: ChangeType,
    comment: &str,
    actor: &str,
    now: i64,
    end_sessions: &mut dyn FnMut(i64, EndSessions),
) -> Result<Vec<i64>, CommandError> {
    let mut changes = Vec::with_capacity(user_ids.len());
    for id in user_ids {
        let u = rater
            .subscribers
            .live_mut(*id)
            .ok_or(CommandError::UserNotFound(*id))?;
        let new = match change_type {
            ChangeType::Add => u.credit.checked_add(credit),
            ChangeType::Set => Some(credit),
            ChangeType::Multiply => u.credit.checked_mul(credit).map(|v| v.round_dp(10)),
        }
        // The balance stays in the credit range, and the movement is checked too (an old
        // balance may predate the range): a bad amount is an error.
        .filter(|v| crate::users::check_credit(*v).is_ok())
        .and_then(|new| Some((new.checked_sub(u.credit)?, new)))
        .ok_or_else(|| {
            CommandError::Invalid(format!(
                "credit: the balance of user {id} would leave the credit range \
                 (|credit| <= 10^15, at most 10 decimal places)"
            ))
        })?;
        changes.push((*id, new.0, new.1));
    }
    let ids = rater
        .ledger
        .change_credit(
            &changes,
            comment,
            actor,
            change_type == ChangeType::Add,
            now,
        )
        .map_err(ledger_err)?;
    for (id, _, new) in changes {
        if let Some(u) = rater.subscribers.get_mut(id) {
            let before = std::mem::replace(&mut u.credit, new);
            // Prepaid control: the operator took the credit to zero or below.
            if before > Decimal::ZERO && new <= Decimal::ZERO {
                end_sessions(id, EndSessions::CreditExhausted);
            }
        }
    }
    Ok(ids)
}

fn cancel_charges(
    rater: &mut BatchRater<'_>,
    user_id: i64,
    mut candidates: Vec<OwnedXdr>,
    comment: &str,
    actor: &str,
    now: i64,
) -> Result<RefundOutcome, CommandError> {
    let balance = rater
        .subscribers
        .live_mut(user_id)
        .ok_or(CommandError::UserNotFound(user_id))?
        .credit;
    // Only usage charges of this client: never a refund row, never a free record.
    candidates.retain(|x| {
        x.user_id == Some(user_id)
            && x.refund_of.is_none()
            && x.status != "REFUND"
            && x.credit_used > Decimal::ZERO
    });
    candidates.sort_by_key(|x| x.xdr_id);
    candidates.dedup_by_key(|x| x.xdr_id);
    let ids: Vec<u64> = candidates.iter().map(|x| x.xdr_id).collect();
    let done = rater.ledger.refunded_among(&ids).map_err(ledger_err)?;
    candidates.retain(|x| !done.contains(&x.xdr_id));
    if candidates.is_empty() {
        return Ok(RefundOutcome {
            refunded: 0,
            amount: Decimal::ZERO,
            journal_id: None,
            balance,
        });
    }
    let mut next = rater.next_xdr;
    let mut running = balance;
    let mut rows = Vec::with_capacity(candidates.len());
    for x in candidates {
        let after = running.checked_add(x.credit_used).ok_or_else(|| {
            CommandError::Invalid("the refund would leave the credit range".into())
        })?;
        rows.push(OwnedXdr {
            xdr_id: next,
            status: "REFUND".into(),
            credit_used: -x.credit_used,
            before_credit: running,
            after_credit: after,
            details: Vec::new(),
            source: format!("refund:{}", x.xdr_id),
            refund_of: Some(x.xdr_id),
            ..x
        });
        running = after;
        next += 1;
    }
    crate::users::check_credit(running)
        .map_err(|_| CommandError::Invalid("the refund would leave the credit range".into()))?;
    let amount = running - balance;
    let journal_id = rater
        .ledger
        .commit_refund(&RefundCommit {
            user_id,
            amount,
            balance_after: running,
            rows: rows.clone(),
            next_xdr: next,
            actor: actor.to_string(),
            comment: comment.to_string(),
            now,
        })
        .map_err(ledger_err)?;
    rater.next_xdr = next;
    if let Some(u) = rater.subscribers.get_mut(user_id) {
        u.credit = running;
    }
    Ok(RefundOutcome {
        refunded: rows.len(),
        amount,
        journal_id: Some(journal_id),
        balance: running,
    })
}
