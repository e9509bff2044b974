//! Importing a tenant exported from another store, for `ferry migrate-store`.
//!
//! Everything happens in one transaction: the target holds the whole tenant or none of it.
//! Rows and conflicts go in through binary `COPY`, PostgreSQL's fastest way in, streamed batch
//! by batch while the source is still reading.

use std::pin::pin;
use std::time::SystemTime;

use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{PgStore, at};
use crate::transfer::{
    ImportError, ImportStep, TenantExport, TenantHeader, TokenOwner, TransferSummary,
};
use crate::{Result, StoreError};

use super::access::SCHEMA_DDL_KEY;

impl PgStore {
    /// Imports a tenant exported from another store (see [`crate::transfer`]) in one
    /// transaction, and returns what it moved.
    ///
    /// Every row keeps its sequence number, version, tombstone flag, origin device and change
    /// text; devices keep their ids and check-in times; tokens and pairing codes keep their
    /// hashes and their revoked and expiry times; conflict-log entries keep their order and
    /// times but are numbered anew. The tenant's sequence continues from
    /// [`TenantRecord::last_seq`](crate::transfer::TenantRecord::last_seq), so the devices'
    /// pull cursors stay valid.
    ///
    /// Refuses, writing nothing, when the target already has devices, rows or conflicts of
    /// the tenant ([`ImportError::TenantInUse`]) or serves another schema
    /// ([`ImportError::SchemaDiffers`]). A tenant that exists without any of those (a server
    /// started once on the database) is filled in. Calls `progress` after every batch. The
    /// store must be migrated.
    pub async fn import_tenant(
        &self,
        mut export: TenantExport,
        mut progress: impl FnMut(ImportStep),
    ) -> Result<TransferSummary, ImportError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let header = export.header().clone();
        let tenant = header.tenant.id.as_str();

        claim_tenant(&tx, &header).await?;
        check_schema(&tx, header.schema_ddl.as_deref()).await?;
        insert_devices(&tx, &header).await?;
        insert_tokens(&tx, &header).await?;
        insert_pairing_codes(&tx, &header).await?;

        let rows = copy_rows(&tx, tenant, &mut export, header.rows, &mut progress).await?;
        check_count("rows", header.rows, rows)?;
        let conflicts =
            copy_conflicts(&tx, tenant, &mut export, header.conflicts, &mut progress).await?;
        check_count("conflicts", header.conflicts, conflicts)?;

        let last_seq: i64 = tx
            .query_one("SELECT last_seq FROM tenants WHERE id = $1", &[&tenant])
            .await
            .map_err(StoreError::from)?
            .get(0);
        progress(ImportStep::Committing);
        tx.commit().await.map_err(StoreError::from)?;
        // Fresh statistics, so the first pushes and pulls after a bulk load are planned for
        // the table as it now is.
        client
            .batch_execute("ANALYZE rows, conflicts")
            .await
            .map_err(StoreError::from)?;
        Ok(TransferSummary {
            tenant: tenant.to_owned(),
            rows,
            devices: header.devices.len() as u64,
            tokens: header.tokens.len() as u64,
            pairing_codes: header.pairing_codes.len() as u64,
            conflicts,
            last_seq: u64::try_from(last_seq).unwrap_or(0),
        })
    }
}

