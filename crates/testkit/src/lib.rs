//! Fixtures for Ferry's tests and benchmarks: a server on a real socket with its own temporary
//! data directory, and paired devices whose app databases are real SQLite files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_client::{Client, ClientOptions, Progress};
use ferry_proto::local::{CycleReport, CycleTrigger};
use ferry_store::Store;
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "browser")]
pub mod browser;
pub mod faults;
pub mod pos;
pub mod store;

pub use store::{Backend, TestDatabase, TestStore, waiting_on_locks};

/// A change a test makes to a server's configuration.
type Configure = Arc<dyn Fn(&mut ferry_server::Config) + Send + Sync>;

/// A Ferry server on 127.0.0.1 with a port of its own, stopped when dropped.
pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    /// The admin token printed on first start.
    pub admin_token: String,
    pub store: Arc<dyn Store>,
    /// Where the server keeps its data; removed when the server is dropped.
    pub storage: TestStore,
    /// What the test changed in the server's configuration; a restart keeps it.
    configure: Configure,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    http: reqwest::Client,
}

impl TestServer {
    /// A server on SQLite with the built-in point-of-sale schema.
    pub async fn start() -> TestServer {
        Self::start_on(Backend::Sqlite, None).await
    }

    /// A server on SQLite with the given DDL as its schema.
    pub async fn start_with_schema(ddl: &str) -> TestServer {
        Self::start_on(Backend::Sqlite, Some(ddl)).await
    }

    /// A server on `backend`, with the given DDL as its schema or the built-in one.
    pub async fn start_on(backend: Backend, ddl: Option<&str>) -> TestServer {
        Self::start_in(TestStore::new(backend).await, ddl).await
    }

    /// A server on SQLite with the built-in schema, its configuration (`ferry serve`'s flags)
    /// changed by `configure`: smaller limits, say.
    pub async fn start_configured(
        configure: impl Fn(&mut ferry_server::Config) + Send + Sync + 'static,
    ) -> TestServer {
        let storage = TestStore::new(Backend::Sqlite).await;
        Self::start_in_configured(storage, None, Arc::new(configure)).await
    }

    /// A server on a store made by the caller.
    pub async fn start_in(storage: TestStore, ddl: Option<&str>) -> TestServer {
        Self::start_in_configured(storage, ddl, Arc::new(|_| {})).await
    }

    async fn start_in_configured(
        storage: TestStore,
        ddl: Option<&str>,
        configure: Configure,
    ) -> TestServer {
        let opened = ferry_server::init::open(&storage.location, ddl)
            .await
            .expect("the store opens");
        let admin_token = opened
            .admin_token
            .clone()
            .expect("a new store gets an admin token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let (store, task) = serve(opened, listener, &configure, shutdown.clone());
        TestServer {
            url: format!("http://{addr}"),
            addr,
            admin_token,
            store,
            storage,
            configure,
            shutdown,
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    /// Stops the server gracefully, as [`TestServer::stop`] does, and starts it again on the
    /// same store and address, as a restarted process would: it opens the store anew (running
    /// its migrations, reading its schema) and keeps its URL and admin token.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
        let opened = ferry_server::init::open(&self.storage.location, None)
            .await
            .expect("the store opens again");
        // The old socket is closed; the address is free again (tokio sets SO_REUSEADDR).
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the server's address again");
        self.shutdown = CancellationToken::new();
        let (store, task) = serve(opened, listener, &self.configure, self.shutdown.clone());
        self.store = store;
        self.task = Some(task);
    }

    /// A fresh one-time pairing code for the default tenant.
    pub async fn pairing_code(&self) -> String {
        let ttl = std::time::Duration::from_secs(900);
        ferry_server::init::create_pairing_code(&self.store, ferry_store::DEFAULT_TENANT, ttl)
            .await
            .expect("pairing code")
            .code
    }

    /// Pairs a new device whose app database is a new SQLite file.
    pub async fn pair_device(&self, name: &str) -> TestDevice {
        self.pair_device_with(name, ClientOptions::default()).await
    }

    pub async fn pair_device_with(&self, name: &str, options: ClientOptions) -> TestDevice {
        self.pair_device_via(&self.url, name, options).await
    }

    /// Pairs a new device that reaches this server at `url` (a proxy in front of it, say).
    pub async fn pair_device_via(
        &self,
        url: &str,
        name: &str,
        options: ClientOptions,
    ) -> TestDevice {
        let dir = tempfile::tempdir().expect("temporary device directory");
        let db_path = dir.path().join("app.sqlite");
        let code = self.pairing_code().await;
        let paired = ferry_client::pair(url, &code, &db_path, name, "test", options.clone())
            .await
            .expect("device pairs");
        let client = Client::open(&db_path, options).expect("paired device opens");
        TestDevice {
            dir,
            db_path,
            client,
            device_id: paired.device_id,
        }
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, body)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

/// Serves an opened store on `listener` until `shutdown`; returns the store and the task.
fn serve(
    opened: ferry_server::init::Opened,
    listener: tokio::net::TcpListener,
    configure: &Configure,
    shutdown: CancellationToken,
) -> (Arc<dyn Store>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let store = opened.store.clone();
    let mut config = ferry_server::Config::new(opened.schema);
    configure(&mut config);
    let state = ferry_server::AppState::new(opened.store, config);
    let task = tokio::spawn(ferry_server::serve(listener, state, shutdown));
    (store, task)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A paired device: its app database and a client for it.
pub struct TestDevice {
    pub dir: TempDir,
    pub db_path: PathBuf,
    pub client: Client,
    pub device_id: String,
}

impl TestDevice {
    /// A plain connection to the app database, as the app itself would open it.
    pub fn app(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.db_path).expect("app database opens");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// Opens the device again from its files with a new client, as a restarted agent process
    /// would; the old client is dropped (work it had handed to SQLite finishes on its own).
    pub fn reopen(&mut self, options: ClientOptions) {
        self.client = Client::open(&self.db_path, options).expect("paired device opens again");
    }

    /// Runs one forced cycle and returns its report.
    pub async fn sync(&self) -> CycleReport {
        self.client.sync(CycleTrigger::Manual, &no_progress).await
    }

    /// Runs one forced cycle and fails the test unless it succeeded.
    pub async fn sync_ok(&self) -> CycleReport {
        let report = self.sync().await;
        assert!(report.ok, "cycle failed: {report:?}");
        report
    }

    /// Rows of a table, as the app sees them.
    pub fn count(&self, table: &str) -> i64 {
        self.app()
            .query_row(
                &format!("SELECT count(*) FROM {}", ferry_schema::quote_ident(table)),
                [],
                |r| r.get(0),
            )
            .expect("count")
    }

    /// Dirty rows of a table.
    pub fn dirty(&self, table: &str) -> i64 {
        self.app()
            .query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE _isDirty = 1",
                    ferry_schema::quote_ident(table)
                ),
                [],
                |r| r.get(0),
            )
            .expect("count dirty")
    }
}

/// Checks `condition` until it holds, a few milliseconds apart, failing after 20 s. For
/// states that have no notification to wait on (a run recorded by a worker, a lock wait in
/// the database).
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A progress callback that shows nothing.
pub fn no_progress(_: Progress) {}
