//! Backing up the SQLite store while it serves, and checking a backup before a restore.
//!
//! A backup is `VACUUM INTO` a new file: one read transaction, so under WAL it is one
//! consistent snapshot of the whole store (every tenant, the jobs and the billing ledger)
//! while the server goes on writing beside it, and the copy is compact and self-contained (no
//! `-wal` file to carry along).
//!
//! A restored store goes back in time, but devices' pull cursors do not: a device that pulled
//! after the backup holds a cursor past the restored store's newest change. Were the restored
//! store to number its next changes from where the backup stopped, such a cursor would point
//! into new changes and skip some of them. So a restore moves every tenant's sequence forward
//! by [`RESTORE_SEQUENCE_GAP`], past any cursor the lost history can have handed out: a device
//! keeps pulling from its cursor and receives every change made after the restore.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, SqliteStore};
use crate::{Result, StoreError};

/// How far a restore moves every tenant's sequence forward: more changes than a store takes
/// between a backup and its restore (a trillion).
pub(crate) const RESTORE_SEQUENCE_GAP: i64 = 1 << 40;

/// What a backup holds, for the operator to check before restoring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The schema version (migrations applied) of the backup.
    pub version: i64,
    pub tenants: i64,
    pub devices: i64,
    pub rows: i64,
}

impl SqliteStore {
    /// Writes a consistent copy of the store database at `database` into `out`, which must not
    /// exist yet. Safe while a server uses the database.
    pub fn backup(database: &Path, out: &Path) -> Result<BackupSummary> {
        // Refuses what is not a Ferry store, and creates nothing.
        drop(SqliteStore::open_read_only(database)?);
        if out.exists() {
            return Err(StoreError::Config(format!(
                "{} exists already; a backup never overwrites a file",
                out.display()
            )));
        }
        let conn = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let target = out
            .to_str()
            .ok_or_else(|| StoreError::Config(format!("{} is not a UTF-8 path", out.display())))?;
        conn.execute("VACUUM INTO ?1", [target])?;
        SqliteStore::check_backup(out)
    }

    /// Makes the copy of a backup at `file` ready to be served as a restored store: every
    /// tenant's sequence moves forward by [`RESTORE_SEQUENCE_GAP`] (see the module's note).
    pub fn prepare_restore(file: &Path) -> Result<()> {
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.execute(
            "UPDATE tenants SET last_seq = last_seq + ?1",
            [RESTORE_SEQUENCE_GAP],
        )?;
        Ok(())
    }

    /// Checks that `file` is a whole Ferry store (SQLite's integrity check, and Ferry's
    /// tables), and says what it holds.
    pub fn check_backup(file: &Path) -> Result<BackupSummary> {
        if !file.is_file() {
            return Err(StoreError::Config(format!(
                "there is no file {}",
                file.display()
            )));
        }
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            return Err(StoreError::Config(format!(
                "{} is damaged: {integrity}",
                file.display()
            )));
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            return Err(StoreError::Config(format!(
                "{} is not a Ferry store (it has no tables)",
                file.display()
            )));
        }
        let count = |table: &str| -> Result<i64> {
            Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
        };
        Ok(BackupSummary {
            version,
            tenants: count("tenants")?,
            devices: count("devices")?,
            rows: count("rows")?,
        })
    }
}
