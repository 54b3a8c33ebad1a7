//! The TOML config as written by operators: serde structs that mirror the file one to one.
//!
//! Nothing here is used at run time directly; [`crate::catalog::Catalog::build`] validates a
//! [`Config`] once into runtime types (prefix tries, week schedules) and fails with the file,
//! key and reason when something is wrong.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The demo config compiled into the binary (`fixtures/demo/ratel.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../fixtures/demo/ratel.toml");
/// The demo rate deck referenced by the demo config as `rates/std.csv`.
pub const DEMO_RATES_STD: &str = include_str!("../../fixtures/demo/rates/std.csv");

/// Errors met while reading or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

/// Where a config came from: a file on disk, or the built-in demo.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    BuiltinDemo,
}

impl ConfigSource {
    /// Name used in error messages.
    pub fn display_name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::BuiltinDemo => "<built-in demo config>".to_string(),
        }
    }
}

/// The whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// RADIUS accounting listener.
    #[serde(default)]
    pub radius: RadiusConfig,
    /// JSON-RPC API listener.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where the ledger and the xDR tree live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Rating settings.
    #[serde(default)]
    pub rating: RatingConfig,
    /// CDR spool settings.
    #[serde(default)]
    pub cdr: CdrConfig,
    /// API administrators.
    #[serde(default)]
    pub admin: Vec<AdminConfig>,
    /// RADIUS clients.
    #[serde(default)]
    pub nas: Vec<NasConfig>,
    /// Internet charge rules.
    #[serde(default)]
    pub charge_rule: Vec<ChargeRuleConfig>,
    /// Subscriber groups.
    #[serde(default)]
    pub group: Vec<GroupConfig>,
    /// VoIP rate decks.
    #[serde(default)]
    pub tariff: Vec<TariffConfig>,
    /// CDR import templates (layouts beyond the built-in formats).
    #[serde(default)]
    pub cdr_format: Vec<crate::template::CdrFormatConfig>,
    /// Provisioning hooks (event handlers).
    #[serde(default)]
    pub hook: Vec<crate::events::HookConfig>,
    /// Packages: a periodic fee with included voice seconds and data bytes.
    #[serde(default)]
    pub package: Vec<PackageConfig>,
}

/// `[[package]]` (DESIGN.md Part 2 "Packages and expiry").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageConfig {
    pub name: String,
    /// Charged at each activation and renewal (a decimal string, like every price).
    pub fee: String,
    /// `day` | `week` | `month` | `"<N> days"`.
    pub period: String,
    /// Included billed seconds of voice per period (0 = none).
    #[serde(default)]
    pub voice_seconds: i64,
    /// Included bytes (in + out) per period (0 = none).
    #[serde(default)]
    pub data_bytes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadiusConfig {
    /// UDP address of the accounting listener.
    #[serde(default = "default_radius_listen")]
    pub listen: String,
    /// Seconds of silence after which an open session is closed as stale (0 = automatic:
    /// 3 × the session's interim interval, or 1 hour).
    #[serde(default)]
    pub stale_timeout_secs: u64,
    /// Longest time a received packet waits for its group commit, in milliseconds.
    #[serde(default = "default_commit_wait_ms")]
    pub commit_wait_ms: u64,
    /// Longest Acct-Session-Time rated, in seconds (1..=4294967295, default 31 days): an
    /// update claiming more is a logged anomaly, acknowledged but not rated.
    #[serde(default = "default_max_session_secs")]
    pub max_session_secs: u64,
    /// UDP address of the authorization listener (RFC 2865 Access-Request); empty or
    /// absent = no authorization listener.
    #[serde(default)]
    pub auth_listen: String,
}

impl Default for RadiusConfig {
    fn default() -> Self {
        RadiusConfig {
            listen: default_radius_listen(),
            stale_timeout_secs: 0,
            commit_wait_ms: default_commit_wait_ms(),
            max_session_secs: default_max_session_secs(),
            auth_listen: String::new(),
        }
    }
}

