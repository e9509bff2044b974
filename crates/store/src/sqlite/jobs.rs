//! The sync worker's durable state on SQLite (see [`crate::jobs`]).
//!
//! Every write is one `IMMEDIATE` transaction, so a `start_run` that reads the job's running
//! run and then inserts its own cannot interleave with another one, in this process or in
//! another on the same file; the unique partial index `runs_one_running` backs that up.
//! Wake-ups travel on an in-process channel, sent after the trigger's transaction commits.

use std::time::Duration;

use async_trait::async_trait;
use ferry_core::time::{format_ms, now_ms, parse_ms};
use ferry_proto::worker::{ListenerState, RunLogLine, SyncRun};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::SqliteStore;
use crate::jobs::{ABANDONED, check_final_status, from_json_text, json_text};
use crate::jobs::{
    CadenceRecord, FinishedRun, JobStore, LogLine, NewRun, RunQuery, StartedRun, TriggerListener,
    TriggerRecord, Wakeup,
};
use crate::{Result, StoreError, StoreEvent};

/// The columns [`run_of`] reads, in its order.
const RUN_COLUMNS: &str =
    "id, job, trigger, tier, status, started_at, finished_at, duration_ms, counts, errors";

#[async_trait]
impl JobStore for SqliteStore {
    async fn clock_ms(&self) -> Result<i64> {
        Ok(now_ms())
    }

    async fn listen(&self) -> Result<Box<dyn TriggerListener>> {
        Ok(Box::new(SqliteListener {
            wakeups: self.inner.wakeups.subscribe(),
        }))
    }

    async fn cadence(&self, job: &str) -> Result<Option<CadenceRecord>> {
        let job = job.to_owned();
        self.blocking(move |s| s.read(|tx| cadence(tx, &job))).await
    }

    async fn save_cadence(&self, job: &str, cadence: &CadenceRecord) -> Result<()> {
        let (job, cadence) = (job.to_owned(), cadence.clone());
        self.blocking(move |s| {
            s.write(|tx| save_cadence(tx, &job, &cadence, now_ms()))?;
            s.publish(StoreEvent::State { job });
            Ok(())
        })
        .await
    }

    async fn create_trigger(&self, job: &str, source: &str) -> Result<TriggerRecord> {
        let (job, source) = (job.to_owned(), source.to_owned());
        self.blocking(move |s| {
            let trigger = s.write(|tx| create_trigger(tx, &job, &source, now_ms()))?;
            // Sent after the commit, so a woken worker finds the trigger stored. No
            // listener (no worker in this process) is fine: the trigger waits in the table.
            let _ = s.wakeups.send(Wakeup {
                trigger_id: trigger.id,
                job: trigger.job.clone(),
                source: trigger.source.clone(),
            });
            s.publish(StoreEvent::State {
                job: trigger.job.clone(),
            });
            Ok(trigger)
        })
        .await
    }

    async fn pending_triggers(&self, job: &str) -> Result<Vec<TriggerRecord>> {
        let job = job.to_owned();
        self.blocking(move |s| s.read(|tx| pending_triggers(tx, &job)))
            .await
    }

