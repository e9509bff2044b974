//! The durable state of server-side sync jobs (the worker runtime of issue "sync worker"):
//! each job's cadence, operators' triggers, runs with their counts and log lines, and what the
//! workers report about their trigger listener.
//!
//! Jobs are server-wide, not per tenant: one billing job serves the whole deployment.
//!
//! Every time here comes from the store's own clock ([`JobStore::clock_ms`]; the database's
//! `now()` on PostgreSQL), so several worker processes and a restarted worker share one
//! timeline. Times cross this interface as milliseconds since the Unix epoch.
//!
//! Single-flight holds in the store, not in a process: at most one run per job is `running`
//! (a unique partial index), a running run carries its worker's heartbeat, and a run whose
//! heartbeat is older than the lease is marked `abandoned` by the next [`JobStore::start_run`]
//! of that job, which then claims the abandoned run's triggers again.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ferry_proto::worker::{ListenerState, SyncRun};

use crate::{Result, StoreError};

/// The channel `pg_notify` wakes workers on.
pub const TRIGGER_CHANNEL: &str = "sync_trigger";

/// A job's stored cadence: the worker's cadence state, column by column. Tiers are the
/// contract's names (`active`, `idle`, `dormant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CadenceRecord {
    pub tier: String,
    /// A demotion in progress: the tier it leads to and how many evaluations in a row asked.
    pub demotion_toward: Option<String>,
    pub demotion_streak: u32,
    /// An operator's pin: its tier and when it ends.
    pub pinned_tier: Option<String>,
    pub pinned_until_ms: Option<i64>,
    /// When the next scheduled run is due; `None` before the first run.
    pub next_run_at_ms: Option<i64>,
}

/// A trigger an operator (or a tool) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRecord {
    pub id: i64,
    pub job: String,
    /// Who asked: `api`, `cli`, or what the caller named.
    pub source: String,
    pub created_at_ms: i64,
}

/// What a worker asks for when it starts a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun<'a> {
    pub job: &'a str,
    /// `schedule`, `manual` or `catchup`.
    pub trigger: &'a str,
    /// The tier the run runs at.
    pub tier: &'a str,
    /// The worker's id, which its heartbeats and its finish must name.
    pub worker: &'a str,
    /// A running run whose heartbeat is older than this is taken to be dead.
    pub lease: Duration,
    /// A run for pending triggers: started only if the job has one (otherwise the answer is
    /// [`StartedRun::NothingPending`] and nothing is written), at the job's pinned tier while
    /// a pin lasts and `active` otherwise; `tier` is ignored. One call, so a notified worker
    /// starts a triggered run in one round trip.
    pub for_triggers: bool,
}

/// The answer of [`JobStore::start_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedRun {
    /// The run is recorded as `running` and owns these triggers (every trigger of the job that
    /// was pending, oldest first).
    Started {
        run_id: i64,
        started_at_ms: i64,
        /// The tier the run is recorded at.
        tier: String,
        triggers: Vec<TriggerRecord>,
        /// Runs of this job found dead (stale heartbeat) and marked `abandoned` first; their
        /// triggers are among `triggers` again.
        abandoned: Vec<i64>,
    },
    /// Another run of the job is live; nothing was written.
    Busy { running: i64 },
    /// A run for triggers was asked for and none is pending; nothing was written.
    NothingPending,
}

/// How a run ended, for [`JobStore::finish_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRun<'a> {
    /// `succeeded`, `failed` or `partial`.
    pub status: &'a str,
    pub counts: &'a BTreeMap<String, i64>,
    pub errors: &'a [String],
    /// The job's cadence after this run, saved in the same transaction.
    pub cadence: &'a CadenceRecord,
}

/// One log line of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    pub message: String,
}

/// Which runs to list, newest first. Every filter that is set must hold; paging with `before`
/// works the same under filters, since the order is the id's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    pub job: Option<String>,
    /// Only runs with this status (`running`, `succeeded`, `failed`, `partial`, `abandoned`).
    pub status: Option<String>,
    /// Only runs started this way (`schedule`, `manual`, `catchup`).
    pub trigger: Option<String>,
    /// Only runs that started at or after this time.
    pub since_ms: Option<i64>,
    /// Only runs that started before this time.
    pub until_ms: Option<i64>,
    /// Only runs with a smaller id (the previous page's last id).
    pub before: Option<i64>,
    pub limit: u32,
}

/// What woke a listener: a stored trigger, as the notification described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wakeup {
    pub trigger_id: i64,
    pub job: String,
    pub source: String,
}

