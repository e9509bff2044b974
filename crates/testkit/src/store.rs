//! Stores for tests: a temporary data directory, or a uniquely named PostgreSQL database that
//! is dropped afterwards.
//!
//! Suites that must hold on both stores run twice: once as their own test binary and once
//! through a second binary whose name ends in `_postgres` (a two-line file that includes the
//! same modules). [`Backend::of_binary`] tells the two apart by `env!("CARGO_CRATE_NAME")`.

use std::sync::atomic::{AtomicU32, Ordering};

use ferry_server::init::StoreLocation;
use ferry_store::PgOptions;
use tempfile::TempDir;

/// The PostgreSQL server tests use; `FERRY_TEST_DATABASE_URL` overrides it. Tests create
/// their own databases on it and drop them.
pub const DEFAULT_TEST_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a test binary: PostgreSQL when its crate name ends in `_postgres`.
    pub fn of_binary(crate_name: &str) -> Backend {
        if crate_name.ends_with("_postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// A store location that is removed when dropped.
pub struct TestStore {
    pub location: StoreLocation,
    /// The data directory (also created for PostgreSQL, for files such as app databases).
    pub dir: TempDir,
    /// The database, on PostgreSQL.
    pub database: Option<TestDatabase>,
}

impl TestStore {
    pub async fn new(backend: Backend) -> TestStore {
        Self::with_options(backend, PgOptions::default()).await
    }

    /// On PostgreSQL, with these pool and timeout options.
    pub async fn with_options(backend: Backend, options: PgOptions) -> TestStore {
        let dir = tempfile::tempdir().expect("temporary data directory");
        match backend {
            Backend::Sqlite => TestStore {
                location: StoreLocation::DataDir(dir.path().join("data")),
                dir,
                database: None,
            },
            Backend::Postgres => {
                let database = TestDatabase::create().await;
                TestStore {
                    location: StoreLocation::Postgres {
                        url: database.url.clone(),
                        options,
                    },
                    dir,
                    database: Some(database),
                }
            }
        }
    }
}

/// A new, empty PostgreSQL database with a unique name, dropped (with its connections) when
/// this value is dropped.
pub struct TestDatabase {
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    server: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server =
            std::env::var("FERRY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_SERVER.into());
        // Unique across test binaries running at once and across runs that left databases.
        let name = format!(
            "ferry_test_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let admin = connect(&server).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        TestDatabase {
            url: url_of(&server, &name),
            name,
            server,
        }
    }

    /// A plain connection to the database, for a test to look at or to hold locks.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Waits until `n` of Ferry's connections to the database wait on a lock.
    pub async fn lock_waiters(&self, n: i64) {
        let client = self.connect().await;
        crate::wait_for(&format!("{n} connections waiting on a lock"), || async {
            waiting_on_locks(&client).await >= n
        })
        .await;
    }
}

/// How many of Ferry's connections to the client's database wait on a lock.
pub async fn waiting_on_locks(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'ferry'
               AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("count the connections waiting on a lock")
        .get(0)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime that cannot block; a thread with its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                let admin = connect(&server).await;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL server at {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// `server` with its database name replaced by `name`.
fn url_of(server: &str, name: &str) -> String {
    match server.rsplit_once('/') {
        Some((base, last)) if !base.ends_with('/') => {
            // Keep any query string (options, sslmode) of the server URL.
            let query = last
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{name}{query}")
        }
        _ => format!("{}/{name}", server.trim_end_matches('/')),
    }
}
