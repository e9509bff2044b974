//! Devices syncing through a real server: convergence, conflicts, foreign-key order, schema
//! mismatch.

use ferry_client::ClientOptions;
use ferry_testkit::pos::*;
use ferry_testkit::{TestDevice, TestServer};
use reqwest::Method;
use serde_json::json;

/// Every synced table's rows with their versions, as comparable text.
fn snapshot(device: &TestDevice) -> Vec<String> {
    let app = device.app();
    let mut out = Vec::new();
    for table in ["categories", "products", "customers", "sales", "sale_items"] {
        let mut stmt = app
            .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
            .unwrap();
        let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut line = format!("{table}:");
            for (i, name) in names.iter().enumerate() {
                if name == "_lastSyncedAt" || name == "_isDirty" {
                    continue;
                }
                let value: rusqlite::types::Value = row.get(i).unwrap();
                line.push_str(&format!(" {name}={value:?}"));
            }
            out.push(line);
        }
    }
    out
}

fn seed_shop(app: &rusqlite::Connection) {
    // An app that does not enforce foreign keys may write children before their parents,
    // including in the self-referencing category tree; sync must still deliver them.
    app.pragma_update(None, "foreign_keys", false).unwrap();
    insert_category(app, "cat-cola", "Cola", Some("cat-drinks"));
    insert_category(app, "cat-drinks", "Drinks", None);
    insert_product(app, "p1", Some("cat-cola"), "Cola 0.5l", 250);
    insert_product(app, "p2", Some("cat-drinks"), "Water", 120);
    insert_customer(app, "c1", "Ada");
    insert_sale(app, "s1", Some("c1"), 370);
    insert_sale_item(app, "i1", "s1", "p1", 1, 250);
    insert_sale_item(app, "i2", "s1", "p2", 1, 120);
}

#[tokio::test]
async fn two_devices_converge_after_one_forced_cycle_each() {
    let server = TestServer::start().await;
    let a = server.pair_device("Desktop A").await;
    let b = server.pair_device("Tablet B").await;
    seed_shop(&a.app());

    let pushed = a.sync_ok().await;
    assert_eq!(pushed.pushed, 8);
    assert_eq!(pushed.rejected, 0);
    assert_eq!(a.dirty("sale_items"), 0);
    let pulled = b.sync_ok().await;
    assert_eq!(pulled.pulled, 8);
    assert_eq!(snapshot(&a), snapshot(&b));
    assert_eq!(b.dirty("products"), 0, "pulled rows are not dirty");

    // Edits and a delete on B come back to A.
    set_price(&b.app(), "p1", 275);
    b.app()
        .execute("DELETE FROM sale_items WHERE id = 'i2'", [])
        .unwrap();
    b.sync_ok().await;
    let report = a.sync_ok().await;
    assert_eq!(report.pulled, 2);
    assert_eq!(price(&a.app(), "p1"), Some(275));
    assert_eq!(a.count("sale_items"), 1);
    assert_eq!(snapshot(&a), snapshot(&b));

    // A third, fresh device gets the whole tenant on its first cycle.
    let c = server.pair_device("Tablet C").await;
    c.sync_ok().await;
    assert_eq!(snapshot(&c), snapshot(&a));
}

#[tokio::test]
async fn concurrent_edits_resolve_last_write_wins_and_the_loser_is_logged() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let b = server.pair_device("B").await;
    insert_product(&a.app(), "p1", None, "Cola", 100);
    a.sync_ok().await;
    b.sync_ok().await;

    set_price(&a.app(), "p1", 200); // Earlier write.
    // Versions order by the millisecond first: B writes in a later one than A did, or the
    // two would be ordered by their device ids.
    let version: String = a
        .app()
        .query_row(
            "SELECT _ferryVersion FROM products WHERE id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let written = ferry_core::time::parse_ms(&version[..24]).unwrap();
    while ferry_core::time::now_ms() <= written {
        tokio::task::yield_now().await;
    }
    set_price(&b.app(), "p1", 300); // Later write: wins.
    b.sync_ok().await;
    let report = a.sync_ok().await;
    assert_eq!(report.rejected, 0);
    assert_eq!(price(&a.app(), "p1"), Some(300));
    b.sync_ok().await;
    assert_eq!(price(&b.app(), "p1"), Some(300));
    assert_eq!(a.dirty("products") + b.dirty("products"), 0);

    let (status, body) = server
        .request(
            Method::GET,
            "/api/admin/conflicts?table=products",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conflicts = body["conflicts"].as_array().unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c["loser_data"]["price_cents"] == 200),
        "A's losing write is kept: {body}"
    );
}

