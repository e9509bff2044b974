//! Bearer-token authentication as extractors: a handler names who may call it in its signature.
//!
//! - [`DeviceAuth`]: a device token (push, pull).
//! - [`SchemaAccess`]: any valid token, or a good pairing code (the schema, before pairing).
//! - [`ReadAccess`]: an operator token of any role (viewer and up), for its own tenant's data.
//! - [`AdminAccess`]: an operator token with the admin role, for its own tenant's devices.
//! - [`DeploymentReader`], [`DeploymentOperator`]: an operator token of the deployment's own
//!   tenant ([`DEFAULT_TENANT`]), viewer and up or operator and up, for what belongs to the
//!   whole deployment rather than to one tenant: the sync jobs, the billing ledger and
//!   `/metrics`. Another tenant's operators, admins included, get `403 forbidden`.
//!
//! A device request also checks the device in: its `last_seen_at`, and its client version from
//! a `User-Agent: ferry-client/<version>` header.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use ferry_proto::CLIENT_AGENT_PREFIX;
use ferry_store::{DEFAULT_TENANT, DeviceKey, Principal, Role};

use crate::{ApiError, AppState};

/// A device token's device. Operator tokens get `403 forbidden`.
pub(crate) struct DeviceAuth(pub(crate) DeviceKey);

/// Any valid token, or a pairing code that is still good (header [`PAIRING_CODE_HEADER`]),
/// which it does not spend.
pub(crate) struct SchemaAccess;

/// The header a device about to pair sends its pairing code in.
pub(crate) const PAIRING_CODE_HEADER: &str = "x-ferry-pairing-code";

/// An operator token of any role; the tenant it may read.
pub(crate) struct ReadAccess {
    pub(crate) tenant: String,
    pub(crate) role: Role,
}

/// An operator token of the deployment's own tenant, any role: it may read the sync jobs'
/// state and runs, the billing ledger and `/metrics`.
pub(crate) struct DeploymentReader;

/// An operator token of the deployment's own tenant with the operator role or above: it may
/// trigger and pin sync jobs and change the billing ledger.
pub(crate) struct DeploymentOperator;

/// An operator token with the admin role; the tenant it may manage.
pub(crate) struct AdminAccess {
    pub(crate) tenant: String,
}

impl FromRequestParts<AppState> for SchemaAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(code) = parts.headers.get(PAIRING_CODE_HEADER) else {
            return authenticate(parts, state).await.map(|_| SchemaAccess);
        };
        let client = crate::limits::client_of(parts);
        state.failures.check(client, "pairings")?;
        let code = code.to_str().unwrap_or_default();
        match state.store.pairing_code_tenant(code).await? {
            Some(_) => Ok(SchemaAccess),
            None => {
                state.failures.note(client);
                Err(ApiError::invalid_pairing_code())
            }
        }
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
        let principal = authenticate(parts, state).await?;
        let role = match &principal {
            Principal::Operator { role, .. } => *role,
            Principal::Device(_) => Role::Viewer,
        };
        let tenant = require_role(principal, Role::Viewer)?;
        Ok(ReadAccess { tenant, role })
    }
}

impl FromRequestParts<AppState> for DeploymentReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require_deployment(authenticate(parts, state).await?, Role::Viewer)?;
        Ok(DeploymentReader)
    }
}

impl FromRequestParts<AppState> for DeploymentOperator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require_deployment(authenticate(parts, state).await?, Role::Operator)?;
        Ok(DeploymentOperator)
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

/// An operator of the deployment's own tenant whose role is at least `minimum`. Sync jobs
/// and the billing ledger serve the whole deployment, so no other tenant's operator may see
/// or steer them, whatever its role in its own tenant.
fn require_deployment(principal: Principal, minimum: Role) -> Result<(), ApiError> {
    let tenant = require_role(principal, minimum)?;
    if tenant != DEFAULT_TENANT {
        return Err(ApiError::forbidden(format!(
            "Sync jobs, billing and metrics belong to the whole deployment: only operator \
             tokens of the {DEFAULT_TENANT:?} tenant may use them, and this token is of tenant \
             {tenant:?}."
        )));
    }
    Ok(())
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
    bearer_of(&parts.headers).ok_or_else(|| {
        ApiError::unauthorized("This endpoint needs an `Authorization: Bearer <token>` header.")
    })
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub(crate) fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The version Ferry's device client announces in its `User-Agent`; other agents have none.
fn client_version(parts: &Parts) -> Option<&str> {
    let agent = parts.headers.get(USER_AGENT)?.to_str().ok()?;
    let rest = agent.strip_prefix(CLIENT_AGENT_PREFIX)?;
    let version = rest.split_whitespace().next()?;
    (!version.is_empty() && version.len() <= 64).then_some(version)
}
