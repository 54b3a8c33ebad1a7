//! `ratel bench radius`: drives a real `ratel serve` (started here on a generated config, or
//! any accounting server given with `--server`) with the RADIUS load generator, prints
//! acknowledged packets/s and latency percentiles, and checks the ledger through the API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

pub mod gen;
pub mod loadgen;

use anyhow::{bail, Context};
use loadgen::LoadSpec;
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
    /// Also drive the authorization listener (PAP Access-Requests) during the run.
    pub auth: bool,
    /// Requests in flight of each run (`--sweep 1,8,64,512`); empty: `in_flight` only.
    pub sweep: Vec<usize>,
    /// Append one CSV row per run to this file (header written when it is new).
    pub csv: Option<std::path::PathBuf>,
    /// The server's name in the CSV (`ratel` when this command starts serve).
    pub label: Option<String>,
    /// A generated CDR file of this many calls dropped into serve's spool 2 s into the run.
    pub spool_rows: u64,
}

/// The CSV columns of `ratel bench radius --csv` (one row per run).
pub const RADIUS_CSV_HEADER: &str = "server,in_flight,users,sessions,duration_s,cores,acks_per_sec,p50_ms,p90_ms,p99_ms,p999_ms,retransmissions,unanswered,ledger_check";

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

/// `ratel users import` of `users` into the data dir of `config`.
fn import_users(exe: &Path, config: &Path, users: &Path) -> anyhow::Result<()> {
    let st = Command::new(exe)
        .args(["users", "import", "--config"])
        .arg(config)
        .arg(users)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("users import failed");
    }
    Ok(())
}

/// A `ratel serve` started on `config`, with the addresses it printed.
struct Serve {
    child: Child,
    radius: Option<SocketAddr>,
    /// `[radius] auth_listen`, when the config has one.
    auth: Option<SocketAddr>,
    api: SocketAddr,
}

