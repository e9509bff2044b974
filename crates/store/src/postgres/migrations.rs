//! Versioned schema migrations for PostgreSQL, kept in the `ferry` schema.
//!
//! Every start runs the pending ones in one transaction under a transaction-scoped advisory
//! lock, so two instances starting at once cannot both migrate: the second waits for the
//! first to commit and then finds nothing left to do. PostgreSQL's DDL is transactional, so a
//! failed migration leaves no half-made tables. Never edit a migration that has shipped: add
//! a new one.

use deadpool_postgres::Object;

use super::SCHEMA;
use crate::{Result, StoreError};

/// The advisory lock key that serializes migrations (any constant; this is "ferry" in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6572_7279;

/// Migration `i` brings the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    V1_INITIAL,
    V2_JOBS,
    V3_ROWS_WITHOUT_TENANT_KEY,
    V4_START_RUN,
    V5_ROWS_KEY_FIRST,
    V6_BILLING,
    V7_EVENTS,
    V8_CONFLICTS_ONCE_PER_LOSER,
];

const V1_INITIAL: &str = "
-- `last_seq` is the tenant's change sequence. A push locks its tenant's row first and holds
-- it until commit, so one tenant's pushes commit in sequence order and a pull's snapshot
-- always holds a prefix of the sequence (see ARCHITECTURE.md, \"Pull under concurrency\").
CREATE TABLE tenants (
  id         text PRIMARY KEY,
  created_at timestamptz NOT NULL,
  last_seq   bigint NOT NULL DEFAULT 0
);

-- Server-wide settings, such as the active schema DDL.
CREATE TABLE settings (
  key   text PRIMARY KEY,
  value text NOT NULL
);

CREATE TABLE devices (
  device_id    text PRIMARY KEY,
  tenant       text NOT NULL REFERENCES tenants (id),
  name         text NOT NULL,
  platform     text,
  created_at   timestamptz NOT NULL,
  last_seen_at timestamptz,
  last_push_at timestamptz,
  last_pull_at timestamptz,
  pending      bigint NOT NULL DEFAULT 0,
  version      text,
  revoked_at   timestamptz
);
CREATE INDEX devices_by_tenant ON devices (tenant, created_at);

-- Tokens are kept only as SHA-256 hex of their text.
CREATE TABLE tokens (
  hash       text PRIMARY KEY,
  tenant     text NOT NULL REFERENCES tenants (id),
  kind       text NOT NULL CHECK (kind IN ('device', 'operator')),
  device_id  text REFERENCES devices (device_id),
  role       text CHECK (role IN ('viewer', 'operator', 'admin')),
  created_at timestamptz NOT NULL,
  expires_at timestamptz,
  revoked_at timestamptz,
  CHECK ((kind = 'device') = (device_id IS NOT NULL)),
  CHECK ((kind = 'operator') = (role IS NOT NULL))
);
CREATE INDEX tokens_by_device ON tokens (device_id);

CREATE TABLE pairing_codes (
  hash       text PRIMARY KEY,
  tenant     text NOT NULL REFERENCES tenants (id),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  used_at    timestamptz,
  device_id  text
);

-- Synced rows, stored generically: one record per row at its latest version. `change` is the
-- row change's wire JSON as text (not jsonb, which would reformat it), so a pull concatenates
-- it as it is.
CREATE TABLE rows (
  tenant        text NOT NULL REFERENCES tenants (id),
  tbl           text NOT NULL,
  pk_key        text NOT NULL,
  seq           bigint NOT NULL,
  version       text NOT NULL,
  deleted       boolean NOT NULL,
  origin_device text,
  change        text NOT NULL,
  PRIMARY KEY (tenant, tbl, pk_key)
);
CREATE UNIQUE INDEX rows_by_seq ON rows (tenant, seq);

-- Overwritten (losing) versions. The unique index makes logging idempotent, so pushing the
-- same batch twice does not log its conflicts twice.
CREATE TABLE conflicts (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant         text NOT NULL REFERENCES tenants (id),
  tbl            text NOT NULL,
  pk_key         text NOT NULL,
  pk             text NOT NULL,
  winner_version text NOT NULL,
  winner_device  text,
  loser_version  text NOT NULL,
  loser_device   text,
  loser_deleted  boolean NOT NULL,
  loser_data     text,
  recorded_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX conflicts_once
  ON conflicts (tenant, tbl, pk_key, loser_version, winner_version);
";

/// The sync worker's state (see `crate::jobs`): server-wide, not per tenant.
const V2_JOBS: &str = "
-- One row per job once its cadence was first saved; times come from the database's clock.
CREATE TABLE job_cadence (
  job             text PRIMARY KEY,
  tier            text NOT NULL,
  demotion_toward text,
  demotion_streak integer NOT NULL DEFAULT 0,
  pinned_tier     text,
  pinned_until    timestamptz,
  next_run_at     timestamptz,
  updated_at      timestamptz NOT NULL
);

-- `counts` and `errors` are the run's JSON object and array. A run that is not running has
-- finished, so a finish time and `status` always agree.
CREATE TABLE runs (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job          text NOT NULL,
  trigger      text NOT NULL,
  tier         text NOT NULL,
  status       text NOT NULL
    CHECK (status IN ('running', 'succeeded', 'failed', 'partial', 'abandoned')),
  worker       text NOT NULL,
  started_at   timestamptz NOT NULL,
  heartbeat_at timestamptz NOT NULL,
  finished_at  timestamptz,
  duration_ms  bigint,
  counts       jsonb NOT NULL DEFAULT '{}',
  errors       jsonb NOT NULL DEFAULT '[]',
  CHECK ((status = 'running') = (finished_at IS NULL))
);
-- Single-flight across processes: a second running run of a job cannot be inserted.
CREATE UNIQUE INDEX runs_one_running ON runs (job) WHERE status = 'running';
CREATE INDEX runs_by_job ON runs (job, id);
CREATE INDEX runs_by_finish ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- A trigger is pending until a run claims it (`run_id`); an abandoned run's triggers are
-- released again. Pruning a finished run deletes the triggers it ran.
CREATE TABLE triggers (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job        text NOT NULL,
  source     text NOT NULL,
  created_at timestamptz NOT NULL,
  run_id     bigint REFERENCES runs (id) ON DELETE CASCADE
);
CREATE INDEX triggers_pending ON triggers (job, id) WHERE run_id IS NULL;
CREATE INDEX triggers_by_run ON triggers (run_id) WHERE run_id IS NOT NULL;

-- A run's log lines; `seq` orders them (it only grows, across runs).
CREATE TABLE run_log (
  seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  run_id  bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  at      timestamptz NOT NULL,
  level   text NOT NULL,
  message text NOT NULL
);
CREATE INDEX run_log_by_run ON run_log (run_id, seq);

-- What each worker last reported about its trigger listener.
CREATE TABLE workers (
  id                 text PRIMARY KEY,
  listener_connected boolean NOT NULL,
  last_ping_at       timestamptz,
  reported_at        timestamptz NOT NULL
);
";

const V3_ROWS_WITHOUT_TENANT_KEY: &str = "
-- Checking the tenant key of every inserted row roughly doubled the cost of a push's insert.
-- Every write to `rows` comes from a push, which first locks its tenant's row (and fails if
-- there is none), or from moving a tenant here, which creates it first: the key added no
-- safety on those paths.
ALTER TABLE rows DROP CONSTRAINT IF EXISTS rows_tenant_fkey;
";

const V4_START_RUN: &str = r#"
-- Starting a run in one round trip: the trigger latency is mostly round trips. One row per
-- claimed trigger (or one row without a trigger): outcome 'started', 'busy' or 'retry'.
-- The insert comes first; only when it meets a running run is that run checked for a stale
-- heartbeat, abandoned (its triggers released) and the insert tried again. So a busy answer
-- writes nothing.
--
-- Its commit does not wait for the WAL flush (`synchronous_commit` off for this transaction
-- only; nothing else changes): should the database crash within that moment, the start and
-- its claim are lost together, the triggers are pending again and run again, which a job
-- must tolerate anyway (a worker may die mid-run). The trigger itself is stored durably.
CREATE FUNCTION start_run(p_job text, p_trigger text, p_tier text, p_worker text,
                          p_lease_ms bigint, p_abandoned_errors jsonb, p_for_triggers boolean)
RETURNS TABLE (outcome text, run_id bigint, started_at timestamptz, run_tier text,
               abandoned bigint[], trigger_id bigint, trigger_source text,
               trigger_created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_run bigint;
  v_dead bigint;
  v_abandoned bigint[] := '{}';
  v_started timestamptz;
  v_tier text := p_tier;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  -- A run for triggers: only if one is pending, at the pinned tier while a pin lasts.
  IF p_for_triggers THEN
    IF NOT EXISTS (SELECT 1 FROM triggers
                   WHERE triggers.job = p_job AND triggers.run_id IS NULL) THEN
      RETURN QUERY SELECT 'nothing'::text, NULL::bigint, NULL::timestamptz, NULL::text,
                          v_abandoned, NULL::bigint, NULL::text, NULL::timestamptz;
      RETURN;
    END IF;
    SELECT CASE WHEN c.pinned_until > clock_timestamp() THEN c.pinned_tier END
      INTO v_tier FROM job_cadence AS c WHERE c.job = p_job;
    v_tier := coalesce(v_tier, 'active');
  END IF;
  FOR attempt IN 1..4 LOOP
    v_run := NULL;
    INSERT INTO runs (job, trigger, tier, status, worker, started_at, heartbeat_at)
    VALUES (p_job, p_trigger, v_tier, 'running', p_worker,
            date_trunc('milliseconds', clock_timestamp()),
            date_trunc('milliseconds', clock_timestamp()))
    ON CONFLICT (job) WHERE status = 'running' DO NOTHING
    RETURNING runs.id INTO v_run;
    IF v_run IS NOT NULL THEN
      -- Stamped again: the insert may have waited for a finishing run to commit.
      UPDATE runs SET started_at = date_trunc('milliseconds', clock_timestamp()),
                      heartbeat_at = date_trunc('milliseconds', clock_timestamp())
      WHERE runs.id = v_run RETURNING runs.started_at INTO v_started;
      RETURN QUERY
        WITH claimed AS (
          UPDATE triggers SET run_id = v_run
          WHERE triggers.job = p_job AND triggers.run_id IS NULL
          RETURNING triggers.id, triggers.source, triggers.created_at
        )
        SELECT 'started'::text, v_run, v_started, v_tier, v_abandoned,
               claimed.id, claimed.source, claimed.created_at
        FROM (SELECT 1) AS one LEFT JOIN claimed ON true;
      RETURN;
    END IF;
    v_dead := NULL;
    UPDATE runs SET status = 'abandoned',
                    finished_at = date_trunc('milliseconds', clock_timestamp()),
                    errors = p_abandoned_errors
    WHERE runs.job = p_job AND runs.status = 'running'
      AND runs.heartbeat_at < clock_timestamp() - p_lease_ms * interval '1 millisecond'
    RETURNING runs.id INTO v_dead;
    IF v_dead IS NOT NULL THEN
      UPDATE triggers SET run_id = NULL WHERE triggers.run_id = v_dead;
      v_abandoned := v_abandoned || v_dead;
      CONTINUE;
    END IF;
    SELECT runs.id INTO v_run FROM runs WHERE runs.job = p_job AND runs.status = 'running';
    IF v_run IS NOT NULL THEN
      RETURN QUERY SELECT 'busy'::text, v_run, NULL::timestamptz, NULL::text, v_abandoned,
                          NULL::bigint, NULL::text, NULL::timestamptz;
      RETURN;
    END IF;
    -- The running run finished in between: try again.
  END LOOP;
  RETURN QUERY SELECT 'retry'::text, NULL::bigint, NULL::timestamptz, NULL::text,
                      v_abandoned, NULL::bigint, NULL::text, NULL::timestamptz;
END
$$;
"#;

const V5_ROWS_KEY_FIRST: &str = "
-- The row's own key first in the primary key: it tells rows apart at its first column, where
-- (tenant, tbl, pk_key) compared two text columns that are nearly always equal before reaching
-- it, on every probe and every insert (about a quarter of a push's database time went to
-- comparing keys). Every lookup names all three columns, so none loses its index; on a large
-- table this rebuilds the index once.
ALTER TABLE rows DROP CONSTRAINT rows_pkey,
  ADD CONSTRAINT rows_pkey PRIMARY KEY (pk_key, tbl, tenant);
";

/// The billing job's state (see `crate::billing`): server-wide, not per tenant. Times are
/// `timestamptz` cut to milliseconds; the ones the store stamps come from `clock_timestamp()`.
/// The texts that are listed in order (`transaction_id`, `id_tag`) compare bytewise
/// (`COLLATE "C"`), as SQLite does, so a page's `after` means the same on both stores.
const V6_BILLING: &str = r#"
-- A tag's Lago customer; `subscription` NULL bills the subscription active at a session's stop.
CREATE TABLE billing_mappings (
  id_tag       text COLLATE "C" PRIMARY KEY CHECK (id_tag <> ''),
  customer     text NOT NULL CHECK (customer <> ''),
  subscription text,
  updated_at   timestamptz NOT NULL
);

-- The ledger: one row per StEvE transaction (`id` is StEvE's transaction id). Meter values in
-- milli-watt-hours. `revision` is 1 when inserted and bumped by every later write except a
-- delivery's `billed_wh`; a planner's update only lands where it still has the value it read.
CREATE TABLE billing_sessions (
  id            bigint PRIMARY KEY,
  charge_box_id text NOT NULL,
  connector_id  bigint NOT NULL,
  id_tag        text NOT NULL,
  started_at    timestamptz,
  stopped_at    timestamptz,
  start_mwh     bigint,
  stop_mwh      bigint,
  planned_wh    bigint NOT NULL,
  billed_wh     bigint NOT NULL DEFAULT 0,
  state         text NOT NULL
    CHECK (state IN ('active', 'billed', 'parked', 'needs_review', 'ignored')),
  reason        text,
  approved      boolean NOT NULL DEFAULT false,
  revision      bigint NOT NULL,
  updated_at    timestamptz NOT NULL
);
CREATE INDEX billing_sessions_by_state ON billing_sessions (state, id);
CREATE INDEX billing_sessions_by_tag ON billing_sessions (id_tag, id);

-- The outbox. `transaction_id` is Lago's idempotency key; an event is inserted once and leaves
-- `pending` once, so a settled event has its settle time and a pending one has none.
-- `properties` is `json`, not `jsonb`: checked on the way in, and read back as it was written.
CREATE TABLE billing_events (
  transaction_id text COLLATE "C" PRIMARY KEY,
  session_id     bigint NOT NULL REFERENCES billing_sessions (id),
  seq            bigint NOT NULL,
  customer       text NOT NULL,
  subscription   text NOT NULL,
  code           text NOT NULL,
  timestamp      timestamptz NOT NULL,
  wh             bigint NOT NULL,
  properties     json NOT NULL,
  status         text NOT NULL CHECK (status IN ('pending', 'delivered', 'rejected')),
  error          text,
  attempts       bigint NOT NULL DEFAULT 0,
  created_run    bigint,
  settled_run    bigint,
  created_at     timestamptz NOT NULL,
  settled_at     timestamptz,
  CHECK ((status = 'pending') = (settled_at IS NULL))
);
CREATE INDEX billing_events_pending ON billing_events (transaction_id) WHERE status = 'pending';
CREATE INDEX billing_events_by_session ON billing_events (session_id, seq);
CREATE INDEX billing_events_by_run ON billing_events (settled_run, transaction_id)
  WHERE settled_run IS NOT NULL;

-- How far the job has read StEvE: one row, saved with the sessions it covers.
CREATE TABLE billing_cursor (
  id            smallint PRIMARY KEY CHECK (id = 1),
  window_end    timestamptz,
  last_sweep    timestamptz,
  last_activity timestamptz,
  max_id        bigint,
  updated_at    timestamptz NOT NULL
);
"#;

/// Live consoles' events (`crate::events`): triggers that `pg_notify` the record a change
/// touched, inside the writing transaction, whichever process writes. The payload names the
/// record only; subscribers read it again. A device's time-only changes (a check-in, a pull)
/// notify at most once a second, so a busy device does not flood the channel; a change of
/// what a console shows besides times always notifies.
const V7_EVENTS: &str = r#"
-- One branch per table: PL/pgSQL resolves `NEW.id` and the like only in the branch it runs.
CREATE FUNCTION notify_console() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'runs' THEN
    PERFORM pg_notify('ferry_events',
      jsonb_build_object('kind', 'run', 'id', NEW.id, 'job', NEW.job)::text);
  ELSIF TG_TABLE_NAME = 'workers' THEN
    PERFORM pg_notify('ferry_events', '{"kind": "listener"}');
  ELSIF TG_TABLE_NAME = 'devices' THEN
    PERFORM pg_notify('ferry_events',
      jsonb_build_object('kind', 'device', 'tenant', NEW.tenant, 'device_id', NEW.device_id)::text);
  ELSE
    PERFORM pg_notify('ferry_events', jsonb_build_object('kind', 'state', 'job', NEW.job)::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER runs_notify_console AFTER INSERT OR UPDATE OF status ON runs
  FOR EACH ROW EXECUTE FUNCTION notify_console();
CREATE TRIGGER job_cadence_notify_console AFTER INSERT OR UPDATE ON job_cadence
  FOR EACH ROW EXECUTE FUNCTION notify_console();
CREATE TRIGGER triggers_notify_console AFTER INSERT OR UPDATE OF run_id ON triggers
  FOR EACH ROW EXECUTE FUNCTION notify_console();
CREATE TRIGGER workers_notify_console_insert AFTER INSERT ON workers
  FOR EACH ROW EXECUTE FUNCTION notify_console();
CREATE TRIGGER workers_notify_console_update AFTER UPDATE ON workers
  FOR EACH ROW WHEN (OLD.listener_connected IS DISTINCT FROM NEW.listener_connected)
  EXECUTE FUNCTION notify_console();
CREATE TRIGGER devices_notify_console_insert AFTER INSERT ON devices
  FOR EACH ROW EXECUTE FUNCTION notify_console();
CREATE TRIGGER devices_notify_console_update AFTER UPDATE ON devices
  FOR EACH ROW WHEN (
    OLD.pending IS DISTINCT FROM NEW.pending
    OR OLD.name IS DISTINCT FROM NEW.name
    OR OLD.version IS DISTINCT FROM NEW.version
    OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
    OR (NEW.last_seen_at IS NOT NULL
        AND (OLD.last_seen_at IS NULL OR NEW.last_seen_at >= OLD.last_seen_at + interval '1 second'))
    OR (NEW.last_push_at IS NOT NULL
        AND (OLD.last_push_at IS NULL OR NEW.last_push_at >= OLD.last_push_at + interval '1 second'))
    OR (NEW.last_pull_at IS NOT NULL
        AND (OLD.last_pull_at IS NULL OR NEW.last_pull_at >= OLD.last_pull_at + interval '1 second'))
  )
  EXECUTE FUNCTION notify_console();
"#;

/// Each losing write in the conflict log once, as SQLite's migration 5 does (see there): the
/// duplicates an earlier version logged go, the earliest record of each write kept, and the
/// index is keyed on the losing write, `coalesce` making a missing device one value. (PostgreSQL
/// 15's `NULLS NOT DISTINCT` would do as well; the expression keeps the index, and the conflict
/// target of the insert that names it, the same on both stores.)
const V8_CONFLICTS_ONCE_PER_LOSER: &str = "
DELETE FROM conflicts WHERE id IN (
  SELECT id FROM (
    SELECT id, row_number() OVER (
      PARTITION BY tenant, tbl, pk_key, loser_version, coalesce(loser_device, '')
      ORDER BY id
    ) AS nth
    FROM conflicts
  ) AS numbered
  WHERE nth > 1
);
DROP INDEX conflicts_once;
CREATE UNIQUE INDEX conflicts_once
  ON conflicts (tenant, tbl, pk_key, loser_version, coalesce(loser_device, ''));
";

/// The schema version this build of Ferry knows.
const LATEST: usize = MIGRATIONS.len();

/// Brings the database up to the latest version; returns the versions it applied.
pub(super) async fn run(client: &mut Object) -> Result<Vec<usize>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations (
           version    integer PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA}.migrations"),
            &[],
        )
        .await?
        .get(0);
    let current = usize::try_from(current).unwrap_or(0);
    if current > LATEST {
        return Err(StoreError::Internal(format!(
            "the database is at schema version {current}, newer than this Ferry knows \
             ({LATEST}); upgrade Ferry"
        )));
    }
    let mut applied = Vec::new();
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        // Unqualified names in a migration go to the `ferry` schema.
        tx.batch_execute(&format!("SET LOCAL search_path TO {SCHEMA};\n{migration}"))
            .await?;
        tx.execute(
            &format!("INSERT INTO {SCHEMA}.migrations (version) VALUES ($1)"),
            &[&(version as i32)],
        )
        .await?;
        applied.push(version);
    }
    tx.commit().await?;
    for version in &applied {
        tracing::info!(version, "Migrated the store's database.");
    }
    Ok(applied)
}
