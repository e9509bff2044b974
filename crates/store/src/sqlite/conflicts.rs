//! The conflict log: every version that lost, with the version it lost to.

use ferry_proto::{Conflict, Row, RowChange};
use rusqlite::{Connection, params};

use crate::{ConflictQuery, Result, StoreError};

/// The version that won.
pub(super) struct Winner<'a> {
    pub(super) version: &'a str,
    pub(super) device: Option<&'a str>,
}

/// The version that lost, with its data.
pub(super) struct Loser<'a> {
    version: &'a str,
    device: Option<&'a str>,
    deleted: bool,
    data: Option<&'a Row>,
}

impl<'a> Loser<'a> {
    pub(super) fn from_change(change: &'a RowChange, device: Option<&'a str>) -> Loser<'a> {
        Loser {
            version: &change.version,
            device,
            deleted: change.deleted,
            data: if change.deleted {
                None
            } else {
                change.data.as_ref()
            },
        }
    }
}

/// Records a conflict once: logging the same pair of versions again does nothing.
#[allow(clippy::too_many_arguments)] // The columns of one log record; a struct would only rename them.
pub(super) fn log(
    conn: &Connection,
    tenant: &str,
    table: &str,
    key: &str,
    pk: &Row,
    winner: Winner<'_>,
    loser: Loser<'_>,
    now: &str,
) -> Result<()> {
    let pk = serde_json::to_string(pk).map_err(internal)?;
    let data = loser
        .data
        .map(serde_json::to_string)
        .transpose()
        .map_err(internal)?;
    conn.prepare_cached(
        "INSERT INTO conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                                loser_version, loser_device, loser_deleted, loser_data, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        tenant,
        table,
        key,
        pk,
        winner.version,
        winner.device,
        loser.version,
        loser.device,
        loser.deleted,
        data,
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
        "SELECT id, tbl, pk, winner_version, winner_device, loser_version, loser_device,
                loser_deleted, loser_data, recorded_at
         FROM conflicts
         WHERE tenant = ?1 AND (?2 IS NULL OR tbl = ?2) AND (?3 IS NULL OR pk_key = ?3)
         ORDER BY id DESC LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![tenant, query.table, query.pk_key, query.limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let pk: String = r.get(2)?;
        let data: Option<String> = r.get(8)?;
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
            recorded_at: r.get(9)?,
        });
    }
    Ok(out)
}

fn internal(error: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("a conflict record is not valid JSON: {error}"))
}
