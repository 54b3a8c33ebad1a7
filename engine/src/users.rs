//! Bulk client import (`ratel users import FILE.csv`, header `username,password,group,credit`
//! then optional `company`, `accounts` (`kind:id;kind:id`), profile fields and
//! `custom.<key>`): every line is checked (group known, password not empty, credit a
//! decimal within the credit range, username new and unique in the file, accounts free);
//! bad lines are reported with file, line, field and reason, and the good ones are created
//! with their initial credit by the core's import command — directly, or through the
//! running server's API while `serve` holds the data dir. Also the credit range itself
//! ([`check_credit`]), which the API applies to every amount it accepts.

use std::collections::HashSet;
use std::path::Path;

use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::commands::{Command, ImportOutcome, ImportRow};
use crate::csv::{scan_records_with, split_fields, strip_bom, Dialect};
use crate::domain::{check_profile, check_username, Account, NewClient};
use crate::ledger::{Ledger, LedgerError};

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
    /// `file:line: field: reason` of every line refused.
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
    #[error("{path}:1: header: {reason}")]
    Header { path: String, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Command(String),
}

/// The columns an import file may have: the first four are required, in this order; the
/// others are optional, in any order.
pub const REQUIRED_COLUMNS: [&str; 4] = ["username", "password", "group", "credit"];

/// What an optional column sets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    Company,
    Accounts,
    Profile(String),
}

