//! Applying pulled pages: never dirty, last write wins, conflicts kept, crash-safe cursors.

use std::sync::atomic::{AtomicBool, Ordering};

use ferry_client::ConflictReason;
use ferry_client::replica::{ApplyMode, Replica, ReplicaOptions};
use ferry_core::version::Version;
use serde_json::json;

use crate::support::*;

const LWW: ApplyMode = ApplyMode::LastWriteWins;

fn category(id: &str, name: &str, version: &str) -> ferry_proto::RowChange {
    upsert(
        "categories",
        json!({"id": id}),
        version,
        json!({"id": id, "name": name, "parent_id": null}),
    )
}

fn name_of(f: &Fixture, id: &str) -> Option<String> {
    use rusqlite::OptionalExtension;
    f.app
        .query_row("SELECT name FROM categories WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .unwrap()
}

#[test]
fn applying_pulled_rows_never_marks_them_dirty_but_an_app_write_between_batches_is() {
    let mut f = Fixture::new();
    let versions = [future_version(0), future_version(1), future_version(2)];
    let page1 = [
        category("p1", "one", &versions[0]),
        category("p2", "two", &versions[1]),
    ];
    let page2 = [category("p3", "three", &versions[2])];
    f.replica.apply_page(&page1, Some("cursor-1"), LWW).unwrap();
    assert!(!f.is_dirty("categories", "id = 'p1'"));
    assert_eq!(f.version("categories", "id = 'p1'"), versions[0]);

    // The app writes between the engine's two transactions: a new row and an edit of a
    // pulled row.
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name) VALUES ('app', 'mine');
             UPDATE categories SET name = 'edited' WHERE id = 'p2';",
        )
        .unwrap();
    f.replica.apply_page(&page2, Some("cursor-2"), LWW).unwrap();

    assert!(f.is_dirty("categories", "id = 'app'"));
    assert!(f.is_dirty("categories", "id = 'p2'"));
    assert!(!f.is_dirty("categories", "id = 'p1'"));
    assert!(!f.is_dirty("categories", "id = 'p3'"));
    // The edit of a pulled row is newer than the pulled version (HLC receive).
    assert!(f.version("categories", "id = 'p2'") > versions[1]);
    assert_eq!(f.replica.pending().unwrap(), 2);
    assert_eq!(f.replica.cursor().unwrap().as_deref(), Some("cursor-2"));
    assert_eq!(f.count("SELECT count(*) FROM _ferry_apply"), 0);
}

/// The same hazard under real concurrency: an app thread writes while a long page is applied in
/// many small transactions. Every app write is tracked, no pulled row is dirty.
#[test]
fn app_writes_racing_a_long_apply_are_all_tracked() {
    let mut f = Fixture::with_options(ReplicaOptions {
        apply_max_rows: 25,
        ..ReplicaOptions::default()
    });
    let page: Vec<_> = (0..4_000)
        .map(|i| {
            upsert(
                "items",
                json!({"id": i}),
                &past_version(0),
                json!({"id": i, "name": "pulled", "price": 1.0, "category_id": null}),
            )
        })
        .collect();
    let done = AtomicBool::new(false);
    let app_rows = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let app = app_connection(&f.path);
            let mut written = 0_i64;
            let mut seen = -1_i64;
            // One app write after each engine transaction it sees committed (a tight loop of
            // writes would starve the engine, as it would starve any other writer), and a
            // few more once the apply is over.
            loop {
                let finished = done.load(Ordering::Acquire);
                if finished && written >= 20 {
                    return written;
                }
                let pulled: i64 = app
                    .query_row("SELECT count(*) FROM items WHERE id < 1000000", [], |r| {
                        r.get(0)
                    })
                    .unwrap();
                if pulled == seen && !finished {
                    std::thread::yield_now();
                    continue;
                }
                seen = pulled;
                app.execute(
                    "INSERT INTO items (id, name) VALUES (?1, 'app')",
                    [1_000_000 + written],
                )
                .unwrap();
                written += 1;
            }
        });
        let stats = f.replica.apply_page(&page, Some("c"), LWW).unwrap();
        done.store(true, Ordering::Release);
        assert_eq!(stats.applied, 4_000);
        writer.join().unwrap()
    });
    assert_eq!(
        f.count("SELECT count(*) FROM items WHERE id >= 1000000 AND _isDirty = 1"),
        app_rows
    );
    assert_eq!(
        f.count("SELECT count(*) FROM items WHERE id < 1000000 AND _isDirty = 1"),
        0
    );
    assert_eq!(
        f.count("SELECT count(*) FROM items WHERE id < 1000000"),
        4_000
    );
}

