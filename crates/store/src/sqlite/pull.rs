//! Pull: the tenant's changes after a cursor, in sequence (= commit) order.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Cursor, DeviceKey, PageLimit, PullPage, Result, StoreError};

/// Reads one page. Must run in a read transaction, so the page and the tenant's latest
/// sequence come from the same snapshot.
pub(super) fn read_page(
    conn: &Connection,
    device: &DeviceKey,
    since: Cursor,
    limit: PageLimit,
) -> Result<PullPage> {
    let since_seq = i64::try_from(since.seq()).unwrap_or(i64::MAX);
    // The tenant's own sequence, so that neither the cursors nor `invalid_cursor` tell how much
    // other tenants wrote.
    let last_written: i64 = conn
        .prepare_cached("SELECT last_seq FROM tenants WHERE id = ?1")?
        .query_row([&device.tenant], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::UnknownTenant(device.tenant.clone()))?;
    if since_seq > last_written {
        return Err(StoreError::CursorAhead);
    }
    // An incremental pull leaves out rows the device wrote last (it has them), though its
    // cursor still passes them; a snapshot includes them. One extra row tells whether more
    // follow (SQLite reads it, but it is not copied into the page).
    let limit_plus_one = i64::from(limit.rows) + 1;
    let mut stmt;
    let mut rows = if since.is_snapshot() {
        stmt = conn.prepare_cached(
            "SELECT seq, change FROM rows
             WHERE tenant = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )?;
        stmt.query(params![device.tenant, since_seq, limit_plus_one])?
    } else {
        stmt = conn.prepare_cached(
            "SELECT seq, change FROM rows
             WHERE tenant = ?1 AND seq > ?2 AND origin_device IS NOT ?3
             ORDER BY seq LIMIT ?4",
        )?;
        stmt.query(params![
            device.tenant,
            since_seq,
            device.device_id,
            limit_plus_one
        ])?
    };
    let mut changes_json = String::from("[");
    let mut count = 0_usize;
    let mut last_seq = since_seq;
    let mut has_more = false;
    let mut bytes = 0_usize;
    while let Some(row) = rows.next()? {
        // Borrowed straight from SQLite's buffer: the stored text is the wire JSON.
        let change = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        if !limit.has_room(count, bytes, change.len()) {
            has_more = true;
            break;
        }
        if count > 0 {
            changes_json.push(',');
        }
        changes_json.push_str(change);
        bytes += change.len();
        last_seq = row.get(0)?;
        count += 1;
    }
    changes_json.push(']');

    // More pages follow: the next one continues this pull (a snapshot stays one). The last
    // page's cursor is incremental whatever the pull was, since the device saves it for its
    // next cycles.
    let cursor = if has_more {
        since.continued_at(to_seq(last_seq))
    } else {
        // Past everything the tenant has, including the device's own trailing rows.
        Cursor::from_seq(to_seq(last_written))
    };
    Ok(PullPage {
        changes_json,
        count,
        cursor,
        has_more,
    })
}

fn to_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}
