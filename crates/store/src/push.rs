//! Resolving a push, the same on every backend: validate each change, decide it against the
//! stored version (last-write-wins), check foreign keys against the state the whole batch
//! leaves (as a deferred constraint would), and plan the writes and the conflict-log records.
//!
//! A backend supplies the stored state of rows through [`StoredRows`] and then performs the
//! [`Plan`] in the same transaction, in whatever way is fastest for it (SQLite row by row,
//! PostgreSQL in a few set-based statements). Rows written earlier in the same batch are kept
//! in an overlay here, so a backend never has to write before the whole batch is planned.

use std::collections::HashMap;

use ferry_core::order::apply_order;
use ferry_core::time::format_ms;
use ferry_core::version::{Decision, decide};
use ferry_core::{ForeignKey, KeyError, Table, Version};
use ferry_proto::{Outcome, PushResult, RejectCode, Row, RowChange};
use serde_json::Value;

use crate::{DeviceKey, PushBatch, Result, StoreError};

/// The longest primary key a row may have, in bytes of its canonical key text (the key values
/// as a JSON array). Both stores index it, and PostgreSQL's b-tree entries hold about 2.7 KB:
/// a longer key made the whole push fail there. Every store refuses it the same way, per row,
/// with `invalid_value`.
pub const MAX_KEY_BYTES: usize = 2000;

/// The stored state of a row, as far as resolving a push needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRow {
    pub(crate) version: String,
    pub(crate) origin_device: Option<String>,
    pub(crate) deleted: bool,
}

/// Read access to the rows as they were before the batch, inside the push's transaction.
pub(crate) trait StoredRows {
    /// The stored state of one row of the pushing device's tenant.
    fn stored(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>>;

    /// The stored change of a row that another device wrote; asked only for rows that
    /// [`StoredRows::stored`] found, when an incoming change is about to overwrite them.
    fn stored_change(&mut self, table: &str, key: &str) -> Result<RowChange>;
}

/// One row to store, in the order the writes must take sequence numbers.
#[derive(Debug, Clone)]
pub(crate) struct RowWrite {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) version: String,
    pub(crate) deleted: bool,
    /// The change's wire JSON (a tombstone without data), stored as it is for pulls.
    pub(crate) change_json: String,
}

/// One record for the conflict log: a version that lost, and the version it lost to.
#[derive(Debug, Clone)]
pub(crate) struct ConflictRecord {
    pub(crate) table: String,
    pub(crate) key: String,
    /// The row's primary key as a JSON object.
    pub(crate) pk_json: String,
    pub(crate) winner_version: String,
    pub(crate) winner_device: Option<String>,
    pub(crate) loser_version: String,
    pub(crate) loser_device: Option<String>,
    pub(crate) loser_deleted: bool,
    /// The losing row's data as a JSON object; `None` for a tombstone.
    pub(crate) loser_data_json: Option<String>,
}

/// What a push does: one result per change in request order, the rows to store (each row at
/// most once, at its last write in the batch) and the conflicts to log.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) results: Vec<PushResult>,
    pub(crate) writes: Vec<RowWrite>,
    pub(crate) conflicts: Vec<ConflictRecord>,
    /// The request time as stored in conflict records.
    pub(crate) now: String,
}

/// The first step of checking a batch: every change's key and its parents' keys, worked out
/// once. A backend that reads stored rows in bulk learns from it what to read
/// ([`Keyed::to_read`]) and may read while the costlier second step, [`Keyed::check`], runs.
pub(crate) struct Keyed {
    /// One per change, in request order.
    changes: Vec<std::result::Result<KeyedChange, Verdict>>,
}

struct KeyedChange {
    key: String,
    /// One per foreign key of the change's table.
    parents: Vec<ParentKey>,
}

/// The key of the parent row a foreign key names; `None` when nothing is to be checked (a
/// null reference, one not to the parent's key, a parent table outside the schema, or a
/// tombstone).
type ParentKey = std::result::Result<Option<String>, KeyError>;

/// Each change of a batch checked on its own, before any stored row is consulted: either why
/// it is rejected, or its keys and the JSON it would be stored as.
pub(crate) struct Checked {
    /// One per change, in request order.
    changes: Vec<std::result::Result<CheckedChange, Verdict>>,
}

struct CheckedChange {
    key: String,
    parents: Vec<ParentKey>,
    /// The change as it is stored for pulls (a tombstone without data).
    change_json: String,
}

