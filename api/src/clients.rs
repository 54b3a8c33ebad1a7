//! The service layer's client directory (DESIGN.md Part 2, "The domain model"): client lists
//! with filters and pages, accounts one at a time, payments and the money history a client
//! sees. An `impl Service` block beside `service.rs` (as `report.rs` is): the rules live
//! here once, whichever dialect calls them (VCS `clients.list`, `accounts.*`,
//! `payments.*` first).

use ratel_engine::commands::ChangeType;
use ratel_engine::domain::{Account, AccountKind, ClientChange, ClientStatus, JournalKind};
use ratel_engine::ledger::JournalEntry;
use rust_decimal::Decimal;

use crate::service::{
    Caller, ClientRef, ClientView, NotFound, Service, ServiceError, ServiceResult,
};

/// Which clients a list shows, and which page of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientQuery {
    pub status: Option<ClientStatus>,
    pub company_id: Option<i64>,
    /// A part of the display name, any case.
    pub name: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// Most clients one list page holds.
pub const MAX_CLIENT_PAGE: usize = 1_000;
/// Most clients of one group a list reads.
const MAX_GROUP_SCAN: usize = 10_000_000;

/// The journal kinds a client's payment history shows: every movement but usage.
pub const PAYMENT_KINDS: [JournalKind; 3] = [
    JournalKind::Payment,
    JournalKind::PackageFee,
    JournalKind::Refund,
];

/// A client's display name: its profile `name`, else its username (DESIGN.md: `name`
/// defaults to the username); `None` for a client that has neither yet.
pub fn display_name(profile: &[(String, String)], username: Option<&str>) -> Option<String> {
    profile
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .or_else(|| username.map(str::to_string))
}

impl ClientView {
    /// See [`display_name`].
    pub fn display_name(&self) -> Option<String> {
        display_name(&self.profile, self.record.username.as_deref())
    }

