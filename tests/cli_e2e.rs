//! End-to-end tests of the admin CLI against a running `serve` (`ratel user show`,
//! `ratel user credit`, `ratel sessions`, through the JSON-RPC API: no data-dir lock in the
//! way) and of `ratel man --all DIR` (one page per subcommand).

mod common;

use std::process::{Command, Output};

use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ratel args` with extra environment variables.
fn ratel_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ratel"));
    c.args(args)
        .env_remove("RATEL_ADMIN")
        .env_remove("RATEL_PASSWORD");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A failure: non-zero exit and exactly one line on stderr.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn admin_cli_shows_credits_and_lists_sessions_of_a_running_server() {
    let env = Env::new();
    let (server, radius, api) = env.serve_all();
    // The CLI's config: the server's, with the port the server took for `[api] listen`.
    let base = std::fs::read_to_string(env.config()).unwrap();
    let cli_cfg = env.dir.path().join("cli.toml");
    let fixed = base.replace(
        "[api]\nlisten = \"127.0.0.1:0\"",
        &format!("[api]\nlisten = \"{api}\""),
    );
    assert_ne!(fixed, base);
    std::fs::write(&cli_cfg, fixed).unwrap();
    let cfg = cli_cfg.display().to_string();
    let c = client();
    // alice has one open session, bob none.
    assert!(send(&c, radius, &acct(1, 1, "alice", "sa", 0, 0, 0, None)).is_some());
    assert!(send(
        &c,
        radius,
        &acct(2, 3, "alice", "sa", 120, 1000, 2000, None)
    )
    .is_some());

    let s = ok(&ratel_env(
        &["user", "show", "--config", &cfg, "alice"],
        &[],
    ));
    assert!(s.starts_with("alice (user id 1)\n"), "{s}");
    assert!(s.contains("\n  group: g\n"), "{s}");
    // 120 s at 0.01/min and 3000 B at 0.5/GB, rounded up to 4 decimals: 0.0201.
    assert!(s.contains("\n  credit: 9.9799\n"), "{s}");
    assert!(s.contains("\n  open sessions: 1\n"), "{s}");
    assert!(
        s.contains("    alice session sa on ras1 ip 10.0.0.7 since ")
            && s.contains(": 120 s, in 1000 B, out 2000 B, charged "),
        "{s}"
    );

    // +, -, = with exact decimals; --api instead of the config's address.
    let url = format!("http://{api}/");
    let s = ok(&ratel_env(
        &[
            "user",
            "credit",
            "--config",
            &cfg,
            "bob",
            "+10",
            "--comment",
            "top-up",
        ],
        &[],
    ));
    assert_eq!(s, "bob: credit 5 -> 15 (ADD 10)\n");
    let s = ok(&ratel_env(
        &[
            "user", "credit", "--config", &cfg, "--api", &url, "bob", "-3.5",
        ],
        &[],
    ));
    assert_eq!(s, "bob: credit 15 -> 11.5 (ADD -3.5)\n");
    let s = ok(&ratel_env(
        &["user", "credit", "--config", &cfg, "bob", "+0.0000000001"],
        &[],
    ));
    assert_eq!(s, "bob: credit 11.5 -> 11.5000000001 (ADD 0.0000000001)\n");
    let s = ok(&ratel_env(
        &["user", "credit", "--config", &cfg, "bob", "=0"],
        &[],
    ));
    assert_eq!(s, "bob: credit 11.5000000001 -> 0 (SET 0)\n");
    // The ledger holds what the CLI printed (read once serve is stopped below).

    let s = ok(&ratel_env(&["sessions", "--config", &cfg], &[]));
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2, "{s}");
    assert!(
        lines[0].starts_with("alice session sa on ras1 ip 10.0.0.7 since "),
        "{s}"
    );
    assert_eq!(lines[1], "1 open sessions");
    let s = ok(&ratel_env(
        &["sessions", "--config", &cfg, "--user", "bob"],
        &[],
    ));
    assert_eq!(s, "0 open sessions\n");

    // Errors: one line, non-zero exit.
    let e = one_line_error(&ratel_env(
        &["user", "show", "--config", &cfg, "ghost"],
        &[],
    ));
    assert!(e.contains("NORMAL_USERNAME_DOESNT_EXISTS"), "{e}");
    let e = one_line_error(&ratel_env(
        &["user", "credit", "--config", &cfg, "bob", "10"],
        &[],
    ));
    assert!(e.contains("expected +N, -N or =N"), "{e}");
    let e = one_line_error(&ratel_env(
        &["sessions", "--config", &cfg, "--user", "ghost"],
        &[],
    ));
    assert!(e.contains("NORMAL_USERNAME_DOESNT_EXISTS"), "{e}");
    // RATEL_ADMIN / RATEL_PASSWORD override the config's admin: a wrong password is refused.
    let e = one_line_error(&ratel_env(
        &["user", "show", "--config", &cfg, "bob"],
        &[("RATEL_ADMIN", "system"), ("RATEL_PASSWORD", "wrong")],
    ));
    assert!(e.contains("ACCESS_DENIED"), "{e}");
    let s = ok(&ratel_env(
        &["user", "show", "--api", &url, "bob"],
        &[("RATEL_ADMIN", "system"), ("RATEL_PASSWORD", "sys")],
    ));
    assert!(s.contains("\n  credit: 0\n"), "{s}");
    stop(server);

    // Nothing listens any more: one line naming the address.
    let e = one_line_error(&ratel_env(&["user", "show", "--config", &cfg, "bob"], &[]));
    assert!(e.contains("is `ratel serve` running?"), "{e}");
    // Port 0 in the config cannot be reached: said so.
    let e = one_line_error(&ratel_env(
        &["user", "show", "--config", &env.config(), "bob"],
        &[],
    ));
    assert!(e.contains("--api"), "{e}");
    let credits = env.sorted_credits();
    assert_eq!(credits[1], ("bob".to_string(), d("0")));
}

#[test]
fn man_all_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let s = ok(&ratel_env(
        &["man", "--all", &out_dir.display().to_string()],
        &[],
    ));
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "ratel.1",
        "ratel-serve.1",
        "ratel-rate.1",
        "ratel-bench.1",
        "ratel-bench-radius.1",
        "ratel-users-import.1",
        "ratel-user-credit.1",
        "ratel-sessions.1",
        "ratel-man.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        assert!(s.lines().any(|l| l.ends_with(want)), "{want} printed: {s}");
    }
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    let serve = std::fs::read_to_string(out_dir.join("ratel-serve.1")).unwrap();
    assert!(
        serve.starts_with(".TH ratel-serve 1"),
        "{}",
        &serve[..serve.len().min(200)]
    );
    assert!(serve.contains("allow\\-demo\\-password"), "{serve}");
    let credit = std::fs::read_to_string(out_dir.join("ratel-user-credit.1")).unwrap();
    assert!(credit.contains("comment"), "{credit}");
    // Without --all: the top-level page on stdout, as before.
    let top = ok(&ratel_env(&["man"], &[]));
    assert!(
        top.starts_with(".TH ratel 1"),
        "{}",
        &top[..top.len().min(200)]
    );
}

/// `ratel disconnect SESSION_ID`: the running server sends a Disconnect-Request (RFC 5176)
/// for that open session to its NAS's `coa_port`; here a test NAS socket receives it, checks
/// it with radius-rs and ACKs it. An unknown session is a one-line error.
#[test]
fn disconnect_sends_a_disconnect_request_for_an_open_session() {
    use radius::core::{code::Code, packet::Packet, rfc2865, rfc2866};
    let nas = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    nas.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let env = Env::new();
    let base = std::fs::read_to_string(env.config()).unwrap();
    let with_coa = base.replacen(
        "secret = \"testing123\"\n",
        &format!(
            "secret = \"testing123\"\ncoa_port = {}\n",
            nas.local_addr().unwrap().port()
        ),
        1,
    );
    assert_ne!(with_coa, base);
    std::fs::write(env.config(), &with_coa).unwrap();
    let (server, radius, api) = env.serve_all();
    let c = client();
    assert!(send(&c, radius, &acct(1, 1, "alice", "sa", 0, 0, 0, None)).is_some());
    assert!(send(&c, radius, &acct(2, 1, "bob", "sb", 0, 0, 0, None)).is_some());
    let url = format!("http://{api}/");
    let cfg = env.config();

    let s = ok(&ratel_env(
        &["disconnect", "--config", &cfg, "--api", &url, "sa"],
        &[],
    ));
    assert!(
        s.starts_with("Disconnect-Request queued for alice session sa on ras1 (to 127.0.0.1:"),
        "{s}"
    );
    let mut buf = [0u8; 4096];
    let (n, from) = nas.recv_from(&mut buf).expect("a Disconnect-Request");
    let r = &buf[..n];
    assert_eq!(r[0], 40, "Disconnect-Request");
    assert!(Packet::is_authentic_request(r, SECRET));
    let p = Packet::decode(r, SECRET).unwrap();
    assert_eq!(rfc2865::lookup_user_name(&p).unwrap().unwrap(), "alice");
    assert_eq!(rfc2866::lookup_acct_session_id(&p).unwrap().unwrap(), "sa");
    nas.send_to(
        &p.make_response_packet(Code::DisconnectACK)
            .encode()
            .unwrap(),
        from,
    )
    .unwrap();
    // Only alice's session was asked for.
    nas.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
        .unwrap();
    assert!(nas.recv_from(&mut buf).is_err(), "no request for bob");

    let e = one_line_error(&ratel_env(
        &["disconnect", "--config", &cfg, "--api", &url, "nope"],
        &[],
    ));
    assert!(e.contains("NO_SUCH_SESSION"), "{e}");
    stop(server);
}
