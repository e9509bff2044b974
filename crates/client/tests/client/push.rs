//! Reading dirty rows for push, and stamping only what the server confirmed.

use ferry_client::replica::{PushCursor, PushLimit};
use serde_json::json;

use crate::support::*;

#[test]
fn a_row_edited_after_it_was_bundled_for_push_stays_dirty() {
    let mut f = Fixture::new();
    f.app
        .execute_batch("INSERT INTO categories (id, name) VALUES ('a', 'A'), ('b', 'B');")
        .unwrap();
    let batch = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(10))
        .unwrap();
    assert_eq!(batch.rows.len(), 2);
    // While the batch is on its way, the app edits one of its rows.
    f.app
        .execute("UPDATE categories SET name = 'A2' WHERE id = 'a'", [])
        .unwrap();
    let stamped = f.replica.stamp(&batch.rows).unwrap();
    assert_eq!(stamped, 1);
    assert!(f.is_dirty("categories", "id = 'a'"), "the edit is not lost");
    assert!(!f.is_dirty("categories", "id = 'b'"));
    let synced_at: Option<String> = f
        .app
        .query_row(
            "SELECT _lastSyncedAt FROM categories WHERE id = 'b'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(ferry_core::time::parse_ms(&synced_at.unwrap()).is_some());

    // The same holds for a tombstone whose row was deleted again after re-creation.
    f.app
        .execute("DELETE FROM categories WHERE id = 'b'", [])
        .unwrap();
    let batch = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(10))
        .unwrap();
    assert_eq!(batch.rows.len(), 2, "the edited row and the tombstone");
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name) VALUES ('b', 'again');
             DELETE FROM categories WHERE id = 'b';",
        )
        .unwrap();
    assert_eq!(f.replica.stamp(&batch.rows).unwrap(), 1);
    assert_eq!(f.tombstones()[0].3, 1, "the newer delete stays dirty");
    assert_eq!(f.replica.pending().unwrap(), 1);
}

#[test]
fn batches_put_parents_first_and_tombstones_last_with_childrens_tables_first() {
    let mut f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name) VALUES ('c1', 'Drinks'), ('old', 'Old');
             INSERT INTO items (id, name, category_id) VALUES (1, 'Cola', 'c1'), (2, 'Tea', 'c1');
             INSERT INTO items (id, name) VALUES (3, 'gone');",
        )
        .unwrap();
    f.push_everything();
    f.app
        .execute_batch(
            "UPDATE items SET price = 2.5;
             UPDATE categories SET name = 'Cold drinks' WHERE id = 'c1';
             DELETE FROM categories WHERE id = 'old';
             DELETE FROM items WHERE id = 3;",
        )
        .unwrap();
    let mut cursor = PushCursor::default();
    let mut sequence = Vec::new();
    loop {
        let batch = f
            .replica
            .next_push_batch(&mut cursor, PushLimit::rows(2))
            .unwrap();
        if batch.rows.is_empty() {
            break;
        }
        assert!(batch.rows.len() <= 2);
        sequence.extend(batch.changes.into_iter().map(|c| {
            let key = serde_json::Value::Object(c.pk).to_string();
            (c.table, key, c.deleted)
        }));
    }
    let expected = [
        ("categories", r#"{"id":"c1"}"#, false),
        ("items", r#"{"id":1}"#, false),
        ("items", r#"{"id":2}"#, false),
        ("items", r#"{"id":3}"#, true),
        ("categories", r#"{"id":"old"}"#, true),
    ];
    let sequence: Vec<(&str, &str, bool)> = sequence
        .iter()
        .map(|(t, k, d)| (t.as_str(), k.as_str(), *d))
        .collect();
    assert_eq!(sequence, expected);
}

#[test]
fn a_pass_reads_each_dirty_row_once_even_when_none_is_stamped() {
    let f = Fixture::new();
    for i in 0..7 {
        f.app
            .execute(
                "INSERT INTO stock (store, sku, qty) VALUES ('s', ?1, 1)",
                [i],
            )
            .unwrap();
    }
    let mut cursor = PushCursor::default();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let batch = f
            .replica
            .next_push_batch(&mut cursor, PushLimit::rows(3))
            .unwrap();
        if batch.rows.is_empty() {
            break;
        }
        seen.extend(
            batch
                .changes
                .into_iter()
                .map(|c| c.pk["sku"].as_i64().unwrap()),
        );
    }
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6]);
    // A new pass starts over: rejected rows are tried again next time.
    let again = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(100))
        .unwrap();
    assert_eq!(again.rows.len(), 7);
}

