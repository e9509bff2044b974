//! Draining the outbox into Lago: batches of at most 100 events, a few in flight at once,
//! each settled in the ledger as its answer comes.
//!
//! A run's planner hands over the events it has just written, chunk by chunk, so sending
//! starts while the rest of a large plan is still being written; once the plan is written,
//! every other pending event in the ledger (left by an earlier run, or sent again after an
//! operator's approval) goes out too. Settling runs beside the sending, so the ledger's writes
//! and Lago's answers overlap.
//!
//! A batch is sent until each of its events is settled: Lago accepted it, answered that its
//! `transaction_id` exists (both delivered), or refused that event (rejected; the rest of the
//! batch goes again without it). An answer that settles nothing (a timeout, a dropped
//! connection, a 5xx) is met by sending the same batch again, a few times with a backoff;
//! then sending stops for this run and the events stay pending.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_store::BillingStore;
use ferry_store::billing::{EventOutcome, EventRecord, Settlement};
use ferry_worker::job::RunContext;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Level;

use crate::job::{BillingOptions, MAX_BATCH};
use crate::lago::{self, BatchOutcome, LagoClient, LagoError};

/// Pending events read from the ledger at a time.
const PAGE: u32 = 1000;

/// Waits on Lago's rate limit for one batch in one run; then its events wait for the next.
const MAX_RATE_LIMIT_WAITS: u32 = 10;

/// A progress line goes to the run's log every this many settled events.
const PROGRESS_EVERY: u64 = 10_000;

/// What draining the outbox did.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Events Lago accepted as new in this run.
    pub(crate) accepted: u64,
    /// Events Lago answered it already had (a run before this one sent them, and its answer
    /// was lost); they are delivered, but were not created by this run.
    pub(crate) duplicates: u64,
    /// Events that went from pending to delivered in this run.
    pub(crate) delivered: u64,
    /// Events that went from pending to rejected in this run.
    pub(crate) rejected: u64,
    /// Sessions a rejection sent to review.
    pub(crate) sessions_changed: Vec<i64>,
    pub(crate) errors: Vec<String>,
}

/// Sends the outbox's events to Lago.
pub(crate) struct Outbox {
    pub(crate) lago: LagoClient,
    pub(crate) store: Arc<dyn BillingStore>,
    pub(crate) options: BillingOptions,
}

