//! Exporting a tenant from the SQLite store, for `ferry migrate-store`.
//!
//! The export is one read transaction on its own blocking thread: WAL gives it one snapshot
//! however long it takes. Rows and conflicts go out in batches through a small bounded
//! channel, so the reader runs at most a few batches ahead of the writer on the other side.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_core::time::{format_ms, now_ms, parse_ms};
use rusqlite::{Connection, OptionalExtension, Row};
use tokio::sync::mpsc;

use super::{Inner, SqliteStore, access, open_reader};
use crate::transfer::{
    ConflictEntry, DeviceRecord, ExportPart, PairingCodeRecord, RowRecord, TenantExport,
    TenantHeader, TenantRecord, TokenOwner, TokenRecord,
};
use crate::{Result, Role, StoreError};

/// Batches read ahead of the consumer.
const CHANNEL_BATCHES: usize = 4;

impl SqliteStore {
    /// Opens an existing store database for reading only: no migrations run, nothing is
    /// created, and every connection refuses writes. For exporting a store that a stopped
    /// server left behind.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        if !path.is_file() {
            return Err(StoreError::Config(format!(
                "there is no store database at {}",
                path.display()
            )));
        }
        let conn = open_reader(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            return Err(StoreError::Config(format!(
                "{} is not a Ferry store (it has no tables)",
                path.display()
            )));
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                wakeups: super::wakeup_channel(),
                events: crate::events::channel(),
            }),
        })
    }

    /// Exports `tenant`: its devices, tokens (hashes), unused pairing codes that have not
    /// expired, rows and conflict log, with the store's schema DDL, as one consistent snapshot.
    ///
    /// Returns once the header is read; rows and then conflicts follow in batches of
    /// `batch_size` while the caller consumes them. Fails with [`StoreError::UnknownTenant`]
    /// when the store has no such tenant. The store is only read.
    pub async fn export_tenant(&self, tenant: &str, batch_size: usize) -> Result<TenantExport> {
        let (header_tx, header_rx) = tokio::sync::oneshot::channel();
        let (parts_tx, parts_rx) = mpsc::channel(CHANNEL_BATCHES);
        let inner = Arc::clone(&self.inner);
        let tenant = tenant.to_owned();
        let batch_size = batch_size.max(1);
        tokio::task::spawn_blocking(move || {
            let result = inner.read(|tx| {
                refuse_long_keys(tx, &tenant)?;
                let header = read_header(tx, &tenant, now_ms())?;
                if header_tx.send(header).is_err() {
                    return Ok(()); // Nobody waits for the export any more.
                }
                let out = Sender(&parts_tx);
                send_rows(tx, &tenant, batch_size, &out)?;
                send_conflicts(tx, &tenant, batch_size, &out)?;
                out.send(ExportPart::End)
            });
            // The failure goes to whoever waits: before the header, `export_tenant` (its
            // header sender is gone by now); after it, the consumer of the parts.
            if let Err(error) = result {
                let _ = parts_tx.blocking_send(Err(error));
            }
        });
        match header_rx.await {
            Ok(header) => Ok(TenantExport::new(header, parts_rx)),
            Err(_) => {
                let mut parts_rx = parts_rx;
                Err(match parts_rx.recv().await {
                    Some(Err(error)) => error,
                    _ => StoreError::Internal("the export stopped before its start".into()),
                })
            }
        }
    }
}

/// Refuses an export that holds keys longer than [`crate::MAX_KEY_BYTES`]: stores from
/// before the limit may have them, and PostgreSQL cannot index them, so the move would fail
/// at its end. Said before anything is sent, naming the rows.
fn refuse_long_keys(conn: &Connection, tenant: &str) -> Result<()> {
    let limit = i64::try_from(crate::MAX_KEY_BYTES).unwrap_or(i64::MAX);
    let mut statement = conn.prepare(
        "SELECT tbl, pk_key FROM rows
         WHERE tenant = ?1 AND length(CAST(pk_key AS BLOB)) > ?2 LIMIT 4",
    )?;
    let long: Vec<(String, String)> = statement
        .query_map(rusqlite::params![tenant, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if long.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = long
        .iter()
        .map(|(table, key)| {
            let start: String = key.chars().take(40).collect();
            format!("{table} {start}... ({} bytes)", key.len())
        })
        .collect();
    Err(StoreError::Config(format!(
        "rows of tenant {tenant} have keys longer than {} bytes, which PostgreSQL cannot index \
         (this store predates the limit); delete or re-key them first: {}",
        crate::MAX_KEY_BYTES,
        named.join("; ")
    )))
}

/// The parts channel, from the blocking side.
struct Sender<'a>(&'a mpsc::Sender<Result<ExportPart>>);

impl Sender<'_> {
    fn send(&self, part: ExportPart) -> Result<()> {
        self.0
            .blocking_send(Ok(part))
            .map_err(|_| StoreError::Internal("the export's consumer went away".into()))
    }
}

