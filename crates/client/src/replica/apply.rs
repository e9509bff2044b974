//! Pull: applying pulled changes, last write wins per row (or the cloud wins, for a force pull),
//! in short write transactions that never mark anything dirty.
//!
//! A fresh device's snapshot can be a million rows, so this path avoids work per row: the page
//! is parsed borrowing its text from the response body, each table's upsert is prepared once per
//! transaction, and one statement both inserts a new row and updates a clean older one. The
//! local row is only looked at when that statement left it alone (it is dirty, or newer).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_core::version;
use ferry_proto::RowChange;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{CachedStatement, Connection, OptionalExtension, Statement};
use serde_json::{Map, Value as Json};

use super::page::{Change, PulledPage, Value};
use super::table::TableSql;
use super::{ConflictReason, Replica, engine_write, key, now_text, set_state};
use crate::error::Result;
use crate::values;

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

impl Replica {
    /// Applies a pulled page and, with its last rows, saves its cursor (so a crash mid-page
    /// re-pulls the page, whose re-application changes nothing). The page is applied in short
    /// write transactions, bounded by rows and time, with pauses between them, so app writes
    /// interleave with it.
    pub fn apply_pulled(&mut self, page: &PulledPage, mode: ApplyMode) -> Result<ApplyStats> {
        self.apply_in_transactions(page, Some(page.info().cursor.as_str()), mode)
    }

    /// [`apply_pulled`](Self::apply_pulled) for changes at hand; `cursor` is saved with them.
    pub fn apply_page(
        &mut self,
        changes: &[RowChange],
        cursor: Option<&str>,
        mode: ApplyMode,
    ) -> Result<ApplyStats> {
        let page = PulledPage::from_changes(changes, cursor)?;
        self.apply_in_transactions(&page, cursor, mode)
    }

    /// Applies the whole page in paced transactions; `cursor` is saved with its last rows.
    fn apply_in_transactions(
        &mut self,
        page: &PulledPage,
        cursor: Option<&str>,
        mode: ApplyMode,
    ) -> Result<ApplyStats> {
        let total = page.changes().len();
        let mut stats = ApplyStats::default();
        let mut done = 0;
        loop {
            self.wait_for_lock_free_time();
            let pacing = self.pacing()?;
            let (taken, batch) =
                self.apply_one_transaction(page, done, cursor, mode, pacing.max_time)?;
            self.app.lock_free_until = Some(Instant::now() + pacing.pause);
            done += taken;
            stats += batch;
            if done >= total {
                return Ok(stats);
            }
        }
    }

    /// Sleeps out what is left of the pause after the engine's last apply transaction, which
    /// may have been the previous page's last one: the app's writer gets its free window at
    /// page boundaries too.
    fn wait_for_lock_free_time(&mut self) {
        if let Some(until) = self.app.lock_free_until.take() {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
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
        let page = PulledPage::from_changes(changes, cursor)?;
        let max_time = self.options.apply_max_time;
        self.apply_one_transaction(&page, 0, cursor, mode, max_time)
    }

    /// How long the next apply transaction may hold the write lock, and how long to leave it
    /// free afterwards: short transactions and long pauses while the app is writing (it
    /// committed within `app_quiet_after`), the reverse while it is quiet.
    ///
    /// An app writer that finds the lock taken does not queue for it: SQLite's busy handler
    /// sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries, so a try that misses the free
    /// moments soon waits tens of milliseconds for the next. Holding the lock ~2.5 ms and
    /// leaving it free 4 ms means the writer's try at 3 ms finds it free even when a
    /// transaction overruns its bound a little; with a 2 ms pause, overruns of a millisecond
    /// let single writes miss try after try (a 630 ms write was measured, the busy handler's
    /// 16th try).
    fn pacing(&mut self) -> Result<Pacing> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let now = Instant::now();
        match self.app.data_version {
            Some(seen) if seen != version => self.app.last_commit = Some(now),
            Some(_) => {}
            // Not watched yet: the app's clock row tells when it last wrote.
            None => self.app.last_commit = self.last_app_write(now)?,
        }
        self.app.data_version = Some(version);
        let writing = self
            .app
            .last_commit
            .is_some_and(|at| now.duration_since(at) < self.options.app_quiet_after);
        let options = &self.options;
        Ok(if writing {
            Pacing {
                max_time: options.apply_max_time,
                pause: options.apply_pause,
            }
        } else {
            Pacing {
                max_time: options.apply_quiet_max_time,
                pause: options.apply_quiet_pause,
            }
        })
    }

