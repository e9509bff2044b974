//! Opening the server's store: the embedded SQLite file in a data directory or a PostgreSQL
//! database, the active schema, and on first start the `default` tenant with an admin token.
//!
//! `ferry serve`, `ferry pair-code` and `ferry migrate` all open the store this way. Either
//! store may be opened by several processes at once: SQLite in WAL mode, PostgreSQL by design.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Schema;
use ferry_proto::PairingCode;
use ferry_schema::SchemaError;
use ferry_store::{
    BillingStore, DEFAULT_TENANT, JobStore, PgOptions, PgStore, Role, SqliteStore, Store,
    StoreError,
};

/// The store's database file inside the data directory.
pub const DATABASE_FILE: &str = "ferry.sqlite";
/// Where the first start writes the admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Where the server keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite store, in this data directory.
    DataDir(PathBuf),
    /// A PostgreSQL database (migrated on open).
    Postgres { url: String, options: PgOptions },
}

impl StoreLocation {
    /// Where the store is, for people: the data directory, or `host:port/database` (never
    /// the password).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::DataDir(dir) => dir.display().to_string(),
            StoreLocation::Postgres { url, .. } => {
                PgStore::target_of(url).unwrap_or_else(|| "PostgreSQL".to_owned())
            }
        }
    }
}

