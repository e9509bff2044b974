//! Pull on PostgreSQL: the tenant's changes after a cursor, in sequence order.
//!
//! Why `seq > cursor` is safe here: a push takes its sequence numbers while holding its
//! tenant's row lock (see `push`), so a tenant's pushes commit in sequence order, and the
//! page is read in one REPEATABLE READ snapshot together with the tenant's last sequence. A
//! snapshot therefore always holds a prefix of the sequence: no change can commit later with
//! a number below one the device has already passed.

use deadpool_postgres::Client;
use tokio_postgres::IsolationLevel;

use crate::{Cursor, DeviceKey, PullPage, Result, StoreError};

pub(super) async fn read_page(
    client: &mut Client,
    device: &DeviceKey,
    since: Cursor,
    limit: u32,
) -> Result<PullPage> {
    let since_seq = i64::try_from(since.seq()).unwrap_or(i64::MAX);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // Walk the (tenant, seq) index in order and stop at the limit. Without statistics (a
    // table just loaded, not yet analyzed) the planner may otherwise read and sort the whole
    // tenant for every page.
    tx.batch_execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
        .await?;
    let last_seq: i64 = tx
        .query_opt(
            &tx.prepare_cached("SELECT last_seq FROM tenants WHERE id = $1")
                .await?,
            &[&device.tenant],
        )
        .await?
        .ok_or_else(|| StoreError::UnknownTenant(device.tenant.clone()))?
        .get(0);
    if since_seq > last_seq {
        return Err(StoreError::CursorAhead);
    }
    // Rows the device wrote last are left out (it has them) but still passed by the cursor.
    // One extra row tells whether more follow.
    let statement = tx
        .prepare_cached(
            "SELECT seq, change FROM rows
             WHERE tenant = $1 AND seq > $2 AND origin_device IS DISTINCT FROM $3
             ORDER BY seq LIMIT $4",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[
                &device.tenant,
                &since_seq,
                &device.device_id,
                &(i64::from(limit) + 1),
            ],
        )
        .await?;
    tx.commit().await?;

    let has_more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let mut changes_json = String::with_capacity(
        2 + page
            .iter()
            .map(|r| r.get::<_, &str>(1).len() + 1)
            .sum::<usize>(),
    );
    changes_json.push('[');
    for (index, row) in page.iter().enumerate() {
        if index > 0 {
            changes_json.push(',');
        }
        changes_json.push_str(row.get::<_, &str>(1));
    }
    changes_json.push(']');
    let cursor_seq = match page.last() {
        Some(row) if has_more => row.get::<_, i64>(0),
        // Past everything the tenant has, including the device's own trailing rows.
        _ => last_seq,
    };
    Ok(PullPage {
        changes_json,
        count: page.len(),
        cursor: Cursor::from_seq(u64::try_from(cursor_seq).unwrap_or(0)),
        has_more,
    })
}