fn read_header(conn: &Connection, tenant: &str, now_ms: i64) -> Result<TenantHeader> {
    let created_at: String = conn
        .query_row(
            "SELECT created_at FROM tenants WHERE id = ?1",
            [tenant],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::UnknownTenant(tenant.to_owned()))?;
    // The tenant's own sequence. A store from before per-tenant sequences (an upgraded Ferry
    // exporting a data directory it has not opened yet) has one global sequence for every
    // tenant, so a device's cursor may be past the tenant's own last row: the tenant's
    // sequence must continue from the global one.
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let sequence: i64 = if version >= super::migrations::TENANT_SEQUENCES {
        conn.query_row(
            "SELECT last_seq FROM tenants WHERE id = ?1",
            [tenant],
            |r| r.get(0),
        )?
    } else {
        conn.query_row("SELECT value FROM counters WHERE name = 'seq'", [], |r| {
            r.get(0)
        })?
    };
    let (max_seq, rows): (i64, i64) = conn.query_row(
        "SELECT coalesce(max(seq), 0), count(*) FROM rows WHERE tenant = ?1",
        [tenant],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let conflicts: i64 = conn.query_row(
        &format!("SELECT count(*) {EXPORTED_CONFLICTS}"),
        [tenant],
        |r| r.get(0),
    )?;
    Ok(TenantHeader {
        tenant: TenantRecord {
            id: tenant.to_owned(),
            created_at_ms: ms("tenants.created_at", &created_at)?,
            last_seq: u64::try_from(sequence.max(max_seq)).unwrap_or(0),
        },
        schema_ddl: access::schema_ddl(conn)?,
        devices: read_devices(conn, tenant)?,
        tokens: read_tokens(conn, tenant)?,
        pairing_codes: read_pairing_codes(conn, tenant, now_ms)?,
        rows: u64::try_from(rows).unwrap_or(0),
        conflicts: u64::try_from(conflicts).unwrap_or(0),
    })
}

fn read_devices(conn: &Connection, tenant: &str) -> Result<Vec<DeviceRecord>> {
    let mut stmt = conn.prepare(
        "SELECT device_id, name, platform, created_at, last_seen_at, last_push_at, last_pull_at,
                pending, version, revoked_at
         FROM devices WHERE tenant = ?1 ORDER BY created_at, device_id",
    )?;
    let mut rows = stmt.query([tenant])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(DeviceRecord {
            device_id: r.get(0)?,
            name: r.get(1)?,
            platform: r.get(2)?,
            created_at_ms: ms("devices.created_at", &r.get::<_, String>(3)?)?,
            last_seen_at_ms: optional_ms(r, 4, "devices.last_seen_at")?,
            last_push_at_ms: optional_ms(r, 5, "devices.last_push_at")?,
            last_pull_at_ms: optional_ms(r, 6, "devices.last_pull_at")?,
            pending: r.get(7)?,
            version: r.get(8)?,
            revoked_at_ms: optional_ms(r, 9, "devices.revoked_at")?,
        });
    }
    Ok(out)
}

fn read_tokens(conn: &Connection, tenant: &str) -> Result<Vec<TokenRecord>> {
    let mut stmt = conn.prepare(
        "SELECT hash, device_id, role, created_at, expires_at, revoked_at
         FROM tokens WHERE tenant = ?1 ORDER BY created_at, hash",
    )?;
    let mut rows = stmt.query([tenant])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let device_id: Option<String> = r.get(1)?;
        let role: Option<String> = r.get(2)?;
        let owner = match (device_id, role.as_deref().map(Role::parse)) {
            (Some(device_id), _) => TokenOwner::Device { device_id },
            (None, Some(Some(role))) => TokenOwner::Operator { role },
            (None, _) => {
                return Err(StoreError::Internal(
                    "a token has neither a device nor a known role".into(),
                ));
            }
        };
        out.push(TokenRecord {
            hash: r.get(0)?,
            owner,
            created_at_ms: ms("tokens.created_at", &r.get::<_, String>(3)?)?,
            expires_at_ms: optional_ms(r, 4, "tokens.expires_at")?,
            revoked_at_ms: optional_ms(r, 5, "tokens.revoked_at")?,
        });
    }
    Ok(out)
}

