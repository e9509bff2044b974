//! The device agent: Ferry's client on a cadence, driven by the run loop of `ferry-worker`, and
//! the device-local control API (`/local/*`) that an app's Cloud Sync panel and status pill read.
//!
//! Every cycle, automatic or forced, is a request to the one loop, so cycles never overlap: a
//! "sync now" that arrives during a cycle waits for the next cycle, which starts after it.
//!
//! The status (`GET /local/status`) is `syncing` while a cycle runs; otherwise [`Settled`] reads
//! it from the newest cycle report: `synced`, `offline` (the server could not be reached) or
//! `error` (the server answered but the cycle failed or left rows rejected). `ferry agent
//! status` reads the same report from the cycle log with the same function, so the two agree.
//!
//! `GET /local/events` sends the status whenever a cycle starts or ends, and whenever the
//! pending count changes between cycles: the app's writes reach the file through its own
//! connection, which tells the agent nothing, so each events stream counts the dirty rows
//! once a second (one indexed count per synced table) and sends the status when the count
//! differs from the one it last sent. Nothing is polled while no stream is open.
//!
//! Beside the cadence, the agent follows the server's change stream (`GET /api/sync/stream`):
//! when another device's rows commit, the next cycle starts at once, so a sale rung up on the
//! till shows on the tablet within moments rather than at the next tick.
//!
//! `GET /local/devices` asks the server for the tenant's devices each time (the list lives
//! there). `GET /` is the Cloud Sync panel and `GET /pill` the header pill, pages embedded in
//! the binary that use only the API above (`panel`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_client::{Client, Progress};
use ferry_proto::SyncDevicesResponse;
use ferry_proto::local::{CycleReport, CycleTrigger, LocalStatus, SyncState};
use ferry_worker::{Cadence, Job, RunEvent, Runner, Trigger};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod http;
mod panel;

pub use http::router;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Time between the end of one automatic cycle and the start of the next.
    pub interval: Duration,
    /// Whether to follow the server's change stream and sync as soon as other devices'
    /// rows commit, rather than only every `interval`.
    pub follow_changes: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            interval: Duration::from_secs(30),
            follow_changes: true,
        }
    }
}

/// The first wait before opening the change stream again after it failed; it doubles up to
/// [`STREAM_RETRY_MAX`], and starts over once an event arrives.
const STREAM_RETRY_FIRST: Duration = Duration::from_secs(1);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(60);

/// What a cycle is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Health, push, pull, stamp.
    Sync,
    /// Pull only, with the cloud authoritative.
    ForcePull,
}

/// A callback that sees a cycle's progress (rows pushed or pulled so far).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A running agent. Cheap to clone; every clone talks to the same loop.
#[derive(Clone)]
pub struct Agent {
    runner: Runner<CycleJob>,
    client: Arc<Client>,
    shared: Arc<Shared>,
}

/// What the loop publishes for status readers.
struct Shared {
    last: Mutex<Option<CycleReport>>,
    /// Bumped on every change of status; `/local/events` listens to it.
    changes: watch::Sender<u64>,
    /// Whether the server's change stream is open.
    streaming: watch::Sender<bool>,
    /// Why the agent stopped by itself: the file was paired again under it.
    replaced: Mutex<Option<String>>,
    /// Stops the agent (the loop, the stream, and a caller's server on the same token).
    stop: CancellationToken,
}

impl Shared {
    /// Stops the agent when the file was paired again as another device since it started
    /// (`ferry agent pair --force`): its own identity is revoked, and the new one is the new
    /// agent's to run. Returns whether it stopped.
    fn stop_if_replaced(&self, client: &Client) -> bool {
        let Ok(Some(now)) = client.replaced_by() else {
            return false;
        };
        let why = format!(
            "the database was paired again (it is now {now}, not {}); this agent stops: start \
             it again to sync as the new device",
            client.device_id()
        );
        tracing::error!("{why}");
        *self.replaced.lock().expect("status lock") = Some(why);
        self.stop.cancel();
        true
    }
}

