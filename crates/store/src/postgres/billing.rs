//! The billing job's durable state on PostgreSQL (see [`crate::billing`]).
//!
//! Times the store stamps come from the database: `clock_timestamp()` cut to milliseconds,
//! so what a method returns is exactly what it stored, and every worker shares one clock.
//!
//! A ledger write of thousands of sessions is a handful of round trips whatever its size:
//! `BEGIN`; the inserts and the revision-checked updates of its sessions, one
//! `unnest` statement each, sent together; then its events, resends and cursor, sent
//! together; `COMMIT`. Settling a batch of events is one statement. Both stay correct under
//! READ COMMITTED with other writers: an insert that meets a concurrent insert of the same id
//! waits for it and then does nothing (the session is stale), and an update that meets a
//! concurrent update waits and then checks the revision of the row as committed.

use std::collections::HashSet;
use std::time::SystemTime;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use ferry_core::time::ms_of;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgStore, at};
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
     timestamp, wh, properties::text, status, error, attempts, created_run, settled_run, \
     created_at, settled_at";

/// The store's clock as a one-row relation `c (now_at)`, read once per statement.
const NOW: &str = "(SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at) AS c";

#[async_trait]
impl BillingStore for PgStore {
    async fn mappings(&self) -> Result<Vec<MappingRecord>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT id_tag, customer, subscription, updated_at FROM billing_mappings
                     ORDER BY id_tag",
                )
                .await?;
            let rows = client.query(&statement, &[]).await?;
            Ok(rows.iter().map(mapping_of).collect())
        })
        .await
    }

    async fn put_mapping(&self, mapping: &NewMapping) -> Result<MappingRecord> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO billing_mappings (id_tag, customer, subscription, updated_at)
                     SELECT $1, $2, $3, c.now_at FROM {NOW}
                     ON CONFLICT (id_tag) DO UPDATE SET
                       customer = excluded.customer,
                       subscription = excluded.subscription,
                       updated_at = excluded.updated_at
                     RETURNING id_tag, customer, subscription, updated_at"
                ))
                .await?;
            let row = client
                .query_one(
                    &statement,
                    &[&mapping.id_tag, &mapping.customer, &mapping.subscription],
                )
                .await?;
            Ok(mapping_of(&row))
        })
        .await
    }

    async fn delete_mapping(&self, id_tag: &str) -> Result<bool> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached("DELETE FROM billing_mappings WHERE id_tag = $1")
                .await?;
            Ok(client.execute(&statement, &[&id_tag]).await? == 1)
        })
        .await
    }

    async fn import_mappings(&self, mappings: &[NewMapping]) -> Result<u64> {
        let distinct = distinct_mappings(mappings);
        if distinct.is_empty() {
            return Ok(0);
        }
        let tags: Vec<&str> = distinct.iter().map(|m| m.id_tag.as_str()).collect();
        let customers: Vec<&str> = distinct.iter().map(|m| m.customer.as_str()).collect();
        let subscriptions: Vec<Option<&str>> =
            distinct.iter().map(|m| m.subscription.as_deref()).collect();
        self.with_client(async |client| {
            // One statement, so all of them or none (one per tag, so no row is hit twice).
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO billing_mappings (id_tag, customer, subscription, updated_at)
                     SELECT m.id_tag, m.customer, m.subscription, c.now_at
                     FROM unnest($1::text[], $2::text[], $3::text[])
                          AS m (id_tag, customer, subscription),
                          {NOW}
                     ON CONFLICT (id_tag) DO UPDATE SET
                       customer = excluded.customer,
                       subscription = excluded.subscription,
                       updated_at = excluded.updated_at"
                ))
                .await?;
            Ok(client
                .execute(&statement, &[&tags, &customers, &subscriptions])
                .await?)
        })
        .await
    }

    async fn sessions(&self, ids: &[i64]) -> Result<Vec<SessionRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE id = ANY($1::int8[])"
                ))
                .await?;
            let rows = client.query(&statement, &[&ids]).await?;
            rows.iter().map(session_of).collect()
        })
        .await
    }

    async fn open_sessions(&self) -> Result<Vec<SessionRecord>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM billing_sessions
                     WHERE state IN ('active', 'parked', 'needs_review')
                       AND (state <> 'needs_review' OR approved)
                     ORDER BY id"
                ))
                .await?;
            let rows = client.query(&statement, &[]).await?;
            rows.iter().map(session_of).collect()
        })
        .await
    }

    async fn write_ledger(
        &self,
        run_id: Option<i64>,
        write: &LedgerWrite,
    ) -> Result<LedgerWritten> {
        write.check()?;
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let written = write_ledger(&tx, run_id, write).await?;
            tx.commit().await?;
            Ok(written)
        })
        .await
    }

    async fn cursor(&self) -> Result<BillingCursor> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT window_end, last_sweep, last_activity, max_id FROM billing_cursor
                     WHERE id = 1",
                )
                .await?;
            Ok(client
                .query_opt(&statement, &[])
                .await?
                .map(|row| BillingCursor {
                    window_end_ms: ms_at(&row, 0),
                    last_sweep_ms: ms_at(&row, 1),
                    last_activity_ms: ms_at(&row, 2),
                    max_id: row.get(3),
                })
                .unwrap_or_default())
        })
        .await
    }

    async fn pending_events(&self, after: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let limit = i64::from(limit);
        self.with_client(async |client| {
            // Two statements rather than `$1 IS NULL OR ...`, whose generic plan could not
            // start the index scan where the page starts.
            let rows = match after {
                Some(after) => {
                    let statement = client
                        .prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM billing_events
                             WHERE status = 'pending' AND transaction_id > $1
                             ORDER BY transaction_id LIMIT $2"
                        ))
                        .await?;
                    client.query(&statement, &[&after, &limit]).await?
                }
                None => {
                    let statement = client
                        .prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM billing_events
                             WHERE status = 'pending'
                             ORDER BY transaction_id LIMIT $1"
                        ))
                        .await?;
                    client.query(&statement, &[&limit]).await?
                }
            };
            rows.iter().map(event_of).collect()
        })
        .await
    }

    async fn settle_events(&self, run_id: i64, settled: &[Settlement]) -> Result<Settled> {
        if settled.is_empty() {
            return Ok(Settled::default());
        }
        let folded = fold_settlements(settled);
        let ids: Vec<&str> = folded.iter().map(|f| f.transaction_id).collect();
        let statuses: Vec<&str> = folded.iter().map(|f| f.status.as_str()).collect();
        let errors: Vec<Option<&str>> = folded.iter().map(|f| f.error).collect();
        let attempts: Vec<i64> = folded.iter().map(|f| f.attempts).collect();
        let reasons: Vec<Option<&str>> = folded.iter().map(|f| f.reason.as_deref()).collect();
        self.with_client(async |client| {
            let statement = client.prepare_cached(SETTLE).await?;
            let row = client
                .query_one(
                    &statement,
                    &[&ids, &statuses, &errors, &attempts, &reasons, &run_id],
                )
                .await?;
            let delivered: i64 = row.get(0);
            let rejected: i64 = row.get(1);
            Ok(Settled {
                delivered: u64::try_from(delivered).unwrap_or(0),
                rejected: u64::try_from(rejected).unwrap_or(0),
                sessions_changed: row.get(2),
            })
        })
        .await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>> {
        let state = query.state.map(SessionState::as_str);
        let limit = i64::from(query.limit);
        // Only the filters given, so each combination gets the plan of its index.
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE true");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(state) = &state {
            params.push(state);
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some(id_tag) = &query.id_tag {
            params.push(id_tag);
            sql.push_str(&format!(" AND id_tag = ${}", params.len()));
        }
        if let Some(before) = &query.before {
            params.push(before);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        self.with_client(async |client| {
            let statement = client.prepare_cached(&sql).await?;
            let rows = client.query(&statement, &params).await?;
            rows.iter().map(session_of).collect()
        })
        .await
    }

    async fn session_events(&self, session_ids: &[i64]) -> Result<Vec<EventRecord>> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM billing_events
                     WHERE session_id = ANY($1::int8[])
                     ORDER BY session_id, seq, transaction_id"
                ))
                .await?;
            let rows = client.query(&statement, &[&session_ids]).await?;
            rows.iter().map(event_of).collect()
        })
        .await
    }

    async fn run_events(&self, run_id: i64) -> Result<Vec<EventRecord>> {
        self.with_client(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM billing_events WHERE settled_run = $1
                     ORDER BY transaction_id"
                ))
                .await?;
            let rows = client.query(&statement, &[&run_id]).await?;
            rows.iter().map(event_of).collect()
        })
        .await
    }

    async fn review(&self, id: i64, action: ReviewAction) -> Result<Reviewed> {
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let reviewed = review(&tx, id, action).await?;
            tx.commit().await?;
            Ok(reviewed)
        })
        .await
    }
}

