//! VCS file answers (seed: "Work with files"): `GET|POST /admin/<module>/<action>` with
//! `login` + `password` (also written `auth[login]`, `auth[password]`, or a JSON `auth`
//! object) or `SID`, arguments in the query string and/or the body (form-encoded or a JSON
//! object). `xdrs/download` (method name `xdrs.download` for `allow`) streams the xDRs of
//! `[from, to)` (logout time; `id_clients` optional) as `format=csv` (default) or
//! `parquet`, with chunked transfer: a blocking producer reads the export batch by batch
//! and hands chunks through a bounded channel to the response body, so memory does not
//! grow with the rows (and stops at once when the client goes away). Refusals are answered
//! before any byte of the file, as JSON `{"code": false, ..., "errors": [...]}` with an HTTP
//! status (400, 401, 403, 404, 429, 503).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{authenticate, fmt_time, got, Args, Refusal, SID_PREFIX};
use crate::export::{CsvEncoder, ParquetEncoder, XdrExport};
use crate::service::Service;
use crate::{metrics, ApiState, MAX_BODY};

/// Bytes of file per chunk sent to the client.
const CHUNK_BYTES: usize = 256 << 10;
/// Chunks waiting for the client at most (the producer blocks beyond).
const CHUNKS_IN_FLIGHT: usize = 8;
/// Downloads running at once.
pub const MAX_DOWNLOADS: usize = 4;

/// The file formats of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
    fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// A refusal as an HTTP answer.
fn refused(status: StatusCode, r: &Refusal) -> Response {
    let body = json!({
        "code": false,
        "session_id": Value::Null,
        "messages": [],
        "return": Value::Null,
        "errors": r.errors,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The HTTP status of a refusal label.
fn status_of(label: &str) -> StatusCode {
    match label {
        "access_denied" | "vetoed" => StatusCode::FORBIDDEN,
        "login" => StatusCode::UNAUTHORIZED,
        "not_found" => StatusCode::NOT_FOUND,
        "auth_locked" => StatusCode::TOO_MANY_REQUESTS,
        "exists" => StatusCode::CONFLICT,
        "not_ready" | "busy" => StatusCode::SERVICE_UNAVAILABLE,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `a=b&c=d` pairs (percent-decoded, `+` a space) into `m`.
fn form_pairs(text: &str, m: &mut Map<String, Value>) {
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::tariscope::percent_decode(k);
        let v = crate::tariscope::percent_decode(v);
        m.insert(k, Value::String(v));
    }
}

/// The arguments of a file request: query string, then the body (JSON object or form);
/// `login`/`password` and `auth[login]`/`auth[password]` become the `auth` object.
fn file_params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    let mut m = Map::new();
    if let Some(q) = uri.query() {
        form_pairs(q, &mut m);
    }
    if !body.is_empty() {
        let json_body = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"))
            || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if json_body {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) => m.extend(o),
                _ => {
                    return Err(Refusal::args(vec![
                        "body: expected a JSON object or form fields".into(),
                    ]))
                }
            }
        } else {
            let text = std::str::from_utf8(body)
                .map_err(|_| Refusal::args(vec!["body: form fields must be UTF-8".into()]))?;
            form_pairs(text, &mut m);
        }
    }
    let mut auth = match m.remove("auth") {
        Some(Value::Object(a)) => a,
        _ => Map::new(),
    };
    for (flat, key) in [
        ("login", "login"),
        ("password", "password"),
        ("auth[login]", "login"),
        ("auth[password]", "password"),
    ] {
        if let Some(v) = m.remove(flat) {
            auth.insert(key.into(), v);
        }
    }
    if !auth.is_empty() {
        m.insert("auth".into(), Value::Object(auth));
    }
    Ok(m)
}

/// A file name for the range: `xdrs_<from>_<to>[_client<id>].<ext>`, times in the rating
/// zone.
fn file_name(st: &Service, from: i64, to: i64, id: Option<i64>, f: Format) -> String {
    let cat = st.catalog.get();
    let t = |s: i64| fmt_time(&cat, s).replace(['-', ':'], "").replace(' ', "T");
    let client = id.map(|i| format!("_client{i}")).unwrap_or_default();
    format!("xdrs_{}_{}{client}.{}", t(from), t(to), f.extension())
}

/// What a checked download request becomes.
struct Plan {
    export: XdrExport,
    format: Format,
    file_name: String,
    session: String,
}

/// Authenticates, checks `allow` and the arguments, and fixes the export's sources.
fn prepare(st: &Service, peer: std::net::IpAddr, p: &Map<String, Value>) -> Result<Plan, Refusal> {
    let (session, caller) = authenticate(st, peer, p).map_err(|mut r| {
        if r.label == "access_denied" {
            r.label = "login";
        }
        r
    })?;
    st.allow(&caller, "xdrs.download", false)?;
    let mut a = Args::new(p);
    let from = a.req_time(st, "from");
    let to = a.req_time(st, "to");
    let id = a.int("id_clients");
    let format = match a.text("format").as_deref().map(str::trim) {
        None | Some("") | Some("csv") => Some(Format::Csv),
        Some("parquet") => Some(Format::Parquet),
        Some(_) => {
            a.refuse("format", "csv or parquet");
            None
        }
    };
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            a.refuse("to", "must be after from");
        }
    }
    a.check()?;
    let (from, to, format) = (got(from, "from")?, got(to, "to")?, got(format, "format")?);
    let export = st.export_xdrs(&caller, id, from, to)?;
    Ok(Plan {
        export,
        format,
        file_name: file_name(st, from, to, id, format),
        session,
    })
}

