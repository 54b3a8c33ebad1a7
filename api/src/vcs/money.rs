//! VCS `payments.*`, `xdrs.*` and `events.list`: the client's money history, its rated
//! records and their cancellation, and the provisioning events, over the service's
//! journal, report and refund calls.

use ratel_engine::domain::JournalKind;
use ratel_engine::ledger::JournalEntry;
use ratel_engine::xdr::OwnedXdr;
use serde_json::{json, Value};

use super::{fmt_time, got, money, Answer, Args, Ctx, Outcome};
use crate::report::{Filter, Order, Query, SortBy, MAX_PAGE};
use crate::service::ClientRef;

fn journal_json(ctx: &Ctx<'_>, j: &JournalEntry) -> Value {
    json!({
        "id": j.id,
        "type": j.kind.as_str(),
        "time": fmt_time(&ctx.cat, j.at),
        "amount": money(j.amount),
        "balance_after": money(j.balance_after),
        "notes": j.comment,
        "admin": j.actor,
    })
}

/// `payments.add` (`id_clients`, `amount` > 0, `notes`): a `payment` journal row.
/// Answers `{"payment": {id, type, amount, notes}, "credit": <the balance now>}`.
pub(crate) fn payments_add(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let amount = a.req_money("amount");
    let notes = a.text("notes").unwrap_or_default();
    a.check()?;
    let (id, amount) = (got(id, "id_clients")?, got(amount, "amount")?);
    let journal_id = ctx.st.add_payment(&ctx.caller, id, amount, notes.clone())?;
    let c = ctx.st.client(&ctx.caller, &ClientRef::Id(id))?;
    Ok(Answer::with_message(
        json!({
            "payment": {
                "id": journal_id,
                "type": JournalKind::Payment.as_str(),
                "amount": money(amount),
                "notes": notes,
            },
            "credit": money(c.record.credit),
        }),
        format!("payment {journal_id} added to client {id}"),
    ))
}

/// `payments.list` (`id_clients`; `from`, `to` optional): the client's journal rows other
/// than usage, `{"payments": [{id, type, time, amount, balance_after, notes, admin}]}`.
pub(crate) fn payments_list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let from = a.time(ctx.st, "from");
    let to = a.time(ctx.st, "to");
    a.check()?;
    let rows = ctx
        .st
        .payments(&ctx.caller, got(id, "id_clients")?, from, to)?;
    let list: Vec<Value> = rows.iter().map(|j| journal_json(ctx, j)).collect();
    Ok(Answer::new(json!({ "payments": list })))
}

/// An xDR with the Parquet schema's column names; times in the rating zone, money as
/// exact numbers.
pub(crate) fn xdr_json(ctx: &Ctx<'_>, x: &OwnedXdr) -> Value {
    let t = |s: i64| fmt_time(&ctx.cat, s);
    json!({
        "xdr_id": x.xdr_id,
        "service_type": x.service_type,
        "status": x.status,
        "user_id": x.user_id,
        "username": x.username,
        "group_name": x.group_name,
        "login_time": t(x.login_time),
        "logout_time": t(x.logout_time),
        "duration_seconds": x.duration_seconds,
        "billed_seconds": x.billed_seconds,
        "bytes_in": x.bytes_in,
        "bytes_out": x.bytes_out,
        "session_id": x.session_id,
        "ras_description": x.ras_description,
        "nas_ip": x.nas_ip,
        "unique_id_value": x.unique_id_value,
        "remote_ip": x.remote_ip,
        "caller_id": x.caller_id,
        "called_number": x.called_number,
        "terminate_cause": x.terminate_cause,
        "destination": x.destination,
        "destination_name": x.destination_name,
        "credit_used": money(x.credit_used),
        "before_credit": money(x.before_credit),
        "after_credit": money(x.after_credit),
        "charge_rule_details": x.details.iter().map(|d| json!({
            "rule": d.rule,
            "start": t(d.start),
            "end": t(d.end),
            "seconds": d.seconds,
            "bytes_in": d.bytes_in,
            "bytes_out": d.bytes_out,
            "credit": money(d.credit),
        })).collect::<Vec<_>>(),
        "source": x.source,
        "account": x.account,
        "refund_of": x.refund_of,
        "package_seconds": x.package_seconds,
        "package_bytes": x.package_bytes,
    })
}

