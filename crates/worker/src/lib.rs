//! Ferry's run loop: one task owns execution of a job; every trigger (the cadence timer, an
//! operator's "run now", a forced pull, a wake-up from the trigger listener) is a message to
//! that task.
//!
//! [`Runner`] is the only execution loop in Ferry. The device agent's sync cycle runs on it with
//! a fixed cadence ([`Cadence::Every`], 30 s by default), and so does each server-side sync job
//! of [`runtime`], whose runs are passes over the job's stored state that report when the next
//! pass is due ([`Cadence::AsReported`]).
//!
//! Runs never overlap because only the loop starts them. A request that arrives while a run is
//! in progress waits in the channel and is served by the next run, which starts after it
//! arrived; any number of such requests for the same work coalesce into that one run. A panic
//! inside a run is contained: the run's task fails, the job turns the panic into an output, and
//! the loop goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// Server-side sync jobs: cadence tiers, the job trait, the probe job, and the durable runtime
// that runs each job on a `Runner`.
pub mod cadence;
pub mod job;
pub mod metrics;
pub mod probe;
pub mod runtime;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The cadence timer.
    Schedule,
    /// A request for a run now: from a user, an operator, or the trigger listener.
    Manual,
}

/// A unit of work the loop runs.
pub trait Job: Send + Sync + 'static {
    /// What a run is asked to do. Equal requests that wait together coalesce into one run.
    type Request: Clone + PartialEq + Send + Sync + 'static;
    /// What a run reports; every waiter of a run receives a clone.
    type Output: Clone + Send + 'static;

    /// The request the cadence timer makes.
    fn scheduled(&self) -> Self::Request;

    /// Performs one run.
    fn run(
        &self,
        request: Self::Request,
        trigger: Trigger,
    ) -> Pin<Box<dyn Future<Output = Self::Output> + Send + '_>>;

    /// The output of a run that panicked with `message`.
    fn panicked(&self, request: Self::Request, trigger: Trigger, message: String) -> Self::Output;

    /// With [`Cadence::AsReported`], how long after a run's end the next scheduled run is due,
    /// read from that run's output: `Some(Duration::ZERO)` is at once, `None` is no scheduled
    /// run at all (only requests start one). Other cadences never ask; the default is `None`.
    fn next_due(&self, _output: &Self::Output) -> Option<Duration> {
        None
    }

    /// Called on the loop before each run starts and after it ends, to publish progress: at
    /// `Started` the loop's state shows the run going on, at `Finished` it shows it ended.
    fn observe(&self, _event: RunEvent<'_, Self>) {}
}

/// A moment in the loop's life, for [`Job::observe`].
pub enum RunEvent<'a, J: Job + ?Sized> {
    Started {
        request: &'a J::Request,
        trigger: Trigger,
    },
    Finished {
        request: &'a J::Request,
        trigger: Trigger,
        output: &'a J::Output,
    },
}

/// When the cadence timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// A run every interval, counted from the end of the previous run. The first run starts at
    /// once.
    Every(Duration),
    /// Each run says when the next one is due ([`Job::next_due`] of its output), counted from
    /// its end. The first run starts at once.
    AsReported,
    /// Only on request.
    Manual,
}

impl Cadence {
    /// When the first scheduled run is due, for a loop starting now.
    fn first(self) -> Option<Instant> {
        match self {
            Cadence::Every(_) | Cadence::AsReported => Some(Instant::now()),
            Cadence::Manual => None,
        }
    }

    /// When the next scheduled run is due, after a run that just ended with `output`.
    fn after<J: Job>(self, job: &J, output: &J::Output) -> Option<Instant> {
        let wait = match self {
            Cadence::Every(interval) => Some(interval),
            Cadence::AsReported => job.next_due(output),
            Cadence::Manual => None,
        };
        wait.map(|wait| Instant::now() + wait)
    }
}

/// What the loop is doing, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopState {
    pub running: bool,
    /// When the cadence timer fires next (`None` with a manual cadence, after a run that
    /// reported no next run, or after shutdown).
    pub next_scheduled: Option<Instant>,
    pub runs_completed: u64,
}

/// The loop stopped (shut down) before the request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the run loop has stopped")]
pub struct Stopped;

struct Request<J: Job> {
    request: J::Request,
    trigger: Trigger,
    reply: Option<oneshot::Sender<J::Output>>,
}

/// A handle to a running loop: cheap to clone, only enqueues and queries.
pub struct Runner<J: Job> {
    tx: mpsc::UnboundedSender<Request<J>>,
    state: watch::Receiver<LoopState>,
}

impl<J: Job> Clone for Runner<J> {
    fn clone(&self) -> Self {
        Runner {
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }
}

impl<J: Job> Runner<J> {
    /// Starts the loop on the current runtime. It stops when `shutdown` is cancelled, after the
    /// run in progress (if any) finishes; the returned handle resolves then.
    pub fn spawn(
        job: Arc<J>,
        cadence: Cadence,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (runner, run_loop) = Self::new(job, cadence, shutdown);
        (runner, tokio::spawn(run_loop))
    }

    /// The handle and the loop itself, for a caller that spawns the loop where it keeps its
    /// tasks (a `JoinSet`, say). Nothing runs until the loop is polled; it ends as
    /// [`Runner::spawn`] describes.
    pub fn new(
        job: Arc<J>,
        cadence: Cadence,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(LoopState {
            running: false,
            next_scheduled: cadence.first(),
            runs_completed: 0,
        });
        let run_loop = run_loop(job, cadence, rx, state_tx, shutdown);
        (Runner { tx, state }, run_loop)
    }