    async fn pending_count(&self, job: &str) -> Result<u64> {
        let job = job.to_owned();
        self.blocking(move |s| {
            s.read(|tx| {
                let count: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM triggers WHERE job = ?1 AND run_id IS NULL",
                    )?
                    .query_row([&job], |r| r.get(0))?;
                Ok(u64::try_from(count).unwrap_or(0))
            })
        })
        .await
    }

    async fn start_run(&self, run: &NewRun<'_>) -> Result<StartedRun> {
        let run = OwnedNewRun::of(run);
        self.blocking(move |s| {
            let started = s.write(|tx| start_run(tx, &run, now_ms()))?;
            if let StartedRun::Started {
                run_id, abandoned, ..
            } = &started
            {
                for id in abandoned.iter().chain([run_id]) {
                    s.publish(StoreEvent::Run {
                        id: *id,
                        job: run.job.clone(),
                    });
                }
                s.publish(StoreEvent::State {
                    job: run.job.clone(),
                });
            }
            Ok(started)
        })
        .await
    }

    async fn heartbeat(&self, run_id: i64, worker: &str) -> Result<bool> {
        let worker = worker.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE runs SET heartbeat_at = ?3
                         WHERE id = ?1 AND worker = ?2 AND status = 'running'",
                    )?
                    .execute(params![run_id, worker, format_ms(now_ms())])?;
                Ok(changed == 1)
            })
        })
        .await
    }

    async fn append_log(&self, run_id: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let lines = lines.to_vec();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO run_log (run_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for line in &lines {
                    insert.execute(params![
                        run_id,
                        format_ms(line.at_ms),
                        line.level,
                        line.message
                    ])?;
                }
                Ok(())
            })
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
        let worker = worker.to_owned();
        let finish = Finish {
            status: finished.status.to_owned(),
            counts: json_text(finished.counts)?,
            errors: json_text(finished.errors)?,
            cadence: finished.cadence.clone(),
        };
        self.blocking(move |s| {
            let Some(job) = s.write(|tx| finish_run(tx, run_id, &worker, &finish, now_ms()))?
            else {
                return Ok(false);
            };
            s.publish(StoreEvent::Run {
                id: run_id,
                job: job.clone(),
            });
            s.publish(StoreEvent::State { job });
            Ok(true)
        })
        .await
    }

    async fn runs(&self, query: &RunQuery) -> Result<Vec<SyncRun>> {
        let query = query.clone();
        self.blocking(move |s| {
            s.read(|tx| {
                // `started_at` is fixed-width RFC 3339 text, which sorts as time does, so the
                // time bounds compare as text in the same format.
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                     WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR id < ?2)
                       AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR trigger = ?4)
                       AND (?5 IS NULL OR started_at >= ?5) AND (?6 IS NULL OR started_at < ?6)
                     ORDER BY id DESC LIMIT ?7"
                ))?;
                let rows = statement.query_map(
                    params![
                        query.job,
                        query.before,
                        query.status,
                        query.trigger,
                        query.since_ms.map(format_ms),
                        query.until_ms.map(format_ms),
                        i64::from(query.limit)
                    ],
                    run_row,
                )?;
                rows.map(|row| run_of(row?)).collect()
            })
        })
        .await
    }

    async fn run(&self, id: i64) -> Result<Option<SyncRun>> {
        self.blocking(move |s| s.read(|tx| run_with_log(tx, id)))
            .await
    }

    async fn running(&self, job: &str) -> Result<Option<SyncRun>> {
        let job = job.to_owned();
        self.blocking(move |s| {
            s.read(|tx| {
                tx.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE job = ?1 AND status = 'running'"
                ))?
                .query_row([job], run_row)
                .optional()?
                .map(run_of)
                .transpose()
            })
        })
        .await
    }

    async fn prune_runs(&self, before_ms: i64) -> Result<u64> {
        self.blocking(move |s| {
            s.write(|tx| {
                // The runs' log lines and the triggers they ran go with them (ON DELETE
                // CASCADE; every connection turns foreign keys on).
                let deleted = tx.execute(
                    "DELETE FROM runs WHERE status <> 'running' AND finished_at < ?1",
                    [format_ms(before_ms)],
                )?;
                Ok(deleted as u64)
            })
        })
        .await
    }

    async fn report_listener(&self, worker: &str, state: &ListenerState) -> Result<()> {
        let worker = worker.to_owned();
        let connected = state.connected;
        let last_ping = state
            .last_ping_at
            .as_deref()
            .map(|text| {
                parse_ms(text).map(format_ms).ok_or_else(|| {
                    StoreError::Internal(format!(
                        "the listener's last ping {text:?} is not a timestamp"
                    ))
                })
            })
            .transpose()?;
        self.blocking(move |s| {
            let changed = s.write(|tx| {
                let before: Option<bool> = tx
                    .prepare_cached("SELECT listener_connected FROM workers WHERE id = ?1")?
                    .query_row([&worker], |r| r.get(0))
                    .optional()?;
                // REPLACE gives the row a new rowid, which orders reports even within one
                // millisecond (writes are serialized).
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO workers (id, listener_connected, last_ping_at,
                                                     reported_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    worker,
                    connected,
                    last_ping,
                    format_ms(now_ms())
                ])?;
                Ok(before != Some(connected))
            })?;
            if changed {
                s.publish(StoreEvent::Listener);
            }
            Ok(())
        })
        .await
    }

    async fn listener(&self) -> Result<Option<ListenerState>> {
        self.blocking(|s| {
            s.read(|tx| {
                Ok(tx
                    .prepare_cached(
                        "SELECT listener_connected, last_ping_at FROM workers
                         ORDER BY rowid DESC LIMIT 1",
                    )?
                    .query_row([], |r| {
                        Ok(ListenerState {
                            connected: r.get(0)?,
                            last_ping_at: r.get(1)?,
                        })
                    })
                    .optional()?)
            })
        })
        .await
    }
}