impl Outbox {
    /// Sends the events that arrive on `fresh` (this run's plan) as they come, then every
    /// other pending event in the ledger.
    pub(crate) async fn drain(
        &self,
        ctx: &RunContext,
        mut fresh: mpsc::Receiver<Vec<EventRecord>>,
    ) -> Drained {
        let (settle, settled) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settle_all(self.store.clone(), ctx.clone(), settled));
        let concurrency = self.options.concurrency.max(1);
        let mut queue: VecDeque<Vec<EventRecord>> = VecDeque::new();
        // Sent by this run already, so the ledger's page of pending events skips them.
        let mut handled: HashSet<String> = HashSet::new();
        let mut in_flight = JoinSet::new();
        let mut fresh_open = true;
        let mut after: Option<String> = None;
        let mut ledger_done = false;
        let mut stop: Option<String> = None;
        let mut errors = Vec::new();
        let (mut accepted, mut duplicates) = (0, 0);
        loop {
            while stop.is_none() && in_flight.len() < concurrency {
                let Some(batch) = queue.pop_front() else {
                    break;
                };
                handled.extend(batch.iter().map(|e| e.event.transaction_id.clone()));
                let sender = Sender {
                    lago: self.lago.clone(),
                    options: self.options.clone(),
                    ctx: ctx.clone(),
                };
                in_flight.spawn(async move { sender.deliver(batch).await });
            }
            let idle = in_flight.is_empty() && (queue.is_empty() || stop.is_some());
            if idle && !fresh_open {
                if stop.is_some() || ledger_done || ctx.shutdown().is_cancelled() {
                    break;
                }
                match self.store.pending_events(after.as_deref(), PAGE).await {
                    Ok(page) => match page.last() {
                        None => ledger_done = true,
                        Some(last) => {
                            after = Some(last.event.transaction_id.clone());
                            let unsent: Vec<EventRecord> = page
                                .into_iter()
                                .filter(|e| !handled.contains(&e.event.transaction_id))
                                .collect();
                            queue.extend(batches(unsent));
                        }
                    },
                    Err(error) => {
                        stop = Some(format!(
                            "The ledger's pending events cannot be read: {error}"
                        ));
                    }
                }
                continue;
            }
            // Room for more of the plan: a few batches per one in flight.
            // After a stop, everything the planner still hands over is only taken off the
            // channel, so the planner never waits on it.
            let wants_fresh = fresh_open && (stop.is_some() || queue.len() < 4 * concurrency);
            tokio::select! {
                joined = in_flight.join_next(), if !in_flight.is_empty() => match joined {
                    Some(Ok(delivered)) => {
                        accepted += delivered.accepted;
                        duplicates += delivered.duplicates;
                        if !delivered.settlements.is_empty() {
                            // The settler ends only when this channel closes.
                            let _ = settle.send(delivered.settlements);
                        }
                        if let Some(error) = delivered.stop {
                            stop.get_or_insert(error);
                        }
                    }
                    Some(Err(error)) => {
                        stop.get_or_insert(format!("A Lago send task failed: {error}"));
                    }
                    None => {}
                },
                received = fresh.recv(), if wants_fresh => match received {
                    // After a stop the plan's events stay pending; they are still taken off
                    // the channel, so the planner never waits on it.
                    Some(events) if stop.is_none() => queue.extend(batches(events)),
                    Some(_) => {}
                    None => fresh_open = false,
                },
            }
        }
        drop(settle);
        let mut drained = settler.await.unwrap_or_else(|error| Drained {
            errors: vec![format!("Settling events failed: {error}")],
            ..Drained::default()
        });
        if let Some(error) = stop {
            errors.push(format!(
                "Sending events to Lago stopped; the pending ones are sent by the next run: \
                 {error}"
            ));
        }
        drained.errors.extend(errors);
        drained.accepted = accepted;
        drained.duplicates = duplicates;
        drained
    }
}

fn batches(events: Vec<EventRecord>) -> impl Iterator<Item = Vec<EventRecord>> {
    let mut events = events.into_iter().peekable();
    std::iter::from_fn(move || {
        events.peek()?;
        Some(events.by_ref().take(MAX_BATCH).collect())
    })
}

/// Records outcomes as they come, taking whatever has queued up in one transaction.
async fn settle_all(
    store: Arc<dyn BillingStore>,
    ctx: RunContext,
    mut outcomes: mpsc::UnboundedReceiver<Vec<Settlement>>,
) -> Drained {
    let mut drained = Drained::default();
    let mut settled = 0u64;
    while let Some(mut settlements) = outcomes.recv().await {
        while let Ok(more) = outcomes.try_recv() {
            settlements.extend(more);
        }
        for settlement in &settlements {
            if let EventOutcome::Rejected(error) = &settlement.outcome {
                let line = format!("Lago refused event {}: {error}", settlement.transaction_id);
                ctx.log(Level::WARN, line.clone());
                drained.errors.push(line);
            }
        }
        match store.settle_events(ctx.run_id(), &settlements).await {
            Ok(done) => {
                drained.delivered += done.delivered;
                drained.rejected += done.rejected;
                drained.sessions_changed.extend(done.sessions_changed);
                let before = settled / PROGRESS_EVERY;
                settled += done.delivered + done.rejected;
                if settled / PROGRESS_EVERY > before {
                    ctx.log(Level::INFO, format!("{settled} events settled so far."));
                }
            }
            // Unrecorded outcomes leave their events pending: the next run sends them again
            // and Lago answers with duplicates.
            Err(error) => drained.errors.push(format!(
                "Recording Lago's answers failed; those events are sent again by the next \
                 run: {error}"
            )),
        }
    }
    drained
}

/// Sends one batch until every event in it is settled or Lago cannot take it.
struct Sender {
    lago: LagoClient,
    options: BillingOptions,
    ctx: RunContext,
}

/// What sending one batch came to.
struct Delivered {
    settlements: Vec<Settlement>,
    /// Of the settlements, events Lago accepted as new, and events it already had.
    accepted: u64,
    duplicates: u64,
    /// Why sending should stop for this run (Lago down, refusing the key, a rate limit too
    /// long to wait out).
    stop: Option<String>,
}