impl Keyed {
    /// Every change's key and its parents' keys; rejects changes to unknown tables, with bad
    /// keys, or without data.
    pub(crate) fn of(batch: &PushBatch) -> Keyed {
        let schema = &batch.schema;
        let changes = batch
            .changes
            .iter()
            .map(|change| {
                let Some(table) = schema.table(&change.table) else {
                    return Err(Verdict::Rejected(
                        RejectCode::UnknownTable,
                        format!("table {} is not in the server's schema", change.table),
                    ));
                };
                let key = table.key_of(&change.pk).map_err(Verdict::key_error)?;
                if key.len() > MAX_KEY_BYTES {
                    return Err(Verdict::Rejected(
                        RejectCode::InvalidValue,
                        format!(
                            "the primary key of this {} row is {} bytes as key text; at most \
                             {MAX_KEY_BYTES} are accepted",
                            table.name,
                            key.len()
                        ),
                    ));
                }
                // A tombstone's data, if sent at all, is ignored: only the key matters.
                let parents = match (change.deleted, &change.data) {
                    (true, _) => Vec::new(),
                    (false, Some(data)) => table
                        .foreign_keys
                        .iter()
                        .map(|fk| match schema.table(&fk.parent) {
                            Some(parent) => table.parent_key_of(fk, parent, data),
                            None => Ok(None),
                        })
                        .collect(),
                    (false, None) => {
                        return Err(Verdict::Rejected(
                            RejectCode::InvalidValue,
                            format!(
                                "the change to {} has no data; only a tombstone (deleted: \
                                 true) may leave it out",
                                table.name
                            ),
                        ));
                    }
                };
                Ok(KeyedChange { key, parents })
            })
            .collect();
        Keyed { changes }
    }