/// [`NewRun`] owned, to cross onto the blocking pool.
struct OwnedNewRun {
    job: String,
    trigger: String,
    tier: String,
    worker: String,
    lease: Duration,
    for_triggers: bool,
}

impl OwnedNewRun {
    fn of(run: &NewRun<'_>) -> OwnedNewRun {
        OwnedNewRun {
            job: run.job.to_owned(),
            trigger: run.trigger.to_owned(),
            tier: run.tier.to_owned(),
            worker: run.worker.to_owned(),
            lease: run.lease,
            for_triggers: run.for_triggers,
        }
    }
}

/// [`FinishedRun`] owned and encoded, to cross onto the blocking pool.
struct Finish {
    status: String,
    counts: String,
    errors: String,
    cadence: CadenceRecord,
}

fn cadence(conn: &Connection, job: &str) -> Result<Option<CadenceRecord>> {
    let found = conn
        .prepare_cached(
            "SELECT tier, demotion_toward, demotion_streak, pinned_tier, pinned_until,
                    next_run_at
             FROM job_cadence WHERE job = ?1",
        )?
        .query_row([job], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .optional()?;
    let Some((tier, demotion_toward, streak, pinned_tier, pinned_until, next_run_at)) = found
    else {
        return Ok(None);
    };
    Ok(Some(CadenceRecord {
        tier,
        demotion_toward,
        demotion_streak: u32::try_from(streak).unwrap_or(0),
        pinned_tier,
        pinned_until_ms: pinned_until.as_deref().map(stored_time).transpose()?,
        next_run_at_ms: next_run_at.as_deref().map(stored_time).transpose()?,
    }))
}

fn save_cadence(conn: &Connection, job: &str, cadence: &CadenceRecord, now_ms: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO job_cadence (job, tier, demotion_toward, demotion_streak, pinned_tier,
                                  pinned_until, next_run_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (job) DO UPDATE SET
           tier = excluded.tier,
           demotion_toward = excluded.demotion_toward,
           demotion_streak = excluded.demotion_streak,
           pinned_tier = excluded.pinned_tier,
           pinned_until = excluded.pinned_until,
           next_run_at = excluded.next_run_at,
           updated_at = excluded.updated_at",
    )?
    .execute(params![
        job,
        cadence.tier,
        cadence.demotion_toward,
        cadence.demotion_streak,
        cadence.pinned_tier,
        cadence.pinned_until_ms.map(format_ms),
        cadence.next_run_at_ms.map(format_ms),
        format_ms(now_ms),
    ])?;
    Ok(())
}

fn create_trigger(
    conn: &Connection,
    job: &str,
    source: &str,
    now_ms: i64,
) -> Result<TriggerRecord> {
    conn.prepare_cached("INSERT INTO triggers (job, source, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![job, source, format_ms(now_ms)])?;
    Ok(TriggerRecord {
        id: conn.last_insert_rowid(),
        job: job.to_owned(),
        source: source.to_owned(),
        created_at_ms: now_ms,
    })
}

fn pending_triggers(conn: &Connection, job: &str) -> Result<Vec<TriggerRecord>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, source, created_at FROM triggers
         WHERE job = ?1 AND run_id IS NULL ORDER BY id",
    )?;
    let rows = statement.query_map([job], trigger_row)?;
    rows.map(|row| trigger_of(job, row?)).collect()
}

