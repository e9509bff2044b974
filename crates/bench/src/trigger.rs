//! Trigger latency of the sync worker on PostgreSQL, beside the raw `pg_notify` → `LISTEN`
//! latency measured in the same run.
//!
//! A server with the sync worker API and a worker in the same process, on one PostgreSQL
//! store, as `ferry serve` runs them. The worker runs one job, `bench`, whose run notes the
//! moment it starts and returns at once. Triggers go one at a time through
//! `POST /api/admin/sync/trigger`; the next is sent only once the previous run is recorded
//! finished and the job's loop is back to waiting, so every trigger gets a run of its own and
//! no latency includes queueing behind a run.
//!
//! The latency of a trigger is from the client receiving the `202` (the API has stored the
//! trigger, committed, and answered: it accepted the POST) to the job's run starting. Both
//! ends are read from one monotonic clock (`Instant`) in this process. Beside it: the same
//! from the moment the POST was sent (an upper bound), and the store's own figure, the
//! trigger's `created_at` to the run's `started_at` on the database clock, which is what the
//! worker's `/metrics` histogram records (millisecond resolution; stamped before each
//! transaction commits).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_proto::worker::TriggerResponse;
use ferry_server::{AppState, Config};
use ferry_store::JobStore;
use ferry_testkit::{Backend, TestStore};
use ferry_worker::cadence::Tier;
use ferry_worker::job::{RunContext, RunOutcome, RunTrigger, SyncJob};
use ferry_worker::runtime::{Worker, WorkerOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::ms;
use crate::timed_store::{Call, Event, TimedJobStore, Timeline};

/// The benchmark's job.
const JOB: &str = "bench";

/// The raw reference's channel (the worker listens on `sync_trigger` only).
const RAW_CHANNEL: &str = "bench";

/// Triggers and raw notifications alternate in blocks of this many, so both see the same
/// conditions.
const BLOCK: usize = 100;

/// The longest the benchmark waits for a notification, a run or the worker's loop.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the trigger benchmark measured, in milliseconds, one value per trigger or
/// notification.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct TriggerFigures {
    /// The PostgreSQL server's version and main settings.
    pub(crate) server: String,
    /// The client received the `202` → the job's run started.
    pub(crate) accepted_to_start_ms: Vec<f64>,
    /// The client sent the POST → the job's run started.
    pub(crate) sent_to_start_ms: Vec<f64>,
    /// The client sent the POST → it received the `202`.
    pub(crate) post_ms: Vec<f64>,
    /// The trigger's `created_at` → the run's `started_at`, both from the database clock.
    pub(crate) db_clock_ms: Vec<f64>,
    /// `SELECT pg_notify(...)` sent → the notification received on the `LISTEN` connection.
    pub(crate) raw_notify_ms: Vec<f64>,
    /// `SELECT pg_notify(...)` sent → its answer received by the sender.
    pub(crate) raw_notify_answer_ms: Vec<f64>,
    /// Where each trigger's time went, step by step from the `202` to the run (see
    /// [`STEPS`]); triggers whose steps could not all be told apart are left out.
    pub(crate) steps: Vec<(String, Vec<f64>)>,
}

/// The steps of a trigger's path, each from the end of the one before: together they make up
/// the latency. The first may be negative: the notification can reach the worker before the
/// `202` reaches the client.
const STEPS: [&str; 3] = [
    "the notification reaches the worker's listener (before the `202` when negative)",
    "the job's loop wakes; `start_run` for triggers, one call of the store's function \
     (`run_triggered`; the manual promotion is saved beside it, off this path)",
    "the job's run is called (`run_contained`)",
];