/// Only codes that could still pair a device: a code printed just before the move keeps
/// working after it. Used and expired ones are history nobody reads.
fn read_pairing_codes(
    conn: &Connection,
    tenant: &str,
    now_ms: i64,
) -> Result<Vec<PairingCodeRecord>> {
    let mut stmt = conn.prepare(
        "SELECT hash, created_at, expires_at FROM pairing_codes
         WHERE tenant = ?1 AND used_at IS NULL AND expires_at > ?2
         ORDER BY created_at, hash",
    )?;
    let mut rows = stmt.query(rusqlite::params![tenant, format_ms(now_ms)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(PairingCodeRecord {
            hash: r.get(0)?,
            created_at_ms: ms("pairing_codes.created_at", &r.get::<_, String>(1)?)?,
            expires_at_ms: ms("pairing_codes.expires_at", &r.get::<_, String>(2)?)?,
        });
    }
    Ok(out)
}

fn send_rows(conn: &Connection, tenant: &str, batch_size: usize, out: &Sender<'_>) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT tbl, pk_key, seq, version, deleted, origin_device, change
         FROM rows WHERE tenant = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([tenant])?;
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(r) = rows.next()? {
        batch.push(RowRecord {
            table: r.get(0)?,
            pk_key: r.get(1)?,
            seq: r.get(2)?,
            version: r.get(3)?,
            deleted: r.get(4)?,
            origin_device: r.get(5)?,
            change: r.get(6)?,
        });
        if batch.len() == batch_size {
            out.send(ExportPart::Rows(std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_size),
            )))?;
        }
    }
    if !batch.is_empty() {
        out.send(ExportPart::Rows(batch))?;
    }
    Ok(())
}

/// The conflict records of tenant `?1` that an export carries: each losing write once, at its
/// earliest record. A store from before migration 5 may hold a write twice (it lost, was pushed
/// again after the row had moved on, and lost to the newer winner too), which the target's
/// `conflicts_once` index refuses; migration 5 drops the same records.
const EXPORTED_CONFLICTS: &str = "
    FROM conflicts c
    WHERE tenant = ?1 AND NOT EXISTS (
      SELECT 1 FROM conflicts first
      WHERE first.tenant = c.tenant AND first.tbl = c.tbl AND first.pk_key = c.pk_key
        AND first.loser_version = c.loser_version
        AND coalesce(first.loser_device, '') = coalesce(c.loser_device, '')
        AND first.id < c.id
    )";

fn send_conflicts(
    conn: &Connection,
    tenant: &str,
    batch_size: usize,
    out: &Sender<'_>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT tbl, pk_key, pk, winner_version, winner_device, loser_version, loser_device,
                loser_deleted, loser_data, recorded_at
         {EXPORTED_CONFLICTS} ORDER BY id"
    ))?;
    let mut rows = stmt.query([tenant])?;
    let mut batch = Vec::new();
    while let Some(r) = rows.next()? {
        batch.push(ConflictEntry {
            table: r.get(0)?,
            pk_key: r.get(1)?,
            pk: r.get(2)?,
            winner_version: r.get(3)?,
            winner_device: r.get(4)?,
            loser_version: r.get(5)?,
            loser_device: r.get(6)?,
            loser_deleted: r.get(7)?,
            loser_data: r.get(8)?,
            recorded_at_ms: ms("conflicts.recorded_at", &r.get::<_, String>(9)?)?,
        });
        if batch.len() == batch_size {
            out.send(ExportPart::Conflicts(std::mem::take(&mut batch)))?;
        }
    }
    if !batch.is_empty() {
        out.send(ExportPart::Conflicts(batch))?;
    }
    Ok(())
}

fn ms(column: &str, text: &str) -> Result<i64> {
    parse_ms(text).ok_or_else(|| {
        StoreError::Internal(format!("{column} holds {text:?}, which is not a timestamp"))
    })
}

