//! Push on PostgreSQL: a few set-based statements per request, whatever its size.
//!
//! 1. Lock the tenant's row (`FOR NO KEY UPDATE`, which does not block foreign-key checks on
//!    it). Pushes of one tenant queue here, so they commit in the order they take sequence
//!    numbers; that is what makes a pull's `seq > cursor` safe (see `pull`).
//! 2. Read every stored row the plan may ask for in one statement (a primary-key probe each).
//! 3. Plan with the shared planner, off the async executor.
//! 4. Write the plan: rows in one `INSERT ... SELECT unnest(...) ON CONFLICT DO UPDATE`, the
//!    tenant's new last sequence, the conflict records and the device's push stats.

use std::collections::HashMap;

use deadpool_postgres::Client;
use ferry_proto::{PushResult, RowChange};

use super::{access, conflicts};
use crate::push::{self, Plan, StoredRow, StoredRows};
use crate::{DeviceKey, PushBatch, Result, StoreError};

pub(super) async fn push(
    client: &mut Client,
    device: &DeviceKey,
    batch: PushBatch,
) -> Result<Vec<PushResult>> {
    let tx = client.transaction().await?;
    let last_seq: i64 = tx
        .query_opt(
            &tx.prepare_cached("SELECT last_seq FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
                .await?,
            &[&device.tenant],
        )
        .await?
        .ok_or_else(|| StoreError::UnknownTenant(device.tenant.clone()))?
        .get(0);

    let (tables, keys): (Vec<String>, Vec<String>) = push::rows_to_read(&batch).into_iter().unzip();
    let statement = tx
        .prepare_cached(
            // One primary-key probe per key, whatever the table's statistics say: a join
            // could be planned as a scan of the whole tenant on a table not analyzed yet.
            "SELECT r.tbl, r.pk_key, r.version, r.origin_device, r.deleted,
                    CASE WHEN r.origin_device IS DISTINCT FROM $4 THEN r.change END
             FROM unnest($2::text[], $3::text[]) AS k (tbl, pk_key)
             CROSS JOIN LATERAL (
               SELECT * FROM rows
               WHERE rows.tenant = $1 AND rows.tbl = k.tbl AND rows.pk_key = k.pk_key
               LIMIT 1
             ) AS r",
        )
        .await?;
    let found = tx
        .query(
            &statement,
            &[&device.tenant, &tables, &keys, &device.device_id],
        )
        .await?;
    let mut prefetched = Prefetched(HashMap::with_capacity(found.len()));
    for row in found {
        let stored = StoredRow {
            version: row.get(2),
            origin_device: row.get(3),
            deleted: row.get(4),
        };
        prefetched
            .0
            .insert((row.get(0), row.get(1)), (stored, row.get(5)));
    }

    // Planning a large batch is milliseconds of CPU: keep it off the async workers.
    let pending = batch.pending;
    let now_ms = batch.now_ms;
    let device_key = device.clone();
    let plan =
        tokio::task::spawn_blocking(move || push::plan(&device_key, &batch, &mut prefetched))
            .await
            .map_err(|e| StoreError::Internal(format!("planning a push did not finish: {e}")))??;

    write_rows(&tx, device, &plan, last_seq).await?;
    conflicts::log(&tx, &device.tenant, &plan.conflicts, now_ms).await?;
    access::record_push(&tx, device, pending, now_ms).await?;
    tx.commit().await?;
    Ok(plan.results)
}

/// Stored rows read up front: `(table, key)` to the row's state and, when another device
/// wrote it, its stored change.
struct Prefetched(HashMap<(String, String), (StoredRow, Option<String>)>);

impl StoredRows for Prefetched {
    fn stored(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>> {
        Ok(self
            .0
            .get(&(table.to_owned(), key.to_owned()))
            .map(|(row, _)| row.clone()))
    }

    fn stored_change(&mut self, table: &str, key: &str) -> Result<RowChange> {
        let text = self
            .0
            .get(&(table.to_owned(), key.to_owned()))
            .and_then(|(_, change)| change.as_deref())
            .ok_or_else(|| {
                StoreError::Internal(format!("the stored change of {table} {key} was not read"))
            })?;
        serde_json::from_str(text)
            .map_err(|e| StoreError::Internal(format!("a stored change is not valid JSON: {e}")))
    }
}

async fn write_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    device: &DeviceKey,
    plan: &Plan,
    last_seq: i64,
) -> Result<()> {
    if plan.writes.is_empty() {
        return Ok(());
    }
    let writes = &plan.writes;
    let tables: Vec<&str> = writes.iter().map(|w| w.table.as_str()).collect();
    let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
    let seqs: Vec<i64> = (1..=writes.len() as i64).map(|n| last_seq + n).collect();
    let versions: Vec<&str> = writes.iter().map(|w| w.version.as_str()).collect();
    let deleted: Vec<bool> = writes.iter().map(|w| w.deleted).collect();
    let changes: Vec<&str> = writes.iter().map(|w| w.change_json.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device, change)
             SELECT $1, w.tbl, w.pk_key, w.seq, w.version, w.deleted, $8, w.change
             FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::bool[],
                         $7::text[]) AS w (tbl, pk_key, seq, version, deleted, change)
             ON CONFLICT (tenant, tbl, pk_key) DO UPDATE SET
               seq = excluded.seq, version = excluded.version, deleted = excluded.deleted,
               origin_device = excluded.origin_device, change = excluded.change",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &device.tenant,
            &tables,
            &keys,
            &seqs,
            &versions,
            &deleted,
            &changes,
            &device.device_id,
        ],
    )
    .await?;
    let new_last = last_seq + writes.len() as i64;
    tx.execute(
        &tx.prepare_cached("UPDATE tenants SET last_seq = $2 WHERE id = $1")
            .await?,
        &[&device.tenant, &new_last],
    )
    .await?;
    Ok(())
}