/// Must run in a transaction: everything it writes commits together.
async fn write_ledger(
    tx: &impl GenericClient,
    run_id: Option<i64>,
    write: &LedgerWrite,
) -> Result<LedgerWritten> {
    let (mut new, mut known): (Vec<&SessionWrite>, Vec<&SessionWrite>) = write
        .sessions
        .iter()
        .partition(|w| w.expected_revision.is_none());
    // In id order, so that two writers of overlapping sessions take their row locks in one
    // order rather than deadlock.
    new.sort_unstable_by_key(|w| w.session.id);
    known.sort_unstable_by_key(|w| w.session.id);
    let new = SessionColumns::of(&new);
    let known = SessionColumns::of(&known);
    let insert = tx.prepare_cached(INSERT_SESSIONS).await?;
    let update = tx.prepare_cached(UPDATE_SESSIONS).await?;
    let (inserted, updated) = tokio::join!(
        async {
            if new.id.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(&insert, &new.params()).await
        },
        async {
            if known.id.is_empty() {
                return Ok(Vec::new());
            }
            let mut params = known.params();
            params.push(&known.expected);
            tx.query(&update, &params).await
        }
    );
    let written: HashSet<i64> = inserted?
        .iter()
        .chain(updated?.iter())
        .map(|row| row.get(0))
        .collect();
    let stale: Vec<i64> = write
        .sessions
        .iter()
        .map(|w| w.session.id)
        .filter(|id| !written.contains(id))
        .collect();

    let stale_ids: HashSet<i64> = stale.iter().copied().collect();
    let events = EventColumns::of(
        write
            .events
            .iter()
            .filter(|e| !stale_ids.contains(&e.session_id)),
    );
    let insert_events = tx.prepare_cached(INSERT_EVENTS).await?;
    let resend = tx
        .prepare_cached(
            "UPDATE billing_events
             SET status = 'pending', error = NULL, settled_run = NULL, settled_at = NULL
             WHERE transaction_id = ANY($1::text[]) AND status = 'rejected'
               AND session_id <> ALL($2::int8[])",
        )
        .await?;
    let save_cursor = tx.prepare_cached(SAVE_CURSOR).await?;
    // Sent together; the first error aborts the transaction and is the one reported.
    let (events_inserted, resent, saved) = tokio::join!(
        async {
            if events.transaction_id.is_empty() {
                return Ok(0);
            }
            let mut params = events.params();
            params.push(&run_id);
            tx.execute(&insert_events, &params).await
        },
        async {
            if write.resend.is_empty() {
                return Ok(0);
            }
            tx.execute(&resend, &[&write.resend, &stale]).await
        },
        async {
            let Some(cursor) = &write.cursor else {
                return Ok(0);
            };
            tx.execute(
                &save_cursor,
                &[
                    &cursor.window_end_ms.map(at),
                    &cursor.last_sweep_ms.map(at),
                    &cursor.last_activity_ms.map(at),
                    &cursor.max_id,
                ],
            )
            .await
        }
    );
    let events_inserted = events_inserted?;
    resent?;
    saved?;
    Ok(LedgerWritten {
        stale,
        events_inserted,
    })
}

