//! Process metrics and health (`GET /metrics`, `GET /health`): one [`Metrics`] value behind
//! an `Arc`, created by `ratel serve`, shared by the serve core (through [`crate::serve::Live`])
//! and the API, and encoded in the Prometheus text format with the `prometheus-client`
//! crate. Every family is named `ratel_*`.
//!
//! The hot path touches atomics only: the core keeps its RADIUS counters as plain integers
//! (`radius::accounting::Counters`) and mirrors them here with relaxed stores once per loop
//! ([`Metrics::core_loop`]); commit latency and batch sizes go into fixed-bucket atomic
//! histograms. Counters of the other threads (authorization listener, Disconnect-Request
//! sender) are read at scrape time from their own atomics. API calls (not on the RADIUS
//! path) use `prometheus-client` families keyed by dialect, method and result.
//!
//! Health: the core stamps a heartbeat at the end of every loop and marks each ledger commit
//! while it runs; [`Health::check`] reports a stuck core (no loop finished within 2 s while
//! work waits: API commands queued, or datagrams in the accounting socket) or a commit
//! running longer than 2 s.

use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::batch::FileSummary;
use crate::radius::accounting::Counters;
use crate::radius::auth_server::AuthCounters;
use crate::radius::disconnect::DisconnectCounters;

/// How long the core loop or a commit may take while work waits before `/health` says 503.
pub const STUCK_AFTER: Duration = Duration::from_secs(2);

/// Test-only hook: with `RATEL_TEST_STALL_CORE_MS=N` the serve core sleeps N ms at the end
/// of every loop (the end-to-end tests use it to see `/health` answer 503). Never set it in
/// production.
pub const TEST_STALL_ENV: &str = "RATEL_TEST_STALL_CORE_MS";

/// Commit latency bucket bounds (seconds).
const COMMIT_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Batch size bucket bounds (packets per committed batch).
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// API latency bucket bounds (seconds).
const API_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram with fixed bounds made of atomics (no lock on observe).
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One per bound, then the +Inf bucket (not cumulative).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum as f64 bits.
    sum_bits: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |b| {
            Some((f64::from_bits(b) + v).to_bits())
        });
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn encode(&self, name: &str, help: &str, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.buckets[self.bounds.len()].load(Relaxed)));
        let count = buckets.iter().map(|b| b.1).sum();
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(
            f64::from_bits(self.sum_bits.load(Relaxed)),
            count,
            &buckets,
            None,
        )
    }
}

/// The RADIUS accounting counters of the core, mirrored (one relaxed store each per loop).
#[derive(Debug, Default)]
struct RadiusMirror {
    received: AtomicU64,
    acknowledged: AtomicU64,
    retransmissions: AtomicU64,
    retransmits_answered: AtomicU64,
    deferred_fsync_batches: AtomicU64,
    status_server: AtomicU64,
    dropped_unknown_nas: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_bad_auth: AtomicU64,
    poisoned: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_closed: AtomicU64,
    stale_closed: AtomicU64,
    sessions_capped: AtomicU64,
    counters_backwards: AtomicU64,
    late_updates_ignored: AtomicU64,
    session_time_anomalies: AtomicU64,
    traffic_anomalies: AtomicU64,
    overflow_anomalies: AtomicU64,
    already_charged: AtomicU64,
    open_sessions: AtomicU64,
}

/// Liveness of the core loop and the ledger (see the module doc).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` (plus one) when the core last finished a loop.
    loop_at_ms: AtomicU64,
    /// Milliseconds since `epoch` (plus one) when the running ledger commit started; 0: none.
    commit_started_ms: AtomicU64,
    /// A clone of the accounting socket, to see whether datagrams wait (peek, never read).
    socket: OnceLock<socket2::Socket>,
    stall: Option<Duration>,
}