/// An opened store.
pub struct Opened {
    pub store: Arc<dyn Store>,
    /// The same store's sync job state.
    pub jobs: Arc<dyn JobStore>,
    /// The same store's billing state.
    pub billing: Arc<dyn BillingStore>,
    /// The schema the server syncs.
    pub schema: Schema,
    /// Its DDL, as given or as stored.
    pub schema_ddl: String,
    /// The admin token, on the store's first start only: print it once.
    pub admin_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the schema is not usable: {0}")]
    Schema(#[source] SchemaError),
    #[error("the schema stored in the store is not usable any more: {0}")]
    StoredSchema(#[source] SchemaError),
    #[error(
        "the new schema does not only add to the one this store serves, so devices cannot adopt \
         it by themselves: {0}. Make the change additive (new tables; new columns at the end of \
         a table, nullable or with a default), or serve it with --replace-schema and pair the \
         devices again"
    )]
    SchemaChange(#[source] ferry_schema::NotAdditive),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens (creating and migrating if needed) the store at `location`.
///
/// The schema is `schema_ddl` when given (and remembered for later starts), else the one the
/// store was last started with, else the built-in point-of-sale schema.
pub async fn open(location: &StoreLocation, schema_ddl: Option<&str>) -> Result<Opened, InitError> {
    open_with(location, schema_ddl, SchemaChange::Additive).await
}

/// How a start with a new schema may change the one the store serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaChange {
    /// Only additions, which devices adopt by themselves at their next cycle (see
    /// `ferry_schema::evolve`); anything else is refused with [`InitError::SchemaChange`].
    Additive,
    /// Anything: devices on the old schema get `schema_mismatch` until they are paired again.
    Replace,
}

/// [`open`], with the schema change it allows.
pub async fn open_with(
    location: &StoreLocation,
    schema_ddl: Option<&str>,
    change: SchemaChange,
) -> Result<Opened, InitError> {
    let Migrated {
        store,
        jobs,
        billing,
        ..
    } = open_migrated(location).await?;
    let (schema, schema_ddl) = choose_schema(store.as_ref(), schema_ddl, change).await?;
    let admin_token = if store.create_tenant(DEFAULT_TENANT).await? {
        let token = store
            .create_operator_token(DEFAULT_TENANT, Role::Admin, None)
            .await?;
        if let StoreLocation::DataDir(dir) = location {
            write_secret_file(&dir.join(ADMIN_TOKEN_FILE), &token)?;
        }
        tracing::info!(
            tenant = DEFAULT_TENANT,
            "Created the default tenant and its admin token."
        );
        Some(token)
    } else {
        None
    };
    Ok(Opened {
        store,
        jobs,
        billing,
        schema,
        schema_ddl,
        admin_token,
    })
}

/// Opens the store alone: migrated, but without choosing a schema or creating a tenant.
pub async fn open_store(location: &StoreLocation) -> Result<Arc<dyn Store>, InitError> {
    Ok(open_migrated(location).await?.store)
}

/// Opens the store's sync job state alone (for `ferry worker` and `ferry token`).
pub async fn open_jobs(location: &StoreLocation) -> Result<Arc<dyn JobStore>, InitError> {
    Ok(open_migrated(location).await?.jobs)
}

/// Opens the store's sync job and billing state on one connection pool (for `ferry worker`),
/// without choosing a schema or creating a tenant.
pub async fn open_worker(
    location: &StoreLocation,
) -> Result<(Arc<dyn JobStore>, Arc<dyn BillingStore>), InitError> {
    let migrated = open_migrated(location).await?;
    Ok((migrated.jobs, migrated.billing))
}

/// Opens the store's billing state alone (for the billing job and its tools).
pub async fn open_billing(location: &StoreLocation) -> Result<Arc<dyn BillingStore>, InitError> {
    Ok(open_migrated(location).await?.billing)
}

/// Runs the store's pending migrations (what every open does first); returns the versions
/// applied, empty when the store was up to date.
pub async fn migrate(location: &StoreLocation) -> Result<Vec<usize>, InitError> {
    Ok(open_migrated(location).await?.applied)
}

/// One opened backend behind each of its interfaces.
struct Migrated {
    store: Arc<dyn Store>,
    jobs: Arc<dyn JobStore>,
    billing: Arc<dyn BillingStore>,
    applied: Vec<usize>,
}

async fn open_migrated(location: &StoreLocation) -> Result<Migrated, InitError> {
    match location {
        StoreLocation::DataDir(dir) => {
            let dir = dir.clone();
            let (store, applied) = tokio::task::spawn_blocking(move || open_sqlite(&dir))
                .await
                .map_err(|e| StoreError::Internal(format!("opening the store failed: {e}")))??;
            let store = Arc::new(store);
            Ok(Migrated {
                store: store.clone(),
                jobs: store.clone(),
                billing: store,
                applied,
            })
        }
        StoreLocation::Postgres { url, options } => {
            let store = PgStore::open(url, options)?;
            let applied = store.migrate().await?;
            let store = Arc::new(store);
            Ok(Migrated {
                store: store.clone(),
                jobs: store.clone(),
                billing: store,
                applied,
            })
        }
    }
}

fn open_sqlite(dir: &Path) -> Result<(SqliteStore, Vec<usize>), InitError> {
    fs::create_dir_all(dir).map_err(|source| InitError::Io {
        action: "create the data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(SqliteStore::open_migrated(&dir.join(DATABASE_FILE))?)
}

async fn choose_schema(
    store: &dyn Store,
    given: Option<&str>,
    change: SchemaChange,
) -> Result<(Schema, String), InitError> {
    let stored = store.schema_ddl().await?;
    if let Some(ddl) = given {
        let schema = ferry_schema::parse_ddl(ddl).map_err(InitError::Schema)?;
        if stored.as_deref() != Some(ddl) {
            if let Some(stored) = &stored {
                let before = ferry_schema::parse_ddl(stored).map_err(InitError::StoredSchema)?;
                announce_change(&before, &schema, change)?;
            }
            store.set_schema_ddl(ddl).await?;
        }
        return Ok((schema, ddl.to_owned()));
    }
    if let Some(ddl) = stored {
        let schema = ferry_schema::parse_ddl(&ddl).map_err(InitError::StoredSchema)?;
        return Ok((schema, ddl));
    }
    let ddl = ferry_schema::POINT_OF_SALE;
    let schema = ferry_schema::parse_ddl(ddl).map_err(InitError::Schema)?;
    // Remembered so that a later start keeps this schema even if the built-in one changes.
    store.set_schema_ddl(ddl).await?;
    Ok((schema, ddl.to_owned()))
}

/// Says what a new schema changes, or refuses a change devices cannot follow (unless it is to
/// replace the schema).
fn announce_change(before: &Schema, after: &Schema, change: SchemaChange) -> Result<(), InitError> {
    match (ferry_schema::additions(before, after), change) {
        (Ok(added), _) if added.is_empty() => {}
        (Ok(added), _) => tracing::info!(
            %added,
            "The schema grows: devices adopt the additions at their next cycle, keeping their \
             pending changes."
        ),
        (Err(reasons), SchemaChange::Replace) => tracing::warn!(
            %reasons,
            "The schema is replaced: devices still on the old one get schema_mismatch until \
             they are paired again."
        ),
        (Err(reasons), SchemaChange::Additive) => return Err(InitError::SchemaChange(reasons)),
    }
    Ok(())
}

/// Writes a secret readable by the owner only.
fn write_secret_file(path: &Path, secret: &str) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // `mode` applies only when the file is created; tighten an existing one too.
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(io)?;
    Ok(())
}

/// A one-time pairing code for `tenant`, valid for `ttl` (the contract's default is 15 min).
/// For `ferry pair-code`, which opens the data directory itself.
pub async fn create_pairing_code(
    store: &Arc<dyn Store>,
    tenant: &str,
    ttl: Duration,
) -> Result<PairingCode, StoreError> {
    store.create_pairing_code(tenant, ttl).await
}
