//! Bearer-token authentication as extractors: a handler names who may call it in its signature.
//!
//! - [`DeviceAuth`]: a device token (push, pull).
//! - [`AnyAuth`]: any valid token (schema).
//! - [`ReadAccess`]: an operator token of any role (viewer and up).
//! - [`OperatorAccess`]: an operator token with the operator or admin role (trigger, pin).
//! - [`AdminAccess`]: an operator token with the admin role.
//!
//! A device request also checks the device in: its `last_seen_at`, and its client version from
//! a `User-Agent: ferry-client/<version>` header.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use ferry_proto::CLIENT_AGENT_PREFIX;
use ferry_store::{DeviceKey, Principal, Role};

use crate::{ApiError, AppState};

/// A device token's device. Operator tokens get `403 forbidden`.
pub(crate) struct DeviceAuth(pub(crate) DeviceKey);

/// Any valid token.
pub(crate) struct AnyAuth;

/// An operator token of any role; the tenant it may read.
pub(crate) struct ReadAccess {
    pub(crate) tenant: String,
}

/// An operator token with the operator role or above: it may trigger and pin sync jobs.
pub(crate) struct OperatorAccess;

/// An operator token with the admin role; the tenant it may manage.
pub(crate) struct AdminAccess {
    pub(crate) tenant: String,
}

impl FromRequestParts<AppState> for AnyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).await.map(|_| AnyAuth)
    }
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match authenticate(parts, state).await? {
            Principal::Device(device) => Ok(DeviceAuth(device)),
            Principal::Operator { .. } => Err(ApiError::forbidden(
                "This endpoint is for devices; operator tokens cannot push or pull.",
            )),
        }
    }
}

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = require_role(authenticate(parts, state).await?, Role::Viewer)?;
        Ok(ReadAccess { tenant })
    }
}

impl FromRequestParts<AppState> for OperatorAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require_role(authenticate(parts, state).await?, Role::Operator)?;
        Ok(OperatorAccess)
    }
}

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = require_role(authenticate(parts, state).await?, Role::Admin)?;
        Ok(AdminAccess { tenant })
    }
}

/// The operator's tenant when its role is at least `minimum`.
fn require_role(principal: Principal, minimum: Role) -> Result<String, ApiError> {
    match principal {
        Principal::Operator { tenant, role } if role >= minimum => Ok(tenant),
        Principal::Operator { role, .. } => Err(ApiError::forbidden(format!(
            "This needs the {} role; the token has the {} role.",
            minimum.as_str(),
            role.as_str()
        ))),
        Principal::Device(_) => Err(ApiError::forbidden(
            "Device tokens cannot use the admin API; use an operator token.",
        )),
    }
}

/// The token's principal. A client address that keeps presenting unknown tokens is answered
/// `429` instead of `401` for a while; a valid token always passes, so the devices behind one
/// proxy address are never locked out by another's revoked token.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = bearer_token(parts)?;
    let principal = state
        .store
        .authenticate_and_check_in(token, client_version(parts))
        .await?;
    match principal {
        Some(principal) => Ok(principal),
        None => {
            let client = crate::limits::client_of(parts);
            state.failures.check(client, "authentications")?;
            state.failures.note(client);
            Err(ApiError::unauthorized(
                "The token is unknown, revoked or expired.",
            ))
        }
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let missing =
        || ApiError::unauthorized("This endpoint needs an `Authorization: Bearer <token>` header.");
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// The version Ferry's device client announces in its `User-Agent`; other agents have none.
fn client_version(parts: &Parts) -> Option<&str> {
    let agent = parts.headers.get(USER_AGENT)?.to_str().ok()?;
    let rest = agent.strip_prefix(CLIENT_AGENT_PREFIX)?;
    let version = rest.split_whitespace().next()?;
    (!version.is_empty() && version.len() <= 64).then_some(version)
}
