//! Request logging: one span per request with its method, path, status and latency.

use std::time::Duration;

use axum::http::{Request, Response};
use tracing::Span;
use tracing::field::Empty;

use crate::error::ErrorCause;
use crate::limits::Overloaded;

/// The span every request runs in; `status` and `latency_ms` are filled in by [`on_response`].
pub(crate) fn request_span<B>(request: &Request<B>) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        status = Empty,
        latency_ms = Empty,
    )
}

/// Records the outcome on the request's span, and logs internal failures with their cause
/// (which `ApiError` keeps out of the response body).
pub(crate) fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    match response.extensions().get::<ErrorCause>() {
        Some(ErrorCause(cause)) => {
            tracing::error!(error = %cause, "The request failed inside the server.");
        }
        None if response.extensions().get::<Overloaded>().is_some() => {
            tracing::warn!("The server turned the request away: too many requests at once.");
        }
        None if status >= 500 => tracing::error!("The request failed inside the server."),
        None => tracing::debug!("Answered the request."),
    }
}