impl Sender {
    async fn deliver(&self, batch: Vec<EventRecord>) -> Delivered {
        let mut queue: Vec<EventRecord> = batch;
        let mut settlements = Vec::with_capacity(queue.len());
        let (mut accepted, mut duplicates) = (0, 0);
        let (mut failures, mut rate_limited) = (0, 0);
        while !queue.is_empty() {
            let events: Vec<lago::Event> = queue.iter().map(to_lago).collect();
            match self.lago.post_batch(&events).await {
                Ok(BatchOutcome::Accepted) => {
                    accepted += queue.len() as u64;
                    settlements.extend(queue.drain(..).map(|e| delivered(&e)));
                }
                Ok(BatchOutcome::RolledBack(verdicts)) => {
                    let sent = queue.len();
                    let mut again = Vec::new();
                    for (event, verdict) in queue.drain(..).zip(verdicts) {
                        match verdict {
                            lago::EventVerdict::AlreadyExists => {
                                duplicates += 1;
                                settlements.push(delivered(&event));
                            }
                            lago::EventVerdict::Invalid(error) => settlements.push(Settlement {
                                transaction_id: event.event.transaction_id.clone(),
                                outcome: EventOutcome::Rejected(error),
                            }),
                            lago::EventVerdict::NotApplied => again.push(event),
                        }
                    }
                    if again.len() == sent {
                        // Lago refused the batch without naming any of its events: sending
                        // it again would only be refused again.
                        return unsettled(
                            accepted,
                            duplicates,
                            settlements,
                            again,
                            "Lago refused a batch without saying which event was wrong".into(),
                        );
                    }
                    queue = again;
                }
                Err(error) => {
                    let wait = match &error {
                        LagoError::RateLimited { retry_after, .. }
                            if *retry_after <= self.options.max_rate_limit_wait
                                && rate_limited < MAX_RATE_LIMIT_WAITS =>
                        {
                            rate_limited += 1;
                            *retry_after
                        }
                        // Whether or not Lago applied it, the same batch again settles it:
                        // what it applied comes back as duplicates.
                        error if error.is_transient() && failures + 1 < self.options.attempts => {
                            failures += 1;
                            Duration::from_millis(250 << (2 * failures.min(4)))
                        }
                        _ => {
                            return unsettled(
                                accepted,
                                duplicates,
                                settlements,
                                queue,
                                error.to_string(),
                            );
                        }
                    };
                    self.ctx.log(
                        Level::INFO,
                        format!(
                            "Sending to Lago did not settle ({error}); sending again in {:.2}s.",
                            wait.as_secs_f64()
                        ),
                    );
                    if !self.pause(wait).await {
                        let why = "the worker is stopping".to_owned();
                        return unsettled(accepted, duplicates, settlements, queue, why);
                    }
                }
            }
        }
        Delivered {
            settlements,
            accepted,
            duplicates,
            stop: None,
        }
    }

    /// Waits, unless the worker stops first; `false` when it does.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.ctx.shutdown().cancelled() => false,
        }
    }
}

/// The batch's unsettled events, with the error that left them so, and the reason to stop;
/// `accepted` and `duplicates` count what was settled before.
fn unsettled(
    accepted: u64,
    duplicates: u64,
    mut settlements: Vec<Settlement>,
    queue: Vec<EventRecord>,
    error: String,
) -> Delivered {
    settlements.extend(queue.into_iter().map(|e| Settlement {
        transaction_id: e.event.transaction_id,
        outcome: EventOutcome::Unsettled(error.clone()),
    }));
    Delivered {
        settlements,
        accepted,
        duplicates,
        stop: Some(error),
    }
}

fn delivered(event: &EventRecord) -> Settlement {
    Settlement {
        transaction_id: event.event.transaction_id.clone(),
        outcome: EventOutcome::Delivered,
    }
}

fn to_lago(record: &EventRecord) -> lago::Event {
    let event = &record.event;
    lago::Event {
        transaction_id: event.transaction_id.clone(),
        external_subscription_id: event.subscription.clone(),
        code: event.code.clone(),
        timestamp_ms: event.timestamp_ms,
        properties: serde_json::from_str(&event.properties).unwrap_or_default(),
    }
}
