//! The triggers: app writes through a plain connection are tracked in the file itself.

use ferry_client::replica::PushLimit;
use ferry_core::version::Version;

use crate::support::*;

#[test]
fn inserts_and_updates_are_dirty_with_increasing_versions_in_the_hlc_format() {
    let mut f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO categories (id, name) VALUES ('c1', 'Drinks')",
            [],
        )
        .unwrap();
    assert!(f.is_dirty("categories", "id = 'c1'"));
    let v1 = f.version("categories", "id = 'c1'");
    let parsed = Version::parse(&v1).expect("the exact HLC format");
    assert_eq!(parsed.node, DEVICE);
    assert!((parsed.ms - now_ms()).abs() < 60_000, "{v1}");

    f.push_everything();
    assert!(!f.is_dirty("categories", "id = 'c1'"));
    f.app
        .execute(
            "UPDATE categories SET name = 'Cold drinks' WHERE id = 'c1'",
            [],
        )
        .unwrap();
    assert!(f.is_dirty("categories", "id = 'c1'"));
    let v2 = f.version("categories", "id = 'c1'");
    assert!(v2 > v1, "{v2} > {v1}");

    // One statement touching many rows: every row gets its own, increasing, version.
    for i in 0..50 {
        f.app
            .execute("INSERT INTO items (id, name) VALUES (?1, 'item')", [i])
            .unwrap();
    }
    f.app.execute("UPDATE items SET price = 1.5", []).unwrap();
    let versions: Vec<String> = f
        .app
        .prepare("SELECT _ferryVersion FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(versions[0] > v2);
    assert_eq!(f.count("SELECT count(*) FROM items WHERE _isDirty = 1"), 50);
}

#[test]
fn writing_ferry_columns_alone_does_not_mark_a_row_dirty() {
    let mut f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO categories (id, name) VALUES ('c1', 'Drinks')",
            [],
        )
        .unwrap();
    f.push_everything();
    let clean = f.version("categories", "id = 'c1'");
    f.app
        .execute(
            "UPDATE categories SET _lastSyncedAt = 'x' WHERE id = 'c1'",
            [],
        )
        .unwrap();
    assert!(!f.is_dirty("categories", "id = 'c1'"));
    assert_eq!(f.version("categories", "id = 'c1'"), clean);
}

#[test]
fn a_version_is_still_greater_after_the_device_clock_went_backwards() {
    let f = Fixture::new();
    f.app
        .execute("INSERT INTO categories (id, name) VALUES ('c1', 'a')", [])
        .unwrap();
    // The clock row ahead of the wall clock is what a clock that jumped back leaves behind.
    let ahead = now_ms() + 86_400_000;
    f.app
        .execute("UPDATE _ferry_clock SET ms = ?1, counter = 7", [ahead])
        .unwrap();
    f.app
        .execute("UPDATE categories SET name = 'b' WHERE id = 'c1'", [])
        .unwrap();
    let v1 = f.version("categories", "id = 'c1'");
    let p1 = Version::parse(&v1).unwrap();
    assert_eq!((p1.ms, p1.counter), (ahead, 8), "{v1}");
    f.app
        .execute("UPDATE categories SET name = 'c' WHERE id = 'c1'", [])
        .unwrap();
    let v2 = f.version("categories", "id = 'c1'");
    assert!(v2 > v1, "{v2} > {v1}");

    // A full counter moves to the next millisecond instead of wrapping around.
    f.app
        .execute("UPDATE _ferry_clock SET counter = 65535", [])
        .unwrap();
    f.app
        .execute("UPDATE categories SET name = 'd' WHERE id = 'c1'", [])
        .unwrap();
    let v3 = f.version("categories", "id = 'c1'");
    let p3 = Version::parse(&v3).unwrap();
    assert_eq!((p3.ms, p3.counter), (ahead + 1, 0), "{v3}");
    assert!(v3 > v2);
}

