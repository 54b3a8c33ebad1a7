//! End-to-end tests of the operations commands on the real binary: `check-config` (also
//! beside a running `serve`), online `backup` while `serve` takes RADIUS accounting and
//! rates spool files, `restore` into a fresh data dir compared balance by balance and xDR by
//! xDR with the original (and refused for a tampered file or a non-empty dir), a backup
//! under load that restores to one consistent instant, JSON logs, the demo-password guard,
//! shell completions and the man page.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;

fn ratel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `ratel args` and waits at most 60 s for it to exit (then kills it and fails).
fn ratel_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(args)
        .env("RATEL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ratel {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A second config beside the env's, identical but for its data dir and spool.
fn config_with_data_dir(env: &Env, name: &str) -> (String, PathBuf) {
    let cfg = std::fs::read_to_string(env.config())
        .unwrap()
        .replace("data_dir = \"data\"", &format!("data_dir = \"{name}\""))
        .replace("spool = \"spool\"", &format!("spool = \"spool-{name}\""));
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    (path.display().to_string(), env.dir.path().join(name))
}

fn balances(data: &Path) -> Vec<ratel_engine::ledger::UserRow> {
    ratel_engine::ledger::Ledger::open(data)
        .unwrap()
        .load_users()
        .unwrap()
}

fn sorted_xdrs(data: &Path) -> Vec<(String, String, String, i64, i64, Decimal, Decimal)> {
    let mut x = xdrs(data);
    x.sort();
    x
}

/// Drops a generic CDR file into the spool (temp name, old mtime, rename).
fn spool_file(spool: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(spool).unwrap();
    let tmp = spool.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(5))
        .unwrap();
    std::fs::rename(&tmp, spool.join(name)).unwrap();
}

