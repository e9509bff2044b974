//! The server-side worker runtime: durable, single-flight runs of [`SyncJob`]s on an adaptive
//! cadence, woken at once by stored triggers.
//!
//! Each job's execution is owned by one [`Runner`], the loop the device agent runs on too. A run
//! of that loop is a *pass*: one look at the job's stored state (pending triggers, another
//! worker's run that may be dead, the schedule) that starts at most one sync run and reports
//! how long to wait before the next pass ([`Cadence::AsReported`]): at once after a sync run,
//! else until the schedule is due, never longer than the safety poll. Every trigger source is
//! a message to the loop: its timer carries the schedule, the start-up catch-up and the safety
//! poll, and the trigger listener (`LISTEN sync_trigger` on PostgreSQL, an in-process channel
//! on SQLite) sends a wake-up; wake-ups that wait together coalesce into one pass. A pass reads
//! the job's pending triggers and cadence from the store before deciding, so a notification
//! that was lost, or sent while no worker ran, still runs its trigger: wake-ups are hints,
//! stored triggers are the truth.
//!
//! Single-flight across processes is the store's: [`JobStore::start_run`] records a `running`
//! run only if the job has no live one, and claims every pending trigger at that moment. A
//! trigger stored during a run stays pending, so any number of them lead to exactly one
//! follow-up run. A run's heartbeat renews its lease; a worker killed mid-run leaves a stale
//! heartbeat, and the next start of that job marks the run abandoned and runs its triggers
//! again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_proto::worker::ListenerState;
use ferry_store::StoreError;
use ferry_store::jobs::{
    CadenceRecord, FinishedRun, JobStore, LogLine as StoredLine, NewRun, StartedRun,
};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Level};

use crate::cadence::{CadenceState, NextRun, PendingDemotion, Tier, TierIntervals, TierPin};
use crate::job::{RunContext, RunTrigger, SyncJob, run_contained};
use crate::metrics::Metrics;
use crate::{Cadence, Job, Runner, Trigger};

/// How the worker runs; [`Default`] follows the contract (15 min / 1 h / weekly tiers).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This worker's name in the store; runs and heartbeats carry it.
    pub worker_id: String,
    pub intervals: TierIntervals,
    /// A running run whose heartbeat is older than this is taken to be dead.
    pub lease: Duration,
    /// How often a running run renews its lease and stores its new log lines.
    pub heartbeat: Duration,
    /// The longest a job loop waits between passes, in case a wake-up was lost.
    pub safety_poll: Duration,
    /// How often the listener's connection is checked.
    pub listener_ping: Duration,
    /// Backoff between listener reconnects: doubles from the first value up to the second.
    pub reconnect_backoff: (Duration, Duration),
    /// Finished runs older than this are deleted.
    pub retention: Duration,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions {
            worker_id: default_worker_id(),
            intervals: TierIntervals::default(),
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            safety_poll: Duration::from_secs(30),
            listener_ping: Duration::from_secs(10),
            reconnect_backoff: (Duration::from_millis(250), Duration::from_secs(30)),
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `worker-<pid>-<nanoseconds>`: unique enough to tell processes apart in the run history.
fn default_worker_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("worker-{}-{nanos:08x}", std::process::id())
}

