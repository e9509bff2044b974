//! Push: validate each change, resolve it against the stored version (last-write-wins), store
//! the winners, log the losers. One transaction per request.

use ferry_core::order::apply_order;
use ferry_core::time::format_ms;
use ferry_core::version::{Decision, decide};
use ferry_core::{ForeignKey, KeyError, Table, Version};
use ferry_proto::{Outcome, PushResult, RejectCode, Row, RowChange};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::access;
use super::conflicts::{self, Loser, Winner};
use crate::{DeviceKey, PushBatch, Result, StoreError};

/// Applies `batch` for `device` and returns one result per change, in request order.
pub(super) fn push(
    conn: &Connection,
    device: &DeviceKey,
    batch: &PushBatch,
) -> Result<Vec<PushResult>> {
    let mut pusher = Pusher {
        conn,
        device,
        batch,
        now: format_ms(batch.now_ms),
        next_seq: read_seq(conn)?,
    };
    let first_seq = pusher.next_seq;
    // Applied in dependency order, so a parent sent after its child in the same batch is stored
    // before the child's foreign key is checked; reported in request order.
    let mut results: Vec<Option<PushResult>> = vec![None; batch.changes.len()];
    for index in apply_order(&batch.schema, &batch.changes) {
        let change = &batch.changes[index];
        let verdict = pusher.apply(change)?;
        results[index] = Some(verdict.into_result(change));
    }
    if pusher.next_seq != first_seq {
        write_seq(conn, pusher.next_seq)?;
    }
    access::record_push(conn, device, batch.pending, batch.now_ms)?;
    results
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| StoreError::Internal("a change was left out of the apply order".into()))
        })
        .collect()
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

    fn into_result(self, change: &RowChange) -> PushResult {
        let (outcome, code, message) = match self {
            Verdict::Accepted(outcome) => (outcome, None, None),
            Verdict::Rejected(code, message) => (Outcome::Rejected, Some(code), Some(message)),
        };
        PushResult {
            table: change.table.clone(),
            pk: change.pk.clone(),
            outcome,
            code,
            message,
        }
    }
}

/// The stored state of a row, as far as resolving a push needs it.
struct Stored {
    version: String,
    origin_device: Option<String>,
}

struct Pusher<'a> {
    conn: &'a Connection,
    device: &'a DeviceKey,
    batch: &'a PushBatch,
    now: String,
    next_seq: i64,
}

