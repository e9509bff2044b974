//! The billing API of `shared/PROTOCOL.md` (v1.1): tag mappings, the session ledger, its events
//! and review actions of the `billing` job (StEvE → Lago).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tag's mapping to a Lago customer (and, optionally, one of its subscriptions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Mapping {
    pub id_tag: String,
    pub external_customer_id: String,
    pub external_subscription_id: Option<String>,
    pub updated_at: String,
}

/// `GET /api/admin/billing/mappings` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct MappingsResponse {
    pub mappings: Vec<Mapping>,
}

/// `PUT /api/admin/billing/mappings/{id_tag}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PutMapping {
    pub external_customer_id: String,
    /// `null` (or absent): the customer's subscription active at the session's stop time.
    #[serde(default)]
    pub external_subscription_id: Option<String>,
}

/// `POST /api/admin/billing/mappings` (Ferry's own) as JSON: many mappings at once, all or
/// none. (The same import may be sent as CSV instead.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportMappings {
    pub mappings: Vec<ImportMapping>,
}

/// One mapping of an [`ImportMappings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportMapping {
    pub id_tag: String,
    pub external_customer_id: String,
    /// `null` (or absent): the customer's subscription active at the session's stop time.
    #[serde(default)]
    pub external_subscription_id: Option<String>,
}

/// `POST /api/admin/billing/mappings` answer: how many mappings the import saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ImportResponse {
    pub imported: u64,
}

/// One charging session (a StEvE transaction) as the billing ledger knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Session {
    pub steve_transaction_id: i64,
    pub charge_box_id: String,
    pub connector_id: i64,
    pub id_tag: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    /// Meter values in Wh as StEvE reported them (decimals kept); `null` when StEvE had none.
    pub start_wh: Option<f64>,
    pub stop_wh: Option<f64>,
    /// Energy in events that Lago accepted, in Wh.
    pub billed_wh: i64,
    /// `active`, `billed`, `parked`, `needs_review` or `ignored`.
    pub state: String,
    /// Why the session is parked, needs review or was ignored (or what it waits for).
    pub reason: Option<String>,
    pub events: Vec<Event>,
}

/// `GET /api/admin/billing/sessions` answer, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SessionsResponse {
    pub sessions: Vec<Session>,
}

/// One usage event in Ferry's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Event {
    pub transaction_id: String,
    pub external_subscription_id: String,
    pub code: String,
    pub timestamp: String,
    pub properties: Map<String, Value>,
    /// The energy the event carries, in Wh (negative for a correction downwards).
    pub wh: i64,
    /// `pending`, `delivered` or `rejected`.
    pub status: String,
    /// Lago's answer for a rejected event; the last failed attempt for a pending one.
    pub error: Option<String>,
    /// The run that delivered (or rejected) the event; `null` while pending.
    pub run_id: Option<i64>,
}

/// `POST /api/admin/billing/sessions/{id}/review` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// `bill` or `ignore`.
    pub action: String,
}
