//! Pushes larger than the server takes in one request, against the real server: batches
//! bounded by bytes under its default limits, split when a server with smaller limits refuses
//! them, and a row too large even alone reported while everything else syncs.

use ferry_client::ClientOptions;
use ferry_testkit::pos::{insert_category, insert_product};
use ferry_testkit::{TestDevice, TestServer};

const KIB: usize = 1024;

/// Every product as `(id, name length)`, by id.
fn products(device: &TestDevice) -> Vec<(String, usize)> {
    let app = device.app();
    let mut stmt = app
        .prepare("SELECT id, length(name) FROM products ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Products `prefix-000`... of `size` bytes of name each.
fn insert_products(device: &TestDevice, prefix: &str, count: usize, size: usize) {
    let mut app = device.app();
    let tx = app.transaction().unwrap();
    let name = "n".repeat(size);
    for i in 0..count {
        insert_product(&tx, &format!("{prefix}-{i:03}"), None, &name, 1);
    }
    tx.commit().unwrap();
}

/// Regression: a batch of 180 rows of 100 KiB (18 MB, within the 1,000 rows of a batch) went
/// over the server's 16 MiB body limit, and the device was refused with 413 on every cycle.
#[tokio::test]
async fn many_large_rows_push_in_batches_within_the_default_limits() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    insert_products(&a, "p", 180, 100 * KIB);

    let report = a.sync_ok().await;
    assert_eq!((report.pushed, report.rejected), (180, 0), "{report:?}");
    assert_eq!(a.dirty("products"), 0);
    let b = server.pair_device("B").await;
    assert_eq!(b.sync_ok().await.pulled, 180);
    assert_eq!(products(&b), products(&a));
}

/// A server whose body limit (`--max-body`) is far below the client's batches refuses them;
/// the client splits them, rows that reference each other staying together, and everything
/// arrives in one cycle.
#[tokio::test]
async fn a_server_with_a_small_body_limit_gets_everything_in_pieces() {
    let server = TestServer::start_configured(|c| c.body_limit_bytes = 64 * KIB).await;
    let a = server.pair_device("A").await;
    insert_products(&a, "p", 100, 2 * KIB);
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    // Three categories in a loop, 10 KiB each: one group.
    let name = "c".repeat(10 * KIB);
    for (id, parent) in [("x", "y"), ("y", "z"), ("z", "x")] {
        insert_category(&app, id, &name, Some(parent));
    }

    let report = a.sync_ok().await;
    assert_eq!((report.pushed, report.rejected), (103, 0), "{report:?}");
    assert_eq!(a.dirty("products") + a.dirty("categories"), 0);
    let b = server.pair_device("B").await;
    assert_eq!(b.sync_ok().await.pulled, 103);
    assert_eq!(products(&b), products(&a));
}

/// The same for a server that takes fewer changes per push than the client's batches hold
/// (`--max-push-changes`), but for rows that must go together and are more than it takes:
/// those are reported and stay dirty, named with the limit.
#[tokio::test]
async fn a_server_that_takes_few_changes_per_push_gets_them_in_pieces() {
    let server = TestServer::start_configured(|c| c.max_push_changes = 7).await;
    let a = server.pair_device("A").await;
    insert_products(&a, "p", 30, 10);
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    // Eight categories in a loop: a group larger than the server takes.
    for i in 0..8 {
        let parent = format!("loop-{}", (i + 1) % 8);
        insert_category(&app, &format!("loop-{i}"), "Loop", Some(&parent));
    }

    let report = a.sync().await;
    assert_eq!((report.pushed, report.rejected), (30, 8), "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.contains(r#"categories {"id":"loop-0"} and the 7 other row(s)"#)
            && error.contains("limit of 7 changes per push request"),
        "{error}"
    );
    assert_eq!((a.dirty("products"), a.dirty("categories")), (0, 8));
}

/// A row larger than the server takes even alone: the cycle reports it, naming the row and
/// the limit, and it stays dirty, while every other row syncs; the next cycle tries it once
/// more, and nothing else.
#[tokio::test]
async fn a_row_too_large_for_the_server_is_reported_and_the_others_sync() {
    let server = TestServer::start_configured(|c| c.body_limit_bytes = 64 * KIB).await;
    let options = ClientOptions {
        push_batch: 8,
        ..ClientOptions::default()
    };
    let a = server.pair_device_with("A", options).await;
    insert_products(&a, "early", 10, 100);
    insert_product(&a.app(), "huge", None, &"h".repeat(100 * KIB), 1);
    insert_products(&a, "late", 10, 100);

    let report = a.sync().await;
    assert!(!report.ok, "{report:?}");
    assert_eq!((report.pushed, report.rejected), (20, 1), "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.contains(r#"products {"id":"huge"}: payload_too_large"#)
            && error.contains("limit of 65536 bytes per push request"),
        "{error}"
    );
    assert_eq!(a.client.log(1).unwrap()[0], report);
    assert_eq!(a.dirty("products"), 1);
    assert_eq!(a.client.pending().unwrap(), 1);

    let b = server.pair_device("B").await;
    assert_eq!(b.sync_ok().await.pulled, 20);
    assert!(products(&b).iter().all(|(id, _)| id != "huge"));

    let again = a.sync().await;
    assert_eq!((again.pushed, again.rejected), (0, 1), "{again:?}");
    assert_eq!(again.error, report.error);
}
