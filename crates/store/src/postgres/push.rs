//! Push on PostgreSQL: four round trips per request, whatever its size.
//!
//! 1. `BEGIN` (every key the batch names is worked out meanwhile).
//! 2. Lock the tenant's row (`FOR NO KEY UPDATE`, which does not block foreign-key checks on
//!    it) and, sent with it, read every stored row the plan may ask for (a primary-key probe
//!    each). Pushes of one tenant queue on the lock, so they commit in the order they take
//!    sequence numbers; that is what makes a pull's `seq > cursor` safe (see `pull`). The read
//!    runs once the lock is granted, with a snapshot of its own (READ COMMITTED), so it sees
//!    every push that committed before.
//! 3. Plan with the shared planner, off the async executor. Its checks that need no stored
//!    row (data, versions, the JSON to store) run while step 2 is in the database.
//! 4. Write the plan, all statements sent at once: delete the stored versions of the rows it
//!    overwrites, by the physical address the read returned (`ctid`, no index probe); insert
//!    every row it writes with one `INSERT ... SELECT unnest(...)`; set the tenant's new last
//!    sequence; log the conflicts and the device's push stats.
//! 5. `COMMIT`.
//!
//! Why delete and insert: a new version of a row cannot be a heap-only update (`seq` is
//! indexed and changes every time), so it costs new entries in both indexes whichever way it
//! is written; `INSERT ... ON CONFLICT DO UPDATE` adds a probe and a row lock per row on top,
//! and the delete by address is the cheapest way to retire the old version. The addresses stay
//! valid until commit: every writer of a tenant's rows holds the tenant's row lock, and nothing
//! that moves rows (`VACUUM FULL`, `CLUSTER`) can run while this transaction holds its lock on
//! `rows`. Should one not match anyway, the count of deleted rows fails the push, and the
//! primary key would refuse a row whose old version was left in place.

use std::collections::HashMap;

use deadpool_postgres::{Client, Transaction};
use ferry_proto::{PushResult, RowChange};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::{access, conflicts};
use crate::events::EVENTS_CHANNEL;
use crate::push::{self, Keyed, RowWrite, StoredRow, StoredRows};
use crate::{DeviceKey, PushBatch, Result, StoreError, StoreEvent};

pub(super) async fn push(
    client: &mut Client,
    device: &DeviceKey,
    batch: PushBatch,
) -> Result<Vec<PushResult>> {
    // The keys to read are worked out while `BEGIN` is on its way.
    let (tx, (keyed, to_read)) = tokio::join!(client.transaction(), async {
        let keyed = Keyed::of(&batch);
        let to_read = keyed.to_read(&batch);
        (keyed, to_read)
    });
    let tx = tx?;
    // The rest of the checks and serializing the changes are milliseconds of CPU for a large
    // batch: done off the async workers while the database reads.
    let (read, finished) = tokio::join!(
        lock_and_read(&tx, device, to_read),
        blocking(move || keyed.check(&batch).map(|checked| (batch, checked)))
    );
    let (last_seq, mut stored) = read?;
    let (batch, checked) = finished?;
    let (pending, now_ms) = (batch.pending, batch.now_ms);
    let device_key = device.clone();
    let (plan, stored, spent) = blocking(move || {
        let mut batch = batch;
        let plan = push::plan(&device_key, &mut batch, checked, &mut stored)?;
        Ok((plan, stored, batch))
    })
    .await?;
    free_off_path(spent);

    // Prepared first (from the connection's cache, after its first push), so that the
    // statements below are sent in the order they are written.
    let writes = RowStatements::prepare(&tx).await?;
    let new_last = last_seq + plan.writes.len() as i64;
    let tenant_params: [&(dyn ToSql + Sync); 2] = [&device.tenant, &new_last];
    // Sent together: PostgreSQL runs them in order, and the first error fails the rest (the
    // transaction is aborted), so that is the one reported.
    let (written, tenant, logged, recorded) = tokio::join!(
        writes.write(&tx, device, &plan.writes, last_seq, &stored),
        async {
            if plan.writes.is_empty() {
                return Ok(0);
            }
            tx.execute(&writes.set_last_seq, &tenant_params).await?;
            // Devices' change streams, on every instance; delivered at commit, never before.
            let changes = changes_event(device, new_last);
            tx.execute(&writes.notify_changes, &[&changes]).await
        },
        conflicts::log(&tx, &device.tenant, &plan.conflicts, now_ms),
        access::record_push(&tx, device, pending, now_ms),
    );
    written?;
    tenant?;
    logged?;
    recorded?;
    tx.commit().await?;
    let results = plan.results;
    free_off_path((plan.writes, plan.conflicts, stored));
    Ok(results)
}

