//! The billing domain (DESIGN.md Part 2, "The domain model"): clients and their accounts,
//! companies, the client status, profile fields, journal kinds, and the checks every
//! dialect's request goes through before it becomes a command to the core. Plain values and
//! pure functions: the ledger stores them, the core applies them, the API's service layer
//! builds them.

use rust_decimal::Decimal;

/// What kind of identifier an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountKind {
    /// A RADIUS User-Name (the client's username is its first radius account).
    Radius,
    /// A CDR `accountcode`.
    Voip,
    /// A phone number (digits only, see [`normalize_dn`]).
    Dn,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Radius => "radius",
            AccountKind::Voip => "voip",
            AccountKind::Dn => "dn",
        }
    }

    pub fn parse(s: &str) -> Option<AccountKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "radius" => Some(AccountKind::Radius),
            "voip" => Some(AccountKind::Voip),
            "dn" => Some(AccountKind::Dn),
            _ => None,
        }
    }
}

/// An identifier that bills to a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    pub kind: AccountKind,
    pub ident: String,
}

/// Longest account identifier (bytes).
pub const MAX_IDENT_BYTES: usize = 128;

impl Account {
    /// An account as stored: a DN reduced to its digits, others trimmed; refused when empty,
    /// too long or holding control characters or spaces.
    pub fn new(kind: AccountKind, ident: &str) -> Result<Account, String> {
        let ident = match kind {
            AccountKind::Dn => normalize_dn(ident)
                .ok_or_else(|| format!("dn {ident:?}: a phone number needs digits only (separators \" -.()\" and a leading + or 00 are dropped)"))?,
            _ => {
                let t = ident.trim();
                if t.is_empty()
                    || t.len() > MAX_IDENT_BYTES
                    || t.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(format!(
                        "{} account {t:?}: 1 to {MAX_IDENT_BYTES} bytes, no spaces or control characters",
                        kind.as_str()
                    ));
                }
                t.to_string()
            }
        };
        Ok(Account { kind, ident })
    }

    /// `kind:ident`, as the import file and errors write it.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.ident)
    }

    /// Parses `kind:id;kind:id` (the import file's `accounts` column).
    pub fn parse_list(s: &str) -> Result<Vec<Account>, String> {
        let mut out = Vec::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, ident) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected kind:identifier"))?;
            let kind = AccountKind::parse(kind).ok_or_else(|| {
                format!("{part:?}: account kind {kind:?} is not radius, voip or dn")
            })?;
            out.push(Account::new(kind, ident)?);
        }
        Ok(out)
    }
}

/// A phone number as matched: digits only, separators ` -.()` removed, a leading `+` or
/// `00` dropped. `None` when anything else is in it or no digit is left.
pub fn normalize_dn(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut digits = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let digits = if s.trim().starts_with('+') {
        digits
    } else {
        digits
            .strip_prefix("00")
            .map(str::to_string)
            .unwrap_or(digits)
    };
    (!digits.is_empty() && digits.len() <= 32).then_some(digits)
}

/// The caller number of a CDR as a DN lookup key (digits only), or `None` when it is not a
/// phone number (a SIP URI, a name). Allocation-free when it is already digits.
pub fn dn_key(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    let t = s.trim();
    if !t.is_empty() && t.len() <= 32 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match t.strip_prefix("00") {
            Some(rest) if !rest.is_empty() => std::borrow::Cow::Borrowed(rest),
            _ => std::borrow::Cow::Borrowed(t),
        });
    }
    normalize_dn(t).map(std::borrow::Cow::Owned)
}

/// A client's status. Deleted clients are not a status: they vanish from lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStatus {
    Active,
    Locked,
    Archived,
}

impl ClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Active => "active",
            ClientStatus::Locked => "locked",
            ClientStatus::Archived => "archived",
        }
    }

    /// From what the ledger keeps: archived wins over a lock.
    pub fn of(lock_reason: Option<&str>, archived: bool) -> ClientStatus {
        if archived {
            ClientStatus::Archived
        } else if lock_reason.is_some() {
            ClientStatus::Locked
        } else {
            ClientStatus::Active
        }
    }
}

/// What a journal row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalKind {
    /// An operator's credit change (also a client's initial credit).
    Payment,
    /// Rated records (RADIUS updates, CDR blocks).
    Usage,
    /// A package's activation or renewal fee.
    PackageFee,
    /// A cancellation of usage charges.
    Refund,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Payment => "payment",
            JournalKind::Usage => "usage",
            JournalKind::PackageFee => "package_fee",
            JournalKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<JournalKind> {
        Some(match s {
            "payment" => JournalKind::Payment,
            "usage" => JournalKind::Usage,
            "package_fee" => JournalKind::PackageFee,
            "refund" => JournalKind::Refund,
            _ => return None,
        })
    }

    pub const ALL: [JournalKind; 4] = [
        JournalKind::Payment,
        JournalKind::Usage,
        JournalKind::PackageFee,
        JournalKind::Refund,
    ];
}

