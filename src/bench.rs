//! `ratel bench radius`: drives a real `ratel serve` (started here on a generated config, or
//! any accounting server given with `--server`) with the RADIUS load generator, prints
//! acknowledged packets/s and latency percentiles, and checks the ledger through the API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use ratel_engine::loadgen::{self, LoadSpec};
use rust_decimal::Decimal;

pub struct RadiusArgs {
    pub sessions: usize,
    pub in_flight: usize,
    pub duration_secs: u64,
    pub rate: u64,
    pub users: usize,
    pub interims: u32,
    pub server: Option<String>,
    pub secret: String,
    pub dir: std::path::PathBuf,
    pub json: bool,
}

const CONFIG: &str = r#"
[radius]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[[admin]]
name = "bench"
password = "bench"
[[nas]]
name = "bench-nas"
ip = "127.0.0.1"
secret = "SECRET"
[[charge_rule]]
name = "day"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "08:00"
end = "24:00"
price_per_minute = "0.0100"
price_per_gb = "0.5000"
[[charge_rule]]
name = "night"
days = ["mon","tue","wed","thu","fri","sat","sun"]
start = "00:00"
end = "08:00"
price_per_minute = "0.0050"
price_per_gb = "0.2500"
[[group]]
name = "bench"
charge_rules = ["night", "day"]
decimals = 4
rounding = "up"
"#;