impl Agent {
    /// Starts the loop on the current runtime; it stops when `shutdown` is cancelled.
    pub fn start(
        client: Client,
        options: AgentOptions,
        progress: Option<ProgressFn>,
        shutdown: CancellationToken,
    ) -> (Agent, tokio::task::JoinHandle<()>) {
        let client = Arc::new(client);
        let last = client.log(1).ok().and_then(|mut cycles| cycles.pop());
        let shared = Arc::new(Shared {
            last: Mutex::new(last),
            changes: watch::channel(0).0,
            streaming: watch::channel(false).0,
            replaced: Mutex::new(None),
            stop: shutdown.clone(),
        });
        let job = CycleJob {
            client: Arc::clone(&client),
            shared: Arc::clone(&shared),
            progress: progress.unwrap_or_else(|| Arc::new(|_| {})),
        };
        let cadence = Cadence::Every(options.interval);
        let (runner, task) = Runner::spawn(Arc::new(job), cadence, shutdown.clone());
        if options.follow_changes {
            let follow = Follow {
                client: Arc::clone(&client),
                runner: runner.clone(),
                shared: Arc::clone(&shared),
            };
            tokio::spawn(follow.run(shutdown));
        }
        (
            Agent {
                runner,
                client,
                shared,
            },
            task,
        )
    }

    /// Runs a full cycle out of band; if one is running, waits for one that starts after this
    /// call. `None` when the agent has stopped.
    pub async fn sync_now(&self) -> Option<CycleReport> {
        self.runner.run_now(Work::Sync).await.ok()
    }

    /// Pulls only, cloud authoritative ("Force pull from cloud").
    pub async fn force_pull(&self) -> Option<CycleReport> {
        self.runner.run_now(Work::ForcePull).await.ok()
    }

    /// The status for the header pill. Reads the pending count from the database.
    pub async fn status(&self) -> ferry_client::Result<LocalStatus> {
        let client = Arc::clone(&self.client);
        let (pending, last_synced_at) = tokio::task::spawn_blocking(move || {
            Ok::<_, ferry_client::Error>((client.pending()?, client.last_synced_at()?))
        })
        .await
        .expect("status query does not panic")?;
        let loop_state = self.runner.state();
        let last = self.shared.last.lock().expect("status lock").clone();
        let settled = Settled::after(last.as_ref());
        // Before the first cycle has a report, the loop is about to start it.
        let state = if loop_state.running || last.is_none() {
            SyncState::Syncing
        } else {
            settled.state
        };
        Ok(LocalStatus {
            state,
            last_synced_at,
            last_error: settled.last_error,
            pending,
            next_auto_sync_at: loop_state.next_scheduled.map(wall_clock),
        })
    }

    /// Changes waiting to be pushed (dirty rows and tombstones), read from the database.
    pub async fn pending(&self) -> ferry_client::Result<u64> {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || client.pending())
            .await
            .expect("pending query does not panic")
    }

    /// The last `limit` cycles, newest first.
    pub async fn log(&self, limit: usize) -> ferry_client::Result<Vec<CycleReport>> {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || client.log(limit))
            .await
            .expect("log query does not panic")
    }

    /// The tenant's devices as the server lists them, this one marked (the Devices panel).
    /// Asks the server, beside any cycle; fails with an offline error when it cannot be
    /// reached.
    pub async fn devices(&self) -> ferry_client::Result<SyncDevicesResponse> {
        self.client.devices().await
    }

    /// A receiver that changes whenever the status may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Why the agent stopped by itself, if it did: the file was paired again as another
    /// device while it ran.
    pub fn replaced(&self) -> Option<String> {
        self.shared.replaced.lock().expect("status lock").clone()
    }

    /// Whether the server's change stream is open: while it is, another device's commit
    /// starts a cycle at once.
    pub fn change_stream(&self) -> watch::Receiver<bool> {
        self.shared.streaming.subscribe()
    }
}

