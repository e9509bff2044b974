//! The PostgreSQL backend, for deployments that outgrow one SQLite file and run several server
//! instances on one database.
//!
//! Every table lives in the `ferry` schema, so Ferry can share a database with other
//! applications. Connections come from a pool and start with `search_path` and
//! `statement_timeout` set in their startup packet, which costs no round trip. Every method
//! is one transaction (or one autocommitted statement); nothing is cached in the process, so
//! any number of instances on one database behave as one server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use ferry_core::time::{format_ms, ms_of, now_ms};
use ferry_proto::{Conflict, DeviceInfo, PairResponse, PairingCode, PushResult};
use tokio_postgres::NoTls;

use crate::{
    ConflictQuery, Cursor, DeviceKey, PageLimit, Principal, PullPage, PushBatch, Result, Role,
    Store, StoreError, TenantInfo,
};

mod access;
mod billing;
mod conflicts;
mod events;
mod import;
mod jobs;
mod migrations;
mod pull;
mod push;

/// The PostgreSQL schema that holds Ferry's tables.
const SCHEMA: &str = PgStore::SCHEMA;

/// How the PostgreSQL store connects. [`Default`] suits one server instance on a small
/// database; every field is a `ferry serve` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections kept at most (per instance).
    pub pool_size: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long a request waits for a free connection before the store reports itself
    /// unavailable.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every statement; zero means none.
    pub statement_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The PostgreSQL store: a connection pool on one database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How the pool connects, kept so a trigger listener can open its own connection with
    /// the same options.
    config: tokio_postgres::Config,
    /// `host:port/database`, for logs and `Debug`; never the password.
    target: String,
    /// The console events' `LISTEN` connection, shared by the store's clones.
    events: std::sync::Arc<events::Hub>,
}

impl PgStore {
    /// The PostgreSQL schema that holds Ferry's tables.
    pub const SCHEMA: &str = "ferry";