impl Serve {
    fn start(exe: &Path, config: &Path) -> anyhow::Result<Serve> {
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .env("RATEL_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (mut radius, mut auth) = (None, None);
        let api = loop {
            let line = lines
                .next()
                .context("serve exited before printing its addresses")??;
            if let Some(r) = line.trim().strip_prefix("RADIUS accounting on udp://") {
                radius = r.split_whitespace().next().and_then(|x| x.parse().ok());
            }
            if let Some(r) = line.trim().strip_prefix("RADIUS authorization on udp://") {
                auth = r.split_whitespace().next().and_then(|x| x.parse().ok());
            }
            if let Some(r) = line.trim().strip_prefix("JSON-RPC API on http://") {
                break r.trim_end_matches('/').parse::<SocketAddr>()?;
            }
        };
        // The load starts once the core answers: datagrams sent while serve still loads
        // its subscribers would wait in the socket, and the run's latencies would include
        // the start (~120 ms for 100k subscribers) instead of the steady state.
        loop {
            let line = lines.next().context("serve exited before it was ready")??;
            if line.trim().starts_with("ready:") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Serve {
            child,
            radius,
            auth,
            api,
        })
    }

    /// SIGTERM (a graceful stop) and wait.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
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

/// `ratel bench radius`: one run at `--in-flight`, or one per `--sweep` point (a fresh
/// server each when this command starts `ratel serve`), each appended to `--csv`.
pub fn radius(a: RadiusArgs) -> anyhow::Result<ExitCode> {
    let points = if a.sweep.is_empty() {
        vec![a.in_flight]
    } else {
        a.sweep.clone()
    };
    let mut code = ExitCode::SUCCESS;
    for in_flight in points {
        let (c, row) = radius_run(&a, in_flight)?;
        if c != ExitCode::SUCCESS {
            code = c;
        }
        if let Some(path) = &a.csv {
            let new = !path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--csv {}", path.display()))?;
            if new {
                writeln!(f, "{RADIUS_CSV_HEADER}")?;
            }
            writeln!(f, "{row}")?;
        }
    }
    Ok(code)
}

/// One run at `in_flight`; returns its exit code and its CSV row.
fn radius_run(a: &RadiusArgs, in_flight: usize) -> anyhow::Result<(ExitCode, String)> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut child = None;
    if a.auth && a.server.is_some() {
        bail!("--auth drives the ratel serve this command starts; it cannot be used with --server");
    }
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
            let mut text = CONFIG.replace("SECRET", &a.secret);
            if a.spool_rows > 0 {
                // The subscribers' calls, rated on a deck, arriving in the spool.
                let mut rng = gen::Rng::new(5);
                let prefixes = gen::write_rate_deck(&a.dir.join("rates.csv"), 50_000, &mut rng)?;
                std::fs::create_dir_all(a.dir.join("spool"))?;
                gen::write_cdrs(
                    &a.dir.join("spool").join(".cdrs.tmp"),
                    a.spool_rows,
                    a.users.max(1),
                    &prefixes,
                    1_793_577_600,
                    30,
                    "user",
                    &mut rng,
                )?;
                text = text.replace(
                    "name = \"bench\"\ncharge_rules",
                    "name = \"bench\"\ntariff = \"deck\"\ncharge_rules",
                );
                text.push_str("[[tariff]]\nname = \"deck\"\nrates = \"rates.csv\"\n");
                text.push_str("[cdr]\nspool = \"spool\"\nformat = \"generic\"\n");
            }
            if a.auth {
                text = text.replace("[radius]\n", "[radius]\nauth_listen = \"127.0.0.1:0\"\n");
            }
            std::fs::write(&cfg, text)?;
            let mut users = String::from("username,password,group,credit\n");
            for i in 0..a.users {
                users.push_str(&format!("user{i},pw,bench,1000\n"));
            }
            std::fs::write(a.dir.join("users.csv"), users)?;
            let exe = std::env::current_exe()?;
            import_users(&exe, &cfg, &a.dir.join("users.csv"))?;
            let serve = Serve::start(&exe, &cfg)?;
            let radius = serve.radius.context("RADIUS address")?;
            let api = serve.api;
            child = Some(serve);
            (radius, a.secret.clone(), Some(api))
        }
    };
    let spec = LoadSpec {
        server,
        secret: secret.into_bytes(),
        sessions: a.sessions,
        in_flight,
        duration: Duration::from_secs(a.duration_secs),
        rate: a.rate,
        interims: a.interims,
        users: a.users.max(1),
        retransmit_after: Duration::from_millis(1000),
    };
    // The authorization load runs beside the accounting load, for the same duration.
    let auth_load = match child.as_ref().and_then(|c| c.auth) {
        Some(to) if a.auth => {
            let spec = loadgen::AuthLoadSpec {
                server: to,
                secret: spec.secret.clone(),
                in_flight: in_flight.min(256),
                duration: spec.duration,
                users: spec.users,
                password: b"pw".to_vec(),
                retransmit_after: Duration::from_millis(1000),
            };
            Some(std::thread::spawn(move || loadgen::run_auth(&spec)))
        }
        _ => None,
    };
    let dropper = (a.spool_rows > 0 && a.server.is_none()).then(|| {
        let spool = a.dir.join("spool");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = std::fs::rename(spool.join(".cdrs.tmp"), spool.join("cdrs.csv"));
        })
    });
    let r = loadgen::run(&spec)?;
    if let Some(h) = dropper {
        let _ = h.join();
        let done = a.dir.join("spool").join("done").join("cdrs.csv").exists();
        println!(
            "  spool: {} calls dropped 2 s into the run; {}",
            a.spool_rows,
            if done {
                "rated to the end during the run"
            } else {
                "still being rated when the load stopped"
            }
        );
    }
    let auth_report = match auth_load {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("the authorization load panicked"))??,
        ),
        None => None,
    };
    println!(
        "ratel bench radius: {} sessions, {} in flight, {} s, rate {}, {} users, {cores} cores, server {server}",
        a.sessions,
        in_flight,
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
    println!("  at most {} sessions open at once", r.max_open_sessions);
    if let Some(ar) = &auth_report {
        let q = |p| ar.report.percentile(p) as f64 / 1000.0;
        println!(
            "  authorization: {} Access-Requests answered ({:.0}/s: {} Accept, {} Reject), {} retransmissions, {} unanswered; latency ms p50 {:.3}  p99 {:.3}",
            ar.report.acknowledged,
            ar.report.acks_per_sec(),
            ar.accepted,
            ar.rejected,
            ar.report.retransmissions,
            ar.report.unanswered,
            q(0.5),
            q(0.99)
        );
    }
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
        rss = peak_rss_kib(c.child.id());
        let auth = r#""auth_type": "ADMIN", "auth_name": "bench", "auth_pass": "bench""#;
        let mut client = KeepAlive::new(api);
        let rep = client.call(&format!(
            r#"{{"method": "report.getConnections", "params": {{{auth}, "conds": {{}}, "from": 0, "to": 0}}}}"#
        ))?;
        let xdr_total: Decimal = rep["total_credit"].to_string().parse().unwrap_or_default();
        let mut taken = Decimal::ZERO;
        // Session k belongs to user k % users: only the first `sessions` users can have moved.
        // (With a spool file, calls of any subscriber may have moved credit.)
        let moved = if a.spool_rows > 0 {
            a.users
        } else {
            a.users.min(a.sessions)
        };
        for i in 0..moved {
            let info = client.call(&format!(
                r#"{{"method": "user.getUserInfo", "params": {{{auth}, "normal_username": "user{i}"}}}}"#
            ))?;
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
            let open = match r.sessions_open_at_end {
                0 => String::new(),
                n => format!(
                    " ({n} sessions still open at the end: their interim charges have no xDR yet)"
                ),
            };
            format!("MISMATCH: credit taken {taken} != sum of xDR credit_used {xdr_total}{open}")
        };
    }
    println!("  ledger check: {check}");
    if let Some(kib) = rss {
        println!("  ratel serve peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    if let Some(c) = child {
        c.stop();
    }
    if let (true, Some(ar)) = (a.json, &auth_report) {
        println!(
            "{{\"bench\":\"radius-auth\",\"cores\":{cores},\"answered\":{},\"auth_per_sec\":{:.0},\"accepted\":{},\"rejected\":{},\"unanswered\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"acct_acks_per_sec\":{:.0}}}",
            ar.report.acknowledged,
            ar.report.acks_per_sec(),
            ar.accepted,
            ar.rejected,
            ar.report.unanswered,
            ar.report.percentile(0.5) as f64 / 1000.0,
            ar.report.percentile(0.99) as f64 / 1000.0,
            r.acks_per_sec()
        );
    }
    if a.json {
        println!(
            "{{\"bench\":\"radius\",\"cores\":{cores},\"in_flight\":{in_flight},\"acknowledged\":{},\"acks_per_sec\":{:.0},\"retransmissions\":{},\"unanswered\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"ledger_check_ok\":{},\"max_open_sessions\":{},\"users\":{},\"serve_peak_rss_mib\":{}}}",
            r.acknowledged,
            r.acks_per_sec(),
            r.retransmissions,
            r.unanswered,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            check.starts_with("OK"),
            r.max_open_sessions,
            a.users,
            rss.map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "null".into())
        );
    }
    let label = a.label.clone().unwrap_or_else(|| {
        if a.server.is_some() {
            server.to_string()
        } else {
            "ratel".to_string()
        }
    });
    let row = format!(
        "{label},{in_flight},{},{},{},{cores},{:.0},{:.3},{:.3},{:.3},{:.3},{},{},{}",
        a.users,
        a.sessions,
        a.duration_secs,
        r.acks_per_sec(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        r.retransmissions,
        r.unanswered,
        check.split([':', ' ']).next().unwrap_or("")
    );
    let code = if check.starts_with("MISMATCH") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    Ok((code, row))
}