/// Sends `triggers` triggers and as many raw notifications, alternating in blocks.
pub(crate) async fn trigger_latency(triggers: usize) -> anyhow::Result<TriggerFigures> {
    let mut bench = BenchServer::start().await?;
    let mut raw = RawNotify::open(&bench.database_url()?).await?;
    // Starts from a quiet server: WAL that earlier work (a previous run's device benchmarks)
    // left to checkpoint would be flushed under this section's commits, which a trigger makes
    // and a raw notification does not.
    raw.sender.batch_execute("CHECKPOINT").await?;
    let mut figures = TriggerFigures {
        server: crate::copy::describe(&raw.sender).await?,
        steps: STEPS.iter().map(|s| (s.to_string(), Vec::new())).collect(),
        ..TriggerFigures::default()
    };
    let mut claimed = Vec::with_capacity(triggers);
    let mut done = 0;
    while done < triggers {
        let block = BLOCK.min(triggers - done);
        for _ in 0..block {
            let (latency, answer) = raw.once().await?;
            figures.raw_notify_ms.push(latency);
            figures.raw_notify_answer_ms.push(answer);
        }
        for _ in 0..block {
            claimed.push(bench.trigger_once(&mut figures).await?);
        }
        done += block;
    }
    figures.db_clock_ms = bench.db_clock_latencies(&claimed).await?;
    bench.stop().await;
    Ok(figures)
}

/// When the job's run started, as the job saw it.
struct Start {
    run_id: i64,
    trigger: RunTrigger,
    at: Instant,
}

/// A job that notes when its run starts and returns at once.
struct BenchJob {
    starts: mpsc::UnboundedSender<Start>,
}

impl SyncJob for BenchJob {
    fn name(&self) -> &str {
        JOB
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunContext,
    ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> {
        Box::pin(async move {
            let at = Instant::now();
            let _ = self.starts.send(Start {
                run_id: ctx.run_id(),
                trigger: ctx.trigger(),
                at,
            });
            RunOutcome::succeeded(Tier::Active)
        })
    }
}

/// A server with the sync worker API and an in-process worker on one PostgreSQL store.
struct BenchServer {
    url: String,
    token: String,
    http: reqwest::Client,
    timeline: Arc<Timeline>,
    starts: mpsc::UnboundedReceiver<Start>,
    worker: Worker,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Dropped last: it drops the database.
    storage: TestStore,
}

impl BenchServer {
    async fn start() -> anyhow::Result<BenchServer> {
        let storage = TestStore::new(Backend::Postgres).await;
        let opened = ferry_server::init::open(&storage.location, None).await?;
        let token = opened
            .admin_token
            .clone()
            .context("a new store gets an admin token")?;
        let mut config = Config::new(opened.schema);
        config.sync_jobs = vec![JOB.to_owned()];
        // The API uses the store as it is; only the worker's calls are timed.
        let state = AppState::new(opened.store, config).with_jobs(opened.jobs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(ferry_server::serve(listener, state, shutdown.clone()));

        let timeline = Arc::new(watch::channel(Vec::new()).0);
        let jobs: Arc<dyn JobStore> = Arc::new(TimedJobStore {
            inner: opened.jobs,
            timeline: timeline.clone(),
        });
        let (sender, mut starts) = mpsc::unbounded_channel();
        let job: Arc<dyn SyncJob> = Arc::new(BenchJob { starts: sender });
        let worker = Worker::spawn(
            jobs,
            vec![job],
            WorkerOptions::default(),
            shutdown.child_token(),
        );
        // A job that never ran runs on its schedule at once; let that run end first.
        let first = tokio::time::timeout(PATIENCE, starts.recv())
            .await
            .context("the worker's first run did not start")?
            .context("the job is gone")?;
        ensure!(
            first.trigger != RunTrigger::Manual,
            "the first run was {}",
            first.trigger
        );
        let bench = BenchServer {
            url,
            token,
            http: reqwest::Client::new(),
            timeline,
            starts,
            worker,
            shutdown,
            server,
            storage,
        };
        bench.wait_until_idle(0).await?;
        Ok(bench)
    }

    fn database_url(&self) -> anyhow::Result<String> {
        Ok(self
            .storage
            .database
            .as_ref()
            .context("the store is on PostgreSQL")?
            .url
            .clone())
    }

    /// One trigger through the API, timed to its run's start; waits until the job's loop is
    /// idle again. Returns the trigger's id and its run's.
    async fn trigger_once(&mut self, figures: &mut TriggerFigures) -> anyhow::Result<(i64, i64)> {
        let mark = self.timeline.borrow().len();
        let sent = Instant::now();
        let response = self
            .http
            .post(format!("{}/api/admin/sync/trigger", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "job": JOB }))
            .send()
            .await?;
        let accepted = Instant::now();
        let status = response.status();
        let text = response.text().await?;
        ensure!(status.as_u16() == 202, "the trigger got {status}: {text}");
        let answer: TriggerResponse = serde_json::from_str(&text)?;

        let start = tokio::time::timeout(PATIENCE, self.starts.recv())
            .await
            .with_context(|| format!("trigger {} started no run", answer.trigger_id))?
            .context("the job is gone")?;
        if start.trigger != RunTrigger::Manual {
            bail!(
                "a {} run started while trigger {} waited",
                start.trigger,
                answer.trigger_id
            );
        }
        figures
            .accepted_to_start_ms
            .push(signed_ms(accepted, start.at));
        figures.sent_to_start_ms.push(signed_ms(sent, start.at));
        figures.post_ms.push(signed_ms(sent, accepted));

        self.wait_until_idle(mark).await?;
        let events = self.timeline.borrow()[mark..].to_vec();
        if let Some(steps) = steps(&events, accepted, start.at) {
            for ((_, values), value) in figures.steps.iter_mut().zip(steps) {
                values.push(value);
            }
        }
        Ok((answer.trigger_id, start.run_id))
    }