#[tokio::test]
async fn foreign_key_order_holds_across_push_batches_and_self_references() {
    let server = TestServer::start().await;
    // One row per push request: a parent written after its child lands in a later batch.
    let options = ClientOptions {
        push_batch: 1,
        ..ClientOptions::default()
    };
    let a = server.pair_device_with("A", options).await;
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    insert_category(&app, "leaf", "Leaf", Some("mid"));
    insert_category(&app, "mid", "Mid", Some("root"));
    insert_category(&app, "root", "Root", None);
    insert_product(&app, "p", Some("leaf"), "Thing", 1);
    let report = a.sync_ok().await;
    assert_eq!(report.pushed, 4, "{report:?}");
    assert_eq!(a.dirty("categories") + a.dirty("products"), 0, "{report:?}");

    let b = server.pair_device("B").await;
    b.sync_ok().await;
    assert_eq!(b.count("categories"), 3);
    assert_eq!(b.count("products"), 1);
}

/// Regression (issue 13): categories that were each other's parent, and every product below
/// them, were rejected with `fk_violation` on every push, for ever.
#[tokio::test]
async fn rows_that_reference_each_other_sync_whatever_the_push_batch() {
    let server = TestServer::start().await;
    let b = server.pair_device("B").await;
    for (name, push_batch) in [("A1", 1), ("A2", 2)] {
        let options = ClientOptions {
            push_batch,
            ..ClientOptions::default()
        };
        let a = server.pair_device_with(name, options).await;
        let app = a.app();
        // Valid in the app's file with foreign keys off (or deferred to its commit).
        app.pragma_update(None, "foreign_keys", false).unwrap();
        let id = |id: &str| format!("{name}-{id}");
        // x <-> y, a loop of three below y, products below each, a child category below x.
        insert_category(&app, &id("x"), "X", Some(&id("y")));
        insert_category(&app, &id("y"), "Y", Some(&id("x")));
        insert_category(&app, &id("l1"), "L1", Some(&id("l2")));
        insert_category(&app, &id("l2"), "L2", Some(&id("l3")));
        insert_category(&app, &id("l3"), "L3", Some(&id("l1")));
        insert_category(&app, &id("child"), "Child", Some(&id("x")));
        for category in ["x", "y", "l2", "child"] {
            let product = id(&format!("p-{category}"));
            insert_product(&app, &product, Some(&id(category)), "Thing", 1);
        }
        let report = a.sync_ok().await;
        assert_eq!(report.rejected, 0, "{report:?}");
        assert_eq!(report.pushed, 10, "{report:?}");
        assert_eq!(a.dirty("categories") + a.dirty("products"), 0, "{report:?}");
    }

    let report = b.sync_ok().await;
    assert_eq!(report.pulled, 20, "{report:?}");
    assert_eq!(b.count("categories"), 12);
    assert_eq!(b.count("products"), 8);
    let parent: Option<String> = b
        .app()
        .query_row(
            "SELECT parent_id FROM categories WHERE id = 'A1-x'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(parent.as_deref(), Some("A1-y"));
}

/// A group of rows that reference each other, whose parent outside the group comes in a later
/// batch: the group is rejected, then pushed again, whole, once the parent is there.
#[tokio::test]
async fn a_group_whose_parent_comes_later_is_pushed_again_whole() {
    let server = TestServer::start_with_schema(
        "CREATE TABLE nodes (
           id         TEXT PRIMARY KEY NOT NULL,
           parent_id  TEXT REFERENCES nodes (id),
           partner_id TEXT REFERENCES nodes (id)
         );",
    )
    .await;
    let options = ClientOptions {
        push_batch: 1,
        ..ClientOptions::default()
    };
    let a = server.pair_device_with("A", options).await;
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    // a and b are partners; a's parent z is read after them, in a batch of its own.
    app.execute_batch(
        "INSERT INTO nodes (id, parent_id, partner_id) VALUES
           ('a', 'z', 'b'), ('b', NULL, 'a'), ('z', NULL, NULL);",
    )
    .unwrap();
    let report = a.sync_ok().await;
    assert_eq!((report.pushed, report.rejected), (3, 0), "{report:?}");
    assert_eq!(a.dirty("nodes"), 0);

    let b = server.pair_device("B").await;
    b.sync_ok().await;
    assert_eq!(b.count("nodes"), 3);
}

