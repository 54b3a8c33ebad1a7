//! Operations commands of the `ratel` binary: `check-config`, `backup`, `restore`, the
//! demo-password guard of `serve`, log format selection, shell completions and the man
//! page. Each is a thin shell over the engine (`ratel_engine::backup`, `Catalog::build`);
//! none takes the data-dir lock except `restore`, so all but it are safe beside `serve`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use ratel_engine::catalog::Catalog;
use ratel_engine::config::LoadedConfig;

/// The password of the built-in demo admin, refused on a non-loopback API by default.
const DEMO_PASSWORD: &str = "sys";

static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Sets up tracing on stderr: JSON objects, one per line, when `RATEL_LOG_FORMAT=json`
/// (`time`, `level`, `target`, `message`, the fields: logfmt.rs), text otherwise; the level from `RATEL_LOG` (else `default_level`).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RATEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = std::env::var("RATEL_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    JSON_LOGS.store(json, Ordering::Relaxed);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.event_format(crate::logfmt::JsonLine).init();
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// True when logs are JSON: then nothing but log events may go to stderr.
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// A line of `serve`'s banner or final summary: stdout in text mode, an info log event
/// when logs are JSON (then every line a service writes is one JSON object).
pub fn announce(line: std::fmt::Arguments) {
    if json_logs() {
        tracing::info!("{}", line.to_string().trim());
    } else {
        println!("{line}");
    }
}

/// Reports the fatal error of a command: one line on stderr (a JSON log event when logs
/// are JSON).
pub fn report_error(line: &str) {
    if json_logs() {
        tracing::error!("{line}");
    } else {
        eprintln!("ratel: {line}");
    }
}