#[test]
fn pushed_rows_carry_typed_values_and_their_versions() {
    let f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO files (hash, body) VALUES (X'0102', X'FF00')",
            [],
        )
        .unwrap();
    f.app
        .execute(
            "INSERT INTO items (id, name, price, category_id) VALUES (5, 'x', 2.25, NULL)",
            [],
        )
        .unwrap();
    let batch = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(10))
        .unwrap();
    let file = batch.changes.iter().find(|c| c.table == "files").unwrap();
    assert_eq!(
        serde_json::Value::Object(file.data.clone().unwrap()),
        json!({"hash": {"$blob": "AQI="}, "body": {"$blob": "/wA="}})
    );
    assert_eq!(file.version, f.version("files", "hash = X'0102'"));
    let item = batch.changes.iter().find(|c| c.table == "items").unwrap();
    assert_eq!(
        serde_json::Value::Object(item.data.clone().unwrap()),
        json!({"id": 5, "name": "x", "price": 2.25, "category_id": null})
    );
    assert_eq!(serde_json::Value::Object(item.pk.clone()), json!({"id": 5}));
}

#[test]
fn rows_rejected_earlier_are_read_again_with_their_current_state() {
    let f = Fixture::new();
    f.app
        .execute_batch("INSERT INTO categories (id, name) VALUES ('a', 'A'), ('b', 'B')")
        .unwrap();
    let first = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(10))
        .unwrap();
    f.app
        .execute("UPDATE categories SET name = 'A2' WHERE id = 'a'", [])
        .unwrap();
    f.app
        .execute("DELETE FROM categories WHERE id = 'b'", [])
        .unwrap();
    let again = f.replica.reread(&first.rows).unwrap();
    assert_eq!(
        again.rows.len(),
        1,
        "the deleted row is no longer a dirty row"
    );
    assert_eq!(again.changes[0].data.as_ref().unwrap()["name"], "A2");
    assert_eq!(
        again.changes[0].version,
        f.version("categories", "id = 'a'")
    );
}

/// Finding dirty rows must stay cheap in a table of a million clean ones.
#[test]
fn the_dirty_scan_uses_the_partial_index() {
    let f = Fixture::new();
    for (table, key, after) in [
        ("categories", "id", "'x'"),
        ("stock", "store, sku", "'x', 1"),
    ] {
        for condition in [String::new(), format!("AND ({key}) > ({after})")] {
            let plan: Vec<String> = f
                .app
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE _isDirty = 1 {condition} \
                     ORDER BY {key} LIMIT 10"
                ))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let index = format!("_ferry_{table}_dirty");
            assert!(plan.iter().any(|p| p.contains(&index)), "{plan:?}");
            assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
        }
    }
}

/// Regression: a tombstone whose key cannot be read must not end the pass over its table.
#[test]
fn an_unreadable_tombstone_does_not_hide_the_ones_after_it() {
    let f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');
             DELETE FROM items;
             INSERT INTO _ferry_tombstones (tbl, pk, version, _isDirty)
               VALUES ('items', '0garbage', 'v', 1);",
        )
        .unwrap();
    let mut cursor = PushCursor::default();
    let mut keys = Vec::new();
    for _ in 0..10 {
        let batch = f
            .replica
            .next_push_batch(&mut cursor, PushLimit::rows(2))
            .unwrap();
        if batch.rows.is_empty() {
            break;
        }
        keys.extend(batch.changes.iter().map(|c| c.pk["id"].as_i64().unwrap()));
    }
    assert_eq!(keys, [1, 2, 3]);
}