/// A running worker: its jobs' loops (one [`Runner`] each), the trigger listener and the
/// retention pruner.
pub struct Worker {
    metrics: Arc<Metrics>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Worker {
    /// Starts the worker's tasks on the current runtime. They stop when `shutdown` is
    /// cancelled; a run in progress finishes first (jobs see `shutdown` in their context).
    pub fn spawn(
        store: Arc<dyn JobStore>,
        jobs: Vec<Arc<dyn SyncJob>>,
        options: WorkerOptions,
        shutdown: CancellationToken,
    ) -> Worker {
        let options = Arc::new(options);
        let metrics = Arc::new(Metrics::default());
        let mut tasks = JoinSet::new();
        let mut loops = HashMap::new();
        for job in jobs {
            let name = job.name().to_owned();
            let flight = Arc::new(Flight::default());
            let job_loop = JobLoop {
                job,
                store: store.clone(),
                options: options.clone(),
                metrics: metrics.clone(),
                flight: flight.clone(),
                starting: AtomicBool::new(true),
                shutdown: shutdown.clone(),
            };
            let (runner, run_loop) =
                Runner::new(Arc::new(job_loop), Cadence::AsReported, shutdown.clone());
            // The span names the job in what the loop itself logs (a pass that panicked).
            tasks.spawn(run_loop.instrument(tracing::info_span!("job_loop", job = %name)));
            loops.insert(name, (runner, flight));
        }
        let listener = ListenerTask {
            store: store.clone(),
            options: options.clone(),
            metrics: metrics.clone(),
            loops,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(listener.run());
        tasks.spawn(prune(store, options, shutdown.clone()));
        Worker {
            metrics,
            tasks,
            shutdown,
        }
    }

    /// The worker's metrics, for `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops the worker and waits for its tasks (and any run in progress) to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the worker's tasks end (after `shutdown` is cancelled).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Per job: its loop, and what its sync runs are doing.
type Loops = HashMap<String, (Runner<JobLoop>, Arc<Flight>)>;

/// What the listener knows about a job's sync runs, to log coalescing honestly.
#[derive(Debug, Default)]
struct Flight {
    running: AtomicBool,
    follow_up: AtomicBool,
}

/// Backoff after a store error (or a panic) in a pass: the store is likely down; the listener
/// reconnecting wakes the loop early anyway.
const STORE_RETRY: Duration = Duration::from_secs(2);

/// One job's passes, run by its [`Runner`]. A request is a wake-up, `()`: "look at the store".
struct JobLoop {
    job: Arc<dyn SyncJob>,
    store: Arc<dyn JobStore>,
    options: Arc<WorkerOptions>,
    metrics: Arc<Metrics>,
    flight: Arc<Flight>,
    /// True until a pass first reads the job's schedule: only that reading can find a run that
    /// fell due while no worker ran, which then runs once as a catch-up.
    starting: AtomicBool,
    shutdown: CancellationToken,
}

impl Job for JobLoop {
    type Request = ();
    /// How long to wait before the next pass; zero is at once.
    type Output = Duration;

    fn scheduled(&self) {}

    /// One pass; the timer and a wake-up ask for the same look at the store.
    fn run(&self, (): (), _: Trigger) -> Pin<Box<dyn Future<Output = Duration> + Send + '_>> {
        Box::pin(self.pass())
    }

    /// A panic in store code (the sync run's own is recorded as a failed run): the loop has
    /// logged it and looks again after the store retry's backoff. A run it left `running`
    /// stops heartbeating and is taken over once its lease lapses.
    fn panicked(&self, (): (), _: Trigger, _message: String) -> Duration {
        STORE_RETRY
    }

    fn next_due(&self, wait: &Duration) -> Option<Duration> {
        Some((*wait).min(self.options.safety_poll))
    }
}

/// What a pass does after finding no pending trigger.
enum Step {
    /// A scheduled or catch-up run.
    Run(RunTrigger),
    /// Another worker's run is recorded as running and is older than the lease: if that worker
    /// died, a start marks the run abandoned and runs it again, as what it was.
    TakeOver {
        trigger: RunTrigger,
        tier: Tier,
    },
    Wait(Duration),
}

impl JobLoop {
    /// One look at the store: pending triggers first, in one call that starts their run if
    /// there are any; else another worker's run that may be dead, then the schedule. Returns
    /// how long to wait before the next pass.
    async fn pass(&self) -> Duration {
        match self.run_triggered().await {
            Ok(Some(ran)) => self.wait_after(Ok(ran)),
            Ok(None) => match self.next_step().await {
                Ok(Step::Run(trigger)) => self.wait_after(self.run_scheduled(trigger).await),
                Ok(Step::TakeOver { trigger, tier }) => {
                    self.wait_after(self.run_as(trigger, tier).await)
                }
                Ok(Step::Wait(wait)) => wait,
                Err(error) => {
                    tracing::warn!(job = self.job.name(), %error, "Cannot read the job's state; retrying.");
                    STORE_RETRY
                }
            },
            Err(error) => self.wait_after(Err(error)),
        }
    }

    /// How long to wait after trying to start a run: not at all after a run, whose end changes
    /// what is due. After finding another worker's run live, until its lease could lapse (it
    /// claims what is pending when it ends, unless its worker dies).
    fn wait_after(&self, started: Result<bool, StoreError>) -> Duration {
        match started {
            Ok(true) => Duration::ZERO,
            Ok(false) => self.options.lease,
            Err(error) => {
                tracing::warn!(job = self.job.name(), %error, "A sync run could not be recorded; retrying.");
                STORE_RETRY
            }
        }
    }

    /// A run for the job's pending triggers, started in one store call (a trigger's latency
    /// to its run is mostly round trips): `Ok(None)` when none is pending, else whether a run
    /// happened (`false`: another worker's run is live).
    async fn run_triggered(&self) -> Result<Option<bool>, StoreError> {
        let name = self.job.name();
        let started = self
            .store
            .start_run(&NewRun {
                job: name,
                trigger: RunTrigger::Manual.as_str(),
                tier: Tier::Active.as_str(),
                worker: &self.options.worker_id,
                lease: self.options.lease,
                for_triggers: true,
            })
            .await?;
        if started == StartedRun::NothingPending {
            self.metrics.set_pending(name, 0);
            return Ok(None);
        }
        if let StartedRun::Busy { .. } = started {
            // Off the trigger's path: what waits, for `/metrics`.
            let pending = self.store.pending_count(name).await?;
            self.metrics.set_pending(name, pending);
        }
        self.perform(RunTrigger::Manual, started).await.map(Some)
    }

    /// Another worker's run that may be dead; then the schedule (at start-up, an overdue run
    /// is one catch-up). Pending triggers were looked at just before.
    async fn next_step(&self) -> Result<Step, StoreError> {
        let name = self.job.name();
        let now = self.store.clock_ms().await?;
        // Not this loop's own run, since it runs one at a time (unless a pass panicked while
        // its run was live; then it is as dead as another's). Only a start can tell whether
        // its worker died (its heartbeat is stale), and nothing else would start one: its
        // triggers are claimed and the schedule may be far off. A run younger than the lease
        // cannot be stale yet.
        if let Some(running) = self.store.running(name).await? {
            let lease = i64::try_from(self.options.lease.as_millis()).unwrap_or(i64::MAX);
            let age = ferry_core::time::parse_ms(&running.started_at).map_or(lease, |at| now - at);
            if age < lease {
                let left = u64::try_from(lease - age).unwrap_or(0);
                return Ok(Step::Wait(Duration::from_millis(left)));
            }
            return Ok(Step::TakeOver {
                trigger: RunTrigger::parse(&running.trigger).unwrap_or(RunTrigger::Schedule),
                tier: Tier::parse(&running.tier).unwrap_or(Tier::Active),
            });
        }
        let cadence = self.cadence().await?;
        let next = if self.starting.swap(false, Ordering::SeqCst) {
            cadence.next_run_at_startup(now)
        } else {
            cadence.next_run(now)
        };
        Ok(match next {
            NextRun::Now(trigger) => Step::Run(trigger),
            NextRun::After(wait) => Step::Wait(wait),
        })
    }

    async fn cadence(&self) -> Result<CadenceState, StoreError> {
        Ok(match self.store.cadence(self.job.name()).await? {
            Some(record) => from_record(&record),
            None => CadenceState::new(),
        })
    }

    /// A scheduled (or catch-up) run at the job's effective tier.
    async fn run_scheduled(&self, trigger: RunTrigger) -> Result<bool, StoreError> {
        let now = self.store.clock_ms().await?;
        let tier = self.cadence().await?.effective_tier(now);
        self.run_as(trigger, tier).await
    }

    /// A run with this trigger at this tier, recorded from start to end; `Ok(false)` when
    /// another run of the job is live.
    async fn run_as(&self, trigger: RunTrigger, tier: Tier) -> Result<bool, StoreError> {
        let started = self
            .store
            .start_run(&NewRun {
                job: self.job.name(),
                trigger: trigger.as_str(),
                tier: tier.as_str(),
                worker: &self.options.worker_id,
                lease: self.options.lease,
                for_triggers: false,
            })
            .await?;
        self.perform(trigger, started).await
    }

    /// A manual trigger makes the job active; saved beside the run's start, not before it,
    /// and awaited before the run's end reads the cadence again.
    fn promote(&self, now_ms: i64) -> JoinHandle<Result<(), StoreError>> {
        let (store, name, intervals) = (
            self.store.clone(),
            self.job.name().to_owned(),
            self.options.intervals,
        );
        tokio::spawn(async move {
            let cadence = match store.cadence(&name).await? {
                Some(record) => from_record(&record),
                None => CadenceState::new(),
            };
            let promoted = cadence.after_manual_trigger(now_ms, &intervals);
            store.save_cadence(&name, &to_record(&promoted)).await
        })
    }

    /// Waits for a manual trigger's promotion to be saved.
    async fn promoted(&self, promotion: Option<JoinHandle<Result<(), StoreError>>>) {
        let Some(promotion) = promotion else { return };
        match promotion.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(job = self.job.name(), %error, "The manual trigger's promotion to the active tier was not saved.")
            }
            Err(error) => {
                tracing::warn!(job = self.job.name(), %error, "Saving the promotion failed.")
            }
        }
    }

