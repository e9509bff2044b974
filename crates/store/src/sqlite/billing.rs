//! The billing job's durable state on SQLite (see [`crate::billing`]).
//!
//! Every write is one `IMMEDIATE` transaction: a ledger write's revision checks and its writes
//! cannot interleave with another writer's, in this process or in another on the same file.
//! Times are INTEGER milliseconds since the Unix epoch (see migration 3); the store's clock is
//! the process's, read once per transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use ferry_core::time::now_ms;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};

use super::SqliteStore;
use crate::Result;
use crate::billing::{
    BillingCursor, BillingStore, EventRecord, EventStatus, IGNORED_REASON, LedgerWrite,
    LedgerWritten, MappingRecord, NewEvent, NewMapping, ReviewAction, Reviewed, SessionQuery,
    SessionRecord, SessionState, SessionWrite, Settled, Settlement, distinct_mappings,
    fold_settlements,
};

/// The columns [`session_of`] reads, in its order.
const SESSION_COLUMNS: &str = "id, charge_box_id, connector_id, id_tag, started_at, stopped_at, \
     start_mwh, stop_mwh, planned_wh, billed_wh, state, reason, approved, revision, updated_at";

/// The columns [`event_of`] reads, in its order.
const EVENT_COLUMNS: &str = "transaction_id, session_id, seq, customer, subscription, code, \
     timestamp, wh, properties, status, error, attempts, created_run, settled_run, created_at, \
     settled_at";