/// The profile fields DESIGN.md names (free strings, null when unset); any `custom.<key>`
/// is accepted too.
pub const PROFILE_FIELDS: &[&str] = &[
    "name",
    "email",
    "email_tech",
    "email_billing",
    "email_rates",
    "company_name",
    "address",
    "fullname",
    "street",
    "House",
    "Flat",
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
    "gender",
    "birthday",
    "bankaccount",
    "bankmfo",
    "taxcode",
    "deliverytype",
    "privilegediscount",
];

/// Longest profile value (characters) and custom key (bytes).
pub const MAX_PROFILE_VALUE: usize = 4096;
pub const MAX_CUSTOM_KEY: usize = 64;

/// Checks a profile field name and value; the error names the field.
pub fn check_profile(key: &str, value: &str) -> Result<(), String> {
    let known = PROFILE_FIELDS.contains(&key);
    let custom = key.strip_prefix("custom.").is_some_and(|k| {
        !k.is_empty()
            && k.len() <= MAX_CUSTOM_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    });
    if !known && !custom {
        return Err(format!(
            "{key:?} is not a profile field (one of {} or custom.<key>)",
            PROFILE_FIELDS.join(", ")
        ));
    }
    if value.chars().count() > MAX_PROFILE_VALUE || value.chars().any(|c| c == '\0') {
        return Err(format!(
            "{key}: at most {MAX_PROFILE_VALUE} characters, no NUL"
        ));
    }
    Ok(())
}

/// Checks a username (the IBSng `normal_username`, the client's first radius account).
pub fn check_username(u: &str) -> Result<(), String> {
    if u.is_empty()
        || u.len() > MAX_IDENT_BYTES
        || u.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "username {:?}: 1 to {MAX_IDENT_BYTES} bytes, no spaces or control characters",
            u.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// The default company (DESIGN.md: `Main`, id 1).
pub const MAIN_COMPANY: i64 = 1;

/// A company (reseller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Company {
    pub id: i64,
    pub name: String,
    /// 10 = reseller.
    pub kind: i64,
    pub prepaid: bool,
    pub credit: Decimal,
}

/// A client to create.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    /// `None`: created without credentials (IBSng's addNewUsers); set later.
    pub username: Option<String>,
    pub password: Option<String>,
    pub group: String,
    /// `None`: the default company.
    pub company: Option<String>,
    pub credit: Decimal,
    pub comment: String,
    /// Accounts beyond the username (which is the first radius account).
    pub accounts: Vec<Account>,
    pub profile: Vec<(String, String)>,
}

/// A change to one client; `None` fields are left alone. Applied as a whole or not at all.
#[derive(Debug, Clone, Default)]
pub struct ClientChange {
    /// New username and password (both, as IBSng's `normal_user_spec` sets them).
    pub credentials: Option<(String, String)>,
    pub group: Option<String>,
    /// Company by name.
    pub company: Option<String>,
    /// `Some(Some(reason))` locks, `Some(None)` unlocks.
    pub lock: Option<Option<String>>,
    pub archived: Option<bool>,
    /// Fields to set (`value: None` clears the field).
    pub profile: Vec<(String, Option<String>)>,
    pub add_accounts: Vec<Account>,
    pub remove_accounts: Vec<Account>,
}

impl ClientChange {
    pub fn is_empty(&self) -> bool {
        self.credentials.is_none()
            && self.group.is_none()
            && self.company.is_none()
            && self.lock.is_none()
            && self.archived.is_none()
            && self.profile.is_empty()
            && self.add_accounts.is_empty()
            && self.remove_accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_are_digits() {
        for (raw, want) in [
            ("+1 (917) 375-0980", Some("19173750980")),
            ("0019173750980", Some("19173750980")),
            ("19173750980", Some("19173750980")),
            ("+49.30.1234", Some("49301234")),
            ("1001", Some("1001")),
            ("sip:alice@example.com", None),
            ("", None),
            ("+", None),
            ("12a4", None),
        ] {
            assert_eq!(normalize_dn(raw).as_deref(), want, "{raw}");
            assert_eq!(dn_key(raw).as_deref(), want, "{raw}");
        }
        assert_eq!(dn_key("00").as_deref(), Some("00"));
    }

    #[test]
    fn account_lists() {
        let a = Account::parse_list("radius:alice; voip:1001;dn:+1 917 375 0980").unwrap();
        assert_eq!(
            a.iter().map(Account::label).collect::<Vec<_>>(),
            ["radius:alice", "voip:1001", "dn:19173750980"]
        );
        assert!(Account::parse_list("sip:x").is_err());
        assert!(Account::parse_list("alice").is_err());
        assert!(Account::parse_list("radius:a b").is_err());
        assert!(Account::parse_list("dn:abc").is_err());
    }

    #[test]
    fn profile_keys() {
        assert!(check_profile("email", "a@b").is_ok());
        assert!(check_profile("House", "12").is_ok());
        assert!(check_profile("custom.vat_id", "x").is_ok());
        assert!(check_profile("custom.", "x").is_err());
        assert!(check_profile("password", "x").is_err());
        assert!(check_profile("email", &"x".repeat(5000)).is_err());
    }
}