/// Loads and validates a config; a bad one is one line `FILE[:LINE]: key: reason`, exit 2.
pub fn check_config(config: Option<&Path>) -> ExitCode {
    let built = match config {
        Some(p) => LoadedConfig::from_file(p),
        None => Ok(LoadedConfig::demo()),
    }
    .and_then(|lc| Catalog::build(&lc));
    let catalog = match built {
        Ok(c) => c,
        Err(e) => {
            if json_logs() {
                tracing::error!("{e}");
            } else {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    print!("{}", config_summary(&catalog));
    ExitCode::SUCCESS
}

/// What `check-config` prints for a valid config.
fn config_summary(c: &Catalog) -> String {
    let names = |v: Vec<&str>| v.join(", ");
    let mut s = format!("{}: OK\n", c.source_name);
    s += &format!(
        "  groups: {} ({})\n",
        c.groups.len(),
        names(c.groups.iter().map(|g| g.name.as_str()).collect())
    );
    s += &format!("  charge rules: {}\n", c.charge_rules.len());
    s += &format!("  tariffs: {}\n", c.tariffs.len());
    for t in &c.tariffs {
        s += &format!(
            "    {}: {} prefixes, {} rate rows\n",
            t.name,
            t.prefixes.len(),
            t.rows.len()
        );
    }
    s += &format!("  NASes: {}\n", c.nas.len());
    for n in &c.nas {
        s += &format!("    {} {}\n", n.name, n.ip);
    }
    s += &format!(
        "  CDR formats: {} (spool format {})\n",
        names(c.cdr_formats.iter().map(|t| t.name.as_str()).collect()),
        c.template(c.spool_format).name
    );
    s += &format!("  packages: {}\n", c.packages.len());
    for p in &c.packages {
        s += &format!(
            "    {}: fee {} per {}, {} voice seconds, {} data bytes\n",
            p.name,
            p.fee,
            p.period.describe(),
            p.voice_seconds,
            p.data_bytes
        );
    }
    s += &format!("  admins: {}\n", c.admins.len());
    s += &format!("  hooks: {}\n", c.hooks.len());
    for h in &c.hooks {
        let target = match &h.target {
            ratel_engine::events::Target::Http { host, port, path } => {
                format!("http://{host}:{port}{path}")
            }
            ratel_engine::events::Target::Command(argv) => argv.join(" "),
        };
        s += &format!(
            "    {} ({}, {}): {}\n",
            h.name,
            if h.mode == ratel_engine::events::Mode::Veto {
                "veto"
            } else {
                "notify"
            },
            h.events.join(", "),
            target
        );
    }
    s += &format!("  RADIUS accounting: udp {}\n", c.radius_listen);
    if let Some(a) = &c.auth_listen {
        s += &format!("  RADIUS authorization: udp {a}\n");
    }
    s += &format!(
        "  API (IBSng at /, Tariscope at /api/): tcp {}\n",
        c.api_listen
    );
    s += &format!("  data dir: {}\n", c.data_dir.display());
    s += &format!("  CDR spool: {}\n", c.spool_dir.display());
    for a in demo_password_admins(c) {
        s += &format!(
            "  warning: admin {a:?} has the demo password; `serve` refuses it unless api.listen is loopback\n"
        );
    }
    s
}

/// Admins whose password is the built-in demo's.
fn demo_password_admins(c: &Catalog) -> Vec<&str> {
    let demo = LoadedConfig::demo();
    c.admins
        .iter()
        .filter(|a| {
            a.password == DEMO_PASSWORD
                || demo.config.admin.iter().any(|d| d.password == a.password)
        })
        .map(|a| a.name.as_str())
        .collect()
}

/// Refuses to serve the API beyond loopback while an admin has the demo password.
pub fn refuse_demo_password(c: &Catalog, allow: bool) -> anyhow::Result<()> {
    let loopback = c
        .api_listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    match demo_password_admins(c).first() {
        Some(name) if !loopback && !allow => anyhow::bail!(
            "{}: api.listen {} is not a loopback address and admin {name:?} has the demo password: change [[admin]] password (or pass --allow-demo-password)",
            c.source_name,
            c.api_listen
        ),
        _ => Ok(()),
    }
}

/// `ratel backup`: an online backup of the data dir into the new directory `dest`.
pub fn backup(c: &Catalog, dest: &Path) -> anyhow::Result<ExitCode> {
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let m = ratel_engine::backup::backup(&c.data_dir, dest, &created)
        .with_context(|| format!("backup of {}", c.data_dir.display()))?;
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!(
        "{}: backup of {} taken at {}: ledger + {} xDR files, {} bytes; manifest.json lists their sha256",
        dest.display(),
        c.data_dir.display(),
        m.created,
        m.files.len() - 1,
        bytes
    );
    Ok(ExitCode::SUCCESS)
}

/// `ratel restore`: checks the backup in `src` and restores it into the config's data dir.
pub fn restore(c: &Catalog, src: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let s = ratel_engine::backup::restore(src, &c.data_dir, force)
        .with_context(|| format!("restore of {}", src.display()))?;
    println!(
        "{}: restored into {}: {} files, {} bytes, every sha256 checked; {} subscribers",
        src.display(),
        c.data_dir.display(),
        s.files,
        s.bytes,
        s.users
    );
    Ok(ExitCode::SUCCESS)
}

/// Shells `ratel completions` writes a script for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `ratel completions SHELL`: the completion script on stdout.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> anyhow::Result<()> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ratel", &mut buf);
    print_bytes(&buf)
}

/// `ratel man`: the top-level man page (roff) on stdout.
pub fn man(cmd: clap::Command) -> anyhow::Result<()> {
    print_bytes(man_page(clap_mangen::Man::new(cmd))?.as_bytes())
}

/// `ratel man --all DIR`: one page per command into `DIR` (created): `ratel.1`,
/// `ratel-serve.1`, `ratel-bench-radius.1`, ... (hidden commands and `help` left out).
/// Prints the files written.
pub fn man_all(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    fn walk(cmd: clap::Command, dir: &Path, written: &mut Vec<String>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, written)?;
        }
        let man = clap_mangen::Man::new(cmd);
        let name = man.get_filename();
        let path = dir.join(&name);
        std::fs::write(&path, man_page(man)?)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(name);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built, so subcommands carry their display names (`ratel-serve`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    walk(cmd, dir, &mut written)?;
    written.sort();
    let mut out = String::new();
    for name in written {
        out += &format!("{}\n", dir.join(name).display());
    }
    print_bytes(out.as_bytes())
}

/// One page (roff), its `.TH` title line first (roff's apostrophe preamble follows it;
/// `man` and `file` look for `.TH` at the top).
fn man_page(man: clap_mangen::Man) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    man.render(&mut buf).context("rendering the man page")?;
    let page = String::from_utf8_lossy(&buf);
    let (title, rest): (Vec<&str>, Vec<&str>) = page.lines().partition(|l| l.starts_with(".TH "));
    let mut out = String::new();
    for l in title.iter().chain(rest.iter()) {
        out.push_str(l);
        out.push('\n');
    }
    Ok(out)
}

/// Writes to stdout; a closed pipe (`ratel man | head`) is not an error.
fn print_bytes(b: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(b).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(admin_password: &str, api_listen: &str) -> Catalog {
        let text = ratel_engine::config::DEMO_CONFIG
            .replace(
                "password = \"sys\"",
                &format!("password = {admin_password:?}"),
            )
            .replace("127.0.0.1:1237", api_listen);
        let lc = LoadedConfig::from_str(
            &text,
            ratel_engine::config::ConfigSource::BuiltinDemo,
            ".".into(),
        )
        .unwrap();
        Catalog::build(&lc).unwrap()
    }

    #[test]
    fn demo_password_is_refused_beyond_loopback_only() {
        // (password, api.listen, --allow-demo-password, refused)
        let cases = [
            ("sys", "127.0.0.1:1237", false, false),
            ("sys", "[::1]:1237", false, false),
            ("sys", "0.0.0.0:1237", false, true),
            ("sys", "[::]:1237", false, true),
            ("sys", "192.0.2.7:1237", false, true),
            ("sys", "0.0.0.0:1237", true, false),
            ("s3cret-enough", "0.0.0.0:1237", false, false),
        ];
        for (pw, listen, allow, refused) in cases {
            let r = refuse_demo_password(&catalog(pw, listen), allow);
            assert_eq!(r.is_err(), refused, "{pw} {listen} {allow}: {r:?}");
        }
    }
}
