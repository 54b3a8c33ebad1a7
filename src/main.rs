//! The `ratel` command line: parses arguments, sets up logging, builds the catalog, runs the
//! chosen job and maps errors to one clear line and a non-zero exit code. No logic here.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod admin;
mod bench;
mod logfmt;
mod ops;

/// mimalloc: the hot paths allocate per record and per block; glibc's malloc returned big
/// blocks to the OS and page-faulted them back in on every block.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before it gives it back to the OS: 2 s instead of
/// its default 1 s. `ratel rate` frees a block's memory (~300 MB: outcomes, Arrow batches)
/// about once a second and allocates the next block's right after; at 1 s the memory was
/// often returned in between and faulted in again (first touch is a hypervisor fault on
/// this VM). Measured on the 2M-row month file: kernel time −10–20%, minor faults −15%,
/// peak RSS +5–10% (BENCHMARKS.md). Memory still goes back, 2 s after its last use.
/// Unchanged if the operator set `MIMALLOC_PURGE_DELAY` or the linked mimalloc is not
/// the 3.x this option index belongs to.
fn keep_freed_memory_longer() {
    // mimalloc 3.x `mi_option_purge_delay` (include/mimalloc.h: the enum's 16th entry;
    // `mi_version()` is major * 10000 + minor * 100 + patch);
    // checked against the version and the option's default before it is set.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    const DEFAULT_MS: std::ffi::c_long = 1000;
    const KEEP_MS: std::ffi::c_long = 2000;
    unsafe extern "C" {
        fn mi_version() -> std::ffi::c_int;
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain C calls of the linked mimalloc (the global allocator above) with
    // integer arguments. `mi_option_set` is a plain store into mimalloc's option table:
    // this runs first thing in `main`, before any other thread exists.
    unsafe {
        if mi_version() / 10_000 == 3 && mi_option_get(MI_OPTION_PURGE_DELAY) == DEFAULT_MS {
            mi_option_set(MI_OPTION_PURGE_DELAY, KEEP_MS);
        }
    }
}

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use ratel_engine::batch::{BatchRater, FileSummary, Progress};
use ratel_engine::catalog::{Catalog, CdrFormat};
use ratel_engine::config::LoadedConfig;
use ratel_engine::ledger::{DataDirLock, Ledger};

#[derive(Parser)]
#[command(
    name = "ratel",
    version,
    about = "RADIUS/CDR rating and accounting engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// RADIUS accounting listener + JSON-RPC API + CDR spool, in one process.
    Serve {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve the API beyond loopback although an admin has the demo password.
        #[arg(long)]
        allow_demo_password: bool,
    },
    /// Rate CDR files in batch against the ledger.
    Rate {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// CDR format: generic, asterisk, freeswitch or a `[[cdr_format]]` name (default:
        /// `[cdr] format` of the config).
        #[arg(long)]
        format: Option<String>,
        /// Rate a file that starts like a rated file but differs inside its rated part as a
        /// new file (its records that were rated before stay duplicates).
        #[arg(long)]
        force: bool,
        /// CDR files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Built-in benchmarks: generate data, drive a real ratel, print throughput.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Subscriber management.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// One subscriber, through the running server's API (`show`, `credit`).
    User {
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Open RADIUS sessions, through the running server's API.
    Sessions(admin::SessionsArgs),
    /// Disconnect an open session (RFC 5176 Disconnect-Request), through the running server.
    Disconnect(admin::DisconnectArgs),
    /// Validate a config and print a summary; exit 2 with `FILE[:LINE]: key: reason` if bad.
    CheckConfig {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Online backup of the data dir (ledger, xDR files, manifest.json) into a new directory.
    Backup {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The backup directory to create (must not exist).
        dest: PathBuf,
    },
    /// Check a backup's sha256 sums and restore it into the config's data dir.
    Restore {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replace the ledger and xDR tree of a non-empty data dir.
        #[arg(long)]
        force: bool,
        /// The backup directory (holding manifest.json).
        src: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: ops::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write `ratel.1`, `ratel-serve.1`, ... (every subcommand) into this directory
        /// instead of printing the top-level page.
        #[arg(long, value_name = "DIR")]
        all: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Rate `--xdrs` generated CDRs, start serve, time getUserInfo and getConnections.
    Api {
        /// xDRs to generate and rate before the run.
        #[arg(long, default_value_t = 1_000_000)]
        xdrs: u64,
        /// Subscribers the xDRs are spread over.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent HTTP clients (keep-alive connections).
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Which calls each client makes: both, info (getUserInfo) or report (getConnections).
        #[arg(long, value_enum, default_value_t = bench::Mix::Both)]
        mix: bench::Mix,
        /// Days each getConnections asks for, from the first generated day (30: the month).
        #[arg(long, default_value_t = 1)]
        report_days: u32,
        /// Reuse the data dir a previous run built with the same --xdrs and --users.
        #[arg(long)]
        reuse: bool,
        /// Working directory (config, data dir).
        #[arg(long, default_value = "ratel-bench-api")]
        dir: PathBuf,
        /// Also print one JSON line with the figures.
        #[arg(long)]
        json: bool,
    },
    /// Drive `ratel serve` (started here) or any accounting server with RADIUS load.
    Radius {
        /// Concurrent RADIUS sessions the load cycles through.
        #[arg(long, default_value_t = 20_000)]
        sessions: usize,
        /// Requests awaiting an answer at once (a NAS fleet keeps tens per server).
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// One run per number of requests in flight, e.g. `1,8,64,512` (a fresh `ratel
        /// serve` each); replaces --in-flight.
        #[arg(long, value_delimiter = ',')]
        sweep: Vec<usize>,
        /// Append one CSV row per run to this file (the header first when it is new).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// The server's name in the CSV rows (default: `ratel`, or the --server address).
        #[arg(long)]
        label: Option<String>,
        /// Drop a generated CDR file of this many calls (30 days, the subscribers' own
        /// accounts, a 50k-prefix deck) into serve's spool 2 s into the run: acks while
        /// serve rates it.
        #[arg(long, default_value_t = 0)]
        spool_rows: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Requests per second at most (0: as fast as answers come).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Subscribers the sessions belong to.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Interim-Updates per session between its Start and Stop.
        #[arg(long, default_value_t = 3)]
        interims: u32,
        /// An external accounting server (host:port); default: start ratel serve.
        #[arg(long)]
        server: Option<String>,
        /// RADIUS shared secret.
        #[arg(long, default_value = "testing123")]
        secret: String,
        /// Working directory (config, data dir).
        #[arg(long, default_value = "ratel-bench-radius")]
        dir: PathBuf,
        /// Also print one JSON line with the figures.
        #[arg(long)]
        json: bool,
        /// Also send PAP Access-Requests to the authorization listener during the run and
        /// report Access-Requests/s next to accounting.
        #[arg(long)]
        auth: bool,
    },
    /// Generate a generic CDR file, rate deck and users; rate the file; report records/s.
    Cdr {
        /// CDR records to generate (a month of a mid-size operator's calls).
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// Subscriber accounts the calls are spread over.
        #[arg(long, default_value_t = 100_000)]
        accounts: usize,
        /// Prefixes of the generated rate deck.
        #[arg(long, default_value_t = 50_000)]
        prefixes: usize,
        /// Days the calls are spread over (real CDR files span a month).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Seed of the generator (same seed, same data).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Working directory (created; the data dir inside it is wiped first).
        #[arg(long, default_value = "ratel-bench")]
        dir: PathBuf,
        /// Also print one JSON line with the figures.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create clients from a CSV file with header `username,password,group,credit` and
    /// optional columns (company, accounts, profile fields). While `serve` holds the data
    /// dir, the file goes through its API.
    Import {
        /// Config file (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The running server's API (`http://HOST:PORT/`), when `serve` holds the data
        /// dir and the config's `[api] listen` has no fixed port.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// The CSV file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before the big allocations: rating and serving run faster without THP (lib.rs).
    ratel_engine::disable_transparent_huge_pages();
    keep_freed_memory_longer();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    ops::init_logging(default_level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            ops::report_error(&one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// `error: cause: cause`, on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn load(config: Option<&Path>) -> anyhow::Result<Catalog> {
    let lc = match config {
        Some(p) => LoadedConfig::from_file(p)?,
        None => LoadedConfig::demo(),
    };
    Ok(Catalog::build(&lc)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            allow_demo_password,
        } => {
            let catalog = load(config.as_deref())?;
            ops::refuse_demo_password(&catalog, allow_demo_password)?;
            ratel_serve(catalog, config, allow_demo_password)
        }
        Command::User { command } => admin::user(command),
        Command::Sessions(a) => admin::sessions(a),
        Command::Disconnect(a) => admin::disconnect(a),
        Command::CheckConfig { config } => Ok(ops::check_config(config.as_deref())),
        Command::Backup { config, dest } => ops::backup(&load(config.as_deref())?, &dest),
        Command::Restore { config, force, src } => {
            ops::restore(&load(config.as_deref())?, &src, force)
        }
        Command::Completions { shell } => {
            ops::completions(Cli::command(), shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { all } => {
            match all {
                Some(dir) => ops::man_all(Cli::command(), &dir)?,
                None => ops::man(Cli::command())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rate {
            config,
            format,
            force,
            files,
        } => {
            let catalog = load(config.as_deref())?;
            let format = match format {
                Some(f) => catalog.cdr_format(&f).with_context(|| {
                    let names: Vec<&str> = catalog
                        .cdr_formats
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect();
                    format!("--format {f:?}: expected one of {}", names.join(", "))
                })?,
                None => catalog.spool_format,
            };
            rate(&catalog, format, force, &files)
        }
        Command::Bench {
            command:
                BenchCommand::Api {
                    xdrs,
                    users,
                    duration,
                    clients,
                    mix,
                    report_days,
                    reuse,
                    dir,
                    json,
                },
        } => bench::api(bench::ApiArgs {
            xdrs,
            users,
            duration_secs: duration,
            clients,
            mix,
            report_days,
            reuse,
            dir,
            json,
        }),
        Command::Bench {
            command:
                BenchCommand::Radius {
                    sessions,
                    in_flight,
                    duration,
                    rate,
                    users,
                    interims,
                    server,
                    secret,
                    dir,
                    json,
                    auth,
                    sweep,
                    csv,
                    label,
                    spool_rows,
                },
        } => bench::radius(bench::RadiusArgs {
            sessions,
            in_flight,
            duration_secs: duration,
            rate,
            users,
            interims,
            server,
            secret,
            dir,
            json,
            auth,
            sweep,
            csv,
            label,
            spool_rows,
        }),
        Command::Bench {
            command:
                BenchCommand::Cdr {
                    rows,
                    accounts,
                    prefixes,
                    days,
                    seed,
                    dir,
                    json,
                },
        } => bench_cdr(rows, accounts, prefixes, days, seed, &dir, json),
        Command::Users {
            command: UsersCommand::Import { config, api, file },
        } => {
            let catalog = load(config.as_deref())?;
            let s = match DataDirLock::acquire(&catalog.data_dir) {
                Ok(_lock) => {
                    let mut ledger = Ledger::open(&catalog.data_dir)?;
                    ratel_engine::users::import_users(&catalog, &mut ledger, &file, chrono_now())?
                }
                // `serve` holds the data dir: import through its core, without downtime.
                Err(ratel_engine::ledger::LedgerError::Locked { .. }) => {
                    tracing::info!(
                        "the data dir is in use by `ratel serve`: importing through its API"
                    );
                    admin::import_via_api(config.as_deref(), api, &file)?
                }
                Err(e) => return Err(e.into()),
            };
            for b in &s.bad {
                if ops::json_logs() {
                    tracing::warn!("bad line: {b}");
                } else {
                    eprintln!("bad line: {b}");
                }
            }
            println!(
                "{}: {} subscribers created, {} existed already, {} bad lines",
                file.display(),
                s.created,
                s.existing,
                s.bad.len()
            );
            Ok(if s.bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ratel_serve(
    catalog: Catalog,
    config: Option<PathBuf>,
    allow_demo_password: bool,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let demo = config.is_none();
    // `kill -HUP`: the core reloads the config file between batches, all or nothing.
    let reload_requested = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload_requested.clone())
        .context("installing the SIGHUP handler")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .context("installing the signal handler")?;
    }
    // The data dir first: a concurrent `ratel rate` must be refused, not race us.
    let lock = DataDirLock::acquire(&catalog.data_dir)?;
    let socket = ratel_engine::serve::bind_udp(&catalog.radius_listen)?;
    let radius_addr = socket.local_addr()?;
    let auth_socket = match &catalog.auth_listen {
        Some(a) => Some(
            ratel_engine::radius::auth_server::bind(a)
                .with_context(|| format!("radius.auth_listen {a}"))?,
        ),
        None => None,
    };
    let api_listener = std::net::TcpListener::bind(&catalog.api_listen)
        .with_context(|| format!("api.listen {}", catalog.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    ops::announce(format_args!("ratel serve: config {}", catalog.source_name));
    ops::announce(format_args!(
        "  RADIUS accounting on udp://{radius_addr} ({} NAS configured)",
        catalog.nas.len()
    ));
    if let Some(s) = &auth_socket {
        ops::announce(format_args!(
            "  RADIUS authorization on udp://{}",
            s.local_addr()?
        ));
    }
    ops::announce(format_args!("  JSON-RPC API on http://{api_addr}/"));
    ops::announce(format_args!("  data dir {}", catalog.data_dir.display()));
    ops::announce(format_args!(
        "  CDR spool {} (format {})",
        catalog.spool_dir.display(),
        catalog.template(catalog.spool_format).name
    ));
    if demo {
        if let Some(a) = catalog.admins.first() {
            ops::announce(format_args!(
                "  demo admin login: {} / {}",
                a.name, a.password
            ));
        }
    }
    let catalog = Arc::new(catalog);
    let cell = Arc::new(ratel_engine::reload::CatalogCell::new(catalog.clone()));
    let reloader = ratel_engine::serve::Reloader {
        requested: reload_requested,
        load: Box::new(move || {
            // The built-in demo config has no file to read again: it reloads as itself.
            let c = load(config.as_deref()).map_err(|e| format!("{e:#}"))?;
            ops::refuse_demo_password(&c, allow_demo_password).map_err(|e| format!("{e:#}"))?;
            Ok(c)
        }),
        publish: {
            let cell = cell.clone();
            Box::new(move |c| cell.set(c))
        },
    };
    let live = Arc::new(ratel_engine::serve::Live::default());
    let (tx, rx) = crossbeam_channel::bounded(64);
    let mut api_thread = None;
    let summary = ratel_engine::serve::run(
        &catalog,
        lock,
        socket,
        shutdown.clone(),
        live.clone(),
        rx,
        auth_socket,
        Some(reloader),
        || {
            let h = ratel_api::spawn(
                api_listener,
                cell.clone(),
                live.clone(),
                tx,
                shutdown.clone(),
            )
            .map_err(|e| ratel_engine::serve::ServeError::Api(e.to_string()))?;
            api_thread = Some(h);
            Ok(())
        },
        |r| {
            ops::announce(format_args!(
                "  ready: {} subscribers and {} open sessions loaded in {} ms; answering RADIUS",
                r.subscribers,
                r.open_sessions,
                started.elapsed().as_millis()
            ))
        },
    );
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(h) = api_thread {
        let _ = h.join();
    }
    let summary = summary?;
    ops::announce(format_args!(
        "ratel serve stopped: {} packets received, {} acknowledged, {} open sessions kept in the ledger",
        summary.counters.received, summary.counters.acknowledged, summary.open_sessions
    ));
    Ok(ExitCode::SUCCESS)
}

/// Progress: a bar on a terminal, a plain line per 10% otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    plain: Mutex<(u64, u64, u64, String)>,
}

impl Bar {
    fn new() -> Self {
        Bar {
            bar: None,
            plain: Mutex::new((0, 0, 0, String::new())),
        }
    }
}

impl Progress for Bar {
    fn file_started(&self, path: &Path, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
            b.set_position(0);
            b.set_message(path.display().to_string());
        } else {
            let mut p = self.plain.lock().expect("progress lock");
            *p = (bytes, 0, 0, path.display().to_string());
            if ops::json_logs() {
                tracing::info!(file = %p.3, bytes, "rating");
            } else {
                eprintln!("rating {} ({} bytes)", p.3, bytes);
            }
        }
    }
    fn advanced(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        } else {
            let mut p = self.plain.lock().expect("progress lock");
            p.1 += bytes;
            let pct = (p.1 * 100).checked_div(p.0).unwrap_or(100);
            if pct >= p.2 + 10 {
                p.2 = pct / 10 * 10;
                if ops::json_logs() {
                    tracing::info!(file = %p.3, percent = p.2, "rating");
                } else {
                    eprintln!("rating {}: {}%", p.3, p.2);
                }
            }
        }
    }
    fn file_finished(&self, _path: &Path) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn rate(
    catalog: &Catalog,
    format: CdrFormat,
    force: bool,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let _lock = DataDirLock::acquire(&catalog.data_dir)?;
    // (The checkpointer stops before the ledger closes: declared after it.)
    let (mut ledger, _checkpointer) = open_batch_ledger(catalog)?;
    // The first file is hashed while the clients load (the rest as each comes).
    let ahead = files
        .first()
        .and_then(|f| ratel_engine::batch::identify_ahead(catalog, &ledger, f, format));
    let mut rater = BatchRater::new(catalog, &mut ledger)?;
    if let Some(a) = ahead {
        rater.use_identity(a);
    }
    rater.force = force;
    // Package periods that ended while nothing ran are renewed (or deactivated) first, in
    // order, so the files' calls meet the quota of the period they fall in. No sessions
    // are open offline: nothing to disconnect.
    let renewed =
        ratel_engine::packages::renew_due(catalog, &mut rater, chrono_now(), &mut |_, _| {})?;
    if renewed > 0 {
        eprintln!("package periods ended since the last run: {renewed} renewed or deactivated");
    }
    let mut bar = Bar::new();
    if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.bar = Some(b);
    }
    let started = Instant::now();
    let mut total = FileSummary::default();
    for (i, f) in files.iter().enumerate() {
        // Files share folds (every few batches): a fold per file made each small file
        // rewrite the journal and balance pages of every client it charged. The last file
        // folds in its last block's commit, which the ledger stages while that block's
        // Parquet files are written (a fold after the run would follow them);
        // `fold_if_unfolded` below folds what that commit did not (a last file rated before).
        rater.fold_each_file = i + 1 == files.len();
        let s = match rater.rate_file(f, format, &bar) {
            Ok(s) => s,
            Err(e) => {
                // The files rated before this one may wait unfolded: fold them first (the
                // next `Ledger::open` would, but readers should not wait for it).
                if let Err(fe) = rater.fold_pending() {
                    eprintln!("folding the files rated before the failure failed: {fe}");
                }
                return Err(e.into());
            }
        };
        print_summary(&s);
        total.records += s.records;
        total.xdrs += s.xdrs;
        total.charged += s.charged;
    }
    rater.fold_if_unfolded()?;
    if files.len() > 1 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "total: {} records, {} xDRs, charged {}, {:.0} records/s",
            total.records,
            total.xdrs,
            total.charged,
            total.records as f64 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The ledger as a batch run opens it (`ratel rate`, and `bench cdr` to measure the same):
/// a 64 MiB page cache, and WAL checkpoints on a thread of their own, as in `serve`, so a
/// block's commit does not copy the WAL into the database and fsync it while the next block
/// waits to be handed over. What is left at the end is checkpointed as the ledger closes;
/// drop the checkpointer first.
fn open_batch_ledger(
    catalog: &Catalog,
) -> anyhow::Result<(Ledger, ratel_engine::ledger::checkpoint::Checkpointer)> {
    let ledger = Ledger::open(&catalog.data_dir)?;
    ledger.use_batch_cache()?;
    ledger.set_wal_autocheckpoint(0)?;
    let checkpointer = ratel_engine::ledger::checkpoint::spawn(&catalog.data_dir)?;
    Ok((ledger, checkpointer))
}

fn print_summary(s: &FileSummary) {
    if s.already_rated {
        println!(
            "{}: already rated (content hash {}): nothing charged, no new xDRs",
            s.path,
            &s.file_hash[..16]
        );
        return;
    }
    let secs = s.elapsed.as_secs_f64();
    println!(
        "{}: {} records read, {} rated into xDRs, charged {}",
        s.path, s.records, s.xdrs, s.charged
    );
    match (&s.continues, s.resumed_at_line) {
        (Some(earlier), Some(l)) => {
            println!("  a grown copy of {earlier} (rated before): rated from line {l} on")
        }
        (None, Some(l)) => println!("  resumed an interrupted run at line {l}"),
        _ => {}
    }
    println!(
        "  OK {}, unanswered {}, NO_RATE {}, UNKNOWN_USER {}, duplicate {}, bad lines {}",
        s.ok, s.unanswered, s.no_rate, s.unknown_user, s.duplicates, s.bad_lines
    );
    if let Some(r) = &s.rejects {
        println!("  bad lines copied to {r} (fix them and rate that file)");
    }
    if !s.bad_samples.is_empty() {
        println!("  bad lines (first {}):", s.bad_samples.len());
        for b in &s.bad_samples {
            println!("    {b}");
        }
    }
    let t = &s.times;
    println!(
        "  {:.0} records/s in {:.3}s (hash {:.3}s, parse+rate {:.3}s, build {:.3}s, parquet {:.3}s, ledger {:.3}s)",
        s.records as f64 / secs.max(1e-9),
        secs,
        t.hash.as_secs_f64(),
        t.parse_rate.as_secs_f64(),
        t.build.as_secs_f64(),
        t.parquet.as_secs_f64(),
        t.ledger.as_secs_f64()
    );
}

fn bench_cdr(
    rows: u64,
    accounts: usize,
    prefixes: usize,
    days: u32,
    seed: u64,
    dir: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let t = Instant::now();
    let files =
        bench::gen::prepare_cdr_bench(dir, rows, accounts.max(1), prefixes.max(20), days, seed)
            .with_context(|| format!("generating into {}", dir.display()))?;
    let gen_secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&files.data_dir);
    let t = Instant::now();
    let catalog = load(Some(&files.config))?;
    let load_secs = t.elapsed().as_secs_f64();
    let _lock = DataDirLock::acquire(&catalog.data_dir)?;
    // What `ratel rate` runs with.
    let (mut ledger, checkpointer) = open_batch_ledger(&catalog)?;
    let imported =
        ratel_engine::users::import_users(&catalog, &mut ledger, &files.users, chrono_now())?;
    let mut rater = BatchRater::new(&catalog, &mut ledger)?;
    let s = rater.rate_file(
        &files.cdrs,
        CdrFormat::Generic,
        &ratel_engine::batch::NoProgress,
    )?;
    drop(rater);
    // The ledger closes as `ratel rate`'s does, copying into the database what the
    // checkpointer left of the WAL (the last commit's pages): counted in the figure, as the
    // last commit's own checkpoint was when commits checkpointed.
    let t = Instant::now();
    drop(checkpointer);
    drop(ledger);
    let secs = (s.elapsed + t.elapsed()).as_secs_f64();
    let rps = s.records as f64 / secs.max(1e-9);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "ratel bench cdr: {rows} rows, {} accounts, {} prefixes, seed {seed}, {cores} cores",
        imported.created,
        catalog.tariffs[0].prefixes.len()
    );
    println!("  generated in {gen_secs:.2}s; rate deck compiled in {load_secs:.3}s");
    print_summary(&s);
    println!("  end to end: {rps:.0} records/s");
    if json {
        let tm = &s.times;
        println!(
            "{{\"bench\":\"cdr\",\"rows\":{},\"records\":{},\"xdrs\":{},\"cores\":{cores},\"seconds\":{secs:.4},\"records_per_sec\":{rps:.0},\"deck_load_seconds\":{load_secs:.4},\"hash_s\":{:.4},\"parse_rate_s\":{:.4},\"build_s\":{:.4},\"parquet_s\":{:.4},\"ledger_s\":{:.4},\"charged\":\"{}\"}}",
            rows, s.records, s.xdrs, tm.hash.as_secs_f64(), tm.parse_rate.as_secs_f64(), tm.build.as_secs_f64(), tm.parquet.as_secs_f64(), tm.ledger.as_secs_f64(), s.charged
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every subcommand has `--help` text.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(a.get_help().is_some(), "{path} {id}: no --help text");
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()));
            }
        }
        Cli::command().debug_assert();
        walk(&Cli::command(), "ratel");
    }
}
