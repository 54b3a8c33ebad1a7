//! The operations endpoints of the API listener: `GET /metrics` (the Prometheus text
//! exposition of `ratel_engine::metrics::Metrics`, no auth: bind `[api] listen`
//! accordingly) and `GET /health` (`200 ok`, or `503 <reason>` when the serve core or the
//! ledger is stuck while work waits), plus the per-call API counters every dialect records.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{ApiState, RpcResult};

/// `GET /metrics`. The xDR outbox depth and the xDR file count are read from the ledger
/// (read-only connection) at scrape time; everything else is the engine's atomics.
pub(crate) async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let st2 = st.clone();
    let body = tokio::task::spawn_blocking(move || {
        let (outbox, files) = {
            let db = st2.db.lock().unwrap_or_else(|e| e.into_inner());
            let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
            (
                count("SELECT COUNT(*) FROM xdr_outbox"),
                count("SELECT COUNT(*) FROM xdr_files"),
            )
        };
        let m = &st2.live.metrics;
        m.set_scrape_values(
            outbox.max(0) as u64,
            files.max(0) as u64,
            st2.commands.len(),
        );
        m.encode()
    })
    .await
    .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ratel_engine::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// `GET /health`: `200 ok`, or `503 <reason>`.
pub(crate) async fn health(State(st): State<Arc<ApiState>>) -> Response {
    let (code, text) = match st.live.metrics.health().check(st.commands.len()) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The method as a metric label: one of `known`, else `unknown` (labels stay bounded
/// whatever clients send).
pub(crate) fn method_label(known: &[&'static str], method: &str) -> &'static str {
    known
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// Counts one API call and its latency: result `ok` or the error code.
pub(crate) fn record_call(
    st: &ApiState,
    dialect: &'static str,
    method: &'static str,
    r: &RpcResult,
    started: Instant,
) {
    let result = match r {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    st.live
        .metrics
        .api_call(dialect, method, result, started.elapsed());
}
