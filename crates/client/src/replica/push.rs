//! Push: reading dirty rows and tombstones in bounded batches, and stamping the ones the server
//! confirmed.

use ferry_core::version;
use ferry_proto::RowChange;
use rusqlite::OptionalExtension;
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value};

use super::groups::Groups;
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
    /// What the changes add to a push request's body: the sum of the rows' sizes.
    pub bytes: usize,
}

impl PushBatch {
    /// A batch of `changes`, read as `rows`.
    pub(crate) fn of(changes: Vec<RowChange>, rows: Vec<DirtyRow>) -> PushBatch {
        let bytes = rows.iter().map(DirtyRow::size).sum();
        PushBatch {
            changes,
            rows,
            bytes,
        }
    }

    fn append(&mut self, other: PushBatch) {
        self.changes.extend(other.changes);
        self.rows.extend(other.rows);
        self.bytes += other.bytes;
    }
}

/// How large one push batch may be: at most `rows` changes and `bytes` of change JSON (see
/// [`DirtyRow::size`]), whichever comes first. The server refuses a request with more changes
/// than its limit (10,000 by default) or a body over its limit (16 MiB by default; a request's
/// body is its changes and about a hundred bytes more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimit {
    pub rows: usize,
    pub bytes: usize,
}

impl PushLimit {
    /// At most `rows` changes, of any size.
    pub fn rows(rows: usize) -> PushLimit {
        PushLimit {
            rows,
            bytes: usize::MAX,
        }
    }

    /// Whether a batch that holds `rows` rows of `bytes` bytes takes `more_rows` more of
    /// `more_bytes` bytes, which must go together. An empty batch takes anything: every batch
    /// holds at least one row, or one group of rows that must go together, however large.
    pub(crate) fn takes(
        &self,
        (rows, bytes): (usize, usize),
        (more_rows, more_bytes): (usize, usize),
    ) -> bool {
        rows == 0
            || (rows + more_rows <= self.rows && bytes.saturating_add(more_bytes) <= self.bytes)
    }

    /// Whether `batch` is within the limit.
    pub(crate) fn holds(&self, batch: &PushBatch) -> bool {
        batch.rows.len() <= self.rows && batch.bytes <= self.bytes
    }

    fn takes_into(&self, batch: &PushBatch, more_rows: usize, more_bytes: usize) -> bool {
        self.takes((batch.rows.len(), batch.bytes), (more_rows, more_bytes))
    }
}

/// A dirty row (or tombstone) as it was read for push.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyRow {
    table: usize,
    key: RowKey,
    version: String,
    /// The group of rows referencing each other that it was read with, numbered per pass (see
    /// [`Replica::next_push_batch`]); the rows of a group are next to each other in a batch.
    group: Option<usize>,
    /// What its change adds to a push request's body, as it was read (see [`wire_size`]).
    size: usize,
}

impl DirtyRow {
    /// The group of rows referencing each other that the row was read with: rows of one group
    /// are pushed in one batch, and kept next to each other.
    pub fn group(&self) -> Option<usize> {
        self.group
    }

    /// What the row's change, as it was read, adds to a push request's body: its JSON and the
    /// comma after it.
    pub fn size(&self) -> usize {
        self.size
    }
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
    /// The pass's groups of rows that reference each other, found by its first batch.
    groups: Option<Groups>,
}

/// What one read of a step of the pass did.
#[derive(Debug, Default)]
struct Read {
    /// The last row (or tombstone) read and dealt with.
    last: Option<RowKey>,
    /// How many rows it read and dealt with.
    count: usize,
    /// The batch was full before the read reached its end.
    full: bool,
}