/// Inserts sessions the planner saw nowhere; the ids it returns are the ones inserted.
const INSERT_SESSIONS: &str = "
INSERT INTO billing_sessions (id, charge_box_id, connector_id, id_tag, started_at, stopped_at,
                              start_mwh, stop_mwh, planned_wh, billed_wh, state, reason,
                              approved, revision, updated_at)
SELECT s.id, s.charge_box_id, s.connector_id, s.id_tag, s.started_at, s.stopped_at,
       s.start_mwh, s.stop_mwh, s.planned_wh, 0, s.state, s.reason, s.approved, 1, c.now_at
FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::text[],
            $12::bool[])
     AS s (id, charge_box_id, connector_id, id_tag, started_at, stopped_at, start_mwh,
           stop_mwh, planned_wh, state, reason, approved),
     (SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at) AS c
ON CONFLICT (id) DO NOTHING
RETURNING id
";

/// Updates sessions still at the revision the planner read; returns the ids updated.
const UPDATE_SESSIONS: &str = "
UPDATE billing_sessions AS b
SET charge_box_id = s.charge_box_id, connector_id = s.connector_id, id_tag = s.id_tag,
    started_at = s.started_at, stopped_at = s.stopped_at, start_mwh = s.start_mwh,
    stop_mwh = s.stop_mwh, planned_wh = s.planned_wh, state = s.state, reason = s.reason,
    approved = s.approved, revision = b.revision + 1, updated_at = c.now_at
FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::text[],
            $12::bool[], $13::int8[])
     AS s (id, charge_box_id, connector_id, id_tag, started_at, stopped_at, start_mwh,
           stop_mwh, planned_wh, state, reason, approved, expected),
     (SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at) AS c
WHERE b.id = s.id AND b.revision = s.expected
RETURNING b.id
";

/// Inserts events unless their `transaction_id` exists, in the order given (so of two with
/// one id in a write, the first is kept).
const INSERT_EVENTS: &str = "
INSERT INTO billing_events (transaction_id, session_id, seq, customer, subscription, code,
                            timestamp, wh, properties, status, attempts, created_run,
                            created_at)
SELECT e.transaction_id, e.session_id, e.seq, e.customer, e.subscription, e.code, e.at, e.wh,
       e.properties::json, 'pending', 0, $10::int8, c.now_at
FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::int8[], $9::text[])
     WITH ORDINALITY AS e (transaction_id, session_id, seq, customer, subscription, code, at,
                           wh, properties, n),
     (SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at) AS c
ORDER BY e.n
ON CONFLICT (transaction_id) DO NOTHING
";

const SAVE_CURSOR: &str = "
INSERT INTO billing_cursor (id, window_end, last_sweep, last_activity, max_id, updated_at)
VALUES (1, $1, $2, $3, $4, date_trunc('milliseconds', clock_timestamp()))
ON CONFLICT (id) DO UPDATE SET
  window_end = excluded.window_end,
  last_sweep = excluded.last_sweep,
  last_activity = excluded.last_activity,
  max_id = excluded.max_id,
  updated_at = excluded.updated_at
";

/// Settles folded events (see `crate::billing::fold_settlements`) in one statement: only
/// pending events change; then each session of a changed event once, with the sum of its
/// delivered Wh, the sum of its rejected Wh and its first rejection's reason. Answers the
/// delivered and rejected counts and the sessions sent to review.
const SETTLE: &str = "
WITH s AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
                WITH ORDINALITY AS s (transaction_id, status, error, attempts, reason, n)
),
c AS (SELECT date_trunc('milliseconds', clock_timestamp()) AS now_at),
changed AS (
  UPDATE billing_events AS e
  SET status = s.status, error = s.error, attempts = e.attempts + s.attempts,
      settled_run = CASE WHEN s.status = 'pending' THEN NULL ELSE $6::int8 END,
      settled_at = CASE WHEN s.status = 'pending' THEN NULL ELSE c.now_at END
  FROM s, c
  WHERE e.transaction_id = s.transaction_id AND e.status = 'pending'
  RETURNING e.session_id, e.wh, s.status, s.reason, s.n
),
per_session AS (
  SELECT session_id,
         coalesce(sum(wh) FILTER (WHERE status = 'delivered'), 0)::bigint AS billed,
         coalesce(sum(wh) FILTER (WHERE status = 'rejected'), 0)::bigint AS unplanned,
         (array_agg(reason ORDER BY n) FILTER (WHERE status = 'rejected'))[1] AS reason
  FROM changed WHERE status <> 'pending'
  GROUP BY session_id
),
sessions AS (
  UPDATE billing_sessions AS b
  SET billed_wh = b.billed_wh + p.billed,
      planned_wh = b.planned_wh - p.unplanned,
      state = CASE WHEN p.reason IS NULL THEN b.state ELSE 'needs_review' END,
      reason = coalesce(p.reason, b.reason),
      approved = CASE WHEN p.reason IS NULL THEN b.approved ELSE false END,
      revision = b.revision + CASE WHEN p.reason IS NULL THEN 0 ELSE 1 END,
      updated_at = c.now_at
  FROM per_session AS p, c
  WHERE b.id = p.session_id
  RETURNING b.id, p.reason IS NOT NULL AS reviewed
)
SELECT (SELECT count(*) FROM changed WHERE status = 'delivered'),
       (SELECT count(*) FROM changed WHERE status = 'rejected'),
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM sessions WHERE reviewed)
";

