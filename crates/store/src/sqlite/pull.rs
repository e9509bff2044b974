//! Pull: the tenant's changes after a cursor, in sequence (= commit) order.

use rusqlite::{Connection, params};

use crate::{Cursor, DeviceKey, PullPage, Result, StoreError};

/// Reads one page. Must run in a read transaction, so the page and the tenant's latest
/// sequence come from the same snapshot.
pub(super) fn read_page(
    conn: &Connection,
    device: &DeviceKey,
    since: Cursor,
    limit: u32,
) -> Result<PullPage> {
    let since_seq = i64::try_from(since.seq()).unwrap_or(i64::MAX);
    let last_written: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'seq'")?
        .query_row([], |r| r.get(0))?;
    if since_seq > last_written {
        return Err(StoreError::CursorAhead);
    }
    // An incremental pull leaves out rows the device wrote last (it has them), though its
    // cursor still passes them; a snapshot includes them. One extra row tells whether more
    // follow.
    let limit_plus_one = i64::from(limit) + 1;
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
    while let Some(row) = rows.next()? {
        if count == limit as usize {
            has_more = true;
            break;
        }
        if count > 0 {
            changes_json.push(',');
        }
        // Borrowed straight from SQLite's buffer: the stored text is the wire JSON.
        changes_json.push_str(row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?);
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
        let max: Option<i64> = conn
            .prepare_cached("SELECT max(seq) FROM rows WHERE tenant = ?1")?
            .query_row([&device.tenant], |r| r.get(0))?;
        Cursor::from_seq(to_seq(max.unwrap_or(0).max(since_seq)))
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
