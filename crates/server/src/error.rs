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
    /// What really went wrong, for the log only (store errors may quote SQL).
    cause: Option<String>,
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
            cause: None,
        }
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
        ApiError {
            cause,
            ..ApiError::new(code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}
