//! The device's replica: the app's own SQLite file, with Ferry's tracking installed into it.
//!
//! This is the synchronous, SQLite-only half of the client. It installs tracking, reads dirty
//! rows for push, stamps confirmed ones, applies pulled pages and keeps Ferry's state, log and
//! local conflict record. It knows nothing about HTTP, so every rule here is tested with real
//! files and a second connection playing the app.
//!
//! Every write of the engine goes through [`engine_write`]: `BEGIN IMMEDIATE`, a row in
//! `_ferry_apply` (which silences the tracking triggers), the work, the row removed, `COMMIT`.
//! Writes are kept short so the app's own writes never wait long for the lock.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_core::{Affinity, Schema, Table, version};
use ferry_proto::local::{CycleReport, CycleTrigger};
use ferry_proto::{Row, RowChange};
use ferry_schema::{
    DIRTY_COLUMN, INTERNAL_PREFIX, SYNCED_AT_COLUMN, VERSION_COLUMN, introspect_tables, quote_ident,
};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::tracking;
use crate::values::{self, Bind};

/// Keys of `_ferry_state`.
mod key {
    pub(super) const SCHEMA_DDL: &str = "schema_ddl";
    pub(super) const SCHEMA_HASH: &str = "schema_hash";
    pub(super) const SERVER_URL: &str = "server_url";
    pub(super) const DEVICE_ID: &str = "device_id";
    pub(super) const TENANT: &str = "tenant";
    pub(super) const TOKEN: &str = "token";
    pub(super) const CURSOR: &str = "pull_cursor";
    pub(super) const LAST_SYNCED_AT: &str = "last_synced_at";
}

/// How many cycle reports `_ferry_log` keeps.
const LOG_KEEP: i64 = 100;

/// How the engine shares the file with the app.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Most rows applied in one write transaction.
    pub apply_max_rows: usize,
    /// Longest the engine holds the write lock in one transaction while applying pulled rows.
    pub apply_max_time: Duration,
    /// How long the engine waits for the app to release the write lock.
    pub busy_timeout: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            apply_max_rows: 2_000,
            apply_max_time: Duration::from_millis(4),
            busy_timeout: Duration::from_secs(30),
        }
    }
}

/// How pulled rows merge with local ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Last write wins per row: a local row (or local delete) at a version at least as great as
    /// the pulled one is kept.
    LastWriteWins,
    /// The cloud is authoritative: every pulled row overwrites the local one ("force pull").
    CloudWins,
}

/// What applying pulled changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Changes written to the replica.
    pub applied: u64,
    /// Changes that lost to a newer (or the same) local version.
    pub kept_local: u64,
    /// Local unpushed changes a pulled change overwrote (each recorded in `_ferry_conflicts`).
    pub conflicts: u64,
    /// Changes for tables this device does not sync, or without a usable key.
    pub skipped: u64,
}

impl std::ops::AddAssign for ApplyStats {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.kept_local += other.kept_local;
        self.conflicts += other.conflicts;
        self.skipped += other.skipped;
    }
}

/// Why a local change was overwritten by a pulled one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictReason {
    /// A newer version from the server replaced a local change that was not pushed yet.
    NewerRemote,
    /// A force pull replaced a local change that was not pushed yet.
    ForcePull,
}

impl ConflictReason {
    fn as_str(self) -> &'static str {
        match self {
            ConflictReason::NewerRemote => "newer_remote",
            ConflictReason::ForcePull => "force_pull",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "force_pull" {
            ConflictReason::ForcePull
        } else {
            ConflictReason::NewerRemote
        }
    }
}

/// A local change that a pull overwrote before it was pushed, kept so it is never silently lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalConflict {
    pub id: i64,
    pub table: String,
    pub pk: Row,
    pub local_version: Option<String>,
    /// The local change was a delete.
    pub local_deleted: bool,
    /// The local row as it was before it was overwritten (`None` for a delete).
    pub local_data: Option<Row>,
    pub remote_version: String,
    pub remote_deleted: bool,
    pub recorded_at: String,
    pub reason: ConflictReason,
}

/// The server a replica is paired with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub server_url: String,
    pub device_id: String,
    pub tenant: String,
    pub token: String,
}

/// One batch of dirty rows and tombstones to push, with what is needed to stamp them later.
#[derive(Debug, Clone, Default)]
pub struct PushBatch {
    /// The changes, ready for the wire.
    pub changes: Vec<RowChange>,
    /// Where each change came from, in the same order.
    pub rows: Vec<DirtyRow>,
}

/// A dirty row (or tombstone) as it was read for push.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyRow {
    table: usize,
    key: RowKey,
    version: String,
}

#[derive(Debug, Clone, PartialEq)]
enum RowKey {
    /// The primary-key values of a live row, in key order.
    Row(Vec<SqlValue>),
    /// The key text of a tombstone.
    Tombstone(String),
}

/// Where a push pass has got to: dirty rows table by table in dependency order (parents
/// first), then tombstones with children's tables first, each by key (keyset pagination, so a
/// rejected row that stays dirty is not read again in the same pass).
#[derive(Debug, Clone, Default)]
pub struct PushCursor {
    step: usize,
    after: Option<RowKey>,
}

/// A synced table and the SQL the engine runs against it.
///
/// Pull-side statements number their parameters by column position (`?1` is the first column,
/// `?n+1` the sync time, `?n+2` the version), so one binding routine serves all of them.
/// Push-side statements number key columns in key order.
#[derive(Debug)]
struct TableSql {
    name: String,
    columns: Vec<String>,
    affinities: Vec<Affinity>,
    is_key: Vec<bool>,
    /// Positions of the key columns, in key order.
    key: Vec<usize>,
    upsert_lww: String,
    upsert_force: String,
    overwrite: String,
    lookup: String,
    select_data: String,
    delete: String,
    dirty_first: String,
    dirty_after: String,
    dirty_one: String,
    count_dirty: String,
    stamp: String,
}