/// `GET|POST /admin/<module>/<action>`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn handle(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((module, action)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let record = |label: Option<&'static str>| {
        metrics::record_call(&st, "vcs", "xdrs.download", label, started);
    };
    if method != Method::GET && method != Method::POST {
        let r = Refusal::args(vec!["use GET or POST".into()]);
        record(Some("method"));
        return refused(StatusCode::METHOD_NOT_ALLOWED, &r);
    }
    if (module.as_str(), action.as_str()) != ("xdrs", "download") {
        let name: String = format!("{module}/{action}").chars().take(64).collect();
        let r = Refusal {
            label: "not_found",
            errors: vec![format!(
                "no file at /admin/{name} (there is /admin/xdrs/download)"
            )],
        };
        return refused(StatusCode::NOT_FOUND, &r);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        let r = Refusal::args(vec![format!(
            "body: larger than {MAX_BODY} bytes or unreadable"
        )]);
        record(Some("invalid_params"));
        return refused(StatusCode::BAD_REQUEST, &r);
    };
    let params = match file_params(&uri, &headers, &bytes) {
        Ok(p) => p,
        Err(r) => {
            record(Some(r.label));
            return refused(StatusCode::BAD_REQUEST, &r);
        }
    };
    let Ok(download) = st.downloads.clone().try_acquire_owned() else {
        let r = Refusal {
            label: "busy",
            errors: vec![format!(
                "{MAX_DOWNLOADS} downloads are running; try again when one has finished"
            )],
        };
        record(Some("busy"));
        return refused(StatusCode::SERVICE_UNAVAILABLE, &r);
    };
    let Ok(worker) = st.workers.clone().acquire_owned().await else {
        let r = Refusal {
            label: "internal",
            errors: vec!["the API is shutting down".into()],
        };
        return refused(StatusCode::SERVICE_UNAVAILABLE, &r);
    };
    let st2 = st.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        prepare(&st2.service, peer.ip(), &params)
    })
    .await;
    let plan = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(r)) => {
            record(Some(r.label));
            return refused(status_of(r.label), &r);
        }
        Err(_) => {
            let r = Refusal {
                label: "internal",
                errors: vec!["the request failed".into()],
            };
            record(Some("internal"));
            return refused(StatusCode::INTERNAL_SERVER_ERROR, &r);
        }
    };
    record(None);
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let Plan {
        export,
        format,
        file_name,
        session,
    } = plan;
    tokio::task::spawn_blocking(move || {
        let _download = download;
        produce(export, format, tx);
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.content_type())
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Session-Id", format!("{SID_PREFIX}{session}"))
        .body(Body::new(ChannelBody { rx }))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Runs an export into the channel (on a blocking thread). A failure after the first byte
/// cannot change the status any more: the body ends with an error, so the client sees a
/// truncated transfer (no last chunk), never a complete-looking file.
fn produce(export: XdrExport, format: Format, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let started = Instant::now();
    let w = ChunkWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK_BYTES),
    };
    let schema = export.schema();
    let r = match format {
        Format::Csv => match CsvEncoder::new(w, schema) {
            Ok(mut enc) => export.run(&mut enc),
            Err(e) => Err(std::io::Error::other(e).into()),
        },
        Format::Parquet => match ParquetEncoder::new(w, schema) {
            Ok(mut enc) => export.run(&mut enc),
            Err(e) => Err(std::io::Error::other(e).into()),
        },
    };
    match r {
        Ok(rows) => tracing::info!(
            rows,
            format = format.extension(),
            secs = started.elapsed().as_secs_f64(),
            "xDR download sent"
        ),
        Err(crate::export::ExportError::Sink(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::info!("xDR download stopped: the client went away");
        }
        Err(e) => {
            tracing::error!(error = %e, "xDR download failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    }
}

/// A `Write` that sends what it is given as chunks of [`CHUNK_BYTES`] through the channel
/// (blocking while [`CHUNKS_IN_FLIGHT`] wait for the client).
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The response body: the chunks of the channel, ending when the producer is done (or
/// with its error).
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_come_from_the_query_and_the_body() {
        let uri: Uri =
            "/admin/xdrs/download?from=2026-11-02%2000:00:00&login=system&format=parquet"
                .parse()
                .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p = file_params(
            &uri,
            &h,
            b"auth%5Bpassword%5D=sys&to=2026-11-03+00%3A00%3A00",
        )
        .unwrap();
        assert_eq!(p["from"], "2026-11-02 00:00:00");
        assert_eq!(p["to"], "2026-11-03 00:00:00");
        assert_eq!(p["auth"], json!({"login": "system", "password": "sys"}));
        let p = file_params(
            &"/admin/xdrs/download".parse().unwrap(),
            &HeaderMap::new(),
            br#"{"SID": "1-abc", "from": "2026-11-02 00:00:00"}"#,
        )
        .unwrap();
        assert_eq!(p["SID"], "1-abc");
        assert!(file_params(&uri, &HeaderMap::new(), b"{oops").is_err());
    }
}
