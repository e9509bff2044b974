//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! Each entry of [`MIGRATIONS`] runs once, in order, in its own transaction. Never edit a
//! migration that has shipped: add a new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::{Result, StoreError};

/// Migration `i` brings the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1_INITIAL];

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