    /// When the app last wrote, if within `app_quiet_after`: every tracked write advances
    /// `_ferry_clock` to the wall clock, so its time is the latest write's (or a pulled
    /// version's, which only errs toward caution).
    fn last_app_write(&self, now: Instant) -> Result<Option<Instant>> {
        let written_ms: i64 = self
            .conn
            .query_row("SELECT ms FROM _ferry_clock WHERE id = 1", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let age_ms = ferry_core::time::now_ms() - written_ms;
        let Ok(age_ms) = u64::try_from(age_ms) else {
            return Ok(Some(now)); // Ahead of the wall clock: take it as just now.
        };
        let age = Duration::from_millis(age_ms);
        Ok((age < self.options.app_quiet_after).then(|| now - age))
    }

    /// Applies the page's changes from `first` on in one write transaction, until the row or
    /// time bound; saves `cursor` with the page's last change.
    fn apply_one_transaction(
        &mut self,
        page: &PulledPage,
        first: usize,
        cursor: Option<&str>,
        mode: ApplyMode,
        max_time: Duration,
    ) -> Result<(usize, ApplyStats)> {
        let synced_at = now_text();
        let Replica {
            conn,
            tables,
            by_name,
            options,
            ..
        } = self;
        let max_rows = options.apply_max_rows.max(1);
        let changes = &page.changes()[first..];
        engine_write(conn, |conn| {
            let started = Instant::now();
            let mut applier = Applier::new(conn, tables, by_name, page, mode, &synced_at)?;
            let mut taken = 0;
            for change in changes {
                applier.apply(change)?;
                taken += 1;
                // Reading the clock costs more than a row; look at it every few rows.
                if taken >= max_rows || (taken % 32 == 0 && started.elapsed() >= max_time) {
                    break;
                }
            }
            applier.observe_newest()?;
            let stats = applier.stats;
            drop(applier);
            if taken == changes.len()
                && let Some(cursor) = cursor
            {
                set_state(conn, key::CURSOR, Some(cursor))?;
            }
            Ok((taken, stats))
        })
    }
}

/// How the next apply transaction shares the write lock with the app.
struct Pacing {
    /// The longest the transaction may hold the lock.
    max_time: Duration,
    /// How long the lock is left free after it.
    pause: Duration,
}

/// What the replica holds for a key.
struct Local {
    version: Option<String>,
    dirty: bool,
}

/// Applies pulled changes inside one engine transaction.
struct Applier<'c, 't, 'p> {
    conn: &'c Connection,
    tables: &'t [TableSql],
    by_name: &'t HashMap<String, usize>,
    page: &'p PulledPage,
    mode: ApplyMode,
    synced_at: &'t str,
    /// Whether any tombstone exists; when none does (a fresh device), no lookup is needed.
    has_tombstones: bool,
    /// The full-row upsert of each table, prepared once per transaction.
    upserts: Vec<Option<CachedStatement<'c>>>,
    /// The change being applied, column by column (by position); reused from row to row.
    slots: Vec<Option<Value>>,
    stats: ApplyStats,
    /// The greatest version applied, for the clock.
    newest: Option<&'p [u8]>,
}

