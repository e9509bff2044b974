//! `ApiError`: every non-2xx response, as `{"error": {"code", "message", "details"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_proto::{ErrorBody, ErrorCode};
use ferry_store::StoreError;
use serde_json::Value;

/// An error answered to a client. Its message is for people; `code` is what programs branch
/// on. An internal cause is kept out of the body and handed to the request log instead.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
    /// The HTTP status: the code's own, unless [`ApiError::with_status`] names a status the
    /// contract's table does not list.
    status: StatusCode,
    /// What really went wrong, for the log only (store errors may quote SQL).
    cause: Option<String>,
    /// Seconds for a `Retry-After` header (a `429`, or a `503` of an overloaded server).
    retry_after: Option<u64>,
    /// The kind of store failure behind a `5xx`, for `/metrics`.
    store_failure: Option<&'static str>,
}

const INTERNAL_MESSAGE: &str =
    "The server failed to handle the request; the error has been logged.";

/// Response extension carrying an internal error's cause to the request log (see `observe`):
/// logging happens there, once per request, not when the response is built.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCause(pub(crate) String);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            cause: None,
            retry_after: None,
            store_failure: None,
        }
    }

    /// `429 rate_limited`: try again after `wait` (a `Retry-After` header, whole seconds).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> ApiError {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(seconds.max(1)),
            ..ApiError::new(ErrorCode::RateLimited, message)
        }
        .with_details(serde_json::json!({ "retry_after_seconds": seconds.max(1) }))
    }

    /// `422 invalid_pairing_code`: the code is unknown, used or expired.
    pub fn invalid_pairing_code() -> ApiError {
        ApiError::new(
            ErrorCode::InvalidPairingCode,
            "The pairing code is unknown, already used or expired; ask for a new one.",
        )
    }

    /// `503 unavailable`: the server cannot take the request now; try again after `wait` (a
    /// `Retry-After` header, whole seconds).
    pub fn unavailable(message: impl Into<String>, wait: std::time::Duration) -> ApiError {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(seconds.max(1)),
            ..ApiError::new(ErrorCode::Unavailable, message)
        }
    }

    /// Answers with `status` instead of the code's own: for statuses the contract's table does
    /// not list (`414`, `431`), which keep HTTP's meaning and carry the closest contract code.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// A failure of the server itself: the client reads only that it failed; `cause` goes to
    /// the request log.
    pub(crate) fn internal(cause: impl Into<String>) -> ApiError {
        ApiError {
            cause: Some(cause.into()),
            ..ApiError::new(ErrorCode::Internal, INTERNAL_MESSAGE)
        }
    }

    /// The body of this error as the contract spells it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone(), self.details.clone())
    }

    pub(crate) fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let (code, message) = match &error {
            StoreError::Unavailable(_) => (
                ErrorCode::Unavailable,
                "The store cannot be reached right now; try again shortly.",
            ),
            StoreError::CursorAhead => (
                ErrorCode::InvalidCursor,
                "The cursor is ahead of everything this server has stored (was its data reset?); \
                 pull without `since` to start over.",
            ),
            StoreError::UnknownTenant(_) => (ErrorCode::NotFound, "The tenant does not exist."),
            StoreError::Internal(_) | StoreError::Config(_) => {
                (ErrorCode::Internal, INTERNAL_MESSAGE)
            }
        };
        // Only server-side failures carry their cause to the log; the others are the
        // client's to fix and their message says everything.
        let cause = (code.status() >= 500).then(|| error.to_string());
        let store_failure = match &error {
            StoreError::Unavailable(_) => Some("unavailable"),
            StoreError::Internal(_) | StoreError::Config(_) => Some("internal"),
            StoreError::CursorAhead | StoreError::UnknownTenant(_) => None,
        };
        ApiError {
            cause,
            store_failure,
            ..ApiError::new(code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        if let Some(kind) = self.store_failure {
            response
                .extensions_mut()
                .insert(crate::metrics::StoreFailure(kind));
        }
        response
    }
}
