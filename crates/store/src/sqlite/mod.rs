//! The embedded SQLite backend.
//!
//! One writer connection behind a mutex (SQLite has one writer anyway; queuing in-process is
//! cheaper than retrying on `SQLITE_BUSY`) and a small pool of reader connections, which WAL
//! lets run alongside the writer. SQLite calls block, so every trait method runs them on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_core::time::now_ms;

use async_trait::async_trait;
use ferry_proto::{Conflict, DeviceInfo, PairResponse, PairingCode, PushResult};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::broadcast;

use crate::events::StoreEvent;
use crate::jobs::Wakeup;
use crate::{
    ConflictQuery, Cursor, DeviceKey, PageLimit, Principal, PullPage, PushBatch, Result, Role,
    Store, StoreError, StoreEvents, TenantInfo,
};

mod access;
mod backup;
pub use backup::BackupSummary;
mod billing;
mod conflicts;
mod export;
mod jobs;
mod migrations;
mod pull;
mod push;

/// How long a connection waits for another process's write lock (the CLI writing a pairing
/// code while the server runs) before the store reports itself unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle reader connections kept open; more are opened under load and closed afterwards.
const POOLED_READERS: usize = 4;
/// Each connection's page cache, in KiB (SQLite's default is 2,000 KiB). Memory is taken only
/// as pages are read.
const PAGE_CACHE_KIB: i64 = 64 * 1024;
/// Trigger wake-ups a slow listener may fall behind by before it skips to the latest one
/// (a wake-up is only a hint to drain the stored triggers).
const WAKEUP_BACKLOG: usize = 1024;

/// The SQLite store: one database file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Wakes this process's trigger listeners after a trigger commits: the embedded store's
    /// stand-in for PostgreSQL's `NOTIFY`.
    wakeups: broadcast::Sender<Wakeup>,
    /// What changed, for live consoles: sent after each change commits (see
    /// [`crate::events`]).
    events: broadcast::Sender<StoreEvent>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_migrated(path).map(|(store, _)| store)
    }

    /// [`SqliteStore::open`], also returning the migration versions it applied.
    pub fn open_migrated(path: &Path) -> Result<(SqliteStore, Vec<usize>)> {
        let mut writer = open_connection(path)?;
        // WAL lets readers run during a write; NORMAL sync is durable across application
        // crashes and loses at most the last commits on power loss, the usual WAL trade-off.
        writer.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        let applied = migrations::run(&mut writer)?;
        let store = SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                wakeups: wakeup_channel(),
                events: crate::events::channel(),
            }),
        };
        Ok((store, applied))
    }

    /// Runs `f` on the blocking pool with the store's connections.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Internal(format!("a store task did not finish: {e}")))?
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Tells subscribers that `event` happened; call it after the change committed. Nobody
    /// listening is fine.
    fn publish(&self, event: StoreEvent) {
        let _ = self.events.send(event);
    }

    /// [`Inner::publish`] of a device's change.
    fn publish_device(&self, device: &DeviceKey) {
        self.publish(StoreEvent::Device {
            tenant: device.tenant.clone(),
            device_id: device.device_id.clone(),
        });
    }

    /// Runs `f` in one write transaction; it commits only if `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        // A panic inside `f` rolled its transaction back when it unwound, so the connection
        // behind a poisoned lock is still sound.
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        // IMMEDIATE takes the write lock up front: a transaction that reads and then writes
        // cannot fail half-way because another process wrote in between.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one read transaction, so every query in it sees the same snapshot.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = match self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = conn.transaction().map_err(StoreError::from).and_then(|tx| {
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        });
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOLED_READERS {
            pool.push(conn);
        }
        result
    }
}

