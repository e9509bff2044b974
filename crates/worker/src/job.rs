//! What a server-side sync job (billing, the probe) is to the worker: the [`SyncJob`] trait,
//! the [`RunContext`] a run is given, and the [`RunOutcome`] it reports.
//!
//! A [`SyncJob`] is not a [`crate::Job`] itself: the runtime wraps each one in a `Job` whose
//! run is a pass over the job's stored state, on the same [`crate::Runner`] loop the device
//! agent's cycles run on. A sync run has a durable id, writes log lines that are stored with
//! it, and reports counts and activity for the cadence, while the agent's runs answer waiting
//! callers.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::cadence::Tier;

/// A job the worker runs on its cadence and on request.
pub trait SyncJob: Send + Sync + 'static {
    /// The job's name, as in `{"job": "billing"}`; stable, since runs and state are stored
    /// under it.
    fn name(&self) -> &str;

    /// Performs one run. A panic is contained by [`run_contained`] and recorded as a failed run.
    fn run<'a>(
        &'a self,
        ctx: &'a RunContext,
    ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>>;
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunTrigger {
    /// The cadence timer.
    Schedule,
    /// An operator, through `POST /api/admin/sync/trigger`.
    Manual,
    /// A worker starting found the job overdue.
    Catchup,
}

impl RunTrigger {
    pub const ALL: [RunTrigger; 3] = [
        RunTrigger::Schedule,
        RunTrigger::Manual,
        RunTrigger::Catchup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Schedule => "schedule",
            RunTrigger::Manual => "manual",
            RunTrigger::Catchup => "catchup",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's status as stored and shown by `/api/admin/sync/runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Some of the work was done, some failed; the run's errors say which.
    Partial,
    /// The worker running it stopped heartbeating (it was killed); nothing says how far it got.
    Abandoned,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Partial,
        RunStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Partial => "partial",
            RunStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether a run with this status is over.
    pub fn is_finished(self) -> bool {
        self != RunStatus::Running
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job says its run ended. Only the runtime marks a run running or abandoned, so a job
/// cannot report either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinalStatus {
    Succeeded,
    Failed,
    Partial,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        RunStatus::from(self).as_str()
    }
}

impl From<FinalStatus> for RunStatus {
    fn from(status: FinalStatus) -> Self {
        match status {
            FinalStatus::Succeeded => RunStatus::Succeeded,
            FinalStatus::Failed => RunStatus::Failed,
            FinalStatus::Partial => RunStatus::Partial,
        }
    }
}

/// What a run reports when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: FinalStatus,
    /// What the run did, by name, e.g. `events_created` and `transactions_processed` for billing.
    pub counts: BTreeMap<String, i64>,
    pub errors: Vec<String>,
    /// The tier the job's activity suggests, for the cadence; `None` when the run learned
    /// nothing about activity (it panicked, or failed before it could look).
    pub activity: Option<Tier>,
}

impl RunOutcome {
    /// A successful run with no counts yet.
    pub fn succeeded(activity: Tier) -> Self {
        RunOutcome {
            status: FinalStatus::Succeeded,
            counts: BTreeMap::new(),
            errors: Vec::new(),
            activity: Some(activity),
        }
    }

    /// A run that failed with `error` before it learned anything about activity.
    pub fn failed(error: impl Into<String>) -> Self {
        RunOutcome {
            status: FinalStatus::Failed,
            counts: BTreeMap::new(),
            errors: vec![error.into()],
            activity: None,
        }
    }

    #[must_use]
    pub fn with_count(mut self, name: impl Into<String>, value: i64) -> Self {
        self.counts.insert(name.into(), value);
        self
    }

