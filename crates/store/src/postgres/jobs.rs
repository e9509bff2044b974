//! The sync worker's durable state on PostgreSQL (see [`crate::jobs`]).
//!
//! Times come from the database: `clock_timestamp()`, not `now()`, because `now()` is the
//! start of the transaction and would stand still while a statement waits on a lock. They are
//! cut to milliseconds, so what a method returns is exactly what it stored.
//!
//! Single-flight rests on the unique partial index `runs_one_running`: a second running run
//! of a job cannot be inserted, whichever process tries, and an insert that races another
//! one waits for it to commit or roll back before it decides.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use ferry_core::time::{format_ms, ms_of, parse_ms};
use ferry_proto::worker::{ListenerState, RunLogLine, SyncRun};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{PgStore, at, text_of};
use crate::jobs::{ABANDONED, check_final_status, from_json_text, json_text};
use crate::jobs::{
    CadenceRecord, FinishedRun, JobStore, LogLine, NewRun, RunQuery, StartedRun, TRIGGER_CHANNEL,
    TriggerListener, TriggerRecord, Wakeup,
};
use crate::{Result, StoreError};

/// The listener connection's `application_name`, by which operators (and tests) find it in
/// `pg_stat_activity`.
const LISTENER_APPLICATION: &str = "ferry-listener";

/// Wake-ups a listener holds before it drops new ones. A wake-up is a hint and the worker
/// drains every pending trigger after any of them, so dropping some loses nothing.
const LISTENER_BACKLOG: usize = 1024;

/// The columns [`run_of`] reads, in its order.
const RUN_COLUMNS: &str = "id, job, trigger, tier, status, started_at, finished_at, \
                           duration_ms, counts::text, errors::text";

#[async_trait]
impl JobStore for PgStore {
    async fn clock_ms(&self) -> Result<i64> {
        self.with_client(async |client| {
            let now: SystemTime = client
                .query_one(
                    &client.prepare_cached("SELECT clock_timestamp()").await?,
                    &[],
                )
                .await?
                .get(0);
            Ok(ms_of(now))
        })
        .await
    }

    async fn listen(&self) -> Result<Box<dyn TriggerListener>> {
        Ok(Box::new(PgListener::open(&self.config).await?))
    }