#[async_trait]
impl BillingStore for SqliteStore {
    async fn mappings(&self) -> Result<Vec<MappingRecord>> {
        self.blocking(|s| {
            s.read(|tx| {
                let mut statement = tx.prepare_cached(
                    "SELECT id_tag, customer, subscription, updated_at FROM billing_mappings
                     ORDER BY id_tag",
                )?;
                let rows = statement.query_map([], mapping_of)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
        })
        .await
    }

    async fn put_mapping(&self, mapping: &NewMapping) -> Result<MappingRecord> {
        let mapping = mapping.clone();
        self.blocking(move |s| s.write(|tx| put_mapping(tx, &mapping, now_ms())))
            .await
    }

    async fn delete_mapping(&self, id_tag: &str) -> Result<bool> {
        let id_tag = id_tag.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let deleted = tx
                    .prepare_cached("DELETE FROM billing_mappings WHERE id_tag = ?1")?
                    .execute([&id_tag])?;
                Ok(deleted == 1)
            })
        })
        .await
    }

    async fn import_mappings(&self, mappings: &[NewMapping]) -> Result<u64> {
        let mappings = mappings.to_vec();
        self.blocking(move |s| {
            s.write(|tx| {
                let now = now_ms();
                let distinct = distinct_mappings(&mappings);
                for mapping in &distinct {
                    put_mapping(tx, mapping, now)?;
                }
                Ok(distinct.len() as u64)
            })
        })
        .await
    }

    async fn sessions(&self, ids: &[i64]) -> Result<Vec<SessionRecord>> {
        let ids = distinct(ids);
        self.blocking(move |s| {
            s.read(|tx| {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE id = ?1"
                ))?;
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(session) = statement.query_row([id], session_of).optional()? {
                        found.push(session);
                    }
                }
                Ok(found)
            })
        })
        .await
    }

    async fn open_sessions(&self) -> Result<Vec<SessionRecord>> {
        self.blocking(|s| {
            s.read(|tx| {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM billing_sessions
                     WHERE state IN ('active', 'parked', 'needs_review')
                       AND (state <> 'needs_review' OR approved)
                     ORDER BY id"
                ))?;
                let rows = statement.query_map([], session_of)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
        })
        .await
    }

    async fn write_ledger(
        &self,
        run_id: Option<i64>,
        write: &LedgerWrite,
    ) -> Result<LedgerWritten> {
        write.check()?;
        let write = write.clone();
        self.blocking(move |s| s.write(|tx| write_ledger(tx, run_id, &write, now_ms())))
            .await
    }

    async fn cursor(&self) -> Result<BillingCursor> {
        self.blocking(|s| {
            s.read(|tx| {
                let cursor = tx
                    .prepare_cached(
                        "SELECT window_end, last_sweep, last_activity, max_id FROM billing_cursor
                         WHERE id = 1",
                    )?
                    .query_row([], |r| {
                        Ok(BillingCursor {
                            window_end_ms: r.get(0)?,
                            last_sweep_ms: r.get(1)?,
                            last_activity_ms: r.get(2)?,
                            max_id: r.get(3)?,
                        })
                    })
                    .optional()?;
                Ok(cursor.unwrap_or_default())
            })
        })
        .await
    }

    async fn pending_events(&self, after: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let after = after.map(str::to_owned);
        self.blocking(move |s| {
            s.read(|tx| {
                // Two statements rather than `?1 IS NULL OR ...`, so each walks the partial
                // index from where the page starts.
                let limit = i64::from(limit);
                let events = match &after {
                    Some(after) => {
                        let mut statement = tx.prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM billing_events
                             WHERE status = 'pending' AND transaction_id > ?1
                             ORDER BY transaction_id LIMIT ?2"
                        ))?;
                        statement
                            .query_map(params![after, limit], event_of)?
                            .collect::<rusqlite::Result<_>>()?
                    }
                    None => {
                        let mut statement = tx.prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM billing_events
                             WHERE status = 'pending'
                             ORDER BY transaction_id LIMIT ?1"
                        ))?;
                        statement
                            .query_map([limit], event_of)?
                            .collect::<rusqlite::Result<_>>()?
                    }
                };
                Ok(events)
            })
        })
        .await
    }

    async fn settle_events(&self, run_id: i64, settled: &[Settlement]) -> Result<Settled> {
        if settled.is_empty() {
            return Ok(Settled::default());
        }
        let settled = settled.to_vec();
        self.blocking(move |s| s.write(|tx| settle_events(tx, run_id, &settled, now_ms())))
            .await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>> {
        let query = query.clone();
        self.blocking(move |s| {
            s.read(|tx| {
                // Only the filters given, so each combination gets the plan of its index.
                let mut sql = format!("SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE 1");
                let mut values = Vec::new();
                if let Some(state) = query.state {
                    values.push(Value::Text(state.as_str().to_owned()));
                    sql.push_str(&format!(" AND state = ?{}", values.len()));
                }
                if let Some(id_tag) = &query.id_tag {
                    values.push(Value::Text(id_tag.clone()));
                    sql.push_str(&format!(" AND id_tag = ?{}", values.len()));
                }
                if let Some(before) = query.before {
                    values.push(Value::Integer(before));
                    sql.push_str(&format!(" AND id < ?{}", values.len()));
                }
                values.push(Value::Integer(i64::from(query.limit)));
                sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", values.len()));
                let mut statement = tx.prepare_cached(&sql)?;
                let rows = statement.query_map(params_from_iter(values), session_of)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
        })
        .await
    }

    async fn session_events(&self, session_ids: &[i64]) -> Result<Vec<EventRecord>> {
        let ids = distinct(session_ids);
        self.blocking(move |s| {
            s.read(|tx| {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM billing_events WHERE session_id = ?1
                     ORDER BY seq, transaction_id"
                ))?;
                let mut events = Vec::new();
                for id in ids {
                    for event in statement.query_map([id], event_of)? {
                        events.push(event?);
                    }
                }
                Ok(events)
            })
        })
        .await
    }

    async fn run_events(&self, run_id: i64) -> Result<Vec<EventRecord>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM billing_events WHERE settled_run = ?1
                     ORDER BY transaction_id"
                ))?;
                let rows = statement.query_map([run_id], event_of)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
        })
        .await
    }

    async fn review(&self, id: i64, action: ReviewAction) -> Result<Reviewed> {
        self.blocking(move |s| s.write(|tx| review(tx, id, action, now_ms())))
            .await
    }
}

fn put_mapping(conn: &Connection, mapping: &NewMapping, now_ms: i64) -> Result<MappingRecord> {
    conn.prepare_cached(
        "INSERT INTO billing_mappings (id_tag, customer, subscription, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id_tag) DO UPDATE SET
           customer = excluded.customer,
           subscription = excluded.subscription,
           updated_at = excluded.updated_at",
    )?
    .execute(params![
        mapping.id_tag,
        mapping.customer,
        mapping.subscription,
        now_ms
    ])?;
    Ok(MappingRecord {
        id_tag: mapping.id_tag.clone(),
        customer: mapping.customer.clone(),
        subscription: mapping.subscription.clone(),
        updated_at_ms: now_ms,
    })
}