    /// The line the worker logs when a run that took `elapsed` ends: [`completion_line`] for a
    /// success, and lines in the same shape that say so for a partial or failed run.
    pub fn summary(&self, elapsed: Duration) -> String {
        let seconds = elapsed.as_secs_f64();
        match self.status {
            FinalStatus::Succeeded => completion_line(elapsed, &self.counts),
            FinalStatus::Partial => {
                let mut line = format!("Sync partially completed in {seconds:.2}s");
                if !self.counts.is_empty() {
                    line.push_str(": ");
                    line.push_str(&counts_text(&self.counts));
                }
                let errors = self.errors.len();
                line.push_str(&format!("; {errors} error{}", plural(errors)));
                line
            }
            FinalStatus::Failed => match self.errors.first() {
                Some(error) => format!("Sync failed after {seconds:.2}s: {error}"),
                None => format!("Sync failed after {seconds:.2}s"),
            },
        }
    }
}

/// The contract's completion line for a successful run that took `elapsed`.
///
/// With `events_created` and `transactions_processed` among the counts it is exactly
/// `Sync completed in 1.42s: 3 events created, 5 transactions processed`, plural whatever the
/// numbers, since operators' log searches match that text; other counts are for the run's
/// structured fields. Without them, every count follows as `name=value`.
pub fn completion_line(elapsed: Duration, counts: &BTreeMap<String, i64>) -> String {
    let head = format!("Sync completed in {:.2}s", elapsed.as_secs_f64());
    match (
        counts.get("events_created"),
        counts.get("transactions_processed"),
    ) {
        (Some(events), Some(transactions)) => {
            format!("{head}: {events} events created, {transactions} transactions processed")
        }
        _ if counts.is_empty() => head,
        _ => format!("{head}: {}", counts_text(counts)),
    }
}

fn counts_text(counts: &BTreeMap<String, i64>) -> String {
    let pairs: Vec<String> = counts
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    pairs.join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One line a run logged, kept with the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Time since the run's context was created. The store adds it to the run's start, read
    /// from the database clock, so lines need no clock of their own.
    pub elapsed: Duration,
    pub level: Level,
    pub text: String,
}

/// What a run is given: who it is, why it runs, and where its log lines go. Cheap to clone;
/// clones share the log, so a job may hand one to tasks it spawns.
#[derive(Debug, Clone)]
pub struct RunContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    run_id: i64,
    trigger: RunTrigger,
    tier: Tier,
    started: Instant,
    shutdown: CancellationToken,
    lines: Mutex<Vec<LogLine>>,
}

