//! Bulk subscriber import (`ratel users import FILE.csv`, header
//! `username,password,group,credit`): every line is checked (group known, credit a decimal,
//! username new and unique in the file); bad lines are reported with file, line, field and
//! reason, and the good ones are created in one transaction with their initial credit.

use std::collections::HashSet;
use std::path::Path;

use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::csv::{scan_records, split_fields};
use crate::ledger::{Ledger, LedgerError, NewUser};

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
    let buf = std::fs::read(path).map_err(|source| ImportError::Io {
        path: p.clone(),
        source,
    })?;
    let mut spans = Vec::new();
    scan_records(&buf, 1, true, &mut spans);
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
        let credit: Decimal = match credit.parse() {
            Ok(c) => c,
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
