//! Realistic synthetic data for benchmarks (`ratel bench cdr`): a rate deck of E.164
//! prefixes from several national numbering plans with 60/60, 30/6 and 1/1 increments (some
//! with a weekday peak window), a subscriber list, and a generic CDR file with skewed call
//! durations, an answered/unanswered mix and heavy-tailed activity per account.
//! Deterministic for a seed (splitmix64), so runs can be compared.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;

/// splitmix64: small, fast, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n.max(1) as u128) >> 64) as u64
    }
    /// Uniform in [0, 1) as a ratio of integers (numerator over 2^32).
    pub fn unit32(&mut self) -> u64 {
        self.next_u64() >> 32
    }
}

/// Country codes and the national number length after them.
const PLANS: &[(&str, &str, usize)] = &[
    ("1", "USA/Canada", 10),
    ("44", "United Kingdom", 10),
    ("49", "Germany", 11),
    ("33", "France", 9),
    ("39", "Italy", 10),
    ("34", "Spain", 9),
    ("7", "Russia", 10),
    ("86", "China", 11),
    ("91", "India", 10),
    ("98", "Iran", 10),
    ("55", "Brazil", 11),
    ("52", "Mexico", 10),
    ("61", "Australia", 9),
    ("81", "Japan", 10),
    ("234", "Nigeria", 10),
    ("20", "Egypt", 10),
    ("90", "Turkey", 10),
    ("62", "Indonesia", 10),
];

/// Writes a rate deck of about `prefixes` prefixes; returns the prefixes (for callees).
pub fn write_rate_deck(
    path: &Path,
    prefixes: usize,
    rng: &mut Rng,
) -> std::io::Result<Vec<String>> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "prefix,description,price_per_minute,connect_fee,first_increment,next_increment,days,start,end")?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(prefixes);
    for (cc, name, _) in PLANS {
        seen.insert(cc.to_string());
        out.push(cc.to_string());
        writeln!(w, "{cc},{name},0.{:04},0,60,60", 100 + rng.below(900))?;
    }
    let incs = [(60, 60), (30, 6), (1, 1)];
    while out.len() < prefixes {
        let (cc, name, _) = PLANS[rng.below(PLANS.len() as u64) as usize];
        let extra = 2 + rng.below(4) as usize;
        let mut p = cc.to_string();
        for _ in 0..extra {
            p.push((b'0' + rng.below(10) as u8) as char);
        }
        if !seen.insert(p.clone()) {
            continue;
        }
        let (f, n) = incs[rng.below(3) as usize];
        let price = 5 + rng.below(2500);
        let fee = if rng.below(4) == 0 { rng.below(500) } else { 0 };
        writeln!(
            w,
            "{p},{name} {},0.{price:05},0.{fee:05},{f},{n}",
            &p[cc.len()..]
        )?;
        if rng.below(20) == 0 {
            writeln!(
                w,
                "{p},{name} {} peak,0.{:05},0.{fee:05},{f},{n},mon;tue;wed;thu;fri,08:00,18:00",
                &p[cc.len()..],
                price + 100
            )?;
        }
        out.push(p);
    }
    w.flush()?;
    Ok(out)
}

/// Writes `accounts` subscribers (`acc<N>`) in `group` with credit 1000.
pub fn write_users(path: &Path, accounts: usize, group: &str) -> std::io::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "username,password,group,credit")?;
    for i in 0..accounts {
        writeln!(w, "acc{i},pw{i},{group},1000")?;
    }
    w.flush()
}

/// Writes `rows` generic CDRs spread evenly over `days` days from `day_start` (unix
/// seconds, UTC): real CDR files span days (a month-long Master.csv).
#[allow(clippy::too_many_arguments)]
pub fn write_cdrs(
    path: &Path,
    rows: u64,
    accounts: usize,
    prefixes: &[String],
    day_start: i64,
    days: u32,
    account_prefix: &str,
    rng: &mut Rng,
) -> std::io::Result<()> {
    let span = 86_400 * i64::from(days.max(1));
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "call_id,caller,callee,start_time,duration_s,disposition,account"
    )?;
    let mut line = Vec::with_capacity(160);
    let n = prefixes.len() as u64;
    for i in 0..rows {
        line.clear();
        // Heavy-tailed activity: account index skewed towards small numbers.
        let u = rng.unit32();
        let acc = (((u * u) >> 32) * accounts as u64) >> 32;
        // Skewed destinations: popular prefixes first.
        let v = rng.unit32();
        let v3 = (((v * v) >> 32) * v) >> 32;
        let p = &prefixes[((v3 * n) >> 32) as usize];
        let answered = rng.below(100) < 78;
        // Durations: mostly short, some long (product of uniforms).
        let d = if answered {
            1 + (rng.below(600) * rng.below(600)) / 200
        } else {
            0
        };
        let t = day_start + (i as i64 * span / rows.max(1) as i64);
        let (h, m, s) = ((t % 86_400) / 3600, (t % 3600) / 60, t % 60);
        let date = chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0)
            .unwrap_or_default()
            .date_naive();
        write!(line, "c{i:010},{},", 5_550_000 + acc)?;
        line.extend_from_slice(p.as_bytes());
        for _ in p.len()..11 {
            line.push(b'0' + rng.below(10) as u8);
        }
        writeln!(
            line,
            ",{date}T{h:02}:{m:02}:{s:02}Z,{d},{},{account_prefix}{acc}",
            if answered {
                "ANSWERED"
            } else if rng.below(2) == 0 {
                "NO ANSWER"
            } else {
                "BUSY"
            }
        )?;
        w.write_all(&line)?;
    }
    w.flush()
}

/// The files of a CDR benchmark.
#[derive(Debug, Clone)]
pub struct CdrBench {
    pub config: std::path::PathBuf,
    pub users: std::path::PathBuf,
    pub cdrs: std::path::PathBuf,
    pub data_dir: std::path::PathBuf,
}

/// Generates a complete CDR benchmark under `dir`: rate deck, config, users and CDRs.
pub fn prepare_cdr_bench(
    dir: &Path,
    rows: u64,
    accounts: usize,
    prefixes: usize,
    days: u32,
    seed: u64,
) -> std::io::Result<CdrBench> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(seed);
    let deck = dir.join("rates.csv");
    let prefix_list = write_rate_deck(&deck, prefixes, &mut rng)?;
    let config = dir.join("ratel.toml");
    std::fs::write(
        &config,
        "[storage]\ndata_dir = \"data\"\n[rating]\ntime_zone = \"UTC\"\n[[group]]\nname = \"bench\"\ntariff = \"deck\"\ndecimals = 4\nrounding = \"up\"\n[[tariff]]\nname = \"deck\"\nrates = \"rates.csv\"\n",
    )?;
    let users = dir.join("users.csv");
    write_users(&users, accounts, "bench")?;
    let cdrs = dir.join("cdrs.csv");
    // 2026-11-02 00:00:00 UTC, a Monday.
    write_cdrs(
        &cdrs,
        rows,
        accounts,
        &prefix_list,
        1_793_577_600,
        days,
        "acc",
        &mut rng,
    )?;
    Ok(CdrBench {
        config,
        users,
        cdrs,
        data_dir: dir.join("data"),
    })
}
