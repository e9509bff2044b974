//! The sync worker API of `shared/PROTOCOL.md`: triggers, runs, state and pins of server-side
//! sync jobs.
//!
//! Tiers (`active`, `idle`, `dormant`), triggers (`schedule`, `manual`, `catchup`) and run
//! statuses (`running`, `succeeded`, `failed`, `partial`, and Ferry's `abandoned` for a run whose
//! worker died) travel as the contract's strings; the worker crate owns their meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The message `POST /api/admin/sync/trigger` answers with.
pub const TRIGGER_ACCEPTED: &str = "Sync trigger notification sent to worker";

/// `POST /api/admin/sync/trigger` body; the body itself is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The job to run; the server's default job when absent.
    #[serde(default)]
    pub job: Option<String>,
}

/// `202` answer of `POST /api/admin/sync/trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct TriggerResponse {
    pub message: String,
    pub trigger_id: i64,
    pub job: String,
}

/// `POST /api/admin/sync/pin` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    #[serde(default)]
    pub job: Option<String>,
    pub tier: String,
    /// How long the pin lasts; fractions are allowed.
    pub hours: f64,
}

/// `GET /api/admin/sync/state` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SyncState {
    pub job: String,
    /// The tier the job runs at now (a pin's tier while it lasts).
    pub tier: String,
    pub interval_seconds: u64,
    pub next_run_at: Option<String>,
    pub pinned_until: Option<String>,
    pub in_flight: bool,
    pub pending_triggers: u64,
    pub last_run: Option<SyncRun>,
    pub listener: ListenerState,
}

/// The worker's LISTEN connection, as last reported by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct ListenerState {
    pub connected: bool,
    pub last_ping_at: Option<String>,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct SyncRun {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub tier: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub counts: BTreeMap<String, i64>,
    pub errors: Vec<String>,
    /// The run's log lines; only in `GET /api/admin/sync/runs/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<RunLogLine>>,
    /// The events a billing run delivered or rejected; only in `GET /api/admin/sync/runs/{id}`
    /// of a billing run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<crate::billing::Event>>,
}

/// One log line of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct RunLogLine {
    pub at: String,
    pub level: String,
    pub message: String,
}

/// `GET /api/admin/sync/runs` answer, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct RunsResponse {
    pub runs: Vec<SyncRun>,
}