    /// Waits until, after event `mark`, a run was recorded finished and its loop then read the
    /// job's cadence: the last thing it does before it waits for the next wake-up.
    async fn wait_until_idle(&self, mark: usize) -> anyhow::Result<()> {
        let mut events = self.timeline.subscribe();
        tokio::time::timeout(
            PATIENCE,
            events.wait_for(|events| loop_is_idle(&events[mark..])),
        )
        .await
        .context("the job's loop did not go back to waiting")??;
        Ok(())
    }

    /// Each trigger's `created_at` to its run's `started_at` by the database clock, checking
    /// that every trigger was claimed by the run that reported it, alone.
    async fn db_clock_latencies(&self, claimed: &[(i64, i64)]) -> anyhow::Result<Vec<f64>> {
        let database = self
            .storage
            .database
            .as_ref()
            .context("the store is on PostgreSQL")?;
        let client = database.connect().await;
        let rows = client
            .query(
                "SELECT t.id, t.run_id,
                        (extract(epoch FROM r.started_at - t.created_at) * 1000)::float8,
                        (SELECT count(*) FROM ferry.triggers u WHERE u.run_id = r.id)
                 FROM ferry.triggers t JOIN ferry.runs r ON r.id = t.run_id
                 WHERE t.job = $1 ORDER BY t.id",
                &[&JOB],
            )
            .await?;
        ensure!(
            rows.len() == claimed.len(),
            "{} triggers were claimed by runs, expected {}",
            rows.len(),
            claimed.len()
        );
        let mut latencies = Vec::with_capacity(rows.len());
        for (row, &(trigger_id, run_id)) in rows.iter().zip(claimed) {
            let (id, run, per_run): (i64, i64, i64) = (row.get(0), row.get(1), row.get(3));
            ensure!(
                (id, run, per_run) == (trigger_id, run_id, 1),
                "trigger {id} was claimed by run {run} with {per_run} trigger(s); \
                 expected trigger {trigger_id} alone in run {run_id}"
            );
            latencies.push(row.get(2));
        }
        Ok(latencies)
    }

    async fn stop(self) {
        self.worker.stop().await;
        self.shutdown.cancel();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("  the benchmark's server stopped with {error}"),
            Err(error) => eprintln!("  the benchmark's server task failed: {error}"),
        }
        drop(self.storage);
    }
}

/// Whether the events show a run recorded finished and, after it, the job loop's next pass
/// reading the job's cadence (which it does last, before it waits; each pass runs on a task of
/// its own, and nothing else reads the cadence after a run has finished).
fn loop_is_idle(events: &[Event]) -> bool {
    let Some(finish) = events.iter().position(|e| e.call == Call::FinishRun) else {
        return false;
    };
    events[finish + 1..].iter().any(|e| e.call == Call::Cadence)
}