fn default_radius_listen() -> String {
    "127.0.0.1:1813".into()
}
fn default_commit_wait_ms() -> u64 {
    2
}
fn default_max_session_secs() -> u64 {
    31 * 86_400
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address of the JSON-RPC server.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// Idle seconds after which an API session expires.
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// Milliseconds a client has to send a request's complete header (from connecting or
    /// from the end of its previous request); slower connections are closed.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Milliseconds a request may take from its header to its answer (body upload,
    /// waiting for a worker and the work itself); past it the answer is an error.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Most open API connections; further clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most requests executed at once (each holds a worker thread); others wait for one.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            session_idle_secs: default_session_idle(),
            header_timeout_ms: default_header_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_connections: default_max_connections(),
            max_requests: default_max_requests(),
        }
    }
}

impl ApiConfig {
    /// The connection limits as runtime values (each at least 1).
    pub fn limits(&self) -> ApiLimits {
        ApiLimits {
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms.max(1)),
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            max_requests: self.max_requests.max(1),
        }
    }
}

/// Limits of the API's HTTP server (see [`ApiConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub header_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_requests: usize,
}

fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    120_000
}
fn default_max_connections() -> usize {
    256
}
fn default_max_requests() -> usize {
    32
}

fn default_api_listen() -> String {
    "127.0.0.1:1237".into()
}
fn default_session_idle() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory holding `ledger.sqlite` and the `xdr/` Parquet tree.
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
        }
    }
}

