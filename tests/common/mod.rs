//! Shared helpers of the end-to-end tests: a temp data dir with a config, the real
//! `ratel serve` binary, RADIUS packets built with radius-rs, and an xDR reader.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow_array::{Array, Decimal128Array, Int64Array, StringArray};
use chrono::{DateTime, TimeZone, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use radius::core::code::Code;
use radius::core::packet::Packet;
use radius::core::{rfc2865, rfc2866, rfc2869};
use rust_decimal::Decimal;

pub const SECRET: &[u8] = b"testing123";

pub fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env::with(
            "username,password,group,credit\nalice,pw,g,10\nbob,pw,g,5\n",
            false,
        )
    }

    /// `n` users `user0..` with `credit` each, and a tariff (prefix 1: 0.01/min, 60/60).
    pub fn new_with_users(n: usize, credit: &str) -> Env {
        let mut users = String::from("username,password,group,credit\n");
        for i in 0..n {
            users.push_str(&format!("user{i},pw,g,{credit}\n"));
        }
        Env::with(&users, true)
    }

    pub fn with(users_csv: &str, tariff: bool) -> Env {
        Env::with_dir(tempfile::tempdir().unwrap(), users_csv, tariff)
    }

    pub fn with_dir(dir: tempfile::TempDir, users_csv: &str, tariff: bool) -> Env {
        let cfg = r#"
[radius]
listen = "127.0.0.1:0"
stale_timeout_secs = 100000000
[api]
listen = "127.0.0.1:0"
[storage]
data_dir = "data"
[cdr]
spool = "spool"
format = "generic"
[[admin]]
name = "system"
password = "sys"
[[nas]]
name = "ras1"
ip = "127.0.0.1"
secret = "testing123"
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
name = "g"
charge_rules = ["night", "day"]
decimals = 4
rounding = "up"
"#;
        let cfg = if tariff {
            std::fs::write(
                dir.path().join("rates.csv"),
                "prefix,description,price_per_minute,connect_fee,first_increment,next_increment\n1,USA,0.0100,0,60,60\n",
            )
            .unwrap();
            cfg.replace(
                "rounding = \"up\"\n",
                "rounding = \"up\"\ntariff = \"std\"\n",
            ) + "[[tariff]]\nname = \"std\"\nrates = \"rates.csv\"\n"
        } else {
            cfg.to_string()
        };
        std::fs::write(dir.path().join("ratel.toml"), cfg).unwrap();
        std::fs::write(dir.path().join("users.csv"), users_csv).unwrap();
        let env = Env { dir };
        let users = env.dir.path().join("users.csv");
        env.ratel_ok(&[
            "users",
            "import",
            "--config",
            &env.config(),
            &users.display().to_string(),
        ]);
        env
    }

    /// Runs the real `ratel` binary with `args`; asserts it succeeded (stderr on failure).
    pub fn ratel_ok(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ratel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `ratel serve`, returns the child and the RADIUS address it printed.
    pub fn serve(&self) -> (Server, SocketAddr) {
        let (c, radius, _) = self.serve_all();
        (c, radius)
    }

    /// Starts `ratel serve`; returns the child, the RADIUS and the API addresses.
    pub fn serve_all(&self) -> (Server, SocketAddr, SocketAddr) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratel"));
        cmd.args(["serve", "--config", &self.config()]);
        start_serve(cmd)
    }

    /// `serve_all` with extra environment variables for the server.
    pub fn serve_all_env(&self, vars: &[(&str, &str)]) -> (Server, SocketAddr, SocketAddr) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratel"));
        cmd.args(["serve", "--config", &self.config()]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        start_serve(cmd)
    }

    /// `serve_all` with the server's log lines (info level) delivered to the receiver.
    pub fn serve_logged(
        &self,
    ) -> (
        Server,
        SocketAddr,
        SocketAddr,
        std::sync::mpsc::Receiver<String>,
    ) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratel"));
        cmd.args(["serve", "--config", &self.config()]);
        let (tx, rx) = std::sync::mpsc::channel();
        let (server, radius, api) = start_serve_logging(cmd, Some(tx));
        (server, radius, api, rx)
    }

    /// `serve_all` with the server's open-file limit set to `nofile` (`ulimit -n`).
    pub fn serve_all_nofile(&self, nofile: u32) -> (Server, SocketAddr, SocketAddr) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {nofile} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_ratel"))
            .arg(self.config());
        start_serve(cmd)
    }

    /// [`Env::credits`] in username order.
    pub fn sorted_credits(&self) -> Vec<(String, Decimal)> {
        let mut c = self.credits();
        c.sort();
        c
    }

    pub fn credits(&self) -> Vec<(String, Decimal)> {
        let l = ratel_engine::ledger::Ledger::open(&self.data()).unwrap();
        l.load_users()
            .unwrap()
            .into_iter()
            .map(|u| (u.username.unwrap(), u.credit))
            .collect()
    }
}

/// Starts `ratel serve --config config`; returns the child, the RADIUS and API addresses.
pub fn serve_config(config: &str) -> (Server, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratel"));
    cmd.args(["serve", "--config", config]);
    start_serve(cmd)
}

