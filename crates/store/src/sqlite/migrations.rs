//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! Each entry of [`MIGRATIONS`] runs once, in order, in its own transaction. Never edit a
//! migration that has shipped: add a new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::{Result, StoreError};

/// Migration `i` brings the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    V1_INITIAL,
    V2_JOBS,
    V3_BILLING,
    V4_TENANT_SEQUENCES,
    V5_CONFLICTS_ONCE_PER_LOSER,
];

/// The version from which each tenant has its own change sequence (`tenants.last_seq`) instead
/// of the global counter; `ferry migrate-store` reads stores from before it too.
pub(super) const TENANT_SEQUENCES: usize = 4;

const V1_INITIAL: &str = "
CREATE TABLE tenants (
  id         TEXT PRIMARY KEY NOT NULL,
  created_at TEXT NOT NULL
);

-- Server-wide settings, such as the active schema DDL.
CREATE TABLE settings (
  key   TEXT PRIMARY KEY NOT NULL,
  value TEXT NOT NULL
);

-- The global change sequence; every row write takes the next value.
CREATE TABLE counters (
  name  TEXT PRIMARY KEY NOT NULL,
  value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('seq', 0);

CREATE TABLE devices (
  device_id    TEXT PRIMARY KEY NOT NULL,
  tenant       TEXT NOT NULL REFERENCES tenants (id),
  name         TEXT NOT NULL,
  platform     TEXT,
  created_at   TEXT NOT NULL,
  last_seen_at TEXT,
  last_push_at TEXT,
  last_pull_at TEXT,
  pending      INTEGER NOT NULL DEFAULT 0,
  version      TEXT,
  revoked_at   TEXT
);
CREATE INDEX devices_by_tenant ON devices (tenant, created_at);

-- Tokens are kept only as SHA-256 hex of their text.
CREATE TABLE tokens (
  hash       TEXT PRIMARY KEY NOT NULL,
  tenant     TEXT NOT NULL REFERENCES tenants (id),
  kind       TEXT NOT NULL CHECK (kind IN ('device', 'operator')),
  device_id  TEXT REFERENCES devices (device_id),
  role       TEXT CHECK (role IN ('viewer', 'operator', 'admin')),
  created_at TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT,
  CHECK ((kind = 'device') = (device_id IS NOT NULL)),
  CHECK ((kind = 'operator') = (role IS NOT NULL))
);
CREATE INDEX tokens_by_device ON tokens (device_id);

CREATE TABLE pairing_codes (
  hash       TEXT PRIMARY KEY NOT NULL,
  tenant     TEXT NOT NULL REFERENCES tenants (id),
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  used_at    TEXT,
  device_id  TEXT
);

-- Synced rows, stored generically: one record per row at its latest version. `change` is the
-- row change's wire JSON, so a pull concatenates it as it is.
CREATE TABLE rows (
  tenant        TEXT NOT NULL,
  tbl           TEXT NOT NULL,
  pk_key        TEXT NOT NULL,
  seq           INTEGER NOT NULL,
  version       TEXT NOT NULL,
  deleted       INTEGER NOT NULL,
  origin_device TEXT,
  change        TEXT NOT NULL,
  PRIMARY KEY (tenant, tbl, pk_key)
);
CREATE UNIQUE INDEX rows_by_seq ON rows (tenant, seq);

-- Overwritten (losing) versions. The unique index makes logging idempotent, so pushing the
-- same batch twice does not log its conflicts twice.
CREATE TABLE conflicts (
  id             INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant         TEXT NOT NULL,
  tbl            TEXT NOT NULL,
  pk_key         TEXT NOT NULL,
  pk             TEXT NOT NULL,
  winner_version TEXT NOT NULL,
  winner_device  TEXT,
  loser_version  TEXT NOT NULL,
  loser_device   TEXT,
  loser_deleted  INTEGER NOT NULL,
  loser_data     TEXT,
  recorded_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX conflicts_once
  ON conflicts (tenant, tbl, pk_key, loser_version, winner_version);
";

/// The sync worker's state (see `crate::jobs`): server-wide, not per tenant. Timestamps are
/// fixed-width RFC 3339 text, so comparing them as text compares them in time.
const V2_JOBS: &str = "
CREATE TABLE job_cadence (
  job             TEXT PRIMARY KEY NOT NULL,
  tier            TEXT NOT NULL,
  demotion_toward TEXT,
  demotion_streak INTEGER NOT NULL DEFAULT 0,
  pinned_tier     TEXT,
  pinned_until    TEXT,
  next_run_at     TEXT,
  updated_at      TEXT NOT NULL
);

-- `counts` and `errors` are the run's JSON object and array, as text. A run that is not
-- running has finished, so a finish time and `status` always agree. AUTOINCREMENT keeps ids
-- of pruned runs from coming back, so a page's `before` id stays meaningful.
CREATE TABLE runs (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  job          TEXT NOT NULL,
  trigger      TEXT NOT NULL,
  tier         TEXT NOT NULL,
  status       TEXT NOT NULL
    CHECK (status IN ('running', 'succeeded', 'failed', 'partial', 'abandoned')),
  worker       TEXT NOT NULL,
  started_at   TEXT NOT NULL,
  heartbeat_at TEXT NOT NULL,
  finished_at  TEXT,
  duration_ms  INTEGER,
  counts       TEXT NOT NULL DEFAULT '{}',
  errors       TEXT NOT NULL DEFAULT '[]',
  CHECK ((status = 'running') = (finished_at IS NULL))
);
-- Single-flight, also against a second process on the same file.
CREATE UNIQUE INDEX runs_one_running ON runs (job) WHERE status = 'running';
CREATE INDEX runs_by_job ON runs (job, id);
CREATE INDEX runs_by_finish ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- A trigger is pending until a run claims it (`run_id`); an abandoned run's triggers are
-- released again. Pruning a finished run deletes the triggers it ran.
CREATE TABLE triggers (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  job        TEXT NOT NULL,
  source     TEXT NOT NULL,
  created_at TEXT NOT NULL,
  run_id     INTEGER REFERENCES runs (id) ON DELETE CASCADE
);
CREATE INDEX triggers_pending ON triggers (job, id) WHERE run_id IS NULL;
CREATE INDEX triggers_by_run ON triggers (run_id) WHERE run_id IS NOT NULL;

-- A run's log lines; `seq` orders them (it only grows, across runs).
CREATE TABLE run_log (
  seq     INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  at      TEXT NOT NULL,
  level   TEXT NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX run_log_by_run ON run_log (run_id, seq);

-- What each worker last reported about its trigger listener.
CREATE TABLE workers (
  id                 TEXT PRIMARY KEY NOT NULL,
  listener_connected INTEGER NOT NULL,
  last_ping_at       TEXT,
  reported_at        TEXT NOT NULL
);
";

/// The billing job's state (see `crate::billing`): server-wide, not per tenant. Unlike the
/// job tables, every time here is INTEGER milliseconds since the Unix epoch: session and event
/// times come from StEvE, not from the store's clock, and must read back exactly as written
/// (the text format clamps years outside 0000..=9999).
const V3_BILLING: &str = "
-- A tag's Lago customer; `subscription` NULL bills the subscription active at a session's stop.
CREATE TABLE billing_mappings (
  id_tag       TEXT PRIMARY KEY NOT NULL CHECK (id_tag <> ''),
  customer     TEXT NOT NULL CHECK (customer <> ''),
  subscription TEXT,
  updated_at   INTEGER NOT NULL
);

-- The ledger: one row per StEvE transaction (`id` is StEvE's transaction id). Meter values in
-- milli-watt-hours. `revision` is 1 when inserted and bumped by every later write except a
-- delivery's `billed_wh`; a planner's update only lands where it still has the value it read.
CREATE TABLE billing_sessions (
  id            INTEGER PRIMARY KEY NOT NULL,
  charge_box_id TEXT NOT NULL,
  connector_id  INTEGER NOT NULL,
  id_tag        TEXT NOT NULL,
  started_at    INTEGER,
  stopped_at    INTEGER,
  start_mwh     INTEGER,
  stop_mwh      INTEGER,
  planned_wh    INTEGER NOT NULL,
  billed_wh     INTEGER NOT NULL DEFAULT 0,
  state         TEXT NOT NULL
    CHECK (state IN ('active', 'billed', 'parked', 'needs_review', 'ignored')),
  reason        TEXT,
  approved      INTEGER NOT NULL DEFAULT 0,
  revision      INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
);
CREATE INDEX billing_sessions_by_state ON billing_sessions (state, id);
CREATE INDEX billing_sessions_by_tag ON billing_sessions (id_tag, id);

-- The outbox. `transaction_id` is Lago's idempotency key; an event is inserted once and leaves
-- `pending` once, so a settled event has its settle time and a pending one has none. Kept in
-- its key's b-tree (WITHOUT ROWID): every insert and settle touches one tree fewer.
CREATE TABLE billing_events (
  transaction_id TEXT PRIMARY KEY NOT NULL,
  session_id     INTEGER NOT NULL REFERENCES billing_sessions (id),
  seq            INTEGER NOT NULL,
  customer       TEXT NOT NULL,
  subscription   TEXT NOT NULL,
  code           TEXT NOT NULL,
  timestamp      INTEGER NOT NULL,
  wh             INTEGER NOT NULL,
  properties     TEXT NOT NULL CHECK (json_valid(properties)),
  status         TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'rejected')),
  error          TEXT,
  attempts       INTEGER NOT NULL DEFAULT 0,
  created_run    INTEGER,
  settled_run    INTEGER,
  created_at     INTEGER NOT NULL,
  settled_at     INTEGER,
  CHECK ((status = 'pending') = (settled_at IS NULL))
) WITHOUT ROWID;
CREATE INDEX billing_events_pending ON billing_events (transaction_id) WHERE status = 'pending';
CREATE INDEX billing_events_by_session ON billing_events (session_id, seq);
CREATE INDEX billing_events_by_run ON billing_events (settled_run, transaction_id)
  WHERE settled_run IS NOT NULL;

-- How far the job has read StEvE: one row, saved with the sessions it covers.
CREATE TABLE billing_cursor (
  id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
  window_end    INTEGER,
  last_sweep    INTEGER,
  last_activity INTEGER,
  max_id        INTEGER,
  updated_at    INTEGER NOT NULL
);
";

/// Each tenant's own change sequence, as on PostgreSQL: a push takes its numbers from its
/// tenant's `last_seq`, so a tenant's cursors move with its own writes only and never tell how
/// much other tenants wrote. (With one global sequence, a device saw its cursor jump by every
/// other tenant's writes, and `invalid_cursor` answered whether a number lay beyond them.)
///
/// Existing rows keep their numbers, unique per tenant and in commit order as before, and every
/// tenant that exists continues from the global counter: a cursor this store handed out (or
/// accepted) is at most that counter, so each device's saved cursor keeps meaning "after this
/// change", no device is reset, and no row can get a number at or below a cursor already out
/// there. What a tenant's devices see of the other tenants is what they could see before the
/// upgrade, frozen: the counter at that moment, and the gaps between the numbers of rows
/// written before it. Tenants created later start at 0.
const V4_TENANT_SEQUENCES: &str = "
ALTER TABLE tenants ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
UPDATE tenants SET last_seq = (SELECT value FROM counters WHERE name = 'seq');
DROP TABLE counters;
";

/// Each losing write in the conflict log once. The first index made a record unique per
/// (losing version, winning version), so a write that lost and was pushed again (its device
/// never got the answer) after the row had moved on to a newer winner was logged a second time,
/// against that winner. A write is its version and its device; what it lost to first is what
/// the log keeps. Devices are compared through `coalesce`, since a unique index holds NULLs
/// distinct (the server's own writes have no device): `''` is no device's id. The duplicates an
/// earlier version logged go first, the earliest record of each write kept.
const V5_CONFLICTS_ONCE_PER_LOSER: &str = "
DELETE FROM conflicts WHERE id IN (
  SELECT id FROM (
    SELECT id, row_number() OVER (
      PARTITION BY tenant, tbl, pk_key, loser_version, coalesce(loser_device, '')
      ORDER BY id
    ) AS nth
    FROM conflicts
  )
  WHERE nth > 1
);
DROP INDEX conflicts_once;
CREATE UNIQUE INDEX conflicts_once
  ON conflicts (tenant, tbl, pk_key, loser_version, coalesce(loser_device, ''));
";

/// Brings the database up to the latest version; returns the versions it applied.
pub(super) fn run(conn: &mut Connection) -> Result<Vec<usize>> {
    let mut applied = Vec::new();
    loop {
        // The version is read inside the write transaction: `ferry pair-code` may open the
        // same file while the server starts, and only one of them may migrate.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Internal(format!(
                "the database is at schema version {version}, newer than this Ferry knows \
                 ({}); upgrade Ferry",
                MIGRATIONS.len()
            )));
        }
        let Some(migration) = MIGRATIONS.get(version) else {
            return Ok(applied);
        };
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "Migrated the store's database.");
        applied.push(version + 1);
    }
}
