//! The device's replica: the app's own SQLite file, with Ferry's tracking installed into it.
//!
//! This is the synchronous, SQLite-only half of the client. It installs tracking, reads dirty
//! rows for push, stamps confirmed ones, applies pulled pages and keeps Ferry's state, log and
//! local conflict record. It knows nothing about HTTP, so every rule here is tested with real
//! files and a second connection playing the app.
//!
//! Every write of the engine goes through `engine_write`: `BEGIN IMMEDIATE`, a row in
//! `_ferry_apply` (which silences the tracking triggers), the work, the row removed, `COMMIT`.
//! Writes are kept short so the app's own writes never wait long for the lock.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ferry_core::{Schema, version};
use ferry_proto::Row;
use ferry_proto::local::{CycleReport, CycleTrigger};
use ferry_schema::{DIRTY_COLUMN, INTERNAL_PREFIX, VERSION_COLUMN, introspect_tables, quote_ident};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tracking;

mod apply;
mod groups;
mod page;
mod push;
mod table;

pub use apply::{ApplyMode, ApplyStats};
pub use page::{PageInfo, PulledPage};
pub use push::{DirtyRow, PushBatch, PushCursor, PushLimit};
use table::TableSql;

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

/// How many WAL pages the engine lets accumulate before it checkpoints (SQLite's default is
/// 1000; see `open_connection`).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 64;

/// How many cycle reports `_ferry_log` keeps.
const LOG_KEEP: i64 = 100;

/// How the engine shares the file with the app.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Most rows applied in one write transaction.
    pub apply_max_rows: usize,
    /// Longest the engine holds the write lock in one transaction while applying pulled rows
    /// and the app is writing (it committed within `app_quiet_after`).
    pub apply_max_time: Duration,
    /// The same bound while the app is quiet: a fresh device's first snapshot usually runs
    /// before anyone uses the device, and longer transactions apply it faster.
    pub apply_quiet_max_time: Duration,
    /// How long after the app's last commit it still counts as writing.
    pub app_quiet_after: Duration,
    /// How long the engine leaves the write lock free between two transactions of a long
    /// apply while the app is writing, so that an app writer polling for it (SQLite's busy
    /// handler sleeps 1, 2, 5, 10 ms between tries) finds it free within a few tries.
    pub apply_pause: Duration,
    /// The same pause while the app is quiet.
    pub apply_quiet_pause: Duration,
    /// How long the engine waits for the app to release the write lock.
    pub busy_timeout: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            apply_max_rows: 20_000,
            apply_max_time: Duration::from_micros(2_500),
            apply_quiet_max_time: Duration::from_millis(16),
            app_quiet_after: Duration::from_secs(1),
            apply_pause: Duration::from_millis(4),
            apply_quiet_pause: Duration::from_millis(2),
            busy_timeout: Duration::from_secs(30),
        }
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
    pub(crate) fn as_str(self) -> &'static str {
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

/// The app's SQLite file as the sync engine sees it. One engine connection; `Send`, not `Sync`.
pub struct Replica {
    conn: Connection,
    schema: Schema,
    tables: Vec<TableSql>,
    by_name: HashMap<String, usize>,
    /// Push order: table indices, parents first.
    order: Vec<usize>,
    options: ReplicaOptions,
    /// What the engine last saw of the app's own commits, to pace long applies.
    app: AppActivity,
}