impl<'c, 't, 'p> Applier<'c, 't, 'p> {
    fn new(
        conn: &'c Connection,
        tables: &'t [TableSql],
        by_name: &'t HashMap<String, usize>,
        page: &'p PulledPage,
        mode: ApplyMode,
        synced_at: &'t str,
    ) -> Result<Self> {
        let has_tombstones = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM _ferry_tombstones)")?
            .query_row([], |r| r.get(0))?;
        Ok(Applier {
            conn,
            tables,
            by_name,
            page,
            mode,
            synced_at,
            has_tombstones,
            upserts: (0..tables.len()).map(|_| None).collect(),
            slots: Vec::new(),
            stats: ApplyStats::default(),
            newest: None,
        })
    }

    fn apply(&mut self, change: &'p Change) -> Result<()> {
        let page = self.page;
        let Some(&table) = self.by_name.get(page.text(change.table).as_ref()) else {
            tracing::debug!(table = %page.text(change.table), "A pulled change for a table this device does not sync was skipped.");
            self.stats.skipped += 1;
            return Ok(());
        };
        let tables = self.tables;
        let t = &tables[table];
        self.fill_slots(t, change);
        if t.key
            .iter()
            .any(|&p| matches!(self.slots[p], None | Some(Value::Null)))
        {
            tracing::warn!(table = %t.name, pk = %page.json_object(&change.pk), "A pulled change without its full key was skipped.");
            self.stats.skipped += 1;
            return Ok(());
        }
        let version = page.bytes(change.version);
        if self.newest.is_none_or(|newest| version > newest) {
            self.newest = Some(version);
        }
        if change.deleted {
            self.apply_delete(t, change)
        } else {
            self.apply_upsert(table, change)
        }
    }

    /// Lays the change's values out by column position; key columns come from `pk`.
    fn fill_slots(&mut self, t: &TableSql, change: &Change) {
        let page = self.page;
        self.slots.clear();
        self.slots.resize(t.columns.len(), None);
        for &(name, value) in page.fields(&change.data) {
            // A column this device does not have is left out (the schema hashes agree, so this
            // is a server newer than its schema hash).
            if let Some(p) = t.position(page.bytes(name)) {
                self.slots[p] = Some(value);
            }
        }
        for &(name, value) in page.fields(&change.pk) {
            if let Some(p) = t.position(page.bytes(name)).filter(|&p| t.is_key[p]) {
                self.slots[p] = Some(value);
            }
        }
    }

    fn apply_upsert(&mut self, table: usize, change: &Change) -> Result<()> {
        let tables = self.tables;
        let t = &tables[table];
        let version = self.page.bytes(change.version);
        if self.has_tombstones {
            let key_text = self.key_text(t);
            if let Some(local) = self.tombstone(t, &key_text)? {
                if self.local_wins(&local, version) {
                    self.stats.kept_local += 1;
                    return Ok(());
                }
                if self.loses_local_change(&local, version) {
                    self.record_conflict(t, change, &local, true)?;
                }
                self.forget_tombstone(t, &key_text)?;
            }
        }

        // Pulled rows normally carry every column; only a partial one needs its own statement.
        let full = self.slots.iter().all(Option::is_some);
        let changed = if full {
            let sql = match self.mode {
                ApplyMode::LastWriteWins => &t.upsert_lww,
                ApplyMode::CloudWins => &t.upsert_force,
            };
            let slot = &mut self.upserts[table];
            if slot.is_none() {
                *slot = Some(self.conn.prepare_cached(sql)?);
            }
            let stmt = slot.as_mut().expect("prepared above");
            bind_row(stmt, self.page, &self.slots, version, self.synced_at)?;
            stmt.raw_execute()?
        } else {
            let mut stmt = self
                .conn
                .prepare_cached(&t.upsert_sql(&self.present(), self.mode))?;
            bind_row(&mut stmt, self.page, &self.slots, version, self.synced_at)?;
            stmt.raw_execute()?
        };
        if changed > 0 {
            self.stats.applied += 1;
            return Ok(());
        }

        // The key exists and the upsert left it alone: it is dirty, or (last write wins) at
        // least as new as the pulled row.
        let local = self.lookup(t)?.expect("the upsert conflicted");
        if self.local_wins(&local, version) {
            self.stats.kept_local += 1;
            return Ok(());
        }
        if self.loses_local_change(&local, version) {
            self.record_conflict(t, change, &local, false)?;
        }
        let sql = if full {
            Cow::Borrowed(&t.overwrite)
        } else {
            Cow::Owned(t.overwrite_sql(&self.present()))
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        bind_row(&mut stmt, self.page, &self.slots, version, self.synced_at)?;
        stmt.raw_execute()?;
        self.stats.applied += 1;
        Ok(())
    }

    fn apply_delete(&mut self, t: &TableSql, change: &Change) -> Result<()> {
        let version = self.page.bytes(change.version);
        if let Some(local) = self.lookup(t)? {
            if self.local_wins(&local, version) {
                self.stats.kept_local += 1;
                return Ok(());
            }
            if self.loses_local_change(&local, version) {
                self.record_conflict(t, change, &local, false)?;
            }
            let mut stmt = self.conn.prepare_cached(&t.delete)?;
            bind_key(&mut stmt, t, self.page, &self.slots)?;
            stmt.raw_execute()?;
        }
        if self.has_tombstones {
            // Deleted on both sides when a local tombstone exists: nothing of value is lost
            // either way, but a newer local delete keeps its version.
            let key_text = self.key_text(t);
            if let Some(local) = self.tombstone(t, &key_text)? {
                if self.local_wins(&local, version) {
                    self.stats.kept_local += 1;
                    return Ok(());
                }
                self.forget_tombstone(t, &key_text)?;
            }
        }
        self.stats.applied += 1;
        Ok(())
    }

    fn present(&self) -> Vec<bool> {
        self.slots.iter().map(Option::is_some).collect()
    }

    /// Versions compare as strings; byte order is the same order.
    fn local_wins(&self, local: &Local, pulled_version: &[u8]) -> bool {
        self.mode == ApplyMode::LastWriteWins
            && local
                .version
                .as_deref()
                .is_some_and(|v| v.as_bytes() >= pulled_version)
    }

    /// Whether overwriting `local` with the pulled change loses an unpushed local change: it
    /// is dirty, and not the pulled write itself. Equal versions are the same write; a force
    /// pull meets one where a file restored from a backup holds a change, still dirty, that
    /// was pushed after the backup was taken.
    fn loses_local_change(&self, local: &Local, pulled_version: &[u8]) -> bool {
        local.dirty
            && local
                .version
                .as_deref()
                .is_none_or(|v| v.as_bytes() != pulled_version)
    }

    fn lookup(&self, t: &TableSql) -> Result<Option<Local>> {
        let mut stmt = self.conn.prepare_cached(&t.lookup)?;
        bind_key(&mut stmt, t, self.page, &self.slots)?;
        let mut rows = stmt.raw_query();
        Ok(match rows.next()? {
            Some(r) => Some(Local {
                version: r.get(0)?,
                dirty: r.get::<_, Option<i64>>(1)?.unwrap_or(0) != 0,
            }),
            None => None,
        })
    }

    /// The key text a tombstone of this row has (values converted by column affinity, as
    /// SQLite stored them).
    fn key_text(&self, t: &TableSql) -> String {
        let key: Vec<_> = t
            .key
            .iter()
            .map(|&p| {
                let value = self.slots[p].map_or(ValueRef::Null, |v| self.page.value_ref(v));
                values::with_affinity(value, t.affinities[p])
            })
            .collect();
        values::key_text(key.iter().map(ValueRef::from))
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
        change: &Change,
        local: &Local,
        local_deleted: bool,
    ) -> Result<()> {
        let local_data = if local_deleted {
            None
        } else {
            let mut stmt = self.conn.prepare_cached(&t.select_data)?;
            bind_key(&mut stmt, t, self.page, &self.slots)?;
            let mut rows = stmt.raw_query();
            match rows.next()? {
                Some(r) => {
                    let mut row = Map::new();
                    for (i, column) in t.columns.iter().enumerate() {
                        row.insert(column.clone(), values::to_json(r.get_ref(i)?));
                    }
                    Some(Json::Object(row).to_string())
                }
                None => None,
            }
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
                self.page.json_object(&change.pk).to_string(),
                local.version,
                local_deleted,
                local_data,
                self.page.text(change.version),
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
        let Some(newest) = self.newest.and_then(|v| std::str::from_utf8(v).ok()) else {
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

/// Binds every present column, the sync time and the version (pull-side numbering).
fn bind_row(
    stmt: &mut Statement<'_>,
    page: &PulledPage,
    slots: &[Option<Value>],
    version: &[u8],
    synced_at: &str,
) -> Result<()> {
    for (position, value) in slots.iter().enumerate() {
        if let Some(value) = *value {
            stmt.raw_bind_parameter(position + 1, ToSqlOutput::Borrowed(page.value_ref(value)))?;
        }
    }
    stmt.raw_bind_parameter(slots.len() + 1, synced_at)?;
    stmt.raw_bind_parameter(
        slots.len() + 2,
        ToSqlOutput::Borrowed(ValueRef::Text(version)),
    )?;
    Ok(())
}

/// Binds the key columns only (pull-side numbering).
fn bind_key(
    stmt: &mut Statement<'_>,
    t: &TableSql,
    page: &PulledPage,
    slots: &[Option<Value>],
) -> Result<()> {
    for &position in &t.key {
        let value = slots[position].map_or(ValueRef::Null, |v| page.value_ref(v));
        stmt.raw_bind_parameter(position + 1, ToSqlOutput::Borrowed(value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ReplicaOptions;

    const DDL: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT);";

    fn replica(dir: &tempfile::TempDir) -> Replica {
        let options = ReplicaOptions::default();
        Replica::install(&dir.path().join("app.db"), DDL, "dev_test", options).unwrap()
    }

    fn app_write(dir: &tempfile::TempDir, id: &str) {
        let app = Connection::open(dir.path().join("app.db")).unwrap();
        app.execute("INSERT INTO items (id, name) VALUES (?1, 'x')", [id])
            .unwrap();
    }

    fn is_writing(pacing: &Pacing) -> bool {
        let options = ReplicaOptions::default();
        assert!(options.apply_max_time < options.apply_quiet_max_time);
        pacing.max_time == options.apply_max_time && pacing.pause == options.apply_pause
    }

    #[test]
    fn an_app_that_wrote_just_before_the_apply_gets_short_transactions_from_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = replica(&dir);
        app_write(&dir, "a");
        assert!(is_writing(&replica.pacing().unwrap()));
    }

    #[test]
    fn a_fresh_device_paces_its_first_snapshot_as_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = replica(&dir);
        assert!(!is_writing(&replica.pacing().unwrap()));
    }

    #[test]
    fn a_quiet_app_gets_long_transactions_until_it_commits_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = replica(&dir);
        app_write(&dir, "a");
        // The app's last write was a minute ago.
        let minute_ago = ferry_core::time::now_ms() - 60_000;
        replica
            .conn
            .execute("UPDATE _ferry_clock SET ms = ?1", [minute_ago])
            .unwrap();
        assert!(!is_writing(&replica.pacing().unwrap()));
        assert!(!is_writing(&replica.pacing().unwrap()));

        app_write(&dir, "b");
        assert!(is_writing(&replica.pacing().unwrap()));
    }

    fn item(id: &str) -> RowChange {
        let version = version::format(ferry_core::time::now_ms(), 0, "dev_remote");
        let row = |value: serde_json::Value| value.as_object().unwrap().clone();
        RowChange {
            table: "items".into(),
            pk: row(serde_json::json!({"id": id})),
            version,
            deleted: false,
            data: Some(row(serde_json::json!({"id": id, "name": "pulled"}))),
        }
    }

    #[test]
    fn the_pause_after_a_pages_last_transaction_holds_before_the_next_pages_first() {
        let dir = tempfile::tempdir().unwrap();
        let pause = Duration::from_millis(300);
        let options = ReplicaOptions {
            apply_pause: pause,
            apply_quiet_pause: pause,
            ..ReplicaOptions::default()
        };
        let mut replica =
            Replica::install(&dir.path().join("app.db"), DDL, "dev_test", options).unwrap();
        // Each page is one transaction, so no pause falls inside a page.
        replica
            .apply_page(&[item("a")], Some("c1"), ApplyMode::LastWriteWins)
            .unwrap();
        let second_page = Instant::now();
        replica
            .apply_page(&[item("b")], Some("c2"), ApplyMode::LastWriteWins)
            .unwrap();
        assert!(
            second_page.elapsed() >= pause,
            "the second page was applied {:?} after the first, inside the first one's pause",
            second_page.elapsed()
        );
    }
}