    /// Asks for a run and waits for the report of a run that starts after this call.
    pub async fn run_now(&self, request: J::Request) -> Result<J::Output, Stopped> {
        self.enqueue(request)?.wait().await
    }

    /// Queues a request now; the ticket resolves with the report of a run that starts after
    /// this call.
    pub fn enqueue(&self, request: J::Request) -> Result<Ticket<J::Output>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                request,
                trigger: Trigger::Manual,
                reply: Some(reply),
            })
            .map_err(|_| Stopped)?;
        Ok(Ticket(rx))
    }

    /// Asks for a run without waiting for it.
    pub fn trigger(&self, request: J::Request) -> Result<(), Stopped> {
        self.send_unanswered(request, Trigger::Manual)
    }

    /// Brings a scheduled run forward: `request` runs as soon as the loop is free, as a run of
    /// the cadence (its trigger is [`Trigger::Schedule`]), not an operator's. A device that
    /// heard of new rows pulls now rather than at its next tick. Merged with an equal request
    /// already waiting, like any other.
    pub fn run_early(&self, request: J::Request) -> Result<(), Stopped> {
        self.send_unanswered(request, Trigger::Schedule)
    }

    fn send_unanswered(&self, request: J::Request, trigger: Trigger) -> Result<(), Stopped> {
        self.tx
            .send(Request {
                request,
                trigger,
                reply: None,
            })
            .map_err(|_| Stopped)
    }

    /// The loop's current state.
    pub fn state(&self) -> LoopState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of the loop's state.
    pub fn watch(&self) -> watch::Receiver<LoopState> {
        self.state.clone()
    }
}

/// A queued request's claim on the report of the run that serves it.
pub struct Ticket<O>(oneshot::Receiver<O>);

impl<O> Ticket<O> {
    pub async fn wait(self) -> Result<O, Stopped> {
        self.0.await.map_err(|_| Stopped)
    }
}

/// Requests waiting for the next run, with equal requests merged.
struct Batch<J: Job> {
    request: J::Request,
    trigger: Trigger,
    replies: Vec<oneshot::Sender<J::Output>>,
}

async fn run_loop<J: Job>(
    job: Arc<J>,
    cadence: Cadence,
    mut rx: mpsc::UnboundedReceiver<Request<J>>,
    state: watch::Sender<LoopState>,
    shutdown: CancellationToken,
) {
    let mut waiting: Vec<Batch<J>> = Vec::new();
    loop {
        let next = state.borrow().next_scheduled;
        // Wait for something to do: a request, the timer, or shutdown.
        if waiting.is_empty() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                message = rx.recv() => match message {
                    Some(message) => enqueue(&mut waiting, message),
                    None => break,
                },
                _ = sleep_until(next) => {
                    let request = job.scheduled();
                    let trigger = Trigger::Schedule;
                    enqueue(&mut waiting, Request { request, trigger, reply: None });
                }
            }
        }
        // Everything that is already queued is served by the runs that follow now.
        while let Ok(message) = rx.try_recv() {
            enqueue(&mut waiting, message);
        }
        if shutdown.is_cancelled() {
            break;
        }
        let batch = waiting.remove(0);
        state.send_modify(|s| s.running = true);
        job.observe(RunEvent::Started {
            request: &batch.request,
            trigger: batch.trigger,
        });
        let output = run_contained(&job, batch.request.clone(), batch.trigger).await;
        // The loop's state first: a reader that `Finished` wakes must see the loop idle, or it
        // would show the run as going on with nothing left to tell it otherwise.
        state.send_modify(|s| {
            s.running = false;
            s.runs_completed += 1;
            s.next_scheduled = cadence.after(&*job, &output);
        });
        job.observe(RunEvent::Finished {
            request: &batch.request,
            trigger: batch.trigger,
            output: &output,
        });
        for reply in batch.replies {
            let _ = reply.send(output.clone()); // The waiter may have given up; that is fine.
        }
    }
    state.send_modify(|s| s.next_scheduled = None);
}

fn enqueue<J: Job>(waiting: &mut Vec<Batch<J>>, message: Request<J>) {
    let trigger = message.trigger;
    if let Some(batch) = waiting.iter_mut().find(|b| b.request == message.request) {
        if trigger == Trigger::Manual {
            batch.trigger = Trigger::Manual;
        }
        batch.replies.extend(message.reply);
        return;
    }
    waiting.push(Batch {
        request: message.request,
        trigger,
        replies: message.reply.into_iter().collect(),
    });
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs the job on its own task so that a panic ends that task, not the loop.
async fn run_contained<J: Job>(job: &Arc<J>, request: J::Request, trigger: Trigger) -> J::Output {
    let runner = Arc::clone(job);
    let task_request = request.clone();
    let handle = tokio::spawn(async move { runner.run(task_request, trigger).await });
    match handle.await {
        Ok(output) => output,
        Err(error) => {
            let message = match error.try_into_panic() {
                Ok(payload) => panic_message(payload.as_ref()),
                Err(error) => error.to_string(),
            };
            tracing::error!(%message, "A run panicked; the loop goes on.");
            job.panicked(request, trigger, message)
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the run panicked".to_string()
    }
}

#[cfg(test)]
mod tests;