/// Runs a prepared `ratel serve` command; returns the child, the RADIUS and API addresses.
fn start_serve(cmd: Command) -> (Server, SocketAddr, SocketAddr) {
    start_serve_logging(cmd, None)
}

/// Starts `cmd` (a `ratel serve`): at `warn` with its log on our stderr, or at `info` with
/// every log line sent to `log`.
fn start_serve_logging(
    mut cmd: Command,
    log: Option<std::sync::mpsc::Sender<String>>,
) -> (Server, SocketAddr, SocketAddr) {
    let (level, stderr) = match log {
        Some(_) => ("info", Stdio::piped()),
        None => ("warn", Stdio::inherit()),
    };
    let mut child = cmd
        .env("RATEL_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    if let (Some(tx), Some(err)) = (log, child.stderr.take()) {
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut radius = None;
    let api = loop {
        let line = lines.next().expect("serve printed its addresses").unwrap();
        if let Some(rest) = line.trim().strip_prefix("RADIUS accounting on udp://") {
            radius = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if let Some(rest) = line.trim().strip_prefix("JSON-RPC API on http://") {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (
        Server(Some(child)),
        radius.expect("RADIUS address printed first"),
        api,
    )
}

/// A running `ratel serve`; killed on drop so a failed test leaves no process behind.
pub struct Server(Option<Child>);

impl Server {
    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    /// The server's pid (for a kill from another thread).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM and wait: a graceful stop must exit 0.
pub fn stop(mut server: Server) {
    let mut child = server.0.take().expect("running");
    let pid = child.id() as i32;
    // SIGTERM: graceful stop.
    unsafe_kill(pid, 15);
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

pub fn unsafe_kill(pid: i32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// 2026-11-02 10:00:00 UTC (a Monday, inside the "day" rule).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap()
}

#[allow(clippy::too_many_arguments)]
pub fn acct(
    id: u8,
    status: u32,
    user: &str,
    sid: &str,
    secs: u32,
    octets_in: u64,
    octets_out: u64,
    cause: Option<u32>,
) -> Vec<u8> {
    let mut p = Packet::new_with_identifier(Code::AccountingRequest, SECRET, id);
    rfc2866::add_acct_status_type(&mut p, status);
    rfc2865::add_user_name(&mut p, user);
    rfc2866::add_acct_session_id(&mut p, sid);
    rfc2866::add_acct_session_time(&mut p, secs);
    rfc2866::add_acct_input_octets(&mut p, octets_in as u32);
    rfc2869::add_acct_input_gigawords(&mut p, (octets_in >> 32) as u32);
    rfc2866::add_acct_output_octets(&mut p, octets_out as u32);
    rfc2869::add_acct_output_gigawords(&mut p, (octets_out >> 32) as u32);
    rfc2869::add_event_timestamp(&mut p, &(t0() + chrono::Duration::seconds(secs as i64)));
    rfc2865::add_framed_ip_address(&mut p, &"10.0.0.7".parse().unwrap());
    rfc2865::add_calling_station_id(&mut p, "aa:bb:cc:dd:ee:ff");
    if let Some(c) = cause {
        rfc2866::add_acct_terminate_cause(&mut p, c);
    }
    p.encode().unwrap()
}

/// Sends a request and returns the verified response, or None after a timeout.
pub fn send(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => {
            let resp = buf[..n].to_vec();
            assert_eq!(resp[0], 5, "Accounting-Response code");
            assert_eq!(resp[1], req[1], "identifier echoed");
            assert!(
                Packet::is_authentic_response(&resp, req, SECRET),
                "response authenticator"
            );
            Some(resp)
        }
        Err(_) => None,
    }
}

pub fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(3000)))
        .unwrap();
    s
}

/// (username, status, session_id, duration, bytes_in, credit_used, after_credit) of each xDR.
pub fn xdrs(data: &Path) -> Vec<(String, String, String, i64, i64, Decimal, Decimal)> {
    let mut out = Vec::new();
    let Ok(parts) = std::fs::read_dir(data.join("xdr")) else {
        return out;
    };
    for p in parts {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            assert!(f.extension().is_some_and(|e| e == "parquet"), "stray {f:?}");
            for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap()
            {
                let b = b.unwrap();
                let (u, st, sid) = (
                    col::<StringArray>(&b, "username"),
                    col::<StringArray>(&b, "status"),
                    col::<StringArray>(&b, "session_id"),
                );
                let (dur, bin) = (
                    col::<Int64Array>(&b, "duration_seconds"),
                    col::<Int64Array>(&b, "bytes_in"),
                );
                let (cu, ac) = (
                    col::<Decimal128Array>(&b, "credit_used"),
                    col::<Decimal128Array>(&b, "after_credit"),
                );
                for r in 0..b.num_rows() {
                    out.push((
                        u.value(r).into(),
                        st.value(r).into(),
                        sid.value(r).into(),
                        dur.value(r),
                        bin.value(r),
                        Decimal::from_i128_with_scale(cu.value(r), 10).normalize(),
                        Decimal::from_i128_with_scale(ac.value(r), 10).normalize(),
                    ));
                }
            }
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

/// Column `name` of an xDR batch as its concrete Arrow array type.
pub fn col<T: Array + Clone + 'static>(b: &arrow_array::RecordBatch, name: &str) -> T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} type"))
        .clone()
}

/// One HTTP/1.1 POST of `body` to `/` over a fresh TCP connection; returns the status code
/// and the parsed JSON answer.
pub fn http_post(api: SocketAddr, body: &[u8]) -> (u16, serde_json::Value) {
    http_post_on(std::net::TcpStream::connect(api).unwrap(), api, body)
}

/// `http_post` from the local address `from` (e.g. 127.0.0.2: another client IP).
pub fn http_post_from(
    from: std::net::IpAddr,
    api: SocketAddr,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&api.into()).unwrap();
    http_post_on(sock.into(), api, body)
}

fn http_post_on(
    mut s: std::net::TcpStream,
    api: SocketAddr,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A peer may close early on a huge body; the answer is still readable.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json_body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(json_body).unwrap_or(serde_json::Value::Null);
    (status, value)
}

/// A JSON-RPC call; returns (result, error).
pub fn rpc(
    api: SocketAddr,
    method: &str,
    params: serde_json::Value,
) -> (serde_json::Value, serde_json::Value) {
    let body = serde_json::json!({"method": method, "params": params, "id": 7}).to_string();
    let (status, v) = http_post(api, body.as_bytes());
    assert_eq!(status, 200, "HTTP status for {method}");
    assert_eq!(v["id"], 7, "id echoed for {method}: {v}");
    (v["result"].clone(), v["error"].clone())
}

/// The status line of a `ratel rate` summary: (OK, unanswered, NO_RATE, UNKNOWN_USER,
/// duplicate, bad).
pub fn counts(summary: &str) -> [u64; 6] {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("OK "))
        .unwrap_or_else(|| panic!("no status line in {summary}"));
    let nums: Vec<u64> = line
        .split(',')
        .map(|part| part.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    nums.try_into().unwrap()
}

/// `user0..user2` with these credits, in username order.
pub fn users(c: [&str; 3]) -> Vec<(String, Decimal)> {
    (0..3).map(|i| (format!("user{i}"), d(c[i]))).collect()
}

/// An HTTP/1.1 answer: status, headers (names lowercased, in order), body (de-chunked).
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl HttpAnswer {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request over a fresh connection (from the local address `from` when
/// given, e.g. 127.0.0.2: another client IP), `Connection: close`, read to the end.
pub fn http_request(
    from: Option<std::net::IpAddr>,
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    use std::io::{Read, Write};
    let mut s: std::net::TcpStream = match from {
        None => std::net::TcpStream::connect(api).unwrap(),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            sock.connect(&api.into()).unwrap();
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest).unwrap_or_else(|| panic!("truncated chunked body ({} bytes)", rest.len()))
    } else {
        rest.to_vec()
    };
    HttpAnswer {
        status,
        headers,
        body,
        chunked,
    }
}

/// A chunked body decoded; `None` when it does not end with the last (zero) chunk.
pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A temp dir holding a test's own config (and the files it names: rate decks, ...), with
/// the spool and data dir the config points at (`spool`, `data`): the launcher of the
/// dialect tests.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Writes `ratel.toml` = `config` and each `(name, content)` of `files`.
    pub fn new(config: &str, files: &[(&str, &str)]) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ratel.toml"), config).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        Site { dir }
    }

    pub fn config(&self) -> String {
        self.dir.path().join("ratel.toml").display().to_string()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// `ratel serve`: (server, RADIUS accounting address, API address).
    pub fn serve(&self) -> (Server, SocketAddr, SocketAddr) {
        serve_config(&self.config())
    }

    /// Drops a CDR file into the spool (written under a hidden name, then renamed).
    pub fn drop_cdr(&self, name: &str, content: &str) {
        let tmp = self.spool().join(format!(".{name}.part"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.spool().join(name)).unwrap();
    }

    /// Waits (at most 20 s) until `n` spool files are in `spool/done/`; none may fail.
    pub fn wait_spool_done(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let count = |sub: &str| {
                std::fs::read_dir(self.spool().join(sub))
                    .map(|d| d.flatten().count())
                    .unwrap_or(0)
            };
            assert_eq!(count("failed"), 0, "spool files failed");
            let got = count("done");
            if got >= n {
                assert_eq!(got, n, "files in spool/done");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {got} of {n} spool files rated within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ledger opened read-only beside the running server.
    pub fn ledger_ro(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_with_flags(
            self.data().join("ledger.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    /// Waits (at most 10 s) until no xDR waits in the outbox (all are in Parquet files).
    pub fn wait_outbox_empty(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = self
                .ledger_ro()
                .query_row("SELECT count(*) FROM xdr_outbox", [], |r| r.get(0))
                .unwrap();
            if n == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} xDRs still in the outbox after 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
