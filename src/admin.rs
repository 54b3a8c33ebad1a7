//! The admin CLI that works while `serve` runs: `ratel user show`, `ratel user credit`,
//! `ratel sessions`. Every command goes through the running server's IBSng JSON-RPC API
//! (never the ledger, so the data-dir lock is no obstacle and every change is ordered by the
//! serve core like any operator's): `--config F` gives `[api] listen` and the first
//! `[[admin]]`; `--api URL`, `RATEL_ADMIN` and `RATEL_PASSWORD` override them. The HTTP
//! client is a small blocking HTTP/1.1 one over `std::net::TcpStream` (one connection per
//! call, bounded by timeouts). Output is human-readable lines; an error is one line and a
//! non-zero exit (main.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// Where the API is and who logs in.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// Config file of the running server: its `[api] listen` and first `[[admin]]` (default:
    /// the built-in demo config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The API's URL (`http://HOST:PORT/`), instead of the config's `[api] listen`.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Show a subscriber: status, group, company, credit, open sessions.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The subscriber's username.
        name: String,
    },
    /// Change a subscriber's credit: `+10` and `-3.5` add, `=0` sets (exact decimals).
    Credit {
        #[command(flatten)]
        api: ApiArgs,
        /// The subscriber's username.
        name: String,
        /// `+N` adds N, `-N` takes N off, `=N` sets the credit to N.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Comment stored with the change.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `ratel sessions`.
#[derive(clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this subscriber's sessions.
    #[arg(long)]
    user: Option<String>,
}

/// `ratel disconnect`.
#[derive(clap::Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The open session's id (Acct-Session-Id), as `ratel sessions` lists it.
    session_id: String,
    /// Only the session of this subscriber (when NASes share session ids).
    #[arg(long)]
    user: Option<String>,
}