impl Pusher<'_> {
    fn apply(&mut self, change: &RowChange) -> Result<Verdict> {
        let Some(table) = self.batch.schema.table(&change.table) else {
            return Ok(Verdict::Rejected(
                RejectCode::UnknownTable,
                format!("table {} is not in the server's schema", change.table),
            ));
        };
        let key = match table.key_of(&change.pk) {
            Ok(key) => key,
            Err(error) => return Ok(Verdict::key_error(error)),
        };
        // A tombstone's data, if sent at all, is ignored: only the key matters.
        let data = match (change.deleted, &change.data) {
            (true, _) => None,
            (false, Some(data)) => Some(data),
            (false, None) => {
                return Ok(Verdict::Rejected(
                    RejectCode::InvalidValue,
                    format!(
                        "the change to {} has no data; only a tombstone (deleted: true) may \
                         leave it out",
                        table.name
                    ),
                ));
            }
        };
        if let Some(data) = data {
            if let Err(error) = table.check_data(&key, data) {
                return Ok(Verdict::key_error(error));
            }
        }
        if let Some(rejection) = self.check_version(&change.version) {
            return Ok(rejection);
        }

        let stored = self.stored(&table.name, &key)?;
        match decide(&change.version, stored.as_ref().map(|s| s.version.as_str())) {
            Decision::Duplicate => Ok(Verdict::Accepted(Outcome::Duplicate)),
            Decision::Superseded => {
                let stored = stored.expect("only a stored version can supersede");
                let winner = Winner {
                    version: &stored.version,
                    device: stored.origin_device.as_deref(),
                };
                let loser = Loser::from_change(change, Some(&self.device.device_id));
                self.log_conflict(&table.name, &key, change, winner, loser)?;
                Ok(Verdict::Accepted(Outcome::Superseded))
            }
            Decision::Apply => {
                if let Some(data) = data {
                    if let Some(rejection) = self.check_parents(table, &key, data)? {
                        return Ok(rejection);
                    }
                }
                let overwritten = self.overwritten_by_another_device(&table.name, &key, stored)?;
                self.store(&table.name, &key, change)?;
                if let Some(loser) = overwritten {
                    let winner = Winner {
                        version: &change.version,
                        device: Some(&self.device.device_id),
                    };
                    self.log_conflict(&table.name, &key, change, winner, loser.as_loser())?;
                }
                Ok(Verdict::Accepted(Outcome::Applied))
            }
        }
    }

    /// Keeps the losing version of a row in the tenant's conflict log.
    fn log_conflict(
        &self,
        table: &str,
        key: &str,
        change: &RowChange,
        winner: Winner<'_>,
        loser: Loser<'_>,
    ) -> Result<()> {
        let tenant = &self.device.tenant;
        conflicts::log(
            self.conn, tenant, table, key, &change.pk, winner, loser, &self.now,
        )
    }

    /// Rejects malformed versions and versions too far in the server's future: a device with
    /// a fast clock would otherwise win every conflict until real time caught up.
    fn check_version(&self, version: &str) -> Option<Verdict> {
        let parsed = match Version::parse(version) {
            Ok(parsed) => parsed,
            Err(error) => {
                return Some(Verdict::Rejected(
                    RejectCode::InvalidValue,
                    error.to_string(),
                ));
            }
        };
        let skew_ms = i64::try_from(self.batch.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        let ahead_ms = parsed.ms.saturating_sub(self.batch.now_ms);
        if ahead_ms <= skew_ms {
            return None;
        }
        Some(Verdict::Rejected(
            RejectCode::ClockSkew,
            format!(
                "version {version} is {:.1} s ahead of the server's clock ({}); at most {} s is \
                 allowed, so check the device's clock",
                ahead_ms as f64 / 1000.0,
                self.now,
                skew_ms / 1000
            ),
        ))
    }

    /// The first foreign key whose parent row is neither stored nor applied earlier in this
    /// batch (both are visible here: the batch writes into the same transaction).
    fn check_parents(&self, table: &Table, key: &str, data: &Row) -> Result<Option<Verdict>> {
        let schema = &self.batch.schema;
        for fk in &table.foreign_keys {
            let Some(parent) = schema.table(&fk.parent) else {
                continue;
            };
            let parent_key = match table.parent_key_of(fk, parent, data) {
                Ok(Some(parent_key)) => parent_key,
                Ok(None) => continue, // A null reference, or not to the parent's key.
                Err(error) => return Ok(Some(Verdict::key_error(error))),
            };
            if parent.name == table.name && parent_key == key {
                continue; // A row may reference itself, as SQLite allows.
            }
            if !self.is_live(&parent.name, &parent_key)? {
                return Ok(Some(Verdict::Rejected(
                    RejectCode::FkViolation,
                    missing_parent_message(table, fk, data),
                )));
            }
        }
        Ok(None)
    }

    fn stored(&self, table: &str, key: &str) -> Result<Option<Stored>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT version, origin_device FROM rows
                 WHERE tenant = ?1 AND tbl = ?2 AND pk_key = ?3",
            )?
            .query_row(params![self.device.tenant, table, key], |r| {
                Ok(Stored {
                    version: r.get(0)?,
                    origin_device: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// Whether a row exists and is not a tombstone.
    fn is_live(&self, table: &str, key: &str) -> Result<bool> {
        let deleted: Option<bool> = self
            .conn
            .prepare_cached(
                "SELECT deleted FROM rows WHERE tenant = ?1 AND tbl = ?2 AND pk_key = ?3",
            )?
            .query_row(params![self.device.tenant, table, key], |r| r.get(0))
            .optional()?;
        Ok(deleted == Some(false))
    }

    /// The stored change about to be overwritten, when another device (or the server) wrote
    /// it: that write loses and belongs in the conflict log. A device overwriting its own
    /// write is just an edit.
    fn overwritten_by_another_device(
        &self,
        table: &str,
        key: &str,
        stored: Option<Stored>,
    ) -> Result<Option<OwnedLoser>> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        if stored.origin_device.as_deref() == Some(self.device.device_id.as_str()) {
            return Ok(None);
        }
        let text: String = self
            .conn
            .prepare_cached(
                "SELECT change FROM rows WHERE tenant = ?1 AND tbl = ?2 AND pk_key = ?3",
            )?
            .query_row(params![self.device.tenant, table, key], |r| r.get(0))?;
        let change: RowChange = serde_json::from_str(&text)
            .map_err(|e| StoreError::Internal(format!("a stored change is not valid JSON: {e}")))?;
        Ok(Some(OwnedLoser {
            change,
            device: stored.origin_device,
        }))
    }

    fn store(&mut self, table: &str, key: &str, change: &RowChange) -> Result<()> {
        self.next_seq += 1;
        let json = if change.deleted && change.data.is_some() {
            let tombstone = RowChange {
                data: None,
                ..change.clone()
            };
            serde_json::to_string(&tombstone)
        } else {
            serde_json::to_string(change)
        }
        .map_err(|e| StoreError::Internal(format!("a change did not serialize: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device, change)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (tenant, tbl, pk_key) DO UPDATE SET
                   seq = excluded.seq, version = excluded.version, deleted = excluded.deleted,
                   origin_device = excluded.origin_device, change = excluded.change",
            )?
            .execute(params![
                self.device.tenant,
                table,
                key,
                self.next_seq,
                change.version,
                change.deleted,
                self.device.device_id,
                json
            ])?;
        Ok(())
    }
}

/// A stored change that lost to an incoming one.
struct OwnedLoser {
    change: RowChange,
    device: Option<String>,
}

impl OwnedLoser {
    fn as_loser(&self) -> Loser<'_> {
        Loser::from_change(&self.change, self.device.as_deref())
    }
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

fn read_seq(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'seq'")?
        .query_row([], |r| r.get(0))?)
}

fn write_seq(conn: &Connection, seq: i64) -> Result<()> {
    conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'seq'")?
        .execute([seq])?;
    Ok(())
}
