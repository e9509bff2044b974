//! The runtime's timing under `tokio::time::pause`: a store kept in memory whose clock is
//! tokio's, so hours of cadence pass in milliseconds. The real stores' semantics are tested
//! against SQLite and PostgreSQL in `crates/store/tests/jobs`; this fake only has to be
//! faithful enough for timing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_proto::worker::{ListenerState, SyncRun};
use ferry_store::jobs::{
    CadenceRecord, FinishedRun, JobStore, LogLine as StoredLine, NewRun, RunQuery, StartedRun,
    TriggerListener, TriggerRecord, Wakeup,
};
use ferry_store::{Result, StoreError};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::time::Instant;

use super::*;
use crate::job::RunOutcome;

const MINUTE: i64 = 60_000;
/// The fake clock's reading when the test starts.
const T0: i64 = 1_800_000_000_000;

#[derive(Default)]
struct Memory {
    cadence: HashMap<String, CadenceRecord>,
    triggers: Vec<(TriggerRecord, Option<i64>)>,
    /// Run id to (job, worker, running).
    runs: Vec<(String, String, bool)>,
    /// How many starts for pending triggers were asked for: one per pass of a job loop.
    trigger_starts: usize,
    /// The next read of a cadence panics, as a bug in store code would.
    panic_on_cadence_read: bool,
}

struct MemStore {
    start: Instant,
    memory: Mutex<Memory>,
    wakeups: broadcast::Sender<Wakeup>,
}

impl MemStore {
    fn new() -> Arc<MemStore> {
        Arc::new(MemStore {
            start: Instant::now(),
            memory: Mutex::default(),
            wakeups: broadcast::channel(64).0,
        })
    }

    fn now(&self) -> i64 {
        T0 + i64::try_from(self.start.elapsed().as_millis()).unwrap_or(0)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap()
    }
}

struct MemListener(broadcast::Receiver<Wakeup>);