/// A worker's dedicated line for trigger wake-ups: a `LISTEN` connection on PostgreSQL (not
/// from the pool), an in-process channel on SQLite. Wake-ups are hints: a worker drains the
/// stored pending triggers after each one, after every (re)connect and on a safety poll, so a
/// lost notification delays a trigger but never loses it.
#[async_trait]
pub trait TriggerListener: Send {
    /// Waits for the next wake-up. `Err(StoreError::Unavailable)` when the line broke; open a
    /// new listener then.
    async fn next(&mut self) -> Result<Wakeup>;

    /// Checks that the line is alive (a round trip on PostgreSQL).
    async fn ping(&mut self) -> Result<()>;
}

/// Durable job state. Both stores implement it; the worker runtime and the server's sync
/// worker API use nothing else.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// The store's clock, in milliseconds since the Unix epoch.
    async fn clock_ms(&self) -> Result<i64>;

    /// Opens a trigger listener, already listening: a trigger stored after this returns
    /// wakes it.
    async fn listen(&self) -> Result<Box<dyn TriggerListener>>;

    /// The job's cadence; `None` before it was ever saved.
    async fn cadence(&self, job: &str) -> Result<Option<CadenceRecord>>;

    /// Saves the job's cadence (a pin, an unpin, a manual trigger's promotion).
    async fn save_cadence(&self, job: &str, cadence: &CadenceRecord) -> Result<()>;

    /// Stores a trigger and, in the same transaction, wakes the workers (`pg_notify` on
    /// [`TRIGGER_CHANNEL`] on PostgreSQL; an in-process signal on SQLite). A trigger stored
    /// while no worker runs is claimed by the next run of its job.
    async fn create_trigger(&self, job: &str, source: &str) -> Result<TriggerRecord>;

    /// Triggers of the job that no run has claimed yet, oldest first.
    async fn pending_triggers(&self, job: &str) -> Result<Vec<TriggerRecord>>;

    /// How many triggers of the job no run has claimed yet.
    async fn pending_count(&self, job: &str) -> Result<u64>;

    /// Starts a run unless one of the job is live; see [`StartedRun`]. Atomic.
    async fn start_run(&self, run: &NewRun<'_>) -> Result<StartedRun>;

    /// Renews a running run's heartbeat; `false` when the run is no longer this worker's
    /// (it was marked abandoned).
    async fn heartbeat(&self, run_id: i64, worker: &str) -> Result<bool>;

    /// Appends log lines to a run.
    async fn append_log(&self, run_id: i64, lines: &[LogLine]) -> Result<()>;

    /// Records how a run ended and saves the job's cadence, atomically; `false` when the run
    /// was no longer this worker's (nothing is written then).
    async fn finish_run(
        &self,
        run_id: i64,
        worker: &str,
        finished: &FinishedRun<'_>,
    ) -> Result<bool>;

    /// Runs, newest first, without their log lines.
    async fn runs(&self, query: &RunQuery) -> Result<Vec<SyncRun>>;

    /// One run with its log lines.
    async fn run(&self, id: i64) -> Result<Option<SyncRun>>;

    /// The job's running run, if any.
    async fn running(&self, job: &str) -> Result<Option<SyncRun>>;

    /// Deletes finished runs (and their log lines and triggers) that finished before
    /// `before_ms`; returns how many runs went.
    async fn prune_runs(&self, before_ms: i64) -> Result<u64>;

    /// A worker's report on its trigger listener, kept for `GET /api/admin/sync/state`.
    async fn report_listener(&self, worker: &str, state: &ListenerState) -> Result<()>;

    /// The listener state most recently reported by any worker; `None` when none ever did.
    async fn listener(&self) -> Result<Option<ListenerState>>;
}

/// The error recorded on a run found with a stale heartbeat.
pub(crate) const ABANDONED: &str = "the worker stopped sending heartbeats; its triggers run again";

/// A run finishes as one of these; `abandoned` is only for runs found dead.
const FINAL_STATUSES: [&str; 3] = ["succeeded", "failed", "partial"];

pub(crate) fn check_final_status(status: &str) -> Result<()> {
    if FINAL_STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "a run cannot finish as {status:?}; it finishes as one of {FINAL_STATUSES:?}"
        )))
    }
}

/// A run's counts or errors as the JSON text both stores keep.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("a run's counts or errors cannot be JSON: {e}")))
}

pub(crate) fn from_json_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("a run's stored counts or errors: {e}")))
}