    /// Performs a started run and records its end; `Ok(false)` when the job was busy.
    async fn perform(&self, trigger: RunTrigger, started: StartedRun) -> Result<bool, StoreError> {
        let name = self.job.name();
        let intervals = &self.options.intervals;
        let (run_id, started_at_ms, tier, triggers) = match started {
            StartedRun::NothingPending => return Ok(true),
            StartedRun::Busy { running } => {
                tracing::info!(
                    job = name,
                    running,
                    "Sync already in progress in another worker, skipping..."
                );
                return Ok(false);
            }
            StartedRun::Started {
                run_id,
                started_at_ms,
                tier,
                triggers,
                abandoned,
            } => {
                for dead in abandoned {
                    tracing::warn!(
                        job = name,
                        run_id = dead,
                        "A run's worker stopped sending heartbeats; the run is marked abandoned and its triggers run again."
                    );
                }
                (run_id, started_at_ms, tier, triggers)
            }
        };
        let tier = Tier::parse(&tier).unwrap_or(Tier::Active);
        let promotion = (trigger == RunTrigger::Manual).then(|| self.promote(started_at_ms));
        for claimed in &triggers {
            let latency = u64::try_from(started_at_ms - claimed.created_at_ms).unwrap_or(0);
            self.metrics
                .trigger_started(name, Duration::from_millis(latency));
        }
        self.metrics.set_pending(name, 0);
        self.flight.running.store(true, Ordering::SeqCst);
        tracing::info!(
            job = name,
            run_id,
            trigger = trigger.as_str(),
            tier = tier.as_str(),
            triggers = triggers.len(),
            "Sync started."
        );

        let ctx = RunContext::new(run_id, trigger, tier, self.shutdown.clone());
        let heartbeat = self.spawn_heartbeat(run_id, started_at_ms, ctx.clone());
        let outcome = run_contained(self.job.clone(), ctx.clone()).await;
        heartbeat.cancel();
        let elapsed = ctx.elapsed();
        let summary = outcome.summary(elapsed);
        let level = match outcome.status.as_str() {
            "succeeded" => Level::INFO,
            _ => Level::WARN,
        };
        ctx.log(level, summary);
        self.flight.running.store(false, Ordering::SeqCst);
        self.flight.follow_up.store(false, Ordering::SeqCst);

        self.promoted(promotion).await;
        store_lines(&*self.store, run_id, started_at_ms, &ctx).await;
        let finished_at = self.store.clock_ms().await?;
        // Read again: an operator may have pinned or unpinned during the run.
        let cadence = self
            .cadence()
            .await?
            .after_run(outcome.activity, finished_at, intervals);
        let kept = self
            .store
            .finish_run(
                run_id,
                &self.options.worker_id,
                &FinishedRun {
                    status: outcome.status.as_str(),
                    counts: &outcome.counts,
                    errors: &outcome.errors,
                    cadence: &to_record(&cadence),
                },
            )
            .await?;
        if !kept {
            tracing::warn!(
                job = name,
                run_id,
                "The run outlived its lease and was marked abandoned; its result was not recorded and its triggers run again."
            );
        }
        self.metrics
            .run_finished(name, outcome.status.as_str(), elapsed);
        Ok(true)
    }