/// Must run in a write transaction (see the module's comment). The job's running run, if
/// any, is either live, and the answer is busy with nothing written, or stale, and it is
/// abandoned (its triggers released) before the new run is inserted and claims every
/// pending trigger. The write lock means nothing can start a run in between, so busy after
/// an abandon cannot happen here.
fn start_run(conn: &Connection, run: &OwnedNewRun, now_ms: i64) -> Result<StartedRun> {
    let now = format_ms(now_ms);
    let mut tier = run.tier.clone();
    if run.for_triggers {
        let pending = conn
            .prepare_cached("SELECT 1 FROM triggers WHERE job = ?1 AND run_id IS NULL LIMIT 1")?
            .query_row([&run.job], |_| Ok(()))
            .optional()?;
        if pending.is_none() {
            return Ok(StartedRun::NothingPending);
        }
        // The pinned tier while a pin lasts, else active.
        tier = match cadence(conn, &run.job)? {
            Some(CadenceRecord {
                pinned_tier: Some(pinned),
                pinned_until_ms: Some(until),
                ..
            }) if until > now_ms => pinned,
            _ => "active".to_owned(),
        };
    }
    let lease_ms = i64::try_from(run.lease.as_millis()).unwrap_or(i64::MAX);
    let cutoff = format_ms(now_ms.saturating_sub(lease_ms));
    let running: Option<(i64, String)> = conn
        .prepare_cached("SELECT id, heartbeat_at FROM runs WHERE job = ?1 AND status = 'running'")?
        .query_row([&run.job], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut abandoned = Vec::new();
    if let Some((running, heartbeat_at)) = running {
        if heartbeat_at >= cutoff {
            return Ok(StartedRun::Busy { running });
        }
        conn.prepare_cached(
            "UPDATE runs SET status = 'abandoned', finished_at = ?2, errors = ?3 WHERE id = ?1",
        )?
        .execute(params![running, now, json_text(&[ABANDONED])?])?;
        conn.prepare_cached("UPDATE triggers SET run_id = NULL WHERE run_id = ?1")?
            .execute([running])?;
        abandoned.push(running);
    }

    conn.prepare_cached(
        "INSERT INTO runs (job, trigger, tier, status, worker, started_at, heartbeat_at)
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5)",
    )?
    .execute(params![run.job, run.trigger, tier, run.worker, now])?;
    let run_id = conn.last_insert_rowid();

    let mut claim = conn.prepare_cached(
        "UPDATE triggers SET run_id = ?2 WHERE job = ?1 AND run_id IS NULL
         RETURNING id, source, created_at",
    )?;
    let mut triggers = claim
        .query_map(params![run.job, run_id], trigger_row)?
        .map(|row| trigger_of(&run.job, row?))
        .collect::<Result<Vec<_>>>()?;
    triggers.sort_by_key(|trigger| trigger.id);
    Ok(StartedRun::Started {
        run_id,
        started_at_ms: now_ms,
        tier,
        triggers,
        abandoned,
    })
}

/// Must run in a write transaction: the check that the run is still this worker's, the
/// finish and the cadence commit together. Writes nothing when the check fails.
fn finish_run(
    conn: &Connection,
    run_id: i64,
    worker: &str,
    finish: &Finish,
    now_ms: i64,
) -> Result<Option<String>> {
    let found: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT job, started_at FROM runs
             WHERE id = ?1 AND worker = ?2 AND status = 'running'",
        )?
        .query_row(params![run_id, worker], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((job, started_at)) = found else {
        return Ok(None);
    };
    let duration_ms = now_ms.saturating_sub(stored_time(&started_at)?).max(0);
    conn.prepare_cached(
        "UPDATE runs SET status = ?2, finished_at = ?3, duration_ms = ?4, counts = ?5,
                         errors = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        run_id,
        finish.status,
        format_ms(now_ms),
        duration_ms,
        finish.counts,
        finish.errors
    ])?;
    save_cadence(conn, &job, &finish.cadence, now_ms)?;
    Ok(Some(job))
}