/// Parses an import file's bytes (header first) into rows for the core, and the lines it
/// refuses (`name:line: field: reason`). `first_line` is the file line of the header (a
/// part of a file sent through the API starts later). Checks that need no ledger happen
/// here: fields present, credit a decimal in range, password not empty, accounts and
/// profile fields well formed, a username once in the file.
pub fn parse_import(
    name: &str,
    bytes: &[u8],
    first_line: u64,
) -> Result<(Vec<ImportRow>, Vec<String>), ImportError> {
    let buf = strip_bom(bytes);
    let mut spans = Vec::new();
    scan_records_with(Dialect::DOC, buf, first_line, true, &mut spans);
    let mut spans = spans.into_iter().filter(|s| s.end > s.start);
    let header_err = |reason: String| ImportError::Header {
        path: name.to_string(),
        reason,
    };
    let header = spans.next().ok_or_else(|| {
        header_err(format!(
            "empty file; expected {}",
            REQUIRED_COLUMNS.join(",")
        ))
    })?;
    let cols: Vec<String> = split_fields(&buf[header.start..header.end])
        .map(|f| {
            String::from_utf8_lossy(&f)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    if cols.len() < 4
        || cols[..4]
            .iter()
            .zip(REQUIRED_COLUMNS)
            .any(|(c, want)| !c.eq_ignore_ascii_case(want))
    {
        return Err(header_err(format!(
            "expected {} first, then any of company, accounts, {} or custom.<key>",
            REQUIRED_COLUMNS.join(","),
            crate::domain::PROFILE_FIELDS.join(", ")
        )));
    }
    let mut extra = Vec::new();
    for c in &cols[4..] {
        let lower = c.to_ascii_lowercase();
        let col = if lower == "company" || lower == "isp_name" {
            Column::Company
        } else if lower == "accounts" {
            Column::Accounts
        } else if let Some(f) = crate::domain::PROFILE_FIELDS
            .iter()
            .find(|f| f.eq_ignore_ascii_case(c))
        {
            Column::Profile(f.to_string())
        } else if c.starts_with("custom.") && check_profile(c, "").is_ok() {
            Column::Profile(c.clone())
        } else {
            return Err(header_err(format!(
                "column {c:?} is not company, accounts, a profile field or custom.<key>"
            )));
        };
        if extra.contains(&col) {
            return Err(header_err(format!("column {c:?} appears twice")));
        }
        extra.push(col);
    }
    let mut bad = Vec::new();
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for s in spans {
        let line_bad =
            |field: &str, reason: String| format!("{name}:{}: {field}: {reason}", s.line);
        if let Some(e) = s.error {
            bad.push(line_bad("line", e.reason().to_string()));
            continue;
        }
        let f: Vec<String> = split_fields(&buf[s.start..s.end])
            .map(|f| String::from_utf8_lossy(&f).trim().to_string())
            .collect();
        if f.len() < 4 {
            bad.push(line_bad(
                "line",
                format!("expected at least 4 fields, found {}", f.len()),
            ));
            continue;
        }
        if f.len() > cols.len() {
            bad.push(line_bad(
                "line",
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
            continue;
        }
        let (username, password, group, credit) = (&f[0], &f[1], &f[2], &f[3]);
        if let Err(reason) = check_username(username) {
            bad.push(line_bad("username", reason));
            continue;
        }
        if password.is_empty() {
            bad.push(line_bad(
                "password",
                "empty (a subscriber needs a password)".into(),
            ));
            continue;
        }
        let credit: Decimal = match credit.parse::<Decimal>().map(check_credit) {
            Ok(Ok(c)) => c,
            Ok(Err(reason)) => {
                bad.push(line_bad("credit", reason));
                continue;
            }
            Err(_) => {
                bad.push(line_bad(
                    "credit",
                    format!("{credit:?} is not a decimal number"),
                ));
                continue;
            }
        };
        let mut client = NewClient {
            username: Some(username.clone()),
            password: Some(password.clone()),
            group: group.clone(),
            credit,
            comment: format!("import {name}"),
            ..Default::default()
        };
        let mut refused = None;
        for (col, value) in extra.iter().zip(f.iter().skip(4)) {
            if value.is_empty() {
                continue;
            }
            match col {
                Column::Company => client.company = Some(value.clone()),
                Column::Accounts => match Account::parse_list(value) {
                    Ok(a) => client.accounts = a,
                    Err(reason) => refused = Some(line_bad("accounts", reason)),
                },
                Column::Profile(k) => match check_profile(k, value) {
                    Ok(()) => client.profile.push((k.clone(), value.clone())),
                    Err(reason) => refused = Some(line_bad(k, reason)),
                },
            }
        }
        if let Some(r) = refused {
            bad.push(r);
            continue;
        }
        if !seen.insert(username.clone()) {
            bad.push(line_bad(
                "username",
                format!("{username:?} appears twice in the file"),
            ));
            continue;
        }
        rows.push(ImportRow {
            line: s.line,
            client,
        });
    }
    Ok((rows, bad))
}

/// Imports subscribers from a CSV file into a data dir this process holds (no `serve`
/// running): the same command the core runs for an import sent through the API.
pub fn import_users(
    catalog: &Catalog,
    ledger: &mut Ledger,
    path: &Path,
    _now: i64,
) -> Result<ImportSummary, ImportError> {
    let p = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| ImportError::Io {
        path: p.clone(),
        source,
    })?;
    let (rows, bad) = parse_import(&p, &raw, 1)?;
    let mut summary = ImportSummary {
        bad,
        ..Default::default()
    };
    let mut rater = crate::batch::BatchRater::new(catalog, ledger)
        .map_err(|e| ImportError::Command(e.to_string()))?;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let part: Vec<ImportRow> = rows
            .by_ref()
            .take(crate::commands::MAX_IMPORT_ROWS)
            .collect();
        let (tx, rx) = crossbeam_channel::bounded(1);
        crate::commands::execute(
            catalog,
            &mut rater,
            Command::ImportClients {
                rows: part,
                actor: "cli".into(),
                reply: tx,
            },
            &mut |_, _| {},
        );
        let out = rx
            .recv()
            .map_err(|_| ImportError::Command("the import command did not answer".into()))?
            .map_err(|e| ImportError::Command(e.to_string()))?;
        summary.add(&p, &out);
    }
    Ok(summary)
}

impl ImportSummary {
    /// Adds what the core did with one part of the file.
    pub fn add(&mut self, name: &str, out: &ImportOutcome) {
        self.created += out.created.len() as u64;
        self.existing += out.existing.len() as u64;
        for (line, reason) in &out.refused {
            self.bad.push(format!("{name}:{line}: {reason}"));
        }
    }
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