/// Waits (at most 60 s) until `n` files are in the spool's `done/`.
fn wait_done(spool: &Path, n: usize) {
    let done = spool.join("done");
    for _ in 0..600 {
        if std::fs::read_dir(&done).map(|d| d.count()).unwrap_or(0) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the spool did not rate {n} files within 60 s");
}

/// One RADIUS session: Start, Interim, Stop (each acknowledged).
fn session(c: &std::net::UdpSocket, addr: std::net::SocketAddr, id: u8, user: &str, sid: &str) {
    let gb = 1_000_000_000u64;
    for (k, (status, secs, octets, cause)) in [
        (1, 0, 0, None),
        (3, 300, gb / 4, None),
        (2, 600 + id as u32, gb / 2, Some(1)),
    ]
    .into_iter()
    .enumerate()
    {
        let req = acct(
            id.wrapping_mul(3).wrapping_add(k as u8),
            status,
            user,
            sid,
            secs,
            octets,
            0,
            cause,
        );
        assert!(send(c, addr, &req).is_some(), "{sid} step {k} unanswered");
    }
}

fn cdr_body(file: usize, users: usize) -> String {
    let mut s = String::from("call_id,caller,callee,start_time,duration_s,disposition,account\n");
    for i in 0..50 {
        s.push_str(&format!(
            "f{file}-c{i},555,15551234567,2026-11-02T10:00:00Z,{},ANSWERED,user{}\n",
            1 + (i * 7) % 130,
            i % users
        ));
    }
    // An unknown account and an unanswered call: xDRs at cost 0.
    s.push_str(&format!(
        "f{file}-x,555,15551234567,2026-11-02T10:00:00Z,30,ANSWERED,nobody\n"
    ));
    s.push_str(&format!(
        "f{file}-y,555,15551234567,2026-11-02T10:00:00Z,0,NO ANSWER,user0\n"
    ));
    s
}

#[test]
fn check_config_summarizes_a_good_config_and_names_the_fault_of_a_bad_one() {
    let env = Env::new_with_users(2, "10");
    let out = ratel(&["check-config", "--config", &env.config()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "OK",
        "groups: 1 (g)",
        "charge rules: 2",
        "tariffs: 1",
        "std: 1 prefixes, 1 rate rows",
        "NASes: 1",
        "ras1 127.0.0.1",
        "CDR formats: generic, asterisk, freeswitch (spool format generic)",
        "RADIUS accounting: udp 127.0.0.1:0",
        "API (IBSng at /, Tariscope at /api/): tcp 127.0.0.1:0",
        "hooks: 0",
        "warning: admin \"system\" has the demo password",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    // Safe beside a running serve (no data-dir lock).
    let (server, _) = env.serve();
    let out = ratel(&["check-config", "--config", &env.config()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    stop(server);
    // The built-in demo config is valid.
    assert!(ratel(&["check-config"]).status.success());

    let good = std::fs::read_to_string(env.config()).unwrap();
    let bad = env.dir.path().join("bad.toml");
    let bad_name = bad.display().to_string();
    // (config text, what the one line says after the file name)
    let cases = [
        (
            good.replace("rounding = \"up\"", "rounding = \"sideways\""),
            format!("{bad_name}: group[0] (g).rounding: "),
        ),
        (
            good.replace("[storage]", "[storage]\nbogus = 1"),
            format!("{bad_name}:"),
        ),
        (
            good.replace("start = \"00:00\"", "start = \"01:00\""),
            format!("{bad_name}: group[0] (g).charge_rules: "),
        ),
    ];
    for (cfg, want) in cases {
        std::fs::write(&bad, cfg).unwrap();
        let out = ratel(&["check-config", "--config", &bad_name]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let e = text(&out.stderr);
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.starts_with(&want), "{e:?} does not start with {want:?}");
    }
    // A syntax error carries its line number: FILE:LINE: reason.
    std::fs::write(&bad, good.replace("[api]", "[api\n")).unwrap();
    let out = ratel(&["check-config", "--config", &bad_name]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    let line = e
        .strip_prefix(&format!("{bad_name}:"))
        .unwrap_or_else(|| panic!("{e}"));
    assert!(
        line.split(':').next().unwrap().parse::<u32>().is_ok(),
        "{e}"
    );
}

#[test]
fn backup_while_serving_restores_every_balance_and_xdr() {
    let env = Env::new_with_users(8, "100");
    let (server, addr) = env.serve();
    let c = client();
    for (i, user) in ["user0", "user1", "user2", "user5", "nobody"]
        .iter()
        .enumerate()
    {
        session(&c, addr, i as u8, user, &format!("s{i}"));
    }
    let spool = env.dir.path().join("spool");
    spool_file(&spool, "a.csv", &cdr_body(0, 8));
    spool_file(&spool, "b.csv", &cdr_body(1, 8));
    wait_done(&spool, 2);
    // One session left open: its charge so far is in the ledger, its xDR comes at Stop.
    assert!(send(&c, addr, &acct(200, 1, "user3", "open", 0, 0, 0, None)).is_some());
    assert!(send(&c, addr, &acct(201, 3, "user3", "open", 120, 0, 0, None)).is_some());

    let backup = env.dir.path().join("backups/b1");
    let b = backup.display().to_string();
    let out = ratel_bounded(&["backup", "--config", &env.config(), &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("xDR files"),
        "{}",
        text(&out.stdout)
    );
    // A backup never overwrites: the same DEST again is refused.
    let again = ratel_bounded(&["backup", "--config", &env.config(), &b]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"));
    // No restore under a running serve, even with --force; its data dir is left alone.
    let out = ratel_bounded(&["restore", "--config", &env.config(), "--force", &b]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("stop `serve`"),
        "{}",
        text(&out.stderr)
    );
    stop(server);

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(backup.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], 1);
    assert!(manifest["created"].as_str().unwrap().ends_with('Z'));
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], "ledger.sqlite");
    assert!(files.len() >= 3, "the ledger and the xDR files: {manifest}");
    for f in files {
        let p = backup.join(f["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f["bytes"].as_u64().unwrap()
        );
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
    }

    // Restore into a fresh data dir; start and stop serve on it so both sides flushed
    // their xDR outbox at a graceful stop.
    let (restored_cfg, restored) = config_with_data_dir(&env, "restored");
    let out = ratel_bounded(&["restore", "--config", &restored_cfg, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("8 subscribers"),
        "{}",
        text(&out.stdout)
    );
    let (restored_server, _, _) = serve_config(&restored_cfg);
    stop(restored_server);

    let (orig, back) = (balances(&env.data()), balances(&restored));
    assert_eq!(orig.len(), 8);
    assert_eq!(orig, back, "balances differ after restore");
    assert!(
        orig.iter().any(|u| u.credit != d("100")),
        "the workload charged"
    );
    let (xo, xr) = (sorted_xdrs(&env.data()), sorted_xdrs(&restored));
    assert!(xo.len() >= 5 + 2 * 51, "{} xDRs", xo.len());
    assert_eq!(xo, xr, "xDRs differ after restore");

    // A non-empty data dir is refused without --force, replaced with it.
    let out = ratel_bounded(&["restore", "--config", &restored_cfg, &b]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    let out = ratel_bounded(&["restore", "--config", &restored_cfg, "--force", &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(balances(&restored), orig);

    // A tampered xDR file: restore fails naming it, and writes nothing.
    let victim = files
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .find(|p| p.starts_with("xdr/"))
        .unwrap();
    let vp = backup.join(victim);
    let mut bytes = std::fs::read(&vp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&vp, bytes).unwrap();
    let (cfg3, data3) = config_with_data_dir(&env, "third");
    let out = ratel_bounded(&["restore", "--config", &cfg3, &b]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains(victim) && e.contains("sha256"), "{e}");
    assert!(!data3.join("ledger.sqlite").exists());
}

#[test]
fn backup_under_load_restores_one_consistent_instant() {
    let users = 6;
    let env = Env::new_with_users(users, "100");
    let (server, addr) = env.serve();
    let spool = env.dir.path().join("spool");
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sessions = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Load: Start + Stop sessions (a Start charges nothing, so at any instant each
    // subscriber's charge equals the credit_used of its xDRs, outbox included).
    let load = {
        let (stop_load, sessions) = (stop_load.clone(), sessions.clone());
        std::thread::spawn(move || {
            let c = client();
            let mut n = 0u32;
            while n < 2000 && !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
                let user = format!("user{}", n as usize % users);
                let sid = format!("l{n}");
                let id = (n % 250) as u8;
                assert!(send(&c, addr, &acct(id, 1, &user, &sid, 0, 0, 0, None)).is_some());
                let stop_pkt = acct(id, 2, &user, &sid, 60 + n % 600, 1_000_000, 0, Some(1));
                assert!(send(&c, addr, &stop_pkt).is_some());
                n += 1;
                sessions.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    spool_file(&spool, "a.csv", &cdr_body(0, users));
    let mut backups = Vec::new();
    let mut seen = 0;
    for k in 0..3 {
        // Sessions complete between backups, so each backup is taken amid commits.
        for _ in 0..1000 {
            if sessions.load(std::sync::atomic::Ordering::Relaxed) >= seen + 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen = sessions.load(std::sync::atomic::Ordering::Relaxed);
        assert!(seen >= 3 * (k + 1), "the load stalled");
        let b = env.dir.path().join(format!("backups/load{k}"));
        let out = ratel_bounded(&[
            "backup",
            "--config",
            &env.config(),
            &b.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        backups.push(b);
    }
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert!(sent > 0);
    stop(server);
    let final_xdrs = sorted_xdrs(&env.data());

    for (k, b) in backups.iter().enumerate() {
        let (cfg, data) = config_with_data_dir(&env, &format!("r{k}"));
        let out = ratel_bounded(&["restore", "--config", &cfg, &b.display().to_string()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The xDR tree holds exactly the files the restored ledger records.
        let db = rusqlite::Connection::open(data.join("ledger.sqlite")).unwrap();
        let mut recorded: Vec<String> = db
            .prepare("SELECT path FROM xdr_files")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(db);
        recorded.sort();
        assert_eq!(files_under(&data.join("xdr")), recorded, "backup {k}");
        // Flush the restored outbox to Parquet with a start and graceful stop.
        let (s, _, _) = serve_config(&cfg);
        stop(s);
        let x = sorted_xdrs(&data);
        let mut used: HashMap<String, Decimal> = HashMap::new();
        for row in &x {
            assert!(
                final_xdrs.binary_search(row).is_ok(),
                "backup {k}: an xDR the original never had: {row:?}"
            );
            *used.entry(row.0.clone()).or_default() += row.5;
        }
        for u in balances(&data) {
            let name = u.username.unwrap();
            let charged = d("100") - u.credit;
            assert_eq!(
                charged,
                used.get(&name).copied().unwrap_or_default(),
                "backup {k}: {name}'s balance and xDRs are not of one instant"
            );
        }
    }
}

/// Paths of the files under `root`, relative to it, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn json_logs_are_one_object_per_line() {
    let env = Env::new_with_users(2, "10");
    let cdrs = env.dir.path().join("calls.csv");
    std::fs::write(&cdrs, cdr_body(0, 2) + "broken line without fields\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args([
            "rate",
            "--config",
            &env.config(),
            &cdrs.display().to_string(),
        ])
        .env("RATEL_LOG_FORMAT", "json")
        .env("RATEL_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let mut n = 0;
    let mut rating_lines = 0;
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        assert!(v["time"].is_string() && v["message"].is_string(), "{line}");
        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
        // The DESIGN keys (`time`, `level`, `target`, `message`), fields flattened.
        assert!(
            v.get("timestamp").is_none() && v.get("fields").is_none(),
            "{line}"
        );
        if v["message"] == "rating" && v.get("bytes").is_some() {
            assert!(v["bytes"].is_u64() && v["file"].is_string(), "{line}");
            rating_lines += 1;
        }
        n += 1;
    }
    assert!(n >= 1, "no log line at all");
    assert_eq!(rating_lines, 1, "{err}");
    // The summary is program output on stdout, not a log line.
    assert!(text(&out.stdout).contains("records read"));
    // A fatal error is a JSON log line too.
    let out = Command::new(env!("CARGO_BIN_EXE_ratel"))
        .args(["rate", "--config", &env.config(), "/nonexistent/x.csv"])
        .env("RATEL_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(!err.trim().is_empty());
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "ERROR", "{line}");
    }
    // Text otherwise.
    let out = ratel(&["rate", "--config", &env.config(), "/nonexistent/x.csv"]);
    assert!(text(&out.stderr).starts_with("ratel: "));
}

#[test]
fn serve_refuses_the_demo_password_beyond_loopback() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    let wide = env.dir.path().join("wide.toml");
    // A second admin with the demo password is refused as well.
    std::fs::write(
        &wide,
        cfg.replace(
            "listen = \"127.0.0.1:0\"\n[storage]",
            "listen = \"0.0.0.0:0\"\n[storage]",
        )
        .replace("password = \"sys\"", "password = \"a-real-one\"")
            + "[[admin]]\nname = \"ops\"\npassword = \"sys\"\n",
    )
    .unwrap();
    let w = wide.display().to_string();
    let out = ratel_bounded(&["serve", "--config", &w]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("0.0.0.0:0") && e.contains("\"ops\"") && e.contains("--allow-demo-password"),
        "{e}"
    );
    assert!(text(&out.stdout).is_empty(), "nothing started");

    // --allow-demo-password lifts the guard: serve goes on to bind, and here fails on a
    // RADIUS port held by this test (so nothing listens beyond loopback).
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    std::fs::write(
        &wide,
        std::fs::read_to_string(&wide).unwrap().replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        ),
    )
    .unwrap();
    let out = ratel_bounded(&["serve", "--config", &w, "--allow-demo-password"]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        !e.contains("demo password") && e.contains(&port.to_string()),
        "{e}"
    );
}

#[test]
fn completions_and_man_page() {
    let out = ratel(&["completions", "bash"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("ratel") && s.contains("check-config"), "{s}");
    for sh in ["zsh", "fish"] {
        let out = ratel(&["completions", sh]);
        assert!(out.status.success() && text(&out.stdout).contains("ratel"));
    }
    assert!(!ratel(&["completions", "tcsh"]).status.success());
    let out = ratel(&["man"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.starts_with(".TH"), "{}", &s[..s.len().min(200)]);
    assert!(s.contains("backup"));
    // Fixed choices are checked by the parser, with the choices in the message.
    let out = ratel(&["bench", "api", "--mix", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("both"), "{}", text(&out.stderr));
}

#[test]
fn the_packaged_config_is_valid_and_flags_its_demo_password() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = dir.path().join("ratel.toml");
    std::fs::copy(root.join("packaging/ratel.toml"), &cfg).unwrap();
    std::fs::create_dir(dir.path().join("rates")).unwrap();
    std::fs::copy(
        root.join("fixtures/demo/rates/std.csv"),
        dir.path().join("rates/std.csv"),
    )
    .unwrap();
    let out = ratel(&["check-config", "--config", &cfg.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("data dir: /var/lib/ratel"), "{s}");
    assert!(
        s.contains("API (IBSng at /, Tariscope at /api/): tcp 0.0.0.0:1237"),
        "{s}"
    );
    assert!(s.contains("RADIUS authorization: udp 0.0.0.0:1812"), "{s}");
    assert!(
        s.contains("warning: admin \"system\" has the demo password"),
        "{s}"
    );
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_writes_only_json_lines_when_asked() {
    use std::io::{BufRead, BufReader, Read};
    let env = Env::new();
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_ratel"))
            .args(["serve", "--config", &env.config()])
            .env("RATEL_LOG_FORMAT", "json")
            .env("RATEL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    // The banner is logged; wait for the API line (bounded: serve logs it or exits).
    for _ in 0..100 {
        let line = lines.next().expect("serve logged its banner").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let done = v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("JSON-RPC API on http://127.0.0.1:"));
        logged.push(v);
        if done {
            break;
        }
    }
    assert!(
        logged.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("RADIUS accounting on udp://"))),
        "{logged:?}"
    );
    unsafe_kill(child.0.id() as i32, 15);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    for line in lines {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        logged.push(v);
    }
    assert!(logged.iter().any(|v| v["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("ratel serve stopped"))));
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert!(out.is_empty(), "plain text on stdout: {out}");
}
