//! ratel's HTTP API (axum on tokio), started by `ratel serve`: one listener, every dialect
//! by path (DESIGN.md Part 2, "API architecture"). The dialects are thin adapters over one
//! typed service layer ([`service`]): IBSng JSON-RPC at `POST /` ([`ibsng`]), JeraSoft VCS
//! JSON-RPC 2.0 at `POST /jsonrpc/` and its file downloads at `/admin/<module>/<action>`
//! ([`vcs`]), Tariscope REST at `/api/...` ([`tariscope`]). Reads go to the
//! ledger through its read trait and to the core's published live state; writes are
//! commands executed by the serve core, which owns the ledger and every balance.

pub mod auth;
pub mod clients;
pub mod export;
mod http;
pub mod ibsng;
mod metrics;
pub mod report;
pub mod service;
pub mod tariscope;
pub mod vcs;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use ratel_engine::reload::CatalogCell;
use ratel_engine::serve::{Command, Live};

pub use ibsng::RpcError;
pub use service::{Caller, Service, ServiceError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Shared state of the HTTP side: the service every dialect calls, and the bound on
/// requests executing at once.
pub struct ApiState {
    pub service: Service,
    /// Requests executing at once (each holds a blocking worker thread).
    workers: Arc<tokio::sync::Semaphore>,
    /// File downloads streaming at once (each holds a blocking thread while it streams).
    downloads: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    /// Opens a read-only ledger reader (the core must have created the ledger).
    pub fn new(
        cell: Arc<CatalogCell>,
        live: Arc<Live>,
        commands: crossbeam_channel::Sender<Command>,
    ) -> Result<Self, ratel_engine::ledger::LedgerError> {
        let max = cell.get().api_limits.max_requests;
        Ok(ApiState {
            service: Service::new(cell, live, commands)?,
            workers: Arc::new(tokio::sync::Semaphore::new(max)),
            downloads: Arc::new(tokio::sync::Semaphore::new(vcs::files::MAX_DOWNLOADS)),
        })
    }
}

/// Serves the API on `listener` until `shutdown` resolves, within the limits of
/// `[api]` (connections, header and request deadlines; see `http.rs`).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.service.catalog.get().api_limits;
    let app = Router::new()
        .route("/", post(ibsng::handle))
        .route("/jsonrpc", post(vcs::handle))
        .route("/jsonrpc/", post(vcs::handle))
        .route("/admin/{module}/{action}", any(vcs::files::handle))
        .route("/admin/{module}/{action}/", any(vcs::files::handle))
        .route("/api", any(tariscope::handle))
        .route("/api/", any(tariscope::handle))
        .route("/api/{*rest}", any(tariscope::handle))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(metrics::health))
        .fallback(ibsng::not_found)
        .with_state(state);
    http::serve(listener, app, limits, shutdown).await
}

/// Starts the API on its own thread with a small tokio runtime; it stops when `shutdown` is
/// set. `listener` is bound by the caller (so it can print the address first).
pub fn spawn(
    listener: std::net::TcpListener,
    catalog: Arc<CatalogCell>,
    live: Arc<Live>,
    commands: crossbeam_channel::Sender<Command>,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let state = Arc::new(ApiState::new(catalog, live, commands).map_err(std::io::Error::other)?);
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "API runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "API listener failed");
                        return;
                    }
                };
                let stop = async move {
                    while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                if let Err(e) = run(listener, state, stop).await {
                    tracing::error!(error = %e, "API server failed");
                }
            });
        })
}