fn http_rpc(api: SocketAddr, body: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(api)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "POST / HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let json = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json).context("API answer")?;
    if !v["error"].is_null() {
        bail!("API error: {}", v["error"]);
    }
    Ok(v["result"].clone())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn radius(a: RadiusArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut child = None;
    let (server, secret, api) = match &a.server {
        Some(s) => (
            s.parse::<SocketAddr>()
                .with_context(|| format!("--server {s}"))?,
            a.secret.clone(),
            None,
        ),
        None => {
            let _ = std::fs::remove_dir_all(&a.dir);
            std::fs::create_dir_all(&a.dir)?;
            let cfg = a.dir.join("ratel.toml");
            std::fs::write(&cfg, CONFIG.replace("SECRET", &a.secret))?;
            let mut users = String::from("username,password,group,credit\n");
            for i in 0..a.users {
                users.push_str(&format!("user{i},pw,bench,1000\n"));
            }
            std::fs::write(a.dir.join("users.csv"), users)?;
            let exe = std::env::current_exe()?;
            let st = Command::new(&exe)
                .args(["users", "import", "--config"])
                .arg(&cfg)
                .arg(a.dir.join("users.csv"))
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("users import failed");
            }
            let mut c = Command::new(&exe)
                .args(["serve", "--config"])
                .arg(&cfg)
                .env("RATEL_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()?;
            let mut lines = BufReader::new(c.stdout.take().expect("piped")).lines();
            let (mut radius, mut api) = (None, None);
            while api.is_none() {
                let line = lines
                    .next()
                    .context("serve exited before printing its addresses")??;
                if let Some(r) = line.trim().strip_prefix("RADIUS accounting on udp://") {
                    radius = r.split_whitespace().next().and_then(|x| x.parse().ok());
                }
                if let Some(r) = line.trim().strip_prefix("JSON-RPC API on http://") {
                    api = r.trim_end_matches('/').parse().ok();
                }
            }
            std::thread::spawn(move || for _ in lines {});
            child = Some(c);
            (radius.context("RADIUS address")?, a.secret.clone(), api)
        }
    };
    let spec = LoadSpec {
        server,
        secret: secret.into_bytes(),
        sessions: a.sessions,
        in_flight: a.in_flight,
        duration: Duration::from_secs(a.duration_secs),
        rate: a.rate,
        interims: a.interims,
        users: a.users.max(1),
        retransmit_after: Duration::from_millis(1000),
    };
    let r = loadgen::run(&spec)?;
    println!(
        "ratel bench radius: {} sessions, {} in flight, {} s, rate {}, {} users, {cores} cores, server {server}",
        a.sessions,
        a.in_flight,
        a.duration_secs,
        if a.rate == 0 { "max".to_string() } else { a.rate.to_string() },
        a.users
    );
    println!(
        "  {} acknowledged ({:.0}/s), {} sent, {} retransmissions, {} unanswered, {} sessions completed",
        r.acknowledged,
        r.acks_per_sec(),
        r.sent,
        r.retransmissions,
        r.unanswered,
        r.sessions_completed
    );
    let pct = |p| r.percentile(p) as f64 / 1000.0;
    println!(
        "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        r.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    let mut check = String::from("skipped (external server)");
    let mut rss = None;
    if let (Some(api), Some(c)) = (api, &child) {
        rss = peak_rss_kib(c.id());
        let auth = r#""auth_type": "ADMIN", "auth_name": "bench", "auth_pass": "bench""#;
        let rep = http_rpc(
            api,
            &format!(
                r#"{{"method": "report.getConnections", "params": {{{auth}, "conds": {{}}, "from": 0, "to": 0}}}}"#
            ),
        )?;
        let xdr_total: Decimal = rep["total_credit"].to_string().parse().unwrap_or_default();
        let mut taken = Decimal::ZERO;
        for i in 0..a.users {
            let info = http_rpc(
                api,
                &format!(
                    r#"{{"method": "user.getUserInfo", "params": {{{auth}, "normal_username": "user{i}"}}}}"#
                ),
            )?;
            let credit: Decimal = info
                .as_object()
                .and_then(|o| o.values().next())
                .map(|u| u["basic_info"]["credit"].to_string())
                .unwrap_or_default()
                .parse()
                .unwrap_or_default();
            taken += Decimal::from(1000) - credit;
        }
        check = if taken == xdr_total {
            format!(
                "OK: credit taken {taken} == sum of xDR credit_used {xdr_total} ({} xDRs)",
                rep["total_rows"]
            )
        } else {
            format!("MISMATCH: credit taken {taken} != sum of xDR credit_used {xdr_total}")
        };
    }
    println!("  ledger check: {check}");
    if let Some(kib) = rss {
        println!("  ratel serve peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    if let Some(mut c) = child {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let _ = c.wait();
    }
    if a.json {
        println!(
            "{{\"bench\":\"radius\",\"cores\":{cores},\"acknowledged\":{},\"acks_per_sec\":{:.0},\"retransmissions\":{},\"unanswered\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"ledger_check_ok\":{}}}",
            r.acknowledged,
            r.acks_per_sec(),
            r.retransmissions,
            r.unanswered,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            check.starts_with("OK")
        );
    }
    Ok(if check.starts_with("MISMATCH") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub struct ApiArgs {
    pub xdrs: u64,
    pub users: usize,
    pub duration_secs: u64,
    pub dir: std::path::PathBuf,
    pub json: bool,
}

fn pct_ms(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// `ratel bench api`: a data dir with `xdrs` rated CDRs, `ratel serve` on it, then
/// getUserInfo and one-user-one-day report.getConnections calls over HTTP for `duration`.
pub fn api(a: ApiArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let exe = std::env::current_exe()?;
    let files = ratel_engine::gen::prepare_cdr_bench(&a.dir, a.xdrs, a.users.max(1), 5_000, 7)?;
    let mut cfg = std::fs::read_to_string(&files.config)?;
    cfg.push_str("[[admin]]\nname = \"bench\"\npassword = \"bench\"\n");
    cfg = cfg.replacen(
        "[storage]",
        "[radius]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[storage]",
        1,
    );
    std::fs::write(&files.config, cfg)?;
    let _ = std::fs::remove_dir_all(&files.data_dir);
    let st = Command::new(&exe)
        .args(["users", "import", "--config"])
        .arg(&files.config)
        .arg(&files.users)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("users import failed");
    }
    let t = std::time::Instant::now();
    let st = Command::new(&exe)
        .args(["rate", "--format", "generic", "--config"])
        .arg(&files.config)
        .arg(&files.cdrs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("rating the generated CDRs failed");
    }
    let rate_secs = t.elapsed().as_secs_f64();
    let mut c = Command::new(&exe)
        .args(["serve", "--config"])
        .arg(&files.config)
        .env("RATEL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(c.stdout.take().expect("piped")).lines();
    let api = loop {
        let line = lines.next().context("serve exited early")??;
        if let Some(r) = line.trim().strip_prefix("JSON-RPC API on http://") {
            break r.trim_end_matches('/').parse::<SocketAddr>()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let auth = r#""auth_type": "ADMIN", "auth_name": "bench", "auth_pass": "bench""#;
    let (mut info_us, mut report_us) = (Vec::new(), Vec::new());
    let mut rows_seen = 0u64;
    let mut rng = ratel_engine::gen::Rng::new(11);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(a.duration_secs) {
        let u = rng.below(a.users as u64);
        let t = std::time::Instant::now();
        http_rpc(
            api,
            &format!(
                r#"{{"method": "user.getUserInfo", "params": {{{auth}, "normal_username": "acc{u}"}}}}"#
            ),
        )?;
        info_us.push(t.elapsed().as_micros() as u64);
        let t = std::time::Instant::now();
        let r = http_rpc(
            api,
            &format!(
                r#"{{"method": "report.getConnections", "params": {{{auth}, "conds": {{"username": "acc{u}", "login_time_from": "2026-11-02 00:00:00", "login_time_from_unit": "gregorian", "login_time_to": "2026-11-02 23:59:59", "login_time_to_unit": "gregorian"}}, "from": 0, "to": 50}}}}"#
            ),
        )?;
        report_us.push(t.elapsed().as_micros() as u64);
        rows_seen += r["total_rows"].as_u64().unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let _ = c.wait();
    let n = info_us.len();
    println!("ratel bench api: {} xDRs on disk (rated in {rate_secs:.1}s), {} users, {} s, {cores} cores, one sequential HTTP client", a.xdrs, a.users, a.duration_secs);
    println!(
        "  user.getUserInfo: {n} calls, p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
        pct_ms(&mut info_us, 0.5),
        pct_ms(&mut info_us, 0.9),
        pct_ms(&mut info_us, 0.99),
        pct_ms(&mut info_us, 0.999),
        pct_ms(&mut info_us, 1.0)
    );
    println!(
        "  report.getConnections (one user, one day): {} calls, {:.1} rows each, p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
        report_us.len(),
        rows_seen as f64 / report_us.len().max(1) as f64,
        pct_ms(&mut report_us, 0.5),
        pct_ms(&mut report_us, 0.9),
        pct_ms(&mut report_us, 0.99),
        pct_ms(&mut report_us, 0.999),
        pct_ms(&mut report_us, 1.0)
    );
    println!("  {:.0} requests/s overall", (2 * n) as f64 / elapsed);
    if a.json {
        println!(
            "{{\"bench\":\"api\",\"xdrs\":{},\"cores\":{cores},\"info_p99_ms\":{:.3},\"report_p50_ms\":{:.3},\"report_p99_ms\":{:.3}}}",
            a.xdrs,
            pct_ms(&mut info_us, 0.99),
            pct_ms(&mut report_us, 0.5),
            pct_ms(&mut report_us, 0.99)
        );
    }
    Ok(ExitCode::SUCCESS)
}