#[test]
fn a_local_row_newer_than_the_pulled_one_survives() {
    let mut f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO categories (id, name) VALUES ('c', 'local')",
            [],
        )
        .unwrap();
    let local = f.version("categories", "id = 'c'");
    let stats = f
        .replica
        .apply_page(
            &[category("c", "older remote", &past_version(0))],
            None,
            LWW,
        )
        .unwrap();
    assert_eq!((stats.applied, stats.kept_local), (0, 1));
    assert_eq!(name_of(&f, "c").as_deref(), Some("local"));
    assert_eq!(f.version("categories", "id = 'c'"), local);
    assert!(f.is_dirty("categories", "id = 'c'"), "still to be pushed");
    assert!(f.replica.conflicts().unwrap().is_empty());

    // A clean newer row survives too, and so does the very same version (our own write).
    f.push_everything();
    let same = f
        .replica
        .apply_page(&[category("c", "echo", &local)], None, LWW)
        .unwrap();
    assert_eq!(same.kept_local, 1);
    assert_eq!(name_of(&f, "c").as_deref(), Some("local"));

    // A local delete newer than a pulled upsert keeps the row deleted.
    f.app
        .execute("DELETE FROM categories WHERE id = 'c'", [])
        .unwrap();
    f.replica
        .apply_page(&[category("c", "resurrected", &past_version(1))], None, LWW)
        .unwrap();
    assert_eq!(name_of(&f, "c"), None);
    assert_eq!(f.tombstones().len(), 1);
}

#[test]
fn an_older_dirty_local_row_is_overwritten_and_kept_in_the_conflict_record() {
    let mut f = Fixture::new();
    f.app
        .execute(
            "INSERT INTO categories (id, name, parent_id) VALUES ('c', 'local', NULL)",
            [],
        )
        .unwrap();
    let local = f.version("categories", "id = 'c'");
    let remote = future_version(0);
    let stats = f
        .replica
        .apply_page(&[category("c", "remote", &remote)], None, LWW)
        .unwrap();
    assert_eq!((stats.applied, stats.conflicts), (1, 1));
    assert_eq!(name_of(&f, "c").as_deref(), Some("remote"));
    assert!(!f.is_dirty("categories", "id = 'c'"));
    assert_eq!(f.version("categories", "id = 'c'"), remote);

    let conflicts = f.replica.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(c.table, "categories");
    assert_eq!(serde_json::Value::Object(c.pk.clone()), json!({"id": "c"}));
    assert_eq!(c.local_version.as_deref(), Some(local.as_str()));
    assert_eq!(
        c.local_data.clone().map(serde_json::Value::Object),
        Some(json!({"id": "c", "name": "local", "parent_id": null}))
    );
    assert_eq!(c.remote_version, remote);
    assert_eq!(c.reason, ConflictReason::NewerRemote);
    assert!(!c.local_deleted && !c.remote_deleted);

    // A clean older row is simply overwritten: nothing was lost, nothing is recorded.
    let newer = future_version(1);
    f.replica
        .apply_page(&[category("c", "remote 2", &newer)], None, LWW)
        .unwrap();
    assert_eq!(name_of(&f, "c").as_deref(), Some("remote 2"));
    assert_eq!(f.replica.conflicts().unwrap().len(), 1);
}