/// Asks the running server to send a Disconnect-Request (RFC 5176) for an open session.
pub fn disconnect(a: DisconnectArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.api)?;
    let mut params = json!({ "session_id": a.session_id });
    if let Some(u) = &a.user {
        params["username"] = json!(u);
    }
    let r = client.call("user.killUser", params)?;
    for s in r.as_array().cloned().unwrap_or_default() {
        println!(
            "Disconnect-Request queued for {} session {} on {} (to {}); the NAS's answer is logged and counted",
            s["username"].as_str().unwrap_or(""),
            s["unique_id"].as_str().unwrap_or(""),
            s["ras_description"].as_str().unwrap_or(""),
            s["sent_to"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Show { api, name } => {
            let client = Client::new(&api)?;
            let (id, info) = client.user_info(&name)?;
            print!("{}", show_user(&name, &id, &info));
        }
        UserCommand::Credit {
            api,
            name,
            amount,
            comment,
        } => {
            let (change_type, credit) = parse_amount(&amount)?;
            let client = Client::new(&api)?;
            let (id, before) = client.user_info(&name)?;
            client.call(
                "user.changeCreditExtended",
                json!({
                    "user_id": id,
                    "credit": credit,
                    "change_type": change_type,
                    "credit_comment": comment.unwrap_or_default(),
                }),
            )?;
            let (_, after) = client.user_info(&name)?;
            println!(
                "{name}: credit {} -> {} ({change_type} {credit})",
                before["basic_info"]["credit"], after["basic_info"]["credit"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sessions(a: SessionsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.api)?;
    let mut params = json!({});
    if let Some(u) = &a.user {
        // An unknown user is an error, not an empty list.
        client.user_info(u)?;
        params["conds"] = json!({ "username": u });
    }
    let r = client.call("report.getOnlineUsers", params)?;
    let rows = r["internet_onlines"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for o in &rows {
        println!(
            "{}",
            session_line(
                o["username"].as_str().unwrap_or(""),
                o["unique_id"].as_str().unwrap_or(""),
                o["ras_description"].as_str().unwrap_or(""),
                o["remote_ip"].as_str().unwrap_or(""),
                o["login_time"].as_str().unwrap_or(""),
                &o["duration_secs"].to_string(),
                &o["in_bytes"].to_string(),
                &o["out_bytes"].to_string(),
                o["credit_used"].as_str().unwrap_or(""),
            )
        );
    }
    println!("{} open sessions", rows.len());
    Ok(ExitCode::SUCCESS)
}

/// `+N` → (ADD, N), `-N` → (ADD, -N), `=N` → (SET, N); N an exact decimal, kept as typed.
fn parse_amount(a: &str) -> anyhow::Result<(&'static str, String)> {
    let bad = || anyhow::anyhow!("amount {a:?}: expected +N, -N or =N (e.g. +10, -3.5, =0)");
    let (kind, number) = match a.chars().next() {
        Some('+') => ("ADD", &a[1..]),
        Some('-') => ("ADD", a),
        Some('=') => ("SET", &a[1..]),
        _ => return Err(bad()),
    };
    let digits = number.strip_prefix('-').unwrap_or(number);
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        || number.parse::<rust_decimal::Decimal>().is_err()
    {
        return Err(bad());
    }
    Ok((kind, number.to_string()))
}

fn show_user(name: &str, id: &str, info: &Value) -> String {
    let b = &info["basic_info"];
    let s = |v: &Value| match v {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let mut out = format!("{name} (user id {id})\n");
    out += &format!("  status: {}\n", s(&b["status"]));
    out += &format!("  group: {}\n", s(&b["group_name"]));
    out += &format!("  company: {}\n", s(&b["isp_name"]));
    out += &format!("  credit: {}\n", s(&b["credit"]));
    out += &format!("  created: {}\n", s(&b["creation_date"]));
    if let Some(t) = info["attrs"]["first_login"].as_str() {
        out += &format!("  first login: {t}\n");
    }
    let online = info["internet_onlines"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    out += &format!("  open sessions: {}\n", online.len());
    // IBSng's internet_onlines rows: [ras_ip, ras_description, port, login_time,
    // remote_ip, _, credit_used, _, caller_id, in_bytes, out_bytes, duration, _, _,
    // unique_id, ...].
    for o in online {
        let f = |i: usize| s(&o[i]);
        out += &format!(
            "    {}\n",
            session_line(
                name,
                &f(14),
                &f(1),
                &f(4),
                &f(3),
                &f(11),
                &f(9),
                &f(10),
                &f(6)
            )
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn session_line(
    user: &str,
    session: &str,
    nas: &str,
    ip: &str,
    since: &str,
    secs: &str,
    bytes_in: &str,
    bytes_out: &str,
    charged: &str,
) -> String {
    format!(
        "{user} session {session} on {nas} ip {ip} since {since}: {secs} s, in {bytes_in} B, out {bytes_out} B, charged {charged}"
    )
}

/// Bytes of a users file sent in one `user.importUsers` call (well under the API's body
/// limit once JSON-escaped).
const IMPORT_PART_BYTES: usize = 256 << 10;

/// `ratel users import` while `serve` holds the data dir: the file goes to the running
/// server in parts of whole records (header first, each with the file line it starts at),
/// and the server's core creates the clients in order with every other write.
pub fn import_via_api(
    config: Option<&std::path::Path>,
    api: Option<String>,
    file: &std::path::Path,
) -> anyhow::Result<ratel_engine::users::ImportSummary> {
    use ratel_engine::csv::{scan_records_with, strip_bom, Dialect};
    let client = Client::new(&ApiArgs {
        config: config.map(|p| p.to_path_buf()),
        api,
    })?;
    let name = file.display().to_string();
    let raw = std::fs::read(file).with_context(|| name.clone())?;
    let buf = strip_bom(&raw);
    let mut spans = Vec::new();
    scan_records_with(Dialect::DOC, buf, 1, true, &mut spans);
    let mut spans = spans.into_iter().filter(|s| s.end > s.start).peekable();
    let header = spans
        .next()
        .with_context(|| format!("{name}:1: header: empty file"))?;
    let head = String::from_utf8_lossy(&buf[header.start..header.end]).into_owned();
    let mut summary = ratel_engine::users::ImportSummary::default();
    while let Some(first) = spans.next() {
        let (start, first_line) = (first.start, first.line);
        let mut end = first.end;
        let mut n = 1;
        while let Some(s) = spans.peek() {
            if s.end - start > IMPORT_PART_BYTES || n >= ratel_engine::commands::MAX_IMPORT_ROWS {
                break;
            }
            end = s.end;
            n += 1;
            spans.next();
        }
        let csv = format!("{head}\n{}", String::from_utf8_lossy(&buf[start..end]));
        let r = client.call(
            "user.importUsers",
            json!({"file": name, "first_line": first_line - 1, "csv": csv}),
        )?;
        summary.created += r["created"].as_array().map_or(0, |a| a.len()) as u64;
        summary.existing += r["existing"].as_array().map_or(0, |a| a.len()) as u64;
        for b in r["bad"].as_array().into_iter().flatten() {
            summary.bad.push(b.as_str().unwrap_or_default().to_string());
        }
    }
    Ok(summary)
}

/// A blocking JSON-RPC client logged in as an admin (name and password in every call).
struct Client {
    addr: SocketAddr,
    name: String,
    password: String,
}

impl Client {
    fn new(a: &ApiArgs) -> anyhow::Result<Client> {
        let catalog = crate::load(a.config.as_deref())?;
        let listen = match &a.api {
            Some(url) => host_port(url)?,
            None => catalog.api_listen.clone(),
        };
        let mut addr = listen
            .to_socket_addrs()
            .with_context(|| format!("API address {listen}"))?
            .next()
            .with_context(|| format!("API address {listen}: no address"))?;
        if addr.port() == 0 {
            bail!("api.listen {listen} has no fixed port: pass --api http://HOST:PORT/");
        }
        // A wildcard listener is reached on loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let first = catalog.admins.first();
        let name = std::env::var("RATEL_ADMIN")
            .ok()
            .or_else(|| first.map(|a| a.name.clone()))
            .context("no [[admin]] in the config: set RATEL_ADMIN and RATEL_PASSWORD")?;
        let password = std::env::var("RATEL_PASSWORD")
            .ok()
            .or_else(|| first.map(|a| a.password.clone()))
            .context("no [[admin]] in the config: set RATEL_PASSWORD")?;
        Ok(Client {
            addr,
            name,
            password,
        })
    }

    /// `user.getUserInfo` of `name`: (user id, the user's info object).
    fn user_info(&self, name: &str) -> anyhow::Result<(String, Value)> {
        let r = self.call("user.getUserInfo", json!({ "normal_username": name }))?;
        let (id, info) = r
            .as_object()
            .and_then(|m| m.iter().next())
            .context("user.getUserInfo: unexpected answer")?;
        Ok((id.clone(), info.clone()))
    }

    /// One call; the API's error (`CODE|message`) becomes this command's error.
    fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let mut p: Map<String, Value> = params.as_object().cloned().unwrap_or_default();
        p.insert("auth_type".into(), json!("ADMIN"));
        p.insert("auth_name".into(), json!(self.name));
        p.insert("auth_pass".into(), json!(self.password));
        let body = json!({"method": method, "params": p, "id": 1}).to_string();
        let answer = self
            .post(&body)
            .with_context(|| format!("API at http://{}/ (is `ratel serve` running?)", self.addr))?;
        if !answer["error"].is_null() {
            let e = answer["error"].as_str().unwrap_or("unknown error");
            bail!("{method}: {e}");
        }
        Ok(answer["result"].clone())
    }

    fn post(&self, body: &str) -> anyhow::Result<Value> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut resp = Vec::new();
        s.take(64 << 20).read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP answer")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("HTTP status {status}");
        }
        serde_json::from_str(body).context("the answer is not JSON")
    }
}

/// `http://HOST:PORT/...` or `HOST:PORT` → `HOST:PORT`.
fn host_port(url: &str) -> anyhow::Result<String> {
    if url.starts_with("https://") {
        bail!("--api {url}: https is not supported (the API speaks plain HTTP; use a local address or a tunnel)");
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hp = rest.split('/').next().unwrap_or("");
    if hp.is_empty() || !hp.contains(':') {
        bail!("--api {url}: expected http://HOST:PORT/");
    }
    Ok(hp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_text() {
        let cases = [
            ("+10", Some(("ADD", "10"))),
            ("-3.5", Some(("ADD", "-3.5"))),
            ("=0", Some(("SET", "0"))),
            ("+0.0000000001", Some(("ADD", "0.0000000001"))),
            ("10", None),
            ("+", None),
            ("+1e3", None),
            ("=-2", Some(("SET", "-2"))),
            ("+ten", None),
            ("--1", None),
        ];
        for (text, want) in cases {
            let got = parse_amount(text).ok();
            assert_eq!(got.as_ref().map(|(k, n)| (*k, n.as_str())), want, "{text}");
        }
    }

    #[test]
    fn api_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:1237/").unwrap(),
            "127.0.0.1:1237"
        );
        assert_eq!(host_port("127.0.0.1:9").unwrap(), "127.0.0.1:9");
        assert_eq!(host_port("http://[::1]:1237").unwrap(), "[::1]:1237");
        assert!(host_port("https://x:1").is_err());
        assert!(host_port("http://x/").is_err());
    }
}
