//! Provisioning events (DESIGN.md Part 2 "Events", seed 002): hooks from `[[hook]]`,
//! the call of one handler (an HTTP POST, or a local command with the event on stdin), and
//! the delivery threads. Events are written by the ledger in the same transaction as the
//! change that raised them (`ledger::events`); one thread per notify hook delivers them one
//! at a time in `event_id` order, retrying with capped exponential backoff, from the
//! ledger (so a crash loses nothing, a hung handler grows nothing but the ledger's table).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Every event name ratel raises.
pub const EVENTS: &[&str] = &[
    "clients.create",
    "clients.update",
    "clients.delete",
    "clients.archive",
    "clients.custom_fields_update",
    "clients.balance_nonnegative",
    "clients.balance_nonpositive",
    "accounts.create",
    "accounts.update",
    "accounts.delete",
    "clients_packages.assign",
    "clients_packages.activate",
    "clients_packages.deactivate",
    "clients_packages.renew",
    "clients_packages.close",
];

/// `[[hook]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub name: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Where a hook's handler is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port/path`: a POST.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// A local program and its arguments: the event JSON on stdin, exit 0 = done.
    Command(Vec<String>),
}

/// When a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After the change committed, from the outbox (at least once, in order).
    Notify,
    /// Before the change commits, synchronously; its answer may forbid or rewrite it.
    Veto,
}

/// A validated hook.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub events: Vec<String>,
    pub target: Target,
    pub mode: Mode,
    pub timeout: Duration,
    /// 0 = retry forever.
    pub max_attempts: u32,
}

impl Hook {
    /// Checks one `[[hook]]`; the error is (key, reason).
    pub fn build(c: &HookConfig, i: usize) -> Result<Hook, (String, String)> {
        let key = |k: &str| format!("hook[{i}] ({}).{k}", c.name);
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err((
                format!("hook[{i}].name"),
                "1 to 64 letters, digits, - or _".into(),
            ));
        }
        if c.events.is_empty() {
            return Err((
                key("events"),
                "at least one event name or module.* pattern".into(),
            ));
        }
        for e in &c.events {
            if !EVENTS.iter().any(|n| matches(e, n)) {
                return Err((
                    key("events"),
                    format!(
                        "{e:?} matches no event (one of {}, or module.*)",
                        EVENTS.join(", ")
                    ),
                ));
            }
        }
        let target = match (&c.url, &c.command) {
            (Some(url), None) => parse_url(url).map_err(|r| (key("url"), r))?,
            (None, Some(cmd)) if !cmd.is_empty() && !cmd[0].is_empty() => {
                Target::Command(cmd.clone())
            }
            (None, Some(_)) => return Err((key("command"), "a program and its arguments".into())),
            _ => return Err((key("url"), "exactly one of url or command".into())),
        };
        let mode = match c.mode.as_deref().unwrap_or("notify") {
            "notify" => Mode::Notify,
            "veto" => Mode::Veto,
            other => return Err((key("mode"), format!("{other:?}: notify or veto"))),
        };
        if mode == Mode::Veto && c.events.iter().any(|e| e.contains("balance_")) {
            return Err((key("events"), "balance events cannot be vetoed".into()));
        }
        let timeout_ms = c.timeout_ms.unwrap_or(2000);
        if !(1..=600_000).contains(&timeout_ms) {
            return Err((key("timeout_ms"), "1 to 600000".into()));
        }
        Ok(Hook {
            name: c.name.clone(),
            events: c.events.clone(),
            target,
            mode,
            timeout: Duration::from_millis(timeout_ms),
            max_attempts: c.max_attempts.unwrap_or(0),
        })
    }

    /// Whether this hook takes event `name`.
    pub fn wants(&self, name: &str) -> bool {
        // A veto hook is never asked about balance events.
        if self.mode == Mode::Veto && name.starts_with("clients.balance_") {
            return false;
        }
        self.events.iter().any(|p| matches(p, name))
    }
}