#[test]
fn pulled_tombstones_delete_older_rows_and_lose_to_newer_ones() {
    let mut f = Fixture::new();
    f.app
        .execute_batch("INSERT INTO items (id, name) VALUES (1, 'dirty'), (2, 'newer');")
        .unwrap();
    f.app
        .execute("INSERT INTO items (id, name) VALUES (3, 'clean')", [])
        .unwrap();
    f.push_everything();
    f.app
        .execute("UPDATE items SET name = 'dirty!' WHERE id = 1", [])
        .unwrap();
    f.app
        .execute("UPDATE items SET name = 'newer!' WHERE id = 2", [])
        .unwrap();
    let stats = f
        .replica
        .apply_page(
            &[
                tombstone("items", json!({"id": 1}), &future_version(0)),
                tombstone("items", json!({"id": 2}), &past_version(0)),
                tombstone("items", json!({"id": 3}), &future_version(1)),
                tombstone("items", json!({"id": 99}), &future_version(2)),
            ],
            None,
            LWW,
        )
        .unwrap();
    assert_eq!(
        (stats.applied, stats.kept_local, stats.conflicts),
        (3, 1, 1)
    );
    let left: Vec<i64> = f
        .app
        .prepare("SELECT id FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(left, [2]);
    assert!(
        f.tombstones().is_empty(),
        "a pulled delete is not pushed back"
    );
    let conflict = &f.replica.conflicts().unwrap()[0];
    assert!(conflict.remote_deleted);
    assert_eq!(conflict.local_data.as_ref().unwrap()["name"], "dirty!");
}

#[test]
fn a_pulled_row_newer_than_a_local_delete_revives_it_and_records_the_delete() {
    let mut f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO files (hash, body) VALUES (X'AB', X'01');
             DELETE FROM files WHERE hash = X'AB';",
        )
        .unwrap();
    assert_eq!(f.tombstones()[0].1, "X'AB'");
    let remote = future_version(0);
    f.replica
        .apply_page(
            &[upsert(
                "files",
                json!({"hash": {"$blob": "qw=="}}),
                &remote,
                json!({"hash": {"$blob": "qw=="}, "body": {"$blob": "AgM="}}),
            )],
            None,
            LWW,
        )
        .unwrap();
    assert!(f.tombstones().is_empty());
    let body: Vec<u8> = f
        .app
        .query_row("SELECT body FROM files WHERE hash = X'AB'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(body, [2, 3]);
    let conflict = &f.replica.conflicts().unwrap()[0];
    assert!(conflict.local_deleted && conflict.local_data.is_none());
}

#[test]
fn force_pull_overwrites_newer_local_rows_and_keeps_every_dirty_one_it_overwrites() {
    let mut f = Fixture::new();
    f.app
        .execute_batch(
            "INSERT INTO categories (id, name) VALUES ('clean', 'c'), ('dirty', 'd');
             INSERT INTO stock (store, sku, qty) VALUES ('s', 1, 10);",
        )
        .unwrap();
    f.push_everything();
    f.app
        .execute_batch(
            "UPDATE categories SET name = 'd!' WHERE id = 'dirty';
             DELETE FROM stock;",
        )
        .unwrap();
    let old = past_version(0);
    let stats = f
        .replica
        .apply_page(
            &[
                category("clean", "cloud clean", &old),
                category("dirty", "cloud dirty", &old),
                upsert(
                    "stock",
                    json!({"store": "s", "sku": 1}),
                    &old,
                    json!({"store": "s", "sku": 1, "qty": 4}),
                ),
            ],
            Some("end"),
            ApplyMode::CloudWins,
        )
        .unwrap();
    assert_eq!((stats.applied, stats.conflicts), (3, 2));
    assert_eq!(name_of(&f, "clean").as_deref(), Some("cloud clean"));
    assert_eq!(name_of(&f, "dirty").as_deref(), Some("cloud dirty"));
    assert_eq!(f.count("SELECT qty FROM stock"), 4);
    assert_eq!(f.replica.pending().unwrap(), 0);
    assert_eq!(f.version("categories", "id = 'dirty'"), old);
    let conflicts = f.replica.conflicts().unwrap();
    let reasons: Vec<(&str, ConflictReason, bool)> = conflicts
        .iter()
        .map(|c| (c.table.as_str(), c.reason, c.local_deleted))
        .collect();
    assert_eq!(
        reasons,
        [
            ("categories", ConflictReason::ForcePull, false),
            ("stock", ConflictReason::ForcePull, true),
        ]
    );
    assert_eq!(conflicts[0].local_data.as_ref().unwrap()["name"], "d!");
    assert_eq!(f.replica.cursor().unwrap().as_deref(), Some("end"));
}

#[test]
fn a_failed_transaction_commits_neither_its_rows_nor_the_apply_flag() {
    let mut f = Fixture::new();
    // `name` is NOT NULL: the second row cannot be stored.
    let page = [
        category("ok", "fine", &future_version(0)),
        upsert(
            "categories",
            json!({"id": "bad"}),
            &future_version(1),
            json!({"id": "bad", "name": null, "parent_id": null}),
        ),
    ];
    let err = f.replica.apply_page(&page, Some("after"), LWW).unwrap_err();
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    assert_eq!(f.count("SELECT count(*) FROM _ferry_apply"), 0);
    assert_eq!(name_of(&f, "ok"), None, "the whole transaction rolled back");
    assert_eq!(f.replica.cursor().unwrap(), None);
    // Tracking still works for the app afterwards, from its connection and the engine's file.
    f.app
        .execute("INSERT INTO categories (id, name) VALUES ('app', 'x')", [])
        .unwrap();
    assert!(f.is_dirty("categories", "id = 'app'"));
}

#[test]
fn the_cursor_is_saved_with_the_last_rows_of_its_page_so_a_crash_loses_and_doubles_nothing() {
    let mut f = Fixture::with_options(ReplicaOptions {
        apply_max_rows: 2,
        ..ReplicaOptions::default()
    });
    f.replica
        .apply_page(&[category("a", "a", &past_version(0))], Some("page-1"), LWW)
        .unwrap();
    let page2: Vec<_> = (0..5)
        .map(|i| category(&format!("b{i}"), "b", &past_version(i + 1)))
        .collect();
    // The engine stops after its first transaction of page 2 (the process was killed).
    let (taken, _) = f.replica.apply_batch(&page2, Some("page-2"), LWW).unwrap();
    assert_eq!(taken, 2);
    assert_eq!(f.replica.cursor().unwrap().as_deref(), Some("page-1"));
    let path = f.path.clone();
    drop(std::mem::replace(
        &mut f.replica,
        Replica::open(&path, ReplicaOptions::default()).unwrap(),
    ));
    // On restart the page is pulled again from the saved cursor and applied again.
    let stats = f.replica.apply_page(&page2, Some("page-2"), LWW).unwrap();
    assert_eq!((stats.applied, stats.kept_local), (3, 2));
    assert_eq!(f.count("SELECT count(*) FROM categories"), 6);
    assert_eq!(f.replica.pending().unwrap(), 0);
    assert_eq!(f.replica.cursor().unwrap().as_deref(), Some("page-2"));
    // An empty last page still moves the cursor.
    f.replica.apply_page(&[], Some("page-3"), LWW).unwrap();
    assert_eq!(f.replica.cursor().unwrap().as_deref(), Some("page-3"));
}

#[test]
fn a_local_edit_after_a_pull_is_newer_even_when_this_device_clock_is_behind() {
    let mut f = Fixture::new();
    // Another device's clock is a day ahead of ours.
    let remote = remote_version(now_ms() + 86_400_000, 5);
    f.replica
        .apply_page(&[category("c", "remote", &remote)], None, LWW)
        .unwrap();
    f.app
        .execute("UPDATE categories SET name = 'local' WHERE id = 'c'", [])
        .unwrap();
    let local = f.version("categories", "id = 'c'");
    assert!(local > remote, "{local} > {remote}");
    let parsed = Version::parse(&local).unwrap();
    assert_eq!(parsed.node, DEVICE);
}

#[test]
fn pulled_values_keep_their_types_and_partial_rows_take_defaults() {
    let mut f = Fixture::new();
    f.replica
        .apply_page(
            &[
                upsert(
                    "items",
                    json!({"id": "7"}),
                    &past_version(0),
                    json!({"id": 7, "name": "x", "price": 2, "category_id": null}),
                ),
                // `qty` is missing: the column default applies.
                upsert(
                    "stock",
                    json!({"store": "s", "sku": 1}),
                    &past_version(1),
                    json!({"store": "s", "sku": 1}),
                ),
                upsert(
                    "unknown_table",
                    json!({"id": 1}),
                    &past_version(2),
                    json!({"id": 1}),
                ),
            ],
            None,
            LWW,
        )
        .unwrap();
    let (id_type, price_type): (String, String) = f
        .app
        .query_row("SELECT typeof(id), typeof(price) FROM items", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // REAL affinity stores the integral 2 as 2.0, as SQLite always does.
    assert_eq!((id_type.as_str(), price_type.as_str()), ("integer", "real"));
    assert_eq!(f.count("SELECT qty FROM stock"), 0);
    // A pulled integer key given as text names the same row: its later delete finds it.
    f.app.execute("DELETE FROM items WHERE id = 7", []).unwrap();
    let stats = f
        .replica
        .apply_page(
            &[upsert(
                "items",
                json!({"id": "7"}),
                &past_version(4),
                json!({"id": "7", "name": "older"}),
            )],
            None,
            LWW,
        )
        .unwrap();
    assert_eq!(stats.kept_local, 1, "the local delete is newer");
}

/// With the app's own triggers in the file, the engine leaves triggers on: the app's fire for
/// pulled rows, and Ferry's stay silent because of the `_ferry_apply` flag alone.
#[test]
fn app_triggers_fire_for_pulled_rows_while_ferrys_stay_silent() {
    let mut f = Fixture::new();
    f.app
        .execute_batch(
            "CREATE TABLE audit (what TEXT);
             CREATE TRIGGER app_audit AFTER INSERT ON categories
             BEGIN INSERT INTO audit (what) VALUES (NEW.id); END;",
        )
        .unwrap();
    let versions = [future_version(0), future_version(1)];
    f.replica
        .apply_page(
            &[
                category("p1", "one", &versions[0]),
                category("p2", "two", &versions[1]),
            ],
            Some("c"),
            LWW,
        )
        .unwrap();
    assert_eq!(f.count("SELECT count(*) FROM audit"), 2);
    assert!(!f.is_dirty("categories", "id = 'p1'"));
    assert_eq!(f.replica.pending().unwrap(), 0);
    assert_eq!(f.count("SELECT count(*) FROM _ferry_apply"), 0);

    // Without app triggers the engine turns them off; pulled rows are clean all the same, and
    // the app's writes are tracked as ever.
    f.app
        .execute_batch(
            "DROP TRIGGER app_audit; INSERT INTO categories (id, name) VALUES ('a', 'x');",
        )
        .unwrap();
    f.replica
        .apply_page(&[category("p3", "three", &future_version(2))], None, LWW)
        .unwrap();
    assert!(!f.is_dirty("categories", "id = 'p3'"));
    assert!(f.is_dirty("categories", "id = 'a'"));
    assert_eq!(f.replica.pending().unwrap(), 1);
}
