//! Ferry's wire types: the JSON bodies of `shared/PROTOCOL.md` (v1).
//!
//! This crate is the only place where wire types are declared. Field names, outcome names and
//! error codes here are the contract; renaming one is a protocol change, not a refactor.
//!
//! With the `json-schema` feature every type the server reads or answers with also derives
//! `schemars::JsonSchema`: the server's OpenAPI document takes the bodies' schemas from here,
//! so their doc comments are the API's field descriptions too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod billing;
pub mod local;
pub mod worker;

/// Column name to JSON value. BLOBs travel as `{"$blob": "<base64>"}`.
pub type Row = Map<String, Value>;

/// The `User-Agent` prefix Ferry's own device client sends; the server shows the rest as the
/// device's software version.
pub const CLIENT_AGENT_PREFIX: &str = "ferry-client/";

/// One row change on the wire: an upsert, or a tombstone when `deleted` is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RowChange {
    pub table: String,
    /// The primary-key columns and their values.
    pub pk: Row,
    /// Hybrid logical clock stamp `<timestamp>-<4 hex counter>-<node id>`.
    pub version: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Row>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub device_id: String,
    pub schema_hash: String,
    pub changes: Vec<RowChange>,
    /// Dirty rows still waiting on the device after this batch.
    #[serde(default)]
    pub pending: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PushResponse {
    pub results: Vec<PushResult>,
    pub server_time: String,
}

/// The outcome of one pushed change, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PushResult {
    pub table: String,
    pub pk: Row,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored.
    Applied,
    /// Already stored at that version.
    Duplicate,
    /// The server holds a newer version; it comes down on pull.
    Superseded,
    /// Not stored; `code` says why. The row stays dirty on the device.
    Rejected,
}

impl Outcome {
    /// Applied, duplicate and superseded rows are confirmed: the device may clear their dirty flag.
    pub fn is_confirmed(self) -> bool {
        !matches!(self, Outcome::Rejected)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    FkViolation,
    SchemaMismatch,
    UnknownTable,
    InvalidValue,
    ClockSkew,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::FkViolation => "fk_violation",
            RejectCode::SchemaMismatch => "schema_mismatch",
            RejectCode::UnknownTable => "unknown_table",
            RejectCode::InvalidValue => "invalid_value",
            RejectCode::ClockSkew => "clock_skew",
        }
    }
}

/// `GET /api/sync/pull` response. The server may fill `changes` with pre-serialized JSON, so the
/// element type is a parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PullResponse<C = RowChange> {
    pub changes: Vec<C>,
    pub cursor: String,
    pub has_more: bool,
    pub server_time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Health {
    pub status: String,
    pub server_time: String,
    pub version: String,
    pub schema_hash: String,
}

/// `GET /api/sync/health`'s `503` body: the health shape with `status` `"unavailable"`, and the
/// contract's error object beside it, so that this non-2xx body carries `error` like every other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct HealthUnavailable {
    #[serde(flatten)]
    pub health: Health,
    pub error: ErrorDetail,
}

/// `GET /livez` and `GET /readyz` (Ferry's own, for load balancers' probes): `{"status": "ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ProbeStatus {
    pub status: String,
}

/// The data of a `changed` event of `GET /api/sync/stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ChangedEvent {
    /// The cursor a pull reaches once it has the rows committed so far.
    pub cursor: String,
}

/// `GET /api/sync/schema` (a Ferry extension): the server's synced schema as SQLite DDL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SchemaResponse {
    pub schema_hash: String,
    pub ddl: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PairResponse {
    pub device_id: String,
    pub tenant: String,
    pub token: String,
}

/// `POST /api/admin/pairing-codes` response (a Ferry extension; `ferry pair-code` is the CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PairingCode {
    pub code: String,
    pub tenant: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct DevicesResponse {
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct DeviceInfo {
    pub device_id: String,
    pub name: String,
    pub last_seen_at: Option<String>,
    pub last_push_at: Option<String>,
    pub last_pull_at: Option<String>,
    pub pending: u64,
    /// The device's client software version, as it announced itself.
    pub version: Option<String>,
    /// Set when the device's token was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// `GET /api/sync/devices` (a device token), also `GET /local/devices` on the agent: the
/// device's own tenant's devices, as `GET /api/admin/devices` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SyncDevicesResponse {
    pub devices: Vec<SyncDevice>,
}

/// One entry of [`SyncDevicesResponse`]: the admin list's entry and whether it is the device
/// that asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SyncDevice {
    #[serde(flatten)]
    pub device: DeviceInfo,
    pub this_device: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ConflictsResponse {
    pub conflicts: Vec<Conflict>,
}

/// One overwritten (losing) version kept by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Conflict {
    pub id: i64,
    pub table: String,
    pub pk: Row,
    pub winner_version: String,
    pub winner_device: Option<String>,
    pub loser_version: String,
    pub loser_device: Option<String>,
    pub loser_deleted: bool,
    pub loser_data: Option<Row>,
    /// The winning version's values while it is still the row's current version (Ferry's
    /// own addition, for showing both side by side); `null` once a newer write replaced it,
    /// or when the winner deleted the row.
    #[serde(default)]
    pub winner_data: Option<Row>,
    pub recorded_at: String,
}

