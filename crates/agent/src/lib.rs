//! The device agent: Ferry's client on a cadence, driven by the run loop of `ferry-worker`, and
//! the device-local control API (`/local/*`) that an app's Cloud Sync panel and status pill read.
//!
//! Every cycle, automatic or forced, is a request to the one loop, so cycles never overlap: a
//! "sync now" that arrives during a cycle waits for the next cycle, which starts after it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_client::{Client, Progress};
use ferry_proto::local::{CycleReport, CycleTrigger, LocalStatus, SyncState};
use ferry_worker::{Cadence, Job, RunEvent, Runner, Trigger};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod http;

pub use http::router;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Time between the end of one automatic cycle and the start of the next.
    pub interval: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            interval: Duration::from_secs(30),
        }
    }
}

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
        });
        let job = CycleJob {
            client: Arc::clone(&client),
            shared: Arc::clone(&shared),
            progress: progress.unwrap_or_else(|| Arc::new(|_| {})),
        };
        let cadence = Cadence::Every(options.interval);
        let (runner, task) = Runner::spawn(Arc::new(job), cadence, shutdown);
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
        let state = if loop_state.running || last.is_none() {
            SyncState::Syncing
        } else {
            state_after(last.as_ref(), last_synced_at.as_deref())
        };
        Ok(LocalStatus {
            state,
            last_synced_at,
            last_error: last.and_then(|r| r.error),
            pending,
            next_auto_sync_at: loop_state.next_scheduled.map(wall_clock),
        })
    }

    /// The last `limit` cycles, newest first.
    pub async fn log(&self, limit: usize) -> ferry_client::Result<Vec<CycleReport>> {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || client.log(limit))
            .await
            .expect("log query does not panic")
    }

    /// A receiver that changes whenever the status may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }
}

/// The state a finished cycle leaves: `synced` when it completed its push and pull (even if the
/// server rejected some rows, which `last_error` then names), `offline` when it did not.
pub fn state_after(last: Option<&CycleReport>, last_synced_at: Option<&str>) -> SyncState {
    match last {
        Some(report) if report.ok => SyncState::Synced,
        // The client advances `last_synced_at` whenever push and pull complete.
        Some(report) if last_synced_at.is_some_and(|at| at >= report.started_at.as_str()) => {
            SyncState::Synced
        }
        _ => SyncState::Offline,
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
            let progress: &(dyn Fn(Progress) + Send + Sync) = &*self.progress;
            match work {
                Work::Sync => self.client.sync(cycle_trigger(trigger), progress).await,
                Work::ForcePull => self.client.force_pull(progress).await,
            }
        })
    }

    fn panicked(&self, work: Work, trigger: Trigger, message: String) -> CycleReport {
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
            error: Some(format!("the cycle failed unexpectedly: {message}")),
        }
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

fn cycle_trigger(trigger: Trigger) -> CycleTrigger {
    match trigger {
        Trigger::Schedule => CycleTrigger::Schedule,
        Trigger::Manual => CycleTrigger::Manual,
    }
}