#[tokio::test]
async fn a_child_whose_parent_is_missing_is_rejected_and_stays_dirty() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let app = a.app();
    app.pragma_update(None, "foreign_keys", false).unwrap();
    insert_product(&app, "p1", Some("no-such-category"), "Orphan", 1);
    insert_product(&app, "p2", None, "Fine", 1);
    let report = a.sync().await;
    assert_eq!(report.pushed, 1, "{report:?}");
    assert_eq!(report.rejected, 1, "{report:?}");
    assert_eq!(a.dirty("products"), 1);
    let log = a.client.log(1).unwrap();
    assert_eq!(log[0].rejected, 1);

    // Once the parent exists, the next cycle delivers the child.
    insert_category(&app, "no-such-category", "Now exists", None);
    let report = a.sync_ok().await;
    assert_eq!(report.rejected, 0, "{report:?}");
    assert_eq!(a.dirty("products"), 0);
}

#[tokio::test]
async fn a_device_with_a_different_schema_gets_schema_mismatch_and_its_log_says_so() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    a.app()
        .execute_batch("ALTER TABLE products ADD COLUMN color TEXT")
        .unwrap();
    insert_product(&a.app(), "p1", None, "Cola", 1);
    let report = a.sync().await;
    assert!(!report.ok);
    let error = report.error.clone().unwrap();
    assert!(error.contains("schema"), "{error}");
    assert!(
        a.client.log(1).unwrap()[0]
            .error
            .as_deref()
            .unwrap()
            .contains("schema")
    );
    assert_eq!(a.dirty("products"), 1, "nothing was confirmed");
}

#[tokio::test]
async fn the_same_push_twice_changes_nothing_the_second_time() {
    let server = TestServer::start().await;
    let a = server.pair_device("A").await;
    let b = server.pair_device("B").await;
    insert_product(&a.app(), "p1", None, "Cola", 100);
    a.sync_ok().await;
    b.sync_ok().await;

    // Replay A's confirmed row as A would after a lost response: the server says duplicate.
    let row = a
        .app()
        .query_row(
            "SELECT _ferryVersion FROM products WHERE id = 'p1'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    let token = device_token(&a);
    let hash = schema_hash(&server).await;
    let body = json!({"device_id": a.device_id, "schema_hash": hash, "pending": 0, "changes": [
        {"table": "products", "pk": {"id": "p1"}, "version": row, "deleted": false,
         "data": {"id": "p1", "name": "Cola", "price_cents": 100, "category_id": null, "sku": null, "active": 1}}
    ]});
    for _ in 0..2 {
        let (status, resp) = server
            .request(Method::POST, "/api/sync/push", Some(&token), Some(&body))
            .await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["results"][0]["outcome"], "duplicate");
    }
    let report = b.sync_ok().await;
    assert_eq!(report.pulled, 0, "a duplicate is not a new change");
}

#[tokio::test]
async fn device_check_ins_are_visible_to_the_admin() {
    let server = TestServer::start().await;
    let a = server.pair_device("Desktop A").await;
    let _b = server.pair_device("Tablet B").await;
    a.sync_ok().await;
    let (status, body) = server
        .request(
            Method::GET,
            "/api/admin/devices",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let desktop = devices.iter().find(|d| d["name"] == "Desktop A").unwrap();
    assert!(desktop["last_seen_at"].is_string(), "{desktop}");
    assert!(desktop["last_pull_at"].is_string(), "{desktop}");
    assert_eq!(desktop["device_id"], a.device_id.as_str());
    assert!(
        desktop["version"]
            .as_str()
            .unwrap_or("")
            .contains(env!("CARGO_PKG_VERSION")),
        "{desktop}"
    );
}

/// The device token, read from the device's own state.
pub(crate) fn device_token(device: &TestDevice) -> String {
    device
        .app()
        .query_row(
            "SELECT value FROM _ferry_state WHERE key = 'token'",
            [],
            |r| r.get(0),
        )
        .expect("the device keeps its token in _ferry_state")
}

pub(crate) async fn schema_hash(server: &TestServer) -> String {
    let (_, health) = server
        .request(Method::GET, "/api/sync/health", None, None)
        .await;
    health["schema_hash"].as_str().unwrap().to_string()
}
