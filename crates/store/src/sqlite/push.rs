//! Push on SQLite: the shared planner reads stored rows one indexed lookup at a time (cheap
//! in-process), then the plan is written with cached statements. One transaction per request.

use ferry_proto::{PushResult, RowChange};
use rusqlite::{Connection, OptionalExtension, params};

use super::{access, conflicts};
use crate::push::{self, Checked, StoredRow, StoredRows};
use crate::{DeviceKey, PushBatch, Result, StoreError};

/// Applies `batch` for `device`, its changes checked by `checked`, and returns one result per
/// change, in request order (each change's table and key move into its result), and the
/// tenant's last sequence number when the push wrote rows.
pub(super) fn push(
    conn: &Connection,
    device: &DeviceKey,
    batch: &mut PushBatch,
    checked: Checked,
) -> Result<(Vec<PushResult>, Option<u64>)> {
    let plan = push::plan(
        device,
        batch,
        checked,
        &mut SqliteRows {
            conn,
            tenant: &device.tenant,
        },
    )?;
    let mut last_seq = None;
    if !plan.writes.is_empty() {
        // The tenant's own sequence: SQLite has one writer, so numbers follow commit order.
        let mut seq = read_seq(conn, &device.tenant)?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device, change)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (tenant, tbl, pk_key) DO UPDATE SET
               seq = excluded.seq, version = excluded.version, deleted = excluded.deleted,
               origin_device = excluded.origin_device, change = excluded.change",
        )?;
        for write in &plan.writes {
            seq += 1;
            insert.execute(params![
                device.tenant,
                write.table,
                write.key,
                seq,
                write.version,
                write.deleted,
                device.device_id,
                write.change_json
            ])?;
        }
        write_seq(conn, &device.tenant, seq)?;
        last_seq = u64::try_from(seq).ok();
    }
    for record in &plan.conflicts {
        conflicts::log(conn, &device.tenant, record, &plan.now)?;
    }
    access::record_push(conn, device, batch.pending, batch.now_ms)?;
    Ok((plan.results, last_seq))
}

struct SqliteRows<'a> {
    conn: &'a Connection,
    tenant: &'a str,
}

impl StoredRows for SqliteRows<'_> {
    fn stored(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT version, origin_device, deleted FROM rows
                 WHERE tenant = ?1 AND tbl = ?2 AND pk_key = ?3",
            )?
            .query_row(params![self.tenant, table, key], |r| {
                Ok(StoredRow {
                    version: r.get(0)?,
                    origin_device: r.get(1)?,
                    deleted: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn stored_change(&mut self, table: &str, key: &str) -> Result<RowChange> {
        let text: String = self
            .conn
            .prepare_cached(
                "SELECT change FROM rows WHERE tenant = ?1 AND tbl = ?2 AND pk_key = ?3",
            )?
            .query_row(params![self.tenant, table, key], |r| r.get(0))?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Internal(format!("a stored change is not valid JSON: {e}")))
    }
}

/// The tenant's last sequence number; every tenant has its own (migration 4).
/// The tenant's newest sequence number (`Store::last_change`).
pub(super) fn last_seq(conn: &Connection, tenant: &str) -> Result<u64> {
    Ok(u64::try_from(read_seq(conn, tenant)?).unwrap_or_default())
}

fn read_seq(conn: &Connection, tenant: &str) -> Result<i64> {
    conn.prepare_cached("SELECT last_seq FROM tenants WHERE id = ?1")?
        .query_row([tenant], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::UnknownTenant(tenant.to_owned()))
}

fn write_seq(conn: &Connection, tenant: &str, seq: i64) -> Result<()> {
    conn.prepare_cached("UPDATE tenants SET last_seq = ?2 WHERE id = ?1")?
        .execute(params![tenant, seq])?;
    Ok(())
}