/// Must run in a write transaction: the revision checks hold until it commits.
fn write_ledger(
    conn: &Connection,
    run_id: Option<i64>,
    write: &LedgerWrite,
    now_ms: i64,
) -> Result<LedgerWritten> {
    // Sessions the planner saw no trace of are inserted many to a statement (a catch-up
    // inserts thousands); one the planner read is updated only at the revision it read.
    let (inserts, updates): (Vec<&SessionWrite>, Vec<&SessionWrite>) = write
        .sessions
        .iter()
        .partition(|w| w.expected_revision.is_none());
    let mut inserted: HashSet<i64> = HashSet::with_capacity(inserts.len());
    for rows in inserts.chunks(ROWS_PER_STATEMENT) {
        let mut statement = conn.prepare_cached(&format!(
            "INSERT INTO billing_sessions (id, charge_box_id, connector_id, id_tag, started_at,
                                           stopped_at, start_mwh, stop_mwh, planned_wh,
                                           billed_wh, state, reason, approved, revision,
                                           updated_at)
             VALUES {}
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
            tuples(rows.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 1, ?)")
        ))?;
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 13);
        for written in rows {
            let s = &written.session;
            values.extend(session_values(s, &now_ms));
        }
        let mut returned = statement.query(params_from_iter(values))?;
        while let Some(row) = returned.next()? {
            inserted.insert(row.get(0)?);
        }
    }
    let mut stale: Vec<i64> = inserts
        .iter()
        .map(|w| w.session.id)
        .filter(|id| !inserted.contains(id))
        .collect();
    let mut update = conn.prepare_cached(
        "UPDATE billing_sessions SET
           charge_box_id = ?2, connector_id = ?3, id_tag = ?4, started_at = ?5,
           stopped_at = ?6, start_mwh = ?7, stop_mwh = ?8, planned_wh = ?9, state = ?10,
           reason = ?11, approved = ?12, revision = revision + 1, updated_at = ?13
         WHERE id = ?1 AND revision = ?14",
    )?;
    for written in updates {
        let s = &written.session;
        let mut values: Vec<&dyn ToSql> = session_values(s, &now_ms).to_vec();
        values.push(&written.expected_revision);
        if update.execute(values.as_slice())? == 0 {
            stale.push(s.id);
        }
    }
    let stale_ids: HashSet<i64> = stale.iter().copied().collect();

    let events: Vec<&NewEvent> = write
        .events
        .iter()
        .filter(|e| !stale_ids.contains(&e.session_id))
        .collect();
    let mut events_inserted = 0;
    for rows in events.chunks(ROWS_PER_STATEMENT) {
        let mut statement =
            conn.prepare_cached(&format!(
            "INSERT INTO billing_events (transaction_id, session_id, seq, customer, subscription,
                                         code, timestamp, wh, properties, status, attempts,
                                         created_run, created_at)
             VALUES {}
             ON CONFLICT (transaction_id) DO NOTHING",
            tuples(rows.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)")
        ))?;
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 11);
        for event in rows {
            values.extend([
                &event.transaction_id as &dyn ToSql,
                &event.session_id,
                &event.seq,
                &event.customer,
                &event.subscription,
                &event.code,
                &event.timestamp_ms,
                &event.wh,
                &event.properties,
                &run_id,
                &now_ms,
            ]);
        }
        events_inserted += statement.execute(params_from_iter(values))? as u64;
    }

    let mut session_of_event =
        conn.prepare_cached("SELECT session_id FROM billing_events WHERE transaction_id = ?1")?;
    let mut resend = conn.prepare_cached(
        "UPDATE billing_events SET status = 'pending', error = NULL, settled_run = NULL,
                                   settled_at = NULL
         WHERE transaction_id = ?1 AND status = 'rejected'",
    )?;
    for transaction_id in &write.resend {
        if !stale_ids.is_empty() {
            let session: Option<i64> = session_of_event
                .query_row([transaction_id], |r| r.get(0))
                .optional()?;
            if session.is_some_and(|id| stale_ids.contains(&id)) {
                continue;
            }
        }
        resend.execute([transaction_id])?;
    }

    if let Some(cursor) = &write.cursor {
        conn.prepare_cached(
            "INSERT INTO billing_cursor
               (id, window_end, last_sweep, last_activity, max_id, updated_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET
               window_end = excluded.window_end,
               last_sweep = excluded.last_sweep,
               last_activity = excluded.last_activity,
               max_id = excluded.max_id,
               updated_at = excluded.updated_at",
        )?
        .execute(params![
            cursor.window_end_ms,
            cursor.last_sweep_ms,
            cursor.last_activity_ms,
            cursor.max_id,
            now_ms
        ])?;
    }
    Ok(LedgerWritten {
        stale,
        events_inserted,
    })
}

