//! The operations endpoints of the API listener: `GET /metrics` (the Prometheus text
//! exposition of `ratel_engine::metrics::Metrics`, no auth: bind `[api] listen`
//! accordingly) and `GET /health` (`200 ok`, or `503 <reason>` when the serve core or the
//! ledger is stuck while work waits), plus the per-call API counters every dialect records.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ApiState;

/// `GET /metrics`. The xDR outbox depth and the xDR file count are read from the ledger
/// (read-only connection) at scrape time; everything else is the engine's atomics.
pub(crate) async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let st2 = st.clone();
    let body = tokio::task::spawn_blocking(move || {
        let (outbox, files) = st2.service.read(|l| l.counts()).unwrap_or((0, 0));
        let m = &st2.service.live.metrics;
        m.set_scrape_values(outbox, files, st2.service.commands_waiting());
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
    let (code, text) = match st
        .service
        .live
        .metrics
        .health()
        .check(st.service.commands_waiting())
    {
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

/// Counts one API call and its latency: result `ok` or the dialect's error code.
pub(crate) fn record_call(
    st: &ApiState,
    dialect: &'static str,
    method: &'static str,
    error: Option<&'static str>,
    started: Instant,
) {
    let result = error.unwrap_or("ok");
    st.service
        .live
        .metrics
        .api_call(dialect, method, result, started.elapsed());
}