impl Replica {
    /// Reads dirty rows and tombstones after `cursor` up to `limit`, advancing it.
    ///
    /// A batch ends before the row that would take it over `limit`'s rows or bytes, but holds
    /// at least one row, however large: a row over the byte limit goes into a batch of its own.
    ///
    /// Rows whose references form a cycle among the dirty rows (a strongly connected component:
    /// two categories that are each other's parent, a longer loop, or one across tables) go
    /// into one batch together, since the server can accept them only together. A batch ends
    /// before such a group that does not fit in it, and a group larger than `limit` goes whole
    /// into a batch of its own, which is then larger than `limit`. The groups are those of the
    /// dirty rows when the pass's first batch is read. Other rows may still come in a batch
    /// before their parent's (a self-reference in key order); the server rejects them for the
    /// missing parent, and the cycle pushes them again after.
    pub fn next_push_batch(&self, cursor: &mut PushCursor, limit: PushLimit) -> Result<PushBatch> {
        let limit = PushLimit {
            rows: limit.rows.max(1),
            ..limit
        };
        let groups = match &mut cursor.groups {
            Some(groups) => groups,
            None => cursor.groups.insert(self.find_groups()?),
        };
        let mut batch = PushBatch::default();
        let tables = self.order.len();
        while batch.rows.len() < limit.rows && batch.bytes < limit.bytes && cursor.step < 2 * tables
        {
            let want = limit.rows - batch.rows.len();
            let read = if cursor.step < tables {
                let table = self.order[cursor.step];
                let after = cursor.after.as_ref();
                self.read_dirty_rows(table, after, want, limit, groups, &mut batch)?
            } else {
                let table = self.order[2 * tables - 1 - cursor.step];
                let after = cursor.after.as_ref();
                self.read_dirty_tombstones(table, after, want, limit, &mut batch)?
            };
            match read {
                Read {
                    full: true, last, ..
                } => {
                    // The rest of the step goes into the next batch.
                    if last.is_some() {
                        cursor.after = last;
                    }
                    break;
                }
                Read {
                    last: Some(last),
                    count,
                    ..
                } if count >= want => cursor.after = Some(last),
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
    /// no longer dirty are left out. Each keeps the group it was read with.
    pub fn reread(&self, rows: &[DirtyRow]) -> Result<PushBatch> {
        let mut batch = PushBatch::default();
        for row in rows {
            let found = match &row.key {
                RowKey::Row(key) => self.dirty_row(row.table, key)?,
                RowKey::Tombstone(key_text) => {
                    let version: Option<String> = self
                        .conn
                        .prepare_cached(
                            "SELECT version FROM _ferry_tombstones
                             WHERE _isDirty = 1 AND tbl = ?1 AND pk = ?2",
                        )?
                        .query_row((&self.tables[row.table].name, key_text), |r| r.get(0))
                        .optional()?;
                    version.and_then(|version| self.tombstone_change(row.table, key_text, version))
                }
            };
            if let Some((change, dirty)) = found {
                let dirty = DirtyRow {
                    group: row.group,
                    ..dirty
                };
                push_change(&mut batch, change, dirty);
            }
        }
        Ok(batch)
    }

    /// One live row of `table` by its key values, if it is dirty.
    fn dirty_row(&self, table: usize, key: &[SqlValue]) -> Result<Option<(RowChange, DirtyRow)>> {
        let mut stmt = self.conn.prepare_cached(&self.tables[table].dirty_one)?;
        let mut found = stmt.query(rusqlite::params_from_iter(key))?;
        match found.next()? {
            Some(row) => Ok(Some(self.row_change(table, row)?)),
            None => Ok(None),
        }
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

    /// Appends up to `want` dirty rows of one table after `after` to the batch, each with the
    /// rest of its group (see [`Replica::next_push_batch`]); stops early when the batch reaches
    /// `limit`'s rows, or before a row or group that would take it past `limit`.
    fn read_dirty_rows(
        &self,
        table: usize,
        after: Option<&RowKey>,
        want: usize,
        limit: PushLimit,
        groups: &mut Groups,
        batch: &mut PushBatch,
    ) -> Result<Read> {
        let t = &self.tables[table];
        let mut stmt;
        let mut rows = match after {
            Some(RowKey::Row(key)) => {
                stmt = self.conn.prepare_cached(&t.dirty_after)?;
                for (j, value) in key.iter().enumerate() {
                    stmt.raw_bind_parameter(j + 1, value)?;
                }
                stmt.raw_bind_parameter(key.len() + 1, want as i64)?;
                stmt.raw_query()
            }
            _ => {
                stmt = self.conn.prepare_cached(&t.dirty_first)?;
                stmt.raw_bind_parameter(1, want as i64)?;
                stmt.raw_query()
            }
        };
        let mut read = Read::default();
        while let Some(row) = rows.next()? {
            if batch.rows.len() >= limit.rows {
                read.full = true;
                break;
            }
            let (change, dirty) = self.row_change(table, row)?;
            let key = dirty.key.clone();
            match groups.of(&self.schema, table, &change) {
                None if !limit.takes_into(batch, 1, dirty.size) => {
                    read.full = true; // The row starts the next batch.
                    break;
                }
                None => push_change(batch, change, dirty),
                // Pushed with its group, from ahead of the cursor.
                Some(group) if groups.is_sent(group) => {}
                Some(group) => {
                    // The count of its members tells before they are read, their size after.
                    if !limit.takes_into(batch, groups.members(group).len(), 0) {
                        read.full = true; // The group starts the next batch.
                        break;
                    }
                    let whole = self.read_group(group, groups, change, dirty)?;
                    if !limit.takes_into(batch, whole.rows.len(), whole.bytes) {
                        read.full = true; // It is read again for the next batch.
                        break;
                    }
                    groups.mark_sent(group);
                    batch.append(whole);
                }
            }
            read.last = Some(key);
            read.count += 1;
        }
        Ok(read)
    }

    /// A row and the rest of its group, which may lie ahead of the cursor or in other tables,
    /// as a batch of their own. The caller marks the group sent once it takes it, so that it
    /// is not read again in this pass.
    fn read_group(
        &self,
        group: usize,
        groups: &Groups,
        change: RowChange,
        dirty: DirtyRow,
    ) -> Result<PushBatch> {
        let mut whole = PushBatch::default();
        let (table, key) = (dirty.table, dirty.key.clone());
        push_change(
            &mut whole,
            change,
            DirtyRow {
                group: Some(group),
                ..dirty
            },
        );
        for member in groups.members(group) {
            if member.table == table && matches!(&key, RowKey::Row(k) if *k == member.key) {
                continue;
            }
            // A member cleaned or deleted since the pass began is no longer there.
            if let Some((change, dirty)) = self.dirty_row(member.table, &member.key)? {
                let dirty = DirtyRow {
                    group: Some(group),
                    ..dirty
                };
                push_change(&mut whole, change, dirty);
            }
        }
        Ok(whole)
    }

    /// Appends up to `want` dirty tombstones of one table after `after` to the batch; stops
    /// early before one that would take it past `limit`'s bytes.
    fn read_dirty_tombstones(
        &self,
        table: usize,
        after: Option<&RowKey>,
        want: usize,
        limit: PushLimit,
        batch: &mut PushBatch,
    ) -> Result<Read> {
        let after = match after {
            Some(RowKey::Tombstone(text)) => text.as_str(),
            _ => "",
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT pk, version FROM _ferry_tombstones
             WHERE _isDirty = 1 AND tbl = ?1 AND pk > ?2 ORDER BY pk LIMIT ?3",
        )?;
        let mut rows = stmt.query((&self.tables[table].name, after, want as i64))?;
        let mut read = Read::default();
        while let Some(row) = rows.next()? {
            let key_text: String = row.get(0)?;
            let version: String = row.get(1)?;
            match self.tombstone_change(table, &key_text, version) {
                Some((_, dirty)) if !limit.takes_into(batch, 1, dirty.size) => {
                    read.full = true;
                    break;
                }
                Some((change, dirty)) => push_change(batch, change, dirty),
                None => tracing::warn!(
                    table = %self.tables[table].name,
                    key = %key_text,
                    "A tombstone with an unreadable key was left out of the push."
                ),
            }
            read.last = Some(RowKey::Tombstone(key_text));
            read.count += 1;
        }
        Ok(read)
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
            group: None,
            size: wire_size(&change),
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
            group: None,
            size: wire_size(&change),
        };
        Some((change, dirty))
    }
}

fn push_change(batch: &mut PushBatch, change: RowChange, dirty: DirtyRow) {
    batch.bytes += dirty.size;
    batch.changes.push(change);
    batch.rows.push(dirty);
}

/// What `change` adds to a push request's body: its JSON, as the request serializes it, and
/// the comma after it. Counted without building the text.
fn wire_size(change: &RowChange) -> usize {
    let mut counter = ByteCounter(0);
    // Writing into a counter cannot fail, nor can serializing a change (its maps' keys are
    // strings); were it to, the count would only be short.
    let _ = serde_json::to_writer(&mut counter, change);
    counter.0 + 1
}

/// A writer that only counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
