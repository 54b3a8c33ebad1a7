//! VCS `clients.*`, `accounts.*` and `companies.*`: the seed's client object
//! (`clients.editForm`, field for field) and the arguments of the web UI's forms, over the
//! service's client calls.

use ratel_engine::domain::{Account, AccountKind, ClientChange, ClientStatus, Company, NewClient};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::{
    currency_code, currency_numeric, fmt_time_offset, got, money, no_company, Answer, Args, Ctx,
    Outcome, Refusal,
};
use crate::clients::{ClientQuery, MAX_CLIENT_PAGE};
use crate::service::{ClientRef, ClientView};

/// VCS client fields kept as profile fields: (argument, profile key).
const PROFILE_ARGS: [(&str, &str); 7] = [
    ("name", "name"),
    ("c_company", "company_name"),
    ("c_address", "address"),
    ("c_email", "email"),
    ("c_email_tech", "email_tech"),
    ("c_email_billing", "email_billing"),
    ("c_email_rates", "email_rates"),
];

/// The client as `clients.editForm` answers it: the seed's fields in the seed's order
/// (`type` 0 = customer; `c_dt` in the rating zone with its offset; profile fields null
/// when unset; `id_currencies` the ISO 4217 numeric code).
pub(crate) fn client_json(ctx: &Ctx<'_>, v: &ClientView) -> Value {
    let c = &v.record;
    json!({
        "id": c.user_id,
        "id_companies": c.company_id,
        "type": 0,
        "name": v.display_name(),
        "groups": c.group,
        "c_dt": fmt_time_offset(&ctx.cat, c.created_at),
        "status": c.status().as_str(),
        "credit": money(c.credit),
        "c_company": v.profile_value("company_name"),
        "c_address": v.profile_value("address"),
        "c_email": v.profile_value("email"),
        "c_email_tech": v.profile_value("email_tech"),
        "c_email_billing": v.profile_value("email_billing"),
        "c_email_rates": v.profile_value("email_rates"),
        "id_currencies": currency_numeric(currency_code(&ctx.cat)),
    })
}

fn status_of(s: &str) -> Option<ClientStatus> {
    match s.trim() {
        "active" => Some(ClientStatus::Active),
        "locked" => Some(ClientStatus::Locked),
        "archived" => Some(ClientStatus::Archived),
        _ => None,
    }
}

/// A `status` argument.
fn status_arg(a: &mut Args<'_>) -> Option<ClientStatus> {
    let s = a.text("status")?;
    let st = status_of(&s);
    if st.is_none() {
        a.refuse("status", "active, locked or archived");
    }
    st
}

/// The name of company `id` (clients name their company by name in the service).
fn company_name(ctx: &Ctx<'_>, id: i64) -> Result<String, Refusal> {
    ctx.st
        .companies()?
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.name)
        .ok_or_else(|| no_company(id))
}

fn client_answer(ctx: &Ctx<'_>, id: i64, message: Option<String>) -> Outcome {
    let v = ctx.st.client(&ctx.caller, &ClientRef::Id(id))?;
    let ret = json!({ "client": client_json(ctx, &v) });
    Ok(match message {
        Some(m) => Answer::with_message(ret, m),
        None => Answer::new(ret),
    })
}

/// `clients.list`: filters `status`, `id_companies`, `name` (a part of it, any case);
/// `offset`, `limit` (default 100, at most 1000). Answers `{"clients": [...], "total"}`.
pub(crate) fn list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let q = ClientQuery {
        status: status_arg(a),
        company_id: a.int("id_companies"),
        name: a.text("name").filter(|n| !n.is_empty()),
        offset: a.count("offset", 0, 1 << 40),
        limit: a.count("limit", 100, MAX_CLIENT_PAGE),
    };
    if q.limit == 0 {
        a.refuse("limit", format!("1 to {MAX_CLIENT_PAGE}"));
    }
    a.check()?;
    let (total, page) = ctx.st.list_clients(&ctx.caller, &q)?;
    let clients: Vec<Value> = page.iter().map(|v| client_json(ctx, v)).collect();
    Ok(Answer::new(json!({ "clients": clients, "total": total })))
}

/// `clients.editForm` (`id_clients`): `{"client": {...}}` as the seed shows it.
pub(crate) fn edit_form(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    a.check()?;
    client_answer(ctx, got(id, "id_clients")?, None)
}

/// `username` and `password`: both or neither.
fn credentials(a: &mut Args<'_>) -> Option<(String, String)> {
    let u = a.text("username").filter(|s| !s.is_empty());
    let p = a.text("password").filter(|s| !s.is_empty());
    match (u, p) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            a.refuse("password", "required with username");
            None
        }
        (None, Some(_)) => {
            a.refuse("username", "required with password");
            None
        }
    }
}