#[async_trait]
impl TriggerListener for MemListener {
    async fn next(&mut self) -> Result<Wakeup> {
        loop {
            match self.0.recv().await {
                Ok(wakeup) => return Ok(wakeup),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable("closed".into()));
                }
            }
        }
    }

    async fn ping(&mut self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl JobStore for MemStore {
    async fn clock_ms(&self) -> Result<i64> {
        Ok(self.now())
    }

    async fn listen(&self) -> Result<Box<dyn TriggerListener>> {
        Ok(Box::new(MemListener(self.wakeups.subscribe())))
    }

    async fn cadence(&self, job: &str) -> Result<Option<CadenceRecord>> {
        // The guard is let go before the panic, which would poison it.
        if std::mem::take(&mut self.memory().panic_on_cadence_read) {
            panic!("the store asked to panic");
        }
        Ok(self.memory().cadence.get(job).cloned())
    }

    async fn save_cadence(&self, job: &str, cadence: &CadenceRecord) -> Result<()> {
        self.memory()
            .cadence
            .insert(job.to_owned(), cadence.clone());
        Ok(())
    }

    async fn create_trigger(&self, job: &str, source: &str) -> Result<TriggerRecord> {
        let mut memory = self.memory();
        let trigger = TriggerRecord {
            id: memory.triggers.len() as i64 + 1,
            job: job.to_owned(),
            source: source.to_owned(),
            created_at_ms: self.now(),
        };
        memory.triggers.push((trigger.clone(), None));
        let _ = self.wakeups.send(Wakeup {
            trigger_id: trigger.id,
            job: job.to_owned(),
            source: source.to_owned(),
        });
        Ok(trigger)
    }

    async fn pending_count(&self, job: &str) -> Result<u64> {
        Ok(self.pending_triggers(job).await?.len() as u64)
    }

    async fn pending_triggers(&self, job: &str) -> Result<Vec<TriggerRecord>> {
        Ok(self
            .memory()
            .triggers
            .iter()
            .filter(|(t, run)| t.job == job && run.is_none())
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn start_run(&self, run: &NewRun<'_>) -> Result<StartedRun> {
        let mut memory = self.memory();
        let pending = memory
            .triggers
            .iter()
            .any(|(t, claimed)| t.job == run.job && claimed.is_none());
        let mut tier = run.tier.to_owned();
        if run.for_triggers {
            memory.trigger_starts += 1;
            if !pending {
                return Ok(StartedRun::NothingPending);
            }
            let now = self.now();
            tier = match memory.cadence.get(run.job) {
                Some(CadenceRecord {
                    pinned_tier: Some(pinned),
                    pinned_until_ms: Some(until),
                    ..
                }) if *until > now => pinned.clone(),
                _ => "active".to_owned(),
            };
        }
        if let Some(running) = memory.runs.iter().position(|(j, _, r)| j == run.job && *r) {
            return Ok(StartedRun::Busy {
                running: running as i64 + 1,
            });
        }
        memory
            .runs
            .push((run.job.to_owned(), run.worker.to_owned(), true));
        let run_id = memory.runs.len() as i64;
        let mut triggers = Vec::new();
        for (trigger, claimed) in &mut memory.triggers {
            if trigger.job == run.job && claimed.is_none() {
                *claimed = Some(run_id);
                triggers.push(trigger.clone());
            }
        }
        Ok(StartedRun::Started {
            run_id,
            started_at_ms: self.now(),
            tier,
            triggers,
            abandoned: Vec::new(),
        })
    }

    async fn heartbeat(&self, _run_id: i64, _worker: &str) -> Result<bool> {
        Ok(true)
    }

    async fn append_log(&self, _run_id: i64, _lines: &[StoredLine]) -> Result<()> {
        Ok(())
    }

    async fn finish_run(
        &self,
        run_id: i64,
        _worker: &str,
        finished: &FinishedRun<'_>,
    ) -> Result<bool> {
        let mut memory = self.memory();
        let job = memory.runs[run_id as usize - 1].0.clone();
        memory.runs[run_id as usize - 1].2 = false;
        memory.cadence.insert(job, finished.cadence.clone());
        Ok(true)
    }

    async fn runs(&self, _query: &RunQuery) -> Result<Vec<SyncRun>> {
        Ok(Vec::new())
    }

    async fn run(&self, _id: i64) -> Result<Option<SyncRun>> {
        Ok(None)
    }

    async fn running(&self, _job: &str) -> Result<Option<SyncRun>> {
        Ok(None)
    }

    async fn prune_runs(&self, _before_ms: i64) -> Result<u64> {
        Ok(0)
    }

    async fn report_listener(&self, _worker: &str, _state: &ListenerState) -> Result<()> {
        Ok(())
    }

    async fn listener(&self) -> Result<Option<ListenerState>> {
        Ok(None)
    }
}

/// A job that reports the next scripted activity (the last one forever after) and records
/// when and why each run started.
struct Scripted {
    store: Arc<MemStore>,
    activities: Mutex<VecDeque<Tier>>,
    seen: Mutex<Vec<(RunTrigger, Tier, i64)>>,
    ran: Notify,
    /// If set, runs wait at this gate until the test opens it with a permit.
    gate: Option<Semaphore>,
}

impl Scripted {
    fn new(store: &Arc<MemStore>, activities: &[Tier]) -> Arc<Scripted> {
        Scripted::with_gate(store, activities, None)
    }

    /// Like [`Scripted::new`], with runs that wait until [`Scripted::open`] is called.
    fn gated(store: &Arc<MemStore>, activities: &[Tier]) -> Arc<Scripted> {
        Scripted::with_gate(store, activities, Some(Semaphore::new(0)))
    }

    fn with_gate(
        store: &Arc<MemStore>,
        activities: &[Tier],
        gate: Option<Semaphore>,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            store: store.clone(),
            activities: Mutex::new(activities.iter().copied().collect()),
            seen: Mutex::default(),
            ran: Notify::new(),
            gate,
        })
    }

    fn open(&self) {
        self.gate.as_ref().unwrap().add_permits(1);
    }

    /// Waits until `n` runs have started; returns (trigger, tier, minutes after T0) of each.
    async fn runs(&self, n: usize) -> Vec<(RunTrigger, Tier, i64)> {
        loop {
            let ran = self.ran.notified();
            let seen = self.seen.lock().unwrap().clone();
            if seen.len() >= n {
                return seen
                    .into_iter()
                    .map(|(trigger, tier, at)| (trigger, tier, (at - T0) / MINUTE))
                    .collect();
            }
            ran.await;
        }
    }
}

impl SyncJob for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunContext,
    ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> {
        Box::pin(async move {
            let activity = {
                let mut activities = self.activities.lock().unwrap();
                match activities.len() {
                    0 => Tier::Active,
                    1 => activities[0],
                    _ => activities.pop_front().unwrap_or(Tier::Active),
                }
            };
            self.seen
                .lock()
                .unwrap()
                .push((ctx.trigger(), ctx.tier(), self.store.now()));
            self.ran.notify_waiters();
            if let Some(gate) = &self.gate {
                // A permit taken is given back: once open, the gate stays open.
                let _ = gate.acquire().await;
            }
            RunOutcome::succeeded(activity)
        })
    }
}

fn start(store: &Arc<MemStore>, job: &Arc<Scripted>) -> Worker {
    start_with(store, job, WorkerOptions::default())
}

fn start_with(store: &Arc<MemStore>, job: &Arc<Scripted>, options: WorkerOptions) -> Worker {
    Worker::spawn(
        store.clone(),
        vec![job.clone()],
        options,
        CancellationToken::new(),
    )
}