impl RunContext {
    /// The context of run `run_id`, started by `trigger` at effective tier `tier`. `shutdown`
    /// is cancelled when the worker stops; a long job checks it between units of work.
    pub fn new(run_id: i64, trigger: RunTrigger, tier: Tier, shutdown: CancellationToken) -> Self {
        RunContext {
            inner: Arc::new(ContextInner {
                run_id,
                trigger,
                tier,
                started: Instant::now(),
                shutdown,
                lines: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn run_id(&self) -> i64 {
        self.inner.run_id
    }

    pub fn trigger(&self) -> RunTrigger {
        self.inner.trigger
    }

    /// The tier the run was started at (the pinned tier while a pin applies).
    pub fn tier(&self) -> Tier {
        self.inner.tier
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Time since the context was created.
    pub fn elapsed(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Adds a line to the run's log, and emits it as a tracing event too, so it also reaches
    /// the worker's own output.
    pub fn log(&self, level: Level, text: impl Into<String>) {
        let text = text.into();
        let run_id = self.inner.run_id;
        match level {
            Level::ERROR => tracing::error!(run_id, "{text}"),
            Level::WARN => tracing::warn!(run_id, "{text}"),
            Level::INFO => tracing::info!(run_id, "{text}"),
            Level::DEBUG => tracing::debug!(run_id, "{text}"),
            Level::TRACE => tracing::trace!(run_id, "{text}"),
        }
        let line = LogLine {
            elapsed: self.elapsed(),
            level,
            text,
        };
        self.lines().push(line);
    }

    /// Removes and returns the lines logged so far, oldest first. The runtime calls it to store
    /// lines while the run goes on, so a killed worker's run keeps most of its log.
    pub fn take_lines(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines())
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<LogLine>> {
        // The lock is only held to push or take, which leave the vector whole even if they
        // panic, so a poisoned lock still guards good data.
        self.inner
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Performs one run of `job` on its own task, so that a panic ends that task rather than the
/// worker. A panic becomes a failed outcome whose error is the panic message, without activity,
/// and is also written to the run's log.
pub async fn run_contained<J: SyncJob + ?Sized>(job: Arc<J>, ctx: RunContext) -> RunOutcome {
    let task_ctx = ctx.clone();
    let handle = tokio::spawn(async move { job.run(&task_ctx).await });
    match handle.await {
        Ok(outcome) => outcome,
        Err(error) => {
            let message = match error.try_into_panic() {
                Ok(payload) => crate::panic_message(payload.as_ref()),
                // Only a runtime shutting down cancels the task; the run did not finish.
                Err(error) => error.to_string(),
            };
            ctx.log(Level::ERROR, format!("The run panicked: {message}"));
            RunOutcome::failed(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    fn context() -> RunContext {
        RunContext::new(7, RunTrigger::Manual, Tier::Idle, CancellationToken::new())
    }

    /// A job that does what its closure says, for containment tests.
    struct FnJob<F>(F);

    impl<F: Fn(&RunContext) -> RunOutcome + Send + Sync + 'static> SyncJob for FnJob<F> {
        fn name(&self) -> &str {
            "fn"
        }

        fn run<'a>(
            &'a self,
            ctx: &'a RunContext,
        ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> {
            Box::pin(async move { (self.0)(ctx) })
        }
    }

    #[test]
    fn triggers_and_statuses_use_the_contract_names() {
        let triggers: Vec<_> = RunTrigger::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(triggers, ["schedule", "manual", "catchup"]);
        for trigger in RunTrigger::ALL {
            assert_eq!(RunTrigger::parse(trigger.as_str()), Some(trigger));
            assert_eq!(trigger.to_string(), trigger.as_str());
        }
        assert_eq!(RunTrigger::parse("catch-up"), None);

        let statuses: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            statuses,
            ["running", "succeeded", "failed", "partial", "abandoned"]
        );
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.is_finished(), status != RunStatus::Running);
        }
        assert_eq!(RunStatus::parse("Succeeded"), None);
        assert_eq!(FinalStatus::Partial.as_str(), "partial");
        assert_eq!(RunStatus::from(FinalStatus::Failed), RunStatus::Failed);
    }

    #[test]
    fn the_completion_line_with_events_and_transactions_is_the_contracts() {
        let line = completion_line(
            Duration::from_millis(1420),
            &counts(&[
                ("events_created", 3),
                ("transactions_processed", 5),
                ("sessions_skipped", 2),
            ]),
        );
        assert_eq!(
            line,
            "Sync completed in 1.42s: 3 events created, 5 transactions processed"
        );
        let one = completion_line(
            Duration::from_millis(50),
            &counts(&[("events_created", 1), ("transactions_processed", 0)]),
        );
        assert_eq!(
            one, "Sync completed in 0.05s: 1 events created, 0 transactions processed",
            "the wording stays fixed for log searches"
        );
    }

    #[test]
    fn the_completion_line_lists_other_counts_by_name() {
        assert_eq!(
            completion_line(
                Duration::from_millis(200),
                &counts(&[("probes", 1), ("events_created", 2)])
            ),
            "Sync completed in 0.20s: events_created=2, probes=1"
        );
        assert_eq!(
            completion_line(Duration::from_secs(3), &BTreeMap::new()),
            "Sync completed in 3.00s"
        );
    }

    #[test]
    fn summaries_say_how_the_run_ended() {
        let elapsed = Duration::from_millis(1420);
        let ok = RunOutcome::succeeded(Tier::Active)
            .with_count("events_created", 3)
            .with_count("transactions_processed", 5);
        assert_eq!(
            ok.summary(elapsed),
            "Sync completed in 1.42s: 3 events created, 5 transactions processed"
        );
        let partial = RunOutcome {
            status: FinalStatus::Partial,
            errors: vec!["charger 4 unreachable".into()],
            ..RunOutcome::succeeded(Tier::Active).with_count("events_created", 3)
        };
        assert_eq!(
            partial.summary(elapsed),
            "Sync partially completed in 1.42s: events_created=3; 1 error"
        );
        assert_eq!(
            RunOutcome::failed("Lago answered 503").summary(elapsed),
            "Sync failed after 1.42s: Lago answered 503"
        );
        let silent = RunOutcome {
            errors: vec![],
            ..RunOutcome::failed("")
        };
        assert_eq!(silent.summary(elapsed), "Sync failed after 1.42s");
    }

    #[test]
    fn outcome_helpers_fill_in_what_they_say() {
        let ok = RunOutcome::succeeded(Tier::Dormant).with_count("probes", 1);
        assert_eq!(ok.status, FinalStatus::Succeeded);
        assert_eq!(ok.activity, Some(Tier::Dormant));
        assert_eq!(ok.counts, counts(&[("probes", 1)]));
        let failed = RunOutcome::failed("boom");
        assert_eq!(failed.status, FinalStatus::Failed);
        assert_eq!(failed.errors, ["boom"]);
        assert_eq!(failed.activity, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_context_keeps_log_lines_in_order_with_their_time() {
        let ctx = context();
        assert_eq!(ctx.run_id(), 7);
        assert_eq!(ctx.trigger(), RunTrigger::Manual);
        assert_eq!(ctx.tier(), Tier::Idle);
        ctx.log(Level::INFO, "first");
        tokio::time::sleep(Duration::from_millis(250)).await;
        ctx.clone().log(Level::WARN, "second, from a clone");
        let lines = ctx.take_lines();
        assert_eq!(
            lines,
            [
                LogLine {
                    elapsed: Duration::ZERO,
                    level: Level::INFO,
                    text: "first".into()
                },
                LogLine {
                    elapsed: Duration::from_millis(250),
                    level: Level::WARN,
                    text: "second, from a clone".into()
                },
            ]
        );
        assert!(ctx.take_lines().is_empty(), "taken lines are gone");
    }

    #[tokio::test]
    async fn the_context_accepts_lines_from_many_tasks_at_once() {
        let ctx = context();
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        ctx.log(Level::DEBUG, format!("{task}:{i}"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(ctx.take_lines().len(), 800);
    }

    #[tokio::test]
    async fn a_run_that_returns_reports_its_outcome() {
        let job = Arc::new(FnJob(|ctx: &RunContext| {
            ctx.log(Level::INFO, "working");
            RunOutcome::succeeded(Tier::Idle).with_count("probes", 1)
        }));
        let ctx = context();
        let outcome = run_contained(job, ctx.clone()).await;
        assert_eq!(
            outcome,
            RunOutcome::succeeded(Tier::Idle).with_count("probes", 1)
        );
        assert_eq!(ctx.take_lines().len(), 1);
    }

    #[tokio::test]
    async fn a_panic_becomes_a_failed_outcome_with_its_message() {
        let job: Arc<dyn SyncJob> = Arc::new(FnJob(|ctx: &RunContext| -> RunOutcome {
            ctx.log(Level::INFO, "about to fail");
            panic!("charger {} vanished", 4)
        }));
        let ctx = context();
        let outcome = run_contained(job, ctx.clone()).await;
        assert_eq!(outcome, RunOutcome::failed("charger 4 vanished"));
        let texts: Vec<_> = ctx.take_lines().into_iter().map(|l| l.text).collect();
        assert_eq!(
            texts,
            ["about to fail", "The run panicked: charger 4 vanished"]
        );
    }

    #[tokio::test]
    async fn a_panic_with_a_static_message_keeps_it() {
        let job = Arc::new(FnJob(|_: &RunContext| -> RunOutcome {
            std::panic::panic_any("static message")
        }));
        let outcome = run_contained(job, context()).await;
        assert_eq!(outcome.errors, ["static message"]);
        assert_eq!(outcome.activity, None);
    }
}
