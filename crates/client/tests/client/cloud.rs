//! "Force pull from cloud" against a real server on a real socket (issue 13): afterwards the
//! device holds the cloud's view, its own rows included.

use ferry_client::{Client, ClientOptions, ConflictReason};
use ferry_testkit::pos::{insert_product, price, set_price};
use ferry_testkit::{TestDevice, TestServer, no_progress};

/// Small pages, so a snapshot takes several and its later pages are fetched with the cursors
/// the server hands out.
fn options() -> ClientOptions {
    ClientOptions {
        pull_limit: 2,
        ..ClientOptions::default()
    }
}

/// Every product as `(id, name, price_cents, version, dirty)`, by id.
fn products(device: &TestDevice) -> Vec<(String, String, i64, String, i64)> {
    let app = device.app();
    let mut stmt = app
        .prepare("SELECT id, name, price_cents, _ferryVersion, _isDirty FROM products ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// What the server holds, as a freshly paired device pulls it.
async fn cloud_view(server: &TestServer) -> Vec<(String, String, i64, String, i64)> {
    let observer = server.pair_device_with("Observer", options()).await;
    observer.sync_ok().await;
    products(&observer)
}

async fn force_pull_ok(client: &Client) -> ferry_client::CycleReport {
    let report = client.force_pull(&no_progress).await;
    assert!(report.ok, "force pull failed: {report:?}");
    report
}

/// Guards issue 13: a force pull overwrites a bad local edit of the device's own row with
/// the server's version and keeps the bad value in the local conflict record.
#[tokio::test]
async fn force_pull_replaces_a_dirty_edit_of_an_own_row_and_records_it() {
    let server = TestServer::start().await;
    let device = server.pair_device_with("Till", options()).await;
    let app = device.app();
    for (id, cents) in [("p1", 100), ("p2", 200), ("p3", 300)] {
        insert_product(&app, id, None, "Cola", cents);
    }
    device.sync_ok().await;
    let pushed_version = products(&device)[0].3.clone();

    set_price(&app, "p1", -999);
    assert_eq!(device.dirty("products"), 1);
    let report = force_pull_ok(&device.client).await;

    assert_eq!(price(&app, "p1"), Some(100), "the server's value is back");
    assert_eq!(device.dirty("products"), 0);
    assert_eq!(products(&device), cloud_view(&server).await);
    assert_eq!(report.conflicts, 1, "{report:?}");
    let conflicts = device.client.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let conflict = &conflicts[0];
    assert_eq!(conflict.table, "products");
    assert_eq!(conflict.pk["id"], "p1");
    assert_eq!(conflict.reason, ConflictReason::ForcePull);
    assert_eq!(conflict.remote_version, pushed_version);
    let bad = conflict.local_data.as_ref().expect("the bad row is kept");
    assert_eq!(bad["price_cents"], -999);

    // The next cycles are incremental again: nothing comes back twice.
    let report = device.sync_ok().await;
    assert_eq!((report.pushed, report.pulled), (0, 0), "{report:?}");
}

/// Guards issue 13: a device file restored from a backup gets back, through a force pull,
/// the rows it pushed after the backup was taken.
#[tokio::test]
async fn a_file_restored_from_a_backup_gets_its_later_rows_back_by_force_pull() {
    let server = TestServer::start().await;
    let device = server.pair_device_with("Till", options()).await;
    let other = server.pair_device_with("Tablet", options()).await;
    let app = device.app();
    insert_product(&app, "p1", None, "Cola", 100);
    device.sync_ok().await;
    // At the backup, an edit waits to be pushed.
    set_price(&app, "p1", 150);
    let backup = device.dir.path().join("backup.sqlite");
    app.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    drop(app);

    // After the backup: the edit and new rows are pushed, another device adds one too.
    for (id, cents) in [("p2", 200), ("p3", 300), ("p4", 400)] {
        insert_product(&device.app(), id, None, "Water", cents);
    }
    device.sync_ok().await;
    insert_product(&other.app(), "t1", None, "Tea", 500);
    other.sync_ok().await;

    // The file is restored from the backup.
    let TestDevice {
        dir,
        db_path,
        client,
        device_id: _,
    } = device;
    drop(client);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    std::fs::copy(&backup, &db_path).unwrap();
    let client = Client::open(&db_path, options()).unwrap();
    let device = TestDevice {
        dir,
        db_path,
        client,
        device_id: String::new(),
    };
    assert_eq!(device.count("products"), 1, "the backup has p1 only");
    assert_eq!(device.dirty("products"), 1, "and its edit, unpushed");

    force_pull_ok(&device.client).await;
    assert_eq!(products(&device), cloud_view(&server).await);
    assert_eq!(device.count("products"), 5);
    assert_eq!(device.dirty("products"), 0);
    // The edit the backup held was the very write the server has: nothing was lost.
    assert!(
        device.client.conflicts().unwrap().is_empty(),
        "{:?}",
        device.client.conflicts().unwrap()
    );
}