    async fn cadence(&self, job: &str) -> Result<Option<CadenceRecord>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT tier, demotion_toward, demotion_streak, pinned_tier, pinned_until,
                            next_run_at
                     FROM job_cadence WHERE job = $1",
                )
                .await?;
            let Some(row) = client.query_opt(&statement, &[&job]).await? else {
                return Ok(None);
            };
            let streak: i32 = row.get(2);
            Ok(Some(CadenceRecord {
                tier: row.get(0),
                demotion_toward: row.get(1),
                demotion_streak: u32::try_from(streak).unwrap_or(0),
                pinned_tier: row.get(3),
                pinned_until_ms: row.get::<_, Option<SystemTime>>(4).map(ms_of),
                next_run_at_ms: row.get::<_, Option<SystemTime>>(5).map(ms_of),
            }))
        })
        .await
    }

    async fn save_cadence(&self, job: &str, cadence: &CadenceRecord) -> Result<()> {
        self.with_client(async |client| save_cadence(client, job, cadence).await)
            .await
    }

    async fn create_trigger(&self, job: &str, source: &str) -> Result<TriggerRecord> {
        self.with_client(async |client| {
            // One statement is one transaction: PostgreSQL delivers the notification when it
            // commits, so a worker is never woken for a trigger that did not commit, and the API
            // pays one round trip instead of four (BEGIN, INSERT, NOTIFY, COMMIT).
            let statement = client
                .prepare_cached(
                    "WITH t AS (
                       INSERT INTO triggers (job, source, created_at)
                       VALUES ($1, $2, date_trunc('milliseconds', clock_timestamp()))
                       RETURNING id, created_at
                     )
                     SELECT t.id, t.created_at,
                            pg_notify($3, jsonb_build_object(
                              'trigger_id', t.id, 'job', $1::text, 'source', $2::text)::text)
                     FROM t",
                )
                .await?;
            let row = client
                .query_one(&statement, &[&job, &source, &TRIGGER_CHANNEL])
                .await?;
            Ok(TriggerRecord {
                id: row.get(0),
                job: job.to_owned(),
                source: source.to_owned(),
                created_at_ms: ms_of(row.get(1)),
            })
        })
        .await
    }

    async fn pending_triggers(&self, job: &str) -> Result<Vec<TriggerRecord>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT id, source, created_at FROM triggers
                     WHERE job = $1 AND run_id IS NULL ORDER BY id",
                )
                .await?;
            let rows = client.query(&statement, &[&job]).await?;
            Ok(rows.iter().map(|row| trigger_of(job, row)).collect())
        })
        .await
    }

    async fn pending_count(&self, job: &str) -> Result<u64> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached("SELECT count(*) FROM triggers WHERE job = $1 AND run_id IS NULL")
                .await?;
            let count: i64 = client.query_one(&statement, &[&job]).await?.get(0);
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn start_run(&self, run: &NewRun<'_>) -> Result<StartedRun> {
        let lease_ms = i64::try_from(run.lease.as_millis()).unwrap_or(i64::MAX);
        let abandon_errors = json_text(&[ABANDONED])?;
        self.with_client(async |client| {
            // One round trip: the steps are the `start_run` function of migration 4.
            let statement = client
                .prepare_cached("SELECT * FROM start_run($1, $2, $3, $4, $5, $6::text::jsonb, $7)")
                .await?;
            let rows = client
                .query(
                    &statement,
                    &[
                        &run.job,
                        &run.trigger,
                        &run.tier,
                        &run.worker,
                        &lease_ms,
                        &abandon_errors,
                        &run.for_triggers,
                    ],
                )
                .await?;
            let first = rows
                .first()
                .ok_or_else(|| StoreError::Internal("start_run answered nothing".into()))?;
            let outcome: &str = first.get(0);
            match outcome {
                "started" => {
                    let mut triggers: Vec<TriggerRecord> = rows
                        .iter()
                        .filter(|row| row.get::<_, Option<i64>>(5).is_some())
                        .map(|row| TriggerRecord {
                            id: row.get(5),
                            job: run.job.to_owned(),
                            source: row.get(6),
                            created_at_ms: ms_of(row.get(7)),
                        })
                        .collect();
                    triggers.sort_by_key(|trigger| trigger.id);
                    Ok(StartedRun::Started {
                        run_id: first.get(1),
                        started_at_ms: ms_of(first.get(2)),
                        tier: first.get(3),
                        triggers,
                        abandoned: first.get(4),
                    })
                }
                "busy" => Ok(StartedRun::Busy {
                    running: first.get(1),
                }),
                "nothing" => Ok(StartedRun::NothingPending),
                _ => Err(StoreError::Unavailable(format!(
                    "runs of job {:?} started and finished too quickly to start another",
                    run.job
                ))),
            }
        })
        .await
    }

    async fn heartbeat(&self, run_id: i64, worker: &str) -> Result<bool> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "UPDATE runs SET heartbeat_at = date_trunc('milliseconds', clock_timestamp())
                     WHERE id = $1 AND worker = $2 AND status = 'running'",
                )
                .await?;
            Ok(client.execute(&statement, &[&run_id, &worker]).await? == 1)
        })
        .await
    }

    async fn append_log(&self, run_id: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.with_client(async |client| {
            let ats: Vec<SystemTime> = lines.iter().map(|line| at(line.at_ms)).collect();
            let levels: Vec<&str> = lines.iter().map(|line| line.level.as_str()).collect();
            let messages: Vec<&str> = lines.iter().map(|line| line.message.as_str()).collect();
            // `seq` is an identity, taken in the order the rows are inserted: the lines' order.
            let statement = client
                .prepare_cached(
                    "INSERT INTO run_log (run_id, at, level, message)
                     SELECT $1, l.at, l.level, l.message
                     FROM unnest($2::timestamptz[], $3::text[], $4::text[])
                          WITH ORDINALITY AS l (at, level, message, n)
                     ORDER BY l.n",
                )
                .await?;
            client
                .execute(&statement, &[&run_id, &ats, &levels, &messages])
                .await?;
            Ok(())
        })
        .await
    }

    async fn finish_run(
        &self,
        run_id: i64,
        worker: &str,
        finished: &FinishedRun<'_>,
    ) -> Result<bool> {
        check_final_status(finished.status)?;
        let counts = json_text(finished.counts)?;
        let errors = json_text(finished.errors)?;
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let statement = tx
                .prepare_cached(
                    "UPDATE runs
                     SET status = $3, finished_at = c.now_at,
                         duration_ms = greatest(0,
                           round(extract(epoch FROM c.now_at - started_at) * 1000))::bigint,
                         counts = $4::text::jsonb, errors = $5::text::jsonb
                     FROM (SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at) AS c
                     WHERE id = $1 AND worker = $2 AND status = 'running'
                     RETURNING job",
                )
                .await?;
            let Some(row) = tx
                .query_opt(
                    &statement,
                    &[&run_id, &worker, &finished.status, &counts, &errors],
                )
                .await?
            else {
                tx.rollback().await?;
                return Ok(false);
            };
            let job: String = row.get(0);
            save_cadence(&tx, &job, finished.cadence).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn runs(&self, query: &RunQuery) -> Result<Vec<SyncRun>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                     WHERE ($1::text IS NULL OR job = $1) AND ($2::bigint IS NULL OR id < $2)
                       AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR trigger = $4)
                       AND ($5::timestamptz IS NULL OR started_at >= $5)
                       AND ($6::timestamptz IS NULL OR started_at < $6)
                     ORDER BY id DESC LIMIT $7"
                ))
                .await?;
            // `at` reads a time before 1970 as 1970; no run started before its store existed,
            // so the answer is the same.
            let rows = client
                .query(
                    &statement,
                    &[
                        &query.job,
                        &query.before,
                        &query.status,
                        &query.trigger,
                        &query.since_ms.map(at),
                        &query.until_ms.map(at),
                        &i64::from(query.limit),
                    ],
                )
                .await?;
            rows.iter().map(run_of).collect()
        })
        .await
    }

    async fn run(&self, id: i64) -> Result<Option<SyncRun>> {
        self.with_client(async |client| {
            // One snapshot for the run and its lines, so they agree.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let statement = tx
                .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                .await?;
            let Some(row) = tx.query_opt(&statement, &[&id]).await? else {
                return Ok(None);
            };
            let mut run = run_of(&row)?;
            let statement = tx
                .prepare_cached(
                    "SELECT at, level, message FROM run_log WHERE run_id = $1 ORDER BY seq",
                )
                .await?;
            let lines = tx.query(&statement, &[&id]).await?;
            tx.commit().await?;
            run.log = Some(
                lines
                    .iter()
                    .map(|line| RunLogLine {
                        at: format_ms(ms_of(line.get(0))),
                        level: line.get(1),
                        message: line.get(2),
                    })
                    .collect(),
            );
            Ok(Some(run))
        })
        .await
    }

    async fn running(&self, job: &str) -> Result<Option<SyncRun>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND status = 'running'"
                ))
                .await?;
            client
                .query_opt(&statement, &[&job])
                .await?
                .map(|row| run_of(&row))
                .transpose()
        })
        .await
    }

    async fn prune_runs(&self, before_ms: i64) -> Result<u64> {
        self.with_client(async |client| {
            // The runs' log lines and the triggers they ran go with them (ON DELETE CASCADE).
            let statement = client
                .prepare_cached("DELETE FROM runs WHERE status <> 'running' AND finished_at < $1")
                .await?;
            Ok(client.execute(&statement, &[&at(before_ms)]).await?)
        })
        .await
    }

    async fn report_listener(&self, worker: &str, state: &ListenerState) -> Result<()> {
        let last_ping = state.last_ping_at.as_deref().map(ping_time).transpose()?;
        self.with_client(async |client| {
            // `reported_at` keeps the clock's full precision: it only orders reports.
            let statement = client
                .prepare_cached(
                    "INSERT INTO workers (id, listener_connected, last_ping_at, reported_at)
                     VALUES ($1, $2, $3, clock_timestamp())
                     ON CONFLICT (id) DO UPDATE SET
                       listener_connected = excluded.listener_connected,
                       last_ping_at = excluded.last_ping_at,
                       reported_at = excluded.reported_at",
                )
                .await?;
            client
                .execute(&statement, &[&worker, &state.connected, &last_ping])
                .await?;
            Ok(())
        })
        .await
    }

    async fn listener(&self) -> Result<Option<ListenerState>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT listener_connected, last_ping_at FROM workers
                     ORDER BY reported_at DESC, id LIMIT 1",
                )
                .await?;
            Ok(client
                .query_opt(&statement, &[])
                .await?
                .map(|row| ListenerState {
                    connected: row.get(0),
                    last_ping_at: text_of(row.get(1)),
                }))
        })
        .await
    }
}