/// What settling a call's events does to one session.
#[derive(Default)]
struct SessionChange {
    billed_wh: i64,
    unplanned_wh: i64,
    /// The first rejection's reason; `None` when none of its events was rejected.
    reason: Option<String>,
}

/// Must run in a write transaction. Only pending events change (the `status = 'pending'`
/// condition), so a settlement seen twice does nothing the second time.
fn settle_events(
    conn: &Connection,
    run_id: i64,
    settled: &[Settlement],
    now_ms: i64,
) -> Result<Settled> {
    let folded = fold_settlements(settled);
    // Only rejections carry a reason; a catch-up settles thousands of deliveries per call.
    let reasons: HashMap<&str, &str> = folded
        .iter()
        .filter_map(|event| Some((event.transaction_id, event.reason.as_deref()?)))
        .collect();
    let mut out = Settled::default();
    let mut sessions: BTreeMap<i64, SessionChange> = BTreeMap::new();
    for rows in folded.chunks(ROWS_PER_STATEMENT) {
        let mut statement = conn.prepare_cached(&format!(
            "UPDATE billing_events SET status = v.column2, error = v.column3,
                                       attempts = attempts + v.column4,
                                       settled_run = v.column5, settled_at = v.column6
             FROM (VALUES {}) AS v
             WHERE billing_events.transaction_id = v.column1
               AND billing_events.status = 'pending'
             RETURNING billing_events.transaction_id, billing_events.session_id,
                       billing_events.status, billing_events.wh",
            tuples(rows.len(), "(?, ?, ?, ?, ?, ?)")
        ))?;
        let settled_now: Vec<(Option<i64>, Option<i64>)> = rows
            .iter()
            .map(|event| match event.status {
                EventStatus::Pending => (None, None),
                _ => (Some(run_id), Some(now_ms)),
            })
            .collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 6);
        for (event, (run, at)) in rows.iter().zip(&settled_now) {
            values.extend([
                &event.transaction_id as &dyn ToSql,
                &event.status,
                &event.error,
                &event.attempts,
                run,
                at,
            ]);
        }
        let mut changed = statement.query(params_from_iter(values))?;
        while let Some(row) = changed.next()? {
            let transaction_id: String = row.get(0)?;
            let session_id: i64 = row.get(1)?;
            let wh: i64 = row.get(3)?;
            match row.get::<_, EventStatus>(2)? {
                EventStatus::Pending => {}
                EventStatus::Delivered => {
                    out.delivered += 1;
                    sessions.entry(session_id).or_default().billed_wh += wh;
                }
                EventStatus::Rejected => {
                    out.rejected += 1;
                    let change = sessions.entry(session_id).or_default();
                    change.unplanned_wh += wh;
                    let reason = reasons.get(transaction_id.as_str()).copied();
                    change.reason = change.reason.take().or(reason.map(str::to_owned));
                }
            }
        }
    }

    // A rejection sends the session to review; a delivery only adds to what Lago has, which
    // no planner writes, so it leaves the revision alone.
    let changes: Vec<(i64, SessionChange)> = sessions.into_iter().collect();
    for rows in changes.chunks(ROWS_PER_STATEMENT) {
        let mut statement = conn.prepare_cached(&format!(
            "UPDATE billing_sessions SET
               billed_wh = billed_wh + v.column2,
               planned_wh = planned_wh - v.column3,
               state = CASE WHEN v.column4 IS NULL THEN state ELSE 'needs_review' END,
               reason = coalesce(v.column4, reason),
               approved = CASE WHEN v.column4 IS NULL THEN approved ELSE 0 END,
               revision = revision + (v.column4 IS NOT NULL),
               updated_at = v.column5
             FROM (VALUES {}) AS v
             WHERE billing_sessions.id = v.column1",
            tuples(rows.len(), "(?, ?, ?, ?, ?)")
        ))?;
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 5);
        for (id, change) in rows {
            values.extend([
                id as &dyn ToSql,
                &change.billed_wh,
                &change.unplanned_wh,
                &change.reason,
                &now_ms,
            ]);
        }
        statement.execute(params_from_iter(values))?;
        out.sessions_changed.extend(
            rows.iter()
                .filter(|(_, change)| change.reason.is_some())
                .map(|(id, _)| *id),
        );
    }
    Ok(out)
}