/// Every batch of a pass: each row as `table:key`, with its group.
fn batches(
    replica: &ferry_client::replica::Replica,
    limit: PushLimit,
) -> Vec<Vec<(String, Option<usize>)>> {
    let mut cursor = PushCursor::default();
    let mut batches = Vec::new();
    loop {
        let batch = replica.next_push_batch(&mut cursor, limit).unwrap();
        if batch.rows.is_empty() {
            return batches;
        }
        batches.push(
            batch
                .changes
                .iter()
                .zip(&batch.rows)
                .map(|(c, row)| {
                    let key = c.pk.values().next().unwrap();
                    let key = key.as_str().map_or_else(|| key.to_string(), str::to_owned);
                    (format!("{}:{key}", c.table), row.group())
                })
                .collect(),
        );
    }
}

/// The rows of each batch, without their groups.
fn keys(batches: &[Vec<(String, Option<usize>)>]) -> Vec<Vec<&str>> {
    batches
        .iter()
        .map(|b| b.iter().map(|(key, _)| key.as_str()).collect())
        .collect()
}

/// Regression (issue 13): rows whose references form a cycle were split across batches and
/// rejected for a missing parent in every one of them.
#[test]
fn rows_that_reference_each_other_go_into_one_batch() {
    let f = Fixture::new();
    // a <-> c, and e -> f -> g -> e; d references itself; an item hangs below a.
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name, parent_id) VALUES
               ('a', 'A', 'c'), ('b', 'B', NULL), ('c', 'C', 'a'), ('d', 'D', 'd'),
               ('e', 'E', 'f'), ('f', 'F', 'g'), ('g', 'G', 'e');
             INSERT INTO items (id, name, category_id) VALUES (1, 'Cola', 'a');",
        )
        .unwrap();

    let two = batches(&f.replica, PushLimit::rows(2));
    assert_eq!(
        keys(&two),
        [
            vec!["categories:a", "categories:c"],
            vec!["categories:b", "categories:d"],
            // Larger than the limit: a group goes whole.
            vec!["categories:e", "categories:f", "categories:g"],
            vec!["items:1"],
        ]
    );
    // The members of a group carry it; other rows none.
    let group_of = |batch: &[(String, Option<usize>)]| -> Vec<Option<usize>> {
        batch.iter().map(|(_, group)| *group).collect()
    };
    let (ac, efg) = (two[0][0].1.unwrap(), two[2][0].1.unwrap());
    assert_ne!(ac, efg);
    assert_eq!(group_of(&two[0]), [Some(ac); 2]);
    assert_eq!(group_of(&two[1]), [None, None]);
    assert_eq!(group_of(&two[2]), [Some(efg); 3]);

    // A batch ends before a group that does not fit in it.
    assert_eq!(
        keys(&batches(&f.replica, PushLimit::rows(3))),
        [
            vec!["categories:a", "categories:c", "categories:b"],
            vec!["categories:d"],
            vec!["categories:e", "categories:f", "categories:g"],
            vec!["items:1"],
        ]
    );
    assert_eq!(
        keys(&batches(&f.replica, PushLimit::rows(1))),
        [
            vec!["categories:a", "categories:c"],
            vec!["categories:b"],
            vec!["categories:d"],
            vec!["categories:e", "categories:f", "categories:g"],
            vec!["items:1"],
        ]
    );

    // Read again (to push again), the rows keep their group.
    let batch = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(1))
        .unwrap();
    let again = f.replica.reread(&batch.rows).unwrap();
    assert_eq!(again.rows, batch.rows);
    assert!(again.rows.iter().all(|row| row.group().is_some()));
}

#[test]
fn a_cycle_across_tables_goes_into_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let ddl = "
        CREATE TABLE shelves (id TEXT PRIMARY KEY NOT NULL, box_id TEXT REFERENCES boxes (id));
        CREATE TABLE boxes (id TEXT PRIMARY KEY NOT NULL, shelf_id TEXT REFERENCES shelves (id));
    ";
    let replica = ferry_client::replica::Replica::install(
        &path,
        ddl,
        DEVICE,
        ferry_client::replica::ReplicaOptions::default(),
    )
    .unwrap();
    app_connection(&path)
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO shelves (id, box_id) VALUES ('s1', 'b1'), ('s2', 'b2');
             INSERT INTO boxes (id, shelf_id) VALUES ('b1', 's1'), ('b2', NULL);",
        )
        .unwrap();
    let mut batches = keys(&batches(&replica, PushLimit::rows(1)))
        .into_iter()
        .map(|b| b.into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    // Whichever table the pass reads first, s1 and b1 go together and nothing twice.
    for batch in &mut batches {
        batch.sort();
    }
    batches.sort();
    assert_eq!(
        batches,
        [
            vec!["boxes:b1".to_owned(), "shelves:s1".to_owned()],
            vec!["boxes:b2".to_owned()],
            vec!["shelves:s2".to_owned()],
        ]
    );
}