/// `type`: only customers (0) are clients here.
fn type_arg(a: &mut Args<'_>) {
    if a.int("type").is_some_and(|t| t != 0) {
        a.refuse("type", "only 0 (customer)");
    }
}

/// `clients.add`: `groups` (the tariff plan, required), `name`, `id_companies` (default
/// the main company), `username` + `password` (the first radius account), `credit` (the
/// opening balance), `c_company`, `c_address`, `c_email*`, `notes`.
pub(crate) fn add(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    type_arg(a);
    let group = a.req_text("groups");
    let company = a.int("id_companies");
    let creds = credentials(a);
    let credit = a.money("credit").unwrap_or(Decimal::ZERO);
    let mut profile = Vec::new();
    for (arg, key) in PROFILE_ARGS {
        if let Some(v) = a.text(arg).filter(|v| !v.is_empty()) {
            profile.push((key.to_string(), v));
        }
    }
    let notes = a.text("notes").unwrap_or_default();
    a.check()?;
    let company = match company {
        Some(id) => Some(company_name(ctx, id)?),
        None => None,
    };
    let (username, password) = match creds {
        Some((u, p)) => (Some(u), Some(p)),
        None => (None, None),
    };
    let c = NewClient {
        username,
        password,
        group: got(group, "groups")?,
        company,
        credit,
        comment: if notes.is_empty() {
            "vcs clients.add".into()
        } else {
            notes
        },
        accounts: Vec::new(),
        profile,
    };
    let ids = ctx.st.create_clients(&ctx.caller, vec![c])?;
    let id = ids.first().copied().ok_or_else(|| Refusal {
        label: "internal",
        errors: vec!["no client was created".into()],
    })?;
    client_answer(ctx, id, Some(format!("client {id} created")))
}

/// `clients.edit` (`id_clients`): any of `name`, `groups`, `id_companies`, `username` +
/// `password`, `status` (`active`, `locked` with `lock_reason`, `archived`), and the
/// profile fields (null clears one). Applied as a whole or not at all.
pub(crate) fn edit(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    type_arg(a);
    let mut change = ClientChange {
        credentials: credentials(a),
        group: a.text("groups").filter(|g| !g.trim().is_empty()),
        ..Default::default()
    };
    let company = a.int("id_companies");
    for (arg, key) in PROFILE_ARGS {
        if let Some(v) = a.nullable_text(arg) {
            change.profile.push((key.to_string(), v));
        }
    }
    let status = status_arg(a);
    let reason = a.text("lock_reason").filter(|r| !r.trim().is_empty());
    match status {
        Some(ClientStatus::Active) => {
            change.lock = Some(None);
            change.archived = Some(false);
        }
        Some(ClientStatus::Locked) => {
            change.lock = Some(Some(reason.unwrap_or_else(|| "locked".into())));
        }
        Some(ClientStatus::Archived) => change.archived = Some(true),
        None if reason.is_some() => a.refuse("lock_reason", "only with status locked"),
        None => {}
    }
    if a.raw("credit").is_some() {
        a.refuse("credit", "the balance changes through payments.add");
    }
    a.check()?;
    let id = got(id, "id_clients")?;
    if let Some(c) = company {
        change.company = Some(company_name(ctx, c)?);
    }
    if change.is_empty() {
        return Err(Refusal::args(vec![
            "nothing to change: give name, groups, id_companies, username and password, status or c_* fields".into(),
        ]));
    }
    ctx.st.update_client(&ctx.caller, id, change)?;
    client_answer(ctx, id, Some(format!("client {id} updated")))
}

/// `clients.delete` (`id_clients`: one id or a list; `notes`): the clients vanish from
/// every list; their history stays.
pub(crate) fn delete(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let ids = a.req_ids("id_clients");
    let notes = a.text("notes").unwrap_or_default();
    a.check()?;
    let ids = got(ids, "id_clients")?;
    ctx.st.delete_clients(&ctx.caller, ids.clone(), notes)?;
    let m = format!("{} client(s) deleted", ids.len());
    Ok(Answer::with_message(json!({ "deleted": ids }), m))
}

/// `clients.archive` (`id_clients`).
pub(crate) fn archive(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    a.check()?;
    let id = got(id, "id_clients")?;
    let change = ClientChange {
        archived: Some(true),
        ..Default::default()
    };
    ctx.st.update_client(&ctx.caller, id, change)?;
    client_answer(ctx, id, Some(format!("client {id} archived")))
}

// ---- accounts -----------------------------------------------------------------------------

fn account_json(id: i64, acc: &Account, username: Option<&str>) -> Value {
    json!({
        "id_clients": id,
        "kind": acc.kind.as_str(),
        "name": acc.ident,
        // The radius account that is the client's username (renamed, never deleted).
        "primary": acc.kind == AccountKind::Radius && username == Some(acc.ident.as_str()),
    })
}