/// Must run in a transaction: the row lock taken by the read holds until it commits.
async fn review(tx: &impl GenericClient, id: i64, action: ReviewAction) -> Result<Reviewed> {
    let read = tx
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM billing_sessions WHERE id = $1 FOR UPDATE"
        ))
        .await?;
    let Some(row) = tx.query_opt(&read, &[&id]).await? else {
        return Ok(Reviewed::NotFound);
    };
    let session = session_of(&row)?;
    if session.state != SessionState::NeedsReview {
        return Ok(Reviewed::NotInReview(session));
    }
    let row = match action {
        ReviewAction::Bill => {
            let statement = tx
                .prepare_cached(&format!(
                    "UPDATE billing_sessions AS b
                     SET approved = true, revision = b.revision + 1, updated_at = c.now_at
                     FROM {NOW} WHERE b.id = $1
                     RETURNING {SESSION_COLUMNS}"
                ))
                .await?;
            tx.query_one(&statement, &[&id]).await?
        }
        ReviewAction::Ignore => {
            let statement = tx
                .prepare_cached(&format!(
                    "UPDATE billing_sessions AS b
                     SET state = 'ignored', reason = $2, approved = false,
                         revision = b.revision + 1, updated_at = c.now_at
                     FROM {NOW} WHERE b.id = $1
                     RETURNING {SESSION_COLUMNS}"
                ))
                .await?;
            tx.query_one(&statement, &[&id, &IGNORED_REASON]).await?
        }
    };
    Ok(Reviewed::Done(session_of(&row)?))
}

/// Sessions to write, column by column, for `unnest`.
struct SessionColumns<'a> {
    id: Vec<i64>,
    charge_box_id: Vec<&'a str>,
    connector_id: Vec<i64>,
    id_tag: Vec<&'a str>,
    started_at: Vec<Option<SystemTime>>,
    stopped_at: Vec<Option<SystemTime>>,
    start_mwh: Vec<Option<i64>>,
    stop_mwh: Vec<Option<i64>>,
    planned_wh: Vec<i64>,
    state: Vec<&'static str>,
    reason: Vec<Option<&'a str>>,
    approved: Vec<bool>,
    /// The revision each was read at (0 for new ones, where it is not used).
    expected: Vec<i64>,
}

impl<'a> SessionColumns<'a> {
    fn of(writes: &[&'a SessionWrite]) -> SessionColumns<'a> {
        let sessions = || writes.iter().map(|w| &w.session);
        SessionColumns {
            id: sessions().map(|s| s.id).collect(),
            charge_box_id: sessions().map(|s| s.charge_box_id.as_str()).collect(),
            connector_id: sessions().map(|s| s.connector_id).collect(),
            id_tag: sessions().map(|s| s.id_tag.as_str()).collect(),
            started_at: sessions().map(|s| s.started_at_ms.map(at)).collect(),
            stopped_at: sessions().map(|s| s.stopped_at_ms.map(at)).collect(),
            start_mwh: sessions().map(|s| s.start_mwh).collect(),
            stop_mwh: sessions().map(|s| s.stop_mwh).collect(),
            planned_wh: sessions().map(|s| s.planned_wh).collect(),
            state: sessions().map(|s| s.state.as_str()).collect(),
            reason: sessions().map(|s| s.reason.as_deref()).collect(),
            approved: sessions().map(|s| s.approved).collect(),
            expected: writes
                .iter()
                .map(|w| w.expected_revision.unwrap_or(0))
                .collect(),
        }
    }

    /// `$1` to `$12` of [`INSERT_SESSIONS`] and [`UPDATE_SESSIONS`].
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.charge_box_id,
            &self.connector_id,
            &self.id_tag,
            &self.started_at,
            &self.stopped_at,
            &self.start_mwh,
            &self.stop_mwh,
            &self.planned_wh,
            &self.state,
            &self.reason,
            &self.approved,
        ]
    }
}