    /// Every row whose stored state planning the batch may ask for: each change's own row and
    /// the parents its foreign keys name, once each. Backends that read in bulk fetch these up
    /// front.
    pub(crate) fn to_read(&self, batch: &PushBatch) -> Vec<(String, String)> {
        let schema = &batch.schema;
        let mut keys = Vec::with_capacity(self.changes.len());
        for (change, keyed) in batch.changes.iter().zip(&self.changes) {
            let (Ok(keyed), Some(table)) = (keyed, schema.table(&change.table)) else {
                continue;
            };
            for (fk, parent_key) in table.foreign_keys.iter().zip(&keyed.parents) {
                if let Ok(Some(parent_key)) = parent_key {
                    keys.push((fk.parent.clone(), parent_key.clone()));
                }
            }
            keys.push((table.name.clone(), keyed.key.clone()));
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The checks that need no stored row: each change's data against its table, its
    /// version and the clock; and the JSON each valid change would be stored as.
    pub(crate) fn check(self, batch: &PushBatch) -> Result<Checked> {
        let now = format_ms(batch.now_ms);
        let changes = batch
            .changes
            .iter()
            .zip(self.changes)
            .map(|(change, keyed)| {
                let KeyedChange { key, parents } = match keyed {
                    Ok(keyed) => keyed,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                let table = batch.schema.table(&change.table).ok_or_else(|| {
                    StoreError::Internal(format!("table {} left the schema", change.table))
                })?;
                if let (false, Some(data)) = (change.deleted, &change.data)
                    && let Err(error) = table.check_data(&key, data)
                {
                    return Ok(Err(Verdict::key_error(error)));
                }
                if let Some(rejection) = check_version(batch, &change.version, &now) {
                    return Ok(Err(rejection));
                }
                let change_json = if change.deleted && change.data.is_some() {
                    to_json(&RowChange {
                        data: None,
                        ..change.clone()
                    })?
                } else {
                    to_json(change)?
                };
                Ok(Ok(CheckedChange {
                    key,
                    parents,
                    change_json,
                }))
            })
            .collect::<Result<_>>()?;
        Ok(Checked { changes })
    }
}

/// Plans `batch` for `device` against the stored rows, its changes checked by `checked`.
///
/// In three steps: every valid change is decided against its row as stored or as the batch's
/// earlier changes left it (last-write-wins); foreign keys are checked against the state the
/// whole batch leaves behind, as a deferred constraint would be (see
/// [`Planner::check_foreign_keys`]); what stands becomes the writes and conflict records.
///
/// Each change's table and primary key move into its result rather than being copied, so
/// the batch keeps only the rest of its changes (their data), for the caller to drop.
pub(crate) fn plan(
    device: &DeviceKey,
    batch: &mut PushBatch,
    checked: Checked,
    stored: &mut impl StoredRows,
) -> Result<Plan> {
    let (verdicts, writes, conflicts) = {
        let batch: &PushBatch = batch;
        // Parents first: a row's sequence number comes after those of the rows it references
        // (a reference cycle is cut somewhere), so pulls deliver parents first.
        let order = apply_order(&batch.schema, &batch.changes);
        let mut planner = Planner::new(device, batch, stored);
        planner.decide(&order, checked)?;
        planner.check_foreign_keys()?;
        planner.settle(&order)?
    };
    let results = batch
        .changes
        .iter_mut()
        .zip(verdicts)
        .map(|(change, verdict)| verdict.into_result(change))
        .collect();
    Ok(Plan {
        results,
        writes,
        conflicts,
        now: format_ms(batch.now_ms),
    })
}

/// Rejects malformed versions and versions too far in the server's future: a device with a
/// fast clock would otherwise win every conflict until real time caught up. `now` is the
/// request time as text.
fn check_version(batch: &PushBatch, version: &str, now: &str) -> Option<Verdict> {
    let parsed = match Version::parse(version) {
        Ok(parsed) => parsed,
        Err(error) => {
            return Some(Verdict::Rejected(
                RejectCode::InvalidValue,
                error.to_string(),
            ));
        }
    };
    let skew_ms = i64::try_from(batch.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    let ahead_ms = parsed.ms.saturating_sub(batch.now_ms);
    if ahead_ms <= skew_ms {
        return None;
    }
    Some(Verdict::Rejected(
        RejectCode::ClockSkew,
        format!(
            "version {version} is {:.1} s ahead of the server's clock ({now}); at most {} s is \
             allowed, so check the device's clock",
            ahead_ms as f64 / 1000.0,
            skew_ms / 1000
        ),
    ))
}

/// What happened to one change.
enum Verdict {
    Accepted(Outcome),
    Rejected(RejectCode, String),
}

impl Verdict {
    fn key_error(error: KeyError) -> Verdict {
        let code = match error {
            KeyError::UnknownColumn { .. } => RejectCode::SchemaMismatch,
            _ => RejectCode::InvalidValue,
        };
        Verdict::Rejected(code, error.to_string())
    }

    /// The change's result; its table and primary key move into it.
    fn into_result(self, change: &mut RowChange) -> PushResult {
        let (outcome, code, message) = match self {
            Verdict::Accepted(outcome) => (outcome, None, None),
            Verdict::Rejected(code, message) => (Outcome::Rejected, Some(code), Some(message)),
        };
        PushResult {
            table: std::mem::take(&mut change.table),
            pk: std::mem::take(&mut change.pk),
            outcome,
            code,
            message,
        }
    }
}

/// A change that passed its own checks, while the batch is planned.
struct Planned {
    checked: CheckedChange,
    /// Its row, in [`Planner::rows`].
    row: usize,
    decision: Decision,
    /// The state of the row it was decided against.
    against: Against,
}

/// A state of a row while a batch is planned: as stored before the batch (which may be no row
/// at all), or as a change of the batch (by its index) wrote it.
#[derive(Debug, Clone, Copy)]
enum Against {
    Stored,
    Change(usize),
}

/// A row that valid changes of the batch name.
struct BatchRow {
    /// The row as stored before the batch.
    before: Option<StoredRow>,
    /// The batch's valid changes of the row, in apply order.
    changes: Vec<usize>,
    /// The state the batch leaves the row in.
    current: Against,
    /// How many of the row's upserts the batch applies (more than one only when a batch names
    /// a row twice).
    live_upserts: usize,
    /// Applied upserts (and which of their foreign keys) that reference this row and count on
    /// the batch's upserts of it, having no stored parent.
    dependents: Vec<(usize, usize)>,
    /// Its slot in the writes, once it has one.
    write: Option<usize>,
}

impl BatchRow {
    fn stored_live(&self) -> bool {
        self.before.as_ref().is_some_and(|row| !row.deleted)
    }
}

/// One change while the batch is planned: planned, or why it is rejected; `None` before it is
/// decided and once it is settled.
type Slot = Option<std::result::Result<Planned, Verdict>>;

struct Planner<'a, S> {
    device: &'a DeviceKey,
    batch: &'a PushBatch,
    stored: &'a mut S,
    /// One per change, in request order.
    changes: Vec<Slot>,
    rows: Vec<BatchRow>,
    /// [`Planner::rows`] by table, then key (so a lookup borrows its strings).
    row_ids: HashMap<&'a str, HashMap<String, usize>>,
}

impl<'a, S: StoredRows> Planner<'a, S> {
    fn new(device: &'a DeviceKey, batch: &'a PushBatch, stored: &'a mut S) -> Self {
        // The row map is sized up front, a map per table: a thousand-row batch would otherwise
        // grow and rehash it a dozen times.
        let mut per_table: HashMap<&str, usize> = HashMap::new();
        for change in &batch.changes {
            *per_table.entry(change.table.as_str()).or_default() += 1;
        }
        let row_ids = per_table
            .into_iter()
            .map(|(table, rows)| (table, HashMap::with_capacity(rows)))
            .collect();
        let mut changes = Vec::new();
        changes.resize_with(batch.changes.len(), || None);
        Planner {
            device,
            batch,
            stored,
            changes,
            rows: Vec::with_capacity(batch.changes.len()),
            row_ids,
        }
    }

    /// Step 1: decides each valid change, in apply order, against its row as stored or as the
    /// batch's earlier changes left it. Foreign keys are not looked at yet.
    fn decide(&mut self, order: &[usize], checked: Checked) -> Result<()> {
        let mut checked: Vec<_> = checked.changes.into_iter().map(Some).collect();
        for &index in order {
            let slot = match checked.get_mut(index).and_then(Option::take) {
                Some(Ok(valid)) => Ok(self.decide_one(index, valid)?),
                Some(Err(rejection)) => Err(rejection),
                None => {
                    return Err(StoreError::Internal(
                        "the apply order named a change twice, or one that is not there".into(),
                    ));
                }
            };
            self.changes[index] = Some(slot);
        }
        Ok(())
    }

    fn decide_one(&mut self, index: usize, checked: CheckedChange) -> Result<Planned> {
        let batch = self.batch;
        let change = &batch.changes[index];
        let row = self.row_id(&change.table, &checked.key)?;
        let against = self.rows[row].current;
        let decision = decide(&change.version, self.version(row, against));
        let entry = &mut self.rows[row];
        entry.changes.push(index);
        if decision == Decision::Apply {
            entry.current = Against::Change(index);
            entry.live_upserts += usize::from(!change.deleted);
        }
        Ok(Planned {
            checked,
            row,
            decision,
            against,
        })
    }

    /// The row's index in [`Planner::rows`], added with its stored state the first time.
    fn row_id(&mut self, table: &'a str, key: &str) -> Result<usize> {
        if let Some(&id) = self.row_ids.get(table).and_then(|rows| rows.get(key)) {
            return Ok(id);
        }
        let before = self.stored.stored(table, key)?;
        let id = self.rows.len();
        self.rows.push(BatchRow {
            before,
            changes: Vec::new(),
            current: Against::Stored,
            live_upserts: 0,
            dependents: Vec::new(),
            write: None,
        });
        self.row_ids
            .entry(table)
            .or_default()
            .insert(key.to_owned(), id);
        Ok(id)
    }

    /// The version of a row in the state `against`.
    fn version(&self, row: usize, against: Against) -> Option<&str> {
        match against {
            Against::Stored => self.rows[row].before.as_ref().map(|r| r.version.as_str()),
            Against::Change(index) => Some(self.batch.changes[index].version.as_str()),
        }
    }

    /// Step 2: foreign keys, against the state the whole batch leaves behind, as a deferred
    /// constraint would check them: each upsert the batch applies needs each parent it names
    /// stored live or written live by an upsert of the batch that stands, whatever the order
    /// of the two in the batch, so rows whose references form a cycle go in together. A row may
    /// reference itself.
    ///
    /// A rejected upsert no longer writes its row, which may leave rows that referenced it
    /// without their parent: rejections are followed until none is left. Each upsert is
    /// checked once and each reference to a row of the batch followed at most once more, when
    /// that row loses its last upsert, so the work stays linear in the batch.
    ///
    /// Tombstones are not checked, and do not take a parent away: they apply after every
    /// upsert (as `apply_order` puts them), so a child sent in the same batch as its parent's
    /// tombstone is accepted, as it would be with the tombstone in the next batch. The server
    /// enforces no `ON DELETE` rule: children kept below a deleted parent stay whichever way
    /// they arrive.
    fn check_foreign_keys(&mut self) -> Result<()> {
        // Rejected upserts whose row has yet to lose them, with their row.
        let mut removed: Vec<(usize, usize)> = Vec::new();
        for index in 0..self.changes.len() {
            if self.applies_upsert(index) {
                self.check_parents(index, &mut removed)?;
            }
        }
        while let Some((index, row)) = removed.pop() {
            if self.rows[row].changes.len() > 1 {
                // The row's other changes were decided against this one.
                for applied in self.redecide(row) {
                    self.check_parents(applied, &mut removed)?;
                }
            } else {
                debug_assert_eq!(self.rows[row].changes, [index]);
                self.rows[row].live_upserts -= 1;
            }
            let entry = &mut self.rows[row];
            if entry.live_upserts > 0 || entry.stored_live() {
                continue;
            }
            for (child, fk) in std::mem::take(&mut entry.dependents) {
                if self.applies_upsert(child) {
                    let rejection = self.missing_parent(child, fk)?;
                    self.reject(child, rejection, &mut removed);
                }
            }
        }
        Ok(())
    }

    /// Whether the change is a live row the batch writes (as things stand).
    fn applies_upsert(&self, index: usize) -> bool {
        matches!(&self.changes[index], Some(Ok(planned)) if planned.decision == Decision::Apply)
            && !self.batch.changes[index].deleted
    }

    /// Checks the parents of an upsert the batch applies, in foreign-key order, and rejects it
    /// at the first one missing (or whose key is invalid). A parent that only upserts of this
    /// batch provide is noted, to look at again should they all be rejected.
    fn check_parents(&mut self, index: usize, removed: &mut Vec<(usize, usize)>) -> Result<()> {
        let change = &self.batch.changes[index];
        let table = self.table(&change.table)?;
        let Some(Ok(planned)) = &mut self.changes[index] else {
            return Ok(());
        };
        // An upsert is checked once: an applied change stays applied.
        let parents = std::mem::take(&mut planned.checked.parents);
        let key = planned.checked.key.as_str();
        for (fk_index, (fk, parent_key)) in table.foreign_keys.iter().zip(parents).enumerate() {
            let parent_key = match parent_key {
                Ok(Some(parent_key)) => parent_key,
                Ok(None) => continue,
                Err(error) => {
                    self.reject(index, Verdict::key_error(error), removed);
                    return Ok(());
                }
            };
            if fk.parent == table.name && parent_key == key {
                continue; // A row may reference itself, as SQLite allows.
            }
            let in_batch = self
                .row_ids
                .get(fk.parent.as_str())
                .and_then(|rows| rows.get(&parent_key))
                .copied();
            let present = match in_batch {
                Some(parent) => {
                    let parent = &mut self.rows[parent];
                    if !parent.stored_live() && parent.live_upserts > 0 {
                        parent.dependents.push((index, fk_index));
                    }
                    parent.stored_live() || parent.live_upserts > 0
                }
                None => self
                    .stored
                    .stored(&fk.parent, &parent_key)?
                    .is_some_and(|row| !row.deleted),
            };
            if !present {
                let rejection = self.missing_parent(index, fk_index)?;
                self.reject(index, rejection, removed);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Rejects a change; an upsert the batch applied goes into `removed`, for its row to lose.
    fn reject(&mut self, index: usize, rejection: Verdict, removed: &mut Vec<(usize, usize)>) {
        let applied = self.applies_upsert(index);
        if let Some(Ok(planned)) = self.changes[index].replace(Err(rejection))
            && applied
        {
            removed.push((index, planned.row));
        }
    }

    /// Decides the row's changes again, without the rejected ones; returns the upserts that
    /// apply now and did not before. Taking a change out only lowers the version later ones
    /// meet, so an applied change stays applied.
    fn redecide(&mut self, row: usize) -> Vec<usize> {
        let Planner {
            batch,
            changes,
            rows,
            ..
        } = self;
        let entry = &mut rows[row];
        let mut current = Against::Stored;
        let mut live_upserts = 0;
        let mut newly_applied = Vec::new();
        for &index in &entry.changes {
            let Some(Ok(planned)) = &mut changes[index] else {
                continue;
            };
            let change = &batch.changes[index];
            let current_version = match current {
                Against::Stored => entry.before.as_ref().map(|r| r.version.as_str()),
                Against::Change(earlier) => Some(batch.changes[earlier].version.as_str()),
            };
            let decision = decide(&change.version, current_version);
            planned.against = current;
            if decision == Decision::Apply {
                if planned.decision != Decision::Apply && !change.deleted {
                    newly_applied.push(index);
                }
                current = Against::Change(index);
                live_upserts += usize::from(!change.deleted);
            }
            planned.decision = decision;
        }
        entry.current = current;
        entry.live_upserts = live_upserts;
        newly_applied
    }

    /// The `fk_violation` of a change whose parent through its `fk`-th foreign key is missing.
    fn missing_parent(&self, index: usize, fk: usize) -> Result<Verdict> {
        let change = &self.batch.changes[index];
        let table = self.table(&change.table)?;
        let data = change.data.as_ref().ok_or_else(|| {
            StoreError::Internal("a parent key came from a change without data".into())
        })?;
        let fk = &table.foreign_keys[fk];
        Ok(Verdict::Rejected(
            RejectCode::FkViolation,
            missing_parent_message(table, fk, data),
        ))
    }

    fn table(&self, name: &str) -> Result<&'a Table> {
        self.batch
            .schema
            .table(name)
            .ok_or_else(|| StoreError::Internal(format!("table {name} left the schema")))
    }

    /// Step 3: the verdicts, in request order, and the writes and conflict records of the
    /// changes that stand, in apply order (each row written once, at its last write).
    fn settle(
        mut self,
        order: &[usize],
    ) -> Result<(Vec<Verdict>, Vec<RowWrite>, Vec<ConflictRecord>)> {
        let mut verdicts: Vec<Option<Verdict>> = Vec::new();
        verdicts.resize_with(self.changes.len(), || None);
        // A slot is emptied when a later change of the batch writes the same row again.
        let mut writes: Vec<Option<RowWrite>> = Vec::with_capacity(self.changes.len());
        let mut conflicts = Vec::new();
        for &index in order {
            let verdict = match self.changes.get_mut(index).and_then(Option::take) {
                Some(Ok(planned)) => {
                    self.settle_one(index, planned, &mut writes, &mut conflicts)?
                }
                Some(Err(rejection)) => rejection,
                None => {
                    return Err(StoreError::Internal(
                        "the apply order named a change twice, or one that is not there".into(),
                    ));
                }
            };
            verdicts[index] = Some(verdict);
        }
        let verdicts = verdicts
            .into_iter()
            .map(|verdict| {
                verdict.ok_or_else(|| {
                    StoreError::Internal("a change was left out of the apply order".into())
                })
            })
            .collect::<Result<_>>()?;
        Ok((verdicts, writes.into_iter().flatten().collect(), conflicts))
    }

    fn settle_one(
        &mut self,
        index: usize,
        planned: Planned,
        writes: &mut Vec<Option<RowWrite>>,
        conflicts: &mut Vec<ConflictRecord>,
    ) -> Result<Verdict> {
        let change = &self.batch.changes[index];
        let table = self.table(&change.table)?;
        let Planned {
            checked,
            row,
            decision,
            against,
        } = planned;
        let device_id = &self.device.device_id;
        match decision {
            Decision::Duplicate => Ok(Verdict::Accepted(Outcome::Duplicate)),
            Decision::Superseded => {
                let winner = match against {
                    Against::Stored => {
                        let stored = self.rows[row].before.as_ref().ok_or_else(|| {
                            StoreError::Internal("only a stored version can supersede".into())
                        })?;
                        (stored.version.clone(), stored.origin_device.clone())
                    }
                    Against::Change(earlier) => (
                        self.batch.changes[earlier].version.clone(),
                        Some(device_id.clone()),
                    ),
                };
                let record =
                    conflict(table, &checked.key, change, winner, Some(device_id), change)?;
                conflicts.push(record);
                Ok(Verdict::Accepted(Outcome::Superseded))
            }
            Decision::Apply => {
                // A device overwriting its own write is just an edit; overwriting another
                // device's (or the server's) write makes that write a loser worth logging.
                let overwritten = match against {
                    Against::Stored => self.rows[row].before.as_ref(),
                    Against::Change(_) => None,
                };
                if let Some(stored) = overwritten
                    && stored.origin_device.as_deref() != Some(device_id.as_str())
                {
                    let loser_device = stored.origin_device.clone();
                    let lost = self.stored.stored_change(&table.name, &checked.key)?;
                    let winner = (change.version.clone(), Some(device_id.clone()));
                    let record = conflict(
                        table,
                        &checked.key,
                        change,
                        winner,
                        loser_device.as_deref(),
                        &lost,
                    )?;
                    conflicts.push(record);
                }
                // A row written twice in one batch is stored once, at the later position, so
                // that its sequence number still comes after every row it was planned after.
                let entry = &mut self.rows[row];
                if let Some(earlier) = entry.write.replace(writes.len()) {
                    writes[earlier] = None;
                }
                writes.push(Some(RowWrite {
                    table: table.name.clone(),
                    key: checked.key,
                    version: change.version.clone(),
                    deleted: change.deleted,
                    change_json: checked.change_json,
                }));
                Ok(Verdict::Accepted(Outcome::Applied))
            }
        }
    }
}

/// A conflict record: `loser` lost to `winner` (a version and its device).
fn conflict(
    table: &Table,
    key: &str,
    change: &RowChange,
    winner: (String, Option<String>),
    loser_device: Option<&str>,
    loser: &RowChange,
) -> Result<ConflictRecord> {
    let data = match (loser.deleted, &loser.data) {
        (false, Some(data)) => Some(to_json(data)?),
        _ => None,
    };
    Ok(ConflictRecord {
        table: table.name.clone(),
        key: key.to_owned(),
        pk_json: to_json(&change.pk)?,
        winner_version: winner.0,
        winner_device: winner.1,
        loser_version: loser.version.clone(),
        loser_device: loser_device.map(str::to_owned),
        loser_deleted: loser.deleted,
        loser_data_json: data,
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("a change did not serialize: {e}")))
}

/// `sale_items.sale_id 'abc' not found in sales`, or for a composite key
/// `lines.(order_id, shop) (7, 'x') not found in orders`.
fn missing_parent_message(table: &Table, fk: &ForeignKey, data: &Row) -> String {
    let values: Vec<String> = fk
        .columns
        .iter()
        .map(|column| match data.get(column) {
            Some(Value::String(text)) => format!("'{text}'"),
            Some(value) => value.to_string(),
            None => "null".to_owned(),
        })
        .collect();
    if let [column] = fk.columns.as_slice() {
        format!(
            "{}.{column} {} not found in {}",
            table.name, values[0], fk.parent
        )
    } else {
        format!(
            "{}.({}) ({}) not found in {}",
            table.name,
            fk.columns.join(", "),
            values.join(", "),
            fk.parent
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn batch(changes: serde_json::Value) -> PushBatch {
        PushBatch {
            schema: Arc::new(ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE).unwrap()),
            changes: serde_json::from_value(changes).unwrap(),
            pending: 0,
            now_ms: 1_700_000_000_000,
            max_clock_skew: Duration::from_secs(60),
        }
    }

    fn version(ms: i64) -> String {
        ferry_core::version::format(ms, 0, "dev_a")
    }

    #[test]
    fn the_read_set_names_each_row_and_its_parents_once() {
        let v = version(1_700_000_000_000);
        let batch = batch(json!([
            {"table": "sale_items", "pk": {"id": "i1"}, "version": v, "deleted": false,
             "data": {"id": "i1", "sale_id": "s1", "product_id": "p1", "unit_price_cents": 5}},
            {"table": "sale_items", "pk": {"id": "i2"}, "version": v, "deleted": false,
             "data": {"id": "i2", "sale_id": "s1", "product_id": "p2", "unit_price_cents": 5}},
            // A tombstone names only its own row, whatever data it carries.
            {"table": "products", "pk": {"id": "p3"}, "version": v, "deleted": true,
             "data": {"id": "p3", "category_id": "c9"}},
            // A null reference names no parent.
            {"table": "categories", "pk": {"id": "c1"}, "version": v, "deleted": false,
             "data": {"id": "c1", "name": "Drinks", "parent_id": null}},
            // Rejected changes are not read.
            {"table": "nope", "pk": {"id": "x"}, "version": v, "deleted": false, "data": {}},
            {"table": "products", "pk": {"sku": "x"}, "version": v, "deleted": false,
             "data": {"id": "x"}},
        ]));
        let read = Keyed::of(&batch).to_read(&batch);
        let expected: Vec<(String, String)> = [
            ("categories", r#"["c1"]"#),
            ("products", r#"["p1"]"#),
            ("products", r#"["p2"]"#),
            ("products", r#"["p3"]"#),
            ("sale_items", r#"["i1"]"#),
            ("sale_items", r#"["i2"]"#),
            ("sales", r#"["s1"]"#),
        ]
        .into_iter()
        .map(|(table, key)| (table.to_owned(), key.to_owned()))
        .collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn checks_reject_in_order_and_valid_changes_are_stored_as_sent() {
        let now = 1_700_000_000_000;
        let batch = batch(json!([
            {"table": "categories", "pk": {"id": "c1"}, "version": version(now), "deleted": false,
             "data": {"id": "c1", "name": "Drinks"}},
            // Unknown column: caught by the data check, before the (also bad) version.
            {"table": "categories", "pk": {"id": "c2"}, "version": "junk", "deleted": false,
             "data": {"id": "c2", "name": "x", "colour": "red"}},
            {"table": "categories", "pk": {"id": "c3"}, "version": version(now + 3_600_000),
             "deleted": false, "data": {"id": "c3", "name": "Later"}},
            {"table": "categories", "pk": {"id": "c4"}, "version": version(now), "deleted": true,
             "data": {"id": "c4", "name": "Gone"}},
        ]));
        let checked = Keyed::of(&batch).check(&batch).unwrap();
        let codes: Vec<Option<RejectCode>> = checked
            .changes
            .iter()
            .map(|c| match c {
                Ok(_) => None,
                Err(Verdict::Rejected(code, _)) => Some(*code),
                Err(Verdict::Accepted(_)) => panic!("a check accepted a change outright"),
            })
            .collect();
        assert_eq!(
            codes,
            [
                None,
                Some(RejectCode::SchemaMismatch),
                Some(RejectCode::ClockSkew),
                None
            ]
        );
        let stored = |i: usize| -> RowChange {
            let Ok(valid) = &checked.changes[i] else {
                panic!("change {i} was rejected");
            };
            serde_json::from_str(&valid.change_json).unwrap()
        };
        assert_eq!(stored(0).data, batch.changes[0].data);
        assert_eq!(stored(0).version, batch.changes[0].version);
        // A tombstone is stored without the data it was sent with.
        assert!(stored(3).deleted && stored(3).data.is_none());
    }

    /// Stored rows for planning: none, or the categories named.
    #[derive(Default)]
    struct Stored(HashMap<(String, String), StoredRow>);

    impl StoredRows for Stored {
        fn stored(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>> {
            Ok(self.0.get(&(table.to_owned(), key.to_owned())).cloned())
        }

        fn stored_change(&mut self, table: &str, key: &str) -> Result<RowChange> {
            Err(StoreError::Internal(format!(
                "{table} {key} has no stored change here"
            )))
        }
    }

    fn category(id: &str, parent: Option<&str>, version: &str) -> serde_json::Value {
        json!({"table": "categories", "pk": {"id": id}, "version": version, "deleted": false,
               "data": {"id": id, "name": id, "parent_id": parent}})
    }

    /// Each change's outcome (or rejection code), and the rows written, `table key`.
    fn plan_of(changes: serde_json::Value, stored: &mut Stored) -> (Vec<String>, Vec<String>) {
        let mut batch = batch(changes);
        let device = DeviceKey {
            tenant: "t".into(),
            device_id: "dev_a".into(),
        };
        let checked = Keyed::of(&batch).check(&batch).unwrap();
        let plan = plan(&device, &mut batch, checked, stored).unwrap();
        let outcomes = plan
            .results
            .iter()
            .map(|r| match r.code {
                Some(code) => code.as_str().to_owned(),
                None => format!("{:?}", r.outcome).to_lowercase(),
            })
            .collect();
        let writes = plan
            .writes
            .iter()
            .map(|w| format!("{} {} {}", w.table, w.key, w.version))
            .collect();
        (outcomes, writes)
    }

    #[test]
    fn a_rejected_write_of_a_row_named_twice_gives_way_to_its_other_write() {
        let (v1, v2) = (version(1_700_000_000_000), version(1_700_000_000_001));
        let lost = category("c1", Some("nowhere"), &v2);
        let kept = category("c1", None, &v1);
        let product = json!({"table": "products", "pk": {"id": "p1"}, "version": v1,
                             "deleted": false, "data": {"id": "p1", "name": "Cola",
                             "category_id": "c1"}});
        // Either way round: c1 at v2 loses its parent, so c1 at v1 is what the batch writes,
        // and the product below it still has its parent.
        for changes in [json!([lost, kept, product]), json!([kept, lost, product])] {
            let first_is_lost = changes[0] == lost;
            let (outcomes, writes) = plan_of(changes, &mut Stored::default());
            let expected = if first_is_lost {
                ["fk_violation", "applied", "applied"]
            } else {
                ["applied", "fk_violation", "applied"]
            };
            assert_eq!(outcomes, expected);
            assert_eq!(
                writes,
                [
                    format!(r#"categories ["c1"] {v1}"#),
                    format!(r#"products ["p1"] {v1}"#)
                ]
            );
        }
    }

    #[test]
    fn rejections_follow_long_chains_and_long_cycles_stand_together() {
        let v = version(1_700_000_000_000);
        // n0 <- n1 <- ... each referencing the one before; n0's parent is nowhere.
        let chain: Vec<_> = (0..10_000)
            .rev()
            .map(|i| {
                let parent = if i == 0 {
                    "nowhere".to_owned()
                } else {
                    format!("n{}", i - 1)
                };
                category(&format!("n{i}"), Some(&parent), &v)
            })
            .collect();
        let (outcomes, writes) = plan_of(json!(chain), &mut Stored::default());
        assert!(outcomes.iter().all(|o| o == "fk_violation"));
        assert!(writes.is_empty());

        // The same rows as one cycle: n0 references the last one.
        let mut cycle = chain;
        cycle[9_999]["data"]["parent_id"] = json!("n9999");
        let (outcomes, writes) = plan_of(json!(cycle), &mut Stored::default());
        assert!(outcomes.iter().all(|o| o == "applied"));
        assert_eq!(writes.len(), 10_000);
    }

    #[test]
    fn a_stored_parent_counts_and_a_deleted_one_does_not() {
        let v = version(1_700_000_000_000);
        let mut stored = Stored::default();
        for (id, deleted) in [("live", false), ("gone", true), ("back", true)] {
            stored.0.insert(
                ("categories".into(), format!(r#"["{id}"]"#)),
                StoredRow {
                    version: version(1_600_000_000_000),
                    origin_device: Some("dev_a".into()),
                    deleted,
                },
            );
        }
        let (outcomes, _) = plan_of(
            json!([
                category("a", Some("live"), &v),
                category("b", Some("gone"), &v),
                // Re-created in this batch, so it counts again.
                category("c", Some("back"), &v),
                category("back", Some("c"), &v),
            ]),
            &mut stored,
        );
        assert_eq!(outcomes, ["applied", "fk_violation", "applied", "applied"]);
    }
}