/// `pattern` is an event name or `module.*`.
pub fn matches(pattern: &str, name: &str) -> bool {
    pattern == name
        || pattern == "*"
        || pattern
            .strip_suffix(".*")
            .is_some_and(|m| name.strip_prefix(m).is_some_and(|r| r.starts_with('.')))
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: an http:// URL (put a TLS proxy in front for https)"))?;
    let (hp, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hp.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>().map_err(|_| format!("{url:?}: bad port"))?,
        ),
        _ if !hp.is_empty() => (hp.to_string(), 80),
        _ => return Err(format!("{url:?}: no host")),
    };
    Ok(Target::Http {
        host,
        port,
        path: path.to_string(),
    })
}

/// What a handler answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status, or the command's exit code.
    pub status: i32,
    pub body: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        match self.status {
            s if (200..300).contains(&s) => true,
            0 => true,
            _ => false,
        }
    }
}

/// Largest handler answer read.
const MAX_REPLY: u64 = 1 << 20;

/// Calls a hook's handler with `body` (JSON) and the event id as idempotency key.
pub fn call(hook: &Hook, body: &str, key: Option<i64>) -> Result<Reply, String> {
    match &hook.target {
        Target::Http { host, port, path } => http_post(host, *port, path, body, key, hook.timeout),
        Target::Command(argv) => run_command(argv, body, key, hook.timeout),
    }
}

fn http_post(
    host: &str,
    port: u16,
    path: &str,
    body: &str,
    key: Option<i64>,
    timeout: Duration,
) -> Result<Reply, String> {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let key_header = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{key_header}Content-Length: {}\r\nConnection: close\r\nUser-Agent: ratel\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        if Instant::now() >= deadline {
            return Err(format!("no answer within {} ms", timeout.as_millis()));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.len() as u64 > MAX_REPLY {
                    break;
                }
                // A complete answer with a Content-Length: done without waiting for close.
                if let Some(done) = complete(&resp) {
                    resp.truncate(done);
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {} ms", timeout.as_millis()))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<i32>().ok())
        .ok_or("malformed HTTP status line")?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

/// The length of a complete HTTP answer with a Content-Length header, if `b` holds it.
fn complete(b: &[u8]) -> Option<usize> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())?;
    (b.len() >= end + len).then_some(end + len)
}

fn run_command(
    argv: &[String],
    body: &str,
    key: Option<i64>,
    timeout: Duration,
) -> Result<Reply, String> {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(k) = key {
        cmd.env("RATEL_EVENT_ID", k.to_string());
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_REPLY).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: no exit within {} ms (killed)",
                    argv[0],
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{}: {e}", argv[0])),
        }
    };
    let out = reader.join().unwrap_or_default();
    Ok(Reply {
        status: status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&out).into_owned(),
    })
}

/// Counters of the delivery threads (read by `/metrics`).
#[derive(Debug, Default)]
pub struct EventCounters {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead: AtomicU64,
}

/// First retry after 1 s, doubling to 60 s.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Starts one delivery thread per notify hook over the ledger of `data_dir`; they stop
/// when `shutdown` is set.
pub fn spawn_delivery(
    data_dir: PathBuf,
    hooks: &[Hook],
    shutdown: Arc<AtomicBool>,
    counters: Arc<EventCounters>,
) -> Vec<std::thread::JoinHandle<()>> {
    hooks
        .iter()
        .filter(|h| h.mode == Mode::Notify)
        .cloned()
        .filter_map(|hook| {
            let (dir, stop, c) = (data_dir.clone(), shutdown.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("hook-{}", hook.name))
                .spawn(move || deliver_loop(&dir, &hook, &stop, &c))
                .ok()
        })
        .collect()
}