fn run_with_log(conn: &Connection, id: i64) -> Result<Option<SyncRun>> {
    let Some(row) = conn
        .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
        .query_row([id], run_row)
        .optional()?
    else {
        return Ok(None);
    };
    let mut run = run_of(row)?;
    let mut statement = conn
        .prepare_cached("SELECT at, level, message FROM run_log WHERE run_id = ?1 ORDER BY seq")?;
    let lines = statement.query_map([id], |r| {
        Ok(RunLogLine {
            at: r.get(0)?,
            level: r.get(1)?,
            message: r.get(2)?,
        })
    })?;
    run.log = Some(lines.collect::<rusqlite::Result<_>>()?);
    Ok(Some(run))
}

/// A trigger row as read by `SELECT id, source, created_at`.
type TriggerRow = (i64, String, String);

fn trigger_row(r: &Row<'_>) -> rusqlite::Result<TriggerRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn trigger_of(job: &str, (id, source, created_at): TriggerRow) -> Result<TriggerRecord> {
    Ok(TriggerRecord {
        id,
        job: job.to_owned(),
        source,
        created_at_ms: stored_time(&created_at)?,
    })
}

/// A run row as read by `SELECT RUN_COLUMNS`, before its JSON is decoded.
struct RunRow {
    id: i64,
    job: String,
    trigger: String,
    tier: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
    counts: String,
    errors: String,
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        tier: r.get(3)?,
        status: r.get(4)?,
        started_at: r.get(5)?,
        finished_at: r.get(6)?,
        duration_ms: r.get(7)?,
        counts: r.get(8)?,
        errors: r.get(9)?,
    })
}

fn run_of(row: RunRow) -> Result<SyncRun> {
    Ok(SyncRun {
        id: row.id,
        job: row.job,
        trigger: row.trigger,
        tier: row.tier,
        status: row.status,
        started_at: row.started_at,
        finished_at: row.finished_at,
        duration_ms: row.duration_ms,
        counts: from_json_text(&row.counts)?,
        errors: from_json_text(&row.errors)?,
        log: None,
        events: None,
    })
}

/// A stored timestamp's milliseconds.
fn stored_time(text: &str) -> Result<i64> {
    parse_ms(text)
        .ok_or_else(|| StoreError::Internal(format!("a stored time {text:?} is not a timestamp")))
}

/// A subscription to the store's in-process wake-ups.
struct SqliteListener {
    wakeups: broadcast::Receiver<Wakeup>,
}

impl SqliteListener {
    /// After falling behind: the newest wake-up still queued, if any. The skipped ones only
    /// said "drain the triggers", which the newest one says too.
    fn latest(&mut self) -> Option<Wakeup> {
        let mut latest = None;
        loop {
            match self.wakeups.try_recv() {
                Ok(wakeup) => latest = Some(wakeup),
                Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => return latest,
            }
        }
    }
}

#[async_trait]
impl TriggerListener for SqliteListener {
    async fn next(&mut self) -> Result<Wakeup> {
        loop {
            match self.wakeups.recv().await {
                Ok(wakeup) => return Ok(wakeup),
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        "A trigger listener fell behind; skipped to the latest wake-up."
                    );
                    if let Some(wakeup) = self.latest() {
                        return Ok(wakeup);
                    }
                }
                Err(RecvError::Closed) => {
                    return Err(StoreError::Unavailable("the store was closed".into()));
                }
            }
        }
    }

    async fn ping(&mut self) -> Result<()> {
        Ok(())
    }
}
