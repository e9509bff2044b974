//! Opening a data directory: the store file, the active schema, and on first start the
//! `default` tenant with an admin token.
//!
//! Both `ferry serve` and `ferry pair-code` open the directory this way. The store is SQLite in
//! WAL mode, so the second works while the first is running.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Schema;
use ferry_proto::PairingCode;
use ferry_schema::SchemaError;
use ferry_store::{DEFAULT_TENANT, Role, SqliteStore, Store, StoreError};

/// The store's database file inside the data directory.
pub const DATABASE_FILE: &str = "ferry.sqlite";
/// Where the first start writes the admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// An opened data directory.
pub struct Opened {
    pub store: Arc<dyn Store>,
    /// The schema the server syncs.
    pub schema: Schema,
    /// Its DDL, as given or as stored.
    pub schema_ddl: String,
    /// The admin token, on the directory's first start only: print it once.
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
    #[error("the schema stored in the data directory is not usable any more: {0}")]
    StoredSchema(#[source] SchemaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens (creating if needed) the data directory `dir`.
///
/// The schema is `schema_ddl` when given (and remembered for later starts), else the one the
/// directory was last started with, else the built-in point-of-sale schema. Blocking: call it
/// before serving, or from `spawn_blocking`.
pub fn open_data_dir(dir: &Path, schema_ddl: Option<&str>) -> Result<Opened, InitError> {
    fs::create_dir_all(dir).map_err(|source| InitError::Io {
        action: "create the data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let store = SqliteStore::open(&dir.join(DATABASE_FILE))?;
    let (schema, schema_ddl) = choose_schema(&store, schema_ddl)?;

    let admin_token = if store.create_tenant_blocking(DEFAULT_TENANT)? {
        let token = store.create_operator_token_blocking(DEFAULT_TENANT, Role::Admin, None)?;
        write_secret_file(&dir.join(ADMIN_TOKEN_FILE), &token)?;
        tracing::info!(
            tenant = DEFAULT_TENANT,
            "Created the default tenant and its admin token."
        );
        Some(token)
    } else {
        None
    };
    Ok(Opened {
        store: Arc::new(store),
        schema,
        schema_ddl,
        admin_token,
    })
}

fn choose_schema(store: &SqliteStore, given: Option<&str>) -> Result<(Schema, String), InitError> {
    let stored = store.schema_ddl_blocking()?;
    if let Some(ddl) = given {
        let schema = ferry_schema::parse_ddl(ddl).map_err(InitError::Schema)?;
        if stored.as_deref() != Some(ddl) {
            if stored.is_some() {
                tracing::warn!(
                    "The schema differs from the one this data directory last used; devices \
                     still on the old one get schema_mismatch until they update."
                );
            }
            store.set_schema_ddl_blocking(ddl)?;
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
    store.set_schema_ddl_blocking(ddl)?;
    Ok((schema, ddl.to_owned()))
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