#[tokio::test(start_paused = true)]
async fn the_cadence_follows_reported_activity_on_the_store_clock() {
    let store = MemStore::new();
    // Quiet from the first run on: idle twice, then dormant for good.
    let job = Scripted::new(&store, &[Tier::Idle, Tier::Idle, Tier::Dormant]);
    let worker = start(&store, &job);
    let runs = job.runs(5).await;
    use RunTrigger::Schedule;
    assert_eq!(
        runs,
        [
            // Never run before: due at once, at the active tier.
            (Schedule, Tier::Active, 0),
            // One quiet evaluation is not enough to demote: 15 min later, still active.
            (Schedule, Tier::Active, 15),
            // The second demotes to idle: an hour later.
            (Schedule, Tier::Idle, 75),
            // Dormant once: still idle, an hour later; dormant twice: a week after that.
            (Schedule, Tier::Idle, 135),
            (Schedule, Tier::Dormant, 135 + 7 * 24 * 60),
        ]
    );
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_overdue_at_start_up_runs_once_as_catch_up_not_once_per_missed_slot() {
    let store = MemStore::new();
    // Last scheduled three days ago at the active tier: 288 slots were missed.
    let stale = CadenceState {
        next_run_at_ms: Some(T0 - 3 * 24 * 60 * MINUTE),
        ..CadenceState::new()
    };
    store
        .save_cadence("scripted", &to_record(&stale))
        .await
        .unwrap();
    let job = Scripted::new(&store, &[Tier::Active]);
    let worker = start(&store, &job);
    let runs = job.runs(3).await;
    assert_eq!(
        runs,
        [
            (RunTrigger::Catchup, Tier::Active, 0),
            (RunTrigger::Schedule, Tier::Active, 15),
            (RunTrigger::Schedule, Tier::Active, 30),
        ]
    );
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_manual_trigger_runs_at_once_and_promotes_a_dormant_job_to_active() {
    let store = MemStore::new();
    let dormant = CadenceState {
        tier: Tier::Dormant,
        next_run_at_ms: Some(T0 + 6 * 24 * 60 * MINUTE),
        ..CadenceState::new()
    };
    store
        .save_cadence("scripted", &to_record(&dormant))
        .await
        .unwrap();
    let job = Scripted::new(&store, &[Tier::Active]);
    let worker = start(&store, &job);
    // Nothing is due for six days; an hour passes quietly.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(job.seen.lock().unwrap().is_empty());
    store.create_trigger("scripted", "test").await.unwrap();
    let runs = job.runs(2).await;
    assert_eq!(
        runs,
        [
            (RunTrigger::Manual, Tier::Active, 60),
            // Reported active: the next run follows the active tier's 15 min.
            (RunTrigger::Schedule, Tier::Active, 75),
        ]
    );
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wake_ups_during_a_pass_lead_to_exactly_one_more_pass() {
    let store = MemStore::new();
    let job = Scripted::gated(&store, &[Tier::Active]);
    // No safety poll within the test: every pass is a wake-up's or the schedule's.
    let options = WorkerOptions {
        safety_poll: Duration::from_secs(24 * 3600),
        ..WorkerOptions::default()
    };
    let worker = start_with(&store, &job, options);
    job.runs(1).await; // Pass 1 runs the schedule's first run, held at the gate.
    for _ in 0..5 {
        store.create_trigger("scripted", "test").await.unwrap();
    }
    // Waiting lets the listener hand every wake-up to the loop while pass 1 is still running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.memory().trigger_starts, 1);
    job.open();
    job.runs(2).await;
    // Quiet for a minute, well before the schedule's next run.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        store.memory().trigger_starts,
        3,
        "pass 2 (at once after a run) serves every wake-up and runs the triggers; pass 3 (at \
         once after that run) finds nothing to do"
    );
    let claimed: Vec<_> = store
        .memory()
        .triggers
        .iter()
        .map(|(_, run)| *run)
        .collect();
    assert_eq!(
        claimed,
        [Some(2); 5],
        "one follow-up run claimed every trigger"
    );
    assert_eq!(
        job.runs(3).await,
        [
            (RunTrigger::Schedule, Tier::Active, 0),
            (RunTrigger::Manual, Tier::Active, 0),
            (RunTrigger::Schedule, Tier::Active, 15),
        ]
    );
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pass_that_panics_is_contained_and_the_loop_looks_again() {
    let store = MemStore::new();
    store.memory().panic_on_cadence_read = true;
    let job = Scripted::new(&store, &[Tier::Active]);
    let worker = start(&store, &job);
    assert_eq!(
        job.runs(1).await,
        [(RunTrigger::Schedule, Tier::Active, 0)],
        "the pass after the panic runs what is due"
    );
    assert!(
        !store.memory().panic_on_cadence_read,
        "the first pass panicked"
    );
    worker.stop().await;
}