/// The app's commits as the engine sees them: `PRAGMA data_version` changes exactly when
/// another connection commits to the file.
#[derive(Debug, Default)]
pub(crate) struct AppActivity {
    pub(crate) data_version: Option<i64>,
    pub(crate) last_commit: Option<std::time::Instant>,
    /// Until when the engine leaves the write lock free after its last apply transaction:
    /// the pause outlives the page, so a page's first transaction waits out the previous
    /// page's last pause.
    pub(crate) lock_free_until: Option<std::time::Instant>,
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
        adopt_untracked_rows(&tx, schema.tables.iter())?;
        set_state(&tx, key::SCHEMA_DDL, Some(ddl))?;
        set_state(&tx, key::SCHEMA_HASH, Some(&ferry_schema::hash(&schema)))?;
        tx.execute("DELETE FROM _ferry_apply", [])?;
        tx.commit()?;
        Ok(Replica::with_schema(conn, schema, options))
    }

    /// Adopts the server's schema `ddl` when it only adds to this device's (see
    /// `ferry_schema::evolve`): creates the new tables, adds the new columns (those the app has
    /// not added itself already), and installs tracking on what grew, in one transaction.
    /// Pending changes stay dirty, and go out with the new columns empty. Tables or columns the
    /// app made itself must match the server's. Anything but an addition is refused with
    /// [`Error::SchemaNotAdditive`], changing nothing.
    pub fn adopt_schema(&mut self, ddl: &str) -> Result<ferry_schema::Additions> {
        let schema = ferry_schema::parse_ddl(ddl)?;
        let added = ferry_schema::additions(&self.schema, &schema).map_err(|reasons| {
            Error::SchemaNotAdditive {
                reasons: reasons.to_string(),
            }
        })?;
        engine_write(&mut self.conn, |tx| {
            let grown = schema.tables.iter().filter(|table| {
                added.tables.contains(&table.name)
                    || added.columns.iter().any(|(t, _)| t == &table.name)
            });
            for table in grown.clone() {
                let existing = column_names(tx, &table.name)?;
                if existing.is_empty() {
                    tx.execute_batch(table.sql.as_deref().unwrap_or_default())?;
                }
                for (_, column) in added.columns.iter().filter(|(t, _)| t == &table.name) {
                    if existing.contains(column) {
                        continue;
                    }
                    let definition = table
                        .columns
                        .iter()
                        .find(|c| &c.name == column)
                        .map(ferry_schema::evolve::column_definition)
                        .unwrap_or_default();
                    tx.execute(
                        &format!(
                            "ALTER TABLE {} ADD COLUMN {definition}",
                            quote_ident(&table.name)
                        ),
                        [],
                    )?;
                }
                let existing = column_names(tx, &table.name)?;
                for statement in tracking::install_table(table, &existing) {
                    tx.execute(&statement, [])?;
                }
            }
            check_existing_tables(tx, &schema)?;
            // Rows the app wrote into a table of its own making before Ferry tracked it.
            adopt_untracked_rows(tx, grown)?;
            set_state(tx, key::SCHEMA_DDL, Some(ddl))?;
            set_state(tx, key::SCHEMA_HASH, Some(&ferry_schema::hash(&schema)))?;
            Ok(())
        })?;
        let conn = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        *self = Replica::with_schema(conn, schema, self.options.clone());
        Ok(added)
    }

    /// Opens a file where tracking is installed.
    /// Checks, changing nothing, that [`Replica::install`] of `ddl` would succeed on the file
    /// at `path`: a missing file can be created, an existing one written, and the tables it
    /// already has match the schema. Returns the pairing the file already holds, if any.
    /// Pairing runs this before it spends the pairing code.
    pub fn preflight(path: &Path, ddl: &str, options: &ReplicaOptions) -> Result<Option<Pairing>> {
        let schema = ferry_schema::parse_ddl(ddl)?;
        if !path.exists() {
            // Created and removed again: the directory takes new files.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|_| std::fs::remove_file(path))
                .map_err(|e| Error::Io {
                    path: path.to_path_buf(),
                    message: format!("the database cannot be created: {e}"),
                })?;
            return Ok(None);
        }
        let mut conn = open_connection(path, options)?;
        check_existing_tables(&conn, &schema)?;
        // Takes the write lock and lets it go: a read-only file or directory fails here.
        conn.transaction_with_behavior(TransactionBehavior::Immediate)?
            .rollback()?;
        let installed = tracking_installed(&conn)?;
        if !installed {
            return Ok(None);
        }
        read_pairing(&conn)
    }

    pub fn open(path: &Path, options: ReplicaOptions) -> Result<Replica> {
        if !path.exists() {
            return Err(Error::NotPaired(path.to_path_buf()));
        }
        let conn = open_connection(path, &options)?;
        let installed = tracking_installed(&conn)?;
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
            app: AppActivity::default(),
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
        read_pairing(&self.conn)
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

/// Runs one write of the sync engine: `BEGIN IMMEDIATE`, the `_ferry_apply` flag that silences
/// the tracking triggers, the work, the flag removed, `COMMIT`. The flag is never committed, so
/// readers never see it; on error the transaction rolls back, flag included.
pub(crate) fn engine_write<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    enable_triggers_only_for_the_app(&tx)?;
    tx.prepare_cached("INSERT INTO _ferry_apply (engine) VALUES (1)")?
        .execute([])?;
    let out = work(&tx)?;
    tx.prepare_cached("DELETE FROM _ferry_apply")?.execute([])?;
    tx.commit()?;
    Ok(out)
}

/// Ferry's triggers do nothing during the engine's writes (the flag), yet SQLite still runs
/// each one's program, and a statement journal, for every row: a quarter of a snapshot's time.
/// So the engine's connection runs with triggers off unless the file has triggers of its own
/// (the app's), which must keep firing for pulled rows. Checked inside the write transaction,
/// where no one else can change the schema.
fn enable_triggers_only_for_the_app(conn: &Connection) -> Result<()> {
    let app_triggers: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'trigger'
               AND name NOT LIKE '\\_ferry\\_%' ESCAPE '\\')",
        )?
        .query_row([], |r| r.get(0))?;
    // Changing the setting expires prepared statements, so change it only when it differs.
    if conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER)? != app_triggers {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, app_triggers)?;
    }
    Ok(())
}

/// Gives rows written before tracking existed in `tables` one fresh version, and marks them
/// dirty. The clock ticks only when there are such rows: a just-ticked clock reads as an app
/// that has just written, and would pace a fresh device's first snapshot as if it had.
fn adopt_untracked_rows<'a>(
    tx: &Connection,
    tables: impl Iterator<Item = &'a ferry_core::Table>,
) -> Result<()> {
    let version = quote_ident(VERSION_COLUMN);
    let mut untracked = Vec::new();
    for table in tables {
        let name = quote_ident(&table.name);
        let any: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {name} WHERE {version} IS NULL)"),
            [],
            |r| r.get(0),
        )?;
        if any {
            untracked.push(name);
        }
    }
    if !untracked.is_empty() {
        tx.execute(&tracking::tick_clock(), [])?;
    }
    for name in untracked {
        tx.execute(
            &format!(
                "UPDATE {name} SET {} = 1, {version} = {} WHERE {version} IS NULL",
                quote_ident(DIRTY_COLUMN),
                tracking::CURRENT_VERSION,
            ),
            [],
        )?;
    }
    Ok(())
}

/// Whether Ferry's tracking is installed in the file (its state table exists).
fn tracking_installed(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_ferry_state')",
        [],
        |r| r.get(0),
    )?)
}

/// The pairing Ferry's state in the file holds, if it holds one.
fn read_pairing(conn: &Connection) -> Result<Option<Pairing>> {
    let get = |k| get_state(conn, k);
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
    // Short checkpoints, often: while a checkpoint copies the WAL into the file, the app's
    // writes stall, and a WAL left long makes the app's own commit run a long checkpoint.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
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
    ferry_core::time::now()
}