/// Events to insert, column by column, for `unnest`.
struct EventColumns<'a> {
    transaction_id: Vec<&'a str>,
    session_id: Vec<i64>,
    seq: Vec<i64>,
    customer: Vec<&'a str>,
    subscription: Vec<&'a str>,
    code: Vec<&'a str>,
    timestamp: Vec<SystemTime>,
    wh: Vec<i64>,
    properties: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn of(events: impl Iterator<Item = &'a NewEvent>) -> EventColumns<'a> {
        let mut columns = EventColumns {
            transaction_id: Vec::new(),
            session_id: Vec::new(),
            seq: Vec::new(),
            customer: Vec::new(),
            subscription: Vec::new(),
            code: Vec::new(),
            timestamp: Vec::new(),
            wh: Vec::new(),
            properties: Vec::new(),
        };
        for event in events {
            columns.transaction_id.push(&event.transaction_id);
            columns.session_id.push(event.session_id);
            columns.seq.push(event.seq);
            columns.customer.push(&event.customer);
            columns.subscription.push(&event.subscription);
            columns.code.push(&event.code);
            columns.timestamp.push(at(event.timestamp_ms));
            columns.wh.push(event.wh);
            columns.properties.push(&event.properties);
        }
        columns
    }

    /// `$1` to `$9` of [`INSERT_EVENTS`].
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.transaction_id,
            &self.session_id,
            &self.seq,
            &self.customer,
            &self.subscription,
            &self.code,
            &self.timestamp,
            &self.wh,
            &self.properties,
        ]
    }
}

/// A nullable `timestamptz` column's milliseconds.
fn ms_at(row: &Row, column: usize) -> Option<i64> {
    row.get::<_, Option<SystemTime>>(column).map(ms_of)
}

fn mapping_of(row: &Row) -> MappingRecord {
    MappingRecord {
        id_tag: row.get(0),
        customer: row.get(1),
        subscription: row.get(2),
        updated_at_ms: ms_of(row.get(3)),
    }
}

/// A session row read as [`SESSION_COLUMNS`].
fn session_of(row: &Row) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get(0),
        charge_box_id: row.get(1),
        connector_id: row.get(2),
        id_tag: row.get(3),
        started_at_ms: ms_at(row, 4),
        stopped_at_ms: ms_at(row, 5),
        start_mwh: row.get(6),
        stop_mwh: row.get(7),
        planned_wh: row.get(8),
        billed_wh: row.get(9),
        state: SessionState::stored(row.get(10))?,
        reason: row.get(11),
        approved: row.get(12),
        revision: row.get(13),
        updated_at_ms: ms_of(row.get(14)),
    })
}

/// An event row read as [`EVENT_COLUMNS`].
fn event_of(row: &Row) -> Result<EventRecord> {
    Ok(EventRecord {
        event: NewEvent {
            transaction_id: row.get(0),
            session_id: row.get(1),
            seq: row.get(2),
            customer: row.get(3),
            subscription: row.get(4),
            code: row.get(5),
            timestamp_ms: ms_of(row.get(6)),
            wh: row.get(7),
            properties: row.get(8),
        },
        status: EventStatus::stored(row.get(9))?,
        error: row.get(10),
        attempts: row.get(11),
        created_run: row.get(12),
        settled_run: row.get(13),
        created_at_ms: ms_of(row.get(14)),
        settled_at_ms: ms_at(row, 15),
    })
}