impl Health {
    fn new() -> Self {
        let stall = std::env::var(TEST_STALL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Health {
            epoch: Instant::now(),
            loop_at_ms: AtomicU64::new(1),
            commit_started_ms: AtomicU64::new(0),
            socket: OnceLock::new(),
            stall,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Lets the health check peek at the accounting socket (a clone; nothing is read).
    pub fn watch_socket(&self, socket: &UdpSocket) {
        if let Ok(s) = socket.try_clone() {
            let _ = self.socket.set(socket2::Socket::from(s));
        }
    }

    /// Whether a datagram waits in the accounting socket.
    pub fn packets_waiting(&self) -> bool {
        let Some(s) = self.socket.get() else {
            return false;
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 1];
        s.recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
            .is_ok()
    }

    /// Milliseconds since the core last finished a loop.
    pub fn loop_age(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.loop_at_ms.load(Relaxed)))
    }

    /// `Ok` when healthy, else the reason (`/health` answers 503 with it). `commands_waiting`:
    /// API commands queued for the core.
    pub fn check(&self, commands_waiting: usize) -> Result<(), String> {
        let now = self.now_ms();
        let commit = self.commit_started_ms.load(Relaxed);
        if commit != 0 && now.saturating_sub(commit) > STUCK_AFTER.as_millis() as u64 {
            return Err(format!(
                "ledger commit running for {} ms",
                now.saturating_sub(commit)
            ));
        }
        let age = self.loop_age();
        if age > STUCK_AFTER {
            let packets = self.packets_waiting();
            if commands_waiting > 0 || packets {
                return Err(format!(
                    "core loop has not finished a batch for {} ms while work waits ({} API commands queued{})",
                    age.as_millis(),
                    commands_waiting,
                    if packets { ", RADIUS datagrams waiting" } else { "" }
                ));
            }
        }
        Ok(())
    }
}

/// Labels of an API call.
type ApiLabels = [(&'static str, String); 3];
type ApiLatencyLabels = [(&'static str, String); 2];

/// Every metric of a `ratel serve` process.
pub struct Metrics {
    core: Arc<CoreMetrics>,
    api_requests: Family<ApiLabels, Counter>,
    api_seconds: Family<ApiLatencyLabels, Histogram>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What the core and the other engine threads publish (read by the collector at scrape).
#[derive(Debug)]
struct CoreMetrics {
    radius: RadiusMirror,
    commit_seconds: AtomicHistogram,
    batch_packets: AtomicHistogram,
    xdrs_radius: AtomicU64,
    xdrs_cdr: AtomicU64,
    /// CDR records by status: ok, unanswered, no_rate, unknown_user, duplicate, bad_line.
    cdr_records: [AtomicU64; 6],
    cdr_files_done: AtomicU64,
    cdr_files_failed: AtomicU64,
    /// Read from the ledger by the API right before encoding.
    outbox_depth: AtomicU64,
    xdr_files: AtomicU64,
    command_queue: AtomicU64,
    auth: OnceLock<Arc<AuthCounters>>,
    disconnect: OnceLock<Arc<DisconnectCounters>>,
    events: OnceLock<Arc<crate::events::EventCounters>>,
    health: Health,
}

const CDR_STATUSES: [&str; 6] = [
    "ok",
    "unanswered",
    "no_rate",
    "unknown_user",
    "duplicate",
    "bad_line",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let core = Arc::new(CoreMetrics {
            radius: RadiusMirror::default(),
            commit_seconds: AtomicHistogram::new(COMMIT_BOUNDS),
            batch_packets: AtomicHistogram::new(BATCH_BOUNDS),
            xdrs_radius: AtomicU64::new(0),
            xdrs_cdr: AtomicU64::new(0),
            cdr_records: Default::default(),
            cdr_files_done: AtomicU64::new(0),
            cdr_files_failed: AtomicU64::new(0),
            outbox_depth: AtomicU64::new(0),
            xdr_files: AtomicU64::new(0),
            command_queue: AtomicU64::new(0),
            auth: OnceLock::new(),
            disconnect: OnceLock::new(),
            events: OnceLock::new(),
            health: Health::new(),
        });
        let api_requests = Family::<ApiLabels, Counter>::default();
        let api_seconds = Family::<ApiLatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(API_BOUNDS)
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(core.clone()));
        registry.register(
            "ratel_api_requests",
            "API requests by dialect, method and result (ok or the error code)",
            api_requests.clone(),
        );
        registry.register(
            "ratel_api_request_duration_seconds",
            "API request latency by dialect and method",
            api_seconds.clone(),
        );
        Metrics {
            core,
            api_requests,
            api_seconds,
            registry,
        }
    }

    pub fn health(&self) -> &Health {
        &self.core.health
    }

    /// The core, at the end of every loop: mirrors its counters and stamps the heartbeat.
    pub fn core_loop(&self, c: &Counters, open_sessions: usize) {
        let r = &self.core.radius;
        let set = |a: &AtomicU64, v: u64| a.store(v, Relaxed);
        set(&r.received, c.received);
        set(&r.acknowledged, c.acknowledged);
        set(&r.retransmissions, c.retransmissions);
        set(&r.status_server, c.status_server);
        set(&r.dropped_unknown_nas, c.dropped_unknown_nas);
        set(&r.dropped_malformed, c.dropped_malformed);
        set(&r.dropped_bad_auth, c.dropped_bad_auth);
        set(&r.poisoned, c.poisoned);
        set(&r.sessions_opened, c.sessions_opened);
        set(&r.sessions_closed, c.sessions_closed);
        set(&r.stale_closed, c.stale_closed);
        set(&r.sessions_capped, c.sessions_capped);
        set(&r.counters_backwards, c.counters_backwards);
        set(&r.late_updates_ignored, c.late_updates_ignored);
        set(&r.session_time_anomalies, c.session_time_anomalies);
        set(&r.traffic_anomalies, c.traffic_anomalies);
        set(&r.overflow_anomalies, c.overflow_anomalies);
        set(&r.already_charged, c.already_charged);
        set(&r.open_sessions, open_sessions as u64);
        let h = &self.core.health;
        h.loop_at_ms.store(h.now_ms(), Relaxed);
        if let Some(d) = h.stall {
            std::thread::sleep(d);
        }
    }

    /// A ledger commit starts; pass the token to [`Metrics::commit_finished`].
    pub fn commit_started(&self) -> Instant {
        let h = &self.core.health;
        h.commit_started_ms.store(h.now_ms(), Relaxed);
        Instant::now()
    }

    pub fn commit_finished(&self, started: Instant) {
        self.core.health.commit_started_ms.store(0, Relaxed);
        self.core
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// A batch of `packets` was committed and acknowledged (or handed to the acknowledger).
    pub fn batch_committed(&self, packets: usize) {
        if packets > 0 {
            self.core.batch_packets.observe(packets as f64);
        }
    }

    /// A batch was committed without its fsync: the acknowledger thread fsyncs the WAL and
    /// answers it (acks.rs).
    pub fn batch_fsync_deferred(&self) {
        self.core
            .radius
            .deferred_fsync_batches
            .fetch_add(1, Relaxed);
    }

    /// A retransmission of a committed packet was answered again.
    pub fn retransmit_answered(&self) {
        self.core.radius.retransmits_answered.fetch_add(1, Relaxed);
    }

    /// RADIUS xDRs went from the outbox to Parquet.
    pub fn outbox_flushed(&self, xdrs: usize) {
        self.core.xdrs_radius.fetch_add(xdrs as u64, Relaxed);
    }

    /// A spool file was rated.
    pub fn cdr_file_rated(&self, s: &FileSummary) {
        let c = &self.core;
        c.cdr_files_done.fetch_add(1, Relaxed);
        c.xdrs_cdr.fetch_add(s.xdrs, Relaxed);
        let by = [
            s.ok,
            s.unanswered,
            s.no_rate,
            s.unknown_user,
            s.duplicates,
            s.bad_lines,
        ];
        for (a, v) in c.cdr_records.iter().zip(by) {
            a.fetch_add(v, Relaxed);
        }
    }

    /// A spool file failed (moved to `spool/failed/`).
    pub fn cdr_file_failed(&self) {
        self.core.cdr_files_failed.fetch_add(1, Relaxed);
    }

    /// Reads the authorization listener's counters at scrape time.
    pub fn watch_auth(&self, c: Arc<AuthCounters>) {
        let _ = self.core.auth.set(c);
    }

    /// Reads the event delivery threads' counters at scrape time.
    pub fn watch_events(&self, c: Arc<crate::events::EventCounters>) {
        let _ = self.core.events.set(c);
    }

    /// Reads the Disconnect-Request sender's counters at scrape time.
    pub fn watch_disconnects(&self, c: Arc<DisconnectCounters>) {
        let _ = self.core.disconnect.set(c);
    }

    /// An API call: `dialect` (`ibsng`, ...), `method`, `result` (`ok` or the error code).
    pub fn api_call(&self, dialect: &'static str, method: &str, result: &str, took: Duration) {
        self.api_requests
            .get_or_create(&[
                ("dialect", dialect.to_string()),
                ("method", method.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
        self.api_seconds
            .get_or_create(&[
                ("dialect", dialect.to_string()),
                ("method", method.to_string()),
            ])
            .observe(took.as_secs_f64());
    }

    /// Values the API reads at scrape time: xDR outbox rows, xDR files in the ledger, API
    /// commands queued for the core.
    pub fn set_scrape_values(&self, outbox_depth: u64, xdr_files: u64, command_queue: usize) {
        self.core.outbox_depth.store(outbox_depth, Relaxed);
        self.core.xdr_files.store(xdr_files, Relaxed);
        self.core.command_queue.store(command_queue as u64, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// A counter family with one label set per value.
fn counters<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[([(&str, &str); N], u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let fm = m.encode_family(labels)?;
        ConstCounter::new(*v).encode(fm)?;
    }
    Ok(())
}

impl Collector for CoreMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.radius;
        let l = |a: &AtomicU64| a.load(Relaxed);
        counter(
            &mut enc,
            "ratel_radius_datagrams_received",
            "Datagrams received on the accounting socket",
            l(&r.received),
        )?;
        counters(
            &mut enc,
            "ratel_radius_packets",
            "Accounting-socket packets by type and outcome: accepted (committed and acknowledged), retransmission (of a packet seen before: answered again, not applied)",
            &[
                ([("type", "accounting_request"), ("outcome", "accepted")], l(&r.acknowledged)),
                ([("type", "accounting_request"), ("outcome", "retransmission")], l(&r.retransmissions)),
                ([("type", "status_server"), ("outcome", "accepted")], l(&r.status_server)),
            ],
        )?;
        counters(
            &mut enc,
            "ratel_radius_dropped",
            "Accounting-socket datagrams dropped, by reason",
            &[
                ([("reason", "unknown_nas")], l(&r.dropped_unknown_nas)),
                ([("reason", "bad_authenticator")], l(&r.dropped_bad_auth)),
                ([("reason", "malformed")], l(&r.dropped_malformed)),
                ([("reason", "poisoned")], l(&r.poisoned)),
            ],
        )?;
        counter(
            &mut enc,
            "ratel_radius_acks",
            "Accounting-Responses sent: committed packets, and retransmissions of committed packets answered again",
            l(&r.acknowledged) + l(&r.retransmits_answered),
        )?;
        counter(
            &mut enc,
            "ratel_radius_deferred_fsync_batches",
            "RADIUS batches answered by the acknowledger thread after its WAL fsync (big batches); the others fsync in their own commit",
            l(&r.deferred_fsync_batches),
        )?;
        gauge(
            &mut enc,
            "ratel_radius_sessions_open",
            "Open RADIUS sessions",
            l(&r.open_sessions) as i64,
        )?;
        counters(
            &mut enc,
            "ratel_radius_sessions",
            "RADIUS session events: opened, closed (Stop, Accounting-On/Off), stale (closed at the last update), capped (a Start beyond a cap: not tracked)",
            &[
                ([("event", "opened")], l(&r.sessions_opened)),
                ([("event", "closed")], l(&r.sessions_closed)),
                ([("event", "stale")], l(&r.stale_closed)),
                ([("event", "capped")], l(&r.sessions_capped)),
            ],
        )?;
        counters(
            &mut enc,
            "ratel_radius_anomalies",
            "Accounting updates acknowledged but not (fully) rated, by kind",
            &[
                ([("kind", "counters_backwards")], l(&r.counters_backwards)),
                ([("kind", "late_update")], l(&r.late_updates_ignored)),
                ([("kind", "session_time")], l(&r.session_time_anomalies)),
                ([("kind", "traffic")], l(&r.traffic_anomalies)),
                ([("kind", "overflow")], l(&r.overflow_anomalies)),
                ([("kind", "already_charged")], l(&r.already_charged)),
            ],
        )?;
        self.commit_seconds.encode(
            "ratel_ledger_commit_duration_seconds",
            "Duration of the serve core's ledger commits (one fsync each)",
            &mut enc,
        )?;
        self.batch_packets.encode(
            "ratel_radius_batch_packets",
            "Packets per committed RADIUS batch",
            &mut enc,
        )?;
        counters(
            &mut enc,
            "ratel_xdrs_written",
            "xDRs written to Parquet by this process, by source",
            &[
                ([("source", "radius")], l(&self.xdrs_radius)),
                ([("source", "cdr")], l(&self.xdrs_cdr)),
            ],
        )?;
        gauge(
            &mut enc,
            "ratel_xdr_files",
            "xDR Parquet files recorded in the ledger",
            l(&self.xdr_files) as i64,
        )?;
        gauge(
            &mut enc,
            "ratel_xdr_outbox_depth",
            "RADIUS xDRs committed and waiting in the outbox for their Parquet file",
            l(&self.outbox_depth) as i64,
        )?;
        let rows: Vec<([(&str, &str); 1], u64)> = CDR_STATUSES
            .iter()
            .zip(&self.cdr_records)
            .map(|(s, a)| ([("status", *s)], l(a)))
            .collect();
        counters(
            &mut enc,
            "ratel_cdr_records",
            "CDR records of spool files by status",
            &rows,
        )?;
        counters(
            &mut enc,
            "ratel_cdr_files",
            "Spool files by result (done, failed)",
            &[
                ([("result", "done")], l(&self.cdr_files_done)),
                ([("result", "failed")], l(&self.cdr_files_failed)),
            ],
        )?;
        gauge(
            &mut enc,
            "ratel_core_command_queue_depth",
            "API commands waiting for the serve core",
            l(&self.command_queue) as i64,
        )?;
        gauge(
            &mut enc,
            "ratel_core_loop_age_milliseconds",
            "Milliseconds since the serve core last finished a loop",
            self.health.loop_age().as_millis() as i64,
        )?;
        if let Some(a) = self.auth.get() {
            counters(
                &mut enc,
                "ratel_radius_auth_requests",
                "Access-Requests by result",
                &[
                    ([("result", "accepted")], l(&a.accepted)),
                    ([("result", "rejected")], l(&a.rejected)),
                    (
                        [("result", "dropped_unknown_nas")],
                        l(&a.dropped_unknown_nas),
                    ),
                    ([("result", "dropped_bad")], l(&a.dropped_bad)),
                    ([("result", "ledger_error")], l(&a.ledger_errors)),
                ],
            )?;
        }
        if let Some(e) = self.events.get() {
            counters(
                &mut enc,
                "ratel_events",
                "Provisioning event deliveries by result: delivered, failed_attempt, dead",
                &[
                    ([("result", "delivered")], l(&e.delivered)),
                    ([("result", "failed_attempt")], l(&e.failed_attempts)),
                    ([("result", "dead")], l(&e.dead)),
                ],
            )?;
        }
        if let Some(d) = self.disconnect.get() {
            counters(
                &mut enc,
                "ratel_radius_disconnects",
                "Disconnect-Request series by result: requested, acked, naked, timed_out, queue_full, unroutable",
                &[
                    ([("result", "requested")], l(&d.requested)),
                    ([("result", "acked")], l(&d.acked)),
                    ([("result", "naked")], l(&d.naked)),
                    ([("result", "timed_out")], l(&d.timed_out)),
                    ([("result", "queue_full")], l(&d.queue_full)),
                    ([("result", "unroutable")], l(&d.unroutable)),
                ],
            )?;
            counters(
                &mut enc,
                "ratel_radius_disconnect_packets",
                "Disconnect-Request datagrams sent: first sends and retransmissions",
                &[
                    ([("kind", "sent")], l(&d.sent)),
                    ([("kind", "retransmitted")], l(&d.retransmitted)),
                ],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition names every family `ratel_*`, accumulates histogram buckets and
    /// carries API labels.
    #[test]
    fn exposition_names_and_values() {
        let m = Metrics::new();
        let c = Counters {
            received: 5,
            acknowledged: 3,
            retransmissions: 1,
            dropped_unknown_nas: 1,
            ..Default::default()
        };
        m.core_loop(&c, 2);
        m.batch_committed(3);
        m.api_call("ibsng", "login.login", "ok", Duration::from_millis(1));
        let text = m.encode();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("ratel_"), "{line}");
        }
        for want in [
            "ratel_radius_datagrams_received_total 5",
            "ratel_radius_packets_total{type=\"accounting_request\",outcome=\"accepted\"} 3",
            "ratel_radius_dropped_total{reason=\"unknown_nas\"} 1",
            "ratel_radius_sessions_open 2",
            "ratel_radius_batch_packets_bucket{le=\"2\"} 0",
            "ratel_radius_batch_packets_bucket{le=\"4\"} 1",
            "ratel_radius_batch_packets_count 1",
            "ratel_api_requests_total{dialect=\"ibsng\",method=\"login.login\",result=\"ok\"} 1",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
        }
    }
}