    /// Renews the run's lease and stores its new log lines every heartbeat, until cancelled.
    fn spawn_heartbeat(
        &self,
        run_id: i64,
        started_at_ms: i64,
        ctx: RunContext,
    ) -> CancellationToken {
        let stop = CancellationToken::new();
        let (store, worker, every) = (
            self.store.clone(),
            self.options.worker_id.clone(),
            self.options.heartbeat,
        );
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match store.heartbeat(run_id, &worker).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(run_id, "The run lost its lease to another worker.")
                    }
                    Err(error) => {
                        tracing::warn!(run_id, %error, "A heartbeat could not be stored.")
                    }
                }
                store_lines(&*store, run_id, started_at_ms, &ctx).await;
            }
        });
        stop
    }
}

/// Moves the context's new log lines into the store, stamped from the run's start.
async fn store_lines(store: &dyn JobStore, run_id: i64, started_at_ms: i64, ctx: &RunContext) {
    let lines: Vec<StoredLine> = ctx
        .take_lines()
        .into_iter()
        .map(|line| StoredLine {
            at_ms: started_at_ms + i64::try_from(line.elapsed.as_millis()).unwrap_or(0),
            level: line.level.as_str().to_ascii_lowercase(),
            message: line.text,
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    if let Err(error) = store.append_log(run_id, &lines).await {
        tracing::warn!(run_id, %error, lines = lines.len(), "A run's log lines could not be stored.");
    }
}

/// The trigger listener: holds the wake-up line, reconnects with backoff, pings it, and wakes
/// every job loop after each (re)connect so triggers stored meanwhile are drained.
struct ListenerTask {
    store: Arc<dyn JobStore>,
    options: Arc<WorkerOptions>,
    metrics: Arc<Metrics>,
    loops: Loops,
    shutdown: CancellationToken,
}

impl ListenerTask {
    async fn run(self) {
        let (first, most) = self.options.reconnect_backoff;
        let mut backoff = first;
        let mut connected_before = false;
        while !self.shutdown.is_cancelled() {
            match self.store.listen().await {
                Ok(mut listener) => {
                    self.metrics.listener_connected(connected_before);
                    if connected_before {
                        tracing::info!("The trigger listener reconnected.");
                    }
                    connected_before = true;
                    backoff = first;
                    self.report(true).await;
                    // Listening first, then draining: nothing stored from here on is missed.
                    self.wake_all();
                    self.listen(listener.as_mut()).await;
                    self.metrics.listener_lost();
                    self.report(false).await;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "Cannot open the trigger listener.");
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(most);
        }
    }

    /// Serves one connection until it breaks or the worker stops.
    async fn listen(&self, listener: &mut dyn ferry_store::jobs::TriggerListener) {
        let mut pings = tokio::time::interval(self.options.listener_ping);
        pings.tick().await;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                wakeup = listener.next() => match wakeup {
                    Ok(wakeup) => {
                        tracing::info!(job = %wakeup.job, trigger_id = wakeup.trigger_id, "Received sync trigger notification from {}", wakeup.source);
                        self.wake(&wakeup.job);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "The trigger listener lost its connection.");
                        return;
                    }
                },
                _ = pings.tick() => {
                    let ping = tokio::time::timeout(self.options.listener_ping, listener.ping()).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        tracing::warn!("The trigger listener's connection stopped answering.");
                        return;
                    }
                    self.report(true).await;
                }
            }
        }
    }

    fn wake(&self, job: &str) {
        let Some((runner, flight)) = self.loops.get(job) else {
            tracing::warn!(job, "A trigger names a job this worker does not run.");
            return;
        };
        if flight.running.load(Ordering::SeqCst) {
            if flight.follow_up.swap(true, Ordering::SeqCst) {
                tracing::info!(job, "Sync already in progress, skipping...");
            } else {
                tracing::info!(job, "Sync in progress; one follow-up run is queued.");
            }
        }
        // Wake-ups that wait together make one pass. The loop refuses only once it has stopped.
        let _ = runner.trigger(());
    }

    fn wake_all(&self) {
        for (runner, _) in self.loops.values() {
            let _ = runner.trigger(());
        }
    }

    async fn report(&self, connected: bool) {
        let last_ping_at = match self.store.clock_ms().await {
            Ok(now) => Some(ferry_core::time::format_ms(now)),
            Err(_) => None,
        };
        let state = ListenerState {
            connected,
            last_ping_at,
        };
        if let Err(error) = self
            .store
            .report_listener(&self.options.worker_id, &state)
            .await
        {
            tracing::debug!(%error, "The listener state could not be stored.");
        }
    }
}