    /// Connects to the database at `url` (a `postgres://` URL or a libpq key-value string)
    /// and runs pending migrations.
    pub async fn connect(url: &str, options: &PgOptions) -> Result<PgStore> {
        let store = PgStore::open(url, options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool without connecting or migrating; connections open on first use.
    pub fn open(url: &str, options: &PgOptions) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("the database URL is not valid: {e}")))?;
        let mut startup = config.get_options().unwrap_or_default().to_owned();
        startup.push_str(&format!(
            // Notices (such as "already exists, skipping") are not worth a log line.
            " -c search_path={SCHEMA} -c statement_timeout={} -c client_min_messages=warning",
            options.statement_timeout.as_millis()
        ));
        config.options(startup.trim_start());
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            // Lets an operator find (or terminate) Ferry's connections in pg_stat_activity.
            config.application_name("ferry");
        }
        let target = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Config(format!("the connection pool cannot be built: {e}")))?;
        Ok(PgStore {
            pool,
            events: std::sync::Arc::new(events::Hub::new(&config)),
            config,
            target,
        })
    }

    /// Runs pending migrations; returns the versions applied (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<usize>> {
        self.with_client(async |client| migrations::run(client).await)
            .await
    }

    /// `host:port/database` of a database URL, without credentials; `None` when the URL is
    /// not valid.
    pub fn target_of(url: &str) -> Option<String> {
        url.parse().ok().map(|config| describe(&config))
    }

    /// `host:port/database` of the store, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes the pool: connections in use close when returned, new requests fail.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }

    /// Runs `work` on a pooled connection. A connection whose work failed with
    /// `503 unavailable` is closed instead of going back to the pool: after
    /// `pg_terminate_backend` its backend sends the error before it closes the socket, so for
    /// a moment the connection still looks open and would fail the next request that got it.
    /// (A statement timeout or a serialization failure also costs its connection; a new one is
    /// made when needed.)
    async fn with_client<T>(&self, work: impl AsyncFnOnce(&mut Object) -> Result<T>) -> Result<T> {
        let mut client = self.client().await?;
        let result = work(&mut client).await;
        if let Err(StoreError::Unavailable(_)) = &result {
            drop(Object::take(client));
        }
        result
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// Milliseconds since the Unix epoch as a `timestamptz` parameter.
fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A `timestamptz` column as the contract's timestamp text.
fn text_of(at: Option<SystemTime>) -> Option<String> {
    at.map(|at| format_ms(ms_of(at)))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        if error.is_closed() {
            return StoreError::Unavailable(error.to_string());
        }
        if let Some(db) = error.as_db_error() {
            let code = db.code().code();
            // Connection exceptions (08), operator intervention such as pg_terminate_backend
            // or a shutting-down server (57P0x), statement timeouts (57014), exhausted
            // resources (53) and serialization failures (40): all pass if retried later.
            let transient = code.starts_with("08")
                || code.starts_with("57P")
                || code == "57014"
                || code.starts_with("53")
                || code.starts_with("40");
            let message = format!("{}: {}", db.code().code(), db.message());
            return if transient {
                StoreError::Unavailable(message)
            } else {
                StoreError::Internal(message)
            };
        }
        let source = std::error::Error::source(&error);
        let io = source.is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
        let message = match source {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        };
        // Connecting failed, or the socket broke mid-request.
        if io || message.contains("timed out") {
            StoreError::Unavailable(message)
        } else {
            StoreError::Internal(message)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> StoreError {
        match error {
            PoolError::Backend(error) => error.into(),
            PoolError::Timeout(_) => StoreError::Unavailable(
                "no database connection became free in time (the pool is exhausted or the \
                 database does not answer)"
                    .into(),
            ),
            PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        self.with_client(async |client| {
            client.simple_query("").await?;
            Ok(())
        })
        .await
    }

    async fn create_tenant(&self, tenant: &str) -> Result<bool> {
        self.with_client(async |client| access::create_tenant(client, tenant, now_ms()).await)
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantInfo>> {
        self.with_client(async |client| access::list_tenants(client).await)
            .await
    }

    async fn create_operator_token(
        &self,
        tenant: &str,
        role: Role,
        expires_at_ms: Option<i64>,
    ) -> Result<String> {
        self.with_client(async |client| {
            access::create_operator_token(client, tenant, role, expires_at_ms, now_ms()).await
        })
        .await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        self.with_client(async |client| access::authenticate(client, token, now_ms()).await)
            .await
    }

    async fn revoke_token(&self, token: &str) -> Result<bool> {
        self.with_client(async |client| access::revoke_token(client, token, now_ms()).await)
            .await
    }

    async fn create_pairing_code(&self, tenant: &str, ttl: Duration) -> Result<PairingCode> {
        self.with_client(async |client| {
            access::create_pairing_code(client, tenant, ttl, now_ms()).await
        })
        .await
    }

    async fn pairing_code_tenant(&self, code: &str) -> Result<Option<String>> {
        self.with_client(async |client| access::pairing_code_tenant(client, code, now_ms()).await)
            .await
    }

    async fn redeem_pairing_code(
        &self,
        code: &str,
        name: &str,
        platform: Option<&str>,
    ) -> Result<Option<PairResponse>> {
        self.with_client(async |client| {
            access::redeem_pairing_code(client, code, name, platform, now_ms()).await
        })
        .await
    }

    async fn check_in(&self, device: &DeviceKey, client_version: Option<&str>) -> Result<()> {
        self.with_client(async |client| {
            access::check_in(client, device, client_version, now_ms()).await
        })
        .await
    }

    async fn authenticate_and_check_in(
        &self,
        token: &str,
        client_version: Option<&str>,
    ) -> Result<Option<Principal>> {
        self.with_client(async |client| {
            access::authenticate_and_check_in(client, token, client_version, now_ms()).await
        })
        .await
    }

    async fn list_devices(&self, tenant: &str) -> Result<Vec<DeviceInfo>> {
        self.with_client(async |client| access::list_devices(client, tenant).await)
            .await
    }

    async fn revoke_device(&self, tenant: &str, device_id: &str) -> Result<bool> {
        self.with_client(async |client| {
            access::revoke_device(client, tenant, device_id, now_ms()).await
        })
        .await
    }

    async fn push(&self, device: &DeviceKey, batch: PushBatch) -> Result<Vec<PushResult>> {
        self.with_client(async |client| push::push(client, device, batch).await)
            .await
    }

    async fn pull(&self, device: &DeviceKey, since: Cursor, limit: PageLimit) -> Result<PullPage> {
        self.with_client(async |client| {
            let page = pull::read_page(client, device, since, limit).await?;
            access::record_pull(client, device, now_ms()).await?;
            Ok(page)
        })
        .await
    }

    fn pool_status(&self) -> Option<crate::PoolStatus> {
        let status = self.pool.status();
        Some(crate::PoolStatus {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        })
    }

    async fn last_change(&self, tenant: &str) -> Result<u64> {
        self.with_client(async |client| {
            let row = client
                .query_opt("SELECT last_seq FROM tenants WHERE id = $1", &[&tenant])
                .await?
                .ok_or_else(|| StoreError::UnknownTenant(tenant.to_owned()))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default())
        })
        .await
    }

    async fn conflicts(&self, tenant: &str, query: ConflictQuery) -> Result<Vec<Conflict>> {
        self.with_client(async |client| conflicts::query(client, tenant, &query).await)
            .await
    }

    async fn schema_ddl(&self) -> Result<Option<String>> {
        self.with_client(async |client| access::schema_ddl(client).await)
            .await
    }

    async fn set_schema_ddl(&self, ddl: &str) -> Result<()> {
        self.with_client(async |client| access::set_schema_ddl(client, ddl).await)
            .await
    }

    async fn events(&self) -> Result<crate::StoreEvents> {
        self.events.subscribe().await
    }
}
