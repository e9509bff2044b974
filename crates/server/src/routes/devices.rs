//! Pairing (a one-time code becomes a device and its token) and the devices list a device
//! may read.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_proto::{PairRequest, PairResponse, SyncDevice, SyncDevicesResponse};

use crate::auth::DeviceAuth;
use crate::limits::ClientAddress;
use crate::{ApiError, AppState, body};

/// Longest accepted device name; names are shown in the console, not used as identifiers.
const MAX_NAME_LEN: usize = 200;

/// `POST /api/devices/pair` (no auth): `201` with the device's id, tenant and token.
///
/// A client that keeps presenting bad codes is held back (`429`) before the store is asked
/// again.
pub(crate) async fn pair(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    body: Body,
) -> Result<(StatusCode, Json<PairResponse>), ApiError> {
    state.failures.check(client, "pairings")?;
    let request: PairRequest = body::read_json(body, state.config.body_limit_bytes).await?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::invalid_request(format!(
            "`name` must be 1 to {MAX_NAME_LEN} characters."
        )));
    }
    // Names and platforms are shown to people; a control character (a NUL byte among them,
    // which PostgreSQL cannot store) is never meant.
    let platform = request.platform.as_deref().map(str::trim);
    for (field, text) in [("name", Some(name)), ("platform", platform)] {
        if text.is_some_and(|t| t.chars().any(char::is_control)) {
            return Err(ApiError::invalid_request(format!(
                "`{field}` may not contain control characters."
            )));
        }
    }
    if platform.is_some_and(|p| p.chars().count() > MAX_NAME_LEN) {
        return Err(ApiError::invalid_request(format!(
            "`platform` must be at most {MAX_NAME_LEN} characters."
        )));
    }
    let paired = state
        .store
        .redeem_pairing_code(&request.code, name, platform)
        .await?
        .ok_or_else(|| {
            state.failures.note(client);
            ApiError::invalid_pairing_code()
        })?;
    tracing::info!(device_id = %paired.device_id, tenant = %paired.tenant, "A device paired.");
    Ok((StatusCode::CREATED, Json(paired)))
}

/// `DELETE /api/sync/device` (a device token): the device gives up its identity, as a file
/// paired again (`ferry agent pair --force`) does with its old one: `204`, and its token stops
/// working. The device stays in the list, revoked, as an admin's revocation leaves it.
pub(crate) async fn revoke_self(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .revoke_device(&device.tenant, &device.device_id)
        .await?;
    tracing::info!(device_id = %device.device_id, tenant = %device.tenant, "A device gave up its identity.");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/sync/devices` (a device token): the device's own tenant's devices, as the admin
/// list has them, each marked whether it is the device that asks. What a device's own Devices
/// panel shows; the list holds no token and nothing of another tenant.
pub(crate) async fn list(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
) -> Result<Json<SyncDevicesResponse>, ApiError> {
    let devices = state.store.list_devices(&device.tenant).await?;
    let devices = devices
        .into_iter()
        .map(|info| SyncDevice {
            this_device: info.device_id == device.device_id,
            device: info,
        })
        .collect();
    Ok(Json(SyncDevicesResponse { devices }))
}