/// Deletes runs past the retention period, hourly.
async fn prune(store: Arc<dyn JobStore>, options: Arc<WorkerOptions>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let retention = i64::try_from(options.retention.as_millis()).unwrap_or(i64::MAX);
        let pruned = match store.clock_ms().await {
            Ok(now) => store.prune_runs(now.saturating_sub(retention)).await,
            Err(error) => Err(error),
        };
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "Deleted runs past the retention period."),
            Err(error) => tracing::warn!(%error, "Old runs could not be deleted."),
        }
    }
}

/// The stored form of a cadence.
pub fn to_record(state: &CadenceState) -> CadenceRecord {
    CadenceRecord {
        tier: state.tier.as_str().to_owned(),
        demotion_toward: state.pending_demotion.map(|d| d.toward.as_str().to_owned()),
        demotion_streak: state.pending_demotion.map_or(0, |d| d.streak),
        pinned_tier: state.pin.map(|p| p.tier.as_str().to_owned()),
        pinned_until_ms: state.pin.map(|p| p.until_ms),
        next_run_at_ms: state.next_run_at_ms,
    }
}

/// A stored cadence; a tier name this build does not know reads as `active`, the safe side.
pub fn from_record(record: &CadenceRecord) -> CadenceState {
    let tier = |name: &str| Tier::parse(name).unwrap_or(Tier::Active);
    CadenceState {
        tier: tier(&record.tier),
        pending_demotion: record
            .demotion_toward
            .as_deref()
            .map(|toward| PendingDemotion {
                toward: tier(toward),
                streak: record.demotion_streak,
            }),
        pin: match (&record.pinned_tier, record.pinned_until_ms) {
            (Some(pinned), Some(until_ms)) => Some(TierPin {
                tier: tier(pinned),
                until_ms,
            }),
            _ => None,
        },
        next_run_at_ms: record.next_run_at_ms,
    }
}

#[cfg(test)]
mod tests;
