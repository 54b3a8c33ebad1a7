//! VCS `clients_packages.*` (DESIGN.md Part 2 "Packages and expiry"): assign a
//! `[[package]]` to a client, activate, deactivate, renew and close it, and list a client's
//! packages — each one call of `Service::packages`, the same the IBSng extensions make.

use ratel_engine::packages::{ClientPackage, PackageOp};
use serde_json::{json, Value};

use super::{fmt_time, got, Answer, Args, Ctx, Outcome};

/// A client package as this dialect shows it (times `YYYY-MM-DD HH:MM:SS` in the rating
/// time zone; a time never set is null).
fn package_json(ctx: &Ctx<'_>, p: &ClientPackage) -> Value {
    ratel_engine::ledger::package_json_with(p, |t| fmt_time(&ctx.cat, t))
}

fn answer(ctx: &Ctx<'_>, pkgs: &[ClientPackage], message: String) -> Outcome {
    let p = pkgs
        .first()
        .map(|p| package_json(ctx, p))
        .unwrap_or(Value::Null);
    Ok(Answer::with_message(
        json!({ "client_package": p }),
        message,
    ))
}

/// `clients_packages.list` (`id_clients`; `closed` true to include closed ones):
/// `{"clients_packages": [...]}`.
pub(crate) fn list(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let closed = a.flag("closed");
    a.check()?;
    let id = got(id, "id_clients")?;
    // Reading a client's packages is reading the client (a NORMAL user: its own only).
    ctx.st
        .client(&ctx.caller, &crate::service::ClientRef::Id(id))?;
    let pkgs = ctx.st.client_packages(id, closed.unwrap_or(false))?;
    let list: Vec<Value> = pkgs.iter().map(|p| package_json(ctx, p)).collect();
    Ok(Answer::new(json!({ "clients_packages": list })))
}

/// `clients_packages.assign` (`id_clients`, `package`): answers the new
/// `id_clients_packages` in `client_package`.
pub(crate) fn assign(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients");
    let package = a.req_text("package");
    a.check()?;
    let (user_id, package) = (got(id, "id_clients")?, got(package, "package")?);
    let pkgs = ctx.st.packages(
        &ctx.caller,
        PackageOp::Assign {
            user_id,
            package: package.clone(),
        },
    )?;
    answer(
        ctx,
        &pkgs,
        format!("package {package} assigned to client {user_id}"),
    )
}

/// `clients_packages.activate` (`id_clients_packages`; `start` optional, at most 366 days
/// back: the periods since are renewed at once).
pub(crate) fn activate(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    let id = a.req_int("id_clients_packages");
    let at = a.time(ctx.st, "start");
    a.check()?;
    let id = got(id, "id_clients_packages")?;
    let pkgs = ctx
        .st
        .packages(&ctx.caller, PackageOp::Activate { id, at })?;
    answer(ctx, &pkgs, format!("client package {id} activated"))
}

/// `clients_packages.deactivate|renew|close` (`id_clients_packages`).
fn by_id(ctx: &Ctx<'_>, a: &mut Args<'_>, op: fn(i64) -> PackageOp, done: &str) -> Outcome {
    let id = a.req_int("id_clients_packages");
    a.check()?;
    let id = got(id, "id_clients_packages")?;
    let pkgs = ctx.st.packages(&ctx.caller, op(id))?;
    answer(ctx, &pkgs, format!("client package {id} {done}"))
}

pub(crate) fn deactivate(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    by_id(ctx, a, |id| PackageOp::Deactivate { id }, "deactivated")
}

pub(crate) fn renew(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    by_id(ctx, a, |id| PackageOp::Renew { id }, "renewed")
}

pub(crate) fn close(ctx: &Ctx<'_>, a: &mut Args<'_>) -> Outcome {
    by_id(ctx, a, |id| PackageOp::Close { id }, "closed")
}