/// Which calls each `bench api` client makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// getUserInfo then getConnections.
    Both,
    /// getUserInfo only.
    Info,
    /// report.getConnections only.
    Report,
}

impl Mix {
    fn as_str(self) -> &'static str {
        match self {
            Mix::Both => "both",
            Mix::Info => "info",
            Mix::Report => "report",
        }
    }
}

pub struct ApiArgs {
    pub xdrs: u64,
    pub users: usize,
    pub duration_secs: u64,
    /// Concurrent HTTP clients, each with its own keep-alive connection.
    pub clients: usize,
    pub mix: Mix,
    /// Days each getConnections asks for, from the first generated day.
    pub report_days: u32,
    /// Reuse a data dir this command built before with the same --xdrs and --users.
    pub reuse: bool,
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

/// One HTTP/1.1 keep-alive connection to the API, as a script's HTTP library would hold.
struct KeepAlive {
    api: SocketAddr,
    conn: Option<BufReader<std::net::TcpStream>>,
}

impl KeepAlive {
    fn new(api: SocketAddr) -> Self {
        KeepAlive { api, conn: None }
    }

    fn call(&mut self, body: &str) -> anyhow::Result<serde_json::Value> {
        // A connection the server closed while idle is opened again once.
        match self.try_call(body) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.conn = None;
                self.try_call(body)
            }
        }
    }

    fn try_call(&mut self, body: &str) -> anyhow::Result<serde_json::Value> {
        if self.conn.is_none() {
            let s = std::net::TcpStream::connect(self.api)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        write!(
            conn.get_mut(),
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.api,
            body.len()
        )?;
        let mut line = String::new();
        let mut len = None;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut buf = vec![0u8; len.context("answer without Content-Length")?];
        conn.read_exact(&mut buf)?;
        let v: serde_json::Value = serde_json::from_slice(&buf).context("API answer")?;
        if !v["error"].is_null() {
            bail!("API error: {}", v["error"]);
        }
        Ok(v["result"].clone())
    }
}

