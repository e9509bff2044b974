//! The handlers, by area: `sync` (the device cycle), `devices` (pairing), `admin` (operators).

use axum::http::{Method, Uri};
use ferry_proto::ErrorCode;

use crate::ApiError;

pub(crate) mod admin;
pub(crate) mod devices;
pub(crate) mod sync;

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
