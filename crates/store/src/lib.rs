//! The server's store: tenants, tokens, pairing codes, devices, synced rows and the conflict log.
//!
//! [`Store`] is the backend-neutral interface the server uses; [`SqliteStore`] is the embedded
//! default backend. Nothing in this file names a backend type, so a PostgreSQL backend can
//! implement the same trait.
//!
//! Synced rows are kept generically, one record per `(tenant, table, primary key)`, with the
//! row change's JSON stored pre-serialized: a pull concatenates stored text instead of building
//! rows. Every write takes the next value of a global sequence inside its transaction, so commit
//! order equals sequence order and a pull cursor is simply "the last sequence seen".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::Schema;
use ferry_proto::{Conflict, DeviceInfo, PairResponse, PairingCode, PushResult, RowChange};

pub mod billing;
pub mod cursor;
pub mod events;
pub mod jobs;
mod postgres;
mod push;
pub mod secret;
mod sqlite;
pub mod transfer;

pub use billing::BillingStore;
pub use cursor::{Cursor, InvalidCursor};
pub use events::{StoreEvent, StoreEvents};
pub use jobs::JobStore;
pub use postgres::{PgOptions, PgStore};
pub use push::MAX_KEY_BYTES;
pub use sqlite::{BackupSummary, SqliteStore};

/// The tenant created on a data directory's first start.
pub const DEFAULT_TENANT: &str = "default";

/// Store failures. The server maps [`StoreError::Unavailable`] to `503 unavailable` and
/// everything else to a generic `500`, so the text of these errors never reaches a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or stayed busy past its timeout; retrying later may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A pull cursor lies beyond every change this store has written: it came from another
    /// server or from before the data was reset. The device should pull from the start.
    #[error("the cursor is ahead of every change in this store")]
    CursorAhead,
    /// A tenant named in the call does not exist.
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    /// The store's configuration cannot work (say, a malformed database URL).
    #[error("the store's configuration is not valid: {0}")]
    Config(String),
    /// Any other failure (a bug, a corrupt file, a failed migration).
    #[error("the store failed: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What an operator token may do. Roles are ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read, trigger and pin sync jobs.
    Operator,
    /// Everything, including devices and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One device of one tenant: what a device token acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    pub tenant: String,
    pub device_id: String,
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Device(DeviceKey),
    Operator { tenant: String, role: Role },
}

impl Principal {
    /// The principal of a stored token: a device token names its device, an operator token
    /// its role. Both stores keep tokens this way.
    pub(crate) fn of_token(
        tenant: String,
        device_id: Option<String>,
        role: Option<&str>,
    ) -> Result<Principal> {
        match (device_id, role.and_then(Role::parse)) {
            (Some(device_id), _) => Ok(Principal::Device(DeviceKey { tenant, device_id })),
            (None, Some(role)) => Ok(Principal::Operator { tenant, role }),
            (None, None) => Err(StoreError::Internal(
                "a token has neither a device nor a known role".into(),
            )),
        }
    }

    /// The tenant every query made for this principal is scoped to.
    pub fn tenant(&self) -> &str {
        match self {
            Principal::Device(device) => &device.tenant,
            Principal::Operator { tenant, .. } => tenant,
        }
    }
}

/// One push request, already authenticated and checked against the schema hash.
#[derive(Debug, Clone)]
pub struct PushBatch {
    /// The server's synced schema; every change is validated against it.
    pub schema: Arc<Schema>,
    pub changes: Vec<RowChange>,
    /// Dirty rows still waiting on the device after this batch.
    pub pending: u64,
    /// The server time of this request, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Versions further ahead of `now_ms` than this are rejected with `clock_skew`.
    pub max_clock_skew: Duration,
}

/// How much one pull page may hold: at most `rows` changes and at most `bytes` of their JSON.
/// How a store's connection pool is used at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections the pool may open.
    pub max: usize,
    /// Connections open now, busy or idle.
    pub open: usize,
    /// Open connections idle now.
    pub idle: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

/// A change larger than `bytes` on its own still makes a page by itself, so no row is ever
/// stuck behind the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub rows: u32,
    pub bytes: usize,
}

impl PageLimit {
    /// 8 MiB of change JSON: a 10,000-row page of typical rows (a few hundred bytes each) fits,
    /// while ten rows of 25 MB make ten pages rather than one answer of 250 MB.
    pub const DEFAULT_BYTES: usize = 8 * 1024 * 1024;

    /// At most `rows` changes, however many bytes they take.
    pub fn rows(rows: u32) -> PageLimit {
        PageLimit {
            rows,
            bytes: usize::MAX,
        }
    }

    /// Whether a page that holds `count` changes of `bytes` bytes has room for one more of
    /// `next` bytes.
    pub fn has_room(&self, count: usize, bytes: usize, next: usize) -> bool {
        count < self.rows as usize && (count == 0 || bytes.saturating_add(next) <= self.bytes)
    }
}

/// One page of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPage {
    /// The page's row changes as a JSON array text (`[{...},{...}]`), concatenated from the
    /// stored pre-serialized changes so that a pull never rebuilds rows.
    pub changes_json: String,
    /// How many changes `changes_json` holds.
    pub count: usize,
    /// Where the next pull starts.
    pub cursor: Cursor,
    /// Whether more changes follow the cursor right now.
    pub has_more: bool,
}

/// One tenant of the store, as `ferry tenant list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: String,
    /// When it was created, as the contract writes timestamps.
    pub created_at: String,
    /// Its devices that may sync: paired and not revoked.
    pub devices: u64,
    /// Its revoked devices, which are kept for their history.
    pub revoked_devices: u64,
}