#[derive(Default)]
struct ClientLatencies {
    info_us: Vec<u64>,
    report_us: Vec<u64>,
    rows_seen: u64,
}

/// `ratel bench api`: a data dir with `xdrs` rated CDRs, `ratel serve` on it, then
/// `clients` concurrent keep-alive clients calling getUserInfo and/or one-user-one-day
/// report.getConnections for `duration`.
pub fn api(a: ApiArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let exe = std::env::current_exe()?;
    let marker = a.dir.join("bench-api.done");
    let want_marker = format!("{} {}\n", a.xdrs, a.users);
    let config = a.dir.join("ratel.toml");
    let mut rate_secs = None;
    if !(a.reuse && std::fs::read_to_string(&marker).ok().as_deref() == Some(&want_marker)) {
        let _ = std::fs::remove_file(&marker);
        let files = gen::prepare_cdr_bench(&a.dir, a.xdrs, a.users.max(1), 5_000, 30, 7)?;
        let mut cfg = std::fs::read_to_string(&files.config)?;
        cfg.push_str("[[admin]]\nname = \"bench\"\npassword = \"bench\"\n");
        cfg = cfg.replacen(
            "[storage]",
            "[radius]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[storage]",
            1,
        );
        std::fs::write(&files.config, cfg)?;
        let _ = std::fs::remove_dir_all(&files.data_dir);
        import_users(&exe, &files.config, &files.users)?;
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
        rate_secs = Some(t.elapsed().as_secs_f64());
        // A month of history as `serve` keeps it: every closed day compacted into one file.
        let t = std::time::Instant::now();
        let days = {
            let _lock = ratel_engine::ledger::DataDirLock::acquire(&files.data_dir)?;
            let mut ledger = ratel_engine::ledger::Ledger::open(&files.data_dir)?;
            ratel_engine::compact::compact_closed_days(&mut ledger, chrono::Utc::now().timestamp())?
        };
        eprintln!(
            "ratel bench api: {days} closed day(s) compacted in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        // The CDR file is only needed to build the data dir.
        let _ = std::fs::remove_file(&files.cdrs);
        std::fs::write(&marker, &want_marker)?;
    }
    let serve = Serve::start(&exe, &config)?;
    let api = serve.api;
    // The generated calls start 2026-11-02 00:00:00 UTC (gen.rs).
    let report_to = (chrono::NaiveDate::from_ymd_opt(2026, 11, 2).expect("a date")
        + chrono::Days::new(u64::from(a.report_days.max(1))))
    .and_hms_opt(0, 0, 0)
    .expect("midnight")
        - chrono::Duration::seconds(1);
    let report_to = report_to.format("%Y-%m-%d %H:%M:%S").to_string();
    let report_to = report_to.as_str();
    let duration = Duration::from_secs(a.duration_secs);
    let started = std::time::Instant::now();
    let results: Vec<anyhow::Result<ClientLatencies>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.clients.max(1))
            .map(|k| {
                let mix = a.mix;
                let users = a.users.max(1) as u64;
                scope.spawn(move || -> anyhow::Result<ClientLatencies> {
                    let auth = r#""auth_type": "ADMIN", "auth_name": "bench", "auth_pass": "bench""#;
                    let mut client = KeepAlive::new(api);
                    let mut out = ClientLatencies::default();
                    let mut rng = gen::Rng::new(11 + k as u64);
                    while started.elapsed() < duration {
                        let u = rng.below(users);
                        if mix != Mix::Report {
                            let t = std::time::Instant::now();
                            client.call(&format!(
                                r#"{{"method": "user.getUserInfo", "params": {{{auth}, "normal_username": "acc{u}"}}}}"#
                            ))?;
                            out.info_us.push(t.elapsed().as_micros() as u64);
                        }
                        if mix != Mix::Info {
                            let t = std::time::Instant::now();
                            let r = client.call(&format!(
                                r#"{{"method": "report.getConnections", "params": {{{auth}, "conds": {{"username": "acc{u}", "login_time_from": "2026-11-02 00:00:00", "login_time_from_unit": "gregorian", "login_time_to": "{report_to}", "login_time_to_unit": "gregorian"}}, "from": 0, "to": 50}}}}"#
                            ))?;
                            out.report_us.push(t.elapsed().as_micros() as u64);
                            out.rows_seen += r["total_rows"].as_u64().unwrap_or(0);
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    serve.stop();
    let mut all = ClientLatencies::default();
    for r in results {
        let r = r?;
        all.info_us.extend(r.info_us);
        all.report_us.extend(r.report_us);
        all.rows_seen += r.rows_seen;
    }
    let (mut info_us, mut report_us) = (all.info_us, all.report_us);
    println!(
        "ratel bench api: {} xDRs on disk ({}), {} users, {} s, {cores} cores, {} keep-alive HTTP client(s), mix {}",
        a.xdrs,
        rate_secs.map_or("reused".to_string(), |s| format!("rated in {s:.1}s")),
        a.users,
        a.duration_secs,
        a.clients.max(1),
        a.mix.as_str()
    );
    if !info_us.is_empty() {
        println!(
            "  user.getUserInfo: {} calls ({:.0}/s), p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
            info_us.len(),
            info_us.len() as f64 / elapsed,
            pct_ms(&mut info_us, 0.5),
            pct_ms(&mut info_us, 0.9),
            pct_ms(&mut info_us, 0.99),
            pct_ms(&mut info_us, 0.999),
            pct_ms(&mut info_us, 1.0)
        );
    }
    if !report_us.is_empty() {
        println!(
            "  report.getConnections (one user, {} day(s)): {} calls ({:.0}/s), {:.1} rows each, p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
            a.report_days.max(1),
            report_us.len(),
            report_us.len() as f64 / elapsed,
            all.rows_seen as f64 / report_us.len().max(1) as f64,
            pct_ms(&mut report_us, 0.5),
            pct_ms(&mut report_us, 0.9),
            pct_ms(&mut report_us, 0.99),
            pct_ms(&mut report_us, 0.999),
            pct_ms(&mut report_us, 1.0)
        );
    }
    println!(
        "  {:.0} requests/s overall",
        (info_us.len() + report_us.len()) as f64 / elapsed
    );
    if a.json {
        println!(
            "{{\"bench\":\"api\",\"xdrs\":{},\"cores\":{cores},\"clients\":{},\"mix\":\"{}\",\"info_per_sec\":{:.0},\"info_p50_ms\":{:.3},\"info_p99_ms\":{:.3},\"report_per_sec\":{:.0},\"report_p50_ms\":{:.3},\"report_p99_ms\":{:.3}}}",
            a.xdrs,
            a.clients.max(1),
            a.mix.as_str(),
            info_us.len() as f64 / elapsed,
            pct_ms(&mut info_us, 0.5),
            pct_ms(&mut info_us, 0.99),
            report_us.len() as f64 / elapsed,
            pct_ms(&mut report_us, 0.5),
            pct_ms(&mut report_us, 0.99)
        );
    }
    Ok(ExitCode::SUCCESS)
}