fn deliver_loop(data_dir: &std::path::Path, hook: &Hook, stop: &AtomicBool, c: &EventCounters) {
    let mut store = match crate::ledger::EventStore::open(data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(hook = %hook.name, error = %e, "event delivery cannot open the ledger");
            return;
        }
    };
    let mut attempts: u32 = 0;
    let mut next_try = Instant::now();
    let nap = |d: Duration| {
        let until = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next_try {
            nap(next_try - Instant::now());
            continue;
        }
        let next = match store.next_for(&hook.name, |n| hook.wants(n)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(hook = %hook.name, error = %e, "event delivery: ledger read failed; retrying");
                nap(Duration::from_secs(1));
                continue;
            }
        };
        let Some(ev) = next else {
            nap(Duration::from_millis(100));
            continue;
        };
        let r = call(hook, &ev.body, Some(ev.id));
        let result = match &r {
            Ok(reply) if reply.ok() => Ok(()),
            Ok(reply) => Err(format!("handler answered {}", reply.status)),
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok(()) => {
                if let Err(e) = store.delivered(&hook.name, ev.id) {
                    tracing::warn!(hook = %hook.name, error = %e, "event delivered but not recorded; it will be sent again");
                    nap(Duration::from_secs(1));
                    continue;
                }
                c.delivered.fetch_add(1, Ordering::Relaxed);
                attempts = 0;
            }
            Err(e) => {
                attempts += 1;
                c.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if hook.max_attempts > 0 && attempts >= hook.max_attempts {
                    tracing::error!(hook = %hook.name, event_id = ev.id, event = %ev.name, attempts, error = %e, "event dead after max_attempts; the hook moves on");
                    if store.dead(&hook.name, ev.id, attempts, &e).is_ok() {
                        c.dead.fetch_add(1, Ordering::Relaxed);
                    }
                    attempts = 0;
                } else {
                    let wait = backoff(attempts);
                    tracing::warn!(hook = %hook.name, event_id = ev.id, event = %ev.name, attempts, retry_in_s = wait.as_secs(), error = %e, "event delivery failed");
                    next_try = Instant::now() + wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_backoff() {
        assert!(matches("clients.*", "clients.balance_nonpositive"));
        assert!(!matches("clients.*", "clients_packages.assign"));
        assert!(matches("accounts.create", "accounts.create"));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(7), Duration::from_secs(60));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }

    #[test]
    fn hooks_are_checked() {
        let c = |url: Option<&str>,
                 cmd: Option<Vec<&str>>,
                 events: Vec<&str>,
                 mode: Option<&str>| HookConfig {
            name: "h".into(),
            events: events.into_iter().map(String::from).collect(),
            url: url.map(String::from),
            command: cmd.map(|v| v.into_iter().map(String::from).collect()),
            mode: mode.map(String::from),
            timeout_ms: None,
            max_attempts: None,
        };
        let h = Hook::build(
            &c(
                Some("http://127.0.0.1:5000/api"),
                None,
                vec!["clients.*"],
                None,
            ),
            0,
        )
        .unwrap();
        assert_eq!(
            h.target,
            Target::Http {
                host: "127.0.0.1".into(),
                port: 5000,
                path: "/api".into()
            }
        );
        assert!(h.wants("clients.balance_nonpositive"));
        assert!(Hook::build(&c(Some("https://x/"), None, vec!["clients.*"], None), 0).is_err());
        assert!(Hook::build(&c(None, None, vec!["clients.*"], None), 0).is_err());
        assert!(Hook::build(
            &c(
                Some("http://x:1/"),
                Some(vec!["/bin/true"]),
                vec!["clients.*"],
                None
            ),
            0
        )
        .is_err());
        assert!(Hook::build(&c(Some("http://x:1/"), None, vec!["nothing.here"], None), 0).is_err());
        assert!(Hook::build(
            &c(
                Some("http://x:1/"),
                None,
                vec!["clients.balance_nonpositive"],
                Some("veto")
            ),
            0
        )
        .is_err());
        let v = Hook::build(
            &c(
                None,
                Some(vec!["/bin/true"]),
                vec!["clients.*"],
                Some("veto"),
            ),
            0,
        )
        .unwrap();
        assert!(!v.wants("clients.balance_nonpositive") && v.wants("clients.create"));
    }

    #[test]
    fn a_command_handler_gets_the_event_on_stdin() {
        let h = Hook::build(
            &HookConfig {
                name: "c".into(),
                events: vec!["clients.*".into()],
                url: None,
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat; echo \" $RATEL_EVENT_ID\"".into(),
                ]),
                mode: None,
                timeout_ms: Some(5000),
                max_attempts: None,
            },
            0,
        )
        .unwrap();
        let r = call(&h, "{\"a\":1}", Some(17)).unwrap();
        assert!(r.ok());
        assert_eq!(r.body.trim(), "{\"a\":1} 17");
        let slow = Hook {
            timeout: Duration::from_millis(100),
            target: Target::Command(vec!["/bin/sh".into(), "-c".into(), "sleep 5".into()]),
            ..h
        };
        assert!(call(&slow, "{}", None).is_err());
    }
}
