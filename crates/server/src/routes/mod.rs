//! The handlers, by area: `sync` (the device cycle), `devices` (pairing), `admin` (operators),
//! `worker` (server-side sync jobs), `billing` (the billing job's ledger), and `/metrics`.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{Method, Uri};
use ferry_proto::ErrorCode;

use crate::ApiError;

pub(crate) mod admin;
pub(crate) mod billing;
pub(crate) mod devices;
pub(crate) mod sync;
pub(crate) mod worker;

/// `GET /metrics`: Prometheus text. The sync worker's metrics when it runs in this process.
pub(crate) async fn metrics(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> impl axum::response::IntoResponse {
    let text = state
        .metrics
        .as_ref()
        .map(|metrics| metrics.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
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
