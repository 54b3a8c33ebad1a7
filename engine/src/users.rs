//! Bulk subscriber import (`ratel users import FILE.csv`, header
//! `username,password,group,credit`): every line is checked (group known, password not
//! empty, credit a decimal within the credit range, username new and unique in the file);
//! bad lines are reported with file, line, field and reason, and the good ones are created
//! in one transaction with their initial credit. Also the credit range itself
//! ([`check_credit`]), which the API applies to every amount it accepts.

use std::collections::HashSet;
use std::path::Path;

use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::csv::{scan_records_with, split_fields, strip_bom, Dialect};
use crate::ledger::{Ledger, LedgerError, NewUser};

/// Largest magnitude, in currency units, of a subscriber's credit and of any amount an
/// operator moves it by (API or import): 10^15. It keeps every balance and sum far inside
/// what the xDR files can hold (Decimal128(38, 10), read back into a 96-bit Decimal: about
/// 7.9e18) and what Decimal arithmetic can add without overflow.
pub const MAX_CREDIT_UNITS: i64 = 1_000_000_000_000_000;
/// Most decimal places of a credit amount (the scale of the xDR money columns).
pub const MAX_CREDIT_DECIMALS: u32 = 10;

/// Checks an amount against the credit range: |amount| <= 10^15 with at most 10 decimal
/// places (trailing zeros do not count). The error says which bound was crossed.
pub fn check_credit(amount: Decimal) -> Result<Decimal, String> {
    let n = amount.normalize();
    if n.scale() > MAX_CREDIT_DECIMALS {
        return Err(format!(
            "{amount} has more than {MAX_CREDIT_DECIMALS} decimal places"
        ));
    }
    if n.abs() > Decimal::from(MAX_CREDIT_UNITS) {
        return Err(format!(
            "{amount} is outside the credit range -10^15..=10^15"
        ));
    }
    Ok(amount)
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub created: u64,
    /// Lines naming a username that exists already (skipped, so a re-import is harmless).
    pub existing: u64,
    pub bad: Vec<String>,
}

/// Errors that stop an import as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:1: header: expected username,password,group,credit")]
    Header { path: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Imports subscribers from a CSV file.
pub fn import_users(
    catalog: &Catalog,
    ledger: &mut Ledger,
    path: &Path,
    now: i64,
) -> Result<ImportSummary, ImportError> {
    let p = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| ImportError::Io {
        path: p.clone(),
        source,
    })?;
    let buf = strip_bom(&raw);
    let mut spans = Vec::new();
    scan_records_with(Dialect::DOC, buf, 1, true, &mut spans);
    let mut spans = spans.into_iter().filter(|s| s.end > s.start);
    let header = spans
        .next()
        .ok_or_else(|| ImportError::Header { path: p.clone() })?;
    let cols: Vec<String> = split_fields(&buf[header.start..header.end])
        .map(|f| {
            String::from_utf8_lossy(&f)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase()
        })
        .collect();
    if cols.len() < 4 || cols[..4] != ["username", "password", "group", "credit"] {
        return Err(ImportError::Header { path: p });
    }
    let mut summary = ImportSummary::default();
    let mut seen = HashSet::new();
    let mut new_users = Vec::new();
    for s in spans {
        if let Some(e) = s.error {
            summary
                .bad
                .push(format!("{p}:{}: line: {}", s.line, e.reason()));
            continue;
        }
        let f: Vec<String> = split_fields(&buf[s.start..s.end])
            .map(|f| String::from_utf8_lossy(&f).trim().to_string())
            .collect();
        let bad = |field: &str, reason: String| format!("{p}:{}: {field}: {reason}", s.line);
        if f.len() < 4 {
            summary
                .bad
                .push(bad("line", format!("expected 4 fields, found {}", f.len())));
            continue;
        }
        let (username, password, group, credit) = (&f[0], &f[1], &f[2], &f[3]);
        if username.is_empty() || username.chars().any(|c| c.is_control()) {
            summary.bad.push(bad(
                "username",
                "empty or contains control characters".into(),
            ));
            continue;
        }
        if catalog.group_index(group).is_none() {
            summary.bad.push(bad(
                "group",
                format!("no group named {group:?} in the config"),
            ));
            continue;
        }
        if password.is_empty() {
            summary.bad.push(bad(
                "password",
                "empty (a subscriber needs a password)".into(),
            ));
            continue;
        }
        let credit: Decimal = match credit.parse::<Decimal>().map(check_credit) {
            Ok(Ok(c)) => c,
            Ok(Err(reason)) => {
                summary.bad.push(bad("credit", reason));
                continue;
            }
            Err(_) => {
                summary
                    .bad
                    .push(bad("credit", format!("{credit:?} is not a decimal number")));
                continue;
            }
        };
        if !seen.insert(username.clone()) {
            summary.bad.push(bad(
                "username",
                format!("{username:?} appears twice in the file"),
            ));
            continue;
        }
        if ledger.user_by_name(username)?.is_some() {
            summary.existing += 1;
            continue;
        }
        new_users.push(NewUser {
            username: Some(username.clone()),
            password: Some(password.clone()),
            group_name: group.clone(),
            credit,
            comment: format!(
                "import {}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        });
    }
    summary.created = ledger.add_users(&new_users, now)?.len() as u64;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_range() {
        let ok = [
            "0",
            "-1000000000000000",
            "1000000000000000",
            "0.0000000001",
            "1.50000000000000000",
        ];
        for s in ok {
            assert!(check_credit(s.parse().unwrap()).is_ok(), "{s}");
        }
        let bad = [
            "1000000000000000.0000000001",
            "-79000000000000000000000000000",
            "0.00000000001",
            "8000000000000000000",
        ];
        for s in bad {
            assert!(check_credit(s.parse().unwrap()).is_err(), "{s}");
        }
    }

    #[test]
    fn import_refuses_empty_passwords_and_huge_credits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = "[storage]\ndata_dir = \"data\"\n[[group]]\nname = \"g\"\ncharge_rules = [\"all\"]\n[[charge_rule]]\nname = \"all\"\ndays = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"]\nstart = \"00:00\"\nend = \"24:00\"\nprice_per_minute = \"0\"\nprice_per_gb = \"0\"\n";
        let lc = crate::config::LoadedConfig::from_str(
            cfg,
            crate::config::ConfigSource::File(dir.path().join("t.toml")),
            dir.path().to_path_buf(),
        )
        .unwrap();
        let catalog = Catalog::build(&lc).unwrap();
        let csv = dir.path().join("u.csv");
        std::fs::write(
            &csv,
            "username,password,group,credit\nok,pw,g,1\nnopw,,g,1\nhuge,pw,g,8000000000000000000\n",
        )
        .unwrap();
        let mut ledger = Ledger::open(&catalog.data_dir).unwrap();
        let s = import_users(&catalog, &mut ledger, &csv, 0).unwrap();
        assert_eq!(s.created, 1);
        assert_eq!(s.bad.len(), 2, "{:?}", s.bad);
        assert!(s.bad[0].contains(":3: password:"), "{}", s.bad[0]);
        assert!(s.bad[1].contains(":4: credit:"), "{}", s.bad[1]);
    }
}
