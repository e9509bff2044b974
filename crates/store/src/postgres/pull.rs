//! Pull on PostgreSQL: the tenant's changes after a cursor, in sequence order.
//!
//! Why `seq > cursor` is safe here: a push takes its sequence numbers while holding its
//! tenant's row lock (see `push`), so a tenant's pushes commit in sequence order, and the
//! page is read in one REPEATABLE READ snapshot together with the tenant's last sequence. A
//! snapshot therefore always holds a prefix of the sequence: no change can commit later with
//! a number below one the device has already passed.

use deadpool_postgres::Client;
use tokio_postgres::IsolationLevel;

use crate::{Cursor, DeviceKey, PageLimit, PullPage, Result, StoreError};

/// The statement of one page: `$1` tenant, `$2` cursor, `$3` most rows, `$4` most bytes, and
/// `$filter` on the rows. Each row comes with its change while the page has room for it, and
/// the first row that does not fit comes with NULL.
macro_rules! page_query {
    ($filter:literal) => {
        concat!(
            "SELECT seq, CASE WHEN n <= $3::bigint AND (n = 1 OR running <= $4::bigint)
                              THEN change END
             FROM (
               SELECT seq, change, octet_length(change) AS size,
                      row_number() OVER w AS n, sum(octet_length(change)) OVER w AS running
               FROM rows
               WHERE tenant = $1 AND seq > $2 AND ",
            $filter,
            "
               WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)
               ORDER BY seq LIMIT $3::bigint + 1
             ) page
             WHERE n <= 2 OR running - size <= $4::bigint
             ORDER BY seq"
        )
    };
}

pub(super) async fn read_page(
    client: &mut Client,
    device: &DeviceKey,
    since: Cursor,
    limit: PageLimit,
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
    // cursor still passes them; a snapshot includes them. The page ends at `limit.rows` changes
    // or before the change that would take it over `limit.bytes` (its first change always
    // fits): the running sum of the changes' sizes decides that here, so only the page's
    // changes cross the wire (`octet_length` reads a stored value's size without reading the
    // value). The row after the page comes too, without its change, to tell that more follow.
    let rows = i64::from(limit.rows);
    let bytes = i64::try_from(limit.bytes).unwrap_or(i64::MAX);
    let page_rows = if since.is_snapshot() {
        let statement = tx.prepare_cached(page_query!("TRUE")).await?;
        tx.query(&statement, &[&device.tenant, &since_seq, &rows, &bytes])
            .await?
    } else {
        let statement = tx
            .prepare_cached(page_query!("origin_device IS DISTINCT FROM $5"))
            .await?;
        tx.query(
            &statement,
            &[&device.tenant, &since_seq, &rows, &bytes, &device.device_id],
        )
        .await?
    };
    tx.commit().await?;

    let page: Vec<(i64, &str)> = page_rows
        .iter()
        .map_while(|row| Some((row.get(0), row.get::<_, Option<&str>>(1)?)))
        .collect();
    let has_more = page.len() < page_rows.len();
    let mut changes_json =
        String::with_capacity(2 + page.iter().map(|(_, c)| c.len() + 1).sum::<usize>());
    changes_json.push('[');
    for (index, (_, change)) in page.iter().enumerate() {
        if index > 0 {
            changes_json.push(',');
        }
        changes_json.push_str(change);
    }
    changes_json.push(']');
    // More pages follow: the next one continues this pull (a snapshot stays one). The last
    // page's cursor is incremental whatever the pull was, since the device saves it for its
    // next cycles.
    let to_seq = |seq: i64| u64::try_from(seq).unwrap_or(0);
    let cursor = match page.last() {
        Some(&(seq, _)) if has_more => since.continued_at(to_seq(seq)),
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