/// The state the newest cycle report leaves, and what `last_error` says about it. Read from the
/// report alone, so a report read back from the cycle log (`ferry agent status`, which runs
/// without an agent) gives what the agent says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub state: SyncState,
    pub last_error: Option<String>,
}

impl Settled {
    /// `synced` when the cycle succeeded; `offline` when the server could not be reached (no
    /// connection, a timeout, a failed health check, a `5xx`); `error` when the server answered
    /// but the cycle failed (a schema mismatch, a refused token, any other refusal) or left rows
    /// rejected, which the report's error names. No report yet: `offline`, never synced.
    pub fn after(last: Option<&CycleReport>) -> Settled {
        let Some(report) = last else {
            return Settled {
                state: SyncState::Offline,
                last_error: None,
            };
        };
        let state = if ferry_client::is_offline_error(report) {
            SyncState::Offline
        } else if !report.ok || report.rejected > 0 {
            SyncState::Error
        } else {
            SyncState::Synced
        };
        let last_error = match &report.error {
            Some(error) => Some(error.clone()),
            // A report always names its rejections today; should one not, the count still
            // says why the state is `error`.
            None if report.rejected > 0 => Some(format!(
                "The server rejected {} row(s), which stay dirty.",
                report.rejected
            )),
            None => None,
        };
        Settled { state, last_error }
    }
}

/// Follows the server's change stream (`GET /api/sync/stream`): a cursor the device has not
/// pulled to brings the next cycle forward, as a scheduled cycle. The stream is a hint: while
/// it is down (the server is unreachable, restarting, or refuses the token) the cadence goes
/// on, and it is opened again after a wait that doubles from [`STREAM_RETRY_FIRST`] to
/// [`STREAM_RETRY_MAX`]; once it is open again, a cycle catches up with what committed
/// meanwhile. A server without the stream (`404`, older than contract v1.1) is not asked
/// again.
struct Follow {
    client: Arc<Client>,
    runner: Runner<CycleJob>,
    shared: Arc<Shared>,
}

impl Follow {
    async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.follow() => {}
        }
        self.shared.streaming.send_replace(false);
    }

    /// Follows until the agent stops or the server turns out to have no stream.
    async fn follow(&self) {
        let mut retry = STREAM_RETRY_FIRST;
        // The agent's first cycle starts with it; only a stream opened again needs one.
        let mut catch_up = false;
        loop {
            match self.client.changes().await {
                Ok(mut stream) => {
                    self.shared.streaming.send_replace(true);
                    if catch_up && self.runner.run_early(Work::Sync).is_err() {
                        return;
                    }
                    loop {
                        match stream.next().await {
                            Ok(Some(cursor)) => {
                                retry = STREAM_RETRY_FIRST;
                                if !self.has_pulled(cursor).await
                                    && self.runner.run_early(Work::Sync).is_err()
                                {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(error) => {
                                tracing::debug!(%error, "The change stream broke; the cadence goes on.");
                                break;
                            }
                        }
                    }
                    self.shared.streaming.send_replace(false);
                    // A revocation ends the stream: the file may have been paired again.
                    if self.shared.stop_if_replaced(&self.client) {
                        return;
                    }
                }
                Err(ferry_client::Error::Server { status: 404, .. }) => {
                    tracing::info!(
                        "The server has no change stream; the device syncs on its cadence only."
                    );
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "The change stream cannot be opened; the cadence goes on.");
                }
            }
            catch_up = true;
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(STREAM_RETRY_MAX);
        }
    }

    /// Whether the device's pulls reached `cursor`; when that cannot be read, it has not.
    async fn has_pulled(&self, cursor: String) -> bool {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || client.has_pulled(&cursor))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }
}

