//! The handlers, by area: `sync` (the device cycle), `changes` (a device's change stream),
//! `devices` (pairing, and the devices list a device reads), `admin` (operators), `worker`
//! (server-side sync jobs), `billing` (the billing job's ledger), `events` and `console` (the
//! admin console), and here `/metrics`, the probes and the OpenAPI document. Which route each
//! answers is listed in `crate::api`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use ferry_proto::{ErrorCode, ProbeStatus};
use serde_json::json;

use crate::{ApiError, AppState, body};

pub(crate) mod admin;
pub(crate) mod billing;
pub(crate) mod changes;
pub(crate) mod console;
pub(crate) mod devices;
pub(crate) mod events;
pub(crate) mod sync;
pub(crate) mod worker;

/// `GET /metrics` (the deployment tenant's viewer, like the sync jobs' state it summarizes):
/// Prometheus text. The sync engine's metrics (`crate::metrics`), and the sync worker's when
/// it runs in this process.
pub(crate) async fn metrics(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    _reader: crate::auth::DeploymentReader,
) -> impl axum::response::IntoResponse {
    let mut text = state.server_metrics.render(state.store.pool_status());
    if let Some(worker) = &state.metrics {
        text.push_str(&worker.render());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// `GET /livez` (no auth): `200` while the process serves requests at all. For a load
/// balancer's or an orchestrator's liveness probe: it asks nothing of the store, so a database
/// outage never gets a healthy process restarted.
pub(crate) async fn live() -> axum::Json<ProbeStatus> {
    axum::Json(ProbeStatus {
        status: "ok".to_owned(),
    })
}

/// `GET /readyz` (no auth): `200` when this instance can serve requests now (its store
/// answers and it is not shutting down), else `503 unavailable` saying which. For a load
/// balancer's readiness probe: an instance that is draining, or cut off from PostgreSQL, is
/// taken out of rotation while the others serve. (`GET /api/sync/health`, the contract's, is
/// for devices.)
pub(crate) async fn ready(
    State(state): State<AppState>,
) -> Result<axum::Json<ProbeStatus>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "The server is shutting down: it finishes the requests in flight and takes no new \
             ones.",
        ));
    }
    state.store.ping().await?;
    Ok(live().await)
}

/// `GET /api/openapi.json` (no auth): the API's OpenAPI 3.1 document, made from the same list
/// of described routes as the router (`crate::api`), so it is the API this server serves.
pub(crate) async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document(&crate::api::endpoints()))
}

/// A path segment's text. axum answers a segment that does not decode (percent-encoded bytes
/// that are not UTF-8) in plain text; the contract wants its JSON error body.
pub(crate) fn path_text(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(text)| text)
        .map_err(|e| ApiError::invalid_request(format!("The path is invalid: {e}.")))
}

/// Any path the API does not have.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("There is no endpoint at {}.", uri.path()))
}

/// A known path with a method it does not take.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not accept {method} requests.", uri.path()),
    )
}

/// Refuses a request whose URI or headers are over the server's limits
/// ([`crate::Config::max_uri_bytes`], [`crate::Config::max_header_bytes`]) before any handler
/// runs, with HTTP's status for it and the contract's body: `414` or `431`, code
/// `invalid_request` (the contract's table has neither status); and one whose path or query
/// holds a NUL byte, with `400 invalid_request`.
pub(crate) async fn limit_request_head(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri_bytes > config.max_uri_bytes {
        let limit = config.max_uri_bytes;
        let error = ApiError::invalid_request(format!(
            "The request's path and query are {uri_bytes} bytes, more than the server's limit \
             of {limit} bytes."
        ))
        .with_details(json!({"limit_bytes": limit, "uri_bytes": uri_bytes}))
        .with_status(StatusCode::URI_TOO_LONG);
        return body::refuse(request, error).await;
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > config.max_header_bytes {
        let limit = config.max_header_bytes;
        let error = ApiError::invalid_request(format!(
            "The request's headers are {header_bytes} bytes (names and values), more than the \
             server's limit of {limit} bytes."
        ))
        .with_details(json!({"limit_bytes": limit, "header_bytes": header_bytes}))
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        return body::refuse(request, error).await;
    }
    // No id, name or key in Ferry holds a NUL byte, and PostgreSQL cannot even compare text
    // with one: refused here, the same on every store, rather than deep in a query.
    let target = request.uri().path_and_query().map_or("", |t| t.as_str());
    if target
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%00"))
    {
        let error = ApiError::invalid_request(
            "The request's path or query holds a NUL byte (%00); no name or id in Ferry has one.",
        );
        return body::refuse(request, error).await;
    }
    next.run(request).await
}
