//! Push: reading dirty rows and tombstones in bounded batches, and stamping the ones the server
//! confirmed.

use ferry_core::version;
use ferry_proto::RowChange;
use rusqlite::OptionalExtension;
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value};

use super::{Replica, engine_write, now_text};
use crate::error::Result;
use crate::values;

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

impl Replica {
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
                Some((last, count)) if count >= want => cursor.after = Some(last),
                _ => {
                    // Fewer than asked for: this step is exhausted, on to the next one.
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
            // One statement per table, prepared once for the whole batch.
            let mut statements: Vec<Option<rusqlite::CachedStatement<'_>>> =
                (0..tables.len()).map(|_| None).collect();
            let mut stamp_tombstone = conn.prepare_cached(
                "UPDATE _ferry_tombstones SET _isDirty = 0, _lastSyncedAt = ?1
                 WHERE tbl = ?2 AND pk = ?3 AND version = ?4",
            )?;
            let mut stamped = 0;
            for row in rows {
                let table = &tables[row.table];
                let changed = match &row.key {
                    RowKey::Row(key) => {
                        let slot = &mut statements[row.table];
                        if slot.is_none() {
                            *slot = Some(conn.prepare_cached(&table.stamp)?);
                        }
                        let stmt = slot.as_mut().expect("prepared above");
                        stmt.raw_bind_parameter(1, &synced_at)?;
                        stmt.raw_bind_parameter(2, &row.version)?;
                        for (j, value) in key.iter().enumerate() {
                            stmt.raw_bind_parameter(j + 3, value)?;
                        }
                        stmt.raw_execute()?
                    }
                    RowKey::Tombstone(key_text) => stamp_tombstone.execute((
                        &synced_at,
                        &table.name,
                        key_text,
                        &row.version,
                    ))?,
                };
                stamped += changed as u64;
            }
            Ok(stamped)
        })
    }

    /// Appends the dirty rows of one table after `after` to the batch; returns the last key read
    /// and how many rows were read.
    fn read_dirty_rows(
        &self,
        table: usize,
        after: Option<&RowKey>,
        limit: usize,
        batch: &mut PushBatch,
    ) -> Result<Option<(RowKey, usize)>> {
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
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let (change, dirty) = self.row_change(table, row)?;
            last = Some(dirty.key.clone());
            count += 1;
            push_change(batch, change, dirty);
        }
        Ok(last.map(|key| (key, count)))
    }

    fn read_dirty_tombstones(
        &self,
        table: usize,
        after: Option<&RowKey>,
        limit: usize,
        batch: &mut PushBatch,
    ) -> Result<Option<(RowKey, usize)>> {
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
        let mut count = 0;
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
            count += 1;
        }
        Ok(last.map(|key| (key, count)))
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
}

fn push_change(batch: &mut PushBatch, change: RowChange, dirty: DirtyRow) {
    batch.changes.push(change);
    batch.rows.push(dirty);
}