/// Converts a loop instant to an RFC 3339 wall-clock time.
fn wall_clock(at: tokio::time::Instant) -> String {
    let now = SystemTime::now();
    let wall = match at.checked_duration_since(tokio::time::Instant::now()) {
        Some(ahead) => now + ahead,
        None => now,
    };
    ferry_core::time::format_ms(ferry_core::time::ms_of(wall))
}

struct CycleJob {
    client: Arc<Client>,
    shared: Arc<Shared>,
    progress: ProgressFn,
}

impl Job for CycleJob {
    type Request = Work;
    type Output = CycleReport;

    fn scheduled(&self) -> Work {
        Work::Sync
    }

    fn run(
        &self,
        work: Work,
        trigger: Trigger,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = CycleReport> + Send + '_>> {
        Box::pin(async move {
            if self.shared.stop_if_replaced(&self.client) {
                let why = self.shared.replaced.lock().expect("status lock").clone();
                return failed(work, trigger, why.unwrap_or_default());
            }
            let progress: &(dyn Fn(Progress) + Send + Sync) = &*self.progress;
            match work {
                Work::Sync => self.client.sync(cycle_trigger(trigger), progress).await,
                Work::ForcePull => self.client.force_pull(progress).await,
            }
        })
    }

    fn panicked(&self, work: Work, trigger: Trigger, message: String) -> CycleReport {
        failed(
            work,
            trigger,
            format!("the cycle failed unexpectedly: {message}"),
        )
    }

    fn observe(&self, event: RunEvent<'_, Self>) {
        match event {
            RunEvent::Started { .. } => {}
            RunEvent::Finished { output, .. } => {
                *self.shared.last.lock().expect("status lock") = Some(output.clone());
            }
        }
        self.shared.changes.send_modify(|n| *n += 1);
    }
}

/// The report of a cycle that did not get to run, for `error`.
fn failed(work: Work, trigger: Trigger, error: String) -> CycleReport {
    CycleReport {
        started_at: ferry_core::time::now(),
        trigger: match work {
            Work::Sync => cycle_trigger(trigger),
            Work::ForcePull => CycleTrigger::ForcePull,
        },
        duration_ms: 0,
        pushed: 0,
        pulled: 0,
        rejected: 0,
        conflicts: 0,
        ok: false,
        error: Some(error),
    }
}

fn cycle_trigger(trigger: Trigger) -> CycleTrigger {
    match trigger {
        Trigger::Schedule => CycleTrigger::Schedule,
        Trigger::Manual => CycleTrigger::Manual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: bool, rejected: u64, error: Option<&str>) -> CycleReport {
        CycleReport {
            started_at: "2026-11-21T12:00:00.000Z".into(),
            trigger: CycleTrigger::Schedule,
            duration_ms: 5,
            pushed: 0,
            pulled: 0,
            rejected,
            conflicts: 0,
            ok,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn the_newest_report_decides_the_state() {
        let offline = format!(
            "{}the server cannot be reached.",
            ferry_client::OFFLINE_PREFIX
        );
        for (report, state) in [
            (report(true, 0, None), SyncState::Synced),
            (report(false, 0, Some(&offline)), SyncState::Offline),
            (
                report(false, 2, Some("The server rejected 2 row(s) (first: ...).")),
                SyncState::Error,
            ),
            (
                report(
                    false,
                    0,
                    Some("The device's schema hash a differs from the server's b."),
                ),
                SyncState::Error,
            ),
            (
                report(false, 0, Some("The server refused the device's token.")),
                SyncState::Error,
            ),
            // Rejections make it an error even should a report call itself ok.
            (report(true, 1, None), SyncState::Error),
        ] {
            let settled = Settled::after(Some(&report));
            assert_eq!(settled.state, state, "{report:?}");
            assert_eq!(settled.last_error.is_some(), state != SyncState::Synced);
        }
        assert_eq!(Settled::after(None).state, SyncState::Offline);
    }
}
