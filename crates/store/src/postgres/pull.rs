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
    // An incremental pull leaves out rows the device wrote last (it has them), though its
    // cursor still passes them; a snapshot includes them. One extra row tells whether more
    // follow.
    let limit_plus_one = i64::from(limit) + 1;
    let rows = if since.is_snapshot() {
        let statement = tx
            .prepare_cached(
                "SELECT seq, change FROM rows
                 WHERE tenant = $1 AND seq > $2
                 ORDER BY seq LIMIT $3",
            )
            .await?;
        tx.query(&statement, &[&device.tenant, &since_seq, &limit_plus_one])
            .await?
    } else {
        let statement = tx
            .prepare_cached(
                "SELECT seq, change FROM rows
                 WHERE tenant = $1 AND seq > $2 AND origin_device IS DISTINCT FROM $3
                 ORDER BY seq LIMIT $4",
            )
            .await?;
        tx.query(
            &statement,
            &[
                &device.tenant,
                &since_seq,
                &device.device_id,
                &limit_plus_one,
            ],
        )
        .await?
    };
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
    // More pages follow: the next one continues this pull (a snapshot stays one). The last
    // page's cursor is incremental whatever the pull was, since the device saves it for its
    // next cycles.
    let to_seq = |seq: i64| u64::try_from(seq).unwrap_or(0);
    let cursor = match page.last() {
        Some(row) if has_more => since.continued_at(to_seq(row.get::<_, i64>(0))),
        // Past everything the tenant has, including the device's own trailing rows.
        _ => Cursor::from_seq(to_seq(last_seq)),
    };
    Ok(PullPage {
        changes_json,
        count: page.len(),
        cursor,
        has_more,
    })
}