/// `GET /api/admin/whoami` (any operator token; Ferry's own): whom the token acts for, so a
/// console offers only what the token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct WhoAmI {
    pub tenant: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Whether the token reaches what belongs to the whole deployment (the sync jobs, billing,
    /// `/metrics`): true for the deployment's own tenant.
    pub deployment: bool,
    /// The sync jobs the server runs, its default job first; empty when the token may not see
    /// them.
    pub jobs: Vec<String>,
    /// Whether the server serves the billing API and the token may see it.
    pub billing: bool,
}

/// Every non-2xx response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// An error body; `details` is an object (empty when there is nothing to add).
    pub fn new(code: ErrorCode, message: impl Into<String>, details: Value) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                details,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// An object: more about the error for programs (limits, hashes, the offending index);
    /// empty when there is nothing to add.
    #[serde(default = "no_details")]
    #[cfg_attr(feature = "json-schema", schemars(with = "Map<String, Value>"))]
    pub details: Value,
}

/// The `details` of a body that has none: an empty object, as the contract spells it.
fn no_details() -> Value {
    Value::Object(Map::new())
}

/// The contract's error codes and their HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `400`: malformed JSON, wrong types, missing fields, a bad parameter. Also the code of
    /// `408`, `414` and `431`, statuses the contract's table does not list.
    InvalidRequest,
    /// `400`: a pull's cursor is not one the server handed out.
    InvalidCursor,
    /// `401`: a missing, unknown, revoked or expired token.
    Unauthorized,
    /// `403`: authenticated, but the role or tenant does not allow it.
    Forbidden,
    /// `404`: no route at the path, or no such record (device, run, session, mapping, job).
    NotFound,
    /// `405` (Ferry's own): the path does not take the method.
    MethodNotAllowed,
    /// `409`: the device's schema hash differs from the server's.
    SchemaMismatch,
    /// `413`: a body, or a push's number of changes, over the server's limits.
    PayloadTooLarge,
    /// `422`: a bad or used pairing code.
    InvalidPairingCode,
    /// `429`, with `Retry-After`.
    RateLimited,
    /// `503`: the store cannot be reached, or the server is full (then with `Retry-After`).
    Unavailable,
    /// `500` (Ferry's own): the server failed; the body says no more.
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::InvalidCursor => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::SchemaMismatch => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InvalidPairingCode => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::SchemaMismatch => "schema_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidPairingCode => "invalid_pairing_code",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_change_matches_the_contract_example() {
        let text = r#"{"table": "products", "pk": {"id": "7c9e"},
            "version": "2026-11-21T12:00:00.123Z-0000-dev_4f2a", "deleted": false,
            "data": {"id": "7c9e", "name": "Cola", "price_cents": 250}}"#;
        let change: RowChange = serde_json::from_str(text).unwrap();
        assert_eq!(change.table, "products");
        assert_eq!(change.data.as_ref().unwrap()["price_cents"], 250);
        let back = serde_json::to_value(&change).unwrap();
        assert_eq!(back["pk"]["id"], "7c9e");
    }

    #[test]
    fn tombstone_may_omit_data_and_deleted_defaults_to_false() {
        let t: RowChange =
            serde_json::from_str(r#"{"table":"t","pk":{"id":1},"version":"v","deleted":true}"#)
                .unwrap();
        assert!(t.deleted && t.data.is_none());
        let u: RowChange =
            serde_json::from_str(r#"{"table":"t","pk":{"id":1},"version":"v"}"#).unwrap();
        assert!(!u.deleted);
        assert!(!serde_json::to_string(&t).unwrap().contains("data"));
    }

    #[test]
    fn error_codes_serialize_to_their_contract_names() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidCursor,
            ErrorCode::Unauthorized,
            ErrorCode::PayloadTooLarge,
            ErrorCode::InvalidPairingCode,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert_eq!(ErrorCode::SchemaMismatch.status(), 409);
        assert_eq!(
            serde_json::to_value(RejectCode::FkViolation).unwrap(),
            "fk_violation"
        );
    }
}