/// Frees `value` on the blocking pool: what a large push leaves behind (its parsed changes,
/// the rows read and written) is thousands of small allocations, a fraction of a millisecond
/// the answer need not wait for.
fn free_off_path<T: Send + 'static>(value: T) {
    drop(tokio::task::spawn_blocking(move || drop(value)));
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Internal(format!("planning a push did not finish: {e}")))?
}

/// Takes the tenant's row lock and reads the stored rows `to_read` names (table and key); the
/// tenant's last sequence number and those rows.
async fn lock_and_read(
    tx: &Transaction<'_>,
    device: &DeviceKey,
    to_read: Vec<(String, String)>,
) -> Result<(i64, Prefetched)> {
    let lock = tx
        .prepare_cached("SELECT last_seq FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .await?;
    let read = tx
        .prepare_cached(
            // One primary-key probe per key, whatever the table's statistics say: a join
            // could be planned as a scan of the whole tenant on a table not analyzed yet.
            "SELECT k.n, r.version, r.origin_device, r.deleted,
                    CASE WHEN r.origin_device IS DISTINCT FROM $4 THEN r.change END,
                    r.ctid::text
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k (tbl, pk_key, n)
             CROSS JOIN LATERAL (
               SELECT rows.*, rows.ctid FROM rows
               WHERE rows.tenant = $1 AND rows.tbl = k.tbl AND rows.pk_key = k.pk_key
               LIMIT 1
             ) AS r",
        )
        .await?;
    let (mut tables, mut keys): (Vec<String>, Vec<String>) = to_read.into_iter().unzip();
    let lock_params: [&(dyn ToSql + Sync); 1] = [&device.tenant];
    let read_params: [&(dyn ToSql + Sync); 4] = [&device.tenant, &tables, &keys, &device.device_id];
    // Sent together: the read waits behind the lock on the server, not for a round trip.
    let (locked, found) = tokio::join!(
        tx.query_opt(&lock, &lock_params),
        tx.query(&read, &read_params)
    );
    let last_seq: i64 = locked?
        .ok_or_else(|| StoreError::UnknownTenant(device.tenant.clone()))?
        .get(0);
    let mut stored = Prefetched::default();
    for row in found? {
        // Rows come back by their position in the keys sent (from 1), not with their keys.
        let index = usize::try_from(row.get::<_, i64>(0) - 1)
            .ok()
            .filter(|&index| index < keys.len())
            .ok_or_else(|| StoreError::Internal("the read answered for a key not sent".into()))?;
        let found = Stored {
            state: StoredRow {
                version: row.get(1),
                origin_device: row.get(2),
                deleted: row.get(3),
            },
            change: row.get(4),
            ctid: row.get(5),
        };
        let table = std::mem::take(&mut tables[index]);
        let rows = match stored.0.get_mut(&table) {
            Some(rows) => rows,
            None => stored.0.entry(table).or_default(),
        };
        rows.insert(std::mem::take(&mut keys[index]), found);
    }
    Ok((last_seq, stored))
}

/// Stored rows read up front, by table and key.
#[derive(Default)]
struct Prefetched(HashMap<String, HashMap<String, Stored>>);

struct Stored {
    state: StoredRow,
    /// The stored change, when another device wrote the row.
    change: Option<String>,
    /// The row's physical address, `(page,item)`.
    ctid: String,
}

impl Prefetched {
    fn get(&self, table: &str, key: &str) -> Option<&Stored> {
        self.0.get(table).and_then(|rows| rows.get(key))
    }
}

impl StoredRows for Prefetched {
    fn stored(&mut self, table: &str, key: &str) -> Result<Option<StoredRow>> {
        Ok(self.get(table, key).map(|row| row.state.clone()))
    }

    fn stored_change(&mut self, table: &str, key: &str) -> Result<RowChange> {
        let text = self
            .get(table, key)
            .and_then(|row| row.change.as_deref())
            .ok_or_else(|| {
                StoreError::Internal(format!("the stored change of {table} {key} was not read"))
            })?;
        serde_json::from_str(text)
            .map_err(|e| StoreError::Internal(format!("a stored change is not valid JSON: {e}")))
    }
}

/// The payload of the [`StoreEvent::Changes`] a push that wrote rows up to `last_seq` sends.
fn changes_event(device: &DeviceKey, last_seq: i64) -> String {
    let event = StoreEvent::Changes {
        tenant: device.tenant.clone(),
        seq: u64::try_from(last_seq).unwrap_or_default(),
        origin: device.device_id.clone(),
    };
    serde_json::to_string(&event).expect("an event serializes")
}

/// The statements that write a plan's rows.
struct RowStatements {
    delete: Statement,
    insert: Statement,
    set_last_seq: Statement,
    notify_changes: Statement,
}

impl RowStatements {
    async fn prepare(tx: &Transaction<'_>) -> Result<RowStatements> {
        Ok(RowStatements {
            delete: tx
                .prepare_cached(
                    "DELETE FROM rows WHERE ctid = ANY($2::text[]::tid[]) AND tenant = $1",
                )
                .await?,
            insert: tx
                .prepare_cached(
                    "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device,
                                       change)
                     SELECT $1, w.tbl, w.pk_key, w.seq, w.version, w.deleted, $8, w.change
                     FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::bool[],
                                 $7::text[]) AS w (tbl, pk_key, seq, version, deleted, change)",
                )
                .await?,
            set_last_seq: tx
                .prepare_cached("UPDATE tenants SET last_seq = $2 WHERE id = $1")
                .await?,
            notify_changes: tx
                .prepare_cached(&format!("SELECT pg_notify('{EVENTS_CHANNEL}', $1)"))
                .await?,
        })
    }

    /// Stores `writes` with the sequence numbers after `last_seq`, in their order: deletes
    /// the stored versions they replace, then inserts them, both sent at once.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        device: &DeviceKey,
        writes: &[RowWrite],
        last_seq: i64,
        stored: &Prefetched,
    ) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let replaced: Vec<&str> = writes
            .iter()
            .filter_map(|w| stored.get(&w.table, &w.key).map(|row| row.ctid.as_str()))
            .collect();
        let tables: Vec<&str> = writes.iter().map(|w| w.table.as_str()).collect();
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        let seqs: Vec<i64> = (last_seq + 1..).take(writes.len()).collect();
        let versions: Vec<&str> = writes.iter().map(|w| w.version.as_str()).collect();
        let deleted: Vec<bool> = writes.iter().map(|w| w.deleted).collect();
        let changes: Vec<&str> = writes.iter().map(|w| w.change_json.as_str()).collect();
        let delete_params: [&(dyn ToSql + Sync); 2] = [&device.tenant, &replaced];
        let insert_params: [&(dyn ToSql + Sync); 8] = [
            &device.tenant,
            &tables,
            &keys,
            &seqs,
            &versions,
            &deleted,
            &changes,
            &device.device_id,
        ];
        let (removed, inserted) = tokio::join!(
            async {
                if replaced.is_empty() {
                    return Ok(0);
                }
                tx.execute(&self.delete, &delete_params).await
            },
            tx.execute(&self.insert, &insert_params)
        );
        let removed = removed?;
        if removed != replaced.len() as u64 {
            return Err(StoreError::Internal(format!(
                "{removed} of the {} stored rows this push replaces were found where they \
                 were read",
                replaced.len()
            )));
        }
        inserted?;
        Ok(())
    }
}