fn default_data_dir() -> String {
    "./ratel-data".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingConfig {
    /// IANA time zone in which rule windows, rate windows and local CDR timestamps are read.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

impl Default for RatingConfig {
    fn default() -> Self {
        RatingConfig {
            time_zone: default_tz(),
        }
    }
}

fn default_tz() -> String {
    "UTC".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrConfig {
    /// Directory `serve` watches for CDR files.
    #[serde(default = "default_spool")]
    pub spool: String,
    /// Format of spooled files: asterisk | freeswitch | generic.
    #[serde(default = "default_format")]
    pub format: String,
    /// Longest billable duration of one call, in seconds; a CDR claiming more is a bad
    /// line (reported, not rated). Default 86400 (24 h).
    #[serde(default = "default_max_call_secs")]
    pub max_call_secs: i64,
}

fn default_max_call_secs() -> i64 {
    86_400
}

impl Default for CdrConfig {
    fn default() -> Self {
        CdrConfig {
            max_call_secs: default_max_call_secs(),
            spool: default_spool(),
            format: default_format(),
        }
    }
}

fn default_spool() -> String {
    "./spool".into()
}
fn default_format() -> String {
    "asterisk".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub name: String,
    pub password: String,
    /// Methods this admin may call, as the calling dialect names them (`user.getUserInfo`,
    /// `clients.list`, `subscriber.get`), or `module.*`; default everything (`["*"]`).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NasConfig {
    /// Shown as `ras_description`.
    pub name: String,
    /// Source IP of the NAS's packets.
    pub ip: String,
    /// RADIUS shared secret.
    pub secret: String,
    /// Interim interval the NAS is configured with, in seconds (for stale detection).
    #[serde(default)]
    pub interim_interval_secs: Option<u64>,
    /// Most sessions of this NAS open at once (default 100000): Starts beyond it are
    /// acknowledged but not tracked (nothing charged), counted and logged.
    #[serde(default = "default_nas_max_sessions")]
    pub max_sessions: u64,
    /// `ip:port` where this client relays Disconnect/CoA-Requests (RFC 5176) to the NASes
    /// behind it: set on a RADIUS proxy's entry (FreeRADIUS's `listen { type = coa }`), so a
    /// Disconnect of a session of a NAS that is no `[[nas]]` of its own goes through the
    /// proxy. See docs/freeradius-proxy.md.
    #[serde(default)]
    pub coa_server: Option<String>,
    /// Access-Requests from this NAS must carry a Message-Authenticator (RFC 3579; the
    /// BlastRADIUS mitigation). Default true.
    #[serde(default = "default_true")]
    pub require_message_authenticator: bool,
    /// UDP port of the NAS's Dynamic Authorization server (RFC 5176), where
    /// Disconnect-Requests go. Default 3799.
    #[serde(default = "default_coa_port")]
    pub coa_port: u16,
}

fn default_true() -> bool {
    true
}
fn default_coa_port() -> u16 {
    3799
}

fn default_nas_max_sessions() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRuleConfig {
    pub name: String,
    /// Days the window opens on: mon..sun.
    pub days: Vec<String>,
    /// Inclusive local start, `HH:MM`.
    pub start: String,
    /// Exclusive local end, `HH:MM` (`24:00` allowed); end <= start wraps past midnight.
    pub end: String,
    /// Time price, a decimal string in 0..=1000000000 (see `catalog::MAX_PRICE`).
    pub price_per_minute: String,
    /// Traffic price per 10^9 bytes (in + out), a decimal string in 0..=1000000000.
    pub price_per_gb: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Internet charge rules; together they must cover the week without overlap.
    #[serde(default)]
    pub charge_rules: Vec<String>,
    /// VoIP tariff name.
    #[serde(default)]
    pub tariff: Option<String>,
    /// Decimals of a record's cost.
    #[serde(default = "default_decimals")]
    pub decimals: u32,
    /// up | down | half_up | half_even.
    #[serde(default = "default_rounding")]
    pub rounding: String,
    /// Most open sessions of one subscriber of this group; an Access-Request beyond it is
    /// rejected. Absent = unlimited.
    #[serde(default)]
    pub max_sessions: Option<u32>,
    /// Largest Session-Timeout an Access-Accept gives (also the value when time is free),
    /// in seconds. Default 86400.
    #[serde(default = "default_group_max_session_secs")]
    pub max_session_secs: u64,
    /// RADIUS attributes added to every Access-Accept of this group, by dictionary name:
    /// `reply = { "Framed-Pool" = "pool1", "Filter-Id" = "100M" }` (names from
    /// `radius::auth::REPLY_DICTIONARY`; an unknown name is a config error).
    #[serde(default)]
    pub reply: std::collections::BTreeMap<String, ReplyValue>,
}

/// A `[[group]] reply` attribute value: text (string and ipaddr attributes) or a number.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ReplyValue {
    Integer(i64),
    Text(String),
}

fn default_group_max_session_secs() -> u64 {
    86_400
}

fn default_decimals() -> u32 {
    4
}
fn default_rounding() -> String {
    "up".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffConfig {
    pub name: String,
    /// Rate deck CSV, relative to the config file's directory.
    pub rates: String,
}

/// A parsed config plus where it came from (paths in it are relative to that).
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: ConfigSource,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// The config text (for line numbers in errors).
    pub text: String,
}

impl LoadedConfig {
    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str(&text, ConfigSource::File(path.to_path_buf()), base_dir)
    }

    /// The built-in demo config; its relative paths resolve against the current directory
    /// (data dir) while its rate decks come from the binary itself.
    pub fn demo() -> Self {
        Self::from_str(DEMO_CONFIG, ConfigSource::BuiltinDemo, PathBuf::from("."))
            .expect("the built-in demo config is valid")
    }

    /// Parses config text.
    pub fn from_str(
        text: &str,
        source: ConfigSource,
        base_dir: PathBuf,
    ) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Parse {
                file: match line {
                    Some(l) => format!("{}:{l}", source.display_name()),
                    None => source.display_name(),
                },
                message: one_line(e.message()),
            }
        })?;
        Ok(LoadedConfig {
            config,
            source,
            base_dir,
            text: text.to_string(),
        })
    }

    /// The line of the `n`th (0-based) `[[table]]` header in the config text, if known.
    pub fn line_of(&self, table: &str, n: usize) -> Option<usize> {
        let header = format!("[[{table}]]");
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(&header))
            .nth(n)
            .map(|(i, _)| i + 1)
    }

    /// Resolves a path from the config against the config's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() || self.base_dir == Path::new(".") {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Reads a rate deck named in the config (the demo's decks are compiled in).
    pub fn read_rates(&self, rates: &str) -> Result<(String, String), ConfigError> {
        if matches!(self.source, ConfigSource::BuiltinDemo) && rates == "rates/std.csv" {
            return Ok((
                "<built-in>/rates/std.csv".into(),
                DEMO_RATES_STD.to_string(),
            ));
        }
        let path = self.resolve(rates);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Ok((path.display().to_string(), text))
    }
}

/// Folds a multi-line toml error into one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}