async fn save_cadence(
    client: &impl GenericClient,
    job: &str,
    cadence: &CadenceRecord,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO job_cadence (job, tier, demotion_toward, demotion_streak, pinned_tier,
                                      pinned_until, next_run_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, date_trunc('milliseconds', clock_timestamp()))
             ON CONFLICT (job) DO UPDATE SET
               tier = excluded.tier,
               demotion_toward = excluded.demotion_toward,
               demotion_streak = excluded.demotion_streak,
               pinned_tier = excluded.pinned_tier,
               pinned_until = excluded.pinned_until,
               next_run_at = excluded.next_run_at,
               updated_at = excluded.updated_at",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &job,
                &cadence.tier,
                &cadence.demotion_toward,
                &i32::try_from(cadence.demotion_streak).unwrap_or(i32::MAX),
                &cadence.pinned_tier,
                &cadence.pinned_until_ms.map(at),
                &cadence.next_run_at_ms.map(at),
            ],
        )
        .await?;
    Ok(())
}

/// A trigger row read as `id, source, created_at`.
fn trigger_of(job: &str, row: &Row) -> TriggerRecord {
    TriggerRecord {
        id: row.get(0),
        job: job.to_owned(),
        source: row.get(1),
        created_at_ms: ms_of(row.get(2)),
    }
}

