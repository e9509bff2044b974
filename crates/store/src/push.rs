//! Resolving a push, the same on every backend: validate each change, decide it against the
//! stored version (last-write-wins), and plan the writes and the conflict-log records.
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
                if let (false, Some(data)) = (change.deleted, &change.data) {
                    if let Err(error) = table.check_data(&key, data) {
                        return Ok(Err(Verdict::key_error(error)));
                    }
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
/// Each change's table and primary key move into its result rather than being copied, so
/// the batch keeps only the rest of its changes (their data), for the caller to drop.
pub(crate) fn plan(
    device: &DeviceKey,
    batch: &mut PushBatch,
    checked: Checked,
    stored: &mut impl StoredRows,
) -> Result<Plan> {
    // The overlay is sized up front, a map per table: a thousand-row batch would otherwise
    // grow and rehash it a dozen times.
    let mut per_table: HashMap<&str, usize> = HashMap::new();
    for change in &batch.changes {
        *per_table.entry(change.table.as_str()).or_default() += 1;
    }
    let written = per_table
        .into_iter()
        .map(|(table, rows)| (table.to_owned(), HashMap::with_capacity(rows)))
        .collect();
    let mut planner = Planner {
        device,
        batch,
        stored,
        written,
        writes: Vec::with_capacity(batch.changes.len()),
        conflicts: Vec::new(),
        now: format_ms(batch.now_ms),
    };
    let mut checked: Vec<_> = checked.changes.into_iter().map(Some).collect();
    // Applied in dependency order, so a parent sent after its child in the same batch is
    // planned before the child's foreign key is checked; reported in request order.
    let mut verdicts: Vec<Option<Verdict>> = Vec::new();
    verdicts.resize_with(batch.changes.len(), || None);
    for index in apply_order(&batch.schema, &batch.changes) {
        let change = &batch.changes[index];
        let verdict = match checked.get_mut(index).and_then(Option::take) {
            Some(Ok(valid)) => planner.apply(change, valid)?,
            Some(Err(rejection)) => rejection,
            None => {
                return Err(StoreError::Internal(
                    "the apply order named a change twice, or one that is not there".into(),
                ));
            }
        };
        verdicts[index] = Some(verdict);
    }
    let Planner {
        writes,
        conflicts,
        now,
        ..
    } = planner;
    let results = batch
        .changes
        .iter_mut()
        .zip(verdicts)
        .map(|(change, verdict)| {
            let verdict = verdict.ok_or_else(|| {
                StoreError::Internal("a change was left out of the apply order".into())
            })?;
            Ok(verdict.into_result(change))
        })
        .collect::<Result<_>>()?;
    Ok(Plan {
        results,
        writes: writes.into_iter().flatten().collect(),
        conflicts,
        now,
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

struct Planner<'a, S> {
    device: &'a DeviceKey,
    batch: &'a PushBatch,
    stored: &'a mut S,
    /// Rows written earlier in this batch, by table, then key (so a lookup borrows its
    /// strings): their state and their index in `writes`.
    written: HashMap<String, HashMap<String, (StoredRow, usize)>>,
    /// A slot is emptied when a later change of the batch writes the same row again.
    writes: Vec<Option<RowWrite>>,
    conflicts: Vec<ConflictRecord>,
    now: String,
}

impl<S: StoredRows> Planner<'_, S> {
    /// Decides a change that passed its own checks against the row as stored or as this
    /// batch left it.
    fn apply(&mut self, change: &RowChange, checked: CheckedChange) -> Result<Verdict> {
        let table = self.batch.schema.table(&change.table).ok_or_else(|| {
            StoreError::Internal(format!("table {} left the schema", change.table))
        })?;
        let CheckedChange {
            key,
            parents,
            change_json,
        } = checked;
        let current = self.current(&table.name, &key)?;
        match decide(
            &change.version,
            current.as_ref().map(|s| s.version.as_str()),
        ) {
            Decision::Duplicate => Ok(Verdict::Accepted(Outcome::Duplicate)),
            Decision::Superseded => {
                let current = current.expect("only a stored version can supersede");
                let record = self.conflict(
                    table,
                    &key,
                    change,
                    (current.version, current.origin_device),
                    Some(&self.device.device_id),
                    change,
                )?;
                self.conflicts.push(record);
                Ok(Verdict::Accepted(Outcome::Superseded))
            }
            Decision::Apply => {
                if let Some(rejection) = self.check_parents(table, &key, change, parents)? {
                    return Ok(rejection);
                }
                // A device overwriting its own write is just an edit; overwriting another
                // device's (or the server's) write makes that write a loser worth logging.
                if let Some(current) = current {
                    if current.origin_device.as_deref() != Some(self.device.device_id.as_str()) {
                        let lost = self.stored.stored_change(&table.name, &key)?;
                        let winner = (change.version.clone(), Some(self.device.device_id.clone()));
                        let record = self.conflict(
                            table,
                            &key,
                            change,
                            winner,
                            current.origin_device.as_deref(),
                            &lost,
                        )?;
                        self.conflicts.push(record);
                    }
                }
                self.write(&table.name, key, change, change_json);
                Ok(Verdict::Accepted(Outcome::Applied))
            }
        }
    }

    /// The row's state as this batch has left it so far.
    fn current(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>> {
        match self.written.get(table).and_then(|rows| rows.get(key)) {
            Some((row, _)) => Ok(Some(row.clone())),
            None => self.stored.stored(table, key),
        }
    }

    /// The first foreign key whose parent row is neither stored nor written earlier in this
    /// batch.
    fn check_parents(
        &mut self,
        table: &Table,
        key: &str,
        change: &RowChange,
        parents: Vec<ParentKey>,
    ) -> Result<Option<Verdict>> {
        for (fk, parent_key) in table.foreign_keys.iter().zip(parents) {
            let parent_key = match parent_key {
                Ok(Some(parent_key)) => parent_key,
                Ok(None) => continue,
                Err(error) => return Ok(Some(Verdict::key_error(error))),
            };
            if fk.parent == table.name && parent_key == key {
                continue; // A row may reference itself, as SQLite allows.
            }
            let live = self
                .current(&fk.parent, &parent_key)?
                .is_some_and(|row| !row.deleted);
            if !live {
                let data = change.data.as_ref().ok_or_else(|| {
                    StoreError::Internal("a parent key came from a change without data".into())
                })?;
                return Ok(Some(Verdict::Rejected(
                    RejectCode::FkViolation,
                    missing_parent_message(table, fk, data),
                )));
            }
        }
        Ok(None)
    }

    /// A conflict record: `loser` lost to `winner` (a version and its device).
    fn conflict(
        &self,
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

    fn write(&mut self, table: &str, key: String, change: &RowChange, change_json: String) {
        let state = StoredRow {
            version: change.version.clone(),
            origin_device: Some(self.device.device_id.clone()),
            deleted: change.deleted,
        };
        let written = match self.written.get_mut(table) {
            Some(written) => written,
            None => self.written.entry(table.to_owned()).or_default(),
        };
        // A row written twice in one batch is stored once, at the later position, so that its
        // sequence number still comes after every row it was planned after.
        if let Some((_, earlier)) = written.get(&key) {
            self.writes[*earlier] = None;
        }
        written.insert(key.clone(), (state, self.writes.len()));
        self.writes.push(Some(RowWrite {
            table: table.to_owned(),
            key,
            version: change.version.clone(),
            deleted: change.deleted,
            change_json,
        }));
    }
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
}