/// `kind` and `name` as an account.
fn account_args(a: &mut Args<'_>) -> Option<Account> {
    let kind = a.req_text("kind");
    let kind = kind.and_then(|k| {
        let parsed = AccountKind::parse(&k);
        if parsed.is_none() {
            a.refuse("kind", "radius, voip or dn");
        }
        parsed
    });
    let name = a.req_text("name");
    match (kind, name) {
        (Some(k), Some(n)) => match Account::new(k, &n) {
            Ok(acc) => Some(acc),
            Err(why) => {
                a.refuse("name", why);
                None
            }
        },
        _ => None,
    }
}

fn accounts_answer(ctx: &Ctx<'_>, id: i64, message: String) -> Outcome {
    let v = ctx.st.client(&ctx.caller, &ClientRef::Id(id))?;
    let username = v.record.username.as_deref();
    let list: Vec<Value> = v
        .accounts
        .iter()
        .map(|acc| account_json(id, acc, username))
        .collect();
    let ret = json!({ "accounts": list });
    Ok(if message.is_empty() {
        Answer::new(ret)
    } else {
        Answer::with_message(ret, message)
    })
}

/// `accounts.list` (`id_clients`): `{"accounts": [{id_clients, kind, name, primary}]}`.
pub(crate) fn accounts_list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    a.check()?;
    accounts_answer(ctx, got(id, "id_clients")?, String::new())
}

/// `accounts.add` (`id_clients`, `kind`, `name`, optional `password`: the client's,
/// radius accounts only).
pub(crate) fn accounts_add(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let acc = account_args(a);
    let password = a.text("password").filter(|p| !p.is_empty());
    a.check()?;
    let (id, acc) = (got(id, "id_clients")?, got(acc, "name")?);
    let label = acc.label();
    ctx.st.add_account(&ctx.caller, id, acc, password)?;
    accounts_answer(ctx, id, format!("account {label} added to client {id}"))
}

/// `accounts.edit` (`id_clients`, `kind`, `name`; `new_name` and/or `password`).
pub(crate) fn accounts_edit(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let acc = account_args(a);
    let new_name = a.text("new_name").filter(|n| !n.trim().is_empty());
    let password = a.text("password").filter(|p| !p.is_empty());
    if new_name.is_none() && password.is_none() {
        a.refuse("new_name", "required (or password)");
    }
    a.check()?;
    let (id, acc) = (got(id, "id_clients")?, got(acc, "name")?);
    ctx.st
        .edit_account(&ctx.caller, id, &acc, new_name.as_deref(), password)?;
    accounts_answer(
        ctx,
        id,
        format!("account {} of client {id} updated", acc.label()),
    )
}

/// `accounts.delete` (`id_clients`, `kind`, `name`).
pub(crate) fn accounts_delete(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let acc = account_args(a);
    a.check()?;
    let (id, acc) = (got(id, "id_clients")?, got(acc, "name")?);
    let label = acc.label();
    ctx.st.remove_account(&ctx.caller, id, acc)?;
    accounts_answer(ctx, id, format!("account {label} removed from client {id}"))
}

// ---- companies ----------------------------------------------------------------------------

fn company_json(c: &Company) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "type": c.kind,
        "prepaid": c.prepaid,
        "credit": money(c.credit),
    })
}

/// `companies.list`: `{"companies": [{id, name, type, prepaid, credit}]}`.
pub(crate) fn companies_list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    a.check()?;
    let list: Vec<Value> = ctx.st.companies()?.iter().map(company_json).collect();
    Ok(Answer::new(json!({ "companies": list })))
}

/// `companies.add` (the seed's `type` 10 = reseller by default, `name`, `id_companies`
/// empty — companies have no parent here —, `prepaid` default 1, `credit` default 0).
pub(crate) fn companies_add(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let kind = a.int("type").unwrap_or(10);
    let name = a.req_text("name");
    if let Some(parent) = a.int("id_companies") {
        if parent != ratel_engine::domain::MAIN_COMPANY {
            a.refuse(
                "id_companies",
                "companies under a company other than the main one (1) are not supported; leave it empty",
            );
        }
    }
    let prepaid = a.flag("prepaid").unwrap_or(true);
    let credit = a.money("credit").unwrap_or(Decimal::ZERO);
    a.check()?;
    let id = ctx
        .st
        .add_company(got(name, "name")?, kind, prepaid, credit)?;
    let c = ctx
        .st
        .companies()?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| no_company(id))?;
    Ok(Answer::with_message(
        json!({ "company": company_json(&c) }),
        format!("company {id} created"),
    ))
}
