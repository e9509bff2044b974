//! Fixtures: a schema with text, integer, BLOB and composite keys and a self-reference, a
//! replica installed into a fresh file, and the app's own connection to the same file.

use std::path::PathBuf;
use std::time::Duration;

use ferry_client::replica::{PushLimit, Replica, ReplicaOptions};
use ferry_proto::{Row, RowChange};
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use tempfile::TempDir;

pub(crate) const DEVICE: &str = "dev_a";

pub(crate) const DDL: &str = "
CREATE TABLE categories (
  id        TEXT PRIMARY KEY NOT NULL,
  name      TEXT NOT NULL,
  parent_id TEXT REFERENCES categories (id)
);
CREATE TABLE items (
  id          INTEGER PRIMARY KEY,
  name        TEXT,
  price       REAL,
  category_id TEXT REFERENCES categories (id)
);
CREATE TABLE files (
  hash BLOB PRIMARY KEY NOT NULL,
  body BLOB
);
CREATE TABLE stock (
  store TEXT NOT NULL,
  sku   INTEGER NOT NULL,
  qty   INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (store, sku)
) WITHOUT ROWID;
";

pub(crate) struct Fixture {
    // Dropped last: the files live in it.
    _dir: TempDir,
    pub(crate) path: PathBuf,
    pub(crate) replica: Replica,
    /// The app's own connection: plain rusqlite, no Ferry code.
    pub(crate) app: Connection,
}

impl Fixture {
    /// A fresh file with tracking installed for [`DDL`].
    pub(crate) fn new() -> Fixture {
        Fixture::with_options(ReplicaOptions::default())
    }

    pub(crate) fn with_options(options: ReplicaOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let replica = Replica::install(&path, DDL, DEVICE, options).unwrap();
        let app = app_connection(&path);
        Fixture {
            _dir: dir,
            path,
            replica,
            app,
        }
    }

    /// `(_isDirty, _ferryVersion)` of one row, found by an SQL condition.
    pub(crate) fn row_state(&self, table: &str, condition: &str) -> Option<(i64, Option<String>)> {
        self.app
            .query_row(
                &format!("SELECT _isDirty, _ferryVersion FROM {table} WHERE {condition}"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .unwrap()
    }

    pub(crate) fn is_dirty(&self, table: &str, condition: &str) -> bool {
        self.row_state(table, condition).expect("the row exists").0 == 1
    }

    pub(crate) fn version(&self, table: &str, condition: &str) -> String {
        self.row_state(table, condition)
            .expect("the row exists")
            .1
            .expect("the row has a version")
    }

    /// Every tombstone: `(tbl, pk, version, _isDirty)`, by table and key.
    pub(crate) fn tombstones(&self) -> Vec<(String, String, String, i64)> {
        let mut stmt = self
            .app
            .prepare("SELECT tbl, pk, version, _isDirty FROM _ferry_tombstones ORDER BY tbl, pk")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    pub(crate) fn count(&self, sql: &str) -> i64 {
        self.app.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Clears every dirty flag as if everything had been pushed and confirmed.
    pub(crate) fn push_everything(&mut self) {
        let mut cursor = Default::default();
        loop {
            let batch = self
                .replica
                .next_push_batch(&mut cursor, PushLimit::rows(100))
                .unwrap();
            if batch.rows.is_empty() {
                break;
            }
            self.replica.stamp(&batch.rows).unwrap();
        }
        assert_eq!(self.replica.pending().unwrap(), 0);
    }
}

/// A connection as an app would open one.
pub(crate) fn app_connection(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

pub(crate) fn row(value: Value) -> Row {
    value.as_object().expect("an object").clone()
}

/// A version of another device at `ms` (milliseconds since the epoch).
pub(crate) fn remote_version(ms: i64, counter: u16) -> String {
    ferry_core::version::format(ms, counter, "dev_remote")
}

/// A version far ahead of any local clock, so a pulled row carrying it wins.
pub(crate) fn future_version(counter: u16) -> String {
    remote_version(now_ms() + 3_600_000, counter)
}

/// A version behind every local write of this test run.
pub(crate) fn past_version(counter: u16) -> String {
    remote_version(now_ms() - 3_600_000, counter)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn upsert(table: &str, pk: Value, version: &str, data: Value) -> RowChange {
    RowChange {
        table: table.into(),
        pk: row(pk),
        version: version.into(),
        deleted: false,
        data: Some(row(data)),
    }
}

pub(crate) fn tombstone(table: &str, pk: Value, version: &str) -> RowChange {
    RowChange {
        table: table.into(),
        pk: row(pk),
        version: version.into(),
        deleted: true,
        data: None,
    }
}