    /// A profile field, `None` when unset.
    pub fn profile_value(&self, key: &str) -> Option<&str> {
        self.profile
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn admin_only(caller: &Caller, what: &str) -> ServiceResult<()> {
    match caller {
        Caller::Admin { .. } => Ok(()),
        Caller::User { .. } => Err(ServiceError::denied(format!("{what} needs an admin"))),
    }
}

impl Service {
    /// Clients matching `q` by id: how many match, and the page `offset..offset + limit`.
    ///
    /// Reads every client of every configured group (the ledger's read trait has no
    /// filtered listing yet), so a list costs O(clients); clients of a group no longer in
    /// the config are not listed.
    pub fn list_clients(
        &self,
        caller: &Caller,
        q: &ClientQuery,
    ) -> ServiceResult<(usize, Vec<ClientView>)> {
        admin_only(caller, "listing clients")?;
        if q.limit == 0 || q.limit > MAX_CLIENT_PAGE {
            return Err(ServiceError::invalid(format!(
                "limit: 1 to {MAX_CLIENT_PAGE} clients a page"
            )));
        }
        let needle = q.name.as_deref().map(str::to_lowercase);
        let cat = self.catalog.get();
        let mut ids = Vec::new();
        for g in &cat.groups {
            for r in self.read(|l| l.clients_in_group(&g.name, MAX_GROUP_SCAN))? {
                if q.status.is_some_and(|s| r.status() != s)
                    || q.company_id.is_some_and(|c| r.company_id != c)
                {
                    continue;
                }
                if let Some(n) = &needle {
                    let profile = self.read(|l| l.profile_of(r.user_id))?;
                    let name = display_name(&profile, r.username.as_deref()).unwrap_or_default();
                    if !name.to_lowercase().contains(n.as_str()) {
                        continue;
                    }
                }
                ids.push(r.user_id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let total = ids.len();
        let mut page = Vec::new();
        for id in ids.into_iter().skip(q.offset).take(q.limit) {
            match self.client(caller, &ClientRef::Id(id)) {
                Ok(v) => page.push(v),
                // Deleted since it was listed.
                Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((total, page))
    }

    /// The credentials a `password` given with a radius account sets. A client has one
    /// password, which each of its radius accounts authenticates with; so a password is
    /// the client's: a client without a username yet takes this account as its username.
    fn account_password(
        view: &ClientView,
        account: &Account,
        password: String,
    ) -> ServiceResult<(String, String)> {
        if account.kind != AccountKind::Radius {
            return Err(ServiceError::invalid(
                "password: only radius accounts have a password (the client's)",
            ));
        }
        if password.is_empty() {
            return Err(ServiceError::invalid("password: must not be empty"));
        }
        let username = view
            .record
            .username
            .clone()
            .unwrap_or_else(|| account.ident.clone());
        Ok((username, password))
    }

    /// Adds an account to a client. A `password` (radius accounts only) becomes the
    /// client's password; a client without a username takes this radius account as it.
    pub fn add_account(
        &self,
        caller: &Caller,
        user_id: i64,
        account: Account,
        password: Option<String>,
    ) -> ServiceResult<()> {
        admin_only(caller, "changing accounts")?;
        let view = self.client(caller, &ClientRef::Id(user_id))?;
        let mut change = ClientChange::default();
        match password {
            Some(pw) => {
                let creds = Self::account_password(&view, &account, pw)?;
                if creds.0 != account.ident {
                    change.add_accounts.push(account);
                }
                change.credentials = Some(creds);
            }
            None => change.add_accounts.push(account),
        }
        self.update_client(caller, user_id, change)
    }

    /// Renames an account of a client (`new_ident`) and/or sets the client's password
    /// through one of its radius accounts. Renaming the radius account that is the
    /// client's username renames the client (its password is kept unless a new one is
    /// given).
    pub fn edit_account(
        &self,
        caller: &Caller,
        user_id: i64,
        account: &Account,
        new_ident: Option<&str>,
        password: Option<String>,
    ) -> ServiceResult<()> {
        admin_only(caller, "changing accounts")?;
        let view = self.client(caller, &ClientRef::Id(user_id))?;
        if !view.accounts.contains(account) {
            return Err(not_an_account(account, user_id));
        }
        let is_username = account.kind == AccountKind::Radius
            && view.record.username.as_deref() == Some(account.ident.as_str());
        let mut change = ClientChange::default();
        let renamed = match new_ident {
            Some(n) => {
                let new = Account::new(account.kind, n).map_err(ServiceError::Invalid)?;
                (new != *account).then_some(new)
            }
            None => None,
        };
        match (renamed, password) {
            (Some(new), pw) if is_username => {
                let pw = match pw {
                    Some(p) => Self::account_password(&view, &new, p)?.1,
                    None => view.record.password.clone().ok_or_else(|| {
                        ServiceError::invalid("password: required to rename a client without one")
                    })?,
                };
                change.credentials = Some((new.ident, pw));
            }
            (Some(new), pw) => {
                if let Some(p) = pw {
                    change.credentials = Some(Self::account_password(&view, &new, p)?);
                }
                change.remove_accounts.push(account.clone());
                change.add_accounts.push(new);
            }
            (None, Some(p)) => {
                change.credentials = Some(Self::account_password(&view, account, p)?);
            }
            (None, None) => {
                return Err(ServiceError::invalid(
                    "nothing to change: give a new name or a password",
                ))
            }
        }
        self.update_client(caller, user_id, change)
    }

    /// Takes an account off a client (its history stays with the client; the username's
    /// radius account cannot be removed, only renamed).
    pub fn remove_account(
        &self,
        caller: &Caller,
        user_id: i64,
        account: Account,
    ) -> ServiceResult<()> {
        admin_only(caller, "changing accounts")?;
        let view = self.client(caller, &ClientRef::Id(user_id))?;
        if !view.accounts.contains(&account) {
            return Err(not_an_account(&account, user_id));
        }
        let change = ClientChange {
            remove_accounts: vec![account],
            ..Default::default()
        };
        self.update_client(caller, user_id, change)
    }

    /// A payment: `amount` (more than 0) onto the client's credit, one `payment` journal
    /// row with `comment` and the caller; its journal id.
    pub fn add_payment(
        &self,
        caller: &Caller,
        user_id: i64,
        amount: Decimal,
        comment: String,
    ) -> ServiceResult<i64> {
        if amount <= Decimal::ZERO {
            return Err(ServiceError::invalid("amount: a payment is more than 0"));
        }
        let ids = self.change_credit(caller, vec![user_id], amount, ChangeType::Add, comment)?;
        ids.first()
            .copied()
            .ok_or_else(|| ServiceError::Internal("the payment made no journal row".into()))
    }

    /// A client's money history over `[from, to)`: its journal rows other than usage
    /// (payments, package fees, refunds), oldest first.
    pub fn payments(
        &self,
        caller: &Caller,
        user_id: i64,
        from: Option<i64>,
        to: Option<i64>,
    ) -> ServiceResult<Vec<JournalEntry>> {
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                return Err(ServiceError::invalid(
                    "the period is empty: to must be after from",
                ));
            }
        }
        self.journal(caller, user_id, from, to, &PAYMENT_KINDS)
    }
}

fn not_an_account(a: &Account, user_id: i64) -> ServiceError {
    ServiceError::NotFound {
        what: NotFound::Other,
        message: format!(
            "account {} is not an account of client {user_id}",
            a.label()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_name_defaults_to_the_username() {
        let named = vec![
            ("email".to_string(), "a@b".to_string()),
            ("name".into(), "Customer A".into()),
        ];
        assert_eq!(
            display_name(&named, Some("alice")).as_deref(),
            Some("Customer A")
        );
        assert_eq!(
            display_name(&named[..1], Some("alice")).as_deref(),
            Some("alice")
        );
        assert_eq!(display_name(&[], None), None);
    }
}
