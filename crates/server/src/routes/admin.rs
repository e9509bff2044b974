//! The operators' API: pairing codes, devices and the conflict log of their tenant.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ferry_proto::{ConflictsResponse, DevicesResponse, PairingCode, Row};
use ferry_store::ConflictQuery;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{AdminAccess, ReadAccess};
use crate::{ApiError, AppState};

const DEFAULT_CONFLICTS: u32 = 100;
const MAX_CONFLICTS: u32 = 1000;

/// `POST /api/admin/pairing-codes` (admin; extension): a new one-time code for the tenant,
/// valid for the configured time. The request body, if any, is ignored.
pub(crate) async fn create_pairing_code(
    State(state): State<AppState>,
    admin: AdminAccess,
) -> Result<(StatusCode, Json<PairingCode>), ApiError> {
    let code = state
        .store
        .create_pairing_code(&admin.tenant, state.config.pairing_code_ttl)
        .await?;
    Ok((StatusCode::CREATED, Json(code)))
}

/// `GET /api/admin/devices` (any operator role): the tenant's devices, revoked ones included.
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    reader: ReadAccess,
) -> Result<Json<DevicesResponse>, ApiError> {
    let devices = state.store.list_devices(&reader.tenant).await?;
    Ok(Json(DevicesResponse { devices }))
}

/// `DELETE /api/admin/devices/{device_id}` (admin): revokes the device's token. `204`.
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    admin: AdminAccess,
    device_id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let device_id = super::path_text(device_id)?;
    if !state.store.revoke_device(&admin.tenant, &device_id).await? {
        return Err(ApiError::not_found(format!(
            "There is no device {device_id}."
        )));
    }
    tracing::info!(%device_id, tenant = %admin.tenant, "A device was revoked.");
    Ok(StatusCode::NO_CONTENT)
}

/// The query of the conflict log. Values are read as text and checked by the handler.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct ConflictParams {
    /// Only this table's conflicts.
    table: Option<String>,
    /// Only this row's (needs `table`): its key as a JSON object like the wire's `pk`
    /// (`{"id":"abc"}`), or for a one-column key the bare value (`abc`).
    pk: Option<String>,
    /// How many: 100 when absent, at most 1000.
    #[schemars(with = "Option<u32>", range(min = 1))]
    limit: Option<String>,
}

/// `GET /api/admin/conflicts?table=&pk=&limit=` (any operator role): newest first.
///
/// `pk` needs `table` and is either the row's key as a JSON object, like the wire's `pk`
/// (`{"id":"abc"}`, or several columns for a composite key), or, for a single-column key,
/// the bare value (`abc`).
pub(crate) async fn conflicts(
    State(state): State<AppState>,
    reader: ReadAccess,
    params: Result<Query<ConflictParams>, QueryRejection>,
) -> Result<Json<ConflictsResponse>, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::invalid_request(format!("The query string is invalid: {e}.")))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_CONFLICTS,
        Some(text) => match text.parse::<u32>() {
            Ok(limit) if limit > 0 => limit.min(MAX_CONFLICTS),
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_CONFLICTS}; got {text:?}."
                )));
            }
        },
    };
    let pk_key = match (&params.table, &params.pk) {
        (_, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::invalid_request("`pk` needs `table` too."));
        }
        (Some(table), Some(pk)) => Some(key_text(&state, table, pk)?),
    };
    let query = ConflictQuery {
        table: params.table,
        pk_key,
        limit,
    };
    let conflicts = state.store.conflicts(&reader.tenant, query).await?;
    Ok(Json(ConflictsResponse { conflicts }))
}

/// The canonical key text of a `pk` query parameter.
fn key_text(state: &AppState, table_name: &str, pk: &str) -> Result<String, ApiError> {
    let table = state.config.schema.table(table_name).ok_or_else(|| {
        ApiError::invalid_request(format!("Table {table_name} is not in the server's schema."))
    })?;
    let pk_row: Row = match serde_json::from_str::<Value>(pk) {
        Ok(Value::Object(object)) => object,
        // A bare value names the row of a single-column key.
        _ => match table.primary_key.as_slice() {
            [column] => Row::from_iter([(column.clone(), Value::String(pk.to_owned()))]),
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "Table {table_name} has a composite key; give `pk` as a JSON object."
                )));
            }
        },
    };
    table
        .key_of(&pk_row)
        .map_err(|e| ApiError::invalid_request(format!("`pk` does not name a row: {e}.")))
}