/// Creates the tenant, or takes an existing one that has no data yet, and sets its sequence.
/// Holds the tenant's row lock until commit, which keeps pushes to the tenant out meanwhile.
async fn claim_tenant(tx: &Transaction<'_>, header: &TenantHeader) -> Result<(), ImportError> {
    let tenant = header.tenant.id.as_str();
    let created_at = at(header.tenant.created_at_ms);
    tx.execute(
        "INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        &[&tenant, &created_at],
    )
    .await
    .map_err(StoreError::from)?;
    tx.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", &[&tenant])
        .await
        .map_err(StoreError::from)?;
    let counts = tx
        .query_one(
            "SELECT (SELECT count(*) FROM devices WHERE tenant = $1),
                    (SELECT count(*) FROM rows WHERE tenant = $1),
                    (SELECT count(*) FROM conflicts WHERE tenant = $1)",
            &[&tenant],
        )
        .await
        .map_err(StoreError::from)?;
    let count = |index| u64::try_from(counts.get::<_, i64>(index)).unwrap_or(0);
    let (devices, rows, conflicts) = (count(0), count(1), count(2));
    if devices + rows + conflicts > 0 {
        return Err(ImportError::TenantInUse {
            tenant: tenant.to_owned(),
            devices,
            rows,
            conflicts,
        });
    }
    let last_seq = i64::try_from(header.tenant.last_seq)
        .map_err(|_| StoreError::Internal("the tenant's sequence is out of range".into()))?;
    tx.execute(
        "UPDATE tenants SET created_at = least(created_at, $2), last_seq = greatest(last_seq, $3)
         WHERE id = $1",
        &[&tenant, &created_at, &last_seq],
    )
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Takes the source's schema when the target has none; the same one is fine, another is not.
async fn check_schema(tx: &Transaction<'_>, ddl: Option<&str>) -> Result<(), ImportError> {
    let Some(ddl) = ddl else {
        return Ok(());
    };
    tx.execute(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        &[&SCHEMA_DDL_KEY, &ddl],
    )
    .await
    .map_err(StoreError::from)?;
    let stored: String = tx
        .query_one(
            "SELECT value FROM settings WHERE key = $1",
            &[&SCHEMA_DDL_KEY],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    if stored == ddl {
        Ok(())
    } else {
        Err(ImportError::SchemaDiffers)
    }
}

async fn insert_devices(tx: &Transaction<'_>, header: &TenantHeader) -> Result<()> {
    let devices = &header.devices;
    let text = |f: fn(&crate::transfer::DeviceRecord) -> Option<&str>| {
        devices.iter().map(f).collect::<Vec<_>>()
    };
    let time = |f: fn(&crate::transfer::DeviceRecord) -> Option<i64>| {
        devices.iter().map(|d| f(d).map(at)).collect::<Vec<_>>()
    };
    let pending: Vec<i64> = devices.iter().map(|d| d.pending).collect();
    tx.execute(
        "INSERT INTO devices (device_id, tenant, name, platform, created_at, last_seen_at,
                              last_push_at, last_pull_at, pending, version, revoked_at)
         SELECT d.device_id, $1, d.name, d.platform, d.created_at, d.last_seen_at,
                d.last_push_at, d.last_pull_at, d.pending, d.version, d.revoked_at
         FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                     $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::text[],
                     $11::timestamptz[])
           AS d (device_id, name, platform, created_at, last_seen_at, last_push_at,
                 last_pull_at, pending, version, revoked_at)",
        &[
            &header.tenant.id,
            &text(|d| Some(d.device_id.as_str())),
            &text(|d| Some(d.name.as_str())),
            &text(|d| d.platform.as_deref()),
            &time(|d| Some(d.created_at_ms)),
            &time(|d| d.last_seen_at_ms),
            &time(|d| d.last_push_at_ms),
            &time(|d| d.last_pull_at_ms),
            &pending,
            &text(|d| d.version.as_deref()),
            &time(|d| d.revoked_at_ms),
        ],
    )
    .await?;
    Ok(())
}

