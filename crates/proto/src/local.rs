//! The device-local control API served by the agent on loopback (`/local/*`).

use serde::{Deserialize, Serialize};

/// The device's sync state, as the status pill shows it (contract v1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// The last cycle succeeded.
    Synced,
    /// A cycle is in flight.
    Syncing,
    /// The server could not be reached.
    Offline,
    /// The server answered but the cycle failed or left rows rejected (schema mismatch,
    /// revoked token, rejected rows); `last_error` says which.
    Error,
}

/// `GET /local/status`, also the payload of each `/local/events` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub state: SyncState,
    pub last_synced_at: Option<String>,
    pub last_error: Option<String>,
    pub pending: u64,
    pub next_auto_sync_at: Option<String>,
}

/// What started a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleTrigger {
    /// The automatic cadence.
    Schedule,
    /// "Force sync now".
    Manual,
    /// "Force pull from cloud".
    ForcePull,
}

impl CycleTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleTrigger::Schedule => "schedule",
            CycleTrigger::Manual => "manual",
            CycleTrigger::ForcePull => "force_pull",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Schedule, Self::Manual, Self::ForcePull]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// One cycle's report: the body of `POST /local/sync` and `POST /local/pull`, and an entry of
/// `GET /local/log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleReport {
    pub started_at: String,
    pub trigger: CycleTrigger,
    pub duration_ms: u64,
    pub pushed: u64,
    pub pulled: u64,
    pub rejected: u64,
    pub conflicts: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// `GET /local/log`: the last 20 cycles, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalLog {
    pub cycles: Vec<CycleReport>,
}