/// The trigger's path from `accepted` to `started`, as [`STEPS`]: the notification reaching
/// the worker, then the job loop's store calls up to the run's start. `None` when the events
/// do not show that path whole.
fn steps(events: &[Event], accepted: Instant, started: Instant) -> Option<Vec<f64>> {
    let wakeup = events.iter().find(|e| e.call == Call::Wakeup)?;
    // The job loop's start after the wake-up.
    let run = events
        .iter()
        .find(|e| e.call == Call::StartRun && e.start >= wakeup.end)?;
    let ends = [wakeup.end, run.end, started];
    let mut from = accepted;
    Some(
        ends.into_iter()
            .map(|end| {
                let step = signed_ms(from, end);
                from = end;
                step
            })
            .collect(),
    )
}

/// `to - from` in milliseconds, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from.duration_since(to)),
    }
}

/// The raw reference: one connection listening, another sending `pg_notify`.
struct RawNotify {
    sender: tokio_postgres::Client,
    notify: tokio_postgres::Statement,
    received: mpsc::UnboundedReceiver<(String, Instant)>,
    /// Kept open: dropping it would end the listening connection.
    _listener: tokio_postgres::Client,
    next: u64,
}

impl RawNotify {
    async fn open(url: &str) -> anyhow::Result<RawNotify> {
        let (listener, mut connection) = tokio_postgres::connect(url, NoTls).await?;
        let (notes, received) = mpsc::unbounded_channel();
        // The moment of arrival is read as soon as the connection yields the notification.
        tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let at = Instant::now();
                        if notes.send((n.payload().to_owned(), at)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        listener
            .batch_execute(&format!("LISTEN {RAW_CHANNEL}"))
            .await?;
        let (sender, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let notify = sender
            .prepare(&format!("SELECT pg_notify('{RAW_CHANNEL}', $1)"))
            .await?;
        Ok(RawNotify {
            sender,
            notify,
            received,
            _listener: listener,
            next: 0,
        })
    }

    /// One notification: sent → received on the listening connection, and sent → the
    /// sender's answer, in milliseconds.
    async fn once(&mut self) -> anyhow::Result<(f64, f64)> {
        let payload = self.next.to_string();
        self.next += 1;
        let sent = Instant::now();
        self.sender.execute(&self.notify, &[&payload]).await?;
        let answered = Instant::now();
        let (got, at) = tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .context("a notification did not arrive")?
            .context("the listening connection closed")?;
        ensure!(
            got == payload,
            "received notification {got:?}, expected {payload:?}"
        );
        Ok((signed_ms(sent, at), signed_ms(sent, answered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(call: Call, base: Instant, start_us: u64, end_us: u64) -> Event {
        Event {
            call,
            start: base + Duration::from_micros(start_us),
            end: base + Duration::from_micros(end_us),
        }
    }

    #[test]
    fn the_steps_add_up_to_the_latency_even_when_the_notification_wins() {
        let base = Instant::now();
        let events = [
            event(Call::Wakeup, base, 100, 100),
            // Beside the start (the promotion): not a step.
            event(Call::SaveCadence, base, 400, 700),
            event(Call::StartRun, base, 110, 400),
        ];
        let accepted = base + Duration::from_micros(250);
        let started = base + Duration::from_micros(410);
        let path = steps(&events, accepted, started).unwrap();
        assert!((path[0] + 0.15).abs() < 1e-9, "the wake-up came first");
        assert!((path.iter().sum::<f64>() - 0.16).abs() < 1e-9, "{path:?}");
        assert_eq!(path.len(), 3);
        assert_eq!(steps(&events[..2], accepted, started), None);
    }

    #[test]
    fn the_loop_is_idle_once_it_read_the_cadence_after_a_finished_run() {
        let base = Instant::now();
        let finish = event(Call::FinishRun, base, 0, 10);
        let cadence = event(Call::Cadence, base, 20, 30);
        assert!(!loop_is_idle(&[cadence, finish]));
        assert!(loop_is_idle(&[cadence, finish, cadence]));
    }
}