/// `from` and `to` of a range `[from, to)`, both required, `to` after `from`.
fn range(ctx: &Ctx<'_>, a: &mut Args<'_>) -> (Option<i64>, Option<i64>) {
    let from = a.req_time(ctx.st, "from");
    let to = a.req_time(ctx.st, "to");
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            a.refuse("to", "must be after from");
        }
    }
    (from, to)
}

/// Deepest page start of `xdrs.list`: a page keeps its `offset + limit` first rows while
/// it reads (report.rs), so this bounds the memory of one call; larger ranges are for
/// `/admin/xdrs/download`.
const MAX_XDR_OFFSET: usize = 100_000;

/// `xdrs.list` (`from`, `to`: logout time in `[from, to)`; `id_clients` optional;
/// `offset` at most 100000, `limit` default 100, at most 10000), in xDR id order. Answers `{"xdrs":
/// [...], "total": <rows in the range>, "credit_used": <their sum>}`.
pub(crate) fn xdrs_list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.int("id_clients");
    let (from, to) = range(ctx, a);
    let offset = a.count("offset", 0, MAX_XDR_OFFSET);
    let limit = a.count("limit", 100, MAX_PAGE);
    a.check()?;
    let (from, to) = (got(from, "from")?, got(to, "to")?);
    if let Some(id) = id {
        // An unknown client is not found, rather than an empty list.
        ctx.st.client(&ctx.caller, &ClientRef::Id(id))?;
    }
    let q = Query {
        filter: Filter {
            user_ids: id.map(|i| vec![i]),
            logout_from: Some(from),
            logout_to: Some(to - 1),
            ..Default::default()
        },
        order: Order {
            sort_by: SortBy::ConnectionLogId,
            desc: false,
        },
        from: offset,
        to: offset.saturating_add(limit),
    };
    let (totals, rows) = ctx.st.connections(&ctx.caller, &q)?;
    let list: Vec<Value> = rows.iter().map(|x| xdr_json(ctx, x)).collect();
    Ok(Answer::new(json!({
        "xdrs": list,
        "total": totals.rows,
        "credit_used": money(totals.credit),
    })))
}

/// `xdrs.cancel` (`id_clients`, `from`, `to`, `notes`): refunds the client's usage charges
/// whose xDR logout time is in `[from, to)` and that were not refunded before.
pub(crate) fn xdrs_cancel(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let (from, to) = range(ctx, a);
    let notes = a.text("notes").unwrap_or_default();
    a.check()?;
    let (id, from, to) = (got(id, "id_clients")?, got(from, "from")?, got(to, "to")?);
    let notes = if notes.is_empty() {
        "vcs xdrs.cancel".to_string()
    } else {
        notes
    };
    let out = ctx.st.cancel_charges(&ctx.caller, id, from, to, notes)?;
    Ok(Answer::with_message(
        json!({
            "cancelled": out.refunded,
            "amount": money(out.amount),
            "credit": money(out.balance),
            "id_journal": out.journal_id,
        }),
        format!("{} charge(s) of client {id} cancelled", out.refunded),
    ))
}

/// `events.list` (`after`: an event id, default 0; `limit` default 100, at most 10000):
/// provisioning events with their delivery state per hook.
pub(crate) fn events_list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let after = a.count("after", 0, i64::MAX as usize);
    let limit = a.count("limit", 100, 10_000);
    a.check()?;
    let list = ctx.st.events(after as i64, limit)?;
    let events: Vec<Value> = list
        .iter()
        .map(|e| {
            json!({
                "event_id": e.event.id,
                "event": e.event.name,
                "id_clients": e.event.user_id,
                "time": fmt_time(&ctx.cat, e.event.created_at),
                "body": serde_json::from_str::<Value>(&e.event.body).unwrap_or(Value::Null),
                "hooks": e.hooks.iter().map(|(h, state, err)| json!({
                    "hook": h,
                    "state": state,
                    "error": err,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Answer::new(json!({ "events": events })))
}
