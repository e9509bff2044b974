//! `ferry migrate-store`: a tenant moves from the embedded SQLite store to PostgreSQL, and its
//! devices keep syncing on the same address without pairing again or downloading everything
//! again.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use ferry_server::init::{DATABASE_FILE, StoreLocation};
use ferry_store::{PgOptions, Store};
use ferry_testkit::pos::*;
use ferry_testkit::{Backend, TestDatabase, TestServer, TestStore};
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Runs `ferry migrate-store --from <data> --to <url>`.
async fn migrate_store(data: &Path, url: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("migrate-store")
        .arg("--from")
        .arg(data)
        .args(["--to", url])
        .env_remove("FERRY_DATABASE_URL")
        .output()
        .await
        .expect("ferry runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A SQLite-backed server whose data directory outlives it (in the returned directory), so
/// the data can be moved after the server stops.
async fn sqlite_server() -> (TestServer, TempDir) {
    let kept = tempfile::tempdir().expect("temporary directory");
    let storage = TestStore {
        location: StoreLocation::DataDir(kept.path().join("data")),
        dir: tempfile::tempdir().expect("temporary directory"),
        database: None,
    };
    (TestServer::start_in(storage, None).await, kept)
}

/// A server on PostgreSQL listening on `addr`, the address the devices already use.
struct PgServer {
    url: String,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

impl PgServer {
    async fn start_at(database_url: &str, addr: SocketAddr) -> PgServer {
        let location = StoreLocation::Postgres {
            url: database_url.to_owned(),
            options: PgOptions::default(),
        };
        let opened = ferry_server::init::open(&location, None)
            .await
            .expect("the moved store opens");
        assert!(
            opened.admin_token.is_none(),
            "the moved tenant exists, so no new admin token is made"
        );
        // Binding the old address again works once the SQLite server has stopped listening;
        // tokio sets SO_REUSEADDR, so its closed connections do not hold the port.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the address the devices know");
        let store = opened.store.clone();
        let state =
            ferry_server::AppState::new(opened.store, ferry_server::Config::new(opened.schema));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ferry_server::serve(listener, state, shutdown.clone()));
        PgServer {
            url: format!("http://{addr}"),
            store,
            shutdown,
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let response = self
            .http
            .request(Method::GET, format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request reaches the server");
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        response.json().await.expect("JSON body")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

/// The conflict log without ids, which the move renumbers.
fn without_ids(conflicts: &Value) -> Vec<Value> {
    let mut entries = conflicts.as_array().expect("a conflicts array").clone();
    for entry in &mut entries {
        entry.as_object_mut().expect("an object").remove("id");
    }
    entries
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (status, body) = server
        .request(Method::GET, path, Some(&server.admin_token), None)
        .await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test]
async fn devices_keep_syncing_on_postgres_after_migrate_store_without_pairing_or_a_full_download() {
    let (sqlite, kept) = sqlite_server().await;
    let a = sqlite.pair_device("Desktop A").await;
    let b = sqlite.pair_device("Tablet B").await;
    insert_product(&a.app(), "p1", None, "Cola", 100);
    insert_product(&a.app(), "p2", None, "Water", 120);
    assert_eq!(a.sync_ok().await.pushed, 2);
    insert_product(&b.app(), "p3", None, "Juice", 180);
    // B's first pull is a snapshot: A's two rows and its own p3.
    let report = b.sync_ok().await;
    assert_eq!((report.pushed, report.pulled), (1, 3));
    assert_eq!(a.sync_ok().await.pulled, 1);
    // A conflict: B overwrites A's edit, which is logged. B edits after it pulled A's: its
    // version is later whatever the two clocks read (two edits in one millisecond would
    // otherwise be ordered by their device ids).
    set_price(&a.app(), "p1", 200);
    a.sync_ok().await;
    b.sync_ok().await;
    set_price(&b.app(), "p1", 300);
    b.sync_ok().await;
    a.sync_ok().await;
    assert_eq!(price(&a.app(), "p1"), Some(300));

    let devices_before = get(&sqlite, "/api/admin/devices").await["devices"].clone();
    let conflicts_before = get(&sqlite, "/api/admin/conflicts").await["conflicts"].clone();
    let conflicts = conflicts_before.as_array().unwrap().len();
    assert!(conflicts > 0);
    let (addr, admin_token) = (sqlite.addr, sqlite.admin_token.clone());
    sqlite.stop().await;

    let data = kept.path().join("data");
    let source_before = std::fs::read(data.join(DATABASE_FILE)).unwrap();
    let database = TestDatabase::create().await;
    let output = migrate_store(&data, &database.url).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    let summary =
        format!("Moved tenant default: 3 rows, 2 devices, 3 tokens, {conflicts} conflicts in ");
    assert!(stdout.contains(&summary), "{stdout}");
    assert_eq!(
        std::fs::read(data.join(DATABASE_FILE)).unwrap(),
        source_before,
        "the SQLite store is left as it was"
    );

    let pg = PgServer::start_at(&database.url, addr).await;
    // The admin token moved; devices and their check-in times are as they were.
    assert_eq!(
        pg.get("/api/admin/devices", &admin_token).await["devices"],
        devices_before
    );
    let conflicts_after = pg.get("/api/admin/conflicts", &admin_token).await["conflicts"].clone();
    assert_eq!(
        without_ids(&conflicts_after),
        without_ids(&conflicts_before)
    );
    assert!(
        conflicts_after
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["loser_data"]["price_cents"] == 200),
        "A's losing write is in the log: {conflicts_after}"
    );

    // Same tokens, same cursors: nothing new means nothing pulled.
    let report = a.sync_ok().await;
    assert_eq!((report.pushed, report.pulled), (0, 0), "{report:?}");
    assert_eq!(b.sync_ok().await.pulled, 0);
    // A row pushed on PostgreSQL reaches the other device alone.
    insert_product(&b.app(), "p4", None, "Tea", 90);
    assert_eq!(b.sync_ok().await.pushed, 1);
    let report = a.sync_ok().await;
    assert_eq!(report.pulled, 1, "exactly the new row: {report:?}");
    assert_eq!(a.count("products"), 4);
    set_price(&a.app(), "p2", 130);
    a.sync_ok().await;
    assert_eq!(b.sync_ok().await.pulled, 1);
    assert_eq!(price(&b.app(), "p2"), Some(130));

    // The check-ins continue on PostgreSQL.
    let devices_after = pg.get("/api/admin/devices", &admin_token).await["devices"].clone();
    for (before, after) in devices_before
        .as_array()
        .unwrap()
        .iter()
        .zip(devices_after.as_array().unwrap())
    {
        assert_eq!(before["device_id"], after["device_id"]);
        let seen = |d: &Value| d["last_seen_at"].as_str().unwrap().to_owned();
        assert!(seen(after) > seen(before), "{before} then {after}");
    }

    // A device paired after the move gets the whole tenant.
    let code = ferry_server::init::create_pairing_code(
        &pg.store,
        ferry_store::DEFAULT_TENANT,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap()
    .code;
    let c_dir = tempfile::tempdir().unwrap();
    let c_db = c_dir.path().join("app.sqlite");
    let options = ferry_client::ClientOptions::default();
    ferry_client::pair(&pg.url, &code, &c_db, "Tablet C", "test", options.clone())
        .await
        .expect("a new device pairs on PostgreSQL");
    let c = ferry_client::Client::open(&c_db, options).unwrap();
    let report = c
        .sync(
            ferry_proto::local::CycleTrigger::Manual,
            &ferry_testkit::no_progress,
        )
        .await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.pulled, 4);
    pg.stop().await;
}

/// What a test can see of a tenant in a PostgreSQL store, to show that nothing was written.
async fn pg_state(database: &TestDatabase) -> Vec<String> {
    let client = database.connect().await;
    let mut state = Vec::new();
    for query in [
        "SELECT id || ' ' || created_at || ' ' || last_seq FROM ferry.tenants",
        "SELECT device_id FROM ferry.devices",
        "SELECT hash FROM ferry.tokens",
        "SELECT hash FROM ferry.pairing_codes",
        "SELECT tbl || ' ' || pk_key || ' ' || seq FROM ferry.rows",
        "SELECT tbl || ' ' || pk_key || ' ' || loser_version FROM ferry.conflicts",
        "SELECT key || ' ' || md5(value) FROM ferry.settings",
    ] {
        let mut rows: Vec<String> = client
            .query(query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        state.push(format!("{query}: {rows:?}"));
    }
    state
}

#[tokio::test]
async fn migrate_store_refuses_a_target_that_has_the_tenants_data_or_another_schema_and_writes_nothing()
 {
    let (sqlite, kept) = sqlite_server().await;
    let a = sqlite.pair_device("A").await;
    insert_product(&a.app(), "p1", None, "Cola", 100);
    a.sync_ok().await;
    sqlite.stop().await;
    let data = kept.path().join("data");

    // A PostgreSQL store already in use by the same tenant.
    let used = TestServer::start_on(Backend::Postgres, None).await;
    let x = used.pair_device("X").await;
    insert_product(&x.app(), "q1", None, "Tea", 90);
    x.sync_ok().await;
    used.pairing_code().await;
    let database = used.storage.database.as_ref().unwrap();
    let before = pg_state(database).await;
    let output = migrate_store(&data, &database.url).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("already holds tenant \"default\" with 1 devices, 1 rows"),
        "{stderr}"
    );
    assert_eq!(pg_state(database).await, before, "nothing was written");

    // A store that serves another schema: refused after the tenant's row was claimed, which
    // the failed transaction takes back.
    let other = TestServer::start_in(
        TestStore::new(Backend::Postgres).await,
        Some("CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT);"),
    )
    .await;
    let database = other.storage.database.as_ref().unwrap();
    let before = pg_state(database).await;
    let output = migrate_store(&data, &database.url).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("different schema"), "{stderr}");
    assert_eq!(pg_state(database).await, before, "nothing was written");
}
