//! The conflict log: every version that lost, with the version it lost to.

use ferry_proto::Conflict;
use rusqlite::{Connection, params};

use crate::push::ConflictRecord;
use crate::{ConflictQuery, Result, StoreError};

/// Records a conflict once per losing write: logging the same losing version of the same
/// device again does nothing, whatever it lost to this time (a write pushed again after its
/// answer was lost may meet a newer winner). The target is the `conflicts_once` index.
pub(super) fn log(
    conn: &Connection,
    tenant: &str,
    record: &ConflictRecord,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                                loser_version, loser_device, loser_deleted, loser_data, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant, tbl, pk_key, loser_version, coalesce(loser_device, ''))
         DO NOTHING",
    )?
    .execute(params![
        tenant,
        record.table,
        record.key,
        record.pk_json,
        record.winner_version,
        record.winner_device,
        record.loser_version,
        record.loser_device,
        record.loser_deleted,
        record.loser_data_json,
        now
    ])?;
    Ok(())
}

pub(super) fn query(
    conn: &Connection,
    tenant: &str,
    query: &ConflictQuery,
) -> Result<Vec<Conflict>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.tbl, c.pk, c.winner_version, c.winner_device, c.loser_version,
                c.loser_device, c.loser_deleted, c.loser_data, c.recorded_at, r.change
         FROM conflicts c
         LEFT JOIN rows r ON r.tenant = c.tenant AND r.tbl = c.tbl AND r.pk_key = c.pk_key
                         AND r.version = c.winner_version AND NOT r.deleted
         WHERE c.tenant = ?1 AND (?2 IS NULL OR c.tbl = ?2) AND (?3 IS NULL OR c.pk_key = ?3)
         ORDER BY c.id DESC LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![tenant, query.table, query.pk_key, query.limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let pk: String = r.get(2)?;
        let data: Option<String> = r.get(8)?;
        let winner: Option<String> = r.get(10)?;
        out.push(Conflict {
            id: r.get(0)?,
            table: r.get(1)?,
            pk: serde_json::from_str(&pk).map_err(internal)?,
            winner_version: r.get(3)?,
            winner_device: r.get(4)?,
            loser_version: r.get(5)?,
            loser_device: r.get(6)?,
            loser_deleted: r.get(7)?,
            loser_data: data
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(internal)?,
            winner_data: crate::winner_data(winner.as_deref())?,
            recorded_at: r.get(9)?,
        });
    }
    Ok(out)
}

fn internal(error: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("a conflict record is not valid JSON: {error}"))
}