impl TableSql {
    fn new(table: &Table) -> TableSql {
        let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let is_key: Vec<bool> = columns
            .iter()
            .map(|c| table.primary_key.contains(c))
            .collect();
        let key: Vec<usize> = table
            .primary_key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .expect("key columns exist")
            })
            .collect();
        let name = quote_ident(&table.name);
        let all = vec![true; columns.len()];
        let by_position = |positions: &[usize]| {
            positions
                .iter()
                .map(|&p| format!("{} = ?{}", quote_ident(&columns[p]), p + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let by_key_index = |first: usize| {
            table
                .primary_key
                .iter()
                .enumerate()
                .map(|(j, c)| format!("{} = ?{}", quote_ident(c), first + j))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let key_list = table
            .primary_key
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let key_params = (1..=key.len())
            .map(|j| format!("?{j}"))
            .collect::<Vec<_>>()
            .join(", ");
        let data_list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let dirty = quote_ident(DIRTY_COLUMN);
        let version = quote_ident(VERSION_COLUMN);
        let synced_at = quote_ident(SYNCED_AT_COLUMN);
        let limit = key.len() + 1;
        let mut sql = TableSql {
            upsert_lww: String::new(),
            upsert_force: String::new(),
            overwrite: String::new(),
            lookup: format!(
                "SELECT {version}, {dirty} FROM {name} WHERE {}",
                by_position(&key)
            ),
            select_data: format!("SELECT {data_list} FROM {name} WHERE {}", by_position(&key)),
            delete: format!("DELETE FROM {name} WHERE {}", by_position(&key)),
            dirty_first: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 \
                 ORDER BY {key_list} LIMIT ?1"
            ),
            dirty_after: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 \
                 AND ({key_list}) > ({key_params}) ORDER BY {key_list} LIMIT ?{limit}"
            ),
            dirty_one: format!(
                "SELECT {data_list}, {version} FROM {name} WHERE {dirty} = 1 AND {}",
                by_key_index(1)
            ),
            count_dirty: format!("SELECT count(*) FROM {name} WHERE {dirty} = 1"),
            stamp: format!(
                "UPDATE {name} SET {dirty} = 0, {synced_at} = ?1 WHERE {version} = ?2 AND {}",
                by_key_index(3)
            ),
            name: table.name.clone(),
            columns,
            affinities: table.columns.iter().map(|c| c.affinity).collect(),
            is_key,
            key,
        };
        sql.upsert_lww = sql.upsert_sql(&all, ApplyMode::LastWriteWins);
        sql.upsert_force = sql.upsert_sql(&all, ApplyMode::CloudWins);
        sql.overwrite = sql.overwrite_sql(&all);
        sql
    }

    /// Inserts a pulled row, or updates the local one when it is clean (and, under last write
    /// wins, older). Zero changes means the local row needs a closer look.
    fn upsert_sql(&self, present: &[bool], mode: ApplyMode) -> String {
        let n = self.columns.len();
        let (dirty, synced_at, version) = ferry_columns();
        let mut names = Vec::new();
        let mut params = Vec::new();
        let mut sets = Vec::new();
        for (i, column) in self.columns.iter().enumerate().filter(|(i, _)| present[*i]) {
            let column = quote_ident(column);
            params.push(format!("?{}", i + 1));
            if !self.is_key[i] {
                sets.push(format!("{column} = excluded.{column}"));
            }
            names.push(column);
        }
        let guard = match mode {
            ApplyMode::LastWriteWins => {
                format!(" AND ({version} IS NULL OR {version} < excluded.{version})")
            }
            ApplyMode::CloudWins => String::new(),
        };
        format!(
            "INSERT INTO {table} ({names}, {dirty}, {synced_at}, {version}) \
             VALUES ({params}, 0, ?{s}, ?{v}) \
             ON CONFLICT ({key}) DO UPDATE SET {sets}{dirty} = 0, \
             {synced_at} = excluded.{synced_at}, {version} = excluded.{version} \
             WHERE {dirty} = 0{guard}",
            table = quote_ident(&self.name),
            names = names.join(", "),
            params = params.join(", "),
            s = n + 1,
            v = n + 2,
            key = self.key_list(),
            sets = sets.iter().map(|s| format!("{s}, ")).collect::<String>(),
        )
    }

    /// Overwrites a local row unconditionally (after the engine decided the pulled one wins).
    fn overwrite_sql(&self, present: &[bool]) -> String {
        let n = self.columns.len();
        let (dirty, synced_at, version) = ferry_columns();
        let sets: String = self
            .columns
            .iter()
            .enumerate()
            .filter(|&(i, _)| present[i] && !self.is_key[i])
            .map(|(i, c)| format!("{} = ?{}, ", quote_ident(c), i + 1))
            .collect();
        let key = self
            .key
            .iter()
            .map(|&p| format!("{} = ?{}", quote_ident(&self.columns[p]), p + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "UPDATE {} SET {sets}{dirty} = 0, {synced_at} = ?{}, {version} = ?{} WHERE {key}",
            quote_ident(&self.name),
            n + 1,
            n + 2
        )
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|&p| quote_ident(&self.columns[p]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ferry_columns() -> (String, String, String) {
    (
        quote_ident(DIRTY_COLUMN),
        quote_ident(SYNCED_AT_COLUMN),
        quote_ident(VERSION_COLUMN),
    )
}

/// The app's SQLite file as the sync engine sees it. One engine connection; `Send`, not `Sync`.
pub struct Replica {
    conn: Connection,
    schema: Schema,
    tables: Vec<TableSql>,
    by_name: HashMap<String, usize>,
    /// Push order: table indices, parents first.
    order: Vec<usize>,
    options: ReplicaOptions,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("path", &self.conn.path())
            .field("tables", &self.by_name.len())
            .finish()
    }
}

impl Replica {
    /// Installs (or re-installs) tracking for the synced tables declared by `ddl` into the file
    /// at `path`, creating it if needed, and returns the replica.
    ///
    /// Missing tables are created from the DDL; existing ones must have the same schema as the
    /// server's (refused otherwise, naming the tables). Rows that were already there become dirty
    /// with a fresh version, so adopting an existing app database uploads its rows. Running it
    /// again changes nothing.
    pub fn install(
        path: &Path,
        ddl: &str,
        device_id: &str,
        options: ReplicaOptions,
    ) -> Result<Replica> {
        if version::Version::parse(&version::format(0, 0, device_id)).is_err() {
            return Err(Error::InvalidDeviceId(device_id.to_string()));
        }
        let schema = ferry_schema::parse_ddl(ddl)?;
        let mut conn = open_connection(path, &options)?;
        // Journal mode cannot change inside a transaction. WAL lets the app read while the
        // engine writes, and the engine's short transactions interleave with the app's writes.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        check_existing_tables(&conn, &schema)?;

        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(tracking::INTERNAL_TABLES)?;
        tx.execute("INSERT INTO _ferry_apply (engine) VALUES (1)", [])?;
        let previous: Option<String> = get_state(&tx, key::SCHEMA_DDL)?;
        if let Some(previous) = previous.and_then(|ddl| ferry_schema::parse_ddl(&ddl).ok()) {
            for old in previous
                .tables
                .iter()
                .filter(|t| schema.table(&t.name).is_none())
            {
                for statement in tracking::uninstall_table(&old.name) {
                    tx.execute(&statement, [])?;
                }
            }
        }
        for table in &schema.tables {
            let existing = column_names(&tx, &table.name)?;
            if existing.is_empty() {
                let create = table.sql.clone().unwrap_or_default();
                tx.execute_batch(&create)?;
            }
            let existing = column_names(&tx, &table.name)?;
            for statement in tracking::install_table(table, &existing) {
                tx.execute(&statement, [])?;
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO _ferry_clock (id, ms, counter, node) VALUES (1, 0, 0, ?1)",
            [device_id],
        )?;
        tx.execute(
            "UPDATE _ferry_clock SET node = ?1 WHERE id = 1",
            [device_id],
        )?;
        // Adopt rows written before tracking existed: one fresh version for all of them.
        tx.execute(&tracking::tick_clock(), [])?;
        for table in &schema.tables {
            tx.execute(
                &format!(
                    "UPDATE {} SET {} = 1, {} = {} WHERE {} IS NULL",
                    quote_ident(&table.name),
                    quote_ident(DIRTY_COLUMN),
                    quote_ident(VERSION_COLUMN),
                    tracking::CURRENT_VERSION,
                    quote_ident(VERSION_COLUMN),
                ),
                [],
            )?;
        }
        set_state(&tx, key::SCHEMA_DDL, Some(ddl))?;
        set_state(&tx, key::SCHEMA_HASH, Some(&ferry_schema::hash(&schema)))?;
        tx.execute("DELETE FROM _ferry_apply", [])?;
        tx.commit()?;
        Ok(Replica::with_schema(conn, schema, options))
    }

    /// Opens a file where tracking is installed.
    pub fn open(path: &Path, options: ReplicaOptions) -> Result<Replica> {
        if !path.exists() {
            return Err(Error::NotPaired(path.to_path_buf()));
        }
        let conn = open_connection(path, &options)?;
        let installed: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_ferry_state')",
            [],
            |r| r.get(0),
        )?;
        let ddl = match installed {
            true => get_state(&conn, key::SCHEMA_DDL)?,
            false => None,
        };
        let Some(ddl) = ddl else {
            return Err(Error::NotPaired(path.to_path_buf()));
        };
        let schema = ferry_schema::parse_ddl(&ddl)?;
        Ok(Replica::with_schema(conn, schema, options))
    }

    fn with_schema(conn: Connection, schema: Schema, options: ReplicaOptions) -> Replica {
        let tables: Vec<TableSql> = schema.tables.iter().map(TableSql::new).collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let order = schema.dependency_order();
        Replica {
            conn,
            schema,
            tables,
            by_name,
            order,
            options,
        }
    }

    /// The synced tables, as the server declared them.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The engine's connection, for reads (tests and diagnostics).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The schema hash of the synced tables as they are in the file now (an app migration
    /// changes it).
    pub fn schema_hash(&self) -> Result<String> {
        let names: Vec<&str> = self.schema.tables.iter().map(|t| t.name.as_str()).collect();
        let tables = introspect_tables(&self.conn, &names)?
            .into_iter()
            .flatten()
            .collect();
        Ok(ferry_schema::hash(&Schema { tables }))
    }

    /// Saves the server this file is paired with. The pull cursor starts over, since a new
    /// pairing may be a new tenant.
    pub fn save_pairing(&mut self, pairing: &Pairing) -> Result<()> {
        engine_write(&mut self.conn, |conn| {
            set_state(conn, key::SERVER_URL, Some(&pairing.server_url))?;
            set_state(conn, key::DEVICE_ID, Some(&pairing.device_id))?;
            set_state(conn, key::TENANT, Some(&pairing.tenant))?;
            set_state(conn, key::TOKEN, Some(&pairing.token))?;
            set_state(conn, key::CURSOR, None)?;
            Ok(())
        })
    }

    /// The server this file is paired with, if it is.
    pub fn pairing(&self) -> Result<Option<Pairing>> {
        let get = |k| get_state(&self.conn, k);
        let (Some(server_url), Some(device_id), Some(tenant), Some(token)) = (
            get(key::SERVER_URL)?,
            get(key::DEVICE_ID)?,
            get(key::TENANT)?,
            get(key::TOKEN)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Pairing {
            server_url,
            device_id,
            tenant,
            token,
        }))
    }

    /// The pull cursor: where the next pull starts (`None`: from the beginning).
    pub fn cursor(&self) -> Result<Option<String>> {
        get_state(&self.conn, key::CURSOR)
    }

    /// When the last successful cycle finished.
    pub fn last_synced_at(&self) -> Result<Option<String>> {
        get_state(&self.conn, key::LAST_SYNCED_AT)
    }

    /// Dirty rows plus dirty tombstones: the changes waiting to be pushed.
    pub fn pending(&self) -> Result<u64> {
        let mut total: u64 = self.conn.query_row(
            "SELECT count(*) FROM _ferry_tombstones WHERE _isDirty = 1",
            [],
            |r| r.get(0),
        )?;
        for table in &self.tables {
            let n: u64 = self
                .conn
                .prepare_cached(&table.count_dirty)?
                .query_row([], |r| r.get(0))?;
            total += n;
        }
        Ok(total)
    }

    // ---------------------------------------------------------------------------------------
    // Push: reading dirty rows and stamping confirmed ones.

    /// Reads up to `limit` dirty rows and tombstones after `cursor`, advancing it.
    pub fn next_push_batch(&self, cursor: &mut PushCursor, limit: usize) -> Result<PushBatch> {
        let mut batch = PushBatch::default();
        let tables = self.order.len();
        while batch.rows.len() < limit && cursor.step < 2 * tables {
            let want = limit - batch.rows.len();
            let read = if cursor.step < tables {
                let table = self.order[cursor.step];
                self.read_dirty_rows(table, cursor.after.as_ref(), want, &mut batch)?
            } else {
                let table = self.order[2 * tables - 1 - cursor.step];
                self.read_dirty_tombstones(table, cursor.after.as_ref(), want, &mut batch)?
            };
            match read {
                Some(last) if batch.rows.len() >= limit => cursor.after = Some(last),
                _ => {
                    // This table is exhausted: on to the next step.
                    cursor.step += 1;
                    cursor.after = None;
                }
            }
        }
        Ok(batch)
    }

    /// Reads the current dirty state of rows read earlier (to push them again); rows that are
    /// no longer dirty are left out.
    pub fn reread(&self, rows: &[DirtyRow]) -> Result<PushBatch> {
        let mut batch = PushBatch::default();
        for row in rows {
            let table = &self.tables[row.table];
            match &row.key {
                RowKey::Row(key) => {
                    let mut stmt = self.conn.prepare_cached(&table.dirty_one)?;
                    let mut found = stmt.query(rusqlite::params_from_iter(key))?;
                    if let Some(r) = found.next()? {
                        let (change, dirty) = self.row_change(row.table, r)?;
                        push_change(&mut batch, change, dirty);
                    }
                }
                RowKey::Tombstone(key_text) => {
                    let version: Option<String> = self
                        .conn
                        .prepare_cached(
                            "SELECT version FROM _ferry_tombstones
                             WHERE _isDirty = 1 AND tbl = ?1 AND pk = ?2",
                        )?
                        .query_row((&table.name, key_text), |r| r.get(0))
                        .optional()?;
                    if let Some(version) = version {
                        if let Some((change, dirty)) =
                            self.tombstone_change(row.table, key_text, version)
                        {
                            push_change(&mut batch, change, dirty);
                        }
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Clears the dirty flag of pushed rows the server confirmed, but only where the row still
    /// holds the pushed version: a row edited after it was read for push stays dirty.
    pub fn stamp<'a>(&mut self, rows: impl IntoIterator<Item = &'a DirtyRow>) -> Result<u64> {
        let synced_at = now_text();
        let tables = &self.tables;
        engine_write(&mut self.conn, |conn| {
            let mut stamped = 0;
            for row in rows {
                let table = &tables[row.table];
                stamped += match &row.key {
                    RowKey::Row(key) => {
                        let mut stmt = conn.prepare_cached(&table.stamp)?;
                        stmt.raw_bind_parameter(1, &synced_at)?;
                        stmt.raw_bind_parameter(2, &row.version)?;
                        for (j, value) in key.iter().enumerate() {
                            stmt.raw_bind_parameter(j + 3, value)?;
                        }
                        stmt.raw_execute()?
                    }
                    RowKey::Tombstone(key_text) => conn
                        .prepare_cached(
                            "UPDATE _ferry_tombstones SET _isDirty = 0, _lastSyncedAt = ?1
                             WHERE tbl = ?2 AND pk = ?3 AND version = ?4",
                        )?
                        .execute((&synced_at, &table.name, key_text, &row.version))?,
                } as u64;
            }
            Ok(stamped)
        })
    }

    /// Appends the dirty rows of one table after `after` to the batch; returns the last key read.
    fn read_dirty_rows(
        &self,
        table: usize,
        after: Option<&RowKey>,
        limit: usize,
        batch: &mut PushBatch,
    ) -> Result<Option<RowKey>> {
        let t = &self.tables[table];
        let mut stmt;
        let mut rows = match after {
            Some(RowKey::Row(key)) => {
                stmt = self.conn.prepare_cached(&t.dirty_after)?;
                for (j, value) in key.iter().enumerate() {
                    stmt.raw_bind_parameter(j + 1, value)?;
                }
                stmt.raw_bind_parameter(key.len() + 1, limit as i64)?;
                stmt.raw_query()
            }
            _ => {
                stmt = self.conn.prepare_cached(&t.dirty_first)?;
                stmt.raw_bind_parameter(1, limit as i64)?;
                stmt.raw_query()
            }
        };
        let mut last = None;
        while let Some(row) = rows.next()? {
            let (change, dirty) = self.row_change(table, row)?;
            last = Some(dirty.key.clone());
            push_change(batch, change, dirty);
        }
        Ok(last)
    }

    fn read_dirty_tombstones(
        &self,
        table: usize,
        after: Option<&RowKey>,
        limit: usize,
        batch: &mut PushBatch,
    ) -> Result<Option<RowKey>> {
        let after = match after {
            Some(RowKey::Tombstone(text)) => text.as_str(),
            _ => "",
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT pk, version FROM _ferry_tombstones
             WHERE _isDirty = 1 AND tbl = ?1 AND pk > ?2 ORDER BY pk LIMIT ?3",
        )?;
        let mut rows = stmt.query((&self.tables[table].name, after, limit as i64))?;
        let mut last = None;
        while let Some(row) = rows.next()? {
            let key_text: String = row.get(0)?;
            let version: String = row.get(1)?;
            match self.tombstone_change(table, &key_text, version) {
                Some((change, dirty)) => push_change(batch, change, dirty),
                None => tracing::warn!(
                    table = %self.tables[table].name,
                    key = %key_text,
                    "A tombstone with an unreadable key was left out of the push."
                ),
            }
            last = Some(RowKey::Tombstone(key_text));
        }
        Ok(last)
    }

    /// A live dirty row (all data columns, then the version) as a change.
    fn row_change(&self, table: usize, row: &rusqlite::Row<'_>) -> Result<(RowChange, DirtyRow)> {
        let t = &self.tables[table];
        let mut data = Map::new();
        let mut pk = Map::new();
        let mut key = Vec::with_capacity(t.key.len());
        for (i, column) in t.columns.iter().enumerate() {
            let value = row.get_ref(i)?;
            data.insert(column.clone(), values::to_json(value));
        }
        for &p in &t.key {
            let value = row.get_ref(p)?;
            pk.insert(t.columns[p].clone(), values::to_json(value));
            key.push(SqlValue::from(value));
        }
        // Every tracked write stamps a version; a row someone marked dirty by hand gets the
        // oldest possible one, so it never overwrites anything on the server.
        let version: Option<String> = row.get(t.columns.len())?;
        let version = version.unwrap_or_else(|| version::format(0, 0, "unversioned"));
        let change = RowChange {
            table: t.name.clone(),
            pk,
            version: version.clone(),
            deleted: false,
            data: Some(data),
        };
        let dirty = DirtyRow {
            table,
            key: RowKey::Row(key),
            version,
        };
        Ok((change, dirty))
    }

    fn tombstone_change(
        &self,
        table: usize,
        key_text: &str,
        version: String,
    ) -> Option<(RowChange, DirtyRow)> {
        let t = &self.tables[table];
        let key = values::parse_key_text(key_text).filter(|k| k.len() == t.key.len())?;
        let pk: Map<String, Value> = t
            .key
            .iter()
            .zip(&key)
            .map(|(&p, v)| (t.columns[p].clone(), values::sql_to_json(v)))
            .collect();
        let change = RowChange {
            table: t.name.clone(),
            pk,
            version: version.clone(),
            deleted: true,
            data: None,
        };
        let dirty = DirtyRow {
            table,
            key: RowKey::Tombstone(key_text.to_string()),
            version,
        };
        Some((change, dirty))
    }

    // ---------------------------------------------------------------------------------------
    // Pull: applying pulled pages.

    /// Applies one pulled page and, with its last rows, saves `cursor` (so a crash mid-page
    /// re-pulls the page, whose re-application changes nothing). The page is applied in short
    /// write transactions, bounded by rows and time, so app writes interleave with it.
    pub fn apply_page(
        &mut self,
        changes: &[RowChange],
        cursor: Option<&str>,
        mode: ApplyMode,
    ) -> Result<ApplyStats> {
        let mut stats = ApplyStats::default();
        let mut done = 0;
        loop {
            let (n, batch_stats) = self.apply_batch(&changes[done..], cursor, mode)?;
            done += n;
            stats += batch_stats;
            if done >= changes.len() {
                return Ok(stats);
            }
        }
    }

    /// Applies changes from the front of `changes` in one write transaction until the row or
    /// time bound is reached; saves `cursor` too when that takes in every change. Returns how
    /// many changes it took.
    pub fn apply_batch(
        &mut self,
        changes: &[RowChange],
        cursor: Option<&str>,
        mode: ApplyMode,
    ) -> Result<(usize, ApplyStats)> {
        let synced_at = now_text();
        let Replica {
            conn,
            tables,
            by_name,
            options,
            ..
        } = self;
        engine_write(conn, |conn| {
            let started = Instant::now();
            let mut apply = Applier {
                conn,
                tables,
                by_name,
                mode,
                synced_at: &synced_at,
                has_tombstones: conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM _ferry_tombstones)")?
                    .query_row([], |r| r.get(0))?,
                upserts: (0..tables.len()).map(|_| None).collect(),
                stats: ApplyStats::default(),
                newest: None,
            };
            let mut taken = 0;
            for change in changes {
                apply.apply(change)?;
                taken += 1;
                if taken >= options.apply_max_rows
                    || (taken % 64 == 0 && started.elapsed() >= options.apply_max_time)
                {
                    break;
                }
            }
            apply.observe_newest()?;
            let stats = apply.stats;
            drop(apply);
            if taken == changes.len() {
                if let Some(cursor) = cursor {
                    set_state(conn, key::CURSOR, Some(cursor))?;
                }
            }
            Ok((taken, stats))
        })
    }

    /// The local conflict record, oldest first.
    pub fn conflicts(&self) -> Result<Vec<LocalConflict>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, tbl, pk, local_version, local_deleted, local_data, remote_version,
                    remote_deleted, recorded_at, reason
             FROM _ferry_conflicts ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let pk: String = r.get(2)?;
            let data: Option<String> = r.get(5)?;
            let reason: String = r.get(9)?;
            Ok(LocalConflict {
                id: r.get(0)?,
                table: r.get(1)?,
                pk: serde_json::from_str(&pk).unwrap_or_default(),
                local_version: r.get(3)?,
                local_deleted: r.get(4)?,
                local_data: data.and_then(|d| serde_json::from_str(&d).ok()),
                remote_version: r.get(6)?,
                remote_deleted: r.get(7)?,
                recorded_at: r.get(8)?,
                reason: ConflictReason::parse(&reason),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---------------------------------------------------------------------------------------
    // The cycle log.

    /// Appends a cycle report to the log (keeping the last hundred); a successful cycle also
    /// becomes the last sync time.
    pub fn record_cycle(&mut self, report: &CycleReport) -> Result<()> {
        engine_write(&mut self.conn, |conn| {
            conn.execute(
                "INSERT INTO _ferry_log (started_at, trigger, duration_ms, pushed, pulled,
                     rejected, conflicts, ok, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    report.started_at,
                    report.trigger.as_str(),
                    report.duration_ms as i64,
                    report.pushed as i64,
                    report.pulled as i64,
                    report.rejected as i64,
                    report.conflicts as i64,
                    report.ok,
                    report.error,
                ],
            )?;
            conn.execute(
                "DELETE FROM _ferry_log WHERE id <= (SELECT max(id) FROM _ferry_log) - ?1",
                [LOG_KEEP],
            )?;
            Ok(())
        })
    }

    /// Marks the end of a cycle that pushed and pulled everything it could.
    pub fn set_last_synced_at(&mut self, at: &str) -> Result<()> {
        engine_write(&mut self.conn, |conn| {
            set_state(conn, key::LAST_SYNCED_AT, Some(at))
        })
    }

    /// The newest `limit` cycle reports, newest first.
    pub fn log(&self, limit: usize) -> Result<Vec<CycleReport>> {
        let mut stmt = self.conn.prepare(
            "SELECT started_at, trigger, duration_ms, pushed, pulled, rejected, conflicts, ok,
                    error
             FROM _ferry_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let trigger: String = r.get(1)?;
            Ok(CycleReport {
                started_at: r.get(0)?,
                trigger: CycleTrigger::parse(&trigger).unwrap_or(CycleTrigger::Manual),
                duration_ms: r.get(2)?,
                pushed: r.get(3)?,
                pulled: r.get(4)?,
                rejected: r.get(5)?,
                conflicts: r.get(6)?,
                ok: r.get(7)?,
                error: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn push_change(batch: &mut PushBatch, change: RowChange, dirty: DirtyRow) {
    batch.changes.push(change);
    batch.rows.push(dirty);
}

/// Applies pulled changes inside one engine transaction.
struct Applier<'c, 't> {
    conn: &'c Connection,
    tables: &'t [TableSql],
    by_name: &'t HashMap<String, usize>,
    mode: ApplyMode,
    synced_at: &'t str,
    /// Whether any tombstone exists; when none does (a fresh device), no lookup is needed.
    has_tombstones: bool,
    /// The full-row upsert of each table, prepared once per transaction.
    upserts: Vec<Option<CachedStatement<'c>>>,
    stats: ApplyStats,
    /// The greatest version applied, for the clock.
    newest: Option<String>,
}

/// What the replica holds for a key.
struct Local {
    version: Option<String>,
    dirty: bool,
}

impl Applier<'_, '_> {
    fn apply(&mut self, change: &RowChange) -> Result<()> {
        let Some(&table) = self.by_name.get(change.table.as_str()) else {
            tracing::debug!(table = %change.table, "A pulled change for a table this device does not sync was skipped.");
            self.stats.skipped += 1;
            return Ok(());
        };
        let t = &self.tables[table];
        let empty = Map::new();
        let data = change.data.as_ref().unwrap_or(&empty);
        if t.key
            .iter()
            .any(|&p| column_value(t, p, change, data).is_none_or(Value::is_null))
        {
            tracing::warn!(table = %t.name, pk = ?change.pk, "A pulled change without its full key was skipped.");
            self.stats.skipped += 1;
            return Ok(());
        }
        if self
            .newest
            .as_deref()
            .is_none_or(|newest| change.version.as_str() > newest)
        {
            self.newest = Some(change.version.clone());
        }
        if change.deleted {
            self.apply_delete(t, change, data)
        } else {
            self.apply_upsert(table, change, data)
        }
    }

    fn apply_upsert(
        &mut self,
        table: usize,
        change: &RowChange,
        data: &Map<String, Value>,
    ) -> Result<()> {
        let t = &self.tables[table];
        if self.has_tombstones {
            let key_text = key_text_of(t, change, data)?;
            if let Some(local) = self.tombstone(t, &key_text)? {
                if self.local_wins(&local, change) {
                    self.stats.kept_local += 1;
                    return Ok(());
                }
                if local.dirty {
                    self.record_conflict(t, change, &local, None, true)?;
                }
                self.forget_tombstone(t, &key_text)?;
            }
        }

        let present: Vec<bool> = (0..t.columns.len())
            .map(|p| column_value(t, p, change, data).is_some())
            .collect();
        let full = present.iter().all(|&p| p);
        let changed = if full {
            let conn = self.conn;
            let sql = match self.mode {
                ApplyMode::LastWriteWins => &t.upsert_lww,
                ApplyMode::CloudWins => &t.upsert_force,
            };
            let slot = &mut self.upserts[table];
            if slot.is_none() {
                *slot = Some(conn.prepare_cached(sql)?);
            }
            let stmt = slot.as_mut().expect("prepared above");
            bind_row(stmt, t, change, data, self.synced_at)?;
            stmt.raw_execute()?
        } else {
            let mut stmt = self
                .conn
                .prepare_cached(&t.upsert_sql(&present, self.mode))?;
            bind_row(&mut stmt, t, change, data, self.synced_at)?;
            stmt.raw_execute()?
        };
        if changed > 0 {
            self.stats.applied += 1;
            return Ok(());
        }

        // The key exists and the upsert left it alone: it is dirty, or (last write wins) at
        // least as new as the pulled row.
        let local = self
            .lookup(t, change, data)?
            .expect("the upsert conflicted");
        if self.local_wins(&local, change) {
            self.stats.kept_local += 1;
            return Ok(());
        }
        if local.dirty {
            self.record_conflict(t, change, &local, Some(data), false)?;
        }
        let sql = if full {
            std::borrow::Cow::Borrowed(&t.overwrite)
        } else {
            std::borrow::Cow::Owned(t.overwrite_sql(&present))
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        bind_row(&mut stmt, t, change, data, self.synced_at)?;
        stmt.raw_execute()?;
        self.stats.applied += 1;
        Ok(())
    }

    fn apply_delete(
        &mut self,
        t: &TableSql,
        change: &RowChange,
        data: &Map<String, Value>,
    ) -> Result<()> {
        let key_text = || key_text_of(t, change, data);
        if let Some(local) = self.lookup(t, change, data)? {
            if self.local_wins(&local, change) {
                self.stats.kept_local += 1;
                return Ok(());
            }
            if local.dirty {
                self.record_conflict(t, change, &local, Some(data), false)?;
            }
            let mut stmt = self.conn.prepare_cached(&t.delete)?;
            bind_key(&mut stmt, t, change, data)?;
            stmt.raw_execute()?;
        } else if self.has_tombstones {
            // Deleted on both sides: nothing of value is lost either way.
            if let Some(local) = self.tombstone(t, &key_text()?)? {
                if self.local_wins(&local, change) {
                    self.stats.kept_local += 1;
                    return Ok(());
                }
            }
        }
        if self.has_tombstones {
            self.forget_tombstone(t, &key_text()?)?;
        }
        self.stats.applied += 1;
        Ok(())
    }

    fn local_wins(&self, local: &Local, change: &RowChange) -> bool {
        self.mode == ApplyMode::LastWriteWins
            && local
                .version
                .as_deref()
                .is_some_and(|v| v >= change.version.as_str())
    }

    fn lookup(
        &self,
        t: &TableSql,
        change: &RowChange,
        data: &Map<String, Value>,
    ) -> Result<Option<Local>> {
        let mut stmt = self.conn.prepare_cached(&t.lookup)?;
        bind_key(&mut stmt, t, change, data)?;
        let mut rows = stmt.raw_query();
        Ok(match rows.next()? {
            Some(r) => Some(Local {
                version: r.get(0)?,
                dirty: r.get::<_, Option<i64>>(1)?.unwrap_or(0) != 0,
            }),
            None => None,
        })
    }

    fn tombstone(&self, t: &TableSql, key_text: &str) -> Result<Option<Local>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT version, _isDirty FROM _ferry_tombstones WHERE tbl = ?1 AND pk = ?2",
            )?
            .query_row((&t.name, key_text), |r| {
                Ok(Local {
                    version: r.get(0)?,
                    dirty: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn forget_tombstone(&self, t: &TableSql, key_text: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM _ferry_tombstones WHERE tbl = ?1 AND pk = ?2")?
            .execute((&t.name, key_text))?;
        Ok(())
    }

    /// Keeps the local change a pulled one is about to overwrite.
    fn record_conflict(
        &mut self,
        t: &TableSql,
        change: &RowChange,
        local: &Local,
        data: Option<&Map<String, Value>>,
        local_deleted: bool,
    ) -> Result<()> {
        let local_data = match data {
            Some(data) if !local_deleted => {
                let mut stmt = self.conn.prepare_cached(&t.select_data)?;
                bind_key(&mut stmt, t, change, data)?;
                let mut rows = stmt.raw_query();
                match rows.next()? {
                    Some(r) => {
                        let mut row = Map::new();
                        for (i, column) in t.columns.iter().enumerate() {
                            row.insert(column.clone(), values::to_json(r.get_ref(i)?));
                        }
                        Some(Value::Object(row).to_string())
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let reason = match self.mode {
            ApplyMode::LastWriteWins => ConflictReason::NewerRemote,
            ApplyMode::CloudWins => ConflictReason::ForcePull,
        };
        self.conn
            .prepare_cached(
                "INSERT INTO _ferry_conflicts (tbl, pk, local_version, local_deleted, local_data,
                     remote_version, remote_deleted, recorded_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(rusqlite::params![
                t.name,
                Value::Object(change.pk.clone()).to_string(),
                local.version,
                local_deleted,
                local_data,
                change.version,
                change.deleted,
                self.synced_at,
                reason.as_str(),
            ])?;
        self.stats.conflicts += 1;
        Ok(())
    }

    /// HLC receive: moves the clock past the newest pulled version, so a local edit made after
    /// seeing a remote one gets a greater version even if this device's clock is behind.
    fn observe_newest(&mut self) -> Result<()> {
        let Some(newest) = self.newest.as_deref() else {
            return Ok(());
        };
        let Ok(seen) = version::Version::parse(newest) else {
            return Ok(());
        };
        self.conn
            .prepare_cached(
                "UPDATE _ferry_clock SET ms = ?1, counter = ?2
                 WHERE id = 1 AND (ms < ?1 OR (ms = ?1 AND counter < ?2))",
            )?
            .execute((seen.ms, seen.counter))?;
        Ok(())
    }
}

/// The value of a column in a pulled change: key columns from `pk` first, then from `data`.
fn column_value<'a>(
    t: &TableSql,
    position: usize,
    change: &'a RowChange,
    data: &'a Map<String, Value>,
) -> Option<&'a Value> {
    let column = &t.columns[position];
    if t.is_key[position] {
        change.pk.get(column).or_else(|| data.get(column))
    } else {
        data.get(column)
    }
}

/// Binds every present column, the sync time and the version (pull-side numbering).
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    t: &TableSql,
    change: &RowChange,
    data: &Map<String, Value>,
    synced_at: &str,
) -> Result<()> {
    for position in 0..t.columns.len() {
        if let Some(value) = column_value(t, position, change, data) {
            stmt.raw_bind_parameter(position + 1, Bind(value))
                .map_err(|e| bad_value(t, position, change, e))?;
        }
    }
    let n = t.columns.len();
    stmt.raw_bind_parameter(n + 1, synced_at)?;
    stmt.raw_bind_parameter(n + 2, change.version.as_str())?;
    Ok(())
}

/// Binds the key columns only (pull-side numbering).
fn bind_key(
    stmt: &mut rusqlite::Statement<'_>,
    t: &TableSql,
    change: &RowChange,
    data: &Map<String, Value>,
) -> Result<()> {
    for &position in &t.key {
        let value = column_value(t, position, change, data).unwrap_or(&Value::Null);
        stmt.raw_bind_parameter(position + 1, Bind(value))
            .map_err(|e| bad_value(t, position, change, e))?;
    }
    Ok(())
}

fn bad_value(t: &TableSql, position: usize, change: &RowChange, e: rusqlite::Error) -> Error {
    Error::Protocol {
        what: "pull".into(),
        reason: format!(
            "the value of {}.{} in the row {} is unusable ({e})",
            t.name,
            t.columns[position],
            Value::Object(change.pk.clone())
        ),
    }
}

/// The key text a tombstone of this change's row has (values converted by column affinity, as
/// SQLite stored them).
fn key_text_of(t: &TableSql, change: &RowChange, data: &Map<String, Value>) -> Result<String> {
    let mut key = Vec::with_capacity(t.key.len());
    for &p in &t.key {
        let value = column_value(t, p, change, data).unwrap_or(&Value::Null);
        key.push(
            values::with_affinity(value, t.affinities[p])
                .map_err(|e| bad_value(t, p, change, e))?,
        );
    }
    Ok(values::key_text(key.iter().map(ValueRef::from)))
}

/// Runs one write of the sync engine: `BEGIN IMMEDIATE`, the `_ferry_apply` flag that silences
/// the tracking triggers, the work, the flag removed, `COMMIT`. The flag is never committed, so
/// readers never see it; on error the transaction rolls back, flag included.
pub(crate) fn engine_write<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("INSERT INTO _ferry_apply (engine) VALUES (1)")?
        .execute([])?;
    let out = work(&tx)?;
    tx.prepare_cached("DELETE FROM _ferry_apply")?.execute([])?;
    tx.commit()?;
    Ok(out)
}

fn open_connection(path: &Path, options: &ReplicaOptions) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(128);
    // The server's rows arrive in commit order, not parent-first, and were checked there.
    conn.pragma_update(None, "foreign_keys", false)?;
    // In WAL mode NORMAL keeps the file consistent on power loss (a commit may be lost, and
    // the cursor with it); the engine's many small commits do not each wait for the disk.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -32_768)?;
    Ok(conn)
}

/// Refuses to install over app tables whose schema differs from the server's.
fn check_existing_tables(conn: &Connection, schema: &Schema) -> Result<()> {
    let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
    let existing = introspect_tables(conn, &names)?;
    let differing: Vec<&str> = schema
        .tables
        .iter()
        .zip(existing)
        .filter_map(|(server, local)| {
            let local = local?;
            let same = ferry_schema::hash(&Schema {
                tables: vec![local],
            }) == ferry_schema::hash(&Schema {
                tables: vec![server.clone()],
            });
            (!same).then_some(server.name.as_str())
        })
        .collect();
    if differing.is_empty() {
        Ok(())
    } else {
        Err(Error::TablesDiffer {
            tables: differing.join(", "),
        })
    }
}

fn column_names(conn: &Connection, table: &str) -> Result<Vec<String>> {
    debug_assert!(!table.starts_with(INTERNAL_PREFIX));
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = stmt
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

fn get_state(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM _ferry_state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .flatten())
}

fn set_state(conn: &Connection, key: &str, value: Option<&str>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO _ferry_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute((key, value))?;
    Ok(())
}

/// The current time in the contract's timestamp format.
pub(crate) fn now_text() -> String {
    ferry_core::time::format_ms(now_ms())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