/// A category whose name is `size` bytes long.
fn insert_category(f: &Fixture, id: &str, parent: Option<&str>, size: usize) {
    f.app
        .execute(
            "INSERT INTO categories (id, name, parent_id) VALUES (?1, ?2, ?3)",
            (id, "x".repeat(size), parent),
        )
        .unwrap();
}

/// A batch's `bytes` is what its changes add to a push request: their JSON and the commas.
#[test]
fn a_batch_knows_its_size_on_the_wire() {
    let f = Fixture::new();
    insert_category(&f, "a", None, 10);
    insert_category(&f, "b", None, 1000);
    f.app
        .execute_batch(
            "INSERT INTO items (id, name) VALUES (1, 'gone');
             DELETE FROM items;",
        )
        .unwrap();
    let batch = f
        .replica
        .next_push_batch(&mut PushCursor::default(), PushLimit::rows(10))
        .unwrap();
    assert_eq!(batch.rows.len(), 3);
    let json = serde_json::to_vec(&batch.changes).unwrap();
    // `[a,b,c]`: one bracket more than the three commas counted.
    assert_eq!(batch.bytes + 1, json.len());
    let sizes: usize = batch.rows.iter().map(|row| row.size()).sum();
    assert_eq!(sizes, batch.bytes);
}

/// Large rows: a batch ends before the row that would take it over the byte limit, and a row
/// over the limit on its own goes in a batch alone; no row is read twice in a pass.
#[test]
fn batches_are_bounded_by_bytes_as_well_as_rows() {
    let f = Fixture::new();
    for (id, size) in [
        ("a", 300),
        ("b", 300),
        ("c", 300),
        ("d", 5000),
        ("e", 10),
        ("f", 10),
    ] {
        insert_category(&f, id, None, size);
    }
    f.app
        .execute_batch(
            "INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');
             DELETE FROM items;",
        )
        .unwrap();
    let limit = PushLimit {
        rows: 3,
        bytes: 1000,
    };
    assert_eq!(
        keys(&batches(&f.replica, limit)),
        [
            vec!["categories:a", "categories:b"],
            vec!["categories:c"],
            vec!["categories:d"],
            // The row limit still holds, tombstones included.
            vec!["categories:e", "categories:f", "items:1"],
            vec!["items:2", "items:3"],
        ]
    );
    // Under a limit smaller than any row, every row and tombstone goes alone.
    let tiny = PushLimit {
        rows: 100,
        bytes: 1,
    };
    let alone = batches(&f.replica, tiny);
    assert_eq!(alone.len(), 9);
    assert!(alone.iter().all(|batch| batch.len() == 1));
}

/// Rows that reference each other go together whatever their size: a group that would take a
/// batch over the byte limit starts the next one, and one over the limit on its own goes alone.
#[test]
fn a_group_over_the_byte_limit_goes_whole_into_a_batch_of_its_own() {
    let f = Fixture::new();
    // Valid in the app's file with foreign keys off (or deferred to its commit).
    f.app.pragma_update(None, "foreign_keys", false).unwrap();
    insert_category(&f, "a", Some("c"), 400);
    insert_category(&f, "b", None, 400);
    insert_category(&f, "c", Some("a"), 400);
    insert_category(&f, "d", None, 10);
    insert_category(&f, "e", Some("f"), 100);
    insert_category(&f, "f", Some("e"), 100);
    // a and c are about 550 bytes each, b 550, d 160, e and f 250.
    let limit = PushLimit {
        rows: 100,
        bytes: 1000,
    };
    let batches = batches(&f.replica, limit);
    assert_eq!(
        keys(&batches),
        [
            vec!["categories:a", "categories:c"],
            vec!["categories:b", "categories:d"],
            vec!["categories:e", "categories:f"],
        ]
    );
    assert!(batches[0].iter().all(|(_, group)| group.is_some()));
}
