//! The conflict log on PostgreSQL.

use deadpool_postgres::{Client, GenericClient};
use ferry_proto::Conflict;

use super::{at, text_of};
use crate::push::ConflictRecord;
use crate::{ConflictQuery, Result, StoreError};

/// Records conflicts in one statement; a losing write already logged is skipped, whatever it
/// lost to (see the SQLite store's `log`). The target is the `conflicts_once` index.
pub(super) async fn log(
    client: &impl GenericClient,
    tenant: &str,
    records: &[ConflictRecord],
    now_ms: i64,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&ConflictRecord) -> &str| records.iter().map(f).collect::<Vec<_>>();
    let optional =
        |f: fn(&ConflictRecord) -> Option<&str>| records.iter().map(f).collect::<Vec<_>>();
    let statement = client
        .prepare_cached(
            "INSERT INTO conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                                    loser_version, loser_device, loser_deleted, loser_data,
                                    recorded_at)
             SELECT $1, c.*, $11 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                            $6::text[], $7::text[], $8::text[], $9::bool[],
                                            $10::text[]) AS c
             ON CONFLICT (tenant, tbl, pk_key, loser_version, coalesce(loser_device, ''))
             DO NOTHING",
        )
        .await?;
    let deleted: Vec<bool> = records.iter().map(|r| r.loser_deleted).collect();
    client
        .execute(
            &statement,
            &[
                &tenant,
                &column(|r| r.table.as_str()),
                &column(|r| r.key.as_str()),
                &column(|r| r.pk_json.as_str()),
                &column(|r| r.winner_version.as_str()),
                &optional(|r| r.winner_device.as_deref()),
                &column(|r| r.loser_version.as_str()),
                &optional(|r| r.loser_device.as_deref()),
                &deleted,
                &optional(|r| r.loser_data_json.as_deref()),
                &at(now_ms),
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn query(
    client: &Client,
    tenant: &str,
    query: &ConflictQuery,
) -> Result<Vec<Conflict>> {
    let rows = client
        .query(
            "SELECT c.id, c.tbl, c.pk, c.winner_version, c.winner_device, c.loser_version,
                    c.loser_device, c.loser_deleted, c.loser_data, c.recorded_at, r.change
             FROM conflicts c
             LEFT JOIN rows r ON r.tenant = c.tenant AND r.tbl = c.tbl AND r.pk_key = c.pk_key
                             AND r.version = c.winner_version AND NOT r.deleted
             WHERE c.tenant = $1 AND ($2::text IS NULL OR c.tbl = $2)
               AND ($3::text IS NULL OR c.pk_key = $3)
             ORDER BY c.id DESC LIMIT $4",
            &[
                &tenant,
                &query.table,
                &query.pk_key,
                &i64::from(query.limit),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let pk: &str = r.get(2);
            let data: Option<&str> = r.get(8);
            let winner: Option<&str> = r.get(10);
            Ok(Conflict {
                id: r.get(0),
                table: r.get(1),
                pk: serde_json::from_str(pk).map_err(internal)?,
                winner_version: r.get(3),
                winner_device: r.get(4),
                loser_version: r.get(5),
                loser_device: r.get(6),
                loser_deleted: r.get(7),
                loser_data: data
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(internal)?,
                winner_data: crate::winner_data(winner)?,
                recorded_at: text_of(r.get(9)).unwrap_or_default(),
            })
        })
        .collect()
}

fn internal(error: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("a conflict record is not valid JSON: {error}"))
}
