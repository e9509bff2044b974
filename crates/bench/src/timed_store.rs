//! A [`JobStore`] that times every call the worker makes on it, so the trigger benchmark can
//! show where a trigger's latency goes without instrumenting the worker or the store.
//!
//! Each call becomes an [`Event`] on a shared [`Timeline`]: what it was, and when it began and
//! ended on the benchmark's monotonic clock. A wake-up the trigger listener hands to the worker
//! is an event too.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ferry_proto::worker::{ListenerState, SyncRun};
use ferry_store::Result;
use ferry_store::jobs::{
    CadenceRecord, FinishedRun, JobStore, LogLine, NewRun, RunQuery, StartedRun, TriggerListener,
    TriggerRecord, Wakeup,
};
use tokio::sync::watch;

/// What an event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// The trigger listener handed the worker a notification.
    Wakeup,
    ClockMs,
    Cadence,
    SaveCadence,
    PendingTriggers,
    StartRun,
    Running,
    FinishRun,
    /// Anything else (heartbeats, log lines, the listener's reports).
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) call: Call,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

/// Every event so far, oldest first; watchable, so the benchmark can wait for one.
pub(crate) type Timeline = watch::Sender<Vec<Event>>;

/// `inner`, with each call recorded on `timeline`.
pub(crate) struct TimedJobStore {
    pub(crate) inner: Arc<dyn JobStore>,
    pub(crate) timeline: Arc<Timeline>,
}

impl TimedJobStore {
    async fn timed<T>(&self, call: Call, f: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        let end = Instant::now();
        record(&self.timeline, call, start, end);
        out
    }
}

fn record(timeline: &Timeline, call: Call, start: Instant, end: Instant) {
    timeline.send_modify(|events| events.push(Event { call, start, end }));
}

#[async_trait]
impl JobStore for TimedJobStore {
    async fn clock_ms(&self) -> Result<i64> {
        self.timed(Call::ClockMs, self.inner.clock_ms()).await
    }

    async fn listen(&self) -> Result<Box<dyn TriggerListener>> {
        let inner = self.inner.listen().await?;
        Ok(Box::new(TimedListener {
            inner,
            timeline: self.timeline.clone(),
        }))
    }

    async fn cadence(&self, job: &str) -> Result<Option<CadenceRecord>> {
        self.timed(Call::Cadence, self.inner.cadence(job)).await
    }

    async fn save_cadence(&self, job: &str, cadence: &CadenceRecord) -> Result<()> {
        self.timed(Call::SaveCadence, self.inner.save_cadence(job, cadence))
            .await
    }

    async fn create_trigger(&self, job: &str, source: &str) -> Result<TriggerRecord> {
        self.timed(Call::Other, self.inner.create_trigger(job, source))
            .await
    }

    async fn pending_triggers(&self, job: &str) -> Result<Vec<TriggerRecord>> {
        self.timed(Call::PendingTriggers, self.inner.pending_triggers(job))
            .await
    }

    async fn pending_count(&self, job: &str) -> Result<u64> {
        self.timed(Call::PendingTriggers, self.inner.pending_count(job))
            .await
    }

    async fn start_run(&self, run: &NewRun<'_>) -> Result<StartedRun> {
        self.timed(Call::StartRun, self.inner.start_run(run)).await
    }

    async fn heartbeat(&self, run_id: i64, worker: &str) -> Result<bool> {
        self.timed(Call::Other, self.inner.heartbeat(run_id, worker))
            .await
    }

    async fn append_log(&self, run_id: i64, lines: &[LogLine]) -> Result<()> {
        self.timed(Call::Other, self.inner.append_log(run_id, lines))
            .await
    }

    async fn finish_run(
        &self,
        run_id: i64,
        worker: &str,
        finished: &FinishedRun<'_>,
    ) -> Result<bool> {
        self.timed(
            Call::FinishRun,
            self.inner.finish_run(run_id, worker, finished),
        )
        .await
    }

    async fn runs(&self, query: &RunQuery) -> Result<Vec<SyncRun>> {
        self.timed(Call::Other, self.inner.runs(query)).await
    }

    async fn run(&self, id: i64) -> Result<Option<SyncRun>> {
        self.timed(Call::Other, self.inner.run(id)).await
    }

    async fn running(&self, job: &str) -> Result<Option<SyncRun>> {
        self.timed(Call::Running, self.inner.running(job)).await
    }

    async fn prune_runs(&self, before_ms: i64) -> Result<u64> {
        self.timed(Call::Other, self.inner.prune_runs(before_ms))
            .await
    }

    async fn report_listener(&self, worker: &str, state: &ListenerState) -> Result<()> {
        self.timed(Call::Other, self.inner.report_listener(worker, state))
            .await
    }

    async fn listener(&self) -> Result<Option<ListenerState>> {
        self.timed(Call::Other, self.inner.listener()).await
    }
}

/// The worker's trigger listener, with each wake-up recorded when it reaches the worker.
struct TimedListener {
    inner: Box<dyn TriggerListener>,
    timeline: Arc<Timeline>,
}

#[async_trait]
impl TriggerListener for TimedListener {
    async fn next(&mut self) -> Result<Wakeup> {
        let wakeup = self.inner.next().await;
        if wakeup.is_ok() {
            let now = Instant::now();
            record(&self.timeline, Call::Wakeup, now, now);
        }
        wakeup
    }

    async fn ping(&mut self) -> Result<()> {
        self.inner.ping().await
    }
}