async fn insert_tokens(tx: &Transaction<'_>, header: &TenantHeader) -> Result<()> {
    let tokens = &header.tokens;
    let hashes: Vec<&str> = tokens.iter().map(|t| t.hash.as_str()).collect();
    let kinds: Vec<&str> = tokens
        .iter()
        .map(|t| match t.owner {
            TokenOwner::Device { .. } => "device",
            TokenOwner::Operator { .. } => "operator",
        })
        .collect();
    let device_ids: Vec<Option<&str>> = tokens
        .iter()
        .map(|t| match &t.owner {
            TokenOwner::Device { device_id } => Some(device_id.as_str()),
            TokenOwner::Operator { .. } => None,
        })
        .collect();
    let roles: Vec<Option<&str>> = tokens
        .iter()
        .map(|t| match t.owner {
            TokenOwner::Device { .. } => None,
            TokenOwner::Operator { role } => Some(role.as_str()),
        })
        .collect();
    let created: Vec<SystemTime> = tokens.iter().map(|t| at(t.created_at_ms)).collect();
    let expires: Vec<Option<SystemTime>> = tokens.iter().map(|t| t.expires_at_ms.map(at)).collect();
    let revoked: Vec<Option<SystemTime>> = tokens.iter().map(|t| t.revoked_at_ms.map(at)).collect();
    tx.execute(
        "INSERT INTO tokens (hash, tenant, kind, device_id, role, created_at, expires_at,
                             revoked_at)
         SELECT t.hash, $1, t.kind, t.device_id, t.role, t.created_at, t.expires_at,
                t.revoked_at
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::timestamptz[], $8::timestamptz[])
           AS t (hash, kind, device_id, role, created_at, expires_at, revoked_at)",
        &[
            &header.tenant.id,
            &hashes,
            &kinds,
            &device_ids,
            &roles,
            &created,
            &expires,
            &revoked,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_pairing_codes(tx: &Transaction<'_>, header: &TenantHeader) -> Result<()> {
    let codes = &header.pairing_codes;
    let hashes: Vec<&str> = codes.iter().map(|c| c.hash.as_str()).collect();
    let created: Vec<SystemTime> = codes.iter().map(|c| at(c.created_at_ms)).collect();
    let expires: Vec<SystemTime> = codes.iter().map(|c| at(c.expires_at_ms)).collect();
    tx.execute(
        "INSERT INTO pairing_codes (hash, tenant, created_at, expires_at)
         SELECT c.hash, $1, c.created_at, c.expires_at
         FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[])
           AS c (hash, created_at, expires_at)",
        &[&header.tenant.id, &hashes, &created, &expires],
    )
    .await?;
    Ok(())
}

async fn copy_rows(
    tx: &Transaction<'_>,
    tenant: &str,
    export: &mut TenantExport,
    total: u64,
    progress: &mut impl FnMut(ImportStep),
) -> Result<u64> {
    let sink = tx
        .copy_in(
            "COPY rows (tenant, tbl, pk_key, seq, version, deleted, origin_device, change)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut done = 0_u64;
    while let Some(batch) = export.next_rows().await? {
        for row in &batch {
            let values: [&(dyn ToSql + Sync); 8] = [
                &tenant,
                &row.table,
                &row.pk_key,
                &row.seq,
                &row.version,
                &row.deleted,
                &row.origin_device,
                &row.change,
            ];
            writer.as_mut().write(&values).await?;
        }
        done += batch.len() as u64;
        progress(ImportStep::Rows { done, total });
    }
    Ok(writer.as_mut().finish().await?)
}

async fn copy_conflicts(
    tx: &Transaction<'_>,
    tenant: &str,
    export: &mut TenantExport,
    total: u64,
    progress: &mut impl FnMut(ImportStep),
) -> Result<u64> {
    // The id column is left to its identity: entries are numbered in the order they come.
    let sink = tx
        .copy_in(
            "COPY conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                             loser_version, loser_device, loser_deleted, loser_data,
                             recorded_at)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
        Type::TIMESTAMPTZ,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut done = 0_u64;
    while let Some(batch) = export.next_conflicts().await? {
        for entry in &batch {
            let recorded_at = at(entry.recorded_at_ms);
            let values: [&(dyn ToSql + Sync); 11] = [
                &tenant,
                &entry.table,
                &entry.pk_key,
                &entry.pk,
                &entry.winner_version,
                &entry.winner_device,
                &entry.loser_version,
                &entry.loser_device,
                &entry.loser_deleted,
                &entry.loser_data,
                &recorded_at,
            ];
            writer.as_mut().write(&values).await?;
        }
        done += batch.len() as u64;
        progress(ImportStep::Conflicts { done, total });
    }
    Ok(writer.as_mut().finish().await?)
}

fn check_count(what: &'static str, announced: u64, delivered: u64) -> Result<(), ImportError> {
    if announced == delivered {
        Ok(())
    } else {
        Err(ImportError::Incomplete {
            what,
            announced,
            delivered,
        })
    }
}