/// The sender of a store's trigger wake-ups; listeners subscribe to it.
fn wakeup_channel() -> broadcast::Sender<Wakeup> {
    broadcast::channel(WAKEUP_BACKLOG).0
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // SQLite's default page cache is 2 MB; a push looks up and updates rows all over the
    // tables, and pages that fall out of the cache are read back from the file.
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
    // A statement that may fail half-way (a multi-row insert, an upsert) keeps a journal of
    // the pages it changed so it can be undone alone; in memory rather than in a temporary
    // file, whose writes cost a system call per page. It holds one statement's pages at most.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = open_connection(path)?;
    // Readers never write; this turns a mistake into an error instead of a lock fight.
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode::*;
        match error.sqlite_error_code() {
            Some(
                DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | SystemIoFailure
                | DiskFull
                | PermissionDenied
                | ReadOnly
                | FileLockingProtocolFailed,
            ) => StoreError::Unavailable(error.to_string()),
            _ => StoreError::Internal(error.to_string()),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.blocking(|s| s.read(|tx| Ok(tx.query_row("SELECT 1", [], |_| Ok(()))?)))
            .await
    }

    async fn create_tenant(&self, tenant: &str) -> Result<bool> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| s.write(|tx| access::create_tenant(tx, &tenant, now_ms())))
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantInfo>> {
        self.blocking(|s| s.read(|tx| access::list_tenants(tx)))
            .await
    }

    async fn create_operator_token(
        &self,
        tenant: &str,
        role: Role,
        expires_at_ms: Option<i64>,
    ) -> Result<String> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| {
            s.write(|tx| access::create_operator_token(tx, &tenant, role, expires_at_ms, now_ms()))
        })
        .await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        let token = token.to_owned();
        self.blocking(move |s| s.read(|tx| access::authenticate(tx, &token, now_ms())))
            .await
    }

    async fn revoke_token(&self, token: &str) -> Result<bool> {
        let token = token.to_owned();
        self.blocking(move |s| s.write(|tx| access::revoke_token(tx, &token, now_ms())))
            .await
    }

    async fn create_pairing_code(&self, tenant: &str, ttl: Duration) -> Result<PairingCode> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| {
            s.write(|tx| access::create_pairing_code(tx, &tenant, ttl, now_ms()))
        })
        .await
    }

    async fn pairing_code_tenant(&self, code: &str) -> Result<Option<String>> {
        let code = code.to_owned();
        self.blocking(move |s| s.read(|tx| access::pairing_code_tenant(tx, &code, now_ms())))
            .await
    }

    async fn redeem_pairing_code(
        &self,
        code: &str,
        name: &str,
        platform: Option<&str>,
    ) -> Result<Option<PairResponse>> {
        let (code, name) = (code.to_owned(), name.to_owned());
        let platform = platform.map(str::to_owned);
        self.blocking(move |s| {
            let paired = s.write(|tx| {
                access::redeem_pairing_code(tx, &code, &name, platform.as_deref(), now_ms())
            })?;
            if let Some(paired) = &paired {
                s.publish(StoreEvent::Device {
                    tenant: paired.tenant.clone(),
                    device_id: paired.device_id.clone(),
                });
            }
            Ok(paired)
        })
        .await
    }

    async fn check_in(&self, device: &DeviceKey, client_version: Option<&str>) -> Result<()> {
        let device = device.clone();
        let client_version = client_version.map(str::to_owned);
        self.blocking(move |s| {
            s.write(|tx| access::check_in(tx, &device, client_version.as_deref(), now_ms()))?;
            s.publish_device(&device);
            Ok(())
        })
        .await
    }

    async fn list_devices(&self, tenant: &str) -> Result<Vec<DeviceInfo>> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| s.read(|tx| access::list_devices(tx, &tenant)))
            .await
    }

    async fn revoke_device(&self, tenant: &str, device_id: &str) -> Result<bool> {
        let (tenant, device_id) = (tenant.to_owned(), device_id.to_owned());
        self.blocking(move |s| {
            let revoked = s.write(|tx| access::revoke_device(tx, &tenant, &device_id, now_ms()))?;
            if revoked {
                s.publish(StoreEvent::Device { tenant, device_id });
            }
            Ok(revoked)
        })
        .await
    }

    async fn push(&self, device: &DeviceKey, batch: PushBatch) -> Result<Vec<PushResult>> {
        let device = device.clone();
        self.blocking(move |s| {
            let mut batch = batch;
            // The checks that need no stored row run before the write lock is taken, so
            // concurrent pushes do that work side by side.
            let checked = crate::push::Keyed::of(&batch).check(&batch)?;
            let (results, last_seq) = s.write(|tx| push::push(tx, &device, &mut batch, checked))?;
            if let Some(seq) = last_seq {
                s.publish(StoreEvent::Changes {
                    tenant: device.tenant.clone(),
                    seq,
                    origin: device.device_id.clone(),
                });
            }
            s.publish_device(&device);
            Ok(results)
        })
        .await
    }

    async fn pull(&self, device: &DeviceKey, since: Cursor, limit: PageLimit) -> Result<PullPage> {
        let device = device.clone();
        self.blocking(move |s| {
            let page = s.read(|tx| pull::read_page(tx, &device, since, limit))?;
            // Recorded after the read so the read never waits on the writer.
            s.write(|tx| access::record_pull(tx, &device, now_ms()))?;
            s.publish_device(&device);
            Ok(page)
        })
        .await
    }

    async fn last_change(&self, tenant: &str) -> Result<u64> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| s.read(|tx| push::last_seq(tx, &tenant)))
            .await
    }

    async fn conflicts(&self, tenant: &str, query: ConflictQuery) -> Result<Vec<Conflict>> {
        let tenant = tenant.to_owned();
        self.blocking(move |s| s.read(|tx| conflicts::query(tx, &tenant, &query)))
            .await
    }

    async fn schema_ddl(&self) -> Result<Option<String>> {
        self.blocking(|s| s.read(|tx| access::schema_ddl(tx))).await
    }

    async fn set_schema_ddl(&self, ddl: &str) -> Result<()> {
        let ddl = ddl.to_owned();
        self.blocking(move |s| s.write(|tx| access::set_schema_ddl(tx, &ddl)))
            .await
    }

    async fn events(&self) -> Result<StoreEvents> {
        Ok(StoreEvents::new(self.inner.events.subscribe()))
    }
}