#[test]
fn deletes_become_dirty_tombstones_for_text_integer_blob_and_composite_keys() {
    let mut f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name) VALUES ('it''s', 'quoted');
             INSERT INTO items (id, name) VALUES (42, 'answer');
             INSERT INTO files (hash, body) VALUES (X'00FFA0', X'01');
             INSERT INTO stock (store, sku, qty) VALUES ('north', 7, 3);",
        )
        .unwrap();
    f.push_everything();
    f.app
        .execute_batch(
            "DELETE FROM categories; DELETE FROM items; DELETE FROM files; DELETE FROM stock;",
        )
        .unwrap();
    let tombstones = f.tombstones();
    let keys: Vec<(&str, &str, i64)> = tombstones
        .iter()
        .map(|(t, pk, _, dirty)| (t.as_str(), pk.as_str(), *dirty))
        .collect();
    assert_eq!(
        keys,
        [
            ("categories", "'it''s'", 1),
            ("files", "X'00FFA0'", 1),
            ("items", "42", 1),
            ("stock", "'north',7", 1),
        ]
    );
    for (_, _, version, _) in &tombstones {
        assert_eq!(Version::parse(version).unwrap().node, DEVICE);
    }
    assert_eq!(f.replica.pending().unwrap(), 4);

    // On the wire each tombstone names its row with typed key values.
    let batch = f
        .replica
        .next_push_batch(&mut Default::default(), PushLimit::rows(10))
        .unwrap();
    let mut wire: Vec<(String, serde_json::Value, bool)> = batch
        .changes
        .iter()
        .map(|c| {
            (
                c.table.clone(),
                serde_json::Value::Object(c.pk.clone()),
                c.deleted,
            )
        })
        .collect();
    wire.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        wire,
        [
            ("categories".into(), serde_json::json!({"id": "it's"}), true),
            (
                "files".into(),
                serde_json::json!({"hash": {"$blob": "AP+g"}}),
                true
            ),
            ("items".into(), serde_json::json!({"id": 42}), true),
            (
                "stock".into(),
                serde_json::json!({"store": "north", "sku": 7}),
                true
            ),
        ]
    );
    assert!(batch.changes.iter().all(|c| c.data.is_none()));
}

#[test]
fn a_key_changing_update_tombstones_the_old_key() {
    let mut f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO stock (store, sku, qty) VALUES ('north', 1, 5)",
            [],
        )
        .unwrap();
    f.push_everything();
    f.app
        .execute(
            "UPDATE stock SET sku = 2 WHERE store = 'north' AND sku = 1",
            [],
        )
        .unwrap();
    let tombstones = f.tombstones();
    assert_eq!(tombstones.len(), 1);
    assert_eq!(
        (tombstones[0].1.as_str(), tombstones[0].3),
        ("'north',1", 1)
    );
    assert!(f.is_dirty("stock", "sku = 2"));
    // A plain update of a non-key column leaves no tombstone.
    f.app.execute("UPDATE stock SET qty = 9", []).unwrap();
    assert_eq!(f.tombstones().len(), 1);
}

#[test]
fn re_creating_a_deleted_row_removes_its_tombstone() {
    let f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO items (id, name) VALUES (1, 'a');
             DELETE FROM items WHERE id = 1;",
        )
        .unwrap();
    assert_eq!(f.tombstones().len(), 1);
    f.app
        .execute("INSERT INTO items (id, name) VALUES (1, 'again')", [])
        .unwrap();
    assert!(f.tombstones().is_empty());
    assert!(f.is_dirty("items", "id = 1"));
    // Moving another row onto a deleted key revives the key the same way.
    f.app
        .execute_batch(
            "INSERT INTO items (id, name) VALUES (2, 'b');
             DELETE FROM items WHERE id = 1;
             UPDATE items SET id = 1 WHERE id = 2;",
        )
        .unwrap();
    let keys: Vec<String> = f.tombstones().into_iter().map(|t| t.1).collect();
    assert_eq!(keys, ["2"]);
}

/// Regression: the triggers' own UPDATE must not fire them again, even with recursive triggers.
#[test]
fn triggers_do_not_recurse_with_recursive_triggers_on() {
    let f = Fixture::new();
    f.app
        .execute_batch("PRAGMA recursive_triggers = ON")
        .unwrap();
    f.app
        .execute("INSERT INTO categories (id, name) VALUES ('c1', 'a')", [])
        .unwrap();
    // With the clock row ahead of the wall clock, each trigger run adds exactly one to the
    // counter: a cascade would add more.
    f.app
        .execute(
            "UPDATE _ferry_clock SET ms = ?1, counter = 0",
            [now_ms() + 86_400_000],
        )
        .unwrap();
    f.app
        .execute("UPDATE categories SET name = 'b' WHERE id = 'c1'", [])
        .unwrap();
    assert_eq!(f.count("SELECT counter FROM _ferry_clock"), 1);
    assert!(f.is_dirty("categories", "id = 'c1'"));
    // INSERT OR REPLACE deletes the old row (firing the delete trigger with recursive triggers
    // on) and inserts the new one: the row ends dirty and without a tombstone.
    f.app
        .execute(
            "INSERT OR REPLACE INTO categories (id, name) VALUES ('c1', 'c')",
            [],
        )
        .unwrap();
    assert!(f.is_dirty("categories", "id = 'c1'"));
    assert!(f.tombstones().is_empty());
}