fn optional_ms(row: &Row<'_>, index: usize, column: &str) -> Result<Option<i64>> {
    row.get::<_, Option<String>>(index)?
        .map(|text| ms(column, &text))
        .transpose()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn an_export_is_the_tenants_data_in_order_and_leaves_other_tenants_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        store.create_tenant("shop").await.unwrap();
        store.create_tenant("other").await.unwrap();
        store
            .create_operator_token("shop", Role::Admin, None)
            .await
            .unwrap();
        store
            .create_pairing_code("shop", Duration::from_secs(60))
            .await
            .unwrap();
        store
            .create_pairing_code("other", Duration::from_secs(60))
            .await
            .unwrap();
        // Rows written directly: three for the tenant, one for another that takes a sequence
        // number in between and one after, as the global sequence of a store from before
        // per-tenant sequences did; the upgrade starts each tenant's sequence from it.
        let conn = Connection::open(&path).unwrap();
        let mut seq = 0;
        for (tenant, key) in [
            ("shop", "a"),
            ("other", "x"),
            ("shop", "b"),
            ("shop", "c"),
            ("other", "y"),
        ] {
            seq += 1;
            conn.execute(
                "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device,
                                   change)
                 VALUES (?1, 't', ?2, ?3, 'v', 0, NULL, ?4)",
                rusqlite::params![tenant, key, seq, format!("{{\"k\":\"{key}\"}}")],
            )
            .unwrap();
        }
        conn.execute("UPDATE tenants SET last_seq = ?1", [seq])
            .unwrap();
        drop(conn);

        let source = SqliteStore::open_read_only(&path).unwrap();
        let mut export = source.export_tenant("shop", 2).await.unwrap();
        let header = export.header().clone();
        assert_eq!(
            header.tenant.last_seq, 5,
            "past the other tenant's last row"
        );
        assert_eq!((header.rows, header.conflicts), (3, 0));
        assert_eq!(header.tokens.len(), 1);
        assert_eq!(header.pairing_codes.len(), 1);
        let mut keys = Vec::new();
        while let Some(batch) = export.next_rows().await.unwrap() {
            assert!(batch.len() <= 2);
            keys.extend(batch.into_iter().map(|r| (r.pk_key, r.seq)));
        }
        assert_eq!(
            keys,
            [("a".into(), 1), ("b".into(), 3), ("c".into(), 4)] as [(String, i64); 3]
        );
        assert_eq!(export.next_conflicts().await.unwrap(), None);

        assert!(matches!(
            source.export_tenant("nobody", 2).await,
            Err(StoreError::UnknownTenant(_))
        ));
        drop(source);

        // A data directory an older Ferry left: its global counter is the tenant's sequence.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE tenants DROP COLUMN last_seq;
             CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
             INSERT INTO counters (name, value) VALUES ('seq', 7);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        drop(conn);
        let source = SqliteStore::open_read_only(&path).unwrap();
        let export = source.export_tenant("shop", 2).await.unwrap();
        assert_eq!(export.header().tenant.last_seq, 7);
    }

    #[tokio::test]
    async fn a_store_with_keys_too_long_for_postgresql_is_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        store.create_tenant("shop").await.unwrap();
        // Written directly, as a store from before the key limit could hold it.
        let long = format!("[\"{}\"]", "k".repeat(crate::MAX_KEY_BYTES));
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO rows (tenant, tbl, pk_key, seq, version, deleted, origin_device, change)
             VALUES ('shop', 'products', ?1, 1, 'v', 0, NULL, '{}')",
            [&long],
        )
        .unwrap();
        drop(conn);
        let source = SqliteStore::open_read_only(&path).unwrap();
        let Err(StoreError::Config(message)) = source.export_tenant("shop", 2).await else {
            panic!("the export went ahead");
        };
        assert!(
            message.contains("longer than 2000 bytes") && message.contains("products"),
            "{message}"
        );
    }

    /// A store from before migration 5 may hold a losing write twice (pushed again after the
    /// row had moved on), which the target's index refuses: the export carries its first
    /// record only, and counts it so.
    #[tokio::test]
    async fn an_export_carries_each_losing_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        store.create_tenant("shop").await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX conflicts_once;
             CREATE UNIQUE INDEX conflicts_once
               ON conflicts (tenant, tbl, pk_key, loser_version, winner_version);
             PRAGMA user_version = 4;",
        )
        .unwrap();
        let logged = [
            ("v2", Some("a"), "v3"),
            ("v2", Some("a"), "v4"),
            ("v3", Some("b"), "v4"),
            ("v1", None, "v2"),
            ("v1", None, "v5"),
        ];
        for (loser, device, winner) in logged {
            conn.execute(
                "INSERT INTO conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                                        loser_version, loser_device, loser_deleted, loser_data,
                                        recorded_at)
                 VALUES ('shop', 't', 'k', '{}', ?1, 'w', ?2, ?3, 0, NULL,
                         '2026-01-01T00:00:00.000Z')",
                rusqlite::params![winner, loser, device],
            )
            .unwrap();
        }
        drop(conn);

        let source = SqliteStore::open_read_only(&path).unwrap();
        let mut export = source.export_tenant("shop", 10).await.unwrap();
        assert_eq!(export.header().conflicts, 3);
        assert_eq!(export.next_rows().await.unwrap(), None);
        let conflicts = export.next_conflicts().await.unwrap().unwrap();
        let exported: Vec<(&str, Option<&str>, &str)> = conflicts
            .iter()
            .map(|c| {
                let device = c.loser_device.as_deref();
                (c.loser_version.as_str(), device, c.winner_version.as_str())
            })
            .collect();
        assert_eq!(exported, [logged[0], logged[2], logged[3]]);
        assert_eq!(export.next_conflicts().await.unwrap(), None);
    }

    #[test]
    fn a_missing_database_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.sqlite");
        assert!(matches!(
            SqliteStore::open_read_only(&path),
            Err(StoreError::Config(_))
        ));
        assert!(!path.exists());
    }
}