/// Which part of the conflict log to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictQuery {
    /// Only conflicts of this table.
    pub table: Option<String>,
    /// Only conflicts of this row, as canonical key text ([`ferry_core::Table::key_of`]); only
    /// meaningful together with `table`.
    pub pk_key: Option<String>,
    /// At most this many conflicts, newest first.
    pub limit: u32,
}

/// The values of the stored change `change` (the winning version's row), if any.
pub(crate) fn winner_data(change: Option<&str>) -> Result<Option<ferry_proto::Row>> {
    let Some(change) = change else {
        return Ok(None);
    };
    let change: ferry_proto::RowChange = serde_json::from_str(change)
        .map_err(|e| StoreError::Internal(format!("a stored change is not valid JSON: {e}")))?;
    Ok(change.data)
}

/// Everything the server needs from its store. Every method is scoped by tenant where data
/// belongs to one, and no method exposes a backend type.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the store answers (for `GET /api/sync/health`).
    async fn ping(&self) -> Result<()>;

    /// Creates a tenant; `false` when it already existed.
    async fn create_tenant(&self, tenant: &str) -> Result<bool>;

    /// Every tenant with its device counts, oldest first.
    async fn list_tenants(&self) -> Result<Vec<TenantInfo>>;

    /// Creates an operator token and returns its text; only its hash is kept.
    async fn create_operator_token(
        &self,
        tenant: &str,
        role: Role,
        expires_at_ms: Option<i64>,
    ) -> Result<String>;

    /// The principal of a token, or `None` for an unknown, revoked or expired token (or a
    /// device token whose device was revoked).
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>>;

    /// Revokes a token by its text; `false` when no live token had that text.
    async fn revoke_token(&self, token: &str) -> Result<bool>;

    /// Creates a one-time pairing code for `tenant` that expires after `ttl`.
    async fn create_pairing_code(&self, tenant: &str, ttl: Duration) -> Result<PairingCode>;

    /// The tenant `code` would pair a device into, while it is unknown to no one: unused and
    /// unexpired. Does not spend it: a device checks that it can take the server's schema
    /// before it redeems the code, so a pairing that fails on the device leaves the code for
    /// another try.
    async fn pairing_code_tenant(&self, code: &str) -> Result<Option<String>>;

    /// Redeems a pairing code: creates the device and its token. `None` when the code is
    /// unknown, used or expired. Atomic: one code pairs at most one device, even concurrently.
    async fn redeem_pairing_code(
        &self,
        code: &str,
        name: &str,
        platform: Option<&str>,
    ) -> Result<Option<PairResponse>>;

    /// Records that the device was seen now, and its client software version when known.
    async fn check_in(&self, device: &DeviceKey, client_version: Option<&str>) -> Result<()>;

    /// [`Store::authenticate`], and for a device token [`Store::check_in`] as well: what every
    /// request does first. PostgreSQL does both in one statement.
    async fn authenticate_and_check_in(
        &self,
        token: &str,
        client_version: Option<&str>,
    ) -> Result<Option<Principal>> {
        let principal = self.authenticate(token).await?;
        if let Some(Principal::Device(device)) = &principal {
            self.check_in(device, client_version).await?;
        }
        Ok(principal)
    }

    /// The tenant's devices, oldest first, revoked ones included.
    async fn list_devices(&self, tenant: &str) -> Result<Vec<DeviceInfo>>;

    /// Revokes a device and its tokens; `false` when the tenant has no such device.
    async fn revoke_device(&self, tenant: &str, device_id: &str) -> Result<bool>;

    /// Applies a batch atomically and returns one result per change, in request order. Also
    /// records the push (last push time, pending count) on the device.
    async fn push(&self, device: &DeviceKey, batch: PushBatch) -> Result<Vec<PushResult>>;

    /// The tenant's changes after `since`, in commit order, as many as `limit` allows (rows
    /// and bytes; at least one change when any follow). Records the pull on the device.
    ///
    /// A pull that began at [`Cursor::START`] (no `since`) is a snapshot: its pages, those
    /// reached with the cursors it hands out included, hold the device's own rows too. An
    /// incremental pull leaves out rows whose latest write came from `device` itself, though
    /// its cursor passes them. The cursor of the last page (`has_more: false`) is always
    /// incremental, so the device's next cycles are; see [`cursor`].
    async fn pull(&self, device: &DeviceKey, since: Cursor, limit: PageLimit) -> Result<PullPage>;

    /// The sequence number of the tenant's newest change: a pull from
    /// `Cursor::from_seq(seq)` finds nothing newer. What a device's change stream says after
    /// it may have missed events.
    async fn last_change(&self, tenant: &str) -> Result<u64>;

    /// The tenant's conflict log, newest first.
    async fn conflicts(&self, tenant: &str, query: ConflictQuery) -> Result<Vec<Conflict>>;

    /// The DDL of the schema the server was last started with.
    async fn schema_ddl(&self) -> Result<Option<String>>;

    /// Remembers the DDL of the schema the server runs with.
    async fn set_schema_ddl(&self, ddl: &str) -> Result<()>;

    /// The connection pool's use now, for `/metrics`; `None` for a store without one (SQLite
    /// runs on one writer and a few readers in-process).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Subscribes to what changes in the store from now on: runs, jobs' states, devices
    /// (see [`events`]). On PostgreSQL the first subscriber of a process opens the `LISTEN`
    /// connection, so this fails with [`StoreError::Unavailable`] when the database cannot be
    /// reached.
    async fn events(&self) -> Result<StoreEvents>;
}