/// A run row read as [`RUN_COLUMNS`], without its log lines.
fn run_of(row: &Row) -> Result<SyncRun> {
    let started_at: SystemTime = row.get(5);
    let counts: String = row.get(8);
    let errors: String = row.get(9);
    Ok(SyncRun {
        id: row.get(0),
        job: row.get(1),
        trigger: row.get(2),
        tier: row.get(3),
        status: row.get(4),
        started_at: format_ms(ms_of(started_at)),
        finished_at: text_of(row.get(6)),
        duration_ms: row.get(7),
        counts: from_json_text(&counts)?,
        errors: from_json_text(&errors)?,
        log: None,
        events: None,
    })
}

/// A reported ping time, which is the contract's timestamp text.
fn ping_time(text: &str) -> Result<SystemTime> {
    parse_ms(text).map(at).ok_or_else(|| {
        StoreError::Internal(format!(
            "the listener's last ping {text:?} is not a timestamp"
        ))
    })
}

/// A trigger notification's payload, as `create_trigger` builds it.
#[derive(Deserialize)]
struct Payload {
    trigger_id: i64,
    job: String,
    source: String,
}

/// A `LISTEN` connection of its own (a pooled connection would be recycled, and would
/// receive notifications only while checked out). A task drives the connection and forwards
/// notifications; when the connection ends, the task ends and [`TriggerListener::next`]
/// reports the line broken.
struct PgListener {
    client: tokio_postgres::Client,
    wakeups: mpsc::Receiver<Result<Wakeup>>,
    ping_timeout: Duration,
}

impl PgListener {
    async fn open(pool_config: &tokio_postgres::Config) -> Result<PgListener> {
        let mut config = pool_config.clone();
        config.application_name(LISTENER_APPLICATION);
        let ping_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        let (sender, wakeups) = mpsc::channel(LISTENER_BACKLOG);
        tokio::spawn(forward_notifications(connection, sender));
        // The connection is driven by the task above, so this completes; once it has, every
        // trigger committed later wakes this listener.
        client
            .batch_execute(&format!("LISTEN {TRIGGER_CHANNEL}"))
            .await?;
        Ok(PgListener {
            client,
            wakeups,
            ping_timeout,
        })
    }
}

type ListenerConnection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Drives the listener's connection until it ends, forwarding its notifications.
async fn forward_notifications(
    mut connection: ListenerConnection,
    sender: mpsc::Sender<Result<Wakeup>>,
) {
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        let wakeup = match message {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                match serde_json::from_str::<Payload>(notification.payload()) {
                    Ok(payload) => Ok(Wakeup {
                        trigger_id: payload.trigger_id,
                        job: payload.job,
                        source: payload.source,
                    }),
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            payload = notification.payload(),
                            "Skipped a trigger notification that is not a trigger's JSON."
                        );
                        continue;
                    }
                }
            }
            // Notices and any future kind of message carry no trigger.
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                // Best effort: a full queue already holds wake-ups, and the closed channel
                // tells the listener the line broke anyway.
                let _ = sender.try_send(Err(StoreError::Unavailable(format!(
                    "the trigger listener's connection broke: {error}"
                ))));
                return;
            }
            None => return,
        };
        match sender.try_send(wakeup) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("Dropped a trigger wake-up: the listener has enough queued.");
            }
            // The listener was dropped; returning drops the connection, which closes it.
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[async_trait]
impl TriggerListener for PgListener {
    async fn next(&mut self) -> Result<Wakeup> {
        self.wakeups.recv().await.unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "the trigger listener's connection closed".into(),
            ))
        })
    }

    async fn ping(&mut self) -> Result<()> {
        match tokio::time::timeout(self.ping_timeout, self.client.simple_query("SELECT 1")).await {
            Ok(answer) => answer.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the trigger listener's connection did not answer a ping within {:?}",
                self.ping_timeout
            ))),
        }
    }
}