/// Must run in a write transaction: the state it checks is the state it changes.
fn review(conn: &Connection, id: i64, action: ReviewAction, now_ms: i64) -> Result<Reviewed> {
    let Some(session) = conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE id = ?1"
        ))?
        .query_row([id], session_of)
        .optional()?
    else {
        return Ok(Reviewed::NotFound);
    };
    if session.state != SessionState::NeedsReview {
        return Ok(Reviewed::NotInReview(session));
    }
    let sql = match action {
        ReviewAction::Bill => format!(
            "UPDATE billing_sessions SET approved = 1, revision = revision + 1, updated_at = ?2
             WHERE id = ?1 RETURNING {SESSION_COLUMNS}"
        ),
        ReviewAction::Ignore => format!(
            "UPDATE billing_sessions SET state = 'ignored', reason = ?3, approved = 0,
                                         revision = revision + 1, updated_at = ?2
             WHERE id = ?1 RETURNING {SESSION_COLUMNS}"
        ),
    };
    let mut statement = conn.prepare_cached(&sql)?;
    let session = match action {
        ReviewAction::Bill => statement.query_row(params![id, now_ms], session_of)?,
        ReviewAction::Ignore => {
            statement.query_row(params![id, now_ms, IGNORED_REASON], session_of)?
        }
    };
    Ok(Reviewed::Done(session))
}

/// Ids once each, ascending.
fn distinct(ids: &[i64]) -> Vec<i64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Rows per multi-row statement: a statement's fixed cost (preparing its cursors, stepping
/// into its program) is paid once for this many rows. Far below SQLite's bound-parameter
/// limit (32,766) at the widest row written here (13 parameters).
const ROWS_PER_STATEMENT: usize = 64;

/// `(?, ?), (?, ?)`: `tuple` repeated `rows` times, for a multi-row statement. A statement is
/// prepared (and cached) once per shape: a full chunk, and the last chunk's size.
fn tuples(rows: usize, tuple: &str) -> String {
    let mut out = String::with_capacity(rows * (tuple.len() + 2));
    for n in 0..rows {
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(tuple);
    }
    out
}

/// A session's columns in the order the insert and the update bind them (the update's `?1`
/// to `?13`).
fn session_values<'a>(s: &'a SessionRecord, now_ms: &'a i64) -> [&'a dyn ToSql; 13] {
    [
        &s.id,
        &s.charge_box_id,
        &s.connector_id,
        &s.id_tag,
        &s.started_at_ms,
        &s.stopped_at_ms,
        &s.start_mwh,
        &s.stop_mwh,
        &s.planned_wh,
        &s.state,
        &s.reason,
        &s.approved,
        now_ms,
    ]
}

fn mapping_of(r: &Row<'_>) -> rusqlite::Result<MappingRecord> {
    Ok(MappingRecord {
        id_tag: r.get(0)?,
        customer: r.get(1)?,
        subscription: r.get(2)?,
        updated_at_ms: r.get(3)?,
    })
}

/// A session row read as [`SESSION_COLUMNS`].
fn session_of(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        charge_box_id: r.get(1)?,
        connector_id: r.get(2)?,
        id_tag: r.get(3)?,
        started_at_ms: r.get(4)?,
        stopped_at_ms: r.get(5)?,
        start_mwh: r.get(6)?,
        stop_mwh: r.get(7)?,
        planned_wh: r.get(8)?,
        billed_wh: r.get(9)?,
        state: r.get(10)?,
        reason: r.get(11)?,
        approved: r.get(12)?,
        revision: r.get(13)?,
        updated_at_ms: r.get(14)?,
    })
}

/// An event row read as [`EVENT_COLUMNS`].
fn event_of(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        event: NewEvent {
            transaction_id: r.get(0)?,
            session_id: r.get(1)?,
            seq: r.get(2)?,
            customer: r.get(3)?,
            subscription: r.get(4)?,
            code: r.get(5)?,
            timestamp_ms: r.get(6)?,
            wh: r.get(7)?,
            properties: r.get(8)?,
        },
        status: r.get(9)?,
        error: r.get(10)?,
        attempts: r.get(11)?,
        created_run: r.get(12)?,
        settled_run: r.get(13)?,
        created_at_ms: r.get(14)?,
        settled_at_ms: r.get(15)?,
    })
}

impl FromSql for SessionState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<SessionState> {
        let text = value.as_str()?;
        SessionState::stored(text).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl FromSql for EventStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<EventStatus> {
        let text = value.as_str()?;
        EventStatus::stored(text).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl ToSql for SessionState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.as_str().as_bytes(),
        )))
    }
}

impl ToSql for EventStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.as_str().as_bytes(),
        )))
    }
}
