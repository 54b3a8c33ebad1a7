//! Config reload (`kill -HUP`): what may change while `serve` runs, and how open sessions
//! carry over to the new config.
//!
//! Reload is all or nothing, between batches. Tariffs, charge rules, groups, NAS entries
//! and CDR formats take effect for usage after the reload; what an open session has been
//! charged so far stays (its exact cost so far is kept, so its total is still
//! `round(total)`). Its per-rule usage refers to charge rules by index, so indices are
//! remapped by rule name; a reload that removes a charge rule an open session has used, or
//! the NAS an open session belongs to, is refused (one line naming it), as is one that
//! moves the data dir. Listen addresses, the spool and API settings take effect at the next
//! start (a warning says so).

use crate::catalog::Catalog;
use crate::radius::accounting::Session;

/// The running config as the rest of the process (the API) sees it: replaced whole by a
/// reload, read as one consistent snapshot per use.
#[derive(Debug)]
pub struct CatalogCell(std::sync::RwLock<std::sync::Arc<Catalog>>);

impl CatalogCell {
    pub fn new(c: std::sync::Arc<Catalog>) -> Self {
        CatalogCell(std::sync::RwLock::new(c))
    }

    /// The current config.
    pub fn get(&self) -> std::sync::Arc<Catalog> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the config.
    pub fn set(&self, c: std::sync::Arc<Catalog>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

/// Why a new config cannot replace the running one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What the running process keeps from the old config (changes need a restart).
pub fn restart_only_changes(old: &Catalog, new: &Catalog) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.radius_listen != new.radius_listen {
        v.push("radius.listen");
    }
    if old.auth_listen != new.auth_listen {
        v.push("radius.auth_listen");
    }
    if old.api_listen != new.api_listen {
        v.push("api.listen");
    }
    if old.spool_dir != new.spool_dir {
        v.push("cdr.spool");
    }
    v
}

/// Checks that `new` can replace `old` while `sessions` are open: same data dir, every
/// session's NAS key still resolves, every charge rule a session used still exists.
pub fn check(old: &Catalog, new: &Catalog, sessions: &[&Session]) -> Result<(), Refused> {
    if old.data_dir != new.data_dir {
        return Err(Refused(format!(
            "storage.data_dir changed ({} -> {}): that needs a restart",
            old.data_dir.display(),
            new.data_dir.display()
        )));
    }
    for s in sessions {
        if new.nas_entry_of_key(&s.nas).is_none() {
            return Err(Refused(format!(
                "nas: {:?} has open sessions (session {:?} of {:?}) and is not in the new config",
                s.nas, s.session_id, s.username
            )));
        }
        for r in &s.charge.rules {
            let name = rule_name(old, r.rule);
            if name.is_none_or(|n| new.charge_rules.iter().all(|c| c.name != n)) {
                return Err(Refused(format!(
                    "charge_rule: {:?} is used by open session {:?} of {:?} and is not in the new config",
                    name.unwrap_or("?"),
                    s.session_id,
                    s.username
                )));
            }
        }
    }
    Ok(())
}

/// Rewrites a session's charge-rule indices from `old`'s to `new`'s (by name). Call after
/// [`check`] passed.
pub fn remap(old: &Catalog, new: &Catalog, s: &mut Session) {
    for r in &mut s.charge.rules {
        if let Some(i) =
            rule_name(old, r.rule).and_then(|n| new.charge_rules.iter().position(|c| c.name == n))
        {
            r.rule = i as u32;
        }
    }
}

fn rule_name(c: &Catalog, i: u32) -> Option<&str> {
    c.charge_rules.get(i as usize).map(|r| r.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, LoadedConfig};
    use crate::rating::{RuleUsage, SessionCharge};
    use rust_decimal::Decimal;

    fn catalog(rules: &[(&str, &str, &str)], nas: &[&str], data: &str) -> Catalog {
        let mut t = format!("[storage]\ndata_dir = \"{data}\"\n");
        for (i, n) in nas.iter().enumerate() {
            t += &format!(
                "[[nas]]\nname = \"{n}\"\nip = \"127.0.0.{}\"\nsecret = \"s\"\n",
                i + 1
            );
        }
        let mut names = Vec::new();
        for (n, start, end) in rules {
            t += &format!("[[charge_rule]]\nname = \"{n}\"\ndays = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"]\nstart = \"{start}\"\nend = \"{end}\"\nprice_per_minute = \"0.01\"\nprice_per_gb = \"0\"\n");
            names.push(format!("\"{n}\""));
        }
        t += &format!(
            "[[group]]\nname = \"g\"\ncharge_rules = [{}]\n",
            names.join(",")
        );
        let lc =
            LoadedConfig::from_str(&t, ConfigSource::File("t.toml".into()), ".".into()).unwrap();
        Catalog::build(&lc).unwrap()
    }

    fn session(nas: &str, rules: &[u32]) -> Session {
        let charge = SessionCharge {
            rules: rules
                .iter()
                .map(|&rule| RuleUsage {
                    rule,
                    start: 0,
                    end: 60,
                    seconds: 60,
                    bytes_in: 0,
                    bytes_out: 0,
                    time_numerator: Decimal::ONE,
                    traffic: Decimal::ZERO,
                })
                .collect(),
            ..SessionCharge::new(&crate::rating::Usage {
                moment: 0,
                session_time: 0,
                octets_in: 0,
                octets_out: 0,
            })
        };
        Session {
            nas: nas.into(),
            session_id: "s1".into(),
            username: "alice".into(),
            user_id: None,
            reopened_after: None,
            charge,
            credit_at_start: Decimal::TEN,
            nas_ip: String::new(),
            framed_ip: String::new(),
            calling_station: String::new(),
            called_station: String::new(),
            nas_port: None,
            last_arrival: 0,
            interim_interval: None,
            unknown_user: false,
            ras_description: String::new(),
        }
    }

    #[test]
    fn rules_are_remapped_by_name_and_removals_refused() {
        let old = catalog(
            &[("night", "00:00", "08:00"), ("day", "08:00", "24:00")],
            &["ras1"],
            "d",
        );
        // Reordered, and a new split of the day.
        let new = catalog(
            &[("day", "08:00", "24:00"), ("night", "00:00", "08:00")],
            &["ras1", "ras2"],
            "d",
        );
        let mut s = session("ras1", &[0, 1]);
        check(&old, &new, &[&s]).unwrap();
        remap(&old, &new, &mut s);
        assert_eq!(
            s.charge.rules.iter().map(|r| r.rule).collect::<Vec<_>>(),
            [1, 0]
        );
        // A proxied NAS resolves through its client's entry.
        check(&old, &new, &[&session("ras1/10.0.0.5", &[0])]).unwrap();

        let without_day = catalog(&[("all", "00:00", "24:00")], &["ras1"], "d");
        let e = check(&old, &without_day, &[&session("ras1", &[1])]).unwrap_err();
        assert!(
            e.0.starts_with("charge_rule: \"day\" is used by open session"),
            "{e}"
        );
        let without_nas = catalog(
            &[("night", "00:00", "08:00"), ("day", "08:00", "24:00")],
            &["ras9"],
            "d",
        );
        let e = check(&old, &without_nas, &[&session("ras1", &[0])]).unwrap_err();
        assert!(e.0.starts_with("nas: \"ras1\" has open sessions"), "{e}");
        let moved = catalog(
            &[("night", "00:00", "08:00"), ("day", "08:00", "24:00")],
            &["ras1"],
            "elsewhere",
        );
        assert!(check(&old, &moved, &[])
            .unwrap_err()
            .0
            .starts_with("storage.data_dir changed"));
    }
}
